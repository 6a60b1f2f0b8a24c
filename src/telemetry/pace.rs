//! Pacing of PutLogEvents calls: a per-node token bucket, and the node's start-up offset.
//!
//! After an outage every node of a site holds a spool of backlog, and the shipper would send
//! it window after window as fast as CloudWatch answers: 10,000 nodes doing that at once is far
//! above what an account may send. CloudWatch Logs throttles PutLogEvents per account and Region
//! (the per-stream quota of five requests a second was removed; the account quota is adjustable
//! through Service Quotas — PutLogEvents API reference), at 5,000 transactions a second in the
//! large Regions (us-east-1, us-west-2, eu-west-1) and 1,500 in the others (CloudWatch Logs
//! service quotas page); CreateLogStream is limited to 50 TPS per account (CreateLogStream API
//! reference). One call carries at most 1,048,576 bytes or 10,000 events.
//!
//! So each node paces its calls with a token bucket of [`DRAIN_RATE_PER_SEC`] calls a second
//! (bursts of [`DRAIN_BURST`]): a node still drains up to 1 MiB a second (86 GB a day, far more
//! than a node logs), normal shipping (a batch per stream every flush interval) never waits, and
//! a fleet of up to 5,000 nodes draining at once stays inside the default account quota. The
//! bucket also holds the node's first call back by a random start-up offset
//! ([`crate::retry::startup_delay`]), so a site that powers up at once does not
//! send its first PutLogEvents/CreateLogStream in the same second.
//!
//! Recovery: after calls failed for a while (an outage), every node of the fleet succeeds again
//! within the same retry window and would then send its whole backlog at once. The first call
//! that sees the sink healthy again after a failing stretch holds the node's later calls back
//! by a random share of that stretch, at most the fleet spread (`daemon.startup_jitter`, 30 s
//! by default; [`recovery_delay`]): a blip of a second costs at most a second, a long outage
//! spreads the fleet's drain over the spread on top of the retry window.
//!
//! The arithmetic is the generic cell rate algorithm (GCRA, "virtual scheduling"), pure and in
//! milliseconds from an origin ([`Bucket`]); [`Pace`] puts a clock and a mutex around it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::{Jitter, RandomJitter};

/// Sustained PutLogEvents calls a second per node. 5,000 TPS default account quota (large
/// Regions; 1,500 elsewhere) / 5,000 nodes draining at the same time; CloudWatch Logs service
/// quotas.
pub const DRAIN_RATE_PER_SEC: f64 = 1.0;
/// Calls a node may make at once before the rate applies: one per default shipped unit
/// (kubelet, containerd, hybrid-agent) plus the child-output streams of a flush, so ordinary
/// shipping never waits. Ours.
pub const DRAIN_BURST: u32 = 5;

/// Hold-back after calls failed for `failing_for`: uniform in [0, min(failing_for, `spread`)].
pub fn recovery_delay(failing_for: Duration, spread: Duration, jitter: &dyn Jitter) -> Duration {
    let u = jitter.unit();
    let u = if u.is_nan() { 0.5 } else { u.clamp(0.0, 1.0) };
    failing_for.min(spread).mul_f64(u)
}

/// A token bucket in virtual-scheduling form: `tat` is the theoretical arrival time of the next
/// call, in milliseconds from an origin. A call at `now` may go at `max(tat, now) - tolerance`
/// (tolerance = room for `burst - 1` calls) but not before the start, and moves `tat` one
/// interval on. Reservations queue:
/// callers that arrive together are given successive slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    interval_ms: f64,
    tolerance_ms: f64,
    tat_ms: f64,
    start_ms: f64,
}

impl Bucket {
    /// `rate` calls a second sustained, `burst` at once, nothing before `start_ms`.
    pub fn new(rate: f64, burst: u32, start_ms: u64) -> Bucket {
        // A rate of zero or less (or NaN) would mean "never": take one call a minute instead.
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0 / 60.0
        };
        let interval_ms = 1000.0 / rate;
        let tolerance_ms = interval_ms * f64::from(burst.max(1) - 1);
        Bucket {
            interval_ms,
            tolerance_ms,
            tat_ms: start_ms as f64,
            start_ms: start_ms as f64,
        }
    }

    /// No call before `at_ms` (later calls queue behind it at the rate).
    pub fn hold_until(&mut self, at_ms: u64) {
        let at = at_ms as f64;
        self.start_ms = self.start_ms.max(at);
        self.tat_ms = self.tat_ms.max(at);
    }

    /// Reserves the next slot for a call made at `now_ms`; returns how long to wait for it.
    pub fn reserve(&mut self, now_ms: u64) -> Duration {
        let now = now_ms as f64;
        let tat = self.tat_ms.max(now);
        let allowed = (tat - self.tolerance_ms).max(self.start_ms);
        self.tat_ms = tat + self.interval_ms;
        Duration::from_millis((allowed - now).max(0.0).ceil() as u64)
    }
}

