//! A stand-in for an EKS cluster's Kubernetes API server — the small part a hybrid node meets:
//! Node objects (`/api/v1/nodes`), the pods bound to a node (`GET /api/v1/pods` and
//! `/api/v1/namespaces/NS/pods` with a `fieldSelector` such as `spec.nodeName=NODE`, what
//! `leave`'s drain check and kubelet ask), `/healthz`/`/livez`/`/readyz` and `/version`, over HTTPS with a
//! serving certificate signed by the cluster's CA (the CA DescribeCluster hands out), behind
//! EKS's authentication.
//!
//! Authentication is aws-iam-authenticator's: a bearer token `k8s-aws-v1.<base64url of a
//! presigned STS GetCallerIdentity URL>` whose signature covers the header `x-k8s-aws-id: <this
//! cluster>`. EKS replays the URL against STS; the stand-in checks the presigned SigV4 signature
//! itself against the credentials the devstack knows (the ones it issued to instances), which is
//! the same decision: wrong cluster, tampered, expired (signed more than 15 minutes ago) or
//! unknown credentials → 401.
//!
//! Authorization follows EKS access entries for hybrid nodes: by default every assumed role is
//! mapped as an access entry of type `HYBRID_LINUX` would map it — user `system:node:<session
//! name>` (the `mi-` id of an SSM hybrid instance) in group `system:nodes` — and, as the
//! NodeRestriction admission plugin does, a node may read every Node but create and update only
//! its own; nodes may read pods (the Node authorizer's `system:node` role lists them). Pods are
//! put on a node by tests through the control endpoint (there is no scheduler). The devstack
//! admin key is cluster-admin. The control endpoint switches a cluster to
//! "no access entry" (401 for roles) or "access entry of type STANDARD without policies" (403).
//!
//! It is started per cluster, on a port of its own, by `POST /_devstack/eks/kube-api?name=X`
//! (or `hybrid-devstack --kube-api` for the demo cluster); that also sets the cluster's endpoint
//! to it. Nothing persists: Node objects live as long as the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use crate::auth::{self, AuthFailure, Principal};
use crate::sigv4::{self, AuthHeader, PathEncoding};
use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req};

/// Prefix of every EKS token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The signed header carrying the cluster name.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// aws-iam-authenticator refuses tokens signed longer ago than this.
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Largest body a Node write may have.
const MAX_BODY: usize = 1024 * 1024;
/// Time a client gets for the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which access entry the cluster has for the roles of its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `HYBRID_LINUX`: a role maps to `system:node:<session>`.
    HybridLinux,
    /// No access entry: authentication succeeds at STS but maps to nobody (401).
    None,
    /// `STANDARD` without an access policy: authenticated, allowed nothing (403).
    Standard,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s {
            "hybrid-linux" | "HYBRID_LINUX" => Some(Access::HybridLinux),
            "none" => Some(Access::None),
            "standard" | "STANDARD" => Some(Access::Standard),
            _ => None,
        }
    }
}

/// One cluster's API server.
#[derive(Debug)]
struct KubeCluster {
    endpoint: String,
    access: Access,
    nodes: BTreeMap<String, Value>,
    /// Pods by (namespace, name).
    pods: BTreeMap<(String, String), Value>,
}

/// Every started API server, by cluster name.
#[derive(Debug, Default)]
pub struct KubeState {
    clusters: Mutex<BTreeMap<String, KubeCluster>>,
    resource_version: std::sync::atomic::AtomicU64,
}

impl KubeState {
    fn next_version(&self) -> String {
        (self
            .resource_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1)
        .to_string()
    }
}

/// Who a request is from, as the API server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum User {
    Admin,
    /// `system:node:<name>`
    Node(String),
    /// Mapped by a STANDARD access entry with no policy.
    Unprivileged(String),
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    crate::wire::bytes_response(code, "application/json", body.to_string().into())
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    crate::wire::bytes_response(code, "application/json", v.to_string().into())
}

