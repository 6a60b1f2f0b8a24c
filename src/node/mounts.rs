//! The mount table, and removing a directory tree without ever destroying what is mounted in it.
//!
//! kubelet mounts pod volumes beneath `/var/lib/kubelet/pods/<uid>/volumes/…` (emptyDir on
//! tmpfs, projected service-account tokens, CSI volumes, hostPath-backed subPath binds under
//! `volume-subpaths/`), and a subPath bind can be the node's own filesystem. A recursive delete
//! that walks into such a mount deletes the volume's data, not kubelet's bookkeeping. So every
//! tree the agent removes (`leave`, a join rollback) goes through [`remove_tree`], which:
//! - reads the mount table of the process's own mount namespace (`/proc/self/mountinfo`) and
//!   refuses to touch a tree with a mount point at or beneath it, naming every such mount;
//! - walks with `openat(O_NOFOLLOW)` from the tree's own directory, so a symlink is removed as a
//!   link and never followed out of the tree;
//! - checks, for every entry, that it is on the tree's own mount (`statx` mount id; the device
//!   number only on kernels without it), so a mount that appeared after the table was read is
//!   never crossed.
//!
//! Paths in the mount table are as this process sees them; a `--root` sandbox's paths are real
//! paths beneath the sandbox, so they compare directly (after resolving symlinks in the parent
//! directories, as the kernel did when the mount was made).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};

/// The mount table of the calling process's mount namespace. proc(5).
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (as this process sees it).
    pub mount_point: PathBuf,
    /// Filesystem type (`tmpfs`, `ext4`, `overlay` …).
    pub fs_type: String,
    /// What is mounted (`/dev/sda1`, `tmpfs` …).
    pub source: String,
}

impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} from {})",
            self.mount_point.display(),
            self.fs_type,
            self.source
        )
    }
}

/// Why a tree was not removed (or not completely).
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(
        "{} mounted at or beneath it ({}), so nothing under it was removed; unmount them (`umount <mount point>`; drain the node first so kubelet unmounts its pods' volumes itself), then run this again",
        count(.mounts.len()), list(.mounts)
    )]
    Mounted { path: PathBuf, mounts: Vec<Mount> },
    #[error(
        "stopped at {at}, which is on another mount than {path} (mounted while it was being removed); kept it and everything not yet removed: unmount it, then run this again"
    )]
    CrossesMount { path: PathBuf, at: PathBuf },
    #[error(
        "kept it: cannot read the mount table {MOUNTINFO} to check that nothing is mounted beneath {path}: {source}"
    )]
    MountTable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 filesystem is".to_owned()
    } else {
        format!("{n} filesystems are")
    }
}

/// `a (tmpfs from tmpfs), b (…)`.
pub fn list(mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads [`MOUNTINFO`].
pub fn read_table() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read(MOUNTINFO)?))
}

/// Parses mountinfo text (proc(5): `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [TAGS…] - TYPE
/// SOURCE SUPER_OPTIONS`); lines that do not parse are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if sep < 6 || fields.len() < sep + 3 {
            continue;
        }
        out.push(Mount {
            mount_point: PathBuf::from(OsStr::from_bytes(&unescape(fields[4]))),
            fs_type: String::from_utf8_lossy(&unescape(fields[sep + 1])).into_owned(),
            source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
        });
    }
    out
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(oct) = field.get(i + 1..i + 4)
            && oct.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Where `path` is, as the mount table names it: symlinks in its parent directories resolved,
/// the last component not followed (a symlink there is removed as a link).
pub fn location(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => match std::fs::canonicalize(parent) {
            Ok(p) => p.join(name),
            Err(_) => path.to_path_buf(),
        },
        _ => path.to_path_buf(),
    }
}

