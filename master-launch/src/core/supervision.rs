//! What supervision reports and what a start came to: the component's state follows.

use super::*;

impl Desk {
    pub(super) fn on_report(
        &mut self,
        now: &Now,
        index: usize,
        report: Report,
        out: &mut Vec<Command>,
    ) {
        let unit = &mut self.units[index];
        match report {
            Report::Started { pid } => match &mut unit.state {
                State::Stopping(stopping) => stopping.shown = Shown::running(pid),
                state => {
                    *state = State::Running {
                        since: now.at,
                        pid,
                        health: Health::new(now, unit.spec.ready),
                    }
                }
            },
            Report::Said { pid, word } => self.on_said(now, index, pid, word, out),
            Report::Restarting {
                attempt,
                delay,
                last_exit,
            } => {
                let reason = format!(
                    "exited ({last_exit}); restart {attempt} in {:.1} s, at {}",
                    delay.as_secs_f64(),
                    now.clock_in(delay)
                );
                match &mut unit.state {
                    State::Stopping(stopping) => {
                        stopping.shown = Shown::new(Supervision::Restarting, reason);
                    }
                    state => {
                        *state = State::BackingOff {
                            attempt,
                            until: now.at + delay,
                            reason,
                        }
                    }
                }
                if !delay.is_zero() {
                    self.hold_back_brains_of(index, out);
                }
            }
            Report::Ended(outcome) => {
                if outcome != Outcome::Stopped {
                    // Given up or finished: it runs again only when someone starts it.
                    // (Who asked for a stop decided whether it should run again.)
                    unit.wanted = false;
                }
                let policy = policy(unit.spec.restart);
                let shown = match outcome {
                    Outcome::Stopped => match &mut unit.state {
                        State::Stopping(stopping) => stopping.then.take(),
                        _ => None,
                    }
                    .unwrap_or_else(|| Shown::new(Supervision::Stopped, "stopped")),
                    Outcome::Finished {
                        last_exit,
                        success: true,
                    } => Shown::new(
                        Supervision::Stopped,
                        format!(
                            "exited cleanly ({last_exit}) at {}; restart = {policy} leaves it \
                             stopped",
                            now.clock()
                        ),
                    ),
                    Outcome::Finished {
                        last_exit,
                        success: false,
                    } => Shown::new(
                        Supervision::GivenUp,
                        format!(
                            "exited ({last_exit}) at {}; restart = {policy} does not restart it",
                            now.clock()
                        ),
                    ),
                    Outcome::GaveUp {
                        failures,
                        last_exit,
                    } => Shown::new(
                        Supervision::GivenUp,
                        format!(
                            "given up after {failures} failure(s) within {} s; last: {last_exit}, \
                             at {}",
                            FAILURE_WINDOW.as_secs(),
                            now.clock()
                        ),
                    ),
                };
                unit.ended(shown);
            }
        }
    }

    pub(super) fn on_stop_ended(&mut self, indexes: &[usize]) {
        for &index in indexes {
            let unit = &mut self.units[index];
            let State::Stopping(stopping) = &mut unit.state else {
                continue;
            };
            // Its supervision reported its end before the stop ended (the stop joins it).
            let shown = stopping
                .then
                .take()
                .unwrap_or_else(|| stopping.shown.clone());
            if stopping.restart {
                unit.wanted = true;
            }
            unit.state = State::Idle(shown);
        }
    }

    /// The key a standby waited for is free: the next reconcile takes it (or, if
    /// another standby was quicker, stands by again).
    pub(super) fn on_key_free(&mut self, index: usize, out: &mut Vec<Command>) {
        let unit = &mut self.units[index];
        if let State::StandingBy(reason) = &unit.state {
            unit.state = State::Idle(Shown::new(Supervision::Standby, reason.clone()));
            out.push(Command::EndStandby(index));
            out.push(Command::Say(Note::KeyFree {
                name: unit.name().to_string(),
            }));
        }
    }

    /// How a start went.
    pub(super) fn on_begun(
        &mut self,
        now: &Now,
        index: usize,
        begun: Begun,
        out: &mut Vec<Command>,
    ) {
        self.starts_pending = self.starts_pending.saturating_sub(1);
        let unit = &mut self.units[index];
        let name = unit.name().to_string();
        let (shown, note, answer) = match begun {
            Begun::Supervising => return,
            Begun::StandingBy { reason } => {
                unit.answer_all(AnswerOutcome::Refused, &reason);
                out.push(Command::Say(Note::Standby {
                    name,
                    reason: reason.clone(),
                }));
                unit.state = State::StandingBy(reason);
                return;
            }
            Begun::WatchFailed { reason, why } => {
                unit.answer_all(AnswerOutcome::Refused, &reason);
                let shown = Shown::new(Supervision::GivenUp, format!("not started: {why}"));
                (shown, Some(Note::NotStarted { name, why }), None)
            }
            Begun::NoCluster { reason } => {
                unit.answer_all(AnswerOutcome::Refused, &reason);
                let shown = Shown::new(Supervision::NotStarted, format!("not started: {reason}"));
                (shown, None, None)
            }
            Begun::StopRequested { requester } => {
                let by = format!("{requester} at {}", now.clock());
                let why = format!("stopped on request by {by}");
                let shown = Shown::new(Supervision::Stopped, why.clone());
                let note = Note::StopBeforeStart { name, by };
                (shown, Some(note), Some((AnswerOutcome::Failed, why)))
            }
            Begun::NotTaken { outcome, why } => {
                let shown = Shown::new(Supervision::NotStarted, format!("not started: {why}"));
                let note = Note::NotStarted {
                    name,
                    why: why.clone(),
                };
                (shown, Some(note), Some((outcome, why)))
            }
            Begun::CannotStart { why } => {
                let shown = Shown::new(Supervision::GivenUp, format!("cannot start: {why}"));
                let note = Note::CannotStart {
                    name,
                    why: why.clone(),
                };
                (shown, Some(note), Some((AnswerOutcome::Failed, why)))
            }
        };
        out.extend(note.map(Command::Say));
        unit.wanted = false;
        if let Some((outcome, why)) = answer {
            unit.answer_all(outcome, &why);
        }
        unit.state = State::Idle(shown);
    }
}
