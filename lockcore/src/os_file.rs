//! The platform part of a lock: how the file is opened, locked and removed.
//!
//! Linux/macOS: `flock` through std (`File::try_lock`), which is advisory, so the record
//! stays readable; the holder unlinks its file *while still holding the lock*.
//!
//! Windows: byte-range locks are mandatory, and std's `try_lock` locks the whole file,
//! which would make the record unreadable (DESIGN.md rule 6). So we lock one byte far
//! past the end of any record with `LockFileEx`. Files are opened without delete
//! sharing, so nobody can delete a file someone has open (rule 7); the price is that a
//! holder cannot delete its own open file either: it unlocks, closes, then deletes, and
//! a sharing violation then means another process has the file open and it is theirs.
//! Wine does not enforce mandatory read locks: keep this code small and reviewed.
//!
//! Both: a lock-dir entry is opened only if it is a regular file with one name
//! (DESIGN.md rule 12).
//! A symlink (Windows: any reparse point) is never followed, so a record is never
//! written through a link into another file; a FIFO, socket, device or directory is
//! never opened in a way that can block. Such an entry fails with [`NotAFile`].

use std::fs::File;
use std::io;
use std::path::Path;

pub(crate) use imp::{
    file_key, open, path_key, remove_locked, try_lock_exclusive, try_lock_shared, unlock,
};

/// The error inside an [`io::Error`] from [`open`] when the entry is not a regular file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("it is {what}, not a regular file")]
pub(crate) struct NotAFile {
    pub(crate) what: &'static str,
}

/// What a non-regular entry is, if `error` says the entry was not a regular file.
pub(crate) fn not_a_file(error: &io::Error) -> Option<&'static str> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotAFile>())
        .map(|n| n.what)
}

/// A regular file with more than one name: writing a record into it would write into
/// the other name's file too (`ln victim NAME.lock`).
const HARD_LINKED: &str = "a file with other names (a hard link)";

fn not_a_file_error(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, NotAFile { what })
}

/// What an entry is, from metadata that did not follow links; `None` for a regular file.
pub(crate) fn describe_non_regular(metadata: &std::fs::Metadata) -> Option<&'static str> {
    let kind = metadata.file_type();
    if kind.is_symlink() {
        return Some("a symbolic link");
    }
    if kind.is_dir() {
        return Some("a directory");
    }
    if imp::is_reparse_point(metadata) {
        return Some("a reparse point (a link)");
    }
    if kind.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Some("a named pipe (FIFO)");
        }
        if kind.is_socket() {
            return Some("a socket");
        }
        if kind.is_block_device() || kind.is_char_device() {
            return Some("a device");
        }
    }
    Some("not a regular file")
}

