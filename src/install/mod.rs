//! Installing what a hybrid node runs — kubelet, aws-iam-authenticator, the CNI plugins,
//! containerd (unless the distribution's is there), and friends — from nodeadm's manifest on a
//! mirror or from an offline bundle.
//!
//! The order is what makes it safe:
//! 1. resolve the release in the manifest (or verify the whole bundle) — nothing written yet;
//! 2. download every artifact into a staging directory under the agent's state directory,
//!    verifying each SHA-256 while it streams ([`download`]) — a failure here deletes the staging
//!    directory and leaves the host as it was;
//! 3. land the verified files with atomic renames through a [`land::Journal`], which backs up
//!    what it replaces, so the caller can roll the whole install back (join does when a later
//!    phase fails; upgrade does when the new kubelet is unhealthy);
//! 4. write the tracker ([`tracker`]) listing every installed file and its checksum, which is
//!    what uninstall (and `leave`) removes — exactly that, nothing else.
//!
//! A release already installed and intact is left alone (no download).

pub mod bundle;
pub mod checksum;
pub mod download;
// The file transaction log is the node's (install, join and node all land files through it).
pub use crate::node::land;
pub mod manifest;
pub mod progress;
pub mod tracker;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use checksum::Sha256;
use download::{FetchError, FetchSettings, Fetcher};
use land::{Change, Journal, LandError};
use manifest::{EXEC_MODE, ManifestArtifact, ManifestError, Placement, Selection};
use progress::Progress;
use tracker::{ContainerdRecord, TrackedFile, Tracker, TrackerError};

use crate::paths::{HostPaths, STATE_DIR};

/// Staging area for downloads, inside the state directory so the final renames stay on one
/// filesystem. Ours.
pub const STAGING_DIR: &str = "/var/lib/hybrid-agent/staging";
/// gzip's magic bytes (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Mode of non-executable files unpacked from a tarball (licences, READMEs).
const DATA_MODE: u32 = 0o644;

/// Where the artifacts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A manifest URL (nodeadm's shape); artifacts at the URIs it lists.
    Mirror { manifest_url: String },
    /// An offline bundle file (see [`bundle`]).
    Bundle(PathBuf),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            // A mirror password must not reach the tracker (or anything shown).
            Source::Mirror { manifest_url } => download::shown_url(manifest_url),
            Source::Bundle(p) => format!("bundle:{}", p.display()),
        }
    }
}

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// `1.31` (latest patch) or `1.31.2`.
    pub kubernetes_version: String,
    /// Manifest architecture name (`amd64`, `arm64`); see [`manifest::host_arch`].
    pub arch: String,
    pub source: Source,
}

/// Why an install failed. Unless the variant says otherwise, nothing was installed (or what was
/// landed has been rolled back by the caller's journal).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot get the artifact manifest: {0}")]
    ManifestFetch(#[source] FetchError),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("the manifest {manifest_url} is refused: {source}")]
    ManifestRefused {
        manifest_url: String,
        #[source]
        source: ManifestError,
    },
    #[error(
        "the artifact name `{name}` is not a plain file name ({problem}); nothing was written for it"
    )]
    UnsafeName { name: String, problem: &'static str },
    #[error("{artifact}: {source}")]
    Fetch {
        artifact: String,
        #[source]
        source: FetchError,
    },
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("{artifact}: cannot unpack {path}: {message}")]
    Unpack {
        artifact: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "containerd is not installed from the distribution ({}) and the manifest for Kubernetes {version} has no containerd artifact; install it first (`apt-get install containerd` or `dnf install containerd`)",
        tracker::DISTRO_CONTAINERD
    )]
    NoContainerd { version: String },
    #[error(transparent)]
    Land(#[from] LandError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// Full version installed.
    pub version: String,
    /// True when the release was already installed and intact: nothing was touched.
    pub unchanged: bool,
    /// Every installed file.
    pub files: Vec<TrackedFile>,
    pub containerd: ContainerdRecord,
    /// Body bytes received over the network, retries included (0 for bundles and no-ops).
    pub downloaded_bytes: u64,
    /// Downloads that resumed with a Range request.
    pub resumed: u32,
    /// The manifest's `region_config` (ECR account and DNS suffix per region).
    pub region_config: manifest::RegionConfigs,
}

