//! The parts of AWS Signature Version 4 that do not depend on the key: canonical request, string
//! to sign, credential scope, dates.
//!
//! Both identity providers sign with SigV4's canonicalisation but an asymmetric key instead of
//! the HMAC chain: SSM hybrid instances with RSASSA-PSS (signature in base64, algorithm name
//! still `AWS4-HMAC-SHA256`), IAM Roles Anywhere with the X.509 key (`AWS4-X509-*`, hex). The
//! HMAC chain ([`hmac_signing_key`]) is here for the few calls signed with an access key that
//! no SDK makes for us (the EKS token, SSM's UpdateInstanceInformation). Keeping
//! the canonicalisation in one place, tested against hand-computed strings, means a signing bug
//! shows up here and not as an opaque `InvalidSignatureException` from the service.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::macros::format_description;

/// SHA-256 of `data`, lower-case hex (the payload hash and the canonical request hash).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// The request time in SigV4's two forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningTime {
    /// `YYYYMMDDTHHMMSSZ`, the `X-Amz-Date` header.
    pub amz_date: String,
    /// `YYYYMMDD`, the first element of the credential scope.
    pub date: String,
}

impl SigningTime {
    pub fn new(t: SystemTime) -> SigningTime {
        let t = OffsetDateTime::from(t);
        // Formatting a UTC OffsetDateTime with a fixed numeric description cannot fail for years
        // 0000-9999; fall back to the epoch rather than panic if it ever did.
        let amz_date = t
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_else(|_| "19700101T000000Z".into());
        let date = amz_date[..8].to_string();
        SigningTime { amz_date, date }
    }
}

/// `<date>/<region>/<service>/aws4_request`.
pub fn scope(time: &SigningTime, region: &str, service: &str) -> String {
    format!("{}/{region}/{service}/aws4_request", time.date)
}

/// SigV4 URI encoding: everything but `A-Z a-z 0-9 - _ . ~` percent-encoded, upper-case hex;
/// `/` kept when `keep_slash` (paths) and encoded otherwise (query values).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Query pairs encoded and sorted by name then value, joined with `&`.
pub fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request as SigV4 sees it. `headers` are the headers to sign; names in any case.
pub struct CanonicalInput<'a> {
    pub method: &'a str,
    /// Already URI-encoded path (`/`, `/sessions`).
    pub path: &'a str,
    /// Output of [`canonical_query`] (empty when there is none).
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// The canonical request and the `SignedHeaders` value.
pub fn canonical_request(input: &CanonicalInput<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        input.path,
        input.query,
        canonical_headers,
        signed_headers,
        sha256_hex(input.payload)
    );
    (canonical, signed_headers)
}

/// `<algorithm>\n<amz-date>\n<scope>\n<hex sha256 of canonical request>`.
pub fn string_to_sign(
    algorithm: &str,
    time: &SigningTime,
    scope: &str,
    canonical_request: &str,
) -> String {
    format!(
        "{algorithm}\n{}\n{scope}\n{}",
        time.amz_date,
        sha256_hex(canonical_request.as_bytes())
    )
}

