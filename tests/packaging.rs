//! The .deb and .rpm that `scripts/package` builds, checked with the packaging tools themselves
//! (dpkg-deb, rpm): metadata, the exact file list with modes and ownership, the unit file and
//! config shipped byte for byte, conffiles, and what the maintainer scripts do.
//!
//! The maintainer scripts run against a scratch host root (`HYBRID_AGENT_PKG_ROOT`, which only
//! tests set) with a fake `systemctl` first on PATH that records its arguments, so no test talks
//! to this machine's systemd. "systemd is running" is a `run/systemd/system` directory in that
//! root, the same test the scripts make on a real host. The scripts' lifecycle is tested from
//! `packaging/deb/` (fast, no build); the package test checks the .deb ships exactly those files
//! and runs the shipped postinst and rpm scriptlets once more from the built packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "hybrid-agent.service";
/// What a joined host holds and `hybrid-agent leave` removes (src/join/record.rs NODE_RECORD).
const NODE_RECORD: &str = "var/lib/hybrid-agent/node.json";
const STATE_DIR: &str = "var/lib/hybrid-agent";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, which must succeed, and returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs dpkg-dev and rpm)"));
    assert!(out.status.success(), "{}", describe(cmd, &out));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// What one maintainer-script run did.
#[derive(Debug)]
struct ScriptRun {
    code: Option<i32>,
    /// Every `systemctl` command line, in order.
    calls: Vec<String>,
    stderr: String,
}

