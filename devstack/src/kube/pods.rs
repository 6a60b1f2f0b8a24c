//! Pods, the Eviction API, PodDisruptionBudgets, and the stand-in controllers that finish a
//! pod's termination and replace it.
//!
//! Time is evaluated lazily: every request to the API server or its control endpoint first
//! applies, in time order, what became due since ([`tick`]) — a terminating pod disappears once
//! its grace time passed, a pod owned by a controller (not a DaemonSet) is replaced at that
//! moment by a Pending pod on another node, which becomes Running and Ready after the replace
//! delay. History records each of these at the time it was due.

use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, Key, KubeCluster, not_found, ok_json, status};
use crate::state::Shared;

/// Label of the node pods are replaced on unless set otherwise.
pub(crate) const DEFAULT_REPLACE_NODE: &str = "devstack-elsewhere";
/// Alphabet of the random suffix Kubernetes gives generated names.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// How fast the stand-in controllers act (per cluster; `kube-timing` sets it).
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// Grace time of a deleted or evicted pod before it is gone (deleteOptions.gracePeriodSeconds
    /// overrides it per request).
    pub grace: Duration,
    /// Time from a replacement's creation (Pending) to Running and Ready.
    pub replace: Duration,
    /// Node the replacements are bound to.
    pub replace_node: String,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            grace: Duration::from_secs(1),
            replace: Duration::from_secs(2),
            replace_node: DEFAULT_REPLACE_NODE.into(),
        }
    }
}

