//! `hybrid-agent run`: one tokio runtime, one task per subsystem, graceful stop on SIGTERM.
//!
//! The subsystems are the credential rotation loop, supervision of containerd and kubelet
//! ([`crate::supervise`], when `join` left a plan), telemetry ([`crate::telemetry`], once `join`
//! recorded the node: its journal entries, the built-in supervisor's child output and host
//! metrics to CloudWatch), SSM presence ([`crate::identity::presence`]: UpdateInstanceInformation
//! pings so SSM shows the node Online; SSM hybrid-activation nodes only, IAM Roles Anywhere nodes
//! are not SSM managed instances) and the state writer that publishes their status for
//! `hybrid-agent status` ([`crate::state`]), each into its own section. AWS clients of the other
//! tasks take their credentials from the rotation loop in-process
//! ([`crate::aws::credentials::RotatingCredentials`]), never from the file. Each subsystem runs
//! under [`health::keep_running`]: one that fails or panics is restarted with capped backoff
//! and shown as degraded (status, doctor, the `SubsystemUp`/`SubsystemRestarts` metrics) while
//! the others keep the node running; one that stays down past `daemon.subsystem_down_limit`
//! stops the systemd watchdog being fed, so systemd restarts the agent. Rotation stopped by an
//! error only re-registration fixes (`MachineFingerprintDoesNotMatch`) is shown as failed with
//! the command to run, and not restarted.
//!
//! The state the loop publishes is also served live on the status socket, and, when configured,
//! to Prometheus ([`status_server`]): both answer from the subsystems' channels at the moment of
//! asking, so `status` need not wait for the file's next write.

pub mod health;
pub mod lifecycle;
pub mod prometheus;
pub mod sandbox;
pub mod status_server;
pub mod unit;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::Instrument as _;

use crate::aws::credentials::RotatingCredentials;
use crate::config::AgentConfig;
use crate::config::Service;
use crate::identity::presence::{
    FactsSource, HostFacts, Presence, PresenceApi, PresenceSettings, PresenceStatus, SsmPresence,
};
use crate::identity::rotation::{IdentityStatus, Rotator};
use crate::identity::setup::{IdentityEnv, SetupError};
use crate::join::record::NodeRecord;
use crate::paths::HostPaths;
use crate::state::{self, DaemonState, StateError};
use crate::supervise::{
    AnyBackend, BackendChoice, ComponentState, SupervisionPlan, SupervisionStatus, Supervisor,
};
use crate::telemetry::{
    self, ChildLineSender, ComponentHealth, HealthProbe, SharedChildLines, StatusCell,
    TelemetryDeps, TelemetryEndpoints, TelemetrySettings,
};
use health::{Exit, Health, HealthSettings, Subsystem};

