//! CloudWatch metrics in the three wire protocols CloudWatch serves: Smithy RPC v2 CBOR (what
//! current Rust SDKs such as aws-sdk-cloudwatch 1.140 send:
//! `POST /service/GraniteServiceVersion20100801/operation/<Op>`), awsJson 1.0 (what current
//! botocore, 1.44 in our venv, and so boto3 and the AWS CLI send:
//! `X-Amz-Target: GraniteServiceVersion20100801.<Op>`, `Content-Type: application/x-amz-json-1.0`,
//! `x-amzn-query-mode: true`) and the legacy awsQuery
//! form (`Action=PutMetricData&MetricData.member.1.MetricName=...`).
//!
//! All inputs are decoded into one neutral tree ([`In`]) and every operation is written once
//! against it, so validation is the same whatever the protocol; outputs are built as one neutral
//! tree ([`Out`]) and rendered as a CBOR map, a JSON object or the query protocol's XML. Errors
//! carry the awsQuery error code (`InvalidParameterValue`, `MissingParameter`, ...) that
//! CloudWatch reports in every protocol: in CBOR and JSON through the
//! `x-amzn-query-error: <code>;Sender` header (`Receiver` for server faults), next to the Smithy
//! shape id in `__type` and the text in `message`, as the service does (it is
//! `awsQueryCompatible`; SDKs read the code from the header).
//!
//! Operations: PutMetricData (limits enforced at their edges: 1,000 datums, 1 MB body,
//! 30 dimensions, 150 values per datum, timestamps from two weeks ago to two hours ahead),
//! ListMetrics, GetMetricStatistics and GetMetricData (Sum, Average, Minimum, Maximum,
//! SampleCount per period; periods are aligned to multiples of the period since the epoch, so a
//! datapoint sent on a period boundary comes back with its original timestamp). Percentiles and
//! metric math are refused with a clear error rather than answered wrongly.
//!
//! With a state directory, accepted datapoints are appended to `metrics/datapoints.jsonl` and
//! replayed on start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::persist::{self, PersistError};
use crate::server::DevstackError;
use crate::state::{Shared, lock};
use crate::wire::{ApiError, JSON_10_CONTENT_TYPE, Protocol, Req};

/// Most MetricDatum per PutMetricData call (PutMetricData API reference).
pub const MAX_METRIC_DATA: usize = 1_000;
/// Largest PutMetricData request body (PutMetricData API reference: 1 MB for HTTP POST).
pub const MAX_PUT_BODY_BYTES: usize = 1_048_576;
/// Most dimensions per metric (PutMetricData API reference).
pub const MAX_DIMENSIONS: usize = 30;
/// Most entries in `Values` / `Counts` of one datum (MetricDatum API reference).
pub const MAX_VALUES: usize = 150;
/// Oldest accepted datapoint, in ms (PutMetricData API reference: two weeks).
pub const MAX_DATAPOINT_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
/// Furthest accepted datapoint in the future, in ms (PutMetricData API reference: two hours).
pub const MAX_DATAPOINT_FUTURE_MS: i64 = 2 * 3600 * 1000;
/// Most datapoints one GetMetricStatistics call may request (API reference).
pub const MAX_STATISTICS_DATAPOINTS: i64 = 1_440;
/// Most queries in one GetMetricData call (API reference).
pub const MAX_METRIC_DATA_QUERIES: usize = 500;
/// ListMetrics page size (API reference: up to 500 results per call).
pub const LIST_PAGE_SIZE: usize = 500;
/// Name and dimension length limits (Metric / Dimension API reference).
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_DIMENSION_VALUE_LEN: usize = 1024;
/// Magnitude range CloudWatch accepts for values (MetricDatum API reference; 0 is also fine).
pub const MIN_MAGNITUDE: f64 = 8.515_920e-109;
pub const MAX_MAGNITUDE: f64 = 1.174_271e108;
/// `X-Amz-Target` prefix of awsJson 1.0 requests: the Smithy service shape name
/// (`targetPrefix` in botocore's cloudwatch service-2.json).
pub const JSON_TARGET_PREFIX: &str = "GraniteServiceVersion20100801.";
/// The XML namespace of awsQuery responses.
const QUERY_XMLNS: &str = "http://monitoring.amazonaws.com/doc/2010-08-01/";
/// Units CloudWatch accepts (StandardUnit).
const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];
const STATISTICS: [&str; 5] = ["SampleCount", "Average", "Sum", "Minimum", "Maximum"];
const METRICS_DIR: &str = "metrics";
const DATAPOINTS_FILE: &str = "datapoints.jsonl";

/// A metric's identity: namespace, name and its dimension set (sorted by name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MetricKey {
    namespace: String,
    name: String,
    dims: Vec<(String, String)>,
}

/// One accepted datum, already reduced to its statistic set.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    #[serde(rename = "t")]
    timestamp_ms: i64,
    #[serde(rename = "u")]
    unit: String,
    #[serde(rename = "c")]
    count: f64,
    #[serde(rename = "s")]
    sum: f64,
    #[serde(rename = "lo")]
    min: f64,
    #[serde(rename = "hi")]
    max: f64,
}

/// Journal line: a point plus the metric it belongs to.
#[derive(Serialize, Deserialize)]
struct JournalLine {
    ns: String,
    n: String,
    d: Vec<(String, String)>,
    #[serde(flatten)]
    p: Point,
}

/// The metrics store.
#[derive(Debug, Default)]
pub struct MetricsState {
    journal: Option<PathBuf>,
    metrics: BTreeMap<MetricKey, Vec<Point>>,
}

