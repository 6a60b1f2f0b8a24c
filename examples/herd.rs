//! A herd of agents through an outage, for `scripts/bench herd` (issue 11 §3): N simulated
//! agents as tasks in this process against one in-process devstack. Each agent runs the real
//! credential [`Rotator`] (start-up spread, refresh schedule, jittered capped backoff) over a
//! cheap SSM call (DescribeInstanceInformation, retried by the rotator like a token request),
//! and the real [`LogsSink`] (its retry loop and the per-node [`Pace`]) for three log streams.
//!
//! Timeline per mode: all N agents start in the same second (a site powering up), run
//! `HERD_WARMUP_SECS`, then SSM and CloudWatch Logs answer every call with a 500 for
//! `HERD_OUTAGE_SECS` (devstack fault rules), then recover; the minute after recovery is measured
//! from the devstack's per-second arrivals. Two modes in one run, on the same devstack:
//! `baseline` (no start-up spread, PutLogEvents unpaced: the agent before this change) and
//! `paced` (start-up spread, pacing and the slow start after an outage, as shipped).
//!
//! Log volume is scaled down so one machine can play a fleet: a "batch" is 10 events of 80
//! bytes standing for a full PutLogEvents batch, and each stream fills one every
//! `HERD_LOG_EVERY_SECS`. Request counts and timing, not bytes, are what the bench measures.
//!
//! Environment: `HERD_N` (2000), `HERD_OUTAGE_SECS` (600), `HERD_WARMUP_SECS` (60),
//! `HERD_LOG_EVERY_SECS` (30), `HERD_MODES` (`baseline,paced`), `HERD_SHM` (a tmpfs directory
//! for the agents' state, default /dev/shm).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hybrid_agent::config::Secret;
use hybrid_agent::identity::TemporaryCredentials;
use hybrid_agent::identity::clock::SystemClock;
use hybrid_agent::identity::rotation::{
    CredentialSource, FetchFuture, RefreshError, RotationSettings, Rotator,
};
use hybrid_agent::identity::schedule::{self, RandomJitter};
use hybrid_agent::identity::store::{IdentityStore, ProviderKind};
use hybrid_agent::telemetry::batch::{Batch, WindowBuilder};
use hybrid_agent::telemetry::pace::Pace;
use hybrid_agent::telemetry::record::{Message, Record};
use hybrid_agent::telemetry::sink::{Backoff, LogsSink};
use hybrid_agent::telemetry::status::Counters;
use tokio::sync::watch;
use tokio::time::Instant;

const ADMIN_KEY: &str = "AKIADEVSTACKADMIN000";
const ADMIN_SECRET: &str = "devstack-admin-secret-key-not-a-real-secret";
/// Streams per agent (kubelet, containerd, hybrid-agent).
const STREAMS: usize = 3;
/// Events per simulated batch and their size.
const BATCH_EVENTS: usize = 10;
const EVENT_BYTES: usize = 80;
/// Client timeout of one call, as the agent's HTTP settings give.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Length of the measured windows.
const MINUTE: u64 = 60;

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Client-side outcome of the SSM calls.
#[derive(Default)]
struct CallStats {
    ok: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    /// The last failure, to tell the devstack's answers from client-side trouble.
    last_error: std::sync::Mutex<String>,
}

/// A credential source whose "token request" is one DescribeInstanceInformation: as cheap for
/// the devstack as a call can be, failing exactly when SSM fails.
struct HerdSource {
    id: String,
    client: aws_sdk_ssm::Client,
    lifetime: Duration,
    stats: Arc<CallStats>,
}

impl CredentialSource for HerdSource {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ssm
    }
    fn identity(&self) -> String {
        self.id.clone()
    }
    fn fetch(&mut self) -> FetchFuture<'_> {
        Box::pin(async move {
            let r = tokio::time::timeout(
                CALL_TIMEOUT,
                self.client.describe_instance_information().send(),
            )
            .await;
            match r {
                Ok(Ok(_)) => {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    Ok(TemporaryCredentials {
                        access_key_id: "ASIAHERDHERDHERDHERD".into(),
                        secret_access_key: Secret::new("herd-secret"),
                        session_token: Secret::new("herd-token"),
                        expiration: SystemTime::now() + self.lifetime,
                    })
                }
                Ok(Err(e)) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = self.stats.last_error.lock() {
                        *l = format!("{e:?}").chars().take(300).collect();
                    }
                    Err(RefreshError::Other(format!("SSM: {e}")))
                }
                Err(_) => {
                    self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    Err(RefreshError::Other("SSM call timed out".into()))
                }
            }
        })
    }
}

fn batch(stream: &str) -> Option<Batch> {
    let now = hybrid_agent::telemetry::now_ms();
    let stream: Arc<str> = Arc::from(stream);
    let mut w = WindowBuilder::new();
    for i in 0..BATCH_EVENTS {
        let text = format!("{i:04} {}", "x".repeat(EVENT_BYTES - 5));
        w.push(Record {
            stream: stream.clone(),
            timestamp_ms: now,
            message: Message::new(text).ok()?,
        });
    }
    w.finish(now).0.into_iter().next()
}

