//! The running orchestrator: what the desk should run, what it runs, and the requests
//! that change it.
//!
//! One thread (the caller's) owns every [`Unit`]: it applies what supervision threads
//! report, acts on stop, start and restart requests found in the lock dir, and
//! reconciles what should run with what runs, in start order. That is where the rules
//! of a running desk live once:
//!
//! - A component starts under its lock, after the pre-flight (an unlocked copy refuses
//!   it), and only one supervisor per component ever exists: concurrent start requests
//!   start it once.
//! - DESIGN.md rule 13: a brain starts only once its watchdog has run for
//!   [`SETTLE`]; when the watchdog is given up or stopped, the brain is stopped first
//!   (gracefully, by the stop engine) and held back; when the watchdog runs again, the
//!   brain follows.
//! - Every change is published, whole, in `MASTER_LAUNCH.state` ([`lockcore::control`]),
//!   with the answers to requests; the orchestrator stays up while every component is
//!   down, so that a start can bring them back.
//!
//! Stops and restarts run on threads of their own (the stop engine waits for deadlines),
//! so the desk goes on being supervised meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockcore::config::{MASTER_LOCK_NAME, RestartPolicy};
use lockcore::control::{
    ANSWERS_KEPT, Action, Answer, ControlRequest, DeskState, Outcome as AnswerOutcome, Supervised,
    Supervision,
};
use lockcore::exit::ToolError;
use lockcore::logs::Log;
use lockcore::stop::now_unix;
use lockcore::stop_engine::{StopObserver, stop_in_order};
use lockcore::{
    Acquire, Component, DeskSnapshot, Fleet, Grace, HeldLock, Holder, LockClaim, LockDir,
    LockError, LockLost, LockWatcher, ProcessIdentity, ProcessProbe, Retaken, Role, Stage,
    StopRequest,
};

use crate::supervisor::{FAILURE_WINDOW, Launch, Outcome, Report, Supervisor};

/// How often the lock dir is looked at for requests: a directory read, cheap.
const TICK: Duration = Duration::from_millis(250);
/// Every this many ticks, each held lock file is checked to still be ours.
const VERIFY_EVERY_TICKS: u32 = 8;
/// How long a component must have run to count as started: a watchdog before its
/// brain starts, anything before a start request is answered "running".
pub const SETTLE: Duration = Duration::from_millis(500);

/// What wakes the orchestrator.
pub enum Event {
    /// Stop the desk, with this grace (Ctrl+C, a signal, a console close).
    Signal(Grace),
    /// A supervision thread's news, for the unit at this index.
    Supervision(usize, Report),
    /// A stop on a thread of its own has ended, for these units.
    Stopped(Vec<usize>),
    /// `[cluster]`: the key another host held for the unit at this index is free.
    KeyFree(usize),
}

/// One component of the desk, as the orchestrator keeps it.
struct Unit {
    component: Component,
    /// For a brain that needs its watchdog (DESIGN.md rule 13): the watchdog's unit.
    watchdog: Option<usize>,
    /// Whether the desk should run it.
    wanted: bool,
    /// Its lock, taken by the first start's pre-flight and not yet handed to a supervisor.
    lock: Option<HeldLock>,
    supervisor: Option<Arc<Supervisor>>,
    /// A stop of it runs on a thread: nothing is started for it meanwhile.
    stopping: bool,
    /// What to publish once that stop has ended.
    after_stop: Option<(Supervision, String)>,
    /// Start it again once that stop has ended (a restart).
    start_after_stop: bool,
    /// Since when its current child runs.
    running_since: Option<Instant>,
    /// True while its child runs, as its supervision thread sees it: a brain's
    /// supervisor restarts it only while its watchdog's is true (DESIGN.md rule 13).
    runs: Arc<AtomicBool>,
    /// Requests waiting for an answer: the id, and for a restart the moment after
    /// which the new run must have started.
    waiting: Vec<(String, Option<Instant>)>,
    /// `[cluster]`: while another host holds its key, the flag its key's watch keeps
    /// waiting on (cleared when it is no longer wanted here).
    standby: Option<Arc<AtomicBool>>,
    view: Supervised,
}

impl Unit {
    fn name(&self) -> &str {
        &self.component.lock_name
    }

    /// Running, and for long enough to count.
    fn settled(&self) -> bool {
        self.supervisor.is_some()
            && self.view.state == Supervision::Running
            && self.running_since.is_some_and(|t| t.elapsed() >= SETTLE)
    }

    fn set(&mut self, state: Supervision, reason: String) {
        if self.view.state != state {
            self.view.since = now_unix();
        }
        if state != Supervision::Running {
            self.view.pid = None;
        }
        self.view.state = state;
        self.view.reason = reason;
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

    /// Ends a standby: its key's watch stops at its next look.
    fn end_standby(&mut self) {
        if let Some(waiting) = self.standby.take() {
            waiting.store(false, Ordering::SeqCst);
        }
    }

    /// Answers every waiting request the same way.
    fn answer_all(&mut self, outcome: AnswerOutcome, detail: &str) {
        for (id, _) in std::mem::take(&mut self.waiting) {
            self.answer(id, outcome, detail.to_string());
        }
    }
}

/// The orchestrator of one desk.
pub struct Orchestrator<'f> {
    fleet: &'f Fleet,
    locks: LockDir,
    events: Log,
    probe: ProcessProbe,
    identity: ProcessIdentity,
    master: HeldLock,
    master_watcher: Option<LockWatcher>,
    units: Vec<Unit>,
    tx: Sender<Event>,
    /// Stops running on threads of their own.
    stops: Vec<JoinHandle<()>>,
    /// Whether the first start has printed "desk started".
    announced: bool,
    published: Option<Vec<Supervised>>,
    /// Why the view could not be published last time, once logged.
    publish_error: Option<String>,
    ticks: u32,
    last_scan: Option<Instant>,
    /// `[cluster]`: while true, stop requests placed in etcd are relayed into the lock dir.
    relaying: Arc<AtomicBool>,
}

