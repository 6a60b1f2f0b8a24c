//! `hybrid-agent run` with telemetry wired in, end to end: a real `join` in a `--root` sandbox
//! (distribution containerd and the STAND-IN kubelet under the built-in supervisor), a
//! hand-started journald whose directory the sandbox's journal path points at, and the daemon as
//! a child process against the devstack. It must ship journal entries of the configured units,
//! the supervised children's output (also what they wrote while the agent was dead), and metrics
//! fed by the supervisor and the rotation loop, all with the rotated credentials — and
//! `hybrid-agent status` must show the streams, the spool and the metric sender.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;
mod telemetry_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::{CLUSTER, Node, create_activation, devstack, standin_release};
use telemetry_support::{Journald, JournaldLimits, check_exactly_once_in_order, line, read_stream};

/// An egress proxy on 127.0.0.1, reduced to what the agent relies on: `CONNECT` tunnels and
/// absolute-form requests, relayed to their target. Keeps every byte clients sent, so the test
/// can tell which AWS calls went through it.
struct Proxy {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || relay(conn, log));
            }
        });
        Proxy { port, sent }
    }

    fn saw(&self, needle: &str) -> bool {
        let sent = self.sent.lock().unwrap();
        sent.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

fn relay(client: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut words = first.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let authority = if method == "CONNECT" {
        target.to_string()
    } else {
        target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string()
    };
    let Ok(mut upstream) = TcpStream::connect(&authority) else {
        return;
    };
    log.lock().unwrap().extend_from_slice(first.as_bytes());
    if method == "CONNECT" {
        // The request's headers end the CONNECT; the tunnel starts after them.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let mut c = client.try_clone().unwrap();
        let _ = c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    } else if upstream.write_all(first.as_bytes()).is_err() {
        return;
    }
    let mut down = upstream.try_clone().unwrap();
    let mut to_client = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut down, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        // What the BufReader already holds first, then the socket.
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        log.lock().unwrap().extend_from_slice(&buf[..n]);
        if upstream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = upstream.shutdown(std::net::Shutdown::Both);
}

/// Journal lines written while the daemon runs.
const LINES: usize = 500;
/// Lines written for the second daemon: more than the next one ships, so its counters only reach
/// them by going on from this one's.
const AFTER: usize = 200;

/// Polls `f` every 200 ms until it returns `Some`, failing with `what`, status and the
/// daemon's log (the sandbox root is `r` beside the log).
fn wait<T>(what: &str, limit: Duration, log: &std::path::Path, f: impl FnMut() -> Option<T>) -> T {
    install_support::wait_logged(&log.parent().unwrap().join("r"), what, limit, log, f)
}

fn post(port: u16, path: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
}

#[test]
fn run_ships_journal_child_output_and_metrics_and_status_shows_them() {
    let j = Journald::start(JournaldLimits::default());
    let mirror = tempfile::tempdir().unwrap();
    standin_release(mirror.path(), install_support::VERSION);
    let ds = devstack(mirror.path());
    let node = Node::new(&ds, &create_activation(&ds));
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Telemetry settings a user might pick, short enough for a test, and an egress proxy every
    // AWS call must take.
    let proxy = Proxy::start();
    let config = node.path("/etc/hybrid-agent/config.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[telemetry]\nflush_interval = \"500ms\"\nmetrics_interval = \"2s\"\n");
    toml.push_str("\n[daemon]\nstartup_jitter = \"0s\"\n");
    toml.push_str(&format!(
        "\n[network]\nproxy = \"http://127.0.0.1:{}\"\n",
        proxy.port
    ));
    std::fs::write(&config, toml).unwrap();
    // The sandbox's journal is the hand-started journald's: /run/log/journal/<machine-id>.
    let id = std::fs::read_to_string("/etc/machine-id").unwrap();
    std::fs::write(node.path("/etc/machine-id"), &id).unwrap();
    std::fs::create_dir_all(node.path("/run/log/journal")).unwrap();
    std::os::unix::fs::symlink(
        j.dir(),
        node.path(&format!("/run/log/journal/{}", id.trim())),
    )
    .unwrap();

    let joined = node.join(&ds, &[]);
    assert_eq!(joined.code, Some(0), "{joined:?}");
    let record = NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .expect("node record");
    let group = format!("/aws/eks-hybrid/{CLUSTER}");
    let stream = |unit: &str| format!("{}/{unit}", record.node_name);
    // A stream not created yet reads as empty (read_stream panics on ResourceNotFound).
    let read = |unit: &str| {
        let exists = rt.block_on(async {
            let c =
                aws_sdk_cloudwatchlogs::Client::new(&telemetry_support::sdk_config(&ds.url).await);
            c.describe_log_streams()
                .log_group_name(&group)
                .log_stream_name_prefix(stream(unit))
                .send()
                .await
                .map(|r| {
                    r.log_streams()
                        .iter()
                        .any(|s| s.log_stream_name() == Some(&stream(unit)))
                })
                .unwrap_or(false)
        });
        if exists {
            rt.block_on(read_stream(&ds.url, &group, &stream(unit)))
        } else {
            Vec::new()
        }
    };

    let log = node.dir.path().join("daemon.log");
    let mut daemon = node.spawn_daemon(&log);

    // Journal entries of a configured unit (by SYSLOG_IDENTIFIER: no unit attached).
    let w = j.writer();
    for i in 0..LINES {
        w.send("hybrid-agent", 6, &line("journal", i, 120));
    }
    // An identifier that is not configured is not shipped.
    w.send("sshd", 6, &line("journal", LINES, 120));
    let shipped = wait(
        "the journal lines in CloudWatch Logs",
        Duration::from_secs(60),
        &log,
        || {
            let m = read("hybrid-agent");
            let n = m
                .iter()
                .filter_map(|l| telemetry_support::parse_line(l))
                .filter(|(tag, _)| tag == "journal")
                .count();
            (n >= LINES).then_some(m)
        },
    );
    assert_eq!(check_exactly_once_in_order(&shipped, "journal", LINES), 0);
    assert!(
        read("sshd").is_empty(),
        "an unconfigured identifier was shipped"
    );

    // The children's output, including what they printed during join, before the daemon ran.
    // The stream of `unit` once a line in it contains `needle`.
    let with_line = |what: &str, unit: &str, needle: &str| {
        wait(what, Duration::from_secs(30), &log, || {
            let m = read(unit);
            m.iter().any(|l| l.contains(needle)).then_some(m)
        })
    };
    let kubelet = with_line(
        "the stand-in kubelet's output",
        "kubelet",
        "serving /healthz",
    );
    assert!(
        kubelet.iter().all(|l| l.contains("STAND-IN")),
        "only the stand-in's lines are in its stream: {kubelet:?}"
    );
    with_line("containerd's output", "containerd", "containerd");

    // Output written while the agent is dead is shipped by the next agent, once.
    let _ = Command::new("kill")
        .args(["-KILL", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    post(node.healthz_port, "/standin/mode/healthy");
    let daemon = node.spawn_daemon(&log);
    let kubelet = with_line(
        "output written while the agent was down",
        "kubelet",
        "mode set to Healthy over HTTP",
    );
    let count = |needle: &str| kubelet.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("serving /healthz"), 1, "{kubelet:?}");
    assert_eq!(count("mode set to Healthy over HTTP"), 1, "{kubelet:?}");

    // Metrics fed by the supervisor (kubelet up) and the rotation loop (credential expiry).
    let since = SystemTime::now() - Duration::from_secs(600);
    let stat = |name: &str, component: Option<&str>| {
        rt.block_on(async {
            let c = aws_sdk_cloudwatch::Client::new(&telemetry_support::sdk_config(&ds.url).await);
            let dim = |n: &str, v: &str| {
                aws_sdk_cloudwatch::types::Dimension::builder()
                    .name(n)
                    .value(v)
                    .build()
            };
            let mut q = c
                .get_metric_statistics()
                .namespace("HybridAgent")
                .metric_name(name)
                .dimensions(dim("ClusterName", CLUSTER))
                .dimensions(dim("NodeName", &record.node_name));
            if let Some(comp) = component {
                q = q.dimensions(dim("Component", comp));
            }
            q.start_time(aws_sdk_cloudwatch::primitives::DateTime::from(since))
                .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                    SystemTime::now() + Duration::from_secs(60),
                ))
                .period(1)
                .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
                .send()
                .await
                .expect("GetMetricStatistics")
                .datapoints()
                .iter()
                .filter_map(|d| d.maximum())
                .collect::<Vec<f64>>()
        })
    };
    wait(
        "ComponentUp=1 for kubelet",
        Duration::from_secs(30),
        &log,
        || {
            stat("ComponentUp", Some("kubelet"))
                .contains(&1.0)
                .then_some(())
        },
    );
    wait(
        "CredentialSecondsToExpiry",
        Duration::from_secs(30),
        &log,
        || {
            stat("CredentialSecondsToExpiry", None)
                .iter()
                .any(|s| *s > 0.0)
                .then_some(())
        },
    );

    // Log events shipped, from `status --json`, while the daemon is running (or not).
    let shipped = |running: bool| {
        let out = node.run(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
        (v["daemon"]["running"] == running)
            .then(|| v["telemetry"]["counters"]["shipped"].as_u64())
            .flatten()
    };
    // `status` shows the streams, the spool and the metric sender (refreshed every 5 s); its
    // figures are this daemon's, so give the journal stream something to ship.
    for i in 0..AFTER {
        w.send("hybrid-agent", 6, &line("after", i, 120));
    }
    let status = wait(
        "the telemetry section in status",
        Duration::from_secs(30),
        &log,
        || {
            let out = node.run(&["status"]);
            let ok = out.code == Some(0)
                && out.stdout.contains("telemetry:")
                && out
                    .stdout
                    .contains(&format!("{}: last shipped", stream("hybrid-agent")))
                && out
                    .stdout
                    .contains(&format!("{}: last shipped", stream("kubelet")))
                && out.stdout.contains("metrics: ")
                && !out.stdout.contains("0 sent)");
            ok.then_some(out.stdout)
        },
    );
    assert!(status.contains("spool: "), "{status}");
    let json = node.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("status --json");
    assert!(
        v["telemetry"]["counters"]["shipped"].as_u64().unwrap_or(0) >= 1,
        "{}",
        json.stdout
    );

    // Every AWS call took the proxy: the private SSM API (rotation), CloudWatch Logs and
    // CloudWatch metrics (the SDK clients), EKS DescribeCluster at join.
    for call in [
        "AmazonSSM.RegisterManagedInstance",
        "AmazonSSM.RequestManagedInstanceRoleToken",
        "Logs_20140328.PutLogEvents",
        "PutMetricData",
        "/clusters/hybrid-demo",
    ] {
        assert!(proxy.saw(call), "{call} did not go through network.proxy");
    }

    wait(
        "this daemon's counters to count the lines written after its start",
        Duration::from_secs(30),
        &log,
        || shipped(true).filter(|n| *n >= AFTER as u64),
    );

    // SIGTERM: a clean stop, and status keeps the last telemetry figures.
    let stop = |mut daemon: install_support::Daemon| {
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status();
        let code = wait("the daemon to stop", Duration::from_secs(30), &log, || {
            daemon.try_wait().unwrap()
        });
        assert!(code.success(), "run exited {code:?}");
    };
    stop(daemon);
    let after = node.run(&["status"]);
    assert!(
        after
            .stdout
            .contains("telemetry (as the daemon last saw it):"),
        "{}",
        after.stdout
    );

    // The counters count since join: the next daemon goes on from the figures this one left.
    let before = shipped(false).expect("the stopped daemon's counters");
    assert!(
        before >= AFTER as u64,
        "shipped {before} before the restart"
    );
    let daemon = node.spawn_daemon(&log);
    for i in 0..5 {
        w.send("hybrid-agent", 6, &line("resumed", i, 120));
    }
    wait(
        "the counters to go on from the previous daemon's",
        Duration::from_secs(30),
        &log,
        || shipped(true).filter(|n| *n >= before + 5),
    );
    stop(daemon);
    // The rotated secrets never reach the daemon's log.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let creds = std::fs::read_to_string(node.path("/root/.aws/credentials")).unwrap();
    for l in creds.lines() {
        if let Some((k, v)) = l.split_once('=')
            && (k.trim() == "aws_secret_access_key" || k.trim() == "aws_session_token")
        {
            assert!(
                !text.contains(v.trim()),
                "the daemon log shows {}",
                k.trim()
            );
        }
    }
}
