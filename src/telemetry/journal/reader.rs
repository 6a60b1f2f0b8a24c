//! A forward reader over a journal directory: follows rotation, survives vacuuming, resumes from
//! a saved [`Cursor`].
//!
//! Why our own reader: `journalctl -o json`, `-o export` and the `sdjournal` crate cost from ten
//! to fifty times more CPU for the same journal, and mmap of a file journald truncates during
//! rotation can SIGBUS on systemd < 255 (figures: docs/measurements.md "Journal reader").
//! This reader scans each file's objects in order through one 1 MiB buffer filled by `pread`,
//! looks at ENTRY objects only, resolves their DATA items from that buffer (journald writes an
//! entry's data just before it) or from a small offset cache (deduplicated fields such as
//! `PRIORITY=6` live far back), and decodes MESSAGE only for entries that pass the unit and
//! priority filter (scripts/bench.d/telemetry prints its cost next to `journalctl`'s;
//! `examples/journal_scan` is the reader alone). No mmap, no unsafe code.
//!
//! Live files (see [`super::format`] for journald's write order): a poll re-reads only the header.
//! Objects before the header's tail object are complete; an ENTRY is handed out only once the
//! header's `n_entries` counts it (journald links it after writing it), and window bytes read
//! before an object was known complete are read again. Without that, systemd 252 (no
//! `tail_entry_offset` in its header) let the reader take the tail entry half written, its later
//! items still zero: about one line in a million was dropped or shipped with an empty message,
//! with no seqnum gap to count (tests/telemetry_reader.rs reproduces it). Rotation: journald renames `system.journal` and starts a new file; an
//! open descriptor keeps reading the renamed one until its header says ARCHIVED and nothing is
//! left, then the new file (found by a directory scan) continues. Vacuuming deletes archived files:
//! an open descriptor keeps the inode; a file deleted before we opened it shows up as a seqnum gap,
//! counted in [`ReaderStats::missed_entries`] (the spool exists so that does not happen).
//!
//! Hostile or broken files: any local user decides what journald stores (any identifier, payloads
//! up to 768 MiB, compressed), and disks break files. So the unit decides an entry's stream (the
//! identifier only where there is no unit); an entry's uncompressed fields are read first and
//! its compressed ones (the message, mostly) only when those do not rule it out; a payload is
//! never decompressed past [`DATA_PAYLOAD_MAX`] ([`super::payload`]); offsets are added with
//! checked arithmetic; users' journals are not opened. An entry that cannot be read is skipped
//! and counted; a file that cannot be read, or holds an object that cannot be walked past where
//! the file is known complete, is closed and counted, and the other files go on
//! (tests/telemetry_journal_files.rs crafts each case).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{self, Header};
use super::payload;
use crate::telemetry::record::SYSLOG_PREFIX_ROOM;

/// Bytes read per `pread` while scanning: large enough that syscalls cost nothing per entry,
/// small enough for the 20 MiB RSS goal.
const SCAN_WINDOW: usize = 1 << 20;
/// Deduplicated DATA objects remembered by offset (field kind and, for the few fields we keep,
/// the value). Cleared when full: a re-read is cheap.
const DATA_CACHE_MAX: usize = 16 * 1024;
/// How often the directories are listed for new (rotated-in) files while entries keep coming.
const DIR_RESCAN: Duration = Duration::from_secs(1);
/// Largest DATA payload read, compressed or decompressed; a bigger one makes its entry
/// unreadable (skipped and counted). journald itself stores payloads up to 768 MiB
/// (`DATA_SIZE_MAX`, systemd `src/shared/journal-importer.h`, sized for core dumps); the units
/// shipped here write lines (stdout streams are cut at journald's `LineMax=`, 48 KiB by default),
/// and a 768 MiB allocation is not one a 20 MiB agent may make on a local user's say-so.
const DATA_PAYLOAD_MAX: u64 = 64 << 20;
/// Bytes of a compressed payload decompressed to learn which field it is: the longest field name
/// the filter reads (`SYSLOG_IDENTIFIER=`, 18 bytes), a unit name (systemd's `UNIT_NAME_MAX`,
/// 256) and one byte more, so that a longer value is seen to be cut (and matches no name).
const FIELD_PEEK_MAX: usize = 18 + 256 + 1;
/// Any of the DATA object compression flags.
const COMPRESSED: u8 =
    format::OBJECT_COMPRESSED_XZ | format::OBJECT_COMPRESSED_LZ4 | format::OBJECT_COMPRESSED_ZSTD;
/// journald's per-user files (`SplitMode=uid`, the default with persistent storage): entries of
/// processes with a non-system uid only; the units the agent ships run as root and log to
/// `system.journal`.
const USER_JOURNAL_PREFIX: &str = "user-";
/// journald's default priority for entries that carry none (stdout streams log at info).
const DEFAULT_PRIORITY: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot read journal directory {path}: {source} (is journald's storage there? see `journalctl --header`)"
    )]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read journal file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal cursor {text:?} is not `s=<32 hex>;i=<hex>;t=<hex>`")]
    BadCursor { text: String },
}

