//! What `join` does to the running host besides files — sysctls made live, kernel modules
//! loaded, swap files turned off and out of /etc/fstab, ports opened in an enabled firewall, a
//! distribution containerd installed — as nodeadm's `init` does. In a `--root` sandbox none of
//! it runs: every action is recorded in the join journal and shown in the report, and the
//! kernel of the machine running the tests is never touched (its /proc/sys values are compared
//! before and after). The commands a real root runs are held by the unit tests of
//! `node::host` (command construction only; no test here boots a real root).
//!
//! Joins use the devstack (SSM, EKS, the artifact mirror) and the stand-in kubelet (a STAND-IN,
//! not kubelet).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;

use install_support::*;

const SWAPS_HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
const FSTAB: &str = "# /etc/fstab: static file system information.\nUUID=0a1b / ext4 errors=remount-ro 0 1\n/swapfile none swap sw 0 0\n/dev/sdb1 none swap sw 0 0\n";
const FSTAB_WITHOUT_SWAP: &str =
    "# /etc/fstab: static file system information.\nUUID=0a1b / ext4 errors=remount-ro 0 1\n";
/// The host kernel values a careless join would change.
const HOST_SYSCTLS: [&str; 4] = [
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/panic_on_oops",
    "/proc/sys/net/ipv4/ip_forward",
];

fn fixture() -> (tempfile::TempDir, hybrid_devstack::Devstack) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    standin_release(&mirror, VERSION);
    let ds = devstack(&mirror);
    (dir, ds)
}

fn host_sysctls() -> Vec<String> {
    HOST_SYSCTLS
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// The host actions noted in the join journal: (action JSON, applied).
fn journal_host_notes(node: &Node) -> Vec<(serde_json::Value, bool)> {
    let text =
        std::fs::read_to_string(node.path("/var/lib/hybrid-agent/join-journal.json")).unwrap();
    let journal: serde_json::Value = serde_json::from_str(&text).unwrap();
    journal["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"] == "external" && c["note"]["kind"] == "host")
        .map(|c| {
            (
                c["note"]["action"].clone(),
                c["note"]["applied"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_sandbox_join_records_every_host_action_and_touches_no_kernel() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // A host with a swap file on, its fstab line, and ufw enabled.
    put(
        &node.path("/proc/swaps"),
        format!("{SWAPS_HEADER}/swapfile\tfile\t1048572\t0\t-2\n").as_bytes(),
        0o444,
    );
    put(&node.path("/swapfile"), b"swap", 0o600);
    put(&node.path("/etc/fstab"), FSTAB.as_bytes(), 0o644);
    put(
        &node.path("/etc/ufw/ufw.conf"),
        b"# /etc/ufw/ufw.conf\nENABLED=yes\nLOGLEVEL=low\n",
        0o644,
    );
    let kernel_before = host_sysctls();

    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let host_line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("host: "))
        .unwrap_or_else(|| panic!("no host line: {run:?}"));
    assert!(
        host_line.starts_with("host: recorded, not applied (--root is not /)"),
        "{host_line}"
    );
    for expected in [
        "turn off swap file /swapfile (/usr/sbin/swapoff /swapfile)",
        "remove the swap lines from /etc/fstab",
        // No systemd in the sandbox: modprobe, not a systemd-modules-load restart.
        "/usr/sbin/modprobe overlay; /usr/sbin/modprobe br_netfilter",
        "apply the sysctl settings (/usr/sbin/sysctl --system)",
        "/usr/sbin/ufw allow 10250/tcp; /usr/sbin/ufw allow 10256/tcp; /usr/sbin/ufw allow 30000:32767/tcp",
    ] {
        assert!(
            host_line.contains(expected),
            "{expected:?} not in {host_line}"
        );
    }
    assert!(
        run.stdout
            .contains("preflight: host free to join (swap files /swapfile to turn off)"),
        "{run:?}"
    );

    // The journal holds each action, marked as not applied.
    let notes = journal_host_notes(&node);
    let kinds: Vec<&str> = notes
        .iter()
        .map(|(a, _)| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["swap_off", "load_modules", "apply_sysctls", "open_ports"],
        "{notes:?}"
    );
    assert!(notes.iter().all(|(_, applied)| !applied), "{notes:?}");
    assert_eq!(notes[0].0["file"], "/swapfile");
    assert_eq!(notes[3].0["firewall"], "ufw");

    // Files are real in the sandbox: the sysctl file, and fstab without its swap lines.
    let sysctl = std::fs::read_to_string(node.path("/etc/sysctl.d/99-hybrid-agent.conf")).unwrap();
    assert!(sysctl.contains("\nvm.overcommit_memory = 1\n"), "{sysctl}");
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/fstab")).unwrap(),
        FSTAB_WITHOUT_SWAP
    );
    // The machine running the test is as it was.
    assert_eq!(host_sysctls(), kernel_before, "the host kernel was changed");

    // leave puts the fstab lines back (the edit went through the journal).
    let leave = node.run(&["leave", "--force"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/fstab")).unwrap(),
        FSTAB
    );
    assert_eq!(host_sysctls(), kernel_before);
}

#[test]
fn dry_run_plans_the_host_actions() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // firewalld enabled at boot.
    let wants = node.path("/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/firewalld.service",
        wants.join("firewalld.service"),
    )
    .unwrap();
    let before = node.fingerprint(&[]);
    let run = node.join(&ds, &["--dry-run", "--kubernetes-version", "1.31"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    for expected in [
        "host: apply the sysctl settings (/usr/sbin/sysctl --system)",
        "host: load kernel modules overlay, br_netfilter",
        "/usr/bin/firewall-cmd --permanent --add-port=30000-32767/tcp",
        "/usr/bin/firewall-cmd --reload; /usr/bin/firewall-cmd --runtime-to-permanent",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?}: {run:?}");
    }
    assert_eq!(
        node.fingerprint(&[]),
        before,
        "a dry run changed the sandbox"
    );
}

#[test]
fn a_swap_partition_is_refused_before_anything_changes() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    put(
        &node.path("/proc/swaps"),
        format!(
            "{SWAPS_HEADER}/swapfile\tfile\t1048572\t0\t-2\n/dev/sdb1\tpartition\t8388604\t0\t-3\n"
        )
        .as_bytes(),
        0o444,
    );
    put(&node.path("/etc/fstab"), FSTAB.as_bytes(), 0o644);
    let before = node.fingerprint(&[]);
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    for expected in [
        "join failed in the preflight phase",
        "swap partition /dev/sdb1 is on",
        "`swapoff /dev/sdb1`",
        "failSwapOn: false",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?}: {run:?}");
    }
    assert_eq!(node.fingerprint(&[]), before);
    assert!(managed_instances(&ds).is_empty(), "nothing was registered");
}

#[test]
fn swap_allowed_by_kubelet_config_is_left_alone() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    let config = std::fs::read_to_string(&node.nodeconfig).unwrap();
    std::fs::write(
        &node.nodeconfig,
        config.replace("    config:\n", "    config:\n      failSwapOn: false\n"),
    )
    .unwrap();
    put(
        &node.path("/proc/swaps"),
        format!("{SWAPS_HEADER}/dev/sdb1\tpartition\t8388604\t0\t-3\n").as_bytes(),
        0o444,
    );
    put(&node.path("/etc/fstab"), FSTAB.as_bytes(), 0o644);
    let run = node.join(&ds, &["--skip", "start,wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!run.stdout.contains("swapoff"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/fstab")).unwrap(),
        FSTAB
    );
}