/// How often the daemon copies telemetry's counters and per-stream figures into the state file
/// `hybrid-agent status` reads (only when they changed).
pub const TELEMETRY_STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a stopping daemon waits for telemetry to hand back (its positions are saved only
/// after CloudWatch accepted, so cutting it short repeats a batch, it never loses one).
pub const TELEMETRY_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Components stopped one after the other when `on_agent_stop = "stop"`: kubelet, then
/// containerd ([`crate::supervise::ComponentName`]).
pub const STOPPED_COMPONENTS: u64 = 2;

/// Slack for what follows the stops and has no timeout of its own: the rotation task's exit
/// and the last state write.
pub const STOP_MARGIN: Duration = Duration::from_secs(10);

/// The longest one component's stop may take, whichever backend: the built-in one waits
/// [`crate::supervise::process::DEFAULT_STOP_TIMEOUT`] after SIGTERM, then
/// [`crate::supervise::process::KILL_WAIT`] after SIGKILL; the systemd one waits for the stop job
/// up to [`crate::supervise::systemd::DEFAULT_START_TIMEOUT`].
pub const COMPONENT_STOP_WORST: Duration = {
    let builtin = crate::supervise::process::DEFAULT_STOP_TIMEOUT
        .saturating_add(crate::supervise::process::KILL_WAIT);
    let systemd = crate::supervise::systemd::DEFAULT_START_TIMEOUT;
    if builtin.as_secs() > systemd.as_secs() {
        builtin
    } else {
        systemd
    }
};

/// The longest a graceful stop of `hybrid-agent run` can take (`on_agent_stop = "stop"`, every
/// wait running to its limit): each component's worst stop, telemetry's hand-back, the margin.
/// hybrid-agent.service's `TimeoutStopSec=` is this figure, so systemd never SIGKILLs an agent
/// that is still stopping within its own limits.
pub const AGENT_STOP_TIMEOUT: Duration = COMPONENT_STOP_WORST
    .saturating_mul(STOPPED_COMPONENTS as u32)
    .saturating_add(TELEMETRY_STOP_TIMEOUT)
    .saturating_add(STOP_MARGIN);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the identity subsystem: {0}")]
    Identity(#[from] SetupError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Confined(#[from] sandbox::Confined),
}

/// `hybrid-agent run`: builds the subsystems from the joined state and the agent config, then
/// runs them until SIGTERM/SIGINT.
pub fn start(
    paths: &HostPaths,
    agent: &AgentConfig,
    global_args: Vec<std::ffi::OsString>,
) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async {
        // The handlers go in first, before anything that takes time: a SIGTERM during start-up
        // is then queued for the main loop (which says STOPPING and stops gracefully), never
        // the default action that kills the process.
        let mut signals = Signals::install()?;
        // Only a unit's sandbox can be lifted (systemd sets INVOCATION_ID for every service it
        // runs); elsewhere (a container started with no-new-privileges) the agent goes on.
        if agent.supervisor.backend == crate::config::SupervisorBackend::Process
            && std::env::var_os("INVOCATION_ID").is_some()
            && let Some(why) = sandbox::confinement()
        {
            return Err(sandbox::lift(paths, why).await.into());
        }
        let env = IdentityEnv::new(paths, agent);
        let mut rotator = env.rotator()?;
        let provider = env.load_provider()?;
        if let Some((creds, last)) = env.previous_credentials(&env.targets(provider.enable_credentials_file)) {
            tracing::info!(access_key_id = %creds.access_key_id, "credentials from the previous run are still valid; refreshing on schedule");
            rotator.seed(creds, last);
        }
        let identity_restart: IdentityFactory = {
            let (paths, agent) = (paths.clone(), agent.clone());
            Box::new(move || {
                IdentityEnv::new(&paths, &agent)
                    .rotator()
                    .map_err(|e| e.to_string())
            })
        };
        let telemetry = telemetry_input(paths, agent, &rotator);
        let presence = presence_input(paths, &env, &provider, &rotator);
        let child_output = telemetry.as_ref().and_then(|t| t.child_sender.clone());
        let supervision = supervision_factory(paths, agent, child_output);
        let lc = &agent.lifecycle;
        let lifecycle = (lc.auto_upgrade || lc.auto_reboot || lc.max_node_age.is_some()).then(|| lifecycle::LifecycleInput {
            paths: paths.clone(),
            agent: agent.clone(),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/hybrid-agent")),
            global_args,
            local_time: lifecycle::host_local_time(),
            // Set below, once the rotation loop's channels are known.
            key_rotation: None,
        });
        let subsystems = Subsystems {
            rotator,
            identity_restart,
            supervision,
            telemetry,
            presence,
            lifecycle,
            health: HealthSettings::from_config(&agent.daemon),
        };
        let shutdown = async move {
            signals.recv().await;
        };
        let serving = Serving {
            socket: Some(paths.status_socket()),
            prometheus: agent.status.prometheus_listen,
        };
        run_serving(subsystems, state::path(&paths.state_dir()), serving, shutdown).await
    }.in_current_span())
}

/// The span `hybrid-agent run` logs in: every entry carries the node's name (`NODE_NAME` in the
/// journal, [`crate::logging`]). Entered before the agent config is read, so its warnings carry
/// it too; [`start`]'s tasks stay in it.
pub fn span(paths: &HostPaths) -> tracing::Span {
    let span = tracing::info_span!("daemon", node_name = tracing::field::Empty);
    if let Some(name) = node_name(paths) {
        span.record("node_name", name.as_str());
    }
    span
}

/// The node's name for the log: the node record's, else the registered instance id (a daemon
/// started before `join` finished has no record yet).
fn node_name(paths: &HostPaths) -> Option<String> {
    if let Ok(Some(record)) = NodeRecord::load(paths) {
        return Some(record.node_name);
    }
    crate::identity::store::IdentityStore::new(&paths.state_dir())
        .load_registration()
        .ok()
        .flatten()
        .map(|r| r.instance_id)
}

