//! One thread per managed component: it holds the component's lock for as long as the
//! component should run, starts the child, waits for it (blocking: no polling), and
//! restarts it with backoff, all under the same lock, so nobody can slip in between.
//!
//! Stopping: [`Supervisor::request_stop`] sets the stop flag and asks the child to stop
//! (SIGTERM / CTRL_BREAK); the thread sees the child exit, does not restart it, and
//! releases the lock. [`Supervisor::force`] kills it through its binding. The child
//! lives in a [`child::Slot`] whose lock the spawn holds while it checks the stop flag,
//! so a stop can never miss a child that is being started.

use std::collections::VecDeque;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockcore::cluster::{Fence, FenceStage, FenceWatch};
use lockcore::config::RestartPolicy;
use lockcore::{
    Component, HeldLock, LockLost, LockWatcher, ProcessIdentity, ProcessProbe, Retaken, Stage,
    Stoppable,
};

use crate::child;
use crate::core::{Note, Sink};
use crate::events::Events;
use crate::notify::{self, Word};
use lockcore::config::Readiness;
use lockcore::logs::Log;

const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// The second delay when the first restart was immediate: backoff starts from here.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Failures are counted over this window; a run this long resets the backoff.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long [`Supervisor::start`] waits for the first start attempt, so that the
/// orchestrator's start order is the order in which processes really start.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(10);

/// How a supervised component ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request.
    Stopped,
    /// Exited, and its restart policy says not to restart it.
    Finished { last_exit: String, success: bool },
    /// Failed too often (or, with `restart = "never"`, could not start): given up.
    GaveUp { failures: usize, last_exit: String },
}

/// What a supervision thread tells the orchestrator, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The child runs.
    Started { pid: u32 },
    /// It will be started again after `delay`; `attempt` counts restarts in a row.
    Restarting {
        attempt: u32,
        delay: Duration,
        last_exit: String,
    },
    /// Supervision has ended and the lock is released.
    Ended(Outcome),
    /// The child `pid` said this on its notify channel ([`crate::notify`]).
    Said { pid: u32, word: Word },
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    /// The running child, by identity, with what binds it.
    child: child::Slot,
    /// Set just before the thread releases the lock: a lock file that vanishes after
    /// this is our own release, not a loss.
    releasing: AtomicBool,
    /// The run (pid) to count as failed whatever its exit, and why: it was ended as
    /// hung ([`Supervisor::end_run`]).
    failed_run: Arc<Mutex<Option<(u32, String)>>>,
    /// Wakes a backoff sleep early when a stop is requested.
    wake: Condvar,
    wake_lock: Mutex<()>,
}

impl Shared {
    /// No restart from now on; a backoff sleep ends at once.
    fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }
}

/// A running supervision thread for one component.
#[derive(Debug)]
pub struct Supervisor {
    pub component: Component,
    shared: Arc<Shared>,
    /// Taken by [`Supervisor::join`].
    thread: Mutex<Option<JoinHandle<Outcome>>>,
    /// Checks from the orchestrator's thread that the lock file is still ours.
    watcher: Option<LockWatcher>,
    /// The launch's `runs` flag, for [`Supervisor::end_run`].
    runs: Arc<AtomicBool>,
}

