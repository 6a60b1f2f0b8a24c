//! When to refresh credentials and how long to wait after a failure.
//!
//! amazon-ssm-agent refreshes at exactly 50 % of the lifetime, so a fleet registered together
//! hits the service together, and its retry backoff grew to hours (amazon-ssm-agent#468). Here:
//! refresh at half the *remaining* lifetime with ±10 % jitter; after a failure wait a capped
//! exponential backoff with full jitter (nodeadm caps at 60 s, so do we by default). While the
//! current credentials are still valid the wait is also bounded by a quarter of their remaining
//! life, so attempts get denser as expiry nears instead of sleeping through it. No delay, for
//! any input, is shorter than [`MIN_DELAY`]: credentials that are already expired (or a service
//! that hands out one-second tokens) cost at most one call a second, never a busy loop.

use std::time::{Duration, SystemTime};

/// Default upper bound of one retry wait (nodeadm's cap; docs/protocols.md "Lessons from
/// amazon-ssm-agent").
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// First retry waits up to this long.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Share of the remaining lifetime after which to refresh.
pub const REFRESH_FRACTION: f64 = 0.5;
/// Jitter around the refresh point (±10 %).
pub const REFRESH_JITTER: f64 = 0.10;
/// Never schedule closer than this, after a success or a failure: at most 60 calls a minute
/// whatever a service answers (already-expired or nearly expired credentials used to mean
/// "refresh now" in a loop). Real credentials last 15 min (IAM Roles Anywhere's minimum) or
/// more, so the floor never delays a due refresh by a meaningful share of their life.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
/// Floor of a retry while the current credentials are still valid: retries get denser as expiry
/// nears (at most a quarter of the remaining life apart) down to this, so a few failures in a
/// row close to expiry still leave attempts before it. Once they have expired, [`MIN_DELAY`].
pub const MIN_RETRY_WHILE_VALID: Duration = Duration::from_millis(250);

use crate::retry::{Backoff, Spread, unit};
pub use crate::retry::{Jitter, RandomJitter};

/// Default spread of a daemon's first calls after it starts (`daemon.startup_jitter`).
pub const DEFAULT_STARTUP_SPREAD: Duration = crate::config::DEFAULT_STARTUP_SPREAD;

/// Time from `now` until the next refresh of credentials expiring at `expires`: half the
/// remaining lifetime, ±10 %, and never less than [`MIN_DELAY`] (already expired → after
/// [`MIN_DELAY`]).
pub fn refresh_delay(now: SystemTime, expires: SystemTime, jitter: &dyn Jitter) -> Duration {
    let Ok(remaining) = expires.duration_since(now) else {
        return MIN_DELAY;
    };
    let factor = REFRESH_FRACTION * (1.0 + REFRESH_JITTER * (2.0 * unit(jitter) - 1.0));
    remaining.mul_f64(factor).max(MIN_DELAY)
}

/// Random offset of a daemon's first call: uniform in [0, `spread`].
pub use crate::retry::startup_delay;

/// Wait before the first refresh of a rotation loop that starts with credentials expiring at
/// `expires` (`None`: none at all). Valid credentials are refreshed on their schedule
/// ([`refresh_delay`]), never later because of the start-up spread; missing or expired ones
/// wait a random [`startup_delay`] so that a fleet starting together does not call at once.
pub fn first_refresh_delay(
    now: SystemTime,
    expires: Option<SystemTime>,
    spread: Duration,
    jitter: &dyn Jitter,
) -> Duration {
    match expires {
        Some(exp) if exp > now => refresh_delay(now, exp, jitter),
        _ => startup_delay(spread, jitter),
    }
}

/// Wait before retry number `attempt` (0 = first retry) of a short, bounded retry such as
/// join's registration: `base·2^attempt` with "equal jitter" — uniform in [½, 1½] of it — so
/// an operator still sees the retries a second or so apart while a fleet joining together (one
/// activation, one automation run) no longer retries in lock-step.
pub fn equal_jitter_delay(base: Duration, attempt: u32, jitter: &dyn Jitter) -> Duration {
    Backoff::new(base, Duration::MAX, Spread::Around).delay(attempt, jitter)
}

