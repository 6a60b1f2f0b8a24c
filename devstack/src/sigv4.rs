//! SigV4 canonical request and string-to-sign, rebuilt from a received request for verification.
//!
//! The devstack verifies two kinds of SigV4 requests with the same canonicalisation: HMAC-signed
//! calls from the official aws-sdk-rust clients ([`crate::auth`]) and the RSA-PSS-signed SSM
//! hybrid instance calls ([`crate::ssm`], docs/protocols.md "Signing instance calls"), which are
//! SigV4 with the HMAC
//! swapped for an RSA signature. Both need the canonical request exactly as the signer built it,
//! so the rules here follow aws-sigv4 (the signer inside aws-sdk-rust) rather than a loose reading
//! of the spec: path normalisation drops empty and dot segments, the already-encoded path is
//! encoded a second time for every service but S3, query pairs are decoded, re-encoded and sorted
//! on their encoded form, header values are trimmed and inner runs of spaces collapsed.
//!
//! Only the header form (`Authorization: AWS4-HMAC-SHA256 ...`) is supported; presigned URLs are
//! not used by anything the devstack serves.

use std::time::{Duration, SystemTime};

use aws_lc_rs::{digest, hmac};
use axum::http::HeaderMap;

use crate::wire::Req;

/// The only algorithm the SDK and ssm-agent put in the Authorization header (SigV4 docs;
/// ssm-agent keeps it even for its RSA signatures, docs/protocols.md "Signing instance calls").
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Largest difference between `X-Amz-Date` and the server's clock AWS accepts (SigV4 docs:
/// "within 5 minutes").
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Scope terminator (SigV4 docs).
const SCOPE_TERMINATOR: &str = "aws4_request";

/// Header carrying the signing time (`YYYYMMDDTHHMMSSZ`).
pub const AMZ_DATE_HEADER: &str = "x-amz-date";

/// Header a signer may use to declare the payload hash (S3 and streaming bodies).
const CONTENT_SHA256_HEADER: &str = "x-amz-content-sha256";

/// Why a request's signature could not even be checked. Callers map these onto the error codes of
/// their protocol (`IncompleteSignatureException`, `SignatureDoesNotMatch`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("Missing Authentication Token: the request has no Authorization header")]
    MissingAuthorization,
    /// The Authorization header or the date is malformed; the message says which part.
    #[error("{0}")]
    Incomplete(String),
    /// A header listed in SignedHeaders is not in the request.
    #[error("SignedHeaders lists `{0}` but the request has no such header")]
    MissingSignedHeader(String),
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub algorithm: String,
    /// First element of `Credential=`: an access key id, or the `mi-...` id for instance calls.
    pub access_key_id: String,
    /// Scope date, `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lowercase header names, in the order the signer listed them.
    pub signed_headers: Vec<String>,
    /// Hex for HMAC signatures, standard base64 for the SSM RSA signatures.
    pub signature: String,
}

impl AuthHeader {
    /// `<date>/<region>/<service>/aws4_request`
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/{SCOPE_TERMINATOR}",
            self.date, self.region, self.service
        )
    }
}

/// Parses `AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=...`.
pub fn parse_authorization(value: &str) -> Result<AuthHeader, SigV4Error> {
    let incomplete =
        |m: &str| SigV4Error::Incomplete(format!("{m} (Authorization header: {value:?})"));
    let (algorithm, rest) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| incomplete("Authorization header has no parameters"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| incomplete("Authorization parameter without `=`"))?;
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed_headers = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => {
                return Err(incomplete(&format!(
                    "unknown Authorization parameter `{k}`"
                )));
            }
        }
    }
    let credential = credential
        .ok_or_else(|| incomplete("Authorization header requires 'Credential' parameter"))?;
    let signed_headers = signed_headers
        .ok_or_else(|| incomplete("Authorization header requires 'SignedHeaders' parameter"))?;
    let signature = signature
        .ok_or_else(|| incomplete("Authorization header requires 'Signature' parameter"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts.as_slice() else {
        return Err(incomplete(
            "Credential must have the form <key>/<YYYYMMDD>/<region>/<service>/aws4_request",
        ));
    };
    if *terminator != SCOPE_TERMINATOR {
        return Err(incomplete(
            "Credential should be scoped with a valid terminator: 'aws4_request'",
        ));
    }
    if access_key_id.is_empty() || region.is_empty() || service.is_empty() {
        return Err(incomplete(
            "Credential has an empty access key, region or service",
        ));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete("Credential date must be YYYYMMDD"));
    }
    if signature.is_empty() || signed_headers.is_empty() {
        return Err(incomplete("empty Signature or SignedHeaders"));
    }
    Ok(AuthHeader {
        algorithm: algorithm.to_string(),
        access_key_id: access_key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed_headers
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: signature.to_string(),
    })
}

