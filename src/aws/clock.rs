//! Wall-clock time for signing and expiry, with the skew against the service corrected.
//!
//! A box that boots with a wrong clock signs requests the service rejects as "Signature
//! expired" (amazon-ssm-agent#616), and amazon-ssm-agent keeps failing until NTP catches up.
//! Every response from AWS carries a `Date` header; [`SkewedClock`] remembers the difference
//! and signs with the service's notion of now, so one rejected request is the most a skewed
//! clock costs. The host clock itself is injected ([`Clock`]) so tests can move it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// Skew below this is left alone: `Date` has one-second resolution and a request takes time,
/// and SigV4 tolerates 5 minutes anyway. Above it, the correction is applied.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(5);

/// Largest correction applied. NTP-less drift and a wrong time zone setting stay well within a
/// day; a larger difference is a reset RTC or an endpoint whose `Date` is wrong (one answering
/// over plain http could be anyone), and following it would move every signature and expiry
/// check by that much. Refused with an error that says to fix the host clock.
pub const MAX_SKEW_CORRECTION: Duration = Duration::from_secs(24 * 3600);

/// A boxed wait, as [`Clock::sleep`] returns it.
pub type Sleep = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Source of "now", and of waiting: the real one is [`SystemClock`] (tokio's timer); a test
/// clock can make every wait instant and move its "now" by the time waited, so a loop's timing
/// is checked in microseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;

    /// Waits `d`.
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The host clock plus the last measured offset to the service's clock.
#[derive(Debug)]
pub struct SkewedClock {
    host: Arc<dyn Clock>,
    /// Service time minus host time, in milliseconds; 0 while within tolerance.
    offset_ms: AtomicI64,
    /// Whether the current offset has been logged (log once per change, not per request).
    logged: AtomicBool,
}

/// What [`SkewedClock::observe`] concluded from one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkewChange {
    /// The correction in use did not change.
    Unchanged,
    /// A new correction (in ms, service minus host) is in use from now on.
    Corrected(i64),
    /// The clocks agree again; the correction was dropped.
    Cleared,
    /// The difference (ms, service minus host) exceeds [`MAX_SKEW_CORRECTION`]: not applied,
    /// the correction in use (if any) stays.
    Refused(i64),
}

impl SkewedClock {
    pub fn new(host: Arc<dyn Clock>) -> SkewedClock {
        SkewedClock {
            host,
            offset_ms: AtomicI64::new(0),
            logged: AtomicBool::new(false),
        }
    }

    /// The host clock, uncorrected (for local bookkeeping such as "last refresh").
    pub fn host_now(&self) -> SystemTime {
        self.host.now()
    }

    /// The service's time as best known: what to sign with and compare expiry against.
    pub fn now(&self) -> SystemTime {
        shift(self.host.now(), self.offset_ms.load(Ordering::Relaxed))
    }

    /// Current correction in milliseconds (service minus host).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Feeds one response's `Date` header (HTTP-date) received at host time `received`.
    pub fn observe(&self, date_header: &str, received: SystemTime) -> SkewChange {
        let Ok(server) = httpdate::parse_http_date(date_header) else {
            return SkewChange::Unchanged;
        };
        let skew_ms = signed_ms(server, received);
        let tolerance = SKEW_TOLERANCE.as_millis() as i64;
        let old = self.offset_ms.load(Ordering::Relaxed);
        if skew_ms.abs() < tolerance {
            if old != 0 {
                self.offset_ms.store(0, Ordering::Relaxed);
                self.logged.store(false, Ordering::Relaxed);
                tracing::info!(
                    "host clock agrees with the service again; clock skew correction dropped"
                );
                return SkewChange::Cleared;
            }
            return SkewChange::Unchanged;
        }
        if skew_ms.unsigned_abs() > MAX_SKEW_CORRECTION.as_millis() as u64 {
            tracing::error!(
                skew_secs = skew_ms / 1000,
                "the service's Date header differs from the host clock by {} s (service minus host), more than the {} h this agent corrects for; not correcting — set the host clock (timedatectl status, NTP) or check the endpoint",
                skew_ms / 1000,
                MAX_SKEW_CORRECTION.as_secs() / 3600
            );
            return SkewChange::Refused(skew_ms);
        }
        // Within tolerance of the correction already in use: keep it (stable signing times).
        if old != 0 && (skew_ms - old).abs() < tolerance {
            return SkewChange::Unchanged;
        }
        self.offset_ms.store(skew_ms, Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) || old != 0 {
            tracing::warn!(
                skew_secs = skew_ms / 1000,
                "host clock differs from the service's by {} s (service minus host); signing with the service's time — check NTP (timedatectl status)",
                skew_ms / 1000
            );
        }
        SkewChange::Corrected(skew_ms)
    }
}