/// Where [`run_serving`] serves the live state; nothing by default.
#[derive(Debug, Clone, Default)]
pub struct Serving {
    /// The status socket (`/run/hybrid-agent/status.sock` under `--root`).
    pub socket: Option<PathBuf>,
    /// The Prometheus endpoint (`status.prometheus_listen`).
    pub prometheus: Option<std::net::SocketAddr>,
}

/// Builds a successor of a rotation loop that failed (the first instance is built at start,
/// where its errors stop the daemon: without an identity there is nothing to run).
pub type IdentityFactory = Box<dyn FnMut() -> Result<Rotator, String> + Send>;

/// Starts one run of the supervisor: it publishes the supervisor's status on the sender and
/// returns when the receiver says stop (or it fails).
pub type SupervisionFactory = Box<
    dyn FnMut(
            watch::Sender<Option<SupervisionStatus>>,
            watch::Receiver<bool>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Exit> + Send>>
        + Send,
>;

/// What [`run`] keeps alive.
pub struct Subsystems {
    /// The credential rotation loop's first instance.
    pub rotator: Rotator,
    /// Its successors after a failure or panic.
    pub identity_restart: IdentityFactory,
    /// Supervision of containerd and kubelet, when `join` left a plan.
    pub supervision: Option<SupervisionFactory>,
    /// Telemetry, once `join` recorded the node.
    pub telemetry: Option<TelemetryInput>,
    /// SSM presence pings (SSM hybrid-activation nodes only).
    pub presence: Option<PresenceInput>,
    /// Automatic upgrades (`[lifecycle] auto_upgrade`).
    pub lifecycle: Option<lifecycle::LifecycleInput>,
    pub health: HealthSettings,
}

/// What the SSM presence loop is started from.
pub struct PresenceInput {
    pub settings: PresenceSettings,
    /// UpdateInstanceInformation, signed with the rotating credentials.
    pub api: Arc<dyn PresenceApi>,
    /// The host facts each ping reports.
    pub facts: FactsSource,
}

/// The presence loop of an SSM node: the private SSM client signing with the rotation loop's
/// credentials (in-process), host facts read under `--root`. IAM Roles Anywhere nodes get none:
/// they are not SSM managed instances. A setup failure is logged, not fatal: being invisible to
/// SSM does not stop the node from working.
fn presence_input(
    paths: &HostPaths,
    env: &IdentityEnv<'_>,
    provider: &crate::identity::setup::ProviderConfig,
    rotator: &Rotator,
) -> Option<PresenceInput> {
    match env.presence(provider, rotator) {
        Ok(Some((client, settings))) => {
            tracing::info!(
                instance = %settings.instance_id,
                "ssm presence: UpdateInstanceInformation every {:?} (jittered), so SSM shows the node Online",
                settings.interval
            );
            let paths = paths.clone();
            Some(PresenceInput {
                settings,
                api: Arc::new(SsmPresence {
                    client,
                    credentials: RotatingCredentials::new(rotator.credentials()),
                }),
                facts: Arc::new(move || HostFacts::read(&paths)),
            })
        }
        Ok(None) => {
            tracing::info!(
                "ssm presence off: IAM Roles Anywhere nodes are not SSM managed instances"
            );
            None
        }
        Err(e) => {
            tracing::error!("ssm presence off: {e}");
            None
        }
    }
}

impl HealthSettings {
    /// From `[daemon]` in the agent config. An instance that outlives the longest restart wait
    /// (at most [`health::DEFAULT_HEALTHY_AFTER`]) counts as recovered.
    pub fn from_config(c: &crate::config::DaemonConfig) -> HealthSettings {
        HealthSettings {
            restart: health::RestartPolicy {
                first: health::DEFAULT_RESTART_FIRST.min(c.subsystem_restart_cap),
                cap: c.subsystem_restart_cap,
                healthy_after: health::DEFAULT_HEALTHY_AFTER.min(c.subsystem_restart_cap),
            },
            down_limit: c.subsystem_down_limit,
        }
    }
}

/// Supervision of containerd and kubelet, when `join` left a plan. Each run reads the plan and
/// builds the backend afresh, so a failure to set it up (a missing binary, an unreadable plan)
/// is retried by the daemon like any other failure, while credential rotation goes on.
fn supervision_factory(
    paths: &HostPaths,
    agent: &AgentConfig,
    child_output: Option<ChildLineSender>,
) -> Option<SupervisionFactory> {
    let state_dir = paths.state_dir();
    match SupervisionPlan::read(&state_dir) {
        Ok(None) => {
            tracing::info!(
                "no supervision plan in {} yet (join's render phase writes it): containerd and kubelet are not supervised",
                state_dir.display()
            );
            return None;
        }
        Ok(Some(_)) => {}
        // Reported (and retried) by the first run.
        Err(_) => {}
    }
    let (paths, agent) = (paths.clone(), agent.clone());
    Some(Box::new(move |status, mut stop| {
        let (paths, agent, child_output) = (paths.clone(), agent.clone(), child_output.clone());
        Box::pin(async move {
            let supervisor = match build_supervisor(&paths, &agent, child_output).await {
                Ok(s) => s,
                Err(e) => return Exit::Failed(e),
            };
            let mut rx = supervisor.status();
            status.send_replace(Some(rx.borrow_and_update().clone()));
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let run = supervisor.run(stopped);
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    result = &mut run => break result,
                    changed = rx.changed() => {
                        if changed.is_ok() {
                            status.send_replace(Some(rx.borrow_and_update().clone()));
                        }
                    }
                }
            };
            status.send_replace(Some(rx.borrow().clone()));
            match result {
                Ok(()) => Exit::Stopped,
                Err(e) => Exit::Failed(e.to_string()),
            }
        })
    }))
}