impl<'f> Orchestrator<'f> {
    /// The desk, with the locks the pre-flight took for the plan (in start order), ready
    /// to start, and the plan's components whose keys another host holds (`[cluster]`),
    /// which stand by; every other enabled component is known as not started, so that a
    /// start request can bring it in.
    pub fn new(
        fleet: &'f Fleet,
        events: Log,
        mut probe: ProcessProbe,
        master: HeldLock,
        mut plan_locks: Vec<(Component, HeldLock)>,
        held_elsewhere: &[String],
        tx: Sender<Event>,
    ) -> Orchestrator<'f> {
        let identity = probe.own_identity();
        let master_watcher = master.watcher().ok();
        let mut units: Vec<Unit> = Vec::new();
        for component in fleet.components().filter(|c| c.enabled) {
            let lock = plan_locks
                .iter()
                .position(|(c, _)| c.lock_name == component.lock_name)
                .map(|i| plan_locks.remove(i).1);
            let watchdog = match (component.role, component.account.as_deref()) {
                (Role::Brain, Some(account)) => fleet
                    .account(account)
                    .filter(|a| a.brain_requires_watchdog)
                    .and_then(|a| {
                        units
                            .iter()
                            .position(|u| u.component.lock_name == a.watchdog.lock_name)
                    }),
                _ => None,
            };
            let elsewhere = held_elsewhere.contains(&component.lock_name);
            let (state, reason) = if lock.is_some() || elsewhere {
                (Supervision::Starting, "starting".to_string())
            } else {
                (
                    Supervision::NotStarted,
                    format!(
                        "not part of this start (--only); `master-launch start {}` starts it",
                        component.lock_name
                    ),
                )
            };
            units.push(Unit {
                view: Supervised {
                    name: component.lock_name.clone(),
                    state,
                    pid: None,
                    since: now_unix(),
                    reason,
                    answers: Vec::new(),
                },
                wanted: lock.is_some() || elsewhere,
                lock,
                component: component.clone(),
                watchdog,
                supervisor: None,
                stopping: false,
                after_stop: None,
                start_after_stop: false,
                running_since: None,
                runs: Arc::new(AtomicBool::new(false)),
                waiting: Vec::new(),
                standby: None,
            });
        }
        Orchestrator {
            locks: LockDir::for_fleet(fleet).with_cluster(fleet),
            fleet,
            events,
            probe,
            identity,
            master,
            master_watcher,
            units,
            tx,
            stops: Vec::new(),
            announced: false,
            published: None,
            publish_error: None,
            ticks: 0,
            last_scan: None,
            relaying: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Supervises until a signal or a stop-all request; returns the grace the final
    /// stop gets. An error while starting the first plan (a log that cannot be opened)
    /// is returned for the caller to back out.
    pub fn run(&mut self, rx: &Receiver<Event>) -> Result<Grace, ToolError> {
        if self.units.is_empty() {
            // Every component is disabled: nothing could ever be started here.
            self.events.line(
                "",
                "nothing to supervise: every component is disabled in fleet.toml",
            );
            return Ok(Grace::Own);
        }
        self.relay_cluster_stop_requests();
        self.reconcile()?;
        self.publish();
        loop {
            match rx.recv_timeout(self.next_wake()) {
                Ok(Event::Signal(grace)) => return Ok(grace),
                Ok(Event::Supervision(index, report)) => self.on_report(index, report),
                Ok(Event::Stopped(indexes)) => self.on_stopped(&indexes),
                Ok(Event::KeyFree(index)) => self.on_key_free(index),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Grace::Own),
            }
            if self.last_scan.is_none_or(|t| t.elapsed() >= TICK) {
                self.last_scan = Some(Instant::now());
                if let Some(grace) = self.stop_all_requested() {
                    return Ok(grace);
                }
                self.take_stop_requests();
                self.take_control_requests();
                self.ticks = self.ticks.wrapping_add(1);
                if self.ticks.is_multiple_of(VERIFY_EVERY_TICKS) {
                    self.verify_locks();
                }
            }
            self.reconcile()?;
            self.answer_requests();
            self.publish();
        }
    }

