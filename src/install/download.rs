//! Verified downloads: each artifact is streamed to disk while its SHA-256 is computed, then
//! compared with the published checksum. A try that fails mid-body (connection reset, timeout)
//! is retried with backoff, resuming with an HTTP `Range` request from the bytes already on disk
//! when the server advertises `Accept-Ranges: bytes` — guarded by `If-Range` with the first
//! response's validator, so a file that changed on the server restarts from zero instead of
//! being spliced. A checksum mismatch is not retried: the partial file is deleted and the error
//! names the URL and both digests.
//!
//! This module is the only retry loop for artifact transfers (one owner per retry loop).

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT_RANGES, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

use super::checksum::{self, Hasher, Sha256};
use super::progress::Progress;

/// Tries per file (nodeadm's downloader makes 3).
pub const ATTEMPTS: u32 = 3;
/// Wait before the second try; doubled for each further one, with jitter.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Time allowed to connect to the mirror.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response before the try is abandoned (a whole-request
/// timeout would cut large artifacts on slow links).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest checksum file or manifest accepted (they are a few hundred bytes to a few hundred KiB).
pub const MAX_TEXT_BYTES: usize = 8 * 1024 * 1024;

/// A failed transfer, naming the URL and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url} is not HTTPS; artifacts must come over HTTPS (pass --allow-insecure-mirror only for a trusted local mirror)"
    )]
    Insecure { url: String },
    #[error("`{url}` is not a valid http(s) URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("GET {url} answered {status}; check the mirror URL and that it serves this file")]
    Status { url: String, status: StatusCode },
    #[error(
        "GET {url} failed after {attempts} tries: {message}; check the network path to the mirror (proxy, DNS, firewall)"
    )]
    Transport {
        url: String,
        attempts: u32,
        message: String,
    },
    #[error(
        "checksum mismatch for {url}: expected {expected} (from {checksum_url}), got {actual}; the file was deleted — the mirror or something in between serves corrupt content"
    )]
    Mismatch {
        url: String,
        checksum_url: String,
        expected: Box<Sha256>,
        actual: Box<Sha256>,
    },
    #[error("the checksum file {url} is not usable: {message}")]
    Checksum { url: String, message: String },
    #[error(
        "{url} is larger than {limit} bytes; this does not look like a manifest or checksum file"
    )]
    TooLarge { url: String, limit: usize },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Network settings of the fetcher.
#[derive(Debug, Clone, Default)]
pub struct FetchSettings {
    /// Accept `http://` URLs (a trusted local mirror such as the devstack's).
    pub allow_insecure: bool,
    /// Proxy for every request.
    pub proxy: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Vec<String>,
    /// Extra PEM CA bundle (resolved path).
    pub ca_bundle: Option<PathBuf>,
    /// Override of [`INITIAL_BACKOFF`] (benchmarks).
    pub initial_backoff: Option<Duration>,
}

/// What one verified download did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    /// Body bytes received over all tries (equals `bytes` unless a try had to start over).
    pub transferred: u64,
    pub sha256: Sha256,
    /// Tries made (1 when nothing went wrong).
    pub attempts: u32,
    /// Tries that continued with a Range request instead of starting over.
    pub resumed: u32,
}

/// The downloader. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    allow_insecure: bool,
    initial_backoff: Duration,
}

