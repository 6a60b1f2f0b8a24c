//! `hybrid-agent doctor` on a joined sandbox against the devstack (with its stand-in API server):
//! every check passes on a healthy node, then each breakage is named with what to do — swap on, a
//! sysctl off, the host clock 10 minutes off the endpoints, the node role without an access entry,
//! the node's address outside the remote node networks, kubelet down. Host files are read under
//! `--root`, so the sandbox carries its own `/proc` files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::collections::BTreeMap;

use install_support::*;

const MODULES: &str =
    "overlay 151552 0 - Live 0x0000000000000000\nbr_netfilter 32768 0 - Live 0x0000000000000000\n";
const SWAPS_HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

fn write(node: &Node, host_path: &str, text: &str) {
    put(&node.path(host_path), text.as_bytes(), 0o644);
}

/// The node's kernel as join leaves a good host: modules loaded, sysctls set, no swap.
fn healthy_kernel(node: &Node) {
    write(node, "/proc/modules", MODULES);
    write(node, "/proc/swaps", SWAPS_HEADER);
    for (key, value) in hybrid_agent::node::system::SYSCTLS {
        write(
            node,
            &format!("/proc/sys/{}", key.replace('.', "/")),
            &format!("{value}\n"),
        );
    }
}

/// `doctor --json` as name → (outcome, detail + fix).
fn doctor(node: &Node) -> (Run, BTreeMap<String, (String, String)>) {
    let run = node.run(&["doctor", "--json"]);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {run:?}"));
    let map = checks
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                (
                    c["outcome"].as_str().unwrap().to_owned(),
                    format!(
                        "{} | fix: {}",
                        c["detail"].as_str().unwrap(),
                        c["fix"].as_str().unwrap_or("")
                    ),
                ),
            )
        })
        .collect();
    (run, map)
}

