//! Who may do what: the users EKS maps, the authorizer chain EKS runs (the Node authorizer, then
//! RBAC) and the access reviews that ask it.
//!
//! Admission (NodeRestriction) is not here: it runs after authorization and only for writes, in
//! the handlers of the objects it restricts; access reviews do not run it, as in Kubernetes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Who a request is from, as the API server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    /// `system:node:<name>`, the admin's IAM ARN, or the ARN a STANDARD access entry maps.
    pub name: String,
    pub groups: Vec<String>,
    /// The node name of a `system:node:<name>` user in `system:nodes`.
    pub node: Option<String>,
    /// cluster-admin (the devstack admin key).
    pub admin: bool,
    /// What EKS puts in the user's `extra` (the IAM identity behind it).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn admin(arn: &str) -> User {
        User {
            name: arn.to_owned(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            node: None,
            admin: true,
            extra: BTreeMap::from([("arn".to_owned(), vec![arn.to_owned()])]),
        }
    }

    pub fn node(name: &str, arn: &str) -> User {
        User {
            name: format!("system:node:{name}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            node: Some(name.to_owned()),
            admin: false,
            extra: BTreeMap::from([
                ("arn".to_owned(), vec![arn.to_owned()]),
                ("sessionName".to_owned(), vec![name.to_owned()]),
            ]),
        }
    }

    pub fn unprivileged(arn: &str) -> User {
        User {
            name: arn.to_owned(),
            groups: vec!["system:authenticated".into()],
            node: None,
            admin: false,
            extra: BTreeMap::from([("arn".to_owned(), vec![arn.to_owned()])]),
        }
    }

    /// How the history names the user: `admin` for the devstack admin, else the user name.
    pub fn actor(&self) -> String {
        if self.admin {
            "admin".into()
        } else {
            self.name.clone()
        }
    }
}

/// The attributes of a resource request, as the authorizers see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attrs {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    /// Empty for create and list, as in Kubernetes (the name is not known to the authorizer).
    pub name: String,
}

