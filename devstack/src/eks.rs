//! EKS over restJson1: `DescribeCluster` (`GET /clusters/{name}`) and `ListClusters`
//! (`GET /clusters`), which is all a hybrid node asks EKS (nodeadm fills in a missing endpoint,
//! CA and CIDRs from DescribeCluster and wants the cluster ACTIVE with a remoteNetworkConfig).
//!
//! Unlike moto's random base64, `certificateAuthority.data` is the base64 of a real CA
//! certificate PEM (ECDSA P-256, generated with rcgen/aws-lc-rs once per cluster and persisted),
//! so the agent's kubeconfig and CA handling meet a certificate a TLS stack accepts. The CA key
//! is kept too, so a test can sign a serving certificate for a stand-in API server
//! (`GET /_devstack/eks/ca?name=X`).
//!
//! Every devstack starts with the cluster `hybrid-demo`. Tests add or change clusters through the
//! control endpoint (see [`control`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::persist;
use crate::server::{Config, DevstackError};
use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req};

/// The cluster every devstack has from the start (the demo's and the conformance tests').
pub const DEMO_CLUSTER: &str = "hybrid-demo";
/// Kubernetes version clusters report unless told otherwise.
pub const DEFAULT_VERSION: &str = "1.31";
/// API server endpoint reported unless a cluster is created with `endpoint=`. Nothing listens
/// there unless a test starts a stand-in API server.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:6443";
/// Default remote node / pod networks and service CIDR (RFC 1918 ranges, as EKS requires for
/// hybrid nodes).
pub const DEFAULT_REMOTE_NODE_CIDRS: &[&str] = &["10.80.0.0/16"];
pub const DEFAULT_REMOTE_POD_CIDRS: &[&str] = &["10.85.0.0/16"];
pub const DEFAULT_SERVICE_CIDR: &str = "172.20.0.0/16";
/// ListClusters page size bounds (API reference: maxResults 1..=100, default 100).
pub const MAX_LIST_RESULTS: usize = 100;
const EKS_DIR: &str = "eks";
const CLUSTERS_FILE: &str = "clusters.json";
const STATUSES: [&str; 6] = [
    "CREATING", "ACTIVE", "DELETING", "FAILED", "UPDATING", "PENDING",
];

/// One cluster as the devstack keeps (and persists) it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Cluster {
    pub name: String,
    pub status: String,
    pub version: String,
    pub endpoint: String,
    /// Epoch seconds.
    pub created_at: i64,
    pub remote_node_cidrs: Vec<String>,
    pub remote_pod_cidrs: Vec<String>,
    pub service_cidr: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

/// The EKS store; behind its own lock because `State` holds it directly.
#[derive(Debug, Default)]
pub struct EksState {
    file: Option<PathBuf>,
    clusters: Mutex<BTreeMap<String, Cluster>>,
}

#[derive(Debug, thiserror::Error)]
enum EksError {
    #[error("cannot generate the CA certificate of cluster {cluster}: {source}")]
    Ca {
        cluster: String,
        source: rcgen::Error,
    },
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
}

/// The parameters of every cluster CA (CN=kubernetes, as the EKS cluster CA is named); also
/// what names the CA as the issuer of the stand-in API server's certificate ([`crate::kube`]).
pub fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    // EKS cluster CAs are valid for ten years.
    let year = time::OffsetDateTime::now_utc().year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    Ok(params)
}

