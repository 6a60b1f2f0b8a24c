//! SSM hybrid registration: the `identity` phase of `hybrid-agent join` for SSM activations.
//!
//! A registered host reuses its identity when `join` runs again; `--reregister` makes a fresh
//! one on purpose. The new key is saved (as `instance.key.new`, with the fingerprint) *before*
//! RegisterManagedInstance, so there is no moment in which the service accepts a key the disk
//! does not hold; a registration that fails removes them again, leaving the host as it was.
//! Right after the service accepted, the caller is told the instance id ([`ensure_registered`]'s
//! `on_registered`, which `join` notes in its journal) before anything else can fail, so an
//! undo always knows what to deregister and has the key to do it with. Then `registration.json`
//! (the commit point) is written and the key promoted. A crash before the promotion leaves a
//! pending key that the first credential refresh resolves by asking the service
//! ([`crate::identity::ssm_source`]).

use std::time::{Duration, SystemTime};

use crate::config::Secret;
use crate::identity::keys::{InstanceKey, KeyError};
use crate::identity::schedule::{self, Jitter, RandomJitter};
use crate::identity::ssm::{SsmClient, SsmError, codes};
use crate::identity::store::{IdentityStore, Registration, StoreError};

/// Attempts at RegisterManagedInstance when the failure is transient (InternalServerError,
/// TooManyUpdates, throttling, network). A join should not hang for minutes: three tries over
/// a few seconds, then the operator sees the error.
pub const REGISTER_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled for the third. Each wait is jittered ±50 %
/// ([`register_retry_delay`]): hosts joined by one automation run with one activation would
/// otherwise retry in the same second.
pub const REGISTER_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Wait before retry number `attempt` (0 = the second call) of registration or of join's first
/// credentials: [`REGISTER_RETRY_DELAY`]·2^attempt, uniform in [½, 1½] of it.
pub fn register_retry_delay(attempt: u32, jitter: &dyn Jitter) -> Duration {
    schedule::equal_jitter_delay(REGISTER_RETRY_DELAY, attempt, jitter)
}

/// The activation `join` registers with.
#[derive(Debug, Clone)]
pub struct Activation {
    pub id: String,
    pub code: Secret,
}

/// Why registration failed, each with what to do about it. Nothing was written in any case
/// but [`RegisterError::Store`] after a successful registration (which says so).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "SSM activation {activation_id} has expired (an activation is valid until the expiry set when it was created, at most 30 days). Create a new one, e.g. `aws ssm create-activation --iam-role <hybrid nodes role> --registration-limit 1 --region {region}`, and run `hybrid-agent join` again with its id and code. Nothing was written to this host."
    )]
    ActivationExpired {
        activation_id: String,
        region: String,
    },
    #[error(
        "SSM rejected activation {activation_id} in region {region} ({message}). Check that the activation id and code are a pair (copy both from the create-activation output) and that the region is the one the activation was created in. Nothing was written to this host."
    )]
    InvalidActivation {
        activation_id: String,
        region: String,
        message: String,
    },
    #[error(
        "SSM activation {activation_id} has reached its registration limit: it has registered as many machines as it allows. Deregister machines that are gone (`aws ssm deregister-managed-instance --instance-id mi-…`), or create an activation with a higher --registration-limit. Nothing was written to this host."
    )]
    RegistrationLimit { activation_id: String },
    #[error(
        "{source}. Nothing was written to this host; run `hybrid-agent join` again once the endpoint is reachable."
    )]
    Network { source: SsmError },
    #[error("{source}. Nothing was written to this host.")]
    Tls { source: SsmError },
    #[error("{source}. Nothing was written to this host.")]
    Rejected { source: SsmError },
    #[error("cannot create the instance key: {0}. Nothing was written to this host.")]
    Key(#[from] KeyError),
    #[error(
        "instance {instance_id} was registered with SSM but its state could not be saved: {source}. Fix the problem, deregister {instance_id} (`aws ssm deregister-managed-instance --instance-id {instance_id}`) and run `hybrid-agent join` again."
    )]
    Store {
        instance_id: String,
        source: StoreError,
    },
    #[error("the existing registration cannot be used: {0}")]
    Existing(StoreError),
    #[error(
        "cannot save the new instance key before registering: {0}. Nothing was registered; fix the problem and run `hybrid-agent join` again."
    )]
    Prepare(StoreError),
    #[error(
        "instance {instance_id} was registered with SSM but could not be recorded for undoing: {message}. Deregister it (`aws ssm deregister-managed-instance --instance-id {instance_id}`), fix the problem and run `hybrid-agent join` again."
    )]
    Record {
        instance_id: String,
        message: String,
    },
}

/// What `join`'s identity phase found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The host was already registered; its identity is kept.
    Reused(Registration),
    /// A new registration.
    Registered(Registration),
}

impl RegisterOutcome {
    pub fn registration(&self) -> &Registration {
        match self {
            RegisterOutcome::Reused(r) | RegisterOutcome::Registered(r) => r,
        }
    }
}

/// Called with a fresh registration as soon as the service accepted it, before anything else
/// can fail: `join` notes the instance id in its journal here. An error is reported as
/// [`RegisterError::Record`].
pub type OnRegistered<'a> = dyn FnMut(&Registration) -> Result<(), String> + 'a;

