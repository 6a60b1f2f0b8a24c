//! Credentials the devstack knows and SigV4 verification of the calls signed with them.
//!
//! Two kinds of credentials verify: the fixed admin key pair below (what a user's own tooling —
//! the `create-activation` helper, tests, the demo — signs with), and every temporary credential
//! the devstack handed out itself (RequestManagedInstanceRoleToken today, IAM Roles Anywhere
//! CreateSession later). Temporary credentials behave as on AWS: the session token must come
//! with the access key, and after the expiry the call fails with `ExpiredToken`, which is what an
//! agent's refresh logic has to survive. Issued credentials persist to `--state-dir`, so a
//! restarted devstack still accepts what a running agent holds.
//!
//! Checks run in the order that gives the most useful error: unknown key, then session token,
//! then token expiry, then the request time, then the signature. Token expiry comes before the
//! request time so a test can move the devstack's clock past a token's lifetime and see
//! `ExpiredToken`, not "Signature expired", exactly as a node whose credentials ran out would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::persist::PersistError;
use crate::server::DevstackError;
use crate::sigv4::{self, PathEncoding, SigV4Error};
use crate::state::{Shared, lock};
use crate::wire::{ApiError, Req};

/// The devstack's fixed admin key pair: what a user's own AWS tooling would sign with. Not a
/// secret — the devstack only listens on 127.0.0.1. Any region in the credential scope is
/// accepted.
pub const ADMIN_ACCESS_KEY_ID: &str = "AKIADEVSTACKADMIN000";
pub const ADMIN_SECRET_ACCESS_KEY: &str = "devstack-admin-secret-key-not-a-real-secret";
/// IAM user name of the admin key pair (its ARN is `arn:aws:iam::<account>:user/devstack-admin`).
pub const ADMIN_USER_NAME: &str = "devstack-admin";
/// Unique id GetCallerIdentity reports for the admin user (IAM user ids are `AIDA` + 17 chars).
pub const ADMIN_USER_ID: &str = "AIDADEVSTACKADMIN0000";

/// File under `--state-dir` the issued credentials persist to.
const CREDENTIALS_FILE: &str = "credentials.json";

/// Issued credentials are kept this long past their expiry (so late callers get `ExpiredToken`
/// rather than "unknown key"), then dropped so the store does not grow forever.
const EXPIRED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Prefix of temporary access key ids (AWS: `ASIA` for STS-issued keys).
const TEMPORARY_KEY_PREFIX: &str = "ASIA";

/// Request header carrying the session token of temporary credentials.
const SECURITY_TOKEN_HEADER: &str = "x-amz-security-token";

/// A temporary credential the devstack handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`
    pub arn: String,
    /// `AROA...:<session>`
    pub user_id: String,
    pub account_id: String,
}

