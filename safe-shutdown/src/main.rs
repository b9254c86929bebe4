//! `safe-shutdown`: find everything the desk runs, confirm, stop it in the safe order,
//! verify, and clean up only locks whose holders are proven gone.
//!
//! Order: brains (trading stops), then watchdogs (they guard open positions until the
//! brains are gone), then globals, then the orchestrator. A running `master-launch` is
//! told first (a stop-all request) so it restarts nothing and carries out the order
//! itself; it is never killed first, or its children would die with it, out of order.
//! Processes with a live lock holder are stopped through the holder (a stop request);
//! copies nobody holds are signalled directly. Whatever is still alive after the
//! timeout (plus a margin, for a holder) is killed with its children, after its start
//! time is checked again.
//!
//! The emergency stop works whatever else is broken (DESIGN.md rule 12): entries in the
//! lock dir that are not regular files are skipped, an unreadable lock dir leaves the
//! processes found by command line, a stop request that cannot be written falls back
//! to signalling the process, and an audit log that cannot be opened is reported on
//! stderr (with its path) while the stop goes on. Exit codes: 0 all stopped, 1
//! something survived, the user cancelled, the audit log is incomplete, or (with
//! `[cluster]`) etcd could not be read so other hosts were not reached, 2 bad
//! arguments or config, or no terminal to confirm on (then nothing is touched, not even
//! a stale lock file when nothing runs).

mod find;

use lockcore::{errln, outln};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use lockcore::config::{DEFAULT_CONFIG, MASTER_LOCK_NAME};
use lockcore::exit::ToolError;
use lockcore::logs::Log;
use lockcore::output::{finish, human_duration};
use lockcore::select::AccountSelection;
use lockcore::stop_engine::{self as engine, StopObserver, stop_in_order};
use lockcore::{
    DeskSnapshot, ExitCode, Fleet, Grace, LockDir, ProcessProbe, Removal, Stage, StopRequest,
    Stoppable,
};

use crate::find::{ClusterStops, StopContext, Target, Via};
use lockcore::graceful::Asked;

const TOOL: &str = "safe-shutdown";
/// The longest `--timeout`: a day.
const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;

/// Stop the trading desk, or some accounts, in a safe order.
///
/// Lists what it will stop and asks you to type YES (open trades are NOT closed).
/// Stops brains, then watchdogs, then globals, then master-launch: gracefully first,
/// forced after --timeout. Removes only lock files whose holders are gone.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The desk's config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Do not ask; stop at once. Without it and without a terminal to ask on, nothing
    /// is touched (exit 2).
    #[arg(long)]
    yes: bool,
    /// Stop only this account (repeatable); the rest keep trading.
    #[arg(long = "account", value_name = "NAME")]
    accounts: Vec<String>,
    /// Seconds each process gets to stop gracefully before it is forced (at most a day).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS)
    )]
    timeout: u64,
    /// Print what would be stopped, and in which order, then exit.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> std::process::ExitCode {
    // On Windows this binary doubles as the helper that sends a console control event.
    lockcore::graceful::serve_console_helper();
    finish(TOOL, run(&Args::parse()))
}

type Result<T> = std::result::Result<T, ToolError>;

