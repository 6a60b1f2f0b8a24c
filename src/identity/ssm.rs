//! The private SSM API of hybrid instances: `RegisterManagedInstance` (anonymous),
//! `RequestManagedInstanceRoleToken` and `UpdateManagedInstancePublicKey` (signed with the
//! instance's RSA key), and `UpdateInstanceInformation`, the agent's presence ping (signed with
//! the instance's role credentials, SigV4 HMAC). None of them is in aws-sdk-ssm (the public SSM
//! model leaves out the agent's operations; amazon-ssm-agent carries its own copy of the model),
//! so they are spoken here directly: awsJson 1.1 over reqwest.
//!
//! This client makes one attempt per call and classifies the outcome; retrying belongs to the
//! caller (registration retries a few transient failures, the rotation loop backs off), with
//! one exception: a request rejected as `InvalidSignatureException` while the response's `Date`
//! shows a clock skew the client did not know yet is re-signed with the corrected time and sent
//! again at once. That single retry is what turns a skewed boot clock from an endless
//! "Signature expired" loop (amazon-ssm-agent#616) into one extra round trip.

use std::sync::Arc;

use base64::Engine;
use reqwest::Url;
use serde::Deserialize;

use crate::aws::http::{Answer, BodyError, TransportKind, classify, read_answer};
use crate::config::Secret;
use crate::identity::TemporaryCredentials;
use crate::identity::clock::{SkewChange, SkewedClock};
use crate::identity::expiry;
use crate::identity::keys::{InstanceKey, PUBLIC_KEY_TYPE};
use crate::identity::sigv4::{self, CanonicalInput, SigningTime};

/// awsJson 1.1 content type (docs/protocols.md "SSM hybrid activation").
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// `X-Amz-Target` prefix of every SSM operation.
pub const TARGET_PREFIX: &str = "AmazonSSM.";
/// SigV4 signing name of SSM.
pub const SIGNING_SERVICE: &str = "ssm";
/// The algorithm name in the string to sign and the Authorization header: SSM keeps SigV4's
/// name although the signature is RSA-PSS (docs/protocols.md "Signing instance calls").
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

pub const OP_REGISTER: &str = "RegisterManagedInstance";
pub const OP_ROLE_TOKEN: &str = "RequestManagedInstanceRoleToken";
pub const OP_UPDATE_KEY: &str = "UpdateManagedInstancePublicKey";
pub const OP_UPDATE_INSTANCE_INFORMATION: &str = "UpdateInstanceInformation";

/// Error codes the agent acts on (docs/protocols.md "SSM error codes").
pub mod codes {
    pub const ACTIVATION_EXPIRED: &str = "ActivationExpired";
    pub const INVALID_ACTIVATION: &str = "InvalidActivation";
    pub const REGISTRATION_LIMIT: &str = "RegistrationLimitExceeded";
    pub const INVALID_PUBLIC_KEY: &str = "InvalidPublicKey";
    pub const ALREADY_REGISTERED: &str = "InstanceAlreadyRegistered";
    pub const FINGERPRINT_MISMATCH: &str = "MachineFingerprintDoesNotMatch";
    pub const INVALID_INSTANCE_ID: &str = "InvalidInstanceId";
    pub const ACCESS_DENIED: &str = "AccessDeniedException";
    pub const INVALID_SIGNATURE: &str = "InvalidSignatureException";
    pub const INTERNAL: &str = "InternalServerError";
    pub const TOO_MANY_UPDATES: &str = "TooManyUpdates";
    pub const THROTTLING: &str = "ThrottlingException";
}

/// One failed SSM call. Never carries a request body, key or token.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    #[error("SSM {operation} at {endpoint} failed: {code}: {message}")]
    Api {
        operation: &'static str,
        endpoint: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "TLS with {endpoint} failed during SSM {operation}: {detail}; if a proxy or TLS inspection sits in the path, add its CA with `extra_ca_bundle` in the agent config; a wrong host clock also breaks certificate checks"
    )]
    Tls {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error(
        "cannot reach {endpoint} for SSM {operation}: {detail}; check DNS, routing and the proxy setting, or the SSM endpoint override (AWS_ENDPOINT_URL_SSM)"
    )]
    Network {
        operation: &'static str,
        endpoint: String,
        timeout: bool,
        detail: String,
    },
    #[error("SSM {operation} at {endpoint} returned an unexpected response: {detail}")]
    Response {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("cannot sign SSM {operation}: the RSA signature failed")]
    Sign { operation: &'static str },
}

