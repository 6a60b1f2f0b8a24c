//! IAM Roles Anywhere: `CreateSession` with X.509 SigV4 verification, and a test CA that issues
//! the certificates clients sign with.
//!
//! The devstack has one trust anchor (its own CA, ECDSA P-256), one profile and one role, with
//! ARNs derived from the configured region and account. `CreateSession` is checked the way IAM
//! Roles Anywhere documents it (docs/protocols.md "IAM Roles Anywhere CreateSession"): the leaf
//! certificate in `X-Amz-X509` must chain
//! to the trust anchor through the intermediates in `X-Amz-X509-Chain`, each certificate signed
//! by the next and valid at the devstack's now; the Authorization header names the leaf's serial
//! in decimal and one of `AWS4-X509-RSA-SHA256` (PKCS#1 v1.5) / `AWS4-X509-ECDSA-SHA256` (DER
//! ECDSA), whose hex signature over the SigV4 string to sign must verify with the leaf's key; the
//! request time must be within 5 minutes. The issued credentials go into the shared
//! [`crate::auth::CredentialStore`], so STS verifies calls made with them.
//!
//! Tests get certificates from `POST /_devstack/rolesanywhere/issue` (JSON [`IssueRequest`]) or
//! [`issue`]: RSA or ECDSA leaves, optionally behind an intermediate CA.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256};

use crate::auth::Principal;
use crate::server::DevstackError;
use crate::sigv4::{self, PathEncoding};
use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req};

/// File under `--state-dir` holding the CA key and the resource ids, so certificates issued
/// before a restart still verify.
const STATE_FILE: &str = "rolesanywhere.json";
/// Signing name of the service (docs/protocols.md "IAM Roles Anywhere CreateSession").
pub const SIGNING_NAME: &str = "rolesanywhere";
pub const ALG_RSA: &str = "AWS4-X509-RSA-SHA256";
pub const ALG_ECDSA: &str = "AWS4-X509-ECDSA-SHA256";
/// Role the devstack's profile allows.
pub const ROLE_NAME: &str = "AmazonEKSHybridNodesRole";
/// CreateSession `durationSeconds` range (IAM Roles Anywhere API reference: 900–43200).
const MIN_DURATION_SECS: u64 = 900;
const MAX_DURATION_SECS: u64 = 43_200;
const DEFAULT_DURATION_SECS: u64 = 3600;
/// Certificates issued by the test CA last this long unless asked otherwise.
const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Backdating of `notBefore`, so a client whose clock is slightly behind accepts a fresh cert.
const CERT_BACKDATE: Duration = Duration::from_secs(300);
/// Longest chain accepted in `X-Amz-X509-Chain` (AWS allows a handful of intermediates).
const MAX_INTERMEDIATES: usize = 5;
const CA_COMMON_NAME: &str = "hybrid-devstack test CA";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    ca_key_pem: String,
    ca_cert_pem: String,
    trust_anchor_id: String,
    profile_id: String,
}

/// The test CA and the resource ids.
#[derive(Debug)]
pub struct RolesAnywhereState {
    doc: Persisted,
    ca_cert_der: Vec<u8>,
}

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

impl RolesAnywhereState {
    /// Loads the CA from `dir`, or creates one (and persists it when `dir` is set).
    pub fn load(dir: Option<&Path>) -> Result<Self, DevstackError> {
        let path = dir.map(|d| d.join(STATE_FILE));
        let err = |message: String| DevstackError::LoadState {
            path: path.clone().unwrap_or_default(),
            message,
        };
        if let Some(p) = &path
            && let Some(doc) =
                crate::persist::read_json::<Persisted>(p).map_err(|e| err(e.to_string()))?
        {
            let ca_cert_der = pem_to_der(&doc.ca_cert_pem)
                .ok_or_else(|| err("CA certificate is not PEM".into()))?;
            return Ok(RolesAnywhereState { doc, ca_cert_der });
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| err(format!("CA key: {e}")))?;
        let cert = ca_params()
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| err(format!("CA certificate: {e}")))?;
        let doc = Persisted {
            ca_key_pem: key.serialize_pem(),
            ca_cert_pem: cert.pem(),
            trust_anchor_id: uuid::Uuid::new_v4().to_string(),
            profile_id: uuid::Uuid::new_v4().to_string(),
        };
        if let Some(p) = &path {
            let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| err(e.to_string()))?;
            crate::persist::write_atomic(p, &bytes).map_err(|e| err(e.to_string()))?;
        }
        Ok(RolesAnywhereState {
            ca_cert_der: cert.der().to_vec(),
            doc,
        })
    }

    pub fn ca_certificate_pem(&self) -> &str {
        &self.doc.ca_cert_pem
    }
}

