//! nodeadm's `NodeConfig` (`node.eks.aws/v1alpha1`), accepted as-is, plus the flag overlay.
//!
//! The types mirror every field of nodeadm's v1alpha1 API — the union of the hybrid-nodes
//! nodeadm (aws/eks-hybrid, `api/v1alpha1/nodeconfig_types.go`: `spec.hybrid`,
//! `spec.cluster.region`) and the EC2 nodeadm it forked from (awslabs/amazon-eks-ami:
//! `spec.instance.localStorage`, `spec.containerd.baseRuntimeSpec`, `spec.featureGates`) — so a
//! nodeadm user's file works unchanged while a misspelled key is still reported. Fields that only
//! make sense on EC2 are accepted and ignored, except where accepting them would silently do the
//! wrong thing (validation says which).
//!
//! nodeadm's decoder is more forgiving than serde (case-insensitive keys, YAML 1.1 booleans,
//! numbers in string fields); `compat` brings a document to these types' spelling first.
//!
//! Every field is optional here; requiredness is checked in `validate`, which can then say
//! "set spec.cluster.name in the NodeConfig or pass --cluster".

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// The only NodeConfig `apiVersion` nodeadm defines.
pub const API_VERSION: &str = "node.eks.aws/v1alpha1";
/// The NodeConfig `kind`.
pub const KIND: &str = "NodeConfig";
/// The config-source scheme supported (nodeadm also has `imds://`, which is EC2-only).
pub const FILE_SCHEME: &str = "file://";

/// `NodeConfig` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfigFile {
    /// Must be `node.eks.aws/v1alpha1`.
    pub api_version: Option<String>,
    /// Must be `NodeConfig`.
    pub kind: Option<String>,
    /// Kubernetes ObjectMeta; accepted for compatibility, not used by the agent.
    #[expect(
        dead_code,
        reason = "accepted so nodeadm files load unchanged; the agent has no use for it"
    )]
    pub metadata: Option<serde_json::Value>,
    /// The node specification.
    pub spec: Option<Spec>,
    /// What nodeadm records about the node. nodeadm's file decoder accepts it (its internal
    /// `NodeConfig` has `status`, `internal/api/types.go`) and `init` overwrites it, so it is
    /// checked for typos like nodeadm does, and ignored.
    #[expect(
        dead_code,
        reason = "accepted so nodeadm files load unchanged; nodeadm overwrites it too"
    )]
    pub status: Option<Status>,
}

/// `status` (nodeadm `internal/api/types.go` `NodeConfigStatus`).
#[expect(
    dead_code,
    reason = "status is overwritten by nodeadm init; checked for typos only"
)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Status {
    /// EC2 instance details (`InstanceDetails`).
    pub instance: Option<StatusInstance>,
    /// Hybrid details (`HybridDetails`).
    pub hybrid: Option<StatusHybrid>,
    /// Defaults (`DefaultOptions`; the key is `default`).
    pub default: Option<StatusDefaults>,
}

/// `status.instance`.
#[expect(
    dead_code,
    reason = "EC2 instance details: checked for typos, never used"
)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusInstance {
    /// Instance id.
    pub id: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Instance type.
    #[serde(rename = "type")]
    pub instance_type: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// MAC address.
    pub mac: Option<String>,
    /// Private DNS name.
    pub private_dns_name: Option<String>,
}

/// `status.hybrid`.
#[expect(
    dead_code,
    reason = "nodeadm overwrites status; checked for typos only"
)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusHybrid {
    /// The node name nodeadm chose.
    pub node_name: Option<String>,
}

/// `status.default`.
#[expect(
    dead_code,
    reason = "nodeadm overwrites status; checked for typos only"
)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusDefaults {
    /// The pause image nodeadm computed.
    pub sandbox_image: Option<String>,
}

/// `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// `spec.cluster`.
    pub cluster: Option<ClusterDetails>,
    /// `spec.containerd`.
    pub containerd: Option<ContainerdOptions>,
    /// `spec.instance` (EC2 instance-store options).
    pub instance: Option<InstanceOptions>,
    /// `spec.kubelet`.
    pub kubelet: Option<KubeletOptions>,
    /// `spec.featureGates`.
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// `spec.hybrid`.
    pub hybrid: Option<HybridOptions>,
}

