//! The running desk's rules, as a pure state machine: no threads, no files, no clock.
//!
//! Each component is a [`Unit`]: what the desk wants of it (`wanted`) and one [`State`].
//! [`Desk::handle`] takes an [`Input`] (a supervisor's report, a stop that ended, a
//! request, the result of a start, a tick) with the time it happened ([`Now`]) and
//! returns the [`Command`]s to carry out (start, stop these with this grace, drop a
//! lock, end a standby, say a [`Note`]). The orchestrator (`crate::orchestrator`) is
//! the executor: it does the I/O and feeds the results back as inputs. The published
//! view (`MASTER_LAUNCH.state`) is derived from the states ([`State::shown`]).
//!
//! Where each rule lives:
//! - DESIGN.md rule 13 (a brain runs only while its watchdog runs): [`Desk::held_back`]
//!   and the brain arms of [`Desk::reconcile`] (start only after [`SETTLE`], stop when
//!   the watchdog is down), [`Desk::hold_back_brains_of`] (a watchdog backing off), and
//!   [`Desk::stop`], which takes a watchdog's running brains along, before it.
//! - DESIGN.md rule 15 (a guard counts only while it guards): [`Unit::settled`] (ready,
//!   or run for [`SETTLE`]), health.rs: what a child says (`ready`, `alive`,
//!   `not-ready`), hangs (no heartbeat, not ready in time: [`Command::EndRun`], a
//!   watchdog's brains stopped first), and the guard's arms in [`Desk::reconcile`].
//! - Requests in order: [`Desk::takes_requests`]: nothing is asked of a component while
//!   it, or for a watchdog one of its brains, is being stopped; a request waits (in the
//!   lock dir) until that stop has ended, so a watchdog is never stopped while its brain
//!   is still stopping.
//! - Restarts: supervisors restart on their own and report it ([`Desk::on_report`]);
//!   a restart request is a stop with `restart` set ([`Desk::accept`]).
//! - Standby (`[cluster]`): [`State::StandingBy`], refused requests, [`Input::KeyFree`].

mod guard;
mod health;
mod note;
mod requests;
mod supervision;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use lockcore::Grace;
use lockcore::config::{Readiness, RestartPolicy};
use lockcore::control::{
    ANSWERS_KEPT, Action, Answer, Outcome as AnswerOutcome, Supervised, Supervision,
};

use crate::supervisor::{FAILURE_WINDOW, Outcome, Report};

pub use note::{Note, Sink};

use crate::notify::Word;

/// How long a component must have run to count as started: a watchdog before its
/// brain starts, anything before a start request is answered "running".
pub const SETTLE: Duration = Duration::from_millis(500);

/// When an input happened: the monotonic instant the rules count with, and the wall
/// clock the published view and the reasons show.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    /// Unix seconds.
    pub unix: f64,
    pub local: chrono::DateTime<chrono::Local>,
}

impl Now {
    pub fn current() -> Now {
        Now {
            at: Instant::now(),
            unix: lockcore::stop::now_unix(),
            local: chrono::Local::now(),
        }
    }

    /// `HH:MM:SS`, for reasons a person reads.
    fn clock(&self) -> String {
        self.local.format("%H:%M:%S").to_string()
    }

    /// The local time `delay` from now.
    fn clock_in(&self, delay: Duration) -> String {
        let later =
            self.local + chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::zero());
        later.format("%H:%M:%S").to_string()
    }
}

/// What the view shows of a component: its state, the reason in words, its pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub state: Supervision,
    pub reason: String,
    pub pid: Option<u32>,
}

impl Shown {
    fn running(pid: u32) -> Shown {
        Shown {
            pid: Some(pid),
            ..Shown::new(Supervision::Running, format!("running, pid {pid}"))
        }
    }

    fn new(state: Supervision, reason: impl Into<String>) -> Shown {
        Shown {
            state,
            reason: reason.into(),
            pid: None,
        }
    }
}

/// Where one component is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not supervised and nothing under way: not started, stopped, given up, or (when
    /// wanted) about to be started at the next reconcile. Shown as it says.
    Idle(Shown),
    /// Wanted, a brain whose watchdog has not run for [`SETTLE`]: held back as shown
    /// (`starting`, `blocked`, `stopped`, `standby`).
    WaitingForWatchdog(Shown),
    /// `[cluster]`: another host holds its key (or etcd is out of reach): its key's
    /// watch runs; the reason in words.
    StandingBy(String),
    /// Supervised, its child not (yet) reported running.
    Starting,
    Running {
        since: Instant,
        pid: u32,
        health: Health,
    },
    /// Supervised, waiting out a restart delay (zero for the first restart).
    BackingOff {
        attempt: u32,
        until: Instant,
        reason: String,
    },
    /// A stop of it runs: nothing is started or asked of it meanwhile.
    Stopping(Stopping),
}

