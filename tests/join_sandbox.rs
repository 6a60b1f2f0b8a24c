//! End-to-end `join` in a `--root` sandbox against the devstack: SSM registration, install from
//! the devstack mirror, rendering, containerd (the distribution's binary, run with the rendered
//! config inside the sandbox) and the stand-in kubelet (a STAND-IN, not kubelet) started by the
//! built-in supervisor; then `join` again is a no-op, `status` reads the node, and `leave`
//! restores the pre-join tree and deregisters the instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use hybrid_agent::install::tracker::Tracker;
use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;

/// What `leave` keeps without `--purge`: containerd's image store.
const CONTAINERD_ROOT: &str = "var/lib/containerd";

fn fixture() -> (tempfile::TempDir, hybrid_devstack::Devstack) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    (dir, ds)
}

#[test]
fn join_then_rejoin_is_a_noop_then_leave_restores_the_tree() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    let before = node.fingerprint(&[]);

    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    println!("{}", run.stdout);
    assert!(
        run.stdout.contains("identity: registered as mi-"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("install: Kubernetes {VERSION}")),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("start: containerd and kubelet started"),
        "{run:?}"
    );

    // The node as joined: registered, installed, rendered, running.
    let paths = HostPaths::new(&node.root);
    let record = NodeRecord::load(&paths).unwrap().expect("node record");
    assert!(record.node_name.starts_with("mi-"));
    assert_eq!(managed_instances(&ds), vec![record.node_name.clone()]);
    assert_eq!(
        record.kubernetes_version, VERSION,
        "the cluster's version (1.31) picked its latest patch"
    );
    assert!(
        node.kubelet_healthy(),
        "the stand-in kubelet answers /healthz"
    );
    assert_eq!(
        node.supervised_pids().len(),
        2,
        "containerd and the stand-in kubelet run"
    );
    let kubelet_config =
        std::fs::read_to_string(node.path("/etc/kubernetes/kubelet/config.json")).unwrap();
    assert!(
        kubelet_config.contains(&format!(
            "eks-hybrid:///{REGION}/{CLUSTER}/{}",
            record.node_name
        )),
        "{kubelet_config}"
    );
    let kubeconfig = std::fs::read_to_string(node.path("/var/lib/kubelet/kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("server: https://127.0.0.1:6443"),
        "{kubeconfig}"
    );
    let ca = std::fs::read_to_string(node.path("/etc/kubernetes/pki/ca.crt")).unwrap();
    assert!(
        ca.starts_with("-----BEGIN CERTIFICATE-----"),
        "the CA came from DescribeCluster"
    );
    let tracker = Tracker::load(&paths).unwrap().expect("tracker");
    assert!(matches!(
        tracker.containerd,
        hybrid_agent::install::tracker::ContainerdRecord::Distro { .. }
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let version = rt
        .block_on(hybrid_agent::supervise::probe::containerd_version(
            &node.path("/run/containerd/containerd.sock"),
        ))
        .expect("containerd answers on the sandbox socket");
    assert!(version.starts_with("containerd "), "{version}");

    // The same configuration again: nothing to do, nothing touched.
    let logs = [
        "var/lib/hybrid-agent/supervise",
        "var/lib/containerd",
        "run/containerd",
    ];
    let joined = node.fingerprint(&logs);
    let again = node.join(&ds, &[]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(again.stdout.contains("nothing to do"), "{again:?}");
    let after_again = node.fingerprint(&logs);
    assert_eq!(
        joined,
        after_again,
        "a no-op join changed:\n{}",
        diff(&joined, &after_again)
    );

    let status = node.run(&["status"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(status.stdout.contains(&record.node_name), "{status:?}");

    let leave = node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(
        leave.stdout.contains(&format!(
            "deregistered SSM managed instance {}",
            record.node_name
        )),
        "{leave:?}"
    );
    assert!(
        leave
            .stdout
            .contains(&format!("`kubectl delete node {}`", record.node_name)),
        "leave names the Node object left in the cluster: {leave:?}"
    );
    assert!(
        managed_instances(&ds).is_empty(),
        "the instance is deregistered"
    );
    assert!(
        node.supervised_pids().is_empty(),
        "containerd and kubelet are stopped"
    );
    assert!(
        node.path(CONTAINERD_ROOT).is_dir(),
        "the image store is user data, kept without --purge"
    );
    // Everything else is as before join.
    let after = node.fingerprint(&[CONTAINERD_ROOT]);
    assert_eq!(
        before,
        after,
        "leave did not restore the tree:\n{}",
        diff(&before, &after)
    );

    // leave again: nothing to do.
    let again = node.run(&["leave"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(again.stdout.contains("nothing to do"), "{again:?}");
}

#[test]
fn leave_purge_restores_the_pre_join_tree_exactly() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    let before = node.fingerprint(&[]);
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let leave = node.run(&["leave", "--purge", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    let after = node.fingerprint(&[]);
    assert_eq!(
        before,
        after,
        "leave --purge did not restore the tree:\n{}",
        diff(&before, &after)
    );
}

#[test]
fn dry_run_lists_every_file_and_action_and_changes_nothing() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    let before = node.fingerprint(&[]);
    let run = node.join(&ds, &["--dry-run", "--kubernetes-version", "1.31"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    println!("{}", run.stdout);
    for expected in [
        "register with SSM activation",
        "write credentials to",
        "kubelet and verify it against",
        "/etc/containerd/config.toml",
        "/etc/kubernetes/kubelet/config.json",
        "/var/lib/kubelet/kubeconfig",
        "/etc/kubernetes/pki/ca.crt",
        "/etc/sysctl.d/99-hybrid-agent.conf",
        "/var/lib/hybrid-agent/supervision.json",
        "start containerd",
        "start kubelet",
        "wait up to",
    ] {
        assert!(
            run.stdout.contains(expected),
            "dry run does not mention `{expected}`:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        node.fingerprint(&[]),
        before,
        "a dry run changed the sandbox"
    );
    assert!(managed_instances(&ds).is_empty(), "a dry run registered");
}

#[test]
fn leave_interrupted_at_deregistration_resumes_where_it_stopped() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    let before = node.fingerprint(&[]);
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");

    // SSM fails every DeregisterManagedInstance: leave stops at that step, after stopping the
    // components, and says how to continue.
    control_body(
        &ds,
        "PUT",
        "/_devstack/faults",
        r#"{"rules":[{"service":"ssm","operation":"DeregisterManagedInstance","error_rate":1.0}]}"#,
    );
    let first = node.run(&["leave", "--purge", "--force"]);
    assert_eq!(first.code, Some(3), "{first:?}");
    assert!(
        first.stderr.contains("leave stopped at step `deregister`"),
        "{first:?}"
    );
    assert!(
        first.stderr.contains("continues from this step"),
        "{first:?}"
    );
    assert!(node.supervised_pids().is_empty(), "the steps before ran");
    assert_eq!(managed_instances(&ds).len(), 1, "still registered");

    control_body(&ds, "PUT", "/_devstack/faults", r#"{"rules":[]}"#);
    let second = node.run(&["leave", "--purge", "--force"]);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        second.stdout.contains("continuing an interrupted leave"),
        "{second:?}"
    );
    assert!(
        !second.stdout.contains("stopped kubelet and containerd"),
        "done steps are not repeated: {second:?}"
    );
    assert!(managed_instances(&ds).is_empty());
    let after = node.fingerprint(&[]);
    assert_eq!(
        before,
        after,
        "the resumed leave did not restore the tree:\n{}",
        diff(&before, &after)
    );
}
