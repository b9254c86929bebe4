//! `master-launch`: starts the desk once, refuses to double-start, supervises, and
//! stops everything in the safe order.
//!
//! Flow: `fleet.toml` → plan (enabled components, `--only`, start order) → the
//! orchestrator's own `MASTER_LAUNCH` lock → pre-flight (refuse if anything it would
//! start is held or already running; clean stale locks) → every planned lock → the
//! [`orchestrator::Orchestrator`] starts and supervises them in order, acts on stop,
//! start and restart requests, and publishes its view → on Ctrl+C / SIGTERM / a
//! stop-all request: stop brains, then watchdogs, then globals.
//! `master-launch --replace` first shows the desk, and when anything of it runs, asks
//! YES, stops it in order and checks that nothing is left (`lockcore::shutdown::replace`,
//! the code safe-shutdown stops with); only then does the start above begin.
//! `master-launch start|restart` ask the running orchestrator (see `request`).
//! `master-launch run NAME` starts one component by hand, under its lock, without
//! supervision. `master-launch install|uninstall` sets the desk up to start by itself
//! at logon (see `autostart`).

mod alerts;
mod autostart;
mod child;
mod copy_watch;
mod core;
mod events;
mod notify;
mod orchestrator;
#[cfg(target_os = "linux")]
mod reaper;
mod request;
mod signals;
mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use clap::{Parser, Subcommand};
use lockcore::config::{DEFAULT_CONFIG, MASTER_LOCK_NAME};
use lockcore::control::{Action, ControlRequest};
use lockcore::exit::{ToolError, UsageError};
use lockcore::output::finish;
use lockcore::select::AccountSelection;
use lockcore::shutdown::{self, Replace};
use lockcore::stop_engine::stop_in_order;
use lockcore::{
    Acquire, Component, Cutoff, DeskSnapshot, ExitCode, Fleet, Grace, LockClaim, LockDir,
    LockState, ProcessProbe, Removal, Role, Stage, StopRequest, Stoppable,
};
use lockcore::{errln, outln};

use crate::core::{Note, Sink};
use crate::events::Events;
use crate::orchestrator::{Event, Orchestrator};
use crate::signals::{Asked, Closing, Ending, StopHandshake};
use lockcore::logs::Log;

const TOOL: &str = "master-launch";
/// How often `run` looks for a stop request: a file read, cheap.
const TICK: Duration = Duration::from_millis(250);
/// How long a stopped desk waits for its alert commands to deliver what they hold.
const ALERTS_AT_THE_END: Duration = Duration::from_secs(5);

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
    /// Replace what of the desk runs: show it (as check-procs does), ask you to type
    /// YES, stop it in the safe order (as safe-shutdown does), check that nothing of the
    /// desk is left, then start the desk. With nothing running it starts at once. If
    /// anything survives the stop, nothing is started (exit 1).
    #[arg(long, conflicts_with_all = ["only", "dry_run"])]
    replace: bool,
    /// With --replace: do not ask; stop at once. Without it and without a terminal to
    /// ask on, nothing is touched (exit 2).
    #[arg(long, requires = "replace")]
    yes: bool,
    /// With --replace: seconds each process gets to stop gracefully before it is
    /// forced (at most a day).
    #[arg(
        long,
        value_name = "SECS",
        requires = "replace",
        default_value_t = lockcore::shutdown::DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(0..=lockcore::shutdown::MAX_TIMEOUT_SECS)
    )]
    timeout: u64,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Ask the running master-launch to start components again (given up, stopped on
    /// request, or left out by --only), under its supervision; waits until they run.
    ///
    /// An account's watchdog starts before its brain. Exit 0 when all run; 1 when one
    /// failed to start, or no master-launch runs; 2 for an unknown name; 3 when
    /// something else holds a lock or runs a copy.
    Start {
        #[command(flatten)]
        targets: request::Targets,
        /// With no master-launch running, run the one component NAME by hand instead
        /// (as `run NAME`): what a double-clicked START_<NAME>.bat means.
        #[arg(long)]
        or_run: bool,
        /// Give up waiting for the answer after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = request::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
    },
    /// Ask the running master-launch to stop components gracefully and start them
    /// again (brain before watchdog to stop, watchdog before brain to start); waits
    /// until they run again. Restarting a watchdog restarts its brain too.
    Restart {
        #[command(flatten)]
        targets: request::Targets,
        /// Give up waiting for the answer after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = request::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
    },
    /// Start one component by hand, under its lock, without supervision. With a
    /// master-launch running, `master-launch start NAME` puts it under supervision
    /// instead.
    Run {
        /// Its lock name, e.g. BRAIN_ATLAS or quantum_server.
        name: String,
    },
    /// Start this desk by itself at logon (or startup): a Task Scheduler task on
    /// Windows, a systemd user unit on Linux. Installing again replaces it.
    Install {
        /// When the desk starts.
        #[arg(long, value_enum, default_value = "logon")]
        at: autostart::At,
        /// Print the task definition (or unit file) and install nothing.
        #[arg(long)]
        print: bool,
    },
    /// Remove this desk's task (or unit); a running desk keeps running.
    Uninstall,
    /// Send a sample event to every [[alert]] command of fleet.toml and say how each
    /// went: exit 0 when all delivered, 1 when any did not (or there is none).
    AlertTest,
}

