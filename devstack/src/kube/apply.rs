//! `kube-apply`: what `kubectl apply -f manifest.yaml` does as cluster-admin, for the kinds the
//! stand-in knows, and its undoing.

use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::objects::{self, CONFIGMAPS, LEASES};
use super::{KubeCluster, ok_json, pods, status};
use crate::state::Shared;

/// Kinds `kube-apply` takes, and whether they are namespaced.
const KINDS: [(&str, bool); 10] = [
    ("Namespace", false),
    ("ConfigMap", true),
    ("Lease", true),
    ("Role", true),
    ("ClusterRole", false),
    ("RoleBinding", true),
    ("ClusterRoleBinding", false),
    ("PodDisruptionBudget", true),
    ("ValidatingAdmissionPolicy", false),
    ("ValidatingAdmissionPolicyBinding", false),
];

/// The documents of a YAML (or JSON) manifest; empty documents are skipped and `kind: List`
/// items flattened.
pub(crate) fn parse_manifest(body: &[u8]) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the manifest is not UTF-8".to_owned())?;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        match v {
            Value::Null => {}
            v if v["kind"] == "List" => {
                docs.extend(v["items"].as_array().cloned().unwrap_or_default());
            }
            v => docs.push(v),
        }
    }
    Ok(docs)
}

/// (kind, namespace, name) of a manifest document, namespace defaulted for namespaced kinds.
fn identify(doc: &Value) -> Result<(String, String, String), String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let Some((_, namespaced)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return Err(format!(
            "no matches for kind {kind:?} in this stand-in (it applies {})",
            KINDS.map(|k| k.0).join(", ")
        ));
    };
    if name.is_empty() {
        return Err(format!("a {kind} has no metadata.name"));
    }
    let ns = if *namespaced {
        doc["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    } else {
        ""
    };
    if kind.ends_with("Binding") && !kind.starts_with("Validating") && !doc["roleRef"].is_object() {
        return Err(format!("{kind} {name:?} has no roleRef"));
    }
    Ok((kind.to_owned(), ns.to_owned(), name.to_owned()))
}

fn bad(m: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", m)
}

/// Applies every document of the manifest (none when one is not understood).
pub(crate) fn apply(state: &Shared, c: &mut KubeCluster, now: SystemTime, body: &[u8]) -> Response {
    let docs = match parse_manifest(body) {
        Ok(d) => d,
        Err(m) => return bad(m),
    };
    let mut ids = Vec::new();
    for d in &docs {
        match identify(d) {
            Ok(id) => ids.push(id),
            Err(m) => return bad(m),
        }
    }
    let mut applied = Vec::new();
    let mut warnings = Vec::new();
    for (mut doc, (kind, ns, name)) in docs.into_iter().zip(ids) {
        if !doc["metadata"].is_object() {
            doc["metadata"] = json!({});
        }
        if !ns.is_empty() {
            doc["metadata"]["namespace"] = json!(ns);
        }
        let existed = match kind.as_str() {
            "Namespace" => !c.namespaces.insert(name.clone()),
            "ConfigMap" | "Lease" => {
                let k = if kind == "Lease" { LEASES } else { CONFIGMAPS };
                let key = (k.resource.to_owned(), ns.clone(), name.clone());
                let existing = c.objects.get(&key).cloned();
                c.namespaces.insert(ns.clone());
                objects::stamp(state, &mut doc, k, &ns, &name, existing.as_ref());
                c.objects.insert(key, doc);
                let action = if existing.is_some() {
                    "update"
                } else {
                    "create"
                };
                c.record(
                    now,
                    "admin",
                    action,
                    &format!("{}/{ns}/{name}", k.resource),
                    "kube-apply",
                );
                existing.is_some()
            }
            "Role" => c
                .rbac
                .roles
                .insert((ns.clone(), name.clone()), doc)
                .is_some(),
            "RoleBinding" => c
                .rbac
                .role_bindings
                .insert((ns.clone(), name.clone()), doc)
                .is_some(),
            "ClusterRole" => c.rbac.cluster_roles.insert(name.clone(), doc).is_some(),
            "ClusterRoleBinding" => c
                .rbac
                .cluster_role_bindings
                .insert(name.clone(), doc)
                .is_some(),
            "PodDisruptionBudget" => {
                let existed = c.pdbs.contains_key(&(ns.clone(), name.clone()));
                if let Err(r) = pods::put_pdb(state, c, doc, true) {
                    return *r;
                }
                existed
            }
            _ => {
                warnings.push(format!(
                    "{kind} {name:?} is stored, but the stand-in does not evaluate CEL: it admits everything"
                ));
                c.rbac
                    .admission_policies
                    .insert((kind.clone(), name.clone()), doc)
                    .is_some()
            }
        };
        let mut entry = json!({"kind": kind, "name": name, "result": if existed { "configured" } else { "created" }});
        if !ns.is_empty() {
            entry["namespace"] = json!(ns);
        }
        applied.push(entry);
    }
    ok_json(
        StatusCode::OK,
        &json!({"applied": applied, "warnings": warnings}),
    )
}

