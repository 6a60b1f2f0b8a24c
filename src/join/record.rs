//! What a successful `join` leaves for the commands after it.
//!
//! - `node.json`: the node as joined — name, cluster, Kubernetes version, how containerd and
//!   kubelet are run (program, arguments, environment, health probe) and a digest of every input
//!   that shaped the files, so `join` with the same configuration can say "nothing to do", and
//!   `run`, `upgrade` and `leave` use exactly the command lines `join` decided.
//! - `join-journal.json`: the committed [`Journal`](crate::node::land::Journal) of the join —
//!   every file and directory it created, every file it replaced (with the backup) — which
//!   `leave` unwinds to put the host back as it was.
//!
//! Both live in the state directory, readable by root only (`node.json` keeps the NodeConfig's
//! containerd TOML, which may hold registry credentials).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::node::land::{LandError, atomic_write};
use crate::paths::HostPaths;
use crate::supervise::{ComponentName, ComponentSpec, ExecSpec, Probe, ProbePolicy};

/// The node record (host path). Ours.
pub const NODE_RECORD: &str = "/var/lib/hybrid-agent/node.json";
/// The committed journal of the join (host path). Ours.
pub const JOIN_JOURNAL: &str = "/var/lib/hybrid-agent/join-journal.json";
/// The journal of a run in progress (join or upgrade); present only while one runs or after
/// one was killed (the next run rolls it back first). Ours.
pub const TXN_JOURNAL: &str = "/var/lib/hybrid-agent/txn-journal.json";
/// Backups of files a run replaced. Ours.
pub const BACKUP_DIR: &str = "/var/lib/hybrid-agent/backups";
/// Progress of an interrupted `leave`. Ours.
pub const LEAVE_PROGRESS: &str = "/var/lib/hybrid-agent/leave.json";
/// Format version of `node.json`.
pub const FORMAT: u32 = 1;

/// How one component runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub name: ComponentName,
    /// Resolved path of the executable.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub probe: ProbeRecord,
    /// kubelet's environment file (resolved), which its systemd unit reads its arguments from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_file: Option<PathBuf>,
}

/// The health probe of a component (mirrors [`Probe`], which has no `Eq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProbeRecord {
    ContainerdVersion { socket: PathBuf },
    HttpGet { url: String },
}

impl ProbeRecord {
    pub fn to_probe(&self) -> Probe {
        match self {
            ProbeRecord::ContainerdVersion { socket } => Probe::ContainerdVersion {
                socket: socket.clone(),
            },
            ProbeRecord::HttpGet { url } => Probe::HttpGet { url: url.clone() },
        }
    }
}

impl ComponentRecord {
    /// The supervisor's view of this component.
    pub fn spec(&self, policy: ProbePolicy) -> ComponentSpec {
        ComponentSpec {
            name: self.name,
            exec: ExecSpec {
                program: self.program.clone(),
                args: self.args.clone(),
                env: self.env.clone(),
            },
            unit: self.name.unit_name().to_owned(),
            probe: self.probe.to_probe(),
            probe_policy: policy,
        }
    }
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: PathBuf,
    pub sha256: crate::install::checksum::Sha256,
}

impl FileDigest {
    /// The digest of every file of `rendered`, as `node.json` records them.
    pub fn of_rendered(rendered: &crate::node::Rendered) -> Vec<FileDigest> {
        rendered
            .files
            .iter()
            .map(|f| FileDigest {
                path: f.path.clone(),
                sha256: crate::install::checksum::Sha256::of_bytes(&f.content),
            })
            .collect()
    }
}

/// `node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub format: u32,
    pub node_name: String,
    pub cluster: String,
    pub region: String,
    /// `ssm` or `iam-ra`.
    pub provider: String,
    /// SSM managed-instance id, when SSM.
    pub instance_id: Option<String>,
    pub kubernetes_version: String,
    /// `systemd` or `process`.
    pub backend: String,
    /// containerd first, then kubelet (start order).
    pub components: Vec<ComponentRecord>,
    /// SHA-256 over every input of the rendered files and command lines.
    pub config_digest: String,
    /// The rendered files (host paths) and the SHA-256 of what was written.
    pub files: Vec<FileDigest>,
    /// What the files were rendered from, so `upgrade` can render them again.
    pub spec: crate::node::NodeSpec,
    pub cluster_details: crate::node::ClusterDetails,
    /// Whether kubelet and runc use the systemd cgroup driver.
    pub systemd_cgroups: bool,
    /// RFC 3339.
    pub joined_at: String,
}

/// A record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not valid ({message}); if the node is half set up, run `hybrid-agent leave` and join again"
    )]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] LandError),
}

impl NodeRecord {
    /// The record under `paths`, `None` when the host has not joined.
    pub fn load(paths: &HostPaths) -> Result<Option<Self>, RecordError> {
        let path = paths.resolve(NODE_RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RecordError::Parse {
                    path,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Read { path, source }),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Writes the record directly (outside a journal), for updates after a committed run.
    pub fn save(&self, paths: &HostPaths) -> Result<(), RecordError> {
        atomic_write(&paths.resolve(NODE_RECORD), &self.to_bytes(), 0o600)?;
        Ok(())
    }

    pub fn component(&self, name: ComponentName) -> Option<&ComponentRecord> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Supervisor specs of every component, in start order.
    pub fn specs(&self, policy: &ProbePolicy) -> Vec<ComponentSpec> {
        self.components
            .iter()
            .map(|c| c.spec(policy.clone()))
            .collect()
    }
}

/// A host path as a `Path`.
pub fn host(p: &str) -> &Path {
    Path::new(p)
}
