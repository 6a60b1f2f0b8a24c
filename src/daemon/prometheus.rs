//! The daemon's figures in Prometheus text exposition format 0.0.4, for the optional
//! `status.prometheus_listen` endpoint (and `metrics` on the status socket).
//!
//! The same figures the agent sends to CloudWatch ([`crate::telemetry::metrics`]), under
//! Prometheus naming conventions: a `hybrid_agent_` prefix, base units in the name (`_seconds`,
//! `_bytes`), `_total` on counters, times as Unix timestamps (`_timestamp_seconds`) beside the
//! CloudWatch-style "seconds until". CloudWatch's `Component` dimension becomes a `subsystem`
//! label for the agent's own subsystems and a `component` label for containerd and kubelet.
//! Host-wide figures (CPU, memory, disk and network utilisation) are left out: a Prometheus site
//! has node_exporter for them, and utilisation percentages need a sampling window Prometheus
//! computes itself from counters. The agent's own CPU is a counter here
//! (`process_cpu_seconds_total`) for the same reason. Rendering is a pure function of a
//! [`DaemonState`] so it is tested beside the code.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::state::DaemonState;
use crate::supervise::ComponentState;

/// Content type of the text exposition format, version 0.0.4 (Prometheus docs, "Exposition
/// formats").
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Every metric name starts with this.
pub const PREFIX: &str = "hybrid_agent_";

/// The agent's own process: resident memory in bytes and CPU seconds (user + system).
pub type ProcessUsage = Option<(u64, f64)>;

/// Renders `state` as of `now`, with the agent process's usage.
pub fn render(state: &DaemonState, now: SystemTime, process: ProcessUsage) -> String {
    let mut x = Exposition::default();
    x.family(
        "build_info",
        Kind::Gauge,
        "The agent's version; always 1.",
        vec![Sample::new(1.0).label("version", env!("CARGO_PKG_VERSION"))],
    );
    x.family(
        "start_time_seconds",
        Kind::Gauge,
        "When the daemon started, in seconds since the Unix epoch.",
        vec![Sample::new(unix_seconds(state.started_at))],
    );
    if let Some((rss, cpu)) = process {
        x.family(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory of the agent process (CloudWatch: AgentMemoryRss).",
            vec![Sample::new(rss as f64)],
        );
        x.family(
            "process_cpu_seconds_total",
            Kind::Counter,
            "CPU time of the agent process, user and system (CloudWatch: AgentCpuUtilization is its rate).",
            vec![Sample::new(cpu)],
        );
    }
    subsystems(&mut x, state);
    identity(&mut x, state, now);
    presence(&mut x, state);
    lifecycle(&mut x, state);
    components(&mut x, state);
    telemetry(&mut x, state, now);
    x.out
}

/// Automatic upgrades and reboots (`[lifecycle]`).
fn lifecycle(x: &mut Exposition, state: &DaemonState) {
    let Some(l) = &state.lifecycle else { return };
    x.family(
        "lifecycle_upgrades_total",
        Kind::Counter,
        "Automatic upgrades by outcome (a failed one was rolled back: the node runs its old version, uncordoned).",
        vec![
            Sample::new(l.upgrades_succeeded as f64).label("result", "succeeded"),
            Sample::new(l.upgrades_failed as f64).label("result", "failed"),
        ],
    );
    x.family(
        "lifecycle_reboots_total",
        Kind::Counter,
        "Automatic reboots by outcome.",
        vec![
            Sample::new(l.reboots as f64).label("result", "succeeded"),
            Sample::new(l.reboots_failed as f64).label("result", "failed"),
        ],
    );
    x.family(
        "lifecycle_refreshes_total",
        Kind::Counter,
        "Node refreshes (max_node_age) by outcome.",
        vec![
            Sample::new(l.refreshes as f64).label("result", "succeeded"),
            Sample::new(l.refreshes_failed as f64).label("result", "failed"),
        ],
    );
    x.family(
        "lifecycle_last_upgrade_failed",
        Kind::Gauge,
        "1 when the last automatic upgrade failed (status and doctor say why), else 0.",
        vec![Sample::new(flag(l.last.as_ref().is_some_and(|u| !u.ok)))],
    );
}

