//! `[[alert]]`: commands told about the events that need a person.
//!
//! Each alert command has a thread of its own and a bounded queue: saying an event
//! only offers it to the queues ([`Alerts::send`], never blocking), so a command that
//! hangs or a storm of events never slows supervision. The thread runs the command
//! with the event as JSON on stdin and a one-line summary in `DESK_ALERT_SUMMARY`;
//! kills it at its `timeout_secs` (and logs that); retries a failing one at most
//! twice; coalesces a storm (more than [`STORM_AFTER`] events of one kind and component
//! within [`STORM_WINDOW`]) into one alert whose `covers` says how many it stands for
//! ([`Coalescer`], pure, time passed in). What cannot be delivered is an `alert_failed`
//! event in the event log, and an alert to the other commands.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockcore::Fleet;
use lockcore::config::AlertConfig;
use lockcore::events::{DeskEvent, EventKind};

use crate::events::Events;

/// Events of one kind and component delivered one by one within [`STORM_WINDOW`];
/// more are held and coalesced.
pub const STORM_AFTER: u32 = 5;
pub const STORM_WINDOW: Duration = Duration::from_secs(60);
/// Held events are sent as one alert once none came for this long (or the window ends).
pub const STORM_QUIET: Duration = Duration::from_secs(5);
/// Events waiting for one command; more are dropped, counted and said.
const QUEUE: usize = 64;
/// Attempts per alert: the first and two retries.
const ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// The most of a failing command's stderr kept for the log.
const STDERR_KEPT: usize = 2000;

/// The running alert threads.
#[derive(Debug)]
pub struct Alerts {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    kinds: Vec<EventKind>,
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The command running now, unreaped (killed if it outlives [`Alerts::finish`]).
    running: Slot,
}

/// An alert command while it runs: taken out (and reaped) under the lock, so a kill
/// through it never reaches another process.
pub type Slot = Arc<Mutex<Option<Child>>>;

enum Msg {
    Event(Box<DeskEvent>),
    /// Deliver what is held, then end.
    Finish,
}

/// One alert command, as fleet.toml says it, ready to run.
#[derive(Debug, Clone)]
pub struct Target {
    pub command: Vec<String>,
    pub timeout: Duration,
    pub cwd: PathBuf,
    /// `[[alert]]` at this line of fleet.toml, for messages.
    pub line: usize,
}

impl Target {
    pub fn of(fleet: &Fleet, alert: &AlertConfig) -> Target {
        let cwd = match fleet.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Target {
            command: alert.command.clone(),
            timeout: alert.timeout,
            cwd,
            line: alert.line,
        }
    }

    /// `alert `notify.py` (fleet.toml line 12)`.
    pub fn name(&self) -> String {
        format!(
            "alert `{}` (fleet.toml line {})",
            self.command.join(" "),
            self.line
        )
    }
}

impl Alerts {
    /// A thread per `[[alert]]` of the fleet; what they say of themselves goes to
    /// `events`' logs.
    pub fn start(fleet: &Fleet, events: Events) -> Alerts {
        let mut channels = Vec::new();
        for alert in &fleet.alerts {
            let (tx, rx) = sync_channel::<Msg>(QUEUE);
            channels.push((alert, tx, rx));
        }
        // Each thread may tell the others that it could not deliver.
        let peers: Vec<(Vec<EventKind>, SyncSender<Msg>)> = channels
            .iter()
            .map(|(alert, tx, _)| (alert.kinds.clone(), tx.clone()))
            .collect();
        let mut workers = Vec::new();
        for (index, (alert, tx, rx)) in channels.into_iter().enumerate() {
            let target = Target::of(fleet, alert);
            let dropped = Arc::new(AtomicU64::new(0));
            let running: Slot = Arc::default();
            let others: Vec<(Vec<EventKind>, SyncSender<Msg>)> = peers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, p)| p.clone())
                .collect();
            let thread = {
                let (events, dropped, running) = (events.clone(), dropped.clone(), running.clone());
                std::thread::Builder::new()
                    .name(format!("alert {}", index + 1))
                    .spawn(move || work(&target, &rx, &events, &others, &dropped, &running))
                    .ok()
            };
            workers.push(Worker {
                kinds: alert.kinds.clone(),
                tx,
                dropped,
                thread: Mutex::new(thread),
                running,
            });
        }
        Alerts { workers }
    }

    /// Offers the event to every command that wants its kind; never waits.
    pub fn send(&self, event: DeskEvent) {
        for worker in &self.workers {
            if worker.kinds.contains(&event.kind) {
                offer(&worker.tx, &worker.dropped, event.clone());
            }
        }
    }

    /// Asks each thread to deliver what it holds and end; waits for them at most `limit`
    /// in all; a command still running then is killed (it would outlive the desk).
    pub fn finish(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for worker in &self.workers {
            let _ = worker.tx.try_send(Msg::Finish);
        }
        for worker in &self.workers {
            let thread = worker
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let Some(thread) = thread else { continue };
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else if let Some(child) = locked(&worker.running).as_mut() {
                os::kill(child);
            }
        }
    }
}

