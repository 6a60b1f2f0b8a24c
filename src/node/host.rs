//! Host actions: the changes to the running host that are not files — loading kernel modules,
//! applying sysctls, turning off swap, opening firewall ports, installing a distribution
//! package. nodeadm does each of them during `init` (`internal/system/*.go`,
//! `internal/containerd/daemon.go`, `internal/containerd/install.go`).
//!
//! They sit behind [`HostActions`] so that only a join on the real root (`--root /`) ever runs a
//! command against the kernel: every other root gets the [`Recorder`], which runs nothing and
//! keeps the list of what would have been run, so a sandbox join (and every test) shows exactly
//! what a real host would get without touching the machine it runs on. [`for_root`] is the only
//! place that chooses, and it chooses from the root alone: there is no switch to point the real
//! implementation anywhere else.
//!
//! Commands are run by absolute path (no `$PATH` lookup as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::paths::HostPaths;

/// sysctl (procps). `--system` reloads every sysctl.d file, as nodeadm does
/// (`internal/system/sysctl.go`).
pub const SYSCTL: &str = "/usr/sbin/sysctl";
/// modprobe (kmod), for hosts where systemd does not load modules-load.d.
pub const MODPROBE: &str = "/usr/sbin/modprobe";
/// systemctl, to restart systemd-modules-load as nodeadm does (`internal/containerd/daemon.go`).
pub const SYSTEMCTL: &str = "/usr/bin/systemctl";
/// The unit that loads `/etc/modules-load.d` (nodeadm `kernelModulesSystemdUnit`).
pub const MODULES_LOAD_UNIT: &str = "systemd-modules-load.service";
/// swapoff (util-linux); nodeadm runs `swapoff <file>` per file swap (`internal/system/swap.go`).
pub const SWAPOFF: &str = "/usr/sbin/swapoff";
/// ufw's and firewalld's command-line tools (nodeadm `internal/firewall/{ufw,firewalld}.go`).
pub const UFW: &str = "/usr/sbin/ufw";
pub const FIREWALL_CMD: &str = "/usr/bin/firewall-cmd";
/// ufw's configuration: `ENABLED=yes` when it is active (what a sandbox is judged by).
pub const UFW_CONF: &str = "/etc/ufw/ufw.conf";
/// firewalld enabled at boot (what a sandbox is judged by).
pub const FIREWALLD_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/firewalld.service";
/// `firewall-cmd --state` exit codes meaning "not running" (nodeadm firewalld.go).
const FIREWALLD_NOT_RUNNING: [i32; 2] = [251, 252];
/// TCP ports a hybrid node must accept: kubelet's API, kube-proxy's health check, and the
/// NodePort range (nodeadm `internal/system/ports.go`).
pub const KUBELET_PORT: u16 = 10250;
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
pub const NODE_PORTS: (u16, u16) = (30000, 32767);
/// Package managers, by absolute path; nodeadm looks for yum first, then apt
/// (`internal/packagemanager/packagemanager.go`).
pub const DNF: &str = "/usr/bin/dnf";
pub const YUM: &str = "/usr/bin/yum";
pub const APT_GET: &str = "/usr/bin/apt-get";
/// The distribution package that ships containerd (nodeadm `containerdDistroPkgName`; it pulls
/// in runc).
pub const CONTAINERD_PACKAGE: &str = "containerd";

/// A firewall nodeadm knows how to open ports in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firewall {
    Ufw,
    Firewalld,
}

/// A distribution package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageManager {
    AptGet,
    Dnf,
    Yum,
}

impl PackageManager {
    fn program(self) -> &'static str {
        match self {
            PackageManager::AptGet => APT_GET,
            PackageManager::Dnf => DNF,
            PackageManager::Yum => YUM,
        }
    }

    /// The package manager under `paths`, yum/dnf first as nodeadm looks.
    pub fn detect(paths: &HostPaths) -> Option<PackageManager> {
        [
            PackageManager::Dnf,
            PackageManager::Yum,
            PackageManager::AptGet,
        ]
        .into_iter()
        .find(|m| paths.resolve(m.program()).is_file())
    }
}

/// One change to the running host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HostAction {
    /// Load kernel modules now: restart systemd-modules-load where systemd is PID 1 (it reads
    /// the modules-load.d file join wrote), else modprobe each.
    LoadModules { modules: Vec<String>, systemd: bool },
    /// Make the sysctl.d files live (`sysctl --system`).
    ApplySysctls,
    /// Turn off one swap file (host path).
    SwapOff { file: PathBuf },
    /// Open kubelet's, kube-proxy's and the NodePort TCP ports.
    OpenPorts { firewall: Firewall },
    /// Install a distribution package.
    InstallPackage {
        manager: PackageManager,
        package: String,
    },
    /// Remove a distribution package (one join installed).
    RemovePackage {
        manager: PackageManager,
        package: String,
    },
}

