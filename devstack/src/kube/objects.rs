//! Node objects, ConfigMaps and Leases: reads, writes with optimistic concurrency, the
//! NodeRestriction admission rules for them, and the node lifecycle controller's unschedulable
//! taint.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::authz::forbidden;
use super::{Ctx, KubeCluster, NODE_LEASE_NAMESPACE, not_found_in, ok_json, status};
use crate::state::Shared;

/// The taint the node lifecycle controller keeps on an unschedulable Node.
pub(crate) const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// A namespaced kind the generic store serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    pub resource: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
    pub api_version: &'static str,
}

pub(crate) const CONFIGMAPS: Kind = Kind {
    resource: "configmaps",
    group: "",
    kind: "ConfigMap",
    api_version: "v1",
};
pub(crate) const LEASES: Kind = Kind {
    resource: "leases",
    group: "coordination.k8s.io",
    kind: "Lease",
    api_version: "coordination.k8s.io/v1",
};

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if v.is_null() {
            if let Some(o) = target.as_object_mut() {
                o.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

/// 409 Conflict for a stale `metadata.resourceVersion`, as the API server words it.
fn conflict(
    c: &mut KubeCluster,
    ctx: &Ctx,
    group: &str,
    resource: &str,
    name: &str,
    object: &str,
) -> Response {
    let q = super::authz::qualified(group, resource);
    let m = format!(
        "Operation cannot be fulfilled on {q} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    );
    c.record(ctx.now, &ctx.user.actor(), "conflict", object, &m);
    status(StatusCode::CONFLICT, "Conflict", m)
}

/// Whether a write's `metadata.resourceVersion` (absent: unconditional) is stale.
fn stale(given: &Value, stored: &Value) -> bool {
    match given["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => Some(rv) != stored["metadata"]["resourceVersion"].as_str(),
        _ => false,
    }
}

fn parse_body(ctx: &Ctx) -> Result<Value, Box<Response>> {
    serde_json::from_slice::<Value>(ctx.body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not a JSON object",
            ))
        })
}

/// The patch of a PATCH request: a JSON merge patch (a strategic merge patch is applied as one,
/// which is what it is for the fields the stand-in's objects have).
fn parse_patch(ctx: &Ctx) -> Result<Value, Box<Response>> {
    if !(ctx.content_type.contains("merge-patch") || ctx.content_type.contains("strategic")) {
        return Err(Box::new(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of a PATCH must be a merge patch or a strategic merge patch for this stand-in, not {:?}",
                ctx.content_type
            ),
        )));
    }
    parse_body(ctx)
}

/// NodeRestriction for a node writing a lease (plugin/pkg/admission/noderestriction
/// `admitLease`): only in `kube-node-lease`, only its own.
fn admit_lease(node: &str, ns: &str, name: &str) -> Result<(), String> {
    if ns != NODE_LEASE_NAMESPACE {
        return Err(forbidden(
            LEASES.group,
            LEASES.resource,
            name,
            &format!("can only access leases in the \"{NODE_LEASE_NAMESPACE}\" system namespace"),
        ));
    }
    if name != node {
        return Err(forbidden(
            LEASES.group,
            LEASES.resource,
            name,
            "can only access node lease with the same name as the requesting node",
        ));
    }
    Ok(())
}

