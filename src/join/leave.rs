//! `leave`: take the node out and put the host back as it was before `join`.
//!
//! Before anything changes, two checks; when either fails `leave` refuses and changes nothing
//! (a user expects nothing half-done), naming what stands in the way and the fix:
//! - the node is drained and cordoned, unless `--force`: the node drains itself (cordon, evict
//!   through the Eviction API so PodDisruptionBudgets hold) when the cluster lets it, as EKS
//!   does; otherwise it must have been drained by an administrator, as nodeadm's uninstall
//!   requires ([`super::drain`]). Run after the mount check, so a refusal for a mount does not
//!   drain the node first;
//! - nothing is mounted at or beneath any path `leave` would remove, outside the components'
//!   pod state. `--force` does not override this: `leave` never deletes what is mounted. Every
//!   removal re-checks ([`crate::node::mounts::remove_tree`]), so a mount made after the check
//!   keeps its tree.
//!
//! Pod volumes (emptyDir, secrets, subPath binds, CSI mounts under /var/lib/kubelet) and
//! container mounts (under /run/containerd, /var/lib/containerd) are there on every node that
//! still runs pods, and DaemonSet pods stay on a drained node. A tree of [`POD_STATE_TREES`]
//! with a mount beneath it is therefore kept whole, with the mounts named and the fix, and
//! `leave` does the rest (nodeadm's uninstall never removes /var/lib/kubelet at all).
//!
//! Steps, each recorded in `leave.json` once done so an interrupted `leave` resumes where it
//! stopped (and a second `leave` after a complete one finds nothing to do):
//! 1. stop the daemon (it would restart what we stop next);
//! 2. stop kubelet, then containerd, through the supervisor backend;
//! 3. deregister the SSM managed instance (with retries; an instance already gone is fine);
//! 4. remove exactly the files the install tracker lists (never a distribution containerd);
//! 5. unwind the join record: restore every file join replaced, remove every file and
//!    directory it created — except the containerd image store and the telemetry spool, which
//!    are user data kept unless `--purge`;
//! 6. remove the agent's state (same exception for the spool).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, Region};
use crate::identity::setup::IdentityEnv;
use crate::install::tracker::Tracker;
use crate::node::land::{self, Journal, LandError};
use crate::paths::HostPaths;
use crate::supervise::ComponentName;

use super::cloud::{self, CloudError};
use super::components::Components;
use super::record::{JOIN_JOURNAL, LEAVE_PROGRESS, NodeRecord, RecordError};
use super::{PhaseError, recover};

/// How long the daemon gets to stop after SIGTERM (it stops its tasks within seconds).
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// containerd's image store: user data, kept unless `--purge`.
pub const KEPT_WITHOUT_PURGE: &str = crate::node::containerd::CONTAINERD_ROOT;
/// Where pods' volumes and containers' filesystems are mounted while pods run: kept whole, with
/// a warning, when something is still mounted beneath (see the module docs).
pub const POD_STATE_TREES: [&str; 3] = [
    "/var/lib/kubelet",
    crate::node::containerd::CONTAINERD_STATE,
    crate::node::containerd::CONTAINERD_ROOT,
];

/// What `leave` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct LeaveOptions {
    /// Also remove the containerd image store and the telemetry spool.
    pub purge: bool,
    /// Skip the drain (never the mount check).
    pub force: bool,
    /// How long the drain may take, and its retry pace.
    pub drain: crate::kube::drain::DrainOptions,
}

/// What `leave` did.
#[derive(Debug, Clone, Default)]
pub struct LeaveReport {
    pub nothing_to_do: bool,
    /// This run continued one that was interrupted.
    pub resumed: bool,
    pub lines: Vec<String>,
    pub warnings: Vec<String>,
}

/// Why `leave` stopped; running it again continues from the failed step.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error(
        "leave stopped at step `{step}`: {message}. Fix the cause and run `hybrid-agent leave` again: it continues from this step"
    )]
    Step { step: &'static str, message: String },
    /// A check before the first change failed: nothing was changed.
    #[error("leave changed nothing: {}", .problems.join("\n"))]
    Refused { problems: Vec<String> },
}

fn step_err(step: &'static str) -> impl FnOnce(String) -> LeaveError {
    move |message| LeaveError::Step { step, message }
}

