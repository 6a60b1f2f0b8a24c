//! The stand-in API server as a node's drain meets it: the Eviction API with
//! PodDisruptionBudgets, the stand-in controllers, ConfigMaps and Leases with optimistic
//! concurrency, RBAC applied from a manifest, NodeRestriction (taints, leases, other nodes'
//! pods), access reviews, and the history tests read the order of things from. Node users sign
//! their tokens with credentials the devstack issued to an assumed role, as an instance's are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use serde_json::{Value, json};

const CLUSTER: &str = "hybrid-demo";
const NODE_A: &str = "mi-0aaaaaaaaaaaaaaa1";
const NODE_B: &str = "mi-0bbbbbbbbbbbbbbb2";

struct Kube {
    ds: hybrid_devstack::Devstack,
    endpoint: String,
    tls: reqwest::Client,
    plain: reqwest::Client,
    admin: String,
}

impl Kube {
    async fn start() -> Kube {
        let ds = common::devstack();
        let plain = reqwest::Client::new();
        let started: Value = plain
            .post(format!("{}/_devstack/eks/kube-api?name={CLUSTER}", ds.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ca = ds.state.eks.cluster(CLUSTER).unwrap().ca_cert_pem;
        let tls = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap())
            .build()
            .unwrap();
        let admin =
            common::presigned_token(&common::admin_credentials(), CLUSTER, SystemTime::now());
        let k = Kube {
            endpoint: started["endpoint"].as_str().unwrap().to_owned(),
            ds,
            tls,
            plain,
            admin,
        };
        k.control("POST", "kube-timing?grace_ms=200&replace_ms=300", "")
            .await;
        k
    }

    /// A token of the node `name`: credentials issued to the session `name` of the nodes' role.
    fn node_token(&self, name: &str) -> String {
        let principal = hybrid_devstack::auth::Principal::assumed_role(
            &self.ds.state.config.account_id,
            "HybridNodesRole",
            name,
        );
        let cred = hybrid_devstack::state::lock(&self.ds.state.creds)
            .issue(&principal, SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        common::presigned_token(
            &Credentials::new(
                cred.access_key_id,
                cred.secret_access_key,
                Some(cred.session_token),
                None,
                "node",
            ),
            CLUSTER,
            SystemTime::now(),
        )
    }

    async fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut r = self
            .tls
            .request(method.parse().unwrap(), format!("{}{path}", self.endpoint))
            .bearer_auth(token)
            .header("content-type", ct);
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    async fn control(&self, method: &str, path: &str, body: &str) -> Value {
        let resp = self
            .plain
            .request(
                method.parse().unwrap(),
                format!(
                    "{}/_devstack/eks/{path}{}name={CLUSTER}",
                    self.ds.url,
                    if path.contains('?') { "&" } else { "?" }
                ),
            )
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{method} {path}: {resp:?}");
        resp.json().await.unwrap()
    }

    async fn history(&self) -> Vec<Value> {
        self.control("GET", "kube-history", "").await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Polls the history until `pred` holds for some event (5 s at most).
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self.history().await.into_iter().find(&pred) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in {:#?}",
                self.history().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pod(&self, ns: &str, name: &str, node: &str, labels: Value, ready: bool) {
        let status = if ready {
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
        } else {
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]})
        };
        self.control(
            "POST",
            "kube-pods",
            &json!({"metadata": {"namespace": ns, "name": name, "labels": labels,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f", "controller": true}]},
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
                    "status": status})
            .to_string(),
        )
        .await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn eviction(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}})
}

fn index(events: &[Value], action: &str, object: &str) -> usize {
    events
        .iter()
        .position(|e| e["action"] == action && e["object"] == object)
        .unwrap_or_else(|| panic!("no {action} of {object} in {events:#?}"))
}

#[test]
fn evictions_honour_the_disruption_budget_until_the_replacement_is_ready() {
    runtime().block_on(async {
        let k = Kube::start().await;
        let node = k.node_token(NODE_A);
        for i in 1..=3 {
            k.pod("app", &format!("web-5d4f-x{i}"), NODE_A, json!({"app": "web"}), true)
                .await;
        }
        k.pod("app", "web-5d4f-y1", NODE_B, json!({"app": "other"}), true)
            .await;
        let pdb = k
            .control(
                "POST",
                "kube-pdbs",
                &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                        "metadata": {"name": "web-pdb", "namespace": "app"},
                        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}})
                .to_string(),
            )
            .await;
        assert_eq!(pdb["status"]["disruptionsAllowed"], 1, "{pdb}");

