//! Where the desk's notes go: the orchestrator's human log (and stdout), the event log
//! (`<log_dir>/events.jsonl`, one [`DeskEvent`] per line, `lockcore::events`) and the
//! `[[alert]]` commands ([`crate::alerts`], on threads of their own: saying a note
//! never waits for an alert).

use std::collections::HashMap;
use std::sync::Arc;

use lockcore::Fleet;
use lockcore::events::{DeskEvent, EventKind, events_path};
use lockcore::logs::Log;

use crate::alerts::Alerts;
use crate::core::{Note, Sink};

/// The orchestrator's sinks, shared by its threads.
#[derive(Debug, Clone)]
pub struct Events {
    log: Log,
    /// `events.jsonl`; `None` when it cannot be opened (said once in the log).
    journal: Option<Log>,
    alerts: Option<Arc<Alerts>>,
    /// Each component's account.
    accounts: Arc<HashMap<String, String>>,
}

impl Events {
    /// The desk's sinks: `log`, the event log beside it, and the fleet's alerts.
    pub fn new(log: Log, fleet: &Fleet) -> Events {
        let path = events_path(&fleet.log_dir);
        let journal = match Log::open_records(&path) {
            Ok(journal) => Some(journal.keeping(fleet.log_files_kept)),
            Err(e) => {
                log.line("", &format!("cannot write the event log: {e}"));
                None
            }
        };
        let accounts = fleet
            .components()
            .filter_map(|c| Some((c.lock_name.clone(), c.account.clone()?)))
            .collect();
        let mut events = Events {
            log,
            journal,
            alerts: None,
            accounts: Arc::new(accounts),
        };
        if !fleet.alerts.is_empty() {
            let alerts = Alerts::start(fleet, events.clone());
            events.alerts = Some(Arc::new(alerts));
        }
        events
    }

    /// A line in the human log only.
    pub fn line(&self, stream: &str, text: &str) {
        self.log.line(stream, text);
    }

    /// An event: a line of the event log, and an alert for the commands that want it.
    pub fn event(&self, event: DeskEvent) {
        self.record(&event);
        if let Some(alerts) = &self.alerts {
            alerts.send(event);
        }
    }

    /// An event in the event log only (what the alert threads say of themselves).
    pub fn record(&self, event: &DeskEvent) {
        if let Some(journal) = &self.journal
            && let Ok(line) = serde_json::to_string(event)
        {
            journal.record(&line);
        }
    }

    /// Lets the alert threads deliver what they hold (a coalesced storm), for at most
    /// `limit`; called once the desk has stopped.
    pub fn finish(&self, limit: std::time::Duration) {
        if let Some(alerts) = &self.alerts {
            alerts.finish(limit);
        }
    }

    fn account_of(&self, component: &str) -> Option<String> {
        self.accounts.get(component).cloned()
    }
}

impl Sink for Events {
    fn note(&self, note: &Note) {
        self.log.note(note);
        let mut event = event_of(note);
        if event.account.is_none()
            && let Some(component) = &event.component
        {
            event.account = self.account_of(component);
        }
        self.event(event);
    }
}