fn run(args: &Args) -> Result<ExitCode> {
    // A click into the window must not freeze the emergency stop's output.
    let _quick_edit_off = lockcore::console::quick_edit_off();
    let fleet = Fleet::load(&args.config)?;
    let selection = AccountSelection::of(&fleet, &args.accounts, "--account")?;
    let mut probe = ProcessProbe::new()?;
    // The emergency stop works whatever else is broken: without the lock dir, the
    // desk's processes are still found by their command lines.
    let snapshot = DeskSnapshot::take(&fleet, &mut probe).unwrap_or_else(|e| {
        errln!("{TOOL}: {e}; looking for the desk's processes by their command lines only");
        DeskSnapshot::build(
            &fleet,
            Vec::new(),
            probe.table(),
            lockcore::process::now_secs(),
        )
    });
    let mut targets = find::targets(&snapshot, &selection);
    let left_alone = find::left_alone(&snapshot, &selection);
    for line in &left_alone {
        outln!("{line}");
    }
    // `[cluster]` and etcd unreadable: what other hosts run is unknown here, so it can
    // be neither listed nor stopped. Said first and last, and never an exit 0: "nothing
    // to stop" or "all stopped" would be false while another host may still trade.
    let blind = cluster_blind(&snapshot);
    if let Some(why) = &blind {
        errln!("{TOOL}: {why}");
    }
    // Without a terminal to ask on, nothing is touched unless --yes says so: not a
    // process, not a lock file (DESIGN.md: no terminal means refuse).
    let unconfirmable = !args.yes && !args.dry_run && !std::io::stdin().is_terminal();
    if targets.is_empty() {
        if blind.is_some() {
            outln!("Nothing to stop on this machine: no process of the desk runs here.");
        } else {
            outln!("Nothing to stop: no process of the desk runs.");
        }
        if unconfirmable {
            errln!(
                "{TOOL}: refusing to remove stale lock files without confirmation: there is \
                 no terminal to ask on, and nothing was touched. Pass --yes to remove them, \
                 or run lock-gc."
            );
            return Ok(ExitCode::Usage);
        }
        if !args.dry_run {
            clean_locks(&fleet, &selection, &mut probe, &Audit::none());
        }
        return Ok(blind_exit(blind.as_deref()));
    }
    print_targets(&targets, snapshot.taken_at);
    if args.dry_run {
        outln!("\n(dry run: nothing was stopped)");
        return Ok(blind_exit(blind.as_deref()));
    }
    let audit = Audit::open(&fleet.log_dir.join("safe-shutdown.log"));
    audit.line(&format!(
        "found {} process(es): {}",
        targets.len(),
        summary(&targets)
    ));
    for line in &left_alone {
        audit.line(line);
    }
    if let Some(why) = &blind {
        audit.warn(why);
    }
    if !args.yes {
        if unconfirmable {
            audit.line("refused: no terminal to confirm on and no --yes; nothing stopped");
            errln!(
                "{TOOL}: refusing to stop anything without confirmation: there is no terminal \
                 to ask on, and nothing was touched. Run it in a console, or pass --yes."
            );
            return Ok(ExitCode::Usage);
        }
        if !confirmed(targets.len())? {
            audit.line("cancelled by the user; nothing stopped");
            outln!("Cancelled. Nothing was stopped.");
            return Ok(ExitCode::Problems);
        }
    }
    audit.line(if args.yes {
        "confirmed by --yes"
    } else {
        "confirmed by the user (YES)"
    });
    let timeout = Duration::from_secs(args.timeout.min(MAX_TIMEOUT_SECS));
    let mut probe = probe;
    let mut orchestrator_told = String::new();
    if let Some(orchestrator) = targets.iter().find_map(|t| match t.via {
        Via::Orchestrator(who) => Some(who),
        _ => None,
    }) {
        // Tell master-launch first: it restarts nothing and stops in order itself.
        orchestrator_told = match StopRequest::new(MASTER_LOCK_NAME, timeout).write(&fleet.lock_dir)
        {
            Ok(_) => {
                audit.line("asked master-launch to stop the whole desk (stop-all request)");
                "master-launch stops it (stop-all request)".into()
            }
            // A full or read-only lock dir: its own stop signal means the same ordered
            // stop (brains, watchdogs, globals, then it exits), with nothing restarted.
            // Signalling its bots instead would have them restarted as crashes.
            Err(e) => match probe.terminate(orchestrator) {
                Some(asked @ Asked::Terminate | asked @ Asked::CtrlBreak) => {
                    audit.warn(&format!(
                        "cannot write the stop-all request ({e}); asked master-launch (pid {}) \
                         by {asked} instead: it stops the desk in order itself",
                        orchestrator.pid
                    ));
                    format!(
                        "master-launch stops it (asked by {asked}: the stop-all request could not be written)"
                    )
                }
                asked => {
                    let why = match &asked {
                        Some(Asked::NotPermitted) => find::not_permitted(),
                        Some(other) => other.to_string(),
                        None => "it is gone".into(),
                    };
                    audit.warn(&format!(
                        "cannot write the stop-all request ({e}) nor signal master-launch (pid \
                         {}: {why}); asking it for each component instead",
                        orchestrator.pid
                    ));
                    for target in targets
                        .iter_mut()
                        .filter(|t| t.via == Via::Orchestrator(orchestrator))
                    {
                        target.via = Via::Holder(orchestrator);
                    }
                    String::new()
                }
            },
        };
    }
    let total = targets.len();
    let mut context = StopContext {
        probe,
        locks: LockDir::for_fleet(&fleet),
        lock_dir: fleet.lock_dir.clone(),
        timeout,
        cluster: fleet.cluster.as_ref().map(ClusterStops::new),
        orchestrator_told,
        signalled_past_a_holder: false,
    };
    let outcome = stop_in_order(
        targets,
        Grace::Given(timeout),
        &mut context,
        &mut Progress::new(&audit),
    );
    if let Some(cluster) = &context.cluster {
        cluster.withdraw();
    }
    let mut probe = context.probe;
    let _ = StopRequest::remove(&fleet.lock_dir, MASTER_LOCK_NAME);
    clean_locks(&fleet, &selection, &mut probe, &audit);
    let mut survivors = outcome.survivors.clone();
    // "All stopped" is said only after a fresh look finds nothing of what was asked
    // for still running: a holder that was not told may have started a bot again.
    if context.signalled_past_a_holder {
        std::thread::sleep(RESTART_LOOK_AFTER);
    }
    survivors.extend(running_again(&fleet, &selection, &mut probe, &survivors));
    if survivors.is_empty() {
        audit.line("all stopped");
        outln!("All {total} stopped.");
        if let Some(path) = audit.broken() {
            errln!(
                "{TOOL}: everything stopped, but the audit log {} is incomplete",
                path.display()
            );
            return Ok(ExitCode::Problems);
        }
        if blind.is_some() {
            audit.line("all stopped on this machine; other hosts unknown (etcd unreadable)");
        }
        return Ok(blind_exit(blind.as_deref()));
    }
    errln!("{TOOL}: THESE ARE STILL RUNNING:");
    for name in &survivors {
        errln!("  {name}");
    }
    audit.line(&format!("survivors: {}", survivors.join(", ")));
    Ok(ExitCode::Problems)
}

