//! kubelet's kubeconfig: the cluster's API server and CA, and the aws-iam-authenticator exec
//! plugin that turns the node's AWS credentials into a bearer token, as nodeadm configures it:
//! SSM nodes name the shared credentials file the identity module keeps fresh; IAM Roles
//! Anywhere nodes name the AWS config file whose `credential_process` fetches credentials on
//! demand ([`crate::identity::aws_config`]).

use serde::Serialize;

use super::{RenderInput, RenderedFile};
use crate::identity::aws_config;
use crate::paths;

/// The exec credential API kubelet speaks to the plugin.
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1beta1";
/// Where the installer puts aws-iam-authenticator (nodeadm's path).
pub const AUTHENTICATOR: &str = "/usr/local/bin/aws-iam-authenticator";

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: Vec<Named<ClusterEntry>>,
    contexts: Vec<Named<ContextEntry<'a>>>,
    #[serde(rename = "current-context")]
    current_context: &'a str,
    users: Vec<Named<UserEntry<'a>>>,
}

#[derive(Serialize)]
struct Named<T> {
    name: &'static str,
    #[serde(flatten)]
    inner: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterBody,
}

#[derive(Serialize)]
struct ClusterBody {
    #[serde(rename = "certificate-authority")]
    certificate_authority: String,
    server: String,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    context: ContextBody<'a>,
}

#[derive(Serialize)]
struct ContextBody<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct UserEntry<'a> {
    user: UserBody<'a>,
}

#[derive(Serialize)]
struct UserBody<'a> {
    exec: Exec<'a>,
}

#[derive(Serialize)]
struct Exec<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    command: String,
    args: Vec<String>,
    env: Vec<EnvVar>,
    #[serde(rename = "interactiveMode")]
    interactive_mode: &'a str,
    #[serde(rename = "provideClusterInfo")]
    provide_cluster_info: bool,
}

#[derive(Serialize)]
struct EnvVar {
    name: &'static str,
    value: String,
}

/// The kubeconfig file.
pub fn render(input: &RenderInput<'_>) -> RenderedFile {
    // Always explicit: systemd sets no $HOME for a unit without User=, so the SDK inside the
    // authenticator would not find /root/.aws by itself.
    let env = match input.aws_config_file {
        // nodeadm internal/kubelet/hybrid-kubeconfig.template.yaml (IAM Roles Anywhere).
        Some(config) => vec![
            EnvVar {
                name: "AWS_PROFILE",
                value: aws_config::PROFILE_NAME.to_owned(),
            },
            EnvVar {
                name: "AWS_CONFIG_FILE",
                value: config.display().to_string(),
            },
        ],
        // SSM: the shared credentials file the agent keeps fresh, and its profile.
        None => vec![
            EnvVar {
                name: "AWS_PROFILE",
                value: input.credentials_profile.to_owned(),
            },
            EnvVar {
                name: "AWS_SHARED_CREDENTIALS_FILE",
                value: input.credentials_file.display().to_string(),
            },
        ],
    };
    let doc = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: "kubernetes",
            inner: ClusterEntry {
                cluster: ClusterBody {
                    certificate_authority: input.host(paths::CLUSTER_CA),
                    server: input.cluster.api_server_endpoint.clone(),
                },
            },
        }],
        contexts: vec![Named {
            name: "kubelet",
            inner: ContextEntry {
                context: ContextBody {
                    cluster: "kubernetes",
                    user: "kubelet",
                },
            },
        }],
        current_context: "kubelet",
        users: vec![Named {
            name: "kubelet",
            inner: UserEntry {
                user: UserBody {
                    exec: Exec {
                        api_version: EXEC_API_VERSION,
                        command: input.host(AUTHENTICATOR),
                        args: vec![
                            "token".to_owned(),
                            "--cluster-id".to_owned(),
                            input.node.cluster.clone(),
                            "--region".to_owned(),
                            input.node.region.clone(),
                        ],
                        env,
                        interactive_mode: "Never",
                        provide_cluster_info: false,
                    },
                },
            },
        }],
    };
    let text = serde_yaml_ng::to_string(&doc).unwrap_or_default();
    RenderedFile::new(
        paths::KUBELET_KUBECONFIG,
        format!("# Written by hybrid-agent (nodeadm-compatible).\n{text}").into_bytes(),
        0o600,
        "kubelet kubeconfig",
    )
}