#[test]
fn a_bare_sandbox_records_the_containerd_package_and_names_the_fix() {
    let (_m, ds) = fixture();
    let node = Node::new(&ds, &create_activation(&ds));
    // No containerd on the host, none in the manifest; apt-get present.
    std::fs::remove_file(node.path("/usr/bin/containerd")).unwrap();
    std::fs::remove_file(node.path("/var/lib/dpkg/info/containerd.list")).unwrap();
    put(
        &node.path("/usr/bin/apt-get"),
        b"#!/bin/sh\nexit 1\n",
        0o755,
    );
    let before = node.fingerprint(&[]);

    let dry = node.join(&ds, &["--dry-run", "--kubernetes-version", "1.31"]);
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert!(
        dry.stdout.contains(
            "install the distribution package containerd (/usr/bin/apt-get update -q; /usr/bin/apt-get install -y -q containerd)"
        ),
        "{dry:?}"
    );

    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    for expected in [
        "join failed in the install phase",
        "containerd is not installed under",
        "recorded, not run, because --root is not /",
        "/usr/bin/apt-get install -y -q containerd",
        "Put a containerd at",
        "/usr/bin/containerd",
        "the host is as it was",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?}: {run:?}");
    }
    assert_eq!(node.fingerprint(&[]), before);

    // Without a package manager, the error says to install containerd by hand.
    std::fs::remove_file(node.path("/usr/bin/apt-get")).unwrap();
    let run = node.join(&ds, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("there is no apt-get, dnf or yum under")
            && run.stderr.contains("install containerd and runc"),
        "{run:?}"
    );
}
