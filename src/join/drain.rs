//! Draining the node before `upgrade` and `leave`, with the node's own credentials.
//!
//! First an access review ([`crate::kube::access::drain_rights`]): may the node cordon itself,
//! list its pods and evict them? On EKS it may (the Node authorizer's rules and NodeRestriction;
//! docs/lifecycle.md), and then the node drains itself ([`crate::kube::drain`]): cordon, evict
//! through the Eviction API so PodDisruptionBudgets hold, wait for the pods to be gone. What the
//! drain did to the cordon is journaled first ([`DRAIN_RECORD`]), so that an interrupted upgrade
//! run again, or the daemon, knows whether the cordon is ours to lift.
//!
//! Where the node may not, the agent behaves as nodeadm's uninstall and upgrade do
//! (cmd/nodeadm/uninstall/uninstall.go, internal/node/pods.go, internal/node/validations.go):
//! [`check`] that the node is already drained and cordoned, refuse otherwise, and print the
//! manifest a cluster administrator applies to let nodes drain themselves
//! (packaging/rbac/hybrid-agent-node-drain.yaml).
//!
//! The check counts pods as `kubectl drain --ignore-daemonsets` does
//! ([`crate::kube::drain::evictable`]). A Node object that does not exist counts as cordoned
//! (nodeadm: `IsUnscheduled` is satisfied by NotFound). When the API server cannot be asked
//! (nothing answers, the CA does not match, the node's credentials are refused), both refuse
//! and say why; `--force` is the way to leave a cluster that is gone.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::identity::setup::IdentityEnv;
use crate::kube::drain::{self as kdrain, DrainOptions, Drained};
use crate::kube::{Api, KubeError, Target, access};
use crate::paths::HostPaths;

use super::cloud;
use super::record::NodeRecord;

/// Pods named in a refusal; the rest are counted.
pub const PODS_NAMED: usize = 10;
/// The journal of a drain in progress or of a cordon this agent placed, under the state
/// directory: removed once the node is uncordoned (or has left).
pub const DRAIN_RECORD: &str = "/var/lib/hybrid-agent/drain.json";
/// What a cluster administrator applies where nodes may not drain themselves.
pub const NODE_DRAIN_RBAC: &str = include_str!("../../packaging/rbac/hybrid-agent-node-drain.yaml");

/// What a cluster administrator applies for the automatic lifecycle's disruption lock.
pub const LIFECYCLE_RBAC: &str = include_str!("../../packaging/rbac/hybrid-agent-lifecycle.yaml");

/// What [`DRAIN_RECORD`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub node: String,
    /// The node was already cordoned when the drain began: the cordon is not ours to lift.
    pub cordoned_before: bool,
    /// What the drain was for (`upgrade to 1.32.3`, `leave`).
    pub purpose: String,
    /// Seconds since the epoch.
    pub started: u64,
}

