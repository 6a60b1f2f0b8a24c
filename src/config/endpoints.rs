//! Which URL each AWS service is reached at: the AWS default, or an override.
//!
//! Overrides follow the AWS SDK convention so a box that already exports `AWS_ENDPOINT_URL_*`
//! for the AWS CLI behaves the same with the agent, and the environment wins over the file:
//!
//! 1. `AWS_ENDPOINT_URL_<SERVICE>` (service-specific environment variable),
//! 2. `AWS_ENDPOINT_URL` (every service),
//! 3. `[endpoints] <service> = "…"` in the agent config file,
//! 4. none: the AWS default `https://<prefix>.<region>.amazonaws.com` (`.com.cn` in `cn-*`).
//!
//! The resolved [`Endpoints`] is what every client (including the private SSM client, which the
//! SDK does not cover) asks for its URL.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::Url;
use serde::Serialize;

use super::env::Env;
use super::problem::{Location, Problem};
use super::types::{Region, SafeUrl};

/// Global override variable for every service (AWS SDK convention).
pub const GLOBAL_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL";

/// URL schemes an endpoint override may use (http for local stand-ins such as devstack).
pub const ENDPOINT_SCHEMES: &[&str] = &["https", "http"];
/// Agent-config key (under `[endpoints]`) that accepts plain-HTTP overrides off loopback.
pub const ALLOW_INSECURE_KEY: &str = "allow_insecure_endpoints";

/// Whether a plain-HTTP override is acceptable: loopback always is (local stand-ins such as
/// the devstack), anything else only with [`ALLOW_INSECURE_KEY`]. Activation codes, the SSM
/// instance key exchange and every credential the agent receives would otherwise cross the
/// network in cleartext. `Err` carries the message for the problem report.
pub fn check_plain_http(url: &SafeUrl, allow_insecure: bool) -> Result<(), String> {
    let u = url.expose();
    if u.scheme() != "http" || allow_insecure || is_loopback(u) {
        return Ok(());
    }
    Err(format!(
        "`{url}` is plain HTTP off this host: activation codes and credentials would cross the network unencrypted"
    ))
}

/// The hint for a refused plain-HTTP override.
pub fn plain_http_hint() -> String {
    format!(
        "use an https:// endpoint; for a trusted test network only, set {ALLOW_INSECURE_KEY} = true under [endpoints] in the agent config"
    )
}

/// 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// Logs the loud warning every plain-HTTP override gets, loopback or not.
fn warn_plain_http(url: &SafeUrl, origin: &str) {
    if url.expose().scheme() == "http" {
        tracing::warn!(
            "endpoint override {url} ({origin}) is plain HTTP: requests, activation codes and credentials to and from it are not encrypted; use https:// outside a local test setup"
        );
    }
}

/// An AWS service the agent talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Systems Manager (hybrid activation, managed-instance credentials).
    Ssm,
    /// CloudWatch Logs.
    Logs,
    /// CloudWatch metrics.
    Cloudwatch,
    /// EKS (DescribeCluster).
    Eks,
    /// STS (GetCallerIdentity).
    Sts,
    /// IAM Roles Anywhere (CreateSession).
    Rolesanywhere,
    /// ECR (GetAuthorizationToken, for the pod sandbox image pull).
    Ecr,
}

impl Service {
    /// Every service, in a stable order.
    pub const ALL: [Service; 7] = [
        Service::Ssm,
        Service::Logs,
        Service::Cloudwatch,
        Service::Eks,
        Service::Sts,
        Service::Rolesanywhere,
        Service::Ecr,
    ];

    /// Key under `[endpoints]` in the agent config.
    pub fn config_key(self) -> &'static str {
        match self {
            Service::Ssm => "ssm",
            Service::Logs => "logs",
            Service::Cloudwatch => "cloudwatch",
            Service::Eks => "eks",
            Service::Sts => "sts",
            Service::Rolesanywhere => "rolesanywhere",
            Service::Ecr => "ecr",
        }
    }

    /// Service-specific override variable: `AWS_ENDPOINT_URL_` + the SDK service id in
    /// SCREAMING_SNAKE_CASE (AWS SDKs and tools reference guide, "Service-specific endpoints").
    pub fn env_var(self) -> &'static str {
        match self {
            Service::Ssm => "AWS_ENDPOINT_URL_SSM",
            Service::Logs => "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
            Service::Cloudwatch => "AWS_ENDPOINT_URL_CLOUDWATCH",
            Service::Eks => "AWS_ENDPOINT_URL_EKS",
            Service::Sts => "AWS_ENDPOINT_URL_STS",
            Service::Rolesanywhere => "AWS_ENDPOINT_URL_ROLESANYWHERE",
            Service::Ecr => "AWS_ENDPOINT_URL_ECR",
        }
    }

    /// Host prefix of the AWS default endpoint (CloudWatch metrics live at `monitoring.`).
    pub fn endpoint_prefix(self) -> &'static str {
        match self {
            Service::Cloudwatch => "monitoring",
            // ECR's API endpoint (the registries are <account>.dkr.ecr.…).
            Service::Ecr => "api.ecr",
            other => other.config_key(),
        }
    }

    /// The AWS default endpoint in `region`.
    pub fn default_endpoint(self, region: &Region) -> Result<Url, EndpointError> {
        let text = format!(
            "https://{}.{}.{}",
            self.endpoint_prefix(),
            region.as_str(),
            region.dns_suffix()
        );
        Url::parse(&text).map_err(|source| EndpointError {
            url: text,
            source: Box::new(source),
        })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_key())
    }
}

