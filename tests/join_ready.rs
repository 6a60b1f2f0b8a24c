//! `join`'s wait phase against a cluster API server: the devstack's stand-in API server (HTTPS
//! with a certificate from the cluster CA DescribeCluster hands out, EKS token authentication,
//! Node objects) and the stand-in kubelet (a STAND-IN, not kubelet), which registers its Node
//! with the token from the kubeconfig's exec plugin — here a stand-in aws-iam-authenticator that
//! runs `hybrid-agent token`, the agent's own implementation of the same command.
//!
//! Ready → join succeeds and says so; NotReady for want of a CNI → join succeeds with a warning
//! naming it; no access entry (401), or a node that never registers → join fails in the wait
//! phase and rolls everything back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;

/// What the agent's processes leave behind that a rollback does not restore (logs, runtime
/// state of the components it ran).
const RUNTIME: [&str; 3] = [
    "var/lib/hybrid-agent/supervise",
    "var/lib/containerd",
    "run/containerd",
];

struct Fixture {
    _dir: tempfile::TempDir,
    ds: hybrid_devstack::Devstack,
    node: Node,
}

/// A devstack whose demo cluster has an API server, a node sandbox, and a mirror release with
/// the stand-in kubelet in `kubelet_mode` (None: the plain stand-in) and, when `authenticator`, a
/// stand-in aws-iam-authenticator that makes tokens with `hybrid-agent token` for this sandbox.
fn fixture(kubelet_mode: Option<&str>, authenticator: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = devstack(&mirror);
    let started = start_kube_api(&ds);
    assert!(started.contains("https://127.0.0.1:"), "{started}");
    let node = Node::new(&ds, &create_activation(&ds));
    match kubelet_mode {
        None => standin_release(&mirror, VERSION),
        Some(mode) => standin_mode_release(&mirror, VERSION, mode),
    }
    if authenticator {
        standin_authenticator(&mirror, VERSION, &node.root);
    }
    Fixture {
        _dir: dir,
        ds,
        node,
    }
}

/// The sandbox as before the join (runtime state aside), the SSM registration undone, nothing
/// left running.
fn assert_rolled_back(f: &Fixture, before: &std::collections::BTreeMap<String, String>) {
    let after = f.node.fingerprint(&RUNTIME);
    assert_eq!(before, &after, "not rolled back:\n{}", diff(before, &after));
    assert!(
        managed_instances(&f.ds).is_empty(),
        "the registration is undone"
    );
    assert!(
        f.node.supervised_pids().is_empty(),
        "kubelet and containerd are stopped"
    );
}

fn nodes(ds: &hybrid_devstack::Devstack) -> String {
    control(
        ds,
        "GET",
        &format!("/_devstack/eks/kube-nodes?name={CLUSTER}"),
    )
}

#[test]
fn join_waits_until_the_node_is_ready_in_the_cluster() {
    let f = fixture(None, true);
    let run = f.node.join(&f.ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let record = NodeRecord::load(&HostPaths::new(&f.node.root))
        .unwrap()
        .expect("node record");
    assert!(
        run.stdout.contains(&format!(
            "wait: kubelet healthy; node {} is Ready",
            record.node_name
        )),
        "{run:?}"
    );
    // The stand-in kubelet registered the Node under the SSM instance id, with the token the
    // exec plugin made; the agent read it with a token of its own.
    let listed = nodes(&f.ds);
    assert!(
        listed.contains(&format!("\"name\":\"{}\"", record.node_name)),
        "{listed}"
    );
    assert!(f.ds.state.call_count("kube", "CreateNode") >= 1);
    assert!(f.ds.state.call_count("kube", "GetNode") >= 1);
    assert_eq!(f.ds.state.call_count("kube", "Unauthorized"), 0);

    // `hybrid-agent token` is an exec plugin: an ExecCredential whose token the API server
    // accepts for this cluster only, as the node.
    let out = f.node.run(&["token", "--cluster-id", CLUSTER]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let cred: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1beta1");
    assert!(
        cred["status"]["expirationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let token = cred["status"]["token"].as_str().unwrap();
    assert!(token.starts_with("k8s-aws-v1."), "{token}");
    let who = hybrid_devstack::kube::verify_token(&f.ds.state, CLUSTER, token).unwrap();
    assert!(
        who.arn.ends_with(&format!("/{}", record.node_name)),
        "{}",
        who.arn
    );
    let elsewhere = hybrid_devstack::kube::verify_token(&f.ds.state, "another-cluster", token);
    assert!(
        elsewhere.is_err(),
        "a token for {CLUSTER} works for another cluster"
    );
    assert!(!out.stderr.contains("k8s-aws-v1."), "{out:?}");

    let leave = f.node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
}

#[test]
fn a_node_waiting_for_a_cni_joins_with_a_warning() {
    let f = fixture(Some("no-cni"), true);
    let run = f.node.join(&f.ds, &["--wait-timeout", "15s"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("registered, waiting for a pod network"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("NotReady until a CNI runs on it")
            && run.stderr.contains("cni plugin not initialized")
            && run.stderr.contains("Cilium or Calico"),
        "{run:?}"
    );
    let leave = f.node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
}

#[test]
fn no_access_entry_for_the_node_role_fails_the_join_and_rolls_it_back() {
    let f = fixture(None, true);
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-access?name={CLUSTER}&access=none"),
    );
    let before = f.node.fingerprint(&RUNTIME);
    let run = f.node.join(&f.ds, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("join failed in the wait phase")
            && run.stderr.contains("401 Unauthorized")
            && run.stderr.contains("--type HYBRID_LINUX"),
        "{run:?}"
    );
    assert!(
        !run.stderr.contains("k8s-aws-v1."),
        "a token in the output: {run:?}"
    );
    assert_rolled_back(&f, &before);

    // An access entry of the wrong type: authenticated, but forbidden.
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-access?name={CLUSTER}&access=standard"),
    );
    let run = f.node.join(&f.ds, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("403") && run.stderr.contains("must be of type HYBRID_LINUX"),
        "{run:?}"
    );
}

#[test]
fn a_node_that_never_registers_fails_the_join_at_wait() {
    // The mirror's aws-iam-authenticator is random bytes: the stand-in kubelet cannot get a
    // token, so its Node never appears.
    let f = fixture(None, false);
    let before = f.node.fingerprint(&RUNTIME);
    let run = f.node.join(&f.ds, &["--wait-timeout", "8s"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("join failed in the wait phase")
            && run.stderr.contains("did not register with the API server"),
        "{run:?}"
    );
    assert!(
        f.ds.state.call_count("kube", "GetNode") >= 2,
        "the agent kept looking"
    );
    assert_rolled_back(&f, &before);
}

#[test]
fn an_api_server_the_cluster_ca_did_not_sign_fails_the_join_with_the_tls_reason() {
    let f = fixture(None, true);
    // Another cluster's API server (its own CA) behind the demo cluster's endpoint.
    control(&f.ds, "POST", "/_devstack/eks/clusters?name=other");
    let other = control(&f.ds, "POST", "/_devstack/eks/kube-api?name=other");
    let endpoint = other
        .split("\"endpoint\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("endpoint in the answer")
        .to_owned();
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&endpoint={endpoint}"),
    );
    let before = f.node.fingerprint(&RUNTIME);
    let run = f.node.join(&f.ds, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("join failed in the wait phase")
            && run.stderr.contains("is not the cluster's")
            && run.stderr.contains(&endpoint),
        "{run:?}"
    );
    assert_rolled_back(&f, &before);
}