/// `spec.cluster`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterDetails {
    /// EKS cluster name.
    pub name: Option<String>,
    /// AWS region of the cluster.
    pub region: Option<String>,
    /// kube-apiserver URL (else from DescribeCluster).
    pub api_server_endpoint: Option<String>,
    /// Base64 CA bundle (else from DescribeCluster).
    pub certificate_authority: Option<String>,
    /// Service CIDR (else from DescribeCluster).
    pub cidr: Option<String>,
    /// EC2 Outposts only.
    pub enable_outpost: Option<bool>,
    /// EC2 Outposts cluster id only.
    pub id: Option<String>,
}

/// `spec.containerd`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerdOptions {
    /// Inline containerd TOML imported as a drop-in.
    pub config: Option<String>,
    /// OCI runtime spec merged into the default (EC2 nodeadm).
    pub base_runtime_spec: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `spec.instance`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceOptions {
    /// EC2 instance-store handling.
    pub local_storage: Option<LocalStorageOptions>,
}

/// `spec.instance.localStorage`. Deserialized only to check it; the values are never used.
#[expect(
    dead_code,
    reason = "EC2 instance-store settings: checked for typos, ignored on hybrid nodes"
)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalStorageOptions {
    /// How instance-store disks are used.
    pub strategy: Option<LocalStorageStrategy>,
    /// Where they are mounted.
    pub mount_path: Option<String>,
    /// Directories not moved onto local storage.
    pub disabled_mounts: Option<Vec<DisabledMount>>,
}

/// `spec.instance.localStorage.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum LocalStorageStrategy {
    /// One RAID-0 volume.
    #[serde(rename = "RAID0")]
    Raid0,
    /// One RAID-10 volume.
    #[serde(rename = "RAID10")]
    Raid10,
    /// Each disk mounted separately.
    Mount,
}

/// `spec.instance.localStorage.disabledMounts[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DisabledMount {
    /// `/var/lib/containerd`.
    Containerd,
    /// `/var/log/pods`.
    PodLogs,
}

/// `spec.kubelet`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletOptions {
    /// KubeletConfiguration fields merged over the defaults.
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extra kubelet flags, appended last.
    pub flags: Option<Vec<String>>,
}

/// `spec.hybrid`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HybridOptions {
    /// Also expose credentials at `/eks-hybrid/.aws/credentials`.
    pub enable_credentials_file: Option<bool>,
    /// IAM Roles Anywhere credentials.
    pub iam_roles_anywhere: Option<IamRolesAnywhere>,
    /// SSM hybrid activation credentials.
    pub ssm: Option<Ssm>,
}

/// `spec.hybrid.iamRolesAnywhere`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IamRolesAnywhere {
    /// Node name (also the role session name).
    pub node_name: Option<String>,
    /// Trust anchor ARN.
    pub trust_anchor_arn: Option<String>,
    /// Profile ARN.
    pub profile_arn: Option<String>,
    /// Role ARN.
    pub role_arn: Option<String>,
    /// AWS config file nodeadm writes for the signing helper.
    pub aws_config_path: Option<String>,
    /// X.509 certificate (PEM).
    pub certificate_path: Option<String>,
    /// Private key of the certificate (PEM).
    pub private_key_path: Option<String>,
}

/// `spec.hybrid.ssm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ssm {
    /// Activation code (secret).
    pub activation_code: Option<Secret>,
    /// Activation id (UUID).
    pub activation_id: Option<String>,
}

/// How the activation code reaches the agent from outside a NodeConfig file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationCodeInput {
    /// `--activation-code CODE` (visible in `ps`; a warning is logged).
    Flag(Secret),
    /// `--activation-code-file FILE`, read at load time.
    File(PathBuf),
    /// `HYBRID_AGENT_ACTIVATION_CODE`.
    Env(Secret),
}

