//! Fault injection and the control endpoint (`/_devstack/...`).
//!
//! Faults are matched per service and operation: an error rate, added latency, a throttling
//! rate, a full outage window (connections are accepted and dropped at once, which a client sees
//! as a reset, as when a link is down), a clock offset, and "fail the next N calls" of one
//! operation (deterministic, for a failure at an exact step such as the first call after
//! RegisterManagedInstance).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::Shared;
use crate::wire::{ApiError, Protocol, Req};

/// One rule: applies to calls whose service and operation match (`*` or absent = any).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FaultRule {
    /// Service short name (`ssm`, `logs`, `monitoring`, `sts`, `eks`, `rolesanywhere`, `mirror`).
    #[serde(default)]
    pub service: Option<String>,
    /// Operation name (`PutLogEvents`, ...).
    #[serde(default)]
    pub operation: Option<String>,
    /// Probability in [0, 1] of answering with a 500 InternalServerError.
    #[serde(default)]
    pub error_rate: f64,
    /// Probability in [0, 1] of answering with a throttling error.
    #[serde(default)]
    pub throttle_rate: f64,
    /// Added latency in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Answer every matching call with AWS's access-denied error (a role without the policy).
    #[serde(default)]
    pub deny: bool,
}

impl FaultRule {
    fn matches(&self, service: &str, op: &str) -> bool {
        let m = |want: &Option<String>, got: &str| match want.as_deref() {
            None | Some("*") => true,
            Some(w) => w.eq_ignore_ascii_case(got),
        };
        m(&self.service, service) && m(&self.operation, op)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
    /// While `Some(t)` and `now < t`, every connection is dropped on accept.
    pub outage_until: Option<Instant>,
    /// Seconds added to the devstack's clock (negative: behind the host).
    pub clock_offset_secs: i64,
    /// The next calls of an operation that fail with a 500, whatever the rules say.
    pub fail_next: Vec<FailNext>,
}

/// `POST /_devstack/fail-next`: the next `remaining` calls of one operation fail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailNext {
    pub service: String,
    pub operation: String,
    pub remaining: u32,
}

impl Faults {
    /// Counts one call down against a matching [`FailNext`]; the error to answer with when it
    /// fires.
    pub fn take_fail_next(&mut self, service: &str, op: &str) -> Option<ApiError> {
        let hit = self.fail_next.iter_mut().find(|f| {
            f.remaining > 0
                && f.service.eq_ignore_ascii_case(service)
                && f.operation.eq_ignore_ascii_case(op)
        })?;
        hit.remaining -= 1;
        self.fail_next.retain(|f| f.remaining > 0);
        Some(ApiError::internal(format!(
            "injected fault: fail-next {service}/{op}"
        )))
    }

    pub fn latency_for(&self, service: &str, op: &str) -> Option<Duration> {
        let ms: u64 = self
            .rules
            .iter()
            .filter(|r| r.matches(service, op))
            .map(|r| r.latency_ms)
            .sum();
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Rolls the dice for every matching rule; the first that fires decides the error.
    pub fn injected_error(&self, service: &str, op: &str, proto: Protocol) -> Option<ApiError> {
        for r in self.rules.iter().filter(|r| r.matches(service, op)) {
            if r.deny {
                let iam_service = match service {
                    "monitoring" => "cloudwatch",
                    other => other,
                };
                return Some(ApiError::access_denied(proto, iam_service, op));
            }
            if r.throttle_rate > 0.0 && rand::random::<f64>() < r.throttle_rate {
                return Some(ApiError::throttling(proto));
            }
            if r.error_rate > 0.0 && rand::random::<f64>() < r.error_rate {
                return Some(ApiError::internal("injected fault"));
            }
        }
        None
    }

    pub fn in_outage(&self) -> bool {
        self.outage_until.is_some_and(|t| Instant::now() < t)
    }
}

/// Wire form of the fault settings for `GET/PUT /_devstack/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsDoc {
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Remaining outage in seconds (0 = none).
    #[serde(default)]
    pub outage_secs: f64,
    #[serde(default)]
    pub clock_offset_secs: i64,
}

