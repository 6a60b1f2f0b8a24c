//! One run at a time: the exclusive locks that keep two `join`/`leave`/`upgrade` runs, or two
//! daemons, from working on the same host at once.
//!
//! A second `join` would otherwise take a running join's journal for an interrupted one and roll
//! it back (deregistering its fresh instance), and two `run` daemons would share the spool,
//! cursors and pid files. So:
//!
//! - [`LockKind::Admin`] (`/run/hybrid-agent/admin.lock`): held by `join` (not `--dry-run`,
//!   which changes nothing), `leave` and `upgrade` for their whole run. They exclude each other.
//! - [`LockKind::Daemon`] (`/run/hybrid-agent/daemon.lock`): held by `run` for its lifetime. A
//!   daemon and a join may run together (join starts or restarts the daemon under systemd);
//!   two daemons may not.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)`: a second run fails at once, never waits, and the
//! kernel drops the lock when its holder dies, so a crash cannot leave the host locked. After
//! locking, the holder writes its pid, command and start time into the file; a refused run
//! reads them back for its message. The file lives under `/run` (tmpfs: gone at reboot, with
//! every process that could hold it) and is removed again on release, so a `--root` sandbox is
//! left as it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::paths::HostPaths;

/// Directory of the lock files (tmpfs on a real host). Ours: the status socket's directory.
pub const LOCK_DIR: &str = "/run/hybrid-agent";
/// Lock of `join`, `leave` and `upgrade`. Ours.
pub const ADMIN_LOCK: &str = "/run/hybrid-agent/admin.lock";
/// Lock of the `run` daemon. Ours.
pub const DAEMON_LOCK: &str = "/run/hybrid-agent/daemon.lock";
/// Tries at opening and locking when the file is replaced or removed under us by a holder that
/// released it at that moment (each retry follows a release, so a few always suffice).
const LOCK_ATTEMPTS: u32 = 5;
/// The holder's note is a few short lines; more than this is not ours.
const MAX_NOTE_BYTES: u64 = 4096;

/// Which lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `join`, `leave`, `upgrade`.
    Admin,
    /// `run`.
    Daemon,
}

impl LockKind {
    /// The lock file (host path).
    pub fn host_path(self) -> &'static str {
        match self {
            LockKind::Admin => ADMIN_LOCK,
            LockKind::Daemon => DAEMON_LOCK,
        }
    }

    fn what_to_do(self) -> &'static str {
        match self {
            LockKind::Admin => {
                "join, leave and upgrade run one at a time: wait for it to finish (or stop it), then run this command again"
            }
            LockKind::Daemon => {
                "only one daemon may run per host: stop the other one first (`systemctl stop hybrid-agent`, or end that process)"
            }
        }
    }
}

/// Who holds a lock, as the holder wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub command: Option<String>,
    pub started: Option<String>,
}

impl Holder {
    fn render(&self) -> String {
        match (&self.pid, &self.command) {
            (Some(pid), command) => format!(
                "`hybrid-agent {}` (pid {pid}{})",
                command.as_deref().unwrap_or("?"),
                self.started
                    .as_deref()
                    .map(|s| format!(", started {s}"))
                    .unwrap_or_default()
            ),
            // Locked, but the holder has not written its note yet (it has just started).
            (None, _) => "another hybrid-agent command (just starting; pid not written yet)".into(),
        }
    }

    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("command", v)) => h.command = Some(v.trim().to_owned()),
                Some(("started", v)) => h.started = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        h
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is running and holds {}; {}. Nothing was changed", .holder.render(), .path.display(), .kind.what_to_do())]
    Held {
        kind: LockKind,
        path: PathBuf,
        holder: Holder,
    },
    #[error("cannot take the lock {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held lock; released (file removed, then unlocked) on drop.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// Directories to remove on release when empty, outermost first: the lock directory, and
    /// in a `--root` sandbox its parents up to the root (whichever run created them: a run
    /// killed while holding the lock leaves them to the next one).
    cleanup: Vec<PathBuf>,
}