/// `leave.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    done: Vec<String>,
    /// The node record as it was when leave began (the record itself goes in step 5).
    record: Option<NodeRecord>,
    /// The SSM instance to deregister (from the record or the registration).
    instance_id: Option<String>,
    region: Option<String>,
}

impl Progress {
    fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|d| d == step)
    }
}

struct Leaver<'a> {
    paths: &'a HostPaths,
    progress: Progress,
    report: LeaveReport,
}

impl Leaver<'_> {
    fn save(&self) -> Result<(), LandError> {
        let file = self.paths.resolve(LEAVE_PROGRESS);
        if !file.parent().is_some_and(Path::is_dir) {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.progress).unwrap_or_default();
        land::atomic_write(&file, &bytes, 0o600)
    }

    fn mark(&mut self, step: &'static str, line: String) -> Result<(), LeaveError> {
        self.progress.done.push(step.to_owned());
        self.report.lines.push(line);
        self.save().map_err(|e| LeaveError::Step {
            step,
            message: e.to_string(),
        })
    }
}

/// Runs `leave`. See the module docs.
pub async fn leave(
    paths: &HostPaths,
    agent: &AgentConfig,
    opts: &LeaveOptions,
) -> Result<LeaveReport, LeaveError> {
    let mut report = LeaveReport::default();
    match recover(paths, agent).await {
        Ok(Some(line)) => report.lines.push(line),
        Ok(None) => {}
        Err(e) => {
            return Err(LeaveError::Step {
                step: "recover",
                message: e.to_string(),
            });
        }
    }
    let progress_file = paths.resolve(LEAVE_PROGRESS);
    let progress = match std::fs::read(&progress_file) {
        Ok(bytes) => {
            report.resumed = true;
            serde_json::from_slice(&bytes).unwrap_or_default()
        }
        Err(_) => {
            let record = NodeRecord::load(paths).map_err(|e: RecordError| LeaveError::Step {
                step: "start",
                message: e.to_string(),
            })?;
            let registration = IdentityEnv::new(paths, agent)
                .store()
                .load_registration()
                .ok()
                .flatten();
            let instance_id = record
                .as_ref()
                .and_then(|r| r.instance_id.clone())
                .or_else(|| registration.as_ref().map(|r| r.instance_id.clone()));
            let region = record
                .as_ref()
                .map(|r| r.region.clone())
                .or_else(|| registration.as_ref().map(|r| r.region.clone()));
            let joined = record.is_some()
                || instance_id.is_some()
                || paths.resolve(JOIN_JOURNAL).exists()
                || Tracker::load(paths).ok().flatten().is_some()
                || paths.state_dir().exists();
            if !joined {
                report.nothing_to_do = true;
                report.lines.push("this host has not joined (no node record, registration or install tracker): nothing to do".to_owned());
                return Ok(report);
            }
            Progress {
                done: Vec::new(),
                record,
                instance_id,
                region,
            }
        }
    };
    let held = preflight(paths, agent, opts, &progress, &mut report).await?;
    let mut l = Leaver {
        paths,
        progress,
        report,
    };
    l.save().map_err(|e| LeaveError::Step {
        step: "start",
        message: e.to_string(),
    })?;

    if !l.progress.is_done("stop-daemon") {
        let line = stop_daemon(paths).await.map_err(step_err("stop-daemon"))?;
        l.mark("stop-daemon", line)?;
    }
    if !l.progress.is_done("stop-components") {
        let line = match &l.progress.record {
            Some(record) => {
                let components =
                    Components::connect(paths, &agent.supervisor.backend, &record.components)
                        .await
                        .map_err(|e| LeaveError::Step {
                            step: "stop-components",
                            message: e.to_string(),
                        })?;
                for name in [ComponentName::Kubelet, ComponentName::Containerd] {
                    components.stop(name).await.map_err(|e| LeaveError::Step {
                        step: "stop-components",
                        message: e.to_string(),
                    })?;
                }
                format!(
                    "stopped kubelet and containerd ({})",
                    components.selection.reason
                )
            }
            None => "no components were started by join".to_owned(),
        };
        l.mark("stop-components", line)?;
    }
    if !l.progress.is_done("deregister") {
        let line = match (&l.progress.instance_id, &l.progress.region) {
            (Some(id), Some(region)) => {
                let region = Region::parse(region).map_err(step_err("deregister"))?;
                deregister(paths, agent, &region, id)
                    .await
                    .map_err(|e| LeaveError::Step {
                        step: "deregister",
                        message: e.to_string(),
                    })?;
                format!("deregistered SSM managed instance {id}")
            }
            _ => "no SSM registration to deregister".to_owned(),
        };
        l.mark("deregister", line)?;
    }
    if !l.progress.is_done("uninstall") {
        let line = match Tracker::load(paths).map_err(|e| LeaveError::Step {
            step: "uninstall",
            message: e.to_string(),
        })? {
            Some(t) => {
                let out = t.uninstall(paths).map_err(|e| LeaveError::Step {
                    step: "uninstall",
                    message: e.to_string(),
                })?;
                for p in &out.kept_modified {
                    l.report.warnings.push(format!(
                        "{} changed since it was installed; kept",
                        p.display()
                    ));
                }
                format!(
                    "removed {} installed files (Kubernetes {})",
                    out.removed.len(),
                    t.kubernetes_version
                )
            }
            None => "nothing was installed by hybrid-agent".to_owned(),
        };
        l.mark("uninstall", line)?;
    }
    let mut keep = kept(paths, agent, opts);
    keep.extend(held);
    if !l.progress.is_done("unwind") {
        let line = match Journal::load(paths.clone(), Path::new(JOIN_JOURNAL)).map_err(|e| {
            LeaveError::Step {
                step: "unwind",
                message: e.to_string(),
            }
        })? {
            Some(mut journal) => {
                let n = journal.changes().len();
                let notes = journal.notes();
                let failures = journal.rollback_keeping(&keep);
                if !failures.is_empty() {
                    let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
                    return Err(LeaveError::Step {
                        step: "unwind",
                        message: text.join("; "),
                    });
                }
                // Only the packages join itself installed (its journal says which).
                let removed =
                    crate::node::host::remove_installed_packages(paths, &notes).map_err(|e| {
                        LeaveError::Step {
                            step: "unwind",
                            message: e.to_string(),
                        }
                    })?;
                let mut line = format!(
                    "undid the {n} changes join made (restored replaced files, removed created ones)"
                );
                for r in removed {
                    line.push_str("; ");
                    line.push_str(&r);
                }
                line
            }
            None => "no join record to unwind".to_owned(),
        };
        // The state directory may be gone now (join created it), and the progress with it.
        l.mark("unwind", line)?;
    }
    let state = paths.state_dir();
    if state.exists() {
        let kept_inside: Vec<PathBuf> = keep
            .iter()
            .filter(|k| k.starts_with(&state) && k.exists())
            .cloned()
            .collect();
        if kept_inside.is_empty() {
            crate::node::mounts::remove_tree(&state).map_err(|e| LeaveError::Step {
                step: "state",
                message: format!("remove {}: {e}", state.display()),
            })?;
        } else {
            let j = land::Change::CreatedTree {
                path: PathBuf::from(crate::paths::STATE_DIR),
            };
            land::undo_keeping(paths, &j, &kept_inside).map_err(|e| LeaveError::Step {
                step: "state",
                message: e.to_string(),
            })?;
        }
        l.report.lines.push(format!(
            "removed the agent state in {}",
            crate::paths::STATE_DIR
        ));
    }
    if !opts.purge && paths.resolve(KEPT_WITHOUT_PURGE).exists() {
        l.report.lines.push(format!(
            "kept {KEPT_WITHOUT_PURGE} (container images; `leave --purge` removes it)"
        ));
    }
    if let Some(record) = &l.progress.record {
        l.report.lines.push(node_object_left(record));
    }
    Ok(l.report)
}

