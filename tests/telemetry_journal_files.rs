//! The journal reader on crafted journal files: what a hostile or broken journal can do to it.
//!
//! A local user can make journald store almost anything (any payload size, compressed; any
//! `SYSLOG_IDENTIFIER`), and a disk can break a file; journald cannot be made to write a file
//! with a wild item offset or a zeroed object, so these tests write journal files themselves
//! (systemd `docs/JOURNAL_FILE_FORMAT.md`: regular, non-compact layout, systemd 254's 272-byte
//! header with `tail_entry_offset`; no hash tables or entry arrays, which the reader does not
//! use). Compressed payloads are built by hand where a real compressor would take too long to
//! make a large one: a zstd frame of RLE blocks, an xz stream of LZMA2 chunk headers.
//!
//! Also: `doctor` and `status` name a missing journal (no machine id under `--root`, or none of
//! journald's directories for it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod telemetry_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hybrid_agent::telemetry::journal::format;
use hybrid_agent::telemetry::journal::{Filter, JournalReader, JournalRecord, ReaderStats};
use telemetry_support::*;

const AGENT: &str = env!("CARGO_BIN_EXE_hybrid-agent");
const SEQNUM_ID: [u8; 16] = [7; 16];
/// Header fields (`struct Header`).
const HEADER_SIZE: usize = 272;
const H_STATE: usize = 16;
const H_FILE_ID: usize = 24;
const H_SEQNUM_ID: usize = 72;
const H_HEADER_SIZE: usize = 88;
const H_TAIL_OBJECT: usize = 136;
const H_N_ENTRIES: usize = 152;
const H_TAIL_SEQNUM: usize = 160;
const H_HEAD_SEQNUM: usize = 168;
const H_HEAD_REALTIME: usize = 184;
const H_TAIL_REALTIME: usize = 192;
const H_TAIL_ENTRY: usize = 264;
/// Regular (non-compact) DATA payload offset and ENTRY item size.
const DATA_PAYLOAD: usize = 64;
const ITEM_LEN: usize = 16;
const REALTIME_BASE: u64 = 1_700_000_000_000_000;
/// Larger than the reader's decompression cap (64 MiB).
const BOMB_LEN: usize = 100 << 20;

/// One item of an entry: a DATA object (payload, compression flags) or a raw offset.
enum Item {
    Data(Vec<u8>, u8),
    Offset(u64),
}

fn field(text: &str) -> Item {
    Item::Data(text.as_bytes().to_vec(), 0)
}