fn main() -> std::process::ExitCode {
    // On Windows this binary doubles as the helper that sends a console control event
    // to a child on its own console (child.rs).
    lockcore::graceful::serve_console_helper();
    // On Linux it also doubles as the reaper that holds one bot's process tree.
    #[cfg(target_os = "linux")]
    reaper::serve();
    // Windows: bots, helpers and alert commands get only the handles std hands each of
    // them, never master-launch's own standard handles (a caller reading its output
    // through a pipe would otherwise wait for every bot to end: issue #26).
    #[cfg(windows)]
    lockcore::win_handle::std_handles_not_inherited();
    let args = Args::parse();
    if args.replace && args.command.is_some() {
        return finish(
            TOOL,
            Err(UsageError(
                "--replace starts the desk; it goes with no subcommand: run \
                 `master-launch --replace` on its own"
                    .into(),
            )
            .into()),
        );
    }
    let result = match &args.command {
        Some(Sub::Start {
            targets,
            or_run,
            timeout,
        }) => request::ask(&args.config, Action::Start, targets, *or_run, *timeout),
        Some(Sub::Restart { targets, timeout }) => {
            request::ask(&args.config, Action::Restart, targets, false, *timeout)
        }
        Some(Sub::Run { name }) => run_one(&args.config, name),
        Some(Sub::Install { at, print }) => autostart::install(&args.config, *at, *print),
        Some(Sub::Uninstall) => autostart::uninstall(&args.config),
        Some(Sub::AlertTest) => alert_test(&args.config),
        None => orchestrate(&args),
    };
    finish(TOOL, result)
}

type Result<T> = std::result::Result<T, ToolError>;

/// What the orchestrator will start, in start order: the globals, and the enabled
/// accounts of `--only` (all when none is named).
fn plan(fleet: &Fleet, only: &[String]) -> Result<Vec<Component>> {
    let selection = AccountSelection::of(fleet, only, "--only")?;
    Ok(fleet
        .components()
        .filter(|c| c.enabled)
        .filter(|c| c.account.is_none() || selection.includes(c.account.as_deref()))
        .cloned()
        .collect())
}