/// What the child is started with, besides the component's own settings.
pub struct Launch {
    pub env: Vec<(String, String)>,
    /// The child's own log.
    pub log: Log,
    /// The orchestrator's log (and the event log, and alerts).
    pub events: Events,
    /// Told what happens: started, restarting, ended (once, last, for whatever reason).
    pub report: Arc<dyn Fn(Report) + Send + Sync>,
    /// True while this component's child runs (a brain's guard reads its watchdog's);
    /// for a watchdog with `ready = "notify"`, only while it says it is ready
    /// (DESIGN.md rule 15: it guards only then).
    pub runs: Arc<AtomicBool>,
    /// For a brain that needs its watchdog (DESIGN.md rule 13): the watchdog's `runs`.
    pub guard: Option<Arc<AtomicBool>>,
    /// For a watchdog: the `runs` of the brains that need it, which self-fencing stops
    /// first (DESIGN.md rule 13).
    pub guarded: Vec<Arc<AtomicBool>>,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts supervising: returns once the first start attempt has been made (the
    /// child runs, or could not be started), so components start in the order asked.
    pub fn start(component: Component, lock: HeldLock, launch: Launch) -> Supervisor {
        let shared = Arc::new(Shared::default());
        let watcher = lock.watcher().ok();
        if let Some(watch) = lock.fence_watch() {
            let (shared, events) = (shared.clone(), launch.events.clone());
            let name = component.lock_name.clone();
            let (role, guarded) = (component.role, launch.guarded.clone());
            std::thread::Builder::new()
                .name(format!("fence {name}"))
                .spawn(move || {
                    let stage = || match role {
                        lockcore::Role::Brain => FenceStage::Brain,
                        _ => FenceStage::Guard {
                            brains_down: guarded.iter().all(|b| !b.load(Ordering::SeqCst)),
                        },
                    };
                    fence_child(&name, &watch, stage, &shared, &events);
                })
                .unwrap_or_else(|e| panic!("cannot start a thread: {e}"));
        }
        let runs = launch.runs.clone();
        let (attempted, first_attempt) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = {
            let (component, shared) = (component.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("supervise {}", component.lock_name))
                .spawn(move || {
                    let mut lock = lock;
                    let outcome = supervise_through_panics(
                        &component, &mut lock, &launch, &shared, &attempted,
                    );
                    shared.releasing.store(true, Ordering::SeqCst);
                    drop(lock);
                    let _ = attempted.try_send(());
                    (launch.report)(Report::Ended(outcome.clone()));
                    outcome
                })
                .unwrap_or_else(|e| panic!("cannot start a thread: {e}"))
        };
        let _ = first_attempt.recv_timeout(FIRST_ATTEMPT_WAIT);
        Supervisor {
            component,
            shared,
            thread: Mutex::new(Some(thread)),
            watcher,
            runs,
        }
    }

    /// Whether the lock file is still the one held (DESIGN.md rule 7: on Linux anyone
    /// can unlink it, or the whole lock folder); a file that has gone is taken and
    /// recorded again ([`Retaken`], to be reported). Only meaningful while the component
    /// runs; our own release is not a loss (the flag is set before the file goes, and
    /// read after the check).
    pub fn verify_lock(&self) -> Result<Option<Retaken>, LockLost> {
        let Some(watcher) = &self.watcher else {
            return Ok(None);
        };
        match watcher.check() {
            Err(_) if self.shared.releasing.load(Ordering::SeqCst) => Ok(None),
            checked => checked,
        }
    }

    /// Marks the component as stopping and asks its child to stop gracefully.
    pub fn request_stop(&self) {
        self.shared.mark_stopping();
        self.shared.child.ask_to_stop();
    }

    /// Ends the run `pid` as failed (it is hung): asks it to stop, forces it after its
    /// own stop timeout if it is still that run; supervision goes on and restarts it
    /// as after a crash. A run that has ended meanwhile is left alone.
    pub fn end_run(&self, pid: u32, why: String) {
        if self.shared.child.identity().map(|c| c.pid) != Some(pid) {
            return;
        }
        *locked(&self.shared.failed_run) = Some((pid, why));
        if self.component.role == lockcore::Role::Watchdog {
            // It no longer guards: a brain restarting now must not start.
            self.runs.store(false, Ordering::SeqCst);
        }
        self.shared.child.ask_to_stop_if(pid);
        let (shared, grace) = (self.shared.clone(), self.component.stop_timeout);
        let _ = std::thread::Builder::new()
            .name(format!("end {}", self.component.lock_name))
            .spawn(move || {
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if shared.child.identity().map(|c| c.pid) != Some(pid) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                shared.child.force_if(pid);
            });
    }

    /// Kills the running child and what it started, through its binding; returns the
    /// child it killed, if one was running.
    pub fn force(&self) -> Option<ProcessIdentity> {
        self.shared.child.force()
    }

    pub fn is_finished(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Waits for supervision to end; `None` if it was joined before.
    pub fn join(&self) -> Option<Outcome> {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(thread.join().unwrap_or(Outcome::Stopped))
    }
}

/// The engine stops a supervised component by stopping its supervision: the child is
/// asked, waited for, forced through its binding, and not restarted.
impl Stoppable<()> for &Supervisor {
    fn name(&self) -> String {
        match self.shared.child.identity() {
            Some(child) => format!("{} (pid {})", self.component.lock_name, child.pid),
            None => self.component.lock_name.clone(),
        }
    }

    fn stage(&self) -> Stage {
        Stage::of(self.component.role)
    }

    fn own_timeout(&self) -> Duration {
        self.component.stop_timeout
    }

    fn ask(&mut self, _: &mut ()) -> lockcore::stop_engine::Asking {
        self.request_stop();
        lockcore::stop_engine::Asking::Done("asked to stop".into())
    }

    fn is_stopped(&mut self, _: &mut ()) -> bool {
        self.is_finished()
    }

    fn force(&mut self, _: &mut ()) -> String {
        match Supervisor::force(self) {
            Some(child) => format!("killed pid {} and everything it started", child.pid),
            None => "nothing running to kill".into(),
        }
    }
}

/// How many times supervision of one component may fail with a bug (a panic) before it
/// is given up.
const PANICS_BEFORE_GIVING_UP: u32 = 3;

/// [`supervise`], surviving a bug in it. A panic must not leave a component neither
/// running nor reported, nor end this thread (on Linux the child's parent-death signal
/// follows the thread that spawned it): whatever ran is killed through its binding,
/// the panic is logged loudly, and supervision starts again under the same lock, the
/// rest of the desk untouched. A bug that repeats gives the component up, loudly.
fn supervise_through_panics(
    component: &Component,
    lock: &mut HeldLock,
    launch: &Launch,
    shared: &Shared,
    attempted: &std::sync::mpsc::SyncSender<()>,
) -> Outcome {
    let name = &component.lock_name;
    let mut panics = 0;
    loop {
        // After a panic the first start is a restart: nobody checked for copies.
        let first_start = if panics == 0 {
            FirstStart::CheckedByCaller
        } else {
            FirstStart::CheckHere
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            supervise(component, lock, launch, shared, attempted, first_start)
        }));
        let panic = match run {
            Ok(outcome) => return outcome,
            Err(panic) => panic,
        };
        panics += 1;
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        shared.child.abandon();
        launch.runs.store(false, Ordering::SeqCst);
        if shared.stopping.load(Ordering::SeqCst) {
            return Outcome::Stopped;
        }
        if panics >= PANICS_BEFORE_GIVING_UP {
            let last_exit = format!("a bug in supervision: {what}");
            launch.events.note(&Note::GivenUp {
                name: name.clone(),
                failures: panics as usize,
                last_exit: last_exit.clone(),
                line: format!(
                    "{name}: BUG: supervision failed {panics} time(s) ({what}); GIVING UP on it. \
                     Please report this. Start it again with `master-launch start {name}`"
                ),
                fix: format!("report the bug; start it again with `master-launch start {name}`"),
                duplicate: false,
            });
            return Outcome::GaveUp {
                failures: panics as usize,
                last_exit,
            };
        }
        launch.events.line(
            "",
            &format!(
                "{name}: BUG: supervision failed ({what}); what it ran was killed; \
                 supervising it again under the same lock"
            ),
        );
    }
}