fn zstd_field(text: &str) -> Item {
    let c = ruzstd::encoding::compress_to_vec(
        text.as_bytes(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    Item::Data(c, format::OBJECT_COMPRESSED_ZSTD)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn align8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

/// A journal file image holding `entries` (seqnums from `first_seqnum`) in `state`.
fn journal_file(state: u8, first_seqnum: u64, entries: Vec<Vec<Item>>) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_SIZE];
    b[..8].copy_from_slice(format::SIGNATURE);
    b[H_STATE] = state;
    b[H_FILE_ID..H_FILE_ID + 16].copy_from_slice(&[first_seqnum as u8; 16]);
    b[H_SEQNUM_ID..H_SEQNUM_ID + 16].copy_from_slice(&SEQNUM_ID);
    put64(&mut b, H_HEADER_SIZE, HEADER_SIZE as u64);
    let n = entries.len() as u64;
    let mut tail = 0u64;
    for (i, items) in entries.into_iter().enumerate() {
        let mut offsets = Vec::new();
        for item in items {
            match item {
                Item::Offset(o) => offsets.push(o),
                Item::Data(payload, flags) => {
                    offsets.push(b.len() as u64);
                    let mut obj = vec![0u8; DATA_PAYLOAD];
                    obj[0] = format::OBJECT_DATA;
                    obj[1] = flags;
                    put64(&mut obj, 8, (DATA_PAYLOAD + payload.len()) as u64);
                    obj.extend_from_slice(&payload);
                    b.extend_from_slice(&obj);
                    align8(&mut b);
                }
            }
        }
        let at = b.len();
        let size = format::ENTRY_ITEMS_OFFSET + ITEM_LEN * offsets.len();
        b.resize(at + size, 0);
        b[at] = format::OBJECT_ENTRY;
        put64(&mut b, at + 8, size as u64);
        put64(&mut b, at + 16, first_seqnum + i as u64);
        put64(&mut b, at + 24, REALTIME_BASE + first_seqnum + i as u64);
        put64(&mut b, at + 32, 1 + i as u64);
        for (k, o) in offsets.iter().enumerate() {
            put64(&mut b, at + format::ENTRY_ITEMS_OFFSET + k * ITEM_LEN, *o);
        }
        align8(&mut b);
        tail = at as u64;
    }
    put64(&mut b, H_TAIL_OBJECT, tail);
    put64(&mut b, H_TAIL_ENTRY, tail);
    put64(&mut b, H_N_ENTRIES, n);
    put64(&mut b, H_HEAD_SEQNUM, first_seqnum);
    put64(&mut b, H_TAIL_SEQNUM, first_seqnum + n - 1);
    put64(&mut b, H_HEAD_REALTIME, REALTIME_BASE + first_seqnum);
    put64(
        &mut b,
        H_TAIL_REALTIME,
        REALTIME_BASE + first_seqnum + n - 1,
    );
    b
}

/// An entry as a stdout stream of `unit` writes it, with a plain message.
fn unit_entry(unit: &str, ident: &str, message: &str) -> Vec<Item> {
    vec![
        field(&format!("_SYSTEMD_UNIT={unit}")),
        field(&format!("SYSLOG_IDENTIFIER={ident}")),
        field("PRIORITY=6"),
        field(&format!("MESSAGE={message}")),
    ]
}

fn kubelet(message: &str) -> Vec<Item> {
    unit_entry("kubelet.service", "kubelet", message)
}

fn kubelet_filter() -> Filter {
    Filter {
        names: vec![("kubelet".into(), Arc::from("kubelet"))],
        max_priority: 6,
    }
}

/// Everything readable now, by polls until one scans nothing; panics on a poll error.
fn read_dir(dir: &Path) -> (Vec<JournalRecord>, ReaderStats) {
    let mut r = JournalReader::new(vec![dir.to_path_buf()], None);
    let mut out = Vec::new();
    for _ in 0..100 {
        let p = r
            .poll(&kubelet_filter(), &mut out, 10_000)
            .expect("a poll of the journal directory");
        if p.scanned == 0 {
            break;
        }
    }
    (out, r.stats())
}

fn messages(out: &[JournalRecord]) -> Vec<&str> {
    out.iter().map(|r| r.message.as_str()).collect()
}

/// A zstd frame that decompresses to `len` zero bytes (RLE blocks: 4 bytes per 128 KiB).
fn zstd_zeros_after(prefix: &[u8], len: usize) -> Vec<u8> {
    const BLOCK_MAX: usize = 128 << 10;
    // Magic, frame header descriptor (no content size, not single segment, no checksum),
    // window descriptor 2^(10+7) = 128 KiB.
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    // A raw block with the prefix first.
    let raw = (prefix.len() as u32) << 3;
    f.extend_from_slice(&raw.to_le_bytes()[..3]);
    f.extend_from_slice(prefix);
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK_MAX);
        left -= n;
        let last = u32::from(left == 0);
        let header = last | (1 << 1) | ((n as u32) << 3);
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// An xz stream whose LZMA2 chunk headers announce `chunks` × 2 MiB (the data is garbage: the
/// sizes alone must stop it).
fn xz_claiming(chunks: usize) -> Vec<u8> {
    // Stream header: magic, flags (check: none), CRC32 of the flags.
    let mut x = vec![
        0xfd, b'7', b'z', b'X', b'Z', 0x00, 0x00, 0x00, 0xff, 0x12, 0xd9, 0x41,
    ];
    // Block header of 12 bytes: size byte, flags (one filter), LZMA2 id, props size, dict
    // size, padding, CRC32 (not checked by the walk).
    x.extend_from_slice(&[0x02, 0x00, 0x21, 0x01, 0x16, 0, 0, 0, 0, 0, 0, 0]);
    for i in 0..chunks {
        // LZMA chunk of 2 MiB unpacked, 1 byte packed; the first resets dictionary and props.
        let control = if i == 0 { 0xe0 | 0x1f } else { 0x80 | 0x1f };
        x.extend_from_slice(&[control, 0xff, 0xff, 0x00, 0x00]);
        if i == 0 {
            x.push(0x5d);
        }
        x.push(0);
    }
    x.push(0x00);
    x
}

#[test]
fn compressed_payloads_over_the_cap_are_skipped_and_counted_never_inflated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bomb = zstd_zeros_after(b"MESSAGE=", BOMB_LEN);
    assert!(bomb.len() < 8 << 10);
    let mut lz4 = (BOMB_LEN as u64).to_le_bytes().to_vec();
    lz4.extend_from_slice(&[0x00]);
    let entry = |msg: Item| {
        vec![
            field("_SYSTEMD_UNIT=kubelet.service"),
            field("SYSLOG_IDENTIFIER=kubelet"),
            msg,
        ]
    };
    let image = journal_file(
        format::STATE_ARCHIVED,
        1,
        vec![
            kubelet("before"),
            entry(Item::Data(bomb, format::OBJECT_COMPRESSED_ZSTD)),
            entry(Item::Data(xz_claiming(40), format::OBJECT_COMPRESSED_XZ)),
            entry(Item::Data(lz4, format::OBJECT_COMPRESSED_LZ4)),
            entry(zstd_field(&format!(
                "MESSAGE=compressed {}",
                "y".repeat(600)
            ))),
            kubelet("after"),
        ],
    );
    std::fs::write(tmp.path().join("system.journal"), image).expect("write journal");
    let (out, stats) = read_dir(tmp.path());
    assert_eq!(
        messages(&out),
        [
            "before",
            &format!("compressed {}", "y".repeat(600)),
            "after"
        ],
        "{stats:?}"
    );
    assert_eq!(stats.unreadable_entries, 3, "{stats:?}");
    assert!(
        stats.decompressed_bytes <= 2 * DECOMPRESS_CAP,
        "decompressed {} bytes",
        stats.decompressed_bytes
    );
}

