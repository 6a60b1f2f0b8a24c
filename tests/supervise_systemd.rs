//! The systemd backend against a real systemd, booted from the host's /usr in systemd-nspawn
//! (docs/testing.md "systemd in nspawn"; never /lib/systemd/systemd on the host itself, whose
//! tmpfiles step would
//! wipe the host's /tmp).
//!
//! The test talks to the container's system bus through `/proc/<init>/root/run/dbus/...` — the
//! same code path as on a real host, with `--root` pointing into the container — and shows:
//! `auto` picks systemd and says why; unit files are written, enabled, reloaded and started
//! through D-Bus in order; `kill -9` of kubelet's main pid is seen through D-Bus signals
//! (`auto-restart`, a new MainPID, NRestarts) and recovered; rewriting unchanged units triggers no
//! reload and a changed unit exactly one, counted from systemd's own `Reloading` signals by an
//! independent D-Bus connection.
#![allow(clippy::unwrap_used)]

mod nspawn_support;
mod supervise_support;

use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use hybrid_agent::supervise::auto::{self, AnyBackend, BackendChoice};
use hybrid_agent::supervise::process::ProcessSettings;
use hybrid_agent::supervise::systemd::{
    AgentUnitOutcome, SystemdBackend, SystemdSettings, system_bus_address,
};
use hybrid_agent::supervise::units::{self, SYSTEM_UNIT_DIR};
use hybrid_agent::supervise::{
    Backend, BackendKind, ComponentName, ComponentSpec, ComponentState, EventKind, ExecSpec, Probe,
    RunState, Supervisor, SupervisorConfig,
};
use nspawn_support::{Container, Root};
use supervise_support::*;
use zbus_systemd::systemd1::ManagerProxy;

/// Where the stand-in lives inside the container (its root is a tmpfs we can write through /proc).
const STANDIN_IN_CONTAINER: &str = "/opt/hybrid-test/standin-kubelet";

/// Counts systemd's `Reloading(true)` signals on a connection of its own.
struct ReloadCounter {
    manager: ManagerProxy<'static>,
    stream: zbus_systemd::systemd1::ReloadingStream,
    count: u32,
}

impl ReloadCounter {
    async fn new(address: &str) -> ReloadCounter {
        let conn = zbus::connection::Builder::address(address)
            .method_timeout(Duration::from_secs(30))
            .build()
            .await
            .unwrap();
        let manager = ManagerProxy::new(&conn).await.unwrap();
        manager.subscribe().await.unwrap();
        let stream = manager.receive_reloading().await.unwrap();
        ReloadCounter {
            manager,
            stream,
            count: 0,
        }
    }

    /// The count after a round trip to systemd: every signal systemd sent before answering was
    /// queued on this connection before the answer (one sender, one connection, in order).
    async fn settled(&mut self) -> u32 {
        self.manager.version().await.unwrap();
        while let Some(Some(sig)) = self.stream.next().now_or_never() {
            if sig.args().is_ok_and(|a| a.active) {
                self.count += 1;
            }
        }
        self.count
    }
}

