//! `master-launch`: starts the desk once, refuses to double-start, supervises, and
//! stops everything in the safe order.
//!
//! Flow: `fleet.toml` → plan (enabled components, `--only`, start order) → the
//! orchestrator's own `MASTER_LAUNCH` lock → pre-flight (refuse if anything it would
//! start is held or already running; clean stale locks) → per component: take its
//! lock, then start a [`supervisor::Supervisor`] → wait for Ctrl+C / SIGTERM → stop
//! brains, then watchdogs, then globals. `master-launch run NAME` starts one component
//! by hand, under its lock, without supervision (what per-bot `.bat` wrappers call).

mod child;
mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use lockcore::config::{DEFAULT_CONFIG, MASTER_LOCK_NAME};
use lockcore::exit::UsageError;
use lockcore::output::finish;
use lockcore::{
    Acquire, Component, DeskSnapshot, ExitCode, Fleet, HeldLock, LockClaim, LockDir, LockState,
    ProcessIdentity, ProcessProbe, Removal, Role, StopRequest,
};

use crate::supervisor::{Launch, Supervisor};
use lockcore::logs::Log;

const TOOL: &str = "master-launch";
/// How often the lock dir is looked at for stop requests: a directory read, cheap.
const TICK: Duration = Duration::from_millis(250);
/// Every this many ticks, each held lock file is checked to still be ours.
const VERIFY_EVERY_TICKS: u32 = 8;
/// How long a Ctrl+C / console-close handler waits for the ordered stop to finish
/// before letting the OS end the process (Windows ends it when the handler returns).
const CLOSE_GRACE: Duration = Duration::from_secs(60);

/// Start the trading desk once, keep it running, stop it in a safe order.
///
/// Starts the global processes, then each enabled account's watchdog and brain, each
/// under its own lock, and supervises them in the foreground (restarts with backoff)
/// until Ctrl+C or SIGTERM; then stops brains, watchdogs and globals, in that order.
/// Refuses (exit 3) if another master-launch runs, if any lock it would take is held,
/// or if a copy of any of its processes already runs.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The desk's config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG, global = true)]
    config: PathBuf,
    /// Start only this account (repeatable); globals always start.
    #[arg(long = "only", value_name = "ACCOUNT")]
    only: Vec<String>,
    /// Print what would be started, in order, and exit.
    #[arg(long)]
    dry_run: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Start one component by hand, under its lock, without supervision.
    Run {
        /// Its lock name, e.g. BRAIN_ATLAS or quantum_server.
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Some(Sub::Run { name }) => run_one(&args.config, name),
        None => orchestrate(&args),
    };
    finish(TOOL, result)
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What the orchestrator will start, in start order.
fn plan(fleet: &Fleet, only: &[String]) -> Result<Vec<Component>> {
    for account in only {
        if fleet.account(account).is_none() {
            let known: Vec<&str> = fleet.accounts.iter().map(|a| a.name.as_str()).collect();
            return Err(Box::new(UsageError(format!(
                "--only {account}: no such account in {} (accounts: {})",
                fleet.path.display(),
                known.join(", ")
            ))));
        }
    }
    Ok(fleet
        .components()
        .filter(|c| c.enabled)
        .filter(|c| match &c.account {
            None => true,
            Some(account) => {
                only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(account))
            }
        })
        .cloned()
        .collect())
}

fn print_plan(plan: &[Component], fleet: &Fleet) {
    println!(
        "master-launch would start, in this order (locks in {}):",
        fleet.lock_dir.display()
    );
    for (i, component) in plan.iter().enumerate() {
        println!(
            "  {}. {:<20} {:<9} in {}: {}",
            i + 1,
            component.lock_name,
            component.role.as_str(),
            component.cwd.display(),
            component.command.join(" ")
        );
    }
}