/// The reader's cap (64 MiB) as the test allows for it.
const DECOMPRESS_CAP: u64 = 64 << 20;

#[test]
fn binary_messages_are_read_with_invalid_utf8_replaced_and_keep_their_syslog_prefix() {
    // journald stores a MESSAGE sent in its binary form as it came: any bytes.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut bad = b"MESSAGE=cut \xe2\x9c in the middle \xff\xfe and after".to_vec();
    bad.extend_from_slice(" é ✓".as_bytes());
    let mut entry = kubelet("unused");
    entry[3] = Item::Data(bad, 0);
    let entries = vec![kubelet("plain ascii"), entry, kubelet("multi-byte é ✓ 😀")];
    std::fs::write(
        tmp.path().join("system.journal"),
        journal_file(format::STATE_ONLINE, 1, entries),
    )
    .expect("write journal");
    let (out, stats) = read_dir(tmp.path());
    assert_eq!(
        messages(&out),
        [
            "plain ascii",
            "cut \u{fffd} in the middle \u{fffd}\u{fffd} and after é ✓",
            "multi-byte é ✓ 😀",
        ],
        "{stats:?}"
    );
    // As shipped: the syslog form, the message whole behind its prefix.
    let shipped: Vec<String> = out
        .into_iter()
        .flat_map(hybrid_agent::telemetry::record::Record::from_journal)
        .map(|r| r.message.as_str().to_string())
        .collect();
    assert_eq!(
        shipped,
        [
            "<6>kubelet: plain ascii",
            "<6>kubelet: cut \u{fffd} in the middle \u{fffd}\u{fffd} and after é ✓",
            "<6>kubelet: multi-byte é ✓ 😀",
        ]
    );
}

