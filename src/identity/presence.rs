//! SSM presence: an SSM hybrid-activation node tells SSM it is alive, so SSM shows it `Online`
//! and Fleet Manager, Session Manager and Run Command can see it.
//!
//! amazon-ssm-agent does this with `UpdateInstanceInformation` every 5 minutes
//! (agent/health/healthcheck.go), sending its name and version, `AgentStatus=Active`, the
//! platform type, name and version, the IP address and the host name
//! (agent/ssm/service.go); without it SSM shows a registered instance as `ConnectionLost`. The
//! [`Presence`] loop does the same for hybrid-agent, which replaces ssm-agent on the node:
//! - first ping soon after start (a random share of `daemon.startup_jitter`, as every first call
//!   of the daemon, so a site powering up does not ping in one second), then every
//!   `daemon.ssm_presence_interval`, each wait shortened at random by up to
//!   [`INTERVAL_SPREAD`] so a fleet started together drifts apart and no wait is ever longer
//!   than the interval (the service's ConnectionLost threshold is counted in missed pings);
//! - signed with the instance's rotating role credentials (in-process, from the rotation loop),
//!   through the same private SSM client and endpoint as the identity calls
//!   ([`crate::identity::ssm::SsmClient::update_instance_information`]: aws-sdk-ssm does not
//!   model the operation);
//! - the host facts are read afresh for each ping (an address from DHCP or a distribution
//!   upgrade changes them);
//! - a failed ping is logged and retried with full-jitter backoff from [`RETRY_FIRST`] up to
//!   the interval; it is never fatal: being invisible to SSM does not stop the node from
//!   running pods. The last successful ping is published ([`PresenceStatus`]) for `status` and
//!   `doctor`.
//!
//! IAM Roles Anywhere nodes are not SSM managed instances (they have no `mi-` id and SSM knows
//! nothing of them), so the daemon runs no presence loop for them. The wire form and the
//! choices are in docs/protocols.md "UpdateInstanceInformation (presence)".

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::identity::rotation::LastError;
use crate::identity::ssm::{InstanceInformation, SsmClient, SsmError};
use crate::identity::store::ts;
use crate::paths::HostPaths;
use crate::retry::{Backoff, Class, Jitter, Spread};

/// `AgentName` we report. amazon-ssm-agent reports `amazon-ssm-agent`
/// (agent/health/healthcheck.go); SSM compares `AgentVersion` against that agent's releases for
/// `IsLatestVersion`, so we name ourselves rather than pass for it.
pub const AGENT_NAME: &str = "hybrid-agent";
/// `AgentStatus` while the agent runs (amazon-ssm-agent agent/health/healthcheck.go).
pub const AGENT_STATUS: &str = "Active";
/// `PlatformType` of every Linux host (SSM model enum `PlatformType`; amazon-ssm-agent
/// agent/ssm/service.go).
pub const PLATFORM_TYPE: &str = "Linux";
/// The distribution's identification, `NAME` and `VERSION_ID` (os-release(5)); the fallback
/// location when /etc/os-release is missing.
pub const OS_RELEASE: &str = "/etc/os-release";
pub const OS_RELEASE_FALLBACK: &str = "/usr/lib/os-release";
/// The kernel's routing table: the default route names the primary interface (proc(5)).
const PROC_NET_ROUTE: &str = "/proc/net/route";
/// Each wait between pings is the interval shortened by up to this fraction. Ours.
pub const INTERVAL_SPREAD: f64 = 0.2;
/// Ceiling of the first retry after a failed ping; doubles up to the interval. Ours: a blip
/// costs seconds of presence, an outage a ping per interval at most.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);

/// The loop's state, as `status` and `doctor` show it (in `daemon.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatus {
    /// The managed instance (`mi-…`).
    pub instance_id: String,
    /// The last ping SSM accepted (kept across daemon restarts).
    #[serde(with = "ts::option", default)]
    pub last_ping: Option<SystemTime>,
    /// When the next ping (or retry) is due.
    #[serde(with = "ts::option", default)]
    pub next_ping: Option<SystemTime>,
    /// Accepted pings since the daemon started.
    #[serde(default)]
    pub pings: u64,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last failure; cleared by a successful ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// `daemon.ssm_presence_interval`, seconds.
    #[serde(default)]
    pub interval_secs: u64,
}