/// One command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, &'static str)>,
}

impl CommandLine {
    fn new(program: &'static str, args: &[&str]) -> Self {
        Self {
            program,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
        }
    }
}

impl std::fmt::Display for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

impl HostAction {
    /// The commands that carry the action out, in order.
    pub fn commands(&self) -> Vec<CommandLine> {
        match self {
            HostAction::LoadModules { systemd: true, .. } => {
                vec![CommandLine::new(SYSTEMCTL, &["restart", MODULES_LOAD_UNIT])]
            }
            HostAction::LoadModules { modules, .. } => modules
                .iter()
                .map(|m| CommandLine::new(MODPROBE, &[m]))
                .collect(),
            HostAction::ApplySysctls => vec![CommandLine::new(SYSCTL, &["--system"])],
            HostAction::SwapOff { file } => {
                vec![CommandLine::new(SWAPOFF, &[&file.display().to_string()])]
            }
            HostAction::OpenPorts { firewall } => {
                let (lo, hi) = NODE_PORTS;
                match firewall {
                    // `ufw allow` takes effect at once (nodeadm ufw.go FlushRules is a no-op).
                    Firewall::Ufw => vec![
                        CommandLine::new(UFW, &["allow", &format!("{KUBELET_PORT}/tcp")]),
                        CommandLine::new(
                            UFW,
                            &["allow", &format!("{KUBE_PROXY_HEALTHZ_PORT}/tcp")],
                        ),
                        CommandLine::new(UFW, &["allow", &format!("{lo}:{hi}/tcp")]),
                    ],
                    Firewall::Firewalld => vec![
                        CommandLine::new(
                            FIREWALL_CMD,
                            &["--permanent", &format!("--add-port={KUBELET_PORT}/tcp")],
                        ),
                        CommandLine::new(
                            FIREWALL_CMD,
                            &[
                                "--permanent",
                                &format!("--add-port={KUBE_PROXY_HEALTHZ_PORT}/tcp"),
                            ],
                        ),
                        CommandLine::new(
                            FIREWALL_CMD,
                            &["--permanent", &format!("--add-port={lo}-{hi}/tcp")],
                        ),
                        CommandLine::new(FIREWALL_CMD, &["--reload"]),
                        CommandLine::new(FIREWALL_CMD, &["--runtime-to-permanent"]),
                    ],
                }
            }
            HostAction::InstallPackage { manager, package } => match manager {
                PackageManager::AptGet => {
                    let mut update = CommandLine::new(APT_GET, &["update", "-q"]);
                    update.env.push(("DEBIAN_FRONTEND", "noninteractive"));
                    let mut install = CommandLine::new(APT_GET, &["install", "-y", "-q", package]);
                    install.env.push(("DEBIAN_FRONTEND", "noninteractive"));
                    vec![update, install]
                }
                m => vec![CommandLine::new(m.program(), &["install", "-y", package])],
            },
            HostAction::RemovePackage { manager, package } => {
                let mut remove = CommandLine::new(manager.program(), &["remove", "-y", package]);
                if *manager == PackageManager::AptGet {
                    remove.env.push(("DEBIAN_FRONTEND", "noninteractive"));
                }
                vec![remove]
            }
        }
    }

    /// One line for the user: what and how.
    pub fn describe(&self) -> String {
        let what = match self {
            HostAction::LoadModules { modules, .. } => {
                format!("load kernel modules {}", modules.join(", "))
            }
            HostAction::ApplySysctls => "apply the sysctl settings".to_owned(),
            HostAction::SwapOff { file } => format!("turn off swap file {}", file.display()),
            HostAction::OpenPorts { firewall } => format!(
                "open TCP {KUBELET_PORT}, {KUBE_PROXY_HEALTHZ_PORT} and {}-{} in {}",
                NODE_PORTS.0,
                NODE_PORTS.1,
                match firewall {
                    Firewall::Ufw => "ufw",
                    Firewall::Firewalld => "firewalld",
                }
            ),
            HostAction::InstallPackage { package, .. } => {
                format!("install the distribution package {package}")
            }
            HostAction::RemovePackage { package, .. } => {
                format!("remove the distribution package {package}")
            }
        };
        let commands: Vec<String> = self.commands().iter().map(|c| c.to_string()).collect();
        format!("{what} ({})", commands.join("; "))
    }
}

