//! Automatic upgrades (`[lifecycle] auto_upgrade`): what EKS Auto Mode does for its nodes, for
//! an unattended hybrid node, one node of the cluster at a time.
//!
//! Every `check_interval` while the maintenance window is open (host time zone):
//! 1. the control plane's version (`eks:DescribeCluster`) against the node's kubelet (the node
//!    record): the target is the next minor when the node is behind (one minor at a time),
//!    else the node's own minor, and never newer than the control plane (the version skew
//!    policy: kubelet may be older than kube-apiserver, never newer);
//! 2. the latest patch of that minor in the artifact manifest; nothing to do when the node runs
//!    it;
//! 3. a slot of the cluster-wide disruption lock ([`crate::kube::lock`], `max_unavailable`
//!    slots); when every slot is taken, wait for the next look;
//! 4. the upgrade itself, run as `hybrid-agent upgrade <patch>` (a child process with the
//!    daemon's `--root`/`--config`): drain (PodDisruptionBudgets hold), switch, health check
//!    with automatic rollback, uncordon — the same code path and run lock as an operator's
//!    upgrade; the slot is renewed while it runs;
//! 5. the slot given back.
//!
//! Each step is journaled in [`LIFECYCLE_JOURNAL`] before it starts: a daemon killed in the
//! middle (power loss, kill -9) finds the journal when it starts again, waits for an upgrade
//! still running to end (its run lock), runs the upgrade again (it continues: the drain from
//! its own journal, an interrupted switch rolled back first; a node already on the target has
//! nothing to do but be uncordoned) and gives the slot back. So a node is never left cordoned
//! for ever, and never holds a slot it does not use. A failed upgrade leaves the node on its old
//! version, uncordoned (the upgrade's own rollback), is counted and shown in `status`, and the
//! same target is not tried again for [`RETRY_FAILED_AFTER`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::install::progress::Progress;
use crate::install::{InstallRequest, Installer, manifest};
use crate::join::record::NodeRecord;
use crate::kube::lock::{self, Acquired};
use crate::paths::HostPaths;
use crate::state::{LastUpgrade, LifecycleStatus};

/// The journal of an automatic flow in progress.
pub const LIFECYCLE_JOURNAL: &str = "/var/lib/hybrid-agent/lifecycle.json";
/// A target whose upgrade failed is not tried again before this.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Extra life given to a lock slot beyond the drain and the health wait.
const SLOT_MARGIN: Duration = Duration::from_secs(600);
/// How often a waiting resume asks for the upgrade's run lock again.
const RESUME_POLL: Duration = Duration::from_secs(2);
/// Lines of a failed upgrade's error kept for `status`.
const ERROR_CHARS: usize = 2000;

/// Local time, as the window reads it: weekday (0 = Monday) and minute after midnight.
pub type LocalTime = Arc<dyn Fn() -> (usize, u16) + Send + Sync>;

/// The host's local time (the time zone of `TZ` or /etc/localtime; UTC when neither says).
pub fn host_local_time() -> LocalTime {
    Arc::new(|| {
        let now = jiff::ZonedDateTime::now();
        (
            usize::from(now.weekday().to_monday_zero_offset().unsigned_abs()),
            u16::from(now.hour().unsigned_abs()) * 60 + u16::from(now.minute().unsigned_abs()),
        )
    })
}

/// What the lifecycle loop is started from.
#[derive(Clone)]
pub struct LifecycleInput {
    pub paths: HostPaths,
    pub agent: AgentConfig,
    /// The agent binary, for the upgrade child.
    pub exe: PathBuf,
    /// `--root DIR [--config PATH]`, as the daemon was started.
    pub global_args: Vec<OsString>,
    pub local_time: LocalTime,
}

