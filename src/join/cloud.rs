//! The AWS calls `join`, `leave` and `upgrade` make with the node's own credentials:
//! `eks:DescribeCluster` (through [`eks`]; see `node::cluster`) and `ssm:DeregisterManagedInstance`
//! (undoing a fresh registration, and `leave`).
//!
//! The credentials are the ones the identity phase just wrote to the shared credentials file
//! (the same the kubelet's exec plugin uses), read back once per command: these commands are
//! short-lived, so the rotation loop's in-process channel is not needed.

use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

use crate::aws::{Retries, sdk_config};
use crate::config::{AgentConfig, Region, Service};
use crate::identity::credfile::CredentialsTarget;

/// Tries at DeregisterManagedInstance (transient failures only: throttling, 5xx, network).
pub const DEREGISTER_ATTEMPTS: u32 = 5;
/// Wait before the second try; doubled each time.
pub const DEREGISTER_BACKOFF: Duration = Duration::from_millis(500);
/// `provider_name` recorded on the SDK credentials.
const PROVIDER_NAME: &str = "hybrid-agent-credentials-file";

/// Why an AWS call could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(
        "no usable credentials in profile [{profile}] of {path}: {message}; run `hybrid-agent join` (identity phase) first"
    )]
    Credentials {
        path: String,
        profile: String,
        message: String,
    },
    #[error("{0}")]
    Network(String),
    #[error("endpoint for {service}: {message}")]
    Endpoint {
        service: &'static str,
        message: String,
    },
    #[error(
        "ssm:DeregisterManagedInstance {instance_id} failed after {attempts} tries: {message}; deregister it by hand (`aws ssm deregister-managed-instance --instance-id {instance_id}`)"
    )]
    Deregister {
        instance_id: String,
        attempts: u32,
        message: String,
        /// The service refused the credentials (expired or unknown): fresh ones may succeed.
        auth: bool,
    },
}

/// Error codes meaning the credentials, not the request, were refused.
const AUTH_CODES: [&str; 4] = [
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
];

/// The node's credentials as the identity phase wrote them to the shared credentials file.
pub fn credentials(agent: &AgentConfig) -> Result<Credentials, CloudError> {
    credentials_in(&CredentialsTarget {
        path: agent.credentials.file.clone(),
        profile: agent.credentials.profile.clone(),
    })
}

/// The credentials in one profile of one shared credentials file.
pub fn credentials_in(target: &CredentialsTarget) -> Result<Credentials, CloudError> {
    let cred_err = |message: String| CloudError::Credentials {
        path: target.path.display().to_string(),
        profile: target.profile.clone(),
        message,
    };
    let values = target
        .read()
        .map_err(|e| cred_err(e.to_string()))?
        .ok_or_else(|| cred_err("the profile is missing or incomplete".into()))?;
    Ok(Credentials::new(
        values.access_key_id,
        values.secret_access_key.expose().to_owned(),
        values.session_token.map(|t| t.expose().to_owned()),
        None,
        PROVIDER_NAME,
    ))
}

/// The SDK's form of credentials fetched in-process (not read from a file).
pub fn sdk_credentials(creds: &crate::identity::TemporaryCredentials) -> Credentials {
    Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_owned(),
        Some(creds.session_token.expose().to_owned()),
        Some(creds.expiration),
        PROVIDER_NAME,
    )
}

/// SDK configuration with the credentials from the agent's shared credentials file.
pub fn sdk(agent: &AgentConfig, region: &Region) -> Result<aws_config::SdkConfig, CloudError> {
    sdk_with(agent, region, credentials(agent)?)
}

/// SDK configuration with `creds`.
fn sdk_with(
    agent: &AgentConfig,
    region: &Region,
    creds: Credentials,
) -> Result<aws_config::SdkConfig, CloudError> {
    let http = crate::aws::sdk_http_client(&agent.network)
        .map_err(|e| CloudError::Network(e.to_string()))?;
    Ok(sdk_config(
        region.as_str(),
        SharedCredentialsProvider::new(creds),
        Retries::Sdk,
        http,
    ))
}

/// [`sdk`] plus the configured endpoint of `service`, without the trailing `/` (the SDKs
/// append their paths to it).
fn service_sdk(
    agent: &AgentConfig,
    region: &Region,
    service: Service,
) -> Result<(aws_config::SdkConfig, String), CloudError> {
    service_sdk_with(agent, region, service, credentials(agent)?)
}

