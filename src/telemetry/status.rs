//! Counters and the status snapshot `hybrid-agent status` shows: per stream the last shipped
//! time, lag and backlog; the spool (bytes, oldest record, pauses); the metric sender's state.
//! Cheap to update from the hot path (atomics, one short mutex per window), cheap to read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Monotonic counters since the node joined: a daemon starts from the figures its predecessor
/// last published ([`StatusCell::resuming`]), so a restart does not hide a rejection or a loss.
#[derive(Debug, Default)]
pub struct Counters {
    shipped: AtomicU64,
    rejected: AtomicU64,
    dropped_too_old: AtomicU64,
    retries: AtomicU64,
    spool_pauses: AtomicU64,
    spool_paused: AtomicBool,
    spool_corrupt_records: AtomicU64,
    spool_torn_bytes: AtomicU64,
    journal_missed_entries: AtomicU64,
    /// Entries earlier daemons missed; the journal reader counts this run's from zero.
    journal_missed_before: u64,
    journal_unreadable_entries: AtomicU64,
    journal_unreadable_files: AtomicU64,
    /// Unreadable entries and files earlier daemons counted (this run's reader counts from 0).
    journal_unreadable_before: (u64, u64),
    child_lines_dropped: AtomicU64,
    /// CloudWatch refuses the node's role a call telemetry needs (set on AccessDenied, cleared
    /// by the next success of that call).
    access_denied: std::sync::Mutex<Option<AccessDenied>>,
    /// The slow start after the last long failing stretch ([`super::pace`]).
    slow_start: std::sync::Mutex<Option<SlowStartStatus>>,
}

/// PutLogEvents climbing back to its full rate after an outage ([`super::pace::SlowStart`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowStartStatus {
    /// How long calls had failed (ms).
    pub failing_for_ms: u64,
    /// When the climb began and when the full rate is back (ms since the epoch).
    pub since_ms: i64,
    pub until_ms: i64,
}

impl SlowStartStatus {
    /// The share of the full rate at `now_ms`, while the climb lasts.
    pub fn share_at(&self, now_ms: i64) -> Option<f64> {
        super::pace::climb_share(
            (now_ms - self.since_ms) as f64,
            (self.until_ms - self.since_ms) as f64,
        )
    }
}

/// A CloudWatch permission the node's IAM role lacks: telemetry keeps its spool and retries, and
/// `status`/`doctor` name the call and the policy to attach ([`telemetry_policy`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDenied {
    /// `PutLogEvents`, `CreateLogGroup`, `PutMetricData` ...
    pub operation: String,
    /// The service's answer (`AccessDeniedException: ...`).
    pub message: String,
    /// First refusal of this spell (ms since the epoch).
    pub since_ms: i64,
}

/// The least IAM policy telemetry needs (README "IAM policy for telemetry"), for the log group
/// and metric namespace it writes: the CloudWatch calls the agent makes and nothing else.
pub fn telemetry_policy(log_group: &str, namespace: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "HybridAgentLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [
                    format!("arn:aws:logs:*:*:log-group:{log_group}"),
                    format!("arn:aws:logs:*:*:log-group:{log_group}:log-stream:*"),
                ]
            },
            {
                "Sid": "HybridAgentMetrics",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": { "StringEquals": { "cloudwatch:namespace": namespace } }
            }
        ]
    })
    .to_string()
}

macro_rules! adder {
    ($name:ident, $field:ident) => {
        pub fn $name(&self, n: u64) {
            if n > 0 {
                self.$field.fetch_add(n, Ordering::Relaxed);
            }
        }
    };
}

impl Counters {
    /// Counters that go on from `before` (what the previous daemon published); the spool is
    /// not paused until this run finds it full.
    pub fn resuming(before: &CounterSnapshot) -> Counters {
        let a = AtomicU64::new;
        Counters {
            shipped: a(before.shipped),
            rejected: a(before.rejected),
            dropped_too_old: a(before.dropped_too_old),
            retries: a(before.retries),
            spool_pauses: a(before.spool_pauses),
            spool_paused: AtomicBool::new(false),
            spool_corrupt_records: a(before.spool_corrupt_records),
            spool_torn_bytes: a(before.spool_torn_bytes),
            journal_missed_entries: a(before.journal_missed_entries),
            journal_missed_before: before.journal_missed_entries,
            journal_unreadable_entries: a(before.journal_unreadable_entries),
            journal_unreadable_files: a(before.journal_unreadable_files),
            journal_unreadable_before: (
                before.journal_unreadable_entries,
                before.journal_unreadable_files,
            ),
            child_lines_dropped: a(before.child_lines_dropped),
            access_denied: std::sync::Mutex::new(None),
            slow_start: std::sync::Mutex::new(None),
        }
    }

