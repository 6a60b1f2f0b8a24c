//! Supervision: start containerd, then kubelet, and keep both healthy.
//!
//! Two backends sit behind one [`Backend`] trait (start, stop, restart, status, watch):
//!
//! - [`systemd::SystemdBackend`] — the default where PID 1 is systemd and D-Bus answers. systemd
//!   already restarts crashed services and outlives us, so we only write our unit files (when
//!   their content changed), reload and start through D-Bus, and follow the units through D-Bus
//!   signals.
//! - [`process::ProcessBackend`] — for hosts without systemd and for the demo: children in their
//!   own process group, a pid file plus an ownership check (executable and an environment marker)
//!   before any leftover process is signalled or adopted, bounded stop, capped backoff.
//!
//! [`auto::select`] picks one and says why. The [`Supervisor`] runs on top of either: it orders
//! starts (kubelet only once containerd answers), probes health ([`probe`]), restarts a component
//! after K failed probes in a row, detects crash loops (→ `degraded`) and publishes a
//! [`SupervisionStatus`] snapshot that `hybrid-agent status` shows.
//!
//! The shape follows k0s's supervisor (ownership check before killing, bounded stop, the first
//! start failure returned to the caller) and adds what it lacks: backoff, adoption and probes.

pub mod auto;
pub mod backoff;
pub mod pidfile;
pub mod plan;
pub mod probe;
pub mod process;
pub mod runner;
pub mod status;
pub mod systemd;
pub mod units;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use auto::{AnyBackend, BackendChoice, BackendKind, Selection};
pub use backoff::{BackoffPolicy, CrashLoopPolicy};
pub use plan::SupervisionPlan;
pub use probe::{Probe, ProbePolicy};
pub use runner::{ShutdownAction, Supervisor, SupervisorConfig};
pub use status::{ComponentState, ComponentStatus, ProbeRecord, SupervisionStatus};

/// The components the agent supervises, in start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentName {
    Containerd,
    Kubelet,
}

impl ComponentName {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentName::Containerd => "containerd",
            ComponentName::Kubelet => "kubelet",
        }
    }

    /// The systemd unit that runs the component (the distro's containerd.service, our kubelet.service).
    pub fn unit_name(self) -> &'static str {
        match self {
            ComponentName::Containerd => "containerd.service",
            ComponentName::Kubelet => "kubelet.service",
        }
    }
}

impl std::fmt::Display for ComponentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to run for a component under the built-in backend (systemd gets the same through the
/// unit files rendered by [`units`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ExecSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// One supervised component.
#[derive(Clone, Debug)]
pub struct ComponentSpec {
    pub name: ComponentName,
    pub exec: ExecSpec,
    /// systemd unit name (the backend that has no units ignores it).
    pub unit: String,
    pub probe: Probe,
    pub probe_policy: ProbePolicy,
}

/// Whether a backend found the component already running or had to start it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum StartOutcome {
    /// A new process was started.
    Started { pid: Option<u32> },
    /// A process left by an earlier agent passed the ownership check and was taken over as is.
    Adopted { pid: u32 },
    /// The unit was already active (systemd).
    AlreadyActive { pid: Option<u32> },
}

impl StartOutcome {
    pub fn pid(self) -> Option<u32> {
        match self {
            StartOutcome::Started { pid } | StartOutcome::AlreadyActive { pid } => pid,
            StartOutcome::Adopted { pid } => Some(pid),
        }
    }
}

/// Coarse run state, the same words for both backends (systemd's ActiveState values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Active,
    Activating,
    Deactivating,
    Inactive,
    Failed,
    /// Waiting out a backoff delay before the next start.
    Restarting,
}

impl RunState {
    /// Maps systemd's ActiveState (plus SubState, which says `auto-restart` while systemd waits).
    pub fn from_systemd(active: &str, sub: &str) -> RunState {
        match (active, sub) {
            (_, "auto-restart") => RunState::Restarting,
            ("active" | "reloading", _) => RunState::Active,
            ("activating", _) => RunState::Activating,
            ("deactivating", _) => RunState::Deactivating,
            ("failed", _) => RunState::Failed,
            _ => RunState::Inactive,
        }
    }
}

