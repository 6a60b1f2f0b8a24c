//! CloudWatch Logs over awsJson 1.1 (`X-Amz-Target: Logs_20140328.<Op>`).
//!
//! The point is to be strict where CloudWatch Logs is strict, so an agent that ships here does
//! not fail on AWS: `PutLogEvents` enforces the batch limits at their exact edges (bytes counted
//! as UTF-8 message bytes + 26 per event, 10,000 events, chronological order, 24 h span) and
//! rejects too-old / too-new events per event in `rejectedLogEventsInfo` while storing the rest,
//! measured against the devstack's clock (`State::now`, clock offset included).
//!
//! Operations: CreateLogGroup, CreateLogStream, DeleteLogGroup, DeleteLogStream,
//! PutRetentionPolicy, DeleteRetentionPolicy, DescribeLogGroups, DescribeLogStreams,
//! PutLogEvents, GetLogEvents, FilterLogEvents.
//!
//! Shape: events live per stream in a `Vec` kept sorted by timestamp (a batch is chronological,
//! so it is almost always a plain append), which makes time windows a binary search and the
//! GetLogEvents tokens plain indexes into that window. With a state directory, every accepted
//! batch is appended to the stream's JSON-lines file and the group/stream metadata is a small
//! JSON document rewritten through temp + rename only when groups or streams change.
//!
//! `rejectedLogEventsInfo` indexes follow the AWS documentation: `tooNewLogEventStartIndex` is
//! the first too-new event (inclusive), `tooOldLogEventEndIndex` and `expiredLogEventEndIndex`
//! are exclusive ends (= how many events at the start of the batch were rejected). moto reports
//! the last too-old index inclusively; the documentation is what clients are written against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::persist::{self, PersistError};
use crate::server::DevstackError;
use crate::state::{Shared, lock};
use crate::wire::{ApiError, Protocol, Req, json_ok};

/// Largest PutLogEvents batch: sum of UTF-8 message bytes + 26 per event (PutLogEvents API reference).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Overhead counted per event in the batch size (PutLogEvents API reference).
pub const EVENT_OVERHEAD_BYTES: usize = 26;
/// Most events in one PutLogEvents batch (PutLogEvents API reference).
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Longest time span one batch may cover, in ms (PutLogEvents API reference: 24 hours).
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Events older than this are rejected as too old, in ms (PutLogEvents API reference: 14 days).
pub const MAX_EVENT_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
/// Events further in the future are rejected as too new, in ms (PutLogEvents API reference: 2 hours).
pub const MAX_EVENT_FUTURE_MS: i64 = 2 * 3600 * 1000;
/// Most events and bytes one GetLogEvents / FilterLogEvents page returns (API reference: 10,000 / 1 MB).
pub const MAX_PAGE_EVENTS: usize = 10_000;
pub const MAX_PAGE_BYTES: usize = 1_048_576;
/// Page size limits of DescribeLogGroups / DescribeLogStreams (API reference: 1..=50, default 50).
pub const MAX_DESCRIBE_LIMIT: usize = 50;
/// Name length limits (CreateLogGroup / CreateLogStream API reference).
pub const MAX_GROUP_NAME_LEN: usize = 512;
pub const MAX_STREAM_NAME_LEN: usize = 512;
/// Retention values PutRetentionPolicy accepts (API reference).
pub const RETENTION_DAYS: [i64; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Subdirectory of the state directory and the metadata file inside it.
const LOGS_DIR: &str = "logs";
const META_FILE: &str = "meta.json";
const STREAMS_DIR: &str = "streams";

/// One stored event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEvent {
    #[serde(rename = "t")]
    timestamp: i64,
    #[serde(rename = "i")]
    ingestion_time: i64,
    #[serde(rename = "m")]
    message: String,
}

#[derive(Debug)]
struct LogStream {
    creation_time: i64,
    /// Creation order within the group; part of FilterLogEvents event ids.
    ordinal: u64,
    /// File name of the stream's journal (a hash of group + stream: names may hold `/`, `#`...).
    file: String,
    /// Sorted by timestamp (stable: equal timestamps stay in arrival order).
    events: Vec<StoredEvent>,
    last_ingestion_time: Option<i64>,
    stored_bytes: u64,
    /// Counter behind `nextSequenceToken` (tokens are ignored on input, as on AWS since 2023).
    sequence: u64,
}

#[derive(Debug)]
struct LogGroup {
    creation_time: i64,
    retention_days: Option<i64>,
    next_ordinal: u64,
    streams: BTreeMap<String, LogStream>,
}

/// The CloudWatch Logs store.
#[derive(Debug, Default)]
pub struct LogsState {
    /// `<state_dir>/logs` when persisting.
    dir: Option<PathBuf>,
    groups: BTreeMap<String, LogGroup>,
}