fn orchestrate(args: &Args) -> Result<ExitCode> {
    let fleet = Fleet::load(&args.config)?;
    let plan = plan(&fleet, &args.only)?;
    if args.dry_run {
        print_plan(&plan, &fleet);
        return Ok(ExitCode::Ok);
    }
    let events = Log::open(&fleet.log_dir.join("master-launch.log"), true)?;
    let mut probe = ProcessProbe::new()?;
    let locks = LockDir::new(&fleet.lock_dir);
    let claim = LockClaim {
        account: None,
        command: std::env::args().collect(),
    };
    let master = match locks.acquire(MASTER_LOCK_NAME, &claim, &mut probe)? {
        Acquire::Acquired(held) => held,
        Acquire::Held(holder) => {
            events.line(
                "",
                &format!("refused: another master-launch runs: {holder}"),
            );
            eprintln!("{TOOL}: refused: another master-launch is running. {holder}");
            return Ok(ExitCode::Refused);
        }
    };
    if let Some(code) = preflight(&fleet, &plan, &locks, &mut probe, &events)? {
        return Ok(code);
    }
    clear_stale_requests(&fleet, &plan, &events);
    let (done_tx, done_rx) = channel::<Event>();
    let stopped = Arc::new((Mutex::new(false), Condvar::new()));
    install_stop_handler(done_tx.clone(), stopped.clone())?;
    let mut supervisors = Vec::new();
    for component in &plan {
        let claim = LockClaim {
            account: component.account.clone(),
            command: component.command.clone(),
        };
        match locks.acquire(&component.lock_name, &claim, &mut probe)? {
            Acquire::Acquired(held) => {
                supervisors.push(start(&fleet, component, held, &events, &done_tx)?);
            }
            Acquire::Held(holder) => {
                // Someone started it between pre-flight and now: back out, in order.
                events.line("", &format!("refused: {holder}"));
                stop_all(supervisors, &events);
                drop(master);
                return Ok(ExitCode::Refused);
            }
        }
    }
    events.line(
        "",
        &format!(
            "desk started: {} processes; Ctrl+C stops it",
            supervisors.len()
        ),
    );
    supervise_desk(&supervisors, &done_rx, &fleet, &events);
    events.line(
        "",
        "stopping the desk: brains, then watchdogs, then globals",
    );
    stop_all(supervisors, &events);
    let _ = StopRequest::remove(&fleet.lock_dir, MASTER_LOCK_NAME);
    master.release()?;
    events.line("", "desk stopped; all locks released");
    let (flag, signal) = &*stopped;
    *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
    signal.notify_all();
    Ok(ExitCode::Ok)
}

/// Ctrl+C, SIGTERM, console close: ask the main thread to stop the desk, then wait
/// (bounded) until it has. On Windows the process is ended as soon as the handler
/// returns from a console-close event, which would kill the children out of order.
fn install_stop_handler(
    events: Sender<Event>,
    stopped: Arc<(Mutex<bool>, Condvar)>,
) -> std::result::Result<(), ctrlc::Error> {
    ctrlc::set_handler(move || {
        let _ = events.send(Event::Signal);
        let (flag, signal) = &*stopped;
        let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
        let _ = signal.wait_timeout_while(guard, CLOSE_GRACE, |done| !*done);
    })
}

/// The orchestrator's idle loop: wakes on a signal, on a component's supervision
/// ending, or every [`TICK`] to act on stop requests and check lock files. Returns
/// when the desk should stop.
fn supervise_desk(
    supervisors: &[Supervisor],
    done: &std::sync::mpsc::Receiver<Event>,
    fleet: &Fleet,
    events: &Log,
) {
    let mut running = supervisors.len();
    let mut deadlines: HashMap<String, Instant> = HashMap::new();
    let mut ticks = 0u32;
    while running > 0 {
        match done.recv_timeout(TICK) {
            Ok(Event::Signal) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Event::Done) => running -= 1,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(request) = StopRequest::read(&fleet.lock_dir, MASTER_LOCK_NAME) {
            if let Some(why) = &request.unreadable {
                events.line("", &format!("{why}; it still means: stop all"));
            }
            events.line(
                "",
                &format!("stop-all requested by {}", request.requester()),
            );
            return;
        }
        for supervisor in supervisors {
            act_on_stop_request(supervisor, &mut deadlines, fleet, events);
        }
        ticks += 1;
        if ticks.is_multiple_of(VERIFY_EVERY_TICKS) {
            for supervisor in supervisors {
                if let Err(lost) = supervisor.verify_lock() {
                    events.line("", &format!("LOCK LOST: {lost}"));
                }
            }
        }
    }
}

/// A stop request for one component: stop it gracefully, force it at the request's
/// deadline, never restart it, and remove the request once it is stopped.
fn act_on_stop_request(
    supervisor: &Supervisor,
    deadlines: &mut HashMap<String, Instant>,
    fleet: &Fleet,
    events: &Log,
) {
    let name = &supervisor.component.lock_name;
    if let Some(deadline) = deadlines.get(name) {
        if supervisor.is_finished() {
            let _ = StopRequest::remove(&fleet.lock_dir, name);
            deadlines.remove(name);
        } else if Instant::now() >= *deadline {
            force_stop(supervisor, events);
        }
        return;
    }
    let Some(request) = StopRequest::read(&fleet.lock_dir, name) else {
        return;
    };
    if let Some(why) = &request.unreadable {
        events.line(
            "",
            &format!("{name}: {why}; stopping with its own stop timeout"),
        );
    }
    events.line(
        "",
        &format!(
            "{name}: stop requested by {}; it will not be restarted",
            request.requester()
        ),
    );
    supervisor.request_stop();
    // time_left is at most a day, so the sum cannot overflow; checked all the same.
    let wait = request.time_left(supervisor.component.stop_timeout);
    let now = Instant::now();
    deadlines.insert(name.clone(), now.checked_add(wait).unwrap_or(now));
}