/// Starts the API server of `cluster` (once; later calls return the running one's endpoint) and
/// sets the cluster's endpoint to it.
pub async fn start(state: &Shared, cluster: &str) -> Result<String, ApiError> {
    if let Some(c) = lock(&state.kube.clusters).get(cluster) {
        return Ok(c.endpoint.clone());
    }
    let cluster_doc = state.eks.cluster(cluster).ok_or_else(|| {
        ApiError::not_found(
            "ResourceNotFoundException",
            format!("No cluster found for name: {cluster}."),
        )
    })?;
    let tls = server_config(&cluster_doc.ca_key_pem)
        .map_err(|e| ApiError::internal(format!("cannot make the API server certificate: {e}")))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| ApiError::internal(format!("cannot listen for the API server: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::internal(format!("no local address: {e}")))?;
    let endpoint = format!("https://{addr}");
    {
        let mut clusters = lock(&state.kube.clusters);
        if let Some(c) = clusters.get(cluster) {
            // Another call won the race; this listener is dropped.
            return Ok(c.endpoint.clone());
        }
        clusters.insert(
            cluster.to_owned(),
            KubeCluster {
                endpoint: endpoint.clone(),
                access: Access::HybridLinux,
                nodes: BTreeMap::new(),
                pods: BTreeMap::new(),
            },
        );
    }
    crate::eks::set_endpoint(state, cluster, &endpoint)?;
    let app = Router::new()
        .fallback(dispatch)
        .with_state((state.clone(), cluster.to_owned()));
    let listener = TlsListener {
        inner: listener,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(endpoint)
}

/// A serving certificate for 127.0.0.1/localhost (and the in-cluster names) signed by the
/// cluster CA, in a TLS 1.3 server configuration.
/// The issuer is named by the CA's parameters (CN=kubernetes, as every cluster CA here) and its
/// key signs.
fn server_config(ca_key_pem: &str) -> Result<rustls::ServerConfig, String> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| e.to_string())?;
    let issuer = rcgen::Issuer::new(crate::eks::ca_params().map_err(|e| e.to_string())?, ca_key);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])
    .map_err(|e| e.to_string())?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(|e| e.to_string())
}

/// Accepts TCP connections and completes their TLS handshake (one at a time: a stand-in).
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                // A client that does not trust our certificate aborts here; keep serving.
                _ => continue,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

async fn dispatch(
    AxState((state, cluster)): AxState<(Shared, String)>,
    request: Request<Body>,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "body too large",
        );
    };
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    if method == Method::GET && matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        return crate::wire::bytes_response(StatusCode::OK, "text/plain", "ok".into());
    }
    let user = match authenticate(&state, &cluster, &parts.headers) {
        Ok(u) => u,
        Err(why) => {
            state.count_call("kube", "Unauthorized");
            tracing::info!(cluster, why, "kube API refused a token");
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    };
    if path == "/version" && method == Method::GET {
        let version = state
            .eks
            .cluster(&cluster)
            .map(|c| c.version)
            .unwrap_or_default();
        return ok_json(
            StatusCode::OK,
            &json!({"major": version.split('.').next(), "minor": version.split('.').nth(1), "gitVersion": format!("v{version}.0-eks-devstack")}),
        );
    }
    if let Some(namespace) = pods_path(&path) {
        if method != Method::GET {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {path} by this stand-in"),
            );
        }
        state.count_call("kube", "ListPods");
        if let Err(denied) = authorize(&user, "ListPods", "") {
            return status(StatusCode::FORBIDDEN, "Forbidden", denied);
        }
        let selector = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "fieldSelector")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        return list_pods(&state, &cluster, namespace.as_deref(), &selector);
    }
    let rest = path.strip_prefix("/api/v1/nodes");
    let Some(rest) = rest else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({method} {path})"),
        );
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let op = match (&method, segments.as_slice()) {
        (&Method::GET, []) => "ListNodes",
        (&Method::POST, []) => "CreateNode",
        (&Method::GET, [_]) => "GetNode",
        (&Method::PUT | &Method::PATCH, [_, "status"]) => "UpdateNodeStatus",
        (&Method::PUT | &Method::PATCH, [_]) => "UpdateNode",
        (&Method::DELETE, [_]) => "DeleteNode",
        _ => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {path}"),
            );
        }
    };
    state.count_call("kube", op);
    let target = match segments.first() {
        Some(n) => (*n).to_owned(),
        None if op == "CreateNode" => match serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
        {
            Some(n) => n,
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "Node \"\" is invalid: metadata.name: Required value: name or generateName is required",
                );
            }
        },
        None => String::new(),
    };
    if let Err(denied) = authorize(&user, op, &target) {
        return status(StatusCode::FORBIDDEN, "Forbidden", denied);
    }
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    nodes(&state, &cluster, op, &target, &method, &content_type, &body)
}

