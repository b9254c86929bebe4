//! `lock-gc`: removes stale and corrupt lock files, and reports each.
//!
//! Every removal goes through `LockDir::remove_if_stale_or_unknown`, which decides
//! under the exclusive OS lock, so a lock that is held, or legacy-held (an older tool's
//! PID file naming a live process), is never removed, even while processes acquire and
//! release around it.
//!
//! Only what these tools (or the older PID-file tool) wrote is removed (DESIGN.md rule
//! 12): a file with a readable record, or an unreadable one whose name is a lock of
//! this desk (a component of fleet.toml, or `MASTER_LAUNCH`). Any other unreadable
//! `*.lock` file (a `poetry.lock`) is reported as `unknown_lock` and kept. With
//! `--lock-dir` there is no config, so the desk's lock names are unknown: only
//! `MASTER_LAUNCH` counts as one. Entries that are not regular files are reported and
//! left alone. Exit codes: 0 when it ran (entries it could not use are reported as
//! skipped), 1 when the lock dir itself could not be read (nothing was cleaned), 2 bad
//! arguments or config (or a `--lock-dir` that is not a folder).

use lockcore::{errln, outln};
use std::path::PathBuf;

use clap::Parser;
use lockcore::config::MASTER_LOCK_NAME;
use lockcore::control::{DeskState, STATE_FILE};
use lockcore::exit::{ToolError, UsageError};
use lockcore::output::{finish, human_duration};
use lockcore::process::now_secs;
use lockcore::{ExitCode, Fleet, LockDir, LockState, LockStatus, ProcessProbe, Removal};

const TOOL: &str = "lock-gc";

/// Remove stale and corrupt lock files; never a held one.
///
/// A lock file is stale when no process holds its OS lock, corrupt when nobody holds
/// it and its record cannot be read. Held and legacy locks (an older tool's PID file
/// naming a live process) are left alone, and so is an unreadable file whose name is
/// not a lock of the desk (another program's `*.lock`): it is reported as unknown_lock.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The desk's config file (its lock_dir is cleaned).
    #[arg(long, value_name = "PATH", default_value = lockcore::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Clean this folder instead, without reading a config (an unreadable file is then
    /// removed only if it is named MASTER_LAUNCH.lock).
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
    let (dir, desk_locks) = match &args.lock_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(
                    UsageError(format!("--lock-dir {}: no such folder", dir.display())).into(),
                );
            }
            (LockDir::new(dir), vec![MASTER_LOCK_NAME.to_string()])
        }
        None => {
            let fleet = Fleet::load(&args.config)?;
            let mut names: Vec<String> = fleet.components().map(|c| c.lock_name.clone()).collect();
            names.push(MASTER_LOCK_NAME.to_string());
            (LockDir::for_fleet(&fleet), names)
        }
    };
    let is_desk_lock = |name: &str| desk_locks.iter().any(|n| n.eq_ignore_ascii_case(name));
    let mut probe = ProcessProbe::new()?;
    let (verb, mut count) = (
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        0,
    );
    if let Some(warning) = dir.foreign_warning() {
        errln!("{TOOL}: {warning}");
    }
    for stray in dir.stray_entries()? {
        outln!(
            "skipped {}: it is {}, not a file these tools wrote; left alone (remove it by hand \
             once you know what made it)",
            stray.file_name,
            stray.what
        );
    }
    for name in dir.lock_names()? {
        let desk_lock = is_desk_lock(&name);
        let outcome = if args.dry_run {
            match dir.inspect(&name, &mut probe) {
                Ok(Some(status))
                    if status.state.is_held()
                        || (status.state == LockState::Corrupt && !desk_lock) =>
                {
                    Removal::Kept(status)
                }
                Ok(Some(status)) => Removal::Removed(status),
                Ok(None) => Removal::Missing,
                Err(e) => {
                    outln!("skipped {name}.lock: {e}");
                    continue;
                }
            }
        } else {
            match dir.remove_if_stale_or_unknown(&name, desk_lock, &mut probe) {
                Ok(outcome) => outcome,
                // Replaced by a link or FIFO since the folder was read, or unreadable:
                // one bad entry does not stop the rest.
                Err(e) => {
                    outln!("skipped {name}.lock: {e}");
                    continue;
                }
            }
        };
        match outcome {
            Removal::Removed(status) => {
                count += 1;
                outln!("{verb} {}", describe(&status));
            }
            Removal::Kept(status) if status.state == LockState::Legacy => {
                outln!("kept {} (legacy: {})", status.name, status.detail);
            }
            Removal::Kept(status) if status.state == LockState::Corrupt => {
                outln!(
                    "kept {}.lock (unknown_lock: {}; its name is not a lock of this desk, so \
                     another program may own it)",
                    status.name,
                    status.detail
                );
            }
            Removal::Kept(_) | Removal::Missing => {}
        }
    }
    // The published view of a master-launch that was killed outright (it removes its
    // own when it ends): it says nothing true any more.
    let stale_view = if args.dry_run {
        DeskState::stale(dir.path(), &mut probe)
    } else {
        match DeskState::remove_stale(dir.path(), &mut probe) {
            Ok(view) => view,
            Err(e) => {
                outln!("skipped {STATE_FILE}: {e}");
                None
            }
        }
    };
    if let Some(view) = stale_view {
        outln!(
            "{verb} {STATE_FILE}: the view of master-launch pid {}, which is gone",
            view.orchestrator.pid
        );
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