impl Attrs {
    #[cfg(test)]
    pub fn new(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Attrs {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attrs {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// `resource` or `resource/subresource`.
    pub fn combined(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// `resource` or `resource.group`, as Kubernetes qualifies a resource in messages.
pub(crate) fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

/// `<qualified> "<name>" is forbidden: <why>` (no name: `<qualified> is forbidden: <why>`).
pub(crate) fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> String {
    let q = qualified(group, resource);
    if name.is_empty() {
        format!("{q} is forbidden: {why}")
    } else {
        format!("{q} \"{name}\" is forbidden: {why}")
    }
}

/// The message of a 403 from the authorizers, as kube-apiserver prints it (the reasons of the
/// authorizers that had no opinion follow a colon).
pub(crate) fn forbidden_message(user: &User, a: &Attrs, reason: &str) -> String {
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut why = format!(
        "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        user.name,
        a.verb,
        a.combined(),
        a.group
    );
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    forbidden(&a.group, &a.resource, &a.name, &why)
}

/// What the authorizer chain decided, with its reason (kube joins the reasons of the authorizers
/// that had no opinion with newlines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow(String),
    NoOpinion(String),
}

/// One static rule of the Node authorizer: API group, resources, verbs.
type StaticRule = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// The Node authorizer's static rules (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go
/// `NodeRules()`), the part the stand-in serves or a node would ask about.
const NODE_RULES: &[StaticRule] = &[
    ("authentication.k8s.io", &["tokenreviews"], &["create"]),
    (
        "authorization.k8s.io",
        &["subjectaccessreviews", "localsubjectaccessreviews"],
        &["create"],
    ),
    ("", &["services", "endpoints"], &["get", "list", "watch"]),
    (
        "",
        &["nodes"],
        &[
            "create", "get", "list", "watch", "update", "patch", "delete",
        ],
    ),
    ("", &["nodes/status"], &["update", "patch"]),
    ("", &["events"], &["create", "update", "patch"]),
    ("events.k8s.io", &["events"], &["create", "update", "patch"]),
    ("", &["pods"], &["get", "list", "watch", "create", "delete"]),
    ("", &["pods/status"], &["update", "patch"]),
    ("", &["pods/eviction"], &["create"]),
    (
        "",
        &["persistentvolumeclaims/status"],
        &["get", "update", "patch"],
    ),
    (
        "certificates.k8s.io",
        &["certificatesigningrequests"],
        &["create", "get", "list", "watch"],
    ),
    ("storage.k8s.io", &["volumeattachments"], &["get"]),
    ("storage.k8s.io", &["csidrivers"], &["get", "watch", "list"]),
    (
        "storage.k8s.io",
        &["csinodes"],
        &["create", "delete", "get", "patch", "update"],
    ),
    (
        "node.k8s.io",
        &["runtimeclasses"],
        &["get", "list", "watch"],
    ),
];

/// The Node authorizer (plugin/pkg/auth/authorizer/node/node_authorizer.go) for node `node`.
/// The stand-in keeps no graph of what pods reference: a node reads no ConfigMap or Secret
/// through it (RBAC may still grant them).
fn node_authorizer(node: &str, a: &Attrs, evictions: bool) -> Decision {
    let verb = a.verb.as_str();
    if !evictions && a.resource == "pods" && a.subresource == "eviction" {
        return Decision::NoOpinion(String::new());
    }
    match (a.group.as_str(), a.resource.as_str()) {
        ("coordination.k8s.io", "leases") => {
            if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                return Decision::NoOpinion(
                    "can only get, create, update, patch, or delete a node lease".into(),
                );
            }
            if a.namespace != super::NODE_LEASE_NAMESPACE {
                return Decision::NoOpinion(format!(
                    "can only access leases in the \"{}\" system namespace",
                    super::NODE_LEASE_NAMESPACE
                ));
            }
            // The name is not known to the authorizer on create; NodeRestriction checks it.
            if verb != "create" && a.name != node {
                return Decision::NoOpinion(
                    "can only access node lease with the same name as the requesting node".into(),
                );
            }
            Decision::Allow(String::new())
        }
        ("", "configmaps" | "secrets" | "persistentvolumeclaims" | "persistentvolumes") => {
            if !matches!(verb, "get" | "list" | "watch") {
                Decision::NoOpinion("can only read resources of this type".into())
            } else if !a.subresource.is_empty() {
                Decision::NoOpinion("cannot read subresource".into())
            } else if a.name.is_empty() {
                Decision::NoOpinion("No Object name found".into())
            } else {
                Decision::NoOpinion(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        }
        _ => {
            let combined = a.combined();
            let allowed = NODE_RULES.iter().any(|(group, resources, verbs)| {
                *group == a.group && resources.contains(&combined.as_str()) && verbs.contains(&verb)
            });
            if allowed {
                Decision::Allow(String::new())
            } else {
                Decision::NoOpinion(String::new())
            }
        }
    }
}

/// The RBAC objects of a cluster (and the admission policies `kube-apply` stored, which the
/// stand-in does not evaluate).
#[derive(Debug)]
pub(crate) struct Rbac {
    pub roles: BTreeMap<(String, String), Value>,
    pub cluster_roles: BTreeMap<String, Value>,
    pub role_bindings: BTreeMap<(String, String), Value>,
    pub cluster_role_bindings: BTreeMap<String, Value>,
    /// ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding, by kind and name.
    pub admission_policies: BTreeMap<(String, String), Value>,
    /// Whether the Node authorizer grants nodes `create pods/eviction` (upstream and EKS: yes).
    /// Off models a cluster whose authorizer withholds it (an authorization webhook in front,
    /// or trimmed node rules): only RBAC can grant it then (`hybrid-agent rbac --drain`).
    pub node_evictions: bool,
}

/// Label of the bootstrap RBAC objects every cluster has (never removed by `kube-apply` DELETE).
pub(crate) const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";

impl Default for Rbac {
    /// The bootstrap roles the stand-in needs: `system:basic-user` (every authenticated user may
    /// review its own access) and `system:public-info-viewer`.
    fn default() -> Rbac {
        let labels = json!({ BOOTSTRAP_LABEL: "rbac-defaults" });
        let basic = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:basic-user", "labels": labels},
            "rules": [
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ],
        });
        let public = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:public-info-viewer", "labels": labels},
            "rules": [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}],
        });
        let binding = |name: &str| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}],
            })
        };
        Rbac {
            roles: BTreeMap::new(),
            cluster_roles: BTreeMap::from([
                ("system:basic-user".to_owned(), basic),
                ("system:public-info-viewer".to_owned(), public),
            ]),
            role_bindings: BTreeMap::new(),
            cluster_role_bindings: BTreeMap::from([
                ("system:basic-user".to_owned(), binding("system:basic-user")),
                (
                    "system:public-info-viewer".to_owned(),
                    binding("system:public-info-viewer"),
                ),
            ]),
            admission_policies: BTreeMap::new(),
            node_evictions: true,
        }
    }
}

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// Whether an RBAC rule covers a resource request (rbac/v1 helpers: `*` everywhere, and
/// `*/subresource` for a subresource).
fn rule_allows(rule: &Value, a: &Attrs) -> bool {
    let combined = a.combined();
    let verbs = strs(&rule["verbs"]).any(|v| v == "*" || v == a.verb);
    let groups = strs(&rule["apiGroups"]).any(|g| g == "*" || g == a.group);
    let resources = strs(&rule["resources"]).any(|r| {
        r == "*"
            || r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    let mut names = strs(&rule["resourceNames"]).peekable();
    let names = names.peek().is_none() || names.any(|n| n == a.name);
    verbs && groups && resources && names
}

/// Whether an RBAC rule covers a non-resource request (`GET /version`).
fn rule_allows_path(rule: &Value, verb: &str, path: &str) -> bool {
    strs(&rule["verbs"]).any(|v| v == "*" || v == verb)
        && strs(&rule["nonResourceURLs"]).any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        })
}

