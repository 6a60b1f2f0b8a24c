//! The `hybrid-agent` command line: clap definitions, one file per subcommand, and dispatch.
//!
//! Each subcommand module owns its clap `Args` and its `run` function; this module holds the
//! global flags, the error type every command returns, and the mapping from error to exit code
//! (src/exit.rs). Commands write their output to an injected writer so the binary's tests see
//! exactly what users see.

mod config;
mod credential_process;
mod docs;
mod doctor;
mod install;
mod join;
mod leave;
mod node_args;
mod run;
mod status;
mod token;
mod upgrade;

use std::io::Write;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config::{AgentConfigSource, Env, LoadContext, Problems};
use crate::exit::ExitCode;
use crate::logging::{LogFormat, LogTarget};
use crate::paths::HostPaths;

pub use node_args::NodeConfigArgs;

const LONG_ABOUT: &str = "\
Turns an on-prem or edge Linux machine into an Amazon EKS hybrid node and keeps it healthy.

`hybrid-agent join` registers the machine (SSM hybrid activation or IAM Roles Anywhere), installs \
and configures kubelet and containerd from a nodeadm-compatible NodeConfig, and hands over to the \
`hybrid-agent run` daemon (hybrid-agent.service), which rotates credentials, supervises kubelet \
and containerd, and ships their logs and health metrics to CloudWatch.

