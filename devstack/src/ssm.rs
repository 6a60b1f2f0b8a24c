//! SSM: hybrid activations, managed-instance registration and the RSA-signed instance calls.
//!
//! Two APIs share the `AmazonSSM.<Op>` awsJson 1.1 endpoint, as on AWS:
//! - the public one, SigV4-signed by aws-sdk-ssm: CreateActivation, DescribeActivations,
//!   DeleteActivation, DescribeInstanceInformation, DeregisterManagedInstance and the tag calls on
//!   managed instances; and UpdateInstanceInformation, the agent's presence ping, SigV4-signed
//!   with the instance's own role credentials (aws-sdk-ssm does not model it, agents sign it
//!   themselves). PingStatus follows those pings only: `Online` while the last one is younger
//!   than the connection-lost threshold (settable through the control endpoint), else
//!   `ConnectionLost`, which is also what an instance that never pinged shows. Token requests
//!   do not count: an instance whose agent never pings is invisible to Session Manager and Run
//!   Command however fresh its credentials;
//! - the private one ssm-agent speaks and aws-sdk-ssm does not have (docs/protocols.md "SSM
//!   hybrid activation"):
//!   RegisterManagedInstance (unsigned: the activation code is the secret) and
//!   RequestManagedInstanceRoleToken / UpdateManagedInstancePublicKey, signed SigV4-style with
//!   the instance's RSA-2048 key (RSASSA-PSS, SHA-256, salt 32) instead of an HMAC.
//!
//! The private API is the one no public emulator has, and the one hybrid-agent replaces
//! ssm-agent for, so it is strict: the public key is parsed for real, every signature is checked
//! against the instance's current key with the clock window AWS applies, and the credentials a
//! token request hands out go into the [`crate::auth::CredentialStore`], so calls signed with them
//! verify and expire like real ones. State persists to `--state-dir` after every change.
//!
//! Registration-related error codes are the ones ssm-agent handles (docs/protocols.md "SSM error
//! codes"); validation
//! of public inputs follows the aws-sdk-ssm model (ranges, modeled error names).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{AuthFailure, Principal, epoch_secs};
use crate::persist::PersistError;
use crate::server::DevstackError;
use crate::sigv4::{self, PathEncoding};
use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req};

/// File under `--state-dir` holding activations and instances.
const SSM_STATE_FILE: &str = "ssm.json";

/// Signing name the SDK and the instance calls use.
const SIGNING_NAME: &str = "ssm";

/// CreateActivation without ExpirationDate: 24 hours (SSM CreateActivation docs).
const DEFAULT_ACTIVATION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest activation lifetime SSM allows: 30 days (CreateActivation docs, ExpirationDate).
const MAX_ACTIVATION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// RegistrationLimit default and range (CreateActivation docs / model: 1..=1000).
const DEFAULT_REGISTRATION_LIMIT: i64 = 1;
const MAX_REGISTRATION_LIMIT: i64 = 1000;
/// Length of the activation codes SSM hands out (20 characters; docs/protocols.md
/// "RegisterManagedInstance": ≥ 20).
const ACTIVATION_CODE_LEN: usize = 20;
/// Length of an activation id: a UUID (docs/protocols.md "RegisterManagedInstance").
const ACTIVATION_ID_LEN: usize = 36;
/// `mi-` + 17 lowercase hex digits (managed instance ids, docs/protocols.md
/// "RegisterManagedInstance").
const INSTANCE_ID_PREFIX: &str = "mi-";
const INSTANCE_ID_HEX_LEN: usize = 17;

/// The only key type SSM accepts (docs/protocols.md "RegisterManagedInstance").
const PUBLIC_KEY_TYPE: &str = "Rsa";
/// Standard base64 of the 294-byte DER SubjectPublicKeyInfo of an RSA-2048 key
/// (docs/protocols.md "RegisterManagedInstance").
const PUBLIC_KEY_B64_LEN: usize = 392;
const PUBLIC_KEY_BITS: usize = 2048;

