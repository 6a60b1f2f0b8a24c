//! Node configuration: every file kubelet and containerd need, rendered from the validated
//! NodeConfig the way nodeadm writes them (docs/host-paths.md "Files shared with nodeadm"), so a
//! nodeadm user finds each one where they expect it.
//!
//! Rendering is pure: [`render`] turns a [`RenderInput`] into a list of [`RenderedFile`]s plus the
//! command lines, with no I/O, so every file has a snapshot test. [`apply`] writes them through
//! the install [`Journal`](crate::node::land::Journal), which skips files whose content and
//! mode are already right (a second `join` with the same configuration changes nothing) and
//! keeps backups of what it replaces (so a failed join or `leave` can put them back).
//!
//! Paths inside the files are host paths re-rooted under `--root`: with `--root /` they are
//! exactly nodeadm's; in a sandbox they point into the sandbox, so containerd and kubelet
//! started there never touch the real host.

pub mod cluster;
pub mod containerd;
pub mod ecr;
pub mod facts;
pub mod host;
pub mod kubeconfig;
pub mod kubelet;
pub mod land;
pub mod mounts;
pub mod proxy;
pub mod serving_cert;
pub mod system;
pub mod timesync;

use std::path::{Path, PathBuf};

pub use cluster::{ClusterDetails, ClusterError};
pub use facts::HostFacts;

use serde::{Deserialize, Serialize};

use crate::config::{NetworkConfig, NodeSettings, Provider};
use crate::node::land::{Journal, LandError, Written};
use crate::paths::{self, HostPaths};

/// The parts of the validated NodeConfig the renderers use. Kept in the node record so
/// `upgrade` renders again from exactly what `join` used, without the NodeConfig file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub cluster: String,
    pub region: String,
    /// DNS suffix of the region's partition (`amazonaws.com`, `amazonaws.com.cn`).
    pub dns_suffix: String,
    /// `ssm` or `iam-ra` (the credential-provider label).
    pub provider: String,
    /// `spec.kubelet.config`.
    pub kubelet_config: serde_json::Map<String, serde_json::Value>,
    /// `spec.kubelet.flags`, appended last.
    pub kubelet_flags: Vec<String>,
    /// `spec.containerd.config` (may hold registry credentials).
    pub containerd_config: Option<String>,
    /// `spec.containerd.baseRuntimeSpec`.
    pub base_runtime_spec: serde_json::Map<String, serde_json::Value>,
    /// `spec.hybrid.iamRolesAnywhere.awsConfigPath` (resolved under `--root`), IAM Roles
    /// Anywhere only.
    #[serde(default)]
    pub aws_config_path: Option<String>,
    /// The manifest's `region_config` entry for this region (ECR account and DNS suffix of the
    /// EKS images), set from the install phase; `None` falls back to nodeadm's table.
    #[serde(default)]
    pub region_config: Option<ecr::RegionConfig>,
}

impl NodeSpec {
    pub fn from_settings(node: &NodeSettings) -> Self {
        Self {
            cluster: node.cluster.name.clone(),
            region: node.cluster.region.as_str().to_owned(),
            dns_suffix: node.cluster.region.dns_suffix().to_owned(),
            provider: node.provider.label().to_owned(),
            kubelet_config: node.kubelet.config.clone(),
            kubelet_flags: node.kubelet.flags.clone(),
            containerd_config: node.containerd.config.clone(),
            base_runtime_spec: node.containerd.base_runtime_spec.clone(),
            aws_config_path: match &node.provider {
                Provider::IamRolesAnywhere {
                    aws_config_path, ..
                } => aws_config_path.as_ref().map(|p| p.display().to_string()),
                Provider::Ssm { .. } => None,
            },
            region_config: None,
        }
    }
}

/// Everything the renderers read.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    pub node: &'a NodeSpec,
    /// The Kubernetes node name: the `mi-…` id (SSM) or the IAM Roles Anywhere nodeName.
    pub node_name: &'a str,
    pub cluster: &'a ClusterDetails,
    /// Installed Kubernetes version, e.g. `1.31.2`.
    pub kubernetes_version: &'a str,
    pub paths: &'a HostPaths,
    /// The shared credentials file the identity module writes (resolved path) and its profile.
    pub credentials_file: &'a Path,
    pub credentials_profile: &'a str,
    /// IAM Roles Anywhere: the AWS config file whose profile runs `credential_process`
    /// (resolved path); kubelet's authenticator reads it instead of the credentials file.
    pub aws_config_file: Option<&'a Path>,
    /// True when systemd manages the host's cgroups (PID 1 is systemd): kubelet and runc then
    /// use the systemd cgroup driver, as nodeadm configures; on hosts without systemd (the
    /// built-in supervisor) they must use cgroupfs, or kubelet refuses to start.
    pub systemd_cgroups: bool,
    /// CPU, memory, OS and installed-provider facts ([`HostFacts::read`] at join).
    pub host: &'a HostFacts,
    /// The agent's `[network]` settings: proxy and extra CA bundle for containerd and kubelet.
    pub network: &'a NetworkConfig,
}

impl RenderInput<'_> {
    /// A host path as the rendered files must name it (re-rooted under `--root`).
    pub fn host(&self, host_path: &str) -> String {
        self.paths.resolve(host_path).display().to_string()
    }
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Host path (not re-rooted).
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
    /// What it is, for `--dry-run` and logs.
    pub what: &'static str,
}

