//! Automatic upgrades and reboots (`[lifecycle] auto_upgrade`, `auto_reboot`): what EKS Auto Mode
//! does for its nodes and kured for reboots, for an unattended hybrid node, one node of the
//! cluster at a time.
//!
//! Reboots: when the host asks (`reboot_required_file`, /var/run/reboot-required on Debian and
//! Ubuntu, or `reboot_check_command` exiting 0) and no upgrade is due, in the window and under a
//! slot of the same lock: drain, journal the boot id, run `reboot_command`; once the host is back
//! (a new boot id, or it no longer asks), wait for the node to be Ready (or waiting only for a
//! pod network), uncordon, give the slot back. A daemon that starts with a reboot journaled
//! continues from the journaled phase: that is how the flow ends after a real reboot.
//!
//! Refreshes (`max_node_age`; EKS Auto Mode replaces its nodes after 21 days): once the node is
//! that old (since its join or its last refresh), in the window and under a slot of the lock:
//! drain, ask the identity subsystem for a new SSM key pair (the rotation loop owns the key;
//! [`KeyRotation`]), restart containerd and kubelet from clean state
//! ([`crate::join::refresh`]: unused images collected, stale pod directories removed), reboot
//! when `refresh_reboot` says so, wait for the node to be Ready, uncordon, give the slot back.
//! Each phase is journaled before it starts and is idempotent, so a crash or power loss resumes
//! at the phase it stopped in. A step that fails is named in `status` and the node is
//! uncordoned all the same; the refresh is tried again a day later.
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
//! nothing to do but be uncordoned) and gives the slot back. A resumed flow renews its slot
//! first, since it may have expired while the daemon was down (a reboot, a power cut), and every
//! flow (upgrade, reboot, refresh) renews it every quarter of its life until it is given back,
//! the renewal stopped first so that it cannot take the slot again after the release. So a node is never left cordoned
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
use crate::identity::rotation::IdentityStatus;
use crate::install::progress::Progress;
use crate::install::{InstallRequest, Installer, manifest};
use crate::join::record::NodeRecord;
use crate::kube::lock::{self, Acquired};
use crate::paths::HostPaths;
use crate::state::{LastOutcome, LastUpgrade, LifecycleStatus};

/// The journal of an automatic flow in progress.
pub const LIFECYCLE_JOURNAL: &str = "/var/lib/hybrid-agent/lifecycle.json";
/// A target whose upgrade failed is not tried again before this.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Extra life given to a lock slot beyond the drain and the health wait.
const SLOT_MARGIN: Duration = Duration::from_secs(600);
/// How often a waiting resume asks for the upgrade's run lock again.
const RESUME_POLL: Duration = Duration::from_secs(2);
/// How long the daemon waits, after the reboot command returned, for the reboot to happen.
const REBOOT_WAIT: Duration = Duration::from_secs(600);
/// Pause between two looks while waiting for the reboot.
const REBOOT_POLL: Duration = Duration::from_secs(1);
/// Key of a failed reboot in the list of failed targets.
const REBOOT: &str = "reboot";
/// A refresh's journaled action.
const REFRESH: &str = "refresh";
/// How long a refresh waits for the rotation loop to take a new key pair.
const KEY_ROTATION_WAIT: Duration = Duration::from_secs(120);
/// Lines of a failed upgrade's error kept for `status`.
const ERROR_CHARS: usize = 2000;

/// Local time, as the window reads it: weekday (0 = Monday), minute after midnight, and
/// millisecond in that minute.
pub type LocalTime = Arc<dyn Fn() -> (usize, u16, u16) + Send + Sync>;

