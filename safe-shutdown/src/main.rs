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
//! something survived, the user cancelled, or the audit log is incomplete, 2 bad
//! arguments or config, or no terminal to confirm on.

mod find;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use lockcore::config::{DEFAULT_CONFIG, MASTER_LOCK_NAME};
use lockcore::exit::UsageError;
use lockcore::logs::Log;
use lockcore::output::{finish, human_duration};
use lockcore::{DeskSnapshot, ExitCode, Fleet, LockDir, ProcessProbe, Removal, StopRequest};

use crate::find::{Stage, Target};

const TOOL: &str = "safe-shutdown";
/// Extra time a lock holder gets beyond the timeout before we force its child: it
/// forces at the deadline itself; this covers a hung holder.
const HOLDER_MARGIN: Duration = Duration::from_secs(3);
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
    /// Do not ask; stop at once.
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

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(args: &Args) -> Result<ExitCode> {
    let fleet = Fleet::load(&args.config)?;
    for account in &args.accounts {
        if fleet.account(account).is_none() {
            return Err(Box::new(UsageError(format!(
                "--account {account}: no such account in {}",
                fleet.path.display()
            ))));
        }
    }
    let mut probe = ProcessProbe::new()?;
    let snapshot = match DeskSnapshot::take(&fleet, &mut probe) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            // Without the lock dir, the desk's processes are still found by command line.
            eprintln!("{TOOL}: {e}; looking for the desk's processes by their command lines only");
            DeskSnapshot::build(
                &fleet,
                Vec::new(),
                probe.table(),
                lockcore::process::now_secs(),
            )
        }
    };
    let targets = find::targets(&snapshot, &args.accounts);
    if targets.is_empty() {
        println!("Nothing to stop: no process of the desk runs.");
        if !args.dry_run {
            clean_locks(&fleet, &args.accounts, &mut probe, &Audit::none());
        }
        return Ok(ExitCode::Ok);
    }
    print_targets(&targets, snapshot.taken_at);
    if args.dry_run {
        println!("\n(dry run: nothing was stopped)");
        return Ok(ExitCode::Ok);
    }
    let audit = Audit::open(&fleet.log_dir.join("safe-shutdown.log"));
    audit.line(&format!(
        "found {} process(es): {}",
        targets.len(),
        summary(&targets)
    ));
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            audit.line("refused: no terminal to confirm on and no --yes; nothing stopped");
            eprintln!(
                "{TOOL}: refusing to stop anything without confirmation: there is no terminal \
                 to ask on. Run it in a console, or pass --yes."
            );
            return Ok(ExitCode::Usage);
        }
        if !confirmed(targets.len())? {
            audit.line("cancelled by the user; nothing stopped");
            println!("Cancelled. Nothing was stopped.");
            return Ok(ExitCode::Problems);
        }
    }
    audit.line(if args.yes {
        "confirmed by --yes"
    } else {
        "confirmed by the user (YES)"
    });
    let timeout = Duration::from_secs(args.timeout.min(MAX_TIMEOUT_SECS));
    let mut orchestrator_told = false;
    if args.accounts.is_empty() && targets.iter().any(|t| t.stage == Stage::Orchestrator) {
        // Tell master-launch first: it restarts nothing and stops in order itself.
        match StopRequest::new(MASTER_LOCK_NAME, timeout).write(&fleet.lock_dir) {
            Ok(_) => {
                orchestrator_told = true;
                audit.line("asked master-launch to stop the whole desk (stop-all request)");
            }
            Err(e) => audit.warn(&format!(
                "cannot ask master-launch to stop the desk ({e}); stopping each component"
            )),
        }
    }
    for stage in Stage::ORDER {
        let in_stage: Vec<&Target> = targets.iter().filter(|t| t.stage == stage).collect();
        if !in_stage.is_empty() {
            stop_stage(
                stage,
                &in_stage,
                &fleet,
                timeout,
                orchestrator_told,
                &audit,
                &mut probe,
            );
        }
    }
    let survivors: Vec<&Target> = targets.iter().filter(|t| probe.is_alive(t.who)).collect();
    let _ = StopRequest::remove(&fleet.lock_dir, MASTER_LOCK_NAME);
    clean_locks(&fleet, &args.accounts, &mut probe, &audit);
    if survivors.is_empty() {
        audit.line("all stopped");
        println!("All {} stopped.", targets.len());
        if let Some(path) = audit.broken() {
            eprintln!(
                "{TOOL}: everything stopped, but the audit log {} is incomplete",
                path.display()
            );
            return Ok(ExitCode::Problems);
        }
        return Ok(ExitCode::Ok);
    }
    eprintln!("{TOOL}: THESE ARE STILL RUNNING:");
    for target in &survivors {
        eprintln!(
            "  {} pid {} ({})",
            target.name, target.who.pid, target.found
        );
    }
    audit.line(&format!(
        "survivors: {}",
        summary(&survivors.iter().map(|t| (*t).clone()).collect::<Vec<_>>())
    ));
    Ok(ExitCode::Problems)
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
                eprintln!(
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
        eprintln!("{TOOL}: {text}");
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
        .map(|t| format!("{} pid {}", t.name, t.who.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_targets(targets: &[Target], now: u64) {
    println!(
        "{:<20} {:<14} {:<8} {:<10} HOW IT WAS FOUND",
        "NAME", "ACCOUNT", "PID", "UPTIME"
    );
    for target in targets {
        println!(
            "{:<20} {:<14} {:<8} {:<10} {}",
            target.name,
            target.account.as_deref().unwrap_or("-"),
            target.who.pid,
            human_duration(now.saturating_sub(target.who.start_time)),
            target.found
        );
    }
}

fn confirmed(count: usize) -> Result<bool> {
    println!();
    println!("This stops {count} process(es). Open trades are NOT closed by stopping the bots.");
    let answer: String = dialoguer::Input::new()
        .with_prompt("Type YES to stop them")
        .allow_empty(true)
        .interact_text()?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

/// One stage, in parallel: graceful (through the holder, or a signal), wait, force.
fn stop_stage(
    stage: Stage,
    targets: &[&Target],
    fleet: &Fleet,
    timeout: Duration,
    orchestrator_told: bool,
    audit: &Audit,
    probe: &mut ProcessProbe,
) {
    let progress = Progress::new(stage, targets.len());
    let started = Instant::now();
    let mut deadline = timeout;
    for target in targets {
        if let Some(now) = probe.identity(target.who.pid)
            && !lockcore::process::same_start(now.start_time, target.who.start_time)
        {
            let line = format!(
                "{}: pid {} now belongs to another process (started {}); left alone",
                target.name,
                target.who.pid,
                lockcore::record::format_local(now.start_time)
            );
            println!("{line}");
            audit.line(&line);
            continue;
        }
        // Timeouts are at most a day: these sums cannot overflow; saturating anyway.
        let holder_deadline = timeout.saturating_add(HOLDER_MARGIN);
        let request_written = match target.holder {
            Some(_) if orchestrator_told && target.held_by_orchestrator => {
                // The stop-all request covers it; master-launch keeps the order.
                deadline = deadline.max(timeout.saturating_mul(3).saturating_add(HOLDER_MARGIN));
                true
            }
            Some(holder) => match StopRequest::new(&target.name, timeout).write(&fleet.lock_dir) {
                Ok(_) => {
                    audit.line(&format!(
                        "{}: stop request to its holder pid {}",
                        target.name, holder.pid
                    ));
                    deadline = deadline.max(holder_deadline);
                    true
                }
                Err(e) => {
                    audit.warn(&format!(
                        "{}: {e}; asking pid {} directly instead",
                        target.name, target.who.pid
                    ));
                    false
                }
            },
            None => false,
        };
        if !request_written && let Some(asked) = probe.terminate(target.who) {
            audit.line(&format!(
                "{}: asked pid {} to stop: {asked}",
                target.name, target.who.pid
            ));
        }
    }
    loop {
        let alive = targets.iter().filter(|t| probe.is_alive(t.who)).count();
        progress.update(targets.len() - alive);
        if alive == 0 || started.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stubborn: Vec<&&Target> = targets.iter().filter(|t| probe.is_alive(t.who)).collect();
    for target in stubborn {
        audit.line(&format!(
            "{}: still running after {}; killing pid {} and its children",
            target.name,
            human_duration(started.elapsed().as_secs()),
            target.who.pid
        ));
        probe.kill_tree(target.who);
    }
    let forced_at = Instant::now();
    while targets.iter().any(|t| probe.is_alive(t.who))
        && forced_at.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = targets.iter().filter(|t| !probe.is_alive(t.who)).count();
    progress.finish(stopped);
    audit.line(&format!(
        "{}: {stopped} of {} stopped",
        stage.label(),
        targets.len()
    ));
}

/// Removes the lock files of what was asked for, where no holder is left.
fn clean_locks(fleet: &Fleet, accounts: &[String], probe: &mut ProcessProbe, audit: &Audit) {
    let locks = LockDir::new(&fleet.lock_dir);
    let mut names: Vec<String> = fleet
        .components()
        .filter(|c| {
            accounts.is_empty()
                || c.account
                    .as_ref()
                    .is_some_and(|a| accounts.iter().any(|x| x.eq_ignore_ascii_case(a)))
        })
        .map(|c| c.lock_name.clone())
        .collect();
    if accounts.is_empty() {
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
            println!("{line}");
            audit.line(&line);
        }
    }
}

/// A spinner per stage on a terminal; plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: &'static str,
    total: usize,
}

impl Progress {
    fn new(stage: Stage, total: usize) -> Progress {
        let label = stage.label();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_message(format!("stopping {label}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() {
            println!("stopping {label} ({total})...");
        }
        Progress { bar, label, total }
    }

    fn update(&self, stopped: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(stopped as u64);
        }
    }

    fn finish(&self, stopped: usize) {
        let line = format!("{}: {stopped} of {} stopped", self.label, self.total);
        match &self.bar {
            Some(bar) => bar.finish_with_message(line),
            None => println!("{line}"),
        }
    }
}
