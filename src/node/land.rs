//! Landing files on the host atomically, and remembering how to undo it.
//!
//! Every file the agent puts on the host (installed binaries, rendered configuration, the
//! tracker) goes through a [`Journal`]: the new content is written to a temporary file in the
//! target's directory, fsynced, given its mode, and renamed over the target (then the directory
//! is fsynced), so a reader or a power cut sees either the old file or the new one, never a torn
//! one. Before a file is replaced, its old content is kept as a backup; every file and directory
//! created is recorded. [`Journal::rollback`] undoes the recorded changes in reverse, which is
//! what makes `join`, `install` and `upgrade` transactional, and a committed journal is what
//! `leave` unwinds to restore the host as it was before `join`.
//!
//! The journal is persisted (JSON, rewritten atomically after every change) when it is given a
//! file, so a run killed half-way can still be rolled back by the next one. Paths in it are host
//! paths (as seen with `--root /`); [`HostPaths`] re-roots them, so a journal stays valid when
//! a staged image is moved.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, TempName};
use crate::node::mounts::{self, RemoveError};
use crate::paths::HostPaths;

/// Suffix of the temporary file written next to a target before the rename.
const TEMP_SUFFIX: &str = ".hybrid-agent.tmp";
/// How the temporary files are named: `NAME.PID.hybrid-agent.tmp`.
const TEMP_NAME: TempName = TempName::Suffix(TEMP_SUFFIX);
/// Mode of directories the agent creates (root-owned, world-readable like /etc and /usr).
pub const DIR_MODE: u32 = 0o755;
/// Read size when copying and hashing.
const COPY_CHUNK: usize = 256 * 1024;

/// A failed filesystem operation, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}")]
pub struct LandError {
    /// What was attempted (`write`, `rename`, `create directory` ...).
    pub op: &'static str,
    /// The path (as resolved under `--root`).
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LandError + 'a {
    move |source| LandError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One recorded change, in host-path terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A file that did not exist was created. Undo: remove it.
    CreatedFile { path: PathBuf },
    /// A file was replaced; its old content is at `backup` (a path in the state directory).
    /// Undo: move the backup back.
    ReplacedFile { path: PathBuf, backup: PathBuf },
    /// A directory that did not exist was created. Undo: remove it if empty.
    CreatedDir { path: PathBuf },
    /// A directory tree owned by this run (agent state, component data) was created. Undo:
    /// remove it with everything in it.
    CreatedTree { path: PathBuf },
    /// A directory tree that foreign code was about to rewrite was copied to `backup`. Undo:
    /// replace the tree with the copy.
    ReplacedTree { path: PathBuf, backup: PathBuf },
    /// Something done outside the filesystem (a registration, a started process). Undo does
    /// nothing; the caller compensates (deregisters, stops), also for a journal left by a run
    /// that was killed.
    External { note: Note },
}

/// A change outside the filesystem; see [`Change::External`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// This run registered a new SSM managed instance.
    Registered { instance_id: String, region: String },
    /// This run started a component (its executable, for the ownership check when stopping).
    Started { component: String, program: PathBuf },
    /// This run changed the running host ([`crate::node::host`]): a sysctl reload, a module
    /// load, swap off, a firewall rule, a package. `applied` is false when it was only recorded
    /// because `--root` is not `/`.
    Host {
        action: crate::node::host::HostAction,
        applied: bool,
    },
}

impl Change {
    /// The host path the change is about.
    pub fn path(&self) -> &Path {
        match self {
            Change::CreatedFile { path }
            | Change::ReplacedFile { path, .. }
            | Change::CreatedDir { path }
            | Change::CreatedTree { path }
            | Change::ReplacedTree { path, .. } => path,
            Change::External { .. } => Path::new(""),
        }
    }
}

/// What writing a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Content and mode were already as wanted: nothing was touched.
    Unchanged,
    /// The file did not exist.
    Created,
    /// The file existed with other content or mode.
    Replaced,
}

/// A transaction log of host changes. See the module docs.
#[derive(Debug)]
pub struct Journal {
    paths: HostPaths,
    /// Where the journal persists itself (resolved path), if anywhere.
    file: Option<PathBuf>,
    /// Directory (host path) where backups of replaced files go.
    backup_dir: PathBuf,
    changes: Vec<Change>,
    /// Backups are numbered so two versions of one path never collide.
    next_backup: u64,
    /// When set, nothing is written; every action is described here instead.
    dry_run: Option<Vec<String>>,
    /// Directories a dry run has "created" (so they are planned once).
    planned_dirs: std::collections::BTreeSet<PathBuf>,
}