enum Event {
    Signal,
    Done,
}

/// Refuses if anything the plan would start is held or already running; cleans stale
/// and corrupt lock files of the plan. `Some(exit code)` means: stop here.
fn preflight(
    fleet: &Fleet,
    plan: &[Component],
    locks: &LockDir,
    probe: &mut ProcessProbe,
    events: &Log,
) -> Result<Option<ExitCode>> {
    let snapshot = DeskSnapshot::take(fleet, probe)?;
    let mut refusals = Vec::new();
    for component in plan {
        let Some(view) = snapshot.component(&component.lock_name) else {
            continue;
        };
        match &view.lock {
            Some(lock) if lock.state.is_held() => {
                let pid = lock.record.as_ref().map_or(0, |r| r.pid);
                refusals.push((
                    component.lock_name.clone(),
                    format!("lock {} held", lock.state.as_str()),
                    pid,
                ));
            }
            Some(lock) if matches!(lock.state, LockState::Stale | LockState::Corrupt) => {
                if let Removal::Removed(status) = locks.remove_if_stale(&lock.name, probe)? {
                    events.line(
                        "",
                        &format!(
                            "cleaned {} lock {} ({})",
                            status.state.as_str(),
                            status.name,
                            status.detail
                        ),
                    );
                }
            }
            _ => {}
        }
        for copy in view.copies.iter().filter(|c| !c.locked) {
            refusals.push((
                component.lock_name.clone(),
                "running without its lock".into(),
                copy.tree.root.pid,
            ));
        }
        // DESIGN.md rule 12: a link, FIFO or directory at the lock's name is never
        // written through or replaced; refuse before starting anything.
        let lock_file = format!("{}.lock", component.lock_name);
        if let Some(stray) = snapshot.strays.iter().find(|s| s.file_name == lock_file) {
            refusals.push((
                component.lock_name.clone(),
                format!("{lock_file} is {}", stray.what),
                0,
            ));
        }
    }
    if refusals.is_empty() {
        return Ok(None);
    }
    eprintln!("{TOOL}: refused: parts of the desk are already running; nothing was started.");
    eprintln!("  {:<20} {:<28} PID", "COMPONENT", "WHY");
    for (name, why, pid) in &refusals {
        eprintln!("  {name:<20} {why:<28} {pid}");
        events.line("", &format!("refused: {name}: {why} (pid {pid})"));
    }
    eprintln!(
        "Stop them first with `safe-shutdown` (see them with `check-procs`), then start again."
    );
    Ok(Some(ExitCode::Refused))
}

/// Stop requests left from before we held the locks (a requester that died before
/// cleaning up) are addressed to holders that are gone; acting on them would stop the
/// desk we are starting.
fn clear_stale_requests(fleet: &Fleet, plan: &[Component], events: &Log) {
    let names = plan
        .iter()
        .map(|c| c.lock_name.as_str())
        .chain([MASTER_LOCK_NAME]);
    for name in names {
        if StopRequest::read(&fleet.lock_dir, name).is_some() {
            let _ = StopRequest::remove(&fleet.lock_dir, name);
            events.line(
                "",
                &format!("cleared a stop request for {name} left from before this start"),
            );
        }
    }
}

