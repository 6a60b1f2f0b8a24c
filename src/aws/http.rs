//! The HTTP client of the private API clients (SSM hybrid instance calls, IAM Roles Anywhere
//! CreateSession), which aws-sdk-rust does not cover: reqwest over rustls (aws-lc-rs), explicit
//! timeouts, optional proxy and extra CA bundle, and a classification of transport failures so
//! a TLS problem and an unreachable endpoint get different messages and exit codes, and one
//! reader of their answers ([`read_answer`]) that also feeds the `Date` header to the skew
//! correction ([`crate::aws::clock`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::aws::clock::{SkewChange, SkewedClock};

/// Time allowed to establish TCP + TLS. A reachable AWS endpoint answers in well under a second;
/// 10 s covers slow satellite links without hanging a `join` for long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole request. The identity calls return a few hundred bytes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer body read from a private AWS API, the Kubernetes API or a health endpoint:
/// identity answers are a few KiB and a Node object some tens of KiB (ours: far above both,
/// still a bound on what a misbehaving endpoint or proxy can make the agent hold).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Proxy and trust settings shared by every private client. `Debug` hides a proxy password.
#[derive(Clone, Default)]
pub struct HttpSettings {
    /// `http://host:port` proxy for every request (HTTPS is tunnelled with CONNECT).
    pub proxy: Option<String>,
    /// Hosts reached directly, bypassing `proxy` (NO_PROXY syntax: names, `.suffix`, IPs, CIDRs).
    pub no_proxy: Vec<String>,
    /// PEM bundle of extra CAs trusted besides the system's (corporate TLS inspection).
    pub extra_ca_bundle: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    /// Trust only this PEM bundle (a Kubernetes cluster CA), not the system roots nor
    /// `extra_ca_bundle`: `(what it is, the PEM)`.
    pub trust_only: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("proxy", &self.proxy.as_deref().map(without_password))
            .field("no_proxy", &self.no_proxy)
            .field("extra_ca_bundle", &self.extra_ca_bundle)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field(
                "trust_only",
                &self.trust_only.as_ref().map(|(what, _)| what),
            )
            .finish()
    }
}

impl HttpSettings {
    /// The proxy and trust settings of `[network]`.
    pub fn from_network(network: &crate::config::NetworkConfig) -> HttpSettings {
        HttpSettings {
            proxy: network.proxy.as_ref().map(|u| u.expose().to_string()),
            no_proxy: network.no_proxy.clone(),
            extra_ca_bundle: network.ca_bundle.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("proxy URL `{url}` is not valid: {source}")]
    Proxy { url: String, source: reqwest::Error },
    #[error("cannot read CA bundle {path}: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate: {source}")]
    CaParse {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("{what} holds no usable PEM certificate: {source}")]
    TrustParse {
        what: String,
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
}

/// A client with the settings applied.
pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, HttpSetupError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
        .timeout(settings.request_timeout.unwrap_or(REQUEST_TIMEOUT))
        // Identity calls are minutes apart: a pooled connection would mostly be one a NAT or
        // proxy has silently dropped. A fresh connection per call fails fast and honestly.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("hybrid-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(url) = &settings.proxy {
        let mut proxy = reqwest::Proxy::all(url).map_err(|source| HttpSetupError::Proxy {
            url: without_password(url),
            source,
        })?;
        if !settings.no_proxy.is_empty() {
            proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&settings.no_proxy.join(",")));
        }
        b = b.proxy(proxy);
    }
    if let Some((what, pem)) = &settings.trust_only {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| {
            HttpSetupError::TrustParse {
                what: what.clone(),
                source,
            }
        })?;
        b = b.tls_certs_only(certs);
    } else if let Some(path) = &settings.extra_ca_bundle {
        let pem = std::fs::read(path).map_err(|source| HttpSetupError::CaRead {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            HttpSetupError::CaParse {
                path: path.clone(),
                source,
            }
        })?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(HttpSetupError::Build)
}