/// A scratch host for maintainer scripts: `root/` is the host root, `bin/systemctl` the recorder.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(systemd_running: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let log = dir.path().join("systemctl.log");
        let fake = bin.join("systemctl");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display()),
        )
        .expect("fake systemctl");
        chmod_x(&fake);
        std::fs::create_dir_all(dir.path().join("root")).expect("root dir");
        if systemd_running {
            std::fs::create_dir_all(dir.path().join("root/run/systemd/system"))
                .expect("run/systemd/system");
        }
        Host { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The state a joined node has: its record and its key.
    fn joined(self) -> Self {
        self.write(NODE_RECORD, "{}");
        self.write("var/lib/hybrid-agent/ssm/key.pem", "key");
        self
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("parent dir");
        std::fs::write(&path, text).expect("write");
    }

    /// Runs `script` (executed directly, as dpkg does) with `args`, in an empty environment
    /// besides PATH (fake systemctl first) and the scratch root.
    fn run(&self, script: &Path, args: &[&str]) -> ScriptRun {
        let log = self.dir.path().join("systemctl.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(script);
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display()),
            )
            .env("HYBRID_AGENT_PKG_ROOT", self.root());
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        ScriptRun {
            code: out.status.code(),
            calls,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn chmod_x(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn deb_script(name: &str) -> PathBuf {
    repo().join("packaging/deb").join(name)
}

fn calls(list: &[&str]) -> Vec<String> {
    list.iter().map(|c| c.replace("UNIT", UNIT)).collect()
}

/// Runs a script expecting exit 0 and returns the systemctl calls it made.
fn expect_ok(host: &Host, script: &Path, args: &[&str]) -> ScriptRun {
    let run = host.run(script, args);
    assert_eq!(run.code, Some(0), "{} {args:?}: {run:?}", script.display());
    run
}

fn sh_n(path: &Path) {
    let mut cmd = Command::new("sh");
    ok(cmd.arg("-n").arg(path));
}

#[test]
fn maintainer_scripts_are_posix_sh_and_reject_unknown_actions() {
    for name in ["postinst", "prerm", "postrm"] {
        let path = deb_script(name);
        let text = std::fs::read_to_string(&path).expect("read script");
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{name}: not a /bin/sh script"
        );
        sh_n(&path);
        // dpkg calls scripts with a fixed set of actions; an unknown one is a packaging bug.
        let run = Host::new(true).run(&path, &["frobnicate"]);
        assert_eq!(run.code, Some(1), "{name}: {run:?}");
        assert!(run.calls.is_empty(), "{name}: {run:?}");
    }
}

#[test]
fn postinst_enables_but_never_starts_the_agent_and_only_under_systemd() {
    let script = deb_script("postinst");
    let run = expect_ok(&Host::new(true), &script, &["configure"]);
    assert_eq!(run.calls, calls(&["daemon-reload", "enable UNIT"]));

    let run = expect_ok(&Host::new(false), &script, &["configure"]);
    assert_eq!(run.calls, calls(&[]), "systemd is not running");

    // Upgrade: the administrator's enable choice stands; a running agent gets the new binary.
    let run = expect_ok(&Host::new(true), &script, &["configure", "0.0.9"]);
    assert_eq!(run.calls, calls(&["daemon-reload", "try-restart UNIT"]));
}

#[test]
fn prerm_stops_and_disables_on_remove_and_leaves_the_agent_running_on_upgrade() {
    let script = deb_script("prerm");
    let run = expect_ok(&Host::new(true), &script, &["remove"]);
    assert_eq!(run.calls, calls(&["stop UNIT", "disable UNIT"]));

    let run = expect_ok(&Host::new(false), &script, &["remove"]);
    assert_eq!(
        run.calls,
        calls(&["disable UNIT"]),
        "no running systemd: only the enable links go"
    );

    let run = expect_ok(&Host::new(true), &script, &["upgrade", "0.2.0"]);
    assert_eq!(run.calls, calls(&[]));
}

#[test]
fn postrm_purge_keeps_a_joined_nodes_identity_and_says_so() {
    let script = deb_script("postrm");
    let host = Host::new(true).joined();
    let run = expect_ok(&host, &script, &["purge"]);
    assert_eq!(run.calls, calls(&["daemon-reload"]));
    assert!(host.root().join(NODE_RECORD).exists(), "node.json deleted");
    assert!(
        host.root()
            .join("var/lib/hybrid-agent/ssm/key.pem")
            .exists()
    );
    let hint: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(hint.len(), 1, "one-line hint expected: {run:?}");
    assert!(
        hint[0].contains("/var/lib/hybrid-agent") && hint[0].contains("hybrid-agent leave"),
        "{run:?}"
    );
}

#[test]
fn postrm_purge_removes_the_state_of_a_host_that_left_and_remove_keeps_it() {
    let script = deb_script("postrm");
    // After `hybrid-agent leave` only the telemetry spool may be left.
    let host = Host::new(false);
    host.write("var/lib/hybrid-agent/spool/segment-1", "x");

    let run = expect_ok(&host, &script, &["remove"]);
    assert_eq!(run.calls, calls(&[]));
    assert!(
        host.root().join(STATE_DIR).exists(),
        "remove must not delete state"
    );

    let run = expect_ok(&host, &script, &["purge"]);
    assert_eq!(run.calls, calls(&[]));
    assert!(run.stderr.is_empty(), "{run:?}");
    assert!(
        !host.root().join(STATE_DIR).exists(),
        "purge kept the state"
    );
    assert!(
        host.root().exists(),
        "purge went outside the state directory"
    );

    let run = expect_ok(&Host::new(true), &script, &["remove"]);
    assert_eq!(run.calls, calls(&["daemon-reload"]));
}

// --- the built packages ---------------------------------------------------------------------

/// The package version for the crate version (a pre-release `-` becomes `~`, scripts/package).
fn package_version() -> String {
    env!("CARGO_PKG_VERSION").replace('-', "~")
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &bytes,
    ))
}

/// (mode, owner, path) rows, sorted by path.
fn sorted(mut rows: Vec<(String, String, String)>) -> Vec<(String, String, String)> {
    rows.sort_by(|a, b| a.2.cmp(&b.2));
    rows
}

