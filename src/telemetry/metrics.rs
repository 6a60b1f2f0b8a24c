//! Health metrics to CloudWatch, kept on disk while offline.
//!
//! Every interval (60 s by default) the collector samples the host (CPU, memory, root disk,
//! network, via sysinfo), the agent itself (RSS, CPU, from /proc/self), the components and the
//! credentials (through [`HealthProbe`], which the daemon wires to the supervisor and the
//! credential rotation) and the log pipeline (spool, counters). Each sample is written to its own
//! spool (`spool/metrics`) *before* any send, with its timestamp; the sender drains that spool
//! oldest first in PutMetricData calls of at most 1,000 data points, acknowledging only what
//! CloudWatch accepted. After an outage the graphs have no holes: points arrive late, with their
//! original timestamps. Points older than CloudWatch's two-week limit are dropped and counted;
//! points CloudWatch refuses as invalid are isolated by halving the call, dropped and counted
//! ([`classify_metrics`]), so one bad datum cannot hold the spool.
//! The CloudWatch client has SDK retries off; this loop is the one retry owner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::record::{Message, Record};
use super::sink::{Backoff, Class, MAX_REJECT_SPLITS};
use super::spool::{Spool, SpoolError};
use super::status::StatusCell;

/// PutMetricData: at most 1,000 metrics per call (docs/protocols.md "CloudWatch PutMetricData").
pub const MAX_DATUMS_PER_CALL: usize = 1000;
/// PutMetricData: timestamps at most two weeks old.
pub const MAX_DATUM_AGE_MS: i64 = 14 * 24 * 3600 * 1000;

/// One component's health as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentHealth {
    pub name: String,
    pub up: bool,
    pub restarts: u64,
}

/// What the rest of the agent tells the metrics collector. The daemon implements it over the
/// supervisor and the credential rotation; tests pass their own.
pub trait HealthProbe: Send + Sync {
    fn components(&self) -> Vec<ComponentHealth>;
    /// Seconds until the current credentials expire, if known.
    fn credential_seconds_to_expiry(&self) -> Option<f64>;
    /// The agent's own subsystems (credential rotation, supervision, telemetry): up, and how
    /// often the daemon restarted them.
    fn subsystems(&self) -> Vec<ComponentHealth> {
        Vec::new()
    }
}

/// A probe that knows nothing (standalone runs).
pub struct NoProbe;

impl HealthProbe for NoProbe {
    fn components(&self) -> Vec<ComponentHealth> {
        Vec::new()
    }
    fn credential_seconds_to_expiry(&self) -> Option<f64> {
        None
    }
}

/// A data point as stored in the metrics spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub timestamp_ms: i64,
    /// Extra dimension (`Component`), besides ClusterName and NodeName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub namespace: String,
    pub interval: Duration,
    pub cluster: String,
    pub node: String,
    pub backoff: Backoff,
}

/// Samples the host and the agent.
pub struct Collector {
    sys: Option<sysinfo::System>,
    disks: Option<sysinfo::Disks>,
    nets: Option<sysinfo::Networks>,
    last_net: Option<(u64, u64)>,
    last_self_cpu: Option<(f64, Instant)>,
    root: std::path::PathBuf,
}

fn ticks_per_sec() -> f64 {
    // USER_HZ is 100 on every Linux architecture the agent ships for.
    100.0
}

/// (RSS bytes, CPU seconds user+system) of this process from /proc/self (also what the
/// telemetry benchmarks' examples measure themselves with).
pub fn self_usage() -> Option<(u64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is index 0, utime 11, stime 12.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((rss_pages * 4096, (ut + st) / ticks_per_sec()))
}

impl Collector {
    pub fn new(root: std::path::PathBuf) -> Collector {
        let mut sys = sysinfo::System::new().ok();
        if let Some(s) = sys.as_mut() {
            s.refresh_cpu_usage();
        }
        let nets = sysinfo::Networks::new_with_refreshed_list().ok();
        let last_net = nets.as_ref().map(|n| {
            n.values().fold((0, 0), |a, d| {
                (a.0 + d.total_received(), a.1 + d.total_transmitted())
            })
        });
        Collector {
            sys,
            disks: sysinfo::Disks::new_with_refreshed_list().ok(),
            nets,
            last_net,
            last_self_cpu: None,
            root,
        }
    }

