//! The install tracker (`/var/lib/hybrid-agent/tracker.json`): every file the installer put on
//! the host, with its checksum, artifact and version, and where containerd came from. Uninstall
//! removes exactly what it lists — and not a file that was changed since (someone else's now) —
//! and never a distribution containerd, which is recorded as such.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checksum::Sha256;
use crate::paths::HostPaths;

/// Where the tracker lives (host path). Ours: docs/host-paths.md "Agent files".
pub const TRACKER: &str = "/var/lib/hybrid-agent/tracker.json";
/// Format version of the file; bumped on incompatible changes.
pub const FORMAT: u32 = 1;
/// Where distributions install containerd (Debian/Ubuntu `containerd`, RHEL `containerd.io`).
pub const DISTRO_CONTAINERD: &str = "/usr/bin/containerd";
/// dpkg's per-package file lists, to name the owning package.
const DPKG_INFO: &str = "/var/lib/dpkg/info";
/// Package names that ship containerd on Debian/Ubuntu (distro and Docker's repository).
const DPKG_CONTAINERD_PACKAGES: [&str; 2] = ["containerd", "containerd.io"];

/// One installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedFile {
    /// Host path.
    pub path: PathBuf,
    /// Manifest artifact it came from.
    pub artifact: String,
    /// Kubernetes release it belongs to.
    pub version: String,
    pub sha256: Sha256,
    /// Octal mode, e.g. `0755`.
    pub mode: String,
}

/// Where containerd comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ContainerdRecord {
    /// Installed by the distribution's package manager; never removed by the agent.
    Distro {
        path: PathBuf,
        package: Option<String>,
    },
    /// Installed by us from the manifest (its files are in `files`).
    Manifest { path: PathBuf },
}

impl ContainerdRecord {
    /// The containerd executable (host path).
    pub fn path(&self) -> &Path {
        match self {
            ContainerdRecord::Distro { path, .. } | ContainerdRecord::Manifest { path } => path,
        }
    }
}

/// The tracker file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracker {
    pub format: u32,
    /// Full patch version installed, e.g. `1.31.2`.
    pub kubernetes_version: String,
    pub arch: String,
    /// Manifest URL or `bundle:<path>`.
    pub source: String,
    /// RFC 3339 time of the install.
    pub installed_at: String,
    pub containerd: ContainerdRecord,
    pub files: Vec<TrackedFile>,
    /// Directories the install created (host paths, outermost first); removed when empty.
    #[serde(default)]
    pub directories: Vec<PathBuf>,
    /// The manifest's `region_config` at install time (absent in trackers written before it
    /// was kept, and for bundles without one): ECR account and DNS suffix per region.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub region_config: super::manifest::RegionConfigs,
}

/// A tracker that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("cannot read the install tracker {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the install tracker {path} is not valid ({message}); move it aside and run `hybrid-agent install` again"
    )]
    Parse { path: PathBuf, message: String },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// What uninstall did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uninstalled {
    pub removed: Vec<PathBuf>,
    /// Files changed since install (their checksum differs): kept.
    pub kept_modified: Vec<PathBuf>,
}

impl Tracker {
    /// The tracker under `paths`, or `None` when nothing was installed.
    pub fn load(paths: &HostPaths) -> Result<Option<Self>, TrackerError> {
        let path = paths.resolve(TRACKER);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TrackerError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TrackerError::Parse {
                path,
                message: e.to_string(),
            })
    }

    /// The serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// True when every tracked file is present with its recorded checksum.
    pub fn intact(&self, paths: &HostPaths) -> bool {
        self.files
            .iter()
            .all(|f| Sha256::of_file(&paths.resolve(&f.path)).is_ok_and(|s| s == f.sha256))
    }

    /// Removes every tracked file that is unchanged, then the directories the install created
    /// (when empty), then the tracker itself. Missing files are fine: an interrupted uninstall
    /// resumes.
    pub fn uninstall(&self, paths: &HostPaths) -> Result<Uninstalled, TrackerError> {
        let mut out = Uninstalled::default();
        for f in &self.files {
            let real = paths.resolve(&f.path);
            match Sha256::of_file(&real) {
                Ok(sum) if sum == f.sha256 => {
                    fs::remove_file(&real).map_err(|source| TrackerError::Remove {
                        path: real.clone(),
                        source,
                    })?;
                    out.removed.push(f.path.clone());
                }
                Ok(_) => {
                    tracing::warn!(path = %f.path.display(), "changed since hybrid-agent installed it; keeping it");
                    out.kept_modified.push(f.path.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(TrackerError::Remove { path: real, source }),
            }
        }
        for dir in self.directories.iter().rev() {
            // Not empty means someone else keeps files there.
            let _ = fs::remove_dir(paths.resolve(dir));
        }
        let tracker = paths.resolve(TRACKER);
        fs::remove_file(&tracker)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|source| TrackerError::Remove {
                path: tracker,
                source,
            })?;
        Ok(out)
    }
}

