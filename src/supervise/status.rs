//! The supervision snapshot that `hybrid-agent status` prints and the daemon publishes.
//!
//! Plain serde data so it can cross the status socket/state file unchanged; times are Unix
//! milliseconds because `Instant` does not serialize and wall-clock strings are for display.

use serde::{Deserialize, Serialize};

use super::{BackendKind, ComponentName, RunState};

/// Most recent restart delays kept per component (enough to see the climb to the cap).
pub const RECENT_DELAYS_KEPT: usize = 16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisionStatus {
    pub backend: BackendKind,
    /// Why `auto` chose this backend (or that it was configured).
    pub backend_reason: String,
    pub components: Vec<ComponentStatus>,
    pub updated_at_unix_ms: u64,
}

impl SupervisionStatus {
    pub fn component(&self, name: ComponentName) -> Option<&ComponentStatus> {
        self.components.iter().find(|c| c.name == name)
    }

    /// True when any component is degraded (crash loop).
    pub fn degraded(&self) -> bool {
        self.components.iter().any(|c| c.degraded)
    }
}

/// The supervisor's view of one component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Not started yet.
    Pending,
    /// Waits for the component before it to answer its probe (kubelet waits for containerd).
    WaitingForDependency,
    /// Started; no successful probe since.
    Starting,
    /// Last probe succeeded.
    Healthy,
    /// Running but the last probe failed.
    Unhealthy,
    /// Down, a restart is pending.
    Restarting,
    /// Stopped on purpose.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub ok: bool,
    /// The version containerd reported, "ok" from /healthz, or what went wrong.
    pub detail: String,
    pub at_unix_ms: u64,
    pub latency_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: ComponentName,
    pub unit: String,
    pub state: ComponentState,
    /// The backend's run state (systemd ActiveState, or the built-in keeper's).
    pub run_state: Option<RunState>,
    pub pid: Option<u32>,
    /// True when this agent took the process over from an earlier agent instead of starting it.
    pub adopted: bool,
    /// Restarts the backend made or reported (crashes and probe-driven ones).
    pub restarts: u32,
    /// Restarts the supervisor asked for after K failed probes.
    pub probe_restarts: u32,
    pub consecutive_probe_failures: u32,
    pub last_probe: Option<ProbeRecord>,
    /// In a crash loop (N restarts within M); restarts continue at the capped delay.
    pub degraded: bool,
    /// Delays chosen before the latest restarts, oldest first (built-in backend).
    pub recent_restart_delays_ms: Vec<u64>,
}

impl ComponentStatus {
    pub fn new(name: ComponentName, unit: String) -> Self {
        ComponentStatus {
            name,
            unit,
            state: ComponentState::Pending,
            run_state: None,
            pid: None,
            adopted: false,
            restarts: 0,
            probe_restarts: 0,
            consecutive_probe_failures: 0,
            last_probe: None,
            degraded: false,
            recent_restart_delays_ms: Vec::new(),
        }
    }
}

/// Current wall-clock time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