#[derive(Serialize, Deserialize)]
struct MetaDoc {
    groups: Vec<MetaGroup>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaGroup {
    name: String,
    creation_time: i64,
    #[serde(default)]
    retention_in_days: Option<i64>,
    #[serde(default)]
    next_ordinal: u64,
    streams: Vec<MetaStream>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaStream {
    name: String,
    creation_time: i64,
    ordinal: u64,
    file: String,
}

fn stream_file_name(group: &str, stream: &str) -> String {
    let mut input = Vec::with_capacity(group.len() + stream.len() + 1);
    input.extend_from_slice(group.as_bytes());
    input.push(0);
    input.extend_from_slice(stream.as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    format!("{}.jsonl", hex::encode(&digest.as_ref()[..16]))
}

impl LogsState {
    /// Loads groups, streams and events from `<dir>/logs` (nothing there yet = empty store).
    pub fn load(dir: Option<&Path>) -> Result<Self, DevstackError> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let dir = dir.join(LOGS_DIR);
        let mut state = LogsState {
            dir: Some(dir.clone()),
            groups: BTreeMap::new(),
        };
        let Some(meta) = persist::read_json::<MetaDoc>(&dir.join(META_FILE))? else {
            return Ok(state);
        };
        for g in meta.groups {
            let mut streams = BTreeMap::new();
            for s in g.streams {
                let mut events: Vec<StoredEvent> =
                    persist::read_json_lines(&dir.join(STREAMS_DIR).join(&s.file))?;
                events.sort_by_key(|e| e.timestamp);
                let last_ingestion_time = events.iter().map(|e| e.ingestion_time).max();
                let stored_bytes = events.iter().map(|e| e.message.len() as u64).sum();
                let sequence = events.len() as u64;
                streams.insert(
                    s.name,
                    LogStream {
                        creation_time: s.creation_time,
                        ordinal: s.ordinal,
                        file: s.file,
                        events,
                        last_ingestion_time,
                        stored_bytes,
                        sequence,
                    },
                );
            }
            let next_ordinal = g
                .next_ordinal
                .max(streams.values().map(|s| s.ordinal + 1).max().unwrap_or(0));
            state.groups.insert(
                g.name,
                LogGroup {
                    creation_time: g.creation_time,
                    retention_days: g.retention_in_days,
                    next_ordinal,
                    streams,
                },
            );
        }
        Ok(state)
    }

    fn save_meta(&self) -> Result<(), PersistError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let doc = MetaDoc {
            groups: self
                .groups
                .iter()
                .map(|(name, g)| MetaGroup {
                    name: name.clone(),
                    creation_time: g.creation_time,
                    retention_in_days: g.retention_days,
                    next_ordinal: g.next_ordinal,
                    streams: g
                        .streams
                        .iter()
                        .map(|(sname, s)| MetaStream {
                            name: sname.clone(),
                            creation_time: s.creation_time,
                            ordinal: s.ordinal,
                            file: s.file.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| PersistError::Write {
            path: dir.join(META_FILE),
            source: std::io::Error::other(e),
        })?;
        persist::write_atomic(&dir.join(META_FILE), &bytes)
    }

    fn stream_path(&self, file: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(STREAMS_DIR).join(file))
    }
}

fn persist_error(e: PersistError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailableException",
        format!("devstack could not persist: {e}"),
    )
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InvalidParameterException", message)
}

fn group_not_found() -> ApiError {
    ApiError::bad_request(
        "ResourceNotFoundException",
        "The specified log group does not exist.",
    )
}

fn stream_not_found() -> ApiError {
    ApiError::bad_request(
        "ResourceNotFoundException",
        "The specified log stream does not exist.",
    )
}

/// The message AWS gives for a missing required member.
fn required(field: &str) -> ApiError {
    invalid(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
}

/// Handles one CloudWatch Logs operation.
pub async fn handle(state: &Shared, op: &str, req: &Req) -> Response {
    if let Err(e) = crate::auth::authenticate(state, req, "logs") {
        return e.render(Protocol::AwsJson11);
    }
    let now = persist::epoch_millis(state.now());
    let result = match op {
        "CreateLogGroup" => parse(req).and_then(|i| create_log_group(state, i, now)),
        "CreateLogStream" => parse(req).and_then(|i| create_log_stream(state, i, now)),
        "DeleteLogGroup" => parse(req).and_then(|i| delete_log_group(state, i)),
        "DeleteLogStream" => parse(req).and_then(|i| delete_log_stream(state, i)),
        "PutRetentionPolicy" => parse(req).and_then(|i| put_retention_policy(state, i)),
        "DeleteRetentionPolicy" => parse(req).and_then(|i| delete_retention_policy(state, i)),
        "DescribeLogGroups" => parse(req).and_then(|i| describe_log_groups(state, i)),
        "DescribeLogStreams" => parse(req).and_then(|i| describe_log_streams(state, i)),
        "PutLogEvents" => parse(req).and_then(|i| put_log_events(state, i, now)),
        "GetLogEvents" => parse(req).and_then(|i| get_log_events(state, i)),
        "FilterLogEvents" => parse(req).and_then(|i| filter_log_events(state, i)),
        _ => Err(ApiError::bad_request(
            "UnknownOperationException",
            format!("devstack CloudWatch Logs does not implement {op}"),
        )),
    };
    match result {
        Ok(v) => v,
        Err(e) => e.render(Protocol::AwsJson11),
    }
}

fn parse<T: serde::de::DeserializeOwned>(req: &Req) -> Result<T, ApiError> {
    let body: &[u8] = if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "SerializationException",
            format!("cannot parse request body: {e}"),
        )
    })
}

fn ok_json<T: Serialize>(v: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(v)
        .map_err(|e| ApiError::internal(format!("cannot serialise response: {e}")))?;
    Ok(crate::wire::bytes_response(
        axum::http::StatusCode::OK,
        "application/x-amz-json-1.1",
        body.into(),
    ))
}

/// Accepts a name or an ARN (`arn:aws:logs:<region>:<account>:log-group:<name>[:*]`), as the
/// `logGroupIdentifier` members do.
fn group_name(name: Option<String>, identifier: Option<String>) -> Result<String, ApiError> {
    match (name, identifier) {
        (Some(_), Some(_)) => Err(invalid(
            "LogGroup name and LogGroup ARN are mutually exclusive parameters.",
        )),
        (Some(n), None) => Ok(n),
        (None, Some(id)) => match id.split_once(":log-group:") {
            Some((_, rest)) => Ok(rest.strip_suffix(":*").unwrap_or(rest).to_string()),
            None => Ok(id),
        },
        (None, None) => Err(required("logGroupName")),
    }
}

fn validate_group_name(name: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#');
    if name.is_empty() || name.len() > MAX_GROUP_NAME_LEN || !name.chars().all(ok_char) {
        return Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'logGroupName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\.\\-_/#A-Za-z0-9]+"
        )));
    }
    Ok(())
}