/// ARNs of the devstack's trust anchor, profile and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
}

pub fn resources(state: &Shared) -> Resources {
    let (region, account) = (&state.config.region, &state.config.account_id);
    let ra = &state.rolesanywhere.doc;
    Resources {
        trust_anchor_arn: format!(
            "arn:aws:rolesanywhere:{region}:{account}:trust-anchor/{}",
            ra.trust_anchor_id
        ),
        profile_arn: format!(
            "arn:aws:rolesanywhere:{region}:{account}:profile/{}",
            ra.profile_id
        ),
        role_arn: format!("arn:aws:iam::{account}:role/{ROLE_NAME}"),
    }
}

/// Key type of an issued leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Rsa,
    #[default]
    Ecdsa,
}

/// `POST /_devstack/rolesanywhere/issue` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    #[serde(default)]
    pub key_type: KeyType,
    /// Subject CN (default `hybrid-node`).
    #[serde(default)]
    pub common_name: Option<String>,
    /// Issue the leaf from an intermediate CA (returned after the leaf in `certificate_pem`).
    #[serde(default)]
    pub intermediate: bool,
    /// Validity from now in seconds (default one day); 0 or negative = already expired.
    #[serde(default)]
    pub valid_secs: Option<i64>,
}

/// What the issue endpoint returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// Leaf, then the intermediate when one was asked for.
    pub certificate_pem: String,
    /// PKCS#8 PEM of the leaf key.
    pub private_key_pem: String,
    pub ca_certificate_pem: String,
    /// Leaf serial, decimal.
    pub serial: String,
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("devstack could not {what}: {e}"))
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// Issues a certificate from the test CA.
pub fn issue(state: &Shared, req: &IssueRequest) -> Result<IssuedCertificate, ApiError> {
    let ra = &state.rolesanywhere;
    let ca_key =
        rcgen::KeyPair::from_pem(&ra.doc.ca_key_pem).map_err(rcgen_err("load the CA key"))?;
    let ca_params = ca_params().map_err(rcgen_err("build the CA parameters"))?;
    let root = rcgen::Issuer::new(ca_params.clone(), ca_key);
    let now = state.now();

    let mut intermediate_pem = None;
    let intermediate = if req.intermediate {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("generate a key"))?;
        let mut p = ca_params.clone();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "hybrid-devstack intermediate CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.not_before = offset(now - CERT_BACKDATE);
        p.not_after = offset(now + DEFAULT_CERT_VALIDITY);
        p.serial_number = Some(random_serial());
        let cert = p
            .signed_by(&key, &root)
            .map_err(rcgen_err("sign the intermediate"))?;
        intermediate_pem = Some(cert.pem());
        Some(rcgen::Issuer::new(p, key))
    } else {
        None
    };

    let key = match req.key_type {
        KeyType::Ecdsa => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
    .map_err(rcgen_err("generate the leaf key"))?;
    let cn = req
        .common_name
        .clone()
        .unwrap_or_else(|| "hybrid-node".into());
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(rcgen_err("build the leaf parameters"))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = offset(now - CERT_BACKDATE);
    let valid = req
        .valid_secs
        .unwrap_or(DEFAULT_CERT_VALIDITY.as_secs() as i64);
    p.not_after = if valid > 0 {
        offset(now + Duration::from_secs(valid as u64))
    } else {
        // Already expired: notBefore further back so the certificate stays well-formed.
        p.not_before = offset(now - CERT_BACKDATE * 2);
        offset(now - Duration::from_secs(valid.unsigned_abs().max(1)))
    };
    p.serial_number = Some(random_serial());
    let cert = match &intermediate {
        Some(i) => p.signed_by(&key, i),
        None => p.signed_by(&key, &root),
    }
    .map_err(rcgen_err("sign the leaf"))?;
    let serial = x509_parser::parse_x509_certificate(cert.der())
        .map(|(_, c)| c.tbs_certificate.serial.to_string())
        .map_err(|e| {
            ApiError::internal(format!("devstack cannot parse its own certificate: {e}"))
        })?;
    let mut certificate_pem = cert.pem();
    if let Some(i) = intermediate_pem {
        certificate_pem.push_str(&i);
    }
    let r = resources(state);
    Ok(IssuedCertificate {
        certificate_pem,
        private_key_pem: key.serialize_pem(),
        ca_certificate_pem: ra.doc.ca_cert_pem.clone(),
        serial,
        trust_anchor_arn: r.trust_anchor_arn,
        profile_arn: r.profile_arn,
        role_arn: r.role_arn,
    })
}