    /// Records that CloudWatch refused `operation` for lack of a permission (the first refusal of
    /// a spell keeps its time).
    pub fn set_denied(&self, operation: &str, message: &str) {
        let mut d = self.access_denied.lock().unwrap_or_else(|e| e.into_inner());
        let since_ms = d
            .as_ref()
            .filter(|d| d.operation == operation)
            .map(|d| d.since_ms)
            .unwrap_or_else(super::now_ms);
        *d = Some(AccessDenied {
            operation: operation.to_owned(),
            message: message.to_owned(),
            since_ms,
        });
    }

    /// `operation` succeeded: a refusal of it is over.
    pub fn clear_denied(&self, operation: &str) {
        let mut d = self.access_denied.lock().unwrap_or_else(|e| e.into_inner());
        if d.as_ref().is_some_and(|d| d.operation == operation) {
            *d = None;
        }
    }

    /// A slow start began now, after calls failed for `failing_for`; it lasts `ramp`.
    pub fn set_slow_start(&self, failing_for: std::time::Duration, ramp: std::time::Duration) {
        let since_ms = super::now_ms();
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        *self.slow_start.lock().unwrap_or_else(|e| e.into_inner()) = Some(SlowStartStatus {
            failing_for_ms: u64::try_from(failing_for.as_millis()).unwrap_or(u64::MAX),
            since_ms,
            until_ms: since_ms.saturating_add(ms(ramp)),
        });
    }

    adder!(add_shipped, shipped);
    adder!(add_rejected, rejected);
    adder!(add_dropped_too_old, dropped_too_old);
    adder!(add_spool_corrupt, spool_corrupt_records);
    adder!(add_spool_torn, spool_torn_bytes);
    adder!(add_child_dropped, child_lines_dropped);

    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// `n`: entries this run's journal reader found deleted before it could read them.
    pub fn set_journal_missed(&self, n: u64) {
        self.journal_missed_entries
            .store(self.journal_missed_before + n, Ordering::Relaxed);
    }

    /// This run's journal reader's unreadable entries and files (skipped and counted).
    pub fn set_journal_unreadable(&self, entries: u64, files: u64) {
        let (e, f) = self.journal_unreadable_before;
        self.journal_unreadable_entries
            .store(e + entries, Ordering::Relaxed);
        self.journal_unreadable_files
            .store(f + files, Ordering::Relaxed);
    }