    /// Stops everything in the safe order (also what a failed first start backs out),
    /// waits for stops in flight, and publishes the end. Returns whether any component
    /// had been given up (the orchestrator's exit code says so).
    pub fn stop_everything(&mut self, grace: Grace) -> bool {
        self.relaying.store(false, Ordering::SeqCst);
        let supervisors: Vec<Arc<Supervisor>> = self
            .units
            .iter()
            .filter_map(|u| u.supervisor.clone())
            .collect();
        stop_all(&supervisors, grace, &self.events);
        for stop in self.stops.drain(..) {
            let _ = stop.join();
        }
        for unit in &mut self.units {
            unit.lock = None;
            unit.end_standby();
            unit.answer_all(
                AnswerOutcome::Failed,
                "the desk is stopping (master-launch is ending)",
            );
        }
        let _ = DeskState::remove_own(&self.fleet.lock_dir, self.identity);
        self.units
            .iter()
            .any(|u| matches!(u.view.state, Supervision::GivenUp | Supervision::Blocked))
    }

    /// Ends: releases the orchestrator's own lock.
    pub fn release(self) -> Result<(), ToolError> {
        let _ = StopRequest::remove(&self.fleet.lock_dir, MASTER_LOCK_NAME);
        self.master.release()?;
        Ok(())
    }

    /// `[cluster]`: a stop request that safe-shutdown placed in etcd on another host
    /// becomes this lock dir's `<NAME>.stop`, acted on like a local one (a standby's
    /// component is then not taken over).
    fn relay_cluster_stop_requests(&self) {
        let relaying = Arc::clone(&self.relaying);
        let events = self.events.clone();
        let relay = self.locks.relay_cluster_stop_requests(
            move || relaying.load(Ordering::SeqCst),
            move |relayed| match relayed {
                Ok(request) => events.line(
                    "",
                    &format!(
                        "{}: stop request from {} relayed into the lock dir",
                        request.name,
                        request.requester()
                    ),
                ),
                Err(why) => events.line("", &why),
            },
        );
        if let Some(Err(e)) = relay {
            self.events.line(
                "",
                &format!("cannot watch etcd for stop requests from other hosts: {e}"),
            );
        }
    }

    /// Sooner than a tick when a brain waits for its watchdog to settle, or an answer
    /// waits for a component to settle.
    fn next_wake(&self) -> Duration {
        let settling = self
            .units
            .iter()
            .filter_map(|u| u.running_since)
            .map(|since| SETTLE.saturating_sub(since.elapsed()))
            .filter(|left| !left.is_zero())
            .min()
            .unwrap_or(TICK);
        settling.min(TICK) + Duration::from_millis(5)
    }

    fn on_report(&mut self, index: usize, report: Report) {
        let unit = &mut self.units[index];
        match report {
            Report::Started { pid } => {
                unit.running_since = Some(Instant::now());
                unit.set(Supervision::Running, format!("running, pid {pid}"));
                unit.view.pid = Some(pid);
            }
            Report::Restarting {
                attempt,
                delay,
                last_exit,
            } => {
                unit.running_since = None;
                unit.set(
                    Supervision::Restarting,
                    format!(
                        "exited ({last_exit}); restart {attempt} in {:.1} s, at {}",
                        delay.as_secs_f64(),
                        clock_in(delay)
                    ),
                );
                if !delay.is_zero() {
                    self.hold_back_brains_of(index);
                }
            }
            Report::Ended(outcome) => {
                unit.running_since = None;
                if outcome != Outcome::Stopped {
                    // Given up or finished: it runs again only when someone starts it.
                    // (Who asked for a stop decided whether it should run again.)
                    unit.wanted = false;
                }
                if let Some(supervisor) = unit.supervisor.take() {
                    supervisor.join();
                }
                let (state, reason) = match outcome {
                    Outcome::Stopped => unit
                        .after_stop
                        .take()
                        .unwrap_or((Supervision::Stopped, "stopped".into())),
                    Outcome::Finished {
                        last_exit,
                        success: true,
                    } => (
                        Supervision::Stopped,
                        format!(
                            "exited cleanly ({last_exit}) at {}; restart = {} leaves it stopped",
                            clock_now(),
                            policy(unit.component.restart)
                        ),
                    ),
                    Outcome::Finished {
                        last_exit,
                        success: false,
                    } => (
                        Supervision::GivenUp,
                        format!(
                            "exited ({last_exit}) at {}; restart = {} does not restart it",
                            clock_now(),
                            policy(unit.component.restart)
                        ),
                    ),
                    Outcome::GaveUp {
                        failures,
                        last_exit,
                    } => (
                        Supervision::GivenUp,
                        format!(
                            "given up after {failures} failure(s) within {} s; last: {last_exit}, at {}",
                            FAILURE_WINDOW.as_secs(),
                            clock_now()
                        ),
                    ),
                };
                unit.set(state, reason);
            }
        }
    }

    fn on_stopped(&mut self, indexes: &[usize]) {
        // Look at the lock dir before reconciling: a stop request that arrived while a
        // restart's stop ran (and was left for now) must win over the restart, before
        // the component is started again even for a moment.
        self.last_scan = None;
        for &index in indexes {
            let unit = &mut self.units[index];
            unit.stopping = false;
            if let Some((state, reason)) = unit.after_stop.take() {
                unit.set(state, reason);
            }
            if std::mem::take(&mut unit.start_after_stop) {
                unit.wanted = true;
            }
        }
    }

    /// The key a standby waited for is free: the next reconcile takes it (or, if
    /// another standby was quicker, stands by again).
    fn on_key_free(&mut self, index: usize) {
        let unit = &mut self.units[index];
        if unit.standby.is_some() {
            unit.end_standby();
            self.events
                .line("", &format!("{}: its key is free: taking it", unit.name()));
        }
    }

