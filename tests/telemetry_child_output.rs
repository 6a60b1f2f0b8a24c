//! A supervised child's output, from the built-in backend's log file to the devstack's
//! CloudWatch Logs, when the child writes what crashing programs write: blank lines,
//! whitespace-only lines, CRLF line ends and a Go panic trace. CloudWatch refuses a whole
//! PutLogEvents call for one empty message, so a blank line must never become an event: every
//! line with something in it arrives, in order, and no batch is rejected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod supervise_support;
mod telemetry_support;

use std::time::Duration;

use hybrid_agent::supervise::pidfile;
use hybrid_agent::supervise::process::{ProcessBackend, ProcessSettings};
use hybrid_agent::supervise::{Backend, ComponentName, ComponentSpec, ExecSpec, Probe};
use supervise_support::{alive, fast_probe, free_port};
use telemetry_support::{CLUSTER, InProcess, NODE, devstack, read_stream, settings};

/// What the child prints: a start-up line, then a crash as the Go runtime reports it.
const OUTPUT: &[&str] = &[
    "I1203 06:00:00.000000 1 server.go:100] starting",
    "",
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a5b3c]",
    "",
    "goroutine 1 [running]:",
    "main.main()",
    "\t/src/cmd/kubelet/main.go:12 +0x1d",
    "   ",
    "goroutine 7 [chan receive]:",
    "main.worker(0xc000012345)",
    "\t/src/cmd/kubelet/worker.go:40 +0x65",
    "\r",
    "",
    "\t ",
    "exit status 2",
];

/// Kills the child the pid file names if the test fails before stopping it.
struct PidFileReaper(std::path::PathBuf);

