//! Every host path the agent reads or writes, resolved beneath `--root DIR`.
//!
//! Tests and the demo run the real binary against a temporary directory instead of `/`, so no
//! code may open a host path directly: it asks [`HostPaths`] for it. The constants below are the
//! absolute paths on a real host (what `--root /` yields); each says where the location comes from.
//!
//! Two kinds of paths are deliberately *not* re-rooted: paths the user types on the command line
//! (`--activation-code-file`, `--config-source file://…`, `--config`) are taken as given,
//! relative to the current directory, because that is what the user sees in their shell. Paths
//! written inside configuration files that name host locations (credentials file, CA bundle,
//! spool directory, IAM Roles Anywhere certificate) are host paths and go through
//! [`HostPaths::resolve`].

use std::path::{Component, Path, PathBuf};

/// Agent configuration (TOML, optional). Ours: docs/host-paths.md "Agent files".
pub const AGENT_CONFIG: &str = "/etc/hybrid-agent/config.toml";
/// Agent state: registration, RSA key (0600), fingerprint, install tracker, cursors. Ours:
/// docs/host-paths.md "Agent files".
pub const STATE_DIR: &str = "/var/lib/hybrid-agent";
/// Durable telemetry spool (default of `spool.dir`). Ours: docs/host-paths.md "Telemetry files".
pub const SPOOL_DIR: &str = "/var/lib/hybrid-agent/spool";
/// Reserved for a local status socket; not created today: `hybrid-agent status` reads the
/// daemon's state file instead. Ours: docs/host-paths.md "Agent files".
pub const STATUS_SOCKET: &str = "/run/hybrid-agent/status.sock";
/// Shared credentials file kubelet's exec plugin reads. nodeadm default (docs/host-paths.md
/// "Credentials files").
pub const AWS_CREDENTIALS: &str = "/root/.aws/credentials";
/// Extra credentials file exposed when `spec.hybrid.enableCredentialsFile` is set (pod identity
/// agent on hybrid nodes). nodeadm (docs/host-paths.md "Credentials files").
pub const EKS_HYBRID_AWS_CREDENTIALS: &str = "/eks-hybrid/.aws/credentials";
/// Default IAM Roles Anywhere certificate when the NodeConfig names none. nodeadm's integration
/// tests create this file before `nodeadm init` (unverified as a documented default).
pub const IAM_RA_CERTIFICATE: &str = "/etc/iam/pki/server.pem";
/// Default IAM Roles Anywhere private key when the NodeConfig names none. nodeadm (as above).
pub const IAM_RA_PRIVATE_KEY: &str = "/etc/iam/pki/server.key";
/// kubelet configuration. nodeadm (docs/host-paths.md "kubelet").
pub const KUBELET_CONFIG: &str = "/etc/kubernetes/kubelet/config.json";
/// kubelet configuration drop-ins (kubelet ≥ 1.28). nodeadm (docs/host-paths.md "kubelet").
pub const KUBELET_CONFIG_DROPINS: &str = "/etc/kubernetes/kubelet/config.json.d";
/// kubelet kubeconfig with the aws-iam-authenticator exec plugin. nodeadm (docs/host-paths.md
/// "kubelet").
pub const KUBELET_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
/// Cluster CA bundle kubelet trusts. nodeadm (docs/host-paths.md "kubelet").
pub const CLUSTER_CA: &str = "/etc/kubernetes/pki/ca.crt";
/// containerd configuration (version 2). nodeadm (docs/host-paths.md "containerd and CNI").
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Drop-in directory imported by the containerd config, for administrators' own drop-ins (the
/// NodeConfig's TOML is merged into the config instead). nodeadm imports its drop-in from here
/// (docs/host-paths.md "containerd and CNI").
pub const CONTAINERD_DROPINS: &str = "/etc/containerd/config.d";
/// CNI plugin binaries. containerd/nodeadm convention (docs/host-paths.md "containerd and CNI").
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// CNI network configurations. containerd/nodeadm convention (docs/host-paths.md "containerd
/// and CNI").
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// sysctl settings (ip_forward=1 …). nodeadm writes `/etc/sysctl.d/99-*.conf`
/// (docs/host-paths.md "System settings").
pub const SYSCTL_CONF: &str = "/etc/sysctl.d/99-hybrid-agent.conf";
/// Kernel modules to load at boot (overlay, br_netfilter). nodeadm (docs/host-paths.md "System
/// settings").
pub const MODULES_LOAD_CONF: &str = "/etc/modules-load.d/hybrid-agent.conf";
/// systemd unit files the systemd backend installs. systemd's admin unit directory.
pub const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";