/// Self-fencing (`[cluster]`): while the lock is held, a lease that cannot be renewed
/// stops the child before it can end and another machine can take the key: asked at
/// TTL/2 without a renewal, forced at TTL minus the safety margin. Supervision then
/// ends as if asked, releasing the lock and key; the orchestrator may start it again
/// only through a fresh take of both. Ends when the lock is released.
fn fence_child(
    name: &str,
    watch: &FenceWatch,
    stage: impl Fn() -> FenceStage,
    shared: &Shared,
    events: &Events,
) {
    let (mut asked, mut forced) = (false, false);
    let say = |what: &str| {
        events.note(&Note::Fencing {
            name: name.to_string(),
            reason: watch.reason(),
            what: what.to_string(),
        });
    };
    while !shared.releasing.load(Ordering::SeqCst) && !forced {
        match watch.fence(stage()) {
            Fence::Keep => {}
            Fence::AskStop if !asked => {
                asked = true;
                say("asking it to stop");
                shared.mark_stopping();
                shared.child.ask_to_stop();
            }
            Fence::AskStop => {}
            Fence::Force => {
                forced = true;
                say("forcing it");
                shared.mark_stopping();
                shared.child.force();
            }
        }
        std::thread::sleep(FENCE_POLL);
    }
}

/// How often the fencing thread looks at the lease: small against the safety margin
/// (TTL/4, at least 500 ms).
const FENCE_POLL: Duration = Duration::from_millis(20);