/// One agent's log shipping, shaped like the shipper's windows: one batch per stream that has
/// a backlog, the streams in parallel, the next window once the whole window was accepted.
async fn ship_logs(sink: Arc<LogsSink>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut backlog = [0u32; STREAMS];
    // Lines come in at any phase; a batch fills every `every`.
    let mut next = Instant::now() + every.mul_f64(rand::random::<f64>());
    loop {
        if *stop.borrow() {
            return;
        }
        while Instant::now() >= next {
            for b in backlog.iter_mut() {
                *b += 1;
            }
            next += every;
        }
        if backlog.iter().all(|&b| b == 0) {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let mut sends = Vec::new();
        for (k, b) in backlog.iter().enumerate() {
            if *b > 0
                && let Some(batch) = batch(&format!("unit{k}"))
            {
                let sink = sink.clone();
                sends.push(async move { sink.ship(&batch).await });
            }
        }
        tokio::select! {
            _ = futures_util::future::join_all(sends) => {}
            _ = stop.changed() => return,
        }
        for b in backlog.iter_mut() {
            *b = b.saturating_sub(1);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Baseline,
    Paced,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Paced => "paced",
        }
    }
}

/// Figures of one service over one window of seconds.
struct Window {
    per_sec: Vec<u64>,
    errors: u64,
    latency_us_sum: u64,
    latency_us_max: u64,
}

impl Window {
    fn of(arrivals: &serde_json::Value, services: &[&str], from: u64, secs: u64) -> Window {
        let mut w = Window {
            per_sec: vec![0; secs as usize],
            errors: 0,
            latency_us_sum: 0,
            latency_us_max: 0,
        };
        for s in services {
            let Some(m) = arrivals.get(*s).and_then(|v| v.as_object()) else {
                continue;
            };
            for (sec, v) in m {
                let Ok(sec) = sec.parse::<u64>() else {
                    continue;
                };
                if sec < from || sec >= from + secs {
                    continue;
                }
                let g = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                w.per_sec[(sec - from) as usize] += g("calls");
                w.errors += g("errors");
                w.latency_us_sum += g("latency_us_sum");
                w.latency_us_max = w.latency_us_max.max(g("latency_us_max"));
            }
        }
        w
    }

    fn total(&self) -> u64 {
        self.per_sec.iter().sum()
    }

    fn line(&self) -> String {
        let total = self.total();
        let mean = total as f64 / self.per_sec.len().max(1) as f64;
        let peak = self.per_sec.iter().copied().max().unwrap_or(0);
        let p2m = if mean > 0.0 { peak as f64 / mean } else { 0.0 };
        let lat = if total > 0 {
            self.latency_us_sum as f64 / total as f64 / 1000.0
        } else {
            0.0
        };
        format!(
            "calls {total}, mean {mean:.1}/s, peak {peak}/s, peak-to-mean {p2m:.2}; devstack errors {}, latency mean {lat:.1} ms, max {:.1} ms",
            self.errors,
            self.latency_us_max as f64 / 1000.0
        )
    }
}

struct Knobs {
    n: u64,
    outage: u64,
    warmup: u64,
    log_every: Duration,
    shm: PathBuf,
}

async fn run_mode(ds: &hybrid_devstack::Devstack, k: &Knobs, mode: Mode) -> Result<(), String> {
    let creds = aws_credential_types::Credentials::new(ADMIN_KEY, ADMIN_SECRET, None, None, "herd");
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&ds.url)
        .region(aws_config::Region::new("us-west-2"))
        .credentials_provider(creds)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeouts)
        .load()
        .await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let dir = k
        .shm
        .join(format!("herd-{}-{}", std::process::id(), mode.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spread = match mode {
        Mode::Baseline => Duration::ZERO,
        Mode::Paced => schedule::DEFAULT_STARTUP_SPREAD,
    };
    // Credentials outlive the warm-up, then expire during the outage.
    let lifetime = Duration::from_secs(k.outage.max(60));
    let stats = Arc::new(CallStats::default());
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    ds.state.faults_mut().rules.clear();
    hybrid_devstack::state::lock(&ds.state.arrivals).clear();
    let start = unix_now();
    for i in 0..k.n {
        let id = format!("mi-{}{i:013}", &mode.name()[..4]);
        let state = dir.join(&id);
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let rotator = Rotator::new(
            HerdSource {
                id: id.clone(),
                client: ssm.clone(),
                lifetime,
                stats: stats.clone(),
            },
            RotationSettings {
                targets: Vec::new(),
                backoff_cap: schedule::DEFAULT_BACKOFF_CAP,
                startup_spread: spread,
            },
            IdentityStore::new(&state),
            Arc::new(SystemClock),
            Arc::new(RandomJitter),
        );
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let _ = rotator
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        let pace = match mode {
            Mode::Baseline => Pace::unlimited(),
            Mode::Paced => {
                Pace::for_node(hybrid_agent::telemetry::pace::DRAIN_RATE_PER_SEC, spread)
            }
        };
        let sink = LogsSink::new(
            logs.clone(),
            "/aws/eks-hybrid/herd".into(),
            "{node}/{unit}".into(),
            id,
            Backoff::default(),
            counters.clone(),
        )
        .with_pace(Arc::new(pace));
        tasks.spawn(ship_logs(Arc::new(sink), k.log_every, stop_rx.clone()));
    }
    eprintln!("{}: {} agents started", mode.name(), k.n);
    tokio::time::sleep(Duration::from_secs(k.warmup)).await;
    {
        let mut f = ds.state.faults_mut();
        for service in ["ssm", "logs"] {
            f.rules.push(hybrid_devstack::control::FaultRule {
                service: Some(service.into()),
                error_rate: 1.0,
                ..Default::default()
            });
        }
    }
    eprintln!("{}: outage of {} s", mode.name(), k.outage);
    tokio::time::sleep(Duration::from_secs(k.outage)).await;
    ds.state.faults_mut().rules.clear();
    // The first whole second after the faults were lifted: the second of the switch still
    // holds outage traffic.
    let recovered = unix_now() + 1;
    let (before_ok, before_fail, before_to) = (
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.timed_out.load(Ordering::Relaxed),
    );
    let retries_before = counters.snapshot().retries;
    eprintln!("{}: recovered", mode.name());
    tokio::time::sleep(Duration::from_secs(MINUTE + 2)).await;
    let arrivals = hybrid_devstack::state::lock(&ds.state.arrivals).to_json();
    let (after_ok, after_fail, after_to) = (
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.timed_out.load(Ordering::Relaxed),
    );
    let retries_after = counters.snapshot().retries;
    if let Ok(l) = stats.last_error.lock() {
        eprintln!("{}: last SSM failure: {l}", mode.name());
    }
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    tasks.abort_all();
    let _ = std::fs::remove_dir_all(&dir);

    let m = mode.name();
    let rec_all = Window::of(&arrivals, &["ssm", "logs"], recovered, MINUTE);
    let rec_ssm = Window::of(&arrivals, &["ssm"], recovered, MINUTE);
    let rec_logs = Window::of(&arrivals, &["logs"], recovered, MINUTE);
    let boot = Window::of(&arrivals, &["ssm", "logs"], start, MINUTE.min(k.warmup));
    println!("{m}: N={} outage={} s", k.n, k.outage);
    println!(
        "{m}: start-up minute (all agents start in one second), SSM+Logs: {}",
        boot.line()
    );
    println!(
        "{m}: start-up per second (SSM+Logs): {}",
        boot.per_sec
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{m}: recovery minute, SSM+Logs: {}", rec_all.line());
    println!("{m}: recovery minute, SSM:      {}", rec_ssm.line());
    println!("{m}: recovery minute, Logs:     {}", rec_logs.line());
    println!(
        "{m}: recovery minute per second (SSM+Logs): {}",
        rec_all
            .per_sec
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{m}: client side in the recovery minute: SSM ok {}, failed {}, timed out {}; PutLogEvents retries (errors + timeouts) {}",
        after_ok - before_ok,
        after_fail - before_fail,
        after_to - before_to,
        retries_after - retries_before
    );
    let mut sum = BTreeMap::new();
    sum.insert("p2m", {
        let mean = rec_all.total() as f64 / MINUTE as f64;
        let peak = rec_all.per_sec.iter().copied().max().unwrap_or(0) as f64;
        if mean > 0.0 { peak / mean } else { 0.0 }
    });
    println!(
        "HERD {m} n={} outage={} p2m={:.2} errors={} latency_max_ms={:.1}",
        k.n,
        k.outage,
        sum["p2m"],
        rec_all.errors,
        rec_all.latency_us_max as f64 / 1000.0
    );
    Ok(())
}

fn main() -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let k = Knobs {
        n: env_u64("HERD_N", 2000).clamp(1, 10_000),
        outage: env_u64("HERD_OUTAGE_SECS", 600),
        warmup: env_u64("HERD_WARMUP_SECS", 60),
        log_every: Duration::from_secs(env_u64("HERD_LOG_EVERY_SECS", 30).max(1)),
        shm: PathBuf::from(std::env::var("HERD_SHM").unwrap_or_else(|_| "/dev/shm".into())),
    };
    let modes: Vec<Mode> = std::env::var("HERD_MODES")
        .unwrap_or_else(|_| "baseline,paced".into())
        .split(',')
        .filter_map(|m| match m.trim() {
            "baseline" => Some(Mode::Baseline),
            "paced" => Some(Mode::Paced),
            _ => None,
        })
        .collect();
    let ds = hybrid_devstack::Devstack::spawn(hybrid_devstack::Config::default())
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        for mode in modes {
            run_mode(&ds, &k, mode).await?;
        }
        Ok(())
    })
}
