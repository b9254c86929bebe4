//! Linux: the small process that owns one bot's whole process tree (DESIGN.md rule 14).
//!
//! master-launch starts every bot through a reaper: this same binary, started again
//! with [`REAPER_ARG`]. The reaper makes itself the child subreaper of everything below
//! it (`PR_SET_CHILD_SUBREAPER`), so nothing the bot starts can leave its tree: a
//! worker whose parent died, or a daemon (double fork + `setsid`), is re-parented to
//! the reaper instead of to init. It starts the bot, tells master-launch the bot's pid
//! on the report pipe, and waits. It ends the whole tree
//! - when the bot's main process exits (a crash, a clean exit, a stop): whatever the
//!   bot left running is killed before the reaper exits, so before master-launch sees
//!   the component stopped or starts it again;
//! - when master-launch asks (a byte on the control pipe: a forced stop);
//! - when master-launch is gone, however it ended, kill -9 included: the control pipe's
//!   write end was master-launch's alone, so the reaper reads its end. A reaper stopped
//!   from outside (SIGSTOP) is woken then by its parent-death signal, SIGCONT
//!   (child.rs).
//!
//! Then it exits as the bot did (same code, or the same signal).
//!
//! Why this and not the alternatives (ARCHITECTURE.md, "A component is its process
//! tree"): a process group or session is left by `setsid`; a parent-death signal
//! reaches only the bot itself; cgroups need root or systemd's delegation; a pid
//! namespace needs unprivileged user namespaces (often off) and shows the bot pids
//! nobody else can use; master-launch as the one subreaper would receive every
//! component's orphans and could not tell whose they were.
//!
//! Killing without pid reuse (DESIGN.md rule 3): the reaper only ever signals its own
//! direct children, and never while it reaps. A direct child stays unreaped, its pid
//! taken, until this process reaps it, so the pid cannot belong to anyone else. Killing
//! the children re-parents the grandchildren to the reaper; the next round kills them.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpid};

/// The hidden first argument that makes master-launch a reaper:
/// `master-launch --master-launch-reaper -- PROGRAM ARGS...`.
pub const REAPER_ARG: &str = "--master-launch-reaper";
/// The environment variable that hands the reaper its two pipe ends, `CONTROL,REPORT`
/// (file descriptor numbers). The bot never sees it.
pub const FDS_VAR: &str = "MASTER_LAUNCH_REAPER_FDS";
/// The byte master-launch writes on the control pipe to have the tree killed.
pub const KILL: u8 = b'k';
/// The environment variable that tells the reaper how long to wait, once master-launch
/// is gone, before it ends the tree (milliseconds; child.rs: the safe order). The bot
/// never sees it.
pub const ORPHAN_WAIT_VAR: &str = "MASTER_LAUNCH_REAPER_ORPHAN_WAIT_MS";
/// The longest wait it takes from that variable.
const ORPHAN_WAIT_MAX: Duration = Duration::from_secs(1);

/// The reaper's exit code when it could not start the bot (as a shell's 127).
const CANNOT_START: i32 = 127;
/// The exit code when the reaper was started wrongly (not by master-launch).
const BAD_ARGS: i32 = 2;
/// How long the reaper keeps killing a tree that will not die (a process stuck in the
/// kernel cannot be killed at once) before it reports the survivors and exits.
const KILL_ROUNDS_FOR: Duration = Duration::from_secs(5);

/// When this process was started as a reaper, does the reaper's work and exits;
/// otherwise returns at once. Called first thing in `main`.
pub fn serve() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(REAPER_ARG.as_ref()) {
        return;
    }
    let rest: Vec<_> = args.collect();
    let code = match (rest.split_first(), pipes_from_env()) {
        (Some((separator, command)), Some((control, report)))
            if separator == "--" && !command.is_empty() =>
        {
            run(command, control, report)
        }
        _ => BAD_ARGS,
    };
    std::process::exit(code);
}