/// SigV4's HMAC key chain: date, region, service, `aws4_request` (signing with an access key:
/// the EKS token, and the SSM calls the instance makes with its role credentials).
pub fn hmac_signing_key(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> aws_lc_rs::hmac::Key {
    use aws_lc_rs::hmac;
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// `Host` header value for a URL: host, plus `:port` when the URL names a non-default port
/// (what HTTP clients send, and so what the server canonicalises).
pub fn host_header(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t() -> SystemTime {
        // 2024-03-09T08:07:06Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_971_626)
    }

    #[test]
    fn dates() {
        let st = SigningTime::new(t());
        assert_eq!(st.amz_date, "20240309T080706Z");
        assert_eq!(st.date, "20240309");
        assert_eq!(
            scope(&st, "us-west-2", "ssm"),
            "20240309/us-west-2/ssm/aws4_request"
        );
    }

    /// The SSM instance-call shape of docs/protocols.md "Signing instance calls", written out by
    /// hand: the four signed
    /// headers in order, an empty query line, the body hash. The SHA-256 values were computed
    /// with `printf %s ... | sha256sum`.
    #[test]
    fn ssm_canonical_request_and_string_to_sign_match_hand_computed() {
        let st = SigningTime::new(t());
        let body = br#"{"Fingerprint":"6f1c8e3c-4b1e-4f8e-9d55-0a9f3b2c1d00"}"#;
        let (canonical, signed) = canonical_request(&CanonicalInput {
            method: "POST",
            path: "/",
            query: "",
            headers: &[
                ("X-Amz-Target", "AmazonSSM.RequestManagedInstanceRoleToken"),
                ("Content-Type", "application/x-amz-json-1.1"),
                ("Host", "ssm.us-west-2.amazonaws.com"),
                ("X-Amz-Date", &st.amz_date),
            ],
            payload: body,
        });
        assert_eq!(signed, "content-type;host;x-amz-date;x-amz-target");
        let expected = "POST\n/\n\n\
             content-type:application/x-amz-json-1.1\n\
             host:ssm.us-west-2.amazonaws.com\n\
             x-amz-date:20240309T080706Z\n\
             x-amz-target:AmazonSSM.RequestManagedInstanceRoleToken\n\n\
             content-type;host;x-amz-date;x-amz-target\n\
             bcacd2e00f5b9e4fd4c7cdde97ca4128cb67b7fe01274e3e9addeeb03d63d0f6";
        assert_eq!(canonical, expected);
        let sts = string_to_sign(
            "AWS4-HMAC-SHA256",
            &st,
            &scope(&st, "us-west-2", "ssm"),
            &canonical,
        );
        assert_eq!(
            sts,
            format!(
                "AWS4-HMAC-SHA256\n20240309T080706Z\n20240309/us-west-2/ssm/aws4_request\n{HAND_CANONICAL_SHA256}"
            )
        );
    }

    /// `sha256sum` of the canonical request above.
    const HAND_CANONICAL_SHA256: &str =
        "54f5a522d5cf07f099714f47e23eea16c1b0109a3d92c5acff4c5675facfa291";

    #[test]
    fn query_is_encoded_and_sorted() {
        let q = canonical_query(&[
            (
                "trustAnchorArn",
                "arn:aws:rolesanywhere:us-west-2:123456789012:trust-anchor/ta",
            ),
            (
                "profileArn",
                "arn:aws:rolesanywhere:us-west-2:123456789012:profile/p",
            ),
            ("roleArn", "arn:aws:iam::123456789012:role/Node Role"),
        ]);
        assert_eq!(
            q,
            "profileArn=arn%3Aaws%3Arolesanywhere%3Aus-west-2%3A123456789012%3Aprofile%2Fp&\
             roleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2FNode%20Role&\
             trustAnchorArn=arn%3Aaws%3Arolesanywhere%3Aus-west-2%3A123456789012%3Atrust-anchor%2Fta"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed() {
        let (canonical, signed) = canonical_request(&CanonicalInput {
            method: "GET",
            path: "/",
            query: "",
            headers: &[("B", "  x   y  "), ("a", "1")],
            payload: b"",
        });
        assert_eq!(signed, "a;b");
        assert!(canonical.contains("a:1\nb:x y\n\na;b\n"), "{canonical}");
        assert!(
            canonical.ends_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn host_header_keeps_explicit_port() {
        let u = reqwest::Url::parse("http://127.0.0.1:4566/").expect("url");
        assert_eq!(host_header(&u).as_deref(), Some("127.0.0.1:4566"));
        let u = reqwest::Url::parse("https://ssm.us-west-2.amazonaws.com").expect("url");
        assert_eq!(
            host_header(&u).as_deref(),
            Some("ssm.us-west-2.amazonaws.com")
        );
        let u = reqwest::Url::parse("https://ssm.us-west-2.amazonaws.com:443").expect("url");
        assert_eq!(
            host_header(&u).as_deref(),
            Some("ssm.us-west-2.amazonaws.com")
        );
    }
}
