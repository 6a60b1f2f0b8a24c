//! `hybrid-agent doctor`: the problems that most often keep a hybrid node from joining or staying
//! Ready, each checked the way the component that trips over it would meet it, and each reported
//! with what to do. Read-only.
//!
//! Host: swap, kernel modules, sysctls (read under `--root`, like every host path), the open-file
//! limit. Network, per AWS service the node talks to: does the endpoint answer through the
//! configured proxy and CA bundle, and how far is this host's clock from the endpoint's (`Date`
//! header; SigV4 refuses requests more than 5 minutes off). Cloud, once the node is known: the
//! credentials (STS GetCallerIdentity), the cluster (DescribeCluster: ACTIVE, hybrid networks,
//! this node's address inside a remote node network), the API server (reachable, the certificate
//! verifies against the cluster CA, the node's token accepted), the Node (registered, Ready), and
//! what the node is in the cluster: its identity (SelfSubjectReview), its drain rights (access
//! reviews) and, with `auto_upgrade`, the disruption lock (docs/lifecycle.md).
//! Components: containerd and kubelet answer their health probes, and use the agent's proxy.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::aws::http::{self, HttpSettings, TransportKind};
use crate::config::{AgentConfig, Region, Service};
use crate::join::{cloud, ready, record::NodeRecord};
use crate::paths::HostPaths;
use crate::supervise::probe::Prober;

/// Clock difference to an endpoint above which SigV4 requests fail (AWS allows 5 minutes).
pub const CLOCK_FAIL: Duration = Duration::from_secs(5 * 60);
/// Clock difference worth a warning: certificate and token checks start to wobble.
pub const CLOCK_WARN: Duration = Duration::from_secs(60);
/// Open files below which containerd and kubelet (which inherit the limit from the built-in
/// supervisor) run short on a busy node.
pub const MIN_NOFILE: u64 = 65_536;
/// Time allowed to each network check.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
    /// Could not be checked (not joined, nothing to read); says why.
    Skip,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name (`swap`, `endpoint ssm`, `api-server`, ...).
    pub name: String,
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when nothing).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    pub fn new(name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = fix.into();
        self
    }
}

/// What doctor looks at.
pub struct DoctorInput<'a> {
    pub paths: &'a HostPaths,
    pub agent: &'a AgentConfig,
    /// The cluster and region from the command line, for a host that has not joined yet.
    pub cluster: Option<String>,
    pub region: Option<Region>,
}

/// Every check, in the order a user should read them.
pub async fn run(input: &DoctorInput<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let record = match NodeRecord::load(input.paths) {
        Ok(Some(r)) => {
            checks.push(Check::new(
                "node",
                Outcome::Ok,
                format!(
                    "joined cluster {} ({}) as {}, Kubernetes {}, {} backend",
                    r.cluster, r.region, r.node_name, r.kubernetes_version, r.backend
                ),
            ));
            Some(r)
        }
        Ok(None) => {
            checks.push(
                Check::new("node", Outcome::Warn, "this host has not joined a cluster").fix(
                    "hybrid-agent join; the cloud checks need --cluster and --region until then",
                ),
            );
            None
        }
        Err(e) => {
            checks.push(Check::new("node", Outcome::Fail, e.to_string()));
            None
        }
    };
    host_checks(input.paths, &mut checks);
    checks.push(time_sync_check(input.paths).await);
    refresh_overdue_check(input.paths, &mut checks);
    if record.is_some() {
        daemon_checks(input.paths, input.agent, &mut checks);
    }

    let region = input
        .region
        .clone()
        .or_else(|| record.as_ref().and_then(|r| Region::parse(&r.region).ok()));
    let cluster = input
        .cluster
        .clone()
        .or_else(|| record.as_ref().map(|r| r.cluster.clone()));
    let Some(region) = region else {
        checks.push(
            Check::new(
                "network",
                Outcome::Skip,
                "no region: not joined and no --region",
            )
            .fix("pass --region (and --cluster) to check a host before it joins"),
        );
        return checks;
    };
    endpoint_checks(input.agent, &region, record.as_ref(), &mut checks).await;
    if let Some(record) = &record {
        cloud_checks(
            input.agent,
            &region,
            cluster.as_deref(),
            record,
            &mut checks,
        )
        .await;
        checks.push(proxy_check(input.paths, input.agent, record));
        component_checks(record, &mut checks).await;
        checks.push(serving_cert_check(input.paths, record));
    } else {
        checks.push(Check::new(
            "credentials",
            Outcome::Skip,
            "not joined: the node has no credentials yet",
        ));
    }
    checks
}

