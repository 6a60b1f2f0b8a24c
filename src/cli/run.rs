//! `hybrid-agent run`: the long-running daemon behind hybrid-agent.service.
//!
//! The daemon (credential refresh, supervision, telemetry, status socket) is a later issue; for
//! now `run` validates the agent configuration it would run with and exits 2.

use clap::Args;

use super::{CliError, Context};
use crate::config;

pub(super) const LONG_ABOUT: &str = "\
Run the agent daemon; this is what hybrid-agent.service starts after `join`.

The daemon refreshes the node's AWS credentials before they expire and rewrites the shared \
credentials file atomically, keeps containerd and kubelet running (systemd units or child \
processes, with health probes and capped restart backoff), ships their journal entries and host \
metrics to CloudWatch through a durable spool under /var/lib/hybrid-agent/spool, and answers \
`hybrid-agent status` on /run/hybrid-agent/status.sock. It notifies systemd when ready and stops \
gracefully on SIGTERM.

Not built yet in this version: the daemon. run validates the agent configuration (exit 1 with \
every problem if it is invalid) and then exits with code 2.

Example:
  hybrid-agent run --log-format json";

/// `run` flags.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {}

pub(super) fn run(_args: &RunArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    config::load_agent(ctx.load_context())?;
    Err(CliError::NotBuilt {
        command: "run",
        capability: "the agent daemon (credential refresh, supervision, telemetry)",
        detail: "the agent configuration is valid; nothing was started".to_owned(),
    })
}
