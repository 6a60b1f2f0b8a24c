//! The supervisor loop that runs on top of either backend.
//!
//! Responsibilities, in one task with one owner per decision:
//!
//! - **order**: a component starts only once every component before it answers its probe
//!   (kubelet waits for containerd); when an earlier component restarts, the later ones are
//!   probed again at once;
//! - **probes**: each started component is probed on its interval (faster until its first success);
//!   failures during the startup grace or while the backend reports it down do not count; K in a
//!   row → `Backend::restart`;
//! - **crash loops**: every restart the backend reports is fed to a sliding window; N in M →
//!   `degraded` (the backend keeps restarting at its capped delay);
//! - **units that gave up** (systemd `failed`): started again after a backoff;
//! - **status**: a [`SupervisionStatus`] snapshot published on a watch channel after every change.
//!
//! The first start failure of a component is returned to the caller (k0s does the same): a
//! missing binary should fail `join`, not loop silently.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use super::backoff::{BackoffPolicy, CrashLoopDetector, CrashLoopPolicy};
use super::probe::Prober;
use super::status::{
    ComponentState, ComponentStatus, RECENT_DELAYS_KEPT, SupervisionStatus, now_unix_ms,
};
use super::{
    Backend, BackendEvent, ComponentSpec, EventKind, RunState, Selection, StartOutcome,
    SuperviseError,
};

/// Probe cadence until a component first answers after a (re)start: starts should be noticed in
/// well under the normal interval.
pub const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What happens to the components when the supervisor stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownAction {
    /// Leave them running: systemd units are independent anyway, and the built-in backend's
    /// children are adopted by the next agent.
    #[default]
    LeaveRunning,
    /// Stop them, last started first.
    Stop,
}

#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// In start order.
    pub components: Vec<ComponentSpec>,
    pub crash_loop: CrashLoopPolicy,
    /// Spacing of our own start attempts for a unit the backend gave up on.
    pub failed_backoff: BackoffPolicy,
    pub on_shutdown: ShutdownAction,
}

impl SupervisorConfig {
    pub fn new(components: Vec<ComponentSpec>) -> Self {
        SupervisorConfig {
            components,
            crash_loop: CrashLoopPolicy::default(),
            failed_backoff: BackoffPolicy::default(),
            on_shutdown: ShutdownAction::default(),
        }
    }
}

pub struct Supervisor<B: Backend> {
    backend: Arc<B>,
    selection: Selection,
    config: SupervisorConfig,
    status: watch::Sender<SupervisionStatus>,
}

struct Comp {
    spec: ComponentSpec,
    status: ComponentStatus,
    started: bool,
    /// When the current process (as far as we know) started.
    running_since: Option<Instant>,
    next_probe: Instant,
    healthy_once: bool,
    crash: CrashLoopDetector,
    /// Our own retry schedule for a unit the backend reports `failed`.
    failed_attempts: u32,
    retry_at: Option<Instant>,
}

impl Comp {
    fn healthy(&self) -> bool {
        self.status.last_probe.as_ref().is_some_and(|p| p.ok)
    }
}

impl<B: Backend> Supervisor<B> {
    pub fn new(backend: B, selection: Selection, config: SupervisorConfig) -> Self {
        Self::with_shared(Arc::new(backend), selection, config)
    }

    /// Like [`Supervisor::new`] with a backend the caller keeps a handle to.
    pub fn with_shared(backend: Arc<B>, selection: Selection, config: SupervisorConfig) -> Self {
        let initial = SupervisionStatus {
            backend: selection.kind,
            backend_reason: selection.reason.clone(),
            components: config
                .components
                .iter()
                .map(|c| ComponentStatus::new(c.name, c.unit.clone()))
                .collect(),
            updated_at_unix_ms: now_unix_ms(),
        };
        let (status, _) = watch::channel(initial);
        Supervisor {
            backend,
            selection,
            config,
            status,
        }
    }

    /// The live status; every change is published.
    pub fn status(&self) -> watch::Receiver<SupervisionStatus> {
        self.status.subscribe()
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// Supervises until `shutdown` completes, then leaves or stops the components as configured.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SuperviseError> {
        let mut events = self.backend.watch();
        let specs: Vec<ComponentSpec> = self.config.components.clone();
        self.backend.prepare(&specs).await?;
        let now = Instant::now();
        let mut comps: Vec<Comp> = specs
            .into_iter()
            .map(|spec| Comp {
                status: ComponentStatus::new(spec.name, spec.unit.clone()),
                spec,
                started: false,
                running_since: None,
                next_probe: now,
                healthy_once: false,
                crash: CrashLoopDetector::default(),
                failed_attempts: 0,
                retry_at: None,
            })
            .collect();
        let prober = Prober::new();
        tokio::pin!(shutdown);

        loop {
            self.start_ready(&mut comps).await?;
            self.retry_failed(&mut comps).await;
            self.probe_due(&prober, &mut comps).await;
            let now = Instant::now();
            for c in comps.iter_mut() {
                c.status.degraded = c.crash.degraded(&self.config.crash_loop, now);
            }
            self.publish(&comps);

            let next = comps
                .iter()
                .filter(|c| c.started)
                .flat_map(|c| [Some(c.next_probe), c.retry_at])
                .flatten()
                .min()
                .unwrap_or(now + Duration::from_secs(60));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(next.into()) => {}
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        self.apply(&mut comps, ev);
                        // Drain what else is queued before probing again.
                        while let Ok(ev) = events.try_recv() {
                            self.apply(&mut comps, ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("supervisor missed {n} backend events; re-reading status");
                        self.resync(&mut comps).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        events = self.backend.watch();
                    }
                },
            }
        }

