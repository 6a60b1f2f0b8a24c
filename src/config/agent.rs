//! The agent's own settings: `/etc/hybrid-agent/config.toml` (optional; defaults otherwise).
//!
//! The file is for what nodeadm's NodeConfig has no words for: where credentials are written,
//! which supervisor backend runs kubelet and containerd, how much telemetry may be spooled while
//! offline, where logs and metrics go, proxy and CA settings, and endpoint overrides. Every key is
//! optional; `examples/config.toml` documents them all with their defaults and is loaded by the
//! tests, so it cannot go stale.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SourceFile;
use super::endpoints::{ENDPOINT_SCHEMES, Endpoints, Service, check_plain_http, plain_http_hint};
use super::env::Env;
use super::problem::{Problem, Problems};
use super::types::{SafeUrl, parse_duration, serialize_duration, serialize_opt_duration};
use crate::paths::HostPaths;

/// Credentials profile written by default; kubelet's exec plugin reads `default` (nodeadm).
pub const DEFAULT_CREDENTIALS_PROFILE: &str = "default";
/// Cap on the credential-refresh retry backoff. nodeadm caps it at 60 s; ssm-agent's uncapped
/// backoff grew to hours (ssm-agent#468; docs/protocols.md "Lessons from amazon-ssm-agent").
pub const DEFAULT_REFRESH_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Shortest allowed backoff cap: below a second the agent would hammer a failing endpoint. Ours.
/// Longest wait between restarts of a failed daemon subsystem: long enough not to spin on a
/// persistent fault, short enough that a subsystem comes back within a minute of its cause
/// going away (a full disk emptied).
pub const DEFAULT_SUBSYSTEM_RESTART_CAP: Duration = Duration::from_secs(60);
/// How long a subsystem may stay degraded before the daemon stops feeding systemd's watchdog.
/// Ten minutes is ten restarts at the cap: a fault that outlives them is not going away in this
/// process, and credentials (the shortest deadline on the node, 1 h for SSM) still have most of
/// their life left when systemd restarts the agent.
pub const DEFAULT_SUBSYSTEM_DOWN_LIMIT: Duration = Duration::from_secs(600);
/// Default spread of a daemon's first calls after it starts (`daemon.startup_jitter`): a site
/// whose power comes back starts every agent in the same second; spread uniformly over 30 s,
/// 10,000 agents make about 330 calls a second instead of 10,000 in one. Short enough that a
/// node whose credentials expired while it was off waits little longer than its boot. Ours.
pub const DEFAULT_STARTUP_SPREAD: Duration = Duration::from_secs(30);
/// `daemon.subsystem_restart_cap` bounds: at least the first restart delay, at most an hour.
pub const MIN_SUBSYSTEM_RESTART_CAP: Duration = Duration::from_secs(1);
pub const MAX_SUBSYSTEM_RESTART_CAP: Duration = Duration::from_secs(3_600);
/// `daemon.subsystem_down_limit` bounds: at least a few restarts, at most a day (beyond that a
/// dead subsystem would never be escalated in practice).
pub const MIN_SUBSYSTEM_DOWN_LIMIT: Duration = Duration::from_secs(2);
pub const MAX_SUBSYSTEM_DOWN_LIMIT: Duration = Duration::from_secs(86_400);
/// `daemon.startup_jitter` bound: a node that needs credentials must not wait longer than a
/// refresh backoff cap's worth (10 min) to start. Ours.
pub const MAX_STARTUP_JITTER: Duration = Duration::from_secs(600);
/// How often an SSM managed instance tells SSM it is alive (UpdateInstanceInformation): every
/// 5 minutes, amazon-ssm-agent's health ping (agent/health/healthcheck.go,
/// `updateHealthFrequencyMins`).
pub const DEFAULT_SSM_PRESENCE_INTERVAL: Duration = Duration::from_secs(300);
/// How often the lifecycle loop looks for work while the maintenance window is open.
pub const DEFAULT_LIFECYCLE_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// Shortest `lifecycle.check_interval` (each look may call DescribeCluster and the manifest).
pub const MIN_LIFECYCLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long an automatic drain may take (evictions held by PodDisruptionBudgets included).
pub const DEFAULT_LIFECYCLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(900);
/// Shortest `lifecycle.max_node_age`: a refresh drains the node and empties its image store.
pub const MIN_MAX_NODE_AGE: Duration = Duration::from_secs(86_400);
/// The file Debian and Ubuntu leave when a package needs a reboot.
pub const DEFAULT_REBOOT_REQUIRED_FILE: &str = "/var/run/reboot-required";
/// How long a new kubelet has to become healthy before an automatic upgrade rolls back.
pub const DEFAULT_UPGRADE_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// `daemon.ssm_presence_interval` bounds: at least a second (tests), at most an hour
/// (amazon-ssm-agent accepts `HealthFrequencyMinutes` up to 60); much past 5 minutes SSM shows
/// the node as ConnectionLost between pings.
pub const MIN_SSM_PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_SSM_PRESENCE_INTERVAL: Duration = Duration::from_secs(3_600);
pub const MIN_REFRESH_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// Longest allowed backoff cap: credentials last about an hour (docs/protocols.md
/// "RequestManagedInstanceRoleToken"), so waiting
/// longer than that between attempts guarantees expired credentials.
pub const MAX_REFRESH_BACKOFF_CAP: Duration = Duration::from_secs(3_600);
/// Shortest allowed maximum key age: rotating the SSM key more often than hourly only adds
/// load on UpdateManagedInstancePublicKey. Ours.
pub const MIN_MAX_KEY_AGE: Duration = Duration::from_secs(3_600);
/// Spool size when the file says nothing. Ours (docs/architecture.md "Telemetry").
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Smallest spool that always holds one full PutLogEvents batch: a batch is at most 1,048,576
/// bytes counting 26 per event (docs/protocols.md "CloudWatch Logs PutLogEvents"), which in
/// spool form (19 bytes plus the stream
/// key per event instead of 26) is under 2 MiB; the metrics take an eighth and the journal and
/// child-output spools share the rest. Ours, from those figures.
pub const MIN_SPOOL_MAX_BYTES: u64 = 4 * 1_048_576;
/// Default log group; `{cluster}` is replaced by the cluster name. Ours.
pub const DEFAULT_LOG_GROUP: &str = "/aws/eks-hybrid/{cluster}";
/// Default log stream; one stream per node and unit. Ours.
pub const DEFAULT_LOG_STREAM: &str = "{node}/{unit}";
/// Default CloudWatch metric namespace. Ours.
pub const DEFAULT_METRIC_NAMESPACE: &str = "HybridAgent";
/// Metric publishing interval: CloudWatch's standard resolution is one minute.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);
/// How long log events may wait in memory before a PutLogEvents call. Ours.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Units whose journal entries are shipped by default (docs/architecture.md "Telemetry").
pub const DEFAULT_UNITS: [&str; 3] = ["kubelet", "containerd", "hybrid-agent"];
/// Maximum length of a log group or stream name (CloudWatch Logs CreateLogGroup/CreateLogStream).
pub const MAX_LOG_NAME_LEN: usize = 512;
/// Maximum length of a metric namespace (CloudWatch PutMetricData `Namespace`).
pub const MAX_NAMESPACE_LEN: usize = 255;
/// Placeholders a log group or stream template may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 4] = ["cluster", "node", "unit", "region"];
/// URL schemes a proxy may use: HTTP proxies (HTTPS tunnelled with CONNECT), the only kind the
/// AWS SDK's HTTP client can go through.
pub const PROXY_SCHEMES: &[&str] = &["http", "https"];
/// URL schemes the artifact mirror may use.
pub const MIRROR_SCHEMES: &[&str] = &["https", "http"];

