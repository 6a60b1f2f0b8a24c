//! Pid files and the ownership check the built-in backend runs before it signals or adopts a
//! process it did not spawn in this run.
//!
//! A pid alone proves nothing after a restart: the pid may have been reused by anything. A process
//! counts as ours only if all of these hold (k0s checks the first two; the start time closes the
//! pid-reuse gap):
//!
//! 1. its start time (field 22 of `/proc/<pid>/stat`) equals the one recorded at spawn;
//! 2. its environment carries our marker `HYBRID_AGENT_SUPERVISED=<component>@<state dir>`, which
//!    also tells two agents with different state dirs apart;
//! 3. its executable (`/proc/<pid>/exe`) is the program we would start now — if the marker matches
//!    but the executable changed (a package upgrade), it is ours but stale: stop it, start anew.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ComponentName, SuperviseError};

/// The environment variable that marks a child as spawned by an agent.
pub const MARKER_ENV: &str = "HYBRID_AGENT_SUPERVISED";

/// What the pid file stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    pub exe: PathBuf,
}

/// The marker value for `component` under the agent whose state lives in `state_dir`.
pub fn marker_value(component: ComponentName, state_dir: &Path) -> String {
    format!("{}@{}", component.as_str(), state_dir.display())
}

/// Result of the ownership check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Ours, running the expected executable: adopt it.
    Ours,
    /// Ours but running another executable (upgraded binary): stop it, then start fresh.
    OursStale { reason: String },
    /// The pid is gone (or a zombie): nothing to do but start.
    NotRunning,
    /// Something else lives under that pid now: never signal it.
    Foreign { reason: String },
}

pub fn read(path: &Path) -> Result<Option<PidRecord>, SuperviseError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SuperviseError::Io {
            op: "read pid file",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Mode of pid files: readable by anyone, like those under /run.
pub const PID_FILE_MODE: u32 = 0o644;

/// Writes the pid file atomically (exclusive temp file + fsync + rename,
/// [`crate::fsutil::replace_file`]), so a crash never leaves half a record.
pub fn write(path: &Path, record: &PidRecord) -> Result<(), SuperviseError> {
    let bytes = serde_json::to_vec(record).map_err(|e| SuperviseError::Io {
        op: "serialize pid record for",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    crate::fsutil::replace_file(path, &bytes, PID_FILE_MODE, crate::fsutil::TempName::Unique)
        .map_err(|e| SuperviseError::Io {
            op: e.step.verb(),
            path: e.path,
            source: e.source,
        })
}

pub fn remove(path: &Path) -> Result<(), SuperviseError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SuperviseError::Io {
            op: "remove pid file",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Start time and state letter of `pid`, or None when it does not exist.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after it start after the
    // last ')'. There, field 3 (state) is index 0 and field 22 (starttime) is index 19.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The executable of `pid`, without the " (deleted)" suffix the kernel adds after an upgrade.
pub fn proc_exe(pid: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = link.to_string_lossy();
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(&text),
    ))
}

/// Whether `/proc/<pid>/environ` holds `key=value`.
pub fn proc_has_env(pid: u32, key: &str, value: &str) -> bool {
    let Ok(bytes) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{key}={value}");
    bytes
        .split(|b| *b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// Runs the ownership check on a recorded pid.
pub fn check(record: &PidRecord, expected_exe: &Path, marker: &str) -> Ownership {
    let Some((state, start_ticks)) = proc_stat(record.pid) else {
        return Ownership::NotRunning;
    };
    if state == 'Z' || state == 'X' {
        return Ownership::NotRunning;
    }
    if start_ticks != record.start_ticks {
        return Ownership::Foreign {
            reason: format!(
                "pid {} started at tick {start_ticks}, not {} (pid reused)",
                record.pid, record.start_ticks
            ),
        };
    }
    if !proc_has_env(record.pid, MARKER_ENV, marker) {
        return Ownership::Foreign {
            reason: format!("pid {} lacks {MARKER_ENV}={marker}", record.pid),
        };
    }
    let expected =
        std::fs::canonicalize(expected_exe).unwrap_or_else(|_| expected_exe.to_path_buf());
    match proc_exe(record.pid) {
        Some(exe) if exe == expected => Ownership::Ours,
        Some(exe) => Ownership::OursStale {
            reason: format!(
                "pid {} runs {} instead of {}",
                record.pid,
                exe.display(),
                expected.display()
            ),
        },
        None => Ownership::OursStale {
            reason: format!("cannot read the executable of pid {}", record.pid),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_passes_only_with_marker_and_start_time() {
        let me = std::process::id();
        let Some((_, start)) = proc_stat(me) else {
            panic!("/proc/self/stat unreadable");
        };
        let exe = proc_exe(me).unwrap_or_default();
        let record = PidRecord {
            pid: me,
            start_ticks: start,
            exe: exe.clone(),
        };
        // The test process has no marker: it must never count as ours.
        assert!(matches!(
            check(&record, &exe, "kubelet@/nowhere"),
            Ownership::Foreign { .. }
        ));
        let reused = PidRecord {
            start_ticks: start + 1,
            ..record.clone()
        };
        assert!(matches!(
            check(&reused, &exe, "x"),
            Ownership::Foreign { .. }
        ));
        let gone = PidRecord {
            pid: u32::MAX - 1,
            ..record
        };
        assert_eq!(check(&gone, &exe, "x"), Ownership::NotRunning);
    }

    #[test]
    fn pid_file_round_trips() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("kubelet.pid");
        assert_eq!(read(&path).ok().flatten(), None);
        let rec = PidRecord {
            pid: 42,
            start_ticks: 7,
            exe: "/usr/bin/x".into(),
        };
        write(&path, &rec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&path).ok().flatten(), Some(rec));
        remove(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&path).ok().flatten(), None);
    }
}
