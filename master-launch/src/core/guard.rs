//! DESIGN.md rule 13, a brain runs only while its watchdog runs, and the stops it
//! takes: reconciling in start order, holding brains back, stopping brains with (before)
//! their watchdog.

use super::*;

impl Desk {
    /// Brings what runs in line with what should, in start order (DESIGN.md rule 13:
    /// a brain starts only once its watchdog has run for [`SETTLE`], and is stopped
    /// when its watchdog is down and not coming back).
    pub(super) fn reconcile(&mut self, now: &Now, out: &mut Vec<Command>) {
        for index in 0..self.units.len() {
            let unit = &self.units[index];
            if matches!(unit.state, State::Stopping(_) | State::StandingBy(_)) {
                continue;
            }
            let watchdog = unit.spec.watchdog.map(|w| (w, &self.units[w]));
            match (unit.wanted, unit.state.supervised(), watchdog) {
                (true, false, Some((w, watchdog))) if !watchdog.settled(now) => {
                    let held = self.held_back(w);
                    let unit = &mut self.units[index];
                    if held.state != Supervision::Starting {
                        unit.answer_all(AnswerOutcome::Failed, &held.reason);
                        // Not while its watchdog is down: the first start's lock goes.
                        if std::mem::take(&mut unit.first_lock) {
                            out.push(Command::DropLock(index));
                        }
                    }
                    if held.state == Supervision::Standby
                        && unit.state.shown().state != Supervision::Standby
                    {
                        out.push(Command::Say(Note::Standby {
                            name: unit.name().to_string(),
                            reason: held.reason.clone(),
                        }));
                    }
                    unit.state = State::WaitingForWatchdog(held);
                }
                (true, false, _) => {
                    let unit = &mut self.units[index];
                    unit.first_lock = false;
                    unit.state = State::Starting;
                    self.starts_pending += 1;
                    out.push(Command::Start(index));
                }
                (_, true, Some((w, watchdog)))
                    if !watchdog.wanted
                        && !watchdog.state.supervised()
                        && !watchdog.state.stopping() =>
                {
                    // Its watchdog was given up (a stop request stops the brain first).
                    let held = self.held_back(w);
                    out.push(Command::Say(Note::BrainStopped {
                        brain: self.units[index].name().to_string(),
                        reason: held.reason.clone(),
                    }));
                    self.stop(vec![(index, held, false)], Grace::Own, None, out);
                }
                // DESIGN.md rule 15: its watchdog runs but does not guard (hung, not
                // ready): the brain is stopped and follows it once it is ready.
                (_, true, Some((w, _)))
                    if !self.units[index].state.stopping() && self.not_guarding(w).is_some() =>
                {
                    self.hold_back_brains(w, out);
                }
                _ => {}
            }
        }
    }

    /// What a brain that needs the watchdog at `index` is while the watchdog does not
    /// run (yet).
    pub(super) fn held_back(&self, index: usize) -> Shown {
        let watchdog = &self.units[index];
        let name = watchdog.name();
        let account = watchdog.spec.account.as_deref().unwrap_or("?");
        let shown = watchdog.state.shown();
        // A run that ended hung stays the reason until a new run says it is ready.
        let hung_before = watchdog
            .trouble
            .clone()
            .map(health::NotGuarding::Hung)
            .filter(|_| watchdog.wanted);
        let trouble = match self.not_guarding(index) {
            Some(health::NotGuarding::NotReadyYet) | None if hung_before.is_some() => hung_before,
            not_guarding => not_guarding,
        };
        match trouble {
            Some(health::NotGuarding::NotReadyYet) => {
                return Shown::new(
                    Supervision::Starting,
                    format!("waiting for its watchdog {name} to be ready"),
                );
            }
            Some(why) => {
                return Shown::new(
                    Supervision::Blocked,
                    format!("held back: its watchdog {name} {why}; it starts once {name} is ready"),
                );
            }
            None => {}
        }
        match &watchdog.state {
            // Its watchdog runs on another host: so does the brain (its key is not taken
            // here, so the host that runs the watchdog can take it).
            State::StandingBy(reason) => Shown::new(
                Supervision::Standby,
                format!("stands by with its watchdog {name}: {reason}"),
            ),
            state if watchdog.wanted || state.stopping() => Shown::new(
                Supervision::Starting,
                format!("waiting for its watchdog {name} to run"),
            ),
            _ if shown.state == Supervision::Stopped => Shown::new(
                Supervision::Stopped,
                format!(
                    "held back: its watchdog {name} is stopped ({}); `master-launch start \
                     --account {account}` starts both",
                    shown.reason
                ),
            ),
            _ => Shown::new(
                Supervision::Blocked,
                format!(
                    "held back: its watchdog {name} is {} ({}); `master-launch start --account \
                     {account}` starts both",
                    shown.state.as_str(),
                    shown.reason
                ),
            ),
        }
    }

    /// DESIGN.md rule 13: a watchdog that backs off before its restart (it failed
    /// again within a minute) leaves its positions unguarded for that long, so its
    /// running brains are stopped, gracefully, and held back; they stay wanted and
    /// follow the watchdog back once it has run for [`SETTLE`]. (The immediate first
    /// restart after a crash keeps the brain: the watchdog is back in milliseconds.)
    pub(super) fn hold_back_brains_of(&mut self, index: usize, out: &mut Vec<Command>) {
        let brains = self.brains_of(index);
        if brains.is_empty() {
            return;
        }
        let name = self.units[index].name().to_string();
        let held_back = Shown::new(
            Supervision::Starting,
            format!("held back: its watchdog {name} is restarting"),
        );
        for &brain in &brains {
            out.push(Command::Say(Note::BrainHeldBack {
                brain: self.units[brain].name().to_string(),
                watchdog: name.clone(),
            }));
        }
        let targets = brains
            .into_iter()
            .map(|b| (b, held_back.clone(), false))
            .collect();
        self.stop(targets, Grace::Own, None, out);
    }

    /// The supervised brains, not being stopped, that need the watchdog at `index`.
    pub(super) fn brains_of(&self, index: usize) -> Vec<usize> {
        (0..self.units.len())
            .filter(|&i| self.units[i].spec.watchdog == Some(index))
            .filter(|&i| self.units[i].state.supervised() && !self.units[i].state.stopping())
            .collect()
    }

    /// Starts a stop of these units: each with what it is once stopped and whether it
    /// starts again then. The stop engine stops brains before watchdogs.
    pub(super) fn stop(
        &mut self,
        targets: Vec<(usize, Shown, bool)>,
        grace: Grace,
        request: Option<usize>,
        out: &mut Vec<Command>,
    ) {
        let mut units = Vec::with_capacity(targets.len());
        for (index, then, restart) in targets {
            let unit = &mut self.units[index];
            unit.state = State::Stopping(Stopping {
                shown: unit.state.shown(),
                then: Some(then),
                restart,
                supervised: unit.state.supervised(),
            });
            units.push(index);
        }
        out.push(Command::Stop {
            units,
            grace,
            request,
        });
    }
}
