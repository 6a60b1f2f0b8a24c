//! SSM presence through the public interface: a host joined with an SSM hybrid activation runs
//! `hybrid-agent run` with `daemon.ssm_presence_interval = "1s"`; the devstack must then list
//! the instance `Online` in DescribeInstanceInformation (read with aws-sdk-ssm, as an operator
//! would) with the agent's version, the sandbox's os-release platform, the host name and an
//! address; after the daemon stops, the instance must turn `ConnectionLost` once the devstack's
//! threshold (3 s here) passes without a ping, and `status --json` must still show the last
//! accepted ping. An IAM Roles Anywhere host is not an SSM managed instance and must never ping.

mod identity_support;

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ssm::types::{InstanceInformation, InstanceInformationStringFilter};
use identity_support::*;

/// The devstack's connection-lost threshold for these tests.
const LOST_AFTER_SECS: u64 = 3;

/// The instance as DescribeInstanceInformation shows it to an operator.
fn describe(ds: &hybrid_devstack::Devstack, id: &str) -> InstanceInformation {
    runtime().block_on(async {
        let ssm = aws_sdk_ssm::Client::new(&admin_sdk(ds));
        let out = ssm
            .describe_instance_information()
            .filters(
                InstanceInformationStringFilter::builder()
                    .key("InstanceIds")
                    .values(id)
                    .build()
                    .expect("filter"),
            )
            .send()
            .await
            .expect("DescribeInstanceInformation");
        let [i] = out.instance_information_list() else {
            panic!("one instance {id}: {out:?}")
        };
        i.clone()
    })
}

fn ping_status(i: &InstanceInformation) -> &str {
    i.ping_status().map(|p| p.as_str()).unwrap_or("")
}

