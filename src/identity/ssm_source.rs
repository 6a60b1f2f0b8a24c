//! Credentials from SSM for a registered hybrid instance, and key-pair rotation.
//!
//! Key rotation (`UpdateManagedInstancePublicKey`, signed with the old key) is triggered by a
//! token response with `UpdateKeyPair=true` or by a configured maximum key age. It follows
//! docs/protocols.md "UpdateManagedInstancePublicKey" and can be interrupted anywhere without
//! losing the identity:
//!
//! 1. [`SsmSource::begin_key_rotation`]: generate the new key and persist it as the pending key
//!    *before* the service hears of it;
//! 2. [`SsmSource::send_key_update`]: tell the service, signed with the old key;
//! 3. on success, [`SsmSource::adopt_pending`]: promote the pending key (one rename);
//! 4. on failure, or when a pending key is found at start (the agent died between 1 and 3),
//!    [`SsmSource::resolve_pending`]: probe with the old key; if the service accepts it keep it
//!    and drop the pending one, else probe with the new key and adopt it if accepted. If neither
//!    probe gets an answer (network down), both keys stay on disk and the next refresh probes
//!    again. There is no path that deletes a key the service might still accept.

use std::time::{Duration, SystemTime};

use crate::identity::TemporaryCredentials;
use crate::identity::keys::InstanceKey;
use crate::identity::ssm::{RoleToken, SsmClient, SsmError};
use crate::identity::store::{IdentityStore, Registration, StoreError};

/// Why a refresh through SSM failed.
#[derive(Debug, thiserror::Error)]
pub enum SsmSourceError {
    #[error(transparent)]
    Ssm(#[from] SsmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "this host is not registered with SSM ({path} is missing); run `hybrid-agent join` first"
    )]
    NotRegistered { path: std::path::PathBuf },
    #[error("cannot generate a new instance key: {0}")]
    Key(#[from] crate::identity::keys::KeyError),
}

impl SsmSourceError {
    /// Only registering again helps: stop retrying and tell the operator.
    pub fn needs_reregistration(&self) -> bool {
        match self {
            SsmSourceError::Ssm(e) => e.needs_reregistration(),
            SsmSourceError::NotRegistered { .. } => true,
            SsmSourceError::Store(StoreError::Corrupt { .. } | StoreError::Key(_)) => true,
            _ => false,
        }
    }
}

/// How an interrupted key transition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingOutcome {
    /// No pending key.
    None,
    /// The service still accepts the old key; the pending one was dropped.
    KeptOld,
    /// The service accepts the new key; it is now the key.
    AdoptedNew,
}

/// How a key rotation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The service took the new key.
    Rotated,
    /// The update failed; the probe found the old key still accepted (rotation retried later).
    KeptOld,
    /// The update call failed but had reached the service: the new key is in use.
    AdoptedNew,
}

/// A registered instance that fetches its role credentials.
#[derive(Debug)]
pub struct SsmSource {
    client: SsmClient,
    store: IdentityStore,
    registration: Registration,
    fingerprint: String,
    key: InstanceKey,
    max_key_age: Option<Duration>,
    /// The service asked for a new key and the rotation has not succeeded yet.
    rotation_wanted: bool,
}