/// A note as an event: its kind, component and fields; `message` is its log text.
pub fn event_of(note: &Note) -> DeskEvent {
    let mut event = DeskEvent::new(EventKind::Notice, note.to_string());
    let mut set = |kind: EventKind, component: Option<&str>| {
        event.kind = kind;
        event.component = component.map(str::to_string);
    };
    match note {
        Note::StopRequested { name, requester } => {
            set(EventKind::StopRequested, Some(name));
            event.by = Some(requester.clone());
        }
        Note::BrainHeldBack { brain, watchdog } => {
            set(EventKind::HeldBack, Some(brain));
            event.reason = Some(format!("its watchdog {watchdog} is backing off"));
        }
        Note::BrainStopped { brain, reason } => {
            set(EventKind::HeldBack, Some(brain));
            event.reason = Some(reason.clone());
        }
        Note::Ready { name, pid, .. } => {
            set(EventKind::Ready, Some(name));
            event.pid = Some(*pid);
        }
        Note::NotReady { name, pid, reason } => {
            set(EventKind::NotReady, Some(name));
            event.pid = Some(*pid);
            event.reason = Some(reason.clone());
        }
        Note::Hung { name, pid, why } => {
            set(EventKind::Hung, Some(name));
            event.pid = Some(*pid);
            event.reason = Some(why.clone());
            event.fix = Some(format!(
                "see {name}'s log for why it stopped answering; it is restarted like a crash"
            ));
        }
        Note::KeyFree { name } => set(EventKind::TookOver, Some(name)),
        Note::Requested {
            name,
            action,
            requester,
        } => {
            set(EventKind::Requested, Some(name));
            event.reason = Some(action.as_str().to_string());
            event.by = Some(requester.clone());
        }
        Note::Standby { name, reason } => {
            set(EventKind::Standby, Some(name));
            event.reason = Some(reason.clone());
        }
        Note::NotStarted { name, why } | Note::CannotStart { name, why } => {
            set(EventKind::NotStarted, Some(name));
            event.reason = Some(why.clone());
        }
        Note::StopBeforeStart { name, by } => {
            set(EventKind::NotStarted, Some(name));
            event.reason = Some("a stop was requested".into());
            event.by = Some(by.clone());
        }
        Note::DeskStarted { .. } => set(EventKind::DeskStarted, None),
        Note::UnreadableStop { name, why } => {
            set(EventKind::StopRequested, name.as_deref());
            event.reason = Some(why.clone());
        }
        Note::StopAllRequested { requester } => {
            set(EventKind::StopRequested, None);
            event.by = Some(requester.clone());
        }
        Note::LockRetaken { name, retaken, .. } => {
            set(EventKind::LockLost, Some(name));
            event.reason = Some(format!("its lock file was deleted or replaced; {retaken}"));
        }
        Note::LockLost { lost } => {
            set(EventKind::LockLost, None);
            event.reason = Some(lost.clone());
        }
        Note::StoppedAs { name, outcome } => {
            set(EventKind::Stopped, Some(name));
            event.reason = Some((*outcome).to_string());
        }
        Note::Forced { name, how } => {
            set(EventKind::Forced, Some(name));
            event.reason = Some(how.clone());
        }
        Note::Started { name, pid } => {
            set(EventKind::Started, Some(name));
            event.pid = Some(*pid);
        }
        Note::Exited { name, pid, how, .. } => {
            set(EventKind::Exited, Some(name));
            event.pid = Some(*pid);
            event.exit = Some(how.clone());
        }
        Note::Restarting {
            name,
            delay,
            last_exit,
        } => {
            set(EventKind::Restarting, Some(name));
            event.delay_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            event.exit = Some(last_exit.clone());
        }
        Note::NotRestarted { name, policy } => {
            set(EventKind::NotRestarted, Some(name));
            event.reason = Some(format!("restart = {policy}"));
        }
        Note::GivenUp {
            name,
            failures,
            last_exit,
            fix,
            duplicate,
            ..
        } => {
            let kind = if *duplicate {
                EventKind::Duplicate
            } else {
                EventKind::GivenUp
            };
            set(kind, Some(name));
            event.failures = Some(*failures as u64);
            event.exit = Some(last_exit.clone());
            if *duplicate {
                event.reason = Some(last_exit.clone());
            }
            event.fix = Some(fix.clone());
        }
        Note::Fencing { name, reason, what } => {
            set(EventKind::Fenced, Some(name));
            event.reason = Some(format!("{reason}; {what}"));
        }
        Note::DeskStopping => set(EventKind::DeskStopping, None),
        Note::DeskStopped => set(EventKind::DeskStopped, None),
        Note::RequesterGone { name, .. } => set(EventKind::Notice, Some(name)),
        Note::StopRelayed { name, requester } => {
            set(EventKind::Notice, Some(name));
            event.by = Some(requester.clone());
        }
        Note::NothingToSupervise
        | Note::Relay { .. }
        | Note::UnusableRequest { .. }
        | Note::CannotPublish { .. }
        | Note::MasterLockAgain(_) => {}
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn notes_become_events_with_their_words_and_fields() {
        let note = Note::GivenUp {
            name: "BRAIN_X".into(),
            failures: 5,
            last_exit: "code 3".into(),
            line: "BRAIN_X: GIVING UP after 5 failures".into(),
            fix: "fix it".into(),
            duplicate: false,
        };
        let event = event_of(&note);
        assert_eq!(event.kind, EventKind::GivenUp);
        assert_eq!(event.component.as_deref(), Some("BRAIN_X"));
        assert_eq!(event.failures, Some(5));
        assert_eq!(event.exit.as_deref(), Some("code 3"));
        assert_eq!(event.fix.as_deref(), Some("fix it"));
        assert_eq!(event.message, "BRAIN_X: GIVING UP after 5 failures");
        let restarting = event_of(&Note::Restarting {
            name: "W".into(),
            delay: Duration::from_millis(250),
            last_exit: "signal 9".into(),
        });
        assert_eq!(restarting.kind, EventKind::Restarting);
        assert_eq!(restarting.delay_ms, Some(250));
        assert_eq!(restarting.message, "W: restarting in 250 ms");
        let exited = event_of(&Note::Exited {
            name: "W".into(),
            pid: 7,
            how: "code 1".into(),
            tree: String::new(),
        });
        assert_eq!(
            (exited.kind, exited.pid, exited.message.as_str()),
            (EventKind::Exited, Some(7), "W: exited (code 1)")
        );
    }
}