/// A host action that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot run `{command}` to {what}: {source}")]
    Spawn {
        command: String,
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}) while trying to {what}: {output}")]
    Failed {
        command: String,
        what: String,
        status: String,
        output: String,
    },
}

/// Runs host actions, or records them. See the module docs.
pub trait HostActions: Send {
    /// True when actions really change this machine (the root is `/`).
    fn is_real(&self) -> bool;
    /// Carries out (or records) one action.
    fn apply(&mut self, action: &HostAction) -> Result<(), HostError>;
    /// The enabled firewall nodeadm would open ports in, if any.
    fn firewall(&self) -> Option<Firewall>;
    /// What was not carried out as asked although `apply` succeeded (a container's host kernel
    /// refusing sysctls), once each.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// The host actions for `paths`: real only when the root is `/`.
pub fn for_root(paths: &HostPaths) -> Box<dyn HostActions> {
    if paths.root() == Path::new("/") {
        Box::new(RealHost::default())
    } else {
        Box::new(Recorder::new(paths.clone()))
    }
}

/// Runs the commands on this machine.
#[derive(Debug, Default)]
pub struct RealHost {
    /// What was not done as asked, for the report ([`HostActions::take_notes`]).
    notes: Vec<String>,
}

impl HostActions for RealHost {
    fn is_real(&self) -> bool {
        true
    }

