//! Control of a running orchestrator: start and restart requests, and the view of the
//! desk it publishes.
//!
//! Beside the stop requests ([`crate::stop`]), anyone may ask the running master-launch
//! to start or restart a component by placing `<lock_dir>/<NAME>.start` or
//! `<NAME>.restart`. The orchestrator acts on it through the same lock and pre-flight as
//! its first start, removes the file, and answers in the view it publishes,
//! `<lock_dir>/MASTER_LAUNCH.state`: every component's supervision state (running,
//! restarting, given up, stopped on request, ...) with a reason in plain words, and the
//! answers to the last requests. The view is replaced whole on every change, so a
//! reader never sees half of it; it counts only while the orchestrator that wrote it
//! holds the `MASTER_LAUNCH` lock (a crashed orchestrator's view is stale).

use std::io;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::entry::{self, EntryRead, Existing, Written};
use crate::lock::{LockState, LockStatus};
use crate::process::{ProcessIdentity, ProcessProbe, same_start};

/// The file the orchestrator publishes its view in.
pub const STATE_FILE: &str = "MASTER_LAUNCH.state";
/// How many answers per component the view keeps: enough for every requester that
/// could be waiting at once.
pub const ANSWERS_KEPT: usize = 16;
/// The longest request id taken. Ours are `<pid>-<nanos>`; the id is copied into the
/// view's answers, so a longer one (anyone can write the lock dir) could grow the view
/// past what readers accept and hide it from check-procs and every requester.
pub const MAX_ID_BYTES: usize = 64;
/// The largest view a reader accepts. Every component keeps [`ANSWERS_KEPT`] answers
/// whose reasons may name long paths: a big desk's view outgrows a lock record's
/// limit (64 KiB), and a view cut off there would hide every state from check-procs.
pub const MAX_VIEW_BYTES: u64 = 4 * 1024 * 1024;

/// What a control request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Supervise it again: it was given up, stopped on request, or never started.
    Start,
    /// Stop it gracefully and start it again (its brain too, for a watchdog).
    Restart,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Start, Action::Restart];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Restart => "restart",
        }
    }
}

/// A request to the orchestrator to start or restart one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub name: String,
    pub action: Action,
    /// Unique per request: the answer in the published view carries it.
    pub id: String,
    /// Who asked: a request whose requester has died is cleared, not acted on.
    pub requested_by: Option<ProcessIdentity>,
}

/// What placing a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Ours is in place; its answer will carry this id.
    Ours(String),
    /// An equal request (same component, same action) was already pending: wait for
    /// its answer, under this id, instead of asking twice.
    Joined(String),
}

impl Placed {
    pub fn id(&self) -> &str {
        match self {
            Placed::Ours(id) | Placed::Joined(id) => id,
        }
    }
}

impl ControlRequest {
    pub fn new(name: &str, action: Action, requester: ProcessIdentity) -> ControlRequest {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        ControlRequest {
            name: name.to_string(),
            action,
            id: format!("{}-{nanos}", requester.pid),
            requested_by: Some(requester),
        }
    }

    pub fn file_name(name: &str, action: Action) -> String {
        format!("{name}.{}", action.as_str())
    }

