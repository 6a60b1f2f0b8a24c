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
//! Recovery: after calls failed for a while (an outage), every node of the fleet comes back
//! within the sink's retry window, and each holds the backlog of the whole outage. A node that
//! then drained at its full rate would make the fleet's rate climb for the whole retry window,
//! each node adding its full rate as it gets through: in `scripts/bench herd` the minute after a
//! 10-minute outage rose from 1,300 to over 9,000 calls a second, 1.86 times its mean. So a node
//! whose calls failed for at least [`SLOW_START_MIN_STRETCH`] restarts slow, as a load balancer's
//! slow-start mode brings a target back (Elastic Load Balancing's `slow_start.duration_seconds`)
//! and as TCP restarts after a loss: its rate starts at [`SLOW_START_FLOOR`] of the drain rate
//! and climbs linearly back to it over twice the failing stretch, at least
//! [`SLOW_START_MIN_RAMP`] and at most [`SLOW_START_MAX_RAMP`], in bursts of at most
//! [`SLOW_START_BURST`] ([`SlowStart`]). The retries of the calls that failed are not paced by it
//! (the backoff governs them), and they are what the fleet sends first: with full jitter the
//! first successes of a fleet fall most densely right after the recovery and thin out over the
//! retry window, while the slow drains behind them grow; the two sum to a nearly flat minute.
//! A blip shorter than the minimum stretch leaves the rate alone.
//!
//! The arithmetic is the generic cell rate algorithm (GCRA, "virtual scheduling"), pure and in
//! milliseconds from an origin ([`Bucket`]); [`Pace`] puts a clock and a mutex around it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::RandomJitter;

/// Sustained PutLogEvents calls a second per node. 5,000 TPS default account quota (large
/// Regions; 1,500 elsewhere) / 5,000 nodes draining at the same time; CloudWatch Logs service
/// quotas.
pub const DRAIN_RATE_PER_SEC: f64 = 1.0;
/// Calls a node may make at once before the rate applies: one per default shipped unit
/// (kubelet, containerd, hybrid-agent) plus the child-output streams of a flush, so ordinary
/// shipping never waits. Ours.
pub const DRAIN_BURST: u32 = 5;

/// A failing stretch at least this long restarts the node slow; a shorter blip leaves little
/// backlog and the rate as it was. Ours: two flush intervals.
pub const SLOW_START_MIN_STRETCH: Duration = Duration::from_secs(10);
/// The share of the drain rate a slow start begins at. Ours, from `scripts/bench herd`: at a
/// tenth the growing drains balance the thinning first successes (a fifth or a twentieth leave
/// the minute rising or falling; docs/measurements.md "Fleet herd after an outage").
pub const SLOW_START_FLOOR: f64 = 0.1;
/// Shortest and longest climb back to the full rate (twice the failing stretch in between).
pub const SLOW_START_MIN_RAMP: Duration = Duration::from_secs(120);
pub const SLOW_START_MAX_RAMP: Duration = Duration::from_secs(600);
/// Burst during a slow start: one call per default shipped unit, so a window of the three
/// streams still goes together. Ours.
pub const SLOW_START_BURST: u32 = 3;

/// A climb from [`SLOW_START_FLOOR`] of the rate back to all of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// When the climb began (ms from the bucket's origin).
    pub from_ms: f64,
    /// How long it lasts.
    pub ramp_ms: f64,
}

impl SlowStart {
    /// The climb after calls failed for `failing_for`, beginning at `now_ms`; `None` for a blip.
    pub fn after(failing_for: Duration, now_ms: u64) -> Option<SlowStart> {
        if failing_for < SLOW_START_MIN_STRETCH {
            return None;
        }
        let ramp = failing_for
            .saturating_mul(2)
            .clamp(SLOW_START_MIN_RAMP, SLOW_START_MAX_RAMP);
        Some(SlowStart {
            from_ms: now_ms as f64,
            ramp_ms: ramp.as_millis() as f64,
        })
    }