/// Whether the copy check of rule 14 was made for the first start of a supervision.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstStart {
    /// Under the lock, by the orchestrator (or `run`), just before.
    CheckedByCaller,
    /// Not made: a supervision started again after a panic.
    CheckHere,
}

fn supervise(
    component: &Component,
    lock: &mut HeldLock,
    launch: &Launch,
    shared: &Shared,
    attempted: &std::sync::mpsc::SyncSender<()>,
    first_start: FirstStart,
) -> Outcome {
    let name = &component.lock_name;
    let mut backoff = Backoff::new(component);
    let mut probe = ProcessProbe::new().ok();
    let mut first = true;
    loop {
        // DESIGN.md rule 13: a brain is started only while its watchdog runs. A start
        // or restart while the watchdog is down ends supervision instead, and the
        // orchestrator starts the brain again once its watchdog runs. The first start
        // is checked too: the orchestrator saw the watchdog running before it took
        // the brain's lock, and with `[cluster]` that take can wait on etcd for
        // seconds, long enough for the watchdog to be fenced meanwhile.
        if launch
            .guard
            .as_ref()
            .is_some_and(|g| !g.load(Ordering::SeqCst))
        {
            let what = if first {
                "not started"
            } else {
                "not restarted"
            };
            launch.events.line(
                "",
                &format!("{name}: {what} while its watchdog is not running"),
            );
            return Outcome::Stopped;
        }
        // DESIGN.md rule 14: before a restart, no other copy of the component runs.
        // The first start was checked under the lock by the orchestrator (or `run`).
        let checked = first && first_start == FirstStart::CheckedByCaller;
        if !checked && let Some(outcome) = refuse_beside_a_copy(component, launch, &mut probe) {
            return outcome;
        }
        first = false;
        let started = Instant::now();
        let mut command = command_for(component, launch);
        let channel = match notify::Channel::new() {
            Ok(channel) => Some(channel),
            Err(e) => {
                launch.events.line(
                    "",
                    &format!("{name}: cannot make its notify channel ({e}); it cannot say ready"),
                );
                None
            }
        };
        let mut spawn = |command: &mut Command| match probe.as_mut() {
            Some(probe) => {
                shared
                    .child
                    .spawn(command, || shared.stopping.load(Ordering::SeqCst), probe)
            }
            None => Err(std::io::Error::other("cannot read the process table")),
        };
        let (spawned, listener) = match channel {
            Some(channel) => {
                let (spawned, listener) = channel.spawn(&mut command, spawn);
                (spawned, Some(listener))
            }
            None => (spawn(&mut command), None),
        };
        let _ = attempted.try_send(());
        let mut running = match spawned {
            Ok(Some(running)) => running,
            Ok(None) => return Outcome::Stopped,
            Err(e) => {
                let why = format!("cannot start {}: {e}", component.command[0]);
                launch.events.line("", &format!("{name}: {why}"));
                if component.restart == RestartPolicy::Never {
                    launch.events.note(&Note::GivenUp {
                        name: name.clone(),
                        failures: 1,
                        last_exit: why.clone(),
                        line: format!(
                            "{name}: GIVING UP: restart = \"never\". Fix it, then start it \
                             again with `master-launch start {name}`"
                        ),
                        fix: format!("fix it, then `master-launch start {name}`"),
                        duplicate: false,
                    });
                    return Outcome::GaveUp {
                        failures: 1,
                        last_exit: why,
                    };
                }
                let next = backoff.next(Instant::now(), Exit::Failed);
                match restart_after(next, component, launch, shared, why) {
                    Some(outcome) => return outcome,
                    None => continue,
                }
            }
        };
        follow_output(&mut running.process, launch);
        let pid = running.pid;
        if let Some(identity) = shared.child.identity()
            && let Err(e) = lock.set_managed(identity, component.command.clone())
        {
            launch
                .events
                .line("", &format!("{name}: cannot update its lock record: {e}"));
        }
        launch.events.note(&Note::Started {
            name: name.clone(),
            pid,
        });
        // A watchdog that says when it is ready guards only from then (rule 15).
        let gated = component.role == lockcore::Role::Watchdog
            && matches!(component.ready, Readiness::Notify { .. });
        launch.runs.store(!gated, Ordering::SeqCst);
        (launch.report)(Report::Started { pid });
        if let Some(listener) = listener {
            let (report, runs) = (launch.report.clone(), launch.runs.clone());
            let failed_run = shared.failed_run.clone();
            listener.follow(name, move |word| {
                // A run ended as hung guards no more, whatever it says meanwhile.
                let hung = || locked(&failed_run).as_ref().is_some_and(|(p, _)| *p == pid);
                if gated {
                    match &word {
                        Word::Ready if !hung() => runs.store(true, Ordering::SeqCst),
                        Word::NotReady(_) => runs.store(false, Ordering::SeqCst),
                        Word::Ready | Word::Alive => {}
                    }
                }
                report(Report::Said { pid, word });
            });
        }
        let ended = shared.child.wait(&mut running);
        launch.runs.store(false, Ordering::SeqCst);
        let how = ended.as_ref().map_or_else(
            |e| format!("could not be waited for: {e}"),
            |ended| describe(ended.status),
        );
        let tree = ended
            .as_ref()
            .map(child::Ended::tree_note)
            .unwrap_or_default();
        launch.events.note(&Note::Exited {
            name: name.clone(),
            pid,
            how: how.clone(),
            tree,
        });
        if shared.stopping.load(Ordering::SeqCst) {
            return Outcome::Stopped;
        }
        // Ended as hung: a failure, whatever it exited with.
        let hung = locked(&shared.failed_run)
            .take()
            .filter(|(hung, _)| *hung == pid)
            .map(|(_, why)| why);
        let how = match &hung {
            Some(why) => format!("hung: {why}; {how}"),
            None => how,
        };
        let success = hung.is_none() && ended.as_ref().is_ok_and(|ended| ended.status.success());
        let restart = match component.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        if !restart {
            launch.events.note(&Note::NotRestarted {
                name: name.clone(),
                policy: format!("{:?}", component.restart),
            });
            return Outcome::Finished {
                last_exit: how,
                success,
            };
        }
        // DESIGN.md rule 14: a tree not known to be gone may still trade.
        if let Ok(ended) = &ended
            && !ended.tree.is_gone()
        {
            let last_exit = format!("exited ({how}){}", ended.tree_note());
            launch.events.note(&Note::GivenUp {
                name: name.clone(),
                failures: 1,
                last_exit: last_exit.clone(),
                line: format!(
                    "{name}: NOT RESTARTED: processes it started may still run, and a second \
                     copy would trade beside them. Find them with `check-procs`, stop them, \
                     then `master-launch start {name}`"
                ),
                fix: format!(
                    "find what it started with `check-procs`, stop it, then `master-launch \
                     start {name}`"
                ),
                duplicate: false,
            });
            return Outcome::GaveUp {
                failures: 1,
                last_exit,
            };
        }
        if started.elapsed() >= FAILURE_WINDOW {
            backoff = Backoff::new(component);
        }
        // `restart = "always"`: a clean exit is no failure; it still backs off, so a
        // program that exits at once cannot spin.
        let exit = if success { Exit::Clean } else { Exit::Failed };
        let next = backoff.next(Instant::now(), exit);
        if let Some(outcome) = restart_after(next, component, launch, shared, how) {
            return outcome;
        }
    }
}

