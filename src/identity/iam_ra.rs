//! IAM Roles Anywhere: temporary credentials for a host that holds an X.509 certificate issued
//! by a CA registered as a trust anchor (NodeConfig `hybrid.iamRolesAnywhere`).
//!
//! `CreateSession` is not in aws-sdk-rust; AWS ships a separate signing helper binary for it.
//! The request is SigV4 with the certificate's key instead of an HMAC secret
//! (docs/protocols.md "IAM Roles Anywhere CreateSession"):
//! algorithm `AWS4-X509-RSA-SHA256` (PKCS#1 v1.5) or `AWS4-X509-ECDSA-SHA256` (DER signature),
//! hex signature, the certificate's decimal serial as the credential, the leaf certificate in
//! `X-Amz-X509` and any intermediates (the further certificates in the certificate file, in
//! order) in `X-Amz-X509-Chain`.
//!
//! Certificate and key are read again at every refresh: certificates are short-lived and renewed
//! by tooling outside the agent (cert-manager, a cron job), and a renewed file must be picked up
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use reqwest::Url;
use serde::Deserialize;

use crate::aws::http::{Answer, BodyError, TransportKind, classify, read_answer};
use crate::config::Secret;
use crate::identity::TemporaryCredentials;
use crate::identity::clock::{SkewChange, SkewedClock};
use crate::identity::pem;
use crate::identity::sigv4::{self, CanonicalInput, SigningTime};

/// SigV4 signing name of IAM Roles Anywhere.
pub const SIGNING_SERVICE: &str = "rolesanywhere";
/// CreateSession path.
pub const SESSIONS_PATH: &str = "/sessions";
pub const CONTENT_TYPE: &str = "application/json";
pub const ALG_RSA: &str = "AWS4-X509-RSA-SHA256";
pub const ALG_ECDSA: &str = "AWS4-X509-ECDSA-SHA256";
/// `durationSeconds` asked for: CreateSession's default (API reference: 900–43200, default 3600).
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(3600);

/// Where to get a session and with what.
#[derive(Debug, Clone)]
pub struct IamRaSettings {
    pub endpoint: Url,
    pub region: String,
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
    /// PEM: the leaf certificate first, then intermediates (optional).
    pub certificate_path: PathBuf,
    /// PEM: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub private_key_path: PathBuf,
    /// `roleSessionName` (nodeadm uses the node name).
    pub session_name: Option<String>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IamRaError {
    #[error("cannot read the IAM Roles Anywhere {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("IAM Roles Anywhere certificate {path} is not usable: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error(
        "IAM Roles Anywhere certificate {path} expired at {not_after}; renew it (the agent reads the file again at every refresh)"
    )]
    CertificateExpired { path: PathBuf, not_after: String },
    #[error("IAM Roles Anywhere private key {path} is not usable: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "private key {key} does not belong to certificate {cert}; point both settings at the same key pair"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("IAM Roles Anywhere CreateSession at {endpoint} failed: {code}: {message}")]
    Api {
        endpoint: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "TLS with {endpoint} failed during IAM Roles Anywhere CreateSession: {detail}; if a proxy or TLS inspection sits in the path, add its CA with `extra_ca_bundle` in the agent config"
    )]
    Tls { endpoint: String, detail: String },
    #[error(
        "cannot reach {endpoint} for IAM Roles Anywhere CreateSession: {detail}; check DNS, routing, the proxy setting and AWS_ENDPOINT_URL_ROLESANYWHERE"
    )]
    Network { endpoint: String, detail: String },
    #[error(
        "IAM Roles Anywhere CreateSession at {endpoint} returned an unexpected response: {detail}"
    )]
    Response { endpoint: String, detail: String },
    #[error("signing with the IAM Roles Anywhere private key failed")]
    Sign,
}

/// The certificate key, RSA or ECDSA P-256.
pub enum SigningKey {
    Rsa(aws_lc_rs::rsa::KeyPair),
    EcdsaP256(aws_lc_rs::signature::EcdsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Rsa(_) => "SigningKey::Rsa",
            SigningKey::EcdsaP256(_) => "SigningKey::EcdsaP256",
        })
    }
}