/// Registers this host unless it already is (or `reregister` asks for a fresh identity).
pub async fn ensure_registered(
    client: &SsmClient,
    store: &IdentityStore,
    activation: &Activation,
    reregister: bool,
    on_registered: &mut OnRegistered<'_>,
) -> Result<RegisterOutcome, RegisterError> {
    if !reregister
        && let Some(existing) = store.load_registration().map_err(RegisterError::Existing)?
    {
        // The identity must be usable, or re-running join would "succeed" with nothing working.
        store
            .load_fingerprint()
            .map_err(RegisterError::Existing)?
            .ok_or_else(|| {
                RegisterError::Existing(StoreError::Corrupt {
                    path: store.fingerprint_path(),
                    reason: "missing".into(),
                })
            })?;
        if store
            .load_pending_key()
            .map_err(RegisterError::Existing)?
            .is_none()
        {
            store.load_key().map_err(RegisterError::Existing)?;
        }
        if existing.activation_id != activation.id {
            tracing::warn!(
                instance_id = %existing.instance_id,
                "this host is already registered as {} (activation {}); keeping that identity. To register with activation {} instead, run join with --reregister",
                existing.instance_id, existing.activation_id, activation.id
            );
        } else {
            tracing::info!(instance_id = %existing.instance_id, "already registered; reusing the identity");
        }
        return Ok(RegisterOutcome::Reused(existing));
    }

    // A fingerprint is generated once per host and kept across re-registrations; a corrupt
    // one stops here rather than being silently replaced.
    let stored_fingerprint = store.load_fingerprint().map_err(RegisterError::Existing)?;
    let fingerprint = stored_fingerprint
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let key = InstanceKey::generate()?;
    let region = client.region().to_string();

    // Saved before the service can accept them: a crash after RegisterManagedInstance must not
    // lose the only key the new instance answers to.
    let prepare = || -> Result<(), StoreError> {
        store.save_pending_key(&key)?;
        if stored_fingerprint.is_none() {
            store.save_fingerprint(&fingerprint)?;
        }
        Ok(())
    };
    if let Err(e) = prepare() {
        unprepare(store, stored_fingerprint.is_none());
        return Err(RegisterError::Prepare(e));
    }
    let instance_id =
        match register_with_retries(client, activation, &key, &fingerprint, &RandomJitter).await {
            Ok(id) => id,
            Err(e) => {
                unprepare(store, stored_fingerprint.is_none());
                return Err(classify(e, activation, &region));
            }
        };
    tracing::info!(%instance_id, key = %key.public_key_id(), "registered with SSM");

    let now = SystemTime::now();
    let registration = Registration {
        instance_id: instance_id.clone(),
        region,
        activation_id: activation.id.clone(),
        registered_at: now,
        key_created_at: now,
    };
    on_registered(&registration).map_err(|message| RegisterError::Record {
        instance_id: instance_id.clone(),
        message,
    })?;
    let persist = || -> Result<(), StoreError> {
        store.save_registration(&registration)?;
        store.promote_pending_key()?;
        Ok(())
    };
    persist().map_err(|source| RegisterError::Store {
        instance_id,
        source,
    })?;
    Ok(RegisterOutcome::Registered(registration))
}

/// Removes what was saved before a registration that did not happen (best effort: a leftover
/// pending key is resolved by the next refresh, a fingerprint is reused by the next join).
fn unprepare(store: &IdentityStore, fingerprint_is_new: bool) {
    if let Err(e) = store.discard_pending_key() {
        tracing::warn!("cannot remove the unused instance key: {e}");
    }
    if fingerprint_is_new && let Err(e) = store.remove_fingerprint() {
        tracing::warn!("cannot remove the unused fingerprint: {e}");
    }
}

async fn register_with_retries(
    client: &SsmClient,
    activation: &Activation,
    key: &InstanceKey,
    fingerprint: &str,
    jitter: &dyn Jitter,
) -> Result<String, SsmError> {
    let mut attempt = 1;
    loop {
        match client
            .register(&activation.id, &activation.code, key, fingerprint)
            .await
        {
            Ok(id) => return Ok(id),
            Err(e) if e.is_transient() && attempt < REGISTER_ATTEMPTS => {
                let delay = register_retry_delay(attempt - 1, jitter);
                tracing::warn!(
                    attempt,
                    "registration failed, retrying in {} ms: {e}",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn classify(e: SsmError, activation: &Activation, region: &str) -> RegisterError {
    match e.code() {
        Some(codes::ACTIVATION_EXPIRED) => RegisterError::ActivationExpired {
            activation_id: activation.id.clone(),
            region: region.to_string(),
        },
        Some(codes::INVALID_ACTIVATION) => RegisterError::InvalidActivation {
            activation_id: activation.id.clone(),
            region: region.to_string(),
            message: match &e {
                SsmError::Api { message, .. } => message.clone(),
                _ => String::new(),
            },
        },
        Some(codes::REGISTRATION_LIMIT) => RegisterError::RegistrationLimit {
            activation_id: activation.id.clone(),
        },
        _ => match e {
            SsmError::Network { .. } => RegisterError::Network { source: e },
            SsmError::Tls { .. } => RegisterError::Tls { source: e },
            other => RegisterError::Rejected { source: other },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    /// Registration retries are jittered (a fleet joined by one automation run used to retry
    /// at exactly 1 s and 2 s) yet stay about a second apart, doubling.
    #[test]
    fn registration_retries_are_jittered_and_double() {
        let ms = |a, j| register_retry_delay(a, &Fixed(j)).as_millis();
        assert_eq!((ms(0, 0.0), ms(0, 0.5), ms(0, 1.0)), (500, 1000, 1500));
        assert_eq!((ms(1, 0.0), ms(1, 0.5), ms(1, 1.0)), (1000, 2000, 3000));
        let spread: std::collections::BTreeSet<_> = (0..200)
            .map(|_| register_retry_delay(0, &RandomJitter).as_millis())
            .collect();
        assert!(spread.len() > 150, "{} distinct waits of 200", spread.len());
    }
}
