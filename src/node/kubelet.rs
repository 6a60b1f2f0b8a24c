//! kubelet's configuration and command line, as nodeadm sets them for hybrid nodes.
//!
//! `config.json` holds nodeadm's defaults plus what only the agent knows (providerID, cluster
//! DNS, CA path). From Kubernetes 1.28 the user's `spec.kubelet.config` goes into a drop-in in
//! `config.json.d/` (kubelet merges it over the base file, and `kubectl get --raw
//! /configz` shows the result), as nodeadm does; before 1.28 kubelet has no drop-in directory,
//! so the user's fields are merged into `config.json` here. User flags come last on the command
//! line, so they win over ours — except `--hostname-override`, which config validation refuses.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::{RenderError, RenderInput, RenderedFile};
use crate::paths;

/// The drop-in holding `spec.kubelet.config` (nodeadm's file name).
pub const USER_DROPIN: &str = "40-nodeadm.conf";
/// First minor version whose kubelet reads `--config-dir` (KEP-3983).
pub const DROPIN_MIN_MINOR: u32 = 28;
/// Minor versions where the drop-in directory is alpha and needs this environment switch
/// (KEP-3983: alpha in 1.28 and 1.29, beta and on by default from 1.30).
pub const DROPIN_ALPHA_ENV: (&str, &str) = ("KUBELET_CONFIG_DROPIN_DIR_ALPHA", "on");
const DROPIN_ALPHA_MINORS: [u32; 2] = [28, 29];
/// kubelet's healthz defaults (kubelet flag reference: --healthz-bind-address, --healthz-port).
pub const DEFAULT_HEALTHZ_ADDRESS: &str = "127.0.0.1";
pub const DEFAULT_HEALTHZ_PORT: u64 = 10248;
/// Label values nodeadm puts on hybrid nodes (PROTOCOLS.md §3).
pub const LABEL_COMPUTE_TYPE: &str = "eks.amazonaws.com/compute-type=hybrid";
pub const LABEL_CREDENTIAL_PROVIDER: &str = "eks.amazonaws.com/hybrid-credential-provider";
/// Cipher suites nodeadm restricts kubelet's serving endpoint to (EKS AMI defaults).
const TLS_CIPHER_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
];

/// `1.31.2` → 31 (major must be 1).
pub fn minor(version: &str) -> Result<u32, RenderError> {
    let mut parts = version.split('.');
    match (parts.next(), parts.next().and_then(|m| m.parse().ok())) {
        (Some("1"), Some(m)) => Ok(m),
        _ => Err(RenderError::Version {
            version: version.to_owned(),
        }),
    }
}

/// `eks-hybrid:///<region>/<cluster>/<node-name>` (PROTOCOLS.md §3).
pub fn provider_id(region: &str, cluster: &str, node_name: &str) -> String {
    format!("eks-hybrid:///{region}/{cluster}/{node_name}")
}

/// The cluster DNS address from the service CIDR: the network address with the last IPv4
/// octet 10, or `…::a` for IPv6 (what EKS's CoreDNS service gets, and what nodeadm computes).
pub fn cluster_dns(service_cidr: &str) -> Option<String> {
    let (addr, _) = service_cidr.split_once('/')?;
    match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(std::net::Ipv4Addr::new(o[0], o[1], o[2], 10).to_string())
        }
        std::net::IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[7] = 0xa;
            Some(std::net::Ipv6Addr::from(seg).to_string())
        }
    }
}

