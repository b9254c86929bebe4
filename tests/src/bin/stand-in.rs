//! A stand-in trading bot: behaves like the desk's Python bots where the tools can
//! see it (a command line, log lines, a graceful-stop handler) and can be told to
//! misbehave.
//!
//! ```text
//! stand-in NAME [--ignore-stop] [--stop-delay-ms N] [--crash-after-ms N] [--exit-log FILE]
//!              [--say TEXT] [--crash-while FILE] [--exit-after-ms N]
//!              [--notify MS:LINE]... [--heartbeat-ms N] [--heartbeat-until-ms N]
//! ```
//!
//! - On SIGTERM/SIGINT (Ctrl+C, Ctrl+Break, console close on Windows) it logs, waits
//!   `--stop-delay-ms`, appends `NAME <unix-ms>` to `--exit-log`, and exits 0.
//! - `--ignore-stop`: logs the request and keeps running (a hung bot).
//! - `--crash-after-ms N`: exits with code 3 after N ms (a crash-looping bot).
//! - `--exit-after-ms N`: exits cleanly (code 0) after N ms.
//! - `--crash-while FILE`: exits with code 3 at once while FILE exists (a bug that a
//!   test "fixes" by removing the file).
//! - `--say TEXT`: prints TEXT once at start (non-ASCII output, say). It also reports
//!   the Python encoding variables it was given.
//! - `--notify MS:LINE` (repeatable): at MS ms
//!   after start, says LINE on master-launch's notify channel (`DESK_NOTIFY`, see
//!   `python/process_lock.py`), e.g. `--notify 200:ready --notify "3000:not-ready terminal lost"`.
//! - `--heartbeat-ms N`: says `alive` every N ms from start;
//!   `--heartbeat-until-ms N`: stops those N ms after start but runs on (a hung loop).
//!   Every line said is logged as `said: LINE`, channel or not; write errors are ignored.
//! - With `STANDIN_LAUNCHER=1` it acts like a Windows venv `python.exe`: it starts the
//!   real bot as a child with the same command line and waits for it.
//! - `--spawn KIND` (repeatable) starts, before anything else, what real bots start
//!   (each a stand-in itself, named after this one, that runs until killed):
//!   `child` (`NAME.child`), `grandchild` (`NAME.mid`, which starts `NAME.mid.child`),
//!   `daemon` (`NAME.daemon`, started through `NAME.daemonizer`, which exits at once:
//!   on Unix a double fork with `setsid`; on Windows a detached process that first asks
//!   to break away from its job, and is logged when refused).
//!   `worker` starts a worker as Python's multiprocessing does: the same program with
//!   this process's whole command line (so, by rule 9, a copy of the bot if it ran on
//!   its own), plus `--worker`, which starts nothing more.

use std::io::Write;
use std::process::Command;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Options {
    name: String,
    ignore_stop: bool,
    stop_delay: Duration,
    crash_after: Option<Duration>,
    exit_log: Option<String>,
    say: Option<String>,
    crash_while: Option<String>,
    exit_after: Option<Duration>,
    spawn: Vec<String>,
    /// `--notify MS:LINE`: what to say on the notify channel, and when (after start).
    notify: Vec<(Duration, String)>,
    heartbeat: Option<Duration>,
    heartbeat_until: Option<Duration>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("STANDIN_LAUNCHER").is_some_and(|v| v == "1") {
        launch_child(&args);
    }
    if args.get(1).is_some_and(|a| a == "--daemonize") {
        daemonize(&args[0]);
    }
    let options = parse(&args);
    let is_worker = args.iter().any(|a| a == "--worker");
    for kind in options.spawn.iter().filter(|_| !is_worker) {
        if kind == "worker" {
            spawn_worker(&options.name, &args);
        } else {
            spawn_family(&options.name, kind);
        }
    }
    run(&options);
}