/// `url` with a password replaced by `***`, for messages (a proxy password is a secret).
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(crate::config::REDACTED));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// One answer of a private API, read whole: the status, the error type some services put in a
/// header instead of the body's `__type`, the body, and what its `Date` header told the clock.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// `x-amzn-errortype`, when present.
    pub error_type: Option<String>,
    pub body: Vec<u8>,
    pub skew: SkewChange,
}

/// Longest excerpt of a non-JSON error body kept for the error message.
const ERROR_EXCERPT_CHARS: usize = 200;

impl Answer {
    /// The error body's `__type` and `message` (`Message` accepted too). A body that is not
    /// JSON (a proxy's error page) gives no type and a short printable excerpt as the message,
    /// which helps more than nothing. Which of `__type` and [`Answer::error_type`] wins is the
    /// caller's protocol's business.
    pub fn error_body(&self) -> (Option<String>, String) {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, rename = "__type")]
            kind: Option<String>,
            #[serde(default, alias = "Message")]
            message: Option<String>,
        }
        let parsed: Option<Body> = serde_json::from_slice(&self.body).ok();
        let kind = parsed.as_ref().and_then(|b| b.kind.clone());
        let message = parsed
            .and_then(|b| b.message)
            .unwrap_or_else(|| excerpt(&self.body));
        (kind, message)
    }
}

/// The `message` (or `Message`) of a JSON error body — AWS's, or a Kubernetes `Status` — else a
/// short printable excerpt of whatever came back.
pub fn body_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default, alias = "Message")]
        message: Option<String>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_else(|| excerpt(body))
}

/// Up to [`ERROR_EXCERPT_CHARS`] printable characters of `body`.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(ERROR_EXCERPT_CHARS)
        .collect()
}

/// An answer body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(
        "the answer from {endpoint} is larger than {limit} bytes; that is not the service's answer: check the endpoint URL and any proxy in between"
    )]
    TooLarge { endpoint: String, limit: usize },
    #[error(transparent)]
    Transport(reqwest::Error),
}

/// The rest of `resp`'s body, at most `limit` bytes (a longer one — announced or streamed — is
/// [`BodyError::TooLarge`], naming the endpoint without any password).
pub async fn read_body(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let too_large = |resp: &reqwest::Response| BodyError::TooLarge {
        endpoint: without_password(resp.url().as_str()),
        limit,
    };
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large(resp));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large(resp));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads `resp` (just received) into an [`Answer`], at most [`MAX_BODY_BYTES`] of body. The
/// `Date` header is fed to `clock` with the host time taken before the body is read, so a slow
/// body does not look like skew.
pub async fn read_answer(
    mut resp: reqwest::Response,
    clock: &SkewedClock,
) -> Result<Answer, BodyError> {
    let received = clock.host_now();
    let skew = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(|d| clock.observe(d, received))
        .unwrap_or(SkewChange::Unchanged);
    let status = resp.status().as_u16();
    let error_type = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_body(&mut resp, MAX_BODY_BYTES).await?;
    Ok(Answer {
        status,
        error_type,
        body,
        skew,
    })
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The TLS handshake failed: untrusted certificate, wrong host name, not TLS at all.
    Tls,
    /// The request or connection timed out.
    Timeout,
    /// DNS, connection refused/reset, proxy refused, ...
    Connect,
}

/// Classifies a reqwest error and renders its whole source chain (reqwest's own `Display` says
/// only "error sending request").
pub fn classify(e: &reqwest::Error) -> (TransportKind, String) {
    let mut detail = e.to_string();
    let mut tls = false;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(io_wraps_rustls)
        {
            tls = true;
        }
        src = s.source();
    }
    let kind = if tls {
        TransportKind::Tls
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else {
        TransportKind::Connect
    };
    (kind, dedup_chain(&detail))
}

/// hyper-util wraps tokio-rustls's `io::Error(InvalidData, rustls::Error)` in another
/// `io::Error`; look through any depth of such wrapping.
fn io_wraps_rustls(io: &std::io::Error) -> bool {
    match io.get_ref() {
        Some(inner) => {
            inner.downcast_ref::<rustls::Error>().is_some()
                || inner
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(io_wraps_rustls)
        }
        None => false,
    }
}