impl PresenceStatus {
    /// A fresh status for `instance_id`, keeping the last ping a previous daemon recorded for
    /// the same instance.
    pub fn resuming(
        instance_id: &str,
        interval: Duration,
        before: Option<&PresenceStatus>,
    ) -> PresenceStatus {
        PresenceStatus {
            instance_id: instance_id.to_string(),
            last_ping: before
                .filter(|b| b.instance_id == instance_id)
                .and_then(|b| b.last_ping),
            next_ping: None,
            pings: 0,
            consecutive_failures: 0,
            last_error: None,
            interval_secs: interval.as_secs(),
        }
    }

    /// One line for `status`: the last ping and the next, or why there is none.
    pub fn render(&self, running: bool, now: SystemTime) -> String {
        let last = match self.last_ping {
            Some(t) => format!("last ping {}", ts::when(t, now)),
            None => "no ping accepted yet".to_string(),
        };
        let next = match (running, self.next_ping) {
            (true, Some(t)) => format!("; next {}", ts::when(t, now)),
            (false, _) => "; none while the daemon is not running".to_string(),
            _ => String::new(),
        };
        let mut out = format!("{last}{next} ({})\n", self.instance_id);
        if let Some(e) = &self.last_error {
            out.push_str(&format!(
                "  failing:     {} failure(s) in a row, last {}: {}\n",
                self.consecutive_failures,
                ts::format(e.at),
                e.message
            ));
            if let Some(a) = &e.action {
                out.push_str(&format!("  action:      {a}\n"));
            }
        }
        out
    }
}

/// The facts a ping carries about the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    pub platform_name: Option<String>,
    pub platform_version: Option<String>,
    pub ip_address: Option<IpAddr>,
    pub computer_name: Option<String>,
}

