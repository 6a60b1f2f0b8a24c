//! Automatic upgrades one node at a time (`[lifecycle] auto_upgrade`, `max_unavailable = 1`):
//! two joined sandboxes, each with its daemon, a newer patch on the mirror and the lifecycle
//! RBAC applied to the stand-in API server (the shipped manifest, as `kubectl apply` would).
//! Both nodes upgrade inside the window; the stand-in's history shows that they were never
//! cordoned at the same time. The daemon that drains first is killed with SIGKILL together with
//! its upgrade child in the middle of the drain: started again, it continues from its journal,
//! finishes, uncordons and gives its lock slot back, and only then does the other node start.
//! Without the RBAC the daemon does nothing to the node and says why, naming the manifest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use std::time::Duration;

use hybrid_agent::join::record::NodeRecord;
use hybrid_agent::paths::HostPaths;
use install_support::*;
use serde_json::Value;

/// The newer patch of the cluster's minor (the devstack cluster runs 1.31).
const PATCH: &str = "1.31.3";

fn version(node: &Node) -> String {
    NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .map(|r| r.kubernetes_version)
        .unwrap_or_default()
}

fn name(node: &Node) -> String {
    NodeRecord::load(&HostPaths::new(&node.root))
        .unwrap()
        .unwrap()
        .node_name
}

/// The agent config of a node whose daemon upgrades by itself from the devstack mirror.
fn auto_upgrade(ds: &hybrid_devstack::Devstack, node: &Node, window: &str) {
    std::fs::write(
        node.path("/etc/hybrid-agent/config.toml"),
        format!(
            "[supervisor]\nbackend = \"process\"\n\n[artifacts]\nmirror_url = \"{}/mirror/\"\nallow_insecure_mirror = true\n\n[lifecycle]\nauto_upgrade = true\nmaintenance_window = \"{window}\"\nmax_unavailable = 1\ncheck_interval = \"1s\"\ndrain_timeout = \"60s\"\nupgrade_wait_timeout = \"30s\"\n",
            ds.url
        ),
    )
    .unwrap();
}

/// A ReplicaSet pod of app `app` on `node`, Running and Ready.
fn children_with(pid: u32, word: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmdline).contains(word) {
            out.push(p);
        }
    }
    out
}

/// The times each node was cordoned, as (node, cordon seq, uncordon seq).
fn cordon_spans(events: &[Value]) -> Vec<(String, u64, u64)> {
    let mut open: std::collections::BTreeMap<String, u64> = Default::default();
    let mut spans = Vec::new();
    for e in events {
        let object = e["object"].as_str().unwrap_or_default();
        let Some(node) = object.strip_prefix("nodes/") else {
            continue;
        };
        let seq = e["seq"].as_u64().unwrap();
        match e["action"].as_str() {
            Some("cordon") => {
                open.insert(node.to_owned(), seq);
            }
            Some("uncordon") => {
                if let Some(start) = open.remove(node) {
                    spans.push((node.to_owned(), start, seq));
                }
            }
            _ => {}
        }
    }
    for (node, start) in open {
        spans.push((node, start, u64::MAX));
    }
    spans
}