/// Wait before retry number `attempt` (0 = first retry): uniform in [0, min(cap, base·2^attempt)]
/// ("full jitter"); when `remaining` (life left in the current credentials) is known and not
/// zero, at most a quarter of it and at least [`MIN_RETRY_WHILE_VALID`], otherwise at least
/// [`MIN_DELAY`].
pub fn backoff_delay(
    attempt: u32,
    cap: Duration,
    remaining: Option<Duration>,
    jitter: &dyn Jitter,
) -> Duration {
    let d = Backoff::new(BACKOFF_BASE, cap, Spread::Full).delay(attempt, jitter);
    match remaining.filter(|r| !r.is_zero()) {
        Some(r) => d.min(r / 4).max(MIN_RETRY_WHILE_VALID),
        None => d.max(MIN_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn refresh_at_half_remaining_with_ten_percent_jitter() {
        let now = t(1000);
        let exp = t(1000 + 3600);
        assert_eq!(
            refresh_delay(now, exp, &Fixed(0.5)),
            Duration::from_secs(1800)
        );
        assert_eq!(
            refresh_delay(now, exp, &Fixed(0.0)),
            Duration::from_secs(1620)
        );
        assert_eq!(
            refresh_delay(now, exp, &Fixed(1.0)),
            Duration::from_secs(1980)
        );
        // Half of the *remaining* lifetime, not of the original one.
        assert_eq!(
            refresh_delay(t(2800), exp, &Fixed(0.5)),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn expired_or_nearly_expired_refreshes_after_the_minimum_delay() {
        assert_eq!(refresh_delay(t(10), t(5), &Fixed(0.5)), MIN_DELAY);
        assert_eq!(refresh_delay(t(10), t(10), &Fixed(0.5)), MIN_DELAY);
        assert_eq!(refresh_delay(t(10), t(11), &Fixed(0.0)), MIN_DELAY);
        assert!(refresh_delay(t(0), t(u64::MAX / 4), &Fixed(2.0)) > MIN_DELAY);
    }

    /// Whatever the times and the randomness, no wait is shorter than the floor: a loop of
    /// refreshes or retries makes at most one call per [`MIN_DELAY`].
    #[test]
    fn no_input_schedules_below_the_floor() {
        assert!(MIN_DELAY >= Duration::from_secs(1));
        let times = [0, 1, 10, 3600, 1_700_000_000, u32::MAX as u64];
        for &now in &times {
            for &exp in &times {
                for j in [0.0, 0.5, 1.0, -1.0, 7.0, f64::NAN] {
                    let d = refresh_delay(t(now), t(exp), &Fixed(j));
                    assert!(d >= MIN_DELAY, "refresh {now}->{exp} jitter {j}: {d:?}");
                }
            }
        }
        for attempt in [0, 1, 31, u32::MAX] {
            for remaining in [None, Some(Duration::ZERO), Some(Duration::from_millis(1))] {
                for j in [0.0, 1.0, -1.0, f64::NAN] {
                    let d = backoff_delay(attempt, Duration::ZERO, remaining, &Fixed(j));
                    // Expired or unknown life: one call a second at most; still valid: four.
                    let floor = if remaining.is_some_and(|r| !r.is_zero()) {
                        MIN_RETRY_WHILE_VALID
                    } else {
                        MIN_DELAY
                    };
                    assert!(d >= floor, "backoff {attempt} {remaining:?} {j}: {d:?}");
                }
            }
        }
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| refresh_delay(t(0), t(3600), &RandomJitter).as_millis())
            .collect();
        assert!(
            delays.len() > 40,
            "50 agents should not refresh in lock-step"
        );
        assert!(delays.iter().all(|&d| (1_620_000..=1_980_000).contains(&d)));
    }

    #[test]
    fn backoff_grows_then_caps() {
        let cap = Duration::from_secs(60);
        let top = |a| backoff_delay(a, cap, None, &Fixed(1.0));
        assert_eq!(top(0), Duration::from_secs(1));
        assert_eq!(top(1), Duration::from_secs(2));
        assert_eq!(top(5), Duration::from_secs(32));
        assert_eq!(top(6), Duration::from_secs(60));
        assert_eq!(top(1000), Duration::from_secs(60));
        // Full jitter: anywhere from the floor up.
        assert_eq!(backoff_delay(6, cap, None, &Fixed(0.0)), MIN_DELAY);
        assert_eq!(
            backoff_delay(6, cap, None, &Fixed(0.5)),
            Duration::from_secs(30)
        );
        // Configurable cap.
        assert_eq!(
            backoff_delay(10, Duration::from_secs(5), None, &Fixed(1.0)),
            Duration::from_secs(5)
        );
    }

    /// A fleet that starts without valid credentials spreads its first refresh over the
    /// start-up window; valid credentials are refreshed on their own schedule, not later.
    #[test]
    fn first_refresh_is_spread_only_without_valid_credentials() {
        let spread = Duration::from_secs(30);
        let now = t(1000);
        assert_eq!(
            first_refresh_delay(now, None, spread, &Fixed(0.5)),
            Duration::from_secs(15)
        );
        assert_eq!(
            first_refresh_delay(now, Some(t(900)), spread, &Fixed(1.0)),
            spread
        );
        assert_eq!(
            first_refresh_delay(now, Some(t(1000)), spread, &Fixed(0.0)),
            Duration::ZERO
        );
        // Valid: half the remaining life (±10 %), whatever the spread.
        assert_eq!(
            first_refresh_delay(now, Some(t(1000 + 3600)), spread, &Fixed(0.5)),
            Duration::from_secs(1800)
        );
        assert_eq!(
            first_refresh_delay(
                now,
                Some(t(1000 + 20)),
                Duration::from_secs(600),
                &Fixed(0.5)
            ),
            Duration::from_secs(10)
        );
        // Zero spread (tests, or an operator who wants no delay): at once.
        assert_eq!(
            first_refresh_delay(now, None, Duration::ZERO, &Fixed(1.0)),
            Duration::ZERO
        );
        // Random: 1,000 agents land in more than 900 distinct milliseconds of the window.
        let got: std::collections::BTreeSet<_> = (0..1000)
            .map(|_| startup_delay(spread, &RandomJitter).as_millis())
            .collect();
        assert!(got.len() > 900, "{}", got.len());
        assert!(got.iter().all(|&ms| ms <= 30_000));
    }

    #[test]
    fn equal_jitter_keeps_half_the_wait_and_spreads_the_rest() {
        let s = Duration::from_secs(1);
        assert_eq!(
            equal_jitter_delay(s, 0, &Fixed(0.0)),
            Duration::from_millis(500)
        );
        assert_eq!(
            equal_jitter_delay(s, 0, &Fixed(1.0)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            equal_jitter_delay(s, 1, &Fixed(0.5)),
            Duration::from_secs(2)
        );
        assert_eq!(
            equal_jitter_delay(s, 2, &Fixed(0.0)),
            Duration::from_secs(2)
        );
        assert!(equal_jitter_delay(s, u32::MAX, &Fixed(f64::NAN)) >= s);
    }

    #[test]
    fn backoff_tightens_near_expiry() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            backoff_delay(10, cap, Some(Duration::from_secs(40)), &Fixed(1.0)),
            Duration::from_secs(10)
        );
        assert_eq!(
            backoff_delay(10, cap, Some(Duration::from_millis(400)), &Fixed(1.0)),
            MIN_RETRY_WHILE_VALID
        );
        // Expired (zero remaining): the plain backoff applies.
        assert_eq!(
            backoff_delay(10, cap, Some(Duration::ZERO), &Fixed(1.0)),
            cap
        );
    }
}
