//! `hybrid-agent completions SHELL` and `hybrid-agent manpages --out DIR`: shell completion
//! scripts (clap_complete) and roff man pages (clap_mangen) generated from the same clap
//! definitions the binary parses with, so they cannot drift from the real flags.
//! `scripts/package` runs both against the binary it packages and ships the results.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};

use super::{Cli, CliError, Context};

pub(super) const COMPLETIONS_LONG_ABOUT: &str = "\
Print a completion script for SHELL on stdout. The packages install them where each shell looks \
(bash: /usr/share/bash-completion/completions/hybrid-agent, zsh: vendor-completions/_hybrid-agent, \
fish: vendor_completions.d/hybrid-agent.fish); for a binary installed by hand:

  hybrid-agent completions bash > /etc/bash_completion.d/hybrid-agent";

pub(super) const MANPAGES_LONG_ABOUT: &str = "\
Write the man pages into DIR: hybrid-agent.1 and one hybrid-agent-<command>.1 per subcommand \
(roff, uncompressed). The packages ship them gzipped under /usr/share/man/man1.";

/// `completions` arguments.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `manpages` arguments.
#[derive(Debug, Clone, Args)]
pub struct ManpagesArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub(super) fn completions(args: &CompletionsArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "hybrid-agent", &mut buf);
    ctx.write("completions", &String::from_utf8_lossy(&buf))
}

pub(super) fn manpages(args: &ManpagesArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| CliError::Manpages { path, source }
    };
    std::fs::create_dir_all(&args.out).map_err(io(&args.out))?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    write_pages(&cmd, "hybrid-agent", &args.out, &mut written)
        .map_err(|(path, source)| CliError::Manpages { path, source })?;
    let mut text = String::new();
    for p in &written {
        text.push_str(&format!("{}\n", p.display()));
    }
    ctx.write("manpages", &text)
}

/// Writes the page of `cmd` (named `name`, e.g. `hybrid-agent-join`) and of each of its
/// visible subcommands, depth first.
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let page = cmd.clone().name(name.to_owned()).bin_name(invocation(name));
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .map_err(|e| (path.clone(), e))?;
    crate::fsutil::replace_unsynced(&path, &buf).map_err(|e| (path.clone(), e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

/// How the command behind page `name` is typed: `hybrid-agent-config-show` → `hybrid-agent
/// config show`.
fn invocation(name: &str) -> String {
    match name.strip_prefix("hybrid-agent-") {
        Some(rest) => format!("hybrid-agent {}", rest.replace('-', " ")),
        None => name.to_owned(),
    }
}

pub(super) const RBAC_LONG_ABOUT: &str = "\
Print the Kubernetes manifests a cluster administrator applies for hybrid-agent \
(kubectl apply -f -). Without a flag: the automatic lifecycle's cluster-wide disruption lock \
(a namespace, the lock ConfigMap, a Role and RoleBinding for system:nodes on that one ConfigMap, \
and a ValidatingAdmissionPolicy that lets a node change only its own entry), needed for \
[lifecycle] auto_upgrade, reboots and max_node_age. With --drain: a ClusterRole letting nodes \
cordon themselves and evict pods, needed only in clusters whose authorizer does not already \
allow it (EKS does; read the risk in its comment). docs/lifecycle.md explains both.

Example:
  hybrid-agent rbac | kubectl apply -f -";

/// `rbac` flags.
#[derive(Debug, Clone, Args)]
pub struct RbacArgs {
    /// The drain permissions instead of the lifecycle lock.
    #[arg(long)]
    pub drain: bool,
}

pub(super) fn rbac(args: &RbacArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    ctx.write(
        "rbac",
        if args.drain {
            crate::join::drain::NODE_DRAIN_RBAC
        } else {
            crate::join::drain::LIFECYCLE_RBAC
        },
    )
}