/// Before a restart: a copy of the component that still runs (DESIGN.md rule 14). One
/// in master-launch's own tree is a leftover of ours (a binding that failed): it is
/// ended. Any other runs without the lock (started by hand, or a daemon that escaped a
/// reaper killed from outside): the restart is refused loudly, and the component given
/// up, rather than start a second copy beside it.
fn refuse_beside_a_copy(
    component: &Component,
    launch: &Launch,
    probe: &mut Option<ProcessProbe>,
) -> Option<Outcome> {
    let name = &component.lock_name;
    let probe = probe.as_mut()?;
    let table = probe.table();
    let own = std::process::id();
    let mut strangers = Vec::new();
    for copy in table.find_copies(&component.copy_rule) {
        if table.is_in_tree_of(copy.root.pid, own) {
            probe.kill_tree(copy.root.identity());
            launch.events.line(
                "",
                &format!(
                    "{name}: ended pid {}, a copy left running in master-launch's own tree, \
                     before restarting it",
                    copy.root.pid
                ),
            );
        } else {
            strangers.push(copy.root);
        }
    }
    if strangers.is_empty() {
        return None;
    }
    let pids: Vec<String> = strangers.iter().map(|p| p.pid.to_string()).collect();
    let last_exit = format!(
        "a copy runs without its lock (pid {}: `{}`)",
        pids.join(", "),
        strangers[0].cmd.join(" ")
    );
    launch.events.note(&Note::GivenUp {
        name: name.clone(),
        failures: 1,
        last_exit: last_exit.clone(),
        line: format!(
            "{name}: NOT RESTARTED: {last_exit}; a second copy would trade beside it. \
             Stop it with `safe-shutdown --account ...` or by hand (see `check-procs`), \
             then `master-launch start {name}`"
        ),
        fix: format!(
            "stop the copy with `safe-shutdown --account ...` or by hand (see `check-procs`), \
             then `master-launch start {name}`"
        ),
        duplicate: true,
    });
    Some(Outcome::GaveUp {
        failures: 1,
        last_exit,
    })
}

