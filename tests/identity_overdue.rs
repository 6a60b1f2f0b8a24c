//! Early warning of credentials that stop refreshing (issue 12 §6): with the SSM token service
//! failing, `hybrid-agent status` (text and `--json`), `doctor` and the daemon's log report the
//! overdue refresh — with the failure's cause — once less than a quarter of the lifetime is
//! left, *before* the credentials expire; the warning is logged once, not on every retry.

mod identity_support;

use std::time::{Duration, SystemTime};

use identity_support::*;

/// Long enough that the daemon takes over join's credentials (it does with at least
/// `SEED_MIN_REMAINING`, 60 s, left) and retries a few times; short enough for a test.
const LIFETIME: Duration = Duration::from_secs(100);

#[test]
fn failing_refresh_is_reported_before_the_credentials_expire() {
    let ds = devstack(LIFETIME);
    let host = Host::new(&ds);
    let out = host.join(&ds, Provider::Ssm, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let expiration = host.credentials_state().expect("state").expiration;
    set_faults(
        &ds,
        serde_json::json!({ "rules": [{ "service": "ssm", "operation": "RequestManagedInstanceRoleToken", "error_rate": 1.0 }] }),
    );
    let mut daemon = host.spawn_daemon();

    let report = wait_for(LIFETIME, || {
        let out = host.agent(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["credentials_overdue"].is_object().then_some(v)
    })
    .unwrap_or_else(|| panic!("status never showed an overdue refresh:\n{}", daemon.log()));
    assert!(
        SystemTime::now() < expiration,
        "reported only after expiry: {report:#}"
    );
    let o = &report["credentials_overdue"];
    assert!(
        o["remaining_secs"]
            .as_u64()
            .is_some_and(|r| r * 4 < LIFETIME.as_secs()),
        "{o:#}"
    );
    assert!(o["failing_since"].is_string(), "{o:#}");
    assert!(
        o["cause"]
            .as_str()
            .is_some_and(|c| c.contains("RequestManagedInstanceRoleToken")),
        "the cause names the failing call: {o:#}"
    );

    let status = host.agent(&["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout).to_string();
    let line = status_text
        .lines()
        .find(|l| l.starts_with("credentials:"))
        .unwrap_or_default();
    assert!(
        line.contains("refresh failing since") && line.contains("RequestManagedInstanceRoleToken"),
        "{status_text}"
    );
    assert!(!line.contains("EXPIRED"), "{status_text}");

    let doctor = host.agent(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("doctor --json ({e}): {}", text(&doctor)));
    let check = checks
        .as_array()
        .into_iter()
        .flatten()
        .chain(checks["checks"].as_array().into_iter().flatten())
        .find(|c| c["name"] == "credential refresh")
        .unwrap_or_else(|| panic!("no credential refresh check: {checks:#}"))
        .clone();
    assert_eq!(check["outcome"], "warn", "{check:#}");
    assert!(
        check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("refresh failing since")),
        "{check:#}"
    );

    // Logged by the rotation loop at its next failure, before expiry; once (the cause stays
    // the same through the retries), not per retry.
    let left = expiration
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    wait_for(left, || {
        daemon
            .log()
            .contains("less than a quarter of their")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no overdue warning in the log before expiry:\n{}",
            daemon.log()
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log();
    assert_eq!(
        log.matches("less than a quarter of their").count(),
        1,
        "{log}"
    );

    // Once the service answers again, the next retry refreshes and the warning goes.
    set_faults(&ds, serde_json::json!({ "rules": [] }));
    wait_for(Duration::from_secs(30), || {
        let out = host.agent(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get("credentials_overdue").is_none().then_some(())
    })
    .unwrap_or_else(|| panic!("the warning stayed after a refresh:\n{}", daemon.log()));
    assert!(daemon.stop().success());
}