impl MetricsState {
    /// Replays `<dir>/metrics/datapoints.jsonl` (missing = empty store).
    pub fn load(dir: Option<&Path>) -> Result<Self, DevstackError> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let journal = dir.join(METRICS_DIR).join(DATAPOINTS_FILE);
        let lines: Vec<JournalLine> = persist::read_json_lines(&journal)?;
        let mut metrics: BTreeMap<MetricKey, Vec<Point>> = BTreeMap::new();
        for l in lines {
            metrics
                .entry(MetricKey {
                    namespace: l.ns,
                    name: l.n,
                    dims: l.d,
                })
                .or_default()
                .push(l.p);
        }
        Ok(MetricsState {
            journal: Some(journal),
            metrics,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A CloudWatch error: the awsQuery code and the Smithy shape name the CBOR and JSON protocols
/// use.
struct CwError {
    status: StatusCode,
    query_code: &'static str,
    shape: &'static str,
    message: String,
}

fn invalid_value(message: impl Into<String>) -> CwError {
    CwError {
        status: StatusCode::BAD_REQUEST,
        query_code: "InvalidParameterValue",
        shape: "InvalidParameterValueException",
        message: message.into(),
    }
}

fn invalid_combination(message: impl Into<String>) -> CwError {
    CwError {
        status: StatusCode::BAD_REQUEST,
        query_code: "InvalidParameterCombination",
        shape: "InvalidParameterCombinationException",
        message: message.into(),
    }
}

fn missing(param: &str) -> CwError {
    CwError {
        status: StatusCode::BAD_REQUEST,
        query_code: "MissingParameter",
        shape: "MissingRequiredParameterException",
        message: format!("The parameter {param} is required."),
    }
}

fn invalid_token() -> CwError {
    CwError {
        status: StatusCode::BAD_REQUEST,
        query_code: "InvalidNextToken",
        shape: "InvalidNextToken",
        message: "The service cannot process the NextToken.".into(),
    }
}

fn internal(message: impl Into<String>) -> CwError {
    CwError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        query_code: "InternalServiceError",
        shape: "InternalServiceFault",
        message: message.into(),
    }
}

fn persist_error(e: PersistError) -> CwError {
    internal(format!("devstack could not persist datapoints: {e}"))
}

impl CwError {
    fn render(&self, proto: Protocol) -> Response {
        match proto {
            Protocol::RpcV2Cbor | Protocol::AwsJson10 => {
                let mut r = ApiError::new(
                    self.status,
                    format!("com.amazonaws.cloudwatch#{}", self.shape),
                    self.message.clone(),
                )
                .render(proto);
                // The awsQueryCompatible header: `<awsQuery code>;<fault>`, the fault being
                // Receiver for the service's own failures (InternalServiceFault) and Sender
                // otherwise.
                let fault = if self.status.is_server_error() {
                    "Receiver"
                } else {
                    "Sender"
                };
                if let Ok(v) = HeaderValue::from_str(&format!("{};{fault}", self.query_code)) {
                    r.headers_mut().insert("x-amzn-query-error", v);
                }
                r
            }
            _ => ApiError::new(self.status, self.query_code, self.message.clone()).render(proto),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Neutral input tree

/// A decoded request: CBOR values keep their types, awsQuery leaves are text and are converted
/// on access.
#[derive(Debug, Clone, PartialEq)]
enum In {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    /// Epoch seconds (CBOR tag 1).
    Time(f64),
    List(Vec<In>),
    Map(Vec<(String, In)>),
}

impl In {
    fn from_cbor(v: ciborium::Value) -> In {
        use ciborium::Value as V;
        match v {
            V::Null => In::Null,
            V::Bool(b) => In::Bool(b),
            V::Integer(i) => In::Int(i128::from(i)),
            V::Float(f) => In::Float(f),
            V::Text(s) => In::Text(s),
            V::Tag(1, inner) => match *inner {
                V::Integer(i) => In::Time(i128::from(i) as f64),
                V::Float(f) => In::Time(f),
                other => In::from_cbor(other),
            },
            V::Tag(_, inner) => In::from_cbor(*inner),
            V::Array(a) => In::List(a.into_iter().map(In::from_cbor).collect()),
            V::Map(m) => In::Map(
                m.into_iter()
                    .filter_map(|(k, v)| match k {
                        V::Text(k) => Some((k, In::from_cbor(v))),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => In::Null,
        }
    }

    /// awsJson 1.0 values: numbers keep their integer-ness, timestamps arrive as epoch-second
    /// numbers and non-finite doubles as the strings `NaN` / `Infinity` / `-Infinity` (both read
    /// back by the typed accessors).
    fn from_json(v: serde_json::Value) -> In {
        use serde_json::Value as V;
        match v {
            V::Null => In::Null,
            V::Bool(b) => In::Bool(b),
            V::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => In::Int(i128::from(i)),
                (None, Some(u)) => In::Int(i128::from(u)),
                (None, None) => In::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            V::String(s) => In::Text(s),
            V::Array(a) => In::List(a.into_iter().map(In::from_json).collect()),
            V::Object(m) => In::Map(m.into_iter().map(|(k, v)| (k, In::from_json(v))).collect()),
        }
    }

    /// Builds the tree from awsQuery form fields: `A.member.2.B=x` becomes `{A: [_, {B: x}]}`.
    fn from_form(pairs: Vec<(String, String)>) -> In {
        let mut root = In::Map(Vec::new());
        for (key, value) in pairs {
            let mut node = &mut root;
            let mut segments = key.split('.').peekable();
            while let Some(seg) = segments.next() {
                let In::Map(entries) = node else { break };
                let pos = match entries.iter().position(|(k, _)| k == seg) {
                    Some(p) => p,
                    None => {
                        let child = if segments.peek().is_some() {
                            In::Map(Vec::new())
                        } else {
                            In::Text(value.clone())
                        };
                        entries.push((seg.to_string(), child));
                        entries.len() - 1
                    }
                };
                node = &mut entries[pos].1;
            }
        }
        root.normalize_members()
    }

    /// `{member: {1: a, 2: b}}` → `[a, b]`, recursively.
    fn normalize_members(self) -> In {
        match self {
            In::Map(entries) => {
                let mut entries: Vec<(String, In)> = entries
                    .into_iter()
                    .map(|(k, v)| (k, v.normalize_members()))
                    .collect();
                if entries.len() == 1 && entries[0].0 == "member" {
                    if let Some((_, In::Map(items))) = entries.pop() {
                        let mut numbered: Vec<(usize, In)> = items
                            .into_iter()
                            .filter_map(|(k, v)| k.parse::<usize>().ok().map(|n| (n, v)))
                            .collect();
                        numbered.sort_by_key(|(n, _)| *n);
                        return In::List(numbered.into_iter().map(|(_, v)| v).collect());
                    }
                    return In::List(Vec::new());
                }
                In::Map(entries)
            }
            other => other,
        }
    }

    fn get(&self, key: &str) -> Option<&In> {
        match self {
            In::Map(entries) => entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .filter(|v| !matches!(v, In::Null)),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            In::Text(s) => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            In::Int(i) => Some(*i as f64),
            In::Float(f) => Some(*f),
            In::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            In::Int(i) => i64::try_from(*i).ok(),
            In::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            In::Bool(b) => Some(*b),
            In::Text(s) => s.parse().ok(),
            _ => None,
        }
    }

    fn as_list(&self) -> Option<&[In]> {
        match self {
            In::List(l) => Some(l),
            _ => None,
        }
    }

    /// Milliseconds since the epoch, rounded to the nearest ms (a CBOR double of epoch seconds
    /// is not exact in ms). awsQuery sends ISO 8601 text.
    fn as_time_ms(&self) -> Option<i64> {
        match self {
            In::Time(secs) | In::Float(secs) => Some((secs * 1000.0).round() as i64),
            In::Int(secs) => i64::try_from(*secs).ok().map(|s| s * 1000),
            In::Text(s) => parse_iso8601_ms(s),
            _ => None,
        }
    }
}

fn parse_iso8601_ms(s: &str) -> Option<i64> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let t = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

// Typed accessors that produce CloudWatch's error for a missing / malformed member.
fn req_str<'a>(node: &'a In, key: &str, path: &str) -> Result<&'a str, CwError> {
    match node.get(key) {
        None => Err(missing(path)),
        Some(v) => v
            .as_str()
            .ok_or_else(|| invalid_value(format!("The parameter {path} must be a string."))),
    }
}

fn opt_str<'a>(node: &'a In, key: &str, path: &str) -> Result<Option<&'a str>, CwError> {
    match node.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| invalid_value(format!("The parameter {path} must be a string."))),
    }
}

fn opt_f64(node: &In, key: &str, path: &str) -> Result<Option<f64>, CwError> {
    match node.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            invalid_value(format!("The value for parameter {path} is not a number."))
        }),
    }
}

