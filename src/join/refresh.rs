//! containerd and kubelet brought back from clean state: the middle of a node refresh
//! (`[lifecycle] max_node_age`, [`crate::daemon::lifecycle`]), run after the drain.
//!
//! EKS Auto Mode replaces a node after at most 21 days; a hybrid node is a machine that stays,
//! so what ages on it is cleaned instead:
//! 1. kubelet is stopped, so nothing starts pods or pulls images while the state is cleaned;
//! 2. every image no container uses is removed through the CRI (`ListContainers`, `ListImages`,
//!    `RemoveImage`), except pinned ones and the pod sandbox image containerd is configured
//!    with (containerd 1.6, Debian 12's, does not pin it; a node without it cannot start pods
//!    until it pulls it again with ECR credentials). That is kubelet's own image garbage
//!    collection taken to its end, as a new node starts with no images;
//! 3. every pod directory under `/var/lib/kubelet/pods` whose pod has no sandbox in containerd
//!    any more is removed, through [`crate::node::mounts::remove_tree`]: one with anything
//!    mounted beneath it is kept and named (a volume kubelet never unmounted holds data, and
//!    only kubelet knows how to unmount it); DaemonSet pods keep theirs;
//! 4. containerd is restarted and kubelet started again, each waited for on its health probe.
//!
//! Each step is idempotent, so a refresh interrupted anywhere runs this again from the start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::AgentConfig;
use crate::cri::Client;
use crate::paths::HostPaths;
use crate::supervise::ComponentName;

use super::components::Components;
use super::record::NodeRecord;

/// kubelet's per-pod directories (`--root-dir` is nodeadm's default, /var/lib/kubelet).
pub const KUBELET_PODS_DIR: &str = "/var/lib/kubelet/pods";
/// Each CRI call's deadline.
const CALL: Duration = Duration::from_secs(60);

/// What the clean start did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanReport {
    /// Tags (or ids, for untagged images) of the images removed.
    pub images_removed: Vec<String>,
    /// Their size as containerd reported it.
    pub bytes_freed: u64,
    /// Images kept: in use by a container, pinned, or the sandbox image.
    pub images_kept: Vec<String>,
    /// Pod directories (uids) removed.
    pub pod_dirs_removed: Vec<String>,
    /// Pod directories kept because something is mounted beneath them, with why.
    pub pod_dirs_kept: Vec<String>,
}

impl CleanReport {
    /// One line for the log and `status`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} images removed ({} MB freed), {} kept; {} stale pod directories removed",
            self.images_removed.len(),
            self.bytes_freed.div_ceil(1 << 20),
            self.images_kept.len(),
            self.pod_dirs_removed.len()
        );
        if !self.pod_dirs_kept.is_empty() {
            s.push_str(&format!(
                ", {} kept with mounts beneath ({})",
                self.pod_dirs_kept.len(),
                self.pod_dirs_kept.join("; ")
            ));
        }
        s
    }
}

/// Steps 1 to 4 of the module docs.
pub async fn clean_restart(
    paths: &HostPaths,
    agent: &AgentConfig,
    record: &NodeRecord,
    wait_timeout: Duration,
) -> Result<CleanReport, String> {
    let comps = Components::connect(paths, &agent.supervisor.backend, &record.components)
        .await
        .map_err(|e| format!("cannot reach the supervisor: {e}"))?;
    comps
        .stop(ComponentName::Kubelet)
        .await
        .map_err(|e| format!("cannot stop kubelet: {e}"))?;
    // containerd must answer for the image collection (it may be restarting after a crash).
    comps
        .wait_healthy(ComponentName::Containerd, wait_timeout)
        .await
        .map_err(|detail| format!("containerd is not healthy: {detail}"))?;

    let socket = paths.resolve(crate::node::containerd::CONTAINERD_SOCKET);
    let program = record
        .components
        .iter()
        .find(|r| r.name == ComponentName::Containerd)
        .map(|r| r.program.clone())
        .unwrap_or_default();
    let config = paths.resolve(crate::paths::CONTAINERD_CONFIG);
    let sandbox_image = super::sandbox::configured_image(&program, &config)
        .await
        .map_err(|e| e.to_string())?;
    let mut report = CleanReport::default();
    let client = Client::connect(&socket).await.map_err(|e| e.to_string())?;
    collect_images(&client, &sandbox_image, &mut report).await?;
    let live: BTreeSet<String> = client
        .list_pod_sandboxes(CALL)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|s| s.metadata.map(|m| m.uid))
        .collect();
    drop(client);
    stale_pod_dirs(&paths.resolve(KUBELET_PODS_DIR), &live, &mut report)?;

    for name in [ComponentName::Containerd, ComponentName::Kubelet] {
        comps
            .stop(name)
            .await
            .map_err(|e| format!("cannot stop {name}: {e}"))?;
    }
    for name in [ComponentName::Containerd, ComponentName::Kubelet] {
        comps
            .start(name)
            .await
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        comps
            .wait_healthy(name, wait_timeout)
            .await
            .map_err(|detail| {
                format!(
                    "{name} did not become healthy within {}s after the clean start: {detail}",
                    wait_timeout.as_secs()
                )
            })?;
    }
    Ok(report)
}