fn print_plan(plan: &[Component], fleet: &Fleet) {
    outln!(
        "master-launch would start, in this order (locks in {}):",
        fleet.lock_dir.display()
    );
    for (i, component) in plan.iter().enumerate() {
        outln!(
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
    let events =
        Log::open(&fleet.log_dir.join("master-launch.log"), true)?.keeping(fleet.log_files_kept);
    let _quick_edit_off = lockcore::console::quick_edit_off();
    if let Some(warning) = LockDir::new(&fleet.lock_dir).foreign_warning() {
        events.line("", &warning);
    }
    let (tx, rx) = channel::<Event>();
    let stopped = Arc::new(StopHandshake::new(Closing::on_this_system()));
    // A second stop signal shortens the stop the first began.
    let cutoff = Cutoff::default();
    // While --replace stops what runs, Ctrl+C ends the run with nothing started.
    let replacing = Arc::new(AtomicBool::new(args.replace));
    if args.replace {
        install_stop_handler(
            tx.clone(),
            cutoff.clone(),
            stopped.clone(),
            replacing.clone(),
        )?;
        if let Some(code) = replace(&fleet, args, &events)? {
            return Ok(code);
        }
        replacing.store(false, Ordering::SeqCst);
    }
    let mut probe = ProcessProbe::new()?;
    // With [cluster], each component's lock also takes its etcd key (never
    // MASTER_LAUNCH: each machine's orchestrator holds its own).
    let locks = LockDir::for_fleet(&fleet).with_cluster(&fleet);
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
            errln!("{TOOL}: refused: another master-launch is running. {holder}");
            return Ok(ExitCode::Refused);
        }
    };
    if let Some(code) = preflight(&fleet, &plan, &locks, &mut probe, &events)? {
        return Ok(code);
    }
    // The enabled components: what this orchestrator may be asked to start.
    let names = fleet
        .components()
        .filter(|c| c.enabled)
        .map(|c| c.lock_name.as_str());
    clear_stale_requests(&fleet, names.chain([MASTER_LOCK_NAME]), &events);
    if !args.replace {
        install_stop_handler(tx.clone(), cutoff.clone(), stopped.clone(), replacing)?;
    }
    if let Some(note) = signals::session_end_note() {
        events.line("", &note);
    }
    // Every planned lock before anything starts: a start that cannot take them all
    // starts nothing. With [cluster], a key another host holds is not in the way: that
    // component stands by (and a brain with it when its watchdog does, so that the
    // host that runs the watchdog can take the brain's key).
    let mut plan_locks = Vec::new();
    let mut held_elsewhere: Vec<String> = Vec::new();
    for component in &plan {
        if watchdog_held_elsewhere(&fleet, component, &held_elsewhere) {
            held_elsewhere.push(component.lock_name.clone());
            continue;
        }
        let claim = LockClaim {
            account: component.account.clone(),
            command: component.command.clone(),
        };
        match locks.acquire(&component.lock_name, &claim, &mut probe)? {
            Acquire::Acquired(held) => plan_locks.push((component.clone(), held)),
            Acquire::Held(holder) if holder.cluster_key.is_some() => {
                events.line(
                    "",
                    &format!("{}: held on another host: {holder}", component.lock_name),
                );
                held_elsewhere.push(component.lock_name.clone());
            }
            Acquire::Held(holder) => {
                events.line("", &format!("cannot start the desk: {holder}"));
                errln!("{TOOL}: refused: {holder}");
                return Ok(ExitCode::Refused);
            }
        }
    }
    let desk_events = Events::new(events.clone(), &fleet);
    let mut desk = Orchestrator::new(
        &fleet,
        desk_events.clone(),
        probe,
        master,
        plan_locks,
        &held_elsewhere,
        tx,
    );
    // Copies started by hand beside the desk, looked for off the supervision path.
    let copy_watch = copy_watch::CopyWatch::start(&fleet, desk_events.clone());
    let ran = desk.run(&rx);
    if let Some(watch) = copy_watch {
        watch.stop();
    }
    let grace = match &ran {
        Ok(grace) => {
            desk_events.note(&Note::DeskStopping);
            *grace
        }
        Err(error) => {
            // Back out in order: what started gets a graceful stop and its lock goes.
            events.line("", &format!("cannot start the desk: {error}"));
            Grace::Own
        }
    };
    let given_up = desk.stop_everything(grace, &cutoff);
    desk.release()?;
    desk_events.note(&Note::DeskStopped);
    // A closed window leaves only what is left of its budget for the last alerts.
    let alerts_may_take = stopped.left().map_or(ALERTS_AT_THE_END, |left| {
        left.saturating_sub(Duration::from_millis(100))
            .min(ALERTS_AT_THE_END)
    });
    desk_events.finish(alerts_may_take);
    stopped.done();
    ran?;
    if given_up {
        events.line(
            "",
            "ended with components given up (exit code 1); see the GIVING UP lines above",
        );
        return Ok(ExitCode::Problems);
    }
    Ok(ExitCode::Ok)
}

