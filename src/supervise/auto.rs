//! Choosing the backend: `supervisor.backend = auto | systemd | process`.
//!
//! `auto` applies sd_booted(3)'s test — `/run/systemd/system` exists only when systemd is PID 1 —
//! and then asks systemd for its version over D-Bus. When systemd runs but does not answer, `auto`
//! fails instead of falling back: starting our own containerd next to systemd's would leave two
//! fighting over the same socket. The chosen backend and the reason are reported in `status`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::process::{ProcessBackend, ProcessSettings};
use super::systemd::{SystemdBackend, SystemdSettings};
use super::{Backend, BackendEvent, ComponentSpec, StartOutcome, SuperviseError, UnitStatus};

/// Exists only when systemd is PID 1 (sd_booted(3)); relative to the host root.
pub const SYSTEMD_BOOTED_MARKER: &str = "run/systemd/system";

/// What the configuration asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Systemd,
    Process,
}

/// What runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Systemd,
    Process,
}

/// The chosen backend and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub kind: BackendKind,
    pub reason: String,
}

/// Whether systemd is PID 1 of the host under `root`.
pub fn systemd_booted(root: &Path) -> bool {
    root.join(SYSTEMD_BOOTED_MARKER).is_dir()
}

/// Either backend, chosen at run time.
pub enum AnyBackend {
    Systemd(SystemdBackend),
    Process(ProcessBackend),
}

/// Connects the chosen backend. `systemd` settings are used when systemd is chosen, `process`
/// otherwise.
pub async fn select(
    choice: BackendChoice,
    root: &Path,
    systemd: SystemdSettings,
    process: ProcessSettings,
) -> Result<(AnyBackend, Selection), SuperviseError> {
    let marker: PathBuf = root.join(SYSTEMD_BOOTED_MARKER);
    match choice {
        BackendChoice::Process => Ok((
            AnyBackend::Process(ProcessBackend::new(process)),
            Selection {
                kind: BackendKind::Process,
                reason: "configured: supervisor.backend = \"process\"".into(),
            },
        )),
        BackendChoice::Systemd => {
            let address = systemd.bus_address.clone();
            let b = SystemdBackend::connect(systemd).await?;
            let reason = format!(
                "configured: supervisor.backend = \"systemd\" (systemd {} on {address})",
                b.systemd_version()
            );
            Ok((
                AnyBackend::Systemd(b),
                Selection {
                    kind: BackendKind::Systemd,
                    reason,
                },
            ))
        }
        BackendChoice::Auto if !systemd_booted(root) => Ok((
            AnyBackend::Process(ProcessBackend::new(process)),
            Selection {
                kind: BackendKind::Process,
                reason: format!(
                    "auto: {} does not exist, so PID 1 is not systemd: using the built-in backend",
                    marker.display()
                ),
            },
        )),
        BackendChoice::Auto => {
            let address = systemd.bus_address.clone();
            match SystemdBackend::connect(systemd).await {
                Ok(b) => {
                    let reason = format!(
                        "auto: PID 1 is systemd ({} exists) and systemd {} answered on {address}",
                        marker.display(),
                        b.systemd_version()
                    );
                    Ok((
                        AnyBackend::Systemd(b),
                        Selection {
                            kind: BackendKind::Systemd,
                            reason,
                        },
                    ))
                }
                Err(e) => Err(SuperviseError::SystemdUnreachable {
                    marker,
                    detail: e.to_string(),
                }),
            }
        }
    }
}

impl Backend for AnyBackend {
    fn kind(&self) -> super::BackendKind {
        match self {
            AnyBackend::Systemd(b) => b.kind(),
            AnyBackend::Process(b) => b.kind(),
        }
    }

    async fn prepare(&self, components: &[ComponentSpec]) -> Result<(), SuperviseError> {
        match self {
            AnyBackend::Systemd(b) => b.prepare(components).await,
            AnyBackend::Process(b) => b.prepare(components).await,
        }
    }

    async fn start(&self, c: &ComponentSpec) -> Result<StartOutcome, SuperviseError> {
        match self {
            AnyBackend::Systemd(b) => b.start(c).await,
            AnyBackend::Process(b) => b.start(c).await,
        }
    }

    async fn stop(&self, c: &ComponentSpec) -> Result<(), SuperviseError> {
        match self {
            AnyBackend::Systemd(b) => b.stop(c).await,
            AnyBackend::Process(b) => b.stop(c).await,
        }
    }

    async fn restart(&self, c: &ComponentSpec) -> Result<(), SuperviseError> {
        match self {
            AnyBackend::Systemd(b) => b.restart(c).await,
            AnyBackend::Process(b) => b.restart(c).await,
        }
    }

    async fn status(&self, c: &ComponentSpec) -> Result<UnitStatus, SuperviseError> {
        match self {
            AnyBackend::Systemd(b) => b.status(c).await,
            AnyBackend::Process(b) => b.status(c).await,
        }
    }

    fn watch(&self) -> broadcast::Receiver<BackendEvent> {
        match self {
            AnyBackend::Systemd(b) => b.watch(),
            AnyBackend::Process(b) => b.watch(),
        }
    }
}