/// One supervisor, from the plan `join` left.
async fn build_supervisor(
    paths: &HostPaths,
    agent: &AgentConfig,
    child_output: Option<ChildLineSender>,
) -> Result<Supervisor<AnyBackend>, String> {
    use crate::config::SupervisorBackend;
    let choice = match agent.supervisor.backend {
        SupervisorBackend::Auto => BackendChoice::Auto,
        SupervisorBackend::Systemd => BackendChoice::Systemd,
        SupervisorBackend::Process => BackendChoice::Process,
    };
    let state_dir = paths.state_dir();
    let plan = match SupervisionPlan::read(&state_dir) {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            return Err(format!(
                "the supervision plan in {} is gone (`hybrid-agent join` writes it; `leave` removes it)",
                state_dir.display()
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let (backend, selection, mut config) =
        crate::supervise::plan::build(choice, paths.root(), &state_dir, &plan, child_output)
            .await
            .map_err(|e| e.to_string())?;
    config.on_shutdown = match agent.supervisor.on_agent_stop {
        crate::config::OnAgentStop::LeaveRunning => crate::supervise::ShutdownAction::LeaveRunning,
        crate::config::OnAgentStop::Stop => crate::supervise::ShutdownAction::Stop,
    };
    tracing::info!(backend = ?selection.kind, "supervision: {}", selection.reason);
    Ok(Supervisor::new(backend, selection, config))
}

/// What the telemetry task is started from.
pub struct TelemetryInput {
    pub settings: TelemetrySettings,
    /// Carries the rotated credentials (in-process) and the region; SDK retries off.
    pub sdk: aws_config::SdkConfig,
    pub endpoints: TelemetryEndpoints,
    /// The built-in supervisor's child output; `None` when only the journal is read.
    pub child_lines: Option<SharedChildLines>,
    /// The other end of `child_lines`, for the supervisor.
    pub child_sender: Option<ChildLineSender>,
}

/// Telemetry's inputs once `join` recorded the node (its cluster, name and region name the log
/// group, streams and metric dimensions). Without the record, telemetry waits for the next
/// start: logged, not fatal.
fn telemetry_input(
    paths: &HostPaths,
    agent: &AgentConfig,
    rotator: &Rotator,
) -> Option<TelemetryInput> {
    let record = match NodeRecord::load(paths) {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::info!(
                "telemetry off: no node record in {} yet (`join` writes it when the node is set up); restart the agent after join",
                paths.state_dir().display()
            );
            return None;
        }
        Err(e) => {
            tracing::error!("telemetry off: {e}");
            return None;
        }
    };
    let settings = TelemetrySettings::from_agent_config(
        agent,
        paths,
        &record.cluster,
        &record.node_name,
        &record.region,
    );
    let credentials = RotatingCredentials::new(rotator.credentials()).shared();
    let http = match crate::aws::sdk_http_client(&agent.network) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("telemetry off: {e}");
            return None;
        }
    };
    let sdk = crate::aws::sdk_config(
        &record.region,
        credentials,
        crate::aws::Retries::Caller,
        http,
    );
    let url = |service| {
        agent
            .endpoints
            .endpoint(service)
            .map(|e| e.url.expose().as_str().trim_end_matches('/').to_string())
    };
    let endpoints = TelemetryEndpoints {
        logs: url(Service::Logs),
        metrics: url(Service::Cloudwatch),
    };
    let (child_sender, child_lines) = telemetry::child_line_channel();
    tracing::info!(
        group = %settings.log_group_name(),
        units = ?settings.units,
        "telemetry: shipping journal entries and child output to CloudWatch Logs, metrics every {:?}",
        settings.metrics_interval.unwrap_or_default()
    );
    Some(TelemetryInput {
        settings,
        sdk,
        endpoints,
        child_lines: Some(Arc::new(tokio::sync::Mutex::new(child_lines))),
        child_sender: Some(child_sender),
    })
}