/// `--replace` before the start: shows the desk, and when anything of it runs here,
/// asks, stops it in order and checks (lockcore's `shutdown::replace`). `Some(exit
/// code)` means: start nothing.
fn replace(fleet: &Fleet, args: &Args, events: &Log) -> Result<Option<ExitCode>> {
    let probe = ProcessProbe::new()?;
    let color = lockcore::output::use_color(&std::io::stdout());
    let timeout = Duration::from_secs(args.timeout);
    let outcome = shutdown::replace(fleet, probe, args.yes, timeout, color, TOOL)
        .map_err(ToolError::failed)?;
    match &outcome {
        Replace::Clear => {}
        Replace::Stopped { total } => {
            events.line(
                "",
                &format!("--replace: stopped {total} process(es) of the desk first"),
            );
        }
        Replace::NoTerminal => {
            events.line("", "--replace: no terminal and no --yes; nothing touched")
        }
        Replace::Cancelled => events.line("", "--replace: not confirmed; nothing touched"),
        Replace::Survivors(survivors) => {
            events.line(
                "",
                &format!(
                    "--replace: nothing started; still running: {}",
                    survivors.join(", ")
                ),
            );
            errln!("{TOOL}: THESE ARE STILL RUNNING, so nothing was started:");
            for name in survivors {
                errln!("  {name}");
            }
            errln!(
                "Stop them (see them with `check-procs`; `safe-shutdown` as the user who \
                 started them), then run `master-launch --replace` again."
            );
        }
    }
    Ok(outcome.exit_code())
}

/// Whether `component` is a brain whose watchdog (which it needs, DESIGN.md rule 13)
/// another host holds: the brain then stands by too.
fn watchdog_held_elsewhere(
    fleet: &Fleet,
    component: &Component,
    held_elsewhere: &[String],
) -> bool {
    component.role == Role::Brain
        && component
            .account
            .as_deref()
            .and_then(|a| fleet.account(a))
            .is_some_and(|a| {
                a.brain_requires_watchdog && held_elsewhere.contains(&a.watchdog.lock_name)
            })
}

/// Ctrl+C, SIGTERM, SIGHUP, console close: the first asks the main thread to stop the
/// desk; a later one shortens that stop through `cutoff` (signals::Asked). For a
/// console close (Windows) wait, within what Windows grants, until the desk has
/// stopped: Windows ends the process when the handler returns.
fn install_stop_handler(
    events: Sender<Event>,
    cutoff: Cutoff,
    stopped: Arc<StopHandshake>,
    replacing: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let signals_before = AtomicU32::new(0);
    signals::on_stop(move |ending| {
        if replacing.load(Ordering::SeqCst) {
            // --replace, before anything of ours started: we hold no lock and run no
            // child, so ending here starts nothing. What was asked to stop goes on
            // stopping (a running master-launch keeps the order itself).
            errln!(
                "{TOOL}: interrupted during --replace: nothing was started. What was asked to \
                 stop goes on stopping; see what runs with `check-procs`."
            );
            lockcore::printer::flush_all();
            std::process::exit(i32::from(ExitCode::Problems.code()));
        }
        let closing = stopped.closing();
        match Asked::after(
            signals_before.fetch_add(1, Ordering::SeqCst),
            ending,
            closing,
        ) {
            Asked::Stop(grace) => {
                let _ = events.send(Event::Signal(grace));
            }
            Asked::Hurry(per_stage) => cutoff.hurry(per_stage),
            Asked::ForceNow => {
                errln!("{TOOL}: asked again: forcing what is left, brains first");
                cutoff.force_now();
            }
        }
        if ending == Ending::ConsoleClosing {
            stopped.hold(|| cutoff.force_now());
        }
    })
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
    for view in views(&snapshot, plan) {
        let Some(lock) = view
            .lock
            .as_ref()
            .filter(|l| matches!(l.state, LockState::Stale | LockState::Corrupt))
        else {
            continue;
        };
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
    let mut refusals = held_locks(&snapshot, plan);
    refusals.extend(unlocked_copies(&snapshot, plan));
    refusals.extend(strays_in_the_way(&snapshot, plan));
    Ok(refuse(&refusals, events))
}

/// DESIGN.md rule 12: a link, FIFO or directory at a lock's name is never written
/// through or replaced: refuse before starting anything.
fn strays_in_the_way(snapshot: &DeskSnapshot, plan: &[Component]) -> Vec<Refusal> {
    plan.iter()
        .filter_map(|component| {
            let lock_file = format!("{}.lock", component.lock_name);
            let stray = snapshot.strays.iter().find(|s| s.file_name == lock_file)?;
            Some((
                component.lock_name.clone(),
                format!("{lock_file} is {}", stray.what),
                0,
            ))
        })
        .collect()
}

/// Why a start is refused: a component, the reason, the pid in the way.
type Refusal = (String, String, u32);

fn views<'s>(
    snapshot: &'s DeskSnapshot,
    plan: &'s [Component],
) -> impl Iterator<Item = &'s lockcore::ComponentView> {
    plan.iter().filter_map(|c| snapshot.component(&c.lock_name))
}

