//! `hybrid-agent run`: one tokio runtime, one task per subsystem, graceful stop on SIGTERM.
//!
//! The subsystems are the credential rotation loop, supervision of containerd and kubelet
//! ([`crate::supervise`], when `join` left a plan) and the state writer that publishes their
//! status for `hybrid-agent status` ([`crate::state`]); telemetry joins as a further task, each
//! publishing into its own section of the state. AWS clients of the other tasks take their
//! credentials from the rotation loop in-process
//! (`aws::credentials::RotatingCredentials::new(rotator.credentials())`), never from the file.
//! A subsystem that stops for good (rotation after `MachineFingerprintDoesNotMatch`) does not
//! take the daemon down: the others keep the node running and status shows the failure and the
//! fix.

use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::identity::rotation::Rotator;
use crate::identity::setup::{IdentityEnv, SetupError};
use crate::paths::HostPaths;
use crate::state::{self, DaemonState, StateError};
use crate::supervise::{AnyBackend, BackendChoice, SupervisionPlan, Supervisor};

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
        let supervision = supervision(paths, agent).await;
        run(rotator, supervision, state::path(&paths.state_dir()), shutdown).await?;
        match fail_rx.await {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    })
}

/// The supervisor for containerd and kubelet, when `join` left a plan. Failing to set it up is
/// logged, not fatal: credential rotation must go on, or the node loses its credentials too.
async fn supervision(paths: &HostPaths, agent: &AgentConfig) -> Option<Supervisor<AnyBackend>> {
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
    match crate::supervise::plan::build(choice, paths.root(), &state_dir, &plan).await {
        Ok((backend, selection, config)) => {
            tracing::info!(backend = ?selection.kind, "supervision: {}", selection.reason);
            Some(Supervisor::new(backend, selection, config))
        }
        Err(e) => {
            tracing::error!("supervision disabled: {e}");
            None
        }
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
    state_path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut doc = DaemonState::new(SystemTime::now());
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
    let rotation = tokio::spawn(rotator.run(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    // Tell systemd (Type=notify) we are up; a no-op without $NOTIFY_SOCKET. The watchdog is fed
    // from this loop, so a wedged daemon stops feeding it and systemd restarts the agent.
    notify_systemd(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("running: rotating credentials, supervising")]);
    let mut watchdog = sd_notify::watchdog_enabled().map(|every| tokio::time::interval(every / 2));

    tokio::pin!(shutdown);
    let mut identity_open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick_or_pending(&mut watchdog) => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
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