impl RunLock {
    /// Takes `kind` for `command` (the subcommand, for the message others see) or says who
    /// holds it.
    pub fn acquire(paths: &HostPaths, kind: LockKind, command: &str) -> Result<RunLock, LockError> {
        let path = paths.resolve(kind.host_path());
        let io = |source: std::io::Error| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut last = None;
        for _ in 0..LOCK_ATTEMPTS {
            let created = create_dirs(&paths.resolve(LOCK_DIR)).map_err(io)?;
            let mut file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
            {
                Ok(f) => f,
                // The directory went away with a holder's release between the two calls.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(io(e)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    remove_dirs(&created);
                    return Err(LockError::Held { kind, path, holder });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            // The holder before us may have removed the file between our open and our lock:
            // then we hold a lock on a file nobody else can find. Only the file at the path
            // counts.
            let same = match (file.metadata(), std::fs::symlink_metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                last = Some(std::io::Error::other(
                    "the lock file was replaced while locking",
                ));
                continue;
            }
            let note = format!(
                "pid={}\ncommand={command}\nstarted={}\n",
                std::process::id(),
                time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            );
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(note.as_bytes()))
                .map_err(io)?;
            return Ok(RunLock {
                file,
                path,
                cleanup: cleanup_dirs(paths),
            });
        }
        Err(io(last.unwrap_or_else(|| std::io::Error::other("gave up"))))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody can lock this file after us and believe it is
        // the lock: a late opener finds the path gone or another file there, and retries.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
        remove_dirs(&self.cleanup);
    }
}

/// The lock directory and, under a sandbox root, its parents below the root; outermost first.
/// On a real host only /run/hybrid-agent itself: /run is the system's.
fn cleanup_dirs(paths: &HostPaths) -> Vec<PathBuf> {
    let dir = paths.resolve(LOCK_DIR);
    if paths.root() == Path::new("/") {
        return vec![dir];
    }
    let mut chain: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| d.starts_with(paths.root()) && *d != paths.root())
        .map(Path::to_path_buf)
        .collect();
    chain.reverse();
    chain
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        // Unreadable or not UTF-8: the message says the holder is unknown.
        let _ = std::io::Read::by_ref(file)
            .take(MAX_NOTE_BYTES)
            .read_to_string(&mut text);
    }
    Holder::parse(&text)
}

/// Creates `dir` and its missing parents (0755, as /run's own directories are); returns the
/// ones created, outermost first.
fn create_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    let mut created = Vec::new();
    for d in missing {
        match std::fs::create_dir(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Removes the directories a lock created, deepest first, where empty (a daemon's status
/// socket, or another lock, keeps them).
fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        let first = RunLock::acquire(&paths, LockKind::Admin, "join").expect("first");
        // flock locks belong to the open file description: a second open in the same process
        // conflicts just as another process would.
        match RunLock::acquire(&paths, LockKind::Admin, "leave") {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder.pid, Some(std::process::id()));
                assert_eq!(holder.command.as_deref(), Some("join"));
                assert!(holder.started.is_some());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // The daemon's lock is another lock.
        let daemon = RunLock::acquire(&paths, LockKind::Daemon, "run").expect("daemon");
        drop(daemon);
        drop(first);
        assert!(
            !dir.path().join("run").exists(),
            "the lock left its directory behind"
        );
        let again = RunLock::acquire(&paths, LockKind::Admin, "leave").expect("after release");
        drop(again);
    }

    #[test]
    fn the_message_names_pid_command_and_what_to_do() {
        let e = LockError::Held {
            kind: LockKind::Admin,
            path: PathBuf::from("/run/hybrid-agent/admin.lock"),
            holder: Holder::parse("pid=42\ncommand=join\nstarted=2026-01-01T00:00:00Z\n"),
        };
        let text = e.to_string();
        assert!(text.contains("`hybrid-agent join` (pid 42, started 2026-01-01T00:00:00Z)"));
        assert!(text.contains("wait for it to finish"), "{text}");
        assert!(text.contains("Nothing was changed"), "{text}");
    }
}