/// A position in the journal: the last entry handed out (or skipped by the filter). Journald keeps
/// one seqnum sequence (`seqnum_id`) across all files of a directory until its files are all
/// gone; entries of another sequence are ordered by realtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub seqnum_id: [u8; 16],
    pub seqnum: u64,
    pub realtime_us: u64,
}

impl Cursor {
    /// `s=<seqnum_id hex>;i=<seqnum hex>;t=<realtime hex>` (the fields of a journalctl cursor
    /// that matter here, same spelling).
    pub fn to_text(&self) -> String {
        format!(
            "s={};i={:x};t={:x}",
            hex::encode(self.seqnum_id),
            self.seqnum,
            self.realtime_us
        )
    }

    pub fn parse(text: &str) -> Result<Cursor, JournalError> {
        let bad = || JournalError::BadCursor {
            text: text.to_string(),
        };
        let (mut s, mut i, mut t) = (None, None, None);
        for part in text.trim().split(';') {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k {
                "s" => {
                    let mut id = [0u8; 16];
                    hex::decode_to_slice(v, &mut id).map_err(|_| bad())?;
                    s = Some(id);
                }
                "i" => i = Some(u64::from_str_radix(v, 16).map_err(|_| bad())?),
                "t" => t = Some(u64::from_str_radix(v, 16).map_err(|_| bad())?),
                _ => {}
            }
        }
        Ok(Cursor {
            seqnum_id: s.ok_or_else(bad)?,
            seqnum: i.ok_or_else(bad)?,
            realtime_us: t.ok_or_else(bad)?,
        })
    }

    /// Whether an entry at (`seqnum_id`, `seqnum`, `realtime`) is at or before this cursor.
    fn covers(&self, seqnum_id: &[u8; 16], seqnum: u64, realtime_us: u64) -> bool {
        if *seqnum_id == self.seqnum_id {
            seqnum <= self.seqnum
        } else {
            realtime_us <= self.realtime_us
        }
    }
}

/// Which entries to ship, and to which stream: `_SYSTEMD_UNIT` equal to a name (or `name.service`);
/// for entries without a unit (a hand-started journald attaches none), `SYSLOG_IDENTIFIER` equal
/// to a name.
#[derive(Debug, Clone)]
pub struct Filter {
    /// (name as configured, stream key it ships to)
    pub names: Vec<(String, Arc<str>)>,
    /// Highest PRIORITY value shipped (0 emerg … 7 debug).
    pub max_priority: u8,
}

impl Filter {
    /// The stream of an entry with these `_SYSTEMD_UNIT` and `SYSLOG_IDENTIFIER` values. The
    /// unit, set by journald from the sender's cgroup, decides when there is one: the
    /// identifier is the sender's to choose (`logger -t kubelet` in a login session carries
    /// `_SYSTEMD_UNIT=session-3.scope`), so it counts only for entries with no unit at all.
    fn stream_for(&self, unit: Option<&[u8]>, ident: Option<&[u8]>) -> Option<Arc<str>> {
        let find = |v: &[u8]| {
            self.names
                .iter()
                .find(|(n, _)| n.as_bytes() == v)
                .map(|(_, s)| s.clone())
        };
        match unit {
            Some(u) => find(u).or_else(|| find(u.strip_suffix(b".service")?)),
            None => find(ident?),
        }
    }
}

/// One journal entry that passed the filter, in the form the rest of the pipeline wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub stream: Arc<str>,
    pub realtime_us: u64,
    pub priority: u8,
    pub pid: Option<u32>,
    /// SYSLOG_IDENTIFIER, else the unit name.
    pub identifier: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub entries_scanned: u64,
    pub entries_matched: u64,
    /// Seqnums skipped within one sequence: entries deleted (vacuumed) before we read them.
    pub missed_entries: u64,
    pub files_opened: u64,
    pub files_finished: u64,
    /// Entries skipped because they could not be read: an item pointing outside the file or at
    /// no DATA object, a payload that does not decompress or decompresses to more than
    /// [`DATA_PAYLOAD_MAX`].
    pub unreadable_entries: u64,
    /// Files given up on: unreadable (I/O error) or corrupt (an object that cannot be walked
    /// past where the file is known complete). Closed; the other files go on.
    pub unreadable_files: u64,
    /// Bytes of compressed DATA payloads decompressed (what filtering first saves).
    pub decompressed_bytes: u64,
}

/// Scratch buffers of DATA payload reads: the bytes as stored, and the payload.
#[derive(Default)]
struct Bufs {
    raw: Vec<u8>,
    out: Vec<u8>,
}

/// What a DATA item is, as far as the filter needs to know.
enum Class {
    Known(Cached),
    /// Compressed and not looked into yet.
    Compressed,
    /// Not a DATA object this reader can read: the entry is unreadable.
    Unreadable,
}

