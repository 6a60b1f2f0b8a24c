//! A stand-in for an EKS cluster's Kubernetes API server — the part a hybrid node and the tests
//! of its drain meet, over HTTPS with a serving certificate signed by the cluster's CA (the CA
//! DescribeCluster hands out), behind EKS's authentication. The golden rule: behave as
//! kube-apiserver (with the Node and RBAC authorizers and the NodeRestriction admission plugin, as
//! EKS runs it) wherever a test depends on it, and fail wherever it fails.
//!
//! # Authentication and users
//!
//! aws-iam-authenticator's: a bearer token `k8s-aws-v1.<base64url of a presigned STS
//! GetCallerIdentity URL>` whose signature covers the header `x-k8s-aws-id: <this cluster>`. EKS
//! replays the URL against STS; the stand-in checks the presigned SigV4 signature itself against
//! the credentials the devstack knows (the ones it issued to instances), which is the same
//! decision: wrong cluster, tampered, expired (signed more than 15 minutes ago) or unknown
//! credentials → 401. Users are mapped as EKS access entries map them: an assumed role, with an
//! access entry of type `HYBRID_LINUX` (the default), is `system:node:<session name>` (the `mi-`
//! id of an SSM hybrid instance) in groups `system:nodes` and `system:authenticated`; the devstack
//! admin key is cluster-admin (`system:masters`). `kube-access` switches a cluster to "no access
//! entry" (401 for roles) or "STANDARD without policies" (authenticated, RBAC only).
//!
//! # Authorization and admission ([`authz`])
//!
//! The Node authorizer's static rules for node users (nodes, pods, pods/eviction, pods/status,
//! events, …; leases only `kube-node-lease/<own name>`; ConfigMaps and Secrets never: the
//! stand-in keeps no graph of what pods reference), then RBAC (Role, ClusterRole, RoleBinding,
//! ClusterRoleBinding applied with `kube-apply`; `system:basic-user` lets everyone review its own
//! access). 403 messages are kube's, with the authorizers' reasons after a colon. Then, for writes
//! by nodes, NodeRestriction: only its own Node and never its taints, evict and delete only pods
//! bound to itself, leases only in `kube-node-lease` and only its own, whatever RBAC says.
//! SelfSubjectAccessReview asks the authorizers only (no admission), as in Kubernetes; so does
//! SelfSubjectRulesReview (incomplete for nodes: the Node authorizer cannot list its rules).
//!
//! # Objects
//!
//! - Nodes (`/api/v1/nodes[/NAME[/status]]`): GET, POST, PUT, PATCH (merge), DELETE. The node
//!   lifecycle controller is modelled: `spec.unschedulable: true` gets the taint
//!   `node.kubernetes.io/unschedulable:NoSchedule` (in the same write; Kubernetes adds it a moment
//!   later), and loses it when unschedulable goes.
//! - Pods ([`pods`]): list with field selectors, get, graceful delete, the Eviction API with
//!   PodDisruptionBudgets (`/apis/policy/v1`, read-only through the API; created with
//!   `kube-pdbs` or `kube-apply`), a stand-in kubelet that removes a terminating pod after its
//!   grace time and a stand-in controller that replaces pods owned by a controller (not a
//!   DaemonSet) on another node, Pending then Running and Ready. No scheduler: tests put pods on
//!   nodes with `kube-pods`.
//! - ConfigMaps and Leases ([`objects`]): get, list, create (409 AlreadyExists), update with
//!   optimistic concurrency (a stale `metadata.resourceVersion` → 409 Conflict), merge patch,
//!   delete; creation needs the namespace to exist (`default`, `kube-system`, `kube-public`,
//!   `kube-node-lease`, and those `kube-apply` creates).
//! - `/healthz`, `/livez`, `/readyz` (anonymous), `/version`.
//!
//! Every write, refusal and controller action lands in the cluster's history (`kube-history`),
//! which tests use to check ordering. Not modelled: watches, label selectors on lists,
//! JSON patch and server-side apply, admission webhooks and CEL (ValidatingAdmissionPolicies
//! are stored by `kube-apply`, not evaluated), ServiceAccounts, Secrets, namespace deletion
//! cascading to pods, the disruption controller's `disruptedPods` bookkeeping (an evicted pod is
//! terminating at once, which has the same effect on the budget).
//!
//! It is started per cluster, on a port of its own, by `POST /_devstack/eks/kube-api?name=X`
//! (or `hybrid-devstack --kube-api` for the demo cluster); that also sets the cluster's endpoint
//! to it. Nothing persists: the objects live as long as the process.

