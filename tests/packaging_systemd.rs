//! The .deb and the .rpm installed for real: dpkg and rpm inside a systemd booted in
//! systemd-nspawn over an overlay of this machine's root (tests/nspawn_support: the packages land
//! in the container's tmpfs layer, never on the host), then a real `hybrid-agent join` there
//! against the devstack (SSM, EKS, the artifact mirror, the ECR registry the pause image is
//! pulled from through the container's containerd) with the stand-in kubelet (a STAND-IN, not
//! kubelet) under systemd.
//!
//! What a fleet operator meets, in order: the package enables the unit and does not start it;
//! started before a join the agent exits 4 and systemd leaves it alone (RestartPreventExitStatus);
//! `join` starts it and systemctl sees READY (Type=notify); installing a newer build restarts the
//! agent and neither kubelet nor containerd; removing stops the agent and keeps its state and
//! kubelet; purge keeps a joined node's identity (and says so) and removes the state of one that
//! left. Then the same life for the .rpm (install, upgrade with `rpm -U`, erase).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod install_support;
mod nspawn_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use install_support::*;
use nspawn_support::{Container, Root};

const UNIT: &str = "hybrid-agent.service";
/// Where the test puts its files inside the container.
const DROP: &str = "/var/tmp/hybrid-agent-test";
/// An address inside the devstack cluster's remote node network (10.80.0.0/16): the container
/// shares the host's network, whose address is in none.
const NODE_IP: &str = "10.80.0.10";

/// Builds release `release` of both packages from the test binary; returns (.deb, .rpm).
fn packages(out: &Path, release: u32) -> (PathBuf, PathBuf) {
    let printed = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package"))
        .args(["--profile", "debug", "--binary", AGENT, "--release"])
        .arg(release.to_string())
        .arg("--out")
        .arg(out)
        .output()
        .expect("scripts/package");
    assert!(
        printed.status.success(),
        "scripts/package: {}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let text = String::from_utf8(printed.stdout).unwrap();
    let mut lines = text.lines().map(PathBuf::from);
    (lines.next().unwrap(), lines.next().unwrap())
}

/// Copies `file` into the container's drop directory; returns its path inside.
fn drop_in(c: &Container, file: &Path, name: &str) -> String {
    let inside = format!("{DROP}/{name}");
    std::fs::create_dir_all(c.path(DROP)).unwrap();
    std::fs::copy(file, c.path(&inside)).unwrap();
    inside
}

/// The agent config a fleet image would carry: every AWS endpoint at the devstack, no start-up
/// spread. Written over the package's conffile (an administrator's edit, kept on upgrade).
fn agent_config(c: &Container, ds: &hybrid_devstack::Devstack) {
    let url = &ds.url;
    let mut text = String::from("[daemon]\nstartup_jitter = \"0s\"\n\n[endpoints]\n");
    for service in ["ssm", "logs", "cloudwatch", "eks", "sts", "ecr"] {
        text.push_str(&format!("{service} = \"{url}\"\n"));
    }
    std::fs::write(c.path("/etc/hybrid-agent/config.toml"), text).unwrap();
}

/// A NodeConfig for a fresh activation, and containerd pointed at the devstack's registry for
/// the EKS ECR images (what an operator's registry mirror looks like); returns its path inside.
fn node_config(c: &Container, ds: &hybrid_devstack::Devstack, work: &Path) -> String {
    let (id, code) = create_activation(ds);
    let healthz = free_port();
    let yaml = format!(
        "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: {CLUSTER}\n    region: {REGION}\n  kubelet:\n    config:\n      healthzPort: {healthz}\n    flags: [\"--node-ip={NODE_IP}\"]\n  hybrid:\n    ssm:\n      activationId: {id}\n      activationCode: {code}\n"
    );
    let file = work.join("nodeconfig.yaml");
    std::fs::write(&file, yaml).unwrap();
    let inside = drop_in(c, &file, "nodeconfig.yaml");
    let (address, ca) = devstack_registry(ds);
    let ca_inside = drop_in(c, Path::new(&ca), "registry-ca.pem");
    put(
        &c.path(&format!(
            "/etc/containerd/certs.d/{EKS_ECR_REGISTRY}/hosts.toml"
        )),
        format!(
            "server = \"https://{address}\"\n\n[host.\"https://{address}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca_inside}\"\n"
        )
        .as_bytes(),
        0o644,
    );
    inside
}

fn join(c: &Container, ds: &hybrid_devstack::Devstack, nodeconfig: &str) -> String {
    let source = format!("file://{nodeconfig}");
    let mirror = format!("{}/mirror/", ds.url);
    c.ok(&[
        "hybrid-agent",
        "join",
        "--config-source",
        &source,
        "--mirror",
        &mirror,
        "--allow-insecure-mirror",
        "--wait-timeout",
        "60s",
    ])
}

fn main_pid(c: &Container, unit: &str) -> u32 {
    c.unit_property(unit, "MainPID").parse().unwrap_or(0)
}

/// Waits (bounded) until `unit` is active/running; returns its MainPID.
fn running(c: &Container, unit: &str) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = format!(
            "{}/{}",
            c.unit_property(unit, "ActiveState"),
            c.unit_property(unit, "SubState")
        );
        if state == "active/running" {
            return main_pid(c, unit);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unit} is {state}; journal:\n{}",
            c.exec(&["journalctl", "-u", unit, "--no-pager", "-n", "40"])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A mirror whose kubelet is the stand-in and whose aws-iam-authenticator runs the installed
/// agent's `token` (the same exec credential), so the stand-in registers its Node.
/// Whether the kernel's clock is synchronised, read here with adjtimex(2) (through Python's
/// ctypes: the test has no unsafe code of its own): no STA_UNSYNC in the status and a maximum
/// error under 16 s, the rule systemd-timedated applies for `NTPSynchronized`.
fn kernel_clock_synchronised() -> bool {
    let script = r#"
import ctypes, ctypes.util
class T(ctypes.Structure):
    _fields_ = [('modes', ctypes.c_uint), ('offset', ctypes.c_long), ('freq', ctypes.c_long),
        ('maxerror', ctypes.c_long), ('esterror', ctypes.c_long), ('status', ctypes.c_int),
        ('pad', ctypes.c_char * 256)]
t = T()
assert ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True).adjtimex(ctypes.byref(t)) >= 0
print('yes' if not (t.status & 0x40) and t.maxerror < 16000000 else 'no')
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && (said == "yes" || said == "no"),
        "{out:?}"
    );
    said == "yes"
}

