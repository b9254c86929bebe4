//! The desk's history as data: `<log_dir>/events.jsonl`, one JSON object per line
//! ([`DeskEvent`]), written by master-launch beside its human log and rotated like it
//! ([`crate::logs`]); read back by `check-procs --events` ([`read_history`]) and sent
//! to `[[alert]]` commands. [`EVENT_FIELDS`] and [`EventKind::ALL`] are the schema in
//! words, docs/reference.md's tables (`cargo xtask docs`); tests hold them to the type.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The event log's file name in the log dir.
pub const EVENTS_FILE: &str = "events.jsonl";

/// The event log of a log dir.
pub fn events_path(log_dir: &Path) -> PathBuf {
    log_dir.join(EVENTS_FILE)
}

/// What happened, in one word (snake_case in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DeskStarted,
    DeskStopping,
    DeskStopped,
    Started,
    Ready,
    NotReady,
    Hung,
    Exited,
    Restarting,
    NotRestarted,
    GivenUp,
    Duplicate,
    HeldBack,
    StopRequested,
    Requested,
    NotStarted,
    Stopped,
    Forced,
    Survived,
    LockLost,
    Standby,
    TookOver,
    Fenced,
    AlertFailed,
    AlertTest,
    Notice,
}

impl EventKind {
    /// Every kind, in the order docs/reference.md lists them.
    pub const ALL: [EventKind; 26] = [
        EventKind::DeskStarted,
        EventKind::DeskStopping,
        EventKind::DeskStopped,
        EventKind::Started,
        EventKind::Ready,
        EventKind::NotReady,
        EventKind::Hung,
        EventKind::Exited,
        EventKind::Restarting,
        EventKind::NotRestarted,
        EventKind::GivenUp,
        EventKind::Duplicate,
        EventKind::HeldBack,
        EventKind::StopRequested,
        EventKind::Requested,
        EventKind::NotStarted,
        EventKind::Stopped,
        EventKind::Forced,
        EventKind::Survived,
        EventKind::LockLost,
        EventKind::Standby,
        EventKind::TookOver,
        EventKind::Fenced,
        EventKind::AlertFailed,
        EventKind::AlertTest,
        EventKind::Notice,
    ];

    /// The kinds an `[[alert]]` gets when it names none: the ones that need a person.
    pub const NEEDS_A_PERSON: [EventKind; 9] = [
        EventKind::GivenUp,
        EventKind::Hung,
        EventKind::NotReady,
        EventKind::Duplicate,
        EventKind::Survived,
        EventKind::LockLost,
        EventKind::Fenced,
        EventKind::TookOver,
        EventKind::AlertFailed,
    ];

