//! The built-in backend: the agent runs containerd and kubelet as its own children.
//!
//! For hosts without systemd and for the demo. Each component gets a keeper task that owns the
//! child, waits for it to exit and respawns it after a capped, jittered backoff, and answers
//! stop/restart requests. The parts that make it safe to restart the *agent*:
//!
//! - children run in their own process group (`setpgid`), so a signal to the agent does not reach
//!   them and a stop can take the whole group down;
//! - a pid file records pid and start time, and children carry an environment marker; a later
//!   agent adopts a leftover child only after the ownership check in [`super::pidfile`], and never
//!   signals a process that fails it;
//! - child stdout/stderr go to a per-component log file opened with `O_APPEND`, not to a pipe:
//!   with a pipe, the first line a child writes after the agent died would kill it with SIGPIPE
//!   (Go programs such as containerd exit on SIGPIPE on fds 1 and 2), defeating adoption. The
//!   agent tails the file line by line, tags each line with the component (tracing target
//!   `hybrid_agent::child`, [`ProcessBackend::output`] subscribers, and under `hybrid-agent run`
//!   telemetry's child-output source with the read position kept in `<component>.log.pos`, so
//!   a restarted agent ships from where the last one stopped), and truncates it once read past
//!   [`LOG_FILE_TRUNCATE_BYTES`] — safe for `O_APPEND` writers;
//! - adopted children are not our children, so their exit is awaited through a pidfd.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::backoff::BackoffPolicy;
use super::pidfile::{self, MARKER_ENV, Ownership, PidRecord};
use super::{
    Backend, BackendEvent, BackendKind, ComponentName, ComponentSpec, EVENT_CHANNEL_CAPACITY,
    EventKind, RunState, StartOutcome, SuperviseError, UnitStatus,
};

/// Subdirectory of the agent's state dir for pid files and child logs.
pub const SUPERVISE_DIR: &str = "supervise";

/// Once the tailer has read (and telemetry acknowledged) this much of a child log file, the read
/// part's disk space is given back ([`reclaim`]), never by truncating: the child keeps writing.
pub const LOG_FILE_TRUNCATE_BYTES: u64 = 8 * 1024 * 1024;

/// Unread output a child log file may hold while telemetry is behind (CloudWatch unreachable and
/// the spool full): beyond it the oldest unread output is skipped, with a line saying how much,
/// so a long outage cannot fill the disk through a chatty child. Per component, outside the
/// spool budget; 64 MiB is hours of a kubelet at its default verbosity.
pub const LOG_FILE_MAX_UNREAD: u64 = 64 * 1024 * 1024;

/// How often the tailer looks for new child output; 4 reads a second cost next to nothing.
pub const LOG_TAIL_INTERVAL: Duration = Duration::from_millis(250);

/// After SIGKILL a process is gone within milliseconds unless stuck in the kernel; wait this long.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// SIGTERM grace before SIGKILL: kubelet and containerd drain within seconds; systemd's
/// DefaultTimeoutStopSec is 90 s, but an agent restart should not hang that long.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Secrets the agent may carry in its own environment that a child must never inherit: the
/// activation code (`join` reads it from the environment) and AWS credentials (the operator's
/// shell, a systemd drop-in). kubelet and containerd get theirs from files named by their own
/// `env` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`), which still apply. The AWS names
/// are those the SDKs read credentials from (`AWS_SECURITY_TOKEN` is boto's old alias of
/// `AWS_SESSION_TOKEN`; `AWS_CONTAINER_AUTHORIZATION_TOKEN` authorizes a container credentials
/// endpoint).
pub const SCRUBBED_ENV: [&str; 6] = [
    crate::config::ACTIVATION_CODE_ENV,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// Longest child output line kept whole; longer ones are split.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Settings of the built-in backend.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    /// The agent's state dir (`/var/lib/hybrid-agent` under `--root`); pid files and child logs
    /// live in its `supervise/` subdirectory, and it names the agent in the ownership marker.
    pub state_dir: PathBuf,
    pub backoff: BackoffPolicy,
    /// SIGTERM grace before SIGKILL.
    pub stop_timeout: Duration,
    /// Where child output goes besides the agent's own log: telemetry's child-output source
    /// (`hybrid-agent run`). With it, the tail waits for telemetry (the log file is the buffer)
    /// and keeps its read position in `<component>.log.pos`, so an agent restart resumes where
    /// the last one stopped instead of at the end of the file.
    pub child_output: Option<crate::output::ChildLineSender>,
    /// [`LOG_FILE_MAX_UNREAD`] unless a test sets it lower.
    pub log_max_unread: u64,
}

