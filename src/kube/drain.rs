//! Cordon and drain, as `kubectl drain --ignore-daemonsets` does it, with the node's own rights.
//!
//! 1. Cordon: a JSON merge patch of the node's own `spec.unschedulable` (NodeRestriction lets a
//!    node change its own Node object but not its taints; the `node.kubernetes.io/unschedulable`
//!    taint is added by the cluster's node lifecycle controller, so a patch of the one field is
//!    what a node may send, never a PUT of a whole, possibly stale, object).
//! 2. Evict every pod bound to the node (`fieldSelector=spec.nodeName=<node>`) through the
//!    Eviction API (`POST …/pods/NAME/eviction`, policy/v1), so that PodDisruptionBudgets hold:
//!    a 429 means the budget allows no disruption now; the eviction is asked again with backoff
//!    ([`DrainOptions::retry_first`] doubling to [`DrainOptions::retry_max`]; kubectl waits 5 s)
//!    until the deadline. Skipped, as kubectl skips them: pods controlled by a DaemonSet (their
//!    controller would put them back at once, and they tolerate the cordon), mirror pods (static
//!    pods: the API object only mirrors a file kubelet runs; kubelet owns them), and finished pods
//!    (phase Succeeded or Failed). Pods with no controller are evicted too: the node is going
//!    away or being replaced, and nobody else would move them (kubectl wants `--force` for them;
//!    Karpenter and EKS Auto Mode evict them).
//! 3. Wait until every evicted pod is gone (404, or a new pod of the same name with another
//!    UID), re-listing each round so that a pod bound meanwhile is evicted too.
//!
//! When the deadline passes first, or an eviction is refused for good (403; 500 for a pod that
//! more than one budget selects, which the Eviction API refuses to arbitrate), the drain stops:
//! the node is uncordoned again if this drain cordoned it, and the error names the pods left and
//! the PodDisruptionBudget that held each (from the 429's `details.causes`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::time::Instant;

use super::{Api, KubeError};

/// A pod as the drain reads it: its `metadata` (k8s-openapi's `ObjectMeta`) and `status.phase`.
/// The drain needs nothing of the spec, and decoding whole `core/v1` Pods would link a
/// deserializer for every type under PodSpec and PodStatus (containers, volumes, probes …) into
/// the static binary (1.5 MB with Node, measured: docs/measurements.md "Static binary").
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

/// The part of a pod's status the drain reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
}

/// A Node as the drain reads it: whether it is cordoned.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<NodeSpec>,
}

/// The part of a Node's spec the drain reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    #[serde(default)]
    pub unschedulable: Option<bool>,
}

/// Annotation kubelet puts on the API object of a static pod. k8s.io/api core/v1
/// `MirrorPodAnnotationKey`.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Pods named in an error; the rest are counted.
pub const PODS_NAMED: usize = 10;

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// The whole drain (evictions and the wait for the pods to be gone).
    pub timeout: Duration,
    /// Pause after a round in which an eviction was refused (429); doubled after each such round.
    pub retry_first: Duration,
    /// Longest pause between two tries of a refused eviction.
    pub retry_max: Duration,
    /// Pause between two looks while only waiting for evicted pods to be gone.
    pub poll: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            timeout: Duration::from_secs(300),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(5),
            poll: Duration::from_secs(1),
        }
    }
}

/// What a finished drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The node was cordoned by this drain (false: it already was, or has no Node object).
    pub cordoned_now: bool,
    /// The Node object exists.
    pub registered: bool,
    /// `namespace/name` of every pod evicted, in order.
    pub evicted: Vec<String>,
    /// Pods left on the node on purpose (DaemonSet, mirror, finished).
    pub ignored: usize,
    /// Evictions refused for a while by a PodDisruptionBudget before they passed.
    pub refusals: u32,
    pub took: Duration,
}

/// A pod the drain could not evict, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `namespace/name`.
    pub pod: String,
    /// `namespace/name` of the PodDisruptionBudget that refused it, when the answer named one.
    pub budget: Option<String>,
    /// The API server's words.
    pub message: String,
}

