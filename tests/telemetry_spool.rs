//! The spool under stress, through the public telemetry API with a hand-started journald and the
//! devstack:
//! - spool full during an outage → the journal source pauses (visible in status and in the
//!   `SpoolPaused`/`SpoolPauses` metrics), nothing is dropped: after recovery every line arrives;
//! - a spool segment truncated mid-record (a crash while writing) → the agent starts, truncates
//!   the torn tail, counts it, and ships everything before it.

mod telemetry_support;

use std::time::{Duration, Instant};

use hybrid_agent::telemetry::record::{Message, Record};
use hybrid_agent::telemetry::spool::{Spool, SpoolBudget};
use telemetry_support::*;

/// Starts or ends an outage in-process (the control endpoint itself is unreachable during one).
fn outage(ds: &hybrid_devstack::Devstack, on: bool) {
    ds.state.faults_mut().outage_until = on.then(|| Instant::now() + Duration::from_secs(3600));
}

#[test]
fn spool_full_pauses_sources_and_drops_nothing() {
    let j = Journald::start(JournaldLimits::default());
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&j.dir(), tmp.path(), &["kubelet"]);
    // Room for ~4,000 spooled lines of ~230 bytes.
    s.spool_max_bytes = 1 << 20;
    s.metrics_interval = Some(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    outage(&ds, true);
    let agent = InProcess::start(s, &ds.url);
    let w = j.writer();
    let n = 10_000;
    for i in 0..n {
        w.send("kubelet", 6, &line("kubelet", i, 200));
    }
    agent.wait_for(
        "sources paused on a full spool",
        Duration::from_secs(60),
        |s| s.counters.spool_paused && s.counters.spool_pauses >= 1,
    );
    let st = agent.status.snapshot();
    assert!(st.render().contains("SOURCES PAUSED"), "{}", st.render());
    assert!(
        st.spool_bytes <= st.spool_max_bytes && st.spool_max_bytes < 1 << 20,
        "{}",
        st.render()
    );
    // Samples taken while paused (1 s interval) wait on disk until the outage ends.
    let sampled_paused = Instant::now() + Duration::from_secs(3);
    while Instant::now() < sampled_paused {
        assert!(
            agent.status.snapshot().counters.spool_paused,
            "sources resumed while CloudWatch was still down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    outage(&ds, false);
    agent.wait_for(
        "everything shipped after the outage",
        Duration::from_secs(120),
        |s| s.counters.shipped >= n as u64,
    );
    let st = agent.status.snapshot();
    assert!(!st.counters.spool_paused);
    // The pause shows in the metrics too (sampled while paused, sent afterwards).
    let paused_seen = Instant::now() + Duration::from_secs(30);
    let group = format!("/aws/eks-hybrid/{CLUSTER}");
    let messages = rt.block_on(read_stream(&ds.url, &group, &format!("{NODE}/kubelet")));
    assert_eq!(check_exactly_once_in_order(&messages, "kubelet", n), 0);
    loop {
        let max = rt.block_on(async {
            let c = aws_sdk_cloudwatch::Client::new(&sdk_config(&ds.url).await);
            let r = c
                .get_metric_statistics()
                .namespace("HybridAgent")
                .metric_name("SpoolPaused")
                .dimensions(
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name("ClusterName")
                        .value(CLUSTER)
                        .build(),
                )
                .dimensions(
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name("NodeName")
                        .value(NODE)
                        .build(),
                )
                .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                    hybrid_agent::telemetry::now_ms() / 1000 - 600,
                ))
                .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                    hybrid_agent::telemetry::now_ms() / 1000 + 60,
                ))
                .period(60)
                .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
                .send()
                .await
                .expect("GetMetricStatistics");
            r.datapoints()
                .iter()
                .filter_map(|d| d.maximum())
                .fold(0.0f64, f64::max)
        });
        if max >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < paused_seen,
            "SpoolPaused=1 never arrived in CloudWatch metrics"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    agent.stop();
}

