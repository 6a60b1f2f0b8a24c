//! `leave`'s drain check: before anything changes, the node must be drained and cordoned, as
//! nodeadm's uninstall requires (cmd/nodeadm/uninstall/uninstall.go, internal/node/pods.go,
//! internal/node/validations.go).
//!
//! The check asks the cluster's API server with the node's own credentials, the way `join`'s
//! Ready check does ([`super::ready::api_client`]): the pods bound to the node
//! (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`) and the Node object. Pods that do
//! not count, as `kubectl drain --ignore-daemonsets` does not evict them: pods controlled by a
//! DaemonSet, mirror pods (static pods, annotation `kubernetes.io/config.mirror`), and pods that
//! have finished (phase Succeeded or Failed). A Node object that does not exist counts as
//! cordoned (nodeadm: `IsUnscheduled` is satisfied by NotFound).
//!
//! When the API server cannot be asked (nothing answers, the CA does not match, the node's
//! credentials are refused), `leave` refuses as nodeadm does and says why; `--force` is the way
//! to leave a cluster that is gone.

use std::time::{Duration, SystemTime};

use super::ready;
use crate::aws::eks_token;
use crate::aws::http::{self, TransportKind};

/// How many times the pod list is asked for before the check gives up (nodeadm's `ListRetry`
/// makes 5 attempts: internal/kubernetes/retry.go; fewer here, each with the 5 s connect
/// timeout of [`ready::API_CONNECT_TIMEOUT`]).
pub const ATTEMPTS: u32 = 3;
/// Pause between two attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Pods named in a refusal; the rest are counted.
pub const PODS_NAMED: usize = 10;
/// Annotation kubelet puts on the API object of a static pod. k8s.io/api core/v1
/// `MirrorPodAnnotationKey`.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Where and as whom to ask: the same API server, node and credentials join's Ready check uses.
pub type DrainCheck<'a> = super::ready::ReadyCheck<'a>;

/// What a passed check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Pods bound to the node that do not block (DaemonSet, mirror, finished).
    pub ignored: usize,
    /// The Node object exists (cordoned); false when it was never registered or was deleted.
    pub registered: bool,
}

/// Why the node may not leave yet, or why that cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "node {node} is not drained: {} still {} on it: {}{}{}. Drain it first (`kubectl drain {node} --ignore-daemonsets`, which also cordons it), then run `hybrid-agent leave` again; or `hybrid-agent leave --force` to leave anyway (the pods stop with the node)",
        pods_count(.pods.len() + .more), if .pods.len() + .more == 1 { "runs" } else { "run" },
        .pods.join(", "),
        if *.more > 0 { format!(" and {} more", .more) } else { String::new() },
        if *.cordoned { "" } else { ", and it is not cordoned" }
    )]
    NotDrained {
        node: String,
        /// `namespace/name`, at most [`PODS_NAMED`].
        pods: Vec<String>,
        more: usize,
        cordoned: bool,
    },
    #[error(
        "node {node} runs no pods that need draining but is not cordoned: the scheduler can still place pods on it. Cordon it (`kubectl cordon {node}`, or `kubectl drain {node} --ignore-daemonsets`), then run `hybrid-agent leave` again; or `hybrid-agent leave --force`"
    )]
    NotCordoned { node: String },
    #[error(
        "cannot tell whether node {node} is drained: {why}. nodeadm's uninstall refuses in this case too. If the cluster is gone, or you know the node is drained, run `hybrid-agent leave --force`"
    )]
    Unknown {
        node: String,
        why: String,
        /// The node's credentials were missing or refused (fresh ones may help).
        auth: bool,
    },
}

fn pods_count(n: usize) -> String {
    if n == 1 {
        "1 pod".to_owned()
    } else {
        format!("{n} pods")
    }
}

/// One answer of the API server.
enum Answer {
    Ok(serde_json::Value),
    NotFound,
}

/// Runs the check. See the module docs.
pub async fn check(c: &DrainCheck<'_>) -> Result<Drained, DrainError> {
    let endpoint = c.endpoint.trim_end_matches('/');
    let unknown = |why: String| DrainError::Unknown {
        node: c.node_name.to_owned(),
        why,
        auth: false,
    };
    let refused = |e: Refusal| DrainError::Unknown {
        node: c.node_name.to_owned(),
        why: e.why,
        auth: e.auth,
    };
    let client = ready::api_client(c.ca_pem, c.cluster, c.network).map_err(unknown)?;
    let mut pods_url = ready::api_url(endpoint, &["api", "v1", "pods"]).map_err(unknown)?;
    pods_url
        .query_pairs_mut()
        .append_pair("fieldSelector", &format!("spec.nodeName={}", c.node_name));
    let node_url =
        ready::api_url(endpoint, &["api", "v1", "nodes", c.node_name]).map_err(unknown)?;

    let pods = match get(&client, &pods_url, c).await.map_err(refused)? {
        Answer::Ok(list) => list,
        Answer::NotFound => {
            return Err(unknown(format!(
                "the API server at {endpoint} has no pod list (404 for {pods_url})"
            )));
        }
    };
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let mut blocking: Vec<String> = items
        .iter()
        .filter(|p| blocks_drain(p))
        .map(pod_name)
        .collect();
    blocking.sort();
    let ignored = items.len() - blocking.len();
    let (registered, cordoned) = match get(&client, &node_url, c).await.map_err(refused)? {
        Answer::Ok(node) => (true, node["spec"]["unschedulable"] == true),
        Answer::NotFound => (false, true),
    };
    if !blocking.is_empty() {
        let more = blocking.len().saturating_sub(PODS_NAMED);
        blocking.truncate(PODS_NAMED);
        return Err(DrainError::NotDrained {
            node: c.node_name.to_owned(),
            pods: blocking,
            more,
            cordoned,
        });
    }
    if !cordoned {
        return Err(DrainError::NotCordoned {
            node: c.node_name.to_owned(),
        });
    }
    Ok(Drained {
        ignored,
        registered,
    })
}