/// DescribeActivations MaxResults range (model: 1..=50).
const ACTIVATIONS_MAX_RESULTS: i64 = 50;
/// DescribeInstanceInformation MaxResults range (model: 5..=50).
const INSTANCES_MIN_RESULTS: i64 = 5;
const INSTANCES_MAX_RESULTS: i64 = 50;
/// Tags per resource (SSM AddTagsToResource docs: at most 50).
const MAX_TAGS: usize = 50;
/// How long after its last UpdateInstanceInformation an instance is still `Online`. SSM
/// documents no figure; amazon-ssm-agent pings every 5 minutes, and three missed pings is ours.
pub const DEFAULT_CONNECTION_LOST_AFTER: Duration = Duration::from_secs(15 * 60);
/// PlatformType values of the SSM model.
const PLATFORM_TYPES: [&str; 3] = ["Windows", "Linux", "MacOS"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Activation {
    id: String,
    code: String,
    description: Option<String>,
    default_instance_name: Option<String>,
    iam_role: String,
    registration_limit: i64,
    registrations_count: i64,
    /// Seconds since the Unix epoch, as every timestamp here.
    expires_at: i64,
    created_at: i64,
    tags: Vec<Tag>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Instance {
    id: String,
    activation_id: String,
    /// Copied from the activation at registration: deleting the activation keeps the instance.
    iam_role: String,
    name: Option<String>,
    /// Current public key: standard base64 of the DER SubjectPublicKeyInfo.
    public_key: String,
    fingerprint: String,
    registered_at: i64,
    /// Last RequestManagedInstanceRoleToken (registration until the first one). Not a ping:
    /// PingStatus follows [`Instance::presence`].
    #[serde(alias = "last_ping_at")]
    last_token_at: i64,
    /// What the last UpdateInstanceInformation reported; `None` until the first.
    #[serde(default)]
    presence: Option<Presence>,
    /// Set through the control endpoint; answered as `UpdateKeyPair=true` until the instance
    /// rotates its key.
    key_rotation_requested: bool,
    tags: Vec<Tag>,
}

/// The fields of an UpdateInstanceInformation, as stored and reported back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Presence {
    agent_name: Option<String>,
    agent_version: Option<String>,
    agent_status: Option<String>,
    platform_type: Option<String>,
    platform_name: Option<String>,
    platform_version: Option<String>,
    ip_address: Option<String>,
    computer_name: Option<String>,
    /// When it arrived, milliseconds since the Unix epoch (devstack clock).
    pinged_at_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SsmData {
    activations: BTreeMap<String, Activation>,
    instances: BTreeMap<String, Instance>,
}

/// Activations and managed instances, persisted to `<state-dir>/ssm.json` when set.
#[derive(Debug)]
pub struct SsmState {
    path: Option<PathBuf>,
    data: SsmData,
    /// PingStatus turns `ConnectionLost` this long after the last ping (control endpoint;
    /// not persisted).
    pub connection_lost_after: Duration,
}

impl Default for SsmState {
    fn default() -> Self {
        SsmState {
            path: None,
            data: SsmData::default(),
            connection_lost_after: DEFAULT_CONNECTION_LOST_AFTER,
        }
    }
}

impl SsmState {
    pub fn load(dir: Option<&Path>) -> Result<Self, DevstackError> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let path = dir.join(SSM_STATE_FILE);
        let data = crate::persist::read_json(&path)?.unwrap_or_default();
        Ok(Self {
            path: Some(path),
            data,
            ..Self::default()
        })
    }

    fn persist(&self) -> Result<(), ApiError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let write = || -> Result<(), PersistError> {
            let bytes = serde_json::to_vec_pretty(&self.data).map_err(|e| PersistError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            crate::persist::write_atomic(path, &bytes)
        };
        write()
            .map_err(|e| ApiError::internal(format!("devstack could not persist SSM state: {e}")))
    }
}

fn err(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

pub async fn handle(state: &Shared, op: &str, req: &Req) -> Response {
    let result = match op {
        // Private API (docs/protocols.md "SSM hybrid activation"): own authentication.
        "RegisterManagedInstance" => register_managed_instance(state, req),
        "RequestManagedInstanceRoleToken" => request_role_token(state, req),
        "UpdateManagedInstancePublicKey" => update_public_key(state, req),
        // Public API: SigV4 first, as AWS authenticates before it looks at the operation.
        _ => crate::auth::authenticate(state, req, SIGNING_NAME).and_then(|caller| match op {
            "UpdateInstanceInformation" => update_instance_information(state, req, &caller),
            "CreateActivation" => create_activation(state, req),
            "DescribeActivations" => describe_activations(state, req),
            "DeleteActivation" => delete_activation(state, req),
            "DescribeInstanceInformation" => describe_instance_information(state, req),
            "DeregisterManagedInstance" => deregister_managed_instance(state, req),
            "AddTagsToResource" => add_tags(state, req),
            "RemoveTagsFromResource" => remove_tags(state, req),
            "ListTagsForResource" => list_tags(state, req),
            _ => Err(err(
                "UnknownOperationException",
                format!("devstack SSM does not implement {op}"),
            )),
        }),
    };
    match result {
        Ok(v) => crate::wire::json_ok(&v),
        Err(e) => e.render(Protocol::AwsJson11),
    }
}

/// Parses an awsJson body (an empty body reads as `{}`).
fn parse<T: DeserializeOwned>(req: &Req) -> Result<T, ApiError> {
    let body: &[u8] = if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    };
    serde_json::from_slice(body).map_err(|e| {
        err(
            "SerializationException",
            format!("request body is not valid for this operation: {e}"),
        )
    })
}

fn now_secs(state: &Shared) -> i64 {
    epoch_secs(state.now())
}

fn require<'a>(field: &str, v: &'a Option<String>) -> Result<&'a str, ApiError> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::validation(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))),
    }
}

/// Pages `items` with an opaque NextToken (the offset of the next item).
fn paginate<T>(
    items: Vec<T>,
    max: usize,
    next_token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let start = match next_token {
        None | Some("") => 0,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|s| *s <= items.len())
            .ok_or_else(|| err("InvalidNextToken", "The specified token isn't valid."))?,
    };
    let end = (start + max).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

// ---------------------------------------------------------------------------------------------
// Public API

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateActivationInput {
    description: Option<String>,
    default_instance_name: Option<String>,
    iam_role: Option<String>,
    registration_limit: Option<i64>,
    /// Epoch seconds (awsJson timestamps are numbers).
    expiration_date: Option<f64>,
    #[serde(default)]
    tags: Vec<Tag>,
}

