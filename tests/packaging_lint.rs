//! The shipped artifacts: the static (musl) release binary that `scripts/test` builds before the
//! suite (and CI with it), its size, and its two packages through Debian's lintian and rpmlint
//! with the project's overrides (packaging/README.md "lintian and rpmlint" justifies each).
//! No error or warning may remain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The stripped static binary may not grow past this. The goal is 15 MB; it is 16.91 MB today
/// (27 MB before fat LTO, one codegen unit, opt-level "s" off the drain path and stripping; the
/// node lifecycle of issue 13 added 0.87 MB: docs/measurements.md "Static binary"), so this
/// guards what is measured and leaves the goal open.
const MAX_STATIC_BYTES: u64 = 15_000_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `<target dir>/<arch>-unknown-linux-musl/release/hybrid-agent`, beside the test build.
fn static_binary() -> PathBuf {
    let debug_bin = Path::new(env!("CARGO_BIN_EXE_hybrid-agent"));
    let target_dir = debug_bin
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let bin = target_dir
        .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
        .join("release/hybrid-agent");
    assert!(
        bin.is_file(),
        "{} is missing: scripts/test builds it first (cargo build --release --target {}-unknown-linux-musl -p hybrid-agent --bin hybrid-agent)",
        bin.display(),
        std::env::consts::ARCH
    );
    bin
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_static_release_is_static_small_and_runs() {
    let bin = static_binary();
    let (_, headers) = run(Command::new("readelf").args(["-lW"]).arg(&bin));
    assert!(
        !headers.contains("Requesting program interpreter"),
        "{} is dynamically linked:\n{headers}",
        bin.display()
    );
    let (_, symbols) = run(Command::new("readelf").args(["-SW"]).arg(&bin));
    assert!(!symbols.contains(".symtab"), "not stripped");
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(
        size <= MAX_STATIC_BYTES,
        "the static release is {size} bytes, over {MAX_STATIC_BYTES}"
    );
    let (ok, version) = run(Command::new(&bin).arg("--version"));
    assert!(ok, "{version}");
    assert_eq!(
        version.trim(),
        format!("hybrid-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn lintian_and_rpmlint_find_nothing_beyond_the_justified_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, printed) = run(Command::new(repo().join("scripts/package"))
        .arg("--binary")
        .arg(static_binary())
        .arg("--out")
        .arg(tmp.path()));
    assert!(ok, "scripts/package: {printed}");
    let mut lines = printed
        .lines()
        .filter(|l| l.ends_with(".deb") || l.ends_with(".rpm"));
    let deb = lines.next().expect("deb path").to_owned();
    let rpm = lines.next().expect("rpm path").to_owned();

    // lintian prints one line per tag (E:, W:, I:, ...); overridden tags are not printed.
    let (_, lintian) = run(Command::new("lintian").args(["--tag-display-limit", "0", &deb]));
    let findings: Vec<&str> = lintian
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(findings.is_empty(), "lintian {deb}:\n{lintian}");
    assert!(
        !lintian.contains("unused-override"),
        "an override no longer needed:\n{lintian}"
    );

    let (_, rpmlint) = run(Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("packaging/rpmlint.toml"))
        .arg(&rpm));
    assert!(
        rpmlint.contains(" 0 errors, 0 warnings"),
        "rpmlint {rpm}:\n{rpmlint}"
    );
}
