//! Automatic reboots (`[lifecycle] auto_reboot`) with a stand-in reboot command (the test
//! cannot reboot its machine): the host asks (`/var/run/reboot-required` under the sandbox
//! root), the daemon takes a disruption-lock slot, drains (the pod's budget holds), runs the
//! reboot command, and, the host no longer asking, waits for the node to be Ready, uncordons and
//! gives the slot back. A reboot command that fails leaves the node uncordoned, and the failure
//! is in `status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;
use serde_json::Value;

/// A devstack with the stand-in API server, and a node joined to it whose role may use the
/// disruption lock; the node's name.
fn joined_node(dir: &Path) -> (hybrid_devstack::Devstack, Node, String) {
    let mirror = dir.join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = kube_devstack(&mirror, 300, 300);
    standin_release(&mirror, VERSION);
    let node = Node::new(&ds, &create_activation(&ds));
    standin_authenticator(&mirror, VERSION, &node.root);
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let name = NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .unwrap()
        .node_name;
    apply_lifecycle_rbac(&ds);
    (ds, node, name)
}

/// Writes the stand-in reboot command (a shell script of `body`, in `dir`) and the daemon's
/// config that runs it, with auto_reboot on; the script's path.
fn reboot_command(node: &Node, dir: &Path, body: &str) -> PathBuf {
    let script = dir.join("reboot.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::process::Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::write(
        node.path("/etc/hybrid-agent/config.toml"),
        format!(
            "[supervisor]\nbackend = \"process\"\n\n[lifecycle]\nauto_reboot = true\ncheck_interval = \"1s\"\ndrain_timeout = \"60s\"\nupgrade_wait_timeout = \"30s\"\nreboot_command = [\"{}\"]\n",
            script.display()
        ),
    )
    .unwrap();
    script
}

#[test]
fn the_host_asks_for_a_reboot_and_the_node_is_drained_rebooted_and_uncordoned() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, node, name) = joined_node(dir.path());
    replicaset_pod(&ds, "web", "web-1", &name);

    // The stand-in reboot: records that it ran, whether the node was cordoned then (read from
    // a file the test keeps up to date is not possible from here, so the order is read from the
    // cluster's history instead), and clears the host's request, as a real boot clears /run.
    let rebooted = node.path("/reboots.log");
    let required = node.path("/var/run/reboot-required");
    let reboot_script = reboot_command(
        &node,
        dir.path(),
        &format!(
            "echo rebooted >> '{}'\nrm -f '{}'",
            rebooted.display(),
            required.display()
        ),
    );
    let log = dir.path().join("daemon.log");
    let daemon = node.spawn_daemon(&log);
    let status = || -> Value {
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap_or_default()
    };
    wait_until("the daemon idle", Duration::from_secs(30), || {
        status()["lifecycle"]["state"] == "no reboot needed"
    });
    assert!(!rebooted.exists());

    // The host asks.
    std::fs::create_dir_all(required.parent().unwrap()).unwrap();
    std::fs::write(&required, "*** System restart required ***\n").unwrap();
    std::fs::write(
        node.path("/var/run/reboot-required.pkgs"),
        "linux-image-6.1.0-28-amd64\n",
    )
    .unwrap();
    wait_until("the reboot done", Duration::from_secs(90), || {
        status()["lifecycle"]["reboots"] == 1
    });
    let s = status();
    assert_eq!(
        std::fs::read_to_string(&rebooted).unwrap(),
        "rebooted\n",
        "the reboot command ran once"
    );
    assert_eq!(s["lifecycle"]["last_reboot"]["ok"], true, "{s}");
    assert!(
        s["lifecycle"]["last_reboot"]["detail"]
            .as_str()
            .unwrap()
            .contains("(for linux-image-6.1.0-28-amd64)"),
        "{s}"
    );
    assert!(!node.path("/var/lib/hybrid-agent/lifecycle.json").exists());
    assert!(!node.path("/var/lib/hybrid-agent/drain.json").exists());

    let events = kube_history(&ds);
    let nodes = format!("nodes/{name}");
    let cordon = seq_of(&events, "cordon", &nodes);
    let uncordon = seq_of(&events, "uncordon", &nodes);
    let evict = seq_of(&events, "evict", "pods/app/web-1");
    assert_eq!(
        (cordon.len(), uncordon.len(), evict.len()),
        (1, 1, 1),
        "{events:#?}"
    );
    assert!(
        cordon[0] < evict[0] && evict[0] < uncordon[0],
        "{events:#?}"
    );
    // The lock slot was taken before the cordon and given back after the uncordon.
    let lock = "configmaps/hybrid-agent/hybrid-agent-disruption-lock";
    let updates = seq_of(&events, "update", lock);
    assert!(updates.len() >= 2, "{events:#?}");
    assert!(
        updates[0] < cordon[0] && *updates.last().unwrap() > uncordon[0],
        "{events:#?}"
    );
    let shown = node.run(&["status"]);
    assert!(
        shown.stdout.contains("last reboot: done: rebooted (")
            && shown.stdout.contains("reboots: 1 done, 0 failed"),
        "{shown:?}"
    );
    drop(daemon);

    // A reboot command that fails: the node is uncordoned again and the failure shown.
    std::fs::write(
        &reboot_script,
        "#!/bin/sh\necho 'Failed to reboot: Access denied' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::write(&required, "*** System restart required ***\n").unwrap();
    let daemon = node.spawn_daemon(&log);
    wait_until("the failed reboot", Duration::from_secs(90), || {
        status()["lifecycle"]["reboots_failed"] == 1
    });
    let s = status();
    let detail = s["lifecycle"]["last_reboot"]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("exited with exit status: 1: Failed to reboot: Access denied"),
        "{detail}"
    );
    assert!(
        s["lifecycle"]["state"]
            .as_str()
            .unwrap()
            .starts_with("the reboot failed"),
        "{s}"
    );
    drop(daemon);
    let events = kube_history(&ds);
    assert_eq!(seq_of(&events, "cordon", &nodes).len(), 2, "{events:#?}");
    assert_eq!(
        seq_of(&events, "uncordon", &nodes).len(),
        2,
        "uncordoned after the failure"
    );
}