/// Removes every image no container uses, except pinned ones and `sandbox_image`.
async fn collect_images(
    client: &Client,
    sandbox_image: &str,
    report: &mut CleanReport,
) -> Result<(), String> {
    let containers = client
        .list_containers(CALL)
        .await
        .map_err(|e| e.to_string())?;
    // What a container names its image by: the id or digest reference it runs, the id (newer
    // runtimes), and the name its config used.
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for c in &containers {
        used.extend([c.image_ref.as_str(), c.image_id.as_str()]);
        if let Some(spec) = &c.image {
            used.insert(spec.image.as_str());
        }
    }
    used.remove("");
    for image in client.list_images(CALL).await.map_err(|e| e.to_string())? {
        let name = image
            .repo_tags
            .first()
            .or(image.repo_digests.first())
            .cloned()
            .unwrap_or_else(|| image.id.clone());
        let in_use = used.contains(image.id.as_str())
            || image
                .repo_tags
                .iter()
                .chain(&image.repo_digests)
                .any(|r| used.contains(r.as_str()));
        let is_sandbox = image.repo_tags.iter().any(|t| t == sandbox_image);
        if in_use || image.pinned || is_sandbox {
            report.images_kept.push(name);
            continue;
        }
        match client.remove_image(&image.id, CALL).await {
            Ok(()) => {
                report.bytes_freed += image.size;
                report.images_removed.push(name);
            }
            // A container created since the list (kubelet is stopped, but a runtime client
            // may not be): kept, as containerd says.
            Err(e) => {
                tracing::warn!(image = %name, "kept: containerd would not remove it: {e}");
                report.images_kept.push(name);
            }
        }
    }
    Ok(())
}

/// Removes the pod directories under `dir` whose pod has no sandbox (`live` uids).
fn stale_pod_dirs(
    dir: &Path,
    live: &BTreeSet<String>,
    report: &mut CleanReport,
) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for path in dirs {
        let uid = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if live.contains(&uid) {
            continue;
        }
        match crate::node::mounts::remove_tree(&path) {
            Ok(()) => report.pod_dirs_removed.push(uid),
            Err(crate::node::mounts::RemoveError::Mounted { mounts, .. }) => {
                let list = crate::node::mounts::list(&mounts);
                tracing::warn!(pod = %uid, "kept {}: mounted beneath it: {list}", path.display());
                report.pod_dirs_kept.push(format!("{uid}: {list}"));
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_directories_of_live_pods_stay_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        for uid in ["live-1", "gone-1", "gone-2"] {
            std::fs::create_dir_all(dir.path().join(uid).join("volumes/x")).unwrap();
            std::fs::write(dir.path().join(uid).join("volumes/x/f"), b"data").unwrap();
        }
        // A file (not a pod directory) is none of our business.
        std::fs::write(dir.path().join("stray"), b"").unwrap();
        let live = BTreeSet::from(["live-1".to_owned()]);
        let mut report = CleanReport::default();
        stale_pod_dirs(dir.path(), &live, &mut report).unwrap();
        assert_eq!(report.pod_dirs_removed, ["gone-1", "gone-2"]);
        assert!(dir.path().join("live-1/volumes/x/f").exists());
        assert!(dir.path().join("stray").exists());
        assert!(!dir.path().join("gone-1").exists());
        // A node with no pods directory yet: nothing to do.
        stale_pod_dirs(&dir.path().join("none"), &live, &mut report).unwrap();
    }
}