mod apply;
mod authz;
mod objects;
mod pods;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use self::authz::{Attrs, Decision, User};
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
/// The namespace of node leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Largest body a write may have.
const MAX_BODY: usize = 1024 * 1024;
/// Time a client gets for the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: [&str; 4] = [
    "default",
    "kube-system",
    "kube-public",
    NODE_LEASE_NAMESPACE,
];

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

/// (namespace, name) of a namespaced object.
pub(crate) type Key = (String, String);

/// One cluster's API server.
#[derive(Debug)]
pub(crate) struct KubeCluster {
    endpoint: String,
    access: Access,
    nodes: BTreeMap<String, Value>,
    /// Pods by (namespace, name).
    pods: BTreeMap<Key, Value>,
    /// Terminating pods and when they are gone.
    terminating: BTreeMap<Key, SystemTime>,
    /// Replacement pods and when they become Running and Ready.
    unready: BTreeMap<Key, SystemTime>,
    pdbs: BTreeMap<Key, Value>,
    /// ConfigMaps and Leases by (resource, namespace, name).
    objects: BTreeMap<(String, String, String), Value>,
    namespaces: BTreeSet<String>,
    rbac: authz::Rbac,
    timing: pods::Timing,
    history: Vec<Value>,
}

impl KubeCluster {
    fn new(endpoint: String) -> KubeCluster {
        KubeCluster {
            endpoint,
            access: Access::HybridLinux,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            terminating: BTreeMap::new(),
            unready: BTreeMap::new(),
            pdbs: BTreeMap::new(),
            objects: BTreeMap::new(),
            namespaces: SYSTEM_NAMESPACES.iter().map(|n| (*n).to_owned()).collect(),
            rbac: authz::Rbac::default(),
            timing: pods::Timing::default(),
            history: Vec::new(),
        }
    }

    /// Appends an event to the history.
    pub(crate) fn record(
        &mut self,
        at: SystemTime,
        actor: &str,
        action: &str,
        object: &str,
        detail: &str,
    ) {
        let seq = self.history.len() + 1;
        self.history.push(json!({
            "seq": seq,
            "at": rfc3339_millis(at),
            "actor": actor,
            "action": action,
            "object": object,
            "detail": detail,
        }));
    }

    /// 403 Forbidden for a write, recorded in the history.
    pub(crate) fn refuse(&mut self, ctx: &Ctx, object: &str, message: String) -> Response {
        self.record(ctx.now, &ctx.user.actor(), "forbidden", object, &message);
        status(StatusCode::FORBIDDEN, "Forbidden", message)
    }
}

/// `2026-01-02T03:04:05.678Z`
fn rfc3339_millis(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
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

/// What a handler needs to know about the request.
pub(crate) struct Ctx<'a> {
    pub state: &'a Shared,
    pub user: &'a User,
    /// The time of the request (taken under the cluster lock, so history is in order).
    pub now: SystemTime,
    pub query: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
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

/// 404 `<resource> "<name>" not found` for a core resource.
fn not_found(resource: &str, name: &str) -> Response {
    not_found_in("", resource, name)
}

/// 404 `<resource>.<group> "<name>" not found`.
fn not_found_in(group: &str, resource: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", authz::qualified(group, resource)),
    )
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
        clusters.insert(cluster.to_owned(), KubeCluster::new(endpoint.clone()));
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

/// A resource request as kube-apiserver's RequestInfoFactory reads the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestInfo {
    verb: &'static str,
    group: String,
    version: String,
    namespace: String,
    resource: String,
    name: String,
    subresource: String,
}