impl IssuedCredential {
    pub fn principal(&self) -> Principal {
        Principal {
            access_key_id: self.access_key_id.clone(),
            arn: self.arn.clone(),
            account_id: self.account_id.clone(),
            user_id: self.user_id.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsDoc {
    issued: Vec<IssuedCredential>,
}

/// The admin key pair (implicit) and every credential the devstack issued.
#[derive(Debug, Default)]
pub struct CredentialStore {
    /// `<state-dir>/credentials.json`, when persisting.
    path: Option<PathBuf>,
    issued: BTreeMap<String, IssuedCredential>,
}

impl CredentialStore {
    /// Loads the issued credentials from `dir` (an absent file is an empty store).
    pub fn load(dir: Option<&Path>) -> Result<Self, DevstackError> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let path = dir.join(CREDENTIALS_FILE);
        let doc: CredentialsDoc = crate::persist::read_json(&path)?.unwrap_or_default();
        Ok(Self {
            issued: doc
                .issued
                .into_iter()
                .map(|c| (c.access_key_id.clone(), c))
                .collect(),
            path: Some(path),
        })
    }

    /// Issues a temporary credential for `identity`, valid for `lifetime` from `now`, and
    /// persists the store.
    pub fn issue(
        &mut self,
        identity: &Principal,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedCredential, ApiError> {
        let cred = IssuedCredential {
            access_key_id: format!("{TEMPORARY_KEY_PREFIX}{}", random_string(UPPER_ALNUM, 16)?),
            secret_access_key: random_string(SECRET_ALPHABET, 40)?,
            session_token: random_base64(96)?,
            expires_at: epoch_secs(now + lifetime),
            arn: identity.arn.clone(),
            user_id: identity.user_id.clone(),
            account_id: identity.account_id.clone(),
        };
        let horizon = epoch_secs(now) - EXPIRED_RETENTION.as_secs() as i64;
        self.issued.retain(|_, c| c.expires_at > horizon);
        self.issued.insert(cred.access_key_id.clone(), cred.clone());
        self.persist().map_err(|e| {
            ApiError::internal(format!(
                "devstack could not persist issued credentials: {e}"
            ))
        })?;
        Ok(cred)
    }

    /// The issued credential with this access key id, if any.
    pub fn get(&self, access_key_id: &str) -> Option<&IssuedCredential> {
        self.issued.get(access_key_id)
    }

    fn persist(&self) -> Result<(), PersistError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let doc = CredentialsDoc {
            issued: self.issued.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| PersistError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::persist::write_atomic(path, &bytes)
    }
}

/// Who made a verified call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    /// `arn:aws:iam::<account>:user/devstack-admin`, or the assumed-role ARN of an instance.
    pub arn: String,
    pub account_id: String,
    /// User id as GetCallerIdentity reports it.
    pub user_id: String,
}

impl Principal {
    /// The admin user of `account_id`.
    pub fn admin(account_id: &str) -> Principal {
        Principal {
            access_key_id: ADMIN_ACCESS_KEY_ID.into(),
            arn: format!("arn:aws:iam::{account_id}:user/{ADMIN_USER_NAME}"),
            account_id: account_id.into(),
            user_id: ADMIN_USER_ID.into(),
        }
    }

    /// The session of `role` (a role name, possibly with a path, or a role ARN) named `session`,
    /// as STS reports assumed roles: ARN `arn:aws:sts::<account>:assumed-role/<role-name>/<session>`,
    /// user id `<role id>:<session>`. The role id (`AROA` + 17 chars) is derived from the role name
    /// so it is stable across restarts. `access_key_id` stays empty until credentials are issued
    /// for it ([`CredentialStore::issue`]).
    pub fn assumed_role(account_id: &str, role: &str, session: &str) -> Principal {
        let role_name = role.rsplit('/').next().unwrap_or(role);
        let digest = sigv4::sha256_hex(role_name.as_bytes()).to_ascii_uppercase();
        let role_id = format!("AROA{}", &digest[..17]);
        Principal {
            access_key_id: String::new(),
            arn: format!("arn:aws:sts::{account_id}:assumed-role/{role_name}/{session}"),
            account_id: account_id.into(),
            user_id: format!("{role_id}:{session}"),
        }
    }
}

/// Signing names of the awsQuery-heritage services, which name their auth errors without the
/// `Exception` suffix (`SignatureDoesNotMatch`, `InvalidClientTokenId`, `ExpiredToken`) and answer
/// 403. CloudWatch keeps those names under its newer CBOR protocol.
const QUERY_STYLE_SERVICES: &[&str] = &["sts", "monitoring", "iam"];

/// Signing names of the awsJson services, which answer auth errors with 400 (SSM, Logs).
const JSON_400_SERVICES: &[&str] = &["ssm", "logs"];

/// An authentication failure, rendered per service family by [`AuthFailure::into_api_error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No Authorization header.
    Missing,
    /// Malformed Authorization header or date.
    Incomplete(String),
    /// Unknown access key, or a session token that does not belong to it.
    UnrecognizedClient,
    /// The temporary credential expired.
    ExpiredToken,
    /// Wrong signature, wrong scope or a request time outside the allowed skew.
    BadSignature(String),
}

impl AuthFailure {
    /// The error AWS answers with for this failure on `service` (a signing name).
    pub fn into_api_error(self, service: &str) -> ApiError {
        let query = QUERY_STYLE_SERVICES.contains(&service);
        let status = if JSON_400_SERVICES.contains(&service) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::FORBIDDEN
        };
        let (json_code, query_code, message) = match self {
            AuthFailure::Missing => (
                "MissingAuthenticationTokenException",
                "MissingAuthenticationToken",
                "Missing Authentication Token".to_string(),
            ),
            AuthFailure::Incomplete(m) => {
                ("IncompleteSignatureException", "IncompleteSignature", m)
            }
            AuthFailure::UnrecognizedClient => (
                "UnrecognizedClientException",
                "InvalidClientTokenId",
                "The security token included in the request is invalid.".to_string(),
            ),
            AuthFailure::ExpiredToken => (
                "ExpiredTokenException",
                "ExpiredToken",
                "The security token included in the request is expired".to_string(),
            ),
            AuthFailure::BadSignature(m) => {
                ("InvalidSignatureException", "SignatureDoesNotMatch", m)
            }
        };
        ApiError::new(status, if query { query_code } else { json_code }, message)
    }
}

