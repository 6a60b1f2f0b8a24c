//! PutLogEvents batches built to the service's real limits (docs/protocols.md "CloudWatch Logs
//! PutLogEvents"): per stream at most
//! 1,048,576 bytes counting 26 per event, at most 10,000 events, spanning at most 24 hours, in
//! time order. A window is what the shipper sends at once: at most one batch per stream, cut at
//! the first record that would overflow its stream's batch, so windows can be acknowledged in
//! order and a crash repeats at most one batch per stream.

use std::sync::Arc;

use super::record::Record;

/// PutLogEvents: maximum batch size in bytes (message UTF-8 bytes + 26 per event).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// PutLogEvents: per-event overhead counted against the batch size.
pub const EVENT_OVERHEAD_BYTES: usize = 26;
/// PutLogEvents: maximum events per call.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// PutLogEvents: a batch may not span more than 24 hours.
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;
/// CloudWatch Logs rejects events older than 14 days.
pub const MAX_EVENT_AGE_MS: i64 = 14 * 24 * 3600 * 1000;

/// Events for one stream, sent in one PutLogEvents call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub stream: Arc<str>,
    pub events: Vec<Record>,
    pub bytes: usize,
    min_ts: i64,
    max_ts: i64,
}

impl Batch {
    fn new(stream: Arc<str>) -> Batch {
        Batch {
            stream,
            events: Vec::new(),
            bytes: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    fn fits(&self, r: &Record) -> bool {
        if self.events.is_empty() {
            return true;
        }
        self.events.len() < MAX_BATCH_EVENTS
            && self.bytes + r.batch_bytes() <= MAX_BATCH_BYTES
            && r.timestamp_ms.max(self.max_ts) - r.timestamp_ms.min(self.min_ts)
                <= MAX_BATCH_SPAN_MS
    }

    fn push(&mut self, r: Record) {
        self.bytes += r.batch_bytes();
        self.min_ts = self.min_ts.min(r.timestamp_ms);
        self.max_ts = self.max_ts.max(r.timestamp_ms);
        self.events.push(r);
    }
}

/// Collects records into at most one batch per stream.
#[derive(Debug, Default)]
pub struct WindowBuilder {
    batches: Vec<Batch>,
    records: usize,
}

impl WindowBuilder {
    pub fn new() -> WindowBuilder {
        WindowBuilder::default()
    }

    /// Whether `r` fits its stream's batch in this window.
    pub fn fits(&self, r: &Record) -> bool {
        self.batches
            .iter()
            .find(|b| b.stream == r.stream)
            .is_none_or(|b| b.fits(r))
    }

    /// Adds `r` (callers check [`fits`](Self::fits) first; an event alone always fits).
    pub fn push(&mut self, r: Record) {
        self.records += 1;
        match self.batches.iter_mut().find(|b| b.stream == r.stream) {
            Some(b) => b.push(r),
            None => {
                let mut b = Batch::new(r.stream.clone());
                b.push(r);
                self.batches.push(b);
            }
        }
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The batches, each sorted by time (stable: lines of one millisecond keep their order),
    /// without events older than 14 days at `now_ms` (CloudWatch would reject them); returns how
    /// many were dropped so the caller can count them.
    pub fn finish(self, now_ms: i64) -> (Vec<Batch>, u64) {
        let mut dropped = 0u64;
        let mut out = Vec::with_capacity(self.batches.len());
        for mut b in self.batches {
            let before = b.events.len();
            b.events
                .retain(|e| now_ms - e.timestamp_ms <= MAX_EVENT_AGE_MS);
            dropped += (before - b.events.len()) as u64;
            if b.events.len() != before {
                b.bytes = b.events.iter().map(Record::batch_bytes).sum();
            }
            if !b.events.is_sorted_by_key(|e| e.timestamp_ms) {
                b.events.sort_by_key(|e| e.timestamp_ms);
            }
            if !b.events.is_empty() {
                out.push(b);
            }
        }
        (out, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::Message;

    fn rec(stream: &str, ts: i64, len: usize) -> Record {
        Record {
            stream: stream.into(),
            timestamp_ms: ts,
            message: Message::new("x".repeat(len)).expect("message"),
        }
    }

    #[test]
    fn byte_limit_counts_26_per_event() {
        let mut w = WindowBuilder::new();
        // 4 events of (262,118 + 26) bytes = 1,048,576 exactly: fits; one more byte does not.
        let len = MAX_BATCH_BYTES / 4 - EVENT_OVERHEAD_BYTES;
        for _ in 0..4 {
            let r = rec("a", 1, len);
            assert!(w.fits(&r));
            w.push(r);
        }
        assert!(!w.fits(&rec("a", 1, 1)));
        // Another stream has its own batch.
        assert!(w.fits(&rec("b", 1, 10)));
    }

    #[test]
    fn event_count_limit() {
        let mut w = WindowBuilder::new();
        for _ in 0..MAX_BATCH_EVENTS {
            w.push(rec("a", 1, 1));
        }
        assert!(!w.fits(&rec("a", 1, 1)));
    }

    #[test]
    fn span_limit_is_24_hours_either_direction() {
        let mut w = WindowBuilder::new();
        w.push(rec("a", MAX_BATCH_SPAN_MS, 1));
        assert!(w.fits(&rec("a", 0, 1)));
        assert!(!w.fits(&rec("a", -1, 1)));
        assert!(!w.fits(&rec("a", 2 * MAX_BATCH_SPAN_MS + 1, 1)));
    }

    #[test]
    fn finish_sorts_stably_and_drops_too_old() {
        let now = 100 * 24 * 3600 * 1000;
        let mut w = WindowBuilder::new();
        let mut a = rec("a", now - 5, 1);
        a.message = Message::new("first".into()).expect("message");
        let mut b = rec("a", now - 10, 1);
        b.message = Message::new("second".into()).expect("message");
        let mut c = rec("a", now - 5, 1);
        c.message = Message::new("third".into()).expect("message");
        w.push(a);
        w.push(b);
        w.push(c);
        w.push(rec("a", now - MAX_EVENT_AGE_MS - 1, 1));
        let (batches, dropped) = w.finish(now);
        assert_eq!(dropped, 1);
        let msgs: Vec<_> = batches[0]
            .events
            .iter()
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(msgs, ["second", "first", "third"]);
        assert_eq!(
            batches[0].bytes,
            3 * EVENT_OVERHEAD_BYTES + "secondfirstthird".len()
        );
    }
}