/// A reboot takes the daemon down with the host (the stand-in reboot command kills it, as a
/// power-off would), so the slot is not renewed while the host is down and may expire. The
/// daemon that starts after the reboot renews the slot before anything else, then waits for
/// the node to be Ready, uncordons and gives the slot back.
#[test]
fn a_reboot_that_takes_the_daemon_down_is_finished_under_a_renewed_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, node, name) = joined_node(dir.path());

    // The host "goes down": the request is cleared (as a boot clears /run) and the daemon,
    // the reboot command's parent, is killed.
    let required = node.path("/var/run/reboot-required");
    reboot_command(
        &node,
        dir.path(),
        &format!("rm -f '{}'\nkill -9 $PPID", required.display()),
    );
    std::fs::create_dir_all(required.parent().unwrap()).unwrap();
    std::fs::write(&required, "*** System restart required ***\n").unwrap();
    let log = dir.path().join("daemon.log");
    let mut first = node.spawn_daemon(&log);
    let journal = node.path("/var/lib/hybrid-agent/lifecycle.json");
    let down = (0..600).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        first.0.try_wait().unwrap()
    });
    assert!(down.is_some(), "the reboot command did not run within 60 s");
    let journaled: Value = serde_json::from_str(&std::fs::read_to_string(&journal).unwrap())
        .expect("the reboot stays journaled");
    assert_eq!(journaled["phase"], "reboot", "{journaled}");
    let nodes = format!("nodes/{name}");
    let lock = "configmaps/hybrid-agent/hybrid-agent-disruption-lock";
    let before = kube_history(&ds);
    assert_eq!(seq_of(&before, "cordon", &nodes).len(), 1, "{before:#?}");
    assert_eq!(seq_of(&before, "uncordon", &nodes).len(), 0, "{before:#?}");
    assert_eq!(seq_of(&before, "update", lock).len(), 1, "{before:#?}");
    drop(first);

    let _second = node.spawn_daemon(&log);
    let status = || -> Value {
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap_or_default()
    };
    wait_until("the resumed reboot done", Duration::from_secs(90), || {
        status()["lifecycle"]["reboots"] == 1
    });
    assert!(!journal.exists());
    let events = kube_history(&ds);
    let cordon = seq_of(&events, "cordon", &nodes);
    let uncordon = seq_of(&events, "uncordon", &nodes);
    let updates = seq_of(&events, "update", lock);
    assert_eq!((cordon.len(), uncordon.len()), (1, 1), "{events:#?}");
    // Taken before the cordon, renewed by the second daemon before the uncordon, given back
    // after it.
    assert_eq!(updates.len(), 3, "{events:#?}");
    assert!(
        updates[0] < cordon[0]
            && cordon[0] < updates[1]
            && updates[1] < uncordon[0]
            && uncordon[0] < updates[2],
        "{events:#?}"
    );
}
