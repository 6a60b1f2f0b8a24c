//! The artifact manifest, in the shape nodeadm reads from hybrid-assets.eks.amazonaws.com
//! (`supported_eks_releases[].patch_releases[].artifacts[]` with `name`, `arch`, `os`, `uri`,
//! `checksum_uri`, `gzip_uri`; `region_config` per region), and the catalog of where each
//! artifact goes on the host.
//!
//! Release choice follows nodeadm (internal/aws/source.go `getLatestEksSource`): a minor version
//! means the release whose `patch_version` is the minor's `latest_patch_version`, a full version
//! the release with that patch; when several match, the latest `release_date` wins.
//!
//! The manifest is read tolerantly (unknown fields ignored): it is published by someone else and
//! grows fields over time; what we act on is checked here once — version, architecture, URIs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::node::ecr::RegionConfig;

/// The manifest nodeadm downloads (public location; a mirror serves the same shape).
pub const DEFAULT_MANIFEST_URL: &str = "https://hybrid-assets.eks.amazonaws.com/manifest.yaml";
/// The manifest for the China regions (nodeadm internal/aws/manifest.go `getManifestURL`).
pub const CHINA_MANIFEST_URL: &str = "https://eks-hybrid-assets.awsstatic.cn/manifest.yaml";

/// The public manifest for a node in `region`: China's host for `cn-*` (the aws-cn partition),
/// the global one otherwise.
pub fn default_manifest_url(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        CHINA_MANIFEST_URL
    } else {
        DEFAULT_MANIFEST_URL
    }
}

/// `region_config`: one entry per region name.
pub type RegionConfigs = BTreeMap<String, RegionConfig>;

/// The whole manifest. Only the parts the installer uses are modelled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub supported_eks_releases: Vec<EksRelease>,
    /// ECR account and DNS suffix of the EKS images per region.
    #[serde(default)]
    pub region_config: RegionConfigs,
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
    /// SHA-256 of the artifact itself (the uncompressed file, also when fetched as gzip).
    pub checksum_uri: String,
    /// The same artifact gzip-compressed; preferred when present (nodeadm
    /// internal/aws/source.go `getSource`: decompressed, then checked against `checksum_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip_uri: Option<String>,
}

impl ManifestArtifact {
    /// The URLs fetched for this artifact: the download (gzip preferred) and the checksum.
    pub fn download_uri(&self) -> &str {
        self.gzip_uri.as_deref().unwrap_or(&self.uri)
    }
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
    #[error(
        "Kubernetes {version} lists an artifact named `{name}` ({uri}), which is not a plain file name: {problem} (artifact names become file names, like `kubelet`)"
    )]
    UnsafeName {
        version: String,
        name: String,
        uri: String,
        problem: &'static str,
    },
}

/// Checks that an artifact name from a manifest or bundle is a plain file name, which the
/// installer may join to a directory of its own: not empty, not `.` or `..`, no `/`, no NUL.
/// Returns what is wrong otherwise.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name == "." || name == ".." {
        Err("it names a directory (`.` or `..`)")
    } else if name.contains('/') {
        Err("it contains `/`")
    } else if name.contains('\0') {
        Err("it contains a NUL byte")
    } else {
        Ok(())
    }
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
            let matching: Vec<&PatchRelease> = if wanted == minor {
                match &r.latest_patch_version {
                    Some(latest) => r
                        .patch_releases
                        .iter()
                        .filter(|p| p.patch() == latest.as_str())
                        .collect(),
                    // A manifest without latest_patch_version: the highest patch.
                    None => {
                        let top = r
                            .patch_releases
                            .iter()
                            .map(|p| patch_number(&p.version))
                            .max();
                        r.patch_releases
                            .iter()
                            .filter(|p| Some(patch_number(&p.version)) == top)
                            .collect()
                    }
                }
            } else {
                let patch = wanted.rsplit('.').next().unwrap_or_default();
                r.patch_releases
                    .iter()
                    .filter(|p| p.version == wanted || p.patch() == patch)
                    .collect()
            };
            // Several releases of one patch (a rebuild): the latest release_date (ISO dates
            // order as strings; a missing date is oldest).
            matching
                .into_iter()
                .rev()
                .max_by(|a, b| a.release_date.cmp(&b.release_date))
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
        // Names become file names under the staging and bundle directories: a name that is a
        // path (`../../etc/passwd`, `/etc/shadow`) refuses the manifest before any write.
        for a in &artifacts {
            check_name(&a.name).map_err(|problem| ManifestError::UnsafeName {
                version: patch.version.clone(),
                name: a.name.clone(),
                uri: a.uri.clone(),
                problem,
            })?;
        }
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
            region_config: self.region_config.clone(),
        })
    }
}

