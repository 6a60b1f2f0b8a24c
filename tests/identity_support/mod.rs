//! Shared harness of the identity tests: a devstack, a host (a `--root` directory the real
//! `hybrid-agent` binary runs against), both credential providers, and readers of what the agent
//! leaves on disk. Every helper drives public interfaces: the CLI, the files, the devstack's
//! wire APIs and control endpoint.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hybrid_agent::identity::credfile::{self, ProfileValues};
use hybrid_agent::identity::store::{CredentialsState, IdentityStore};

#[path = "../shared_support/mod.rs"]
mod shared;

pub const REGION: &str = "us-west-2";
pub const CLUSTER: &str = "identity-test";
pub const AGENT: &str = env!("CARGO_BIN_EXE_hybrid-agent");
/// Host path of the shared credentials file (nodeadm default).
pub const CREDENTIALS: &str = "root/.aws/credentials";

pub fn devstack(token_lifetime: Duration) -> hybrid_devstack::Devstack {
    hybrid_devstack::Devstack::spawn(hybrid_devstack::Config {
        token_lifetime,
        ..Default::default()
    })
    .expect("devstack starts")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An SSM activation created through aws-sdk-ssm as an operator would.
pub struct Activation {
    pub id: String,
    pub code: String,
}

/// SDK config signed with the devstack's admin key: an operator's own tooling.
pub fn admin_sdk(ds: &hybrid_devstack::Devstack) -> aws_config::SdkConfig {
    shared::admin_sdk_config(ds, REGION)
}

pub fn create_activation(
    ds: &hybrid_devstack::Devstack,
    limit: i32,
    expires_in: Duration,
) -> Activation {
    runtime().block_on(async {
        let ssm = aws_sdk_ssm::Client::new(&admin_sdk(ds));
        let out = ssm
            .create_activation()
            .iam_role("AmazonEKSHybridNodesRole")
            .registration_limit(limit)
            .expiration_date(aws_sdk_ssm::primitives::DateTime::from(
                SystemTime::now() + expires_in,
            ))
            .send()
            .await
            .expect("CreateActivation");
        Activation {
            id: out.activation_id().expect("id").to_string(),
            code: out.activation_code().expect("code").to_string(),
        }
    })
}

/// Which provider a host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Ssm,
    /// IAM Roles Anywhere with an RSA or ECDSA leaf, optionally behind an intermediate CA.
    IamRa {
        rsa: bool,
        intermediate: bool,
    },
}

/// A machine: a `--root` directory plus the agent's environment.
pub struct Host {
    pub root: tempfile::TempDir,
    /// Outside the root: files an operator types on the command line (activation code).
    pub scratch: tempfile::TempDir,
    pub endpoint: String,
    /// Every stdout/stderr the agent produced on this host, for the secret grep.
    pub outputs: std::sync::Mutex<Vec<String>>,
    /// Secrets that must never appear in output.
    pub secrets: std::sync::Mutex<Vec<String>>,
}