impl RequestInfo {
    fn parse(method: &Method, path: &str) -> Option<RequestInfo> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, r @ ..] if !r.is_empty() => (*ns, r),
            r => ("", r),
        };
        let resource = rest.first()?;
        let name = rest.get(1).copied().unwrap_or("");
        let subresource = rest.get(2..).map(|s| s.join("/")).unwrap_or_default();
        let verb = match *method {
            Method::GET if name.is_empty() => "list",
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "unknown",
        };
        Some(RequestInfo {
            verb,
            group: group.into(),
            version: version.into(),
            namespace: namespace.into(),
            resource: (*resource).into(),
            name: name.into(),
            subresource,
        })
    }

    /// The operation a request is (its name in the call counters), `Err(true)` for a known
    /// resource with a method it does not take, `Err(false)` for an unknown path.
    fn op(&self) -> Result<String, bool> {
        let ns = !self.namespace.is_empty();
        let op = match (
            self.group.as_str(),
            self.version.as_str(),
            self.resource.as_str(),
            self.subresource.as_str(),
        ) {
            ("", "v1", "nodes", "") if !ns => match self.verb {
                "list" => "ListNodes",
                "create" => "CreateNode",
                "get" => "GetNode",
                "update" | "patch" => "UpdateNode",
                "delete" => "DeleteNode",
                _ => return Err(true),
            },
            ("", "v1", "nodes", "status") if !ns => match self.verb {
                "update" | "patch" => "UpdateNodeStatus",
                "get" => "GetNode",
                _ => return Err(true),
            },
            ("", "v1", "pods", "") => match self.verb {
                "list" => "ListPods",
                "get" if ns => "GetPod",
                "delete" if ns => "DeletePod",
                _ => return Err(true),
            },
            ("", "v1", "pods", "eviction") if ns => match self.verb {
                "create" => "EvictPod",
                _ => return Err(true),
            },
            ("", "v1", "configmaps", "") | ("coordination.k8s.io", "v1", "leases", "") => {
                let kind = if self.resource == "leases" {
                    "Lease"
                } else {
                    "ConfigMap"
                };
                return match self.verb {
                    "list" => Ok(format!("List{kind}s")),
                    "get" | "create" | "update" | "patch" | "delete" if ns => {
                        let mut verb = self.verb.to_owned();
                        verb[..1].make_ascii_uppercase();
                        Ok(format!("{verb}{kind}"))
                    }
                    _ => Err(true),
                };
            }
            ("policy", "v1", "poddisruptionbudgets", "") => match self.verb {
                "list" => "ListPodDisruptionBudgets",
                "get" if ns => "GetPodDisruptionBudget",
                _ => return Err(true),
            },
            ("", "v1", "namespaces", "") if !ns => match self.verb {
                "list" => "ListNamespaces",
                "get" => "GetNamespace",
                _ => return Err(true),
            },
            ("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "")
                if self.verb == "create" =>
            {
                "SelfSubjectAccessReview"
            }
            ("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "")
                if self.verb == "create" =>
            {
                "SelfSubjectRulesReview"
            }
            ("authentication.k8s.io", "v1", "selfsubjectreviews", "") if self.verb == "create" => {
                "SelfSubjectReview"
            }
            _ => return Err(false),
        };
        Ok(op.to_owned())
    }

    /// How the history names the object (`nodes/N`, `pods/NS/N`).
    fn object(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            format!("{}/{name}", self.resource)
        } else {
            format!("{}/{}/{name}", self.resource, self.namespace)
        }
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
    let not_served = || {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({method} {path})"),
        )
    };
    let Some(info) = RequestInfo::parse(&method, &path) else {
        return not_served();
    };
    let op = match info.op() {
        Ok(op) => op,
        Err(true) => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {path} by this stand-in"),
            );
        }
        Err(false) => return not_served(),
    };
    state.count_call("kube", &op);
    let query = parts.uri.query().unwrap_or("").to_owned();
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut clusters = lock(&state.kube.clusters);
    let Some(c) = clusters.get_mut(&cluster) else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "cluster gone",
        );
    };
    let now = state.now();
    pods::tick(&state, c, now);
    let ctx = Ctx {
        state: &state,
        user: &user,
        now,
        query: &query,
        content_type: &content_type,
        body: &body,
    };
    serve(c, &ctx, &info, &op, &method)
}