/// Restart timing: the first restart after a crash is immediate unless
/// `restart_delay_ms` says otherwise; later ones double, capped at
/// [`MAX_RESTART_DELAY`]; failures within [`FAILURE_WINDOW`] count toward giving up.
/// Pure ([`Backoff::next`]); [`restart_after`] carries it out.
struct Backoff {
    delay: Duration,
    attempt: u32,
    failures: VecDeque<Instant>,
    give_up_after: usize,
}

/// How a child exited, as far as restarting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Failed,
    /// `restart = "always"`: a clean exit is no failure; it still backs off, so a
    /// program that exits at once cannot spin.
    Clean,
}

/// What follows an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Start it again after `delay`; `attempt` counts restarts in a row.
    After { delay: Duration, attempt: u32 },
    /// It failed this many times within [`FAILURE_WINDOW`].
    GiveUp { failures: usize },
}

impl Backoff {
    fn new(component: &Component) -> Backoff {
        Backoff::with(component.restart_delay, component.give_up_after)
    }

    fn with(restart_delay: Option<Duration>, give_up_after: u32) -> Backoff {
        Backoff {
            delay: restart_delay
                .unwrap_or(Duration::ZERO)
                .min(MAX_RESTART_DELAY),
            attempt: 0,
            failures: VecDeque::new(),
            give_up_after: give_up_after as usize,
        }
    }

    /// After an exit at `now`: give up (a failure too many within the window), or
    /// start again after the current delay, doubling the next one.
    fn next(&mut self, now: Instant, exit: Exit) -> Next {
        if exit == Exit::Failed {
            self.failures.push_back(now);
            while self
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
            {
                self.failures.pop_front();
            }
            if self.failures.len() >= self.give_up_after {
                return Next::GiveUp {
                    failures: self.failures.len(),
                };
            }
        }
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.delay;
        self.delay = if delay.is_zero() {
            FIRST_BACKOFF
        } else {
            delay.saturating_mul(2)
        }
        .min(MAX_RESTART_DELAY);
        Next::After {
            delay,
            attempt: self.attempt,
        }
    }
}

/// Carries out what [`Backoff::next`] said: gives up, loudly; or says so, reports it,
/// and waits out the delay (a stop cuts it short). `None`: start it again now.
fn restart_after(
    next: Next,
    component: &Component,
    launch: &Launch,
    shared: &Shared,
    last_exit: String,
) -> Option<Outcome> {
    let (delay, attempt) = match next {
        Next::GiveUp { failures } => {
            launch.events.note(&Note::GivenUp {
                name: component.lock_name.clone(),
                failures,
                last_exit: last_exit.clone(),
                line: format!(
                    "{}: GIVING UP after {failures} failures within {} s (last: {last_exit}); the \
                     rest of the desk keeps running. Fix it, then start it again with \
                     `master-launch start {}`",
                    component.lock_name,
                    FAILURE_WINDOW.as_secs(),
                    component.lock_name
                ),
                fix: format!(
                    "fix it (see its log), then `master-launch start {}`",
                    component.lock_name
                ),
                duplicate: false,
            });
            return Some(Outcome::GaveUp {
                failures,
                last_exit,
            });
        }
        Next::After { delay, attempt } => (delay, attempt),
    };
    launch.events.note(&Note::Restarting {
        name: component.lock_name.clone(),
        delay,
        last_exit: last_exit.clone(),
    });
    (launch.report)(Report::Restarting {
        attempt,
        delay,
        last_exit,
    });
    let guard = shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
    let _ = shared
        .wake
        .wait_timeout_while(guard, delay, |_| !shared.stopping.load(Ordering::SeqCst));
    if shared.stopping.load(Ordering::SeqCst) {
        return Some(Outcome::Stopped);
    }
    None
}