impl Host {
    pub fn new(ds: &hybrid_devstack::Devstack) -> Host {
        let host = Host {
            root: tempfile::tempdir().expect("root"),
            scratch: tempfile::tempdir().expect("scratch"),
            endpoint: ds.url.clone(),
            outputs: Default::default(),
            secrets: Default::default(),
        };
        // One machine, not a fleet: the daemon's first calls are not spread over the default
        // 30 s (daemon.startup_jitter), so the tests see them at once.
        host.agent_config("");
        host
    }

    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.path().join(host_path.trim_start_matches('/'))
    }

    pub fn store(&self) -> IdentityStore {
        IdentityStore::new(&self.path("var/lib/hybrid-agent"))
    }

    /// Writes `/etc/hybrid-agent/config.toml`: `toml` after the `[daemon]` section every host
    /// has (no start-up spread).
    pub fn agent_config(&self, toml: &str) {
        let p = self.path("etc/hybrid-agent/config.toml");
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, format!("[daemon]\nstartup_jitter = \"0s\"\n\n{toml}"))
            .expect("write config");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(AGENT);
        c.arg("--root")
            .arg(self.root.path())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("AWS_ENDPOINT_URL", &self.endpoint);
        c
    }

    /// Runs the agent to completion and records its output.
    pub fn agent(&self, args: &[&str]) -> Output {
        self.agent_with(self.command(args))
    }

    pub fn agent_with(&self, mut c: Command) -> Output {
        let out = c.output().expect("run hybrid-agent");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.outputs.lock().expect("lock").push(text);
        out
    }

    pub fn remember_secret(&self, s: &str) {
        self.secrets.lock().expect("lock").push(s.to_string());
    }

    /// `join` with the identity phase only, for either provider. Returns the output.
    pub fn join(
        &self,
        ds: &hybrid_devstack::Devstack,
        provider: Provider,
        extra: &[&str],
    ) -> Output {
        match provider {
            Provider::Ssm => {
                let a = create_activation(ds, 1, Duration::from_secs(3600));
                self.join_ssm(&a, extra)
            }
            Provider::IamRa { rsa, intermediate } => {
                let issued = issue_certificate(ds, rsa, intermediate, None);
                self.install_certificate(&issued);
                self.join_iam_ra(&issued, extra)
            }
        }
    }

    pub fn join_ssm(&self, a: &Activation, extra: &[&str]) -> Output {
        let code_file = self.scratch.path().join("activation-code");
        std::fs::write(&code_file, &a.code).expect("code file");
        self.remember_secret(&a.code);
        self.join_identity(
            &[
                "--activation-id",
                &a.id,
                "--activation-code-file",
                code_file.to_str().expect("utf8"),
            ],
            extra,
        )
    }

    pub fn install_certificate(&self, issued: &Issued) {
        let pki = self.path("etc/iam/pki");
        std::fs::create_dir_all(&pki).expect("mkdir pki");
        std::fs::write(pki.join("server.pem"), &issued.certificate_pem).expect("cert");
        std::fs::write(pki.join("server.key"), &issued.private_key_pem).expect("key");
        for line in issued
            .private_key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
        {
            self.remember_secret(line);
        }
    }

    pub fn join_iam_ra(&self, issued: &Issued, extra: &[&str]) -> Output {
        // Paths typed on the command line are taken as given (not re-rooted), as a user's shell
        // would see them.
        let cert = self.path("etc/iam/pki/server.pem").display().to_string();
        let key = self.path("etc/iam/pki/server.key").display().to_string();
        self.join_identity(
            &[
                "--node-name",
                "edge-node-1",
                "--trust-anchor-arn",
                &issued.trust_anchor_arn,
                "--profile-arn",
                &issued.profile_arn,
                "--role-arn",
                &issued.role_arn,
                "--certificate-path",
                &cert,
                "--private-key-path",
                &key,
            ],
            extra,
        )
    }

    /// `join` of the identity phase only (no install, render or start) with the provider's
    /// flags, then `extra`; the credentials it wrote join the never-printed list.
    fn join_identity(&self, provider_flags: &[&str], extra: &[&str]) -> Output {
        let mut args = vec!["join", "--cluster", CLUSTER, "--region", REGION];
        args.extend_from_slice(provider_flags);
        args.extend_from_slice(&["--skip", "install,render,start"]);
        args.extend_from_slice(extra);
        let out = self.agent(&args);
        self.remember_credentials();
        out
    }

    /// Adds the current secret key and session token to the never-printed list.
    pub fn remember_credentials(&self) {
        if let Some(v) = self.credentials() {
            self.remember_secret(v.secret_access_key.expose());
            if let Some(t) = &v.session_token {
                self.remember_secret(t.expose());
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.store().key_path()) {
            for line in text.lines().filter(|l| !l.starts_with("-----")) {
                self.remember_secret(line);
            }
        }
    }

    /// The `default` profile of the shared credentials file.
    pub fn credentials(&self) -> Option<ProfileValues> {
        credfile::read_profile_file(&self.path(CREDENTIALS), "default")
            .ok()
            .flatten()
    }

    pub fn credentials_state(&self) -> Option<CredentialsState> {
        self.store().load_credentials_state().ok().flatten()
    }

    /// Starts `hybrid-agent run` with output to files under scratch.
    pub fn spawn_daemon(&self) -> Daemon {
        let n = std::fs::read_dir(self.scratch.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = self.scratch.path().join(format!("daemon-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("clone");
        let child = self
            .command(&["run"])
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn run");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// Asserts no remembered secret appears in any output or daemon log.
    pub fn assert_no_secret_in_output(&self, extra_logs: &[&Daemon]) {
        let mut texts = self.outputs.lock().expect("lock").clone();
        for d in extra_logs {
            texts.push(d.log());
        }
        let secrets = self.secrets.lock().expect("lock").clone();
        assert!(
            !secrets.is_empty(),
            "no secrets were recorded: the check would be vacuous"
        );
        for s in secrets.iter().filter(|s| s.len() >= 16) {
            for t in &texts {
                assert!(
                    !t.contains(s.as_str()),
                    "a secret ({}…) appears in agent output:\n{t}",
                    &s[..6]
                );
            }
        }
    }
}

/// A running `hybrid-agent run`; killed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("wait")
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificate material from the devstack's test CA.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Issued {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub serial: String,
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
}

pub fn issue_certificate(
    ds: &hybrid_devstack::Devstack,
    rsa: bool,
    intermediate: bool,
    valid_secs: Option<i64>,
) -> Issued {
    let body = serde_json::json!({
        "key_type": if rsa { "rsa" } else { "ecdsa" },
        "common_name": "edge-node-1",
        "intermediate": intermediate,
        "valid_secs": valid_secs,
    });
    control(ds, "POST", "rolesanywhere/issue", Some(body)).expect("issue certificate")
}

/// A call to the devstack control endpoint.
pub fn control<T: serde::de::DeserializeOwned>(
    ds: &hybrid_devstack::Devstack,
    method: &str,
    op: &str,
    body: Option<serde_json::Value>,
) -> Result<T, String> {
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let url = format!("{}/_devstack/{op}", ds.url);
        let mut req = match method {
            "PUT" => c.put(url),
            "GET" => c.get(url),
            "DELETE" => c.delete(url),
            _ => c.post(url),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    })
}

pub fn set_faults(ds: &hybrid_devstack::Devstack, doc: serde_json::Value) {
    let _: serde_json::Value = control(ds, "PUT", "faults", Some(doc)).expect("set faults");
}

pub fn calls(ds: &hybrid_devstack::Devstack, key: &str) -> u64 {
    ds.state.call_count(
        key.split('/').next().unwrap_or(""),
        key.split('/').nth(1).unwrap_or(""),
    )
}

/// GetCallerIdentity through aws-sdk-sts with credentials from the profile file: what any tool
/// reading the shared credentials file does. Returns the caller ARN.
// aws-config re-exports the profile-file types under deprecated aliases; the replacement lives
// in aws-runtime, which is not worth a direct dependency for one test helper.
#[allow(deprecated)]
pub fn sts_with_file(
    ds: &hybrid_devstack::Devstack,
    file: &Path,
    profile: &str,
) -> Result<String, String> {
    runtime().block_on(async {
        use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
        let files = ProfileFiles::builder()
            .with_file(ProfileFileKind::Credentials, file)
            .build();
        let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name(profile)
            .build();
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&ds.url)
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(provider),
            )
            .build();
        let sts = aws_sdk_sts::Client::new(&config);
        sts.get_caller_identity()
            .send()
            .await
            .map(|o| o.arn().unwrap_or_default().to_string())
            .map_err(|e| format!("{}", aws_sdk_sts::error::DisplayErrorContext(&e)))
    })
}

/// Polls `f` every 100 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir`, relative.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
            }
        }
    }
    out
}