// ---------------------------------------------------------------------------------------------
// The file as written. Every field is optional so that a bad value can be dropped and the rest
// still checked (see `tolerant`).

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentConfigFile {
    credentials: Option<CredentialsSection>,
    supervisor: Option<SupervisorSection>,
    spool: Option<SpoolSection>,
    telemetry: Option<TelemetrySection>,
    artifacts: Option<ArtifactsSection>,
    network: Option<NetworkSection>,
    endpoints: Option<EndpointsSection>,
    daemon: Option<DaemonSection>,
    status: Option<StatusSection>,
    lifecycle: Option<LifecycleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleSection {
    auto_upgrade: Option<bool>,
    maintenance_window: Option<String>,
    max_unavailable: Option<u32>,
    check_interval: Option<String>,
    drain_timeout: Option<String>,
    upgrade_wait_timeout: Option<String>,
    auto_reboot: Option<bool>,
    reboot_required_file: Option<String>,
    reboot_check_command: Option<Vec<String>>,
    reboot_command: Option<Vec<String>>,
    max_node_age: Option<String>,
    refresh_reboot: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusSection {
    prometheus_listen: Option<String>,
    prometheus_allow_remote: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    subsystem_restart_cap: Option<String>,
    subsystem_down_limit: Option<String>,
    startup_jitter: Option<String>,
    ssm_presence_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsSection {
    file: Option<String>,
    profile: Option<String>,
    refresh_backoff_cap: Option<String>,
    max_key_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SupervisorSection {
    backend: Option<SupervisorBackend>,
    on_agent_stop: Option<OnAgentStop>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoolSection {
    dir: Option<String>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetrySection {
    log_group: Option<String>,
    log_stream: Option<String>,
    metric_namespace: Option<String>,
    metrics_interval: Option<String>,
    flush_interval: Option<String>,
    units: Option<Vec<String>>,
    min_priority: Option<Priority>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactsSection {
    mirror_url: Option<String>,
    allow_insecure_mirror: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    proxy: Option<String>,
    no_proxy: Option<Vec<String>>,
    ca_bundle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsSection {
    ssm: Option<String>,
    logs: Option<String>,
    cloudwatch: Option<String>,
    eks: Option<String>,
    sts: Option<String>,
    rolesanywhere: Option<String>,
    ecr: Option<String>,
    /// Accept plain-HTTP overrides off loopback (a trusted test network only).
    allow_insecure_endpoints: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The validated settings.

/// How kubelet and containerd are supervised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SupervisorBackend {
    /// systemd when PID 1 is systemd, else the built-in process supervisor.
    #[default]
    Auto,
    /// systemd units over D-Bus.
    Systemd,
    /// Child processes of the agent (for boxes and tests without systemd).
    Process,
}

/// journald/syslog priority; entries at this priority or more severe are shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// 0
    Emerg,
    /// 1
    Alert,
    /// 2
    Crit,
    /// 3
    #[serde(alias = "error")]
    Err,
    /// 4
    #[serde(alias = "warn")]
    Warning,
    /// 5
    Notice,
    /// 6
    #[default]
    Info,
    /// 7
    Debug,
}

impl Priority {
    /// The numeric syslog priority (`PRIORITY=` in the journal).
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// Where and how refreshed credentials are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialsConfig {
    /// Shared credentials file (resolved under `--root`).
    pub file: PathBuf,
    /// Profile section written in it.
    pub profile: String,
    /// Cap on the retry backoff after a failed refresh.
    #[serde(serialize_with = "serialize_duration")]
    pub refresh_backoff_cap: Duration,
    /// Rotate the SSM key pair after this age even if SSM does not ask (None: only when asked).
    #[serde(serialize_with = "serialize_opt_duration")]
    pub max_key_age: Option<Duration>,
}

/// What becomes of containerd and kubelet when the agent stops (`systemctl stop hybrid-agent`,
/// SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAgentStop {
    /// They keep running: systemd units are independent of the agent anyway, and the built-in
    /// backend's children are adopted by the next agent — an agent upgrade or crash does not
    /// take the node's workloads down.
    #[default]
    LeaveRunning,
    /// They are stopped with the agent, kubelet first (built-in backend: SIGTERM, then SIGKILL
    /// after the stop timeout; systemd: StopUnit).
    Stop,
}

/// How the daemon keeps its own subsystems (credential rotation, supervision, telemetry) alive;
/// the daemon's `health` module applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    /// Longest wait between restarts of a failed subsystem.
    #[serde(serialize_with = "serialize_duration")]
    pub subsystem_restart_cap: Duration,
    /// How long a subsystem may stay down before the daemon stops feeding systemd's watchdog
    /// (so systemd restarts the agent).
    #[serde(serialize_with = "serialize_duration")]
    pub subsystem_down_limit: Duration,
    /// The daemon's first calls (credential refresh when the credentials from the previous run
    /// are no longer valid, the first PutLogEvents) wait a random time up to this, so a site
    /// that powers up at once does not call AWS in the same second; the log drain after an
    /// outage is held back by up to this too (`telemetry::pace`).
    #[serde(serialize_with = "serialize_duration")]
    pub startup_jitter: Duration,
    /// How often an SSM hybrid-activation node calls UpdateInstanceInformation, so SSM shows it
    /// Online (Fleet Manager, Session Manager, Run Command see it). Each wait is this, shortened
    /// at random by up to a fifth. IAM Roles Anywhere nodes are not SSM managed instances and
    /// never ping.
    #[serde(serialize_with = "serialize_duration")]
    pub ssm_presence_interval: Duration,
}

/// How the daemon shows its state besides its status socket (which is always served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusConfig {
    /// Address of the Prometheus text endpoint (`GET /metrics`); `None` (the default): off.
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// Accept a `prometheus_listen` address that is not loopback. Off: the figures name the
    /// node's instance and its subsystems' health, which is not for the whole network unless
    /// the operator says so (a firewall or a scraper on a management network).
    pub prometheus_allow_remote: bool,
}

/// What the daemon may do to the node by itself, one node of the cluster at a time
/// (docs/lifecycle.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleConfig {
    /// Upgrade kubelet (and containerd with it) to the latest patch the artifact manifest has
    /// for the control plane's minor version, one minor at a time, never newer than the control
    /// plane. Off by default.
    pub auto_upgrade: bool,
    /// When, in the host's time zone.
    pub maintenance_window: super::window::Window,
    /// How many nodes of the cluster may be disrupted at once (the disruption lock's slots).
    pub max_unavailable: u32,
    /// How often the daemon looks for something to do while the window is open.
    #[serde(serialize_with = "serialize_duration")]
    pub check_interval: Duration,
    /// How long a drain may take before the automatic flow gives up (and uncordons).
    #[serde(serialize_with = "serialize_duration")]
    pub drain_timeout: Duration,
    /// How long the new kubelet has to become healthy before the upgrade rolls back (and, after
    /// a reboot, before the node is reported as not back).
    #[serde(serialize_with = "serialize_duration")]
    pub upgrade_wait_timeout: Duration,
    /// Reboot the host when it asks for it ([`LifecycleConfig::reboot_required_file`] exists, or
    /// [`LifecycleConfig::reboot_check_command`] exits 0): in the window, under the lock,
    /// drained first and uncordoned once back. Off by default.
    pub auto_reboot: bool,
    /// The file a package manager leaves when a reboot is needed (Debian, Ubuntu).
    pub reboot_required_file: PathBuf,
    /// A command whose exit status 0 means "a reboot is needed" (for RHEL-like hosts, e.g.
    /// `["sh", "-c", "! needs-restarting -r"]`); checked besides the file.
    pub reboot_check_command: Option<Vec<String>>,
    /// How to reboot.
    pub reboot_command: Vec<String>,
    /// Refresh the node once it is this old (since its join or its last refresh; EKS Auto
    /// Mode replaces its nodes after 21 days): in the window, under the lock, drain, rotate the
    /// SSM key pair, restart containerd and kubelet from clean state, optionally reboot,
    /// uncordon. None (the default): never.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub max_node_age: Option<Duration>,
    /// Reboot the host as part of a refresh (with `reboot_command`).
    pub refresh_reboot: bool,
}

/// Supervisor choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupervisorConfig {
    /// Backend.
    pub backend: SupervisorBackend,
    /// What happens to the components when the agent stops.
    pub on_agent_stop: OnAgentStop,
}

/// Offline telemetry spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolConfig {
    /// Spool directory (resolved under `--root`).
    pub dir: PathBuf,
    /// Size cap in bytes, shared by the log spools (metrics keep their own eighth of it). When
    /// it is reached nothing spooled is dropped: appends are refused and the log sources pause
    /// until CloudWatch accepts the backlog (the journal reader stops reading and journald keeps
    /// the lines, unless it vacuums them meanwhile: that gap is counted as missed entries; child
    /// output backs up into the child's pipe). Each pause is counted (`spool_pauses`, the
    /// `SpoolPaused` metric) and shown by `hybrid-agent status`.
    pub max_bytes: u64,
}

/// Logs and metrics shipping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TelemetryConfig {
    /// Log group name template.
    pub log_group: String,
    /// Log stream name template.
    pub log_stream: String,
    /// CloudWatch metric namespace.
    pub metric_namespace: String,
    /// Metric publishing interval.
    #[serde(serialize_with = "serialize_duration")]
    pub metrics_interval: Duration,
    /// Longest time a log event waits before being sent.
    #[serde(serialize_with = "serialize_duration")]
    pub flush_interval: Duration,
    /// Units (or syslog identifiers) whose journal entries are shipped.
    pub units: Vec<String>,
    /// Least severe priority shipped.
    pub min_priority: Priority,
}

