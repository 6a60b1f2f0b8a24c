//! The built-in backend against real processes: Debian's containerd and the stand-in kubelet.
//!
//! - containerd killed with SIGKILL is restarted and answers its Version call again;
//! - the agent killed with SIGKILL and started again adopts the running containerd (same pid)
//!   instead of starting a second one, thanks to the pid file and the ownership check;
//! - kubelet starts only after containerd answered;
//! - a crash-looping stand-in is restarted with delays that double up to the cap, and the status
//!   says degraded; once it behaves it is healthy again;
//! - a stand-in that stays up but answers /healthz with 500, or not at all, is restarted after K
//!   failed probes in a row;
//! - a pid file naming a process that fails the ownership check is never signalled or adopted.
//!
//! The "agent" of the adoption test is this test binary re-executed as a separate process
//! (`agent_process`, ignored unless called that way), driving the public supervise API the way
//! `hybrid-agent run` does, and writing each status snapshot to a file the test reads.
#![allow(clippy::unwrap_used)]

mod supervise_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybrid_agent::supervise::backoff::{BackoffPolicy, CrashLoopPolicy};
use hybrid_agent::supervise::pidfile::{self, PidRecord};
use hybrid_agent::supervise::process::{ProcessBackend, ProcessSettings};
use hybrid_agent::supervise::{
    Backend, BackendKind, ComponentName, ComponentState, EventKind, Selection, StartOutcome,
    SupervisionStatus, Supervisor, SupervisorConfig,
};
use serde::{Deserialize, Serialize};
use supervise_support::*;

const AGENT_ENV: &str = "SUPERVISE_TEST_AGENT";

fn selection() -> Selection {
    Selection {
        kind: BackendKind::Process,
        reason: "test: built-in backend".into(),
    }
}

/// What the re-executed agent runs.
#[derive(Serialize, Deserialize)]
struct AgentConfig {
    state_dir: PathBuf,
    status_file: PathBuf,
    history_file: PathBuf,
    containerd_config: Option<PathBuf>,
    containerd_socket: Option<PathBuf>,
    kubelet_port: Option<u16>,
    kubelet_args: Vec<String>,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
}

/// The agent process: runs the supervisor until SIGTERM, mirroring every status change to
/// `status_file` (atomically) and `history_file` (one JSON line per change).
#[test]
#[ignore = "helper: started as a separate agent process by the tests in this file"]
fn agent_process() {
    let Ok(text) = std::env::var(AGENT_ENV) else {
        panic!("agent_process is a helper: run it with {AGENT_ENV} set");
    };
    let cfg: AgentConfig = serde_json::from_str(&text).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut components = Vec::new();
        if let (Some(config), Some(socket)) = (&cfg.containerd_config, &cfg.containerd_socket) {
            let mut c = ContainerdFixtureRef { config, socket }.component();
            c.probe_policy = fast_probe(3, Duration::from_secs(5));
            components.push(c);
        }
        if let Some(port) = cfg.kubelet_port {
            let extra: Vec<&str> = cfg.kubelet_args.iter().map(String::as_str).collect();
            components.push(standin_component(
                port,
                &extra,
                fast_probe(3, Duration::from_secs(2)),
            ));
        }
        let mut settings = ProcessSettings::new(&cfg.state_dir);
        settings.backoff = BackoffPolicy {
            base: Duration::from_millis(cfg.backoff_base_ms),
            cap: Duration::from_millis(cfg.backoff_cap_ms),
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        };
        settings.stop_timeout = Duration::from_secs(5);
        let mut config = SupervisorConfig::new(components);
        config.crash_loop = CrashLoopPolicy {
            restarts: 4,
            window: Duration::from_secs(60),
        };
        let sup = Supervisor::new(ProcessBackend::new(settings), selection(), config);
        let mut status = sup.status();
        let (status_file, history_file) = (cfg.status_file.clone(), cfg.history_file.clone());
        tokio::spawn(async move {
            let mut history = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&history_file)
                .unwrap();
            loop {
                let snapshot = status.borrow_and_update().clone();
                let json = serde_json::to_string(&snapshot).unwrap();
                let tmp = status_file.with_extension("tmp");
                std::fs::write(&tmp, &json).unwrap();
                std::fs::rename(&tmp, &status_file).unwrap();
                writeln!(history, "{json}").unwrap();
                if status.changed().await.is_err() {
                    break;
                }
            }
        });
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        sup.run(async move {
            term.recv().await;
        })
        .await
        .unwrap();
    });
}