/// The `FLEET_*` variables a managed process learns who it is from.
fn fleet_env(fleet: &Fleet, component: &Component, lock: &HeldLock) -> Vec<(String, String)> {
    let lock_file = std::path::absolute(lock.path()).unwrap_or_else(|_| lock.path().to_path_buf());
    let mut env = vec![
        ("FLEET_LOCK_NAME".to_string(), component.lock_name.clone()),
        (
            "FLEET_LOCK_FILE".to_string(),
            lock_file.display().to_string(),
        ),
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

fn start(
    fleet: &Fleet,
    component: &Component,
    lock: HeldLock,
    events: &Log,
    done: &Sender<Event>,
) -> Result<Supervisor> {
    let log = Log::open(
        &fleet.log_dir.join(format!("{}.log", component.lock_name)),
        false,
    )?;
    let launch = Launch {
        env: fleet_env(fleet, component, &lock),
        log,
        events: events.clone(),
        done: {
            let done = done.clone();
            Box::new(move || {
                let _ = done.send(Event::Done);
            })
        },
    };
    Ok(Supervisor::start(component.clone(), lock, launch))
}

/// Stops every supervised component in the safe order: all brains, then all
/// watchdogs, then globals; in parallel within a stage; graceful, then forced.
fn stop_all(supervisors: Vec<Supervisor>, events: &Log) {
    let mut remaining = supervisors;
    for role in [Role::Brain, Role::Watchdog, Role::Global] {
        let (stage, rest): (Vec<_>, Vec<_>) = remaining
            .into_iter()
            .partition(|s| s.component.role == role);
        remaining = rest;
        for supervisor in &stage {
            supervisor.request_stop();
        }
        let started = Instant::now();
        for supervisor in stage {
            let deadline = supervisor.component.stop_timeout;
            while !supervisor.is_finished() && started.elapsed() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !supervisor.is_finished() {
                force_stop(&supervisor, events);
            }
            let name = supervisor.component.lock_name.clone();
            let outcome = supervisor.join();
            events.line("", &format!("{name}: stopped ({outcome:?})"));
        }
    }
}

fn force_stop(supervisor: &Supervisor, events: &Log) {
    let name = &supervisor.component.lock_name;
    let Some(pid) = supervisor.pid() else { return };
    let Ok(mut probe) = ProcessProbe::new() else {
        return;
    };
    if let Some(identity) = probe.identity(pid) {
        events.line(
            "",
            &format!("{name}: did not stop in time; killing pid {pid} and its children"),
        );
        probe.kill_tree(identity);
    }
}

/// `master-launch run NAME`: one component, by hand, under its lock.
fn run_one(config: &std::path::Path, name: &str) -> Result<ExitCode> {
    let fleet = Fleet::load(config)?;
    let Some(component) = fleet.component(name).cloned() else {
        let names: Vec<&str> = fleet.components().map(|c| c.lock_name.as_str()).collect();
        return Err(Box::new(UsageError(format!(
            "no component named {name} in {} (components: {})",
            fleet.path.display(),
            names.join(", ")
        ))));
    };
    let mut probe = ProcessProbe::new()?;
    let locks = LockDir::new(&fleet.lock_dir);
    let claim = LockClaim {
        account: component.account.clone(),
        command: component.command.clone(),
    };
    let mut lock = match locks.acquire(name, &claim, &mut probe)? {
        Acquire::Acquired(lock) => lock,
        Acquire::Held(holder) => {
            eprintln!("{TOOL}: refused: {holder}");
            return Ok(ExitCode::Refused);
        }
    };
    // A request left from an earlier holder is not for us.
    let _ = StopRequest::remove(&fleet.lock_dir, name);
    let mut command = supervisor::build_command(&component);
    command.envs(fleet_env(&fleet, &component, &lock));
    let (mut running, _binding) = child::spawn_bound(&mut command)?;
    let pid = running.id();
    if let Some(identity) = probe.identity(pid) {
        lock.set_managed(identity, component.command.clone())?;
        let timeout = component.stop_timeout;
        ctrlc::set_handler(move || stop_by_hand(identity, timeout))?;
        watch_for_stop_request(fleet.lock_dir.clone(), name.to_string(), identity, timeout);
    }
    eprintln!("{TOOL}: {name} started under its lock, pid {pid}; Ctrl+C stops it");
    let status = running.wait()?;
    eprintln!("{TOOL}: {name} exited ({})", supervisor::describe(status));
    lock.release()?;
    let _ = StopRequest::remove(&fleet.lock_dir, name);
    Ok(if status.success() {
        ExitCode::Ok
    } else {
        ExitCode::Problems
    })
}

/// The runner's answer to `<NAME>.stop`: the same graceful-then-forced stop.
fn watch_for_stop_request(
    lock_dir: PathBuf,
    name: String,
    child: ProcessIdentity,
    timeout: Duration,
) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(TICK);
            if let Some(request) = StopRequest::read(&lock_dir, &name) {
                stop_by_hand(child, request.time_left(timeout));
                return;
            }
        }
    });
}

/// Ctrl+C on a hand-started component: graceful, then forced after its timeout.
fn stop_by_hand(child: ProcessIdentity, timeout: Duration) {
    let _ = child::ask_to_stop(child.pid);
    let Ok(mut probe) = ProcessProbe::new() else {
        return;
    };
    let started = Instant::now();
    while started.elapsed() < timeout {
        if !probe.is_alive(child) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    probe.kill_tree(child);
}
