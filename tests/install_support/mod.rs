//! Shared pieces of the install, node and join tests: a mirror directory laid out like
//! hybrid-assets.eks.amazonaws.com with generated artifacts, a devstack serving it, and a
//! fingerprint of a whole directory tree (every path, its mode and content) to prove that a
//! failed or undone operation left a `--root` sandbox exactly as it was.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use hybrid_agent::install::checksum::Sha256;

#[path = "../shared_support/mod.rs"]
mod shared;
// Not every test binary that includes this harness uses both.
#[allow(unused_imports)]
pub use shared::{free_port, standin_binary};

/// The release the fixture mirror serves.
pub const VERSION: &str = "1.31.2";
/// A second release, for upgrades.
pub const NEXT_VERSION: &str = "1.32.0";
pub const ARCH: &str = "amd64";
/// CNI plugin names put in the fixture tarball.
pub const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

/// Deterministic pseudo-random bytes (xorshift64*): incompressible enough to look like a
/// binary, reproducible so a failure can be replayed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzip tarball of `(name, bytes, mode)` entries under `prefix`.
pub fn tgz(entries: &[(&str, Vec<u8>, u32)], prefix: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, bytes, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("{prefix}{name}"), bytes.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Writes `bytes` to `path` with `mode`, creating the parent directories.
pub fn put(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What to put in a fixture release.
pub struct ReleaseSpec {
    pub version: &'static str,
    /// kubelet's bytes (random data, or the stand-in's executable).
    pub kubelet: Vec<u8>,
    /// Size of the random aws-iam-authenticator.
    pub authenticator_len: usize,
    /// Include a containerd tarball (`bin/containerd`, `bin/ctr`) with these bytes.
    pub containerd: Option<Vec<u8>>,
}

impl ReleaseSpec {
    /// A release of random artifacts: kubelet `kubelet_len` bytes, authenticator 1 MiB, CNI
    /// plugins of 512 KiB each, kubectl 1 MiB.
    pub fn random(version: &'static str, kubelet_len: usize) -> Self {
        Self {
            version,
            kubelet: noise(kubelet_len, 1),
            authenticator_len: 1 << 20,
            containerd: None,
        }
    }
}

/// Lays out `<mirror>/<version>/amd64/{kubelet,kubectl,aws-iam-authenticator,cni-plugins[,containerd]}`.
pub fn write_release(mirror: &Path, spec: &ReleaseSpec) {
    let dir = mirror.join(spec.version).join(ARCH);
    put(&dir.join("kubelet"), &spec.kubelet, 0o755);
    put(&dir.join("kubectl"), &noise(1 << 20, 2), 0o755);
    put(
        &dir.join("aws-iam-authenticator"),
        &noise(spec.authenticator_len, 3),
        0o755,
    );
    let plugins: Vec<(&str, Vec<u8>, u32)> = CNI_PLUGINS
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, noise(512 << 10, 10 + i as u64), 0o755))
        .collect();
    let mut with_licence = plugins.clone();
    with_licence.push(("LICENSE", b"Apache-2.0\n".to_vec(), 0o644));
    put(&dir.join("cni-plugins"), &tgz(&with_licence, "./"), 0o644);
    if let Some(bin) = &spec.containerd {
        let entries = vec![
            ("containerd", bin.clone(), 0o755),
            ("ctr", noise(64 << 10, 20), 0o755),
        ];
        put(&dir.join("containerd"), &tgz(&entries, "bin/"), 0o644);
    }
}

/// The SHA-256 of a mirror file.
pub fn mirror_sum(mirror: &Path, rel: &str) -> Sha256 {
    Sha256::of_file(&mirror.join(rel)).unwrap()
}