/// Why the API server could not be asked.
struct Refusal {
    why: String,
    auth: bool,
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Refusal { why, auth: false }
    }
}

/// GETs `url` with a fresh token, retrying transport failures and 5xx/429 answers.
async fn get(
    client: &reqwest::Client,
    url: &reqwest::Url,
    c: &DrainCheck<'_>,
) -> Result<Answer, Refusal> {
    let endpoint = c.endpoint.trim_end_matches('/');
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let token = eks_token::token(c.credentials, c.cluster, c.region, SystemTime::now());
        let sent = client
            .get(url.clone())
            .bearer_auth(&token.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let (kind, detail) = http::classify(&e);
                if kind == TransportKind::Tls {
                    return Err(Refusal::from(format!(
                        "the API server at {endpoint} is not the cluster's: its certificate does not verify against the CA of cluster {} ({detail})",
                        c.cluster
                    )));
                }
                last = format!("nothing answers at the API server endpoint {endpoint} ({detail})");
                continue;
            }
        };
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match status.as_u16() {
            200 => {
                return serde_json::from_slice(&body).map(Answer::Ok).map_err(|e| {
                    Refusal::from(format!("the API server at {endpoint} answered {url} with something that is not JSON ({e})"))
                });
            }
            404 => return Ok(Answer::NotFound),
            401 => {
                return Err(Refusal {
                    why: format!(
                        "the API server at {endpoint} refused the node's credentials (401 Unauthorized: expired credentials, or cluster {} has no access entry for the node's IAM role)",
                        c.cluster
                    ),
                    auth: true,
                });
            }
            403 => {
                return Err(Refusal::from(format!(
                    "the API server at {endpoint} forbids node {} to list its pods (403: {})",
                    c.node_name,
                    ready::status_message(&body)
                )));
            }
            code if code == 429 || code >= 500 => {
                last = format!(
                    "the API server at {endpoint} answered {status}: {}",
                    ready::status_message(&body)
                );
            }
            _ => {
                return Err(Refusal::from(format!(
                    "the API server at {endpoint} answered {status}: {}",
                    ready::status_message(&body)
                )));
            }
        }
    }
    Err(Refusal::from(format!("{last} (asked {ATTEMPTS} times)")))
}

/// Whether a pod bound to the node keeps it from being drained (what `kubectl drain
/// --ignore-daemonsets` would evict).
pub fn blocks_drain(pod: &serde_json::Value) -> bool {
    let daemonset = pod["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["controller"] == true && r["kind"] == "DaemonSet")
        });
    let mirror = pod["metadata"]["annotations"]
        .get(MIRROR_POD_ANNOTATION)
        .is_some();
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    !(daemonset || mirror || finished)
}

/// `namespace/name`.
fn pod_name(pod: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        pod["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn daemonset_mirror_and_finished_pods_do_not_block() {
        let plain = json!({"metadata": {"namespace": "app", "name": "web-1"}, "status": {"phase": "Running"}});
        assert!(blocks_drain(&plain));
        assert_eq!(pod_name(&plain), "app/web-1");
        let ds = json!({"metadata": {"ownerReferences": [
            {"kind": "DaemonSet", "name": "kube-proxy", "controller": true}]}});
        assert!(!blocks_drain(&ds));
        // Owned, but not controlled, by a DaemonSet: kubectl drain evicts it.
        let owned = json!({"metadata": {"ownerReferences": [
            {"kind": "DaemonSet", "name": "x"}, {"kind": "ReplicaSet", "name": "y", "controller": true}]}});
        assert!(blocks_drain(&owned));
        let mirror = json!({"metadata": {"annotations": {MIRROR_POD_ANNOTATION: "abc"}}});
        assert!(!blocks_drain(&mirror));
        for phase in ["Succeeded", "Failed"] {
            assert!(!blocks_drain(&json!({"status": {"phase": phase}})));
        }
        assert!(blocks_drain(&json!({"status": {"phase": "Pending"}})));
    }

    #[test]
    fn the_refusal_names_at_most_ten_pods_and_counts_the_rest() {
        let e = DrainError::NotDrained {
            node: "mi-1".into(),
            pods: (0..PODS_NAMED).map(|i| format!("app/p{i}")).collect(),
            more: 3,
            cordoned: false,
        };
        let text = e.to_string();
        assert!(
            text.starts_with("node mi-1 is not drained: 13 pods still run on it: app/p0, app/p1"),
            "{text}"
        );
        assert!(
            text.contains("app/p9 and 3 more, and it is not cordoned."),
            "{text}"
        );
        assert!(
            text.contains("kubectl drain mi-1 --ignore-daemonsets") && text.contains("--force"),
            "{text}"
        );
    }
}
