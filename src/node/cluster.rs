//! The cluster details the node configuration needs — API server endpoint, CA bundle, service
//! CIDR — from the NodeConfig when it has them all, otherwise from `eks:DescribeCluster` with
//! the node's own credentials, as nodeadm does. The cluster must be ACTIVE and have a
//! `remoteNetworkConfig` (hybrid nodes are enabled on it); anything else is refused here with a
//! message that says what to fix, rather than failing later as an unreachable kubelet.

use base64::Engine;

use crate::config::NodeSettings;

/// PEM header every CA bundle must contain.
const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----";

/// What the renderers need to know about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterDetails {
    /// `https://…` of the API server.
    pub api_server_endpoint: String,
    /// The CA bundle, PEM.
    pub ca_pem: Vec<u8>,
    /// Service CIDR (for the cluster DNS address), when known.
    pub service_cidr: Option<String>,
}

/// Why the cluster details are not available.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "eks:DescribeCluster for {cluster} failed: {message}; check the cluster name and region, and that the node's role may call eks:DescribeCluster (or put apiServerEndpoint, certificateAuthority and cidr in the NodeConfig)"
    )]
    Describe { cluster: String, message: String },
    #[error("cluster {cluster} is {status}, not ACTIVE; wait until it is ACTIVE and join again")]
    NotActive { cluster: String, status: String },
    #[error(
        "cluster {cluster} has no remoteNetworkConfig, so it does not accept hybrid nodes; enable hybrid nodes on it (remote node and pod networks) first"
    )]
    NotHybrid { cluster: String },
    #[error("cluster {cluster}: DescribeCluster returned no {field}")]
    Incomplete {
        cluster: String,
        field: &'static str,
    },
    #[error(
        "the certificate authority of cluster {cluster} ({origin}) is not a PEM certificate bundle"
    )]
    BadCa {
        cluster: String,
        origin: &'static str,
    },
}

/// The details straight from the NodeConfig, when it has endpoint and CA (the CIDR is optional
/// there: without it no cluster DNS address is set, and kubelet uses the cluster's default).
pub fn from_node_config(node: &NodeSettings) -> Result<Option<ClusterDetails>, ClusterError> {
    let c = &node.cluster;
    match (&c.api_server_endpoint, &c.certificate_authority) {
        (Some(endpoint), Some(ca)) => {
            check_pem(&c.name, ca, "spec.cluster.certificateAuthority")?;
            Ok(Some(ClusterDetails {
                api_server_endpoint: endpoint.expose().as_str().trim_end_matches('/').to_owned(),
                ca_pem: ca.clone(),
                service_cidr: c.cidr.clone(),
            }))
        }
        _ => Ok(None),
    }
}

fn check_pem(cluster: &str, bytes: &[u8], origin: &'static str) -> Result<(), ClusterError> {
    if std::str::from_utf8(bytes).is_ok_and(|t| t.contains(PEM_CERT)) {
        Ok(())
    } else {
        Err(ClusterError::BadCa {
            cluster: cluster.to_owned(),
            origin,
        })
    }
}

/// Asks EKS. Values the NodeConfig sets win over the ones returned.
pub async fn describe(
    client: &aws_sdk_eks::Client,
    node: &NodeSettings,
) -> Result<ClusterDetails, ClusterError> {
    let name = node.cluster.name.clone();
    let out = client
        .describe_cluster()
        .name(&name)
        .send()
        .await
        .map_err(|e| ClusterError::Describe {
            cluster: name.clone(),
            message: aws_sdk_eks::error::DisplayErrorContext(&e).to_string(),
        })?;
    let cluster = out.cluster().ok_or_else(|| ClusterError::Incomplete {
        cluster: name.clone(),
        field: "cluster",
    })?;
    let status = cluster
        .status()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| "UNKNOWN".to_owned());
    if status != "ACTIVE" {
        return Err(ClusterError::NotActive {
            cluster: name,
            status,
        });
    }
    if cluster.remote_network_config().is_none() {
        return Err(ClusterError::NotHybrid { cluster: name });
    }
    let endpoint = match &node.cluster.api_server_endpoint {
        Some(e) => e.expose().as_str().trim_end_matches('/').to_owned(),
        None => cluster
            .endpoint()
            .ok_or_else(|| ClusterError::Incomplete {
                cluster: name.clone(),
                field: "endpoint",
            })?
            .to_owned(),
    };
    let ca_pem = match &node.cluster.certificate_authority {
        Some(ca) => {
            check_pem(&name, ca, "spec.cluster.certificateAuthority")?;
            ca.clone()
        }
        None => {
            let data = cluster
                .certificate_authority()
                .and_then(|c| c.data())
                .ok_or_else(|| ClusterError::Incomplete {
                    cluster: name.clone(),
                    field: "certificateAuthority.data",
                })?;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| ClusterError::BadCa {
                    cluster: name.clone(),
                    origin: "DescribeCluster",
                })?;
            check_pem(&name, &pem, "DescribeCluster")?;
            pem
        }
    };
    let service_cidr = node.cluster.cidr.clone().or_else(|| {
        cluster
            .kubernetes_network_config()
            .and_then(|k| k.service_ipv4_cidr().or(k.service_ipv6_cidr()))
            .map(str::to_owned)
    });
    Ok(ClusterDetails {
        api_server_endpoint: endpoint,
        ca_pem,
        service_cidr,
    })
}