/// Pod fields a field selector may name (Kubernetes pkg/registry/core/pod/strategy.go
/// `PodToSelectableFields`).
const POD_FIELDS: [&str; 10] = [
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// One requirement of a field selector: `field=value`, `field==value` or `field!=value`.
#[derive(Debug, PartialEq)]
pub(crate) struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// Parses a field selector as the API server does (comma-separated requirements); an unknown
/// field is an error, as it is for Kubernetes.
pub(crate) fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut out = Vec::new();
    for part in selector.split(',').filter(|p| !p.trim().is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            ));
        };
        let field = field.trim();
        if !POD_FIELDS.contains(&field) {
            return Err(format!(
                "Unable to find \"/v1, Resource=pods\" that match label selector \"\", field selector \"{selector}\": field label not supported: {field}"
            ));
        }
        out.push(FieldRequirement {
            field: field.to_owned(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(out)
}

/// The value of a selectable field of a pod (absent fields are the empty string, as in
/// Kubernetes; `spec.hostNetwork` is "true"/"false").
pub(crate) fn pod_field(pod: &Value, field: &str) -> String {
    let mut v = pod;
    for k in field.split('.') {
        v = &v[k];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null if field == "spec.hostNetwork" => "false".to_owned(),
        _ => String::new(),
    }
}

/// A `PodList` of the pods in `namespace` (every namespace when `None`) matching `selector`.
pub(crate) fn list(
    state: &Shared,
    c: &KubeCluster,
    namespace: Option<&str>,
    selector: &str,
) -> Response {
    let requirements = match parse_field_selector(selector) {
        Ok(r) => r,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let items: Vec<&Value> = c
        .pods
        .iter()
        .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
        .filter(|(_, pod)| {
            requirements
                .iter()
                .all(|r| (pod_field(pod, &r.field) == r.value) == r.equal)
        })
        .map(|(_, pod)| pod)
        .collect();
    ok_json(
        StatusCode::OK,
        &json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": state.kube.next_version()},
            "items": items,
        }),
    )
}

/// A pod as the API server stores it: namespace defaulted, server-owned metadata set, phase
/// Pending until a kubelet says otherwise.
pub(crate) fn new_pod(state: &Shared, body: &[u8]) -> Result<(Key, Value), String> {
    let mut pod: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON Pod: {e}"))?;
    let name = pod["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or(
            "Pod \"\" is invalid: metadata.name: Required value: name or generateName is required",
        )?
        .to_owned();
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    pod["kind"] = json!("Pod");
    pod["apiVersion"] = json!("v1");
    pod["metadata"]["namespace"] = json!(namespace);
    pod["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    pod["metadata"]["resourceVersion"] = json!(state.kube.next_version());
    pod["metadata"]["creationTimestamp"] = json!(crate::wire::rfc3339(state.now()));
    if pod["status"]["phase"].is_null() {
        pod["status"]["phase"] = json!("Pending");
    }
    Ok(((namespace, name), pod))
}

fn object_name(key: &Key) -> String {
    format!("pods/{}/{}", key.0, key.1)
}

fn is_terminating(c: &KubeCluster, key: &Key, pod: &Value) -> bool {
    c.terminating.contains_key(key) || !pod["metadata"]["deletionTimestamp"].is_null()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The controller owner reference of a pod whose controller recreates it (not a DaemonSet: its
/// pods belong to their node).
fn replacing_owner(pod: &Value) -> Option<&Value> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true && o["kind"] != "DaemonSet")
}

/// Applies, oldest first, every termination and readiness that became due by `now`.
pub(crate) fn tick(state: &Shared, c: &mut KubeCluster, now: SystemTime) {
    loop {
        let gone = c
            .terminating
            .iter()
            .map(|(k, t)| (*t, k.clone()))
            .min_by_key(|(t, _)| *t);
        let ready = c
            .unready
            .iter()
            .map(|(k, t)| (*t, k.clone()))
            .min_by_key(|(t, _)| *t);
        match (gone, ready) {
            (Some((t, key)), r) if t <= now && r.as_ref().is_none_or(|(rt, _)| t <= *rt) => {
                finish_termination(state, c, &key, t);
            }
            (_, Some((t, key))) if t <= now => become_ready(state, c, &key, t),
            _ => break,
        }
    }
}

/// Removes a pod for good; its controller (if it has one that replaces pods) creates a
/// replacement at once.
fn finish_termination(state: &Shared, c: &mut KubeCluster, key: &Key, at: SystemTime) {
    c.terminating.remove(key);
    c.unready.remove(key);
    let Some(pod) = c.pods.remove(key) else {
        return;
    };
    c.record(at, "controller", "terminated", &object_name(key), "");
    let Some(owner) = replacing_owner(&pod) else {
        return;
    };
    let name = if owner["kind"] == "StatefulSet" {
        key.1.clone()
    } else {
        let prefix = match pod["metadata"]["generateName"].as_str() {
            Some(g) if !g.is_empty() => g.to_owned(),
            _ => match key.1.rsplit_once('-') {
                Some((p, _)) => format!("{p}-"),
                None => format!("{}-", key.1),
            },
        };
        loop {
            let suffix = crate::auth::random_string(SUFFIX_ALPHABET, 5)
                .unwrap_or_else(|_| uuid::Uuid::new_v4().simple().to_string()[..5].to_owned());
            let name = format!("{prefix}{suffix}");
            if !c.pods.contains_key(&(key.0.clone(), name.clone())) {
                break name;
            }
        }
    };
    let mut metadata = json!({
        "name": name,
        "namespace": key.0,
        "uid": uuid::Uuid::new_v4().to_string(),
        "resourceVersion": state.kube.next_version(),
        "creationTimestamp": crate::wire::rfc3339(at),
        "ownerReferences": pod["metadata"]["ownerReferences"],
    });
    for k in ["labels", "annotations", "generateName"] {
        if !pod["metadata"][k].is_null() {
            metadata[k] = pod["metadata"][k].clone();
        }
    }
    let mut spec = pod["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["nodeName"] = json!(c.timing.replace_node);
    let replacement = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": crate::wire::rfc3339(at)}],
        },
    });
    let new_key = (key.0.clone(), name);
    c.pods.insert(new_key.clone(), replacement);
    c.unready.insert(new_key.clone(), at + c.timing.replace);
    c.record(
        at,
        "controller",
        "replace",
        &object_name(key),
        &object_name(&new_key),
    );
}

