//! Download progress: a bar per artifact on a terminal (indicatif), plain log lines otherwise
//! (journald, CI logs and `--log-format json` must not get carriage-return animations).

use std::io::IsTerminal;
use std::time::Instant;

/// How progress is shown.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Progress bars on stderr.
    Bars(indicatif::MultiProgress),
    /// One log line when an artifact starts and one when it is verified.
    Lines,
    /// Nothing (tests, benchmarks).
    Silent,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bars(indicatif::MultiProgress::new())
        } else {
            Progress::Lines
        }
    }

    /// Starts reporting one transfer.
    pub fn start(&self, name: &str, total: Option<u64>) -> Bar {
        let bar = match self {
            Progress::Bars(multi) => {
                let bar = multi.add(indicatif::ProgressBar::new(total.unwrap_or(0)));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
                )
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_prefix(name.to_owned());
                Some(bar)
            }
            Progress::Lines => {
                match total {
                    Some(t) => tracing::info!(artifact = name, bytes = t, "downloading"),
                    None => tracing::info!(artifact = name, "downloading"),
                }
                None
            }
            Progress::Silent => None,
        };
        Bar {
            bar,
            name: name.to_owned(),
            started: Instant::now(),
            lines: matches!(self, Progress::Lines),
        }
    }
}

/// One transfer being reported.
pub struct Bar {
    bar: Option<indicatif::ProgressBar>,
    name: String,
    started: Instant,
    lines: bool,
}

impl Bar {
    /// The total became known (or changed after a restart).
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Bytes received so far.
    pub fn set_position(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_position(bytes);
        }
    }

    /// A try failed and another follows.
    pub fn retrying(&self, attempt: u32, why: &str, resume_at: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("retry {attempt}: {why}"));
        }
        tracing::warn!(artifact = %self.name, attempt, resume_at, "download interrupted, retrying: {why}");
    }

    /// The artifact is complete and verified.
    pub fn finish(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_message("verified");
            b.finish();
        }
        if self.lines {
            let secs = self.started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 {
                bytes as f64 / secs / (1024.0 * 1024.0)
            } else {
                0.0
            };
            tracing::info!(artifact = %self.name, bytes, seconds = format!("{secs:.2}"), mib_per_s = format!("{rate:.1}"), "downloaded and verified");
        }
    }

    /// The transfer failed for good.
    pub fn abandon(&self, why: &str) {
        if let Some(b) = &self.bar {
            b.abandon_with_message(why.to_owned());
        }
    }
}