#[test]
fn other_units_and_user_journals_are_filtered_out_before_any_decompression() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let big = |tag: &str| zstd_field(&format!("MESSAGE={tag} {}", "z".repeat(4096)));
    let mut system = Vec::new();
    for i in 0..50 {
        system.push(vec![
            field("_SYSTEMD_UNIT=ssh.service"),
            field("SYSLOG_IDENTIFIER=sshd"),
            field("PRIORITY=6"),
            big(&format!("sshd {i}")),
        ]);
    }
    system.push(kubelet("kubelet line"));
    std::fs::write(
        tmp.path().join("system.journal"),
        journal_file(format::STATE_ONLINE, 1, system),
    )
    .expect("write system journal");
    // A user's journal (SplitMode=uid): entries of uid 1000, never those of the system units
    // the agent ships.
    let user: Vec<Vec<Item>> = (0..20)
        .map(|i| {
            vec![
                field("SYSLOG_IDENTIFIER=kubelet"),
                big(&format!("user {i}")),
            ]
        })
        .collect();
    std::fs::write(
        tmp.path().join("user-1000.journal"),
        journal_file(format::STATE_ONLINE, 1000, user),
    )
    .expect("write user journal");
    let (out, stats) = read_dir(tmp.path());
    assert_eq!(messages(&out), ["kubelet line"], "{stats:?}");
    assert_eq!(
        stats.files_opened, 1,
        "the user journal was opened: {stats:?}"
    );
    assert_eq!(stats.decompressed_bytes, 0, "{stats:?}");
}

#[test]
fn a_users_logger_tagged_kubelet_does_not_reach_the_kubelet_stream() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = journal_file(
        format::STATE_ONLINE,
        1,
        vec![
            // `logger -t kubelet` in a login session: journald names the session scope.
            unit_entry("session-3.scope", "kubelet", "forged by a user"),
            kubelet("from kubelet.service"),
            // No unit at all (a hand-started journald, early boot): the identifier decides.
            vec![field("SYSLOG_IDENTIFIER=kubelet"), field("MESSAGE=no unit")],
            // A helper kubelet.service runs: its unit decides, whatever it calls itself.
            unit_entry("kubelet.service", "mount", "helper in kubelet.service"),
            unit_entry("user@1000.service", "kubelet", "forged in a user service"),
        ],
    );
    std::fs::write(tmp.path().join("system.journal"), image).expect("write journal");
    let (out, _) = read_dir(tmp.path());
    assert_eq!(
        messages(&out),
        [
            "from kubelet.service",
            "no unit",
            "helper in kubelet.service"
        ]
    );
    assert!(out.iter().all(|r| &*r.stream == "kubelet"));
}

#[test]
fn an_item_offset_near_2_pow_64_is_an_unreadable_entry_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut wild = kubelet("wild");
    wild.insert(1, Item::Offset(u64::MAX - 7));
    let mut wild_message = kubelet("unused");
    wild_message[3] = Item::Offset(u64::MAX - 15);
    let image = journal_file(
        format::STATE_ARCHIVED,
        1,
        vec![kubelet("first"), wild, wild_message, kubelet("last")],
    );
    std::fs::write(tmp.path().join("system.journal"), image).expect("write journal");
    let (out, stats) = read_dir(tmp.path());
    assert_eq!(messages(&out), ["first", "last"], "{stats:?}");
    assert_eq!(stats.unreadable_entries, 2, "{stats:?}");
}