/// Removes what a manifest applied, or (no manifest) every RBAC object and admission policy
/// but the bootstrap ones.
pub(crate) fn unapply(c: &mut KubeCluster, now: SystemTime, body: &[u8]) -> Response {
    let docs = match parse_manifest(body) {
        Ok(d) => d,
        Err(m) => return bad(m),
    };
    let mut deleted = Vec::new();
    if docs.is_empty() {
        let keep = |v: &Value| !v["metadata"]["labels"][super::authz::BOOTSTRAP_LABEL].is_null();
        let r = &mut c.rbac;
        let before = r.roles.len()
            + r.role_bindings.len()
            + r.cluster_roles.len()
            + r.cluster_role_bindings.len()
            + r.admission_policies.len();
        r.roles.clear();
        r.role_bindings.clear();
        r.cluster_roles.retain(|_, v| keep(v));
        r.cluster_role_bindings.retain(|_, v| keep(v));
        r.admission_policies.clear();
        let after = r.cluster_roles.len() + r.cluster_role_bindings.len();
        return ok_json(
            StatusCode::OK,
            &json!({"deleted": [], "rbac_objects_removed": before - after}),
        );
    }
    for d in &docs {
        let (kind, ns, name) = match identify(d) {
            Ok(id) => id,
            Err(m) => return bad(m),
        };
        let key = (ns.clone(), name.clone());
        let gone = match kind.as_str() {
            "Namespace" => {
                c.objects.retain(|(_, n, _), _| *n != name);
                c.pdbs.retain(|(n, _), _| *n != name);
                c.rbac.roles.retain(|(n, _), _| *n != name);
                c.rbac.role_bindings.retain(|(n, _), _| *n != name);
                c.namespaces.remove(&name)
            }
            "ConfigMap" | "Lease" => {
                let resource = if kind == "Lease" {
                    "leases"
                } else {
                    "configmaps"
                };
                let gone = c
                    .objects
                    .remove(&(resource.to_owned(), ns.clone(), name.clone()))
                    .is_some();
                if gone {
                    c.record(
                        now,
                        "admin",
                        "delete",
                        &format!("{resource}/{ns}/{name}"),
                        "kube-apply",
                    );
                }
                gone
            }
            "Role" => c.rbac.roles.remove(&key).is_some(),
            "RoleBinding" => c.rbac.role_bindings.remove(&key).is_some(),
            "ClusterRole" => c.rbac.cluster_roles.remove(&name).is_some(),
            "ClusterRoleBinding" => c.rbac.cluster_role_bindings.remove(&name).is_some(),
            "PodDisruptionBudget" => c.pdbs.remove(&key).is_some(),
            _ => c
                .rbac
                .admission_policies
                .remove(&(kind.clone(), name.clone()))
                .is_some(),
        };
        let mut entry = json!({"kind": kind, "name": name, "result": if gone { "deleted" } else { "not found" }});
        if !ns.is_empty() {
            entry["namespace"] = json!(ns);
        }
        deleted.push(entry);
    }
    ok_json(StatusCode::OK, &json!({ "deleted": deleted }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_split_into_documents() {
        let docs = parse_manifest(
            b"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: locks\n---\n\n---\nkind: Role\nmetadata: {name: r, namespace: locks}\nrules: []\n",
        )
        .expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(
            identify(&docs[1]).expect("known"),
            ("Role".into(), "locks".into(), "r".into())
        );
        assert!(identify(&json!({"kind": "Deployment", "metadata": {"name": "x"}})).is_err());
        assert!(identify(&json!({"kind": "RoleBinding", "metadata": {"name": "x"}})).is_err());
    }
}
