//! Stop, start and restart requests, in order: taken only while no stop of the
//! component (or of a brain of a watchdog) runs; answered from the states.

use super::*;

impl Desk {
    /// Whether requests for this unit are taken now. Requests in order: not while it is
    /// being stopped, nor, for a watchdog, while one of its brains is: a watchdog is
    /// never stopped before its brain has stopped (a request waits in the lock dir).
    pub fn takes_requests(&self, index: usize) -> bool {
        !self.units[index].state.stopping()
            && !self
                .units
                .iter()
                .any(|u| u.spec.watchdog == Some(index) && u.state.stopping())
    }

    /// A stop request for one component: it is stopped (gracefully, forced at the
    /// request's deadline) and not restarted; a watchdog's brain is stopped first and
    /// held back (DESIGN.md rule 13). A component between restarts is stopped the same
    /// way: the pending restart is cancelled.
    pub(super) fn on_stop_request(
        &mut self,
        now: &Now,
        index: usize,
        requester: &str,
        grace: Grace,
        out: &mut Vec<Command>,
    ) {
        let name = self.units[index].name().to_string();
        let by = format!("{requester} at {}", now.clock());
        out.push(Command::Say(Note::StopRequested {
            name: name.clone(),
            requester: requester.to_string(),
        }));
        let stopped = Shown::new(Supervision::Stopped, format!("stopped on request by {by}"));
        let unit = &mut self.units[index];
        unit.wanted = false;
        if let State::Stopping(stopping) = &mut unit.state {
            stopping.restart = false;
        }
        unit.answer_all(
            AnswerOutcome::Failed,
            &format!("stopped on request by {by}"),
        );
        if !unit.state.supervised() {
            // Not started yet (a brain waiting for its watchdog, a standby): its lock
            // goes, its key's watch ends.
            if std::mem::take(&mut unit.first_lock) {
                out.push(Command::DropLock(index));
            }
            if matches!(unit.state, State::StandingBy(_)) {
                out.push(Command::EndStandby(index));
            }
            unit.state = State::Idle(stopped);
            out.push(Command::RemoveStopRequest(index));
            return;
        }
        let held_back = Shown::new(
            Supervision::Stopped,
            format!("held back: its watchdog {name} was stopped on request by {by}"),
        );
        let brains = self.brains_of(index);
        let mut targets = vec![(index, stopped, false)];
        targets.extend(brains.into_iter().map(|b| (b, held_back.clone(), false)));
        self.stop(targets, grace, Some(index), out);
    }

    /// Start and restart requests: acted on once each (a requester that has died is
    /// not served: answered failed, for another requester that joined it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_request(
        &mut self,
        now: &Now,
        index: usize,
        action: Action,
        id: String,
        requester: String,
        alive: bool,
        out: &mut Vec<Command>,
    ) {
        let name = self.units[index].name().to_string();
        if !alive {
            out.push(Command::Say(Note::RequesterGone {
                name,
                action,
                requester: requester.clone(),
            }));
            self.units[index].answer(
                id,
                AnswerOutcome::Failed,
                format!(
                    "not acted on: {requester}, which placed the request, has ended; ask again"
                ),
            );
            return;
        }
        out.push(Command::Say(Note::Requested {
            name,
            action,
            requester: requester.clone(),
        }));
        self.accept(now, index, action, id, &requester, out);
    }

    pub(super) fn accept(
        &mut self,
        now: &Now,
        index: usize,
        action: Action,
        id: String,
        requester: &str,
        out: &mut Vec<Command>,
    ) {
        let unit = &mut self.units[index];
        if action == Action::Start || !unit.state.supervised() {
            if let State::StandingBy(reason) = &unit.state {
                // Another host runs it: starting it here too is what the cluster forbids.
                let why = reason.clone();
                unit.answer(id, AnswerOutcome::Refused, why);
                return;
            }
            unit.waiting.push(Waiting { id, after: None });
            if !unit.wanted {
                unit.wanted = true;
                if !unit.state.supervised() {
                    unit.state = State::Idle(Shown::new(
                        Supervision::Starting,
                        format!("start requested by {requester}"),
                    ));
                }
            }
            return;
        }
        // A restart: stop it (its brains first, for a watchdog), then start it again.
        unit.waiting.push(Waiting {
            id,
            after: Some(now.at),
        });
        let name = unit.name().to_string();
        let mut targets = vec![(
            index,
            Shown::new(
                Supervision::Starting,
                format!("restart requested by {requester}"),
            ),
            true,
        )];
        for brain in self.brains_of(index) {
            let then = Shown::new(
                Supervision::Starting,
                format!("restarting with its watchdog {name}"),
            );
            targets.push((brain, then, self.units[brain].wanted));
        }
        self.stop(targets, Grace::Own, None, out);
    }

    /// Answers the requests of components that run (past [`SETTLE`], and for a restart
    /// a run that began after the request), or that will not run.
    pub(super) fn answer_requests(&mut self, now: &Now) {
        for unit in &mut self.units {
            if unit.waiting.is_empty() || unit.state.stopping() {
                continue;
            }
            let settled = unit.settled(now);
            let (since, pid) = match unit.state {
                State::Running { since, pid, .. } => (Some(since), pid),
                _ => (None, 0),
            };
            let gave_up = !unit.wanted && !unit.state.supervised();
            let reason = unit.state.shown().reason;
            let mut still = Vec::new();
            for waiting in std::mem::take(&mut unit.waiting) {
                let new_run = waiting.after.is_none_or(|t| since.is_some_and(|s| s > t));
                if settled && new_run {
                    unit.answer(
                        waiting.id,
                        AnswerOutcome::Done,
                        format!("running, pid {pid}"),
                    );
                } else if gave_up {
                    unit.answer(waiting.id, AnswerOutcome::Failed, reason.clone());
                } else {
                    still.push(waiting);
                }
            }
            unit.waiting = still;
        }
    }
}