fn subsystems(x: &mut Exposition, state: &DaemonState) {
    let up = state
        .subsystems
        .iter()
        .map(|s| Sample::new(flag(s.up())).label("subsystem", s.name.as_str()))
        .collect();
    x.family(
        "subsystem_up",
        Kind::Gauge,
        "1 while the daemon's subsystem is running or starting, 0 while degraded or failed (CloudWatch: SubsystemUp).",
        up,
    );
    let restarts = state
        .subsystems
        .iter()
        .map(|s| Sample::new(s.restarts as f64).label("subsystem", s.name.as_str()))
        .collect();
    x.family(
        "subsystem_restarts_total",
        Kind::Counter,
        "Restarts of the daemon's subsystem since the daemon started (CloudWatch: SubsystemRestarts).",
        restarts,
    );
}

fn identity(x: &mut Exposition, state: &DaemonState, now: SystemTime) {
    let Some(id) = &state.identity else { return };
    x.family(
        "identity_info",
        Kind::Gauge,
        "The node's AWS identity (SSM managed instance id or IAM Roles Anywhere node); always 1.",
        vec![
            Sample::new(1.0)
                .label("provider", &id.provider.to_string())
                .label("identity", &id.identity),
        ],
    );
    if let Some(exp) = id.expiration {
        x.family(
            "credentials_expiry_timestamp_seconds",
            Kind::Gauge,
            "When the node's current AWS credentials expire, in seconds since the Unix epoch.",
            vec![Sample::new(unix_seconds(exp))],
        );
        let left = match exp.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        x.family(
            "credentials_seconds_to_expiry",
            Kind::Gauge,
            "Seconds until the current credentials expire, negative once expired (CloudWatch: CredentialSecondsToExpiry).",
            vec![Sample::new(left)],
        );
    }
    x.family(
        "credential_refreshes_total",
        Kind::Counter,
        "Successful credential refreshes since the daemon started.",
        vec![Sample::new(id.refreshes as f64)],
    );
    x.family(
        "credential_refresh_consecutive_failures",
        Kind::Gauge,
        "Failed credential refreshes since the last success.",
        vec![Sample::new(f64::from(id.consecutive_failures))],
    );
}

/// SSM presence pings (SSM hybrid-activation nodes only).
fn presence(x: &mut Exposition, state: &DaemonState) {
    let Some(p) = &state.ssm_presence else { return };
    if let Some(t) = p.last_ping {
        x.family(
            "ssm_presence_last_ping_timestamp_seconds",
            Kind::Gauge,
            "When SSM last accepted the node's UpdateInstanceInformation ping (what keeps it Online), in seconds since the Unix epoch.",
            vec![Sample::new(unix_seconds(t))],
        );
    }
    x.family(
        "ssm_presence_pings_total",
        Kind::Counter,
        "UpdateInstanceInformation pings SSM accepted since the daemon started.",
        vec![Sample::new(p.pings as f64)],
    );
    x.family(
        "ssm_presence_consecutive_failures",
        Kind::Gauge,
        "Failed UpdateInstanceInformation pings since the last accepted one.",
        vec![Sample::new(f64::from(p.consecutive_failures))],
    );
}

fn components(x: &mut Exposition, state: &DaemonState) {
    let Some(sup) = &state.supervision else {
        return;
    };
    let up = sup
        .components
        .iter()
        .map(|c| {
            Sample::new(flag(c.state == ComponentState::Healthy))
                .label("component", c.name.as_str())
        })
        .collect();
    x.family(
        "component_up",
        Kind::Gauge,
        "1 while the supervised component's last probe succeeded (CloudWatch: ComponentUp).",
        up,
    );
    let restarts = sup
        .components
        .iter()
        .map(|c| Sample::new(f64::from(c.restarts)).label("component", c.name.as_str()))
        .collect();
    x.family(
        "component_restarts_total",
        Kind::Counter,
        "Restarts of the supervised component (CloudWatch: ComponentRestarts).",
        restarts,
    );
}

