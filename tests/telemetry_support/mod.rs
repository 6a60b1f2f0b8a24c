//! Shared plumbing for the telemetry tests: a hand-started journald (docs/testing.md
//! "Hand-started journald": inside
//! `unshare --mount` with a tmpfs on /run — never systemd itself on the host), a writer speaking
//! journald's native protocol to it, the agent's telemetry run in-process or as a child process,
//! and readers of what arrived in CloudWatch Logs (devstack or moto).
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use hybrid_agent::telemetry::{self, StatusCell, TelemetrySettings};

pub const ADMIN_ACCESS_KEY_ID: &str = "AKIADEVSTACKADMIN000";
pub const ADMIN_SECRET_ACCESS_KEY: &str = "devstack-admin-secret-key-not-a-real-secret";
pub const REGION: &str = "us-west-2";
pub const CLUSTER: &str = "test-cluster";
pub const NODE: &str = "mi-0123456789abcdef0";

/// A journald started by hand in its own mount namespace; stopped on drop.
pub struct Journald {
    child: Child,
    pub pid: u32,
}

/// journald limits for a test (journald.conf keys).
pub struct JournaldLimits {
    pub runtime_max_use: &'static str,
    pub runtime_max_file_size: &'static str,
}

impl Default for JournaldLimits {
    fn default() -> Self {
        JournaldLimits {
            runtime_max_use: "1G",
            runtime_max_file_size: "64M",
        }
    }
}

impl Journald {
    pub fn start(limits: JournaldLimits) -> Journald {
        let script = format!(
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal /run/systemd/journald.conf.d; \
             printf '[Journal]\\nStorage=volatile\\nRateLimitBurst=0\\nRuntimeMaxUse={}\\nRuntimeMaxFileSize={}\\nForwardToSyslog=no\\nForwardToWall=no\\nForwardToConsole=no\\n' > /run/systemd/journald.conf.d/test.conf; \
             exec /lib/systemd/systemd-journald",
            limits.runtime_max_use, limits.runtime_max_file_size
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start journald under unshare (needs root and util-linux)");
        let pid = child.id();
        let j = Journald { child, pid };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !j.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "journald did not create {} within 20 s",
                j.socket().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        j
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/systemd/journal/socket",
            self.pid
        ))
    }

    /// The directory journald writes (`/run/log/journal/<machine-id>` in its namespace).
    pub fn dir(&self) -> PathBuf {
        let id = std::fs::read_to_string("/etc/machine-id")
            .expect("/etc/machine-id")
            .trim()
            .to_string();
        PathBuf::from(format!("/proc/{}/root/run/log/journal/{id}", self.pid))
    }

    pub fn writer(&self) -> JournalWriter {
        let sock = UnixDatagram::unbound().expect("datagram socket");
        JournalWriter {
            sock,
            path: self.socket(),
        }
    }

    /// Files in the journal directory (to see rotation and vacuuming happen).
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends entries over journald's native protocol (what `systemd-cat -t NAME` does).
pub struct JournalWriter {
    sock: UnixDatagram,
    path: PathBuf,
}

impl JournalWriter {
    pub fn send(&self, ident: &str, priority: u8, message: &str) {
        let body = format!("MESSAGE={message}\nPRIORITY={priority}\nSYSLOG_IDENTIFIER={ident}\n");
        self.sock
            .send_to(body.as_bytes(), &self.path)
            .expect("send to journald");
    }
}

/// The line test writers use: `<tag> <seq:08>` padded to `len` with `x`.
pub fn line(tag: &str, seq: usize, len: usize) -> String {
    let mut s = format!("{tag} {seq:08} ");
    while s.len() < len {
        s.push('x');
    }
    s
}

/// Parses `<6>ident[pid]: <tag> <seq> xxx` back to (tag, seq).
pub fn parse_line(message: &str) -> Option<(String, usize)> {
    // Journal lines carry a `<pri>ident[pid]: ` prefix; lines written straight to the spool not.
    let rest = message.split_once("]: ").map(|(_, r)| r).unwrap_or(message);
    let mut it = rest.split(' ');
    let tag = it.next()?.to_string();
    let seq = it.next()?.parse().ok()?;
    Some((tag, seq))
}

pub fn devstack() -> hybrid_devstack::Devstack {
    hybrid_devstack::Devstack::spawn(hybrid_devstack::Config::default()).expect("start devstack")
}

pub async fn sdk_config(url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            ADMIN_ACCESS_KEY_ID,
            ADMIN_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .load()
        .await
}

pub fn settings(journal_dir: &Path, state: &Path, units: &[&str]) -> TelemetrySettings {
    TelemetrySettings {
        cluster: CLUSTER.into(),
        node: NODE.into(),
        log_group: "/aws/eks-hybrid/{cluster}".into(),
        log_stream: "{node}/{unit}".into(),
        region: REGION.into(),
        units: units.iter().map(|s| s.to_string()).collect(),
        max_priority: 6,
        journal_dirs: vec![journal_dir.to_path_buf()],
        state_dir: state.join("state"),
        spool_dir: state.join("spool"),
        spool_max_bytes: 512 << 20,
        flush_interval: Duration::from_millis(200),
        poll_interval: Duration::from_millis(100),
        mem_limit_bytes: telemetry::DEFAULT_MEM_LIMIT_BYTES,
        backoff: telemetry::sink::Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        },
        metric_namespace: "HybridAgent".into(),
        metrics_interval: None,
        root: state.to_path_buf(),
        startup_spread: Duration::ZERO,
        // The pipeline itself, unpaced (pacing has its own tests and the herd bench).
        put_rate: None,
    }
}