impl SsmSource {
    /// Loads the identity from `store`. A pending key is left for the first refresh to resolve.
    pub fn load(
        client: SsmClient,
        store: IdentityStore,
        max_key_age: Option<Duration>,
    ) -> Result<SsmSource, SsmSourceError> {
        let registration =
            store
                .load_registration()?
                .ok_or_else(|| SsmSourceError::NotRegistered {
                    path: store.registration_path(),
                })?;
        let fingerprint = store
            .load_fingerprint()?
            .ok_or_else(|| StoreError::Corrupt {
                path: store.fingerprint_path(),
                reason: "missing".into(),
            })?;
        let key = match store.load_key() {
            Ok(k) => k,
            // Crash between writing the pending key and promoting it on a first registration:
            // there is no old key, and the pending one is the only candidate.
            Err(StoreError::Key(crate::identity::keys::KeyError::Read { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound
                    && store.pending_key_path().exists() =>
            {
                store.promote_pending_key()?;
                store.load_key()?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(SsmSource {
            client,
            store,
            registration,
            fingerprint,
            key,
            max_key_age,
            rotation_wanted: false,
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.registration.instance_id
    }

    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Non-secret id of the key in use.
    pub fn key_id(&self) -> String {
        self.key.public_key_id()
    }

    pub fn client(&self) -> &SsmClient {
        &self.client
    }

    /// One credential refresh: resolve an interrupted key transition, fetch a token, rotate the
    /// key if asked to (a failed rotation is logged and retried on a later refresh; the
    /// credentials fetched are good either way).
    pub async fn fetch(&mut self) -> Result<TemporaryCredentials, SsmSourceError> {
        let mut token = match self.resolve_pending_token().await? {
            Some(t) => t,
            None => {
                self.client
                    .request_role_token(
                        &self.registration.instance_id,
                        &self.key,
                        &self.fingerprint,
                    )
                    .await?
            }
        };
        if token.update_key_pair {
            tracing::info!(instance_id = %self.registration.instance_id, "SSM asks for a new key pair (UpdateKeyPair)");
            self.rotation_wanted = true;
        }
        if self.rotation_wanted || self.key_too_old() {
            match self.rotate_key().await {
                Ok((outcome, fresh)) => {
                    tracing::info!(instance_id = %self.registration.instance_id, key = %self.key.public_key_id(), ?outcome, "key rotation finished");
                    if outcome != RotationOutcome::KeptOld {
                        self.rotation_wanted = false;
                    }
                    if let Some(t) = fresh {
                        token = t;
                    }
                }
                Err(e) => {
                    tracing::warn!(instance_id = %self.registration.instance_id, "key rotation did not complete, will retry on the next refresh: {e}")
                }
            }
        }
        Ok(token.credentials)
    }

    /// A new key pair with the next refresh (a node refresh asks, `[lifecycle] max_node_age`):
    /// the same rotation as when the service sets `UpdateKeyPair`.
    pub fn request_key_rotation(&mut self) {
        self.rotation_wanted = true;
    }

    fn key_too_old(&self) -> bool {
        let Some(max) = self.max_key_age else {
            return false;
        };
        SystemTime::now()
            .duration_since(self.registration.key_created_at)
            .is_ok_and(|age| age >= max)
    }

    /// Step 1: a new key, persisted as pending before anyone else knows it.
    pub fn begin_key_rotation(&self) -> Result<InstanceKey, SsmSourceError> {
        let new = InstanceKey::generate()?;
        self.store.save_pending_key(&new)?;
        Ok(new)
    }

    /// Step 2: UpdateManagedInstancePublicKey, signed with the current (old) key.
    pub async fn send_key_update(&self, new: &InstanceKey) -> Result<(), SsmError> {
        self.client
            .update_public_key(
                &self.registration.instance_id,
                &self.key,
                new.public_key_b64(),
            )
            .await
    }

    /// Step 3: the pending key becomes the key, on disk and here.
    pub fn adopt_pending(&mut self) -> Result<(), SsmSourceError> {
        let new = self
            .store
            .load_pending_key()?
            .ok_or_else(|| StoreError::Corrupt {
                path: self.store.pending_key_path(),
                reason: "pending key vanished before adoption".into(),
            })?;
        self.store.promote_pending_key()?;
        let mut reg = self.registration.clone();
        reg.key_created_at = SystemTime::now();
        self.store.save_registration(&reg)?;
        self.registration = reg;
        self.key = new;
        Ok(())
    }

    /// Steps 1–4 in order. Returns a token when the probe fetched one.
    pub async fn rotate_key(
        &mut self,
    ) -> Result<(RotationOutcome, Option<RoleToken>), SsmSourceError> {
        let new = self.begin_key_rotation()?;
        match self.send_key_update(&new).await {
            Ok(()) => {
                self.adopt_pending()?;
                Ok((RotationOutcome::Rotated, None))
            }
            Err(e) => {
                tracing::warn!(instance_id = %self.registration.instance_id, "UpdateManagedInstancePublicKey failed ({e}); probing which key the service accepts");
                let (outcome, token) = self.resolve_pending().await?;
                Ok((
                    match outcome {
                        PendingOutcome::AdoptedNew => RotationOutcome::AdoptedNew,
                        PendingOutcome::KeptOld | PendingOutcome::None => RotationOutcome::KeptOld,
                    },
                    token,
                ))
            }
        }
    }

    async fn resolve_pending_token(&mut self) -> Result<Option<RoleToken>, SsmSourceError> {
        Ok(self.resolve_pending().await?.1)
    }

    /// Step 4: with a pending key on disk, find out which key the service accepts.
    pub async fn resolve_pending(
        &mut self,
    ) -> Result<(PendingOutcome, Option<RoleToken>), SsmSourceError> {
        let Some(pending) = self.store.load_pending_key()? else {
            return Ok((PendingOutcome::None, None));
        };
        if pending.public_key_b64() == self.key.public_key_b64() {
            self.store.discard_pending_key()?;
            return Ok((PendingOutcome::None, None));
        }
        let id = self.registration.instance_id.clone();
        match self
            .client
            .request_role_token(&id, &self.key, &self.fingerprint)
            .await
        {
            Ok(token) => {
                self.store.discard_pending_key()?;
                tracing::info!(instance_id = %id, key = %self.key.public_key_id(), "the service accepts the old key; dropped the pending one");
                return Ok((PendingOutcome::KeptOld, Some(token)));
            }
            // No answer about the key: keep both and ask again later.
            Err(e) if e.is_transient() || e.needs_reregistration() => return Err(e.into()),
            Err(e) => {
                tracing::info!(instance_id = %id, "the service rejects the old key ({e}); probing the pending key")
            }
        }
        let token = self
            .client
            .request_role_token(&id, &pending, &self.fingerprint)
            .await?;
        self.adopt_pending()?;
        tracing::info!(instance_id = %id, key = %self.key.public_key_id(), "the service accepts the new key; adopted it");
        Ok((PendingOutcome::AdoptedNew, Some(token)))
    }
}
