//! The systemd backend: our units, systemd's restarts, D-Bus for everything.
//!
//! systemd already restarts crashed services, keeps them across agent restarts and logs them, so
//! this backend does not duplicate any of it. It
//!
//! 1. writes our unit files only when their bytes differ, enables them, and asks for exactly one
//!    `Reload` when anything changed (none otherwise: a reload re-runs generators and is not free);
//! 2. starts units in the order the supervisor asks (containerd, then kubelet) and waits for the
//!    start to settle;
//! 3. follows each unit through `PropertiesChanged` signals (after `Manager.Subscribe`, without
//!    which systemd sends none) — ActiveState, SubState, MainPID, NRestarts — instead of polling.
//!
//! It talks D-Bus through zbus + zbus_systemd (pure Rust; the `systemd` crate would need
//! libsystemd and could not link statically). The bus address is injectable so tests can drive a
//! systemd booted in a container through its socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use zbus::proxy::CacheProperties;
use zbus::{OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

use super::units::UnitFile;
use super::{
    Backend, BackendEvent, BackendKind, ComponentName, ComponentSpec, EVENT_CHANNEL_CAPACITY,
    EventKind, RunState, StartOutcome, SuperviseError, UnitStatus,
};

/// systemd's well-known D-Bus name.
pub const SYSTEMD_BUS_NAME: &str = "org.freedesktop.systemd1";

/// The system bus socket, relative to the host root (dbus-daemon's default listen address).
pub const SYSTEM_BUS_SOCKET: &str = "run/dbus/system_bus_socket";

/// `Reload` re-runs generators and reloads every unit; on a loaded host it can take seconds.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for a start or stop job to settle (systemd's DefaultTimeoutStartSec is 90 s).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);

/// Mode of the unit files and drop-ins the agent writes: world-readable, like the packages' own
/// (systemd.unit(5) files are read by `systemctl` as any user).
pub const UNIT_FILE_MODE: u32 = 0o644;

/// The agent's own unit (installed by the packages).
pub const AGENT_UNIT: &str = "hybrid-agent.service";

/// What [`SystemdBackend::start_agent_unit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentUnitOutcome {
    /// No hybrid-agent.service unit file (installed from a tarball, not a package).
    NotInstalled,
    Started,
    Restarted,
    AlreadyRunning,
}

/// The bus address for the host under `root` (`/` on a real host; a container's root in tests).
pub fn system_bus_address(root: &Path) -> String {
    format!("unix:path={}", root.join(SYSTEM_BUS_SOCKET).display())
}

/// Settings of the systemd backend.
#[derive(Clone, Debug)]
pub struct SystemdSettings {
    /// D-Bus address of the system bus.
    pub bus_address: String,
    /// Where unit files go (`<root>/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// The files to keep in place.
    pub units: Vec<UnitFile>,
    /// Units to enable (start at boot).
    pub enable: Vec<String>,
    pub call_timeout: Duration,
    pub start_timeout: Duration,
}

/// What [`SystemdBackend::sync_units`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub written: Vec<PathBuf>,
    pub unchanged: Vec<PathBuf>,
    /// Symlinks EnableUnitFiles created or changed.
    pub enable_changes: usize,
    pub reloaded: bool,
}

/// A unit's state as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct UnitSnapshot {
    active: String,
    sub: String,
    main_pid: u32,
    n_restarts: u32,
}

struct UnitWatch {
    state: watch::Receiver<UnitSnapshot>,
    task: JoinHandle<()>,
}

pub struct SystemdBackend {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    settings: SystemdSettings,
    events: broadcast::Sender<BackendEvent>,
    watches: Mutex<HashMap<ComponentName, UnitWatch>>,
    /// Restarts we asked for (RestartUnit); NRestarts counts only systemd's automatic ones.
    requested_restarts: Mutex<HashMap<ComponentName, u32>>,
    reloads: AtomicU64,
    version: String,
}

impl Drop for SystemdBackend {
    fn drop(&mut self) {
        if let Ok(w) = self.watches.get_mut() {
            for watch in w.values() {
                watch.task.abort();
            }
        }
    }
}

fn dbus(call: &'static str, unit: &str) -> impl FnOnce(zbus::Error) -> SuperviseError {
    let unit = unit.to_string();
    move |source| SuperviseError::Dbus { call, unit, source }
}