    /// One sample of every metric at `now_ms`.
    pub fn sample(
        &mut self,
        now_ms: i64,
        probe: &dyn HealthProbe,
        status: &StatusCell,
    ) -> Vec<Point> {
        let mut out = Vec::new();
        let mut p = |name: &str, value: f64, unit: &str| {
            out.push(Point {
                name: name.into(),
                value,
                unit: unit.into(),
                timestamp_ms: now_ms,
                component: None,
            });
        };
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            p(
                "HostCpuUtilization",
                f64::from(sys.global_cpu_usage()),
                "Percent",
            );
            let total = sys.total_memory() as f64;
            if total > 0.0 {
                p(
                    "HostMemoryUtilization",
                    100.0 * (total - sys.available_memory() as f64) / total,
                    "Percent",
                );
            }
            p(
                "HostMemoryAvailable",
                sys.available_memory() as f64,
                "Bytes",
            );
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            // The disk holding the agent's root (spool, state) is the one that matters.
            let best = disks
                .iter()
                .filter(|d| self.root.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len());
            if let Some(d) = best {
                let total = d.total_space() as f64;
                if total > 0.0 {
                    p(
                        "HostDiskUtilization",
                        100.0 * (total - d.available_space() as f64) / total,
                        "Percent",
                    );
                }
            }
        }
        if let Some(nets) = self.nets.as_mut() {
            nets.refresh(true);
            let cur = nets.values().fold((0u64, 0u64), |a, d| {
                (a.0 + d.total_received(), a.1 + d.total_transmitted())
            });
            if let Some(prev) = self.last_net {
                p(
                    "HostNetworkReceived",
                    cur.0.saturating_sub(prev.0) as f64,
                    "Bytes",
                );
                p(
                    "HostNetworkTransmitted",
                    cur.1.saturating_sub(prev.1) as f64,
                    "Bytes",
                );
            }
            self.last_net = Some(cur);
        }
        if let Some((rss, cpu)) = self_usage() {
            p("AgentMemoryRss", rss as f64, "Bytes");
            let now = Instant::now();
            if let Some((prev, at)) = self.last_self_cpu {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    p(
                        "AgentCpuUtilization",
                        100.0 * (cpu - prev) / secs,
                        "Percent",
                    );
                }
            }
            self.last_self_cpu = Some((cpu, now));
        }
        if let Some(s) = probe.credential_seconds_to_expiry() {
            p("CredentialSecondsToExpiry", s, "Seconds");
        }
        let st = status.snapshot();
        p("SpoolBytes", st.spool_bytes as f64, "Bytes");
        p(
            "SpoolOldestRecordAge",
            st.spool_oldest_ms
                .map(|t| ((now_ms - t).max(0)) as f64 / 1000.0)
                .unwrap_or(0.0),
            "Seconds",
        );
        p(
            "SpoolPaused",
            if st.counters.spool_paused { 1.0 } else { 0.0 },
            "Count",
        );
        p("SpoolPauses", st.counters.spool_pauses as f64, "Count");
        p("LogEventsShipped", st.counters.shipped as f64, "Count");
        p("LogEventsRejected", st.counters.rejected as f64, "Count");
        p(
            "LogEventsDropped",
            (st.counters.dropped_too_old + st.counters.journal_missed_entries) as f64,
            "Count",
        );
        for c in probe.components() {
            out.push(Point {
                name: "ComponentUp".into(),
                value: if c.up { 1.0 } else { 0.0 },
                unit: "Count".into(),
                timestamp_ms: now_ms,
                component: Some(c.name.clone()),
            });
            out.push(Point {
                name: "ComponentRestarts".into(),
                value: c.restarts as f64,
                unit: "Count".into(),
                timestamp_ms: now_ms,
                component: Some(c.name),
            });
        }
        // The agent's own subsystems, under the same dimension (`Component`), named after them.
        for s in probe.subsystems() {
            out.push(Point {
                name: "SubsystemUp".into(),
                value: if s.up { 1.0 } else { 0.0 },
                unit: "Count".into(),
                timestamp_ms: now_ms,
                component: Some(s.name.clone()),
            });
            out.push(Point {
                name: "SubsystemRestarts".into(),
                value: s.restarts as f64,
                unit: "Count".into(),
                timestamp_ms: now_ms,
                component: Some(s.name),
            });
        }
        out
    }
}

