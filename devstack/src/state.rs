//! Shared state of a running devstack: configuration, the clock (with its injectable offset),
//! per-service stores, fault settings and call counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use crate::control::Faults;
use crate::server::{Config, DevstackError};

pub type Shared = Arc<State>;

pub struct State {
    pub config: Config,
    faults: RwLock<Faults>,
    counters: Mutex<BTreeMap<String, u64>>,
    /// Calls per second and service, with errors and latency ([`crate::arrivals`]).
    pub arrivals: Mutex<crate::arrivals::Arrivals>,
    /// Credentials the devstack knows: the admin key pair and everything it issued.
    pub creds: Mutex<crate::auth::CredentialStore>,
    pub ssm: Mutex<crate::ssm::SsmState>,
    pub logs: Mutex<crate::logs::LogsState>,
    pub metrics: Mutex<crate::metrics::MetricsState>,
    pub eks: crate::eks::EksState,
    /// The registry password ECR authorization tokens carry.
    pub ecr: crate::ecr::EcrState,
    /// The stand-in API servers started for clusters (not persisted).
    pub kube: crate::kube::KubeState,
    pub mirror: crate::mirror::MirrorState,
    pub rolesanywhere: crate::rolesanywhere::RolesAnywhereState,
    /// Expirations answered verbatim instead of the issued one, by service (`ssm`:
    /// `TokenExpirationDate`, `rolesanywhere`: `expiration`); set through the control endpoint
    /// to test clients against absurd values. Not persisted.
    pub expiration_overrides: Mutex<BTreeMap<String, serde_json::Value>>,
}

/// Locks a mutex, recovering the data if a handler panicked while holding it (the devstack keeps
/// serving; a poisoned test double would only hide the original panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub fn new(config: Config) -> Result<State, DevstackError> {
        let faults = config.faults.clone();
        let dir = config.state_dir.clone();
        Ok(State {
            creds: Mutex::new(crate::auth::CredentialStore::load(dir.as_deref())?),
            ssm: Mutex::new(crate::ssm::SsmState::load(dir.as_deref())?),
            logs: Mutex::new(crate::logs::LogsState::load(dir.as_deref())?),
            metrics: Mutex::new(crate::metrics::MetricsState::load(dir.as_deref())?),
            eks: crate::eks::EksState::load(dir.as_deref(), &config)?,
            ecr: crate::ecr::EcrState::new(dir.as_deref())?,
            kube: crate::kube::KubeState::default(),
            mirror: crate::mirror::MirrorState::default(),
            rolesanywhere: crate::rolesanywhere::RolesAnywhereState::load(dir.as_deref())?,
            expiration_overrides: Mutex::new(BTreeMap::new()),
            faults: RwLock::new(faults),
            counters: Mutex::new(BTreeMap::new()),
            arrivals: Mutex::new(crate::arrivals::Arrivals::default()),
            config,
        })
    }

    /// The devstack's "now": the host clock plus the injected clock offset. Used for signature
    /// expiry checks, credential expiry, the `Date` header and log ingestion times.
    pub fn now(&self) -> SystemTime {
        let offset = self.faults().clock_offset_secs;
        let base = SystemTime::now();
        if offset >= 0 {
            base + Duration::from_secs(offset as u64)
        } else {
            base - Duration::from_secs(offset.unsigned_abs())
        }
    }

    /// The expiration `service` should answer with instead of the real one, if one is set.
    pub fn expiration_override(&self, service: &str) -> Option<serde_json::Value> {
        lock(&self.expiration_overrides).get(service).cloned()
    }

    pub fn faults(&self) -> RwLockReadGuard<'_, Faults> {
        self.faults.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults_mut(&self) -> RwLockWriteGuard<'_, Faults> {
        self.faults.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one call of `service`/`op` (e.g. `logs/DescribeLogStreams`).
    pub fn count_call(&self, service: &str, op: &str) {
        *lock(&self.counters)
            .entry(format!("{service}/{op}"))
            .or_insert(0) += 1;
    }

    /// How often `service`/`op` was called since start (or the last reset).
    pub fn call_count(&self, service: &str, op: &str) -> u64 {
        lock(&self.counters)
            .get(&format!("{service}/{op}"))
            .copied()
            .unwrap_or(0)
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.counters).clone()
    }

    pub fn reset_counters(&self) {
        lock(&self.counters).clear();
    }
}
