//! The identity's files under `/var/lib/hybrid-agent/identity/`.
//!
//! - `fingerprint` — the UUID sent as `Fingerprint`. Generated once and never regenerated behind
//!   the operator's back: amazon-ssm-agent derived it from hardware and the instance was locked
//!   out (`MachineFingerprintDoesNotMatch` forever) after a reboot or OS upgrade (#73, #567).
//! - `instance.key` — the RSA key the service knows (PKCS#8 PEM, 0600).
//! - `instance.key.new` — a key not yet known to be accepted: written *before* the service is
//!   told about it (registration, key rotation), so there is no moment in which the service
//!   knows a key the disk does not. Its presence at start means a transition was interrupted;
//!   [`crate::identity::keyrotation`] resolves it by asking the service which key works.
//! - `registration.json` — instance id, region, key creation time: the commit point of
//!   registration, written last.
//! - `credentials.json` — provider, expiry and last refresh of the current credentials (no
//!   secrets), for `status` and for the daemon's start.
//!
//! Every write is atomic ([`crate::identity::atomic`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::identity::atomic::{self, AtomicWriteError};
use crate::identity::keys::{InstanceKey, KeyError};

/// Subdirectory of the agent state directory holding the identity.
pub const IDENTITY_DIR: &str = "identity";
pub const FINGERPRINT_FILE: &str = "fingerprint";
pub const KEY_FILE: &str = "instance.key";
pub const PENDING_KEY_FILE: &str = "instance.key.new";
pub const REGISTRATION_FILE: &str = "registration.json";
pub const CREDENTIALS_STATE_FILE: &str = "credentials.json";
/// Non-secret state files are still private to root: they name the instance.
const STATE_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is corrupt ({reason}); if the registration is lost, register again with `hybrid-agent join --reregister` and a new activation"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which credential provider the node uses (`eks.amazonaws.com/hybrid-credential-provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Ssm,
    IamRa,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Ssm => "ssm",
            ProviderKind::IamRa => "iam-ra",
        })
    }
}

/// What `registration.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub instance_id: String,
    pub region: String,
    pub activation_id: String,
    #[serde(with = "ts")]
    pub registered_at: SystemTime,
    /// When the key in `instance.key` was created (key-age rotation counts from here).
    #[serde(with = "ts")]
    pub key_created_at: SystemTime,
}

/// What `credentials.json` holds: no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsState {
    pub provider: ProviderKind,
    /// `mi-…` (SSM) or the certificate subject/serial (IAM Roles Anywhere).
    pub identity: String,
    pub access_key_id: String,
    /// Expiry on the host clock.
    #[serde(with = "ts")]
    pub expiration: SystemTime,
    #[serde(with = "ts")]
    pub last_refresh: SystemTime,
    /// Files holding these credentials.
    pub files: Vec<PathBuf>,
}

/// The identity directory of one host root.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    dir: PathBuf,
}

