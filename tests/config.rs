//! Configuration loading and validation, exercised through the real binary: `config check`,
//! `config show` and `join` on temporary files, with the environment controlled per test.
//!
//! Every invocation's stdout and stderr is searched for the secrets the inputs contain
//! (activation codes, passwords); finding one fails the test, whatever the test is about.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

// The devstack harness, for the one `join` test.
mod install_support;

/// Activation code used by the fixtures.
const FIXTURE_CODE: &str = "Fj2KxR7pQ9mW4nVb8TzL3sYe";
/// Secrets that appear in fixtures and must never be printed.
const FIXTURE_SECRETS: &[&str] = &[FIXTURE_CODE, "Rg7hunter2Xq", "Pr0xyHunter2"];
const ACTIVATION_ID: &str = "7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
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

/// A temporary directory holding the `--root` and the input files of one test.
struct Sandbox {
    dir: tempfile::TempDir,
    secrets: RefCell<Vec<String>>,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("root")).expect("root dir");
        Self {
            dir,
            secrets: RefCell::new(FIXTURE_SECRETS.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Registers one more value that must never be printed.
    fn secret(&self, value: &str) {
        self.secrets.borrow_mut().push(value.to_owned());
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, content).expect("write input");
        path
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs the binary with `--root` set, an empty environment plus `env`, in the sandbox.
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_hybrid-agent"))
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .output()
            .expect("run hybrid-agent");
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        for secret in self.secrets.borrow().iter() {
            assert!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "secret {secret:?} leaked into the output of {args:?}:\n{run:?}"
            );
        }
        run
    }
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

fn source(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// The problem lines of an invalid run (`  - location: field: message (fix: …)`).
fn problems(run: &Run) -> Vec<&str> {
    assert_eq!(run.code, Some(1), "expected invalid configuration: {run:?}");
    run.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect()
}

/// The one problem line about `field`, which must name `file` and `line`.
fn problem_at<'a>(run: &'a Run, field: &str, file: &str, line: usize) -> &'a str {
    let found: Vec<&str> = problems(run)
        .into_iter()
        .filter(|p| p.contains(&format!(" {field}: ")))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one problem about {field}: {run:?}"
    );
    let p = found[0];
    assert!(
        p.starts_with(&format!("{file}:{line}: {field}: ")),
        "problem does not name {file}:{line}: {p}"
    );
    assert!(p.contains("(fix: "), "problem says no fix: {p}");
    p
}

fn ssm_yaml(cluster: &str, activation_id: &str, code: &str) -> String {
    format!(
        "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n{cluster}  hybrid:\n    ssm:\n      activationCode: {code}\n      activationId: {activation_id}\n"
    )
}

const CLUSTER: &str = "    name: prod\n    region: us-west-2\n";

// ------------------------------------------------------------------------------------------
// Agent config