    /// Its name in JSON and in fleet.toml (`given_up`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeskStarted => "desk_started",
            EventKind::DeskStopping => "desk_stopping",
            EventKind::DeskStopped => "desk_stopped",
            EventKind::Started => "started",
            EventKind::Ready => "ready",
            EventKind::NotReady => "not_ready",
            EventKind::Hung => "hung",
            EventKind::Exited => "exited",
            EventKind::Restarting => "restarting",
            EventKind::NotRestarted => "not_restarted",
            EventKind::GivenUp => "given_up",
            EventKind::Duplicate => "duplicate",
            EventKind::HeldBack => "held_back",
            EventKind::StopRequested => "stop_requested",
            EventKind::Requested => "requested",
            EventKind::NotStarted => "not_started",
            EventKind::Stopped => "stopped",
            EventKind::Forced => "forced",
            EventKind::Survived => "survived",
            EventKind::LockLost => "lock_lost",
            EventKind::Standby => "standby",
            EventKind::TookOver => "took_over",
            EventKind::Fenced => "fenced",
            EventKind::AlertFailed => "alert_failed",
            EventKind::AlertTest => "alert_test",
            EventKind::Notice => "notice",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// What it means, for docs/reference.md's table. A new kind does not compile without it.
    pub fn meaning(self) -> &'static str {
        match self {
            EventKind::DeskStarted => "master-launch's first start is complete",
            EventKind::DeskStopping => {
                "the desk is stopping (a signal, Ctrl+C or a stop-all request)"
            }
            EventKind::DeskStopped => "the desk has stopped and every lock is released",
            EventKind::Started => "a component's process was started (`pid`)",
            EventKind::Ready => "it said `ready` (rule 15)",
            EventKind::NotReady => {
                "it said `not-ready` (`reason`); a watchdog's brains are held back *(alert)*"
            }
            EventKind::Hung => {
                "no heartbeat, or not ready in time (`reason`): its run is ended like a crash \
                 *(alert)*"
            }
            EventKind::Exited => "its process exited (`exit`: `code 3`, `signal 9`, ...)",
            EventKind::Restarting => "it starts again after `delay_ms`",
            EventKind::NotRestarted => {
                "it exited and its restart policy does not restart it (then `stopped` after a \
                 clean exit, `given_up` after a failure)"
            }
            EventKind::GivenUp => {
                "supervision gave it up (`failures`, `exit`: the last exit, `fix`) *(alert)*"
            }
            EventKind::Duplicate => {
                "a copy runs without its lock (started by hand): not restarted beside it \
                 (`reason` names the pid and command line, `fix`) *(alert)*"
            }
            EventKind::HeldBack => {
                "a brain stopped or held back because its watchdog is down or backing off \
                 (`reason`)"
            }
            EventKind::StopRequested => {
                "a stop was requested (`by`); no `component`: the whole desk"
            }
            EventKind::Requested => "a start or restart was requested (`reason`, `by`)",
            EventKind::NotStarted => "a start was refused or failed (`reason`)",
            EventKind::Stopped => {
                "it stopped: its supervision ended in a stop, or safe-shutdown stopped it \
                 (`reason`: how; `by`: safe-shutdown)"
            }
            EventKind::Forced => "it did not stop in time and was forced (`reason`)",
            EventKind::Survived => {
                "safe-shutdown (or `--replace`) ended with processes still running (`reason` \
                 names them, `fix`) *(alert)*"
            }
            EventKind::LockLost => {
                "a held lock file was deleted or replaced (`reason`: taken again or lost) \
                 *(alert)*"
            }
            EventKind::Standby => "`[cluster]`: it stands by for another host (`reason`)",
            EventKind::TookOver => {
                "`[cluster]`: the key a standby waited for is free; this host takes it *(alert)*"
            }
            EventKind::Fenced => {
                "`[cluster]`: the lease could not be renewed; the process is stopped before \
                 it can end (`reason`) *(alert)*"
            }
            EventKind::AlertFailed => {
                "an `[[alert]]` command failed, hung (killed at its timeout) or was dropped \
                 (`reason`) *(alert, to the other alert commands)*"
            }
            EventKind::AlertTest => "`master-launch alert-test`: a sample, never logged",
            EventKind::Notice => "anything else the orchestrator's log says (`message`)",
        }
    }
}

/// One event: a line of `events.jsonl`, and what an alert command reads on stdin.
/// Every field is always present (`null` when it does not apply); a reader ignores
/// fields it does not know, so that fields can be added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskEvent {
    pub at: String,
    pub kind: EventKind,
    pub component: Option<String>,
    pub account: Option<String>,
    pub pid: Option<u32>,
    pub exit: Option<String>,
    pub delay_ms: Option<u64>,
    pub failures: Option<u64>,
    pub reason: Option<String>,
    pub by: Option<String>,
    pub fix: Option<String>,
    pub covers: Option<u64>,
    pub message: String,
}

impl DeskEvent {
    /// An event of this kind now, with only `message` set.
    pub fn new(kind: EventKind, message: impl Into<String>) -> DeskEvent {
        DeskEvent {
            at: now_rfc3339(),
            kind,
            component: None,
            account: None,
            pid: None,
            exit: None,
            delay_ms: None,
            failures: None,
            reason: None,
            by: None,
            fix: None,
            covers: None,
            message: message.into(),
        }
    }

    /// One line: `BRAIN_X (ACCOUNT): given_up: <message>`.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        if let Some(component) = &self.component {
            text.push_str(component);
            if let Some(account) = &self.account {
                text.push_str(&format!(" ({account})"));
            }
            text.push_str(": ");
        }
        text.push_str(self.kind.as_str());
        text.push_str(": ");
        let first = self.message.lines().next().unwrap_or_default();
        text.push_str(first);
        text
    }

    /// When it happened, if `at` can be read.
    pub fn time(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(&self.at).ok()
    }
}

/// Now, as `at` says it: RFC 3339, local time with its offset, milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// One field of [`DeskEvent`], for docs/reference.md's table.
#[derive(Debug, Clone, Copy)]
pub struct EventField {
    pub name: &'static str,
    pub kind: &'static str,
    pub meaning: &'static str,
}

const fn field(name: &'static str, kind: &'static str, meaning: &'static str) -> EventField {
    EventField {
        name,
        kind,
        meaning,
    }
}

