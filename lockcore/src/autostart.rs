//! Starting the desk by itself at logon or boot: a Task Scheduler task on Windows, a
//! systemd user unit on Linux (`master-launch install|uninstall`, and the "is it
//! installed" line of `check-procs`).
//!
//! This module owns the entry's name (derived from the config's absolute path, so two
//! desks on one machine get two entries), the definition text (pure functions, pinned
//! by golden tests for both platforms on any platform), and the few scheduler commands:
//! `schtasks /create /xml`, `/delete`, `/query` on Windows; on Linux a unit file under
//! `$XDG_CONFIG_HOME/systemd/user/` and `systemctl --user daemon-reload|enable|disable`.
//! The only `cfg` is [`Scheduler::native`]: both flavours are plain text and plain
//! commands, so both are tested everywhere (the commands against stand-in programs).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Fleet, Role};

/// The Task Scheduler folder every desk's task lives in.
pub const TASK_FOLDER: &str = "DeskTools";

/// Added to the desk's own stop timeouts: killing what is left and releasing the locks.
const STOP_MARGIN: Duration = Duration::from_secs(30);

/// Which scheduler starts the desk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Windows Task Scheduler, driven through `schtasks.exe`.
    TaskScheduler,
    /// A systemd user unit, driven through `systemctl --user`.
    SystemdUser,
}

impl Scheduler {
    /// The scheduler of the platform this binary was built for.
    pub fn native() -> Scheduler {
        if cfg!(windows) {
            Scheduler::TaskScheduler
        } else {
            Scheduler::SystemdUser
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scheduler::TaskScheduler => "Task Scheduler task",
            Scheduler::SystemdUser => "systemd user unit",
        }
    }
}

/// When the desk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// When the installing user logs on: MetaTrader terminals need an interactive
    /// session (a desktop), so this is the default.
    #[default]
    Logon,
    /// When the machine starts, before anyone logs on (no desktop on Windows).
    Startup,
}

/// What went wrong installing, removing or querying an entry.
#[derive(Debug, thiserror::Error)]
pub enum AutostartError {
    #[error("{what} \"{path}\" cannot go into a {scheduler} definition: {reason}", scheduler = .scheduler.describe())]
    Unrepresentable {
        what: &'static str,
        path: String,
        scheduler: Scheduler,
        reason: &'static str,
    },
    #[error(
        "cannot tell which user installs the task (the user's SID from this process's token); run install as the user who runs the desk"
    )]
    NoUser(#[source] io::Error),
    #[error("cannot find the home folder (neither XDG_CONFIG_HOME nor HOME is set)")]
    NoHome,
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run `{program}` (is it installed and on PATH?)")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("the scheduler refused: `{command}` failed ({status}): {message}")]
    Refused {
        command: String,
        status: String,
        message: String,
    },
}

impl AutostartError {
    /// A mistake in how the tool was called (a path no definition can hold, no user
    /// to name): exit 2. Everything else means the scheduler or the system refused.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AutostartError::Unrepresentable { .. } | AutostartError::NoUser(_)
        )
    }
}

type Result<T> = std::result::Result<T, AutostartError>;

/// One desk's autostart entry: everything its definition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub scheduler: Scheduler,
    /// The task's path (`DeskTools\MASTER_LAUNCH ...`) or the unit file's name.
    pub name: String,
    /// The absolute path of `master-launch` to run.
    pub exe: String,
    /// The absolute path of the desk's `fleet.toml`.
    pub config: String,
    /// The config's folder: the working directory.
    pub folder: String,
    pub trigger: Trigger,
    /// Windows: the installing user's SID (`S-1-5-21-...`, from the process token), whose
    /// logon starts the desk and whom the task runs as.
    pub user: Option<String>,
    /// How long a stop of the whole desk may take (systemd's `TimeoutStopSec=`).
    pub stop_timeout: Duration,
}

impl Entry {
    /// The entry for `fleet`, run by `exe`. Paths are made absolute; on Windows the
    /// installing user is the SID of this process's token.
    pub fn for_fleet(
        scheduler: Scheduler,
        fleet: &Fleet,
        exe: &Path,
        trigger: Trigger,
    ) -> Result<Entry> {
        let config = absolute_text(scheduler, "the config file", &fleet.path)?;
        let exe = absolute_text(scheduler, "the master-launch program", exe)?;
        // Both triggers name the user: the logon trigger whose logon it waits for, and
        // the principal the task runs as.
        let user = match scheduler {
            Scheduler::TaskScheduler => Some(current_user()?),
            Scheduler::SystemdUser => None,
        };
        Ok(Entry {
            scheduler,
            name: entry_name(scheduler, &config),
            folder: folder_of(scheduler, &config).to_string(),
            exe,
            config,
            trigger,
            user,
            stop_timeout: desk_stop_timeout(fleet),
        })
    }