/// The persisted form.
#[derive(Debug, Serialize, Deserialize)]
struct JournalFile {
    backup_dir: PathBuf,
    changes: Vec<Change>,
    next_backup: u64,
}

impl Journal {
    /// A journal that keeps backups under `backup_dir` (a host path) and persists itself to
    /// `file` (a host path) when given.
    pub fn new(paths: HostPaths, backup_dir: impl Into<PathBuf>, file: Option<PathBuf>) -> Self {
        Self {
            file: file.map(|f| paths.resolve(f)),
            paths,
            backup_dir: backup_dir.into(),
            changes: Vec::new(),
            next_backup: 0,
            dry_run: None,
            planned_dirs: Default::default(),
        }
    }

    /// A journal that changes nothing and records what it would have done.
    pub fn dry_run(paths: HostPaths) -> Self {
        Self {
            paths,
            file: None,
            backup_dir: PathBuf::new(),
            changes: Vec::new(),
            next_backup: 0,
            dry_run: Some(Vec::new()),
            planned_dirs: Default::default(),
        }
    }

    /// Loads a persisted journal (host path `file`), or `None` when there is none.
    pub fn load(paths: HostPaths, file: &Path) -> Result<Option<Self>, LandError> {
        let resolved = paths.resolve(file);
        let text = match fs::read(&resolved) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err("read", &resolved)(e)),
        };
        let parsed: JournalFile = serde_json::from_slice(&text)
            .map_err(|e| err("parse", &resolved)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        Ok(Some(Self {
            paths,
            file: Some(resolved),
            backup_dir: parsed.backup_dir,
            changes: parsed.changes,
            next_backup: parsed.next_backup,
            dry_run: None,
            planned_dirs: Default::default(),
        }))
    }

    /// Host paths this journal resolves against.
    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    /// The recorded changes, oldest first.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// True when nothing is written (`--dry-run`).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run.is_some()
    }

    /// What a dry run would have done, in order.
    pub fn planned(&self) -> &[String] {
        self.dry_run.as_deref().unwrap_or(&[])
    }

    /// Records an action a dry run would take (no-op otherwise). For actions that are not file
    /// writes: starting a service, calling an API.
    pub fn plan(&mut self, action: impl Into<String>) {
        if let Some(p) = &mut self.dry_run {
            p.push(action.into());
        }
    }

    /// Moves the persisted journal to another file (host path), e.g. to keep a committed join
    /// as the record `leave` unwinds.
    pub fn persist_as(&mut self, file: &Path) -> Result<(), LandError> {
        let new = self.paths.resolve(file);
        if let Some(old) = self.file.replace(new.clone())
            && old != new
        {
            self.save()?;
            fs::remove_file(&old)
                .or_else(ignore_missing)
                .map_err(err("remove", &old))?;
            return Ok(());
        }
        self.save()
    }

    /// Stops persisting this journal (its file is removed) and returns it, to be absorbed into
    /// another one.
    pub fn detach(mut self) -> Result<Journal, LandError> {
        if let Some(file) = self.file.take() {
            fs::remove_file(&file)
                .or_else(ignore_missing)
                .map_err(err("remove", &file))?;
        }
        Ok(self)
    }

    /// Appends changes recorded elsewhere (an inner journal that committed).
    pub fn absorb(&mut self, other: Journal) -> Result<(), LandError> {
        self.changes.extend(other.changes);
        self.next_backup = self.next_backup.max(other.next_backup);
        self.save()
    }

    fn record(&mut self, change: Change) -> Result<(), LandError> {
        self.changes.push(change);
        self.save()
    }

    fn save(&self) -> Result<(), LandError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if self.dry_run.is_some() {
            return Ok(());
        }
        let body = JournalFile {
            backup_dir: self.backup_dir.clone(),
            changes: self.changes.clone(),
            next_backup: self.next_backup,
        };
        let bytes = serde_json::to_vec_pretty(&body)
            .map_err(|e| err("serialize", file)(io::Error::other(e)))?;
        // Until the directory holding the journal exists, the only changes are directories
        // being created on the way to it: nothing worth persisting, and creating it here would
        // make it look pre-existing.
        if !file.parent().is_some_and(Path::is_dir) {
            return Ok(());
        }
        atomic_write(file, &bytes, 0o600)
    }

    /// Creates `host_dir` and any missing ancestors, recording each one created.
    pub fn ensure_dir(&mut self, host_dir: &Path) -> Result<(), LandError> {
        let mut missing = Vec::new();
        let mut cur = Some(host_dir);
        while let Some(dir) = cur {
            if dir.as_os_str().is_empty() || dir == Path::new("/") {
                break;
            }
            if self.paths.resolve(dir).is_dir() || self.planned_dirs.contains(dir) {
                break;
            }
            missing.push(dir.to_path_buf());
            cur = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            if let Some(p) = &mut self.dry_run {
                p.push(format!("create directory {}", dir.display()));
                self.planned_dirs.insert(dir);
                continue;
            }
            let real = self.paths.resolve(&dir);
            match fs::create_dir(&real) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err("create directory", &real)(e)),
            }
            fs::set_permissions(&real, fs::Permissions::from_mode(DIR_MODE))
                .map_err(err("chmod", &real))?;
            self.record(Change::CreatedDir { path: dir })?;
        }
        Ok(())
    }

    /// Creates a directory tree the run owns entirely (recorded as such: rollback removes it
    /// with its content). Does nothing when it exists.
    pub fn ensure_tree(&mut self, host_dir: &Path, mode: u32) -> Result<(), LandError> {
        if self.paths.resolve(host_dir).is_dir() || self.planned_dirs.contains(host_dir) {
            return Ok(());
        }
        if let Some(parent) = host_dir.parent() {
            self.ensure_dir(parent)?;
        }
        if let Some(p) = &mut self.dry_run {
            p.push(format!("create directory {}", host_dir.display()));
            self.planned_dirs.insert(host_dir.to_path_buf());
            return Ok(());
        }
        let real = self.paths.resolve(host_dir);
        fs::create_dir(&real).map_err(err("create directory", &real))?;
        fs::set_permissions(&real, fs::Permissions::from_mode(mode))
            .map_err(err("chmod", &real))?;
        self.record(Change::CreatedTree {
            path: host_dir.to_path_buf(),
        })
    }

    /// Writes `bytes` to `host_path` with `mode`, atomically, unless it already holds exactly
    /// that. The old content is backed up first.
    pub fn write_file(
        &mut self,
        host_path: &Path,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Written, LandError> {
        let real = self.paths.resolve(host_path);
        let existing = current_state(&real)?;
        if let Some((content, old_mode)) = &existing
            && content.as_slice() == bytes
            && old_mode & 0o7777 == mode
        {
            return Ok(Written::Unchanged);
        }
        if let Some(p) = &mut self.dry_run {
            let verb = if existing.is_some() {
                "replace"
            } else {
                "write"
            };
            p.push(format!(
                "{verb} {} ({} bytes, mode {mode:04o})",
                host_path.display(),
                bytes.len()
            ));
            return Ok(if existing.is_some() {
                Written::Replaced
            } else {
                Written::Created
            });
        }
        if let Some(parent) = host_path.parent() {
            self.ensure_dir(parent)?;
        }
        let outcome = self.before_replace(host_path, existing.is_some())?;
        atomic_write(&real, bytes, mode)?;
        self.after_replace(host_path, outcome)
    }

    /// Moves a verified staged file (a real path, e.g. in the staging directory) to
    /// `host_path` with `mode`, atomically. Across filesystems it is copied next to the target
    /// first, so the final step is still a rename.
    pub fn land_file(
        &mut self,
        staged: &Path,
        host_path: &Path,
        mode: u32,
    ) -> Result<Written, LandError> {
        let real = self.paths.resolve(host_path);
        let exists = fs::symlink_metadata(&real).is_ok();
        if let Some(p) = &mut self.dry_run {
            p.push(format!("install {} (mode {mode:04o})", host_path.display()));
            return Ok(if exists {
                Written::Replaced
            } else {
                Written::Created
            });
        }
        if let Some(parent) = host_path.parent() {
            self.ensure_dir(parent)?;
        }
        let outcome = self.before_replace(host_path, exists)?;
        fs::set_permissions(staged, fs::Permissions::from_mode(mode))
            .map_err(err("chmod", staged))?;
        match fs::rename(staged, &real) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                let tmp = fsutil::temp_path(&real, TEMP_NAME);
                copy_file(staged, &tmp, mode)?;
                if let Err(e) = fs::rename(&tmp, &real) {
                    let _ = fs::remove_file(&tmp);
                    return Err(err("rename into place", &real)(e));
                }
                let _ = fs::remove_file(staged);
            }
            Err(e) => return Err(err("rename into place", &real)(e)),
        }
        sync_parent(&real)?;
        self.after_replace(host_path, outcome)
    }

    /// Removes a file, keeping a backup so rollback can put it back.
    pub fn remove_file(&mut self, host_path: &Path) -> Result<bool, LandError> {
        let real = self.paths.resolve(host_path);
        if fs::symlink_metadata(&real).is_err() {
            return Ok(false);
        }
        if let Some(p) = &mut self.dry_run {
            p.push(format!("remove {}", host_path.display()));
            return Ok(true);
        }
        let backup = self.next_backup_path(host_path);
        self.store_backup(&real, &backup, false)?;
        fs::remove_file(&real).map_err(err("remove", &real))?;
        sync_parent(&real)?;
        self.record(Change::ReplacedFile {
            path: host_path.to_path_buf(),
            backup,
        })?;
        Ok(true)
    }

    /// Records the current state of a path that code outside the journal is about to write
    /// (identity writes its key and the credentials file itself), so rollback restores it:
    /// missing ancestors and a missing file are recorded as created, an existing file is
    /// backed up.
    pub fn protect(&mut self, host_path: &Path) -> Result<(), LandError> {
        if self.dry_run.is_some() {
            return Ok(());
        }
        let real = self.paths.resolve(host_path);
        if let Some(parent) = host_path.parent() {
            self.ensure_dir(parent)?;
        }
        if fs::symlink_metadata(&real).is_ok() {
            let backup = self.next_backup_path(host_path);
            self.store_backup(&real, &backup, true)?;
            self.record(Change::ReplacedFile {
                path: host_path.to_path_buf(),
                backup,
            })
        } else {
            self.record(Change::CreatedFile {
                path: host_path.to_path_buf(),
            })
        }
    }

    /// Like [`Journal::protect`] for a whole directory that code outside the journal rewrites
    /// (the identity store): an existing tree is copied aside, a missing one is recorded as
    /// created.
    pub fn protect_tree(&mut self, host_dir: &Path) -> Result<(), LandError> {
        if self.dry_run.is_some() {
            return Ok(());
        }
        let real = self.paths.resolve(host_dir);
        if real.is_dir() {
            let backup = self.next_backup_path(host_dir);
            let dir = self.backup_dir.clone();
            self.ensure_tree(&dir, 0o700)?;
            copy_tree(&real, &self.paths.resolve(&backup))?;
            self.record(Change::ReplacedTree {
                path: host_dir.to_path_buf(),
                backup,
            })
        } else {
            if let Some(parent) = host_dir.parent() {
                self.ensure_dir(parent)?;
            }
            self.record(Change::CreatedTree {
                path: host_dir.to_path_buf(),
            })
        }
    }

    /// Records a change outside the filesystem (see [`Change::External`]).
    pub fn note(&mut self, note: Note) -> Result<(), LandError> {
        if let Some(p) = &mut self.dry_run {
            p.push(format!("{note:?}"));
            return Ok(());
        }
        self.record(Change::External { note })
    }

    /// The external changes recorded, oldest first.
    pub fn notes(&self) -> Vec<Note> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::External { note } => Some(note.clone()),
                _ => None,
            })
            .collect()
    }

    fn before_replace(
        &mut self,
        host_path: &Path,
        exists: bool,
    ) -> Result<Option<PathBuf>, LandError> {
        if !exists {
            return Ok(None);
        }
        let backup = self.next_backup_path(host_path);
        let real = self.paths.resolve(host_path);
        self.store_backup(&real, &backup, false)?;
        Ok(Some(backup))
    }

    fn after_replace(
        &mut self,
        host_path: &Path,
        backup: Option<PathBuf>,
    ) -> Result<Written, LandError> {
        match backup {
            None => {
                self.record(Change::CreatedFile {
                    path: host_path.to_path_buf(),
                })?;
                Ok(Written::Created)
            }
            Some(backup) => {
                self.record(Change::ReplacedFile {
                    path: host_path.to_path_buf(),
                    backup,
                })?;
                Ok(Written::Replaced)
            }
        }
    }

    fn next_backup_path(&mut self, host_path: &Path) -> PathBuf {
        let n = self.next_backup;
        self.next_backup += 1;
        let name = host_path
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "%");
        self.backup_dir.join(format!("{n:04}-{name}"))
    }

    /// Keeps the old content at `backup` (a host path): a hard link when possible (same inode,
    /// no copy) — safe because the journal only ever replaces files by rename — or a copy when
    /// `must_copy` (foreign code may rewrite the file in place) or linking fails.
    fn store_backup(
        &mut self,
        real: &Path,
        backup: &Path,
        must_copy: bool,
    ) -> Result<(), LandError> {
        let dir = self.backup_dir.clone();
        self.ensure_tree(&dir, 0o700)?;
        let real_backup = self.paths.resolve(backup);
        let meta = fs::symlink_metadata(real).map_err(err("inspect", real))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(real).map_err(err("read link", real))?;
            std::os::unix::fs::symlink(&target, &real_backup)
                .map_err(err("back up", &real_backup))?;
        } else if must_copy || fs::hard_link(real, &real_backup).is_err() {
            copy_file(real, &real_backup, meta.mode() & 0o7777)?;
        }
        sync_parent(&real_backup)
    }

    /// Undoes every recorded change, newest first, and empties the journal. Keeps going after
    /// an error so as much as possible is restored; returns every failure.
    pub fn rollback(&mut self) -> Vec<LandError> {
        self.rollback_keeping(&[])
    }

    /// [`Journal::rollback`], but paths in `keep` (resolved paths) survive: a created tree that
    /// is kept stays whole, a created tree that contains a kept path loses everything else.
    /// `leave` keeps the containerd image store and the telemetry spool this way unless
    /// `--purge`.
    pub fn rollback_keeping(&mut self, keep: &[PathBuf]) -> Vec<LandError> {
        let mut failures = Vec::new();
        while let Some(change) = self.changes.pop() {
            // The journal file may live inside a directory this change removes: drop the file
            // first (the directory could not go otherwise) and persist nothing from then on.
            if let (Some(file), Change::CreatedDir { path } | Change::CreatedTree { path }) =
                (&self.file, &change)
                && file.starts_with(self.paths.resolve(path))
            {
                let _ = fs::remove_file(file);
                self.file = None;
            }
            if let Err(e) = undo_keeping(&self.paths, &change, keep) {
                failures.push(e);
            }
            // Persist progress so an interrupted rollback resumes where it stopped.
            if let Err(e) = self.save() {
                failures.push(e);
            }
        }
        if let Some(file) = self.file.take() {
            let _ = fs::remove_file(file);
        }
        failures
    }

    /// The resolved paths a rollback sparing `keep` would remove with their content: created
    /// and replaced trees and files (a created directory is removed only when empty, so it is
    /// not one of them). `leave` checks that nothing is mounted beneath them before it changes
    /// anything.
    pub fn removal_targets(&self) -> Vec<PathBuf> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::CreatedFile { path }
                | Change::ReplacedFile { path, .. }
                | Change::CreatedTree { path }
                | Change::ReplacedTree { path, .. } => Some(self.paths.resolve(path)),
                Change::CreatedDir { .. } | Change::External { .. } => None,
            })
            .collect()
    }

    /// Forgets the recorded changes (the run succeeded and nothing will be undone) and removes
    /// the persisted journal and the backups.
    pub fn discard(mut self) -> Result<(), LandError> {
        if self.dry_run.is_some() {
            return Ok(());
        }
        let backups = self.paths.resolve(&self.backup_dir);
        for change in std::mem::take(&mut self.changes) {
            match change {
                Change::ReplacedFile { backup, .. } => {
                    let real = self.paths.resolve(&backup);
                    fs::remove_file(&real)
                        .or_else(ignore_missing)
                        .map_err(err("remove backup", &real))?;
                }
                Change::ReplacedTree { backup, .. } => {
                    let real = self.paths.resolve(&backup);
                    fs::remove_dir_all(&real)
                        .or_else(ignore_missing)
                        .map_err(err("remove backup", &real))?;
                }
                _ => {}
            }
        }
        let _ = fs::remove_dir(&backups);
        if let Some(file) = &self.file {
            fs::remove_file(file)
                .or_else(ignore_missing)
                .map_err(err("remove", file))?;
        }
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Undoes one change.
pub fn undo(paths: &HostPaths, change: &Change) -> Result<(), LandError> {
    undo_keeping(paths, change, &[])
}

/// Undoes one change, sparing the resolved paths in `keep` (see [`Journal::rollback_keeping`]).
pub fn undo_keeping(paths: &HostPaths, change: &Change, keep: &[PathBuf]) -> Result<(), LandError> {
    match change {
        Change::CreatedFile { path } => {
            let real = paths.resolve(path);
            fs::remove_file(&real)
                .or_else(ignore_missing)
                .map_err(err("remove", &real))
        }
        Change::ReplacedFile { path, backup } => {
            let real = paths.resolve(path);
            let real_backup = paths.resolve(backup);
            if fs::symlink_metadata(&real_backup).is_err() {
                // Already restored by an earlier, interrupted rollback.
                return Ok(());
            }
            // The directory may be gone (an uninstall removed it when it emptied); the
            // directory's own record, undone later, removes it again if it was ours.
            if let Some(parent) = real.parent() {
                fs::create_dir_all(parent).map_err(err("create directory", parent))?;
            }
            fs::rename(&real_backup, &real).map_err(err("restore backup to", &real))?;
            sync_parent(&real)
        }
        Change::CreatedDir { path } => {
            let real = paths.resolve(path);
            match fs::remove_dir(&real) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                // Something else put files there since: leave it, it is not ours to delete.
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                    tracing::warn!(path = %real.display(), "directory created by hybrid-agent is not empty; keeping it");
                    Ok(())
                }
                Err(e) => Err(err("remove directory", &real)(e)),
            }
        }
        Change::CreatedTree { path } => {
            let real = paths.resolve(path);
            if keep.contains(&real) {
                tracing::info!(path = %real.display(), "kept");
                return Ok(());
            }
            if keep.iter().any(|k| k.starts_with(&real)) {
                // Mounts inside a kept path are not touched; any other mount keeps the tree.
                mounts::check_unmounted(&real, keep).map_err(removal("remove", &real))?;
                return remove_tree_except(&real, keep);
            }
            mounts::remove_tree(&real).map_err(removal("remove directory tree", &real))
        }
        Change::ReplacedTree { path, backup } => {
            let real = paths.resolve(path);
            let real_backup = paths.resolve(backup);
            if !real_backup.is_dir() {
                return Ok(());
            }
            mounts::remove_tree(&real).map_err(removal("remove directory tree", &real))?;
            fs::rename(&real_backup, &real).map_err(err("restore backup to", &real))?;
            sync_parent(&real)
        }
        Change::External { .. } => Ok(()),
    }
}

