//! `cargo xtask dist [--target TRIPLE] [--config PATH]`: the release bundle.
//!
//! Builds every tool in release mode, then lays out
//! `dist/desk-tools-<version>-<target>/` with the binaries, the `.bat` wrappers a
//! trader double-clicks (`MASTER_LAUNCH.bat`, `SAFE_START.bat`, `SAFE_SHUTDOWN.bat`, `CHECK_PROCS.bat`,
//! `LOCK_GC.bat`, and one hand-start wrapper per component of the given `fleet.toml`),
//! an example `fleet.toml`, `process_lock.py` (the drop-in lock module for the desk's
//! existing bots, from `python/`), the `[[alert]]` examples in `alerts/` (from
//! `examples/alerts/`), and a README for the desk; and zips it all. Every `.bat`
//! comes from [`bat::wrapper`]: edit the template, never the generated files.
//!
//! `cargo xtask docs [--check]`: docs/reference.md's tables generated from the code ([`docs`]).
//!
//! `cargo xtask test [ARGS]...`: the README's test command; checks for (and where it
//! can, installs) the programs the suite runs, then `cargo test --workspace` ([`suite`]).

// A developer tool run through cargo: plain prints to a terminal are what it needs.
#![allow(clippy::print_stdout, clippy::print_stderr)]
mod bat;
mod docs;
mod suite;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, Subcommand};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOOLS: [&str; 4] = ["master-launch", "safe-shutdown", "check-procs", "lock-gc"];
/// The `[[alert]]` examples shipped in the bundle's `alerts/` (from `examples/alerts/`).
const ALERT_EXAMPLES: [&str; 2] = ["webhook.py", "mail.py"];
const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

