//! `hybrid-agent run` keeping credentials fresh, for both providers with the same tests: short
//! token lifetimes, a reader hammering the credentials file, injected errors, an outage, and a
//! host clock ten minutes ahead of the service's.

mod identity_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hybrid_agent::identity::credfile;
use identity_support::*;

const SSM: Provider = Provider::Ssm;
const IAM_RA: Provider = Provider::IamRa {
    rsa: false,
    intermediate: true,
};

/// Runs the same scenario for both providers at once, each with its own devstack and host: the
/// long scenarios are mostly waiting, so side by side they cost the suite one duration, not two.
/// A failure names the provider.
fn both_providers(scenario: fn(Provider)) {
    std::thread::scope(|s| {
        let runs: Vec<_> = [SSM, IAM_RA]
            .into_iter()
            .map(|p| (p, s.spawn(move || scenario(p))))
            .collect();
        for (p, run) in runs {
            if let Err(panic) = run.join() {
                eprintln!("scenario failed for {p:?}");
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// Token lifetime 20 s; at least 5 rotations while a reader parses the file in a tight loop and
/// checks every read is a complete profile whose key works as a set.
fn rotations_are_never_torn(provider: Provider) {
    let ds = devstack(Duration::from_secs(20));
    let host = Host::new(&ds);
    let out = host.join(&ds, provider, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let file = host.path(CREDENTIALS);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, file) = (stop.clone(), reads.clone(), file.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&file).expect("the file always exists");
                let v = credfile::parse_profile(&text, "default")
                    .unwrap_or_else(|| panic!("torn or partial file:\n{text}"));
                let token = v
                    .session_token
                    .as_ref()
                    .map(|t| t.expose().to_string())
                    .unwrap_or_else(|| panic!("no token:\n{text}"));
                assert!(text.ends_with('\n'), "truncated file:\n{text}");
                // Key id, secret and token come from one response: a mix would pair a new id with
                // an old secret or token.
                let pair = (v.secret_access_key.expose().to_string(), token);
                if let Some(prev) = seen.insert(v.access_key_id.clone(), pair.clone()) {
                    assert_eq!(
                        prev, pair,
                        "access key {} seen with two different secrets",
                        v.access_key_id
                    );
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            seen.len()
        })
    };

    let mut daemon = host.spawn_daemon();
    let start = Instant::now();
    let mut keys = std::collections::BTreeSet::new();
    let mut sts_checks = 0;
    while keys.len() < 6 && start.elapsed() < Duration::from_secs(90) {
        if let Some(v) = host.credentials()
            && keys.insert(v.access_key_id.clone())
        {
            host.remember_credentials();
            sts_with_file(&ds, &file, "default")
                .unwrap_or_else(|e| panic!("fresh credentials rejected: {e}"));
            sts_checks += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let distinct_seen_by_reader = reader.join().expect("reader never saw a torn file");
    let rotations = keys.len() - 1;
    eprintln!(
        "FIGURES {provider:?}: {rotations} rotations in {:.1} s, reader parsed the file {} times, saw {distinct_seen_by_reader} key sets, {sts_checks} STS checks",
        start.elapsed().as_secs_f64(),
        reads.load(Ordering::Relaxed)
    );
    assert!(
        rotations >= 5,
        "only {rotations} rotations in {:?}:\n{}",
        start.elapsed(),
        daemon.log()
    );
    let status = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status:?}:\n{}",
        daemon.log()
    );
    host.assert_no_secret_in_output(&[&daemon]);
}

#[test]
fn both_providers_rotate_without_torn_reads() {
    both_providers(rotations_are_never_torn);
}

/// Every refresh fails twice before it succeeds (for 25 s), then the endpoint disappears for 30 s, longer than the credentials
/// live (20 s) and long enough for the backoff to reach its cap. While it answers, the
/// credentials in the file never expire; after it comes back, they are refreshed within the
/// backoff cap (10 s here, configured in the agent config). The backoff's arithmetic itself is
/// held by `identity::rotation`'s unit tests; this is the end-to-end smoke per provider.
fn survives_errors_and_an_outage(provider: Provider) {
    const CAP: Duration = Duration::from_secs(10);
    const OUTAGE: Duration = Duration::from_secs(30);
    let op = match provider {
        Provider::Ssm => ("ssm", "RequestManagedInstanceRoleToken"),
        Provider::IamRa { .. } => ("rolesanywhere", "CreateSession"),
    };
    let ds = devstack(Duration::from_secs(20));
    let host = Host::new(&ds);
    host.agent_config("[credentials]\nrefresh_backoff_cap = \"10s\"\n");
    let out = host.join(&ds, provider, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut daemon = host.spawn_daemon();

    // Watches the file: with the endpoint reachable, the credentials in it must be valid.
    let reachable = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (reachable, stop) = (reachable.clone(), stop.clone());
        let store = host.store();
        std::thread::spawn(move || {
            let mut violations = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(s)) = store.load_credentials_state()
                    && reachable.load(Ordering::Relaxed)
                    && s.expiration < SystemTime::now()
                {
                    violations.push(format!(
                        "{} expired while the endpoint was reachable",
                        s.access_key_id
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            violations
        })
    };

    // Every refresh meets errors: two calls fail, the third answers, again and again for 25 s.
    // (A random 50 % error rate once failed eight calls in a row, 26 s, longer than the
    // credentials live: no retry schedule survives that, and the test measured the dice.)
    let key = format!("{}/{}", op.0, op.1);
    let calls_before = calls(&ds, &key);
    let errors_until = Instant::now() + Duration::from_secs(25);
    let mut armed_at = None;
    while Instant::now() < errors_until {
        if armed_at.is_none_or(|at| calls(&ds, &key) >= at + 3) {
            let _: serde_json::Value = control(
                &ds,
                "POST",
                &format!("fail-next?service={}&operation={}&count=2", op.0, op.1),
                None,
            )
            .expect("fail-next");
            armed_at = Some(calls(&ds, &key));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ds.state.faults_mut().fail_next.clear();
    let calls_during_errors = calls(&ds, &key) - calls_before;

    // Outage: nothing answers. Credentials may expire now; that is not the agent's fault.
    reachable.store(false, Ordering::Relaxed);
    set_faults(
        &ds,
        serde_json::json!({ "rules": [], "outage_secs": OUTAGE.as_secs() }),
    );
    std::thread::sleep(OUTAGE);
    let during = host.credentials_state().expect("state");
    assert!(
        during.expiration < SystemTime::now(),
        "the credentials outlived a {OUTAGE:?} outage with a 20 s lifetime: the outage did not stop refreshes"
    );
    let last_before = during.last_refresh;
    let recovered_at = Instant::now();
    // Recovery: the next successful refresh comes within the cap (plus one request's time).
    let refreshed = wait_for(CAP + Duration::from_secs(10), || {
        host.credentials_state()
            .filter(|s| s.last_refresh > last_before)
            .map(|_| recovered_at.elapsed())
    });
    reachable.store(true, Ordering::Relaxed);
    let latency = refreshed.unwrap_or_else(|| {
        panic!(
            "no refresh within {:?} after the outage:\n{}",
            CAP + Duration::from_secs(10),
            daemon.log()
        )
    });
    eprintln!(
        "FIGURES {provider:?}: {calls_during_errors} {} calls in 25 s, two of every three failing; refreshed {:.1} s after a {} s outage ended (cap {} s)",
        op.1,
        latency.as_secs_f64(),
        OUTAGE.as_secs(),
        CAP.as_secs()
    );
    assert!(
        latency <= CAP + Duration::from_secs(2),
        "refresh {latency:?} after recovery exceeds the {CAP:?} cap"
    );
    // A little more time reachable, then the verdict.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let violations = watcher.join().expect("watcher");
    assert!(violations.is_empty(), "{violations:?}\n{}", daemon.log());
    assert!(sts_with_file(&ds, &host.path(CREDENTIALS), "default").is_ok());
    host.remember_credentials();
    assert!(daemon.stop().success());
    host.assert_no_secret_in_output(&[&daemon]);
}

#[test]
fn both_providers_survive_errors_and_an_outage() {
    both_providers(survives_errors_and_an_outage);
}

/// The host clock is 10 minutes ahead of the service's (devstack clock offset -600 s). The
/// agent corrects from the `Date` header: at most one rejected signature per process, then
/// rotations succeed.
fn skewed_host_clock_costs_at_most_one_rejection(provider: Provider) {
    let ds = devstack(Duration::from_secs(20));
    let _: serde_json::Value =
        control(&ds, "POST", "clock?offset_secs=-600", None).expect("clock offset");
    let host = Host::new(&ds);
    let out = host.join(&ds, provider, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let first = host.credentials().expect("creds").access_key_id;
    let mut daemon = host.spawn_daemon();
    let mut keys = std::collections::BTreeSet::from([first]);
    let got = wait_for(Duration::from_secs(60), || {
        if let Some(v) = host.credentials() {
            keys.insert(v.access_key_id);
        }
        (keys.len() >= 4).then_some(())
    });
    let log = daemon.log();
    assert!(
        got.is_some(),
        "rotation stalled with a skewed clock:\n{log}"
    );
    let rejections = log
        .matches("re-signing once with the corrected clock")
        .count();
    eprintln!(
        "FIGURES {provider:?}: host clock +600 s: {} rotations, {rejections} rejected signature(s) in the daemon",
        keys.len() - 1
    );
    assert!(rejections <= 1, "{rejections} rejections:\n{log}");
    assert!(
        log.contains("clock differs from the service"),
        "the skew should be logged once:\n{log}"
    );
    host.remember_credentials();
    assert!(daemon.stop().success());
    host.assert_no_secret_in_output(&[&daemon]);
}

#[test]
fn both_providers_handle_a_skewed_host_clock() {
    both_providers(skewed_host_clock_costs_at_most_one_rejection);
}

/// `status` shows the rotation and works with the daemon down.
#[test]
fn status_reports_rotation_and_a_stopped_daemon() {
    let ds = devstack(Duration::from_secs(20));
    let host = Host::new(&ds);
    assert!(host.join(&ds, SSM, &[]).status.success());
    let out = host.agent(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["daemon"]["running"], false, "{v}");
    assert_eq!(v["identity"]["provider"], "ssm", "{v}");
    let mut daemon = host.spawn_daemon();
    let running = wait_for(Duration::from_secs(30), || {
        let out = host.agent(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["daemon"]["running"] == true && v["identity"]["refreshes"].as_u64()? >= 1).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "status never showed a running daemon with a refresh:\n{}",
            daemon.log()
        )
    });
    let id = running["identity"]["identity"]
        .as_str()
        .expect("instance id");
    assert!(id.starts_with("mi-"), "{running}");
    assert!(running["identity"]["next_refresh"].is_string(), "{running}");
    let text_out = text(&host.agent(&["status"]));
    assert!(
        text_out.contains(id) && text_out.contains("running"),
        "{text_out}"
    );
    assert!(daemon.stop().success());
    let text_out = text(&host.agent(&["status"]));
    assert!(text_out.contains("not running"), "{text_out}");
    host.remember_credentials();
    host.assert_no_secret_in_output(&[&daemon]);
}

/// The agent's own AWS SDK clients get rotated credentials in-process: an STS client built on
/// [`hybrid_agent::aws::sdk_config`] keeps working after the credentials it started with expired.
#[test]
fn sdk_clients_follow_rotation_in_process() {
    use hybrid_agent::aws::credentials::RotatingCredentials;
    use hybrid_agent::config::{AgentConfig, Endpoints, Env};
    use hybrid_agent::paths::HostPaths;

    let ds = devstack(Duration::from_secs(8));
    let host = Host::new(&ds);
    assert!(host.join(&ds, SSM, &[]).status.success());
    let paths = HostPaths::new(host.root.path());
    let mut agent = AgentConfig::defaults(&paths);
    // One machine, not a fleet: no start-up spread before the first refresh.
    agent.daemon.startup_jitter = Duration::ZERO;
    let env: Env = [("AWS_ENDPOINT_URL", ds.url.as_str())]
        .into_iter()
        .collect();
    agent.endpoints = Endpoints::resolve(&Default::default(), &env, false).expect("endpoints");
    let identity = hybrid_agent::identity::setup::IdentityEnv::new(&paths, &agent);
    let rotator = identity.rotator().expect("rotator");
    let provider = RotatingCredentials::new(rotator.credentials()).shared();
    let sdk =
        hybrid_agent::aws::sdk_config(REGION, provider, hybrid_agent::aws::Retries::Caller, None);
    let sts = hybrid_agent::aws::sts_client(&sdk, Some(&ds.url));
    let rt = runtime();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(rotator.run(async {
        let _ = stop_rx.await;
    }));
    let mut callers = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    let start = Instant::now();
    // 8 s credentials, checked for 20 s: the first set has long expired by the end.
    while start.elapsed() < Duration::from_secs(20) {
        let out = rt
            .block_on(sts.get_caller_identity().send())
            .unwrap_or_else(|e| {
                panic!(
                    "in-process credentials rejected: {}",
                    aws_sdk_sts::error::DisplayErrorContext(&e)
                )
            });
        callers.insert(out.arn().unwrap_or_default().to_string());
        if let Some(v) = host.credentials() {
            keys.insert(v.access_key_id);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = stop_tx.send(());
    rt.block_on(task)
        .expect("join")
        .expect("rotation ends cleanly");
    assert_eq!(callers.len(), 1, "{callers:?}");
    assert!(
        keys.len() >= 3,
        "expected rotations during the test, saw {keys:?}"
    );
}

/// A restart with credentials that are still good does not call the service at once.
#[test]
fn restart_with_valid_credentials_refreshes_on_schedule() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    assert!(host.join(&ds, SSM, &[]).status.success());
    let before = host.credentials().expect("creds").access_key_id;
    let calls_before = calls(&ds, "ssm/RequestManagedInstanceRoleToken");
    let mut daemon = host.spawn_daemon();
    let status = wait_for(Duration::from_secs(20), || {
        let out = host.agent(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["daemon"]["running"] == true && v["identity"]["next_refresh"].is_string()).then_some(v)
    })
    .unwrap_or_else(|| panic!("daemon never reported:\n{}", daemon.log()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        calls(&ds, "ssm/RequestManagedInstanceRoleToken"),
        calls_before,
        "{status}"
    );
    assert_eq!(host.credentials().expect("creds").access_key_id, before);
    assert!(daemon.stop().success());
    host.remember_credentials();
    host.assert_no_secret_in_output(&[&daemon]);
}

/// `MachineFingerprintDoesNotMatch` and `InvalidInstanceId` stop the rotation (no retry loop)
/// and show up in status and the log with the command that re-registers.
#[test]
fn lost_identity_stops_rotation_and_says_how_to_reregister() {
    let ds = devstack(Duration::from_secs(3600));

    // A changed fingerprint (what a hardware-derived one does after an upgrade).
    let host = Host::new(&ds);
    assert!(host.join(&ds, SSM, &[]).status.success());
    host.store()
        .save_fingerprint(&uuid::Uuid::new_v4().to_string())
        .expect("fingerprint");
    // An instance deregistered by an operator.
    let gone = Host::new(&ds);
    assert!(gone.join(&ds, SSM, &[]).status.success());
    let instance = gone
        .store()
        .load_registration()
        .expect("load")
        .expect("reg")
        .instance_id;
    runtime().block_on(async {
        let ssm = aws_sdk_ssm::Client::new(&admin_sdk(&ds));
        ssm.deregister_managed_instance()
            .instance_id(&instance)
            .send()
            .await
            .expect("deregister");
    });

    for (h, code) in [
        (&host, "MachineFingerprintDoesNotMatch"),
        (&gone, "InvalidInstanceId"),
    ] {
        // Expire the joined credentials in the agent's view so the daemon refreshes at once.
        let mut state = h.credentials_state().expect("state");
        state.expiration = SystemTime::UNIX_EPOCH;
        h.store().save_credentials_state(&state).expect("state");
        let calls_before = calls(&ds, "ssm/RequestManagedInstanceRoleToken");
        let mut daemon = h.spawn_daemon();
        let failed = wait_for(Duration::from_secs(20), || {
            let out = h.agent(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["identity"]["state"] == "failed").then_some(v)
        })
        .unwrap_or_else(|| panic!("{code}: status never showed the failure:\n{}", daemon.log()));
        let error = failed["identity"]["last_error"].to_string();
        assert!(error.contains(code), "{failed}");
        assert!(
            failed["identity"]["last_error"]["action"]
                .as_str()
                .unwrap_or("")
                .contains("join --reregister"),
            "{failed}"
        );
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            calls(&ds, "ssm/RequestManagedInstanceRoleToken") - calls_before,
            1,
            "{code} must not be retried"
        );
        let text_status = text(&h.agent(&["status"]));
        assert!(
            text_status.contains(code) && text_status.contains("--reregister"),
            "{text_status}"
        );
        assert!(daemon.log().contains("--reregister"), "{}", daemon.log());
        assert!(
            daemon.stop().success(),
            "the daemon keeps running (other subsystems) and stops cleanly"
        );
        h.assert_no_secret_in_output(&[&daemon]);
    }
}
