//! `hybrid-agent doctor`: host, network, cloud and component checks ([`crate::doctor`]).

use clap::Args;

use super::{CliError, Context};
use crate::config::{self, Region};
use crate::doctor::{self, DoctorInput, Outcome};

pub(super) const LONG_ABOUT: &str = "\
Check this host for the problems that most often keep hybrid nodes from joining or staying \
Ready, and say what to do about each:
  host         swap, kernel modules (overlay, br_netfilter), sysctls, the open-file limit
  network      every AWS endpoint the node uses answers through the configured proxy and CA \
bundle; this host's clock against the endpoints' (SigV4 fails beyond 5 minutes)
  credentials  STS GetCallerIdentity with the node's credentials
  cluster      DescribeCluster: ACTIVE, hybrid networks, this node's address inside a remote \
node network
  node ready   the API server answers, its certificate verifies against the cluster CA, it \
accepts the node's token, and the Node is registered and Ready
  components   containerd and kubelet answer their health probes

On a host that has not joined, the cloud checks need --region (and --cluster). Read-only: it \
changes nothing. Exit 0 when nothing failed (warnings allowed), 3 when a check failed.

Examples:
  hybrid-agent doctor
  hybrid-agent doctor --json | jq '.[] | select(.outcome == \"fail\")'
  hybrid-agent doctor --cluster my-cluster --region us-west-2   # before join";

/// `doctor` flags.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON (name, outcome, detail, fix).
    #[arg(long)]
    pub json: bool,
    /// The cluster to check (default: the one this host joined).
    #[arg(long)]
    pub cluster: Option<String>,
    /// The region to check (default: the joined cluster's).
    #[arg(long)]
    pub region: Option<String>,
}

pub(super) fn run(args: &DoctorArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let region = match &args.region {
        Some(r) => Some(Region::parse(r).map_err(|e| CliError::Doctor(format!("--region: {e}")))?),
        None => None,
    };
    let rt = super::install::runtime("doctor")?;
    let checks = rt.block_on(doctor::run(&DoctorInput {
        paths: &ctx.paths,
        agent: &agent,
        cluster: args.cluster.clone(),
        region,
    }));
    let text = if args.json {
        let mut t = serde_json::to_string_pretty(&checks).map_err(|e| CliError::Render {
            format: "JSON",
            message: e.to_string(),
        })?;
        t.push('\n');
        t
    } else {
        doctor::to_text(&checks)
    };
    ctx.write("doctor", &text)?;
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        return Err(CliError::Doctor(format!(
            "{failed} check{} failed (see above)",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}
