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
pub const AGENT_MALLOC_ENV: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
];

/// The agent's own unit. `KillMode=process`: under the built-in backend, containerd and kubelet
/// are the agent's children in their own process groups and must outlive an agent restart to be
/// adopted; under systemd they are separate units anyway.
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
        "Restart=on-failure\n\
         RestartPreventExitStatus={}\n\
         RestartSec=5\n\
         WatchdogSec=60\n",
        crate::exit::ExitCode::NotJoined.code()
    ));
    s.push_str(&timeout_stop_lines());
    s.push_str(
        "KillMode=process\n\
         \n[Install]\n\
         WantedBy=multi-user.target\n",
    );
    UnitFile {
        path: PathBuf::from("hybrid-agent.service"),
        content: s,
    }
}

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
