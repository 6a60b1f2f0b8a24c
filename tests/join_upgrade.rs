//! `upgrade` on a joined sandbox: to a release whose kubelet (the stand-in, told to stay
//! unhealthy) never answers /healthz, the upgrade rolls itself back — old binary, old
//! configuration, old kubelet healthy again — and says so; to a healthy release it switches and
//! records the new version; `leave` afterwards still restores the pre-join tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use hybrid_agent::install::checksum::Sha256;
use hybrid_agent::install::tracker::Tracker;
use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;

/// A release whose kubelet stays unhealthy.
const BAD_VERSION: &str = "1.32.0";
/// A release whose kubelet is healthy.
const GOOD_VERSION: &str = "1.33.1";

#[test]
fn upgrade_to_an_unhealthy_kubelet_rolls_back_by_itself_and_a_healthy_one_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    unhealthy_release(&mirror, BAD_VERSION);
    standin_release(&mirror, GOOD_VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    let pristine = node.fingerprint(&[]);
    let run = node.join(&ds, &["--kubernetes-version", "1.31"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let paths = HostPaths::new(&node.root);
    let kubelet = node.path("/usr/bin/kubelet");
    let old_sum = Sha256::of_file(&kubelet).unwrap();
    let skip = [
        "var/lib/hybrid-agent/supervise",
        "var/lib/containerd",
        "run/containerd",
    ];
    let joined = node.fingerprint(&skip);
    let mirror_url = format!("{}/mirror/", ds.url);

    // No API server runs for this cluster: nothing to drain (tests/lifecycle_drain.rs drains).
    let bad = node.run(&[
        "upgrade",
        "--no-drain",
        "--kubernetes-version",
        "1.32",
        "--mirror",
        &mirror_url,
        "--allow-insecure-mirror",
        "--wait-timeout",
        "4s",
    ]);
    assert_eq!(bad.code, Some(3), "{bad:?}");
    assert!(
        bad.stderr.contains("kubelet did not become healthy"),
        "{bad:?}"
    );
    assert!(bad.stderr.contains(&format!("rolled back automatically: the binaries and configuration of {VERSION} are back and kubelet is healthy again")), "{bad:?}");
    assert_eq!(
        Sha256::of_file(&kubelet).unwrap(),
        old_sum,
        "the old kubelet binary is back"
    );
    assert_eq!(
        Tracker::load(&paths).unwrap().unwrap().kubernetes_version,
        VERSION
    );
    assert_eq!(
        NodeRecord::load(&paths)
            .unwrap()
            .unwrap()
            .kubernetes_version,
        VERSION
    );
    assert!(
        node.kubelet_healthy(),
        "the old kubelet runs and answers again"
    );
    let rolled_back = node.fingerprint(&skip);
    assert_eq!(
        joined,
        rolled_back,
        "the rollback left differences:\n{}",
        diff(&joined, &rolled_back)
    );

    let good = node.run(&[
        "upgrade",
        "--no-drain",
        GOOD_VERSION,
        "--mirror",
        &mirror_url,
        "--allow-insecure-mirror",
        "--wait-timeout",
        "30s",
    ]);
    assert_eq!(good.code, Some(0), "{good:?}");
    assert!(
        good.stdout.contains(&format!(
            "upgraded from Kubernetes {VERSION} to {GOOD_VERSION}"
        )),
        "{good:?}"
    );
    assert_eq!(
        NodeRecord::load(&paths)
            .unwrap()
            .unwrap()
            .kubernetes_version,
        GOOD_VERSION
    );
    assert_eq!(
        Tracker::load(&paths).unwrap().unwrap().kubernetes_version,
        GOOD_VERSION
    );
    assert!(node.kubelet_healthy());

    let leave = node.run(&["leave", "--purge", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    let after = node.fingerprint(&[]);
    assert_eq!(
        pristine,
        after,
        "leave after upgrade did not restore the tree:\n{}",
        diff(&pristine, &after)
    );
}

#[test]
fn upgrade_on_a_host_that_never_joined_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    let node = Node::new(&ds, &create_activation(&ds));
    let before = node.fingerprint(&[]);
    let run = node.run(&[
        "upgrade",
        "1.31",
        "--mirror",
        &format!("{}/mirror/", ds.url),
        "--allow-insecure-mirror",
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("has not joined"), "{run:?}");
    assert_eq!(node.fingerprint(&[]), before);
}