/// `Group "system:nodes"` / `User "system:node:x"` when a subject of `binding` is `user`.
fn subject_of(binding: &Value, user: &User) -> Option<String> {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| {
            let name = s["name"].as_str()?;
            match s["kind"].as_str()? {
                "User" if name == user.name => Some(format!("User \"{name}\"")),
                "Group" if user.groups.iter().any(|g| g == name) => {
                    Some(format!("Group \"{name}\""))
                }
                _ => None,
            }
        })
}

/// One binding that applies to a user in a namespace (empty: cluster-wide), with the rules of its
/// role and how kube describes it.
struct Grant<'a> {
    rules: Vec<&'a Value>,
    describe: String,
}

impl Rbac {
    fn role_rules(&self, role_ref: &Value, namespace: &str) -> Vec<&Value> {
        let name = role_ref["name"].as_str().unwrap_or_default();
        let role = match role_ref["kind"].as_str() {
            Some("ClusterRole") => self.cluster_roles.get(name),
            Some("Role") => self.roles.get(&(namespace.to_owned(), name.to_owned())),
            _ => None,
        };
        role.map(|r| r["rules"].as_array().into_iter().flatten().collect())
            .unwrap_or_default()
    }

    /// Every binding granting `user` something that applies in `namespace` (cluster role
    /// bindings always; role bindings of that namespace).
    fn grants(&self, user: &User, namespace: &str) -> Vec<Grant<'_>> {
        let mut out = Vec::new();
        for (name, b) in &self.cluster_role_bindings {
            if let Some(subject) = subject_of(b, user) {
                out.push(Grant {
                    rules: self.role_rules(&b["roleRef"], ""),
                    describe: format!(
                        "ClusterRoleBinding \"{name}\" of ClusterRole \"{}\" to {subject}",
                        b["roleRef"]["name"].as_str().unwrap_or_default()
                    ),
                });
            }
        }
        if !namespace.is_empty() {
            for ((ns, name), b) in &self.role_bindings {
                if ns != namespace {
                    continue;
                }
                if let Some(subject) = subject_of(b, user) {
                    out.push(Grant {
                        rules: self.role_rules(&b["roleRef"], ns),
                        describe: format!(
                            "RoleBinding \"{name}/{ns}\" of {} \"{}\" to {subject}",
                            b["roleRef"]["kind"].as_str().unwrap_or_default(),
                            b["roleRef"]["name"].as_str().unwrap_or_default()
                        ),
                    });
                }
            }
        }
        out
    }

    /// The RBAC authorizer.
    fn authorize(&self, user: &User, a: &Attrs) -> Decision {
        self.grants(user, &a.namespace)
            .into_iter()
            .find(|g| g.rules.iter().any(|r| rule_allows(r, a)))
            .map(|g| Decision::Allow(format!("RBAC: allowed by {}", g.describe)))
            .unwrap_or(Decision::NoOpinion(String::new()))
    }

    /// The rules RBAC grants `user` in `namespace`, as a SelfSubjectRulesReview lists them.
    fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Value>, Vec<Value>) {
        let mut resource_rules = Vec::new();
        let mut non_resource_rules = Vec::new();
        for g in self.grants(user, namespace) {
            for r in g.rules {
                if r["nonResourceURLs"].is_array() {
                    non_resource_rules.push(
                        json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}),
                    );
                } else {
                    let mut rule = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
                    if r["resourceNames"].is_array() {
                        rule["resourceNames"] = r["resourceNames"].clone();
                    }
                    resource_rules.push(rule);
                }
            }
        }
        (resource_rules, non_resource_rules)
    }
}