/// How the path enters the canonical request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEncoding {
    /// Every service but S3: remove dot and empty segments, then percent-encode the (already
    /// encoded) path again, so `%3D` becomes `%253D`.
    NormalizedDouble,
    /// S3: the path as sent, encoded once, no normalisation.
    Single,
}

/// True for RFC 3986 unreserved characters, the only bytes SigV4 leaves unencoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes every byte except unreserved characters (and `/` when `keep_slash`), with
/// uppercase hex as SigV4 requires.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3986 §5.2.4 dot-segment removal as aws-sigv4 does it: empty segments vanish too (`//a//`
/// becomes `/a/`), and a trailing slash survives.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if !(path.contains('.') || path.contains("//")) {
        return path;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    let trailing = ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|s| path.ends_with(s));
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// The canonical URI for `raw_path` (as received, still percent-encoded).
pub fn canonical_uri(raw_path: &str, mode: PathEncoding) -> String {
    match mode {
        PathEncoding::NormalizedDouble => uri_encode(&normalize_path(raw_path), true),
        PathEncoding::Single => {
            if raw_path.is_empty() {
                "/".to_string()
            } else {
                raw_path.to_string()
            }
        }
    }
}

/// The canonical query string: pairs decoded as a form (`+` is a space, as the signer decodes
/// them), encoded again, sorted on the encoded key then value.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Trims spaces at both ends and collapses inner runs of spaces to one. Only spaces: aws-sigv4
/// leaves tabs and other whitespace alone, so must we.
fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut prev_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' {
            if !prev_space {
                out.push(c);
            }
            prev_space = true;
        } else {
            out.push(c);
            prev_space = false;
        }
    }
    out
}

/// `name:value\n` for each signed header, values of repeated headers joined with `,`.
pub fn canonical_headers(headers: &HeaderMap, signed: &[String]) -> Result<String, SigV4Error> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| trim_all(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::MissingSignedHeader(name.clone()));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

/// The payload hash the signer used: `x-amz-content-sha256` when sent, else SHA-256 of the body.
pub fn payload_hash(headers: &HeaderMap, body: &[u8]) -> String {
    match headers
        .get(CONTENT_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(declared) => declared.trim().to_string(),
        None => sha256_hex(body),
    }
}

/// Builds the canonical request of `req` for the headers the signer listed.
pub fn canonical_request(
    req: &Req,
    signed_headers: &[String],
    mode: PathEncoding,
) -> Result<String, SigV4Error> {
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.as_str(),
        canonical_uri(&req.path, mode),
        canonical_query(&req.query),
        canonical_headers(&req.headers, signed_headers)?,
        signed_headers.join(";"),
        payload_hash(&req.headers, &req.body),
    ))
}

/// `AWS4-HMAC-SHA256\n<amz-date>\n<scope>\n<hex sha256 of the canonical request>`
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), SCOPE_TERMINATOR);
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Hex HMAC signature of `string_to_sign` (used by the unit tests and for error messages).
pub fn hmac_signature(secret: &str, auth: &AuthHeader, string_to_sign: &str) -> String {
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    hex::encode(hmac::sign(&key, string_to_sign.as_bytes()))
}

/// Checks the hex HMAC signature in `auth` against `string_to_sign` in constant time.
pub fn verify_hmac(secret: &str, auth: &AuthHeader, string_to_sign: &str) -> bool {
    let Ok(given) = hex::decode(&auth.signature) else {
        return false;
    };
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    hmac::verify(&key, string_to_sign.as_bytes(), &given).is_ok()
}

