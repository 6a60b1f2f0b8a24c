//! `kill -9` of the agent 20 times at random moments while 2,000 lines/s are written to a
//! hand-started journald: no line is missing, and each kill repeats at most one window (one
//! batch per stream). The agent runs as a child process: this test binary re-executes itself
//! into the ignored `agent_child_process` test, which runs telemetry until killed.

mod telemetry_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use telemetry_support::*;

const KILLS: usize = 20;
const LINES_PER_SEC: usize = 2000;

/// Not a test on its own: the agent process the crash test starts and kills.
#[test]
#[ignore = "started by journald_kill_minus_9_loses_nothing as the agent process"]
fn agent_child_process() {
    let (Some(dir), Some(state), Some(url)) = (
        std::env::var_os("HA_JOURNAL_DIR"),
        std::env::var_os("HA_STATE"),
        std::env::var("HA_URL").ok(),
    ) else {
        panic!("agent_child_process needs HA_JOURNAL_DIR, HA_STATE and HA_URL");
    };
    let agent = InProcess::start(
        settings(&PathBuf::from(dir), &PathBuf::from(state), &["kubelet"]),
        &url,
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        let _ = &agent;
    }
}

fn spawn_agent(j: &Journald, state: &std::path::Path, url: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "agent_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HA_JOURNAL_DIR", j.dir())
        .env("HA_STATE", state)
        .env("HA_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent process")
}

#[test]
fn journald_kill_minus_9_loses_nothing() {
    let j = Journald::start(JournaldLimits::default());
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let written = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (w, written, done) = (j.writer(), written.clone(), done.clone());
        std::thread::spawn(move || {
            // 20 lines every 10 ms.
            let start = Instant::now();
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                for _ in 0..LINES_PER_SEC / 100 {
                    w.send("kubelet", 6, &line("kubelet", i, 200));
                    i += 1;
                }
                written.store(i, Ordering::Relaxed);
                let next = start + Duration::from_millis(10 * (i / (LINES_PER_SEC / 100)) as u64);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    for _ in 0..KILLS {
        let mut child = spawn_agent(&j, tmp.path(), &ds.url);
        let ms = 300 + rand::random::<u64>() % 1500;
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().expect("kill -9 the agent");
        child.wait().expect("reap agent");
    }
    done.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let n = written.load(Ordering::Relaxed);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stream = format!("{NODE}/kubelet");
    let group = format!("/aws/eks-hybrid/{CLUSTER}");
    let before_last = rt.block_on(read_stream(&ds.url, &group, &stream)).len();
    assert!(
        before_last > n / 4,
        "the killed agents shipped only {before_last} of {n} lines between kills"
    );
    let mut last = spawn_agent(&j, tmp.path(), &ds.url);
    let deadline = Instant::now() + Duration::from_secs(120);
    let messages = loop {
        let m = rt.block_on(read_stream(&ds.url, &group, &stream));
        let mut seen = std::collections::HashSet::new();
        m.iter().filter_map(|x| parse_line(x)).for_each(|(_, s)| {
            seen.insert(s);
        });
        if seen.len() >= n || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = last.kill();
    let _ = last.wait();
    let dups = check_exactly_once_in_order(&messages, "kubelet", n);
    // A kill repeats at most the window in flight: one batch of this stream. Lines here are
    // ~220 bytes in CloudWatch (prefix included) + 26 bytes of overhead.
    let per_batch = hybrid_agent::telemetry::batch::MAX_BATCH_BYTES / (220 + 26);
    eprintln!(
        "kill -9 x{KILLS} at {LINES_PER_SEC} lines/s: {n} lines written, all arrived once or more; {dups} duplicates (bound {KILLS} x {per_batch})"
    );
    assert!(
        dups <= KILLS * per_batch,
        "{dups} duplicates: more than one batch per kill"
    );
    assert_eq!(ds.state.call_count("logs", "DescribeLogStreams"), 0);
}
