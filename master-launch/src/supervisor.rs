//! One thread per managed component: it holds the component's lock for as long as the
//! component should run, starts the child, waits for it (blocking: no polling), and
//! restarts it with backoff, all under the same lock, so nobody can slip in between.
//!
//! Stopping: [`Supervisor::request_stop`] sets the stop flag and asks the child to stop
//! (SIGTERM / CTRL_BREAK); the thread sees the child exit, does not restart it, and
//! releases the lock. The flag and the child's pid share one mutex with the spawn, so a
//! stop can never miss a child that is being started.

use std::collections::VecDeque;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockcore::config::RestartPolicy;
use lockcore::{Component, HeldLock, LockLost, LockWatcher, ProcessProbe};

use crate::child;
use lockcore::logs::Log;

const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// Failures are counted over this window; a run this long resets the backoff.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// How a supervised component ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request.
    Stopped,
    /// Exited and its restart policy says not to restart.
    Finished,
    /// Failed too often; supervision gave up on it.
    GaveUp,
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    /// The running child's pid; also serialises spawning against stopping.
    pid: Mutex<Option<u32>>,
    /// Wakes a backoff sleep early when a stop is requested.
    wake: Condvar,
    wake_lock: Mutex<()>,
}

/// A running supervision thread for one component.
#[derive(Debug)]
pub struct Supervisor {
    pub component: Component,
    shared: Arc<Shared>,
    thread: JoinHandle<Outcome>,
    /// Checks from the orchestrator's thread that the lock file is still ours.
    watcher: Option<LockWatcher>,
}

/// What the child is started with, besides the component's own settings.
pub struct Launch {
    pub env: Vec<(String, String)>,
    /// The child's own log.
    pub log: Log,
    /// The orchestrator's log.
    pub events: Log,
    /// Called once when supervision of this component ends, for whatever reason.
    pub done: Box<dyn Fn() + Send>,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    pub fn start(component: Component, lock: HeldLock, launch: Launch) -> Supervisor {
        let shared = Arc::new(Shared::default());
        let watcher = lock.watcher().ok();
        let thread = {
            let (component, shared) = (component.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("supervise {}", component.lock_name))
                .spawn(move || {
                    let outcome = supervise(&component, lock, &launch, &shared);
                    (launch.done)();
                    outcome
                })
                .unwrap_or_else(|e| panic!("cannot start a thread: {e}"))
        };
        Supervisor {
            component,
            shared,
            thread,
            watcher,
        }
    }

    /// Whether the lock file is still the one held (DESIGN.md rule 7: on Linux anyone
    /// can unlink it). Only meaningful while the component runs.
    pub fn verify_lock(&self) -> Result<(), LockLost> {
        match &self.watcher {
            Some(watcher) if !self.is_finished() => watcher.check(),
            _ => Ok(()),
        }
    }

    /// Marks the component as stopping and asks its child to stop gracefully.
    pub fn request_stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        let pid = *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = pid {
            let _ = child::ask_to_stop(pid);
        }
    }

    /// The running child's pid, if any.
    pub fn pid(&self) -> Option<u32> {
        *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) -> Outcome {
        self.thread.join().unwrap_or(Outcome::Stopped)
    }
}

fn supervise(
    component: &Component,
    mut lock: HeldLock,
    launch: &Launch,
    shared: &Shared,
) -> Outcome {
    let name = &component.lock_name;
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let mut delay = component.restart_delay;
    let mut probe = ProcessProbe::new().ok();
    loop {
        let started = Instant::now();
        // The binding lives to the end of this iteration: on Windows, closing the job
        // then kills anything the child left behind.
        let (mut running, _binding) = {
            let mut pid = shared.pid.lock().unwrap_or_else(|e| e.into_inner());
            if shared.stopping.load(Ordering::SeqCst) {
                return Outcome::Stopped;
            }
            match spawn(component, launch) {
                Ok((running, binding)) => {
                    *pid = Some(running.id());
                    (running, binding)
                }
                Err(e) => {
                    launch
                        .events
                        .line("", &format!("{name}: cannot start: {e}"));
                    drop(pid);
                    match after_failure(component, launch, shared, &mut failures, &mut delay) {
                        Some(outcome) => return outcome,
                        None => continue,
                    }
                }
            }
        };
        let pid = running.id();
        if let Some(identity) = probe.as_mut().and_then(|p| p.identity(pid))
            && let Err(e) = lock.set_managed(identity, component.command.clone())
        {
            launch
                .events
                .line("", &format!("{name}: cannot update its lock record: {e}"));
        }
        launch
            .events
            .line("", &format!("{name}: started, pid {pid}"));
        let status = running.wait();
        *shared.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let how = status.as_ref().map_or_else(
            |e| format!("could not be waited for: {e}"),
            |s| describe(*s),
        );
        launch.events.line("", &format!("{name}: exited ({how})"));
        if shared.stopping.load(Ordering::SeqCst) {
            return Outcome::Stopped;
        }
        let success = status.as_ref().is_ok_and(ExitStatus::success);
        let restart = match component.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        if !restart {
            launch.events.line(
                "",
                &format!("{name}: not restarted (restart = {:?})", component.restart),
            );
            return Outcome::Finished;
        }
        if started.elapsed() >= FAILURE_WINDOW {
            delay = component.restart_delay;
        }
        if let Some(outcome) = after_failure(component, launch, shared, &mut failures, &mut delay) {
            return outcome;
        }
    }
}

/// Counts a failure; gives up, or waits out the backoff (a stop cuts it short).
fn after_failure(
    component: &Component,
    launch: &Launch,
    shared: &Shared,
    failures: &mut VecDeque<Instant>,
    delay: &mut Duration,
) -> Option<Outcome> {
    let now = Instant::now();
    failures.push_back(now);
    while failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
    {
        failures.pop_front();
    }
    if failures.len() >= component.give_up_after as usize {
        launch.events.line(
            "",
            &format!(
                "{}: GIVING UP after {} failures within {} s; the rest of the desk keeps running. \
                 Fix it, then start it again with `master-launch run {}`",
                component.lock_name,
                failures.len(),
                FAILURE_WINDOW.as_secs(),
                component.lock_name
            ),
        );
        return Some(Outcome::GaveUp);
    }
    launch.events.line(
        "",
        &format!(
            "{}: restarting in {} ms",
            component.lock_name,
            delay.as_millis()
        ),
    );
    let guard = shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
    let _ = shared
        .wake
        .wait_timeout_while(guard, *delay, |_| !shared.stopping.load(Ordering::SeqCst));
    *delay = (*delay * 2).min(MAX_RESTART_DELAY);
    if shared.stopping.load(Ordering::SeqCst) {
        return Some(Outcome::Stopped);
    }
    None
}

fn spawn(
    component: &Component,
    launch: &Launch,
) -> std::io::Result<(std::process::Child, child::Binding)> {
    let mut command = build_command(component);
    command
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut running, binding) = child::spawn_bound(&mut command)?;
    if let Some(out) = running.stdout.take() {
        launch.log.follow("stdout", out);
    }
    if let Some(err) = running.stderr.take() {
        launch.log.follow("stderr", err);
    }
    Ok((running, binding))
}

/// The component's command, started in its working folder. A relative program path
/// was already resolved against the config's folder, at load time (`lockcore::config`).
pub fn build_command(component: &Component) -> Command {
    // A relative program path was resolved against the config's folder at load time.
    let mut command = Command::new(&component.command[0]);
    command
        .args(&component.command[1..])
        .current_dir(&component.cwd)
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