        let path = |n: &str| format!("/api/v1/namespaces/app/pods/{n}/eviction");
        let (code, body) = k
            .api("POST", &path("web-5d4f-x1"), &node, Some(eviction("app", "web-5d4f-x1")))
            .await;
        assert_eq!((code, body["status"].as_str()), (201, Some("Success")), "{body}");
        // The disruption is used at once: the next eviction is refused, naming the budget.
        let (code, body) = k
            .api("POST", &path("web-5d4f-x2"), &node, Some(eviction("app", "web-5d4f-x2")))
            .await;
        assert_eq!(code, 429, "{body}");
        assert_eq!(body["reason"], "TooManyRequests");
        assert_eq!(
            body["message"],
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert_eq!(body["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert_eq!(
            body["details"]["causes"][0]["message"],
            "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
        );
        // The evicted pod is terminating.
        let (code, pod) = k
            .api("GET", "/api/v1/namespaces/app/pods/web-5d4f-x1", &node, None)
            .await;
        assert_eq!(code, 200);
        assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
        // Another node's pod: NodeRestriction; a missing pod: 404.
        let (code, body) = k
            .api("POST", &path("web-5d4f-y1"), &node, Some(eviction("app", "web-5d4f-y1")))
            .await;
        assert_eq!(code, 403, "{body}");
        assert_eq!(
            body["message"],
            format!("pods \"web-5d4f-y1\" is forbidden: node \"{NODE_A}\" can only evict pods with spec.nodeName set to itself")
        );
        let (code, _) = k
            .api("POST", &path("missing"), &node, Some(eviction("app", "missing")))
            .await;
        assert_eq!(code, 404);

        // The replacement comes up elsewhere; then the budget allows the next eviction.
        let ready = k.wait_for("ready replacement", |e| e["action"] == "ready").await;
        let replacement = ready["object"].as_str().unwrap().to_owned();
        let (_, pods) = k
            .api("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Ddevstack-elsewhere", &k.admin, None)
            .await;
        assert_eq!(pods["items"].as_array().unwrap().len(), 1, "{pods}");
        assert_eq!(pods["items"][0]["status"]["phase"], "Running");
        assert_eq!(pods["items"][0]["metadata"]["labels"]["app"], "web");
        let (code, body) = k
            .api("POST", &path("web-5d4f-x2"), &node, Some(eviction("app", "web-5d4f-x2")))
            .await;
        assert_eq!(code, 201, "{body}");

        let events = k.history().await;
        let evict1 = index(&events, "evict", "pods/app/web-5d4f-x1");
        let refused = index(&events, "evict-refused", "pods/app/web-5d4f-x2");
        let gone = index(&events, "terminated", "pods/app/web-5d4f-x1");
        let replace = index(&events, "replace", "pods/app/web-5d4f-x1");
        let up = index(&events, "ready", &replacement);
        let evict2 = index(&events, "evict", "pods/app/web-5d4f-x2");
        assert!(evict1 < refused && refused < gone && gone < replace && replace < up && up < evict2);
        assert_eq!(events[replace]["detail"], replacement.as_str());
        assert!(events[refused]["detail"].as_str().unwrap().contains("poddisruptionbudgets/app/web-pdb"));
        assert_eq!(events[evict1]["actor"], format!("system:node:{NODE_A}"));
        assert_eq!(events[replace]["actor"], "controller");
        assert!(events.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()
            && w[0]["at"].as_str() <= w[1]["at"].as_str()));

        // Two budgets for one pod: the eviction subresource gives up.
        k.control(
            "POST",
            "kube-pdbs",
            &json!({"metadata": {"name": "second", "namespace": "app"},
                    "spec": {"maxUnavailable": 1, "selector": {}}})
            .to_string(),
        )
        .await;
        let (code, body) = k
            .api("POST", &path("web-5d4f-x3"), &node, Some(eviction("app", "web-5d4f-x3")))
            .await;
        assert_eq!(code, 500, "{body}");
        assert!(body["message"].as_str().unwrap().contains("more than one PodDisruptionBudget"));
    });
}