/// The AWS default endpoint URL could not be built (the region holds characters a host cannot).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the default endpoint {url}: {source}; check the region name")]
pub struct EndpointError {
    url: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where an override came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "from", content = "name")]
pub enum EndpointOrigin {
    /// An environment variable (named).
    Env(&'static str),
    /// `[endpoints]` in the agent config file.
    File,
}

impl fmt::Display for EndpointOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointOrigin::Env(var) => write!(f, "environment {var}"),
            EndpointOrigin::File => f.write_str("agent config [endpoints]"),
        }
    }
}

/// An overridden endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Where to send requests.
    pub url: SafeUrl,
    /// Why this URL.
    pub origin: EndpointOrigin,
}

/// The endpoint of every service after applying overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Endpoints {
    overrides: BTreeMap<Service, Endpoint>,
}

impl Endpoints {
    /// Applies the precedence in the module docs. `file` holds the `[endpoints]` table already
    /// parsed; a malformed environment value is reported as a problem naming the variable.
    ///
    /// A plain-HTTP variable off loopback is a problem unless `allow_insecure`
    /// ([`check_plain_http`]; the file's entries are checked where they are parsed); every
    /// plain-HTTP override in use is warned about.
    pub fn resolve(
        file: &BTreeMap<Service, SafeUrl>,
        env: &Env,
        allow_insecure: bool,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut parse_var = |var: &str, value: &str| match SafeUrl::parse(value, ENDPOINT_SCHEMES)
            .and_then(|url| check_plain_http(&url, allow_insecure).map(|()| url))
        {
            Ok(url) => {
                warn_plain_http(&url, &format!("environment {var}"));
                Some(url)
            }
            Err(message) => {
                problems.push(env_problem(var, message));
                None
            }
        };
        let global = env
            .get(GLOBAL_ENDPOINT_ENV)
            .and_then(|value| parse_var(GLOBAL_ENDPOINT_ENV, value));
        let mut overrides = BTreeMap::new();
        for service in Service::ALL {
            let var = service.env_var();
            let specific = env.get(var).and_then(|value| parse_var(var, value));
            let chosen = if let Some(url) = specific {
                Some(Endpoint {
                    url,
                    origin: EndpointOrigin::Env(var),
                })
            } else if let Some(url) = &global {
                Some(Endpoint {
                    url: url.clone(),
                    origin: EndpointOrigin::Env(GLOBAL_ENDPOINT_ENV),
                })
            } else {
                file.get(&service).map(|url| {
                    warn_plain_http(
                        url,
                        &format!("agent config [endpoints] {}", service.config_key()),
                    );
                    Endpoint {
                        url: url.clone(),
                        origin: EndpointOrigin::File,
                    }
                })
            };
            if let Some(endpoint) = chosen {
                overrides.insert(service, endpoint);
            }
        }
        if problems.is_empty() {
            Ok(Self { overrides })
        } else {
            Err(problems)
        }
    }

    /// The override for `service`, or `None` for the AWS default endpoint.
    pub fn endpoint(&self, service: Service) -> Option<&Endpoint> {
        self.overrides.get(&service)
    }

    /// The URL to use for `service` in `region`: the override, else the AWS default.
    pub fn url(&self, service: Service, region: &Region) -> Result<Url, EndpointError> {
        match self.overrides.get(&service) {
            Some(endpoint) => Ok(endpoint.url.expose().clone()),
            None => service.default_endpoint(region),
        }
    }
}