    /// Marks the spool full (sources paused) or not; counts each transition into paused.
    pub fn set_paused(&self, paused: bool) {
        if paused && !self.spool_paused.swap(true, Ordering::Relaxed) {
            self.spool_pauses.fetch_add(1, Ordering::Relaxed);
        } else if !paused {
            self.spool_paused.store(false, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            shipped: g(&self.shipped),
            rejected: g(&self.rejected),
            dropped_too_old: g(&self.dropped_too_old),
            retries: g(&self.retries),
            spool_pauses: g(&self.spool_pauses),
            spool_paused: self.spool_paused.load(Ordering::Relaxed),
            spool_corrupt_records: g(&self.spool_corrupt_records),
            spool_torn_bytes: g(&self.spool_torn_bytes),
            journal_missed_entries: g(&self.journal_missed_entries),
            journal_unreadable_entries: g(&self.journal_unreadable_entries),
            journal_unreadable_files: g(&self.journal_unreadable_files),
            child_lines_dropped: g(&self.child_lines_dropped),
            access_denied: self
                .access_denied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            slow_start: self
                .slow_start
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|s| s.until_ms > super::now_ms()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    /// Events CloudWatch Logs accepted.
    pub shipped: u64,
    /// Events CloudWatch Logs refused (rejectedLogEventsInfo or an invalid batch).
    pub rejected: u64,
    /// Events older than 14 days, dropped before sending.
    pub dropped_too_old: u64,
    /// Failed PutLogEvents attempts that were retried.
    pub retries: u64,
    /// Times the spool filled up and sources paused.
    pub spool_pauses: u64,
    /// Sources are paused right now because the spool is full.
    pub spool_paused: bool,
    pub spool_corrupt_records: u64,
    pub spool_torn_bytes: u64,
    /// Journal entries deleted by journald before they could be read.
    pub journal_missed_entries: u64,
    /// Journal entries skipped as unreadable (corrupt, or a payload over the size cap).
    #[serde(default)]
    pub journal_unreadable_entries: u64,
    /// Journal files given up on (unreadable or corrupt) and closed.
    #[serde(default)]
    pub journal_unreadable_files: u64,
    /// Child output lines lost because the agent was shutting down.
    pub child_lines_dropped: u64,
    /// A CloudWatch call refused for lack of a permission, right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_denied: Option<AccessDenied>,
    /// PutLogEvents is climbing back to its full rate after an outage, right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStartStatus>,
}

/// Per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Full CloudWatch stream name.
    pub name: String,
    /// When CloudWatch last accepted a batch of this stream (ms since epoch).
    pub last_shipped_ms: Option<i64>,
    /// Age of the newest shipped event when it was accepted (ms): how far behind the stream is.
    pub lag_ms: Option<i64>,
    /// Events read but not yet accepted.
    pub backlog_events: u64,
}

/// The metric sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsStatus {
    /// `idle`, `sending`, `failing: <error>`, `disabled`.
    pub state: String,
    pub last_sent_ms: Option<i64>,
    /// Data points kept on disk waiting to be sent.
    pub backlog_points: u64,
    pub sent_points: u64,
    pub dropped_too_old_points: u64,
    /// Points CloudWatch refused as invalid (dropped; retrying cannot help).
    #[serde(default)]
    pub rejected_points: u64,
}

/// One spool's share (the journal's and the child output's spools share the bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolPart {
    pub bytes: u64,
    pub oldest_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryStatus {
    pub log_group: String,
    /// The CloudWatch metric namespace (`[telemetry] metric_namespace`).
    #[serde(default)]
    pub metric_namespace: String,
    pub streams: BTreeMap<String, StreamStatus>,
    /// All log spools together ([`Self::spool_parts`] summed).
    pub spool_bytes: u64,
    /// Per log source (`journal`, `child`).
    #[serde(default)]
    pub spool_parts: BTreeMap<String, SpoolPart>,
    pub spool_max_bytes: u64,
    pub spool_oldest_ms: Option<i64>,
    pub counters: CounterSnapshot,
    pub metrics: MetricsStatus,
    /// Why no journal is read (no machine id, none of journald's directories); `None` when
    /// one is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_missing: Option<String>,
}

/// Shared between the telemetry tasks and whoever reports status.
#[derive(Debug, Default)]
pub struct StatusCell {
    pub counters: Arc<Counters>,
    inner: Mutex<TelemetryStatus>,
}

impl StatusCell {
    pub fn new() -> Arc<StatusCell> {
        Arc::new(StatusCell::default())
    }

    /// A cell whose counters (and the metric sender's totals) go on from what the previous
    /// daemon last published, so they count since the node joined rather than since the last
    /// restart. Figures it had not yet published when it died (at most a few seconds' worth)
    /// are not counted.
    pub fn resuming(before: Option<&TelemetryStatus>) -> Arc<StatusCell> {
        let Some(before) = before else {
            return StatusCell::new();
        };
        let metrics = MetricsStatus {
            last_sent_ms: before.metrics.last_sent_ms,
            sent_points: before.metrics.sent_points,
            dropped_too_old_points: before.metrics.dropped_too_old_points,
            ..MetricsStatus::default()
        };
        Arc::new(StatusCell {
            counters: Arc::new(Counters::resuming(&before.counters)),
            inner: Mutex::new(TelemetryStatus {
                metrics,
                ..TelemetryStatus::default()
            }),
        })
    }

    /// Records one log spool's figures and recomputes the totals.
    pub fn set_spool_part(&self, part: &str, bytes: u64, oldest_ms: Option<i64>) {
        self.update(|s| {
            s.spool_parts
                .insert(part.to_string(), SpoolPart { bytes, oldest_ms });
            s.spool_bytes = s.spool_parts.values().map(|p| p.bytes).sum();
            s.spool_oldest_ms = s.spool_parts.values().filter_map(|p| p.oldest_ms).min();
        });
    }