    /// The definition the scheduler is given: task XML or unit file text.
    pub fn definition(&self) -> Result<String> {
        match self.scheduler {
            Scheduler::TaskScheduler => task_xml(self),
            Scheduler::SystemdUser => systemd_unit(self),
        }
    }

    /// Registers the entry, replacing an earlier one of the same name.
    pub fn install(&self) -> Result<Installed> {
        let definition = self.definition()?;
        match self.scheduler {
            Scheduler::TaskScheduler => install_task(&self.name, &definition),
            Scheduler::SystemdUser => install_unit(&self.name, &definition),
        }
    }
}

/// Where an installed entry lives, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    /// The unit file (Linux); `None` for a task, which lives in Task Scheduler.
    pub file: Option<PathBuf>,
}

/// Whether a desk is installed to start by itself: `check-procs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutostartStatus {
    pub installed: bool,
    /// The task path or the unit name it was looked for under.
    pub name: String,
    /// `task-scheduler` or `systemd-user`.
    pub scheduler: Scheduler,
    /// In words: what was found, or how to install it.
    pub how: String,
}

/// The task path or unit name for the desk whose absolute config path is `config`.
///
/// A readable part (the config's folder) plus 8 hex digits of a hash of the whole
/// path: two configs in one folder, or two folders that read alike once the
/// characters Task Scheduler refuses (`\ / : * ? " < > |`) are replaced, still get two
/// entries. On Windows the hash ignores case, as its file names do.
pub fn entry_name(scheduler: Scheduler, config: &str) -> String {
    let folder = folder_of(scheduler, config);
    match scheduler {
        Scheduler::TaskScheduler => {
            let readable: String = folder
                .chars()
                .filter(|c| *c != ':')
                .map(|c| match c {
                    '\\' | '/' => '-',
                    '*' | '?' | '"' | '<' | '>' | '|' => '_',
                    c if c.is_control() => '_',
                    c => c,
                })
                .collect();
            let readable = keep_tail(readable.trim_matches(['-', ' ', '.']), 100);
            let hash = short_hash(&config.to_lowercase());
            format!("{TASK_FOLDER}\\MASTER_LAUNCH {readable} {hash}")
        }
        Scheduler::SystemdUser => {
            // Unit names allow ASCII letters, digits, `:-_.\`; keep a plain subset.
            let readable: String = folder
                .chars()
                .map(|c| match c {
                    '/' => '-',
                    c if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' => c,
                    _ => '_',
                })
                .collect();
            let readable = keep_tail(readable.trim_matches(['-', '.']), 100);
            let hash = short_hash(config);
            if readable.is_empty() {
                format!("desk-tools-{hash}.service")
            } else {
                format!("desk-tools-{readable}-{hash}.service")
            }
        }
    }
}

/// The last `max` characters of `text` (the most specific end of a path).
fn keep_tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    text.chars()
        .skip(count.saturating_sub(max))
        .collect::<String>()
        .trim_start_matches(['-', ' ', '.'])
        .to_string()
}

/// FNV-1a (64-bit) folded to 32 bits: stable across builds and platforms, unlike
/// std's hasher, so a newer master-launch finds the entry an older one installed.
fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (hash >> 32) ^ (hash & 0xffff_ffff))
}

/// The folder part of a path written in the scheduler's platform's syntax.
fn folder_of(scheduler: Scheduler, config: &str) -> &str {
    let separators: &[char] = match scheduler {
        Scheduler::TaskScheduler => &['\\', '/'],
        Scheduler::SystemdUser => &['/'],
    };
    match config.rfind(separators) {
        // `C:\fleet.toml` -> `C:\`; `/fleet.toml` -> `/`.
        Some(0) => &config[..1],
        Some(i) if scheduler == Scheduler::TaskScheduler && config[..i].ends_with(':') => {
            &config[..=i]
        }
        Some(i) => &config[..i],
        None => ".",
    }
}