/// The two pipe ends named by [`FDS_VAR`], made close-on-exec again so the bot does
/// not inherit them.
fn pipes_from_env() -> Option<(OwnedFd, OwnedFd)> {
    let text = std::env::var(FDS_VAR).ok()?;
    let (control, report) = text.split_once(',')?;
    let fds: [RawFd; 2] = [control.parse().ok()?, report.parse().ok()?];
    if fds[0] == fds[1] || fds.iter().any(|fd| *fd < 3 || !is_open(*fd)) {
        return None;
    }
    for fd in fds {
        set_cloexec(fd);
    }
    // SAFETY: master-launch opened both for this process alone (checked open above).
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads the flags of a number that may not be open (then EBADF).
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: sets a flag on a descriptor checked open; no memory is involved.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// The signals a stop sends to the bot's whole process group, the reaper included.
/// The reaper ignores them (the bot gets them) and the bot gets them back at exec.
const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn run(command: &[std::ffi::OsString], control: OwnedFd, report: OwnedFd) -> i32 {
    let mut report = std::fs::File::from(report);
    // `ps -e` and `top` show the kernel's name, else `exe` (from /proc/self/exe).
    let _ = nix::sys::prctl::set_name(c"desk-reaper");
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        say(
            &mut report,
            format!("error {} cannot become a subreaper: {e}", e as i32),
        );
        return CANNOT_START;
    }
    for stop in STOP_SIGNALS {
        // SAFETY: setting a disposition to "ignore" installs no handler code.
        let _ = unsafe { signal(stop, SigHandler::SigIgn) };
    }
    // An inherited "ignore" for SIGCHLD would have the kernel reap our children at
    // once, and a reaped child's pid could be reused under our kills.
    // SAFETY: restoring the default disposition installs no handler code.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    let reaper = getpid();
    let orphan_wait = std::env::var(ORPHAN_WAIT_VAR)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(ORPHAN_WAIT_MAX);
    let mut bot = Command::new(&command[0]);
    bot.args(&command[1..])
        .env_remove(FDS_VAR)
        .env_remove(ORPHAN_WAIT_VAR);
    // SAFETY: between fork and exec only async-signal-safe calls: signal dispositions,
    // prctl and getppid.
    unsafe {
        bot.pre_exec(move || {
            for stop in STOP_SIGNALS {
                signal(stop, SigHandler::SigDfl)?;
            }
            // Belt and braces: a reaper killed from outside takes its bot along.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != reaper {
                return Err(std::io::Error::other("the reaper exited during start"));
            }
            Ok(())
        });
    }
    let bot = match bot.spawn() {
        Ok(bot) => bot,
        Err(e) => {
            let code = e.raw_os_error().unwrap_or(-1);
            say(&mut report, format!("error {code} {e}"));
            return CANNOT_START;
        }
    };
    let bot = Pid::from_raw(bot.id() as i32);
    say(&mut report, format!("pid {bot}"));

    // Signals to children and reaping never happen at once (see the module doc).
    let reaping = Mutex::new(());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            listen_to_master_launch(control, orphan_wait, &reaping);
        });
        let status = wait_for_bot(bot, &reaping);
        let (left_behind, survivors) = {
            let _reaping = lock(&reaping);
            end_tree()
        };
        say(&mut report, format!("ended {left_behind} {survivors}"));
        exit_as(status)
    })
}

/// Writes one report line in one write, so that master-launch never waits on half of
/// it (and a closed pipe is no error here: master-launch is gone).
fn say(report: &mut std::fs::File, line: String) {
    let _ = report.write_all(format!("{line}\n").as_bytes());
}

/// Reads the control pipe: a kill byte kills the bot and every other direct child at
/// once; the pipe's end (master-launch gone) does so after `orphan_wait` (the safe
/// order, see child.rs); [`run`] kills the rest once the bot is reaped.
fn listen_to_master_launch(control: OwnedFd, orphan_wait: Duration, reaping: &Mutex<()>) {
    let mut control = std::fs::File::from(control);
    let mut byte = [0u8; 1];
    loop {
        let end = match control.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => byte[0] == KILL,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(_) => true,
        };
        if end {
            if byte[0] != KILL {
                std::thread::sleep(orphan_wait);
            }
            let _reaping = lock(reaping);
            kill_children();
            if byte[0] != KILL {
                return;
            }
            byte[0] = 0;
        }
    }
}

/// Waits until the bot has exited and reaps it, reaping any other child that ends
/// meanwhile (a daemon re-parented to us). The exit is seen without reaping
/// (`WNOWAIT`); the reap itself happens under the lock.
fn wait_for_bot(bot: Pid, reaping: &Mutex<()>) -> WaitStatus {
    loop {
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(seen) => {
                let Some(pid) = seen.pid() else { continue };
                let _reaping = lock(reaping);
                match waitpid(pid, None) {
                    Ok(status) if pid == bot => return status,
                    _ => {}
                }
            }
            Err(Errno::EINTR) => {}
            // No child at all: the bot was reaped elsewhere (cannot happen) or never was.
            Err(_) => return WaitStatus::Exited(bot, CANNOT_START),
        }
    }
}