/// [`service_sdk`] with `creds`.
fn service_sdk_with(
    agent: &AgentConfig,
    region: &Region,
    service: Service,
    creds: Credentials,
) -> Result<(aws_config::SdkConfig, String), CloudError> {
    let conf = sdk_with(agent, region, creds)?;
    let url = agent
        .endpoints
        .url(service, region)
        .map_err(|e| CloudError::Endpoint {
            service: service.config_key(),
            message: e.to_string(),
        })?;
    Ok((conf, url.as_str().trim_end_matches('/').to_owned()))
}

/// An EKS client at the configured endpoint.
pub fn eks(agent: &AgentConfig, region: &Region) -> Result<aws_sdk_eks::Client, CloudError> {
    let (conf, url) = service_sdk(agent, region, Service::Eks)?;
    let b = aws_sdk_eks::config::Builder::from(&conf).endpoint_url(url);
    Ok(aws_sdk_eks::Client::from_conf(b.build()))
}

/// An STS client at the configured endpoint.
pub fn sts(agent: &AgentConfig, region: &Region) -> Result<aws_sdk_sts::Client, CloudError> {
    let (conf, url) = service_sdk(agent, region, Service::Sts)?;
    Ok(crate::aws::sts_client(&conf, Some(&url)))
}

/// Deregisters an SSM managed instance, retrying transient failures. An instance that is
/// already gone (`InvalidInstanceId`) counts as deregistered, so an interrupted `leave` can run
/// again.
pub async fn deregister(
    agent: &AgentConfig,
    region: &Region,
    instance_id: &str,
) -> Result<(), CloudError> {
    deregister_with(agent, region, instance_id, credentials(agent)?).await
}

/// [`deregister`] with `creds` instead of the shared credentials file's.
pub async fn deregister_with(
    agent: &AgentConfig,
    region: &Region,
    instance_id: &str,
    creds: Credentials,
) -> Result<(), CloudError> {
    let (conf, url) = service_sdk_with(agent, region, Service::Ssm, creds)?;
    let b = aws_sdk_ssm::config::Builder::from(&conf)
        .endpoint_url(url)
        // This loop owns the retries (one owner per retry loop).
        .retry_config(aws_config::retry::RetryConfig::disabled());
    let client = aws_sdk_ssm::Client::from_conf(b.build());
    let mut last = String::new();
    let mut auth = false;
    let mut tries = 0;
    for attempt in 1..=DEREGISTER_ATTEMPTS {
        tries = attempt;
        if attempt > 1 {
            tokio::time::sleep(DEREGISTER_BACKOFF * 2u32.pow(attempt - 2)).await;
        }
        match client
            .deregister_managed_instance()
            .instance_id(instance_id)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| aws_sdk_ssm::error::ProvideErrorMetadata::code(s))
                    .map(str::to_owned);
                if code.as_deref() == Some("InvalidInstanceId") {
                    tracing::info!(instance_id, "already deregistered");
                    return Ok(());
                }
                last = aws_sdk_ssm::error::DisplayErrorContext(&e).to_string();
                auth = code.as_deref().is_some_and(|c| AUTH_CODES.contains(&c));
                let transient = match code.as_deref() {
                    None => true,
                    Some(c) => {
                        c.contains("Throttl") || c == "InternalServerError" || c == "TooManyUpdates"
                    }
                };
                if !transient {
                    break;
                }
                tracing::warn!(
                    instance_id,
                    attempt,
                    "DeregisterManagedInstance failed, retrying: {last}"
                );
            }
        }
    }
    Err(CloudError::Deregister {
        instance_id: instance_id.to_owned(),
        attempts: tries,
        message: last,
        auth,
    })
}

/// An ECR client at the configured endpoint (GetAuthorizationToken).
pub fn ecr(agent: &AgentConfig, region: &Region) -> Result<aws_sdk_ecr::Client, CloudError> {
    let (conf, url) = service_sdk(agent, region, Service::Ecr)?;
    let b = aws_sdk_ecr::config::Builder::from(&conf).endpoint_url(url);
    Ok(aws_sdk_ecr::Client::from_conf(b.build()))
}