#[test]
fn two_nodes_upgrade_one_at_a_time_and_a_killed_agent_finishes_its_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    // Evicted pods take 3 s to terminate: long enough to kill a daemon in the middle.
    let ds = kube_devstack(&mirror, 3000, 500);
    standin_release(&mirror, VERSION);
    let nodes: Vec<Node> = (0..2)
        .map(|_| {
            let node = Node::new(&ds, &create_activation(&ds));
            standin_authenticator(&mirror, VERSION, &node.root);
            let run = node.join(&ds, &[]);
            assert_eq!(run.code, Some(0), "{run:?}");
            node
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(name).collect();
    for (i, n) in names.iter().enumerate() {
        replicaset_pod(&ds, &format!("app{i}"), &format!("app{i}-1"), n);
    }
    // The newer patch appears on the mirror after the join.
    standin_release(&mirror, PATCH);

    let status = |node: &Node| -> Value {
        let run = node.run(&["status", "--json"]);
        serde_json::from_str(&run.stdout).unwrap_or_default()
    };
    let log0 = dir.path().join("daemon0.log");

    // Outside the maintenance window (the day after tomorrow, host time, one minute): nothing.
    let day = jiff::ZonedDateTime::now()
        .checked_add(jiff::Span::new().days(2))
        .unwrap()
        .weekday();
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let window = format!(
        "{} 03:00-03:01",
        days[usize::from(day.to_monday_zero_offset().unsigned_abs())]
    );
    auto_upgrade(&ds, &nodes[0], &window);
    let daemon = nodes[0].spawn_daemon(&log0);
    wait_until("the window in status", Duration::from_secs(30), || {
        status(&nodes[0])["lifecycle"]["state"]
            == format!("waiting for the maintenance window ({window})").as_str()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        status(&nodes[0])["lifecycle"]["state"],
        format!("waiting for the maintenance window ({window})").as_str()
    );
    drop(daemon);

    // Without the lifecycle RBAC: nothing happens to the nodes, and status says why.
    auto_upgrade(&ds, &nodes[0], "daily 00:00-24:00");
    let daemon = nodes[0].spawn_daemon(&log0);
    wait_until("the refusal in status", Duration::from_secs(30), || {
        status(&nodes[0])["lifecycle"]["state"]
            .as_str()
            .is_some_and(|s| s.contains("cannot start"))
    });
    let state = status(&nodes[0])["lifecycle"]["state"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        state.contains(&format!("upgrade to {PATCH} cannot start"))
            && state.contains("hybrid-agent-disruption-lock")
            && state.contains("hybrid-agent rbac | kubectl apply -f -"),
        "{state}"
    );
    drop(daemon);
    assert_eq!(version(&nodes[0]), VERSION);
    assert!(
        !kube_history(&ds)
            .iter()
            .any(|e| e["action"] == "cordon" || e["action"] == "evict"),
        "nothing was disrupted without the lock"
    );

    // The administrator applies the shipped manifest.
    apply_lifecycle_rbac(&ds);
    // A window that is open now; then both daemons.
    for node in &nodes {
        auto_upgrade(&ds, node, "daily 00:00-24:00");
    }
    let logs: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("daemon{i}.log")))
        .collect();
    let mut daemons: Vec<Option<Daemon>> = nodes
        .iter()
        .zip(&logs)
        .map(|(n, l)| Some(n.spawn_daemon(l)))
        .collect();

    // The first node to evict is killed mid-drain, with its upgrade child.
    let mut first = None;
    wait_until("the first eviction", Duration::from_secs(90), || {
        first = kube_history(&ds).iter().find_map(|e| {
            (e["action"] == "evict").then(|| {
                e["actor"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("system:node:")
                    .to_owned()
            })
        });
        first.is_some()
    });
    let first = first.unwrap();
    let i = names.iter().position(|n| *n == first).unwrap();
    let other = 1 - i;
    let pid = daemons[i].as_ref().unwrap().id();
    let upgrade_children = children_with(pid, "upgrade");
    assert_eq!(upgrade_children.len(), 1, "one upgrade child runs");
    for p in upgrade_children.iter().copied().chain([pid as i32]) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    let _ = daemons[i].take().map(|mut d| d.0.wait());
    assert!(
        nodes[i]
            .path("/var/lib/hybrid-agent/lifecycle.json")
            .exists(),
        "the killed daemon's journal"
    );
    // The other node waits: the killed node still holds the only slot.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(version(&nodes[other]), VERSION, "the other node waited");
    assert!(
        !kube_history(&ds).iter().any(|e| e["action"] == "cordon"
            && e["object"] == format!("nodes/{}", names[other]).as_str()),
        "the other node was not cordoned while the slot was taken"
    );
    // Started again, the killed node finishes; then the other node upgrades.
    daemons[i] = Some(nodes[i].spawn_daemon(&logs[i]));
    wait_until("both nodes upgraded", Duration::from_secs(180), || {
        nodes.iter().all(|n| version(n) == PATCH)
    });
    wait_until("both journals gone", Duration::from_secs(30), || {
        nodes.iter().all(|n| {
            !n.path("/var/lib/hybrid-agent/lifecycle.json").exists()
                && !n.path("/var/lib/hybrid-agent/drain.json").exists()
        })
    });
    drop(daemons);

    let events = kube_history(&ds);
    let spans = cordon_spans(&events);
    for n in &names {
        let mine: Vec<_> = spans.iter().filter(|(node, ..)| node == n).collect();
        assert!(!mine.is_empty(), "{n} was drained: {events:#?}");
        assert!(
            mine.iter().all(|(_, _, end)| *end != u64::MAX),
            "{n} was left cordoned: {events:#?}"
        );
    }
    for a in &spans {
        for b in &spans {
            if a.0 != b.0 {
                assert!(
                    a.2 < b.1 || b.2 < a.1,
                    "{} and {} were cordoned at the same time: {events:#?}",
                    a.0,
                    b.0
                );
            }
        }
    }
    // Each node's pod was evicted once and replaced elsewhere.
    for i in 0..2 {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == "evict"
                    && e["object"] == format!("pods/app/app{i}-1").as_str()),
            "{events:#?}"
        );
    }
    let shown = nodes[i].run(&["status"]);
    assert!(
        shown
            .stdout
            .contains(&format!("upgraded {VERSION} → {PATCH}")),
        "{shown:?}"
    );
    let s = status(&nodes[i]);
    assert_eq!(s["lifecycle"]["upgrades_succeeded"], 1, "{s}");
    assert_eq!(s["lifecycle"]["last"]["ok"], true, "{s}");
}

