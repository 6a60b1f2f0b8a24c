//! The command-line contract, through the real binary: help text, exit codes, usage errors,
//! logging flags, and the subcommands that report "not built yet" instead of faking success.

use std::path::{Path, PathBuf};
use std::process::Command;

const CODE: &str = "Fj2KxR7pQ9mW4nVb8TzL3sYe";
const ACTIVATION_ID: &str = "7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the binary in `dir` with an empty environment plus `env`; the activation code must never
/// appear in the output.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_hybrid-agent"))
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run hybrid-agent");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(CODE) && !run.stderr.contains(CODE),
        "activation code leaked by {args:?}:\n{run:?}"
    );
    run
}

fn run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    run_in(dir.path(), args, &[])
}

/// A sandbox with an empty `--root` and a valid NodeConfig beside it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("root")).expect("root");
        std::fs::write(
            dir.path().join("node.yaml"),
            format!(
                "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: prod\n    region: us-west-2\n  hybrid:\n    ssm:\n      activationCode: {CODE}\n      activationId: {ACTIVATION_ID}\n"
            ),
        )
        .expect("node.yaml");
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let root = self.root().display().to_string();
        let mut all = vec!["--root", root.as_str()];
        all.extend_from_slice(args);
        run_in(self.dir.path(), &all, env)
    }

    /// Every file and directory under the root (to prove nothing was written).
    fn root_entries(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
                out.push(entry.path());
                if entry.path().is_dir() {
                    walk(&entry.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root(), &mut out);
        out
    }
}

const SUBCOMMANDS: &[&[&str]] = &[
    &["join"],
    &["run"],
    &["status"],
    &["leave"],
    &["install"],
    &["upgrade"],
    &["doctor"],
    &["config"],
    &["config", "check"],
    &["config", "show"],
    &["token"],
];

#[test]
fn help_exits_zero_and_documents_exit_codes() {
    for flag in ["--help", "-h"] {
        let run = run(&[flag]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("Exit codes"), "{run:?}");
        for code in ["  0  ", "  1  ", "  2  ", "  64  "] {
            assert!(
                run.stdout.contains(code),
                "exit code {code:?} missing: {run:?}"
            );
        }
        assert!(
            run.stdout.contains(" 10  ") && run.stdout.contains("activation has expired"),
            "registration failures have their own codes: {run:?}"
        );
    }
}

#[test]
fn every_subcommand_has_real_help() {
    for sub in SUBCOMMANDS {
        let mut args = sub.to_vec();
        args.push("--help");
        let run = run(&args);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        // Long help: several lines of explanation beyond the usage line.
        assert!(
            run.stdout.lines().count() > 12,
            "{args:?} help is too thin: {run:?}"
        );
    }
    let join = run(&["join", "--help"]);
    for expected in [
        "--config-source",
        "--activation-code-file",
        "HYBRID_AGENT_ACTIVATION_CODE",
        "--trust-anchor-arn",
        "Examples:",
    ] {
        assert!(
            join.stdout.contains(expected),
            "join --help lacks {expected:?}: {join:?}"
        );
    }
    for expected in [
        "--dry-run",
        "--skip",
        "rolled back",
        "--kubernetes-version",
        "--bundle",
    ] {
        assert!(
            join.stdout.contains(expected),
            "join --help lacks {expected:?}: {join:?}"
        );
    }
    let check = run(&["config", "check", "--help"]);
    assert!(
        check.stdout.contains("--config-source") && check.stdout.contains("--cluster"),
        "{check:?}"
    );
}