/// A positive 16-byte serial (RFC 5280: ≤ 20 octets, positive).
fn random_serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] = (b[0] & 0x7f) | 0x01;
    rcgen::SerialNumber::from_slice(&b)
}

/// Control arm: `POST /_devstack/rolesanywhere/issue`.
pub fn control_issue(state: &Shared, req: &Req) -> Response {
    let parsed: Result<IssueRequest, _> = if req.body.is_empty() {
        Ok(IssueRequest::default())
    } else {
        serde_json::from_slice(&req.body)
    };
    match parsed {
        Ok(r) => match issue(state, &r) {
            Ok(out) => crate::wire::bytes_response(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&out).unwrap_or_default().into(),
            ),
            Err(e) => e.render(Protocol::Plain),
        },
        Err(e) => ApiError::bad_request("InvalidParameter", format!("issue request: {e}"))
            .render(Protocol::Plain),
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ApiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|_| denied("Invalid certificate"))
}

fn denied(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message)
}

pub async fn handle(state: &Shared, op: &str, req: &Req) -> Response {
    if op != "CreateSession" || req.method != axum::http::Method::POST {
        return ApiError::not_found(
            "UnknownOperationException",
            format!("devstack IAM Roles Anywhere does not serve {op}"),
        )
        .render(Protocol::RestJson1);
    }
    match create_session(state, req) {
        Ok(v) => crate::wire::bytes_response(
            StatusCode::CREATED,
            "application/json",
            v.to_string().into(),
        ),
        Err(e) => e.render(Protocol::RestJson1),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionIn {
    #[serde(default)]
    duration_seconds: Option<u64>,
    #[serde(default)]
    role_session_name: Option<String>,
}

fn create_session(state: &Shared, req: &Req) -> Result<serde_json::Value, ApiError> {
    let q = req.query_pairs();
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(profile), Some(role), Some(anchor)) = (
        param("profileArn"),
        param("roleArn"),
        param("trustAnchorArn"),
    ) else {
        return Err(ApiError::validation(
            "profileArn, roleArn and trustAnchorArn are required query parameters",
        ));
    };
    let res = resources(state);
    if anchor != res.trust_anchor_arn {
        return Err(denied(format!("Unknown trust anchor {anchor}")));
    }
    if profile != res.profile_arn {
        return Err(denied(format!("Unknown profile {profile}")));
    }
    if role != res.role_arn {
        return Err(denied(format!(
            "Profile {profile} does not allow role {role}"
        )));
    }
    let body: SessionIn = if req.body.is_empty() {
        SessionIn {
            duration_seconds: None,
            role_session_name: None,
        }
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::validation(format!("request body: {e}")))?
    };
    let duration = body.duration_seconds.unwrap_or(DEFAULT_DURATION_SECS);
    if !(MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&duration) {
        return Err(ApiError::validation(format!(
            "durationSeconds {duration} is outside {MIN_DURATION_SECS}..={MAX_DURATION_SECS}"
        )));
    }

    // Certificates.
    let b64 = base64::engine::general_purpose::STANDARD;
    let leaf_der = req
        .header("x-amz-x509")
        .and_then(|v| b64.decode(v.trim()).ok())
        .ok_or_else(|| denied("Missing or malformed X-Amz-X509 header"))?;
    let chain_der: Vec<Vec<u8>> = match req.header("x-amz-x509-chain") {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|c| {
                b64.decode(c.trim())
                    .map_err(|_| denied("Malformed X-Amz-X509-Chain header"))
            })
            .collect::<Result<_, _>>()?,
    };
    if chain_der.len() > MAX_INTERMEDIATES {
        return Err(denied("Too many certificates in X-Amz-X509-Chain"));
    }
    let leaf = parse(&leaf_der)?;
    let chain: Vec<X509Certificate<'_>> = chain_der
        .iter()
        .map(|d| parse(d))
        .collect::<Result<_, _>>()?;
    let (_, root) = x509_parser::parse_x509_certificate(&state.rolesanywhere.ca_cert_der)
        .map_err(|_| ApiError::internal("devstack CA certificate does not parse"))?;
    let now = state.now();
    verify_chain(&leaf, &chain, &root, now)?;

    // Signature.
    let signed = prepare_x509(req)?;
    if signed.auth.access_key_id != leaf.tbs_certificate.serial.to_string() {
        return Err(denied(
            "Credential does not name the serial number of the certificate in X-Amz-X509",
        ));
    }
    if signed.auth.service != SIGNING_NAME || signed.auth.region != state.config.region {
        return Err(denied(format!(
            "Credential should be scoped to region {} and service {SIGNING_NAME}",
            state.config.region
        )));
    }
    for required in ["x-amz-x509"]
        .into_iter()
        .chain(req.header("x-amz-x509-chain").map(|_| "x-amz-x509-chain"))
    {
        if !signed.auth.signed_headers.iter().any(|h| h == required) {
            return Err(denied(format!("{required} must be a signed header")));
        }
    }
    sigv4::check_freshness(signed.signed_at, now).map_err(denied)?;
    let signature =
        hex::decode(&signed.auth.signature).map_err(|_| denied("Signature is not hex"))?;
    let spki = leaf.public_key().raw;
    let alg: &'static dyn sig::VerificationAlgorithm = match signed.auth.algorithm.as_str() {
        ALG_RSA => &sig::RSA_PKCS1_2048_8192_SHA256,
        ALG_ECDSA => &sig::ECDSA_P256_SHA256_ASN1,
        other => return Err(denied(format!("Unsupported algorithm {other}"))),
    };
    UnparsedPublicKey::new(alg, spki)
        .verify(signed.string_to_sign.as_bytes(), &signature)
        .map_err(|_| {
            denied("The request signature we calculated does not match the signature you provided")
        })?;

    // Credentials.
    let session = body
        .role_session_name
        .unwrap_or_else(|| leaf.tbs_certificate.serial.to_string());
    let principal = Principal::assumed_role(&state.config.account_id, &role, &session);
    let lifetime = Duration::from_secs(duration).min(state.config.token_lifetime);
    let cred = lock(&state.creds).issue(&principal, now, lifetime)?;
    let expiration = state
        .expiration_override("rolesanywhere")
        .unwrap_or_else(|| {
            serde_json::Value::String(crate::wire::rfc3339(
                std::time::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(cred.expires_at).unwrap_or(0)),
            ))
        });
    Ok(serde_json::json!({
        "credentialSet": [{
            "assumedRoleUser": { "arn": cred.arn, "assumedRoleId": cred.user_id },
            "credentials": {
                "accessKeyId": cred.access_key_id,
                "secretAccessKey": cred.secret_access_key,
                "sessionToken": cred.session_token,
                "expiration": expiration,
            },
            "packedPolicySize": 0,
            "roleArn": role,
            "sourceIdentity": leaf.subject().to_string(),
        }],
        "subjectArn": format!("arn:aws:rolesanywhere:{}:{}:subject/{}", state.config.region, state.config.account_id, leaf.tbs_certificate.serial),
    }))
}