impl PatchRelease {
    /// `patch_version`, else the last component of `version`.
    fn patch(&self) -> &str {
        self.patch_version
            .as_deref()
            .unwrap_or_else(|| self.version.rsplit('.').next().unwrap_or_default())
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
    /// The manifest's `region_config` (ECR account and DNS suffix per region).
    #[serde(default)]
    pub region_config: RegionConfigs,
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
region_config:
  ap-southeast-7: {partition: aws, dns_suffix: amazonaws.com, ecr_account_id: "123456789012", cred_providers: {ssm: true, iam-ra: true}}
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
    fn latest_patch_version_wins_and_release_date_breaks_ties() {
        const TIES: &str = r#"
supported_eks_releases:
- major_minor_version: "1.30"
  latest_patch_version: "4"
  patch_releases:
  - {version: 1.30.9, patch_version: "9", release_date: "2025-03-01", artifacts: []}
  - {version: 1.30.4, patch_version: "4", release_date: "2024-10-01", artifacts: [{name: kubelet, arch: amd64, os: linux, uri: "https://m/old/kubelet", checksum_uri: "https://m/old/kubelet.sha256"}]}
  - {version: 1.30.4, patch_version: "4", release_date: "2024-12-01", artifacts: [{name: kubelet, arch: amd64, os: linux, uri: "https://m/new/kubelet", checksum_uri: "https://m/new/kubelet.sha256", gzip_uri: "https://m/new/kubelet.gz"}, {name: aws-iam-authenticator, arch: amd64, os: linux, uri: "https://m/new/a", checksum_uri: "https://m/new/a.sha256"}]}
"#;
        let m = Manifest::parse(TIES).expect("parse");
        let s = m.select("1.30", "amd64").expect("select");
        assert_eq!(
            s.version, "1.30.4",
            "latest_patch_version, not the highest patch"
        );
        let kubelet = s
            .artifacts
            .iter()
            .find(|a| a.name == "kubelet")
            .expect("kubelet");
        assert_eq!(
            kubelet.uri, "https://m/new/kubelet",
            "the later release_date"
        );
        assert_eq!(kubelet.download_uri(), "https://m/new/kubelet.gz");
        assert_eq!(
            m.select("1.30.4", "amd64").expect("exact").artifacts,
            s.artifacts
        );
    }

    #[test]
    fn region_config_is_carried_and_china_has_its_own_host() {
        let m = Manifest::parse(YAML).expect("parse");
        let s = m.select("1.31", "amd64").expect("select");
        assert_eq!(
            s.region_config["ap-southeast-7"].ecr_account_id,
            "123456789012"
        );
        assert_eq!(default_manifest_url("cn-north-1"), CHINA_MANIFEST_URL);
        assert_eq!(default_manifest_url("us-gov-west-1"), DEFAULT_MANIFEST_URL);
    }

    #[test]
    fn artifact_names_must_be_plain_file_names() {
        for bad in ["", ".", "..", "../../x", "/etc/passwd", "a/b", "kube\0let"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
            let yaml = YAML.replace("{name: kubelet, arch: amd64, os: linux, uri: \"https://m/1.31.2/amd64/kubelet\"", &format!("{{name: {bad:?}, arch: amd64, os: linux, uri: \"https://m/1.31.2/amd64/kubelet\""));
            let e = Manifest::parse(&yaml)
                .expect("parse")
                .select("1.31", "amd64")
                .expect_err("unsafe name");
            assert!(
                matches!(e, ManifestError::UnsafeName { .. }),
                "{bad:?}: {e}"
            );
        }
        for good in ["kubelet", "cni-plugins", "a.b", "..kubelet"] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn minor_of_versions() {
        assert_eq!(minor_of("1.31.2"), "1.31");
        assert_eq!(minor_of("1.31"), "1.31");
    }
}
