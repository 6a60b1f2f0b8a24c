//! The daemon's live status: a root-only Unix socket that `hybrid-agent status` asks, and the
//! optional Prometheus endpoint (`status.prometheus_listen`).
//!
//! # Protocol of the status socket (`/run/hybrid-agent/status.sock`, mode 0600)
//!
//! A client connects and sends one request, then reads the answer until the daemon closes the
//! connection. A request is either a bare word on one line:
//!
//! - `state`   the daemon's state document (what `daemon.json` holds), computed now;
//! - `status`  the report `hybrid-agent status --json` prints (`"source": "socket"`);
//! - `text`    the report as `hybrid-agent status` prints it;
//! - `metrics` the Prometheus text exposition ([`super::prometheus`]);
//!
//! answered with the document alone, or an HTTP/1.x request for `/state`, `/status`, `/text` or
//! `/metrics` (`curl --unix-socket /run/hybrid-agent/status.sock http://agent/status`), answered
//! with an HTTP/1.1 response and `Connection: close`. An unknown request gets `error: …` (or
//! 400/404/405). `hybrid-agent status` sends `state` and builds its report exactly as it does
//! from the file, so the two sources differ only in freshness.
//!
//! The Prometheus endpoint speaks the same HTTP subset over TCP and serves `/metrics` only: the
//! status documents carry error messages and paths that stay on the host.
//!
//! Serving is best effort: a socket or port that cannot be bound is a logged warning, never a
//! reason to stop rotating credentials. Each connection gets [`REQUEST_TIMEOUT`] for the whole
//! exchange and [`MAX_REQUEST_BYTES`] of request, and at most [`MAX_CONNECTIONS`] are served at
//! once (more are closed unanswered), so a stuck or hostile client cannot hold the others up.
//!
//! The socket is bound in a private (0700) directory beside its final path, made 0600 there and
//! then renamed into place: no client can connect while it still has the umask's mode. The
//! rename replaces a stale socket a crashed daemon left (the daemon lock, held for the daemon's
//! life, says no other daemon serves it); a clean stop removes it again if it is still ours.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

use super::health::Health;
use crate::identity::rotation::IdentityStatus;
use crate::state::{self, DaemonState, StatusSource};
use crate::supervise::SupervisionStatus;
use crate::telemetry::StatusCell;

/// Mode of the status socket: it names the instance and its errors, like `daemon.json` (0600).
pub const SOCKET_MODE: u32 = 0o600;
/// Longest request read: a request line and a few headers (curl sends ~100 bytes). Ours.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Longest a connection may take, request and answer: the answer is built in microseconds, so
/// only a client that stalls needs this. Ours.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once per listener; more are closed unanswered. Ours.
pub const MAX_CONNECTIONS: usize = 16;
/// How long `hybrid-agent status` waits for the daemon before it shows the saved state. Ours:
/// the daemon answers in milliseconds; a second means it is stopped or wedged.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer the client reads (a state document is a few KiB). Ours.
pub const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// What the daemon knows right now, assembled at each request from the channels its
/// subsystems publish on (the same ones the state file is written from).
#[derive(Clone)]
pub struct LiveStatus {
    /// The main loop's latest document (pid, start time and whatever sections it keeps).
    pub doc: watch::Receiver<DaemonState>,
    pub health: Health,
    pub identity: watch::Receiver<IdentityStatus>,
    /// Present when supervision runs.
    pub supervision: Option<watch::Receiver<Option<SupervisionStatus>>>,
    /// Present when telemetry runs: its counters are read here, not every 5 s.
    pub telemetry: Option<Arc<StatusCell>>,
    /// For the identity files `status` merges in.
    pub state_dir: PathBuf,
    /// The socket's path, as the report names it.
    pub socket: PathBuf,
}