/// Removes everything under `dir` except the paths in `keep` and the directories leading to
/// them.
fn remove_tree_except(dir: &Path, keep: &[PathBuf]) -> Result<(), LandError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(err("list", dir))?;
        let path = entry.path();
        if keep.contains(&path) {
            continue;
        }
        // `file_type` does not follow a symlink: a link to a directory is removed as a link.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && keep.iter().any(|k| k.starts_with(&path)) {
            remove_tree_except(&path, keep)?;
        } else {
            mounts::remove_tree(&path).map_err(removal("remove", &path))?;
        }
    }
    Ok(())
}

/// A refused or failed guarded removal ([`mounts::remove_tree`]) as a [`LandError`]: the
/// message names the mounts and the fix.
fn removal<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(RemoveError) -> LandError + 'a {
    move |e| match e {
        RemoveError::Io { op, path, source } => LandError { op, path, source },
        other => LandError {
            op,
            path: path.to_path_buf(),
            source: io::Error::other(other),
        },
    }
}

/// Copies a directory tree (regular files with their modes, symlinks as links, directories).
fn copy_tree(from: &Path, to: &Path) -> Result<(), LandError> {
    fs::create_dir(to).map_err(err("create directory", to))?;
    let mode = fs::metadata(from).map_err(err("inspect", from))?.mode() & 0o7777;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(err("chmod", to))?;
    for entry in fs::read_dir(from).map_err(err("list", from))? {
        let entry = entry.map_err(err("list", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src).map_err(err("inspect", &src))?;
        if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&src).map_err(err("read link", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(err("copy link", &dst))?;
        } else if meta.is_file() {
            copy_file(&src, &dst, meta.mode() & 0o7777)?;
        }
    }
    Ok(())
}

/// Content and mode of a regular file, `None` when absent.
fn current_state(real: &Path) -> Result<Option<(Vec<u8>, u32)>, LandError> {
    match fs::symlink_metadata(real) {
        Ok(meta) if meta.is_file() => {
            let content = fs::read(real).map_err(err("read", real))?;
            Ok(Some((content, meta.mode())))
        }
        // A symlink or something else: never equal to what we want to write.
        Ok(meta) => Ok(Some((Vec::new(), meta.mode() ^ 0o7777))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("inspect", real)(e)),
    }
}

/// Writes `bytes` to `real` atomically ([`fsutil::replace_file`]: temp file named with
/// `TEMP_SUFFIX` in the same directory, mode, fsync, rename, directory fsync).
pub fn atomic_write(real: &Path, bytes: &[u8], mode: u32) -> Result<(), LandError> {
    fsutil::replace_file(real, bytes, mode, TEMP_NAME).map_err(from_replace)
}

fn from_replace(e: fsutil::ReplaceError) -> LandError {
    LandError {
        op: e.step.verb(),
        path: e.path,
        source: e.source,
    }
}

/// Copies `from` to `to` with `mode`, fsynced. `to` is created afresh and exclusively
/// ([`fsutil::create_exclusive`]: whatever was under the name, a leftover or a planted link, is
/// unlinked, never followed); on failure the partial copy is removed.
pub fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), LandError> {
    let mut src = File::open(from).map_err(err("open", from))?;
    let dst = fsutil::create_exclusive(to, mode, true).map_err(err("create", to))?;
    let copied = copy_into(&mut src, from, dst, to, mode);
    if copied.is_err() {
        let _ = fs::remove_file(to);
    }
    copied
}

