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
/// Most redirects followed for one request (Go's net/http, which nodeadm uses, and reqwest's
/// default policy both stop after 10).
pub const MAX_REDIRECTS: usize = 10;

/// A failed transfer, naming the URL and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url} is not HTTPS; artifacts must come over HTTPS (pass --allow-insecure-mirror only for a trusted local mirror)"
    )]
    Insecure { url: String },
    #[error("`{url}` is not a valid http(s) URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("GET {url} was redirected {chain}: {reason}")]
    Redirect {
        url: String,
        chain: String,
        reason: String,
    },
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

/// Network settings of the fetcher. `Debug` hides a proxy password.
#[derive(Clone, Default)]
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

impl std::fmt::Debug for FetchSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchSettings")
            .field("allow_insecure", &self.allow_insecure)
            .field("proxy", &self.proxy.as_deref().map(shown_url))
            .field("no_proxy", &self.no_proxy)
            .field("ca_bundle", &self.ca_bundle)
            .field("initial_backoff", &self.initial_backoff)
            .finish()
    }
}

/// `url` as it may be shown (errors, logs, state files): a password in its userinfo replaced by
/// `***`. Works on text, so an unparsable URL is redacted too; the rest is kept verbatim.
pub fn shown_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:{}", crate::config::REDACTED),
        None => userinfo.to_owned(),
    };
    format!("{}{user}{}", &url[..start], &rest[at..])
}

/// Why the redirect policy stopped a request (carried in reqwest's error to [`send`]).
#[derive(Debug)]
struct RedirectRefused {
    chain: String,
    reason: String,
}

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirected {}: {}", self.chain, self.reason)
    }
}

impl std::error::Error for RedirectRefused {}