/// Refuses an entry that is there and is not a regular file, before it is opened:
/// opening a device can have effects of its own. The open itself re-checks.
fn refuse_non_regular_entry(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => match describe_non_regular(&metadata) {
            Some(what) => Err(not_a_file_error(what)),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Which file an open handle is, without keeping it open: a watcher that kept a second
/// handle would, on Windows, keep its holder from deleting the file at release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileKey(u64, u64);

/// What became of a lock file that its holder removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    Yes,
    /// Windows only: another process opened it in between, so it is theirs now.
    #[cfg_attr(unix, allow(dead_code))]
    InUse,
    /// It was already gone.
    Gone,
}

/// An open error that a retry can clear: Windows releases a crashed holder's handle
/// "when resources allow", so a sharing or lock violation right after a crash is brief.
pub(crate) fn is_transient(error: &io::Error) -> bool {
    // ERROR_ACCESS_DENIED (5: also a file whose delete is pending, until the last
    // handle closes), ERROR_SHARING_VIOLATION (32: an antivirus or indexer has it open
    // for a moment), ERROR_LOCK_VIOLATION (33)
    cfg!(windows) && matches!(error.raw_os_error(), Some(5 | 32 | 33))
}

/// Runs `op` again while it fails with a [transient](is_transient) error, for about a
/// second; then its last result stands.
pub(crate) fn retry_transient<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
    let started = std::time::Instant::now();
    loop {
        match op() {
            Err(e) if is_transient(&e) && started.elapsed() < PATIENCE => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use std::fs::{OpenOptions, TryLockError};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    /// Opens (and with `create`, creates) a lock-dir entry that is a regular file.
    /// `O_NOFOLLOW`: a symlink fails (ELOOP) instead of being followed, also on create.
    /// `O_NONBLOCK`: a FIFO swapped in after the type check opens at once (and is then
    /// refused by the `fstat` check); on a regular file it changes nothing, and `flock`
    /// ignores it.
    pub(crate) fn open(path: &Path, create: bool) -> io::Result<File> {
        refuse_non_regular_entry(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => not_a_file_error("a symbolic link"),
                Some(libc::EISDIR) => not_a_file_error("a directory"),
                Some(libc::ENXIO) => not_a_file_error("a socket or device"),
                _ => e,
            })?;
        let metadata = file.metadata()?;
        match describe_non_regular(&metadata) {
            Some(what) => Err(not_a_file_error(what)),
            None if metadata.nlink() > 1 => Err(not_a_file_error(HARD_LINKED)),
            None => Ok(file),
        }
    }

    pub(crate) fn is_reparse_point(_metadata: &std::fs::Metadata) -> bool {
        false
    }

    pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
        would_block_is_false(file.try_lock())
    }

    pub(crate) fn try_lock_shared(file: &File) -> io::Result<bool> {
        would_block_is_false(file.try_lock_shared())
    }

    pub(crate) fn unlock(file: &File) -> io::Result<()> {
        file.unlock()
    }

    /// Device and inode.
    pub(crate) fn file_key(file: &File) -> io::Result<FileKey> {
        let metadata = file.metadata()?;
        Ok(FileKey(metadata.dev(), metadata.ino()))
    }

    /// Device and inode of the entry itself (a symlink is not followed, nothing is opened).
    pub(crate) fn path_key(path: &Path) -> io::Result<FileKey> {
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(FileKey(metadata.dev(), metadata.ino()))
    }

    /// Removes the file while the lock is still held, then closes it. The caller has
    /// checked that `path` still names `file`.
    pub(crate) fn remove_locked(file: File, path: &Path) -> io::Result<Removed> {
        let removed = match std::fs::remove_file(path) {
            Ok(()) => Removed::Yes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Removed::Gone,
            Err(e) => return Err(e),
        };
        drop(file);
        Ok(removed)
    }

    fn would_block_is_false(result: Result<(), TryLockError>) -> io::Result<bool> {
        match result {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::{ERROR_IO_PENDING, ERROR_LOCK_VIOLATION};
    use windows_sys::Win32::Storage::FileSystem::{
        BY_HANDLE_FILE_INFORMATION, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT,
        FILE_FLAG_OPEN_REPARSE_POINT, FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_TYPE_DISK,
        GetFileInformationByHandle, GetFileType, LOCKFILE_EXCLUSIVE_LOCK,
        LOCKFILE_FAIL_IMMEDIATELY, LockFileEx, UnlockFileEx,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;

    /// The locked byte is at offset 2^62: no record ever reaches it.
    const LOCK_OFFSET_HIGH: u32 = 0x4000_0000;

    /// Opens (and with `create`, creates) a lock-dir entry that is a regular file.
    /// FILE_FLAG_OPEN_REPARSE_POINT opens a symlink or junction itself, never its
    /// target; the handle's attributes then refuse it. A directory cannot be opened
    /// without FILE_FLAG_BACKUP_SEMANTICS, and a handle that is not on a disk (a device
    /// such as `CON`) is refused by its file type.
    pub(crate) fn open(path: &Path, create: bool) -> io::Result<File> {
        refuse_non_regular_entry(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            // No FILE_SHARE_DELETE: `del .locks\*.lock` fails while the file is open.
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)
            .map_err(|e| denied_for_good(e, path))?;
        // SAFETY: an open handle, for the duration of the call.
        if unsafe { GetFileType(file.as_raw_handle()) } != FILE_TYPE_DISK {
            return Err(not_a_file_error("a device"));
        }
        let info = information(&file)?;
        if info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Err(not_a_file_error("a reparse point (a link)"));
        }
        if info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
            return Err(not_a_file_error("a directory"));
        }
        if info.nNumberOfLinks > 1 {
            return Err(not_a_file_error(HARD_LINKED));
        }
        Ok(file)
    }

    /// ERROR_ACCESS_DENIED is also what a file whose delete is pending answers until
    /// its last handle closes, which passes ([`is_transient`]). A file that answers
    /// `GetFileAttributesW` is there, though: the denial is its read-only attribute or
    /// its ACL, and waiting will not clear it. Such an error has no OS code any more,
    /// so nobody retries it, and it says what to fix.
    fn denied_for_good(error: io::Error, path: &Path) -> io::Error {
        use std::os::windows::ffi::OsStrExt;
        use windows_sys::Win32::Foundation::ERROR_ACCESS_DENIED;
        use windows_sys::Win32::Storage::FileSystem::{
            FILE_ATTRIBUTE_READONLY, GetFileAttributesW, INVALID_FILE_ATTRIBUTES,
        };
        if error.raw_os_error() != Some(ERROR_ACCESS_DENIED as i32) {
            return error;
        }
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
        // SAFETY: a terminated wide string that outlives the call.
        let attributes = unsafe { GetFileAttributesW(wide.as_ptr()) };
        if attributes == INVALID_FILE_ATTRIBUTES {
            return error;
        }
        let why = if attributes & FILE_ATTRIBUTE_READONLY != 0 {
            "access is denied: the file is read-only; clear that (attrib -r) or remove it"
        } else {
            "access is denied: this user may not write the file; run as the desk's user, \
             or fix its permissions"
        };
        io::Error::new(io::ErrorKind::PermissionDenied, why)
    }

    pub(crate) fn is_reparse_point(metadata: &std::fs::Metadata) -> bool {
        metadata.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0
    }

    /// The identity of the entry at `path`, opened without following a link.
    pub(crate) fn path_key(path: &Path) -> io::Result<FileKey> {
        file_key(&open(path, false)?)
    }

    fn information(file: &File) -> io::Result<BY_HANDLE_FILE_INFORMATION> {
        // SAFETY: plain data; all-zero is a valid value to be overwritten.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: an open handle and a pointer to the struct the call fills.
        if unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info)
    }

    pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
        lock_range(file, LOCKFILE_EXCLUSIVE_LOCK)
    }

    pub(crate) fn try_lock_shared(file: &File) -> io::Result<bool> {
        lock_range(file, 0)
    }

    pub(crate) fn unlock(file: &File) -> io::Result<()> {
        let mut overlapped = lock_position();
        // SAFETY: the handle is open for the duration of the call and `overlapped`
        // outlives it; the call is synchronous on a handle opened without
        // FILE_FLAG_OVERLAPPED.
        let ok = unsafe { UnlockFileEx(file.as_raw_handle(), 0, 1, 0, &mut overlapped) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Volume serial number and file index (unique per NTFS volume).
    pub(crate) fn file_key(file: &File) -> io::Result<FileKey> {
        let info = information(file)?;
        let index = (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow);
        Ok(FileKey(u64::from(info.dwVolumeSerialNumber), index))
    }

    /// Unlocks and closes, then deletes: an open file without delete sharing cannot be
    /// deleted, not even by its holder. A sharing violation means another process has
    /// the file open: an inspector for a moment (so we retry briefly), or a new holder,
    /// whose file it now is (so it stays). A delete that succeeds proves nobody had it
    /// open, so nobody can be holding it.
    pub(crate) fn remove_locked(file: File, path: &Path) -> io::Result<Removed> {
        // An inspection takes milliseconds, longer on a loaded machine: half a second
        // outlasts it, and bounds the wait when a new holder has the file.
        const PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);
        unlock(&file)?;
        drop(file);
        let started = std::time::Instant::now();
        loop {
            match std::fs::remove_file(path) {
                Ok(()) => return Ok(Removed::Yes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::Gone),
                Err(e) if is_transient(&e) && started.elapsed() < PATIENCE => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) if is_transient(&e) => return Ok(Removed::InUse),
                Err(e) => return Err(e),
            }
        }
    }

    fn lock_range(file: &File, mode: u32) -> io::Result<bool> {
        let mut overlapped = lock_position();
        // SAFETY: as in `unlock`; LOCKFILE_FAIL_IMMEDIATELY means no I/O stays pending.
        let ok = unsafe {
            LockFileEx(
                file.as_raw_handle(),
                mode | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                1,
                0,
                &mut overlapped,
            )
        };
        if ok != 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(code)
                if code == ERROR_LOCK_VIOLATION as i32 || code == ERROR_IO_PENDING as i32 =>
            {
                Ok(false)
            }
            _ => Err(error),
        }
    }

    fn lock_position() -> OVERLAPPED {
        // SAFETY: OVERLAPPED is plain data; all-zero is its documented initial state.
        let mut overlapped: OVERLAPPED = unsafe { std::mem::zeroed() };
        overlapped.Anonymous.Anonymous.OffsetHigh = LOCK_OFFSET_HIGH;
        overlapped
    }
}
