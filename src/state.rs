//! The daemon's published state: what `hybrid-agent status` shows.
//!
//! The daemon rewrites `/var/lib/hybrid-agent/daemon.json` atomically whenever a subsystem's
//! status changes, and serves the same document, computed at the moment of asking, on its
//! status socket ([`crate::daemon::status_server`]). `status` asks the socket first and falls
//! back to the file, so it works when the daemon is down or wedged (and says so: the file
//! records the daemon's pid, checked against /proc). Both sources go through [`report_from`],
//! so they differ only in freshness. Each subsystem owns one optional section; supervision and
//! telemetry add theirs next to `identity`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identity::atomic::{self, AtomicWriteError};
use crate::identity::presence::PresenceStatus;
use crate::identity::rotation::{IdentityStatus, RefreshOverdue};
use crate::identity::store::ts;

// The daemon's subsystems as it publishes them (`daemon::health` keeps them up to date).

/// The daemon's subsystems, as status names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subsystem {
    /// The credential rotation loop.
    Identity,
    /// containerd and kubelet.
    Supervision,
    /// Journal, child output and metrics to CloudWatch.
    Telemetry,
    /// UpdateInstanceInformation pings to SSM (SSM hybrid-activation nodes only).
    SsmPresence,
    /// Automatic upgrades (`[lifecycle] auto_upgrade`).
    Lifecycle,
}

impl Subsystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Subsystem::Identity => "identity",
            Subsystem::Supervision => "supervision",
            Subsystem::Telemetry => "telemetry",
            Subsystem::SsmPresence => "ssm_presence",
            Subsystem::Lifecycle => "lifecycle",
        }
    }
}

impl std::fmt::Display for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a subsystem stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubsystemState {
    /// Registered, its first instance not spawned yet.
    Starting,
    Running,
    /// Failed at least once and not yet recovered; restarting with backoff.
    Degraded,
    /// Stopped for good: only an operator can fix the cause (see `action`).
    Failed,
}

impl SubsystemState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubsystemState::Starting => "starting",
            SubsystemState::Running => "running",
            SubsystemState::Degraded => "degraded",
            SubsystemState::Failed => "failed",
        }
    }
}

/// One subsystem's health, as `daemon.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemStatus {
    pub name: Subsystem,
    pub state: SubsystemState,
    /// When `state` last changed.
    #[serde(with = "ts")]
    pub since: SystemTime,
    /// Restarts since the daemon started.
    #[serde(default)]
    pub restarts: u64,
    /// Failures since the last recovery.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When the subsystem went down and has not recovered since; `None` while healthy.
    #[serde(with = "ts::option", default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<SystemTime>,
    /// The last failure (kept after recovery, so status can say what happened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the operator should do, for a `failed` subsystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When the next restart is due, while degraded.
    #[serde(with = "ts::option", default, skip_serializing_if = "Option::is_none")]
    pub next_restart: Option<SystemTime>,
}

impl SubsystemStatus {
    pub(crate) fn new(name: Subsystem, now: SystemTime) -> SubsystemStatus {
        SubsystemStatus {
            name,
            state: SubsystemState::Starting,
            since: now,
            restarts: 0,
            consecutive_failures: 0,
            down_since: None,
            last_error: None,
            action: None,
            next_restart: None,
        }
    }

    /// Up for the metrics: running or still starting (not yet failed).
    pub fn up(&self) -> bool {
        matches!(
            self.state,
            SubsystemState::Running | SubsystemState::Starting
        )
    }
}

/// File under the agent state directory.
pub const DAEMON_STATE_FILE: &str = "daemon.json";
/// Readable by root only: it names the instance and its errors.
const DAEMON_STATE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read daemon state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "daemon state {path} is not valid JSON ({message}); it is rewritten when the daemon next runs"
    )]
    Parse { path: PathBuf, message: String },
    #[error("cannot write daemon state: {0}")]
    Write(#[from] AtomicWriteError),
}

