//! Small file helpers the services persist their state with (when `--state-dir` is set).
//!
//! Two shapes cover everything: small metadata documents written whole through a temp file and
//! a rename (a crash leaves the old or the new file, never a torn one), and append-only JSON-lines
//! journals for bulk data (log events, datapoints), so an accepted batch costs one append instead
//! of re-serialising everything stored so far.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// A persistence failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line} is not valid JSON for this store: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

impl PersistError {
    pub fn path(&self) -> &Path {
        match self {
            PersistError::Write { path, .. }
            | PersistError::Read { path, .. }
            | PersistError::Parse { path, .. } => path,
        }
    }
}

/// Writes `bytes` to `path` through `path.tmp` + rename, creating the parent directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Appends one JSON document per item (one line each) to `path` in a single write.
pub fn append_json_lines<T: serde::Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = T>,
) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    for item in items {
        serde_json::to_writer(&mut buf, &item).map_err(|e| err(std::io::Error::other(e)))?;
        buf.push(b'\n');
    }
    if buf.is_empty() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    f.write_all(&buf).map_err(err)
}

/// Reads a JSON-lines journal; a missing file is an empty journal. A torn last line (the process
/// died mid-append) is dropped rather than failing the whole load.
pub fn read_json_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<T>, PersistError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| PersistError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let last = lines.len().saturating_sub(1);
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i == last => break,
            Err(source) => {
                return Err(PersistError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Reads a whole JSON document; `None` when the file does not exist yet.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PersistError::Parse {
            path: path.to_path_buf(),
            line: 1,
            source,
        })
}

impl From<PersistError> for crate::server::DevstackError {
    fn from(e: PersistError) -> Self {
        crate::server::DevstackError::LoadState {
            path: e.path().to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch of `t` (negative before 1970).
pub fn epoch_millis(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}