/// Locks of the plan that someone holds (legacy records included).
fn held_locks(snapshot: &DeskSnapshot, plan: &[Component]) -> Vec<Refusal> {
    views(snapshot, plan)
        .filter_map(|view| {
            let lock = view.lock.as_ref().filter(|l| l.state.is_held())?;
            Some((
                view.component.lock_name.clone(),
                format!("lock {} held", lock.state.as_str()),
                lock.record.as_ref().map_or(0, |r| r.pid),
            ))
        })
        .collect()
}

/// Copies of the plan's components that run without their lock (DESIGN.md rule 9
/// decides what a copy is).
fn unlocked_copies(snapshot: &DeskSnapshot, plan: &[Component]) -> Vec<Refusal> {
    views(snapshot, plan)
        .flat_map(|view| {
            view.copies.iter().filter(|c| !c.locked).map(|copy| {
                (
                    view.component.lock_name.clone(),
                    "running without its lock".to_string(),
                    copy.tree.root.pid,
                )
            })
        })
        .collect()
}

/// Prints and logs the refusal table; `None` when there is nothing to refuse.
fn refuse(refusals: &[Refusal], events: &Log) -> Option<ExitCode> {
    if refusals.is_empty() {
        return None;
    }
    errln!("{TOOL}: refused: parts of the desk are already running; nothing was started.");
    errln!("  {:<20} {:<28} PID", "COMPONENT", "WHY");
    for (name, why, pid) in refusals {
        errln!("  {name:<20} {why:<28} {pid}");
        events.line("", &format!("refused: {name}: {why} (pid {pid})"));
    }
    errln!(
        "Stop them first with `safe-shutdown` (see them with `check-procs`), then start again; \
         or run `master-launch --replace` (SAFE_START.bat), which does both after you type YES."
    );
    Some(ExitCode::Refused)
}

/// Requests left from before we held the locks (a requester that died before
/// cleaning up) are addressed to holders that are gone: acting on a stop would stop
/// the desk we are starting, and a start or restart has nobody waiting for it.
fn clear_stale_requests<'n>(fleet: &Fleet, names: impl IntoIterator<Item = &'n str>, events: &Log) {
    for name in names {
        if StopRequest::read(&fleet.lock_dir, name).is_some() {
            let _ = StopRequest::remove(&fleet.lock_dir, name);
            events.line(
                "",
                &format!("cleared a stop request for {name} left from before this start"),
            );
        }
        for action in Action::ALL {
            if ControlRequest::read(&fleet.lock_dir, name, action).is_some() {
                let _ = ControlRequest::remove(&fleet.lock_dir, name, action);
                events.line(
                    "",
                    &format!(
                        "cleared a {} request for {name} left from before this start",
                        action.as_str()
                    ),
                );
            }
        }
    }
}

/// `master-launch alert-test`: the sample event to each `[[alert]]` command, one after
/// the other, with its timeout and retries; one line each.
fn alert_test(config: &std::path::Path) -> Result<ExitCode> {
    let fleet = Fleet::load(config)?;
    if fleet.alerts.is_empty() {
        errln!(
            "{TOOL}: {} has no [[alert]] table: nothing to test. Add one, e.g.\n  \
             [[alert]]\n  command = [\"python\", \"alerts/webhook.py\"]",
            fleet.path.display()
        );
        return Ok(ExitCode::Problems);
    }
    let sample = alerts::sample(&fleet.path);
    let mut all = true;
    for alert in &fleet.alerts {
        let target = alerts::Target::of(&fleet, alert);
        outln!("{}: sending a sample ...", target.name());
        match alerts::deliver(&target, &sample, &alerts::Slot::default()) {
            alerts::Delivery::Delivered { attempts } => {
                let tries = if attempts > 1 {
                    format!(" (at attempt {attempts})")
                } else {
                    String::new()
                };
                outln!("{}: delivered{tries}", target.name());
            }
            alerts::Delivery::Failed { why, .. } => {
                all = false;
                outln!("{}: NOT delivered: {why}", target.name());
            }
        }
    }
    Ok(if all {
        ExitCode::Ok
    } else {
        errln!(
            "{TOOL}: some alerts were not delivered; fix the command or its kinds in fleet.toml"
        );
        ExitCode::Problems
    })
}

