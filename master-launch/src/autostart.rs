//! `master-launch install|uninstall`: the desk as a Task Scheduler task (Windows) or a
//! systemd user unit (Linux), so it comes back by itself after a reboot. The entry,
//! its definition and the scheduler commands live in `lockcore::autostart`; this is
//! the command line's side: load the config, pick the program to run, report.

use std::path::Path;

use lockcore::autostart::{self, Entry, Removal, Scheduler, Trigger};
use lockcore::{ExitCode, Fleet, errln, outln};

use crate::{Result, TOOL};

/// `--at`: when the desk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum At {
    /// When you log on (MetaTrader needs your desktop).
    Logon,
    /// When the machine starts, before anyone logs on (no desktop on Windows).
    Startup,
}

/// `install [--at logon|startup] [--print]`.
pub fn install(config: &Path, at: At, print: bool) -> Result<ExitCode> {
    let fleet = Fleet::load(config)?;
    let exe = std::env::current_exe()?;
    let trigger = match at {
        At::Logon => Trigger::Logon,
        At::Startup => Trigger::Startup,
    };
    let scheduler = Scheduler::native();
    // A path no definition can hold, or no user to name, is a usage error (exit 2).
    let entry = Entry::for_fleet(scheduler, &fleet, &exe, trigger)?;
    if print {
        // The definition alone on stdout (it can be saved and checked); the rest on
        // stderr. Nothing is installed.
        let definition = entry.definition()?;
        lockcore::printer::stdout().write(definition);
        errln!(
            "{TOOL}: would install the {} {:?} (nothing was installed)",
            scheduler.describe(),
            entry.name
        );
        return Ok(ExitCode::Ok);
    }
    let installed = entry.install()?;
    let when = match trigger {
        Trigger::Logon => "when you log on",
        Trigger::Startup => "when the machine starts",
    };
    match &installed.file {
        Some(file) => outln!(
            "{TOOL}: installed the systemd user unit {} ({}), enabled: the desk starts {when}. \
             Start it now with `systemctl --user start {}`.",
            installed.name,
            file.display(),
            installed.name
        ),
        None => outln!(
            "{TOOL}: installed the Task Scheduler task \"\\{}\": the desk starts {when}, \
             without a window. See it in Task Scheduler (taskschd.msc) under Task Scheduler \
             Library > {}.",
            installed.name,
            autostart::TASK_FOLDER
        ),
    }
    if installed.file.is_some() && trigger == Trigger::Startup {
        // A user unit starts with the user's manager: at boot only with lingering.
        outln!("{TOOL}: for it to start at boot before you log in: loginctl enable-linger $USER");
    }
    outln!(
        "{TOOL}: remove it with: master-launch --config \"{}\" uninstall",
        entry.config
    );
    Ok(ExitCode::Ok)
}

/// `uninstall`: removes exactly this desk's entry.
pub fn uninstall(config: &Path) -> Result<ExitCode> {
    // The config must still be this desk's: a typo must not look like "not installed".
    let fleet = Fleet::load(config)?;
    let scheduler = Scheduler::native();
    let status = autostart::status(scheduler, &fleet.path);
    match autostart::uninstall(scheduler, &fleet.path)? {
        Removal::Removed => outln!(
            "{TOOL}: removed the {} \"{}\": the desk no longer starts by itself \
             (a desk that runs now keeps running; stop it with safe-shutdown)",
            scheduler.describe(),
            status.name
        ),
        Removal::NotInstalled { detail } => outln!(
            "{TOOL}: no {} \"{}\" is installed; nothing to remove{}",
            scheduler.describe(),
            status.name,
            detail.map_or(String::new(), |d| format!(" ({d})"))
        ),
    }
    Ok(ExitCode::Ok)
}