fn status_json(host: &Host) -> serde_json::Value {
    let out = host.agent(&["status", "--json"]);
    assert!(out.status.success(), "status --json: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

#[test]
fn an_ssm_node_is_online_while_the_daemon_runs_and_connection_lost_after_it_stops() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    // Lands in the `[daemon]` section every test host has.
    host.agent_config("ssm_presence_interval = \"1s\"\n");
    let os_release = host.path("etc/os-release");
    std::fs::create_dir_all(os_release.parent().expect("etc")).expect("mkdir etc");
    std::fs::write(
        &os_release,
        "PRETTY_NAME=\"Presence Test Linux 7.3\"\nNAME=\"Presence Test Linux\"\nVERSION_ID=\"7.3\"\nID=ptl\n",
    )
    .expect("os-release");
    let out = host.join(&ds, Provider::Ssm, &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    let id = host
        .store()
        .load_registration()
        .expect("registration")
        .expect("registered")
        .instance_id;
    let _: serde_json::Value = control(
        &ds,
        "PUT",
        &format!("ssm/connection-lost-after?secs={LOST_AFTER_SECS}"),
        None,
    )
    .expect("threshold");

    // Registered and holding credentials, but nothing has pinged: SSM cannot reach it.
    let before = describe(&ds, &id);
    assert_eq!(ping_status(&before), "ConnectionLost", "{before:?}");
    assert_eq!(before.last_ping_date_time(), None);
    // The first two pings fail (500): logged and retried, never fatal.
    let _: serde_json::Value = control(
        &ds,
        "POST",
        "fail-next?service=ssm&operation=UpdateInstanceInformation&count=2",
        None,
    )
    .expect("fail-next");

    let mut daemon = host.spawn_daemon();
    let online = wait_for(Duration::from_secs(30), || {
        let i = describe(&ds, &id);
        (ping_status(&i) == "Online").then_some(i)
    })
    .unwrap_or_else(|| panic!("never Online; daemon log:\n{}", daemon.log()));
    assert_eq!(online.agent_version(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(online.platform_type().map(|p| p.as_str()), Some("Linux"));
    assert_eq!(online.platform_name(), Some("Presence Test Linux"));
    assert_eq!(online.platform_version(), Some("7.3"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(online.computer_name(), Some(hostname.trim()));
    let ip: IpAddr = online
        .ip_address()
        .unwrap_or_else(|| panic!("no IPAddress: {online:?}"))
        .parse()
        .expect("IPAddress is an address");
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    assert!(
        daemon
            .log()
            .contains("SSM presence ping (UpdateInstanceInformation) failed"),
        "the failed pings are logged: {}",
        daemon.log()
    );
    let pings = calls(&ds, "ssm/UpdateInstanceInformation");
    assert!(pings >= 3, "two failed pings and one accepted: {pings}");
    let reported: serde_json::Value =
        control(&ds, "GET", &format!("ssm/presence?instance={id}"), None).expect("presence");
    assert_eq!(reported["agent_name"], "hybrid-agent");
    assert_eq!(reported["agent_status"], "Active");

    // It keeps pinging at the configured pace: LastPingDateTime moves on.
    let first = online
        .last_ping_date_time()
        .expect("LastPingDateTime")
        .secs();
    wait_for(Duration::from_secs(15), || {
        let i = describe(&ds, &id);
        (i.last_ping_date_time().expect("LastPingDateTime").secs() > first).then_some(())
    })
    .unwrap_or_else(|| panic!("no later ping; daemon log:\n{}", daemon.log()));

    // The devstack records a ping before it answers; the daemon counts it once the answer is
    // in, a moment later: wait for the daemon's own count to catch up.
    let running = wait_for(Duration::from_secs(10), || {
        let s = status_json(&host);
        (s["ssm_presence"]["pings"].as_u64().unwrap_or(0) >= 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("status never counted a second ping: {}", status_json(&host)));
    let presence = &running["ssm_presence"];
    assert_eq!(presence["instance_id"], id.as_str(), "{running}");
    assert!(presence["last_ping"].is_string(), "{running}");
    assert!(presence["pings"].as_u64().unwrap_or(0) >= 2, "{running}");
    assert_eq!(presence["consecutive_failures"], 0, "{running}");
    assert!(presence.get("last_error").is_none(), "recovered: {running}");
    let out = host.agent(&["status"]);
    let shown = text(&out);
    assert!(shown.contains("ssm presence:  last ping "), "{shown}");
    assert!(
        shown.contains("ssm_presence running"),
        "the presence subsystem is listed: {shown}"
    );

    let exit = daemon.stop();
    assert!(exit.success(), "daemon exit {exit}: {}", daemon.log());
    let last = describe(&ds, &id);
    let lost = wait_for(Duration::from_secs(LOST_AFTER_SECS + 10), || {
        let i = describe(&ds, &id);
        (ping_status(&i) == "ConnectionLost").then_some(i)
    })
    .expect("ConnectionLost once the pings stop");
    assert_eq!(lost.last_ping_date_time(), last.last_ping_date_time());

    // status still shows the last accepted ping, and that nothing pings now.
    let stopped = status_json(&host);
    assert_eq!(stopped["daemon"]["running"], false, "{stopped}");
    assert!(
        stopped["ssm_presence"]["last_ping"].is_string(),
        "{stopped}"
    );
    assert!(stopped["ssm_presence"]["next_ping"].is_null(), "{stopped}");
    let shown = text(&host.agent(&["status"]));
    assert!(
        shown.contains("none while the daemon is not running"),
        "{shown}"
    );
    host.assert_no_secret_in_output(&[&daemon]);
}

#[test]
fn an_iam_roles_anywhere_node_never_pings_ssm() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    host.agent_config("ssm_presence_interval = \"1s\"\n");
    let out = host.join(
        &ds,
        Provider::IamRa {
            rsa: true,
            intermediate: false,
        },
        &[],
    );
    assert!(out.status.success(), "join: {}", text(&out));
    let mut daemon = host.spawn_daemon();
    wait_for(Duration::from_secs(20), || {
        let s = status_json(&host);
        (s["daemon"]["running"] == true && s["identity"]["state"] == "ok").then_some(())
    })
    .unwrap_or_else(|| panic!("daemon not up; log:\n{}", daemon.log()));
    // Several intervals: an SSM node would have pinged a few times by now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(calls(&ds, "ssm/UpdateInstanceInformation"), 0);
    let s = status_json(&host);
    assert!(s.get("ssm_presence").is_none(), "{s}");
    assert!(
        daemon
            .log()
            .contains("ssm presence off: IAM Roles Anywhere nodes are not SSM managed instances"),
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}
