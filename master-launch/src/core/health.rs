//! DESIGN.md rule 15, a guard counts only while it guards: what a running child says
//! on its notify channel (`ready`, `alive`, `not-ready <reason>`), and the hangs found
//! on a tick (no heartbeat within `heartbeat_secs`, not ready within
//! `ready_timeout_secs`). A hung run is ended like a crash ([`Command::EndRun`]); a
//! hung watchdog's brains are stopped first, and its run ended only once they are.

use super::*;

impl Desk {
    /// A word from the child `pid` of a unit; a word from an earlier run (a late line
    /// on its old channel) is dropped.
    pub(super) fn on_said(
        &mut self,
        now: &Now,
        index: usize,
        pid: u32,
        word: Word,
        out: &mut Vec<Command>,
    ) {
        let unit = &mut self.units[index];
        let name = unit.spec.name.clone();
        let State::Running {
            since,
            pid: running,
            health,
        } = &mut unit.state
        else {
            return;
        };
        if *running != pid || health.hung.is_some() {
            return;
        }
        health.alive_at = now.at;
        health.alive_unix = Some(now.unix);
        match word {
            Word::Alive => {}
            Word::Ready => {
                if !health.ready || health.not_ready.is_some() {
                    out.push(Command::Say(Note::Ready {
                        name,
                        pid,
                        after: now.at.duration_since(*since),
                    }));
                }
                health.ready = true;
                health.not_ready = None;
                unit.trouble = None;
            }
            Word::NotReady(reason) => {
                if health.not_ready.as_ref() != Some(&reason) {
                    out.push(Command::Say(Note::NotReady {
                        name,
                        pid,
                        reason: reason.clone(),
                    }));
                }
                health.not_ready = Some(reason);
            }
        }
    }

    /// Finds the runs that are hung, and ends them: a watchdog's once none of its
    /// brains runs any more (they are stopped first, and held back until it is ready
    /// again).
    pub(super) fn check_health(&mut self, now: &Now, out: &mut Vec<Command>) {
        for index in 0..self.units.len() {
            let unit = &mut self.units[index];
            let (ready, heartbeat) = (unit.spec.ready, unit.spec.heartbeat);
            let State::Running {
                since, pid, health, ..
            } = &mut unit.state
            else {
                continue;
            };
            let pid = *pid;
            // Without `ready = "notify"`, a run that has settled and is not hung is
            // past an earlier run's hang.
            if !health.notify && health.hung.is_none() && now.at.duration_since(*since) >= SETTLE {
                unit.trouble = None;
            }
            if health.hung.is_none() {
                let why = hang(now, *since, health, ready, heartbeat);
                let Some(why) = why else { continue };
                health.hung = Some(why.clone());
                unit.trouble = Some(why.clone());
                out.push(Command::Say(Note::Hung {
                    name: unit.spec.name.clone(),
                    pid,
                    why,
                }));
            }
            let State::Running { health, .. } = &self.units[index].state else {
                continue;
            };
            if health.ending {
                continue;
            }
            if self.any_brain_runs(index) {
                self.hold_back_brains(index, out);
                continue;
            }
            let unit = &mut self.units[index];
            if let State::Running { health, .. } = &mut unit.state {
                health.ending = true;
                out.push(Command::EndRun {
                    unit: index,
                    pid,
                    why: health.hung.clone().unwrap_or_default(),
                });
            }
        }
    }

    /// A brain of the watchdog at `index` is supervised, or still being stopped.
    fn any_brain_runs(&self, index: usize) -> bool {
        self.units
            .iter()
            .any(|u| u.spec.watchdog == Some(index) && u.state.supervised())
    }

    /// Why the watchdog at `index` does not guard although it runs (hung, not ready,
    /// or, with `ready = "notify"`, not ready yet): its brains must not run.
    pub(super) fn not_guarding(&self, index: usize) -> Option<NotGuarding> {
        let watchdog = &self.units[index];
        let State::Running { health, .. } = &watchdog.state else {
            return None;
        };
        if let Some(why) = &health.hung {
            Some(NotGuarding::Hung(why.clone()))
        } else if let Some(reason) = &health.not_ready {
            Some(NotGuarding::NotReady(reason.clone()))
        } else if health.notify && !health.ready {
            Some(NotGuarding::NotReadyYet)
        } else {
            None
        }
    }

    /// Stops the running brains of the watchdog at `index`, which does not guard: they
    /// stay wanted and follow it once it is ready again.
    pub(super) fn hold_back_brains(&mut self, index: usize, out: &mut Vec<Command>) {
        let brains = self.brains_of(index);
        if brains.is_empty() {
            return;
        }
        let held = self.held_back(index);
        let watchdog = self.units[index].name().to_string();
        let why = self
            .not_guarding(index)
            .map_or_else(|| "does not guard".to_string(), |n| n.to_string());
        for &brain in &brains {
            out.push(Command::Say(Note::BrainStopped {
                brain: self.units[brain].name().to_string(),
                reason: format!(
                    "its watchdog {watchdog} {why}; it starts again once {watchdog} is ready"
                ),
            }));
        }
        let targets = brains
            .into_iter()
            .map(|b| (b, held.clone(), false))
            .collect();
        self.stop(targets, Grace::Own, None, out);
    }
}

/// Why a running watchdog does not guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotGuarding {
    Hung(String),
    NotReady(String),
    NotReadyYet,
}

impl std::fmt::Display for NotGuarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotGuarding::Hung(why) => write!(f, "is hung ({why})"),
            NotGuarding::NotReady(reason) => write!(f, "is not ready ({reason})"),
            NotGuarding::NotReadyYet => write!(f, "is not ready yet"),
        }
    }
}

/// Why a run is hung now, if it is: not ready within its timeout, or (once it counts
/// as started) no word within its heartbeat.
fn hang(
    now: &Now,
    since: Instant,
    health: &Health,
    ready: Readiness,
    heartbeat: Option<Duration>,
) -> Option<String> {
    if let Readiness::Notify { timeout } = ready
        && !health.ready
        && now.at.duration_since(since) > timeout
    {
        return Some(format!(
            "not ready within {} s of its start (ready_timeout_secs)",
            timeout.as_secs()
        ));
    }
    let counting = if health.notify {
        health.ready
    } else {
        now.at.duration_since(since) >= SETTLE
    };
    let heartbeat = heartbeat?;
    let silent = now.at.duration_since(health.alive_at);
    (counting && silent > heartbeat).then(|| {
        format!(
            "no heartbeat for {:.1} s (heartbeat_secs = {})",
            silent.as_secs_f64(),
            heartbeat.as_secs()
        )
    })
}