/// The installer: host paths, the downloader and how to show progress.
#[derive(Debug, Clone)]
pub struct Installer {
    paths: HostPaths,
    fetcher: Fetcher,
    progress: Progress,
}

/// One artifact, staged and verified.
struct Staged {
    artifact: ManifestArtifact,
    placement: Placement,
    file: PathBuf,
    sha256: Sha256,
}

impl Installer {
    pub fn new(
        paths: HostPaths,
        fetch: &FetchSettings,
        progress: Progress,
    ) -> Result<Self, InstallError> {
        let fetcher = Fetcher::new(fetch).map_err(InstallError::ManifestFetch)?;
        Ok(Self {
            paths,
            fetcher,
            progress,
        })
    }

    /// The downloader (for `bundle create`).
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Resolves the release without writing anything: the manifest selection (online) or the
    /// verified bundle.
    pub async fn resolve(&self, req: &InstallRequest) -> Result<Resolved, InstallError> {
        match &req.source {
            Source::Mirror { manifest_url } => {
                let text = self
                    .fetcher
                    .text(manifest_url)
                    .await
                    .map_err(InstallError::ManifestFetch)?;
                let manifest = manifest::Manifest::parse(&text)?;
                let selection = manifest
                    .select(&req.kubernetes_version, &req.arch)
                    .map_err(|e| match e {
                        ManifestError::UnsafeName { .. } => InstallError::ManifestRefused {
                            manifest_url: download::shown_url(manifest_url),
                            source: e,
                        },
                        e => InstallError::Manifest(e),
                    })?;
                // Refuse plain HTTP before the first byte of an artifact moves.
                for a in &selection.artifacts {
                    for url in [a.download_uri(), &a.checksum_uri] {
                        self.fetcher
                            .check_url(url)
                            .map_err(|source| InstallError::Fetch {
                                artifact: a.name.clone(),
                                source,
                            })?;
                    }
                }
                Ok(Resolved {
                    selection,
                    bundle: None,
                })
            }
            Source::Bundle(path) => {
                let path = path.clone();
                let (version, arch) = (req.kubernetes_version.clone(), req.arch.clone());
                let verified =
                    tokio::task::spawn_blocking(move || bundle::verify(&path, &version, &arch))
                        .await
                        .map_err(|e| InstallError::Io {
                            op: "verify",
                            path: req_path(req),
                            source: std::io::Error::other(e),
                        })??;
                Ok(Resolved {
                    selection: verified.selection.clone(),
                    bundle: Some(verified),
                })
            }
        }
    }

    /// Installs the release `req` names, recording every host change in `journal` (which the
    /// caller commits or rolls back). See the module docs for the order of operations.
    pub async fn install(
        &self,
        req: &InstallRequest,
        journal: &mut Journal,
    ) -> Result<InstallReport, InstallError> {
        let resolved = self.resolve(req).await?;
        self.install_resolved(req, &resolved, journal).await
    }