/// doctor's `time sync` under a real systemd: systemd-timedated, activated on the container's
/// bus, reads the kernel's state (the host's: one kernel), so doctor says what adjtimex says
/// here.
fn time_sync_as_the_kernel_says(c: &Container) {
    let doctor = c.run(&["hybrid-agent", "doctor", "--json"]);
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {doctor:?}"));
    let check = checks
        .iter()
        .find(|k| k["name"] == "time sync")
        .unwrap_or_else(|| panic!("no time sync check: {checks:?}"));
    let detail = check["detail"].as_str().unwrap();
    if kernel_clock_synchronised() {
        assert_eq!(check["outcome"], "ok", "{check}");
        assert!(
            detail.contains("(systemd-timedated: NTPSynchronized=yes"),
            "{check}"
        );
    } else {
        assert_eq!(check["outcome"], "fail", "{check}");
        assert!(
            detail.contains("the kernel clock is not synchronised")
                && detail.contains("(systemd-timedated: NTPSynchronized=no"),
            "{check}"
        );
        assert!(
            check["fix"].as_str().unwrap().contains("timedatectl"),
            "{check}"
        );
    }
}

fn mirror(dir: &Path) -> PathBuf {
    let mirror = dir.join("mirror");
    standin_release(&mirror, VERSION);
    put(
        &mirror.join(VERSION).join(ARCH).join("aws-iam-authenticator"),
        b"#!/bin/sh\n# STAND-IN for aws-iam-authenticator: hybrid-agent makes the same token.\nexec /usr/bin/hybrid-agent \"$@\"\n",
        0o755,
    );
    mirror
}

