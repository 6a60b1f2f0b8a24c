//! The pod sandbox ("pause") image, pulled through containerd's CRI with ECR credentials before
//! kubelet starts, as nodeadm does (internal/containerd/sandbox.go).
//!
//! EKS's pause image lives in a private ECR repository. containerd's CRI plugin pulls it by
//! itself when the first pod starts, but anonymously: ECR refuses that, and every pod sandbox —
//! the CNI's own pods included — fails with an image-pull error. So join asks ECR for an
//! authorization token with the node's credentials and pulls the image through CRI PullImage
//! with it; containerd keeps the image (the CRI plugin pins the sandbox image against garbage
//! collection), so later sandboxes need no credentials.
//!
//! The image is the one containerd will actually use: read from `containerd config dump` (our
//! config with the user's drop-ins applied), as nodeadm reads it, so a user's `sandbox_image`
//! override is the image that gets pulled.

use std::path::Path;
use std::time::Duration;

use crate::config::{AgentConfig, Region};
use crate::cri::{AuthConfig, Client, CriError};

/// Tries at the pull, with a doubling wait from [`PULL_BACKOFF`] (nodeadm: 3 tries from 2 s).
pub const PULL_ATTEMPTS: u32 = 3;
pub const PULL_BACKOFF: Duration = Duration::from_secs(2);
/// How long one pull may take (the pause image is ~300 KB; a slow link gets time).
pub const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `containerd config dump` may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the sandbox image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("`{program} --config {config} config dump` failed: {message}")]
    Dump {
        program: String,
        config: String,
        message: String,
    },
    #[error(
        "containerd's configuration names no sandbox image (config version {version}: no {field}); set it, or remove the drop-in that clears it"
    )]
    NoImage { version: i64, field: &'static str },
    #[error("containerd config version {0} is not supported (2 and newer are)")]
    Version(i64),
    #[error(
        "ecr:GetAuthorizationToken failed: {message}; the node's role needs ecr:GetAuthorizationToken and pull access to the EKS images (attach the AWS managed policy AmazonEC2ContainerRegistryPullOnly to it)"
    )]
    Token { message: String },
    #[error(transparent)]
    Cloud(#[from] super::cloud::CloudError),
    #[error(
        "pulling the pod sandbox image {image} through containerd failed after {attempts} tries: {source}; without it no pod can start. Check that the node reaches the registry (proxy settings) and that its role may pull from it (AmazonEC2ContainerRegistryPullOnly)"
    )]
    Pull {
        image: String,
        attempts: u32,
        #[source]
        source: CriError,
    },
}

/// The sandbox image of the effective containerd configuration (`containerd config dump`
/// output): `sandbox_image` of the CRI plugin in config version 2, the `sandbox` pinned image
/// in version 3 and newer (containerd 2.x).
pub fn image_from_dump(dump: &str) -> Result<String, SandboxError> {
    let table: toml::Table = dump
        .parse()
        .map_err(|e: toml::de::Error| SandboxError::Dump {
            program: "containerd".to_owned(),
            config: String::new(),
            message: format!("its output is not TOML: {e}"),
        })?;
    // containerd treats a config without `version` as version 1, which it no longer supports.
    let version = table
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    let plugins = table.get("plugins").and_then(toml::Value::as_table);
    let (image, field) = match version {
        2 => (
            plugins
                .and_then(|p| p.get("io.containerd.grpc.v1.cri"))
                .and_then(|c| c.get("sandbox_image")),
            "plugins.\"io.containerd.grpc.v1.cri\".sandbox_image",
        ),
        v if v >= 3 => (
            plugins
                .and_then(|p| p.get("io.containerd.cri.v1.images"))
                .and_then(|c| c.get("pinned_images"))
                .and_then(|p| p.get("sandbox")),
            "plugins.\"io.containerd.cri.v1.images\".pinned_images.sandbox",
        ),
        v => return Err(SandboxError::Version(v)),
    };
    match image.and_then(toml::Value::as_str) {
        Some(i) if !i.trim().is_empty() => Ok(i.trim().to_owned()),
        _ => Err(SandboxError::NoImage { version, field }),
    }
}

/// Runs `containerd --config CONFIG config dump` and reads the sandbox image from it.
pub async fn configured_image(program: &Path, config: &Path) -> Result<String, SandboxError> {
    let dump_err = |message: String| SandboxError::Dump {
        program: program.display().to_string(),
        config: config.display().to_string(),
        message,
    };
    let out = tokio::time::timeout(
        DUMP_TIMEOUT,
        tokio::process::Command::new(program)
            .arg("--config")
            .arg(config)
            .args(["config", "dump"])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| dump_err(format!("no answer within {DUMP_TIMEOUT:?}")))?
    .map_err(|e| dump_err(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(dump_err(format!(
            "{}: {}",
            out.status,
            stderr.trim().lines().last().unwrap_or("")
        )));
    }
    image_from_dump(&String::from_utf8_lossy(&out.stdout)).map_err(|e| match e {
        SandboxError::Dump { message, .. } => dump_err(message),
        other => other,
    })
}

/// An ECR authorization token (`base64("AWS:<password>")`) for the node's credentials.
pub async fn ecr_token(agent: &AgentConfig, region: &Region) -> Result<String, SandboxError> {
    let client = super::cloud::ecr(agent, region)?;
    let out = client
        .get_authorization_token()
        .send()
        .await
        .map_err(|e| SandboxError::Token {
            message: aws_sdk_ecr::error::DisplayErrorContext(&e).to_string(),
        })?;
    out.authorization_data()
        .first()
        .and_then(|d| d.authorization_token())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| SandboxError::Token {
            message: "the answer held no authorization token".to_owned(),
        })
}

/// Pulls `image` through the CRI at `socket` with `token`, retrying as nodeadm does. Returns
/// the image reference containerd stored.
pub async fn pull(socket: &Path, image: &str, token: &str) -> Result<String, SandboxError> {
    let auth = AuthConfig {
        auth: token.to_owned(),
        ..Default::default()
    };
    let mut last = None;
    for attempt in 1..=PULL_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(PULL_BACKOFF * 2u32.pow(attempt - 2)).await;
        }
        let result = async {
            let client = Client::connect(socket).await?;
            client
                .pull_image(image, Some(auth.clone()), PULL_TIMEOUT)
                .await
        }
        .await;
        match result {
            Ok(reference) => return Ok(reference),
            Err(e) => {
                tracing::warn!(image, attempt, "pulling the sandbox image failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(SandboxError::Pull {
        image: image.to_owned(),
        attempts: PULL_ATTEMPTS,
        source: last.unwrap_or(CriError::Timeout {
            socket: socket.to_path_buf(),
            method: "PullImage",
            timeout: PULL_TIMEOUT,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_from_v2_and_v3_dumps() {
        let v2 = "version = 2\n[plugins]\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5\"\n";
        assert_eq!(
            image_from_dump(v2).ok().as_deref(),
            Some("602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5")
        );
        let v3 = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\nsandbox = \"r/p:1\"\n";
        assert_eq!(image_from_dump(v3).ok().as_deref(), Some("r/p:1"));
        let v4 = v3.replace("version = 3", "version = 4");
        assert_eq!(image_from_dump(&v4).ok().as_deref(), Some("r/p:1"));
        assert!(matches!(
            image_from_dump("version = 2\n"),
            Err(SandboxError::NoImage { version: 2, .. })
        ));
        assert!(matches!(
            image_from_dump("root = \"/x\"\n"),
            Err(SandboxError::Version(1))
        ));
    }
}