#[test]
fn example_config_is_valid_and_documents_the_defaults() {
    let sb = Sandbox::new();
    let with_file = sb.run(&[
        "--config",
        &arg(&example_config()),
        "config",
        "show",
        "--json",
    ]);
    assert_eq!(with_file.code, Some(0), "{with_file:?}");
    let without = sb.run(&["config", "show", "--json"]);
    assert_eq!(without.code, Some(0), "{without:?}");
    assert_eq!(
        with_file.json()["agent"],
        without.json()["agent"],
        "examples/config.toml must show exactly the built-in defaults"
    );
    assert_eq!(
        with_file.json()["sources"]["agentConfig"],
        Value::String(arg(&example_config()))
    );
    assert_eq!(without.json()["sources"]["agentConfig"], Value::Null);

    let check = sb.run(&["--config", &arg(&example_config()), "config", "check"]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(
        check.stdout.starts_with("configuration is valid"),
        "{check:?}"
    );
}

#[test]
fn every_agent_setting_is_applied_with_host_paths_under_root() {
    let sb = Sandbox::new();
    let run = sb.run(&[
        "--config",
        &arg(&fixture("agent-full.toml")),
        "config",
        "show",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let agent = &run.json()["agent"];
    let root = arg(&sb.root());
    assert_eq!(
        agent["credentials"]["file"],
        format!("{root}/etc/hybrid-agent/aws/credentials")
    );
    assert_eq!(agent["credentials"]["profile"], "eks-hybrid");
    assert_eq!(agent["credentials"]["refresh_backoff_cap"], "30s");
    assert_eq!(agent["credentials"]["max_key_age"], "30d");
    assert_eq!(agent["supervisor"]["backend"], "process");
    assert_eq!(agent["supervisor"]["on_agent_stop"], "stop");
    assert_eq!(agent["spool"]["dir"], format!("{root}/srv/spool"));
    assert_eq!(agent["spool"]["max_bytes"], 1_073_741_824u64);
    assert_eq!(agent["telemetry"]["log_group"], "/site/{region}/{cluster}");
    assert_eq!(agent["telemetry"]["log_stream"], "{node}-{unit}");
    assert_eq!(agent["telemetry"]["metric_namespace"], "Site/Edge");
    assert_eq!(agent["telemetry"]["metrics_interval"], "30s");
    assert_eq!(agent["telemetry"]["flush_interval"], "2s");
    assert_eq!(
        agent["telemetry"]["units"],
        serde_json::json!(["kubelet.service", "containerd"])
    );
    assert_eq!(agent["telemetry"]["min_priority"], "warning");
    assert_eq!(
        agent["artifacts"]["mirror_url"],
        "https://mirror.example.internal/eks"
    );
    assert_eq!(
        agent["network"]["proxy"],
        "http://agent:***@proxy.example.internal:3128/"
    );
    assert_eq!(
        agent["network"]["no_proxy"],
        serde_json::json!(["169.254.169.254", ".internal"])
    );
    assert_eq!(
        agent["network"]["ca_bundle"],
        format!("{root}/etc/pki/corp-root.pem")
    );
    for (service, port) in [
        ("ssm", 4001),
        ("logs", 4002),
        ("cloudwatch", 4003),
        ("eks", 4004),
        ("sts", 4005),
        ("rolesanywhere", 4006),
    ] {
        assert_eq!(
            agent["endpoints"][service]["url"],
            format!("http://127.0.0.1:{port}/"),
            "{service}"
        );
        assert_eq!(
            agent["endpoints"][service]["origin"]["from"], "file",
            "{service}"
        );
    }
}

#[test]
fn default_agent_config_location_is_under_root() {
    let sb = Sandbox::new();
    sb.write(
        "root/etc/hybrid-agent/config.toml",
        "[spool]\nmax_bytes = 8388608\n",
    );
    let run = sb.run(&["config", "show", "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["agent"]["spool"]["max_bytes"], 8_388_608u64);
    assert_eq!(
        run.json()["sources"]["agentConfig"],
        arg(&sb.root().join("etc/hybrid-agent/config.toml"))
    );
}

#[test]
fn bad_on_agent_stop_names_field_line_and_the_choices() {
    let sb = Sandbox::new();
    let path = sb.write(
        "agent.toml",
        "[supervisor]\nbackend = \"process\"\non_agent_stop = \"kill\"\n",
    );
    let run = sb.run(&["--config", &arg(&path), "config", "check"]);
    let p = problem_at(&run, "supervisor.on_agent_stop", &arg(&path), 3);
    assert!(
        p.contains("leave-running") && p.contains("stop"),
        "the accepted values should be named: {p}"
    );
}

#[test]
fn unknown_toml_field_names_field_file_and_line() {
    let sb = Sandbox::new();
    let path = sb.write(
        "agent.toml",
        "[credentials]\nprofile = \"default\"\nprofle = \"typo\"\n",
    );
    let run = sb.run(&["--config", &arg(&path), "config", "check"]);
    let p = problem_at(&run, "credentials.profle", &arg(&path), 3);
    assert!(p.contains("unknown field `profle`"), "{p}");
    assert!(
        p.contains("`profile`"),
        "the known fields should be suggested: {p}"
    );
}

#[test]
fn malformed_toml_names_file_and_line() {
    let sb = Sandbox::new();
    let path = sb.write(
        "agent.toml",
        "[spool]\nmax_bytes = 1048576\n[telemetry\nunits = []\n",
    );
    let run = sb.run(&["--config", &arg(&path), "config", "check"]);
    let found = problems(&run);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(&format!("{}:3: TOML syntax error", arg(&path)))),
        "{run:?}"
    );
}

#[test]
fn explicit_agent_config_must_exist_and_is_named() {
    let sb = Sandbox::new();
    let run = sb.run(&["--config", "missing.toml", "config", "check"]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with("missing.toml: cannot read the agent config"),
        "{run:?}"
    );
}

#[test]
fn every_agent_config_problem_is_listed() {
    let sb = Sandbox::new();
    let path = sb.write(
        "agent.toml",
        "[credentials]\nfile = \"relative/creds\"\nrefresh_backoff_cap = \"2h\"\n\n[spool]\nmax_bytes = \"big\"\n\n[telemetry]\nlog_group = \"/aws/{clutser}\"\nmin_priority = \"loud\"\n\n[network]\nproxy = \"ftp://proxy\"\n",
    );
    let run = sb.run(&["--config", &arg(&path), "config", "check"]);
    let file = arg(&path);
    problem_at(&run, "credentials.file", &file, 2);
    problem_at(&run, "credentials.refresh_backoff_cap", &file, 3);
    problem_at(&run, "spool.max_bytes", &file, 6);
    problem_at(&run, "telemetry.log_group", &file, 9);
    problem_at(&run, "telemetry.min_priority", &file, 10);
    problem_at(&run, "network.proxy", &file, 13);
    assert_eq!(problems(&run).len(), 6, "{run:?}");
}

#[test]
fn ssm_presence_interval_is_applied_and_bounded() {
    let sb = Sandbox::new();
    let path = sb.write("agent.toml", "[daemon]\nssm_presence_interval = \"1s\"\n");
    let run = sb.run(&["--config", &arg(&path), "config", "show", "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["agent"]["daemon"]["ssm_presence_interval"], "1s");
    let default = sb.run(&["config", "show", "--json"]);
    assert_eq!(
        default.json()["agent"]["daemon"]["ssm_presence_interval"],
        "300s"
    );
    for bad in ["0s", "2h"] {
        let path = sb.write(
            "agent.toml",
            &format!("[daemon]\nstartup_jitter = \"0s\"\nssm_presence_interval = \"{bad}\"\n"),
        );
        let run = sb.run(&["--config", &arg(&path), "config", "check"]);
        problem_at(&run, "daemon.ssm_presence_interval", &arg(&path), 3);
        assert_eq!(problems(&run).len(), 1, "{run:?}");
    }
}

#[test]
fn a_socks_proxy_is_refused_with_what_to_give_instead() {
    let sb = Sandbox::new();
    let path = sb.write(
        "agent.toml",
        "[network]\nproxy = \"socks5h://gateway:1080\"\n",
    );
    let run = sb.run(&["--config", &arg(&path), "config", "check"]);
    problem_at(&run, "network.proxy", &arg(&path), 2);
    assert!(
        run.stderr.contains("SOCKS") && run.stderr.contains("http://host:port"),
        "{run:?}"
    );
    assert_eq!(problems(&run).len(), 1, "{run:?}");
}

// ------------------------------------------------------------------------------------------
// Endpoints

#[test]
fn endpoint_environment_wins_over_file_and_specific_over_global() {
    let sb = Sandbox::new();
    let path = sb.write(
        "agent.toml",
        "[endpoints]\nssm = \"http://127.0.0.1:1001\"\neks = \"http://127.0.0.1:1002\"\n",
    );
    let args = [
        "--config",
        &arg(&path),
        "config",
        "check",
        "--config-source",
        &source(&fixture("nodeconfig-ssm.yaml")),
    ];
    let run = sb.run_env(
        &args,
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:2000"),
            ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:3000"),
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let line = |service: &str| -> String {
        run.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{service} ")))
            .unwrap_or_else(|| panic!("no endpoint line for {service}: {run:?}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("ssm"),
        "http://127.0.0.1:3000/ (environment AWS_ENDPOINT_URL_SSM)"
    );
    assert_eq!(
        line("eks"),
        "http://127.0.0.1:2000/ (environment AWS_ENDPOINT_URL)"
    );
    assert_eq!(
        line("logs"),
        "http://127.0.0.1:2000/ (environment AWS_ENDPOINT_URL)"
    );

    // Without the environment the file applies, and unset services use the AWS default.
    let run = sb.run(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("http://127.0.0.1:1001/ (agent config [endpoints])"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("https://logs.us-west-2.amazonaws.com/ (AWS default)"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("https://monitoring.us-west-2.amazonaws.com/ (AWS default)"),
        "{run:?}"
    );
}

#[test]
fn plain_http_endpoint_off_loopback_is_refused_unless_allowed() {
    let sb = Sandbox::new();
    let node = ["config", "check", "--config-source"];
    let fixture = source(&fixture("nodeconfig-ssm.yaml"));
    let mut args: Vec<&str> = node.to_vec();
    args.push(&fixture);

    // Off loopback: the activation code and credentials would cross the network in cleartext.
    let run = sb.run_env(
        &args,
        &[("AWS_ENDPOINT_URL_SSM", "http://10.20.30.40:4566")],
    );
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with("environment variable AWS_ENDPOINT_URL_SSM: ")
            && found[0].contains("http://10.20.30.40:4566")
            && found[0].contains("allow_insecure_endpoints"),
        "{run:?}"
    );
    let path = sb.write(
        "agent.toml",
        "[endpoints]\nrolesanywhere = \"http://ra.example.internal:8080\"\n",
    );
    let mut with_file = vec!["--config", path.to_str().expect("utf-8 path")];
    with_file.extend_from_slice(&args);
    let run = sb.run(&with_file);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(found[0].contains("endpoints.rolesanywhere"), "{run:?}");

    // The explicit opt-in accepts them, with a warning naming each one.
    sb.write(
        "agent.toml",
        "[endpoints]\nallow_insecure_endpoints = true\nrolesanywhere = \"http://ra.example.internal:8080\"\n",
    );
    let run = sb.run_env(
        &with_file,
        &[("AWS_ENDPOINT_URL_SSM", "http://10.20.30.40:4566")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    for shown in [
        "http://10.20.30.40:4566/",
        "http://ra.example.internal:8080/",
    ] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(shown) && l.contains("plain HTTP")),
            "no warning for {shown}: {run:?}"
        );
    }

    // Loopback stays allowed (local stand-ins), still with a warning.
    let run = sb.run_env(&args, &[("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("http://127.0.0.1:4566/")),
        "{run:?}"
    );
}

#[test]
fn malformed_endpoint_variable_is_named() {
    let sb = Sandbox::new();
    let run = sb.run_env(
        &["config", "check"],
        &[("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "not a url")],
    );
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with("environment variable AWS_ENDPOINT_URL_CLOUDWATCH_LOGS: "),
        "{run:?}"
    );
}

// ------------------------------------------------------------------------------------------
// NodeConfig: valid inputs

#[test]
fn ssm_nodeconfig_passes_with_a_summary() {
    let sb = Sandbox::new();
    let run = sb.run(&[
        "config",
        "check",
        "--config-source",
        &source(&fixture("nodeconfig-ssm.yaml")),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    for expected in [
        "cluster:        prod-cluster",
        "region:         us-west-2",
        &format!("provider:       ssm (SSM hybrid activation {ACTIVATION_ID})"),
        "node identity:  SSM managed-instance id",
        "ssm            https://ssm.us-west-2.amazonaws.com/ (AWS default)",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected:?}: {run:?}"
        );
    }
}

#[test]
fn iam_roles_anywhere_nodeconfig_passes_with_paths_under_root() {
    let sb = Sandbox::new();
    let check = sb.run(&[
        "config",
        "check",
        "-c",
        &source(&fixture("nodeconfig-iam-ra.yaml")),
    ]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.stdout.contains("provider:       iam-ra"), "{check:?}");
    assert!(
        check.stdout.contains("node identity:  nodeName `edge-01`"),
        "{check:?}"
    );
    assert!(
        check
            .stdout
            .contains("https://rolesanywhere.eu-central-1.amazonaws.com/"),
        "{check:?}"
    );

    let show = sb.run(&[
        "config",
        "show",
        "--json",
        "-c",
        &source(&fixture("nodeconfig-iam-ra.yaml")),
    ]);
    assert_eq!(show.code, Some(0), "{show:?}");
    let provider = &show.json()["node"]["provider"];
    assert_eq!(provider["type"], "iamRolesAnywhere");
    assert_eq!(provider["nodeName"], "edge-01");
    let root = arg(&sb.root());
    assert_eq!(
        provider["certificatePath"],
        format!("{root}/etc/certificates/iam/pki/edge-01.crt")
    );
    assert_eq!(
        provider["privateKeyPath"],
        format!("{root}/etc/certificates/iam/pki/edge-01.key")
    );
    assert_eq!(show.json()["node"]["enableCredentialsFile"], true);
}

#[test]
fn nodeadm_file_with_every_field_is_accepted() {
    let sb = Sandbox::new();
    let run = sb.run(&[
        "config",
        "show",
        "--json",
        "-c",
        &source(&fixture("nodeconfig-every-field.yaml")),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let node = &run.json()["node"];
    assert_eq!(node["cluster"]["apiServerEndpoint"], "https://example.com/");
    assert_eq!(
        node["cluster"]["certificateAuthority"],
        "Y2VydGlmaWNhdGVBdXRob3JpdHk="
    );
    assert_eq!(node["cluster"]["cidr"], "10.100.0.0/16");
    assert_eq!(node["kubelet"]["config"]["maxPods"], 110);
    assert_eq!(
        node["containerd"]["baseRuntimeSpec"]["process"]["rlimits"][0]["soft"],
        1024
    );
    assert_eq!(node["featureGates"]["InstanceIdNodeName"], true);
    // The registry password inside the inline containerd TOML is redacted, the rest kept.
    let containerd = node["containerd"]["config"]
        .as_str()
        .expect("containerd config shown");
    assert!(containerd.contains("username = \"puller\""), "{containerd}");
    assert!(containerd.contains("password = \"***\""), "{containerd}");
}

#[test]
fn relative_config_source_is_relative_to_the_current_directory() {
    let sb = Sandbox::new();
    sb.write("node.yaml", &ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE));
    let run = sb.run(&["config", "check", "-c", "file://node.yaml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("node settings:  node.yaml"), "{run:?}");
}

// ------------------------------------------------------------------------------------------
// NodeConfig: flags and secrets

#[test]
fn flags_alone_make_a_config_and_the_code_file_is_read() {
    let sb = Sandbox::new();
    let code = sb.write("code.txt", &format!("{FIXTURE_CODE}\n"));
    let run = sb.run(&[
        "config",
        "show",
        "--json",
        "--cluster",
        "prod",
        "--region",
        "us-east-1",
        "--activation-id",
        ACTIVATION_ID,
        "--activation-code-file",
        &arg(&code),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let node = &run.json()["node"];
    assert_eq!(node["cluster"]["name"], "prod");
    assert_eq!(node["cluster"]["region"], "us-east-1");
    assert_eq!(node["provider"]["activationId"], ACTIVATION_ID);
    assert_eq!(node["provider"]["activationCode"], "***");
    assert_eq!(run.json()["sources"]["nodeConfig"], Value::Null);
}

#[test]
fn flags_override_file_values_and_problems_name_the_flag() {
    let sb = Sandbox::new();
    let path = sb.write("node.yaml", &ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE));
    let run = sb.run(&[
        "config",
        "show",
        "--json",
        "-c",
        &source(&path),
        "--region",
        "eu-west-1",
        "--cluster",
        "other",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["node"]["cluster"]["region"], "eu-west-1");
    assert_eq!(run.json()["node"]["cluster"]["name"], "other");

    let run = sb.run(&[
        "config",
        "check",
        "-c",
        &source(&path),
        "--activation-id",
        "bad-id",
    ]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with(
            "flag --activation-id: spec.hybrid.ssm.activationId: the value given (6 characters) is not a UUID"
        ),
        "{run:?}"
    );
}

#[test]
fn activation_code_given_as_the_activation_id_is_never_printed() {
    // A code pasted into the id's place is rejected without echoing it (the sandbox checks
    // every output for FIXTURE_CODE).
    let sb = Sandbox::new();
    let path = sb.write("node.yaml", &ssm_yaml(CLUSTER, FIXTURE_CODE, FIXTURE_CODE));
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(found[0].contains("is not a UUID"), "{run:?}");
    let path = sb.write("node.yaml", &ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE));
    let run = sb.run(&[
        "config",
        "check",
        "-c",
        &source(&path),
        "--activation-id",
        FIXTURE_CODE,
    ]);
    assert_eq!(problems(&run).len(), 1, "{run:?}");
}

#[test]
fn activation_code_from_environment_or_flag_is_never_printed() {
    let sb = Sandbox::new();
    let base = [
        "config",
        "show",
        "--cluster",
        "prod",
        "--region",
        "us-west-2",
        "--activation-id",
        ACTIVATION_ID,
    ];

    let run = sb.run_env(&base, &[("HYBRID_AGENT_ACTIVATION_CODE", FIXTURE_CODE)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("activationCode: '***'"), "{run:?}");

    let mut with_flag = base.to_vec();
    with_flag.extend(["--activation-code", FIXTURE_CODE]);
    let run = sb.run(&with_flag);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .contains("--activation-code shows the activation code"),
        "no warning: {run:?}"
    );
    assert!(run.stderr.contains("ps"), "{run:?}");
}

#[test]
fn environment_code_does_not_override_the_file_or_an_iam_ra_node() {
    let sb = Sandbox::new();
    let other = "ZZZZZZZZZZZZZZZZZZZZZZZZZZ";
    sb.secret(other);
    // The file's code wins: a short code in the environment would otherwise be an error.
    let run = sb.run_env(
        &[
            "config",
            "check",
            "-c",
            &source(&fixture("nodeconfig-ssm.yaml")),
        ],
        &[("HYBRID_AGENT_ACTIVATION_CODE", "short")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    // An IAM Roles Anywhere node is not turned into "both providers set".
    let run = sb.run_env(
        &[
            "config",
            "check",
            "-c",
            &source(&fixture("nodeconfig-iam-ra.yaml")),
        ],
        &[("HYBRID_AGENT_ACTIVATION_CODE", other)],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn unreadable_activation_code_file_is_named() {
    let sb = Sandbox::new();
    let run = sb.run(&[
        "config",
        "check",
        "--cluster",
        "prod",
        "--region",
        "us-west-2",
        "--activation-id",
        ACTIVATION_ID,
        "--activation-code-file",
        "no-such-code.txt",
    ]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(found[0].starts_with("flag --activation-code-file: spec.hybrid.ssm.activationCode: cannot read activation code file no-such-code.txt"), "{run:?}");
}

#[test]
fn mistyped_activation_code_is_not_echoed() {
    let sb = Sandbox::new();
    // A number (unquoted digits) where a string is expected: reported by type, not value.
    let numeric = "12345678901234567890";
    sb.secret(numeric);
    let path = sb.write("node.yaml", &ssm_yaml(CLUSTER, ACTIVATION_ID, numeric));
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid.ssm.activationCode", &arg(&path), 9);
    assert!(p.contains("not shown"), "{p}");

    // Too many digits for any integer: the YAML parser itself fails and would quote the value.
    let huge = "123456789012345678901234";
    sb.secret(huge);
    let path = sb.write("node2.yaml", &ssm_yaml(CLUSTER, ACTIVATION_ID, huge));
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with(&format!("{}:9: YAML syntax error", arg(&path))),
        "{run:?}"
    );
}

// ------------------------------------------------------------------------------------------
// NodeConfig: one test per kind of mistake

#[test]
fn unknown_yaml_field_names_field_file_line_and_the_near_miss() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        &ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE).replace("activationId:", "activationIdd:"),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid.ssm.activationIdd", &arg(&path), 10);
    assert!(p.contains("unknown field `activationIdd`"), "{p}");
    assert!(p.contains("did you mean `activationId`?"), "{p}");

    // A key that is nothing like a field gets no guess.
    let path = sb.write(
        "far.yaml",
        &ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE)
            .replace("  hybrid:", "  bogus: 1\n  hybrid:"),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.bogus", &arg(&path), 7);
    assert!(
        p.contains("(fix: remove the field or correct its spelling)"),
        "{p}"
    );
}

#[test]
fn activation_id_must_be_a_uuid() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        &ssm_yaml(CLUSTER, "7c4e5b8a1f2d4c3b9a8e0123456789ab", FIXTURE_CODE),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid.ssm.activationId", &arg(&path), 10);
    assert!(p.contains("is not a UUID"), "{p}");
    assert_eq!(problems(&run).len(), 1, "{run:?}");
}

#[test]
fn activation_code_must_have_twenty_characters() {
    let sb = Sandbox::new();
    let short = "Abc123Def456Ghi7890"; // 19 characters
    sb.secret(short);
    let path = sb.write("node.yaml", &ssm_yaml(CLUSTER, ACTIVATION_ID, short));
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid.ssm.activationCode", &arg(&path), 9);
    assert!(p.contains("19 characters"), "{p}");
    assert!(p.contains("at least 20"), "{p}");
}

#[test]
fn ssm_and_iam_roles_anywhere_together_are_rejected() {
    let sb = Sandbox::new();
    let yaml = format!(
        "{}    iamRolesAnywhere:\n      nodeName: edge-01\n",
        ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE)
    );
    let path = sb.write("node.yaml", &yaml);
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid", &arg(&path), 7);
    assert!(
        p.contains("both ssm") && p.contains("iamRolesAnywhere"),
        "{p}"
    );
    assert!(p.contains("mutually exclusive"), "{p}");
}

#[test]
fn a_provider_is_required() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        &format!("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n{CLUSTER}  hybrid:\n    enableCredentialsFile: true\n"),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid", &arg(&path), 7);
    assert!(p.contains("neither ssm nor iamRolesAnywhere"), "{p}");
    assert!(
        p.contains("--activation-id"),
        "the fix should name the flags too: {p}"
    );
}

#[test]
fn cluster_name_is_required() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        &ssm_yaml("    region: us-west-2\n", ACTIVATION_ID, FIXTURE_CODE),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.cluster.name", &arg(&path), 4);
    assert!(p.contains("is missing") && p.contains("--cluster"), "{p}");
    assert_eq!(problems(&run).len(), 1, "{run:?}");
}

#[test]
fn region_is_required() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        &ssm_yaml("    name: prod\n", ACTIVATION_ID, FIXTURE_CODE),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.cluster.region", &arg(&path), 4);
    assert!(p.contains("is missing") && p.contains("--region"), "{p}");
}

#[test]
fn hostname_override_in_kubelet_flags_is_rejected() {
    let sb = Sandbox::new();
    let yaml = format!(
        "{}  kubelet:\n    flags:\n      - --node-labels=a=b\n      - --hostname-override=my-box\n",
        ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE)
    );
    let path = sb.write("node.yaml", &yaml);
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.kubelet.flags[1]", &arg(&path), 14);
    assert!(p.contains("--hostname-override"), "{p}");
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        "apiVersion: node.eks.aws/v1alpha1\nspec:\n  cluster:\n    name: x\n   region: [\n",
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with(&format!("{}:5: YAML syntax error", arg(&path))),
        "{run:?}"
    );
}

#[test]
fn missing_nodeconfig_file_is_named() {
    let sb = Sandbox::new();
    let run = sb.run(&["config", "check", "-c", "file:///no/such/nodeconfig.yaml"]);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{run:?}");
    assert!(
        found[0].starts_with("/no/such/nodeconfig.yaml: cannot read the NodeConfig"),
        "{run:?}"
    );
}

#[test]
fn config_source_must_be_a_file_url() {
    let sb = Sandbox::new();
    for bad in [
        "https://example.com/node.yaml",
        "imds://user-data",
        "/etc/node.yaml",
    ] {
        let run = sb.run(&["config", "check", "--config-source", bad]);
        let found = problems(&run);
        assert_eq!(found.len(), 1, "{run:?}");
        assert!(found[0].starts_with("flag --config-source: "), "{run:?}");
        assert!(found[0].contains("file://"), "{run:?}");
    }
}

#[test]
fn several_problems_in_one_file_are_all_listed() {
    let sb = Sandbox::new();
    let short = "tooShort";
    sb.secret(short);
    let yaml = "\
apiVersion: node.eks.aws/v1alpha1
kind: NodeConfig
spec:
  cluster:
    nmae: prod
    region: us-west2
  kubelet:
    flags: [--hostname-override=x]
  hybrid:
    ssm:
      activationCode: tooShort
      activationId: not-a-uuid
  featureGatez: {}
";
    let path = sb.write("node.yaml", yaml);
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let file = arg(&path);
    problem_at(&run, "spec.cluster.nmae", &file, 5);
    problem_at(&run, "spec.featureGatez", &file, 13);
    problem_at(&run, "spec.cluster.name", &file, 4);
    problem_at(&run, "spec.cluster.region", &file, 6);
    problem_at(&run, "spec.kubelet.flags[0]", &file, 8);
    problem_at(&run, "spec.hybrid.ssm.activationCode", &file, 11);
    problem_at(&run, "spec.hybrid.ssm.activationId", &file, 12);
    assert_eq!(problems(&run).len(), 7, "{run:?}");
    assert!(
        run.stderr.contains("invalid configuration: 7 problems"),
        "{run:?}"
    );
}

/// A spool must hold a maximum PutLogEvents batch in spool form beside the metrics' share: 2 MiB
/// does not (1 MiB did before, and left less than one batch).
#[test]
fn spool_too_small_for_a_full_batch_is_refused() {
    let sb = Sandbox::new();
    let agent = sb.write("agent.toml", "[spool]\nmax_bytes = 2097152\n");
    let run = sb.run(&["--config", &arg(&agent), "config", "show", "--json"]);
    problem_at(&run, "spool.max_bytes", &arg(&agent), 2);
}

#[test]
fn agent_and_node_problems_are_reported_together() {
    let sb = Sandbox::new();
    let agent = sb.write("agent.toml", "[spool]\nmax_bytes = 10\n");
    let node = sb.write(
        "node.yaml",
        &ssm_yaml("    name: prod\n", ACTIVATION_ID, FIXTURE_CODE),
    );
    let run = sb.run(&["--config", &arg(&agent), "join", "-c", &source(&node)]);
    problem_at(&run, "spool.max_bytes", &arg(&agent), 2);
    problem_at(&run, "spec.cluster.region", &arg(&node), 4);
}

// ------------------------------------------------------------------------------------------
// NodeConfig: what nodeadm accepts is accepted. nodeadm reads `--config-source file://` with
// sigs.k8s.io/yaml UnmarshalStrict into its internal NodeConfig (internal/configprovider/file.go,
// internal/api/bridge/decode.go): go-yaml v2 (YAML 1.1), then encoding/json with case-insensitive
// keys and unknown fields refused.

/// `config check` accepts the NodeConfig `yaml`; returns the node half of `config show --json`.
fn accepted(sb: &Sandbox, yaml: &str) -> Value {
    let path = sb.write("node.yaml", yaml);
    let check = sb.run(&["config", "check", "-c", &source(&path)]);
    assert_eq!(
        check.code,
        Some(0),
        "nodeadm accepts this file:\n{yaml}\n{check:?}"
    );
    assert!(
        check.stdout.starts_with("configuration is valid"),
        "{check:?}"
    );
    let show = sb.run(&["config", "show", "--json", "-c", &source(&path)]);
    assert_eq!(show.code, Some(0), "{show:?}");
    show.json()["node"].clone()
}

const TRUST_ANCHOR: &str = "arn:aws:rolesanywhere:eu-central-1:111122223333:trust-anchor/0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
const PROFILE: &str =
    "arn:aws:rolesanywhere:eu-central-1:111122223333:profile/9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0";
const ROLE: &str = "arn:aws:iam::111122223333:role/AmazonEKSHybridNodesRole";

#[test]
fn activation_id_spelled_activation_capital_id_is_accepted() {
    let sb = Sandbox::new();
    let node = accepted(
        &sb,
        &ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE).replace("activationId:", "activationID:"),
    );
    assert_eq!(node["provider"]["type"], "ssm");
    assert_eq!(node["provider"]["activationId"], ACTIVATION_ID);
}

#[test]
fn iam_roles_anywhere_arn_keys_and_any_case_of_known_keys_are_accepted() {
    let sb = Sandbox::new();
    let yaml = format!(
        "APIVersion: node.eks.aws/v1alpha1\nKind: NodeConfig\nSpec:\n  Cluster:\n    NAME: edge\n    Region: eu-central-1\n  hybrid:\n    IAMRolesAnywhere:\n      NodeName: edge-01\n      trustAnchorARN: {TRUST_ANCHOR}\n      profileARN: {PROFILE}\n      roleARN: {ROLE}\n      AWSConfigPath: /etc/aws/hybrid/config\n"
    );
    let node = accepted(&sb, &yaml);
    assert_eq!(node["cluster"]["name"], "edge");
    assert_eq!(node["cluster"]["region"], "eu-central-1");
    let provider = &node["provider"];
    assert_eq!(provider["type"], "iamRolesAnywhere");
    assert_eq!(provider["nodeName"], "edge-01");
    assert_eq!(provider["trustAnchorArn"], TRUST_ANCHOR);
    assert_eq!(provider["profileArn"], PROFILE);
    assert_eq!(provider["roleArn"], ROLE);
    assert_eq!(
        provider["awsConfigPath"],
        format!("{}/etc/aws/hybrid/config", arg(&sb.root()))
    );
}

/// The base64 of a small PEM, as `base64` prints it: wrapped at 76 columns.
const CA_LINES: [&str; 3] = [
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVUTJ4MWMzUmxj",
    "a05CWm05eVZHVnpkSE13Q2dZSUtvWkl6ajBFQXdJdwotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0t",
    "Cg==",
];

#[test]
fn line_wrapped_certificate_authority_is_accepted() {
    let sb = Sandbox::new();
    let one_line = CA_LINES.concat();
    // A literal block keeps the line breaks (nodeadm: Go's base64 skips \r and \n); a plain
    // scalar over several lines folds them into spaces (nodeadm refuses that; the bytes meant
    // are the same, so it is accepted too).
    for (style, value) in [
        (
            "literal block",
            format!("|\n      {}\n", CA_LINES.join("\n      ")),
        ),
        ("plain, folded", format!("{}\n", CA_LINES.join("\n      "))),
        ("quoted with \\n", format!("\"{}\"\n", CA_LINES.join("\\n"))),
    ] {
        let cluster =
            format!("    name: prod\n    region: us-west-2\n    certificateAuthority: {value}");
        let node = accepted(&sb, &ssm_yaml(&cluster, ACTIVATION_ID, FIXTURE_CODE));
        assert_eq!(node["cluster"]["certificateAuthority"], one_line, "{style}");
    }
}

#[test]
fn yaml_1_1_booleans_are_read_as_nodeadm_reads_them() {
    let sb = Sandbox::new();
    // go-yaml v2's resolve table (go.yaml.in/yaml/v2 resolve.go).
    for (word, expected) in [
        ("yes", true),
        ("Yes", true),
        ("on", true),
        ("ON", true),
        ("y", true),
        ("True", true),
        ("no", false),
        ("off", false),
        ("N", false),
        ("FALSE", false),
    ] {
        let yaml = ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE).replace(
            "  hybrid:\n",
            &format!("  hybrid:\n    enableCredentialsFile: {word}\n"),
        ) + &format!("  kubelet:\n    config:\n      serializeImagePulls: {word}\n");
        let node = accepted(&sb, &yaml);
        assert_eq!(node["enableCredentialsFile"], expected, "{word}");
        // Inside kubelet's own config too: go-yaml resolves them before any field is known.
        assert_eq!(
            node["kubelet"]["config"]["serializeImagePulls"], expected,
            "{word}"
        );
    }
}

#[test]
fn numbers_in_text_fields_are_read_as_text() {
    let sb = Sandbox::new();
    // sigs.k8s.io/yaml turns a number into its text where the field is a string.
    let node = accepted(
        &sb,
        &(ssm_yaml(
            "    name: 20240501\n    region: us-west-2\n",
            ACTIVATION_ID,
            FIXTURE_CODE,
        ) + "  kubelet:\n    flags: [--v=2, 10]\n"),
    );
    assert_eq!(node["cluster"]["name"], "20240501");
    assert_eq!(node["kubelet"]["flags"][1], "10");
}

#[test]
fn status_section_is_accepted_and_checked_for_typos() {
    let sb = Sandbox::new();
    let status = "status:\n  instance:\n    id: i-0123\n    type: m5.large\n    privateDnsName: ip-10-0-0-1\n  hybrid:\n    nodeName: mi-0123456789abcdef0\n  default:\n    sandboxImage: 602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5\n";
    let node = accepted(
        &sb,
        &(ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE) + status),
    );
    assert_eq!(node["provider"]["type"], "ssm");
    assert!(
        node.get("status").is_none(),
        "status is not the agent's: {node}"
    );

    // nodeadm decodes status strictly too.
    let path = sb.write(
        "typo.yaml",
        &(ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE)
            + &status.replace("sandboxImage", "sandboxImg")),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "status.default.sandboxImg", &arg(&path), 19);
    assert!(p.contains("did you mean `sandboxImage`?"), "{p}");
}

#[test]
fn api_version_and_kind_are_not_required_as_nodeadm_does_not_check_them() {
    let sb = Sandbox::new();
    let full = ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE);
    let without = full.replace("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n", "");
    assert!(without.starts_with("spec:"));
    let other_case = full
        .replace(
            "apiVersion: node.eks.aws/v1alpha1",
            "apiversion: Node.EKS.aws/V1Alpha1",
        )
        .replace("kind: NodeConfig", "KIND: nodeconfig");
    for yaml in [&without, &other_case] {
        let path = sb.write("node.yaml", yaml);
        let run = sb.run(&["config", "check", "-c", &source(&path)]);
        assert_eq!(run.code, Some(0), "{yaml}\n{run:?}");
        assert!(!run.stderr.contains("WARN"), "{run:?}");
    }

    // Another value: nodeadm reads the file all the same; a warning names the line.
    let other = full
        .replace("node.eks.aws/v1alpha1", "node.eks.aws/v1beta1")
        .replace("kind: NodeConfig", "kind: NodeConfiguration");
    let path = sb.write("node.yaml", &other);
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let file = arg(&path);
    assert!(
        run.stderr
            .contains(&format!("apiVersion is `node.eks.aws/v1beta1` ({file}:1)")),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains(&format!("kind is `NodeConfiguration` ({file}:2)")),
        "{run:?}"
    );
}

#[test]
fn problems_in_a_case_folded_key_name_the_key_as_written() {
    let sb = Sandbox::new();
    let path = sb.write(
        "node.yaml",
        &ssm_yaml(CLUSTER, "not-a-uuid", FIXTURE_CODE).replace("activationId:", "ActivationID:"),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid.ssm.ActivationID", &arg(&path), 10);
    assert!(p.contains("is not a UUID"), "{p}");
    assert_eq!(problems(&run).len(), 1, "{run:?}");
}

#[test]
fn one_field_under_two_spellings_with_different_values_is_refused() {
    let sb = Sandbox::new();
    let other = "0d4e5b8a-1f2d-4c3b-9a8e-0123456789ab";
    let path = sb.write(
        "node.yaml",
        &(ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE)
            + &format!("      activationID: {other}\n")),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    let p = problem_at(&run, "spec.hybrid.ssm.activationID", &arg(&path), 11);
    assert!(p.contains("same field as `activationId` (line 10)"), "{p}");

    // The same value twice is one field written twice.
    let path = sb.write(
        "same.yaml",
        &(ssm_yaml(CLUSTER, ACTIVATION_ID, FIXTURE_CODE)
            + &format!("      activationID: {ACTIVATION_ID}\n")),
    );
    let run = sb.run(&["config", "check", "-c", &source(&path)]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn join_accepts_a_file_written_for_nodeadm() {
    let mirror = tempfile::tempdir().expect("mirror dir");
    install_support::standin_release(mirror.path(), install_support::VERSION);
    let ds = install_support::devstack(mirror.path());
    let node = install_support::Node::new(&ds, &install_support::create_activation(&ds));
    // The harness's NodeConfig, rewritten as a nodeadm user may have it: no apiVersion/kind,
    // `activationID`, keys in other cases, a YAML 1.1 boolean and a status section.
    let written = std::fs::read_to_string(&node.nodeconfig).expect("harness NodeConfig");
    let nodeadm = written
        .replace("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n", "")
        .replace("activationId:", "activationID:")
        .replace("  cluster:", "  Cluster:")
        .replace("  hybrid:\n", "  hybrid:\n    enableCredentialsFile: yes\n")
        + "status:\n  hybrid:\n    nodeName: mi-0123456789abcdef0\n";
    assert_ne!(nodeadm, written);
    std::fs::write(&node.nodeconfig, &nodeadm).expect("rewrite NodeConfig");

    let run = node.join(&ds, &["--dry-run", "--kubernetes-version", "1.31"]);
    assert_eq!(run.code, Some(0), "{nodeadm}\n{run:?}");
    assert!(
        run.stdout.contains("register with SSM activation"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("/eks-hybrid/.aws/credentials"),
        "enableCredentialsFile: yes is true: {run:?}"
    );
}