    /// Places the request, never replacing a pending one: two requesters of the same
    /// thing share one request and one answer. A pending file that cannot be read
    /// (being replaced, or garbage the orchestrator is about to clear) is waited out
    /// for up to `patience`.
    pub fn place(&self, lock_dir: &Path, patience: Duration) -> io::Result<Placed> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let file_name = ControlRequest::file_name(&self.name, self.action);
        let give_up_at = std::time::Instant::now() + patience.min(Duration::from_secs(60));
        loop {
            let path = match entry::write_whole(lock_dir, &file_name, &bytes, Existing::Keep)? {
                Written::At(_) => return Ok(Placed::Ours(self.id.clone())),
                Written::AlreadyThere(path) => path,
            };
            let why = match ControlRequest::read(lock_dir, &self.name, self.action) {
                Some(Ok(pending)) => return Ok(Placed::Joined(pending.id)),
                Some(Err(why)) => why,
                None => format!("{} is not a regular file", path.display()),
            };
            if std::time::Instant::now() >= give_up_at {
                return Err(io::Error::other(format!(
                    "cannot place the request: {why}; remove it by hand if no master-launch runs"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pending request, if any: `Err` says why a file there cannot be used.
    pub fn read(
        lock_dir: &Path,
        name: &str,
        action: Action,
    ) -> Option<Result<ControlRequest, String>> {
        let file_name = ControlRequest::file_name(name, action);
        match entry::read_object(lock_dir, &file_name) {
            EntryRead::Nothing => None,
            EntryRead::Unreadable(why) => Some(Err(why)),
            EntryRead::Object(fields) => Some(
                serde_json::from_value::<ControlRequest>(serde_json::Value::Object(fields))
                    .map_err(|e| {
                        format!(
                            "{} is not a request: {e}",
                            lock_dir.join(&file_name).display()
                        )
                    })
                    .and_then(|request| {
                        if request.id.len() > MAX_ID_BYTES {
                            Err(format!(
                                "{} has an id longer than {MAX_ID_BYTES} bytes",
                                lock_dir.join(&file_name).display()
                            ))
                        } else if request.name == name && request.action == action {
                            Ok(request)
                        } else {
                            Err(format!(
                                "{} names {} {}, not what its file name says",
                                lock_dir.join(&file_name).display(),
                                request.action.as_str(),
                                request.name
                            ))
                        }
                    }),
            ),
        }
    }

    /// Removes the request file (acted on, or cleared).
    pub fn remove(lock_dir: &Path, name: &str, action: Action) -> io::Result<()> {
        entry::remove_file_entry(lock_dir, &ControlRequest::file_name(name, action))
    }
}

/// A component's supervision state, as the orchestrator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Supervision {
    /// Not part of what this orchestrator started (`--only`), and not asked for since.
    NotStarted,
    /// Being started, or waiting for its watchdog to be running (a brain).
    Starting,
    Running,
    /// Exited; it will be started again after a backoff.
    Restarting,
    /// Stopped on request, or exited cleanly where its restart policy says to leave it.
    Stopped,
    /// Failed too often (or could not start with `restart = "never"`): not restarted
    /// until someone starts it again.
    GivenUp,
    /// A brain held back because its watchdog is not running (DESIGN.md rule 13).
    Blocked,
    /// `[cluster]`: another host holds its key; it starts here as soon as the key is
    /// free (a brain stands by with its watchdog).
    Standby,
    /// It runs, and said it is not ready (`not-ready <reason>` on its notify channel):
    /// a watchdog holds its brain back meanwhile.
    NotReady,
    /// It missed its heartbeat, or was not ready within `ready_timeout_secs`: it is
    /// stopped and restarted like a crash (a watchdog's brain first), and shown so
    /// until it is ready again.
    Hung,
}

impl Supervision {
    pub fn as_str(self) -> &'static str {
        match self {
            Supervision::NotStarted => "not_started",
            Supervision::Starting => "starting",
            Supervision::Running => "running",
            Supervision::Restarting => "restarting",
            Supervision::Stopped => "stopped",
            Supervision::GivenUp => "given_up",
            Supervision::Blocked => "blocked",
            Supervision::Standby => "standby",
            Supervision::NotReady => "not_ready",
            Supervision::Hung => "hung",
        }
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It runs.
    Done,
    /// It could not be started (the detail says why).
    Failed,
    /// Something else holds its lock or runs a copy of it.
    Refused,
}

/// One answer to a control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// One component in the orchestrator's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Supervised {
    pub name: String,
    pub state: Supervision,
    /// The running child, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Unix seconds since when it is in this state.
    pub since: f64,
    /// The state in plain words: who stopped it and when, why it was given up, when
    /// the next attempt is.
    pub reason: String,
    /// Unix seconds of its last word on its notify channel (`ready`, `alive`,
    /// `not-ready`) in this run; refreshed in the view at most about once a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive_at: Option<f64>,
    /// `heartbeat_secs`: how often it must say `alive` once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<Answer>,
}

/// The orchestrator's published view: `MASTER_LAUNCH.state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeskState {
    /// The orchestrator that wrote it.
    pub orchestrator: ProcessIdentity,
    /// Unix seconds.
    pub updated_at: f64,
    /// In start order.
    pub components: Vec<Supervised>,
}

impl DeskState {
    /// Replaces the published view, whole. Something else at its name (a link, a
    /// FIFO, a folder) was not written by the tools and is left alone (DESIGN.md
    /// rule 12): the view is then not published.
    pub fn write(&self, lock_dir: &Path) -> io::Result<()> {
        let path = lock_dir.join(STATE_FILE);
        if let Ok(metadata) = std::fs::symlink_metadata(&path)
            && !metadata.file_type().is_file()
        {
            return Err(io::Error::other(format!(
                "{} is not a regular file; it is left alone and the desk's state is not \
                 published there until it is removed",
                path.display()
            )));
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        entry::write_whole(lock_dir, STATE_FILE, &bytes, Existing::Replace).map(|_| ())
    }

    /// The published view, if there is one: `Err` says why the file cannot be used.
    pub fn read(lock_dir: &Path) -> Option<Result<DeskState, String>> {
        match entry::read_object_within(lock_dir, STATE_FILE, MAX_VIEW_BYTES) {
            EntryRead::Nothing => None,
            EntryRead::Unreadable(why) => Some(Err(why)),
            EntryRead::Object(fields) => Some(
                serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| {
                    format!(
                        "{} is not a desk state: {e}",
                        lock_dir.join(STATE_FILE).display()
                    )
                }),
            ),
        }
    }

    /// The view of the orchestrator that holds `master` (the `MASTER_LAUNCH` lock) now;
    /// `None` when no orchestrator runs or the view is an older one's.
    pub fn read_current(lock_dir: &Path, master: &LockStatus) -> Option<DeskState> {
        let record = master.record.as_ref()?;
        if master.state != LockState::Running {
            return None;
        }
        let state = DeskState::read(lock_dir)?.ok()?;
        let by_holder = state.orchestrator.pid == record.pid
            && record
                .pid_start
                .is_none_or(|start| same_start(start, state.orchestrator.start_time));
        by_holder.then_some(state)
    }

    /// Removes the view `orchestrator` published (it is ending). A file there that it
    /// did not write (another orchestrator's, or anyone's) is left alone (DESIGN.md
    /// rule 12).
    pub fn remove_own(lock_dir: &Path, orchestrator: ProcessIdentity) -> io::Result<()> {
        match DeskState::read(lock_dir) {
            Some(Ok(state)) if state.orchestrator == orchestrator => {
                entry::remove_file_entry(lock_dir, STATE_FILE)
            }
            _ => Ok(()),
        }
    }

    pub fn component(&self, name: &str) -> Option<&Supervised> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The view left behind by an orchestrator that is gone (killed outright, so it
    /// could not remove it), if there is one: what `lock-gc` removes. A view whose
    /// writer still runs, or a file that is not a view, is never one.
    pub fn stale(lock_dir: &Path, probe: &mut ProcessProbe) -> Option<DeskState> {
        let state = DeskState::read(lock_dir)?.ok()?;
        (!probe.is_alive(state.orchestrator)).then_some(state)
    }

    /// Removes the view if it is [`DeskState::stale`], checked again just before.
    pub fn remove_stale(
        lock_dir: &Path,
        probe: &mut ProcessProbe,
    ) -> io::Result<Option<DeskState>> {
        match DeskState::stale(lock_dir, probe) {
            Some(state) => {
                entry::remove_file_entry(lock_dir, STATE_FILE)?;
                Ok(Some(state))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessIdentity {
        ProcessIdentity {
            pid: std::process::id(),
            start_time: 1,
        }
    }

    #[test]
    fn a_second_equal_request_joins_the_pending_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = ControlRequest::new("BRAIN_X", Action::Start, me());
        let second = ControlRequest::new("BRAIN_X", Action::Start, me());
        assert_ne!(first.id, second.id);
        let patience = Duration::from_millis(100);
        assert_eq!(
            first.place(dir.path(), patience).unwrap(),
            Placed::Ours(first.id.clone())
        );
        assert_eq!(
            second.place(dir.path(), patience).unwrap(),
            Placed::Joined(first.id.clone())
        );
        let restart = ControlRequest::new("BRAIN_X", Action::Restart, me());
        assert_eq!(
            restart.place(dir.path(), patience).unwrap(),
            Placed::Ours(restart.id.clone())
        );
        assert_eq!(
            ControlRequest::read(dir.path(), "BRAIN_X", Action::Start),
            Some(Ok(first))
        );
        ControlRequest::remove(dir.path(), "BRAIN_X", Action::Start).unwrap();
        assert_eq!(
            ControlRequest::read(dir.path(), "BRAIN_X", Action::Start),
            None
        );
    }

    #[test]
    fn garbage_at_a_request_name_is_reported_and_waited_out_not_joined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("BRAIN_X.start"), b"{\"name\": 5}").unwrap();
        let read = ControlRequest::read(dir.path(), "BRAIN_X", Action::Start).unwrap();
        assert!(read.unwrap_err().contains("BRAIN_X.start"));
        let request = ControlRequest::new("BRAIN_X", Action::Start, me());
        let error = request
            .place(dir.path(), Duration::from_millis(200))
            .unwrap_err();
        assert!(error.to_string().contains("BRAIN_X.start"), "{error}");
        // A request naming another component is not taken for this one.
        let other = ControlRequest::new("BRAIN_Y", Action::Start, me());
        std::fs::write(
            dir.path().join("BRAIN_Z.start"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert!(
            ControlRequest::read(dir.path(), "BRAIN_Z", Action::Start)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn the_view_counts_only_for_the_orchestrator_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = DeskState {
            orchestrator: ProcessIdentity {
                pid: 42,
                start_time: 1000,
            },
            updated_at: 1.5,
            components: vec![Supervised {
                alive_at: None,
                heartbeat_secs: None,
                name: "BRAIN_X".into(),
                state: Supervision::GivenUp,
                pid: None,
                since: 1.0,
                reason: "gave up".into(),
                answers: vec![],
            }],
        };
        state.write(dir.path()).unwrap();
        assert_eq!(DeskState::read(dir.path()), Some(Ok(state.clone())));
        let record = |pid| crate::record::LockRecord {
            pid,
            name: "MASTER_LAUNCH".into(),
            account: None,
            timestamp: None,
            pid_start: Some(1000),
            holder_pid: Some(pid),
            holder_start: Some(1000),
            host: None,
            command: vec![],
        };
        let master = |state, pid| LockStatus {
            name: "MASTER_LAUNCH".into(),
            path: dir.path().join("MASTER_LAUNCH.lock"),
            state,
            record: Some(record(pid)),
            detail: String::new(),
        };
        assert!(DeskState::read_current(dir.path(), &master(LockState::Running, 42)).is_some());
        assert!(DeskState::read_current(dir.path(), &master(LockState::Stale, 42)).is_none());
        assert!(DeskState::read_current(dir.path(), &master(LockState::Running, 43)).is_none());
        let other = ProcessIdentity {
            pid: 42,
            start_time: 999,
        };
        DeskState::remove_own(dir.path(), other).unwrap();
        assert!(
            DeskState::read(dir.path()).is_some(),
            "removed another's view"
        );
        DeskState::remove_own(dir.path(), state.orchestrator).unwrap();
        assert_eq!(DeskState::read(dir.path()), None);
        std::fs::write(dir.path().join(STATE_FILE), b"not ours").unwrap();
        DeskState::remove_own(dir.path(), state.orchestrator).unwrap();
        assert!(
            dir.path().join(STATE_FILE).exists(),
            "removed a file it did not write"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_link_or_fifo_at_the_views_name_is_never_written_through_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        std::os::unix::fs::symlink(&victim, locks.join(STATE_FILE)).unwrap();
        let state = DeskState {
            orchestrator: me(),
            updated_at: 0.0,
            components: vec![],
        };
        let error = state.write(&locks).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(
            std::fs::symlink_metadata(locks.join(STATE_FILE))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(DeskState::read(&locks), None, "a link is no view");
        DeskState::remove_own(&locks, me()).unwrap();
        assert!(
            std::fs::symlink_metadata(locks.join(STATE_FILE)).is_ok(),
            "removed a link"
        );
        // A FIFO at a request's name: no request, never blocks, placing gives up.
        let fifo = locks.join("BRAIN_X.start");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(ControlRequest::read(&locks, "BRAIN_X", Action::Start), None);
        let error = ControlRequest::new("BRAIN_X", Action::Start, me())
            .place(&locks, Duration::from_millis(200))
            .unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        ControlRequest::remove(&locks, "BRAIN_X", Action::Start).unwrap();
        assert!(std::fs::symlink_metadata(&fifo).is_ok(), "removed a FIFO");
    }
}