fn absolute_text(scheduler: Scheduler, what: &'static str, path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).map_err(|source| AutostartError::Io {
        action: "find the absolute path of",
        path: path.to_path_buf(),
        source,
    })?;
    let unrepresentable = |reason| AutostartError::Unrepresentable {
        what,
        path: absolute.display().to_string(),
        scheduler,
        reason,
    };
    let text = absolute
        .to_str()
        .ok_or_else(|| unrepresentable("it is not valid Unicode"))?;
    if text.chars().any(char::is_control) {
        return Err(unrepresentable("it contains a control character"));
    }
    Ok(text.to_string())
}

/// Windows: the SID of the user this process runs as (its token, not environment
/// variables). Elsewhere (a task definition printed on another system):
/// `USERDOMAIN\USERNAME`.
fn current_user() -> Result<String> {
    #[cfg(windows)]
    {
        crate::win_token::user_sid().map_err(AutostartError::NoUser)
    }
    #[cfg(not(windows))]
    {
        let user = std::env::var("USERNAME")
            .ok()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| AutostartError::NoUser(io::Error::other("USERNAME is not set")))?;
        Ok(match std::env::var("USERDOMAIN") {
            Ok(domain) if !domain.is_empty() => format!("{domain}\\{user}"),
            _ => user,
        })
    }
}

/// How long stopping the whole desk may take: master-launch stops brains, then
/// watchdogs, then globals, each stage in parallel and forced after the slowest
/// component's `stop_timeout_secs`; plus a margin for the kills and the lock releases.
pub fn desk_stop_timeout(fleet: &Fleet) -> Duration {
    let stage = |role: Role| {
        fleet
            .components()
            .filter(|c| c.enabled && c.role == role)
            .map(|c| c.stop_timeout)
            .max()
            .unwrap_or_default()
    };
    [Role::Brain, Role::Watchdog, Role::Global]
        .into_iter()
        .map(stage)
        .fold(STOP_MARGIN, Duration::saturating_add)
}

// ---------------------------------------------------------------------------------
// Windows: the Task Scheduler task.

