//! `hybrid-agent install` and `bundle create` as users run them: the real binary against the
//! devstack mirror, plain log lines on a non-terminal stderr, a summary on stdout, and an
//! offline install from a bundle after the devstack is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::process::Command;

use install_support::*;

fn agent(root: &std::path::Path, args: &[&str]) -> Run {
    let out = Command::new(AGENT)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn install_from_the_mirror_then_offline_from_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 2 << 20));
    let ds = devstack(&mirror);
    let url = format!("{}/mirror/", ds.url);

    let online = dir.path().join("online");
    std::fs::create_dir(&online).unwrap();
    distro_containerd(&online);
    let run = agent(
        &online,
        &[
            "install",
            "--kubernetes-version",
            "1.31",
            "--mirror",
            &url,
            "--allow-insecure-mirror",
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("installed Kubernetes {VERSION}")),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("containerd: the distribution's (/usr/bin/containerd, package containerd)"),
        "{run:?}"
    );
    // Not a terminal: one line per artifact, no progress-bar escape sequences.
    assert!(
        run.stderr.contains("downloaded and verified") && !run.stderr.contains('\r'),
        "{run:?}"
    );
    let again = agent(
        &online,
        &[
            "install",
            "1.31",
            "--mirror",
            &url,
            "--allow-insecure-mirror",
        ],
    );
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again.stdout.contains("already installed and intact"),
        "{again:?}"
    );

    let bundle = dir.path().join("bundle.tar");
    let run = agent(
        &dir.path().join("unused"),
        &[
            "bundle",
            "create",
            "--kubernetes-version",
            "1.31",
            "--out",
            bundle.to_str().unwrap(),
            "--mirror",
            &url,
            "--allow-insecure-mirror",
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("4 artifacts"), "{run:?}");
    drop(ds);

    let offline = dir.path().join("offline");
    std::fs::create_dir(&offline).unwrap();
    distro_containerd(&offline);
    let run = agent(
        &offline,
        &["install", "1.31", "--bundle", bundle.to_str().unwrap()],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let skip = ["var/lib/hybrid-agent/tracker.json"];
    assert_eq!(
        fingerprint(&online, &skip),
        fingerprint(&offline, &skip),
        "the bundle installs the same files"
    );
}

#[test]
fn a_mirror_password_reaches_neither_errors_nor_the_tracker() {
    const PASSWORD: &str = "Mirr0rHunter2";
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 256 << 10));
    let ds = devstack(&mirror);
    let with_password = |path: &str| {
        ds.url
            .replacen("http://", &format!("http://reader:{PASSWORD}@"), 1)
            + path
    };

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    distro_containerd(&root);
    let url = with_password("/mirror/");
    let args = [
        "install",
        "1.31",
        "--mirror",
        &url,
        "--allow-insecure-mirror",
    ];
    let run = agent(&root, &args);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!format!("{run:?}").contains(PASSWORD), "{run:?}");
    let tracker = std::fs::read_to_string(root.join("var/lib/hybrid-agent/tracker.json")).unwrap();
    assert!(!tracker.contains(PASSWORD), "{tracker}");
    assert!(tracker.contains("reader:***@"), "{tracker}");

    // A mirror without the release: the error names the URL, without the password.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    distro_containerd(&other);
    let url = with_password("/mirror/nothing-here/");
    let run = agent(
        &other,
        &[
            "install",
            "1.31",
            "--mirror",
            &url,
            "--allow-insecure-mirror",
        ],
    );
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("nothing-here"), "{run:?}");
    assert!(!format!("{run:?}").contains(PASSWORD), "{run:?}");
}
