//! NodeConfig + flags → typed [`NodeSettings`], checking everything once and reporting all.
//!
//! Flags are laid over the file field by field (a flag wins where both are given) and each
//! overridden field remembers its flag, so a problem points at `flag --activation-id` rather than
//! at a file line the user did not write. Missing values are reported once, naming both ways to
//! supply them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Serialize, Serializer};

use super::SourceFile;
use super::env::ACTIVATION_CODE_ENV;
use super::node::{
    API_VERSION, ActivationCodeInput, ClusterDetails, HybridOptions, IamRolesAnywhere, KIND,
    KubeletOptions, NodeConfigFile, NodeOverrides, Spec, Ssm,
};
use super::problem::{Location, Problem, Problems};
use super::secret::{REDACTED, Secret};
use super::types::{Region, SafeUrl, is_hyphenated_uuid, parse_cidr};
use crate::paths::{self, HostPaths};

/// Shortest activation code SSM issues (docs/protocols.md "RegisterManagedInstance").
pub const MIN_ACTIVATION_CODE_LEN: usize = 20;
/// Longest EKS cluster name (EKS CreateCluster `name`).
pub const MAX_CLUSTER_NAME_LEN: usize = 100;
/// Longest IAM Roles Anywhere node name: it is the role session name, ≤ 64 characters (STS).
pub const MAX_NODE_NAME_LEN: usize = 64;
/// kubelet flags the agent sets itself; nodeadm also forbids users to set them
/// (docs/protocols.md "NodeConfig").
pub const RESERVED_KUBELET_FLAGS: [&str; 1] = ["--hostname-override"];
/// Feature gates nodeadm defines (`InstanceIdNodeName`, EC2 only: accepted, ignored).
pub const KNOWN_FEATURE_GATES: [&str; 1] = ["InstanceIdNodeName"];
/// Keys whose values are redacted when `spec.containerd.config` is shown (registry auth).
const SECRET_KEY_PARTS: [&str; 5] = ["password", "auth", "token", "secret", "key"];

/// Validated cluster coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// EKS cluster name.
    pub name: String,
    /// AWS region.
    pub region: Region,
    /// kube-apiserver URL, when given (else DescribeCluster supplies it).
    pub api_server_endpoint: Option<SafeUrl>,
    /// CA bundle bytes, when given (shown base64 as in the NodeConfig).
    #[serde(serialize_with = "serialize_base64")]
    pub certificate_authority: Option<Vec<u8>>,
    /// Service CIDR, when given.
    pub cidr: Option<String>,
}

/// Where the node's AWS credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Provider {
    /// SSM hybrid activation.
    #[serde(rename = "ssm")]
    Ssm {
        /// Activation id (UUID).
        activation_id: String,
        /// Activation code (never shown).
        activation_code: Secret,
    },
    /// IAM Roles Anywhere with an X.509 certificate.
    #[serde(rename = "iamRolesAnywhere")]
    IamRolesAnywhere {
        /// Node name and role session name.
        node_name: String,
        /// Trust anchor ARN.
        trust_anchor_arn: String,
        /// Profile ARN.
        profile_arn: String,
        /// Role ARN.
        role_arn: String,
        /// Certificate (PEM).
        certificate_path: PathBuf,
        /// Private key (PEM; the path is shown, the key never is).
        private_key_path: PathBuf,
        /// AWS config file for other tools, when given.
        aws_config_path: Option<PathBuf>,
    },
}

impl Provider {
    /// Short name: `ssm` or `iam-ra` (the node label value nodeadm uses).
    pub fn label(&self) -> &'static str {
        match self {
            Provider::Ssm { .. } => "ssm",
            Provider::IamRolesAnywhere { .. } => "iam-ra",
        }
    }

    /// Where the node's identity (and Kubernetes node name) comes from.
    pub fn identity_source(&self) -> String {
        match self {
            Provider::Ssm { .. } => {
                "SSM managed-instance id (mi-…), assigned at registration".to_owned()
            }
            Provider::IamRolesAnywhere { node_name, .. } => {
                format!("nodeName `{node_name}` (IAM Roles Anywhere session name)")
            }
        }
    }
}

/// kubelet overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kubelet {
    /// KubeletConfiguration fields merged over the defaults.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Extra flags, appended last.
    pub flags: Vec<String>,
}

