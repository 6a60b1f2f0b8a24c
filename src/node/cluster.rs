//! The cluster details the node configuration needs — API server endpoint, CA bundle, service
//! CIDR — from the NodeConfig when it has them all, otherwise from `eks:DescribeCluster` with
//! the node's own credentials, as nodeadm does; and the rest of DescribeCluster's answer
//! (version, remote node networks) that join's preflight checks. The cluster must be ACTIVE and have a
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
    /// Service CIDR (for the cluster DNS address). Always set by [`details`]; optional for
    /// node records written before it was required.
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
    #[error(
        "cluster {cluster}: the NodeConfig has no spec.cluster {field} and DescribeCluster could not be asked; give the node a role that may call eks:DescribeCluster, or set it in the NodeConfig"
    )]
    Undescribed {
        cluster: String,
        field: &'static str,
    },
    #[error(
        "cluster {cluster}: no service CIDR, so kubelet would get no cluster DNS address and pods could not resolve services; set spec.cluster.cidr in the NodeConfig (the cluster's service IPv4 CIDR), or let the node's role call eks:DescribeCluster"
    )]
    NoServiceCidr { cluster: String },
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

/// nodeadm asks DescribeCluster whenever the NodeConfig lacks any of apiServerEndpoint,
/// certificateAuthority and cidr (`internal/node/hybrid/configenricher.go` needsClusterDetails).
pub fn needs_describe(node: &NodeSettings) -> bool {
    let c = &node.cluster;
    c.api_server_endpoint.is_none() || c.certificate_authority.is_none() || c.cidr.is_none()
}

/// What DescribeCluster says, as far as a hybrid node cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    pub status: String,
    /// Kubernetes `major.minor` of the control plane.
    pub version: Option<String>,
    pub endpoint: Option<String>,
    /// `certificateAuthority.data`: base64 of the PEM bundle.
    pub ca_data: Option<String>,
    pub service_cidr: Option<String>,
    /// The CIDRs of `remoteNetworkConfig.remoteNodeNetworks`; `None` without a
    /// remoteNetworkConfig (hybrid nodes not enabled).
    pub remote_node_cidrs: Option<Vec<String>>,
}

/// Calls `eks:DescribeCluster`.
pub async fn describe_cluster(
    client: &aws_sdk_eks::Client,
    name: &str,
) -> Result<Described, ClusterError> {
    let out = client
        .describe_cluster()
        .name(name)
        .send()
        .await
        .map_err(|e| ClusterError::Describe {
            cluster: name.to_owned(),
            message: aws_sdk_eks::error::DisplayErrorContext(&e).to_string(),
        })?;
    let cluster = out.cluster().ok_or_else(|| ClusterError::Incomplete {
        cluster: name.to_owned(),
        field: "cluster",
    })?;
    Ok(Described {
        name: name.to_owned(),
        status: cluster
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "UNKNOWN".to_owned()),
        version: cluster.version().map(str::to_owned),
        endpoint: cluster.endpoint().map(str::to_owned),
        ca_data: cluster
            .certificate_authority()
            .and_then(|c| c.data())
            .map(str::to_owned),
        service_cidr: cluster
            .kubernetes_network_config()
            .and_then(|k| k.service_ipv4_cidr().or(k.service_ipv6_cidr()))
            .map(str::to_owned),
        remote_node_cidrs: cluster.remote_network_config().map(|r| {
            r.remote_node_networks()
                .iter()
                .flat_map(|n| n.cidrs().iter().filter(|c| !c.is_empty()).cloned())
                .collect()
        }),
    })
}