impl RenderedFile {
    pub fn new(path: impl Into<PathBuf>, content: Vec<u8>, mode: u32, what: &'static str) -> Self {
        Self {
            path: path.into(),
            content,
            mode,
            what,
        }
    }
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("`{version}` is not a Kubernetes 1.x version")]
    Version { version: String },
    #[error(
        "swap partition {devices} is on; join turns off swap files but not partitions (nodeadm refuses them too: a partition comes back at boot). Turn it off (`swapoff {devices}` and remove its line from /etc/fstab), or allow swap with `failSwapOn: false` in spec.kubelet.config"
    )]
    SwapOn { devices: String },
    #[error(
        "the kubelet argument `{arg}` holds whitespace, which cannot pass through NODEADM_KUBELET_ARGS in /etc/eks/kubelet/environment (systemd splits it into words); remove the whitespace from spec.kubelet.flags"
    )]
    ArgWhitespace { arg: String },
    #[error(
        "spec.containerd.config {problem}; it is merged into containerd's config version 2 (/etc/containerd/config.toml), so write it for config version 2"
    )]
    ContainerdConfig { problem: String },
    #[error(transparent)]
    Land(#[from] LandError),
}

/// The rendered node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    pub kubelet_args: Vec<String>,
    pub kubelet_env: Vec<(String, String)>,
    pub kubelet_healthz_url: String,
    /// `/etc/eks/kubelet/environment` (resolved), which kubelet.service reads.
    pub kubelet_environment_file: PathBuf,
    pub containerd_args: Vec<String>,
    /// containerd's environment (proxy, CA bundle), for the built-in process backend; systemd
    /// reads the same from the rendered drop-ins.
    pub containerd_env: Vec<(String, String)>,
    /// containerd's socket (resolved path), for its health probe.
    pub containerd_socket: PathBuf,
}

/// Renders every file. Pure: no I/O.
pub fn render(input: &RenderInput<'_>) -> Result<Rendered, RenderError> {
    let mut files = containerd::render(input)?;
    let kubelet = kubelet::render(input)?;
    files.extend(kubelet.files);
    files.extend(proxy::render(input));
    let network_env = proxy::env(input);
    let mut kubelet_env = kubelet.env;
    kubelet_env.extend(network_env.iter().cloned());
    files.push(kubeconfig::render(input));
    files.push(RenderedFile::new(
        paths::CLUSTER_CA,
        input.cluster.ca_pem.clone(),
        0o644,
        "cluster CA bundle",
    ));
    files.extend(system::render());
    Ok(Rendered {
        files,
        kubelet_args: kubelet.args,
        kubelet_env,
        kubelet_healthz_url: kubelet.healthz_url,
        kubelet_environment_file: input.paths.resolve(kubelet::ENVIRONMENT_FILE),
        containerd_args: containerd::args(input),
        containerd_env: network_env,
        containerd_socket: input.paths.resolve(containerd::CONTAINERD_SOCKET),
    })
}

/// The active swap files join turns off, as nodeadm does (`internal/system/swap.go`): none when
/// kubelet is told to accept swap; an error for a swap partition, which nodeadm refuses.
pub fn check_swap(
    paths: &HostPaths,
    node: &NodeSpec,
) -> Result<Vec<system::SwapArea>, RenderError> {
    if kubelet::swap_allowed(&node.kubelet_config) {
        return Ok(Vec::new());
    }
    let areas = system::swap_areas(paths);
    let partitions: Vec<&str> = areas
        .iter()
        .filter(|a| a.is_partition())
        .map(|a| a.path.as_str())
        .collect();
    if !partitions.is_empty() {
        return Err(RenderError::SwapOn {
            devices: partitions.join(" "),
        });
    }
    Ok(areas)
}

/// Directories a node needs besides the files' own: CNI's, and the data and state directories
/// of containerd and kubelet (`true` = owned as a whole tree: removed with content on rollback).
pub const DIRECTORIES: [(&str, bool, u32); 6] = [
    (paths::CNI_BIN_DIR, false, 0o755),
    (paths::CNI_CONF_DIR, false, 0o755),
    (containerd::CONTAINERD_ROOT, true, 0o711),
    (containerd::CONTAINERD_STATE, true, 0o711),
    (containerd::CONTAINERD_OPT, true, 0o711),
    ("/var/lib/kubelet", true, 0o700),
];

/// What [`apply`] did to each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub path: PathBuf,
    pub what: &'static str,
    pub written: Written,
}

/// Writes the rendered files (only those whose content or mode differ) and creates the node's
/// directories, recording everything in `journal`.
pub fn apply(rendered: &Rendered, journal: &mut Journal) -> Result<Vec<Applied>, RenderError> {
    for (dir, tree, mode) in DIRECTORIES {
        if tree {
            journal.ensure_tree(Path::new(dir), mode)?;
        } else {
            journal.ensure_dir(Path::new(dir))?;
        }
    }
    let mut out = Vec::new();
    for f in &rendered.files {
        let written = journal.write_file(&f.path, &f.content, f.mode)?;
        out.push(Applied {
            path: f.path.clone(),
            what: f.what,
            written,
        });
    }
    Ok(out)
}
