//! Shared pieces of the supervision tests: the stand-in kubelet binary, free ports, bounded waits
//! on the supervisor's status, and a real containerd laid out in a temp dir.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hybrid_agent::supervise::{
    ComponentName, ComponentSpec, ExecSpec, Probe, ProbePolicy, SupervisionStatus,
};
use tokio::sync::watch;

#[path = "../shared_support/mod.rs"]
mod shared;
// Not every test binary that includes this harness uses both.
#[allow(unused_imports)]
pub use shared::{free_port, standin_binary};

/// Probe settings fast enough for tests.
pub fn fast_probe(threshold: u32, grace: Duration) -> ProbePolicy {
    ProbePolicy {
        interval: Duration::from_millis(150),
        timeout: Duration::from_millis(800),
        failure_threshold: threshold,
        startup_grace: grace,
    }
}

/// The stand-in kubelet as a component serving /healthz on `port`.
pub fn standin_component(port: u16, extra: &[&str], policy: ProbePolicy) -> ComponentSpec {
    let mut args = vec!["--healthz-port".to_string(), port.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    ComponentSpec {
        name: ComponentName::Kubelet,
        exec: ExecSpec {
            program: standin_binary(),
            args,
            env: vec![],
        },
        unit: "kubelet.service".into(),
        probe: Probe::HttpGet {
            url: format!("http://127.0.0.1:{port}/healthz"),
        },
        probe_policy: policy,
    }
}

/// Waits (bounded) until the status satisfies `pred`; panics with the last status otherwise.
pub async fn wait_status(
    rx: &mut watch::Receiver<SupervisionStatus>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&SupervisionStatus) -> bool,
) -> SupervisionStatus {
    let outcome = tokio::time::timeout(limit, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("status channel closed while waiting for: {what}");
            }
        }
    })
    .await;
    match outcome {
        Ok(s) => s,
        Err(_) => panic!(
            "gave up after {limit:?} waiting for: {what}\nlast status: {}",
            serde_json::to_string_pretty(&*rx.borrow()).unwrap_or_default()
        ),
    }
}

/// Debian's containerd with config, root, state and sockets in a temp dir.
pub struct ContainerdFixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
}

pub const CONTAINERD: &str = "/usr/bin/containerd";

impl ContainerdFixture {
    pub fn new() -> Self {
        assert!(
            Path::new(CONTAINERD).exists(),
            "{CONTAINERD} is missing: run scripts/setup (Debian package containerd)"
        );
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("h5ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let socket = d.join("c.sock");
        let config = d.join("config.toml");
        let text = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# No CRI: these tests need the API socket, not Kubernetes' runtime service.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(&config, text).unwrap();
        ContainerdFixture {
            dir,
            config,
            socket,
        }
    }

    pub fn component(&self, policy: ProbePolicy) -> ComponentSpec {
        ComponentSpec {
            name: ComponentName::Containerd,
            exec: ExecSpec {
                program: CONTAINERD.into(),
                args: vec!["--config".into(), self.config.display().to_string()],
                env: vec![],
            },
            unit: "containerd.service".into(),
            probe: Probe::ContainerdVersion {
                socket: self.socket.clone(),
            },
            probe_policy: policy,
        }
    }
}

/// Whether `pid` names a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    hybrid_agent::supervise::pidfile::proc_stat(pid)
        .is_some_and(|(state, _)| state != 'Z' && state != 'X')
}
