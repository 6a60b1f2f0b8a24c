//! `hybrid-agent join`: validate the node and agent configuration, then run the join phases.
//!
//! Phases are named, in order, and each can be skipped with `--skip` (as nodeadm's `--skip`):
//! `identity` registers the machine and writes the first credentials; `install`, `render` and
//! `start` come with later issues. A phase that is neither built nor skipped stops `join` with
//! exit code 2 naming it, after the phases before it ran — never a fake success.

use std::time::SystemTime;

use clap::Args;

use super::{CliError, Context, NodeConfigArgs};
use crate::config;
use crate::identity::register::RegisterOutcome;
use crate::identity::setup::IdentityEnv;

/// The phases of `join`, in the order they run.
pub const PHASES: [&str; 4] = ["identity", "install", "render", "start"];

pub(super) const LONG_ABOUT: &str = "\
Join this machine to an EKS cluster as a hybrid node.

Reads the node settings from a nodeadm NodeConfig (--config-source file://PATH) and/or flags, \
and the agent settings from the agent config file, and validates both completely before \
changing anything: every problem is listed with its file, line and field, and the exit code is 1.

With a valid configuration, join registers the machine's credentials (SSM hybrid activation or \
IAM Roles Anywhere), writes the shared credentials file (/root/.aws/credentials, profile \
default, by default), installs and configures containerd and kubelet (/etc/containerd, \
/etc/kubernetes, /var/lib/kubelet) and starts hybrid-agent.service.

Phases, in order: identity (register with SSM or check the IAM Roles Anywhere certificate, \
write the first credentials), install, render, start. --skip PHASE[,PHASE] skips phases: \
`--skip install,render,start` performs registration alone. Running join again on a registered \
machine reuses its identity; --reregister makes a new one on purpose (with a new activation).

Not built yet in this version: the install, render and start phases. Unless skipped, join \
stops after the identity phase with exit code 2 naming them.

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

    /// Skip these phases (comma-separated): identity, install, render, start.
    #[arg(long, value_name = "PHASE[,PHASE]", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(PHASES))]
    pub skip: Vec<String>,

    /// Register again with a fresh key and instance id even if this machine is registered
    /// (SSM; needs an activation with a free registration).
    #[arg(long)]
    pub reregister: bool,
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
    let skipped = |phase: &str| args.skip.iter().any(|s| s == phase);
    if !skipped("identity") {
        identity_phase(&config, args.reregister, ctx)?;
    }
    let missing: Vec<&str> = PHASES[1..]
        .iter()
        .copied()
        .filter(|p| !skipped(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CliError::NotBuilt {
        command: "join",
        capability: "node setup (the install, render and start phases)",
        detail: format!(
            "phase(s) {} are not built; the phases before them completed. Use --skip {} to run \
             only what is built",
            missing.join(", "),
            missing.join(",")
        ),
    })
}

fn identity_phase(
    config: &config::Config,
    reregister: bool,
    ctx: &mut Context<'_>,
) -> Result<(), CliError> {
    let node = &config.node;
    let env = IdentityEnv::new(&ctx.paths, &config.agent);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Runtime {
            command: "join",
            source,
        })?;
    let out = rt.block_on(env.join(
        &node.provider,
        &node.cluster.region,
        node.enable_credentials_file,
        reregister,
    ))?;
    let how = match &out.registration {
        Some(RegisterOutcome::Registered(_)) => "registered as",
        Some(RegisterOutcome::Reused(_)) => "already registered as",
        None => "IAM Roles Anywhere identity",
    };
    let remaining = out
        .expiration
        .duration_since(SystemTime::now())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let files: Vec<String> = out.files.iter().map(|f| f.display().to_string()).collect();
    ctx.write(
        "join",
        &format!(
            "identity: {how} {} ({}); credentials valid for {remaining} s written to {}\n",
            out.identity,
            out.provider,
            files.join(", ")
        ),
    )
}