    fn stop_all_requested(&mut self) -> Option<Grace> {
        let request = StopRequest::read(&self.fleet.lock_dir, MASTER_LOCK_NAME)?;
        if let Some(why) = &request.unreadable {
            self.events
                .line("", &format!("{why}; it still means: stop all"));
        }
        self.events.line(
            "",
            &format!("stop-all requested by {}", request.requester()),
        );
        Some(Grace::Given(request.time_left(Duration::from_secs(1))))
    }

    /// A stop request for one component: it is stopped (gracefully, forced at the
    /// request's deadline) and not restarted; a watchdog's brain is stopped first and
    /// held back (DESIGN.md rule 13). A component between restarts is stopped the same
    /// way: the pending restart is cancelled.
    fn take_stop_requests(&mut self) {
        for index in 0..self.units.len() {
            let unit = &self.units[index];
            if unit.stopping {
                continue;
            }
            let name = unit.name().to_string();
            let Some(request) = StopRequest::read(&self.fleet.lock_dir, &name) else {
                continue;
            };
            if let Some(why) = &request.unreadable {
                self.events.line(
                    "",
                    &format!("{name}: {why}; stopping with its own stop timeout"),
                );
            }
            let by = format!("{} at {}", request.requester(), clock_now());
            self.events.line(
                "",
                &format!(
                    "{name}: stop requested by {}; it will not be restarted",
                    request.requester()
                ),
            );
            let stopped = (Supervision::Stopped, format!("stopped on request by {by}"));
            let unit = &mut self.units[index];
            unit.wanted = false;
            unit.start_after_stop = false;
            unit.answer_all(
                AnswerOutcome::Failed,
                &format!("stopped on request by {by}"),
            );
            if unit.supervisor.is_none() {
                // Not started yet (a brain waiting for its watchdog, a standby): its
                // lock goes, its key's watch ends.
                unit.lock = None;
                unit.end_standby();
                unit.set(stopped.0, stopped.1);
                let _ = StopRequest::remove(&self.fleet.lock_dir, &name);
                continue;
            }
            unit.after_stop = Some(stopped);
            let grace = Grace::Given(request.time_left(unit.component.stop_timeout));
            let mut targets = vec![index];
            for brain in self.brains_of(index) {
                self.units[brain].after_stop = Some((
                    Supervision::Stopped,
                    format!("held back: its watchdog {name} was stopped on request by {by}"),
                ));
                targets.push(brain);
            }
            self.stop_units(targets, grace, Some(name));
        }
    }

    /// DESIGN.md rule 13: a watchdog that backs off before its restart (it failed
    /// again within a minute) leaves its positions unguarded for that long, so its
    /// running brains are stopped, gracefully, and held back; they stay wanted and
    /// follow the watchdog back once it has run for [`SETTLE`]. (The immediate first
    /// restart after a crash keeps the brain: the watchdog is back in milliseconds.)
    fn hold_back_brains_of(&mut self, index: usize) {
        let brains = self.brains_of(index);
        if brains.is_empty() {
            return;
        }
        let name = self.units[index].name().to_string();
        for &brain in &brains {
            self.events.line(
                "",
                &format!(
                    "{}: stopping it: its watchdog {name} is backing off before a restart \
                     (a brain never trades unguarded); it starts again once {name} runs",
                    self.units[brain].name()
                ),
            );
            self.units[brain].after_stop = Some((
                Supervision::Starting,
                format!("held back: its watchdog {name} is restarting"),
            ));
        }
        self.stop_units(brains, Grace::Own, None);
    }

    /// The running brains that need the watchdog at `index`.
    fn brains_of(&self, index: usize) -> Vec<usize> {
        (0..self.units.len())
            .filter(|&i| self.units[i].watchdog == Some(index))
            .filter(|&i| self.units[i].supervisor.is_some() && !self.units[i].stopping)
            .collect()
    }

    /// Start and restart requests: acted on once each (a requester that has died is
    /// cleared, not served), answered in the published view.
    fn take_control_requests(&mut self) {
        for index in 0..self.units.len() {
            for action in Action::ALL {
                if self.units[index].stopping {
                    break;
                }
                let name = self.units[index].name().to_string();
                let Some(read) = ControlRequest::read(&self.fleet.lock_dir, &name, action) else {
                    continue;
                };
                let _ = ControlRequest::remove(&self.fleet.lock_dir, &name, action);
                let request = match read {
                    Ok(request) => request,
                    Err(why) => {
                        self.events
                            .line("", &format!("cleared an unusable request: {why}"));
                        continue;
                    }
                };
                let requester = request
                    .requested_by
                    .map_or_else(|| "someone".to_string(), |r| format!("pid {}", r.pid));
                if let Some(who) = request.requested_by
                    && !self.probe.is_alive(who)
                {
                    self.events.line(
                        "",
                        &format!(
                            "{name}: cleared a {} request of {requester}, which has ended",
                            action.as_str()
                        ),
                    );
                    // Another requester may have joined it and waits for this id.
                    self.units[index].answer(
                        request.id,
                        AnswerOutcome::Failed,
                        format!(
                            "not acted on: {requester}, which placed the request, has ended; \
                             ask again"
                        ),
                    );
                    continue;
                }
                self.events.line(
                    "",
                    &format!("{name}: {} requested by {requester}", action.as_str()),
                );
                self.accept(index, action, request.id, &requester);
            }
        }
    }

