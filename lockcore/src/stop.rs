//! Stop requests: how anyone asks a lock holder to stop what it holds.
//!
//! Stopping goes through the holder (DESIGN.md): only it can stop its child gracefully
//! on Windows (CTRL_BREAK needs a shared console), and only it knows not to restart
//! what it was asked to stop. A request is the file `<lock_dir>/<NAME>.stop` naming
//! what to stop and by when; `MASTER_LAUNCH.stop` asks the orchestrator to stop the
//! whole desk in the safe order and exit. The holder removes the file once it has
//! acted on it. Requests are plain JSON so an operator can read them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::now_secs;

/// A request to stop the holder of one lock name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// The lock name whose holder should stop what it runs.
    pub name: String,
    /// Unix seconds by which the process should be gone; the holder forces it then.
    pub deadline: u64,
    /// Who asked (pid), for the logs.
    pub requested_by: u32,
}

impl StopRequest {
    /// A request to stop `name` within `timeout`, from this process.
    pub fn new(name: &str, timeout: Duration) -> StopRequest {
        StopRequest {
            name: name.to_string(),
            deadline: now_secs() + timeout.as_secs(),
            requested_by: std::process::id(),
        }
    }

    /// `<lock_dir>/<name>.stop`.
    pub fn path(lock_dir: &Path, name: &str) -> PathBuf {
        lock_dir.join(format!("{name}.stop"))
    }

    /// Writes the request (replacing an older one for the same name). Written to a
    /// temporary file and renamed, so a holder never reads half a request.
    pub fn write(&self, lock_dir: &Path) -> io::Result<PathBuf> {
        std::fs::create_dir_all(lock_dir)?;
        let path = StopRequest::path(lock_dir, &self.name);
        let temporary = lock_dir.join(format!("{}.stop.{}.tmp", self.name, std::process::id()));
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, &path)?;
        Ok(path)
    }

    /// The pending request for `name`, if any. An unreadable request still counts as
    /// a request to stop (with no deadline beyond the holder's own timeout).
    pub fn read(lock_dir: &Path, name: &str) -> Option<StopRequest> {
        let bytes = std::fs::read(StopRequest::path(lock_dir, name)).ok()?;
        Some(
            serde_json::from_slice(&bytes).unwrap_or_else(|_| StopRequest {
                name: name.to_string(),
                deadline: 0,
                requested_by: 0,
            }),
        )
    }

    /// Removes the request for `name` (acted on, or withdrawn).
    pub fn remove(lock_dir: &Path, name: &str) -> io::Result<()> {
        match std::fs::remove_file(StopRequest::path(lock_dir, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Time left until the deadline; at least `floor` (a request written with a zero
    /// timeout still gets a moment for a graceful stop).
    pub fn time_left(&self, floor: Duration) -> Duration {
        Duration::from_secs(self.deadline.saturating_sub(now_secs())).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let request = StopRequest::new("BRAIN_ATLAS", Duration::from_secs(10));
        request.write(dir.path()).unwrap();
        assert_eq!(
            StopRequest::read(dir.path(), "BRAIN_ATLAS"),
            Some(request.clone())
        );
        assert!(request.time_left(Duration::ZERO) <= Duration::from_secs(10));
        StopRequest::remove(dir.path(), "BRAIN_ATLAS").unwrap();
        assert_eq!(StopRequest::read(dir.path(), "BRAIN_ATLAS"), None);
        StopRequest::remove(dir.path(), "BRAIN_ATLAS").unwrap();
    }

    #[test]
    fn garbage_still_means_stop() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(StopRequest::path(dir.path(), "X"), b"??").unwrap();
        let request = StopRequest::read(dir.path(), "X").unwrap();
        assert_eq!(request.deadline, 0);
        assert_eq!(
            request.time_left(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }
}
