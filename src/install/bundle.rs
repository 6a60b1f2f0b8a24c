//! Offline bundles: everything `install` needs for one Kubernetes release and architecture in a
//! single tar file, built on a connected machine (`hybrid-agent bundle create`) and installed on
//! one without network (`install --bundle`).
//!
//! Layout (uncompressed tar; the artifacts are already compressed or are binaries that gzip
//! barely shrinks, and a plain tar can be streamed twice cheaply):
//!
//! ```text
//! bundle.json              what the bundle is: format, version, arch, artifacts with sizes
//! manifest.yaml            nodeadm's manifest shape, URIs relative to the bundle
//! artifacts/<name>         the artifact as downloaded
//! artifacts/<name>.sha256  its GNU-format checksum, as published
//! SHA256SUMS               GNU-format checksums of every member above (the last member)
//! ```
//!
//! [`verify`] reads the whole bundle once and checks every member against `SHA256SUMS`, every
//! artifact against its own `.sha256`, and that the requested release is complete, before the
//! installer touches the host. [`extract`] then streams the artifacts out and checks each digest
//! again as it writes, so a bundle swapped between the two passes is still caught.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checksum::{self, Hasher, Sha256};
use super::download::create_exclusive;
use super::manifest::{
    EksRelease, Manifest, ManifestArtifact, ManifestError, PatchRelease, Selection, minor_of,
};

/// Bundle metadata member.
pub const META: &str = "bundle.json";
/// Manifest member.
pub const MANIFEST: &str = "manifest.yaml";
/// Checksums of every member.
pub const SUMS: &str = "SHA256SUMS";
/// Directory of the artifacts inside the bundle.
pub const ARTIFACT_DIR: &str = "artifacts";
/// Format version written and accepted.
pub const FORMAT: u32 = 1;
/// Largest metadata member (bundle.json, manifest, SHA256SUMS, .sha256) read into memory.
const MAX_META_BYTES: u64 = 4 * 1024 * 1024;
/// Read size while hashing members.
const CHUNK: usize = 256 * 1024;

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMeta {
    pub format: u32,
    pub kubernetes_version: String,
    pub arch: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Where the artifacts were downloaded from.
    pub source: String,
    pub artifacts: Vec<BundleArtifact>,
}

/// One artifact in `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleArtifact {
    pub name: String,
    /// Member path inside the bundle.
    pub member: String,
    pub sha256: Sha256,
    pub size: u64,
    /// Where it was downloaded from.
    pub uri: String,
}

/// A bundle that cannot be used; nothing on the host was changed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {op} the bundle {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the bundle {path} is not valid: {message}; nothing was installed — rebuild it with `hybrid-agent bundle create`"
    )]
    Invalid { path: PathBuf, message: String },
    #[error(
        "the bundle {path} is corrupt: {member} has SHA-256 {actual}, but {listed_in} says {expected}; nothing was installed"
    )]
    Corrupt {
        path: PathBuf,
        member: String,
        listed_in: String,
        expected: Box<Sha256>,
        actual: Box<Sha256>,
    },
    #[error("the bundle {path} holds Kubernetes {has} ({arch}), not {wanted}")]
    WrongRelease {
        path: PathBuf,
        has: String,
        arch: String,
        wanted: String,
    },
    #[error("the bundle {path} cannot serve this install: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
}

/// A bundle whose every byte was checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub path: PathBuf,
    pub meta: BundleMeta,
    pub manifest: Manifest,
    pub selection: Selection,
    /// Member → digest, from `SHA256SUMS` and confirmed by hashing.
    pub sums: BTreeMap<String, Sha256>,
}

impl Verified {
    /// The digest of the member an artifact's URI names.
    pub fn artifact_sum(&self, artifact: &ManifestArtifact) -> Option<Sha256> {
        self.sums.get(&artifact.uri).copied()
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A member name we are willing to look at: relative, no `..`, no empty or `.` segments.
fn member_name(path: &Path, raw: &Path) -> Result<String, BundleError> {
    let text = raw
        .to_str()
        .ok_or_else(|| invalid(path, "a member name is not UTF-8"))?;
    let text = text.trim_start_matches("./");
    if text.starts_with('/')
        || text
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid(path, format!("member `{text}` has an unsafe path")));
    }
    Ok(text.to_owned())
}