/// nodeadm's hybrid KubeletConfiguration defaults plus the agent's fields.
fn base_config(input: &RenderInput<'_>) -> Map<String, Value> {
    let mut c = json!({
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "address": "0.0.0.0",
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "cacheTTL": "2m0s", "enabled": true },
            "x509": { "clientCAFile": input.host(paths::CLUSTER_CA) }
        },
        "authorization": {
            "mode": "Webhook",
            "webhook": { "cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s" }
        },
        "cgroupDriver": if input.systemd_cgroups { "systemd" } else { "cgroupfs" },
        "cgroupRoot": "/",
        "clusterDomain": "cluster.local",
        "containerRuntimeEndpoint": format!("unix://{}", input.host(super::containerd::CONTAINERD_SOCKET)),
        "evictionHard": { "memory.available": "100Mi", "nodefs.available": "10%", "nodefs.inodesFree": "5%" },
        "featureGates": { "RotateKubeletServerCertificate": true },
        "hairpinMode": "hairpin-veth",
        "healthzBindAddress": DEFAULT_HEALTHZ_ADDRESS,
        "healthzPort": DEFAULT_HEALTHZ_PORT,
        "logging": { "verbosity": 2 },
        "protectKernelDefaults": true,
        "providerID": provider_id(&input.node.region, &input.node.cluster, input.node_name),
        "readOnlyPort": 0,
        "serializeImagePulls": false,
        "serverTLSBootstrap": true,
        "tlsCipherSuites": TLS_CIPHER_SUITES,
    });
    if let (Some(obj), Some(dns)) = (
        c.as_object_mut(),
        input.cluster.service_cidr.as_deref().and_then(cluster_dns),
    ) {
        obj.insert("clusterDNS".to_owned(), json!([dns]));
    }
    match c {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Merges `over` into `base` the way kubelet merges drop-ins: objects field by field, anything
/// else replaced.
pub fn merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn pretty(v: &Map<String, Value>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// What kubelet is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletPlan {
    pub files: Vec<RenderedFile>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `http://ADDR:PORT/healthz` from the effective configuration.
    pub healthz_url: String,
}

pub fn render(input: &RenderInput<'_>) -> Result<KubeletPlan, RenderError> {
    let minor = minor(input.kubernetes_version)?;
    let user = &input.node.kubelet_config;
    let mut base = base_config(input);
    let mut effective = base.clone();
    merge(&mut effective, user);
    let dropins = minor >= DROPIN_MIN_MINOR;
    let mut files = Vec::new();
    if dropins {
        files.push(RenderedFile::new(
            paths::KUBELET_CONFIG,
            pretty(&base),
            0o644,
            "kubelet configuration",
        ));
        if !user.is_empty() {
            let mut dropin = Map::new();
            // kubelet requires each drop-in to name its kind and version.
            dropin.insert(
                "apiVersion".to_owned(),
                json!("kubelet.config.k8s.io/v1beta1"),
            );
            dropin.insert("kind".to_owned(), json!("KubeletConfiguration"));
            merge(&mut dropin, user);
            files.push(RenderedFile::new(
                PathBuf::from(paths::KUBELET_CONFIG_DROPINS).join(USER_DROPIN),
                pretty(&dropin),
                0o644,
                "kubelet settings from the NodeConfig (drop-in)",
            ));
        }
    } else {
        merge(&mut base, user);
        files.push(RenderedFile::new(
            paths::KUBELET_CONFIG,
            pretty(&base),
            0o644,
            "kubelet configuration (NodeConfig settings merged in)",
        ));
    }

    let provider = &input.node.provider;
    let mut args = vec![format!("--config={}", input.host(paths::KUBELET_CONFIG))];
    if dropins {
        args.push(format!(
            "--config-dir={}",
            input.host(paths::KUBELET_CONFIG_DROPINS)
        ));
    }
    args.push(format!(
        "--kubeconfig={}",
        input.host(paths::KUBELET_KUBECONFIG)
    ));
    args.push(format!("--hostname-override={}", input.node_name));
    args.push(format!(
        "--node-labels={LABEL_COMPUTE_TYPE},{LABEL_CREDENTIAL_PROVIDER}={provider}"
    ));
    args.extend(input.node.kubelet_flags.iter().cloned());

    let env = if DROPIN_ALPHA_MINORS.contains(&minor) {
        vec![(DROPIN_ALPHA_ENV.0.to_owned(), DROPIN_ALPHA_ENV.1.to_owned())]
    } else {
        Vec::new()
    };
    let address = effective
        .get("healthzBindAddress")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_HEALTHZ_ADDRESS);
    let address = if address == "0.0.0.0" || address.is_empty() {
        "127.0.0.1"
    } else {
        address
    };
    let port = effective
        .get("healthzPort")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_HEALTHZ_PORT);
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    Ok(KubeletPlan {
        files,
        args,
        env,
        healthz_url: format!("http://{host}:{port}/healthz"),
    })
}

/// Whether the user allows kubelet to run with swap on (`failSwapOn: false`, kubelet's own
/// switch).
pub fn swap_allowed(config: &Map<String, Value>) -> bool {
    config.get("failSwapOn").and_then(Value::as_bool) == Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_from_service_cidr() {
        assert_eq!(cluster_dns("172.20.0.0/16").as_deref(), Some("172.20.0.10"));
        assert_eq!(cluster_dns("10.100.0.0/16").as_deref(), Some("10.100.0.10"));
        assert_eq!(
            cluster_dns("fd00:10:96::/108").as_deref(),
            Some("fd00:10:96::a")
        );
        assert_eq!(cluster_dns("garbage"), None);
    }

    #[test]
    fn merge_is_deep_for_objects_only() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 1});
        let over = json!({"a": {"y": 3}, "b": [9], "d": true});
        if let (Value::Object(b), Value::Object(o)) = (&mut base, &over) {
            merge(b, o);
        }
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": 3}, "b": [9], "c": 1, "d": true})
        );
    }

    #[test]
    fn versions() {
        assert_eq!(minor("1.31.2").ok(), Some(31));
        assert_eq!(minor("1.27").ok(), Some(27));
        assert!(minor("2.0.0").is_err());
    }
}
