//! AWS client plumbing shared by every subsystem.
//!
//! - [`sdk_config`]: the `SdkConfig` the agent's aws-sdk clients are built from — explicit
//!   region, the rotating credentials of [`credentials`], explicit timeouts, and SDK retries
//!   switched off where one of our loops owns the retrying (two nested retry loops multiply
//!   their waits and hide what happened). Nothing is probed from the environment: on-prem there
//!   is no IMDS, and the default provider chain would try it (amazon-ssm-agent#134).
//! - [`sts_client`] (and the clients other subsystems build the same way) applies the
//!   per-service endpoint override on top of that config.
//! - [`http`]: the reqwest client of the private APIs.
//! - [`sigv4`] and [`clock`]: request signing and the service-corrected clock it signs with,
//!   used by the private APIs (SSM, IAM Roles Anywhere) and the EKS token.

pub mod clock;
pub mod credentials;
pub mod eks_token;
pub mod http;
pub mod sigv4;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;

/// Time allowed to connect to an AWS endpoint.
pub const SDK_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one attempt of an SDK operation.
pub const SDK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts when the SDK owns retries (the SDK's standard mode default).
pub const SDK_STANDARD_ATTEMPTS: u32 = 3;

/// Who retries failed SDK calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// The caller has its own loop (telemetry shipping, credential rotation): one attempt.
    Caller,
    /// One-shot calls (`join`'s DescribeCluster, `doctor`): the SDK's standard retries.
    Sdk,
}

/// The `[network]` settings that cannot be applied to the SDK clients.
#[derive(Debug, thiserror::Error)]
pub enum SdkHttpError {
    #[error(
        "network.proxy `{url}` cannot be used by the AWS SDK clients: {message}; give an http://host:port URL"
    )]
    Proxy { url: String, message: String },
    #[error("cannot read the CA bundle {path} (network.ca_bundle): {source}")]
    CaRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the CA bundle {path} (network.ca_bundle) cannot be used: {message}; it must hold PEM certificates"
    )]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
}

/// The HTTP client of the agent's aws-sdk clients when `[network]` asks for a proxy or an extra
/// CA bundle (on-prem networks often have both: an egress proxy, TLS inspection with a corporate
/// root); `None` keeps the SDK's default client. The private clients ([`http`]) apply the same
/// settings, so every AWS call of the agent takes the same path.
pub fn sdk_http_client(
    network: &crate::config::NetworkConfig,
) -> Result<Option<aws_sdk_cloudwatchlogs::config::SharedHttpClient>, SdkHttpError> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, Connector, proxy::ProxyConfig};
    if network.proxy.is_none() && network.ca_bundle.is_none() {
        return Ok(None);
    }
    let mut trust = TrustStore::default();
    if let Some(path) = &network.ca_bundle {
        let pem = std::fs::read(path).map_err(|source| SdkHttpError::CaRead {
            path: path.clone(),
            source,
        })?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| SdkHttpError::Ca {
            path: network.ca_bundle.clone().unwrap_or_default(),
            message: e.to_string(),
        })?;
    let proxy = match &network.proxy {
        None => None,
        Some(url) => {
            let raw = url.expose();
            let err = |message: String| SdkHttpError::Proxy {
                url: url.to_string(),
                message,
            };
            // Credentials in the URL become Proxy-Authorization; the URI given on keeps none.
            let mut bare = raw.clone();
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
            let mut p = ProxyConfig::all(bare.as_str()).map_err(|e| err(e.to_string()))?;
            if !raw.username().is_empty() {
                // User-info is percent-encoded in the URL (names may hold `@` or `:`).
                let decode = |v: &str| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                let user = decode(raw.username());
                let pass = decode(raw.password().unwrap_or(""));
                p = p.with_basic_auth(user, pass);
            }
            if !network.no_proxy.is_empty() {
                p = p.no_proxy(network.no_proxy.join(","));
            }
            Some(p)
        }
    };
    let client = Builder::new().build_with_connector_fn(move |settings, components| {
        let mut b = Connector::builder();
        if let Some(s) = settings {
            b = b.connector_settings(s.clone());
        }
        if let Some(c) = components {
            b.set_sleep_impl(c.sleep_impl());
        }
        b.set_proxy_config(proxy.clone());
        b.tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context.clone())
            .build()
    });
    Ok(Some(client))
}

/// An `SdkConfig` for `region` with the given credentials, over `http` when `[network]` needs
/// one ([`sdk_http_client`]).
pub fn sdk_config(
    region: &str,
    credentials: SharedCredentialsProvider,
    retries: Retries,
    http: Option<aws_sdk_cloudwatchlogs::config::SharedHttpClient>,
) -> SdkConfig {
    let retry = match retries {
        Retries::Caller => RetryConfig::disabled(),
        Retries::Sdk => RetryConfig::standard().with_max_attempts(SDK_STANDARD_ATTEMPTS),
    };
    let mut b = SdkConfig::builder();
    if let Some(http) = http {
        b = b.http_client(http);
    }
    b.behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(credentials)
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(SDK_CONNECT_TIMEOUT)
                .operation_attempt_timeout(SDK_ATTEMPT_TIMEOUT)
                .build(),
        )
        .build()
}

/// An STS client with an optional endpoint override.
pub fn sts_client(sdk: &SdkConfig, endpoint: Option<&str>) -> aws_sdk_sts::Client {
    let mut b = aws_sdk_sts::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    aws_sdk_sts::Client::from_conf(b.build())
}
