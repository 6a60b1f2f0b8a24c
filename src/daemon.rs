//! `hybrid-agent run`: one tokio runtime, one task per subsystem, graceful stop on SIGTERM.
//!
//! The subsystems are the credential rotation loop, supervision of containerd and kubelet
//! ([`crate::supervise`], when `join` left a plan), telemetry ([`crate::telemetry`], once `join`
//! recorded the node: its journal entries, the built-in supervisor's child output and host
//! metrics to CloudWatch) and the state writer that publishes their status for
//! `hybrid-agent status` ([`crate::state`]), each into its own section. AWS clients of the other
//! tasks take their credentials from the rotation loop in-process
//! ([`crate::aws::credentials::RotatingCredentials`]), never from the file. A subsystem that
//! stops for good (rotation after `MachineFingerprintDoesNotMatch`, telemetry that cannot open
//! its spool) does not take the daemon down: the others keep the node running and status shows
//! the failure and the fix.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::aws::credentials::RotatingCredentials;
use crate::config::AgentConfig;
use crate::config::Service;
use crate::identity::rotation::{IdentityStatus, Rotator};
use crate::identity::setup::{IdentityEnv, SetupError};
use crate::join::record::NodeRecord;
use crate::paths::HostPaths;
use crate::state::{self, DaemonState, StateError};
use crate::supervise::{
    AnyBackend, BackendChoice, ComponentState, SupervisionPlan, SupervisionStatus, Supervisor,
};
use crate::telemetry::{
    self, ChildLine, ChildLineSender, ComponentHealth, HealthProbe, StatusCell, TelemetryDeps,
    TelemetryEndpoints, TelemetrySettings,
};

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
}

/// `hybrid-agent run`: builds the subsystems from the joined state and the agent config, then
/// runs them until SIGTERM/SIGINT.
pub fn start(paths: &HostPaths, agent: &AgentConfig) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async {
        let env = IdentityEnv::new(paths, agent);
        let mut rotator = env.rotator()?;
        let provider = env.load_provider()?;
        if let Some((creds, last)) = env.previous_credentials(&env.targets(provider.enable_credentials_file)) {
            tracing::info!(access_key_id = %creds.access_key_id, "credentials from the previous run are still valid; refreshing on schedule");
            rotator.seed(creds, last);
        }
        // Install the handlers before anything long-running, so an early SIGTERM is not lost.
        let signals = shutdown_signal();
        tokio::pin!(signals);
        let (fail_tx, fail_rx) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            if let Err(e) = signals.await {
                let _ = fail_tx.send(e);
            }
        };
        let telemetry = telemetry_input(paths, agent, &rotator);
        let child_output = telemetry.as_ref().and_then(|t| t.child_sender.clone());
        let supervision = supervision(paths, agent, child_output).await;
        run(rotator, supervision, telemetry, state::path(&paths.state_dir()), shutdown).await?;
        match fail_rx.await {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    })
}

/// The supervisor for containerd and kubelet, when `join` left a plan. Failing to set it up is
/// logged, not fatal: credential rotation must go on, or the node loses its credentials too.
async fn supervision(
    paths: &HostPaths,
    agent: &AgentConfig,
    child_output: Option<ChildLineSender>,
) -> Option<Supervisor<AnyBackend>> {
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
            tracing::info!(
                "no supervision plan in {} yet (join's render phase writes it): containerd and kubelet are not supervised",
                state_dir.display()
            );
            return None;
        }
        Err(e) => {
            tracing::error!("supervision disabled: {e}");
            return None;
        }
    };
    match crate::supervise::plan::build(choice, paths.root(), &state_dir, &plan, child_output).await
    {
        Ok((backend, selection, mut config)) => {
            config.on_shutdown = match agent.supervisor.on_agent_stop {
                crate::config::OnAgentStop::LeaveRunning => {
                    crate::supervise::ShutdownAction::LeaveRunning
                }
                crate::config::OnAgentStop::Stop => crate::supervise::ShutdownAction::Stop,
            };
            tracing::info!(backend = ?selection.kind, "supervision: {}", selection.reason);
            Some(Supervisor::new(backend, selection, config))
        }
        Err(e) => {
            tracing::error!("supervision disabled: {e}");
            None
        }
    }
}

/// What the telemetry task is started from.
pub struct TelemetryInput {
    pub settings: TelemetrySettings,
    /// Carries the rotated credentials (in-process) and the region; SDK retries off.
    pub sdk: aws_config::SdkConfig,
    pub endpoints: TelemetryEndpoints,
    /// The built-in supervisor's child output; `None` when only the journal is read.
    pub child_lines: Option<mpsc::Receiver<ChildLine>>,
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
        child_lines: Some(child_lines),
        child_sender: Some(child_sender),
    })
}

/// What the metrics collector learns from the other subsystems: component health from the
/// supervisor, credential expiry from the rotation loop.
struct DaemonProbe {
    supervision: Option<watch::Receiver<SupervisionStatus>>,
    identity: watch::Receiver<IdentityStatus>,
}