impl Described {
    /// The cluster must be ACTIVE and accept hybrid nodes (nodeadm ensureClusterDetails).
    pub fn check_usable(&self) -> Result<(), ClusterError> {
        if self.status != "ACTIVE" {
            return Err(ClusterError::NotActive {
                cluster: self.name.clone(),
                status: self.status.clone(),
            });
        }
        if self.remote_node_cidrs.is_none() {
            return Err(ClusterError::NotHybrid {
                cluster: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// The cluster details: the NodeConfig's values, the missing ones from `described`. Without a
/// service CIDR kubelet would get no cluster DNS address (nodeadm never runs it so), so none
/// learned is an error.
pub fn details(
    node: &NodeSettings,
    described: Option<&Described>,
) -> Result<ClusterDetails, ClusterError> {
    let c = &node.cluster;
    let name = c.name.clone();
    if let Some(d) = described
        && needs_describe(node)
    {
        d.check_usable()?;
    }
    let missing = |field: &'static str| match described {
        Some(_) => ClusterError::Incomplete {
            cluster: name.clone(),
            field,
        },
        None => ClusterError::Undescribed {
            cluster: name.clone(),
            field,
        },
    };
    let api_server_endpoint = match (&c.api_server_endpoint, described) {
        (Some(e), _) => e.expose().as_str().trim_end_matches('/').to_owned(),
        (
            None,
            Some(Described {
                endpoint: Some(e), ..
            }),
        ) => e.clone(),
        _ => return Err(missing("endpoint")),
    };
    let ca_pem = match (&c.certificate_authority, described) {
        (Some(ca), _) => {
            check_pem(&name, ca, "spec.cluster.certificateAuthority")?;
            ca.clone()
        }
        (
            None,
            Some(Described {
                ca_data: Some(data),
                ..
            }),
        ) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| ClusterError::BadCa {
                    cluster: name.clone(),
                    origin: "DescribeCluster",
                })?;
            check_pem(&name, &pem, "DescribeCluster")?;
            pem
        }
        _ => return Err(missing("certificateAuthority.data")),
    };
    let service_cidr = match (&c.cidr, described) {
        (Some(cidr), _) => cidr.clone(),
        (
            None,
            Some(Described {
                service_cidr: Some(cidr),
                ..
            }),
        ) => cidr.clone(),
        _ => return Err(ClusterError::NoServiceCidr { cluster: name }),
    };
    Ok(ClusterDetails {
        api_server_endpoint,
        ca_pem,
        service_cidr: Some(service_cidr),
    })
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

// ---------------------------------------------------------------------------------------------
// Preflight checks against DescribeCluster's answer, as nodeadm's `init` validations run them.

/// The oldest kubelet minor a control plane accepts, counted back from its own (nodeadm
/// `internal/node/hybrid/versionskew_validator.go` maxVersionSkew).
pub const MAX_VERSION_SKEW: u64 = 3;
/// The routing table, to find the default route's interface as kubelet does (nodeadm
/// `internal/network/utils.go` GetNodeIP → apimachinery ResolveBindAddress).
pub const PROC_NET_ROUTE: &str = "/proc/net/route";

/// A preflight check that refuses the join.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "kubelet {kubelet} is newer than the cluster's API server {cluster}; kubelet may not be newer than the control plane (https://kubernetes.io/releases/version-skew-policy/#kubelet). Join with `--kubernetes-version {cluster}` (or leave it out to use the cluster's version), or upgrade the cluster first"
    )]
    KubeletNewer { kubelet: String, cluster: String },
    #[error(
        "kubelet {kubelet} is too old for the cluster's API server {cluster}; kubelet may be at most {MAX_VERSION_SKEW} minor versions older. Join with `--kubernetes-version {cluster}` (or leave it out), or `hybrid-agent upgrade` the node"
    )]
    KubeletTooOld { kubelet: String, cluster: String },
    #[error("cannot compare kubelet {kubelet} with the cluster's version {cluster}: {why}")]
    Version {
        kubelet: String,
        cluster: String,
        why: String,
    },
    #[error(
        "node IP {ip} ({origin}) is not in any of cluster {cluster}'s remote node networks ({}); the control plane could not reach kubelet. Add the node's network to the cluster's remoteNetworkConfig.remoteNodeNetworks, or set `--node-ip=<an address inside one>` in spec.kubelet.flags", cidrs.join(", ")
    )]
    NodeIpOutside {
        ip: std::net::Ipv4Addr,
        origin: String,
        cluster: String,
        cidrs: Vec<String>,
    },
    #[error("{0}; set `--node-ip=<this node's IPv4 address>` in spec.kubelet.flags")]
    NodeIp(String),
}