/// What a backend knows about one component right now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub state: RunState,
    /// Backend detail: systemd's SubState, or how the built-in backend holds the child.
    pub detail: String,
    pub pid: Option<u32>,
    /// Restarts since the backend began supervising (systemd: NRestarts plus restarts we asked for).
    pub restarts: u32,
}

/// A change a backend observed, for the supervisor and for tests.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendEvent {
    pub component: ComponentName,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// The component runs under a (new) main pid.
    Running { pid: Option<u32>, adopted: bool },
    /// The main process went away (`how`: exit code, signal, or "unknown" for adopted children).
    Exited { pid: Option<u32>, how: String },
    /// A restart is due after `delay` (built-in backend: the backoff it chose).
    RestartScheduled { delay: Duration, failures: u32 },
    /// The backend restarted the component; `restarts` is its running total.
    Restarted { pid: Option<u32>, restarts: u32 },
    /// Raw state change (systemd ActiveState/SubState as seen in a D-Bus signal).
    State { state: RunState, detail: String },
    /// A restart attempt failed to spawn; the backend keeps retrying.
    SpawnFailed { error: String },
}

/// The operations the supervisor needs from a backend. `watch` delivers [`BackendEvent`]s as they
/// happen (D-Bus signals, child exits) so nobody has to poll tightly.
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is (for status and logs).
    fn kind(&self) -> BackendKind;

    /// One-time preparation before the first start (systemd: write unit files and reload if their
    /// content changed).
    fn prepare(
        &self,
        components: &[ComponentSpec],
    ) -> impl Future<Output = Result<(), SuperviseError>> + Send;

    /// Starts the component, or adopts/keeps it when it already runs. Returns once the backend
    /// considers it started (systemd: the start job finished).
    fn start(
        &self,
        c: &ComponentSpec,
    ) -> impl Future<Output = Result<StartOutcome, SuperviseError>> + Send;

    /// Stops the component: SIGTERM, a bounded wait, then SIGKILL (systemd: StopUnit).
    fn stop(&self, c: &ComponentSpec) -> impl Future<Output = Result<(), SuperviseError>> + Send;

    /// Restarts the component (used after K failed probes).
    fn restart(&self, c: &ComponentSpec)
    -> impl Future<Output = Result<(), SuperviseError>> + Send;

    /// The component's current state.
    fn status(
        &self,
        c: &ComponentSpec,
    ) -> impl Future<Output = Result<UnitStatus, SuperviseError>> + Send;

    /// A stream of changes. Subscribe before `start` to see everything.
    fn watch(&self) -> broadcast::Receiver<BackendEvent>;
}

/// Capacity of a backend's event channel; a slow subscriber that falls this far behind loses the
/// oldest events and re-reads `status` instead.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// Everything that can go wrong while supervising; each variant names the thing and the operation.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(
        "cannot start {component}: running {program} failed: {source}; check that it is installed and executable"
    )]
    Spawn {
        component: ComponentName,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot signal {component} (pid {pid}) with {signal}: {source}")]
    Signal {
        component: ComponentName,
        pid: u32,
        signal: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cannot connect to the D-Bus system bus at {address}: {source}; is dbus running? (the built-in backend, `supervisor.backend = \"process\"`, needs no systemd)"
    )]
    BusConnect {
        address: String,
        source: zbus::Error,
    },
    #[error("D-Bus call {call} for {unit} failed: {source}")]
    Dbus {
        call: &'static str,
        unit: String,
        source: zbus::Error,
    },
    #[error(
        "{unit} did not become active within {waited:?} (last state {state}); see `journalctl -u {unit}`"
    )]
    UnitStartTimeout {
        unit: String,
        waited: Duration,
        state: String,
    },
    #[error("{unit} failed to start (state {state}); see `journalctl -u {unit}`")]
    UnitFailed { unit: String, state: String },
    #[error("{component} did not stop within {waited:?} after SIGKILL")]
    StopTimeout {
        component: ComponentName,
        waited: Duration,
    },
    #[error(
        "PID 1 is systemd ({marker} exists) but its D-Bus API did not answer: {detail}; fix dbus or choose `supervisor.backend = \"process\"` explicitly"
    )]
    SystemdUnreachable { marker: PathBuf, detail: String },
    #[error("{component} is not supervised by this backend yet; start it first")]
    NotStarted { component: ComponentName },
    #[error("the keeper task of {component} has ended")]
    KeeperGone { component: ComponentName },
}
