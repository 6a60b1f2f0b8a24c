//! The built-in supervisor's captured child output ([`crate::output`]) as a log source.
//!
//! Under the built-in backend there is no journald to hold the children's lines, so telemetry
//! writes them to the spool before anything else
//! ([`super::shipper::ShipperOptions::durable_input`]) and only then acknowledges them.

use std::time::SystemTime;

pub use crate::output::{
    CHILD_CHANNEL_LINES, ChildAck, ChildLine, ChildLineSender, ChildStream, child_line_channel,
};

use super::record::{Record, is_blank};

impl ChildLine {
    /// `[stdout] line` / `[stderr] line` (or the bare line, for combined output) in the
    /// component's stream, at the time it was read; nothing for a blank line (a Go panic trace
    /// has several), split in parts when over CloudWatch's per-event limit
    /// ([`Record::events`]).
    pub fn into_records(self) -> Vec<Record> {
        let ms = self
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if is_blank(&self.line) {
            return Vec::new();
        }
        if self.stream == ChildStream::Combined {
            return Record::events(self.component, ms, self.line);
        }
        let mut message = String::with_capacity(self.line.len() + 9);
        message.push('[');
        message.push_str(self.stream.as_str());
        message.push_str("] ");
        message.push_str(&self.line);
        Record::events(self.component, ms, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: ChildStream, text: &str) -> ChildLine {
        ChildLine {
            component: "kubelet".into(),
            stream,
            line: text.into(),
            timestamp: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(5),
            ack: None,
        }
    }

    #[test]
    fn blank_lines_make_no_event_on_any_pipe() {
        for s in [
            ChildStream::Stdout,
            ChildStream::Stderr,
            ChildStream::Combined,
        ] {
            assert!(line(s, "").into_records().is_empty());
            assert!(line(s, " \t").into_records().is_empty());
        }
        let r = line(ChildStream::Stderr, "goroutine 1 [running]:").into_records();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].message, "[stderr] goroutine 1 [running]:");
        assert_eq!(r[0].timestamp_ms, 5);
        let r = line(ChildStream::Combined, "\tmain.go:12").into_records();
        assert_eq!(r[0].message, "\tmain.go:12");
    }
}