/// A fresh self-signed cluster CA, PEM cert and key.
fn generate_ca(cluster: &str) -> Result<(String, String), EksError> {
    let err = |source| EksError::Ca {
        cluster: cluster.to_string(),
        source,
    };
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = ca_params().map_err(err)?.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Points `cluster` at `endpoint` (the stand-in API server just started for it).
pub fn set_endpoint(state: &Shared, cluster: &str, endpoint: &str) -> Result<(), ApiError> {
    let mut clusters = lock(&state.eks.clusters);
    let Some(c) = clusters.get_mut(cluster) else {
        return Err(ApiError::not_found(
            "ResourceNotFoundException",
            format!("No cluster found for name: {cluster}."),
        ));
    };
    c.endpoint = endpoint.to_owned();
    state
        .eks
        .save(&clusters)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn new_cluster(name: &str, now_secs: i64) -> Result<Cluster, EksError> {
    let (ca_cert_pem, ca_key_pem) = generate_ca(name)?;
    Ok(Cluster {
        name: name.to_string(),
        status: "ACTIVE".into(),
        version: DEFAULT_VERSION.into(),
        endpoint: DEFAULT_ENDPOINT.into(),
        created_at: now_secs,
        remote_node_cidrs: DEFAULT_REMOTE_NODE_CIDRS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        remote_pod_cidrs: DEFAULT_REMOTE_POD_CIDRS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        service_cidr: DEFAULT_SERVICE_CIDR.into(),
        ca_cert_pem,
        ca_key_pem,
    })
}

fn now_secs() -> i64 {
    persist::epoch_millis(std::time::SystemTime::now()) / 1000
}

impl EksState {
    /// Loads `<dir>/eks/clusters.json` and makes sure [`DEMO_CLUSTER`] exists.
    pub fn load(dir: Option<&Path>, _config: &Config) -> Result<Self, DevstackError> {
        let file = dir.map(|d| d.join(EKS_DIR).join(CLUSTERS_FILE));
        let label = file.clone().unwrap_or_else(|| PathBuf::from("(in memory)"));
        let load_err = |e: EksError| DevstackError::LoadState {
            path: label.clone(),
            message: e.to_string(),
        };
        let mut clusters: BTreeMap<String, Cluster> = match &file {
            Some(f) => persist::read_json::<Vec<Cluster>>(f)?
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
            None => BTreeMap::new(),
        };
        let state = if clusters.contains_key(DEMO_CLUSTER) {
            EksState {
                file,
                clusters: Mutex::new(clusters),
            }
        } else {
            clusters.insert(
                DEMO_CLUSTER.to_string(),
                new_cluster(DEMO_CLUSTER, now_secs()).map_err(load_err)?,
            );
            let s = EksState {
                file,
                clusters: Mutex::new(clusters),
            };
            s.save(&lock(&s.clusters)).map_err(|e| load_err(e.into()))?;
            s
        };
        Ok(state)
    }

    fn save(&self, clusters: &BTreeMap<String, Cluster>) -> Result<(), persist::PersistError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let list: Vec<&Cluster> = clusters.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| persist::PersistError::Write {
            path: file.clone(),
            source: std::io::Error::other(e),
        })?;
        persist::write_atomic(file, &bytes)
    }

    /// A copy of one cluster (tests and the demo read the CA from here).
    pub fn cluster(&self, name: &str) -> Option<Cluster> {
        lock(&self.clusters).get(name).cloned()
    }
}

fn cluster_json(state: &Shared, c: &Cluster) -> serde_json::Value {
    let region = &state.config.region;
    let account = &state.config.account_id;
    let id = &hex::encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c.name.as_bytes()).as_ref(),
    )[..17];
    let mut v = serde_json::json!({
        "name": c.name,
        "arn": format!("arn:aws:eks:{region}:{account}:cluster/{}", c.name),
        "createdAt": c.created_at,
        "version": c.version,
        "roleArn": format!("arn:aws:iam::{account}:role/eks-cluster-role"),
        "resourcesVpcConfig": {
            "subnetIds": [format!("subnet-{id}")],
            "securityGroupIds": [],
            "clusterSecurityGroupId": format!("sg-{id}"),
            "vpcId": format!("vpc-{id}"),
            "endpointPublicAccess": true,
            "endpointPrivateAccess": true,
            "publicAccessCidrs": ["0.0.0.0/0"],
        },
        "kubernetesNetworkConfig": { "serviceIpv4Cidr": c.service_cidr, "ipFamily": "ipv4" },
        "logging": { "clusterLogging": [] },
        "status": c.status,
        "platformVersion": "eks.1",
        "tags": {},
        "accessConfig": { "authenticationMode": "API_AND_CONFIG_MAP" },
        "remoteNetworkConfig": {
            "remoteNodeNetworks": [{ "cidrs": c.remote_node_cidrs }],
            "remotePodNetworks": [{ "cidrs": c.remote_pod_cidrs }],
        },
    });
    // While a cluster is still being created EKS reports neither endpoint nor CA.
    if c.status != "CREATING" {
        v["endpoint"] = serde_json::Value::String(c.endpoint.clone());
        v["certificateAuthority"] = serde_json::json!({ "data": base64::engine::general_purpose::STANDARD.encode(c.ca_cert_pem.as_bytes()) });
        v["identity"] = serde_json::json!({ "oidc": { "issuer": format!("https://oidc.eks.{region}.amazonaws.com/id/{}", id.to_uppercase()) } });
    }
    v
}

fn rest_json(status: StatusCode, v: &serde_json::Value) -> Response {
    crate::wire::bytes_response(status, "application/json", v.to_string().into())
}

/// Handles DescribeCluster / ListClusters.
pub async fn handle(state: &Shared, op: &str, req: &Req) -> Response {
    if let Err(e) = crate::auth::authenticate(state, req, "eks") {
        return e.render(Protocol::RestJson1);
    }
    match op {
        "DescribeCluster" => {
            let name = crate::mirror::percent_decode(
                req.path
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default(),
            );
            match state.eks.cluster(&name) {
                Some(c) => rest_json(
                    StatusCode::OK,
                    &serde_json::json!({ "cluster": cluster_json(state, &c) }),
                ),
                None => ApiError::not_found(
                    "ResourceNotFoundException",
                    format!("No cluster found for name: {name}."),
                )
                .render(Protocol::RestJson1),
            }
        }
        "ListClusters" => list_clusters(state, req),
        _ => ApiError::bad_request(
            "InvalidRequestException",
            format!(
                "devstack EKS does not implement {} {}",
                req.method, req.path
            ),
        )
        .render(Protocol::RestJson1),
    }
}