fn rows(list: &[(&str, &str)], owner: &str) -> Vec<(String, String, String)> {
    sorted(
        list.iter()
            .map(|(mode, path)| ((*mode).to_owned(), owner.to_owned(), (*path).to_owned()))
            .collect(),
    )
}

/// The man pages the packages ship (`usr/share/man/man1/<page>.1.gz`, sorted): one per
/// command, as `hybrid-agent manpages` writes them.
fn man_pages() -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = ok(Command::new(env!("CARGO_BIN_EXE_hybrid-agent"))
        .args(["manpages", "--out"])
        .arg(dir.path()));
    let mut pages: Vec<String> = printed
        .lines()
        .map(|l| {
            let name = Path::new(l).file_name().expect("page name");
            format!("usr/share/man/man1/{}.gz", name.to_string_lossy())
        })
        .collect();
    pages.sort();
    assert!(
        pages.len() > 10
            && pages.contains(&"usr/share/man/man1/hybrid-agent.1.gz".to_owned())
            && pages.contains(&"usr/share/man/man1/hybrid-agent-config-show.1.gz".to_owned()),
        "{pages:?}"
    );
    pages
}

#[test]
fn scripts_package_builds_a_deb_and_an_rpm_that_install_the_agent() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out_dir = tmp.path().join("out");
    // The binary nextest already built: a `cargo build` inside a test can recompile much of the
    // tree (the test build unifies other features) and holds cargo's lock on the target directory
    // meanwhile, stalling every other test that builds the stand-in (CI's cold run hit the 300 s
    // kill). scripts/package's own cargo invocation is the one line this does not exercise.
    let mut cmd = Command::new(repo().join("scripts/package"));
    let printed = ok(cmd
        .args([
            "--profile",
            "debug",
            "--binary",
            env!("CARGO_BIN_EXE_hybrid-agent"),
            "--out",
        ])
        .arg(&out_dir)
        .current_dir(tmp.path()));
    let version = package_version();
    let deb = out_dir.join(format!("hybrid-agent_{version}-1_amd64.deb"));
    let rpm = out_dir.join(format!("hybrid-agent-{version}-1.x86_64.rpm"));
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [deb.to_str().expect("utf-8"), rpm.to_str().expect("utf-8")],
        "scripts/package prints the two packages"
    );

    check_deb(&deb, tmp.path());
    check_rpm(&rpm, tmp.path());

    // Both formats carry the same binary.
    let deb_binary = sha256_hex(&tmp.path().join("deb-root/usr/bin/hybrid-agent"));
    assert_eq!(rpm_digests(&rpm)["/usr/bin/hybrid-agent"], deb_binary);
}

