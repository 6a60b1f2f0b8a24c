//! Installing from the devstack's artifact mirror (served over loopback HTTP, hence
//! `allow_insecure`): a full install lands every file with its checksum and mode and records it
//! in the tracker; a byte flipped in transit is refused with nothing installed; a download cut
//! in the middle resumes with an HTTP Range request; plain HTTP is refused unless allowed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hybrid_agent::install::checksum::Sha256;
use hybrid_agent::install::download::{FetchError, FetchSettings};
use hybrid_agent::install::progress::Progress;
use hybrid_agent::install::tracker::{ContainerdRecord, TRACKER, Tracker};
use hybrid_agent::install::{InstallError, InstallRequest, Installer, STAGING_DIR, Source};
use hybrid_agent::node::land::Journal;
use hybrid_agent::paths::HostPaths;
use install_support::*;

/// Size of the fixture kubelet: large enough that a cut in the middle is a real partial file.
const KUBELET_LEN: usize = 6 << 20;

fn installer(root: &Path, allow_insecure: bool) -> Installer {
    Installer::new(
        HostPaths::new(root),
        &FetchSettings {
            allow_insecure,
            ..Default::default()
        },
        Progress::Silent,
    )
    .unwrap()
}

fn request(ds: &hybrid_devstack::Devstack, version: &str) -> InstallRequest {
    InstallRequest {
        kubernetes_version: version.into(),
        arch: ARCH.into(),
        source: Source::Mirror {
            manifest_url: manifest_url(ds),
        },
    }
}

fn journal(root: &Path) -> Journal {
    Journal::new(HostPaths::new(root), "/var/lib/hybrid-agent/backups", None)
}

struct Fixture {
    _dir: tempfile::TempDir,
    mirror: std::path::PathBuf,
    root: std::path::PathBuf,
    ds: hybrid_devstack::Devstack,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, KUBELET_LEN));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    distro_containerd(&root);
    let ds = devstack(&mirror);
    Fixture {
        _dir: dir,
        mirror,
        root,
        ds,
    }
}

#[tokio::test]
async fn installs_every_artifact_verified_with_modes_and_tracker() {
    let f = fixture();
    let mut j = journal(&f.root);
    let report = installer(&f.root, true)
        .install(&request(&f.ds, "1.31"), &mut j)
        .await
        .expect("install");
    assert_eq!(
        report.version, VERSION,
        "a minor version picks the latest patch"
    );
    assert!(!report.unchanged);
    assert!(report.downloaded_bytes >= KUBELET_LEN as u64);

    let kubelet = f.root.join("usr/bin/kubelet");
    assert_eq!(
        Sha256::of_file(&kubelet).unwrap(),
        mirror_sum(&f.mirror, &format!("{VERSION}/{ARCH}/kubelet"))
    );
    assert_eq!(
        std::fs::metadata(&kubelet).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(f.root.join("usr/local/bin/aws-iam-authenticator").is_file());
    assert!(f.root.join("usr/local/bin/kubectl").is_file());
    for plugin in CNI_PLUGINS {
        let p = f.root.join("opt/cni/bin").join(plugin);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o755,
            "{plugin}"
        );
    }
    assert_eq!(
        std::fs::metadata(f.root.join("opt/cni/bin/LICENSE"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
    assert!(
        !f.root.join(STAGING_DIR.trim_start_matches('/')).exists(),
        "staging is cleaned up"
    );

    let tracker = Tracker::load(&HostPaths::new(&f.root))
        .unwrap()
        .expect("tracker written");
    assert_eq!(tracker.kubernetes_version, VERSION);
    assert!(
        matches!(&tracker.containerd, ContainerdRecord::Distro { package: Some(p), .. } if p == "containerd"),
        "{:?}",
        tracker.containerd
    );
    assert!(
        !tracker
            .files
            .iter()
            .any(|t| t.path == Path::new("/usr/bin/containerd")),
        "the distro's containerd is not ours"
    );
    for t in &tracker.files {
        assert_eq!(
            Sha256::of_file(&f.root.join(t.path.strip_prefix("/").unwrap())).unwrap(),
            t.sha256,
            "{}",
            t.path.display()
        );
    }
    assert_eq!(tracker.files.len(), 3 + CNI_PLUGINS.len() + 1);

    // Same release again: nothing is downloaded or touched.
    let before = fingerprint(&f.root, &[]);
    let mut j2 = journal(&f.root);
    let again = installer(&f.root, true)
        .install(&request(&f.ds, VERSION), &mut j2)
        .await
        .expect("reinstall");
    assert!(again.unchanged);
    assert!(j2.changes().is_empty());
    assert_eq!(fingerprint(&f.root, &[]), before);

    // Uninstall removes exactly the tracked files; the distro containerd stays.
    tracker.uninstall(&HostPaths::new(&f.root)).unwrap();
    assert!(!kubelet.exists());
    assert!(
        !f.root.join("opt/cni").exists(),
        "directories the install created are removed"
    );
    assert!(f.root.join("usr/bin/containerd").exists());
    assert!(!f.root.join(TRACKER.trim_start_matches('/')).exists());
}

#[tokio::test]
async fn containerd_comes_from_the_manifest_when_the_distro_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let mut spec = ReleaseSpec::random(VERSION, 1 << 20);
    spec.containerd = Some(noise(2 << 20, 7));
    write_release(&mirror, &spec);
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let ds = devstack(&mirror);
    let mut j = journal(&root);
    let report = installer(&root, true)
        .install(&request(&ds, VERSION), &mut j)
        .await
        .expect("install");
    assert_eq!(
        report.containerd,
        ContainerdRecord::Manifest {
            path: "/usr/local/bin/containerd".into()
        }
    );
    assert_eq!(
        Sha256::of_file(&root.join("usr/local/bin/containerd")).unwrap(),
        Sha256::of_bytes(&noise(2 << 20, 7))
    );
    assert!(root.join("usr/local/bin/ctr").is_file());
    assert!(
        report
            .files
            .iter()
            .any(|t| t.path == Path::new("/usr/local/bin/containerd"))
    );
}

#[tokio::test]
async fn a_release_without_containerd_anywhere_is_refused_before_downloading() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 1 << 20));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let ds = devstack(&mirror);
    let mut j = journal(&root);
    let err = installer(&root, true)
        .install(&request(&ds, VERSION), &mut j)
        .await
        .expect_err("no containerd");
    assert!(matches!(err, InstallError::NoContainerd { .. }), "{err}");
    assert!(
        err.to_string().contains("apt-get install containerd"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "nothing written"
    );
}

