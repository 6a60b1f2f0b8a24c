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

pub mod credentials;
pub mod http;

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

/// An `SdkConfig` for `region` with the given credentials.
pub fn sdk_config(
    region: &str,
    credentials: SharedCredentialsProvider,
    retries: Retries,
) -> SdkConfig {
    let retry = match retries {
        Retries::Caller => RetryConfig::disabled(),
        Retries::Sdk => RetryConfig::standard().with_max_attempts(SDK_STANDARD_ATTEMPTS),
    };
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
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