/// The task definition (Task Scheduler schema 1.2, Windows 7 and later).
///
/// - The action runs `conhost.exe --headless master-launch.exe --config <path>`:
///   master-launch gets a real console that has no window. A task started without a
///   window of its own would otherwise open a console window that anyone can close
///   (killing the desk out of order) or click into (QuickEdit then blocks its
///   output). A process with *no* console (DETACHED_PROCESS, or a GUI-subsystem
///   build) would lose the graceful stop: CTRL_BREAK to a bot's process group can
///   only be sent by a process attached to a console.
/// - The logon trigger (default) runs in the user's interactive session
///   (`InteractiveToken`): MetaTrader needs a desktop. `--at startup` uses a boot
///   trigger and `S4U` (runs whether or not the user is logged on, no password
///   stored, but no desktop and no network credentials; registering it needs an
///   elevated prompt).
/// - `IgnoreNew`: a second trigger while the desk runs starts nothing (and
///   master-launch's own lock would refuse it anyway). No time limit (`PT0S`).
/// - `AllowHardTerminate` is off: "End" in Task Scheduler would kill master-launch
///   and with it every bot at once, out of order. Stop the desk with safe-shutdown.
/// - Restart on failure every minute, 999 times (the schema's maximum): Task
///   Scheduler counts a task as failed when it cannot start it; master-launch itself
///   restarts the bots.
pub fn task_xml(entry: &Entry) -> Result<String> {
    let user = entry.user.as_deref();
    let (trigger, principal) = match entry.trigger {
        Trigger::Logon => {
            let user = user.ok_or_else(|| {
                AutostartError::NoUser(io::Error::other("the entry names no user"))
            })?;
            (
                format!(
                    "    <LogonTrigger>\n      <Enabled>true</Enabled>\n      <UserId>{}</UserId>\n    </LogonTrigger>\n",
                    xml_escape(user)
                ),
                format!(
                    "      <UserId>{}</UserId>\n      <LogonType>InteractiveToken</LogonType>\n",
                    xml_escape(user)
                ),
            )
        }
        Trigger::Startup => (
            "    <BootTrigger>\n      <Enabled>true</Enabled>\n    </BootTrigger>\n".to_string(),
            match user {
                Some(user) => format!(
                    "      <UserId>{}</UserId>\n      <LogonType>S4U</LogonType>\n",
                    xml_escape(user)
                ),
                None => "      <LogonType>S4U</LogonType>\n".to_string(),
            },
        ),
    };
    let arguments = format!(
        "--headless {} --config {}",
        windows_quote(&entry.exe),
        windows_quote(&entry.config)
    );
    let description = format!(
        "Starts the trading desk of {} once ({}). Installed by `master-launch install`; remove it with `master-launch --config \"{}\" uninstall`. Stop the desk with safe-shutdown, not with End.",
        entry.config,
        match entry.trigger {
            Trigger::Logon => "at logon",
            Trigger::Startup => "at startup",
        },
        entry.config
    );
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-16\"?>\n");
    xml.push_str(
        "<Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">\n",
    );
    xml.push_str("  <RegistrationInfo>\n");
    let _ = writeln!(
        xml,
        "    <Author>{}</Author>",
        xml_escape(user.unwrap_or("master-launch"))
    );
    let _ = writeln!(
        xml,
        "    <Description>{}</Description>",
        xml_escape(&description)
    );
    let _ = writeln!(xml, "    <URI>\\{}</URI>", xml_escape(&entry.name));
    xml.push_str("  </RegistrationInfo>\n");
    xml.push_str("  <Triggers>\n");
    xml.push_str(&trigger);
    xml.push_str("  </Triggers>\n");
    xml.push_str("  <Principals>\n    <Principal id=\"Author\">\n");
    xml.push_str(&principal);
    xml.push_str("      <RunLevel>LeastPrivilege</RunLevel>\n    </Principal>\n  </Principals>\n");
    xml.push_str(concat!(
        "  <Settings>\n",
        "    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>\n",
        "    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>\n",
        "    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>\n",
        "    <AllowHardTerminate>false</AllowHardTerminate>\n",
        "    <StartWhenAvailable>true</StartWhenAvailable>\n",
        "    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>\n",
        "    <IdleSettings>\n",
        "      <StopOnIdleEnd>false</StopOnIdleEnd>\n",
        "      <RestartOnIdle>false</RestartOnIdle>\n",
        "    </IdleSettings>\n",
        "    <AllowStartOnDemand>true</AllowStartOnDemand>\n",
        "    <Enabled>true</Enabled>\n",
        "    <Hidden>false</Hidden>\n",
        "    <RunOnlyIfIdle>false</RunOnlyIfIdle>\n",
        "    <WakeToRun>false</WakeToRun>\n",
        "    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>\n",
        // 7, the default, is below normal; 5 runs the desk (and its bots) at normal.
        "    <Priority>5</Priority>\n",
        "    <RestartOnFailure>\n",
        "      <Interval>PT1M</Interval>\n",
        "      <Count>999</Count>\n",
        "    </RestartOnFailure>\n",
        "  </Settings>\n",
    ));
    xml.push_str("  <Actions Context=\"Author\">\n    <Exec>\n");
    // Task Scheduler expands %SystemRoot% in the command.
    xml.push_str("      <Command>%SystemRoot%\\System32\\conhost.exe</Command>\n");
    let _ = writeln!(
        xml,
        "      <Arguments>{}</Arguments>",
        xml_escape(&arguments)
    );
    let _ = writeln!(
        xml,
        "      <WorkingDirectory>{}</WorkingDirectory>",
        xml_escape(&entry.folder)
    );
    xml.push_str("    </Exec>\n  </Actions>\n</Task>\n");
    Ok(xml)
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// One argument quoted for `CommandLineToArgvW` (what Rust's and C's runtimes parse):
/// backslashes are literal except before a quote, where they are doubled.
pub fn windows_quote(arg: &str) -> String {
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

/// The task XML as `schtasks /create /xml` reads it: UTF-16 little-endian with a byte
/// order mark, as Task Scheduler itself exports tasks (the XML says `UTF-16`).
pub fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xff, 0xfe];
    for unit in text.replace('\n', "\r\n").encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

fn schtasks() -> Command {
    Command::new("schtasks")
}