    fn accept(&mut self, index: usize, action: Action, id: String, requester: &str) {
        let running = self.units[index].supervisor.is_some();
        if action == Action::Start || !running {
            let unit = &mut self.units[index];
            if unit.standby.is_some() {
                // Another host runs it: starting it here too is what the cluster forbids.
                let why = unit.view.reason.clone();
                unit.answer(id, AnswerOutcome::Refused, why);
                return;
            }
            unit.waiting.push((id, None));
            if !unit.wanted {
                unit.wanted = true;
                unit.set(
                    Supervision::Starting,
                    format!("start requested by {requester}"),
                );
            }
            return;
        }
        // A restart: stop it (its brains first, for a watchdog), then start it again.
        let now = Instant::now();
        let name = self.units[index].name().to_string();
        let mut targets = vec![index];
        for brain in self.brains_of(index) {
            let unit = &mut self.units[brain];
            unit.after_stop = Some((
                Supervision::Starting,
                format!("restarting with its watchdog {name}"),
            ));
            unit.start_after_stop = unit.wanted;
            targets.push(brain);
        }
        let unit = &mut self.units[index];
        unit.waiting.push((id, Some(now)));
        unit.start_after_stop = true;
        unit.after_stop = Some((
            Supervision::Starting,
            format!("restart requested by {requester}"),
        ));
        self.stop_units(targets, Grace::Own, None);
    }

    /// Stops these units with the stop engine on a thread of its own; removes the
    /// stop request `request` (a lock name) once they are stopped.
    fn stop_units(&mut self, targets: Vec<usize>, grace: Grace, request: Option<String>) {
        let supervisors: Vec<Arc<Supervisor>> = targets
            .iter()
            .filter_map(|&i| self.units[i].supervisor.clone())
            .collect();
        for &i in &targets {
            self.units[i].stopping = true;
        }
        let (events, tx, lock_dir) = (
            self.events.clone(),
            self.tx.clone(),
            self.fleet.lock_dir.clone(),
        );
        self.stops.retain(|t| !t.is_finished());
        self.stops.push(std::thread::spawn(move || {
            stop_all(&supervisors, grace, &events);
            if let Some(name) = request {
                let _ = StopRequest::remove(&lock_dir, &name);
            }
            let _ = tx.send(Event::Stopped(targets));
        }));
    }

    /// Brings what runs in line with what should, in start order.
    fn reconcile(&mut self) -> Result<(), ToolError> {
        for index in 0..self.units.len() {
            if self.units[index].stopping || self.units[index].standby.is_some() {
                continue;
            }
            let unit = &self.units[index];
            let watchdog = unit.watchdog.map(|w| &self.units[w]);
            match (unit.wanted, unit.supervisor.is_some(), watchdog) {
                (true, false, Some(watchdog)) if !watchdog.settled() => {
                    let (state, reason) = held_back(watchdog);
                    let unit = &mut self.units[index];
                    if state != Supervision::Starting {
                        unit.answer_all(AnswerOutcome::Failed, &reason);
                        // Not while its watchdog is down: the first start's lock goes.
                        unit.lock = None;
                    }
                    if state == Supervision::Standby && unit.view.state != state {
                        self.events.line("", &format!("{}: {reason}", unit.name()));
                    }
                    if unit.view.state != state || unit.view.reason != reason {
                        unit.set(state, reason);
                    }
                }
                (true, false, _) => self.start_unit(index)?,
                (_, true, Some(watchdog))
                    if !watchdog.wanted && watchdog.supervisor.is_none() && !watchdog.stopping =>
                {
                    // Its watchdog was given up (a stop request stops the brain first).
                    let (state, reason) = held_back(watchdog);
                    self.events.line(
                        "",
                        &format!(
                            "{}: stopping it: {reason} (a brain never trades unguarded)",
                            self.units[index].name()
                        ),
                    );
                    self.units[index].after_stop = Some((state, reason));
                    self.stop_units(vec![index], Grace::Own, None);
                }
                _ => {}
            }
        }
        if !self.announced && self.units.iter().all(|u| u.lock.is_none()) {
            self.announced = true;
            let started = self.units.iter().filter(|u| u.supervisor.is_some()).count();
            let standing_by = self
                .units
                .iter()
                .filter(|u| u.view.state == Supervision::Standby)
                .count();
            let standby = match standing_by {
                0 => String::new(),
                n => format!(", {n} standing by for another host"),
            };
            self.events.line(
                "",
                &format!("desk started: {started} processes{standby}; Ctrl+C stops it"),
            );
        }
        Ok(())
    }

