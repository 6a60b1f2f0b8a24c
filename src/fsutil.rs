//! Replacing a file atomically: the one implementation of temp file + fsync + rename +
//! directory fsync, shared by the identity's files ([`crate::identity::atomic`]: keys,
//! credentials, state) and by the landing journal ([`crate::node::land`]: binaries, rendered
//! configuration, records).
//!
//! The new content goes to a temporary file in the target's directory (same filesystem, so the
//! rename is atomic), created with its final mode (a secret is never world-readable, not even for
//! a moment), fsynced, renamed over the target, and then the directory is fsynced so the rename
//! itself survives a power cut. A reader or a crash sees the old file or the new one, never a
//! torn one.
//!
//! Callers differ only in how the temporary file is named ([`TempName`]) and in how they report
//! a failed step, so errors here name the [`Step`] and the path, and each caller maps them to
//! its own error type.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How the temporary file next to the target is named and opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempName {
    /// `.NAME.tmp-PID-RANDOM`, created exclusively (`O_EXCL`): dot-prefixed so tools globbing
    /// the directory skip it; pid + random so two writers (an operator running `join` while the
    /// daemon rotates) never share a temp file, and a link planted under the name is never
    /// followed.
    Unique,
    /// `NAME.PID<suffix>`: the suffix marks the file as the agent's, so a run killed mid-write
    /// leaves a leftover that is recognisable and that a later write with the same pid unlinks
    /// before creating the file afresh, exclusively and without following links.
    Suffix(&'static str),
}

/// A step of [`replace_file`] or [`sync_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the temporary file.
    Create,
    /// Writing the content to the temporary file.
    Write,
    /// Setting the temporary file's mode.
    Chmod,
    /// fsync of the temporary file.
    Fsync,
    /// Renaming the temporary file over the target.
    Rename,
    /// Opening the directory to fsync it.
    OpenDir,
    /// fsync of the directory.
    SyncDir,
}

impl Step {
    /// The step as a verb for "cannot VERB PATH" messages.
    pub fn verb(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Write => "write",
            Step::Chmod => "chmod",
            Step::Fsync => "fsync",
            Step::Rename => "rename into place",
            Step::OpenDir => "open directory",
            Step::SyncDir => "fsync directory",
        }
    }
}

/// A failed step, naming the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("cannot {} {}: {source}", .step.verb(), .path.display())]
pub struct ReplaceError {
    pub step: Step,
    /// The temporary file for [`Step::Create`] to [`Step::Fsync`], the target for
    /// [`Step::Rename`], the directory for [`Step::OpenDir`] and [`Step::SyncDir`].
    pub path: PathBuf,
    /// The temporary file (also for the later steps, e.g. to name both ends of a rename).
    pub temp: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Where [`replace_file`] writes before the rename (for [`TempName::Unique`], a fresh random
/// name on every call).
pub fn temp_path(target: &Path, naming: TempName) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let temp = match naming {
        TempName::Unique => format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ),
        TempName::Suffix(suffix) => format!("{name}.{}{suffix}", std::process::id()),
    };
    target.with_file_name(temp)
}