/// What the metrics collector learns from the other subsystems: component health from the
/// supervisor, credential expiry from the rotation loop, the subsystems' own health.
struct DaemonProbe {
    supervision: watch::Receiver<Option<SupervisionStatus>>,
    identity: watch::Receiver<IdentityStatus>,
    health: Health,
}

impl HealthProbe for DaemonProbe {
    fn components(&self) -> Vec<ComponentHealth> {
        let Some(status) = &*self.supervision.borrow() else {
            return Vec::new();
        };
        status
            .components
            .iter()
            .map(|c| ComponentHealth {
                name: c.name.as_str().to_string(),
                up: c.state == ComponentState::Healthy,
                restarts: u64::from(c.restarts),
            })
            .collect()
    }

    fn credential_seconds_to_expiry(&self) -> Option<f64> {
        let expiration = self.identity.borrow().expiration?;
        Some(match expiration.duration_since(SystemTime::now()) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        })
    }

    fn subsystems(&self) -> Vec<ComponentHealth> {
        self.health
            .snapshot()
            .into_iter()
            .map(|s| ComponentHealth {
                name: s.name.as_str().to_string(),
                up: s.up(),
                restarts: s.restarts,
            })
            .collect()
    }
}

/// SIGTERM (systemd stop) and SIGINT (Ctrl-C in a terminal), installed when created: a signal
/// that arrives before [`Signals::recv`] is first awaited is kept, not fatal.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs both handlers now. Needs a tokio runtime.
    pub fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal {
            signal: "SIGTERM",
            source,
        })?;
        let int = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal {
            signal: "SIGINT",
            source,
        })?;
        Ok(Signals { term, int })
    }

    /// Resolves at the first SIGTERM or SIGINT since [`Signals::install`].
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = self.int.recv() => tracing::info!("SIGINT received; stopping"),
        }
    }
}

/// Runs the subsystems until `shutdown` resolves, each under [`health::keep_running`],
/// publishing their state to `state_path` (and serving it nowhere else).
pub async fn run(
    subsystems: Subsystems,
    state_path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_serving(subsystems, state_path, Serving::default(), shutdown).await
}