    fn apply(&mut self, action: &HostAction) -> Result<(), HostError> {
        for c in action.commands() {
            match run(&c, &action.describe()) {
                Err(HostError::Failed { output, .. })
                    if *action == HostAction::ApplySysctls
                        && let Some(keys) = denied_sysctl_keys(&output)
                        && let Some(container) = container() =>
                {
                    // In a container /proc/sys is the host's kernel, mounted read-only (nspawn,
                    // docker, podman): nothing here can set it, and failing the join would not
                    // either. Say which keys the host must set; `doctor` checks their values.
                    tracing::warn!(
                        container = %container,
                        keys = %keys.join(", "),
                        "running in a container: its host's kernel refused these sysctl settings; set them on the host (values in /etc/sysctl.d/99-hybrid-agent.conf)"
                    );
                    self.notes.push(format!(
                        "in a {container} container the host's kernel refused sysctl {}: set them on the container's host (values in /etc/sysctl.d/99-hybrid-agent.conf)",
                        keys.join(", ")
                    ));
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn firewall(&self) -> Option<Firewall> {
        // nodeadm ufw.go: `ufw status` says "Status: active"; firewalld.go: `firewall-cmd
        // --state` succeeds and says "running".
        if Path::new(UFW).is_file()
            && let Ok(out) = Command::new(UFW).arg("status").output()
            && out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("Status: active")
        {
            return Some(Firewall::Ufw);
        }
        if Path::new(FIREWALL_CMD).is_file()
            && let Ok(out) = Command::new(FIREWALL_CMD).arg("--state").output()
        {
            let code = out.status.code();
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("running") {
                return Some(Firewall::Firewalld);
            }
            if !code.is_some_and(|c| FIREWALLD_NOT_RUNNING.contains(&c)) {
                tracing::warn!(?code, "firewall-cmd --state failed; not opening ports");
            }
        }
        None
    }
}

fn run(c: &CommandLine, what: &str) -> Result<(), HostError> {
    let mut cmd = Command::new(c.program);
    cmd.args(&c.args);
    // Package managers and sysctl need none of the agent's secrets (join may hold the
    // activation code in its environment).
    for name in crate::supervise::process::SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|source| HostError::Spawn {
        command: c.to_string(),
        what: what.to_owned(),
        source,
    })?;
    if out.status.success() {
        tracing::info!(command = %c, "host action done");
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(HostError::Failed {
        command: c.to_string(),
        what: what.to_owned(),
        status: out.status.to_string(),
        output,
    })
}

/// The container manager this process runs under (`systemd-nspawn`, `docker`, `podman` …), as
/// systemd records it in `/run/systemd/container` or as PID 1's `container=` environment
/// variable says (systemd-detect-virt(1) reads the same two).
pub fn container() -> Option<String> {
    if let Ok(s) = std::fs::read_to_string("/run/systemd/container") {
        let s = s.trim();
        if !s.is_empty() {
            return Some(s.to_owned());
        }
    }
    let environ = std::fs::read("/proc/1/environ").ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"container="))
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The keys of a `sysctl --system` failure when every error it printed is one a container
/// gets from its host's kernel: a refusal to write (`permission denied on key …`, a read-only
/// /proc/sys) or a key of a module not loaded there; `None` when anything else went wrong.
fn denied_sysctl_keys(output: &str) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for line in output.lines().filter(|l| l.starts_with("sysctl:")) {
        if let Some(rest) = line.split("permission denied on key \"").nth(1) {
            keys.push(rest.split('"').next().unwrap_or_default().to_owned());
        } else if line.contains("Read-only file system") {
            keys.push(line.trim_start_matches("sysctl:").trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("sysctl: cannot stat /proc/sys/")
            && let Some(path) = rest.strip_suffix(": No such file or directory")
        {
            // A key of a module the container cannot load (br_netfilter): the host's to load.
            keys.push(path.replace('/', "."));
        } else {
            return None;
        }
    }
    (!keys.is_empty()).then_some(keys)
}

/// Runs nothing: keeps every action it is given, for a `--root` other than `/`. Detection reads
/// the files under the root instead of asking running services.
#[derive(Debug)]
pub struct Recorder {
    paths: HostPaths,
    pub recorded: Vec<HostAction>,
}

impl Recorder {
    pub fn new(paths: HostPaths) -> Self {
        Self {
            paths,
            recorded: Vec::new(),
        }
    }
}

impl HostActions for Recorder {
    fn is_real(&self) -> bool {
        false
    }

    fn apply(&mut self, action: &HostAction) -> Result<(), HostError> {
        self.recorded.push(action.clone());
        Ok(())
    }

    fn firewall(&self) -> Option<Firewall> {
        firewall_from_files(&self.paths)
    }
}

/// The enabled firewall as the files under `paths` show it: ufw.conf with `ENABLED=yes`, or
/// firewalld enabled at boot.
pub fn firewall_from_files(paths: &HostPaths) -> Option<Firewall> {
    let ufw = std::fs::read_to_string(paths.resolve(UFW_CONF)).unwrap_or_default();
    let enabled = ufw.lines().any(|l| {
        l.trim()
            .strip_prefix("ENABLED=")
            .is_some_and(|v| v.trim().trim_matches('"').eq_ignore_ascii_case("yes"))
    });
    if enabled {
        return Some(Firewall::Ufw);
    }
    if std::fs::symlink_metadata(paths.resolve(FIREWALLD_WANTS)).is_ok() {
        return Some(Firewall::Firewalld);
    }
    None
}

/// Removes the packages a join installed, as its journal `notes` record them (only those
/// really installed: a sandbox recorded them without running anything). For `leave` and for a
/// rolled-back join. Returns one line per package removed.
pub fn remove_installed_packages(
    paths: &HostPaths,
    notes: &[crate::node::land::Note],
) -> Result<Vec<String>, HostError> {
    let mut host = for_root(paths);
    let mut lines = Vec::new();
    for note in notes.iter().rev() {
        if let crate::node::land::Note::Host {
            action: HostAction::InstallPackage { manager, package },
            applied: true,
        } = note
        {
            let remove = HostAction::RemovePackage {
                manager: *manager,
                package: package.clone(),
            };
            host.apply(&remove)?;
            lines.push(remove.describe());
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::denied_sysctl_keys;

    #[test]
    fn sysctl_refusals_in_a_container_are_told_from_other_failures() {
        // What procps' `sysctl --system` prints in systemd-nspawn (read-only /proc/sys).
        let nspawn = "sysctl: permission denied on key \"kernel.pid_max\"\nsysctl: permission denied on key \"net.ipv6.conf.all.forwarding\", ignoring\n* Applying /etc/sysctl.d/99-hybrid-agent.conf ...";
        assert_eq!(
            denied_sysctl_keys(nspawn),
            Some(vec![
                "kernel.pid_max".to_owned(),
                "net.ipv6.conf.all.forwarding".to_owned()
            ])
        );
        // br_netfilter not loaded on the container's host.
        let unloaded = "sysctl: cannot stat /proc/sys/net/bridge/bridge-nf-call-iptables: No such file or directory";
        assert_eq!(
            denied_sysctl_keys(unloaded),
            Some(vec!["net.bridge.bridge-nf-call-iptables".to_owned()])
        );
        // A bad value is a real failure, even beside refusals.
        let mixed = "sysctl: permission denied on key \"kernel.pid_max\"\nsysctl: setting key \"vm.x\": Invalid argument";
        assert_eq!(denied_sysctl_keys(mixed), None);
        assert_eq!(
            denied_sysctl_keys("sysctl: setting key \"vm.x\": Invalid argument"),
            None
        );
        assert_eq!(denied_sysctl_keys(""), None);
    }

    use super::*;

    fn lines(a: &HostAction) -> Vec<String> {
        a.commands().iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn kernel_actions_run_nodeadms_commands_by_absolute_path() {
        assert_eq!(
            lines(&HostAction::ApplySysctls),
            ["/usr/sbin/sysctl --system"]
        );
        let modules = vec!["overlay".to_owned(), "br_netfilter".to_owned()];
        assert_eq!(
            lines(&HostAction::LoadModules {
                modules: modules.clone(),
                systemd: true
            }),
            ["/usr/bin/systemctl restart systemd-modules-load.service"]
        );
        assert_eq!(
            lines(&HostAction::LoadModules {
                modules,
                systemd: false
            }),
            [
                "/usr/sbin/modprobe overlay",
                "/usr/sbin/modprobe br_netfilter"
            ]
        );
        assert_eq!(
            lines(&HostAction::SwapOff {
                file: "/swapfile".into()
            }),
            ["/usr/sbin/swapoff /swapfile"]
        );
    }

    #[test]
    fn firewall_rules_are_nodeadms_ports() {
        assert_eq!(
            lines(&HostAction::OpenPorts {
                firewall: Firewall::Ufw
            }),
            [
                "/usr/sbin/ufw allow 10250/tcp",
                "/usr/sbin/ufw allow 10256/tcp",
                "/usr/sbin/ufw allow 30000:32767/tcp"
            ]
        );
        assert_eq!(
            lines(&HostAction::OpenPorts {
                firewall: Firewall::Firewalld
            }),
            [
                "/usr/bin/firewall-cmd --permanent --add-port=10250/tcp",
                "/usr/bin/firewall-cmd --permanent --add-port=10256/tcp",
                "/usr/bin/firewall-cmd --permanent --add-port=30000-32767/tcp",
                "/usr/bin/firewall-cmd --reload",
                "/usr/bin/firewall-cmd --runtime-to-permanent"
            ]
        );
    }

    #[test]
    fn packages_install_and_remove_noninteractively() {
        let install = HostAction::InstallPackage {
            manager: PackageManager::AptGet,
            package: CONTAINERD_PACKAGE.into(),
        };
        let cmds = install.commands();
        assert_eq!(
            lines(&install),
            [
                "/usr/bin/apt-get update -q",
                "/usr/bin/apt-get install -y -q containerd"
            ]
        );
        assert!(
            cmds.iter()
                .all(|c| c.env.contains(&("DEBIAN_FRONTEND", "noninteractive")))
        );
        assert_eq!(
            lines(&HostAction::InstallPackage {
                manager: PackageManager::Dnf,
                package: "containerd".into()
            }),
            ["/usr/bin/dnf install -y containerd"]
        );
        assert_eq!(
            lines(&HostAction::RemovePackage {
                manager: PackageManager::Yum,
                package: "containerd".into()
            }),
            ["/usr/bin/yum remove -y containerd"]
        );
    }

    #[test]
    fn only_the_real_root_gets_the_real_host() {
        assert!(for_root(&HostPaths::new("/")).is_real());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rec = for_root(&HostPaths::new(dir.path()));
        assert!(!rec.is_real());
        // Recording a kernel action runs nothing.
        rec.apply(&HostAction::ApplySysctls).expect("recorded");
    }

    #[test]
    fn firewall_and_package_manager_are_detected_from_files_under_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        assert_eq!(firewall_from_files(&paths), None);
        assert_eq!(PackageManager::detect(&paths), None);
        std::fs::create_dir_all(paths.resolve("/etc/ufw")).expect("mkdir");
        std::fs::write(paths.resolve(UFW_CONF), "ENABLED=no\n").expect("write");
        assert_eq!(firewall_from_files(&paths), None);
        std::fs::write(paths.resolve(UFW_CONF), "# c\nENABLED=yes\n").expect("write");
        assert_eq!(firewall_from_files(&paths), Some(Firewall::Ufw));
        std::fs::create_dir_all(paths.resolve("/usr/bin")).expect("mkdir");
        std::fs::write(paths.resolve(APT_GET), "").expect("write");
        assert_eq!(PackageManager::detect(&paths), Some(PackageManager::AptGet));
        std::fs::write(paths.resolve(DNF), "").expect("write");
        assert_eq!(PackageManager::detect(&paths), Some(PackageManager::Dnf));
    }
}
