//! A node refresh (`[lifecycle] max_node_age`), what EKS Auto Mode does by replacing a node
//! after 21 days, on a node whose record says it joined 22 days ago (the test's clock: the
//! node record's `joined_at`, the one place the agent reads the node's age from):
//! - under a disruption-lock slot, the node is drained (the pod's budget holds), its SSM key
//!   pair is rotated by the daemon's identity subsystem (the devstack's
//!   UpdateManagedInstancePublicKey), containerd and kubelet start again from clean state —
//!   Debian's containerd, whose image store loses the image no container uses and keeps the
//!   pod sandbox image; a stale pod directory is removed, one with a tmpfs mounted beneath it
//!   is kept and named — and the node is uncordoned;
//! - the daemon is killed with SIGKILL in the middle of the drain; the next one resumes the
//!   journaled refresh and finishes it, with one cordon and one uncordon in the cluster's
//!   history;
//! - once refreshed, the node's age counts from the refresh: no second one.
//!
//! The test runs itself again in a private mount namespace (`unshare`), so the tmpfs it mounts
//! in a pod directory never appears on the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use hybrid_agent::cri;
use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;
use serde_json::Value;

/// Set in the re-run inside the namespace.
const INNER: &str = "HYBRID_AGENT_TEST_IN_NAMESPACES";
const TEST: &str =
    "an_old_node_is_drained_rekeyed_cleaned_and_uncordoned_and_a_killed_refresh_resumes";
const CALL: Duration = Duration::from_secs(60);
const STALE_POD: &str = "0b9d3c55-0000-4000-8000-00000000a001";
const MOUNTED_POD: &str = "0b9d3c55-0000-4000-8000-00000000a002";

#[test]
fn an_old_node_is_drained_rekeyed_cleaned_and_uncordoned_and_a_killed_refresh_resumes() {
    if std::env::var_os(INNER).is_none() {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(INNER, "1")
            .output()
            .expect("run unshare (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}\n{stderr}");
        assert!(out.status.success(), "the test inside the namespace failed");
        assert!(stdout.contains("1 passed"), "{stdout}");
        return;
    }
    in_namespace();
}

fn image_tags(socket: &std::path::Path) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = cri::Client::connect(socket).await.unwrap();
        let mut tags: Vec<String> = client
            .list_images(CALL)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        tags.sort();
        tags
    })
}

