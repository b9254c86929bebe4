//! The running orchestrator: the executor of the desk's core ([`crate::core`]).
//!
//! The core decides (what should run, what a request or a report changes, DESIGN.md
//! rule 13); this module does what it says and tells it what happened. One thread (the
//! caller's) owns the core and every component's resources ([`Held`]: its first
//! start's lock, its supervisor, its standby watch): it feeds the core what supervision
//! threads report, the stop, start and restart requests found in the lock dir, and a
//! tick; it starts components under their locks (after the pre-flight: an unlocked copy
//! refuses it), stops them with the stop engine on threads of their own (the engine
//! waits for deadlines, so the desk goes on being supervised meanwhile), and publishes
//! the core's view, whole, in `MASTER_LAUNCH.state` ([`lockcore::control`]), with the
//! answers to requests. It stays up while every component is down, so that a start can
//! bring them back.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockcore::config::MASTER_LOCK_NAME;
use lockcore::control::{Action, ControlRequest, DeskState, Outcome as AnswerOutcome, Supervised};
use lockcore::exit::ToolError;
use lockcore::logs::Log;
use lockcore::mailbox::Mailbox;
use lockcore::stop::now_unix;
use lockcore::stop_engine::{Cutoff, StopObserver, Stoppable, stop_in_order};
use lockcore::{
    Acquire, Component, DeskSnapshot, Fleet, Grace, HeldLock, Holder, LockClaim, LockDir,
    LockError, LockLost, LockWatcher, ProcessIdentity, ProcessProbe, Retaken, Role, Stage,
    StopRequest,
};

use crate::core::{Begun, Command, Desk, Input, Note, Now, Sink, Spec};
use crate::events::Events;
use crate::notify::Word;
use crate::supervisor::{Launch, Outcome, Report, Supervisor};

/// How often the lock dir is looked at for requests: a directory read, cheap.
const TICK: Duration = Duration::from_millis(250);
/// Every this many ticks, each held lock file is checked to still be ours.
const VERIFY_EVERY_TICKS: u32 = 8;

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

/// What the executor holds for one component (its state is the core's).
struct Held {
    component: Component,
    /// For a brain that needs its watchdog (DESIGN.md rule 13): the watchdog's index.
    watchdog: Option<usize>,
    /// Its lock, taken by the first start's pre-flight and not yet handed to a supervisor.
    lock: Option<HeldLock>,
    supervisor: Option<Arc<Supervisor>>,
    /// True while its child runs, as its supervision thread sees it: a brain's
    /// supervisor restarts it only while its watchdog's is true (DESIGN.md rule 13).
    runs: Arc<AtomicBool>,
    /// `[cluster]`: while another host holds its key, the flag its key's watch keeps
    /// waiting on (cleared when it is no longer wanted here).
    standby: Option<Arc<AtomicBool>>,
}

impl Held {
    fn name(&self) -> &str {
        &self.component.lock_name
    }

    /// Ends a standby: its key's watch stops at its next look.
    fn end_standby(&mut self) {
        if let Some(waiting) = self.standby.take() {
            waiting.store(false, Ordering::SeqCst);
        }
    }
}

