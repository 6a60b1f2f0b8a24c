//! The credential rotation loop: one owner for refreshing, retrying and publishing credentials,
//! whichever provider they come from.
//!
//! Each refresh writes every configured credentials file (atomically), records expiry and last
//! refresh in `credentials.json`, publishes the credentials to the agent's own AWS clients
//! ([`crate::aws::credentials`]) and its status to the daemon. Timing follows
//! [`crate::identity::schedule`]. Errors that only re-registration can fix
//! (`MachineFingerprintDoesNotMatch`, `InvalidInstanceId`) end the loop with the command to run,
//! instead of hammering the service forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::identity::TemporaryCredentials;
use crate::identity::clock::Clock;
use crate::identity::credfile::{CredFileError, CredentialsTarget};
use crate::identity::iam_ra::{IamRaError, IamRaSource};
use crate::identity::schedule::{self, Jitter};
use crate::identity::ssm_source::{SsmSource, SsmSourceError};
use crate::identity::store::{CredentialsState, IdentityStore, ProviderKind, StoreError, ts};

/// What re-registers a host whose SSM identity is gone.
pub const REREGISTER_COMMAND: &str = "hybrid-agent join --reregister --activation-id <id> --activation-code-file <file> (with a new activation)";

/// A boxed fetch, as [`CredentialSource::fetch`] returns it.
pub type FetchFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<TemporaryCredentials, RefreshError>> + Send + 'a>,
>;

/// What the rotation loop refreshes from: the SSM or IAM Roles Anywhere [`Source`] in the
/// daemon; tests substitute their own (a source that fails, stalls or panics on cue).
pub trait CredentialSource: Send + Sync {
    fn kind(&self) -> ProviderKind;
    /// The identity as status shows it.
    fn identity(&self) -> String;
    /// Non-secret id of the key in use, where there is one (SSM).
    fn key_id(&self) -> Option<String> {
        None
    }
    /// One fetch, no retries.
    fn fetch(&mut self) -> FetchFuture<'_>;
    /// Asks for a new key pair with the next fetch; `Err` says why this source has none to
    /// rotate.
    fn request_key_rotation(&mut self) -> Result<(), String> {
        Err("this credential source has no key pair of its own to rotate".to_owned())
    }
}

/// Where credentials come from.
#[derive(Debug)]
pub enum Source {
    Ssm(Box<SsmSource>),
    IamRa(Box<IamRaSource>),
}

impl Source {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Source::Ssm(_) => ProviderKind::Ssm,
            Source::IamRa(_) => ProviderKind::IamRa,
        }
    }

    /// The identity as status shows it.
    pub fn identity(&self) -> String {
        match self {
            Source::Ssm(s) => s.instance_id().to_string(),
            Source::IamRa(s) => s.identity(),
        }
    }

    async fn fetch(&mut self) -> Result<TemporaryCredentials, RefreshError> {
        match self {
            Source::Ssm(s) => s.fetch().await.map_err(RefreshError::Ssm),
            Source::IamRa(s) => s.fetch().await.map_err(RefreshError::IamRa),
        }
    }
}

impl CredentialSource for Source {
    fn kind(&self) -> ProviderKind {
        Source::kind(self)
    }

    fn identity(&self) -> String {
        Source::identity(self)
    }

    fn key_id(&self) -> Option<String> {
        match self {
            Source::Ssm(s) => Some(s.key_id()),
            Source::IamRa(_) => None,
        }
    }