fn install_task(name: &str, xml: &str) -> Result<Installed> {
    let file = std::env::temp_dir().join(format!("desk-tools-task-{}.xml", std::process::id()));
    std::fs::write(&file, utf16le_with_bom(xml)).map_err(|source| AutostartError::Io {
        action: "write",
        path: file.clone(),
        source,
    })?;
    let mut command = schtasks();
    command
        .arg("/create")
        .arg("/xml")
        .arg(&file)
        .args(["/tn", name, "/f"]);
    let result = run_checked(&mut command);
    let _ = std::fs::remove_file(&file);
    result?;
    Ok(Installed {
        name: name.to_string(),
        file: None,
    })
}

// ---------------------------------------------------------------------------------
// Linux: the systemd user unit.

/// The unit file. `ExecStart=` is quoted per systemd.syntax(7) and
/// systemd.service(5): each word in double quotes, `\` and `"` escaped with `\`,
/// `%` (specifiers) doubled, `$` (variable expansion) doubled.
/// `WorkingDirectory=` takes a bare path: only `%` needs doubling there.
/// `KillMode=mixed`: SIGTERM goes to master-launch alone, which stops its bots in
/// order; whatever is left at `TimeoutStopSec=` gets SIGKILL.
pub fn systemd_unit(entry: &Entry) -> Result<String> {
    let mut unit = String::new();
    let _ = writeln!(
        unit,
        "# Generated by `master-launch install`; remove it with"
    );
    let _ = writeln!(
        unit,
        "# master-launch --config \"{}\" uninstall",
        entry.config
    );
    unit.push_str("[Unit]\n");
    let _ = writeln!(
        unit,
        "Description=Trading desk of {} (master-launch)",
        entry.config.replace('%', "%%")
    );
    unit.push_str("\n[Service]\nType=simple\n");
    let _ = writeln!(
        unit,
        "ExecStart={} --config {}",
        systemd_quote(&entry.exe),
        systemd_quote(&entry.config)
    );
    let _ = writeln!(unit, "WorkingDirectory={}", entry.folder.replace('%', "%%"));
    unit.push_str("Restart=on-failure\nRestartSec=60\nKillMode=mixed\n");
    let _ = writeln!(unit, "TimeoutStopSec={}", entry.stop_timeout.as_secs());
    unit.push_str("\n[Install]\nWantedBy=default.target\n");
    Ok(unit)
}

/// One `ExecStart=` word: double-quoted, with `\` `"` escaped and `%` `$` doubled.
pub fn systemd_quote(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `$XDG_CONFIG_HOME/systemd/user`, else `$HOME/.config/systemd/user`.
pub fn user_unit_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".config"))
            .ok_or(AutostartError::NoHome)?,
    };
    Ok(base.join("systemd").join("user"))
}

fn systemctl() -> Command {
    let mut command = Command::new("systemctl");
    command.arg("--user");
    command
}

fn install_unit(name: &str, text: &str) -> Result<Installed> {
    let dir = user_unit_dir()?;
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| AutostartError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&dir).map_err(io("create the folder", &dir))?;
    let file = dir.join(name);
    let previous = std::fs::read(&file).ok();
    // Written aside and renamed: systemd never reads half a unit.
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text).map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, &file).map_err(io("write", &file))?;
    let enabled = run_checked(systemctl().arg("daemon-reload"))
        .and_then(|()| run_checked(systemctl().args(["enable", name])));
    if let Err(refused) = enabled {
        // Leave things as they were: the earlier unit, or none.
        let _ = match previous {
            Some(bytes) => std::fs::write(&file, bytes),
            None => std::fs::remove_file(&file),
        };
        return Err(refused);
    }
    Ok(Installed {
        name: name.to_string(),
        file: Some(file),
    })
}

// ---------------------------------------------------------------------------------
// Both: removing and querying.

/// What `uninstall` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// There was no such entry; nothing was changed. `detail`: what the scheduler said.
    NotInstalled {
        detail: Option<String>,
    },
}

