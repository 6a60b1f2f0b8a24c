//! `hybrid-agent leave`: take the node out of the cluster and undo `join` ([`crate::join::leave`]).

use clap::Args;

use super::{CliError, Context};
use crate::config;
use crate::join::leave::LeaveOptions;

pub(super) const LONG_ABOUT: &str = "\
Remove this machine from the cluster and put the host back as it was before join: stop the \
daemon, stop kubelet and containerd through the supervisor, deregister the SSM managed instance \
(with retries; IAM Roles Anywhere has nothing to deregister), remove exactly the files the \
install tracker lists (never a distribution containerd), restore every file join replaced and \
remove every file and directory it created, and remove the agent state under \
/var/lib/hybrid-agent.

User data is kept unless --purge: containerd's image store (/var/lib/containerd) and the \
telemetry spool. An interrupted leave continues where it stopped when run again.

Before it changes anything, leave checks (and otherwise refuses, changing nothing):
- that nothing is mounted at or beneath anything it would remove (pod volumes, subPath binds \
and CSI mounts under /var/lib/kubelet). leave never deletes what is mounted, not even with \
--force: unmount them, then run leave again.

Then it drains the node with the node's own credentials, as `kubectl drain --ignore-daemonsets` \
would: cordon it, evict every pod bound to it through the Eviction API (PodDisruptionBudgets are \
honoured: a refused eviction is asked again with backoff until --drain-timeout), leave DaemonSet, \
mirror (static) and finished pods, and wait for the evicted pods to be gone. If the drain cannot \
finish in time, leave uncordons the node, names the PodDisruptionBudget that held it, and changes \
nothing. In a cluster that does not let nodes evict (EKS does; see `hybrid-agent rbac --drain`), \
leave behaves as nodeadm's uninstall: it refuses unless the node is already drained and \
cordoned (kubectl drain NODE --ignore-daemonsets), and prints the manifest that would allow it. \
--force skips the drain (for a cluster that is gone or unreachable).

The node's Node object stays in the cluster: Kubernetes does not let a node delete its own. \
Delete it afterwards (kubectl delete node NODE); leave prints the node's name.

Example:
  hybrid-agent leave
  hybrid-agent leave --drain-timeout 15m   # budgets that free slowly
  hybrid-agent leave --purge
  hybrid-agent leave --force               # the cluster is gone";

/// `leave` flags.
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {
    /// Also remove containerd's image store and the telemetry spool.
    #[arg(long)]
    pub purge: bool,
    /// Leave without draining the node or checking that it is drained (a cluster that is gone
    /// or unreachable). Never removes what is mounted.
    #[arg(long)]
    pub force: bool,
    /// How long the drain may take before leave gives up, uncordons the node and changes
    /// nothing.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = super::install::parse_wait)]
    pub drain_timeout: std::time::Duration,
}

pub(super) fn run(args: &LeaveArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let _lock = super::lock(ctx, crate::runlock::LockKind::Admin, "leave")?;
    let rt = super::install::runtime("leave")?;
    let report = rt.block_on(crate::join::leave::leave(
        &ctx.paths,
        &agent,
        &LeaveOptions {
            purge: args.purge,
            force: args.force,
            drain: crate::kube::drain::DrainOptions {
                timeout: args.drain_timeout,
                ..Default::default()
            },
        },
    ))?;
    let mut text = String::new();
    if report.resumed {
        text.push_str("continuing an interrupted leave\n");
    }
    for line in &report.lines {
        text.push_str(line);
        text.push('\n');
    }
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if !report.nothing_to_do {
        text.push_str("left the cluster\n");
    }
    ctx.write("leave", &text)
}