/// `Some(None)` for `/api/v1/pods` (every namespace), `Some(Some(ns))` for
/// `/api/v1/namespaces/NS/pods`, `None` for anything else.
fn pods_path(path: &str) -> Option<Option<String>> {
    if path.trim_end_matches('/') == "/api/v1/pods" {
        return Some(None);
    }
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, tail) = rest.split_once('/')?;
    (tail.trim_end_matches('/') == "pods" && !ns.is_empty()).then(|| Some(ns.to_owned()))
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
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

/// Parses a field selector as the API server does (comma-separated requirements); an unknown
/// field is an error, as it is for Kubernetes.
fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
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
fn pod_field(pod: &Value, field: &str) -> String {
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
fn list_pods(state: &Shared, cluster: &str, namespace: Option<&str>, selector: &str) -> Response {
    let requirements = match parse_field_selector(selector) {
        Ok(r) => r,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let clusters = lock(&state.kube.clusters);
    let Some(c) = clusters.get(cluster) else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "cluster gone",
        );
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
fn new_pod(state: &Shared, body: &[u8]) -> Result<((String, String), Value), String> {
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

/// Reads and writes of Node objects, once the caller may make them.
fn nodes(
    state: &Shared,
    cluster: &str,
    op: &str,
    name: &str,
    method: &Method,
    content_type: &str,
    body: &[u8],
) -> Response {
    let mut clusters = lock(&state.kube.clusters);
    let Some(c) = clusters.get_mut(cluster) else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "cluster gone",
        );
    };
    let not_found = || {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        )
    };
    let parse = || serde_json::from_slice::<Value>(body);
    match op {
        "ListNodes" => ok_json(StatusCode::OK, &node_list(state, c)),
        "GetNode" => match c.nodes.get(name) {
            Some(n) => ok_json(StatusCode::OK, n),
            None => not_found(),
        },
        "DeleteNode" => match c.nodes.remove(name) {
            Some(_) => ok_json(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            None => not_found(),
        },
        "CreateNode" => {
            if c.nodes.contains_key(name) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("nodes \"{name}\" already exists"),
                );
            }
            let Ok(mut node) = parse() else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not a JSON Node",
                );
            };
            stamp(state, &mut node, name);
            c.nodes.insert(name.to_owned(), node.clone());
            ok_json(StatusCode::CREATED, &node)
        }
        _ => {
            // UpdateNode / UpdateNodeStatus: PUT replaces (the status only for /status), PATCH
            // merges (JSON merge patch; a strategic merge patch of conditions is accepted as one).
            let Some(existing) = c.nodes.get(name).cloned() else {
                return not_found();
            };
            let Ok(given) = parse() else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not JSON",
                );
            };
            let mut node = existing;
            if method == Method::PATCH {
                if !(content_type.contains("merge-patch") || content_type.contains("strategic")) {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the body of a PATCH must be a merge patch, not {content_type:?}"),
                    );
                }
                merge_patch(&mut node, &given);
            } else if op == "UpdateNodeStatus" {
                node["status"] = given["status"].clone();
            } else {
                node = given;
            }
            stamp(state, &mut node, name);
            c.nodes.insert(name.to_owned(), node.clone());
            ok_json(StatusCode::OK, &node)
        }
    }
}