impl From<SigV4Error> for AuthFailure {
    fn from(e: SigV4Error) -> Self {
        match e {
            SigV4Error::MissingAuthorization => AuthFailure::Missing,
            SigV4Error::Incomplete(m) => AuthFailure::Incomplete(m),
            // The signer signed a header we did not receive: the signature cannot match.
            e @ SigV4Error::MissingSignedHeader(_) => AuthFailure::BadSignature(e.to_string()),
        }
    }
}

/// AWS's wording for a signature mismatch, with the canonical request and string to sign the
/// server computed (as AWS includes them), so a client author can diff against their own.
pub fn mismatch_message(signed: &sigv4::SignedRequest) -> String {
    format!(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{}'\n\nThe String-to-Sign should have been\n'{}'\n",
        signed.canonical_request, signed.string_to_sign
    )
}

/// Verifies the SigV4 signature of `req` for `service` (the signing name: `ssm`, `logs`,
/// `monitoring`, `sts`, `eks`) and returns the caller.
pub fn authenticate(state: &Shared, req: &Req, service: &str) -> Result<Principal, ApiError> {
    verify(state, req, service).map_err(|f| f.into_api_error(service))
}

fn verify(state: &Shared, req: &Req, service: &str) -> Result<Principal, AuthFailure> {
    if req.header("authorization").is_none()
        && req
            .query_pairs()
            .iter()
            .any(|(k, _)| k == "X-Amz-Signature")
    {
        return Err(AuthFailure::Incomplete(
            "presigned (query-string) requests are not supported by the devstack".into(),
        ));
    }
    let signed = sigv4::prepare(req, PathEncoding::NormalizedDouble)?;
    if signed.auth.service != service {
        return Err(AuthFailure::BadSignature(format!(
            "Credential should be scoped to correct service: '{service}'. (got '{}')",
            signed.auth.service
        )));
    }
    let token = req.header(SECURITY_TOKEN_HEADER);
    let (secret, principal) = resolve_key(state, &signed.auth.access_key_id, token)?;
    sigv4::check_freshness(signed.signed_at, state.now()).map_err(AuthFailure::BadSignature)?;
    if !sigv4::verify_hmac(&secret, &signed.auth, &signed.string_to_sign) {
        return Err(AuthFailure::BadSignature(mismatch_message(&signed)));
    }
    Ok(principal)
}

/// The secret key of `access_key_id` and whose it is: the admin key pair (which has no session
/// token), or a temporary credential the devstack issued, whose session token must be `token`
/// and which must not have expired.
pub fn resolve_key(
    state: &Shared,
    access_key_id: &str,
    token: Option<&str>,
) -> Result<(String, Principal), AuthFailure> {
    Ok(if access_key_id == ADMIN_ACCESS_KEY_ID {
        if token.is_some() {
            return Err(AuthFailure::UnrecognizedClient);
        }
        (
            ADMIN_SECRET_ACCESS_KEY.to_string(),
            Principal::admin(&state.config.account_id),
        )
    } else {
        let cred = lock(&state.creds)
            .get(access_key_id)
            .cloned()
            .ok_or(AuthFailure::UnrecognizedClient)?;
        let token_ok = token.is_some_and(|t| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                t.as_bytes(),
                cred.session_token.as_bytes(),
            )
            .is_ok()
        });
        if !token_ok {
            return Err(AuthFailure::UnrecognizedClient);
        }
        if epoch_secs(state.now()) >= cred.expires_at {
            return Err(AuthFailure::ExpiredToken);
        }
        (cred.secret_access_key.clone(), cred.principal())
    })
}

