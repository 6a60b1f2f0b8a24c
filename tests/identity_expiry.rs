//! Hostile expirations from the credential services (issue 11): `hybrid-agent run` against a
//! devstack told to answer with a chosen `TokenExpirationDate` (SSM) or `expiration` (IAM Roles
//! Anywhere). An absurd value must neither crash the daemon nor be used: it is refused with an
//! error that names the operation, the endpoint and the value, and retried with backoff; an
//! already-expired one must not make the daemon call the service in a tight loop.

mod identity_support;

use std::time::{Duration, SystemTime};

use identity_support::*;

/// The operation each provider refreshes with, as the devstack counts it.
fn operation(provider: Provider) -> (&'static str, &'static str) {
    match provider {
        Provider::Ssm => ("ssm", "RequestManagedInstanceRoleToken"),
        Provider::IamRa { .. } => ("rolesanywhere", "CreateSession"),
    }
}

/// The control op that sets the provider's answered expiration.
fn knob(provider: Provider) -> &'static str {
    match provider {
        Provider::Ssm => "ssm/token-expiration",
        Provider::IamRa { .. } => "rolesanywhere/expiration",
    }
}

/// Joins, then makes the joined credentials look expired so the daemon refreshes at once, then
/// tells the devstack to answer with `expiration`.
fn joined_host_with_expiration(
    ds: &hybrid_devstack::Devstack,
    provider: Provider,
    expiration: serde_json::Value,
) -> Host {
    let host = Host::new(ds);
    let out = host.join(ds, provider, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut state = host.credentials_state().expect("state");
    state.expiration = SystemTime::UNIX_EPOCH;
    host.store().save_credentials_state(&state).expect("state");
    let _: serde_json::Value =
        control(ds, "PUT", knob(provider), Some(expiration)).expect("set expiration");
    host
}

fn identity_status(host: &Host) -> Option<serde_json::Value> {
    let out = host.agent(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["identity"].clone())
}

/// `1e12` epoch seconds (year 33658) used to panic while formatting the expiry; far-future and
/// pre-epoch values must be refused the same way. The daemon keeps running, says why, and
/// refreshes normally once the service answers sensibly again.
fn absurd_expiration_is_refused(provider: Provider, value: serde_json::Value, shown: &str) {
    let ds = devstack(Duration::from_secs(3600));
    let host = joined_host_with_expiration(&ds, provider, value.clone());
    let (_, op) = operation(provider);
    let mut daemon = host.spawn_daemon();
    let status = wait_for(Duration::from_secs(20), || {
        identity_status(&host).filter(|i| i["last_error"]["message"].is_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "{provider:?} {value}: status never showed a refresh error:\n{}",
            daemon.log()
        )
    });
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    for want in [op, ds.url.as_str(), shown] {
        assert!(
            message.contains(want),
            "{provider:?} {value}: the error should name {want:?}: {message}"
        );
    }
    assert_eq!(status["state"], "retrying", "{status}");
    assert!(
        daemon
            .child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the daemon exited:\n{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());

    // The service behaves again: the retry (with backoff) picks up good credentials.
    let _: serde_json::Value = control(&ds, "DELETE", knob(provider), None).expect("clear");
    let ok = wait_for(Duration::from_secs(30), || {
        identity_status(&host).filter(|i| i["state"] == "ok")
    });
    assert!(
        ok.is_some(),
        "{provider:?}: never recovered:\n{}",
        daemon.log()
    );
    let exp = host.credentials_state().expect("state").expiration;
    assert!(exp > SystemTime::now(), "recovered credentials are expired");
    assert!(daemon.stop().success(), "{}", daemon.log());
    host.remember_credentials();
    host.assert_no_secret_in_output(&[&daemon]);
}

#[test]
fn absurd_expirations_are_refused_naming_operation_endpoint_and_value() {
    let iam_ra = Provider::IamRa {
        rsa: false,
        intermediate: false,
    };
    std::thread::scope(|s| {
        let runs = [
            s.spawn(|| {
                absurd_expiration_is_refused(
                    Provider::Ssm,
                    serde_json::json!(1e12),
                    "1000000000000",
                )
            }),
            s.spawn(|| absurd_expiration_is_refused(Provider::Ssm, serde_json::json!(-5), "-5")),
            s.spawn(move || {
                absurd_expiration_is_refused(iam_ra, serde_json::json!("1e12"), "1e12")
            }),
            s.spawn(move || {
                absurd_expiration_is_refused(
                    iam_ra,
                    serde_json::json!("9999-12-31T23:59:59Z"),
                    "9999-12-31T23:59:59Z",
                )
            }),
        ];
        for r in runs {
            if let Err(p) = r.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
}

/// `3600` read as epoch seconds is 1970: credentials that expired before they were issued.
/// Refreshing "when half the remaining life is over" meant at once, again and again. Now the
/// value is refused and retried with backoff, and no input makes the daemon ask more often than
/// once per second.
#[test]
fn already_expired_token_does_not_make_the_daemon_spin() {
    const WINDOW: Duration = Duration::from_secs(15);
    let ds = devstack(Duration::from_secs(3600));
    let host = joined_host_with_expiration(&ds, Provider::Ssm, serde_json::json!(3600));
    let key = "ssm/RequestManagedInstanceRoleToken";
    let before = calls(&ds, key);
    let mut daemon = host.spawn_daemon();
    std::thread::sleep(WINDOW);
    let n = calls(&ds, key) - before;
    let status = identity_status(&host).unwrap_or_default();
    eprintln!("FIGURES: {n} {key} calls in {WINDOW:?} with an already-expired token");
    assert!(
        n >= 1 && n <= WINDOW.as_secs(),
        "{n} calls in {WINDOW:?}: the daemon spins on an expired token\n{status}\n{}",
        daemon
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("TokenExpirationDate") && message.contains("3600"),
        "{status}"
    );
    assert!(daemon.stop().success(), "{}", daemon.log());
}
