//! `hybrid-agent leave`: take the node out of the cluster and undo `join`.

use clap::Args;

use super::{CliError, Context};

pub(super) const LONG_ABOUT: &str = "\
Remove this machine from the cluster: cordon and drain the node, stop kubelet and containerd, \
deregister the SSM managed instance (SSM only), and remove what join wrote: the credentials \
file section, kubelet and containerd configuration, units, and the agent state under \
/var/lib/hybrid-agent. Artifacts installed by `install` are removed only with their tracker.

Not built yet in this version: leave exits with code 2 and changes nothing.

Example:
  hybrid-agent leave";

/// `leave` flags.
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {}

pub(super) fn run(_args: &LeaveArgs, _ctx: &mut Context<'_>) -> Result<(), CliError> {
    Err(CliError::NotBuilt {
        command: "leave",
        capability: "leaving the cluster (drain, deregistration, cleanup)",
        detail: "nothing was changed".to_owned(),
    })
}