/// Seconds since the Unix epoch (negative before 1970).
pub fn epoch_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// `A-Z0-9`: access key ids.
pub const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// `A-Za-z0-9`: activation codes.
pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Secret access keys: base64 letters, as AWS secrets look.
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_bytes(n: usize) -> Result<Vec<u8>, ApiError> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf)
        .map_err(|_| ApiError::internal("devstack: the system random generator failed"))?;
    Ok(buf)
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling, no modulo bias) with the
/// system CSPRNG: these strings are secrets or must not collide.
pub fn random_string(alphabet: &[u8], len: usize) -> Result<String, ApiError> {
    let n = alphabet.len();
    if n == 0 || n > 256 {
        return Err(ApiError::internal(
            "devstack: random_string needs an alphabet of 1..=256 symbols",
        ));
    }
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes(len * 2)? {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    Ok(out)
}

/// Standard base64 of `n` random bytes (session tokens).
fn random_base64(n: usize) -> Result<String, ApiError> {
    Ok(base64::engine::general_purpose::STANDARD.encode(random_bytes(n)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_follow_the_service_family() {
        let e = AuthFailure::BadSignature("x".into()).into_api_error("sts");
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::FORBIDDEN, "SignatureDoesNotMatch")
        );
        let e = AuthFailure::BadSignature("x".into()).into_api_error("ssm");
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "InvalidSignatureException")
        );
        assert_eq!(
            AuthFailure::UnrecognizedClient.into_api_error("sts").code,
            "InvalidClientTokenId"
        );
        assert_eq!(
            AuthFailure::UnrecognizedClient.into_api_error("logs").code,
            "UnrecognizedClientException"
        );
        assert_eq!(
            AuthFailure::ExpiredToken.into_api_error("sts").code,
            "ExpiredToken"
        );
        assert_eq!(
            AuthFailure::ExpiredToken.into_api_error("ssm").code,
            "ExpiredTokenException"
        );
        assert_eq!(
            AuthFailure::Missing.into_api_error("sts").code,
            "MissingAuthenticationToken"
        );
        assert_eq!(
            AuthFailure::Missing.into_api_error("eks").code,
            "MissingAuthenticationTokenException"
        );
    }

    #[test]
    fn assumed_role_principal_uses_the_role_name() {
        let p = Principal::assumed_role(
            "123456789012",
            "service-role/HybridNodesRole",
            "mi-0123456789abcdef0",
        );
        assert_eq!(
            p.arn,
            "arn:aws:sts::123456789012:assumed-role/HybridNodesRole/mi-0123456789abcdef0"
        );
        let (role_id, session) = p.user_id.split_once(':').expect("role id:session");
        assert_eq!(session, "mi-0123456789abcdef0");
        assert!(
            role_id.starts_with("AROA") && role_id.len() == 21,
            "{role_id}"
        );
        assert_eq!(
            Principal::assumed_role("123456789012", "HybridNodesRole", "x")
                .user_id
                .split(':')
                .next(),
            Some(role_id)
        );
    }

    #[test]
    fn random_strings_use_only_the_alphabet() {
        let s = random_string(b"ab", 64).expect("random");
        assert_eq!(s.len(), 64);
        assert!(s.bytes().all(|b| b == b'a' || b == b'b'));
        assert_ne!(
            random_string(ALNUM, 20).expect("random"),
            random_string(ALNUM, 20).expect("random")
        );
    }

    #[test]
    fn issued_credentials_persist_and_expired_ones_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let who = Principal::assumed_role("123456789012", "R", "mi-0");
        let mut store = CredentialStore::load(Some(dir.path())).expect("load");
        let old = store
            .issue(&who, now - EXPIRED_RETENTION * 2, Duration::from_secs(3600))
            .expect("issue old");
        let fresh = store
            .issue(&who, now, Duration::from_secs(3600))
            .expect("issue");
        assert!(fresh.access_key_id.starts_with("ASIA") && fresh.access_key_id.len() == 20);
        assert_eq!(fresh.secret_access_key.len(), 40);
        let reloaded = CredentialStore::load(Some(dir.path())).expect("reload");
        assert_eq!(reloaded.get(&fresh.access_key_id), Some(&fresh));
        // Issuing `fresh` pruned `old`, whose expiry lies beyond the retention window.
        assert!(reloaded.get(&old.access_key_id).is_none());
    }
}