fn create_activation(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: CreateActivationInput = parse(req)?;
    let iam_role = require("iamRole", &input.iam_role)?.to_string();
    let limit = input
        .registration_limit
        .unwrap_or(DEFAULT_REGISTRATION_LIMIT);
    if !(1..=MAX_REGISTRATION_LIMIT).contains(&limit) {
        return Err(ApiError::validation(format!(
            "RegistrationLimit must be between 1 and {MAX_REGISTRATION_LIMIT}; got {limit}"
        )));
    }
    let now = now_secs(state);
    let expires_at = match input.expiration_date {
        None => now + DEFAULT_ACTIVATION_LIFETIME.as_secs() as i64,
        Some(t) => t.floor() as i64,
    };
    if expires_at <= now {
        return Err(err(
            "InvalidParameters",
            "ExpirationDate must be in the future",
        ));
    }
    if expires_at > now + MAX_ACTIVATION_LIFETIME.as_secs() as i64 {
        return Err(err(
            "InvalidParameters",
            "ExpirationDate can be at most 30 days from now: activations expire within 30 days",
        ));
    }
    if input.tags.len() > MAX_TAGS {
        return Err(err(
            "InvalidParameters",
            format!("at most {MAX_TAGS} tags per activation"),
        ));
    }
    let activation = Activation {
        id: uuid::Uuid::new_v4().to_string(),
        code: crate::auth::random_string(crate::auth::ALNUM, ACTIVATION_CODE_LEN)?,
        description: input.description,
        default_instance_name: input.default_instance_name,
        iam_role,
        registration_limit: limit,
        registrations_count: 0,
        expires_at,
        created_at: now,
        tags: input.tags,
    };
    let out = json!({ "ActivationId": activation.id, "ActivationCode": activation.code });
    let mut ssm = lock(&state.ssm);
    ssm.data
        .activations
        .insert(activation.id.clone(), activation);
    ssm.persist()?;
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ActivationsFilter {
    filter_key: Option<String>,
    #[serde(default)]
    filter_values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeActivationsInput {
    #[serde(default)]
    filters: Vec<ActivationsFilter>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

fn describe_activations(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: DescribeActivationsInput = parse(req)?;
    let max = input.max_results.unwrap_or(ACTIVATIONS_MAX_RESULTS);
    if !(1..=ACTIVATIONS_MAX_RESULTS).contains(&max) {
        return Err(ApiError::validation(format!(
            "MaxResults must be between 1 and {ACTIVATIONS_MAX_RESULTS}"
        )));
    }
    for f in &input.filters {
        match f.filter_key.as_deref() {
            Some("ActivationIds" | "DefaultInstanceName" | "IamRole") => {}
            other => {
                return Err(err(
                    "InvalidFilter",
                    format!("unsupported DescribeActivations filter key {other:?}"),
                ));
            }
        }
    }
    let now = now_secs(state);
    let ssm = lock(&state.ssm);
    let mut list: Vec<&Activation> = ssm
        .data
        .activations
        .values()
        .filter(|a| {
            input.filters.iter().all(|f| {
                let field = match f.filter_key.as_deref() {
                    Some("ActivationIds") => Some(a.id.as_str()),
                    Some("DefaultInstanceName") => a.default_instance_name.as_deref(),
                    _ => Some(a.iam_role.as_str()),
                };
                field.is_some_and(|v| f.filter_values.iter().any(|w| w == v))
            })
        })
        .collect();
    list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let (page, next) = paginate(list, max as usize, input.next_token.as_deref())?;
    let items: Vec<Value> = page
        .into_iter()
        .map(|a| {
            json!({
                "ActivationId": a.id,
                "Description": a.description,
                "DefaultInstanceName": a.default_instance_name,
                "IamRole": a.iam_role,
                "RegistrationLimit": a.registration_limit,
                "RegistrationsCount": a.registrations_count,
                "ExpirationDate": a.expires_at,
                "Expired": now >= a.expires_at,
                "CreatedDate": a.created_at,
                "Tags": a.tags,
            })
        })
        .collect();
    Ok(with_next(json!({ "ActivationList": items }), next))
}

fn with_next(mut v: Value, next: Option<String>) -> Value {
    if let (Some(t), Some(obj)) = (next, v.as_object_mut()) {
        obj.insert("NextToken".into(), Value::String(t));
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ActivationIdInput {
    activation_id: Option<String>,
}

fn delete_activation(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: ActivationIdInput = parse(req)?;
    let id = require("activationId", &input.activation_id)?;
    if uuid::Uuid::parse_str(id).is_err() || id.len() != ACTIVATION_ID_LEN {
        return Err(err(
            "InvalidActivationId",
            format!("{id} is not an activation id (a UUID)"),
        ));
    }
    let mut ssm = lock(&state.ssm);
    if ssm.data.activations.remove(id).is_none() {
        return Err(err(
            "InvalidActivation",
            format!("activation {id} does not exist (deleted?)"),
        ));
    }
    ssm.persist()?;
    Ok(json!({}))
}

/// `Online` while the last UpdateInstanceInformation is younger than the threshold; an
/// instance that never pinged is `ConnectionLost`.
fn ping_status(inst: &Instance, now_ms: i64, lost_after: Duration) -> &'static str {
    match &inst.presence {
        Some(p) if now_ms - p.pinged_at_ms <= lost_after.as_millis() as i64 => "Online",
        _ => "ConnectionLost",
    }
}

fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct LegacyInstanceFilter {
    key: Option<String>,
    #[serde(rename = "valueSet", default)]
    value_set: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StringFilter {
    key: Option<String>,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeInstanceInformationInput {
    #[serde(default)]
    instance_information_filter_list: Vec<LegacyInstanceFilter>,
    #[serde(default)]
    filters: Vec<StringFilter>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

/// Does `inst` pass the filter `key` = any of `values`?
fn instance_matches(
    key: &str,
    values: &[String],
    inst: &Instance,
    ping: &str,
) -> Result<bool, ApiError> {
    let any = |field: &str| values.iter().any(|v| v == field);
    Ok(match key {
        "InstanceIds" => {
            if let Some(bad) = values
                .iter()
                .find(|v| !(v.starts_with("mi-") || v.starts_with("i-")))
            {
                return Err(err(
                    "InvalidInstanceInformationFilterValue",
                    format!("{bad} is not an instance id"),
                ));
            }
            any(&inst.id)
        }
        "ActivationIds" => any(&inst.activation_id),
        "IamRole" => any(&inst.iam_role),
        "PingStatus" => any(ping),
        "AgentVersion" => inst
            .presence
            .as_ref()
            .and_then(|p| p.agent_version.as_deref())
            .is_some_and(any),
        "PlatformTypes" => inst
            .presence
            .as_ref()
            .and_then(|p| p.platform_type.as_deref())
            .is_some_and(any),
        "ResourceType" => any("ManagedInstance"),
        "tag-key" => inst.tags.iter().any(|t| any(&t.key)),
        k => match k.strip_prefix("tag:") {
            Some(tag) => inst.tags.iter().any(|t| t.key == tag && any(&t.value)),
            None => {
                return Err(err(
                    "InvalidFilterKey",
                    format!("devstack does not filter instances on {k:?}"),
                ));
            }
        },
    })
}

fn describe_instance_information(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: DescribeInstanceInformationInput = parse(req)?;
    let max = input.max_results.unwrap_or(INSTANCES_MAX_RESULTS);
    if !(INSTANCES_MIN_RESULTS..=INSTANCES_MAX_RESULTS).contains(&max) {
        return Err(ApiError::validation(format!(
            "MaxResults must be between {INSTANCES_MIN_RESULTS} and {INSTANCES_MAX_RESULTS}"
        )));
    }
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    for f in input.instance_information_filter_list {
        filters.push((f.key.unwrap_or_default(), f.value_set));
    }
    for f in input.filters {
        filters.push((f.key.unwrap_or_default(), f.values));
    }
    if let Some((k, _)) = filters.iter().find(|(_, v)| v.is_empty()) {
        return Err(err(
            "InvalidInstanceInformationFilterValue",
            format!("filter {k:?} has no values"),
        ));
    }
    let now_ms = epoch_ms(state.now());
    let ssm = lock(&state.ssm);
    let mut list = Vec::new();
    for inst in ssm.data.instances.values() {
        let ping = ping_status(inst, now_ms, ssm.connection_lost_after);
        let mut keep = true;
        for (k, v) in &filters {
            keep &= instance_matches(k, v, inst, ping)?;
        }
        if keep {
            list.push((inst, ping));
        }
    }
    list.sort_by(|(a, _), (b, _)| (a.registered_at, &a.id).cmp(&(b.registered_at, &b.id)));
    let (page, next) = paginate(list, max as usize, input.next_token.as_deref())?;
    let items: Vec<Value> = page
        .into_iter()
        .map(|(i, ping)| {
            let mut v = json!({
                "InstanceId": i.id,
                "PingStatus": ping,
                "ResourceType": "ManagedInstance",
                "ActivationId": i.activation_id,
                "IamRole": i.iam_role,
                "RegistrationDate": i.registered_at,
                "Name": i.name,
                "SourceId": i.id,
                "SourceType": "AWS::SSM::ManagedInstance",
            });
            if let (Some(p), Some(obj)) = (&i.presence, v.as_object_mut()) {
                obj.insert(
                    "LastPingDateTime".into(),
                    json!(p.pinged_at_ms as f64 / 1000.0),
                );
                for (name, value) in [
                    ("AgentVersion", &p.agent_version),
                    ("PlatformType", &p.platform_type),
                    ("PlatformName", &p.platform_name),
                    ("PlatformVersion", &p.platform_version),
                    ("IPAddress", &p.ip_address),
                    ("ComputerName", &p.computer_name),
                ] {
                    if let Some(value) = value {
                        obj.insert(name.into(), json!(value));
                    }
                }
            }
            v
        })
        .collect();
    Ok(with_next(json!({ "InstanceInformationList": items }), next))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateInstanceInformationInput {
    instance_id: Option<String>,
    agent_name: Option<String>,
    agent_version: Option<String>,
    agent_status: Option<String>,
    platform_type: Option<String>,
    platform_name: Option<String>,
    platform_version: Option<String>,
    #[serde(rename = "IPAddress")]
    ip_address: Option<String>,
    computer_name: Option<String>,
}

/// The managed instance whose role credentials signed the call: issued by
/// RequestManagedInstanceRoleToken, they are a session of the instance's role named after it.
fn caller_instance(caller: &Principal) -> Option<&str> {
    let (_, session) = caller.arn.split_once(":assumed-role/")?;
    let session = session.rsplit('/').next()?;
    session.starts_with(INSTANCE_ID_PREFIX).then_some(session)
}

/// The agent's presence ping. As on SSM, an instance reports for itself only: a call signed
/// with another instance's role credentials is refused (the admin key, an operator's IAM user
/// with every permission, may report for any instance).
fn update_instance_information(
    state: &Shared,
    req: &Req,
    caller: &Principal,
) -> Result<Value, ApiError> {
    let input: UpdateInstanceInformationInput = parse(req)?;
    let id = require("instanceId", &input.instance_id)?;
    let is_admin = caller.access_key_id == crate::auth::ADMIN_ACCESS_KEY_ID;
    if !is_admin && caller_instance(caller) != Some(id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: ssm:UpdateInstanceInformation on resource: arn:aws:ssm:{}:{}:managed-instance/{id} (an instance reports for itself, with its own role credentials)",
                caller.arn, state.config.region, state.config.account_id
            ),
        ));
    }
    if let Some(t) = input.platform_type.as_deref()
        && !PLATFORM_TYPES.contains(&t)
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{t}' at 'platformType' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            PLATFORM_TYPES.join(", ")
        )));
    }
    let now_ms = epoch_ms(state.now());
    let mut ssm = lock(&state.ssm);
    let inst = ssm
        .data
        .instances
        .get_mut(id)
        .ok_or_else(|| invalid_instance(id))?;
    inst.presence = Some(Presence {
        agent_name: input.agent_name,
        agent_version: input.agent_version,
        agent_status: input.agent_status,
        platform_type: input.platform_type,
        platform_name: input.platform_name,
        platform_version: input.platform_version,
        ip_address: input.ip_address,
        computer_name: input.computer_name,
        pinged_at_ms: now_ms,
    });
    ssm.persist()?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceIdInput {
    instance_id: Option<String>,
}

fn deregister_managed_instance(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: InstanceIdInput = parse(req)?;
    let id = require("instanceId", &input.instance_id)?;
    let mut ssm = lock(&state.ssm);
    if ssm.data.instances.remove(id).is_none() {
        return Err(invalid_instance(id));
    }
    ssm.persist()?;
    Ok(json!({}))
}

fn invalid_instance(id: &str) -> ApiError {
    err(
        "InvalidInstanceId",
        format!(
            "Instance {id} is not a registered managed instance (never registered, or deregistered)"
        ),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagsInput {
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    tag_keys: Vec<String>,
}

/// Runs `f` on the managed instance a tag call names.
fn with_tagged_instance<R>(
    state: &Shared,
    input: &TagsInput,
    f: impl FnOnce(&mut Vec<Tag>) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let rtype = require("resourceType", &input.resource_type)?;
    let id = require("resourceId", &input.resource_id)?;
    if rtype != "ManagedInstance" {
        return Err(err(
            "InvalidResourceType",
            format!("devstack tags only ManagedInstance resources, not {rtype}"),
        ));
    }
    let mut ssm = lock(&state.ssm);
    let inst = ssm
        .data
        .instances
        .get_mut(id)
        .ok_or_else(|| err("InvalidResourceId", format!("no managed instance {id}")))?;
    let out = f(&mut inst.tags)?;
    ssm.persist()?;
    Ok(out)
}

fn add_tags(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: TagsInput = parse(req)?;
    let new = input.tags.clone();
    with_tagged_instance(state, &input, |tags| {
        let mut merged = tags.clone();
        for t in new {
            match merged.iter_mut().find(|m| m.key == t.key) {
                Some(m) => m.value = t.value,
                None => merged.push(t),
            }
        }
        if merged.len() > MAX_TAGS {
            return Err(err(
                "TooManyTagsError",
                format!("a resource can have at most {MAX_TAGS} tags"),
            ));
        }
        *tags = merged;
        Ok(json!({}))
    })
}

fn remove_tags(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: TagsInput = parse(req)?;
    let keys = input.tag_keys.clone();
    with_tagged_instance(state, &input, |tags| {
        tags.retain(|t| !keys.contains(&t.key));
        Ok(json!({}))
    })
}

fn list_tags(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: TagsInput = parse(req)?;
    with_tagged_instance(state, &input, |tags| Ok(json!({ "TagList": tags })))
}

// ---------------------------------------------------------------------------------------------
// Private API (docs/protocols.md "SSM hybrid activation")

/// Checks a PublicKey the way registration and key rotation require: type `Rsa`, exactly 392
/// characters of standard base64, decoding to a DER SubjectPublicKeyInfo of an RSA-2048 key.
fn validate_public_key(key: Option<&str>, key_type: Option<&str>) -> Result<String, ApiError> {
    let bad = |m: String| err("InvalidPublicKey", m);
    match key_type {
        Some(PUBLIC_KEY_TYPE) => {}
        other => {
            return Err(bad(format!(
                "PublicKeyType must be {PUBLIC_KEY_TYPE:?}; got {other:?}"
            )));
        }
    }
    let key = key.ok_or_else(|| bad("PublicKey is required".into()))?;
    if key.len() != PUBLIC_KEY_B64_LEN {
        return Err(bad(format!(
            "PublicKey must be the standard base64 of the DER SubjectPublicKeyInfo of an RSA-{PUBLIC_KEY_BITS} key ({PUBLIC_KEY_B64_LEN} characters); got {} characters",
            key.len()
        )));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| bad(format!("PublicKey is not standard base64: {e}")))?;
    let parsed = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&der).map_err(|e| {
        bad(format!(
            "PublicKey is not a DER SubjectPublicKeyInfo of an RSA key: {e}"
        ))
    })?;
    if parsed.key_size_bits() != PUBLIC_KEY_BITS {
        return Err(bad(format!(
            "PublicKey is RSA-{}; SSM requires RSA-{PUBLIC_KEY_BITS}",
            parsed.key_size_bits()
        )));
    }
    Ok(key.to_string())
}

/// Verifies an RSASSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature, standard base64,
/// over `message` with the SubjectPublicKeyInfo `spki_b64`.
///
/// ring's `UnparsedPublicKey` contract is a PKCS#1 RSAPublicKey. aws-lc-rs 1.19 happens to accept
/// SPKI too, but we convert explicitly so the check does not hang on that leniency.
fn verify_rsa_pss(spki_b64: &str, message: &[u8], signature_b64: &str) -> bool {
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim())
    else {
        return false;
    };
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(spki_b64) else {
        return false;
    };
    let Ok(public) = aws_lc_rs::rsa::PublicKey::from_der(&der) else {
        return false;
    };
    // `RSA_PSS_2048_8192_SHA256` verifies with the salt length fixed to the digest length (32).
    UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, public.as_ref())
        .verify(message, &signature)
        .is_ok()
}

/// Authenticates an instance call: SigV4 shape, `mi-...` key id, clock window, RSA-PSS signature
/// against the instance's current key. Returns the instance id.
fn verify_instance_call(state: &Shared, req: &Req) -> Result<String, ApiError> {
    let auth_err = |f: AuthFailure| f.into_api_error(SIGNING_NAME);
    let signed =
        sigv4::prepare(req, PathEncoding::NormalizedDouble).map_err(|e| auth_err(e.into()))?;
    if signed.auth.service != SIGNING_NAME {
        return Err(auth_err(AuthFailure::BadSignature(format!(
            "Credential should be scoped to correct service: '{SIGNING_NAME}'. (got '{}')",
            signed.auth.service
        ))));
    }
    let id = signed.auth.access_key_id.clone();
    let public_key = lock(&state.ssm)
        .data
        .instances
        .get(&id)
        .map(|i| i.public_key.clone())
        .ok_or_else(|| invalid_instance(&id))?;
    sigv4::check_freshness(signed.signed_at, state.now())
        .map_err(|m| auth_err(AuthFailure::BadSignature(m)))?;
    if !verify_rsa_pss(
        &public_key,
        signed.string_to_sign.as_bytes(),
        &signed.auth.signature,
    ) {
        return Err(auth_err(AuthFailure::BadSignature(format!(
            "{}(Signature must be the standard base64 RSASSA-PSS SHA-256 signature, salt 32, made with the instance's current key.)",
            crate::auth::mismatch_message(&signed)
        ))));
    }
    Ok(id)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterInput {
    activation_code: Option<String>,
    activation_id: Option<String>,
    public_key: Option<String>,
    public_key_type: Option<String>,
    fingerprint: Option<String>,
}

fn new_instance_id(existing: &BTreeMap<String, Instance>) -> Result<String, ApiError> {
    loop {
        let id = format!(
            "{INSTANCE_ID_PREFIX}{}",
            crate::auth::random_string(b"0123456789abcdef", INSTANCE_ID_HEX_LEN)?
        );
        if !existing.contains_key(&id) {
            return Ok(id);
        }
    }
}

fn register_managed_instance(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let input: RegisterInput = parse(req)?;
    let invalid = || {
        err(
            "InvalidActivation",
            "The activation is not valid: the ActivationId does not exist (deleted?) or the ActivationCode does not match it.",
        )
    };
    let activation_id = input.activation_id.as_deref().ok_or_else(invalid)?;
    let code = input.activation_code.as_deref().ok_or_else(invalid)?;
    let now = now_secs(state);
    let mut ssm = lock(&state.ssm);
    let activation = ssm
        .data
        .activations
        .get(activation_id)
        .ok_or_else(invalid)?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        code.as_bytes(),
        activation.code.as_bytes(),
    )
    .is_err()
    {
        return Err(invalid());
    }
    if now >= activation.expires_at {
        return Err(err(
            "ActivationExpired",
            format!(
                "Activation {activation_id} expired at {} (epoch seconds); activations last at most 30 days: create a new one",
                activation.expires_at
            ),
        ));
    }
    let public_key = validate_public_key(
        input.public_key.as_deref(),
        input.public_key_type.as_deref(),
    )?;
    let fingerprint = require("fingerprint", &input.fingerprint)?.to_string();
    if activation.registrations_count >= activation.registration_limit {
        return Err(err(
            "RegistrationLimitExceeded",
            format!(
                "Activation {activation_id} allows {} registration(s), all used: create a new activation",
                activation.registration_limit
            ),
        ));
    }
    let (iam_role, name) = (
        activation.iam_role.clone(),
        activation.default_instance_name.clone(),
    );
    let id = new_instance_id(&ssm.data.instances)?;
    ssm.data.instances.insert(
        id.clone(),
        Instance {
            id: id.clone(),
            activation_id: activation_id.to_string(),
            iam_role,
            name,
            public_key,
            fingerprint,
            registered_at: now,
            last_token_at: now,
            presence: None,
            key_rotation_requested: false,
            tags: Vec::new(),
        },
    );
    if let Some(a) = ssm.data.activations.get_mut(activation_id) {
        a.registrations_count += 1;
    }
    ssm.persist()?;
    Ok(json!({ "InstanceId": id }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TokenInput {
    fingerprint: Option<String>,
}

fn request_role_token(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let id = verify_instance_call(state, req)?;
    let input: TokenInput = parse(req)?;
    let fingerprint = require("fingerprint", &input.fingerprint)?;
    let now = state.now();
    let (principal, update_key_pair) = {
        let mut ssm = lock(&state.ssm);
        let inst = ssm
            .data
            .instances
            .get_mut(&id)
            .ok_or_else(|| invalid_instance(&id))?;
        if fingerprint != inst.fingerprint {
            return Err(err(
                "MachineFingerprintDoesNotMatch",
                format!(
                    "Fingerprint does not match the one {id} registered with: keep the registration fingerprint stable, or register again"
                ),
            ));
        }
        inst.last_token_at = epoch_secs(now);
        let out = (
            Principal::assumed_role(&state.config.account_id, &inst.iam_role, &inst.id),
            inst.key_rotation_requested,
        );
        ssm.persist()?;
        out
    };
    let cred = lock(&state.creds).issue(&principal, now, state.config.token_lifetime)?;
    Ok(json!({
        "AccessKeyId": cred.access_key_id,
        "SecretAccessKey": cred.secret_access_key,
        "SessionToken": cred.session_token,
        "TokenExpirationDate": state
            .expiration_override("ssm")
            .unwrap_or_else(|| json!(cred.expires_at)),
        "UpdateKeyPair": update_key_pair,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateKeyInput {
    new_public_key: Option<String>,
    new_public_key_type: Option<String>,
}

fn update_public_key(state: &Shared, req: &Req) -> Result<Value, ApiError> {
    let id = verify_instance_call(state, req)?;
    let input: UpdateKeyInput = parse(req)?;
    let key = validate_public_key(
        input.new_public_key.as_deref(),
        input.new_public_key_type.as_deref(),
    )?;
    let mut ssm = lock(&state.ssm);
    let inst = ssm
        .data
        .instances
        .get_mut(&id)
        .ok_or_else(|| invalid_instance(&id))?;
    inst.public_key = key;
    inst.key_rotation_requested = false;
    ssm.persist()?;
    Ok(json!({}))
}

// ---------------------------------------------------------------------------------------------
// Control endpoint

/// SSM knobs under the control endpoint (`/_devstack/ssm/...`):
/// - `POST /_devstack/ssm/request-key-rotation?instance=mi-...` → the instance's next token
///   responses carry `UpdateKeyPair=true` until it calls UpdateManagedInstancePublicKey.
/// - `PUT /_devstack/ssm/connection-lost-after?secs=N` → PingStatus turns `ConnectionLost` N
///   seconds (fractions allowed) after an instance's last UpdateInstanceInformation (default
///   [`DEFAULT_CONNECTION_LOST_AFTER`]); `GET` answers the current value.
/// - `GET /_devstack/ssm/presence?instance=mi-...` → what the instance last reported
///   (`agent_name` included, which DescribeInstanceInformation does not show), or `null`.
pub fn control(state: &Shared, op: &str, req: &Req) -> Response {
    let ok = |v: Value| {
        crate::wire::bytes_response(StatusCode::OK, "application/json", v.to_string().into())
    };
    let query = |k: &str| {
        req.query_pairs()
            .into_iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v)
    };
    match (req.method.as_str(), op) {
        ("GET", "ssm/connection-lost-after") => ok(json!({
            "secs": lock(&state.ssm).connection_lost_after.as_secs_f64()
        })),
        ("PUT" | "POST", "ssm/connection-lost-after") => {
            match query("secs").map(|s| s.parse::<f64>()) {
                Some(Ok(secs)) if secs.is_finite() && secs >= 0.0 => {
                    lock(&state.ssm).connection_lost_after = Duration::from_secs_f64(secs);
                    ok(json!({ "secs": secs }))
                }
                _ => ApiError::bad_request(
                    "InvalidParameter",
                    "connection-lost-after needs ?secs=N (N >= 0)",
                )
                .render(Protocol::Plain),
            }
        }
        ("GET", "ssm/presence") => {
            let Some(id) = query("instance") else {
                return ApiError::bad_request(
                    "InvalidParameter",
                    "presence needs ?instance=mi-...",
                )
                .render(Protocol::Plain);
            };
            let ssm = lock(&state.ssm);
            match ssm.data.instances.get(&id) {
                Some(inst) => ok(serde_json::to_value(&inst.presence).unwrap_or_default()),
                None => {
                    ApiError::not_found("InvalidInstanceId", format!("no managed instance {id}"))
                        .render(Protocol::Plain)
                }
            }
        }
        ("POST", "ssm/request-key-rotation") => {
            let Some(id) = req
                .query_pairs()
                .into_iter()
                .find(|(k, _)| k == "instance")
                .map(|(_, v)| v)
            else {
                return ApiError::bad_request(
                    "InvalidParameter",
                    "request-key-rotation needs ?instance=mi-...",
                )
                .render(Protocol::Plain);
            };
            let mut ssm = lock(&state.ssm);
            let Some(inst) = ssm.data.instances.get_mut(&id) else {
                return ApiError::not_found(
                    "InvalidInstanceId",
                    format!("no managed instance {id}"),
                )
                .render(Protocol::Plain);
            };
            inst.key_rotation_requested = true;
            match ssm.persist() {
                Ok(()) => ok(json!({ "instance": id, "update_key_pair": true })),
                Err(e) => e.render(Protocol::Plain),
            }
        }
        _ => ApiError::not_found(
            "UnknownControl",
            format!("no control endpoint {} /_devstack/{op}", req.method),
        )
        .render(Protocol::Plain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_SHA256};

    fn spki_b64(kp: &KeyPair) -> String {
        let der: PublicKeyX509Der<'static> = kp.public_key().as_der().expect("spki");
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    }

    #[test]
    fn rsa_2048_spki_is_accepted_and_pss_signatures_verify() {
        let kp = KeyPair::generate(KeySize::Rsa2048).expect("keygen");
        let key = spki_b64(&kp);
        assert_eq!(key.len(), PUBLIC_KEY_B64_LEN);
        assert_eq!(
            validate_public_key(Some(&key), Some("Rsa")).expect("valid"),
            key
        );

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0u8; kp.public_modulus_len()];
        kp.sign(&RSA_PSS_SHA256, &rng, b"string to sign", &mut sig)
            .expect("sign");
        let sig = base64::engine::general_purpose::STANDARD.encode(&sig);
        assert!(verify_rsa_pss(&key, b"string to sign", &sig));
        assert!(!verify_rsa_pss(&key, b"string to sigN", &sig));
        let other = spki_b64(&KeyPair::generate(KeySize::Rsa2048).expect("keygen"));
        assert!(!verify_rsa_pss(&other, b"string to sign", &sig));
        // Hex is not the wire form.
        let hex_sig = hex::encode(
            base64::engine::general_purpose::STANDARD
                .decode(&sig)
                .expect("b64"),
        );
        assert!(!verify_rsa_pss(&key, b"string to sign", &hex_sig));
    }

    #[test]
    fn public_keys_other_than_rsa_2048_spki_are_rejected() {
        let kp = KeyPair::generate(KeySize::Rsa2048).expect("keygen");
        let key = spki_b64(&kp);
        let code =
            |k: &str, t: Option<&str>| validate_public_key(Some(k), t).expect_err("reject").code;
        assert_eq!(code(&key, Some("Ecdsa")), "InvalidPublicKey");
        assert_eq!(code(&key, None), "InvalidPublicKey");
        // PKCS#1 RSAPublicKey instead of SPKI: wrong length.
        let pkcs1 = base64::engine::general_purpose::STANDARD.encode(kp.public_key().as_ref());
        assert_eq!(code(&pkcs1, Some("Rsa")), "InvalidPublicKey");
        // RSA-3072.
        let big = spki_b64(&KeyPair::generate(KeySize::Rsa3072).expect("keygen"));
        assert_eq!(code(&big, Some("Rsa")), "InvalidPublicKey");
        // Right length, not a key.
        let junk = base64::engine::general_purpose::STANDARD.encode([7u8; 294]);
        assert_eq!(junk.len(), PUBLIC_KEY_B64_LEN);
        assert_eq!(code(&junk, Some("Rsa")), "InvalidPublicKey");
        // URL-safe alphabet is not standard base64.
        let url_safe = key.replace('+', "-").replace('/', "_");
        if url_safe != key {
            assert_eq!(code(&url_safe, Some("Rsa")), "InvalidPublicKey");
        }
    }

    #[test]
    fn pagination_tokens_are_offsets() {
        let (p, next) = paginate((0..7).collect(), 5, None).expect("page 1");
        assert_eq!((p, next.as_deref()), (vec![0, 1, 2, 3, 4], Some("5")));
        let (p, next) = paginate((0..7).collect(), 5, Some("5")).expect("page 2");
        assert_eq!((p, next), (vec![5, 6], None));
        assert_eq!(
            paginate((0..7).collect::<Vec<i32>>(), 5, Some("x"))
                .expect_err("bad")
                .code,
            "InvalidNextToken"
        );
        assert_eq!(
            paginate((0..7).collect::<Vec<i32>>(), 5, Some("9"))
                .expect_err("bad")
                .code,
            "InvalidNextToken"
        );
    }
}
