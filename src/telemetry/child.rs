//! The built-in supervisor's captured child output as a log source.
//!
//! The supervisor reads each child's stdout/stderr line by line and hands every line, tagged with
//! its component, to a [`ChildLineSender`]. Those lines exist nowhere else (no journald under the
//! built-in backend), so the telemetry side writes them to the spool before anything else
//! ([`super::shipper::ShipperOptions::durable_input`]). The channel is bounded: when the agent
//! falls behind, `send` waits, the pipe fills and the child blocks on write — backpressure, not
//! loss.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::record::Record;

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
}

impl ChildLine {
    /// `[stdout] line` / `[stderr] line` (or the bare line, for combined output) in the
    /// component's stream, at the time it was read.
    pub fn into_record(self) -> Record {
        let ms = self
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if self.stream == ChildStream::Combined {
            return Record {
                stream: self.component,
                timestamp_ms: ms,
                message: self.line,
            };
        }
        let mut message = String::with_capacity(self.line.len() + 9);
        message.push('[');
        message.push_str(self.stream.as_str());
        message.push_str("] ");
        message.push_str(&self.line);
        Record {
            stream: self.component,
            timestamp_ms: ms,
            message,
        }
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
