//! What the node may do in its cluster, asked before acting: a `SelfSubjectAccessReview` per
//! right (every authenticated user may create one; `system:basic-user`). An access review runs
//! the authorizers only, not admission: NodeRestriction may still refuse what a review allows
//! (the drain and the lock never depend on such a case; docs/lifecycle.md).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};

use super::{Api, KubeError};

/// One right, in the terms of a `ResourceAttributes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Right {
    pub verb: &'static str,
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// `""`: every namespace (or a cluster-scoped resource).
    pub namespace: String,
    /// `""`: any object.
    pub name: String,
    /// What it is needed for, in words.
    pub purpose: &'static str,
}

impl Right {
    /// `verb resource[/subresource] [name] [in namespace NS]`, as kubectl auth can-i names it.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.verb, self.resource);
        if !self.subresource.is_empty() {
            s.push('/');
            s.push_str(self.subresource);
        }
        if !self.group.is_empty() {
            s.push('.');
            s.push_str(self.group);
        }
        if !self.name.is_empty() {
            s.push(' ');
            s.push_str(&self.name);
        }
        if !self.namespace.is_empty() {
            s.push_str(" in namespace ");
            s.push_str(&self.namespace);
        }
        s
    }
}

/// The rights the drain uses: cordon (patch the node's own Node), list the pods bound to it,
/// evict them, read each one until it is gone.
pub fn drain_rights(node: &str) -> Vec<Right> {
    vec![
        Right {
            verb: "patch",
            group: "",
            resource: "nodes",
            subresource: "",
            namespace: String::new(),
            name: node.to_owned(),
            purpose: "cordon and uncordon the node",
        },
        Right {
            verb: "list",
            group: "",
            resource: "pods",
            subresource: "",
            namespace: String::new(),
            name: String::new(),
            purpose: "find the pods bound to the node",
        },
        Right {
            verb: "create",
            group: "",
            resource: "pods",
            subresource: "eviction",
            namespace: String::new(),
            name: String::new(),
            purpose: "evict the node's pods through the Eviction API (PodDisruptionBudgets)",
        },
    ]
}

/// Rights the review denied, each with the authorizer's reason when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub right: Right,
    pub reason: String,
}

/// Asks one review per right; the denied ones.
pub async fn review(api: &Api, rights: &[Right]) -> Result<Vec<Denied>, KubeError> {
    let mut denied = Vec::new();
    for right in rights {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let ask = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(right.verb.to_owned()),
                    group: Some(right.group.to_owned()),
                    resource: Some(right.resource.to_owned()),
                    subresource: nonempty(right.subresource),
                    namespace: nonempty(&right.namespace),
                    name: nonempty(&right.name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer: SelfSubjectAccessReview = api
            .post_query(
                &format!("access review: may the node {}", right.describe()),
                &[
                    "apis",
                    "authorization.k8s.io",
                    "v1",
                    "selfsubjectaccessreviews",
                ],
                &ask,
            )
            .await?;
        let status = answer.status.unwrap_or_default();
        if !status.allowed {
            denied.push(Denied {
                right: right.clone(),
                reason: status.reason.unwrap_or_default(),
            });
        }
    }
    Ok(denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_read_like_kubectl_auth_can_i() {
        let r = drain_rights("mi-1");
        assert_eq!(r[0].describe(), "patch nodes mi-1");
        assert_eq!(r[2].describe(), "create pods/eviction");
        let lock = Right {
            verb: "update",
            group: "",
            resource: "configmaps",
            subresource: "",
            namespace: "hybrid-agent".into(),
            name: "lock".into(),
            purpose: "",
        };
        assert_eq!(
            lock.describe(),
            "update configmaps lock in namespace hybrid-agent"
        );
    }
}
