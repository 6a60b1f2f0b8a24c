//! The unit that flows from sources through the queue and spool to CloudWatch Logs.
//!
//! CloudWatch Logs refuses a whole PutLogEvents call (InvalidParameterException, up to 10,000
//! events) for one empty message or one message over the per-event limit, so such an event must
//! not exist: a [`Message`] can only be made checked ([`Message::new`]), and sources turn text
//! into events through [`Record::events`], which drops blank text and splits long text. Blank
//! lines (empty or whitespace only) are dropped rather than kept as `" "`: they carry nothing, a
//! crash trace reads the same without them (each line is its own event anyway), and the service
//! documents only "length ≥ 1", not what it makes of whitespace. Fluentd's, Greengrass' and
//! watchtower's CloudWatch outputs drop them too.

use std::sync::Arc;

use super::journal::JournalRecord;

/// CloudWatch Logs' largest event message: 1 MiB minus the 26 bytes of per-event overhead
/// (docs/protocols.md "CloudWatch Logs PutLogEvents").
pub const MAX_EVENT_MESSAGE_BYTES: usize = 1_048_576 - 26;

/// Room kept at the end of each part of a split message for its marker: `" [hybrid-agent: part
/// i/n]"` is at most 63 bytes even with both numbers at `u64::MAX`.
const MARKER_ROOM: usize = 64;

/// Why text is not an event message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(
        "log event message is empty or only whitespace (CloudWatch Logs refuses the whole PutLogEvents call for an empty one)"
    )]
    Blank,
    #[error(
        "log event message of {len} bytes is over CloudWatch Logs' limit of {MAX_EVENT_MESSAGE_BYTES} bytes"
    )]
    TooLong { len: usize },
}

/// A log event message CloudWatch Logs accepts: at least one non-whitespace character and at
/// most [`MAX_EVENT_MESSAGE_BYTES`] bytes of UTF-8. Immutable once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message(String);

