//! The cluster-wide disruption lock of the automatic lifecycle: at most `max_unavailable` nodes
//! drained, upgraded, rebooted or refreshed at once.
//!
//! A Lease would be the usual lock, but NodeRestriction refuses a node every Lease write outside
//! `kube-node-lease` whatever RBAC grants (docs/lifecycle.md "What the node identity may do").
//! So the lock is one ConfigMap, [`LOCK_NAMESPACE`]/[`LOCK_NAME`], created by the administrator
//! with the manifest of `hybrid-agent rbac`: one data entry per node holding a slot, keyed by the
//! node name, valued with a small JSON record ([`Entry`]) whose `expires` the holder renews. Every
//! change is a PUT carrying the `resourceVersion` that was read, so two nodes racing for the
//! last slot cannot both win: the loser gets 409 Conflict, reads again and finds no slot. An
//! entry whose holder died is ignored once expired and removed by the next node that writes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use super::{Api, KubeError};

/// Namespace of the lock ConfigMap (packaging/rbac/hybrid-agent-lifecycle.yaml).
pub const LOCK_NAMESPACE: &str = "hybrid-agent";
/// Name of the lock ConfigMap.
pub const LOCK_NAME: &str = "hybrid-agent-disruption-lock";
/// Reads and writes of one acquire or release before giving up on conflicts.
const CONFLICT_TRIES: u32 = 8;

/// One holder's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What the holder is doing (`upgrade to 1.32.3`, `reboot`, `refresh`).
    pub action: String,
    /// Seconds since the epoch.
    pub acquired: u64,
    /// Seconds since the epoch; the holder renews it while it works.
    pub expires: u64,
}

/// How an attempt to take a slot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This node holds a slot (newly, or still).
    Held,
    /// Every slot is taken by live holders: (node, entry).
    Busy(Vec<(String, Entry)>),
}

/// Why the lock could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the disruption lock ConfigMap {LOCK_NAMESPACE}/{LOCK_NAME} does not exist in the cluster: a cluster administrator applies it with `hybrid-agent rbac | kubectl apply -f -`"
    )]
    Missing,
    #[error(
        "node {node} may not use the disruption lock {LOCK_NAMESPACE}/{LOCK_NAME} (403: {message}): a cluster administrator applies the lifecycle RBAC with `hybrid-agent rbac | kubectl apply -f -`"
    )]
    Forbidden { node: String, message: String },
    #[error("the disruption lock {LOCK_NAMESPACE}/{LOCK_NAME}: {0}")]
    Api(KubeError),
    #[error(
        "the disruption lock {LOCK_NAMESPACE}/{LOCK_NAME} changed under every one of {CONFLICT_TRIES} tries (409 Conflict): too many nodes at once; tried again later"
    )]
    Contended,
}

