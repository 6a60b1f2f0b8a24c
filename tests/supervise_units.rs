//! Every unit file the agent writes or ships passes `systemd-analyze verify` without a single
//! warning, and the copies under `systemd/` are exactly what the code renders.
//!
//! `systemd-analyze verify` exits 0 even for unknown keys and unparsable values (it only warns),
//! so the check demands an empty stderr too — and a deliberately broken unit proves it can fail.
//! It also insists that `ExecStart=` binaries exist, so units are verified as rendered for this
//! machine (the stand-in's path) next to the byte-for-byte check of the shipped defaults.
#![allow(clippy::unwrap_used)]

mod supervise_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hybrid_agent::supervise::ExecSpec;
use hybrid_agent::supervise::units::{self, UnitFile};
use supervise_support::standin_binary;

/// Runs `systemd-analyze verify` on `unit` (a path, or a name found through `unit_path`) and
/// returns its complaints; empty means clean.
fn verify(unit: &str, unit_path: Option<&Path>) -> String {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no", unit]);
    if let Some(dir) = unit_path {
        // A trailing ':' appends the default search path (systemd.unit(5)), so the distro's
        // containerd.service is found and our drop-in next to it applies.
        cmd.env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()));
    }
    let out = cmd.output().expect("run systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() && stderr.is_empty() {
        String::new()
    } else {
        format!("exit {:?}: {stderr}", out.status.code())
    }
}

fn write(dir: &Path, unit: &UnitFile) -> PathBuf {
    let path = dir.join(&unit.path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &unit.content).unwrap();
    path
}

fn kubelet_exec(program: PathBuf) -> ExecSpec {
    ExecSpec {
        program,
        args: vec![
            "--config".into(),
            "/etc/kubernetes/kubelet/config.json".into(),
            "--kubeconfig".into(),
            "/var/lib/kubelet/kubeconfig".into(),
            "--node-labels=eks.amazonaws.com/compute-type=hybrid".into(),
        ],
        env: vec![(
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            "/root/.aws/credentials".into(),
        )],
    }
}

#[test]
fn the_check_fails_on_a_broken_unit() {
    let dir = tempfile::tempdir().unwrap();
    let bad = UnitFile {
        path: "bad.service".into(),
        content: format!(
            "[Service]\nExecStart={}\nRestart=sometimes\nNoSuchKey=1\n",
            standin_binary().display()
        ),
    };
    let path = write(dir.path(), &bad);
    let complaints = verify(path.to_str().unwrap(), None);
    assert!(
        complaints.contains("NoSuchKey") && complaints.contains("sometimes"),
        "{complaints}"
    );
}

#[test]
fn kubelet_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = units::kubelet_service(&kubelet_exec(standin_binary()), units::DEFAULT_RESTART_SEC);
    let path = write(dir.path(), &unit);
    assert_eq!(verify(path.to_str().unwrap(), None), "");
    // And the form join writes: EnvironmentFile, $NODEADM_KUBELET_ARGS, iptables before start.
    let env = dir.path().join("environment");
    std::fs::write(&env, "NODEADM_KUBELET_ARGS=\"--config=/c.json\"\n").unwrap();
    let unit = units::kubelet_unit(
        &kubelet_exec(standin_binary()),
        Some(&env),
        units::DEFAULT_RESTART_SEC,
    );
    let path = write(dir.path(), &unit);
    assert_eq!(verify(path.to_str().unwrap(), None), "");
}

#[test]
fn containerd_dropins_verify_on_top_of_the_distro_unit() {
    assert!(
        Path::new("/lib/systemd/system/containerd.service").exists(),
        "Debian's containerd is missing: run scripts/setup"
    );
    for config in [None, Some(Path::new("/etc/containerd/config.toml"))] {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &units::containerd_dropin(
                Path::new("/usr/bin/containerd"),
                config,
                units::DEFAULT_RESTART_SEC,
            ),
        );
        assert_eq!(
            verify("containerd.service", Some(dir.path())),
            "",
            "drop-in with config {config:?}"
        );
    }
    // The same place is really read: a broken drop-in there is reported.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &UnitFile {
            path: units::CONTAINERD_DROPIN.into(),
            content: "[Service]\nNoSuchKey=1\n".into(),
        },
    );
    let complaints = verify("containerd.service", Some(dir.path()));
    assert!(
        complaints.contains("NoSuchKey"),
        "the drop-in directory was not read: {complaints:?}"
    );
}