/// Replaces `target` with `contents` through `<target>.tmp` and a rename, without fsync: a crash
/// leaves the old or the new content, never a torn one, but a power cut may bring back the old.
/// For positions that may lag (a lagging read position means records sent twice, which
/// at-least-once allows), where an fsync per update would cost more than it saves.
pub fn replace_unsynced(target: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = unsynced_temp_path(target);
    let written = create_exclusive(&tmp, UNSYNCED_MODE, true)
        .and_then(|mut f| f.write_all(contents))
        .and_then(|()| std::fs::rename(&tmp, target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Mode of the files [`replace_unsynced`] creates, before the umask (what `std::fs::write` used).
const UNSYNCED_MODE: u32 = 0o666;

/// Where [`replace_unsynced`] writes before the rename: `<target>.tmp`, a fixed name, so a run
/// killed mid-write leaves one leftover that the next write clears.
pub fn unsynced_temp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    target.with_file_name(name)
}

/// Creates `path` exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`): whatever is opened is a new file
/// this call made, never an existing file or the target of a planted symlink. With
/// `clear_leftover`, an entry already under the name (a leftover of a killed run, or a planted
/// link) is unlinked first — unlink removes a symlink itself, not what it points at — and the
/// exclusive create is tried once more; losing that race again is an error.
pub fn create_exclusive(path: &Path, mode: u32, clear_leftover: bool) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .mode(mode)
            .open(path)
    };
    match open() {
        Err(e) if clear_leftover && e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Replaces `target` with `contents` atomically; the file has exactly `mode` from its first byte
/// on. The directory must exist. On failure before the rename the temporary file is removed and
/// `target` is untouched.
pub fn replace_file(
    target: &Path,
    contents: &[u8],
    mode: u32,
    naming: TempName,
) -> Result<(), ReplaceError> {
    let temp = temp_path(target, naming);
    let fail = |step: Step, path: &Path| {
        let temp = temp.clone();
        let path = path.to_path_buf();
        move |source| ReplaceError {
            step,
            path,
            temp,
            source,
        }
    };
    let written = write_temp(&temp, contents, mode, naming)
        .map_err(|(step, source)| fail(step, &temp)(source))
        .and_then(|()| std::fs::rename(&temp, target).map_err(fail(Step::Rename, target)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(parent_dir(target)).map_err(|e| ReplaceError { temp, ..e })
}

fn write_temp(
    temp: &Path,
    contents: &[u8],
    mode: u32,
    naming: TempName,
) -> Result<(), (Step, io::Error)> {
    // A unique name is fresh; a suffix name may be our own leftover from a killed run.
    let clear_leftover = matches!(naming, TempName::Suffix(_));
    let mut f = create_exclusive(temp, mode, clear_leftover).map_err(|e| (Step::Create, e))?;
    // The umask may have narrowed `mode` (fine) but never widened it; set it exactly anyway so a
    // file meant to be 0644 is not left 0600 by an unusual umask.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| (Step::Chmod, e))?;
    f.write_all(contents).map_err(|e| (Step::Write, e))?;
    f.sync_all().map_err(|e| (Step::Fsync, e))
}

/// The directory a rename of `path` happens in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), ReplaceError> {
    let fail = |step| {
        move |source| ReplaceError {
            step,
            path: dir.to_path_buf(),
            temp: PathBuf::new(),
            source,
        }
    };
    File::open(dir)
        .map_err(fail(Step::OpenDir))?
        .sync_all()
        .map_err(fail(Step::SyncDir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn temp_names_keep_each_callers_pattern() {
        let pid = std::process::id();
        let t = temp_path(Path::new("/etc/x/a.conf"), TempName::Suffix(".sfx"));
        assert_eq!(t, PathBuf::from(format!("/etc/x/a.conf.{pid}.sfx")));
        let u = temp_path(Path::new("/etc/x/a.conf"), TempName::Unique);
        let name = u.file_name().expect("name").to_string_lossy().into_owned();
        assert!(name.starts_with(&format!(".a.conf.tmp-{pid}-")), "{name}");
        assert_eq!(u.parent(), Some(Path::new("/etc/x")));
    }

    #[test]
    fn replaces_with_exact_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        for (naming, mode, text) in [
            (TempName::Unique, 0o600, &b"one"[..]),
            (TempName::Suffix(".t"), 0o644, b"two"),
            (TempName::Unique, 0o640, b"three"),
        ] {
            replace_file(&p, text, mode, naming).expect("replace");
            assert_eq!(std::fs::read(&p).expect("read"), text);
            let meta = std::fs::metadata(&p).expect("meta");
            assert_eq!(meta.mode() & 0o7777, mode);
            assert_eq!(names(dir.path()), vec!["f".to_owned()]);
        }
    }

    #[test]
    fn suffix_naming_reuses_a_leftover_temp_file() {
        // A run killed between create and rename leaves NAME.PID<suffix>; the next write with
        // the same pid must not trip over it.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let leftover = temp_path(&p, TempName::Suffix(".t"));
        std::fs::write(&leftover, b"half-written and much longer").expect("seed");
        replace_file(&p, b"new", 0o644, TempName::Suffix(".t")).expect("replace");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        assert_eq!(names(dir.path()), vec!["f".to_owned()]);
    }

    #[test]
    fn failed_rename_keeps_target_removes_temp_and_names_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A non-empty directory where the target is makes the rename fail.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).expect("mkdir");
        std::fs::write(blocked.join("x"), b"x").expect("write x");
        let e = replace_file(&blocked, b"new", 0o600, TempName::Suffix(".t"))
            .expect_err("rename over a non-empty directory");
        assert_eq!(e.step, Step::Rename);
        assert_eq!(e.path, blocked);
        assert_eq!(e.temp, temp_path(&blocked, TempName::Suffix(".t")));
        assert!(e.to_string().contains("rename into place"), "{e}");
        assert_eq!(names(dir.path()), vec!["blocked".to_owned()]);
        assert_eq!(names(&blocked), vec!["x".to_owned()]);
    }

    /// A symlink planted under the temp name (by another local user, or left by anything) must
    /// never be followed: the file it points at keeps its bytes and the target ends up a regular
    /// file.
    #[test]
    fn a_symlink_at_the_temp_name_is_never_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let p = dir.path().join("f");
        symlink(&victim, temp_path(&p, TempName::Suffix(".t"))).expect("plant");
        replace_file(&p, b"new", 0o644, TempName::Suffix(".t")).expect("replace");
        assert_eq!(std::fs::read(&victim).expect("read victim"), b"precious");
        let meta = std::fs::symlink_metadata(&p).expect("meta");
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        assert_eq!(names(dir.path()), vec!["f".to_owned(), "victim".to_owned()]);

        let q = dir.path().join("pos");
        symlink(&victim, unsynced_temp_path(&q)).expect("plant");
        replace_unsynced(&q, b"7\n").expect("replace unsynced");
        assert_eq!(std::fs::read(&victim).expect("read victim"), b"precious");
        assert!(
            std::fs::symlink_metadata(&q)
                .expect("meta")
                .file_type()
                .is_file()
        );
        assert_eq!(std::fs::read(&q).expect("read"), b"7\n");
        assert_eq!(
            names(dir.path()),
            vec!["f".to_owned(), "pos".to_owned(), "victim".to_owned()]
        );
    }

    #[test]
    fn failed_unsynced_replace_removes_its_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).expect("mkdir");
        std::fs::write(blocked.join("x"), b"x").expect("write x");
        replace_unsynced(&blocked, b"1\n").expect_err("rename over a non-empty directory");
        assert_eq!(names(dir.path()), vec!["blocked".to_owned()]);
    }

    #[test]
    fn missing_directory_fails_at_create() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("absent/f");
        let e = replace_file(&p, b"x", 0o600, TempName::Unique).expect_err("no directory");
        assert_eq!(e.step, Step::Create);
        assert_eq!(e.path, e.temp);
        assert!(!dir.path().join("absent").exists());
    }
}
