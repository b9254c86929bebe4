//! The machine-wide half of a lock (DESIGN.md rule 17): a name in a kernel namespace
//! that exists only while its holder lives, whatever folder the desk runs from and
//! whether its lock dir still exists.
//!
//! Linux: an abstract unix socket name (`\0desk-tools/lock/<key>`), bound by the holder.
//! It cannot be deleted, is freed by the kernel when the holder's last descriptor closes
//! (on any death), and is unique per network namespace: the whole machine for a desk.
//! Both sides bind a stream socket: the kernel keeps abstract names per socket type.
//! Std's sockets are close-on-exec, so a child never inherits it.
//!
//! Windows: a locked file in one folder for the whole machine,
//! `%ProgramData%\desk-tools\locks\<key>.lock`, locked as lock files are (`os.rs`). The
//! lock goes with the holder's handle, on any death; while it is held neither the file
//! nor its folder can be deleted. The handle is not inheritable (std's default).
//!
//! Other Unix systems have no abstract names: the lock is only the file lock there.
//!
//! `python/process_lock.py` computes the same name ([`name_for`]) and takes the same
//! object; a test compares the two.

use std::io;

/// Prefix of every machine-wide name.
pub(crate) const PREFIX: &str = "desk-tools/lock/";

/// Longest name: an abstract socket name has 107 bytes; a Windows file name more.
const MAX_NAME: usize = 100;

/// The machine-wide name for lock `name`: the prefix and the lock name in lower case
/// (Windows file names ignore case), and, when given, a `[cluster]` host that is not this machine's own name (hashed),
/// so that two simulated hosts can share one machine. A name too long for a socket
/// address keeps its start and ends with a hash of the whole.
pub(crate) fn name_for(lock_name: &str, host: Option<&str>) -> String {
    let mut key = lock_name.to_ascii_lowercase();
    if let Some(host) = host {
        key = format!("{key}@{:016x}", fnv1a(host.as_bytes()));
    }
    let full = format!("{PREFIX}{key}");
    if full.len() <= MAX_NAME {
        return full;
    }
    // Lock names are ASCII, so any byte index is a char boundary.
    format!("{}~{:016x}", &full[..MAX_NAME - 17], fnv1a(key.as_bytes()))
}

/// FNV-1a, 64 bits: tiny, and the same in Python.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A held machine-wide name; dropping it frees the name.
#[derive(Debug)]
pub(crate) struct MachineLock {
    _held: imp::Held,
}

/// The outcome of [`MachineLock::try_take`].
#[derive(Debug)]
pub(crate) enum MachineClaim {
    Taken(MachineLock),
    /// Someone else holds it; their pid where the platform can tell (best effort).
    Held(Option<u32>),
}

impl MachineLock {
    pub(crate) fn try_take(name: &str) -> io::Result<MachineClaim> {
        Ok(match imp::try_take(name)? {
            Some(held) => MachineClaim::Taken(MachineLock { _held: held }),
            None => MachineClaim::Held(imp::holder_pid(name)),
        })
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::io;
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};

    pub(crate) type Held = UnixListener;

    pub(crate) fn try_take(name: &str) -> io::Result<Option<Held>> {
        let address = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&address) {
            Ok(listener) => Ok(Some(listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The holder's pid: the socket's inode from `/proc/net/unix`, then the process
    /// with a descriptor on it. Only processes we may inspect (our own user's) are seen.
    pub(crate) fn holder_pid(name: &str) -> Option<u32> {
        let table = std::fs::read_to_string("/proc/net/unix").ok()?;
        let wanted = format!("@{name}");
        let inode = table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path
            (fields.get(7) == Some(&wanted.as_str())).then(|| fields.get(6).copied())?
        })?;
        let target = format!("socket:[{inode}]");
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                    fds.filter_map(Result::ok).any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|link| link.as_os_str() == target.as_str())
                    })
                })
            })
    }
}