/// What became of one entry.
enum EntryOutcome {
    Matched(JournalRecord),
    Filtered,
    Unreadable,
}

#[derive(Clone)]
enum Cached {
    Skip,
    Message,
    Unit(Arc<[u8]>),
    Ident(Arc<[u8]>),
    Priority(u8),
    Pid(u32),
}

struct OpenFile {
    path: PathBuf,
    file: File,
    key: (u64, u64),
    header: Header,
    /// The scan stops here: the end of the tail entry, or (headers without `tail_entry_offset`)
    /// the start of the tail object, or its end when it is an ENTRY, whose size is final at
    /// allocation but whose content may still be being written (see `next_entry`).
    safe_end: u64,
    /// Every object below this offset was complete at the last header read, so bytes read after
    /// that read are final.
    stable_end: u64,
    /// `stable_end` when the window was filled: window bytes past it may predate their object's
    /// completion (the tail entry half written) and are read again instead.
    win_stable: u64,
    /// ENTRY objects the scan has passed (handed out or in `peek`), in file order: the next one
    /// is complete once the header's `n_entries` counts it.
    entries_found: u64,
    /// Next object to look at.
    scan: u64,
    win_base: u64,
    win: Vec<u8>,
    cache: HashMap<u64, Cached>,
    /// Next entry found by the scan and not yet handed out: (offset, head).
    peek: Option<(u64, format::EntryHead)>,
    /// Bytes decompressed from this file's payloads (added to the reader's stats on close).
    decompressed: u64,
    /// Why the file is given up on (an I/O error, a corrupt object); closed at the next poll.
    broken: Option<String>,
}