fn env_problem(var: &str, message: String) -> Problem {
    let hint = if message.contains("plain HTTP") {
        plain_http_hint()
    } else {
        format!(
            "set {var} to an http(s) URL such as https://ssm.us-west-2.amazonaws.com, or unset it"
        )
    };
    Problem::whole(Location::Env(var.to_owned()), message).hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> SafeUrl {
        SafeUrl::parse(s, ENDPOINT_SCHEMES).expect("test URL")
    }

    fn region(s: &str) -> Region {
        Region::parse(s).expect("test region")
    }

    fn shown(e: &Endpoints, s: Service) -> Option<(String, EndpointOrigin)> {
        e.endpoint(s).map(|e| (e.url.to_string(), e.origin.clone()))
    }

    #[test]
    fn defaults_per_partition() {
        let e = Endpoints::default();
        assert_eq!(
            e.url(Service::Ssm, &region("us-west-2"))
                .map(|u| u.to_string())
                .ok()
                .as_deref(),
            Some("https://ssm.us-west-2.amazonaws.com/")
        );
        assert_eq!(
            e.url(Service::Cloudwatch, &region("eu-west-1"))
                .map(|u| u.to_string())
                .ok()
                .as_deref(),
            Some("https://monitoring.eu-west-1.amazonaws.com/")
        );
        assert_eq!(
            e.url(Service::Logs, &region("cn-north-1"))
                .map(|u| u.to_string())
                .ok()
                .as_deref(),
            Some("https://logs.cn-north-1.amazonaws.com.cn/")
        );
        assert_eq!(e.endpoint(Service::Eks), None);
    }

    #[test]
    fn env_wins_over_file_and_specific_wins_over_global() {
        let file: BTreeMap<_, _> = [
            (Service::Ssm, url("http://file-ssm:1")),
            (Service::Eks, url("http://file-eks:1")),
        ]
        .into_iter()
        .collect();
        let env: Env = [
            ("AWS_ENDPOINT_URL", "http://global:2"),
            ("AWS_ENDPOINT_URL_SSM", "http://env-ssm:3"),
        ]
        .into_iter()
        .collect();
        let e = Endpoints::resolve(&file, &env, true).expect("valid");
        assert_eq!(
            shown(&e, Service::Ssm),
            Some((
                "http://env-ssm:3/".into(),
                EndpointOrigin::Env("AWS_ENDPOINT_URL_SSM")
            ))
        );
        // The global variable beats the file's service-specific entry: environment wins.
        assert_eq!(
            shown(&e, Service::Eks),
            Some((
                "http://global:2/".into(),
                EndpointOrigin::Env("AWS_ENDPOINT_URL")
            ))
        );
        assert_eq!(
            shown(&e, Service::Logs),
            Some((
                "http://global:2/".into(),
                EndpointOrigin::Env("AWS_ENDPOINT_URL")
            ))
        );
    }

    #[test]
    fn file_applies_without_env() {
        let file: BTreeMap<_, _> = [(Service::Logs, url("http://file-logs:1"))]
            .into_iter()
            .collect();
        let e = Endpoints::resolve(&file, &Env::default(), true).expect("valid");
        assert_eq!(
            shown(&e, Service::Logs),
            Some(("http://file-logs:1/".into(), EndpointOrigin::File))
        );
        assert_eq!(shown(&e, Service::Sts), None);
    }

    #[test]
    fn service_specific_variable_names() {
        let env: Env = [("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "http://l:1")]
            .into_iter()
            .collect();
        let e = Endpoints::resolve(&BTreeMap::new(), &env, true).expect("valid");
        assert!(e.endpoint(Service::Logs).is_some());
        assert!(e.endpoint(Service::Cloudwatch).is_none());
    }

    #[test]
    fn bad_env_values_are_all_reported() {
        let env: Env = [
            ("AWS_ENDPOINT_URL", "nope"),
            ("AWS_ENDPOINT_URL_STS", "ftp://x"),
        ]
        .into_iter()
        .collect();
        let problems = Endpoints::resolve(&BTreeMap::new(), &env, true).expect_err("invalid");
        assert_eq!(problems.len(), 2);
        assert!(
            problems
                .iter()
                .any(|p| p.location == Location::Env("AWS_ENDPOINT_URL".into()))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.location == Location::Env("AWS_ENDPOINT_URL_STS".into()))
        );
    }

    #[test]
    fn plain_http_off_loopback_needs_the_opt_in() {
        let env: Env = [
            ("AWS_ENDPOINT_URL", "http://10.0.0.7:4566"),
            ("AWS_ENDPOINT_URL_SSM", "http://localhost:4566"),
            ("AWS_ENDPOINT_URL_EKS", "http://[::1]:4566"),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.2:4566"),
            ("AWS_ENDPOINT_URL_ROLESANYWHERE", "https://ra.example"),
        ]
        .into_iter()
        .collect();
        let problems = Endpoints::resolve(&BTreeMap::new(), &env, false).expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].location,
            Location::Env("AWS_ENDPOINT_URL".into())
        );
        let e = Endpoints::resolve(&BTreeMap::new(), &env, true).expect("allowed");
        assert_eq!(
            shown(&e, Service::Logs).map(|s| s.0).as_deref(),
            Some("http://10.0.0.7:4566/")
        );
        let loopback: Env = [("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")]
            .into_iter()
            .collect();
        assert!(Endpoints::resolve(&BTreeMap::new(), &loopback, false).is_ok());
    }
}
