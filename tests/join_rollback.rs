//! `join` is transactional: a failure injected in each phase in turn — with real faults in real
//! components, not mocks — leaves the `--root` sandbox identical to before (every path, mode
//! and content), the fresh SSM registration deregistered and nothing running; the error names
//! the phase. A join killed half-way is rolled back by the next command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use install_support::*;

fn fixture() -> (tempfile::TempDir, hybrid_devstack::Devstack) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    (dir, ds)
}

/// Runs a join expected to fail in `phase` and checks that nothing is left of it.
fn assert_rolled_back(
    ds: &hybrid_devstack::Devstack,
    node: &Node,
    phase: &str,
    code: i32,
    extra: &[&str],
) -> Run {
    let before = node.fingerprint(&[]);
    let run = node.join(ds, extra);
    assert_eq!(run.code, Some(code), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("join failed in the {phase} phase")),
        "{run:?}"
    );
    assert!(run.stderr.contains("the host is as it was"), "{run:?}");
    let after = node.fingerprint(&[]);
    assert_eq!(
        before,
        after,
        "a join failing in {phase} changed the sandbox:\n{}",
        diff(&before, &after)
    );
    assert!(
        managed_instances(ds).is_empty(),
        "the fresh registration was not deregistered"
    );
    assert!(
        node.supervised_pids().is_empty(),
        "something still runs: {:?}",
        node.supervised_pids()
    );
    run
}

#[test]
fn failure_in_preflight_swap_partition_on() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    std::fs::create_dir_all(node.path("/proc")).unwrap();
    // A swap file would be turned off (as nodeadm does); a partition is refused.
    std::fs::write(
        node.path("/proc/swaps"),
        "Filename Type Size Used Priority\n/dev/sda2 partition 1048572 0 -2\n",
    )
    .unwrap();
    let run = assert_rolled_back(&ds, &node, "preflight", 3, &[]);
    assert!(
        run.stderr.contains("swap partition /dev/sda2 is on"),
        "{run:?}"
    );
}

#[test]
fn failure_in_identity_wrong_activation_code() {
    let (_m, ds) = fixture();
    let (id, _) = create_activation(&ds);
    let node = Node::new(&ds, &(id, "WrongCodeWrongCodeWrong1".to_owned()));
    // Exit 11: the documented code for a rejected activation.
    let run = assert_rolled_back(&ds, &node, "identity", 11, &[]);
    assert!(run.stderr.contains("SSM rejected activation"), "{run:?}");
}

#[test]
fn failure_in_install_corrupt_artifact() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    control(
        &ds,
        "POST",
        &format!("/_devstack/mirror/corrupt?path={VERSION}/{ARCH}/kubelet"),
    );
    let run = assert_rolled_back(&ds, &node, "install", 3, &[]);
    assert!(run.stderr.contains("checksum mismatch"), "{run:?}");
}

#[test]
fn failure_in_cluster_preflight_cluster_not_active() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&status=CREATING"),
    );
    // Checked against DescribeCluster once identity has credentials, before install.
    let run = assert_rolled_back(&ds, &node, "preflight", 3, &[]);
    assert!(run.stderr.contains("is CREATING, not ACTIVE"), "{run:?}");
}

#[test]
fn failure_in_start_containerd_never_answers() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // A containerd that exits at once. The sandbox's copy is a hard link to the host's binary:
    // unlink it first, never write through it.
    let bin = node.path("/usr/bin/containerd");
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho broken containerd >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = assert_rolled_back(&ds, &node, "start", 3, &["--wait-timeout", "3s"]);
    assert!(
        run.stderr.contains("containerd did not become healthy"),
        "{run:?}"
    );
}

#[test]
fn failure_in_wait_kubelet_never_healthy() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // Something else holds kubelet's healthz port and never answers: the stand-in cannot bind
    // it, and the probe never gets a 200.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", node.healthz_port)).unwrap();
    let run = assert_rolled_back(&ds, &node, "wait", 3, &["--wait-timeout", "3s"]);
    assert!(
        run.stderr.contains("kubelet did not become healthy"),
        "{run:?}"
    );
}