    fn fetch(&mut self) -> FetchFuture<'_> {
        Box::pin(Source::fetch(self))
    }

    fn request_key_rotation(&mut self) -> Result<(), String> {
        match self {
            Source::Ssm(s) => {
                s.request_key_rotation();
                Ok(())
            }
            Source::IamRa(_) => Err("with IAM Roles Anywhere the key pair is the one of the X.509 certificate your PKI issued: rotate it by issuing a new certificate and key (the files `[iam_roles_anywhere]` names)".to_owned()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Ssm(SsmSourceError),
    #[error(transparent)]
    IamRa(IamRaError),
    #[error(transparent)]
    File(#[from] CredFileError),
    #[error("cannot record the credential state: {0}")]
    State(#[from] StoreError),
    /// From a [`CredentialSource`] other than SSM and IAM Roles Anywhere.
    #[error("{0}")]
    Other(String),
}

impl RefreshError {
    /// Retrying cannot help; an operator must act.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RefreshError::Ssm(e) if e.needs_reregistration())
    }

    /// A network failure or a 5xx/throttling answer: worth another try soon (join's first
    /// credentials retry these, [`crate::identity::register::register_retry_delay`] apart).
    pub fn is_transient(&self) -> bool {
        matches!(self, RefreshError::Ssm(SsmSourceError::Ssm(e)) if e.is_transient())
    }

    /// What the operator should do, for status and the log.
    pub fn action(&self) -> Option<String> {
        self.is_fatal()
            .then(|| format!("register this host again: {REREGISTER_COMMAND}"))
    }
}

/// The last error, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    #[serde(with = "ts")]
    pub at: SystemTime,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// The rotation loop's state, published after every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityStatus {
    pub provider: ProviderKind,
    pub identity: String,
    /// `ok`, `retrying` or `failed` (stopped: see `last_error.action`).
    pub state: String,
    #[serde(with = "ts::option", default)]
    pub expiration: Option<SystemTime>,
    #[serde(with = "ts::option", default)]
    pub last_refresh: Option<SystemTime>,
    #[serde(with = "ts::option", default)]
    pub next_refresh: Option<SystemTime>,
    #[serde(default)]
    pub last_error: Option<LastError>,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Successful refreshes since the daemon started.
    #[serde(default)]
    pub refreshes: u64,
    /// Non-secret id of the SSM key in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Why the last key rotation asked for ([`Rotator::key_rotation`]) cannot be done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation_error: Option<String>,
    /// The first failure since the last successful refresh (`None` while refreshes succeed).
    #[serde(with = "ts::option", default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<SystemTime>,
}

/// Below this share of their lifetime left, credentials that were not refreshed are reported:
/// the loop refreshes at half the remaining time (ten per cent jitter), so a healthy node never
/// gets here; one that does has had a quarter of the lifetime of failures (or no daemon) and
/// is heading for expiry, which stops kubelet's and the agent's own AWS calls.
pub const OVERDUE_SHARE: u32 = 4;

/// Credentials close to expiry without a successful refresh ([`IdentityStatus::refresh_overdue`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefreshOverdue {
    /// When they expire.
    #[serde(with = "ts")]
    pub expiration: SystemTime,
    /// Their whole lifetime (last refresh to expiry), in seconds.
    pub lifetime_secs: u64,
    /// Left before expiry, in seconds.
    pub remaining_secs: u64,
    /// The first failed refresh since the last successful one, if any was attempted.
    #[serde(with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<SystemTime>,
    /// The last refresh error; `None` when no refresh was attempted (daemon not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl IdentityStatus {
    /// Whether less than a quarter ([`OVERDUE_SHARE`]) of the credentials' lifetime is left,
    /// counted from the last successful refresh: a refresh is overdue. `None` when they are
    /// fresher, already expired (shown as such), or their times are unknown.
    pub fn refresh_overdue(&self, now: SystemTime) -> Option<RefreshOverdue> {
        let (exp, issued) = (self.expiration?, self.last_refresh?);
        let lifetime = exp.duration_since(issued).ok()?;
        let remaining = exp.duration_since(now).ok().filter(|d| !d.is_zero())?;
        if remaining >= lifetime / OVERDUE_SHARE {
            return None;
        }
        Some(RefreshOverdue {
            expiration: exp,
            lifetime_secs: lifetime.as_secs(),
            remaining_secs: remaining.as_secs(),
            failing_since: self
                .failing_since
                .or(self.last_error.as_ref().map(|e| e.at)),
            cause: self.last_error.as_ref().map(|e| e.message.clone()),
        })
    }
}

/// Knobs of the loop.
#[derive(Debug, Clone)]
pub struct RotationSettings {
    /// Files to maintain (the shared credentials file, plus `/eks-hybrid/.aws/credentials` with
    /// `enableCredentialsFile`).
    pub targets: Vec<CredentialsTarget>,
    /// Upper bound of one retry wait.
    pub backoff_cap: Duration,
    /// The first refresh of a loop that starts without valid credentials waits a random time
    /// up to this (`daemon.startup_jitter`; [`schedule::first_refresh_delay`]).
    pub startup_spread: Duration,
}

/// The two channels a rotation loop publishes on. The daemon hands the same pair to every
/// instance it starts, so a loop restarted after a panic goes on feeding the receivers the
/// daemon's AWS clients and status already hold.
#[derive(Debug, Clone)]
pub struct RotationChannels {
    pub credentials: watch::Sender<Option<TemporaryCredentials>>,
    pub status: watch::Sender<IdentityStatus>,
    /// Requests for a new key pair ([`Rotator::key_rotation`]).
    pub key_rotation: watch::Sender<u64>,
    /// The last request a loop passed on to its source: a successor passes on one that came
    /// while no loop was running.
    pub key_rotation_handled: Arc<AtomicU64>,
}

/// Owns a [`CredentialSource`] and keeps credentials fresh.
pub struct Rotator {
    source: Box<dyn CredentialSource>,
    settings: RotationSettings,
    store: IdentityStore,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    credentials: watch::Sender<Option<TemporaryCredentials>>,
    status: watch::Sender<IdentityStatus>,
    key_rotation: watch::Sender<u64>,
    key_rotation_rx: watch::Receiver<u64>,
    key_rotation_handled: Arc<AtomicU64>,
}

impl Rotator {
    pub fn new(
        source: impl CredentialSource + 'static,
        settings: RotationSettings,
        store: IdentityStore,
        clock: Arc<dyn Clock>,
        jitter: Arc<dyn Jitter>,
    ) -> Rotator {
        let source: Box<dyn CredentialSource> = Box::new(source);
        let key_rotation = watch::Sender::new(0);
        let status = IdentityStatus {
            provider: source.kind(),
            identity: source.identity(),
            state: "starting".into(),
            expiration: None,
            last_refresh: None,
            next_refresh: None,
            last_error: None,
            consecutive_failures: 0,
            refreshes: 0,
            key_id: source.key_id(),
            key_rotation_error: None,
            failing_since: None,
        };
        Rotator {
            source,
            settings,
            store,
            clock,
            jitter,
            credentials: watch::Sender::new(None),
            status: watch::Sender::new(status),
            key_rotation: key_rotation.clone(),
            key_rotation_rx: key_rotation.subscribe(),
            key_rotation_handled: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Where a new key pair is asked for: each change of the value (a counter) is one request.
    /// The loop asks its source ([`CredentialSource::request_key_rotation`]) and refreshes at
    /// once; the new key shows in [`IdentityStatus::key_id`], a source that cannot rotate in
    /// [`IdentityStatus::key_rotation_error`].
    pub fn key_rotation(&self) -> watch::Sender<u64> {
        self.key_rotation.clone()
    }

    /// Credentials as they rotate, for [`crate::aws::credentials::RotatingCredentials`].
    pub fn credentials(&self) -> watch::Receiver<Option<TemporaryCredentials>> {
        self.credentials.subscribe()
    }

    /// Status after every step.
    pub fn status(&self) -> watch::Receiver<IdentityStatus> {
        self.status.subscribe()
    }

    pub fn source(&self) -> &dyn CredentialSource {
        self.source.as_ref()
    }

    /// The channels this loop publishes on, for [`Rotator::adopt_channels`] of a successor.
    pub fn channels(&self) -> RotationChannels {
        RotationChannels {
            credentials: self.credentials.clone(),
            status: self.status.clone(),
            key_rotation: self.key_rotation.clone(),
            key_rotation_handled: self.key_rotation_handled.clone(),
        }
    }

    /// Publishes on `channels` (a predecessor's) instead of its own: receivers taken from the
    /// predecessor keep working, and the credentials it last published are where this loop
    /// starts from. Status keeps its counters; the state says a new loop is starting.
    pub fn adopt_channels(&mut self, channels: RotationChannels) {
        let identity = self.source.identity();
        let key_id = self.source.key_id();
        channels.status.send_modify(|s| {
            s.identity = identity;
            s.key_id = key_id;
        });
        self.credentials = channels.credentials;
        self.status = channels.status;
        self.key_rotation_rx = channels.key_rotation.subscribe();
        // A request that came while no loop was running (its predecessor had died) is still
        // to be passed on; one the predecessor passed on is not repeated.
        if *self.key_rotation_rx.borrow() != channels.key_rotation_handled.load(Ordering::SeqCst) {
            self.key_rotation_rx.mark_changed();
        }
        self.key_rotation = channels.key_rotation;
        self.key_rotation_handled = channels.key_rotation_handled;
    }

    /// A key rotation was asked for: passes it on to the source.
    fn on_key_rotation_request(&mut self) {
        let asked = *self.key_rotation_rx.borrow_and_update();
        self.key_rotation_handled.store(asked, Ordering::SeqCst);
        match self.source.request_key_rotation() {
            Ok(()) => {
                tracing::info!(
                    request = asked,
                    "a new key pair was asked for; refreshing now"
                );
                self.status.send_modify(|s| s.key_rotation_error = None);
            }
            Err(e) => {
                tracing::warn!(request = asked, "a new key pair was asked for: {e}");
                self.status.send_modify(|s| s.key_rotation_error = Some(e));
            }
        }
    }

    /// One refresh without retries: fetch, write the files, record and publish.
    pub async fn refresh_once(&mut self) -> Result<TemporaryCredentials, RefreshError> {
        let creds = self.source.fetch().await?;
        for t in &self.settings.targets {
            t.write(&creds)?;
        }
        let now = self.clock.now();
        self.store.save_credentials_state(&CredentialsState {
            provider: self.source.kind(),
            identity: self.source.identity(),
            access_key_id: creds.access_key_id.clone(),
            expiration: creds.expiration,
            last_refresh: now,
            files: self
                .settings
                .targets
                .iter()
                .map(|t| t.path.clone())
                .collect(),
        })?;
        self.credentials.send_replace(Some(creds.clone()));
        tracing::info!(
            provider = %self.source.kind(),
            identity = %self.source.identity(),
            access_key_id = %creds.access_key_id,
            expires = %ts::format(creds.expiration),
            "credentials refreshed"
        );
        let key = self.source.key_id();
        self.status.send_modify(|s| {
            s.state = "ok".into();
            s.identity = self.source.identity();
            s.expiration = Some(creds.expiration);
            s.last_refresh = Some(now);
            s.consecutive_failures = 0;
            s.refreshes += 1;
            s.key_id = key;
            s.failing_since = None;
        });
        Ok(creds)
    }

    /// Seeds the loop with credentials still valid from a previous run (read from our own
    /// credentials file at start), so a restart does not force a refresh.
    pub fn seed(&mut self, creds: TemporaryCredentials, last_refresh: Option<SystemTime>) {
        self.status.send_modify(|s| {
            s.state = "ok".into();
            s.expiration = Some(creds.expiration);
            s.last_refresh = last_refresh;
        });
        self.credentials.send_replace(Some(creds));
    }

    /// Refreshes until `shutdown` resolves; returns early only on a fatal error.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), RefreshError> {
        tokio::pin!(shutdown);
        let mut first = true;
        // The cause last warned about as an overdue refresh: warned once, and again when it
        // changes, not on every retry.
        let mut overdue_warned: Option<String> = None;
        loop {
            let expiration = self.credentials.borrow().as_ref().map(|c| c.expiration);
            let delay = match expiration {
                // The loop's first call is spread over the start-up window unless the
                // credentials it starts with are still valid.
                _ if first => schedule::first_refresh_delay(
                    self.clock.now(),
                    expiration,
                    self.settings.startup_spread,
                    self.jitter.as_ref(),
                ),
                Some(exp) => schedule::refresh_delay(self.clock.now(), exp, self.jitter.as_ref()),
                None => Duration::ZERO,
            };
            first = false;
            let next = self.clock.now() + delay;
            self.status.send_modify(|s| s.next_refresh = Some(next));
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = self.clock.sleep(delay) => {}
                Ok(()) = self.key_rotation_rx.changed() => self.on_key_rotation_request(),
            }
            let mut attempt: u32 = 0;
            loop {
                match self.refresh_once().await {
                    Ok(_) => {
                        if overdue_warned.take().is_some() {
                            tracing::info!(
                                "credentials refreshed again; the overdue refresh is resolved"
                            );
                        }
                        break;
                    }
                    Err(e) if e.is_fatal() => {
                        let action = e.action();
                        tracing::error!(
                            "credential refresh stopped: {e}; {}",
                            action.clone().unwrap_or_default()
                        );
                        let now = self.clock.now();
                        self.status.send_modify(|s| {
                            s.state = "failed".into();
                            s.next_refresh = None;
                            s.consecutive_failures += 1;
                            s.failing_since.get_or_insert(now);
                            s.last_error = Some(LastError {
                                at: now,
                                message: e.to_string(),
                                action,
                            });
                        });
                        return Err(e);
                    }
                    Err(e) => {
                        let now = self.clock.now();
                        let remaining =
                            self.credentials.borrow().as_ref().map(|c| {
                                c.expiration.duration_since(now).unwrap_or(Duration::ZERO)
                            });
                        let wait = schedule::backoff_delay(
                            attempt,
                            self.settings.backoff_cap,
                            remaining,
                            self.jitter.as_ref(),
                        );
                        tracing::warn!(
                            attempt = attempt + 1,
                            retry_in_ms = wait.as_millis() as u64,
                            "credential refresh failed: {e}"
                        );
                        self.status.send_modify(|s| {
                            s.state = "retrying".into();
                            s.consecutive_failures += 1;
                            s.failing_since.get_or_insert(now);
                            s.next_refresh = Some(now + wait);
                            s.last_error = Some(LastError {
                                at: now,
                                message: e.to_string(),
                                action: None,
                            });
                        });
                        let overdue = self.status.borrow().refresh_overdue(now);
                        if let Some(o) = overdue {
                            let cause = o.cause.clone().unwrap_or_default();
                            if overdue_warned.as_deref() != Some(cause.as_str()) {
                                tracing::warn!(
                                    remaining_secs = o.remaining_secs,
                                    "credentials expire in {}s (less than a quarter of their {}s lifetime left) and refreshing has failed since {}: {cause}",
                                    o.remaining_secs,
                                    o.lifetime_secs,
                                    o.failing_since.map(ts::format).unwrap_or_default(),
                                );
                                overdue_warned = Some(cause);
                            }
                        }
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            _ = &mut shutdown => return Ok(()),
                            _ = self.clock.sleep(wait) => {}
                            Ok(()) = self.key_rotation_rx.changed() => self.on_key_rotation_request(),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop's timing with a clock whose waits are instant (and move its "now" by the time
    //! waited) and a scripted source: whole hours of rotation run in milliseconds.
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::config::Secret;
    use crate::identity::clock::Sleep;

    const S: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct TestClock {
        now: Mutex<SystemTime>,
        slept: Mutex<Vec<Duration>>,
    }

    impl TestClock {
        fn new() -> Arc<TestClock> {
            Arc::new(TestClock {
                now: Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
                slept: Mutex::new(Vec::new()),
            })
        }
        fn slept(&self) -> Vec<Duration> {
            self.slept.lock().expect("lock").clone()
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            *self.now.lock().expect("lock")
        }
        fn sleep(&self, d: Duration) -> Sleep {
            *self.now.lock().expect("lock") += d;
            self.slept.lock().expect("lock").push(d);
            Box::pin(tokio::task::yield_now())
        }
    }

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    /// One scripted answer: credentials living this long (negative: already expired), a
    /// retryable error, or one only re-registration fixes.
    #[derive(Clone, Copy)]
    enum Step {
        Ok(i64),
        Err,
        Fatal,
    }

    struct Scripted {
        clock: Arc<TestClock>,
        steps: Mutex<VecDeque<Step>>,
        fetches: Arc<AtomicU32>,
        /// Told the number of fetches so far, for the test's stop condition.
        count: watch::Sender<u32>,
        /// Key rotations asked of this source.
        rotations: Arc<AtomicU32>,
    }

    impl CredentialSource for Scripted {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Ssm
        }
        fn identity(&self) -> String {
            "mi-0123456789abcdef0".into()
        }
        fn request_key_rotation(&mut self) -> Result<(), String> {
            self.rotations.fetch_add(1, Ordering::SeqCst);
            self.count.send_modify(|n| *n += 1000);
            Ok(())
        }
        fn fetch(&mut self) -> FetchFuture<'_> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            self.count.send_replace(n);
            let step = self
                .steps
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(Step::Ok(3600));
            let now = self.clock.now();
            Box::pin(async move {
                match step {
                    Step::Ok(life) => Ok(TemporaryCredentials {
                        access_key_id: format!("ASIAROTATIONTEST{n:04}"),
                        secret_access_key: Secret::new("s"),
                        session_token: Secret::new("t"),
                        expiration: if life >= 0 {
                            now + Duration::from_secs(life as u64)
                        } else {
                            now - Duration::from_secs(life.unsigned_abs())
                        },
                    }),
                    Step::Err => Err(RefreshError::Other("connection refused".into())),
                    Step::Fatal => Err(RefreshError::Ssm(SsmSourceError::NotRegistered {
                        path: "/var/lib/hybrid-agent/ssm/registration.json".into(),
                    })),
                }
            })
        }
    }

    struct Run {
        clock: Arc<TestClock>,
        fetches: Arc<AtomicU32>,
        result: Result<(), RefreshError>,
        status: IdentityStatus,
        file: String,
        _dir: tempfile::TempDir,
    }

    /// Runs the loop over `steps` until `stop_after` fetches, with backoff cap `cap`.
    async fn run(steps: &[Step], stop_after: u32, cap: Duration, seed: Option<i64>) -> Run {
        run_spread(steps, stop_after, cap, seed, Duration::ZERO, 1.0).await
    }

    /// [`run`] with a start-up spread and the jitter pinned at `jitter`.
    async fn run_spread(
        steps: &[Step],
        stop_after: u32,
        cap: Duration,
        seed: Option<i64>,
        spread: Duration,
        jitter: f64,
    ) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = TestClock::new();
        let fetches = Arc::new(AtomicU32::new(0));
        let (count, mut counted) = watch::channel(0u32);
        let source = Scripted {
            clock: clock.clone(),
            steps: Mutex::new(steps.iter().copied().collect()),
            fetches: fetches.clone(),
            count,
            rotations: Arc::new(AtomicU32::new(0)),
        };
        let file = dir.path().join("credentials");
        let mut rotator = Rotator::new(
            source,
            RotationSettings {
                targets: vec![CredentialsTarget {
                    path: file.clone(),
                    profile: "default".into(),
                }],
                backoff_cap: cap,
                startup_spread: spread,
            },
            IdentityStore::new(dir.path()),
            clock.clone(),
            Arc::new(Fixed(jitter)),
        );
        if let Some(life) = seed {
            rotator.seed(
                TemporaryCredentials {
                    access_key_id: "ASIASEEDED".into(),
                    secret_access_key: Secret::new("s"),
                    session_token: Secret::new("t"),
                    expiration: clock.now() + Duration::from_secs(life as u64),
                },
                None,
            );
        }
        let status = rotator.status();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            rotator.run(async move {
                let _ = counted.wait_for(|n| *n >= stop_after).await;
            }),
        )
        .await
        .expect("the loop ends within 10 s of real time");
        let status = status.borrow().clone();
        Run {
            clock,
            fetches,
            result,
            status,
            file: std::fs::read_to_string(&file).unwrap_or_default(),
            _dir: dir,
        }
    }

    /// Refreshes at once, then at half the remaining life (jitter pinned high: +10 %), writes
    /// the file and publishes each set.
    #[tokio::test]
    async fn refreshes_at_half_the_remaining_life_and_publishes() {
        let r = run(&[Step::Ok(3600); 3], 3, 60 * S, None).await;
        assert!(r.result.is_ok());
        // 0, then 55 % of 3600 s after each refresh (the last one scheduled when it stopped).
        assert_eq!(
            r.clock.slept(),
            [Duration::ZERO, 1980 * S, 1980 * S, 1980 * S]
        );
        assert_eq!(r.status.state, "ok");
        assert_eq!(r.status.refreshes, 3);
        assert!(r.file.contains("ASIAROTATIONTEST0003"), "{}", r.file);
    }

    /// Credentials seeded from a previous run are used until half their life: no refresh at
    /// start.
    #[tokio::test]
    async fn seeded_credentials_delay_the_first_refresh() {
        let r = run(&[Step::Ok(3600)], 1, 60 * S, Some(1000)).await;
        assert_eq!(r.clock.slept(), [550 * S, 1980 * S]);
    }

    /// A loop that starts without credentials, or with expired ones (a site powering up after
    /// a long outage), waits a random share of the start-up spread before its first call, so a
    /// fleet does not call in the same second; seeded credentials still valid are refreshed on
    /// their own schedule, not later.
    #[tokio::test]
    async fn a_start_without_valid_credentials_spreads_the_first_refresh() {
        let spread = 30 * S;
        let r = run_spread(&[Step::Ok(3600)], 1, 60 * S, None, spread, 0.5).await;
        assert_eq!(r.clock.slept()[0], 15 * S, "no credentials");
        let r = run_spread(&[Step::Ok(3600)], 1, 60 * S, None, spread, 1.0).await;
        assert_eq!(
            r.clock.slept()[0],
            30 * S,
            "no credentials, jitter at its top"
        );
        let r = run_spread(&[Step::Ok(3600)], 1, 60 * S, Some(1000), spread, 0.5).await;
        assert_eq!(
            r.clock.slept()[0],
            500 * S,
            "valid seeded credentials: half their life"
        );
    }

    /// Retryable failures back off exponentially (full jitter pinned at its top), capped; the
    /// first success resets the state.
    #[tokio::test]
    async fn failures_back_off_to_the_cap_then_recover() {
        use Step::*;
        let r = run(
            &[Ok(3600), Err, Err, Err, Err, Err, Ok(3600)],
            7,
            4 * S,
            None,
        )
        .await;
        let slept = r.clock.slept();
        assert_eq!(
            &slept[..7],
            [Duration::ZERO, 1980 * S, S, 2 * S, 4 * S, 4 * S, 4 * S]
        );
        assert_eq!(r.status.state, "ok");
        assert_eq!(r.status.consecutive_failures, 0);
        assert_eq!(r.status.refreshes, 2);
        assert_eq!(r.fetches.load(Ordering::SeqCst), 7);
    }

    /// Close to expiry, retries are at most a quarter of the remaining life apart (and at least
    /// 250 ms), so several attempts still fit before the credentials expire; once expired, one
    /// a second at most.
    #[tokio::test]
    async fn retries_get_denser_near_expiry_and_never_spin_after_it() {
        let mut steps = vec![Step::Ok(40)];
        steps.extend([Step::Err; 30]);
        let r = run(&steps, 31, 60 * S, None).await;
        let slept = r.clock.slept();
        // 22 s to the refresh point (55 % of 40 s), 18 s of life left then.
        assert_eq!(slept[1], 22 * S);
        let mut left = 18.0f64;
        let mut before_expiry = 0;
        for d in &slept[2..] {
            let d = d.as_secs_f64();
            if left > 0.0 {
                assert!(
                    d <= left / 4.0 + 1e-9 || d <= 0.25 + 1e-9,
                    "{d} s with {left} s left"
                );
                assert!(d >= 0.25 - 1e-9, "{d} s");
                before_expiry += 1;
            } else {
                assert!(
                    d >= 1.0 - 1e-9,
                    "after expiry a retry waits at least 1 s: {d}"
                );
            }
            left -= d;
        }
        assert!(
            before_expiry >= 6,
            "only {before_expiry} attempts before expiry: {slept:?}"
        );
        assert_eq!(r.status.state, "retrying");
    }

    /// A service that hands out credentials already expired costs one call a second, not a
    /// busy loop.
    #[tokio::test]
    async fn expired_credentials_are_refreshed_at_most_once_a_second() {
        let r = run(&[Step::Ok(-3600); 20], 20, 60 * S, None).await;
        let slept = r.clock.slept();
        assert!(slept[1..].iter().all(|d| *d == S), "{slept:?}");
    }

    /// An error only re-registration fixes ends the loop with the command to run; nothing is
    /// retried after it.
    /// A loop that took over a dead one's channels passes on a key rotation asked for while no
    /// loop ran (before, the request was lost and the node refresh waited 120 s for a key that
    /// never came), and does not repeat one its predecessor passed on.
    #[tokio::test]
    async fn a_successor_passes_on_a_key_rotation_asked_while_no_loop_ran() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = TestClock::new();
        let rotator = |rotations: &Arc<AtomicU32>| {
            let (count, counted) = watch::channel(0u32);
            let r = Rotator::new(
                Scripted {
                    clock: clock.clone(),
                    steps: Mutex::new(VecDeque::new()),
                    fetches: Arc::new(AtomicU32::new(0)),
                    count,
                    rotations: rotations.clone(),
                },
                RotationSettings {
                    targets: Vec::new(),
                    backoff_cap: 60 * S,
                    startup_spread: Duration::ZERO,
                },
                IdentityStore::new(dir.path()),
                clock.clone(),
                Arc::new(Fixed(1.0)),
            );
            (r, counted)
        };
        // Runs a loop until its source was asked for a key or fetched 20 times.
        let run = |r: Rotator, mut counted: watch::Receiver<u32>| async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                r.run(async move {
                    let _ = counted.wait_for(|n| *n >= 20).await;
                }),
            )
            .await
            .expect("the loop ends within 10 s of real time")
        };

        // The first loop passes a request on.
        let first = Arc::new(AtomicU32::new(0));
        let (a, counted) = rotator(&first);
        let channels = a.channels();
        channels.key_rotation.send_modify(|n| *n += 1);
        assert!(run(a, counted).await.is_ok());
        assert_eq!(first.load(Ordering::SeqCst), 1);

        // Its successor does not repeat it.
        let second = Arc::new(AtomicU32::new(0));
        let (mut b, counted) = rotator(&second);
        b.adopt_channels(channels.clone());
        assert!(run(b, counted).await.is_ok());
        assert_eq!(
            second.load(Ordering::SeqCst),
            0,
            "repeated a handled request"
        );

        // A request made while no loop runs reaches the next one.
        channels.key_rotation.send_modify(|n| *n += 1);
        let third = Arc::new(AtomicU32::new(0));
        let (mut c, counted) = rotator(&third);
        c.adopt_channels(channels.clone());
        assert!(run(c, counted).await.is_ok());
        assert_eq!(third.load(Ordering::SeqCst), 1, "the request was lost");
    }

    #[tokio::test]
    async fn a_fatal_error_stops_the_loop_with_the_action() {
        let r = run(
            &[Step::Ok(3600), Step::Fatal, Step::Ok(3600)],
            99,
            60 * S,
            None,
        )
        .await;
        let e = r.result.expect_err("fatal");
        assert!(e.is_fatal());
        assert_eq!(r.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(r.status.state, "failed");
        let action = r
            .status
            .last_error
            .and_then(|e| e.action)
            .unwrap_or_default();
        assert!(action.contains("join --reregister"), "{action}");
        assert_eq!(r.clock.slept().len(), 2);
    }
}