/// Why the drain stopped. The node is uncordoned again when this drain had cordoned it
/// (`uncordon` says how that went).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "node {node} was not drained within {timeout:?}: {}{}",
        held_text(.held, .terminating), uncordon_text(.uncordon)
    )]
    Deadline {
        node: String,
        timeout: Duration,
        held: Vec<Held>,
        /// Evicted but still terminating.
        terminating: Vec<String>,
        uncordon: Uncordon,
    },
    #[error("draining node {node} stopped: the eviction of {pod} was refused: {message}{}", uncordon_text(.uncordon))]
    Refused {
        node: String,
        pod: String,
        message: String,
        uncordon: Uncordon,
    },
    #[error("draining node {node} stopped: {source}{}", uncordon_text(.uncordon))]
    Api {
        node: String,
        source: KubeError,
        uncordon: Uncordon,
    },
}

impl DrainError {
    /// The PodDisruptionBudgets named as holding pods.
    pub fn budgets(&self) -> Vec<String> {
        match self {
            DrainError::Deadline { held, .. } => held
                .iter()
                .filter_map(|h| h.budget.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// What became of the cordon when a drain stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncordon {
    /// This drain cordoned the node and uncordoned it again.
    Done,
    /// The node was cordoned before this drain (or has no Node object): left as it was.
    NotOurs,
    /// Uncordoning failed: the node is still cordoned. Why.
    Failed(String),
}

fn uncordon_text(u: &Uncordon) -> String {
    match u {
        Uncordon::Done => "; the node was uncordoned again".to_owned(),
        Uncordon::NotOurs => String::new(),
        Uncordon::Failed(why) => format!(
            "; the node is STILL CORDONED: uncordoning it failed ({why}): `kubectl uncordon <node>`"
        ),
    }
}

fn held_text(held: &[Held], terminating: &[String]) -> String {
    let mut parts = Vec::new();
    for h in held.iter().take(PODS_NAMED) {
        parts.push(match &h.budget {
            Some(b) => format!(
                "{} is held by PodDisruptionBudget {b} ({})",
                h.pod, h.message
            ),
            None => format!("{} could not be evicted ({})", h.pod, h.message),
        });
    }
    if held.len() > PODS_NAMED {
        parts.push(format!("and {} more pods", held.len() - PODS_NAMED));
    }
    if !terminating.is_empty() {
        parts.push(format!(
            "{} evicted but still terminating: {}",
            if terminating.len() == 1 {
                "1 pod".to_owned()
            } else {
                format!("{} pods", terminating.len())
            },
            terminating
                .iter()
                .take(PODS_NAMED)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    parts.join("; ")
}

/// Whether a pod bound to the node is to be evicted (what `kubectl drain --ignore-daemonsets`
/// evicts): not DaemonSet-controlled, not a mirror pod, not finished.
pub fn evictable(pod: &Pod) -> bool {
    let daemonset = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.controller == Some(true) && r.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION));
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !(daemonset || mirror || finished)
}

/// `namespace/name`.
pub fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

/// The node's Node object, `None` when it has none.
pub async fn node(api: &Api) -> Result<Option<Node>, KubeError> {
    api.get(
        &format!("read Node {}", api.node_name()),
        &["api", "v1", "nodes", api.node_name()],
    )
    .await
}

/// Whether the Node is cordoned (`spec.unschedulable`).
pub fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// Sets the node's own `spec.unschedulable` (cordon: true, uncordon: false) with a merge patch.
pub async fn set_unschedulable(api: &Api, unschedulable: bool) -> Result<(), KubeError> {
    let _: IgnoredAny = api
        .merge_patch(
            &format!(
                "{} Node {}",
                if unschedulable { "cordon" } else { "uncordon" },
                api.node_name()
            ),
            &["api", "v1", "nodes", api.node_name()],
            &serde_json::json!({"spec": {"unschedulable": unschedulable}}),
        )
        .await?;
    Ok(())
}

/// The pods bound to the node.
pub async fn pods(api: &Api) -> Result<Vec<Pod>, KubeError> {
    api.list(
        &format!("list the pods of node {}", api.node_name()),
        &["api", "v1", "pods"],
        &[(
            "fieldSelector",
            &format!("spec.nodeName={}", api.node_name()),
        )],
    )
    .await
}

/// Cordons the node and evicts its pods (see the module docs). `cordoned_before` is what an
/// interrupted earlier drain recorded (`Some(false)`: that drain cordoned the node, so this one
/// owns the cordon); `record` is called with whether the node was already cordoned before the
/// cordon is sent, so that the caller can journal it first.
pub async fn drain(
    api: &Api,
    opts: &DrainOptions,
    cordoned_before: Option<bool>,
    record: impl FnOnce(bool) -> Result<(), String>,
) -> Result<Drained, DrainError> {
    let started = Instant::now();
    let name = api.node_name().to_owned();
    let api_err = |source: KubeError, uncordon: Uncordon| DrainError::Api {
        node: name.clone(),
        source,
        uncordon,
    };
    let current = node(api).await.map_err(|e| api_err(e, Uncordon::NotOurs))?;
    let registered = current.is_some();
    let already = current.as_ref().is_some_and(is_cordoned);
    // Owned: this drain (or the interrupted one it continues) cordoned the node.
    let owned = registered && !cordoned_before.unwrap_or(already);
    if cordoned_before.is_none() {
        record(already).map_err(|why| DrainError::Api {
            node: name.clone(),
            source: KubeError::Setup {
                endpoint: api.target().endpoint.clone(),
                message: format!("cannot record the drain before cordoning: {why}"),
            },
            uncordon: Uncordon::NotOurs,
        })?;
    }
    if registered && !already {
        set_unschedulable(api, true)
            .await
            .map_err(|e| api_err(e, Uncordon::NotOurs))?;
        tracing::info!(node = %name, "cordoned node {name}");
    }
    let undo = || async {
        if !owned {
            return Uncordon::NotOurs;
        }
        match set_unschedulable(api, false).await {
            Ok(()) => Uncordon::Done,
            Err(e) => Uncordon::Failed(e.to_string()),
        }
    };
    match evict_all(api, opts, started).await {
        Ok((evicted, ignored, refusals)) => Ok(Drained {
            cordoned_now: owned,
            registered,
            evicted,
            ignored,
            refusals,
            took: started.elapsed(),
        }),
        Err(stop) => {
            let uncordon = undo().await;
            Err(match stop {
                Stop::Deadline { held, terminating } => DrainError::Deadline {
                    node: name,
                    timeout: opts.timeout,
                    held,
                    terminating,
                    uncordon,
                },
                Stop::Refused { pod, message } => DrainError::Refused {
                    node: name,
                    pod,
                    message,
                    uncordon,
                },
                Stop::Api(source) => DrainError::Api {
                    node: name,
                    source,
                    uncordon,
                },
            })
        }
    }
}

/// Why the eviction loop stopped without draining the node.
enum Stop {
    Deadline {
        held: Vec<Held>,
        terminating: Vec<String>,
    },
    Refused {
        pod: String,
        message: String,
    },
    Api(KubeError),
}

/// Evicts until no evictable pod is bound to the node; (evicted, ignored, refusals).
async fn evict_all(
    api: &Api,
    opts: &DrainOptions,
    started: Instant,
) -> Result<(Vec<String>, usize, u32), Stop> {
    let deadline = started + opts.timeout;
    // UIDs whose eviction was accepted, by pod name.
    let mut accepted: BTreeMap<String, String> = BTreeMap::new();
    let mut evicted = Vec::new();
    let mut refusals = 0u32;
    let mut pause = opts.retry_first;
    // The last transient failure, reported if the deadline passes on it.
    let mut last_failure: Option<KubeError> = None;
    loop {
        let listed = match pods(api).await {
            Ok(p) => Some(p),
            Err(e) if transient(&e) => {
                last_failure = Some(e);
                None
            }
            Err(e) => return Err(Stop::Api(e)),
        };
        let mut held = Vec::new();
        let mut terminating = Vec::new();
        let mut ignored = 0;
        if let Some(listed) = listed {
            let mut remaining = 0;
            for pod in &listed {
                if !evictable(pod) {
                    ignored += 1;
                    continue;
                }
                remaining += 1;
                let pname = pod_name(pod);
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if accepted.get(&pname) == Some(&uid) || pod.metadata.deletion_timestamp.is_some() {
                    terminating.push(pname);
                    continue;
                }
                match evict(api, pod).await {
                    Ok(()) => {
                        tracing::info!(node = %api.node_name(), "evicted pod {pname}");
                        accepted.insert(pname.clone(), uid);
                        evicted.push(pname.clone());
                        terminating.push(pname);
                    }
                    Err(KubeError::Status { code: 404, .. }) => {}
                    Err(KubeError::Status {
                        code: 429,
                        message,
                        causes,
                        ..
                    }) => {
                        refusals += 1;
                        let budget = causes
                            .iter()
                            .find(|(reason, _)| reason == "DisruptionBudget")
                            .map(|(_, m)| m.clone());
                        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                        tracing::info!(
                            node = %api.node_name(),
                            "eviction of pod {pname} refused for now (will retry): {}",
                            budget.as_deref().unwrap_or(&message)
                        );
                        held.push(Held {
                            pod: pname,
                            budget: budget
                                .as_deref()
                                .and_then(budget_name)
                                .map(|b| format!("{namespace}/{b}")),
                            message: budget.unwrap_or(message),
                        });
                    }
                    Err(e) if transient(&e) => {
                        held.push(Held {
                            pod: pname,
                            budget: None,
                            message: e.to_string(),
                        });
                        last_failure = Some(e);
                    }
                    Err(KubeError::Status { message, .. }) => {
                        return Err(Stop::Refused {
                            pod: pname,
                            message,
                        });
                    }
                    Err(e) => return Err(Stop::Api(e)),
                }
            }
            if remaining == 0 {
                return Ok((evicted, ignored, refusals));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            if held.is_empty()
                && terminating.is_empty()
                && let Some(e) = last_failure
            {
                return Err(Stop::Api(e));
            }
            return Err(Stop::Deadline { held, terminating });
        }
        let wait = if held.is_empty() {
            pause = opts.retry_first;
            opts.poll
        } else {
            let w = pause;
            pause = (pause * 2).min(opts.retry_max);
            w
        };
        tokio::time::sleep(wait.min(deadline - now)).await;
    }
}

/// Failures worth trying again before the deadline: nothing answered, 429 and 5xx from
/// anything but an eviction's budget check, an expired token.
fn transient(e: &KubeError) -> bool {
    match e {
        KubeError::Unreachable { .. } | KubeError::Unauthorized { .. } => true,
        KubeError::Status { code, message, .. } => {
            (*code == 429 || *code >= 500) && !message.contains("more than one PodDisruptionBudget")
        }
        _ => false,
    }
}

/// Asks the Eviction API to evict `pod`.
async fn evict(api: &Api, pod: &Pod) -> Result<(), KubeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        delete_options: None,
    };
    let _: IgnoredAny = api
        .post(
            &format!("evict pod {namespace}/{name}"),
            &[
                "api",
                "v1",
                "namespaces",
                namespace,
                "pods",
                name,
                "eviction",
            ],
            &eviction,
        )
        .await?;
    Ok(())
}

/// The budget's name in kube-apiserver's cause message: "The disruption budget NAME needs N
/// healthy pods and has M currently".
fn budget_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("The disruption budget ")?;
    rest.split_once(' ').map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn daemonset_mirror_and_finished_pods_stay() {
        let plain = pod(
            serde_json::json!({"metadata": {"namespace": "app", "name": "web-1"}, "status": {"phase": "Running"}}),
        );
        assert!(evictable(&plain));
        assert_eq!(pod_name(&plain), "app/web-1");
        let ds = pod(serde_json::json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy", "uid": "1", "controller": true}]}}));
        assert!(!evictable(&ds));
        let owned = pod(serde_json::json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "y", "uid": "2", "controller": true}]}}));
        assert!(evictable(&owned));
        let mirror =
            pod(serde_json::json!({"metadata": {"annotations": {MIRROR_POD_ANNOTATION: "abc"}}}));
        assert!(!evictable(&mirror));
        for phase in ["Succeeded", "Failed"] {
            assert!(!evictable(&pod(
                serde_json::json!({"status": {"phase": phase}})
            )));
        }
    }

    #[test]
    fn the_budget_is_read_from_the_cause() {
        assert_eq!(
            budget_name("The disruption budget web-pdb needs 2 healthy pods and has 2 currently"),
            Some("web-pdb")
        );
        assert_eq!(budget_name("Cannot evict pod"), None);
        let e = DrainError::Deadline {
            node: "mi-1".into(),
            timeout: Duration::from_secs(30),
            held: vec![Held {
                pod: "app/web-2".into(),
                budget: Some("app/web-pdb".into()),
                message: "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
                    .into(),
            }],
            terminating: vec![],
            uncordon: Uncordon::Done,
        };
        assert_eq!(
            e.to_string(),
            "node mi-1 was not drained within 30s: app/web-2 is held by PodDisruptionBudget app/web-pdb (The disruption budget web-pdb needs 2 healthy pods and has 2 currently); the node was uncordoned again"
        );
        assert_eq!(e.budgets(), vec!["app/web-pdb".to_owned()]);
    }
}
