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

use crate::entry::{self, EntryRead, Existing, Written};
/// Now, in Unix seconds with a fraction: deadlines keep theirs, so a 3 s request
/// gives 3 s, not whatever is left of the current second plus 2.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The longest a request can ask a holder to wait: a deadline further away (a typo, a
/// `u64::MAX`) is clamped to it, so no deadline overflows an `Instant`.
pub const MAX_STOP_WAIT: Duration = Duration::from_secs(24 * 60 * 60);
/// The least time a graceful stop gets, even when the deadline has passed.
pub const MIN_STOP_WAIT: Duration = Duration::from_secs(1);

/// A request to stop the holder of one lock name.
///
/// Anyone may write one by hand: only the file name matters. `deadline` and
/// `requested_by` are optional; a missing or invalid `deadline` means the component's
/// own `stop_timeout_secs` (never a faster kill).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    /// The lock name whose holder should stop what it runs.
    pub name: String,
    /// Unix seconds by which the process should be gone; the holder forces it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<f64>,
    /// Who asked (pid), for the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<u32>,
    /// `[cluster]`: the host the request came from, through etcd (`requested_by` is a
    /// pid there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_on: Option<String>,
    /// Why the request file could not be read, naming its path: it still means "stop",
    /// with the component's own timeout. Set by [`StopRequest::read`], never written.
    #[serde(skip)]
    pub unreadable: Option<String>,
}

/// A host name from a request is shown in logs: a longer one is cut.
const MAX_HOST_CHARS: usize = 253;

impl StopRequest {
    /// A request to stop `name` within `timeout`, from this process.
    pub fn new(name: &str, timeout: Duration) -> StopRequest {
        StopRequest {
            name: name.to_string(),
            // Milliseconds are precision enough, and keep the file readable.
            deadline: Some(
                ((now_unix() + timeout.min(MAX_STOP_WAIT).as_secs_f64()) * 1000.0).round() / 1000.0,
            ),
            requested_by: Some(std::process::id()),
            requested_on: None,
            unreadable: None,
        }
    }

    /// `<lock_dir>/<name>.stop`.
    pub fn path(lock_dir: &Path, name: &str) -> PathBuf {
        lock_dir.join(format!("{name}.stop"))
    }

