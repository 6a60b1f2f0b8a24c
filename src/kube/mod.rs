//! The cluster's Kubernetes API, as the node itself talks to it: the typed calls of the drain
//! ([`drain`]), the access review ([`access`]) and the node lifecycle.
//!
//! Transport is the one `join`'s Ready check uses, kubelet's way: TLS verified against the
//! cluster CA only, through the configured proxy, a fresh EKS bearer token
//! ([`crate::aws::eks_token`]) made from the node's current credentials for every request (the
//! daemon rotates them underneath; a token lives 15 minutes). Objects are the Kubernetes API
//! types of `k8s-openapi`. Errors keep the API server's `Status` (code, reason, message and
//! causes): the drain reads the blocking PodDisruptionBudget's name from a 429's causes.

pub mod access;
pub mod drain;
pub mod lock;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::aws::eks_token;
use crate::aws::http::{self, HttpSettings, TransportKind};

/// Time allowed to connect to the API server (and to decide that nothing answers there).
pub const API_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one request to the API server.
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of an idempotent request (GET, PATCH of a field to a value) when nothing answers or the
/// server answers 5xx/429 (nodeadm's `ListRetry` makes 5: internal/kubernetes/retry.go).
pub const ATTEMPTS: u32 = 3;
/// Pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Largest answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// A client for the cluster's API server as kubelet talks to it: TLS verified against the
/// cluster CA only, through the configured proxy, with this module's timeouts.
pub fn api_client(
    ca_pem: &[u8],
    cluster: &str,
    network: &crate::config::NetworkConfig,
) -> Result<reqwest::Client, String> {
    let mut settings = HttpSettings::from_network(network);
    settings.trust_only = Some((format!("the CA of cluster {cluster}"), ca_pem.to_vec()));
    settings.connect_timeout = Some(API_CONNECT_TIMEOUT);
    settings.request_timeout = Some(API_REQUEST_TIMEOUT);
    http::client(&settings).map_err(|e| e.to_string())
}

/// `endpoint` with `segments` pushed as path segments (percent-encoded, never parsed as a
/// relative URL).
pub fn api_url(endpoint: &str, segments: &[&str]) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("`{endpoint}` is not a usable URL: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("`{endpoint}` cannot have a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Whole seconds since the Unix epoch: what the lock entries and the drain and lifecycle
/// journals record.
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The `message` of a Kubernetes `Status` answer, or the start of whatever came back.
pub fn status_message(body: &[u8]) -> String {
    let message = http::body_message(body);
    if message.trim().is_empty() {
        "(empty answer)".to_owned()
    } else {
        message
    }
}

/// Where the cluster is and who the node is.
#[derive(Clone)]
pub struct Target {
    /// `https://…` of the API server.
    pub endpoint: String,
    /// The cluster CA bundle, PEM.
    pub ca_pem: Vec<u8>,
    pub cluster: String,
    pub region: String,
    pub node_name: String,
}

/// The node's current credentials, read again for every request (the daemon rotates them).
pub type CredentialSource = Arc<dyn Fn() -> Result<Credentials, String> + Send + Sync>;

/// Why a call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    #[error("nothing answers at the API server endpoint {endpoint} ({detail})")]
    Unreachable { endpoint: String, detail: String },
    #[error(
        "the API server at {endpoint} is not the cluster's: its certificate does not verify against the CA of cluster {cluster} ({detail})"
    )]
    Tls {
        endpoint: String,
        cluster: String,
        detail: String,
    },
    #[error(
        "the API server at {endpoint} refused the node's credentials (401 Unauthorized: expired credentials, or cluster {cluster} has no access entry of type HYBRID_LINUX for the node's IAM role)"
    )]
    Unauthorized { endpoint: String, cluster: String },
    #[error("the node has no usable credentials: {0}")]
    Credentials(String),
    /// An answer with a Kubernetes `Status`: the call was refused or failed on the server.
    #[error("{what}: the API server answered {code} {reason}: {message}")]
    Status {
        what: String,
        code: u16,
        reason: String,
        message: String,
        /// `(reason, message)` of `details.causes`.
        causes: Vec<(String, String)>,
    },
    #[error("{what}: the API server at {endpoint} answered with something unreadable ({detail})")]
    Decode {
        what: String,
        endpoint: String,
        detail: String,
    },
    #[error("cannot talk to the API server at {endpoint}: {message}")]
    Setup { endpoint: String, message: String },
}