impl HealthProbe for DaemonProbe {
    fn components(&self) -> Vec<ComponentHealth> {
        let Some(rx) = &self.supervision else {
            return Vec::new();
        };
        rx.borrow()
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
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C in a terminal).
pub async fn shutdown_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal {
        signal: "SIGINT",
        source,
    })?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = int.recv() => tracing::info!("SIGINT received; stopping"),
    }
    Ok(())
}

/// Runs the subsystems until `shutdown` resolves, publishing their state to `state_path`.
pub async fn run(
    rotator: Rotator,
    supervision: Option<Supervisor<AnyBackend>>,
    telemetry_input: Option<TelemetryInput>,
    state_path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    // The previous daemon's telemetry figures, which this one's counters go on from.
    let telemetry_before = match state::read(&state_path) {
        Ok(before) => before.and_then(|d| d.telemetry),
        Err(e) => {
            tracing::warn!("{e}; telemetry counters start from zero");
            None
        }
    };
    let mut doc = DaemonState::new(SystemTime::now());
    // Kept in the document until this daemon publishes its own, so a daemon that dies before its
    // first publication does not reset them for the next.
    if telemetry_input.is_some() {
        doc.telemetry = telemetry_before.clone();
    }
    let mut identity = rotator.status();
    doc.identity = Some(identity.borrow_and_update().clone());
    state::write(&state_path, &doc)?;

    let mut supervision_status = supervision.as_ref().map(|s| s.status());
    if let Some(rx) = &mut supervision_status {
        doc.supervision = Some(rx.borrow_and_update().clone());
    }

    let (stop_tx, mut stop_rx) = watch::channel(false);
    // Supervision stops with the daemon; the components keep running (their units, or children
    // left for the next agent to adopt).
    let supervising = supervision.map(|s| {
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            if let Err(e) = s.run(stopped).await {
                tracing::error!("supervision stopped: {e}");
            }
        })
    });
    // Telemetry: its own tasks; its status is pulled into the state file on a timer.
    let telemetry_status = telemetry_input
        .as_ref()
        .map(|_| StatusCell::resuming(telemetry_before.as_ref()));
    let telemetry_task = match (telemetry_input, &telemetry_status) {
        (Some(input), Some(cell)) => {
            let probe = DaemonProbe {
                supervision: supervision_status.clone(),
                identity: rotator.status(),
            };
            let deps = TelemetryDeps {
                sdk: input.sdk,
                child_lines: input.child_lines,
                probe: Arc::new(probe),
                endpoints: input.endpoints,
            };
            drop(input.child_sender);
            let (cell, stop) = (cell.clone(), stop_tx.subscribe());
            Some(tokio::spawn(async move {
                if let Err(e) = telemetry::run(input.settings, deps, cell, stop).await {
                    tracing::error!("telemetry stopped: {e}");
                }
            }))
        }
        _ => None,
    };
    let mut telemetry_tick = telemetry_status.as_ref().map(|_| {
        let mut i = tokio::time::interval(TELEMETRY_STATUS_INTERVAL);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });

    let rotation = tokio::spawn(rotator.run(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    // Tell systemd (Type=notify) we are up; a no-op without $NOTIFY_SOCKET. The watchdog is fed
    // from this loop, so a wedged daemon stops feeding it and systemd restarts the agent.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running: rotating credentials, supervising"),
    ]);
    let mut watchdog = sd_notify::watchdog_enabled().map(|every| tokio::time::interval(every / 2));

    tokio::pin!(shutdown);
    let mut identity_open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick_or_pending(&mut watchdog) => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
            _ = tick_or_pending(&mut telemetry_tick) => {
                if let Some(cell) = &telemetry_status {
                    let snap = cell.snapshot();
                    if doc.telemetry.as_ref() != Some(&snap) {
                        doc.telemetry = Some(snap);
                        doc.updated_at = SystemTime::now();
                        if let Err(e) = state::write(&state_path, &doc) {
                            tracing::warn!("{e}");
                        }
                    }
                }
            }
            changed = identity.changed(), if identity_open => {
                if changed.is_err() {
                    // The rotation loop ended (fatal error, already published and logged).
                    identity_open = false;
                    continue;
                }
                doc.identity = Some(identity.borrow_and_update().clone());
                doc.updated_at = SystemTime::now();
                if let Err(e) = state::write(&state_path, &doc) {
                    tracing::warn!("{e}");
                }
            }
            changed = changed_or_pending(&mut supervision_status) => {
                if !changed {
                    // The supervisor ended (its error is logged); keep its last snapshot.
                    supervision_status = None;
                    continue;
                }
                if let Some(rx) = &mut supervision_status {
                    doc.supervision = Some(rx.borrow_and_update().clone());
                }
                doc.updated_at = SystemTime::now();
                if let Err(e) = state::write(&state_path, &doc) {
                    tracing::warn!("{e}");
                }
            }
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
    match rotation.await {
        Ok(Ok(())) | Ok(Err(_)) => {}
        Err(e) => tracing::error!("credential rotation task panicked: {e}"),
    }
    doc.identity = Some(identity.borrow().clone());
    let now = SystemTime::now();
    doc.updated_at = now;
    doc.stopped_at = Some(now);
    state::write(&state_path, &doc)?;
    Ok(())
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
