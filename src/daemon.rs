//! `hybrid-agent run`: one tokio runtime, one task per subsystem, graceful stop on SIGTERM.
//!
//! Today the subsystems are the credential rotation loop and the state writer that publishes
//! its status for `hybrid-agent status` ([`crate::state`]); supervision and telemetry join as
//! further tasks next to rotation, each publishing into its own section of the state. A
//! subsystem that stops for good (rotation after `MachineFingerprintDoesNotMatch`) does not take
//! the daemon down: the others keep the node running and status shows the failure and the fix.

use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::identity::rotation::Rotator;
use crate::identity::setup::{IdentityEnv, SetupError};
use crate::paths::HostPaths;
use crate::state::{self, DaemonState, StateError};

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
        run(rotator, state::path(&paths.state_dir()), shutdown).await?;
        match fail_rx.await {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    })
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
    state_path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut doc = DaemonState::new(SystemTime::now());
    let mut identity = rotator.status();
    doc.identity = Some(identity.borrow_and_update().clone());
    state::write(&state_path, &doc)?;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let rotation = tokio::spawn(rotator.run(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    tokio::pin!(shutdown);
    let mut identity_open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
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
        }
    }

    let _ = stop_tx.send(true);
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