/// Every path under `root` with its type, mode and content digest, relative to `root`. Paths
/// starting with any of `skip` (relative, e.g. `var/log`) are left out with everything below.
pub fn fingerprint(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip
            .iter()
            .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
        {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.insert(rel, format!("dir {mode:04o}"));
            walk(root, &path, skip, out);
        } else if ft.is_symlink() {
            out.insert(
                rel,
                format!("link -> {}", std::fs::read_link(&path).unwrap().display()),
            );
        } else if ft.is_file() {
            let sum = Sha256::of_file(&path)
                .map(|s| s.to_hex())
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            out.insert(rel, format!("file {mode:04o} {sum}"));
        } else {
            out.insert(rel, format!("special {mode:04o}"));
        }
    }
}

/// A readable diff of two fingerprints, for assertion messages.
pub fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let mut lines = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => lines.push(format!("- {k} ({v})")),
            Some(w) if w != v => lines.push(format!("~ {k}: {v} -> {w}")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            lines.push(format!("+ {k} ({v})"));
        }
    }
    lines.join("\n")
}

/// A devstack serving `mirror`, in-process.
pub fn devstack(mirror: &Path) -> hybrid_devstack::Devstack {
    hybrid_devstack::Devstack::spawn(hybrid_devstack::Config {
        mirror_dir: Some(mirror.to_path_buf()),
        ..Default::default()
    })
    .expect("devstack starts")
}

/// Starts the demo cluster's stand-in API server; the devstack's answer (it names the server's
/// `https://127.0.0.1:` address).
pub fn start_kube_api(ds: &hybrid_devstack::Devstack) -> String {
    control(
        ds,
        "POST",
        &format!("/_devstack/eks/kube-api?name={CLUSTER}"),
    )
}

/// A devstack serving `mirror` whose demo cluster's stand-in API server runs: evicted pods take
/// `grace_ms` to terminate and their replacements `replace_ms` to become Ready on another node.
pub fn kube_devstack(mirror: &Path, grace_ms: u64, replace_ms: u64) -> hybrid_devstack::Devstack {
    let ds = devstack(mirror);
    start_kube_api(&ds);
    control(
        &ds,
        "POST",
        &format!(
            "/_devstack/eks/kube-timing?name={CLUSTER}&grace_ms={grace_ms}&replace_ms={replace_ms}&replace_node=mi-0000000000other"
        ),
    );
    ds
}

/// What a cluster administrator does once for the automatic lifecycle: applies the shipped
/// manifest (`hybrid-agent rbac`: the disruption lock and its RBAC).
pub fn apply_lifecycle_rbac(ds: &hybrid_devstack::Devstack) {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/rbac/hybrid-agent-lifecycle.yaml"),
    )
    .unwrap();
    control_body(
        ds,
        "POST",
        &format!("/_devstack/eks/kube-apply?name={CLUSTER}"),
        &manifest,
    );
}

