//! Retrying, in one place: capped exponential backoff with an injected random source, and the
//! classes every service's failures are sorted into before a loop decides what to do.
//!
//! Every loop that waits between attempts (credential refresh, subsystem restarts, child
//! restarts, CloudWatch batches, artifact downloads) computes its wait with [`Backoff`]: the
//! ceiling doubles from `base` per attempt up to `cap`, and a [`Spread`] says how jitter shapes
//! the wait under it. The randomness comes through [`Jitter`], so a test pins it and checks the
//! arithmetic exactly.
//!
//! Errors are classified per service ([`logs`], [`metrics`], [`ssm`], [`rolesanywhere`],
//! [`http`]) from what the response says (error code and HTTP status; neither for a network
//! failure or timeout) into a [`Class`], as Vector's CloudWatch sinks do: the loop's decision
//! (retry, slow down, wait for fresh credentials, drop the request, stop and tell the operator)
//! follows from the class, never from string matching at the call site.

use std::time::Duration;

/// A random number in [0, 1); injected so tests can pin it.
pub trait Jitter: Send + Sync {
    fn unit(&self) -> f64;
}

/// The real random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn unit(&self) -> f64 {
        rand::random::<f64>()
    }
}

/// A pinned draw: tests, and `FixedJitter(1.0)` for "always the ceiling".
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&self) -> f64 {
        self.0
    }
}

/// The draw forced into [0, 1] (NaN → ½): `Duration::mul_f64` panics on NaN and negatives.
pub fn unit(jitter: &dyn Jitter) -> f64 {
    let u = jitter.unit();
    if u.is_nan() { 0.5 } else { u.clamp(0.0, 1.0) }
}

/// A uniform wait in [0, `spread`]: how long a starting process holds back its first calls so
/// a fleet that starts together (a site's power coming back) does not call at once.
pub fn startup_delay(spread: Duration, jitter: &dyn Jitter) -> Duration {
    spread.mul_f64(unit(jitter))
}

/// How jitter spreads a wait under its ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spread {
    /// Uniform in [0, ceiling] ("full jitter", AWS Architecture Blog "Exponential Backoff And
    /// Jitter"): the best spread for many clients hitting one service.
    Full,
    /// Uniform in [ceiling/2, ceiling] ("equal jitter"): never much shorter than the ceiling.
    Equal,
    /// Shortened by at most this fraction (0..=1): the ceiling stays a bound an operator can
    /// rely on, the lower end keeps restarts from being immediate.
    Shorten(f64),
    /// Uniform in [ceiling/2, 3·ceiling/2]: the ceiling on average, for retries an operator
    /// watches (a second or so apart) that a fleet must still not make in lock-step.
    Around,
    /// Exactly the ceiling.
    None,
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first wait (attempt 0).
    pub base: Duration,
    /// No wait is ever longer.
    pub cap: Duration,
    pub spread: Spread,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration, spread: Spread) -> Backoff {
        Backoff { base, cap, spread }
    }

    /// The ceiling of wait number `attempt` (0-based): `base · 2^attempt`, at most `cap`;
    /// saturating for any `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Wait number `attempt` (0-based), drawn from `jitter` per [`Spread`].
    pub fn delay(&self, attempt: u32, jitter: &dyn Jitter) -> Duration {
        let c = self.ceiling(attempt);
        match self.spread {
            Spread::Full => c.mul_f64(unit(jitter)),
            Spread::Equal => c / 2 + (c / 2).mul_f64(unit(jitter)),
            Spread::Shorten(f) => {
                let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
                c.mul_f64(1.0 - f * unit(jitter))
            }
            Spread::Around => {
                Duration::try_from_secs_f64(c.as_secs_f64() * (0.5 + unit(jitter))).unwrap_or(c)
            }
            Spread::None => c,
        }
    }
}

/// What a failed call means for the loop that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Network failure, timeout, 5xx: retry with backoff.
    Transient,
    /// The service asks to slow down (429, `Throttling*`): retry with backoff, and count it.
    Throttled,
    /// The credentials were refused (expired token, bad signature): retry once the rotation
    /// loop has published fresh ones; the request itself is fine.
    Credentials,
    /// The caller lacks a permission (`AccessDenied*`): retrying only helps after an operator
    /// attaches the policy; keep the data, say which policy.
    Denied,
    /// The resource does not exist yet (a log group or stream): create it, then replay.
    Missing,
    /// The request itself is wrong (validation): the same request never succeeds; drop it (or
    /// split it to find the bad part) and go on.
    Rejected,
    /// The identity itself is gone or refused (deregistered instance, fingerprint mismatch):
    /// stop and tell the operator what to run.
    Fatal,
}

impl Class {
    /// Whether waiting and sending the same request again can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Class::Transient | Class::Throttled | Class::Credentials | Class::Denied
        )
    }
}

