//! The agent's own log in the systemd journal (src/logging.rs), against a journald started by
//! hand (docs/testing.md "Hand-started journald", the telemetry tests' harness): `hybrid-agent run` whose stderr is the
//! stream `JOURNAL_STREAM` names writes structured entries — PRIORITY, SYSLOG_IDENTIFIER,
//! CODE_FILE, CODE_LINE, NODE_NAME, SUBSYSTEM — that `journalctl NODE_NAME=…` selects, and
//! nothing to stderr; a `JOURNAL_STREAM` naming another stream, or none, keeps the log on stderr
//! as text; `join --log-target journald` tags its entries with PHASE; without a journal socket
//! the log falls back to stderr with one warning.
//!
//! The agent runs in journald's mount namespace (`nsenter -m`), where
//! /run/systemd/journal/socket is that journald's.

mod identity_support;
mod telemetry_support;

use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use identity_support::{Daemon, Host, Provider, text, wait_for};
use telemetry_support::{Journald, JournaldLimits};

/// `cmd` (the agent, built by the harness) run inside journald's mount namespace.
fn in_journal_namespace(j: &Journald, cmd: &Command) -> Command {
    let mut c = Command::new("nsenter");
    c.arg("-t")
        .arg(j.pid.to_string())
        .arg("-m")
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

/// The agent's entries in the journal (`journalctl -o json`, with `matches`), one JSON object each.
fn entries(j: &Journald, matches: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("journalctl")
        .arg(format!("--directory={}", j.dir().display()))
        .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=hybrid-agent"])
        .args(matches)
        .output()
        .expect("run journalctl");
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "journalctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("journalctl JSON line"))
        .collect()
}

fn field<'a>(e: &'a serde_json::Value, name: &str) -> &'a str {
    e.get(name).and_then(|v| v.as_str()).unwrap_or("")
}

/// A daemon started in the journal's namespace with stderr (and stdout) to `log`, and `env`.
fn spawn_daemon(
    j: &Journald,
    host: &Host,
    log: &std::path::Path,
    extra_args: &[&str],
    env: impl FnOnce(&std::fs::File) -> Vec<(String, String)>,
) -> Daemon {
    let file = std::fs::File::create(log).expect("log file");
    let mut args = extra_args.to_vec();
    args.push("run");
    let mut cmd = in_journal_namespace(j, &host.command(&args));
    for (k, v) in env(&file) {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::from(file.try_clone().expect("clone")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn run");
    Daemon {
        child: Some(child),
        log: log.to_path_buf(),
    }
}

fn registered_node(host: &Host) -> String {
    host.store()
        .load_registration()
        .expect("registration readable")
        .expect("registered")
        .instance_id
}

#[test]
fn daemon_logs_structured_entries_to_the_journal_its_stderr_is() {
    let j = Journald::start(JournaldLimits::default());
    // Short-lived credentials: the identity subsystem refreshes (and logs) within seconds.
    let ds = identity_support::devstack(Duration::from_secs(20));
    let host = Host::new(&ds);
    let out = host.join(&ds, Provider::Ssm, &[]);
    assert!(out.status.success(), "join failed:\n{}", text(&out));
    let node = registered_node(&host);

    // systemd's JOURNAL_STREAM names the stream on stderr: here the log file, whose device and
    // inode the test knows (what systemd does with the journal's socket stream).
    let log = host.scratch.path().join("journal-daemon.log");
    let mut daemon = spawn_daemon(&j, &host, &log, &[], |f| {
        let m = f.metadata().expect("stat log");
        vec![("JOURNAL_STREAM".into(), format!("{}:{}", m.dev(), m.ino()))]
    });
    let node_match = format!("NODE_NAME={node}");
    let seen = wait_for(Duration::from_secs(30), || {
        let e = entries(&j, &[&node_match]);
        // The identity subsystem's entries come once its span is running.
        e.iter()
            .any(|e| field(e, "SUBSYSTEM") == "identity")
            .then_some(e)
    });
    let status = daemon.stop();
    assert!(status.success(), "run exited {status}:\n{}", daemon.log());
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "no entry with {node_match} and SUBSYSTEM=identity within 30 s; journal:\n{:#?}\nstderr:\n{}",
            entries(&j, &[]),
            daemon.log()
        )
    });
    for e in &seen {
        assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "hybrid-agent", "{e}");
        assert_eq!(field(e, "NODE_NAME"), node, "{e}");
        assert!(
            ["3", "4", "6", "7"].contains(&field(e, "PRIORITY")),
            "PRIORITY from the level: {e}"
        );
        assert!(field(e, "CODE_FILE").ends_with(".rs"), "CODE_FILE: {e}");
        assert!(
            field(e, "CODE_LINE").parse::<u32>().is_ok_and(|n| n > 0),
            "CODE_LINE: {e}"
        );
        assert!(!field(e, "MESSAGE").is_empty(), "MESSAGE: {e}");
    }
    // The info line at start (info = 6, as journald gives a service's stdout lines).
    assert!(
        seen.iter().any(|e| field(e, "PRIORITY") == "6"),
        "no info entry: {seen:#?}"
    );
    // The match selects: every entry of the run carries the node, none of another node shows.
    let all = entries(&j, &[]);
    assert_eq!(
        all.len(),
        entries(&j, &[&node_match]).len(),
        "entries without NODE_NAME: {all:#?}"
    );
    assert!(entries(&j, &["NODE_NAME=mi-00000000000000000"]).is_empty());
    // stderr is the journal stream: nothing was written there twice.
    assert!(
        !daemon.log().contains("INFO") && !daemon.log().contains("WARN"),
        "log lines on stderr as well:\n{}",
        daemon.log()
    );
}

