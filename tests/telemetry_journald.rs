//! journald (hand-started, docs/testing.md "Hand-started journald") → the agent's telemetry →
//! CloudWatch Logs, against
//! the devstack and against moto: every shipped line arrives exactly once and in order per
//! stream; lines of other identifiers and below the minimum priority are not shipped; no
//! DescribeLogStreams call is made (the devstack counts them); a restart resumes from the saved
//! cursor without repeating anything.

mod telemetry_support;

use std::time::Duration;

use telemetry_support::*;

const KUBELET_LINES: usize = 6000;
const CONTAINERD_LINES: usize = 2500;

/// Writes kubelet lines `[k0, k1)` and containerd lines `[c0, c1)` interleaved, plus noise.
fn write_mix(j: &Journald, (k0, k1): (usize, usize), (c0, c1): (usize, usize)) {
    let w = j.writer();
    for step in 0..(k1 - k0).max(c1 - c0) {
        let i = k0 + step;
        if i < k1 {
            w.send("kubelet", 6, &line("kubelet", i, 200));
        }
        if c0 + step < c1 {
            w.send("containerd", 4, &line("containerd", c0 + step, 120));
        }
        if i % 10 == 0 {
            // Not configured, and below the minimum priority: never shipped.
            w.send("sshd", 6, &line("sshd", i, 50));
            w.send("kubelet", 7, &line("debug", i, 50));
        }
    }
}

fn group() -> String {
    format!("/aws/eks-hybrid/{CLUSTER}")
}

async fn check(url: &str) {
    let k = read_stream(url, &group(), &format!("{NODE}/kubelet")).await;
    let c = read_stream(url, &group(), &format!("{NODE}/containerd")).await;
    assert_eq!(
        check_exactly_once_in_order(&k, "kubelet", KUBELET_LINES),
        0,
        "kubelet duplicates"
    );
    assert_eq!(
        check_exactly_once_in_order(&c, "containerd", CONTAINERD_LINES),
        0,
        "containerd duplicates"
    );
    assert!(
        k.iter().all(|m| !m.contains(" debug ")),
        "a debug-priority line was shipped"
    );
    // Priority, identifier and pid survive in the message.
    assert!(k[0].starts_with("<6>kubelet["), "{}", k[0]);
    assert!(c[0].starts_with("<4>containerd["), "{}", c[0]);
}

#[test]
fn journald_to_devstack_exactly_once_in_order_and_resumes_from_cursor() {
    let j = Journald::start(JournaldLimits::default());
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Half before the agent starts, half while it runs, the last part after a restart.
    write_mix(&j, (0, KUBELET_LINES / 2), (0, CONTAINERD_LINES / 2));
    let agent = InProcess::start(
        settings(&j.dir(), tmp.path(), &["kubelet", "containerd"]),
        &ds.url,
    );
    write_mix(
        &j,
        (KUBELET_LINES / 2, KUBELET_LINES * 3 / 4),
        (CONTAINERD_LINES / 2, CONTAINERD_LINES * 3 / 4),
    );
    let want = (KUBELET_LINES * 3 / 4 + CONTAINERD_LINES * 3 / 4) as u64;
    agent.wait_for("first part shipped", Duration::from_secs(60), |s| {
        s.counters.shipped >= want
    });
    let st = agent.status.snapshot();
    assert_eq!(st.counters.shipped, want, "shipped more than written");
    let k = st
        .streams
        .get(&format!("{NODE}/kubelet"))
        .expect("kubelet stream in status");
    assert_eq!(k.backlog_events, 0);
    assert!(k.last_shipped_ms.is_some() && k.lag_ms.is_some());
    agent.stop();
    write_mix(
        &j,
        (KUBELET_LINES * 3 / 4, KUBELET_LINES),
        (CONTAINERD_LINES * 3 / 4, CONTAINERD_LINES),
    );
    let agent = InProcess::start(
        settings(&j.dir(), tmp.path(), &["kubelet", "containerd"]),
        &ds.url,
    );
    let rest = (KUBELET_LINES + CONTAINERD_LINES) as u64 - want;
    agent.wait_for("rest shipped after restart", Duration::from_secs(60), |s| {
        s.counters.shipped >= rest
    });
    agent.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(check(&ds.url));
    assert_eq!(ds.state.call_count("logs", "DescribeLogStreams"), 0);
    // Created once, on the first ResourceNotFoundException per stream.
    assert_eq!(ds.state.call_count("logs", "CreateLogStream"), 2);
}

#[test]
fn journald_to_moto_exactly_once_in_order() {
    let j = Journald::start(JournaldLimits::default());
    let moto = moto();
    let tmp = tempfile::tempdir().expect("tempdir");
    write_mix(&j, (0, KUBELET_LINES), (0, CONTAINERD_LINES));
    let agent = InProcess::start(
        settings(&j.dir(), tmp.path(), &["kubelet", "containerd"]),
        &moto.url,
    );
    let want = (KUBELET_LINES + CONTAINERD_LINES) as u64;
    agent.wait_for("all shipped to moto", Duration::from_secs(120), |s| {
        s.counters.shipped >= want
    });
    agent.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(check(&moto.url));
}