impl ProcessSettings {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ProcessSettings {
            state_dir: state_dir.into(),
            backoff: BackoffPolicy::default(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            child_output: None,
            log_max_unread: LOG_FILE_MAX_UNREAD,
        }
    }

    fn dir(&self) -> PathBuf {
        self.state_dir.join(SUPERVISE_DIR)
    }

    pub fn pid_file(&self, c: ComponentName) -> PathBuf {
        self.dir().join(format!("{}.pid", c.as_str()))
    }

    pub fn log_file(&self, c: ComponentName) -> PathBuf {
        self.dir().join(format!("{}.log", c.as_str()))
    }

    /// How far into [`Self::log_file`] output was handed to telemetry (decimal byte offset).
    pub fn log_position_file(&self, c: ComponentName) -> PathBuf {
        self.dir().join(format!("{}.log.pos", c.as_str()))
    }
}

/// One line a child wrote, tagged with the component.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputLine {
    pub component: ComponentName,
    pub line: String,
}

enum Cmd {
    Stop(oneshot::Sender<Result<(), SuperviseError>>),
    Restart(oneshot::Sender<Result<(), SuperviseError>>),
}

struct Keeper {
    cmd: mpsc::Sender<Cmd>,
    status: watch::Receiver<UnitStatus>,
    task: JoinHandle<()>,
    tail: JoinHandle<()>,
}

/// The built-in backend. Dropping it leaves the children running (to be adopted by the next
/// agent); call [`Backend::stop`] to stop them.
pub struct ProcessBackend {
    settings: ProcessSettings,
    events: broadcast::Sender<BackendEvent>,
    output: broadcast::Sender<OutputLine>,
    keepers: Mutex<HashMap<ComponentName, Keeper>>,
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        if let Ok(keepers) = self.keepers.get_mut() {
            for k in keepers.values() {
                k.task.abort();
                k.tail.abort();
            }
        }
    }
}