/// The automatic lifecycle's state ([`crate::daemon::lifecycle`]), for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleStatus {
    pub auto_upgrade: bool,
    pub maintenance_window: String,
    /// What the loop is doing or waiting for, in words.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    #[serde(default)]
    pub upgrades_succeeded: u64,
    #[serde(default)]
    pub upgrades_failed: u64,
    /// The last automatic upgrade's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastUpgrade>,
    #[serde(default)]
    pub auto_reboot: bool,
    #[serde(default)]
    pub reboots: u64,
    #[serde(default)]
    pub reboots_failed: u64,
    /// The last automatic reboot's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reboot: Option<LastOutcome>,
    /// `[lifecycle] max_node_age` as written (None: no refreshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_node_age: Option<String>,
    /// When the node's age counts from (its join, or its last refresh), seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_age_from: Option<u64>,
    #[serde(default)]
    pub refreshes: u64,
    #[serde(default)]
    pub refreshes_failed: u64,
    /// The last refresh's outcome (what it did, or what went wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<LastOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOutcome {
    /// Seconds since the epoch.
    pub finished: u64,
    pub ok: bool,
    /// What was done (a reboot: why the host asked), or what went wrong.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastUpgrade {
    pub from: String,
    pub to: String,
    /// Seconds since the epoch.
    pub finished: u64,
    pub ok: bool,
    /// The upgrade's error when it failed (it names what was rolled back).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The document in `daemon.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// The daemon process's start time (`/proc/<pid>/stat` field 22, clock ticks since boot):
    /// with the pid, it names that one process, not whichever later reuses the pid. Absent in
    /// files written by agents before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(with = "ts")]
    pub started_at: SystemTime,
    #[serde(with = "ts")]
    pub updated_at: SystemTime,
    /// Set when the daemon stopped gracefully.
    #[serde(with = "ts::option", default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityStatus>,
    /// containerd and kubelet ([`crate::supervise`]); absent until `join` left a supervision plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervision: Option<crate::supervise::SupervisionStatus>,
    /// Log streams, spool and metric sender ([`crate::telemetry`]); absent until the node joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::TelemetryStatus>,
    /// The SSM presence pings ([`crate::identity::presence`]); absent on IAM Roles Anywhere
    /// nodes, which are not SSM managed instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_presence: Option<PresenceStatus>,
    /// Automatic upgrades; absent unless `[lifecycle] auto_upgrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleStatus>,
    /// The daemon's own subsystems: running, degraded (restarting) or failed, with the cause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsystems: Vec<SubsystemStatus>,
}

impl DaemonState {
    pub fn new(now: SystemTime) -> DaemonState {
        DaemonState {
            pid: std::process::id(),
            pid_start: proc_stat(std::process::id()).map(|(_, start)| start),
            started_at: now,
            updated_at: now,
            stopped_at: None,
            identity: None,
            supervision: None,
            telemetry: None,
            ssm_presence: None,
            lifecycle: None,
            subsystems: Vec::new(),
        }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(DAEMON_STATE_FILE)
}

pub fn write(path: &Path, state: &DaemonState) -> Result<(), StateError> {
    // Serialising a struct of strings, numbers and times cannot fail.
    let mut text = serde_json::to_string_pretty(state).unwrap_or_default();
    text.push('\n');
    atomic::write_atomic(path, text.as_bytes(), DAEMON_STATE_MODE)?;
    Ok(())
}

/// `None` when the daemon never ran here.
pub fn read(path: &Path) -> Result<Option<DaemonState>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StateError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// File name of the agent's executable (`/usr/bin/hybrid-agent`).
pub const AGENT_EXE_NAME: &str = "hybrid-agent";

/// Whether the daemon that wrote `state` is still running: it did not record a graceful stop
/// and [`daemon_start`] finds it.
pub fn is_running(state: &DaemonState) -> bool {
    state.stopped_at.is_none() && daemon_start(state).is_some()
}

/// The start time of the process `state` names, when that process is the daemon that wrote it
/// and still runs (not a zombie). Pids are reused, so the pid alone proves nothing: with a
/// recorded start time the process must have exactly it; a file from an older agent without
/// one needs the process's executable to be the agent (`/proc/<pid>/exe` named
/// [`AGENT_EXE_NAME`], not merely a command line that mentions it).
pub fn daemon_start(state: &DaemonState) -> Option<u64> {
    let (st, start) = proc_stat(state.pid)?;
    if st == 'Z' || st == 'X' {
        return None;
    }
    let same = match state.pid_start {
        Some(recorded) => recorded == start,
        None => crate::supervise::pidfile::proc_exe(state.pid)
            .is_some_and(|exe| exe.file_name().is_some_and(|n| n == AGENT_EXE_NAME)),
    };
    same.then_some(start)
}

fn proc_stat(pid: u32) -> Option<(char, u64)> {
    crate::supervise::pidfile::proc_stat(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_liveness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        assert_eq!(read(&p).expect("read"), None);
        let mut s = DaemonState::new(SystemTime::UNIX_EPOCH);
        write(&p, &s).expect("write");
        assert_eq!(read(&p).expect("read"), Some(s.clone()));
        // The test binary is not named hybrid-agent... unless cargo names it so; either way a
        // pid that cannot exist is not running, nor is a recorded graceful stop.
        s.pid = u32::MAX;
        assert!(!is_running(&s));
        // This very process, with its start time recorded, is running...
        s.pid = std::process::id();
        s.pid_start = proc_stat(s.pid).map(|(_, t)| t);
        assert!(s.pid_start.is_some());
        assert!(is_running(&s));
        // ...but not under another start time (the pid was reused), nor without one (the test
        // binary is not /usr/bin/hybrid-agent).
        s.pid_start = s.pid_start.map(|t| t + 1);
        assert!(!is_running(&s));
        s.pid_start = None;
        assert!(!is_running(&s));
        s.pid = std::process::id();
        s.stopped_at = Some(SystemTime::UNIX_EPOCH);
        assert!(!is_running(&s));
    }

    #[test]
    fn garbage_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        std::fs::write(&p, "{").expect("write");
        let e = read(&p).expect_err("garbage");
        assert!(e.to_string().contains("daemon.json"), "{e}");
    }
}

