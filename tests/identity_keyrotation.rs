//! SSM key-pair rotation (`UpdateManagedInstancePublicKey`) interrupted at every step — before
//! the service hears of the new key, with the update call failing, after the service took it but
//! before the agent switched — always ends with a key on disk that the service accepts, also
//! across restarts of the agent. Plus the daemon doing a full rotation when the service asks.

mod identity_support;

use std::sync::Arc;
use std::time::Duration;

use hybrid_agent::identity::clock::{SkewedClock, SystemClock};
use hybrid_agent::identity::keys::InstanceKey;
use hybrid_agent::identity::ssm::SsmClient;
use hybrid_agent::identity::ssm_source::{PendingOutcome, RotationOutcome, SsmSource};
use identity_support::*;

/// A freshly joined SSM host and a way to "start the agent" on it (a new SsmSource: what the
/// daemon builds at start).
struct Node {
    ds: hybrid_devstack::Devstack,
    host: Host,
}

impl Node {
    fn new() -> Node {
        let ds = devstack(Duration::from_secs(3600));
        let host = Host::new(&ds);
        let out = host.join(&ds, Provider::Ssm, &[]);
        assert!(out.status.success(), "{}", text(&out));
        Node { ds, host }
    }

    fn client(&self) -> SsmClient {
        let http = hybrid_agent::aws::http::client(&Default::default()).expect("http");
        let url = reqwest::Url::parse(&self.ds.url).expect("url");
        SsmClient::new(
            http,
            url,
            REGION,
            Arc::new(SkewedClock::new(Arc::new(SystemClock))),
        )
        .expect("client")
    }

    /// "Starts the agent": loads the identity from disk.
    fn start(&self) -> SsmSource {
        SsmSource::load(self.client(), self.host.store(), None).expect("identity loads")
    }

    fn instance_id(&self) -> String {
        self.host
            .store()
            .load_registration()
            .expect("load")
            .expect("registered")
            .instance_id
    }

    fn fingerprint(&self) -> String {
        self.host
            .store()
            .load_fingerprint()
            .expect("load")
            .expect("fingerprint")
    }

    /// Does the service accept `key` for this instance?
    fn accepts(&self, key: &InstanceKey) -> bool {
        runtime()
            .block_on(self.client().request_role_token(
                &self.instance_id(),
                key,
                &self.fingerprint(),
            ))
            .is_ok()
    }

    fn disk_key(&self) -> InstanceKey {
        self.host.store().load_key().expect("key on disk")
    }

    /// The end state every scenario must reach: no pending key, the key on disk works, and a
    /// fresh start of the agent fetches credentials with it.
    fn assert_working_key(&self) {
        assert!(
            !self.host.store().pending_key_path().exists(),
            "a pending key was left behind"
        );
        assert!(
            self.accepts(&self.disk_key()),
            "the service rejects the key on disk"
        );
        let mut source = self.start();
        runtime()
            .block_on(source.fetch())
            .expect("a restarted agent fetches credentials");
    }

    fn fail_updates(&self, on: bool) {
        let rules = if on {
            serde_json::json!([{ "service": "ssm", "operation": "UpdateManagedInstancePublicKey", "error_rate": 1.0 }])
        } else {
            serde_json::json!([])
        };
        set_faults(&self.ds, serde_json::json!({ "rules": rules }));
    }
}

#[test]
fn crash_after_persisting_the_new_key_keeps_the_old_one() {
    let n = Node::new();
    let old = n.disk_key();
    let source = n.start();
    let new = source.begin_key_rotation().expect("persist pending key");
    drop(source); // crash: the service never heard of `new`
    assert!(n.host.store().pending_key_path().exists());

    let mut source = n.start();
    let (outcome, token) = runtime()
        .block_on(source.resolve_pending())
        .expect("resolve");
    assert_eq!(outcome, PendingOutcome::KeptOld);
    assert!(token.is_some(), "the probe's credentials are usable");
    assert_eq!(n.disk_key().public_key_b64(), old.public_key_b64());
    assert!(!n.accepts(&new));
    n.assert_working_key();
}

#[test]
fn failed_update_call_keeps_the_old_key_and_retries_later() {
    let n = Node::new();
    let old = n.disk_key();
    let mut source = n.start();
    n.fail_updates(true);
    let (outcome, _) = runtime()
        .block_on(source.rotate_key())
        .expect("rotation ends cleanly");
    assert_eq!(outcome, RotationOutcome::KeptOld);
    assert_eq!(n.disk_key().public_key_b64(), old.public_key_b64());
    n.assert_working_key();

    // Later, with the service healthy again, the rotation goes through.
    n.fail_updates(false);
    let (outcome, _) = runtime().block_on(source.rotate_key()).expect("rotation");
    assert_eq!(outcome, RotationOutcome::Rotated);
    assert_ne!(n.disk_key().public_key_b64(), old.public_key_b64());
    assert!(
        !n.accepts(&old),
        "the service must have dropped the old key"
    );
    n.assert_working_key();
}

