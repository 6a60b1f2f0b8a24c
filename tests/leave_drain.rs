//! `leave` in a cluster whose authorizer does not let nodes evict (the stand-in's
//! `kube-node-evictions?allowed=false`; EKS does let them, see tests/lifecycle_drain.rs): it
//! behaves as nodeadm's uninstall, checking that the node is drained and cordoned before it
//! changes anything, asking the devstack's stand-in API server with the node's own credentials
//! (the token the agent makes from them), and prints the manifest that would let the node drain
//! itself. Pods are put on the node through the devstack's control endpoint (there is no
//! scheduler); the stand-in kubelet (a STAND-IN, not kubelet) registers the Node.
//!
//! A pod bound to the node blocks leave until it is gone (or `--force`); DaemonSet pods, mirror
//! pods and finished pods do not; an uncordoned node blocks; an API server nobody answers at
//! blocks unless `--force`. A refused leave changes nothing: the files, the registration and
//! the running components stay. Once the printed manifest is applied, leave drains the node
//! itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;

/// What the agent's processes write while they run (logs, runtime state): left out of the
/// "nothing changed" fingerprint.
const RUNTIME: [&str; 3] = [
    "var/lib/hybrid-agent/supervise",
    "var/lib/containerd",
    "run/containerd",
];

struct Fixture {
    _dir: tempfile::TempDir,
    ds: hybrid_devstack::Devstack,
    node: Node,
    name: String,
}

/// A node joined to the demo cluster, whose API server runs (`api`) or not.
fn joined(api: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = devstack(&mirror);
    if api {
        start_kube_api(&ds);
        control(
            &ds,
            "POST",
            &format!("/_devstack/eks/kube-node-evictions?name={CLUSTER}&allowed=false"),
        );
    }
    let node = Node::new(&ds, &create_activation(&ds));
    standin_release(&mirror, VERSION);
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

/// Puts a pod in the cluster.
fn pod(ds: &hybrid_devstack::Devstack, pod: serde_json::Value) {
    control_body(
        ds,
        "POST",
        &format!("/_devstack/eks/kube-pods?name={CLUSTER}"),
        &pod.to_string(),
    );
}

fn web_pod(namespace: &str, name: &str, node: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"namespace": namespace, "name": name, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Running"},
    })
}

fn cordon(f: &Fixture) {
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-cordon?name={CLUSTER}&node={}", f.name),
    );
}

/// The refused leave changed nothing: files, registration, running components.
fn assert_untouched(f: &Fixture, before: &std::collections::BTreeMap<String, String>) {
    let after = f.node.fingerprint(&RUNTIME);
    assert_eq!(before, &after, "leave changed:\n{}", diff(before, &after));
    assert_eq!(managed_instances(&f.ds), vec![f.name.clone()]);
    assert!(f.node.kubelet_healthy(), "the stand-in kubelet still runs");
}

