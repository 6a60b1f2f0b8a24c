//! DATA payload decompression, always capped.
//!
//! journald compresses a DATA payload of `Compress=` bytes or more (default 512) with zstd
//! (systemd >= 246 builds default to it), lz4 or xz. A local user decides what journald stores
//! (any identifier, payloads up to journald's `DATA_SIZE_MAX`), so a payload here is untrusted
//! input: a few kilobytes of zstd can stand for gigabytes. Nothing is ever inflated past the
//! caller's limit, and the cost of a look at a payload's field name is bounded by that limit
//! where the codec streams (zstd); lz4 and xz (journald's older codecs) state their full size up
//! front (lz4's le64 size, xz's LZMA2 chunk headers), which is checked before anything is
//! decoded.
//!
//! Pure functions of byte slices; no I/O.

use std::io::Read;

use super::format;

/// What became of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflated {
    /// `out` holds the whole payload.
    Whole,
    /// The payload is longer than the limit; `out` holds its first `limit` bytes.
    Truncated,
}

/// Why a payload cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// It does not decode (corrupt, or a codec flag combination journald never writes).
    Corrupt,
    /// Its decompressed size is above `hard_max` (lz4 and xz, whose size is known up front).
    TooLarge,
}

/// Decompresses `raw` (compressed as the DATA object `flags` say; uncompressed when none) into
/// `out`, at most `limit` bytes of it. lz4 and xz payloads larger than `hard_max` are refused
/// unread; smaller ones are decoded whole and cut at `limit`.
pub fn inflate(
    flags: u8,
    raw: &[u8],
    limit: usize,
    hard_max: usize,
    out: &mut Vec<u8>,
) -> Result<Inflated, PayloadError> {
    out.clear();
    let cut = |out: &mut Vec<u8>| {
        if out.len() > limit {
            out.truncate(limit);
            Inflated::Truncated
        } else {
            Inflated::Whole
        }
    };
    if flags & format::OBJECT_COMPRESSED_ZSTD != 0 {
        let d = ruzstd::decoding::StreamingDecoder::new(raw).map_err(|_| PayloadError::Corrupt)?;
        // One byte past the limit tells a payload of exactly `limit` bytes from a longer one.
        d.take(limit as u64 + 1)
            .read_to_end(out)
            .map_err(|_| PayloadError::Corrupt)?;
        Ok(cut(out))
    } else if flags & format::OBJECT_COMPRESSED_LZ4 != 0 {
        // journald's LZ4 payload: le64 decompressed size, then one LZ4 block.
        let (size, block) = raw.split_first_chunk::<8>().ok_or(PayloadError::Corrupt)?;
        let size = u64::from_le_bytes(*size);
        if size > hard_max as u64 {
            return Err(PayloadError::TooLarge);
        }
        *out =
            lz4_flex::block::decompress(block, size as usize).map_err(|_| PayloadError::Corrupt)?;
        Ok(cut(out))
    } else if flags & format::OBJECT_COMPRESSED_XZ != 0 {
        if xz_unpacked_size(raw).ok_or(PayloadError::Corrupt)? > hard_max as u64 {
            return Err(PayloadError::TooLarge);
        }
        // lzma-rs 0.3 adds to an untrusted u32 from the stream footer (`backward_size + 1`,
        // decode/xz.rs): a build with overflow checks panics on a footer of 0xffffffff (found by
        // `scripts/fuzz journal`, seed fuzz/corpus/journal/xz-backward-size-overflow). A panic in
        // the decompressor is a corrupt payload, never a dead telemetry task that would meet the
        // same entry again after its restart.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lzma_rs::xz_decompress(&mut std::io::BufReader::new(raw), out)
        }));
        match decoded {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(PayloadError::Corrupt),
        }
        Ok(cut(out))
    } else {
        out.extend_from_slice(&raw[..raw.len().min(limit)]);
        Ok(if raw.len() > limit {
            Inflated::Truncated
        } else {
            Inflated::Whole
        })
    }
}

