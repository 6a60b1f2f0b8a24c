//! Runs the telemetry pipeline standalone, for scripts/bench.d/telemetry and by hand: the same
//! `hybrid_agent::telemetry::run` that `hybrid-agent run` starts, over the SDK config and HTTP
//! client the daemon builds (`aws::sdk_config`, `aws::sdk_http_client` from `[network]`), with
//! static credentials from the environment instead of the rotated ones.
//!
//! Environment: `HA_JOURNAL_DIR` (journal directory), `HA_STATE` (state + spool directory),
//! `HA_URL` (CloudWatch Logs and metrics endpoint, e.g. the devstack; `https://` for the TLS path
//! every real CloudWatch call takes), `HA_CA` (optional: a PEM CA bundle trusted as
//! `[network] ca_bundle` is, e.g. the `tls/ca.pem` of `hybrid-devstack --tls`), `HA_UNITS`
//! (comma-separated, default `bench`), `HA_EXPECT` (optional: print `DRAINED <lines> <seconds>
//! <cpu-seconds> <max-anon-rss-kib>` once this many events were shipped), `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`. Runs until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hybrid_agent::telemetry::{self, StatusCell, TelemetrySettings};

fn env(k: &str) -> Result<String, String> {
    std::env::var(k).map_err(|_| format!("{k} is not set"))
}

/// (user+system CPU seconds, anonymous RSS KiB) of this process.
fn usage() -> (f64, u64) {
    let cpu = telemetry::metrics::self_usage()
        .map(|(_, cpu)| cpu)
        .unwrap_or(0.0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let anon = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, anon)
}

fn main() -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let journal = PathBuf::from(env("HA_JOURNAL_DIR")?);
    let state = PathBuf::from(env("HA_STATE")?);
    let url = env("HA_URL")?;
    let units: Vec<String> = std::env::var("HA_UNITS")
        .unwrap_or_else(|_| "bench".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let expect: Option<u64> = std::env::var("HA_EXPECT").ok().and_then(|v| v.parse().ok());
    let key = env("AWS_ACCESS_KEY_ID")?;
    let secret = env("AWS_SECRET_ACCESS_KEY")?;
    // `[network]` as the agent config gives it: the extra CA bundle is read and the SDK's
    // rustls (aws-lc) client built exactly as the daemon builds it.
    let network = hybrid_agent::config::NetworkConfig {
        proxy: None,
        no_proxy: Vec::new(),
        ca_bundle: std::env::var_os("HA_CA").map(PathBuf::from),
    };
    let http = hybrid_agent::aws::sdk_http_client(&network).map_err(|e| e.to_string())?;
    let settings = TelemetrySettings {
        cluster: "bench".into(),
        node: "mi-00000000000000000".into(),
        log_group: "/aws/eks-hybrid/{cluster}".into(),
        log_stream: "{node}/{unit}".into(),
        region: "us-west-2".into(),
        units,
        max_priority: 6,
        journal_dirs: vec![journal],
        state_dir: state.join("state"),
        spool_dir: state.join("spool"),
        spool_max_bytes: 512 << 20,
        flush_interval: Duration::from_secs(5),
        poll_interval: telemetry::DEFAULT_POLL_INTERVAL,
        mem_limit_bytes: telemetry::DEFAULT_MEM_LIMIT_BYTES,
        backoff: telemetry::sink::Backoff::default(),
        metric_namespace: "HybridAgent".into(),
        metrics_interval: Some(Duration::from_secs(60)),
        root: state.clone(),
        startup_spread: Duration::ZERO,
        // The pipeline itself, unpaced (pacing has its own tests and the herd bench).
        put_rate: None,
    };
    // Two worker threads: the agent shares a small box with kubelet and containerd.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let credentials = aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(key, secret, None, None, "env"),
        );
        let sdk = hybrid_agent::aws::sdk_config("us-west-2", credentials, hybrid_agent::aws::Retries::Caller, http);
        // As `[endpoints] logs` / `cloudwatch` reach the daemon's telemetry.
        let url = url.trim_end_matches('/').to_string();
        let endpoints = telemetry::TelemetryEndpoints { logs: Some(url.clone()), metrics: Some(url) };
        let status = StatusCell::new();
        let (stop, rx) = tokio::sync::watch::channel(false);
        if let Some(n) = expect {
            let st = status.clone();
            let max_anon = Arc::new(AtomicU64::new(0));
            tokio::spawn(async move {
                let start = Instant::now();
                loop {
                    let (_, anon) = usage();
                    max_anon.fetch_max(anon, Ordering::Relaxed);
                    if st.counters.snapshot().shipped >= n {
                        let (cpu, _) = usage();
                        println!("DRAINED {n} {:.3} {cpu:.3} {}", start.elapsed().as_secs_f64(), max_anon.load(Ordering::Relaxed));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            let _ = stop.send(true);
        });
        let deps = telemetry::TelemetryDeps { sdk, child_lines: None, probe: Arc::new(telemetry::NoProbe), endpoints };
        telemetry::run(settings, deps, status, rx).await.map_err(|e| e.to_string())
    })
}