/// The mounts of `table` at or beneath any of `targets` but not at or beneath any of `keep`
/// (trees that are not removed), each once, in table order.
pub fn beneath(table: &[Mount], targets: &[PathBuf], keep: &[PathBuf]) -> Vec<Mount> {
    let targets: Vec<PathBuf> = targets.iter().map(|t| location(t)).collect();
    let keep: Vec<PathBuf> = keep.iter().map(|k| location(k)).collect();
    table
        .iter()
        .filter(|m| targets.iter().any(|t| m.mount_point.starts_with(t)))
        .filter(|m| !keep.iter().any(|k| m.mount_point.starts_with(k)))
        .cloned()
        .collect()
}

/// Refuses when anything is mounted at or beneath `path` (outside `keep`).
pub fn check_unmounted(path: &Path, keep: &[PathBuf]) -> Result<(), RemoveError> {
    let table = read_table().map_err(|source| RemoveError::MountTable {
        path: path.to_path_buf(),
        source,
    })?;
    let mounts = beneath(&table, &[path.to_path_buf()], keep);
    if mounts.is_empty() {
        Ok(())
    } else {
        Err(RemoveError::Mounted {
            path: path.to_path_buf(),
            mounts,
        })
    }
}

/// Removes `path` (a directory tree, a file or a symlink) and everything in it, never following a
/// symlink and never crossing into another mount; refuses, removing nothing, when anything is
/// mounted at or beneath it. A missing path is fine.
pub fn remove_tree(path: &Path) -> Result<(), RemoveError> {
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: rustix::io::Errno| RemoveError::Io {
            op,
            path: p,
            source: e.into(),
        }
    };
    let top = match stat(rustix::fs::CWD, path) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    check_unmounted(path, &[])?;
    if !top.is_dir {
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RemoveError::Io {
                op: "remove",
                path: path.to_path_buf(),
                source,
            }),
        };
    }
    let fd = open_dir(rustix::fs::CWD, path).map_err(io_err("open", path))?;
    let opened = stat(&fd, "").map_err(io_err("inspect", path))?;
    if !opened.same_mount(&top) {
        return Err(RemoveError::CrossesMount {
            path: path.to_path_buf(),
            at: path.to_path_buf(),
        });
    }
    empty_dir(&fd, path, &top, path)?;
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Io {
            op: "remove directory",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What the walk needs to know about an entry.
#[derive(Debug, Clone, Copy)]
struct Stat {
    is_dir: bool,
    dev: (u32, u32),
    /// The mount id, when the kernel reports it (Linux 5.8+).
    mnt_id: Option<u64>,
}

impl Stat {
    /// On the same mount as `other`: the same mount id where the kernel reports both (it tells
    /// a bind mount of the same filesystem apart, which the device number does not), else the
    /// same device. Never both: on overlayfs a directory carries the overlay's device number and
    /// a file the device of the layer it lives on, while both carry the overlay's mount id.
    fn same_mount(&self, other: &Stat) -> bool {
        match (self.mnt_id, other.mnt_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.dev == other.dev,
        }
    }
}

fn stat<Fd: AsFd, P: rustix::path::Arg>(dir: Fd, name: P) -> rustix::io::Result<Stat> {
    let s = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::EMPTY_PATH,
        StatxFlags::TYPE | StatxFlags::MNT_ID,
    )?;
    let mnt_id = (s.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(s.stx_mnt_id);
    Ok(Stat {
        is_dir: rustix::fs::FileType::from_raw_mode(u32::from(s.stx_mode))
            == rustix::fs::FileType::Directory,
        dev: (s.stx_dev_major, s.stx_dev_minor),
        mnt_id,
    })
}

fn open_dir<Fd: AsFd, P: rustix::path::Arg>(dir: Fd, name: P) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes everything in the open directory `fd` (at `shown`, for messages), staying on the
/// mount of `root` (the tree at `tree`).
fn empty_dir(fd: &OwnedFd, shown: &Path, root: &Stat, tree: &Path) -> Result<(), RemoveError> {
    let io_err = |op: &'static str, p: PathBuf| {
        move |e: rustix::io::Errno| RemoveError::Io {
            op,
            path: p,
            source: e.into(),
        }
    };
    let dir = rustix::fs::Dir::read_from(fd).map_err(io_err("list", shown.to_path_buf()))?;
    // Names first: removing while reading the same stream can skip entries.
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(io_err("list", shown.to_path_buf()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(entry.file_name().to_owned());
        }
    }
    for name in names {
        let child = shown.join(OsStr::from_bytes(name.as_bytes()));
        let s = match stat(fd, name.as_c_str()) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(io_err("inspect", child)(e)),
        };
        if !s.same_mount(root) {
            return Err(RemoveError::CrossesMount {
                path: tree.to_path_buf(),
                at: child,
            });
        }
        if s.is_dir {
            let sub = open_dir(fd, name.as_c_str()).map_err(io_err("open", child.clone()))?;
            // What was opened is what was checked (not swapped for a mount or a link since).
            let opened = stat(&sub, "").map_err(io_err("inspect", child.clone()))?;
            if !opened.same_mount(root) {
                return Err(RemoveError::CrossesMount {
                    path: tree.to_path_buf(),
                    at: child,
                });
            }
            empty_dir(&sub, &child, root, tree)?;
            drop(sub);
            match rustix::fs::unlinkat(fd, name.as_c_str(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(io_err("remove directory", child)(e)),
            }
        } else {
            match rustix::fs::unlinkat(fd, name.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(io_err("remove", child)(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 0:32 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache rw shared:9 - tmpfs tmpfs rw,size=65536k
37 22 8:1 /data /var/lib/kubelet/pods/u1/volume-subpaths/v/c/0 rw master:1 propagate_from:1 - ext4 /dev/sda1 rw
38 22 0:40 / /mnt/with\\040space rw - nfs4 srv:/export\\040x rw
garbage line
39 22 0:41 / /var/lib/kubeletx rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_lines_are_parsed_with_optional_fields_and_escapes() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 5, "{t:?}");
        assert_eq!(t[0].mount_point, Path::new("/"));
        assert_eq!(t[1].fs_type, "tmpfs");
        assert_eq!(
            t[2].mount_point,
            Path::new("/var/lib/kubelet/pods/u1/volume-subpaths/v/c/0")
        );
        assert_eq!(t[2].source, "/dev/sda1");
        assert_eq!(t[3].mount_point, Path::new("/mnt/with space"));
        assert_eq!(t[3].source, "srv:/export x");
    }

    #[test]
    fn mounts_beneath_a_tree_are_found_component_wise_and_kept_trees_excluded() {
        let t = parse_mountinfo(SAMPLE);
        let found = beneath(&t, &[PathBuf::from("/var/lib/kubelet")], &[]);
        let points: Vec<_> = found.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache"),
                PathBuf::from("/var/lib/kubelet/pods/u1/volume-subpaths/v/c/0"),
            ],
            "/var/lib/kubeletx is not beneath /var/lib/kubelet"
        );
        assert!(
            beneath(
                &t,
                &[PathBuf::from("/var/lib/kubelet")],
                &[PathBuf::from("/var/lib/kubelet/pods")]
            )
            .is_empty()
        );
        assert_eq!(
            beneath(&t, &[PathBuf::from("/mnt/with space")], &[]).len(),
            1
        );
        assert!(list(&found).starts_with(
            "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache (tmpfs from tmpfs), "
        ));
    }

    #[test]
    fn removal_unlinks_symlinks_without_following_them() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("precious"), b"keep me").expect("write");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).expect("mkdir");
        std::fs::write(tree.join("a/b/f"), b"x").expect("write");
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("precious"), tree.join("filelink"))
            .expect("symlink");
        remove_tree(&tree).expect("removed");
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read(outside.join("precious")).expect("read"),
            b"keep me"
        );
        // A symlink as the tree itself is removed as a link.
        std::os::unix::fs::symlink(&outside, &tree).expect("symlink");
        remove_tree(&tree).expect("removed");
        assert!(outside.join("precious").is_file());
        assert!(std::fs::symlink_metadata(&tree).is_err());
        remove_tree(&tree).expect("a missing tree is fine");
    }
}
