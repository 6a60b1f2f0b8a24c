//! The slow start after an outage (`telemetry::pace`), through the public telemetry API with a
//! hand-started journald and the devstack: a node whose PutLogEvents calls failed for longer than
//! the minimum stretch comes back at a tenth of its pacing rate, says so in its status (text,
//! JSON) and in the log, and the devstack sees the drain held back, while before the outage the
//! same backlog went at the full rate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod telemetry_support;

use std::time::{Duration, Instant};

use hybrid_agent::telemetry::pace;
use telemetry_support::*;

const UNITS: [&str; 3] = ["kubelet", "containerd", "hybrid-agent"];

/// PutLogEvents (and any other CloudWatch Logs) calls the devstack saw in unix seconds
/// `[from, to)`.
fn logs_calls(ds: &hybrid_devstack::Devstack, from: u64, to: u64) -> u64 {
    let a = hybrid_devstack::state::lock(&ds.state.arrivals).to_json();
    a.get("logs")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter(|(s, _)| s.parse::<u64>().is_ok_and(|s| (from..to).contains(&s)))
                .filter_map(|(_, v)| v.get("calls").and_then(|c| c.as_u64()))
                .sum()
        })
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    hybrid_agent::telemetry::now_ms() as u64 / 1000
}

#[test]
fn after_an_outage_the_drain_restarts_at_a_tenth_and_says_so() {
    let j = Journald::start(JournaldLimits::default());
    let ds = devstack();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&j.dir(), tmp.path(), &UNITS);
    s.put_rate = Some(pace::DRAIN_RATE_PER_SEC);
    let agent = InProcess::start(s, &ds.url);

    // A writer that always has lines for all three streams: far more windows than one call a
    // second can carry, so the pace, not the journal, sets the call rate.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (w, stop) = (j.writer(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for u in UNITS {
                    w.send(u, 6, &line(u, i, 100));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    agent.wait_for("lines shipped", Duration::from_secs(60), |s| {
        s.counters.shipped > 0
    });
    std::thread::sleep(Duration::from_secs(6));
    let before_to = unix_now();
    let before = logs_calls(&ds, before_to - 5, before_to);

    // An outage longer than the minimum stretch.
    let outage = pace::SLOW_START_MIN_STRETCH + Duration::from_secs(4);
    ds.state.faults_mut().outage_until = Some(Instant::now() + outage);
    std::thread::sleep(outage);
    agent.wait_for(
        "the slow start after the outage",
        Duration::from_secs(60),
        |s| s.counters.slow_start.is_some(),
    );
    let st = agent.status.snapshot();
    let slow = st.counters.slow_start.clone().unwrap();
    assert!(
        slow.failing_for_ms >= pace::SLOW_START_MIN_STRETCH.as_millis() as u64
            && slow.failing_for_ms <= outage.as_millis() as u64 + 3_000,
        "{slow:?}"
    );
    assert_eq!(
        (slow.until_ms - slow.since_ms) as u128,
        pace::SLOW_START_MIN_RAMP.as_millis(),
        "a short stretch climbs back over the shortest ramp"
    );
    let text = st.render();
    assert!(
        text.contains("slow start after") && text.contains("% of its rate"),
        "{text}"
    );
    let json = serde_json::to_value(&st).unwrap();
    assert!(
        json["counters"]["slow_start"]["until_ms"].as_i64() == Some(slow.until_ms),
        "{json}"
    );

    // Twenty seconds from the slow start (from the start of its second, which may also hold the
    // last retries of the outage, up to one per stream): the slow burst of 3, then a tenth of
    // the rate climbing, a call about 10 s and 19 s in; at the full rate it would be 5 + 20.
    let from = (slow.since_ms / 1000) as u64;
    while unix_now() < from + 21 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = logs_calls(&ds, from, from + 21);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!(
        "calls in the 5 s before the outage: {before}; in the 20 s after the slow start began: {after}; {slow:?}"
    );
    assert!(
        before >= 4,
        "before the outage the pace should carry about one call a second, saw {before} in 5 s"
    );
    assert!(
        (4..=10).contains(&after),
        "the slow start should hold the drain to 5 to 8 calls in 20 s, saw {after}"
    );
    // The backlog still arrives: the climb is not a stall.
    let shipped = agent.status.snapshot().counters.shipped;
    agent.wait_for("the drain moves on", Duration::from_secs(60), |s| {
        s.counters.shipped > shipped
    });
    agent.stop();
}