impl OpenFile {
    fn open(path: &Path) -> Result<Option<OpenFile>, JournalError> {
        let err = |source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            // Vacuumed between the directory listing and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        let mut f = OpenFile {
            path: path.to_path_buf(),
            file,
            key: (meta.dev(), meta.ino()),
            header: Header {
                incompatible_flags: 0,
                state: 0,
                file_id: [0; 16],
                seqnum_id: [0; 16],
                header_size: 0,
                tail_object_offset: 0,
                n_entries: 0,
                tail_entry_seqnum: 0,
                head_entry_seqnum: 0,
                head_entry_realtime: 0,
                tail_entry_realtime: 0,
                tail_entry_offset: 0,
            },
            safe_end: 0,
            stable_end: 0,
            win_stable: 0,
            entries_found: 0,
            scan: 0,
            win_base: 0,
            win: Vec::new(),
            cache: HashMap::new(),
            peek: None,
            decompressed: 0,
            broken: None,
        };
        if !f.refresh()? {
            return Ok(None);
        }
        f.scan = f.header.header_size;
        Ok(Some(f))
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<usize, JournalError> {
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = off.checked_add(done as u64) else {
                break;
            };
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(JournalError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(done)
    }

    /// Re-reads the header and moves `safe_end` and `stable_end`. `false` when the file has no
    /// valid header yet.
    fn refresh(&mut self) -> Result<bool, JournalError> {
        let mut b = [0u8; format::HEADER_READ_LEN];
        let n = self.read_at(&mut b, 0)?;
        let Some(h) = format::parse_header(&b[..n]) else {
            return Ok(false);
        };
        self.header = h;
        let tail = if h.tail_entry_offset != 0 {
            h.tail_entry_offset
        } else {
            h.tail_object_offset
        };
        if h.n_entries == 0 || tail < h.header_size {
            self.safe_end = self.safe_end.max(h.header_size);
            self.stable_end = self.stable_end.max(h.header_size);
            return Ok(true);
        }
        let mut oh = [0u8; format::OBJECT_HEADER_LEN];
        if self.read_at(&mut oh, tail)? < oh.len() {
            return Ok(true);
        }
        let Some(o) = format::parse_object_header(&oh) else {
            return Ok(true);
        };
        let (safe, stable) = if h.tail_entry_offset != 0 {
            // systemd >= 254 names the last linked entry: complete up to its end.
            let end = tail.saturating_add(o.size);
            (end, end)
        } else if o.kind == format::OBJECT_ENTRY {
            // Older headers name only the tail object. Objects before it are complete (journald
            // finishes one before appending the next). An ENTRY's size is fixed when it is
            // allocated, so the scan may reach it; `next_entry` waits for `n_entries`.
            (tail.saturating_add(o.size), tail)
        } else {
            // A DATA object being written may still shrink (compression sets its final size
            // after the payload): do not step past it.
            (tail, tail)
        };
        self.safe_end = self.safe_end.max(safe);
        self.stable_end = self.stable_end.max(stable);
        Ok(true)
    }

    /// End of the window bytes that are known final (see `win_stable`).
    fn win_trusted_end(&self) -> u64 {
        (self.win_base + self.win.len() as u64).min(self.win_stable)
    }

    /// `len` bytes at `off` through the scan window (refilled when needed). `None` when they are
    /// past `safe_end`.
    fn window(&mut self, off: u64, len: usize) -> Result<Option<&[u8]>, JournalError> {
        let end = off.saturating_add(len as u64);
        // Nothing read through the window is larger than an ENTRY object (far below this).
        if end > self.safe_end || len > SCAN_WINDOW {
            return Ok(None);
        }
        let in_win = off >= self.win_base && end <= self.win_trusted_end();
        if !in_win {
            // Keep a little before `off`: the entry's own DATA objects sit just before it.
            let base = off.saturating_sub(16 * 1024) & !7;
            let want = (SCAN_WINDOW.max(len + (off - base) as usize) as u64)
                .min(self.safe_end - base) as usize;
            self.win.resize(want, 0);
            let mut buf = std::mem::take(&mut self.win);
            let got = self.read_at(&mut buf, base);
            self.win = buf;
            let got = got?;
            self.win.truncate(got);
            self.win_base = base;
            self.win_stable = self.stable_end;
            if end > self.win_base + self.win.len() as u64 {
                return Ok(None);
            }
        }
        let s = (off - self.win_base) as usize;
        Ok(self.win.get(s..s + len))
    }

    /// Finds the next complete ENTRY object at or after `scan`.
    fn next_entry(&mut self) -> Result<Option<(u64, format::EntryHead)>, JournalError> {
        if let Some(p) = self.peek {
            return Ok(Some(p));
        }
        if self.broken.is_some() {
            return Ok(None);
        }
        // Below this every object is complete: one that cannot be walked past is corrupt, not
        // still being written. An archived file is written no more.
        let complete_end = if self.header.state == format::STATE_ARCHIVED {
            self.safe_end
        } else {
            self.stable_end
        };
        loop {
            let off = self.scan;
            let Some(oh) = self.window(off, format::OBJECT_HEADER_LEN)? else {
                return Ok(None);
            };
            let Some(o) = format::parse_object_header(oh) else {
                return Ok(None);
            };
            let next = format::next_object_offset(off, o.size);
            let walkable = o.size >= format::OBJECT_HEADER_LEN as u64
                && next.is_some()
                && off.saturating_add(o.size) <= complete_end;
            if !walkable && off < complete_end {
                self.broken = Some(format!(
                    "corrupt object at offset {off} (type {}, size {})",
                    o.kind, o.size
                ));
                return Ok(None);
            }
            if o.size < format::OBJECT_HEADER_LEN as u64 {
                // Zeroed space: not written yet; wait for more.
                return Ok(None);
            }
            let Some(next) = next else {
                return Ok(None);
            };
            if o.kind == format::OBJECT_ENTRY {
                let Some(obj) = self.window(off, format::ENTRY_ITEMS_OFFSET)? else {
                    return Ok(None);
                };
                let Some(head) = format::parse_entry_head(obj) else {
                    return Ok(None);
                };
                if head.seqnum == 0 || head.seqnum > self.header.tail_entry_seqnum {
                    if off < complete_end {
                        self.broken = Some(format!(
                            "entry at offset {off} has seqnum {} outside the file's 1..={}",
                            head.seqnum, self.header.tail_entry_seqnum
                        ));
                    }
                    return Ok(None);
                }
                // The seqnum is written before the timestamps and items, `n_entries` after them
                // (see the format docs): entries are appended and linked in file order, so this
                // one is whole once `n_entries` counts it. Archived or deleted files are not
                // written any more: what they hold is final.
                if self.entries_found >= self.header.n_entries
                    && self.header.state != format::STATE_ARCHIVED
                    && !self.unlinked()
                {
                    return Ok(None);
                }
                // Complete as of the last header read: bytes read from now on are final (the
                // window may hold older ones of it, read again through `win_stable`).
                self.stable_end = self.stable_end.max(off.saturating_add(o.size));
                self.entries_found += 1;
                self.scan = next;
                self.peek = Some((off, head));
                return Ok(self.peek);
            }
            if off.saturating_add(o.size) > self.safe_end {
                return Ok(None);
            }
            self.scan = next;
        }
    }

    /// The DATA object at `off`: its header and where its payload starts. `None` when there is
    /// none: an offset past the file (or near 2^64), another object kind, a size that does not
    /// fit a payload of at most [`DATA_PAYLOAD_MAX`].
    fn data_object(
        &mut self,
        off: u64,
    ) -> Result<Option<(format::ObjectHeader, u64, usize)>, JournalError> {
        let poff = format::data_payload_offset(self.header.compact());
        // An entry's DATA objects are written before it, so they lie below `safe_end`.
        let Some(hdr_end) = off.checked_add(format::OBJECT_HEADER_LEN as u64) else {
            return Ok(None);
        };
        if hdr_end > self.safe_end {
            return Ok(None);
        }
        let mut hdr = [0u8; format::OBJECT_HEADER_LEN];
        if off >= self.win_base && hdr_end <= self.win_trusted_end() {
            let s = (off - self.win_base) as usize;
            hdr.copy_from_slice(&self.win[s..s + format::OBJECT_HEADER_LEN]);
        } else if self.read_at(&mut hdr, off)? < hdr.len() {
            return Ok(None);
        }
        let Some(o) = format::parse_object_header(&hdr) else {
            return Ok(None);
        };
        let Some(plen) = o.size.checked_sub(poff as u64) else {
            return Ok(None);
        };
        if o.kind != format::OBJECT_DATA || plen > DATA_PAYLOAD_MAX {
            return Ok(None);
        }
        let Some(pstart) = off.checked_add(poff as u64) else {
            return Ok(None);
        };
        if pstart
            .checked_add(plen)
            .is_none_or(|end| end > self.safe_end)
        {
            return Ok(None);
        }
        Ok(Some((o, pstart, plen as usize)))
    }

    /// `len` bytes at `at` into `buf`, from the window when they are in it. `false` when the
    /// file is shorter.
    fn read_into(&mut self, at: u64, len: usize, buf: &mut Vec<u8>) -> Result<bool, JournalError> {
        let end = at.saturating_add(len as u64);
        buf.clear();
        if at >= self.win_base && end <= self.win_trusted_end() {
            let s = (at - self.win_base) as usize;
            buf.extend_from_slice(&self.win[s..s + len]);
            return Ok(true);
        }
        buf.resize(len, 0);
        Ok(self.read_at(buf, at)? == len)
    }

    /// The payload of the DATA object at `off` in `bufs.out`, at most `limit` bytes of it,
    /// decompressed under [`DATA_PAYLOAD_MAX`]. `None`: unreadable (see [`Self::data_object`]),
    /// or it does not decompress.
    fn data_payload(
        &mut self,
        off: u64,
        limit: usize,
        bufs: &mut Bufs,
    ) -> Result<Option<payload::Inflated>, JournalError> {
        let Some((o, pstart, plen)) = self.data_object(off)? else {
            return Ok(None);
        };
        let compressed = o.flags & COMPRESSED != 0;
        // Uncompressed: only what is wanted is read.
        let want = if compressed { plen } else { plen.min(limit) };
        if !self.read_into(pstart, want, &mut bufs.raw)? {
            return Ok(None);
        }
        if !compressed {
            std::mem::swap(&mut bufs.raw, &mut bufs.out);
            return Ok(Some(if plen > limit {
                payload::Inflated::Truncated
            } else {
                payload::Inflated::Whole
            }));
        }
        let r = payload::inflate(
            o.flags,
            &bufs.raw,
            limit,
            DATA_PAYLOAD_MAX as usize,
            &mut bufs.out,
        );
        self.decompressed += bufs.out.len() as u64;
        Ok(r.ok())
    }

    /// Field kind (and small value) of the DATA object at `off`, cached. A compressed payload
    /// is looked into (its first [`FIELD_PEEK_MAX`] bytes) only when `inflate` says so.
    fn classify(
        &mut self,
        off: u64,
        bufs: &mut Bufs,
        inflate: bool,
    ) -> Result<Class, JournalError> {
        if let Some(c) = self.cache.get(&off) {
            return Ok(Class::Known(c.clone()));
        }
        if !inflate {
            let Some((o, _, _)) = self.data_object(off)? else {
                return Ok(Class::Unreadable);
            };
            if o.flags & COMPRESSED != 0 {
                return Ok(Class::Compressed);
            }
        }
        if self.data_payload(off, FIELD_PEEK_MAX, bufs)?.is_none() {
            return Ok(Class::Unreadable);
        }
        let p = &bufs.out[..];
        let c = if p.starts_with(b"MESSAGE=") {
            // Messages are mostly unique: not worth a cache slot.
            return Ok(Class::Known(Cached::Message));
        } else if let Some(v) = p.strip_prefix(b"_SYSTEMD_UNIT=") {
            // A value cut at FIELD_PEEK_MAX is longer than any unit name: it matches nothing.
            Cached::Unit(v.into())
        } else if let Some(v) = p.strip_prefix(b"SYSLOG_IDENTIFIER=") {
            Cached::Ident(v.into())
        } else if let Some(v) = p.strip_prefix(b"PRIORITY=") {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Cached::Priority)
                .unwrap_or(Cached::Skip)
        } else if let Some(v) = p.strip_prefix(b"_PID=") {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Cached::Pid)
                .unwrap_or(Cached::Skip)
        } else {
            Cached::Skip
        };
        if self.cache.len() >= DATA_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(off, c.clone());
        Ok(Class::Known(c))
    }

    fn finished(&self) -> bool {
        self.peek.is_none()
            && self.scan >= self.safe_end
            && self.header.state == format::STATE_ARCHIVED
    }

    fn unlinked(&self) -> bool {
        self.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true)
    }
}