/// [`LIFECYCLE_JOURNAL`]'s content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    node: String,
    from: String,
    target: String,
    /// Seconds since the epoch.
    started: u64,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Journal {
    fn load(paths: &HostPaths) -> Option<Journal> {
        serde_json::from_slice(&std::fs::read(paths.resolve(LIFECYCLE_JOURNAL)).ok()?).ok()
    }

    fn save(&self, paths: &HostPaths) -> Result<(), String> {
        let path = paths.resolve(LIFECYCLE_JOURNAL);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::fsutil::replace_file(
            &path,
            &bytes,
            0o600,
            crate::fsutil::TempName::Suffix(".tmp"),
        )
        .map_err(|e| e.to_string())
    }

    fn remove(paths: &HostPaths) {
        let _ = std::fs::remove_file(paths.resolve(LIFECYCLE_JOURNAL));
    }
}

/// The Kubernetes minor an automatic upgrade aims at, or `None` when the node is already newer
/// than the control plane (nothing may be done) or a version is unreadable.
pub fn target_minor(node: &str, control_plane: &str) -> Option<(u32, u32)> {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let mut it = v.trim_start_matches('v').split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let (nm, nn) = parse(node)?;
    let (cm, cn) = parse(control_plane)?;
    if (nm, nn) > (cm, cn) {
        return None;
    }
    if (nm, nn) == (cm, cn) {
        return Some((nm, nn));
    }
    // One minor at a time (kubelet is upgraded minor by minor, as the control plane is).
    Some((nm, nn + 1))
}

/// The loop. See the module docs.
pub struct Lifecycle {
    pub input: LifecycleInput,
    pub status: Arc<watch::Sender<LifecycleStatus>>,
    /// Targets whose upgrade failed, with when.
    failed: Vec<(String, SystemTime)>,
}

impl Lifecycle {
    pub fn new(input: LifecycleInput, status: Arc<watch::Sender<LifecycleStatus>>) -> Lifecycle {
        Lifecycle {
            input,
            status,
            failed: Vec::new(),
        }
    }