    /// Takes its lock (the first start's, or now, with the pre-flight), and starts
    /// supervising it. A refusal or failure is answered; only a failure of the first
    /// start is returned (the caller backs the desk out).
    fn start_unit(&mut self, index: usize) -> Result<(), ToolError> {
        let first_start = self.units[index].lock.is_some();
        let lock = match self.units[index].lock.take() {
            Some(lock) => lock,
            None => match self.take_lock(index) {
                Ok(lock) => lock,
                Err(NotTaken::Elsewhere(holder)) => {
                    let key = holder.cluster_key.clone().unwrap_or_default();
                    let host = holder
                        .record
                        .as_ref()
                        .and_then(|r| r.host.as_deref())
                        .unwrap_or("another host");
                    let pid = holder
                        .record
                        .as_ref()
                        .map_or_else(String::new, |r| format!(", pid {}", r.pid));
                    let reason = format!(
                        "stands by: {host} holds it{pid}; starts here as soon as its key {key} \
                         is free"
                    );
                    self.stand_by(index, &key, reason);
                    return Ok(());
                }
                Err(NotTaken::Unreachable { key, why }) => {
                    let reason = format!(
                        "stands by: {why}; starts here once etcd answers and its key {key} is \
                         free"
                    );
                    self.stand_by(index, &key, reason);
                    return Ok(());
                }
                Err(NotTaken::StopRequested(request)) => {
                    let by = format!("{} at {}", request.requester(), clock_now());
                    let unit = &mut self.units[index];
                    self.events.line(
                        "",
                        &format!("{}: not started: a stop was requested by {by}", unit.name()),
                    );
                    unit.wanted = false;
                    unit.answer_all(
                        AnswerOutcome::Failed,
                        &format!("stopped on request by {by}"),
                    );
                    unit.set(Supervision::Stopped, format!("stopped on request by {by}"));
                    return Ok(());
                }
                Err(NotTaken::No(outcome, why)) => {
                    let unit = &mut self.units[index];
                    self.events
                        .line("", &format!("{}: not started: {why}", unit.name()));
                    unit.wanted = false;
                    unit.answer_all(outcome, &why);
                    unit.set(Supervision::NotStarted, format!("not started: {why}"));
                    return Ok(());
                }
            },
        };
        match self.supervise(index, lock) {
            Ok(supervisor) => {
                self.units[index].supervisor = Some(Arc::new(supervisor));
                Ok(())
            }
            Err(error) if first_start => Err(error),
            Err(error) => {
                let why = error.to_string();
                let unit = &mut self.units[index];
                self.events
                    .line("", &format!("{}: cannot start: {why}", unit.name()));
                unit.wanted = false;
                unit.answer_all(AnswerOutcome::Failed, &why);
                unit.set(Supervision::GivenUp, format!("cannot start: {why}"));
                Ok(())
            }
        }
    }

    /// `[cluster]`: another host holds its key. It stays wanted and waits, on a thread,
    /// for the key to be free (etcd pushes the deletion); requests meanwhile are refused.
    /// Also when etcd cannot be reached (a partitioned host after fencing): it waits
    /// until etcd answers and the key is free.
    fn stand_by(&mut self, index: usize, key: &str, reason: String) {
        let waiting = Arc::new(AtomicBool::new(true));
        let tx = self.tx.clone();
        let watch = self.locks.wait_until_free(
            key,
            {
                let waiting = Arc::clone(&waiting);
                move || waiting.load(Ordering::SeqCst)
            },
            move || {
                let _ = tx.send(Event::KeyFree(index));
            },
        );
        let unit = &mut self.units[index];
        unit.answer_all(AnswerOutcome::Refused, &reason);
        match watch {
            Some(Ok(_)) => {
                self.events.line("", &format!("{}: {reason}", unit.name()));
                unit.standby = Some(waiting);
                unit.set(Supervision::Standby, reason);
            }
            Some(Err(e)) => {
                let why = format!("cannot watch its key {key}: {e}");
                self.events
                    .line("", &format!("{}: not started: {why}", unit.name()));
                unit.wanted = false;
                unit.set(Supervision::GivenUp, format!("not started: {why}"));
            }
            None => {
                // A holder on another host without a cluster: cannot happen.
                unit.wanted = false;
                unit.set(Supervision::NotStarted, format!("not started: {reason}"));
            }
        }
    }