Configuration comes from two places, validated together before anything is changed:
  * the node settings: a nodeadm NodeConfig (--config-source file://PATH) and/or flags such as \
--cluster, --region, --activation-id;
  * the agent settings: /etc/hybrid-agent/config.toml (optional; see `hybrid-agent config show` \
for the effective values). AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> override endpoints.

Every host path is resolved beneath --root, so the agent can be pointed at a staging directory.";

/// `hybrid-agent`: join an on-prem machine to EKS as a hybrid node and keep it healthy.
#[derive(Debug, Parser)]
#[command(
    name = "hybrid-agent",
    version,
    about = "Join an on-prem or edge Linux machine to Amazon EKS as a hybrid node and keep it healthy",
    long_about = LONG_ABOUT,
    after_help = ExitCode::table(),
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    /// Flags every subcommand accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Resolve every host path (/etc, /var/lib, /root/.aws …) beneath DIR instead of /.
    /// Paths typed on the command line (--config, --config-source, --activation-code-file) are
    /// taken as given.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Agent config file (TOML). Default: /etc/hybrid-agent/config.toml under --root, used only
    /// if it exists; a file named here must exist.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Format of log lines on stderr.
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Where log entries go: the systemd journal as structured entries (NODE_NAME, PHASE,
    /// COMPONENT … fields), stderr, or auto: the journal when stderr is connected to it
    /// (systemd's JOURNAL_STREAM matches stderr), stderr otherwise.
    #[arg(long, global = true, value_enum, value_name = "TARGET", env = "HYBRID_AGENT_LOG_TARGET", default_value_t = LogTarget::Auto)]
    pub log_target: LogTarget,

    /// More log detail: -v debug, -vv trace.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Less log detail: -q warnings and errors, -qq errors only.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join this machine to an EKS cluster as a hybrid node (validates the configuration first).
    #[command(long_about = join::LONG_ABOUT, after_help = join::AFTER_HELP)]
    Join(join::JoinArgs),
    /// Run the agent daemon (what hybrid-agent.service starts).
    #[command(long_about = run::LONG_ABOUT)]
    Run(run::RunArgs),
    /// Show the node's health as the running daemon sees it.
    #[command(long_about = status::LONG_ABOUT)]
    Status(status::StatusArgs),
    /// Remove this machine from the cluster and undo what join did.
    #[command(long_about = leave::LONG_ABOUT)]
    Leave(leave::LeaveArgs),
    /// Install kubelet, containerd and the other node artifacts for a Kubernetes version.
    #[command(long_about = install::LONG_ABOUT, after_help = install::AFTER_HELP)]
    Install(install::InstallArgs),
    /// Build an offline bundle of a release's artifacts (`bundle create`).
    #[command(long_about = install::BUNDLE_LONG_ABOUT)]
    Bundle(install::BundleArgs),
    /// Upgrade the node's Kubernetes components to another version, rolling back if unhealthy.
    #[command(long_about = upgrade::LONG_ABOUT)]
    Upgrade(upgrade::UpgradeArgs),
    /// Check the host and its connectivity for common hybrid-node problems.
    #[command(long_about = doctor::LONG_ABOUT)]
    Doctor(doctor::DoctorArgs),
    /// Check or show the effective configuration.
    #[command(long_about = config::LONG_ABOUT)]
    Config(config::ConfigArgs),
    /// Print a token for the cluster's API server (an exec credential, like aws-iam-authenticator).
    #[command(long_about = token::LONG_ABOUT)]
    Token(token::TokenArgs),
    /// Print IAM Roles Anywhere credentials for an AWS SDK's credential_process (join writes it
    /// into the node's AWS config file).
    #[command(long_about = credential_process::LONG_ABOUT)]
    CredentialProcess(credential_process::CredentialProcessArgs),
    /// Print the RBAC manifest a cluster administrator applies for the automatic lifecycle (or,
    /// with --drain, for drains where nodes may not evict).
    #[command(long_about = docs::RBAC_LONG_ABOUT)]
    Rbac(docs::RbacArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(long_about = docs::COMPLETIONS_LONG_ABOUT)]
    Completions(docs::CompletionsArgs),
    /// Write the man pages (hybrid-agent.1 and one per subcommand) into a directory.
    #[command(long_about = docs::MANPAGES_LONG_ABOUT)]
    Manpages(docs::ManpagesArgs),
}

/// Why a command did not succeed; each variant maps to one documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration or input is invalid.
    #[error(transparent)]
    Config(#[from] Problems),
    /// The command needs a capability a later version adds.
    #[error("{command}: {capability} is not built yet; {detail}")]
    NotBuilt {
        /// Subcommand name.
        command: &'static str,
        /// The missing capability, in the words the issue tracker uses.
        capability: &'static str,
        /// What was done (validation) and that nothing was changed.
        detail: String,
    },
    /// Writing to stdout failed (closed pipe, full disk).
    #[error("cannot write the output of `{command}` to stdout: {source}")]
    Output {
        /// Subcommand name.
        command: &'static str,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration could not be rendered.
    #[error("cannot render the configuration as {format}: {message}")]
    Render {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// Serializer message.
        message: String,
    },
    /// The identity phase of `join` failed (registration errors have their own exit codes).
    #[error("join: {0}")]
    Identity(Box<crate::identity::setup::JoinError>),
    /// The daemon could not start or stopped with an error.
    #[error("run: {0}")]
    Daemon(Box<crate::daemon::DaemonError>),
    /// The daemon state could not be read.
    #[error("status: {0}")]
    Status(#[from] crate::state::StateError),
    /// A join phase failed (and was rolled back).
    #[error(transparent)]
    Join(#[from] crate::join::JoinFailure),
    /// `leave` stopped at a step (running it again continues).
    #[error("leave: {0}")]
    Leave(#[from] crate::join::leave::LeaveError),
    /// `upgrade` failed (and says whether it rolled back).
    #[error("upgrade: {0}")]
    Upgrade(Box<crate::join::upgrade::UpgradeError>),
    /// `install` or `bundle create` failed; nothing was installed.
    #[error("install: {0}")]
    Install(#[from] crate::install::InstallError),
    /// `doctor` found a failing check (or could not run).
    #[error("doctor: {0}")]
    Doctor(String),
    /// `token` could not make a token (no credentials, no region).
    #[error("token: {0}")]
    Token(String),
    /// `credential-process` could not get credentials.
    #[error("credential-process: {0}")]
    CredentialProcess(String),
    /// `manpages` could not write a page.
    #[error("manpages: cannot write {}: {source}", .path.display())]
    Manpages {
        /// The page or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another run holds the lock this command needs (or the lock could not be taken).
    #[error("{command}: {source}")]
    Locked {
        /// Subcommand name.
        command: &'static str,
        /// Who holds it.
        #[source]
        source: crate::runlock::LockError,
    },
    /// The async runtime could not be created.
    #[error("{command}: cannot start the async runtime: {source}")]
    Runtime {
        /// Subcommand name.
        command: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

// Boxed: these errors carry whole service responses and would make every `Result` the CLI
// passes around as large as the largest of them.
impl From<crate::identity::setup::JoinError> for CliError {
    fn from(e: crate::identity::setup::JoinError) -> Self {
        CliError::Identity(Box::new(e))
    }
}

impl From<crate::join::upgrade::UpgradeError> for CliError {
    fn from(e: crate::join::upgrade::UpgradeError) -> Self {
        CliError::Upgrade(Box::new(e))
    }
}

impl From<crate::daemon::DaemonError> for CliError {
    fn from(e: crate::daemon::DaemonError) -> Self {
        CliError::Daemon(Box::new(e))
    }
}

/// Takes the run lock `kind` for `command` (see [`crate::runlock`]).
fn lock(
    ctx: &Context<'_>,
    kind: crate::runlock::LockKind,
    command: &'static str,
) -> Result<crate::runlock::RunLock, CliError> {
    crate::runlock::RunLock::acquire(&ctx.paths, kind, command)
        .map_err(|source| CliError::Locked { command, source })
}

impl CliError {
    /// The exit code for this error (src/exit.rs).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::ConfigInvalid,
            CliError::NotBuilt { .. } => ExitCode::NotBuilt,
            CliError::Identity(e) => e.exit_code(),
            CliError::Join(e) => e.exit_code(),
            CliError::Upgrade(e)
                if matches!(**e, crate::join::upgrade::UpgradeError::NotJoined) =>
            {
                ExitCode::NotJoined
            }
            CliError::Leave(_) | CliError::Upgrade(_) | CliError::Install(_) => ExitCode::Failure,
            // Not joined is final until someone runs join: the unit's RestartPreventExitStatus=
            // keeps systemd from restarting `run` every few seconds on a host that left.
            CliError::Daemon(e)
                if matches!(
                    **e,
                    crate::daemon::DaemonError::Identity(
                        crate::identity::setup::SetupError::NotJoined { .. }
                    )
                ) =>
            {
                ExitCode::NotJoined
            }
            CliError::Locked {
                source: crate::runlock::LockError::Held { .. },
                ..
            } => ExitCode::Locked,
            CliError::Output { .. }
            | CliError::Locked { .. }
            | CliError::Render { .. }
            | CliError::Daemon(_)
            | CliError::Status(_)
            | CliError::Token(_)
            | CliError::CredentialProcess(_)
            | CliError::Doctor(_)
            | CliError::Manpages { .. }
            | CliError::Runtime { .. } => ExitCode::Failure,
        }
    }
}

/// What every command runs with.
pub struct Context<'a> {
    /// Host paths under `--root`.
    pub paths: HostPaths,
    /// The captured environment.
    pub env: &'a Env,
    /// `--config` or the default.
    pub agent_config: AgentConfigSource,
    /// Command output (stdout in the binary).
    pub out: &'a mut dyn Write,
}

impl Context<'_> {
    fn load_context(&self) -> LoadContext<'_> {
        LoadContext {
            paths: &self.paths,
            env: self.env,
            agent_config: &self.agent_config,
        }
    }

    fn write(&mut self, command: &'static str, text: &str) -> Result<(), CliError> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| CliError::Output { command, source })
    }
}

/// Runs the parsed command line.
pub fn run(cli: &Cli, env: &Env, out: &mut dyn Write) -> Result<(), CliError> {
    let mut ctx = Context {
        paths: HostPaths::new(&cli.global.root),
        env,
        agent_config: match &cli.global.config {
            Some(path) => AgentConfigSource::Explicit(path.clone()),
            None => AgentConfigSource::Default,
        },
        out,
    };
    match &cli.command {
        Command::Join(args) => join::run(args, &mut ctx),
        Command::Run(args) => run::run(args, &mut ctx),
        Command::Status(args) => status::run(args, &mut ctx),
        Command::Leave(args) => leave::run(args, &mut ctx),
        Command::Install(args) => install::run(args, &mut ctx),
        Command::Bundle(args) => install::run_bundle(args, &mut ctx),
        Command::Upgrade(args) => upgrade::run(args, &mut ctx),
        Command::Doctor(args) => doctor::run(args, &mut ctx),
        Command::Config(args) => config::run(args, &mut ctx),
        Command::Token(args) => token::run(args, &mut ctx),
        Command::CredentialProcess(args) => credential_process::run(args, &mut ctx),
        Command::Completions(args) => docs::completions(args, &mut ctx),
        Command::Rbac(args) => docs::rbac(args, &mut ctx),
        Command::Manpages(args) => docs::manpages(args, &mut ctx),
    }
}

/// Prints `err` for the user: plain text on `stderr`, or (with `--log-format json`) one
/// structured log event per problem so a log shipper sees only JSON.
pub fn report(err: &CliError, format: LogFormat, stderr: &mut dyn Write) {
    match (format, err) {
        (LogFormat::Json, CliError::Config(problems)) => {
            for problem in problems.iter() {
                tracing::error!(
                    location = %problem.location,
                    field = problem.field.as_deref().unwrap_or(""),
                    hint = problem.hint.as_deref().unwrap_or(""),
                    "{}",
                    problem.message
                );
            }
        }
        (LogFormat::Json, other) => {
            tracing::error!(exit_code = other.exit_code().code(), "{other}")
        }
        (LogFormat::Text, other) => {
            // If stderr itself is gone there is no one left to tell.
            let _ = writeln!(stderr, "error: {other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes"), "{help}");
        assert!(help.contains(" 64  "), "{help}");
    }

    #[test]
    fn every_subcommand_has_long_help() {
        let mut cmd = Cli::command();
        cmd.build();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            assert!(
                sub.get_long_about().is_some(),
                "{} has no long help",
                sub.get_name()
            );
        }
    }
}