impl DrainRecord {
    pub fn load(paths: &HostPaths) -> Option<DrainRecord> {
        let text = std::fs::read(paths.resolve(DRAIN_RECORD)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save(&self, paths: &HostPaths) -> Result<(), String> {
        let path = paths.resolve(DRAIN_RECORD);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::fsutil::replace_file(
            &path,
            &bytes,
            0o600,
            crate::fsutil::TempName::Suffix(".tmp"),
        )
        .map_err(|e| e.to_string())
    }

    pub fn remove(paths: &HostPaths) {
        let _ = std::fs::remove_file(paths.resolve(DRAIN_RECORD));
    }
}

/// The node's view of its cluster, with its current credentials read for every request.
pub fn api(agent: &AgentConfig, record: &NodeRecord) -> Result<Api, KubeError> {
    let creds_agent = agent.clone();
    Api::new(
        Target {
            endpoint: record.cluster_details.api_server_endpoint.clone(),
            ca_pem: record.cluster_details.ca_pem.clone(),
            cluster: record.cluster.clone(),
            region: record.region.clone(),
            node_name: record.node_name.clone(),
        },
        &agent.network,
        Arc::new(move || cloud::credentials(&creds_agent).map_err(|e| e.to_string())),
    )
}

/// Refreshes the node's credentials once (after a 401 or missing credentials).
async fn refresh(paths: &HostPaths, agent: &AgentConfig) -> bool {
    match IdentityEnv::new(paths, agent).rotator() {
        Ok(mut r) => r.refresh_once().await.is_ok(),
        Err(_) => false,
    }
}

/// How a drain before `upgrade`/`leave` ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainOutcome {
    /// The node drained itself.
    Drained(Drained),
    /// The node may not drain itself, but it was drained and cordoned already.
    AlreadyDrained(Checked),
}

impl DrainOutcome {
    /// One line for the command's report.
    pub fn line(&self, node: &str) -> String {
        match self {
            DrainOutcome::Drained(d) => format!(
                "drained node {node} in {:.1}s: {} evicted{}{}{}",
                d.took.as_secs_f64(),
                match d.evicted.len() {
                    0 => "no pods".to_owned(),
                    1 => format!("1 pod ({})", d.evicted[0]),
                    n => format!(
                        "{n} pods ({})",
                        d.evicted
                            .iter()
                            .take(PODS_NAMED)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                if d.refusals > 0 {
                    format!(", after {} refusals by PodDisruptionBudgets", d.refusals)
                } else {
                    String::new()
                },
                if d.ignored > 0 {
                    format!(", {} DaemonSet, mirror or finished left", d.ignored)
                } else {
                    String::new()
                },
                if !d.registered {
                    " (no Node object to cordon)"
                } else if d.cordoned_now {
                    " (cordoned by this drain)"
                } else {
                    " (it was cordoned already)"
                }
            ),
            DrainOutcome::AlreadyDrained(c) => format!(
                "node {node} is drained{} ({} DaemonSet, mirror or finished {} not counted)",
                if c.registered {
                    " and cordoned"
                } else {
                    " (no Node object in the cluster)"
                },
                c.ignored,
                if c.ignored == 1 { "pod" } else { "pods" }
            ),
        }
    }
}

/// Why the node could not be drained.
#[derive(Debug, thiserror::Error)]
pub enum DrainFailure {
    /// The node drained itself and that stopped (deadline, refused eviction, API failure).
    #[error("{0}")]
    Drain(#[from] kdrain::DrainError),
    /// The node may not drain itself, and is not drained (or that cannot be told).
    #[error(
        "{check}.\nThis node may not drain itself in cluster {cluster}: the access review denies it {denied}. A cluster administrator can allow it (read the comment on NodeRestriction first) with `hybrid-agent rbac --drain | kubectl apply -f -`, which applies:\n\n{manifest}"
    )]
    NoRights {
        check: DrainError,
        cluster: String,
        denied: String,
        manifest: &'static str,
    },
    /// The check alone (the access review could not be made either).
    #[error("{0}")]
    Check(DrainError),
}

/// Drains the node with its own rights, or where it has none, checks that it is drained (see
/// the module docs). `purpose` is journaled.
pub async fn drain(
    paths: &HostPaths,
    agent: &AgentConfig,
    record: &NodeRecord,
    opts: &DrainOptions,
    purpose: &str,
) -> Result<DrainOutcome, DrainFailure> {
    let unknown = |why: String, auth: bool| {
        DrainFailure::Check(DrainError::Unknown {
            node: record.node_name.clone(),
            why,
            auth,
        })
    };
    let api = api(agent, record).map_err(|e| unknown(e.to_string(), false))?;
    let rights = access::drain_rights(&record.node_name);
    let denied = match access::review(&api, &rights).await {
        Err(e) if e.is_auth() && refresh(paths, agent).await => access::review(&api, &rights).await,
        other => other,
    }
    .map_err(|e| unknown(e.to_string(), e.is_auth()))?;
    if !denied.is_empty() {
        let denied_text = denied
            .iter()
            .map(|d| {
                format!(
                    "`{}` (to {}){}",
                    d.right.describe(),
                    d.right.purpose,
                    if d.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", d.reason)
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return match check_with(&api, &record.node_name).await {
            Ok(c) => Ok(DrainOutcome::AlreadyDrained(c)),
            Err(check) => Err(DrainFailure::NoRights {
                check,
                cluster: record.cluster.clone(),
                denied: denied_text,
                manifest: NODE_DRAIN_RBAC,
            }),
        };
    }
    let earlier = DrainRecord::load(paths).filter(|r| r.node == record.node_name);
    let journal = |cordoned_before: bool| {
        DrainRecord {
            node: record.node_name.clone(),
            cordoned_before,
            purpose: purpose.to_owned(),
            started: crate::kube::epoch_secs(SystemTime::now()),
        }
        .save(paths)
    };
    let drained = kdrain::drain(&api, opts, earlier.map(|r| r.cordoned_before), journal).await;
    if let Err(e) = &drained {
        // Uncordoned again (or never ours): nothing of this drain to remember.
        if !matches!(
            e,
            kdrain::DrainError::Deadline {
                uncordon: kdrain::Uncordon::Failed(_),
                ..
            } | kdrain::DrainError::Refused {
                uncordon: kdrain::Uncordon::Failed(_),
                ..
            } | kdrain::DrainError::Api {
                uncordon: kdrain::Uncordon::Failed(_),
                ..
            }
        ) {
            DrainRecord::remove(paths);
        }
    }
    Ok(DrainOutcome::Drained(drained?))
}

/// Lifts the cordon a drain recorded as its own ([`DRAIN_RECORD`]) and forgets the drain. A
/// line for the report, or a warning.
pub async fn uncordon(
    paths: &HostPaths,
    agent: &AgentConfig,
    record: &NodeRecord,
) -> Result<Option<String>, String> {
    let Some(drained) = DrainRecord::load(paths).filter(|r| r.node == record.node_name) else {
        return Ok(None);
    };
    if drained.cordoned_before {
        DrainRecord::remove(paths);
        return Ok(Some(format!(
            "node {} stays cordoned: it was cordoned before the drain (`kubectl uncordon {}` when it should take pods again)",
            record.node_name, record.node_name
        )));
    }
    let api = api(agent, record).map_err(|e| e.to_string())?;
    let mut done = kdrain::set_unschedulable(&api, false).await;
    if matches!(&done, Err(e) if e.is_auth()) && refresh(paths, agent).await {
        done = kdrain::set_unschedulable(&api, false).await;
    }
    match done {
        Ok(()) | Err(KubeError::Status { code: 404, .. }) => {
            DrainRecord::remove(paths);
            Ok(Some(format!("uncordoned node {}", record.node_name)))
        }
        Err(e) => Err(format!(
            "node {node} is still cordoned: uncordoning it failed ({e}); `kubectl uncordon {node}`, or run the command again",
            node = record.node_name
        )),
    }
}

/// Whether a drain journal exists under `root` (for `status`).
pub fn pending(paths: &HostPaths) -> bool {
    Path::new(&paths.resolve(DRAIN_RECORD)).exists()
}

/// Why the node may not leave yet, or why that cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "node {node} is not drained: {} still {} on it: {}{}{}. Drain it first (`kubectl drain {node} --ignore-daemonsets`, which also cordons it), then run the command again; or add `--force` to go on anyway (the pods stop with the node)",
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
        "node {node} runs no pods that need draining but is not cordoned: the scheduler can still place pods on it. Cordon it (`kubectl cordon {node}`, or `kubectl drain {node} --ignore-daemonsets`), then run the command again; or add `--force`"
    )]
    NotCordoned { node: String },
    #[error(
        "cannot tell whether node {node} is drained: {why}. nodeadm refuses in this case too. If the cluster is gone, or you know the node is drained, add `--force`"
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

/// What a passed check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Pods bound to the node that do not block (DaemonSet, mirror, finished).
    pub ignored: usize,
    /// The Node object exists (cordoned); false when it was never registered or was deleted.
    pub registered: bool,
}

/// nodeadm's check, with fresh credentials once when those on disk are missing or refused.
pub async fn check(
    paths: &HostPaths,
    agent: &AgentConfig,
    record: &NodeRecord,
) -> Result<Checked, DrainError> {
    let api = api(agent, record).map_err(|e| DrainError::Unknown {
        node: record.node_name.clone(),
        why: e.to_string(),
        auth: false,
    })?;
    match check_with(&api, &record.node_name).await {
        Err(DrainError::Unknown { auth: true, .. }) if refresh(paths, agent).await => {
            check_with(&api, &record.node_name).await
        }
        other => other,
    }
}

async fn check_with(api: &Api, node: &str) -> Result<Checked, DrainError> {
    let unknown = |e: KubeError| DrainError::Unknown {
        node: node.to_owned(),
        auth: e.is_auth(),
        why: match e {
            KubeError::Status {
                code: 403, message, ..
            } => {
                format!("the API server forbids node {node} to list its pods (403: {message})")
            }
            KubeError::Status { code: 404, .. } => {
                "the API server has no pod list (404)".to_owned()
            }
            e => e.to_string(),
        },
    };
    let pods = kdrain::pods(api).await.map_err(unknown)?;
    let mut blocking: Vec<String> = pods
        .iter()
        .filter(|p| kdrain::evictable(p))
        .map(kdrain::pod_name)
        .collect();
    blocking.sort();
    let ignored = pods.len() - blocking.len();
    let (registered, cordoned) = match kdrain::node(api).await.map_err(unknown)? {
        Some(n) => (true, kdrain::is_cordoned(&n)),
        None => (false, true),
    };
    if !blocking.is_empty() {
        let more = blocking.len().saturating_sub(PODS_NAMED);
        blocking.truncate(PODS_NAMED);
        return Err(DrainError::NotDrained {
            node: node.to_owned(),
            pods: blocking,
            more,
            cordoned,
        });
    }
    if !cordoned {
        return Err(DrainError::NotCordoned {
            node: node.to_owned(),
        });
    }
    Ok(Checked {
        ignored,
        registered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
