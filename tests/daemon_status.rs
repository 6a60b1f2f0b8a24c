//! The daemon's live status socket and its optional Prometheus endpoint, through the public
//! interface: a real `join` in a `--root` sandbox (distribution containerd, the STAND-IN kubelet
//! under the built-in supervisor) against the devstack, then `hybrid-agent run` as a child
//! process. `status` must answer from the socket (root-only, 0600) with figures of the moment,
//! fall back to the saved `daemon.json` and say so when the daemon is stopped (SIGSTOP) or gone,
//! and not be held up by a client that connects and says nothing. With
//! `status.prometheus_listen` the daemon serves `/metrics` in the text exposition format with
//! the figures `status --json` shows; by default it listens on no TCP port at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use hybrid_agent::identity::store::ts;
use install_support::{AGENT, Node, create_activation, devstack, standin_release};

fn json(node: &Node) -> serde_json::Value {
    let out = node.run(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// TCP ports process `pid` listens on (its socket inodes matched against /proc/net/tcp{,6}).
fn tcp_listeners(pid: u32) -> BTreeSet<u16> {
    let mut inodes = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy().to_string();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(n.to_string());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // 0A: TCP_LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request on the status socket, the raw answer.
fn ask(socket: &std::path::Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `GET path` over plain TCP, HTTP/1.1; (status line, headers lower-cased, body).
fn http_get(port: u16, path: &str) -> (String, BTreeMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text exposition format strictly enough to catch what Prometheus refuses: every
/// sample `name{labels} value`, a HELP and a TYPE before each family's samples, valid names,
/// quoted and escaped label values. Returns samples keyed `name{labels}` as written.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut helped = BTreeSet::new();
    let mut typed = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{line}");
            assert!(helped.insert(name.to_string()), "two HELP lines: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(typed.insert(name.to_string(), kind.to_string()).is_none());
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(valid_name(name), "{line}");
        assert!(name.starts_with("hybrid_agent_"), "{line}");
        assert!(
            typed.contains_key(name) && helped.contains(name),
            "sample without HELP and TYPE: {line}"
        );
        if typed[name] == "counter" {
            assert!(name.ends_with("_total"), "counter not named _total: {line}");
        }
        let rest = &line[name_end..];
        let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
            // Label pairs: name="value" with \\, \" and \n escapes, comma-separated.
            let mut chars = inner.char_indices().peekable();
            let end = loop {
                let start = chars.peek().unwrap().0;
                let mut lname = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    lname.push(c);
                }
                assert!(
                    valid_name(&lname) && !lname.contains(':'),
                    "label {lname:?} in {line}"
                );
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line} at {start}");
                loop {
                    match chars.next().unwrap() {
                        (_, '\\') => {
                            let (_, e) = chars.next().unwrap();
                            assert!(matches!(e, '\\' | '"' | 'n'), "bad escape in {line}");
                        }
                        (_, '"') => break,
                        (_, '\n') => panic!("raw line feed in {line}"),
                        _ => {}
                    }
                }
                match chars.next().unwrap() {
                    (_, ',') => continue,
                    (i, '}') => break i,
                    (_, c) => panic!("unexpected {c:?} in {line}"),
                }
            };
            (&inner[..end], &inner[end + 1..])
        } else {
            ("", rest)
        };
        let value = value.strip_prefix(' ').expect("one space before the value");
        assert!(!value.contains(' '), "no timestamps expected: {line}");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{labels}}}")
        };
        assert!(samples.insert(key, v).is_none(), "duplicate series: {line}");
    }
    assert_eq!(
        helped,
        typed.keys().cloned().collect::<BTreeSet<_>>(),
        "HELP and TYPE name the same families"
    );
    samples
}

