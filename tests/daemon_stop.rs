//! What becomes of containerd and kubelet when `hybrid-agent run` stops (SIGTERM, as
//! `systemctl stop` sends it), by `supervisor.on_agent_stop`: by default they keep running for
//! the next agent to adopt; with `"stop"` they stop with the agent. Real `join` in a `--root`
//! sandbox with the distribution's containerd and the STAND-IN kubelet under the built-in
//! supervisor, against the devstack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::process::Command;
use std::time::{Duration, Instant};

use install_support::{Node, create_activation, devstack, standin_release};

/// Polls `f` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Joins a fresh sandbox with `supervisor_extra` added to its `[supervisor]` table, runs the
/// daemon until both components are healthy, stops it with SIGTERM and returns the supervised
/// pids before and after.
fn run_and_stop(ds: &hybrid_devstack::Devstack, supervisor_extra: &str) -> (Vec<u32>, Vec<u32>) {
    let node = Node::new(ds, &create_activation(ds));
    let config = node.path("/etc/hybrid-agent/config.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    assert!(toml.contains("[supervisor]\n"), "{toml}");
    toml = toml.replace(
        "[supervisor]\n",
        &format!("[supervisor]\n{supervisor_extra}"),
    );
    std::fs::write(&config, toml).unwrap();
    let check = node.run(&["config", "check"]);
    assert_eq!(check.code, Some(0), "{check:?}");

    let joined = node.join(ds, &[]);
    assert_eq!(joined.code, Some(0), "{joined:?}");
    let before = node.supervised_pids();
    assert_eq!(before.len(), 2, "containerd and kubelet run after join");

    let log = node.dir.path().join("daemon.log");
    let mut daemon = node.spawn_daemon(&log);
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let healthy = eventually(Duration::from_secs(30), || {
        let out = node.run(&["status", "--json"]);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        v["supervision"]["components"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["state"] == "healthy"))
    });
    assert!(
        healthy,
        "components not healthy under the daemon:\n{}",
        daemon_log()
    );

    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let mut code = None;
    assert!(
        eventually(Duration::from_secs(40), || {
            code = daemon.try_wait().unwrap();
            code.is_some()
        }),
        "the daemon did not stop on SIGTERM:\n{}",
        daemon_log()
    );
    assert!(
        code.unwrap().success(),
        "run exited {code:?}:\n{}",
        daemon_log()
    );
    // Let a stop that is under way finish before looking.
    std::thread::sleep(Duration::from_millis(500));
    let after = node.supervised_pids();
    (before, after)
}

#[test]
fn components_outlive_the_agent_by_default_and_stop_with_it_when_configured() {
    let mirror = tempfile::tempdir().unwrap();
    standin_release(mirror.path(), install_support::VERSION);
    let ds = devstack(mirror.path());

    let (before, after) = run_and_stop(&ds, "");
    assert_eq!(
        after, before,
        "by default containerd and kubelet keep running (same pids) for the next agent"
    );

    let (before, after) = run_and_stop(&ds, "on_agent_stop = \"stop\"\n");
    assert_eq!(before.len(), 2);
    assert!(
        after.is_empty(),
        "with on_agent_stop = \"stop\" they stop with the agent; still running: {after:?}"
    );
}
