//! The unit's sandbox and the built-in supervisor. `hybrid-agent.service` confines the agent
//! (`daemon::unit::HARDENING`); under `[supervisor] backend = "process"` containerd, kubelet and
//! every pod would be the agent's descendants and inherit that confinement (no setuid, no new
//! namespaces, a seccomp filter: no container could start). So a daemon that finds itself
//! confined with that backend lifts the sandbox with a drop-in, asks systemd to reload, and exits
//! with a failure: `Restart=on-failure` starts it again, unconfined, 5 s later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::paths::HostPaths;

/// The agent's unit.
pub const AGENT_UNIT: &str = "hybrid-agent.service";
/// The drop-in the daemon writes (beneath the root's /etc/systemd/system).
pub const DROP_IN: &str = "hybrid-agent.service.d/50-built-in-supervisor.conf";

/// Why this process counts as confined: `NoNewPrivs: 1` in /proc/self/status (proc(5)), which
/// the unit's `NoNewPrivileges=yes` (and the filters that imply it) sets and no container can
/// live with (setuid binaries, file capabilities). A seccomp filter alone is no sign: container
/// managers (nspawn, docker) put one on everything they run.
pub fn confinement() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let nnp = status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(str::trim);
    (nnp == Some("1"))
        .then(|| "no new privileges: NoNewPrivileges=yes or a system call filter".to_owned())
}

/// What [`lift`] did.
#[derive(Debug, thiserror::Error)]
#[error(
    "the built-in supervisor ([supervisor] backend = \"process\") cannot run containerd and kubelet inside {AGENT_UNIT}'s sandbox ({why}): every container would inherit it. {outcome}"
)]
pub struct Confined {
    pub why: String,
    pub outcome: String,
}

/// Writes [`DROP_IN`] and reloads systemd; the error says what was done and what happens next.
pub async fn lift(paths: &HostPaths, why: String) -> Confined {
    let file: PathBuf = paths.systemd_unit_dir().join(DROP_IN);
    let outcome = match write(&file).await {
        Err(e) => format!(
            "Writing {} failed ({e}); add it by hand (`systemctl edit {AGENT_UNIT}`, content in packaging/README.md) or use the systemd backend",
            file.display()
        ),
        Ok(()) => match reload(paths.root()).await {
            Ok(()) => format!(
                "Wrote {} to lift it and reloaded systemd: systemd starts the agent again without it",
                file.display()
            ),
            Err(e) => format!(
                "Wrote {} to lift it, but reloading systemd failed ({e}): run `systemctl daemon-reload`",
                file.display()
            ),
        },
    };
    Confined { why, outcome }
}

async fn write(file: &Path) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::replace_unsynced(file, super::unit::BUILT_IN_SUPERVISOR_DROP_IN.as_bytes())
}

async fn reload(root: &Path) -> Result<(), String> {
    let address = crate::supervise::systemd::system_bus_address(root);
    let timeout = Duration::from_secs(30);
    let call = async {
        let conn = zbus::connection::Builder::address(address.as_str())
            .method_timeout(timeout)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let manager = zbus_systemd::systemd1::ManagerProxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        manager.reload().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer on {address} within {timeout:?}"))?
}