/// `v` as text, invalid UTF-8 replaced, with `room` bytes of spare capacity. Valid text (nearly
/// all of it) goes through the standard validator's ASCII fast path and is copied once; the
/// replacing decoder is several times slower per byte.
fn utf8(v: &[u8], room: usize) -> String {
    let mut s = String::with_capacity(v.len() + room);
    match std::str::from_utf8(v) {
        Ok(t) => s.push_str(t),
        Err(_) => s.push_str(&String::from_utf8_lossy(v)),
    }
    s
}

/// Reads the journal files of one or more directories in order, from a cursor on.
pub struct JournalReader {
    dirs: Vec<PathBuf>,
    files: Vec<OpenFile>,
    /// (dev, ino) of files read to the end (or given up on) and closed: never reopened.
    finished: HashSet<(u64, u64)>,
    position: Option<Cursor>,
    last_scan: Option<Instant>,
    stats: ReaderStats,
    items: Vec<u64>,
    /// Compressed items of the entry being read, looked into only if its other fields pass.
    deferred: Vec<u64>,
    bufs: Bufs,
    user_journals: bool,
}

/// What one [`JournalReader::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// Entries looked at (matched or not).
    pub scanned: usize,
    /// The position after them (unchanged when nothing was scanned).
    pub position: Option<Cursor>,
}