impl LiveStatus {
    /// The state document as of now.
    pub fn snapshot(&self) -> DaemonState {
        let mut d = self.doc.borrow().clone();
        d.subsystems = self.health.snapshot();
        d.identity = Some(self.identity.borrow().clone());
        if let Some(rx) = &self.supervision
            && let Some(s) = rx.borrow().clone()
        {
            d.supervision = Some(s);
        }
        if let Some(cell) = &self.telemetry {
            d.telemetry = Some(cell.snapshot());
        }
        d.updated_at = SystemTime::now();
        d
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Socket,
    Prometheus,
}

/// A bound status socket; [`StatusSocket::remove`] takes it away at a clean stop.
pub struct StatusSocket {
    path: PathBuf,
    /// Device and inode of the socket file, to remove only our own.
    id: (u64, u64),
}

impl StatusSocket {
    /// Removes the socket file if it is still the one this daemon bound.
    pub fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(
                "cannot remove the status socket {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Binds the status socket at `path` (0600, replacing a stale one). Needs a tokio runtime.
pub fn bind_socket(path: &Path) -> Result<(tokio::net::UnixListener, StatusSocket), String> {
    let what = |e: std::io::Error, step: &str| {
        format!(
            "cannot {step} for the status socket {}: {e}",
            path.display()
        )
    };
    let parent = path
        .parent()
        .ok_or_else(|| format!("the status socket {} has no directory", path.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| what(e, &format!("create {}", parent.display())))?;
    // Short, so the private path is no longer than the final one (sun_path holds 108 bytes).
    let private = parent.join(format!(".s{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| what(e, &format!("create {}", private.display())))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)
            .map_err(|e| what(e, &format!("bind {}", staged.display())))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| what(e, "set the mode"))?;
        std::fs::rename(&staged, path).map_err(|e| what(e, "move it into place"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| what(e, "make it non-blocking"))?;
        tokio::net::UnixListener::from_std(listener).map_err(|e| what(e, "register it"))
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| what(e, "look at it"))?;
    Ok((
        listener,
        StatusSocket {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// Serves the status socket until `stop` says so.
pub async fn serve_socket(
    listener: tokio::net::UnixListener,
    live: LiveStatus,
    stop: watch::Receiver<bool>,
) {
    serve(
        || listener.accept(),
        |(s, _)| s,
        live,
        Listener::Socket,
        stop,
    )
    .await;
}

/// Binds the Prometheus endpoint on `addr`.
pub async fn bind_prometheus(
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} (status.prometheus_listen) for Prometheus: {e}")
    })
}

/// Serves `GET /metrics` until `stop` says so.
pub async fn serve_prometheus(
    listener: tokio::net::TcpListener,
    live: LiveStatus,
    stop: watch::Receiver<bool>,
) {
    serve(
        || listener.accept(),
        |(s, _)| s,
        live,
        Listener::Prometheus,
        stop,
    )
    .await;
}

async fn serve<A, F, C, S>(
    mut accept: A,
    stream_of: fn(C) -> S,
    live: LiveStatus,
    kind: Listener,
    mut stop: watch::Receiver<bool>,
) where
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<C>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = accept() => accepted,
        };
        let stream = match accepted {
            Ok(c) => {
                failures = 0;
                stream_of(c)
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait a moment rather than spin.
                if failures == 0 {
                    tracing::warn!("status listener ({kind:?}): cannot accept a connection: {e}");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Busy: closing at once costs the client a retry, not a wait.
            drop(stream);
            continue;
        };
        let live = live.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &live, kind)).await;
        });
    }
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// A bare word (`state`, `status`, `text`, `metrics`).
    Word(String),
    /// An HTTP/1.x request line.
    Http { method: String, path: String },
}

/// Reads one request: a line, or an HTTP request line and its headers up to the blank line
/// (read in full, so closing the connection afterwards does not reset it under the answer).
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, &'static str> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| "the request could not be read")?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST_BYTES {
            return Err("the request is too long");
        }
        let eof = n == 0;
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            if eof {
                // A last line without a newline (`printf status | socat …`).
                return parse_line(&buf, true);
            }
            continue;
        };
        let first = parse_line(&buf[..end], false)?;
        match first {
            Request::Word(_) => return Ok(first),
            Request::Http { .. } => {
                let rest = &buf[end + 1..];
                let done = rest.starts_with(b"\r\n")
                    || rest.starts_with(b"\n")
                    || rest.windows(4).any(|w| w == b"\r\n\r\n")
                    || rest.windows(2).any(|w| w == b"\n\n");
                if done || eof {
                    return Ok(first);
                }
            }
        }
        if eof {
            return Err("the request ended early");
        }
    }
}

