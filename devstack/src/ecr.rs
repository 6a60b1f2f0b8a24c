//! Amazon ECR `GetAuthorizationToken` over awsJson 1.1: the registry credentials a node pulls
//! the EKS pod sandbox (pause) image with, as nodeadm does before kubelet starts
//! (internal/containerd/sandbox.go, internal/aws/ecr/ecr.go).
//!
//! A real token is `base64("AWS:" + password)`, valid 12 hours, for every registry the caller's
//! IAM principal may pull from. The devstack makes one password per run; the registry it starts
//! on demand ([`crate::registry`], `GET /_devstack/ecr/registry`) accepts exactly that password,
//! so a pull with a token succeeds and an anonymous one is refused, as with ECR.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine;

use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req};

/// `X-Amz-Target` prefix of ECR's awsJson 1.1 operations (ECR API reference).
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921.";
/// Signing name.
const SIGNING_NAME: &str = "ecr";
/// How long an authorization token is valid (ECR API reference: 12 hours).
const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The user name inside every ECR authorization token.
pub const TOKEN_USER: &str = "AWS";

/// The registry password tokens carry, and the registry once started.
pub struct EcrState {
    password: String,
    /// Where the registry keeps its files: `<state dir>/registry`, or a temp dir.
    dir: PathBuf,
    registry: Mutex<Option<crate::registry::Registry>>,
}

impl EcrState {
    pub fn new(state_dir: Option<&std::path::Path>) -> Result<Self, crate::server::DevstackError> {
        let password = crate::auth::random_string(crate::auth::ALNUM, 48)
            .map_err(|e| crate::server::DevstackError::Runtime(std::io::Error::other(e.message)))?;
        let dir = match state_dir {
            Some(d) => d.join("registry"),
            None => std::env::temp_dir().join(format!(
                "hybrid-devstack-registry-{}",
                uuid::Uuid::new_v4().simple()
            )),
        };
        Ok(Self {
            password,
            dir,
            registry: Mutex::new(None),
        })
    }
}

impl Drop for EcrState {
    fn drop(&mut self) {
        let started = lock(&self.registry).take();
        if let Some(r) = started {
            drop(r);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub async fn handle(state: &Shared, op: &str, req: &Req) -> Response {
    match answer(state, op, req) {
        Ok(resp) => resp,
        Err(e) => e.render(Protocol::AwsJson11),
    }
}

fn answer(state: &Shared, op: &str, req: &Req) -> Result<Response, ApiError> {
    let principal = crate::auth::authenticate(state, req, SIGNING_NAME)?;
    if op != "GetAuthorizationToken" {
        return Err(ApiError::bad_request(
            "UnknownOperationException",
            format!("devstack ECR implements only GetAuthorizationToken, not {op}"),
        ));
    }
    let body: serde_json::Value = if req.body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request("SerializationException", e.to_string()))?
    };
    // registryIds is deprecated and ignored by ECR; one token serves every registry.
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "SerializationException",
            "the request body must be a JSON object",
        ));
    }
    let password = &state.ecr.password;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:{password}"));
    let expires = crate::auth::epoch_secs(state.now() + TOKEN_LIFETIME);
    let endpoint = format!(
        "https://{}.dkr.ecr.{}.amazonaws.com",
        principal.account_id, state.config.region
    );
    Ok(crate::wire::json_ok(&serde_json::json!({
        "authorizationData": [{
            "authorizationToken": token,
            "expiresAt": expires,
            "proxyEndpoint": endpoint,
        }]
    })))
}

/// - `GET /_devstack/ecr/password` → the password tokens carry;
/// - `GET /_devstack/ecr/registry` → starts the registry if needed and answers
///   `{"address": "127.0.0.1:PORT", "ca_file": "…", "pause_image": "eks/pause:3.5",
///   "spare_image": "hybrid-devstack/spare:1.0"}` (repositories of the registry).
pub fn control(state: &Shared, op: &str, req: &Req) -> Response {
    match (req.method.clone(), op) {
        (Method::GET, "ecr/password") => crate::wire::bytes_response(
            StatusCode::OK,
            "text/plain",
            state.ecr.password.clone().into(),
        ),
        (Method::GET, "ecr/registry") => {
            let mut slot = lock(&state.ecr.registry);
            if slot.is_none() {
                match crate::registry::Registry::start(&state.ecr.dir, &state.ecr.password) {
                    Ok(r) => *slot = Some(r),
                    Err(e) => {
                        return ApiError::internal(format!("cannot start the registry: {e}"))
                            .render(Protocol::Plain);
                    }
                }
            }
            match slot.as_ref() {
                Some(r) => crate::wire::json_ok(&serde_json::json!({
                    "address": r.address.to_string(),
                    "ca_file": r.ca_file.display().to_string(),
                    "pause_image": format!("{}:{}", crate::registry::PAUSE_REPOSITORY, crate::registry::PAUSE_TAG),
                    "spare_image": format!("{}:{}", crate::registry::SPARE_REPOSITORY, crate::registry::SPARE_TAG),
                })),
                None => ApiError::internal("the registry did not start").render(Protocol::Plain),
            }
        }
        _ => ApiError::not_found(
            "UnknownControl",
            format!("no control endpoint {} /_devstack/{op}", req.method),
        )
        .render(Protocol::Plain),
    }
}
