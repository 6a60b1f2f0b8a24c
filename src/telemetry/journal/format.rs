//! The on-disk journal file format, as far as a forward reader needs it.
//!
//! Source: systemd's `docs/JOURNAL_FILE_FORMAT.md` (systemd 252–257) and its `journal-file.c`. A
//! journal file is a header followed by 8-byte-aligned objects laid end to end (`ALIGN64(size)`
//! apart). journald writes the DATA objects of an entry first (a compressed payload shrinks its
//! object's `size` after the payload is written), then allocates the ENTRY object, bumps the
//! header's `tail_entry_seqnum`, writes the entry's seqnum, timestamps and items, and only then,
//! after a memory fence, links it: `n_entries`, the tail timestamps and, from systemd 254 on,
//! `tail_entry_offset`. systemd 252 (Debian 12) has a 264-byte header without that field, so its
//! header names only the tail *object*, which may be an entry still being written; objects before
//! the tail object are complete and immutable (as far as a reader of payloads and items is
//! concerned). That is what lets [`super::reader`] read files while journald appends to them
//! without mmap.
//!
//! Pure parsing of byte slices; no I/O here.

/// `LPKSHHRH` — the header signature.
pub const SIGNATURE: &[u8; 8] = b"LPKSHHRH";
/// Header fields a reader needs end at byte 272 (`tail_entry_offset`, added in systemd 254;
/// systemd 252's header is 264 bytes and lacks it).
pub const HEADER_READ_LEN: usize = 272;
/// Smallest header a journal file ever had (systemd 187): up to `tail_entry_monotonic`.
pub const HEADER_MIN_LEN: u64 = 208;
/// Object header: type (u8), flags (u8), 6 reserved bytes, size (le64).
pub const OBJECT_HEADER_LEN: usize = 16;

pub const OBJECT_DATA: u8 = 1;
pub const OBJECT_ENTRY: u8 = 3;

/// DATA object compression flags (object header `flags`).
pub const OBJECT_COMPRESSED_XZ: u8 = 1 << 0;
pub const OBJECT_COMPRESSED_LZ4: u8 = 1 << 1;
pub const OBJECT_COMPRESSED_ZSTD: u8 = 1 << 2;

/// Header incompatible flag: compact mode (32-bit offsets in entries and entry arrays, two extra
/// le32 fields in DATA objects). Default on Debian 12's systemd 252.
pub const HEADER_INCOMPATIBLE_COMPACT: u32 = 1 << 4;

/// Header `state` values.
pub const STATE_OFFLINE: u8 = 0;
pub const STATE_ONLINE: u8 = 1;
pub const STATE_ARCHIVED: u8 = 2;

/// The header fields the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub incompatible_flags: u32,
    pub state: u8,
    pub file_id: [u8; 16],
    pub seqnum_id: [u8; 16],
    pub header_size: u64,
    pub tail_object_offset: u64,
    pub n_entries: u64,
    pub tail_entry_seqnum: u64,
    pub head_entry_seqnum: u64,
    pub head_entry_realtime: u64,
    pub tail_entry_realtime: u64,
    /// Offset of the last linked ENTRY object; 0 when the header predates systemd 254.
    pub tail_entry_offset: u64,
}

impl Header {
    pub fn compact(&self) -> bool {
        self.incompatible_flags & HEADER_INCOMPATIBLE_COMPACT != 0
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn id128(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        a.copy_from_slice(s);
    }
    a
}

/// Parses a header from the first bytes of a file; `None` when it is not a journal file (or is
/// too short to be one yet — journald creates files before writing the header).
pub fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_MIN_LEN as usize || b.get(..8)? != SIGNATURE {
        return None;
    }
    let header_size = le64(b, 88);
    if header_size < HEADER_MIN_LEN {
        return None;
    }
    Some(Header {
        incompatible_flags: le32(b, 12),
        state: b[16],
        file_id: id128(b, 24),
        seqnum_id: id128(b, 72),
        header_size,
        tail_object_offset: le64(b, 136),
        n_entries: le64(b, 152),
        tail_entry_seqnum: le64(b, 160),
        head_entry_seqnum: le64(b, 168),
        head_entry_realtime: le64(b, 184),
        tail_entry_realtime: le64(b, 192),
        tail_entry_offset: if header_size >= HEADER_READ_LEN as u64 && b.len() >= HEADER_READ_LEN {
            le64(b, 264)
        } else {
            0
        },
    })
}

/// An object header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub kind: u8,
    pub flags: u8,
    pub size: u64,
}

pub fn parse_object_header(b: &[u8]) -> Option<ObjectHeader> {
    if b.len() < OBJECT_HEADER_LEN {
        return None;
    }
    Some(ObjectHeader {
        kind: b[0],
        flags: b[1],
        size: le64(b, 8),
    })
}

/// Objects are 8-byte aligned: the next one starts at `ALIGN64(offset + size)`.
pub fn next_object_offset(offset: u64, size: u64) -> Option<u64> {
    offset.checked_add(size)?.checked_add(7).map(|v| v & !7)
}

/// Where the payload (`FIELD=value`) of a DATA object starts.
pub fn data_payload_offset(compact: bool) -> usize {
    if compact { 72 } else { 64 }
}

/// The fixed part of an ENTRY object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    pub seqnum: u64,
    pub realtime: u64,
    pub monotonic: u64,
    pub boot_id: [u8; 16],
}

/// ENTRY object: header, seqnum, realtime, monotonic, boot_id, xor_hash, then items from 64.
pub const ENTRY_ITEMS_OFFSET: usize = 64;

pub fn parse_entry_head(obj: &[u8]) -> Option<EntryHead> {
    if obj.len() < ENTRY_ITEMS_OFFSET {
        return None;
    }
    Some(EntryHead {
        seqnum: le64(obj, 16),
        realtime: le64(obj, 24),
        monotonic: le64(obj, 32),
        boot_id: id128(obj, 40),
    })
}

/// The DATA object offsets an ENTRY object references (compact: le32 each; regular: le64 offset
/// + le64 hash).
pub fn entry_item_offsets(obj: &[u8], compact: bool) -> impl Iterator<Item = u64> + '_ {
    let items = obj.get(ENTRY_ITEMS_OFFSET..).unwrap_or(&[]);
    let step = if compact { 4 } else { 16 };
    items.chunks_exact(step).map(move |c| {
        if compact {
            u64::from(le32(c, 0))
        } else {
            le64(c, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_signature_and_size() {
        let mut h = vec![0u8; HEADER_READ_LEN];
        assert!(parse_header(&h).is_none());
        h[..8].copy_from_slice(SIGNATURE);
        h[88..96].copy_from_slice(&(HEADER_READ_LEN as u64).to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_INCOMPATIBLE_COMPACT.to_le_bytes());
        h[264..272].copy_from_slice(&4242u64.to_le_bytes());
        let p = parse_header(&h).expect("header");
        assert!(p.compact());
        assert_eq!(p.tail_entry_offset, 4242);
    }

    #[test]
    fn alignment_and_items() {
        assert_eq!(next_object_offset(16, 9), Some(32));
        assert_eq!(next_object_offset(16, 16), Some(32));
        let mut obj = vec![0u8; ENTRY_ITEMS_OFFSET + 8];
        obj[64..68].copy_from_slice(&100u32.to_le_bytes());
        obj[68..72].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(
            entry_item_offsets(&obj, true).collect::<Vec<_>>(),
            vec![100, 200]
        );
        // Regular mode: one 16-byte item (le64 offset + le64 hash); 8 bytes are not a whole item.
        assert_eq!(entry_item_offsets(&obj, false).count(), 0);
    }
}
