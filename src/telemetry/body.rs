//! PutLogEvents request bodies, written into reused buffers.
//!
//! The SDK's serializer writes each body into a new `String` that starts empty and doubles as it
//! grows: for a full batch (1 MiB of messages, about 1.3 MB of JSON) it writes and copies about
//! 3.4 MB of fresh memory, and copies every message once more into the `InputLogEvent`s it
//! serializes from. The static build's allocator hands freed pages back to the kernel at once
//! (`MIMALLOC_PURGE_DELAY=0`, for the RSS goals), so all of that memory is faulted in again for
//! every batch: about half of the drain's page faults, and a fifth of its CPU
//! (docs/measurements.md "Allocator").
//!
//! So the sink writes the body itself, with the SDK's own JSON writer (`aws_smithy_json`, the
//! same calls in the same order as the generated serializer: the bytes are the same), into a
//! buffer sized for the batch up front and taken from a small pool; the SDK still signs, sends,
//! retries nothing (the sink owns retries) and parses the answer. A buffer comes back to the pool
//! when the SDK drops the last handle on the body; [`BodyPool::release`] lets every idle buffer go
//! once nothing waits to be shipped, so an idle agent holds none.

use std::sync::{Arc, Mutex, Weak};

use aws_smithy_json::serialize::JsonObjectWriter;
use aws_smithy_types::Number;
use bytes::Bytes;

use super::record::Record;

/// Most idle buffers kept: one batch per stream is in flight at once, and a node ships a few
/// streams (kubelet, containerd, the agent).
const MAX_IDLE: usize = 4;
/// Buffers larger than this are not kept (a batch of escape-heavy messages; the next batch
/// rarely needs as much).
const MAX_KEPT_CAPACITY: usize = 4 << 20;
/// JSON around one event beyond its message: `{"timestamp":1733300000000,"message":""},`.
const EVENT_JSON_BYTES: usize = 44;
/// JSON around the events: the braces, the three keys and their quotes.
const ENVELOPE_JSON_BYTES: usize = 64;

/// Buffers for PutLogEvents bodies, shared by the calls of one sink.
#[derive(Debug, Default)]
pub struct BodyPool {
    idle: Mutex<Vec<String>>,
}

/// A body's buffer while the SDK holds the body; back to its pool when dropped.
struct Pooled {
    text: String,
    pool: Weak<BodyPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(std::mem::take(&mut self.text));
        }
    }
}

impl BodyPool {
    pub fn new() -> Arc<BodyPool> {
        Arc::new(BodyPool::default())
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A panic while the lock was held cannot leave the list inconsistent (push/pop only).
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, capacity: usize) -> String {
        // Pooled buffers were cleared when they came back.
        let mut text = self.idle().pop().unwrap_or_default();
        text.reserve(capacity);
        text
    }

