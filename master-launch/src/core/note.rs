//! What happens on the desk, typed: the core and its executor say [`Note`]s, and each
//! goes to a [`Sink`]: the orchestrator's log and its stdout, in the words it always
//! printed, and (`crate::events::Events`) the event log and the alert commands.

use std::fmt;
use std::time::Duration;

use lockcore::config::MASTER_LOCK_NAME;
use lockcore::control::Action;
use lockcore::logs::Log;

/// Where notes go.
pub trait Sink {
    fn note(&self, note: &Note);
}

/// The orchestrator's log (and stdout): each line of a note, stamped.
impl Sink for Log {
    fn note(&self, note: &Note) {
        for line in note.to_string().lines() {
            self.line("", line);
        }
    }
}

/// One thing that happened on the desk, as the orchestrator's log tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A stop request for one component was taken.
    StopRequested { name: String, requester: String },
    /// A brain is stopped because its watchdog backs off before a restart (rule 13).
    BrainHeldBack { brain: String, watchdog: String },
    /// A brain is stopped because its watchdog is down (rule 13).
    BrainStopped { brain: String, reason: String },
    /// It said `ready` (rule 15: a watchdog guards from now on).
    Ready {
        name: String,
        pid: u32,
        after: Duration,
    },
    /// It said `not-ready <reason>`.
    NotReady {
        name: String,
        pid: u32,
        reason: String,
    },
    /// It missed its heartbeat or was not ready in time: its run is ended and
    /// restarted like a crash (a watchdog's brains first).
    Hung { name: String, pid: u32, why: String },
    /// `[cluster]`: the key a standby waited for is free.
    KeyFree { name: String },
    /// A start or restart request whose requester has ended was cleared.
    RequesterGone {
        name: String,
        action: Action,
        requester: String,
    },
    /// A start or restart request was taken.
    Requested {
        name: String,
        action: Action,
        requester: String,
    },
    /// `[cluster]`: it stands by (another host holds its key, or its watchdog's).
    Standby { name: String, reason: String },
    /// A start was refused or failed before supervision began.
    NotStarted { name: String, why: String },
    /// `[cluster]`: a stop request for it stands in etcd, so it was not started.
    StopBeforeStart { name: String, by: String },
    /// Supervision could not begin (its log cannot be opened).
    CannotStart { name: String, why: String },
    /// The first start is complete.
    DeskStarted { started: usize, standing_by: usize },
    /// Every component is disabled in the config.
    NothingToSupervise,
    /// `[cluster]`: a stop request from another host became a `<NAME>.stop` here.
    StopRelayed { name: String, requester: String },
    /// `[cluster]`: something about relaying stop requests, in words.
    Relay { what: String },
    /// A stop request that cannot be read still means stop (`name`: with its own timeout;
    /// `None`: stop all).
    UnreadableStop { name: Option<String>, why: String },
    /// `MASTER_LAUNCH.stop`: the whole desk stops.
    StopAllRequested { requester: String },
    /// A start or restart request that could not be used was removed.
    UnusableRequest { why: String },
    /// The view could not be written (said once per reason).
    CannotPublish { why: String },
    /// A held lock's file was deleted or replaced and has been taken again.
    LockRetaken {
        name: String,
        path: String,
        retaken: String,
    },
    /// A held lock is no longer ours.
    LockLost { lost: String },
    /// `MASTER_LAUNCH.lock` was acquired afresh (`Ok`), or could not be (`Err`).
    MasterLockAgain(Result<(), String>),
    /// Supervision of a component ended in a desk stop.
    StoppedAs { name: String, outcome: &'static str },
    /// A component did not stop within its grace and was forced.
    Forced { name: String, how: String },
    // Said by supervision threads (`crate::supervisor`), in the words they always logged.
    /// Its process was started.
    Started { name: String, pid: u32 },
    /// Its process exited (`how`: `code 3`, `signal 9`; `tree`: what it left).
    Exited {
        name: String,
        pid: u32,
        how: String,
        tree: String,
    },
    /// It starts again after `delay` (it last exited so).
    Restarting {
        name: String,
        delay: Duration,
        last_exit: String,
    },
    /// It exited and its restart policy leaves it stopped.
    NotRestarted { name: String, policy: String },
    /// Supervision gave it up: `line` is the log's words, `fix` what a person does;
    /// `duplicate`: because a copy runs without its lock.
    GivenUp {
        name: String,
        failures: usize,
        last_exit: String,
        line: String,
        fix: String,
        duplicate: bool,
    },
    /// `[cluster]`: its lease cannot be renewed; `what` is done to it.
    Fencing {
        name: String,
        reason: String,
        what: String,
    },
    /// The desk stops, in order.
    DeskStopping,
    /// The desk has stopped.
    DeskStopped,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::StopRequested { name, requester } => write!(
                f,
                "{name}: stop requested by {requester}; it will not be restarted"
            ),
            Note::BrainHeldBack { brain, watchdog } => write!(
                f,
                "{brain}: stopping it: its watchdog {watchdog} is backing off before a restart \
                 (a brain never trades unguarded); it starts again once {watchdog} runs"
            ),
            Note::Ready { name, pid, after } => write!(
                f,
                "{name}: ready (pid {pid}, {} ms after its start)",
                after.as_millis()
            ),
            Note::NotReady { name, pid, reason } => {
                write!(f, "{name}: NOT READY (pid {pid}): {reason}")
            }
            Note::Hung { name, pid, why } => write!(
                f,
                "{name}: HUNG (pid {pid}): {why}; stopping it (gracefully, then forced) to \
                 restart it like a crash"
            ),
            Note::BrainStopped { brain, reason } => write!(
                f,
                "{brain}: stopping it: {reason} (a brain never trades unguarded)"
            ),
            Note::KeyFree { name } => write!(f, "{name}: its key is free: taking it"),
            Note::RequesterGone {
                name,
                action,
                requester,
            } => write!(
                f,
                "{name}: cleared a {} request of {requester}, which has ended",
                action.as_str()
            ),
            Note::Requested {
                name,
                action,
                requester,
            } => write!(f, "{name}: {} requested by {requester}", action.as_str()),
            Note::Standby { name, reason } => write!(f, "{name}: {reason}"),
            Note::NotStarted { name, why } => write!(f, "{name}: not started: {why}"),
            Note::StopBeforeStart { name, by } => {
                write!(f, "{name}: not started: a stop was requested by {by}")
            }
            Note::CannotStart { name, why } => write!(f, "{name}: cannot start: {why}"),
            Note::DeskStarted {
                started,
                standing_by,
            } => {
                write!(f, "desk started: {started} processes")?;
                if *standing_by > 0 {
                    write!(f, ", {standing_by} standing by for another host")?;
                }
                write!(f, "; Ctrl+C stops it")
            }
            Note::NothingToSupervise => write!(
                f,
                "nothing to supervise: every component is disabled in fleet.toml"
            ),
            Note::StopRelayed { name, requester } => write!(
                f,
                "{name}: stop request from {requester} relayed into the lock dir"
            ),
            Note::Relay { what } => write!(f, "{what}"),
            Note::UnreadableStop {
                name: Some(name),
                why,
            } => write!(f, "{name}: {why}; stopping with its own stop timeout"),
            Note::UnreadableStop { name: None, why } => {
                write!(f, "{why}; it still means: stop all")
            }
            Note::StopAllRequested { requester } => {
                write!(f, "stop-all requested by {requester}")
            }
            Note::UnusableRequest { why } => write!(f, "cleared an unusable request: {why}"),
            Note::CannotPublish { why } => write!(f, "cannot publish the desk's state: {why}"),
            Note::LockRetaken {
                name,
                path,
                retaken,
            } => write!(
                f,
                "LOCK LOST: lock file {path} was deleted or replaced while {name} held it\n\
                 {name}: lock taken again: {retaken}"
            ),
            Note::LockLost { lost } => write!(f, "LOCK LOST: {lost}"),
            Note::MasterLockAgain(Ok(())) => write!(f, "{MASTER_LOCK_NAME}: lock taken again"),
            Note::MasterLockAgain(Err(why)) => {
                write!(f, "{MASTER_LOCK_NAME}: cannot take it again: {why}")
            }
            Note::StoppedAs { name, outcome } => write!(f, "{name}: stopped ({outcome})"),
            Note::Forced { name, how } => write!(f, "{name}: did not stop in time; {how}"),
            Note::Started { name, pid } => write!(f, "{name}: started, pid {pid}"),
            Note::Exited {
                name, how, tree, ..
            } => write!(f, "{name}: exited ({how}){tree}"),
            Note::Restarting { name, delay, .. } => {
                write!(f, "{name}: restarting in {} ms", delay.as_millis())
            }
            Note::NotRestarted { name, policy } => {
                write!(f, "{name}: not restarted (restart = {policy})")
            }
            Note::GivenUp { line, .. } => write!(f, "{line}"),
            Note::Fencing { name, reason, what } => write!(
                f,
                "{name}: SELF-FENCING: {reason}; {what} before its lease can end"
            ),
            Note::DeskStopping => {
                write!(f, "stopping the desk: brains, then watchdogs, then globals")
            }
            Note::DeskStopped => write!(f, "desk stopped; all locks released"),
        }
    }
}