impl SystemdBackend {
    /// Connects to the bus, checks systemd answers, and subscribes to its signals.
    pub async fn connect(settings: SystemdSettings) -> Result<Self, SuperviseError> {
        let address = settings.bus_address.clone();
        let connect_err = |source| SuperviseError::BusConnect {
            address: address.clone(),
            source,
        };
        let conn = tokio::time::timeout(
            settings.call_timeout,
            zbus::connection::Builder::address(address.as_str())
                .method_timeout(settings.call_timeout)
                .build(),
        )
        .await
        .map_err(|_| {
            connect_err(zbus::Error::InputOutput(
                std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
            ))
        })?
        .map_err(connect_err)?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(dbus("connect to the Manager for", "systemd"))?;
        let version = manager
            .version()
            .await
            .map_err(dbus("Get Version for", "systemd"))?;
        // Without a subscriber systemd emits no unit signals on the system bus.
        manager
            .subscribe()
            .await
            .map_err(dbus("Subscribe for", "systemd"))?;
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        Ok(SystemdBackend {
            conn,
            manager,
            settings,
            events,
            watches: Mutex::new(HashMap::new()),
            requested_restarts: Mutex::new(HashMap::new()),
            reloads: AtomicU64::new(0),
            version,
        })
    }

    /// systemd's version as it reported it.
    pub fn systemd_version(&self) -> &str {
        &self.version
    }

    /// How many `Reload` calls this backend made.
    pub fn reloads_issued(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }

    /// Writes changed unit files atomically, enables the units, and reloads once if anything
    /// changed.
    pub async fn sync_units(&self) -> Result<SyncReport, SuperviseError> {
        let mut report = SyncReport::default();
        for unit in &self.settings.units {
            let path = self.settings.unit_dir.join(&unit.path);
            if write_if_changed(&path, unit.content.as_bytes())? {
                report.written.push(path);
            } else {
                report.unchanged.push(path);
            }
        }
        if !self.settings.enable.is_empty() {
            let (_, changes) = self
                .manager
                .enable_unit_files(self.settings.enable.clone(), false, true)
                .await
                .map_err(dbus("EnableUnitFiles", &self.settings.enable.join(" ")))?;
            report.enable_changes = changes.len();
        }
        if !report.written.is_empty() || report.enable_changes > 0 {
            self.manager
                .reload()
                .await
                .map_err(dbus("Reload", "the manager"))?;
            self.reloads.fetch_add(1, Ordering::Relaxed);
            report.reloaded = true;
            tracing::info!(written = ?report.written, enable_changes = report.enable_changes, "unit files changed; systemd reloaded");
        }
        Ok(report)
    }

    fn emit(&self, component: ComponentName, kind: EventKind) {
        let _ = self.events.send(BackendEvent { component, kind });
    }

    fn requested(&self, c: ComponentName) -> u32 {
        self.requested_restarts
            .lock()
            .ok()
            .and_then(|m| m.get(&c).copied())
            .unwrap_or(0)
    }