/// What a running child has said on its notify channel (DESIGN.md rule 15), and
/// whether it was found hung.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `ready = "notify"`: it counts as started only once it says `ready`.
    pub notify: bool,
    /// It said `ready` in this run.
    pub ready: bool,
    /// It said `not-ready <reason>` last.
    pub not_ready: Option<String>,
    /// Its last word (or its start): heartbeats are counted from here.
    pub alive_at: Instant,
    /// The same, in Unix seconds, once it has said anything.
    pub alive_unix: Option<f64>,
    /// Found hung, and why: its run is to be ended.
    pub hung: Option<String>,
    /// [`Command::EndRun`] has been given for this run.
    pub ending: bool,
}

impl Health {
    fn new(now: &Now, ready: Readiness) -> Health {
        Health {
            notify: matches!(ready, Readiness::Notify { .. }),
            ready: false,
            not_ready: None,
            alive_at: now.at,
            alive_unix: None,
            hung: None,
            ending: false,
        }
    }
}

/// A stop under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopping {
    /// What the view shows meanwhile (what it was, then what it ended as).
    pub shown: Shown,
    /// What it is once stopped (`None`: plain "stopped").
    pub then: Option<Shown>,
    /// Start it again once stopped (a restart).
    pub restart: bool,
    /// Its supervision has not reported its end yet.
    pub supervised: bool,
}

impl Health {
    fn shown(&self, pid: u32) -> Shown {
        let (state, reason) = if let Some(why) = &self.hung {
            (
                Supervision::Hung,
                format!("hung: {why}; being stopped to restart it"),
            )
        } else if let Some(reason) = &self.not_ready {
            (Supervision::NotReady, format!("not ready: {reason}"))
        } else if self.notify && !self.ready {
            (
                Supervision::Starting,
                format!("running, pid {pid}; not ready yet"),
            )
        } else {
            return Shown::running(pid);
        };
        Shown {
            pid: Some(pid),
            ..Shown::new(state, reason)
        }
    }
}

impl State {
    /// The view of it, derived.
    pub fn shown(&self) -> Shown {
        match self {
            State::Idle(shown) | State::WaitingForWatchdog(shown) => shown.clone(),
            State::StandingBy(reason) => Shown::new(Supervision::Standby, reason.clone()),
            State::Starting => Shown::new(Supervision::Starting, "starting"),
            State::Running { pid, health, .. } => health.shown(*pid),
            State::BackingOff { reason, .. } => Shown::new(Supervision::Restarting, reason.clone()),
            State::Stopping(stopping) => stopping.shown.clone(),
        }
    }

    fn supervised(&self) -> bool {
        match self {
            State::Starting | State::Running { .. } | State::BackingOff { .. } => true,
            State::Stopping(stopping) => stopping.supervised,
            State::Idle(_) | State::WaitingForWatchdog(_) | State::StandingBy(_) => false,
        }
    }

    fn stopping(&self) -> bool {
        matches!(self, State::Stopping(_))
    }
}

/// One component as the desk is built: the executor's knowledge of the config and
/// the first start's plan.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub account: Option<String>,
    /// For a brain that needs its watchdog (DESIGN.md rule 13): the watchdog's index.
    pub watchdog: Option<usize>,
    pub restart: RestartPolicy,
    /// The first start took its lock.
    pub planned: bool,
    /// `[cluster]`: the first start found its key held by another host.
    pub elsewhere: bool,
    /// When a run counts as started: after [`SETTLE`], or when it says `ready`.
    pub ready: Readiness,
    /// How often it must say `alive` once ready, if it must.
    pub heartbeat: Option<Duration>,
}

/// A start or restart request waiting for its answer.
#[derive(Debug, Clone)]
struct Waiting {
    id: String,
    /// For a restart: the run must have begun after this.
    after: Option<Instant>,
}

/// One component, as the desk keeps it.
#[derive(Debug)]
pub struct Unit {
    spec: Spec,
    /// Whether the desk should run it.
    pub wanted: bool,
    pub state: State,
    /// The first start's lock is still with the executor, not handed to a supervisor.
    first_lock: bool,
    /// Why its last run was ended as hung; cleared when a run says it is ready.
    trouble: Option<String>,
    waiting: Vec<Waiting>,
    /// The published view, refreshed from `state` after every input.
    view: Supervised,
}

impl Unit {
    fn name(&self) -> &str {
        &self.spec.name
    }

    /// Started, as its `ready` setting counts it (DESIGN.md rule 15: for a watchdog,
    /// it guards): running for [`SETTLE`], or it said `ready`; and neither hung nor
    /// not ready since.
    fn settled(&self, now: &Now) -> bool {
        let State::Running { since, health, .. } = &self.state else {
            return false;
        };
        health.hung.is_none()
            && health.not_ready.is_none()
            && if health.notify {
                health.ready
            } else {
                now.at.duration_since(*since) >= SETTLE
            }
    }

