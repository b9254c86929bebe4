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
//! time is checked again. Exit codes: 0 all stopped, 1 something survived or the
//! user cancelled, 2 bad arguments or config, or no terminal to confirm on.

mod find;

use std::io::IsTerminal;
use std::path::PathBuf;
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
    /// Seconds each process gets to stop gracefully before it is forced.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
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
    let snapshot = DeskSnapshot::take(&fleet, &mut probe)?;
    let targets = find::targets(&snapshot, &args.accounts);
    let left_alone = find::left_alone(&snapshot, &args.accounts);
    for line in &left_alone {
        println!("{line}");
    }
    if targets.is_empty() {
        println!("Nothing to stop: no process of the desk runs.");
        if !args.dry_run {
            clean_locks(&fleet, &args.accounts, &mut probe, None);
        }
        return Ok(ExitCode::Ok);
    }
    print_targets(&targets, snapshot.taken_at);
    if args.dry_run {
        println!("\n(dry run: nothing was stopped)");
        return Ok(ExitCode::Ok);
    }
    let audit = Log::open(&fleet.log_dir.join("safe-shutdown.log"), false)?;
    audit.line(
        "",
        &format!("found {} process(es): {}", targets.len(), summary(&targets)),
    );
    for line in &left_alone {
        audit.line("", line);
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            audit.line(
                "",
                "refused: no terminal to confirm on and no --yes; nothing stopped",
            );
            eprintln!(
                "{TOOL}: refusing to stop anything without confirmation: there is no terminal \
                 to ask on. Run it in a console, or pass --yes."
            );
            return Ok(ExitCode::Usage);
        }
        if !confirmed(targets.len())? {
            audit.line("", "cancelled by the user; nothing stopped");
            println!("Cancelled. Nothing was stopped.");
            return Ok(ExitCode::Problems);
        }
    }
    audit.line(
        "",
        if args.yes {
            "confirmed by --yes"
        } else {
            "confirmed by the user (YES)"
        },
    );
    let timeout = Duration::from_secs(args.timeout);
    let whole_desk = args.accounts.is_empty();
    if whole_desk && targets.iter().any(|t| t.stage == Stage::Orchestrator) {
        // Tell master-launch first: it restarts nothing and stops in order itself.
        StopRequest::new(MASTER_LOCK_NAME, timeout).write(&fleet.lock_dir)?;
        audit.line(
            "",
            "asked master-launch to stop the whole desk (stop-all request)",
        );
    }
    for stage in Stage::ORDER {
        let in_stage: Vec<&Target> = targets.iter().filter(|t| t.stage == stage).collect();
        if !in_stage.is_empty() {
            stop_stage(
                stage, &in_stage, &fleet, timeout, whole_desk, &audit, &mut probe,
            )?;
        }
    }
    let survivors: Vec<&Target> = targets.iter().filter(|t| probe.is_alive(t.who)).collect();
    let _ = StopRequest::remove(&fleet.lock_dir, MASTER_LOCK_NAME);
    clean_locks(&fleet, &args.accounts, &mut probe, Some(&audit));
    if survivors.is_empty() {
        audit.line("", "all stopped");
        println!("All {} stopped.", targets.len());
        return Ok(ExitCode::Ok);
    }
    eprintln!("{TOOL}: THESE ARE STILL RUNNING:");
    for target in &survivors {
        eprintln!(
            "  {} pid {} ({})",
            target.name, target.who.pid, target.found
        );
    }
    audit.line(
        "",
        &format!(
            "survivors: {}",
            summary(&survivors.iter().map(|t| (*t).clone()).collect::<Vec<_>>())
        ),
    );
    Ok(ExitCode::Problems)
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
    whole_desk: bool,
    audit: &Log,
    probe: &mut ProcessProbe,
) -> Result<()> {
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
            audit.line("", &line);
            continue;
        }
        match target.holder {
            Some(_) if whole_desk && target.held_by_orchestrator => {
                // The stop-all request covers it; master-launch keeps the order.
                deadline = deadline.max(timeout * 3 + HOLDER_MARGIN);
            }
            Some(holder) => {
                StopRequest::new(&target.name, timeout).write(&fleet.lock_dir)?;
                audit.line(
                    "",
                    &format!(
                        "{}: stop request to its holder pid {}",
                        target.name, holder.pid
                    ),
                );
                deadline = deadline.max(timeout + HOLDER_MARGIN);
            }
            None => {
                if let Some(asked) = probe.terminate(target.who) {
                    audit.line(
                        "",
                        &format!(
                            "{}: asked pid {} to stop: {asked}",
                            target.name, target.who.pid
                        ),
                    );
                }
            }
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
        audit.line(
            "",
            &format!(
                "{}: still running after {}; killing pid {} and its children",
                target.name,
                human_duration(started.elapsed().as_secs()),
                target.who.pid
            ),
        );
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
    audit.line(
        "",
        &format!("{}: {stopped} of {} stopped", stage.label(), targets.len()),
    );
    Ok(())
}

/// Removes the lock files of what was asked for, where no holder is left.
fn clean_locks(fleet: &Fleet, accounts: &[String], probe: &mut ProcessProbe, audit: Option<&Log>) {
    let locks = LockDir::for_fleet(fleet);
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
            if let Some(audit) = audit {
                audit.line("", &line);
            }
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