impl SsmError {
    /// The service error code (`ActivationExpired`, ...) if the service answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SsmError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_code(&self, want: &str) -> bool {
        self.code() == Some(want)
    }

    /// Worth retrying later: server-side and network trouble, throttling. Not a rejected key,
    /// activation or signature (those need a change, not time) — except a signature rejected for
    /// its time, which the next attempt re-signs.
    pub fn is_transient(&self) -> bool {
        match self {
            SsmError::Network { .. } => true,
            SsmError::Api {
                status,
                code,
                message,
                ..
            } => {
                *status >= 500
                    || matches!(
                        code.as_str(),
                        codes::INTERNAL | codes::TOO_MANY_UPDATES | codes::THROTTLING
                    )
                    || code.contains("Throttl")
                    || (code == codes::INVALID_SIGNATURE
                        && message.to_ascii_lowercase().contains("expired"))
            }
            SsmError::Response { .. } => true,
            SsmError::Tls { .. } | SsmError::Sign { .. } => false,
        }
    }

    /// The instance identity is gone for good: only registering again helps.
    pub fn needs_reregistration(&self) -> bool {
        self.is_code(codes::FINGERPRINT_MISMATCH) || self.is_code(codes::INVALID_INSTANCE_ID)
    }
}

/// Credentials from RequestManagedInstanceRoleToken.
#[derive(Debug, Clone)]
pub struct RoleToken {
    pub credentials: TemporaryCredentials,
    /// The service asks for a new key pair (`UpdateKeyPair`, missing = false).
    pub update_key_pair: bool,
}

/// What `UpdateInstanceInformation` reports about the instance (amazon-ssm-agent
/// agent/ssm/service.go `UpdateInstanceInformation`; docs/protocols.md
/// "UpdateInstanceInformation (presence)"); `None` fields are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceInformation {
    pub agent_name: String,
    pub agent_version: String,
    /// `Active` while the agent runs (agent/health/healthcheck.go).
    pub agent_status: String,
    /// `Linux` (PlatformType enum of the SSM model).
    pub platform_type: String,
    pub platform_name: Option<String>,
    pub platform_version: Option<String>,
    pub ip_address: Option<String>,
    pub computer_name: Option<String>,
}

/// How a call is signed.
#[derive(Clone, Copy)]
enum Signer<'a> {
    /// With the instance's RSA key (the private identity calls).
    Instance(&'a str, &'a InstanceKey),
    /// With the instance's role credentials, as any SigV4 client would.
    Role(&'a aws_credential_types::Credentials),
}

