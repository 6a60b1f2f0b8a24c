//! systemd unit files the agent writes: kubelet.service, a containerd.service drop-in, and the
//! agent's own hybrid-agent.service (shipped by the packages; `systemd/` holds the default
//! rendering, and a test keeps the two identical).
//!
//! containerd comes from the distro with its own unit, so we only add a drop-in (never give up
//! restarting, our config path); kubelet has no distro unit, so we own kubelet.service, shaped like
//! nodeadm's. Rendering is pure so it can be unit-tested and `systemd-analyze verify`-ed.

use std::path::{Path, PathBuf};

use super::ExecSpec;

/// Where administrators' and installers' units live, relative to the host root (systemd.unit(5)).
pub const SYSTEM_UNIT_DIR: &str = "etc/systemd/system";

/// Our drop-in for the distro's containerd.service, relative to [`SYSTEM_UNIT_DIR`].
pub const CONTAINERD_DROPIN: &str = "containerd.service.d/10-hybrid-agent.conf";

/// kubelet's binary path under nodeadm.
pub const KUBELET_BINARY: &str = "/usr/bin/kubelet";

/// systemd's restart delay for kubelet and containerd (nodeadm's kubelet.service and Debian's
/// containerd.service both use 5 s).
pub const DEFAULT_RESTART_SEC: u32 = 5;

/// First line of every file we write, so an administrator knows edits are overwritten.
const HEADER: &str =
    "# Written by hybrid-agent; local edits are overwritten. Override with a drop-in instead.";

/// A unit file (or drop-in) and where it goes, relative to the unit directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFile {
    pub path: PathBuf,
    pub content: String,
}

/// `iptables -P FORWARD ACCEPT -w 5` before kubelet starts (nodeadm internal/kubelet/kubelet.service):
/// Docker-era hosts default FORWARD to DROP, which silently drops pod traffic through the node.
/// `-` prefix: on an nftables-only host without iptables kubelet still starts. Only in the unit
/// join renders for a host: the stand-in's units in tests run in a container sharing the test
/// machine's network namespace, whose firewall must stay untouched.
pub const IPTABLES_FORWARD_ACCEPT: &str = "-/sbin/iptables -P FORWARD ACCEPT -w 5";
/// The slice kubelet runs in (nodeadm's kubelet.service), the `kubeReservedCgroup` `/runtime`
/// under the systemd cgroup driver.
pub const KUBELET_SLICE: &str = "runtime.slice";

/// kubelet.service running `exec` with its arguments inline (the stand-in in tests without an
/// environment file); see [`kubelet_unit`].
pub fn kubelet_service(exec: &ExecSpec, restart_sec: u32) -> UnitFile {
    kubelet_unit(exec, None, restart_sec)
}

/// kubelet.service, shaped like nodeadm's (internal/kubelet/kubelet.service): after and
/// requiring containerd, in runtime.slice, and (with the environment file) FORWARD opened before
/// the start.
///
/// With `environment_file` (what join renders: `/etc/eks/kubelet/environment`), the arguments
/// come from it as `$NODEADM_KUBELET_ARGS`, followed by `$KUBELET_EXTRA_ARGS`, so a user's drop-in
/// setting `KUBELET_EXTRA_ARGS` works as on a nodeadm host; kubelet's variables are in that file
/// and in the rendered drop-ins (proxy, CA bundle), so none is repeated here (a proxy password
/// stays out of a world-readable unit). Without it, `exec`'s arguments and environment are
/// written into the unit.
pub fn kubelet_unit(
    exec: &ExecSpec,
    environment_file: Option<&Path>,
    restart_sec: u32,
) -> UnitFile {
    let mut s = String::new();
    s.push_str(HEADER);
    s.push_str(
        "\n[Unit]\n\
         Description=Kubernetes kubelet (supervised by hybrid-agent)\n\
         Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/\n\
         After=containerd.service\n\
         Requires=containerd.service\n\
         # hybrid-agent watches restarts itself (crash loop -> degraded): systemd never gives up.\n\
         StartLimitIntervalSec=0\n\
         \n[Service]\n",
    );
    s.push_str(&format!("Slice={KUBELET_SLICE}\n"));
    match environment_file {
        Some(file) => {
            s.push_str(&format!(
                "EnvironmentFile={}\n",
                quote_word(&file.display().to_string())
            ));
            s.push_str(&format!("ExecStartPre={IPTABLES_FORWARD_ACCEPT}\n"));
            s.push_str(&format!(
                "ExecStart={} $NODEADM_KUBELET_ARGS $KUBELET_EXTRA_ARGS\n",
                quote_word(&exec.program.display().to_string())
            ));
        }
        None => {
            for (k, v) in &exec.env {
                s.push_str(&format!(
                    "Environment={}\n",
                    quote_word(&format!("{k}={v}"))
                ));
            }
            s.push_str(&format!(
                "ExecStart={} $KUBELET_EXTRA_ARGS\n",
                exec_line(&exec.program, &exec.args)
            ));
        }
    }
    s.push_str(&format!(
        "Restart=always\n\
         RestartSec={restart_sec}\n\
         # Pods' processes belong to containerd's shims, not kubelet: stop only kubelet itself.\n\
         KillMode=process\n\
         CPUAccounting=true\n\
         MemoryAccounting=true\n\
         \n[Install]\n\
         WantedBy=multi-user.target\n"
    ));
    UnitFile {
        path: PathBuf::from("kubelet.service"),
        content: s,
    }
}