#[test]
fn crash_after_the_service_took_the_new_key_adopts_it_on_restart() {
    let n = Node::new();
    let old = n.disk_key();
    let source = n.start();
    let new = source.begin_key_rotation().expect("persist pending key");
    runtime()
        .block_on(source.send_key_update(&new))
        .expect("service takes the new key");
    drop(source); // crash before the promotion: disk says old key + pending new key
    assert_eq!(n.disk_key().public_key_b64(), old.public_key_b64());
    assert!(!n.accepts(&old));

    let mut source = n.start();
    runtime()
        .block_on(source.fetch())
        .expect("the first refresh resolves the pending key");
    assert_eq!(n.disk_key().public_key_b64(), new.public_key_b64());
    n.assert_working_key();
}

#[test]
fn probes_without_an_answer_keep_both_keys_until_the_service_is_back() {
    let n = Node::new();
    let source = n.start();
    let new = source.begin_key_rotation().expect("persist pending key");
    runtime()
        .block_on(source.send_key_update(&new))
        .expect("service takes the new key");
    drop(source);

    // Restart during an outage: neither probe gets an answer, so neither key may be dropped.
    set_faults(&n.ds, serde_json::json!({ "rules": [], "outage_secs": 3 }));
    let mut source = n.start();
    assert!(runtime().block_on(source.fetch()).is_err());
    assert!(
        n.host.store().pending_key_path().exists(),
        "the pending key must survive an unanswered probe"
    );
    assert!(n.host.store().key_path().exists());
    std::thread::sleep(Duration::from_secs(4));
    runtime()
        .block_on(source.fetch())
        .expect("resolves once the service answers");
    assert_eq!(n.disk_key().public_key_b64(), new.public_key_b64());
    n.assert_working_key();
}

/// The daemon rotates when the service asks (UpdateKeyPair), a failed update is retried, and a
/// crash of the daemon at any point keeps a working key.
#[test]
fn daemon_rotates_on_request_and_survives_restarts() {
    let ds = devstack(Duration::from_secs(6));
    let host = Host::new(&ds);
    assert!(host.join(&ds, Provider::Ssm, &[]).status.success());
    let store = host.store();
    let instance = store
        .load_registration()
        .expect("load")
        .expect("reg")
        .instance_id;
    let original = store.load_key().expect("key").public_key_b64().to_string();

    // The update call fails every time: the daemon keeps the old key and keeps refreshing.
    set_faults(
        &ds,
        serde_json::json!({ "rules": [{ "service": "ssm", "operation": "UpdateManagedInstancePublicKey", "error_rate": 1.0 }] }),
    );
    let _: serde_json::Value = control(
        &ds,
        "POST",
        &format!("ssm/request-key-rotation?instance={instance}"),
        None,
    )
    .expect("request rotation");
    let mut daemon = host.spawn_daemon();
    let failed = wait_for(Duration::from_secs(30), || {
        (calls(&ds, "ssm/UpdateManagedInstancePublicKey") >= 2).then_some(())
    });
    assert!(
        failed.is_some(),
        "the daemon never tried the update:\n{}",
        daemon.log()
    );
    assert_eq!(store.load_key().expect("key").public_key_b64(), original);
    daemon.kill(); // crash mid-way
    assert!(
        store.key_path().exists(),
        "a crash must never remove the key"
    );

    // Restart with a healthy service: the rotation completes and credentials keep coming.
    set_faults(&ds, serde_json::json!({ "rules": [] }));
    let mut daemon = host.spawn_daemon();
    let rotated = wait_for(Duration::from_secs(30), || {
        let k = store.load_key().ok()?;
        (k.public_key_b64() != original && !store.pending_key_path().exists()).then_some(k)
    });
    let new_key =
        rotated.unwrap_or_else(|| panic!("the daemon never rotated the key:\n{}", daemon.log()));
    let seen = host.credentials().expect("creds").access_key_id;
    let refreshed = wait_for(Duration::from_secs(20), || {
        host.credentials().filter(|c| c.access_key_id != seen)
    });
    assert!(
        refreshed.is_some(),
        "no refresh after the rotation:\n{}",
        daemon.log()
    );
    daemon.kill();

    // And a restart after the rotation keeps the new key.
    let mut daemon = host.spawn_daemon();
    let seen = host.credentials().expect("creds").access_key_id;
    let refreshed = wait_for(Duration::from_secs(20), || {
        host.credentials().filter(|c| c.access_key_id != seen)
    });
    assert!(
        refreshed.is_some(),
        "no refresh after restart:\n{}",
        daemon.log()
    );
    assert_eq!(
        store.load_key().expect("key").public_key_b64(),
        new_key.public_key_b64()
    );
    host.remember_credentials();
    assert!(daemon.stop().success());
    host.assert_no_secret_in_output(&[&daemon]);
}

/// With a maximum key age (agent config `credentials.max_key_age`) the key is rotated on a
/// refresh once it is older, without the service asking.
#[test]
fn key_older_than_the_maximum_age_is_rotated() {
    let n = Node::new();
    let old = n.disk_key();
    let mut source = SsmSource::load(n.client(), n.host.store(), Some(Duration::from_secs(1)))
        .expect("identity loads");
    std::thread::sleep(Duration::from_millis(1100));
    runtime().block_on(source.fetch()).expect("refresh");
    assert_ne!(n.disk_key().public_key_b64(), old.public_key_b64());
    assert!(!n.accepts(&old));
    let reg = n
        .host
        .store()
        .load_registration()
        .expect("load")
        .expect("reg");
    assert!(
        reg.key_created_at.elapsed().expect("clock") < Duration::from_secs(5),
        "key creation time is updated"
    );
    n.assert_working_key();
}