const AMZ_DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// Parses `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Error> {
    time::PrimitiveDateTime::parse(s, AMZ_DATE_FORMAT)
        .map(|t| SystemTime::from(t.assume_utc()))
        .map_err(|e| {
            SigV4Error::Incomplete(format!("X-Amz-Date {s:?} is not YYYYMMDDTHHMMSSZ: {e}"))
        })
}

/// Formats `t` as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(AMZ_DATE_FORMAT)
        .unwrap_or_else(|_| "invalid-date".to_string())
}

/// `Err(message)` when `signed_at` is more than [`MAX_CLOCK_SKEW`] away from `now`; the message
/// has the wording AWS uses ("Signature expired: ... is now earlier than ..."), which clients
/// (ssm-agent, ours) match on to detect clock skew.
pub fn check_freshness(signed_at: SystemTime, now: SystemTime) -> Result<(), String> {
    let fmt = format_amz_date;
    if signed_at + MAX_CLOCK_SKEW < now {
        return Err(format!(
            "Signature expired: {} is now earlier than {} ({} - 5 min.)",
            fmt(signed_at),
            fmt(now - MAX_CLOCK_SKEW),
            fmt(now)
        ));
    }
    if signed_at > now + MAX_CLOCK_SKEW {
        return Err(format!(
            "Signature not yet current: {} is still later than {} ({} + 5 min.)",
            fmt(signed_at),
            fmt(now + MAX_CLOCK_SKEW),
            fmt(now)
        ));
    }
    Ok(())
}

/// Everything a verifier needs from a signed request, rebuilt from what was received.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub auth: AuthHeader,
    /// `X-Amz-Date` as sent.
    pub amz_date: String,
    pub signed_at: SystemTime,
    pub canonical_request: String,
    pub string_to_sign: String,
}

