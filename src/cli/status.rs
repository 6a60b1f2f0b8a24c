//! `hybrid-agent status`: ask the running daemon how the node is doing.

use clap::Args;

use super::{CliError, Context};

pub(super) const LONG_ABOUT: &str = "\
Show the node's health as the running daemon sees it: registration and credential expiry, \
containerd and kubelet state and restarts, telemetry spool backlog and the last successful \
CloudWatch upload. Reads the daemon's status socket (/run/hybrid-agent/status.sock under \
--root); writes nothing.

Not built yet in this version: the daemon's status socket. status exits with code 2.

Example:
  hybrid-agent status";

/// `status` flags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {}

pub(super) fn run(_args: &StatusArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    Err(CliError::NotBuilt {
        command: "status",
        capability: "the daemon status socket",
        detail: format!(
            "no status is available from {}",
            ctx.paths.status_socket().display()
        ),
    })
}