        if self.config.on_shutdown == ShutdownAction::Stop {
            for c in comps.iter_mut().rev().filter(|c| c.started) {
                if let Err(e) = self.backend.stop(&c.spec).await {
                    tracing::warn!(component = %c.spec.name, "stopping {} failed: {e}", c.spec.name);
                }
                c.status.state = ComponentState::Stopped;
                c.status.pid = None;
            }
            self.publish(&comps);
        }
        Ok(())
    }

    fn publish(&self, comps: &[Comp]) {
        self.status.send_replace(SupervisionStatus {
            backend: self.selection.kind,
            backend_reason: self.selection.reason.clone(),
            components: comps.iter().map(|c| c.status.clone()).collect(),
            updated_at_unix_ms: now_unix_ms(),
        });
    }

    async fn start_ready(&self, comps: &mut [Comp]) -> Result<(), SuperviseError> {
        for i in 0..comps.len() {
            if comps[i].started {
                continue;
            }
            if let Some(dep) = comps[..i].iter().find(|c| !c.healthy()) {
                let dep_name = dep.spec.name;
                if comps[i].status.state != ComponentState::WaitingForDependency {
                    tracing::info!(component = %comps[i].spec.name, "waiting for {dep_name} to answer before starting {}", comps[i].spec.name);
                }
                comps[i].status.state = ComponentState::WaitingForDependency;
                continue;
            }
            let c = &mut comps[i];
            c.status.state = ComponentState::Starting;
            let outcome = self.backend.start(&c.spec).await?;
            tracing::info!(component = %c.spec.name, ?outcome, "{} started", c.spec.name);
            let now = Instant::now();
            c.started = true;
            c.status.pid = outcome.pid();
            c.status.adopted = matches!(outcome, StartOutcome::Adopted { .. });
            c.status.run_state = Some(RunState::Active);
            c.running_since = Some(now);
            c.next_probe = now;
            self.publish(comps);
        }
        Ok(())
    }

    async fn retry_failed(&self, comps: &mut [Comp]) {
        let now = Instant::now();
        for c in comps.iter_mut() {
            let Some(at) = c.retry_at else { continue };
            if at > now {
                continue;
            }
            c.retry_at = None;
            // systemd shows `failed` for a moment before `auto-restart`: act only if it stayed so.
            match self.backend.status(&c.spec).await {
                Ok(s) if s.state != RunState::Failed => {
                    c.failed_attempts = 0;
                    continue;
                }
                _ => {}
            }
            tracing::warn!(component = %c.spec.name, attempt = c.failed_attempts, "{} had failed; starting it again", c.spec.name);
            match self.backend.start(&c.spec).await {
                Ok(outcome) => {
                    c.status.pid = outcome.pid();
                    c.running_since = Some(Instant::now());
                    c.crash.record(Instant::now());
                    c.status.restarts = c.status.restarts.saturating_add(1);
                }
                Err(e) => {
                    tracing::warn!(component = %c.spec.name, "restart of failed {} failed: {e}", c.spec.name);
                    self.schedule_failed_retry(c);
                }
            }
        }
    }

    fn schedule_failed_retry(&self, c: &mut Comp) {
        c.failed_attempts = c.failed_attempts.saturating_add(1);
        let delay = self.config.failed_backoff.delay(c.failed_attempts);
        push_delay(&mut c.status, delay);
        c.retry_at = Some(Instant::now() + delay);
    }

    async fn probe_due(&self, prober: &Prober, comps: &mut [Comp]) {
        for i in 0..comps.len() {
            let now = Instant::now();
            if !comps[i].started || comps[i].next_probe > now {
                continue;
            }
            let record = prober
                .probe(&comps[i].spec.probe, comps[i].spec.probe_policy.timeout)
                .await;
            let c = &mut comps[i];
            let policy = c.spec.probe_policy.clone();
            let ok = record.ok;
            let detail = record.detail.clone();
            c.status.last_probe = Some(record);
            let now = Instant::now();
            if ok {
                if c.status.state != ComponentState::Healthy {
                    tracing::info!(component = %c.spec.name, "{} is healthy: {detail}", c.spec.name);
                }
                c.status.consecutive_probe_failures = 0;
                c.status.state = ComponentState::Healthy;
                c.healthy_once = true;
                c.failed_attempts = 0;
                c.next_probe = now + policy.interval;
                continue;
            }
            let down = matches!(
                c.status.run_state,
                Some(
                    RunState::Restarting
                        | RunState::Inactive
                        | RunState::Failed
                        | RunState::Deactivating
                )
            ) || c.status.pid.is_none() && c.status.run_state != Some(RunState::Active);
            let in_grace = c
                .running_since
                .is_some_and(|t| now.saturating_duration_since(t) < policy.startup_grace);
            c.next_probe = now
                + if c.healthy_once {
                    policy.interval
                } else {
                    policy.interval.min(STARTUP_PROBE_INTERVAL)
                };
            if down {
                c.status.state = ComponentState::Restarting;
                continue;
            }
            if in_grace {
                c.status.state = ComponentState::Starting;
                continue;
            }
            c.status.consecutive_probe_failures += 1;
            c.status.state = ComponentState::Unhealthy;
            tracing::warn!(
                component = %c.spec.name,
                failures = c.status.consecutive_probe_failures,
                threshold = policy.failure_threshold,
                "{} probe failed: {detail}",
                c.spec.name
            );
            if c.status.consecutive_probe_failures >= policy.failure_threshold {
                tracing::warn!(component = %c.spec.name, "{} failed {} probes in a row; restarting it", c.spec.name, policy.failure_threshold);
                c.status.consecutive_probe_failures = 0;
                c.status.probe_restarts += 1;
                c.status.state = ComponentState::Restarting;
                c.healthy_once = false;
                self.publish(comps);
                let c = &mut comps[i];
                if let Err(e) = self.backend.restart(&c.spec).await {
                    tracing::warn!(component = %c.spec.name, "restart of {} failed: {e}", c.spec.name);
                }
                let now = Instant::now();
                c.running_since = Some(now);
                c.next_probe = now + STARTUP_PROBE_INTERVAL;
                self.recheck_after(comps, i);
            }
        }
    }

    /// Probes the components after `i` at once: they depend on it.
    fn recheck_after(&self, comps: &mut [Comp], i: usize) {
        let now = Instant::now();
        for later in comps.iter_mut().skip(i + 1).filter(|c| c.started) {
            later.next_probe = now;
        }
    }

    fn apply(&self, comps: &mut [Comp], ev: BackendEvent) {
        let Some(i) = comps.iter().position(|c| c.spec.name == ev.component) else {
            return;
        };
        let now = Instant::now();
        let c = &mut comps[i];
        let mut recheck = false;
        match ev.kind {
            EventKind::Running { pid, .. } => {
                if pid != c.status.pid {
                    c.running_since = Some(now);
                    c.next_probe = now;
                }
                c.status.pid = pid;
                c.status.run_state = Some(RunState::Active);
            }
            EventKind::Exited { .. } => {
                c.status.pid = None;
                c.status.run_state = Some(RunState::Inactive);
                c.status.state = ComponentState::Restarting;
                c.healthy_once = false;
                recheck = true;
            }
            EventKind::RestartScheduled { delay, .. } => {
                push_delay(&mut c.status, delay);
                c.status.run_state = Some(RunState::Restarting);
                c.status.state = ComponentState::Restarting;
            }
            EventKind::Restarted { pid, restarts } => {
                c.status.restarts = c.status.restarts.max(restarts);
                if pid.is_some() {
                    c.status.pid = pid;
                }
                c.crash.record(now);
                c.running_since = Some(now);
                c.next_probe = now;
                c.status.consecutive_probe_failures = 0;
                c.status.state = ComponentState::Starting;
                recheck = true;
            }
            EventKind::State { state, .. } => {
                c.status.run_state = Some(state);
                match state {
                    RunState::Failed if c.started && c.retry_at.is_none() => {
                        self.schedule_failed_retry(c)
                    }
                    RunState::Restarting | RunState::Inactive | RunState::Failed => {
                        c.status.state = ComponentState::Restarting;
                        c.healthy_once = false;
                    }
                    _ => {}
                }
            }
            EventKind::SpawnFailed { error } => {
                tracing::warn!(component = %c.spec.name, "{} could not be restarted: {error}", c.spec.name);
            }
        }
        if recheck {
            self.recheck_after(comps, i);
        }
    }

    async fn resync(&self, comps: &mut [Comp]) {
        for c in comps.iter_mut().filter(|c| c.started) {
            if let Ok(s) = self.backend.status(&c.spec).await {
                c.status.pid = s.pid;
                c.status.run_state = Some(s.state);
                c.status.restarts = c.status.restarts.max(s.restarts);
            }
        }
    }
}

fn push_delay(status: &mut ComponentStatus, delay: Duration) {
    status
        .recent_restart_delays_ms
        .push(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    let excess = status
        .recent_restart_delays_ms
        .len()
        .saturating_sub(RECENT_DELAYS_KEPT);
    status.recent_restart_delays_ms.drain(..excess);
}
