//! Telemetry on a node whose IAM role lacks CloudWatch permissions (the standard hybrid-nodes
//! role has neither `logs:*` nor `cloudwatch:PutMetricData`). The devstack answers PutLogEvents
//! with `AccessDeniedException` and PutMetricData with `AccessDenied`, as AWS does; the daemon
//! must keep everything in its spool, show a named state with the policy to attach in `status`,
//! `status --json` and `doctor`, and ship it all once the permission is granted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::time::Duration;

use install_support::{Daemon, Node, control_body, create_activation, devstack, standin_release};

fn denied(node: &Node) -> Option<serde_json::Value> {
    let out = node.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let d = v["telemetry"]["counters"]["access_denied"].clone();
    (!d.is_null()).then_some(d)
}

fn shipped(node: &Node) -> u64 {
    let out = node.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v["telemetry"]["counters"]["shipped"].as_u64().unwrap_or(0)
}

#[test]
fn access_denied_is_named_with_the_policy_keeps_the_spool_and_ships_once_granted() {
    let mirror = tempfile::tempdir().unwrap();
    standin_release(mirror.path(), install_support::VERSION);
    let ds = devstack(mirror.path());
    let node = Node::new(&ds, &create_activation(&ds));
    let config = node.path("/etc/hybrid-agent/config.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(
        "\n[daemon]\nstartup_jitter = \"0s\"\n\n[telemetry]\nmetrics_interval = \"1s\"\nflush_interval = \"500ms\"\n",
    );
    std::fs::write(&config, toml).unwrap();
    let joined = node.join(&ds, &[]);
    assert_eq!(joined.code, Some(0), "{joined:?}");

    control_body(
        &ds,
        "PUT",
        "/_devstack/faults",
        r#"{"rules":[{"service":"logs","operation":"PutLogEvents","deny":true},{"service":"monitoring","operation":"PutMetricData","deny":true}]}"#,
    );
    let log = node.dir.path().join("daemon.log");
    let _daemon: Daemon = node.spawn_daemon(&log);

    // The stand-in kubelet's output is what there is to ship; PutLogEvents is refused.
    let d = install_support::wait_logged(
        &node.root,
        "access_denied in status --json",
        Duration::from_secs(30),
        &log,
        || denied(&node).filter(|d| d["operation"] == "PutLogEvents"),
    );
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("not authorized to perform: logs:PutLogEvents"),
        "{d}"
    );
    let text = node.run(&["status"]).stdout;
    assert!(
        text.contains("ACCESS DENIED by CloudWatch (PutLogEvents)")
            && text.contains("logs:PutLogEvents")
            && text.contains("cloudwatch:namespace"),
        "{text}"
    );
    // doctor reads the state the daemon saves every few seconds.
    install_support::wait_logged(
        &node.root,
        "doctor naming the missing permission",
        Duration::from_secs(20),
        &log,
        || {
            let doctor = node.run(&["doctor"]);
            let text = format!("{}{}", doctor.stdout, doctor.stderr);
            (text.contains("telemetry permissions")
                && text.contains("attach this policy to the node's IAM role"))
            .then_some(())
        },
    );
    assert_eq!(shipped(&node), 0, "nothing got through");
    let spooled = {
        let out = node.run(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["telemetry"]["spool_bytes"].as_u64().unwrap_or(0)
    };
    assert!(spooled > 0, "the refused events wait in the spool");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("denies PutLogEvents to this node's IAM role"),
        "{log_text}"
    );

    // The operator attaches the policy: everything spooled is shipped, the state clears.
    control_body(&ds, "PUT", "/_devstack/faults", r#"{"rules":[]}"#);
    install_support::wait_logged(
        &node.root,
        "shipping after the deny is lifted",
        Duration::from_secs(90),
        &log,
        || (shipped(&node) > 0 && denied(&node).is_none()).then_some(()),
    );
}
