//! `hybrid-agent run`: the long-running daemon behind hybrid-agent.service ([`crate::daemon`]).

use clap::Args;

use super::{CliError, Context};
use crate::config;

pub(super) const LONG_ABOUT: &str = "\
Run the agent daemon; this is what hybrid-agent.service starts after `join`.

The daemon refreshes the node's AWS credentials before they expire and rewrites the shared \
credentials file atomically, keeps containerd and kubelet running (systemd units or child \
processes, with health probes and capped restart backoff), ships their journal entries, the \
built-in supervisor's child output and host metrics to CloudWatch through a durable spool under \
/var/lib/hybrid-agent/spool, and publishes its state for `hybrid-agent status` \
(/var/lib/hybrid-agent/daemon.json, and live on the root-only socket \
/run/hybrid-agent/status.sock; with [status] prometheus_listen also as Prometheus metrics). It \
notifies systemd when ready and stops gracefully on SIGTERM.

Supervision starts once `join` has left its supervision plan \
(/var/lib/hybrid-agent/supervision.json; supervisor.backend picks systemd or the built-in \
backend), telemetry once `join` has recorded the node (/var/lib/hybrid-agent/node.json names the \
cluster, node and region; [telemetry] and [spool] in the agent config tune it). \
run needs a machine that has joined (exit 4 otherwise) and a valid agent configuration (exit 1 \
with every problem otherwise).

Example:
  hybrid-agent run --log-format json";

/// `run` flags.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {}

pub(super) fn run(_args: &RunArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let _span = crate::daemon::span(&ctx.paths).entered();
    let agent = config::load_agent(ctx.load_context())?;
    // Two daemons would share the spool, the cursors and the pid files.
    let _lock = super::lock(ctx, crate::runlock::LockKind::Daemon, "run")?;
    // What an upgrade child of the daemon ([lifecycle] auto_upgrade) is started with.
    let mut global_args = vec![
        std::ffi::OsString::from("--root"),
        ctx.paths.root().as_os_str().to_owned(),
    ];
    if let config::AgentConfigSource::Explicit(path) = &ctx.agent_config {
        global_args.push("--config".into());
        global_args.push(path.as_os_str().to_owned());
    }
    crate::daemon::start(&ctx.paths, &agent.agent, global_args)?;
    Ok(())
}
