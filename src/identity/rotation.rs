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
}

/// Knobs of the loop.
#[derive(Debug, Clone)]
pub struct RotationSettings {
    /// Files to maintain (the shared credentials file, plus `/eks-hybrid/.aws/credentials` with
    /// `enableCredentialsFile`).
    pub targets: Vec<CredentialsTarget>,
    /// Upper bound of one retry wait.
    pub backoff_cap: Duration,
}

/// The two channels a rotation loop publishes on. The daemon hands the same pair to every
/// instance it starts, so a loop restarted after a panic goes on feeding the receivers the
/// daemon's AWS clients and status already hold.
#[derive(Debug, Clone)]
pub struct RotationChannels {
    pub credentials: watch::Sender<Option<TemporaryCredentials>>,
    pub status: watch::Sender<IdentityStatus>,
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
        };
        Rotator {
            source,
            settings,
            store,
            clock,
            jitter,
            credentials: watch::Sender::new(None),
            status: watch::Sender::new(status),
        }
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
        loop {
            let expiration = self.credentials.borrow().as_ref().map(|c| c.expiration);
            let delay = match expiration {
                Some(exp) => schedule::refresh_delay(self.clock.now(), exp, self.jitter.as_ref()),
                None => Duration::ZERO,
            };
            let next = self.clock.now() + delay;
            self.status.send_modify(|s| s.next_refresh = Some(next));
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            let mut attempt: u32 = 0;
            loop {
                match self.refresh_once().await {
                    Ok(_) => break,
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
                            s.next_refresh = Some(now + wait);
                            s.last_error = Some(LastError {
                                at: now,
                                message: e.to_string(),
                                action: None,
                            });
                        });
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            _ = &mut shutdown => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    }
}