/// Kills every process left in the tree, layer by layer, and reaps them. Returns how
/// many it ended and how many it could not (still there after [`KILL_ROUNDS_FOR`]).
fn end_tree() -> (usize, usize) {
    // Distinct pids: a killed process may still be dying (not yet a zombie) at the
    // next round, and is signalled again but counted once.
    let mut ended = std::collections::HashSet::new();
    let deadline = Instant::now() + KILL_ROUNDS_FOR;
    loop {
        ended.extend(kill_children());
        // Reap what died; ECHILD means no child is left, and nothing can be re-parented
        // to us any more (an exiting process hands its children over before it is
        // reapable).
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return (ended.len(), 0),
            }
        }
        if Instant::now() >= deadline {
            return (ended.len(), children().len());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILL to every direct child still running; the ones signalled.
fn kill_children() -> Vec<Pid> {
    children()
        .into_iter()
        .filter(|child| kill(*child, Signal::SIGKILL).is_ok())
        .collect()
}

/// This process's children that still run, from `/proc`. A child whose main thread
/// has exited shows as a zombie (`Z`) while its other threads run on: it counts as
/// running until none of its threads does. A true zombie (exited, not yet reaped) is
/// left to the reap.
fn children() -> Vec<Pid> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            matches!(parent_and_state(*pid), Some((parent, state))
                if parent == me && (state != 'Z' || has_running_thread(*pid)))
        })
        .map(|pid| Pid::from_raw(pid as i32))
        .collect()
}

/// Whether any thread of `pid` has not exited (`/proc/PID/task/TID/stat`).
fn has_running_thread(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        stat_state(&stat).is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// The parent pid and state letter from `/proc/PID/stat`.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat_state(&stat)?;
    let parent = after_command(&stat)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((parent, state))
}

/// The state letter of a `stat` line.
fn stat_state(stat: &str) -> Option<char> {
    after_command(stat)?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// A `stat` line after the command name, which may itself hold spaces and parentheses.
fn after_command(stat: &str) -> Option<&str> {
    stat.get(stat.rfind(')')? + 1..)
}

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends this process the way the bot ended: its exit code, or its signal (with core
/// dumps off, so a crashed bot does not make the reaper dump one too).
fn exit_as(status: WaitStatus) -> ! {
    match status {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, signal_, _) => {
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            // SAFETY: restoring the default disposition installs no handler code.
            let _ = unsafe { signal(signal_, SigHandler::SigDfl) };
            let _ = nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            );
            let _ = nix::sys::signal::raise(signal_);
            std::process::exit(128 + signal_ as i32)
        }
        _ => std::process::exit(CANNOT_START),
    }
}

/// What the reaper said on its report pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// The bot runs with this pid.
    Started(u32),
    /// The bot could not be started (the OS error code, or -1, and its text).
    CannotStart(i32, String),
    /// After the bot's exit: how many processes of its tree were killed, and how many
    /// survived every kill.
    Ended {
        left_behind: usize,
        survivors: usize,
    },
}

impl Said {
    /// Parses one line of the report; `None` for anything else.
    pub fn parse(line: &str) -> Option<Said> {
        let line = line.trim_end();
        let (word, rest) = line.split_once(' ')?;
        match word {
            "pid" => rest.parse().ok().map(Said::Started),
            "error" => {
                let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Said::CannotStart(code.parse().ok()?, text.to_string()))
            }
            "ended" => {
                let (left, survivors) = rest.split_once(' ')?;
                Some(Said::Ended {
                    left_behind: left.parse().ok()?,
                    survivors: survivors.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lines_parse_and_nothing_else_does() {
        assert_eq!(Said::parse("pid 42\n"), Some(Said::Started(42)));
        assert_eq!(
            Said::parse("error 2 No such file or directory (os error 2)"),
            Some(Said::CannotStart(
                2,
                "No such file or directory (os error 2)".into()
            ))
        );
        assert_eq!(
            Said::parse("ended 3 0"),
            Some(Said::Ended {
                left_behind: 3,
                survivors: 0
            })
        );
        for garbage in [
            "",
            "pid",
            "pid x",
            "ended 1",
            "hello 1",
            "pid 99999999999999999999",
        ] {
            assert_eq!(Said::parse(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn the_stat_reader_finds_this_processs_parent_and_state() {
        let (parent, state) = parent_and_state(std::process::id()).expect("own stat");
        assert_eq!(parent, std::os::unix::process::parent_id());
        assert!("RSDT".contains(state), "{state}");
    }
}