/// The entries of a lock's data, unreadable ones counted as live until they are replaced (a
/// newer agent's format must not free its slot).
fn entries(cm: &ConfigMap, now: u64) -> BTreeMap<String, Entry> {
    cm.data
        .as_ref()
        .map(|d| {
            d.iter()
                .map(|(k, v)| {
                    let e = serde_json::from_str(v).unwrap_or(Entry {
                        action: format!("unreadable entry: {v}"),
                        acquired: now,
                        expires: u64::MAX,
                    });
                    (k.clone(), e)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The lock's data for a PUT: live entries of others kept as they were, expired ones dropped,
/// this node's set or removed.
fn rewrite(cm: &ConfigMap, me: &str, mine: Option<&Entry>, now: u64) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    let raw = cm.data.clone().unwrap_or_default();
    for (k, e) in entries(cm, now) {
        if k != me && e.expires > now {
            data.insert(k.clone(), raw.get(&k).cloned().unwrap_or_default());
        }
    }
    if let Some(m) = mine {
        data.insert(me.to_owned(), serde_json::to_string(m).unwrap_or_default());
    }
    data
}

async fn read(api: &Api) -> Result<ConfigMap, LockError> {
    let cm: Option<ConfigMap> = api
        .get(
            "read the disruption lock",
            &[
                "api",
                "v1",
                "namespaces",
                LOCK_NAMESPACE,
                "configmaps",
                LOCK_NAME,
            ],
        )
        .await
        .map_err(|e| classify(api, e))?;
    cm.ok_or(LockError::Missing)
}

fn classify(api: &Api, e: KubeError) -> LockError {
    match e {
        KubeError::Status {
            code: 403, message, ..
        } => LockError::Forbidden {
            node: api.node_name().to_owned(),
            message,
        },
        KubeError::Status { code: 404, .. } => LockError::Missing,
        e => LockError::Api(e),
    }
}

/// Writes `data` over the lock read as `cm`; `Ok(false)` on a conflict (read again).
async fn write(
    api: &Api,
    cm: &ConfigMap,
    data: BTreeMap<String, String>,
) -> Result<bool, LockError> {
    let mut next = cm.clone();
    next.data = Some(data);
    match api
        .put::<_, ConfigMap>(
            "update the disruption lock",
            &[
                "api",
                "v1",
                "namespaces",
                LOCK_NAMESPACE,
                "configmaps",
                LOCK_NAME,
            ],
            &next,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(KubeError::Status { code: 409, .. }) => Ok(false),
        Err(e) => Err(classify(api, e)),
    }
}

/// Takes (or renews) a slot for `action` valid for `ttl`, if fewer than `max_unavailable` other
/// nodes hold live ones.
pub async fn acquire(
    api: &Api,
    max_unavailable: u32,
    action: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<Acquired, LockError> {
    let me = api.node_name().to_owned();
    let at = super::epoch_secs(now);
    for _ in 0..CONFLICT_TRIES {
        let cm = read(api).await?;
        let current = entries(&cm, at);
        let mine = current.get(&me).cloned();
        let others: Vec<(String, Entry)> = current
            .into_iter()
            .filter(|(k, e)| *k != me && e.expires > at)
            .collect();
        if mine.is_none() && others.len() >= max_unavailable as usize {
            return Ok(Acquired::Busy(others));
        }
        let entry = Entry {
            action: action.to_owned(),
            acquired: mine.map(|m| m.acquired).unwrap_or(at),
            expires: at + ttl.as_secs(),
        };
        if write(api, &cm, rewrite(&cm, &me, Some(&entry), at)).await? {
            return Ok(Acquired::Held);
        }
    }
    Err(LockError::Contended)
}

/// Gives the slot back (nothing to do when this node holds none).
pub async fn release(api: &Api, now: SystemTime) -> Result<(), LockError> {
    let me = api.node_name().to_owned();
    let at = super::epoch_secs(now);
    for _ in 0..CONFLICT_TRIES {
        let cm = read(api).await?;
        if !cm.data.as_ref().is_some_and(|d| d.contains_key(&me)) {
            return Ok(());
        }
        if write(api, &cm, rewrite(&cm, &me, None, at)).await? {
            return Ok(());
        }
    }
    Err(LockError::Contended)
}

/// Whether this node holds a live slot.
pub async fn holds(api: &Api, now: SystemTime) -> Result<bool, LockError> {
    let cm = read(api).await?;
    let at = super::epoch_secs(now);
    Ok(entries(&cm, at)
        .get(api.node_name())
        .is_some_and(|e| e.expires > at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn expired_entries_are_dropped_and_unreadable_ones_kept() {
        let live = r#"{"action":"upgrade","acquired":100,"expires":500}"#;
        let dead = r#"{"action":"reboot","acquired":10,"expires":50}"#;
        let lock = cm(&[("mi-a", live), ("mi-b", dead), ("mi-c", "v2:something")]);
        let e = entries(&lock, 200);
        assert_eq!(e["mi-a"].expires, 500);
        assert_eq!(e["mi-c"].expires, u64::MAX, "a format we cannot read holds");
        let mine = Entry {
            action: "refresh".into(),
            acquired: 200,
            expires: 800,
        };
        let data = rewrite(&lock, "mi-d", Some(&mine), 200);
        assert_eq!(
            data.keys().cloned().collect::<Vec<_>>(),
            ["mi-a", "mi-c", "mi-d"]
        );
        assert_eq!(data["mi-a"], live, "others' entries kept byte for byte");
        assert!(!rewrite(&lock, "mi-a", None, 200).contains_key("mi-a"));
    }
}
