//! The small JSON files of the lock dir besides the locks (stop, start and restart
//! requests, the orchestrator's published state): written whole or not at all, read
//! without following links or blocking, and never read past [`MAX_RECORD_BYTES`].
//!
//! Writes go to a temporary file created new (never opened through a link someone
//! left there) and then take the final name in one step, so a reader never sees half
//! a file (DESIGN.md rule 12).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::os_file;
use crate::record::MAX_RECORD_BYTES;

/// What to do when the final name is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Replace it (a rename replaces a link at the name rather than following it).
    Replace,
    /// Keep it: the write reports [`Written::AlreadyThere`].
    Keep,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    At(PathBuf),
    /// [`Existing::Keep`] found the name taken; nothing was written.
    AlreadyThere(PathBuf),
}

/// Writes `bytes` to `<dir>/<file_name>` in one step. Transient Windows errors (an
/// antivirus or indexer holding the new file for a moment) are retried for about a
/// second.
pub(crate) fn write_whole(
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
    existing: Existing,
) -> io::Result<Written> {
    os_file::retry_transient(|| write_once(dir, file_name, bytes, existing))
}

fn write_once(
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
    existing: Existing,
) -> io::Result<Written> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(file_name);
    let temporary = dir.join(format!("{file_name}.{}.tmp", std::process::id()));
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Left by an earlier process with our pid; unlink never follows a link.
            std::fs::remove_file(&temporary)?;
            create()?
        }
        other => other?,
    };
    io::Write::write_all(&mut file, bytes)?;
    drop(file);
    let placed = match existing {
        Existing::Replace => std::fs::rename(&temporary, &path).map(|()| Written::At(path.clone())),
        // A hard link never replaces what is there: two writers cannot both win.
        Existing::Keep => match std::fs::hard_link(&temporary, &path) {
            Ok(()) => Ok(Written::At(path.clone())),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok(Written::AlreadyThere(path.clone()))
            }
            Err(e) => Err(e),
        },
    };
    // After a rename this is gone already; after a link it is the second name.
    let _ = std::fs::remove_file(&temporary);
    placed.map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// What reading an entry found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EntryRead {
    /// Nothing there, or something that is not a regular file (a link, FIFO or
    /// directory: never opened in a way that could block; scans report it).
    Nothing,
    /// The file's JSON object.
    Object(serde_json::Map<String, serde_json::Value>),
    /// It is there but cannot be used, and why (naming its path).
    Unreadable(String),
}

/// Reads `<dir>/<file_name>` as a JSON object, if it is a regular file.
pub(crate) fn read_object(dir: &Path, file_name: &str) -> EntryRead {
    read_object_within(dir, file_name, MAX_RECORD_BYTES)
}

/// [`read_object`] for a file that may be larger than a record (the orchestrator's view).
pub(crate) fn read_object_within(dir: &Path, file_name: &str, max_bytes: u64) -> EntryRead {
    let path = dir.join(file_name);
    let unreadable =
        |why: String| EntryRead::Unreadable(format!("{} is unreadable: {why}", path.display()));
    // On Windows a reader meets a sharing violation while the writer renames a new
    // version into place: a moment, retried like every transient error.
    let mut file = match os_file::retry_transient(|| os_file::open(&path, false)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return EntryRead::Nothing,
        Err(e) if os_file::not_a_file(&e).is_some() => return EntryRead::Nothing,
        Err(e) => return unreadable(e.to_string()),
    };
    let mut bytes = Vec::new();
    if let Err(e) = (&mut file)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
    {
        return unreadable(e.to_string());
    }
    if bytes.len() as u64 > max_bytes {
        return unreadable(format!("larger than {max_bytes} bytes"));
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(fields)) => EntryRead::Object(fields),
        Ok(_) => unreadable("not a JSON object".into()),
        Err(e) => unreadable(e.to_string()),
    }
}

/// Removes `<dir>/<file_name>` if it is a regular file. Anything else was never
/// written by the tools and is left alone (DESIGN.md rule 12).
pub(crate) fn remove_file_entry(dir: &Path, file_name: &str) -> io::Result<()> {
    let path = dir.join(file_name);
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.file_type().is_file() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    // Windows refuses the delete while another process has the file open without
    // delete sharing (a reader, for a moment): retried, so that a stale stop request
    // does not outlive its removal and stop the desk that just started.
    match os_file::retry_transient(|| std::fs::remove_file(&path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows: a delete that meets a reader holding the file without delete sharing
    /// succeeds once the reader lets go (within the retry), instead of failing.
    #[cfg(windows)]
    #[test]
    fn a_removal_waits_out_a_short_sharing_violation() {
        use std::os::windows::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("X.stop"), b"{}").unwrap_or_else(|e| panic!("{e}"));
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .share_mode(0)
            .open(dir.path().join("X.stop"))
            .unwrap_or_else(|e| panic!("{e}"));
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(reader);
        });
        remove_file_entry(dir.path(), "X.stop").unwrap_or_else(|e| panic!("{e}"));
        letting_go
            .join()
            .unwrap_or_else(|_| panic!("the reader thread panicked"));
        assert!(!dir.path().join("X.stop").exists());
    }

    #[test]
    fn a_removal_leaves_what_is_not_a_regular_file_and_a_missing_one_is_no_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("D.stop")).unwrap_or_else(|e| panic!("{e}"));
        remove_file_entry(dir.path(), "D.stop").unwrap_or_else(|e| panic!("{e}"));
        assert!(dir.path().join("D.stop").is_dir());
        remove_file_entry(dir.path(), "missing.stop").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("F.stop"), b"{}").unwrap_or_else(|e| panic!("{e}"));
        remove_file_entry(dir.path(), "F.stop").unwrap_or_else(|e| panic!("{e}"));
        assert!(!dir.path().join("F.stop").exists());
    }
}