fn list_clusters(state: &Shared, req: &Req) -> Response {
    let q = req.query_pairs();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let max = match get("maxResults").map(str::parse::<usize>) {
        None => MAX_LIST_RESULTS,
        Some(Ok(n)) if (1..=MAX_LIST_RESULTS).contains(&n) => n,
        _ => {
            return ApiError::bad_request(
                "InvalidParameterException",
                format!("maxResults must be between 1 and {MAX_LIST_RESULTS}"),
            )
            .render(Protocol::RestJson1);
        }
    };
    let offset = match get("nextToken").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return ApiError::bad_request("InvalidParameterException", "The nextToken is invalid.")
                .render(Protocol::RestJson1);
        }
    };
    let clusters = lock(&state.eks.clusters);
    let names: Vec<&String> = clusters.keys().skip(offset).take(max).collect();
    let mut out = serde_json::json!({ "clusters": names });
    if offset + max < clusters.len() {
        out["nextToken"] = serde_json::Value::String((offset + max).to_string());
    }
    rest_json(StatusCode::OK, &out)
}

/// Control endpoint for clusters (reached through `/_devstack/eks/...`):
/// - `POST /_devstack/eks/clusters?name=X[&status=CREATING|ACTIVE|...][&version=1.31]
///   [&endpoint=https://...][&remote_node_cidrs=a,b][&remote_pod_cidrs=c][&service_cidr=d]`
///   creates the cluster, or updates the given fields of an existing one (its CA is kept);
///   answers the cluster as DescribeCluster would.
/// - `DELETE /_devstack/eks/clusters?name=X`
/// - `GET /_devstack/eks/ca?name=X` → `{"cert_pem": "...", "key_pem": "..."}`: the cluster CA and
///   its key, to sign a serving certificate for a stand-in API server.
/// - `/_devstack/eks/kube-*?name=X`: the cluster's stand-in API server ([`crate::kube::control`]).
pub async fn control(state: &Shared, op: &str, req: &Req) -> Response {
    let q = req.query_pairs();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let bad = |m: String| ApiError::bad_request("InvalidParameter", m).render(Protocol::Plain);
    let Some(name) = get("name").filter(|n| !n.is_empty()) else {
        return bad(format!("/_devstack/{op} needs ?name=CLUSTER"));
    };
    let cidrs = |k: &str| {
        get(k).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    if op.starts_with("eks/kube-") {
        return crate::kube::control(state, op, &name, req).await;
    }
    match (req.method.clone(), op) {
        (Method::POST, "eks/clusters") => {
            if let Some(s) = get("status")
                && !STATUSES.contains(&s.as_str())
            {
                return bad(format!("status must be one of {STATUSES:?}, not {s}"));
            }
            let mut clusters = lock(&state.eks.clusters);
            let mut c = match clusters.get(&name) {
                Some(c) => c.clone(),
                None => match new_cluster(&name, now_secs()) {
                    Ok(c) => c,
                    Err(e) => return ApiError::internal(e.to_string()).render(Protocol::Plain),
                },
            };
            if let Some(s) = get("status") {
                c.status = s;
            }
            if let Some(v) = get("version") {
                c.version = v;
            }
            if let Some(e) = get("endpoint") {
                c.endpoint = e;
            }
            if let Some(n) = cidrs("remote_node_cidrs") {
                c.remote_node_cidrs = n;
            }
            if let Some(p) = cidrs("remote_pod_cidrs") {
                c.remote_pod_cidrs = p;
            }
            if let Some(s) = get("service_cidr") {
                c.service_cidr = s;
            }
            let json = cluster_json(state, &c);
            clusters.insert(name, c);
            if let Err(e) = state.eks.save(&clusters) {
                return ApiError::internal(e.to_string()).render(Protocol::Plain);
            }
            rest_json(StatusCode::OK, &serde_json::json!({ "cluster": json }))
        }
        (Method::DELETE, "eks/clusters") => {
            let mut clusters = lock(&state.eks.clusters);
            if clusters.remove(&name).is_none() {
                return ApiError::not_found(
                    "ResourceNotFoundException",
                    format!("No cluster found for name: {name}."),
                )
                .render(Protocol::Plain);
            }
            if let Err(e) = state.eks.save(&clusters) {
                return ApiError::internal(e.to_string()).render(Protocol::Plain);
            }
            rest_json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::GET, "eks/ca") => match state.eks.cluster(&name) {
            Some(c) => rest_json(
                StatusCode::OK,
                &serde_json::json!({ "cert_pem": c.ca_cert_pem, "key_pem": c.ca_key_pem }),
            ),
            None => ApiError::not_found(
                "ResourceNotFoundException",
                format!("No cluster found for name: {name}."),
            )
            .render(Protocol::Plain),
        },
        _ => ApiError::not_found(
            "UnknownControl",
            format!("no control endpoint {} /_devstack/{op}", req.method),
        )
        .render(Protocol::Plain),
    }
}