/// `master-launch run NAME`: one component, by hand, under its lock, after the same
/// pre-flight as the orchestrator's: a copy running without its lock refuses it.
fn run_one(config: &std::path::Path, name: &str) -> Result<ExitCode> {
    let fleet = Fleet::load(config)?;
    fleet.refuse_cluster("master-launch run")?;
    let Some(component) = fleet.component(name).cloned() else {
        let names: Vec<&str> = fleet.components().map(|c| c.lock_name.as_str()).collect();
        return Err(UsageError(format!(
            "no component named {name} in {} (components: {})",
            fleet.path.display(),
            names.join(", ")
        ))
        .into());
    };
    let events = Log::open(&fleet.log_dir.join("master-launch.log"), false)?;
    let mut probe = ProcessProbe::new()?;
    let locks = LockDir::for_fleet(&fleet);
    let claim = LockClaim {
        account: component.account.clone(),
        command: component.command.clone(),
    };
    let mut lock = match locks.acquire(name, &claim, &mut probe)? {
        Acquire::Acquired(lock) => lock,
        Acquire::Held(holder) => {
            events.line("", &format!("refused: {holder}"));
            errln!("{TOOL}: refused: {holder}");
            return Ok(ExitCode::Refused);
        }
    };
    // Holding the lock, any copy still found runs without it (started by hand).
    let snapshot = DeskSnapshot::take(&fleet, &mut probe)?;
    if let Some(code) = refuse(
        &unlocked_copies(&snapshot, std::slice::from_ref(&component)),
        &events,
    ) {
        return Ok(code);
    }
    if let Some(code) = refuse_unguarded(&fleet, &snapshot, &component, &mut probe, &events) {
        return Ok(code);
    }
    clear_stale_requests(&fleet, [name], &events);
    if let Some(orchestrator) = request::running_orchestrator(&fleet, &mut probe) {
        errln!(
            "{TOOL}: note: master-launch (pid {orchestrator}) is running; `master-launch start {name}` \
             would put {name} under its supervision. Running it by hand."
        );
    }
    let mut command = supervisor::build_command(&component);
    command.envs(orchestrator::fleet_env(&fleet, &component, &lock));
    let slot = Arc::new(child::Slot::default());
    let runner = Arc::new(Runner {
        name: name.to_string(),
        role: component.role,
        timeout: component.stop_timeout,
        slot: slot.clone(),
        stopped_on_request: AtomicBool::new(false),
        cutoff: Cutoff::default(),
    });
    // The handler before the child: a Ctrl+C at any moment stops it in order (one
    // before the start cancels the start), never ends this process beside it.
    {
        let runner = runner.clone();
        let signals_before = AtomicU32::new(0);
        let closing = Closing::on_this_system();
        signals::on_stop(move |ending| {
            match Asked::after(
                signals_before.fetch_add(1, Ordering::SeqCst),
                ending,
                closing,
            ) {
                Asked::Stop(grace) => {
                    // On a thread of its own: a later signal can then shorten it.
                    let runner = runner.clone();
                    std::thread::spawn(move || runner.stop(grace));
                }
                Asked::Hurry(per_stage) => runner.cutoff.hurry(per_stage),
                Asked::ForceNow => runner.cutoff.force_now(),
            }
            if ending == Ending::ConsoleClosing {
                // Windows ends this process when the handler returns.
                signals::hold_the_close(
                    closing,
                    |up_to| {
                        let until = std::time::Instant::now() + up_to;
                        while runner.slot.identity().is_some() && std::time::Instant::now() < until
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        runner.slot.identity().is_none()
                    },
                    || runner.cutoff.force_now(),
                );
            }
        })?;
    }
    let asked = || runner.stopped_on_request.load(Ordering::SeqCst);
    let Some(mut running) = slot.spawn(&mut command, asked, &mut probe)? else {
        lock.release()?;
        errln!("{TOOL}: {name} was not started: a stop was asked for first");
        return Ok(ExitCode::Ok);
    };
    let pid = running.pid;
    if let Some(identity) = slot.identity() {
        lock.set_managed(identity, component.command.clone())?;
    }
    watch_for_stop_request(fleet.lock_dir.clone(), runner.clone());
    errln!("{TOOL}: {name} started under its lock, pid {pid}; Ctrl+C stops it");
    let ended = slot.wait(&mut running)?;
    let status = ended.status;
    errln!(
        "{TOOL}: {name} exited ({}){}",
        supervisor::describe(status),
        ended.tree_note()
    );
    lock.release()?;
    let _ = StopRequest::remove(&fleet.lock_dir, name);
    // A bot forced at its deadline after a stop request did what was asked (the
    // forced stop ends it with a code of its own).
    let asked = runner.stopped_on_request.load(Ordering::SeqCst);
    Ok(if status.success() || asked {
        ExitCode::Ok
    } else {
        ExitCode::Problems
    })
}