#[test]
fn the_deb_and_the_rpm_install_upgrade_and_go_under_a_real_systemd() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("packages");
    let (deb1, rpm1) = packages(&out, 1);
    let (deb2, rpm2) = packages(&out, 2);
    let ds = devstack(&mirror(work.path()));
    let c = Container::boot(
        &format!("hapkg{}", std::process::id()),
        &work.path().join("nspawn.log"),
        Root::Overlay,
    );
    let deb1 = drop_in(&c, &deb1, "a.deb");
    let deb2 = drop_in(&c, &deb2, "b.deb");

    // --- install: enabled, not started; a start before join exits 4 and stays down.
    c.ok(&["dpkg", "-i", &deb1]);
    assert_eq!(c.exec(&["systemctl", "is-enabled", UNIT]), "enabled");
    assert_eq!(c.exec(&["systemctl", "is-active", UNIT]), "inactive");
    let early = c.run(&["systemctl", "start", UNIT]);
    assert!(!early.status.success(), "a start before join fails");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        c.unit_property(UNIT, "ExecMainStatus"),
        "4",
        "exit 4: not joined"
    );
    assert_eq!(c.unit_property(UNIT, "ActiveState"), "failed");
    assert_eq!(
        c.unit_property(UNIT, "NRestarts"),
        "0",
        "RestartPreventExitStatus=4: no restart loop before join"
    );
    c.ok(&["systemctl", "reset-failed", UNIT]);

    // --- join: the agent's unit is started by join and reaches READY.
    agent_config(&c, &ds);
    let nodeconfig = node_config(&c, &ds, work.path());
    let joined = join(&c, &ds, &nodeconfig);
    assert!(joined.contains("hybrid-agent.service started"), "{joined}");
    // /proc/sys is the host kernel's, read-only in the container: said, not failed.
    assert!(
        joined.contains(
            "host: not applied: in a systemd-nspawn container the host's kernel refused sysctl"
        ),
        "{joined}"
    );
    let agent = running(&c, UNIT);
    let kubelet = running(&c, "kubelet.service");
    let containerd = running(&c, "containerd.service");
    assert!(
        c.unit_property(UNIT, "StatusText").starts_with("running"),
        "sd_notify STATUS: {}",
        c.unit_property(UNIT, "StatusText")
    );
    // `systemctl restart` of a Type=notify unit returns once the new agent said READY=1.
    c.ok(&["systemctl", "restart", UNIT]);
    assert_eq!(c.unit_property(UNIT, "ActiveState"), "active");
    let agent_restarted = main_pid(&c, UNIT);
    assert_ne!(agent_restarted, agent);
    let status = c.ok(&["hybrid-agent", "status"]);
    assert!(status.contains("kubelet"), "{status}");
    time_sync_as_the_kernel_says(&c);

    // --- upgrade: a newer build restarts the agent, never kubelet or containerd.
    c.ok(&["dpkg", "-i", &deb2]);
    assert_eq!(
        c.exec(&["dpkg-query", "-W", "-f", "${Version}", "hybrid-agent"]),
        format!("{}-2", env!("CARGO_PKG_VERSION").replace('-', "~"))
    );
    let agent_upgraded = running(&c, UNIT);
    assert_ne!(agent_upgraded, agent_restarted, "the new build runs");
    assert_eq!(
        running(&c, "kubelet.service"),
        kubelet,
        "kubelet kept running"
    );
    assert_eq!(
        running(&c, "containerd.service"),
        containerd,
        "containerd kept running"
    );
    assert!(
        std::fs::read_to_string(c.path("/etc/hybrid-agent/config.toml"))
            .unwrap()
            .contains("[endpoints]"),
        "the edited conffile survives the upgrade"
    );

    // --- remove: the agent stops and is disabled; its state and kubelet stay.
    c.ok(&["dpkg", "-r", "hybrid-agent"]);
    assert_eq!(c.exec(&["systemctl", "is-active", UNIT]), "inactive");
    assert!(!c.path("/usr/bin/hybrid-agent").exists());
    assert!(c.path("/var/lib/hybrid-agent/node.json").is_file());
    assert_eq!(running(&c, "kubelet.service"), kubelet);
    // --- purge of a joined node: the identity is kept, with the way out.
    let purge = c.ok(&["dpkg", "--purge", "hybrid-agent"]);
    assert!(purge.contains("kept /var/lib/hybrid-agent"), "{purge}");
    assert!(c.path("/var/lib/hybrid-agent/node.json").is_file());
    assert!(
        !c.path("/etc/hybrid-agent/config.toml").exists(),
        "conffile purged"
    );

    // --- leave, then purge: the state goes.
    c.ok(&["dpkg", "-i", &deb2]);
    agent_config(&c, &ds);
    let left = c.ok(&["hybrid-agent", "leave", "--force"]);
    assert!(
        !c.path("/var/lib/hybrid-agent/node.json").exists(),
        "{left}"
    );
    std::fs::create_dir_all(c.path("/var/lib/hybrid-agent/spool")).unwrap();
    c.ok(&["dpkg", "-r", "hybrid-agent"]);
    assert!(
        c.path("/var/lib/hybrid-agent").exists(),
        "remove keeps state"
    );
    c.ok(&["dpkg", "--purge", "hybrid-agent"]);
    assert!(
        !c.path("/var/lib/hybrid-agent").exists(),
        "purge removes it"
    );
    assert!(
        managed_instances(&ds).len() <= 1,
        "the first node deregistered"
    );

    // --- the .rpm: install (enabled, not started), join, upgrade restarts the agent only,
    // erase stops and disables it.
    let rpm1 = drop_in(&c, &rpm1, "a.rpm");
    let rpm2 = drop_in(&c, &rpm2, "b.rpm");
    // Debian's rpm database knows none of the libraries the glibc build needs.
    c.ok(&["rpm", "-i", "--nodeps", &rpm1]);
    assert_eq!(c.exec(&["systemctl", "is-enabled", UNIT]), "enabled");
    assert_eq!(c.exec(&["systemctl", "is-active", UNIT]), "inactive");
    agent_config(&c, &ds);
    let nodeconfig = node_config(&c, &ds, work.path());
    join(&c, &ds, &nodeconfig);
    let agent = running(&c, UNIT);
    let kubelet = running(&c, "kubelet.service");
    c.ok(&["rpm", "-U", "--nodeps", &rpm2]);
    assert_eq!(
        c.exec(&["rpm", "-q", "--qf", "%{RELEASE}", "hybrid-agent"]),
        "2"
    );
    assert_ne!(running(&c, UNIT), agent, "rpm -U restarts the agent");
    assert_eq!(running(&c, "kubelet.service"), kubelet, "and not kubelet");
    c.ok(&["rpm", "-e", "hybrid-agent"]);
    assert_eq!(c.exec(&["systemctl", "is-active", UNIT]), "inactive");
    assert_ne!(c.exec(&["systemctl", "is-enabled", UNIT]), "enabled");
    assert!(
        c.path("/var/lib/hybrid-agent/node.json").is_file(),
        "a joined node's identity stays"
    );
}

