//! Atomic file replacement: the one way identity state, keys and credentials reach the disk.
//!
//! amazon-ssm-agent rewrites the shared credentials file in place, so a reader (the kubelet's
//! aws-iam-authenticator) can catch it half-written. Everything here is written to a temporary
//! file in the same directory (same filesystem, so `rename` is atomic), created with its final
//! mode (secrets are never world-readable, not even for a moment), fsynced, renamed over the
//! target, and then the directory is fsynced so the rename itself survives a power cut
//! ([`crate::fsutil`], which the install journal uses too). What is the identity's own: missing
//! directories are created private ([`SECRET_DIR_MODE`]), temporary names are unique per writer
//! ([`TempName::Unique`]), and errors say what to check.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, ReplaceError, Step, TempName};

/// Mode of every secret file (keys, credentials): owner read/write only.
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Mode of directories holding secrets.
pub const SECRET_DIR_MODE: u32 = 0o700;

/// A filesystem step that failed, naming the file and the step.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error(
        "cannot create directory {path}: {source}; check that the parent exists and is writable by the agent (root)"
    )]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no parent directory; give a file path, not a directory or `/`")]
    NoParent { path: PathBuf },
    #[error(
        "cannot write temporary file {path}: {source}; check free space and permissions of its directory"
    )]
    WriteTemp {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sync directory {path}: {source}")]
    SyncDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates `dir` (and parents) if missing; new directories get `mode`. Existing directories are
/// left as they are: the operator may have chosen their mode on purpose.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), AtomicWriteError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| AtomicWriteError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Replaces `path` with `contents` atomically; the file has `mode` from its first byte on.
/// Parent directories are created with [`SECRET_DIR_MODE`] when missing.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => {
            return Err(AtomicWriteError::NoParent {
                path: path.to_path_buf(),
            });
        }
    };
    if path.file_name().is_none() {
        return Err(AtomicWriteError::NoParent {
            path: path.to_path_buf(),
        });
    }
    ensure_dir(dir, SECRET_DIR_MODE)?;
    fsutil::replace_file(path, contents, mode, TempName::Unique).map_err(from_replace)
}

/// Renames `from` over `to` and syncs `to`'s directory, so the rename survives a power cut.
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), AtomicWriteError> {
    std::fs::rename(from, to).map_err(|source| AtomicWriteError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })?;
    sync_dir(fsutil::parent_dir(to))
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    fsutil::sync_dir(dir).map_err(from_replace)
}

/// The identity's wording for a failed step of [`fsutil::replace_file`].
fn from_replace(e: ReplaceError) -> AtomicWriteError {
    match e.step {
        Step::Create | Step::Write | Step::Chmod | Step::Fsync => AtomicWriteError::WriteTemp {
            path: e.path,
            source: e.source,
        },
        Step::Rename => AtomicWriteError::Rename {
            from: e.temp,
            to: e.path,
            source: e.source,
        },
        Step::OpenDir | Step::SyncDir => AtomicWriteError::SyncDir {
            path: e.path,
            source: e.source,
        },
    }
}

/// Removes `path` if it exists and syncs its directory; a missing file is not an error.
pub fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/dir/file");
        write_atomic(&p, b"one", SECRET_FILE_MODE).expect("first write");
        assert_eq!(std::fs::read(&p).expect("read"), b"one");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        write_atomic(&p, b"two", 0o644).expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
    }

    #[test]
    fn failed_write_leaves_target_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("file");
        write_atomic(&p, b"keep", SECRET_FILE_MODE).expect("write");
        // A directory where the target is makes rename fail; the old content must survive.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).expect("mkdir");
        std::fs::write(blocked.join("x"), b"x").expect("write x");
        let err = write_atomic(&blocked, b"new", SECRET_FILE_MODE)
            .expect_err("rename over non-empty dir");
        assert!(err.to_string().contains("blocked"), "{err}");
        assert_eq!(std::fs::read(&p).expect("read"), b"keep");
        let leftovers = std::fs::read_dir(dir.path())
            .expect("readdir")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn remove_missing_is_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        remove_durably(&dir.path().join("absent")).expect("missing file is fine");
    }
}