fn copy_into(
    src: &mut File,
    from: &Path,
    mut dst: File,
    to: &Path,
    mode: u32,
) -> Result<(), LandError> {
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = src.read(&mut buf).map_err(err("read", from))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).map_err(err("write", to))?;
    }
    dst.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("chmod", to))?;
    dst.sync_all().map_err(err("fsync", to))
}

/// fsyncs the directory holding `path`, so a rename in it is durable.
pub fn sync_parent(path: &Path) -> Result<(), LandError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    fsutil::sync_dir(parent).map_err(from_replace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        (dir, paths)
    }

    #[test]
    fn write_is_skipped_when_content_and_mode_match() {
        let (_d, paths) = setup();
        let mut j = Journal::new(paths.clone(), "/var/lib/hybrid-agent/backups", None);
        let p = Path::new("/etc/x/a.conf");
        assert_eq!(
            j.write_file(p, b"one", 0o644).expect("write"),
            Written::Created
        );
        assert_eq!(
            j.write_file(p, b"one", 0o644).expect("write"),
            Written::Unchanged
        );
        assert_eq!(
            j.write_file(p, b"one", 0o600).expect("write"),
            Written::Replaced
        );
        let mode = fs::metadata(paths.resolve(p)).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn rollback_restores_replaced_and_removes_created() {
        let (_d, paths) = setup();
        fs::create_dir_all(paths.resolve("/etc/old")).expect("mkdir");
        fs::write(paths.resolve("/etc/old/keep.conf"), b"before").expect("seed");
        let mut j = Journal::new(
            paths.clone(),
            "/var/lib/hybrid-agent/backups",
            Some("/var/lib/hybrid-agent/txn.json".into()),
        );
        j.write_file(Path::new("/etc/old/keep.conf"), b"after", 0o644)
            .expect("replace");
        j.write_file(Path::new("/etc/new/deep/file"), b"x", 0o600)
            .expect("create");
        j.ensure_tree(Path::new("/var/lib/containerd"), 0o711)
            .expect("tree");
        fs::write(paths.resolve("/var/lib/containerd/meta.db"), b"db").expect("data");
        assert_eq!(
            fs::read(paths.resolve("/etc/old/keep.conf")).expect("read"),
            b"after"
        );
        let failures = j.rollback();
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(
            fs::read(paths.resolve("/etc/old/keep.conf")).expect("read"),
            b"before"
        );
        assert!(!paths.resolve("/etc/new").exists());
        assert!(!paths.resolve("/var/lib/containerd").exists());
        assert!(
            !paths.resolve("/var").exists(),
            "backups and their parents are gone too"
        );
    }

    #[test]
    fn persisted_journal_can_be_rolled_back_by_a_later_process() {
        let (_d, paths) = setup();
        let file = PathBuf::from("/var/lib/hybrid-agent/txn.json");
        {
            let mut j = Journal::new(
                paths.clone(),
                "/var/lib/hybrid-agent/backups",
                Some(file.clone()),
            );
            j.ensure_tree(Path::new("/var/lib/hybrid-agent"), 0o700)
                .expect("tree");
            j.write_file(Path::new("/etc/a"), b"x", 0o644)
                .expect("write");
            // Dropped without rollback: as if the process had been killed.
        }
        let mut j = Journal::load(paths.clone(), &file)
            .expect("load")
            .expect("present");
        assert_eq!(
            j.changes().len(),
            5,
            "/var, /var/lib, the state tree, /etc, /etc/a: {:?}",
            j.changes()
        );
        assert!(j.rollback().is_empty());
        assert!(!paths.resolve("/etc/a").exists());
        assert!(!paths.resolve("/var/lib/hybrid-agent").exists());
    }

    #[test]
    fn protect_then_foreign_write_is_undone() {
        let (_d, paths) = setup();
        fs::create_dir_all(paths.resolve("/root/.aws")).expect("mkdir");
        fs::write(paths.resolve("/root/.aws/credentials"), b"[other]\n").expect("seed");
        let mut j = Journal::new(paths.clone(), "/var/lib/hybrid-agent/backups", None);
        j.protect(Path::new("/root/.aws/credentials"))
            .expect("protect");
        j.protect(Path::new("/eks-hybrid/.aws/credentials"))
            .expect("protect");
        fs::write(paths.resolve("/root/.aws/credentials"), b"[default]\n").expect("foreign");
        fs::create_dir_all(paths.resolve("/eks-hybrid/.aws")).expect("mkdir");
        fs::write(
            paths.resolve("/eks-hybrid/.aws/credentials"),
            b"[default]\n",
        )
        .expect("foreign");
        assert!(j.rollback().is_empty());
        assert_eq!(
            fs::read(paths.resolve("/root/.aws/credentials")).expect("read"),
            b"[other]\n"
        );
        assert!(!paths.resolve("/eks-hybrid").exists());
    }

    #[test]
    fn dry_run_writes_nothing_and_lists_actions() {
        let (d, paths) = setup();
        let mut j = Journal::dry_run(paths);
        j.write_file(Path::new("/etc/a/b"), b"x", 0o644)
            .expect("plan");
        j.plan("start kubelet");
        assert_eq!(fs::read_dir(d.path()).expect("ls").count(), 0);
        assert_eq!(
            j.planned(),
            ["write /etc/a/b (1 bytes, mode 0644)", "start kubelet"]
        );
    }
}