    /// Starts following a unit (idempotent); returns its state channel.
    /// Starts the agent's own unit after a `join`, when a package installed it: the packages
    /// enable hybrid-agent.service but never start it (it has nothing to do before join, and
    /// exits 4 "not joined"). `restart` restarts a running agent so it picks up the new join;
    /// otherwise a running agent is left alone. Only queues the job: the agent's start (READY=1)
    /// does not hold up join.
    /// A properties proxy on `unit` (loaded first, so a unit without a file answers
    /// `LoadState=not-found` instead of an error).
    async fn unit_properties(
        &self,
        unit: &str,
    ) -> Result<zbus::fdo::PropertiesProxy<'static>, SuperviseError> {
        let path = self
            .manager
            .load_unit(unit.to_string())
            .await
            .map_err(dbus("LoadUnit", unit))?;
        zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(SYSTEMD_BUS_NAME)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(dbus("Properties proxy", unit))
    }

    pub async fn start_agent_unit(
        &self,
        restart: bool,
    ) -> Result<AgentUnitOutcome, SuperviseError> {
        let unit = AGENT_UNIT.to_string();
        let props = self.unit_properties(&unit).await?;
        let unit_if =
            zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit");
        let load = props
            .get(unit_if, "LoadState")
            .await
            .map_err(|e| dbus("Get LoadState", &unit)(e.into()))?;
        if owned_string(&load).as_deref() != Some("loaded") {
            return Ok(AgentUnitOutcome::NotInstalled);
        }
        let snap = read_snapshot(&props, &unit).await?;
        if snap.active == "active" && !restart {
            return Ok(AgentUnitOutcome::AlreadyRunning);
        }
        if snap.active == "failed" {
            let _ = self.manager.reset_failed_unit(unit.clone()).await;
        }
        if snap.active == "active" {
            self.manager
                .restart_unit(unit.clone(), "replace".into())
                .await
                .map_err(dbus("RestartUnit", &unit))?;
            Ok(AgentUnitOutcome::Restarted)
        } else {
            self.manager
                .start_unit(unit.clone(), "replace".into())
                .await
                .map_err(dbus("StartUnit", &unit))?;
            Ok(AgentUnitOutcome::Started)
        }
    }

    async fn ensure_watch(
        &self,
        spec: &ComponentSpec,
    ) -> Result<watch::Receiver<UnitSnapshot>, SuperviseError> {
        if let Ok(w) = self.watches.lock()
            && let Some(existing) = w.get(&spec.name)
            && !existing.task.is_finished()
        {
            return Ok(existing.state.clone());
        }
        let unit = spec.unit.clone();
        let props = self.unit_properties(&unit).await?;
        // Register the signal match before reading the state, so no change falls in between.
        let mut stream = props
            .receive_properties_changed()
            .await
            .map_err(dbus("AddMatch PropertiesChanged", &unit))?;
        let initial = read_snapshot(&props, &unit).await?;
        let (tx, rx) = watch::channel(initial.clone());
        let events = self.events.clone();
        let component = spec.name;
        let task = crate::logging::spawn_here(async move {
            let mut last = initial;
            while let Some(signal) = stream.next().await {
                let Ok(args) = signal.args() else { continue };
                let mut next = last.clone();
                for (name, value) in args.changed_properties().iter() {
                    match *name {
                        "ActiveState" => next.active = value_string(value).unwrap_or(next.active),
                        "SubState" => next.sub = value_string(value).unwrap_or(next.sub),
                        "MainPID" => next.main_pid = value_u32(value).unwrap_or(next.main_pid),
                        "NRestarts" => {
                            next.n_restarts = value_u32(value).unwrap_or(next.n_restarts)
                        }
                        _ => {}
                    }
                }
                if next == last {
                    continue;
                }
                let send = |kind| {
                    let _ = events.send(BackendEvent { component, kind });
                };
                if (next.active.as_str(), next.sub.as_str())
                    != (last.active.as_str(), last.sub.as_str())
                {
                    tracing::debug!(unit = %unit, active = %next.active, sub = %next.sub, "unit state changed");
                    send(EventKind::State {
                        state: RunState::from_systemd(&next.active, &next.sub),
                        detail: next.sub.clone(),
                    });
                }
                if next.main_pid != last.main_pid {
                    if last.main_pid != 0 {
                        send(EventKind::Exited {
                            pid: Some(last.main_pid),
                            how: format!("main pid gone ({} / {})", next.active, next.sub),
                        });
                    }
                    if next.main_pid != 0 {
                        send(EventKind::Running {
                            pid: Some(next.main_pid),
                            adopted: false,
                        });
                    }
                }
                if next.n_restarts > last.n_restarts {
                    tracing::warn!(unit = %unit, n_restarts = next.n_restarts, "systemd restarted {unit}");
                    send(EventKind::Restarted {
                        pid: (next.main_pid != 0).then_some(next.main_pid),
                        restarts: next.n_restarts,
                    });
                }
                tx.send_replace(next.clone());
                last = next;
            }
        });
        let rx_out = rx.clone();
        if let Ok(mut w) = self.watches.lock()
            && let Some(old) = w.insert(spec.name, UnitWatch { state: rx, task })
        {
            old.task.abort();
        }
        Ok(rx_out)
    }

    /// Waits until the unit's state satisfies `done`, fails on `failed`, or times out.
    async fn wait_for(
        &self,
        unit: &str,
        rx: &mut watch::Receiver<UnitSnapshot>,
        done: impl Fn(&UnitSnapshot) -> bool,
        fail_on_failed: bool,
    ) -> Result<UnitSnapshot, SuperviseError> {
        let timeout = self.settings.start_timeout;
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                let snap = rx.borrow_and_update().clone();
                if done(&snap) {
                    return Ok(snap);
                }
                if fail_on_failed && snap.active == "failed" {
                    return Err(SuperviseError::UnitFailed {
                        unit: unit.to_string(),
                        state: format!("{}/{}", snap.active, snap.sub),
                    });
                }
                if rx.changed().await.is_err() {
                    return Err(SuperviseError::UnitFailed {
                        unit: unit.to_string(),
                        state: "watch ended".into(),
                    });
                }
            }
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(_) => {
                let snap = rx.borrow().clone();
                Err(SuperviseError::UnitStartTimeout {
                    unit: unit.to_string(),
                    waited: timeout,
                    state: format!("{}/{}", snap.active, snap.sub),
                })
            }
        }
    }

    fn unit_status(&self, c: ComponentName, snap: &UnitSnapshot) -> UnitStatus {
        UnitStatus {
            state: RunState::from_systemd(&snap.active, &snap.sub),
            detail: format!("{}/{}", snap.active, snap.sub),
            pid: (snap.main_pid != 0).then_some(snap.main_pid),
            restarts: snap.n_restarts.saturating_add(self.requested(c)),
        }
    }
}