/// Artifact download settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactsConfig {
    /// Mirror serving the artifact manifest and files instead of the public locations.
    pub mirror_url: Option<SafeUrl>,
    /// Let the daemon's automatic upgrades fetch from a plain-http mirror (what
    /// `--allow-insecure-mirror` does for a command); every artifact is still checked against
    /// the manifest's checksums.
    pub allow_insecure_mirror: bool,
}

/// Outbound network settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// HTTP(S) proxy for every AWS and artifact request.
    pub proxy: Option<SafeUrl>,
    /// Hosts reached directly, bypassing the proxy.
    pub no_proxy: Vec<String>,
    /// Extra PEM CA bundle trusted in addition to the system roots (resolved under `--root`).
    pub ca_bundle: Option<PathBuf>,
}

/// The validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    /// Credentials file settings.
    pub credentials: CredentialsConfig,
    /// Supervisor settings.
    pub supervisor: SupervisorConfig,
    /// Spool settings.
    pub spool: SpoolConfig,
    /// Telemetry settings.
    pub telemetry: TelemetryConfig,
    /// Artifact settings.
    pub artifacts: ArtifactsConfig,
    /// Network settings.
    pub network: NetworkConfig,
    /// Endpoint overrides after applying the environment.
    pub endpoints: Endpoints,
    /// The daemon's own subsystems.
    pub daemon: DaemonConfig,
    /// The Prometheus endpoint.
    pub status: StatusConfig,
    /// Automatic upgrades and the maintenance window.
    pub lifecycle: LifecycleConfig,
}