/// Where a [`StatusReport`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusSource {
    /// The daemon answered on its status socket: every figure is as of now.
    Socket,
    /// The daemon did not answer: its last saved `daemon.json` (and the identity files).
    File,
}

/// What `hybrid-agent status` prints: the daemon's liveness and each subsystem's section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// `socket` (live) or `file` (the last saved state).
    pub source: StatusSource,
    /// Whether the daemon answered on its status socket.
    pub daemon_answering: bool,
    /// The status socket asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    pub daemon: DaemonSummary,
    /// From the daemon's state, or from the identity files when the daemon never ran.
    pub identity: Option<IdentityStatus>,
    /// Set when less than a quarter of the credentials' lifetime is left without a successful
    /// refresh ([`IdentityStatus::refresh_overdue`]), as of when the report was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_overdue: Option<RefreshOverdue>,
    /// containerd and kubelet as the daemon last saw them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervision: Option<crate::supervise::SupervisionStatus>,
    /// Log streams, spool and metric sender as the daemon last saw them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::TelemetryStatus>,
    /// SSM presence pings as the daemon last saw them (SSM hybrid-activation nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_presence: Option<PresenceStatus>,
    /// Automatic upgrades as the daemon last saw them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleStatus>,
    /// The daemon's own subsystems as it last saw them: running, degraded or failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsystems: Vec<SubsystemStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonSummary {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<SystemTime>,
    #[serde(with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<SystemTime>,
    #[serde(with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<SystemTime>,
}

/// Builds the report from the files under `state_dir`; works with the daemon down.
pub fn report(state_dir: &Path) -> Result<StatusReport, StateError> {
    let daemon = read(&path(state_dir))?;
    Ok(report_from(daemon, StatusSource::File, state_dir))
}