    /// [`Installer::install`] for an already resolved release.
    pub async fn install_resolved(
        &self,
        req: &InstallRequest,
        resolved: &Resolved,
        journal: &mut Journal,
    ) -> Result<InstallReport, InstallError> {
        let selection = &resolved.selection;
        let previous = Tracker::load(&self.paths)?;
        let containerd = self.containerd_source(selection, previous.as_ref())?;
        if let Some(t) = &previous
            && t.kubernetes_version == selection.version
            && t.arch == selection.arch
            && t.containerd == containerd
            && t.intact(&self.paths)
        {
            return Ok(InstallReport {
                version: t.kubernetes_version.clone(),
                unchanged: true,
                files: t.files.clone(),
                containerd,
                downloaded_bytes: 0,
                resumed: 0,
                region_config: selection.region_config.clone(),
            });
        }
        let wanted: Vec<(ManifestArtifact, Placement)> = selection
            .artifacts
            .iter()
            .filter(|a| !(a.name == "containerd" && matches!(containerd, ContainerdRecord::Distro { .. })))
            .filter_map(|a| match manifest::placement(&a.name) {
                Some(p) => Some((a.clone(), p)),
                None => {
                    tracing::debug!(artifact = %a.name, "not an artifact hybrid-agent installs; skipped");
                    None
                }
            })
            .collect();

        if journal.is_dry_run() {
            for (a, p) in &wanted {
                let dest = match p {
                    Placement::Binary(path) => (*path).to_owned(),
                    Placement::IntoDir(dir) => format!("{dir}/"),
                };
                journal.plan(format!(
                    "download {} and verify it against {}, install into {dest}",
                    a.download_uri(),
                    a.checksum_uri
                ));
            }
            journal.plan(format!(
                "record the installed files in {}",
                tracker::TRACKER
            ));
            return Ok(InstallReport {
                version: selection.version.clone(),
                unchanged: false,
                files: Vec::new(),
                containerd,
                downloaded_bytes: 0,
                resumed: 0,
                region_config: selection.region_config.clone(),
            });
        }

        // The state directory holds the staging area and the tracker; when this run creates it,
        // the journal owns it (a rollback removes it whole).
        journal.ensure_tree(Path::new(STATE_DIR), 0o700)?;
        let staging = StagingDir::create(&self.paths)?;
        let (staged, downloaded_bytes, resumed) = match &resolved.bundle {
            None => self.download_all(&wanted, staging.path()).await?,
            Some(b) => (stage_from_bundle(b, &wanted, staging.path())?, 0, 0),
        };

        // Everything is verified: from here on the host changes, through the journal.
        let dirs_before: usize = journal.changes().len();
        let mut files = Vec::new();
        for s in &staged {
            for (file, dest, mode, sum) in unpack(s, staging.path())? {
                journal.land_file(&file, &dest, mode)?;
                files.push(TrackedFile {
                    path: dest,
                    artifact: s.artifact.name.clone(),
                    version: selection.version.clone(),
                    sha256: sum,
                    mode: format!("{mode:04o}"),
                });
            }
        }
        let mut directories: Vec<PathBuf> = journal.changes()[dirs_before..]
            .iter()
            .filter_map(|c| match c {
                Change::CreatedDir { path } => Some(path.clone()),
                _ => None,
            })
            .collect();
        // Files of the previous release that the new one does not have (upgrade).
        if let Some(prev) = &previous {
            for old in &prev.files {
                if !files.iter().any(|f| f.path == old.path) {
                    journal.remove_file(&old.path)?;
                }
            }
            for d in &prev.directories {
                if !directories.contains(d) {
                    directories.push(d.clone());
                }
            }
        }
        drop(staging);
        let containerd = match containerd {
            ContainerdRecord::Manifest { .. } => ContainerdRecord::Manifest {
                path: files
                    .iter()
                    .find(|f| {
                        f.artifact == "containerd"
                            && f.path.file_name().is_some_and(|n| n == "containerd")
                    })
                    .map(|f| f.path.clone())
                    .unwrap_or_else(|| PathBuf::from("/usr/local/bin/containerd")),
            },
            other => other,
        };
        let record = Tracker {
            format: tracker::FORMAT,
            kubernetes_version: selection.version.clone(),
            arch: selection.arch.clone(),
            source: req.source.describe(),
            installed_at: now_rfc3339(),
            containerd: containerd.clone(),
            files: files.clone(),
            directories,
            region_config: selection.region_config.clone(),
        };
        journal.write_file(Path::new(tracker::TRACKER), &record.to_bytes(), 0o644)?;
        Ok(InstallReport {
            version: selection.version.clone(),
            unchanged: false,
            files,
            containerd,
            downloaded_bytes,
            resumed,
            region_config: selection.region_config.clone(),
        })
    }

    fn containerd_source(
        &self,
        selection: &Selection,
        previous: Option<&Tracker>,
    ) -> Result<ContainerdRecord, InstallError> {
        if let Some(distro) = tracker::detect_distro_containerd(&self.paths, previous) {
            return Ok(distro);
        }
        if selection.artifacts.iter().any(|a| a.name == "containerd") {
            return Ok(ContainerdRecord::Manifest {
                path: PathBuf::from("/usr/local/bin/containerd"),
            });
        }
        Err(InstallError::NoContainerd {
            version: selection.version.clone(),
        })
    }