impl KubeError {
    /// The HTTP status of a `Status` answer.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The node's credentials were missing or refused: fresh ones may help.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            KubeError::Unauthorized { .. } | KubeError::Credentials(_)
        )
    }
}

/// The typed API of one cluster, as one node.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    target: Target,
    credentials: CredentialSource,
}

/// A list answer (`PodList`, `ConfigMapList`, …): only the items are read.
#[derive(serde::Deserialize)]
struct ItemList<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

/// How a request is sent.
enum Method<'a> {
    Get,
    Post(&'a serde_json::Value),
    Put(&'a serde_json::Value),
    MergePatch(&'a serde_json::Value),
}

impl Api {
    pub fn new(
        target: Target,
        network: &crate::config::NetworkConfig,
        credentials: CredentialSource,
    ) -> Result<Api, KubeError> {
        let client = api_client(&target.ca_pem, &target.cluster, network).map_err(|message| {
            KubeError::Setup {
                endpoint: target.endpoint.clone(),
                message,
            }
        })?;
        Ok(Api {
            client,
            target,
            credentials,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn node_name(&self) -> &str {
        &self.target.node_name
    }

    fn endpoint(&self) -> &str {
        self.target.endpoint.trim_end_matches('/')
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<reqwest::Url, KubeError> {
        let mut url = api_url(self.endpoint(), segments).map_err(|message| KubeError::Setup {
            endpoint: self.endpoint().to_owned(),
            message,
        })?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// GETs one object; `None` when it does not exist (404).
    pub async fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
    ) -> Result<Option<T>, KubeError> {
        let url = self.url(segments, &[])?;
        match self.call(what, &url, Method::Get, true).await {
            Ok(body) => self.decode(what, &body).map(Some),
            Err(KubeError::Status { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GETs a list's items.
    pub async fn list<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, KubeError> {
        let url = self.url(segments, query)?;
        let body = self.call(what, &url, Method::Get, true).await?;
        Ok(self.decode::<ItemList<T>>(what, &body)?.items)
    }

    /// POSTs `body`; the answer decoded. Sent once (a create or an eviction is not repeated
    /// blindly): the caller decides what a failure means.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        body: &B,
    ) -> Result<T, KubeError> {
        self.send_json(what, segments, body, false, false).await
    }

    /// POSTs a request that changes nothing (an access review): retried like a GET.
    pub async fn post_query<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        body: &B,
    ) -> Result<T, KubeError> {
        self.send_json(what, segments, body, false, true).await
    }

    /// PUTs `body` (an update: with `metadata.resourceVersion`, refused with 409 when the object
    /// changed since it was read). Sent once.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        body: &B,
    ) -> Result<T, KubeError> {
        self.send_json(what, segments, body, true, false).await
    }

    /// A JSON merge patch (RFC 7386) setting fields to values: idempotent, so retried like a GET.
    pub async fn merge_patch<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        patch: &serde_json::Value,
    ) -> Result<T, KubeError> {
        let url = self.url(segments, &[])?;
        let answer = self
            .call(what, &url, Method::MergePatch(patch), true)
            .await?;
        self.decode(what, &answer)
    }

    /// POSTs (or PUTs) `body` as JSON, again on transport failures and 5xx/429 when `retry`;
    /// the answer decoded.
    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        body: &B,
        put: bool,
        retry: bool,
    ) -> Result<T, KubeError> {
        let url = self.url(segments, &[])?;
        let body = serde_json::to_value(body).map_err(|e| KubeError::Setup {
            endpoint: self.endpoint().to_owned(),
            message: format!("{what}: cannot encode the request: {e}"),
        })?;
        let how = if put {
            Method::Put(&body)
        } else {
            Method::Post(&body)
        };
        let answer = self.call(what, &url, how, retry).await?;
        self.decode(what, &answer)
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, body: &[u8]) -> Result<T, KubeError> {
        serde_json::from_slice(body).map_err(|e| KubeError::Decode {
            what: what.to_owned(),
            endpoint: self.endpoint().to_owned(),
            detail: e.to_string(),
        })
    }

    /// Sends one request (again, when `retry`, on transport failures, 429 and 5xx); the body of
    /// a 2xx answer.
    async fn call(
        &self,
        what: &str,
        url: &reqwest::Url,
        how: Method<'_>,
        retry: bool,
    ) -> Result<Vec<u8>, KubeError> {
        let attempts = if retry { ATTEMPTS } else { 1 };
        let mut last = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let creds = (self.credentials)().map_err(KubeError::Credentials)?;
            let token = eks_token::token(
                &creds,
                &self.target.cluster,
                &self.target.region,
                SystemTime::now(),
            );
            let request = match &how {
                Method::Get => self.client.get(url.clone()),
                Method::Post(b) => self.client.post(url.clone()).json(b),
                Method::Put(b) => self.client.put(url.clone()).json(b),
                Method::MergePatch(b) => self
                    .client
                    .patch(url.clone())
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/merge-patch+json",
                    )
                    .body(b.to_string()),
            };
            let sent = request
                .bearer_auth(&token.token)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await;
            let mut resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let (kind, detail) = http::classify(&e);
                    if kind == TransportKind::Tls {
                        return Err(KubeError::Tls {
                            endpoint: self.endpoint().to_owned(),
                            cluster: self.target.cluster.clone(),
                            detail,
                        });
                    }
                    last = Some(KubeError::Unreachable {
                        endpoint: self.endpoint().to_owned(),
                        detail,
                    });
                    continue;
                }
            };
            let code = resp.status().as_u16();
            let body = match http::read_body(&mut resp, MAX_ANSWER).await {
                Ok(b) => b,
                Err(e) => {
                    last = Some(KubeError::Unreachable {
                        endpoint: self.endpoint().to_owned(),
                        detail: format!("the answer broke off: {e}"),
                    });
                    continue;
                }
            };
            if (200..300).contains(&code) {
                return Ok(body);
            }
            if code == 401 {
                return Err(KubeError::Unauthorized {
                    endpoint: self.endpoint().to_owned(),
                    cluster: self.target.cluster.clone(),
                });
            }
            let err = status_error(what, code, &body);
            if code == 429 || code >= 500 {
                last = Some(err);
                continue;
            }
            return Err(err);
        }
        Err(match last {
            Some(KubeError::Unreachable { endpoint, detail }) if attempts > 1 => {
                KubeError::Unreachable {
                    endpoint,
                    detail: format!("{detail}; asked {attempts} times"),
                }
            }
            Some(e) => e,
            None => KubeError::Unreachable {
                endpoint: self.endpoint().to_owned(),
                detail: "no answer".to_owned(),
            },
        })
    }
}

/// The `Status` of a failed answer.
fn status_error(what: &str, code: u16, body: &[u8]) -> KubeError {
    let status: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let causes = status["details"]["causes"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| (text(&c["reason"]), text(&c["message"])))
                .collect()
        })
        .unwrap_or_default();
    let reason = text(&status["reason"]);
    KubeError::Status {
        what: what.to_owned(),
        code,
        reason: if reason.is_empty() {
            http_reason(code).to_owned()
        } else {
            reason
        },
        message: status_message(body),
        causes,
    }
}

fn http_reason(code: u16) -> &'static str {
    reqwest::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_answer_keeps_its_causes() {
        let body = serde_json::json!({
            "kind": "Status", "status": "Failure", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}]}
        })
        .to_string();
        let e = status_error("evict app/web-1", 429, body.as_bytes());
        let KubeError::Status {
            code,
            reason,
            causes,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!((*code, reason.as_str()), (429, "TooManyRequests"));
        assert_eq!(causes[0].0, "DisruptionBudget");
        assert!(
            e.to_string().starts_with(
                "evict app/web-1: the API server answered 429 TooManyRequests: Cannot evict pod"
            ),
            "{e}"
        );
        let e = status_error("get x", 503, b"");
        assert!(
            e.to_string()
                .contains("503 Service Unavailable: (empty answer)"),
            "{e}"
        );
    }
}
