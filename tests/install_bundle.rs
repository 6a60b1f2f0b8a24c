//! Offline bundles: built from the devstack mirror, installed with every endpoint down (the
//! devstack is gone and the mirror URL points at a closed port), and refused whole — before
//! anything on the host changes — when any byte of it is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hybrid_agent::install::bundle::{self, BundleError};
use hybrid_agent::install::checksum::Sha256;
use hybrid_agent::install::download::FetchSettings;
use hybrid_agent::install::land::Journal;
use hybrid_agent::install::progress::Progress;
use hybrid_agent::install::tracker::Tracker;
use hybrid_agent::install::{InstallError, InstallRequest, Installer, Source};
use hybrid_agent::paths::HostPaths;
use install_support::*;

fn installer(root: &Path) -> Installer {
    Installer::new(
        HostPaths::new(root),
        &FetchSettings {
            allow_insecure: true,
            ..Default::default()
        },
        Progress::Silent,
    )
    .unwrap()
}

fn journal(root: &Path) -> Journal {
    Journal::new(HostPaths::new(root), "/var/lib/hybrid-agent/backups", None)
}

fn bundle_request(path: &Path, version: &str) -> InstallRequest {
    InstallRequest {
        kubernetes_version: version.into(),
        arch: ARCH.into(),
        source: Source::Bundle(path.to_path_buf()),
    }
}

/// Builds a bundle of the fixture release from a devstack that is shut down afterwards.
async fn build_bundle(dir: &Path) -> (PathBuf, PathBuf, std::net::SocketAddr) {
    let mirror = dir.join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 3 << 20));
    let out = dir.join("out").join("hybrid-agent-1.31.tar");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let ds = devstack(&mirror);
    let meta = installer(&dir.join("unused-root"))
        .create_bundle(&manifest_url(&ds), "1.31", ARCH, &out)
        .await
        .expect("bundle create");
    let addr = ds.addr;
    drop(ds);
    assert_eq!(meta.kubernetes_version, VERSION);
    assert_eq!(meta.artifacts.len(), 4, "{:?}", meta.artifacts);
    assert_eq!(
        std::fs::read_dir(out.parent().unwrap()).unwrap().count(),
        1,
        "no work files left next to the bundle"
    );
    (mirror, out, addr)
}

#[tokio::test]
async fn bundle_installs_with_every_endpoint_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mirror, bundle_path, addr) = build_bundle(dir.path()).await;
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    distro_containerd(&root);

    // Every endpoint is down: the devstack that served the mirror (and would have served every
    // AWS API) is gone.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the devstack still answers at {addr}"
    );

    let mut j = journal(&root);
    let report = installer(&root)
        .install(&bundle_request(&bundle_path, "1.31"), &mut j)
        .await
        .expect("offline install");
    assert_eq!(report.version, VERSION);
    assert_eq!(report.downloaded_bytes, 0);
    assert_eq!(
        Sha256::of_file(&root.join("usr/bin/kubelet")).unwrap(),
        mirror_sum(&mirror, &format!("{VERSION}/{ARCH}/kubelet"))
    );
    for plugin in CNI_PLUGINS {
        assert!(root.join("opt/cni/bin").join(plugin).is_file(), "{plugin}");
    }
    let tracker = Tracker::load(&HostPaths::new(&root))
        .unwrap()
        .expect("tracker");
    assert!(tracker.source.starts_with("bundle:"), "{}", tracker.source);
    assert_eq!(tracker.files.len(), 3 + CNI_PLUGINS.len() + 1);
}

#[tokio::test]
async fn a_bundle_is_identical_however_often_it_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 1 << 20));
    let ds = devstack(&mirror);
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    let inst = installer(&dir.path().join("r"));
    let meta_a = inst
        .create_bundle(&manifest_url(&ds), VERSION, ARCH, &a)
        .await
        .unwrap();
    let meta_b = inst
        .create_bundle(&manifest_url(&ds), VERSION, ARCH, &b)
        .await
        .unwrap();
    assert_eq!(meta_a.artifacts, meta_b.artifacts);
    // Only bundle.json (creation time) and SHA256SUMS (its digest) may differ.
    let (ma, mb) = (members(&a), members(&b));
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>());
    for (name, bytes) in &ma {
        if name != bundle::META && name != bundle::SUMS {
            assert!(bytes == &mb[name], "{name} differs between two builds");
        }
    }
}

fn members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = std::collections::BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut header = e.header().as_bytes().to_vec();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        e.read_to_end(&mut header).unwrap();
        out.insert(name, header);
    }
    out
}

/// Flips one byte at `offset` of a file.
fn flip(path: &Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

/// The byte offset of a member's data in an uncompressed tar.
fn member_offset(path: &Path, member: &str) -> u64 {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_str() == Some(member) {
            return e.raw_file_position();
        }
    }
    panic!("{member} not in bundle");
}

#[tokio::test]
async fn a_corrupt_bundle_is_refused_before_the_host_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (_mirror, bundle_path, _) = build_bundle(dir.path()).await;
    // The last artifact member: verification must read all the way through to find it.
    let offset = member_offset(&bundle_path, "artifacts/kubelet") + 1000;
    flip(&bundle_path, offset);
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    distro_containerd(&root);
    let before = fingerprint(&root, &[]);

    let mut j = journal(&root);
    let err = installer(&root)
        .install(&bundle_request(&bundle_path, VERSION), &mut j)
        .await
        .expect_err("corrupt");
    match &err {
        InstallError::Bundle(BundleError::Corrupt { member, .. }) => {
            assert_eq!(member, "artifacts/kubelet")
        }
        other => panic!("expected a corrupt-bundle error, got {other}"),
    }
    assert!(err.to_string().contains("nothing was installed"), "{err}");
    assert!(
        j.changes().is_empty(),
        "verification failed before any change: {:?}",
        j.changes()
    );
    assert_eq!(fingerprint(&root, &[]), before);
}

#[tokio::test]
async fn a_truncated_bundle_or_the_wrong_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_mirror, bundle_path, _) = build_bundle(dir.path()).await;
    let err = bundle::verify(&bundle_path, "1.30", ARCH).expect_err("wrong release");
    assert!(matches!(err, BundleError::WrongRelease { .. }), "{err}");
    let err = bundle::verify(&bundle_path, VERSION, "arm64").expect_err("wrong arch");
    assert!(matches!(err, BundleError::WrongRelease { .. }), "{err}");

    let len = std::fs::metadata(&bundle_path).unwrap().len();
    let truncated = dir.path().join("truncated.tar");
    let bytes = std::fs::read(&bundle_path).unwrap();
    std::fs::write(&truncated, &bytes[..(len / 2) as usize]).unwrap();
    assert!(bundle::verify(&truncated, VERSION, ARCH).is_err());
    assert!(bundle::verify(&bundle_path, VERSION, ARCH).is_ok());
}