/// Windows: an exclusive lock on a file in one folder for the whole machine,
/// `%ProgramData%\desk-tools\locks\<key>.lock`, taken the way lock files are taken
/// (`os.rs`: `LockFileEx` on byte 2^62 of a handle that does not share delete). The
/// kernel drops the lock when the holder's handle closes, on any death; while it is
/// open nobody can delete the file or its folder, so deleting folders cannot free the
/// name. The holder writes its pid at the start of the file, for the refusal message.
///
/// Not a named mutex: a mutex whose existence is the lock lost the sixteen-starter race
/// under Wine (rounds with no winner: a loser's transient handle keeps the name alive
/// after the holder is gone). A byte-range lock belongs to one handle only.
#[cfg(windows)]
mod imp {
    use std::fs::File;
    use std::io::{self, Read, Write};
    use std::path::PathBuf;

    use super::PREFIX;
    use crate::os_file as os;

    pub(crate) type Held = File;

    /// The machine's folder of machine-wide lock files.
    fn folder() -> PathBuf {
        let base = std::env::var_os("ProgramData")
            .or_else(|| std::env::var_os("ALLUSERSPROFILE"))
            .map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from);
        base.join("desk-tools").join("locks")
    }

    /// `<folder>\<key>.lock`: the name without its prefix is a lock name in lower case
    /// (file-name safe), perhaps with `@<hash>` or `~<hash>`.
    fn path_of(name: &str) -> PathBuf {
        let key = name.strip_prefix(PREFIX).unwrap_or(name);
        folder().join(format!("{key}.lock"))
    }

    pub(crate) fn try_take(name: &str) -> io::Result<Option<Held>> {
        let path = path_of(name);
        let in_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(in_path)?;
        }
        let mut file = match os::retry_transient(|| os::open(&path, true)) {
            Ok(file) => file,
            // Made by another Windows user: ours to lock (a read handle may hold the
            // lock), not to write; the pid in it is only a hint.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                os::open(&path, false).map_err(in_path)?
            }
            Err(e) => return Err(in_path(e)),
        };
        if !os::try_lock_exclusive(&file).map_err(in_path)? {
            return Ok(None);
        }
        // Best effort: the pid only names the holder in a refusal.
        let _ = file
            .set_len(0)
            .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()));
        Ok(Some(file))
    }

    pub(crate) fn holder_pid(name: &str) -> Option<u32> {
        let mut text = String::new();
        os::open(&path_of(name), false)
            .ok()?
            .take(32)
            .read_to_string(&mut text)
            .ok()?;
        text.trim().parse().ok()
    }
}

/// Other Unix systems have no abstract names: only the file lock applies there.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
mod imp {
    use std::io;

    /// No machine-wide namespace here: always taken, never held.
    pub(crate) type Held = ();

    pub(crate) fn try_take(_name: &str) -> io::Result<Option<Held>> {
        Ok(Some(()))
    }

    pub(crate) fn holder_pid(_name: &str) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_and_fit_a_socket_address() {
        assert_eq!(name_for("BRAIN_ATLAS", None), "desk-tools/lock/brain_atlas");
        assert_eq!(name_for("brain_atlas", None), name_for("Brain_Atlas", None));
        assert_ne!(
            name_for("BRAIN_A", Some("A")),
            name_for("BRAIN_A", Some("B"))
        );
        let long = "W".repeat(100);
        let name = name_for(&long, None);
        assert_eq!(name.len(), MAX_NAME);
        assert_ne!(name, name_for(&"W".repeat(99), None));
        // Known FNV-1a values, which process_lock.py must match.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_name_is_held_once_and_free_after_drop() {
        let name = format!("{PREFIX}unit-test-{}", std::process::id());
        let MachineClaim::Taken(first) = MachineLock::try_take(&name).unwrap() else {
            panic!("a fresh name is held");
        };
        if cfg!(any(target_os = "linux", windows)) {
            assert!(matches!(
                MachineLock::try_take(&name).unwrap(),
                MachineClaim::Held(_)
            ));
        }
        drop(first);
        assert!(matches!(
            MachineLock::try_take(&name).unwrap(),
            MachineClaim::Taken(_)
        ));
    }
}