impl Drop for PidFileReaper {
    fn drop(&mut self) {
        let path = ProcessSettings::new(&self.0).pid_file(ComponentName::Kubelet);
        if let Ok(Some(rec)) = pidfile::read(&path)
            && alive(rec.pid)
            && let Some(pid) = rustix::process::Pid::from_raw(rec.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// kubelet as the built-in backend runs it, here `/bin/sh -c SCRIPT [ARG0]` (`script[0]` is the
/// script), with a probe nothing answers and that never restarts it within a test.
fn shell_kubelet(script: &[&str]) -> ComponentSpec {
    let mut args = vec!["-c".to_string()];
    args.extend(script.iter().map(|a| a.to_string()));
    ComponentSpec {
        name: ComponentName::Kubelet,
        exec: ExecSpec {
            program: "/bin/sh".into(),
            args,
            env: vec![],
        },
        unit: "kubelet.service".into(),
        probe: Probe::HttpGet {
            url: format!("http://127.0.0.1:{}/healthz", free_port()),
        },
        probe_policy: fast_probe(1000, Duration::from_secs(600)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn blank_lines_and_a_panic_trace_from_a_child_arrive_without_rejected_batches() {
    let ds = devstack();
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let trace = tmp.path().join("trace.txt");
    let mut text = OUTPUT.join("\n");
    text.push('\n');
    std::fs::write(&trace, text).unwrap();

    let (tx, rx) = hybrid_agent::telemetry::child_line_channel();
    let agent = InProcess::start_with_children(
        settings(&journal, tmp.path(), &["kubelet"]),
        &ds.url,
        Some(rx),
    );

    let mut ps = ProcessSettings::new(tmp.path().join("agent-state"));
    ps.child_output = Some(tx);
    let _reaper = PidFileReaper(ps.state_dir.clone());
    let backend = ProcessBackend::new(ps);
    let spec = shell_kubelet(&["cat \"$0\"; exec sleep 600", &trace.display().to_string()]);
    let rt = runtime();
    rt.block_on(backend.start(&spec)).unwrap();

    let want: Vec<String> = OUTPUT
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    agent.wait_for(
        "the child's lines shipped or rejected",
        Duration::from_secs(60),
        |s| s.counters.shipped + s.counters.rejected >= want.len() as u64,
    );
    // Anything still in flight (a blank line's own event, say) gets its chance to show.
    std::thread::sleep(Duration::from_secs(1));
    let status = agent.status.snapshot();
    rt.block_on(backend.stop(&spec)).unwrap();
    agent.stop();

    let group = format!("/aws/eks-hybrid/{CLUSTER}");
    let got = rt.block_on(read_stream(&ds.url, &group, &format!("{NODE}/kubelet")));
    assert_eq!(
        status.counters.rejected,
        0,
        "events rejected; status:\n{}",
        status.render()
    );
    assert_eq!(got, want, "what arrived in CloudWatch Logs");
    assert_eq!(status.counters.shipped, want.len() as u64);
}

/// Telemetry stalls (nothing takes the child's lines) while the child writes 12 MB: the log
/// file's disk use stays near the allowance of unread output (1 MiB here) instead of holding
/// everything, and once telemetry takes lines again it gets a line saying how much was skipped,
/// then the child's newest lines in order, never a NUL from the freed part.
#[test]
fn a_child_outrunning_a_stalled_telemetry_is_bounded_and_says_what_was_skipped() {
    use std::os::unix::fs::MetadataExt;
    const LINES: u64 = 200_000;
    let tmp = tempfile::tempdir().unwrap();
    let (tx, mut rx) = hybrid_agent::telemetry::child_line_channel();
    let mut ps = ProcessSettings::new(tmp.path().join("agent-state"));
    ps.child_output = Some(tx);
    ps.log_max_unread = 1 << 20;
    let log = ps
        .state_dir
        .join(hybrid_agent::supervise::process::SUPERVISE_DIR)
        .join("kubelet.log");
    let _reaper = PidFileReaper(ps.state_dir.clone());
    let backend = ProcessBackend::new(ps);
    let spec = shell_kubelet(&[&format!(
        "seq 1 {LINES} | sed 's/^/I1203 kubelet.go:1] line /; s/$/ padding-padding-padding/'; exec sleep 600"
    )]);
    let rt = runtime();
    rt.block_on(backend.start(&spec)).unwrap();

    // The child is done writing; the tailer is blocked on the full channel.
    let written = (|| {
        for _ in 0..100 {
            let m = std::fs::metadata(&log).ok()?;
            if m.len() > 10 << 20 {
                std::thread::sleep(Duration::from_millis(300));
                if std::fs::metadata(&log).ok()?.len() == m.len() {
                    return Some(m.len());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })()
    .expect("the child wrote its output");
    // Within a few cap checks the skipped part's blocks are freed.
    let mut on_disk = u64::MAX;
    for _ in 0..50 {
        on_disk = std::fs::metadata(&log).unwrap().blocks() * 512;
        if on_disk < 3 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        on_disk < 3 << 20,
        "{on_disk} bytes on disk for {written} written while telemetry was stalled"
    );

    // Telemetry takes lines again: what was queued, the skip notice, then the newest lines.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match rx.try_recv() {
            Ok(l) => {
                if let Some(a) = &l.ack {
                    a.done();
                }
                let last = l
                    .line
                    .ends_with(&format!("line {LINES} padding-padding-padding"));
                got.push(l.line);
                if last {
                    break;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    rt.block_on(backend.stop(&spec)).unwrap();
    assert!(
        got.iter().all(|l| !l.contains('\0')),
        "a NUL from the freed part was shipped"
    );
    let notice = got
        .iter()
        .position(|l| {
            l.starts_with("[hybrid-agent]") && l.contains("bytes of kubelet output skipped")
        })
        .unwrap_or_else(|| {
            panic!(
                "no skip notice among {} lines; last: {:?}",
                got.len(),
                got.last()
            )
        });
    let numbers: Vec<u64> = got[notice + 1..]
        .iter()
        .filter_map(|l| l.split("line ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(numbers.last(), Some(&LINES), "the newest line arrives");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "after the notice the lines are consecutive"
    );
    assert!(
        (got.len() as u64) < LINES,
        "{} lines delivered: nothing was skipped",
        got.len()
    );
}
