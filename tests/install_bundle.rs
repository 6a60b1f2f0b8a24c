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
use hybrid_agent::install::progress::Progress;
use hybrid_agent::install::tracker::Tracker;
use hybrid_agent::install::{InstallError, InstallRequest, Installer, Source};
use hybrid_agent::node::land::Journal;
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

/// Serves, in place of the generated manifest, one whose kubelet entry is named `name`.
async fn hostile_manifest(ds: &hybrid_devstack::Devstack, mirror: &Path, name: &str) {
    use hybrid_agent::install::manifest::Manifest;
    let url = manifest_url(ds);
    // The generated manifest, not a hostile one written before.
    let _ = std::fs::remove_file(mirror.join("manifest.yaml"));
    let text = installer(&mirror.join("unused"))
        .fetcher()
        .text(&url)
        .await
        .unwrap();
    let mut m = Manifest::parse(&text).unwrap();
    let mut renamed = 0;
    for r in &mut m.supported_eks_releases {
        for p in &mut r.patch_releases {
            for a in &mut p.artifacts {
                if a.name == "kubelet" {
                    a.name = name.to_owned();
                    renamed += 1;
                }
            }
        }
    }
    assert_eq!(renamed, 1);
    // A copy of kubelet, so the release stays complete and only the name is hostile.
    let mut kubelet = m.supported_eks_releases[0].patch_releases[0]
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .unwrap()
        .clone();
    kubelet.name = "kubelet".into();
    m.supported_eks_releases[0].patch_releases[0]
        .artifacts
        .push(kubelet);
    std::fs::write(
        mirror.join("manifest.yaml"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
}

/// `bundle create` with a manifest entry named `../../victim` or an absolute path: refused with
/// an error naming the manifest and the entry; the file that name points at is untouched.
#[tokio::test]
async fn bundle_create_refuses_artifact_names_that_are_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 1 << 20));
    let ds = devstack(&mirror);
    let out_dir = dir.path().join("a").join("b");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("bundle.tar");
    // The work directory is `<out_dir>/.hybrid-agent-bundle-<pid>`, so `../../victim` there is
    // `<dir>/a/victim`.
    let relative_victim = dir.path().join("a").join("victim");
    let absolute_victim = dir.path().join("abs-victim");
    for victim in [&relative_victim, &absolute_victim] {
        std::fs::write(victim, b"precious\n").unwrap();
    }
    for name in [
        "../../victim".to_owned(),
        absolute_victim.to_str().unwrap().to_owned(),
    ] {
        hostile_manifest(&ds, &mirror, &name).await;
        let err = installer(&dir.path().join("r"))
            .create_bundle(&manifest_url(&ds), VERSION, ARCH, &out)
            .await
            .expect_err("a hostile artifact name");
        for victim in [&relative_victim, &absolute_victim] {
            assert!(
                std::fs::read(victim).unwrap() == b"precious\n",
                "{} was touched ({name})",
                victim.display()
            );
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&manifest_url(&ds)),
            "names the manifest: {msg}"
        );
        assert!(msg.contains(&format!("`{name}`")), "names the entry: {msg}");
        assert!(msg.contains("plain file name"), "says what is wrong: {msg}");
        assert!(!out.exists());
    }
}

/// A symlink where a download or the bundle's temporary file is written is neither followed
/// nor removed: the file it points at keeps its content and the transfer fails.
#[tokio::test]
async fn downloads_never_follow_or_remove_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    write_release(&mirror, &ReleaseSpec::random(VERSION, 1 << 20));
    let ds = devstack(&mirror);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();

    // The download primitive, target a symlink.
    let inst = installer(&dir.path().join("r"));
    let base = format!("{}/mirror/{VERSION}/{ARCH}", ds.url);
    let (url, sum_url) = (format!("{base}/kubectl"), format!("{base}/kubectl.sha256"));
    let (expected, _) = inst.fetcher().checksum(&sum_url, "kubectl").await.unwrap();
    let dest = dir.path().join("kubectl");
    std::os::unix::fs::symlink(&victim, &dest).unwrap();
    let err = inst
        .fetcher()
        .file(
            &url,
            &sum_url,
            expected,
            &dest,
            "kubectl",
            &Progress::Silent,
        )
        .await
        .expect_err("the target is a symlink");
    assert!(err.to_string().contains(dest.to_str().unwrap()), "{err}");
    assert!(
        std::fs::read(&victim).unwrap() == b"precious\n",
        "the victim was written"
    );
    assert!(dest.is_symlink(), "the planted link was removed");
    let beside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("kubectl"))
        .collect();
    assert_eq!(
        beside,
        ["kubectl"],
        "no temporary file left beside the target"
    );

    // The bundle's temporary file, planted where `bundle create` writes it.
    let out = dir.path().join("bundle.tar");
    let partial = dir
        .path()
        .join(format!("bundle.tar.{}.partial", std::process::id()));
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    let result = inst
        .create_bundle(&manifest_url(&ds), VERSION, ARCH, &out)
        .await;
    assert!(
        std::fs::read(&victim).unwrap() == b"precious\n",
        "the victim was written"
    );
    if result.is_ok() {
        assert!(!out.is_symlink(), "the bundle is the planted link");
    }
}

/// A bundle whose tar holds a `../` member is refused whole, before anything is written.
#[tokio::test]
async fn a_bundle_with_a_member_outside_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_mirror, bundle_path, _) = build_bundle(dir.path()).await;
    // Append `../escape` (tar::Builder refuses such names, so the header is written by hand)
    // before the two zero blocks that end the archive.
    let mut bytes = std::fs::read(&bundle_path).unwrap();
    let end = bytes.len() - 1024;
    bytes.truncate(end);
    let data = b"escaped\n";
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len() + (512 - data.len()) + 1024, 0);
    let evil = dir.path().join("out").join("evil.tar");
    std::fs::write(&evil, &bytes).unwrap();

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    distro_containerd(&root);
    let before = fingerprint(&root, &[]);
    let mut j = journal(&root);
    let err = installer(&root)
        .install(&bundle_request(&evil, VERSION), &mut j)
        .await
        .expect_err("a member outside the bundle");
    assert!(
        matches!(&err, InstallError::Bundle(BundleError::Invalid { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("../escape"), "{err}");
    assert!(j.changes().is_empty());
    assert_eq!(fingerprint(&root, &[]), before);
    assert!(!dir.path().join("out").join("escape").exists());
    assert!(!dir.path().join("escape").exists());
}