/// Node settings given as flags; each one overrides the same field from `--config-source`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    /// `--cluster` → `spec.cluster.name`.
    pub cluster: Option<String>,
    /// `--region` → `spec.cluster.region`.
    pub region: Option<String>,
    /// `--activation-id` → `spec.hybrid.ssm.activationId`.
    pub activation_id: Option<String>,
    /// `--activation-code[-file]` or the environment → `spec.hybrid.ssm.activationCode`.
    pub activation_code: Option<ActivationCodeInput>,
    /// `--node-name` → `spec.hybrid.iamRolesAnywhere.nodeName`.
    pub node_name: Option<String>,
    /// `--trust-anchor-arn`.
    pub trust_anchor_arn: Option<String>,
    /// `--profile-arn`.
    pub profile_arn: Option<String>,
    /// `--role-arn`.
    pub role_arn: Option<String>,
    /// `--certificate-path` (taken as given, relative to the current directory).
    pub certificate_path: Option<PathBuf>,
    /// `--private-key-path` (taken as given).
    pub private_key_path: Option<PathBuf>,
}

impl NodeOverrides {
    /// True when no node setting was given on the command line.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The node half of the input: a NodeConfig source and/or flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInput {
    /// `--config-source` as typed (must be `file://PATH`).
    pub config_source: Option<String>,
    /// Flag values.
    pub overrides: NodeOverrides,
}

impl NodeInput {
    /// True when neither a NodeConfig nor any node flag was given.
    pub fn is_empty(&self) -> bool {
        self.config_source.is_none() && self.overrides.is_empty()
    }
}

/// The path of a `file://PATH` config source, or a message saying what is wrong.
pub fn parse_config_source(source: &str) -> Result<PathBuf, String> {
    match source.strip_prefix(FILE_SCHEME) {
        Some("") => Err(format!("`{source}` names no file")),
        Some(path) => Ok(PathBuf::from(path)),
        None => {
            let scheme = source.split_once("://").map(|(s, _)| s);
            Err(match scheme {
                Some("imds") => {
                    "`imds://` reads EC2 user data, which hybrid nodes do not have".to_owned()
                }
                Some(other) => format!("scheme `{other}://` is not supported"),
                None => format!("`{source}` has no scheme"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_source_must_be_file() {
        assert_eq!(
            parse_config_source("file:///etc/n.yaml"),
            Ok(PathBuf::from("/etc/n.yaml"))
        );
        assert_eq!(
            parse_config_source("file://n.yaml"),
            Ok(PathBuf::from("n.yaml"))
        );
        assert!(parse_config_source("file://").is_err());
        assert!(parse_config_source("imds://user-data").is_err_and(|e| e.contains("EC2")));
        assert!(parse_config_source("https://x/n.yaml").is_err());
        assert!(parse_config_source("/etc/n.yaml").is_err_and(|e| e.contains("no scheme")));
    }

    #[test]
    fn full_nodeadm_file_deserializes() {
        let yaml = r#"
apiVersion: node.eks.aws/v1alpha1
kind: NodeConfig
metadata: {name: n}
spec:
  cluster:
    name: c
    region: us-west-2
    apiServerEndpoint: https://example.com
    certificateAuthority: Y2E=
    cidr: 10.100.0.0/16
    enableOutpost: false
    id: x
  containerd:
    config: "version = 2"
    baseRuntimeSpec: {process: {rlimits: []}}
  instance:
    localStorage: {strategy: RAID10, mountPath: /mnt/k8s-disks, disabledMounts: [Containerd, PodLogs]}
  kubelet:
    config: {shutdownGracePeriod: 30s, maxPods: 110}
    flags: [--node-labels=a=b]
  featureGates: {InstanceIdNodeName: true}
  hybrid:
    enableCredentialsFile: true
    iamRolesAnywhere:
      nodeName: n
      trustAnchorArn: a
      profileArn: p
      roleArn: r
      awsConfigPath: /etc/aws/hybrid/config
      certificatePath: /c
      privateKeyPath: /k
"#;
        let parsed: Result<NodeConfigFile, _> = serde_yaml_ng::from_str(yaml);
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
