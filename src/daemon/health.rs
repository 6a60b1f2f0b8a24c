//! Keeping the daemon's subsystems alive: each one (credential rotation, supervision of
//! containerd and kubelet, telemetry) runs in its own task under [`keep_running`], which restarts
//! it with capped exponential backoff when it fails or panics, and records its state for
//! `status`, `doctor` and the `SubsystemUp`/`SubsystemRestarts` metrics.
//!
//! A subsystem is `running` from its start; from a failure until a restarted instance has lived
//! [`RestartPolicy::healthy_after`] without failing it is `degraded`, with the cause. One that stops
//! with an error only an operator can fix (an SSM identity the service no longer knows) is
//! `failed` and is not restarted: a restart would repeat the same refusal. A subsystem that stays
//! `degraded` past [`HealthSettings::down_limit`] makes the daemon stop feeding systemd's watchdog
//! ([`Health::overdue`]), so systemd restarts the whole agent: a fresh process is the last remedy
//! for a fault the in-process restarts could not clear (a leaked descriptor, a wedged runtime).

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::Instrument as _;

/// First wait before restarting a failed subsystem.
pub const DEFAULT_RESTART_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between restarts (`daemon.subsystem_restart_cap`'s default).
pub const DEFAULT_RESTART_CAP: Duration = crate::config::DEFAULT_SUBSYSTEM_RESTART_CAP;
/// How long a restarted instance must live before the subsystem counts as recovered (and its
/// backoff starts again from [`DEFAULT_RESTART_FIRST`]).
pub const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long a subsystem may stay degraded before the watchdog starves
/// (`daemon.subsystem_down_limit`'s default).
pub const DEFAULT_DOWN_LIMIT: Duration = crate::config::DEFAULT_SUBSYSTEM_DOWN_LIMIT;

pub use crate::state::{Subsystem, SubsystemState, SubsystemStatus};

/// Restart timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub first: Duration,
    pub cap: Duration,
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first: DEFAULT_RESTART_FIRST,
            cap: DEFAULT_RESTART_CAP,
            healthy_after: DEFAULT_HEALTHY_AFTER,
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `failures` (1-based): doubling from `first`, at most `cap`.
    pub fn delay(&self, failures: u32) -> Duration {
        // No jitter: these restarts are local to one process; the calls a restarted subsystem
        // makes are jittered by its own loops.
        crate::retry::Backoff::new(self.first, self.cap, crate::retry::Spread::None)
            .ceiling(failures.saturating_sub(1))
    }
}

/// The daemon's health settings (`[daemon]` in the agent config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub restart: RestartPolicy,
    pub down_limit: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            restart: RestartPolicy::default(),
            down_limit: DEFAULT_DOWN_LIMIT,
        }
    }
}

/// How one run of a subsystem ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It returned because the daemon is stopping.
    Stopped,
    /// It failed in a way a restart may clear.
    Failed(String),
    /// It failed in a way only an operator can fix; not restarted.
    Fatal { message: String, action: String },
}

/// The shared health table; cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    tx: watch::Sender<Vec<SubsystemStatus>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            tx: watch::Sender::new(Vec::new()),
        }
    }

    /// Every change is published here.
    pub fn subscribe(&self) -> watch::Receiver<Vec<SubsystemStatus>> {
        self.tx.subscribe()
    }

    pub fn snapshot(&self) -> Vec<SubsystemStatus> {
        self.tx.borrow().clone()
    }

    fn update(&self, name: Subsystem, f: impl FnOnce(&mut SubsystemStatus, SystemTime)) {
        let now = SystemTime::now();
        self.tx.send_modify(|all| {
            let i = match all.iter().position(|s| s.name == name) {
                Some(i) => i,
                None => {
                    all.push(SubsystemStatus::new(name, now));
                    all.len() - 1
                }
            };
            f(&mut all[i], now);
        });
    }

    /// Records a subsystem as starting (its first instance).
    pub fn starting(&self, name: Subsystem) {
        self.update(name, |_, _| {});
    }

    fn running(&self, name: Subsystem) {
        self.update(name, |s, now| {
            if s.state != SubsystemState::Running {
                s.state = SubsystemState::Running;
                s.since = now;
            }
            s.down_since = None;
            s.next_restart = None;
            s.consecutive_failures = 0;
        });
    }

    fn degraded(&self, name: Subsystem, cause: &str, wait: Duration) {
        self.update(name, |s, now| {
            if s.state != SubsystemState::Degraded {
                s.state = SubsystemState::Degraded;
                s.since = now;
            }
            s.down_since.get_or_insert(now);
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.last_error = Some(cause.to_string());
            s.next_restart = Some(now + wait);
        });
    }

    fn restarted(&self, name: Subsystem) {
        self.update(name, |s, _| {
            s.restarts = s.restarts.saturating_add(1);
            s.next_restart = None;
        });
    }

    fn failed(&self, name: Subsystem, message: &str, action: &str) {
        self.update(name, |s, now| {
            s.state = SubsystemState::Failed;
            s.since = now;
            s.down_since = None;
            s.next_restart = None;
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.last_error = Some(message.to_string());
            s.action = Some(action.to_string());
        });
    }

    /// The first subsystem degraded for longer than `limit` at `now`, with how long. A `failed`
    /// subsystem does not count: a restart of the agent cannot fix what needs an operator.
    pub fn overdue(&self, now: SystemTime, limit: Duration) -> Option<(Subsystem, Duration)> {
        self.tx.borrow().iter().find_map(|s| {
            let down = now.duration_since(s.down_since?).ok()?;
            (down > limit).then_some((s.name, down))
        })
    }
}