/// How long after the stop a holder that was not told (its stop request could not be
/// written) is given to start a bot again before the final look: its first restart
/// after a crash is immediate.
const RESTART_LOOK_AFTER: Duration = Duration::from_secs(1);

/// What of the selected components runs after the stop, by a fresh look: each as
/// "NAME (pid N): running again", except those already named among `survivors`.
fn running_again(
    fleet: &Fleet,
    selection: &AccountSelection,
    probe: &mut ProcessProbe,
    survivors: &[String],
) -> Vec<String> {
    let snapshot = DeskSnapshot::take(fleet, probe).unwrap_or_else(|_| {
        DeskSnapshot::build(
            fleet,
            Vec::new(),
            probe.table(),
            lockcore::process::now_secs(),
        )
    });
    let mut found = Vec::new();
    for view in snapshot
        .components
        .iter()
        .filter(|v| selection.includes(v.component.account.as_deref()))
    {
        for copy in &view.copies {
            let pid = copy.tree.root.pid;
            let name = format!("{} (pid {pid})", view.component.lock_name);
            if !survivors.contains(&name) {
                found.push(format!(
                    "{name}: running again after its stop (started by its holder or someone else)"
                ));
            }
        }
    }
    found
}

/// `[cluster]` and etcd could not be read: why, and what that leaves undone.
fn cluster_blind(snapshot: &DeskSnapshot) -> Option<String> {
    let cluster = snapshot.cluster.as_ref()?;
    let error = cluster.error.as_ref()?;
    Some(format!(
        "cannot read the cluster's locks in etcd ({error}): what other hosts run can be \
         neither seen nor stopped from here; only this machine's processes are handled. \
         Run safe-shutdown on each host, or again once etcd at {} answers",
        cluster.endpoints.join(", ")
    ))
}

/// The exit code of a run that did all it could here: never 0 while etcd could not be
/// read (another host may still run the desk); the reason is repeated last.
fn blind_exit(blind: Option<&str>) -> ExitCode {
    match blind {
        Some(why) => {
            errln!("{TOOL}: not done everywhere: {why}");
            ExitCode::Problems
        }
        None => ExitCode::Ok,
    }
}

/// The audit trail: `<log_dir>/safe-shutdown.log`. If it cannot be opened, the stop
/// goes on (the emergency stop never waits on a log); stderr says so with the path, and
/// the exit code says the audit is incomplete.
struct Audit {
    log: Option<Log>,
    broken: Option<PathBuf>,
}

