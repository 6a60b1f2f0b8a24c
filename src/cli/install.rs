//! `hybrid-agent install`: fetch and verify the node artifacts for a Kubernetes version.

use clap::Args;

use super::{CliError, Context};
use crate::config;

pub(super) const LONG_ABOUT: &str = "\
Install what a hybrid node runs for one Kubernetes minor version: kubelet, containerd (or the \
distribution's), runc, the CNI plugins (/opt/cni/bin) and aws-iam-authenticator. Artifacts come \
from the manifest (or the mirror in the agent config, or an offline bundle), are streamed to \
disk while their SHA-256 is checked, and are recorded in a tracker under /var/lib/hybrid-agent \
so `leave` removes only what was installed. Can run in an image build, before join.

Not built yet in this version: install validates the agent configuration (exit 1 with every \
problem) and then exits with code 2, installing nothing.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  hybrid-agent install 1.31
  hybrid-agent --root /mnt/image install 1.31   # into an image being built";

/// `install` flags.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Kubernetes minor version to install, e.g. 1.31.
    #[arg(value_name = "KUBERNETES_VERSION", value_parser = parse_minor_version)]
    pub kubernetes_version: String,
}

/// Accepts `MAJOR.MINOR` (the granularity EKS versions are chosen at).
pub(super) fn parse_minor_version(value: &str) -> Result<String, String> {
    let ok = value.split_once('.').is_some_and(|(major, minor)| {
        [major, minor]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not a Kubernetes minor version like 1.31"
        ))
    }
}

pub(super) fn run(args: &InstallArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    config::load_agent(ctx.load_context())?;
    Err(CliError::NotBuilt {
        command: "install",
        capability: "artifact installation",
        detail: format!(
            "the agent configuration is valid; nothing was installed for Kubernetes {}",
            args.kubernetes_version
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_minor_version;

    #[test]
    fn minor_versions() {
        assert!(parse_minor_version("1.31").is_ok());
        assert!(parse_minor_version("1.31.2").is_err());
        assert!(parse_minor_version("v1.31").is_err());
        assert!(parse_minor_version("1").is_err());
    }
}