/// containerd overrides. `Debug` shows the TOML as `config show` does, credentials redacted.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Containerd {
    /// Inline TOML imported as a drop-in (shown with credential-like values redacted).
    #[serde(serialize_with = "serialize_containerd_toml")]
    pub config: Option<String>,
    /// OCI runtime spec merged into the default.
    pub base_runtime_spec: serde_json::Map<String, serde_json::Value>,
}

/// The validated node half of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSettings {
    /// Cluster coordinates.
    pub cluster: Cluster,
    /// Credential provider.
    pub provider: Provider,
    /// Also expose credentials at `/eks-hybrid/.aws/credentials`.
    pub enable_credentials_file: bool,
    /// kubelet overrides.
    pub kubelet: Kubelet,
    /// containerd overrides.
    pub containerd: Containerd,
    /// Feature gates as given.
    pub feature_gates: BTreeMap<String, bool>,
}

fn serialize_base64<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        None => s.serialize_none(),
    }
}

fn serialize_containerd_toml<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(text) => s.serialize_str(&redacted_containerd_toml(text)),
    }
}

/// The containerd TOML with credential-like values redacted; all of it redacted when it does
/// not parse (nothing then tells which part is a secret).
fn redacted_containerd_toml(text: &str) -> String {
    match text.parse::<toml::Table>() {
        Ok(mut table) => {
            redact_toml(&mut table);
            toml::to_string(&table).unwrap_or_else(|_| REDACTED.to_owned())
        }
        Err(_) => REDACTED.to_owned(),
    }
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field(
                "config",
                &self.config.as_deref().map(redacted_containerd_toml),
            )
            .field("base_runtime_spec", &self.base_runtime_spec)
            .finish()
    }
}

/// Replaces values whose key looks like a credential (`password`, `auth`, `identitytoken` …).
fn redact_toml(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        let lower = key.to_ascii_lowercase();
        if SECRET_KEY_PARTS.iter().any(|part| lower.contains(part)) && !value.is_table() {
            *value = toml::Value::String(REDACTED.to_owned());
        } else {
            redact_toml_value(value);
        }
    }
}

fn redact_toml_value(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => redact_toml(t),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_toml_value),
        _ => {}
    }
}

/// Field path → where its value came from, for fields set by flags or the environment.
pub(crate) type Origins = BTreeMap<&'static str, Location>;