/// Like [`sigv4::prepare`], for the X.509 algorithms (their string to sign starts with the
/// algorithm name, not `AWS4-HMAC-SHA256`).
fn prepare_x509(req: &Req) -> Result<sigv4::SignedRequest, ApiError> {
    let value = req
        .header("authorization")
        .ok_or_else(|| denied("Missing Authorization header"))?;
    let auth = sigv4::parse_authorization(value).map_err(|e| denied(e.to_string()))?;
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(denied("'Host' must be a signed header"));
    }
    let amz_date = req
        .header(sigv4::AMZ_DATE_HEADER)
        .ok_or_else(|| denied("Missing X-Amz-Date header"))?
        .trim()
        .to_string();
    let signed_at = sigv4::parse_amz_date(&amz_date).map_err(|e| denied(e.to_string()))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(denied("Date in Credential scope does not match X-Amz-Date"));
    }
    let canonical_request =
        sigv4::canonical_request(req, &auth.signed_headers, PathEncoding::NormalizedDouble)
            .map_err(|e| denied(e.to_string()))?;
    let string_to_sign = format!(
        "{}\n{amz_date}\n{}\n{}",
        auth.algorithm,
        auth.scope(),
        sigv4::sha256_hex(canonical_request.as_bytes())
    );
    Ok(sigv4::SignedRequest {
        auth,
        amz_date,
        signed_at,
        canonical_request,
        string_to_sign,
    })
}