/// Runs the subsystem `start` makes, restarting it by `policy` when it fails or panics, until
/// `stop` turns true (and the running instance, which watches `stop` too, has returned) or it
/// ends with [`Exit::Fatal`].
pub async fn keep_running<F, Fut>(
    name: Subsystem,
    health: Health,
    policy: RestartPolicy,
    mut stop: watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Exit> + Send + 'static,
{
    health.starting(name);
    let mut failures: u32 = 0;
    loop {
        // Its entries carry SUBSYSTEM (and, through the daemon's span, NODE_NAME).
        let mut task =
            tokio::spawn(start().instrument(tracing::info_span!("subsystem", subsystem = %name)));
        if failures == 0 {
            // A first start (or one after a recovery) is running until it fails; only a
            // restart after a failure must prove itself for `healthy_after`.
            health.running(name);
        }
        let healthy = tokio::time::sleep(policy.healthy_after);
        tokio::pin!(healthy);
        let mut recovered = false;
        let joined = loop {
            tokio::select! {
                joined = &mut task => break joined,
                _ = &mut healthy, if !recovered => {
                    recovered = true;
                    if failures > 0 {
                        tracing::info!(subsystem = %name, "{name} recovered after {failures} failure(s)");
                    }
                    failures = 0;
                    health.running(name);
                }
            }
        };
        let exit = match joined {
            Ok(exit) => exit,
            Err(e) if e.is_panic() => Exit::Failed(format!("panicked: {}", panic_text(e))),
            Err(e) => Exit::Failed(format!("task ended abnormally: {e}")),
        };
        let stopping = *stop.borrow();
        let cause = match exit {
            Exit::Stopped if stopping => return,
            Exit::Failed(_) | Exit::Stopped if stopping => {
                // Failing while the daemon stops is not worth a restart.
                return;
            }
            Exit::Stopped => "ended without being asked to stop".to_string(),
            Exit::Failed(cause) => cause,
            Exit::Fatal { message, action } => {
                tracing::error!(subsystem = %name, "{name} stopped: {message}; {action}");
                health.failed(name, &message, &action);
                return;
            }
        };
        failures = failures.saturating_add(1);
        let wait = policy.delay(failures);
        tracing::error!(
            subsystem = %name,
            failures,
            restart_in_ms = wait.as_millis() as u64,
            "{name} failed: {cause}; restarting it in {wait:?}"
        );
        health.degraded(name, &cause, wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        health.restarted(name);
    }
}

/// The message a panic carried, when it was a string.
fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    //! Real time, scaled down: restarts from 50 ms doubling to 400 ms, recovery after 1.5 s.
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RestartPolicy {
        RestartPolicy {
            first: 50 * MS,
            cap: 400 * MS,
            healthy_after: 1500 * MS,
        }
    }

    fn status(h: &Health, name: Subsystem) -> SubsystemStatus {
        h.snapshot()
            .into_iter()
            .find(|s| s.name == name)
            .expect("registered")
    }

    #[test]
    fn delay_doubles_to_the_cap() {
        let p = RestartPolicy {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(8),
            healthy_after: Duration::from_secs(30),
        };
        let d: Vec<u64> = (1..=6).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 8, 8]);
        assert_eq!(p.delay(u32::MAX), p.cap);
        assert_eq!(p.delay(0), p.first);
    }

    /// A subsystem that panics twice then runs is restarted after 50 ms and 100 ms, shows
    /// degraded with the panic's message meanwhile, and running once it has lived
    /// `healthy_after`.
    #[tokio::test]
    async fn a_panicking_subsystem_is_restarted_with_backoff_and_recovers() {
        let health = Health::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let stop_for_runs = stop_rx.clone();
        let task = tokio::spawn(keep_running(
            Subsystem::Identity,
            health.clone(),
            policy(),
            stop_rx,
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                let mut stop = stop_for_runs.clone();
                async move {
                    if n < 2 {
                        panic!("source exploded #{n}");
                    }
                    let _ = stop.wait_for(|s| *s).await;
                    Exit::Stopped
                }
            },
        ));
        tokio::time::sleep(25 * MS).await;
        let s = status(&health, Subsystem::Identity);
        assert_eq!(s.state, SubsystemState::Degraded, "{s:?}");
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("source exploded #0"),
            "{s:?}"
        );
        assert!(s.down_since.is_some() && s.next_restart.is_some());
        tokio::time::sleep(400 * MS).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let s = status(&health, Subsystem::Identity);
        assert_eq!(s.consecutive_failures, 2, "{s:?}");
        assert!(s.last_error.as_deref().unwrap_or("").contains("#1"));
        // Still degraded until the third instance has lived 1.5 s.
        assert_eq!(s.state, SubsystemState::Degraded);
        tokio::time::sleep(1700 * MS).await;
        let s = status(&health, Subsystem::Identity);
        assert_eq!(s.state, SubsystemState::Running, "{s:?}");
        assert_eq!(s.restarts, 2);
        assert_eq!(s.consecutive_failures, 0);
        assert!(s.down_since.is_none() && s.next_restart.is_none());
        assert!(
            s.last_error.is_some(),
            "the last cause stays visible after recovery"
        );
        stop_tx.send_replace(true);
        task.await.expect("keep_running ends on stop");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "not restarted after the stop"
        );
    }

    /// A fatal exit is recorded as failed with the operator's action and not restarted.
    #[tokio::test]
    async fn a_fatal_exit_is_not_restarted() {
        let health = Health::new();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        keep_running(
            Subsystem::Identity,
            health.clone(),
            policy(),
            stop_rx,
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                async {
                    Exit::Fatal {
                        message: "MachineFingerprintDoesNotMatch".into(),
                        action: "register again".into(),
                    }
                }
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let s = status(&health, Subsystem::Identity);
        assert_eq!(s.state, SubsystemState::Failed);
        assert_eq!(s.action.as_deref(), Some("register again"));
        assert!(
            health
                .overdue(
                    SystemTime::now() + Duration::from_secs(3600),
                    Duration::ZERO
                )
                .is_none(),
            "a failed subsystem never stops the watchdog"
        );
    }

    /// A subsystem that keeps failing is overdue once it has been down past the limit, and its
    /// restarts settle at the cap instead of spinning.
    #[tokio::test]
    async fn one_that_never_recovers_becomes_overdue() {
        let health = Health::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let task = tokio::spawn(keep_running(
            Subsystem::Telemetry,
            health.clone(),
            policy(),
            stop_rx,
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { Exit::Failed("No space left on device (os error 28)".into()) }
            },
        ));
        tokio::time::sleep(10 * MS).await;
        let limit = Duration::from_secs(1);
        assert!(health.overdue(SystemTime::now(), limit).is_none());
        // Restarts at 50, 150, 350, 750, 1150, 1550, 1950 ms: 8 runs in 2 s, not thousands.
        tokio::time::sleep(2000 * MS).await;
        let n = runs.load(Ordering::SeqCst);
        assert!((6..=9).contains(&n), "{n} runs in 2 s");
        let (name, down) = health
            .overdue(SystemTime::now(), limit)
            .expect("overdue after 2 s down with a 1 s limit");
        assert_eq!(name, Subsystem::Telemetry);
        assert!(down > limit);
        let s = status(&health, Subsystem::Telemetry);
        assert_eq!(s.state, SubsystemState::Degraded);
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("os error 28")
        );
        stop_tx.send_replace(true);
        task.await.expect("stops while waiting to restart");
    }

    /// A subsystem that returns by itself (not asked to stop) is restarted too.
    #[tokio::test]
    async fn an_unasked_return_counts_as_a_failure() {
        let health = Health::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let task = tokio::spawn(keep_running(
            Subsystem::Supervision,
            health.clone(),
            policy(),
            stop_rx,
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { Exit::Stopped }
            },
        ));
        tokio::time::sleep(75 * MS).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let s = status(&health, Subsystem::Supervision);
        assert_eq!(s.state, SubsystemState::Degraded);
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("without being asked")
        );
        stop_tx.send_replace(true);
        task.await.expect("stops");
    }
}