impl Fetcher {
    pub fn new(settings: &FetchSettings) -> Result<Self, FetchError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("hybrid-agent/", env!("CARGO_PKG_VERSION")));
        match &settings.proxy {
            Some(url) => {
                let mut proxy = reqwest::Proxy::all(url)
                    .map_err(|e| FetchError::Client(format!("proxy {url}: {e}")))?;
                if !settings.no_proxy.is_empty() {
                    proxy =
                        proxy.no_proxy(reqwest::NoProxy::from_string(&settings.no_proxy.join(",")));
                }
                b = b.proxy(proxy);
            }
            // Only the configured proxy is used: an ambient HTTP_PROXY must not silently
            // redirect artifact downloads.
            None => b = b.no_proxy(),
        }
        if let Some(path) = &settings.ca_bundle {
            let pem = std::fs::read(path).map_err(io_err("read CA bundle", path))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| FetchError::Client(format!("CA bundle {}: {e}", path.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Self {
            client,
            allow_insecure: settings.allow_insecure,
            initial_backoff: settings.initial_backoff.unwrap_or(INITIAL_BACKOFF),
        })
    }

    /// Refuses URLs that are not HTTPS (unless insecure mirrors are allowed) or not URLs at all.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::BadUrl {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        match parsed.scheme() {
            "https" => Ok(parsed),
            "http" if self.allow_insecure => Ok(parsed),
            "http" => Err(FetchError::Insecure {
                url: url.to_owned(),
            }),
            other => Err(FetchError::BadUrl {
                url: url.to_owned(),
                message: format!("scheme `{other}` is not http(s)"),
            }),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1 << (attempt.saturating_sub(1)).min(16))
            .min(MAX_BACKOFF);
        // Equal jitter: half fixed, half random, so many nodes retrying a shared mirror spread out.
        base / 2 + base.mul_f64(rand::random::<f64>() / 2.0)
    }

    /// Fetches a small text document (manifest, checksum file), with the same retries.
    pub async fn text(&self, url: &str) -> Result<String, FetchError> {
        let parsed = self.check_url(url)?;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let mut resp = match send(self.client.get(parsed.clone())).await {
                Ok(r) => r,
                Err(why) => {
                    last = why;
                    continue;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: url.to_owned(),
                    status,
                });
            }
            if resp
                .content_length()
                .is_some_and(|l| l > MAX_TEXT_BYTES as u64)
            {
                return Err(FetchError::TooLarge {
                    url: url.to_owned(),
                    limit: MAX_TEXT_BYTES,
                });
            }
            let mut body = Vec::new();
            let broke = stream_body(&mut resp, |chunk| {
                body.extend_from_slice(chunk);
                if body.len() > MAX_TEXT_BYTES {
                    return Err(FetchError::TooLarge {
                        url: url.to_owned(),
                        limit: MAX_TEXT_BYTES,
                    });
                }
                Ok(())
            })
            .await?;
            if let Some(why) = broke {
                last = why;
                continue;
            }
            return String::from_utf8(body).map_err(|_| FetchError::Checksum {
                url: url.to_owned(),
                message: "not UTF-8 text".to_owned(),
            });
        }
        Err(FetchError::Transport {
            url: url.to_owned(),
            attempts: ATTEMPTS,
            message: last,
        })
    }

    /// Fetches and parses the GNU-format checksum for `file_name`; also returns the checksum
    /// file's text (a bundle keeps it).
    pub async fn checksum(
        &self,
        checksum_url: &str,
        file_name: &str,
    ) -> Result<(Sha256, String), FetchError> {
        let text = self.text(checksum_url).await?;
        let sha256 =
            checksum::parse_gnu(&text, file_name).map_err(|message| FetchError::Checksum {
                url: checksum_url.to_owned(),
                message,
            })?;
        Ok((sha256, text))
    }

    /// Downloads `url` to `dest` (mode 0600, fsynced) and verifies it against `expected`.
    ///
    /// The bytes go to a fresh temporary file beside `dest` ([`create_exclusive`]), which only
    /// becomes `dest` once verified ([`publish`]: never over an existing file or link). On any
    /// failure only that temporary file is removed: `dest`, whatever it is, is never written,
    /// followed or deleted.
    pub async fn file(
        &self,
        url: &str,
        checksum_url: &str,
        expected: Sha256,
        dest: &Path,
        label: &str,
        progress: &Progress,
    ) -> Result<Fetched, FetchError> {
        let (tmp, mut file) = create_temp(dest)?;
        let result = match self
            .file_inner(
                url,
                checksum_url,
                Some(expected),
                (&mut file, &tmp),
                label,
                progress,
            )
            .await
        {
            Ok(got) => publish(&tmp, dest).map(|()| got),
            Err(e) => Err(e),
        };
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Downloads the gzip-compressed `url`, decompresses it into `dest` and verifies the
    /// decompressed bytes against `expected` (a manifest's checksum covers the artifact, not its
    /// gzip: nodeadm internal/aws/source.go `getSource`). The compressed file and the
    /// decompressed one are fresh temporary files beside `dest`, removed afterwards; `dest`
    /// appears only when verified, as in [`Fetcher::file`]. `bytes` and `sha256` in the answer
    /// are the decompressed file's; `transferred` counts the compressed bytes received.
    pub async fn gzip_file(
        &self,
        url: &str,
        checksum_url: &str,
        expected: Sha256,
        dest: &Path,
        label: &str,
        progress: &Progress,
    ) -> Result<Fetched, FetchError> {
        let (gz, mut gz_file) = create_temp(dest)?;
        let result = match self
            .file_inner(
                url,
                checksum_url,
                None,
                (&mut gz_file, &gz),
                label,
                progress,
            )
            .await
        {
            Ok(got) => create_temp(dest).and_then(|(tmp, out)| {
                let r = gz_file
                    .rewind()
                    .map_err(io_err("rewind", &gz))
                    .and_then(|()| {
                        gunzip_verified(&mut gz_file, out, &tmp, url, checksum_url, expected)
                    })
                    .and_then(|(bytes, sha256)| {
                        publish(&tmp, dest).map(|()| Fetched {
                            bytes,
                            sha256,
                            ..got
                        })
                    });
                let _ = std::fs::remove_file(&tmp);
                r
            }),
            Err(e) => Err(e),
        };
        drop(gz_file);
        let _ = std::fs::remove_file(&gz);
        result
    }

    /// Downloads `url` into `file` (empty, ours; `dest` is its path for errors); with
    /// `expected`, verifies it (else the caller does).
    async fn file_inner(
        &self,
        url: &str,
        checksum_url: &str,
        expected: Option<Sha256>,
        (file, dest): (&mut File, &Path),
        label: &str,
        progress: &Progress,
    ) -> Result<Fetched, FetchError> {
        let parsed = self.check_url(url)?;
        let mut hasher = Hasher::new();
        let mut have: u64 = 0;
        // What the first response said: whether ranges work, and the validator for If-Range.
        let mut ranges = false;
        let mut validator: Option<String> = None;
        let mut resumed = 0;
        let mut transferred = 0u64;
        let mut last = String::new();
        let bar = progress.start(label, None);
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                bar.retrying(attempt, &last, if ranges { have } else { 0 });
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let resume = have > 0 && ranges;
            let mut req = self.client.get(parsed.clone());
            if resume {
                req = req.header(RANGE, format!("bytes={have}-"));
                if let Some(v) = &validator {
                    req = req.header(IF_RANGE, v.as_str());
                }
            }
            let mut resp = match send(req).await {
                Ok(r) => r,
                Err(why) => {
                    last = why;
                    continue;
                }
            };
            let status = resp.status();
            let continuing = match status {
                StatusCode::PARTIAL_CONTENT
                    if resume && content_range_start(&resp) == Some(have) =>
                {
                    true
                }
                StatusCode::OK => false,
                // A 206 for another offset, or 416: the file is not what we saw; start over.
                StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE if resume => {
                    last = format!("HTTP {status} to a resume request");
                    ranges = false;
                    have = 0;
                    hasher = Hasher::new();
                    restart(file, dest)?;
                    continue;
                }
                _ => {
                    bar.abandon(&format!("HTTP {status}"));
                    return Err(FetchError::Status {
                        url: url.to_owned(),
                        status,
                    });
                }
            };
            if continuing {
                resumed += 1;
            } else {
                if have > 0 {
                    // The server ignored the range (or none was asked): start from zero.
                    have = 0;
                    hasher = Hasher::new();
                    restart(file, dest)?;
                }
                ranges = resp
                    .headers()
                    .get(ACCEPT_RANGES)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim() == "bytes");
                validator = resp
                    .headers()
                    .get(ETAG)
                    .filter(|v| !v.as_bytes().starts_with(b"W/"))
                    .or_else(|| resp.headers().get(LAST_MODIFIED))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
            let total = resp.content_length().map(|l| l + have);
            if let Some(t) = total {
                bar.set_total(t);
            }
            let broke = stream_body(&mut resp, |chunk| {
                // Writes land in the page cache; the one fsync at the end makes them durable.
                file.write_all(chunk).map_err(io_err("write", dest))?;
                hasher.update(chunk);
                have += chunk.len() as u64;
                transferred += chunk.len() as u64;
                bar.set_position(have);
                Ok(())
            })
            .await?;
            if let Some(why) = broke {
                last = why;
                continue;
            }
            if let Some(t) = total
                && have != t
            {
                last = format!("the body ended after {have} of {t} bytes");
                continue;
            }
            file.sync_all().map_err(io_err("fsync", dest))?;
            let actual = hasher.finish();
            if let Some(expected) = expected
                && actual != expected
            {
                bar.abandon("checksum mismatch");
                return Err(FetchError::Mismatch {
                    url: url.to_owned(),
                    checksum_url: checksum_url.to_owned(),
                    expected: Box::new(expected),
                    actual: Box::new(actual),
                });
            }
            bar.finish(have);
            return Ok(Fetched {
                bytes: have,
                transferred,
                sha256: actual,
                attempts: attempt,
                resumed,
            });
        }
        bar.abandon(&last);
        Err(FetchError::Transport {
            url: url.to_owned(),
            attempts: ATTEMPTS,
            message: last,
        })
    }
}

