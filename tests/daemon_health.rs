//! The daemon heals its own subsystems. A real join (distribution containerd, the stand-in
//! kubelet under the built-in supervisor), then `hybrid-agent run` under a fake systemd
//! (`$NOTIFY_SOCKET`, `WatchdogSec=1`) with two of its subsystems broken from outside, as a host
//! breaks them:
//! - telemetry: its spool directory is not a directory (a full or read-only disk fails the same
//!   way: the spool cannot be opened or written);
//! - supervision: kubelet died while the agent was down and its binary is missing, so the
//!   supervisor's start of it fails.
//!
//! Each must be restarted with backoff and shown as degraded with its cause (`status`,
//! `status --json`, `doctor`); past `daemon.subsystem_down_limit` the watchdog must stop being
//! fed (so systemd would restart the agent); once the causes are removed both recover, the
//! watchdog is fed again and the restarts reach CloudWatch as `SubsystemRestarts`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;
mod telemetry_support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::{CLUSTER, Daemon, Node, create_activation, devstack, standin_release};

/// Polls `f` every 200 ms until it returns `Some`; panics with `what`, status and the log.
fn wait<T>(
    node: &Node,
    what: &str,
    limit: Duration,
    log: &std::path::Path,
    f: impl FnMut() -> Option<T>,
) -> T {
    install_support::wait_logged(&node.root, what, limit, log, f)
}

/// The notify messages received within `window`.
fn notifications(sock: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    seen
}

fn pets(msgs: &[String]) -> usize {
    msgs.iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

/// The subsystem `name` from `status --json`.
fn subsystem(node: &Node, name: &str) -> Option<serde_json::Value> {
    let out = node.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    v["subsystems"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// The pid of the supervised component `name` (by the built-in backend's environment marker).
fn supervised(node: &Node, name: &str) -> Option<u32> {
    node.supervised_pids().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| {
                env.split(|b| *b == 0).any(|kv| {
                    String::from_utf8_lossy(kv)
                        .starts_with(&format!("HYBRID_AGENT_SUPERVISED={name}@"))
                })
            })
            .unwrap_or(false)
    })
}