    async fn download_all(
        &self,
        wanted: &[(ManifestArtifact, Placement)],
        staging: &Path,
    ) -> Result<(Vec<Staged>, u64, u32), InstallError> {
        let mut out = Vec::new();
        let (mut bytes, mut resumed) = (0, 0);
        for (a, p) in wanted {
            let dest = staged_path(staging, &a.name)?;
            let (got, _) = self.fetch_artifact(a, &dest).await?;
            bytes += got.transferred;
            resumed += got.resumed;
            out.push(Staged {
                artifact: a.clone(),
                placement: *p,
                file: dest,
                sha256: got.sha256,
            });
        }
        Ok((out, bytes, resumed))
    }

    /// Fetches `a`'s published checksum, then `a` itself into `dest`, verified against it.
    /// Returns the download and the checksum file's text.
    async fn fetch_artifact(
        &self,
        a: &ManifestArtifact,
        dest: &Path,
    ) -> Result<(download::Fetched, String), InstallError> {
        let fetch_err = |source| InstallError::Fetch {
            artifact: a.name.clone(),
            source,
        };
        // The checksum file lists the artifact under the name it has on the mirror.
        let file_name = a.uri.rsplit('/').next().unwrap_or(&a.name);
        let (expected, text) = self
            .fetcher
            .checksum(&a.checksum_uri, file_name)
            .await
            .map_err(fetch_err)?;
        let got = match &a.gzip_uri {
            Some(gz) => {
                self.fetcher
                    .gzip_file(gz, &a.checksum_uri, expected, dest, &a.name, &self.progress)
                    .await
            }
            None => {
                self.fetcher
                    .file(
                        &a.uri,
                        &a.checksum_uri,
                        expected,
                        dest,
                        &a.name,
                        &self.progress,
                    )
                    .await
            }
        }
        .map_err(fetch_err)?;
        Ok((got, text))
    }

    /// Downloads every artifact of a release that the installer knows ([`manifest::CATALOG`])
    /// into `dir` (verified), for `bundle create`. Others are left out: no install could use them.
    pub async fn download_release(
        &self,
        selection: &Selection,
        dir: &Path,
    ) -> Result<Vec<bundle::Downloaded>, InstallError> {
        let mut out = Vec::new();
        for a in &selection.artifacts {
            if manifest::placement(&a.name).is_none() {
                tracing::info!(artifact = %a.name, uri = %a.uri, "not an artifact hybrid-agent installs; left out of the bundle");
                continue;
            }
            let dest = staged_path(dir, &a.name)?;
            let (got, text) = self.fetch_artifact(a, &dest).await?;
            out.push(bundle::Downloaded {
                artifact: a.clone(),
                file: dest,
                sha256: got.sha256,
                size: got.bytes,
                checksum_text: text,
            });
        }
        Ok(out)
    }
}

/// `dir/name` for an artifact name from a manifest or bundle, refused unless `name` is a plain
/// file name ([`manifest::check_name`]) — so the path can never leave `dir`. [`Manifest::select`]
/// refuses such names already; this keeps every join safe on its own.
///
/// [`Manifest::select`]: manifest::Manifest::select
fn staged_path(dir: &Path, name: &str) -> Result<PathBuf, InstallError> {
    manifest::check_name(name).map_err(|problem| InstallError::UnsafeName {
        name: name.to_owned(),
        problem,
    })?;
    Ok(dir.join(name))
}

fn req_path(req: &InstallRequest) -> PathBuf {
    match &req.source {
        Source::Bundle(p) => p.clone(),
        Source::Mirror { .. } => PathBuf::new(),
    }
}

/// A release resolved by [`Installer::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    pub selection: Selection,
    /// The verified bundle, for offline installs.
    pub bundle: Option<bundle::Verified>,
}

fn stage_from_bundle(
    b: &bundle::Verified,
    wanted: &[(ManifestArtifact, Placement)],
    staging: &Path,
) -> Result<Vec<Staged>, InstallError> {
    let mut members = BTreeMap::new();
    let mut out = Vec::new();
    for (a, p) in wanted {
        let dest = staged_path(staging, &a.name)?;
        let sum = b
            .artifact_sum(a)
            .ok_or_else(|| bundle::BundleError::Invalid {
                path: b.path.clone(),
                message: format!("`{}` was not verified", a.uri),
            })?;
        members.insert(a.uri.clone(), dest.clone());
        out.push(Staged {
            artifact: a.clone(),
            placement: *p,
            file: dest,
            sha256: sum,
        });
    }
    bundle::extract(b, &members)?;
    Ok(out)
}

