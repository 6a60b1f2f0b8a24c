//! The dependency rules of docs/architecture.md "Dependencies", checked on the resolved graph: no
//! OpenSSL (static musl
//! builds, one TLS stack), no libsystemd (cannot link statically), no legacy hyper 0.14 / ring
//! stack (what the AWS SDK's default `rustls` feature drags in).
//! Checked for the host target (Linux, what we ship), so a fresh machine needs no foreign-platform
//! crates downloaded.

use std::process::Command;

fn cargo_tree_inverse(spec: &str) -> (bool, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--workspace",
            "--edges",
            "normal,build,dev",
            "-i",
            spec,
        ])
        .output()
        .expect("run cargo tree");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_absent(spec: &str) {
    let (ok, text) = cargo_tree_inverse(spec);
    // "did not match": not in Cargo.lock at all; "nothing to print": locked (an optional
    // dependency of something) but not reachable from our crates with the features we use.
    let absent = (!ok && text.contains("did not match any packages"))
        || (ok && text.contains("nothing to print"));
    assert!(
        absent,
        "`{spec}` is in the dependency graph, which docs/architecture.md \"Dependencies\" rules out; cargo tree -i {spec} says:\n{text}"
    );
}

#[test]
fn no_openssl() {
    assert_absent("openssl-sys");
}

#[test]
fn no_libsystemd() {
    assert_absent("libsystemd-sys");
}

#[test]
fn no_legacy_hyper() {
    assert_absent("hyper@0.14");
}

#[test]
fn no_ring() {
    assert_absent("ring");
}

/// The check itself must be able to fail: a crate that is in the graph is found.
#[test]
fn the_check_sees_present_crates() {
    let (ok, text) = cargo_tree_inverse("aws-lc-rs");
    assert!(
        ok && text.contains("aws-lc-rs"),
        "cargo tree did not find aws-lc-rs:\n{text}"
    );
}
