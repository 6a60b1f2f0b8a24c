//! The last step of `join`'s wait phase: the node Ready in the cluster.
//!
//! Once kubelet answers `/healthz`, the agent asks the cluster's API server for the node's Node
//! object, the way kubelet itself talks to it: TLS verified against the cluster CA only (the one
//! in the kubeconfig), a bearer token made from the node's credentials (what the kubeconfig's
//! aws-iam-authenticator makes, see [`crate::aws::eks_token`]), through the configured proxy. It
//! polls until the Ready condition is True or the time is up.
//!
//! What the answers mean for the user:
//! - nothing answers at the endpoint (refused, unreachable, timed out) on the first try: Ready is
//!   not checked and `join` says so (an API server reachable only through a VPN that is not up
//!   yet is not a reason to undo the join);
//! - the certificate does not verify against the cluster CA, 401 (no access entry for the node's
//!   role), 403 (an access entry of the wrong type): kubelet fails the same way, so `join` fails
//!   at once and says what to fix;
//! - registered but NotReady only because no pod network runs yet (EKS hybrid nodes stay NotReady
//!   until a CNI such as Cilium or Calico is deployed for the remote pod network): `join`
//!   succeeds with a warning naming that, when the time is up;
//! - not registered, or NotReady for another reason, when the time is up: `join` fails.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use tokio::time::Instant;

use crate::aws::eks_token;
use crate::aws::http::{self, TransportKind};

/// Pause between two looks at the Node object (kubelet posts its status every 10 s by default
/// and at once on a change).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
pub use crate::kube::{API_CONNECT_TIMEOUT, api_client, api_url, status_message};

/// Where and as whom to look.
pub struct ReadyCheck<'a> {
    /// `https://…` of the API server.
    pub endpoint: &'a str,
    /// The cluster CA bundle, PEM.
    pub ca_pem: &'a [u8],
    pub node_name: &'a str,
    pub cluster: &'a str,
    pub region: &'a str,
    pub credentials: &'a Credentials,
    pub network: &'a crate::config::NetworkConfig,
}

/// How the check ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyOutcome {
    /// The node's Ready condition is True.
    Ready,
    /// Registered, NotReady only because no pod network (CNI) runs on it yet; kubelet's message.
    WaitingForNetwork(String),
    /// Nothing answered at the endpoint: Ready was not checked. Why, in words.
    Unreachable(String),
}

/// Why the node is not (and will not by itself become) part of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(
        "the API server at {endpoint} is not the cluster's: its certificate does not verify against the CA of cluster {cluster} ({detail}); kubelet would be refused the same way — check spec.cluster.certificateAuthority and apiServerEndpoint in the NodeConfig (or leave them out so DescribeCluster supplies them)"
    )]
    Tls {
        endpoint: String,
        cluster: String,
        detail: String,
    },
    #[error(
        "the API server at {endpoint} refused the node's credentials (401 Unauthorized): cluster {cluster} has no access entry for the node's IAM role; create one of type HYBRID_LINUX (aws eks create-access-entry --cluster-name {cluster} --principal-arn <the node role's ARN> --type HYBRID_LINUX) and join again"
    )]
    Unauthorized { endpoint: String, cluster: String },
    #[error(
        "the API server at {endpoint} accepted the node's credentials but forbids node {node} to read its own Node object (403: {message}); the access entry of the node's IAM role must be of type HYBRID_LINUX"
    )]
    Forbidden {
        endpoint: String,
        node: String,
        message: String,
    },
    #[error(
        "node {node} did not register with the API server at {endpoint} within {waited:?}: kubelet has not created its Node object; kubelet's log says why (`journalctl -u kubelet`, or `hybrid-agent status` for where the built-in supervisor keeps it)"
    )]
    NeverRegistered {
        node: String,
        endpoint: String,
        waited: Duration,
    },
    #[error("node {node} is registered but not Ready after {waited:?}: {condition}")]
    NotReady {
        node: String,
        waited: Duration,
        condition: String,
    },
    #[error(
        "the API server at {endpoint} did not tell whether node {node} is Ready within {waited:?}; last answer: {last}"
    )]
    NoAnswer {
        node: String,
        endpoint: String,
        waited: Duration,
        last: String,
    },
    #[error("cannot talk to the API server at {endpoint}: {message}")]
    Setup { endpoint: String, message: String },
}

/// What one look at the Node object found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look {
    Ready,
    NotRegistered,
    /// The Ready condition (status, reason, message) when it is not True, or "no Ready condition
    /// yet".
    NotReady {
        summary: String,
        network: bool,
    },
    /// Anything else worth reporting if the time runs out (a 5xx, a dropped connection).
    Other(String),
}

