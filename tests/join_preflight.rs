//! What `join` learns from DescribeCluster and checks before it changes the host, as nodeadm's
//! `init` does: a NodeConfig missing `cidr` still asks DescribeCluster, so kubelet gets its
//! cluster DNS address; a node IP outside the cluster's remote node networks and a kubelet
//! newer than the API server are refused after identity (which gives the credentials) and
//! before install, and the join is rolled back. Against the devstack's EKS, with the stand-in
//! kubelet (a STAND-IN, not kubelet).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use base64::Engine;
use install_support::*;

fn fixture() -> (tempfile::TempDir, hybrid_devstack::Devstack) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    (dir, ds)
}

/// The body of a control call's answer.
fn body(resp: &str) -> serde_json::Value {
    let (_, b) = resp.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(b.trim()).unwrap()
}

/// Rewrites the node's NodeConfig: `cluster` lines appended under spec.cluster, `flags` as
/// spec.kubelet.flags.
fn nodeconfig(node: &Node, cluster: &str, flags: &[&str]) {
    let mut text = std::fs::read_to_string(&node.nodeconfig).unwrap();
    text = text.replace(
        &format!("    region: {REGION}\n"),
        &format!("    region: {REGION}\n{cluster}"),
    );
    if !flags.is_empty() {
        let list: Vec<String> = flags.iter().map(|f| format!("\"{f}\"")).collect();
        text = text.replace(
            "  kubelet:\n",
            &format!("  kubelet:\n    flags: [{}]\n", list.join(", ")),
        );
    }
    std::fs::write(&node.nodeconfig, text).unwrap();
}

fn assert_refused_and_rolled_back(
    ds: &hybrid_devstack::Devstack,
    node: &Node,
    extra: &[&str],
) -> Run {
    let before = node.fingerprint(&[]);
    let run = node.join(ds, extra);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("join failed in the preflight phase"),
        "{run:?}"
    );
    assert!(run.stderr.contains("the host is as it was"), "{run:?}");
    let after = node.fingerprint(&[]);
    assert_eq!(before, after, "changed:\n{}", diff(&before, &after));
    assert!(
        managed_instances(ds).is_empty(),
        "the fresh registration was not deregistered"
    );
    assert!(
        !node.path("/usr/bin/kubelet").exists(),
        "install ran before the checks"
    );
    run
}

#[test]
fn a_missing_cidr_is_learned_from_describe_cluster_for_cluster_dns() {
    let (_m, ds) = fixture();
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&service_cidr=10.123.0.0/16"),
    );
    let ca = body(&control(
        &ds,
        "GET",
        &format!("/_devstack/eks/ca?name={CLUSTER}"),
    ));
    let ca_b64 = base64::engine::general_purpose::STANDARD
        .encode(ca["cert_pem"].as_str().unwrap().as_bytes());
    let node = Node::new(&ds, &create_activation(&ds));
    // Endpoint and CA given, cidr not: nodeadm still calls DescribeCluster.
    nodeconfig(
        &node,
        &format!(
            "    apiServerEndpoint: https://127.0.0.1:6443\n    certificateAuthority: {ca_b64}\n"
        ),
        &[],
    );
    let run = node.join(&ds, &["--skip", "start,wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node.path("/etc/kubernetes/kubelet/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["clusterDNS"],
        serde_json::json!(["10.123.0.10"]),
        "{config}"
    );

    // The NodeConfig's own cidr wins over DescribeCluster's.
    let node = Node::new(&ds, &create_activation(&ds));
    nodeconfig(
        &node,
        &format!(
            "    apiServerEndpoint: https://127.0.0.1:6443\n    certificateAuthority: {ca_b64}\n    cidr: 10.55.0.0/16\n"
        ),
        &[],
    );
    let run = node.join(&ds, &["--skip", "start,wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let config = std::fs::read_to_string(node.path("/etc/kubernetes/kubelet/config.json")).unwrap();
    assert!(config.contains("\"10.55.0.10\""), "{config}");
}

#[test]
fn a_node_ip_outside_the_remote_node_networks_is_refused() {
    let (_m, ds) = fixture();
    control(
        &ds,
        "POST",
        &format!(
            "/_devstack/eks/clusters?name={CLUSTER}&remote_node_cidrs=10.80.0.0/16,10.90.0.0/24"
        ),
    );
    let node = Node::new(&ds, &create_activation(&ds));
    nodeconfig(&node, "", &["--node-ip=192.168.50.10"]);
    let run = assert_refused_and_rolled_back(&ds, &node, &[]);
    for expected in [
        "node IP 192.168.50.10 (--node-ip in spec.kubelet.flags)",
        "10.80.0.0/16, 10.90.0.0/24",
        "remoteNodeNetworks",
        "--node-ip=<an address inside one>",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?}: {run:?}");
    }

    // Inside one of them: the check passes and says so.
    let text = std::fs::read_to_string(&node.nodeconfig)
        .unwrap()
        .replace("192.168.50.10", "10.90.0.7");
    std::fs::write(&node.nodeconfig, text).unwrap();
    let run = node.join(&ds, &["--skip", "start,wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("preflight: node IP 10.90.0.7 is in a remote node network"),
        "{run:?}"
    );
}

#[test]
fn a_kubelet_newer_than_the_cluster_is_refused() {
    let (_m, ds) = fixture();
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&version=1.30"),
    );
    let node = Node::new(&ds, &create_activation(&ds));
    let run = assert_refused_and_rolled_back(&ds, &node, &["--kubernetes-version", "1.31"]);
    for expected in [
        "kubelet 1.31 is newer than the cluster's API server 1.30",
        "`--kubernetes-version 1.30`",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?}: {run:?}");
    }
    // Four minors older is too old as well.
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&version=1.35"),
    );
    let run = assert_refused_and_rolled_back(&ds, &node, &["--kubernetes-version", "1.31"]);
    assert!(
        run.stderr
            .contains("kubelet 1.31 is too old for the cluster's API server 1.35"),
        "{run:?}"
    );
    // Same version: the check passes and says so.
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&version=1.31"),
    );
    let run = node.join(
        &ds,
        &["--kubernetes-version", "1.31", "--skip", "start,wait"],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("preflight: kubelet 1.31 fits the cluster's 1.31; node IP not checked"),
        "{run:?}"
    );
}