fn opt_time(node: &In, key: &str, path: &str) -> Result<Option<i64>, CwError> {
    match node.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_time_ms()
            .map(Some)
            .ok_or_else(|| invalid_value(format!("The parameter {path} must be a timestamp."))),
    }
}

fn req_time(node: &In, key: &str, path: &str) -> Result<i64, CwError> {
    opt_time(node, key, path)?.ok_or_else(|| missing(path))
}

fn opt_list<'a>(node: &'a In, key: &str, path: &str) -> Result<Option<&'a [In]>, CwError> {
    match node.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_list()
            .map(Some)
            .ok_or_else(|| invalid_value(format!("The parameter {path} must be a list."))),
    }
}

// ---------------------------------------------------------------------------------------------
// Neutral output tree

#[derive(Debug, Clone)]
enum Out {
    Str(String),
    Num(f64),
    /// Epoch milliseconds.
    Time(i64),
    List(Vec<Out>),
    Map(Vec<(&'static str, Out)>),
}

impl Out {
    fn to_cbor(&self) -> ciborium::Value {
        use ciborium::Value as V;
        match self {
            Out::Str(s) => V::Text(s.clone()),
            Out::Num(f) => V::Float(*f),
            // Whole seconds go out as integers: exact, whatever the reader does with doubles.
            Out::Time(ms) if ms % 1000 == 0 => V::Tag(1, Box::new(V::Integer((ms / 1000).into()))),
            Out::Time(ms) => V::Tag(1, Box::new(V::Float(*ms as f64 / 1000.0))),
            Out::List(items) => V::Array(items.iter().map(Out::to_cbor).collect()),
            Out::Map(entries) => V::Map(
                entries
                    .iter()
                    .map(|(k, v)| (V::Text((*k).to_string()), v.to_cbor()))
                    .collect(),
            ),
        }
    }

    /// awsJson 1.0: timestamps as epoch seconds (whole ones as integers), non-finite doubles as
    /// the strings the protocol defines for them.
    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as V;
        match self {
            Out::Str(s) => V::String(s.clone()),
            Out::Num(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => V::Number(n),
                None if f.is_nan() => V::String("NaN".into()),
                None if *f > 0.0 => V::String("Infinity".into()),
                None => V::String("-Infinity".into()),
            },
            Out::Time(ms) if ms % 1000 == 0 => V::Number((ms / 1000).into()),
            Out::Time(ms) => serde_json::Number::from_f64(*ms as f64 / 1000.0)
                .map(V::Number)
                .unwrap_or(V::Null),
            Out::List(items) => V::Array(items.iter().map(Out::to_json).collect()),
            Out::Map(entries) => V::Object(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    fn write_xml(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "<{name}>");
        match self {
            Out::Str(s) => out.push_str(&crate::wire::xml_escape(s)),
            Out::Num(f) => {
                let _ = write!(out, "{f:?}");
            }
            Out::Time(ms) => out.push_str(&iso8601(*ms)),
            Out::List(items) => items.iter().for_each(|i| i.write_xml("member", out)),
            Out::Map(entries) => entries.iter().for_each(|(k, v)| v.write_xml(k, out)),
        }
        let _ = write!(out, "</{name}>");
    }
}

fn iso8601(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    if ms % 1000 == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            t.millisecond()
        )
    }
}

fn respond(proto: Protocol, op: &str, fields: Vec<(&'static str, Out)>) -> Response {
    match proto {
        Protocol::RpcV2Cbor => {
            let mut buf = Vec::new();
            // Serialising an in-memory Value into a Vec cannot fail.
            let _ = ciborium::into_writer(&Out::Map(fields).to_cbor(), &mut buf);
            let mut r = crate::wire::bytes_response(StatusCode::OK, "application/cbor", buf.into());
            r.headers_mut()
                .insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
            r
        }
        Protocol::AwsJson10 => crate::wire::bytes_response(
            StatusCode::OK,
            JSON_10_CONTENT_TYPE,
            Out::Map(fields).to_json().to_string().into(),
        ),
        _ => {
            let request_id = uuid::Uuid::new_v4();
            let mut xml = format!("<{op}Response xmlns=\"{QUERY_XMLNS}\">");
            if !fields.is_empty() {
                Out::Map(fields).write_xml(&format!("{op}Result"), &mut xml);
            }
            xml.push_str(&format!("<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{op}Response>"));
            crate::wire::bytes_response(StatusCode::OK, "text/xml", xml.into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/// Handles one CloudWatch metrics operation in any of its protocols.
pub async fn handle(state: &Shared, proto: Protocol, op: &str, req: &Req) -> Response {
    if let Err(e) = crate::auth::authenticate(state, req, "monitoring") {
        return e.render(proto);
    }
    if op == "PutMetricData" && req.body.len() > MAX_PUT_BODY_BYTES {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!(
                "Request size {} exceeded {MAX_PUT_BODY_BYTES} bytes",
                req.body.len()
            ),
        )
        .render(proto);
    }
    let body = match decoded_body(req) {
        Ok(b) => b,
        Err(e) => return e.render(proto),
    };
    let input = match proto {
        Protocol::RpcV2Cbor if body.is_empty() => In::Map(Vec::new()),
        Protocol::RpcV2Cbor => match ciborium::from_reader::<ciborium::Value, _>(&body[..]) {
            Ok(v) => In::from_cbor(v),
            Err(e) => {
                return ApiError::bad_request(
                    "SerializationException",
                    format!("request body is not valid CBOR: {e}"),
                )
                .render(proto);
            }
        },
        Protocol::AwsJson10 if body.is_empty() => In::Map(Vec::new()),
        Protocol::AwsJson10 => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v @ serde_json::Value::Object(_)) => In::from_json(v),
            Ok(_) => {
                return ApiError::bad_request(
                    "SerializationException",
                    "request body must be a JSON object",
                )
                .render(proto);
            }
            Err(e) => {
                return ApiError::bad_request(
                    "SerializationException",
                    format!("request body is not valid JSON: {e}"),
                )
                .render(proto);
            }
        },
        _ => In::from_form(form_urlencoded::parse(&body).into_owned().collect()),
    };
    let now = persist::epoch_millis(state.now());
    let result = match op {
        "PutMetricData" => put_metric_data(state, &input, now),
        "ListMetrics" => list_metrics(state, &input, now),
        "GetMetricStatistics" => get_metric_statistics(state, &input),
        "GetMetricData" => get_metric_data(state, &input),
        _ => {
            return ApiError::bad_request(
                if proto == Protocol::AwsQuery {
                    "InvalidAction"
                } else {
                    "UnknownOperationException"
                },
                format!("devstack CloudWatch does not implement {op}"),
            )
            .render(proto);
        }
    };
    match result {
        Ok(fields) => respond(proto, op, fields),
        Err(e) => e.render(proto),
    }
}

/// Most bytes a compressed body may inflate to (the dispatcher's own cap on plain bodies).
const MAX_INFLATED_BYTES: u64 = crate::server::MAX_BODY_BYTES as u64;

/// The request body, gunzipped when `Content-Encoding: gzip` (the SDK compresses PutMetricData
/// bodies of 10 KiB and more). The 1 MB PutMetricData limit is checked on the body as received:
/// AWS documents it as the HTTP POST request size (whether it also applies after inflating is
/// unverified).
fn decoded_body(req: &Req) -> Result<std::borrow::Cow<'_, [u8]>, ApiError> {
    let gzip = req
        .header("content-encoding")
        .is_some_and(|v| v.split(',').any(|e| e.trim().eq_ignore_ascii_case("gzip")));
    if !gzip {
        return Ok(std::borrow::Cow::Borrowed(&req.body[..]));
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&req.body[..])
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::bad_request(
                "SerializationException",
                format!("gzip request body does not inflate: {e}"),
            )
        })?;
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("gzip request body inflates to more than {MAX_INFLATED_BYTES} bytes"),
        ));
    }
    Ok(std::borrow::Cow::Owned(out))
}

