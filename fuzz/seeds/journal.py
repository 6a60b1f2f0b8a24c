#!/usr/bin/env python3
"""Writes the journal seeds of fuzz/corpus/journal/: small journal files in journald's format
(systemd docs/JOURNAL_FILE_FORMAT.md), without the hash tables and entry arrays the reader does
not use. The zstd payloads (journald-zstd-payloads.bin, le32 length + bytes each) were cut from
a file written by Debian's systemd-journald (messages over its 512-byte compression threshold);
xz and lz4 payloads are made here. Usage: journal.py OUT_DIR"""
import lzma, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
COMPACT, ZSTD_FLAG, XZ, LZ4, ZSTD = 1 << 4, 1 << 3, 1, 2, 4


def align(n):
    return (n + 7) & ~7


def lz4_literals(raw):
    """One LZ4 block holding only literals, with journald's le64 size in front."""
    n, tok = len(raw), bytearray()
    if n < 15:
        tok.append(n << 4)
    else:
        tok.append(0xF0)
        rest = n - 15
        while rest >= 255:
            tok.append(255)
            rest -= 255
        tok.append(rest)
    return struct.pack("<Q", n) + bytes(tok) + raw


def journal(entries, compact=True, header_size=272, state=2, tail_entry_offset=True, flags=0):
    """entries: list of [(flag, payload bytes)] per entry."""
    objs, off, entry_offs, seq = bytearray(), header_size, [], 0
    poff = 72 if compact else 64
    for items in entries:
        data_offs = []
        for flag, payload in items:
            size = poff + len(payload)
            obj = struct.pack("<BB6xQ", 1, flag, size) + bytes(poff - 16) + payload
            data_offs.append(off)
            objs += obj + bytes(align(size) - size)
            off += align(size)
        seq += 1
        item = (lambda o: struct.pack("<I", o)) if compact else (lambda o: struct.pack("<QQ", o, 0))
        body = struct.pack("<QQQ16sQ", seq, 1_767_225_600_000_000 + seq, seq, b"B" * 16, 0)
        obj = struct.pack("<BB6xQ", 3, 0, 64 + len(data_offs) * (4 if compact else 16)) + body
        obj += b"".join(item(o) for o in data_offs)
        entry_offs.append(off)
        size = len(obj)
        objs += obj + bytes(align(size) - size)
        off += align(size)
    h = bytearray(max(header_size, 272))
    h[0:8] = b"LPKSHHRH"
    struct.pack_into("<I", h, 12, (COMPACT if compact else 0) | flags)
    h[16] = state
    h[24:40] = b"F" * 16
    h[72:88] = b"S" * 16
    struct.pack_into("<QQ", h, 88, header_size, len(objs))
    struct.pack_into("<Q", h, 136, entry_offs[-1] if entry_offs else 0)
    struct.pack_into("<QQQ", h, 152, len(entries), seq, 1)
    struct.pack_into("<QQ", h, 184, 1_767_225_600_000_001, 1_767_225_600_000_000 + seq)
    if tail_entry_offset and header_size >= 272 and entry_offs:
        struct.pack_into("<Q", h, 264, entry_offs[-1])
    return bytes(h[:header_size]) + bytes(objs)


def entry(ident, pri, msg, flag=0, extra=()):
    return [(flag, msg), (0, b"PRIORITY=%d" % pri), (0, b"SYSLOG_IDENTIFIER=" + ident)] + list(extra)


def main(out):
    os.makedirs(out, exist_ok=True)
    raw = open(os.path.join(HERE, "journald-zstd-payloads.bin"), "rb").read()
    zstd, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        zstd.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    plain = [
        entry(b"kubelet", 6, b"MESSAGE=I1203 started kubelet", extra=[(0, b"_PID=1234")]),
        entry(b"containerd", 4, b'MESSAGE=level=warning msg="snapshotter"'),
        entry(b"sshd", 6, b"MESSAGE=not ours"),
        [(0, b"MESSAGE=unit only"), (0, b"_SYSTEMD_UNIT=kubelet.service")],
    ]
    files = {
        "compact-archived": journal(plain),
        "compact-online": journal(plain, state=1),
        "regular-archived": journal(plain, compact=False),
        "systemd252-online": journal(plain, header_size=264, state=1, tail_entry_offset=False),
        "zstd": journal([entry(b"kubelet", 6, p, ZSTD) for p in zstd], flags=ZSTD_FLAG),
        "xz": journal([entry(b"kubelet", 6, lzma.compress(b"MESSAGE=" + b"x" * 600, format=lzma.FORMAT_XZ), XZ)], flags=1),
        "lz4": journal([entry(b"containerd", 3, lz4_literals(b"MESSAGE=" + b"y" * 40), LZ4)], flags=2),
    }
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
