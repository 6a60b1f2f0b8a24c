//! `hybrid-agent join`: validate the node and agent configuration, then run the join phases
//! ([`crate::join`]): preflight, identity, install, render, start, wait — transactional, so a
//! failure in any phase leaves the host as it was.

use std::time::Duration;

use clap::Args;

use super::{CliError, Context, NodeConfigArgs};
use crate::config;
use crate::install::progress::Progress;
use crate::join::{DEFAULT_WAIT_TIMEOUT, JoinOptions, Phase};

/// The phases of `join`, in the order they run.
pub const PHASES: [&str; 6] = [
    "preflight",
    "identity",
    "install",
    "render",
    "start",
    "wait",
];

pub(super) const LONG_ABOUT: &str = "\
Join this machine to an EKS cluster as a hybrid node.

Reads the node settings from a nodeadm NodeConfig (--config-source file://PATH) and/or flags, \
and the agent settings from the agent config file, and validates both completely before \
changing anything: every problem is listed with its file, line and field, and the exit code is 1.

Then runs the phases, in order:
  preflight  swap off (or failSwapOn: false), not joined to another cluster
  identity   register with SSM (or check the IAM Roles Anywhere certificate) and write the \
first credentials (/root/.aws/credentials, profile default, by default)
  install    kubelet, aws-iam-authenticator, CNI plugins (and containerd unless the \
distribution's is installed) for the cluster's Kubernetes version (or --kubernetes-version), \
verified by SHA-256, from the manifest, a mirror (--mirror) or an offline bundle (--bundle)
  render     containerd, kubelet, kubeconfig, CA, sysctl and module files, as nodeadm writes \
them (cluster details from the NodeConfig or eks:DescribeCluster)
  start      containerd, then kubelet, under the supervisor the daemon uses (systemd units \
when PID 1 is systemd, else the built-in backend)
  wait       kubelet healthy (/healthz), then the node Ready in the cluster when its API \
server answers (token from the node's credentials, TLS against the cluster CA); 401/403, a \
certificate that does not verify, or a node not registered in time fail the join; NotReady only \
for want of a CNI is a warning

Every change is journaled: if a phase fails, what this run changed is rolled back (files \
restored from backups, new ones removed, a fresh registration deregistered, started components \
stopped), and the error names the phase. Running join again with the same configuration on a \
healthy node changes nothing and says so. --dry-run prints every file and action and changes \
nothing. --skip PHASE[,PHASE] skips phases (`--skip install,render,start,wait` registers only). \
Running join again on a registered machine reuses its identity; --reregister makes a new one.

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

    /// Skip these phases (comma-separated): preflight, identity, install, render, start, wait.
    #[arg(long, value_name = "PHASE[,PHASE]", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(PHASES))]
    pub skip: Vec<String>,

    /// Register again with a fresh key and instance id even if this machine is registered
    /// (SSM; needs an activation with a free registration).
    #[arg(long)]
    pub reregister: bool,

    /// Print every file join would write and every action it would take; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Kubernetes version to install (1.31 = its latest patch, or 1.31.2). Default: the
    /// cluster's version from eks:DescribeCluster.
    #[arg(long, value_name = "VERSION", value_parser = super::install::parse_version)]
    pub kubernetes_version: Option<String>,

    /// Artifact source options.
    #[command(flatten)]
    pub source: super::install::SourceArgs,

    /// How long to wait for containerd, then kubelet, to answer their health checks, e.g. 90s
    /// or 5m.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = super::install::parse_wait)]
    pub wait_timeout: Duration,
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
    let opts = JoinOptions {
        skip: args.skip.iter().filter_map(|s| Phase::parse(s)).collect(),
        dry_run: args.dry_run,
        reregister: args.reregister,
        kubernetes_version: args.kubernetes_version.clone(),
        source: args.source.artifact_source(),
        allow_insecure_mirror: args.source.allow_insecure_mirror,
        wait_timeout: if args.wait_timeout.is_zero() {
            DEFAULT_WAIT_TIMEOUT
        } else {
            args.wait_timeout
        },
        progress: Progress::auto(),
    };
    // A dry run changes nothing and may look at a host another run is changing.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(super::lock(ctx, crate::runlock::LockKind::Admin, "join")?)
    };
    let rt = super::install::runtime("join")?;
    // NODE_NAME in the journal once the identity phase knows it (crate::logging).
    let span = tracing::info_span!("join", node_name = tracing::field::Empty);
    let report = rt.block_on(tracing::Instrument::instrument(
        crate::join::join(&ctx.paths, &config, &opts),
        span,
    ))?;
    let mut text = String::new();
    for line in &report.lines {
        text.push_str(line);
        text.push('\n');
    }
    if opts.dry_run {
        text.push_str("dry run: nothing was changed. join would:\n");
        for p in &report.planned {
            text.push_str("  ");
            text.push_str(p);
            text.push('\n');
        }
    }
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if !report.noop
        && !opts.dry_run
        && let Some(name) = &report.node_name
    {
        text.push_str(&format!(
            "joined: node {name} of cluster {} ({})\n",
            node.cluster.name, node.cluster.region
        ));
    }
    ctx.write("join", &text)
}