impl IdentityStore {
    /// `state_dir` is the agent state directory (`/var/lib/hybrid-agent` under `--root`).
    pub fn new(state_dir: &Path) -> IdentityStore {
        IdentityStore {
            dir: state_dir.join(IDENTITY_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn fingerprint_path(&self) -> PathBuf {
        self.dir.join(FINGERPRINT_FILE)
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }
    pub fn pending_key_path(&self) -> PathBuf {
        self.dir.join(PENDING_KEY_FILE)
    }
    pub fn registration_path(&self) -> PathBuf {
        self.dir.join(REGISTRATION_FILE)
    }
    pub fn credentials_state_path(&self) -> PathBuf {
        self.dir.join(CREDENTIALS_STATE_FILE)
    }

    /// The persisted fingerprint, `None` before the first registration. A file that is not a
    /// UUID is an error, not a reason to make a new one.
    pub fn load_fingerprint(&self) -> Result<Option<String>, StoreError> {
        let path = self.fingerprint_path();
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let fp = text.trim();
        match uuid::Uuid::try_parse(fp) {
            Ok(u) if fp.len() == 36 => Ok(Some(u.hyphenated().to_string())),
            _ => Err(StoreError::Corrupt {
                path,
                reason: "not a UUID".into(),
            }),
        }
    }

    pub fn save_fingerprint(&self, fingerprint: &str) -> Result<(), StoreError> {
        atomic::write_atomic(
            &self.fingerprint_path(),
            format!("{fingerprint}\n").as_bytes(),
            STATE_FILE_MODE,
        )?;
        Ok(())
    }

    /// Removes the fingerprint (only one that was never registered with).
    pub fn remove_fingerprint(&self) -> Result<(), StoreError> {
        let path = self.fingerprint_path();
        atomic::remove_durably(&path).map_err(|source| StoreError::Remove { path, source })
    }

    pub fn load_registration(&self) -> Result<Option<Registration>, StoreError> {
        load_json(&self.registration_path())
    }

    pub fn save_registration(&self, r: &Registration) -> Result<(), StoreError> {
        save_json(&self.registration_path(), r)
    }

    pub fn load_key(&self) -> Result<InstanceKey, StoreError> {
        Ok(InstanceKey::load(&self.key_path())?)
    }

    pub fn load_pending_key(&self) -> Result<Option<InstanceKey>, StoreError> {
        let path = self.pending_key_path();
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(InstanceKey::load(&path)?))
    }

    pub fn save_pending_key(&self, key: &InstanceKey) -> Result<(), StoreError> {
        key.save(&self.pending_key_path())?;
        Ok(())
    }

    /// The pending key becomes the key (one atomic rename, then the directory is synced).
    pub fn promote_pending_key(&self) -> Result<(), StoreError> {
        atomic::rename_durably(&self.pending_key_path(), &self.key_path())?;
        Ok(())
    }

    pub fn discard_pending_key(&self) -> Result<(), StoreError> {
        let path = self.pending_key_path();
        atomic::remove_durably(&path).map_err(|source| StoreError::Remove { path, source })
    }

    pub fn load_credentials_state(&self) -> Result<Option<CredentialsState>, StoreError> {
        load_json(&self.credentials_state_path())
    }

    pub fn save_credentials_state(&self, s: &CredentialsState) -> Result<(), StoreError> {
        save_json(&self.credentials_state_path(), s)
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    // Serialising plain structs of strings and times cannot fail; a failure would be a bug, and
    // an empty document is then detected as corrupt on the next read rather than panicking now.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    atomic::write_atomic(path, text.as_bytes(), STATE_FILE_MODE)?;
    Ok(())
}

/// SystemTime as RFC 3339 in JSON (readable by operators and `jq`).
pub mod ts {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;

    /// RFC 3339 of `t`, clamped to years 0000–9999 (what RFC 3339 can write): never panics,
    /// whatever time a service or a file produced (`OffsetDateTime::from` does, past 9999).
    pub fn format(t: SystemTime) -> String {
        let dt = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs())
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .map(|dt| dt.replace_nanosecond(d.subsec_nanos()).unwrap_or(dt))
                .unwrap_or(LATEST),
            Err(e) => {
                let d = e.duration();
                i64::try_from(d.as_secs())
                    .ok()
                    .and_then(|s| time::OffsetDateTime::from_unix_timestamp(-s).ok())
                    .unwrap_or(EARLIEST)
            }
        };
        dt.clamp(EARLIEST, LATEST)
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
    }

    const EARLIEST: time::OffsetDateTime = time::macros::datetime!(0000-01-01 00:00:00 UTC);
    const LATEST: time::OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

    /// `t` in RFC 3339 and relative to `now`, as `status` shows times:
    /// `2026-12-03T11:00:00Z (12s ago)`, `… (in 4m50s)`.
    pub fn when(t: SystemTime, now: SystemTime) -> String {
        let rel = match t.duration_since(now) {
            Ok(d) => format!("in {}", human(d)),
            Err(e) => format!("{} ago", human(e.duration())),
        };
        format!("{} ({rel})", format(t))
    }

    /// `42s`, `4m50s`, `3h07m`.
    pub fn human(d: std::time::Duration) -> String {
        let s = d.as_secs();
        match s {
            0..=59 => format!("{s}s"),
            60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
            _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        }
    }

    pub fn parse(s: &str) -> Option<SystemTime> {
        time::OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(SystemTime::from)
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time")))
    }

    /// The same for `Option<SystemTime>` (`null` when absent).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&format(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            match s {
                None => Ok(None),
                Some(s) => parse(&s).map(Some).ok_or_else(|| {
                    serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time"))
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fingerprint_round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IdentityStore::new(dir.path());
        assert_eq!(store.load_fingerprint().expect("load"), None);
        let fp = uuid::Uuid::new_v4().to_string();
        store.save_fingerprint(&fp).expect("save");
        assert_eq!(
            store.load_fingerprint().expect("load").as_deref(),
            Some(fp.as_str())
        );
        std::fs::write(store.fingerprint_path(), "hardware-hash-123").expect("corrupt");
        let e = store.load_fingerprint().expect_err("corrupt");
        assert!(
            e.to_string().contains("fingerprint") && e.to_string().contains("--reregister"),
            "{e}"
        );
    }

    #[test]
    fn formatting_any_time_never_panics_and_clamps() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000_000);
        assert_eq!(ts::format(far), "9999-12-31T23:59:59Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(100_000_000_000);
        assert_eq!(ts::format(before), "0000-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(ts::format(t), "2023-11-14T22:13:20.25Z");
        assert_eq!(ts::parse(&ts::format(t)), Some(t));
    }

    #[test]
    fn registration_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IdentityStore::new(dir.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = Registration {
            instance_id: "mi-0123456789abcdef0".into(),
            region: "us-west-2".into(),
            activation_id: "d4e5f6a7-0000-4000-8000-000000000000".into(),
            registered_at: t,
            key_created_at: t,
        };
        store.save_registration(&r).expect("save");
        assert_eq!(store.load_registration().expect("load"), Some(r));
        let text = std::fs::read_to_string(store.registration_path()).expect("read");
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
    }

    #[test]
    fn pending_key_promote_and_discard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IdentityStore::new(dir.path());
        let a = InstanceKey::generate().expect("key");
        store.save_pending_key(&a).expect("save");
        store.promote_pending_key().expect("promote");
        assert!(store.load_pending_key().expect("load").is_none());
        assert_eq!(
            store.load_key().expect("key").public_key_b64(),
            a.public_key_b64()
        );
        let b = InstanceKey::generate().expect("key");
        store.save_pending_key(&b).expect("save");
        store.discard_pending_key().expect("discard");
        assert!(store.load_pending_key().expect("load").is_none());
        assert_eq!(
            store.load_key().expect("key").public_key_b64(),
            a.public_key_b64()
        );
    }
}
