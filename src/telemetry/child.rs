//! The built-in supervisor's captured child output as a log source.
//!
//! The supervisor tails each child's log file (stdout and stderr, in the order written) line by
//! line and hands every line, tagged with its component, to a [`ChildLineSender`]. Under the
//! built-in backend there is no journald to hold them, so the telemetry side writes them to the
//! spool before anything else ([`super::shipper::ShipperOptions::durable_input`]) and only then
//! acknowledges them ([`ChildAck`]): the supervisor records the acknowledged offset as where the
//! next agent resumes, so a kill between the hand-over and the spool commit repeats lines, never
//! skips them. The channel is bounded: when the agent falls behind, `send` waits and the log file
//! grows — backpressure, not loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::record::{Record, is_blank};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStream {
    Stdout,
    Stderr,
    /// Both pipes into one file, in the order the child wrote them (the built-in supervisor's
    /// per-component log file): the line is shipped as written, without a pipe tag.
    Combined,
}

impl ChildStream {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildStream::Stdout => "stdout",
            ChildStream::Stderr => "stderr",
            ChildStream::Combined => "output",
        }
    }
}

/// Where a source learns that its lines are durable: after the spool commit that holds the
/// line, `cell` is set to `offset` (the source's position just past the line). The built-in
/// supervisor records `cell`'s value as its read position, so a kill never skips a line that
/// was only in flight.
#[derive(Debug, Clone)]
pub struct ChildAck {
    pub cell: Arc<AtomicU64>,
    pub offset: u64,
}

impl PartialEq for ChildAck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.cell, &other.cell) && self.offset == other.offset
    }
}

impl Eq for ChildAck {}

impl ChildAck {
    /// Marks the line durable. Chunks are committed in the order they were read, so the latest
    /// acknowledgement is the source's position.
    pub fn done(&self) {
        self.cell.store(self.offset, Ordering::Release);
    }
}

/// One line of a supervised child's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildLine {
    /// Component name (`containerd`, `kubelet`, ...): the log stream's `{unit}`.
    pub component: Arc<str>,
    pub stream: ChildStream,
    /// The line without its newline.
    pub line: String,
    /// When the supervisor read it.
    pub timestamp: SystemTime,
    /// Told once the line is in the spool; `None` for sources with nothing to resume.
    pub ack: Option<ChildAck>,
}

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

/// Lines in flight between the supervisor and the telemetry task.
pub const CHILD_CHANNEL_LINES: usize = 4096;

/// What the supervisor holds; cheap to clone, one per child reader.
#[derive(Debug, Clone)]
pub struct ChildLineSender(mpsc::Sender<ChildLine>);

/// Created together: the sender goes to the supervisor, the receiver into
/// [`super::TelemetryDeps::child_lines`].
pub fn child_line_channel() -> (ChildLineSender, mpsc::Receiver<ChildLine>) {
    let (tx, rx) = mpsc::channel(CHILD_CHANNEL_LINES);
    (ChildLineSender(tx), rx)
}

impl ChildLineSender {
    /// Waits while telemetry is behind. `false` when telemetry has stopped (agent shutting
    /// down); the line is then not shipped.
    pub async fn send(&self, line: ChildLine) -> bool {
        self.0.send(line).await.is_ok()
    }

    /// For synchronous readers: blocks the calling (non-async) thread while telemetry is behind.
    pub fn blocking_send(&self, line: ChildLine) -> bool {
        self.0.blocking_send(line).is_ok()
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