/// DESIGN.md rule 13 for a brain started by hand: refused (exit 3, nothing started,
/// like every refusal because of what runs) while the watchdog it needs is not running,
/// naming the watchdog and what to run; `brain_requires_watchdog = false` lets it run.
fn refuse_unguarded(
    fleet: &Fleet,
    snapshot: &DeskSnapshot,
    component: &Component,
    probe: &mut ProcessProbe,
    events: &Log,
) -> Option<ExitCode> {
    let brain = snapshot.component(&component.lock_name)?;
    let watchdog = &snapshot.watchdog_not_running(brain)?.component.lock_name;
    let name = &component.lock_name;
    let account = component.account.as_deref().unwrap_or_default();
    let how = if request::running_orchestrator(fleet, probe).is_some() {
        format!(
            "`master-launch start --account {account}` (master-launch runs: it starts both, in order)"
        )
    } else {
        format!("`master-launch run {watchdog}` (or START_{watchdog}.bat), then run {name} again")
    };
    events.line(
        "",
        &format!("refused: {name}: its watchdog {watchdog} is not running"),
    );
    errln!(
        "{TOOL}: refused: {name} may run only while its watchdog {watchdog} runs (a brain never \
         trades unguarded), and {watchdog} is not running; nothing was started. Start it first: \
         {how}. An account that trades without a watchdog says so in {}: \
         brain_requires_watchdog = false under [[account]] {account}.",
        fleet.path.display()
    );
    Some(ExitCode::Refused)
}

/// The runner's answer to `<NAME>.stop`: the same stop, with the request's deadline.
fn watch_for_stop_request(lock_dir: PathBuf, runner: Arc<Runner>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(TICK);
            if let Some(request) = StopRequest::read(&lock_dir, &runner.name) {
                runner.stop(Grace::Given(request.time_left(runner.timeout)));
                return;
            }
        }
    });
}

/// A component started by hand (`run NAME`), as the stop engine stops it: graceful,
/// then forced through its binding.
struct Runner {
    name: String,
    role: Role,
    timeout: Duration,
    slot: Arc<child::Slot>,
    /// Asked to stop (Ctrl+C, a stop request): then however the bot ended, the run
    /// did what was asked.
    stopped_on_request: AtomicBool,
    /// A later stop signal shortens a stop under way.
    cutoff: Cutoff,
}

impl Runner {
    fn stop(&self, grace: Grace) {
        self.stopped_on_request.store(true, Ordering::SeqCst);
        stop_in_order(
            vec![self],
            grace,
            &self.cutoff,
            &mut (),
            &mut lockcore::stop_engine::Quiet,
        );
    }
}

impl Stoppable<()> for &Runner {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn stage(&self) -> Stage {
        Stage::of(self.role)
    }

    fn own_timeout(&self) -> Duration {
        self.timeout
    }

    fn ask(&mut self, _: &mut ()) -> lockcore::stop_engine::Asking {
        self.slot.ask_to_stop();
        lockcore::stop_engine::Asking::Done("asked to stop".into())
    }

    fn is_stopped(&mut self, _: &mut ()) -> bool {
        self.slot.identity().is_none()
    }

    fn force(&mut self, _: &mut ()) -> String {
        self.slot.force();
        "killed with everything it started".into()
    }
}
