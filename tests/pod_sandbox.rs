//! A real pod sandbox on a node `join` made, with no stand-in between the agent and the parts
//! that run pods: Debian's containerd running the rendered configuration, Debian's
//! docker-registry (distribution 2.8) holding the EKS pause image behind TLS and htpasswd basic
//! auth, the devstack's ECR `GetAuthorizationToken` issuing that registry's credentials, and
//! Debian's CNI plugins (bridge, host-local, loopback) with a bridge network configured as a CNI
//! would. join pre-pulls the pause image through CRI with the ECR token (as nodeadm does); then
//! a CRI client on containerd's socket — playing kubelet's part — starts a pod sandbox, which
//! gets an address from the bridge plugin, and removes it.
//!
//! The test runs itself again inside fresh network and mount namespaces (`unshare`), so the
//! bridge, the sandbox's network namespace and its mounts never appear on the host. kubelet is
//! the stand-in (it cannot run without a cluster); everything the pod sandbox needs is real.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::process::Command;
use std::time::{Duration, Instant};

use hybrid_agent::cri;
use install_support::*;

/// Set in the re-run inside the namespaces.
const INNER: &str = "HYBRID_AGENT_TEST_IN_NAMESPACES";
/// The pause image nodeadm computes for us-west-2 (internal/aws/ecr/ecr.go: account
/// 602401143452, `eks/pause:3.5`), written out here rather than taken from the agent.
const PAUSE_IMAGE: &str = "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5";
/// The pod network the test's bridge conflist hands out.
const POD_SUBNET_PREFIX: &str = "10.244.7.";
const CALL: Duration = Duration::from_secs(60);