/// `1.31`, `1.31.2`, `v1.31.2-eks-…` → (major, minor).
fn major_minor(v: &str) -> Option<(u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// kubelet may not be newer than the API server, nor more than [`MAX_VERSION_SKEW`] minors
/// older (nodeadm versionskew_validator.go).
pub fn check_version_skew(kubelet: &str, cluster: &str) -> Result<(), PreflightError> {
    let parse = |v: &str| {
        major_minor(v).ok_or_else(|| PreflightError::Version {
            kubelet: kubelet.to_owned(),
            cluster: cluster.to_owned(),
            why: format!("`{v}` is not a Kubernetes version"),
        })
    };
    let (k_major, k_minor) = parse(kubelet)?;
    let (c_major, c_minor) = parse(cluster)?;
    if k_major != c_major {
        return Err(PreflightError::Version {
            kubelet: kubelet.to_owned(),
            cluster: cluster.to_owned(),
            why: "different major versions".to_owned(),
        });
    }
    if k_minor > c_minor {
        return Err(PreflightError::KubeletNewer {
            kubelet: kubelet.to_owned(),
            cluster: cluster.to_owned(),
        });
    }
    if c_minor - k_minor > MAX_VERSION_SKEW {
        return Err(PreflightError::KubeletTooOld {
            kubelet: kubelet.to_owned(),
            cluster: cluster.to_owned(),
        });
    }
    Ok(())
}

/// The last `--node-ip=` in kubelet's flags (nodeadm ExtractNodeIPFromFlags): only one IPv4
/// address is accepted; `None` when unset or unspecified (`0.0.0.0`).
pub fn node_ip_from_flags(flags: &[String]) -> Result<Option<std::net::Ipv4Addr>, PreflightError> {
    let Some(value) = flags
        .iter()
        .filter_map(|f| f.strip_prefix("--node-ip="))
        .next_back()
    else {
        return Ok(None);
    };
    match value.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => Ok(None),
        Ok(std::net::IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(std::net::IpAddr::V6(_)) => Err(PreflightError::NodeIp(format!(
            "--node-ip={value} in spec.kubelet.flags is IPv6; hybrid nodes support IPv4 only"
        ))),
        Err(_) => Err(PreflightError::NodeIp(format!(
            "--node-ip={value} in spec.kubelet.flags is not one IPv4 address"
        ))),
    }
}

/// Whether `ip` is inside one of `cidrs`; malformed blocks match nothing.
pub fn in_cidrs(ip: std::net::Ipv4Addr, cidrs: &[String]) -> bool {
    cidrs.iter().any(|c| {
        matches!(crate::config::parse_cidr(c), Ok((std::net::IpAddr::V4(net), prefix)) if {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        })
    })
}

/// The node IP must be inside a remote node network (nodeadm ValidateIPInRemoteNodeNetwork).
pub fn check_node_ip(
    ip: std::net::Ipv4Addr,
    origin: &str,
    described: &Described,
) -> Result<(), PreflightError> {
    let cidrs = described.remote_node_cidrs.clone().unwrap_or_default();
    if in_cidrs(ip, &cidrs) {
        return Ok(());
    }
    Err(PreflightError::NodeIpOutside {
        ip,
        origin: origin.to_owned(),
        cluster: described.name.clone(),
        cidrs,
    })
}

/// An address kubelet could use as the node IP: not loopback, link-local, multicast or
/// unspecified (nodeadm ValidateNodeIP).
fn usable(ip: std::net::Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_multicast() || ip.is_unspecified())
}

