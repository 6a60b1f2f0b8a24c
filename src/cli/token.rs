//! `hybrid-agent token`: the EKS bearer token as a kubectl/kubelet exec credential plugin, the
//! same output as `aws-iam-authenticator token` ([`crate::aws::eks_token`]).

use std::time::SystemTime;

use clap::Args;

use super::{CliError, Context};
use crate::config;
use crate::identity::credfile::CredentialsTarget;

pub(super) const LONG_ABOUT: &str = "\
Print an ExecCredential (client.authentication.k8s.io/v1beta1) holding a token for the cluster's \
API server, made from the node's AWS credentials: what `aws-iam-authenticator token` prints, so \
a kubeconfig may name hybrid-agent as its exec plugin. The credentials come from the shared \
credentials file the agent keeps fresh (the [credentials] file and profile of the agent config), \
or from AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE when set, as the AWS SDKs read them. Nothing \
is sent anywhere: the token is a presigned STS GetCallerIdentity URL that the API server checks.

The token is a credential for the cluster; it is printed on stdout only, never logged.

Examples:
  hybrid-agent token --cluster-id my-cluster --region us-west-2
  kubectl get nodes --token \"$(hybrid-agent token -i my-cluster | jq -r .status.token)\"";

/// `token` flags (aws-iam-authenticator's names).
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The cluster the token is for (EKS cluster name).
    #[arg(short = 'i', long = "cluster-id", value_name = "NAME")]
    pub cluster_id: String,
    /// Region of the STS endpoint the token is signed for (default: the joined node's region).
    #[arg(long)]
    pub region: Option<String>,
}

pub(super) fn run(args: &TokenArgs, ctx: &mut Context<'_>) -> Result<(), CliError> {
    let agent = config::load_agent(ctx.load_context())?.agent;
    let region = match &args.region {
        Some(r) => r.clone(),
        None => match crate::join::record::NodeRecord::load(&ctx.paths) {
            Ok(Some(record)) => record.region.as_str().to_owned(),
            _ => {
                return Err(CliError::Token(
                    "no --region given and this host has not joined a cluster to take it from; pass --region".into(),
                ));
            }
        },
    };
    let target = CredentialsTarget {
        path: ctx
            .env
            .get("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or(agent.credentials.file.clone()),
        profile: ctx
            .env
            .get("AWS_PROFILE")
            .map(str::to_owned)
            .unwrap_or(agent.credentials.profile.clone()),
    };
    let creds =
        crate::join::cloud::credentials_in(&target).map_err(|e| CliError::Token(e.to_string()))?;
    let token = crate::aws::eks_token::token(&creds, &args.cluster_id, &region, SystemTime::now());
    let expiration = time::OffsetDateTime::from(token.refresh_after)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let doc = serde_json::json!({
        "kind": "ExecCredential",
        "apiVersion": crate::node::kubeconfig::EXEC_API_VERSION,
        "spec": {},
        "status": {
            "expirationTimestamp": expiration,
            "token": token.token,
        },
    });
    ctx.write("token", &format!("{doc}\n"))
}