fn parse(args: &[String]) -> Options {
    let mut options = Options {
        name: args.first().cloned().unwrap_or_else(|| "stand-in".into()),
        ignore_stop: false,
        stop_delay: Duration::ZERO,
        crash_after: None,
        exit_log: None,
        say: None,
        crash_while: None,
        exit_after: None,
        spawn: Vec::new(),
        notify: Vec::new(),
        heartbeat: None,
        heartbeat_until: None,
    };
    let mut rest = args.iter().skip(1);
    while let Some(flag) = rest.next() {
        let mut number = || -> Duration {
            let text = rest.next().map(String::as_str).unwrap_or("0");
            Duration::from_millis(text.parse().unwrap_or(0))
        };
        match flag.as_str() {
            "--ignore-stop" => options.ignore_stop = true,
            "--stop-delay-ms" => options.stop_delay = number(),
            "--crash-after-ms" => options.crash_after = Some(number()),
            "--exit-log" => options.exit_log = rest.next().cloned(),
            "--say" => options.say = rest.next().cloned(),
            "--notify" => {
                let text = rest.next().cloned().unwrap_or_default();
                match timed_line(&text) {
                    Some(timed) => options.notify.push(timed),
                    None => panic!("--notify takes MS:LINE, not {text:?}"),
                }
            }
            "--heartbeat-ms" => options.heartbeat = Some(number()).filter(|d| !d.is_zero()),
            "--heartbeat-until-ms" => options.heartbeat_until = Some(number()),
            "--exit-after-ms" => options.exit_after = Some(number()),
            "--crash-while" => options.crash_while = rest.next().cloned(),
            "--spawn" => options.spawn.extend(rest.next().cloned()),
            _ => {}
        }
    }
    options
}

/// `MS:LINE` as (MS ms, LINE); None if it is not that.
fn timed_line(text: &str) -> Option<(Duration, String)> {
    let (ms, line) = text.split_once(':')?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Duration::from_millis(ms.parse().ok()?), line.to_string()))
}

/// Says `--notify MS:LINE` lines and heartbeats on their schedule, on a thread of its own
/// (the main loop waits for stop requests).
fn start_notifier(options: &Options, started: Instant) {
    let mut plan = options.notify.clone();
    plan.sort_by_key(|(at, _)| *at);
    let heartbeat = options.heartbeat;
    let until = options.heartbeat_until;
    if plan.is_empty() && heartbeat.is_none() {
        return;
    }
    let name = options.name.clone();
    std::thread::spawn(move || {
        let channel = notify::Channel::from_env();
        let mut said = plan.into_iter().peekable();
        let mut beats = 1u32;
        loop {
            let next_beat = heartbeat
                .map(|every| every * beats)
                .filter(|at| until.is_none_or(|until| *at <= until));
            let next_say = said.peek().map(|(at, _)| *at);
            let beat_first = match (next_say, next_beat) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(say), Some(beat)) => beat < say,
            };
            let (at, line) = if let (true, Some(beat)) = (beat_first, next_beat) {
                beats += 1;
                (beat, "alive".to_string())
            } else if let Some(entry) = said.next() {
                entry
            } else {
                return;
            };
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            channel.say(&line);
            log(&name, &format!("said: {line}"));
        }
    });
}

/// master-launch's notify channel, as `DESK_NOTIFY` names it: `fd:<n>` (Unix) or
/// `handle:<decimal>` (Windows). Absent, malformed or broken: lines go nowhere.
mod notify {
    use std::fs::File;
    use std::io::Write;
    use std::mem::ManuallyDrop;

    /// The inherited descriptor or handle, never closed (it is not ours to close).
    pub struct Channel(Option<ManuallyDrop<File>>);

    impl Channel {
        pub fn from_env() -> Channel {
            let spec = std::env::var("DESK_NOTIFY").unwrap_or_default();
            Channel(open(&spec).map(ManuallyDrop::new))
        }