    pub fn update(&self, f: impl FnOnce(&mut TelemetryStatus)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn snapshot(&self) -> TelemetryStatus {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.counters = self.counters.snapshot();
        s
    }
}

impl TelemetryStatus {
    /// The human form `hybrid-agent status` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let now = super::now_ms();
        let ago = |t: Option<i64>| {
            t.map(|t| format!("{:.1}s ago", (now - t) as f64 / 1000.0))
                .unwrap_or_else(|| "never".into())
        };
        let mut o = String::new();
        if let Some(d) = &self.counters.access_denied {
            let _ = writeln!(
                o,
                "ACCESS DENIED by CloudWatch ({}) since {}: {}; the spool keeps everything and retries. Attach this policy to the node's IAM role: {}",
                d.operation,
                ago(Some(d.since_ms)),
                d.message,
                telemetry_policy(&self.log_group, &self.metric_namespace)
            );
        }
        let _ = writeln!(o, "logs: group {}", self.log_group);
        if let Some(why) = &self.journal_missing {
            let _ = writeln!(o, "  NO JOURNAL: {why}");
        }
        for s in self.streams.values() {
            let _ = writeln!(
                o,
                "  {}: last shipped {}, lag {}, backlog {} events",
                s.name,
                ago(s.last_shipped_ms),
                s.lag_ms
                    .map(|l| format!("{:.1}s", l as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                s.backlog_events
            );
        }
        let c = &self.counters;
        let _ = writeln!(
            o,
            "  spool: {} of {}, oldest {}{}; paused {} times",
            human_bytes(self.spool_bytes),
            human_bytes(self.spool_max_bytes),
            ago(self.spool_oldest_ms),
            if c.spool_paused {
                ", SOURCES PAUSED (spool full)"
            } else {
                ""
            },
            c.spool_pauses
        );
        let _ = writeln!(
            o,
            "  since join: shipped {}, rejected {}, dropped (>14 days) {}, retries {}, spool corrupt records {}, journal entries missed {}",
            c.shipped,
            c.rejected,
            c.dropped_too_old,
            c.retries,
            c.spool_corrupt_records,
            c.journal_missed_entries
        );
        if let Some(share) = c
            .slow_start
            .as_ref()
            .and_then(|s| s.share_at(now).map(|x| (s, x)))
        {
            let (s, share) = share;
            let _ = writeln!(
                o,
                "  slow start after {:.0} s of failed calls: PutLogEvents at {:.0} % of its rate, all of it in {:.0} s",
                s.failing_for_ms as f64 / 1000.0,
                share * 100.0,
                (s.until_ms - now) as f64 / 1000.0
            );
        }
        if c.journal_unreadable_entries > 0 || c.journal_unreadable_files > 0 {
            let _ = writeln!(
                o,
                "  journal: {} unreadable entries and {} unreadable files skipped",
                c.journal_unreadable_entries, c.journal_unreadable_files
            );
        }
        let m = &self.metrics;
        let _ = writeln!(
            o,
            "metrics: {} (last sent {}, {} points waiting on disk, {} sent)",
            if m.state.is_empty() { "idle" } else { &m.state },
            ago(m.last_sent_ms),
            m.backlog_points,
            m.sent_points
        );
        o
    }
}

/// `0 B`, `12.5 KiB`, `448.0 MiB`: spool sizes as a person reads them.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_cell_counts_on_from_the_previous_daemons_figures() {
        let before = TelemetryStatus {
            counters: CounterSnapshot {
                shipped: 100,
                rejected: 2,
                spool_pauses: 1,
                spool_paused: true,
                journal_missed_entries: 7,
                ..CounterSnapshot::default()
            },
            metrics: MetricsStatus {
                sent_points: 40,
                state: "failing: throttled".into(),
                ..MetricsStatus::default()
            },
            spool_bytes: 999,
            ..TelemetryStatus::default()
        };
        let cell = StatusCell::resuming(Some(&before));
        cell.counters.add_shipped(5);
        // The journal reader counts this run's missed entries from zero.
        cell.counters.set_journal_missed(3);
        cell.counters.set_journal_missed(4);
        let now = cell.snapshot();
        assert_eq!(now.counters.shipped, 105);
        assert_eq!(now.counters.rejected, 2);
        assert_eq!(now.counters.journal_missed_entries, 11);
        assert_eq!(now.counters.spool_pauses, 1);
        // Live state is this run's to find out, not carried over.
        assert!(!now.counters.spool_paused);
        assert_eq!(now.metrics.sent_points, 40);
        assert_eq!(now.metrics.state, "");
        assert_eq!(now.spool_bytes, 0);
        // No previous daemon: zeros.
        assert_eq!(
            StatusCell::resuming(None).snapshot(),
            TelemetryStatus::default()
        );
    }
}
