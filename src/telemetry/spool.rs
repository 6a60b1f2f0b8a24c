//! The agent's own durable queue under `/var/lib/hybrid-agent/spool/`: what must survive when
//! the journal cannot be trusted to keep a backlog (a long outage while journald vacuums) and the
//! supervised children's output, which exists nowhere else.
//!
//! Segment files `<20-digit id>.seg` hold records `[le32 len][le32 crc32(payload)][payload]`,
//! payload `[u8 version][le64 timestamp_ms][le16 stream len][stream][message]`. Appends are
//! buffered and made durable by [`Spool::commit`] (one `fdatasync` per group of records). The
//! read position is the ack position, kept in `ack` (`<segment id> <offset>`), rewritten by
//! rename after CloudWatch accepted a window; fully acknowledged segments are deleted.
//!
//! Crash recovery at open: the last segment is scanned; a torn tail (short or bad record at the
//! end) is truncated and its bytes counted. Damage anywhere else — a payload or a length field —
//! costs only the damaged record: the reader resynchronises on the next intact record (a
//! plausible header whose CRC matches; see [`next_record`]), and counts the record and the bytes
//! skipped. The format is unchanged, so segments of older agents resynchronise alike. A size bound shared by all spools
//! ([`SpoolBudget`]) makes appends fail with [`SpoolError::Full`]; the caller pauses its source.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{Message, Record};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Record frame: le32 length + le32 CRC.
const FRAME: usize = 8;
const PAYLOAD_VERSION: u8 = 1;
/// A record longer than this is not a record (the largest event is 1 MiB plus a stream name).
const RECORD_MAX: usize = 2 << 20;
const ACK_FILE: &str = "ack";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool I/O on {path}: {source} (check free space and permissions of the spool directory)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool full: {used} of {max} bytes used; sources pause until CloudWatch accepts the backlog"
    )]
    Full { used: u64, max: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The size bound shared by the spools of one agent.
#[derive(Debug)]
pub struct SpoolBudget {
    used: AtomicU64,
    pub max: u64,
}

impl SpoolBudget {
    pub fn new(max: u64) -> Arc<SpoolBudget> {
        Arc::new(SpoolBudget {
            used: AtomicU64::new(0),
            max,
        })
    }
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
    fn try_take(&self, n: u64) -> Result<(), SpoolError> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.max {
                return Err(SpoolError::Full {
                    used: cur,
                    max: self.max,
                });
            }
            match self
                .used
                .compare_exchange(cur, cur + n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }
    fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
    fn force_take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the end of the last segment (a write torn by a crash).
    pub torn_bytes: u64,
    /// Records whose CRC did not match, skipped.
    pub corrupt_records: u64,
}

/// A position: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

struct Segment {
    id: u64,
    len: u64,
}

pub struct Spool {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    writer: Option<(File, Vec<u8>)>,
    new_segment_unsynced: bool,
    ack: SpoolPos,
    budget: Arc<SpoolBudget>,
    /// Corrupt records skipped since open (including those found by `open`).
    pub corrupt_records: u64,
    /// Bytes of damaged records skipped since open.
    pub skipped_bytes: u64,
    /// Timestamp of the oldest unacknowledged record, if known.
    oldest_ms: Option<i64>,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn encode(r: &Record, out: &mut Vec<u8>) {
    let stream = r.stream.as_bytes();
    let stream = &stream[..stream.len().min(u16::MAX as usize)];
    let plen = 1 + 8 + 2 + stream.len() + r.message.len();
    let start = out.len();
    out.extend_from_slice(&(plen as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(PAYLOAD_VERSION);
    out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    out.extend_from_slice(stream);
    out.extend_from_slice(r.message.as_bytes());
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Result of looking at bytes at one position of a segment.
enum Frame<'a> {
    Ok(&'a [u8]),
    /// Length plausible and complete, CRC wrong.
    BadCrc,
    /// Not enough bytes or an implausible length.
    Torn,
}

fn frame_at(buf: &[u8]) -> Frame<'_> {
    let Some(h) = buf.get(..FRAME) else {
        return Frame::Torn;
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > RECORD_MAX {
        return Frame::Torn;
    }
    let Some(p) = buf.get(FRAME..FRAME + len) else {
        return Frame::Torn;
    };
    if crc32fast::hash(p) != crc {
        Frame::BadCrc
    } else {
        Frame::Ok(p)
    }
}

/// Bytes a record header and the fixed part of its payload take: what [`plausible`] looks at.
const HEAD: usize = FRAME + 11;

/// Whether `buf` could start a record: a plausible length, the payload version, a timestamp
/// below 2^48 ms (year 10889) and a stream that fits the payload. Checked before the CRC while
/// hunting for the next record after damage, so the hunt computes a CRC only where a record is
/// likely (log text fails the length test: four ASCII bytes read as a length exceed
/// [`RECORD_MAX`]).
fn plausible(buf: &[u8]) -> bool {
    let Some(h) = buf.get(..HEAD) else {
        return false;
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let sl = u16::from_le_bytes([h[FRAME + 9], h[FRAME + 10]]) as usize;
    (11..=RECORD_MAX).contains(&len)
        && h[FRAME] == PAYLOAD_VERSION
        && h[FRAME + 7] == 0
        && h[FRAME + 8] == 0
        && 11 + sl <= len
}

/// Offset in `data` of the first intact record after `from` (the start of a damaged one), if
/// any: the reader resynchronises there. The format has no marker; the CRC is what tells a
/// record from the bytes around it, so segments written by any version resynchronise alike.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    (from + 1..data.len()).find(|&o| {
        plausible(&data[o..]) && matches!(frame_at(&data[o..]), Frame::Ok(p) if decode(p).is_some())
    })
}

fn decode(p: &[u8]) -> Option<Record> {
    if p.first() != Some(&PAYLOAD_VERSION) || p.len() < 11 {
        return None;
    }
    let ts = i64::from_le_bytes(p[1..9].try_into().ok()?);
    let sl = u16::from_le_bytes([p[9], p[10]]) as usize;
    let stream = std::str::from_utf8(p.get(11..11 + sl)?).ok()?;
    // Checked again: a record an older agent spooled may be empty, and CloudWatch would refuse
    // its whole batch for it; it is counted as corrupt instead.
    let message = Message::new(String::from_utf8_lossy(p.get(11 + sl..)?).into_owned()).ok()?;
    Some(Record {
        stream: stream.into(),
        timestamp_ms: ts,
        message,
    })
}

impl Spool {
    /// Opens (creating) the spool in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, budget: Arc<SpoolBudget>) -> Result<(Spool, Recovery), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        for id in ids {
            let p = seg_path(dir, id);
            let len = std::fs::metadata(&p).map_err(io(&p))?.len();
            segments.push_back(Segment { id, len });
        }
        let ack_path = dir.join(ACK_FILE);
        let ack = std::fs::read_to_string(&ack_path)
            .ok()
            .and_then(|t| {
                let (s, o) = t.trim().split_once(' ')?;
                Some(SpoolPos {
                    segment: s.parse().ok()?,
                    offset: o.parse().ok()?,
                })
            })
            .unwrap_or_default();
        let mut recovery = Recovery::default();
        // Repair the last segment: the only one a crash can have torn.
        if let Some(last) = segments.back_mut() {
            let p = seg_path(dir, last.id);
            let data = std::fs::read(&p).map_err(io(&p))?;
            let mut at = 0usize;
            while at < data.len() {
                match frame_at(&data[at..]) {
                    Frame::Ok(p) => at += FRAME + p.len(),
                    Frame::BadCrc | Frame::Torn => match next_record(&data, at) {
                        // Damaged in place (a length or payload) with a good record after it:
                        // not a torn tail. Skipped and counted when read.
                        Some(next) => at = next,
                        None => break,
                    },
                }
            }
            if (at as u64) < last.len {
                recovery.torn_bytes = last.len - at as u64;
                let f = OpenOptions::new().write(true).open(&p).map_err(io(&p))?;
                f.set_len(at as u64).map_err(io(&p))?;
                f.sync_all().map_err(io(&p))?;
                last.len = at as u64;
            }
        }
        // Drop segments wholly before the ack position.
        while segments.front().is_some_and(|s| s.id < ack.segment) {
            if let Some(s) = segments.pop_front() {
                let _ = std::fs::remove_file(seg_path(dir, s.id));
            }
        }
        let ack = match segments.front() {
            Some(s) if s.id == ack.segment => SpoolPos {
                segment: s.id,
                offset: ack.offset.min(s.len),
            },
            Some(s) => SpoolPos {
                segment: s.id,
                offset: 0,
            },
            None => SpoolPos {
                segment: ack.segment,
                offset: 0,
            },
        };
        let used: u64 = segments.iter().map(|s| s.len).sum::<u64>()
            - if segments.is_empty() { 0 } else { ack.offset };
        budget.force_take(used);
        let spool = Spool {
            dir: dir.to_path_buf(),
            segments,
            writer: None,
            new_segment_unsynced: false,
            ack,
            budget,
            corrupt_records: 0,
            skipped_bytes: 0,
            oldest_ms: None,
        };
        Ok((spool, recovery))
    }

    /// Bytes not yet acknowledged (what counts against the budget).
    pub fn backlog_bytes(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.len).sum();
        let pending = self
            .writer
            .as_ref()
            .map(|(_, b)| b.len() as u64)
            .unwrap_or(0);
        (total + pending).saturating_sub(
            if self
                .segments
                .front()
                .is_some_and(|s| s.id == self.ack.segment)
            {
                self.ack.offset
            } else {
                0
            },
        )
    }

    pub fn is_empty(&self) -> bool {
        self.backlog_bytes() == 0
    }

    /// Timestamp of the oldest record waiting, as far as this process has seen it.
    pub fn oldest_ms(&self) -> Option<i64> {
        if self.is_empty() {
            None
        } else {
            self.oldest_ms
        }
    }

    /// Buffers `records` for the next commit; `Full` (and nothing buffered) when they do not fit
    /// the budget.
    pub fn append(&mut self, records: &[Record]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for r in records {
            encode(r, &mut buf);
        }
        self.budget.try_take(buf.len() as u64)?;
        self.append_encoded(records, buf)
    }

    /// Buffers the longest prefix of `records` the budget has room for now and returns its
    /// length (0: not even the first fits). A group larger than the whole budget goes in this
    /// way, piece by piece as CloudWatch drains the spool, instead of waiting for room that can
    /// never be.
    pub fn append_prefix(&mut self, records: &[Record]) -> Result<usize, SpoolError> {
        let room = self.budget.max.saturating_sub(self.budget.used()) as usize;
        let mut buf = Vec::new();
        let mut n = 0;
        for r in records {
            let before = buf.len();
            encode(r, &mut buf);
            if buf.len() > room {
                buf.truncate(before);
                break;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        match self.budget.try_take(buf.len() as u64) {
            Ok(()) => {}
            // The other spool sharing the budget took the room meanwhile.
            Err(SpoolError::Full { .. }) => return Ok(0),
            Err(e) => return Err(e),
        }
        self.append_encoded(&records[..n], buf)?;
        Ok(n)
    }

    fn append_encoded(&mut self, records: &[Record], buf: Vec<u8>) -> Result<(), SpoolError> {
        if self.oldest_ms.is_none() || self.is_empty() {
            self.oldest_ms = records.iter().map(|r| r.timestamp_ms).min();
        }
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => s.len >= SEGMENT_BYTES,
        };
        if need_new {
            self.flush_writer()?;
            let id = self
                .segments
                .back()
                .map(|s| s.id + 1)
                .unwrap_or(self.ack.segment.max(1));
            let p = seg_path(&self.dir, id);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(io(&p))?;
            self.segments.push_back(Segment { id, len: 0 });
            self.writer = Some((f, Vec::new()));
            self.new_segment_unsynced = true;
            if self.segments.len() == 1 {
                self.ack = SpoolPos {
                    segment: id,
                    offset: 0,
                };
            }
        }
        if self.writer.is_none()
            && let Some(s) = self.segments.back()
        {
            let p = seg_path(&self.dir, s.id);
            let f = OpenOptions::new().append(true).open(&p).map_err(io(&p))?;
            self.writer = Some((f, Vec::new()));
        }
        if let (Some((_, wbuf)), Some(s)) = (self.writer.as_mut(), self.segments.back_mut()) {
            s.len += buf.len() as u64;
            wbuf.extend_from_slice(&buf);
        }
        Ok(())
    }

    fn flush_writer(&mut self) -> Result<(), SpoolError> {
        if let (Some((f, buf)), Some(s)) = (self.writer.as_mut(), self.segments.back())
            && !buf.is_empty()
        {
            let p = seg_path(&self.dir, s.id);
            f.write_all(buf).map_err(io(&p))?;
            f.sync_data().map_err(io(&p))?;
            buf.clear();
        }
        Ok(())
    }

    /// Makes everything appended so far durable (group commit: one fdatasync for the lot).
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        self.flush_writer()?;
        if self.new_segment_unsynced {
            // The new segment's directory entry must survive a crash too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
            self.new_segment_unsynced = false;
        }
        Ok(())
    }

    /// Position after the last appended record.
    pub fn end_pos(&self) -> SpoolPos {
        match self.segments.back() {
            Some(s) => SpoolPos {
                segment: s.id,
                offset: s.len,
            },
            None => self.ack,
        }
    }

    /// Offers committed records from the ack position, in order, to `offer`, which returns false
    /// for the first one it does not take. Returns how many were taken and the position after
    /// them (what to [`ack`](Self::ack) once they are shipped).
    pub fn read(
        &mut self,
        mut offer: impl FnMut(Record) -> bool,
    ) -> Result<(usize, SpoolPos), SpoolError> {
        self.flush_writer()?;
        let mut taken = 0usize;
        let mut pos = self.ack;
        let mut buf = Vec::new();
        'segments: for s in self.segments.iter() {
            if s.id < pos.segment {
                continue;
            }
            if s.id > pos.segment {
                pos = SpoolPos {
                    segment: s.id,
                    offset: 0,
                };
            }
            if pos.offset >= s.len {
                continue;
            }
            let p = seg_path(&self.dir, s.id);
            let f = File::open(&p).map_err(io(&p))?;
            // Read in chunks of ~1 MiB (a longer record is read whole).
            let mut at = pos.offset;
            while at < s.len {
                let want = ((s.len - at) as usize).min(1 << 20);
                buf.resize(want, 0);
                let n = read_full(&f, &mut buf, at).map_err(io(&p))?;
                buf.truncate(n);
                if n == 0 {
                    break;
                }
                let mut i = 0usize;
                while i < buf.len() {
                    match frame_at(&buf[i..]) {
                        Frame::Ok(payload) => {
                            let plen = payload.len();
                            match decode(payload) {
                                Some(r) => {
                                    if taken == 0 {
                                        self.oldest_ms = Some(r.timestamp_ms);
                                    }
                                    if !offer(r) {
                                        pos = SpoolPos {
                                            segment: s.id,
                                            offset: at + i as u64,
                                        };
                                        break 'segments;
                                    }
                                    taken += 1;
                                }
                                None => self.corrupt_records += 1,
                            }
                            i += FRAME + plen;
                        }
                        Frame::BadCrc => {
                            // The length itself may be what is damaged: do not trust it.
                            let skip = skip_damage(&f, &p, at + i as u64, s.len)?;
                            self.corrupt_records += 1;
                            self.skipped_bytes += skip as u64;
                            i += skip;
                        }
                        Frame::Torn if i > 0 => break,
                        Frame::Torn => {
                            let len = u32::from_le_bytes([
                                buf[0],
                                buf.get(1).copied().unwrap_or(0),
                                buf.get(2).copied().unwrap_or(0),
                                buf.get(3).copied().unwrap_or(0),
                            ]) as usize;
                            let whole = FRAME + len;
                            if len > 0
                                && len <= RECORD_MAX
                                && at + whole as u64 <= s.len
                                && buf.len() < whole
                            {
                                buf.resize(whole, 0);
                                let n = read_full(&f, &mut buf, at).map_err(io(&p))?;
                                if n == whole {
                                    continue;
                                }
                            }
                            // Not a record: on to the next good one, or the segment's end.
                            let skip = skip_damage(&f, &p, at, s.len)?;
                            self.corrupt_records += 1;
                            self.skipped_bytes += skip as u64;
                            i += skip;
                            break;
                        }
                    }
                }
                at += i as u64;
            }
            pos = SpoolPos {
                segment: s.id,
                offset: s.len,
            };
        }
        Ok((taken, pos))
    }

    /// Acknowledges everything before `pos`: persists the position and deletes finished segments.
    pub fn ack(&mut self, pos: SpoolPos) -> Result<(), SpoolError> {
        let before = self.backlog_bytes();
        self.ack = pos;
        // Delete every segment wholly acknowledged, except the one being written.
        while let Some(front) = self.segments.front() {
            let done =
                front.id < pos.segment || (front.id == pos.segment && pos.offset >= front.len);
            if !done
                || self.segments.len() == 1 && self.writer.is_some() && front.len < SEGMENT_BYTES
            {
                break;
            }
            let id = front.id;
            self.segments.pop_front();
            if self.segments.is_empty() {
                self.writer = None;
            }
            let p = seg_path(&self.dir, id);
            std::fs::remove_file(&p).map_err(io(&p))?;
            if let Some(next) = self.segments.front() {
                self.ack = SpoolPos {
                    segment: next.id,
                    offset: 0,
                }
                .max(self.ack);
            }
        }
        if self.segments.is_empty() {
            self.ack = SpoolPos {
                segment: pos.segment + 1,
                offset: 0,
            };
        }
        let after = self.backlog_bytes();
        self.budget.give(before.saturating_sub(after));
        if after == 0 {
            self.oldest_ms = None;
        }
        let ack = self.dir.join(ACK_FILE);
        crate::fsutil::replace_unsynced(
            &ack,
            format!("{} {}\n", self.ack.segment, self.ack.offset).as_bytes(),
        )
        .map_err(io(&ack))?;
        Ok(())
    }
}

