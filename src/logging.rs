//! Diagnostic logging to stderr, as text for people or JSON for log shippers.
//!
//! stdout is reserved for command output (`config show`, `config check` summaries) so it can be
//! piped; every log line goes to stderr. The level comes from the repeatable `-v`/`-q` flags
//! rather than an environment variable so the same invocation logs the same way everywhere.

use std::io::IsTerminal as _;

use clap::ValueEnum;
use tracing::level_filters::LevelFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for journald forwarding or log shippers).
    Json,
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

/// Installs the global subscriber writing to stderr.
pub fn init(format: LogFormat, level: LevelFilter) -> Result<(), LoggingError> {
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
}