/// Leaf → intermediates (in order) → root: each signed by the next, each valid at `now`,
/// issuers naming their subjects, intermediates being CAs.
fn verify_chain(
    leaf: &X509Certificate<'_>,
    chain: &[X509Certificate<'_>],
    root: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<(), ApiError> {
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut child = leaf;
    for (i, parent) in chain.iter().chain(std::iter::once(root)).enumerate() {
        let validity = child.validity();
        if now_secs < validity.not_before.timestamp() || now_secs > validity.not_after.timestamp() {
            return Err(denied(format!(
                "Certificate {} is not valid at this time",
                child.subject()
            )));
        }
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(denied(format!(
                "Certificate {} is not issued by {}: untrusted certificate",
                child.subject(),
                parent.subject()
            )));
        }
        if i < chain.len() && !parent.is_ca() {
            return Err(denied(format!(
                "Chain certificate {} is not a CA",
                parent.subject()
            )));
        }
        let alg: &'static dyn sig::VerificationAlgorithm =
            if child.signature_algorithm.algorithm == OID_SIG_ECDSA_WITH_SHA256 {
                &sig::ECDSA_P256_SHA256_ASN1
            } else if child.signature_algorithm.algorithm == OID_PKCS1_SHA256WITHRSA {
                &sig::RSA_PKCS1_2048_8192_SHA256
            } else {
                return Err(denied(format!(
                    "Unsupported certificate signature algorithm {}",
                    child.signature_algorithm.algorithm
                )));
            };
        UnparsedPublicKey::new(alg, parent.public_key().raw)
            .verify(child.tbs_certificate.as_ref(), &child.signature_value.data)
            .map_err(|_| {
                denied(format!(
                    "Certificate {} does not chain to the trust anchor: untrusted certificate",
                    child.subject()
                ))
            })?;
        child = parent;
    }
    Ok(())
}
