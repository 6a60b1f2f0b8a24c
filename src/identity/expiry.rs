//! Credential expirations as the services send them: parsed with checked arithmetic only and
//! held to the range real credentials can have.
//!
//! The expiry is the one number in a credentials response that drives our own timing, so a bad
//! one used to hurt twice: `1e12` epoch seconds (year 33658) panicked while being formatted,
//! and an already-expired one (`3600` read as epoch seconds is 1970) made the rotation loop
//! refresh at once, again and again. Here every conversion is checked, and a value outside
//! [`PAST_TOLERANCE`] before to [`MAX_AHEAD`] after the service's now is refused with an error
//! naming the value; the caller's retry with backoff then owns what happens next.

use std::time::{Duration, SystemTime};

/// Latest acceptable expiry, from the service's now. Real maxima: SSM role tokens for managed
/// instances last about 1 h; IAM Roles Anywhere CreateSession allows `durationSeconds` up to
/// 43 200 s (12 h, IAM Roles Anywhere API reference). Three times the longest real lifetime
/// leaves room for a service change without accepting a date that would park rotation for ever.
pub const MAX_AHEAD: Duration = Duration::from_secs(36 * 3600);

/// How far in the past an expiry may be before it is refused: more than the clock skew left
/// uncorrected ([`crate::identity::clock::SKEW_TOLERANCE`], 5 s) plus one slow request, far
/// less than any real lifetime (IAM Roles Anywhere's minimum is 900 s).
pub const PAST_TOLERANCE: Duration = Duration::from_secs(60);

/// `SystemTime` from epoch seconds (integer or fractional); `None` unless finite, positive and
/// representable.
pub fn from_epoch_secs(secs: f64) -> Option<SystemTime> {
    if !(secs.is_finite() && secs > 0.0) {
        return None;
    }
    let d = Duration::try_from_secs_f64(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(d)
}

/// An expiry as epoch seconds (JSON number or numeric string) or an RFC 3339 string. Never
/// panics; `None` for anything else. The range is checked by [`check`].
pub fn parse(v: &serde_json::Value) -> Option<SystemTime> {
    match v {
        serde_json::Value::Number(n) => from_epoch_secs(n.as_f64()?),
        serde_json::Value::String(s) => {
            if let Ok(secs) = s.trim().parse::<f64>() {
                return from_epoch_secs(secs);
            }
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()?;
            let secs = t.unix_timestamp();
            let base = if secs >= 0 {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
            } else {
                SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
            }?;
            base.checked_add(Duration::from_nanos(u64::from(t.nanosecond())))
        }
        _ => None,
    }
}

/// The value as an error shows it: a string's contents, a number as JSON writes it.
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `expires` is an expiry fresh credentials can have at the service's `now`; the error
/// is the detail for the caller's response error (which names the operation and endpoint).
pub fn check(
    field: &str,
    raw: &serde_json::Value,
    expires: SystemTime,
    now: SystemTime,
) -> Result<(), String> {
    let raw = shown(raw);
    if let Err(e) = expires.duration_since(now)
        && e.duration() > PAST_TOLERANCE
    {
        return Err(format!(
            "{field} `{raw}` ({}) is {} s before the service's current time ({}): fresh credentials cannot have expired; refused (if the value is right, the host clock or the endpoint is wrong)",
            crate::identity::store::ts::format(expires),
            e.duration().as_secs(),
            crate::identity::store::ts::format(now),
        ));
    }
    if let Ok(ahead) = expires.duration_since(now)
        && ahead > MAX_AHEAD
    {
        return Err(format!(
            "{field} `{raw}` ({}) is {} h after the service's current time ({}), more than the {} h any credentials last (SSM role tokens about 1 h, IAM Roles Anywhere sessions at most 12 h); refused",
            crate::identity::store::ts::format(expires),
            ahead.as_secs() / 3600,
            crate::identity::store::ts::format(now),
            MAX_AHEAD.as_secs() / 3600,
        ));
    }
    Ok(())
}

/// [`parse`] then [`check`]: the expiry of freshly issued credentials, in service time.
pub fn parse_checked(
    field: &str,
    v: &serde_json::Value,
    now: SystemTime,
) -> Result<SystemTime, String> {
    let expires = parse(v).ok_or_else(|| {
        format!(
            "{field} `{}` is neither positive epoch seconds nor an RFC 3339 time",
            shown(v)
        )
    })?;
    check(field, v, expires, now)?;
    Ok(expires)
}

/// Service time → host time, given the measured offset (service minus host, ms). Saturates
/// instead of overflowing; expiries past [`check`] are nowhere near the limits.
pub fn to_host_time(service: SystemTime, offset_ms: i64) -> SystemTime {
    let d = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms >= 0 {
        service.checked_sub(d).unwrap_or(service)
    } else {
        service.checked_add(d).unwrap_or(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn numbers_and_strings_in_range_are_accepted() {
        let want = t(NOW + 3600);
        for v in [
            json!(NOW + 3600),
            json!((NOW + 3600) as f64),
            json!(format!("{}", NOW + 3600)),
            json!("2023-11-14T23:13:20Z"),
            json!("2023-11-15T00:13:20+01:00"),
        ] {
            assert_eq!(parse_checked("E", &v, t(NOW)), Ok(want), "{v}");
        }
        // 12 h (IAM Roles Anywhere's maximum) and a little in the past are fine.
        assert!(parse_checked("E", &json!(NOW + 43_200), t(NOW)).is_ok());
        assert!(parse_checked("E", &json!(NOW - 30), t(NOW)).is_ok());
    }

    #[test]
    fn absurd_values_never_panic_and_are_refused_naming_the_value() {
        for (v, shown) in [
            (json!(1e12), "1000000000000"),
            (json!("1e12"), "1e12"),
            (json!(1e20), "1e+20"),
            (json!(f64::MAX), "e+308"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!(-5), "-5"),
            (json!("-1e300"), "-1e300"),
            (json!("NaN"), "NaN"),
            (json!("inf"), "inf"),
            (json!(0), "0"),
            (json!(3600), "3600"),
            (json!("9999-12-31T23:59:59Z"), "9999-12-31T23:59:59Z"),
            (json!("1969-12-31T23:59:59Z"), "1969-12-31T23:59:59Z"),
            (json!(null), "null"),
            (json!("soon"), "soon"),
        ] {
            let err = parse_checked("TokenExpirationDate", &v, t(NOW))
                .expect_err(&format!("{v} must be refused"));
            assert!(err.contains("TokenExpirationDate"), "{err}");
            assert!(err.contains(shown), "{v}: {err}");
        }
    }

    #[test]
    fn bounds_are_just_outside_the_tolerances() {
        let now = t(NOW);
        let past = PAST_TOLERANCE.as_secs();
        let ahead = MAX_AHEAD.as_secs();
        assert!(check("E", &json!(0), t(NOW - past), now).is_ok());
        assert!(check("E", &json!(0), t(NOW - past - 1), now).is_err());
        assert!(check("E", &json!(0), t(NOW + ahead), now).is_ok());
        assert!(check("E", &json!(0), t(NOW + ahead + 1), now).is_err());
    }

    #[test]
    fn host_time_conversion_saturates() {
        assert_eq!(to_host_time(t(100), 10_000), t(90));
        assert_eq!(to_host_time(t(100), -10_000), t(110));
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 - 1);
        assert_eq!(to_host_time(last, i64::MIN), last);
    }
}