#[test]
fn broken_subsystems_are_restarted_shown_degraded_starve_the_watchdog_and_recover() {
    let mirror = tempfile::tempdir().unwrap();
    standin_release(mirror.path(), install_support::VERSION);
    let ds = devstack(mirror.path());
    let node = Node::new(&ds, &create_activation(&ds));
    let config = node.path("/etc/hybrid-agent/config.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(
        "\n[daemon]\nsubsystem_restart_cap = \"1s\"\nsubsystem_down_limit = \"4s\"\nstartup_jitter = \"0s\"\n\
         \n[telemetry]\nmetrics_interval = \"1s\"\nflush_interval = \"500ms\"\n",
    );
    std::fs::write(&config, toml).unwrap();
    let joined = node.join(&ds, &[]);
    assert_eq!(joined.code, Some(0), "{joined:?}");
    let record = NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .expect("node record");

    // Break both from outside: kubelet gone with its binary, the spool path a plain file.
    let kubelet = supervised(&node, "kubelet").expect("kubelet runs after join");
    let _ = Command::new("kill")
        .args(["-KILL", &kubelet.to_string()])
        .status();
    let kubelet_bin = node.path("/usr/bin/kubelet");
    let kubelet_off = node.path("/usr/bin/kubelet.off");
    std::fs::rename(&kubelet_bin, &kubelet_off).unwrap();
    let spool = node.path("/var/lib/hybrid-agent/spool");
    let _ = std::fs::remove_dir_all(&spool);
    std::fs::write(&spool, b"not a directory").unwrap();

    let sock_path = node.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = node.dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let _daemon = Daemon(
        node.command(&["run"])
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000")
            .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .unwrap(),
    );

    // Degraded, with the cause, restarted with backoff; rotation unaffected.
    let telemetry = wait(
        &node,
        "telemetry degraded",
        Duration::from_secs(30),
        &log,
        || {
            subsystem(&node, "telemetry")
                .filter(|s| s["state"] == "degraded" && s["restarts"].as_u64() >= Some(1))
        },
    );
    let cause = telemetry["last_error"].as_str().unwrap_or("");
    assert!(
        cause.contains("spool"),
        "telemetry's cause names the spool: {telemetry}"
    );
    let supervision = wait(
        &node,
        "supervision degraded",
        Duration::from_secs(30),
        &log,
        || {
            subsystem(&node, "supervision")
                .filter(|s| s["state"] == "degraded" && s["restarts"].as_u64() >= Some(1))
        },
    );
    let cause = supervision["last_error"].as_str().unwrap_or("");
    assert!(
        cause.contains("kubelet"),
        "supervision's cause names kubelet: {supervision}"
    );
    let identity = subsystem(&node, "identity").expect("identity subsystem");
    assert!(
        identity["state"] == "running" || identity["state"] == "starting",
        "{identity}"
    );
    let text = node.run(&["status"]).stdout;
    assert!(text.contains("telemetry: DEGRADED since"), "{text}");
    assert!(text.contains("supervision: DEGRADED since"), "{text}");
    let doctor = node.run(&["doctor"]);
    assert!(
        doctor.stdout.lines().any(|l| l.starts_with("warn")
            && l.contains("subsystem telemetry")
            && l.contains("degraded")),
        "{}",
        doctor.stdout
    );

    // Down past the 4 s limit: the watchdog is no longer fed, and systemd is told why.
    let starved = wait(
        &node,
        "the watchdog to starve",
        Duration::from_secs(20),
        &log,
        || {
            let msgs = notifications(&sock, Duration::from_millis(2500));
            (pets(&msgs) == 0).then_some(msgs)
        },
    );
    let later = notifications(&sock, Duration::from_millis(1500));
    assert_eq!(pets(&later), 0, "fed again while still down: {later:?}");
    let all: Vec<String> = starved.into_iter().chain(later).collect();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("no longer feeding systemd's watchdog"),
        "the log says why the watchdog starves; notify messages {all:?}"
    );

    // Remove the causes: both come back by themselves, and the watchdog is fed again.
    std::fs::remove_file(&spool).unwrap();
    std::fs::rename(&kubelet_off, &kubelet_bin).unwrap();
    for name in ["telemetry", "supervision"] {
        let s = wait(
            &node,
            &format!("{name} running again"),
            Duration::from_secs(30),
            &log,
            || subsystem(&node, name).filter(|s| s["state"] == "running"),
        );
        assert!(s["restarts"].as_u64().unwrap_or(0) >= 1, "{s}");
        assert!(s.get("down_since").is_none(), "{s}");
    }
    wait(
        &node,
        "kubelet healthy again",
        Duration::from_secs(30),
        &log,
        || node.kubelet_healthy().then_some(()),
    );
    let fed = notifications(&sock, Duration::from_millis(2000));
    assert!(
        pets(&fed) >= 2,
        "the watchdog is fed again once all are up: {fed:?}"
    );
    let text = node.run(&["status"]).stdout;
    assert!(!text.contains("DEGRADED"), "{text}");
    assert!(text.contains("telemetry running ("), "{text}");

    // The restarts reach CloudWatch, per subsystem.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let since = SystemTime::now() - Duration::from_secs(600);
    wait(
        &node,
        "SubsystemRestarts for telemetry",
        Duration::from_secs(30),
        &log,
        || {
            let points = rt.block_on(async {
                let c =
                    aws_sdk_cloudwatch::Client::new(&telemetry_support::sdk_config(&ds.url).await);
                let dim = |n: &str, v: &str| {
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name(n)
                        .value(v)
                        .build()
                };
                c.get_metric_statistics()
                    .namespace("HybridAgent")
                    .metric_name("SubsystemRestarts")
                    .dimensions(dim("ClusterName", CLUSTER))
                    .dimensions(dim("NodeName", &record.node_name))
                    .dimensions(dim("Component", "telemetry"))
                    .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(since))
                    .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                        SystemTime::now() + Duration::from_secs(60),
                    ))
                    .period(1)
                    .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
                    .send()
                    .await
                    .map(|r| {
                        r.datapoints()
                            .iter()
                            .filter_map(|d| d.maximum())
                            .collect::<Vec<f64>>()
                    })
                    .unwrap_or_default()
            });
            points.iter().any(|v| *v >= 1.0).then_some(())
        },
    );
}

/// A credential source that panics (the first instance) or hands out hour-long credentials.
struct Source {
    panic: bool,
}

impl hybrid_agent::identity::rotation::CredentialSource for Source {
    fn kind(&self) -> hybrid_agent::identity::store::ProviderKind {
        hybrid_agent::identity::store::ProviderKind::Ssm
    }

    fn identity(&self) -> String {
        "mi-0123456789abcdef0".into()
    }

