//! Kernel settings a node needs: sysctls (forwarding, bridge netfilter, and the values kubelet's
//! `protectKernelDefaults` insists on), kernel modules to load at boot, and swap: the active
//! swap areas and their kind, and the `/etc/fstab` without its swap lines. Writing the files is
//! only half: join also makes them live through [`super::host`].

use std::path::Path;

use super::RenderedFile;
use crate::paths::{self, HostPaths};

/// sysctl settings, as nodeadm and the EKS AMIs set them. The last three are what kubelet
/// checks when `protectKernelDefaults` is true (kubelet's kernel-defaults check).
pub const SYSCTLS: [(&str, &str); 7] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("vm.overcommit_memory", "1"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
];
/// Keys a host may lack (IPv6 disabled): written with sysctl.d's `-` prefix so applying the
/// file does not fail on them (sysctl.d(5), procps sysctl.conf(5)).
pub const OPTIONAL_SYSCTLS: [&str; 1] = ["net.ipv6.conf.all.forwarding"];
/// Kernel modules containerd's overlay snapshotter and bridge CNIs need (nodeadm
/// `internal/containerd/kernel-modules.conf`).
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
/// The kernel's list of active swap areas.
pub const PROC_SWAPS: &str = "/proc/swaps";
/// The static filesystem table whose swap lines nodeadm removes (`internal/system/swap.go`).
pub const FSTAB: &str = "/etc/fstab";
/// `/proc/swaps` type of a swap partition: nodeadm refuses it (`swapTypePartition`).
pub const SWAP_PARTITION: &str = "partition";

/// The sysctl and modules-load files.
pub fn render() -> Vec<RenderedFile> {
    let mut sysctl =
        String::from("# Written by hybrid-agent: kernel settings kubelet and CNI plugins need.\n");
    for (k, v) in SYSCTLS {
        let optional = if OPTIONAL_SYSCTLS.contains(&k) {
            "-"
        } else {
            ""
        };
        sysctl.push_str(&format!("{optional}{k} = {v}\n"));
    }
    let mut modules =
        String::from("# Written by hybrid-agent: modules containerd and CNI plugins need.\n");
    for m in MODULES {
        modules.push_str(m);
        modules.push('\n');
    }
    vec![
        RenderedFile::new(
            paths::SYSCTL_CONF,
            sysctl.into_bytes(),
            0o644,
            "sysctl settings",
        ),
        RenderedFile::new(
            paths::MODULES_LOAD_CONF,
            modules.into_bytes(),
            0o644,
            "kernel modules loaded at boot",
        ),
    ]
}

/// Active swap areas (device names) from `/proc/swaps` under `paths`; none when the file is
/// absent (a `--root` sandbox has no /proc).
pub fn active_swap(paths: &HostPaths) -> Vec<String> {
    active_swap_in(&paths.resolve(PROC_SWAPS))
}

fn active_swap_in(file: &Path) -> Vec<String> {
    swap_areas_in(file).into_iter().map(|a| a.path).collect()
}

/// One active swap area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapArea {
    /// The file or device, as the kernel names it (a host path).
    pub path: String,
    /// `file` or `partition`.
    pub kind: String,
}

impl SwapArea {
    pub fn is_partition(&self) -> bool {
        self.kind == SWAP_PARTITION
    }
}

/// Active swap areas with their kind, from `/proc/swaps` under `paths`.
pub fn swap_areas(paths: &HostPaths) -> Vec<SwapArea> {
    swap_areas_in(&paths.resolve(PROC_SWAPS))
}

fn swap_areas_in(file: &Path) -> Vec<SwapArea> {
    std::fs::read_to_string(file)
        .map(|text| {
            text.lines()
                .skip(1) // header: Filename Type Size Used Priority
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    Some(SwapArea {
                        path: f.next()?.to_owned(),
                        kind: f.next().unwrap_or("file").to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `fstab` without its swap entries (third field `swap`), or `None` when it has none. Comments,
/// blank lines and every other line are kept byte for byte.
pub fn fstab_without_swap(fstab: &str) -> Option<String> {
    let mut out = String::with_capacity(fstab.len());
    let mut removed = false;
    for line in fstab.split_inclusive('\n') {
        let t = line.trim();
        let is_swap = !t.starts_with('#') && t.split_whitespace().nth(2) == Some("swap");
        if is_swap {
            removed = true;
        } else {
            out.push_str(line);
        }
    }
    removed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_lines_are_read_after_the_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("swaps");
        std::fs::write(&f, "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n").expect("write");
        assert!(active_swap_in(&f).is_empty());
        std::fs::write(
            &f,
            "Filename Type Size Used Priority\n/swapfile file 1048572 0 -2\n",
        )
        .expect("write");
        assert_eq!(active_swap_in(&f), vec!["/swapfile".to_owned()]);
        assert!(active_swap_in(&dir.path().join("absent")).is_empty());
        std::fs::write(
            &f,
            "Filename Type Size Used Priority\n/swapfile file 1 0 -2\n/dev/sda2 partition 1 0 -3\n",
        )
        .expect("write");
        let areas = swap_areas_in(&f);
        assert!(!areas[0].is_partition());
        assert!(areas[1].is_partition());
        assert_eq!(areas[1].path, "/dev/sda2");
    }

    #[test]
    fn fstab_loses_only_its_swap_lines() {
        let fstab = "# /etc/fstab\nUUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n\n# /dev/sdb1 none swap sw 0 0\n/dev/sda2\tnone\tswap\tsw\t0\t0\n";
        assert_eq!(
            fstab_without_swap(fstab).as_deref(),
            Some("# /etc/fstab\nUUID=1 / ext4 defaults 0 1\n\n# /dev/sdb1 none swap sw 0 0\n")
        );
        assert_eq!(fstab_without_swap("UUID=1 / ext4 defaults 0 1\n"), None);
    }
}