/// The orchestrator of one desk.
pub struct Orchestrator<'f> {
    fleet: &'f Fleet,
    locks: LockDir,
    events: Events,
    probe: ProcessProbe,
    identity: ProcessIdentity,
    master: HeldLock,
    master_watcher: Option<LockWatcher>,
    /// The rules and every component's state.
    desk: Desk,
    /// Every component's resources, in the core's order.
    held: Vec<Held>,
    tx: Sender<Event>,
    /// Stops running on threads of their own.
    stops: Vec<JoinHandle<()>>,
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
        events: Events,
        mut probe: ProcessProbe,
        master: HeldLock,
        mut plan_locks: Vec<(Component, HeldLock)>,
        held_elsewhere: &[String],
        tx: Sender<Event>,
    ) -> Orchestrator<'f> {
        let identity = probe.own_identity();
        let master_watcher = master.watcher().ok();
        let mut held: Vec<Held> = Vec::new();
        let mut specs = Vec::new();
        for component in fleet.components().filter(|c| c.enabled) {
            let lock = plan_locks
                .iter()
                .position(|(c, _)| c.lock_name == component.lock_name)
                .map(|i| plan_locks.remove(i).1);
            let watchdog = match (component.role, component.account.as_deref()) {
                (Role::Brain, Some(account)) => fleet
                    .account(account)
                    .filter(|a| a.brain_requires_watchdog)
                    .and_then(|a| held.iter().position(|u| u.name() == a.watchdog.lock_name)),
                _ => None,
            };
            specs.push(Spec {
                name: component.lock_name.clone(),
                account: component.account.clone(),
                watchdog,
                restart: component.restart,
                planned: lock.is_some(),
                elsewhere: held_elsewhere.contains(&component.lock_name),
                ready: component.ready,
                heartbeat: component.heartbeat,
            });
            held.push(Held {
                component: component.clone(),
                watchdog,
                lock,
                supervisor: None,
                runs: Arc::new(AtomicBool::new(false)),
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
            desk: Desk::new(specs, &Now::current()),
            held,
            tx,
            stops: Vec::new(),
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
        if self.held.is_empty() {
            // Every component is disabled: nothing could ever be started here.
            self.events.note(&Note::NothingToSupervise);
            return Ok(Grace::Own);
        }
        self.relay_cluster_stop_requests();
        self.step(Input::Tick)?;
        self.publish();
        let mut last_tick = Instant::now();
        loop {
            // Sooner than a tick when a brain waits for its watchdog to settle, or an
            // answer waits for a component to settle.
            let settling = self.desk.next_settle(&Now::current()).unwrap_or(TICK);
            match rx.recv_timeout(settling.min(TICK) + Duration::from_millis(5)) {
                Ok(Event::Signal(grace)) => return Ok(grace),
                Ok(Event::Supervision(index, Report::Said { pid, word })) => {
                    let only_alive = matches!(word, Word::Alive);
                    self.step(Input::Said {
                        unit: index,
                        pid,
                        word,
                    })?;
                    // `alive` only moves a timestamp: the tick and the view it changes
                    // wait for the next tick, so a desk of heartbeating bots costs a
                    // tick's work per TICK, not per heartbeat.
                    if only_alive && last_tick.elapsed() < TICK {
                        continue;
                    }
                }
                Ok(Event::Supervision(index, report)) => {
                    if matches!(report, Report::Ended(_))
                        && let Some(supervisor) = self.held[index].supervisor.take()
                    {
                        supervisor.join();
                    }
                    self.step(Input::Report(index, report))?;
                }
                Ok(Event::Stopped(indexes)) => {
                    // Look at the lock dir before reconciling: a stop request that
                    // arrived while a restart's stop ran (and was left for now) must win
                    // over the restart, before the component is started again even for
                    // a moment.
                    self.last_scan = None;
                    self.step(Input::StopEnded(indexes))?;
                }
                Ok(Event::KeyFree(index)) => self.step(Input::KeyFree(index))?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Grace::Own),
            }
            if self.last_scan.is_none_or(|t| t.elapsed() >= TICK) {
                self.last_scan = Some(Instant::now());
                // One read of the lock dir tells which request files to open.
                let mailbox = Mailbox::look(&self.fleet.lock_dir);
                if let Some(grace) = self.stop_all_requested(&mailbox) {
                    return Ok(grace);
                }
                self.take_stop_requests(&mailbox)?;
                self.take_control_requests(&mailbox)?;
                self.ticks = self.ticks.wrapping_add(1);
                if self.ticks.is_multiple_of(VERIFY_EVERY_TICKS) {
                    self.verify_locks();
                }
            }
            self.step(Input::Tick)?;
            self.publish();
            last_tick = Instant::now();
        }
    }

    /// Stops everything in the safe order (also what a failed first start backs out),
    /// waits for stops in flight, and publishes the end. Returns whether any component
    /// had been given up (the orchestrator's exit code says so).
    pub fn stop_everything(&mut self, grace: Grace, cutoff: &Cutoff) -> bool {
        self.relaying.store(false, Ordering::SeqCst);
        let supervisors: Vec<Arc<Supervisor>> = self
            .held
            .iter()
            .filter_map(|u| u.supervisor.clone())
            .collect();
        stop_all(&supervisors, grace, cutoff, &self.events);
        // Bounded: a stop thread waits for its component's supervision, which waits for
        // a process that a kernel I/O can keep from ever exiting.
        let deadline = Instant::now() + JOIN_BOUND;
        for stop in self.stops.drain(..) {
            if finished_by(deadline, || stop.is_finished()) {
                let _ = stop.join();
            } else {
                self.events.line(
                    "",
                    &format!(
                        "a component's stop did not end {} s after the ordered stop; \
                         master-launch exits without waiting for it",
                        JOIN_BOUND.as_secs()
                    ),
                );
            }
        }
        for held in &mut self.held {
            held.lock = None;
            held.end_standby();
        }
        self.desk.handle(&Now::current(), Input::Ending);
        let _ = DeskState::remove_own(&self.fleet.lock_dir, self.identity);
        self.desk.any_given_up()
    }

    /// Ends: releases the orchestrator's own lock.
    pub fn release(self) -> Result<(), ToolError> {
        let _ = StopRequest::remove(&self.fleet.lock_dir, MASTER_LOCK_NAME);
        self.master.release()?;
        Ok(())
    }

    /// Feeds the core one input and carries out the commands it returns, feeding back
    /// how each start went. After starts it reconciles again, so that a component later
    /// in start order sees how the earlier ones started. Only a failure of the first
    /// start is returned (the caller backs the desk out).
    fn step(&mut self, input: Input) -> Result<(), ToolError> {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let mut started = false;
            for command in self.desk.handle(&Now::current(), input) {
                match command {
                    Command::Start(index) => {
                        started = true;
                        let begun = self.start_unit(index)?;
                        inputs.push_back(Input::Begun(index, begun));
                    }
                    Command::Stop {
                        units,
                        grace,
                        request,
                    } => self.stop_units(units, grace, request),
                    Command::RemoveStopRequest(index) => {
                        let _ = StopRequest::remove(&self.fleet.lock_dir, self.held[index].name());
                    }
                    Command::DropLock(index) => self.held[index].lock = None,
                    Command::EndStandby(index) => self.held[index].end_standby(),
                    Command::EndRun { unit, pid, why } => {
                        if let Some(supervisor) = &self.held[unit].supervisor {
                            supervisor.end_run(pid, why);
                        }
                    }
                    Command::Say(note) => self.events.note(&note),
                }
            }
            if started {
                inputs.push_back(Input::Tick);
            }
        }
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
                Ok(request) => events.note(&Note::StopRelayed {
                    requester: request.requester(),
                    name: request.name.clone(),
                }),
                Err(what) => events.note(&Note::Relay { what }),
            },
        );
        if let Some(Err(e)) = relay {
            self.events.note(&Note::Relay {
                what: format!("cannot watch etcd for stop requests from other hosts: {e}"),
            });
        }
    }

    fn stop_all_requested(&mut self, mailbox: &Mailbox) -> Option<Grace> {
        if !mailbox.may_have(&format!("{MASTER_LOCK_NAME}.stop")) {
            return None;
        }
        let request = StopRequest::read(&self.fleet.lock_dir, MASTER_LOCK_NAME)?;
        if let Some(why) = &request.unreadable {
            self.events.note(&Note::UnreadableStop {
                name: None,
                why: why.clone(),
            });
        }
        self.events.note(&Note::StopAllRequested {
            requester: request.requester(),
        });
        Some(Grace::Given(request.time_left(Duration::from_secs(1))))
    }

    /// Stop requests for one component, for the core (which waits while a stop of it,
    /// or of a watchdog's brain, runs: the request stays in the lock dir meanwhile).
    fn take_stop_requests(&mut self, mailbox: &Mailbox) -> Result<(), ToolError> {
        for index in 0..self.held.len() {
            if !self.desk.takes_requests(index) {
                continue;
            }
            let component = &self.held[index].component;
            let name = component.lock_name.clone();
            if !mailbox.may_have(&format!("{name}.stop")) {
                continue;
            }
            let Some(request) = StopRequest::read(&self.fleet.lock_dir, &name) else {
                continue;
            };
            if let Some(why) = &request.unreadable {
                self.events.note(&Note::UnreadableStop {
                    name: Some(name),
                    why: why.clone(),
                });
            }
            let grace = Grace::Given(request.time_left(component.stop_timeout));
            let requester = request.requester();
            self.step(Input::StopRequest {
                unit: index,
                requester,
                grace,
            })?;
        }
        Ok(())
    }

    /// Start and restart requests: each read once and removed, then handed to the core
    /// with whether its requester still runs (one that has died is not served).
    fn take_control_requests(&mut self, mailbox: &Mailbox) -> Result<(), ToolError> {
        for index in 0..self.held.len() {
            for action in Action::ALL {
                if !self.desk.takes_requests(index) {
                    break;
                }
                let name = self.held[index].name().to_string();
                if !mailbox.may_have(&ControlRequest::file_name(&name, action)) {
                    continue;
                }
                let Some(read) = ControlRequest::read(&self.fleet.lock_dir, &name, action) else {
                    continue;
                };
                let _ = ControlRequest::remove(&self.fleet.lock_dir, &name, action);
                let request = match read {
                    Ok(request) => request,
                    Err(why) => {
                        self.events.note(&Note::UnusableRequest { why });
                        continue;
                    }
                };
                let requester = request
                    .requested_by
                    .map_or_else(|| "someone".to_string(), |r| format!("pid {}", r.pid));
                let alive = request
                    .requested_by
                    .is_none_or(|who| self.probe.is_alive(who));
                self.step(Input::Request {
                    unit: index,
                    action,
                    id: request.id,
                    requester,
                    alive,
                })?;
            }
        }
        Ok(())
    }

    /// Writes `MASTER_LAUNCH.state` when anything in it changed.
    fn publish(&mut self) {
        let components = self.desk.view();
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
                self.events.note(&Note::CannotPublish { why: why.clone() });
                self.publish_error = Some(why);
            }
            return;
        }
        self.publish_error = None;
        self.published = Some(state.components);
    }
}