    /// What the view shows: its state, except that a run that ended hung stays
    /// `hung` (with why) until a new run says it is ready.
    fn shown(&self) -> Shown {
        let shown = self.state.shown();
        match (&self.trouble, &self.state) {
            (Some(why), State::BackingOff { reason, .. }) => {
                Shown::new(Supervision::Hung, format!("{why}; {reason}"))
            }
            (Some(why), State::Starting) => {
                Shown::new(Supervision::Hung, format!("{why}; starting it again"))
            }
            (Some(why), State::Running { health, .. })
                if shown.state == Supervision::Starting && !health.ready =>
            {
                Shown {
                    state: Supervision::Hung,
                    reason: format!("{why}; {}", shown.reason),
                    ..shown
                }
            }
            _ => shown,
        }
    }

    fn answer(&mut self, id: String, outcome: AnswerOutcome, detail: String) {
        self.view.answers.push(Answer {
            id,
            outcome,
            detail,
        });
        let extra = self.view.answers.len().saturating_sub(ANSWERS_KEPT);
        self.view.answers.drain(..extra);
    }

    /// Answers every waiting request the same way.
    fn answer_all(&mut self, outcome: AnswerOutcome, detail: &str) {
        for waiting in std::mem::take(&mut self.waiting) {
            self.answer(waiting.id, outcome, detail.to_string());
        }
    }

    /// Ends supervision in this state (a stop under way keeps its stop, showing it).
    fn ended(&mut self, shown: Shown) {
        match &mut self.state {
            State::Stopping(stopping) => {
                stopping.supervised = false;
                stopping.shown = shown;
            }
            state => *state = State::Idle(shown),
        }
    }
}

/// What happened, fed to [`Desk::handle`].
#[derive(Debug, Clone)]
pub enum Input {
    /// Reconcile what runs with what should, in start order; answer what can be.
    Tick,
    /// A supervisor's report for this unit.
    Report(usize, Report),
    /// What the child with this pid said on its notify channel.
    Said { unit: usize, pid: u32, word: Word },
    /// A stop ([`Command::Stop`]) of these units has ended.
    StopEnded(Vec<usize>),
    /// `[cluster]`: the key this standby waited for is free.
    KeyFree(usize),
    /// A stop request for this unit (the grace from its deadline).
    StopRequest {
        unit: usize,
        requester: String,
        grace: Grace,
    },
    /// A start or restart request for this unit; `alive`: its requester still runs.
    Request {
        unit: usize,
        action: Action,
        id: String,
        requester: String,
        alive: bool,
    },
    /// How a [`Command::Start`] went.
    Begun(usize, Begun),
    /// The desk is stopping: every waiting request fails.
    Ending,
}

/// How a start went, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// Its lock is taken and its supervisor runs.
    Supervising,
    /// `[cluster]`: another host holds its key (or etcd is out of reach); its key's
    /// watch runs.
    StandingBy { reason: String },
    /// `[cluster]`: it would stand by, but its key cannot be watched.
    WatchFailed { reason: String, why: String },
    /// A holder elsewhere without a cluster (cannot happen).
    NoCluster { reason: String },
    /// `[cluster]`: a stop request for it stands in etcd.
    StopRequested { requester: String },
    /// Refused or failed before supervision, with the answer a request gets.
    NotTaken { outcome: AnswerOutcome, why: String },
    /// Its supervision could not begin.
    CannotStart { why: String },
}

/// What the executor is to do, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Take its lock (the first start's, or now with the pre-flight) and start its
    /// supervisor; feed back [`Input::Begun`].
    Start(usize),
    /// Stop these units' supervisors (the stop engine orders them), then remove the stop
    /// request of `request`; feed back [`Input::StopEnded`].
    Stop {
        units: Vec<usize>,
        grace: Grace,
        request: Option<usize>,
    },
    /// Remove this unit's stop request now.
    RemoveStopRequest(usize),
    /// Release the first start's lock of this unit.
    DropLock(usize),
    /// End this unit's standby: its key's watch stops.
    EndStandby(usize),
    /// End this run (pid) of the unit as failed: stop it (its own grace, then forced);
    /// its supervisor restarts it as after a crash.
    EndRun { unit: usize, pid: u32, why: String },
    /// Tell it.
    Say(Note),
}

/// Every component of the desk, in start order.
#[derive(Debug)]
pub struct Desk {
    pub units: Vec<Unit>,
    /// Whether the first start has said "desk started".
    announced: bool,
    /// Starts handed out and not yet answered with [`Input::Begun`].
    starts_pending: usize,
}

