//! The node-settings flags shared by `join`, `config check` and `config show`.
//!
//! One clap `Args` struct so the three commands cannot drift: whatever `join` accepts,
//! `config check` can validate first and `config show` can display.

use std::path::PathBuf;

use clap::Args;

use crate::config::{
    ACTIVATION_CODE_ENV, ActivationCodeInput, Env, NodeInput, NodeOverrides, Secret,
};

/// Node settings: a nodeadm NodeConfig and/or flags (flags win where both set a field).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Node settings (nodeadm NodeConfig and/or flags; flags win)")]
pub struct NodeConfigArgs {
    /// nodeadm NodeConfig to read, as file://PATH (relative paths are relative to the current
    /// directory). An existing nodeadm file works unchanged.
    #[arg(long = "config-source", short = 'c', value_name = "file://PATH")]
    pub config_source: Option<String>,

    /// EKS cluster name (spec.cluster.name).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,

    /// AWS region of the cluster (spec.cluster.region), e.g. us-west-2.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// SSM hybrid activation id (spec.hybrid.ssm.activationId), a UUID.
    #[arg(long, value_name = "UUID", help_heading = "SSM hybrid activation")]
    pub activation_id: Option<String>,

    /// File holding the SSM activation code (spec.hybrid.ssm.activationCode). Preferred: the
    /// code stays out of `ps` and shell history. The code may also come from the environment
    /// variable HYBRID_AGENT_ACTIVATION_CODE (used only when neither a flag nor the NodeConfig sets it).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "activation_code",
        help_heading = "SSM hybrid activation"
    )]
    pub activation_code_file: Option<PathBuf>,

    /// The SSM activation code itself. Visible to every user in `ps` and kept in shell history:
    /// prefer --activation-code-file or HYBRID_AGENT_ACTIVATION_CODE (a warning is logged).
    #[arg(long, value_name = "CODE", help_heading = "SSM hybrid activation")]
    pub activation_code: Option<Secret>,

    /// IAM Roles Anywhere trust anchor ARN (spec.hybrid.iamRolesAnywhere.trustAnchorArn).
    #[arg(long, value_name = "ARN", help_heading = "IAM Roles Anywhere")]
    pub trust_anchor_arn: Option<String>,

    /// IAM Roles Anywhere profile ARN (spec.hybrid.iamRolesAnywhere.profileArn).
    #[arg(long, value_name = "ARN", help_heading = "IAM Roles Anywhere")]
    pub profile_arn: Option<String>,

    /// Hybrid nodes IAM role ARN (spec.hybrid.iamRolesAnywhere.roleArn).
    #[arg(long, value_name = "ARN", help_heading = "IAM Roles Anywhere")]
    pub role_arn: Option<String>,

    /// X.509 certificate, PEM (spec.hybrid.iamRolesAnywhere.certificatePath; default
    /// /etc/iam/pki/server.pem under --root). Taken as given, relative to the current directory.
    #[arg(long, value_name = "PATH", help_heading = "IAM Roles Anywhere")]
    pub certificate_path: Option<PathBuf>,

    /// Private key of the certificate, PEM (spec.hybrid.iamRolesAnywhere.privateKeyPath; default
    /// /etc/iam/pki/server.key under --root). Taken as given.
    #[arg(long, value_name = "PATH", help_heading = "IAM Roles Anywhere")]
    pub private_key_path: Option<PathBuf>,

    /// Kubernetes node name and role session name (spec.hybrid.iamRolesAnywhere.nodeName);
    /// usually the certificate's CN.
    #[arg(long, value_name = "NAME", help_heading = "IAM Roles Anywhere")]
    pub node_name: Option<String>,
}

impl NodeConfigArgs {
    /// True when no NodeConfig and no node flag was given (the environment is not consulted).
    pub fn is_empty(&self) -> bool {
        self.config_source.is_none() && self.overrides(&Env::default()).is_empty()
    }

    /// The node input these flags describe; `env` supplies the activation code variable.
    pub fn input(&self, env: &Env) -> NodeInput {
        if self.activation_code.is_some() {
            tracing::warn!(
                "--activation-code shows the activation code to every user in `ps` and keeps it in \
                 shell history; prefer --activation-code-file FILE or {ACTIVATION_CODE_ENV}"
            );
        }
        NodeInput {
            config_source: self.config_source.clone(),
            overrides: self.overrides(env),
        }
    }

    fn overrides(&self, env: &Env) -> NodeOverrides {
        let activation_code = if let Some(file) = &self.activation_code_file {
            Some(ActivationCodeInput::File(file.clone()))
        } else if let Some(code) = &self.activation_code {
            Some(ActivationCodeInput::Flag(code.clone()))
        } else {
            env.get(ACTIVATION_CODE_ENV)
                .map(|code| ActivationCodeInput::Env(Secret::new(code)))
        };
        NodeOverrides {
            cluster: self.cluster.clone(),
            region: self.region.clone(),
            activation_id: self.activation_id.clone(),
            activation_code,
            node_name: self.node_name.clone(),
            trust_anchor_arn: self.trust_anchor_arn.clone(),
            profile_arn: self.profile_arn.clone(),
            role_arn: self.role_arn.clone(),
            certificate_path: self.certificate_path.clone(),
            private_key_path: self.private_key_path.clone(),
        }
    }
}