    fn put(&self, mut text: String) {
        if text.capacity() > MAX_KEPT_CAPACITY {
            return;
        }
        text.clear();
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(text);
        }
    }

    /// Lets every idle buffer go (the shipper calls it when nothing waits to be shipped).
    pub fn release(&self) {
        let drained: Vec<String> = std::mem::take(&mut *self.idle());
        drop(drained);
    }

    /// How many buffers wait for reuse.
    #[cfg(test)]
    fn idle_buffers(&self) -> usize {
        self.idle().len()
    }

    /// The PutLogEvents body for `events` of `group`/`stream`, exactly as the SDK's serializer
    /// writes it (awsJson1.1: `logGroupName`, `logStreamName`, `logEvents` of `timestamp` and
    /// `message`).
    pub fn body(self: &Arc<Self>, group: &str, stream: &str, events: &[Record]) -> Bytes {
        let need = ENVELOPE_JSON_BYTES
            + group.len()
            + stream.len()
            + events
                .iter()
                .map(|r| r.message.len() + EVENT_JSON_BYTES)
                .sum::<usize>();
        let mut text = self.take(need);
        {
            let mut object = JsonObjectWriter::new(&mut text);
            object.key("logGroupName").string(group);
            object.key("logStreamName").string(stream);
            let mut array = object.key("logEvents").start_array();
            for r in events {
                let mut event = array.value().start_object();
                event
                    .key("timestamp")
                    .number(Number::NegInt(r.timestamp_ms));
                event.key("message").string(r.message.as_str());
                event.finish();
            }
            array.finish();
            object.finish();
        }
        Bytes::from_owner(Pooled {
            text,
            pool: Arc::downgrade(self),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn record(ts: i64, text: &str) -> Record {
        let mut r = Record::events(Arc::from("kubelet"), ts, text.to_string());
        r.remove(0)
    }

    #[test]
    fn the_body_is_the_json_the_service_reads_and_every_message_survives_escaping() {
        let pool = BodyPool::new();
        let texts = [
            "plain line",
            "quotes \" and \\ backslash",
            "control \u{1} \u{8} \u{c} \t tab\r\nnewline \u{1f}",
            "unicode é ✓ 😀 \u{2028}",
            "</script> {\"json\": [1, 2]}",
        ];
        let events: Vec<Record> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| record(1_733_300_000_000 + i as i64, t))
            .collect();
        let body = pool.body("/aws/eks-hybrid/c", "mi-0/kubelet", &events);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["logGroupName"], "/aws/eks-hybrid/c");
        assert_eq!(v["logStreamName"], "mi-0/kubelet");
        let got = v["logEvents"].as_array().unwrap();
        assert_eq!(got.len(), texts.len());
        for (i, (e, t)) in got.iter().zip(texts).enumerate() {
            assert_eq!(e["timestamp"], 1_733_300_000_000_i64 + i as i64);
            assert_eq!(e["message"], t);
        }
        // The field order the SDK writes.
        let s = std::str::from_utf8(&body).unwrap();
        assert!(s.starts_with(
            r#"{"logGroupName":"/aws/eks-hybrid/c","logStreamName":"mi-0/kubelet","logEvents":[{"timestamp":1733300000000,"message":"plain line"}"#
        ), "{s}");
    }

    #[test]
    fn a_buffer_is_reused_after_the_body_is_dropped_and_released_when_asked() {
        let pool = BodyPool::new();
        let events: Vec<Record> = (0..1000)
            .map(|i| record(1_733_300_000_000 + i, &"x".repeat(200)))
            .collect();
        let first = pool.body("g", "s", &events);
        let first_ptr = first.as_ptr();
        let clone = first.clone();
        drop(first);
        // The SDK still holds a handle: not back yet.
        assert_eq!(pool.idle_buffers(), 0);
        drop(clone);
        assert_eq!(pool.idle_buffers(), 1);
        let second = pool.body("g", "s", &events);
        assert_eq!(
            second.as_ptr(),
            first_ptr,
            "the same buffer, without a new allocation"
        );
        assert_eq!(pool.idle_buffers(), 0);
        drop(second);
        pool.release();
        assert_eq!(pool.idle_buffers(), 0);
        // A body outliving its pool is simply freed.
        let orphan = pool.body("g", "s", &events);
        drop(pool);
        assert!(serde_json::from_slice::<serde_json::Value>(&orphan).is_ok());
    }

    #[test]
    fn the_size_estimate_covers_a_plain_batch_without_growing() {
        let pool = BodyPool::new();
        // Largest timestamps (13 digits) and a long stream name.
        let events: Vec<Record> = (0..3000)
            .map(|i| record(9_999_999_999_000 + i, &"y".repeat(300)))
            .collect();
        let body = pool.body(
            "/aws/eks-hybrid/a-cluster-name",
            "mi-0123456789abcdef0/containerd",
            &events,
        );
        let needed = body.len();
        drop(body);
        let kept = pool.take(0);
        assert!(kept.capacity() >= needed);
        assert!(
            kept.capacity() < needed + needed / 8,
            "sized for the batch: {} for {needed}",
            kept.capacity()
        );
    }
}