fn signed_ms(a: SystemTime, b: SystemTime) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match a.duration_since(b) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

fn shift(t: SystemTime, ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// A clock tests set by hand.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<SystemTime>);

impl ManualClock {
    pub fn new(t: SystemTime) -> ManualClock {
        ManualClock(std::sync::Mutex::new(t))
    }
    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
    pub fn advance(&self, d: Duration) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn corrects_large_skew_and_ignores_small() {
        let host = Arc::new(ManualClock::new(at(1_700_000_600)));
        let c = SkewedClock::new(host.clone());
        // Service is 10 minutes behind the host.
        let date = httpdate::fmt_http_date(at(1_700_000_000));
        assert_eq!(
            c.observe(&date, host.now()),
            SkewChange::Corrected(-600_000)
        );
        assert_eq!(c.now(), at(1_700_000_000));
        // Same skew again: unchanged, no new log.
        host.advance(Duration::from_secs(1));
        assert_eq!(
            c.observe(&httpdate::fmt_http_date(at(1_700_000_001)), host.now()),
            SkewChange::Unchanged
        );
        // Host fixed by NTP: the service date now matches the host within tolerance.
        host.set(at(1_700_000_010));
        assert_eq!(
            c.observe(&httpdate::fmt_http_date(at(1_700_000_012)), host.now()),
            SkewChange::Cleared
        );
        assert_eq!(c.now(), at(1_700_000_010));
        // Small skew never corrects.
        assert_eq!(
            c.observe(&httpdate::fmt_http_date(at(1_700_000_013)), host.now()),
            SkewChange::Unchanged
        );
        assert_eq!(c.offset_ms(), 0);
    }

    #[test]
    fn corrections_beyond_a_day_are_refused() {
        let host = Arc::new(ManualClock::new(at(1_700_000_000)));
        let c = SkewedClock::new(host.clone());
        // A 10-minute correction in use stays when a wild Date arrives.
        let ten_min = httpdate::fmt_http_date(at(1_700_000_600));
        assert_eq!(
            c.observe(&ten_min, host.now()),
            SkewChange::Corrected(600_000)
        );
        let day = MAX_SKEW_CORRECTION.as_secs();
        for server in [
            at(1_700_000_000 + day + 10),
            at(1_700_000_000 - day - 10),
            at(0),
        ] {
            let date = httpdate::fmt_http_date(server);
            assert!(
                matches!(c.observe(&date, host.now()), SkewChange::Refused(_)),
                "{date}"
            );
            assert_eq!(c.offset_ms(), 600_000, "{date}");
        }
        // Just inside the bound is still corrected.
        let date = httpdate::fmt_http_date(at(1_700_000_000 + day - 10));
        assert_eq!(
            c.observe(&date, host.now()),
            SkewChange::Corrected((day as i64 - 10) * 1000)
        );
    }

    #[test]
    fn garbage_date_is_ignored() {
        let c = SkewedClock::new(Arc::new(SystemClock));
        assert_eq!(
            c.observe("yesterday", SystemTime::now()),
            SkewChange::Unchanged
        );
    }
}