fn check_deb(deb: &Path, tmp: &Path) {
    let field = |name: &str| {
        let mut cmd = Command::new("dpkg-deb");
        ok(cmd.arg("--field").arg(deb).arg(name)).trim().to_owned()
    };
    assert_eq!(field("Package"), "hybrid-agent");
    assert_eq!(
        field("Version"),
        format!("{}-1", package_version()),
        "Version is Cargo.toml's, Debian revision 1 (--release)"
    );
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    assert_eq!(field("Suggests"), "containerd");
    assert!(!field("Maintainer").is_empty());
    assert!(!field("Description").is_empty());
    // The debug build links glibc dynamically: dpkg-shlibdeps must have named libc6.
    let depends = field("Depends");
    assert!(
        depends.split(", ").any(|d| d.starts_with("libc6 (>= 2.")),
        "Depends: {depends}"
    );
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains(" Package: hybrid-agent\n"), "{info}");

    let mut cmd = Command::new("dpkg-deb");
    let conffiles = ok(cmd.arg("--info").arg(deb).arg("conffiles"));
    assert_eq!(conffiles, "/etc/hybrid-agent/config.toml\n");

    // `tar tv` rows: mode owner/group size date time path.
    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let got = sorted(
        listing
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 6, "unexpected listing row {line:?}");
                (f[0].to_owned(), f[1].to_owned(), f[5].to_owned())
            })
            .collect(),
    );
    let dir = "drwxr-xr-x";
    let file = "-rw-r--r--";
    let want = rows(
        &[
            (dir, "./"),
            (dir, "./etc/"),
            (dir, "./etc/hybrid-agent/"),
            (file, "./etc/hybrid-agent/config.toml"),
            (dir, "./lib/"),
            (dir, "./lib/systemd/"),
            (dir, "./lib/systemd/system/"),
            (file, "./lib/systemd/system/hybrid-agent.service"),
            (dir, "./usr/"),
            (dir, "./usr/bin/"),
            ("-rwxr-xr-x", "./usr/bin/hybrid-agent"),
            (dir, "./usr/share/"),
            (dir, "./usr/share/doc/"),
            (dir, "./usr/share/doc/hybrid-agent/"),
            (file, "./usr/share/doc/hybrid-agent/README.md"),
            (file, "./usr/share/doc/hybrid-agent/copyright"),
            (file, "./usr/share/doc/hybrid-agent/changelog.Debian.gz"),
            (dir, "./usr/share/bash-completion/"),
            (dir, "./usr/share/bash-completion/completions/"),
            (file, "./usr/share/bash-completion/completions/hybrid-agent"),
            (dir, "./usr/share/zsh/"),
            (dir, "./usr/share/zsh/vendor-completions/"),
            (file, "./usr/share/zsh/vendor-completions/_hybrid-agent"),
            (dir, "./usr/share/fish/"),
            (dir, "./usr/share/fish/vendor_completions.d/"),
            (
                file,
                "./usr/share/fish/vendor_completions.d/hybrid-agent.fish",
            ),
            (dir, "./usr/share/man/"),
            (dir, "./usr/share/man/man1/"),
            (dir, "./usr/share/lintian/"),
            (dir, "./usr/share/lintian/overrides/"),
            (file, "./usr/share/lintian/overrides/hybrid-agent"),
        ],
        "root/root",
    );
    let mut want = want;
    want.extend(
        man_pages()
            .iter()
            .map(|p| (file.to_owned(), "root/root".to_owned(), format!("./{p}"))),
    );
    assert_eq!(got, sorted(want), "dpkg-deb --contents");

    let root = tmp.join("deb-root");
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    for (inside, source) in [
        (
            "lib/systemd/system/hybrid-agent.service",
            "systemd/hybrid-agent.service",
        ),
        ("etc/hybrid-agent/config.toml", "examples/config.toml"),
        (
            "usr/share/doc/hybrid-agent/copyright",
            "packaging/copyright",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.join(inside)).expect(inside),
            std::fs::read(repo().join(source)).expect(source),
            "{inside} differs from {source}"
        );
    }
    // Completions and man pages are what the packaged binary generates from its own flags.
    let agent = root.join("usr/bin/hybrid-agent");
    for (shell, inside) in [
        ("bash", "usr/share/bash-completion/completions/hybrid-agent"),
        ("zsh", "usr/share/zsh/vendor-completions/_hybrid-agent"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/hybrid-agent.fish",
        ),
    ] {
        let script = ok(Command::new(&agent).args(["completions", shell]));
        assert!(script.contains("--config-source"), "{shell}: {script}");
        assert_eq!(
            std::fs::read_to_string(root.join(inside)).expect(inside),
            script
        );
    }
    let join_page = ok(Command::new("sh").arg("-c").arg(format!(
        "zcat {}",
        root.join("usr/share/man/man1/hybrid-agent-join.1.gz")
            .display()
    )));
    assert!(
        join_page.contains(".TH hybrid-agent-join 1") && join_page.contains("config\\-source"),
        "{join_page}"
    );
    let version = ok(Command::new(root.join("usr/bin/hybrid-agent")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("hybrid-agent {}", env!("CARGO_PKG_VERSION"))
    );

    // The shipped maintainer scripts are packaging/deb's (tested above), executable, and valid sh.
    let control = tmp.join("deb-control");
    ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    for name in ["postinst", "prerm", "postrm"] {
        let shipped = control.join(name);
        assert_eq!(
            std::fs::read(&shipped).expect(name),
            std::fs::read(deb_script(name)).expect(name),
            "{name} in the .deb differs from packaging/deb/{name}"
        );
        sh_n(&shipped);
    }

    // Installing into a scratch root: the shipped postinst registers the unit, never starts it.
    let postinst = control.join("postinst");
    let run = expect_ok(&Host::new(true), &postinst, &["configure"]);
    assert_eq!(run.calls, calls(&["daemon-reload", "enable UNIT"]));
    let run = expect_ok(&Host::new(false), &postinst, &["configure"]);
    assert_eq!(run.calls, calls(&[]));
}