/// How far the next intact record after a damaged one at `from` is (or the segment's end):
/// what the reader skips. Rare (a disk or a hand damaged the file), so the rest of the segment
/// is read at once.
fn skip_damage(f: &File, path: &Path, from: u64, seg_len: u64) -> Result<usize, SpoolError> {
    let mut rest = vec![0u8; seg_len.saturating_sub(from) as usize];
    let n = read_full(f, &mut rest, from).map_err(io(path))?;
    rest.truncate(n);
    let skip = next_record(&rest, 0).unwrap_or(rest.len()).max(1);
    tracing::warn!(path = %path.display(), offset = from, skipped_bytes = skip, "damaged spool record skipped; reading on from the next intact record");
    Ok(skip)
}

fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_up_to(s: &mut Spool, n: usize) -> (Vec<Record>, SpoolPos) {
        let mut out = Vec::new();
        let (_, pos) = s
            .read(|r| {
                if out.len() >= n {
                    return false;
                }
                out.push(r);
                true
            })
            .expect("read");
        (out, pos)
    }

    fn rec(i: usize) -> Record {
        Record {
            stream: "s".into(),
            timestamp_ms: i as i64,
            message: Message::new(format!("line {i}")).expect("message"),
        }
    }

    #[test]
    fn append_commit_read_ack_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = SpoolBudget::new(1 << 20);
        let (mut s, rec0) = Spool::open(dir.path(), budget.clone()).expect("open");
        assert_eq!(rec0, Recovery::default());
        s.append(&(0..10).map(rec).collect::<Vec<_>>())
            .expect("append");
        s.commit().expect("commit");
        let (got, pos) = read_up_to(&mut s, 4);
        assert_eq!(got, (0..4).map(rec).collect::<Vec<_>>());
        s.ack(pos).expect("ack");
        drop(s);
        let (mut s, _) = Spool::open(dir.path(), budget).expect("reopen");
        let (got, pos) = read_up_to(&mut s, 100);
        assert_eq!(got, (4..10).map(rec).collect::<Vec<_>>());
        s.ack(pos).expect("ack");
        assert!(s.is_empty());
    }

    #[test]
    fn budget_full_refuses_without_buffering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = SpoolBudget::new(100);
        let (mut s, _) = Spool::open(dir.path(), budget).expect("open");
        assert!(matches!(
            s.append(&(0..20).map(rec).collect::<Vec<_>>()),
            Err(SpoolError::Full { .. })
        ));
        assert!(s.is_empty());
    }

    #[test]
    fn torn_tail_is_truncated_and_corrupt_record_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = SpoolBudget::new(1 << 20);
        let (mut s, _) = Spool::open(dir.path(), budget.clone()).expect("open");
        s.append(&(0..5).map(rec).collect::<Vec<_>>())
            .expect("append");
        s.commit().expect("commit");
        drop(s);
        let seg = seg_path(dir.path(), 1);
        let mut data = std::fs::read(&seg).expect("read seg");
        let len = data.len();
        // Flip a byte inside record 1's message, and cut record 4 in half.
        let rec0_len = FRAME + 1 + 8 + 2 + 1 + "line 0".len();
        data[rec0_len + FRAME + 14] ^= 0xff;
        data.truncate(len - 5);
        std::fs::write(&seg, &data).expect("write seg");
        let (mut s, recovery) = Spool::open(dir.path(), budget).expect("reopen");
        assert!(recovery.torn_bytes > 0);
        let (got, _) = read_up_to(&mut s, 100);
        assert_eq!(got, vec![rec(0), rec(2), rec(3)]);
        assert_eq!(s.corrupt_records, 1);
    }

    /// Offset of record `i` among `rec(0..)` written by one append.
    fn rec_offset(i: usize) -> usize {
        (0..i)
            .map(|j| FRAME + 1 + 8 + 2 + 1 + format!("line {j}").len())
            .sum()
    }

    /// A length field damaged in place (no plausible length, or one that points into the
    /// middle of a later record) costs only its own record: the reader finds the next good
    /// record instead of dropping the rest of the segment.
    #[test]
    fn corrupt_length_resyncs_to_next_record_when_read() {
        for bad in [0xffff_ffffu32, 3, 40] {
            let dir = tempfile::tempdir().expect("tempdir");
            let budget = SpoolBudget::new(1 << 20);
            let (mut s, _) = Spool::open(dir.path(), budget).expect("open");
            s.append(&(0..6).map(rec).collect::<Vec<_>>())
                .expect("append");
            s.commit().expect("commit");
            let seg = seg_path(dir.path(), 1);
            let mut data = std::fs::read(&seg).expect("read seg");
            let at = rec_offset(1);
            data[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&seg, &data).expect("write seg");
            let (got, pos) = read_up_to(&mut s, 100);
            assert_eq!(
                got,
                vec![rec(0), rec(2), rec(3), rec(4), rec(5)],
                "length {bad:#x}"
            );
            assert_eq!(s.corrupt_records, 1, "length {bad:#x}");
            assert_eq!(
                s.skipped_bytes,
                (rec_offset(2) - at) as u64,
                "length {bad:#x}"
            );
            assert_eq!(pos, s.end_pos());
        }
    }

    /// The repair at open does not take a damaged length in the middle of the last segment for
    /// a torn tail: the good records after it are kept.
    #[test]
    fn corrupt_length_in_last_segment_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = SpoolBudget::new(1 << 20);
        let (mut s, _) = Spool::open(dir.path(), budget.clone()).expect("open");
        s.append(&(0..6).map(rec).collect::<Vec<_>>())
            .expect("append");
        s.commit().expect("commit");
        drop(s);
        let seg = seg_path(dir.path(), 1);
        let mut data = std::fs::read(&seg).expect("read seg");
        let at = rec_offset(2);
        data[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        std::fs::write(&seg, &data).expect("write seg");
        let (mut s, recovery) = Spool::open(dir.path(), budget).expect("reopen");
        assert_eq!(recovery.torn_bytes, 0);
        let (got, _) = read_up_to(&mut s, 100);
        assert_eq!(got, vec![rec(0), rec(1), rec(3), rec(4), rec(5)]);
        assert_eq!(s.corrupt_records, 1);
    }
}
