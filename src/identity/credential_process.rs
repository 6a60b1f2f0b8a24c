//! `hybrid-agent credential-process`: credentials for the AWS SDKs' `credential_process`, which
//! the IAM Roles Anywhere AWS config file ([`crate::identity::aws_config`]) names. kubelet's
//! aws-iam-authenticator runs it whenever it needs credentials, so kubelet keeps authenticating
//! even while `hybrid-agent run` is stopped, crashed or being upgraded.
//!
//! Two sources, in order:
//! 1. the daemon's own credentials, when they are for the same role, profile and trust anchor
//!    and have more than [`CACHE_MIN_REMAINING`] left: no CreateSession per token, and nothing
//!    new for the service to rate-limit on a busy node;
//! 2. a CreateSession signed with the node's certificate ([`crate::identity::iam_ra`]).
//!
//! It never writes: many kubelet token requests may run it at once, and the daemon owns the
//! credentials files. Output is the SDK's version-1 JSON on stdout; errors go to stderr and the
//! exit status is non-zero, which the SDKs report to their caller.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;

use crate::aws::http::{self, HttpSettings};
use crate::config::{AgentConfig, Region, Service};
use crate::identity::TemporaryCredentials;
use crate::identity::clock::{SkewedClock, SystemClock};
use crate::identity::iam_ra::{DEFAULT_SESSION_DURATION, IamRaSettings, IamRaSource};
use crate::identity::setup::{IdentityEnv, SetupError};
use crate::identity::store::{ProviderKind, ts};
use crate::paths::HostPaths;

/// Cached credentials must outlive this: aws-iam-authenticator presigns a token valid 15 minutes
/// with them (aws-iam-authenticator pkg/token: `presignedURLExpiration`), and kubelet keeps the
/// token that long; 5 minutes of margin on top. The daemon refreshes at about half the remaining
/// life (27–33 min before a 1-hour session ends), so a healthy daemon's credentials always pass.
pub const CACHE_MIN_REMAINING: Duration = Duration::from_secs(20 * 60);
/// `Version` of the credential_process output (AWS SDKs reference guide, "Process credentials").
pub const OUTPUT_VERSION: u32 = 1;

/// What the command line of `credential-process` names.
#[derive(Debug, Clone)]
pub struct Request {
    pub certificate_path: PathBuf,
    pub private_key_path: PathBuf,
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
    pub session_name: Option<String>,
    pub region: Region,
    /// Overrides the agent config's and the environment's endpoint.
    pub endpoint: Option<Url>,
    /// Skip the daemon's credentials and always call CreateSession.
    pub no_cache: bool,
}

/// Where the credentials came from (logged on stderr at debug level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Daemon,
    CreateSession,
}

/// Credentials for `req`: the daemon's still-fresh ones, else a new session.
pub async fn credentials(
    paths: &HostPaths,
    agent: &AgentConfig,
    req: &Request,
) -> Result<(TemporaryCredentials, Origin), SetupError> {
    if !req.no_cache
        && let Some(c) = cached(paths, agent, req, SystemTime::now())
    {
        return Ok((c, Origin::Daemon));
    }
    let endpoint = match &req.endpoint {
        Some(u) => u.clone(),
        None => agent.endpoints.url(Service::Rolesanywhere, &req.region)?,
    };
    let settings = IamRaSettings {
        endpoint,
        region: req.region.as_str().to_owned(),
        trust_anchor_arn: req.trust_anchor_arn.clone(),
        profile_arn: req.profile_arn.clone(),
        role_arn: req.role_arn.clone(),
        certificate_path: req.certificate_path.clone(),
        private_key_path: req.private_key_path.clone(),
        session_name: req.session_name.clone(),
        duration: DEFAULT_SESSION_DURATION,
    };
    let http = http::client(&HttpSettings::from_network(&agent.network))?;
    let clock = Arc::new(SkewedClock::new(Arc::new(SystemClock)));
    let source = IamRaSource::new(http, settings, clock)?;
    Ok((source.fetch().await?, Origin::CreateSession))
}

/// The daemon's credentials, when `join` recorded the same IAM Roles Anywhere identity as `req`
/// names and they have more than [`CACHE_MIN_REMAINING`] left at `now`.
pub fn cached(
    paths: &HostPaths,
    agent: &AgentConfig,
    req: &Request,
    now: SystemTime,
) -> Option<TemporaryCredentials> {
    let env = IdentityEnv::new(paths, agent);
    let provider = env.load_provider().ok()?;
    let ira = provider.iam_ra.as_ref()?;
    let same = provider.provider == ProviderKind::IamRa
        && provider.region == req.region.as_str()
        && ira.role_arn == req.role_arn
        && ira.profile_arn == req.profile_arn
        && ira.trust_anchor_arn == req.trust_anchor_arn
        && same_file(&ira.certificate_path, &req.certificate_path);
    if !same {
        return None;
    }
    let targets = env.targets(provider.enable_credentials_file);
    env.credentials_with_life(&targets, now, CACHE_MIN_REMAINING)
        .map(|(c, _)| c)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The JSON an AWS SDK expects on stdout.
pub fn output_json(c: &TemporaryCredentials) -> String {
    let mut doc = serde_json::json!({
        "Version": OUTPUT_VERSION,
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key.expose(),
        "SessionToken": c.session_token.expose(),
        "Expiration": ts::format(c.expiration),
    });
    // Whole seconds: some SDKs' RFC 3339 parsers reject fractional seconds.
    if let Some(t) = time::OffsetDateTime::from(c.expiration)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    {
        doc["Expiration"] = serde_json::Value::String(t);
    }
    format!("{doc}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn output_is_the_sdk_version_1_document() {
        let c = TemporaryCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("s3cr3t"),
            session_token: Secret::new("tok"),
            expiration: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_500),
        };
        let v: serde_json::Value = serde_json::from_str(&output_json(&c)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "s3cr3t",
                "SessionToken": "tok",
                "Expiration": "2027-01-15T08:00:00Z",
            })
        );
    }
}
