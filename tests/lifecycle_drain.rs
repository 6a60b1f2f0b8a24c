//! The node drains itself before `leave` and `upgrade`, with its own credentials, against the
//! devstack's stand-in API server, which evicts as kube-apiserver does (PodDisruptionBudget
//! arithmetic, 429 naming the budget, NodeRestriction's own-pods rule) and replaces an evicted
//! ReplicaSet pod on another node after a delay, as a controller and scheduler would. What the
//! cluster saw is read back from the stand-in's history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;
use serde_json::{Value, json};

/// What the agent's processes write while they run: left out of the "nothing changed"
/// fingerprint.
const RUNTIME: [&str; 3] = [
    "var/lib/hybrid-agent/supervise",
    "var/lib/containerd",
    "run/containerd",
];
/// A release whose kubelet stays unhealthy.
const BAD_VERSION: &str = "1.32.0";
/// A release whose kubelet is healthy.
const GOOD_VERSION: &str = "1.33.1";

struct Fixture {
    _dir: tempfile::TempDir,
    ds: hybrid_devstack::Devstack,
    node: Node,
    name: String,
}

/// A node joined to the demo cluster, whose API server runs; evicted pods take `grace_ms` to
/// terminate and their replacements `replace_ms` to become Ready elsewhere.
fn joined(grace_ms: u64, replace_ms: u64, releases: &[&'static str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = kube_devstack(&mirror, grace_ms, replace_ms);
    let node = Node::new(&ds, &create_activation(&ds));
    standin_release(&mirror, VERSION);
    for r in releases {
        if *r == BAD_VERSION {
            unhealthy_release(&mirror, r);
        } else {
            standin_release(&mirror, r);
        }
    }
    standin_authenticator(&mirror, VERSION, &node.root);
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let name = NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .expect("node record")
        .node_name;
    Fixture {
        _dir: dir,
        ds,
        node,
        name,
    }
}

fn pod(f: &Fixture, pod: Value) {
    control_body(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-pods?name={CLUSTER}"),
        &pod.to_string(),
    );
}

fn pdb(f: &Fixture, name: &str, spec: Value) {
    control_body(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-pdbs?name={CLUSTER}"),
        &json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"namespace": "app", "name": name},
            "spec": spec,
        })
        .to_string(),
    );
}