impl Desk {
    pub fn new(specs: Vec<Spec>, now: &Now) -> Desk {
        let units = specs
            .into_iter()
            .map(|spec| {
                let wanted = spec.planned || spec.elsewhere;
                let shown = if wanted {
                    Shown::new(Supervision::Starting, "starting")
                } else {
                    Shown::new(
                        Supervision::NotStarted,
                        format!(
                            "not part of this start (--only); `master-launch start {}` starts it",
                            spec.name
                        ),
                    )
                };
                Unit {
                    view: Supervised {
                        name: spec.name.clone(),
                        state: shown.state,
                        pid: None,
                        since: now.unix,
                        reason: shown.reason.clone(),
                        alive_at: None,
                        heartbeat_secs: spec.heartbeat.map(|h| h.as_secs()),
                        answers: Vec::new(),
                    },
                    first_lock: spec.planned,
                    trouble: None,
                    spec,
                    wanted,
                    state: State::Idle(shown),
                    waiting: Vec::new(),
                }
            })
            .collect();
        Desk {
            units,
            announced: false,
            starts_pending: 0,
        }
    }

    /// The one transition function.
    pub fn handle(&mut self, now: &Now, input: Input) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::Tick => {
                self.check_health(now, &mut out);
                self.reconcile(now, &mut out);
                self.announce(&mut out);
                self.answer_requests(now);
            }
            Input::Report(index, report) => self.on_report(now, index, report, &mut out),
            Input::Said { unit, pid, word } => self.on_said(now, unit, pid, word, &mut out),
            Input::StopEnded(indexes) => self.on_stop_ended(&indexes),
            Input::KeyFree(index) => self.on_key_free(index, &mut out),
            Input::StopRequest {
                unit,
                requester,
                grace,
            } => self.on_stop_request(now, unit, &requester, grace, &mut out),
            Input::Request {
                unit,
                action,
                id,
                requester,
                alive,
            } => self.on_request(now, unit, action, id, requester, alive, &mut out),
            Input::Begun(index, begun) => self.on_begun(now, index, begun, &mut out),
            Input::Ending => {
                // Nothing more is started: the first start is not announced now.
                self.announced = true;
                for unit in &mut self.units {
                    unit.first_lock = false;
                    unit.answer_all(
                        AnswerOutcome::Failed,
                        "the desk is stopping (master-launch is ending)",
                    );
                }
            }
        }
        self.refresh(now);
        out
    }

    /// The published view of every component, in start order.
    pub fn view(&self) -> Vec<Supervised> {
        self.units.iter().map(|u| u.view.clone()).collect()
    }

    /// How soon something settles ([`SETTLE`] after a start), if anything does.
    pub fn next_settle(&self, now: &Now) -> Option<Duration> {
        self.units
            .iter()
            .filter_map(|u| match &u.state {
                State::Running { since, health, .. } if !health.notify => {
                    Some(SETTLE.saturating_sub(now.at.duration_since(*since)))
                }
                _ => None,
            })
            .filter(|left| !left.is_zero())
            .min()
    }

    /// Whether any component is given up or held back by a given-up watchdog (the
    /// orchestrator's exit code says so).
    pub fn any_given_up(&self) -> bool {
        self.units
            .iter()
            .any(|u| matches!(u.view.state, Supervision::GivenUp | Supervision::Blocked))
    }

    fn refresh(&mut self, now: &Now) {
        for unit in &mut self.units {
            let shown = unit.shown();
            if unit.view.state != shown.state {
                unit.view.since = now.unix;
            }
            unit.view.state = shown.state;
            unit.view.reason = shown.reason;
            unit.view.pid = shown.pid;
            let alive_at = match &unit.state {
                State::Running { health, .. } => health.alive_unix,
                _ => None,
            };
            // Heartbeats move it every second or so: the view (a file rewritten on
            // every change) follows at most once a second.
            let moved = match (unit.view.alive_at, alive_at) {
                (Some(shown), Some(said)) => said - shown >= 1.0,
                (shown, said) => shown.is_some() != said.is_some(),
            };
            if moved {
                unit.view.alive_at = alive_at;
            }
        }
    }

    fn announce(&mut self, out: &mut Vec<Command>) {
        if self.announced || self.starts_pending > 0 || self.units.iter().any(|u| u.first_lock) {
            return;
        }
        self.announced = true;
        let started = self.units.iter().filter(|u| u.state.supervised()).count();
        let standing_by = self
            .units
            .iter()
            .filter(|u| u.state.shown().state == Supervision::Standby)
            .count();
        out.push(Command::Say(Note::DeskStarted {
            started,
            standing_by,
        }));
    }
}

fn policy(restart: RestartPolicy) -> &'static str {
    match restart {
        RestartPolicy::Never => "\"never\"",
        RestartPolicy::OnFailure => "\"on-failure\"",
        RestartPolicy::Always => "\"always\"",
    }
}
