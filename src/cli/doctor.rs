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
  components   containerd and kubelet answer their health probes and use the agent's proxy
  cluster rights  the node's identity in the cluster (SelfSubjectReview), whether it may drain \
itself (access reviews), the disruption lock with [lifecycle] auto_upgrade, and the last \
automatic upgrade or reboot

On a host that has not joined, the cloud checks need --region (and --cluster), or the NodeConfig \
join will be given (--config-source file://PATH, as `nodeadm debug` takes it): it is validated as \
join would validate it, and names the cluster and region. Read-only: it changes nothing. Exit 0 \
when nothing failed (warnings allowed), 3 when a check failed.

Examples:
  hybrid-agent doctor
  hybrid-agent doctor --json | jq '.[] | select(.outcome == \"fail\")'
  hybrid-agent doctor --cluster my-cluster --region us-west-2   # before join
  hybrid-agent doctor --config-source file://nodeconfig.yaml    # before join";

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
    /// The nodeadm NodeConfig join will be given (file://PATH): validated as join validates it,
    /// and the source of the cluster and region when --cluster/--region are not given.
    #[arg(long = "config-source", short = 'c', value_name = "file://PATH")]
    pub config_source: Option<String>,
}

pub(super) fn run(args: &DoctorArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let mut region = match &args.region {
        Some(r) => Some(Region::parse(r).map_err(|e| CliError::Doctor(format!("--region: {e}")))?),
        None => None,
    };
    let mut cluster = args.cluster.clone();
    // The NodeConfig first: what join would say about it, and the cluster it names.
    let mut first = Vec::new();
    if let Some(source) = &args.config_source {
        let input = config::NodeInput {
            config_source: Some(source.clone()),
            overrides: Default::default(),
        };
        match config::load(ctx.load_context(), &input) {
            Ok(c) => {
                let node = &c.node;
                first.push(doctor::Check::new(
                    "nodeconfig",
                    Outcome::Ok,
                    format!(
                        "{source}: valid for join: cluster {} in {}, credentials from {} (node name: {})",
                        node.cluster.name,
                        node.cluster.region,
                        node.provider.label(),
                        node.provider.identity_source()
                    ),
                ));
                cluster.get_or_insert_with(|| node.cluster.name.clone());
                region.get_or_insert_with(|| node.cluster.region.clone());
            }
            Err(problems) => first.push(
                doctor::Check::new(
                    "nodeconfig",
                    Outcome::Fail,
                    format!(
                        "join would refuse it: {}",
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                )
                .fix("`hybrid-agent config check --config-source ...` lists the same problems; fix them in the file"),
            ),
        }
    }
    let rt = super::install::runtime("doctor")?;
    let mut checks = first;
    checks.extend(rt.block_on(doctor::run(&DoctorInput {
        paths: &ctx.paths,
        agent: &agent,
        cluster,
        region,
    })));
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