fn in_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    // Evicted pods take 3 s to terminate: long enough to kill the daemon in the middle.
    let ds = kube_devstack(&mirror, 3000, 300);
    standin_release(&mirror, VERSION);
    let node = Node::new(&ds, &create_activation(&ds));
    standin_authenticator(&mirror, VERSION, &node.root);
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let paths = HostPaths::new(&node.root);
    let mut record = NodeRecord::load(&paths).unwrap().unwrap();
    let name = record.node_name.clone();
    apply_lifecycle_rbac(&ds);
    replicaset_pod(&ds, "web", "web-1", &name);

    // What ages on a node: an image nothing uses, pulled with ECR credentials into the node's
    // containerd beside the pause image join pulled; a pod directory left behind; and one whose
    // volume is still mounted.
    let registry = control_json(&control(&ds, "GET", "/_devstack/ecr/registry"));
    let spare = format!(
        "{EKS_ECR_REGISTRY}/{}",
        registry["spare_image"].as_str().unwrap()
    );
    let pause = format!(
        "{EKS_ECR_REGISTRY}/{}",
        registry["pause_image"].as_str().unwrap()
    );
    let password = control(&ds, "GET", "/_devstack/ecr/password");
    let password = password
        .rsplit("\r\n\r\n")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let socket = node.path("/run/containerd/containerd.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = cri::Client::connect(&socket).await.unwrap();
        let auth = cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}")),
            ..Default::default()
        };
        client.pull_image(&spare, Some(auth), CALL).await.unwrap();
    });
    drop(rt);
    let mut before = vec![pause.clone(), spare.clone()];
    before.sort();
    assert_eq!(image_tags(&socket), before);
    let pods = node.path("/var/lib/kubelet/pods");
    let stale = pods
        .join(STALE_POD)
        .join("volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("old"), b"left behind").unwrap();
    let mounted = pods
        .join(MOUNTED_POD)
        .join("volumes/kubernetes.io~empty-dir/scratch");
    std::fs::create_dir_all(&mounted).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&mounted)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(mounted.join("data"), b"a volume's data").unwrap();

    // The node joined 22 days ago; it is refreshed at 21.
    let joined = time::OffsetDateTime::now_utc() - time::Duration::days(22);
    record.joined_at = joined
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    record.save(&paths).unwrap();
    std::fs::write(
        node.path("/etc/hybrid-agent/config.toml"),
        "[supervisor]\nbackend = \"process\"\n\n[lifecycle]\nmax_node_age = \"21d\"\ncheck_interval = \"1s\"\ndrain_timeout = \"60s\"\nupgrade_wait_timeout = \"30s\"\n",
    )
    .unwrap();
    let status = || -> Value {
        serde_json::from_str(&node.run(&["status", "--json"]).stdout).unwrap_or_default()
    };
    let log = dir.path().join("daemon.log");
    let key_before = {
        let daemon = node.spawn_daemon(&log);
        wait_until("the daemon's key id", Duration::from_secs(30), || {
            status()["identity"]["key_id"].is_string()
        });
        let key = status()["identity"]["key_id"].as_str().unwrap().to_owned();
        // Killed in the middle of the drain (the pod takes 3 s to terminate).
        wait_until("the eviction", Duration::from_secs(60), || {
            kube_history(&ds)
                .iter()
                .any(|e| e["action"] == "evict" && e["object"] == "pods/app/web-1")
        });
        drop(daemon);
        key
    };
    let journal: Value = serde_json::from_slice(
        &std::fs::read(node.path("/var/lib/hybrid-agent/lifecycle.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(journal["action"], "refresh", "{journal}");
    assert_eq!(journal["phase"], "drain", "{journal}");
    assert_eq!(journal["key_before"], key_before.as_str(), "{journal}");

    // The next daemon resumes the journaled refresh and finishes it.
    let daemon = node.spawn_daemon(&log);
    wait_until("the refresh done", Duration::from_secs(120), || {
        status()["lifecycle"]["refreshes"] == 1 || status()["lifecycle"]["refreshes_failed"] == 1
    });
    let s = status();
    let l = &s["lifecycle"];
    let detail = l["last_refresh"]["detail"].as_str().unwrap().to_owned();
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    println!("last refresh: {detail}");
    assert_eq!(l["last_refresh"]["ok"], true, "{detail}\n{daemon_log}");
    let key_after = s["identity"]["key_id"].as_str().unwrap().to_owned();
    assert_ne!(key_after, key_before, "a new key pair");
    assert!(
        detail.contains("the node is 22.0 days old, max_node_age 21d")
            && detail.contains(&format!("key pair rotated ({key_before} → {key_after})"))
            && detail.contains("1 images removed")
            && detail.contains("1 kept;")
            && detail.contains("1 stale pod directories removed")
            && detail.contains(&format!("1 kept with mounts beneath ({MOUNTED_POD}:")),
        "{detail}"
    );

    // The image store lost what nothing used and kept the pause image; containerd answers
    // again after its clean start.
    assert_eq!(image_tags(&socket), vec![pause.clone()]);
    assert!(!pods.join(STALE_POD).exists());
    assert_eq!(
        std::fs::read(mounted.join("data")).unwrap(),
        b"a volume's data",
        "a mounted volume is never touched"
    );
    // The credentials still refresh, with the new key.
    let refreshes = s["identity"]["refreshes"].as_u64().unwrap();
    assert!(refreshes >= 1, "{s}");

    // One cordon and one uncordon, inside a lock slot, across both daemons.
    let events = kube_history(&ds);
    let nodes = format!("nodes/{name}");
    let cordon = seq_of(&events, "cordon", &nodes);
    let uncordon = seq_of(&events, "uncordon", &nodes);
    let evict = seq_of(&events, "evict", "pods/app/web-1");
    assert_eq!(
        (cordon.len(), uncordon.len(), evict.len()),
        (1, 1, 1),
        "{events:#?}"
    );
    assert!(
        cordon[0] < evict[0] && evict[0] < uncordon[0],
        "{events:#?}"
    );
    let lock = "configmaps/hybrid-agent/hybrid-agent-disruption-lock";
    let updates = seq_of(&events, "update", lock);
    assert!(
        updates[0] < cordon[0] && *updates.last().unwrap() > uncordon[0],
        "{events:#?}"
    );
    assert!(!node.path("/var/lib/hybrid-agent/lifecycle.json").exists());
    assert!(!node.path("/var/lib/hybrid-agent/drain.json").exists());

    // The age now counts from the refresh: no second one.
    wait_until("the age from the refresh", Duration::from_secs(30), || {
        status()["lifecycle"]["state"].as_str().is_some_and(|st| {
            st.starts_with("the node is 0.0 days old; refreshed at max_node_age 21d")
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status()["lifecycle"]["refreshes"], 1);
    let shown = node.run(&["status"]);
    assert!(
        shown.stdout.contains("last refresh: done: refreshed (")
            && shown.stdout.contains("refreshes: 1 done, 0 failed"),
        "{shown:?}"
    );
    drop(daemon);
    let _ = Command::new("umount").arg(&mounted).status();
}