/// An error with its whole source chain (reqwest's own message says only "error sending
/// request"), without repeating parts the outer message already contains.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let part = s.to_string();
        if !out.contains(&part) {
            out.push_str(": ");
            out.push_str(&part);
        }
        src = s.source();
    }
    out
}

/// Sends one try. A transport failure or a status worth another try comes back as `Err` with
/// the reason (for the final error if every try fails); any other answer is the caller's to judge.
async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
    let resp = req.send().await.map_err(|e| chain(&e))?;
    let status = resp.status();
    if retryable_status(status) {
        return Err(format!("HTTP {status}"));
    }
    Ok(resp)
}

/// Feeds the rest of `resp`'s body to `sink` chunk by chunk. A body that breaks off is worth
/// another try: `Ok(Some(reason))`; an error from `sink` is not retried and is returned as is.
async fn stream_body(
    resp: &mut reqwest::Response,
    mut sink: impl FnMut(&[u8]) -> Result<(), FetchError>,
) -> Result<Option<String>, FetchError> {
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => sink(&chunk)?,
            Ok(None) => return Ok(None),
            Err(e) => return Ok(Some(chain(&e))),
        }
    }
}

/// Server-side trouble worth another try.
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The first byte offset of a `Content-Range: bytes A-B/N` header.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