    /// How long the climb lasts.
    pub fn ramp(&self) -> Duration {
        Duration::from_millis(self.ramp_ms.max(0.0) as u64)
    }

    /// The share of the full rate at `now_ms` (`None` once the climb is over).
    fn share(&self, now_ms: f64) -> Option<f64> {
        climb_share(now_ms - self.from_ms, self.ramp_ms)
    }
}

/// The share of the full rate `elapsed` into a climb lasting `ramp` (any one unit): from
/// [`SLOW_START_FLOOR`] linearly to all of it; `None` once the climb is over or for a ramp that
/// is not positive.
pub fn climb_share(elapsed: f64, ramp: f64) -> Option<f64> {
    let t = elapsed / ramp;
    if ramp.is_nan() || ramp <= 0.0 || t.is_nan() || t >= 1.0 {
        return None;
    }
    Some(SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * t.max(0.0))
}

/// A token bucket in virtual-scheduling form: `tat` is the theoretical arrival time of the next
/// call, in milliseconds from an origin. A call at `now` may go at `max(tat, now) - tolerance`
/// (tolerance = room for `burst - 1` calls) but not before the start, and moves `tat` one
/// interval on. Reservations queue: callers that arrive together are given successive slots.
/// During a [`SlowStart`] the interval and the burst follow the climb.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate: f64,
    burst: u32,
    tat_ms: f64,
    start_ms: f64,
    slow: Option<SlowStart>,
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
        Bucket {
            rate,
            burst: burst.max(1),
            tat_ms: start_ms as f64,
            start_ms: start_ms as f64,
            slow: None,
        }
    }

    /// Restarts slow: from `slow.from_ms` the rate and the burst follow the climb, beginning
    /// with the slow burst whatever slots the retries before it reserved ahead.
    pub fn slow_start(&mut self, slow: SlowStart) {
        self.tat_ms = slow.from_ms.max(self.start_ms);
        self.slow = Some(slow);
    }

    /// The slow start under way at `now_ms`, if any.
    pub fn slow_start_at(&self, now_ms: u64) -> Option<SlowStart> {
        self.slow.filter(|s| s.share(now_ms as f64).is_some())
    }

    /// Reserves the next slot for a call made at `now_ms`; returns how long to wait for it.
    pub fn reserve(&mut self, now_ms: u64) -> Duration {
        let now = now_ms as f64;
        let (rate, burst) = match self.slow.and_then(|s| s.share(now)) {
            Some(share) => (self.rate * share, self.burst.min(SLOW_START_BURST)),
            None => {
                self.slow = None;
                (self.rate, self.burst)
            }
        };
        let interval_ms = 1000.0 / rate;
        let tolerance_ms = interval_ms * f64::from(burst - 1);
        let tat = self.tat_ms.max(now);
        let allowed = (tat - tolerance_ms).max(self.start_ms);
        self.tat_ms = tat + interval_ms;
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
    /// Whether a long failing stretch restarts the node slow ([`SlowStart`]).
    slow_start: bool,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pace").field("state", &self.state).finish()
    }
}

impl Pace {
    /// Calls at `rate` a second in bursts of `burst`, the first after `start_delay`; no slow
    /// start.
    pub fn new(rate: f64, burst: u32, start_delay: Duration) -> Pace {
        Pace {
            origin: Instant::now(),
            state: Mutex::new(State {
                bucket: Bucket::new(rate, burst, ms(start_delay)),
                failing_since_ms: None,
            }),
            slow_start: false,
        }
    }

    /// Restarts slow after a long failing stretch ([`SlowStart`]).
    pub fn with_slow_start(mut self) -> Pace {
        self.slow_start = true;
        self
    }