/// The units for the container; only kubelet's restart delay varies between calls.
fn settings(root: &Path, port: u16, kubelet_restart_sec: u32) -> SystemdSettings {
    let kubelet = ExecSpec {
        program: STANDIN_IN_CONTAINER.into(),
        args: vec!["--healthz-port".into(), port.to_string()],
        env: vec![],
    };
    SystemdSettings {
        bus_address: system_bus_address(root),
        unit_dir: root.join(SYSTEM_UNIT_DIR),
        units: vec![
            units::kubelet_service(&kubelet, kubelet_restart_sec),
            units::containerd_dropin(Path::new("/usr/bin/containerd"), None, 1),
        ],
        enable: vec!["containerd.service".into(), "kubelet.service".into()],
        call_timeout: Duration::from_secs(30),
        start_timeout: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_backend_against_systemd_booted_in_nspawn() {
    let work = tempfile::tempdir().unwrap();
    let name = format!("h5sup{}", std::process::id());
    let container = Container::boot(&name, &work.path().join("nspawn.log"), Root::Volatile);
    let root = container.root();

    let target = root.join(STANDIN_IN_CONTAINER.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(standin_binary(), &target).unwrap();
    let port = free_port();
    let first = settings(&root, port, 1);
    let mut reloads = ReloadCounter::new(&first.bus_address).await;
    assert_eq!(reloads.settled().await, 0);

    // auto: sees systemd as PID 1 of that root and reaches it over D-Bus.
    let (backend, selection) = auto::select(
        BackendChoice::Auto,
        &root,
        first.clone(),
        ProcessSettings::new(work.path().join("state")),
    )
    .await
    .unwrap();
    assert_eq!(selection.kind, BackendKind::Systemd);
    assert!(
        selection.reason.starts_with("auto: PID 1 is systemd"),
        "{}",
        selection.reason
    );
    assert!(matches!(backend, AnyBackend::Systemd(_)));
    let backend = Arc::new(backend);
    let mut events = backend.watch();

    let components = vec![
        ComponentSpec {
            name: ComponentName::Containerd,
            exec: ExecSpec {
                program: "/usr/bin/containerd".into(),
                args: vec![],
                env: vec![],
            },
            unit: "containerd.service".into(),
            probe: Probe::ContainerdVersion {
                socket: root.join("run/containerd/containerd.sock"),
            },
            probe_policy: fast_probe(3, Duration::from_secs(10)),
        },
        ComponentSpec {
            name: ComponentName::Kubelet,
            exec: ExecSpec {
                program: STANDIN_IN_CONTAINER.into(),
                args: vec![],
                env: vec![],
            },
            unit: "kubelet.service".into(),
            probe: Probe::HttpGet {
                url: format!("http://127.0.0.1:{port}/healthz"),
            },
            probe_policy: fast_probe(3, Duration::from_secs(10)),
        },
    ];
    let sup = Supervisor::with_shared(
        backend.clone(),
        selection,
        SupervisorConfig::new(components),
    );
    let mut status = sup.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sup.run(async move {
        let _ = stop_rx.await;
    }));

    // 1. Units written, enabled, one reload, both started and healthy.
    let s = wait_status(
        &mut status,
        Duration::from_secs(90),
        "containerd and kubelet healthy under systemd",
        |s| {
            s.components
                .iter()
                .all(|c| c.state == ComponentState::Healthy && c.pid.is_some())
        },
    )
    .await;
    assert_eq!(s.backend, BackendKind::Systemd);
    let written =
        std::fs::read_to_string(root.join(SYSTEM_UNIT_DIR).join("kubelet.service")).unwrap();
    assert_eq!(written, first.units[0].content);
    assert!(
        root.join(SYSTEM_UNIT_DIR)
            .join(units::CONTAINERD_DROPIN)
            .exists()
    );
    assert_eq!(
        container.exec(&["systemctl", "is-enabled", "kubelet.service"]),
        "enabled"
    );
    assert_eq!(
        container.exec(&[
            "systemctl",
            "show",
            "-P",
            "DropInPaths",
            "containerd.service"
        ]),
        format!("/{SYSTEM_UNIT_DIR}/{}", units::CONTAINERD_DROPIN)
    );
    assert_eq!(
        reloads.settled().await,
        1,
        "writing new units must reload exactly once"
    );

    // 2. kill -9 of kubelet's main pid: seen through D-Bus signals, restarted by systemd, healthy.
    let k = s.component(ComponentName::Kubelet).unwrap();
    let old_pid = k.pid.unwrap();
    let restarts_before = k.restarts;
    while events.try_recv().is_ok() {}
    container.exec(&["sh", "-c", &format!("kill -9 {old_pid}")]);
    let s = wait_status(
        &mut status,
        Duration::from_secs(60),
        "kubelet restarted by systemd and healthy",
        |s| {
            let k = s.component(ComponentName::Kubelet).unwrap();
            k.restarts > restarts_before
                && k.pid.is_some_and(|p| p != old_pid)
                && k.state == ComponentState::Healthy
        },
    )
    .await;
    let k = s.component(ComponentName::Kubelet).unwrap();
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.component == ComponentName::Kubelet {
            seen.push(ev.kind);
        }
    }
    assert!(
        seen.iter().any(|e| matches!(e, EventKind::State { state: RunState::Restarting, detail } if detail == "auto-restart")),
        "no auto-restart state seen through D-Bus signals: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, EventKind::Exited { pid: Some(p), .. } if *p == old_pid)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, EventKind::Restarted { .. })),
        "{seen:?}"
    );
    assert_eq!(
        container.exec(&["systemctl", "show", "-P", "NRestarts", "kubelet.service"]),
        k.restarts.to_string()
    );
    println!(
        "figures: kubelet stand-in pid {old_pid} killed -> systemd restarted it as {} (NRestarts {}); events {seen:?}",
        k.pid.unwrap(),
        k.restarts
    );

    // The agent stops; the units keep running (they are systemd's, not ours).
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(
        container.exec(&["systemctl", "is-active", "kubelet.service"]),
        "active"
    );

    // 3. Same content again: nothing written, no reload. Changed content: exactly one reload.
    let again = SystemdBackend::connect(first.clone()).await.unwrap();
    let before = reloads.settled().await;
    let report = again.sync_units().await.unwrap();
    assert!(report.written.is_empty() && !report.reloaded, "{report:?}");
    assert_eq!(
        reloads.settled().await,
        before,
        "unchanged units triggered a reload"
    );

    let changed = SystemdBackend::connect(settings(&root, port, 2))
        .await
        .unwrap();
    let report = changed.sync_units().await.unwrap();
    assert_eq!(
        report.written,
        vec![root.join(SYSTEM_UNIT_DIR).join("kubelet.service")]
    );
    assert!(report.reloaded);
    assert_eq!(
        reloads.settled().await,
        before + 1,
        "a changed unit must reload exactly once"
    );
    assert_eq!(changed.reloads_issued(), 1);
    assert_eq!(
        container.exec(&["systemctl", "show", "-P", "RestartUSec", "kubelet.service"]),
        "2s"
    );
    println!(
        "figures: reloads counted from systemd's Reloading signals: first sync 1, unchanged sync 0, changed unit 1"
    );

    // 4. After join, the agent's own unit: left alone when no package installed it; started
    //    when installed (the package enables, never starts it); restarted on a new join; left
    //    running otherwise. A unit standing in for the agent (sleep), written where units go.
    assert_eq!(
        changed.start_agent_unit(true).await.unwrap(),
        AgentUnitOutcome::NotInstalled
    );
    // (/usr is the host's, read-only, in the volatile container: /etc/systemd/system instead.)
    let agent_unit = root.join(SYSTEM_UNIT_DIR).join("hybrid-agent.service");
    std::fs::create_dir_all(agent_unit.parent().unwrap()).unwrap();
    std::fs::write(
        &agent_unit,
        "[Unit]\nDescription=stands in for hybrid-agent\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    container.exec(&["systemctl", "daemon-reload"]);
    let main_pid =
        || container.exec(&["systemctl", "show", "-P", "MainPID", "hybrid-agent.service"]);
    let became_active = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while container.exec(&["systemctl", "is-active", "hybrid-agent.service"]) != "active" {
            assert!(
                Instant::now() < deadline,
                "hybrid-agent.service did not become active"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(
        changed.start_agent_unit(true).await.unwrap(),
        AgentUnitOutcome::Started
    );
    became_active();
    let first_pid = main_pid();
    assert_eq!(
        changed.start_agent_unit(false).await.unwrap(),
        AgentUnitOutcome::AlreadyRunning
    );
    assert_eq!(main_pid(), first_pid, "a running agent is left alone");
    assert_eq!(
        changed.start_agent_unit(true).await.unwrap(),
        AgentUnitOutcome::Restarted
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while main_pid() == first_pid || main_pid() == "0" {
        assert!(
            Instant::now() < deadline,
            "hybrid-agent.service was not restarted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    became_active();
}