/// What `leave` keeps unless `--purge` (resolved paths).
fn kept(paths: &HostPaths, agent: &AgentConfig, opts: &LeaveOptions) -> Vec<PathBuf> {
    if opts.purge {
        Vec::new()
    } else {
        vec![paths.resolve(KEPT_WITHOUT_PURGE), agent.spool.dir.clone()]
    }
}

/// The checks before the first change (see the module docs): every problem found, or a line
/// per check for the report.
async fn preflight(
    paths: &HostPaths,
    agent: &AgentConfig,
    opts: &LeaveOptions,
    progress: &Progress,
    report: &mut LeaveReport,
) -> Result<Vec<PathBuf>, LeaveError> {
    let mut held = Vec::new();
    let mut problems = Vec::new();
    match mounted_beneath_removals(paths, agent, opts, progress) {
        Ok(mounts) if mounts.is_empty() => {}
        Ok(all) => {
            let (mounts, pod_trees) = hold_pod_state(paths, all);
            for (tree, under) in pod_trees {
                report.warnings.push(format!(
                    "kept {} whole: {} mounted beneath it ({}), volumes or filesystems of pods still on the node (DaemonSet pods stay on a drained node). leave never deletes what is mounted: once containerd and kubelet are stopped (leave stops them), unmount them (`umount <mount point>`; a CSI volume: detach it in the cluster first) and remove the directory by hand",
                    tree.display(),
                    if under.len() == 1 {
                        "1 filesystem is".to_owned()
                    } else {
                        format!("{} filesystems are", under.len())
                    },
                    crate::node::mounts::list(&under)
                ));
                held.push(tree);
            }
            if !mounts.is_empty() {
                problems.push(format!(
            "{} mounted at or beneath what leave would remove: {}. leave never deletes what is mounted (not even with --force): unmount them (`umount <mount point>`), then run `hybrid-agent leave` again",
            if mounts.len() == 1 {
                "1 filesystem is".to_owned()
            } else {
                format!("{} filesystems are", mounts.len())
            },
                    crate::node::mounts::list(&mounts)
                ));
            }
        }
        Err(e) => problems.push(e),
    }
    if !problems.is_empty() {
        // Refused for what is mounted: the node is not drained for a leave that cannot happen.
    } else if progress.is_done("stop-components") {
        // Drained when this leave began; kubelet is stopped since.
    } else if opts.force {
        report.lines.push(
            "--force: the node was not drained nor checked for pods still running on it".to_owned(),
        );
    } else if let Some(record) = &progress.record {
        match super::drain::drain(paths, agent, record, &opts.drain, "leave").await {
            Ok(outcome) => report.lines.push(outcome.line(&record.node_name)),
            Err(e) => problems.push(e.to_string()),
        }
    } else {
        report.lines.push(
            "no node record (join never completed): no node in a cluster to drain".to_owned(),
        );
    }
    if problems.is_empty() {
        Ok(held)
    } else {
        Err(LeaveError::Refused { problems })
    }
}