/// Authorizes a recognised request and hands it to its handler.
fn serve(
    c: &mut KubeCluster,
    ctx: &Ctx,
    info: &RequestInfo,
    op: &str,
    method: &Method,
) -> Response {
    // The name of a Node being created (for NodeRestriction and the history).
    let body_name = || {
        serde_json::from_slice::<Value>(ctx.body)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let target = if info.name.is_empty() && info.verb == "create" {
        body_name()
    } else {
        info.name.clone()
    };
    if op == "CreateNode" && target.is_empty() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "Node \"\" is invalid: metadata.name: Required value: name or generateName is required",
        );
    }
    let attrs = Attrs {
        verb: info.verb.into(),
        group: info.group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
    };
    if let Decision::NoOpinion(reason) = authz::authorize(&c.rbac, ctx.user, &attrs) {
        let message = authz::forbidden_message(ctx.user, &attrs, &reason);
        if attrs.is_write() {
            return c.refuse(ctx, &info.object(&target), message);
        }
        return status(StatusCode::FORBIDDEN, "Forbidden", message);
    }
    let ns = info.namespace.as_str();
    let name = info.name.as_str();
    let json_body = || serde_json::from_slice::<Value>(ctx.body).unwrap_or(Value::Null);
    match op {
        "ListNodes" | "CreateNode" | "GetNode" | "UpdateNode" | "UpdateNodeStatus"
        | "DeleteNode" => objects::nodes(c, ctx, op, &target, method),
        "ListPods" => {
            let selector = form_urlencoded::parse(ctx.query.as_bytes())
                .find(|(k, _)| k == "fieldSelector")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            pods::list(ctx.state, c, (!ns.is_empty()).then_some(ns), &selector)
        }
        "GetPod" => pods::get(c, ns, name),
        "DeletePod" => pods::delete(c, ctx, ns, name),
        "EvictPod" => pods::evict(c, ctx, ns, name),
        "ListPodDisruptionBudgets" => ok_json(
            StatusCode::OK,
            &pods::list_pdbs(ctx.state, c, (!ns.is_empty()).then_some(ns)),
        ),
        "GetPodDisruptionBudget" => pods::get_pdb(c, ns, name),
        "ListNamespaces" => ok_json(
            StatusCode::OK,
            &json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {},
                    "items": c.namespaces.iter().map(|n| namespace(n)).collect::<Vec<_>>()}),
        ),
        "GetNamespace" => match c.namespaces.get(name) {
            Some(n) => ok_json(StatusCode::OK, &namespace(n)),
            None => not_found("namespaces", name),
        },
        "SelfSubjectAccessReview" => match authz::access_review(&c.rbac, ctx.user, &json_body()) {
            Ok(review) => ok_json(StatusCode::CREATED, &review),
            Err(m) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
        },
        "SelfSubjectRulesReview" => ok_json(
            StatusCode::CREATED,
            &authz::rules_review(&c.rbac, ctx.user, &json_body()),
        ),
        "SelfSubjectReview" => ok_json(StatusCode::CREATED, &authz::self_review(ctx.user)),
        _ if info.resource == "leases" => {
            objects::handle(c, ctx, objects::LEASES, info.verb, ns, name)
        }
        _ => objects::handle(c, ctx, objects::CONFIGMAPS, info.verb, ns, name),
    }
}

fn namespace(name: &str) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
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
        return Ok(User::admin(&principal.arn));
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
        Access::HybridLinux if principal.arn.contains(":assumed-role/") => {
            Ok(User::node(&session, &principal.arn))
        }
        Access::Standard => Ok(User::unprivileged(&principal.arn)),
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