#[test]
fn spool_truncated_mid_record_recovers_and_counts() {
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty_journal = tmp.path().join("journal");
    std::fs::create_dir_all(&empty_journal).expect("journal dir");
    let s = settings(&empty_journal, tmp.path(), &["kubelet"]);
    // A spool left behind by a crashed agent: 100 records, the last one cut in half.
    let dir = s.spool_dir.join("journal");
    {
        let (mut spool, _) = Spool::open(&dir, SpoolBudget::new(1 << 30)).expect("spool");
        let recs: Vec<Record> = (0..100)
            .map(|i| Record {
                stream: "kubelet".into(),
                timestamp_ms: hybrid_agent::telemetry::now_ms(),
                message: Message::new(line("kubelet", i, 100)).expect("message"),
            })
            .collect();
        spool.append(&recs).expect("append");
        spool.commit().expect("commit");
    }
    let seg = std::fs::read_dir(&dir)
        .expect("spool dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("segment");
    let len = std::fs::metadata(&seg).expect("segment").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open segment");
    f.set_len(len - 40).expect("truncate");
    drop(f);

    let agent = InProcess::start(s, &ds.url);
    agent.wait_for(
        "the 99 whole records shipped",
        Duration::from_secs(60),
        |s| s.counters.shipped >= 99,
    );
    let st = agent.status.snapshot();
    assert!(st.counters.spool_torn_bytes > 0, "torn tail not counted");
    agent.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let messages = rt.block_on(read_stream(
        &ds.url,
        &format!("/aws/eks-hybrid/{CLUSTER}"),
        &format!("{NODE}/kubelet"),
    ));
    assert_eq!(check_exactly_once_in_order(&messages, "kubelet", 99), 0);
}

#[test]
fn child_output_is_spooled_and_shipped_per_component() {
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty_journal = tmp.path().join("journal");
    std::fs::create_dir_all(&empty_journal).expect("journal dir");
    let s = settings(&empty_journal, tmp.path(), &["kubelet"]);
    let spool_dir = s.spool_dir.join("child");
    let (tx, rx) = hybrid_agent::telemetry::child_line_channel();
    // CloudWatch down first: the lines must be on disk, not only in memory.
    ds.state.faults_mut().outage_until = Some(Instant::now() + Duration::from_secs(3600));
    let agent = InProcess::start_with_children(s, &ds.url, Some(rx));
    let n = 3000;
    for i in 0..n {
        let (component, stream) = if i % 3 == 0 {
            ("containerd", hybrid_agent::telemetry::ChildStream::Stderr)
        } else {
            (
                "kubelet-standin",
                hybrid_agent::telemetry::ChildStream::Stdout,
            )
        };
        let line = hybrid_agent::telemetry::ChildLine {
            component: component.into(),
            stream,
            line: line(component, i, 80),
            timestamp: std::time::SystemTime::now(),
            ack: None,
        };
        assert!(tx.blocking_send(line));
    }
    agent.wait_for("child lines in the spool", Duration::from_secs(30), |_| {
        std::fs::read_dir(&spool_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum::<u64>()
                    > 3000 * 80
            })
            .unwrap_or(false)
    });
    ds.state.faults_mut().outage_until = None;
    agent.wait_for("child lines shipped", Duration::from_secs(60), |s| {
        s.counters.shipped >= n as u64
    });
    agent.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let group = format!("/aws/eks-hybrid/{CLUSTER}");
    let c = rt.block_on(read_stream(&ds.url, &group, &format!("{NODE}/containerd")));
    let k = rt.block_on(read_stream(
        &ds.url,
        &group,
        &format!("{NODE}/kubelet-standin"),
    ));
    assert_eq!(c.len() + k.len(), n);
    assert!(
        c.iter().all(|m| m.starts_with("[stderr] containerd ")),
        "{}",
        c[0]
    );
    assert!(
        k.iter().all(|m| m.starts_with("[stdout] kubelet-standin ")),
        "{}",
        k[0]
    );
    let order = |v: &[String]| {
        v.iter()
            .filter_map(|m| m.split(' ').nth(2).and_then(|x| x.parse::<usize>().ok()))
            .collect::<Vec<_>>()
    };
    assert!(
        order(&c).is_sorted() && order(&k).is_sorted(),
        "child lines out of order"
    );
}