    fn fetch(&mut self) -> hybrid_agent::identity::rotation::FetchFuture<'_> {
        let panic = self.panic;
        Box::pin(async move {
            if panic {
                panic!("rotation source exploded");
            }
            Ok(hybrid_agent::identity::TemporaryCredentials {
                access_key_id: "ASIAHEALTHTEST000001".into(),
                secret_access_key: hybrid_agent::config::Secret::new("secret-health-test"),
                session_token: hybrid_agent::config::Secret::new("token-health-test"),
                expiration: SystemTime::now() + Duration::from_secs(3600),
            })
        })
    }
}

/// Credential rotation whose source panics is restarted (a fresh loop from the factory, on the
/// same channels), shown degraded with the panic's message until it has run a while, and its
/// credentials then reach the file; the daemon never went down.
#[test]
fn a_panicking_rotation_source_is_restarted_and_recovers() {
    use hybrid_agent::daemon::health::{HealthSettings, RestartPolicy};
    use hybrid_agent::identity::credfile::CredentialsTarget;
    use hybrid_agent::identity::rotation::{RotationSettings, Rotator};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let creds_file = dir.path().join("credentials");
    let rotator = move |panic: bool, state_dir: &std::path::Path, file: &std::path::Path| {
        Rotator::new(
            Source { panic },
            RotationSettings {
                targets: vec![CredentialsTarget {
                    path: file.to_path_buf(),
                    profile: "default".into(),
                }],
                backoff_cap: Duration::from_secs(1),
                startup_spread: Duration::ZERO,
            },
            hybrid_agent::identity::store::IdentityStore::new(state_dir),
            Arc::new(hybrid_agent::identity::clock::SystemClock),
            Arc::new(hybrid_agent::identity::schedule::RandomJitter),
        )
    };
    let first = rotator(true, &state_dir, &creds_file);
    let (sd, cf) = (state_dir.clone(), creds_file.clone());
    let subsystems = hybrid_agent::daemon::Subsystems {
        rotator: first,
        identity_restart: Box::new(move || Ok(rotator(false, &sd, &cf))),
        supervision: None,
        telemetry: None,
        presence: None,
        lifecycle: None,
        health: HealthSettings {
            restart: RestartPolicy {
                first: Duration::from_millis(300),
                cap: Duration::from_secs(1),
                healthy_after: Duration::from_secs(1),
            },
            down_limit: Duration::from_secs(60),
        },
    };
    let state_path = hybrid_agent::state::path(&state_dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = rt.spawn(hybrid_agent::daemon::run(
        subsystems,
        state_path.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let read = || hybrid_agent::state::read(&state_path).ok().flatten();
    let identity = |d: &hybrid_agent::state::DaemonState| {
        d.subsystems
            .iter()
            .find(|s| s.name == hybrid_agent::daemon::health::Subsystem::Identity)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_degraded = None;
    let recovered = loop {
        assert!(Instant::now() < deadline, "no recovery: {:?}", read());
        if let Some(d) = read()
            && let Some(s) = identity(&d)
        {
            use hybrid_agent::daemon::health::SubsystemState;
            if s.state == SubsystemState::Degraded {
                saw_degraded = Some(s.clone());
            }
            if s.state == SubsystemState::Running
                && d.identity.as_ref().is_some_and(|i| i.refreshes >= 1)
            {
                break (d, s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let degraded = saw_degraded.expect("status showed the subsystem degraded before it recovered");
    assert!(
        degraded
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("rotation source exploded"),
        "{degraded:?}"
    );
    let (doc, s) = recovered;
    assert_eq!(s.restarts, 1, "{s:?}");
    assert_eq!(doc.identity.as_ref().map(|i| i.state.as_str()), Some("ok"));
    let written = std::fs::read_to_string(&creds_file).unwrap();
    assert!(written.contains("ASIAHEALTHTEST000001"), "{written}");
    stop_tx.send(()).unwrap();
    rt.block_on(daemon).unwrap().unwrap();
    assert!(read().unwrap().stopped_at.is_some());
}

/// The handlers are in place when `Signals` is made: a SIGTERM that arrives during start-up
/// (before the main loop first awaits it) is queued for a graceful stop, not the default action
/// that kills the process without STOPPING=1.
#[test]
fn a_sigterm_during_start_up_is_kept_for_the_main_loop() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut signals = hybrid_agent::daemon::Signals::install().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        // Start-up work before the main loop.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(5), signals.recv())
            .await
            .expect("the SIGTERM sent during start-up is delivered to the main loop");
    });
}
