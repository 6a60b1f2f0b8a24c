//! The artifact mirror: serves `Config::mirror_dir` under `/mirror/`, the way
//! hybrid-assets.eks.amazonaws.com serves kubelet, containerd, CNI plugins and friends to nodeadm.
//!
//! Layout of the mirror directory (what the generated manifest understands):
//!
//! ```text
//! <k8s version>/<arch>/<name>                 e.g. 1.31.2/amd64/kubelet   → supported_eks_releases
//! iam-roles-anywhere/<version>/<arch>/<name>  e.g. .../1.4.0/amd64/aws_signing_helper
//! ssm/<version>/<arch>/<name>                 → ssm_releases
//! <name>.sha256                               optional; generated when absent
//! ```
//!
//! Any other file is served but not listed. What the mirror does:
//! - `GET`/`HEAD` of files with `Content-Length`, `Accept-Ranges: bytes`, `ETag`,
//!   `Last-Modified`, and HTTP Range (`bytes=N-`, `bytes=N-M`, `bytes=-N`: 206 with
//!   `Content-Range`; 416 with `Content-Range: bytes */LEN` when unsatisfiable). Files are
//!   streamed, never read whole into memory.
//! - `<file>.sha256` in GNU coreutils format (`<hex>  <name>\n`), computed on the fly (and cached
//!   by size and mtime) when not present on disk.
//! - `manifest.yaml` / `manifest.json` in nodeadm's shape (`supported_eks_releases[]
//!   .patch_releases[].artifacts[]` with `name`, `arch`, `os`, `uri`, `checksum_uri`), with
//!   absolute URIs built from the request's `Host`, unless such a file exists on disk.
//! - Paths with `..` (also percent-encoded), `.` or empty segments are refused with 400, and a
//!   symlink may not lead outside the mirror directory.
//! - Faults for download tests (set through `/_devstack/mirror/...`, see [`control`]): flip one
//!   byte of a file as it is served, or close the connection after N bytes of the body.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req};

/// URL prefix the mirror is served under.
pub const PREFIX: &str = "/mirror/";
/// Suffix of checksum companions.
pub const CHECKSUM_SUFFIX: &str = ".sha256";
/// Top-level directories holding non-Kubernetes releases in the manifest.
pub const IAM_RA_DIR: &str = "iam-roles-anywhere";
pub const SSM_DIR: &str = "ssm";
/// ECR account of the EKS images in most commercial regions (nodeadm's manifest region_config).
const ECR_ACCOUNT_ID: &str = "602401143452";
/// Read size when streaming and hashing files.
const CHUNK: usize = 64 * 1024;
/// How long a cut body waits before failing, so hyper flushes the bytes before the cut point.
const CUT_FLUSH_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// One fault on one file.
#[derive(Debug, Clone)]
struct Fault {
    /// Byte offset to flip (corrupt) or bytes to send before closing (cut).
    at: u64,
    /// How many more responses the fault applies to; `None` = until cleared.
    remaining: Option<u32>,
}

/// Mirror faults and the checksum cache.
#[derive(Debug, Default)]
pub struct MirrorState {
    corrupt: Mutex<BTreeMap<String, Fault>>,
    cut: Mutex<BTreeMap<String, Fault>>,
    /// path → (len, mtime, hex sha256)
    sha_cache: Mutex<BTreeMap<PathBuf, (u64, SystemTime, String)>>,
}

/// Takes one use of the fault on `rel`, if any.
fn take_fault(map: &Mutex<BTreeMap<String, Fault>>, rel: &str) -> Option<u64> {
    let mut map = lock(map);
    let fault = map.get_mut(rel)?;
    let at = fault.at;
    match &mut fault.remaining {
        None => {}
        Some(n) if *n <= 1 => {
            map.remove(rel);
        }
        Some(n) => *n -= 1,
    }
    Some(at)
}

