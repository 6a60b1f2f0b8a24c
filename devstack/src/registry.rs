//! The registry half of the ECR stand-in: Debian's `docker-registry` (distribution 2.8), started
//! on demand on 127.0.0.1 with TLS (a certificate from a CA made at start, [`crate::tls`]) and
//! htpasswd basic auth whose only user is `AWS` with the password [`crate::ecr`]'s authorization
//! tokens carry. It holds the EKS pod sandbox image (`eks/pause:3.5`, built from busybox-static:
//! a static `busybox sleep` as the sandbox's process), so a node's containerd pulls it with an
//! ECR token exactly as it would from ECR, and an anonymous pull is refused as ECR refuses it.
//!
//! A node is pointed at it through containerd's own registry host configuration
//! (`certs.d/<account>.dkr.ecr.<region>.amazonaws.com/hosts.toml`), never through anything the
//! agent's production code does. The image is laid into the registry's filesystem storage before
//! it starts (the storage layout of distribution's filesystem driver), so no push is needed.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's registry binary (package docker-registry) and the htpasswd tool (apache2-utils).
const REGISTRY_BIN: &str = "docker-registry";
const HTPASSWD_BIN: &str = "htpasswd";
/// The static busybox of busybox-static, the sandbox image's only file.
const BUSYBOX: &str = "/bin/busybox";
/// The repository and tag nodeadm's sandbox image has (internal/aws/ecr/ecr.go GetSandboxImage).
pub const PAUSE_REPOSITORY: &str = "eks/pause";
pub const PAUSE_TAG: &str = "3.5";
/// A second image no pod uses (same busybox layer, another entrypoint, so another image id):
/// what a node's image garbage collection must remove while it keeps the pause image.
pub const SPARE_REPOSITORY: &str = "hybrid-devstack/spare";
pub const SPARE_TAG: &str = "1.0";
/// How long the registry may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A running registry; dropping it stops the process.
pub struct Registry {
    pub address: SocketAddr,
    /// PEM of the CA that signed the registry's certificate (trust it to pull).
    pub ca_file: PathBuf,
    pub dir: PathBuf,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| io("write", path, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

impl Registry {
    /// Starts a registry in `dir` (created) whose user `AWS` has `password`.
    pub fn start(dir: &Path, password: &str) -> Result<Registry, String> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let issued = crate::tls::issue("hybrid-devstack registry")?;
        let ca_file = dir.join("ca.pem");
        write(&ca_file, issued.ca_pem.as_bytes())?;
        write(&dir.join("cert.pem"), issued.cert_pem.as_bytes())?;
        write(&dir.join("key.pem"), issued.key_pem.as_bytes())?;
        let out = Command::new(HTPASSWD_BIN)
            .args(["-Bbn", crate::ecr::TOKEN_USER, password])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {HTPASSWD_BIN} (Debian package apache2-utils): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{HTPASSWD_BIN} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        write(&dir.join("htpasswd"), &out.stdout)?;
        let storage = dir.join("storage");
        lay_out_images(&storage)?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("pick a port for the registry: {e}"))?
            .port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: false\nhttp:\n  addr: {address}\n  tls:\n    certificate: {dir}/cert.pem\n    key: {dir}/key.pem\nauth:\n  htpasswd:\n    realm: hybrid-devstack-ecr\n    path: {dir}/htpasswd\n",
            storage = storage.display(),
            dir = dir.display(),
        );
        let config_file = dir.join("config.yml");
        write(&config_file, config.as_bytes())?;
        let log = std::fs::File::create(dir.join("registry.log"))
            .map_err(|e| io("create", &dir.join("registry.log"), e))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_file)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("run {REGISTRY_BIN} (Debian package docker-registry): {e}"))?;
        let mut registry = Registry {
            address,
            ca_file,
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(address).is_ok() {
                return Ok(registry);
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
                return Err(format!("{REGISTRY_BIN} exited ({status}): {}", log.trim()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{REGISTRY_BIN} did not listen on {address} within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An image's blobs: manifest, config, one layer.
struct ImageBlobs {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

/// A busybox image: one layer holding `/bin/busybox`, run with `entrypoint` (the pause image
/// sleeps for ever).
fn busybox_image(entrypoint: &[&str]) -> Result<ImageBlobs, String> {
    let busybox = std::fs::read(BUSYBOX)
        .map_err(|e| format!("read {BUSYBOX} (Debian package busybox-static): {e}"))?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, "bin/", std::io::empty())
        .map_err(|e| e.to_string())?;
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    file.set_mtime(0);
    tar.append_data(&mut file, "bin/busybox", busybox.as_slice())
        .map_err(|e| e.to_string())?;
    let layer_tar = tar.into_inner().map_err(|e| e.to_string())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar).map_err(|e| e.to_string())?;
    let layer = gz.finish().map_err(|e| e.to_string())?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer_tar))] },
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len() }],
    })
    .to_string()
    .into_bytes();
    Ok(ImageBlobs {
        manifest,
        config,
        layer,
    })
}

/// Writes the pause image and the spare one into distribution's filesystem storage layout
/// under `storage`.
fn lay_out_images(storage: &Path) -> Result<(), String> {
    lay_out_image(
        storage,
        PAUSE_REPOSITORY,
        PAUSE_TAG,
        busybox_image(&["/bin/busybox", "sleep", "2147483647"])?,
    )?;
    lay_out_image(
        storage,
        SPARE_REPOSITORY,
        SPARE_TAG,
        busybox_image(&["/bin/busybox", "true"])?,
    )
}

/// Writes one image as `repository:tag`.
fn lay_out_image(
    storage: &Path,
    repository: &str,
    tag: &str,
    blobs: ImageBlobs,
) -> Result<(), String> {
    let ImageBlobs {
        manifest,
        config,
        layer,
    } = blobs;
    let v2 = storage.join("docker/registry/v2");
    let repo = v2.join("repositories").join(repository);
    let blob = |bytes: &[u8]| -> Result<String, String> {
        let hex = sha256_hex(bytes);
        write(
            &v2.join("blobs/sha256")
                .join(&hex[..2])
                .join(&hex)
                .join("data"),
            bytes,
        )?;
        Ok(hex)
    };
    let link =
        |path: PathBuf, hex: &str| write(&path.join("link"), format!("sha256:{hex}").as_bytes());
    for bytes in [&config, &layer] {
        let hex = blob(bytes)?;
        link(repo.join("_layers/sha256").join(&hex), &hex)?;
    }
    let hex = blob(&manifest)?;
    link(repo.join("_manifests/revisions/sha256").join(&hex), &hex)?;
    let tag = repo.join("_manifests/tags").join(tag);
    link(tag.join("current"), &hex)?;
    link(tag.join("index/sha256").join(&hex), &hex)?;
    Ok(())
}
