//! What happens on the desk, typed: the core says [`Note`]s, and the executor hands
//! each to its sinks (today the orchestrator's log, whose lines they print as before).

use std::fmt;

use lockcore::control::Action;

/// One thing that happened on the desk, as the orchestrator's log tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A stop request for one component was taken.
    StopRequested { name: String, requester: String },
    /// A brain is stopped because its watchdog backs off before a restart (rule 13).
    BrainHeldBack { brain: String, watchdog: String },
    /// A brain is stopped because its watchdog is down (rule 13).
    BrainStopped { brain: String, reason: String },
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
        }
    }
}