/// Client for the private SSM operations at one endpoint and region.
#[derive(Debug, Clone)]
pub struct SsmClient {
    http: reqwest::Client,
    endpoint: Url,
    host: String,
    region: String,
    clock: Arc<SkewedClock>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterOut {
    instance_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleTokenOut {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    token_expiration_date: serde_json::Value,
    #[serde(default)]
    update_key_pair: Option<bool>,
}

/// `__type` may be `Code`, `prefix#Code` or `Code:http://...` (awsJson 1.1 error shapes).
pub fn error_code(raw: &str) -> &str {
    let after_hash = raw.rsplit_once('#').map_or(raw, |(_, c)| c);
    after_hash
        .split_once(':')
        .map_or(after_hash, |(c, _)| c)
        .trim()
}

/// The endpoint for messages: scheme, host and port only (no userinfo or query).
pub fn display_endpoint(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl SsmClient {
    /// `endpoint` is the SSM endpoint (`https://ssm.<region>.amazonaws.com/` or an override).
    pub fn new(
        http: reqwest::Client,
        endpoint: Url,
        region: &str,
        clock: Arc<SkewedClock>,
    ) -> Result<Self, SsmError> {
        let host = sigv4::host_header(&endpoint).ok_or_else(|| SsmError::Response {
            operation: OP_REGISTER,
            endpoint: endpoint.to_string(),
            detail: "the endpoint URL has no host".into(),
        })?;
        Ok(SsmClient {
            http,
            endpoint,
            host,
            region: region.to_string(),
            clock,
        })
    }

    pub fn endpoint(&self) -> String {
        display_endpoint(&self.endpoint)
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn clock(&self) -> &Arc<SkewedClock> {
        &self.clock
    }

    /// RegisterManagedInstance: returns the new `mi-…` instance id.
    pub async fn register(
        &self,
        activation_id: &str,
        activation_code: &Secret,
        key: &InstanceKey,
        fingerprint: &str,
    ) -> Result<String, SsmError> {
        let body = serde_json::json!({
            "ActivationCode": activation_code.expose(),
            "ActivationId": activation_id,
            "PublicKey": key.public_key_b64(),
            "PublicKeyType": PUBLIC_KEY_TYPE,
            "Fingerprint": fingerprint,
        });
        let out: RegisterOut = self.call(OP_REGISTER, &body, None).await?;
        self.instance_id(out)
    }

    /// The checked instance id of a RegisterManagedInstance answer.
    fn instance_id(&self, out: RegisterOut) -> Result<String, SsmError> {
        if !out.instance_id.starts_with("mi-") {
            return Err(SsmError::Response {
                operation: OP_REGISTER,
                endpoint: self.endpoint(),
                detail: format!(
                    "InstanceId `{}` is not a managed instance id (mi-…)",
                    out.instance_id
                ),
            });
        }
        Ok(out.instance_id)
    }

    /// RequestManagedInstanceRoleToken, signed with `key`.
    pub async fn request_role_token(
        &self,
        instance_id: &str,
        key: &InstanceKey,
        fingerprint: &str,
    ) -> Result<RoleToken, SsmError> {
        let body = serde_json::json!({ "Fingerprint": fingerprint });
        let out: RoleTokenOut = self
            .call(
                OP_ROLE_TOKEN,
                &body,
                Some(Signer::Instance(instance_id, key)),
            )
            .await?;
        self.role_token(out)
    }

    /// The credentials of a RequestManagedInstanceRoleToken answer, expiry checked.
    fn role_token(&self, out: RoleTokenOut) -> Result<RoleToken, SsmError> {
        // The wire form is unverified (docs/protocols.md "RequestManagedInstanceRoleToken"):
        // epoch seconds and RFC 3339 both parse.
        let expires_service = expiry::parse_checked(
            "TokenExpirationDate",
            &out.token_expiration_date,
            self.clock.now(),
        )
        .map_err(|detail| SsmError::Response {
            operation: OP_ROLE_TOKEN,
            endpoint: self.endpoint(),
            detail,
        })?;
        Ok(RoleToken {
            credentials: TemporaryCredentials {
                access_key_id: out.access_key_id,
                secret_access_key: Secret::new(out.secret_access_key),
                session_token: Secret::new(out.session_token),
                expiration: expiry::to_host_time(expires_service, self.clock.offset_ms()),
            },
            update_key_pair: out.update_key_pair.unwrap_or(false),
        })
    }

    /// UpdateManagedInstancePublicKey, signed with the OLD key (`current`).
    pub async fn update_public_key(
        &self,
        instance_id: &str,
        current: &InstanceKey,
        new_public_b64: &str,
    ) -> Result<(), SsmError> {
        let body = serde_json::json!({ "NewPublicKey": new_public_b64, "NewPublicKeyType": PUBLIC_KEY_TYPE });
        let _: serde_json::Value = self
            .call(
                OP_UPDATE_KEY,
                &body,
                Some(Signer::Instance(instance_id, current)),
            )
            .await?;
        Ok(())
    }

    /// UpdateInstanceInformation for `instance_id`, signed with its role credentials: tells SSM
    /// the instance is alive (PingStatus Online) and what it runs.
    pub async fn update_instance_information(
        &self,
        instance_id: &str,
        info: &InstanceInformation,
        credentials: &aws_credential_types::Credentials,
    ) -> Result<(), SsmError> {
        let mut body = serde_json::json!({
            "InstanceId": instance_id,
            "AgentName": info.agent_name,
            "AgentVersion": info.agent_version,
            "AgentStatus": info.agent_status,
            "PlatformType": info.platform_type,
        });
        let optional = [
            ("PlatformName", &info.platform_name),
            ("PlatformVersion", &info.platform_version),
            ("IPAddress", &info.ip_address),
            ("ComputerName", &info.computer_name),
        ];
        if let Some(obj) = body.as_object_mut() {
            for (name, value) in optional {
                if let Some(v) = value {
                    obj.insert(name.into(), serde_json::Value::String(v.clone()));
                }
            }
        }
        let _: serde_json::Value = self
            .call(
                OP_UPDATE_INSTANCE_INFORMATION,
                &body,
                Some(Signer::Role(credentials)),
            )
            .await?;
        Ok(())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        body: &serde_json::Value,
        signer: Option<Signer<'_>>,
    ) -> Result<T, SsmError> {
        let body = body.to_string().into_bytes();
        let mut resigned = false;
        loop {
            let answer = self.send_once(operation, &body, signer).await?;
            let status = answer.status;
            if (200..300).contains(&status) {
                return self.decode(operation, &answer);
            }
            let err = self.api_error(operation, &answer);
            if signer.is_some()
                && !resigned
                && err.is_code(codes::INVALID_SIGNATURE)
                && matches!(answer.skew, SkewChange::Corrected(_) | SkewChange::Cleared)
            {
                tracing::info!(
                    operation,
                    "request rejected as {}; re-signing once with the corrected clock",
                    codes::INVALID_SIGNATURE
                );
                resigned = true;
                continue;
            }
            return Err(err);
        }
    }

    /// The JSON body of a successful answer (an empty body is `{}`).
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        answer: &Answer,
    ) -> Result<T, SsmError> {
        let text = if answer.body.is_empty() {
            &b"{}"[..]
        } else {
            &answer.body[..]
        };
        serde_json::from_slice(text).map_err(|e| SsmError::Response {
            operation,
            endpoint: self.endpoint(),
            detail: format!("HTTP {} body is not the expected JSON: {e}", answer.status),
        })
    }

    /// Fuzzing entry (fuzz/fuzz_targets/ssm_response.rs, replayed by tests/fuzz_corpus.rs): one
    /// answer taken as each operation's, through the decoding and classification a real call
    /// uses. Panics when an accepted expiry lies outside the range [`expiry::check`] promises.
    #[doc(hidden)]
    pub fn fuzz_answer(&self, answer: &Answer) {
        if (200..300).contains(&answer.status) {
            if let Ok(out) = self.decode::<RegisterOut>(OP_REGISTER, answer) {
                let _ = self.instance_id(out);
            }
            if let Ok(out) = self.decode::<RoleTokenOut>(OP_ROLE_TOKEN, answer)
                && let Ok(token) = self.role_token(out)
            {
                let service = self.clock.now();
                let host = expiry::to_host_time(service, self.clock.offset_ms());
                let ahead = expiry::MAX_AHEAD + expiry::PAST_TOLERANCE;
                let expires = token.credentials.expiration;
                assert!(
                    expires
                        .duration_since(host)
                        .map_or_else(|e| e.duration() <= expiry::PAST_TOLERANCE, |d| d <= ahead),
                    "accepted expiry out of range"
                );
            }
            let _ = self.decode::<serde_json::Value>(OP_UPDATE_KEY, answer);
        } else {
            let e = self.api_error(OP_ROLE_TOKEN, answer);
            let _ = (e.is_transient(), e.needs_reregistration(), e.to_string());
        }
    }

    async fn send_once(
        &self,
        operation: &'static str,
        body: &[u8],
        signer: Option<Signer<'_>>,
    ) -> Result<Answer, SsmError> {
        let target = format!("{TARGET_PREFIX}{operation}");
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::HOST, &self.host)
            .header("x-amz-target", &target);
        if let Some(signer) = signer {
            let time = SigningTime::new(self.clock.now());
            let token = match signer {
                Signer::Role(c) => c.session_token(),
                Signer::Instance(..) => None,
            };
            let auth = self.authorization(operation, signer, &time, &target, token, body)?;
            req = req
                .header("x-amz-date", &time.amz_date)
                .header(reqwest::header::AUTHORIZATION, auth);
            if let Some(t) = token {
                req = req.header("x-amz-security-token", t);
            }
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport_error(operation, &e))?;
        read_answer(resp, &self.clock).await.map_err(|e| match e {
            BodyError::Transport(e) => self.transport_error(operation, &e),
            too_large @ BodyError::TooLarge { .. } => SsmError::Response {
                operation,
                endpoint: self.endpoint(),
                detail: too_large.to_string(),
            },
        })
    }

    /// `Authorization` of a signed call: SigV4 canonicalisation; an instance call's signature
    /// is RSA-PSS in base64 under the instance id, a role call's the HMAC chain in hex under the
    /// access key id (its session token signed as `x-amz-security-token`).
    fn authorization(
        &self,
        operation: &'static str,
        signer: Signer<'_>,
        time: &SigningTime,
        target: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<String, SsmError> {
        let mut headers = vec![
            ("content-type", CONTENT_TYPE),
            ("host", self.host.as_str()),
            ("x-amz-date", time.amz_date.as_str()),
            ("x-amz-target", target),
        ];
        if let Some(t) = token {
            headers.push(("x-amz-security-token", t));
        }
        let (canonical, signed_headers) = sigv4::canonical_request(&CanonicalInput {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload: body,
        });
        let scope = sigv4::scope(time, &self.region, SIGNING_SERVICE);
        let to_sign = sigv4::string_to_sign(ALGORITHM, time, &scope, &canonical);
        let (who, sig) = match signer {
            Signer::Instance(instance_id, key) => {
                let sig = key
                    .sign_pss(to_sign.as_bytes())
                    .map_err(|_| SsmError::Sign { operation })?;
                (
                    instance_id.to_string(),
                    base64::engine::general_purpose::STANDARD.encode(sig),
                )
            }
            Signer::Role(c) => {
                let key = sigv4::hmac_signing_key(
                    c.secret_access_key(),
                    &time.date,
                    &self.region,
                    SIGNING_SERVICE,
                );
                (
                    c.access_key_id().to_string(),
                    hex::encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes())),
                )
            }
        };
        Ok(format!(
            "{ALGORITHM} Credential={who}/{scope}, SignedHeaders={signed_headers}, Signature={sig}"
        ))
    }

    fn api_error(&self, operation: &'static str, answer: &Answer) -> SsmError {
        let status = answer.status;
        // awsJson: the body's `__type` is the authority, the header a fallback.
        let (kind, message) = answer.error_body();
        let raw = kind
            .or_else(|| answer.error_type.clone())
            .unwrap_or_else(|| format!("HTTP{status}"));
        SsmError::Api {
            operation,
            endpoint: self.endpoint(),
            status,
            code: error_code(&raw).to_string(),
            message,
        }
    }

    fn transport_error(&self, operation: &'static str, e: &reqwest::Error) -> SsmError {
        let (kind, detail) = classify(e);
        match kind {
            TransportKind::Tls => SsmError::Tls {
                operation,
                endpoint: self.endpoint(),
                detail,
            },
            TransportKind::Timeout | TransportKind::Connect => SsmError::Network {
                operation,
                endpoint: self.endpoint(),
                timeout: kind == TransportKind::Timeout,
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn error_code_shapes() {
        assert_eq!(error_code("ActivationExpired"), "ActivationExpired");
        assert_eq!(
            error_code("com.amazonaws.ssm#InvalidActivation"),
            "InvalidActivation"
        );
        assert_eq!(
            error_code(
                "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"
            ),
            "InvalidSignatureException"
        );
    }

    #[test]
    fn expiration_number_or_string() {
        let want = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!(1_700_000_000)),
            Some(want)
        );
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!(1_700_000_000.0)),
            Some(want)
        );
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!("1700000000")),
            Some(want)
        );
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!("2023-11-14T22:13:20Z")),
            Some(want)
        );
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!("2023-11-14T23:13:20+01:00")),
            Some(want)
        );
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!("soon")),
            None
        );
        assert_eq!(
            crate::identity::expiry::parse(&serde_json::json!(null)),
            None
        );
        assert_eq!(crate::identity::expiry::parse(&serde_json::json!(-5)), None);
    }

    fn api(code: &str, status: u16, message: &str) -> SsmError {
        SsmError::Api {
            operation: OP_ROLE_TOKEN,
            endpoint: "x".into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn classification() {
        assert!(api(codes::INTERNAL, 500, "").is_transient());
        assert!(api(codes::TOO_MANY_UPDATES, 400, "").is_transient());
        assert!(api(codes::THROTTLING, 400, "Rate exceeded").is_transient());
        assert!(
            api(
                codes::INVALID_SIGNATURE,
                400,
                "Signature expired: 20240101T000000Z is now earlier than ..."
            )
            .is_transient()
        );
        assert!(
            !api(
                codes::INVALID_SIGNATURE,
                400,
                "The request signature we calculated does not match"
            )
            .is_transient()
        );
        assert!(!api(codes::ACTIVATION_EXPIRED, 400, "").is_transient());
        assert!(!api(codes::FINGERPRINT_MISMATCH, 400, "").is_transient());
        assert!(api(codes::FINGERPRINT_MISMATCH, 400, "").needs_reregistration());
        assert!(api(codes::INVALID_INSTANCE_ID, 400, "").needs_reregistration());
        assert!(!api(codes::ACCESS_DENIED, 400, "").needs_reregistration());
    }

    #[test]
    fn display_endpoint_drops_userinfo() {
        let u = Url::parse("https://user:pw@ssm.us-west-2.amazonaws.com/?x=1").expect("url");
        assert_eq!(display_endpoint(&u), "https://ssm.us-west-2.amazonaws.com");
    }
}