#[test]
fn a_corrupt_archived_file_is_closed_counted_and_the_next_file_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first: Vec<Vec<Item>> = (1..=10).map(|i| kubelet(&format!("a{i}"))).collect();
    let mut a = journal_file(format::STATE_ARCHIVED, 1, first);
    // Zero the object header of entry 6's first DATA object: the walk cannot pass it.
    let mut off = HEADER_SIZE;
    let mut entries = 0;
    let mut corrupt_at = None;
    while off < a.len() {
        let o = format::parse_object_header(&a[off..]).expect("object");
        if o.kind == format::OBJECT_ENTRY {
            entries += 1;
            if entries == 5 {
                corrupt_at = Some(format::next_object_offset(off as u64, o.size).unwrap());
                break;
            }
        }
        off = format::next_object_offset(off as u64, o.size).unwrap() as usize;
    }
    let at = corrupt_at.expect("entry 5") as usize;
    a[at..at + 16].fill(0);
    std::fs::write(tmp.path().join("system@0001.journal"), a).expect("write archived");
    let second: Vec<Vec<Item>> = (11..=15).map(|i| kubelet(&format!("b{i}"))).collect();
    std::fs::write(
        tmp.path().join("system@0002.journal"),
        journal_file(format::STATE_ARCHIVED, 11, second),
    )
    .expect("write second");
    let (out, stats) = read_dir(tmp.path());
    assert_eq!(
        messages(&out),
        [
            "a1", "a2", "a3", "a4", "a5", "b11", "b12", "b13", "b14", "b15"
        ],
        "{stats:?}"
    );
    assert_eq!(
        stats.files_finished, 2,
        "the corrupt file stayed open: {stats:?}"
    );
    assert_eq!(stats.unreadable_files, 1, "{stats:?}");
}

#[test]
fn an_unreadable_file_does_not_stall_the_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A name that lists as a journal file and opens, but every read fails (EISDIR).
    std::fs::create_dir(tmp.path().join("system@broken.journal")).expect("mkdir");
    std::fs::write(
        tmp.path().join("system.journal"),
        journal_file(
            format::STATE_ONLINE,
            1,
            vec![kubelet("one"), kubelet("two")],
        ),
    )
    .expect("write journal");
    let (out, stats) = read_dir(tmp.path());
    assert_eq!(messages(&out), ["one", "two"], "{stats:?}");
    assert_eq!(stats.unreadable_files, 1, "{stats:?}");
}

/// `doctor --json`'s journal check: (outcome, detail and fix).
fn doctor_journal(root: &Path) -> (String, String) {
    let out = Command::new(AGENT)
        .arg("--root")
        .arg(root)
        .args(["doctor", "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run hybrid-agent doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {stdout}"));
    let c = checks
        .iter()
        .find(|c| c["name"] == "journal")
        .unwrap_or_else(|| panic!("no journal check: {stdout}"));
    (
        c["outcome"].as_str().unwrap_or_default().to_string(),
        format!(
            "{} | fix: {}",
            c["detail"].as_str().unwrap_or_default(),
            c["fix"].as_str().unwrap_or_default()
        ),
    )
}

#[test]
fn doctor_names_a_missing_journal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (outcome, detail) = doctor_journal(root);
    assert_eq!(outcome, "warn", "{detail}");
    assert!(detail.contains("etc/machine-id"), "{detail}");
    let id = "0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    std::fs::write(root.join("etc/machine-id"), format!("{id}\n")).expect("machine-id");
    let (outcome, detail) = doctor_journal(root);
    assert_eq!(outcome, "warn", "{detail}");
    assert!(
        detail.contains(&format!("var/log/journal/{id}"))
            && detail.contains(&format!("run/log/journal/{id}")),
        "{detail}"
    );
    std::fs::create_dir_all(root.join(format!("run/log/journal/{id}"))).expect("mkdir journal");
    let (outcome, detail) = doctor_journal(root);
    assert_eq!(outcome, "ok", "{detail}");
}

#[test]
fn status_names_a_missing_journal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp
        .path()
        .join("run/log/journal/0123456789abcdef0123456789abcdef");
    // Nothing listens there: the journal source needs no CloudWatch to find its journal missing.
    let agent = InProcess::start(
        settings(&missing, tmp.path(), &["kubelet"]),
        "http://127.0.0.1:9",
    );
    agent.wait_for(
        "the missing journal in status",
        Duration::from_secs(10),
        |s| s.render().contains("NO JOURNAL"),
    );
    let text = agent.status.snapshot().render();
    assert!(text.contains(&missing.display().to_string()), "{text}");
    std::fs::create_dir_all(&missing).expect("mkdir journal");
    agent.wait_for("the journal found", Duration::from_secs(10), |s| {
        !s.render().contains("NO JOURNAL")
    });
    agent.stop();
}
