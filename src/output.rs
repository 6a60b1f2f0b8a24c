//! The contract between the built-in supervisor, which captures its children's output, and
//! whoever ships it (telemetry): one [`ChildLine`] per line, over a bounded channel, with an
//! acknowledgement ([`ChildAck`]) once the line is durable on the other side.
//!
//! The supervisor tails each child's log file (stdout and stderr, in the order written) line by
//! line and hands every line, tagged with its component, to a [`ChildLineSender`]. The receiver
//! acknowledges a line only once it is safe (telemetry: in its spool); the supervisor records
//! the acknowledged offset as where the next agent resumes, so a kill between the hand-over and
//! that commit repeats lines, never skips them. The channel is bounded: when the receiver falls
//! behind, `send` waits and the log file grows — backpressure, not loss. Neither side depends on
//! the other's module; the daemon connects them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

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

/// Lines in flight between the supervisor and the telemetry task.
pub const CHILD_CHANNEL_LINES: usize = 4096;

/// What the supervisor holds; cheap to clone, one per child reader.
#[derive(Debug, Clone)]
pub struct ChildLineSender(mpsc::Sender<ChildLine>);

/// Created together: the sender goes to the supervisor, the receiver to telemetry.
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