/// Percent-decodes a URL path segment into bytes (`%2e%2e` → `..`); `+` stays `+`.
pub fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Percent-decodes into text (invalid UTF-8 replaced).
pub fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// The mirror-relative path of a request path, or why it is refused.
fn relative_path(path: &str) -> Result<String, ApiError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let seg = String::from_utf8(percent_decode_bytes(raw)).map_err(|_| {
            ApiError::bad_request("InvalidPath", format!("{path}: path is not UTF-8"))
        })?;
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['/', '\\', '\0']) {
            return Err(ApiError::bad_request(
                "InvalidPath",
                format!("{path}: '..', '.', empty and encoded-slash segments are refused"),
            ));
        }
        segments.push(seg);
    }
    Ok(segments.join("/"))
}

/// Normalises the `path` a control call names (`/mirror/x`, `mirror/x` or `x`).
fn control_path(p: &str) -> Result<String, ApiError> {
    let p = p.trim_start_matches('/');
    let p = p.strip_prefix("mirror/").unwrap_or(p);
    relative_path(&format!("{PREFIX}{p}"))
}

fn plain(status: StatusCode, code: &str, message: String) -> Response {
    ApiError::new(status, code, message).render(Protocol::Plain)
}

/// Serves one mirror request.
pub async fn handle(state: &Shared, req: &Req) -> Response {
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the mirror serves GET and HEAD, not {}", req.method),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(root) = state.config.mirror_dir.clone() else {
        return plain(
            StatusCode::NOT_FOUND,
            "NoMirror",
            "this devstack was started without a mirror directory (--mirror-dir)".into(),
        );
    };
    let rel = match relative_path(&req.path) {
        Ok(r) => r,
        Err(e) => return e.render(Protocol::Plain),
    };
    let file = root.join(&rel);
    let head = req.method == Method::HEAD;
    let on_disk = tokio::fs::metadata(&file).await.is_ok();
    if !on_disk {
        let host = req.header("host").unwrap_or("127.0.0.1").to_string();
        match rel.as_str() {
            "manifest.yaml" | "manifest.json" => {
                return serve_manifest(state, &root, &rel, &host, head).await;
            }
            _ => {}
        }
        if let Some(base) = rel.strip_suffix(CHECKSUM_SUFFIX) {
            return serve_checksum(state, &root, base, head).await;
        }
        return plain(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("{} is not in the mirror", req.path),
        );
    }
    serve_file(state, &root, &rel, req, head).await
}

/// Resolves `rel` under `root`, refusing symlinks that lead outside it.
async fn resolve(root: &Path, rel: &str) -> Result<(PathBuf, std::fs::Metadata), Response> {
    let not_found = || {
        plain(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("{PREFIX}{rel} is not in the mirror"),
        )
    };
    let (Ok(real_root), Ok(real)) = (
        tokio::fs::canonicalize(root).await,
        tokio::fs::canonicalize(root.join(rel)).await,
    ) else {
        return Err(not_found());
    };
    if !real.starts_with(&real_root) {
        return Err(plain(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("{PREFIX}{rel} leads outside the mirror"),
        ));
    }
    match tokio::fs::metadata(&real).await {
        Ok(m) if m.is_file() => Ok((real, m)),
        _ => Err(not_found()),
    }
}

/// Parses a single-range `Range` header against `len`. `Ok(None)`: serve the whole file (no
/// header, or one we ignore as RFC 9110 allows: multiple ranges, other units, bad syntax).
/// `Err(())`: unsatisfiable.
fn parse_range(value: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return Ok(None),
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", meta.len(), mtime)
}

