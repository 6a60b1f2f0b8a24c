//! Diagnostic logging: to the systemd journal as structured entries when the agent runs under
//! systemd, otherwise to stderr as text for people or JSON for log shippers.
//!
//! stdout is reserved for command output (`config show`, `config check` summaries) so it can be
//! piped; no log line goes there. The level comes from the repeatable `-v`/`-q` flags rather than
//! an environment variable so the same invocation logs the same way everywhere.
//!
//! Where the log goes (`--log-target`, or `HYBRID_AGENT_LOG_TARGET`):
//! - `auto` (the default) writes to the journal when stderr *is* the journal: systemd then sets
//!   `JOURNAL_STREAM=<device>:<inode>` to the identity of the stream it connected stderr to
//!   (systemd.exec(5)). The variable alone is not enough — a child the service starts inherits
//!   it with a stderr that may have been redirected — so it must match stderr's own `fstat`.
//! - `journald` always writes to the journal; `stderr` never does.
//!
//! Journal entries go over journald's native protocol (tracing-journald, no libsystemd), so
//! `journalctl -u hybrid-agent -o json` shows them with `PRIORITY` (from the level: error 3,
//! warn 4, info 6, debug and trace 7 — the syslog meanings, same as a line journald reads from a
//! service's stdout), `SYSLOG_IDENTIFIER=hybrid-agent`, `CODE_FILE`, `CODE_LINE`, `TARGET`, and
//! every field of the event and of its spans upper-cased **without a prefix**: the daemon's span
//! gives `NODE_NAME`, each subsystem's span `SUBSYSTEM`, join's phases `PHASE`, supervision events
//! `COMPONENT` (kubelet, containerd), so `journalctl NODE_NAME=mi-…` or `journalctl PHASE=install`
//! select them. journald drops a leading `_` from such names, so no field can pose as one of its
//! trusted `_PID`-style fields. If the journal socket cannot be reached, the log falls back to
//! stderr with a one-line warning.

use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;

use clap::ValueEnum;
use tracing::level_filters::LevelFilter;
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `SYSLOG_IDENTIFIER` of the agent's journal entries (and of hybrid-agent.service's).
pub const SYSLOG_IDENTIFIER: &str = "hybrid-agent";

/// The variable systemd sets to the `<device>:<inode>` of the journal stream on stdout/stderr
/// (systemd.exec(5), "Environment variables in spawned processes").
pub const JOURNAL_STREAM_VAR: &str = "JOURNAL_STREAM";

/// The environment variable `--log-target` also reads.
pub const LOG_TARGET_VAR: &str = "HYBRID_AGENT_LOG_TARGET";

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Where log entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogTarget {
    /// The journal when stderr is connected to it (JOURNAL_STREAM matches stderr), else stderr.
    #[default]
    Auto,
    /// The systemd journal, as structured entries (stderr if its socket cannot be reached).
    Journald,
    /// stderr, in --log-format.
    Stderr,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber (was logging initialised twice?): {source}")]
pub struct LoggingError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The level for `verbose` `-v` and `quiet` `-q` flags: info by default; -v debug, -vv trace;
/// -q warn, -qq error (and more `-q` stays at error: errors are always shown).
pub fn level(verbose: u8, quiet: u8) -> LevelFilter {
    match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`) names the stream `stderr` is, given
/// as stderr's (device, inode); both numbers are decimal in the variable.
pub fn stream_is(journal_stream: &str, stderr: (u64, u64)) -> bool {
    let Some((dev, ino)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    matches!((dev.parse::<u64>(), ino.parse::<u64>()), (Ok(d), Ok(i)) if (d, i) == stderr)
}

/// stderr's (device, inode), when it can be stat'ed.
fn stderr_identity() -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(std::io::stderr().as_fd()).ok()?;
    // dev_t and ino_t are unsigned 64-bit on Linux; `as` keeps the bits on every target.
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// Whether entries should go to the journal: asked for, or `auto` with stderr being the journal
/// stream systemd names in `journal_stream`.
pub fn wants_journal(
    target: LogTarget,
    journal_stream: Option<&str>,
    stderr: Option<(u64, u64)>,
) -> bool {
    match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => match (journal_stream, stderr) {
            (Some(js), Some(id)) => stream_is(js, id),
            _ => false,
        },
    }
}

/// The priority of each level: the syslog meanings journald gives a service's own output lines
/// (info 6), not tracing-journald's default that shifts info to notice (5).
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Installs the global subscriber: the journal or stderr, as `target` and `journal_stream` (the
/// value of `JOURNAL_STREAM`, if set) decide (module docs).
pub fn init(
    format: LogFormat,
    level: LevelFilter,
    target: LogTarget,
    journal_stream: Option<&str>,
) -> Result<(), LoggingError> {
    let mut fallback = None;
    if wants_journal(target, journal_stream, stderr_identity()) {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                    .with_priority_mappings(priorities());
                return tracing_subscriber::registry()
                    .with(layer.with_filter(level))
                    .try_init()
                    .map_err(|e| LoggingError { source: e.into() });
            }
            Err(e) => fallback = Some(e),
        }
    }
    init_stderr(format, level)?;
    if let Some(e) = fallback {
        tracing::warn!(
            "cannot write to the systemd journal (/run/systemd/journal/socket: {e}); logging to stderr instead"
        );
    }
    Ok(())
}

/// `tokio::spawn` in the current span: a spawned task otherwise starts outside every span, and
/// its entries would lose the daemon's `NODE_NAME` and the subsystem's `SUBSYSTEM`.
pub fn spawn_here<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument as _;
    tokio::spawn(task.in_current_span())
}

/// The stderr subscriber.
fn init_stderr(format: LogFormat, level: LevelFilter) -> Result<(), LoggingError> {
    // Colour only for a person at a terminal; journald and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|source| LoggingError { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level(0, 0), LevelFilter::INFO);
        assert_eq!(level(1, 0), LevelFilter::DEBUG);
        assert_eq!(level(2, 0), LevelFilter::TRACE);
        assert_eq!(level(5, 0), LevelFilter::TRACE);
        assert_eq!(level(0, 1), LevelFilter::WARN);
        assert_eq!(level(0, 2), LevelFilter::ERROR);
        assert_eq!(level(0, 7), LevelFilter::ERROR);
    }

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(stream_is("2049:123456", (2049, 123456)));
        assert!(stream_is("2049:123456\n", (2049, 123456)));
        assert!(!stream_is("2049:123457", (2049, 123456)));
        assert!(!stream_is("2050:123456", (2049, 123456)));
        assert!(!stream_is("", (2049, 123456)));
        assert!(!stream_is("2049", (2049, 123456)));
        assert!(!stream_is("x:y", (2049, 123456)));
    }

    #[test]
    fn target_decides_with_auto_checking_the_stream() {
        let id = Some((8, 9));
        assert!(wants_journal(LogTarget::Journald, None, None));
        assert!(!wants_journal(LogTarget::Stderr, Some("8:9"), id));
        assert!(wants_journal(LogTarget::Auto, Some("8:9"), id));
        // Set but for another stream: a child whose stderr was redirected.
        assert!(!wants_journal(LogTarget::Auto, Some("8:10"), id));
        assert!(!wants_journal(LogTarget::Auto, None, id));
        assert!(!wants_journal(LogTarget::Auto, Some("8:9"), None));
    }
}
