//! `hybrid-agent config check` and `config show`: validate and display the effective
//! configuration without touching the host.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{CliError, Context, NodeConfigArgs};
use crate::config::{self, AgentConfig, Endpoints, NodeSettings, Provider, Service, Sources};

pub(super) const LONG_ABOUT: &str = "\
Check or show the effective configuration: the agent config file (or its defaults), the \
AWS_ENDPOINT_URL* environment, and — when node settings are given — the NodeConfig and flags, \
merged exactly as `join` merges them. Read-only: nothing on the host is changed.";

/// `config` subcommands.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Which action.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `config check` / `config show`.
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print a short summary (exit 0), or list every problem (exit 1).
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// Print the merged effective configuration, secrets shown as ***.
    #[command(long_about = SHOW_ABOUT)]
    Show(ShowArgs),
}

const CHECK_ABOUT: &str = "\
Validate the configuration the way `join` (or, without node settings, `run`) would, without \
changing anything.

Valid: prints a summary — cluster, region, credential provider, where the node identity comes \
from, and the endpoint each AWS service is reached at — and exits 0. Invalid: lists every \
problem on stderr with its file and line (or flag or environment variable), field and fix, and \
exits 1.

Without --config-source or node flags only the agent config and the endpoint environment are \
checked.

Examples:
  hybrid-agent config check --config-source file:///etc/eks/nodeconfig.yaml
  hybrid-agent config check --cluster prod --region us-west-2 \\
      --activation-id 7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab --activation-code-file code.txt
  hybrid-agent --config ./config.toml config check";

const SHOW_ABOUT: &str = "\
Print the effective configuration after merging defaults, the agent config file, the \
environment, the NodeConfig and flags: YAML by default, JSON with --json. Secrets (activation \
codes, proxy passwords, credential-like containerd settings) are printed as ***. Host paths are \
shown resolved under --root. Invalid input is reported as by `config check` (exit 1).

Examples:
  hybrid-agent config show
  hybrid-agent config show --json --config-source file://nodeconfig.yaml";

/// `config check` flags.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Node settings (as for `join`).
    #[command(flatten)]
    pub node: NodeConfigArgs,
}

/// `config show` flags.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Node settings (as for `join`).
    #[command(flatten)]
    pub node: NodeConfigArgs,
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: &ConfigArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    match &args.command {
        ConfigCommand::Check(check) => run_check(check, ctx),
        ConfigCommand::Show(show) => run_show(show, ctx),
    }
}

fn run_check(args: &CheckArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let summary = if args.node.is_empty() {
        let agent = config::load_agent(ctx.load_context())?;
        summarize(&agent.sources, &agent.agent, None)
    } else {
        let config = config::load(ctx.load_context(), &args.node.input(ctx.env))?;
        summarize(&config.sources, &config.agent, Some(&config.node))
    };
    ctx.write("config check", &summary)
}

fn run_show(args: &ShowArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let text = if args.node.is_empty() {
        render(&config::load_agent(ctx.load_context())?, args.json)?
    } else {
        render(
            &config::load(ctx.load_context(), &args.node.input(ctx.env))?,
            args.json,
        )?
    };
    ctx.write("config show", &text)
}

fn render<T: Serialize>(value: &T, json: bool) -> Result<String, CliError> {
    if json {
        serde_json::to_string_pretty(value)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| CliError::Render {
                format: "JSON",
                message: e.to_string(),
            })
    } else {
        serde_yaml_ng::to_string(value).map_err(|e| CliError::Render {
            format: "YAML",
            message: e.to_string(),
        })
    }
}

fn summarize(sources: &Sources, agent: &AgentConfig, node: Option<&NodeSettings>) -> String {
    let mut out = String::from("configuration is valid\n");
    // Writing to a String cannot fail; the results are ignored below for that reason.
    let agent_source = match &sources.agent_config {
        Some(path) => path.display().to_string(),
        None => "none found; built-in defaults".to_owned(),
    };
    let _ = writeln!(out, "  agent config:   {agent_source}");
    match node {
        None => {
            let _ = writeln!(
                out,
                "  node settings:  not given (pass --config-source or node flags to check them)"
            );
        }
        Some(node) => {
            let node_source = match &sources.node_config {
                Some(path) => format!("{} (and flags, if any)", path.display()),
                None => "command-line flags".to_owned(),
            };
            let _ = writeln!(out, "  node settings:  {node_source}");
            let _ = writeln!(out, "  cluster:        {}", node.cluster.name);
            let _ = writeln!(out, "  region:         {}", node.cluster.region);
            let provider = match &node.provider {
                Provider::Ssm { activation_id, .. } => {
                    format!("ssm (SSM hybrid activation {activation_id})")
                }
                Provider::IamRolesAnywhere { role_arn, .. } => {
                    format!("iam-ra (IAM Roles Anywhere, role {role_arn})")
                }
            };
            let _ = writeln!(out, "  provider:       {provider}");
            let _ = writeln!(out, "  node identity:  {}", node.provider.identity_source());
        }
    }
    let _ = writeln!(out, "  endpoints:");
    for line in endpoint_lines(&agent.endpoints, node) {
        let _ = writeln!(out, "    {line}");
    }
    out
}

fn endpoint_lines(endpoints: &Endpoints, node: Option<&NodeSettings>) -> Vec<String> {
    Service::ALL
        .iter()
        .map(|&service| {
            let shown = match (endpoints.endpoint(service), node) {
                (Some(e), _) => format!("{} ({})", e.url, e.origin),
                (None, Some(node)) => match service.default_endpoint(&node.cluster.region) {
                    Ok(url) => format!("{url} (AWS default)"),
                    Err(e) => format!("unknown ({e})"),
                },
                (None, None) => "AWS default for the cluster's region".to_owned(),
            };
            format!("{:<14} {shown}", service.config_key())
        })
        .collect()
}
