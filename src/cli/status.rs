//! `hybrid-agent status`: how the node is doing. Asks the daemon on its status socket
//! ([`crate::daemon::status_server`]) and, when it does not answer within a second, shows the
//! state it last saved ([`crate::state`]) and says so; works when the daemon is down.

use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime};

use clap::Args;

use super::{CliError, Context};

pub(super) const LONG_ABOUT: &str = "\
Show the node's health: whether the daemon runs, the identity (SSM instance id or IAM Roles \
Anywhere certificate), credential expiry, last and next refresh, and the last error with what to \
do about it. Asks the running daemon on its status socket (/run/hybrid-agent/status.sock under \
--root, root only), so every figure is as of now; when the daemon does not answer within a \
second (stopped, wedged, or not running) it shows the state the daemon last saved \
(/var/lib/hybrid-agent/daemon.json) and the identity files, and says so (`\"source\": \"file\"`, \
`\"daemon_answering\": false` in --json). Writes nothing.

With supervision running it also shows the backend (and why it was chosen) and, for containerd \
and kubelet, health, pid, restarts, the last probe and whether they are degraded (crash loop).

Once the node has joined, the telemetry section shows, per CloudWatch Logs stream, when a batch \
was last accepted, the lag (age of the newest shipped entry when it was accepted) and the backlog \
(entries read, not yet accepted); the spool (bytes, oldest record, whether sources are paused \
because it is full); the shipped, rejected and dropped counters, which count since the node \
joined (a restarted daemon goes on from the last figures its predecessor published); and the \
metric sender's state with the points waiting on disk. The saved file is refreshed every 5 \
seconds; the socket answers with the figures of the moment.

--watch [SECS] shows it again every SECS seconds (2 by default) until interrupted (Ctrl-C): on a \
terminal the screen is redrawn, otherwise each snapshot follows the last (text after a `---` \
line with its time; JSON documents one after the other, as `jq` reads them).

On an SSM hybrid-activation node, `ssm presence` shows when SSM last accepted the daemon's \
UpdateInstanceInformation ping (what makes SSM list the node Online) and when the next is due, \
or why pings fail.

Examples:
  hybrid-agent status
  hybrid-agent status --json | jq .identity.expiration
  hybrid-agent status --watch 5";

/// `status` flags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the status as JSON (stable field names, RFC 3339 times).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until interrupted.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
}

pub(super) fn run(args: &StatusArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let Some(every) = args.watch else {
        let text = render(args, ctx)?;
        return ctx.write("status", &text);
    };
    let terminal = std::io::stdout().is_terminal();
    loop {
        let text = render(args, ctx)?;
        let framed = if terminal {
            // Home and clear, then the snapshot: a redraw in place.
            format!("\x1b[H\x1b[2J{text}\n(every {every}s; Ctrl-C to stop)\n")
        } else if args.json {
            text
        } else {
            format!(
                "--- {}\n{text}",
                crate::identity::store::ts::format(SystemTime::now())
            )
        };
        ctx.write("status", &framed)?;
        std::thread::sleep(Duration::from_secs(every));
    }
}

/// One snapshot, as text or JSON.
fn render(args: &StatusArgs, ctx: &Context<'_>) -> Result<String, CliError> {
    let report = report(&ctx.paths)?;
    Ok(if args.json {
        let mut t = serde_json::to_string_pretty(&report).map_err(|e| CliError::Render {
            format: "JSON",
            message: e.to_string(),
        })?;
        t.push('\n');
        t
    } else {
        report.to_text(SystemTime::now())
    })
}

/// The daemon's answer on its socket, or else the state it last saved.
fn report(paths: &crate::paths::HostPaths) -> Result<crate::state::StatusReport, CliError> {
    use crate::daemon::status_server::{CLIENT_TIMEOUT, query};
    use crate::state::{self, DaemonState, StatusSource};
    let socket = paths.status_socket();
    let state_dir = paths.state_dir();
    let live = match query(&socket, "state", CLIENT_TIMEOUT) {
        Ok(text) => match serde_json::from_str::<DaemonState>(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(
                    "the daemon's answer on {} is not a state document ({e}); showing the saved state",
                    socket.display()
                );
                None
            }
        },
        Err(e) => {
            tracing::debug!("status socket {}: {e}", socket.display());
            None
        }
    };
    let mut report = match live {
        Some(d) => state::report_from(Some(d), StatusSource::Socket, &state_dir),
        None => state::report(&state_dir)?,
    };
    report.socket = Some(socket);
    Ok(report)
}