impl FaultsDoc {
    pub fn from_faults(f: &Faults) -> Self {
        let outage_secs = f
            .outage_until
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        FaultsDoc {
            rules: f.rules.clone(),
            outage_secs,
            clock_offset_secs: f.clock_offset_secs,
        }
    }
    pub fn into_faults(self) -> Faults {
        Faults {
            rules: self.rules,
            outage_until: (self.outage_secs > 0.0)
                .then(|| Instant::now() + Duration::from_secs_f64(self.outage_secs)),
            clock_offset_secs: self.clock_offset_secs,
            fail_next: Vec::new(),
        }
    }
}

/// Control endpoint:
/// - `GET /_devstack/health` → `ok`
/// - `GET /_devstack/faults`, `PUT /_devstack/faults` (JSON [`FaultsDoc`]) → current settings
/// - `POST /_devstack/outage?secs=N` → drop every connection for N seconds (0 ends it)
/// - `POST /_devstack/clock?offset_secs=N`
/// - `POST /_devstack/fail-next?service=S&operation=Op&count=N` → the next N calls of that
///   operation answer 500 InternalServerError (a `PUT /_devstack/faults` clears it)
/// - `GET /_devstack/counters` → JSON map `service/Operation` → calls; `DELETE` resets
/// - `GET /_devstack/arrivals` → calls per second per service with errors and latency
///   ([`crate::arrivals`]); `DELETE` resets
/// - `PUT /_devstack/ssm/token-expiration` (body: any JSON value) → every
///   RequestManagedInstanceRoleToken answers `TokenExpirationDate` with that value verbatim;
///   `PUT /_devstack/rolesanywhere/expiration` does the same for CreateSession's `expiration`;
///   `DELETE` on either goes back to the issued expiry (the credentials themselves still expire
///   when issued)
/// - `/_devstack/ssm/...` → [`crate::ssm::control`]
/// - `/_devstack/eks/...` → [`crate::eks::control`], `/_devstack/mirror/...` → [`crate::mirror::control`]
/// - `GET /_devstack/ecr/password`, `GET /_devstack/ecr/registry` ([`crate::ecr::control`])
/// - `POST /_devstack/rolesanywhere/issue` → a certificate from the test CA ([`crate::rolesanywhere::issue`])
pub async fn handle(state: &Shared, op: &str, req: &Req) -> axum::response::Response {
    use axum::http::{Method, StatusCode};
    let q = req.query_pairs();
    let qf = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let json = |v: serde_json::Value| {
        crate::wire::bytes_response(StatusCode::OK, "application/json", v.to_string().into())
    };
    match (req.method.clone(), op) {
        (Method::GET, "health") => {
            crate::wire::bytes_response(StatusCode::OK, "text/plain", "ok\n".into())
        }
        (Method::GET, "faults") => {
            json(serde_json::to_value(FaultsDoc::from_faults(&state.faults())).unwrap_or_default())
        }
        (Method::PUT, "faults") => match serde_json::from_slice::<FaultsDoc>(&req.body) {
            Ok(doc) => {
                *state.faults_mut() = doc.into_faults();
                json(
                    serde_json::to_value(FaultsDoc::from_faults(&state.faults()))
                        .unwrap_or_default(),
                )
            }
            Err(e) => ApiError::bad_request("InvalidFaults", format!("faults document: {e}"))
                .render(Protocol::Plain),
        },
        (Method::POST, "outage") => match qf("secs").map(|s| s.parse::<f64>()) {
            Some(Ok(secs)) if secs >= 0.0 => {
                state.faults_mut().outage_until =
                    (secs > 0.0).then(|| Instant::now() + Duration::from_secs_f64(secs));
                json(serde_json::json!({ "outage_secs": secs }))
            }
            _ => ApiError::bad_request("InvalidParameter", "outage needs ?secs=N (N >= 0)")
                .render(Protocol::Plain),
        },
        (Method::POST, "clock") => match qf("offset_secs").map(|s| s.parse::<i64>()) {
            Some(Ok(off)) => {
                state.faults_mut().clock_offset_secs = off;
                json(serde_json::json!({ "clock_offset_secs": off }))
            }
            _ => ApiError::bad_request("InvalidParameter", "clock needs ?offset_secs=N")
                .render(Protocol::Plain),
        },
        (Method::POST, "fail-next") => {
            let count = qf("count").map(|c| c.parse::<u32>());
            match (qf("service"), qf("operation"), count) {
                (Some(service), Some(operation), Some(Ok(remaining))) => {
                    state.faults_mut().fail_next.push(FailNext {
                        service: service.clone(),
                        operation: operation.clone(),
                        remaining,
                    });
                    json(serde_json::json!({
                        "service": service, "operation": operation, "count": remaining
                    }))
                }
                _ => ApiError::bad_request(
                    "InvalidParameter",
                    "fail-next needs ?service=S&operation=Op&count=N",
                )
                .render(Protocol::Plain),
            }
        }
        (Method::GET, "counters") => {
            json(serde_json::to_value(state.counters()).unwrap_or_default())
        }
        (Method::GET, "arrivals") => json(crate::state::lock(&state.arrivals).to_json()),
        (Method::DELETE, "arrivals") => {
            crate::state::lock(&state.arrivals).clear();
            json(serde_json::json!({}))
        }
        (Method::DELETE, "counters") => {
            state.reset_counters();
            json(serde_json::json!({}))
        }
        (method, "ssm/token-expiration" | "rolesanywhere/expiration") => {
            let service = op.split('/').next().unwrap_or(op).to_string();
            if method == Method::DELETE {
                crate::state::lock(&state.expiration_overrides).remove(&service);
                return json(serde_json::json!({ "service": service, "expiration": null }));
            }
            if method != Method::PUT {
                return ApiError::bad_request(
                    "InvalidParameter",
                    format!("{op} takes PUT (body: the JSON value to answer with) or DELETE"),
                )
                .render(Protocol::Plain);
            }
            match serde_json::from_slice::<serde_json::Value>(&req.body) {
                Ok(v) => {
                    crate::state::lock(&state.expiration_overrides)
                        .insert(service.clone(), v.clone());
                    json(serde_json::json!({ "service": service, "expiration": v }))
                }
                Err(e) => ApiError::bad_request("InvalidParameter", format!("{op} body: {e}"))
                    .render(Protocol::Plain),
            }
        }
        // SSM knobs (key-rotation requests) live with the SSM state they change.
        (_, op) if op.starts_with("ssm/") => crate::ssm::control(state, op, req),
        (_, op) if op.starts_with("eks/") => crate::eks::control(state, op, req).await,
        (_, op) if op.starts_with("mirror/") => crate::mirror::control(state, op, req).await,
        (_, op) if op.starts_with("ecr/") => crate::ecr::control(state, op, req),
        (Method::POST, "rolesanywhere/issue") => crate::rolesanywhere::control_issue(state, req),
        _ => ApiError::not_found(
            "UnknownControl",
            format!("no control endpoint {} /_devstack/{op}", req.method),
        )
        .render(Protocol::Plain),
    }
}

/// A listener that, during an outage window, accepts connections and drops them at once.
pub struct GatedListener {
    inner: tokio::net::TcpListener,
    state: Shared,
}

impl GatedListener {
    pub fn new(inner: tokio::net::TcpListener, state: Shared) -> Self {
        Self { inner, state }
    }
}

impl axum::serve::Listener for GatedListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    if self.state.faults().in_outage() {
                        // Reset rather than FIN so clients see a hard network error.
                        // Linger 0 makes close send an RST at once; with a zero timeout the
                        // deprecation's concern (close blocking the thread) cannot arise.
                        #[allow(deprecated)]
                        let _ = io.set_linger(Some(Duration::ZERO));
                        drop(io);
                        continue;
                    }
                    let _ = io.set_nodelay(true);
                    return (io, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