impl AgentConfig {
    /// The configuration with no file and no environment overrides.
    pub fn defaults(paths: &HostPaths) -> Self {
        Self {
            credentials: CredentialsConfig {
                file: paths.aws_credentials(),
                profile: DEFAULT_CREDENTIALS_PROFILE.to_owned(),
                refresh_backoff_cap: DEFAULT_REFRESH_BACKOFF_CAP,
                max_key_age: None,
            },
            supervisor: SupervisorConfig {
                backend: SupervisorBackend::Auto,
                on_agent_stop: OnAgentStop::LeaveRunning,
            },
            spool: SpoolConfig {
                dir: paths.spool_dir(),
                max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            },
            telemetry: TelemetryConfig {
                log_group: DEFAULT_LOG_GROUP.to_owned(),
                log_stream: DEFAULT_LOG_STREAM.to_owned(),
                metric_namespace: DEFAULT_METRIC_NAMESPACE.to_owned(),
                metrics_interval: DEFAULT_METRICS_INTERVAL,
                flush_interval: DEFAULT_FLUSH_INTERVAL,
                units: DEFAULT_UNITS.iter().map(|u| (*u).to_owned()).collect(),
                min_priority: Priority::Info,
            },
            artifacts: ArtifactsConfig {
                mirror_url: None,
                allow_insecure_mirror: false,
            },
            network: NetworkConfig {
                proxy: None,
                no_proxy: Vec::new(),
                ca_bundle: None,
            },
            endpoints: Endpoints::default(),
            daemon: DaemonConfig {
                subsystem_restart_cap: DEFAULT_SUBSYSTEM_RESTART_CAP,
                subsystem_down_limit: DEFAULT_SUBSYSTEM_DOWN_LIMIT,
                startup_jitter: DEFAULT_STARTUP_SPREAD,
                ssm_presence_interval: DEFAULT_SSM_PRESENCE_INTERVAL,
            },
            status: StatusConfig {
                prometheus_listen: None,
                prometheus_allow_remote: false,
            },
            lifecycle: LifecycleConfig {
                auto_upgrade: false,
                maintenance_window: super::window::Window::ALWAYS,
                max_unavailable: 1,
                check_interval: DEFAULT_LIFECYCLE_CHECK_INTERVAL,
                drain_timeout: DEFAULT_LIFECYCLE_DRAIN_TIMEOUT,
                upgrade_wait_timeout: DEFAULT_UPGRADE_WAIT_TIMEOUT,
                auto_reboot: false,
                reboot_required_file: paths.resolve(DEFAULT_REBOOT_REQUIRED_FILE),
                reboot_check_command: None,
                reboot_command: vec!["systemctl".to_owned(), "reboot".to_owned()],
                max_node_age: None,
                refresh_reboot: false,
            },
        }
    }
}