#[test]
fn budget_status_counts_expected_healthy_and_percentages() {
    runtime().block_on(async {
        let k = Kube::start().await;
        for (name, ready) in [("a", true), ("b", true), ("c", true), ("d", false)] {
            k.pod("ns", name, NODE_A, json!({"app": "db", "tier": "x"}), ready).await;
        }
        k.pod("ns", "unrelated", NODE_A, json!({"app": "web"}), true).await;
        let put = |name: &str, spec: Value| {
            let body = json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}).to_string();
            let k = &k;
            async move { k.control("POST", "kube-pdbs", &body).await }
        };
        put("max-half", json!({"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "db"}}})).await;
        put("min-34", json!({"minAvailable": "34%", "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}})).await;
        put("min-3", json!({"minAvailable": 3, "selector": {"matchLabels": {"tier": "x"}}})).await;
        let get = |name: &str| {
            let path = format!("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/{name}");
            let k = &k;
            async move { k.api("GET", &path, &k.admin, None).await }
        };
        let s = |v: &Value| {
            let s = &v["status"];
            (s["expectedPods"].as_i64().unwrap(), s["currentHealthy"].as_i64().unwrap(),
             s["desiredHealthy"].as_i64().unwrap(), s["disruptionsAllowed"].as_i64().unwrap())
        };
        // 4 expected, 3 healthy; 50% of 4 unavailable → 2 desired; 34% of 4 rounded up → 2.
        assert_eq!(s(&get("max-half").await.1), (4, 3, 2, 1));
        assert_eq!(s(&get("min-34").await.1), (4, 3, 2, 1));
        assert_eq!(s(&get("min-3").await.1), (4, 3, 3, 0));
        let (code, list) = k.api("GET", "/apis/policy/v1/poddisruptionbudgets", &k.admin, None).await;
        assert_eq!((code, list["items"].as_array().unwrap().len()), (200, 3));
        // Nodes have no access to budgets unless RBAC grants it.
        let (code, body) = k
            .api("GET", "/apis/policy/v1/namespaces/ns/poddisruptionbudgets", &k.node_token(NODE_A), None)
            .await;
        assert_eq!(code, 403, "{body}");
        // Invalid: both set.
        let r = k
            .plain
            .post(format!("{}/_devstack/eks/kube-pdbs?name={CLUSTER}", k.ds.url))
            .body(json!({"metadata": {"name": "bad"}, "spec": {"minAvailable": 1, "maxUnavailable": 1}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    });
}

#[test]
fn configmap_updates_are_optimistic_and_creation_needs_the_namespace() {
    runtime().block_on(async {
        let k = Kube::start().await;
        let base = "/api/v1/namespaces/default/configmaps";
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "lock"}, "data": {"holder": ""}});
        let (code, created) = k.api("POST", base, &k.admin, Some(cm.clone())).await;
        assert_eq!(code, 201, "{created}");
        let (code, body) = k.api("POST", base, &k.admin, Some(cm.clone())).await;
        assert_eq!((code, body["reason"].as_str()), (409, Some("AlreadyExists")));
        let mut mine = created.clone();
        mine["data"]["holder"] = json!("a");
        let (code, updated) = k.api("PUT", &format!("{base}/lock"), &k.admin, Some(mine)).await;
        assert_eq!(code, 200);
        assert_ne!(updated["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
        // A writer that read before that update loses.
        let mut stale = created.clone();
        stale["data"]["holder"] = json!("b");
        let (code, body) = k.api("PUT", &format!("{base}/lock"), &k.admin, Some(stale.clone())).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["reason"], "Conflict");
        assert_eq!(
            body["message"],
            "Operation cannot be fulfilled on configmaps \"lock\": the object has been modified; please apply your changes to the latest version and try again"
        );
        // So does a merge patch carrying the stale resourceVersion; without one it applies.
        let (code, _) = k
            .api("PATCH", &format!("{base}/lock"), &k.admin,
                 Some(json!({"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"holder": "c"}})))
            .await;
        assert_eq!(code, 409);
        let (code, patched) = k
            .api("PATCH", &format!("{base}/lock"), &k.admin, Some(json!({"data": {"holder": "c"}})))
            .await;
        assert_eq!((code, patched["data"]["holder"].as_str()), (200, Some("c")));
        stale["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        let (code, _) = k.api("PUT", &format!("{base}/lock"), &k.admin, Some(stale)).await;
        assert_eq!(code, 200, "no resourceVersion: unconditional");
        let (code, body) = k
            .api("POST", "/api/v1/namespaces/nowhere/configmaps", &k.admin, Some(cm))
            .await;
        assert_eq!((code, body["message"].as_str()), (404, Some("namespaces \"nowhere\" not found")));
        let (code, _) = k.api("DELETE", &format!("{base}/lock"), &k.admin, None).await;
        assert_eq!(code, 200);
        let (code, _) = k.api("GET", &format!("{base}/lock"), &k.admin, None).await;
        assert_eq!(code, 404);
        let actions: Vec<String> = k
            .history()
            .await
            .iter()
            .filter(|e| e["object"] == "configmaps/default/lock")
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(actions, ["create", "update", "conflict", "conflict", "update", "update", "delete"]);
    });
}

const LOCK_RBAC: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: hybrid-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: drain-lock
  namespace: hybrid-system
data:
  holder: ""
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: drain-lock
  namespace: hybrid-system
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    resourceNames: ["drain-lock"]
    verbs: ["get", "update", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: drain-lock
  namespace: hybrid-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: drain-lock
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: Group
    name: system:nodes
"#;

async fn review(k: &Kube, token: &str, attrs: Value) -> Value {
    let (code, body) = k
        .api("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token,
             Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}})))
        .await;
    assert_eq!(code, 201, "{body}");
    body["status"].clone()
}

#[test]
fn rbac_from_a_manifest_grants_a_node_one_configmap() {
    runtime().block_on(async {
        let k = Kube::start().await;
        let node = k.node_token(NODE_A);
        let lock_path = "/api/v1/namespaces/hybrid-system/configmaps/drain-lock";
        let attrs = json!({"namespace": "hybrid-system", "verb": "update", "resource": "configmaps", "name": "drain-lock"});
        assert_eq!(review(&k, &node, attrs.clone()).await["allowed"], false);
        let applied = k.control("POST", "kube-apply", LOCK_RBAC).await;
        assert_eq!(applied["applied"].as_array().unwrap().len(), 4, "{applied}");
        let status = review(&k, &node, attrs.clone()).await;
        assert_eq!(status["allowed"], true, "{status}");
        assert!(status["reason"].as_str().unwrap().contains("RoleBinding \"drain-lock/hybrid-system\""));

        let (code, cm) = k.api("GET", lock_path, &node, None).await;
        assert_eq!(code, 200, "{cm}");
        let mut mine = cm.clone();
        mine["data"]["holder"] = json!(NODE_A);
        let (code, body) = k.api("PUT", lock_path, &node, Some(mine)).await;
        assert_eq!(code, 200, "{body}");
        // Another name, or creating, is still refused.
        let (code, body) = k
            .api("PUT", "/api/v1/namespaces/hybrid-system/configmaps/other", &node,
                 Some(json!({"metadata": {"name": "other"}})))
            .await;
        assert_eq!(code, 403);
        assert!(body["message"].as_str().unwrap().starts_with(&format!(
            "configmaps \"other\" is forbidden: User \"system:node:{NODE_A}\" cannot update resource \"configmaps\" in API group \"\" in the namespace \"hybrid-system\""
        )), "{body}");
        let (code, _) = k
            .api("POST", "/api/v1/namespaces/hybrid-system/configmaps", &node,
                 Some(json!({"metadata": {"name": "mine"}})))
            .await;
        assert_eq!(code, 403);
        // Another node's stale copy loses the race.
        let (code, _) = k.api("PUT", lock_path, &k.node_token(NODE_B), Some(cm)).await;
        assert_eq!(code, 409);

        // Removing the manifest's RBAC takes the grant away.
        k.control("DELETE", "kube-apply", "").await;
        let (code, _) = k.api("GET", lock_path, &node, None).await;
        assert_eq!(code, 403);
        let events = k.history().await;
        let f = events.iter().filter(|e| e["action"] == "forbidden").count();
        assert_eq!(f, 2, "the two refused writes: {events:#?}");
    });
}

#[test]
fn a_node_writes_only_its_own_lease_in_kube_node_lease_even_when_rbac_allows_more() {
    runtime().block_on(async {
        let k = Kube::start().await;
        let node = k.node_token(NODE_A);
        k.control(
            "POST",
            "kube-apply",
            r#"
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: node-leases}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: ["*"]}]
---
kind: ClusterRoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: node-leases}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-leases}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}]
"#,
        )
        .await;
        let lease = |name: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": {"holderIdentity": NODE_A}});
        let status = review(&k, &node, json!({"namespace": "kube-system", "verb": "create", "group": "coordination.k8s.io", "resource": "leases"})).await;
        assert_eq!(status["allowed"], true, "the authorizers allow it: {status}");
        let (code, body) = k
            .api("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", &node, Some(lease("drain-lock")))
            .await;
        assert_eq!(code, 403, "NodeRestriction refuses it: {body}");
        assert_eq!(
            body["message"],
            "leases.coordination.k8s.io \"drain-lock\" is forbidden: can only access leases in the \"kube-node-lease\" system namespace"
        );
        let base = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
        let (code, own) = k.api("POST", base, &node, Some(lease(NODE_A))).await;
        assert_eq!(code, 201, "{own}");
        let (code, _) = k.api("PUT", &format!("{base}/{NODE_A}"), &node, Some(own.clone())).await;
        assert_eq!(code, 200);
        let (code, _) = k.api("PUT", &format!("{base}/{NODE_A}"), &node, Some(own)).await;
        assert_eq!(code, 409, "the first PUT moved the resourceVersion");
        let (code, body) = k.api("POST", base, &node, Some(lease(NODE_B))).await;
        assert_eq!(code, 403);
        assert!(body["message"].as_str().unwrap().ends_with("can only access node lease with the same name as the requesting node"));
        // The admin may.
        let (code, _) = k
            .api("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", &k.admin, Some(lease("drain-lock")))
            .await;
        assert_eq!(code, 201);

        let (_, rules) = k
            .api("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", &node,
                 Some(json!({"spec": {"namespace": "kube-system"}})))
            .await;
        assert_eq!(rules["status"]["incomplete"], true);
        assert!(rules["status"]["resourceRules"].as_array().unwrap().iter().any(|r| r["resources"][0] == "leases"));
        let (_, me) = k
            .api("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", &node,
                 Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})))
            .await;
        assert_eq!(me["status"]["userInfo"]["username"], format!("system:node:{NODE_A}"));
        assert_eq!(me["status"]["userInfo"]["groups"], json!(["system:nodes", "system:authenticated"]));

        let events = k.history().await;
        let refused: Vec<&Value> = events.iter().filter(|e| e["action"] == "forbidden").collect();
        assert_eq!(refused.len(), 2, "{events:#?}");
        assert_eq!(refused[0]["object"], "leases/kube-system/drain-lock");
    });
}