fn become_ready(state: &Shared, c: &mut KubeCluster, key: &Key, at: SystemTime) {
    c.unready.remove(key);
    let Some(pod) = c.pods.get_mut(key) else {
        return;
    };
    let when = crate::wire::rfc3339(at);
    pod["status"] = json!({
        "phase": "Running",
        "startTime": when,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": when},
            {"type": "Initialized", "status": "True", "lastTransitionTime": when},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": when},
            {"type": "Ready", "status": "True", "lastTransitionTime": when},
        ],
    });
    pod["metadata"]["resourceVersion"] = json!(state.kube.next_version());
    c.record(at, "controller", "ready", &object_name(key), "");
}

/// Starts a pod's graceful deletion (what DELETE and a granted eviction do): it gets
/// `deletionTimestamp` (when it will be gone) and `deletionGracePeriodSeconds`. A pod that is not
/// bound to a node or has finished goes at once, as in Kubernetes. Returns the pod as it is now.
fn begin_delete(
    state: &Shared,
    c: &mut KubeCluster,
    key: &Key,
    grace: Option<Duration>,
    now: SystemTime,
) -> Option<Value> {
    let default_grace = c.timing.grace;
    let pod = c.pods.get_mut(key)?;
    let unbound = pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    let grace = if unbound || finished {
        Duration::ZERO
    } else {
        grace.unwrap_or(default_grace)
    };
    let mut deadline = now + grace;
    if let Some(earlier) = c.terminating.get(key) {
        deadline = deadline.min(*earlier);
    }
    pod["metadata"]["deletionTimestamp"] = json!(crate::wire::rfc3339(deadline));
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace.as_secs_f64().ceil() as u64);
    pod["metadata"]["resourceVersion"] = json!(state.kube.next_version());
    let snapshot = pod.clone();
    c.terminating.insert(key.clone(), deadline);
    if deadline <= now {
        finish_termination(state, c, key, now);
    }
    Some(snapshot)
}

/// Removes a pod at once (the control endpoint's DELETE), as if its grace time were over; its
/// controller, if it has one that replaces pods, replaces it.
pub(crate) fn remove_now(
    state: &Shared,
    c: &mut KubeCluster,
    key: &Key,
    now: SystemTime,
) -> Option<Value> {
    let pod = c.pods.get(key)?.clone();
    c.record(now, "admin", "delete", &object_name(key), "");
    finish_termination(state, c, key, now);
    Some(pod)
}

/// `deleteOptions.gracePeriodSeconds` (or the `gracePeriodSeconds` query parameter).
fn grace_override(options: &Value, query: &str) -> Option<Duration> {
    options["gracePeriodSeconds"]
        .as_u64()
        .or_else(|| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "gracePeriodSeconds")
                .and_then(|(_, v)| v.parse().ok())
        })
        .map(Duration::from_secs)
}

/// `GET /api/v1/namespaces/NS/pods/NAME`.
pub(crate) fn get(c: &KubeCluster, ns: &str, name: &str) -> Response {
    match c.pods.get(&(ns.to_owned(), name.to_owned())) {
        Some(p) => ok_json(StatusCode::OK, p),
        None => not_found("pods", name),
    }
}

/// `DELETE /api/v1/namespaces/NS/pods/NAME`, after authorization; NodeRestriction lets a node
/// delete only the pods bound to it.
pub(crate) fn delete(c: &mut KubeCluster, ctx: &Ctx, ns: &str, name: &str) -> Response {
    let key = (ns.to_owned(), name.to_owned());
    let Some(pod) = c.pods.get(&key) else {
        return not_found("pods", name);
    };
    if let Some(node) = &ctx.user.node
        && pod["spec"]["nodeName"].as_str() != Some(node.as_str())
    {
        let m = super::authz::forbidden(
            "",
            "pods",
            name,
            &format!("node \"{node}\" can only delete pods with spec.nodeName set to itself"),
        );
        return c.refuse(ctx, &object_name(&key), m);
    }
    let options: Value = serde_json::from_slice(ctx.body).unwrap_or(Value::Null);
    let grace = grace_override(&options, ctx.query);
    c.record(ctx.now, &ctx.user.actor(), "delete", &object_name(&key), "");
    match begin_delete(ctx.state, c, &key, grace, ctx.now) {
        Some(p) => ok_json(StatusCode::OK, &p),
        None => not_found("pods", name),
    }
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects `labels`. A null
/// selector selects nothing, an empty one everything (policy/v1).
pub(crate) fn selector_matches(selector: &Value, labels: &Value) -> bool {
    if !selector.is_object() {
        return false;
    }
    let label = |k: &str| labels[k].as_str();
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k).is_some() && label(k) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let mut values = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|l| values.any(|v| v == l)),
                Some("NotIn") => label(key).is_none_or(|l| !values.any(|v| v == l)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// An `intstr` of a PodDisruptionBudget: a count, or "N%" of `expected` rounded up.
fn scaled(v: &Value, expected: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("invalid value {n}")),
        Value::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            Ok((p * expected + 99) / 100)
        }
        other => Err(format!("invalid value {other}")),
    }
}