#[test]
fn agent_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // Any existing executable stands in for /usr/bin/hybrid-agent, which is not installed here.
    let path = write(
        dir.path(),
        &hybrid_agent::daemon::unit::hybrid_agent_service(&standin_binary()),
    );
    assert_eq!(verify(path.to_str().unwrap(), None), "");
}

/// The files under systemd/ (what the packages ship, and what a reader looks at) are exactly the
/// default renderings, and verify once their binaries are swapped for ones that exist here.
#[test]
fn shipped_unit_files_match_the_renderings_and_verify() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let shipped = [
        hybrid_agent::daemon::unit::hybrid_agent_service(Path::new(
            hybrid_agent::daemon::unit::AGENT_BINARY,
        )),
        // As join renders it: arguments from nodeadm's environment file.
        units::kubelet_unit(
            &kubelet_exec(units::KUBELET_BINARY.into()),
            Some(Path::new(hybrid_agent::node::kubelet::ENVIRONMENT_FILE)),
            units::DEFAULT_RESTART_SEC,
        ),
        units::containerd_dropin(
            Path::new("/usr/bin/containerd"),
            None,
            units::DEFAULT_RESTART_SEC,
        ),
    ];
    for unit in &shipped {
        let file = repo.join(&unit.path);
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            text,
            unit.content,
            "{} differs from the rendering; regenerate it",
            file.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let standin = standin_binary().display().to_string();
    for name in ["hybrid-agent.service", "kubelet.service"] {
        let text = std::fs::read_to_string(repo.join(name)).unwrap();
        let text = text
            .replace(hybrid_agent::daemon::unit::AGENT_BINARY, &standin)
            .replace(units::KUBELET_BINARY, &standin);
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        assert_eq!(verify(path.to_str().unwrap(), None), "", "{name}");
    }
}

/// The `TimeoutStopSec=` of a unit's text.
fn timeout_stop_sec(text: &str) -> Duration {
    let secs = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap_or_else(|| panic!("no TimeoutStopSec= in:\n{text}"));
    Duration::from_secs(secs.trim().parse().unwrap())
}

/// With `on_agent_stop = "stop"` the agent stops kubelet, then containerd, each allowed its stop
/// timeout (built-in backend: SIGTERM grace + SIGKILL wait; systemd backend: the stop job's
/// wait), then waits for telemetry's last batch. systemd must not SIGKILL the agent before that
/// worst case is over, or the agent dies mid-stop without recording it.
#[test]
fn agent_unit_timeout_stop_covers_a_stop_with_on_agent_stop_stop() {
    use hybrid_agent::supervise::process::{KILL_WAIT, ProcessSettings};
    use hybrid_agent::supervise::systemd::DEFAULT_START_TIMEOUT;
    let components = 2;
    let builtin = (ProcessSettings::new("/unused").stop_timeout + KILL_WAIT) * components;
    let systemd = DEFAULT_START_TIMEOUT * components;
    let worst = builtin.max(systemd) + hybrid_agent::daemon::TELEMETRY_STOP_TIMEOUT;
    let rendered = hybrid_agent::daemon::unit::hybrid_agent_service(Path::new(
        hybrid_agent::daemon::unit::AGENT_BINARY,
    ))
    .content;
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/hybrid-agent.service"),
    )
    .unwrap();
    for (what, text) in [("rendered", &rendered), ("shipped", &shipped)] {
        let timeout = timeout_stop_sec(text);
        assert!(
            timeout > worst,
            "{what} hybrid-agent.service: TimeoutStopSec={} is not longer than the worst-case stop \
             of {worst:?} (kubelet + containerd at max({builtin:?}, {systemd:?}) + telemetry)",
            timeout.as_secs()
        );
        assert_eq!(timeout, hybrid_agent::daemon::AGENT_STOP_TIMEOUT, "{what}");
    }
}