/// The files one staged artifact becomes: `(staged file, host path, mode, sha256)`.
fn unpack(
    s: &Staged,
    staging: &Path,
) -> Result<Vec<(PathBuf, PathBuf, u32, Sha256)>, InstallError> {
    match s.placement {
        Placement::Binary(dest) => Ok(vec![(
            s.file.clone(),
            PathBuf::from(dest),
            EXEC_MODE,
            s.sha256,
        )]),
        Placement::IntoDir(dir) => {
            let mut magic = [0u8; 2];
            let gz = fs::File::open(&s.file)
                .and_then(|mut f| f.read_exact(&mut magic))
                .map(|()| magic == GZIP_MAGIC)
                .unwrap_or(false);
            if !gz {
                return Ok(vec![(
                    s.file.clone(),
                    Path::new(dir).join(&s.artifact.name),
                    EXEC_MODE,
                    s.sha256,
                )]);
            }
            let into = staging.join(format!("{}.d", s.artifact.name));
            let unpack_err = |message: String| InstallError::Unpack {
                artifact: s.artifact.name.clone(),
                path: s.file.clone(),
                message,
            };
            fs::create_dir(&into).map_err(|e| unpack_err(e.to_string()))?;
            let file = fs::File::open(&s.file).map_err(|e| unpack_err(e.to_string()))?;
            let mut archive =
                tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
            let mut out = Vec::new();
            for entry in archive.entries().map_err(|e| unpack_err(e.to_string()))? {
                let mut entry = entry.map_err(|e| unpack_err(e.to_string()))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(|e| unpack_err(e.to_string()))?
                    .into_owned();
                // Flattened to the base name: release tarballs put binaries in `./` or `bin/`,
                // and a name can then never climb out of the target directory.
                let Some(name) = path.file_name().map(|n| n.to_owned()) else {
                    continue;
                };
                let mode = if entry.header().mode().unwrap_or(0) & 0o111 != 0 {
                    EXEC_MODE
                } else {
                    DATA_MODE
                };
                let staged = into.join(&name);
                if out
                    .iter()
                    .any(|(_, d, _, _): &(PathBuf, PathBuf, u32, Sha256)| {
                        d.file_name() == Some(name.as_os_str())
                    })
                {
                    return Err(unpack_err(format!(
                        "two entries are named {}",
                        name.to_string_lossy()
                    )));
                }
                let mut f = download::create_exclusive(&staged)
                    .map_err(|e| unpack_err(format!("{}: {e}", staged.display())))?;
                let mut h = checksum::Hasher::new();
                let mut buf = vec![0u8; 128 * 1024];
                loop {
                    let n = entry
                        .read(&mut buf)
                        .map_err(|e| unpack_err(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    std::io::Write::write_all(&mut f, &buf[..n])
                        .map_err(|e| unpack_err(e.to_string()))?;
                }
                f.sync_all().map_err(|e| unpack_err(e.to_string()))?;
                out.push((staged, Path::new(dir).join(&name), mode, h.finish()));
            }
            if out.is_empty() {
                return Err(unpack_err("the tarball holds no files".to_owned()));
            }
            Ok(out)
        }
    }
}

/// The staging directory; removed (with whatever is left in it) when dropped, together with the
/// parents it had to create, so a failed download leaves no trace.
struct StagingDir {
    path: PathBuf,
    created: Vec<PathBuf>,
}

impl StagingDir {
    fn create(paths: &HostPaths) -> Result<Self, InstallError> {
        let root = paths.resolve(STAGING_DIR);
        remove_leftover_staging(&root);
        let path = root.join(format!("{}", std::process::id()));
        let mut created = Vec::new();
        let mut cur = Some(path.as_path());
        let mut missing = Vec::new();
        while let Some(d) = cur {
            if d.is_dir() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        for d in missing.into_iter().rev() {
            fs::create_dir(&d).map_err(|source| InstallError::Io {
                op: "create directory",
                path: d.clone(),
                source,
            })?;
            let mode = if d == paths.resolve(STATE_DIR) {
                0o700
            } else {
                land::DIR_MODE
            };
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(|source| {
                InstallError::Io {
                    op: "chmod",
                    path: d.clone(),
                    source,
                }
            })?;
            created.push(d);
        }
        if !created.contains(&path) {
            // A leftover from a killed run of this pid: start empty.
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).map_err(|source| InstallError::Io {
                op: "create directory",
                path: path.clone(),
                source,
            })?;
        }
        Ok(Self { path, created })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes what runs killed mid-download left in the staging area (`<pid>/` of a process that is
/// gone, and anything else that is not a run's directory): a SIGKILL or a power cut skips
/// [`StagingDir`]'s `Drop`, and each run stages under its own pid, so nothing else would ever
/// remove them. The directory of a run still going (its pid is alive) is kept. Best effort:
/// what cannot be removed now is tried again by the next run.
fn remove_leftover_staging(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let ours = std::process::id();
    for entry in entries.flatten() {
        let live = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| pid != ours && pid_alive(pid));
        if live {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a staging area left by an interrupted run")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a staging area left by an interrupted run: {e}")
            }
        }
    }
}

/// Whether a process with this pid exists (signal 0; EPERM means it exists but is not ours).
fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        for d in self.created.iter().rev() {
            // Only if empty: the state directory may have gained other content meanwhile.
            let _ = fs::remove_dir(d);
        }
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Installer {
    /// `bundle create`: downloads (and verifies) every artifact of the release from the mirror
    /// into a temporary directory next to `out`, then writes the bundle to `out` atomically.
    pub async fn create_bundle(
        &self,
        manifest_url: &str,
        version: &str,
        arch: &str,
        out: &Path,
    ) -> Result<bundle::BundleMeta, InstallError> {
        let req = InstallRequest {
            kubernetes_version: version.to_owned(),
            arch: arch.to_owned(),
            source: Source::Mirror {
                manifest_url: manifest_url.to_owned(),
            },
        };
        let resolved = self.resolve(&req).await?;
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let work = WorkDir(parent.join(format!(".hybrid-agent-bundle-{}", std::process::id())));
        let _ = fs::remove_dir_all(&work.0);
        fs::create_dir(&work.0).map_err(|source| InstallError::Io {
            op: "create directory",
            path: work.0.clone(),
            source,
        })?;
        let items = self.download_release(&resolved.selection, &work.0).await?;
        let (out, version, arch, source) = (
            out.to_path_buf(),
            resolved.selection.version.clone(),
            arch.to_owned(),
            manifest_url.to_owned(),
        );
        let meta = tokio::task::spawn_blocking(move || {
            bundle::write(&out, &version, &arch, &source, &now_rfc3339(), &items)
        })
        .await
        .map_err(|e| InstallError::Io {
            op: "write",
            path: PathBuf::from("bundle"),
            source: std::io::Error::other(e),
        })??;
        Ok(meta)
    }
}

/// A scratch directory removed with its content when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        pid
    }

    /// A run killed mid-download (SIGKILL, power cut) cannot clean up after itself: the next run
    /// removes what such runs left, but never the staging area of a run still going.
    #[test]
    fn staging_leftovers_of_dead_runs_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        let staging = paths.resolve(STAGING_DIR);
        let dead = staging.join(dead_pid().to_string());
        let live = staging.join("1");
        let stray = staging.join("not-a-pid");
        for d in [&dead, &live, &stray] {
            fs::create_dir_all(d.join("sub")).expect("mkdir");
            fs::write(d.join("sub/kubelet.part"), b"half a download").expect("seed");
        }
        let ours = StagingDir::create(&paths).expect("staging");
        assert!(!dead.exists(), "a dead run's staging area was left behind");
        assert!(!stray.exists(), "a stray entry was left behind");
        assert!(live.exists(), "the staging area of a live run was removed");
        assert!(ours.path().is_dir());
        let path = ours.path().to_path_buf();
        drop(ours);
        assert!(!path.exists());
        assert!(live.exists());
    }
}