impl HostFacts {
    /// Reads them: os-release under `--root` (like every host file); the host name and the
    /// addresses from the kernel (a `--root` sandbox runs on this machine).
    pub fn read(paths: &HostPaths) -> HostFacts {
        let os_release = std::fs::read_to_string(paths.resolve(OS_RELEASE))
            .or_else(|_| std::fs::read_to_string(paths.resolve(OS_RELEASE_FALLBACK)))
            .unwrap_or_default();
        let default_iface = std::fs::read_to_string(PROC_NET_ROUTE)
            .ok()
            .and_then(|t| default_route_interface(&t));
        let interfaces: Vec<(String, Vec<IpAddr>)> =
            match sysinfo::Networks::new_with_refreshed_list() {
                Ok(networks) => (&networks)
                    .into_iter()
                    .map(|(name, data)| {
                        (
                            name.to_string_lossy().into_owned(),
                            data.ip_networks().iter().map(|n| n.addr).collect(),
                        )
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
        HostFacts {
            platform_name: os_release_field(&os_release, "NAME"),
            platform_version: os_release_field(&os_release, "VERSION_ID"),
            ip_address: primary_address(default_iface.as_deref(), &interfaces),
            computer_name: sysinfo::System::host_name()
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty()),
        }
    }

    /// The `UpdateInstanceInformation` input for these facts.
    pub fn information(&self) -> InstanceInformation {
        InstanceInformation {
            agent_name: AGENT_NAME.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_status: AGENT_STATUS.to_string(),
            platform_type: PLATFORM_TYPE.to_string(),
            platform_name: self.platform_name.clone(),
            platform_version: self.platform_version.clone(),
            ip_address: self.ip_address.map(|a| a.to_string()),
            computer_name: self.computer_name.clone(),
        }
    }
}

/// An os-release(5) value: `KEY=value`, the value optionally in single or double quotes with
/// backslash escapes; `None` when absent or empty. A key given twice: the later one wins, as
/// when the file is sourced by a shell.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    let raw = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))?
        .trim();
    let unquoted = match raw.as_bytes().first() {
        Some(q @ (b'"' | b'\'')) => {
            let inner = raw[1..].strip_suffix(*q as char).unwrap_or(&raw[1..]);
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        _ => raw.to_string(),
    };
    (!unquoted.is_empty()).then_some(unquoted)
}

/// The interface of the IPv4 default route with the lowest metric, from /proc/net/route.
pub fn default_route_interface(route: &str) -> Option<String> {
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            let (iface, dest, metric, mask) = (f.first()?, f.get(1)?, f.get(6)?, f.get(7)?);
            (*dest == "00000000" && *mask == "00000000")
                .then(|| Some((metric.parse::<u64>().ok()?, iface.to_string())))?
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The address SSM shows for the node: the first IPv4 address of the default route's
/// interface; else, as amazon-ssm-agent picks (agent/platform/platform.go `IP`), the first IPv4
/// address of any other interface, then the first IPv6 one. Loopback, link-local and
/// unspecified addresses never count. `interfaces` are taken in name order (sysinfo gives no
/// interface index), so the choice is stable between pings.
pub fn primary_address(
    default_iface: Option<&str>,
    interfaces: &[(String, Vec<IpAddr>)],
) -> Option<IpAddr> {
    let usable = |a: &&IpAddr| match a {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    };
    let mut sorted: Vec<&(String, Vec<IpAddr>)> = interfaces.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(name) = default_iface
        && let Some((_, addrs)) = sorted.iter().find(|(n, _)| n == name)
        && let Some(a) = addrs.iter().filter(usable).find(|a| a.is_ipv4())
    {
        return Some(*a);
    }
    let all = || {
        sorted
            .iter()
            .flat_map(|(_, addrs)| addrs.iter())
            .filter(usable)
    };
    all()
        .find(|a| a.is_ipv4())
        .or_else(|| all().next())
        .copied()
}

/// One failed ping, as the loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingError {
    /// The service error code, when SSM answered with one.
    pub code: Option<String>,
    /// The HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    pub message: String,
}

impl PingError {
    pub fn class(&self) -> Class {
        crate::retry::ssm(self.code.as_deref(), self.status)
    }

    /// What an operator should do, when waiting does not help.
    pub fn action(&self) -> Option<String> {
        match self.class() {
            Class::Fatal => Some(format!(
                "SSM no longer knows this instance (deregistered?); register the host again: {}",
                crate::identity::rotation::REREGISTER_COMMAND
            )),
            Class::Denied => Some(
                "allow ssm:UpdateInstanceInformation to the hybrid nodes role (AWS managed policy AmazonSSMManagedInstanceCore)"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

impl From<SsmError> for PingError {
    fn from(e: SsmError) -> PingError {
        let (code, status) = match &e {
            SsmError::Api { code, status, .. } => (Some(code.clone()), Some(*status)),
            _ => (None, None),
        };
        PingError {
            code,
            status,
            message: e.to_string(),
        }
    }
}

/// A boxed ping, as [`PresenceApi`] returns it.
pub type Ping<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PingError>> + Send + 'a>>;

/// The one call the loop makes: the private SSM client with the rotating credentials in the
/// agent ([`SsmPresence`]), a scripted service in the unit tests.
pub trait PresenceApi: Send + Sync {
    fn update_instance_information<'a>(
        &'a self,
        instance_id: &'a str,
        info: &'a InstanceInformation,
    ) -> Ping<'a>;
}

/// [`PresenceApi`] over [`SsmClient`], signed with the credentials `credentials` provides (the
/// rotation loop's, in-process).
pub struct SsmPresence<P> {
    pub client: SsmClient,
    pub credentials: P,
}

impl<P: ProvideCredentials> PresenceApi for SsmPresence<P> {
    fn update_instance_information<'a>(
        &'a self,
        instance_id: &'a str,
        info: &'a InstanceInformation,
    ) -> Ping<'a> {
        Box::pin(async move {
            let creds = self
                .credentials
                .provide_credentials()
                .await
                .map_err(|e| PingError {
                    code: None,
                    status: None,
                    message: format!("no credentials to sign UpdateInstanceInformation: {e}"),
                })?;
            self.client
                .update_instance_information(instance_id, info, &creds)
                .await
                .map_err(PingError::from)
        })
    }
}

/// What the loop needs besides the call.
#[derive(Debug, Clone)]
pub struct PresenceSettings {
    pub instance_id: String,
    /// `daemon.ssm_presence_interval`.
    pub interval: Duration,
    /// `daemon.startup_jitter`: the first ping waits a random share of it.
    pub startup_spread: Duration,
}

/// Reads the host facts for each ping (injected: the unit tests pin them).
pub type FactsSource = Arc<dyn Fn() -> HostFacts + Send + Sync>;

/// The presence loop (see the module docs).
pub struct Presence {
    pub settings: PresenceSettings,
    pub api: Arc<dyn PresenceApi>,
    pub facts: FactsSource,
    pub jitter: Arc<dyn Jitter>,
    /// Published after every step; shared by the instances the daemon restarts.
    pub status: Arc<watch::Sender<PresenceStatus>>,
}

impl Presence {
    /// The wait after a successful ping: the interval, shortened by up to [`INTERVAL_SPREAD`].
    pub fn next_delay(&self) -> Duration {
        let i = self.settings.interval;
        Backoff::new(i, i, Spread::Shorten(INTERVAL_SPREAD)).delay(0, self.jitter.as_ref())
    }

    /// The wait after failure number `failures` (1-based).
    pub fn retry_delay(&self, failures: u32, class: Class) -> Duration {
        let i = self.settings.interval;
        match class {
            // The same request fails the same way, and what fixes an unknown instance is an
            // operator: try again at the normal pace (host facts may have changed meanwhile).
            Class::Rejected | Class::Fatal | Class::Missing => self.next_delay(),
            _ => Backoff::new(RETRY_FIRST.min(i), i, Spread::Full)
                .delay(failures.saturating_sub(1), self.jitter.as_ref()),
        }
    }

    /// Pings until `stop` turns true. Never fails: failures are logged and retried.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut wait = crate::retry::startup_delay(self.settings.startup_spread, &*self.jitter);
        loop {
            let due = SystemTime::now() + wait;
            self.status.send_modify(|s| s.next_ping = Some(due));
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let facts = (self.facts)();
            let info = facts.information();
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.api.update_instance_information(&self.settings.instance_id, &info) => r,
            };
            let now = SystemTime::now();
            wait = match result {
                Ok(()) => {
                    let failures = self.status.borrow().consecutive_failures;
                    if failures > 0 {
                        tracing::info!(
                            instance = %self.settings.instance_id,
                            "SSM accepted UpdateInstanceInformation again after {failures} failure(s)"
                        );
                    } else {
                        tracing::debug!(
                            instance = %self.settings.instance_id,
                            ip = ?info.ip_address,
                            "SSM presence ping accepted"
                        );
                    }
                    self.status.send_modify(|s| {
                        s.last_ping = Some(now);
                        s.pings += 1;
                        s.consecutive_failures = 0;
                        s.last_error = None;
                    });
                    self.next_delay()
                }
                Err(e) => {
                    let class = e.class();
                    let action = e.action();
                    let mut failures = 0;
                    self.status.send_modify(|s| {
                        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                        failures = s.consecutive_failures;
                        s.last_error = Some(LastError {
                            at: now,
                            message: e.message.clone(),
                            action: action.clone(),
                        });
                    });
                    let wait = self.retry_delay(failures, class);
                    tracing::warn!(
                        instance = %self.settings.instance_id,
                        failures,
                        class = ?class,
                        "SSM presence ping (UpdateInstanceInformation) failed, next try in {} s; SSM shows the node ConnectionLost after a few missed pings: {}{}",
                        wait.as_secs(),
                        e.message,
                        action.map(|a| format!("; {a}")).unwrap_or_default()
                    );
                    wait
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::FixedJitter;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    #[test]
    fn os_release_values_unquoted() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(
            os_release_field(text, "NAME").as_deref(),
            Some("Debian GNU/Linux")
        );
        assert_eq!(os_release_field(text, "VERSION_ID").as_deref(), Some("12"));
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_field(text, "VERSION"), None);
        assert_eq!(
            os_release_field("NAME='Ro\\'cky'\n", "NAME").as_deref(),
            Some("Ro'cky")
        );
        assert_eq!(os_release_field("NAME=\"\"\n", "NAME"), None);
        // `NAME` is not `PRETTY_NAME`'s suffix.
        assert_eq!(os_release_field("PRETTY_NAME=x\n", "NAME"), None);
    }

    #[test]
    fn the_default_route_with_the_lowest_metric_names_the_interface() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn the_primary_address_prefers_the_default_interface_then_ipv4() {
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let ifaces = vec![
            ("lo".to_string(), vec![v4(127, 0, 0, 1)]),
            (
                "cni0".to_string(),
                vec![v4(169, 254, 1, 1), v4(10, 85, 0, 1)],
            ),
            (
                "eth0".to_string(),
                vec![
                    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
                    v4(192, 0, 2, 2),
                ],
            ),
        ];
        assert_eq!(
            primary_address(Some("eth0"), &ifaces),
            Some(v4(192, 0, 2, 2))
        );
        // No default route: the first usable IPv4 in name order (link-local skipped).
        assert_eq!(primary_address(None, &ifaces), Some(v4(10, 85, 0, 1)));
        // Only loopback and link-local IPv6: none; a global IPv6 when there is no IPv4.
        let v6only = vec![
            ("lo".to_string(), vec![v4(127, 0, 0, 1)]),
            (
                "eth0".to_string(),
                vec![
                    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
                ],
            ),
        ];
        assert_eq!(
            primary_address(Some("eth0"), &v6only),
            Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)))
        );
        assert_eq!(primary_address(None, &v6only[..1]), None);
    }

