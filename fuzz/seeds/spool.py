#!/usr/bin/env python3
"""Writes the spool seeds of fuzz/corpus/spool/ (input layout: fuzz/harness.rs `spool`):
segments in the spool's record format (src/telemetry/spool.rs), intact and damaged the ways a
crash or a bad disk leaves them. Usage: spool.py OUT_DIR"""
import os, struct, sys, zlib


def record(stream, ts, msg):
    p = bytes([1]) + struct.pack("<qH", ts, len(stream)) + stream + msg
    return struct.pack("<II", len(p), zlib.crc32(p)) + p


def head(flags=0, ack=0, split=0, take=0):
    return struct.pack("<BHHB", flags, ack, split, take)


def main(out):
    os.makedirs(out, exist_ok=True)
    recs = [record(b"kubelet", 1_767_225_600_000 + i, b"line %d" % i) for i in range(3)]
    seg = b"".join(recs)
    bad_crc = bytearray(seg)
    bad_crc[len(recs[0]) + 12] ^= 0xFF  # a byte of the second record's payload
    bad_len = bytearray(seg)
    struct.pack_into("<I", bad_len, len(recs[0]), 0x7FFFFFFF)  # the second record's length
    files = {
        "intact": head() + seg,
        "torn-tail": head() + seg[:-5],
        "bad-crc-middle": head() + bytes(bad_crc),
        "bad-length-middle": head() + bytes(bad_len),
        "two-segments-ack": head(flags=3, ack=len(recs[0]), split=len(recs[0]) * 2) + seg,
        "partial-read": head(take=1) + seg,
        "blank-message": head() + record(b"kubelet", 1, b"") + record(b"kubelet", 2, b" \n"),
        "bad-version": head() + bytes([8, 0, 0, 0]) + struct.pack("<I", zlib.crc32(b"\x02" * 8)) + b"\x02" * 8,
    }
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
