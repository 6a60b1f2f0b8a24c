//! `hybrid-agent status`: how the node is doing, from the state the daemon publishes
//! ([`crate::state`]); works when the daemon is down and says so.

use std::time::SystemTime;

use clap::Args;

use super::{CliError, Context};

pub(super) const LONG_ABOUT: &str = "\
Show the node's health: whether the daemon runs, the identity (SSM instance id or IAM Roles \
Anywhere certificate), credential expiry, last and next refresh, and the last error with what to \
do about it. Reads the state the daemon publishes (/var/lib/hybrid-agent/daemon.json under \
--root) and the identity files, so it works when the daemon is down (and says so); writes \
nothing.

With supervision running it also shows the backend (and why it was chosen) and, for containerd \
and kubelet, health, pid, restarts, the last probe and whether they are degraded (crash loop).

Once the node has joined, the telemetry section shows, per CloudWatch Logs stream, when a batch \
was last accepted, the lag (age of the newest shipped entry when it was accepted) and the backlog \
(entries read, not yet accepted); the spool (bytes, oldest record, whether sources are paused \
because it is full); the shipped, rejected and dropped counters, which count since the node \
joined (a restarted daemon goes on from the last figures its predecessor published); and the \
metric sender's state with the points waiting on disk. The daemon refreshes it every 5 seconds.

Examples:
  hybrid-agent status
  hybrid-agent status --json | jq .identity.expiration";

/// `status` flags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the status as JSON (stable field names, RFC 3339 times).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: &StatusArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let report = crate::state::report(&ctx.paths.state_dir())?;
    let text = if args.json {
        let mut t = serde_json::to_string_pretty(&report).map_err(|e| CliError::Render {
            format: "JSON",
            message: e.to_string(),
        })?;
        t.push('\n');
        t
    } else {
        report.to_text(SystemTime::now())
    };
    ctx.write("status", &text)
}