impl ProcessBackend {
    pub fn new(settings: ProcessSettings) -> Self {
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let (output, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        ProcessBackend {
            settings,
            events,
            output,
            keepers: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &ProcessSettings {
        &self.settings
    }

    /// Child output, line by line, tagged with the component.
    pub fn output(&self) -> broadcast::Receiver<OutputLine> {
        self.output.subscribe()
    }

    fn marker(&self, c: ComponentName) -> String {
        pidfile::marker_value(c, &self.settings.state_dir)
    }

    fn keeper_handles(
        &self,
        c: ComponentName,
    ) -> Option<(mpsc::Sender<Cmd>, watch::Receiver<UnitStatus>)> {
        let keepers = self.keepers.lock().ok()?;
        let k = keepers.get(&c)?;
        if k.task.is_finished() {
            return None;
        }
        Some((k.cmd.clone(), k.status.clone()))
    }

    async fn start_impl(&self, spec: &ComponentSpec) -> Result<StartOutcome, SuperviseError> {
        let name = spec.name;
        if let Some((_, status)) = self.keeper_handles(name) {
            return Ok(StartOutcome::AlreadyActive {
                pid: status.borrow().pid,
            });
        }
        let dir = self.settings.dir();
        std::fs::create_dir_all(&dir).map_err(|source| SuperviseError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        let pid_path = self.settings.pid_file(name);
        let log_path = self.settings.log_file(name);
        let marker = self.marker(name);

        let mut adopted: Option<(u32, Held)> = None;
        if let Some(record) = pidfile::read(&pid_path)? {
            match pidfile::check(&record, &spec.exec.program, &marker) {
                Ownership::Ours => match open_pidfd(record.pid) {
                    Ok(fd) => {
                        tracing::info!(component = %name, pid = record.pid, "adopting the running {name} left by an earlier agent (ownership check passed)");
                        adopted = Some((record.pid, Held::Adopted(fd)));
                    }
                    Err(e) => {
                        tracing::warn!(component = %name, pid = record.pid, "cannot open a pidfd for {name}: {e}; starting anew")
                    }
                },
                Ownership::OursStale { reason } => {
                    tracing::info!(component = %name, pid = record.pid, "stopping stale {name}: {reason}");
                    if let Ok(fd) = open_pidfd(record.pid) {
                        let mut held = Held::Adopted(fd);
                        stop_held(name, record.pid, &mut held, self.settings.stop_timeout).await?;
                    }
                    pidfile::remove(&pid_path)?;
                }
                Ownership::NotRunning => pidfile::remove(&pid_path)?,
                Ownership::Foreign { reason } => {
                    tracing::warn!(component = %name, pid = record.pid, "pid file {} names a process that is not ours ({reason}); leaving it alone", pid_path.display());
                    pidfile::remove(&pid_path)?;
                }
            }
        }

        // Where the tail starts. Feeding telemetry: at the position the last agent handed over
        // (0 when none did: the whole file is unshipped output). Otherwise at the current end:
        // the lines before it were logged by whoever ran then.
        let log_len = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let pos_path = self.settings.log_position_file(name);
        let tail_from = match &self.settings.child_output {
            Some(_) => read_position(&pos_path)
                .filter(|p| *p <= log_len)
                .unwrap_or(0),
            None => log_len,
        };
        let (outcome, held) = match adopted {
            Some((pid, held)) => (StartOutcome::Adopted { pid }, (pid, held)),
            None => {
                // The first start failure goes back to the caller (k0s does the same); later
                // failures are retried by the keeper.
                let (pid, child) = spawn_child(spec, &marker, &log_path, &pid_path)?;
                (
                    StartOutcome::Started { pid: Some(pid) },
                    (pid, Held::Own(child)),
                )
            }
        };
        let adopted_flag = matches!(outcome, StartOutcome::Adopted { .. });
        let initial = UnitStatus {
            state: RunState::Active,
            detail: if adopted_flag {
                "adopted".into()
            } else {
                "running".into()
            },
            pid: Some(held.0),
            restarts: 0,
        };
        let (status_tx, status_rx) = watch::channel(initial);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let keeper = KeeperTask {
            spec: spec.clone(),
            marker,
            pid_path,
            log_path: log_path.clone(),
            backoff: self.settings.backoff.clone(),
            stop_timeout: self.settings.stop_timeout,
            events: self.events.clone(),
            status: status_tx,
            restarts: 0,
            failures: 0,
        };
        let _ = self.events.send(BackendEvent {
            component: name,
            kind: EventKind::Running {
                pid: Some(held.0),
                adopted: adopted_flag,
            },
        });
        let task =
            crate::logging::spawn_here(keeper.run(Some((held.0, held.1, Instant::now())), cmd_rx));
        let tail = crate::logging::spawn_here(tail_log(
            name,
            log_path,
            tail_from,
            self.output.clone(),
            self.settings
                .child_output
                .clone()
                .map(|sender| (sender, pos_path)),
            self.settings.log_max_unread,
        ));
        if let Ok(mut keepers) = self.keepers.lock()
            && let Some(old) = keepers.insert(
                name,
                Keeper {
                    cmd: cmd_tx,
                    status: status_rx,
                    task,
                    tail,
                },
            )
        {
            old.task.abort();
            old.tail.abort();
        }
        Ok(outcome)
    }

    async fn send(
        &self,
        c: ComponentName,
        make: fn(oneshot::Sender<Result<(), SuperviseError>>) -> Cmd,
    ) -> Result<(), SuperviseError> {
        let Some((cmd, _)) = self.keeper_handles(c) else {
            return Err(SuperviseError::NotStarted { component: c });
        };
        let (tx, rx) = oneshot::channel();
        cmd.send(make(tx))
            .await
            .map_err(|_| SuperviseError::KeeperGone { component: c })?;
        rx.await
            .map_err(|_| SuperviseError::KeeperGone { component: c })?
    }

    async fn stop_impl(&self, spec: &ComponentSpec) -> Result<(), SuperviseError> {
        if self.keeper_handles(spec.name).is_some() {
            return self.send(spec.name, Cmd::Stop).await;
        }
        // Not supervised in this run: stop a leftover only if it passes the ownership check.
        let pid_path = self.settings.pid_file(spec.name);
        if let Some(record) = pidfile::read(&pid_path)? {
            match pidfile::check(&record, &spec.exec.program, &self.marker(spec.name)) {
                Ownership::Ours | Ownership::OursStale { .. } => {
                    if let Ok(fd) = open_pidfd(record.pid) {
                        stop_held(
                            spec.name,
                            record.pid,
                            &mut Held::Adopted(fd),
                            self.settings.stop_timeout,
                        )
                        .await?;
                    }
                }
                Ownership::NotRunning => {}
                Ownership::Foreign { reason } => {
                    tracing::warn!(component = %spec.name, "not stopping pid {}: {reason}", record.pid);
                }
            }
            pidfile::remove(&pid_path)?;
        }
        Ok(())
    }

    async fn status_impl(&self, spec: &ComponentSpec) -> Result<UnitStatus, SuperviseError> {
        if let Some((_, status)) = self.keeper_handles(spec.name) {
            return Ok(status.borrow().clone());
        }
        let record = pidfile::read(&self.settings.pid_file(spec.name))?;
        Ok(match record {
            Some(r)
                if pidfile::check(&r, &spec.exec.program, &self.marker(spec.name))
                    == Ownership::Ours =>
            {
                UnitStatus {
                    state: RunState::Active,
                    detail: "running, not supervised by this agent yet".into(),
                    pid: Some(r.pid),
                    restarts: 0,
                }
            }
            _ => UnitStatus {
                state: RunState::Inactive,
                detail: "not running".into(),
                pid: None,
                restarts: 0,
            },
        })
    }
}

impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn prepare(&self, _components: &[ComponentSpec]) -> Result<(), SuperviseError> {
        Ok(())
    }

    async fn start(&self, c: &ComponentSpec) -> Result<StartOutcome, SuperviseError> {
        self.start_impl(c).await
    }

    async fn stop(&self, c: &ComponentSpec) -> Result<(), SuperviseError> {
        self.stop_impl(c).await
    }

    async fn restart(&self, c: &ComponentSpec) -> Result<(), SuperviseError> {
        if self.keeper_handles(c.name).is_none() {
            self.start_impl(c).await.map(|_| ())
        } else {
            self.send(c.name, Cmd::Restart).await
        }
    }

    async fn status(&self, c: &ComponentSpec) -> Result<UnitStatus, SuperviseError> {
        self.status_impl(c).await
    }

    fn watch(&self) -> broadcast::Receiver<BackendEvent> {
        self.events.subscribe()
    }
}

/// How the keeper holds a running process.
enum Held {
    /// Spawned by this agent: reaped through `wait`.
    Own(tokio::process::Child),
    /// Adopted from an earlier agent: not our child, its exit is seen through a pidfd.
    Adopted(AsyncFd<OwnedFd>),
}

fn open_pidfd(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("invalid pid"))?;
    let fd = rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK)?;
    // Deprecated because it is unsound for handles that do not own their fd; an OwnedFd does,
    // which is the I/O safety the deprecation asks for (and `register` would need unsafe code).
    #[allow(deprecated)]
    AsyncFd::new(fd)
}

/// Waits until the held process exits and says how.
async fn wait_exit(held: &mut Held) -> String {
    match held {
        Held::Own(child) => match child.wait().await {
            Ok(status) => describe_exit(status),
            Err(e) => format!("wait failed: {e}"),
        },
        Held::Adopted(fd) => match fd.readable().await {
            // A pidfd turns readable when the process exits; its status went to its real parent.
            Ok(_) => "exited (adopted process: status unknown)".into(),
            Err(e) => format!("pidfd wait failed: {e}"),
        },
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".into(),
    }
}

/// Signals the held process and its group, never a recycled pid: our own child is not reaped
/// until `wait` returns, so its pid (and the group it leads) stays ours until then and a child
/// already reaped is not signalled at all; an adopted process is signalled through its pidfd
/// first, and its group only when that succeeded (the process was alive, so its pid still led
/// its group).
fn signal_group(
    name: ComponentName,
    pid: u32,
    held: &Held,
    sig: Signal,
    label: &'static str,
) -> Result<(), SuperviseError> {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    let result = match held {
        // Reaped already: the pid may be anyone's now.
        Held::Own(child) if child.id().is_none() => Ok(()),
        // Children lead their own group (pgid = pid). Fall back to the process alone if the
        // group is gone (its leader may have changed groups).
        Held::Own(_) => rustix::process::kill_process_group(p, sig)
            .or_else(|_| rustix::process::kill_process(p, sig)),
        // The pidfd reaches the process itself or fails; the group is a bonus.
        Held::Adopted(fd) => rustix::process::pidfd_send_signal(fd.get_ref(), sig).map(|()| {
            let _ = rustix::process::kill_process_group(p, sig);
        }),
    };
    match result {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(SuperviseError::Signal {
            component: name,
            pid,
            signal: label,
            source: e.into(),
        }),
    }
}

/// SIGTERM, up to `timeout` for the exit, then SIGKILL and a short wait.
async fn stop_held(
    name: ComponentName,
    pid: u32,
    held: &mut Held,
    timeout: Duration,
) -> Result<String, SuperviseError> {
    signal_group(name, pid, held, Signal::TERM, "SIGTERM")?;
    if let Ok(how) = tokio::time::timeout(timeout, wait_exit(held)).await {
        return Ok(how);
    }
    tracing::warn!(component = %name, pid, "{name} ignored SIGTERM for {timeout:?}; sending SIGKILL");
    signal_group(name, pid, held, Signal::KILL, "SIGKILL")?;
    tokio::time::timeout(KILL_WAIT, wait_exit(held))
        .await
        .map_err(|_| SuperviseError::StopTimeout {
            component: name,
            waited: timeout + KILL_WAIT,
        })
}

/// Spawns the component in its own process group with the ownership marker, output appended to
/// its log file, and records the pid file.
fn spawn_child(
    spec: &ComponentSpec,
    marker: &str,
    log_path: &Path,
    pid_path: &Path,
) -> Result<(u32, tokio::process::Child), SuperviseError> {
    let io = |op: &'static str| {
        let path = log_path.to_path_buf();
        move |source| SuperviseError::Io { op, path, source }
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io("open child log"))?;
    let log_err = log.try_clone().map_err(io("duplicate child log handle"))?;
    let mut cmd = tokio::process::Command::new(&spec.exec.program);
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    // After the removals: what the component is configured with is deliberate and stays.
    cmd.args(&spec.exec.args)
        .envs(spec.exec.env.iter().map(|(k, v)| (k, v)))
        .env(MARKER_ENV, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        component: spec.name,
        program: spec.exec.program.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    // The start time is fixed at fork, so reading it right away is race-free.
    let start_ticks = pidfile::proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
    let exe =
        std::fs::canonicalize(&spec.exec.program).unwrap_or_else(|_| spec.exec.program.clone());
    pidfile::write(
        pid_path,
        &PidRecord {
            pid,
            start_ticks,
            exe,
        },
    )?;
    Ok((pid, child))
}

struct KeeperTask {
    spec: ComponentSpec,
    marker: String,
    pid_path: PathBuf,
    log_path: PathBuf,
    backoff: BackoffPolicy,
    stop_timeout: Duration,
    events: broadcast::Sender<BackendEvent>,
    status: watch::Sender<UnitStatus>,
    restarts: u32,
    /// Failures in a row (exits or forced restarts without a stable run in between).
    failures: u32,
}

enum Next {
    /// Respawn after the backoff delay.
    Respawn,
    /// Respawn at once (a restart asked for while stopped).
    RespawnNow,
    /// Stay stopped until told otherwise.
    Park,
    /// The backend is gone: leave the child as it is and end.
    Quit,
}

impl KeeperTask {
    fn emit(&self, kind: EventKind) {
        let _ = self.events.send(BackendEvent {
            component: self.spec.name,
            kind,
        });
    }