/// Control endpoint for the API servers (reached through `/_devstack/eks/kube-*?name=CLUSTER`),
/// acting as the cluster admin (history actor `admin`):
/// - `POST kube-api` → `{"endpoint": "https://127.0.0.1:PORT"}`: starts the cluster's API server
///   (once) and makes it the cluster's endpoint;
/// - `POST kube-access?access=hybrid-linux|none|standard`: the access entry nodes' roles have;
/// - `POST kube-node-evictions?allowed=false|true`: whether the Node authorizer grants nodes
///   `create pods/eviction` (default true, as upstream and EKS; false models a cluster whose
///   authorizer withholds it, where only RBAC can grant it);
/// - `GET kube-nodes` → the NodeList (what the stand-in kubelet registered);
/// - `POST kube-cordon?node=N[&unschedulable=false]`: sets the Node's `spec.unschedulable`, as
///   `kubectl cordon`/`uncordon` do (the lifecycle controller's taint follows);
/// - `POST kube-pods` with a Pod (JSON) → the pod as stored: puts a pod in the cluster (bound to
///   a node when it has `spec.nodeName`; there is no scheduler). 409 when it exists;
/// - `DELETE kube-pods?namespace=NS&pod=NAME`: removes a pod at once (its controller, if any,
///   replaces it);
/// - `GET kube-pods` → every pod, a PodList;
/// - `POST kube-pdbs` with a PodDisruptionBudget (JSON) → 201 with it and its status (409 when it
///   exists, 422 when invalid); `DELETE kube-pdbs?namespace=NS&pdb=NAME`; `GET kube-pdbs` → the
///   PodDisruptionBudgetList with statuses;
/// - `POST kube-timing[?grace_ms=N][&replace_ms=N][&replace_node=NODE]` → the settings
///   `{"grace_ms", "replace_ms", "replace_node"}` (`GET` reads them): how long a deleted pod
///   terminates (default 1000), how long a replacement takes to be Ready (default 2000), the node
///   replacements go to (default `devstack-elsewhere`);
/// - `POST kube-apply` with a multi-document YAML manifest (what `kubectl apply -f` takes:
///   Namespace, ConfigMap, Lease, Role, ClusterRole, RoleBinding, ClusterRoleBinding,
///   PodDisruptionBudget, ValidatingAdmissionPolicy[Binding]) → `{"applied": [{"kind",
///   "namespace", "name", "result": "created"|"configured"}], "warnings": [...]}`; 400 and nothing
///   applied when a document is not understood. `DELETE kube-apply` with the same manifest
///   removes its objects → `{"deleted": [...]}`; without a body it removes every RBAC object and
///   admission policy except the bootstrap ones;
/// - `GET kube-history` → `{"events": [{"seq", "at", "actor", "action", "object", "detail"}]}`;
///   `DELETE kube-history` empties it.
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
    let now = state.now();
    pods::tick(state, c, now);
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
        (Method::POST, "eks/kube-node-evictions") => match get("allowed").as_deref() {
            Some("true") => {
                c.rbac.node_evictions = true;
                ok_json(StatusCode::OK, &json!({ "node_evictions": true }))
            }
            Some("false") => {
                c.rbac.node_evictions = false;
                ok_json(StatusCode::OK, &json!({ "node_evictions": false }))
            }
            _ => bad("kube-node-evictions needs ?allowed=true|false".into()),
        },
        (Method::GET, "eks/kube-nodes") => ok_json(StatusCode::OK, &objects::node_list(state, c)),
        (Method::POST, "eks/kube-cordon") => {
            let Some(node) = get("node") else {
                return bad("kube-cordon needs ?node=NAME".into());
            };
            let unschedulable = get("unschedulable").as_deref() != Some("false");
            match c.nodes.get(&node).cloned() {
                Some(mut n) => {
                    objects::merge_patch(
                        &mut n,
                        &json!({"spec": {"unschedulable": unschedulable}}),
                    );
                    let n = objects::store_node(state, c, "admin", now, &node, n);
                    ok_json(StatusCode::OK, &n)
                }
                None => not_found("nodes", &node),
            }
        }
        (Method::POST, "eks/kube-pods") => match pods::new_pod(state, &req.body) {
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
            match pods::remove_now(state, c, &(namespace, pod.clone()), now) {
                Some(p) => ok_json(StatusCode::OK, &p),
                None => not_found("pods", &pod),
            }
        }
        (Method::GET, "eks/kube-pods") => ok_json(
            StatusCode::OK,
            &json!({"kind": "PodList", "apiVersion": "v1", "items": c.pods.values().collect::<Vec<_>>()}),
        ),
        (Method::POST, "eks/kube-pdbs") => {
            let pdb = match apply::parse_manifest(&req.body) {
                Ok(docs) if docs.len() == 1 => docs.into_iter().next().unwrap_or_default(),
                Ok(_) => return bad("kube-pdbs takes one PodDisruptionBudget".into()),
                Err(m) => return bad(m),
            };
            match pods::put_pdb(state, c, pdb, false) {
                Ok(p) => ok_json(StatusCode::CREATED, &p),
                Err(r) => *r,
            }
        }
        (Method::DELETE, "eks/kube-pdbs") => {
            let namespace = get("namespace").unwrap_or_else(|| "default".to_owned());
            let Some(name) = get("pdb") else {
                return bad("kube-pdbs DELETE needs ?pdb=NAME[&namespace=NS]".into());
            };
            match c.pdbs.remove(&(namespace, name.clone())) {
                Some(p) => ok_json(StatusCode::OK, &p),
                None => not_found_in("policy", "poddisruptionbudgets", &name),
            }
        }
        (Method::GET, "eks/kube-pdbs") => ok_json(StatusCode::OK, &pods::list_pdbs(state, c, None)),
        (Method::POST | Method::GET, "eks/kube-timing") => {
            let ms = |k: &str| -> Result<Option<Duration>, String> {
                get(k)
                    .map(|v| {
                        v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                            format!("kube-timing: {k} must be a number of milliseconds")
                        })
                    })
                    .transpose()
            };
            let (grace, replace) = match (ms("grace_ms"), ms("replace_ms")) {
                (Ok(g), Ok(r)) => (g, r),
                (Err(m), _) | (_, Err(m)) => return bad(m),
            };
            if req.method == Method::POST {
                if let Some(g) = grace {
                    c.timing.grace = g;
                }
                if let Some(r) = replace {
                    c.timing.replace = r;
                }
                if let Some(n) = get("replace_node").filter(|n| !n.is_empty()) {
                    c.timing.replace_node = n;
                }
            }
            ok_json(
                StatusCode::OK,
                &json!({
                    "grace_ms": c.timing.grace.as_millis() as u64,
                    "replace_ms": c.timing.replace.as_millis() as u64,
                    "replace_node": c.timing.replace_node,
                }),
            )
        }
        (Method::POST, "eks/kube-apply") => apply::apply(state, c, now, &req.body),
        (Method::DELETE, "eks/kube-apply") => apply::unapply(c, now, &req.body),
        (Method::GET, "eks/kube-history") => {
            ok_json(StatusCode::OK, &json!({ "events": c.history }))
        }
        (Method::DELETE, "eks/kube-history") => {
            c.history.clear();
            ok_json(StatusCode::OK, &json!({ "events": [] }))
        }
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
    fn request_paths_read_as_kube_reads_them() {
        let parse = |m: Method, p: &str| RequestInfo::parse(&m, p).expect("a resource path");
        let i = parse(Method::GET, "/api/v1/pods");
        assert_eq!(
            (i.verb, i.resource.as_str(), i.namespace.as_str()),
            ("list", "pods", "")
        );
        assert_eq!(i.op(), Ok("ListPods".into()));
        let i = parse(Method::POST, "/api/v1/namespaces/ns/pods/p/eviction");
        assert_eq!(
            (
                i.verb,
                i.name.as_str(),
                i.subresource.as_str(),
                i.namespace.as_str()
            ),
            ("create", "p", "eviction", "ns")
        );
        assert_eq!(i.op(), Ok("EvictPod".into()));
        let i = parse(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/mi-1",
        );
        assert_eq!(i.group, "coordination.k8s.io");
        assert_eq!(i.op(), Ok("UpdateLease".into()));
        assert_eq!(
            parse(Method::GET, "/api/v1/namespaces/x").op(),
            Ok("GetNamespace".into())
        );
        assert_eq!(
            parse(Method::PUT, "/api/v1/nodes/n/status").op(),
            Ok("UpdateNodeStatus".into())
        );
        assert_eq!(
            parse(Method::POST, "/api/v1/namespaces/x/pods").op(),
            Err(true)
        );
        assert_eq!(parse(Method::GET, "/api/v1/secrets").op(), Err(false));
        assert!(RequestInfo::parse(&Method::GET, "/metrics").is_none());
    }
}