/// Every field of an event line, in order (a test holds it to [`DeskEvent`]'s own).
pub const EVENT_FIELDS: &[EventField] = &[
    field(
        "at",
        "string",
        "when, RFC 3339 in local time with its offset (`2026-12-03T03:10:00.123+01:00`)",
    ),
    field("kind", "string", "what happened: one of the kinds below"),
    field(
        "component",
        "string or null",
        "the lock name (`BRAIN_ATLAS`); null for the desk as a whole",
    ),
    field(
        "account",
        "string or null",
        "its account; null for a global",
    ),
    field(
        "pid",
        "number or null",
        "its process, when one is concerned",
    ),
    field(
        "exit",
        "string or null",
        "how it exited (`code 3`, `signal 9`, `hung: ...`)",
    ),
    field("delay_ms", "number or null", "`restarting`: the delay"),
    field(
        "failures",
        "number or null",
        "`given_up`: failures within the window",
    ),
    field("reason", "string or null", "why, in words"),
    field(
        "by",
        "string or null",
        "who asked (`stop_requested`, `requested`)",
    ),
    field("fix", "string or null", "what a person should do"),
    field(
        "covers",
        "number or null",
        "alerts only: a storm coalesced into this one alert covers this many events",
    ),
    field(
        "message",
        "string",
        "the orchestrator's log line(s) for it, word for word",
    ),
];

/// What [`read_history`] found.
#[derive(Debug, Default)]
pub struct History {
    /// Every readable event, oldest first.
    pub events: Vec<DeskEvent>,
    /// Lines that are not an event (cut short by a crash, edited by hand).
    pub skipped: usize,
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
}

/// The longest line read as an event; longer ones are skipped.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Reads the event log of `log_dir`, rotated files first (oldest first). A file that
/// cannot be read is an error naming it; a line that is not an event is counted.
pub fn read_history(log_dir: &Path) -> Result<History, crate::path_error::PathError> {
    let mut history = History::default();
    for path in crate::logs::files_oldest_first(&events_path(log_dir)) {
        let file = std::fs::File::open(&path).map_err(crate::path_error::PathError::at(
            "read the event log",
            &path,
        ))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(crate::path_error::PathError::at(
                    "read the event log",
                    &path,
                ))?;
            if read == 0 {
                break;
            }
            if line.len() > MAX_LINE_BYTES && !line.ends_with(b"\n") {
                // Skip the rest of an over-long line.
                let mut rest = Vec::new();
                let _ = reader.read_until(b'\n', &mut rest);
                history.skipped += 1;
                continue;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<DeskEvent>(&line) {
                Ok(event) => history.events.push(event),
                Err(_) => history.skipped += 1,
            }
        }
        history.files.push(path);
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introspect::{enum_variants, struct_fields};

    #[test]
    fn the_documented_fields_and_kinds_are_the_types_own() {
        let documented: Vec<&str> = EVENT_FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(documented, struct_fields::<DeskEvent>());
        let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, enum_variants::<EventKind>());
        for kind in EventKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn an_event_line_has_every_field_and_reads_back() {
        let mut event = DeskEvent::new(EventKind::GivenUp, "BRAIN_X: GIVING UP\nmore");
        event.component = Some("BRAIN_X".into());
        event.account = Some("X".into());
        let line = serde_json::to_string(&event).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value.as_object().unwrap().len(), EVENT_FIELDS.len());
        assert_eq!(value["kind"], "given_up");
        assert!(value["pid"].is_null());
        assert_eq!(serde_json::from_str::<DeskEvent>(&line).unwrap(), event);
        assert!(event.time().is_some(), "{}", event.at);
        assert_eq!(event.summary(), "BRAIN_X (X): given_up: BRAIN_X: GIVING UP");
    }

    #[test]
    fn history_reads_rotated_files_oldest_first_and_counts_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = events_path(dir.path());
        let line = |n: u32| {
            let mut event = DeskEvent::new(EventKind::Started, format!("n{n}"));
            event.pid = Some(n);
            serde_json::to_string(&event).unwrap() + "\n"
        };
        std::fs::write(crate::logs::rotated(&path, 2), line(1)).unwrap();
        std::fs::write(
            crate::logs::rotated(&path, 1),
            line(2) + "{\"cut short\n" + "\n",
        )
        .unwrap();
        std::fs::write(&path, line(3) + "not json\n" + &line(4)).unwrap();
        let history = read_history(dir.path()).unwrap();
        let pids: Vec<u32> = history.events.iter().filter_map(|e| e.pid).collect();
        assert_eq!(pids, [1, 2, 3, 4]);
        assert_eq!(history.skipped, 2);
        assert_eq!(history.files.len(), 3);
    }
}
