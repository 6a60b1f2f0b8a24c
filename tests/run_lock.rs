//! One run at a time (issue 11): a `join`, `leave` or `upgrade` started while a join runs is
//! refused at once, naming the running join's pid, and the running join completes untouched; a
//! second `hybrid-agent run` is refused while a daemon runs. Real processes in a `--root`
//! sandbox against the devstack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use install_support::*;

/// Exit code of a command refused because another holds the lock (src/exit.rs `Locked`).
const LOCKED: i32 = 5;

fn fixture() -> (tempfile::TempDir, hybrid_devstack::Devstack) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    (dir, ds)
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn join_leave_and_upgrade_are_refused_while_a_join_runs_and_it_completes_untouched() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // DescribeCluster answers slowly: the join sits in its cluster checks, registered and with
    // its journal on disk, for a few seconds.
    control_body(
        &ds,
        "PUT",
        "/_devstack/faults",
        r#"{"rules":[{"service":"eks","operation":"DescribeCluster","latency_ms":6000}]}"#,
    );
    let log = node.dir.path().join("first-join.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut first = node
        .join_command(&ds, &[])
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let journal = node.path("/var/lib/hybrid-agent/txn-journal.json");
    assert!(
        eventually(Duration::from_secs(60), || {
            std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"instance_id\""))
        }),
        "the first join did not register: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first join ended early"
    );
    let pid = first.id();

    let mirror = format!("{}/mirror/", ds.url);
    let second = node.join(&ds, &[]);
    let leave = node.run(&["leave", "--force"]);
    let upgrade = node.run(&[
        "upgrade",
        "1.31",
        "--mirror",
        &mirror,
        "--allow-insecure-mirror",
    ]);
    for (what, run) in [("join", &second), ("leave", &leave), ("upgrade", &upgrade)] {
        assert_eq!(run.code, Some(LOCKED), "{what}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("`hybrid-agent join` (pid {pid}")),
            "{what} does not name the running join: {run:?}"
        );
        assert!(
            run.stderr.contains("wait for it to finish"),
            "{what} does not say what to do: {run:?}"
        );
    }

    let status = first.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the first join failed:\n{text}");
    assert!(text.contains("joined: node mi-"), "{text}");
    assert_eq!(
        managed_instances(&ds).len(),
        1,
        "the running join's registration was touched"
    );
    assert!(node.path("/var/lib/hybrid-agent/node.json").is_file());
    assert!(!journal.exists(), "the join's journal was committed");
    assert!(
        !node.path("/run/hybrid-agent/admin.lock").exists(),
        "the lock file is removed when the join ends"
    );
    // With the lock free, the next command runs.
    let again = node.join(&ds, &[]);
    assert_eq!(again.code, Some(0), "{again:?}");
}

#[test]
fn a_second_daemon_is_refused_while_one_runs() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // Registration and credentials only: enough for the daemon to start.
    let joined = node.join(&ds, &["--skip", "install,render,start,wait"]);
    assert_eq!(joined.code, Some(0), "{joined:?}");
    let log = node.dir.path().join("daemon.log");
    let mut first = node.spawn_daemon(&log);
    let state = node.path("/var/lib/hybrid-agent/daemon.json");
    assert!(
        eventually(Duration::from_secs(30), || state.is_file()),
        "the daemon did not start:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pid = first.id();

    let mut second = node
        .command(&["run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !eventually(Duration::from_secs(10), || {
        second.try_wait().unwrap().is_some()
    }) {
        let _ = second.kill();
        let _ = second.wait();
        panic!("a second daemon ran beside the first");
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(LOCKED), "{stderr}");
    assert!(
        stderr.contains(&format!("`hybrid-agent run` (pid {pid}")),
        "{stderr}"
    );
    assert!(stderr.contains("only one daemon may run"), "{stderr}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first daemon stopped:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
