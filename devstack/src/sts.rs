//! STS GetCallerIdentity over awsQuery: who a set of credentials belongs to.
//!
//! nodeadm's `debug` and hybrid-agent's `doctor` ask it to prove the credentials on a node work;
//! the tests use it as the cheapest SigV4-verified call to check what RequestManagedInstanceRoleToken
//! handed out (assumed-role ARN, expiry, signature). The response is byte-for-byte the XML shape
//! AWS sends, so an SDK parses it exactly as it would AWS's.

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use crate::state::Shared;
use crate::wire::{ApiError, Protocol, Req, xml_escape};

/// awsQuery API version of STS (STS API reference).
const STS_API_VERSION: &str = "2011-06-15";
/// XML namespace of STS responses (STS API reference).
const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// Signing name.
const SIGNING_NAME: &str = "sts";

pub async fn handle(state: &Shared, op: &str, req: &Req) -> Response {
    match answer(state, op, req) {
        Ok(resp) => resp,
        Err(e) => e.render(Protocol::AwsQuery),
    }
}

fn answer(state: &Shared, op: &str, req: &Req) -> Result<Response, ApiError> {
    let principal = crate::auth::authenticate(state, req, SIGNING_NAME)?;
    let version = req
        .form_pairs()
        .into_iter()
        .find(|(k, _)| k == "Version")
        .map(|(_, v)| v);
    if version.as_deref().is_some_and(|v| v != STS_API_VERSION) {
        return Err(ApiError::bad_request(
            "InvalidAction",
            format!(
                "Could not find operation {op} for version {}",
                version.unwrap_or_default()
            ),
        ));
    }
    if op != "GetCallerIdentity" {
        return Err(ApiError::bad_request(
            "InvalidAction",
            format!("devstack STS implements only GetCallerIdentity, not {op}"),
        ));
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = format!(
        "<GetCallerIdentityResponse xmlns=\"{STS_XMLNS}\"><GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
        xml_escape(&principal.arn),
        xml_escape(&principal.user_id),
        xml_escape(&principal.account_id),
    );
    let mut resp = crate::wire::bytes_response(StatusCode::OK, "text/xml", body.into());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    Ok(resp)
}
