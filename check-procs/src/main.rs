//! `check-procs`: what runs on the desk and what is wrong with it.
//!
//! Reads `fleet.toml`, scans the lock dir and the process table once (with `[cluster]`,
//! etcd's lock keys too), and prints a table (or `--json`), and whether the desk is installed to start by itself at logon
//! (`master-launch install`). It never changes anything. Exit codes: 0 healthy, 1 problems,
//! 2 bad arguments or config (see `lockcore::ExitCode`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use lockcore::autostart::{self, AutostartStatus, Scheduler};
use lockcore::errln;
use lockcore::exit::ToolError;
use lockcore::output::{finish, use_color};
use lockcore::render;
use lockcore::{DeskSnapshot, ExitCode, Fleet, ProcessProbe};

mod history;

const TOOL: &str = "check-procs";
/// The longest `--watch` interval: a day.
const MAX_WATCH_SECS: u64 = 24 * 60 * 60;

/// How a snapshot is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table {
        clear_screen: bool,
    },
    /// One indented document.
    Json,
    /// One document per line, for `--json --watch`.
    JsonLine,
}

/// Show what runs on the trading desk and what is wrong with it.
///
/// One row per component of fleet.toml (globals, then each account's watchdog and
/// brain), then one line per problem, most serious first: duplicate copies, copies
/// started without their lock, locks whose process is gone, legacy, stale and corrupt
/// lock files. With [cluster] in fleet.toml: which host holds each component and the
/// lease time left, and whether etcd can be read. Exit status: 0 healthy, 1 problems
/// found, 2 bad arguments or config.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The desk's config file.
    #[arg(long, value_name = "PATH", default_value = lockcore::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print one JSON document instead of the table (field names are stable). With
    /// --watch: one document per line (JSON Lines).
    #[arg(long)]
    json: bool,
    /// Redraw every SECS seconds (default 2, at most a day) until Ctrl+C.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=MAX_WATCH_SECS)
    )]
    watch: Option<u64>,
    /// Print the desk's history instead: the events master-launch recorded in
    /// <log_dir>/events.jsonl (and its rotated files), oldest first, as a table (time,
    /// kind, component, summary); with --json as JSON Lines.
    #[arg(long, conflicts_with = "watch")]
    events: bool,
    /// With --events: only this component (its lock name, e.g. BRAIN_ATLAS).
    #[arg(long, value_name = "NAME", requires = "events")]
    component: Option<String>,
    /// With --events: only this account's events.
    #[arg(long, value_name = "ACCOUNT", requires = "events")]
    account: Option<String>,
    /// With --events: only events of this kind (repeatable), e.g. given_up.
    #[arg(long = "kind", value_name = "KIND", requires = "events", value_parser = history::parse_kind)]
    kinds: Vec<lockcore::events::EventKind>,
    /// With --events: only events of the last DURATION (90s, 30m, 2h, 7d).
    #[arg(long, value_name = "DURATION", requires = "events", value_parser = history::parse_since)]
    since: Option<Duration>,
    /// With --events: then keep printing new events as they are written, until Ctrl+C.
    #[arg(long, requires = "events")]
    follow: bool,
}

fn main() -> std::process::ExitCode {
    finish(TOOL, run(&Args::parse()))
}

fn run(args: &Args) -> Result<ExitCode, ToolError> {
    let fleet = Fleet::load(&args.config)?;
    if args.events {
        let filter = history::Filter {
            component: args.component.clone(),
            account: args.account.clone(),
            kinds: args.kinds.clone(),
            since: args.since,
        };
        return history::print(&fleet, &filter, args.json, args.follow);
    }
    let mut probe = ProcessProbe::new()?;
    if let Some(warning) = lockcore::LockDir::new(&fleet.lock_dir).foreign_warning() {
        errln!("{TOOL}: {warning}");
    }
    // Asked once, also under --watch: on Windows it runs `schtasks /query`.
    let autostart = autostart::status(Scheduler::native(), &fleet.path);
    let Some(every) = args.watch else {
        let format = if args.json {
            Format::Json
        } else {
            Format::Table {
                clear_screen: false,
            }
        };
        return print_once(&fleet, &mut probe, &autostart, format);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(ToolError::failed)?;
    let format = if args.json {
        Format::JsonLine
    } else {
        Format::Table {
            clear_screen: use_color(&std::io::stdout()),
        }
    };
    let mut code = ExitCode::Ok;
    while !stop.load(Ordering::SeqCst) {
        code = print_once(&fleet, &mut probe, &autostart, format)?;
        // `every` is at most a day (clap checks), so the sum fits; checked all the same.
        let started = std::time::Instant::now();
        let every = Duration::from_secs(every.clamp(1, MAX_WATCH_SECS));
        while !stop.load(Ordering::SeqCst) && started.elapsed() < every {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(code)
}

fn print_once(
    fleet: &Fleet,
    probe: &mut ProcessProbe,
    autostart: &AutostartStatus,
    format: Format,
) -> Result<ExitCode, ToolError> {
    let snapshot = DeskSnapshot::take(fleet, probe)?;
    let report = || render::report(&snapshot, fleet, autostart);
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&report())? + "\n",
        Format::JsonLine => serde_json::to_string(&report())? + "\n",
        Format::Table { .. } => render::table(&snapshot, autostart, use_color(&std::io::stdout())),
    };
    let mut stdout = std::io::stdout().lock();
    if format == (Format::Table { clear_screen: true }) {
        // Home the cursor and clear: redraw in place.
        write!(stdout, "\x1b[H\x1b[2J")?;
    }
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(if snapshot.is_healthy() {
        ExitCode::Ok
    } else {
        ExitCode::Problems
    })
}