/// The decompressed size an xz stream announces: the sum of its LZMA2 chunks' unpacked sizes,
/// which bound what the decoder writes (it decodes each chunk to exactly its stated size).
/// `None` when the stream cannot be walked. Layout: xz file format 1.0.4 (stream header 12
/// bytes; block header `(byte + 1) * 4` bytes, a 0 byte starting the index instead; block data
/// padded to 4; check of 0/4/8/16/32/64 bytes by type) and the LZMA2 chunk format of liblzma's
/// `lzma2_decoder.c` (0: end; 1, 2: uncompressed chunk, be16 size - 1; >= 0x80: LZMA chunk,
/// 5 bits + be16 of unpacked size - 1, be16 packed size - 1, a props byte from 0xc0 on).
pub fn xz_unpacked_size(x: &[u8]) -> Option<u64> {
    const STREAM_HEADER: usize = 12;
    let check = *x.get(7)? & 0x0f;
    let check_len = if check == 0 {
        0
    } else {
        4usize << ((check - 1) / 3)
    };
    let be16 = |at: usize| -> Option<u64> {
        Some(u64::from(u16::from_be_bytes([
            *x.get(at)?,
            *x.get(at + 1)?,
        ])))
    };
    let mut at = STREAM_HEADER;
    let mut total = 0u64;
    loop {
        let h = *x.get(at)?;
        if h == 0 {
            // The index, then the stream footer. lzma-rs 0.3 computes `backward_size + 1` on
            // the footer's u32 (decode/xz.rs), which overflows, and panics with overflow checks
            // (the fuzz build aborts on any panic), for 0xffffffff: such a stream is corrupt,
            // refused before lzma-rs reads it.
            let footer = xz_index_end(x, at)?;
            let backward = x.get(footer + 4..footer + 8)?;
            if backward == [0xff; 4] {
                return None;
            }
            return Some(total);
        }
        at = at.checked_add((usize::from(h) + 1) * 4)?;
        loop {
            let c = *x.get(at)?;
            at += 1;
            match c {
                0 => break,
                1 | 2 => {
                    let n = be16(at)? + 1;
                    total = total.checked_add(n)?;
                    at = at.checked_add(2 + n as usize)?;
                }
                0x80..=0xff => {
                    let n = ((u64::from(c & 0x1f) << 16) | be16(at)?) + 1;
                    let packed = be16(at + 2)? + 1;
                    total = total.checked_add(n)?;
                    let props = usize::from(c >= 0xc0);
                    at = at.checked_add(4 + props + packed as usize)?;
                }
                _ => return None,
            }
        }
        // Block padding to a multiple of 4 (the stream header is 12 bytes: absolute offsets
        // align the same), then the check.
        at = at.checked_add(3)? & !3;
        at = at.checked_add(check_len)?;
    }
}

/// Where the xz index starting at `at` ends (its records, padding and CRC32): the stream
/// footer's offset. Index: a 0 byte, the record count, two multibyte integers per record,
/// padding to 4, CRC32 (xz file format 1.0.4 section 4).
fn xz_index_end(x: &[u8], at: usize) -> Option<usize> {
    // A multibyte integer: 7 bits per byte, low first, at most 9 bytes.
    let varint = |p: usize| -> Option<(u64, usize)> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = *x.get(p + i)?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    };
    let mut p = at + 1;
    let (count, n) = varint(p)?;
    p += n;
    // Each integer takes a byte at least: a count beyond the input is corrupt.
    if count > x.len() as u64 {
        return None;
    }
    for _ in 0..count * 2 {
        let (_, n) = varint(p)?;
        p += n;
    }
    p = p.checked_add(3)? & !3;
    p.checked_add(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_is_cut_at_the_limit() {
        let text = vec![b'a'; 10_000];
        let c = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut out = Vec::new();
        let z = format::OBJECT_COMPRESSED_ZSTD;
        assert_eq!(
            inflate(z, &c, 100, 1 << 20, &mut out),
            Ok(Inflated::Truncated)
        );
        assert_eq!(out.len(), 100);
        assert_eq!(
            inflate(z, &c, 10_000, 1 << 20, &mut out),
            Ok(Inflated::Whole)
        );
        assert_eq!(out, text);
        assert_eq!(
            inflate(z, b"not zstd", 100, 100, &mut out),
            Err(PayloadError::Corrupt)
        );
    }

    #[test]
    fn lz4_and_xz_state_their_size_first() {
        let text = b"MESSAGE=hello hello hello hello".to_vec();
        let mut l = (text.len() as u64).to_le_bytes().to_vec();
        l.extend_from_slice(&lz4_flex::block::compress(&text));
        let mut out = Vec::new();
        let lz4 = format::OBJECT_COMPRESSED_LZ4;
        assert_eq!(inflate(lz4, &l, 1000, 1000, &mut out), Ok(Inflated::Whole));
        assert_eq!(out, text);
        assert_eq!(
            inflate(lz4, &l, 1000, 10, &mut out),
            Err(PayloadError::TooLarge)
        );
        let mut x = Vec::new();
        lzma_rs::xz_compress(&mut &text[..], &mut x).expect("xz");
        assert_eq!(xz_unpacked_size(&x), Some(text.len() as u64));
        let xz = format::OBJECT_COMPRESSED_XZ;
        assert_eq!(inflate(xz, &x, 8, 1000, &mut out), Ok(Inflated::Truncated));
        assert_eq!(out, b"MESSAGE=");
        assert_eq!(
            inflate(xz, &x, 8, 10, &mut out),
            Err(PayloadError::TooLarge)
        );
        assert_eq!(xz_unpacked_size(&x[..20]), None);
        // The footer (last 12 bytes: CRC32, backward size, flags, "YZ") found past the index;
        // a backward size lzma-rs would overflow on is refused before it reads the stream.
        let footer = x.len() - 12;
        let mut bad = x.clone();
        bad[footer + 4..footer + 8].copy_from_slice(&[0xff; 4]);
        assert_eq!(xz_unpacked_size(&bad), None);
        assert_eq!(
            inflate(xz, &bad, 1000, 1000, &mut out),
            Err(PayloadError::Corrupt)
        );
    }
}