/// Lays the flags over the file's values and records each overridden field's origin. Reading
/// `--activation-code-file` happens here, so an unreadable file is reported like any problem.
pub(crate) fn apply_overrides(
    raw: &mut NodeConfigFile,
    overrides: &NodeOverrides,
    problems: &mut Problems,
) -> Origins {
    let mut origins = Origins::new();
    let flag = |name: &str| Location::Flag(name.to_owned());
    let spec = raw.spec.get_or_insert_with(Spec::default);

    if let Some(name) = &overrides.cluster {
        spec.cluster
            .get_or_insert_with(ClusterDetails::default)
            .name = Some(name.clone());
        origins.insert("spec.cluster.name", flag("--cluster"));
    }
    if let Some(region) = &overrides.region {
        spec.cluster
            .get_or_insert_with(ClusterDetails::default)
            .region = Some(region.clone());
        origins.insert("spec.cluster.region", flag("--region"));
    }

    if let Some(id) = &overrides.activation_id {
        ssm_of(spec).activation_id = Some(id.clone());
        origins.insert("spec.hybrid.ssm.activationId", flag("--activation-id"));
    }
    type Slot = fn(&mut IamRolesAnywhere) -> &mut Option<String>;
    let ira_fields: [(&Option<String>, &'static str, &'static str, Slot); 4] = [
        (
            &overrides.node_name,
            "spec.hybrid.iamRolesAnywhere.nodeName",
            "--node-name",
            |i| &mut i.node_name,
        ),
        (
            &overrides.trust_anchor_arn,
            "spec.hybrid.iamRolesAnywhere.trustAnchorArn",
            "--trust-anchor-arn",
            |i| &mut i.trust_anchor_arn,
        ),
        (
            &overrides.profile_arn,
            "spec.hybrid.iamRolesAnywhere.profileArn",
            "--profile-arn",
            |i| &mut i.profile_arn,
        ),
        (
            &overrides.role_arn,
            "spec.hybrid.iamRolesAnywhere.roleArn",
            "--role-arn",
            |i| &mut i.role_arn,
        ),
    ];
    for (value, field, name, slot) in ira_fields {
        if let Some(value) = value {
            *slot(ira_of(spec)) = Some(value.clone());
            origins.insert(field, flag(name));
        }
    }
    if let Some(path) = &overrides.certificate_path {
        ira_of(spec).certificate_path = Some(path.display().to_string());
        origins.insert(
            "spec.hybrid.iamRolesAnywhere.certificatePath",
            flag("--certificate-path"),
        );
    }
    if let Some(path) = &overrides.private_key_path {
        ira_of(spec).private_key_path = Some(path.display().to_string());
        origins.insert(
            "spec.hybrid.iamRolesAnywhere.privateKeyPath",
            flag("--private-key-path"),
        );
    }
    // Last, so the environment fallback below sees the IAM Roles Anywhere flags.
    const CODE_FIELD: &str = "spec.hybrid.ssm.activationCode";
    match &overrides.activation_code {
        None => {}
        Some(ActivationCodeInput::Flag(code)) => {
            ssm_of(spec).activation_code = Some(code.clone());
            origins.insert(CODE_FIELD, flag("--activation-code"));
        }
        Some(ActivationCodeInput::Env(code)) => {
            // The variable is a fallback, below the file: it may be exported machine-wide, so it
            // must neither override a NodeConfig's code nor turn an IAM Roles Anywhere node
            // into a "both providers set" error.
            let hybrid = spec.hybrid.as_ref();
            let has_code = hybrid
                .and_then(|h| h.ssm.as_ref())
                .is_some_and(|s| s.activation_code.is_some());
            let ira_only =
                hybrid.is_some_and(|h| h.iam_roles_anywhere.is_some() && h.ssm.is_none());
            if !has_code && !ira_only {
                ssm_of(spec).activation_code = Some(code.clone());
                origins.insert(CODE_FIELD, Location::Env(ACTIVATION_CODE_ENV.to_owned()));
            }
        }
        Some(ActivationCodeInput::File(path)) => {
            let location = flag("--activation-code-file");
            origins.insert(CODE_FIELD, location.clone());
            match read_code_file(path) {
                Ok(code) => ssm_of(spec).activation_code = Some(code),
                Err(message) => {
                    // Keep an (empty) ssm section so the provider is still recognised as SSM.
                    ssm_of(spec);
                    problems.push(
                        Problem::new(location, CODE_FIELD, message).hint(
                            "pass the file holding the activation code printed by `aws ssm create-activation`",
                        ),
                    );
                }
            }
        }
    }

    origins
}

fn ssm_of(spec: &mut Spec) -> &mut Ssm {
    spec.hybrid
        .get_or_insert_with(HybridOptions::default)
        .ssm
        .get_or_insert_with(Ssm::default)
}

fn ira_of(spec: &mut Spec) -> &mut IamRolesAnywhere {
    spec.hybrid
        .get_or_insert_with(HybridOptions::default)
        .iam_roles_anywhere
        .get_or_insert_with(IamRolesAnywhere::default)
}

fn read_code_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read activation code file {}: {e}", path.display()))?;
    let code = text.trim();
    if code.is_empty() {
        return Err(format!("activation code file {} is empty", path.display()));
    }
    Ok(Secret::new(code))
}

