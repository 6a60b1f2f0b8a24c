//! Wire-level helpers shared by every service: the request as the dispatcher hands it over, the
//! protocol families and how each renders an error.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

/// The media type of awsJson 1.0 requests and responses (Smithy awsJson1_0 protocol).
pub const JSON_10_CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// A fully-read request, as every service handler receives it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    /// Path without the query string, exactly as sent (not percent-decoded).
    pub path: String,
    /// Raw query string (without `?`), empty when absent.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Decoded query parameters in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// Decoded `application/x-www-form-urlencoded` body fields in order (awsQuery).
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// The protocol family a request speaks; decides how errors are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// awsJson 1.1 (`X-Amz-Target`): SSM, CloudWatch Logs.
    AwsJson11,
    /// awsJson 1.0 (`X-Amz-Target`): CloudWatch metrics as current botocore sends them.
    AwsJson10,
    /// Smithy RPC v2 CBOR: CloudWatch metrics in current SDKs.
    RpcV2Cbor,
    /// awsQuery: STS, CloudWatch metrics in older SDKs.
    AwsQuery,
    /// restJson1: EKS, IAM Roles Anywhere.
    RestJson1,
    /// Plain HTTP: mirror and control endpoint.
    Plain,
}

/// An API error as AWS would report it: HTTP status, error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::bad_request("ValidationException", message)
    }
    pub fn not_found(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            message,
        )
    }
    /// What AWS answers a caller whose IAM policy lacks the action (`AccessDeniedException`, 400,
    /// in JSON services such as CloudWatch Logs; `AccessDenied`, 403, in awsQuery ones such as
    /// CloudWatch's PutMetricData).
    pub fn access_denied(proto: Protocol, service: &str, op: &str) -> Self {
        let message = format!(
            "User: arn:aws:sts::000000000000:assumed-role/AmazonEKSHybridNodesRole/node is not authorized to perform: {service}:{op} because no identity-based policy allows the {service}:{op} action"
        );
        match proto {
            Protocol::AwsQuery => Self::new(StatusCode::FORBIDDEN, "AccessDenied", message),
            _ => Self::bad_request("AccessDeniedException", message),
        }
    }
    pub fn throttling(proto: Protocol) -> Self {
        let code = match proto {
            // awsQuery services (STS, legacy CloudWatch) call it `Throttling`.
            Protocol::AwsQuery => "Throttling",
            _ => "ThrottlingException",
        };
        Self::bad_request(code, "Rate exceeded")
    }

    /// Renders the error in the wire form of `proto`.
    pub fn render(&self, proto: Protocol) -> Response {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut resp = match proto {
            Protocol::AwsJson11 | Protocol::AwsJson10 => {
                let body = serde_json::json!({ "__type": self.code, "message": self.message });
                let content_type = if proto == Protocol::AwsJson10 {
                    JSON_10_CONTENT_TYPE
                } else {
                    "application/x-amz-json-1.1"
                };
                bytes_response(self.status, content_type, body.to_string().into())
            }
            Protocol::RestJson1 => {
                let body = serde_json::json!({ "message": self.message });
                let mut r =
                    bytes_response(self.status, "application/json", body.to_string().into());
                if let Ok(v) = HeaderValue::from_str(&self.code) {
                    r.headers_mut().insert("x-amzn-errortype", v);
                }
                r
            }
            Protocol::AwsQuery => {
                let body = format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                    xml_escape(&self.code),
                    xml_escape(&self.message),
                    request_id
                );
                bytes_response(self.status, "text/xml", body.into())
            }
            Protocol::RpcV2Cbor => {
                let value = ciborium::Value::Map(vec![
                    (
                        ciborium::Value::Text("__type".into()),
                        ciborium::Value::Text(self.code.clone()),
                    ),
                    (
                        ciborium::Value::Text("message".into()),
                        ciborium::Value::Text(self.message.clone()),
                    ),
                ]);
                let mut buf = Vec::new();
                // Serialising an in-memory Value into a Vec cannot fail.
                let _ = ciborium::into_writer(&value, &mut buf);
                let mut r = bytes_response(self.status, "application/cbor", buf.into());
                r.headers_mut()
                    .insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
                r
            }
            Protocol::Plain => bytes_response(
                self.status,
                "text/plain",
                format!("{}: {}\n", self.code, self.message).into(),
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-amzn-requestid", v);
        }
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.status.as_u16(),
            self.message
        )
    }
}

/// A successful awsJson 1.1 response.
pub fn json_ok(value: &serde_json::Value) -> Response {
    bytes_response(
        StatusCode::OK,
        "application/x-amz-json-1.1",
        value.to_string().into(),
    )
}

pub fn bytes_response(status: StatusCode, content_type: &str, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-11-28T06:54:20Z`: whole seconds, as Kubernetes and IAM Roles Anywhere write times.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