/// Telemetry running in-process on its own runtime thread; stopped on drop.
pub struct InProcess {
    pub status: Arc<StatusCell>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    pub fn start(settings: TelemetrySettings, url: &str) -> InProcess {
        Self::start_with_children(settings, url, None)
    }

    /// Also ships the lines sent through `child_lines` (the built-in supervisor's output).
    pub fn start_with_children(
        settings: TelemetrySettings,
        url: &str,
        child_lines: Option<tokio::sync::mpsc::Receiver<telemetry::ChildLine>>,
    ) -> InProcess {
        // Agent logs on stderr when RUST_LOG asks for them (nextest shows them on failure).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
        let status = StatusCell::new();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (st, url) = (status.clone(), url.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let deps = telemetry::TelemetryDeps {
                    sdk: sdk_config(&url).await,
                    child_lines: child_lines.map(|rx| Arc::new(tokio::sync::Mutex::new(rx))),
                    probe: Arc::new(telemetry::NoProbe),
                    endpoints: Default::default(),
                };
                if let Err(e) = telemetry::run(settings, deps, st, rx).await {
                    eprintln!("telemetry failed: {e}");
                    panic!("telemetry failed: {e}");
                }
            });
        });
        InProcess {
            status,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `cond` holds on the status; panics with the status otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&telemetry::TelemetryStatus) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status.snapshot();
            if cond(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status:\n{}",
                s.render()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            t.join().expect("telemetry thread");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every event of a stream, oldest first, through GetLogEvents (paged).
pub async fn read_stream(url: &str, group: &str, stream: &str) -> Vec<String> {
    let client = aws_sdk_cloudwatchlogs::Client::new(&sdk_config(url).await);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let resp = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .limit(10_000)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetLogEvents {group}/{stream}: {e:?}"));
        let events = resp.events();
        out.extend(
            events
                .iter()
                .filter_map(|e| e.message().map(str::to_string)),
        );
        let next = resp.next_forward_token().map(str::to_string);
        if events.is_empty() || next.is_none() || next == token {
            break;
        }
        token = next;
    }
    out
}

/// What `messages` hold of `tag` lines 0..n, for a failure message: how many events, the line
/// numbers missing and duplicated (first few of each), events that are not `tag` lines (an
/// empty message, say) and lines out of order. Never panics.
pub fn seq_report(messages: &[String], tag: &str, n: usize) -> String {
    const SHOWN: usize = 20;
    let mut seen = vec![0u32; n];
    let (mut foreign, mut beyond, mut out_of_order) = (Vec::new(), Vec::new(), 0usize);
    let mut last_first: Option<usize> = None;
    for m in messages {
        match parse_line(m) {
            Some((t, s)) if t == tag && s < n => {
                if seen[s] == 0 {
                    if last_first.is_some_and(|l| s < l) {
                        out_of_order += 1;
                    }
                    last_first = Some(s);
                }
                seen[s] += 1;
            }
            Some((t, s)) if t == tag => beyond.push(s),
            _ => foreign.push(m.chars().take(80).collect::<String>()),
        }
    }
    let missing: Vec<usize> = (0..n).filter(|&i| seen[i] == 0).collect();
    let dups: Vec<usize> = (0..n).filter(|&i| seen[i] > 1).collect();
    format!(
        "{} events: {} of {n} {tag} lines missing {:?}, {} duplicated {:?}, {} out of order, {} beyond {n} {:?}, {} not {tag} lines {:?}",
        messages.len(),
        missing.len(),
        &missing[..missing.len().min(SHOWN)],
        dups.len(),
        &dups[..dups.len().min(SHOWN)],
        out_of_order,
        beyond.len(),
        &beyond[..beyond.len().min(SHOWN)],
        foreign.len(),
        &foreign[..foreign.len().min(3)],
    )
}

/// Checks `messages` hold `tag` lines 0..n each exactly once and in order; returns duplicates.
pub fn check_exactly_once_in_order(messages: &[String], tag: &str, n: usize) -> usize {
    let seqs: Vec<usize> = messages
        .iter()
        .filter_map(|m| parse_line(m))
        .filter(|(t, _)| t == tag)
        .map(|(_, s)| s)
        .collect();
    let mut seen = vec![0u32; n];
    for &s in &seqs {
        assert!(s < n, "unexpected {tag} line {s}");
        seen[s] += 1;
    }
    let missing: Vec<usize> = (0..n).filter(|&i| seen[i] == 0).collect();
    assert!(
        missing.is_empty(),
        "{} {tag} lines missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // In order: with duplicates (replays after a crash) the sequence may step back, but only to
    // repeat lines already seen; first occurrences must be increasing.
    let mut first_seen = vec![false; n];
    let mut last_first = None;
    for &s in &seqs {
        if !first_seen[s] {
            first_seen[s] = true;
            if let Some(l) = last_first {
                assert!(s > l, "{tag} line {s} arrived after line {l}: out of order");
            }
            last_first = Some(s);
        }
    }
    seqs.len() - n
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// moto_server from the project's venv (scripts/setup installs it), killed on drop.
pub struct Moto {
    pub url: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn moto() -> Moto {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/moto_server"));
    assert!(
        bin.exists(),
        "moto_server not found at {} — run scripts/setup",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {url} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { url, child }
}