/// A running, Ready pod `app/<name>` labelled `app=<app>`, owned by the ReplicaSet `<app>-rs`
/// and bound to `node`.
pub fn replicaset_pod(ds: &hybrid_devstack::Devstack, app: &str, name: &str, node: &str) {
    let owner_uid = format!(
        "8f0c1b2a-0000-4000-8000-{:0>12}",
        app.bytes()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    control_body(
        ds,
        "POST",
        &format!("/_devstack/eks/kube-pods?name={CLUSTER}"),
        &serde_json::json!({
            "metadata": {"namespace": "app", "name": name, "labels": {"app": app},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-rs"),
                    "uid": owner_uid, "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        })
        .to_string(),
    );
}

/// The generated manifest URL of a devstack.
pub fn manifest_url(ds: &hybrid_devstack::Devstack) -> String {
    format!("{}/mirror/manifest.yaml", ds.url)
}

/// A control call to the devstack (`POST /_devstack/mirror/corrupt?...`), with a plain TCP
/// client so the tests do not need an HTTP client crate of their own.
pub fn control(ds: &hybrid_devstack::Devstack, method: &str, path_and_query: &str) -> String {
    control_body(ds, method, path_and_query, "")
}

/// [`control`] with a JSON body (`PUT /_devstack/faults`).
pub fn control_body(
    ds: &hybrid_devstack::Devstack,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(ds.addr).unwrap();
    write!(
        s,
        "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ds.addr,
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 2"),
        "{method} {path_and_query}: {resp}"
    );
    resp
}

/// The JSON body of a [`control`] answer.
pub fn control_json(resp: &str) -> serde_json::Value {
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap()
}

/// The stand-in API server's history of what happened in the cluster (`kube-history`).
pub fn kube_history(ds: &hybrid_devstack::Devstack) -> Vec<serde_json::Value> {
    control_json(&control(
        ds,
        "GET",
        &format!("/_devstack/eks/kube-history?name={CLUSTER}"),
    ))["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `seq` numbers of the stand-in history's events with this action on this object
/// (`kube_history`).
pub fn seq_of(events: &[serde_json::Value], action: &str, object: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["action"] == action && e["object"] == object)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// Polls `done` every 200 ms until it holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Simulates a distribution containerd in the sandbox: `/usr/bin/containerd` owned by the
/// `containerd` dpkg package. `bin` is a hard link to the host's real binary when one exists
/// (cheap, and it runs), else a small file.
pub fn distro_containerd(root: &Path) {
    let bin = root.join("usr/bin/containerd");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    if std::fs::hard_link("/usr/bin/containerd", &bin).is_err() {
        put(&bin, b"#!/bin/sh\nexit 0\n", 0o755);
    }
    put(
        &root.join("var/lib/dpkg/info/containerd.list"),
        b"/usr/bin/containerd\n",
        0o644,
    );
}

/// The ECR registry of the EKS images in us-west-2 (REGION), as nodeadm computes it
/// (internal/aws/ecr/ecr.go: account 602401143452 in the commercial regions).
pub const EKS_ECR_REGISTRY: &str = "602401143452.dkr.ecr.us-west-2.amazonaws.com";

/// The devstack's registry (started on first use): `(address, CA file)`.
pub fn devstack_registry(ds: &hybrid_devstack::Devstack) -> (String, String) {
    let resp = control(ds, "GET", "/_devstack/ecr/registry");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).expect("registry JSON");
    (
        v["address"].as_str().unwrap().to_owned(),
        v["ca_file"].as_str().unwrap().to_owned(),
    )
}

/// Points the sandbox's containerd at the devstack's registry (a real docker-registry with
/// htpasswd auth holding `eks/pause:3.5`) for `registry` through containerd's own registry host
/// configuration (`certs.d/<registry>/hosts.toml` under the rendered `config_path`): join's
/// pre-pull of the sandbox image then really pulls, with the ECR token the devstack issues. The
/// agent's code knows nothing of this; it is what an operator's registry mirror looks like.
pub fn ecr_registry_hosts(ds: &hybrid_devstack::Devstack, root: &Path, registry: &str) {
    let (address, ca_file) = devstack_registry(ds);
    put(
        &root.join(format!("etc/containerd/certs.d/{registry}/hosts.toml")),
        format!(
            "# Test seam: the devstack's registry stands in for {registry}.\nserver = \"https://{address}\"\n\n[host.\"https://{address}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca_file}\"\n"
        )
        .as_bytes(),
        0o644,
    );
}

/// Replaces the release's CNI plugin tarball with Debian's real plugins
/// (containernetworking-plugins: bridge, host-local, loopback from /usr/lib/cni).
pub fn real_cni_plugins(mirror: &Path, version: &str) {
    let entries: Vec<(&str, Vec<u8>, u32)> = CNI_PLUGINS
        .iter()
        .map(|n| {
            let path = format!("/usr/lib/cni/{n}");
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{path}: {e} (scripts/setup installs containernetworking-plugins)")
            });
            (*n, bytes, 0o755)
        })
        .collect();
    put(
        &mirror.join(version).join(ARCH).join("cni-plugins"),
        &tgz(&entries, "./"),
        0o644,
    );
}

// ---------------------------------------------------------------------------------------------
// join / leave / upgrade against the devstack, through the real binary

pub const AGENT: &str = env!("CARGO_BIN_EXE_hybrid-agent");
pub const REGION: &str = "us-west-2";
/// The cluster every devstack starts with (ACTIVE, Kubernetes 1.31, a real CA).
pub const CLUSTER: &str = "hybrid-demo";

/// A mirror whose kubelet is the stand-in (a STAND-IN for kubelet, not kubelet) for `version`.
pub fn standin_release(mirror: &Path, version: &'static str) {
    let kubelet = std::fs::read(standin_binary()).unwrap();
    write_release(
        mirror,
        &ReleaseSpec {
            version,
            kubelet,
            authenticator_len: 256 << 10,
            containerd: None,
        },
    );
}

/// A release whose "kubelet" starts the stand-in in its unhealthy mode: it runs, but /healthz
/// answers 500 forever.
pub fn unhealthy_release(mirror: &Path, version: &'static str) {
    standin_mode_release(mirror, version, "unhealthy");
}

/// A release whose "kubelet" starts the stand-in with `--mode MODE` (a STAND-IN, not kubelet).
pub fn standin_mode_release(mirror: &Path, version: &'static str, mode: &str) {
    let script = format!(
        "#!/bin/sh\nexec {} --mode {mode} \"$@\"\n",
        standin_binary().display()
    );
    write_release(
        mirror,
        &ReleaseSpec {
            version,
            kubelet: script.into_bytes(),
            authenticator_len: 256 << 10,
            containerd: None,
        },
    );
}

/// Replaces the release's aws-iam-authenticator with a STAND-IN that runs `hybrid-agent token`
/// for the sandbox `root` (the same exec credential), so the stand-in kubelet can register.
pub fn standin_authenticator(mirror: &Path, version: &str, root: &Path) {
    let script = format!(
        "#!/bin/sh\n# STAND-IN for aws-iam-authenticator: hybrid-agent makes the same token.\nexec {AGENT} --root {} \"$@\"\n",
        root.display()
    );
    put(
        &mirror
            .join(version)
            .join(ARCH)
            .join("aws-iam-authenticator"),
        script.as_bytes(),
        0o755,
    );
}

/// An SSM activation created through aws-sdk-ssm with the devstack's admin credentials.
pub fn create_activation(ds: &hybrid_devstack::Devstack) -> (String, String) {
    ssm_admin(ds, |ssm| async move {
        let out = ssm
            .create_activation()
            .iam_role("AmazonEKSHybridNodesRole")
            .registration_limit(5)
            .send()
            .await
            .expect("CreateActivation");
        (
            out.activation_id().unwrap().to_owned(),
            out.activation_code().unwrap().to_owned(),
        )
    })
}

/// Managed instances the devstack knows (DescribeInstanceInformation).
pub fn managed_instances(ds: &hybrid_devstack::Devstack) -> Vec<String> {
    ssm_admin(ds, |ssm| async move {
        let out = ssm
            .describe_instance_information()
            .send()
            .await
            .expect("DescribeInstanceInformation");
        out.instance_information_list()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect()
    })
}

fn ssm_admin<T, F, Fut>(ds: &hybrid_devstack::Devstack, f: F) -> T
where
    F: FnOnce(aws_sdk_ssm::Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        f(aws_sdk_ssm::Client::new(&shared::admin_sdk_config(
            ds, REGION,
        )))
        .await
    })
}

/// A background `hybrid-agent run`, SIGKILLed and reaped on drop if still running.
pub struct Daemon(pub std::process::Child);

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one run of the agent printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to the end.
    pub fn of(mut cmd: Command) -> Run {
        let out = cmd.output().expect("run hybrid-agent");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A machine: a `--root` sandbox (short path: containerd's socket must fit in 108 bytes), the
/// NodeConfig a user would write, and the agent binary pointed at the devstack. Dropping it
/// kills whatever the agent started in the sandbox.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub endpoint: String,
    pub healthz_port: u16,
    pub nodeconfig: PathBuf,
}

impl Node {
    /// A sandbox with a distribution containerd, the built-in supervisor, and a NodeConfig for
    /// `activation` whose kubelet serves /healthz on a port of its own.
    pub fn new(ds: &hybrid_devstack::Devstack, activation: &(String, String)) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("ha")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir(&root).unwrap();
        distro_containerd(&root);
        ecr_registry_hosts(ds, &root, EKS_ECR_REGISTRY);
        let agent_config = root.join("etc/hybrid-agent/config.toml");
        put(
            &agent_config,
            b"[supervisor]\nbackend = \"process\"\n",
            0o644,
        );
        let healthz_port = free_port();
        let nodeconfig = dir.path().join("nodeconfig.yaml");
        std::fs::write(
            &nodeconfig,
            format!(
                "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: {CLUSTER}\n    region: {REGION}\n  kubelet:\n    config:\n      healthzPort: {healthz_port}\n  hybrid:\n    ssm:\n      activationId: {}\n      activationCode: {}\n",
                activation.0, activation.1
            ),
        )
        .unwrap();
        Node {
            dir,
            root,
            endpoint: ds.url.clone(),
            healthz_port,
            nodeconfig,
        }
    }

    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// The agent with `args` against this sandbox and the devstack, in a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(AGENT);
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &self.endpoint);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(self.command(args))
    }

    /// `hybrid-agent run` in the background, its output appended to `log`; killed when the
    /// guard drops (a failing test must not leave a daemon behind).
    pub fn spawn_daemon(&self, log: &Path) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Daemon(
            self.command(&["run"])
                .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
                .stderr(std::process::Stdio::from(file))
                .spawn()
                .expect("spawn hybrid-agent run"),
        )
    }

    /// `join` with this node's NodeConfig, the devstack mirror (plain HTTP on loopback) and
    /// `extra` flags.
    pub fn join(&self, ds: &hybrid_devstack::Devstack, extra: &[&str]) -> Run {
        Run::of(self.join_command(ds, extra))
    }

    /// [`Node::join`] as a command not yet started, for a test that drives the process itself
    /// (to kill it half-way).
    pub fn join_command(&self, ds: &hybrid_devstack::Devstack, extra: &[&str]) -> Command {
        let source = format!("file://{}", self.nodeconfig.display());
        let mirror = format!("{}/mirror/", ds.url);
        let mut args = vec![
            "join",
            "--config-source",
            &source,
            "--mirror",
            &mirror,
            "--allow-insecure-mirror",
        ];
        if !extra.contains(&"--wait-timeout") {
            args.extend_from_slice(&["--wait-timeout", "60s"]);
        }
        args.extend_from_slice(extra);
        self.command(&args)
    }

    /// The sandbox fingerprint, leaving out `skip` (relative paths).
    pub fn fingerprint(&self, skip: &[&str]) -> BTreeMap<String, String> {
        fingerprint(&self.root, skip)
    }

    pub fn kubelet_healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.healthz_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.starts_with("HTTP/1.1 200")
    }

    /// Pids of processes the agent supervises for this sandbox (found by the environment
    /// marker the built-in backend puts on its children).
    pub fn supervised_pids(&self) -> Vec<u32> {
        let marker_suffix = format!("@{}", self.path("/var/lib/hybrid-agent").display());
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let hit = env.split(|b| *b == 0).any(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.starts_with("HYBRID_AGENT_SUPERVISED=") && kv.ends_with(&marker_suffix)
            });
            if hit {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pid in self.supervised_pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Polls `f` every 200 ms until it returns `Some`; after `limit`, panics with `what`, the
/// sandbox's `status` and the daemon's log at `log` (containerd's chatter left out).
pub fn wait_logged<T>(
    root: &Path,
    what: &str,
    limit: std::time::Duration,
    log: &Path,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let text: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("component=containerd"))
                .collect();
            let status = Command::new(AGENT)
                .arg("--root")
                .arg(root)
                .arg("status")
                .output()
                .unwrap();
            panic!(
                "timed out after {limit:?} waiting for {what}; status:\n{}\ndaemon log:\n{}",
                String::from_utf8_lossy(&status.stdout),
                text.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
