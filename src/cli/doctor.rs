//! `hybrid-agent doctor`: host and connectivity checks for hybrid-node problems.

use clap::Args;

use super::{CliError, Context};
use crate::config;

pub(super) const LONG_ABOUT: &str = "\
Check this host for the problems that most often keep hybrid nodes from joining or staying \
Ready: endpoint reachability (SSM, STS, EKS, CloudWatch, through the configured proxy and CA \
bundle), clock sync, swap, kernel modules and sysctls, credentials (STS GetCallerIdentity), the \
cluster (DescribeCluster, remote node networks containing this node's IP), and kubelet and \
containerd health. Read-only: it changes nothing.

Not built yet in this version: doctor validates the agent configuration (exit 1 with every \
problem) and then exits with code 2. Use `hybrid-agent config check` to validate a NodeConfig.

Example:
  hybrid-agent doctor";

/// `doctor` flags.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {}

pub(super) fn run(_args: &DoctorArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    config::load_agent(ctx.load_context())?;
    Err(CliError::NotBuilt {
        command: "doctor",
        capability: "host and connectivity checks",
        detail:
            "the agent configuration is valid; `hybrid-agent config check` validates node settings"
                .to_owned(),
    })
}