/// Builds the report from a daemon's state (`None`: it never ran here), from `source`, and the
/// identity files under `state_dir`. A state that came from the socket is of a running daemon.
pub fn report_from(
    daemon: Option<DaemonState>,
    source: StatusSource,
    state_dir: &Path,
) -> StatusReport {
    let summary = match &daemon {
        Some(d) => DaemonSummary {
            running: source == StatusSource::Socket || is_running(d),
            pid: Some(d.pid),
            started_at: Some(d.started_at),
            updated_at: Some(d.updated_at),
            stopped_at: d.stopped_at,
        },
        None => DaemonSummary {
            running: false,
            pid: None,
            started_at: None,
            updated_at: None,
            stopped_at: None,
        },
    };
    let store = crate::identity::store::IdentityStore::new(state_dir);
    let files = store.load_credentials_state().ok().flatten();
    let supervision = daemon.as_ref().and_then(|d| d.supervision.clone());
    let telemetry = daemon.as_ref().and_then(|d| d.telemetry.clone());
    let ssm_presence = daemon.as_ref().and_then(|d| d.ssm_presence.clone());
    let lifecycle = daemon.as_ref().and_then(|d| d.lifecycle.clone());
    let subsystems = daemon
        .as_ref()
        .map(|d| d.subsystems.clone())
        .unwrap_or_default();
    let mut identity = daemon.and_then(|d| d.identity);
    // `join` (or a daemon since stopped) may have refreshed after the daemon last wrote.
    match (&mut identity, files) {
        (Some(id), Some(f)) if id.last_refresh.is_none_or(|t| t < f.last_refresh) => {
            id.last_refresh = Some(f.last_refresh);
            id.expiration = Some(f.expiration);
        }
        (None, Some(f)) => {
            identity = Some(IdentityStatus {
                provider: f.provider,
                identity: f.identity,
                state: "ok".into(),
                expiration: Some(f.expiration),
                last_refresh: Some(f.last_refresh),
                next_refresh: None,
                last_error: None,
                consecutive_failures: 0,
                refreshes: 0,
                key_id: None,
                key_rotation_error: None,
                failing_since: None,
            });
        }
        _ => {}
    }
    if !summary.running
        && let Some(id) = &mut identity
    {
        // Nothing refreshes while the daemon is down.
        id.next_refresh = None;
    }
    let credentials_overdue = identity
        .as_ref()
        .and_then(|id| id.refresh_overdue(SystemTime::now()));
    StatusReport {
        source,
        daemon_answering: source == StatusSource::Socket,
        socket: None,
        daemon: summary,
        credentials_overdue,
        identity,
        supervision,
        telemetry,
        ssm_presence,
        lifecycle,
        subsystems,
    }
}

fn when(t: SystemTime, now: SystemTime) -> String {
    ts::when(t, now)
}

/// Why credentials near expiry were not refreshed, for status and doctor.
pub fn overdue_text(o: &RefreshOverdue, now: SystemTime, daemon_running: bool) -> String {
    match (&o.cause, o.failing_since) {
        (Some(cause), Some(since)) => {
            format!("refresh failing since {}: {cause}", when(since, now))
        }
        (Some(cause), None) => format!("refresh failing: {cause}"),
        (None, _) if !daemon_running => {
            "refresh overdue: the daemon is not running, so nothing refreshes them".to_string()
        }
        (None, _) => "refresh overdue: no refresh has been attempted".to_string(),
    }
}

impl StatusReport {
    /// One line when every subsystem is up; a block per degraded or failed one.
    fn subsystems_text(&self, out: &mut String, now: SystemTime) {
        use std::fmt::Write as _;
        if self.subsystems.is_empty() {
            return;
        }
        let seen = if self.daemon.running {
            ""
        } else {
            " (as the daemon last saw them)"
        };
        let summary: Vec<String> = self
            .subsystems
            .iter()
            .map(|s| {
                let restarts = match s.restarts {
                    0 => String::new(),
                    1 => " (1 restart)".to_string(),
                    n => format!(" ({n} restarts)"),
                };
                format!("{} {}{restarts}", s.name, s.state.as_str())
            })
            .collect();
        let _ = writeln!(out, "subsystems:    {}{seen}", summary.join(", "));
        for s in &self.subsystems {
            match s.state {
                SubsystemState::Degraded => {
                    let down = s.down_since.unwrap_or(s.since);
                    let _ = writeln!(
                        out,
                        "  {}: DEGRADED since {}, {} failure(s) in a row",
                        s.name,
                        when(down, now),
                        s.consecutive_failures
                    );
                    if let Some(e) = &s.last_error {
                        let _ = writeln!(out, "    cause:     {e}");
                    }
                    if let Some(t) = s.next_restart.filter(|_| self.daemon.running) {
                        let _ = writeln!(out, "    restart:   {}", when(t, now));
                    }
                }
                SubsystemState::Failed => {
                    let _ = writeln!(
                        out,
                        "  {}: FAILED {} (not restarted)",
                        s.name,
                        when(s.since, now)
                    );
                    if let Some(e) = &s.last_error {
                        let _ = writeln!(out, "    cause:     {e}");
                    }
                    if let Some(a) = &s.action {
                        let _ = writeln!(out, "    action:    {a}");
                    }
                }
                SubsystemState::Running | SubsystemState::Starting => {}
            }
        }
    }

