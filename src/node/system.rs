//! Kernel settings a node needs: sysctls (forwarding, bridge netfilter, and the values kubelet's
//! `protectKernelDefaults` insists on), kernel modules to load at boot, and the swap check.

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
/// Kernel modules containerd's overlay snapshotter and bridge CNIs need.
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
/// The kernel's list of active swap areas.
pub const PROC_SWAPS: &str = "/proc/swaps";

/// The sysctl and modules-load files.
pub fn render() -> Vec<RenderedFile> {
    let mut sysctl =
        String::from("# Written by hybrid-agent: kernel settings kubelet and CNI plugins need.\n");
    for (k, v) in SYSCTLS {
        sysctl.push_str(&format!("{k} = {v}\n"));
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
    std::fs::read_to_string(file)
        .map(|text| {
            text.lines()
                .skip(1) // header: Filename Type Size Used Priority
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    }
}
