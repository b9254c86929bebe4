//! `lock-gc`: removes stale and corrupt lock files, and reports each.
//!
//! Every removal goes through `LockDir::remove_if_stale`, which decides under the
//! exclusive OS lock, so a lock that is held, or legacy-held (an older tool's PID file
//! naming a live process), is never removed, even while processes acquire and release
//! around it. Exit codes: 0 when it ran, 1 when the lock dir could not be read,
//! 2 bad arguments or config.

use lockcore::outln;
use std::path::PathBuf;

use clap::Parser;
use lockcore::exit::ToolError;
use lockcore::output::{finish, human_duration};
use lockcore::process::now_secs;
use lockcore::{ExitCode, Fleet, LockDir, LockState, LockStatus, ProcessProbe, Removal};

const TOOL: &str = "lock-gc";

/// Remove stale and corrupt lock files; never a held one.
///
/// A lock file is stale when no process holds its OS lock, corrupt when nobody holds
/// it and its record cannot be read. Held and legacy locks (an older tool's PID file
/// naming a live process) are left alone.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The desk's config file (its lock_dir is cleaned).
    #[arg(long, value_name = "PATH", default_value = lockcore::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Clean this folder instead, without reading a config.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    lock_dir: Option<PathBuf>,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> std::process::ExitCode {
    finish(TOOL, run(&Args::parse()))
}

fn run(args: &Args) -> Result<ExitCode, ToolError> {
    let dir = match &args.lock_dir {
        Some(dir) => LockDir::new(dir),
        None => LockDir::for_fleet(&Fleet::load(&args.config)?),
    };
    let mut probe = ProcessProbe::new()?;
    let (verb, mut count) = (
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        0,
    );
    for name in dir.lock_names()? {
        let outcome = if args.dry_run {
            match dir.inspect(&name, &mut probe)? {
                Some(status) if !status.state.is_held() => Removal::Removed(status),
                Some(status) => Removal::Kept(status),
                None => Removal::Missing,
            }
        } else {
            dir.remove_if_stale(&name, &mut probe)?
        };
        match outcome {
            Removal::Removed(status) => {
                count += 1;
                outln!("{verb} {}", describe(&status));
            }
            Removal::Kept(status) if status.state == LockState::Legacy => {
                outln!("kept {} (legacy: {})", status.name, status.detail);
            }
            Removal::Kept(_) | Removal::Missing => {}
        }
    }
    let plural = if count == 1 { "" } else { "s" };
    outln!(
        "{verb} {count} lock file{plural} in {}",
        dir.path().display()
    );
    Ok(ExitCode::Ok)
}

/// `BRAIN_ATLAS.lock: stale (no process holds it (last holder pid 42)), record pid 42, 3h old`
fn describe(status: &LockStatus) -> String {
    let mut text = format!(
        "{}.lock: {} ({})",
        status.name,
        status.state.as_str(),
        status.detail
    );
    if let Some(record) = &status.record {
        text.push_str(&format!(", record pid {}", record.pid));
        if let Some(written) = record.timestamp_secs() {
            let age = now_secs().saturating_sub(u64::try_from(written).unwrap_or(0));
            text.push_str(&format!(", written {} ago", human_duration(age)));
        }
    }
    text
}