/// Removes exactly the entry of the desk whose absolute config path is `config`.
pub fn uninstall(scheduler: Scheduler, config: &Path) -> Result<Removal> {
    let config = absolute_text(scheduler, "the config file", config)?;
    let name = entry_name(scheduler, &config);
    match scheduler {
        Scheduler::TaskScheduler => {
            let delete = run_checked(schtasks().args(["/delete", "/tn", &name, "/f"]));
            match delete {
                Ok(()) => Ok(Removal::Removed),
                // Refused, or there was nothing to delete: only a task that is still
                // there makes it a refusal.
                Err(refused) if task_exists(&name)? => Err(refused),
                Err(AutostartError::Refused { message, .. }) => Ok(Removal::NotInstalled {
                    detail: Some(message),
                }),
                Err(other) => Err(other),
            }
        }
        Scheduler::SystemdUser => {
            let file = user_unit_dir()?.join(&name);
            if std::fs::symlink_metadata(&file).is_err() {
                return Ok(Removal::NotInstalled { detail: None });
            }
            run_checked(systemctl().args(["disable", &name]))?;
            std::fs::remove_file(&file).map_err(|source| AutostartError::Io {
                action: "remove",
                path: file.clone(),
                source,
            })?;
            run_checked(systemctl().arg("daemon-reload"))?;
            Ok(Removal::Removed)
        }
    }
}

/// Whether the desk of `config` is installed to start by itself. Cheap: one
/// `schtasks /query` on Windows, two file lookups on Linux. Never fails: a query
/// that cannot be made is reported in `how`.
pub fn status(scheduler: Scheduler, config: &Path) -> AutostartStatus {
    let config = match absolute_text(scheduler, "the config file", config) {
        Ok(config) => config,
        Err(error) => {
            return AutostartStatus {
                installed: false,
                name: String::new(),
                scheduler,
                how: error.to_string(),
            };
        }
    };
    let name = entry_name(scheduler, &config);
    let (installed, how) = match scheduler {
        Scheduler::TaskScheduler => match task_exists(&name) {
            Ok(true) => (
                true,
                format!("registered; see it in Task Scheduler under {TASK_FOLDER}"),
            ),
            Ok(false) => (
                false,
                "no such task; `master-launch install` adds it".into(),
            ),
            Err(error) => (false, format!("could not ask Task Scheduler: {error}")),
        },
        Scheduler::SystemdUser => match user_unit_dir() {
            Err(error) => (false, error.to_string()),
            Ok(dir) => {
                let file = dir.join(&name);
                let wants = dir.join("default.target.wants").join(&name);
                if !file.is_file() {
                    (
                        false,
                        format!(
                            "no unit file {}; `master-launch install` adds it",
                            file.display()
                        ),
                    )
                } else if std::fs::symlink_metadata(&wants).is_ok() {
                    (true, format!("unit file {}, enabled", file.display()))
                } else {
                    (
                        true,
                        format!(
                            "unit file {}, not enabled (`systemctl --user enable {name}`)",
                            file.display()
                        ),
                    )
                }
            }
        },
    };
    AutostartStatus {
        installed,
        name,
        scheduler,
        how,
    }
}

/// Whether Task Scheduler has the task `name`. First its file under
/// `%SystemRoot%\System32\Tasks` (where Task Scheduler, and Wine, keep each task; a
/// user may not be allowed to see it), else `schtasks /query /tn NAME /fo LIST`,
/// which must succeed *and* name the task: its other words are in the user's
/// language, and Wine's `schtasks` answers every `/query` with success and no output.
fn task_exists(name: &str) -> Result<bool> {
    if task_file(name).is_some_and(|file| file.is_file()) {
        return Ok(true);
    }
    let output = schtasks()
        .args(["/query", "/tn", name, "/fo", "LIST"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| AutostartError::Spawn {
            program: "schtasks".into(),
            source,
        })?;
    // The hash at the end of the name is ASCII whatever the console code page.
    let hash = name.rsplit(' ').next().unwrap_or(name);
    let listed = String::from_utf8_lossy(&output.stdout);
    Ok(output.status.success() && listed.contains("MASTER_LAUNCH") && listed.contains(hash))
}

/// `%SystemRoot%\System32\Tasks\<folder>\<name>`, where the task's definition is kept.
fn task_file(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("SystemRoot").or_else(|| std::env::var_os("windir"))?;
    let mut file = PathBuf::from(root).join("System32").join("Tasks");
    file.extend(name.split('\\'));
    Some(file)
}

/// Runs a scheduler command; a failure carries its own words.
fn run_checked(command: &mut Command) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| AutostartError::Spawn {
            program: program.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let args: Vec<OsString> = command.get_args().map(OsString::from).collect();
    let mut line = program;
    for arg in &args {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    let mut message = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if message.is_empty() {
        message = stdout;
    }
    if message.is_empty() {
        message = "it gave no reason".into();
    }
    Err(AutostartError::Refused {
        command: line,
        status: output.status.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests;
