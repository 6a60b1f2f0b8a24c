//! `hybrid-agent join`: validate the node and agent configuration, then register and set up.
//!
//! Validation is complete here; registration, installation and hand-over to the daemon come
//! with the identity, install and node issues. Until then `join` stops after validation with
//! exit code 2 rather than pretending to have joined.

use clap::Args;

use super::{CliError, Context, NodeConfigArgs};
use crate::config;

pub(super) const LONG_ABOUT: &str = "\
Join this machine to an EKS cluster as a hybrid node.

Reads the node settings from a nodeadm NodeConfig (--config-source file://PATH) and/or flags, \
and the agent settings from the agent config file, and validates both completely before \
changing anything: every problem is listed with its file, line and field, and the exit code is 1.

With a valid configuration, join registers the machine's credentials (SSM hybrid activation or \
IAM Roles Anywhere), writes the shared credentials file (/root/.aws/credentials, profile \
default, by default), installs and configures containerd and kubelet (/etc/containerd, \
/etc/kubernetes, /var/lib/kubelet) and starts hybrid-agent.service.

Not built yet in this version: credential registration and everything after it. join stops \
after validation with exit code 2 and changes nothing.

The activation code is a secret: pass it in a file (--activation-code-file) or the \
HYBRID_AGENT_ACTIVATION_CODE environment variable. It is never printed.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  # SSM hybrid activation, code kept out of ps and history:
  hybrid-agent join --cluster prod --region us-west-2 \\
      --activation-id 7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab --activation-code-file /root/activation-code

  # An existing nodeadm NodeConfig, unchanged:
  hybrid-agent join --config-source file:///etc/eks/nodeconfig.yaml

  # IAM Roles Anywhere:
  hybrid-agent join --cluster prod --region us-west-2 --node-name edge-01 \\
      --trust-anchor-arn arn:aws:rolesanywhere:us-west-2:111122223333:trust-anchor/TA \\
      --profile-arn arn:aws:rolesanywhere:us-west-2:111122223333:profile/P \\
      --role-arn arn:aws:iam::111122223333:role/HybridNodes \\
      --certificate-path /etc/iam/pki/server.pem --private-key-path /etc/iam/pki/server.key";

/// `join` flags.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// Node settings.
    #[command(flatten)]
    pub node: NodeConfigArgs,
}

pub(super) fn run(args: &JoinArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let config = config::load(ctx.load_context(), &args.node.input(ctx.env))?;
    let node = &config.node;
    tracing::info!(
        cluster = %node.cluster.name,
        region = %node.cluster.region,
        provider = node.provider.label(),
        "configuration is valid"
    );
    Err(CliError::NotBuilt {
        command: "join",
        capability: "credential registration (identity)",
        detail: format!(
            "the configuration is valid (cluster {}, region {}, provider {}), but nothing was \
             registered, installed or changed",
            node.cluster.name,
            node.cluster.region,
            node.provider.label()
        ),
    })
}
