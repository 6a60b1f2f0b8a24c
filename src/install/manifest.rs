//! The artifact manifest, in the shape nodeadm reads from hybrid-assets.eks.amazonaws.com
//! (`supported_eks_releases[].patch_releases[].artifacts[]` with `name`, `arch`, `os`, `uri`,
//! `checksum_uri`), and the catalog of where each artifact goes on the host.
//!
//! The manifest is read tolerantly (unknown fields ignored): it is published by someone else and
//! grows fields over time; what we act on is checked here once — version, architecture, URIs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The manifest nodeadm downloads (public location; a mirror serves the same shape).
pub const DEFAULT_MANIFEST_URL: &str = "https://hybrid-assets.eks.amazonaws.com/manifest.yaml";

/// The whole manifest. Only the parts the installer uses are modelled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub supported_eks_releases: Vec<EksRelease>,
}

/// One Kubernetes minor version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EksRelease {
    pub major_minor_version: String,
    #[serde(default)]
    pub latest_patch_version: Option<String>,
    #[serde(default)]
    pub patch_releases: Vec<PatchRelease>,
}

/// One patch release with its artifacts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchRelease {
    pub version: String,
    #[serde(default)]
    pub patch_version: Option<String>,
    #[serde(default)]
    pub release_date: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<ManifestArtifact>,
}

/// One downloadable file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestArtifact {
    pub name: String,
    pub arch: String,
    #[serde(default = "linux")]
    pub os: String,
    pub uri: String,
    pub checksum_uri: String,
}

fn linux() -> String {
    "linux".to_owned()
}

/// Why the manifest cannot serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is neither YAML nor JSON in nodeadm's shape: {0}")]
    Parse(String),
    #[error("the manifest has no Kubernetes {wanted}; it offers {offered}")]
    NoVersion { wanted: String, offered: String },
    #[error("Kubernetes {version} in the manifest has no {arch} artifacts for linux")]
    NoArch { version: String, arch: String },
    #[error("Kubernetes {version} for {arch} lacks the required artifact `{name}`")]
    Missing {
        version: String,
        arch: String,
        name: String,
    },
}

impl Manifest {
    /// Parses YAML (a superset of JSON, so JSON manifests parse too).
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        serde_yaml_ng::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))
    }

    /// The release for `wanted` (`1.31` = that minor's latest patch, `1.31.2` = exactly that)
    /// and its artifacts for `arch`, with the catalog's install rules applied.
    pub fn select(&self, wanted: &str, arch: &str) -> Result<Selection, ManifestError> {
        let minor = minor_of(wanted);
        let release = self
            .supported_eks_releases
            .iter()
            .find(|r| r.major_minor_version == minor);
        let patch = release.and_then(|r| {
            if wanted == minor {
                r.patch_releases
                    .iter()
                    .max_by_key(|p| patch_number(&p.version))
            } else {
                r.patch_releases.iter().find(|p| p.version == wanted)
            }
        });
        let Some(patch) = patch else {
            let mut offered: Vec<String> = self
                .supported_eks_releases
                .iter()
                .flat_map(|r| r.patch_releases.iter().map(|p| p.version.clone()))
                .collect();
            offered.sort();
            return Err(ManifestError::NoVersion {
                wanted: wanted.to_owned(),
                offered: if offered.is_empty() {
                    "nothing".to_owned()
                } else {
                    offered.join(", ")
                },
            });
        };
        let artifacts: Vec<ManifestArtifact> = patch
            .artifacts
            .iter()
            .filter(|a| a.arch == arch && a.os == "linux")
            .cloned()
            .collect();
        if artifacts.is_empty() {
            return Err(ManifestError::NoArch {
                version: patch.version.clone(),
                arch: arch.to_owned(),
            });
        }
        for required in REQUIRED {
            if !artifacts.iter().any(|a| a.name == required) {
                return Err(ManifestError::Missing {
                    version: patch.version.clone(),
                    arch: arch.to_owned(),
                    name: required.to_owned(),
                });
            }
        }
        Ok(Selection {
            version: patch.version.clone(),
            arch: arch.to_owned(),
            artifacts,
        })
    }
}