/// Reads and writes of ConfigMaps and Leases, once the authorizers allowed them.
pub(crate) fn handle(
    c: &mut KubeCluster,
    ctx: &Ctx,
    kind: Kind,
    verb: &str,
    ns: &str,
    name: &str,
) -> Response {
    let key = |n: &str| (kind.resource.to_owned(), ns.to_owned(), n.to_owned());
    let object = |n: &str| format!("{}/{ns}/{n}", kind.resource);
    let missing = |n: &str| not_found_in(kind.group, kind.resource, n);
    let admit = |n: &str| -> Result<(), String> {
        match (&ctx.user.node, kind.resource) {
            (Some(node), "leases") => admit_lease(node, ns, n),
            _ => Ok(()),
        }
    };
    let actor = ctx.user.actor();
    match verb {
        "get" => match c.objects.get(&key(name)) {
            Some(o) => ok_json(StatusCode::OK, o),
            None => missing(name),
        },
        "list" => {
            let items: Vec<&Value> = c
                .objects
                .iter()
                .filter(|((r, n, _), _)| r == kind.resource && (ns.is_empty() || n == ns))
                .map(|(_, v)| v)
                .collect();
            ok_json(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", kind.kind),
                    "apiVersion": kind.api_version,
                    "metadata": {"resourceVersion": ctx.state.kube.next_version()},
                    "items": items,
                }),
            )
        }
        "create" => {
            let mut given = match parse_body(ctx) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let Some(new_name) = given["metadata"]["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
            else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        kind.kind
                    ),
                );
            };
            if let Some(given_ns) = given["metadata"]["namespace"].as_str()
                && !given_ns.is_empty()
                && given_ns != ns
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                );
            }
            if !c.namespaces.contains(ns) {
                return not_found_in("", "namespaces", ns);
            }
            if let Err(m) = admit(&new_name) {
                return c.refuse(ctx, &object(&new_name), m);
            }
            if c.objects.contains_key(&key(&new_name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!(
                        "{} \"{new_name}\" already exists",
                        super::authz::qualified(kind.group, kind.resource)
                    ),
                );
            }
            stamp(ctx.state, &mut given, kind, ns, &new_name, None);
            c.objects.insert(key(&new_name), given.clone());
            c.record(ctx.now, &actor, "create", &object(&new_name), "");
            ok_json(StatusCode::CREATED, &given)
        }
        "update" | "patch" => {
            let given = match if verb == "update" {
                parse_body(ctx)
            } else {
                parse_patch(ctx)
            } {
                Ok(v) => v,
                Err(r) => return *r,
            };
            if verb == "update"
                && given["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n != name)
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        given["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                );
            }
            let Some(existing) = c.objects.get(&key(name)).cloned() else {
                return missing(name);
            };
            if stale(&given, &existing) {
                return conflict(c, ctx, kind.group, kind.resource, name, &object(name));
            }
            if let Err(m) = admit(name) {
                return c.refuse(ctx, &object(name), m);
            }
            let mut updated = if verb == "update" {
                given
            } else {
                let mut merged = existing.clone();
                merge_patch(&mut merged, &given);
                merged
            };
            stamp(ctx.state, &mut updated, kind, ns, name, Some(&existing));
            c.objects.insert(key(name), updated.clone());
            c.record(ctx.now, &actor, "update", &object(name), "");
            ok_json(StatusCode::OK, &updated)
        }
        "delete" => {
            let Some(existing) = c.objects.get(&key(name)).cloned() else {
                return missing(name);
            };
            let options: Value = serde_json::from_slice(ctx.body).unwrap_or(Value::Null);
            if let Some(rv) = options["preconditions"]["resourceVersion"].as_str()
                && Some(rv) != existing["metadata"]["resourceVersion"].as_str()
            {
                return conflict(c, ctx, kind.group, kind.resource, name, &object(name));
            }
            if let Err(m) = admit(name) {
                return c.refuse(ctx, &object(name), m);
            }
            c.objects.remove(&key(name));
            c.record(ctx.now, &actor, "delete", &object(name), "");
            ok_json(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": kind.group, "kind": kind.resource, "uid": existing["metadata"]["uid"]}}),
            )
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on {} by this stand-in",
                kind.resource
            ),
        ),
    }
}

/// Sets the server-owned fields of a namespaced object (keeping uid and creation time of the
/// object it replaces).
pub(crate) fn stamp(
    state: &Shared,
    obj: &mut Value,
    kind: Kind,
    ns: &str,
    name: &str,
    existing: Option<&Value>,
) {
    obj["kind"] = json!(kind.kind);
    obj["apiVersion"] = json!(kind.api_version);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let m = &mut obj["metadata"];
    m["name"] = json!(name);
    m["namespace"] = json!(ns);
    match existing {
        Some(e) => {
            m["uid"] = e["metadata"]["uid"].clone();
            m["creationTimestamp"] = e["metadata"]["creationTimestamp"].clone();
        }
        None => {
            m["uid"] = json!(uuid::Uuid::new_v4().to_string());
            m["creationTimestamp"] = json!(crate::wire::rfc3339(state.now()));
        }
    }
    m["resourceVersion"] = json!(state.kube.next_version());
}

/// Sets the server-owned metadata of a Node.
fn stamp_node(state: &Shared, node: &mut Value, name: &str) {
    if !node.is_object() {
        *node = json!({});
    }
    node["kind"] = json!("Node");
    node["apiVersion"] = json!("v1");
    if !node["metadata"].is_object() {
        node["metadata"] = json!({});
    }
    node["metadata"]["name"] = json!(name);
    node["metadata"]["resourceVersion"] = json!(state.kube.next_version());
    if node["metadata"]["creationTimestamp"].is_null() {
        node["metadata"]["creationTimestamp"] = json!(crate::wire::rfc3339(state.now()));
    }
}

/// The cluster's Nodes as a `NodeList`.
pub(crate) fn node_list(state: &Shared, c: &KubeCluster) -> Value {
    json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": state.kube.next_version()},
        "items": c.nodes.values().collect::<Vec<_>>(),
    })
}

