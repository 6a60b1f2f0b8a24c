//! `standin-kubelet` — a STAND-IN for kubelet, NOT kubelet.
//!
//! kubelet has no Debian package and cannot run here without a cluster, yet hybrid-agent's
//! supervisor must be shown to start it after containerd, probe its `/healthz`, restart it when
//! it hangs or turns unhealthy, and back off when it crash-loops. This small program plays that
//! part in the tests and the demo: it serves `/healthz` on kubelet's default port and can be told
//! to misbehave
//!
//! - at start, by flags (`--mode`, `--crash-after`),
//! - at any time, through a control file (`--control-file`, re-read at start and before every
//!   `/healthz` answer, so a mode survives restarts — that is how a crash loop is made), or
//! - through HTTP: `POST /standin/mode/{healthy|unhealthy|hang|crash}`.
//!
//! It runs with the command line hybrid-agent gives the real kubelet: it reads `healthzPort` and
//! `healthzBindAddress` from `--config` and the `--config-dir` drop-ins (later files win, as in
//! kubelet), and ignores every other kubelet flag (saying so). Where kubelet refuses to start it
//! refuses too, with kubelet's kind of message and exit code 1: a `--config` file that is missing,
//! unreadable or not a configuration, a `--config-dir` that is missing or not a directory, or a
//! drop-in that does not parse — so a join that would leave kubelet dead on a real host fails
//! here too.
//!
//! Every line it prints and its `--help` say it is a stand-in, so nobody mistakes it for kubelet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::{Parser, ValueEnum};

mod node_status;

/// Printed before every line, so logs never show this program as kubelet.
const TAG: &str = "standin-kubelet [STAND-IN, not kubelet]";

/// kubelet's default `--healthz-port` (kubelet's flag reference).
const KUBELET_HEALTHZ_PORT: u16 = 10248;

/// Exit code for a crash ordered by `--crash-after` or the `crash` mode.
const CRASH_EXIT_CODE: i32 = 3;
/// kubelet's exit code when its command fails (cmd/kubelet: `os.Exit(1)` on a command error).
const KUBELET_FAILURE_EXIT_CODE: i32 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "standin-kubelet",
    version,
    about = "A STAND-IN for kubelet (NOT kubelet) used by hybrid-agent's tests and demo.",
    long_about = "A STAND-IN for kubelet — this is NOT kubelet. It serves /healthz like kubelet's \
                  healthz endpoint so hybrid-agent's supervisor can be exercised, and it can be \
                  told to crash, hang or turn unhealthy: by flags, through a control file holding \
                  one word (healthy, unhealthy, hang, crash), or with \
                  `POST /standin/mode/{healthy|unhealthy|hang|crash}`."
)]
struct Args {
    /// Address /healthz listens on (kubelet's flag of the same name; default 127.0.0.1 or the
    /// config's healthzBindAddress).
    #[arg(long)]
    healthz_bind_address: Option<std::net::IpAddr>,
    /// Port /healthz listens on (kubelet's flag of the same name; default 10248 or the config's
    /// healthzPort).
    #[arg(long)]
    healthz_port: Option<u16>,
    /// kubelet's configuration file (JSON); only healthzPort and healthzBindAddress are used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// kubelet's drop-in directory (`*.conf`, JSON, in name order, later wins).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// How the stand-in behaves from the start.
    #[arg(long, value_enum, default_value_t = Mode::Healthy)]
    mode: Mode,
    /// Exit with a failure code this many seconds after start (0: at once).
    #[arg(long)]
    crash_after: Option<f64>,
    /// A file holding one word (healthy, unhealthy, hang, crash, no-cni); when it exists it
    /// overrides --mode, at start and before every /healthz answer.
    #[arg(long)]
    control_file: Option<PathBuf>,
    /// kubelet's kubeconfig: when given, the stand-in registers its Node with that API server
    /// (token from the kubeconfig's exec plugin, TLS against its CA) and posts the Ready
    /// condition every few seconds, as kubelet does.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The Node's name (kubelet's flag; hybrid-agent sets it to the node name).
    #[arg(long)]
    hostname_override: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// /healthz answers 200 "ok".
    Healthy,
    /// /healthz answers 500.
    Unhealthy,
    /// /healthz accepts the connection and never answers.
    Hang,
    /// The process exits with a failure code.
    Crash,
    /// /healthz answers 200, but the Node is NotReady because no CNI runs (as on an EKS hybrid
    /// node before Cilium or Calico is deployed).
    NoCni,
}

