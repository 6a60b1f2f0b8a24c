//! `hybrid-agent install`: fetch and verify the node artifacts for a Kubernetes version
//! ([`crate::install`]); `hybrid-agent bundle create` packs them for an offline install. Also
//! the artifact-source flags `join` and `upgrade` share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};

use super::{CliError, Context};
use crate::config;
use crate::install::manifest;
use crate::install::progress::Progress;
use crate::install::{InstallRequest, Installer};
use crate::join::{ArtifactSource, fetch_settings};
use crate::node::land::Journal;

pub(super) const LONG_ABOUT: &str = "\
Install what a hybrid node runs for one Kubernetes version: kubelet, kubectl, \
aws-iam-authenticator, the CNI plugins (/opt/cni/bin) and containerd (unless the distribution's \
is installed: it is then used, recorded as such, and never removed). Artifacts come from \
nodeadm's manifest (the public one, the mirror in the agent config, --mirror) or an offline \
bundle (--bundle, which is verified whole before anything is written). Each file is streamed to \
disk while its SHA-256 is computed and compared with the published checksum, with up to 3 tries \
that resume interrupted downloads; it lands with an atomic rename and is recorded in \
/var/lib/hybrid-agent/tracker.json so `leave` removes exactly what was installed. HTTPS is \
required unless --allow-insecure-mirror. Can run in an image build, before join.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  hybrid-agent install --kubernetes-version 1.31
  hybrid-agent install 1.31 --mirror https://artifacts.example.com/eks-hybrid
  hybrid-agent install 1.31 --bundle /media/usb/hybrid-agent-1.31.tar   # offline
  hybrid-agent --root /mnt/image install 1.31                           # into an image";

/// Where artifacts come from (shared by install, join, upgrade).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Artifacts")]
pub struct SourceArgs {
    /// Mirror serving nodeadm's manifest.yaml and the artifacts (a base URL, or the manifest's
    /// URL). Default: the agent config's artifacts.mirror_url, else the public manifest.
    #[arg(long, value_name = "URL", conflicts_with = "bundle")]
    pub mirror: Option<String>,

    /// Offline bundle made by `hybrid-agent bundle create` (taken as given, not under --root).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,

    /// Accept a plain-HTTP mirror (a trusted local one only: integrity still rests on the
    /// SHA-256 files, which an attacker in the path could replace too).
    #[arg(long)]
    pub allow_insecure_mirror: bool,
}

impl SourceArgs {
    pub fn artifact_source(&self) -> ArtifactSource {
        match (&self.bundle, &self.mirror) {
            (Some(b), _) => ArtifactSource::Bundle(b.clone()),
            (None, Some(m)) => ArtifactSource::Mirror(m.clone()),
            (None, None) => ArtifactSource::Default,
        }
    }
}

/// The Kubernetes version `install` and `upgrade` take: positional, or with nodeadm's flag
/// name; exactly one of the two. Each command words the help in its own terms (`mut_arg`).
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("version_choice").required(true).args(["kubernetes_version", "release"])))]
pub struct VersionArgs {
    /// Kubernetes version: 1.31 (its latest patch) or 1.31.2.
    #[arg(value_name = "KUBERNETES_VERSION", value_parser = parse_version)]
    pub release: Option<String>,

    /// The same as the positional KUBERNETES_VERSION (nodeadm's flag name).
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub kubernetes_version: Option<String>,
}

impl VersionArgs {
    /// The version given (clap's group makes sure there is one).
    pub fn chosen(&self) -> String {
        self.kubernetes_version
            .clone()
            .or_else(|| self.release.clone())
            .unwrap_or_default()
    }
}

/// `install` flags.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("release", |a| a.help("Kubernetes version to install: 1.31 (its latest patch) or 1.31.2")))]
pub struct InstallArgs {
    /// The version to install.
    #[command(flatten)]
    pub version: VersionArgs,

    /// Artifact source.
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `bundle` subcommands.
#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BundleCommand {
    /// Download and verify every artifact of a release into one file for offline installs.
    Create(BundleCreateArgs),
}

/// `bundle create` flags.
#[derive(Debug, Clone, Args)]
pub struct BundleCreateArgs {
    /// Kubernetes version: 1.31 (its latest patch) or 1.31.2.
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub kubernetes_version: String,

    /// Bundle file to write (taken as given).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Architecture (amd64, arm64). Default: this machine's.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,

    /// Mirror serving nodeadm's manifest.yaml (default: the agent config's, else the public).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,

    /// Accept a plain-HTTP mirror.
    #[arg(long)]
    pub allow_insecure_mirror: bool,
}

pub(super) const BUNDLE_LONG_ABOUT: &str = "\
Offline bundles: `bundle create` downloads every artifact of one Kubernetes release (verifying \
each SHA-256) and writes them, with nodeadm's manifest and a SHA256SUMS of every member, into one \
tar file. Carry it to a machine without network and run `hybrid-agent install --bundle FILE` (or \
`join --bundle FILE`): the whole bundle is verified before anything on the host changes.