// ---------------------------------------------------------------------------------------------
// PutMetricData

fn check_name(value: &str, path: &str) -> Result<(), CwError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(invalid_value(format!(
            "The parameter {path} must be between 1 and {MAX_NAME_LEN} characters long."
        )));
    }
    Ok(())
}

fn check_value(v: f64, path: &str) -> Result<(), CwError> {
    let mag = v.abs();
    if !v.is_finite() || (mag != 0.0 && !(MIN_MAGNITUDE..=MAX_MAGNITUDE).contains(&mag)) {
        return Err(invalid_value(format!(
            "The value {v} for parameter {path} is invalid."
        )));
    }
    Ok(())
}

/// Parses the `Dimensions` member of `node`, sorted by name, duplicates refused. `prefix` is the
/// member path of `node` in error messages (`MetricData.member.3.`, or empty at the top).
fn parse_dimensions(node: &In, prefix: &str) -> Result<Vec<(String, String)>, CwError> {
    let path = format!("{prefix}Dimensions");
    let Some(list) = opt_list(node, "Dimensions", &path)? else {
        return Ok(Vec::new());
    };
    if list.len() > MAX_DIMENSIONS {
        return Err(invalid_value(format!(
            "The collection {path} must not have a size greater than {MAX_DIMENSIONS}."
        )));
    }
    let mut dims = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let dpath = format!("{path}.member.{}", i + 1);
        let name = req_str(d, "Name", &format!("{dpath}.Name"))?;
        let value = req_str(d, "Value", &format!("{dpath}.Value"))?;
        check_name(name, &format!("{dpath}.Name"))?;
        if value.is_empty() || value.len() > MAX_DIMENSION_VALUE_LEN {
            return Err(invalid_value(format!(
                "The parameter {dpath}.Value must be between 1 and {MAX_DIMENSION_VALUE_LEN} characters long."
            )));
        }
        dims.push((name.to_string(), value.to_string()));
    }
    dims.sort();
    if dims.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid_value(format!(
            "No metric may specify the same dimension name twice ({path})."
        )));
    }
    Ok(dims)
}