#[tokio::test]
async fn one_flipped_byte_is_refused_and_nothing_is_installed() {
    let f = fixture();
    let before = fingerprint(&f.root, &[]);
    let rel = format!("{VERSION}/{ARCH}/kubelet");
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/mirror/corrupt?path={rel}&offset=12345"),
    );
    let mut j = journal(&f.root);
    let err = installer(&f.root, true)
        .install(&request(&f.ds, VERSION), &mut j)
        .await
        .expect_err("corrupt");
    let failures = j.rollback();
    assert!(failures.is_empty(), "{failures:?}");
    match &err {
        InstallError::Fetch {
            artifact,
            source: FetchError::Mismatch {
                expected, actual, ..
            },
        } => {
            assert_eq!(artifact, "kubelet");
            assert_eq!(**expected, mirror_sum(&f.mirror, &rel));
            assert_ne!(expected, actual);
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let after = fingerprint(&f.root, &[]);
    assert_eq!(
        before,
        after,
        "the sandbox changed:\n{}",
        diff(&before, &after)
    );
}

#[tokio::test]
async fn a_download_cut_in_the_middle_resumes_with_range() {
    let f = fixture();
    let rel = format!("{VERSION}/{ARCH}/kubelet");
    let cut_at = (KUBELET_LEN / 2) as u64;
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/mirror/cut?path={rel}&after={cut_at}&times=1"),
    );
    let mut j = journal(&f.root);
    let report = installer(&f.root, true)
        .install(&request(&f.ds, VERSION), &mut j)
        .await
        .expect("install despite the cut");
    assert_eq!(
        report.resumed, 1,
        "the second try continued from the partial file"
    );
    // Every byte went over the wire once: the second try asked only for the missing half.
    let served: u64 = ["kubelet", "kubectl", "aws-iam-authenticator", "cni-plugins"]
        .iter()
        .map(|n| {
            std::fs::metadata(f.mirror.join(VERSION).join(ARCH).join(n))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        report.downloaded_bytes, served,
        "a resumed download does not fetch the first {cut_at} bytes twice"
    );
    assert_eq!(
        Sha256::of_file(&f.root.join("usr/bin/kubelet")).unwrap(),
        mirror_sum(&f.mirror, &rel)
    );
}

#[tokio::test]
async fn a_download_cut_on_every_try_fails_after_three_and_installs_nothing() {
    let f = fixture();
    let before = fingerprint(&f.root, &[]);
    let rel = format!("{VERSION}/{ARCH}/aws-iam-authenticator");
    control(
        &f.ds,
        "POST",
        &format!("/_devstack/mirror/cut?path={rel}&after=1000&times=3"),
    );
    let mut j = journal(&f.root);
    let err = installer(&f.root, true)
        .install(&request(&f.ds, VERSION), &mut j)
        .await
        .expect_err("cut three times");
    assert!(j.rollback().is_empty());
    assert!(
        matches!(
            &err,
            InstallError::Fetch {
                source: FetchError::Transport { attempts: 3, .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fingerprint(&f.root, &[]), before);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let f = fixture();
    let mut j = journal(&f.root);
    let err = installer(&f.root, false)
        .install(&request(&f.ds, VERSION), &mut j)
        .await
        .expect_err("http");
    assert!(
        matches!(
            err,
            InstallError::ManifestFetch(FetchError::Insecure { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--allow-insecure-mirror"), "{err}");
}

#[tokio::test]
async fn an_unknown_version_names_what_the_mirror_offers() {
    let f = fixture();
    let mut j = journal(&f.root);
    let err = installer(&f.root, true)
        .install(&request(&f.ds, "1.29"), &mut j)
        .await
        .expect_err("absent");
    assert!(err.to_string().contains(VERSION), "{err}");
}

/// A manifest of nodeadm's shape written into the mirror, whose kubelet has a `gzip_uri` (and a
/// `uri` that does not exist, so only the gzip can have been used) and whose checksum is the
/// uncompressed kubelet's; `gz` is what the mirror serves as the gzip.
fn gzip_manifest(f: &Fixture, gz: &[u8]) -> String {
    use std::io::Write;
    let base = format!("{}/mirror", f.ds.url);
    let dir = format!("{VERSION}/{ARCH}");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(gz).unwrap();
    put(
        &f.mirror.join(&dir).join("kubelet.gz"),
        &enc.finish().unwrap(),
        0o644,
    );
    let art = |name: &str| {
        format!(
            "    - {{name: {name}, arch: {ARCH}, os: linux, uri: \"{base}/{dir}/{name}\", checksum_uri: \"{base}/{dir}/{name}.sha256\"}}\n"
        )
    };
    let manifest = format!(
        "supported_eks_releases:\n- major_minor_version: \"1.31\"\n  latest_patch_version: \"2\"\n  patch_releases:\n  - version: {VERSION}\n    patch_version: \"2\"\n    release_date: \"2024-11-01\"\n    artifacts:\n    - {{name: kubelet, arch: {ARCH}, os: linux, uri: \"{base}/{dir}/kubelet-not-served\", checksum_uri: \"{base}/{dir}/kubelet.sha256\", gzip_uri: \"{base}/{dir}/kubelet.gz\"}}\n{}{}region_config:\n  ap-east-1: {{partition: aws, dns_suffix: amazonaws.com, ecr_account_id: \"800184023465\"}}\n",
        art("aws-iam-authenticator"),
        art("kubectl"),
    );
    std::fs::write(f.mirror.join("gz.yaml"), manifest).unwrap();
    format!("{base}/gz.yaml")
}

#[tokio::test]
async fn a_gzip_uri_is_preferred_and_its_content_checked_against_the_artifacts_checksum() {
    let f = fixture();
    let kubelet = std::fs::read(f.mirror.join(format!("{VERSION}/{ARCH}/kubelet"))).unwrap();
    let url = gzip_manifest(&f, &kubelet);
    let req = InstallRequest {
        kubernetes_version: "1.31".into(),
        arch: ARCH.into(),
        source: Source::Mirror { manifest_url: url },
    };
    let mut j = journal(&f.root);
    let report = installer(&f.root, true)
        .install(&req, &mut j)
        .await
        .expect("install from gzip");
    assert_eq!(
        Sha256::of_file(&f.root.join("usr/bin/kubelet")).unwrap(),
        Sha256::of_bytes(&kubelet),
        "the decompressed kubelet is installed"
    );
    // (`uri` names a file the mirror does not have: only the gzip can have been fetched.)
    // region_config travels with the install, into the tracker.
    assert_eq!(
        report.region_config["ap-east-1"].ecr_account_id,
        "800184023465"
    );
    let tracker = Tracker::load(&HostPaths::new(&f.root)).unwrap().unwrap();
    assert_eq!(tracker.region_config, report.region_config);
}

#[tokio::test]
async fn a_gzip_whose_content_differs_from_the_checksum_is_refused() {
    let f = fixture();
    let before = fingerprint(&f.root, &[]);
    let url = gzip_manifest(&f, b"not the kubelet the checksum describes");
    let req = InstallRequest {
        kubernetes_version: "1.31.2".into(),
        arch: ARCH.into(),
        source: Source::Mirror { manifest_url: url },
    };
    let mut j = journal(&f.root);
    let err = installer(&f.root, true)
        .install(&req, &mut j)
        .await
        .expect_err("mismatch");
    assert!(
        matches!(
            &err,
            InstallError::Fetch {
                source: FetchError::Mismatch { url, .. },
                ..
            } if url.ends_with("kubelet.gz")
        ),
        "{err}"
    );
    assert!(j.rollback().is_empty());
    assert_eq!(diff(&before, &fingerprint(&f.root, &[])), "");
}