Example:
  hybrid-agent bundle create --kubernetes-version 1.31 --out hybrid-agent-1.31.tar";

/// Accepts `MAJOR.MINOR` (latest patch) or `MAJOR.MINOR.PATCH`.
pub(super) fn parse_version(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split('.').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not a Kubernetes version like 1.31 or 1.31.2"
        ))
    }
}

/// A wait such as `90s`, `5m` or a bare number of seconds.
pub(super) fn parse_wait(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let (digits, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{value}` is not a duration like 90s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{value}` has an unknown unit; use ms, s or m")),
    }
}

/// The runtime of the commands that talk to the network and supervise processes.
pub(super) fn runtime(command: &'static str) -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| CliError::Runtime { command, source })
}

pub(super) fn run(args: &InstallArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let installer = Installer::new(
        ctx.paths.clone(),
        &fetch_settings(&agent, args.source.allow_insecure_mirror),
        Progress::auto(),
    )?;
    let req = InstallRequest {
        kubernetes_version: args.version.chosen(),
        arch: manifest::host_arch().to_owned(),
        source: args.source.artifact_source().resolve(&agent),
    };
    let rt = runtime("install")?;
    let mut journal = Journal::new(
        ctx.paths.clone(),
        "/var/lib/hybrid-agent/backups/install",
        None,
    );
    let report = match rt.block_on(installer.install(&req, &mut journal)) {
        Ok(r) => r,
        Err(e) => {
            // Whatever landed before the failure is undone: install is all or nothing.
            for failure in journal.rollback() {
                tracing::error!("rollback: {failure}");
            }
            return Err(e.into());
        }
    };
    // A successful standalone install keeps no backups: `leave` removes what the tracker lists.
    if let Err(e) = journal.discard() {
        tracing::warn!("cannot remove install backups: {e}");
    }
    let text = if report.unchanged {
        format!(
            "Kubernetes {} is already installed and intact; nothing to do\n",
            report.version
        )
    } else {
        let containerd = match &report.containerd {
            crate::install::tracker::ContainerdRecord::Distro { path, package } => {
                format!(
                    "the distribution's ({}{})",
                    path.display(),
                    package
                        .as_ref()
                        .map(|p| format!(", package {p}"))
                        .unwrap_or_default()
                )
            }
            crate::install::tracker::ContainerdRecord::Manifest { path } => {
                format!("installed at {}", path.display())
            }
        };
        format!(
            "installed Kubernetes {}: {} files verified ({} bytes downloaded{}); containerd: {containerd}; recorded in {}\n",
            report.version,
            report.files.len(),
            report.downloaded_bytes,
            if report.resumed > 0 {
                format!(", {} download(s) resumed", report.resumed)
            } else {
                String::new()
            },
            crate::install::tracker::TRACKER
        )
    };
    ctx.write("install", &text)
}

pub(super) fn run_bundle(args: &BundleArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let BundleCommand::Create(args) = &args.command;
    let agent = config::load_agent(ctx.load_context())?.agent;
    let installer = Installer::new(
        ctx.paths.clone(),
        &fetch_settings(&agent, args.allow_insecure_mirror),
        Progress::auto(),
    )?;
    let source = match &args.mirror {
        Some(m) => ArtifactSource::Mirror(m.clone()),
        None => ArtifactSource::Default,
    };
    let crate::install::Source::Mirror { manifest_url } = source.resolve(&agent) else {
        return Err(CliError::Output {
            command: "bundle",
            source: std::io::Error::other("a bundle is made from a mirror"),
        });
    };
    let arch = args
        .arch
        .clone()
        .unwrap_or_else(|| manifest::host_arch().to_owned());
    let rt = runtime("bundle")?;
    let meta = rt.block_on(installer.create_bundle(
        &manifest_url,
        &args.kubernetes_version,
        &arch,
        &args.out,
    ))?;
    let total: u64 = meta.artifacts.iter().map(|a| a.size).sum();
    let names: Vec<&str> = meta.artifacts.iter().map(|a| a.name.as_str()).collect();
    ctx.write(
        "bundle",
        &format!(
            "wrote {} (Kubernetes {} {}, {} artifacts: {}; {total} bytes)\n",
            args.out.display(),
            meta.kubernetes_version,
            meta.arch,
            meta.artifacts.len(),
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(parse_version("1.31").is_ok());
        assert!(parse_version("1.31.2").is_ok());
        assert!(parse_version("v1.31").is_err());
        assert!(parse_version("1").is_err());
    }

    #[test]
    fn waits() {
        assert_eq!(parse_wait("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_wait("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_wait("30"), Ok(Duration::from_secs(30)));
        assert!(parse_wait("5h").is_err());
    }
}
