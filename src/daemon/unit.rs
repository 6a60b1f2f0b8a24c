//! The agent's own unit, `hybrid-agent.service` (the packages ship it as rendered here; a test
//! compares the two).

use std::path::{Path, PathBuf};

use crate::supervise::units::{UnitFile, exec_line};

use super::{
    AGENT_STOP_TIMEOUT, COMPONENT_STOP_WORST, STOP_MARGIN, STOPPED_COMPONENTS,
    TELEMETRY_STOP_TIMEOUT,
};

/// Where the packages install the agent binary.
pub const AGENT_BINARY: &str = "/usr/bin/hybrid-agent";

/// glibc malloc tunables of the agent's unit (see the unit rendering): `MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` (mallopt(3)).
pub const AGENT_MALLOC_ENV: [(&str, &str); 5] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
    // mimalloc (the static build): return freed pages at once, and commit arena memory as it
    // is used rather than whole arenas up front. It takes both: with the default settings
    // the drain held 70.8 MiB anonymous RSS and 38.7 MiB idle; with the purge delay alone
    // 44 MiB and 35-55 MiB; with both, 16.2 and 4.2 MiB (docs/measurements.md "Allocator").
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];

/// The agent's own unit (comments in it say why each setting is there).
pub fn hybrid_agent_service(program: &Path) -> UnitFile {
    let mut s = String::new();
    s.push_str(
        "[Unit]\n\
         Description=hybrid-agent: keeps this machine joined to Amazon EKS as a hybrid node\n\
         Documentation=https://github.com/hybrid-agent/hybrid-agent\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n[Service]\n\
         Type=notify\n\
         NotifyAccess=main\n",
    );
    s.push_str(&format!(
        "ExecStart={}\n",
        exec_line(program, &["run".to_string()])
    ));
    // glibc's allocator keeps freed memory in per-thread arenas and below a dynamic mmap
    // threshold; after a drained backlog that held the agent at ~13 MiB anonymous RSS instead of
    // ~9 (scripts/bench telemetry). Two arenas and fixed 128 KiB thresholds give it back.
    s.push_str(
        "# Allocator tunables: glibc malloc (mallopt(3)) for a glibc build, two arenas and fixed\n\
         # 128 KiB thresholds; mimalloc for the static release, freed pages returned at once and arena\n\
         # memory committed as used (it needs both to stay small). Either gives memory back after a\n\
         # drained backlog; each ignores the other's.\n",
    );
    s.push_str(&format!(
        "Environment={}\n",
        AGENT_MALLOC_ENV
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    // on-failure, not always: a clean exit is a stop someone asked for (`systemctl stop`, or
    // `hybrid-agent leave` sending SIGTERM), and must stay stopped; crashes, signals and a
    // missed watchdog still restart it. Exit 4 (not joined) is final until `join`.
    s.push_str(&format!(
        "# Restart after crashes, signals and a missed watchdog, not after a clean stop; exit {0}\n\
         # means \"not joined\" and stays down until `hybrid-agent join` starts the unit.\n\
         Restart=on-failure\n\
         RestartPreventExitStatus={0}\n\
         RestartSec=5\n\
         WatchdogSec=60\n",
        crate::exit::ExitCode::NotJoined.code()
    ));
    s.push_str(&timeout_stop_lines());
    s.push_str(
        "# Stop only the agent's own process: under the built-in backend containerd and kubelet are\n\
         # its children (own process groups) and must outlive an agent restart to be adopted;\n\
         # under systemd they are units of their own anyway.\n\
         KillMode=process\n",
    );
    s.push_str(HARDENING);
    s.push_str(
        "\n[Install]\n\
         WantedBy=multi-user.target\n",
    );
    UnitFile {
        path: PathBuf::from("hybrid-agent.service"),
        content: s,
    }
}

/// The sandbox of the agent's unit: what the daemon never needs (packaging/README.md lists each
/// directive left out, and why). It is written for the systemd backend, where containerd and
/// kubelet are units of their own; under the built-in backend they and every pod would be the
/// agent's descendants and inherit it, so the daemon lifts it with a drop-in
/// ([`BUILT_IN_SUPERVISOR_DROP_IN`]) before it starts them.
pub const HARDENING: &str = "\
# Sandbox (systemd.exec(5)); the directives left out and why: packaging/README.md.
# No setuid/setgid, file capabilities or seccomp escape for the agent or what it runs.
NoNewPrivileges=yes
# /usr and /boot read-only: the daemon installs nothing (join and upgrade do, outside the unit).
ProtectSystem=yes
# Its own /tmp and /var/tmp; the agent keeps nothing there.
PrivateTmp=yes
# Only pseudo devices (/dev/null, /dev/urandom ...): no disks, no /dev/kmsg.
PrivateDevices=yes
# /proc/sys, /sys, kernel modules, kernel log, the clock and cgroups: read-only or out of
# reach. join sets sysctls and loads modules; the daemon only reads them.
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
# No new namespaces, realtime scheduling, personality changes or setuid files.
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictSUIDSGID=yes
# No writable-and-executable memory (no JIT here).
MemoryDenyWriteExecute=yes
# Sockets: unix (D-Bus, sd_notify, the status socket), IP (AWS, the API server), netlink
# (interface addresses).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# Native system calls of a service only (the @system-service group), EPERM for the rest.
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# Files the agent creates without an explicit mode are not world-writable (secrets are 0600
# regardless).
UMask=0022
";

/// The drop-in that lifts [`HARDENING`] for the built-in backend (written by the daemon,
/// `hybrid-agent.service.d/` under /etc/systemd/system): containerd, kubelet and every pod
/// would otherwise inherit the agent's sandbox.
pub const BUILT_IN_SUPERVISOR_DROP_IN: &str = "\
# Written by hybrid-agent: [supervisor] backend = \"process\" runs containerd and kubelet (and
# so every pod) as the agent's descendants, which would inherit the unit's sandbox.
[Service]
NoNewPrivileges=no
ProtectSystem=no
PrivateTmp=no
PrivateDevices=no
ProtectKernelTunables=no
ProtectKernelModules=no
ProtectKernelLogs=no
ProtectControlGroups=no
ProtectClock=no
RestrictNamespaces=no
RestrictRealtime=no
LockPersonality=no
RestrictSUIDSGID=no
MemoryDenyWriteExecute=no
RestrictAddressFamilies=
SystemCallArchitectures=
SystemCallFilter=
";

/// `TimeoutStopSec=` of the agent's unit, [`AGENT_STOP_TIMEOUT`], with its
/// arithmetic as a comment so a reader of the unit sees where the figure comes from.
fn timeout_stop_lines() -> String {
    use crate::supervise::process::{DEFAULT_STOP_TIMEOUT, KILL_WAIT};
    format!(
        "# Longest graceful stop, with on_agent_stop = \"stop\": {STOPPED_COMPONENTS} components x {} s\n\
         # (systemd stop job; the built-in backend needs {} s SIGTERM grace + {} s after SIGKILL)\n\
         # + {} s telemetry + {} s margin = {} s.\n\
         TimeoutStopSec={}\n",
        COMPONENT_STOP_WORST.as_secs(),
        DEFAULT_STOP_TIMEOUT.as_secs(),
        KILL_WAIT.as_secs(),
        TELEMETRY_STOP_TIMEOUT.as_secs(),
        STOP_MARGIN.as_secs(),
        AGENT_STOP_TIMEOUT.as_secs(),
        AGENT_STOP_TIMEOUT.as_secs(),
    )
}