/// The node IP kubelet would pick on this machine, as nodeadm's GetNodeIP works it out:
/// `--node-ip` when set; else (IAM Roles Anywhere) the node name's DNS address when it is one
/// of this host's; else the first usable IPv4 address of the default route's interface. Only
/// for the real root: it reads the running host's interfaces. Returns the address and where it
/// came from.
pub fn host_node_ip(
    flags: &[String],
    iam_node_name: Option<&str>,
    proc_net_route: &std::path::Path,
) -> Result<(std::net::Ipv4Addr, String), PreflightError> {
    if let Some(ip) = node_ip_from_flags(flags)? {
        return Ok((ip, "--node-ip in spec.kubelet.flags".to_owned()));
    }
    if let Some(name) = iam_node_name
        && let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(name, 0))
    {
        for a in addrs {
            if let std::net::IpAddr::V4(ip) = a.ip()
                && usable(ip)
                // Binding succeeds only for an address of this host.
                && std::net::UdpSocket::bind((ip, 0)).is_ok()
            {
                return Ok((ip, format!("the address node name {name} resolves to")));
            }
        }
    }
    let routes = std::fs::read_to_string(proc_net_route).map_err(|e| {
        PreflightError::NodeIp(format!(
            "cannot read {} to find the default route: {e}",
            proc_net_route.display()
        ))
    })?;
    let iface = default_route_interface(&routes).ok_or_else(|| {
        PreflightError::NodeIp(
            "this host has no default IPv4 route to take the node IP from".to_owned(),
        )
    })?;
    let networks = sysinfo::Networks::new_with_refreshed_list().map_err(|e| {
        PreflightError::NodeIp(format!("cannot list this host's network interfaces: {e}"))
    })?;
    let ip = networks
        .iter()
        .filter(|(name, _)| name.to_str() == Some(iface.as_str()))
        .flat_map(|(_, data)| data.ip_networks().iter())
        .find_map(|n| match n.addr {
            std::net::IpAddr::V4(ip) if usable(ip) => Some(ip),
            _ => None,
        })
        .ok_or_else(|| {
            PreflightError::NodeIp(format!(
                "the default route's interface {iface} has no usable IPv4 address"
            ))
        })?;
    Ok((
        ip,
        format!("the address of {iface}, the default route's interface"),
    ))
}

/// The interface of the default route in `/proc/net/route` (destination and mask 0).
pub fn default_route_interface(routes: &str) -> Option<String> {
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_skew_is_nodeadms() {
        assert!(check_version_skew("1.31.2", "1.31").is_ok());
        assert!(check_version_skew("1.28.0", "1.31").is_ok());
        assert!(matches!(
            check_version_skew("1.32.0", "1.31"),
            Err(PreflightError::KubeletNewer { .. })
        ));
        assert!(matches!(
            check_version_skew("1.27.9", "1.31"),
            Err(PreflightError::KubeletTooOld { .. })
        ));
        assert!(check_version_skew("v1.30.1-eks-abc", "1.31").is_ok());
        assert!(matches!(
            check_version_skew("latest", "1.31"),
            Err(PreflightError::Version { .. })
        ));
    }

    #[test]
    fn node_ip_flag_is_the_last_one_and_ipv4() {
        let f = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(node_ip_from_flags(&f(&["--v=2"])).expect("ok"), None);
        assert_eq!(
            node_ip_from_flags(&f(&["--node-ip=10.0.0.1", "--node-ip=10.80.1.2"])).expect("ok"),
            Some("10.80.1.2".parse().expect("ip"))
        );
        assert_eq!(
            node_ip_from_flags(&f(&["--node-ip=0.0.0.0"])).expect("ok"),
            None
        );
        assert!(node_ip_from_flags(&f(&["--node-ip=fd00::1"])).is_err());
        assert!(node_ip_from_flags(&f(&["--node-ip=10.0.0.1,fd00::1"])).is_err());
    }

    #[test]
    fn cidrs_hold_their_own_addresses() {
        let cidrs = vec!["10.80.0.0/16".to_owned(), "192.168.1.0/24".to_owned()];
        assert!(in_cidrs("10.80.255.1".parse().expect("ip"), &cidrs));
        assert!(in_cidrs("192.168.1.7".parse().expect("ip"), &cidrs));
        assert!(!in_cidrs("10.81.0.1".parse().expect("ip"), &cidrs));
        assert!(in_cidrs(
            "1.2.3.4".parse().expect("ip"),
            &["0.0.0.0/0".to_owned()]
        ));
        assert!(!in_cidrs(
            "1.2.3.4".parse().expect("ip"),
            &["garbage".to_owned()]
        ));
    }

    #[test]
    fn default_route_interface_is_read_from_proc_net_route() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0050A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth1\t00000000\t0150A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(routes).as_deref(), Some("eth1"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }
}
