//! kubelet's configuration and command line, as nodeadm sets them for hybrid nodes.
//!
//! `config.json` holds nodeadm's defaults plus what only the agent knows (providerID, cluster
//! DNS, CA path, the reservations computed from the host's CPUs and memory). From Kubernetes 1.29
//! the user's `spec.kubelet.config` goes into a drop-in in `config.json.d/` (kubelet merges it
//! over the base file, and `kubectl get --raw /configz` shows the result), as nodeadm does;
//! before 1.29 the user's fields are merged into `config.json` here (nodeadm
//! internal/kubelet/config.go `writeKubeletConfig`). `--config-dir` is passed only when that
//! drop-in is written: kubelet exits when the directory it names is missing.
//!
//! The command line is written, as nodeadm writes it, into `/etc/eks/kubelet/environment` as
//! `NODEADM_KUBELET_ARGS` (nodeadm internal/kubelet/environment.go), which kubelet.service
//! expands next to `$KUBELET_EXTRA_ARGS`, so a user's `kubelet.service.d` drop-in setting
//! `KUBELET_EXTRA_ARGS` works as on a nodeadm host. The file is rewritten on every join (as
//! nodeadm's is): extra arguments belong in a drop-in or in `spec.kubelet.flags`. The built-in
//! process backend has no unit to expand variables: it runs kubelet with the same arguments
//! directly, and `spec.kubelet.flags` is the one place for extra arguments there.
//! User flags come last on the command line, so they win over ours — except
//! `--hostname-override`, which config validation refuses.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::{RenderError, RenderInput, RenderedFile};
use crate::paths;

/// The drop-in holding `spec.kubelet.config` (nodeadm internal/kubelet/config.go
/// `writeKubeletConfigToDir`).
pub const USER_DROPIN: &str = "00-nodeadm.conf";
/// First minor version given the drop-in directory (nodeadm internal/kubelet/config.go: below
/// v1.29.0 the user's config is merged into config.json).
pub const DROPIN_MIN_MINOR: u32 = 29;
/// First minor version where `--pod-infra-container-image` is a no-op (nodeadm
/// internal/kubelet/config.go `withPodInfraContainerImage`, kubernetes#118544).
pub const POD_INFRA_FLAG_MAX_MINOR: u32 = 28;
/// kubelet's environment file (nodeadm internal/kubelet/environment.go).
pub const ENVIRONMENT_FILE: &str = "/etc/eks/kubelet/environment";
/// The variable holding kubelet's arguments in [`ENVIRONMENT_FILE`] (nodeadm
/// internal/kubelet/environment.go).
pub const ARGS_VARIABLE: &str = "NODEADM_KUBELET_ARGS";
/// The image credential provider's configuration and binary directory (nodeadm
/// internal/kubelet/image-credential-provider.go; the installer puts the binary there).
pub const IMAGE_CREDENTIAL_PROVIDER_CONFIG: &str = "/etc/eks/image-credential-provider/config.json";
pub const IMAGE_CREDENTIAL_PROVIDER_DIR: &str = "/etc/eks/image-credential-provider";
pub const ECR_CREDENTIAL_PROVIDER_BIN: &str =
    "/etc/eks/image-credential-provider/ecr-credential-provider";
/// How long kubelet caches a provider's answer (nodeadm: `DefaultCacheDuration` 12 h).
const CREDENTIAL_PROVIDER_CACHE: &str = "12h0m0s";
/// The profile nodeadm's IAM Roles Anywhere AWS config defines (nodeadm
/// internal/iamrolesanywhere/aws_config.go `ProfileName`).
pub const IAM_RA_PROFILE: &str = "default";
/// The AWS config IAM Roles Anywhere nodes use by default (nodeadm
/// internal/iamrolesanywhere/aws_config.go `DefaultAWSConfigPath`).
pub const IAM_RA_AWS_CONFIG: &str = "/etc/aws/hybrid/config";
/// The cgroups nodeadm names for system and Kubernetes daemons on hybrid nodes (nodeadm
/// internal/kubelet/config.go `withHybridReservedResources`); `/runtime` is kubelet.service's
/// `Slice=runtime.slice` under the systemd cgroup driver.
pub const SYSTEM_RESERVED_CGROUP: &str = "/system";
pub const KUBE_RESERVED_CGROUP: &str = "/runtime";
/// Minor versions where the drop-in directory is alpha and needs this environment switch
/// (KEP-3983: alpha in 1.28 and 1.29, beta and on by default from 1.30).
pub const DROPIN_ALPHA_ENV: (&str, &str) = ("KUBELET_CONFIG_DROPIN_DIR_ALPHA", "on");
const DROPIN_ALPHA_MINORS: [u32; 2] = [28, 29];
/// kubelet's healthz defaults (kubelet flag reference: --healthz-bind-address, --healthz-port).
pub const DEFAULT_HEALTHZ_ADDRESS: &str = "127.0.0.1";
pub const DEFAULT_HEALTHZ_PORT: u64 = 10248;
/// Label values nodeadm puts on hybrid nodes (docs/protocols.md "Node identity in the cluster").
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