fn unschedulable(node: &Value) -> bool {
    node["spec"]["unschedulable"] == true
}

/// A node's taints, nil and empty alike (as apimachinery's semantic equality has them).
fn taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Stores a Node written by `actor`, records a change of `spec.unschedulable` (cordon /
/// uncordon), and acts as the node lifecycle controller: the unschedulable taint follows
/// `spec.unschedulable`.
pub(crate) fn store_node(
    state: &Shared,
    c: &mut KubeCluster,
    actor: &str,
    now: std::time::SystemTime,
    name: &str,
    mut node: Value,
) -> Value {
    let was = c.nodes.get(name).is_some_and(unschedulable);
    let is = unschedulable(&node);
    let mut t = taints(&node);
    let has = t.iter().any(|x| x["key"] == UNSCHEDULABLE_TAINT);
    if is && !has {
        t.push(json!({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": crate::wire::rfc3339(now)}));
    } else if !is && has {
        t.retain(|x| x["key"] != UNSCHEDULABLE_TAINT);
    }
    if is != has {
        if !node["spec"].is_object() {
            node["spec"] = json!({});
        }
        if t.is_empty() {
            if let Some(spec) = node["spec"].as_object_mut() {
                spec.remove("taints");
            }
        } else {
            node["spec"]["taints"] = json!(t);
        }
    }
    stamp_node(state, &mut node, name);
    c.nodes.insert(name.to_owned(), node.clone());
    if was != is {
        let action = if is { "cordon" } else { "uncordon" };
        c.record(now, actor, action, &format!("nodes/{name}"), "");
    }
    node
}

/// Reads and writes of Node objects, once the authorizers allowed them; NodeRestriction for
/// node users (only its own Node, never its taints).
pub(crate) fn nodes(
    c: &mut KubeCluster,
    ctx: &Ctx,
    op: &str,
    name: &str,
    method: &Method,
) -> Response {
    let not_found = || not_found_in("", "nodes", name);
    let object = format!("nodes/{name}");
    let restrict = |c: &mut KubeCluster| -> Option<Response> {
        let node = ctx.user.node.as_ref()?;
        (node != name).then(|| {
            let m = forbidden(
                "",
                "nodes",
                name,
                &format!("node \"{node}\" is not allowed to modify node \"{name}\""),
            );
            c.refuse(ctx, &object, m)
        })
    };
    let actor = ctx.user.actor();
    match op {
        "ListNodes" => ok_json(StatusCode::OK, &node_list(ctx.state, c)),
        "GetNode" => match c.nodes.get(name) {
            Some(n) => ok_json(StatusCode::OK, n),
            None => not_found(),
        },
        "DeleteNode" => {
            if !c.nodes.contains_key(name) {
                return not_found();
            }
            if let Some(r) = restrict(c) {
                return r;
            }
            c.nodes.remove(name);
            ok_json(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "kind": "nodes"}}),
            )
        }
        "CreateNode" => {
            let node = match parse_body(ctx) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            if let Some(r) = restrict(c) {
                return r;
            }
            if c.nodes.contains_key(name) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("nodes \"{name}\" already exists"),
                );
            }
            let node = store_node(ctx.state, c, &actor, ctx.now, name, node);
            ok_json(StatusCode::CREATED, &node)
        }
        _ => {
            // UpdateNode / UpdateNodeStatus: PUT replaces (only the status for /status), PATCH
            // merges (JSON merge patch; a strategic merge patch of conditions is accepted as
            // one; for /status only the status of the result is kept).
            let given = match if method == Method::PATCH {
                parse_patch(ctx)
            } else {
                parse_body(ctx)
            } {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let Some(existing) = c.nodes.get(name).cloned() else {
                return not_found();
            };
            if stale(&given, &existing) {
                return conflict(c, ctx, "", "nodes", name, &object);
            }
            if let Some(r) = restrict(c) {
                return r;
            }
            let mut node = existing.clone();
            if method == Method::PATCH {
                merge_patch(&mut node, &given);
            } else {
                node = given;
            }
            if op == "UpdateNodeStatus" {
                let status = node["status"].clone();
                node = existing.clone();
                node["status"] = status;
            }
            if let Some(me) = &ctx.user.node
                && op == "UpdateNode"
                && taints(&node) != taints(&existing)
            {
                let m = forbidden(
                    "",
                    "nodes",
                    name,
                    &format!("node \"{me}\" is not allowed to modify taints"),
                );
                return c.refuse(ctx, &object, m);
            }
            let node = store_node(ctx.state, c, &actor, ctx.now, name, node);
            ok_json(StatusCode::OK, &node)
        }
    }
}