/// Validates the parsed file (or `None` for no file) into [`AgentConfig`], adding every problem
/// to `problems`. Fields already reported by the parser are skipped so they are not reported
/// twice.
pub(crate) fn resolve(
    file: Option<(&AgentConfigFile, &SourceFile<'_>)>,
    paths: &HostPaths,
    env: &Env,
    problems: &mut Problems,
) -> AgentConfig {
    let mut config = AgentConfig::defaults(paths);
    let mut file_endpoints = BTreeMap::new();
    let allow_insecure = file
        .and_then(|(raw, _)| raw.endpoints.as_ref())
        .and_then(|e| e.allow_insecure_endpoints)
        .unwrap_or(false);
    if let Some((raw, source)) = file {
        let mut check = Check {
            source,
            problems,
            paths,
        };
        check.credentials(raw.credentials.as_ref(), &mut config.credentials);
        if let Some(backend) = raw.supervisor.as_ref().and_then(|s| s.backend) {
            config.supervisor.backend = backend;
        }
        if let Some(action) = raw.supervisor.as_ref().and_then(|s| s.on_agent_stop) {
            config.supervisor.on_agent_stop = action;
        }
        check.spool(raw.spool.as_ref(), &mut config.spool);
        check.daemon(raw.daemon.as_ref(), &mut config.daemon);
        check.status(raw.status.as_ref(), &mut config.status);
        check.lifecycle(raw.lifecycle.as_ref(), &mut config.lifecycle);
        check.telemetry(raw.telemetry.as_ref(), &mut config.telemetry);
        if let Some(url) = raw.artifacts.as_ref().and_then(|a| a.mirror_url.as_deref()) {
            config.artifacts.mirror_url = check.url("artifacts.mirror_url", url, MIRROR_SCHEMES);
        }
        config.artifacts.allow_insecure_mirror = raw
            .artifacts
            .as_ref()
            .and_then(|a| a.allow_insecure_mirror)
            .unwrap_or(false);
        check.network(raw.network.as_ref(), &mut config.network);
        if let Some(e) = &raw.endpoints {
            for (service, value) in [
                (Service::Ssm, &e.ssm),
                (Service::Logs, &e.logs),
                (Service::Cloudwatch, &e.cloudwatch),
                (Service::Eks, &e.eks),
                (Service::Sts, &e.sts),
                (Service::Rolesanywhere, &e.rolesanywhere),
                (Service::Ecr, &e.ecr),
            ] {
                if let Some(value) = value {
                    let field = format!("endpoints.{}", service.config_key());
                    if let Some(url) = check.url(&field, value, ENDPOINT_SCHEMES) {
                        match check_plain_http(&url, allow_insecure) {
                            Ok(()) => {
                                file_endpoints.insert(service, url);
                            }
                            Err(message) => check.report(&field, message, plain_http_hint()),
                        }
                    }
                }
            }
        }
    }
    match Endpoints::resolve(&file_endpoints, env, allow_insecure) {
        Ok(endpoints) => config.endpoints = endpoints,
        Err(env_problems) => problems.extend(env_problems),
    }
    config
}

struct Check<'a, 'p> {
    source: &'a SourceFile<'a>,
    problems: &'p mut Problems,
    paths: &'a HostPaths,
}

impl Check<'_, '_> {
    fn report(&mut self, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        if self.problems.mentions(field) {
            return;
        }
        let problem = Problem::new(self.source.location(field), field, message).hint(hint);
        self.problems.push(problem);
    }

    fn duration(
        &mut self,
        field: &str,
        value: &str,
        min: Duration,
        max: Option<Duration>,
    ) -> Option<Duration> {
        let d = match parse_duration(value) {
            Ok(d) => d,
            Err(message) => {
                self.report(
                    field,
                    message,
                    "write a number and a unit, e.g. \"60s\", \"5m\" or \"30d\"",
                );
                return None;
            }
        };
        let too_long = max.is_some_and(|max| d > max);
        if d < min || too_long {
            let range = match max {
                Some(max) => format!(
                    "between {} and {}",
                    super::types::format_duration(min),
                    super::types::format_duration(max)
                ),
                None => format!("at least {}", super::types::format_duration(min)),
            };
            self.report(
                field,
                format!("`{value}` is out of range"),
                format!("use a value {range}"),
            );
            return None;
        }
        Some(d)
    }

    /// A command line given as a list: a program first.
    fn command(&mut self, field: &str, cmd: &[String]) -> bool {
        if cmd.first().is_none_or(|c| c.trim().is_empty()) {
            self.report(
                field,
                "the command is empty".to_owned(),
                "write the program and its arguments as a list, e.g. [\"systemctl\", \"reboot\"]",
            );
            return false;
        }
        true
    }

    fn host_path(&mut self, field: &str, value: &str) -> Option<PathBuf> {
        if !value.starts_with('/') {
            self.report(
                field,
                format!("`{value}` is not an absolute path"),
                "write the absolute path on the host, e.g. /var/lib/…; it is resolved under --root",
            );
            return None;
        }
        Some(self.paths.resolve(value))
    }

    fn url(&mut self, field: &str, value: &str, schemes: &[&str]) -> Option<SafeUrl> {
        match SafeUrl::parse(value, schemes) {
            Ok(url) => Some(url),
            Err(message) => {
                self.report(
                    field,
                    message,
                    format!(
                        "write a full URL such as {}://host:port",
                        schemes.first().copied().unwrap_or("https")
                    ),
                );
                None
            }
        }
    }

    fn credentials(&mut self, raw: Option<&CredentialsSection>, out: &mut CredentialsConfig) {
        let Some(raw) = raw else { return };
        if let Some(file) = &raw.file
            && let Some(path) = self.host_path("credentials.file", file)
        {
            out.file = path;
        }
        if let Some(profile) = &raw.profile {
            let valid = !profile.is_empty()
                && profile.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+' | '@')
                });
            if valid {
                out.profile = profile.clone();
            } else {
                self.report(
                    "credentials.profile",
                    format!("`{profile}` is not a usable profile name"),
                    "use letters, digits and - _ . (no spaces or brackets), e.g. \"default\"",
                );
            }
        }
        if let Some(cap) = &raw.refresh_backoff_cap
            && let Some(d) = self.duration(
                "credentials.refresh_backoff_cap",
                cap,
                MIN_REFRESH_BACKOFF_CAP,
                Some(MAX_REFRESH_BACKOFF_CAP),
            )
        {
            out.refresh_backoff_cap = d;
        }
        if let Some(age) = &raw.max_key_age {
            out.max_key_age = self.duration("credentials.max_key_age", age, MIN_MAX_KEY_AGE, None);
        }
    }

    fn daemon(&mut self, raw: Option<&DaemonSection>, out: &mut DaemonConfig) {
        let Some(raw) = raw else { return };
        if let Some(cap) = &raw.subsystem_restart_cap
            && let Some(d) = self.duration(
                "daemon.subsystem_restart_cap",
                cap,
                MIN_SUBSYSTEM_RESTART_CAP,
                Some(MAX_SUBSYSTEM_RESTART_CAP),
            )
        {
            out.subsystem_restart_cap = d;
        }
        if let Some(limit) = &raw.subsystem_down_limit
            && let Some(d) = self.duration(
                "daemon.subsystem_down_limit",
                limit,
                MIN_SUBSYSTEM_DOWN_LIMIT,
                Some(MAX_SUBSYSTEM_DOWN_LIMIT),
            )
        {
            out.subsystem_down_limit = d;
        }
        if let Some(j) = &raw.startup_jitter
            && let Some(d) = self.duration(
                "daemon.startup_jitter",
                j,
                Duration::ZERO,
                Some(MAX_STARTUP_JITTER),
            )
        {
            out.startup_jitter = d;
        }
        if let Some(i) = &raw.ssm_presence_interval
            && let Some(d) = self.duration(
                "daemon.ssm_presence_interval",
                i,
                MIN_SSM_PRESENCE_INTERVAL,
                Some(MAX_SSM_PRESENCE_INTERVAL),
            )
        {
            out.ssm_presence_interval = d;
        }
    }

    fn lifecycle(&mut self, raw: Option<&LifecycleSection>, out: &mut LifecycleConfig) {
        let Some(raw) = raw else { return };
        out.auto_upgrade = raw.auto_upgrade.unwrap_or(false);
        out.auto_reboot = raw.auto_reboot.unwrap_or(false);
        out.refresh_reboot = raw.refresh_reboot.unwrap_or(false);
        if let Some(v) = &raw.max_node_age {
            out.max_node_age = self.duration(
                "lifecycle.max_node_age",
                v,
                MIN_MAX_NODE_AGE,
                Some(Duration::from_secs(366 * 86_400)),
            );
        }
        if let Some(f) = &raw.reboot_required_file
            && let Some(path) = self.host_path("lifecycle.reboot_required_file", f)
        {
            out.reboot_required_file = path;
        }
        if let Some(cmd) = &raw.reboot_check_command
            && self.command("lifecycle.reboot_check_command", cmd)
        {
            out.reboot_check_command = Some(cmd.clone());
        }
        if let Some(cmd) = &raw.reboot_command
            && self.command("lifecycle.reboot_command", cmd)
        {
            out.reboot_command = cmd.clone();
        }
        if let Some(w) = &raw.maintenance_window {
            match super::window::Window::parse(w) {
                Ok(w) => out.maintenance_window = w,
                Err(message) => self.report(
                    "lifecycle.maintenance_window",
                    message,
                    "the window is in the host's time zone; leave it out for any time",
                ),
            }
        }
        if let Some(n) = raw.max_unavailable {
            if n == 0 {
                self.report(
                    "lifecycle.max_unavailable",
                    "`0` would never let any node be disrupted".to_owned(),
                    "use 1 or more (turn auto_upgrade off to stop automatic upgrades)",
                );
            } else {
                out.max_unavailable = n;
            }
        }
        for (field, value, slot, min, max) in [
            (
                "lifecycle.check_interval",
                &raw.check_interval,
                &mut out.check_interval,
                MIN_LIFECYCLE_CHECK_INTERVAL,
                Duration::from_secs(86_400),
            ),
            (
                "lifecycle.drain_timeout",
                &raw.drain_timeout,
                &mut out.drain_timeout,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            ),
            (
                "lifecycle.upgrade_wait_timeout",
                &raw.upgrade_wait_timeout,
                &mut out.upgrade_wait_timeout,
                Duration::from_secs(1),
                Duration::from_secs(3_600),
            ),
        ] {
            if let Some(v) = value
                && let Some(d) = self.duration(field, v, min, Some(max))
            {
                *slot = d;
            }
        }
    }

    fn status(&mut self, raw: Option<&StatusSection>, out: &mut StatusConfig) {
        let Some(raw) = raw else { return };
        out.prometheus_allow_remote = raw.prometheus_allow_remote.unwrap_or(false);
        let Some(listen) = &raw.prometheus_listen else {
            return;
        };
        const FIELD: &str = "status.prometheus_listen";
        let addr = match parse_listen(listen) {
            Ok(a) => a,
            Err(message) => {
                self.report(
                    FIELD,
                    message,
                    "write an address and a port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"",
                );
                return;
            }
        };
        if !addr.ip().is_loopback() && !out.prometheus_allow_remote {
            self.report(
                FIELD,
                format!(
                    "`{listen}` is not a loopback address: the node's health figures would be served to the network"
                ),
                "listen on 127.0.0.1 (scrape through an SSH tunnel or a local agent), or set status.prometheus_allow_remote = true if the network is trusted",
            );
            return;
        }
        out.prometheus_listen = Some(addr);
    }

    fn spool(&mut self, raw: Option<&SpoolSection>, out: &mut SpoolConfig) {
        let Some(raw) = raw else { return };
        if let Some(dir) = &raw.dir
            && let Some(path) = self.host_path("spool.dir", dir)
        {
            out.dir = path;
        }
        if let Some(max) = raw.max_bytes {
            if max < MIN_SPOOL_MAX_BYTES {
                self.report(
                    "spool.max_bytes",
                    format!("{max} bytes cannot hold one PutLogEvents batch"),
                    format!("use at least {MIN_SPOOL_MAX_BYTES} (4 MiB)"),
                );
            } else {
                out.max_bytes = max;
            }
        }
    }

    fn template(&mut self, field: &str, value: &str, allowed_char: fn(char) -> bool) -> bool {
        let mut ok = true;
        if value.is_empty() || value.chars().count() > MAX_LOG_NAME_LEN {
            self.report(field, "must be 1 to 512 characters", "shorten the name");
            return false;
        }
        let mut rest = value;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                self.report(
                    field,
                    "has an unclosed `{`",
                    "close the placeholder, e.g. {cluster}",
                );
                return false;
            };
            let name = &rest[open + 1..open + close];
            if !TEMPLATE_PLACEHOLDERS.contains(&name) {
                self.report(
                    field,
                    format!("uses unknown placeholder `{{{name}}}`"),
                    "use {cluster}, {node}, {unit} or {region}",
                );
                ok = false;
            }
            if let Some(bad) = rest[..open].chars().find(|c| !allowed_char(*c)) {
                self.report(
                    field,
                    format!("contains `{bad}`, which CloudWatch Logs does not allow here"),
                    "remove the character",
                );
                ok = false;
            }
            rest = &rest[open + close + 1..];
        }
        if let Some(bad) = rest.chars().find(|c| !allowed_char(*c)) {
            self.report(
                field,
                format!("contains `{bad}`, which CloudWatch Logs does not allow here"),
                "remove the character",
            );
            ok = false;
        }
        ok
    }

    fn telemetry(&mut self, raw: Option<&TelemetrySection>, out: &mut TelemetryConfig) {
        let Some(raw) = raw else { return };
        // CloudWatch Logs log group names: [.-_/#A-Za-z0-9]; stream names: anything but ':' and '*'.
        fn group_char(c: char) -> bool {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')
        }
        fn stream_char(c: char) -> bool {
            c != ':' && c != '*' && !c.is_control()
        }
        if let Some(group) = &raw.log_group
            && self.template("telemetry.log_group", group, group_char)
        {
            out.log_group = group.clone();
        }
        if let Some(stream) = &raw.log_stream
            && self.template("telemetry.log_stream", stream, stream_char)
        {
            out.log_stream = stream.clone();
        }
        if let Some(ns) = &raw.metric_namespace {
            let printable = ns.chars().all(|c| c.is_ascii_graphic() || c == ' ');
            if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN || !printable || ns.starts_with("AWS/")
            {
                self.report(
                    "telemetry.metric_namespace",
                    format!("`{ns}` is not a usable CloudWatch namespace"),
                    "use 1 to 255 printable ASCII characters not starting with \"AWS/\"",
                );
            } else {
                out.metric_namespace = ns.clone();
            }
        }
        if let Some(v) = &raw.metrics_interval
            && let Some(d) = self.duration(
                "telemetry.metrics_interval",
                v,
                Duration::from_secs(1),
                Some(Duration::from_secs(3_600)),
            )
        {
            out.metrics_interval = d;
        }
        if let Some(v) = &raw.flush_interval
            && let Some(d) = self.duration(
                "telemetry.flush_interval",
                v,
                Duration::from_millis(100),
                Some(Duration::from_secs(300)),
            )
        {
            out.flush_interval = d;
        }
        if let Some(units) = &raw.units {
            let bad: Vec<&String> = units
                .iter()
                .filter(|u| u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()))
                .collect();
            if units.is_empty() {
                self.report(
                    "telemetry.units",
                    "is empty, so no logs would be shipped",
                    "list at least one unit, e.g. [\"kubelet\"]",
                );
            } else if !bad.is_empty() {
                self.report(
                    "telemetry.units",
                    format!("has {} invalid unit name(s)", bad.len()),
                    "use unit names without spaces, e.g. \"kubelet\" or \"kubelet.service\"",
                );
            } else {
                out.units = units.clone();
            }
        }
        if let Some(p) = raw.min_priority {
            out.min_priority = p;
        }
    }

    fn network(&mut self, raw: Option<&NetworkSection>, out: &mut NetworkConfig) {
        let Some(raw) = raw else { return };
        if let Some(proxy) = &raw.proxy {
            if proxy.trim_start().to_ascii_lowercase().starts_with("socks") {
                self.report(
                    "network.proxy",
                    "is a SOCKS proxy; the AWS SDK clients can only tunnel through an HTTP proxy (CONNECT)".to_owned(),
                    "give the HTTP proxy of your egress gateway as http://host:port (most SOCKS gateways offer one)".to_owned(),
                );
            } else {
                out.proxy = self.url("network.proxy", proxy, PROXY_SCHEMES);
            }
        }
        if let Some(no_proxy) = &raw.no_proxy {
            out.no_proxy = no_proxy.clone();
        }
        if let Some(ca) = &raw.ca_bundle {
            out.ca_bundle = self.host_path("network.ca_bundle", ca);
        }
    }
}

/// `status.prometheus_listen`: an IP literal (IPv6 in brackets) or `localhost`, and a port
/// other than 0 (Prometheus scrapes a fixed address).
fn parse_listen(value: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{Ipv4Addr, SocketAddr};
    let parsed = match value.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .map_err(|_| ()),
        None => value.parse::<SocketAddr>().map_err(|_| ()),
    };
    match parsed {
        Err(()) => Err(format!(
            "`{value}` is not an IP address and port (host names other than localhost are not resolved)"
        )),
        Ok(a) if a.port() == 0 => Err(format!(
            "`{value}` has port 0; Prometheus needs a fixed port"
        )),
        Ok(a) => Ok(a),
    }
}

/// Where the agent config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentConfigSource {
    /// `/etc/hybrid-agent/config.toml` under `--root`; a missing file means defaults.
    Default,
    /// A path the user named with `--config`; it must exist.
    Explicit(PathBuf),
}