#[test]
fn nodes_cordon_by_patch_but_may_not_touch_taints_or_others() {
    runtime().block_on(async {
        let k = Kube::start().await;
        let a = k.node_token(NODE_A);
        let b = k.node_token(NODE_B);
        for (name, token) in [(NODE_A, &a), (NODE_B, &b)] {
            let (code, _) = k
                .api(
                    "POST",
                    "/api/v1/nodes",
                    token,
                    Some(json!({"metadata": {"name": name}, "spec": {}})),
                )
                .await;
            assert_eq!(code, 201);
        }
        let node_a = format!("/api/v1/nodes/{NODE_A}");
        let (_, mut stale) = k.api("GET", &node_a, &a, None).await;
        // Without a resourceVersion (unconditional), else the stale copy is a 409 first.
        stale["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        let (code, cordoned) = k
            .api(
                "PATCH",
                &node_a,
                &a,
                Some(json!({"spec": {"unschedulable": true}})),
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(
            cordoned["spec"]["taints"][0]["key"],
            "node.kubernetes.io/unschedulable"
        );
        assert_eq!(cordoned["spec"]["taints"][0]["effect"], "NoSchedule");
        // A whole stale Node (no taint) would remove the controller's taint: refused.
        let (code, body) = k.api("PUT", &node_a, &a, Some(stale)).await;
        assert_eq!(code, 403);
        assert_eq!(
            body["message"],
            format!(
                "nodes \"{NODE_A}\" is forbidden: node \"{NODE_A}\" is not allowed to modify taints"
            )
        );
        let (code, body) = k
            .api(
                "PATCH",
                &format!("/api/v1/nodes/{NODE_B}"),
                &a,
                Some(json!({"spec": {"unschedulable": true}})),
            )
            .await;
        assert_eq!(code, 403, "{body}");
        // The admin cordons B only after A is uncordoned.
        let (code, uncordoned) = k
            .api(
                "PATCH",
                &node_a,
                &a,
                Some(json!({"spec": {"unschedulable": null}})),
            )
            .await;
        assert_eq!(code, 200);
        assert!(uncordoned["spec"]["taints"].is_null(), "{uncordoned}");
        k.control("POST", &format!("kube-cordon?node={NODE_B}"), "")
            .await;

        // Single pods: a node deletes its own, not another node's.
        k.pod("app", "p-1", NODE_A, json!({}), true).await;
        k.pod("app", "p-2", NODE_B, json!({}), true).await;
        let (code, body) = k
            .api("DELETE", "/api/v1/namespaces/app/pods/p-2", &a, None)
            .await;
        assert_eq!(code, 403);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .ends_with("can only delete pods with spec.nodeName set to itself")
        );
        let (code, pod) = k
            .api("DELETE", "/api/v1/namespaces/app/pods/p-1", &a, None)
            .await;
        assert_eq!(code, 200);
        assert!(pod["metadata"]["deletionTimestamp"].is_string());
        k.wait_for("termination", |e| {
            e["action"] == "terminated" && e["object"] == "pods/app/p-1"
        })
        .await;
        let (code, _) = k
            .api("GET", "/api/v1/namespaces/app/pods/p-1", &a, None)
            .await;
        assert_eq!(code, 404);

        let events = k.history().await;
        let cordons: Vec<(String, String)> = events
            .iter()
            .filter(|e| e["action"] == "cordon" || e["action"] == "uncordon")
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["object"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            cordons,
            [
                ("cordon".to_owned(), format!("nodes/{NODE_A}")),
                ("uncordon".to_owned(), format!("nodes/{NODE_A}")),
                ("cordon".to_owned(), format!("nodes/{NODE_B}")),
            ]
        );
        let last = events
            .iter()
            .rev()
            .find(|e| e["action"] == "cordon")
            .unwrap();
        assert_eq!(last["actor"], "admin");
    });
}
