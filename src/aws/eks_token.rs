//! The bearer token an EKS API server accepts from a node: what `aws-iam-authenticator token`
//! prints, made in-process from the node's credentials.
//!
//! The token is `k8s-aws-v1.` followed by the unpadded base64url of an STS `GetCallerIdentity`
//! URL presigned with SigV4 in the query string, with the cluster name in the signed header
//! `x-k8s-aws-id`. The API server's authenticator replays that URL against STS (adding the header
//! with its own cluster name), so the token proves who the caller is for one cluster only, and
//! only while the signature is young: the authenticator refuses tokens signed more than 15
//! minutes ago. Nothing here talks to STS.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use base64::Engine;

use crate::aws::sigv4::{self, CanonicalInput, SigningTime};

/// Prefix of every EKS token (aws-iam-authenticator's `v1Prefix`).
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// Signed header naming the cluster the token is for.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// How long the authenticator accepts a token after its signing time.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// `X-Amz-Expires` aws-iam-authenticator puts in the URL (the STS side of the check).
const URL_EXPIRES_SECS: &str = "60";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// A token and the time after which a client should make a new one (a minute before the
/// authenticator stops accepting it, as aws-iam-authenticator reports it).
#[derive(Clone)]
pub struct EksToken {
    pub token: String,
    pub refresh_after: SystemTime,
}

impl std::fmt::Debug for EksToken {
    // The token is a credential for the cluster: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EksToken")
            .field("token", &crate::config::REDACTED)
            .field("refresh_after", &self.refresh_after)
            .finish()
    }
}

/// The STS host aws-iam-authenticator presigns for: the regional endpoint (the authenticator
/// accepts it and the global one). Always the real AWS host, also when the agent's own STS calls
/// go to an endpoint override: the URL is replayed by the API server, not by this host.
pub fn sts_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("sts.{region}.amazonaws.com.cn")
    } else {
        format!("sts.{region}.amazonaws.com")
    }
}

/// A token for `cluster` signed at `now` with `creds`, scoped to `region`.
pub fn token(creds: &Credentials, cluster: &str, region: &str, now: SystemTime) -> EksToken {
    let time = SigningTime::new(now);
    let scope = sigv4::scope(&time, region, "sts");
    let credential = format!("{}/{scope}", creds.access_key_id());
    let host = sts_host(region);
    let mut pairs: Vec<(&str, &str)> = vec![
        ("Action", "GetCallerIdentity"),
        ("Version", "2011-06-15"),
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", &credential),
        ("X-Amz-Date", &time.amz_date),
        ("X-Amz-Expires", URL_EXPIRES_SECS),
        ("X-Amz-SignedHeaders", "host;x-k8s-aws-id"),
    ];
    if let Some(t) = creds.session_token() {
        pairs.push(("X-Amz-Security-Token", t));
    }
    let query = sigv4::canonical_query(&pairs);
    let (canonical, _) = sigv4::canonical_request(&CanonicalInput {
        method: "GET",
        path: "/",
        query: &query,
        headers: &[("host", &host), (CLUSTER_ID_HEADER, cluster)],
        payload: b"",
    });
    let to_sign = sigv4::string_to_sign(ALGORITHM, &time, &scope, &canonical);
    let key = sigv4::hmac_signing_key(creds.secret_access_key(), &time.date, region, "sts");
    let signature = hex::encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()));
    let url = format!("https://{host}/?{query}&X-Amz-Signature={signature}");
    EksToken {
        token: format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
        ),
        refresh_after: now + TOKEN_LIFETIME - Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("FwoGZXIvYXdzEXAMPLE/token+=".into()),
            None,
            "test",
        )
    }

    fn decode(token: &str) -> reqwest::Url {
        let b64 = token.strip_prefix(TOKEN_PREFIX).expect("prefix");
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .expect("base64url without padding");
        reqwest::Url::parse(&String::from_utf8(url).expect("utf-8")).expect("URL")
    }

    #[test]
    fn token_is_a_presigned_get_caller_identity_url_for_the_cluster() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let t = token(&creds(), "hybrid-demo", "us-west-2", now);
        let url = decode(&t.token);
        assert_eq!(url.host_str(), Some("sts.us-west-2.amazonaws.com"));
        let q: std::collections::BTreeMap<String, String> =
            url.query_pairs().into_owned().collect();
        assert_eq!(q["Action"], "GetCallerIdentity");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20150830/us-west-2/sts/aws4_request"
        );
        assert_eq!(q["X-Amz-Date"], "20150830T123600Z");
        assert_eq!(q["X-Amz-SignedHeaders"], "host;x-k8s-aws-id");
        assert_eq!(q["X-Amz-Security-Token"], "FwoGZXIvYXdzEXAMPLE/token+=");
        assert_eq!(q["X-Amz-Signature"].len(), 64);
        assert_eq!(t.refresh_after, now + Duration::from_secs(14 * 60));
        // The signature covers the cluster name: another cluster, another token.
        let other = token(&creds(), "other", "us-west-2", now);
        assert_ne!(decode(&other.token).query(), url.query());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let t = token(&creds(), "c", "us-west-2", SystemTime::now());
        let shown = format!("{t:?}");
        assert!(!shown.contains(TOKEN_PREFIX), "{shown}");
    }
}