#[cfg(test)]
mod overdue_tests {
    use super::*;

    fn status(issued: u64, exp: u64, error: Option<(u64, &str)>) -> IdentityStatus {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        IdentityStatus {
            provider: ProviderKind::Ssm,
            identity: "mi-0123456789abcdef0".into(),
            state: "retrying".into(),
            expiration: Some(t(exp)),
            last_refresh: Some(t(issued)),
            next_refresh: None,
            last_error: error.map(|(at, m)| LastError {
                at: t(at),
                message: m.into(),
                action: None,
            }),
            consecutive_failures: 0,
            refreshes: 0,
            key_id: None,
            key_rotation_error: None,
            failing_since: error.map(|_| t(1800)),
        }
    }

    #[test]
    fn overdue_below_a_quarter_of_the_lifetime_until_expiry() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let s = status(0, 3600, Some((2700, "InternalServerError")));
        assert_eq!(s.refresh_overdue(t(2700)), None, "exactly a quarter left");
        let o = s.refresh_overdue(t(2701)).expect("overdue");
        assert_eq!((o.remaining_secs, o.lifetime_secs), (899, 3600));
        assert_eq!(o.failing_since, Some(t(1800)));
        assert_eq!(o.cause.as_deref(), Some("InternalServerError"));
        assert_eq!(
            s.refresh_overdue(t(3600)),
            None,
            "expired is shown as expired"
        );
        // No attempt (daemon down): overdue all the same, with no cause.
        let o = status(0, 3600, None)
            .refresh_overdue(t(3000))
            .expect("overdue");
        assert_eq!((o.cause, o.failing_since), (None, None));
        // Unknown times: nothing to say.
        let mut s = status(0, 3600, None);
        s.last_refresh = None;
        assert_eq!(s.refresh_overdue(t(3500)), None);
    }
}