/// Checks the merged NodeConfig. `file` is the NodeConfig file when one was given (for line
/// numbers and the apiVersion/kind checks). Returns the settings when nothing is wrong with the
/// node half.
pub(crate) fn validate_node(
    raw: &NodeConfigFile,
    file: Option<&SourceFile<'_>>,
    origins: &Origins,
    paths: &HostPaths,
    problems: &mut Problems,
) -> Option<NodeSettings> {
    let before = problems.len();
    let mut v = Validator {
        file,
        origins,
        paths,
        problems,
    };

    if file.is_some() {
        v.type_meta("apiVersion", raw.api_version.as_deref(), API_VERSION);
        v.type_meta("kind", raw.kind.as_deref(), KIND);
    }
    let empty = Spec::default();
    let spec = raw.spec.as_ref().unwrap_or(&empty);
    let cluster = v.cluster(spec.cluster.as_ref());
    let provider = v.provider(spec.hybrid.as_ref());
    let kubelet = v.kubelet(spec.kubelet.as_ref());
    let containerd = v.containerd(spec);
    let feature_gates = v.feature_gates(spec.feature_gates.as_ref());

    if spec
        .instance
        .as_ref()
        .is_some_and(|i| i.local_storage.is_some())
    {
        tracing::warn!(
            "spec.instance.localStorage configures EC2 instance-store disks; it is ignored on hybrid nodes"
        );
    }
    if problems.len() > before {
        return None;
    }
    Some(NodeSettings {
        cluster: cluster?,
        provider: provider?,
        enable_credentials_file: spec
            .hybrid
            .as_ref()
            .and_then(|h| h.enable_credentials_file)
            .unwrap_or(false),
        kubelet,
        containerd,
        feature_gates,
    })
}

struct Validator<'a> {
    file: Option<&'a SourceFile<'a>>,
    origins: &'a Origins,
    paths: &'a HostPaths,
    problems: &'a mut Problems,
}