impl Mode {
    fn from_word(word: &str) -> Option<Mode> {
        match word.trim() {
            "healthy" => Some(Mode::Healthy),
            "unhealthy" => Some(Mode::Unhealthy),
            "hang" => Some(Mode::Hang),
            "crash" => Some(Mode::Crash),
            "no-cni" => Some(Mode::NoCni),
            _ => None,
        }
    }
    fn as_u8(self) -> u8 {
        self as u8
    }
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Unhealthy,
            2 => Mode::Hang,
            3 => Mode::Crash,
            4 => Mode::NoCni,
            _ => Mode::Healthy,
        }
    }
}

struct Shared {
    mode: AtomicU8,
    control_file: Option<PathBuf>,
}

impl Shared {
    /// The control file wins when it exists and holds a known word; otherwise the mode set by
    /// flag or HTTP holds.
    fn current(&self) -> Mode {
        if let Some(path) = &self.control_file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            match Mode::from_word(&text) {
                Some(mode) => return mode,
                None => say(&format!(
                    "control file {} holds {:?}: ignored",
                    path.display(),
                    text.trim()
                )),
            }
        }
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }
}

fn say(line: &str) {
    println!("{TAG}: {line}");
}

fn crash(reason: &str) -> ! {
    say(&format!(
        "crashing on purpose ({reason}), exit code {CRASH_EXIT_CODE}"
    ));
    std::process::exit(CRASH_EXIT_CODE);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse_from(known_flags_only(std::env::args()));
    let shared = Arc::new(Shared {
        mode: AtomicU8::new(args.mode.as_u8()),
        control_file: args.control_file.clone(),
    });
    let mode = shared.current();
    say(&format!(
        "starting in mode {mode:?} (pid {})",
        std::process::id()
    ));
    if mode == Mode::Crash {
        crash("mode crash at start");
    }
    if let Some(secs) = args.crash_after {
        if secs <= 0.0 {
            crash("--crash-after 0");
        }
        let after = Duration::from_secs_f64(secs);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            crash(&format!("--crash-after {secs}"));
        });
    }

    let (config_address, config_port) = match healthz_from_config(&args) {
        Ok(v) => v,
        Err(message) => {
            // kubelet's own wording (cmd/kubelet/app/server.go), tagged as the stand-in's.
            say(&format!("\"command failed\" err=\"{message}\""));
            std::process::exit(KUBELET_FAILURE_EXIT_CODE);
        }
    };
    let address = args
        .healthz_bind_address
        .or(config_address)
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let port = args
        .healthz_port
        .or(config_port)
        .unwrap_or(KUBELET_HEALTHZ_PORT);
    let addr = SocketAddr::new(address, port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            say(&format!("cannot listen on {addr}: {e}"));
            std::process::exit(1);
        }
    };
    say(&format!("serving /healthz on {addr}"));
    if let Some(kubeconfig) = args.kubeconfig.clone() {
        let name = args
            .hostname_override
            .clone()
            .unwrap_or_else(|| "standin-node".to_owned());
        tokio::spawn(node_status::run(kubeconfig, name, shared.clone()));
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/standin/mode/{mode}", post(set_mode))
        .with_state(shared);
    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
        terminated().await;
        say("SIGTERM or SIGINT received, exiting");
    });
    if let Err(e) = serve.await {
        say(&format!("server failed: {e}"));
        std::process::exit(1);
    }
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.current() {
        Mode::Healthy | Mode::NoCni => (StatusCode::OK, "ok".into()),
        Mode::Unhealthy => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{TAG}: unhealthy on purpose\n"),
        ),
        Mode::Hang => std::future::pending().await,
        Mode::Crash => crash("mode crash seen at /healthz"),
    }
}