#[test]
fn a_pod_bound_to_the_node_blocks_leave_until_it_is_gone() {
    let f = joined(true);
    let node = f.name.clone();
    pod(&f.ds, web_pod("app", "web-5d4f-x7", &node));
    // Pods that do not block, as for `kubectl drain --ignore-daemonsets`.
    pod(
        &f.ds,
        serde_json::json!({
            "metadata": {"namespace": "kube-system", "name": "kube-proxy-abcde", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy", "controller": true}]},
            "spec": {"nodeName": node}, "status": {"phase": "Running"},
        }),
    );
    pod(
        &f.ds,
        serde_json::json!({
            "metadata": {"namespace": "kube-system", "name": format!("static-web-{node}"),
                "annotations": {"kubernetes.io/config.mirror": "0a1b2c", "kubernetes.io/config.source": "file"}},
            "spec": {"nodeName": node}, "status": {"phase": "Running"},
        }),
    );
    pod(
        &f.ds,
        serde_json::json!({
            "metadata": {"namespace": "batch", "name": "report-28461"},
            "spec": {"nodeName": node}, "status": {"phase": "Succeeded"},
        }),
    );
    // Another node's pod is not this node's business.
    pod(
        &f.ds,
        web_pod("app", "web-5d4f-elsewhere", "mi-0000000000other"),
    );

    let before = f.node.fingerprint(&RUNTIME);
    let refused = f.node.run(&["leave"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains("leave changed nothing")
            && refused.stderr.contains(&format!(
                "node {node} is not drained: 1 pod still runs on it: app/web-5d4f-x7, and it is not cordoned"
            ))
            && refused
                .stderr
                .contains(&format!("kubectl drain {node} --ignore-daemonsets"))
            && refused.stderr.contains("`--force`")
            && refused.stderr.contains(&format!(
                "This node may not drain itself in cluster {CLUSTER}: the access review denies it `create pods/eviction` (to evict the node's pods through the Eviction API (PodDisruptionBudgets))"
            ))
            && refused.stderr.contains("hybrid-agent rbac --drain | kubectl apply -f -")
            && refused.stderr.contains(hybrid_agent::join::drain::NODE_DRAIN_RBAC.trim_end()),
        "{refused:?}"
    );
    for not_blocking in [
        "kube-proxy-abcde",
        "static-web-",
        "report-28461",
        "elsewhere",
    ] {
        assert!(!refused.stderr.contains(not_blocking), "{refused:?}");
    }
    assert!(
        f.ds.state.call_count("kube", "ListPods") >= 1,
        "asked the API server"
    );
    assert_eq!(f.ds.state.call_count("kube", "Unauthorized"), 0);
    assert_untouched(&f, &before);

    // Cordoned, but the pod is still there.
    cordon(&f);
    let refused = f.node.run(&["leave"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("1 pod still runs on it: app/web-5d4f-x7.")
            && !refused.stderr.contains("not cordoned"),
        "{refused:?}"
    );
    assert_untouched(&f, &before);

    // Evicted (as `kubectl drain` would): leave goes ahead.
    control(
        &f.ds,
        "DELETE",
        &format!("/_devstack/eks/kube-pods?name={CLUSTER}&namespace=app&pod=web-5d4f-x7"),
    );
    let leave = f.node.run(&["leave"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(
        leave.stdout.contains(&format!(
            "node {node} is drained and cordoned (3 DaemonSet, mirror or finished pods not counted)"
        )),
        "{leave:?}"
    );
    assert!(managed_instances(&f.ds).is_empty());
    assert!(f.node.supervised_pids().is_empty());
}

#[test]
fn an_uncordoned_or_crowded_node_is_refused_and_force_leaves_anyway() {
    let f = joined(true);
    let node = f.name.clone();
    let before = f.node.fingerprint(&RUNTIME);
    let refused = f.node.run(&["leave"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "node {node} runs no pods that need draining but is not cordoned"
        )) && refused.stderr.contains(&format!("kubectl cordon {node}")),
        "{refused:?}"
    );
    assert_untouched(&f, &before);

    for i in 0..12 {
        pod(&f.ds, web_pod("app", &format!("web-{i:02}"), &node));
    }
    let refused = f.node.run(&["leave"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains(
            "12 pods still run on it: app/web-00, app/web-01, app/web-02, app/web-03, app/web-04, app/web-05, app/web-06, app/web-07, app/web-08, app/web-09 and 2 more, and it is not cordoned"
        ),
        "{refused:?}"
    );
    assert_untouched(&f, &before);

    let forced = f.node.run(&["leave", "--force"]);
    assert_eq!(forced.code, Some(0), "{forced:?}");
    assert!(
        forced
            .stdout
            .contains("--force: the node was not drained nor checked for pods still running on it"),
        "{forced:?}"
    );
    assert!(managed_instances(&f.ds).is_empty());
    assert!(!f.node.path("/var/lib/kubelet").exists());
}

#[test]
fn an_api_server_nobody_answers_at_refuses_leave_unless_forced() {
    // The demo cluster's endpoint without an API server behind it (join warns and goes on).
    let f = joined(false);
    let before = f.node.fingerprint(&RUNTIME);
    let refused = f.node.run(&["leave"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "cannot tell whether node {} is drained: nothing answers at the API server endpoint https://127.0.0.1:6443",
            f.name
        )) && refused.stderr.contains("asked 3 times")
            && refused.stderr.contains("nodeadm refuses in this case too")
            && refused.stderr.contains("`--force`"),
        "{refused:?}"
    );
    assert_untouched(&f, &before);
    let forced = f.node.run(&["leave", "--force"]);
    assert_eq!(forced.code, Some(0), "{forced:?}");
    assert!(managed_instances(&f.ds).is_empty());
}

#[test]
fn the_printed_manifest_lets_the_node_drain_itself() {
    let f = joined(true);
    let node = f.name.clone();
    pod(&f.ds, web_pod("app", "web-5d4f-x7", &node));
    let refused = f.node.run(&["leave"]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    // The administrator applies what leave printed (`hybrid-agent rbac --drain`).
    let manifest = f.node.run(&["rbac", "--drain"]);
    assert_eq!(manifest.code, Some(0), "{manifest:?}");
    assert!(refused.stderr.contains(manifest.stdout.trim_end()));
    control_body(
        &f.ds,
        "POST",
        &format!("/_devstack/eks/kube-apply?name={CLUSTER}"),
        &manifest.stdout,
    );
    let leave = f.node.run(&["leave"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(
        leave.stdout.contains(&format!("drained node {node} in "))
            && leave.stdout.contains("1 pod (app/web-5d4f-x7) evicted")
            && leave.stdout.contains("(cordoned by this drain)"),
        "{leave:?}"
    );
    assert!(managed_instances(&f.ds).is_empty());
}