#[test]
fn status_answers_live_from_the_socket_falls_back_when_the_daemon_does_not_and_prometheus_serves_the_same_figures()
 {
    let mirror = tempfile::tempdir().unwrap();
    standin_release(mirror.path(), install_support::VERSION);
    let ds = devstack(mirror.path());
    let node = Node::new(&ds, &create_activation(&ds));
    let config = node.path("/etc/hybrid-agent/config.toml");
    let base = std::fs::read_to_string(&config).unwrap()
        + "\n[daemon]\nstartup_jitter = \"0s\"\n\n[telemetry]\nmetrics_interval = \"1s\"\nflush_interval = \"500ms\"\n";
    std::fs::write(&config, &base).unwrap();
    let joined = node.join(&ds, &[]);
    assert_eq!(joined.code, Some(0), "{joined:?}");

    let socket = node.path("/run/hybrid-agent/status.sock");
    let state_file = node.path("/var/lib/hybrid-agent/daemon.json");
    let log = node.dir.path().join("daemon.log");
    let wait = |what: &str, f: &mut dyn FnMut() -> bool| {
        install_support::wait_logged(&node.root, what, Duration::from_secs(40), &log, || {
            f().then_some(())
        })
    };

    // Without the daemon: the saved state, and no socket.
    let v = json(&node);
    assert_eq!(v["source"], "file", "{v}");
    assert_eq!(v["daemon_answering"], false, "{v}");

    // --- Default config: the socket serves, no TCP port is opened.
    let mut daemon = node.spawn_daemon(&log);
    let pid = daemon.id();
    wait(
        "status from the socket with both components healthy",
        &mut || {
            let v = json(&node);
            v["source"] == "socket"
                && v["supervision"]["components"]
                    .as_array()
                    .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["state"] == "healthy"))
        },
    );
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{socket:?} is a socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "root-only socket");
    let v = json(&node);
    assert_eq!(v["daemon_answering"], true, "{v}");
    assert_eq!(v["daemon"]["running"], true, "{v}");
    assert_eq!(v["daemon"]["pid"], pid, "{v}");
    let names: Vec<&str> = v["subsystems"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names.len(),
        4,
        "identity, supervision, telemetry and (an SSM node) ssm_presence: {v}"
    );
    assert!(names.contains(&"ssm_presence"), "{v}");
    assert_eq!(
        tcp_listeners(pid),
        BTreeSet::new(),
        "no Prometheus endpoint unless configured"
    );

    // Live, not the file: figures of the moment (the file is rewritten on changes only), and
    // still the whole state once the file is gone.
    std::thread::sleep(Duration::from_millis(1500));
    let v = json(&node);
    let updated = ts::parse(v["daemon"]["updated_at"].as_str().unwrap()).unwrap();
    let age = SystemTime::now()
        .duration_since(updated)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(1), "answered {age:?} old: {v}");
    std::fs::remove_file(&state_file).unwrap();
    let v = json(&node);
    assert_eq!(v["source"], "socket", "{v}");
    assert_eq!(v["daemon"]["running"], true, "{v}");
    assert!(
        v["identity"]["identity"]
            .as_str()
            .unwrap()
            .starts_with("mi-"),
        "{v}"
    );
    assert!(v["telemetry"]["spool_max_bytes"].as_u64() > Some(0), "{v}");
    let text = node.run(&["status"]).stdout;
    assert!(text.contains(&format!("running (pid {pid}")), "{text}");
    assert!(!text.contains("not answering"), "{text}");

    // The protocol as documented: bare words and HTTP, each on its own connection.
    let state: serde_json::Value = serde_json::from_str(&ask(&socket, b"state\n")).unwrap();
    assert_eq!(state["pid"], pid);
    let report: serde_json::Value = serde_json::from_str(&ask(&socket, b"status\n")).unwrap();
    assert_eq!(report["source"], "socket");
    let http = ask(&socket, b"GET /status HTTP/1.0\r\nHost: agent\r\n\r\n");
    assert!(http.starts_with("HTTP/1.1 200 OK\r\n"), "{http}");
    assert!(http.contains("Content-Type: application/json"), "{http}");
    let missing = ask(&socket, b"GET /nope HTTP/1.1\r\nHost: agent\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(ask(&socket, b"shutdown\n").starts_with("error: "));

    // Clients that connect and say nothing hold no one up.
    let stalled: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let t = Instant::now();
    let v = json(&node);
    assert_eq!(
        v["source"], "socket",
        "answered beside stalled clients: {v}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(stalled);

    // Stopped (SIGSTOP): status gives up on the socket within its second and says so. (The
    // daemon rewrites its file at its next change; telemetry's figures change every second.)
    wait("daemon.json written again", &mut || state_file.exists());
    signal(pid, "-STOP");
    let t = Instant::now();
    let out = node.run(&["status", "--json"]);
    let elapsed = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let text = node.run(&["status"]).stdout;
    signal(pid, "-CONT");
    assert!(elapsed < Duration::from_secs(5), "status took {elapsed:?}");
    assert_eq!(v["source"], "file", "{v}");
    assert_eq!(v["daemon_answering"], false, "{v}");
    assert!(
        text.contains(&format!(
            "daemon not answering on {}: showing its last saved state from",
            socket.display()
        )),
        "{text}"
    );
    wait("the socket to answer again after SIGCONT", &mut || {
        json(&node)["source"] == "socket"
    });

    // `--watch` refreshes until interrupted; off a terminal each snapshot follows the last.
    let watch = node
        .command(&["status", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2600));
    signal(watch.id(), "-INT");
    let out = watch.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let snapshots = shown.lines().filter(|l| l.starts_with("--- ")).count();
    assert!(snapshots >= 2, "{shown}");
    assert!(
        shown.matches(&format!("running (pid {pid}")).count() >= 2,
        "{shown}"
    );

    // A clean stop removes the socket; status says the daemon stopped and where it looked.
    signal(pid, "-TERM");
    install_support::wait_logged(
        &node.root,
        "the daemon to stop",
        Duration::from_secs(40),
        &log,
        || daemon.try_wait().unwrap(),
    );
    assert!(!socket.exists(), "the socket is removed at a clean stop");
    let v = json(&node);
    assert_eq!(v["source"], "file", "{v}");
    assert!(v["daemon"]["stopped_at"].is_string(), "{v}");
    let text = node.run(&["status"]).stdout;
    assert!(text.contains("not running (stopped"), "{text}");
    assert!(text.contains("daemon not answering on"), "{text}");

    // --- With status.prometheus_listen: /metrics in the exposition format, same figures.
    let port = free_port();
    std::fs::write(
        &config,
        format!("{base}\n[status]\nprometheus_listen = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    // A stale socket (a daemon that died) is replaced.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    std::fs::write(&socket, b"stale").unwrap();
    let daemon = node.spawn_daemon(&log);
    let pid = daemon.id();
    wait("status from the socket of the second daemon", &mut || {
        let v = json(&node);
        v["source"] == "socket"
            && v["daemon"]["pid"] == pid
            && v["supervision"]["components"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["state"] == "healthy"))
            && v["subsystems"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "running"))
    });
    assert_eq!(tcp_listeners(pid), BTreeSet::from([port]));

    let before = json(&node);
    let (status_line, headers, body) = http_get(port, "/metrics");
    let after = json(&node);
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        headers.get("content-length").and_then(|l| l.parse().ok()),
        Some(body.len())
    );
    let m = parse_exposition(&body);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{body}"));

    assert_eq!(
        get(&format!(
            "hybrid_agent_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    for s in after["subsystems"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let up = get(&format!(
            "hybrid_agent_subsystem_up{{subsystem=\"{name}\"}}"
        ));
        assert_eq!(up, 1.0, "{name} is running: {s}");
        let restarts = get(&format!(
            "hybrid_agent_subsystem_restarts_total{{subsystem=\"{name}\"}}"
        ));
        assert_eq!(restarts, s["restarts"].as_f64().unwrap(), "{name}");
    }
    // SSM presence pings, between the two readings of status --json.
    let pings = get("hybrid_agent_ssm_presence_pings_total");
    let count = |v: &serde_json::Value| v["ssm_presence"]["pings"].as_f64().unwrap_or(-1.0);
    assert!(
        count(&before) <= pings && pings <= count(&after),
        "{pings} pings: {before} / {after}"
    );
    for c in after["supervision"]["components"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        assert_eq!(
            get(&format!(
                "hybrid_agent_component_up{{component=\"{name}\"}}"
            )),
            1.0,
            "{c}"
        );
        assert_eq!(
            get(&format!(
                "hybrid_agent_component_restarts_total{{component=\"{name}\"}}"
            )),
            c["restarts"].as_f64().unwrap(),
            "{c}"
        );
    }
    let identity = after["identity"]["identity"].as_str().unwrap();
    assert_eq!(
        get(&format!(
            "hybrid_agent_identity_info{{provider=\"ssm\",identity=\"{identity}\"}}"
        )),
        1.0,
        "{body}"
    );
    let expiration = ts::parse(after["identity"]["expiration"].as_str().unwrap()).unwrap();
    let exp_secs = expiration
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (get("hybrid_agent_credentials_expiry_timestamp_seconds") - exp_secs).abs() < 0.001,
        "{body}"
    );
    let left = get("hybrid_agent_credentials_seconds_to_expiry");
    let now_left = expiration
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs_f64();
    assert!((left - now_left).abs() < 10.0, "{left} vs {now_left}");
    assert_eq!(
        get("hybrid_agent_spool_max_bytes"),
        after["telemetry"]["spool_max_bytes"].as_f64().unwrap()
    );
    // Counters move on their own: the scrape lies between the two status calls.
    let shipped = get("hybrid_agent_log_events_shipped_total");
    let at = |v: &serde_json::Value| v["telemetry"]["counters"]["shipped"].as_f64().unwrap();
    assert!(
        at(&before) <= shipped && shipped <= at(&after),
        "{} <= {shipped} <= {}",
        at(&before),
        at(&after)
    );
    assert!(get("hybrid_agent_process_resident_memory_bytes") > 0.0);
    // No outage behind this daemon: PutLogEvents may use its whole pacing rate.
    assert_eq!(get("hybrid_agent_log_put_rate_share"), 1.0);
    assert!(after["telemetry"]["counters"].get("slow_start").is_none());
    let started = ts::parse(after["daemon"]["started_at"].as_str().unwrap())
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((get("hybrid_agent_start_time_seconds") - started).abs() < 0.001);

    // Only /metrics goes over the network: the status documents stay on the host.
    let (status_line, _, _) = http_get(port, "/status");
    assert!(status_line.starts_with("HTTP/1.1 404"), "{status_line}");
    drop(daemon);
}