impl Validator<'_> {
    fn location(&self, field: &str) -> Location {
        if let Some(origin) = self.origins.get(field) {
            return origin.clone();
        }
        match self.file {
            Some(file) => file.location(field),
            None => Location::CommandLine,
        }
    }

    fn set_by_flag(&self, field: &str) -> bool {
        self.origins.contains_key(field)
    }

    fn report(&mut self, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        if self.problems.mentions(field) {
            return; // already reported by the parser (e.g. wrong type)
        }
        // In the file's own spelling (`activationID`) unless a flag set it.
        let shown = match self.file {
            Some(file) if !self.set_by_flag(field) => file.spelled(field),
            _ => field.to_owned(),
        };
        if shown != field && self.problems.mentions(&shown) {
            return;
        }
        let problem = Problem::new(self.location(field), shown, message).hint(hint);
        self.problems.push(problem);
    }

    /// nodeadm's file decoder never checks `apiVersion` or `kind` (`internal/api/bridge/decode.go`
    /// `DecodeStrictNodeConfig` unmarshals into the internal type, where they are plain strings),
    /// so a missing or differently cased value is accepted silently and a different one only
    /// draws a warning: a file nodeadm reads must read here too.
    fn type_meta(&mut self, field: &str, value: Option<&str>, expected: &str) {
        match value {
            Some(v) if !v.eq_ignore_ascii_case(expected) => {
                let at = match self.location(field) {
                    Location::File {
                        path,
                        line: Some(line),
                    } => format!(" ({}:{line})", path.display()),
                    _ => String::new(),
                };
                tracing::warn!(
                    "{field} is `{v}`{at}, not `{expected}`; reading the file as NodeConfig {API_VERSION} as nodeadm does"
                );
            }
            _ => {}
        }
    }

    fn cluster(&mut self, raw: Option<&ClusterDetails>) -> Option<Cluster> {
        let empty = ClusterDetails::default();
        let raw = raw.unwrap_or(&empty);
        let name = match raw.name.as_deref() {
            None | Some("") => {
                self.report(
                    "spec.cluster.name",
                    "is missing",
                    "set spec.cluster.name in the NodeConfig or pass --cluster NAME",
                );
                None
            }
            Some(name) => {
                let ok = name.len() <= MAX_CLUSTER_NAME_LEN
                    && name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphanumeric())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if ok {
                    Some(name.to_owned())
                } else {
                    self.report(
                        "spec.cluster.name",
                        format!("`{name}` is not an EKS cluster name"),
                        "use the name shown by `aws eks list-clusters` (letters, digits, - and _, at most 100)",
                    );
                    None
                }
            }
        };
        let region = match raw.region.as_deref() {
            None | Some("") => {
                self.report(
                    "spec.cluster.region",
                    "is missing",
                    "set spec.cluster.region in the NodeConfig or pass --region REGION (e.g. us-west-2)",
                );
                None
            }
            Some(region) => match Region::parse(region) {
                Ok(region) => Some(region),
                Err(message) => {
                    self.report(
                        "spec.cluster.region",
                        message,
                        "use the cluster's region, e.g. us-west-2",
                    );
                    None
                }
            },
        };
        let api_server_endpoint = match raw.api_server_endpoint.as_deref() {
            None | Some("") => None,
            Some(url) => match SafeUrl::parse(url, &["https"]) {
                Ok(url) => Some(url),
                Err(message) => {
                    self.report(
                        "spec.cluster.apiServerEndpoint",
                        message,
                        "use the cluster endpoint from `aws eks describe-cluster`, or leave it out to look it up",
                    );
                    None
                }
            },
        };
        let certificate_authority = match raw.certificate_authority.as_deref() {
            None | Some("") => None,
            Some(b64) => match decode_certificate_authority(b64) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    self.report(
                        "spec.cluster.certificateAuthority",
                        format!("is not valid base64 ({e})"),
                        "paste certificateAuthority.data from `aws eks describe-cluster` unchanged",
                    );
                    None
                }
            },
        };
        let cidr = match raw.cidr.as_deref() {
            None | Some("") => None,
            Some(cidr) => match parse_cidr(cidr) {
                Ok(_) => Some(cidr.to_owned()),
                Err(message) => {
                    self.report(
                        "spec.cluster.cidr",
                        message,
                        "use the cluster's service CIDR, e.g. 172.20.0.0/16",
                    );
                    None
                }
            },
        };
        if raw.id.is_some() {
            tracing::warn!(
                "spec.cluster.id is only used by EC2 nodes on AWS Outposts; it is ignored on hybrid nodes"
            );
        }
        if raw.enable_outpost == Some(true) {
            self.report(
                "spec.cluster.enableOutpost",
                "AWS Outposts nodes are EC2 instances, not hybrid nodes",
                "remove enableOutpost (and id) from the NodeConfig",
            );
        }
        Some(Cluster {
            name: name?,
            region: region?,
            api_server_endpoint,
            certificate_authority,
            cidr,
        })
    }

    fn provider(&mut self, hybrid: Option<&HybridOptions>) -> Option<Provider> {
        let choose = "set exactly one of spec.hybrid.ssm (or flags --activation-id and --activation-code-file) \
                      and spec.hybrid.iamRolesAnywhere (or flags --trust-anchor-arn, --profile-arn, --role-arn, --node-name)";
        let Some(hybrid) = hybrid else {
            self.report(
                "spec.hybrid",
                "is missing: no credential provider is configured",
                choose,
            );
            return None;
        };
        match (&hybrid.ssm, &hybrid.iam_roles_anywhere) {
            (Some(ssm), Some(ira)) => {
                let ssm_from = self.origin_summary("spec.hybrid.ssm");
                let ira_from = self.origin_summary("spec.hybrid.iamRolesAnywhere");
                self.report(
                    "spec.hybrid",
                    format!(
                        "both ssm ({ssm_from}) and iamRolesAnywhere ({ira_from}) are set; they are mutually exclusive"
                    ),
                    "keep the credential provider this node should use and remove the other",
                );
                // Check both anyway, so whichever the user keeps has its problems listed now.
                self.ssm(ssm);
                self.iam_roles_anywhere(ira);
                None
            }
            (None, None) => {
                self.report(
                    "spec.hybrid",
                    "sets neither ssm nor iamRolesAnywhere",
                    choose,
                );
                None
            }
            (Some(ssm), None) => self.ssm(ssm),
            (None, Some(ira)) => self.iam_roles_anywhere(ira),
        }
    }

    /// "file" / "flags --x, --y" / both, for the fields under `prefix`.
    fn origin_summary(&self, prefix: &str) -> String {
        let flags: Vec<String> = self
            .origins
            .iter()
            .filter(|(field, _)| field.starts_with(prefix))
            .map(|(_, loc)| match loc {
                Location::Flag(f) => f.clone(),
                other => other.to_string(),
            })
            .collect();
        match (flags.is_empty(), self.file) {
            (true, Some(file)) => format!("in {}", file.path.display()),
            (true, None) => "from the command line".to_owned(),
            (false, _) => format!("from {}", flags.join(", ")),
        }
    }

    fn ssm(&mut self, ssm: &Ssm) -> Option<Provider> {
        const ID: &str = "spec.hybrid.ssm.activationId";
        const CODE: &str = "spec.hybrid.ssm.activationCode";
        let id = match ssm.activation_id.as_deref() {
            None | Some("") => {
                self.report(
                    ID,
                    "is missing",
                    "set spec.hybrid.ssm.activationId or pass --activation-id",
                );
                None
            }
            Some(id) if is_hyphenated_uuid(id) => Some(id.to_ascii_lowercase()),
            // The value is never shown: an activation code pasted in the id's place is a secret.
            Some(id) => {
                self.report(
                    ID,
                    format!(
                        "the value given ({} characters) is not a UUID",
                        id.chars().count()
                    ),
                    "use the ActivationId printed by `aws ssm create-activation` \
                     (36 characters: 8-4-4-4-12 hex digits)",
                );
                None
            }
        };
        let code = match &ssm.activation_code {
            None => {
                self.report(
                    CODE,
                    "is missing",
                    format!(
                        "set spec.hybrid.ssm.activationCode, pass --activation-code-file FILE, \
                         or set {ACTIVATION_CODE_ENV}"
                    ),
                );
                None
            }
            Some(code) if code.char_len() < MIN_ACTIVATION_CODE_LEN => {
                self.report(
                    CODE,
                    format!(
                        "is {} characters long; SSM activation codes have at least {MIN_ACTIVATION_CODE_LEN}",
                        code.char_len()
                    ),
                    "copy the ActivationCode printed by `aws ssm create-activation` in full",
                );
                None
            }
            Some(code) if code.expose().chars().any(char::is_whitespace) => {
                self.report(
                    CODE,
                    "contains whitespace",
                    "copy the ActivationCode exactly, without spaces or line breaks",
                );
                None
            }
            Some(code) => Some(code.clone()),
        };
        Some(Provider::Ssm {
            activation_id: id?,
            activation_code: code?,
        })
    }

    fn iam_roles_anywhere(&mut self, ira: &IamRolesAnywhere) -> Option<Provider> {
        const NODE: &str = "spec.hybrid.iamRolesAnywhere.nodeName";
        let node_name = match ira.node_name.as_deref() {
            None | Some("") => {
                self.report(
                    NODE,
                    "is missing",
                    "set spec.hybrid.iamRolesAnywhere.nodeName or pass --node-name",
                );
                None
            }
            Some(name) if valid_node_name(name) => Some(name.to_owned()),
            Some(name) => {
                self.report(
                    NODE,
                    format!("`{name}` is not a valid node name"),
                    "use at most 64 lowercase letters, digits, - and ., starting and ending with a letter or digit \
                     (it must match the certificate's CN under the usual trust policy)",
                );
                None
            }
        };
        let trust_anchor_arn = self.arn(
            "spec.hybrid.iamRolesAnywhere.trustAnchorArn",
            "--trust-anchor-arn",
            ira.trust_anchor_arn.as_deref(),
            "rolesanywhere",
            "trust-anchor/",
        );
        let profile_arn = self.arn(
            "spec.hybrid.iamRolesAnywhere.profileArn",
            "--profile-arn",
            ira.profile_arn.as_deref(),
            "rolesanywhere",
            "profile/",
        );
        let role_arn = self.arn(
            "spec.hybrid.iamRolesAnywhere.roleArn",
            "--role-arn",
            ira.role_arn.as_deref(),
            "iam",
            "role/",
        );
        let certificate_path = self.credential_path(
            "spec.hybrid.iamRolesAnywhere.certificatePath",
            ira.certificate_path.as_deref(),
            paths::IAM_RA_CERTIFICATE,
        );
        let private_key_path = self.credential_path(
            "spec.hybrid.iamRolesAnywhere.privateKeyPath",
            ira.private_key_path.as_deref(),
            paths::IAM_RA_PRIVATE_KEY,
        );
        let aws_config_path = match ira.aws_config_path.as_deref() {
            None | Some("") => Some(None),
            Some(p) => self
                .host_path("spec.hybrid.iamRolesAnywhere.awsConfigPath", p)
                .map(Some),
        };
        Some(Provider::IamRolesAnywhere {
            node_name: node_name?,
            trust_anchor_arn: trust_anchor_arn?,
            profile_arn: profile_arn?,
            role_arn: role_arn?,
            certificate_path: certificate_path?,
            private_key_path: private_key_path?,
            aws_config_path: aws_config_path?,
        })
    }

    fn arn(
        &mut self,
        field: &str,
        flag: &str,
        value: Option<&str>,
        service: &str,
        resource: &str,
    ) -> Option<String> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            self.report(field, "is missing", format!("set {field} or pass {flag}"));
            return None;
        };
        match check_arn(value, service, resource) {
            Ok(()) => Some(value.to_owned()),
            Err(message) => {
                self.report(
                    field,
                    message,
                    format!("use the {resource}… ARN from the IAM Roles Anywhere or IAM console"),
                );
                None
            }
        }
    }

    /// A certificate or key path: as given when it came from a flag (the user's shell view),
    /// else a host path resolved under `--root`, defaulting to nodeadm's location.
    fn credential_path(
        &mut self,
        field: &str,
        value: Option<&str>,
        default: &str,
    ) -> Option<PathBuf> {
        match value {
            Some(v) if self.set_by_flag(field) => Some(PathBuf::from(v)),
            Some(v) if !v.is_empty() => self.host_path(field, v),
            _ => Some(self.paths.resolve(default)),
        }
    }

    fn host_path(&mut self, field: &str, value: &str) -> Option<PathBuf> {
        if value.starts_with('/') {
            Some(self.paths.resolve(value))
        } else {
            self.report(
                field,
                format!("`{value}` is not an absolute path"),
                "write the absolute path on the host; it is resolved under --root",
            );
            None
        }
    }

    fn kubelet(&mut self, raw: Option<&KubeletOptions>) -> Kubelet {
        let Some(raw) = raw else {
            return Kubelet::default();
        };
        let flags = raw.flags.clone().unwrap_or_default();
        for (i, flag) in flags.iter().enumerate() {
            let name = flag.split('=').next().unwrap_or(flag);
            if RESERVED_KUBELET_FLAGS.contains(&name) {
                self.report(
                    &format!("spec.kubelet.flags[{i}]"),
                    format!("sets {name}, which the agent owns: the node name must be the identity the credentials prove"),
                    "remove the flag; with IAM Roles Anywhere set spec.hybrid.iamRolesAnywhere.nodeName instead",
                );
            }
        }
        Kubelet {
            config: raw.config.clone().unwrap_or_default(),
            flags,
        }
    }

    fn containerd(&mut self, spec: &Spec) -> Containerd {
        let Some(raw) = &spec.containerd else {
            return Containerd::default();
        };
        if let Some(text) = &raw.config
            && let Err(e) = text.parse::<toml::Table>()
        {
            let line = e
                .span()
                .map(|s| {
                    format!(
                        " at line {} of the inline TOML",
                        super::tolerant::line_of_offset(text, s.start)
                    )
                })
                .unwrap_or_default();
            self.report(
                "spec.containerd.config",
                format!("is not valid TOML{line}: {}", e.message()),
                "correct the inline containerd TOML (it is imported as a containerd drop-in)",
            );
        }
        Containerd {
            config: raw.config.clone(),
            base_runtime_spec: raw.base_runtime_spec.clone().unwrap_or_default(),
        }
    }

    fn feature_gates(&mut self, raw: Option<&BTreeMap<String, bool>>) -> BTreeMap<String, bool> {
        let gates = raw.cloned().unwrap_or_default();
        for name in gates.keys() {
            if !KNOWN_FEATURE_GATES.contains(&name.as_str()) {
                self.report(
                    &format!("spec.featureGates.{name}"),
                    format!("`{name}` is not a nodeadm feature gate"),
                    format!("remove it (known: {})", KNOWN_FEATURE_GATES.join(", ")),
                );
            }
        }
        gates
    }
}