/// The host's local time (the time zone of `TZ` or /etc/localtime; UTC when neither says).
pub fn host_local_time() -> LocalTime {
    Arc::new(|| {
        let now = jiff::ZonedDateTime::now();
        (
            usize::from(now.weekday().to_monday_zero_offset().unsigned_abs()),
            u16::from(now.hour().unsigned_abs()) * 60 + u16::from(now.minute().unsigned_abs()),
            u16::from(now.second().unsigned_abs()) * 1000 + now.millisecond().unsigned_abs(),
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
    /// The identity subsystem's door for a new key pair (set by the daemon).
    pub key_rotation: Option<KeyRotation>,
}

/// Asks the credential rotation loop for a new key pair and watches it take it.
#[derive(Clone)]
pub struct KeyRotation {
    /// Each change is one request ([`crate::identity::rotation::Rotator::key_rotation`]).
    pub request: watch::Sender<u64>,
    pub status: watch::Receiver<IdentityStatus>,
}

/// [`LIFECYCLE_JOURNAL`]'s content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    node: String,
    /// `upgrade` or `reboot`.
    #[serde(default = "upgrade_action")]
    action: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    target: String,
    /// Seconds since the epoch.
    started: u64,
    /// A reboot: the kernel's boot id before it (a new one means the host rebooted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    /// A reboot: `drain`, then `reboot` once the reboot command was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    /// A reboot: why the host asked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    /// A refresh: the id of the key pair in use before it (a new id: the rotation is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_before: Option<String>,
    /// A refresh: what its finished phases did, and what went wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    done: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
}

fn upgrade_action() -> String {
    "upgrade".to_owned()
}

/// The running kernel's boot id.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
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

/// "1 of 1 nodes already disrupted (mi-…: upgrade 1.31.2 to 1.31.3)".
fn busy(holders: &[(String, lock::Entry)], max: u32) -> String {
    format!(
        "{} of {max} nodes already disrupted ({})",
        holders.len(),
        holders
            .iter()
            .map(|(n, e)| format!("{n}: {}", e.action))
            .collect::<Vec<_>>()
            .join(", ")
    )
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
    /// The renewal of the slot the flow in progress holds.
    renewal: Option<SlotRenewal>,
}

/// Keeps this node's disruption lock slot alive while a flow holds it: renews it every quarter
/// of its life, in a task that ends with [`SlotRenewal::stop`] or when dropped.
/// An upgrade, a reboot and a refresh each can outlive the slot's life: a drain, a key rotation,
/// a clean start, a reboot and two health waits.
struct SlotRenewal(tokio::task::JoinHandle<()>);

impl SlotRenewal {
    fn start(api: &crate::kube::Api, max: u32, action: String, ttl: Duration) -> Self {
        let api = api.clone();
        SlotRenewal(tokio::spawn(async move {
            let mut every = tokio::time::interval(ttl / 4);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                renew_slot(&api, max, &action, ttl).await;
            }
        }))
    }

    /// Ends the renewal before the slot is given back: a renewal still running could take the
    /// slot again after the release.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

/// Renews this node's slot once; a failure is logged (the flow goes on either way: the node is
/// already disrupted, and the slot expires by itself).
async fn renew_slot(api: &crate::kube::Api, max: u32, action: &str, ttl: Duration) {
    match lock::acquire(api, max, action, ttl, SystemTime::now()).await {
        Ok(Acquired::Held) => {}
        // Only when the slot had expired and others took every one.
        Ok(Acquired::Busy(holders)) => tracing::warn!(
            "lifecycle: the disruption lock slot expired and was taken: {}; the {action} goes on to give the node back",
            busy(&holders, max)
        ),
        Err(e) => tracing::warn!("lifecycle: cannot renew the disruption lock slot: {e}"),
    }
}

impl Drop for SlotRenewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Lifecycle {
    pub fn new(input: LifecycleInput, status: Arc<watch::Sender<LifecycleStatus>>) -> Lifecycle {
        Lifecycle {
            input,
            status,
            failed: Vec::new(),
            renewal: None,
        }
    }

    /// Starts renewing the slot the flow about to run holds. A `resumed` flow renews it first,
    /// before it goes on: it may have expired while the daemon was down (a reboot, a power cut).
    async fn hold_slot(&mut self, api: &crate::kube::Api, action: &str, resumed: bool) {
        let max = self.input.agent.lifecycle.max_unavailable;
        if resumed {
            renew_slot(api, max, action, self.slot_life()).await;
        }
        self.renewal = Some(SlotRenewal::start(
            api,
            max,
            action.to_owned(),
            self.slot_life(),
        ));
    }

    /// Stops renewing the slot (before it is given back).
    async fn release_hold(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.stop().await;
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
            s.auto_reboot = lc.auto_reboot;
            s.maintenance_window = lc.maintenance_window.to_string();
            s.max_node_age = lc.max_node_age.map(crate::config::format_duration);
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
                () = tokio::time::sleep(self.until_next_look()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// `check_interval`, or less when the window opens sooner: a node starts its work in the
    /// second the window opens, not up to a whole interval later. (Around a daylight-saving
    /// change the local-time arithmetic can be an hour off; the interval still bounds the wait.)
    fn until_next_look(&self) -> Duration {
        let lc = &self.input.agent.lifecycle;
        let (day, minute, millis) = (self.input.local_time)();
        match lc.maintenance_window.minutes_until_open(day, minute) {
            0 => lc.check_interval,
            m => lc.check_interval.min(Duration::from_millis(
                (u64::from(m) * 60_000).saturating_sub(u64::from(millis)),
            )),
        }
    }

    /// One look (see the module docs).
    async fn tick(&mut self) {
        let lc = self.input.agent.lifecycle.clone();
        if !lc.auto_upgrade && !lc.auto_reboot && lc.max_node_age.is_none() {
            self.set_state(
                "automatic upgrades, reboots and refreshes are off ([lifecycle] auto_upgrade, auto_reboot, max_node_age)"
                    .to_owned(),
            );
            return;
        }
        let (day, minute, _) = (self.input.local_time)();
        if !lc.maintenance_window.contains(day, minute) {
            self.set_state(format!(
                "waiting for the maintenance window ({})",
                lc.maintenance_window
            ));
            return;
        }
        // A flow whose slot could not be given back (its journal stays): finish that first.
        if let Some(journal) = Journal::load(&self.input.paths) {
            self.resume(journal).await;
            return;
        }
        let record = match NodeRecord::load(&self.input.paths) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.set_state("the node has not joined: nothing to do".to_owned());
                return;
            }
            Err(e) => {
                self.set_state(format!("cannot read the node record: {e}"));
                return;
            }
        };
        // An upgrade due goes first, then a refresh; a reboot waits for the next look.
        if lc.auto_upgrade && self.tick_upgrade(&record).await {
            return;
        }
        if let Some(max) = lc.max_node_age
            && self.tick_refresh(&record, max).await
        {
            return;
        }
        if lc.auto_reboot {
            self.tick_reboot(&record).await;
        }
    }

    /// The upgrade part of a look; true when an upgrade is due (done, running or waiting).
    async fn tick_upgrade(&mut self, record: &NodeRecord) -> bool {
        let agent = &self.input.agent;
        let lc = &agent.lifecycle;
        let control_plane = match self.control_plane(record).await {
            Ok(v) => v,
            Err(e) => {
                self.set_state(format!("cannot tell the control plane's version: {e}"));
                return false;
            }
        };
        self.status
            .send_modify(|s| s.control_plane_version = Some(control_plane.clone()));
        let from = record.kubernetes_version.clone();
        let Some((major, minor)) = target_minor(&from, &control_plane) else {
            self.set_state(format!(
                "kubelet {from} is not older than the control plane {control_plane}: nothing to upgrade to"
            ));
            return false;
        };
        let target = match self.latest_patch(record, &format!("{major}.{minor}")).await {
            Ok(v) => v,
            Err(e) => {
                self.set_state(format!(
                    "cannot read the artifact manifest for Kubernetes {major}.{minor}: {e}"
                ));
                return false;
            }
        };
        self.status
            .send_modify(|s| s.target_version = Some(target.clone()));
        if target == from {
            self.set_state(format!(
                "up to date: kubelet {from}, control plane {control_plane}"
            ));
            return false;
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
            return false;
        }
        let api = match crate::join::drain::api(agent, record) {
            Ok(a) => a,
            Err(e) => {
                self.set_state(format!("cannot talk to the cluster: {e}"));
                return true;
            }
        };
        let action = format!("upgrade {from} to {target}");
        match lock::acquire(&api, lc.max_unavailable, &action, self.slot_life(), now).await {
            Ok(Acquired::Held) => {}
            Ok(Acquired::Busy(holders)) => {
                self.set_state(format!(
                    "upgrade to {target} waits for the disruption lock: {}",
                    busy(&holders, lc.max_unavailable)
                ));
                return true;
            }
            Err(e) => {
                self.set_state(format!("upgrade to {target} cannot start: {e}"));
                return true;
            }
        }
        let journal = Journal {
            node: record.node_name.clone(),
            action: upgrade_action(),
            from: from.clone(),
            target: target.clone(),
            started: crate::kube::epoch_secs(now),
            boot_id: None,
            phase: None,
            reason: String::new(),
            key_before: None,
            done: Vec::new(),
            problems: Vec::new(),
        };
        if let Err(e) = journal.save(&self.input.paths) {
            self.set_state(format!("cannot journal the upgrade to {target}: {e}"));
            let _ = lock::release(&api, SystemTime::now()).await;
            return true;
        }
        self.hold_slot(&api, &action, false).await;
        self.upgrade(&api, &journal).await;
        true
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
        let outcome = run_upgrade(&self.input, &target).await;
        // The slot and the journal first: once status says done, it is.
        self.release_hold().await;
        match lock::release(api, SystemTime::now()).await {
            Ok(()) => Journal::remove(&self.input.paths),
            // The journal stays: the next start gives the slot back (it also expires).
            Err(e) => tracing::warn!("lifecycle: cannot give the disruption lock slot back: {e}"),
        }
        let finished = crate::kube::epoch_secs(SystemTime::now());
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
        self.set_state(match outcome {
            Ok(()) => format!("upgraded {} to {target}", journal.from),
            Err(_) => format!(
                "the upgrade to {target} failed; the node runs {} (see last)",
                journal.from
            ),
        });
    }

    /// Why the host wants a reboot, if it does.
    async fn reboot_required(&self) -> Option<String> {
        let lc = &self.input.agent.lifecycle;
        if lc.reboot_required_file.exists() {
            let packages =
                std::fs::read_to_string(format!("{}.pkgs", lc.reboot_required_file.display()))
                    .map(|p| p.split_whitespace().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
            return Some(format!(
                "{} exists{}",
                lc.reboot_required_file.display(),
                if packages.is_empty() {
                    String::new()
                } else {
                    format!(" (for {packages})")
                }
            ));
        }
        let cmd = lc.reboot_check_command.as_ref()?;
        let status = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => Some(format!("`{}` says so (exit 0)", cmd.join(" "))),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("lifecycle: cannot run reboot_check_command {}: {e}", cmd[0]);
                None
            }
        }
    }

    /// The reboot part of a look (see the module docs).
    async fn tick_reboot(&mut self, record: &NodeRecord) {
        let Some(reason) = self.reboot_required().await else {
            if !self.input.agent.lifecycle.auto_upgrade {
                self.set_state("no reboot needed".to_owned());
            }
            return;
        };
        let now = SystemTime::now();
        self.failed
            .retain(|(_, at)| now.duration_since(*at).unwrap_or_default() < RETRY_FAILED_AFTER);
        if let Some((_, at)) = self.failed.iter().find(|(t, _)| t == REBOOT) {
            self.set_state(format!(
                "the reboot failed at {} (see last reboot): not tried again before {}",
                httpdate::fmt_http_date(*at),
                httpdate::fmt_http_date(*at + RETRY_FAILED_AFTER)
            ));
            return;
        }
        let api = match crate::join::drain::api(&self.input.agent, record) {
            Ok(a) => a,
            Err(e) => {
                self.set_state(format!("cannot talk to the cluster: {e}"));
                return;
            }
        };
        let lc = &self.input.agent.lifecycle;
        match lock::acquire(&api, lc.max_unavailable, "reboot", self.slot_life(), now).await {
            Ok(Acquired::Held) => {}
            Ok(Acquired::Busy(holders)) => {
                self.set_state(format!(
                    "a reboot ({reason}) waits for the disruption lock: {}",
                    busy(&holders, lc.max_unavailable)
                ));
                return;
            }
            Err(e) => {
                self.set_state(format!("a reboot ({reason}) cannot start: {e}"));
                return;
            }
        }
        let journal = Journal {
            node: record.node_name.clone(),
            action: REBOOT.to_owned(),
            from: String::new(),
            target: String::new(),
            started: crate::kube::epoch_secs(now),
            boot_id: boot_id(),
            phase: Some("drain".to_owned()),
            reason,
            key_before: None,
            done: Vec::new(),
            problems: Vec::new(),
        };
        if let Err(e) = journal.save(&self.input.paths) {
            self.set_state(format!("cannot journal the reboot: {e}"));
            let _ = lock::release(&api, SystemTime::now()).await;
            return;
        }
        self.hold_slot(&api, REBOOT, false).await;
        self.reboot(&api, record, journal).await;
    }

    /// The journaled reboot from its phase on: drain, run the reboot command, wait for the host
    /// to come back (a new boot id, or the host no longer asking), kubelet healthy and the node
    /// Ready, uncordon, give the slot back.
    async fn reboot(&mut self, api: &crate::kube::Api, record: &NodeRecord, mut journal: Journal) {
        let paths = self.input.paths.clone();
        let agent = self.input.agent.clone();
        let lc = agent.lifecycle.clone();
        if journal.phase.as_deref() == Some("drain") {
            self.set_state(format!("draining for a reboot ({})", journal.reason));
            let opts = crate::kube::drain::DrainOptions {
                timeout: lc.drain_timeout,
                ..Default::default()
            };
            if let Err(e) = crate::join::drain::drain(&paths, &agent, record, &opts, "reboot").await
            {
                // The drain uncordoned the node again (or says it could not).
                self.finish(
                    api,
                    REBOOT,
                    false,
                    format!("the drain before the reboot failed: {e}"),
                )
                .await;
                return;
            }
            journal.phase = Some("reboot".to_owned());
            if let Err(e) = journal.save(&paths) {
                self.reboot_failed_uncordon(api, record, format!("cannot journal the reboot: {e}"))
                    .await;
                return;
            }
            if let Err(why) = self.run_reboot_command().await {
                self.reboot_failed_uncordon(api, record, why).await;
                return;
            }
        }
        // Going down: a new boot id after the reboot, or (a host that does not really reboot,
        // or a reboot that cleared the request first) the host no longer asks.
        if let Err(why) = self.wait_rebooted(&journal, true).await {
            self.reboot_failed_uncordon(api, record, why).await;
            return;
        }
        self.set_state("back from the reboot: waiting for the node to be Ready".to_owned());
        let ready = self.node_ready(record).await;
        match crate::join::drain::uncordon(&paths, &agent, record).await {
            Ok(line) => {
                if let Some(line) = line {
                    tracing::info!("lifecycle: {line}");
                }
            }
            Err(e) => {
                self.finish(api, REBOOT, false, format!("rebooted, but {e}"))
                    .await;
                return;
            }
        }
        match ready {
            Ok(()) => {
                let detail = format!("rebooted ({})", journal.reason);
                self.finish(api, REBOOT, true, detail).await;
            }
            Err(e) => {
                self.finish(
                    api,
                    REBOOT,
                    false,
                    format!("rebooted, but the node is not Ready: {e}"),
                )
                .await;
            }
        }
    }

    /// Runs `reboot_command`; its error output when it fails.
    async fn run_reboot_command(&self) -> Result<(), String> {
        let cmd = &self.input.agent.lifecycle.reboot_command;
        self.set_state(format!("rebooting: `{}`", cmd.join(" ")));
        let out = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run `{}`: {e}", cmd.join(" ")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "`{}` exited with {}: {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// Waits (up to [`REBOOT_WAIT`]) until the host has rebooted since `journal.boot_id` was
    /// taken, or, with `or_no_longer_asks`, no longer asks for a reboot.
    async fn wait_rebooted(
        &self,
        journal: &Journal,
        or_no_longer_asks: bool,
    ) -> Result<(), String> {
        let waited = tokio::time::Instant::now();
        loop {
            let rebooted = boot_id().is_some() && boot_id() != journal.boot_id;
            if rebooted || (or_no_longer_asks && self.reboot_required().await.is_none()) {
                return Ok(());
            }
            if waited.elapsed() > REBOOT_WAIT {
                return Err(format!(
                    "`{}` returned but the host did not reboot within {}s",
                    self.input.agent.lifecycle.reboot_command.join(" "),
                    REBOOT_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(REBOOT_POLL).await;
        }
    }

    /// When the node's age counts from: its join, or its last successful refresh.
    fn age_from(&self, record: &NodeRecord) -> Option<u64> {
        let joined = time::OffsetDateTime::parse(
            &record.joined_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp()).ok());
        let refreshed = self
            .status
            .borrow()
            .last_refresh
            .as_ref()
            .filter(|r| r.ok)
            .map(|r| r.finished);
        joined.max(refreshed)
    }

    /// The refresh part of a look; true when a refresh is due (done, running or waiting).
    async fn tick_refresh(&mut self, record: &NodeRecord, max: Duration) -> bool {
        let lc = self.input.agent.lifecycle.clone();
        let from = self.age_from(record);
        self.status.send_modify(|s| s.node_age_from = from);
        let now = SystemTime::now();
        let now_secs = crate::kube::epoch_secs(now);
        let Some(from) = from else {
            self.set_state(format!(
                "cannot tell the node's age: its record's joined_at `{}` is not an RFC 3339 time",
                record.joined_at
            ));
            return false;
        };
        let age = Duration::from_secs(now_secs.saturating_sub(from));
        let days = |d: Duration| format!("{:.1} days", d.as_secs_f64() / 86_400.0);
        if age < max {
            if !lc.auto_reboot {
                self.set_state(format!(
                    "the node is {} old; refreshed at max_node_age {} (in {})",
                    days(age),
                    crate::config::format_duration(max),
                    days(max - age)
                ));
            }
            return false;
        }
        // A refresh that did not complete is tried again a day later, even across restarts.
        if let Some(last) = self.status.borrow().last_refresh.clone()
            && !last.ok
            && now_secs.saturating_sub(last.finished) < RETRY_FAILED_AFTER.as_secs()
        {
            if !lc.auto_reboot {
                self.set_state(format!(
                    "the last refresh did not complete (see last refresh): tried again after {}",
                    httpdate::fmt_http_date(
                        SystemTime::UNIX_EPOCH
                            + Duration::from_secs(last.finished)
                            + RETRY_FAILED_AFTER
                    )
                ));
            }
            return false;
        }
        let reason = format!(
            "the node is {} old, max_node_age {}",
            days(age),
            crate::config::format_duration(max)
        );
        let api = match crate::join::drain::api(&self.input.agent, record) {
            Ok(a) => a,
            Err(e) => {
                self.set_state(format!("cannot talk to the cluster: {e}"));
                return true;
            }
        };
        match lock::acquire(&api, lc.max_unavailable, REFRESH, self.slot_life(), now).await {
            Ok(Acquired::Held) => {}
            Ok(Acquired::Busy(holders)) => {
                self.set_state(format!(
                    "a refresh ({reason}) waits for the disruption lock: {}",
                    busy(&holders, lc.max_unavailable)
                ));
                return true;
            }
            Err(e) => {
                self.set_state(format!("a refresh ({reason}) cannot start: {e}"));
                return true;
            }
        }
        let journal = Journal {
            node: record.node_name.clone(),
            action: REFRESH.to_owned(),
            from: String::new(),
            target: String::new(),
            started: now_secs,
            boot_id: None,
            phase: Some("drain".to_owned()),
            reason,
            key_before: self
                .input
                .key_rotation
                .as_ref()
                .and_then(|k| k.status.borrow().key_id.clone()),
            done: Vec::new(),
            problems: Vec::new(),
        };
        if let Err(e) = journal.save(&self.input.paths) {
            self.set_state(format!("cannot journal the refresh: {e}"));
            let _ = lock::release(&api, SystemTime::now()).await;
            return true;
        }
        self.hold_slot(&api, REFRESH, false).await;
        self.refresh(&api, record, journal).await;
        true
    }

    /// The journaled refresh from its phase on (see the module docs): drain, rotate, clean,
    /// reboot (with `refresh_reboot`), ready.
    async fn refresh(&mut self, api: &crate::kube::Api, record: &NodeRecord, mut journal: Journal) {
        let paths = self.input.paths.clone();
        let agent = self.input.agent.clone();
        let lc = agent.lifecycle.clone();
        loop {
            let phase = journal.phase.clone().unwrap_or_else(|| "drain".to_owned());
            let next = match phase.as_str() {
                "drain" => {
                    self.set_state(format!("draining for a refresh ({})", journal.reason));
                    let opts = crate::kube::drain::DrainOptions {
                        timeout: lc.drain_timeout,
                        ..Default::default()
                    };
                    if let Err(e) =
                        crate::join::drain::drain(&paths, &agent, record, &opts, "refresh").await
                    {
                        // The drain uncordoned the node again (or says it could not); nothing
                        // else was touched.
                        self.finish(
                            api,
                            REFRESH,
                            false,
                            format!("the drain before the refresh failed: {e}"),
                        )
                        .await;
                        return;
                    }
                    "rotate"
                }
                "rotate" => {
                    self.set_state("refresh: rotating the node's key pair".to_owned());
                    match self.rotate_key(record, &journal).await {
                        Ok(line) => journal.done.push(line),
                        Err(e) => journal.problems.push(format!("key pair: {e}")),
                    }
                    "clean"
                }
                "clean" => {
                    self.set_state(
                        "refresh: restarting containerd and kubelet from clean state".to_owned(),
                    );
                    match self.clean(record).await {
                        Ok(line) => journal.done.push(line),
                        Err(e) => journal.problems.push(format!("clean start: {e}")),
                    }
                    if lc.refresh_reboot {
                        journal.boot_id = boot_id();
                        "reboot"
                    } else {
                        "ready"
                    }
                }
                "reboot" => {
                    // Journaled before the command runs: after a crash here only the wait is
                    // left (a second reboot is not what was asked).
                    let started_here = journal.done.last().is_none_or(|l| l != "reboot started");
                    if started_here {
                        journal.done.push("reboot started".to_owned());
                        if let Err(e) = journal.save(&paths) {
                            journal
                                .problems
                                .push(format!("cannot journal the reboot: {e}"));
                        } else if let Err(e) = self.run_reboot_command().await {
                            journal.problems.push(format!("reboot: {e}"));
                            journal.phase = Some("ready".to_owned());
                            continue;
                        }
                    }
                    match self.wait_rebooted(&journal, false).await {
                        Ok(()) => {
                            journal.done.pop();
                            journal.done.push("rebooted".to_owned());
                        }
                        Err(e) => journal.problems.push(format!("reboot: {e}")),
                    }
                    "ready"
                }
                _ => {
                    self.set_state("refresh: waiting for the node to be Ready".to_owned());
                    if let Err(e) = self.node_ready(record).await {
                        journal.problems.push(format!("the node is not Ready: {e}"));
                    }
                    if let Err(e) = crate::join::drain::uncordon(&paths, &agent, record).await {
                        journal.problems.push(e.to_string());
                    }
                    let ok = journal.problems.is_empty();
                    let mut detail = format!(
                        "refreshed ({}): {}",
                        journal.reason,
                        journal.done.join("; ")
                    );
                    if !ok {
                        detail = format!(
                            "{}; what went wrong: {} (the node was uncordoned)",
                            detail,
                            journal.problems.join("; ")
                        );
                    }
                    self.finish(api, REFRESH, ok, detail).await;
                    return;
                }
            };
            journal.phase = Some(next.to_owned());
            if let Err(e) = journal.save(&paths) {
                journal.problems.push(format!(
                    "cannot journal the refresh's next phase ({next}): {e}"
                ));
            }
        }
    }

    /// A refresh's key rotation, asked of the identity subsystem (which owns the key).
    async fn rotate_key(&self, record: &NodeRecord, journal: &Journal) -> Result<String, String> {
        if record.provider != "ssm" {
            return Ok("key pair not rotated: with IAM Roles Anywhere it is your certificate's (renew it with your PKI)".to_owned());
        }
        let Some(k) = &self.input.key_rotation else {
            return Err("the identity subsystem is not running".to_owned());
        };
        let mut status = k.status.clone();
        let before = journal.key_before.clone();
        let rotated = |s: &IdentityStatus| s.key_id.is_some() && s.key_id != before;
        // Already done before a crash: the key in use is not the journaled one.
        if !rotated(&status.borrow_and_update()) {
            k.request.send_modify(|n| *n += 1);
            let waited = tokio::time::timeout(KEY_ROTATION_WAIT, async {
                loop {
                    {
                        let s = status.borrow_and_update();
                        if rotated(&s) {
                            return Ok(());
                        }
                        if let Some(e) = &s.key_rotation_error {
                            return Err(e.clone());
                        }
                    }
                    if status.changed().await.is_err() {
                        return Err("the identity subsystem stopped".to_owned());
                    }
                }
            })
            .await;
            match waited {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let last = status
                        .borrow()
                        .last_error
                        .as_ref()
                        .map(|e| format!(" (last refresh error: {})", e.message))
                        .unwrap_or_default();
                    return Err(format!(
                        "the rotation loop did not take a new key pair within {}s{last}; it tries again with its next refreshes",
                        KEY_ROTATION_WAIT.as_secs()
                    ));
                }
            }
        }
        let now = status.borrow().key_id.clone().unwrap_or_default();
        Ok(format!(
            "key pair rotated ({} → {now})",
            before.as_deref().unwrap_or("none")
        ))
    }

    /// A refresh's clean start, under the run lock `join`, `leave` and `upgrade` take.
    async fn clean(&self, record: &NodeRecord) -> Result<String, String> {
        let paths = &self.input.paths;
        let _lock = loop {
            match crate::runlock::RunLock::acquire(paths, crate::runlock::LockKind::Admin, REFRESH)
            {
                Ok(l) => break l,
                // An upgrade child of a killed daemon, or an operator's command: wait for it.
                Err(crate::runlock::LockError::Held { .. }) => {
                    tokio::time::sleep(RESUME_POLL).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let report = crate::join::refresh::clean_restart(
            paths,
            &self.input.agent,
            record,
            self.input.agent.lifecycle.upgrade_wait_timeout,
        )
        .await?;
        tracing::info!(
            removed = ?report.images_removed,
            kept = ?report.images_kept,
            pod_dirs = ?report.pod_dirs_removed,
            "lifecycle: clean start done"
        );
        Ok(report.summary())
    }

    /// Waits (up to `upgrade_wait_timeout`) for the node to be Ready, or registered and waiting
    /// only for a pod network.
    async fn node_ready(&self, record: &NodeRecord) -> Result<(), String> {
        let agent = &self.input.agent;
        let credentials = crate::join::cloud::credentials(agent).map_err(|e| e.to_string())?;
        let check = crate::join::ready::ReadyCheck {
            endpoint: &record.cluster_details.api_server_endpoint,
            ca_pem: &record.cluster_details.ca_pem,
            node_name: &record.node_name,
            cluster: &record.cluster,
            region: &record.region,
            credentials: &credentials,
            network: &agent.network,
        };
        let deadline = tokio::time::Instant::now() + agent.lifecycle.upgrade_wait_timeout;
        match crate::join::ready::wait_ready(&check, deadline).await {
            Ok(crate::join::ready::ReadyOutcome::Ready)
            | Ok(crate::join::ready::ReadyOutcome::WaitingForNetwork(_)) => Ok(()),
            Ok(crate::join::ready::ReadyOutcome::Unreachable(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A reboot that failed after the drain: uncordon (a node that stays as it was must take
    /// pods again), then record.
    async fn reboot_failed_uncordon(
        &mut self,
        api: &crate::kube::Api,
        record: &NodeRecord,
        why: String,
    ) {
        let note = match crate::join::drain::uncordon(&self.input.paths, &self.input.agent, record)
            .await
        {
            Ok(_) => String::new(),
            Err(e) => format!("; and {e}"),
        };
        self.finish(api, REBOOT, false, format!("{why}{note}"))
            .await;
    }

    /// Records a reboot's or a refresh's outcome, gives the slot back and removes the journal.
    async fn finish(&mut self, api: &crate::kube::Api, action: &str, ok: bool, detail: String) {
        if ok {
            tracing::info!("lifecycle: {detail}");
        } else {
            tracing::error!("lifecycle: the {action} failed: {detail}");
            self.failed.push((action.to_owned(), SystemTime::now()));
        }
        // The slot and the journal first: once status says done, it is.
        self.release_hold().await;
        match lock::release(api, SystemTime::now()).await {
            Ok(()) => Journal::remove(&self.input.paths),
            Err(e) => tracing::warn!("lifecycle: cannot give the disruption lock slot back: {e}"),
        }
        let outcome = LastOutcome {
            finished: crate::kube::epoch_secs(SystemTime::now()),
            ok,
            detail: detail.chars().take(ERROR_CHARS).collect(),
        };
        self.status.send_modify(|s| {
            let (done, failed, last) = if action == REFRESH {
                (
                    &mut s.refreshes,
                    &mut s.refreshes_failed,
                    &mut s.last_refresh,
                )
            } else {
                (&mut s.reboots, &mut s.reboots_failed, &mut s.last_reboot)
            };
            if ok {
                *done += 1;
            } else {
                *failed += 1;
            }
            *last = Some(outcome);
        });
        self.set_state(if ok {
            detail
        } else {
            format!("the {action} failed: {detail}")
        });
    }

    /// The cluster's API as the node, once its client can be built (a resumed flow must reach
    /// the cluster to finish: it waits, saying why).
    async fn api_until_reachable(&self, record: &NodeRecord) -> crate::kube::Api {
        loop {
            match crate::join::drain::api(&self.input.agent, record) {
                Ok(a) => return a,
                Err(e) => {
                    self.set_state(format!("cannot talk to the cluster: {e}"));
                    tokio::time::sleep(self.input.agent.lifecycle.check_interval).await;
                }
            }
        }
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
        if journal.action == REFRESH {
            self.set_state(format!(
                "continuing the refresh journaled at {} (phase {})",
                journal.started,
                journal.phase.as_deref().unwrap_or("drain")
            ));
            let api = self.api_until_reachable(&record).await;
            self.hold_slot(&api, REFRESH, true).await;
            self.refresh(&api, &record, journal).await;
            return;
        }
        if journal.action == REBOOT {
            self.set_state(format!(
                "continuing the reboot ({}) journaled at {}",
                journal.reason, journal.started
            ));
            let api = self.api_until_reachable(&record).await;
            self.hold_slot(&api, REBOOT, true).await;
            self.reboot(&api, &record, journal).await;
            return;
        }
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
        let api = self.api_until_reachable(&record).await;
        let action = format!("upgrade {} to {}", journal.from, journal.target);
        self.hold_slot(&api, &action, true).await;
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