/// The authorizer chain: cluster-admin for the admin, else the Node authorizer (for node users),
/// then RBAC.
pub(crate) fn authorize(rbac: &Rbac, user: &User, a: &Attrs) -> Decision {
    if user.admin {
        return Decision::Allow(String::new());
    }
    let mut reasons = Vec::new();
    if let Some(node) = &user.node {
        match node_authorizer(node, a, rbac.node_evictions) {
            Decision::Allow(r) => return Decision::Allow(r),
            Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
            Decision::NoOpinion(_) => {}
        }
    }
    match rbac.authorize(user, a) {
        Decision::Allow(r) => Decision::Allow(r),
        Decision::NoOpinion(r) => {
            if !r.is_empty() {
                reasons.push(r);
            }
            Decision::NoOpinion(reasons.join("\n"))
        }
    }
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: the review with its status,
/// decided by the authorizers alone (admission does not run: NodeRestriction may still refuse).
pub(crate) fn access_review(rbac: &Rbac, user: &User, body: &Value) -> Result<Value, String> {
    let spec = &body["spec"];
    let decision = if spec["resourceAttributes"].is_object() {
        let r = &spec["resourceAttributes"];
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        let a = Attrs {
            verb: s("verb"),
            group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
        };
        authorize(rbac, user, &a)
    } else if spec["nonResourceAttributes"].is_object() {
        let n = &spec["nonResourceAttributes"];
        let verb = n["verb"].as_str().unwrap_or_default();
        let path = n["path"].as_str().unwrap_or_default();
        let allowed = user.admin
            || rbac
                .grants(user, "")
                .iter()
                .any(|g| g.rules.iter().any(|r| rule_allows_path(r, verb, path)));
        if allowed {
            Decision::Allow(String::new())
        } else {
            Decision::NoOpinion(String::new())
        }
    } else {
        return Err(
            "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
        );
    };
    let (allowed, reason) = match decision {
        Decision::Allow(r) => (true, r),
        Decision::NoOpinion(r) => (false, r),
    };
    let mut status = json!({ "allowed": allowed });
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews`: what RBAC grants in
/// `spec.namespace`. The Node authorizer cannot list its rules: for nodes the review is
/// `incomplete` with kube's evaluation error, as on a real cluster.
pub(crate) fn rules_review(rbac: &Rbac, user: &User, body: &Value) -> Value {
    let namespace = body["spec"]["namespace"].as_str().unwrap_or_default();
    let (mut resource_rules, mut non_resource_rules) = rbac.rules_for(user, namespace);
    let mut status = json!({});
    if user.admin {
        resource_rules.insert(
            0,
            json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
        );
        non_resource_rules.insert(0, json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    status["resourceRules"] = json!(resource_rules);
    status["nonResourceRules"] = json!(non_resource_rules);
    if user.node.is_some() {
        status["incomplete"] = json!(true);
        status["evaluationError"] = json!("node authorizer does not support user rule resolution");
    } else {
        status["incomplete"] = json!(false);
    }
    json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"namespace": namespace},
        "status": status,
    })
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: who the caller is.
pub(crate) fn self_review(user: &User) -> Value {
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user.name, "groups": user.groups, "extra": user.extra}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_rbac(rules: Value, namespace: Option<&str>) -> Rbac {
        let mut rbac = Rbac::default();
        match namespace {
            Some(ns) => {
                rbac.roles.insert(
                    (ns.into(), "r".into()),
                    json!({"metadata": {"name": "r"}, "rules": rules}),
                );
                rbac.role_bindings.insert(
                    (ns.into(), "b".into()),
                    json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "Group", "name": "system:nodes"}]}),
                );
            }
            None => {
                rbac.cluster_roles.insert(
                    "r".into(),
                    json!({"metadata": {"name": "r"}, "rules": rules}),
                );
                rbac.cluster_role_bindings.insert(
                    "b".into(),
                    json!({"roleRef": {"kind": "ClusterRole", "name": "r"}, "subjects": [{"kind": "User", "name": "system:node:mi-1"}]}),
                );
            }
        }
        rbac
    }

    #[test]
    fn the_node_authorizer_allows_its_static_rules_and_own_lease_only() {
        let rbac = Rbac::default();
        let node = User::node("mi-1", "arn");
        let allowed = |a: Attrs| matches!(authorize(&rbac, &node, &a), Decision::Allow(_));
        assert!(allowed(Attrs::new(
            "create",
            "",
            "pods/eviction",
            "ns",
            "p"
        )));
        assert!(allowed(Attrs::new("get", "", "pods", "ns", "p")));
        assert!(!allowed(Attrs::new("update", "", "pods", "ns", "p")));
        assert!(allowed(Attrs::new(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "mi-1"
        )));
        assert!(!allowed(Attrs::new(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "mi-2"
        )));
        assert!(!allowed(Attrs::new(
            "get",
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "mi-1"
        )));
        assert!(!allowed(Attrs::new("get", "", "configmaps", "ns", "c")));
        assert!(!allowed(Attrs::new(
            "get",
            "policy",
            "poddisruptionbudgets",
            "ns",
            ""
        )));
        let a = Attrs::new("update", "", "configmaps", "ns", "c");
        let Decision::NoOpinion(reason) = authorize(&rbac, &node, &a) else {
            panic!("allowed")
        };
        assert_eq!(
            forbidden_message(&node, &a, &reason),
            "configmaps \"c\" is forbidden: User \"system:node:mi-1\" cannot update resource \"configmaps\" in API group \"\" in the namespace \"ns\": can only read resources of this type"
        );
    }

    #[test]
    fn rbac_rules_match_verbs_groups_resources_and_names() {
        let rbac = node_rbac(
            json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "update"], "resourceNames": ["lock"]},
                   {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}]),
            Some("ns"),
        );
        let node = User::node("mi-1", "arn");
        let allowed = |a: Attrs| matches!(authorize(&rbac, &node, &a), Decision::Allow(_));
        assert!(allowed(Attrs::new(
            "update",
            "",
            "configmaps",
            "ns",
            "lock"
        )));
        assert!(!allowed(Attrs::new(
            "update",
            "",
            "configmaps",
            "ns",
            "other"
        )));
        assert!(!allowed(Attrs::new("create", "", "configmaps", "ns", "")));
        assert!(!allowed(Attrs::new(
            "update",
            "",
            "configmaps",
            "ns2",
            "lock"
        )));
        assert!(allowed(Attrs::new(
            "patch",
            "apps",
            "deployments/status",
            "ns",
            "d"
        )));
        assert!(!allowed(Attrs::new(
            "patch",
            "apps",
            "deployments",
            "ns",
            "d"
        )));
        let rbac = node_rbac(
            json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}]),
            None,
        );
        match authorize(
            &rbac,
            &node,
            &Attrs::new(
                "update",
                "coordination.k8s.io",
                "leases",
                "kube-system",
                "x",
            ),
        ) {
            Decision::Allow(r) => assert_eq!(
                r,
                "RBAC: allowed by ClusterRoleBinding \"b\" of ClusterRole \"r\" to User \"system:node:mi-1\""
            ),
            d => panic!("{d:?}"),
        }
        assert!(!matches!(
            authorize(
                &rbac,
                &User::node("mi-2", "arn"),
                &Attrs::new(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "kube-system",
                    "x"
                )
            ),
            Decision::Allow(_)
        ));
    }
}