fn host_checks(paths: &HostPaths, checks: &mut Vec<Check>) {
    let swap = crate::node::system::active_swap(paths);
    checks.push(if swap.is_empty() {
        Check::new("swap", Outcome::Ok, "no active swap")
    } else {
        Check::new(
            "swap",
            Outcome::Fail,
            format!(
                "active swap: {}; kubelet refuses to start with swap on",
                swap.join(", ")
            ),
        )
        .fix("swapoff -a, and remove the swap entries from /etc/fstab")
    });

    let modules = std::fs::read_to_string(paths.resolve("/proc/modules")).unwrap_or_default();
    let missing: Vec<&str> = crate::node::system::MODULES
        .iter()
        .copied()
        .filter(|m| {
            !modules.lines().any(|l| l.split(' ').next() == Some(m))
                && !paths.resolve(format!("/sys/module/{m}")).exists()
        })
        .collect();
    checks.push(if missing.is_empty() {
        Check::new(
            "kernel modules",
            Outcome::Ok,
            "overlay and br_netfilter are loaded",
        )
    } else {
        Check::new(
            "kernel modules",
            Outcome::Fail,
            format!("not loaded: {}", missing.join(", ")),
        )
        .fix(format!(
            "modprobe {} (join's /etc/modules-load.d file loads them at boot)",
            missing.join(" ")
        ))
    });

    let mut wrong = Vec::new();
    let mut unreadable = Vec::new();
    for (key, want) in crate::node::system::SYSCTLS {
        let file = paths.resolve(format!("/proc/sys/{}", key.replace('.', "/")));
        match std::fs::read_to_string(&file) {
            Ok(v) if v.trim() == want => {}
            Ok(v) => wrong.push(format!("{key} = {} (needs {want})", v.trim())),
            Err(_) => unreadable.push(key),
        }
    }
    checks.push(if !wrong.is_empty() {
        Check::new("sysctls", Outcome::Fail, wrong.join("; ")).fix(
            "sysctl --system (join writes /etc/sysctl.d/99-hybrid-agent.conf), or set them by hand",
        )
    } else if !unreadable.is_empty() {
        Check::new(
            "sysctls",
            Outcome::Warn,
            format!(
                "cannot read {} (br_netfilter not loaded, or IPv6 disabled?)",
                unreadable.join(", ")
            ),
        )
    } else {
        Check::new(
            "sysctls",
            Outcome::Ok,
            "forwarding, bridge netfilter and kernel defaults set",
        )
    });

    let dirs = crate::telemetry::default_journal_dirs(paths.root());
    checks.push(
        match crate::telemetry::missing_journal(paths.root(), &dirs) {
            Some(m) => Check::new(
                "journal",
                Outcome::Warn,
                format!("{}: telemetry ships no journal entries", m.problem),
            )
            .fix(m.fix),
            None => {
                let found: Vec<String> = dirs
                    .iter()
                    .filter(|d| d.is_dir())
                    .map(|d| d.display().to_string())
                    .collect();
                Check::new(
                    "journal",
                    Outcome::Ok,
                    format!("journald writes {}", found.join(", ")),
                )
            }
        },
    );

    checks.push(match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) if n < MIN_NOFILE => Check::new(
            "open files",
            Outcome::Warn,
            format!("the open-file limit here is {n}; components the built-in supervisor starts inherit it"),
        )
        .fix(format!("raise it to at least {MIN_NOFILE} (LimitNOFILE= in the unit, or limits.conf)")),
        Some(n) => Check::new("open files", Outcome::Ok, format!("limit {n}")),
        None => Check::new("open files", Outcome::Ok, "unlimited"),
    });
}

/// The services this node talks to.
fn services(record: Option<&NodeRecord>) -> Vec<Service> {
    let identity = match record.map(|r| r.provider.as_str()) {
        Some("iam-ra") => Service::Rolesanywhere,
        _ => Service::Ssm,
    };
    vec![
        identity,
        Service::Sts,
        Service::Eks,
        Service::Logs,
        Service::Cloudwatch,
    ]
}

async fn endpoint_checks(
    agent: &AgentConfig,
    region: &Region,
    record: Option<&NodeRecord>,
    checks: &mut Vec<Check>,
) {
    let mut settings = HttpSettings::from_network(&agent.network);
    settings.connect_timeout = Some(NETWORK_TIMEOUT);
    settings.request_timeout = Some(NETWORK_TIMEOUT);
    let client = match http::client(&settings) {
        Ok(c) => c,
        Err(e) => {
            checks.push(
                Check::new("network", Outcome::Fail, e.to_string())
                    .fix("fix [network] in the agent config"),
            );
            return;
        }
    };
    let mut worst_skew: Option<(Duration, bool, String)> = None;
    for service in services(record) {
        let name = format!("endpoint {}", service.config_key());
        let url = match agent.endpoints.url(service, region) {
            Ok(u) => u,
            Err(e) => {
                checks.push(Check::new(name, Outcome::Fail, e.to_string()));
                continue;
            }
        };
        let sent_at = SystemTime::now();
        match client.get(url.clone()).send().await {
            Ok(resp) => {
                checks.push(Check::new(
                    name,
                    Outcome::Ok,
                    format!("{url} answers ({})", resp.status()),
                ));
                let date = resp
                    .headers()
                    .get(reqwest::header::DATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| httpdate::parse_http_date(v).ok());
                if let Some(date) = date {
                    let (skew, ahead) = match date.duration_since(sent_at) {
                        Ok(d) => (d, false),
                        Err(e) => (e.duration(), true),
                    };
                    if worst_skew.as_ref().is_none_or(|(w, _, _)| skew > *w) {
                        worst_skew = Some((skew, ahead, url.to_string()));
                    }
                }
            }
            Err(e) => {
                let (kind, detail) = http::classify(&e);
                let fix = match kind {
                    TransportKind::Tls => {
                        "the certificate is not trusted: if a proxy inspects TLS, put its CA in [network] ca_bundle; check the host's clock"
                    }
                    _ => "check DNS, routes and firewall to the endpoint, or set [network] proxy",
                };
                checks.push(Check::new(name, Outcome::Fail, detail).fix(fix));
            }
        }
    }
    if let Some((skew, ahead, url)) = worst_skew {
        let words = format!(
            "this host's clock is {} s {} {url}",
            skew.as_secs(),
            if ahead { "ahead of" } else { "behind" }
        );
        checks.push(if skew > CLOCK_FAIL {
            Check::new("clock", Outcome::Fail, format!("{words}: AWS refuses signatures more than 5 minutes off"))
                .fix("synchronise the clock (chrony or systemd-timesyncd against a reachable NTP server)")
        } else if skew > CLOCK_WARN {
            Check::new("clock", Outcome::Warn, words)
                .fix("synchronise the clock (chrony or systemd-timesyncd)")
        } else {
            Check::new("clock", Outcome::Ok, words)
        });
    }
}