async fn set_mode(
    State(shared): State<Arc<Shared>>,
    Path(word): Path<String>,
) -> (StatusCode, String) {
    let Some(mode) = Mode::from_word(&word) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{TAG}: unknown mode {word:?}\n"),
        );
    };
    say(&format!("mode set to {mode:?} over HTTP"));
    if mode == Mode::Crash {
        // Answer first would race the exit; a crash is a crash.
        crash("mode crash over HTTP");
    }
    shared.mode.store(mode.as_u8(), Ordering::Relaxed);
    (StatusCode::OK, format!("{TAG}: mode {mode:?}\n"))
}

/// The command line without the kubelet flags the stand-in does not know (`--kubeconfig=…`,
/// `--node-labels=…`, `--hostname-override=…`): they are reported and dropped, so the stand-in
/// runs with exactly the arguments the real kubelet gets.
fn known_flags_only(argv: impl Iterator<Item = String>) -> Vec<String> {
    use clap::CommandFactory;
    let cmd = Args::command();
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .chain(["--help", "--version"].map(String::from))
        .collect();
    let mut out = Vec::new();
    let mut args = argv.peekable();
    if let Some(program) = args.next() {
        out.push(program);
    }
    while let Some(arg) = args.next() {
        let name = arg.split('=').next().unwrap_or(&arg).to_string();
        if !arg.starts_with("--") || known.contains(&name) || arg == "-h" || arg == "-V" {
            out.push(arg);
            continue;
        }
        say(&format!("ignoring kubelet flag {arg}"));
        if !arg.contains('=') && args.peek().is_some_and(|next| !next.starts_with('-')) {
            args.next();
        }
    }
    out
}

/// healthzBindAddress and healthzPort from `--config` and then the `--config-dir` drop-ins.
/// Fails, as kubelet does, on a config file or drop-in that cannot be read or parsed and on a
/// drop-in directory that cannot be walked (kubelet's messages: cmd/kubelet/app/server.go
/// `loadConfigFile` and `mergeKubeletConfigurations`).
fn healthz_from_config(args: &Args) -> Result<(Option<std::net::IpAddr>, Option<u16>), String> {
    let mut values = Vec::new();
    if let Some(path) = &args.config {
        let p = path.display();
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "failed to load kubelet config file, path: {p}, error: failed to load Kubelet config file {p}, error failed to read kubelet config file \\\"{p}\\\", error: {e}"
            )
        })?;
        values.push(parse_config(&bytes).map_err(|e| {
            format!(
                "failed to load kubelet config file, path: {p}, error: failed to decode kubelet config file {p}: {e}"
            )
        })?);
    }
    if let Some(dir) = &args.config_dir {
        let d = dir.display();
        let walk = |e: std::io::Error| {
            format!(
                "failed to merge kubelet configs: failed to walk through kubelet dropin directory \\\"{d}\\\": lstat {d}: {e}"
            )
        };
        let meta = std::fs::metadata(dir).map_err(walk)?;
        if !meta.is_dir() {
            return Err(walk(std::io::Error::from_raw_os_error(20)));
        }
        let mut dropins: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(walk)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        dropins.sort();
        for f in dropins {
            let bytes = std::fs::read(&f).map_err(|e| {
                format!(
                    "failed to merge kubelet configs: failed to read kubelet drop-in config file \\\"{}\\\": {e}",
                    f.display()
                )
            })?;
            values.push(parse_config(&bytes).map_err(|e| {
                format!(
                    "failed to merge kubelet configs: failed to load kubelet dropin file, path: {}, error: {e}",
                    f.display()
                )
            })?);
        }
    }
    let (mut address, mut port) = (None, None);
    for value in values {
        if let Some(p) = value
            .get("healthzPort")
            .and_then(|v| v.as_u64())
            .and_then(|p| u16::try_from(p).ok())
        {
            port = Some(p);
        }
        if let Some(a) = value
            .get("healthzBindAddress")
            .and_then(|v| v.as_str())
            .and_then(|a| a.parse().ok())
        {
            address = Some(a);
        }
    }
    Ok((address, port))
}

/// A KubeletConfiguration document: JSON here (what hybrid-agent writes), naming its kind.
fn parse_config(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("KubeletConfiguration") {
        return Err("Object 'Kind' is missing or is not KubeletConfiguration".to_owned());
    }
    Ok(v)
}