/// Decompresses the gzip stream `gz` into `out` (at `dest`; fsynced) while hashing what comes
/// out, and compares that with `expected`. Returns the decompressed size and digest.
fn gunzip_verified(
    gz: &mut File,
    mut out: File,
    dest: &Path,
    url: &str,
    checksum_url: &str,
    expected: Sha256,
) -> Result<(u64, Sha256), FetchError> {
    use std::io::Read;
    let mut decoder = flate2::read::GzDecoder::new(std::io::BufReader::new(gz));
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = decoder.read(&mut buf).map_err(|e| FetchError::Checksum {
            url: url.to_owned(),
            message: format!("not a valid gzip stream ({e})"),
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_err("write", dest))?;
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    out.sync_all().map_err(io_err("fsync", dest))?;
    let actual = hasher.finish();
    if actual != expected {
        return Err(FetchError::Mismatch {
            url: url.to_owned(),
            checksum_url: checksum_url.to_owned(),
            expected: Box::new(expected),
            actual: Box::new(actual),
        });
    }
    Ok((bytes, actual))
}

/// Creates `path` for writing (and reading back), mode 0600, only if nothing is there:
/// `O_CREAT|O_EXCL|O_NOFOLLOW`, so neither an existing file nor a planted symlink (even a
/// dangling one) is ever opened — the file returned is one this call created.
pub fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)
}

/// A fresh temporary file beside `dest`: `.<name>.<pid>-<random>.partial`, hidden and
/// unpredictable, created with [`create_exclusive`].
fn create_temp(dest: &Path) -> Result<(PathBuf, File), FetchError> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(
        ".{name}.{}-{:08x}.partial",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = create_exclusive(&tmp).map_err(io_err("create", &tmp))?;
    Ok((tmp, file))
}

/// Empties a temporary file of ours to start a download over.
fn restart(file: &mut File, path: &Path) -> Result<(), FetchError> {
    file.set_len(0).map_err(io_err("truncate", path))?;
    file.rewind().map_err(io_err("rewind", path))
}

/// Gives the verified temporary file `tmp` its final name `dest` without replacing anything
/// there: a hard link (which fails when `dest` exists, also as a symlink) — the caller removes
/// `tmp` afterwards — and an fsync of the directory.
pub fn publish(tmp: &Path, dest: &Path) -> Result<(), FetchError> {
    std::fs::hard_link(tmp, dest).map_err(|source| FetchError::Io {
        op: "move the verified download into place as",
        path: dest.to_path_buf(),
        source,
    })?;
    crate::fsutil::sync_dir(crate::fsutil::parent_dir(dest)).map_err(|e| FetchError::Io {
        op: e.step.verb(),
        path: e.path,
        source: e.source,
    })
}