    #[test]
    fn the_information_names_the_agent_and_the_host() {
        let facts = HostFacts {
            platform_name: Some("Ubuntu".into()),
            platform_version: Some("24.04".into()),
            ip_address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
            computer_name: Some("edge-1".into()),
        };
        let i = facts.information();
        assert_eq!(i.agent_name, "hybrid-agent");
        assert_eq!(i.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(i.agent_status, "Active");
        assert_eq!(i.platform_type, "Linux");
        assert_eq!(i.ip_address.as_deref(), Some("10.0.0.7"));
        assert_eq!(i.computer_name.as_deref(), Some("edge-1"));
    }

    /// Answers each ping with the next scripted result (then success), recording the times.
    struct Scripted {
        answers: Mutex<Vec<Result<(), PingError>>>,
        calls: Mutex<Vec<(String, InstanceInformation)>>,
    }

    impl PresenceApi for Scripted {
        fn update_instance_information<'a>(
            &'a self,
            instance_id: &'a str,
            info: &'a InstanceInformation,
        ) -> Ping<'a> {
            self.calls
                .lock()
                .expect("lock")
                .push((instance_id.to_string(), info.clone()));
            let mut a = self.answers.lock().expect("lock");
            let r = if a.is_empty() { Ok(()) } else { a.remove(0) };
            Box::pin(async move { r })
        }
    }

    fn err(code: &str, status: u16) -> PingError {
        PingError {
            code: Some(code.into()),
            status: Some(status),
            message: format!("{code}: test"),
        }
    }

    fn presence(api: Arc<Scripted>, jitter: f64, interval: Duration) -> Presence {
        Presence {
            settings: PresenceSettings {
                instance_id: "mi-0123456789abcdef0".into(),
                interval,
                startup_spread: interval / 10,
            },
            api,
            facts: Arc::new(HostFacts::default),
            jitter: Arc::new(FixedJitter(jitter)),
            status: Arc::new(watch::Sender::new(PresenceStatus::resuming(
                "mi-0123456789abcdef0",
                Duration::from_secs(300),
                None,
            ))),
        }
    }

    #[test]
    fn waits_follow_the_interval_and_back_off_on_transient_failures() {
        let api = Arc::new(Scripted {
            answers: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        });
        let five_min = Duration::from_secs(300);
        let p = presence(api.clone(), 1.0, five_min);
        // Shortened by the whole spread at the top draw; never longer than the interval.
        assert_eq!(p.next_delay(), Duration::from_secs(240));
        assert_eq!(
            presence(api.clone(), 0.0, five_min).next_delay(),
            Duration::from_secs(300)
        );
        // Transient: full jitter under 10 s doubling to the interval.
        assert_eq!(p.retry_delay(1, Class::Transient), Duration::from_secs(10));
        assert_eq!(p.retry_delay(3, Class::Throttled), Duration::from_secs(40));
        assert_eq!(
            p.retry_delay(20, Class::Credentials),
            Duration::from_secs(300)
        );
        // An unknown instance or a rejected request: the normal pace.
        assert_eq!(p.retry_delay(1, Class::Fatal), Duration::from_secs(240));
        assert_eq!(p.retry_delay(1, Class::Rejected), Duration::from_secs(240));
    }

    // Real time, scaled down: a 50 ms interval (first ping within 5 ms, retries within 25 ms).
    #[tokio::test]
    async fn pings_record_success_failure_and_recovery() {
        let api = Arc::new(Scripted {
            answers: Mutex::new(vec![
                Err(err("InternalServerError", 500)),
                Err(err("InvalidInstanceId", 400)),
            ]),
            calls: Mutex::new(Vec::new()),
        });
        let p = presence(api.clone(), 0.5, Duration::from_millis(50));
        let status = p.status.clone();
        let mut rx = status.subscribe();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(p.run(stop_rx));
        // The first ping fails (500) and is retried soon.
        let s = rx
            .wait_for(|s| s.consecutive_failures == 1)
            .await
            .expect("status")
            .clone();
        assert_eq!(s.last_ping, None);
        assert!(s.last_error.as_ref().is_some_and(|e| e.action.is_none()));
        // Second: the instance is unknown, with the command to run.
        let s = rx
            .wait_for(|s| s.consecutive_failures == 2)
            .await
            .expect("status")
            .clone();
        let action = s.last_error.and_then(|e| e.action).unwrap_or_default();
        assert!(action.contains("join"), "{action}");
        // Third succeeds: recorded, the error cleared.
        let s = rx.wait_for(|s| s.pings == 1).await.expect("status").clone();
        assert!(s.last_ping.is_some() && s.last_error.is_none());
        assert_eq!(s.consecutive_failures, 0);
        let calls = api.calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|(id, i)| id == "mi-0123456789abcdef0"
            && i.agent_name == AGENT_NAME
            && i.agent_status == AGENT_STATUS));
        stop_tx.send_replace(true);
        task.await.expect("the loop stops when asked");
    }

    #[test]
    fn a_restarted_daemon_keeps_the_last_ping_of_the_same_instance_only() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut before = PresenceStatus::resuming("mi-1", Duration::from_secs(300), None);
        before.last_ping = Some(t);
        before.pings = 9;
        let again = PresenceStatus::resuming("mi-1", Duration::from_secs(60), Some(&before));
        assert_eq!(
            (again.last_ping, again.pings, again.interval_secs),
            (Some(t), 0, 60)
        );
        let other = PresenceStatus::resuming("mi-2", Duration::from_secs(60), Some(&before));
        assert_eq!(other.last_ping, None);
        let line = again.render(true, t + Duration::from_secs(10));
        assert!(line.starts_with("last ping "), "{line}");
        assert!(
            line.contains("(10s ago)") && line.contains("(mi-1)"),
            "{line}"
        );
    }
}