impl Backend for SystemdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Systemd
    }

    async fn prepare(&self, components: &[ComponentSpec]) -> Result<(), SuperviseError> {
        self.sync_units().await?;
        for c in components {
            self.ensure_watch(c).await?;
        }
        Ok(())
    }

    async fn start(&self, c: &ComponentSpec) -> Result<StartOutcome, SuperviseError> {
        let mut rx = self.ensure_watch(c).await?;
        let before = rx.borrow_and_update().clone();
        if before.active == "active" {
            return Ok(StartOutcome::AlreadyActive {
                pid: (before.main_pid != 0).then_some(before.main_pid),
            });
        }
        if before.active == "failed" {
            // A failed unit keeps its failure until reset; clear it so the new start counts.
            let _ = self.manager.reset_failed_unit(c.unit.clone()).await;
        }
        self.manager
            .start_unit(c.unit.clone(), "replace".into())
            .await
            .map_err(dbus("StartUnit", &c.unit))?;
        let snap = self
            .wait_for(&c.unit, &mut rx, |s| s.active == "active", true)
            .await?;
        Ok(StartOutcome::Started {
            pid: (snap.main_pid != 0).then_some(snap.main_pid),
        })
    }

    async fn stop(&self, c: &ComponentSpec) -> Result<(), SuperviseError> {
        let mut rx = self.ensure_watch(c).await?;
        self.manager
            .stop_unit(c.unit.clone(), "replace".into())
            .await
            .map_err(dbus("StopUnit", &c.unit))?;
        self.wait_for(
            &c.unit,
            &mut rx,
            |s| s.active == "inactive" || s.active == "failed",
            false,
        )
        .await?;
        Ok(())
    }

    async fn restart(&self, c: &ComponentSpec) -> Result<(), SuperviseError> {
        let mut rx = self.ensure_watch(c).await?;
        let old_pid = rx.borrow_and_update().main_pid;
        self.manager
            .restart_unit(c.unit.clone(), "replace".into())
            .await
            .map_err(dbus("RestartUnit", &c.unit))?;
        let total = {
            let mut m = self
                .requested_restarts
                .lock()
                .map_err(|_| SuperviseError::KeeperGone { component: c.name })?;
            let n = m.entry(c.name).or_insert(0);
            *n += 1;
            *n
        };
        let snap = self
            .wait_for(
                &c.unit,
                &mut rx,
                |s| s.active == "active" && s.main_pid != old_pid,
                true,
            )
            .await?;
        self.emit(
            c.name,
            EventKind::Restarted {
                pid: (snap.main_pid != 0).then_some(snap.main_pid),
                restarts: snap.n_restarts.saturating_add(total),
            },
        );
        Ok(())
    }

    async fn status(&self, c: &ComponentSpec) -> Result<UnitStatus, SuperviseError> {
        let rx = self.ensure_watch(c).await?;
        let snap = rx.borrow().clone();
        Ok(self.unit_status(c.name, &snap))
    }

    fn watch(&self) -> broadcast::Receiver<BackendEvent> {
        self.events.subscribe()
    }
}