#[test]
fn version_exits_zero() {
    let run = run(&["--version"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with("hybrid-agent "), "{run:?}");
}

#[test]
fn usage_errors_exit_64_not_clap_default() {
    let cases: &[&[&str]] = &[
        &[],
        &["--no-such-flag"],
        &["frobnicate"],
        &["config"],
        &["install"],
        &["install", "v1.31.0"],
        &["-v", "-q", "status"],
        &["--log-format", "xml", "status"],
        &[
            "join",
            "--activation-code",
            CODE,
            "--activation-code-file",
            "f",
        ],
    ];
    for args in cases {
        let run = run(args);
        assert_eq!(run.code, Some(64), "{args:?}: {run:?}");
        assert!(
            !run.stderr.is_empty(),
            "{args:?}: usage errors explain themselves: {run:?}"
        );
    }
}

#[test]
fn join_without_identity_fails_in_install_and_changes_nothing() {
    let sb = Sandbox::new();
    // The identity phase is skipped (tests/identity_*.rs and tests/join_*.rs register against
    // the devstack), so there are no credentials to ask EKS for the cluster's version with.
    let run = sb.run(&[
        "join",
        "--config-source",
        "file://node.yaml",
        "--skip",
        "identity",
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("join failed in the install phase"),
        "{run:?}"
    );
    assert!(run.stderr.contains("the host is as it was"), "{run:?}");
    assert!(
        sb.root_entries().is_empty(),
        "join left files under --root: {:?}",
        sb.root_entries()
    );
}

#[test]
fn join_with_invalid_config_exits_1_before_anything_else() {
    let sb = Sandbox::new();
    let run = sb.run(&["join", "--cluster", "prod", "--activation-id", "nope"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(!run.stderr.contains("not built"), "{run:?}");
    assert!(run.stderr.contains("spec.cluster.region"), "{run:?}");
    assert!(
        run.stderr.contains("spec.hybrid.ssm.activationId"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("spec.hybrid.ssm.activationCode"),
        "{run:?}"
    );
}

#[test]
fn doctor_on_a_machine_that_never_joined_is_read_only_and_says_what_it_could_not_check() {
    let sb = Sandbox::new();
    let run = sb.run(&["doctor"]);
    // The empty sandbox has no /proc/modules nor /sys/module: the kernel modules check fails.
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stdout.contains("has not joined a cluster"), "{run:?}");
    assert!(
        run.stdout.contains("skip  network") && run.stdout.contains("pass --region"),
        "{run:?}"
    );
    assert!(run.stdout.contains("FAIL  kernel modules"), "{run:?}");
    assert!(run.stderr.contains("check failed"), "{run:?}");
    assert!(
        sb.root_entries().is_empty(),
        "doctor wrote under --root: {:?}",
        sb.root_entries()
    );
}

#[test]
fn leave_install_and_upgrade_on_a_machine_that_never_joined() {
    let sb = Sandbox::new();
    let leave = sb.run(&["leave"]);
    assert_eq!(leave.code, Some(0), "{leave:?}");
    assert!(leave.stdout.contains("nothing to do"), "{leave:?}");
    // Refused before any network traffic: plain HTTP needs --allow-insecure-mirror.
    let install = sb.run(&["install", "1.31", "--mirror", "http://127.0.0.1:9/"]);
    assert_eq!(install.code, Some(3), "{install:?}");
    assert!(
        install.stderr.contains("--allow-insecure-mirror"),
        "{install:?}"
    );
    let upgrade = sb.run(&["upgrade", "--kubernetes-version", "1.32"]);
    assert_eq!(upgrade.code, Some(4), "{upgrade:?}");
    assert!(upgrade.stderr.contains("has not joined"), "{upgrade:?}");
    assert!(
        sb.root_entries().is_empty(),
        "they wrote under --root: {:?}",
        sb.root_entries()
    );
}

#[test]
fn run_and_status_on_a_machine_that_never_joined() {
    let sb = Sandbox::new();
    let run = sb.run(&["run"]);
    // 4, which hybrid-agent.service's RestartPreventExitStatus= names: no restart loop.
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr.contains("run `hybrid-agent join` first"),
        "{run:?}"
    );
    let status = sb.run(&["status"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stdout.contains("not running") && status.stdout.contains("not joined"),
        "{status:?}"
    );
    assert!(
        sb.root_entries().is_empty(),
        "run/status wrote under --root: {:?}",
        sb.root_entries()
    );
}

#[test]
fn run_install_and_doctor_reject_a_bad_agent_config() {
    let sb = Sandbox::new();
    let config = sb.dir.path().join("agent.toml");
    std::fs::write(&config, "[supervisor]\nbackend = \"docker\"\n").expect("agent.toml");
    let config = config.display().to_string();
    for args in [["run"].as_slice(), &["install", "1.31"], &["doctor"]] {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        let run = sb.run(&all);
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("supervisor.backend"),
            "{args:?}: {run:?}"
        );
    }
}

#[test]
fn config_check_exits_zero_when_valid() {
    let sb = Sandbox::new();
    let run = sb.run(&["config", "check", "-c", "file://node.yaml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with("configuration is valid"), "{run:?}");
    // Agent config alone (no node settings given).
    let run = sb.run(&["config", "check"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("node settings:  not given"), "{run:?}");
}

#[test]
fn config_show_redacts_in_yaml_and_json() {
    let sb = Sandbox::new();
    for format in [&[][..], &["--json"][..]] {
        let mut args = vec!["config", "show", "-c", "file://node.yaml"];
        args.extend_from_slice(format);
        let run = sb.run(&args);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("***"), "{run:?}");
        assert!(run.stdout.contains("activationCode"), "{run:?}");
    }
}

#[test]
fn quiet_and_verbose_control_log_lines() {
    let sb = Sandbox::new();
    let default = sb.run(&["join", "-c", "file://node.yaml", "--skip", "identity"]);
    assert!(
        default.stderr.contains("INFO"),
        "info is shown by default: {default:?}"
    );
    let quiet = sb.run(&["-q", "join", "-c", "file://node.yaml", "--skip", "identity"]);
    assert!(!quiet.stderr.contains("INFO"), "{quiet:?}");
    // The outcome is still reported at any verbosity.
    assert!(
        quiet.stderr.contains("join failed in the install phase"),
        "{quiet:?}"
    );
    assert_eq!(quiet.code, Some(3));
}

#[test]
fn json_log_format_emits_json_lines_only() {
    let sb = Sandbox::new();
    let run = sb.run(&[
        "--log-format",
        "json",
        "join",
        "-c",
        "file://node.yaml",
        "--region",
        "bad region",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(!lines.is_empty(), "{run:?}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(value["level"], "ERROR", "{line}");
        assert_eq!(value["fields"]["field"], "spec.cluster.region", "{line}");
        assert_eq!(value["fields"]["location"], "flag --region", "{line}");
    }
}

#[test]
fn activation_code_flag_warns_about_ps() {
    let sb = Sandbox::new();
    let run = sb.run(&[
        "join",
        "--cluster",
        "prod",
        "--region",
        "us-west-2",
        "--activation-id",
        ACTIVATION_ID,
        "--activation-code",
        CODE,
        "--skip",
        "identity",
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("WARN"), "{run:?}");
    assert!(run.stderr.contains("`ps`"), "{run:?}");
}

#[test]
fn activation_code_from_environment_is_accepted() {
    let sb = Sandbox::new();
    let run = sb.run_env(
        &[
            "join",
            "--cluster",
            "prod",
            "--region",
            "us-west-2",
            "--activation-id",
            ACTIVATION_ID,
            "--skip",
            "identity",
        ],
        &[("HYBRID_AGENT_ACTIVATION_CODE", CODE)],
    );
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(!run.stderr.contains("WARN"), "{run:?}");
}

/// A failure while committing (saving the join record) is reported as the commit, not as the
/// wait for kubelet that had already succeeded.
#[test]
fn a_commit_failure_is_reported_as_the_commit_phase() {
    let sb = Sandbox::new();
    // Every phase skipped: the run goes straight to the commit, which merges into the join
    // journal; an unparsable one makes that fail.
    let state = sb.root().join("var/lib/hybrid-agent");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("join-journal.json"), "{ not json").expect("journal");
    let run = sb.run(&[
        "join",
        "--config-source",
        "file://node.yaml",
        "--skip",
        "preflight,identity,install,render,start,wait",
    ]);
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains("join failed in the commit phase"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("wait phase"), "{run:?}");
}

/// `leave` stops the daemon that the state file names, and only that process: a pid that now
/// belongs to another program, even one whose name contains "hybrid-agent", is never signalled.
#[test]
fn leave_never_signals_a_process_that_only_looks_like_the_daemon() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    // A decoy: `sleep` under the name hybrid-agent-decoy (argv0), as the pid of a crashed daemon
    // could be reused by any program.
    let mut decoy = Command::new("sleep")
        .arg0("/usr/bin/hybrid-agent-decoy")
        .arg("60")
        .spawn()
        .expect("spawn decoy");
    let state = sb.root().join("var/lib/hybrid-agent");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(
        state.join("daemon.json"),
        format!(
            "{{\"pid\": {}, \"started_at\": \"2026-01-01T00:00:00Z\", \"updated_at\": \"2026-01-01T00:00:00Z\"}}",
            decoy.id()
        ),
    )
    .expect("daemon.json");
    let leave = sb.run(&["leave", "--force"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let still_running = decoy.try_wait().expect("try_wait").is_none();
    let _ = decoy.kill();
    let _ = decoy.wait();
    assert!(still_running, "leave signalled the decoy: {leave:?}");
    assert!(leave.stdout.contains("not running"), "{leave:?}");
}