/// `1.31.2` → `1.31`; `1.31` → `1.31`.
pub fn minor_of(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

fn patch_number(version: &str) -> u64 {
    version
        .rsplit('.')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// A release chosen from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Full patch version, e.g. `1.31.2`.
    pub version: String,
    pub arch: String,
    /// Every artifact of the release for this arch, as listed.
    pub artifacts: Vec<ManifestArtifact>,
}

/// The architecture name the manifest uses for this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Artifacts without which a node cannot join.
pub const REQUIRED: [&str; 2] = ["kubelet", "aws-iam-authenticator"];

/// How an artifact lands on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A single executable at this host path.
    Binary(&'static str),
    /// A gzip tarball whose regular files go into this directory (flattened), all executable.
    /// A plain executable (no gzip magic) lands in the directory under the artifact's name.
    IntoDir(&'static str),
}

/// Where nodeadm puts each artifact (nodeadm's artifact packages: kubelet, kubectl,
/// iamauthenticator, imagecredentialprovider, cni; containerd and runc when not from the distro
/// go where upstream release tarballs put them).
pub const CATALOG: [(&str, Placement); 7] = [
    ("kubelet", Placement::Binary("/usr/bin/kubelet")),
    ("kubectl", Placement::Binary("/usr/local/bin/kubectl")),
    (
        "aws-iam-authenticator",
        Placement::Binary("/usr/local/bin/aws-iam-authenticator"),
    ),
    (
        "ecr-credential-provider",
        Placement::Binary("/etc/eks/image-credential-provider/ecr-credential-provider"),
    ),
    ("cni-plugins", Placement::IntoDir("/opt/cni/bin")),
    ("containerd", Placement::IntoDir("/usr/local/bin")),
    ("runc", Placement::Binary("/usr/local/sbin/runc")),
];

/// Mode of installed executables.
pub const EXEC_MODE: u32 = 0o755;

/// The placement of a named artifact, `None` for names the agent does not install.
pub fn placement(name: &str) -> Option<Placement> {
    CATALOG.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// kubelet's path (the start phase runs it from here).
pub fn kubelet_path() -> PathBuf {
    PathBuf::from("/usr/bin/kubelet")
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
supported_eks_releases:
- major_minor_version: "1.31"
  latest_patch_version: "2"
  patch_releases:
  - version: 1.31.1
    patch_version: "1"
    release_date: "2024-10-01"
    artifacts:
    - {name: kubelet, arch: amd64, os: linux, uri: "https://m/1.31.1/amd64/kubelet", checksum_uri: "https://m/1.31.1/amd64/kubelet.sha256"}
    - {name: aws-iam-authenticator, arch: amd64, os: linux, uri: "https://m/1.31.1/amd64/aws-iam-authenticator", checksum_uri: "https://m/x.sha256"}
  - version: 1.31.2
    patch_version: "2"
    release_date: "2024-11-01"
    artifacts:
    - {name: kubelet, arch: amd64, os: linux, uri: "https://m/1.31.2/amd64/kubelet", checksum_uri: "https://m/1.31.2/amd64/kubelet.sha256"}
    - {name: kubelet, arch: arm64, os: linux, uri: "https://m/1.31.2/arm64/kubelet", checksum_uri: "https://m/k.sha256"}
    - {name: aws-iam-authenticator, arch: amd64, os: linux, uri: "https://m/1.31.2/amd64/aws-iam-authenticator", checksum_uri: "https://m/a.sha256"}
    - {name: cni-plugins, arch: amd64, os: linux, uri: "https://m/1.31.2/amd64/cni-plugins", checksum_uri: "https://m/c.sha256"}
region_config: {}
"#;

    #[test]
    fn minor_picks_latest_patch_and_filters_arch() {
        let m = Manifest::parse(YAML).expect("parse");
        let s = m.select("1.31", "amd64").expect("select");
        assert_eq!(s.version, "1.31.2");
        assert_eq!(s.artifacts.len(), 3);
        assert_eq!(
            m.select("1.31.1", "amd64").expect("exact").version,
            "1.31.1"
        );
    }

    #[test]
    fn errors_say_what_is_offered_or_missing() {
        let m = Manifest::parse(YAML).expect("parse");
        let e = m.select("1.30", "amd64").expect_err("absent");
        assert!(e.to_string().contains("1.31.1, 1.31.2"), "{e}");
        let e = m.select("1.31", "arm64").expect_err("no authenticator");
        assert!(e.to_string().contains("aws-iam-authenticator"), "{e}");
        assert!(matches!(
            m.select("1.31", "riscv64"),
            Err(ManifestError::NoArch { .. })
        ));
        assert!(Manifest::parse("supported_eks_releases: 7").is_err());
    }

    #[test]
    fn minor_of_versions() {
        assert_eq!(minor_of("1.31.2"), "1.31");
        assert_eq!(minor_of("1.31"), "1.31");
    }
}
