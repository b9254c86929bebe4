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

use lockcore::{errln, outln};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lockcore::config::DEFAULT_CONFIG;
use lockcore::events::{DeskEvent, EventKind};
use lockcore::exit::ToolError;
use lockcore::output::finish;
use lockcore::select::AccountSelection;
use lockcore::shutdown::{
    self, Audit, DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS, clean_locks, cluster_blind, find,
    print_targets, summary,
};
use lockcore::{ExitCode, Fleet, ProcessProbe};

const TOOL: &str = "safe-shutdown";

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
        default_value_t = DEFAULT_TIMEOUT_SECS,
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
    let snapshot = shutdown::look(&fleet, &mut probe, TOOL);
    let targets = find::targets(&snapshot, &selection);
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
    let unconfirmable = !args.yes && !args.dry_run && !shutdown::can_ask();
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
            clean_locks(&fleet, &selection, &mut probe, &Audit::none(TOOL));
        }
        return Ok(blind_exit(blind.as_deref()));
    }
    print_targets(&targets, snapshot.taken_at);
    if args.dry_run {
        outln!("\n(dry run: nothing was stopped)");
        return Ok(blind_exit(blind.as_deref()));
    }
    let audit = Audit::open(&fleet.log_dir.join("safe-shutdown.log"), TOOL).with_events(&fleet);
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
        if !shutdown::confirmed(targets.len(), "Type YES to stop them")
            .map_err(ToolError::failed)?
        {
            audit.line("cancelled by the user; nothing stopped");
            outln!("Cancelled. Nothing was stopped.");
            return Ok(ExitCode::Problems);
        }
    }
    let confirmation = if args.yes {
        "confirmed by --yes"
    } else {
        "confirmed by the user (YES)"
    };
    audit.line(confirmation);
    audit.event(stop_requested(
        &audit,
        &args.accounts,
        &targets,
        confirmation,
    ));
    let timeout = Duration::from_secs(args.timeout.min(MAX_TIMEOUT_SECS));
    let stopped = shutdown::stop_targets(&fleet, &selection, targets, probe, timeout, &audit, TOOL);
    let (total, survivors) = (stopped.total, stopped.survivors);
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
    Ok(ExitCode::Problems)
}

/// The `stop_requested` event of this run: by this tool, for the whole desk (no
/// component) or the accounts named.
fn stop_requested(
    audit: &Audit,
    accounts: &[String],
    targets: &[shutdown::Target],
    confirmation: &str,
) -> DeskEvent {
    let what = if accounts.is_empty() {
        "the whole desk".to_string()
    } else {
        format!("account(s) {}", accounts.join(", "))
    };
    let mut event = DeskEvent::new(
        EventKind::StopRequested,
        format!(
            "{TOOL}: stop of {what} requested ({} process(es): {}); {confirmation}",
            targets.len(),
            summary(targets)
        ),
    );
    event.by = Some(audit.by());
    event.reason = Some(format!("{what}; {confirmation}"));
    event
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