/// File path -> SHA-256 digest (hex) as the .rpm records them.
fn rpm_digests(rpm: &Path) -> std::collections::HashMap<String, String> {
    let mut cmd = Command::new("rpm");
    let algo = ok(cmd.arg("-qp").arg("--qf").arg("%{FILEDIGESTALGO}").arg(rpm));
    assert_eq!(algo, "8", "file digests are SHA-256 (rpm's algorithm 8)");
    let mut cmd = Command::new("rpm");
    ok(cmd
        .arg("-qp")
        .arg("--qf")
        .arg("[%{FILEDIGESTS} %{FILENAMES}\n]")
        .arg(rpm))
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(digest, path)| (path.to_owned(), digest.to_owned()))
    .collect()
}

fn check_rpm(rpm: &Path, tmp: &Path) {
    let query = |format: &str| {
        let mut cmd = Command::new("rpm");
        ok(cmd.arg("-qp").arg("--qf").arg(format).arg(rpm))
    };
    assert_eq!(query("%{NAME}"), "hybrid-agent");
    assert_eq!(
        query("%{VERSION}"),
        package_version(),
        "VERSION is Cargo.toml's"
    );
    assert_eq!(query("%{RELEASE}"), "1");
    assert_eq!(query("%{ARCH}"), "x86_64");

    let mut cmd = Command::new("rpm");
    let listed = ok(cmd.arg("-qpl").arg(rpm));
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [
            "/etc/hybrid-agent",
            "/etc/hybrid-agent/config.toml",
            "/usr/bin/hybrid-agent",
            "/usr/lib/systemd/system/hybrid-agent.service",
            "/usr/share/bash-completion/completions/hybrid-agent",
            "/usr/share/doc/hybrid-agent",
            "/usr/share/doc/hybrid-agent/README.md",
            "/usr/share/doc/hybrid-agent/copyright",
            "/usr/share/fish/vendor_completions.d/hybrid-agent.fish",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(man_pages().iter().map(|p| format!("/{p}")))
        .chain(["/usr/share/zsh/site-functions/_hybrid-agent".to_owned()])
        .collect::<Vec<_>>(),
        "rpm -qpl"
    );
    let got = sorted(
        query("[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]")
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 3, "unexpected row {line:?}");
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
            })
            .collect(),
    );
    let want = rows(
        &[
            ("drwxr-xr-x", "/etc/hybrid-agent"),
            ("-rw-r--r--", "/etc/hybrid-agent/config.toml"),
            ("-rwxr-xr-x", "/usr/bin/hybrid-agent"),
            ("-rw-r--r--", "/usr/lib/systemd/system/hybrid-agent.service"),
            ("drwxr-xr-x", "/usr/share/doc/hybrid-agent"),
            ("-rw-r--r--", "/usr/share/doc/hybrid-agent/README.md"),
            ("-rw-r--r--", "/usr/share/doc/hybrid-agent/copyright"),
            (
                "-rw-r--r--",
                "/usr/share/bash-completion/completions/hybrid-agent",
            ),
            ("-rw-r--r--", "/usr/share/zsh/site-functions/_hybrid-agent"),
            (
                "-rw-r--r--",
                "/usr/share/fish/vendor_completions.d/hybrid-agent.fish",
            ),
        ],
        "root:root",
    );
    let mut want = want;
    want.extend(man_pages().iter().map(|p| {
        (
            "-rw-r--r--".to_owned(),
            "root:root".to_owned(),
            format!("/{p}"),
        )
    }));
    let want = sorted(want);
    assert_eq!(got, want, "rpm file modes and owners");

    let mut cmd = Command::new("rpm");
    let config = ok(cmd.arg("-qpc").arg(rpm));
    assert_eq!(config, "/etc/hybrid-agent/config.toml\n", "rpm -qpc");
    // %config(noreplace): an edited config survives upgrades (RPMFILE_CONFIG | RPMFILE_NOREPLACE).
    let flags = query("[%{FILEFLAGS:fflags} %{FILENAMES}\n]");
    assert!(
        flags
            .lines()
            .any(|l| l == "cn /etc/hybrid-agent/config.toml"),
        "config.toml is not %config(noreplace):\n{flags}"
    );

    let digests = rpm_digests(rpm);
    for (inside, source) in [
        (
            "/usr/lib/systemd/system/hybrid-agent.service",
            "systemd/hybrid-agent.service",
        ),
        ("/etc/hybrid-agent/config.toml", "examples/config.toml"),
        (
            "/usr/share/doc/hybrid-agent/copyright",
            "packaging/copyright",
        ),
    ] {
        assert_eq!(
            digests[inside],
            sha256_hex(&repo().join(source)),
            "{inside} differs from {source}"
        );
    }

    let mut cmd = Command::new("rpm");
    let scripts = ok(cmd.arg("-qp").arg("--scripts").arg(rpm));
    for kind in ["postinstall", "preuninstall", "postuninstall"] {
        assert!(
            scripts.contains(&format!("{kind} scriptlet (using /bin/sh):")),
            "no {kind} scriptlet:\n{scripts}"
        );
    }

    // The scriptlets, run as rpm runs them: /bin/sh with $1 = how many versions remain installed.
    let scriptlet = |tag: &str| {
        let path = tmp.join(format!("rpm-{tag}"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\n{}", query(&format!("%{{{tag}}}"))),
        )
        .expect("write scriptlet");
        chmod_x(&path);
        sh_n(&path);
        path
    };
    let post = scriptlet("POSTIN");
    let preun = scriptlet("PREUN");
    let postun = scriptlet("POSTUN");

    let run = expect_ok(&Host::new(true), &post, &["1"]);
    assert_eq!(
        run.calls,
        calls(&["daemon-reload", "enable UNIT"]),
        "install"
    );
    let run = expect_ok(&Host::new(false), &post, &["1"]);
    assert_eq!(run.calls, calls(&[]), "install without systemd");
    let run = expect_ok(&Host::new(true), &post, &["2"]);
    assert_eq!(
        run.calls,
        calls(&["daemon-reload", "try-restart UNIT"]),
        "upgrade"
    );

    let run = expect_ok(&Host::new(true), &preun, &["0"]);
    assert_eq!(run.calls, calls(&["stop UNIT", "disable UNIT"]), "erase");
    let run = expect_ok(&Host::new(true), &preun, &["1"]);
    assert_eq!(run.calls, calls(&[]), "upgrade");

    let host = Host::new(true).joined();
    let run = expect_ok(&host, &postun, &["0"]);
    assert_eq!(run.calls, calls(&["daemon-reload"]), "erase");
    assert!(host.root().join(NODE_RECORD).exists(), "node.json deleted");
    assert!(run.stderr.contains("hybrid-agent leave"), "{run:?}");
    let run = expect_ok(&Host::new(true), &postun, &["1"]);
    assert_eq!(run.calls, calls(&[]), "upgrade");
}