/// Every hop must pass the check the first URL passed ([`Fetcher::check_url`]): an HTTPS
/// artifact must not be downgraded to plain HTTP by a redirect (a network attacker could then
/// serve it). At most [`MAX_REDIRECTS`] hops.
fn redirect_policy(allow_insecure: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let reason = if attempt.previous().len() > MAX_REDIRECTS {
            Some(format!(
                "more than {MAX_REDIRECTS} redirects; check the mirror's redirect rules"
            ))
        } else {
            match attempt.url().scheme() {
                "https" => None,
                "http" if allow_insecure => None,
                "http" => Some(
                    "a redirect from HTTPS to plain HTTP is refused: artifacts must come over HTTPS; fix the mirror's redirect (pass --allow-insecure-mirror only for a trusted local mirror)"
                        .to_owned(),
                ),
                other => Some(format!("scheme `{other}` is not http(s)")),
            }
        };
        match reason {
            None => attempt.follow(),
            Some(reason) => {
                let chain = attempt
                    .previous()
                    .iter()
                    .chain([attempt.url()])
                    .map(|u| shown_url(u.as_str()))
                    .collect::<Vec<_>>()
                    .join(" -> ");
                attempt.error(RedirectRefused { chain, reason })
            }
        }
    })
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
            .redirect(redirect_policy(settings.allow_insecure))
            .user_agent(concat!("hybrid-agent/", env!("CARGO_PKG_VERSION")));
        match &settings.proxy {
            Some(url) => {
                let mut proxy = reqwest::Proxy::all(url).map_err(|e| {
                    FetchError::Client(format!("proxy {}: {}", shown_url(url), e.without_url()))
                })?;
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
            url: shown_url(url),
            message: e.to_string(),
        })?;
        match parsed.scheme() {
            "https" => Ok(parsed),
            "http" if self.allow_insecure => Ok(parsed),
            "http" => Err(FetchError::Insecure {
                url: shown_url(url),
            }),
            other => Err(FetchError::BadUrl {
                url: shown_url(url),
                message: format!("scheme `{other}` is not http(s)"),
            }),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        // Equal jitter: half fixed, half random, so many nodes retrying a shared mirror spread out.
        crate::retry::Backoff::new(
            self.initial_backoff,
            MAX_BACKOFF,
            crate::retry::Spread::Equal,
        )
        .delay(attempt.saturating_sub(1), &crate::retry::RandomJitter)
    }

    /// Fetches a small text document (manifest, checksum file), with the same retries.
    pub async fn text(&self, url: &str) -> Result<String, FetchError> {
        let parsed = self.check_url(url)?;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let mut resp = match send(self.client.get(parsed.clone()), url).await? {
                Ok(r) => r,
                Err(why) => {
                    last = why;
                    continue;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: shown_url(url),
                    status,
                });
            }
            if resp
                .content_length()
                .is_some_and(|l| l > MAX_TEXT_BYTES as u64)
            {
                return Err(FetchError::TooLarge {
                    url: shown_url(url),
                    limit: MAX_TEXT_BYTES,
                });
            }
            let mut body = Vec::new();
            let broke = stream_body(&mut resp, |chunk| {
                body.extend_from_slice(chunk);
                if body.len() > MAX_TEXT_BYTES {
                    return Err(FetchError::TooLarge {
                        url: shown_url(url),
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
                url: shown_url(url),
                message: "not UTF-8 text".to_owned(),
            });
        }
        Err(FetchError::Transport {
            url: shown_url(url),
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
                url: shown_url(checksum_url),
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
            let mut resp = match send(req, url).await? {
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
                        url: shown_url(url),
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
                    url: shown_url(url),
                    checksum_url: shown_url(checksum_url),
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
            url: shown_url(url),
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

/// Sends one try. A transport failure or a status worth another try comes back as `Ok(Err)`
/// with the reason (for the final error if every try fails); a refused redirect is final
/// (`Err`); any other answer is the caller's to judge. reqwest's message names the URL, which
/// may carry a password: it is dropped (the caller's error names the URL, redacted).
async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<Result<reqwest::Response, String>, FetchError> {
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            // reqwest may wrap its redirect error in another: look through the whole chain.
            let mut refused = None;
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                if let Some(r) = s.downcast_ref::<RedirectRefused>() {
                    refused = Some(r);
                    break;
                }
                src = s.source();
            }
            if let Some(r) = refused {
                return Err(FetchError::Redirect {
                    url: shown_url(url),
                    chain: r.chain.clone(),
                    reason: r.reason.clone(),
                });
            }
            return Ok(Err(chain(&e.without_url())));
        }
    };
    let status = resp.status();
    if retryable_status(status) {
        return Ok(Err(format!("HTTP {status}")));
    }
    Ok(Ok(resp))
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
            Err(e) => return Ok(Some(chain(&e.without_url()))),
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
            url: shown_url(url),
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
            url: shown_url(url),
            checksum_url: shown_url(checksum_url),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// Reads one request head and answers it with `answer(path)`; one connection at a time.
    fn serve(mut stream: impl Read + Write, answer: &dyn Fn(&str) -> String) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let _ = stream.write_all(answer(&path).as_bytes());
        let _ = stream.flush();
    }

    /// A plain HTTP server on 127.0.0.1; returns its port.
    fn plain_server(answer: impl Fn(&str) -> String + Send + 'static) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &answer);
            }
        });
        port
    }

    /// An HTTPS server on 127.0.0.1 with a certificate from a fresh test CA; returns its port and
    /// the CA's PEM.
    fn tls_server(answer: impl Fn(u16, &str) -> String + Send + 'static) -> (u16, String) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "download test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                serve(rustls::StreamOwned::new(conn, tcp), &|path| {
                    answer(port, path)
                });
            }
        });
        (port, ca_cert.pem())
    }

    fn redirect(to: &str) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn fetcher(ca_pem: &str, dir: &Path, allow_insecure: bool) -> Fetcher {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).expect("write CA");
        Fetcher::new(&FetchSettings {
            allow_insecure,
            ca_bundle: Some(ca),
            initial_backoff: Some(Duration::from_millis(1)),
            ..Default::default()
        })
        .expect("fetcher")
    }

    #[tokio::test]
    async fn https_to_http_redirect_is_refused_naming_the_chain() {
        let plain = plain_server(|_| ok("served in cleartext"));
        let (port, ca) = tls_server(move |port, path| match path {
            "/same" => redirect(&format!("https://127.0.0.1:{port}/final")),
            "/final" => ok("over TLS"),
            _ => redirect(&format!("http://127.0.0.1:{plain}/manifest.yaml")),
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let f = fetcher(&ca, dir.path(), false);

        // HTTPS to HTTPS is followed.
        let same = format!("https://127.0.0.1:{port}/same");
        assert_eq!(f.text(&same).await.expect("https redirect"), "over TLS");

        let first = format!("https://127.0.0.1:{port}/manifest.yaml");
        let e = f.text(&first).await.expect_err("downgrade refused");
        let shown = e.to_string();
        let target = format!("http://127.0.0.1:{plain}/manifest.yaml");
        assert!(
            shown.contains(&format!("{first} -> {target}")) && shown.contains("HTTPS"),
            "{shown}"
        );
        assert!(matches!(e, FetchError::Redirect { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn redirect_hops_are_capped() {
        let (port, ca) = tls_server(|port, path| {
            let n: u32 = path.trim_start_matches("/hop").parse().unwrap_or(0);
            redirect(&format!("https://127.0.0.1:{port}/hop{}", n + 1))
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let f = fetcher(&ca, dir.path(), false);
        let e = f
            .text(&format!("https://127.0.0.1:{port}/hop0"))
            .await
            .expect_err("endless redirects");
        let shown = e.to_string();
        assert!(matches!(e, FetchError::Redirect { .. }), "{e:?}");
        assert!(
            shown.contains(&format!("more than {MAX_REDIRECTS} redirects")),
            "{shown}"
        );
    }

    #[test]
    fn userinfo_is_redacted_from_shown_urls() {
        assert_eq!(
            shown_url("https://reader:s3cret@mirror.example/x?y=1"),
            "https://reader:***@mirror.example/x?y=1"
        );
        assert_eq!(
            shown_url("https://mirror.example/x"),
            "https://mirror.example/x"
        );
        let e = FetchError::Status {
            url: shown_url("https://u:s3cret@m.example/a"),
            status: StatusCode::NOT_FOUND,
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn debug_of_settings_hides_the_proxy_password() {
        let s = FetchSettings {
            proxy: Some("http://user:Pr0xyHunter2@proxy:3128".to_owned()),
            ..Default::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("Pr0xyHunter2"), "{shown}");
        assert!(shown.contains("proxy:3128"), "{shown}");
    }
}