/// Parses the Authorization header and `X-Amz-Date` of `req` and rebuilds its canonical request
/// and string to sign. Does not check the signature, the key or the clock.
pub fn prepare(req: &Req, mode: PathEncoding) -> Result<SignedRequest, SigV4Error> {
    let value = req
        .header("authorization")
        .ok_or(SigV4Error::MissingAuthorization)?;
    let auth = parse_authorization(value)?;
    if auth.algorithm != ALGORITHM {
        return Err(SigV4Error::Incomplete(format!(
            "unsupported signing algorithm {:?}; expected {ALGORITHM}",
            auth.algorithm
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    let amz_date = req
        .header(AMZ_DATE_HEADER)
        .ok_or_else(|| {
            SigV4Error::Incomplete(
                "Authorization header requires existence of a 'X-Amz-Date' header".into(),
            )
        })?
        .trim()
        .to_string();
    let signed_at = parse_amz_date(&amz_date)?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Incomplete(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            amz_date.get(..8).unwrap_or(&amz_date)
        )));
    }
    let canonical_request = canonical_request(req, &auth.signed_headers, mode)?;
    let string_to_sign = string_to_sign(&amz_date, &auth.scope(), &canonical_request);
    Ok(SignedRequest {
        auth,
        amz_date,
        signed_at,
        canonical_request,
        string_to_sign,
    })
}

#[cfg(test)]
mod tests {
    //! Vectors from the AWS SigV4 test suite (as shipped in aws-sigv4's `aws-signing-test-suite/v4`):
    //! credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 2015-08-30T12:36:00Z,
    //! us-east-1, service `service`.
    use super::*;
    use axum::http::{HeaderValue, Method};

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn req(method: Method, path_and_query: &str, headers: &[(&str, &str)], body: &str) -> Req {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        Req {
            method,
            path: path.into(),
            query: query.into(),
            headers: map,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn signed(mut r: Req, signed_headers: &str, signature: &str) -> Req {
        let v = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed_headers}, Signature={signature}"
        );
        r.headers.insert(
            "authorization",
            HeaderValue::from_str(&v).expect("auth value"),
        );
        r
    }

    fn check(r: Req, signed_headers: &str, signature: &str, want_creq: &str) {
        let r = signed(r, signed_headers, signature);
        let s = prepare(&r, PathEncoding::NormalizedDouble).expect("prepare");
        assert_eq!(s.canonical_request, want_creq);
        assert_eq!(
            hmac_signature(SECRET, &s.auth, &s.string_to_sign),
            signature
        );
        assert!(verify_hmac(SECRET, &s.auth, &s.string_to_sign));
        assert!(!verify_hmac("wrong-secret", &s.auth, &s.string_to_sign));
    }

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn get_vanilla() {
        let r = req(
            Method::GET,
            "/",
            &[("host", "example.amazonaws.com"), ("x-amz-date", DATE)],
            "",
        );
        let creq = format!(
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:{DATE}\n\nhost;x-amz-date\n{EMPTY_SHA}"
        );
        check(
            r,
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            &creq,
        );
    }

    #[test]
    fn slashes_are_normalized() {
        let r = req(
            Method::GET,
            "//example//",
            &[("host", "example.amazonaws.com"), ("x-amz-date", DATE)],
            "",
        );
        let creq = format!(
            "GET\n/example/\n\nhost:example.amazonaws.com\nx-amz-date:{DATE}\n\nhost;x-amz-date\n{EMPTY_SHA}"
        );
        check(
            r,
            "host;x-amz-date",
            "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
            &creq,
        );
    }

    #[test]
    fn query_is_sorted_on_encoded_pairs() {
        let r = req(
            Method::GET,
            "/?Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
            &[("host", "example.amazonaws.com"), ("x-amz-date", DATE)],
            "",
        );
        let creq = format!(
            "GET\n/\n%E1%88%B4=Value1&Param=Value2&Param-3=Value3\nhost:example.amazonaws.com\nx-amz-date:{DATE}\n\nhost;x-amz-date\n{EMPTY_SHA}"
        );
        check(
            r,
            "host;x-amz-date",
            "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac",
            &creq,
        );
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed() {
        let r = req(
            Method::GET,
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("My-Header1", " value1"),
                ("My-Header2", "\"a   b   c\""),
                ("x-amz-date", DATE),
            ],
            "",
        );
        let creq = format!(
            "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:{DATE}\n\nhost;my-header1;my-header2;x-amz-date\n{EMPTY_SHA}"
        );
        check(
            r,
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            &creq,
        );
    }

    #[test]
    fn declared_payload_hash_is_used() {
        let body_sha = "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e";
        let r = req(
            Method::POST,
            "/",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("host", "example.amazonaws.com"),
                ("content-length", "13"),
                ("x-amz-content-sha256", body_sha),
                ("x-amz-date", DATE),
            ],
            "Param1=value1",
        );
        assert_eq!(
            sha256_hex(b"Param1=value1"),
            body_sha,
            "the declared hash is the body's"
        );
        let creq = format!(
            "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:example.amazonaws.com\nx-amz-content-sha256:{body_sha}\nx-amz-date:{DATE}\n\ncontent-length;content-type;host;x-amz-content-sha256;x-amz-date\n{body_sha}"
        );
        check(
            r,
            "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
            "328d1b9eaadca9f5818ef05e8392801e091653bafec24fcab71e7344e7f51422",
            &creq,
        );
    }

    #[test]
    fn session_token_header_is_signed_like_any_other() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let r = req(
            Method::GET,
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", DATE),
                ("x-amz-security-token", token),
            ],
            "",
        );
        let creq = format!(
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:{DATE}\nx-amz-security-token:{token}\n\nhost;x-amz-date;x-amz-security-token\n{EMPTY_SHA}"
        );
        check(
            r,
            "host;x-amz-date;x-amz-security-token",
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
            &creq,
        );
    }

    #[test]
    fn non_s3_paths_are_encoded_twice() {
        // aws-signing-test-suite/v4/double-encode-path
        assert_eq!(
            canonical_uri(
                "/test/@connections/JBDvjfGEIAMCERw%3D",
                PathEncoding::NormalizedDouble
            ),
            "/test/%40connections/JBDvjfGEIAMCERw%253D"
        );
        assert_eq!(
            canonical_uri("/test/JBDvjfGEIAMCERw%3D", PathEncoding::Single),
            "/test/JBDvjfGEIAMCERw%3D"
        );
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(
            canonical_uri("/example/..", PathEncoding::NormalizedDouble),
            "/"
        );
        assert_eq!(canonical_uri("/./", PathEncoding::NormalizedDouble), "/");
        assert_eq!(
            canonical_uri("/example1/example2/../..", PathEncoding::NormalizedDouble),
            "/"
        );
        assert_eq!(
            canonical_uri("/foo/bar/.", PathEncoding::NormalizedDouble),
            "/foo/bar/"
        );
        assert_eq!(canonical_uri("", PathEncoding::NormalizedDouble), "/");
        assert_eq!(
            canonical_uri("/clusters/hybrid-demo", PathEncoding::NormalizedDouble),
            "/clusters/hybrid-demo"
        );
    }

    #[test]
    fn query_plus_is_a_space_and_empty_values_stay() {
        assert_eq!(canonical_query("b=2&a=x+y&c"), "a=x%20y&b=2&c=");
        assert_eq!(canonical_query(""), "");
    }

    #[test]
    fn repeated_headers_are_joined_in_order() {
        let r = req(
            Method::GET,
            "/",
            &[
                ("host", "h"),
                ("my-header1", "value2"),
                ("my-header1", "value1"),
            ],
            "",
        );
        let got =
            canonical_headers(&r.headers, &["host".into(), "my-header1".into()]).expect("headers");
        assert_eq!(got, "host:h\nmy-header1:value2,value1\n");
        let missing =
            canonical_headers(&r.headers, &["x-amz-target".into()]).expect_err("missing header");
        assert_eq!(
            missing,
            SigV4Error::MissingSignedHeader("x-amz-target".into())
        );
    }

    #[test]
    fn authorization_parsing_rejects_malformed_headers() {
        let ok = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=mi-0123/20240101/us-west-2/ssm/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc==",
        )
        .expect("parse");
        assert_eq!(ok.access_key_id, "mi-0123");
        assert_eq!(ok.scope(), "20240101/us-west-2/ssm/aws4_request");
        assert_eq!(ok.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(
            ok.signature, "abc==",
            "base64 padding survives the `=` split"
        );
        for bad in [
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AK/20240101/us-west-2/ssm, SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=AK/2024011/us-west-2/ssm/aws4_request, SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=AK/20240101/us-west-2/ssm/aws4_request, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=AK/20240101/us-west-2/ssm/aws4_request, SignedHeaders=host",
        ] {
            assert!(
                matches!(parse_authorization(bad), Err(SigV4Error::Incomplete(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn scope_date_must_match_amz_date() {
        let r = req(
            Method::GET,
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150831T000000Z"),
            ],
            "",
        );
        let r = signed(r, "host;x-amz-date", "00");
        assert!(matches!(
            prepare(&r, PathEncoding::NormalizedDouble),
            Err(SigV4Error::Incomplete(_))
        ));
    }

    #[test]
    fn host_must_be_signed() {
        let r = req(
            Method::GET,
            "/",
            &[("host", "example.amazonaws.com"), ("x-amz-date", DATE)],
            "",
        );
        let r = signed(r, "x-amz-date", "00");
        assert!(matches!(
            prepare(&r, PathEncoding::NormalizedDouble),
            Err(SigV4Error::Incomplete(_))
        ));
    }

    #[test]
    fn freshness_window_is_five_minutes_each_way() {
        let now = parse_amz_date(DATE).expect("date");
        assert!(check_freshness(now - MAX_CLOCK_SKEW, now).is_ok());
        assert!(check_freshness(now + MAX_CLOCK_SKEW, now).is_ok());
        let old =
            check_freshness(now - MAX_CLOCK_SKEW - Duration::from_secs(1), now).expect_err("stale");
        assert!(
            old.starts_with(
                "Signature expired: 20150830T123059Z is now earlier than 20150830T123100Z"
            ),
            "{old}"
        );
        let future = check_freshness(now + MAX_CLOCK_SKEW + Duration::from_secs(1), now)
            .expect_err("future");
        assert!(future.starts_with("Signature not yet current"), "{future}");
        assert_eq!(format_amz_date(now), DATE);
    }
}