/// `eks-hybrid:///<region>/<cluster>/<node-name>` (docs/protocols.md "Node identity in the
/// cluster").
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

/// CPU to reserve for Kubernetes daemons: 6 % of the first core, 1 % of the second, 0.5 % of
/// the next two, 0.25 % of the rest (nodeadm internal/kubelet/config.go
/// `getCPUMillicoresToReserve`).
pub fn cpu_reserved_millicores(total: u64) -> u64 {
    const RANGES: [(u64, u64, u64); 4] = [
        (0, 1000, 600),
        (1000, 2000, 100),
        (2000, 4000, 50),
        (4000, u64::MAX, 25),
    ];
    RANGES
        .iter()
        .filter(|(start, _, _)| total > *start)
        .map(|(start, end, pct)| (total.min(*end) - start) * pct / 10_000)
        .sum()
}

/// Memory to reserve for Kubernetes daemons on a hybrid node, as kubelet quantity (nodeadm
/// internal/kubelet/config.go `withHybridReservedResources`: 255Mi below 1 GiB, then 25 % of the
/// first 4 GiB, 20 % of the next 4, 10 % of the next 8, 6 % of the next 112, 2 % of the rest,
/// over whole GiB, rounded half away from zero).
pub fn memory_reserved(total_bytes: u64) -> String {
    let gib = (total_bytes / (1024 * 1024 * 1024)) as f64;
    let reserved = match gib {
        g if g < 1.0 => return "255Mi".to_owned(),
        g if g < 4.0 => g * 0.25,
        g if g < 8.0 => 0.25 * 4.0 + (g - 4.0) * 0.2,
        g if g < 16.0 => 0.25 * 4.0 + 0.2 * 4.0 + (g - 8.0) * 0.1,
        g if g <= 128.0 => 0.25 * 4.0 + 0.2 * 4.0 + 0.1 * 8.0 + (g - 16.0) * 0.06,
        g => 0.25 * 4.0 + 0.2 * 4.0 + 0.1 * 8.0 + 0.06 * 112.0 + (g - 128.0) * 0.02,
    };
    format!("{}Gi", reserved.round() as u64)
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
    if let Some(obj) = c.as_object_mut() {
        if let Some(dns) = input.cluster.service_cidr.as_deref().and_then(cluster_dns) {
            obj.insert("clusterDNS".to_owned(), json!([dns]));
        }
        obj.insert(
            "kubeReserved".to_owned(),
            json!({
                "cpu": format!("{}m", cpu_reserved_millicores(input.host.cpu_millicores)),
                "ephemeral-storage": "1Gi",
                "memory": memory_reserved(input.host.memory_bytes),
            }),
        );
        // The names only matter under the systemd cgroup driver, where kubelet.service runs in
        // runtime.slice and the system's services in system.slice. With cgroupfs (no systemd,
        // the built-in backend) no such cgroups exist; kubelet enforces neither unless
        // enforceNodeAllocatable names them, so they are left out rather than made up.
        if input.systemd_cgroups {
            obj.insert(
                "systemReservedCgroup".to_owned(),
                json!(SYSTEM_RESERVED_CGROUP),
            );
            obj.insert("kubeReservedCgroup".to_owned(), json!(KUBE_RESERVED_CGROUP));
        }
        // systemd-resolved's stub in /etc/resolv.conf is 127.0.0.53, which inside a pod is the
        // pod itself: CoreDNS would loop (coredns.io/plugins/loop). nodeadm points kubelet at the
        // upstream list on Ubuntu.
        if input.host.use_resolved_upstream() {
            obj.insert(
                "resolvConf".to_owned(),
                json!(input.host(super::facts::RESOLVED_RESOLV_CONF)),
            );
        }
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
    // The drop-in directory only when there is a drop-in: kubelet exits if it is missing.
    let dropin = minor >= DROPIN_MIN_MINOR && !user.is_empty();
    let mut files = Vec::new();
    if minor >= DROPIN_MIN_MINOR {
        files.push(RenderedFile::new(
            paths::KUBELET_CONFIG,
            pretty(&base),
            0o644,
            "kubelet configuration",
        ));
        if dropin {
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
    if dropin {
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
    if minor <= POD_INFRA_FLAG_MAX_MINOR {
        // Keeps the sandbox image from being garbage-collected before 1.29.
        args.push(format!(
            "--pod-infra-container-image={}",
            super::containerd::sandbox_image_ref(input)
        ));
    }
    // kubelet refuses to start when the configuration names a provider binary that is missing,
    // so both flags and the file come only with the installed binary.
    if input.host.ecr_credential_provider {
        files.push(image_credential_provider_config(input));
        args.push(format!(
            "--image-credential-provider-config={}",
            input.host(IMAGE_CREDENTIAL_PROVIDER_CONFIG)
        ));
        args.push(format!(
            "--image-credential-provider-bin-dir={}",
            input.host(IMAGE_CREDENTIAL_PROVIDER_DIR)
        ));
    }
    args.extend(input.node.kubelet_flags.iter().cloned());

    let env = if dropin && DROPIN_ALPHA_MINORS.contains(&minor) {
        vec![(DROPIN_ALPHA_ENV.0.to_owned(), DROPIN_ALPHA_ENV.1.to_owned())]
    } else {
        Vec::new()
    };
    // systemd splits an unbraced `$VAR` at whitespace, so a user flag holding whitespace could
    // not arrive whole through the environment file: refused, naming the flag. (Ours hold none;
    // a dry run's placeholder node name does, and only shows.)
    if let Some(bad) = input
        .node
        .kubelet_flags
        .iter()
        .find(|a| a.chars().any(char::is_whitespace))
    {
        return Err(RenderError::ArgWhitespace { arg: bad.clone() });
    }
    files.push(environment_file(&args, &env));
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

/// `/etc/eks/kubelet/environment`: kubelet's own variables and its arguments as
/// `NODEADM_KUBELET_ARGS`, one `KEY="value"` per line (nodeadm internal/kubelet/environment.go).
fn environment_file(args: &[String], env: &[(String, String)]) -> RenderedFile {
    let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut text = String::new();
    for (k, v) in env {
        text.push_str(&format!("{k}=\"{}\"\n", quote(v)));
    }
    text.push_str(&format!("{ARGS_VARIABLE}=\"{}\"\n", quote(&args.join(" "))));
    RenderedFile::new(
        ENVIRONMENT_FILE,
        text.into_bytes(),
        0o644,
        "kubelet environment (NODEADM_KUBELET_ARGS)",
    )
}

/// `/etc/eks/image-credential-provider/config.json` (nodeadm
/// internal/kubelet/image-credential-provider.go): the ECR provider for every ECR registry host,
/// with the node's AWS credentials named explicitly — systemd gives kubelet no `$HOME`, so the
/// SDK's default `~/.aws` lookup cannot be relied on.
fn image_credential_provider_config(input: &RenderInput<'_>) -> RenderedFile {
    let mut env = Vec::new();
    if input.node.provider == "iam-ra" {
        // A configured path was resolved under --root when the NodeConfig was validated.
        let config = match &input.node.aws_config_path {
            Some(p) => p.clone(),
            None => input.host(IAM_RA_AWS_CONFIG),
        };
        env.push(json!({"name": "AWS_CONFIG_FILE", "value": config}));
        env.push(json!({"name": "AWS_PROFILE", "value": IAM_RA_PROFILE}));
    } else {
        env.push(json!({
            "name": "AWS_SHARED_CREDENTIALS_FILE",
            "value": input.credentials_file.display().to_string()
        }));
        env.push(json!({"name": "AWS_PROFILE", "value": input.credentials_profile}));
    }
    let region_config = input.node.region_config.as_ref();
    let config = json!({
        "kind": "CredentialProviderConfig",
        "apiVersion": "kubelet.config.k8s.io/v1",
        "providers": [{
            "name": "ecr-credential-provider",
            "matchImages": super::ecr::match_images(&input.node.region, region_config),
            "defaultCacheDuration": CREDENTIAL_PROVIDER_CACHE,
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "env": env,
        }],
    });
    let mut bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
    bytes.push(b'\n');
    RenderedFile::new(
        IMAGE_CREDENTIAL_PROVIDER_CONFIG,
        bytes,
        0o644,
        "ECR image credential provider configuration",
    )
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
    fn cpu_reservation_follows_nodeadms_table() {
        assert_eq!(cpu_reserved_millicores(1000), 60);
        assert_eq!(cpu_reserved_millicores(2000), 70);
        assert_eq!(cpu_reserved_millicores(4000), 80);
        assert_eq!(cpu_reserved_millicores(8000), 90);
        assert_eq!(cpu_reserved_millicores(96_000), 310);
    }

    #[test]
    fn memory_reservation_follows_nodeadms_table() {
        const GIB: u64 = 1024 * 1024 * 1024;
        assert_eq!(memory_reserved(512 * 1024 * 1024), "255Mi");
        assert_eq!(memory_reserved(2 * GIB), "1Gi");
        assert_eq!(memory_reserved(6 * GIB), "1Gi");
        assert_eq!(memory_reserved(16 * GIB), "3Gi");
        assert_eq!(memory_reserved(64 * GIB), "5Gi");
        assert_eq!(memory_reserved(256 * GIB), "12Gi");
    }

    #[test]
    fn versions() {
        assert_eq!(minor("1.31.2").ok(), Some(31));
        assert_eq!(minor("1.27").ok(), Some(27));
        assert!(minor("2.0.0").is_err());
    }
}