impl SigningKey {
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => ALG_RSA,
            SigningKey::EcdsaP256(_) => ALG_ECDSA,
        }
    }

    /// PKCS#1 v1.5 SHA-256 (RSA) or DER-encoded ECDSA P-256 SHA-256 over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IamRaError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| IamRaError::Sign)?;
                Ok(sig)
            }
            SigningKey::EcdsaP256(k) => Ok(k
                .sign(&rng, msg)
                .map_err(|_| IamRaError::Sign)?
                .as_ref()
                .to_vec()),
        }
    }

    /// DER SubjectPublicKeyInfo of the public half, to compare with the certificate's.
    fn spki(&self) -> Option<Vec<u8>> {
        match self {
            SigningKey::Rsa(k) => {
                let d: PublicKeyX509Der<'static> = k.public_key().as_der().ok()?;
                Some(d.as_ref().to_vec())
            }
            SigningKey::EcdsaP256(k) => {
                let d: PublicKeyX509Der<'static> = k.public_key().as_der().ok()?;
                Some(d.as_ref().to_vec())
            }
        }
    }

    /// Reads a PEM private key.
    pub fn load(path: &Path) -> Result<SigningKey, IamRaError> {
        let text =
            Secret::new(
                std::fs::read_to_string(path).map_err(|source| IamRaError::Read {
                    what: "private key",
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        let bad = |reason: &str| IamRaError::Key {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let blocks = pem::decode_all(text.expose()).map_err(|e| bad(&e.to_string()))?;
        let ecdsa = &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        for b in &blocks {
            match b.label.as_str() {
                "PRIVATE KEY" => {
                    if let Ok(k) = aws_lc_rs::rsa::KeyPair::from_pkcs8(&b.der) {
                        return Ok(SigningKey::Rsa(k));
                    }
                    return aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(ecdsa, &b.der)
                        .map(SigningKey::EcdsaP256)
                        .map_err(|_| bad("a PKCS#8 key that is neither RSA nor ECDSA P-256"));
                }
                "RSA PRIVATE KEY" => {
                    return aws_lc_rs::rsa::KeyPair::from_der(&b.der)
                        .map(SigningKey::Rsa)
                        .map_err(|_| bad("not a valid PKCS#1 RSA key"));
                }
                "EC PRIVATE KEY" => {
                    return aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(ecdsa, &b.der)
                        .map(SigningKey::EcdsaP256)
                        .map_err(|_| {
                            bad("not a valid SEC1 ECDSA P-256 key (only P-256 is supported)")
                        });
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(bad(
                        "the key is encrypted; give the agent an unencrypted key file readable only by root",
                    ));
                }
                _ => {}
            }
        }
        Err(bad(
            "no `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block",
        ))
    }
}

/// The certificate file: leaf and intermediates.
#[derive(Debug, Clone)]
pub struct CertificateChain {
    pub leaf_der: Vec<u8>,
    pub intermediates_der: Vec<Vec<u8>>,
    /// The serial number in decimal: the `Credential=` of the Authorization header.
    pub serial_decimal: String,
    pub subject: String,
    pub not_after: SystemTime,
    spki_der: Vec<u8>,
}

impl CertificateChain {
    pub fn load(path: &Path) -> Result<CertificateChain, IamRaError> {
        let text = std::fs::read_to_string(path).map_err(|source| IamRaError::Read {
            what: "certificate",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| IamRaError::Certificate {
            path: path.to_path_buf(),
            reason,
        };
        let blocks = pem::decode_all(&text).map_err(|e| bad(e.to_string()))?;
        let mut certs = blocks
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| b.der);
        let leaf_der = certs
            .next()
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?;
        let intermediates_der: Vec<Vec<u8>> = certs.collect();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf_der)
            .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        Ok(CertificateChain {
            serial_decimal: cert.tbs_certificate.serial.to_string(),
            subject: cert.subject().to_string(),
            not_after,
            spki_der: cert.public_key().raw.to_vec(),
            intermediates_der,
            leaf_der,
        })
    }
}

/// A CreateSession request ready to send: URL with the canonical query, every header including
/// `Authorization`.
#[derive(Debug, Clone)]
pub struct SignedSession {
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
}

/// Signs a CreateSession request for `body` at `time` (docs/protocols.md "IAM Roles Anywhere
/// CreateSession"). Pure: no I/O, so the
/// canonicalisation is testable and tests can tamper with the result.
pub fn sign_create_session(
    settings: &IamRaSettings,
    chain: &CertificateChain,
    key: &SigningKey,
    time: SystemTime,
    body: &[u8],
) -> Result<SignedSession, IamRaError> {
    let host = sigv4::host_header(&settings.endpoint).ok_or_else(|| IamRaError::Response {
        endpoint: settings.endpoint.to_string(),
        detail: "the endpoint URL has no host".into(),
    })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let x509 = b64.encode(&chain.leaf_der);
    let chain_header = (!chain.intermediates_der.is_empty()).then(|| {
        chain
            .intermediates_der
            .iter()
            .map(|c| b64.encode(c))
            .collect::<Vec<_>>()
            .join(",")
    });
    let time = SigningTime::new(time);
    let query = sigv4::canonical_query(&[
        ("profileArn", settings.profile_arn.as_str()),
        ("roleArn", settings.role_arn.as_str()),
        ("trustAnchorArn", settings.trust_anchor_arn.as_str()),
    ]);
    let mut headers: Vec<(&'static str, String)> = vec![
        ("content-type", CONTENT_TYPE.to_string()),
        ("host", host),
        ("x-amz-date", time.amz_date.clone()),
        ("x-amz-x509", x509),
    ];
    if let Some(c) = chain_header {
        headers.push(("x-amz-x509-chain", c));
    }
    let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (canonical, signed_headers) = sigv4::canonical_request(&CanonicalInput {
        method: "POST",
        path: SESSIONS_PATH,
        query: &query,
        headers: &borrowed,
        payload: body,
    });
    let scope = sigv4::scope(&time, &settings.region, SIGNING_SERVICE);
    let algorithm = key.algorithm();
    let to_sign = sigv4::string_to_sign(algorithm, &time, &scope, &canonical);
    let signature = hex::encode(key.sign(to_sign.as_bytes())?);
    headers.push((
        "authorization",
        format!(
            "{algorithm} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            chain.serial_decimal
        ),
    ));
    let mut url = settings.endpoint.clone();
    url.set_path(SESSIONS_PATH);
    url.set_query(Some(&query));
    Ok(SignedSession { url, headers })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionOut {
    credential_set: Vec<CredentialSetItem>,
}

#[derive(Deserialize)]
struct CredentialSetItem {
    credentials: SessionCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// Fetches sessions with the files named in [`IamRaSettings`].
#[derive(Debug, Clone)]
pub struct IamRaSource {
    http: reqwest::Client,
    settings: IamRaSettings,
    clock: Arc<SkewedClock>,
}

impl IamRaSource {
    pub fn new(
        http: reqwest::Client,
        settings: IamRaSettings,
        clock: Arc<SkewedClock>,
    ) -> Result<IamRaSource, IamRaError> {
        // Fail at construction, not at the first refresh, on an endpoint without a host.
        if sigv4::host_header(&settings.endpoint).is_none() {
            return Err(IamRaError::Response {
                endpoint: settings.endpoint.to_string(),
                detail: "the endpoint URL has no host".into(),
            });
        }
        Ok(IamRaSource {
            http,
            settings,
            clock,
        })
    }

    pub fn settings(&self) -> &IamRaSettings {
        &self.settings
    }

    fn endpoint(&self) -> String {
        crate::identity::ssm::display_endpoint(&self.settings.endpoint)
    }

    /// What status shows as the identity: the certificate subject and serial.
    pub fn identity(&self) -> String {
        match CertificateChain::load(&self.settings.certificate_path) {
            Ok(c) => format!("{} (serial {})", c.subject, c.serial_decimal),
            Err(_) => self.settings.certificate_path.display().to_string(),
        }
    }

    /// One CreateSession.
    pub async fn fetch(&self) -> Result<TemporaryCredentials, IamRaError> {
        let chain = CertificateChain::load(&self.settings.certificate_path)?;
        if chain.not_after <= self.clock.now() {
            return Err(IamRaError::CertificateExpired {
                path: self.settings.certificate_path.clone(),
                not_after: crate::identity::store::ts::format(chain.not_after),
            });
        }
        let key = SigningKey::load(&self.settings.private_key_path)?;
        if key.spki().as_deref() != Some(chain.spki_der.as_slice()) {
            return Err(IamRaError::KeyMismatch {
                cert: self.settings.certificate_path.clone(),
                key: self.settings.private_key_path.clone(),
            });
        }
        let mut body = serde_json::json!({ "durationSeconds": self.settings.duration.as_secs() });
        if let Some(name) = &self.settings.session_name {
            body["roleSessionName"] = serde_json::Value::String(name.clone());
        }
        let body = body.to_string().into_bytes();
        let mut resigned = false;
        loop {
            let answer = self.send_once(&chain, &key, &body).await?;
            if (200..300).contains(&answer.status) {
                return self.parse_session(&answer.body);
            }
            let err = self.api_error(&answer);
            // A request refused while the Date header revealed a skew we did not know: re-sign
            // once with the service's time (see crate::identity::clock).
            if !resigned
                && (400..500).contains(&answer.status)
                && matches!(answer.skew, SkewChange::Corrected(_) | SkewChange::Cleared)
            {
                tracing::info!(
                    "CreateSession rejected ({err}); re-signing once with the corrected clock"
                );
                resigned = true;
                continue;
            }
            return Err(err);
        }
    }

    async fn send_once(
        &self,
        chain: &CertificateChain,
        key: &SigningKey,
        body: &[u8],
    ) -> Result<Answer, IamRaError> {
        let signed = sign_create_session(&self.settings, chain, key, self.clock.now(), body)?;
        let mut req = self.http.post(signed.url);
        for (name, value) in &signed.headers {
            req = req.header(*name, value);
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        read_answer(resp, &self.clock).await.map_err(|e| match e {
            BodyError::Transport(e) => self.transport_error(&e),
            too_large @ BodyError::TooLarge { .. } => IamRaError::Response {
                endpoint: self.endpoint(),
                detail: too_large.to_string(),
            },
        })
    }

    fn parse_session(&self, bytes: &[u8]) -> Result<TemporaryCredentials, IamRaError> {
        let bad = |detail: String| IamRaError::Response {
            endpoint: self.endpoint(),
            detail,
        };
        let out: SessionOut = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("body is not a CreateSession response: {e}")))?;
        let creds = out
            .credential_set
            .into_iter()
            .next()
            .ok_or_else(|| bad("credentialSet is empty".into()))?
            .credentials;
        let expires_service = crate::identity::expiry::parse_checked(
            "expiration",
            &serde_json::Value::String(creds.expiration),
            self.clock.now(),
        )
        .map_err(bad)?;
        let expiration =
            crate::identity::expiry::to_host_time(expires_service, self.clock.offset_ms());
        Ok(TemporaryCredentials {
            access_key_id: creds.access_key_id,
            secret_access_key: Secret::new(creds.secret_access_key),
            session_token: Secret::new(creds.session_token),
            expiration,
        })
    }

    /// Fuzzing entry (fuzz/fuzz_targets/iam_ra_response.rs, replayed by tests/fuzz_corpus.rs):
    /// one CreateSession answer through the parsing and classification a real call uses.
    #[doc(hidden)]
    pub fn fuzz_answer(&self, answer: &Answer) {
        if (200..300).contains(&answer.status) {
            let _ = self.parse_session(&answer.body);
        } else {
            let _ = self.api_error(answer).to_string();
        }
    }

    fn api_error(&self, answer: &Answer) -> IamRaError {
        let status = answer.status;
        // restJson: the `x-amzn-errortype` header is the authority, the body's `__type` a fallback.
        let (kind, message) = answer.error_body();
        let raw = answer
            .error_type
            .clone()
            .or(kind)
            .unwrap_or_else(|| format!("HTTP{status}"));
        IamRaError::Api {
            endpoint: self.endpoint(),
            status,
            code: crate::identity::ssm::error_code(&raw).to_string(),
            message,
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> IamRaError {
        let (kind, detail) = classify(e);
        match kind {
            TransportKind::Tls => IamRaError::Tls {
                endpoint: self.endpoint(),
                detail,
            },
            TransportKind::Timeout | TransportKind::Connect => IamRaError::Network {
                endpoint: self.endpoint(),
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).expect("keygen");
        let cert = rcgen::CertificateParams::new(vec!["node-1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_ecdsa_pair_and_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let chain = CertificateChain::load(&write(dir.path(), "c.pem", &cert)).expect("cert");
        let key = SigningKey::load(&write(dir.path(), "k.pem", &key)).expect("key");
        assert_eq!(key.algorithm(), ALG_ECDSA);
        assert_eq!(key.spki().as_deref(), Some(chain.spki_der.as_slice()));
        assert!(chain.serial_decimal.chars().all(|c| c.is_ascii_digit()));
        let sig = key.sign(b"msg").expect("sign");
        let pk = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            &chain.spki_der,
        );
        pk.expect("spki")
            .verify_sig(b"msg", &sig)
            .expect("verifies");
    }

    #[test]
    fn mismatched_or_encrypted_key_is_reported_without_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let enc = write(
            dir.path(),
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = SigningKey::load(&enc).expect_err("encrypted");
        assert!(e.to_string().contains("encrypted"), "{e}");
        let body_line = key.lines().nth(1).expect("pem body").to_string();
        let broken = write(
            dir.path(),
            "broken.pem",
            &key.replace("PRIVATE KEY", "RSA PRIVATE KEY"),
        );
        let e = SigningKey::load(&broken).expect_err("ec key labelled RSA");
        assert!(!e.to_string().contains(&body_line));
        assert!(!format!("{e:?}").contains(&body_line));
    }
}