/// The numbers of a PodDisruptionBudget's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub expected: i64,
    pub current_healthy: i64,
    pub desired_healthy: i64,
    pub disruptions_allowed: i64,
}

/// Validates a PodDisruptionBudget's spec as policy/v1 does (the parts the stand-in uses).
fn validate_pdb(pdb: &Value) -> Result<(), String> {
    let name = pdb["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &pdb["spec"];
    let invalid = |m: &str| format!("PodDisruptionBudget.policy \"{name}\" is invalid: {m}");
    if name.is_empty() {
        return Err(invalid(
            "metadata.name: Required value: name or generateName is required",
        ));
    }
    match (
        spec["minAvailable"].is_null(),
        spec["maxUnavailable"].is_null(),
    ) {
        (false, false) => {
            return Err(invalid(
                "spec: Invalid value: minAvailable and maxUnavailable cannot be both set",
            ));
        }
        (true, true) => {}
        _ => {
            for k in ["minAvailable", "maxUnavailable"] {
                if !spec[k].is_null() {
                    scaled(&spec[k], 100).map_err(|e| invalid(&format!("spec.{k}: {e}")))?;
                }
            }
        }
    }
    if !spec["selector"].is_null() && !spec["selector"].is_object() {
        return Err(invalid(
            "spec.selector: Invalid value: not a label selector",
        ));
    }
    Ok(())
}

/// The pods a PodDisruptionBudget selects.
fn selected<'a>(c: &'a KubeCluster, pdb: &'a Value) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    let ns = pdb["metadata"]["namespace"].as_str().unwrap_or_default();
    c.pods
        .iter()
        .filter(move |((pns, _), _)| pns == ns)
        .filter(|(_, p)| selector_matches(&pdb["spec"]["selector"], &p["metadata"]["labels"]))
}

/// A PodDisruptionBudget's status as the disruption controller computes it. Expected pods are
/// the selected pods that are not terminating, plus terminating ones whose controller will
/// replace them (Kubernetes asks the controller for its scale). Healthy pods are Running, Ready
/// and not terminating; an eviction makes its pod terminating at once, so the disruption it used
/// is not available again until the replacement is Ready.
pub(crate) fn budget(c: &KubeCluster, pdb: &Value) -> Budget {
    let mut expected = 0;
    let mut healthy = 0;
    for (key, pod) in selected(c, pdb) {
        let terminating = is_terminating(c, key, pod);
        if !terminating || replacing_owner(pod).is_some() {
            expected += 1;
        }
        if !terminating && is_ready(pod) {
            healthy += 1;
        }
    }
    let spec = &pdb["spec"];
    let desired = if !spec["minAvailable"].is_null() {
        scaled(&spec["minAvailable"], expected).unwrap_or(0)
    } else if !spec["maxUnavailable"].is_null() {
        expected - scaled(&spec["maxUnavailable"], expected).unwrap_or(0)
    } else {
        // Neither set: policy/v1 defaults minAvailable to 1.
        1
    }
    .max(0);
    Budget {
        expected,
        current_healthy: healthy,
        desired_healthy: desired,
        disruptions_allowed: (healthy - desired).max(0),
    }
}

