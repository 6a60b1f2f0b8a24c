//! `hybrid-agent upgrade`: move the node to another Kubernetes version, rolling back by itself
//! when the new kubelet is not healthy ([`crate::join::upgrade`]).

use std::time::Duration;

use clap::Args;

use super::install::{SourceArgs, VersionArgs, parse_wait};
use super::{CliError, Context};
use crate::config;
use crate::install::progress::Progress;
use crate::join::upgrade::UpgradeOptions;

pub(super) const LONG_ABOUT: &str = "\
Upgrade the node's Kubernetes components to another version: download and verify the new \
artifacts aside (nothing changes if that fails), swap them in atomically (the old ones are kept), \
render the configuration for the new version, restart kubelet and wait for it to be healthy. If \
it is not healthy within --wait-timeout, the old binaries and configuration are put back and the \
old kubelet is started again, automatically; the command then fails saying so.

Between the download and the switch, the node is drained with its own credentials: cordoned, \
every pod bound to it evicted through the Eviction API (PodDisruptionBudgets are honoured; a \
refused eviction is asked again with backoff until --drain-timeout), DaemonSet, mirror and \
finished pods left. After the upgrade, or after its rollback, the node is uncordoned (unless it \
was cordoned before). A drain that cannot finish in time stops the upgrade before anything \
changed, uncordons the node and names the PodDisruptionBudget that held it. In a cluster that \
does not let nodes evict (EKS does; see `hybrid-agent rbac --drain`), upgrade behaves as \
nodeadm's: it refuses unless the node is already drained and cordoned, or --force.

Example:
  hybrid-agent upgrade --kubernetes-version 1.32
  hybrid-agent upgrade 1.32 --no-drain          # a single-node cluster: nowhere to move pods";

/// `upgrade` flags.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("release", |a| a.help("Kubernetes version to upgrade to: 1.32 (its latest patch) or 1.32.1")))]
#[command(mut_arg("kubernetes_version", |a| a.help("The same as the positional KUBERNETES_VERSION")))]
pub struct UpgradeArgs {
    /// The version to upgrade to.
    #[command(flatten)]
    pub version: VersionArgs,

    /// Artifact source.
    #[command(flatten)]
    pub source: SourceArgs,

    /// How long the new kubelet has to answer /healthz before the upgrade is rolled back.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_wait)]
    pub wait_timeout: Duration,

    /// How long the drain before the switch may take.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_wait)]
    pub drain_timeout: Duration,

    /// Do not drain the node: its pods keep running while kubelet restarts.
    #[arg(long, conflicts_with = "drain_timeout")]
    pub no_drain: bool,

    /// Upgrade even when the node may not drain itself and is not drained.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn run(args: &UpgradeArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let opts = UpgradeOptions {
        kubernetes_version: args.version.chosen(),
        source: args.source.artifact_source(),
        allow_insecure_mirror: args.source.allow_insecure_mirror,
        wait_timeout: args.wait_timeout,
        progress: Progress::auto(),
        drain: (!args.no_drain).then(|| crate::kube::drain::DrainOptions {
            timeout: args.drain_timeout,
            ..Default::default()
        }),
        force: args.force,
    };
    let _lock = super::lock(ctx, crate::runlock::LockKind::Admin, "upgrade")?;
    let rt = super::install::runtime("upgrade")?;
    let report = rt.block_on(crate::join::upgrade::upgrade(&ctx.paths, &agent, &opts))?;
    let mut text = String::new();
    for line in &report.lines {
        text.push_str(line);
        text.push('\n');
    }
    if !report.unchanged {
        text.push_str(&format!(
            "upgraded from Kubernetes {} to {}\n",
            report.from, report.to
        ));
    }
    ctx.write("upgrade", &text)
}