fn set(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

async fn serve_file(state: &Shared, root: &Path, rel: &str, req: &Req, head: bool) -> Response {
    let (path, meta) = match resolve(root, rel).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let len = meta.len();
    let tag = etag(&meta);
    if req
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
    {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        set(&mut r, header::ETAG, &tag);
        return r;
    }
    // A Range only applies while the representation is the one the client saw (If-Range).
    let range_header = match req.header("if-range") {
        Some(v) if v.trim() != tag => None,
        _ => req.header("range"),
    };
    let range = match parse_range(range_header, len) {
        Ok(r) => r,
        Err(()) => {
            let mut r = plain(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                format!("{PREFIX}{rel} has {len} bytes"),
            );
            set(&mut r, header::CONTENT_RANGE, &format!("bytes */{len}"));
            set(&mut r, header::ACCEPT_RANGES, "bytes");
            return r;
        }
    };
    let (start, count, status) = match range {
        Some((s, e)) => (s, e - s + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, len, StatusCode::OK),
    };
    let body = if head {
        Body::empty()
    } else {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("cannot open {}: {e}", path.display()),
                );
            }
        };
        if start > 0
            && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
        {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot seek {}: {e}", path.display()),
            );
        }
        let corrupt_at =
            take_fault(&state.mirror.corrupt, rel).map(|at| at.min(len.saturating_sub(1)));
        let cut_after = take_fault(&state.mirror.cut, rel);
        let reader = FaultyReader {
            inner: file.take(count),
            pos: start,
            corrupt_at,
            cut_after,
            sent: 0,
            scratch: Vec::new(),
            grace: None,
        };
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, CHUNK))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut r, header::CONTENT_LENGTH, &count.to_string());
    set(&mut r, header::ACCEPT_RANGES, "bytes");
    set(&mut r, header::ETAG, &tag);
    if let Ok(m) = meta.modified() {
        set(&mut r, header::LAST_MODIFIED, &httpdate::fmt_http_date(m));
    }
    if let Some((s, e)) = range {
        set(
            &mut r,
            header::CONTENT_RANGE,
            &format!("bytes {s}-{e}/{len}"),
        );
    }
    r
}

/// Streams a file, optionally flipping the byte at one absolute offset and failing after a
/// number of body bytes (the failure makes hyper drop the connection mid-body, which a client
/// sees as a truncated download).
struct FaultyReader<R> {
    inner: R,
    /// Absolute file offset of the next byte read.
    pos: u64,
    corrupt_at: Option<u64>,
    cut_after: Option<u64>,
    sent: u64,
    scratch: Vec<u8>,
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for FaultyReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(limit) = this.cut_after
            && this.sent >= limit
        {
            // hyper drops what it has not yet written when a body fails, so give it a moment
            // (a pending body makes it flush) before failing: exactly `limit` bytes go out.
            if limit > 0 {
                let grace = this
                    .grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH_GRACE)));
                if grace.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "devstack mirror fault: cut",
            )));
        }
        // Never read past the cut point, so exactly `limit` bytes go out. Reading through a
        // scratch buffer costs a copy but needs no unsafe buffer bookkeeping.
        let allowed = this
            .cut_after
            .map(|l| (l - this.sent) as usize)
            .unwrap_or(usize::MAX)
            .min(buf.remaining())
            .min(CHUNK);
        if this.scratch.len() < allowed {
            this.scratch.resize(allowed, 0);
        }
        let mut scratch = ReadBuf::new(&mut this.scratch[..allowed]);
        let res = Pin::new(&mut this.inner).poll_read(cx, &mut scratch);
        if let Poll::Ready(Ok(())) = res {
            let n = scratch.filled().len();
            if let Some(at) = this.corrupt_at
                && at >= this.pos
                && at < this.pos + n as u64
            {
                let idx = (at - this.pos) as usize;
                scratch.filled_mut()[idx] ^= 0xff;
            }
            buf.put_slice(scratch.filled());
            this.pos += n as u64;
            this.sent += n as u64;
        }
        res
    }
}