/// The bucket plus when the current failing stretch began (ms from the origin).
#[derive(Debug)]
struct State {
    bucket: Bucket,
    failing_since_ms: Option<u64>,
}

/// A node's PutLogEvents pacing: one per process, shared by every stream's sends.
pub struct Pace {
    origin: Instant,
    state: Mutex<State>,
    jitter: Arc<dyn Jitter>,
    /// Longest hold-back after a failing stretch ([`recovery_delay`]); zero: none.
    recovery_spread: Duration,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pace").field("state", &self.state).finish()
    }
}

impl Pace {
    /// Calls at `rate` a second in bursts of `burst`, the first after `start_delay`.
    pub fn new(rate: f64, burst: u32, start_delay: Duration) -> Pace {
        Pace {
            origin: Instant::now(),
            state: Mutex::new(State {
                bucket: Bucket::new(rate, burst, ms(start_delay)),
                failing_since_ms: None,
            }),
            jitter: Arc::new(RandomJitter),
            recovery_spread: Duration::ZERO,
        }
    }

    /// Holds calls back after a failing stretch by up to `spread` ([`recovery_delay`]).
    pub fn with_recovery_spread(mut self, spread: Duration) -> Pace {
        self.recovery_spread = spread;
        self
    }

    /// The same with its randomness pinned (tests).
    pub fn with_jitter(mut self, jitter: Arc<dyn Jitter>) -> Pace {
        self.jitter = jitter;
        self
    }

    /// The agent's pacing (`rate`: [`DRAIN_RATE_PER_SEC`]; [`DRAIN_BURST`]): the first call at a random
    /// time within `spread`. No hold-back after an outage: the sink's full-jitter retries already
    /// spread the fleet's first successes over the retry window, and the rate bounds the drain
    /// that follows; a hold-back on top stacked a second spread on the first (a triangle whose
    /// peak was 1.83 times the recovery minute's mean in `scripts/bench herd`).
    pub fn for_node(rate: f64, spread: Duration) -> Pace {
        Pace::new(
            rate,
            DRAIN_BURST,
            crate::retry::startup_delay(spread, &RandomJitter),
        )
    }

    /// No pacing (tests and the herd bench's baseline).
    pub fn unlimited() -> Pace {
        Pace::new(1e9, u32::MAX, Duration::ZERO)
    }

