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

/// The longest grace a request can give: a day.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// Now, in Unix seconds with a fraction.
fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A request to stop the holder of one lock name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    /// The lock name whose holder should stop what it runs.
    pub name: String,
    /// Unix seconds (with a fraction) by which the process should be gone; the holder
    /// forces it then. Whole seconds are read as well.
    pub deadline: f64,
    /// Who asked (pid), for the logs.
    pub requested_by: u32,
}

impl StopRequest {
    /// A request to stop `name` within `timeout`, from this process.
    pub fn new(name: &str, timeout: Duration) -> StopRequest {
        let deadline = now_unix() + timeout.min(LONGEST).as_secs_f64();
        StopRequest {
            name: name.to_string(),
            // Milliseconds are precision enough, and keep the file readable.
            deadline: (deadline * 1000.0).round() / 1000.0,
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
                deadline: 0.0,
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

    /// Time left until the deadline: at least `floor` (a request written with a zero
    /// timeout still gets a moment for a graceful stop), at most a day (a deadline
    /// further out is no deadline anyone means, and would overflow a clock).
    pub fn time_left(&self, floor: Duration) -> Duration {
        let left = self.deadline - now_unix();
        let left = if left.is_nan() {
            floor
        } else {
            Duration::try_from_secs_f64(left.clamp(0.0, LONGEST.as_secs_f64())).unwrap_or(floor)
        };
        left.clamp(floor, LONGEST.max(floor))
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
    fn deadlines_keep_their_fraction_and_huge_ones_are_a_day() {
        let request = StopRequest::new("BRAIN_ATLAS", Duration::from_millis(3000));
        let left = request.time_left(Duration::ZERO);
        assert!(
            left > Duration::from_millis(2900) && left <= Duration::from_millis(3001),
            "{left:?}"
        );
        for deadline in [f64::MAX, 1.8e19, f64::INFINITY] {
            let far = StopRequest {
                deadline,
                ..request.clone()
            };
            assert_eq!(far.time_left(Duration::ZERO), LONGEST);
        }
        let past = StopRequest {
            deadline: -5.0,
            ..request.clone()
        };
        assert_eq!(
            past.time_left(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        let whole: StopRequest = serde_json::from_str(
            r#"{"name": "X", "deadline": 18446744073709551615, "requested_by": 1}"#,
        )
        .unwrap();
        assert_eq!(whole.time_left(Duration::ZERO), LONGEST);
    }

    #[test]
    fn garbage_still_means_stop() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(StopRequest::path(dir.path(), "X"), b"??").unwrap();
        let request = StopRequest::read(dir.path(), "X").unwrap();
        assert_eq!(request.deadline, 0.0);
        assert_eq!(
            request.time_left(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }
}
