//! The agent's own AWS SDK clients (CloudWatch Logs, metrics, EKS, STS) get their credentials
//! here, straight from the rotation loop, not by re-reading the shared credentials file: the
//! file is for the kubelet; in-process, a watch channel hands over each rotated set the moment it
//! exists, with no parsing and no window in which a half-written file could be read.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use tokio::sync::watch;

use crate::config::Secret;

/// How long an SDK call waits for the first (or a fresh) set of credentials before failing.
/// Long enough to ride out the first refresh at start, short enough that a call made during an
/// outage fails instead of hanging.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// `provider_name` the SDK records on the credentials (shows up in SDK debug logs).
pub const PROVIDER_NAME: &str = "hybrid-agent-rotation";

/// Temporary AWS credentials, from either identity provider (SSM or IAM Roles Anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryCredentials {
    /// Not secret on its own (AWS prints access key ids in CloudTrail and error messages).
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// Expiry on the host clock (the service's expiry corrected by the measured clock skew).
    pub expiration: SystemTime,
}

/// A [`ProvideCredentials`] fed by a watch channel of credentials (the daemon's credential
/// rotation loop publishes on it).
#[derive(Debug, Clone)]
pub struct RotatingCredentials {
    rx: watch::Receiver<Option<TemporaryCredentials>>,
    wait: Duration,
}

impl RotatingCredentials {
    pub fn new(rx: watch::Receiver<Option<TemporaryCredentials>>) -> RotatingCredentials {
        RotatingCredentials {
            rx,
            wait: DEFAULT_WAIT,
        }
    }

    pub fn with_wait(mut self, wait: Duration) -> RotatingCredentials {
        self.wait = wait;
        self
    }

    /// As the SDK config wants it.
    pub fn shared(self) -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(self)
    }

    async fn current(&self) -> Result<Credentials, CredentialsError> {
        let mut rx = self.rx.clone();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if let Some(c) = rx.borrow_and_update().as_ref()
                && c.expiration > SystemTime::now()
            {
                return Ok(Credentials::new(
                    c.access_key_id.clone(),
                    c.secret_access_key.expose().to_string(),
                    Some(c.session_token.expose().to_string()),
                    Some(c.expiration),
                    PROVIDER_NAME,
                ));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(CredentialsError::provider_error(
                        "the credential rotation loop has stopped; see `hybrid-agent status` for its last error",
                    ));
                }
                Err(_) => {
                    return Err(CredentialsError::not_loaded(format!(
                        "no valid credentials within {} s: the identity has not refreshed them yet (see `hybrid-agent status`)",
                        self.wait.as_secs()
                    )));
                }
            }
        }
    }
}

impl ProvideCredentials for RotatingCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn creds(id: &str, valid_for: Duration) -> TemporaryCredentials {
        TemporaryCredentials {
            access_key_id: id.into(),
            secret_access_key: Secret::new("s"),
            session_token: Secret::new("t"),
            expiration: SystemTime::now() + valid_for,
        }
    }

    #[tokio::test]
    async fn waits_for_the_first_set_then_follows_rotation() {
        let (tx, rx) = watch::channel(None);
        let p = RotatingCredentials::new(rx).with_wait(Duration::from_secs(5));
        let pending = tokio::spawn({
            let p = p.clone();
            async move { p.provide_credentials().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Some(creds("ASIA1", Duration::from_secs(60))));
        let c = pending.await.expect("join").expect("creds");
        assert_eq!(c.access_key_id(), "ASIA1");
        assert_eq!(c.session_token(), Some("t"));
        tx.send_replace(Some(creds("ASIA2", Duration::from_secs(60))));
        assert_eq!(
            p.provide_credentials()
                .await
                .expect("creds")
                .access_key_id(),
            "ASIA2"
        );
    }

    #[tokio::test]
    async fn expired_or_missing_fails_after_the_wait() {
        let (tx, rx) = watch::channel(Some(creds("OLD", Duration::ZERO)));
        let p = RotatingCredentials::new(rx).with_wait(Duration::from_millis(100));
        let e = p.provide_credentials().await.expect_err("expired");
        assert!(
            format!("{e}").contains("not loaded")
                || format!("{e:?}").contains("no valid credentials"),
            "{e:?}"
        );
        drop(tx);
        let e = p.provide_credentials().await.expect_err("stopped");
        assert!(format!("{e:?}").contains("stopped"), "{e:?}");
    }
}