/// The host's filesystem as seen through `--root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    root: PathBuf,
}

impl HostPaths {
    /// Paths beneath `root` (`/` on a real host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root every host path is resolved beneath.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a host path beneath the root. The path is interpreted as if `/` were the root:
    /// `..` cannot climb above it (a config file naming `/../../etc/shadow` stays inside `--root`),
    /// and a relative path is taken from the root, as a service whose working directory is `/`
    /// would see it.
    pub fn resolve(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let mut inside = PathBuf::new();
        for component in host_path.as_ref().components() {
            match component {
                Component::Normal(part) => inside.push(part),
                Component::ParentDir => {
                    inside.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        self.root.join(inside)
    }

    /// Default agent configuration file.
    pub fn agent_config(&self) -> PathBuf {
        self.resolve(AGENT_CONFIG)
    }
    /// Agent state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(STATE_DIR)
    }
    /// Default telemetry spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.resolve(SPOOL_DIR)
    }
    /// Status socket of the daemon.
    pub fn status_socket(&self) -> PathBuf {
        self.resolve(STATUS_SOCKET)
    }
    /// Default shared credentials file.
    pub fn aws_credentials(&self) -> PathBuf {
        self.resolve(AWS_CREDENTIALS)
    }
    /// Credentials file exposed by `enableCredentialsFile`.
    pub fn eks_hybrid_aws_credentials(&self) -> PathBuf {
        self.resolve(EKS_HYBRID_AWS_CREDENTIALS)
    }
    /// kubelet configuration file.
    pub fn kubelet_config(&self) -> PathBuf {
        self.resolve(KUBELET_CONFIG)
    }
    /// kubelet configuration drop-in directory.
    pub fn kubelet_config_dropins(&self) -> PathBuf {
        self.resolve(KUBELET_CONFIG_DROPINS)
    }
    /// kubelet kubeconfig.
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.resolve(KUBELET_KUBECONFIG)
    }
    /// Cluster CA bundle.
    pub fn cluster_ca(&self) -> PathBuf {
        self.resolve(CLUSTER_CA)
    }
    /// containerd configuration file.
    pub fn containerd_config(&self) -> PathBuf {
        self.resolve(CONTAINERD_CONFIG)
    }
    /// containerd drop-in directory.
    pub fn containerd_dropins(&self) -> PathBuf {
        self.resolve(CONTAINERD_DROPINS)
    }
    /// CNI plugin directory.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.resolve(CNI_BIN_DIR)
    }
    /// CNI configuration directory.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.resolve(CNI_CONF_DIR)
    }
    /// sysctl drop-in.
    pub fn sysctl_conf(&self) -> PathBuf {
        self.resolve(SYSCTL_CONF)
    }
    /// modules-load drop-in.
    pub fn modules_load_conf(&self) -> PathBuf {
        self.resolve(MODULES_LOAD_CONF)
    }
    /// systemd unit directory.
    pub fn systemd_unit_dir(&self) -> PathBuf {
        self.resolve(SYSTEMD_UNIT_DIR)
    }
}

impl Default for HostPaths {
    /// The real host: root `/`.
    fn default() -> Self {
        Self::new("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_root_keeps_paths() {
        let paths = HostPaths::default();
        assert_eq!(paths.agent_config(), PathBuf::from(AGENT_CONFIG));
        assert_eq!(
            paths.kubelet_kubeconfig(),
            PathBuf::from(KUBELET_KUBECONFIG)
        );
    }

    #[test]
    fn paths_resolve_beneath_root() {
        let paths = HostPaths::new("/tmp/r");
        assert_eq!(
            paths.aws_credentials(),
            PathBuf::from("/tmp/r/root/.aws/credentials")
        );
        assert_eq!(
            paths.resolve("relative/x"),
            PathBuf::from("/tmp/r/relative/x")
        );
    }

    #[test]
    fn parent_components_cannot_escape_root() {
        let paths = HostPaths::new("/tmp/r");
        assert_eq!(
            paths.resolve("/../../etc/shadow"),
            PathBuf::from("/tmp/r/etc/shadow")
        );
        assert_eq!(
            paths.resolve("/etc/./a/../b"),
            PathBuf::from("/tmp/r/etc/b")
        );
    }
}