#[cfg(test)]
mod tree_tests {
    use super::*;

    #[test]
    fn protected_tree_is_restored_and_kept_paths_survive_rollback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = HostPaths::new(dir.path());
        std::fs::create_dir_all(paths.resolve("/var/lib/hybrid-agent/identity")).expect("mkdir");
        std::fs::write(
            paths.resolve("/var/lib/hybrid-agent/identity/registration.json"),
            b"old",
        )
        .expect("seed");
        let mut j = Journal::new(paths.clone(), "/var/lib/hybrid-agent/backups", None);
        j.protect_tree(Path::new("/var/lib/hybrid-agent/identity"))
            .expect("protect");
        std::fs::write(
            paths.resolve("/var/lib/hybrid-agent/identity/registration.json"),
            b"new",
        )
        .expect("foreign");
        std::fs::write(paths.resolve("/var/lib/hybrid-agent/identity/key"), b"k").expect("foreign");
        j.ensure_tree(Path::new("/var/lib/containerd"), 0o711)
            .expect("tree");
        j.ensure_tree(Path::new("/var/lib/agent-data"), 0o700)
            .expect("tree");
        std::fs::create_dir_all(paths.resolve("/var/lib/agent-data/spool")).expect("mkdir");
        std::fs::write(paths.resolve("/var/lib/agent-data/spool/seg"), b"s").expect("spool");
        std::fs::write(paths.resolve("/var/lib/agent-data/other"), b"o").expect("other");
        j.note(Note::Registered {
            instance_id: "mi-1".into(),
            region: "us-west-2".into(),
        })
        .expect("note");
        assert_eq!(j.notes().len(), 1);
        let keep = vec![
            paths.resolve("/var/lib/containerd"),
            paths.resolve("/var/lib/agent-data/spool"),
        ];
        assert!(j.rollback_keeping(&keep).is_empty());
        assert_eq!(
            std::fs::read(paths.resolve("/var/lib/hybrid-agent/identity/registration.json"))
                .expect("read"),
            b"old"
        );
        assert!(!paths.resolve("/var/lib/hybrid-agent/identity/key").exists());
        assert!(paths.resolve("/var/lib/containerd").is_dir());
        assert!(paths.resolve("/var/lib/agent-data/spool/seg").is_file());
        assert!(!paths.resolve("/var/lib/agent-data/other").exists());
        assert!(!paths.resolve("/var/lib/hybrid-agent/backups").exists());
    }
}