/// Under `[supervisor] backend = "process"` containerd, kubelet and every pod are the agent's
/// descendants and would inherit the unit's sandbox (NoNewPrivileges, a seccomp filter, no new
/// namespaces). The confined daemon lifts it with a drop-in, reloads systemd and exits 1; systemd
/// restarts it unconfined and it takes over the components join started.
#[test]
fn under_the_built_in_backend_the_agent_lifts_its_units_sandbox() {
    let work = tempfile::tempdir().unwrap();
    let (deb, _) = packages(&work.path().join("packages"), 1);
    let ds = devstack(&mirror(work.path()));
    let c = Container::boot(
        &format!("hasbx{}", std::process::id()),
        &work.path().join("nspawn.log"),
        Root::Overlay,
    );
    let deb = drop_in(&c, &deb, "a.deb");
    c.ok(&["dpkg", "-i", &deb]);
    agent_config(&c, &ds);
    let config = c.path("/etc/hybrid-agent/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("[supervisor]\nbackend = \"process\"\n\n{text}"),
    )
    .unwrap();
    // An operator choosing the built-in supervisor on a systemd host hands containerd to it:
    // Debian's containerd.service would otherwise hold /run/containerd/containerd.sock.
    c.ok(&["systemctl", "disable", "--now", "containerd.service"]);
    let nodeconfig = node_config(&c, &ds, work.path());
    let joined = join(&c, &ds, &nodeconfig);
    assert!(joined.contains("hybrid-agent.service) adopts"), "{joined}");
    // What join's last line asks for. The confined agent lifts the sandbox and fails, so this
    // start reports a failure; systemd's restart brings it up unconfined.
    let _ = c.run(&["systemctl", "start", UNIT]);

    let drop_in_file =
        c.path("/etc/systemd/system/hybrid-agent.service.d/50-built-in-supervisor.conf");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !(drop_in_file.is_file() && c.unit_property(UNIT, "NRestarts") == "1") {
        assert!(
            std::time::Instant::now() < deadline,
            "no drop-in / restart; journal:\n{}",
            c.exec(&["journalctl", "-u", UNIT, "--no-pager", "-n", "40"])
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let journal = c.exec(&["journalctl", "-u", UNIT, "--no-pager"]);
    assert!(
        journal.contains("cannot run containerd and kubelet inside hybrid-agent.service's sandbox"),
        "{journal}"
    );
    let agent = running(&c, UNIT);
    let status = std::fs::read_to_string(c.path(&format!("/proc/{agent}/status"))).unwrap();
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    assert_eq!(
        c.unit_property(UNIT, "SystemCallFilter"),
        "~",
        "no filter left"
    );
    // The restarted agent supervises kubelet: `status` answers with both components running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = c.exec(&["hybrid-agent", "status"]);
        if status.contains("kubelet") && status.contains("running") && !status.contains("degraded")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