    /// A later start's lock and pre-flight: refused when someone else holds the lock
    /// or a copy runs without it; with `[cluster]`, another host may hold the key.
    fn take_lock(&mut self, index: usize) -> Result<HeldLock, NotTaken> {
        let component = &self.units[index].component;
        let claim = LockClaim {
            account: component.account.clone(),
            command: component.command.clone(),
        };
        let lock = match self
            .locks
            .acquire(&component.lock_name, &claim, &mut self.probe)
        {
            Ok(Acquire::Acquired(lock)) => lock,
            Ok(Acquire::Held(holder)) if holder.cluster_key.is_some() => {
                return Err(NotTaken::Elsewhere(Box::new(holder)));
            }
            Ok(Acquire::Held(holder)) => {
                return Err(NotTaken::No(AnswerOutcome::Refused, holder.to_string()));
            }
            Err(LockError::StopRequested { request }) => {
                return Err(NotTaken::StopRequested(request));
            }
            Err(LockError::Cluster(error)) => {
                let key = self
                    .fleet
                    .cluster
                    .as_ref()
                    .map(|c| c.lock_key(&component.lock_name))
                    .unwrap_or_default();
                return Err(NotTaken::Unreachable {
                    key,
                    why: error.to_string(),
                });
            }
            Err(error) => return Err(NotTaken::No(AnswerOutcome::Failed, error.to_string())),
        };
        // Holding the lock, any copy still found runs without it (started by hand).
        let snapshot = DeskSnapshot::take(self.fleet, &mut self.probe)
            .map_err(|e| NotTaken::No(AnswerOutcome::Failed, e.to_string()))?;
        let unlocked: Vec<String> = snapshot
            .component(&component.lock_name)
            .map(|view| {
                view.copies
                    .iter()
                    .map(|c| c.tree.root.pid.to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !unlocked.is_empty() {
            return Err(NotTaken::No(
                AnswerOutcome::Refused,
                format!(
                    "pid {} runs {} without its lock; stop it with safe-shutdown first",
                    unlocked.join(", "),
                    component.lock_name
                ),
            ));
        }
        Ok(lock)
    }

    fn supervise(&mut self, index: usize, lock: HeldLock) -> Result<Supervisor, ToolError> {
        let component = self.units[index].component.clone();
        let log = Log::open(
            &self
                .fleet
                .log_dir
                .join(format!("{}.log", component.lock_name)),
            false,
        )?;
        let tx = self.tx.clone();
        let launch = Launch {
            env: fleet_env(self.fleet, &component, &lock),
            log,
            events: self.events.clone(),
            report: Box::new(move |report| {
                let _ = tx.send(Event::Supervision(index, report));
            }),
            runs: self.units[index].runs.clone(),
            guard: self.units[index]
                .watchdog
                .map(|w| self.units[w].runs.clone()),
            guarded: self
                .units
                .iter()
                .filter(|u| u.watchdog == Some(index))
                .map(|u| u.runs.clone())
                .collect(),
        };
        let unit = &mut self.units[index];
        unit.set(Supervision::Starting, "starting".into());
        Ok(Supervisor::start(component, lock, launch))
    }

    /// Answers the requests of components that run (past [`SETTLE`], and for a restart
    /// a run that began after the request), or that will not run.
    fn answer_requests(&mut self) {
        for unit in &mut self.units {
            if unit.waiting.is_empty() || unit.stopping {
                continue;
            }
            let settled = unit.settled();
            let since = unit.running_since;
            let pid = unit.view.pid.unwrap_or(0);
            let gave_up = !unit.wanted && unit.supervisor.is_none();
            let reason = unit.view.reason.clone();
            let mut still = Vec::new();
            for (id, after) in std::mem::take(&mut unit.waiting) {
                let new_run = after.is_none_or(|t| since.is_some_and(|s| s > t));
                if settled && new_run {
                    unit.answer(id, AnswerOutcome::Done, format!("running, pid {pid}"));
                } else if gave_up {
                    unit.answer(id, AnswerOutcome::Failed, reason.clone());
                } else {
                    still.push((id, after));
                }
            }
            unit.waiting = still;
        }
    }

    /// Writes `MASTER_LAUNCH.state` when anything in it changed.
    fn publish(&mut self) {
        let components: Vec<Supervised> = self.units.iter().map(|u| u.view.clone()).collect();
        if self.published.as_ref() == Some(&components) {
            return;
        }
        let state = DeskState {
            orchestrator: self.identity,
            updated_at: now_unix(),
            components,
        };
        if let Err(e) = state.write(&self.fleet.lock_dir) {
            // Retried on every change; said once per reason, not on every tick.
            let why = e.to_string();
            if self.publish_error.as_ref() != Some(&why) {
                self.events
                    .line("", &format!("cannot publish the desk's state: {why}"));
                self.publish_error = Some(why);
            }
            return;
        }
        self.publish_error = None;
        self.published = Some(state.components);
    }

    /// DESIGN.md rules 7 and 17: on Linux anyone can unlink a lock file, or the whole
    /// lock folder. Every held lock whose file has gone is taken and recorded again by
    /// its own check (a component's machine-wide lock kept anyone else out meanwhile),
    /// and that is logged loudly. If the orchestrator's own file cannot be taken back
    /// that way, it is acquired afresh, so that tools can find it (and a second
    /// master-launch cannot start beside it).
    fn verify_locks(&mut self) {
        for unit in &self.units {
            if let Some(supervisor) = &unit.supervisor {
                // A loss is logged; the supervisor keeps its child and its machine lock.
                let _ = self.report_lock_check(unit.name(), supervisor.verify_lock());
            }
        }
        let Some(watcher) = &self.master_watcher else {
            return;
        };
        if self
            .report_lock_check(MASTER_LOCK_NAME, watcher.check())
            .is_ok()
        {
            return;
        }
        let claim = LockClaim {
            account: None,
            command: std::env::args().collect(),
        };
        match self
            .locks
            .acquire(MASTER_LOCK_NAME, &claim, &mut self.probe)
        {
            Ok(Acquire::Acquired(lock)) => {
                self.master_watcher = lock.watcher().ok();
                // The old file is gone; its handle unlocks as it drops.
                drop(std::mem::replace(&mut self.master, lock));
                self.events
                    .line("", &format!("{MASTER_LOCK_NAME}: lock taken again"));
            }
            Ok(Acquire::Held(holder)) => self.events.line(
                "",
                &format!("{MASTER_LOCK_NAME}: cannot take it again: {holder}"),
            ),
            Err(e) => self.events.line(
                "",
                &format!("{MASTER_LOCK_NAME}: cannot take it again: {e}"),
            ),
        }
    }
}

impl Orchestrator<'_> {
    /// Logs a lock check's finding loudly: a lock file taken again after it was deleted
    /// (DESIGN.md rules 7 and 17), or lost. Hands the outcome back.
    fn report_lock_check(
        &self,
        name: &str,
        checked: Result<Option<Retaken>, LockLost>,
    ) -> Result<(), LockLost> {
        match checked {
            Ok(None) => Ok(()),
            Ok(Some(retaken)) => {
                self.events.line(
                    "",
                    &format!(
                        "LOCK LOST: lock file {} was deleted or replaced while {name} held it",
                        retaken.path.display()
                    ),
                );
                self.events
                    .line("", &format!("{name}: lock taken again: {retaken}"));
                Ok(())
            }
            Err(lost) => {
                self.events.line("", &format!("LOCK LOST: {lost}"));
                Err(lost)
            }
        }
    }
}

/// Why a later start did not take a component's lock.
enum NotTaken {
    /// Refused or failed, with the answer a request gets.
    No(AnswerOutcome, String),
    /// `[cluster]`: another host holds its key: stand by.
    Elsewhere(Box<Holder>),
    /// `[cluster]`: etcd did not answer: stand by until it does.
    Unreachable { key: String, why: String },
    /// `[cluster]`: a stop request for it stands in etcd: it is not started.
    StopRequested(StopRequest),
}

/// What a brain that needs `watchdog` is while the watchdog does not run (yet).
fn held_back(watchdog: &Unit) -> (Supervision, String) {
    let name = watchdog.name();
    let account = watchdog.component.account.as_deref().unwrap_or("?");
    match watchdog.view.state {
        // Its watchdog runs on another host: so does the brain (its key is not taken
        // here, so the host that runs the watchdog can take it).
        Supervision::Standby if watchdog.standby.is_some() => (
            Supervision::Standby,
            format!(
                "stands by with its watchdog {name}: {}",
                watchdog.view.reason
            ),
        ),
        _ if watchdog.wanted || watchdog.stopping => (
            Supervision::Starting,
            format!("waiting for its watchdog {name} to run"),
        ),
        Supervision::Stopped => (
            Supervision::Stopped,
            format!(
                "held back: its watchdog {name} is stopped ({}); `master-launch start --account \
                 {account}` starts both",
                watchdog.view.reason
            ),
        ),
        _ => (
            Supervision::Blocked,
            format!(
                "held back: its watchdog {name} is {} ({}); `master-launch start --account {account}` \
                 starts both",
                watchdog.view.state.as_str(),
                watchdog.view.reason
            ),
        ),
    }
}

/// Stops supervised components with the stop engine: brains, then watchdogs, then
/// globals; in parallel within a stage; graceful, then forced through each child's
/// binding. Every supervision thread has ended when it returns.
pub fn stop_all(supervisors: &[Arc<Supervisor>], grace: Grace, events: &Log) {
    let targets: Vec<&Supervisor> = supervisors.iter().map(|s| &**s).collect();
    stop_in_order(targets, grace, &mut (), &mut EventObserver(events));
    let mut in_stop_order: Vec<&Arc<Supervisor>> = supervisors.iter().collect();
    in_stop_order.sort_by_key(|s| Stage::of(s.component.role));
    for supervisor in in_stop_order {
        if let Some(outcome) = supervisor.join() {
            let name = &supervisor.component.lock_name;
            let outcome = match outcome {
                Outcome::Stopped => "Stopped",
                Outcome::Finished { .. } => "Finished",
                Outcome::GaveUp { .. } => "GaveUp",
            };
            events.line("", &format!("{name}: stopped ({outcome})"));
        }
    }
}

/// What the orchestrator's log records of a stop.
struct EventObserver<'l>(&'l Log);

impl StopObserver for EventObserver<'_> {
    fn forced(&mut self, name: &str, how: &str) {
        self.0
            .line("", &format!("{name}: did not stop in time; {how}"));
    }
}

