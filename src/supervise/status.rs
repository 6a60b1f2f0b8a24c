//! The supervision snapshot that `hybrid-agent status` prints and the daemon publishes.
//!
//! Plain serde data so it can cross the status socket/state file unchanged; times are Unix
//! milliseconds because `Instant` does not serialize and wall-clock strings are for display.

use serde::{Deserialize, Serialize};

use super::{BackendKind, ComponentName, RunState};

/// Most recent restart delays kept per component (enough to see the climb to the cap).
pub const RECENT_DELAYS_KEPT: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub ok: bool,
    /// The version containerd reported, "ok" from /healthz, or what went wrong.
    pub detail: String,
    pub at_unix_ms: u64,
    pub latency_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// The human-readable supervision section of `hybrid-agent status`. `daemon_running` false means
/// the snapshot is what the daemon saw last, and says so.
pub fn to_text(s: &SupervisionStatus, daemon_running: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let backend = match s.backend {
        BackendKind::Systemd => "systemd units",
        BackendKind::Process => "built-in (child processes)",
    };
    let stale = if daemon_running {
        ""
    } else {
        " — as last seen; the daemon is not running"
    };
    let _ = writeln!(out, "supervision:   {backend}{stale}");
    let _ = writeln!(out, "  chosen:      {}", s.backend_reason);
    for c in &s.components {
        let state = match c.state {
            ComponentState::Pending => "not started",
            ComponentState::WaitingForDependency => "waiting for containerd to answer",
            ComponentState::Starting => "starting",
            ComponentState::Healthy => "healthy",
            ComponentState::Unhealthy => "UNHEALTHY",
            ComponentState::Restarting => "restarting",
            ComponentState::Stopped => "stopped",
        };
        let degraded = if c.degraded {
            ", DEGRADED (crash loop; still retrying at the capped delay)"
        } else {
            ""
        };
        let pid = c
            .pid
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "no pid".into());
        let adopted = if c.adopted { ", adopted" } else { "" };
        let _ = writeln!(
            out,
            "  {:<12} {state}{degraded}; {pid}{adopted}; {} restarts ({} after failed probes)",
            format!("{}:", c.name),
            c.restarts,
            c.probe_restarts
        );
        if let Some(p) = &c.last_probe {
            let verdict = if p.ok { "ok" } else { "FAILED" };
            let _ = writeln!(
                out,
                "    probe:     {verdict} in {} ms: {}",
                p.latency_ms, p.detail
            );
        }
        if let Some(last) = c.recent_restart_delays_ms.last() {
            let _ = writeln!(out, "    backoff:   last restart delay {last} ms");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_degraded_components_and_stale_snapshots() {
        let mut k = ComponentStatus::new(ComponentName::Kubelet, "kubelet.service".into());
        k.degraded = true;
        k.restarts = 7;
        k.recent_restart_delays_ms = vec![1000, 2000];
        let s = SupervisionStatus {
            backend: BackendKind::Process,
            backend_reason: "auto: /run/systemd/system does not exist".into(),
            components: vec![k],
            updated_at_unix_ms: 0,
        };
        let text = to_text(&s, false);
        assert!(text.contains("DEGRADED"), "{text}");
        assert!(text.contains("as last seen"), "{text}");
        assert!(text.contains("7 restarts"), "{text}");
        assert!(text.contains("last restart delay 2000 ms"), "{text}");
    }
}