/// A response whose body fails before its first byte: hyper then drops the connection without
/// completing the response, which a client sees as a network error. The mirror's `cut` fault
/// does the same mid-body; the dispatcher uses this for requests that arrive during an outage
/// on connections accepted before it.
pub fn severed_response() -> Response {
    let reader = FaultyReader {
        inner: tokio::io::empty(),
        pos: 0,
        corrupt_at: None,
        cut_after: Some(0),
        sent: 0,
        scratch: Vec::new(),
        grace: None,
    };
    let mut r = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(reader)));
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// SHA-256 of a file, streamed; cached by size and mtime.
async fn sha256_hex(
    state: &Shared,
    path: &Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<String> {
    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    if let Some((len, m, hex)) = lock(&state.mirror.sha_cache).get(path)
        && *len == meta.len()
        && *m == mtime
    {
        return Ok(hex.clone());
    }
    let mut file = tokio::fs::File::open(path).await?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let hex = hex::encode(ctx.finish().as_ref());
    lock(&state.mirror.sha_cache).insert(path.to_path_buf(), (meta.len(), mtime, hex.clone()));
    Ok(hex)
}

async fn serve_checksum(state: &Shared, root: &Path, base: &str, head: bool) -> Response {
    let (path, meta) = match resolve(root, base).await {
        Ok(r) => r,
        Err(_) => {
            return plain(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                format!("{PREFIX}{base}{CHECKSUM_SUFFIX} is not in the mirror"),
            );
        }
    };
    let hex = match sha256_hex(state, &path, &meta).await {
        Ok(h) => h,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot hash {}: {e}", path.display()),
            );
        }
    };
    let name = base.rsplit('/').next().unwrap_or(base);
    let text = format!("{hex}  {name}\n");
    small_response(text.into_bytes(), "text/plain; charset=utf-8", head)
}

fn small_response(bytes: Vec<u8>, content_type: &str, head: bool) -> Response {
    let len = bytes.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from(bytes)
    });
    set(&mut r, header::CONTENT_TYPE, content_type);
    set(&mut r, header::CONTENT_LENGTH, &len.to_string());
    r
}

// ---------------------------------------------------------------------------------------------
// Manifest

#[derive(Debug, Serialize)]
struct Artifact {
    name: String,
    arch: String,
    os: &'static str,
    uri: String,
    checksum_uri: String,
}

#[derive(Debug, Serialize)]
struct PatchRelease {
    version: String,
    patch_version: String,
    release_date: String,
    artifacts: Vec<Artifact>,
}

#[derive(Debug, Serialize)]
struct EksRelease {
    major_minor_version: String,
    latest_patch_version: String,
    patch_releases: Vec<PatchRelease>,
}

#[derive(Debug, Serialize)]
struct ToolRelease {
    version: String,
    artifacts: Vec<Artifact>,
}

#[derive(Debug, Serialize)]
struct RegionData {
    partition: &'static str,
    ecr_account_id: &'static str,
    cred_providers: BTreeMap<&'static str, bool>,
}

#[derive(Debug, Serialize)]
struct Manifest {
    supported_eks_releases: Vec<EksRelease>,
    iam_roles_anywhere_releases: Vec<ToolRelease>,
    ssm_releases: Vec<ToolRelease>,
    region_config: BTreeMap<String, RegionData>,
}

/// A numeric `x.y.z` version.
type Semver = (u64, u64, u64);

/// `x.y.z` with numeric parts.
fn semver(v: &str) -> Option<Semver> {
    let mut it = v.split('.');
    let parts = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    it.next().is_none().then_some(parts)
}

