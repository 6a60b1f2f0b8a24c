//! Capped exponential backoff with jitter for restarts, and crash-loop detection.
//!
//! One policy serves both places that restart things: the built-in backend's respawn loop and the
//! supervisor's restart of a unit systemd gave up on. Jitter only ever shortens a delay, so the cap
//! is a true upper bound an operator can rely on.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How restarts are spaced.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// Delay before the first restart after a stable run.
    pub base: Duration,
    /// No delay is ever longer than this.
    pub cap: Duration,
    /// Fraction (0..=1) of a delay that jitter may take away, so many nodes restarting after the
    /// same outage do not move in lockstep.
    pub jitter: f64,
    /// A child that ran this long without failing starts again from `base`.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        // nodeadm caps kubelet's restart delay at 60 s; systemd's RestartSec default for both units is 5 s.
        BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: 0.2,
            reset_after: Duration::from_secs(120),
        }
    }
}

impl BackoffPolicy {
    /// The un-jittered delay before restart number `failures` (1 = first failure in a row).
    pub fn step(&self, failures: u32) -> Duration {
        self.backoff().ceiling(failures.saturating_sub(1))
    }

    /// The delay to wait, with `unit` in `[0, 1)` as the random draw (injected so tests can pin
    /// it): `step * (1 - jitter * unit)`.
    pub fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        self.backoff()
            .delay(failures.saturating_sub(1), &crate::retry::FixedJitter(unit))
    }

    fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(
            self.base,
            self.cap,
            crate::retry::Spread::Shorten(self.jitter),
        )
    }

    /// The delay to wait, jittered from the thread-local random source.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, rand::random::<f64>())
    }
}

/// "N restarts within M" — a component that restarts this often is reported as degraded while the
/// restarts go on at the capped delay.
#[derive(Clone, Debug, PartialEq)]
pub struct CrashLoopPolicy {
    /// Restarts within `window` that make a crash loop.
    pub restarts: usize,
    /// The sliding window.
    pub window: Duration,
}

impl Default for CrashLoopPolicy {
    fn default() -> Self {
        // Five restarts in five minutes: at the 60 s cap a crash-looping child stays degraded.
        CrashLoopPolicy {
            restarts: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// Sliding window of restart times.
#[derive(Debug, Default)]
pub struct CrashLoopDetector {
    times: VecDeque<Instant>,
}

impl CrashLoopDetector {
    /// Records a restart at `now`.
    pub fn record(&mut self, now: Instant) {
        self.times.push_back(now);
    }

    /// Whether the restarts within the window reach the policy's count.
    pub fn degraded(&mut self, policy: &CrashLoopPolicy, now: Instant) -> bool {
        while let Some(first) = self.times.front() {
            if now.saturating_duration_since(*first) > policy.window {
                self.times.pop_front();
            } else {
                break;
            }
        }
        policy.restarts > 0 && self.times.len() >= policy.restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            jitter: 0.5,
            reset_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn steps_double_then_stay_at_the_cap() {
        let p = policy();
        let steps: Vec<u128> = (1..=7).map(|n| p.step(n).as_millis()).collect();
        assert_eq!(steps, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(
            p.step(0).as_millis(),
            100,
            "0 failures is treated as the first"
        );
        assert_eq!(p.step(u32::MAX), p.cap, "no overflow for very long loops");
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_its_fraction() {
        let p = policy();
        assert_eq!(p.delay_with(3, 0.0), Duration::from_millis(400));
        assert_eq!(p.delay_with(3, 0.999_999).as_millis(), 200);
        for _ in 0..1000 {
            let d = p.delay(9);
            assert!(d <= p.cap && d >= p.cap.mul_f64(0.5), "{d:?}");
        }
    }

    #[test]
    fn crash_loop_needs_n_restarts_inside_the_window() {
        let policy = CrashLoopPolicy {
            restarts: 3,
            window: Duration::from_secs(10),
        };
        let mut d = CrashLoopDetector::default();
        let t0 = Instant::now();
        d.record(t0);
        d.record(t0 + Duration::from_secs(1));
        assert!(!d.degraded(&policy, t0 + Duration::from_secs(1)));
        d.record(t0 + Duration::from_secs(2));
        assert!(d.degraded(&policy, t0 + Duration::from_secs(2)));
        // The first restart leaves the window: two remain, no longer a loop.
        assert!(!d.degraded(&policy, t0 + Duration::from_secs(11)));
    }
}