#[derive(Debug, Parser)]
#[command(about = "Developer tasks for the desk tools")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the release bundle (folder and zip) under dist/.
    Dist {
        /// Target triple; x86_64-pc-windows-gnu builds through .ci/windows-lane.
        #[arg(long, default_value = WINDOWS_TARGET)]
        target: String,
        /// The desk config the per-component wrappers are generated from, and that
        /// ships as the example fleet.toml.
        #[arg(long, default_value = "examples/desk/fleet.toml")]
        config: PathBuf,
        /// Use binaries already built into this folder instead of building.
        #[arg(long, value_name = "DIR")]
        prebuilt: Option<PathBuf>,
        /// Where to put the bundle.
        #[arg(long, value_name = "DIR", default_value = "dist")]
        out: PathBuf,
    },
    /// Write the reference's generated tables (exit codes, check-procs --json fields and
    /// states, fleet.toml keys, events) from the code, into docs/reference.md.
    Docs {
        /// Change nothing; exit 1 and show the difference if the file is not what
        /// the code says.
        #[arg(long)]
        check: bool,
        /// The file to write or check (relative to the workspace root).
        #[arg(long, value_name = "PATH", default_value = "docs/reference.md")]
        readme: PathBuf,
    },
    /// Run the whole test suite: check for python3, etcd and strace first (install
    /// them with apt-get when run as root, else print the install command and stop),
    /// then `cargo test --workspace --locked ARGS...`.
    Test {
        /// Passed on to `cargo test` (for example `-- --test-threads 1`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> std::process::ExitCode {
    let Args { task } = Args::parse();
    let result = match task {
        Task::Dist {
            target,
            config,
            prebuilt,
            out,
        } => dist(&target, &config, prebuilt.as_deref(), &out).map(|zip| {
            println!("dist: {}", zip.display());
            true
        }),
        Task::Docs { check, readme } => docs::run(&workspace_root().join(readme), check),
        Task::Test { args } => suite::run(&args),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            lockcore::output::print_error("xtask", error.as_ref());
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn dist(target: &str, config: &Path, prebuilt: Option<&Path>, out_dir: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let config = root.join(config);
    let out_dir = root.join(out_dir);
    let fleet = lockcore::Fleet::load(&config)?;
    let windows = target.contains("windows");
    let bin_dir = match prebuilt {
        Some(dir) => dir.to_path_buf(),
        None => build(&root, target)?,
    };
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("desk-tools-{version}-{target}");
    let out = out_dir.join(&name);
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    let exe = if windows { ".exe" } else { "" };
    for tool in TOOLS {
        let from = bin_dir.join(format!("{tool}{exe}"));
        fs::copy(&from, out.join(format!("{tool}{exe}")))
            .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    for (file, text) in bat::all_wrappers(&fleet) {
        fs::write(out.join(file), text)?;
    }
    fs::copy(&config, out.join("fleet.toml"))?;
    // Beside the bots, where they import it from; shipped byte for byte.
    let module = root.join("python/process_lock.py");
    fs::copy(&module, out.join("process_lock.py"))
        .map_err(|e| format!("cannot copy {}: {e}", module.display()))?;
    // The `[[alert]]` examples, where fleet.toml's `command = ["python",
    // "alerts/webhook.py"]` finds them; shipped byte for byte.
    let alerts = out.join("alerts");
    fs::create_dir_all(&alerts)?;
    for example in ALERT_EXAMPLES {
        let from = root.join("examples/alerts").join(example);
        fs::copy(&from, alerts.join(example))
            .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    fs::write(out.join("README.txt"), desk_readme().replace('\n', "\r\n"))?;
    let zip = out_dir.join(format!("{name}.zip"));
    write_zip(&out, &name, &zip)?;
    Ok(zip)
}

/// Release build of every tool; returns where the binaries are.
fn build(root: &Path, target: &str) -> Result<PathBuf> {
    let status = if target == WINDOWS_TARGET {
        // rustup here has only the Linux target: the lane builds std for Windows.
        Command::new("bash")
            .arg(root.join(".ci/windows-lane"))
            .arg("build-release")
            .current_dir(root)
            .status()?
    } else {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "--release", "--target", target])
            .current_dir(root);
        for tool in TOOLS {
            command.args(["-p", tool]);
        }
        command.status()?
    };
    if !status.success() {
        return Err(format!("the release build for {target} failed").into());
    }
    let target_dir = if target == WINDOWS_TARGET {
        "target/windows"
    } else {
        "target"
    };
    Ok(root.join(target_dir).join(target).join("release"))
}

fn write_zip(folder: &Path, prefix: &str, zip_path: &Path) -> Result<()> {
    let file = fs::File::create(zip_path)?;
    let mut zip = zip::ZipWriter::new(file);
    add_folder(&mut zip, folder, prefix)?;
    zip.finish()?;
    Ok(())
}

/// Every file of `folder` (and of its folders, `alerts/`) under `prefix/` in the zip.
fn add_folder(zip: &mut zip::ZipWriter<fs::File>, folder: &Path, prefix: &str) -> Result<()> {
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    let mut entries: Vec<PathBuf> = fs::read_dir(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let name = format!("{prefix}/{file_name}");
        if path.is_dir() {
            add_folder(zip, &path, &name)?;
            continue;
        }
        zip.start_file(name, options)?;
        zip.write_all(&fs::read(&path)?)?;
    }
    Ok(())
}

fn desk_readme() -> String {
    "Desk tools: one running instance per trading account\n\
     =====================================================\n\n\
     Double-click:\n\
     \x20 MASTER_LAUNCH.bat   start the whole desk once (refuses if anything already runs)\n\
     \x20 SAFE_START.bat      see what runs, stop it in a safe order (asks you to type\n\
     \x20                     YES), then start the whole desk once; with nothing running\n\
     \x20                     it starts at once; if anything will not stop, it starts\n\
     \x20                     nothing and names it\n\
     \x20 SAFE_SHUTDOWN.bat   stop the desk in a safe order (asks you to type YES)\n\
     \x20 CHECK_PROCS.bat     see what runs and what is wrong\n\
     \x20 LOCK_GC.bat         remove stale lock files (never a held one)\n\
     \x20 START_<NAME>.bat    start one bot: through the running master-launch, else by\n\
     \x20                     hand under its lock\n\
     \x20 INSTALL_AT_LOGON.bat    start the desk by itself, without a window, whenever\n\
     \x20                         you log on (after a Windows Update restart too)\n\
     \x20 UNINSTALL_AT_LOGON.bat  stop doing that (a running desk keeps running)\n\
     \x20 alerts\\               [[alert]] examples: webhook.py (a chat webhook) and\n\
     \x20                         mail.py (e-mail); see the top of each file\n\n\
     Starting at logon\n\
     -----------------\n\
     INSTALL_AT_LOGON.bat adds a Task Scheduler task named\n\
     \"DeskTools\\MASTER_LAUNCH <this folder> <code>\" that runs master-launch.exe with\n\
     this folder's fleet.toml when you log on: in your session (MetaTrader needs your\n\
     desktop), with no window to close by mistake, never twice at once, no time\n\
     limit, and retried every minute if Windows cannot start it. Running it again\n\
     replaces the task; each desk folder gets its own task. To check it: open Task\n\
     Scheduler (Win+R, taskschd.msc), Task Scheduler Library > DeskTools: the task,\n\
     its trigger (At log on of you), its last run result and its History tab.\n\
     CHECK_PROCS.bat also says \"Starts by itself: yes\" under its table.\n\
     Stop the desk with SAFE_SHUTDOWN.bat, never with End in Task Scheduler: End\n\
     would kill every bot at once, out of order (the task does not allow it).\n\
     Before you log off or restart, run SAFE_SHUTDOWN.bat: at logoff Windows ends\n\
     the session's programs without an orderly stop. Set Windows Update's active\n\
     hours (Settings > Windows Update > Advanced options) to your trading hours so\n\
     it does not restart the machine under a running desk.\n\
     For the desk to start at boot before anyone logs on instead (no MetaTrader\n\
     windows then), run in this folder from an elevated prompt:\n\
     \x20 INSTALL_AT_LOGON.bat --at startup\n\n\
     Edit fleet.toml first: accounts, logins, terminals, the python path.\n\n\
     Your bots: keep `with ProcessLock(...)` in them and replace the old\n\
     process_lock.py beside them with the one in this folder. Under MASTER_LAUNCH.bat\n\
     (or a START_<NAME>.bat) it confirms the lock the launcher holds for the bot;\n\
     started any other way it takes the same lock itself, so a second copy gets\n\
     \"LOCK FAILURE\" and the tools show the running one. Or remove process_lock.py\n\
     and put this two-line guard at the top of each bot, so that only the launcher\n\
     can start it:\n\
     \x20 if not os.environ.get(\"FLEET_LOCK_FILE\"):\n\
     \x20     sys.exit(\"refusing to start: start me through master-launch\")\n\n\
     While the desk runs, from PowerShell in this folder:\n\
     \x20 .\\master-launch.exe start BRAIN_ATLAS     bring back a bot that was given up\n\
     \x20 .\\master-launch.exe start --account ATLAS or stopped (watchdog, then brain)\n\
     \x20 .\\master-launch.exe restart BRAIN_ATLAS   stop it gracefully and start it again\n\
     A brain never runs while its account's watchdog does not.\n\n\
     From PowerShell: .\\check-procs.exe --json | ConvertFrom-Json\n\
     Scheduling a .bat (Task Scheduler) or running it from PowerShell: set\n\
     DESK_NO_PAUSE=1 so it does not wait for a key at the end.\n\n\
     Exit codes (every tool):\n"
        .to_string()
        + &lockcore::ExitCode::ALL
            .iter()
            .map(|code| wrap(&format!("  {}  ", code.code()), code.meaning(), 80, "     "))
            .collect::<String>()
}

/// `prefix` and `text` in lines of at most `width` characters (a longer word stands
/// alone), each line after the first starting with `indent`.
fn wrap(prefix: &str, text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = prefix.to_string();
    let mut fresh = true;
    for word in text.split_whitespace() {
        if !fresh && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_string();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}