impl Message {
    /// Checks `text` as it is (no splitting): for text read back from the spool, or made by the
    /// agent itself. Sources of arbitrary text use [`Record::events`].
    pub fn new(text: String) -> Result<Message, MessageError> {
        if text.len() > MAX_EVENT_MESSAGE_BYTES {
            return Err(MessageError::TooLong { len: text.len() });
        }
        if is_blank(&text) {
            return Err(MessageError::Blank);
        }
        Ok(Message(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An event CloudWatch refuses, for tests of what happens when one gets through anyway.
    #[cfg(test)]
    pub(crate) fn unchecked(text: String) -> Message {
        Message(text)
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for Message {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Message {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Message {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Nothing CloudWatch would show: empty, or only (Unicode) whitespace.
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// `text` as event messages: none when blank, itself when within `limit` bytes, otherwise parts
/// of at most `limit` bytes cut at UTF-8 boundaries, each ending in a visible
/// `[hybrid-agent: part i/n]` marker (so every part, even of whitespace, has text).
fn messages(text: String, limit: usize) -> Vec<Message> {
    let limit = limit.clamp(MARKER_ROOM + 4, MAX_EVENT_MESSAGE_BYTES);
    if is_blank(&text) {
        return Vec::new();
    }
    if text.len() <= limit {
        return vec![Message(text)];
    }
    let piece = limit - MARKER_ROOM;
    let mut parts = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut cut = piece.min(rest.len());
        // A char is at most 4 bytes and `piece` is at least 4: `cut` stays above 0.
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| Message(format!("{p} [hybrid-agent: part {}/{n}]", i + 1)))
        .collect()
}

/// One log event bound for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stream key (unit or component name); the sink turns it into a stream name.
    pub stream: Arc<str>,
    /// Original time of the line, milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub message: Message,
}

impl Record {
    /// The events `text` makes: none when it is blank, one when it fits, several (with part
    /// markers) when it is over [`MAX_EVENT_MESSAGE_BYTES`]. Every source goes through here.
    pub fn events(stream: Arc<str>, timestamp_ms: i64, text: String) -> Vec<Record> {
        Self::events_within(stream, timestamp_ms, text, MAX_EVENT_MESSAGE_BYTES)
    }

    fn events_within(
        stream: Arc<str>,
        timestamp_ms: i64,
        text: String,
        limit: usize,
    ) -> Vec<Record> {
        messages(text, limit)
            .into_iter()
            .map(|message| Record {
                stream: stream.clone(),
                timestamp_ms,
                message,
            })
            .collect()
    }

    /// Bytes this event counts for against the PutLogEvents batch limit.
    pub fn batch_bytes(&self) -> usize {
        self.message.len() + super::batch::EVENT_OVERHEAD_BYTES
    }

    /// A journal entry as log events: `<priority>identifier[pid]: message`, the syslog form, so
    /// priority, identifier and pid survive in CloudWatch and Logs Insights can `parse` them.
    /// An entry whose MESSAGE is blank makes none, like a blank line of a child.
    pub fn from_journal(r: JournalRecord) -> Vec<Record> {
        if is_blank(&r.message) {
            return Vec::new();
        }
        let mut prefix = String::with_capacity(r.identifier.len() + SYSLOG_PREFIX_ROOM);
        prefix.push('<');
        push_u64(&mut prefix, u64::from(r.priority));
        prefix.push('>');
        prefix.push_str(&r.identifier);
        if let Some(pid) = r.pid {
            prefix.push('[');
            push_u64(&mut prefix, u64::from(pid));
            prefix.push(']');
        }
        prefix.push_str(": ");
        // The reader leaves room for the prefix: the message is moved along, not copied anew.
        let mut message = r.message;
        message.insert_str(0, &prefix);
        Record::events(r.stream, (r.realtime_us / 1000) as i64, message)
    }
}

/// Bytes beyond the identifier that the syslog prefix `<priority>identifier[pid]: ` of
/// [`Record::from_journal`] takes; the journal reader leaves this much room after a message.
pub const SYSLOG_PREFIX_ROOM: usize = 20;

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

    fn journal(message: &str) -> JournalRecord {
        JournalRecord {
            stream: "kubelet".into(),
            realtime_us: 1_700_000_000_123_456,
            priority: 3,
            pid: Some(42),
            identifier: "kubelet".into(),
            message: message.into(),
        }
    }

    fn texts(v: &[Record]) -> Vec<&str> {
        v.iter().map(|r| r.message.as_str()).collect()
    }

    #[test]
    fn journal_record_keeps_priority_identifier_pid_and_time() {
        let r = Record::from_journal(journal("boom"));
        assert_eq!(texts(&r), ["<3>kubelet[42]: boom"]);
        assert_eq!(r[0].timestamp_ms, 1_700_000_000_123);
    }

    #[test]
    fn blank_text_makes_no_event() {
        for blank in ["", " ", "\t", "\r", " \t \u{a0}\u{2003}"] {
            assert!(
                Record::events("s".into(), 1, blank.into()).is_empty(),
                "{blank:?}"
            );
            assert_eq!(
                Message::new(blank.into()),
                Err(MessageError::Blank),
                "{blank:?}"
            );
        }
        assert!(Record::from_journal(journal("")).is_empty());
        assert!(Record::from_journal(journal("  ")).is_empty());
        // Text with anything visible is kept exactly, leading whitespace included.
        let r = Record::events("s".into(), 1, "\t/src/main.go:12 +0x1d".into());
        assert_eq!(texts(&r), ["\t/src/main.go:12 +0x1d"]);
    }

    #[test]
    fn text_of_exactly_the_limit_is_one_event() {
        let text = "x".repeat(MAX_EVENT_MESSAGE_BYTES);
        let r = Record::events("s".into(), 1, text.clone());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].message.as_str(), text);
        assert!(Message::new(text).is_ok());
        let over = "x".repeat(MAX_EVENT_MESSAGE_BYTES + 1);
        assert_eq!(
            Message::new(over),
            Err(MessageError::TooLong {
                len: MAX_EVENT_MESSAGE_BYTES + 1
            })
        );
    }

    /// Parts each within the limit, cut at char boundaries, marked, and together the text.
    fn check_split(text: &str, parts: &[Record], limit: usize) {
        assert!(parts.len() > 1);
        let mut joined = String::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.message.len() <= limit,
                "part {i}: {} bytes",
                p.message.len()
            );
            assert_eq!(p.timestamp_ms, 7);
            let marker = format!(" [hybrid-agent: part {}/{}]", i + 1, parts.len());
            joined.push_str(p.message.strip_suffix(&marker).expect("marker"));
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn over_limit_multibyte_text_is_split_at_char_boundaries_with_markers() {
        // 3- and 4-byte chars, one byte over the limit: cut points never fall on a boundary
        // by luck.
        let mut text = "€😀".repeat(MAX_EVENT_MESSAGE_BYTES / 7);
        while text.len() <= MAX_EVENT_MESSAGE_BYTES {
            text.push('é');
        }
        let parts = Record::events("s".into(), 7, text.clone());
        assert_eq!(parts.len(), 2);
        check_split(&text, &parts, MAX_EVENT_MESSAGE_BYTES);
        // Several parts, at a small limit.
        let text = "é€😀".repeat(100);
        let parts = Record::events_within("s".into(), 7, text.clone(), 80);
        check_split(&text, &parts, 80);
    }

    #[test]
    fn over_limit_whitespace_still_makes_events_with_text() {
        let mut text = " ".repeat(MAX_EVENT_MESSAGE_BYTES);
        text.push('x');
        let parts = Record::events("s".into(), 7, text.clone());
        check_split(&text, &parts, MAX_EVENT_MESSAGE_BYTES);
        assert!(parts.iter().all(|p| !is_blank(&p.message)));
    }
}
