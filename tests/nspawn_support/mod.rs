//! A real systemd booted from this machine's own files in systemd-nspawn (docs/testing.md).
//! Never /lib/systemd/systemd on the host itself: its tmpfiles step would wipe the host's /tmp.
//!
//! Two roots:
//! - [`Root::Volatile`]: `--volatile=yes`, a tmpfs root with the host's /usr read-only; enough
//!   to run units, nothing can be installed.
//! - [`Root::Overlay`]: the host's root filesystem as the lower layer of an overlayfs whose upper
//!   layer is a tmpfs, so `dpkg -i` and `rpm -i` write into the container and never into the
//!   host (nspawn refuses `--volatile=overlay` for `/` itself, hence the overlay made by hand in
//!   a private mount namespace). Units enabled on the host that listen on its network (the
//!   container shares it), other than containerd, are masked in the upper layer before boot.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What the container's `/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Volatile,
    Overlay,
}

/// A systemd booted in nspawn; torn down (SIGTERM, then SIGKILL) on drop, whatever happened.
pub struct Container {
    nspawn: Child,
    pub init_pid: u32,
    log: PathBuf,
    _work: Option<tempfile::TempDir>,
}

impl Container {
    /// Boots machine `name`, nspawn's output going to `log`; waits (bounded) until systemd
    /// says the boot finished.
    pub fn boot(name: &str, log: &Path, root: Root) -> Container {
        assert!(
            Path::new("/usr/bin/systemd-nspawn").exists(),
            "systemd-nspawn is missing: run scripts/setup (Debian package systemd-container)"
        );
        let out = std::fs::File::create(log).expect("nspawn log");
        // A private tmpfs on /run/systemd/nspawn: nspawn keeps its state there, and the host may
        // have no systemd of its own.
        let prologue = "mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn";
        let (script, work) = match root {
            Root::Volatile => (
                format!(
                    "{prologue} && exec systemd-nspawn --volatile=yes -D / --register=no --keep-unit --console=pipe -M {name} --boot"
                ),
                None,
            ),
            Root::Overlay => {
                let work = tempfile::Builder::new()
                    .prefix("nspawn-overlay")
                    .tempdir_in("/var/tmp")
                    .expect("overlay work dir");
                let w = work.path().display();
                (
                    format!(
                        "set -e; {prologue}
mount -t tmpfs -o size=2g,mode=0755 tmpfs {w}
mkdir -p {w}/upper/etc/systemd/system {w}/work {w}/root
for unit in /etc/systemd/system/multi-user.target.wants/*; do
  u=${{unit##*/}}
  [ \"$u\" = containerd.service ] || ln -sf /dev/null {w}/upper/etc/systemd/system/$u
done
mount -t overlay overlay -o lowerdir=/,upperdir={w}/upper,workdir={w}/work {w}/root
exec systemd-nspawn -D {w}/root --register=no --keep-unit --console=pipe -M {name} --boot"
                    ),
                    Some(work),
                )
            }
        };
        let nspawn = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log fd")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn unshare + systemd-nspawn");
        let mut c = Container {
            nspawn,
            init_pid: 0,
            log: log.to_path_buf(),
            _work: work,
        };
        // unshare and sh exec into systemd-nspawn (same pid); its child is the container's init.
        let pid = c.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = String::new();
        while !(state == "running" || state == "degraded") {
            assert!(
                Instant::now() < deadline + Duration::from_secs(60),
                "container did not finish booting (last answer {state:?}); log:\n{}",
                c.log_text()
            );
            if let Ok(Some(status)) = c.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited early ({status}); log:\n{}",
                    c.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            // The first child may still be nspawn's own, setting up: ask until systemd answers.
            if let Ok(children) =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                && let Some(first) = children.split_whitespace().next()
            {
                c.init_pid = first.parse().expect("pid");
            }
            if c.init_pid != 0 {
                state = c.exec(&["systemctl", "is-system-running"]);
            }
        }
        c
    }

    /// The container's root as this process sees it.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid))
    }

    /// A path inside the container, as this process sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a command inside the container (all its namespaces, a clean environment, 120 s at
    /// most) and returns what happened.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args([
                "120",
                "nsenter",
                "-t",
                &self.init_pid.to_string(),
                "-a",
                "--",
            ])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// Runs a command inside the container and returns its trimmed stdout, whatever its status.
    pub fn exec(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.run(args).stdout)
            .trim()
            .to_string()
    }

    /// Runs a command that must succeed; returns stdout and stderr together.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{args:?} in the container: {}\n{text}",
            out.status
        );
        text
    }

    /// `systemctl show -P PROPERTY UNIT`.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.exec(&["systemctl", "show", "-P", property, unit])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let Some(pid) = rustix::process::Pid::from_raw(self.nspawn.id() as i32) else {
            return;
        };
        // nspawn halts the container on SIGTERM; a second signal or SIGKILL ends it at once.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}