fn to_record(p: &Point) -> Option<Record> {
    Some(Record {
        stream: "metrics".into(),
        timestamp_ms: p.timestamp_ms,
        message: Message::new(serde_json::to_string(p).ok()?).ok()?,
    })
}

fn datum(p: &Point, s: &MetricsSettings) -> MetricDatum {
    let mut dims = vec![
        Dimension::builder()
            .name("ClusterName")
            .value(&s.cluster)
            .build(),
        Dimension::builder().name("NodeName").value(&s.node).build(),
    ];
    if let Some(c) = &p.component {
        dims.push(Dimension::builder().name("Component").value(c).build());
    }
    MetricDatum::builder()
        .metric_name(&p.name)
        .value(p.value)
        .unit(StandardUnit::from(p.unit.as_str()))
        .timestamp(DateTime::from_millis(p.timestamp_ms))
        .set_dimensions(Some(dims))
        .build()
}

/// What to do about a failed PutMetricData, by the error code (the awsQuery code, or the
/// shape name of the CBOR protocol: `InvalidParameterValueException`) and HTTP status: a
/// datum CloudWatch calls invalid (NaN, a timestamp over two hours ahead, a bad unit or
/// dimension) can never be accepted, so retrying it would block the metrics spool for ever.
pub fn classify_metrics(code: Option<&str>, status: Option<u16>) -> Class {
    let bare = code.map(|c| {
        let c = c.rsplit('#').next().unwrap_or(c);
        c.strip_suffix("Exception").unwrap_or(c)
    });
    match bare {
        Some(
            "InvalidParameterValue"
            | "InvalidParameterCombination"
            | "MissingParameter"
            | "MissingRequiredParameter"
            | "InvalidFormat"
            | "Serialization"
            | "Validation",
        ) => Class::Reject,
        _ => match super::sink::classify(code, status) {
            Class::Reject => Class::Reject,
            Class::Denied => Class::Denied,
            Class::Missing | Class::Retry => Class::Retry,
        },
    }
}

/// Sends `data` in one PutMetricData; a call refused as invalid is sent again in halves down to
/// the datum at fault (bounded by [`MAX_REJECT_SPLITS`]), so one bad datum costs only itself.
/// `Ok((accepted, refused))`, or `Err` with the error of a failure worth retrying — everything is
/// then sent again later, halves already accepted included (a duplicate datum, the price of
/// acknowledging the spool by whole calls).
async fn put_halving(
    client: &Client,
    namespace: &str,
    data: &[MetricDatum],
) -> Result<(u64, u64), String> {
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..data.len());
    let mut splits = 0usize;
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        let res = client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(data[range.clone()].to_vec()))
            .send()
            .await;
        let e = match res {
            Ok(_) => {
                accepted += range.len() as u64;
                continue;
            }
            Err(e) => e,
        };
        let status = e.raw_response().map(|r| r.status().as_u16());
        let (code, msg) = match e.as_service_error() {
            Some(s) => (
                s.code().map(str::to_string),
                format!(
                    "{}: {}",
                    s.code().unwrap_or("error"),
                    s.message().unwrap_or("")
                ),
            ),
            None => (None, "network error or timeout".to_string()),
        };
        if classify_metrics(code.as_deref(), status) != Class::Reject {
            return Err(msg);
        }
        if range.len() > 1 && splits < MAX_REJECT_SPLITS {
            splits += 1;
            let mid = range.start + range.len() / 2;
            todo.push(mid..range.end);
            todo.push(range.start..mid);
            continue;
        }
        tracing::error!(error = %msg, points = range.len(), "CloudWatch refused metric data as invalid; dropped and counted as rejected");
        refused += range.len() as u64;
    }
    Ok((accepted, refused))
}