/// What every AWS service answers alike, or `None` to let the service decide.
fn common(code: Option<&str>) -> Option<Class> {
    let class = match code {
        Some(
            "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "SlowDown",
        ) => Class::Throttled,
        Some(
            "ExpiredTokenException"
            | "ExpiredToken"
            | "RequestExpired"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "MissingAuthenticationToken",
        ) => Class::Credentials,
        Some("AccessDeniedException" | "AccessDenied" | "NotAuthorized") => Class::Denied,
        Some(
            "InternalFailure"
            | "InternalServiceError"
            | "InternalServerError"
            | "InternalServiceFault"
            | "ServiceUnavailable"
            | "ServiceUnavailableException",
        ) => Class::Transient,
        _ => return None,
    };
    Some(class)
}

/// What is left once codes are exhausted: the HTTP status (`None`: no response at all).
fn by_status(status: Option<u16>) -> Class {
    match status {
        None => Class::Transient,
        Some(429) => Class::Throttled,
        Some(401) => Class::Credentials,
        Some(403) => Class::Denied,
        Some(408) => Class::Transient,
        Some(s) if (400..500).contains(&s) => Class::Rejected,
        Some(_) => Class::Transient,
    }
}

/// CloudWatch Logs (PutLogEvents, CreateLogGroup, CreateLogStream).
pub fn logs(code: Option<&str>, status: Option<u16>) -> Class {
    if let Some(c) = common(code) {
        return c;
    }
    match code {
        Some("ResourceNotFoundException") => Class::Missing,
        Some("InvalidParameterException" | "SerializationException" | "ValidationException") => {
            Class::Rejected
        }
        // Too many log groups/streams in the account: only an operator frees some.
        Some("LimitExceededException") => Class::Denied,
        // The service's own transient states.
        Some("ServiceUnavailableException" | "OperationAbortedException") => Class::Transient,
        // An unknown code is retried: dropping a batch for a code we do not know (a new
        // throttling name, say) loses data; retrying one that can never pass only holds its
        // stream until an operator looks (the spool bounds what waits). No code: the status.
        Some(_) => Class::Transient,
        None => by_status(status),
    }
}

/// CloudWatch metrics (PutMetricData).
pub fn metrics(code: Option<&str>, status: Option<u16>) -> Class {
    if let Some(c) = common(code) {
        return c;
    }
    match code {
        Some(
            "InvalidParameterValue"
            | "InvalidParameterValueException"
            | "InvalidParameterCombination"
            | "InvalidParameterCombinationException"
            | "MissingParameter"
            | "MissingRequiredParameterException"
            | "InvalidFormat"
            | "InvalidFormatFault"
            | "SerializationException"
            | "ValidationError",
        ) => Class::Rejected,
        Some("LimitExceeded" | "LimitExceededException") => Class::Throttled,
        _ => by_status(status),
    }
}

/// The SSM private API (RequestManagedInstanceRoleToken, UpdateInstanceInformation,
/// RegisterManagedInstance).
pub fn ssm(code: Option<&str>, status: Option<u16>) -> Class {
    match code {
        // Only registering again helps (nodeadm/amazon-ssm-agent treat these as terminal too).
        Some(
            "MachineFingerprintDoesNotMatch"
            | "InvalidInstanceId"
            | "InvalidActivation"
            | "InvalidActivationId"
            | "ActivationExpired",
        ) => return Class::Fatal,
        Some("TooManyUpdates") => return Class::Throttled,
        _ => {}
    }
    if let Some(c) = common(code) {
        return c;
    }
    match code {
        Some("ValidationException" | "InvalidParameters") => Class::Rejected,
        _ => by_status(status),
    }
}

/// IAM Roles Anywhere (CreateSession): a refused certificate or profile needs an operator.
pub fn rolesanywhere(code: Option<&str>, status: Option<u16>) -> Class {
    if let Some(c) = common(code) {
        return c;
    }
    match code {
        Some("ValidationException") => Class::Rejected,
        Some("ResourceNotFoundException") => Class::Fatal,
        _ => match status {
            // CreateSession answers 403 for a certificate the trust anchor does not accept.
            Some(403) => Class::Denied,
            _ => by_status(status),
        },
    }
}