/// The built-in supervisor resumes child output from the position telemetry acknowledged: that
/// acknowledgement must come only once the line is in the spool. With CloudWatch down and the
/// spool full, lines wait in memory unacknowledged; once the spool drains, every line is
/// acknowledged, up to the last offset.
#[test]
fn child_output_is_acknowledged_only_once_spooled() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty_journal = tmp.path().join("journal");
    std::fs::create_dir_all(&empty_journal).expect("journal dir");
    let mut s = settings(&empty_journal, tmp.path(), &["kubelet"]);
    // Room for a few thousand spooled lines of ~200 bytes.
    s.spool_max_bytes = 1 << 20;
    let (tx, rx) = hybrid_agent::telemetry::child_line_channel();
    outage(&ds, true);
    let agent = InProcess::start_with_children(s, &ds.url, Some(rx));
    let cell = Arc::new(AtomicU64::new(0));
    let n = 8_000u64;
    let sender = std::thread::spawn({
        let cell = cell.clone();
        move || {
            for i in 0..n {
                let ok = tx.blocking_send(hybrid_agent::telemetry::ChildLine {
                    component: "containerd".into(),
                    stream: hybrid_agent::telemetry::ChildStream::Combined,
                    line: line("containerd", i as usize, 200),
                    timestamp: std::time::SystemTime::now(),
                    // The offset just past line i, as the supervisor's tail would give it.
                    ack: Some(hybrid_agent::telemetry::ChildAck {
                        cell: cell.clone(),
                        offset: i + 1,
                    }),
                });
                if !ok {
                    break;
                }
            }
        }
    });
    agent.wait_for(
        "sources paused on a full spool",
        Duration::from_secs(60),
        |s| s.counters.spool_paused,
    );
    let acked = cell.load(Ordering::Acquire);
    let spool_files = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let spooled = spool_files(&tmp.path().join("spool").join("child"));
    assert!(
        acked > 0 && acked < n,
        "with the spool full, only what it holds is acknowledged: {acked} of {n} ({spooled} bytes spooled)"
    );
    // Every acknowledged line is in the spool: at least its share of bytes is on disk.
    assert!(
        spooled >= acked * 200,
        "{acked} lines acknowledged but only {spooled} bytes spooled"
    );
    outage(&ds, false);
    agent.wait_for("child lines shipped", Duration::from_secs(120), |s| {
        s.counters.shipped >= n
    });
    sender.join().expect("sender");
    assert_eq!(
        cell.load(Ordering::Acquire),
        n,
        "the last line acknowledged"
    );
    agent.stop();
}

#[test]
fn too_old_dropped_and_too_new_rejected_are_counted_not_retried() {
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty_journal = tmp.path().join("journal");
    std::fs::create_dir_all(&empty_journal).expect("journal dir");
    let s = settings(&empty_journal, tmp.path(), &["kubelet"]);
    let now = hybrid_agent::telemetry::now_ms();
    let day = 24 * 3600 * 1000;
    {
        let (mut spool, _) =
            Spool::open(&s.spool_dir.join("journal"), SpoolBudget::new(1 << 30)).expect("spool");
        let mk = |ts: i64, i: usize| Record {
            stream: "kubelet".into(),
            timestamp_ms: ts,
            message: Message::new(line("kubelet", i, 60)).expect("message"),
        };
        // 15 days old: dropped before sending. 3 h ahead: CloudWatch rejects it (tooNew).
        spool
            .append(&[
                mk(now - 15 * day, 0),
                mk(now, 1),
                mk(now + 1, 2),
                mk(now + 3 * 3600 * 1000, 3),
            ])
            .expect("append");
        spool.commit().expect("commit");
    }
    let agent = InProcess::start(s, &ds.url);
    agent.wait_for("window settled", Duration::from_secs(30), |s| {
        s.counters.shipped + s.counters.rejected >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    let st = agent.status.snapshot();
    agent.stop();
    assert_eq!(
        (
            st.counters.shipped,
            st.counters.rejected,
            st.counters.dropped_too_old
        ),
        (2, 1, 1),
        "{}",
        st.render()
    );
    assert_eq!(
        ds.state.call_count("logs", "PutLogEvents"),
        2,
        "a 200 with rejectedLogEventsInfo was retried (first call: ResourceNotFound)"
    );
}