/// Seconds since the epoch of a stand-in history event's `at`.
fn event_at(e: &Value) -> f64 {
    let t = time::OffsetDateTime::parse(
        e["at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// `scripts/bench lifecycle` (not a test: it asserts only that the flows finished). The time
/// from "the maintenance window opens" to "the node is uncordoned on the new version", with the
/// shipped `check_interval` (600 s: the daemon sleeps to the window's opening, not to its next
/// interval), against the same upgrade run by hand (`hybrid-agent upgrade PATCH`: drain,
/// switch, health, uncordon) on a twin node in the same run. The agent is the debug build; the
/// figure is made of the drain (evicted pods take 300 ms to go) and the health waits.
#[test]
#[ignore = "a benchmark: scripts/bench lifecycle"]
fn bench_window_opens_to_node_uncordoned_on_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let ds = kube_devstack(&mirror, 300, 300);
    apply_lifecycle_rbac(&ds);
    standin_release(&mirror, VERSION);
    let nodes: Vec<Node> = (0..2)
        .map(|_| {
            let node = Node::new(&ds, &create_activation(&ds));
            standin_authenticator(&mirror, VERSION, &node.root);
            let run = node.join(&ds, &[]);
            assert_eq!(run.code, Some(0), "{run:?}");
            node
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(name).collect();
    for (i, n) in names.iter().enumerate() {
        replicaset_pod(&ds, &format!("app{i}"), &format!("app{i}-1"), n);
    }
    standin_release(&mirror, PATCH);

    // By hand.
    let mirror_url = format!("{}/mirror/", ds.url);
    let started = std::time::Instant::now();
    let run = nodes[0].run(&[
        "upgrade",
        PATCH,
        "--mirror",
        &mirror_url,
        "--allow-insecure-mirror",
        "--drain-timeout",
        "60s",
        "--wait-timeout",
        "30s",
    ]);
    let manual = started.elapsed().as_secs_f64();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(version(&nodes[0]), PATCH);

    // By the daemon: a window that opens at the start of a minute at least 10 s away.
    let now = jiff::ZonedDateTime::now();
    let ahead = if now.second() < 50 { 1 } else { 2 };
    let opens = now
        .with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .unwrap()
        .checked_add(jiff::Span::new().minutes(ahead))
        .unwrap();
    let closes = opens.checked_add(jiff::Span::new().minutes(30)).unwrap();
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let window = format!(
        "{} {:02}:{:02}-{:02}:{:02}",
        days[usize::from(opens.weekday().to_monday_zero_offset().unsigned_abs())],
        opens.hour(),
        opens.minute(),
        closes.hour(),
        closes.minute()
    );
    auto_upgrade(&ds, &nodes[1], &window);
    let config = nodes[1].path("/etc/hybrid-agent/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // The shipped interval between looks.
    std::fs::write(&config, text.replace("check_interval = \"1s\"\n", "")).unwrap();
    let log = dir.path().join("daemon1.log");
    let _daemon = nodes[1].spawn_daemon(&log);
    wait_until(
        "the upgrade by the daemon",
        Duration::from_secs(240),
        || {
            version(&nodes[1]) == PATCH
                && kube_history(&ds).iter().any(|e| {
                    e["action"] == "uncordon" && e["object"] == format!("nodes/{}", names[1])
                })
        },
    );
    let events = kube_history(&ds);
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action && e["object"] == format!("nodes/{}", names[1]))
            .map(event_at)
            .unwrap()
    };
    let open_at = opens.timestamp().as_nanosecond() as f64 / 1e9;
    let (cordon, uncordon) = (find("cordon"), find("uncordon"));
    let auto = uncordon - open_at;
    println!(
        "lifecycle: by hand, `hybrid-agent upgrade {PATCH}` (drain, switch, health, uncordon): {manual:.2} s"
    );
    println!(
        "lifecycle: window opens -> node uncordoned on {PATCH}: {auto:.2} s (ratio to by hand {:.2}); open -> cordon {:.2} s, cordon -> uncordon {:.2} s; check_interval 600 s (shipped)",
        auto / manual,
        cordon - open_at,
        uncordon - cordon
    );
}