async fn read_snapshot(
    props: &zbus::fdo::PropertiesProxy<'_>,
    unit: &str,
) -> Result<UnitSnapshot, SuperviseError> {
    let unit_if =
        zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit");
    let service_if =
        zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Service");
    let get = |iface, name: &'static str| {
        let props = props.clone();
        async move { props.get(iface, name).await }
    };
    let active = get(unit_if.clone(), "ActiveState")
        .await
        .map_err(|e| dbus("Get ActiveState", unit)(e.into()))?;
    let sub = get(unit_if, "SubState")
        .await
        .map_err(|e| dbus("Get SubState", unit)(e.into()))?;
    // A unit that is not a service (or not loaded) has no Service interface: treat as zero.
    let main_pid = get(service_if.clone(), "MainPID").await.ok();
    let n_restarts = get(service_if, "NRestarts").await.ok();
    Ok(UnitSnapshot {
        active: owned_string(&active).unwrap_or_default(),
        sub: owned_string(&sub).unwrap_or_default(),
        main_pid: main_pid.as_ref().and_then(owned_u32).unwrap_or(0),
        n_restarts: n_restarts.as_ref().and_then(owned_u32).unwrap_or(0),
    })
}

fn owned_string(v: &OwnedVariant) -> Option<String> {
    <&str>::try_from(v).ok().map(str::to_string)
}

fn owned_u32(v: &OwnedVariant) -> Option<u32> {
    u32::try_from(v).ok()
}

fn value_string(v: &Variant<'_>) -> Option<String> {
    match v {
        Variant::Str(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn value_u32(v: &Variant<'_>) -> Option<u32> {
    match v {
        Variant::U32(n) => Some(*n),
        _ => None,
    }
}

/// Writes `bytes` to `path` unless it already holds exactly them: mode [`UNIT_FILE_MODE`]
/// whatever the umask, through an exclusive temp file, fsync, rename and directory fsync
/// ([`crate::fsutil::replace_file`]), so a power cut after a daemon-reload never leaves systemd
/// an empty or torn unit. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, SuperviseError> {
    match std::fs::read(path) {
        Ok(existing) if existing == bytes => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SuperviseError::Io {
                op: "read unit file",
                path: path.to_path_buf(),
                source,
            });
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SuperviseError::Io {
            op: "create unit directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    crate::fsutil::replace_file(path, bytes, UNIT_FILE_MODE, UNIT_TEMP_NAME).map_err(|e| {
        SuperviseError::Io {
            op: e.step.verb(),
            path: e.path,
            source: e.source,
        }
    })?;
    Ok(true)
}

/// Temp files beside unit files: `NAME.PID.hybrid-agent.tmp`, like the landing journal's, so a
/// leftover is recognisably ours (systemd ignores the unknown suffix).
const UNIT_TEMP_NAME: crate::fsutil::TempName =
    crate::fsutil::TempName::Suffix(".hybrid-agent.tmp");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_if_changed_writes_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("a.service.d/x.conf");
        assert!(matches!(write_if_changed(&path, b"one"), Ok(true)));
        assert!(matches!(write_if_changed(&path, b"one"), Ok(false)));
        assert!(matches!(write_if_changed(&path, b"two"), Ok(true)));
        assert_eq!(std::fs::read(&path).ok(), Some(b"two".to_vec()));
    }

    /// systemd reads unit files as any user may (`systemctl cat`, `systemd-analyze` as a user):
    /// 0644 whatever the agent's umask, and no temp file left beside them.
    #[test]
    fn unit_files_are_0644_whatever_the_umask() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("kubelet.service");
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let wrote = write_if_changed(&path, b"[Unit]\n");
        rustix::process::umask(old);
        assert!(matches!(wrote, Ok(true)), "{wrote:?}");
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("metadata: {e}"))
            .mode();
        assert_eq!(mode & 0o7777, UNIT_FILE_MODE, "mode {mode:o}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("readdir: {e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kubelet.service")]);
    }
}