        /// `LINE\n` in one write (it fits any pipe buffer); errors (EPIPE, EAGAIN, a
        /// closed channel) are ignored.
        pub fn say(&self, line: &str) {
            if let Some(file) = &self.0 {
                let _ = (&**file).write_all(format!("{line}\n").as_bytes());
            }
        }
    }

    fn number(spec: &str, prefix: &str) -> Option<u64> {
        let digits = spec.strip_prefix(prefix)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    #[cfg(unix)]
    fn open(spec: &str) -> Option<File> {
        use std::os::fd::FromRawFd;
        let fd = i32::try_from(number(spec, "fd:")?).ok()?;
        // SAFETY: master-launch left this descriptor open for us; the File is never
        // dropped (ManuallyDrop), so nothing else's descriptor is closed. A descriptor
        // that is not open only makes the writes fail, which is ignored.
        Some(unsafe { File::from_raw_fd(fd) })
    }

    #[cfg(windows)]
    fn open(spec: &str) -> Option<File> {
        use std::os::windows::io::{FromRawHandle, RawHandle};
        let handle = usize::try_from(number(spec, "handle:")?).ok()?;
        // SAFETY: master-launch let us inherit this pipe handle; the File is never
        // dropped (ManuallyDrop). An invalid handle only makes the writes fail.
        Some(unsafe { File::from_raw_handle(handle as RawHandle) })
    }
}

fn launch_child(args: &[String]) -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|_| "stand-in".into());
    // The launcher ignores stop signals of its own: the child gets them too (same
    // process group) and the launcher exits when the child does.
    let _ = ctrlc::set_handler(|| {});
    let status = Command::new(exe)
        .args(args)
        .env_remove("STANDIN_LAUNCHER")
        .status();
    let code = status.ok().and_then(|s| s.code()).unwrap_or(1);
    std::process::exit(code);
}

/// `--spawn worker`: this command line again, plus `--worker`; it runs on its own.
fn spawn_worker(name: &str, args: &[String]) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "stand-in".into());
    match Command::new(exe).args(args).arg("--worker").spawn() {
        Ok(child) => log(name, &format!("spawned worker pid {}", child.id())),
        Err(e) => log(name, &format!("cannot spawn a worker: {e}")),
    }
}

/// Starts one member of the bot's family (see the module doc); it runs on its own.
fn spawn_family(name: &str, kind: &str) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "stand-in".into());
    let args: Vec<String> = match kind {
        "child" => vec![format!("{name}.child")],
        "grandchild" => vec![format!("{name}.mid"), "--spawn".into(), "child".into()],
        "daemon" => vec![format!("{name}.daemonizer"), "--daemonize".into()],
        other => {
            log(name, &format!("unknown --spawn {other}"));
            return;
        }
    };
    match Command::new(exe).args(&args).spawn() {
        Ok(child) => log(name, &format!("spawned {} pid {}", args[0], child.id())),
        Err(e) => log(name, &format!("cannot spawn {}: {e}", args[0])),
    }
}

