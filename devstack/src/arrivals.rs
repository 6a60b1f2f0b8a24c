//! Request arrivals per second, per service: how many calls came in each second, how many the
//! devstack answered with an error, and how long it took to answer them. A fleet benchmark
//! (`scripts/bench herd`) reads them to see how synchronised its clients are and whether the
//! devstack kept up (`GET /_devstack/arrivals`; `DELETE` resets).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// One second of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Calls that arrived (were read whole and classified) in this second.
    pub calls: u64,
    /// Of which answered with a status of 500 or more, or 429 (injected faults included).
    pub errors: u64,
    /// Sum and maximum of the time from arrival to the response, in microseconds.
    pub latency_us_sum: u64,
    pub latency_us_max: u64,
}

/// Service name → unix second → [`Second`].
#[derive(Debug, Default)]
pub struct Arrivals {
    by_service: BTreeMap<&'static str, BTreeMap<u64, Second>>,
}

impl Arrivals {
    /// Records one call of `service` that arrived at `at`, answered `status` after `latency`.
    pub fn record(
        &mut self,
        service: &'static str,
        at: SystemTime,
        latency: Duration,
        status: u16,
    ) {
        let sec = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let s = self
            .by_service
            .entry(service)
            .or_default()
            .entry(sec)
            .or_default();
        s.calls += 1;
        if status >= 500 || status == 429 {
            s.errors += 1;
        }
        s.latency_us_sum = s.latency_us_sum.saturating_add(us);
        s.latency_us_max = s.latency_us_max.max(us);
    }

    /// `{"service": {"unix second": {calls, errors, latency_us_sum, latency_us_max}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.by_service).unwrap_or_default()
    }

    pub fn clear(&mut self) {
        self.by_service.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_bucketed_by_second_and_service() {
        let mut a = Arrivals::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        a.record("ssm", t, Duration::from_micros(10), 200);
        a.record(
            "ssm",
            t + Duration::from_millis(999),
            Duration::from_micros(30),
            500,
        );
        a.record(
            "ssm",
            t + Duration::from_secs(1),
            Duration::from_micros(5),
            429,
        );
        a.record("logs", t, Duration::from_micros(7), 400);
        let j = a.to_json();
        assert_eq!(j["ssm"]["100"]["calls"], 2);
        assert_eq!(j["ssm"]["100"]["errors"], 1);
        assert_eq!(j["ssm"]["100"]["latency_us_sum"], 40);
        assert_eq!(j["ssm"]["100"]["latency_us_max"], 30);
        assert_eq!(j["ssm"]["101"]["errors"], 1);
        assert_eq!(j["logs"]["100"]["errors"], 0);
        a.clear();
        assert_eq!(a.to_json(), serde_json::json!({}));
    }
}