    /// The human-readable form.
    pub fn to_text(&self, now: SystemTime) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let d = &self.daemon;
        let line = match (d.running, d.pid, d.stopped_at, d.updated_at) {
            (true, Some(pid), _, _) => format!("running (pid {pid}{})", d.started_at.map(|t| format!(", since {}", ts::format(t))).unwrap_or_default()),
            (false, _, Some(t), _) => format!("not running (stopped {})", when(t, now)),
            (false, Some(_), None, Some(t)) => format!("not running (it did not stop cleanly; last update {})", when(t, now)),
            _ => "not running (never started on this host; `systemctl start hybrid-agent` or `hybrid-agent run`)".to_string(),
        };
        let _ = writeln!(out, "daemon:        {line}");
        if let (StatusSource::File, Some(socket), Some(t)) =
            (self.source, &self.socket, d.updated_at)
        {
            let _ = writeln!(
                out,
                "               daemon not answering on {}: showing its last saved state from {}",
                socket.display(),
                when(t, now)
            );
        }
        self.subsystems_text(&mut out, now);
        match &self.identity {
            None => {
                let _ = writeln!(out, "identity:      not joined (run `hybrid-agent join`)");
            }
            Some(id) => {
                let _ = writeln!(out, "provider:      {}", id.provider);
                let _ = writeln!(out, "identity:      {}", id.identity);
                let _ = writeln!(out, "state:         {}", id.state);
                if let Some(t) = id.expiration {
                    let expired = if t <= now { " — EXPIRED" } else { "" };
                    let overdue = id
                        .refresh_overdue(now)
                        .map(|o| format!(" — {}", overdue_text(&o, now, d.running)))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "credentials:   expire {}{expired}{overdue}",
                        when(t, now)
                    );
                }
                if let Some(t) = id.last_refresh {
                    let _ = writeln!(out, "last refresh:  {}", when(t, now));
                }
                match id.next_refresh {
                    Some(t) => {
                        let _ = writeln!(out, "next refresh:  {}", when(t, now));
                    }
                    None if !d.running => {
                        let _ =
                            writeln!(out, "next refresh:  none while the daemon is not running");
                    }
                    None => {}
                }
                if let Some(k) = &id.key_id {
                    let _ = writeln!(out, "key:           {k}");
                }
                if let Some(e) = &id.last_error {
                    let _ = writeln!(out, "last error:    {} {}", ts::format(e.at), e.message);
                    if let Some(a) = &e.action {
                        let _ = writeln!(out, "  action:      {a}");
                    }
                }
            }
        }
        if let Some(p) = &self.ssm_presence {
            let _ = write!(out, "ssm presence:  {}", p.render(d.running, now));
        }
        if let Some(l) = &self.lifecycle {
            let _ = writeln!(
                out,
                "lifecycle:     {} (window {}; upgrades: {} done, {} failed; reboots: {} done, {} failed)",
                l.state,
                l.maintenance_window,
                l.upgrades_succeeded,
                l.upgrades_failed,
                l.reboots,
                l.reboots_failed
            );
            if let Some(r) = &l.last_reboot {
                let _ = writeln!(
                    out,
                    "  last reboot: {} {}",
                    if r.ok { "done:" } else { "FAILED:" },
                    r.detail
                );
            }
            if let Some(age) = &l.max_node_age {
                let since = l
                    .node_age_from
                    .map(|t| {
                        format!(
                            "; age counted from {}",
                            ts::format(UNIX_EPOCH + Duration::from_secs(t))
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  refresh:     at max_node_age {age}{since}; refreshes: {} done, {} failed",
                    l.refreshes, l.refreshes_failed
                );
            }
            if let Some(r) = &l.last_refresh {
                let _ = writeln!(
                    out,
                    "  last refresh: {} {}",
                    if r.ok { "done:" } else { "FAILED:" },
                    r.detail
                );
            }
            if let Some(last) = &l.last {
                let _ = writeln!(
                    out,
                    "  last:        {} {} → {}{}",
                    if last.ok { "upgraded" } else { "FAILED" },
                    last.from,
                    last.to,
                    if last.error.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", last.error)
                    }
                );
            }
        }
        if let Some(sup) = &self.supervision {
            out.push_str(&crate::supervise::status::to_text(sup, d.running));
        }
        if let Some(t) = &self.telemetry {
            let when = if d.running {
                ""
            } else {
                " (as the daemon last saw it)"
            };
            let _ = writeln!(out, "telemetry{when}:");
            for line in t.render().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}