#[test]
fn join_pulls_the_pause_image_with_an_ecr_token_and_a_pod_sandbox_gets_a_bridge_address() {
    if std::env::var_os(INNER).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .arg(exe)
            .args([
                "--exact",
                "join_pulls_the_pause_image_with_an_ecr_token_and_a_pod_sandbox_gets_a_bridge_address",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, "1")
            .output()
            .expect("run unshare (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}\n{stderr}");
        assert!(
            out.status.success(),
            "the test inside the namespaces failed"
        );
        // The inner run must have run the test, not filtered it away.
        assert!(stdout.contains("1 passed"), "{stdout}");
        return;
    }
    in_namespaces();
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-ec", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn in_namespaces() {
    // A loopback for the devstack, the registry and the agent; private tmpfs where containerd's
    // CRI plugin and runc keep host-global state (network namespace mounts, shim state).
    sh("ip link set lo up");
    sh(
        "mkdir -p /run/netns /run/containerd && mount -t tmpfs tmpfs /run/netns && mount -t tmpfs tmpfs /run/containerd",
    );

    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    real_cni_plugins(&mirror, VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    // This machine withholds CAP_SYS_RESOURCE even from root, so runc may not lower a sandbox's
    // oom_score_adj to the -998 the CRI plugin asks for; containerd's own switch for such hosts
    // keeps it at containerd's. It goes in through the NodeConfig's containerd drop-in, as a user
    // on such a host would set it.
    let nodeconfig = std::fs::read_to_string(&node.nodeconfig).unwrap();
    std::fs::write(
        &node.nodeconfig,
        nodeconfig.replacen(
            "spec:\n",
            "spec:\n  containerd:\n    config: |\n      [plugins.\"io.containerd.grpc.v1.cri\"]\n      restrict_oom_score_adj = true\n",
            1,
        ),
    )
    .unwrap();

    let join = node.join(&ds, &[]);
    println!("{}\n{}", join.stdout, join.stderr);
    assert_eq!(join.code, Some(0), "{join:?}");
    assert!(
        join.stdout.contains(&format!(
            "pod sandbox image {PAUSE_IMAGE} pulled with ECR credentials"
        )),
        "{join:?}"
    );
    let counters = control(&ds, "GET", "/_devstack/counters");
    assert!(
        counters.contains("\"ecr/GetAuthorizationToken\":1"),
        "one ECR token for the pull: {counters}"
    );

    let socket = node.path("/run/containerd/containerd.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = cri::Client::connect(&socket).await.unwrap();
        let image = client
            .image_status(PAUSE_IMAGE, CALL)
            .await
            .unwrap()
            .expect("containerd holds the pause image join pulled");
        assert!(
            image.repo_tags.iter().any(|t| t == PAUSE_IMAGE),
            "{image:?}"
        );

        // The registry really wants the credentials: an anonymous pull is refused.
        let anonymous = client.pull_image(PAUSE_IMAGE, None, CALL).await;
        let err = anonymous.expect_err("an anonymous pull must be refused");
        let text = err.to_string();
        assert!(
            text.contains("401") || text.to_lowercase().contains("unauthorized"),
            "{text}"
        );

        // The sandbox's cgroups go under a parent of the test's own (the cgroup hierarchy is
        // the host's), removed when the test ends, passed or not.
        let cgroups = CgroupParent::new();
        // The pod network, written as a CNI's DaemonSet writes it once the node has joined.
        put(
            &node.path("/etc/cni/net.d/10-test-bridge.conflist"),
            format!(
                r#"{{"cniVersion":"0.4.0","name":"test-pods","plugins":[{{"type":"bridge","bridge":"hacni0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_SUBNET_PREFIX}0/24"}}]],"dataDir":"{}"}}}}]}}"#,
                node.path("/var/lib/cni/networks").display()
            )
            .as_bytes(),
            0o644,
        );
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "probe".to_owned(),
                uid: uuid::Uuid::new_v4().to_string(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: "probe".to_owned(),
            log_directory: node.path("/var/log/pods/probe").display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroups.parent.clone(),
            }),
            ..Default::default()
        };
        // containerd loads the conflist asynchronously; until then RunPodSandbox says the CNI is
        // not initialised.
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            match client.run_pod_sandbox(config.clone(), CALL).await {
                Ok(id) => break id,
                Err(e) if Instant::now() < deadline && e.to_string().contains("cni") => {
                    println!("retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => {
                    print_component_logs(&node);
                    panic!("RunPodSandbox: {e}")
                }
            }
        };
        let status = client.pod_sandbox_status(&id, CALL).await.unwrap();
        println!("{status:?}");
        assert_eq!(status.state, cri::SANDBOX_READY, "{status:?}");
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(
            ip.starts_with(POD_SUBNET_PREFIX),
            "the sandbox's address comes from the bridge network: {ip:?}"
        );

        client.stop_pod_sandbox(&id, CALL).await.unwrap();
        client.remove_pod_sandbox(&id, CALL).await.unwrap();
        let gone = client.pod_sandbox_status(&id, CALL).await;
        assert_eq!(
            gone.map(|s| s.id).map_err(|e| e.code()),
            Err(tonic::Code::NotFound)
        );
    });

    let leave = node.run(&["leave", "--purge", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
}

/// containerd's output (the built-in supervisor's log of it), for a failure's diagnosis.
fn print_component_logs(node: &Node) {
    let dir = node.path("/var/lib/hybrid-agent/supervise");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        println!("--- {} (last lines)", e.path().display());
        for l in tail.into_iter().rev() {
            println!("{l}");
        }
    }
}

/// A cgroup parent for the test's pod sandbox; its (empty) directories are removed on drop in
/// every hierarchy runc made them in.
struct CgroupParent {
    parent: String,
}

impl CgroupParent {
    fn new() -> Self {
        Self {
            parent: format!("/hybrid-agent-test-{}", std::process::id()),
        }
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        // The sandbox's own cgroup beneath it goes away shortly after RemovePodSandbox returns:
        // try for a few seconds.
        let name = self.parent.trim_start_matches('/');
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = 0;
            for h in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let dir = h.path().join(name);
                if dir.exists() && std::fs::remove_dir(&dir).is_err() {
                    left += 1;
                }
            }
            if left == 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