/// A Running, Ready pod of the `web` ReplicaSet bound to `node`.
fn web_pod(name: &str, node: &str) -> Value {
    json!({
        "metadata": {"namespace": "app", "name": name, "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
                "uid": "8f0c1b2a-0000-4000-8000-000000000001", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// The pods that never leave a drained node: a DaemonSet's and a static (mirror) pod.
fn node_pods(f: &Fixture) {
    let node = &f.name;
    pod(
        f,
        json!({
            "metadata": {"namespace": "kube-system", "name": "kube-proxy-abcde", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy",
                 "uid": "8f0c1b2a-0000-4000-8000-000000000002", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "p", "image": "p"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }),
    );
    pod(
        f,
        json!({
            "metadata": {"namespace": "kube-system", "name": format!("static-web-{node}"),
                "annotations": {"kubernetes.io/config.mirror": "0a1b2c", "kubernetes.io/config.source": "file"}},
            "spec": {"nodeName": node, "containers": [{"name": "s", "image": "s"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }),
    );
}

fn actions(events: &[Value], action: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

/// The pods in the cluster, `namespace/name`.
fn pod_names(f: &Fixture) -> Vec<String> {
    let resp = control(
        &f.ds,
        "GET",
        &format!("/_devstack/eks/kube-pods?name={CLUSTER}"),
    );
    control_json(&resp)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap(),
                p["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn unschedulable(f: &Fixture) -> bool {
    let resp = control(
        &f.ds,
        "GET",
        &format!("/_devstack/eks/kube-nodes?name={CLUSTER}"),
    );
    control_json(&resp)["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["metadata"]["name"] == f.name.as_str())
        .map(|n| n["spec"]["unschedulable"] == true)
        .expect("the node is registered")
}

#[test]
fn leave_drains_through_a_budget_one_pod_at_a_time_and_leaves_daemonset_pods() {
    let f = joined(300, 1500, &[]);
    let node = f.name.clone();
    for i in 1..=3 {
        pod(&f, web_pod(&format!("web-{i}"), &node));
    }
    node_pods(&f);
    // Three replicas, two must stay available: one disruption at a time.
    pdb(
        &f,
        "web-pdb",
        json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
    );

    let leave = f.node.run(&["leave", "--drain-timeout", "60s"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(
        leave.stdout.contains(&format!(
            "drained node {node} in "
        )) && leave
            .stdout
            .contains(": 3 pods (app/web-1, app/web-2, app/web-3) evicted, after ")
            && leave.stdout.contains(
                " refusals by PodDisruptionBudgets, 2 DaemonSet, mirror or finished left (cordoned by this drain)"
            ),
        "{leave:?}"
    );
    assert!(managed_instances(&f.ds).is_empty(), "then it left");

    let events = kube_history(&f.ds);
    let me = format!("system:node:{node}");
    let cordon = actions(&events, "cordon");
    assert_eq!(cordon.len(), 1, "{events:#?}");
    assert_eq!(cordon[0]["actor"], me.as_str());
    let evicted = actions(&events, "evict");
    assert_eq!(
        evicted
            .iter()
            .map(|e| e["object"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["pods/app/web-1", "pods/app/web-2", "pods/app/web-3"],
        "{events:#?}"
    );
    assert!(seq(&cordon[0]) < seq(&evicted[0]), "cordoned first");
    assert!(evicted.iter().all(|e| e["actor"] == me.as_str()));
    // The budget refused while the last evicted pod's replacement was not Ready, and the next
    // eviction passed only after it was.
    let refused = actions(&events, "evict-refused");
    assert!(!refused.is_empty(), "{events:#?}");
    assert!(
        refused
            .iter()
            .all(|e| e["detail"].as_str().unwrap().contains("web-pdb")),
        "{refused:#?}"
    );
    let ready = actions(&events, "ready");
    for pair in evicted.windows(2) {
        let (before, after) = (seq(&pair[0]), seq(&pair[1]));
        assert!(
            refused.iter().any(|r| (before..after).contains(&seq(r))),
            "a refusal between two evictions: {events:#?}"
        );
        assert!(
            ready.iter().any(|r| (before..after).contains(&seq(r))),
            "a replacement became Ready between two evictions: {events:#?}"
        );
    }
    // DaemonSet and mirror pods were never evicted and are still there.
    let left = pod_names(&f);
    assert!(
        left.contains(&"kube-system/kube-proxy-abcde".to_owned())
            && left.contains(&format!("kube-system/static-web-{node}")),
        "{left:?}"
    );
    assert!(
        !left
            .iter()
            .any(|p| p == "app/web-1" || p == "app/web-2" || p == "app/web-3"),
        "{left:?}"
    );
    assert!(unschedulable(&f), "a node that left stays cordoned");
}

#[test]
fn a_drain_held_past_its_deadline_uncordons_names_the_budget_and_changes_nothing() {
    let f = joined(0, 1000, &[]);
    let node = f.name.clone();
    pod(&f, web_pod("web-1", &node));
    node_pods(&f);
    pdb(
        &f,
        "web-pdb",
        json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
    );
    let before = f.node.fingerprint(&RUNTIME);
    let refused = f.node.run(&["leave", "--drain-timeout", "3s"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "node {node} was not drained within 3s: app/web-1 is held by PodDisruptionBudget app/web-pdb (The disruption budget web-pdb needs 1 healthy pods and has 1 currently); the node was uncordoned again"
        )) && refused.stderr.contains("leave changed nothing"),
        "{refused:?}"
    );
    let after = f.node.fingerprint(&RUNTIME);
    assert_eq!(before, after, "leave changed:\n{}", diff(&before, &after));
    assert_eq!(managed_instances(&f.ds), vec![node.clone()]);
    assert!(f.node.kubelet_healthy());
    assert!(!unschedulable(&f), "uncordoned again");
    let events = kube_history(&f.ds);
    let cordon = actions(&events, "cordon");
    let uncordon = actions(&events, "uncordon");
    assert_eq!((cordon.len(), uncordon.len()), (1, 1), "{events:#?}");
    assert!(seq(&cordon[0]) < seq(&uncordon[0]));
    assert!(actions(&events, "evict").is_empty(), "{events:#?}");
    assert!(
        actions(&events, "evict-refused").len() >= 2,
        "asked again with backoff: {events:#?}"
    );
    assert!(pod_names(&f).contains(&"app/web-1".to_owned()));
}

#[test]
fn upgrade_drains_first_and_uncordons_after_a_rollback_and_after_success() {
    let f = joined(200, 800, &[BAD_VERSION, GOOD_VERSION]);
    let node = f.name.clone();
    pod(&f, web_pod("web-1", &node));
    pod(&f, web_pod("web-2", &node));
    node_pods(&f);
    pdb(
        &f,
        "web-pdb",
        json!({"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}}),
    );
    let mirror_url = format!("{}/mirror/", f.ds.url);
    let upgrade = |version: &str, wait: &str| {
        f.node.run(&[
            "upgrade",
            version,
            "--mirror",
            &mirror_url,
            "--allow-insecure-mirror",
            "--wait-timeout",
            wait,
            "--drain-timeout",
            "60s",
        ])
    };
    let bad = upgrade("1.32", "4s");
    assert_eq!(bad.code, Some(3), "{bad:?}");
    assert!(bad.stderr.contains("rolled back automatically"), "{bad:?}");
    assert!(!unschedulable(&f), "uncordoned on the old version");
    assert!(
        !f.node.path("/var/lib/hybrid-agent/drain.json").exists(),
        "the drain is forgotten once the cordon is lifted"
    );
    let events = kube_history(&f.ds);
    let evicted: Vec<_> = actions(&events, "evict")
        .iter()
        .map(|e| e["object"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(evicted, ["pods/app/web-1", "pods/app/web-2"], "{events:#?}");
    assert_eq!(actions(&events, "uncordon").len(), 1, "{events:#?}");

    // The replacements run elsewhere now; the healthy upgrade drains an empty node.
    let good = upgrade(GOOD_VERSION, "30s");
    assert_eq!(good.code, Some(0), "{good:?}");
    assert!(
        good.stdout.contains(&format!("drained node {node} in "))
            && good.stdout.contains(": no pods evicted")
            && good.stdout.contains(&format!("uncordoned node {node}"))
            && good.stdout.contains(&format!(
                "upgraded from Kubernetes {VERSION} to {GOOD_VERSION}"
            )),
        "{good:?}"
    );
    assert!(!unschedulable(&f));
    let events = kube_history(&f.ds);
    let (cordon, uncordon) = (actions(&events, "cordon"), actions(&events, "uncordon"));
    assert_eq!((cordon.len(), uncordon.len()), (2, 2), "{events:#?}");
    // Each cordon is lifted before the next.
    for (c, u) in cordon.iter().zip(&uncordon) {
        assert!(seq(c) < seq(u));
    }

    // Cordoned by an administrator before: the upgrade leaves it cordoned.
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-cordon?name={CLUSTER}&node={node}"),
    );
    let again = upgrade(VERSION, "30s");
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again.stdout.contains("(it was cordoned already)")
            && again
                .stdout
                .contains(&format!("node {node} stays cordoned")),
        "{again:?}"
    );
    assert!(unschedulable(&f));
}