/// A containerd installed by the distribution, if any: `/usr/bin/containerd` that our tracker
/// does not list, with the dpkg package owning it when dpkg knows.
pub fn detect_distro_containerd(
    paths: &HostPaths,
    tracker: Option<&Tracker>,
) -> Option<ContainerdRecord> {
    let bin = Path::new(DISTRO_CONTAINERD);
    if !paths.resolve(bin).is_file() {
        return None;
    }
    if tracker.is_some_and(|t| t.files.iter().any(|f| f.path == bin)) {
        return None;
    }
    let package = DPKG_CONTAINERD_PACKAGES.iter().find_map(|pkg| {
        let list = paths.resolve(Path::new(DPKG_INFO).join(format!("{pkg}.list")));
        let text = fs::read_to_string(list).ok()?;
        text.lines()
            .any(|l| l.trim() == DISTRO_CONTAINERD)
            .then(|| (*pkg).to_owned())
    });
    Some(ContainerdRecord::Distro {
        path: bin.to_path_buf(),
        package,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uninstall_removes_only_unchanged_tracked_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        fs::create_dir_all(paths.resolve("/usr/bin")).expect("mkdir");
        fs::create_dir_all(paths.resolve("/opt/cni/bin")).expect("mkdir");
        fs::create_dir_all(paths.resolve("/var/lib/hybrid-agent")).expect("mkdir");
        fs::write(paths.resolve("/usr/bin/kubelet"), b"k").expect("write");
        fs::write(paths.resolve("/opt/cni/bin/bridge"), b"changed by the user").expect("write");
        fs::write(paths.resolve("/usr/bin/containerd"), b"distro").expect("write");
        let t = Tracker {
            format: FORMAT,
            kubernetes_version: "1.31.2".into(),
            arch: "amd64".into(),
            source: "test".into(),
            installed_at: "2025-01-01T00:00:00Z".into(),
            containerd: ContainerdRecord::Distro {
                path: DISTRO_CONTAINERD.into(),
                package: None,
            },
            files: vec![
                TrackedFile {
                    path: "/usr/bin/kubelet".into(),
                    artifact: "kubelet".into(),
                    version: "1.31.2".into(),
                    sha256: Sha256::of_bytes(b"k"),
                    mode: "0755".into(),
                },
                TrackedFile {
                    path: "/opt/cni/bin/bridge".into(),
                    artifact: "cni-plugins".into(),
                    version: "1.31.2".into(),
                    sha256: Sha256::of_bytes(b"b"),
                    mode: "0755".into(),
                },
                TrackedFile {
                    path: "/usr/bin/gone".into(),
                    artifact: "x".into(),
                    version: "1.31.2".into(),
                    sha256: Sha256::of_bytes(b"g"),
                    mode: "0755".into(),
                },
            ],
            directories: vec!["/opt/cni".into(), "/opt/cni/bin".into()],
            region_config: Default::default(),
        };
        fs::write(paths.resolve(TRACKER), t.to_bytes()).expect("tracker");
        assert_eq!(Tracker::load(&paths).expect("load"), Some(t.clone()));
        let out = t.uninstall(&paths).expect("uninstall");
        assert_eq!(out.removed, vec![PathBuf::from("/usr/bin/kubelet")]);
        assert_eq!(
            out.kept_modified,
            vec![PathBuf::from("/opt/cni/bin/bridge")]
        );
        assert!(
            paths.resolve("/usr/bin/containerd").exists(),
            "distro containerd is never removed"
        );
        assert!(paths.resolve("/opt/cni/bin/bridge").exists());
        assert!(!paths.resolve(TRACKER).exists());
        // Resumable: a second run finds nothing left to do.
        assert_eq!(
            t.uninstall(&paths).expect("again").removed,
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn distro_containerd_is_detected_with_its_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        assert_eq!(detect_distro_containerd(&paths, None), None);
        fs::create_dir_all(paths.resolve("/usr/bin")).expect("mkdir");
        fs::write(paths.resolve(DISTRO_CONTAINERD), b"bin").expect("write");
        fs::create_dir_all(paths.resolve(DPKG_INFO)).expect("mkdir");
        fs::write(
            paths.resolve("/var/lib/dpkg/info/containerd.list"),
            "/usr\n/usr/bin/containerd\n",
        )
        .expect("write");
        assert_eq!(
            detect_distro_containerd(&paths, None),
            Some(ContainerdRecord::Distro {
                path: DISTRO_CONTAINERD.into(),
                package: Some("containerd".into())
            })
        );
    }
}