/// The component's command with the supervisor's environment and piped output.
fn command_for(component: &Component, launch: &Launch) -> Command {
    let mut command = build_command(component);
    command
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Copies the child's stdout and stderr into its log.
fn follow_output(running: &mut std::process::Child, launch: &Launch) {
    if let Some(out) = running.stdout.take() {
        launch.log.follow("stdout", out);
    }
    if let Some(err) = running.stderr.take() {
        launch.log.follow("stderr", err);
    }
}

/// What every child gets unless fleet.toml sets it: Python writes UTF-8 to its log
/// pipe (on Windows it would use the ANSI code page with `errors='strict'` and crash
/// on the first "→" it prints, cpython #105312), unbuffered so lines reach the log as
/// they happen.
const CHILD_ENV_DEFAULTS: [(&str, &str); 2] =
    [("PYTHONIOENCODING", "utf-8"), ("PYTHONUNBUFFERED", "1")];

/// The component's command, started in its working folder. A relative program path
/// was already resolved against the config's folder, at load time (`lockcore::config`).
pub fn build_command(component: &Component) -> Command {
    // A relative program path was resolved against the config's folder at load time.
    let mut command = child::command(&component.command[0], Stage::of(component.role));
    command
        .args(&component.command[1..])
        .current_dir(&component.cwd)
        .envs(CHILD_ENV_DEFAULTS)
        .envs(&component.env);
    command
}

/// `code 3` or `signal 9`.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("signal {signal}");
        }
    }
    "no exit code".into()
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Each row: the backoff's settings, then the exits (at milliseconds after the
    /// first) and what each is followed by.
    #[test]
    fn backoff_restarts_at_once_then_doubles_capped_and_gives_up_within_the_window() {
        use Exit::{Clean, Failed};
        let after = |delay: u64, attempt: u32| Next::After {
            delay: ms(delay),
            attempt,
        };
        #[allow(clippy::type_complexity)]
        let rows: [(&str, Option<Duration>, u32, Vec<(u64, Exit, Next)>); 5] = [
            (
                "immediate first restart, then 250 ms doubling, given up at the fifth",
                None,
                5,
                vec![
                    (0, Failed, after(0, 1)),
                    (10, Failed, after(250, 2)),
                    (300, Failed, after(500, 3)),
                    (900, Failed, after(1000, 4)),
                    (2000, Failed, Next::GiveUp { failures: 5 }),
                ],
            ),
            (
                "restart_delay_ms is the first delay, and doubles from there",
                Some(ms(1000)),
                5,
                vec![(0, Failed, after(1000, 1)), (1100, Failed, after(2000, 2))],
            ),
            (
                "failures older than the window are forgotten",
                None,
                2,
                vec![(0, Failed, after(0, 1)), (61_000, Failed, after(250, 2))],
            ),
            (
                "clean exits (restart = always) back off but never count",
                None,
                1,
                vec![
                    (0, Clean, after(0, 1)),
                    (10, Clean, after(250, 2)),
                    (20, Failed, Next::GiveUp { failures: 1 }),
                ],
            ),
            (
                "capped at 30 s",
                Some(ms(20_000)),
                99,
                vec![(0, Failed, after(20_000, 1)), (1, Failed, after(30_000, 2))],
            ),
        ];
        let t0 = Instant::now();
        for (what, restart_delay, give_up_after, exits) in rows {
            let mut backoff = Backoff::with(restart_delay, give_up_after);
            for (at, exit, expected) in exits {
                assert_eq!(
                    backoff.next(t0 + ms(at), exit),
                    expected,
                    "{what}, at {at} ms"
                );
            }
        }
    }
}