/// The PodDisruptionBudget with its computed status.
fn with_status(c: &KubeCluster, pdb: &Value) -> Value {
    let b = budget(c, pdb);
    let mut out = pdb.clone();
    let allowed = b.disruptions_allowed > 0;
    out["status"] = json!({
        "observedGeneration": pdb["metadata"]["generation"],
        "disruptionsAllowed": b.disruptions_allowed,
        "currentHealthy": b.current_healthy,
        "desiredHealthy": b.desired_healthy,
        "expectedPods": b.expected,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if allowed { "True" } else { "False" },
            "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
            "message": "",
            "observedGeneration": pdb["metadata"]["generation"],
        }],
    });
    out
}

/// `GET /apis/policy/v1/namespaces/NS/poddisruptionbudgets/NAME`.
pub(crate) fn get_pdb(c: &KubeCluster, ns: &str, name: &str) -> Response {
    match c.pdbs.get(&(ns.to_owned(), name.to_owned())) {
        Some(p) => ok_json(StatusCode::OK, &with_status(c, p)),
        None => super::not_found_in("policy", "poddisruptionbudgets", name),
    }
}

/// The PodDisruptionBudgetList of `namespace` (every namespace when `None`).
pub(crate) fn list_pdbs(state: &Shared, c: &KubeCluster, namespace: Option<&str>) -> Value {
    let items: Vec<Value> = c
        .pdbs
        .iter()
        .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
        .map(|(_, p)| with_status(c, p))
        .collect();
    json!({
        "kind": "PodDisruptionBudgetList",
        "apiVersion": "policy/v1",
        "metadata": {"resourceVersion": state.kube.next_version()},
        "items": items,
    })
}

/// Stores a PodDisruptionBudget (admin: the control endpoint or `kube-apply`); `replace` allows
/// overwriting one of the same name. Returns it with its status.
pub(crate) fn put_pdb(
    state: &Shared,
    c: &mut KubeCluster,
    mut pdb: Value,
    replace: bool,
) -> Result<Value, Box<Response>> {
    if pdb["metadata"]["namespace"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        pdb["metadata"]["namespace"] = json!("default");
    }
    validate_pdb(&pdb)
        .map_err(|m| Box::new(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m)))?;
    let key = (
        pdb["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        pdb["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let generation = match c.pdbs.get(&key) {
        Some(_) if !replace => {
            return Err(Box::new(status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("poddisruptionbudgets.policy \"{}\" already exists", key.1),
            )));
        }
        Some(old) => {
            pdb["metadata"]["uid"] = old["metadata"]["uid"].clone();
            pdb["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            old["metadata"]["generation"].as_i64().unwrap_or(1) + 1
        }
        None => {
            pdb["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            pdb["metadata"]["creationTimestamp"] = json!(crate::wire::rfc3339(state.now()));
            1
        }
    };
    pdb["kind"] = json!("PodDisruptionBudget");
    pdb["apiVersion"] = json!("policy/v1");
    pdb["metadata"]["generation"] = json!(generation);
    pdb["metadata"]["resourceVersion"] = json!(state.kube.next_version());
    if let Some(o) = pdb.as_object_mut() {
        o.remove("status");
    }
    c.pdbs.insert(key, pdb.clone());
    Ok(with_status(c, &pdb))
}

fn success(code: StatusCode) -> Response {
    ok_json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code.as_u16()}),
    )
}