fn telemetry(x: &mut Exposition, state: &DaemonState, now: SystemTime) {
    let Some(t) = &state.telemetry else { return };
    let c = &t.counters;
    let now_ms = i64::try_from(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(i64::MAX);
    let one = |v: f64| vec![Sample::new(v)];
    x.family(
        "spool_bytes",
        Kind::Gauge,
        "Bytes held in the log spools (CloudWatch: SpoolBytes).",
        one(t.spool_bytes as f64),
    );
    x.family(
        "spool_max_bytes",
        Kind::Gauge,
        "Size cap of the spool (spool.max_bytes).",
        one(t.spool_max_bytes as f64),
    );
    x.family(
        "spool_oldest_record_age_seconds",
        Kind::Gauge,
        "Age of the oldest spooled record, 0 when empty (CloudWatch: SpoolOldestRecordAge).",
        one(t
            .spool_oldest_ms
            .map(|o| (now_ms - o).max(0) as f64 / 1000.0)
            .unwrap_or(0.0)),
    );
    x.family(
        "spool_paused",
        Kind::Gauge,
        "1 while log sources are paused because the spool is full (CloudWatch: SpoolPaused).",
        one(flag(c.spool_paused)),
    );
    x.family(
        "spool_pauses_total",
        Kind::Counter,
        "Times the spool filled up and sources paused, since the node joined (CloudWatch: SpoolPauses).",
        one(c.spool_pauses as f64),
    );
    x.family(
        "log_events_shipped_total",
        Kind::Counter,
        "Log events CloudWatch Logs accepted, since the node joined (CloudWatch: LogEventsShipped).",
        one(c.shipped as f64),
    );
    x.family(
        "log_events_rejected_total",
        Kind::Counter,
        "Log events CloudWatch Logs refused, since the node joined (CloudWatch: LogEventsRejected).",
        one(c.rejected as f64),
    );
    x.family(
        "log_events_dropped_total",
        Kind::Counter,
        "Log events lost: older than 14 days, or deleted by journald before they were read (CloudWatch: LogEventsDropped).",
        one(c.dropped_too_old.saturating_add(c.journal_missed_entries) as f64),
    );
    x.family(
        "log_put_retries_total",
        Kind::Counter,
        "Failed PutLogEvents attempts that were retried, since the node joined.",
        one(c.retries as f64),
    );
    x.family(
        "log_put_rate_share",
        Kind::Gauge,
        "Share of its pacing rate PutLogEvents may use now: below 1 during the slow start after an outage, 1 otherwise.",
        one(c
            .slow_start
            .as_ref()
            .and_then(|s| s.share_at(now_ms))
            .unwrap_or(1.0)),
    );
    x.family(
        "metric_points_sent_total",
        Kind::Counter,
        "Metric data points CloudWatch accepted, since the node joined.",
        one(t.metrics.sent_points as f64),
    );
    x.family(
        "metric_points_backlog",
        Kind::Gauge,
        "Metric data points waiting on disk to be sent (an estimate).",
        one(t.metrics.backlog_points as f64),
    );
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

struct Sample {
    labels: Vec<(&'static str, String)>,
    value: f64,
}

impl Sample {
    fn new(value: f64) -> Sample {
        Sample {
            labels: Vec::new(),
            value,
        }
    }

    fn label(mut self, name: &'static str, value: &str) -> Sample {
        self.labels.push((name, value.to_string()));
        self
    }
}

#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    /// One family: HELP, TYPE and its samples; nothing when it has none.
    fn family(&mut self, name: &str, kind: Kind, help: &str, samples: Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {PREFIX}{name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {PREFIX}{name} {kind}");
        for s in samples {
            let _ = write!(self.out, "{PREFIX}{name}");
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(self.out, " {}", value(s.value));
        }
    }
}

/// Label values escape backslash, double quote and line feed (exposition format 0.0.4).
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's float syntax as Prometheus parses it: `NaN`, `+Inf`, `-Inf`, else a decimal (Rust's
/// `Display` for f64 never uses an exponent and prints whole numbers without a fraction).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::identity::rotation::IdentityStatus;
    use crate::identity::store::ProviderKind;
    use crate::state::{Subsystem, SubsystemState, SubsystemStatus};

    fn state() -> DaemonState {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = DaemonState::new(t0);
        let mut identity = SubsystemStatus::new(Subsystem::Identity, t0);
        identity.state = SubsystemState::Running;
        let mut telemetry = SubsystemStatus::new(Subsystem::Telemetry, t0);
        telemetry.state = SubsystemState::Degraded;
        telemetry.restarts = 3;
        s.subsystems = vec![identity, telemetry];
        s.identity = Some(IdentityStatus {
            provider: ProviderKind::Ssm,
            identity: "mi-0123\"odd\\name\n".into(),
            state: "ok".into(),
            expiration: Some(t0 + Duration::from_secs(3600)),
            last_refresh: Some(t0),
            next_refresh: None,
            last_error: None,
            consecutive_failures: 0,
            failing_since: None,
            refreshes: 2,
            key_id: None,
            key_rotation_error: None,
        });
        s.telemetry = Some(crate::telemetry::TelemetryStatus {
            spool_bytes: 4096,
            ..Default::default()
        });
        let mut presence = crate::identity::presence::PresenceStatus::resuming(
            "mi-0123456789abcdef0",
            Duration::from_secs(300),
            None,
        );
        presence.last_ping = Some(t0 + Duration::from_secs(590));
        presence.pings = 2;
        s.ssm_presence = Some(presence);
        s.lifecycle = Some(crate::state::LifecycleStatus {
            auto_upgrade: true,
            upgrades_succeeded: 3,
            upgrades_failed: 1,
            last: Some(crate::state::LastUpgrade {
                from: "1.31.2".into(),
                to: "1.31.3".into(),
                finished: 1_700_000_000,
                ok: false,
                error: "kubelet did not become healthy".into(),
            }),
            ..Default::default()
        });
        s
    }

    #[test]
    fn families_are_well_formed_and_carry_the_figures() {
        let s = state();
        let now = s.started_at + Duration::from_secs(600);
        let text = render(&s, now, Some((1_048_576, 1.25)));
        let mut typed = std::collections::BTreeSet::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or("").to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split(' ');
                let name = w.next().unwrap_or("").to_string();
                let kind = w.next().unwrap_or("");
                assert!(kind == "gauge" || kind == "counter", "{line}");
                assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
                typed.insert(name);
                continue;
            }
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            assert!(name.starts_with(PREFIX), "{line}");
            assert!(typed.contains(&name), "sample before its TYPE: {line}");
            let v = line.rsplit(' ').next().unwrap_or("");
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(typed, helped);
        assert!(
            text.contains("hybrid_agent_subsystem_restarts_total{subsystem=\"telemetry\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("hybrid_agent_subsystem_up{subsystem=\"telemetry\"} 0\n"));
        assert!(text.contains("hybrid_agent_subsystem_up{subsystem=\"identity\"} 1\n"));
        assert!(text.contains("hybrid_agent_lifecycle_upgrades_total{result=\"failed\"} 1\n"));
        assert!(text.contains("hybrid_agent_lifecycle_upgrades_total{result=\"succeeded\"} 3\n"));
        assert!(text.contains("hybrid_agent_lifecycle_last_upgrade_failed 1\n"));
        assert!(text.contains("hybrid_agent_credentials_seconds_to_expiry 3000\n"));
        assert!(text.contains("hybrid_agent_credentials_expiry_timestamp_seconds 1700003600\n"));
        assert!(
            text.contains("identity=\"mi-0123\\\"odd\\\\name\\n\""),
            "{text}"
        );
        assert!(text.contains("hybrid_agent_spool_bytes 4096\n"));
        assert!(
            text.contains("hybrid_agent_ssm_presence_last_ping_timestamp_seconds 1700000590\n")
        );
        assert!(text.contains("hybrid_agent_ssm_presence_pings_total 2\n"));
        assert!(text.contains("hybrid_agent_process_resident_memory_bytes 1048576\n"));
        assert!(text.contains("hybrid_agent_process_cpu_seconds_total 1.25\n"));
        // No supervision section: no component families at all.
        assert!(!text.contains("component_up"));
    }

    #[test]
    fn special_values_use_go_syntax() {
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(-2.5), "-2.5");
        assert_eq!(value(1e21), "1000000000000000000000");
    }
}