/// The cluster's Nodes as a `NodeList`.
fn node_list(state: &Shared, c: &KubeCluster) -> Value {
    json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": state.kube.next_version()},
        "items": c.nodes.values().collect::<Vec<_>>(),
    })
}

/// Sets the server-owned metadata.
fn stamp(state: &Shared, node: &mut Value, name: &str) {
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

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
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

/// NodeRestriction, roughly: nodes read any Node and write only their own.
fn authorize(user: &User, op: &str, target: &str) -> Result<(), String> {
    match user {
        User::Admin => Ok(()),
        User::Unprivileged(name) if op == "ListPods" => Err(format!(
            "pods is forbidden: User \"{name}\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
        )),
        User::Unprivileged(name) => Err(format!(
            "nodes{} is forbidden: User \"{name}\" cannot {} resource \"nodes\" in API group \"\" at the cluster scope",
            if target.is_empty() {
                String::new()
            } else {
                format!(" \"{target}\"")
            },
            verb(op)
        )),
        User::Node(_) if op == "ListPods" => Ok(()),
        User::Node(node) => {
            let writes = !matches!(op, "GetNode" | "ListNodes");
            if writes && node != target {
                Err(format!(
                    "nodes \"{target}\" is forbidden: node \"{node}\" is not allowed to modify node \"{target}\""
                ))
            } else if op == "DeleteNode" {
                Err(format!(
                    "nodes \"{target}\" is forbidden: User \"system:node:{node}\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn verb(op: &str) -> &'static str {
    match op {
        "ListNodes" => "list",
        "GetNode" => "get",
        "CreateNode" => "create",
        "DeleteNode" => "delete",
        "UpdateNodeStatus" | "UpdateNode" => "update",
        _ => "use",
    }
}

/// The user behind `Authorization: Bearer k8s-aws-v1.…`, or why there is none.
fn authenticate(state: &Shared, cluster: &str, headers: &HeaderMap) -> Result<User, String> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or("Authorization is not a bearer token")?
        .trim();
    let principal = verify_token(state, cluster, token)?;
    if principal.access_key_id == auth::ADMIN_ACCESS_KEY_ID {
        return Ok(User::Admin);
    }
    let access = lock(&state.kube.clusters)
        .get(cluster)
        .map(|c| c.access)
        .unwrap_or(Access::None);
    // arn:aws:sts::<account>:assumed-role/<role>/<session>
    let session = principal
        .arn
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    match access {
        Access::HybridLinux if principal.arn.contains(":assumed-role/") => Ok(User::Node(session)),
        Access::Standard => Ok(User::Unprivileged(principal.arn)),
        _ => Err(format!("no access entry maps {}", principal.arn)),
    }
}

/// Checks a `k8s-aws-v1.` token as EKS does (by replaying it against STS) and returns who signed
/// it.
pub fn verify_token(state: &Shared, cluster: &str, token: &str) -> Result<Principal, String> {
    let b64 = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or("the token does not start with k8s-aws-v1.")?;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|e| format!("the token is not base64url: {e}"))?;
    let url = String::from_utf8(url).map_err(|_| "the token's URL is not UTF-8")?;
    let rest = url
        .strip_prefix("https://")
        .ok_or("the token's URL is not https")?;
    let (host, path_query) = rest.split_once('/').ok_or("the token's URL has no path")?;
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    if !path.is_empty() {
        return Err(format!("the token's URL path is /{path}, not /"));
    }
    let sts_host = host == "sts.amazonaws.com"
        || (host.starts_with("sts.")
            && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")));
    if !sts_host {
        return Err(format!("the token's URL is for {host}, not STS"));
    }
    let pairs: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| {
        pairs
            .get(k)
            .cloned()
            .ok_or(format!("the token's URL has no {k}"))
    };
    if get("Action")? != "GetCallerIdentity" {
        return Err("the token's URL is not GetCallerIdentity".into());
    }
    if get("X-Amz-Algorithm")? != sigv4::ALGORITHM {
        return Err("the token's URL is not signed with AWS4-HMAC-SHA256".into());
    }
    let credential = get("X-Amz-Credential")?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err(format!("malformed X-Amz-Credential {credential:?}"));
    };
    if *service != "sts" {
        return Err(format!("the token is signed for {service}, not sts"));
    }
    let signed_headers: Vec<String> = get("X-Amz-SignedHeaders")?
        .split(';')
        .map(str::to_owned)
        .collect();
    if !signed_headers.iter().any(|h| h == CLUSTER_ID_HEADER) {
        return Err("x-k8s-aws-id is not a signed header".into());
    }
    let expires: u64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| "X-Amz-Expires is not a number")?;
    if expires > TOKEN_MAX_AGE.as_secs() {
        return Err(format!("X-Amz-Expires {expires} is longer than 15 minutes"));
    }
    let amz_date = get("X-Amz-Date")?;
    let signed_at = sigv4::parse_amz_date(&amz_date).map_err(|e| e.to_string())?;
    let now = state.now();
    if signed_at + TOKEN_MAX_AGE < now {
        return Err("the token expired (signed more than 15 minutes ago)".into());
    }
    if signed_at > now + sigv4::MAX_CLOCK_SKEW {
        return Err("the token is signed in the future".into());
    }
    // The request EKS replays: GET / with the query minus the signature, the host, and the
    // cluster-id header set to this cluster's name.
    let unsigned_query = query
        .split('&')
        .filter(|p| !p.starts_with("X-Amz-Signature="))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = HeaderMap::new();
    headers.insert(
        "host",
        HeaderValue::from_str(host).map_err(|_| "bad host in the token")?,
    );
    headers.insert(
        CLUSTER_ID_HEADER,
        HeaderValue::from_str(cluster).map_err(|_| "bad cluster name")?,
    );
    let req = Req {
        method: Method::GET,
        path: "/".into(),
        query: unsigned_query,
        headers,
        body: Default::default(),
    };
    let canonical = sigv4::canonical_request(&req, &signed_headers, PathEncoding::NormalizedDouble)
        .map_err(|e| e.to_string())?;
    let auth_header = AuthHeader {
        algorithm: sigv4::ALGORITHM.into(),
        access_key_id: (*access_key_id).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: "sts".into(),
        signed_headers,
        signature: get("X-Amz-Signature")?,
    };
    let to_sign = sigv4::string_to_sign(&amz_date, &auth_header.scope(), &canonical);
    let token = pairs.get("X-Amz-Security-Token").map(String::as_str);
    let (secret, principal) =
        auth::resolve_key(state, access_key_id, token).map_err(|f| describe(&f))?;
    if !sigv4::verify_hmac(&secret, &auth_header, &to_sign) {
        return Err("the token's signature does not match (another cluster, or tampered)".into());
    }
    Ok(principal)
}

fn describe(f: &AuthFailure) -> String {
    f.clone().into_api_error("sts").message
}

/// Control endpoint for the API servers (reached through `/_devstack/eks/kube-*?name=CLUSTER`):
/// - `POST kube-api` → `{"endpoint": "https://127.0.0.1:PORT"}`: starts the cluster's API server
///   (once) and makes it the cluster's endpoint;
/// - `POST kube-access?access=hybrid-linux|none|standard`: the access entry nodes' roles have;
/// - `GET kube-nodes` → the NodeList (what the stand-in kubelet registered);
/// - `POST kube-cordon?node=N[&unschedulable=false]`: sets the Node's `spec.unschedulable`, as
///   `kubectl cordon`/`uncordon` do;
/// - `POST kube-pods` with a Pod (JSON) → the pod as stored: puts a pod in the cluster (bound to
///   a node when it has `spec.nodeName`; there is no scheduler). 409 when it exists;
/// - `DELETE kube-pods?namespace=NS&pod=NAME`: removes a pod (as `kubectl drain` evicts it);
/// - `GET kube-pods` → every pod, a PodList.
pub async fn control(state: &Shared, op: &str, cluster: &str, req: &Req) -> Response {
    let q = req.query_pairs();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let bad = |m: String| ApiError::bad_request("InvalidParameter", m).render(Protocol::Plain);
    if op == "eks/kube-api" && req.method == Method::POST {
        return match start(state, cluster).await {
            Ok(endpoint) => ok_json(StatusCode::OK, &json!({ "endpoint": endpoint })),
            Err(e) => e.render(Protocol::Plain),
        };
    }
    let mut clusters = lock(&state.kube.clusters);
    let Some(c) = clusters.get_mut(cluster) else {
        return bad(format!(
            "cluster {cluster} has no API server; POST /_devstack/eks/kube-api?name={cluster} first"
        ));
    };
    match (req.method.clone(), op) {
        (Method::POST, "eks/kube-access") => {
            match get("access").as_deref().and_then(Access::parse) {
                Some(a) => {
                    c.access = a;
                    ok_json(StatusCode::OK, &json!({ "access": format!("{a:?}") }))
                }
                None => bad("kube-access needs ?access=hybrid-linux|none|standard".into()),
            }
        }
        (Method::GET, "eks/kube-nodes") => ok_json(StatusCode::OK, &node_list(state, c)),
        (Method::POST, "eks/kube-cordon") => {
            let Some(node) = get("node") else {
                return bad("kube-cordon needs ?node=NAME".into());
            };
            let unschedulable = get("unschedulable").as_deref() != Some("false");
            let version = state.kube.next_version();
            match c.nodes.get_mut(&node) {
                Some(n) => {
                    merge_patch(n, &json!({"spec": {"unschedulable": unschedulable}}));
                    n["metadata"]["resourceVersion"] = json!(version);
                    ok_json(StatusCode::OK, n)
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("nodes \"{node}\" not found"),
                ),
            }
        }
        (Method::POST, "eks/kube-pods") => match new_pod(state, &req.body) {
            Ok((key, _)) if c.pods.contains_key(&key) => status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("pods \"{}\" already exists", key.1),
            ),
            Ok((key, pod)) => {
                c.pods.insert(key, pod.clone());
                ok_json(StatusCode::OK, &pod)
            }
            Err(m) => bad(m),
        },
        (Method::DELETE, "eks/kube-pods") => {
            let namespace = get("namespace").unwrap_or_else(|| "default".to_owned());
            let Some(pod) = get("pod") else {
                return bad("kube-pods DELETE needs ?pod=NAME[&namespace=NS]".into());
            };
            match c.pods.remove(&(namespace, pod.clone())) {
                Some(p) => ok_json(StatusCode::OK, &p),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("pods \"{pod}\" not found"),
                ),
            }
        }
        (Method::GET, "eks/kube-pods") => ok_json(
            StatusCode::OK,
            &json!({"kind": "PodList", "apiVersion": "v1", "items": c.pods.values().collect::<Vec<_>>()}),
        ),
        _ => ApiError::not_found(
            "UnknownControl",
            format!("no control endpoint {} /_devstack/{op}", req.method),
        )
        .render(Protocol::Plain),
    }
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
    fn pod_paths() {
        assert_eq!(pods_path("/api/v1/pods"), Some(None));
        assert_eq!(
            pods_path("/api/v1/namespaces/kube-system/pods"),
            Some(Some("kube-system".to_owned()))
        );
        assert_eq!(pods_path("/api/v1/namespaces/x/pods/y"), None);
        assert_eq!(pods_path("/api/v1/nodes"), None);
    }
}
