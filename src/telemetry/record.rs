//! The unit that flows from sources through the queue and spool to CloudWatch Logs.

use std::sync::Arc;

use super::journal::JournalRecord;

/// CloudWatch Logs' largest event message: 1 MiB minus the 26 bytes of per-event overhead
/// (PROTOCOLS.md §4).
pub const MAX_EVENT_MESSAGE_BYTES: usize = 1_048_576 - 26;

/// One log event bound for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stream key (unit or component name); the sink turns it into a stream name.
    pub stream: Arc<str>,
    /// Original time of the line, milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub message: String,
}

impl Record {
    /// Bytes this event counts for against the PutLogEvents batch limit.
    pub fn batch_bytes(&self) -> usize {
        self.message.len() + super::batch::EVENT_OVERHEAD_BYTES
    }

    /// A journal entry as a log event: `<priority>identifier[pid]: message`, the syslog form, so
    /// priority, identifier and pid survive in CloudWatch and Logs Insights can `parse` them.
    pub fn from_journal(r: JournalRecord) -> Record {
        let mut message = String::with_capacity(r.message.len() + r.identifier.len() + 16);
        message.push('<');
        push_u64(&mut message, u64::from(r.priority));
        message.push('>');
        message.push_str(&r.identifier);
        if let Some(pid) = r.pid {
            message.push('[');
            push_u64(&mut message, u64::from(pid));
            message.push(']');
        }
        message.push_str(": ");
        message.push_str(&r.message);
        Record {
            stream: r.stream,
            timestamp_ms: (r.realtime_us / 1000) as i64,
            message,
        }
    }

    /// Splits an event whose message is over CloudWatch's per-event limit into pieces that fit,
    /// each ending in a visible `[hybrid-agent: part i/n]` marker; other events pass unchanged.
    pub fn split_oversize(self, limit: usize) -> Vec<Record> {
        if self.message.len() <= limit {
            return vec![self];
        }
        const MARKER_ROOM: usize = 48;
        let piece = limit.saturating_sub(MARKER_ROOM).max(1);
        let mut parts = Vec::new();
        let mut rest = self.message.as_str();
        while !rest.is_empty() {
            let mut cut = piece.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 {
                cut = rest
                    .chars()
                    .next()
                    .map(char::len_utf8)
                    .unwrap_or(rest.len());
            }
            parts.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| Record {
                stream: self.stream.clone(),
                timestamp_ms: self.timestamp_ms,
                message: format!("{p} [hybrid-agent: part {}/{n}]", i + 1),
            })
            .collect()
    }
}

fn push_u64(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        s.push(b as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_record_keeps_priority_identifier_pid_and_time() {
        let r = Record::from_journal(JournalRecord {
            stream: "kubelet".into(),
            realtime_us: 1_700_000_000_123_456,
            priority: 3,
            pid: Some(42),
            identifier: "kubelet".into(),
            message: "boom".into(),
        });
        assert_eq!(r.message, "<3>kubelet[42]: boom");
        assert_eq!(r.timestamp_ms, 1_700_000_000_123);
    }

    #[test]
    fn oversize_events_are_split_with_markers_on_char_boundaries() {
        let msg = "é".repeat(100);
        let r = Record {
            stream: "s".into(),
            timestamp_ms: 1,
            message: msg.clone(),
        };
        let parts = r.split_oversize(80);
        assert!(parts.len() > 1);
        let mut joined = String::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.message.len() <= 80, "{} bytes", p.message.len());
            let marker = format!(" [hybrid-agent: part {}/{}]", i + 1, parts.len());
            joined.push_str(p.message.strip_suffix(&marker).expect("marker"));
        }
        assert_eq!(joined, msg);
    }
}