#[test]
fn doctor_passes_a_healthy_node_and_names_each_breakage_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = devstack(&mirror);
    start_kube_api(&ds);
    // The node reaches the stand-in API server from 127.0.0.1: make that a remote node network.
    control(
        &ds,
        "POST",
        &format!(
            "/_devstack/eks/clusters?name={CLUSTER}&remote_node_cidrs=10.80.0.0/16,127.0.0.0/8"
        ),
    );
    let node = Node::new(&ds, &create_activation(&ds));
    standin_release(&mirror, VERSION);
    standin_authenticator(&mirror, VERSION, &node.root);
    healthy_kernel(&node);
    let join = node.join(&ds, &[]);
    assert_eq!(join.code, Some(0), "{join:?}");

    let (run, checks) = doctor(&node);
    assert_eq!(run.code, Some(0), "{run:?}");
    for name in [
        "node",
        "swap",
        "kernel modules",
        "sysctls",
        "endpoint ssm",
        "endpoint sts",
        "endpoint eks",
        "endpoint logs",
        "endpoint cloudwatch",
        "clock",
        "credentials",
        "cluster",
        "node address",
        "node ready",
        "containerd",
        "kubelet",
        "proxy",
        "cluster identity",
        "drain rights",
    ] {
        let (outcome, detail) = checks
            .get(name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:?}"));
        assert_eq!(outcome, "ok", "{name}: {detail}");
    }
    assert!(
        checks["credentials"].1.contains(":assumed-role/"),
        "{checks:?}"
    );
    assert!(checks["node address"].1.contains("127.0.0.1"), "{checks:?}");
    // The text form: one line per check and a summary.
    let text = node.run(&["doctor"]);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(text.stdout.contains("ok    node ready"), "{text:?}");
    assert!(text.stdout.contains(" failed, "), "{text:?}");

    // kubelet's serving certificate (nodeadm's kubernetes-kubelet-certificate check). The
    // stand-in kubelet never asks for one: what a real kubelet writes once its
    // kubelet-serving CSR is approved is written here, signed with the devstack cluster's CA.
    let (outcome, detail) = &checks["kubelet serving certificate"];
    assert_eq!(outcome, "warn", "{detail}");
    assert!(
        detail.contains("kubelet has no serving certificate yet")
            && detail.contains("kubernetes.io/kubelet-serving"),
        "{detail}"
    );
    let ca = control_json(&control(
        &ds,
        "GET",
        &format!("/_devstack/eks/ca?name={CLUSTER}"),
    ));
    // The cluster CA's own parameters with its key, as the stand-in API server issues its
    // serving certificate.
    let cluster_ca = rcgen::Issuer::new(
        hybrid_devstack::eks::ca_params().unwrap(),
        rcgen::KeyPair::from_pem(ca["key_pem"].as_str().unwrap()).unwrap(),
    );
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    other_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    let other_ca = rcgen::Issuer::new(other_params, other_key);
    let name = hybrid_agent::join::record::NodeRecord::load(&hybrid_agent::paths::HostPaths::new(
        &node.root,
    ))
    .unwrap()
    .unwrap()
    .node_name;
    let serving = |issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, expired: bool| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.clone()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("system:node:{name}"));
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let year = time::OffsetDateTime::now_utc().year();
        if expired {
            params.not_before = rcgen::date_time_ymd(year - 2, 1, 1);
            params.not_after = rcgen::date_time_ymd(year - 1, 1, 1);
        }
        let cert = params.signed_by(&key, issuer).unwrap();
        // As kubelet keeps it: the certificate, then its key, in one file.
        format!("{}{}", cert.pem(), key.serialize_pem())
    };
    let pki = "/var/lib/kubelet/pki/kubelet-server-current.pem";
    write(&node, pki, &serving(&cluster_ca, false));
    let (_, checks) = doctor(&node);
    let (outcome, detail) = &checks["kubelet serving certificate"];
    assert_eq!(outcome, "ok", "{detail}");
    assert!(
        detail.contains(&format!("system:node:{name}"))
            && detail.contains("issued by the cluster's CA"),
        "{detail}"
    );
    // From another cluster (a node that joined elsewhere before): refused, with the fix.
    write(&node, pki, &serving(&other_ca, false));
    let (run, checks) = doctor(&node);
    assert_ne!(run.code, Some(0), "{run:?}");
    let (outcome, detail) = &checks["kubelet serving certificate"];
    assert_eq!(outcome, "fail", "{detail}");
    assert!(
        detail.contains("was not issued by this cluster's CA")
            && detail.contains(&format!("fix: remove {pki} and restart kubelet")),
        "{detail}"
    );
    assert!(!run.stdout.contains("PRIVATE KEY"), "{run:?}");
    write(&node, pki, &serving(&cluster_ca, true));
    let (_, checks) = doctor(&node);
    let (outcome, detail) = &checks["kubelet serving certificate"];
    assert_eq!(outcome, "fail", "{detail}");
    assert!(
        detail.contains("the serving certificate expired at"),
        "{detail}"
    );
    std::fs::remove_file(node.path(pki)).unwrap();

    // Break things.
    // A proxy left in kubelet's drop-in that the agent does not use (its password hidden).
    write(
        &node,
        "/etc/systemd/system/kubelet.service.d/http-proxy.conf",
        "[Service]\nEnvironment=\"HTTPS_PROXY=http://u:hunter2@old-proxy.example:3128\"\n",
    );
    write(
        &node,
        "/proc/swaps",
        &format!("{SWAPS_HEADER}/swapfile\tfile\t1048572\t0\t-2\n"),
    );
    write(&node, "/proc/sys/net/ipv4/ip_forward", "0\n");
    control(&ds, "POST", "/_devstack/clock?offset_secs=600");
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/kube-access?name={CLUSTER}&access=none"),
    );
    control(
        &ds,
        "POST",
        &format!("/_devstack/eks/clusters?name={CLUSTER}&remote_node_cidrs=10.80.0.0/16"),
    );
    let (run, checks) = doctor(&node);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("failed"), "{run:?}");
    let failed = |name: &str, words: &[&str]| {
        let (outcome, detail) = &checks[name];
        assert_eq!(outcome, "fail", "{name}: {detail}");
        for w in words {
            assert!(detail.contains(w), "{name}: {detail} lacks {w:?}");
        }
    };
    failed("swap", &["/swapfile", "swapoff -a"]);
    failed("sysctls", &["net.ipv4.ip_forward = 0 (needs 1)"]);
    failed("clock", &["behind", "5 minutes", "synchronise"]);
    failed(
        "node address",
        &["127.0.0.1", "outside", "10.80.0.0/16", "--node-ip"],
    );
    failed("node ready", &["401", "HYBRID_LINUX"]);
    failed(
        "proxy",
        &[
            "the agent's [network] proxy is none",
            "kubelet drop-in /etc/systemd/system/kubelet.service.d/http-proxy.conf sets http://u:***@old-proxy.example:3128",
            "hybrid-agent join",
        ],
    );
    assert!(
        !run.stdout.contains("hunter2"),
        "a proxy password in doctor's output"
    );
    assert_eq!(checks["kernel modules"].0, "ok");
    assert!(
        !run.stdout.contains("k8s-aws-v1."),
        "a token in doctor's output"
    );

    // kubelet down (the agent's daemon is not running, so nothing restarts it).
    control(&ds, "POST", "/_devstack/clock?offset_secs=0");
    for pid in node.supervised_pids() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("kubelet") {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (_, checks) = doctor(&node);
    assert_eq!(checks["kubelet"].0, "fail", "{checks:?}");
    assert_eq!(checks["containerd"].0, "ok", "{checks:?}");
    assert_eq!(checks["credentials"].0, "ok", "{checks:?}");

    let leave = node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
}

#[test]
fn doctor_before_join_checks_the_nodeconfig_join_will_be_given() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    healthy_kernel(&node);
    let source = format!("file://{}", node.nodeconfig.display());
    let run = node.run(&["doctor", "--json", "--config-source", &source]);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {run:?}"));
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {checks:#?}"))
    };
    let nc = find("nodeconfig");
    assert_eq!(nc["outcome"], "ok", "{nc}");
    assert!(
        nc["detail"].as_str().unwrap().contains(&format!(
            "valid for join: cluster {CLUSTER} in {REGION}, credentials from ssm"
        )),
        "{nc}"
    );
    // The region came from the file: the endpoints were checked, not skipped.
    assert_eq!(find("endpoint ssm")["outcome"], "ok", "{checks:#?}");
    assert!(
        !checks
            .iter()
            .any(|c| c["name"] == "network" && c["outcome"] == "skip"),
        "{checks:#?}"
    );

    // A NodeConfig join would refuse: doctor fails on it, naming the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    region: {REGION}\n  hybrid:\n    ssm:\n      activationId: 4a2c9f3e-1b7d-4c8e-9f01-23456789abcd\n      activationCode: ABCDEFGHIJKLMNOPQRST\n"
        ),
    )
    .unwrap();
    let run = node.run(&[
        "doctor",
        "--json",
        "--config-source",
        &format!("file://{}", bad.display()),
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let nc = checks.iter().find(|c| c["name"] == "nodeconfig").unwrap();
    assert_eq!(nc["outcome"], "fail", "{nc}");
    assert!(
        nc["detail"].as_str().unwrap().contains("spec.cluster.name"),
        "{nc}"
    );
    assert!(
        !run.stdout.contains("ABCDEFGHIJKLMNOPQRST"),
        "the code is never shown"
    );
}