fn check_unit(unit: &str, path: &str) -> Result<(), CwError> {
    if !UNITS.contains(&unit) {
        return Err(invalid_value(format!(
            "The value {unit} for parameter {path} is invalid."
        )));
    }
    Ok(())
}

/// A validated datum: metric name, sorted dimensions, the point.
type Datum = (String, Vec<(String, String)>, Point);

fn parse_datum(d: &In, path: &str, now: i64) -> Result<Datum, CwError> {
    let name = req_str(d, "MetricName", &format!("{path}.MetricName"))?;
    check_name(name, &format!("{path}.MetricName"))?;
    let dims = parse_dimensions(d, &format!("{path}."))?;
    let value = opt_f64(d, "Value", &format!("{path}.Value"))?;
    let stats = d.get("StatisticValues");
    let values = opt_list(d, "Values", &format!("{path}.Values"))?;
    let counts = opt_list(d, "Counts", &format!("{path}.Counts"))?;
    let both = |a: &str, b: &str| {
        invalid_combination(format!(
            "The parameters {path}.{a} and {path}.{b} are mutually exclusive and you have specified both."
        ))
    };
    match (value.is_some(), stats.is_some(), values.is_some()) {
        (true, true, _) => return Err(both("Value", "StatisticValues")),
        (true, _, true) => return Err(both("Value", "Values")),
        (_, true, true) => return Err(both("StatisticValues", "Values")),
        (false, false, false) => {
            return Err(invalid_combination(format!(
                "At least one of the parameters {path}.Value, {path}.StatisticValues or {path}.Values must be specified."
            )));
        }
        _ => {}
    }
    if counts.is_some() && values.is_none() {
        return Err(invalid_combination(format!(
            "The parameter {path}.Counts requires {path}.Values."
        )));
    }
    let (count, sum, min, max) = if let Some(v) = value {
        check_value(v, &format!("{path}.Value"))?;
        (1.0, v, v, v)
    } else if let Some(s) = stats {
        let spath = format!("{path}.StatisticValues");
        let field = |k: &str| -> Result<f64, CwError> {
            let v = opt_f64(s, k, &format!("{spath}.{k}"))?
                .ok_or_else(|| missing(&format!("{spath}.{k}")))?;
            check_value(v, &format!("{spath}.{k}"))?;
            Ok(v)
        };
        let (count, sum, min, max) = (
            field("SampleCount")?,
            field("Sum")?,
            field("Minimum")?,
            field("Maximum")?,
        );
        if count <= 0.0 {
            return Err(invalid_value(format!(
                "The value {count} for parameter {spath}.SampleCount is invalid."
            )));
        }
        if min > max {
            return Err(invalid_value(format!(
                "The parameter {spath}.Minimum must not be greater than {spath}.Maximum."
            )));
        }
        (count, sum, min, max)
    } else {
        let values = values.unwrap_or_default();
        if values.len() > MAX_VALUES {
            return Err(invalid_value(format!(
                "The collection {path}.Values must not have a size greater than {MAX_VALUES}."
            )));
        }
        if let Some(c) = counts
            && c.len() != values.len()
        {
            return Err(invalid_value(format!(
                "The parameters {path}.Values and {path}.Counts must be of the same size."
            )));
        }
        let mut agg = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for (i, v) in values.iter().enumerate() {
            let vpath = format!("{path}.Values.member.{}", i + 1);
            let v = v.as_f64().ok_or_else(|| {
                invalid_value(format!("The value for parameter {vpath} is not a number."))
            })?;
            check_value(v, &vpath)?;
            let c = match counts {
                Some(c) => {
                    let cpath = format!("{path}.Counts.member.{}", i + 1);
                    let c = c[i].as_f64().ok_or_else(|| {
                        invalid_value(format!("The value for parameter {cpath} is not a number."))
                    })?;
                    if !c.is_finite() || c < 0.0 {
                        return Err(invalid_value(format!(
                            "The value {c} for parameter {cpath} is invalid."
                        )));
                    }
                    c
                }
                None => 1.0,
            };
            agg = (agg.0 + c, agg.1 + v * c, agg.2.min(v), agg.3.max(v));
        }
        if values.is_empty() {
            return Err(invalid_value(format!(
                "The collection {path}.Values must not be empty."
            )));
        }
        agg
    };
    let timestamp_ms = match opt_time(d, "Timestamp", &format!("{path}.Timestamp"))? {
        Some(t) => t,
        None => now,
    };
    if timestamp_ms < now - MAX_DATAPOINT_AGE_MS {
        return Err(invalid_value(format!(
            "The parameter {path}.Timestamp must specify a time within the past two weeks."
        )));
    }
    if timestamp_ms > now + MAX_DATAPOINT_FUTURE_MS {
        return Err(invalid_value(format!(
            "The parameter {path}.Timestamp must specify a time no more than two hours in the future."
        )));
    }
    let unit = opt_str(d, "Unit", &format!("{path}.Unit"))?.unwrap_or("None");
    check_unit(unit, &format!("{path}.Unit"))?;
    if let Some(r) = d.get("StorageResolution") {
        match r.as_i64() {
            Some(1) | Some(60) => {}
            _ => {
                return Err(invalid_value(format!(
                    "The parameter {path}.StorageResolution must be 1 or 60."
                )));
            }
        }
    }
    Ok((
        name.to_string(),
        dims,
        Point {
            timestamp_ms,
            unit: unit.to_string(),
            count,
            sum,
            min,
            max,
        },
    ))
}