/// `POST /api/v1/namespaces/NS/pods/NAME/eviction`, after authorization: NodeRestriction (a
/// node evicts only pods bound to itself), then the eviction REST logic.
pub(crate) fn evict(c: &mut KubeCluster, ctx: &Ctx, ns: &str, name: &str) -> Response {
    let key = (ns.to_owned(), name.to_owned());
    let object = object_name(&key);
    let Ok(eviction) = serde_json::from_slice::<Value>(ctx.body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a JSON Eviction",
        );
    };
    if let Some(n) = eviction["metadata"]["name"].as_str()
        && n != name
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "name in URL does not match name in Eviction object",
        );
    }
    let Some(pod) = c.pods.get(&key) else {
        return not_found("pods", name);
    };
    if let Some(node) = &ctx.user.node
        && pod["spec"]["nodeName"].as_str() != Some(node.as_str())
    {
        let m = super::authz::forbidden(
            "",
            "pods",
            name,
            &format!("node \"{node}\" can only evict pods with spec.nodeName set to itself"),
        );
        return c.refuse(ctx, &object, m);
    }
    let grace = grace_override(&eviction["deleteOptions"], "");
    let actor = ctx.user.actor();
    let phase = pod["status"]["phase"].as_str().unwrap_or("").to_owned();
    if matches!(phase.as_str(), "Succeeded" | "Failed" | "Pending") || is_terminating(c, &key, pod)
    {
        let why = if is_terminating(c, &key, pod) {
            "already terminating: no disruption budget checked".to_owned()
        } else {
            format!("phase {phase}: no disruption budget checked")
        };
        c.record(ctx.now, &actor, "evict", &object, &why);
        begin_delete(ctx.state, c, &key, grace, ctx.now);
        return success(StatusCode::CREATED);
    }
    let budgets: Vec<(Key, Value)> = c
        .pdbs
        .iter()
        .filter(|((pns, _), pdb)| {
            pns == ns && selector_matches(&pdb["spec"]["selector"], &pod["metadata"]["labels"])
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let detail = match budgets.as_slice() {
        [] => "no PodDisruptionBudget".to_owned(),
        [(pdb_key, pdb)] => {
            let b = budget(c, pdb);
            let pdb_object = format!("poddisruptionbudgets/{}/{}", pdb_key.0, pdb_key.1);
            if b.disruptions_allowed <= 0 {
                let cause = format!(
                    "The disruption budget {} needs {} healthy pods and has {} currently",
                    pdb_key.1, b.desired_healthy, b.current_healthy
                );
                c.record(
                    ctx.now,
                    &actor,
                    "evict-refused",
                    &object,
                    &format!("{pdb_object}: {cause}"),
                );
                let body = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                    "reason": "TooManyRequests",
                    "details": {"causes": [{"reason": "DisruptionBudget", "message": cause}]},
                    "code": 429,
                });
                return ok_json(StatusCode::TOO_MANY_REQUESTS, &body);
            }
            format!(
                "{pdb_object}: disruptionsAllowed was {}",
                b.disruptions_allowed
            )
        }
        _ => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            );
        }
    };
    c.record(ctx.now, &actor, "evict", &object, &detail);
    begin_delete(ctx.state, c, &key, grace, ctx.now);
    success(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_match_as_kubernetes_does() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "mi-1"}, "status": {"phase": "Running"}});
        let sel = parse_field_selector("spec.nodeName=mi-1,status.phase!=Failed").expect("parses");
        assert!(
            sel.iter()
                .all(|r| (pod_field(&pod, &r.field) == r.value) == r.equal)
        );
        let sel = parse_field_selector("spec.nodeName==mi-2").expect("parses");
        assert_ne!(pod_field(&pod, &sel[0].field), sel[0].value);
        assert_eq!(pod_field(&pod, "spec.hostNetwork"), "false");
        assert!(parse_field_selector("").expect("parses").is_empty());
        let e = parse_field_selector("spec.nodename=x").expect_err("unsupported");
        assert!(
            e.ends_with("field label not supported: spec.nodename"),
            "{e}"
        );
        assert!(parse_field_selector("garbage").is_err());
    }

    #[test]
    fn label_selectors_and_percentages() {
        let labels = json!({"app": "web", "tier": "front"});
        let m = |s: Value| selector_matches(&s, &labels);
        assert!(m(json!({})));
        assert!(!m(Value::Null));
        assert!(m(json!({"matchLabels": {"app": "web"}})));
        assert!(!m(json!({"matchLabels": {"app": "db"}})));
        assert!(m(
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "x"]}]})
        ));
        assert!(!m(
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]})
        ));
        assert!(m(
            json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}, {"key": "app", "operator": "Exists"}]})
        ));
        assert_eq!(scaled(&json!("50%"), 3), Ok(2));
        assert_eq!(scaled(&json!("34%"), 3), Ok(2));
        assert_eq!(scaled(&json!("100%"), 3), Ok(3));
        assert_eq!(scaled(&json!(2), 3), Ok(2));
        assert!(scaled(&json!("2"), 3).is_err());
    }
}