fn sorted_dir(path: &Path) -> Vec<(String, PathBuf, std::fs::Metadata)> {
    let mut out: Vec<_> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.starts_with('.') {
                return None;
            }
            let meta = std::fs::metadata(e.path()).ok()?;
            Some((name, e.path(), meta))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Artifacts under `<dir>/<arch>/<name>`, URIs relative to `base` + `prefix`.
fn artifacts(dir: &Path, base: &str, prefix: &str) -> Vec<Artifact> {
    let mut out = Vec::new();
    for (arch, arch_path, meta) in sorted_dir(dir) {
        if !meta.is_dir() {
            continue;
        }
        for (name, _, meta) in sorted_dir(&arch_path) {
            if !meta.is_file() || name.ends_with(CHECKSUM_SUFFIX) {
                continue;
            }
            let uri = format!("{base}{prefix}/{arch}/{name}");
            out.push(Artifact {
                checksum_uri: format!("{uri}{CHECKSUM_SUFFIX}"),
                uri,
                name,
                arch: arch.clone(),
                os: "linux",
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

fn date_of(meta: &std::fs::Metadata) -> String {
    let t = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    let t = time::OffsetDateTime::from(t);
    format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day())
}

fn tool_releases(dir: &Path, base: &str, top: &str) -> Vec<ToolRelease> {
    let mut out: Vec<(Option<Semver>, ToolRelease)> = sorted_dir(dir)
        .into_iter()
        .filter(|(_, _, m)| m.is_dir())
        .map(|(version, path, _)| {
            (
                semver(&version),
                ToolRelease {
                    artifacts: artifacts(&path, base, &format!("{top}/{version}")),
                    version,
                },
            )
        })
        .filter(|(_, r)| !r.artifacts.is_empty())
        .collect();
    out.sort_by_key(|(v, _)| *v);
    out.into_iter().map(|(_, r)| r).collect()
}

fn build_manifest(root: &Path, base: &str, region: &str) -> Manifest {
    let mut by_minor: BTreeMap<(u64, u64), Vec<(Semver, PatchRelease)>> = BTreeMap::new();
    for (version, path, meta) in sorted_dir(root) {
        let Some(v) = semver(&version).filter(|_| meta.is_dir()) else {
            continue;
        };
        let arts = artifacts(&path, base, &version);
        if arts.is_empty() {
            continue;
        }
        by_minor.entry((v.0, v.1)).or_default().push((
            v,
            PatchRelease {
                patch_version: v.2.to_string(),
                release_date: date_of(&meta),
                artifacts: arts,
                version,
            },
        ));
    }
    let supported_eks_releases = by_minor
        .into_iter()
        .rev()
        .map(|((major, minor), mut patches)| {
            patches.sort_by_key(|(v, _)| *v);
            let latest = patches.last().map(|p| p.0.2).unwrap_or(0);
            EksRelease {
                major_minor_version: format!("{major}.{minor}"),
                latest_patch_version: latest.to_string(),
                patch_releases: patches.into_iter().map(|(_, p)| p).collect(),
            }
        })
        .collect();
    let mut region_config = BTreeMap::new();
    region_config.insert(
        region.to_string(),
        RegionData {
            partition: "aws",
            ecr_account_id: ECR_ACCOUNT_ID,
            cred_providers: BTreeMap::from([("iam-ra", true), ("ssm", true)]),
        },
    );
    Manifest {
        supported_eks_releases,
        iam_roles_anywhere_releases: tool_releases(&root.join(IAM_RA_DIR), base, IAM_RA_DIR),
        ssm_releases: tool_releases(&root.join(SSM_DIR), base, SSM_DIR),
        region_config,
    }
}

async fn serve_manifest(
    state: &Shared,
    root: &Path,
    rel: &str,
    host: &str,
    head: bool,
) -> Response {
    let base = format!("http://{host}{PREFIX}");
    let root = root.to_path_buf();
    let region = state.config.region.clone();
    let manifest =
        match tokio::task::spawn_blocking(move || build_manifest(&root, &base, &region)).await {
            Ok(m) => m,
            Err(e) => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("manifest generation failed: {e}"),
                );
            }
        };
    let (bytes, content_type) = if rel.ends_with(".json") {
        (
            serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string()),
            "application/json",
        )
    } else {
        (
            serde_yaml_ng::to_string(&manifest)
                .map(String::into_bytes)
                .map_err(|e| e.to_string()),
            "application/yaml",
        )
    };
    match bytes {
        Ok(b) => small_response(b, content_type, head),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("cannot render {rel}: {e}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Control

/// Control endpoint for mirror faults (reached through `/_devstack/mirror/...`):
/// - `POST /_devstack/mirror/corrupt?path=P[&offset=N][&times=K]`: flip the byte at offset N
///   (default: the middle of the file) whenever P is served, K times (default: until cleared).
///   Checksum companions keep describing the true content, so a client must notice.
/// - `POST /_devstack/mirror/cut?path=P&after=N[&times=K]`: close the connection after N body
///   bytes of the next K responses for P (default once).
/// - `DELETE /_devstack/mirror/corrupt?path=P`, `DELETE /_devstack/mirror/cut?path=P`: clear.
pub async fn control(state: &Shared, op: &str, req: &Req) -> Response {
    let q = req.query_pairs();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let bad = |m: String| plain(StatusCode::BAD_REQUEST, "InvalidParameter", m);
    let Some(raw) = get("path") else {
        return bad(format!("/_devstack/{op} needs ?path=FILE"));
    };
    let rel = match control_path(&raw) {
        Ok(r) => r,
        Err(e) => return e.render(Protocol::Plain),
    };
    let num = |k: &str| {
        get(k).map(|v| {
            v.parse::<u64>()
                .map_err(|_| format!("{k} must be a non-negative integer, not {v}"))
        })
    };
    let times = match num("times").transpose() {
        Ok(t) => t.map(|t| t.min(u32::MAX as u64) as u32).filter(|t| *t > 0),
        Err(m) => return bad(m),
    };
    let ok = |v: serde_json::Value| {
        crate::wire::bytes_response(StatusCode::OK, "application/json", v.to_string().into())
    };
    match (req.method.clone(), op) {
        (Method::POST, "mirror/corrupt") => {
            let at = match num("offset").transpose() {
                Ok(Some(o)) => o,
                Ok(None) => {
                    let len = match &state.config.mirror_dir {
                        Some(root) => std::fs::metadata(root.join(&rel))
                            .map(|m| m.len())
                            .unwrap_or(0),
                        None => 0,
                    };
                    len / 2
                }
                Err(m) => return bad(m),
            };
            lock(&state.mirror.corrupt).insert(
                rel.clone(),
                Fault {
                    at,
                    remaining: times,
                },
            );
            ok(serde_json::json!({ "path": rel, "offset": at, "times": times }))
        }
        (Method::POST, "mirror/cut") => {
            let after = match num("after").transpose() {
                Ok(Some(a)) => a,
                Ok(None) => return bad("mirror/cut needs &after=N (bytes)".into()),
                Err(m) => return bad(m),
            };
            let times = times.unwrap_or(1);
            lock(&state.mirror.cut).insert(
                rel.clone(),
                Fault {
                    at: after,
                    remaining: Some(times),
                },
            );
            ok(serde_json::json!({ "path": rel, "after": after, "times": times }))
        }
        (Method::DELETE, "mirror/corrupt") => {
            lock(&state.mirror.corrupt).remove(&rel);
            ok(serde_json::json!({ "path": rel }))
        }
        (Method::DELETE, "mirror/cut") => {
            lock(&state.mirror.cut).remove(&rel);
            ok(serde_json::json!({ "path": rel }))
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "UnknownControl",
            format!("no control endpoint {} /_devstack/{op}", req.method),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=2-4"), 10), Ok(Some((2, 4))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
    }

    #[test]
    fn traversal_is_refused_also_encoded() {
        assert!(relative_path("/mirror/../etc/passwd").is_err());
        assert!(relative_path("/mirror/%2e%2e/etc/passwd").is_err());
        assert!(relative_path("/mirror/a/%2E%2E/b").is_err());
        assert!(relative_path("/mirror/a%2fb").is_err());
        assert!(relative_path("/mirror/a//b").is_err());
        assert_eq!(
            relative_path("/mirror/1.31.2/amd64/kubelet")
                .ok()
                .as_deref(),
            Some("1.31.2/amd64/kubelet")
        );
        assert_eq!(relative_path("/mirror/a%20b").ok().as_deref(), Some("a b"));
    }
}