    fn set_state(&self, state: String) {
        self.status.send_modify(|s| {
            if s.state != state {
                tracing::info!("lifecycle: {state}");
            }
            s.state = state;
        });
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let lc = self.input.agent.lifecycle.clone();
        self.status.send_modify(|s| {
            s.auto_upgrade = lc.auto_upgrade;
            s.maintenance_window = lc.maintenance_window.to_string();
        });
        if let Some(journal) = Journal::load(&self.input.paths) {
            tokio::select! {
                () = self.resume(journal) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        loop {
            tokio::select! {
                () = self.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(lc.check_interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One look (see the module docs).
    async fn tick(&mut self) {
        let agent = &self.input.agent;
        let lc = &agent.lifecycle;
        if !lc.auto_upgrade {
            self.set_state("automatic upgrades are off ([lifecycle] auto_upgrade)".to_owned());
            return;
        }
        let (day, minute) = (self.input.local_time)();
        if !lc.maintenance_window.contains(day, minute) {
            self.set_state(format!(
                "waiting for the maintenance window ({})",
                lc.maintenance_window
            ));
            return;
        }
        let record = match NodeRecord::load(&self.input.paths) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.set_state("the node has not joined: nothing to upgrade".to_owned());
                return;
            }
            Err(e) => {
                self.set_state(format!("cannot read the node record: {e}"));
                return;
            }
        };
        let control_plane = match self.control_plane(&record).await {
            Ok(v) => v,
            Err(e) => {
                self.set_state(format!("cannot tell the control plane's version: {e}"));
                return;
            }
        };
        self.status
            .send_modify(|s| s.control_plane_version = Some(control_plane.clone()));
        let from = record.kubernetes_version.clone();
        let Some((major, minor)) = target_minor(&from, &control_plane) else {
            self.set_state(format!(
                "kubelet {from} is not older than the control plane {control_plane}: nothing to upgrade to"
            ));
            return;
        };
        let target = match self
            .latest_patch(&record, &format!("{major}.{minor}"))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.set_state(format!(
                    "cannot read the artifact manifest for Kubernetes {major}.{minor}: {e}"
                ));
                return;
            }
        };
        self.status
            .send_modify(|s| s.target_version = Some(target.clone()));
        if target == from {
            self.set_state(format!(
                "up to date: kubelet {from}, control plane {control_plane}"
            ));
            return;
        }
        let now = SystemTime::now();
        self.failed
            .retain(|(_, at)| now.duration_since(*at).unwrap_or_default() < RETRY_FAILED_AFTER);
        if let Some((_, at)) = self.failed.iter().find(|(t, _)| *t == target) {
            self.set_state(format!(
                "the upgrade to {target} failed at {} (see last): not tried again before {}",
                httpdate::fmt_http_date(*at),
                httpdate::fmt_http_date(*at + RETRY_FAILED_AFTER)
            ));
            return;
        }
        let api = match crate::join::drain::api(agent, &record) {
            Ok(a) => a,
            Err(e) => {
                self.set_state(format!("cannot talk to the cluster: {e}"));
                return;
            }
        };
        let action = format!("upgrade {from} to {target}");
        match lock::acquire(&api, lc.max_unavailable, &action, self.slot_life(), now).await {
            Ok(Acquired::Held) => {}
            Ok(Acquired::Busy(holders)) => {
                self.set_state(format!(
                    "upgrade to {target} waits for the disruption lock: {} of {} nodes already disrupted ({})",
                    holders.len(),
                    lc.max_unavailable,
                    holders
                        .iter()
                        .map(|(n, e)| format!("{n}: {}", e.action))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return;
            }
            Err(e) => {
                self.set_state(format!("upgrade to {target} cannot start: {e}"));
                return;
            }
        }
        let journal = Journal {
            node: record.node_name.clone(),
            from: from.clone(),
            target: target.clone(),
            started: epoch(now),
        };
        if let Err(e) = journal.save(&self.input.paths) {
            self.set_state(format!("cannot journal the upgrade to {target}: {e}"));
            let _ = lock::release(&api, SystemTime::now()).await;
            return;
        }
        self.upgrade(&api, &journal).await;
    }

    /// How long a lock slot lives without renewal.
    fn slot_life(&self) -> Duration {
        let lc = &self.input.agent.lifecycle;
        lc.drain_timeout + lc.upgrade_wait_timeout * 2 + SLOT_MARGIN
    }

    /// Runs the journaled upgrade with the slot held and renewed, records the outcome, gives the
    /// slot back and removes the journal.
    async fn upgrade(&mut self, api: &crate::kube::Api, journal: &Journal) {
        let target = journal.target.clone();
        self.set_state(format!(
            "upgrading {} to {target} (holding a disruption lock slot)",
            journal.from
        ));
        let action = format!("upgrade {} to {target}", journal.from);
        let target_for_child = target.clone();
        let runner = self.input.clone();
        let mut child = Box::pin(async move { run_upgrade(&runner, &target_for_child).await });
        let mut renew = tokio::time::interval(self.slot_life() / 4);
        renew.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut child => break outcome,
                _ = renew.tick() => {
                    let max = self.input.agent.lifecycle.max_unavailable;
                    if let Err(e) = lock::acquire(api, max, &action, self.slot_life(), SystemTime::now()).await {
                        tracing::warn!("lifecycle: cannot renew the disruption lock slot: {e}");
                    }
                }
            }
        };
        let finished = epoch(SystemTime::now());
        match &outcome {
            Ok(()) => {
                tracing::info!("lifecycle: upgraded {} to {target}", journal.from);
                self.status.send_modify(|s| {
                    s.upgrades_succeeded += 1;
                    s.last = Some(LastUpgrade {
                        from: journal.from.clone(),
                        to: target.clone(),
                        finished,
                        ok: true,
                        error: String::new(),
                    });
                });
            }
            Err(e) => {
                tracing::error!("lifecycle: the upgrade to {target} failed: {e}");
                self.failed.push((target.clone(), SystemTime::now()));
                self.status.send_modify(|s| {
                    s.upgrades_failed += 1;
                    s.last = Some(LastUpgrade {
                        from: journal.from.clone(),
                        to: target.clone(),
                        finished,
                        ok: false,
                        error: e.chars().take(ERROR_CHARS).collect(),
                    });
                });
            }
        }
        match lock::release(api, SystemTime::now()).await {
            Ok(()) => Journal::remove(&self.input.paths),
            // The journal stays: the next start gives the slot back (it also expires).
            Err(e) => tracing::warn!("lifecycle: cannot give the disruption lock slot back: {e}"),
        }
        self.set_state(match outcome {
            Ok(()) => format!("upgraded {} to {target}", journal.from),
            Err(_) => format!(
                "the upgrade to {target} failed; the node runs {} (see last)",
                journal.from
            ),
        });
    }

    /// An automatic flow found journaled at start: finish it (see the module docs).
    async fn resume(&mut self, journal: Journal) {
        let record = match NodeRecord::load(&self.input.paths) {
            Ok(Some(r)) if r.node_name == journal.node => r,
            _ => {
                Journal::remove(&self.input.paths);
                return;
            }
        };
        self.set_state(format!(
            "continuing the interrupted upgrade {} to {}",
            journal.from, journal.target
        ));
        // An upgrade child of the killed daemon may still run: wait for its run lock.
        while let Err(crate::runlock::LockError::Held { .. }) = crate::runlock::RunLock::acquire(
            &self.input.paths,
            crate::runlock::LockKind::Admin,
            "run",
        ) {
            tokio::time::sleep(RESUME_POLL).await;
        }
        let api = loop {
            match crate::join::drain::api(&self.input.agent, &record) {
                Ok(a) => break a,
                Err(e) => {
                    self.set_state(format!("cannot talk to the cluster: {e}"));
                    tokio::time::sleep(self.input.agent.lifecycle.check_interval).await;
                }
            }
        };
        self.upgrade(&api, &journal).await;
    }

    async fn control_plane(&self, record: &NodeRecord) -> Result<String, String> {
        let region = crate::config::Region::parse(&record.region)?;
        let eks = crate::join::cloud::eks(&self.input.agent, &region).map_err(|e| e.to_string())?;
        let described = crate::node::cluster::describe_cluster(&eks, &record.cluster)
            .await
            .map_err(|e| e.to_string())?;
        described
            .version
            .ok_or_else(|| format!("DescribeCluster of {} has no version", record.cluster))
    }

    async fn latest_patch(&self, record: &NodeRecord, minor: &str) -> Result<String, String> {
        let agent = &self.input.agent;
        let installer = Installer::new(
            self.input.paths.clone(),
            &crate::join::fetch_settings(agent, agent.artifacts.allow_insecure_mirror),
            Progress::Silent,
        )
        .map_err(|e| e.to_string())?;
        let req = InstallRequest {
            kubernetes_version: minor.to_owned(),
            arch: manifest::host_arch().to_owned(),
            source: crate::join::ArtifactSource::Default.resolve_in(agent, &record.spec.region),
        };
        installer
            .resolve(&req)
            .await
            .map(|r| r.selection.version)
            .map_err(|e| e.to_string())
    }
}

/// `hybrid-agent upgrade TARGET` as a child process; its error output when it fails.
async fn run_upgrade(input: &LifecycleInput, target: &str) -> Result<(), String> {
    let lc = &input.agent.lifecycle;
    let mut cmd = tokio::process::Command::new(&input.exe);
    cmd.args(&input.global_args)
        .arg("upgrade")
        .arg(target)
        .arg("--drain-timeout")
        .arg(format!("{}ms", lc.drain_timeout.as_millis()))
        .arg("--wait-timeout")
        .arg(format!("{}ms", lc.upgrade_wait_timeout.as_millis()))
        .env("HYBRID_AGENT_LOG_TARGET", "stderr")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if input.agent.artifacts.allow_insecure_mirror {
        cmd.arg("--allow-insecure-mirror");
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", input.exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        tracing::info!("upgrade: {line}");
    }
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "`hybrid-agent upgrade {target}` exited with {}: {}",
        out.status,
        stderr.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_minor_at_a_time_and_never_past_the_control_plane() {
        assert_eq!(target_minor("1.31.2", "1.33"), Some((1, 32)));
        assert_eq!(target_minor("1.33.0", "1.33"), Some((1, 33)));
        assert_eq!(target_minor("1.34.1", "1.33"), None);
        assert_eq!(target_minor("v1.32.1", "1.32"), Some((1, 32)));
        assert_eq!(target_minor("x", "1.32"), None);
    }
}