/// Polls until the node is Ready, a definite refusal, or `deadline`.
pub async fn wait_ready(
    check: &ReadyCheck<'_>,
    deadline: Instant,
) -> Result<ReadyOutcome, ReadyError> {
    let started = Instant::now();
    let endpoint = check.endpoint.trim_end_matches('/');
    let setup = |message: String| ReadyError::Setup {
        endpoint: endpoint.to_owned(),
        message,
    };
    let client = api_client(check.ca_pem, check.cluster, check.network).map_err(setup)?;
    let url = api_url(endpoint, &["api", "v1", "nodes", check.node_name]).map_err(setup)?;

    let mut answered = false;
    let last = loop {
        let token = eks_token::token(
            check.credentials,
            check.cluster,
            check.region,
            SystemTime::now(),
        );
        let sent = client
            .get(url.clone())
            .bearer_auth(&token.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let look = match sent {
            Err(e) => {
                let (kind, detail) = http::classify(&e);
                match kind {
                    TransportKind::Tls => {
                        return Err(ReadyError::Tls {
                            endpoint: endpoint.to_owned(),
                            cluster: check.cluster.to_owned(),
                            detail,
                        });
                    }
                    _ if !answered => {
                        return Ok(ReadyOutcome::Unreachable(format!(
                            "nothing answers at the API server endpoint {endpoint} ({detail})"
                        )));
                    }
                    _ => Look::Other(detail),
                }
            }
            Ok(mut resp) => {
                answered = true;
                let status = resp.status();
                let body = match http::read_body(&mut resp, http::MAX_BODY_BYTES).await {
                    Ok(body) => Ok(body),
                    // Torn off: judged by the status alone, as before.
                    Err(http::BodyError::Transport(_)) => Ok(Vec::new()),
                    Err(e @ http::BodyError::TooLarge { .. }) => Err(e.to_string()),
                };
                match body {
                    Err(too_large) => Look::Other(too_large),
                    Ok(body) => match status.as_u16() {
                        200 => read_node(&body),
                        401 => {
                            return Err(ReadyError::Unauthorized {
                                endpoint: endpoint.to_owned(),
                                cluster: check.cluster.to_owned(),
                            });
                        }
                        403 => {
                            return Err(ReadyError::Forbidden {
                                endpoint: endpoint.to_owned(),
                                node: check.node_name.to_owned(),
                                message: status_message(&body),
                            });
                        }
                        404 => Look::NotRegistered,
                        _ => Look::Other(format!("{status}: {}", status_message(&body))),
                    },
                }
            }
        };
        if look == Look::Ready {
            return Ok(ReadyOutcome::Ready);
        }
        let now = Instant::now();
        if now >= deadline {
            break look;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    };
    let waited = started.elapsed();
    let node = check.node_name.to_owned();
    match last {
        Look::Ready => Ok(ReadyOutcome::Ready),
        Look::NotReady {
            summary,
            network: true,
        } => Ok(ReadyOutcome::WaitingForNetwork(summary)),
        Look::NotReady { summary, .. } => Err(ReadyError::NotReady {
            node,
            waited,
            condition: summary,
        }),
        Look::NotRegistered => Err(ReadyError::NeverRegistered {
            node,
            endpoint: endpoint.to_owned(),
            waited,
        }),
        Look::Other(last) => Err(ReadyError::NoAnswer {
            node,
            endpoint: endpoint.to_owned(),
            waited,
            last,
        }),
    }
}

/// The Ready condition of a Node object.
fn read_node(body: &[u8]) -> Look {
    let Ok(node) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Look::Other("the API server answered 200 with something that is not JSON".into());
    };
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    let Some(ready) = ready else {
        return Look::NotReady {
            summary: "the node has no Ready condition yet".into(),
            network: false,
        };
    };
    let field = |k: &str| ready[k].as_str().unwrap_or("").to_owned();
    if field("status") == "True" {
        return Look::Ready;
    }
    let message = field("message");
    Look::NotReady {
        network: waits_for_network(&message),
        summary: format!(
            "Ready={} ({}){}",
            field("status"),
            field("reason"),
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        ),
    }
}

/// Whether kubelet's NotReady message says only that no pod network runs: kubelet reports
/// `container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady
/// message:Network plugin returns error: cni plugin not initialized` until a CNI is deployed.
fn waits_for_network(message: &str) -> bool {
    message.contains("NetworkReady=false")
        || message.contains("NetworkPluginNotReady")
        || message.contains("cni plugin not initialized")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(status: &str, reason: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"kind": "Node", "status": {"conditions": [
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": status, "reason": reason, "message": message},
        ]}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_ready_condition_decides() {
        assert_eq!(
            read_node(&node(
                "True",
                "KubeletReady",
                "kubelet is posting ready status"
            )),
            Look::Ready
        );
        let cni = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";
        match read_node(&node("False", "KubeletNotReady", cni)) {
            Look::NotReady {
                network: true,
                summary,
            } => {
                assert!(
                    summary.starts_with(
                        "Ready=False (KubeletNotReady): container runtime network not ready"
                    ),
                    "{summary}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_node(&node(
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status."
            )),
            Look::NotReady { network: false, .. }
        ));
        assert!(matches!(
            read_node(br#"{"kind":"Node","status":{}}"#),
            Look::NotReady { network: false, .. }
        ));
        assert!(matches!(read_node(b"<html>"), Look::Other(_)));
    }

    #[test]
    fn status_messages_are_read_from_kubernetes_status_objects() {
        assert_eq!(
            status_message(br#"{"kind":"Status","message":"nodes \"x\" is forbidden"}"#),
            "nodes \"x\" is forbidden"
        );
        assert_eq!(status_message(b""), "(empty answer)");
    }
}