/// The drop-in for the distro's containerd.service: never stop restarting, and run with our
/// config when it is not containerd's default path.
pub fn containerd_dropin(program: &Path, config: Option<&Path>, restart_sec: u32) -> UnitFile {
    let mut s = String::new();
    s.push_str(HEADER);
    s.push_str(
        "\n[Unit]\n\
         # hybrid-agent watches restarts itself (crash loop -> degraded): systemd never gives up.\n\
         StartLimitIntervalSec=0\n\
         \n[Service]\n",
    );
    s.push_str(&format!("Restart=always\nRestartSec={restart_sec}\n"));
    if let Some(config) = config {
        // An empty ExecStart= clears the distro's before ours replaces it (systemd.service(5)).
        let args = vec!["--config".to_string(), config.display().to_string()];
        s.push_str(&format!(
            "ExecStart=\nExecStart={}\n",
            exec_line(program, &args)
        ));
    }
    UnitFile {
        path: PathBuf::from(CONTAINERD_DROPIN),
        content: s,
    }
}

/// An `ExecStart=` command line: each word quoted as systemd.service(5) "Command lines" requires.
pub fn exec_line(program: &Path, args: &[String]) -> String {
    let mut words = vec![quote_word(&program.display().to_string())];
    words.extend(args.iter().map(|a| quote_word(a)));
    words.join(" ")
}

/// Quotes one word for a unit file: `%` and `$` are doubled (specifier and variable expansion),
/// and words with anything but plain characters are double-quoted with C-style escapes.
pub fn quote_word(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%$".contains(c));
    if plain {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_systemd() {
        assert_eq!(quote_word("--node-ip=10.0.0.1"), "--node-ip=10.0.0.1");
        assert_eq!(quote_word("a b"), "\"a b\"");
        assert_eq!(quote_word("100%"), "100%%");
        assert_eq!(quote_word("$HOME"), "$$HOME");
        assert_eq!(quote_word("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(quote_word(""), "\"\"");
    }

    #[test]
    fn kubelet_unit_orders_after_containerd_and_restarts_forever() {
        let exec = ExecSpec {
            program: KUBELET_BINARY.into(),
            args: vec![
                "--config".into(),
                "/etc/kubernetes/kubelet/config.json".into(),
            ],
            env: vec![("AWS_CONFIG_FILE".into(), "/etc/aws config".into())],
        };
        let unit = kubelet_service(&exec, 7).content;
        assert!(unit.contains("After=containerd.service\nRequires=containerd.service\n"));
        assert!(unit.contains("StartLimitIntervalSec=0\n"));
        assert!(unit.contains(
            "ExecStart=/usr/bin/kubelet --config /etc/kubernetes/kubelet/config.json $KUBELET_EXTRA_ARGS\n"
        ));
        assert!(unit.contains("Environment=\"AWS_CONFIG_FILE=/etc/aws config\"\n"));
        assert!(unit.contains("RestartSec=7\n"));
        assert!(unit.contains("Slice=runtime.slice\n"));
        assert!(
            !unit.contains("ExecStartPre"),
            "never in the stand-in's units"
        );

        // From the environment file: the arguments are nodeadm's variable, nothing inline.
        let unit = kubelet_unit(&exec, Some(Path::new("/etc/eks/kubelet/environment")), 5).content;
        assert!(unit.contains("EnvironmentFile=/etc/eks/kubelet/environment\n"));
        assert!(
            unit.contains("ExecStart=/usr/bin/kubelet $NODEADM_KUBELET_ARGS $KUBELET_EXTRA_ARGS\n")
        );
        assert!(!unit.contains("Environment="), "{unit}");
        assert!(unit.contains("ExecStartPre=-/sbin/iptables -P FORWARD ACCEPT -w 5\n"));
    }

    #[test]
    fn containerd_dropin_replaces_exec_start_only_with_a_config() {
        let plain = containerd_dropin(Path::new("/usr/bin/containerd"), None, 5).content;
        assert!(!plain.contains("ExecStart"));
        let with = containerd_dropin(
            Path::new("/usr/bin/containerd"),
            Some(Path::new("/etc/c.toml")),
            5,
        )
        .content;
        assert!(with.contains("ExecStart=\nExecStart=/usr/bin/containerd --config /etc/c.toml\n"));
    }
}