/// [`run`], also serving the live state where `serving` says.
pub async fn run_serving(
    subsystems: Subsystems,
    state_path: PathBuf,
    serving: Serving,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Subsystems {
        rotator,
        mut identity_restart,
        supervision,
        telemetry: telemetry_input,
        presence: presence_input,
        lifecycle: lifecycle_input,
        health: settings,
    } = subsystems;
    // The previous daemon's telemetry figures, which this one's counters go on from, and its
    // last SSM presence ping.
    let before = match state::read(&state_path) {
        Ok(before) => before,
        Err(e) => {
            tracing::warn!("{e}; telemetry counters start from zero");
            None
        }
    };
    let telemetry_before = before.as_ref().and_then(|d| d.telemetry.clone());
    let mut doc = DaemonState::new(SystemTime::now());
    // Kept in the document until this daemon publishes its own, so a daemon that dies before its
    // first publication does not reset them for the next.
    if telemetry_input.is_some() {
        doc.telemetry = telemetry_before.clone();
    }
    let presence_status = presence_input.as_ref().map(|p| {
        Arc::new(watch::Sender::new(PresenceStatus::resuming(
            &p.settings.instance_id,
            p.settings.interval,
            before.as_ref().and_then(|d| d.ssm_presence.as_ref()),
        )))
    });
    let mut presence_rx = presence_status.as_ref().map(|s| s.subscribe());
    doc.ssm_presence = presence_status.as_ref().map(|s| s.borrow().clone());
    // The previous daemon's upgrade counts and last outcome go on.
    let lifecycle_status = lifecycle_input.as_ref().map(|_| {
        Arc::new(watch::Sender::new(
            before
                .as_ref()
                .and_then(|d| d.lifecycle.clone())
                .unwrap_or_default(),
        ))
    });
    let mut lifecycle_rx = lifecycle_status.as_ref().map(|s| s.subscribe());
    doc.lifecycle = lifecycle_status.as_ref().map(|s| s.borrow().clone());
    let health = Health::new();
    let mut health_rx = health.subscribe();
    let mut identity = rotator.status();
    doc.identity = Some(identity.borrow_and_update().clone());
    state::write(&state_path, &doc)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let wait_stop = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };

    // Credential rotation: the first instance was built (and seeded) at start; successors take
    // over its channels, so the AWS clients' credentials and status keep flowing.
    let channels = rotator.channels();
    let key_rotation = lifecycle::KeyRotation {
        request: rotator.key_rotation(),
        status: identity.clone(),
    };
    let identity_task = {
        let mut first = Some(rotator);
        let stop = stop_rx.clone();
        crate::logging::spawn_here(health::keep_running(
            Subsystem::Identity,
            health.clone(),
            settings.restart,
            stop_rx.clone(),
            move || {
                let next = match first.take() {
                    Some(r) => Ok(r),
                    None => identity_restart().map(|mut r| {
                        r.adopt_channels(channels.clone());
                        r
                    }),
                };
                let stop = stop.clone();
                async move {
                    let rotator = match next {
                        Ok(r) => r,
                        Err(e) => return Exit::Failed(e),
                    };
                    match rotator.run(wait_stop(stop)).await {
                        Ok(()) => Exit::Stopped,
                        Err(e) => match e.action() {
                            Some(action) => Exit::Fatal {
                                message: e.to_string(),
                                action,
                            },
                            None => Exit::Failed(e.to_string()),
                        },
                    }
                }
            },
        ))
    };

    // Supervision stops with the daemon; the components keep running (their units, or children
    // left for the next agent to adopt) unless `on_agent_stop` says otherwise.
    let (supervision_tx, supervision_rx) = watch::channel::<Option<SupervisionStatus>>(None);
    let mut supervision_status = supervision.as_ref().map(|_| supervision_rx.clone());
    let supervising = supervision.map(|mut make| {
        let (tx, stop) = (supervision_tx.clone(), stop_rx.clone());
        crate::logging::spawn_here(health::keep_running(
            Subsystem::Supervision,
            health.clone(),
            settings.restart,
            stop_rx.clone(),
            move || make(tx.clone(), stop.clone()),
        ))
    });

    // Telemetry: its own tasks; its status is pulled into the state file on a timer.
    let telemetry_status = telemetry_input
        .as_ref()
        .map(|_| StatusCell::resuming(telemetry_before.as_ref()));
    let telemetry_task = match (telemetry_input, &telemetry_status) {
        (Some(input), Some(cell)) => {
            let probe: Arc<dyn HealthProbe> = Arc::new(DaemonProbe {
                supervision: supervision_rx.clone(),
                identity: identity.clone(),
                health: health.clone(),
            });
            let deps = TelemetryDeps {
                sdk: input.sdk,
                child_lines: input.child_lines,
                probe,
                endpoints: input.endpoints,
            };
            drop(input.child_sender);
            let (settings_t, cell, stop) = (input.settings, cell.clone(), stop_rx.clone());
            Some(crate::logging::spawn_here(health::keep_running(
                Subsystem::Telemetry,
                health.clone(),
                settings.restart,
                stop_rx.clone(),
                move || {
                    let (settings_t, deps, cell, stop) =
                        (settings_t.clone(), deps.clone(), cell.clone(), stop.clone());
                    async move {
                        match telemetry::run(settings_t, deps, cell, stop).await {
                            Ok(()) => Exit::Stopped,
                            Err(e) => Exit::Failed(e.to_string()),
                        }
                    }
                },
            )))
        }
        _ => None,
    };
    // SSM presence: pings on its own schedule; its failures are logged and retried inside, so
    // only a panic restarts it.
    let presence_task = match (presence_input, &presence_status) {
        (Some(input), Some(status)) => {
            let (status, stop) = (status.clone(), stop_rx.clone());
            Some(tokio::spawn(health::keep_running(
                Subsystem::SsmPresence,
                health.clone(),
                settings.restart,
                stop_rx.clone(),
                move || {
                    let presence = Presence {
                        settings: input.settings.clone(),
                        api: input.api.clone(),
                        facts: input.facts.clone(),
                        jitter: Arc::new(crate::retry::RandomJitter),
                        status: status.clone(),
                    };
                    let stop = stop.clone();
                    async move {
                        presence.run(stop).await;
                        Exit::Stopped
                    }
                },
            )))
        }
        _ => None,
    };
    // Automatic upgrades: its failures are its own state (shown in status); only a panic
    // restarts it.
    let lifecycle_task = match (lifecycle_input, &lifecycle_status) {
        (Some(mut input), Some(status)) => {
            input.key_rotation = Some(key_rotation);
            let (status, stop) = (status.clone(), stop_rx.clone());
            Some(tokio::spawn(
                health::keep_running(
                    Subsystem::Lifecycle,
                    health.clone(),
                    settings.restart,
                    stop_rx.clone(),
                    move || {
                        let looper = lifecycle::Lifecycle::new(input.clone(), status.clone());
                        let stop = stop.clone();
                        async move {
                            looper.run(stop).await;
                            Exit::Stopped
                        }
                    },
                )
                .in_current_span(),
            ))
        }
        _ => None,
    };
    let mut telemetry_tick = telemetry_status.as_ref().map(|_| {
        let mut i = tokio::time::interval(TELEMETRY_STATUS_INTERVAL);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });

    // The live state, for the status socket and Prometheus: the loop's document plus the
    // subsystems' channels, read at each request.
    let (live_tx, live_rx) = watch::channel(doc.clone());
    let live = status_server::LiveStatus {
        doc: live_rx,
        health: health.clone(),
        identity: identity.clone(),
        supervision: supervision_status.as_ref().map(|_| supervision_rx.clone()),
        telemetry: telemetry_status.clone(),
        state_dir: state_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        socket: serving.socket.clone().unwrap_or_default(),
    };
    let servers = serve_status(&serving, live).await;

    // Tell systemd (Type=notify) we are up; a no-op without $NOTIFY_SOCKET. The watchdog is fed
    // from this loop while no subsystem has been down longer than the limit, so a wedged daemon,
    // or one with a subsystem it cannot bring back, stops feeding it and systemd restarts it.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running: rotating credentials, supervising"),
    ]);
    let mut watchdog = sd_notify::watchdog_enabled().map(|every| tokio::time::interval(every / 2));
    let mut starving: Option<Subsystem> = None;

    tokio::pin!(shutdown);
    let mut identity_open = true;
    loop {
        let mut dirty = false;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick_or_pending(&mut watchdog) => {
                match health.overdue(SystemTime::now(), settings.down_limit) {
                    None => {
                        if starving.take().is_some() {
                            tracing::info!("every subsystem is back; feeding systemd's watchdog again");
                        }
                        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                    }
                    Some((name, down)) => {
                        if starving.replace(name).is_none() {
                            tracing::error!(
                                subsystem = %name,
                                "{name} has been down for {}s, past the limit of {}s (daemon.subsystem_down_limit); no longer feeding systemd's watchdog, so systemd restarts the agent",
                                down.as_secs(),
                                settings.down_limit.as_secs()
                            );
                            let line = format!("degraded: {name} down for {}s; waiting for the watchdog to restart the agent", down.as_secs());
                            notify_systemd(&[sd_notify::NotifyState::Status(&line)]);
                        }
                    }
                }
            }
            _ = tick_or_pending(&mut telemetry_tick) => {
                if let Some(cell) = &telemetry_status {
                    let snap = cell.snapshot();
                    if doc.telemetry.as_ref() != Some(&snap) {
                        doc.telemetry = Some(snap);
                        dirty = true;
                    }
                }
            }
            changed = health_rx.changed() => {
                if changed.is_ok() {
                    doc.subsystems = health_rx.borrow_and_update().clone();
                    dirty = true;
                }
            }
            changed = identity.changed(), if identity_open => {
                if changed.is_err() {
                    identity_open = false;
                    continue;
                }
                doc.identity = Some(identity.borrow_and_update().clone());
                dirty = true;
            }
            changed = changed_or_pending(&mut presence_rx) => {
                if !changed {
                    presence_rx = None;
                    continue;
                }
                if let Some(rx) = &mut presence_rx {
                    doc.ssm_presence = Some(rx.borrow_and_update().clone());
                }
                dirty = true;
            }
            changed = changed_or_pending(&mut lifecycle_rx) => {
                if !changed {
                    lifecycle_rx = None;
                    continue;
                }
                if let Some(rx) = &mut lifecycle_rx {
                    doc.lifecycle = Some(rx.borrow_and_update().clone());
                }
                dirty = true;
            }
            changed = changed_or_pending(&mut supervision_status) => {
                if !changed {
                    supervision_status = None;
                    continue;
                }
                if let Some(rx) = &mut supervision_status {
                    doc.supervision = rx.borrow_and_update().clone();
                }
                dirty = true;
            }
        }
        if dirty {
            doc.updated_at = SystemTime::now();
            if let Err(e) = state::write(&state_path, &doc) {
                tracing::warn!("{e}");
            }
            live_tx.send_replace(doc.clone());
        }
    }

    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    if let Some(task) = supervising
        && let Err(e) = task.await
    {
        tracing::error!("supervision task panicked: {e}");
    }
    if let Some(task) = telemetry_task {
        match tokio::time::timeout(TELEMETRY_STOP_TIMEOUT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("telemetry task panicked: {e}"),
            Err(_) => tracing::warn!(
                "telemetry did not stop within {TELEMETRY_STOP_TIMEOUT:?}; its unacknowledged batch is sent again by the next start"
            ),
        }
    }
    if let Some(cell) = &telemetry_status {
        doc.telemetry = Some(cell.snapshot());
    }
    if let Some(task) = presence_task
        && let Err(e) = task.await
    {
        tracing::error!("ssm presence task panicked: {e}");
    }
    if let Some(status) = &presence_status {
        let mut last = status.borrow().clone();
        last.next_ping = None;
        doc.ssm_presence = Some(last);
    }
    if let Some(task) = lifecycle_task
        && let Err(e) = task.await
    {
        tracing::error!("lifecycle task panicked: {e}");
    }
    if let Some(status) = &lifecycle_status {
        doc.lifecycle = Some(status.borrow().clone());
    }
    if let Err(e) = identity_task.await {
        tracing::error!("credential rotation task panicked: {e}");
    }
    doc.identity = Some(identity.borrow().clone());
    if supervision_status.is_some() || doc.supervision.is_some() {
        doc.supervision = supervision_rx.borrow().clone().or(doc.supervision.take());
    }
    doc.subsystems = health.snapshot();
    let now = SystemTime::now();
    doc.updated_at = now;
    doc.stopped_at = Some(now);
    let written = state::write(&state_path, &doc);
    // Served until the state is saved, so `status` shows the stop under way live.
    servers.stop().await;
    written?;
    Ok(())
}