fn offer(tx: &SyncSender<Msg>, dropped: &AtomicU64, event: DeskEvent) {
    if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Event(Box::new(event))) {
        dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// One alert command's thread: coalesce, deliver, say what failed.
fn work(
    target: &Target,
    rx: &Receiver<Msg>,
    events: &Events,
    others: &[(Vec<EventKind>, SyncSender<Msg>)],
    dropped: &AtomicU64,
    running: &Slot,
) {
    let mut coalescer = Coalescer::default();
    let deliver = |event: &DeskEvent| {
        let outcome = deliver(target, event, running);
        if let Delivery::Failed { why, .. } = &outcome {
            let message = format!(
                "{}: not delivered ({}): {why}",
                target.name(),
                event.summary()
            );
            events.line("", &message);
            // A failure to tell of a failure is logged, not passed on (no ping-pong).
            if event.kind != EventKind::AlertFailed {
                let mut failed = DeskEvent::new(EventKind::AlertFailed, message);
                failed.component.clone_from(&event.component);
                failed.account.clone_from(&event.account);
                failed.reason = Some(why.clone());
                failed.fix = Some(format!(
                    "check the command with `master-launch alert-test`; fleet.toml line {}",
                    target.line
                ));
                events.record(&failed);
                for (kinds, tx) in others {
                    if kinds.contains(&EventKind::AlertFailed) {
                        let _ = tx.try_send(Msg::Event(Box::new(failed.clone())));
                    }
                }
            }
        }
    };
    loop {
        let wait = coalescer.next_due(Instant::now()).unwrap_or(STORM_QUIET);
        let msg = rx.recv_timeout(wait);
        let now = Instant::now();
        match msg {
            Ok(Msg::Event(event)) => {
                for event in coalescer.offer(now, *event) {
                    deliver(&event);
                }
            }
            Ok(Msg::Finish) | Err(RecvTimeoutError::Disconnected) => {
                for event in coalescer.flush() {
                    deliver(&event);
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        for event in coalescer.due(Instant::now()) {
            deliver(&event);
        }
        let lost = dropped.swap(0, Ordering::SeqCst);
        if lost > 0 {
            let message = format!(
                "{}: {lost} alert(s) dropped: its queue of {QUEUE} was full (the command is slow)",
                target.name()
            );
            events.line("", &message);
            let mut failed = DeskEvent::new(EventKind::AlertFailed, message);
            failed.reason = Some(format!("{lost} dropped: queue full"));
            events.record(&failed);
        }
    }
}

/// Storm coalescing, pure: per kind and component, the first [`STORM_AFTER`] events
/// within [`STORM_WINDOW`] pass; later ones are held and given as one event (the last,
/// with `covers` = how many) once none came for [`STORM_QUIET`], the window ends, or
/// at the end.
#[derive(Debug, Default)]
pub struct Coalescer {
    windows: HashMap<(EventKind, Option<String>), Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    passed: u32,
    held: u64,
    last: Option<(Instant, DeskEvent)>,
}

impl Coalescer {
    /// The event at `now`: what to deliver now (a summary of a window that ended, and
    /// the event itself unless it is held).
    pub fn offer(&mut self, now: Instant, event: DeskEvent) -> Vec<DeskEvent> {
        let mut out = Vec::new();
        let key = (event.kind, event.component.clone());
        if let Some(window) = self.windows.get_mut(&key)
            && now.duration_since(window.start) >= STORM_WINDOW
        {
            out.extend(window.summary());
            self.windows.remove(&key);
        }
        let window = self.windows.entry(key).or_insert(Window {
            start: now,
            passed: 0,
            held: 0,
            last: None,
        });
        if window.passed < STORM_AFTER {
            window.passed += 1;
            out.push(event);
        } else {
            window.held += 1;
            window.last = Some((now, event));
        }
        out
    }

    /// Summaries due at `now`: held events quiet for [`STORM_QUIET`], or whose window
    /// ended.
    pub fn due(&mut self, now: Instant) -> Vec<DeskEvent> {
        let mut out = Vec::new();
        self.windows.retain(|_, window| {
            let ended = now.duration_since(window.start) >= STORM_WINDOW;
            let quiet = window
                .last
                .as_ref()
                .is_some_and(|(at, _)| now.duration_since(*at) >= STORM_QUIET);
            if ended || quiet {
                out.extend(window.summary());
            }
            !ended
        });
        out
    }

    /// How long until [`Coalescer::due`] may have something.
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.windows
            .values()
            .filter_map(|w| w.last.as_ref().map(|(at, _)| *at + STORM_QUIET))
            .map(|at| at.saturating_duration_since(now))
            .min()
    }

    /// Every held event's summary, at the end.
    pub fn flush(&mut self) -> Vec<DeskEvent> {
        self.windows
            .drain()
            .filter_map(|(_, mut w)| w.summary())
            .collect()
    }
}

impl Window {
    /// The held events as one (the last, with `covers`); nothing held: `None`.
    fn summary(&mut self) -> Option<DeskEvent> {
        let (_, mut event) = self.last.take()?;
        let held = std::mem::take(&mut self.held);
        event.covers = Some(held);
        event.message = format!(
            "{held} more `{}` event(s) of {} coalesced into this alert (a storm: more than \
             {STORM_AFTER} within {} s); the last: {}",
            event.kind.as_str(),
            event.component.as_deref().unwrap_or("the desk"),
            STORM_WINDOW.as_secs(),
            event.message
        );
        Some(event)
    }
}

/// How an alert went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered { attempts: u32 },
    Failed { attempts: u32, why: String },
}

/// Runs the command for `event`: up to [`ATTEMPTS`] times while it fails; one killed at
/// its timeout is not tried again (it would hold the queue for as long again).
pub fn deliver(target: &Target, event: &DeskEvent, running: &Slot) -> Delivery {
    let json = serde_json::to_string(event).unwrap_or_default() + "\n";
    let summary = event.summary();
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS {
        match run_once(target, &json, &summary, running) {
            Ok(()) => return Delivery::Delivered { attempts: attempt },
            Err(Failure::TimedOut(text)) => {
                return Delivery::Failed {
                    attempts: attempt,
                    why: text,
                };
            }
            Err(Failure::Failed(text)) => why = text,
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(RETRY_AFTER);
        }
    }
    Delivery::Failed {
        attempts: ATTEMPTS,
        why: format!("{why} (tried {ATTEMPTS} times)"),
    }
}

enum Failure {
    TimedOut(String),
    Failed(String),
}

fn run_once(target: &Target, json: &str, summary: &str, running: &Slot) -> Result<(), Failure> {
    let Some((program, args)) = target.command.split_first() else {
        return Err(Failure::Failed("empty command".into()));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&target.cwd)
        .env("DESK_ALERT_SUMMARY", summary)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    os::own_group(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| Failure::Failed(format!("cannot start {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let json = json.to_string();
        // A command that does not read its stdin must not block this thread.
        std::thread::spawn(move || {
            let _ = stdin.write_all(json.as_bytes());
        });
    }
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.take(STDERR_KEPT as u64).read_to_end(&mut text);
            let _ = err_tx.send(String::from_utf8_lossy(&text).trim().to_string());
        });
    }
    let deadline = Instant::now() + target.timeout;
    *locked(running) = Some(child);
    let status = loop {
        let mut slot = locked(running);
        let Some(child) = slot.as_mut() else {
            return Err(Failure::Failed("ended from outside".into()));
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                *slot = None;
                break status;
            }
            Ok(None) if Instant::now() >= deadline => {
                os::kill(child);
                let _ = child.wait();
                *slot = None;
                return Err(Failure::TimedOut(format!(
                    "still running after its timeout of {} s: killed",
                    target.timeout.as_secs()
                )));
            }
            Ok(None) => {
                drop(slot);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                os::kill(child);
                let _ = child.wait();
                *slot = None;
                return Err(Failure::Failed(format!("cannot wait for it: {e}")));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let stderr = err_rx
        .recv_timeout(Duration::from_millis(200))
        .unwrap_or_default();
    let how = crate::supervisor::describe(status);
    Err(Failure::Failed(if stderr.is_empty() {
        format!("exited ({how})")
    } else {
        format!("exited ({how}): {}", one_line(&stderr))
    }))
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The sample `master-launch alert-test` sends.
pub fn sample(config: &Path) -> DeskEvent {
    let mut event = DeskEvent::new(
        EventKind::AlertTest,
        format!(
            "a test alert from `master-launch alert-test` ({}): if you read this, alerts \
             reach you",
            config.display()
        ),
    );
    event.component = Some("ALERT_TEST".into());
    event.fix = Some("nothing to fix: this is a test".into());
    event
}

/// Ending an alert command and what it started.
#[cfg(unix)]
mod os {
    use std::os::unix::process::CommandExt;

    /// Its own process group, so that a kill at its timeout ends what it started too.
    pub fn own_group(command: &mut std::process::Command) {
        command.process_group(0);
    }

    pub fn kill(child: &mut std::process::Child) {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
    }
}

/// Ending an alert command: the process itself (what it started is left to it).
#[cfg(windows)]
mod os {
    use std::os::windows::process::CommandExt;

    /// No console window of its own (a desk started at logon has none to share).
    pub fn own_group(command: &mut std::process::Command) {
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        command.creation_flags(CREATE_NO_WINDOW);
    }

    pub fn kill(child: &mut std::process::Child) {
        let _ = child.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, component: &str, n: u32) -> DeskEvent {
        let mut event = DeskEvent::new(kind, format!("event {n}"));
        event.component = Some(component.into());
        event
    }

    #[test]
    fn a_storm_passes_five_then_one_alert_covering_the_rest() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let mut sent = Vec::new();
        // 100 crashes of one component, one every 100 ms.
        for n in 0..100 {
            let at = t0 + Duration::from_millis(u64::from(n) * 100);
            sent.extend(c.offer(at, event(EventKind::Exited, "B", n)));
            sent.extend(c.due(at));
        }
        // Another component's events are their own.
        sent.extend(c.offer(t0, event(EventKind::Exited, "OTHER", 0)));
        assert_eq!(sent.len(), 6);
        assert!(sent.iter().all(|e| e.covers.is_none()));
        let last = t0 + Duration::from_millis(9900);
        assert!(c.due(last + Duration::from_secs(1)).is_empty());
        assert_eq!(c.next_due(last), Some(STORM_QUIET));
        let summary = c.due(last + STORM_QUIET);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].covers, Some(95));
        assert!(
            summary[0].message.starts_with("95 more `exited`"),
            "{}",
            summary[0].message
        );
        assert!(summary[0].message.ends_with("the last: event 99"));
        // Held again within the same window; flushed at the end.
        assert!(
            c.offer(
                last + Duration::from_secs(6),
                event(EventKind::Exited, "B", 100)
            )
            .is_empty()
        );
        let flushed = c.flush();
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].covers, Some(1));
    }

    #[test]
    fn a_new_window_passes_events_again_after_saying_what_was_held() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        for n in 0..7 {
            c.offer(t0, event(EventKind::GivenUp, "B", n));
        }
        let later = c.offer(t0 + STORM_WINDOW, event(EventKind::GivenUp, "B", 7));
        let covers: Vec<Option<u64>> = later.iter().map(|e| e.covers).collect();
        assert_eq!(covers, [Some(2), None]);
    }
}