fn validate_stream_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN || name.contains([':', '*']) {
        return Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'logStreamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [^:*]*"
        )));
    }
    Ok(())
}

fn group_arn(state: &Shared, group: &str) -> String {
    format!(
        "arn:aws:logs:{}:{}:log-group:{group}",
        state.config.region, state.config.account_id
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    retention_in_days: Option<i64>,
}

fn create_log_group(state: &Shared, i: GroupInput, now: i64) -> Result<Response, ApiError> {
    let name = i.log_group_name.ok_or_else(|| required("logGroupName"))?;
    validate_group_name(&name)?;
    let mut logs = lock(&state.logs);
    if logs.groups.contains_key(&name) {
        return Err(ApiError::bad_request(
            "ResourceAlreadyExistsException",
            "The specified log group already exists",
        ));
    }
    logs.groups.insert(
        name,
        LogGroup {
            creation_time: now,
            retention_days: None,
            next_ordinal: 0,
            streams: BTreeMap::new(),
        },
    );
    logs.save_meta().map_err(persist_error)?;
    Ok(json_ok(&serde_json::json!({})))
}

fn delete_log_group(state: &Shared, i: GroupInput) -> Result<Response, ApiError> {
    let name = group_name(i.log_group_name, i.log_group_identifier)?;
    let mut logs = lock(&state.logs);
    let group = logs.groups.remove(&name).ok_or_else(group_not_found)?;
    for s in group.streams.values() {
        if let Some(p) = logs.stream_path(&s.file) {
            let _ = std::fs::remove_file(p);
        }
    }
    logs.save_meta().map_err(persist_error)?;
    Ok(json_ok(&serde_json::json!({})))
}

fn put_retention_policy(state: &Shared, i: GroupInput) -> Result<Response, ApiError> {
    let name = group_name(i.log_group_name, i.log_group_identifier)?;
    let days = i
        .retention_in_days
        .ok_or_else(|| required("retentionInDays"))?;
    if !RETENTION_DAYS.contains(&days) {
        return Err(invalid(format!(
            "1 validation error detected: Value '{days}' at 'retentionInDays' failed to satisfy constraint: Member must satisfy enum value set: {RETENTION_DAYS:?}"
        )));
    }
    let mut logs = lock(&state.logs);
    logs.groups
        .get_mut(&name)
        .ok_or_else(group_not_found)?
        .retention_days = Some(days);
    logs.save_meta().map_err(persist_error)?;
    Ok(json_ok(&serde_json::json!({})))
}

fn delete_retention_policy(state: &Shared, i: GroupInput) -> Result<Response, ApiError> {
    let name = group_name(i.log_group_name, i.log_group_identifier)?;
    let mut logs = lock(&state.logs);
    logs.groups
        .get_mut(&name)
        .ok_or_else(group_not_found)?
        .retention_days = None;
    logs.save_meta().map_err(persist_error)?;
    Ok(json_ok(&serde_json::json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name: Option<String>,
}

fn create_log_stream(state: &Shared, i: StreamInput, now: i64) -> Result<Response, ApiError> {
    let group = i.log_group_name.ok_or_else(|| required("logGroupName"))?;
    let stream = i.log_stream_name.ok_or_else(|| required("logStreamName"))?;
    validate_stream_name(&stream)?;
    let mut logs = lock(&state.logs);
    let g = logs.groups.get_mut(&group).ok_or_else(group_not_found)?;
    if g.streams.contains_key(&stream) {
        return Err(ApiError::bad_request(
            "ResourceAlreadyExistsException",
            "The specified log stream already exists",
        ));
    }
    let ordinal = g.next_ordinal;
    g.next_ordinal += 1;
    let file = stream_file_name(&group, &stream);
    g.streams.insert(
        stream,
        LogStream {
            creation_time: now,
            ordinal,
            file,
            events: Vec::new(),
            last_ingestion_time: None,
            stored_bytes: 0,
            sequence: 0,
        },
    );
    logs.save_meta().map_err(persist_error)?;
    Ok(json_ok(&serde_json::json!({})))
}

fn delete_log_stream(state: &Shared, i: StreamInput) -> Result<Response, ApiError> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    let stream = i.log_stream_name.ok_or_else(|| required("logStreamName"))?;
    let mut logs = lock(&state.logs);
    let g = logs.groups.get_mut(&group).ok_or_else(group_not_found)?;
    let s = g.streams.remove(&stream).ok_or_else(stream_not_found)?;
    if let Some(p) = logs.stream_path(&s.file) {
        let _ = std::fs::remove_file(p);
    }
    logs.save_meta().map_err(persist_error)?;
    Ok(json_ok(&serde_json::json!({})))
}

/// Parses a `<prefix>/<offset>` pagination token.
fn parse_token(token: Option<&str>, prefix: &str) -> Result<usize, ApiError> {
    match token {
        None => Ok(0),
        Some(t) => t
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| invalid("The specified nextToken is invalid.")),
    }
}

fn check_limit(limit: Option<i64>, max: usize, default: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(l) if l >= 1 && l as usize <= max => Ok(l as usize),
        Some(l) => Err(invalid(format!(
            "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {max}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeGroupsInput {
    log_group_name_prefix: Option<String>,
    log_group_name_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupOut {
    log_group_name: String,
    creation_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_in_days: Option<i64>,
    metric_filter_count: i64,
    arn: String,
    stored_bytes: u64,
    log_group_class: &'static str,
    log_group_arn: String,
}

fn describe_log_groups(state: &Shared, i: DescribeGroupsInput) -> Result<Response, ApiError> {
    if i.log_group_name_prefix.is_some() && i.log_group_name_pattern.is_some() {
        return Err(invalid(
            "LogGroup name prefix and LogGroup name pattern are mutually exclusive parameters.",
        ));
    }
    let limit = check_limit(i.limit, MAX_DESCRIBE_LIMIT, MAX_DESCRIBE_LIMIT)?;
    let offset = parse_token(i.next_token.as_deref(), "dlg")?;
    let logs = lock(&state.logs);
    let matching: Vec<(&String, &LogGroup)> = logs
        .groups
        .iter()
        .filter(|(n, _)| {
            i.log_group_name_prefix
                .as_deref()
                .is_none_or(|p| n.starts_with(p))
        })
        .filter(|(n, _)| {
            i.log_group_name_pattern
                .as_deref()
                .is_none_or(|p| n.contains(p))
        })
        .collect();
    let page: Vec<GroupOut> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(name, g)| {
            let arn = group_arn(state, name);
            GroupOut {
                log_group_name: (*name).clone(),
                creation_time: g.creation_time,
                retention_in_days: g.retention_days,
                metric_filter_count: 0,
                arn: format!("{arn}:*"),
                stored_bytes: g.streams.values().map(|s| s.stored_bytes).sum(),
                log_group_class: "STANDARD",
                log_group_arn: arn,
            }
        })
        .collect();
    let mut out = serde_json::json!({ "logGroups": page });
    if offset + limit < matching.len() {
        out["nextToken"] = serde_json::Value::String(format!("dlg/{}", offset + limit));
    }
    Ok(json_ok(&out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeStreamsInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name_prefix: Option<String>,
    order_by: Option<String>,
    descending: Option<bool>,
    next_token: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamOut {
    log_stream_name: String,
    creation_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_event_timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_event_timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_ingestion_time: Option<i64>,
    upload_sequence_token: String,
    arn: String,
    stored_bytes: u64,
}

fn describe_log_streams(state: &Shared, i: DescribeStreamsInput) -> Result<Response, ApiError> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    let by_time = match i.order_by.as_deref() {
        None | Some("LogStreamName") => false,
        Some("LastEventTime") => true,
        Some(o) => {
            return Err(invalid(format!(
                "1 validation error detected: Value '{o}' at 'orderBy' failed to satisfy constraint: Member must satisfy enum value set: [LogStreamName, LastEventTime]"
            )));
        }
    };
    if by_time && i.log_stream_name_prefix.is_some() {
        return Err(invalid(
            "Cannot order by LastEventTime with a logStreamNamePrefix.",
        ));
    }
    let limit = check_limit(i.limit, MAX_DESCRIBE_LIMIT, MAX_DESCRIBE_LIMIT)?;
    let offset = parse_token(i.next_token.as_deref(), "dls")?;
    let logs = lock(&state.logs);
    let g = logs.groups.get(&group).ok_or_else(group_not_found)?;
    let mut matching: Vec<(&String, &LogStream)> = g
        .streams
        .iter()
        .filter(|(n, _)| {
            i.log_stream_name_prefix
                .as_deref()
                .is_none_or(|p| n.starts_with(p))
        })
        .collect();
    if by_time {
        // Streams without events sort first, as their lastEventTimestamp is absent.
        matching.sort_by_key(|(n, s)| (s.events.last().map(|e| e.timestamp), (*n).clone()));
    }
    if i.descending.unwrap_or(false) {
        matching.reverse();
    }
    let arn = group_arn(state, &group);
    let page: Vec<StreamOut> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(name, s)| StreamOut {
            log_stream_name: (*name).clone(),
            creation_time: s.creation_time,
            first_event_timestamp: s.events.first().map(|e| e.timestamp),
            last_event_timestamp: s.events.last().map(|e| e.timestamp),
            last_ingestion_time: s.last_ingestion_time,
            upload_sequence_token: sequence_token(s.sequence),
            arn: format!("{arn}:log-stream:{name}"),
            stored_bytes: 0,
        })
        .collect();
    let mut out = serde_json::json!({ "logStreams": page });
    if offset + limit < matching.len() {
        out["nextToken"] = serde_json::Value::String(format!("dls/{}", offset + limit));
    }
    Ok(json_ok(&out))
}

/// Sequence tokens look like AWS's (56 digits); clients only pass them back, and we ignore them.
fn sequence_token(seq: u64) -> String {
    format!("{seq:056}")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutEventsInput {
    log_group_name: Option<String>,
    log_stream_name: Option<String>,
    log_events: Option<Vec<InputEvent>>,
}

#[derive(Deserialize)]
struct InputEvent {
    timestamp: Option<i64>,
    message: Option<String>,
}

#[derive(Serialize, Default, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct RejectedInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    too_new_log_event_start_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    too_old_log_event_end_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expired_log_event_end_index: Option<usize>,
}

/// Checks a batch against the whole-call limits; `Ok` carries `(timestamp, message)` pairs.
fn validate_batch(events: Vec<InputEvent>) -> Result<Vec<(i64, String)>, ApiError> {
    if events.is_empty() {
        return Err(invalid(
            "1 validation error detected: Value '[]' at 'logEvents' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    if events.len() > MAX_BATCH_EVENTS {
        return Err(invalid(format!(
            "1 validation error detected: Value at 'logEvents' failed to satisfy constraint: Member must have length less than or equal to {MAX_BATCH_EVENTS}"
        )));
    }
    let mut out = Vec::with_capacity(events.len());
    let mut bytes = 0usize;
    for (n, e) in events.into_iter().enumerate() {
        let timestamp = e
            .timestamp
            .ok_or_else(|| required(&format!("logEvents.{}.member.timestamp", n + 1)))?;
        let message = e
            .message
            .ok_or_else(|| required(&format!("logEvents.{}.member.message", n + 1)))?;
        if message.is_empty() {
            return Err(invalid(format!(
                "1 validation error detected: Value '' at 'logEvents.{}.member.message' failed to satisfy constraint: Member must have length greater than or equal to 1",
                n + 1
            )));
        }
        bytes += message.len() + EVENT_OVERHEAD_BYTES;
        out.push((timestamp, message));
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(invalid(format!(
            "Upload too large: {bytes} bytes exceeds limit of {MAX_BATCH_BYTES}"
        )));
    }
    if out.windows(2).any(|w| w[1].0 < w[0].0) {
        return Err(invalid(
            "Log events in a single PutLogEvents request must be in chronological order.",
        ));
    }
    if let (Some(first), Some(last)) = (out.first(), out.last())
        && last.0 - first.0 > MAX_BATCH_SPAN_MS
    {
        return Err(invalid(
            "The batch of log events in a single PutLogEvents request cannot span more than 24 hours.",
        ));
    }
    Ok(out)
}

/// Splits a chronological batch into rejected prefix / accepted middle / rejected suffix.
fn classify(
    events: &[(i64, String)],
    now: i64,
    retention_days: Option<i64>,
) -> (std::ops::Range<usize>, RejectedInfo) {
    let too_old_before = now - MAX_EVENT_AGE_MS;
    let expired_before = retention_days.map(|d| now - d * 24 * 3600 * 1000);
    let too_new_after = now + MAX_EVENT_FUTURE_MS;
    let too_old_end = events.partition_point(|(t, _)| *t < too_old_before);
    let expired_end = match expired_before {
        Some(cut) => events.partition_point(|(t, _)| *t < cut).max(too_old_end),
        None => too_old_end,
    };
    let too_new_start = events
        .partition_point(|(t, _)| *t <= too_new_after)
        .max(expired_end);
    let info = RejectedInfo {
        too_new_log_event_start_index: (too_new_start < events.len()).then_some(too_new_start),
        too_old_log_event_end_index: (too_old_end > 0).then_some(too_old_end),
        expired_log_event_end_index: (expired_end > too_old_end).then_some(expired_end),
    };
    (expired_end..too_new_start, info)
}

fn put_log_events(state: &Shared, i: PutEventsInput, now: i64) -> Result<Response, ApiError> {
    let group = i.log_group_name.ok_or_else(|| required("logGroupName"))?;
    let stream = i.log_stream_name.ok_or_else(|| required("logStreamName"))?;
    let events = validate_batch(i.log_events.ok_or_else(|| required("logEvents"))?)?;

    let mut logs = lock(&state.logs);
    let logs = &mut *logs;
    let g = logs.groups.get_mut(&group).ok_or_else(group_not_found)?;
    let retention = g.retention_days;
    let s = g.streams.get_mut(&stream).ok_or_else(stream_not_found)?;
    let (accepted, rejected) = classify(&events, now, retention);

    let mut events = events;
    let stored: Vec<StoredEvent> = events
        .drain(accepted)
        .map(|(timestamp, message)| StoredEvent {
            timestamp,
            ingestion_time: now,
            message,
        })
        .collect();
    if !stored.is_empty() {
        if let Some(dir) = &logs.dir {
            persist::append_json_lines(&dir.join(STREAMS_DIR).join(&s.file), &stored)
                .map_err(persist_error)?;
        }
        let needs_sort = match (s.events.last(), stored.first()) {
            (Some(last), Some(first)) => first.timestamp < last.timestamp,
            _ => false,
        };
        s.stored_bytes += stored.iter().map(|e| e.message.len() as u64).sum::<u64>();
        s.events.extend(stored);
        if needs_sort {
            s.events.sort_by_key(|e| e.timestamp);
        }
        s.last_ingestion_time = Some(now);
    }
    s.sequence += 1;
    let mut out = serde_json::json!({ "nextSequenceToken": sequence_token(s.sequence) });
    if rejected != RejectedInfo::default() {
        out["rejectedLogEventsInfo"] = serde_json::to_value(&rejected).unwrap_or_default();
    }
    Ok(json_ok(&out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetEventsInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    next_token: Option<String>,
    limit: Option<i64>,
    start_from_head: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutEvent<'a> {
    timestamp: i64,
    message: &'a str,
    ingestion_time: i64,
}

/// Window of a sorted event list: `start` inclusive, `end` exclusive (API reference).
fn window(events: &[StoredEvent], start: Option<i64>, end: Option<i64>) -> &[StoredEvent] {
    let lo = start
        .map(|s| events.partition_point(|e| e.timestamp < s))
        .unwrap_or(0);
    let hi = end
        .map(|t| events.partition_point(|e| e.timestamp < t))
        .unwrap_or(events.len())
        .max(lo);
    &events[lo..hi]
}

/// GetLogEvents tokens: `f/<index>/s` reads forward from index, `b/<index>/s` backward from it
/// (exclusive), with the index zero-padded like AWS's 56-digit tokens. At either end the token
/// handed in comes back unchanged, which is how the SDK paginators know to stop.
fn get_token(direction: char, index: usize) -> String {
    format!("{direction}/{index:056}/s")
}

fn parse_get_token(token: &str) -> Option<(char, usize)> {
    let (dir, rest) = token.split_at_checked(2)?;
    let direction = match dir {
        "f/" => 'f',
        "b/" => 'b',
        _ => return None,
    };
    let digits = rest.strip_suffix("/s").unwrap_or(rest);
    Some((direction, digits.parse().ok()?))
}

fn get_log_events(state: &Shared, i: GetEventsInput) -> Result<Response, ApiError> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    let stream = i.log_stream_name.ok_or_else(|| required("logStreamName"))?;
    let limit = check_limit(i.limit, MAX_PAGE_EVENTS, MAX_PAGE_EVENTS)?;
    let token = match i.next_token.as_deref() {
        None => None,
        Some(t) => {
            Some(parse_get_token(t).ok_or_else(|| invalid("The specified nextToken is invalid."))?)
        }
    };
    let logs = lock(&state.logs);
    let g = logs.groups.get(&group).ok_or_else(group_not_found)?;
    let s = g.streams.get(&stream).ok_or_else(stream_not_found)?;
    let events = window(&s.events, i.start_time, i.end_time);
    let n = events.len();
    let fits = |taken: usize, bytes: usize| taken < limit && bytes <= MAX_PAGE_BYTES;
    // Reads forward from `from`, or backward ending at `to`, within the page limits.
    let forward = |from: usize| {
        let from = from.min(n);
        let (mut end, mut bytes) = (from, 0usize);
        while end < n
            && fits(
                end - from,
                bytes + events[end].message.len() + EVENT_OVERHEAD_BYTES,
            )
        {
            bytes += events[end].message.len() + EVENT_OVERHEAD_BYTES;
            end += 1;
        }
        from..end
    };
    let backward = |to: usize| {
        let to = to.min(n);
        let (mut start, mut bytes) = (to, 0usize);
        while start > 0
            && fits(
                to - start,
                bytes + events[start - 1].message.len() + EVENT_OVERHEAD_BYTES,
            )
        {
            bytes += events[start - 1].message.len() + EVENT_OVERHEAD_BYTES;
            start -= 1;
        }
        start..to
    };
    let range = match token {
        Some(('f', p)) => forward(p),
        Some((_, p)) => backward(p),
        None if i.start_from_head.unwrap_or(false) => forward(0),
        None => backward(n),
    };
    // At the end in the direction read, hand the same token back.
    let next_forward = match token {
        Some(('f', p)) if range.is_empty() => get_token('f', p),
        _ => get_token('f', range.end),
    };
    let next_backward = match token {
        Some(('b', p)) if range.is_empty() => get_token('b', p),
        _ => get_token('b', range.start),
    };
    let out: Vec<OutEvent<'_>> = events[range]
        .iter()
        .map(|e| OutEvent {
            timestamp: e.timestamp,
            message: &e.message,
            ingestion_time: e.ingestion_time,
        })
        .collect();
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct GetOut<'a> {
        events: Vec<OutEvent<'a>>,
        next_forward_token: String,
        next_backward_token: String,
    }
    ok_json(&GetOut {
        events: out,
        next_forward_token: next_forward,
        next_backward_token: next_backward,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_names: Option<Vec<String>>,
    log_stream_name_prefix: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    filter_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<i64>,
}

/// The subset of the CloudWatch Logs filter pattern syntax the devstack understands: an empty
/// pattern matches everything, `"a phrase"` matches it literally, otherwise every whitespace
/// separated term must occur (terms may be quoted; a leading `-` excludes). JSON (`{ ... }`) and
/// space-delimited (`[ ... ]`) patterns are refused rather than silently matching wrongly.
#[derive(Debug)]
struct Pattern {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, ApiError> {
        let p = p.trim();
        if p.starts_with('{') || p.starts_with('[') {
            return Err(invalid(format!(
                "devstack supports only term filter patterns, not '{p}'"
            )));
        }
        let (mut include, mut exclude) = (Vec::new(), Vec::new());
        let mut rest = p;
        while !rest.is_empty() {
            let negate = rest.starts_with('-');
            if negate {
                rest = &rest[1..];
            }
            let term;
            if let Some(q) = rest.strip_prefix('"') {
                let end = q.find('"').ok_or_else(|| {
                    invalid(format!(
                        "Invalid filter pattern: unterminated quote in '{p}'"
                    ))
                })?;
                term = &q[..end];
                rest = &q[end + 1..];
            } else {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                term = &rest[..end];
                rest = &rest[end..];
            }
            if !term.is_empty() {
                if negate {
                    exclude.push(term.to_string())
                } else {
                    include.push(term.to_string())
                }
            }
            rest = rest.trim_start();
        }
        Ok(Pattern { include, exclude })
    }

    fn matches(&self, message: &str) -> bool {
        self.include.iter().all(|t| message.contains(t.as_str()))
            && !self.exclude.iter().any(|t| message.contains(t.as_str()))
    }
}

fn filter_log_events(state: &Shared, i: FilterInput) -> Result<Response, ApiError> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    if i.log_stream_names.is_some() && i.log_stream_name_prefix.is_some() {
        return Err(invalid(
            "logStreamNames and logStreamNamePrefix are mutually exclusive parameters.",
        ));
    }
    let limit = check_limit(i.limit, MAX_PAGE_EVENTS, MAX_PAGE_EVENTS)?;
    let offset = parse_token(i.next_token.as_deref(), "fle")?;
    let pattern = Pattern::parse(i.filter_pattern.as_deref().unwrap_or(""))?;
    let logs = lock(&state.logs);
    let g = logs.groups.get(&group).ok_or_else(group_not_found)?;
    // (timestamp, stream ordinal, index in stream) orders the merge deterministically, so an
    // offset token addresses the same position on the next call.
    let mut hits: Vec<(i64, u64, usize, &str, &StoredEvent)> = Vec::new();
    for (name, s) in &g.streams {
        let wanted = match (&i.log_stream_names, &i.log_stream_name_prefix) {
            (Some(names), _) => names.iter().any(|n| n == name),
            (None, Some(prefix)) => name.starts_with(prefix.as_str()),
            (None, None) => true,
        };
        if !wanted {
            continue;
        }
        let lo = i
            .start_time
            .map(|t| s.events.partition_point(|e| e.timestamp < t))
            .unwrap_or(0);
        for (k, e) in window(&s.events, i.start_time, i.end_time)
            .iter()
            .enumerate()
        {
            if pattern.matches(&e.message) {
                hits.push((e.timestamp, s.ordinal, lo + k, name.as_str(), e));
            }
        }
    }
    hits.sort_by_key(|h| (h.0, h.1, h.2));
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct FilteredEvent<'a> {
        log_stream_name: &'a str,
        timestamp: i64,
        message: &'a str,
        ingestion_time: i64,
        event_id: String,
    }
    let mut page = Vec::new();
    let mut bytes = 0usize;
    let mut next = offset;
    for (ts, ordinal, idx, stream, e) in hits.iter().skip(offset) {
        let size = e.message.len() + EVENT_OVERHEAD_BYTES;
        if page.len() >= limit || bytes + size > MAX_PAGE_BYTES {
            break;
        }
        bytes += size;
        next += 1;
        page.push(FilteredEvent {
            log_stream_name: stream,
            timestamp: *ts,
            message: &e.message,
            ingestion_time: e.ingestion_time,
            event_id: format!("{ts:020}{ordinal:010}{idx:026}"),
        });
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct FilterOut<'a> {
        events: Vec<FilteredEvent<'a>>,
        searched_log_streams: Vec<serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_token: Option<String>,
    }
    let next_token = (next < hits.len()).then(|| format!("fle/{next}"));
    ok_json(&FilterOut {
        events: page,
        searched_log_streams: Vec::new(),
        next_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64) -> (i64, String) {
        (t, "m".into())
    }

    #[test]
    fn classify_splits_old_and_new_edges() {
        let now = 1_000_000_000_000;
        let events = vec![
            ev(now - MAX_EVENT_AGE_MS - 1),
            ev(now - MAX_EVENT_AGE_MS),
            ev(now),
            ev(now + MAX_EVENT_FUTURE_MS),
            ev(now + MAX_EVENT_FUTURE_MS + 1),
        ];
        let (range, info) = classify(&events, now, None);
        assert_eq!(range, 1..4);
        assert_eq!(info.too_old_log_event_end_index, Some(1));
        assert_eq!(info.too_new_log_event_start_index, Some(4));
        assert_eq!(info.expired_log_event_end_index, None);
    }

    #[test]
    fn classify_reports_retention_as_expired() {
        let now = 1_000_000_000_000;
        let day = 24 * 3600 * 1000;
        let events = vec![ev(now - 15 * day), ev(now - 2 * day), ev(now - day / 2)];
        let (range, info) = classify(&events, now, Some(1));
        assert_eq!(range, 2..3);
        assert_eq!(info.too_old_log_event_end_index, Some(1));
        assert_eq!(info.expired_log_event_end_index, Some(2));
    }

    #[test]
    fn pattern_terms_phrases_and_exclusions() {
        let p = Pattern::parse("\"line 3\"").expect("pattern");
        assert!(p.matches("line 3 ✓") && !p.matches("line 4"));
        let p = Pattern::parse("ERROR -timeout kubelet").expect("pattern");
        assert!(
            p.matches("kubelet ERROR x")
                && !p.matches("kubelet ERROR timeout")
                && !p.matches("ERROR")
        );
        assert!(Pattern::parse("").expect("empty").matches("anything"));
        assert!(Pattern::parse("{ $.level = \"x\" }").is_err());
    }

    #[test]
    fn get_tokens_round_trip() {
        assert_eq!(parse_get_token(&get_token('f', 42)), Some(('f', 42)));
        assert_eq!(parse_get_token(&get_token('b', 0)), Some(('b', 0)));
        assert_eq!(parse_get_token("x/1"), None);
    }
}