#[test]
fn a_join_killed_half_way_is_rolled_back_by_the_next_command() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    let before = node.fingerprint(&[]);
    // kubelet can never become healthy, so the join sits in its wait phase until killed.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", node.healthz_port)).unwrap();
    let mut child = node
        .join_command(&ds, &["--wait-timeout", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the journal notes that kubelet was started: the join is then in its last phases.
    let journal = node.path("/var/lib/hybrid-agent/txn-journal.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"component\": \"kubelet\""))
    {
        assert!(
            Instant::now() < deadline,
            "join did not reach its start phase"
        );
        assert!(child.try_wait().unwrap().is_none(), "join ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        managed_instances(&ds).len(),
        1,
        "the killed join had registered"
    );
    assert!(
        node.path("/var/lib/hybrid-agent/txn-journal.json")
            .is_file(),
        "its journal is left behind"
    );

    let leave = node.run(&["leave"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(
        leave
            .stdout
            .contains("rolled back an interrupted earlier run"),
        "{leave:?}"
    );
    let after = node.fingerprint(&[]);
    assert_eq!(
        before,
        after,
        "recovery did not restore the sandbox:\n{}",
        diff(&before, &after)
    );
    assert!(
        managed_instances(&ds).is_empty(),
        "recovery deregistered the instance"
    );
    assert!(
        node.supervised_pids().is_empty(),
        "recovery stopped what the killed join started"
    );
}

/// The instance id in the sandbox's registration.json.
fn registered_instance(node: &Node) -> String {
    let text =
        std::fs::read_to_string(node.path("/var/lib/hybrid-agent/identity/registration.json"))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["instance_id"].as_str().unwrap().to_owned()
}

#[test]
fn a_failure_right_after_registration_deregisters_it_and_says_so() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // The first call after RegisterManagedInstance (the first credentials) fails as often as
    // join tries it (identity::register::REGISTER_ATTEMPTS); the rollback's own fetch, to
    // deregister with, then succeeds.
    control(
        &ds,
        "POST",
        &format!(
            "/_devstack/fail-next?service=ssm&operation=RequestManagedInstanceRoleToken&count={}",
            hybrid_agent::identity::register::REGISTER_ATTEMPTS
        ),
    );
    // Exit 3: a server error, not one of the registration codes.
    let run = assert_rolled_back(&ds, &node, "identity", 3, &[]);
    assert!(
        run.stderr
            .contains("cannot fetch or write the first credentials"),
        "{run:?}"
    );
    // Not "the registration is kept": the rollback has just deregistered it.
    assert!(!run.stderr.contains("registration is kept"), "{run:?}");
    assert!(run.stderr.contains("deregistered"), "{run:?}");
}

#[test]
fn a_key_rotated_during_a_failed_join_is_not_rolled_back() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // Registration and credentials only.
    let first = node.join(&ds, &["--skip", "install,render,start,wait"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    let instance = registered_instance(&node);
    let key = node.path("/var/lib/hybrid-agent/identity/instance.key");
    let old_key = std::fs::read(&key).unwrap();
    // The service asks for a new key at the next refresh: the join's identity phase rotates it.
    control(
        &ds,
        "POST",
        &format!("/_devstack/ssm/request-key-rotation?instance={instance}"),
    );
    control(
        &ds,
        "POST",
        &format!("/_devstack/mirror/corrupt?path={VERSION}/{ARCH}/kubelet"),
    );
    let failed = node.join(&ds, &[]);
    assert_eq!(failed.code, Some(3), "{failed:?}");
    assert!(
        failed.stderr.contains("join failed in the install phase"),
        "{failed:?}"
    );
    assert_ne!(
        std::fs::read(&key).unwrap(),
        old_key,
        "the rollback put back the key the service no longer accepts"
    );
    assert_eq!(registered_instance(&node), instance);
    // The key on disk is the one the service accepts: the identity still works.
    let again = node.join(&ds, &["--skip", "install,render,start,wait"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(managed_instances(&ds), vec![instance]);
}
