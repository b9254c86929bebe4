//! `check-procs`: what runs on the desk and what is wrong with it.
//!
//! Reads `fleet.toml`, scans the lock dir and the process table once, and prints a
//! table (or `--json`), and whether the desk is installed to start by itself at logon
//! (`master-launch install`). It never changes anything. Exit codes: 0 healthy, 1 problems,
//! 2 bad arguments or config (see `lockcore::ExitCode`).

mod render;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use lockcore::autostart::{self, AutostartStatus, Scheduler};
use lockcore::exit::ToolError;
use lockcore::output::{finish, use_color};
use lockcore::{DeskSnapshot, ExitCode, Fleet, ProcessProbe};

const TOOL: &str = "check-procs";

/// Show what runs on the trading desk and what is wrong with it.
///
/// One row per component of fleet.toml (globals, then each account's watchdog and
/// brain), then one line per problem, most serious first: duplicate copies, copies
/// started without their lock, locks whose process is gone, legacy, stale and corrupt
/// lock files. Exit status: 0 healthy, 1 problems found, 2 bad arguments or config.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The desk's config file.
    #[arg(long, value_name = "PATH", default_value = lockcore::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print one JSON document instead of the table (field names are stable).
    #[arg(long)]
    json: bool,
    /// Redraw every SECS seconds (default 2) until Ctrl+C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
}

fn main() -> std::process::ExitCode {
    finish(TOOL, run(&Args::parse()))
}

fn run(args: &Args) -> Result<ExitCode, ToolError> {
    let fleet = Fleet::load(&args.config)?;
    let mut probe = ProcessProbe::new()?;
    // Asked once, also under --watch: on Windows it runs `schtasks /query`.
    let autostart = autostart::status(Scheduler::native(), &fleet.path);
    let Some(every) = args.watch else {
        return print_once(&fleet, &mut probe, &autostart, args.json, false);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(ToolError::failed)?;
    let redraw = !args.json && use_color(&std::io::stdout());
    let mut code = ExitCode::Ok;
    while !stop.load(Ordering::SeqCst) {
        code = print_once(&fleet, &mut probe, &autostart, args.json, redraw)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(every.max(1));
        while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(code)
}

fn print_once(
    fleet: &Fleet,
    probe: &mut ProcessProbe,
    autostart: &AutostartStatus,
    json: bool,
    clear_screen: bool,
) -> Result<ExitCode, ToolError> {
    let snapshot = DeskSnapshot::take(fleet, probe)?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&render::report(&snapshot, fleet, autostart))?;
        text.push('\n');
        text
    } else {
        render::table(&snapshot, autostart, use_color(&std::io::stdout()))
    };
    let mut stdout = std::io::stdout().lock();
    if clear_screen {
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
