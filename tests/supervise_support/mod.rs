//! Shared pieces of the supervision tests: the stand-in kubelet binary, free ports, bounded waits
//! on the supervisor's status, and a real containerd laid out in a temp dir.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use hybrid_agent::supervise::{
    ComponentName, ComponentSpec, ExecSpec, Probe, ProbePolicy, SupervisionStatus,
};
use tokio::sync::watch;

/// Builds the `standin-kubelet` workspace member once per test binary and returns its path
/// (it is another package, so Cargo gives us no `CARGO_BIN_EXE_` for it). `STANDIN_KUBELET_BIN`
/// names a prebuilt one instead.
pub fn standin_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(prebuilt) = std::env::var_os("STANDIN_KUBELET_BIN") {
            return PathBuf::from(prebuilt);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(manifest)
            .args([
                "build",
                "--offline",
                "-q",
                "-p",
                "standin-kubelet",
                "--message-format=json",
            ])
            .output()
            .expect("run cargo build -p standin-kubelet");
        assert!(
            out.status.success(),
            "cargo build -p standin-kubelet failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The artifact message names the executable wherever the target dir is.
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["reason"] == "compiler-artifact"
                && v["target"]["name"] == "standin-kubelet"
                && let Some(exe) = v["executable"].as_str()
            {
                return PathBuf::from(exe);
            }
        }
        panic!("cargo build did not report the standin-kubelet executable:\n{stdout}");
    })
    .clone()
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

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
