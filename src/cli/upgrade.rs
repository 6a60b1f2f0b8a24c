//! `hybrid-agent upgrade`: move the node to another Kubernetes version, safely.

use clap::Args;

use super::install::parse_minor_version;
use super::{CliError, Context};
use crate::config;

pub(super) const LONG_ABOUT: &str = "\
Upgrade the node's Kubernetes components to another minor version: install the new artifacts \
alongside the old, cordon and drain the node, switch and restart containerd and kubelet, wait \
for the node to be Ready, and roll back to the previous artifacts if it does not become Ready.

Not built yet in this version: upgrade validates the agent configuration (exit 1 with every \
problem) and then exits with code 2, changing nothing.

Example:
  hybrid-agent upgrade 1.32";

/// `upgrade` flags.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// Kubernetes minor version to upgrade to, e.g. 1.32.
    #[arg(value_name = "KUBERNETES_VERSION", value_parser = parse_minor_version)]
    pub kubernetes_version: String,
}

pub(super) fn run(args: &UpgradeArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    config::load_agent(ctx.load_context())?;
    Err(CliError::NotBuilt {
        command: "upgrade",
        capability: "upgrading the node's Kubernetes components",
        detail: format!(
            "the agent configuration is valid; nothing was changed (target Kubernetes {})",
            args.kubernetes_version
        ),
    })
}