/// nodeadm's field is `[]byte`, which encoding/json decodes with Go's `base64.StdEncoding`:
/// padding required, non-zero trailing bits allowed, and `\r`/`\n` skipped, so a CA pasted as
/// a line-wrapped literal block (`|`) works. Spaces and tabs are skipped too (nodeadm rejects
/// them): a plain multi-line YAML scalar folds its line breaks into spaces, and the user meant
/// the same bytes.
fn decode_certificate_authority(b64: &str) -> Result<Vec<u8>, base64::DecodeError> {
    const GO_STD_ENCODING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::general_purpose::PAD.with_decode_allow_trailing_bits(true),
    );
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    GO_STD_ENCODING.decode(compact)
}

fn valid_node_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= MAX_NODE_NAME_LEN
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Checks `arn:<partition>:<service>:<region>:<account>:<resource…>`.
pub fn check_arn(value: &str, service: &str, resource_prefix: &str) -> Result<(), String> {
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let [arn, partition, svc, region, account, resource] = parts.as_slice() else {
        return Err(format!("`{value}` is not an ARN (arn:aws:{service}:…)"));
    };
    if *arn != "arn" || !partition.starts_with("aws") {
        return Err(format!("`{value}` is not an ARN (arn:aws:{service}:…)"));
    }
    if *svc != service {
        return Err(format!(
            "`{value}` is an ARN of service `{svc}`; expected `{service}`"
        ));
    }
    let regional = service != "iam";
    if regional && region.is_empty() {
        return Err(format!("`{value}` has no region"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{value}` has no 12-digit account id"));
    }
    if !resource.starts_with(resource_prefix) || resource.len() == resource_prefix.len() {
        return Err(format!(
            "`{value}` does not name a {}",
            resource_prefix.trim_end_matches('/')
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_debug_redacts_credentials() {
        let c = Containerd {
            config: Some(
                "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".auth]\npassword = \"Rg7hunter2Xq\"\n"
                    .to_owned(),
            ),
            base_runtime_spec: Default::default(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("Rg7hunter2Xq"), "{shown}");
        assert!(shown.contains("r.example"), "{shown}");
        let unparsable = Containerd {
            config: Some("password = Rg7hunter2Xq [".to_owned()),
            base_runtime_spec: Default::default(),
        };
        let shown = format!("{unparsable:?}");
        assert!(!shown.contains("Rg7hunter2Xq"), "{shown}");
    }

    #[test]
    fn arns() {
        assert!(check_arn("arn:aws:iam::123456789012:role/Hybrid", "iam", "role/").is_ok());
        assert!(
            check_arn(
                "arn:aws:rolesanywhere:us-west-2:123456789012:trust-anchor/abc",
                "rolesanywhere",
                "trust-anchor/"
            )
            .is_ok()
        );
        assert!(check_arn("arn:aws:iam::123456789012:role/", "iam", "role/").is_err());
        assert!(check_arn("arn:aws:iam::12345:role/x", "iam", "role/").is_err());
        assert!(check_arn("arn:aws:s3:::bucket", "iam", "role/").is_err());
        assert!(check_arn("role/x", "iam", "role/").is_err());
        assert!(
            check_arn(
                "arn:aws:rolesanywhere::123456789012:profile/p",
                "rolesanywhere",
                "profile/"
            )
            .is_err()
        );
    }

    #[test]
    fn certificate_authority_base64_as_go_reads_it() {
        let wrapped = "Y2VydGlm\naWNhdGVB\r\ndXRob3Jp\ndHk=\n";
        assert_eq!(
            decode_certificate_authority(wrapped).ok(),
            Some(b"certificateAuthority".to_vec())
        );
        assert!(decode_certificate_authority("Y2VydGlm aWNhdGVB\tdXRob3JpdHk=").is_ok());
        // Padding is required, as with Go's StdEncoding.
        assert!(decode_certificate_authority("Y2VydGlmaWNhdGVBdXRob3JpdHk").is_err());
        // Non-zero trailing bits are allowed, as with Go's (non-strict) StdEncoding.
        assert_eq!(
            decode_certificate_authority("YR==").ok(),
            Some(b"a".to_vec())
        );
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("edge-01.rack3"));
        assert!(!valid_node_name("Edge-01"));
        assert!(!valid_node_name("-edge"));
        assert!(!valid_node_name(&"a".repeat(65)));
    }

    #[test]
    fn containerd_credentials_are_redacted() {
        let mut table: toml::Table = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".auth]
username = "u"
password = "hunter2"
identitytoken = "tok"
"#
        .parse()
        .expect("toml");
        redact_toml(&mut table);
        let shown = toml::to_string(&table).expect("serialize");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("tok\""), "{shown}");
        assert!(shown.contains("username = \"u\""), "{shown}");
    }
}