impl Audit {
    fn open(path: &Path) -> Audit {
        match Log::open(path, false) {
            Ok(log) => Audit {
                log: Some(log),
                broken: None,
            },
            Err(e) => {
                errln!(
                    "{TOOL}: cannot open the audit log {}: {e}; stopping anyway, without an audit",
                    path.display()
                );
                Audit {
                    log: None,
                    broken: Some(path.to_path_buf()),
                }
            }
        }
    }

    /// No audit wanted (nothing is being stopped).
    fn none() -> Audit {
        Audit {
            log: None,
            broken: None,
        }
    }

    fn line(&self, text: &str) {
        if let Some(log) = &self.log {
            log.line("", text);
        }
    }

    /// A line for the audit and for stderr: something did not go as planned.
    fn warn(&self, text: &str) {
        errln!("{TOOL}: {text}");
        self.line(text);
    }

    /// The audit log's path, if it could not be opened.
    fn broken(&self) -> Option<&Path> {
        self.broken.as_deref()
    }
}

fn summary(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_targets(targets: &[Target], now: u64) {
    outln!(
        "{:<20} {:<14} {:<8} {:<10} HOW IT WAS FOUND",
        "NAME",
        "ACCOUNT",
        "PID",
        "UPTIME"
    );
    for target in targets {
        let (pid, uptime) = match target.who {
            Some(who) => (
                who.pid.to_string(),
                human_duration(now.saturating_sub(who.start_time)),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        outln!(
            "{:<20} {:<14} {:<8} {:<10} {}",
            target.name,
            target.account.as_deref().unwrap_or("-"),
            pid,
            uptime,
            target.found
        );
    }
}

fn confirmed(count: usize) -> Result<bool> {
    outln!();
    outln!("This stops {count} process(es). Open trades are NOT closed by stopping the bots.");
    let answer: String = dialoguer::Input::new()
        .with_prompt("Type YES to stop them")
        .allow_empty(true)
        .interact_text()
        .map_err(ToolError::failed)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

/// Removes the lock files of what was asked for, where no holder is left.
fn clean_locks(
    fleet: &Fleet,
    selection: &AccountSelection,
    probe: &mut ProcessProbe,
    audit: &Audit,
) {
    let locks = LockDir::for_fleet(fleet);
    let mut names: Vec<String> = fleet
        .components()
        .filter(|c| selection.includes(c.account.as_deref()))
        .map(|c| c.lock_name.clone())
        .collect();
    if selection.is_all() {
        names.push(MASTER_LOCK_NAME.to_string());
    }
    for name in names {
        if let Ok(Removal::Removed(status)) = locks.remove_if_stale(&name, probe) {
            let line = format!(
                "removed {} lock {} ({})",
                status.state.as_str(),
                status.name,
                status.detail
            );
            outln!("{line}");
            audit.line(&line);
        }
    }
}

/// What people see of a stop: on a terminal a bar per stage that names the stage and
/// counts down to forcing; otherwise one plain line when a stage starts and one when
/// it ends. Forced processes are named as they are forced, and everything done goes
/// to the audit log.
struct Progress<'a> {
    audit: &'a Audit,
    bar: Option<indicatif::ProgressBar>,
    on_terminal: bool,
}

impl<'a> Progress<'a> {
    fn new(audit: &'a Audit) -> Progress<'a> {
        Progress {
            audit,
            bar: None,
            on_terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl StopObserver for Progress<'_> {
    fn stage_started(&mut self, stage: Stage, total: usize) {
        if self.on_terminal {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        } else {
            outln!("stopping {} ({total})...", stage.label());
        }
    }

    fn asked(&mut self, name: &str, how: &str) {
        self.audit.line(&format!("{name}: {how}"));
    }

    fn waiting(&mut self, progress: &engine::Progress) {
        if let Some(bar) = &self.bar {
            bar.set_message(progress.to_string());
        }
    }

    fn forced(&mut self, name: &str, how: &str) {
        let line = format!("forcing {name}: it did not stop in time; {how}");
        self.audit.line(&line);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => outln!("{line}"),
        }
    }

    fn stage_finished(&mut self, progress: &engine::Progress) {
        let line = format!(
            "{}: {} of {} stopped",
            progress.stage.label(),
            progress.stopped,
            progress.total
        );
        self.audit.line(&line);
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(progress.to_string()),
            None => outln!("{line}"),
        }
    }
}