/// Carrying out the core's commands: starts, standbys, stops, lock checks.
impl Orchestrator<'_> {
    /// Stops these units with the stop engine on a thread of its own; removes the
    /// stop request of unit `request` once they are stopped.
    fn stop_units(&mut self, targets: Vec<usize>, grace: Grace, request: Option<usize>) {
        let supervisors: Vec<Arc<Supervisor>> = targets
            .iter()
            .filter_map(|&i| self.held[i].supervisor.clone())
            .collect();
        let request = request.map(|i| self.held[i].name().to_string());
        let (events, tx, lock_dir) = (
            self.events.clone(),
            self.tx.clone(),
            self.fleet.lock_dir.clone(),
        );
        self.stops.retain(|t| !t.is_finished());
        self.stops.push(std::thread::spawn(move || {
            stop_all(&supervisors, grace, &Cutoff::default(), &events);
            if let Some(name) = request {
                let _ = StopRequest::remove(&lock_dir, &name);
            }
            let _ = tx.send(Event::Stopped(targets));
        }));
    }

    /// Takes its lock (the first start's, or now, with the pre-flight), and starts
    /// supervising it. Says how that went; only a failure of the first start is an
    /// error.
    fn start_unit(&mut self, index: usize) -> Result<Begun, ToolError> {
        let first_start = self.held[index].lock.is_some();
        let lock = match self.held[index].lock.take() {
            Some(lock) => lock,
            None => match self.take_lock(index) {
                Ok(lock) => lock,
                Err(not_taken) => return Ok(self.not_taken(index, not_taken)),
            },
        };
        match self.supervise(index, lock) {
            Ok(supervisor) => {
                self.held[index].supervisor = Some(Arc::new(supervisor));
                Ok(Begun::Supervising)
            }
            Err(error) if first_start => Err(error),
            Err(error) => Ok(Begun::CannotStart {
                why: error.to_string(),
            }),
        }
    }

    fn not_taken(&mut self, index: usize, not_taken: NotTaken) -> Begun {
        match not_taken {
            NotTaken::Elsewhere(holder) => {
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
                    "stands by: {host} holds it{pid}; starts here as soon as its key {key} is \
                     free"
                );
                self.stand_by(index, &key, reason)
            }
            NotTaken::Unreachable { key, why } => {
                let reason = format!(
                    "stands by: {why}; starts here once etcd answers and its key {key} is free"
                );
                self.stand_by(index, &key, reason)
            }
            NotTaken::StopRequested(request) => Begun::StopRequested {
                requester: request.requester(),
            },
            NotTaken::No(outcome, why) => Begun::NotTaken { outcome, why },
        }
    }

    /// `[cluster]`: another host holds its key. It stays wanted and waits, on a thread,
    /// for the key to be free (etcd pushes the deletion); requests meanwhile are refused.
    /// Also when etcd cannot be reached (a partitioned host after fencing): it waits
    /// until etcd answers and the key is free.
    fn stand_by(&mut self, index: usize, key: &str, reason: String) -> Begun {
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
        match watch {
            Some(Ok(_)) => {
                self.held[index].standby = Some(waiting);
                Begun::StandingBy { reason }
            }
            Some(Err(e)) => Begun::WatchFailed {
                reason,
                why: format!("cannot watch its key {key}: {e}"),
            },
            // A holder on another host without a cluster: cannot happen.
            None => Begun::NoCluster { reason },
        }
    }

    /// A later start's lock and pre-flight: refused when someone else holds the lock
    /// or a copy runs without it; with `[cluster]`, another host may hold the key.
    fn take_lock(&mut self, index: usize) -> Result<HeldLock, NotTaken> {
        let component = &self.held[index].component;
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
        let component = self.held[index].component.clone();
        let log = Log::open(
            &self
                .fleet
                .log_dir
                .join(format!("{}.log", component.lock_name)),
            false,
        )?
        .keeping(self.fleet.log_files_kept);
        let tx = self.tx.clone();
        let launch = Launch {
            env: fleet_env(self.fleet, &component, &lock),
            log,
            events: self.events.clone(),
            report: Arc::new(move |report| {
                let _ = tx.send(Event::Supervision(index, report));
            }),
            runs: self.held[index].runs.clone(),
            guard: self.held[index].watchdog.map(|w| self.held[w].runs.clone()),
            guarded: self
                .held
                .iter()
                .filter(|u| u.watchdog == Some(index))
                .map(|u| u.runs.clone())
                .collect(),
        };
        Ok(Supervisor::start(component, lock, launch))
    }

    /// DESIGN.md rules 7 and 17: on Linux anyone can unlink a lock file, or the whole
    /// lock folder. Every held lock whose file has gone is taken and recorded again by
    /// its own check (a component's machine-wide lock kept anyone else out meanwhile),
    /// and that is logged loudly. If the orchestrator's own file cannot be taken back
    /// that way, it is acquired afresh, so that tools can find it (and a second
    /// master-launch cannot start beside it).
    fn verify_locks(&mut self) {
        for unit in &self.held {
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
                self.events.note(&Note::MasterLockAgain(Ok(())));
            }
            Ok(Acquire::Held(holder)) => self
                .events
                .note(&Note::MasterLockAgain(Err(holder.to_string()))),
            Err(e) => self.events.note(&Note::MasterLockAgain(Err(e.to_string()))),
        }
    }

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
                self.events.note(&Note::LockRetaken {
                    name: name.to_string(),
                    path: retaken.path.display().to_string(),
                    retaken: retaken.to_string(),
                });
                Ok(())
            }
            Err(lost) => {
                self.events.note(&Note::LockLost {
                    lost: lost.to_string(),
                });
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

/// Stops supervised components with the stop engine: brains, then watchdogs, then
/// globals; in parallel within a stage; graceful, then forced through each child's
/// binding. Every supervision thread has ended when it returns.
pub fn stop_all(supervisors: &[Arc<Supervisor>], grace: Grace, cutoff: &Cutoff, events: &Events) {
    let targets: Vec<&Supervisor> = supervisors.iter().map(|s| &**s).collect();
    stop_in_order(targets, grace, cutoff, &mut (), &mut EventObserver(events));
    let mut in_stop_order: Vec<&Arc<Supervisor>> = supervisors.iter().collect();
    in_stop_order.sort_by_key(|s| Stage::of(s.component.role));
    // Every child was asked, forced and verified by the engine; a supervision that still
    // has not ended waits for a process that does not exit even when killed (stuck in
    // the kernel). It is named, and left: master-launch exits, which releases its locks
    // and (Windows) closes the child's job.
    let deadline = Instant::now() + JOIN_BOUND;
    for supervisor in in_stop_order {
        if !finished_by(deadline, || supervisor.is_finished()) {
            let who = Stoppable::name(&&**supervisor);
            events.line(
                "",
                &format!(
                    "{who} did not end {} s after it was forced (a process stuck in the \
                     system?); master-launch exits without waiting for it",
                    JOIN_BOUND.as_secs()
                ),
            );
            continue;
        }
        if let Some(outcome) = supervisor.join() {
            let name = &supervisor.component.lock_name;
            let outcome = match outcome {
                Outcome::Stopped => "Stopped",
                Outcome::Finished { .. } => "Finished",
                Outcome::GaveUp { .. } => "GaveUp",
            };
            events.note(&Note::StoppedAs {
                name: name.clone(),
                outcome,
            });
        }
    }
}

/// How long the end of the stop waits for supervision threads to finish after the stop
/// engine is done: the engine already waited for every process (and verified the forced
/// ones), so this only catches a process that cannot end.
const JOIN_BOUND: Duration = Duration::from_secs(5);

/// Whether `done` holds by `deadline`, looking every 20 ms.
fn finished_by(deadline: Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the orchestrator's log records of a stop.
struct EventObserver<'l>(&'l Events);

impl StopObserver for EventObserver<'_> {
    fn forced(&mut self, name: &str, how: &str) {
        self.0.note(&Note::Forced {
            name: name.to_string(),
            how: how.to_string(),
        });
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