/// Samples into the metrics spool every interval and drains it to CloudWatch.
pub async fn run_metrics(
    client: Client,
    settings: MetricsSettings,
    mut spool: Spool,
    mut collector: Collector,
    probe: Arc<dyn HealthProbe>,
    status: Arc<StatusCell>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SpoolError> {
    let mut next_sample = Instant::now() + settings.interval;
    let mut attempt = 0u32;
    let mut retry_at: Option<Instant> = if spool.is_empty() {
        None
    } else {
        Some(Instant::now())
    };
    // Totals since join: they go on from what the previous daemon published.
    let before = status.snapshot().metrics;
    let mut sent = before.sent_points;
    let mut dropped = before.dropped_too_old_points;
    let mut rejected = before.rejected_points;
    let mut last_sent = before.last_sent_ms;
    let mut state = String::from("idle");
    loop {
        let now = Instant::now();
        if now >= next_sample {
            next_sample += settings.interval;
            if next_sample < now {
                next_sample = now + settings.interval;
            }
            let points = collector.sample(super::now_ms(), probe.as_ref(), &status);
            let recs: Vec<Record> = points.iter().filter_map(to_record).collect();
            tracing::debug!(points = recs.len(), "metrics sample taken");
            match spool.append(&recs) {
                Ok(()) => spool.commit()?,
                // The shared spool is full of logs: a sample is the least valuable thing to keep.
                Err(SpoolError::Full { .. }) => {
                    tracing::warn!("spool full; this metrics sample is not kept")
                }
                Err(e) => return Err(e),
            }
            if retry_at.is_none() {
                retry_at = Some(now);
            }
        }
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            // Drain: calls of up to 1,000 points until empty or a failure.
            loop {
                let mut points = Vec::new();
                let (_, pos) = spool.read(|r| {
                    if points.len() >= MAX_DATUMS_PER_CALL {
                        return false;
                    }
                    if let Ok(p) = serde_json::from_str::<Point>(&r.message) {
                        points.push(p);
                    }
                    true
                })?;
                tracing::debug!(points = points.len(), ?pos, "metrics read from spool");
                if points.is_empty() {
                    spool.ack(pos)?;
                    retry_at = None;
                    state = "idle".into();
                    break;
                }
                let now_ms = super::now_ms();
                let before = points.len();
                points.retain(|p| now_ms - p.timestamp_ms <= MAX_DATUM_AGE_MS);
                dropped += (before - points.len()) as u64;
                let data: Vec<MetricDatum> = points.iter().map(|p| datum(p, &settings)).collect();
                status.update(|s| s.metrics.state = format!("sending {} points", points.len()));
                let res = if data.is_empty() {
                    Ok((0, 0))
                } else {
                    put_halving(&client, &settings.namespace, &data).await
                };
                match res {
                    Ok((accepted, refused)) => {
                        status.counters.clear_denied("PutMetricData");
                        spool.ack(pos)?;
                        sent += accepted;
                        rejected += refused;
                        last_sent = Some(super::now_ms());
                        attempt = 0;
                    }
                    Err(msg) => {
                        let d = settings
                            .backoff
                            .delay(attempt)
                            .max(Duration::from_millis(100));
                        if attempt < 3 || attempt.is_multiple_of(10) {
                            tracing::warn!(error = %msg, attempt, delay_ms = d.as_millis() as u64, "PutMetricData failed; points stay on disk and are retried");
                        }
                        // `msg` is "<code>: <message>" (put_halving).
                        let code = msg.split(':').next();
                        if crate::retry::metrics(code, None) == crate::retry::Class::Denied {
                            status.counters.set_denied("PutMetricData", &msg);
                        }
                        attempt += 1;
                        state = format!("failing: {msg}");
                        retry_at = Some(Instant::now() + d);
                        break;
                    }
                }
            }
        }
        let backlog = spool.backlog_bytes();
        status.update(|s| {
            s.metrics.state = state.clone();
            s.metrics.last_sent_ms = last_sent;
            s.metrics.sent_points = sent;
            s.metrics.dropped_too_old_points = dropped;
            s.metrics.rejected_points = rejected;
            // Stored points are ~150 bytes each: an estimate is what status needs.
            s.metrics.backlog_points = backlog / 150;
        });
        let mut wake = next_sample.saturating_duration_since(Instant::now());
        if let Some(t) = retry_at {
            wake = wake.min(t.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(wake) => {}
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_error_classes() {
        for code in [
            "InvalidParameterValue",
            "InvalidParameterValueException",
            "com.amazonaws.cloudwatch#InvalidParameterCombinationException",
            "MissingParameter",
            "MissingRequiredParameterException",
        ] {
            assert_eq!(
                classify_metrics(Some(code), Some(400)),
                Class::Reject,
                "{code}"
            );
        }
        assert_eq!(
            classify_metrics(Some("Throttling"), Some(400)),
            Class::Retry
        );
        assert_eq!(
            classify_metrics(Some("InternalServiceError"), Some(500)),
            Class::Retry
        );
        assert_eq!(classify_metrics(None, None), Class::Retry);
        assert_eq!(
            classify_metrics(Some("ResourceNotFoundException"), Some(400)),
            Class::Retry
        );
    }

    #[test]
    fn a_sample_has_host_agent_pipeline_and_component_metrics() {
        struct Probe;
        impl HealthProbe for Probe {
            fn components(&self) -> Vec<ComponentHealth> {
                vec![ComponentHealth {
                    name: "containerd".into(),
                    up: true,
                    restarts: 2,
                }]
            }
            fn credential_seconds_to_expiry(&self) -> Option<f64> {
                Some(1800.0)
            }
        }
        let status = StatusCell::new();
        let mut c = Collector::new(std::path::PathBuf::from("/"));
        let _ = c.sample(1, &Probe, &status);
        let pts = c.sample(2, &Probe, &status);
        let names: Vec<&str> = pts.iter().map(|p| p.name.as_str()).collect();
        for want in [
            "HostCpuUtilization",
            "HostMemoryUtilization",
            "HostDiskUtilization",
            "AgentMemoryRss",
            "AgentCpuUtilization",
            "CredentialSecondsToExpiry",
            "SpoolBytes",
            "SpoolPaused",
            "LogEventsShipped",
            "ComponentUp",
            "ComponentRestarts",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(pts.iter().all(|p| p.timestamp_ms == 2));
        let restarts = pts
            .iter()
            .find(|p| p.name == "ComponentRestarts")
            .expect("restarts");
        assert_eq!(
            (restarts.value, restarts.component.as_deref()),
            (2.0, Some("containerd"))
        );
    }

    /// One point CloudWatch refuses (three hours in the future: InvalidParameterValue) among
    /// good ones costs only itself: the call is split in halves down to it, it is dropped and
    /// counted, and the rest arrive instead of the whole spool waiting for ever.
    #[test]
    fn a_refused_point_is_dropped_and_counted_not_retried_for_ever() {
        use crate::telemetry::spool::SpoolBudget;
        let ds = hybrid_devstack::Devstack::spawn(hybrid_devstack::Config::default())
            .expect("start devstack");
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) =
            Spool::open(dir.path(), SpoolBudget::new(1 << 20)).expect("open spool");
        let now = crate::telemetry::now_ms();
        let recs: Vec<Record> = (0..7)
            .map(|i| Point {
                name: format!("Test{i}"),
                value: i as f64,
                unit: "Count".into(),
                timestamp_ms: if i == 4 { now + 3 * 3600 * 1000 } else { now },
                component: None,
            })
            .filter_map(|p| to_record(&p))
            .collect();
        spool.append(&recs).expect("append");
        spool.commit().expect("commit");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let status = StatusCell::new();
        let got = rt.block_on(async {
            let settings = MetricsSettings {
                namespace: "Test/Reject".into(),
                interval: Duration::from_secs(3600),
                cluster: "c".into(),
                node: "n".into(),
                backoff: Backoff {
                    base: Duration::from_millis(50),
                    cap: Duration::from_millis(200),
                },
            };
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(run_metrics(
                crate::telemetry::devstack_metrics_client(&ds.url),
                settings,
                spool,
                Collector::new(std::path::PathBuf::from("/")),
                Arc::new(NoProbe),
                status.clone(),
                rx,
            ));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let m = status.snapshot().metrics;
                if m.sent_points + m.rejected_points >= 7 && m.backlog_points == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = tx.send(true);
            let _ = task.await;
            status.snapshot().metrics
        });
        assert_eq!(
            (got.sent_points, got.rejected_points),
            (6, 1),
            "metrics status {got:?}"
        );
    }
}