/// Splits `mounts` into those outside the pod state trees (they make leave refuse) and, per pod
/// state tree, the mounts beneath it (the tree is kept whole).
fn hold_pod_state(
    paths: &HostPaths,
    mounts: Vec<crate::node::mounts::Mount>,
) -> (
    Vec<crate::node::mounts::Mount>,
    Vec<(PathBuf, Vec<crate::node::mounts::Mount>)>,
) {
    let trees: Vec<(PathBuf, PathBuf)> = POD_STATE_TREES
        .iter()
        .map(|t| {
            let resolved = paths.resolve(t);
            (crate::node::mounts::location(&resolved), resolved)
        })
        .collect();
    let mut rest = Vec::new();
    let mut held: Vec<(PathBuf, Vec<crate::node::mounts::Mount>)> = Vec::new();
    for m in mounts {
        match trees.iter().find(|(loc, _)| m.mount_point.starts_with(loc)) {
            Some((_, tree)) => match held.iter_mut().find(|(t, _)| t == tree) {
                Some((_, list)) => list.push(m),
                None => held.push((tree.clone(), vec![m])),
            },
            None => rest.push(m),
        }
    }
    (rest, held)
}

/// Every mount at or beneath a path the remaining steps would remove (outside what is kept).
fn mounted_beneath_removals(
    paths: &HostPaths,
    agent: &AgentConfig,
    opts: &LeaveOptions,
    progress: &Progress,
) -> Result<Vec<crate::node::mounts::Mount>, String> {
    let mut targets = vec![paths.state_dir()];
    if !progress.is_done("unwind")
        && let Ok(Some(journal)) = Journal::load(paths.clone(), Path::new(JOIN_JOURNAL))
    {
        targets.extend(journal.removal_targets());
    }
    if !progress.is_done("uninstall")
        && let Ok(Some(t)) = Tracker::load(paths)
    {
        targets.extend(t.files.iter().map(|f| paths.resolve(&f.path)));
    }
    let table = crate::node::mounts::read_table().map_err(|e| {
        format!(
            "cannot read the mount table {} to check that nothing is mounted beneath what leave removes: {e}",
            crate::node::mounts::MOUNTINFO
        )
    })?;
    Ok(crate::node::mounts::beneath(
        &table,
        &targets,
        &kept(paths, agent, opts),
    ))
}

