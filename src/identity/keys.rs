//! The instance's RSA-2048 key pair for SSM hybrid activation.
//!
//! SSM identifies a hybrid instance by the public key it registered (base64 DER
//! SubjectPublicKeyInfo, exactly 392 characters for RSA-2048) and authenticates its calls by an
//! RSASSA-PSS signature with the private key. aws-lc-rs generates and signs (ring cannot generate
//! RSA keys; the `rsa` crate had a timing advisory). The private key lives on disk as PKCS#8
//! PEM, mode 0600, written atomically, and in memory only inside this type, whose `Debug` shows
//! the public half alone.

use std::path::Path;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;

use crate::config::Secret;
use crate::identity::atomic::{self, AtomicWriteError, SECRET_FILE_MODE};
use crate::identity::pem;

/// Modulus size SSM requires (docs/protocols.md "RegisterManagedInstance": a fresh RSA-2048 key).
pub const RSA_BITS: usize = 2048;
/// Length of the base64 SPKI of an RSA-2048 key, what RegisterManagedInstance checks.
pub const PUBLIC_KEY_B64_LEN: usize = 392;
/// `PublicKeyType` / `NewPublicKeyType` value on the wire.
pub const PUBLIC_KEY_TYPE: &str = "Rsa";
const PEM_LABEL: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an RSA-{RSA_BITS} key (aws-lc-rs reported an unspecified failure)")]
    Generate,
    #[error("cannot encode the instance key as PKCS#8")]
    Encode,
    #[error("cannot read instance key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "instance key {path} is not a PKCS#8 RSA-{RSA_BITS} private key ({reason}); the key is lost, so this host must register again: `hybrid-agent join --reregister` with a new activation"
    )]
    Invalid {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot store instance key: {0}")]
    Write(#[from] AtomicWriteError),
    #[error("RSA-PSS signing failed")]
    Sign,
}

/// An RSA-2048 key pair with its cached public SPKI (base64).
pub struct InstanceKey {
    pair: RsaKeyPair,
    /// PKCS#8 DER of the private key (never printed: `Debug` is implemented by hand below).
    pkcs8: Vec<u8>,
    public_key_b64: String,
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InstanceKey {{ public: {} }}", self.public_key_id())
    }
}

impl InstanceKey {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| KeyError::Encode)?;
        Self::from_parts(pair, pkcs8.as_ref().to_vec()).map_err(|_| KeyError::Encode)
    }

    /// Parses a PKCS#8 DER key; rejects anything but RSA-2048 (SSM would).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair =
            RsaKeyPair::from_pkcs8(der).map_err(|e| format!("rejected by aws-lc-rs: {e}"))?;
        Self::from_parts(pair, der.to_vec())
    }

    fn from_parts(pair: RsaKeyPair, pkcs8: Vec<u8>) -> Result<Self, String> {
        if pair.public_modulus_len() * 8 != RSA_BITS {
            return Err(format!(
                "modulus is {} bits, not {RSA_BITS}",
                pair.public_modulus_len() * 8
            ));
        }
        let spki: PublicKeyX509Der<'static> = pair
            .public_key()
            .as_der()
            .map_err(|_| "cannot encode the public key".to_string())?;
        let public_key_b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
        Ok(InstanceKey {
            pair,
            pkcs8,
            public_key_b64,
        })
    }

    /// Standard base64 of the DER SubjectPublicKeyInfo: `PublicKey` in RegisterManagedInstance.
    pub fn public_key_b64(&self) -> &str {
        &self.public_key_b64
    }

    /// A short, non-secret identifier of the public key for logs and status: the first 16 hex
    /// digits of its SHA-256.
    pub fn public_key_id(&self) -> String {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.public_key_b64.as_bytes());
        hex::encode(&digest.as_ref()[..8])
    }

    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt over `message`
    /// (docs/protocols.md "Signing instance calls").
    pub fn sign_pss(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(
                &aws_lc_rs::signature::RSA_PSS_SHA256,
                &rng,
                message,
                &mut sig,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(sig)
    }

    /// The PKCS#8 PEM text, for storing.
    pub fn to_pem(&self) -> Secret {
        Secret::new(pem::encode(PEM_LABEL, &self.pkcs8))
    }

    /// Writes the key to `path` atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        atomic::write_atomic(path, self.to_pem().expose().as_bytes(), SECRET_FILE_MODE)?;
        Ok(())
    }

    /// Reads a key written by [`InstanceKey::save`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let blocks = pem::decode_all(&text).map_err(|e| invalid(e.to_string()))?;
        let block = blocks
            .iter()
            .find(|b| b.label == PEM_LABEL)
            .ok_or_else(|| invalid(format!("no `{PEM_LABEL}` block")))?;
        Self::from_pkcs8(&block.der).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_store_load_sign_verify() {
        let key = InstanceKey::generate().expect("generate");
        assert_eq!(key.public_key_b64().len(), PUBLIC_KEY_B64_LEN);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/instance.key");
        key.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = InstanceKey::load(&path).expect("load");
        assert_eq!(back.public_key_b64(), key.public_key_b64());

        let sig = back.sign_pss(b"string to sign").expect("sign");
        let spki = base64::engine::general_purpose::STANDARD
            .decode(key.public_key_b64())
            .expect("b64");
        // Verify with the SPKI exactly as the service receives it.
        let pk = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            &spki,
        );
        let pk = pk.expect("parse spki");
        pk.verify_sig(b"string to sign", &sig)
            .expect("signature verifies");
        assert!(pk.verify_sig(b"string to sigN", &sig).is_err());
        // PSS is randomised: two signatures of one message differ.
        assert_ne!(sig, back.sign_pss(b"string to sign").expect("sign"));
    }

    #[test]
    fn debug_shows_no_private_material() {
        let key = InstanceKey::generate().expect("generate");
        let dbg = format!("{key:?}");
        let pem = key.to_pem();
        let body_line = pem.expose().lines().nth(1).expect("pem body");
        assert!(!dbg.contains(body_line));
        assert!(dbg.contains(&key.public_key_id()));
    }

    #[test]
    fn corrupt_key_file_names_the_path_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("instance.key");
        std::fs::write(&path, pem::encode("PRIVATE KEY", b"not a key")).expect("write");
        let err = InstanceKey::load(&path).expect_err("garbage");
        let msg = err.to_string();
        assert!(
            msg.contains("instance.key") && msg.contains("--reregister"),
            "{msg}"
        );
    }
}