fn check_namespace(ns: &str) -> Result<(), CwError> {
    check_name(ns, "Namespace")?;
    if ns.starts_with("AWS/") || ns.contains(':') {
        return Err(invalid_value(format!(
            "The value {ns} for parameter Namespace is invalid."
        )));
    }
    Ok(())
}

fn put_metric_data(
    state: &Shared,
    input: &In,
    now: i64,
) -> Result<Vec<(&'static str, Out)>, CwError> {
    let namespace = req_str(input, "Namespace", "Namespace")?;
    check_namespace(namespace)?;
    let data = opt_list(input, "MetricData", "MetricData")?
        .filter(|l| !l.is_empty())
        .ok_or_else(|| missing("MetricData"))?;
    if data.len() > MAX_METRIC_DATA {
        return Err(invalid_value(format!(
            "The collection MetricData must not have a size greater than {MAX_METRIC_DATA}."
        )));
    }
    // Validate the whole call before storing anything: one bad datum fails the call.
    let parsed = data
        .iter()
        .enumerate()
        .map(|(i, d)| parse_datum(d, &format!("MetricData.member.{}", i + 1), now))
        .collect::<Result<Vec<_>, _>>()?;
    let mut store = lock(&state.metrics);
    if let Some(journal) = &store.journal {
        let lines = parsed.iter().map(|(n, d, p)| JournalLine {
            ns: namespace.to_string(),
            n: n.clone(),
            d: d.clone(),
            p: p.clone(),
        });
        persist::append_json_lines(journal, lines).map_err(persist_error)?;
    }
    for (name, dims, point) in parsed {
        store
            .metrics
            .entry(MetricKey {
                namespace: namespace.to_string(),
                name,
                dims,
            })
            .or_default()
            .push(point);
    }
    Ok(Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Reading

/// How far back ListMetrics' `RecentlyActive=PT3H` looks (ListMetrics API reference).
const RECENTLY_ACTIVE_MS: i64 = 3 * 3600 * 1000;

fn dims_out(dims: &[(String, String)]) -> Out {
    Out::List(
        dims.iter()
            .map(|(n, v)| {
                Out::Map(vec![
                    ("Name", Out::Str(n.clone())),
                    ("Value", Out::Str(v.clone())),
                ])
            })
            .collect(),
    )
}

fn list_metrics(state: &Shared, input: &In, now: i64) -> Result<Vec<(&'static str, Out)>, CwError> {
    let namespace = opt_str(input, "Namespace", "Namespace")?;
    let name = opt_str(input, "MetricName", "MetricName")?;
    let mut filters = Vec::new();
    if let Some(list) = opt_list(input, "Dimensions", "Dimensions")? {
        if list.len() > 10 {
            // ListMetrics accepts at most 10 dimension filters (API reference).
            return Err(invalid_value(
                "The collection Dimensions must not have a size greater than 10.",
            ));
        }
        for (i, f) in list.iter().enumerate() {
            let path = format!("Dimensions.member.{}", i + 1);
            let n = req_str(f, "Name", &format!("{path}.Name"))?;
            let v = opt_str(f, "Value", &format!("{path}.Value"))?;
            filters.push((n.to_string(), v.map(str::to_string)));
        }
    }
    let recent = match opt_str(input, "RecentlyActive", "RecentlyActive")? {
        None => false,
        Some("PT3H") => true,
        Some(other) => {
            return Err(invalid_value(format!(
                "The value {other} for parameter RecentlyActive is invalid."
            )));
        }
    };
    let offset = match opt_str(input, "NextToken", "NextToken")? {
        None => 0,
        Some(t) => t.parse::<usize>().map_err(|_| invalid_token())?,
    };
    let store = lock(&state.metrics);
    let matching: Vec<&MetricKey> = store
        .metrics
        .iter()
        .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
        .filter(|(k, _)| name.is_none_or(|n| k.name == n))
        .filter(|(k, _)| {
            filters.iter().all(|(fname, fval)| {
                k.dims
                    .iter()
                    .any(|(n, v)| n == fname && fval.as_ref().is_none_or(|fv| fv == v))
            })
        })
        .filter(|(_, points)| {
            !recent
                || points
                    .iter()
                    .any(|p| p.timestamp_ms >= now - RECENTLY_ACTIVE_MS)
        })
        .map(|(k, _)| k)
        .collect();
    let page: Vec<Out> = matching
        .iter()
        .skip(offset)
        .take(LIST_PAGE_SIZE)
        .map(|k| {
            Out::Map(vec![
                ("Namespace", Out::Str(k.namespace.clone())),
                ("MetricName", Out::Str(k.name.clone())),
                ("Dimensions", dims_out(&k.dims)),
            ])
        })
        .collect();
    let mut out = vec![("Metrics", Out::List(page))];
    if offset + LIST_PAGE_SIZE < matching.len() {
        out.push(("NextToken", Out::Str((offset + LIST_PAGE_SIZE).to_string())));
    }
    Ok(out)
}

/// One aggregated period.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    start_ms: i64,
    unit: String,
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Bucket {
    fn stat(&self, name: &str) -> f64 {
        match name {
            "SampleCount" => self.count,
            "Sum" => self.sum,
            "Minimum" => self.min,
            "Maximum" => self.max,
            _ => {
                if self.count > 0.0 {
                    self.sum / self.count
                } else {
                    0.0
                }
            }
        }
    }
}

/// Aggregates points into periods aligned to multiples of `period_ms` since the epoch; a point
/// counts when it lies in `[start rounded down to its period, end)`. Buckets come back ascending.
fn aggregate(
    points: &[Point],
    start_ms: i64,
    end_ms: i64,
    period_ms: i64,
    unit: Option<&str>,
) -> Vec<Bucket> {
    let from = start_ms.div_euclid(period_ms) * period_ms;
    let mut buckets: BTreeMap<i64, Bucket> = BTreeMap::new();
    for p in points {
        if p.timestamp_ms < from || p.timestamp_ms >= end_ms || unit.is_some_and(|u| u != p.unit) {
            continue;
        }
        let key = p.timestamp_ms.div_euclid(period_ms) * period_ms;
        let b = buckets.entry(key).or_insert_with(|| Bucket {
            start_ms: key,
            unit: p.unit.clone(),
            count: 0.0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        });
        b.count += p.count;
        b.sum += p.sum;
        b.min = b.min.min(p.min);
        b.max = b.max.max(p.max);
    }
    buckets.into_values().collect()
}

/// Periods CloudWatch accepts: 1, 5, 10, 30 or a multiple of 60 seconds (API reference).
fn check_period(period: Option<i64>, path: &str) -> Result<i64, CwError> {
    let p = period.ok_or_else(|| missing(path))?;
    if p < 1 || (p < 60 && ![1, 5, 10, 30].contains(&p)) || (p >= 60 && p % 60 != 0) {
        return Err(invalid_value(format!(
            "The parameter {path} must be 1, 5, 10, 30, or a multiple of 60."
        )));
    }
    Ok(p)
}

fn find_metric<'a>(
    store: &'a MetricsState,
    namespace: &str,
    name: &str,
    dims: Vec<(String, String)>,
) -> &'a [Point] {
    store
        .metrics
        .get(&MetricKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            dims,
        })
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn get_metric_statistics(state: &Shared, input: &In) -> Result<Vec<(&'static str, Out)>, CwError> {
    let namespace = req_str(input, "Namespace", "Namespace")?;
    let name = req_str(input, "MetricName", "MetricName")?;
    let dims = parse_dimensions(input, "")?;
    let start = req_time(input, "StartTime", "StartTime")?;
    let end = req_time(input, "EndTime", "EndTime")?;
    let period = check_period(input.get("Period").and_then(In::as_i64), "Period")?;
    let stats = opt_list(input, "Statistics", "Statistics")?.filter(|l| !l.is_empty());
    let extended =
        opt_list(input, "ExtendedStatistics", "ExtendedStatistics")?.filter(|l| !l.is_empty());
    let stats = match (stats, extended) {
        (Some(s), None) => s,
        (None, Some(_)) => {
            return Err(invalid_value(
                "devstack does not compute percentile (ExtendedStatistics) statistics.",
            ));
        }
        _ => {
            return Err(invalid_combination(
                "Must specify either Statistics or ExtendedStatistics, but not both.",
            ));
        }
    };
    if stats.len() > STATISTICS.len() {
        return Err(invalid_value(
            "The collection Statistics must not have a size greater than 5.",
        ));
    }
    let stats: Vec<&str> = stats
        .iter()
        .map(|s| {
            s.as_str()
                .filter(|s| STATISTICS.contains(s))
                .ok_or_else(|| {
                    invalid_value(format!(
                        "The value {s:?} for parameter Statistics is invalid."
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let unit = opt_str(input, "Unit", "Unit")?;
    if let Some(u) = unit {
        check_unit(u, "Unit")?;
    }
    if start >= end {
        return Err(invalid_value(
            "The parameter StartTime must be less than the parameter EndTime.",
        ));
    }
    let period_ms = period * 1000;
    let requested = (end - start + period_ms - 1) / period_ms;
    if requested > MAX_STATISTICS_DATAPOINTS {
        return Err(invalid_combination(format!(
            "You have requested up to {requested} datapoints, which exceeds the limit of {MAX_STATISTICS_DATAPOINTS}. You may reduce the datapoints requested by increasing Period, or decreasing the time range."
        )));
    }
    let store = lock(&state.metrics);
    let buckets = aggregate(
        find_metric(&store, namespace, name, dims),
        start,
        end,
        period_ms,
        unit,
    );
    let datapoints = buckets
        .iter()
        .map(|b| {
            let mut fields = vec![("Timestamp", Out::Time(b.start_ms))];
            for s in &stats {
                let key: &'static str = STATISTICS
                    .iter()
                    .find(|k| *k == s)
                    .copied()
                    .unwrap_or("Average");
                fields.push((key, Out::Num(b.stat(s))));
            }
            fields.push(("Unit", Out::Str(b.unit.clone())));
            Out::Map(fields)
        })
        .collect();
    Ok(vec![
        ("Label", Out::Str(name.to_string())),
        ("Datapoints", Out::List(datapoints)),
    ])
}

fn get_metric_data(state: &Shared, input: &In) -> Result<Vec<(&'static str, Out)>, CwError> {
    let queries = opt_list(input, "MetricDataQueries", "MetricDataQueries")?
        .ok_or_else(|| missing("MetricDataQueries"))?;
    if queries.len() > MAX_METRIC_DATA_QUERIES {
        return Err(invalid_value(format!(
            "The collection MetricDataQueries must not have a size greater than {MAX_METRIC_DATA_QUERIES}."
        )));
    }
    let start = req_time(input, "StartTime", "StartTime")?;
    let end = req_time(input, "EndTime", "EndTime")?;
    if start >= end {
        return Err(invalid_value(
            "The parameter StartTime must be less than the parameter EndTime.",
        ));
    }
    let descending = match opt_str(input, "ScanBy", "ScanBy")? {
        None | Some("TimestampDescending") => true,
        Some("TimestampAscending") => false,
        Some(other) => {
            return Err(invalid_value(format!(
                "The value {other} for parameter ScanBy is invalid."
            )));
        }
    };
    let store = lock(&state.metrics);
    let mut results = Vec::new();
    let mut ids = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let qpath = format!("MetricDataQueries.member.{}", i + 1);
        let id = req_str(q, "Id", &format!("{qpath}.Id"))?;
        let id_ok = id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !id_ok || id.len() > MAX_NAME_LEN {
            return Err(invalid_value(format!(
                "The value {id} for parameter {qpath}.Id is invalid: it must start with a lowercase letter and hold only letters, digits and _."
            )));
        }
        if ids.contains(&id) {
            return Err(invalid_value(format!(
                "The value {id} for parameter {qpath}.Id is not unique."
            )));
        }
        ids.push(id);
        let stat_node = q.get("MetricStat");
        match (stat_node, q.get("Expression")) {
            (Some(_), Some(_)) => {
                return Err(invalid_combination(format!(
                    "The parameters {qpath}.MetricStat and {qpath}.Expression are mutually exclusive."
                )));
            }
            (None, Some(_)) => {
                return Err(invalid_value(format!(
                    "devstack does not evaluate metric math ({qpath}.Expression)."
                )));
            }
            (None, None) => return Err(missing(&format!("{qpath}.MetricStat"))),
            (Some(_), None) => {}
        }
        let ms = stat_node.unwrap_or(&In::Null);
        let spath = format!("{qpath}.MetricStat");
        let metric = ms
            .get("Metric")
            .ok_or_else(|| missing(&format!("{spath}.Metric")))?;
        let namespace = req_str(metric, "Namespace", &format!("{spath}.Metric.Namespace"))?;
        let name = req_str(metric, "MetricName", &format!("{spath}.Metric.MetricName"))?;
        let dims = parse_dimensions(metric, &format!("{spath}.Metric."))?;
        let period = check_period(
            ms.get("Period").and_then(In::as_i64),
            &format!("{spath}.Period"),
        )?;
        let stat = req_str(ms, "Stat", &format!("{spath}.Stat"))?;
        if !STATISTICS.contains(&stat) {
            return Err(invalid_value(format!(
                "The value {stat} for parameter {spath}.Stat is invalid (devstack computes {STATISTICS:?})."
            )));
        }
        let unit = opt_str(ms, "Unit", &format!("{spath}.Unit"))?;
        if let Some(u) = unit {
            check_unit(u, &format!("{spath}.Unit"))?;
        }
        if q.get("ReturnData").and_then(In::as_bool) == Some(false) {
            continue;
        }
        let label = opt_str(q, "Label", &format!("{qpath}.Label"))?.unwrap_or(name);
        let mut buckets = aggregate(
            find_metric(&store, namespace, name, dims),
            start,
            end,
            period * 1000,
            unit,
        );
        if descending {
            buckets.reverse();
        }
        results.push(Out::Map(vec![
            ("Id", Out::Str(id.to_string())),
            ("Label", Out::Str(label.to_string())),
            (
                "Timestamps",
                Out::List(buckets.iter().map(|b| Out::Time(b.start_ms)).collect()),
            ),
            (
                "Values",
                Out::List(buckets.iter().map(|b| Out::Num(b.stat(stat))).collect()),
            ),
            ("StatusCode", Out::Str("Complete".into())),
            ("Messages", Out::List(Vec::new())),
        ]));
    }
    Ok(vec![
        ("MetricDataResults", Out::List(results)),
        ("Messages", Out::List(Vec::new())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_become_lists_and_maps() {
        let pairs = vec![
            ("Action".to_string(), "PutMetricData".to_string()),
            (
                "MetricData.member.2.MetricName".to_string(),
                "b".to_string(),
            ),
            (
                "MetricData.member.1.MetricName".to_string(),
                "a".to_string(),
            ),
            (
                "MetricData.member.1.Dimensions.member.1.Name".to_string(),
                "k".to_string(),
            ),
            (
                "MetricData.member.1.Dimensions.member.1.Value".to_string(),
                "v".to_string(),
            ),
        ];
        let tree = In::from_form(pairs);
        let data = tree.get("MetricData").and_then(In::as_list).expect("list");
        assert_eq!(data.len(), 2);
        assert_eq!(data[0].get("MetricName").and_then(In::as_str), Some("a"));
        assert_eq!(data[1].get("MetricName").and_then(In::as_str), Some("b"));
        let dims = data[0]
            .get("Dimensions")
            .and_then(In::as_list)
            .expect("dims");
        assert_eq!(dims[0].get("Value").and_then(In::as_str), Some("v"));
    }

    #[test]
    fn json_values_keep_their_types_and_times_go_out_as_epoch_seconds() {
        let v = serde_json::json!({
            "Namespace": "n",
            "MetricData": [{"Value": "NaN", "Timestamp": 1.5, "StorageResolution": 60}]
        });
        let tree = In::from_json(v);
        let d = &tree.get("MetricData").and_then(In::as_list).expect("list")[0];
        assert!(d.get("Value").and_then(In::as_f64).is_some_and(f64::is_nan));
        assert_eq!(d.get("Timestamp").and_then(In::as_time_ms), Some(1_500));
        assert_eq!(d.get("StorageResolution").and_then(In::as_i64), Some(60));
        let out = Out::Map(vec![
            ("Whole", Out::Time(60_000)),
            ("Part", Out::Time(1_500)),
            ("Inf", Out::Num(f64::INFINITY)),
        ])
        .to_json();
        assert_eq!(
            out,
            serde_json::json!({"Whole": 60, "Part": 1.5, "Inf": "Infinity"})
        );
    }

    #[test]
    fn aggregate_aligns_periods_to_the_epoch() {
        let p = |t: i64, v: f64| Point {
            timestamp_ms: t,
            unit: "Count".into(),
            count: 1.0,
            sum: v,
            min: v,
            max: v,
        };
        let points = vec![
            p(60_000, 1.0),
            p(90_000, 3.0),
            p(120_000, 5.0),
            p(180_000, 7.0),
        ];
        let b = aggregate(&points, 70_000, 180_000, 60_000, None);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!((b[0].start_ms, b[0].sum, b[0].count), (60_000, 4.0, 2.0));
        assert_eq!((b[1].start_ms, b[1].stat("Average")), (120_000, 5.0));
    }

    #[test]
    fn iso8601_renders_whole_and_fractional_seconds() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:01.500Z"), Some(1_500));
    }
}