    /// Waits for the next slot. `failing`: the sink's calls are failing (the last attempt of
    /// some batch failed and none succeeded since); the first call after a failing stretch
    /// holds this and later calls back by [`recovery_delay`].
    pub async fn acquire(&self, failing: bool) {
        let now_ms = ms(self.origin.elapsed());
        let wait = {
            let mut st = match self.state.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            match (failing, st.failing_since_ms) {
                (true, None) => st.failing_since_ms = Some(now_ms),
                (false, Some(since)) if !self.recovery_spread.is_zero() => {
                    st.failing_since_ms = None;
                    let hold = recovery_delay(
                        Duration::from_millis(now_ms.saturating_sub(since)),
                        self.recovery_spread,
                        self.jitter.as_ref(),
                    );
                    st.bucket.hold_until(now_ms.saturating_add(ms(hold)));
                }
                (false, Some(_)) => st.failing_since_ms = None,
                _ => {}
            }
            st.bucket.reserve(now_ms)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_goes_at_once_then_one_call_per_interval() {
        let mut b = Bucket::new(1.0, 5, 0);
        let waits: Vec<_> = (0..8).map(|_| b.reserve(0)).collect();
        assert_eq!(
            waits,
            [0, 0, 0, 0, 0, 1000, 2000, 3000].map(|ms| ms * MS),
            "five at once, then queued a second apart"
        );
    }

    /// A backlog drained as fast as the shipper can ask is sent at the rate: 120 calls asked
    /// for in a tight loop are spread over about two minutes, never more than `burst` in the
    /// first second or the rate in any later one.
    #[test]
    fn a_drain_is_held_to_the_rate() {
        let mut b = Bucket::new(DRAIN_RATE_PER_SEC, DRAIN_BURST, 0);
        let mut now = 0u64;
        let mut sent = Vec::new();
        for _ in 0..120 {
            now += b.reserve(now).as_millis() as u64;
            sent.push(now);
            now += 5; // the call itself
        }
        let mut per_sec = std::collections::BTreeMap::<u64, u32>::new();
        for t in &sent {
            *per_sec.entry(t / 1000).or_default() += 1;
        }
        assert!(per_sec[&0] <= DRAIN_BURST, "{per_sec:?}");
        assert!(
            per_sec
                .iter()
                .skip(1)
                .all(|(_, &n)| f64::from(n) <= DRAIN_RATE_PER_SEC.ceil()),
            "{per_sec:?}"
        );
        let last = *sent.last().unwrap_or(&0);
        assert!(
            (110_000..=120_000).contains(&last),
            "last call at {last} ms"
        );
    }

    /// Idle time refills the bucket, but only up to the burst.
    #[test]
    fn idle_time_refills_up_to_the_burst() {
        let mut b = Bucket::new(2.0, 3, 0);
        for _ in 0..3 {
            assert_eq!(b.reserve(0), Duration::ZERO);
        }
        assert_eq!(b.reserve(0), 500 * MS);
        // An hour later: three at once again, not 7,200.
        let t = 3_600_000;
        for _ in 0..3 {
            assert_eq!(b.reserve(t), Duration::ZERO);
        }
        assert_eq!(b.reserve(t), 500 * MS);
    }

    /// The start-up offset holds the first call back, then the burst applies from there.
    #[test]
    fn nothing_goes_before_the_start_offset() {
        let mut b = Bucket::new(1.0, 2, 7_000);
        assert_eq!(b.reserve(0), 7_000 * MS);
        assert_eq!(b.reserve(0), 7_000 * MS);
        assert_eq!(b.reserve(0), 8_000 * MS);
        let mut b = Bucket::new(1.0, 2, 7_000);
        assert_eq!(b.reserve(9_000), Duration::ZERO);
    }

    #[test]
    fn absurd_rates_do_not_panic_or_spin() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut b = Bucket::new(rate, 0, 0);
            assert_eq!(b.reserve(0), Duration::ZERO);
            assert!(b.reserve(0) >= Duration::from_secs(1), "rate {rate}");
        }
        let mut b = Bucket::new(1e9, u32::MAX, 0);
        for _ in 0..1000 {
            assert_eq!(b.reserve(0), Duration::ZERO);
        }
    }

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    /// The hold-back after an outage grows with the outage, up to the spread: a blip costs at
    /// most its own length, a ten-minute outage spreads a fleet's drain over the whole spread.
    #[test]
    fn recovery_hold_back_scales_with_the_outage() {
        let s = Duration::from_secs(1);
        let spread = 30 * s;
        assert_eq!(recovery_delay(2 * s, spread, &Fixed(1.0)), 2 * s);
        assert_eq!(recovery_delay(2 * s, spread, &Fixed(0.25)), 500 * MS);
        assert_eq!(recovery_delay(600 * s, spread, &Fixed(1.0)), spread);
        assert_eq!(recovery_delay(600 * s, spread, &Fixed(0.5)), 15 * s);
        assert_eq!(recovery_delay(600 * s, spread, &Fixed(f64::NAN)), 15 * s);
        assert_eq!(
            recovery_delay(Duration::ZERO, spread, &Fixed(1.0)),
            Duration::ZERO
        );
        assert_eq!(
            recovery_delay(600 * s, Duration::ZERO, &Fixed(1.0)),
            Duration::ZERO
        );
    }

    /// After a hold, calls queue behind it at the rate.
    #[test]
    fn a_hold_delays_the_calls_behind_it() {
        let mut b = Bucket::new(1.0, 2, 0);
        b.hold_until(10_000);
        assert_eq!(b.reserve(1_000), 9_000 * MS);
        assert_eq!(b.reserve(1_000), 9_000 * MS);
        assert_eq!(b.reserve(1_000), 10_000 * MS);
        // A hold in the past changes nothing.
        let mut b = Bucket::new(1.0, 1, 0);
        b.hold_until(0);
        assert_eq!(b.reserve(5_000), Duration::ZERO);
    }

    /// The first call that finds the sink healthy after a failing stretch holds the node back
    /// by a share of that stretch; calls while failing are not held (backoff governs them).
    #[tokio::test]
    async fn the_first_call_after_a_failing_stretch_is_held_back() {
        let p = Pace::new(1000.0, 100, Duration::ZERO)
            .with_jitter(Arc::new(Fixed(1.0)))
            .with_recovery_spread(Duration::from_secs(30));
        let t0 = Instant::now();
        p.acquire(true).await;
        assert!(t0.elapsed() < 50 * MS);
        tokio::time::sleep(200 * MS).await;
        p.acquire(true).await;
        assert!(t0.elapsed() < 300 * MS);
        p.acquire(false).await; // recovered: held by the whole stretch (~200 ms)
        let took = t0.elapsed();
        assert!(took >= 390 * MS && took < 2000 * MS, "{took:?}");
        let t1 = Instant::now();
        p.acquire(false).await; // healthy since: no hold
        assert!(t1.elapsed() < 50 * MS);
    }

    #[tokio::test]
    async fn acquire_waits_for_the_slot() {
        let p = Pace::new(20.0, 1, Duration::from_millis(30));
        let t0 = Instant::now();
        p.acquire(false).await;
        p.acquire(false).await;
        let took = t0.elapsed();
        assert!(took >= 80 * MS && took < 2000 * MS, "{took:?}");
    }
}
