//! The listener, the dispatcher and the in-process handle tests use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::Request;
use axum::response::Response;
use tokio::sync::oneshot;

use crate::state::{Shared, State};
use crate::wire::{ApiError, Protocol, Req};

/// Largest request body accepted. PutLogEvents allows 1 MiB of events, but the JSON encoding
/// (escapes, field names) makes the body larger; 8 MiB leaves room for that.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How the devstack is started. `Default` gives an ephemeral port, no persistence and no faults.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Directory the state persists to across restarts; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// Lifetime of the credentials RequestManagedInstanceRoleToken / CreateSession hand out.
    pub token_lifetime: Duration,
    /// Directory served by the artifact mirror under `/mirror/`.
    pub mirror_dir: Option<PathBuf>,
    /// Region the devstack pretends to be in (ARNs, scopes).
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    /// Faults active from the start (the control endpoint changes them later).
    pub faults: crate::control::Faults,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 0,
            state_dir: None,
            token_lifetime: Duration::from_secs(3600),
            mirror_dir: None,
            region: "us-west-2".into(),
            account_id: "123456789012".into(),
            faults: crate::control::Faults::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevstackError {
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot load state from {path}: {message}")]
    LoadState { path: PathBuf, message: String },
    #[error("cannot start the devstack runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running devstack. Dropping it shuts the server down.
pub struct Devstack {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub addr: SocketAddr,
    pub state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Devstack {
    /// Starts a devstack on its own thread and runtime; returns once it accepts connections.
    /// Meant for tests and benchmarks that want one in-process.
    pub fn spawn(config: Config) -> Result<Devstack, DevstackError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("devstack".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(DevstackError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match bind(config).await {
                        Ok((listener, state)) => {
                            let addr = listener.local_addr().ok();
                            let _ = ready_tx.send(Ok((addr, state.clone())));
                            serve(listener, state, async {
                                let _ = shutdown_rx.await;
                            })
                            .await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(DevstackError::Runtime)?;
        let (addr, state) = ready_rx
            .recv()
            .map_err(|_| DevstackError::Runtime(std::io::Error::other("devstack thread died")))??;
        let addr =
            addr.ok_or_else(|| DevstackError::Runtime(std::io::Error::other("no local address")))?;
        Ok(Devstack {
            url: format!("http://{addr}"),
            addr,
            state,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Devstack {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds 127.0.0.1:port and builds the state (loading it from `state_dir` when set).
pub async fn bind(config: Config) -> Result<(tokio::net::TcpListener, Shared), DevstackError> {
    let port = config.port;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| DevstackError::Bind { port, source })?;
    let state = Arc::new(State::new(config)?);
    Ok((listener, state))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new().fallback(dispatch).with_state(state.clone());
    let listener = crate::control::GatedListener::new(listener, state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
}

/// Serves the same routes as [`serve`] over TLS (`acceptor`, from [`crate::tls::listener_tls`])
/// until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: Shared,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().fallback(dispatch).with_state(state.clone());
    let listener = crate::tls::TlsListener::new(
        crate::control::GatedListener::new(listener, state),
        acceptor,
    )?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Which service a request is for, decided from its target header, path or Action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ssm,
    Logs,
    MetricsCbor,
    MetricsJson,
    MetricsQuery,
    Sts,
    Eks,
    Ecr,
    RolesAnywhere,
    Mirror,
    Control,
}

impl Service {
    pub fn protocol(self) -> Protocol {
        match self {
            Service::Ssm | Service::Logs | Service::Ecr => Protocol::AwsJson11,
            Service::MetricsCbor => Protocol::RpcV2Cbor,
            Service::MetricsJson => Protocol::AwsJson10,
            Service::MetricsQuery | Service::Sts => Protocol::AwsQuery,
            Service::Eks | Service::RolesAnywhere => Protocol::RestJson1,
            Service::Mirror | Service::Control => Protocol::Plain,
        }
    }

    /// Short name used for fault-injection rules and counters (`ssm`, `logs`, `metrics`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Service::Ssm => "ssm",
            Service::Logs => "logs",
            Service::MetricsCbor | Service::MetricsJson | Service::MetricsQuery => "monitoring",
            Service::Sts => "sts",
            Service::Eks => "eks",
            Service::Ecr => "ecr",
            Service::RolesAnywhere => "rolesanywhere",
            Service::Mirror => "mirror",
            Service::Control => "control",
        }
    }
}

/// Classifies a request: the service and the operation name (`PutLogEvents`, `DescribeCluster`,
/// a mirror path...).
pub fn classify(req: &Req) -> Option<(Service, String)> {
    if let Some(rest) = req.path.strip_prefix("/_devstack/") {
        return Some((Service::Control, rest.to_string()));
    }
    if req.path.starts_with("/mirror/") || req.path == "/mirror" {
        return Some((Service::Mirror, req.path.clone()));
    }
    if let Some(target) = req.header("x-amz-target") {
        if let Some(op) = target.strip_prefix("AmazonSSM.") {
            return Some((Service::Ssm, op.to_string()));
        }
        if let Some(op) = target.strip_prefix("Logs_20140328.") {
            return Some((Service::Logs, op.to_string()));
        }
        if let Some(op) = target.strip_prefix(crate::ecr::TARGET_PREFIX) {
            return Some((Service::Ecr, op.to_string()));
        }
        if let Some(op) = target.strip_prefix(crate::metrics::JSON_TARGET_PREFIX) {
            return Some((Service::MetricsJson, op.to_string()));
        }
        return None;
    }
    if let Some(op) = req
        .path
        .strip_prefix("/service/GraniteServiceVersion20100801/operation/")
    {
        return Some((Service::MetricsCbor, op.to_string()));
    }
    if req.path.starts_with("/clusters") {
        let op = if req.method == axum::http::Method::GET
            && req.path.trim_end_matches('/').matches('/').count() == 2
        {
            "DescribeCluster"
        } else if req.method == axum::http::Method::GET {
            "ListClusters"
        } else {
            "Unsupported"
        };
        return Some((Service::Eks, op.to_string()));
    }
    if req.path == "/sessions" {
        return Some((Service::RolesAnywhere, "CreateSession".to_string()));
    }
    if req.method == axum::http::Method::POST && req.path == "/" {
        let action = req
            .form_pairs()
            .into_iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v)?;
        let service = match action.as_str() {
            "GetCallerIdentity" | "AssumeRole" | "GetSessionToken" => Service::Sts,
            _ => Service::MetricsQuery,
        };
        return Some((service, action));
    }
    None
}

async fn dispatch(AxState(state): AxState<Shared>, request: Request<Body>) -> Response {
    let mut resp = answer(&state, request).await;
    // Every response carries the devstack's notion of now (clock offset included), errors for
    // unknown paths too: clients detect skew from it, as they would from AWS.
    if let Ok(v) = axum::http::HeaderValue::from_str(&httpdate::fmt_http_date(state.now())) {
        resp.headers_mut().insert(axum::http::header::DATE, v);
    }
    resp
}

async fn answer(state: &Shared, request: Request<Body>) -> Response {
    // The GatedListener refuses new connections during an outage; a request on a connection
    // kept alive from before must fail too, or pooled clients would never notice the outage.
    if state.faults().in_outage() {
        return crate::mirror::severed_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
            .render(Protocol::Plain);
        }
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
    };
    let Some((service, op)) = classify(&req) else {
        return ApiError::not_found(
            "UnknownOperationException",
            format!("devstack does not serve {} {}", req.method, req.path),
        )
        .render(Protocol::Plain);
    };
    state.count_call(service.name(), &op);
    let (arrived, t0) = (std::time::SystemTime::now(), std::time::Instant::now());
    let resp = serve_call(state, service, &op, &req).await;
    if !matches!(service, Service::Control) {
        crate::state::lock(&state.arrivals).record(
            service.name(),
            arrived,
            t0.elapsed(),
            resp.status().as_u16(),
        );
    }
    resp
}

/// One classified call: injected faults first, then the service.
async fn serve_call(state: &Shared, service: Service, op: &str, req: &Req) -> Response {
    if !matches!(service, Service::Control) {
        // Bound first: in an `if let` the faults read guard would live across the await, and a
        // std guard held there makes the handler future !Send.
        let delay = state.faults().latency_for(service.name(), op);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        // Read first: the write lock is taken only while a fail-next is armed.
        let armed = !state.faults().fail_next.is_empty();
        let fail_next = if armed {
            state.faults_mut().take_fail_next(service.name(), op)
        } else {
            None
        };
        if let Some(err) = fail_next {
            return err.render(service.protocol());
        }
        if let Some(err) = state
            .faults()
            .injected_error(service.name(), op, service.protocol())
        {
            return err.render(service.protocol());
        }
    }
    match service {
        Service::Ssm => crate::ssm::handle(state, op, req).await,
        Service::Logs => crate::logs::handle(state, op, req).await,
        Service::MetricsCbor | Service::MetricsJson | Service::MetricsQuery => {
            crate::metrics::handle(state, service.protocol(), op, req).await
        }
        Service::Sts => crate::sts::handle(state, op, req).await,
        Service::Eks => crate::eks::handle(state, op, req).await,
        Service::Ecr => crate::ecr::handle(state, op, req).await,
        Service::RolesAnywhere => crate::rolesanywhere::handle(state, op, req).await,
        Service::Mirror => crate::mirror::handle(state, req).await,
        Service::Control => crate::control::handle(state, op, req).await,
    }
}