/// The running status listeners.
struct Servers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    socket: Option<status_server::StatusSocket>,
}

impl Servers {
    /// Stops the listeners and removes the socket file (a clean stop leaves none behind).
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        if let Some(socket) = &self.socket {
            socket.remove();
        }
    }
}

/// Starts the status socket and the Prometheus endpoint where `serving` says. Best effort:
/// one that cannot be bound is logged, and the daemon runs on without it.
async fn serve_status(serving: &Serving, live: status_server::LiveStatus) -> Servers {
    let (stop, stop_rx) = watch::channel(false);
    let mut servers = Servers {
        stop,
        tasks: Vec::new(),
        socket: None,
    };
    if let Some(path) = &serving.socket {
        match status_server::bind_socket(path) {
            Ok((listener, socket)) => {
                tracing::info!(socket = %path.display(), "serving the live status");
                servers.socket = Some(socket);
                servers.tasks.push(tokio::spawn(status_server::serve_socket(
                    listener,
                    live.clone(),
                    stop_rx.clone(),
                )));
            }
            Err(e) => tracing::warn!(
                "{e}; `hybrid-agent status` shows the state saved in daemon.json instead"
            ),
        }
    }
    if let Some(addr) = serving.prometheus {
        match status_server::bind_prometheus(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving Prometheus metrics on http://{addr}/metrics");
                servers
                    .tasks
                    .push(tokio::spawn(status_server::serve_prometheus(
                        listener, live, stop_rx,
                    )));
            }
            Err(e) => tracing::warn!("{e}; the other subsystems run on"),
        }
    }
    servers
}

/// Waits for the next change; never resolves without a receiver.
async fn changed_or_pending<T>(rx: &mut Option<watch::Receiver<T>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Ticks when the systemd watchdog is on; never resolves otherwise.
async fn tick_or_pending(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends `states` to systemd's notify socket; failures are logged, never fatal (the agent's work
/// matters more than its manager's bookkeeping).
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd through $NOTIFY_SOCKET: {e}");
    }
}