    fn set_status(&self, state: RunState, detail: &str, pid: Option<u32>) {
        self.status.send_replace(UnitStatus {
            state,
            detail: detail.into(),
            pid,
            restarts: self.restarts,
        });
    }

    fn note_failure(&mut self, ran_for: Duration) {
        if ran_for >= self.backoff.reset_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
    }

    async fn run(mut self, mut running: Option<(u32, Held, Instant)>, mut rx: mpsc::Receiver<Cmd>) {
        let name = self.spec.name;
        loop {
            let next = match running.as_mut() {
                Some((pid, held, since)) => {
                    let pid = *pid;
                    tokio::select! {
                        how = wait_exit(held) => {
                            tracing::warn!(component = %name, pid, "{name} exited: {how}");
                            self.emit(EventKind::Exited { pid: Some(pid), how });
                            let ran = since.elapsed();
                            self.note_failure(ran);
                            Next::Respawn
                        }
                        cmd = rx.recv() => match cmd {
                            None => Next::Quit,
                            Some(Cmd::Stop(reply)) => {
                                let r = stop_held(name, pid, held, self.stop_timeout).await;
                                let r = r.and_then(|how| {
                                    self.emit(EventKind::Exited { pid: Some(pid), how });
                                    pidfile::remove(&self.pid_path)
                                });
                                self.set_status(RunState::Inactive, "stopped", None);
                                let _ = reply.send(r);
                                Next::Park
                            }
                            Some(Cmd::Restart(reply)) => {
                                let r = stop_held(name, pid, held, self.stop_timeout).await;
                                let ok = r.is_ok();
                                if let Ok(how) = &r {
                                    self.emit(EventKind::Exited { pid: Some(pid), how: format!("stopped for restart: {how}") });
                                }
                                let ran = since.elapsed();
                                let _ = reply.send(r.map(|_| ()));
                                if ok {
                                    self.note_failure(ran);
                                    Next::Respawn
                                } else {
                                    continue;
                                }
                            }
                        },
                    }
                }
                None => match rx.recv().await {
                    None => Next::Quit,
                    Some(Cmd::Stop(reply)) => {
                        let _ = reply.send(Ok(()));
                        Next::Park
                    }
                    Some(Cmd::Restart(reply)) => {
                        let _ = reply.send(Ok(()));
                        self.failures = 0;
                        Next::RespawnNow
                    }
                },
            };
            running = match next {
                Next::Quit => return,
                Next::Park => None,
                Next::Respawn => self.respawn(&mut rx, true).await,
                Next::RespawnNow => self.respawn(&mut rx, false).await,
            };
        }
    }