#[test]
fn log_stays_on_stderr_as_text_unless_journal_stream_is_stderr() {
    let j = Journald::start(JournaldLimits::default());
    let ds = identity_support::devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let out = host.join(&ds, Provider::Ssm, &[]);
    assert!(out.status.success(), "join failed:\n{}", text(&out));

    type Env = Box<dyn Fn(&std::fs::File) -> Vec<(String, String)>>;
    let runs: [(&str, Env); 2] = [
        ("no JOURNAL_STREAM", Box::new(|_| Vec::new())),
        // Inherited from a parent whose stderr was the journal; ours was redirected.
        (
            "JOURNAL_STREAM of another stream",
            Box::new(|f| {
                let m = f.metadata().expect("stat log");
                vec![(
                    "JOURNAL_STREAM".into(),
                    format!("{}:{}", m.dev(), m.ino() + 1),
                )]
            }),
        ),
    ];
    for (i, (what, env)) in runs.into_iter().enumerate() {
        let log = host.scratch.path().join(format!("stderr-daemon-{i}.log"));
        let mut daemon = spawn_daemon(&j, &host, &log, &[], env);
        let logged = wait_for(Duration::from_secs(30), || {
            daemon.log().contains(" INFO ").then_some(())
        });
        let status = daemon.stop();
        assert!(status.success(), "{what}: run exited {status}");
        assert!(
            logged.is_some(),
            "{what}: no text log line on stderr:\n{}",
            daemon.log()
        );
        // Text, not JSON, with the daemon's fields shown as span context.
        let first = daemon.log().lines().next().unwrap_or_default().to_owned();
        assert!(!first.starts_with('{'), "{what}: {first}");
        assert!(
            entries(&j, &[]).is_empty(),
            "{what}: entries reached the journal: {:#?}",
            entries(&j, &[])
        );
    }
}

#[test]
fn join_entries_carry_the_phase_and_log_target_journald_needs_no_stream() {
    let j = Journald::start(JournaldLimits::default());
    let ds = identity_support::devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let a = identity_support::create_activation(&ds, 1, Duration::from_secs(3600));
    let code_file = host.scratch.path().join("activation-code");
    std::fs::write(&code_file, &a.code).expect("code file");
    let cmd = host.command(&[
        "--log-target",
        "journald",
        "-v",
        "join",
        "--cluster",
        identity_support::CLUSTER,
        "--region",
        identity_support::REGION,
        "--activation-id",
        &a.id,
        "--activation-code-file",
        code_file.to_str().expect("utf8"),
        "--skip",
        "install,render,start",
    ]);
    let out = in_journal_namespace(&j, &cmd).output().expect("join");
    assert!(out.status.success(), "join failed:\n{}", text(&out));
    let e = entries(&j, &[]);
    let phases: std::collections::BTreeSet<&str> = e.iter().map(|e| field(e, "PHASE")).collect();
    assert!(
        phases.contains("identity"),
        "no PHASE=identity entry: {e:#?}"
    );
    assert!(
        !entries(&j, &["PHASE=identity"]).is_empty(),
        "journalctl PHASE=identity selects nothing"
    );
    // Entries go to the journal, not to stderr (the report on stdout stays).
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(" INFO "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_journal_socket_falls_back_to_stderr_with_one_warning() {
    // A fresh /run without journald's socket.
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run && exec \"$0\" \"$@\"",
            identity_support::AGENT,
            "--log-target",
            "journald",
            "config",
            "show",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run agent under unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot write to the systemd journal"))
        .collect();
    assert_eq!(warnings.len(), 1, "stderr:\n{stderr}");
    assert!(
        warnings[0].contains("logging to stderr instead"),
        "{}",
        warnings[0]
    );
}
