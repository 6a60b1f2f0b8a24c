//! `hybrid-agent credential-process`: the command the IAM Roles Anywhere AWS config file's
//! profiles run (`credential_process = …`), written by `join`. Flags mirror
//! `aws_signing_helper credential-process`, which nodeadm's file runs instead.

use std::path::PathBuf;

use clap::Args;
use reqwest::Url;

use super::{CliError, Context};
use crate::config::{self, Region};
use crate::identity::credential_process::{self, Origin, Request};

pub(super) const LONG_ABOUT: &str = "\
Print temporary AWS credentials for the node's IAM Roles Anywhere identity as an AWS SDK \
`credential_process` expects (JSON with Version 1, AccessKeyId, SecretAccessKey, SessionToken, \
Expiration).

`hybrid-agent join` writes this command, with every flag, into the AWS config file \
(spec.hybrid.iamRolesAnywhere.awsConfigPath, default /etc/aws/hybrid/config), and kubelet's \
aws-iam-authenticator runs it through AWS_CONFIG_FILE/AWS_PROFILE, so kubelet keeps working while \
the agent daemon is stopped. It serves the daemon's credentials when they are for the same \
identity and have more than 20 minutes left, otherwise it signs a CreateSession with the \
certificate. It writes nothing.";

/// `credential-process` flags (those of `aws_signing_helper credential-process`, plus
/// `--region` and `--endpoint`).
#[derive(Debug, Args)]
pub struct CredentialProcessArgs {
    /// Certificate (PEM; leaf first, then intermediates). A host path, taken as given.
    #[arg(long, value_name = "PATH")]
    pub certificate: PathBuf,
    /// The certificate's private key (PEM). A host path, taken as given.
    #[arg(long, value_name = "PATH")]
    pub private_key: PathBuf,
    /// IAM Roles Anywhere trust anchor ARN.
    #[arg(long, value_name = "ARN")]
    pub trust_anchor_arn: String,
    /// IAM Roles Anywhere profile ARN.
    #[arg(long, value_name = "ARN")]
    pub profile_arn: String,
    /// IAM role to assume.
    #[arg(long, value_name = "ARN")]
    pub role_arn: String,
    /// Role session name (the node name).
    #[arg(long, value_name = "NAME")]
    pub role_session_name: Option<String>,
    /// Region of the IAM Roles Anywhere endpoint.
    #[arg(long)]
    pub region: String,
    /// IAM Roles Anywhere endpoint URL (default: the agent config and AWS_ENDPOINT_URL_* rules).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<Url>,
    /// Always call CreateSession, never serve the daemon's credentials.
    #[arg(long)]
    pub no_cache: bool,
}

pub(super) fn run(args: &CredentialProcessArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let region = Region::parse(&args.region).map_err(|reason| {
        CliError::CredentialProcess(format!("--region `{}`: {reason}", args.region))
    })?;
    let req = Request {
        certificate_path: args.certificate.clone(),
        private_key_path: args.private_key.clone(),
        trust_anchor_arn: args.trust_anchor_arn.clone(),
        profile_arn: args.profile_arn.clone(),
        role_arn: args.role_arn.clone(),
        session_name: args.role_session_name.clone(),
        region,
        endpoint: args.endpoint.clone(),
        no_cache: args.no_cache,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Runtime {
            command: "credential-process",
            source,
        })?;
    let (creds, origin) = runtime
        .block_on(credential_process::credentials(&ctx.paths, &agent, &req))
        .map_err(|e| CliError::CredentialProcess(e.to_string()))?;
    tracing::debug!(
        access_key_id = %creds.access_key_id,
        from = match origin {
            Origin::Daemon => "the daemon's credentials",
            Origin::CreateSession => "CreateSession",
        },
        "credential-process"
    );
    ctx.write(
        "credential-process",
        &credential_process::output_json(&creds),
    )
}