fn read_small(
    path: &Path,
    name: &str,
    r: &mut impl Read,
) -> Result<(Vec<u8>, Sha256), BundleError> {
    let mut buf = Vec::new();
    r.take(MAX_META_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| BundleError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > MAX_META_BYTES {
        return Err(invalid(
            path,
            format!("{name} is larger than {MAX_META_BYTES} bytes"),
        ));
    }
    let sum = Sha256::of_bytes(&buf);
    Ok((buf, sum))
}

fn hash_stream(
    path: &Path,
    r: &mut impl Read,
    mut sink: Option<&mut File>,
    sink_path: &Path,
) -> Result<(Sha256, u64), BundleError> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|source| BundleError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
        if let Some(f) = sink.as_deref_mut() {
            f.write_all(&buf[..n]).map_err(|source| BundleError::Io {
                op: "write staged copy of",
                path: sink_path.to_path_buf(),
                source,
            })?;
        }
    }
    Ok((h.finish(), n_total))
}

/// Reads the whole bundle and checks it (see the module docs) for `wanted` (`1.31` or
/// `1.31.2`) on `arch`. Writes nothing.
pub fn verify(path: &Path, wanted: &str, arch: &str) -> Result<Verified, BundleError> {
    let file = File::open(path).map_err(|source| BundleError::Io {
        op: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(CHUNK, file));
    let entries = archive.entries().map_err(|source| BundleError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut actual: BTreeMap<String, Sha256> = BTreeMap::new();
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(path, format!("unreadable tar entry: {e}")))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(invalid(
                path,
                "it holds links or special files; a bundle holds regular files only",
            ));
        }
        let raw = entry
            .path()
            .map_err(|e| invalid(path, format!("bad member name: {e}")))?
            .into_owned();
        let name = member_name(path, &raw)?;
        if actual.contains_key(&name) {
            return Err(invalid(path, format!("member `{name}` appears twice")));
        }
        let is_meta = name == META || name == MANIFEST || name == SUMS || name.ends_with(".sha256");
        let sum = if is_meta {
            let (bytes, sum) = read_small(path, &name, &mut entry)?;
            small.insert(name.clone(), bytes);
            sum
        } else {
            hash_stream(path, &mut entry, None, path)?.0
        };
        actual.insert(name, sum);
    }
    let sums_text = small
        .get(SUMS)
        .ok_or_else(|| invalid(path, format!("it has no {SUMS}")))?;
    let sums_text =
        std::str::from_utf8(sums_text).map_err(|_| invalid(path, format!("{SUMS} is not text")))?;
    let mut listed: BTreeMap<String, Sha256> = BTreeMap::new();
    for line in sums_text.lines().filter(|l| !l.trim().is_empty()) {
        let (hex, name) = line.split_once("  ").ok_or_else(|| {
            invalid(
                path,
                format!("{SUMS} line `{line}` is not `<sha256>  <member>`"),
            )
        })?;
        let sum = Sha256::from_hex(hex)
            .ok_or_else(|| invalid(path, format!("{SUMS} line `{line}` has no valid digest")))?;
        listed.insert(name.to_owned(), sum);
    }
    for (name, sum) in &actual {
        if name == SUMS {
            continue;
        }
        let expected = listed
            .get(name)
            .ok_or_else(|| invalid(path, format!("member `{name}` is not listed in {SUMS}")))?;
        if expected != sum {
            return Err(BundleError::Corrupt {
                path: path.to_path_buf(),
                member: name.clone(),
                listed_in: SUMS.into(),
                expected: Box::new(*expected),
                actual: Box::new(*sum),
            });
        }
    }
    for name in listed.keys() {
        if !actual.contains_key(name) {
            return Err(invalid(
                path,
                format!("{SUMS} lists `{name}`, which the bundle lacks (truncated?)"),
            ));
        }
    }
    let meta: BundleMeta = serde_json::from_slice(
        small
            .get(META)
            .ok_or_else(|| invalid(path, format!("it has no {META}")))?,
    )
    .map_err(|e| invalid(path, format!("{META}: {e}")))?;
    if meta.format != FORMAT {
        return Err(invalid(
            path,
            format!("format {} is not the supported {FORMAT}", meta.format),
        ));
    }
    let manifest_text = small
        .get(MANIFEST)
        .ok_or_else(|| invalid(path, format!("it has no {MANIFEST}")))?;
    let manifest = Manifest::parse(&String::from_utf8_lossy(manifest_text)).map_err(|source| {
        BundleError::Manifest {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let release_matches = meta.arch == arch
        && (meta.kubernetes_version == wanted || minor_of(&meta.kubernetes_version) == wanted);
    if !release_matches {
        return Err(BundleError::WrongRelease {
            path: path.to_path_buf(),
            has: meta.kubernetes_version.clone(),
            arch: meta.arch.clone(),
            wanted: format!("{wanted} ({arch})"),
        });
    }
    let selection = manifest
        .select(wanted, arch)
        .map_err(|source| BundleError::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
    for a in &selection.artifacts {
        let sum = actual.get(&a.uri).ok_or_else(|| {
            invalid(
                path,
                format!("the manifest names `{}`, which the bundle lacks", a.uri),
            )
        })?;
        let published = small.get(&a.checksum_uri).ok_or_else(|| {
            invalid(
                path,
                format!("the checksum `{}` of {} is missing", a.checksum_uri, a.name),
            )
        })?;
        let file_name = a.uri.rsplit('/').next().unwrap_or(&a.uri);
        let expected = checksum::parse_gnu(&String::from_utf8_lossy(published), file_name)
            .map_err(|m| invalid(path, format!("{}: {m}", a.checksum_uri)))?;
        if expected != *sum {
            return Err(BundleError::Corrupt {
                path: path.to_path_buf(),
                member: a.uri.clone(),
                listed_in: a.checksum_uri.clone(),
                expected: Box::new(expected),
                actual: Box::new(*sum),
            });
        }
    }
    listed.retain(|name, _| actual.contains_key(name));
    Ok(Verified {
        path: path.to_path_buf(),
        meta,
        manifest,
        selection,
        sums: listed,
    })
}

/// Streams the members in `wanted` (member → destination file) out of a verified bundle,
/// checking each digest again as it is written. Destinations must not exist: they are created
/// with mode 0600 ([`super::download::create_exclusive`]: never through a link, never over a
/// file) and fsynced.
pub fn extract(bundle: &Verified, wanted: &BTreeMap<String, PathBuf>) -> Result<(), BundleError> {
    let path = &bundle.path;
    let file = File::open(path).map_err(|source| BundleError::Io {
        op: "open",
        path: path.clone(),
        source,
    })?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(CHUNK, file));
    let entries = archive.entries().map_err(|source| BundleError::Io {
        op: "read",
        path: path.clone(),
        source,
    })?;
    let mut done = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(path, format!("unreadable tar entry: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry
            .path()
            .map_err(|e| invalid(path, format!("bad member name: {e}")))?
            .into_owned();
        let name = member_name(path, &raw)?;
        let Some(dest) = wanted.get(&name) else {
            continue;
        };
        let expected = bundle
            .sums
            .get(&name)
            .copied()
            .ok_or_else(|| invalid(path, format!("`{name}` was not verified")))?;
        let mut out = create_exclusive(dest).map_err(|source| BundleError::Io {
            op: "create staged copy of",
            path: dest.clone(),
            source,
        })?;
        let (actual, _) = hash_stream(path, &mut entry, Some(&mut out), dest)?;
        if actual != expected {
            let _ = std::fs::remove_file(dest);
            return Err(BundleError::Corrupt {
                path: path.clone(),
                member: name,
                listed_in: format!("{SUMS} (changed since it was verified)"),
                expected: Box::new(expected),
                actual: Box::new(actual),
            });
        }
        out.sync_all().map_err(|source| BundleError::Io {
            op: "fsync",
            path: dest.clone(),
            source,
        })?;
        done += 1;
    }
    if done != wanted.len() {
        return Err(invalid(path, "members disappeared since it was verified"));
    }
    Ok(())
}

/// One downloaded artifact to put in a bundle.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub artifact: ManifestArtifact,
    /// The verified file.
    pub file: PathBuf,
    pub sha256: Sha256,
    pub size: u64,
    /// The published checksum file's text.
    pub checksum_text: String,
}

/// Writes a bundle for `version`/`arch` holding `items` to `out` (via a temporary file next to
/// it, fsynced and renamed, so a half-written bundle never carries the final name).
pub fn write(
    out: &Path,
    version: &str,
    arch: &str,
    source: &str,
    created_at: &str,
    items: &[Downloaded],
) -> Result<BundleMeta, BundleError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| BundleError::Io {
            op,
            path: out.to_path_buf(),
            source,
        }
    };
    let mut artifacts = Vec::new();
    let mut manifest_artifacts = Vec::new();
    for d in items {
        super::manifest::check_name(&d.artifact.name).map_err(|problem| {
            invalid(
                out,
                format!(
                    "the artifact name `{}` is not a plain file name ({problem})",
                    d.artifact.name
                ),
            )
        })?;
        let member = format!("{ARTIFACT_DIR}/{}", d.artifact.name);
        artifacts.push(BundleArtifact {
            name: d.artifact.name.clone(),
            member: member.clone(),
            sha256: d.sha256,
            size: d.size,
            uri: d.artifact.uri.clone(),
        });
        manifest_artifacts.push(ManifestArtifact {
            name: d.artifact.name.clone(),
            arch: arch.to_owned(),
            os: "linux".to_owned(),
            checksum_uri: format!("{member}.sha256"),
            uri: member,
            gzip_uri: None,
        });
    }
    let meta = BundleMeta {
        format: FORMAT,
        kubernetes_version: version.to_owned(),
        arch: arch.to_owned(),
        created_at: created_at.to_owned(),
        source: source.to_owned(),
        artifacts,
    };
    let manifest = Manifest {
        supported_eks_releases: vec![EksRelease {
            major_minor_version: minor_of(version).to_owned(),
            latest_patch_version: version.rsplit('.').next().map(str::to_owned),
            patch_releases: vec![PatchRelease {
                version: version.to_owned(),
                patch_version: version.rsplit('.').next().map(str::to_owned),
                release_date: Some(created_at.chars().take(10).collect()),
                artifacts: manifest_artifacts,
            }],
        }],
        // Not carried into bundles yet: offline nodes use nodeadm's fallback table.
        region_config: Default::default(),
    };
    let meta_bytes =
        serde_json::to_vec_pretty(&meta).map_err(|e| io_err("serialize")(io::Error::other(e)))?;
    let manifest_bytes = serde_yaml_ng::to_string(&manifest)
        .map_err(|e| io_err("serialize")(io::Error::other(e)))?
        .into_bytes();

    // Hidden and unpredictable, created exclusively: a link planted beside `out` is never
    // followed, and only a file this call created is ever removed.
    let tmp = out.with_file_name(format!(
        ".{}.{}-{:08x}.partial",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = create_exclusive(&tmp).map_err(|source| BundleError::Io {
        op: "create",
        path: tmp.clone(),
        source,
    })?;
    let result = (|| {
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(CHUNK, file));
        let mut sums = String::new();
        let mut add_bytes =
            |builder: &mut tar::Builder<_>, name: &str, bytes: &[u8]| -> Result<(), BundleError> {
                builder
                    .append_data(&mut header(bytes.len() as u64), name, bytes)
                    .map_err(io_err("write"))?;
                sums.push_str(&checksum::gnu_line(Sha256::of_bytes(bytes), name));
                Ok(())
            };
        add_bytes(&mut builder, META, &meta_bytes)?;
        add_bytes(&mut builder, MANIFEST, &manifest_bytes)?;
        for (d, a) in items.iter().zip(&meta.artifacts) {
            add_bytes(
                &mut builder,
                &format!("{}.sha256", a.member),
                d.checksum_text.as_bytes(),
            )?;
        }
        for (d, a) in items.iter().zip(&meta.artifacts) {
            let mut f = File::open(&d.file).map_err(|source| BundleError::Io {
                op: "open",
                path: d.file.clone(),
                source,
            })?;
            builder
                .append_data(&mut header(d.size), &a.member, &mut f)
                .map_err(io_err("write"))?;
            sums.push_str(&checksum::gnu_line(d.sha256, &a.member));
        }
        builder
            .append_data(&mut header(sums.len() as u64), SUMS, sums.as_bytes())
            .map_err(io_err("write"))?;
        let writer = builder.into_inner().map_err(io_err("write"))?;
        let file = writer
            .into_inner()
            .map_err(|e| io_err("write")(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync"))?;
        std::fs::rename(&tmp, out).map_err(io_err("rename into place"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| meta)
}

/// A tar header for a regular file: mode 0644, mtime 0 and no owner names, so a bundle of the
/// same artifacts is byte-identical whoever builds it.
fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}