/// What remains in the cluster: Kubernetes does not let a node delete its own Node object
/// (NodeRestriction), so an administrator removes it.
fn node_object_left(record: &NodeRecord) -> String {
    format!(
        "the Node object {node} (if kubelet registered it) stays in cluster {cluster}, NotReady, until an administrator deletes it: `kubectl delete node {node}` (a node may not delete its own Node object)",
        node = record.node_name,
        cluster = record.cluster
    )
}

/// Deregisters, refreshing the credentials once when the ones on disk are refused.
async fn deregister(
    paths: &HostPaths,
    agent: &AgentConfig,
    region: &Region,
    id: &str,
) -> Result<(), PhaseError> {
    match cloud::deregister(agent, region, id).await {
        Ok(()) => Ok(()),
        // Credentials on disk stale or gone (the daemon that refreshed them is stopped): get
        // fresh ones once and try again. Other failures are reported as they are.
        Err(
            first @ (CloudError::Credentials { .. } | CloudError::Deregister { auth: true, .. }),
        ) => {
            let env = IdentityEnv::new(paths, agent);
            let refreshed = match env.rotator() {
                Ok(mut r) => r.refresh_once().await.is_ok(),
                Err(_) => false,
            };
            if !refreshed {
                return Err(first.into());
            }
            cloud::deregister(agent, region, id)
                .await
                .map_err(|e: CloudError| e.into())
        }
        Err(other) => Err(other.into()),
    }
}

/// Stops a running daemon (SIGTERM, bounded wait); a daemon that is not running is fine.
///
/// The daemon is the process `daemon.json` names by pid *and* start time
/// ([`crate::state::daemon_start`]), and the signal goes through a pidfd opened before that
/// check is repeated: the pidfd pins the process, so a daemon that exits and whose pid is reused
/// between the check and the signal makes the signal fail (ESRCH) instead of hitting the newcomer.
async fn stop_daemon(paths: &HostPaths) -> Result<String, String> {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let file = crate::state::path(&paths.state_dir());
    let Some(state) = crate::state::read(&file).map_err(|e| e.to_string())? else {
        return Ok("the daemon never ran here".to_owned());
    };
    let not_running = || Ok("the daemon is not running".to_owned());
    if !crate::state::is_running(&state) {
        return not_running();
    }
    let Some(pid) = i32::try_from(state.pid).ok().and_then(Pid::from_raw) else {
        return not_running();
    };
    let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return not_running(),
        Err(e) => {
            return Err(format!(
                "cannot open a pidfd for the daemon (pid {pid}): {e}"
            ));
        }
    };
    // Checked again now that the pidfd pins whichever process has the pid.
    let Some(start) = crate::state::daemon_start(&state) else {
        return not_running();
    };
    match pidfd_send_signal(&pidfd, Signal::TERM) {
        Ok(()) => {}
        Err(rustix::io::Errno::SRCH) => {
            return Ok(format!("the daemon (pid {pid}) had already exited"));
        }
        Err(e) => return Err(format!("cannot signal the daemon (pid {pid}): {e}")),
    }
    let deadline = Instant::now() + DAEMON_STOP_TIMEOUT;
    while Instant::now() < deadline {
        // Gone, a zombie, or the pid taken by another process (another start time).
        let same_alive = crate::supervise::pidfile::proc_stat(state.pid)
            .is_some_and(|(s, t)| t == start && s != 'Z' && s != 'X');
        if !same_alive {
            return Ok(format!("stopped the daemon (pid {pid})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the daemon (pid {pid}) did not stop within {DAEMON_STOP_TIMEOUT:?} of SIGTERM"
    ))
}