impl JournalReader {
    /// A reader of `dirs` (each holding `*.journal` files) that hands out entries after `after`,
    /// or everything present when `after` is `None`. Users' journals (`user-<uid>.journal`) are
    /// not read unless [`Self::with_user_journals`] asks for them.
    pub fn new(dirs: Vec<PathBuf>, after: Option<Cursor>) -> JournalReader {
        JournalReader {
            dirs,
            files: Vec::new(),
            finished: HashSet::new(),
            position: after,
            last_scan: None,
            stats: ReaderStats::default(),
            items: Vec::new(),
            deferred: Vec::new(),
            bufs: Bufs::default(),
            user_journals: false,
        }
    }

    /// Also reads users' journals: for units that run as a regular (non-system) uid, whose
    /// entries journald files there.
    pub fn with_user_journals(mut self, read: bool) -> JournalReader {
        self.user_journals = read;
        self
    }

    pub fn stats(&self) -> ReaderStats {
        let mut s = self.stats;
        s.decompressed_bytes += self.files.iter().map(|f| f.decompressed).sum::<u64>();
        s
    }

    pub fn position(&self) -> Option<Cursor> {
        self.position
    }

    fn rescan_dirs(&mut self) -> Result<(), JournalError> {
        self.last_scan = Some(Instant::now());
        let open: HashSet<(u64, u64)> = self.files.iter().map(|f| f.key).collect();
        for dir in self.dirs.clone() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                // journald creates the directory on its first write.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(JournalError::ReadDir { path: dir, source }),
            };
            for de in rd.flatten() {
                let path = de.path();
                // `*.journal~` are files journald gave up on; they are not appended to.
                if path.extension().is_none_or(|e| e != "journal") {
                    continue;
                }
                if !self.user_journals
                    && de
                        .file_name()
                        .to_string_lossy()
                        .starts_with(USER_JOURNAL_PREFIX)
                {
                    continue;
                }
                let Ok(meta) = de.metadata() else { continue };
                let key = (meta.dev(), meta.ino());
                if open.contains(&key) || self.finished.contains(&key) {
                    continue;
                }
                let f = match OpenFile::open(&path) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => {
                        // Never retried: one unreadable file must not hold up the others.
                        tracing::warn!(error = %e, "skipping an unreadable journal file");
                        self.stats.unreadable_files += 1;
                        self.finished.insert(key);
                        continue;
                    }
                };
                // A file wholly behind the cursor and closed for writing: skip it for good.
                if let Some(c) = self.position {
                    let h = f.header;
                    let behind = h.n_entries == 0
                        || c.covers(&h.seqnum_id, h.tail_entry_seqnum, h.tail_entry_realtime);
                    if behind && h.state == format::STATE_ARCHIVED {
                        self.finished.insert(key);
                        continue;
                    }
                }
                self.stats.files_opened += 1;
                self.files.push(f);
            }
        }
        Ok(())
    }

    /// Hands out up to `max` matching records (scanning possibly more entries) in journal order.
    /// Returns how many entries were scanned and the position after them; call again when
    /// `scanned == 0` only after a pause (the caller's poll interval). A file that cannot be
    /// read, or turns out corrupt, is closed and counted ([`ReaderStats::unreadable_files`]);
    /// an entry that cannot be read is skipped and counted; only a directory that cannot be
    /// listed is an error.
    pub fn poll(
        &mut self,
        filter: &Filter,
        out: &mut Vec<JournalRecord>,
        max: usize,
    ) -> Result<Poll, JournalError> {
        let idle_rescan = self.last_scan.is_none_or(|t| t.elapsed() >= DIR_RESCAN);
        if idle_rescan {
            self.rescan_dirs()?;
        }
        for f in &mut self.files {
            if let Err(e) = f.refresh() {
                f.broken = Some(e.to_string());
            }
        }
        let mut scanned = 0usize;
        let mut matched = 0usize;
        while matched < max {
            // The file whose next entry comes first.
            let mut best: Option<(usize, format::EntryHead, [u8; 16])> = None;
            for i in 0..self.files.len() {
                let head = match self.files[i].next_entry() {
                    Ok(Some((_, head))) => head,
                    Ok(None) => continue,
                    Err(e) => {
                        self.files[i].broken = Some(e.to_string());
                        continue;
                    }
                };
                let sid = self.files[i].header.seqnum_id;
                let better = match &best {
                    None => true,
                    Some((_, b, bsid)) => {
                        if *bsid == sid {
                            head.seqnum < b.seqnum
                        } else {
                            head.realtime < b.realtime
                        }
                    }
                };
                if better {
                    best = Some((i, head, sid));
                }
            }
            let Some((i, head, sid)) = best else { break };
            let (off, _) = self.files[i].peek.take().unwrap_or((0, head));
            scanned += 1;
            if let Some(c) = self.position {
                if c.covers(&sid, head.seqnum, head.realtime) {
                    continue;
                }
                if c.seqnum_id == sid && head.seqnum > c.seqnum.saturating_add(1) {
                    self.stats.missed_entries += head.seqnum - c.seqnum - 1;
                }
            }
            self.position = Some(Cursor {
                seqnum_id: sid,
                seqnum: head.seqnum,
                realtime_us: head.realtime,
            });
            self.stats.entries_scanned += 1;
            match self.read_entry(i, off, head, filter) {
                Ok(EntryOutcome::Matched(r)) => {
                    out.push(r);
                    matched += 1;
                    self.stats.entries_matched += 1;
                }
                Ok(EntryOutcome::Filtered) => {}
                Ok(EntryOutcome::Unreadable) => self.stats.unreadable_entries += 1,
                Err(e) => {
                    self.stats.unreadable_entries += 1;
                    self.files[i].broken = Some(e.to_string());
                }
            }
        }
        // Close files that are done: archived and read to the end, deleted and read to the end,
        // or given up on.
        let mut k = 0;
        let mut closed = false;
        while k < self.files.len() {
            let f = &mut self.files[k];
            let mut drained = f.peek.is_none() && f.scan >= f.safe_end;
            if drained && f.broken.is_none() && f.unlinked() {
                // Deleted (vacuumed) since this poll's header read: entries journald appended
                // before archiving it may still be unread; close only when there are none.
                if let Err(e) = f.refresh() {
                    f.broken = Some(e.to_string());
                }
                drained = f.peek.is_none() && f.scan >= f.safe_end;
            }
            if let Some(why) = &f.broken {
                tracing::warn!(
                    path = %f.path.display(),
                    error = %why,
                    "closing a journal file that cannot be read further; its remaining entries are skipped"
                );
                self.stats.unreadable_files += 1;
            }
            if f.broken.is_some() || f.finished() || (drained && f.unlinked()) {
                self.finished.insert(f.key);
                self.stats.files_finished += 1;
                self.stats.decompressed_bytes += f.decompressed;
                self.files.swap_remove(k);
                closed = true;
            } else {
                k += 1;
            }
        }
        if scanned == 0 {
            // Caught up: give the scan buffers back (an idle agent should be small); the next
            // entry costs one read of just the new bytes.
            for f in &mut self.files {
                f.win = Vec::new();
                f.win_base = 0;
                // The field cache refills from a few reads when entries come again.
                f.cache = HashMap::new();
            }
            self.bufs = Bufs::default();
            self.items = Vec::new();
            self.deferred = Vec::new();
        }
        if !idle_rescan && (closed || self.files.is_empty()) {
            // A file was archived (rotation) or none is open: its successor may be there
            // already. Otherwise the periodic rescan finds new files within DIR_RESCAN.
            self.rescan_dirs()?;
        }
        Ok(Poll {
            scanned,
            position: self.position,
        })
    }

    /// Reads one entry: first the fields stored uncompressed (unit, identifier and priority
    /// always are, unless journald's `Compress=` threshold is set below their size), and only
    /// for an entry they do not rule out, its compressed ones and the message.
    fn read_entry(
        &mut self,
        i: usize,
        off: u64,
        head: format::EntryHead,
        filter: &Filter,
    ) -> Result<EntryOutcome, JournalError> {
        let f = &mut self.files[i];
        let bufs = &mut self.bufs;
        let compact = f.header.compact();
        self.items.clear();
        self.deferred.clear();
        // The item table: up to the object's size (re-read its header for the size).
        let Some(oh) = f.window(off, format::OBJECT_HEADER_LEN)? else {
            return Ok(EntryOutcome::Unreadable);
        };
        let Some(o) = format::parse_object_header(oh) else {
            return Ok(EntryOutcome::Unreadable);
        };
        let Some(obj) = f.window(off, usize::try_from(o.size).unwrap_or(usize::MAX))? else {
            return Ok(EntryOutcome::Unreadable);
        };
        self.items.extend(format::entry_item_offsets(obj, compact));
        let mut fields = Fields::default();
        for &item in &self.items {
            match f.classify(item, bufs, false)? {
                Class::Known(c) => fields.set(item, c),
                Class::Compressed => self.deferred.push(item),
                Class::Unreadable => return Ok(EntryOutcome::Unreadable),
            }
        }
        if fields.ruled_out(filter) {
            return Ok(EntryOutcome::Filtered);
        }
        for &item in &self.deferred {
            match f.classify(item, bufs, true)? {
                Class::Known(c) => fields.set(item, c),
                Class::Compressed | Class::Unreadable => return Ok(EntryOutcome::Unreadable),
            }
        }
        let priority = fields.priority.unwrap_or(DEFAULT_PRIORITY);
        if priority > filter.max_priority {
            return Ok(EntryOutcome::Filtered);
        }
        let Some(stream) = filter.stream_for(fields.unit.as_deref(), fields.ident.as_deref())
        else {
            return Ok(EntryOutcome::Filtered);
        };
        let identifier = fields
            .ident
            .or(fields.unit)
            .map(|v| utf8(&v, 0))
            .unwrap_or_default();
        let message = match fields.message {
            Some(m) => match f.data_payload(m, DATA_PAYLOAD_MAX as usize, bufs)? {
                Some(payload::Inflated::Whole) => match bufs.out.strip_prefix(b"MESSAGE=") {
                    // Room for the syslog prefix `Record::from_journal` puts in front.
                    Some(v) => utf8(v, identifier.len() + SYSLOG_PREFIX_ROOM),
                    None => String::new(),
                },
                // Over the cap, or it does not decompress.
                Some(payload::Inflated::Truncated) | None => {
                    return Ok(EntryOutcome::Unreadable);
                }
            },
            None => String::new(),
        };
        Ok(EntryOutcome::Matched(JournalRecord {
            stream,
            realtime_us: head.realtime,
            priority,
            pid: fields.pid,
            identifier,
            message,
        }))
    }
}