    /// The agent's pacing (`rate`: [`DRAIN_RATE_PER_SEC`]; [`DRAIN_BURST`]): the first call at a
    /// random time within `spread`, and a slow start after an outage.
    pub fn for_node(rate: f64, spread: Duration) -> Pace {
        Pace::new(
            rate,
            DRAIN_BURST,
            crate::retry::startup_delay(spread, &RandomJitter),
        )
        .with_slow_start()
    }

    /// No pacing (tests and the herd bench's baseline).
    pub fn unlimited() -> Pace {
        Pace::new(1e9, u32::MAX, Duration::ZERO)
    }

    /// Waits for the next slot. `failing`: the sink's calls are failing (the last attempt of
    /// some batch failed and none succeeded since). The first call after a failing stretch of
    /// at least [`SLOW_START_MIN_STRETCH`] starts a [`SlowStart`]; the retries while failing
    /// take their slots as usual (their backoff governs them). Returns the slow start this
    /// call began, with how long calls had failed.
    pub async fn acquire(&self, failing: bool) -> Option<(Duration, SlowStart)> {
        let now_ms = ms(self.origin.elapsed());
        let (wait, started) = lock(&self.state).reserve(failing, now_ms, self.slow_start);
        if let Some((stretch, slow)) = started {
            tracing::info!(
                failing_for_s = stretch.as_secs(),
                ramp_s = slow.ramp().as_secs(),
                "CloudWatch Logs answers again: shipping restarts at a tenth of its rate and climbs back to it (slow start), so a fleet does not drain its outage backlog at once"
            );
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        started
    }
}

impl State {
    /// One call's slot at `now_ms` given whether calls are `failing`, and the slow start this
    /// call began (with the failing stretch behind it), if any.
    fn reserve(
        &mut self,
        failing: bool,
        now_ms: u64,
        slow_start: bool,
    ) -> (Duration, Option<(Duration, SlowStart)>) {
        let mut started = None;
        match (failing, self.failing_since_ms) {
            (true, None) => self.failing_since_ms = Some(now_ms),
            (false, Some(since)) => {
                self.failing_since_ms = None;
                let stretch = Duration::from_millis(now_ms.saturating_sub(since));
                if slow_start && let Some(slow) = SlowStart::after(stretch, now_ms) {
                    self.bucket.slow_start(slow);
                    started = Some((stretch, slow));
                }
            }
            _ => {}
        }
        (self.bucket.reserve(now_ms), started)
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
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

    /// Calls asked for in a tight loop from `from_ms` to `to_ms` (each taking 5 ms): when they
    /// went, in ms.
    fn drain(b: &mut Bucket, from_ms: u64, to_ms: u64) -> Vec<u64> {
        let mut now = from_ms;
        let mut sent = Vec::new();
        loop {
            now += b.reserve(now).as_millis() as u64;
            if now >= to_ms {
                return sent;
            }
            sent.push(now);
            now += 5;
        }
    }

    fn per_second(sent: &[u64]) -> std::collections::BTreeMap<u64, u32> {
        let mut m = std::collections::BTreeMap::new();
        for t in sent {
            *m.entry(t / 1000).or_default() += 1;
        }
        m
    }

    /// The climb lasts twice the failing stretch, between its bounds; a blip starts none.
    #[test]
    fn a_slow_start_follows_a_long_failing_stretch_only() {
        let s = Duration::from_secs(1);
        assert_eq!(SlowStart::after(9 * s, 0), None);
        let ramp = |stretch| SlowStart::after(stretch, 5).map(|x| (x.from_ms, x.ramp_ms));
        assert_eq!(ramp(10 * s), Some((5.0, 120_000.0)));
        assert_eq!(ramp(90 * s), Some((5.0, 180_000.0)));
        assert_eq!(ramp(600 * s), Some((5.0, 600_000.0)));
        assert_eq!(ramp(Duration::MAX), Some((5.0, 600_000.0)));
    }

    /// After a 10-minute outage a node drains at a tenth of its rate, climbing linearly back to
    /// all of it over ten minutes, never more than [`SLOW_START_BURST`] calls in a second; then
    /// at the full rate again.
    #[test]
    fn a_slow_start_climbs_from_a_tenth_back_to_the_rate() {
        let mut b = Bucket::new(DRAIN_RATE_PER_SEC, DRAIN_BURST, 0);
        let slow = SlowStart::after(Duration::from_secs(600), 1_000_000);
        b.slow_start(slow.unwrap_or_else(|| panic!("a 10-minute stretch starts slow")));
        let sent = drain(&mut b, 1_000_000, 1_000_000 + 720_000);
        let secs = per_second(&sent);
        assert!(secs.values().all(|&n| n <= SLOW_START_BURST), "{secs:?}");
        let in_minute = |m: u64| {
            sent.iter()
                .filter(|&&t| (1_000_000 + m * 60_000..1_000_000 + (m + 1) * 60_000).contains(&t))
                .count() as f64
        };
        // Minute m of the climb averages a share of 0.1 + 0.9·(m + ½)/10: 60·that calls.
        for m in 0..10 {
            let want = 60.0 * (0.1 + 0.9 * (m as f64 + 0.5) / 10.0);
            let got = in_minute(m);
            assert!(
                (got - want).abs() <= 3.0,
                "minute {m}: {got} calls, want {want:.1}"
            );
        }
        assert!((in_minute(11) - 60.0).abs() <= 1.0, "{}", in_minute(11));
        // Against the rate without a slow start: about 60 calls in the first minute.
        let mut plain = Bucket::new(DRAIN_RATE_PER_SEC, DRAIN_BURST, 0);
        let first = drain(&mut plain, 0, 60_000).len();
        assert!((60..=65).contains(&first), "{first}");
        assert!(in_minute(0) <= 10.0, "{}", in_minute(0));
    }

    /// The stretch is measured from the first failing call to the first call after it that
    /// finds the sink healthy, which starts the climb; a blip does not; a pace without slow
    /// starts (tests, the herd's baseline) never does.
    #[test]
    fn the_first_call_after_a_failing_stretch_starts_the_climb() {
        let state = || State {
            bucket: Bucket::new(1.0, 5, 0),
            failing_since_ms: None,
        };
        let mut st = state();
        assert_eq!(st.reserve(false, 1_000, true).1, None);
        assert_eq!(st.reserve(true, 2_000, true).1, None);
        assert_eq!(
            st.reserve(true, 300_000, true).1,
            None,
            "retries while failing"
        );
        let (_, started) = st.reserve(false, 302_000, true);
        let (stretch, slow) = started.unwrap_or_else(|| panic!("a 300 s stretch starts slow"));
        assert_eq!(stretch, Duration::from_secs(300));
        assert_eq!((slow.from_ms, slow.ramp_ms), (302_000.0, 600_000.0));
        assert!(st.bucket.slow_start_at(302_001).is_some());
        // The slow burst is there at once, however far the retries had reserved ahead.
        let mut b = Bucket::new(1.0, 5, 0);
        for _ in 0..100 {
            b.reserve(1_000);
        }
        b.slow_start(slow);
        let waits: Vec<_> = (0..4).map(|_| b.reserve(302_000).as_millis()).collect();
        assert_eq!(waits[..3], [0, 0, 0], "{waits:?}");
        assert!((9_900..=10_000).contains(&waits[3]), "{waits:?}");
        assert!(st.bucket.slow_start_at(902_000).is_none());
        assert_eq!(st.reserve(false, 303_000, true).1, None, "once per stretch");

        let mut st = state();
        st.reserve(true, 0, true);
        assert_eq!(st.reserve(false, 9_999, true).1, None, "a blip");
        let mut st = state();
        st.reserve(true, 0, false);
        assert_eq!(st.reserve(false, 600_000, false).1, None, "slow start off");
        assert!(st.bucket.slow_start_at(600_001).is_none());
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
