//! Health probes: a real API call, not "the process exists".
//!
//! containerd is asked for its version over its gRPC socket with containerd's own Rust client
//! (`containerd-client`, tonic over the unix socket): that exercises the same path kubelet's CRI
//! calls take. kubelet is asked `GET /healthz` on its healthz port, which is what kubelet offers
//! for exactly this. Every probe has a timeout; a hanging component counts as a failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::status::{ProbeRecord, now_unix_ms};

/// kubelet's healthz endpoint with its default `--healthz-port` (kubelet flag reference).
pub const KUBELET_HEALTHZ_URL: &str = "http://127.0.0.1:10248/healthz";

/// containerd's default gRPC socket (containerd's `defaults.DefaultAddress`).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// How a component is probed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Probe {
    /// containerd's Version RPC on its gRPC unix socket.
    ContainerdVersion { socket: PathBuf },
    /// An HTTP GET that must answer 200 (kubelet's /healthz).
    HttpGet { url: String },
}

/// When probes run and when failures lead to a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbePolicy {
    pub interval: Duration,
    /// Each probe gives up after this long.
    pub timeout: Duration,
    /// K: failed probes in a row that trigger a restart.
    pub failure_threshold: u32,
    /// Failures during this long after a (re)start do not count: a component needs time to open
    /// its socket.
    pub startup_grace: Duration,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        // Kubernetes' liveness-probe defaults: every 10 s, 3 failures in a row; kubelet and
        // containerd usually answer within seconds of starting.
        ProbePolicy {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            failure_threshold: 3,
            startup_grace: Duration::from_secs(30),
        }
    }
}

/// Runs probes; holds the HTTP client so connections and TLS-free setup are built once.
#[derive(Clone, Debug)]
pub struct Prober {
    http: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    pub fn new() -> Self {
        // Probes go to local endpoints only: a proxy from the environment must not intercept them.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Prober { http }
    }

    /// Probes once, never taking longer than `timeout`.
    pub async fn probe(&self, probe: &Probe, timeout: Duration) -> ProbeRecord {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.probe_inner(probe, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(detail) => ProbeRecord {
                ok: true,
                detail,
                at_unix_ms: now_unix_ms(),
                latency_ms,
            },
            Err(detail) => ProbeRecord {
                ok: false,
                detail,
                at_unix_ms: now_unix_ms(),
                latency_ms,
            },
        }
    }

    async fn probe_inner(&self, probe: &Probe, timeout: Duration) -> Result<String, String> {
        match probe {
            Probe::ContainerdVersion { socket } => containerd_version(socket).await,
            Probe::HttpGet { url } => {
                let mut resp = self
                    .http
                    .get(url)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                let status = resp.status();
                let body =
                    match crate::aws::http::read_body(&mut resp, crate::aws::http::MAX_BODY_BYTES)
                        .await
                    {
                        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        Err(e @ crate::aws::http::BodyError::TooLarge { .. }) => {
                            return Err(format!("GET {url}: {e}"));
                        }
                        Err(crate::aws::http::BodyError::Transport(_)) => String::new(),
                    };
                if status.is_success() {
                    Ok(body.trim().chars().take(200).collect())
                } else {
                    Err(format!(
                        "GET {url}: {status} {}",
                        body.trim().chars().take(200).collect::<String>()
                    ))
                }
            }
        }
    }
}

/// containerd's Version RPC over `socket`; returns "containerd <version> (<revision>)".
pub async fn containerd_version(socket: &std::path::Path) -> Result<String, String> {
    let client = crate::cri::Client::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    client
        .containerd_version(std::time::Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_healthz_body_fails_the_probe_naming_the_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    let chunk = format!("10000\r\n{}\r\n", "o".repeat(0x10000));
                    // 64 MiB: far beyond anything healthz says.
                    for _ in 0..1024 {
                        if s.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        let url = format!("http://127.0.0.1:{port}/healthz");
        let record = Prober::new()
            .probe(
                &Probe::HttpGet { url: url.clone() },
                Duration::from_secs(20),
            )
            .await;
        assert!(!record.ok, "{record:?}");
        assert!(
            record.detail.contains(&url) && record.detail.contains("larger than"),
            "{record:?}"
        );
    }
}