#[test]
fn a_prometheus_address_off_loopback_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let check = |toml: &str| {
        std::fs::write(&config, toml).unwrap();
        install_support::Run::of({
            let mut c = Command::new(AGENT);
            c.arg("--root")
                .arg(dir.path())
                .arg("--config")
                .arg(&config)
                .args(["config", "check"])
                .env_clear();
            c
        })
    };
    let refused = check("[status]\nprometheus_listen = \"0.0.0.0:9464\"\n");
    assert_ne!(refused.code, Some(0), "{refused:?}");
    let all = format!("{}{}", refused.stdout, refused.stderr);
    assert!(all.contains("status.prometheus_listen"), "{all}");
    assert!(all.contains("not a loopback address"), "{all}");

    let bad = check("[status]\nprometheus_listen = \"metrics.example:9464\"\n");
    assert_ne!(bad.code, Some(0), "{bad:?}");
    assert!(
        format!("{}{}", bad.stdout, bad.stderr).contains("status.prometheus_listen"),
        "{bad:?}"
    );

    for ok in [
        "[status]\nprometheus_listen = \"127.0.0.1:9464\"\n",
        "[status]\nprometheus_listen = \"[::1]:9464\"\n",
        "[status]\nprometheus_listen = \"0.0.0.0:9464\"\nprometheus_allow_remote = true\n",
    ] {
        let r = check(ok);
        assert_eq!(r.code, Some(0), "{ok}: {r:?}");
    }
}
