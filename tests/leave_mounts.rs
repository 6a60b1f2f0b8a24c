//! `leave` never deletes what is mounted: a tmpfs mounted under the sandbox's
//! `/var/lib/kubelet/pods/…` (as kubelet mounts an emptyDir volume; DaemonSet pods keep theirs on
//! a drained node) keeps every byte: leave keeps /var/lib/kubelet whole, names the mount and the
//! fix, and does the rest. A mount anywhere else leave would remove makes it refuse before
//! changing anything. The same holds for a join that fails and rolls back.
//!
//! Each test re-runs itself inside `unshare --mount --propagation private` (needs root, as the
//! other join tests do), so its mounts live in a mount namespace of its own and the host's
//! mount table is never touched. Without root the test fails; it is never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::path::Path;
use std::process::Command;

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;

/// Set in the re-run inside the private mount namespace.
const INSIDE: &str = "HYBRID_AGENT_TEST_PRIVATE_MOUNTS";

/// Runs `test` of this binary again inside a private mount namespace; true when this is that
/// run (go on with the test), false after the re-run passed.
fn in_private_mount_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .output()
        .expect("run unshare (util-linux)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} in its mount namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in its mount namespace:\n{text}"
    );
    false
}

fn mount_tmpfs(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs"])
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs at {}", at.display());
}

fn umount(at: &Path) {
    let st = Command::new("umount").arg(at).status().unwrap();
    assert!(st.success(), "umount {}", at.display());
}

/// An emptyDir volume of a pod as kubelet lays it out.
const VOLUME: &str = "/var/lib/kubelet/pods/6f1c2a9e-0d7b-4a51-9f0e-3c2b1a0d9e8f/volumes/kubernetes.io~empty-dir/cache";

#[test]
fn leave_keeps_every_byte_on_a_tmpfs_mounted_under_var_lib_kubelet() {
    if !in_private_mount_namespace(
        "leave_keeps_every_byte_on_a_tmpfs_mounted_under_var_lib_kubelet",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let name = NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .expect("node record")
        .node_name;

    let volume = node.path(VOLUME);
    mount_tmpfs(&volume);
    let data = noise(1 << 20, 42);
    std::fs::write(volume.join("data.bin"), &data).unwrap();
    // Beside the volume, outside the mount: kubelet's own bookkeeping of the pod.
    let pod_dir = volume.ancestors().nth(3).unwrap().to_path_buf();
    std::fs::write(pod_dir.join("etc-hosts"), b"127.0.0.1 localhost\n").unwrap();

    // No API server runs for the demo cluster here: --force skips the drain check, and still
    // does not override the mount check.
    let leave = node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    let output = format!("{}{}", leave.stdout, leave.stderr);
    assert!(
        output.contains(&format!(
            "kept {} whole: 1 filesystem is mounted beneath it ({} (tmpfs from tmpfs))",
            node.path("/var/lib/kubelet").display(),
            volume.display()
        )) && output.contains("umount"),
        "{leave:?}"
    );
    assert_eq!(
        std::fs::read(volume.join("data.bin")).unwrap(),
        data,
        "every byte on the tmpfs is kept"
    );
    assert!(
        pod_dir.join("etc-hosts").is_file(),
        "nothing under the tree is removed"
    );
    // The rest of leave was done: deregistered, components stopped, the agent's state gone.
    assert!(managed_instances(&ds).is_empty(), "deregistered");
    assert!(!node.kubelet_healthy(), "kubelet stopped");
    assert!(!node.path("/var/lib/hybrid-agent/node.json").exists());
    umount(&volume);
    let _ = name;
}

#[test]
fn a_mount_outside_the_pod_state_makes_leave_refuse_before_any_change() {
    if !in_private_mount_namespace(
        "a_mount_outside_the_pod_state_makes_leave_refuse_before_any_change",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let name = NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .expect("node record")
        .node_name;
    // Something mounted inside the agent's state directory, which leave removes.
    let at = node.path("/var/lib/hybrid-agent/mnt");
    mount_tmpfs(&at);
    std::fs::write(at.join("keep.me"), b"data").unwrap();

    let refused = node.run(&["leave", "--force"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains("leave changed nothing")
            && refused.stderr.contains(&format!(
                "1 filesystem is mounted at or beneath what leave would remove: {} (tmpfs from tmpfs)",
                at.display()
            ))
            && refused.stderr.contains("not even with --force"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(at.join("keep.me")).unwrap(), b"data");
    assert_eq!(managed_instances(&ds), vec![name], "still registered");
    assert!(node.kubelet_healthy(), "nothing was stopped");

    umount(&at);
    let leave = node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(managed_instances(&ds).is_empty());
}

#[test]
fn a_join_rollback_keeps_a_tree_with_a_mount_beneath_it() {
    if !in_private_mount_namespace("a_join_rollback_keeps_a_tree_with_a_mount_beneath_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    // kubelet never becomes healthy: join fails in its wait phase and rolls back.
    unhealthy_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    let join = node
        .join_command(&ds, &["--wait-timeout", "20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Mount as soon as join has made the kubelet tree (it waits for kubelet for 20 s after).
    let kubeconfig = node.path("/var/lib/kubelet/kubeconfig");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !kubeconfig.is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "join never rendered the kubeconfig"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let volume = node.path(VOLUME);
    mount_tmpfs(&volume);
    std::fs::write(volume.join("data.bin"), b"precious").unwrap();
    let out = join.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("join failed in the wait phase")
            && stderr.contains("The rollback could not undo everything")
            && stderr.contains(&format!(
                "1 filesystem is mounted at or beneath it ({} (tmpfs from tmpfs)), so nothing under it was removed",
                volume.display()
            )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(volume.join("data.bin")).unwrap(), b"precious");
    assert!(
        !kubeconfig.exists(),
        "the file join wrote is undone (it is not under the mount)"
    );
    umount(&volume);
}

/// A host whose root is an overlayfs (overlayroot, live images, a container's root: found by
/// installing the .deb in a systemd-nspawn container whose / is an overlay). overlayfs reports
/// a directory with the overlay's own device number but a file with the device of the layer it
/// lives on, so a mount check by device number alone sees every file as "on another mount"; the
/// mount id (statx) is the same for both. Leave must remove the agent's state there.
#[test]
fn join_and_leave_on_an_overlayfs_root_remove_the_state() {
    if !in_private_mount_namespace("join_and_leave_on_an_overlayfs_root_remove_the_state") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    // The sandbox as it is (containerd, agent config, registry hosts) becomes the lower layer;
    // the upper layer is a tmpfs, as overlayroot and nspawn --volatile=overlay set it up.
    let layers = dir.path().join("layers");
    std::fs::create_dir(&layers).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
        .arg(&layers)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs at {}", layers.display());
    for d in ["upper", "work"] {
        std::fs::create_dir(layers.join(d)).unwrap();
    }
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            node.root.display(),
            layers.join("upper").display(),
            layers.join("work").display()
        ))
        .arg(&node.root)
        .status()
        .unwrap();
    assert!(st.success(), "mount overlay at {}", node.root.display());

    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(node.path("/var/lib/hybrid-agent/node.json").is_file());
    let leave = node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(
        !node.path("/var/lib/hybrid-agent").exists(),
        "the agent's state is removed: {leave:?}"
    );
    assert!(managed_instances(&ds).is_empty(), "deregistered");
    umount(&node.root);
    umount(&layers);
}