/// hyper and reqwest often repeat the inner message in the outer one; drop exact repeats.
fn dedup_chain(s: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in s.split(": ") {
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_is_connect() {
        // Bind then drop: the port is (almost certainly) closed afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let c = client(&HttpSettings::default()).expect("client");
        let e = c
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("closed port");
        let (kind, detail) = classify(&e);
        assert_eq!(kind, TransportKind::Connect, "{detail}");
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_is_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let c = client(&HttpSettings::default()).expect("client");
        let e = c
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("not TLS");
        let (kind, detail) = classify(&e);
        assert_eq!(kind, TransportKind::Tls, "{detail}");
    }

    fn answer(body: &[u8]) -> Answer {
        Answer {
            status: 400,
            error_type: None,
            body: body.to_vec(),
            skew: SkewChange::Unchanged,
        }
    }

    #[test]
    fn error_body_reads_json_either_case_or_excerpts_the_rest() {
        let (kind, message) = answer(br#"{"__type":"ns#Denied","Message":"no"}"#).error_body();
        assert_eq!(kind.as_deref(), Some("ns#Denied"));
        assert_eq!(message, "no");
        let (kind, message) = answer(br#"{"message":"lower"}"#).error_body();
        assert_eq!(kind, None);
        assert_eq!(message, "lower");
        let page = format!("<html>\r\n{}</html>", "x".repeat(500));
        let (kind, message) = answer(page.as_bytes()).error_body();
        assert_eq!(kind, None);
        assert_eq!(message.chars().count(), ERROR_EXCERPT_CHARS);
        assert!(message.starts_with("<html>xxx"), "{message}");
    }

    #[test]
    fn bad_ca_bundle_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ca.pem");
        let e = client(&HttpSettings {
            extra_ca_bundle: Some(p.clone()),
            ..Default::default()
        })
        .expect_err("missing");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }

    /// A server on 127.0.0.1 answering every request with 200 and `len` bytes of body
    /// (streamed, chunked when `chunked`, so no Content-Length gives it away).
    async fn big_server(len: usize, chunked: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let head = if chunked {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
                    } else {
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
                    };
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while sent < len {
                        let n = chunk.len().min(len - sent);
                        let r = if chunked {
                            let mut framed = format!("{n:x}\r\n").into_bytes();
                            framed.extend_from_slice(&chunk[..n]);
                            framed.extend_from_slice(b"\r\n");
                            s.write_all(&framed).await
                        } else {
                            s.write_all(&chunk[..n]).await
                        };
                        if r.is_err() {
                            return;
                        }
                        sent += n;
                    }
                    if chunked {
                        let _ = s.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn oversized_answers_are_cut_off_naming_the_endpoint() {
        let clock = SkewedClock::new(std::sync::Arc::new(crate::aws::clock::SystemClock));
        let c = client(&HttpSettings::default()).expect("client");
        for chunked in [false, true] {
            let port = big_server(64 << 20, chunked).await;
            let url = format!("http://127.0.0.1:{port}/");
            let resp = c.get(&url).send().await.expect("answer");
            let e = read_answer(resp, &clock).await.expect_err("too large");
            let shown = e.to_string();
            assert!(
                shown.contains(&url) && shown.contains("larger than"),
                "{shown}"
            );
        }
        // A small answer is read whole.
        let port = big_server(1000, true).await;
        let resp = c
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect("answer");
        let answer = read_answer(resp, &clock).await.expect("small answer");
        assert_eq!(answer.body.len(), 1000);
    }

    #[test]
    fn debug_hides_the_proxy_password() {
        let s = HttpSettings {
            proxy: Some("http://user:Pr0xyHunter2@proxy:3128".to_owned()),
            ..Default::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("Pr0xyHunter2"), "{shown}");
        assert!(shown.contains("proxy:3128"), "{shown}");
    }
}
