//! Facts about the host that change what is rendered: CPU and memory (kubelet's `kubeReserved`),
//! the distribution and its resolver (kubelet's `resolvConf`), and whether the ECR credential
//! provider is installed (kubelet refuses to start when its config names a missing provider).
//!
//! They are read once at join by [`HostFacts::read`] and handed to the pure renderers, so tests pin
//! them. CPU and memory are the machine's own (a `--root` sandbox runs on the same machine);
//! files are read under `--root`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::paths::HostPaths;

/// The distribution's identification (os-release(5)).
pub const OS_RELEASE: &str = "/etc/os-release";
/// The resolver configuration kubelet hands pods by default.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the real upstream servers (nodeadm internal/system/os.go
/// `UbuntuResolvConfPath`).
pub const RESOLVED_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// systemd-resolved's local stub listener (systemd-resolved.service(8)).
const RESOLVED_STUB: &str = "127.0.0.53";
/// The online CPUs, as a list like `0-3,6` (nodeadm internal/system/resources.go reads the
/// same topology under /sys).
const CPU_ONLINE: &str = "/sys/devices/system/cpu/online";
/// `/proc/meminfo`'s total (proc(5)).
const MEMINFO: &str = "/proc/meminfo";

/// What the renderers need to know about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Online logical CPUs × 1000.
    pub cpu_millicores: u64,
    /// Total memory in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// os-release `ID` (`ubuntu`, `debian`, `rhel`, …), empty when unknown.
    pub os_id: String,
    /// `/etc/resolv.conf` points at systemd-resolved's stub (127.0.0.53) and the upstream list
    /// exists: pods given the stub would query themselves (CoreDNS loop).
    pub resolved_stub: bool,
    /// The ECR credential provider binary is installed where kubelet is told to look.
    pub ecr_credential_provider: bool,
}

impl HostFacts {
    /// Reads the facts of the host under `paths` (see the module docs).
    pub fn read(paths: &HostPaths) -> Self {
        // All online logical CPUs, as nodeadm counts them (not this process's affinity or quota).
        let cpu_millicores = std::fs::read_to_string(CPU_ONLINE)
            .ok()
            .and_then(|t| cpu_list_len(&t))
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(|n| n.get() as u64)
            })
            .unwrap_or(1)
            * 1000;
        let memory_bytes = std::fs::read_to_string(MEMINFO)
            .ok()
            .and_then(|t| mem_total(&t))
            .unwrap_or(0);
        let os_id = std::fs::read_to_string(paths.resolve(OS_RELEASE))
            .map(|t| os_release_id(&t))
            .unwrap_or_default();
        let resolved_stub = paths.resolve(RESOLVED_RESOLV_CONF).exists()
            && std::fs::read_to_string(paths.resolve(ETC_RESOLV_CONF))
                .is_ok_and(|t| nameservers(&t).any(|n| n == RESOLVED_STUB));
        let ecr_credential_provider =
            is_file(&paths.resolve(super::kubelet::ECR_CREDENTIAL_PROVIDER_BIN));
        Self {
            cpu_millicores,
            memory_bytes,
            os_id,
            resolved_stub,
            ecr_credential_provider,
        }
    }

    /// Whether kubelet must be given systemd-resolved's upstream list: on Ubuntu (nodeadm
    /// internal/kubelet/config.go checks only the OS name), or wherever the stub is in use.
    pub fn use_resolved_upstream(&self) -> bool {
        self.os_id == "ubuntu" || self.resolved_stub
    }
}

fn is_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}

/// `MemTotal:  16316412 kB` → bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many CPUs a kernel CPU list (`0-3,6`) names.
pub fn cpu_list_len(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<u64>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

/// os-release's `ID`, unquoted.
pub fn os_release_id(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("ID="))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .next()
        .unwrap_or_default()
}

fn nameservers(resolv: &str) -> impl Iterator<Item = &str> {
    resolv.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver")).then(|| w.next()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_os_release() {
        assert_eq!(
            mem_total("MemTotal:       16316412 kB\nMemFree: 1 kB\n"),
            Some(16316412 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
        assert_eq!(
            os_release_id("NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n"),
            "ubuntu"
        );
        assert_eq!(os_release_id("ID=\"rhel\"\n"), "rhel");
        assert_eq!(cpu_list_len("0-3,6\n"), Some(5));
        assert_eq!(cpu_list_len("0\n"), Some(1));
        assert_eq!(cpu_list_len("x"), None);
    }

    #[test]
    fn reads_files_under_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        let facts = HostFacts::read(&paths);
        assert!(!facts.resolved_stub && facts.os_id.is_empty());
        assert!(!facts.ecr_credential_provider);
        assert!(facts.cpu_millicores >= 1000);
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::create_dir_all(dir.path().join("run/systemd/resolve")).expect("run");
        std::fs::write(
            dir.path().join("etc/resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("run/systemd/resolve/resolv.conf"),
            "nameserver 10.0.0.2\n",
        )
        .expect("write");
        assert!(HostFacts::read(&paths).use_resolved_upstream());
    }
}