/// `NAME.daemonizer --daemonize`: starts `NAME.daemon` cut loose from this process
/// (its own session on Unix; detached, and out of the job if allowed, on Windows),
/// then exits at once, so the daemon's parent is gone.
fn daemonize(daemonizer: &str) -> ! {
    let name = daemonizer.trim_end_matches(".daemonizer");
    let exe = std::env::current_exe().unwrap_or_else(|_| "stand-in".into());
    let mut command = Command::new(exe);
    command
        .arg(format!("{name}.daemon"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let spawned = detach::spawn(&mut command, |refused| {
        log(
            daemonizer,
            &format!("breakaway from the job refused: {refused}"),
        );
    });
    match spawned {
        Ok(child) => log(daemonizer, &format!("daemon pid {}", child.id())),
        Err(e) => log(daemonizer, &format!("cannot start the daemon: {e}")),
    }
    std::process::exit(0);
}

/// Starting a process cut loose from its parent, as daemons do.
#[cfg(unix)]
mod detach {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    /// A new session (`setsid`): no process group or terminal of ours reaches it.
    pub fn spawn(command: &mut Command, _refused: impl Fn(&str)) -> std::io::Result<Child> {
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
        }
        command.spawn()
    }
}

/// Starting a process cut loose from its parent, as daemons do.
#[cfg(windows)]
mod detach {
    use std::os::windows::process::CommandExt;
    use std::process::{Child, Command};

    // Process creation flags (WinBase.h): DETACHED_PROCESS, CREATE_NEW_PROCESS_GROUP,
    // CREATE_BREAKAWAY_FROM_JOB.
    const DETACHED: u32 = 0x0000_0008 | 0x0000_0200;
    const BREAKAWAY: u32 = 0x0100_0000;

    /// Detached, in a new group; first with CREATE_BREAKAWAY_FROM_JOB, which a job
    /// without JOB_OBJECT_LIMIT_BREAKAWAY_OK refuses (access denied).
    pub fn spawn(command: &mut Command, refused: impl Fn(&str)) -> std::io::Result<Child> {
        match command.creation_flags(DETACHED | BREAKAWAY).spawn() {
            Ok(child) => Ok(child),
            Err(e) => {
                refused(&e.to_string());
                command.creation_flags(DETACHED).spawn()
            }
        }
    }
}

fn run(options: &Options) {
    if let Some(file) = &options.crash_while
        && std::path::Path::new(file).exists()
    {
        log(&options.name, &format!("crashing: {file} exists"));
        std::process::exit(3);
    }
    let (stop_tx, stop_rx) = channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        log(
            &options.name,
            &format!("cannot install the stop handler: {e}"),
        );
    }
    let lock = std::env::var("FLEET_LOCK_NAME").unwrap_or_else(|_| "-".into());
    let account = std::env::var("FLEET_ACCOUNT").unwrap_or_else(|_| "-".into());
    log(
        &options.name,
        &format!(
            "started pid {} lock {lock} account {account}",
            std::process::id()
        ),
    );
    let python_env = |var: &str| std::env::var(var).unwrap_or_else(|_| "-".into());
    log(
        &options.name,
        &format!(
            "env PYTHONIOENCODING={} PYTHONUNBUFFERED={}",
            python_env("PYTHONIOENCODING"),
            python_env("PYTHONUNBUFFERED")
        ),
    );
    if let Some(text) = &options.say {
        log(&options.name, text);
    }
    let started = Instant::now();
    start_notifier(options, started);
    loop {
        let wait = match options.crash_after.or(options.exit_after) {
            Some(after) => after
                .saturating_sub(started.elapsed())
                .min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        match stop_rx.recv_timeout(wait) {
            Ok(()) if options.ignore_stop => log(&options.name, "stop requested; ignoring it"),
            Ok(()) => {
                log(&options.name, "stop requested; closing down");
                std::thread::sleep(options.stop_delay);
                record_exit(options);
                log(&options.name, "stopped");
                std::process::exit(0);
            }
            Err(RecvTimeoutError::Timeout) => {
                if options
                    .crash_after
                    .is_some_and(|after| started.elapsed() >= after)
                {
                    log(&options.name, "crashing on purpose");
                    std::process::exit(3);
                }
                if options
                    .exit_after
                    .is_some_and(|after| started.elapsed() >= after)
                {
                    log(&options.name, "done; exiting cleanly");
                    std::process::exit(0);
                }
            }
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
    }
}

fn record_exit(options: &Options) {
    let Some(path) = &options.exit_log else {
        return;
    };
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // One write call: bots stopping in parallel append to the same file.
    let line = format!("{} {millis}\n", options.name);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Logs to stdout; a closed stdout is not a reason to die.
fn log(name: &str, message: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{name}: {message}");
    let _ = stdout.flush();
}