fn parse_line(line: &[u8], at_eof: bool) -> Result<Request, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] if at_eof => Err("no request was sent"),
        [] => Err("the request is empty"),
        [word] => Ok(Request::Word(word.to_ascii_lowercase())),
        [method, target, version] if version.starts_with("HTTP/1.") => {
            let path = target.split(['?', '#']).next().unwrap_or("");
            Ok(Request::Http {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
        _ => Err("send one of: state, status, text, metrics (or an HTTP/1.x GET)"),
    }
}

/// An answer before framing.
struct Answer {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn ok(content_type: &'static str, body: String) -> Answer {
        Answer {
            code: 200,
            content_type,
            body,
        }
    }

    fn error(code: u16, message: &str) -> Answer {
        Answer {
            code,
            content_type: "text/plain; charset=utf-8",
            body: format!("error: {message}\n"),
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    live: &LiveStatus,
    kind: Listener,
) {
    let request = read_request(&mut stream).await;
    let (http, head_only, result) = match request {
        Err(message) => (
            kind == Listener::Prometheus,
            false,
            Answer::error(400, message),
        ),
        Ok(Request::Word(word)) => match kind {
            Listener::Socket => (false, false, document(&word, live, kind)),
            Listener::Prometheus => (
                true,
                false,
                Answer::error(400, "this endpoint speaks HTTP: GET /metrics"),
            ),
        },
        Ok(Request::Http { method, path }) => {
            let answer = if method != "GET" && method != "HEAD" {
                Answer::error(405, "only GET and HEAD are served")
            } else {
                match path.strip_prefix('/') {
                    Some(name) if !name.contains('/') => document(name, live, kind),
                    _ => Answer::error(404, "no such document"),
                }
            };
            (true, method == "HEAD", answer)
        }
    };
    let mut out = Vec::with_capacity(result.body.len() + 160);
    if http {
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                result.code,
                reason(result.code),
                result.content_type,
                result.body.len()
            )
            .as_bytes(),
        );
    }
    if !head_only {
        out.extend_from_slice(result.body.as_bytes());
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// The document `name` names, as of now.
fn document(name: &str, live: &LiveStatus, kind: Listener) -> Answer {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (kind, name) {
        (_, "metrics") => {
            let state = live.snapshot();
            Answer::ok(
                super::prometheus::CONTENT_TYPE,
                super::prometheus::render(
                    &state,
                    SystemTime::now(),
                    crate::telemetry::metrics::self_usage(),
                ),
            )
        }
        (Listener::Prometheus, _) => Answer::error(404, "only /metrics is served here"),
        (Listener::Socket, "state") => json(&live.snapshot()),
        (Listener::Socket, "status") => json(&report(live)),
        (Listener::Socket, "text") => Answer::ok(TEXT, report(live).to_text(SystemTime::now())),
        (Listener::Socket, _) => Answer::error(404, "send one of: state, status, text, metrics"),
    }
}

fn report(live: &LiveStatus) -> state::StatusReport {
    let mut r = state::report_from(Some(live.snapshot()), StatusSource::Socket, &live.state_dir);
    r.socket = Some(live.socket.clone());
    r
}

/// A document as pretty JSON.
fn json<T: serde::Serialize>(v: &T) -> Answer {
    match serde_json::to_string_pretty(v) {
        Ok(mut t) => {
            t.push('\n');
            Answer::ok("application/json", t)
        }
        Err(e) => Answer::error(500, &e.to_string()),
    }
}

/// Asks the daemon on `socket` for `request` (a bare word), waiting at most `timeout` for the
/// whole exchange; the answer's text. Blocking: runs its own small runtime.
pub fn query(socket: &Path, request: &str, timeout: Duration) -> std::io::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let exchange = async {
            let mut s = tokio::net::UnixStream::connect(socket).await?;
            s.write_all(format!("{request}\n").as_bytes()).await?;
            let mut text = String::new();
            (&mut s)
                .take(MAX_ANSWER_BYTES)
                .read_to_string(&mut text)
                .await?;
            Ok::<_, std::io::Error>(text)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Request, &'static str> {
        let mut r: &[u8] = bytes;
        read_request(&mut r).await
    }

    #[tokio::test]
    async fn requests_are_words_or_http_lines() {
        assert_eq!(parse(b"state\n").await, Ok(Request::Word("state".into())));
        assert_eq!(parse(b"STATUS").await, Ok(Request::Word("status".into())));
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await,
            Ok(Request::Http {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
        assert!(parse(b"").await.is_err());
        assert!(parse(b"a b\n").await.is_err());
        let long = vec![b'a'; MAX_REQUEST_BYTES + 10];
        assert_eq!(parse(&long).await, Err("the request is too long"));
    }
}