/// The fields of one entry the filter and the record need.
#[derive(Default)]
struct Fields {
    unit: Option<Arc<[u8]>>,
    ident: Option<Arc<[u8]>>,
    priority: Option<u8>,
    pid: Option<u32>,
    /// Offset of the MESSAGE item.
    message: Option<u64>,
}

impl Fields {
    fn set(&mut self, item: u64, c: Cached) {
        match c {
            Cached::Skip => {}
            Cached::Message => self.message = Some(item),
            Cached::Unit(v) => self.unit = Some(v),
            Cached::Ident(v) => self.ident = Some(v),
            Cached::Priority(p) => self.priority = Some(p),
            Cached::Pid(p) => self.pid = Some(p),
        }
    }

    /// Whether the fields known so far rule the entry out whatever the others say: a unit that
    /// is not configured (the unit decides when there is one), a priority above the limit, or,
    /// with no unit, an identifier that is not configured.
    fn ruled_out(&self, filter: &Filter) -> bool {
        if self.priority.is_some_and(|p| p > filter.max_priority) {
            return true;
        }
        match (&self.unit, &self.ident) {
            (Some(_), _) | (None, Some(_)) => filter
                .stream_for(self.unit.as_deref(), self.ident.as_deref())
                .is_none(),
            (None, None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            seqnum_id: [0xab; 16],
            seqnum: 0x1234,
            realtime_us: 99,
        };
        assert_eq!(Cursor::parse(&c.to_text()).expect("parse"), c);
        assert!(Cursor::parse("s=zz;i=1;t=2").is_err());
        assert!(Cursor::parse("i=1;t=2").is_err());
    }

    #[test]
    fn the_unit_decides_and_the_identifier_only_without_one() {
        let f = Filter {
            names: vec![
                ("kubelet".into(), "kubelet".into()),
                ("bench".into(), "bench".into()),
            ],
            max_priority: 6,
        };
        assert_eq!(
            f.stream_for(Some(b"kubelet.service"), None).as_deref(),
            Some("kubelet")
        );
        assert_eq!(
            f.stream_for(Some(b"kubelet"), Some(b"other")).as_deref(),
            Some("kubelet")
        );
        // The unit decides when there is one: an identifier is the sender's to choose.
        assert_eq!(f.stream_for(Some(b"other.service"), Some(b"bench")), None);
        assert_eq!(
            f.stream_for(Some(b"session-3.scope"), Some(b"kubelet")),
            None
        );
        assert_eq!(f.stream_for(None, Some(b"bench")).as_deref(), Some("bench"));
        assert_eq!(f.stream_for(None, Some(b"nope")), None);
    }
}