/// The `FLEET_*` variables a managed process learns who it is from.
pub fn fleet_env(fleet: &Fleet, component: &Component, lock: &HeldLock) -> Vec<(String, String)> {
    let lock_file = lock_file_path(lock.path());
    let mut env = vec![
        ("FLEET_LOCK_NAME".to_string(), component.lock_name.clone()),
        ("FLEET_LOCK_FILE".to_string(), lock_file),
    ];
    if let Some(account) = component.account.as_deref().and_then(|a| fleet.account(a)) {
        env.push(("FLEET_ACCOUNT".into(), account.name.clone()));
        env.push((
            "FLEET_LOGIN".into(),
            account.login.clone().unwrap_or_default(),
        ));
        env.push((
            "FLEET_TERMINAL".into(),
            account.terminal.clone().unwrap_or_default(),
        ));
    }
    env
}

fn lock_file_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn policy(restart: RestartPolicy) -> &'static str {
    match restart {
        RestartPolicy::Never => "\"never\"",
        RestartPolicy::OnFailure => "\"on-failure\"",
        RestartPolicy::Always => "\"always\"",
    }
}

/// The local time now, `HH:MM:SS`, for reasons a person reads.
fn clock_now() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// The local time `delay` from now.
fn clock_in(delay: Duration) -> String {
    let later = chrono::Local::now()
        + chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::zero());
    later.format("%H:%M:%S").to_string()
}