    /// Writes the request (replacing an older one for the same name), whole or not at
    /// all: a holder never reads half a request, and a link left at the request's
    /// name is replaced, never followed.
    pub fn write(&self, lock_dir: &Path) -> io::Result<PathBuf> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let file_name = format!("{}.stop", self.name);
        match entry::write_whole(lock_dir, &file_name, &bytes, Existing::Replace)? {
            Written::At(path) | Written::AlreadyThere(path) => Ok(path),
        }
    }

    /// The pending request for `name`, if any. An unreadable request still counts as a
    /// request to stop, without a deadline (the component's own timeout applies), and
    /// says why in [`StopRequest::unreadable`]. An entry that is not a regular file
    /// (a FIFO, a link, a directory) is no request: it is never opened in a way that
    /// could block, and `check-procs` reports it.
    pub fn read(lock_dir: &Path, name: &str) -> Option<StopRequest> {
        let request = |deadline, requested_by, requested_on, unreadable| StopRequest {
            name: name.to_string(),
            deadline,
            requested_by,
            requested_on,
            unreadable,
        };
        match entry::read_object(lock_dir, &format!("{name}.stop")) {
            EntryRead::Nothing => None,
            EntryRead::Unreadable(why) => Some(request(
                None,
                None,
                None,
                Some(format!("stop request {why}")),
            )),
            EntryRead::Object(fields) => Some(request(
                fields
                    .get("deadline")
                    .and_then(serde_json::Value::as_f64)
                    .filter(|d| d.is_finite() && *d >= 0.0),
                fields
                    .get("requested_by")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|pid| u32::try_from(pid).ok()),
                fields
                    .get("requested_on")
                    .and_then(serde_json::Value::as_str)
                    .map(|host| host.chars().take(MAX_HOST_CHARS).collect()),
                None,
            )),
        }
    }

    /// Removes the request for `name` (acted on, or withdrawn). An entry that is not a
    /// regular file was never a request, and is left alone (DESIGN.md rule 12).
    pub fn remove(lock_dir: &Path, name: &str) -> io::Result<()> {
        entry::remove_file_entry(lock_dir, &format!("{name}.stop"))
    }

    /// How long the holder waits before forcing: the time left until the deadline,
    /// at least [`MIN_STOP_WAIT`] (a request written with a zero timeout still gets a
    /// moment for a graceful stop) and at most [`MAX_STOP_WAIT`]. Without a deadline,
    /// `stop_timeout` (the component's own), also at most [`MAX_STOP_WAIT`].
    pub fn time_left(&self, stop_timeout: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => {
                let left = (deadline - now_unix()).clamp(0.0, MAX_STOP_WAIT.as_secs_f64());
                Duration::try_from_secs_f64(left)
                    .unwrap_or(MIN_STOP_WAIT)
                    .clamp(MIN_STOP_WAIT, MAX_STOP_WAIT)
            }
            None => stop_timeout.min(MAX_STOP_WAIT),
        }
    }

    /// `pid 42`, or `someone` when the request does not say.
    pub fn requester(&self) -> String {
        let who = self.requested_by.map_or_else(
            || "someone (no requested_by)".to_string(),
            |pid| format!("pid {pid}"),
        );
        match &self.requested_on {
            Some(host) => format!("{who} on host {host} (through etcd)"),
            None => who,
        }
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
        // Deadlines are written to the millisecond.
        assert!(request.time_left(Duration::ZERO) <= Duration::from_millis(10_001));
        StopRequest::remove(dir.path(), "BRAIN_ATLAS").unwrap();
        assert_eq!(StopRequest::read(dir.path(), "BRAIN_ATLAS"), None);
        StopRequest::remove(dir.path(), "BRAIN_ATLAS").unwrap();
    }

    #[test]
    fn garbage_still_means_stop_with_the_components_own_timeout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(StopRequest::path(dir.path(), "X"), b"??").unwrap();
        let request = StopRequest::read(dir.path(), "X").unwrap();
        assert_eq!(request.deadline, None);
        let why = request.unreadable.as_deref().unwrap();
        assert!(why.contains("X.stop"), "{why}");
        assert_eq!(
            request.time_left(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn requested_by_and_deadline_are_optional_and_an_invalid_deadline_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            r#"{"name": "X"}"#,
            r#"{"name": "X", "deadline": "soon"}"#,
            r#"{"name": "X", "deadline": -5, "requested_by": "me"}"#,
            r#"{}"#,
        ] {
            std::fs::write(StopRequest::path(dir.path(), "X"), text).unwrap();
            let request = StopRequest::read(dir.path(), "X").unwrap();
            assert_eq!(request.unreadable, None, "{text}");
            assert_eq!(request.deadline, None, "{text}");
            assert_eq!(
                request.time_left(Duration::from_secs(10)),
                Duration::from_secs(10),
                "{text}: a missing deadline is the component's timeout, not a faster kill"
            );
        }
        std::fs::write(
            StopRequest::path(dir.path(), "X"),
            r#"{"name": "X", "deadline": 0}"#,
        )
        .unwrap();
        let request = StopRequest::read(dir.path(), "X").unwrap();
        assert_eq!(request.requested_by, None);
        assert_eq!(request.time_left(Duration::from_secs(10)), MIN_STOP_WAIT);
    }

    #[test]
    fn a_deadline_keeps_its_fraction() {
        let request = StopRequest::new("BRAIN_ATLAS", Duration::from_millis(3000));
        let left = request.time_left(Duration::ZERO);
        assert!(
            left > Duration::from_millis(2000) && left <= Duration::from_millis(3001),
            "{left:?}"
        );
        let written: StopRequest =
            serde_json::from_str(r#"{"name": "X", "deadline": 1.5}"#).unwrap();
        assert_eq!(written.deadline, Some(1.5));
    }

    #[test]
    fn a_huge_deadline_is_clamped_and_never_overflows_an_instant() {
        let request = StopRequest {
            name: "X".into(),
            deadline: Some(1.8e19),
            requested_by: Some(u32::MAX),
            requested_on: None,
            unreadable: None,
        };
        assert_eq!(request.time_left(Duration::ZERO), MAX_STOP_WAIT);
        let never = StopRequest::new("X", Duration::from_secs(u64::MAX));
        assert!(
            never
                .deadline
                .is_some_and(|d| d <= now_unix() + MAX_STOP_WAIT.as_secs_f64() + 1.0)
        );
        assert!(
            std::time::Instant::now()
                .checked_add(never.time_left(Duration::MAX))
                .is_some()
        );
        let missing = StopRequest {
            deadline: None,
            ..request
        };
        assert_eq!(missing.time_left(Duration::MAX), MAX_STOP_WAIT);
    }

    #[test]
    fn a_huge_request_is_unreadable_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = StopRequest::path(dir.path(), "X");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(10 * 1024 * 1024)
            .unwrap();
        let request = StopRequest::read(dir.path(), "X").unwrap();
        assert!(request.unreadable.unwrap().contains("larger than"));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_link_or_directory_is_no_request_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.json");
        std::fs::write(&outside, r#"{"name": "L", "deadline": 1}"#).unwrap();
        std::os::unix::fs::symlink(&outside, StopRequest::path(dir.path(), "L")).unwrap();
        std::fs::create_dir(StopRequest::path(dir.path(), "D")).unwrap();
        mkfifo(&StopRequest::path(dir.path(), "F"));
        let started = std::time::Instant::now();
        for name in ["L", "D", "F"] {
            assert_eq!(StopRequest::read(dir.path(), name), None, "{name}");
            StopRequest::remove(dir.path(), name).unwrap();
            assert!(
                std::fs::symlink_metadata(StopRequest::path(dir.path(), name)).is_ok(),
                "{name} was removed"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[cfg(unix)]
    #[test]
    fn writing_never_follows_a_link_left_at_the_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        std::os::unix::fs::symlink(
            &victim,
            locks.join(format!("X.stop.{}.tmp", std::process::id())),
        )
        .unwrap();
        std::os::unix::fs::symlink(&victim, StopRequest::path(&locks, "X")).unwrap();
        StopRequest::new("X", Duration::from_secs(1))
            .write(&locks)
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(StopRequest::read(&locks, "X").unwrap().deadline.is_some());
    }
}