/// The containerd component from paths only (the agent process has no fixture of its own).
struct ContainerdFixtureRef<'a> {
    config: &'a Path,
    socket: &'a Path,
}

impl ContainerdFixtureRef<'_> {
    fn component(&self) -> hybrid_agent::supervise::ComponentSpec {
        hybrid_agent::supervise::ComponentSpec {
            name: ComponentName::Containerd,
            exec: hybrid_agent::supervise::ExecSpec {
                program: CONTAINERD.into(),
                args: vec!["--config".into(), self.config.display().to_string()],
                env: vec![],
            },
            unit: "containerd.service".into(),
            probe: hybrid_agent::supervise::Probe::ContainerdVersion {
                socket: self.socket.to_path_buf(),
            },
            probe_policy: fast_probe(3, Duration::from_secs(5)),
        }
    }
}

/// A running agent process; killed (SIGKILL) on drop so a failing test leaves none behind.
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn spawn(cfg: &AgentConfig, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        // /proc/self/exe, not current_exe(): the test binary may be relinked by a build while
        // this test runs, and the magic link still names the running one.
        let child = Command::new("/proc/self/exe")
            .args([
                "agent_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(AGENT_ENV, serde_json::to_string(cfg).unwrap())
            .env("STANDIN_KUBELET_BIN", standin_binary())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        AgentProcess { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads the agent's status file until `pred` holds (bounded).
fn wait_file_status(
    path: &Path,
    log: &Path,
    limit: Duration,
    what: &str,
    pred: impl Fn(&SupervisionStatus) -> bool,
) -> SupervisionStatus {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(s) = serde_json::from_str::<SupervisionStatus>(&text)
        {
            if pred(&s) {
                return s;
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "gave up after {limit:?} waiting for: {what}\nlast status: {}\nagent log:\n{}",
        serde_json::to_string_pretty(&last).unwrap(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Kills whatever the pid files in `state_dir` name, if still alive (cleanup after failures).
struct PidFileReaper(PathBuf);

impl Drop for PidFileReaper {
    fn drop(&mut self) {
        for c in [ComponentName::Containerd, ComponentName::Kubelet] {
            let path = ProcessSettings::new(&self.0).pid_file(c);
            if let Ok(Some(rec)) = pidfile::read(&path)
                && alive(rec.pid)
                && let Some(pid) = rustix::process::Pid::from_raw(rec.pid as i32)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn healthy(s: &SupervisionStatus, c: ComponentName) -> bool {
    s.component(c)
        .is_some_and(|c| c.state == ComponentState::Healthy && c.pid.is_some())
}

#[test]
fn containerd_is_restarted_after_kill_and_adopted_across_an_agent_restart() {
    let ctd = ContainerdFixture::new();
    let work = tempfile::tempdir().unwrap();
    let state_dir = work.path().join("state");
    let _reaper = PidFileReaper(state_dir.clone());
    let cfg = AgentConfig {
        state_dir: state_dir.clone(),
        status_file: work.path().join("status.json"),
        history_file: work.path().join("history.jsonl"),
        containerd_config: Some(ctd.config.clone()),
        containerd_socket: Some(ctd.socket.clone()),
        kubelet_port: Some(free_port()),
        kubelet_args: vec![],
        backoff_base_ms: 200,
        backoff_cap_ms: 2000,
    };
    let agent_log = work.path().join("agent.log");
    let dump = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    // 1. Started, both healthy; kubelet only after containerd answered.
    let mut agent = AgentProcess::spawn(&cfg, &agent_log);
    let s = wait_file_status(
        &cfg.status_file,
        &agent_log,
        Duration::from_secs(60),
        "containerd and kubelet healthy",
        |s| healthy(s, ComponentName::Containerd) && healthy(s, ComponentName::Kubelet),
    );
    let ctd1 = s.component(ComponentName::Containerd).unwrap().clone();
    let first_pid = ctd1.pid.unwrap();
    assert!(!ctd1.adopted);
    let probe = ctd1.last_probe.clone().unwrap();
    assert!(
        probe.ok && probe.detail.starts_with("containerd "),
        "probe detail: {}",
        probe.detail
    );
    let kubelet_pid = s.component(ComponentName::Kubelet).unwrap().pid.unwrap();

    let history: Vec<SupervisionStatus> = std::fs::read_to_string(&cfg.history_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first_ctd_ok = history
        .iter()
        .position(|s| {
            s.component(ComponentName::Containerd)
                .unwrap()
                .last_probe
                .as_ref()
                .is_some_and(|p| p.ok)
        })
        .unwrap();
    let first_kubelet_started = history
        .iter()
        .position(|s| {
            let k = s.component(ComponentName::Kubelet).unwrap();
            k.pid.is_some()
                || !matches!(
                    k.state,
                    ComponentState::Pending | ComponentState::WaitingForDependency
                )
        })
        .unwrap();
    assert!(
        first_ctd_ok < first_kubelet_started,
        "kubelet started (snapshot {first_kubelet_started}) before containerd answered (snapshot {first_ctd_ok})"
    );

    // 2. kill -9 containerd: restarted, healthy again, with a new pid.
    let killed_at = hybrid_agent::supervise::status::now_unix_ms();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first_pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let s = wait_file_status(
        &cfg.status_file,
        &agent_log,
        Duration::from_secs(60),
        "containerd restarted and healthy",
        |s| {
            let c = s.component(ComponentName::Containerd).unwrap();
            c.restarts >= 1
                && c.pid.is_some_and(|p| p != first_pid)
                && c.state == ComponentState::Healthy
                && c.last_probe
                    .as_ref()
                    .is_some_and(|p| p.ok && p.at_unix_ms > killed_at)
        },
    );
    let second_pid = s.component(ComponentName::Containerd).unwrap().pid.unwrap();
    assert!(!alive(first_pid));
    assert!(alive(second_pid));

    // 3. The agent dies hard; containerd and kubelet keep running.
    agent.kill9();
    assert!(alive(second_pid), "containerd died with the agent");
    assert!(
        alive(kubelet_pid),
        "the stand-in kubelet died with the agent"
    );
    // Output goes to a log file, not a pipe to the dead agent: a child that writes now survives
    // (through a pipe it would die of EPIPE/SIGPIPE, and could never be adopted).
    let port = cfg.kubelet_port.unwrap();
    let out = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            &format!("http://127.0.0.1:{port}/standin/mode/healthy"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "the orphaned stand-in did not answer");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(kubelet_pid),
        "the stand-in died writing output after the agent died"
    );
    let log =
        std::fs::read_to_string(ProcessSettings::new(&state_dir).log_file(ComponentName::Kubelet))
            .unwrap();
    assert!(log.contains("mode set to Healthy over HTTP"), "{log}");

    // 4. A new agent adopts both: same pids, no restart.
    std::fs::remove_file(&cfg.status_file).unwrap();
    let _agent2 = AgentProcess::spawn(&cfg, &agent_log);
    let s = wait_file_status(
        &cfg.status_file,
        &agent_log,
        Duration::from_secs(60),
        "containerd adopted and healthy",
        |s| healthy(s, ComponentName::Containerd) && healthy(s, ComponentName::Kubelet),
    );
    let c = s.component(ComponentName::Containerd).unwrap();
    assert!(c.adopted, "containerd was not adopted:\n{}", dump());
    assert_eq!(
        c.pid,
        Some(second_pid),
        "containerd was restarted instead of adopted"
    );
    assert_eq!(c.restarts, 0);
    let k = s.component(ComponentName::Kubelet).unwrap();
    assert!(k.adopted);
    assert_eq!(k.pid, Some(kubelet_pid));
    println!(
        "figures: containerd pid {first_pid} -> kill -9 -> restarted as {second_pid}; agent killed and restarted -> adopted {second_pid} (restarts 0); kubelet stand-in adopted {kubelet_pid}"
    );

    // 5. Stop through a backend that did not start them: the ownership check lets it.
    drop(_agent2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = ProcessBackend::new(ProcessSettings::new(&state_dir));
        backend
            .stop(&ctd.component(fast_probe(3, Duration::ZERO)))
            .await
            .unwrap();
        backend
            .stop(&standin_component(
                cfg.kubelet_port.unwrap(),
                &[],
                fast_probe(3, Duration::ZERO),
            ))
            .await
            .unwrap();
    });
    assert!(!alive(second_pid), "containerd still runs after stop");
    assert!(!alive(kubelet_pid), "the stand-in still runs after stop");
}

fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(800),
        jitter: 0.25,
        reset_after: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_standin_backs_off_to_the_cap_and_is_degraded() {
    let work = tempfile::tempdir().unwrap();
    let control = work.path().join("mode");
    std::fs::write(&control, "crash").unwrap();
    let port = free_port();
    let spec = standin_component(
        port,
        &["--control-file", control.to_str().unwrap()],
        fast_probe(3, Duration::from_millis(500)),
    );
    let mut settings = ProcessSettings::new(work.path().join("state"));
    let backoff = fast_backoff();
    settings.backoff = backoff.clone();
    let _reaper = PidFileReaper(settings.state_dir.clone());
    let mut config = SupervisorConfig::new(vec![spec]);
    config.crash_loop = CrashLoopPolicy {
        restarts: 4,
        window: Duration::from_secs(60),
    };
    config.on_shutdown = hybrid_agent::supervise::ShutdownAction::Stop;
    let sup = Supervisor::new(ProcessBackend::new(settings), selection(), config);
    let mut status = sup.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sup.run(async move {
        let _ = stop_rx.await;
    }));

    // Seven restarts: 100, 200, 400, 800 (cap), 800, 800, 800 ms before jitter.
    let s = wait_status(
        &mut status,
        Duration::from_secs(60),
        "7 restart delays recorded and degraded",
        |s| {
            let k = s.component(ComponentName::Kubelet).unwrap();
            k.recent_restart_delays_ms.len() >= 7 && k.degraded
        },
    )
    .await;
    let k = s.component(ComponentName::Kubelet).unwrap();
    assert!(s.degraded());
    assert_ne!(k.state, ComponentState::Healthy);
    for (i, d) in k.recent_restart_delays_ms.iter().enumerate() {
        let step = backoff.step(i as u32 + 1).as_millis() as u64;
        let floor = (step as f64 * (1.0 - backoff.jitter)).floor() as u64;
        assert!(
            (floor..=step).contains(d),
            "delay #{} was {d} ms, expected {floor}..={step} ms; all: {:?}",
            i + 1,
            k.recent_restart_delays_ms
        );
    }
    let cap = backoff.cap.as_millis() as u64;
    assert!(
        k.recent_restart_delays_ms.iter().all(|d| *d <= cap),
        "a delay exceeded the cap"
    );
    println!(
        "figures: crash-loop restart delays (ms) {:?}, cap {cap} ms, restarts {}",
        k.recent_restart_delays_ms, k.restarts
    );

    // Still retrying at the cap: once the stand-in behaves, it comes back healthy.
    std::fs::write(&control, "healthy").unwrap();
    let s = wait_status(
        &mut status,
        Duration::from_secs(30),
        "stand-in healthy again",
        |s| s.component(ComponentName::Kubelet).unwrap().state == ComponentState::Healthy,
    )
    .await;
    let pid = s.component(ComponentName::Kubelet).unwrap().pid.unwrap();
    assert!(alive(pid));

    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert!(
        !alive(pid),
        "ShutdownAction::Stop left the stand-in running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_or_hung_standin_is_restarted_after_k_failed_probes() {
    const K: u32 = 3;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut policy = fast_probe(K, Duration::from_millis(300));
    policy.timeout = Duration::from_millis(300);
    let spec = standin_component(port, &[], policy);
    let mut settings = ProcessSettings::new(work.path().join("state"));
    settings.backoff = fast_backoff();
    let _reaper = PidFileReaper(settings.state_dir.clone());
    let backend = Arc::new(ProcessBackend::new(settings));
    let mut events = backend.watch();
    let mut config = SupervisorConfig::new(vec![spec]);
    config.on_shutdown = hybrid_agent::supervise::ShutdownAction::Stop;
    let sup = Supervisor::with_shared(backend.clone(), selection(), config);
    let mut status = sup.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sup.run(async move {
        let _ = stop_rx.await;
    }));
    // Record the highest failure count seen before each restart.
    let mut watcher = sup_watch(status.clone());

    let s = wait_status(
        &mut status,
        Duration::from_secs(30),
        "stand-in healthy",
        |s| s.component(ComponentName::Kubelet).unwrap().state == ComponentState::Healthy,
    )
    .await;
    let pid1 = s.component(ComponentName::Kubelet).unwrap().pid.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    for (round, mode) in [(1u32, "unhealthy"), (2, "hang")] {
        let before = s_pid(&status);
        let r = http
            .post(format!("http://127.0.0.1:{port}/standin/mode/{mode}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let s = wait_status(
            &mut status,
            Duration::from_secs(30),
            &format!("restart #{round} after {mode}"),
            |s| {
                let k = s.component(ComponentName::Kubelet).unwrap();
                k.probe_restarts == round
                    && k.state == ComponentState::Healthy
                    && k.pid.is_some_and(|p| p != before)
            },
        )
        .await;
        let k = s.component(ComponentName::Kubelet).unwrap();
        assert_eq!(
            k.restarts, round,
            "the backend restarted it more than once per round"
        );
        assert!(!alive(before), "the {mode} stand-in {before} still runs");
        let max_seen = watcher.max_failures_before_restart(round).await;
        assert_eq!(
            max_seen,
            K - 1,
            "failures counted before restart #{round} (the K-th resets the count as it restarts)"
        );
    }
    assert!(!alive(pid1));

    // The restarts were ours (stop for restart), not crashes.
    let mut stops = 0;
    while let Ok(ev) = events.try_recv() {
        if let EventKind::Exited { how, .. } = ev.kind {
            assert!(
                how.starts_with("stopped for restart"),
                "unexpected exit: {how}"
            );
            stops += 1;
        }
    }
    assert_eq!(stops, 2);
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

fn s_pid(rx: &tokio::sync::watch::Receiver<SupervisionStatus>) -> u32 {
    rx.borrow()
        .component(ComponentName::Kubelet)
        .unwrap()
        .pid
        .unwrap()
}

/// Follows every status change and remembers the highest consecutive failure count seen while
/// `probe_restarts` was at each value.
struct FailureWatch {
    max_by_round: Arc<std::sync::Mutex<Vec<u32>>>,
}

fn sup_watch(mut rx: tokio::sync::watch::Receiver<SupervisionStatus>) -> FailureWatch {
    let max_by_round = Arc::new(std::sync::Mutex::new(vec![0u32; 8]));
    let m = max_by_round.clone();
    tokio::spawn(async move {
        loop {
            {
                let s = rx.borrow_and_update();
                if let Some(k) = s.component(ComponentName::Kubelet) {
                    let mut v = m.lock().unwrap();
                    let i = k.probe_restarts as usize;
                    if i < v.len() {
                        v[i] = v[i].max(k.consecutive_probe_failures);
                    }
                }
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    FailureWatch { max_by_round }
}

impl FailureWatch {
    async fn max_failures_before_restart(&mut self, round: u32) -> u32 {
        self.max_by_round.lock().unwrap()[(round - 1) as usize]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_file_naming_a_foreign_process_is_neither_adopted_nor_signalled() {
    let work = tempfile::tempdir().unwrap();
    let settings = ProcessSettings::new(work.path().join("state"));
    let _reaper = PidFileReaper(settings.state_dir.clone());
    let (port_foreign, port_ours) = (free_port(), free_port());
    // Same executable, but started without our marker: e.g. an administrator's own copy.
    let mut foreign = Command::new(standin_binary())
        .args(["--healthz-port", &port_foreign.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let fpid = foreign.id();
    let (_, start_ticks) = pidfile::proc_stat(fpid).unwrap();
    std::fs::create_dir_all(settings.pid_file(ComponentName::Kubelet).parent().unwrap()).unwrap();
    pidfile::write(
        &settings.pid_file(ComponentName::Kubelet),
        &PidRecord {
            pid: fpid,
            start_ticks,
            exe: standin_binary(),
        },
    )
    .unwrap();

    let backend = ProcessBackend::new(settings.clone());
    let spec = standin_component(port_ours, &[], fast_probe(3, Duration::ZERO));
    let outcome = backend.start(&spec).await.unwrap();
    let StartOutcome::Started { pid: Some(ours) } = outcome else {
        panic!("expected a fresh start, got {outcome:?}");
    };
    assert_ne!(ours, fpid);
    assert!(alive(fpid), "the foreign process was signalled");
    assert_eq!(
        pidfile::read(&settings.pid_file(ComponentName::Kubelet))
            .unwrap()
            .map(|r| r.pid),
        Some(ours)
    );
    backend.stop(&spec).await.unwrap();
    assert!(!alive(ours));
    assert!(alive(fpid), "stopping ours touched the foreign process");
    let _ = foreign.kill();
    let _ = foreign.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_output_is_captured_line_by_line_and_tagged() {
    let work = tempfile::tempdir().unwrap();
    let settings = ProcessSettings::new(work.path().join("state"));
    let _reaper = PidFileReaper(settings.state_dir.clone());
    let backend = ProcessBackend::new(settings);
    let mut output = backend.output();
    let port = free_port();
    let spec = standin_component(port, &[], fast_probe(3, Duration::ZERO));
    backend.start(&spec).await.unwrap();
    let want = format!("serving /healthz on 127.0.0.1:{port}");
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let l = output.recv().await.unwrap();
            if l.line.contains(&want) {
                return l;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no output line containing {want:?}"));
    assert_eq!(line.component, ComponentName::Kubelet);
    assert!(
        line.line
            .starts_with("standin-kubelet [STAND-IN, not kubelet]: "),
        "{:?}",
        line.line
    );
    assert!(!line.line.ends_with('\n'));
    backend.stop(&spec).await.unwrap();
}

const ENV_DUMP_ENV: &str = "SUPERVISE_TEST_ENV_DUMP";

/// Secrets the agent may hold in its own environment (the activation code for `join`, AWS keys
/// from the operator's shell or a systemd drop-in).
const SECRET_VARS: &[&str] = &[
    "HYBRID_AGENT_ACTIVATION_CODE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// Helper for the test below: an agent process (with secrets in its environment) that starts a
/// child dumping its environment to the file named by `ENV_DUMP_ENV`, then stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: started as a separate agent process by the env test in this file"]
async fn env_dump_agent_process() {
    let Ok(dump) = std::env::var(ENV_DUMP_ENV) else {
        panic!("env_dump_agent_process is a helper: run it with {ENV_DUMP_ENV} set");
    };
    let dump = PathBuf::from(dump);
    let settings = ProcessSettings::new(dump.parent().unwrap().join("state"));
    let _reaper = PidFileReaper(settings.state_dir.clone());
    let backend = ProcessBackend::new(settings);
    let mut spec = standin_component(free_port(), &[], fast_probe(3, Duration::ZERO));
    spec.exec = hybrid_agent::supervise::ExecSpec {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "env > '{}.part' && mv '{0}.part' '{0}' && exec sleep 60",
                dump.display()
            ),
        ],
        // What the component is configured with still reaches it.
        env: vec![(
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            "/root/.aws/credentials".into(),
        )],
    };
    backend.start(&spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dump.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backend.stop(&spec).await.unwrap();
}

#[test]
fn children_do_not_inherit_the_activation_code_or_aws_keys() {
    let work = tempfile::tempdir().unwrap();
    let dump = work.path().join("env.txt");
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args([
        "env_dump_agent_process",
        "--exact",
        "--ignored",
        "--nocapture",
    ])
    .env(ENV_DUMP_ENV, &dump)
    .env("STANDIN_KUBELET_BIN", standin_binary())
    .env("KEEP_ME", "harmless");
    for var in SECRET_VARS {
        cmd.env(var, format!("secret-value-of-{var}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helper failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(&dump).unwrap();
    for var in SECRET_VARS {
        assert!(
            !env.contains("secret-value-of-"),
            "{var} (or another secret) reached the child:\n{env}"
        );
    }
    assert!(env.contains("KEEP_ME=harmless"), "{env}");
    assert!(
        env.contains("AWS_SHARED_CREDENTIALS_FILE=/root/.aws/credentials"),
        "{env}"
    );
}