    /// Waits out the backoff (unless `wait` is false) and spawns again; spawn failures back off
    /// and retry. A Stop during the wait parks the keeper; a closed channel ends it.
    async fn respawn(
        &mut self,
        rx: &mut mpsc::Receiver<Cmd>,
        mut wait: bool,
    ) -> Option<(u32, Held, Instant)> {
        let name = self.spec.name;
        loop {
            if wait {
                let delay = self.backoff.delay(self.failures);
                self.set_status(
                    RunState::Restarting,
                    &format!("restarting in {} ms", delay.as_millis()),
                    None,
                );
                self.emit(EventKind::RestartScheduled {
                    delay,
                    failures: self.failures,
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    cmd = rx.recv() => match cmd {
                        None => return None,
                        Some(Cmd::Stop(reply)) => {
                            let _ = reply.send(pidfile::remove(&self.pid_path));
                            self.set_status(RunState::Inactive, "stopped", None);
                            return None;
                        }
                        // Asked to restart while waiting: skip the rest of the wait.
                        Some(Cmd::Restart(reply)) => { let _ = reply.send(Ok(())); }
                    },
                }
            }
            wait = true;
            match spawn_child(&self.spec, &self.marker, &self.log_path, &self.pid_path) {
                Ok((pid, child)) => {
                    self.restarts = self.restarts.saturating_add(1);
                    tracing::info!(component = %name, pid, restarts = self.restarts, "{name} restarted");
                    self.set_status(RunState::Active, "running", Some(pid));
                    self.emit(EventKind::Restarted {
                        pid: Some(pid),
                        restarts: self.restarts,
                    });
                    self.emit(EventKind::Running {
                        pid: Some(pid),
                        adopted: false,
                    });
                    return Some((pid, Held::Own(child), Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(component = %name, "restart of {name} failed: {e}");
                    self.emit(EventKind::SpawnFailed {
                        error: e.to_string(),
                    });
                    self.failures = self.failures.saturating_add(1);
                }
            }
        }
    }
}

/// Reads a position file; `None` when absent or unreadable (start over: duplicates, not loss).
fn read_position(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Records how far output was handed to telemetry: temp file + rename, so a crash leaves the
/// old or the new position, never a torn one. No fsync: a position lost in a power cut means
/// lines shipped twice, which at-least-once allows.
fn write_position(path: &Path, offset: u64) {
    if let Err(e) = crate::fsutil::replace_unsynced(path, format!("{offset}\n").as_bytes()) {
        tracing::warn!(
            "cannot record the child-output position in {}: {e}",
            path.display()
        );
    }
}

/// Follows a child log file and republishes each complete line, tagged with the component: to
/// the agent's log, to [`ProcessBackend::output`] subscribers, and, when `telemetry` is set, to
/// its child-output source — waiting while telemetry is behind. The position recorded for the
/// next agent is the one telemetry acknowledged as spooled ([`crate::output::ChildAck`]), so a
/// kill loses no line that was only in flight; the file is truncated only when everything read
/// from it is acknowledged.
async fn tail_log(
    name: ComponentName,
    path: PathBuf,
    mut offset: u64,
    out: broadcast::Sender<OutputLine>,
    telemetry: Option<(crate::output::ChildLineSender, PathBuf)>,
    max_unread: u64,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let component: std::sync::Arc<str> = std::sync::Arc::from(name.as_str());
    // Durable position: where the tail started, then what telemetry acknowledged.
    let durable = std::sync::Arc::new(AtomicU64::new(offset));
    let mut partial: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut interval = tokio::time::interval(LOG_TAIL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recorded = None;
    let record = |recorded: &mut Option<u64>| {
        if let Some((_, pos_path)) = &telemetry {
            let now = durable.load(Ordering::Acquire);
            if *recorded != Some(now) {
                write_position(pos_path, now);
                *recorded = Some(now);
            }
        }
    };
    loop {
        interval.tick().await;
        // Plain std I/O: a local regular file read returns at once, and tokio::fs would hop
        // to the blocking pool for every call.
        let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // truncated by someone else
            partial.clear();
            durable.store(0, Ordering::Release);
        }
        // Where the line being assembled started: what a skip drops from.
        let mut skip_from: Option<u64> = None;
        if len > offset && file.seek(SeekFrom::Start(offset)).is_ok() {
            'read: while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                offset += n as u64;
                let mut at = offset - n as u64;
                for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                    let start = at - partial.len() as u64;
                    at += chunk.len() as u64;
                    partial.extend_from_slice(chunk);
                    if partial.ends_with(b"\n") || partial.len() >= MAX_LINE_BYTES {
                        // A hole punched by an earlier skip reads as NULs: nothing to ship.
                        if partial.iter().all(|b| *b == 0 || *b == b'\n') && partial[0] == 0 {
                            partial.clear();
                            continue;
                        }
                        let line = String::from_utf8_lossy(&partial)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        partial.clear();
                        tracing::info!(target: "hybrid_agent::child", component = %name, "{line}");
                        if let Some((sender, _)) = &telemetry {
                            let line = crate::output::ChildLine {
                                component: component.clone(),
                                stream: crate::output::ChildStream::Combined,
                                line: line.clone(),
                                timestamp: std::time::SystemTime::now(),
                                ack: Some(crate::output::ChildAck {
                                    cell: durable.clone(),
                                    offset: at,
                                }),
                            };
                            match send_capped(sender, line, &file, at, max_unread).await {
                                Sent::Yes => {}
                                // Telemetry stopped (agent shutting down): the recorded
                                // position stays at what was spooled, so the next agent ships
                                // the rest.
                                Sent::Closed => {
                                    record(&mut recorded);
                                    return;
                                }
                                Sent::OverCap => {
                                    skip_from = Some(start);
                                    break 'read;
                                }
                            }
                        }
                        let _ = out.send(OutputLine {
                            component: name,
                            line,
                        });
                    }
                }
            }
        }
        if let (Some(from), Some((sender, _))) = (skip_from, &telemetry) {
            // Telemetry has been behind for longer than the file may grow: keep the newest half
            // of the allowance, from a line start, and say what was skipped.
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let to = line_start_after(&mut file, len.saturating_sub(max_unread / 2)).max(from);
            partial.clear();
            offset = to;
            // Give the skipped part's disk space back now, while telemetry may still be stalled:
            // a hole keeps every offset (lines in flight keep their acknowledgements), and a
            // later reader finds NULs there, which it skips.
            let _ = punch(&file, to);
            let dropped = to - from;
            tracing::warn!(component = %name, dropped_bytes = dropped, "telemetry has been behind for longer than {} MiB of {name} output; skipped the oldest {dropped} bytes", max_unread >> 20);
            let marker = crate::output::ChildLine {
                component: component.clone(),
                stream: crate::output::ChildStream::Combined,
                line: format!(
                    "[hybrid-agent] {dropped} bytes of {name} output skipped: telemetry was behind for longer than the {} MiB the log file may hold unread",
                    max_unread >> 20
                ),
                timestamp: std::time::SystemTime::now(),
                ack: Some(crate::output::ChildAck {
                    cell: durable.clone(),
                    offset: to,
                }),
            };
            match send_capped(sender, marker, &file, to, max_unread).await {
                Sent::Closed => {
                    record(&mut recorded);
                    return;
                }
                // Still over: the next pass skips again.
                Sent::Yes | Sent::OverCap => {}
            }
        }
        let all_durable = telemetry.is_none() || durable.load(Ordering::Acquire) == offset;
        if offset >= LOG_FILE_TRUNCATE_BYTES && partial.is_empty() && all_durable {
            match reclaim(&file, offset) {
                Reclaimed::Collapsed(n) => {
                    offset -= n;
                    durable.store(offset, Ordering::Release);
                }
                Reclaimed::Punched | Reclaimed::Nothing => {}
            }
        }
        record(&mut recorded);
    }
}

/// How a capped send ended.
enum Sent {
    Yes,
    /// The receiver is gone.
    Closed,
    /// The receiver stayed behind while the file grew past `max_unread` unread bytes after
    /// `at`: the line was not sent.
    OverCap,
}

/// Sends `line`, waiting while telemetry is behind, but not while the file grows past
/// `max_unread` bytes beyond `at`.
async fn send_capped(
    sender: &crate::output::ChildLineSender,
    line: crate::output::ChildLine,
    file: &std::fs::File,
    at: u64,
    max_unread: u64,
) -> Sent {
    loop {
        tokio::select! {
            sent = sender.send(line.clone()) => return if sent { Sent::Yes } else { Sent::Closed },
            _ = tokio::time::sleep(LOG_TAIL_INTERVAL * 4) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if len.saturating_sub(at) > max_unread {
                    return Sent::OverCap;
                }
            }
        }
    }
}

/// The offset just past the first newline at or after `from` (or `from` at the end).
fn line_start_after(file: &mut std::fs::File, from: u64) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = from;
    if file.seek(SeekFrom::Start(from)).is_err() {
        return from;
    }
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
            return pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    from
}

/// `upto` rounded down to the file's block size: what `fallocate` can remove or free.
fn block_aligned(file: &std::fs::File, upto: u64) -> u64 {
    let block = rustix::fs::fstat(file)
        .ok()
        .and_then(|st| u64::try_from(st.st_blksize).ok())
        .filter(|b| *b > 0)
        .unwrap_or(4096);
    upto - upto % block
}

/// Frees the blocks of the first `upto` bytes (block-aligned), keeping the file's size and
/// offsets; reads of them return NULs. Whether anything was freed.
fn punch(file: &std::fs::File, upto: u64) -> bool {
    use rustix::fs::{FallocateFlags, fallocate};
    let n = block_aligned(file, upto);
    n > 0
        && fallocate(
            file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            n,
        )
        .is_ok()
}

/// What [`reclaim`] did.
#[derive(Debug, PartialEq, Eq)]
enum Reclaimed {
    /// The first `n` bytes were removed; the rest (and the child's later writes) moved down.
    Collapsed(u64),
    /// The read prefix's blocks were freed; offsets are unchanged.
    Punched,
    Nothing,
}

/// Gives back the disk space of the first `upto` bytes of a child log file, which the child
/// keeps appending to (O_APPEND) at any moment. Truncating (the length checked, then
/// `set_len(0)`) loses whatever the child writes between the two. `FALLOC_FL_COLLAPSE_RANGE`
/// removes the block-aligned read prefix in one operation (ext4, xfs): the child's appends land
/// at the new end. Where the filesystem lacks it (tmpfs, btrfs), [`punch`] frees the prefix's
/// blocks and leaves the offsets (the file is sparse, its disk use bounded).
fn reclaim(file: &std::fs::File, upto: u64) -> Reclaimed {
    use rustix::fs::{FallocateFlags, fallocate};
    let n = block_aligned(file, upto);
    if n == 0 {
        return Reclaimed::Nothing;
    }
    // The collapsed range must end before the end of the file.
    if fallocate(file, FallocateFlags::COLLAPSE_RANGE, 0, n).is_ok() {
        return Reclaimed::Collapsed(n);
    }
    if punch(file, n) {
        Reclaimed::Punched
    } else {
        Reclaimed::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer appends numbered lines (O_APPEND, as a child does) while the reader reads and
    /// reclaims the read part over and over: every line arrives once, in order. Truncation lost
    /// the lines written between its length check and `set_len(0)`.
    #[test]
    fn reclaiming_while_the_child_writes_loses_nothing() {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        // The temp dir's filesystem (ext4 here: COLLAPSE_RANGE) and a tmpfs (PUNCH_HOLE).
        let mut dirs = vec![std::env::temp_dir()];
        if std::path::Path::new("/dev/shm").is_dir() {
            dirs.push("/dev/shm".into());
        }
        for dir in dirs {
            let dir = tempfile::tempdir_in(&dir).expect("tempdir");
            let path = dir.path().join("child.log");
            let done = std::sync::Arc::new(AtomicBool::new(false));
            const LINES: u32 = 200_000;
            let writer = {
                let (path, done) = (path.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .expect("open");
                    for i in 0..LINES {
                        writeln!(f, "line {i:08} {}", "x".repeat(40)).expect("write");
                    }
                    done.store(true, Ordering::SeqCst);
                })
            };
            let mut offset = 0u64;
            let mut next = 0u32;
            let mut partial = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut reclaims = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let Ok(mut f) = OpenOptions::new().read(true).write(true).open(&path) else {
                    continue;
                };
                f.seek(SeekFrom::Start(offset)).expect("seek");
                loop {
                    let n = f.read(&mut buf).expect("read");
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                    for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                        partial.extend_from_slice(chunk);
                        if partial.ends_with(b"\n") {
                            let line = String::from_utf8_lossy(&partial).to_string();
                            assert!(
                                line.starts_with(&format!("line {next:08} ")),
                                "expected line {next}, got {line:?} (in {})",
                                dir.path().display()
                            );
                            next += 1;
                            partial.clear();
                        }
                    }
                }
                if partial.is_empty() && offset >= 64 * 1024 {
                    match reclaim(&f, offset) {
                        Reclaimed::Collapsed(n) => offset -= n,
                        Reclaimed::Punched | Reclaimed::Nothing => {}
                    }
                    reclaims += 1;
                }
                if finished && next == LINES {
                    break;
                }
                assert!(!finished || f.metadata().map(|m| m.len()).unwrap_or(0) >= offset);
            }
            writer.join().expect("writer");
            assert_eq!(next, LINES);
            assert!(reclaims > 0, "the test never reclaimed");
        }
    }

    #[test]
    fn exit_descriptions_name_code_or_signal() {
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(3 << 8)),
            "exit code 3"
        );
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(9)),
            "killed by signal 9"
        );
    }
}