/// A plain HTTP fetch (artifact mirror, manifest).
pub fn http(status: Option<u16>) -> Class {
    match status {
        // The mirror does not have it; another try will not either.
        Some(404 | 410) => Class::Rejected,
        Some(401 | 403) => Class::Denied,
        other => by_status(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_ceiling_doubles_to_the_cap_and_saturates() {
        let b = Backoff::new(S, 60 * S, Spread::None);
        let c: Vec<u64> = (0..8).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(c, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), 60 * S);
        let huge = Backoff::new(Duration::MAX, Duration::MAX, Spread::None);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn each_spread_stays_in_its_range() {
        let at = |spread, u| Backoff::new(S, 60 * S, spread).delay(3, &FixedJitter(u));
        assert_eq!(at(Spread::Full, 0.0), Duration::ZERO);
        assert_eq!(at(Spread::Full, 0.5), 4 * S);
        assert_eq!(at(Spread::Full, 1.0), 8 * S);
        assert_eq!(at(Spread::Equal, 0.0), 4 * S);
        assert_eq!(at(Spread::Equal, 1.0), 8 * S);
        assert_eq!(at(Spread::Shorten(0.2), 1.0), Duration::from_millis(6400));
        assert_eq!(at(Spread::Shorten(0.2), 0.0), 8 * S);
        assert_eq!(at(Spread::None, 0.3), 8 * S);
        assert_eq!(at(Spread::Around, 0.0), 4 * S);
        assert_eq!(at(Spread::Around, 1.0), 12 * S);
        let huge = Backoff::new(Duration::MAX, Duration::MAX, Spread::Around);
        assert_eq!(huge.delay(3, &FixedJitter(1.0)), Duration::MAX);
    }

    #[test]
    fn a_wild_draw_never_panics_or_leaves_the_range() {
        for u in [f64::NAN, -1.0, 2.0, f64::INFINITY, f64::NEG_INFINITY] {
            for spread in [
                Spread::Full,
                Spread::Equal,
                Spread::Shorten(f64::NAN),
                Spread::Shorten(7.0),
            ] {
                let d = Backoff::new(S, 60 * S, spread).delay(2, &FixedJitter(u));
                assert!(d <= 4 * S, "{spread:?} {u}: {d:?}");
            }
        }
    }

    #[test]
    fn logs_classes() {
        assert_eq!(
            logs(Some("ResourceNotFoundException"), Some(400)),
            Class::Missing
        );
        assert_eq!(
            logs(Some("InvalidParameterException"), Some(400)),
            Class::Rejected
        );
        assert_eq!(
            logs(Some("ThrottlingException"), Some(400)),
            Class::Throttled
        );
        assert_eq!(
            logs(Some("ExpiredTokenException"), Some(400)),
            Class::Credentials
        );
        assert_eq!(
            logs(Some("AccessDeniedException"), Some(400)),
            Class::Denied
        );
        assert_eq!(
            logs(Some("ServiceUnavailableException"), Some(503)),
            Class::Transient
        );
        assert_eq!(logs(None, None), Class::Transient);
        assert_eq!(logs(None, Some(502)), Class::Transient);
        assert_eq!(logs(None, Some(413)), Class::Rejected);
        assert_eq!(logs(Some("SomethingNew"), Some(500)), Class::Transient);
        assert_eq!(logs(Some("SomethingNew"), Some(400)), Class::Transient);
    }

    #[test]
    fn metrics_classes() {
        for code in [
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "MissingParameter",
        ] {
            assert_eq!(metrics(Some(code), Some(400)), Class::Rejected, "{code}");
        }
        assert_eq!(metrics(Some("Throttling"), Some(400)), Class::Throttled);
        assert_eq!(
            metrics(Some("InternalServiceError"), Some(500)),
            Class::Transient
        );
        assert_eq!(metrics(Some("AccessDenied"), Some(403)), Class::Denied);
        assert_eq!(metrics(None, Some(429)), Class::Throttled);
    }

    #[test]
    fn ssm_classes() {
        for code in ["MachineFingerprintDoesNotMatch", "InvalidInstanceId"] {
            assert_eq!(ssm(Some(code), Some(400)), Class::Fatal, "{code}");
        }
        assert_eq!(
            ssm(Some("ThrottlingException"), Some(400)),
            Class::Throttled
        );
        assert_eq!(ssm(Some("TooManyUpdates"), Some(400)), Class::Throttled);
        assert_eq!(
            ssm(Some("InvalidSignatureException"), Some(400)),
            Class::Credentials
        );
        assert_eq!(ssm(None, Some(503)), Class::Transient);
        assert_eq!(ssm(Some("ValidationException"), Some(400)), Class::Rejected);
    }

    #[test]
    fn rolesanywhere_and_http_classes() {
        assert_eq!(rolesanywhere(None, Some(403)), Class::Denied);
        assert_eq!(
            rolesanywhere(Some("ValidationException"), Some(400)),
            Class::Rejected
        );
        assert_eq!(
            rolesanywhere(Some("ResourceNotFoundException"), Some(404)),
            Class::Fatal
        );
        assert_eq!(rolesanywhere(None, None), Class::Transient);
        assert_eq!(http(Some(404)), Class::Rejected);
        assert_eq!(http(Some(503)), Class::Transient);
        assert_eq!(http(Some(429)), Class::Throttled);
        assert_eq!(http(None), Class::Transient);
    }

    #[test]
    fn only_the_retryable_classes_say_so() {
        let yes = [
            Class::Transient,
            Class::Throttled,
            Class::Credentials,
            Class::Denied,
        ];
        let no = [Class::Missing, Class::Rejected, Class::Fatal];
        assert!(yes.iter().all(|c| c.retryable()));
        assert!(no.iter().all(|c| !c.retryable()));
    }
}