async fn cloud_checks(
    agent: &AgentConfig,
    region: &Region,
    cluster: Option<&str>,
    record: &NodeRecord,
    checks: &mut Vec<Check>,
) {
    let credentials =
        match cloud::credentials(agent) {
            Ok(c) => c,
            Err(e) => {
                checks.push(Check::new("credentials", Outcome::Fail, e.to_string()).fix(
                    "is hybrid-agent.service running? it refreshes them (hybrid-agent status)",
                ));
                return;
            }
        };
    if credentials.expiry().is_some_and(|t| t <= SystemTime::now()) {
        checks.push(
            Check::new(
                "credentials",
                Outcome::Fail,
                "the node's credentials have expired",
            )
            .fix("start hybrid-agent.service (it refreshes them) and see hybrid-agent status"),
        );
    }
    let sts = match cloud::sts(agent, region) {
        Ok(client) => client,
        Err(e) => {
            checks.push(Check::new("credentials", Outcome::Fail, e.to_string()));
            return;
        }
    };
    match tokio::time::timeout(NETWORK_TIMEOUT * 2, sts.get_caller_identity().send()).await {
        Ok(Ok(out)) => checks.push(Check::new(
            "credentials",
            Outcome::Ok,
            format!("STS says this is {}", out.arn().unwrap_or("(no ARN)")),
        )),
        Ok(Err(e)) => checks.push(
            Check::new(
                "credentials",
                Outcome::Fail,
                format!(
                    "STS GetCallerIdentity: {}",
                    aws_sdk_sts::error::DisplayErrorContext(&e)
                ),
            )
            .fix("hybrid-agent status shows the credential refresh and its last error"),
        ),
        Err(_) => checks.push(Check::new(
            "credentials",
            Outcome::Fail,
            "STS GetCallerIdentity did not answer in time",
        )),
    }

    let Some(cluster) = cluster else {
        return;
    };
    let mut remote_node_cidrs = Vec::new();
    match cloud::eks(agent, region) {
        Ok(eks) => match tokio::time::timeout(
            NETWORK_TIMEOUT * 2,
            eks.describe_cluster().name(cluster).send(),
        )
        .await
        {
            Ok(Ok(out)) => {
                let c = out.cluster();
                let status = c
                    .and_then(|c| c.status())
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                remote_node_cidrs = c
                    .and_then(|c| c.remote_network_config())
                    .map(|r| {
                        r.remote_node_networks()
                            .iter()
                            .flat_map(|n| n.cidrs().iter().cloned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                checks.push(if status != "ACTIVE" {
                    Check::new("cluster", Outcome::Fail, format!("cluster {cluster} is {status}"))
                        .fix("wait until it is ACTIVE")
                } else if remote_node_cidrs.is_empty() {
                    Check::new(
                        "cluster",
                        Outcome::Fail,
                        format!("cluster {cluster} has no remote node networks"),
                    )
                    .fix("enable hybrid nodes on the cluster (remoteNetworkConfig)")
                } else {
                    Check::new(
                        "cluster",
                        Outcome::Ok,
                        format!(
                            "{cluster} is ACTIVE, remote node networks {}",
                            remote_node_cidrs.join(", ")
                        ),
                    )
                });
            }
            Ok(Err(e)) => checks.push(
                Check::new(
                    "cluster",
                    Outcome::Fail,
                    format!("DescribeCluster {cluster}: {}", aws_sdk_eks::error::DisplayErrorContext(&e)),
                )
                .fix("check the cluster name and region, and that the node role may call eks:DescribeCluster"),
            ),
            Err(_) => checks.push(Check::new(
                "cluster",
                Outcome::Fail,
                "DescribeCluster did not answer in time",
            )),
        },
        Err(e) => checks.push(Check::new("cluster", Outcome::Fail, e.to_string())),
    }

    let endpoint = &record.cluster_details.api_server_endpoint;
    if !remote_node_cidrs.is_empty()
        && let Some(ip) = node_ip(record, endpoint)
    {
        let inside = remote_node_cidrs.iter().any(|c| cidr_contains(c, ip));
        checks.push(if inside {
            Check::new(
                "node address",
                Outcome::Ok,
                format!("{ip} is inside a remote node network"),
            )
        } else {
            Check::new(
                "node address",
                Outcome::Fail,
                format!(
                    "{ip} (the address this node reaches the API server from) is outside the remote node networks {}; the control plane cannot reach kubelet",
                    remote_node_cidrs.join(", ")
                ),
            )
            .fix("add this node's network to the cluster's remoteNodeNetworks, or set kubelet's --node-ip to an address inside one")
        });
    }

    let check = ready::ReadyCheck {
        endpoint,
        ca_pem: &record.cluster_details.ca_pem,
        node_name: &record.node_name,
        cluster: &record.cluster,
        region: region.as_str(),
        credentials: &credentials,
        network: &agent.network,
    };
    // One look: doctor reports how things are, it does not wait for them to change.
    let look = ready::wait_ready(&check, tokio::time::Instant::now()).await;
    let answered = matches!(
        look,
        Ok(ready::ReadyOutcome::Ready | ready::ReadyOutcome::WaitingForNetwork(_))
    );
    checks.push(match look {
        Ok(ready::ReadyOutcome::Ready) => Check::new(
            "node ready",
            Outcome::Ok,
            format!("{} is Ready in {endpoint}", record.node_name),
        ),
        Ok(ready::ReadyOutcome::WaitingForNetwork(why)) => Check::new(
            "node ready",
            Outcome::Warn,
            format!("{} is NotReady: {why}", record.node_name),
        )
        .fix("deploy a CNI (Cilium or Calico) for the cluster's remote pod network"),
        Ok(ready::ReadyOutcome::Unreachable(why)) => Check::new("api server", Outcome::Fail, why)
            .fix(
                "kubelet needs to reach the API server too: check routes, firewall and proxy to it",
            ),
        Err(e) => Check::new("node ready", Outcome::Fail, e.to_string()),
    });
    if answered {
        cluster_rights_checks(agent, record, checks).await;
    }
}

/// The node as the cluster sees it, and what it may do there: its identity
/// (SelfSubjectReview: `system:node:<name>` in `system:nodes`, what the Node authorizer and
/// NodeRestriction key on), the rights a drain uses (access reviews), and with `auto_upgrade`
/// the disruption lock (docs/lifecycle.md).
async fn cluster_rights_checks(agent: &AgentConfig, record: &NodeRecord, checks: &mut Vec<Check>) {
    let api = match crate::join::drain::api(agent, record) {
        Ok(a) => a,
        Err(e) => {
            checks.push(Check::new("cluster identity", Outcome::Skip, e.to_string()));
            return;
        }
    };
    let review = k8s_openapi::api::authentication::v1::SelfSubjectReview::default();
    let who: Result<k8s_openapi::api::authentication::v1::SelfSubjectReview, _> = api
        .post_query(
            "SelfSubjectReview",
            &["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"],
            &review,
        )
        .await;
    let want = format!("system:node:{}", record.node_name);
    checks.push(match who {
        Ok(r) => {
            let info = r.status.and_then(|s| s.user_info).unwrap_or_default();
            let user = info.username.unwrap_or_default();
            let groups = info.groups.unwrap_or_default();
            if user == want && groups.iter().any(|g| g == "system:nodes") {
                Check::new(
                    "cluster identity",
                    Outcome::Ok,
                    format!("the cluster sees this node as {user} in system:nodes"),
                )
            } else {
                Check::new(
                    "cluster identity",
                    Outcome::Fail,
                    format!(
                        "the cluster sees this node as {user:?} in groups {groups:?}, not {want} in system:nodes: kubelet cannot register or update its Node, and the Node authorizer does not apply"
                    ),
                )
                .fix("the access entry of the node's IAM role must be of type HYBRID_LINUX (aws eks describe-access-entry)")
            }
        }
        Err(e) => Check::new("cluster identity", Outcome::Warn, e.to_string()),
    });
    match crate::kube::access::review(&api, &crate::kube::access::drain_rights(&record.node_name)).await {
        Ok(denied) if denied.is_empty() => checks.push(Check::new(
            "drain rights",
            Outcome::Ok,
            "the node may cordon itself and evict its own pods (upgrade and leave drain it themselves)",
        )),
        Ok(denied) => checks.push(
            Check::new(
                "drain rights",
                Outcome::Warn,
                format!(
                    "the cluster denies the node {}: upgrade and leave refuse unless an administrator drained it first",
                    denied
                        .iter()
                        .map(|d| d.right.describe())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .fix("drain by hand (kubectl drain NODE --ignore-daemonsets), or read and apply `hybrid-agent rbac --drain`"),
        ),
        Err(e) => checks.push(Check::new("drain rights", Outcome::Warn, e.to_string())),
    }
    if agent.lifecycle.auto_upgrade {
        checks.push(match crate::kube::lock::holds(&api, SystemTime::now()).await {
            Ok(held) => Check::new(
                "disruption lock",
                Outcome::Ok,
                format!(
                    "{}/{} is readable{}",
                    crate::kube::lock::LOCK_NAMESPACE,
                    crate::kube::lock::LOCK_NAME,
                    if held { "; this node holds a slot" } else { "" }
                ),
            ),
            Err(e) => Check::new("disruption lock", Outcome::Fail, e.to_string())
                .fix("automatic upgrades wait until it is fixed: `hybrid-agent rbac | kubectl apply -f -`"),
        });
    }
}

/// kubelet's `--node-ip`, else the address this host would use to reach the API server (no
/// packet is sent: a UDP socket is only connected).
fn node_ip(record: &NodeRecord, endpoint: &str) -> Option<IpAddr> {
    let from_flag = record
        .components
        .iter()
        .flat_map(|c| c.args.iter())
        .find_map(|a| a.strip_prefix("--node-ip="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok());
    if from_flag.is_some() {
        return from_flag;
    }
    let url = reqwest::Url::parse(endpoint).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()?
        .next()?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Whether `ip` is inside `cidr` (`10.80.0.0/16`, `fd00::/64`); false for a malformed block.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Ok((net, prefix)) = crate::config::parse_cidr(cidr) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Credentials with less than a quarter of their lifetime left and no successful refresh
/// ([`crate::identity::rotation::IdentityStatus::refresh_overdue`]): warned before they expire,
/// while there is still time to act. Silent otherwise (the `credentials` check below says
/// whether they work).
fn refresh_overdue_check(paths: &HostPaths, checks: &mut Vec<Check>) {
    let Ok(report) = crate::state::report(&paths.state_dir()) else {
        return;
    };
    let Some(o) = &report.credentials_overdue else {
        return;
    };
    let now = SystemTime::now();
    let fix = if report.daemon.running {
        "remove the cause (network, endpoint, IAM) before they expire; hybrid-agent status shows each retry's error"
    } else {
        "systemctl start hybrid-agent (or `hybrid-agent run`): it refreshes them"
    };
    checks.push(
        Check::new(
            "credential refresh",
            Outcome::Warn,
            format!(
                "credentials expire in {}s, less than a quarter of their {}s lifetime; {}",
                o.remaining_secs,
                o.lifetime_secs,
                crate::state::overdue_text(o, now, report.daemon.running)
            ),
        )
        .fix(fix),
    );
}

/// One proxy for everything: the agent's `[network] proxy` is the one containerd and kubelet
/// (and kubelet's children: the ECR credential provider, aws-iam-authenticator) use, in the
/// systemd drop-ins nodeadm's debug check reads and in the built-in backend's environment (the
/// node record). A proxy changed in the agent config after join reaches the components only
/// with the next join.
fn proxy_check(paths: &HostPaths, agent: &AgentConfig, record: &NodeRecord) -> Check {
    use crate::node::proxy::{CONTAINERD_PROXY_DROPIN, KUBELET_PROXY_DROPIN};
    let want = agent
        .network
        .proxy
        .as_ref()
        .map(|p| p.expose().as_str().trim_end_matches('/').to_owned());
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    for (who, path) in [
        ("kubelet drop-in", KUBELET_PROXY_DROPIN),
        ("containerd drop-in", CONTAINERD_PROXY_DROPIN),
    ] {
        let text = std::fs::read_to_string(paths.resolve(path)).unwrap_or_default();
        let value = text.lines().find_map(|l| {
            l.trim()
                .strip_prefix("Environment=\"HTTPS_PROXY=")
                .map(|v| v.trim_end_matches('"').replace("%%", "%"))
        });
        found.push((format!("{who} {path}"), value));
    }
    for c in &record.components {
        let value = c
            .env
            .iter()
            .find(|(k, _)| k == "HTTPS_PROXY")
            .map(|(_, v)| v.clone());
        found.push((format!("{} (node record, built-in backend)", c.name), value));
    }
    let wrong = proxy_mismatches(want.as_deref(), &found);
    let shown = agent
        .network
        .proxy
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "none".to_owned());
    if wrong.is_empty() {
        Check::new(
            "proxy",
            Outcome::Ok,
            match &want {
                Some(_) => format!("agent, containerd and kubelet use the same proxy {shown}"),
                None => {
                    "no proxy: neither the agent nor containerd nor kubelet uses one".to_owned()
                }
            },
        )
    } else {
        Check::new(
            "proxy",
            Outcome::Fail,
            format!(
                "the agent's [network] proxy is {shown}, but {}: image pulls or kubelet's calls to AWS go another way than the agent's",
                wrong.join("; ")
            ),
        )
        .fix("run `hybrid-agent join` again: it renders the agent's [network] settings into both components")
    }
}

/// Where a component's proxy differs from the agent's: `where: value` (passwords hidden).
fn proxy_mismatches(want: Option<&str>, found: &[(String, Option<String>)]) -> Vec<String> {
    let redact = |v: &str| match reqwest::Url::parse(v) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.as_str().trim_end_matches('/').to_owned()
        }
        _ => v.to_owned(),
    };
    found
        .iter()
        .filter(|(_, got)| got.as_deref().map(|g| g.trim_end_matches('/')) != want)
        .map(|(at, got)| match got {
            Some(g) => format!("{at} sets {}", redact(g)),
            None => format!("{at} sets none"),
        })
        .collect()
}

/// Whether the kernel's clock is synchronised ([`crate::node::timesync`]), as `nodeadm debug`
/// checks it ("ntp-sync"): not the skew against an endpoint (`clock`), but whether anything
/// keeps the clock right.
async fn time_sync_check(paths: &HostPaths) -> Check {
    use crate::node::timesync::{self, TimeSync};
    const NAME: &str = "time sync";
    match timesync::read(paths.root()).await {
        TimeSync::Synchronized { source, detail } => Check::new(
            NAME,
            Outcome::Ok,
            format!("the kernel clock is synchronised ({source}: {detail})"),
        ),
        TimeSync::NotSynchronized {
            source,
            service_enabled: Some(false),
            detail,
        } => Check::new(
            NAME,
            Outcome::Fail,
            format!("the kernel clock is not synchronised and no NTP service is enabled ({source}: {detail}); SigV4 signatures, credentials and kubelet's certificates all depend on it"),
        )
        .fix("enable one: `timedatectl set-ntp true` (systemd-timesyncd), or install chrony; on an isolated site point it at a local NTP server"),
        TimeSync::NotSynchronized { source, detail, .. } => Check::new(
            NAME,
            Outcome::Fail,
            format!("the kernel clock is not synchronised ({source}: {detail}); SigV4 signatures, credentials and kubelet's certificates all depend on it"),
        )
        .fix("the NTP service has not synchronised the clock: check that it reaches its servers (`timedatectl timesync-status`, `chronyc sources`); on an isolated site configure a local NTP server"),
        TimeSync::Unknown(why) => Check::new(
            NAME,
            Outcome::Skip,
            format!("cannot tell whether the kernel clock is synchronised: {why}; the `clock` check's comparison with an endpoint still holds"),
        ),
    }
}

/// kubelet's serving certificate against the cluster's CA ([`crate::node::serving_cert`]), as
/// `nodeadm debug` checks it ("kubernetes-kubelet-certificate").
fn serving_cert_check(paths: &HostPaths, record: &NodeRecord) -> Check {
    use crate::node::serving_cert::{self, KUBELET_SERVING_CERT, ServingCertError};
    const NAME: &str = "kubelet serving certificate";
    let path = paths.resolve(KUBELET_SERVING_CERT);
    let ca = String::from_utf8_lossy(&record.cluster_details.ca_pem);
    match serving_cert::check(&path, &ca, SystemTime::now()) {
        Ok(detail) => Check::new(NAME, Outcome::Ok, detail),
        Err(e @ ServingCertError::Missing(_)) => Check::new(NAME, Outcome::Warn, format!("{e}: `kubectl logs` and `exec` cannot reach this node's pods until it has one"))
            .fix("kubelet asks for it (serverTLSBootstrap) once it authenticates to the cluster: see the `api server` and `node ready` checks, and `kubectl get csr` for a kubernetes.io/kubelet-serving request of this node waiting for approval"),
        Err(e @ ServingCertError::NotYetValid { .. }) => Check::new(NAME, Outcome::Fail, e.to_string())
            .fix("set the clock right (see `clock` and `time sync`), then restart kubelet"),
        Err(e @ (ServingCertError::Expired { .. } | ServingCertError::OtherIssuer { .. } | ServingCertError::Format { .. })) => {
            Check::new(NAME, Outcome::Fail, e.to_string()).fix(format!(
                "remove {} and restart kubelet: it asks the cluster for a new one",
                KUBELET_SERVING_CERT
            ))
        }
        Err(e) => Check::new(NAME, Outcome::Fail, e.to_string()),
    }
}

/// The last automatic upgrade, reboot and refresh, when they failed (docs/lifecycle.md).
fn lifecycle_checks(l: &crate::state::LifecycleStatus) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(u) = l.last.as_ref().filter(|u| !u.ok) {
        out.push(
            Check::new(
                "automatic upgrade",
                Outcome::Warn,
                format!(
                    "the upgrade {} → {} failed and was rolled back (the node runs {}, uncordoned): {}",
                    u.from, u.to, u.from, u.error
                ),
            )
            .fix("fix the cause; the same version is tried again a day later, or run `hybrid-agent upgrade` by hand"),
        );
    }
    if let Some(r) = l.last_reboot.as_ref().filter(|r| !r.ok) {
        out.push(
            Check::new(
                "automatic reboot",
                Outcome::Warn,
                format!("the last automatic reboot failed: {}", r.detail),
            )
            .fix("check [lifecycle] reboot_command (it runs as the agent, as root); tried again a day later"),
        );
    }
    if let Some(r) = l.last_refresh.as_ref().filter(|r| !r.ok) {
        out.push(
            Check::new(
                "node refresh",
                Outcome::Warn,
                format!(
                    "the last refresh (max_node_age) did not complete: {}",
                    r.detail
                ),
            )
            .fix("fix the cause named; the node was uncordoned and is refreshed again a day later"),
        );
    }
    out
}

/// The daemon and its subsystems, from the state it publishes (`daemon.json`).
fn daemon_checks(paths: &HostPaths, agent: &AgentConfig, checks: &mut Vec<Check>) {
    use crate::daemon::health::SubsystemState;
    let report = match crate::state::report(&paths.state_dir()) {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::new("daemon", Outcome::Fail, e.to_string()));
            return;
        }
    };
    if !report.daemon.running {
        checks.push(
            Check::new(
                "daemon",
                Outcome::Warn,
                "not running: nothing rotates credentials or supervises",
            )
            .fix("systemctl start hybrid-agent (or `hybrid-agent run`)"),
        );
    } else {
        let pid = report.daemon.pid.unwrap_or_default();
        checks.push(Check::new(
            "daemon",
            Outcome::Ok,
            format!("running (pid {pid})"),
        ));
    }
    let limit = agent.daemon.subsystem_down_limit.as_secs();
    for s in &report.subsystems {
        let name = format!("subsystem {}", s.name);
        let cause = s.last_error.clone().unwrap_or_default();
        checks.push(match s.state {
            SubsystemState::Running | SubsystemState::Starting => {
                let restarts = match s.restarts {
                    0 => String::new(),
                    n => format!(" after {n} restart(s); last failure: {cause}"),
                };
                Check::new(name, Outcome::Ok, format!("{}{restarts}", s.state.as_str()))
            }
            SubsystemState::Degraded => Check::new(
                name,
                Outcome::Warn,
                format!(
                    "degraded ({} failure(s) in a row, restarting with backoff): {cause}",
                    s.consecutive_failures
                ),
            )
            .fix(format!(
                "remove the cause above; the daemon restarts the subsystem by itself, and systemd restarts the agent if it stays down past {limit}s (daemon.subsystem_down_limit)"
            )),
            SubsystemState::Failed => Check::new(
                name,
                Outcome::Fail,
                format!("failed, not restarted: {cause}"),
            )
            .fix(s.action.clone().unwrap_or_default()),
        });
    }
    if let Some(t) = &report.telemetry
        && let Some(d) = &t.counters.access_denied
    {
        checks.push(
            Check::new(
                "telemetry permissions",
                Outcome::Fail,
                format!(
                    "CloudWatch denies {} to this node's IAM role ({}); logs and metrics wait in the spool",
                    d.operation, d.message
                ),
            )
            .fix(format!(
                "attach this policy to the node's IAM role (README \"IAM policy for telemetry\"): {}",
                crate::telemetry::status::telemetry_policy(&t.log_group, &t.metric_namespace)
            )),
        );
    }
    if let Some(l) = &report.lifecycle {
        checks.extend(lifecycle_checks(l));
    }
    if report.daemon.running
        && let Some(p) = &report.ssm_presence
    {
        checks.push(presence_check(
            p,
            agent.daemon.ssm_presence_interval,
            SystemTime::now(),
        ));
    }
}

/// Whether SSM has heard from this node lately: a ping within two intervals (the service shows
/// a node ConnectionLost after a few missed ones). Before the first ping of a fresh daemon the
/// check only warns when the pings fail.
fn presence_check(
    p: &crate::identity::presence::PresenceStatus,
    interval: Duration,
    now: SystemTime,
) -> Check {
    const NAME: &str = "ssm presence";
    let fix = |p: &crate::identity::presence::PresenceStatus| {
        p.last_error
            .as_ref()
            .and_then(|e| e.action.clone())
            .unwrap_or_else(|| {
                "check `endpoint ssm` above and the daemon log; SSM shows the node ConnectionLost (no Session Manager or Run Command) until a ping is accepted".to_string()
            })
    };
    let error = p
        .last_error
        .as_ref()
        .map(|e| format!("; failing: {}", e.message))
        .unwrap_or_default();
    let age = p
        .last_ping
        .map(|t| now.duration_since(t).unwrap_or_default());
    match age {
        Some(age) if age <= interval.saturating_mul(2) => Check::new(
            NAME,
            Outcome::Ok,
            format!(
                "{} accepted the last UpdateInstanceInformation {} ago",
                p.instance_id,
                crate::identity::store::ts::human(age)
            ),
        ),
        None if p.last_error.is_none() => Check::new(
            NAME,
            Outcome::Ok,
            format!("{}: first ping pending", p.instance_id),
        ),
        Some(age) => Check::new(
            NAME,
            Outcome::Warn,
            format!(
                "{}: last ping accepted {} ago{error}",
                p.instance_id,
                crate::identity::store::ts::human(age)
            ),
        )
        .fix(fix(p)),
        None => Check::new(
            NAME,
            Outcome::Warn,
            format!("{}: no ping accepted yet{error}", p.instance_id),
        )
        .fix(fix(p)),
    }
}

async fn component_checks(record: &NodeRecord, checks: &mut Vec<Check>) {
    let prober = Prober::new();
    for c in &record.components {
        let result = prober
            .probe(&c.probe.to_probe(), Duration::from_secs(3))
            .await;
        let name = c.name.to_string();
        checks.push(if result.ok {
            Check::new(name, Outcome::Ok, format!("healthy: {}", result.detail))
        } else {
            Check::new(name, Outcome::Fail, format!("unhealthy: {}", result.detail))
                .fix("hybrid-agent status shows its restarts and the supervisor's view; its log says why")
        });
    }
}

/// `ok`/`warn`/`FAIL`/`skip` lines, then a summary line.
pub fn to_text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        out.push_str(&format!("{tag}  {:<16} {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            out.push_str(&format!("      {:<16} fix: {}\n", "", c.fix));
        }
    }
    let count = |o| checks.iter().filter(|c| c.outcome == o).count();
    out.push_str(&format!(
        "{} checks: {} ok, {} warnings, {} failed, {} skipped\n",
        checks.len(),
        count(Outcome::Ok),
        count(Outcome::Warn),
        count(Outcome::Fail),
        count(Outcome::Skip)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_that_differs_from_the_agents_is_named_without_its_password() {
        let at = |w: &str, v: Option<&str>| (w.to_owned(), v.map(str::to_owned));
        assert!(proxy_mismatches(None, &[at("kubelet", None)]).is_empty());
        let p = "http://proxy.example:3128";
        assert!(
            proxy_mismatches(
                Some(p),
                &[at("kubelet", Some("http://proxy.example:3128/"))]
            )
            .is_empty()
        );
        let wrong = proxy_mismatches(
            Some(p),
            &[
                at("kubelet drop-in", Some("http://u:hunter2@old.example:3128")),
                at("containerd", None),
            ],
        );
        assert_eq!(
            wrong,
            [
                "kubelet drop-in sets http://u:***@old.example:3128",
                "containerd sets none"
            ]
        );
        assert_eq!(
            proxy_mismatches(None, &[at("kubelet", Some(p))]),
            ["kubelet sets http://proxy.example:3128"]
        );
    }

    #[test]
    fn a_failed_automatic_upgrade_or_reboot_is_a_warning_naming_the_cause() {
        let mut l = crate::state::LifecycleStatus::default();
        assert!(lifecycle_checks(&l).is_empty());
        l.last = Some(crate::state::LastUpgrade {
            from: "1.31.2".into(),
            to: "1.31.3".into(),
            finished: 0,
            ok: false,
            error: "kubelet did not become healthy within 120s".into(),
        });
        l.last_reboot = Some(crate::state::LastOutcome {
            finished: 0,
            ok: true,
            detail: "rebooted".into(),
        });
        let checks = lifecycle_checks(&l);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].outcome, Outcome::Warn);
        assert!(
            checks[0].detail.contains("1.31.2 → 1.31.3 failed and was rolled back (the node runs 1.31.2, uncordoned): kubelet did not become healthy"),
            "{}",
            checks[0].detail
        );
    }

    #[test]
    fn cidrs_contain_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        assert!(cidr_contains("10.80.0.0/16", ip("10.80.3.4")));
        assert!(!cidr_contains("10.80.0.0/16", ip("10.81.0.1")));
        assert!(cidr_contains("0.0.0.0/0", ip("192.0.2.1")));
        assert!(cidr_contains("127.0.0.0/8", ip("127.0.0.1")));
        assert!(cidr_contains("fd00::/64", ip("fd00::1")));
        assert!(!cidr_contains("fd00::/64", ip("fd01::1")));
        assert!(!cidr_contains("10.0.0.0/8", ip("fd00::1")));
        assert!(!cidr_contains("nonsense", ip("10.0.0.1")));
    }

    #[test]
    fn presence_is_ok_within_two_intervals_and_warns_with_the_fix_after() {
        use crate::identity::presence::PresenceStatus;
        use crate::identity::rotation::LastError;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let interval = Duration::from_secs(300);
        let mut p = PresenceStatus::resuming("mi-0123456789abcdef0", interval, None);
        let c = presence_check(&p, interval, now);
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        assert!(c.detail.contains("first ping pending"), "{c:?}");
        p.last_ping = Some(now - Duration::from_secs(290));
        assert_eq!(presence_check(&p, interval, now).outcome, Outcome::Ok);
        p.last_ping = Some(now - Duration::from_secs(601));
        p.consecutive_failures = 3;
        p.last_error = Some(LastError {
            at: now,
            message: "SSM UpdateInstanceInformation failed: AccessDeniedException: no".into(),
            action: Some("allow ssm:UpdateInstanceInformation".into()),
        });
        let c = presence_check(&p, interval, now);
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        assert!(
            c.detail.contains("10m01s ago") && c.detail.contains("AccessDenied"),
            "{c:?}"
        );
        assert_eq!(c.fix, "allow ssm:UpdateInstanceInformation");
        p.last_ping = None;
        let c = presence_check(&p, interval, now);
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        assert!(c.detail.contains("no ping accepted yet"), "{c:?}");
    }
}
