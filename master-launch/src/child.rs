//! Starting a managed process bound to its launcher, asking it to stop, forcing it.
//!
//! A component is its whole process tree (DESIGN.md rule 14): everything the bot
//! starts is ended when the bot's main process exits, before the component counts as
//! stopped or is started again, and nothing of it outlives master-launch, however
//! master-launch ends. The binding that makes it so:
//! - Linux: the bot runs under a reaper of its own (`reaper.rs`: a child subreaper
//!   that a double fork or `setsid` cannot leave), in the reaper's process group. The
//!   reaper ends the tree when the bot exits, when asked, and when master-launch is
//!   gone (the end of a pipe only master-launch holds).
//! - Windows: a Job Object with kill-on-close that the bot joins while suspended, so it
//!   starts nothing outside it; nothing may break away (no `BREAKAWAY_OK` limit). When
//!   the bot exits, what is left in the job is terminated and waited for.
//!
//! A forced stop goes through the binding (DESIGN.md rule 10), never a pid walk. Every
//! signal is sent under the [`Slot`]'s lock, and the waiting thread empties the slot
//! before it reaps the child, so no signal can reach a pid that was reused.
//! This and `reaper.rs` are the only platform code of `master-launch`'s children.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};

use lockcore::{ProcessIdentity, ProcessProbe};

#[cfg(not(any(target_os = "linux", windows)))]
compile_error!(
    "master-launch binds a bot's whole process tree on Linux (a child subreaper) and \
     Windows (a Job Object) only: DESIGN.md rule 14"
);

/// The one running child of a lock holder, shared by the thread that waits for it and
/// the threads that stop it.
#[derive(Debug, Default)]
pub struct Slot(Mutex<Option<Entry>>);

#[derive(Debug)]
struct Entry {
    identity: ProcessIdentity,
    binding: imp::Binding,
}

/// A started bot: the process master-launch waits for (on Linux the bot's reaper,
/// whose output is the bot's), and the bot's own pid.
#[derive(Debug)]
pub struct Running {
    pub process: Child,
    pub pid: u32,
}

/// How a bot's run ended, its tree included.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The bot's main process's exit status.
    pub status: ExitStatus,
    /// What became of the rest of its process tree.
    pub tree: Tree,
}

/// What became of the processes a bot had started when its main process exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// All were ended: this many were still running then.
    Ended { left_behind: usize },
    /// Some could not be ended (stuck in the kernel).
    NotEnded {
        left_behind: usize,
        survivors: usize,
    },
    /// The binding itself was ended from outside (a reaper killed by hand), so nobody
    /// could end the tree for certain: its process group was killed, but a process
    /// that had left the group (a daemon) may run on. Never on Windows: nobody else
    /// can end master-launch's handle on a Job Object.
    #[cfg_attr(windows, allow(dead_code))]
    Unaccounted,
}

impl Tree {
    /// Whether nothing the bot started can still run: only then may it start again.
    pub fn is_gone(self) -> bool {
        matches!(self, Tree::Ended { .. })
    }
}

impl Ended {
    /// `; ended 2 process(es) it left running`, or nothing when it left none.
    pub fn tree_note(&self) -> String {
        let ended = |left_behind: usize| match left_behind {
            0 => String::new(),
            n => format!("; ended {n} process(es) it had started and left running"),
        };
        match self.tree {
            Tree::Ended { left_behind } => ended(left_behind),
            Tree::NotEnded {
                left_behind,
                survivors,
            } => format!(
                "{}; {survivors} process(es) of its tree could NOT be ended",
                ended(left_behind)
            ),
            Tree::Unaccounted => "; its reaper was killed from outside, so processes it had \
                                  started may still run"
                .into(),
        }
    }
}

/// The command that starts `program`, a component of `stage`, as a bound child: on
/// Linux through the reaper (this binary again), elsewhere the program itself.
/// Arguments, environment and folder are added to it as to any `Command`.
pub fn command(program: &str, stage: lockcore::Stage) -> Command {
    imp::command(program, stage)
}

impl Slot {
    fn entry(&self) -> MutexGuard<'_, Option<Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `command` (made by [`command`]) bound to this process, into the slot,
    /// unless `cancelled` (checked under the slot's lock: a stop can never miss a child
    /// being started). `Ok(None)`: cancelled, nothing started.
    pub fn spawn(
        &self,
        command: &mut Command,
        cancelled: impl Fn() -> bool,
        probe: &mut ProcessProbe,
    ) -> io::Result<Option<Running>> {
        let mut entry = self.entry();
        if cancelled() {
            return Ok(None);
        }
        if let Some(old) = entry.as_ref() {
            return Err(io::Error::other(format!(
                "pid {} of its last start is still bound to master-launch",
                old.identity.pid
            )));
        }
        let (process, binding, pid) = imp::spawn_bound(command)?;
        // The bot is unreaped (our child, or the reaper's, which reaps nothing while
        // master-launch can signal): its pid cannot be reused. If it has already
        // exited there is no start time to read; `now` stands in (only logs use it).
        let identity = imp::identity(&process, pid, probe).unwrap_or(ProcessIdentity {
            pid,
            start_time: lockcore::process::now_secs(),
        });
        *entry = Some(Entry { identity, binding });
        Ok(Some(Running { process, pid }))
    }

    /// The running child, if any.
    pub fn identity(&self) -> Option<ProcessIdentity> {
        self.entry().as_ref().map(|e| e.identity)
    }

    /// Asks the running child to stop (SIGTERM to its group / CTRL_BREAK).
    pub fn ask_to_stop(&self) -> Option<ProcessIdentity> {
        let entry = self.entry();
        let entry = entry.as_ref()?;
        let _ = entry.binding.ask_to_stop(entry.identity);
        Some(entry.identity)
    }

    /// Asks the child `pid` to stop, if it is still the one running.
    pub fn ask_to_stop_if(&self, pid: u32) {
        let entry = self.entry();
        if let Some(entry) = entry.as_ref().filter(|e| e.identity.pid == pid) {
            let _ = entry.binding.ask_to_stop(entry.identity);
        }
    }

    /// Kills the child `pid` and everything bound with it, if it is still the one
    /// running (not a later run).
    pub fn force_if(&self, pid: u32) {
        let entry = self.entry();
        if let Some(entry) = entry.as_ref().filter(|e| e.identity.pid == pid) {
            let _ = entry.binding.kill();
        }
    }

    /// Kills the running child and everything bound with it.
    pub fn force(&self) -> Option<ProcessIdentity> {
        let entry = self.entry();
        let entry = entry.as_ref()?;
        let _ = entry.binding.kill();
        Some(entry.identity)
    }

    /// For a supervisor that lost track of its child (a panic while it ran): kills it
    /// and its tree, and empties the slot so that a new start is possible. The child
    /// is not reaped, so its pid is never reused under a late signal.
    pub fn abandon(&self) {
        let mut entry = self.entry();
        if let Some(entry) = entry.take() {
            let _ = entry.binding.kill();
        }
    }

    /// Waits for the child to exit, empties the slot, ends what is left of its tree,
    /// then reaps it.
    pub fn wait(&self, running: &mut Running) -> io::Result<Ended> {
        // Blocks until the child has exited, without reaping it (its pid stays taken).
        let observed = imp::wait_exited(&running.process);
        // The tree is ended while the slot still holds the child, so whoever asks
        // sees it stopped only once all of it is gone; from the `take` on, no signal
        // can be sent to the child's pid.
        let tree = {
            let mut entry = self.entry();
            let tree = match (entry.as_mut(), &observed) {
                (Some(e), Ok(())) => e.binding.end_tree(),
                _ => Tree::Ended { left_behind: 0 },
            };
            entry.take();
            tree
        };
        observed?;
        Ok(Ended {
            status: running.process.wait()?,
            tree,
        })
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use crate::reaper::{self, Said};
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    use std::io::{BufRead, BufReader, PipeReader, PipeWriter, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    /// The bot's reaper: it leads the process group the bot runs in, and ends the
    /// bot's tree when asked on `control` or when `control` ends.
    #[derive(Debug)]
    pub struct Binding {
        /// The reaper's pid, which is also the group's id.
        reaper: Pid,
        /// master-launch's end of the control pipe: a byte asks for the kill; when it
        /// closes (master-launch gone, kill -9 included) the reaper kills too.
        control: PipeWriter,
        /// The reaper's reports; after the bot's exit it says what it ended.
        report: BufReader<PipeReader>,
    }

    impl Binding {
        /// SIGTERM to the group: the bot and what it started in its group (the reaper
        /// ignores it). Safe from reuse: the reaper is our unreaped child while the
        /// slot holds this binding, so its group id is its own.
        pub fn ask_to_stop(&self, _bot: ProcessIdentity) -> io::Result<()> {
            killpg(self.reaper, Signal::SIGTERM).map_err(io::Error::from)
        }

        /// Has the reaper kill the whole tree. SIGCONT first: a reaper stopped from
        /// outside could not act on the request.
        pub fn kill(&self) -> io::Result<()> {
            let _ = kill(self.reaper, Signal::SIGCONT);
            match (&self.control).write_all(&[reaper::KILL]) {
                Ok(()) => Ok(()),
                // The reaper cannot hear us: kill its group the old way (a daemon that
                // left the group then goes to init; the copy check before the next
                // start finds it).
                Err(_) => killpg(self.reaper, Signal::SIGKILL).map_err(io::Error::from),
            }
        }

        /// After the reaper exited: what it ended of the bot's tree (it ended it
        /// before exiting). A reaper that exited without saying so was killed from
        /// outside: its group is killed here (the reaper is still our unreaped child,
        /// so the group id cannot be reused), and what left the group is unaccounted.
        pub fn end_tree(&mut self) -> Tree {
            let mut line = String::new();
            while self.report.read_line(&mut line).is_ok_and(|n| n > 0) {
                match Said::parse(&line) {
                    Some(Said::Ended {
                        left_behind,
                        survivors: 0,
                    }) => return Tree::Ended { left_behind },
                    Some(Said::Ended {
                        left_behind,
                        survivors,
                    }) => {
                        return Tree::NotEnded {
                            left_behind,
                            survivors,
                        };
                    }
                    _ => line.clear(),
                }
            }
            let _ = killpg(self.reaper, Signal::SIGKILL);
            Tree::Unaccounted
        }
    }

    /// The bot's identity (it is the reaper's child: read from the process table).
    pub(super) fn identity(
        _reaper: &Child,
        bot: u32,
        probe: &mut ProcessProbe,
    ) -> Option<ProcessIdentity> {
        probe.identity(bot)
    }

    /// `master-launch --master-launch-reaper -- PROGRAM`, in its own process group (a
    /// terminal's Ctrl+C reaches only master-launch, which stops things in order).
    /// `/proc/self/exe` is this very binary, even if its file was replaced meanwhile.
    pub(super) fn command(program: &str, stage: lockcore::Stage) -> Command {
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0("master-launch")
            .arg(reaper::REAPER_ARG)
            .arg("--")
            .arg(program)
            .env(
                reaper::ORPHAN_WAIT_VAR,
                orphan_wait(stage).as_millis().to_string(),
            )
            .process_group(0);
        command
    }

    /// How long a reaper whose master-launch is gone waits before it ends its tree, so
    /// that a desk killed outright still ends in the safe order: brains at once, then
    /// watchdogs, then globals. master-launch holds every reaper's control pipe, and the
    /// kernel closes a dying process's descriptors in ascending order, which is start
    /// order: without the wait, globals and watchdogs would go first.
    fn orphan_wait(stage: lockcore::Stage) -> std::time::Duration {
        use lockcore::Stage;
        std::time::Duration::from_millis(match stage {
            Stage::Brains | Stage::Orchestrator => 0,
            Stage::Watchdogs => 100,
            Stage::Globals => 200,
        })
    }

    /// Starts the reaper with its two pipes and reads the bot's pid from it. A reaper
    /// that cannot start the bot says why, and that is the error; one that says
    /// nothing usable is ended (closing its control pipe ends the tree) and reaped.
    pub(super) fn spawn_bound(command: &mut Command) -> io::Result<(Child, Binding, u32)> {
        let (control_read, control) = io::pipe()?;
        let (report, report_write) = io::pipe()?;
        let fds = [control_read.as_raw_fd(), report_write.as_raw_fd()];
        command.env(reaper::FDS_VAR, format!("{},{}", fds[0], fds[1]));
        // SAFETY: between fork and exec only fcntl and prctl, which are
        // async-signal-safe. The two ends are close-on-exec in master-launch (std's
        // pipes are), so no other child inherits them; only the reaper keeps them
        // across its exec. SIGCONT when the thread that started it ends (with
        // master-launch, kill -9 included): a reaper stopped from outside (SIGSTOP)
        // then wakes and ends the tree. The kernel's orphaned-group rule wakes it too,
        // but not for a stop still pending at that moment (a test saw that under load),
        // nor below a subreaper in master-launch's session.
        unsafe {
            command.pre_exec(move || {
                for fd in fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGCONT)?;
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        // Only the reaper may hold these ends: the report then ends when it exits.
        drop((control_read, report_write));
        let reaper = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        let mut report = BufReader::new(report);
        let Ok(said) = first_report(&mut report, FIRST_REPORT_WAIT) else {
            // Stopped or stuck: the caller holds the slot's lock, so stops wait on us.
            // Its group goes (the reaper is our unreaped child: the id is its own).
            let _ = killpg(reaper, Signal::SIGKILL);
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "its reaper (master-launch started again to hold the bot's process tree) \
                 did not say within {} s that the bot runs, so it and its process group \
                 were killed",
                FIRST_REPORT_WAIT.as_secs()
            )));
        };
        match said {
            Some(Said::Started(pid)) => Ok((
                child,
                Binding {
                    reaper,
                    control,
                    report,
                },
                pid,
            )),
            Some(Said::CannotStart(code, text)) => {
                let _ = child.wait();
                Err(if code > 0 {
                    io::Error::from_raw_os_error(code)
                } else {
                    io::Error::other(text)
                })
            }
            _ => {
                drop(control);
                let _ = child.wait();
                Err(io::Error::other(
                    "its reaper (master-launch started again to hold the bot's process tree) \
                     exited before it said the bot runs, so whatever it started was ended",
                ))
            }
        }
    }

    /// How long a reaper may take to say the bot runs: it starts the bot (fork and
    /// exec) and writes one line, milliseconds even on a loaded machine.
    const FIRST_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// The reaper said nothing in time.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Silent;

    /// The reaper's first report line, parsed: `None` if it ended or said nothing
    /// usable; [`Silent`] if it said nothing `within`.
    pub(super) fn first_report(
        report: &mut BufReader<PipeReader>,
        within: std::time::Duration,
    ) -> Result<Option<Said>, Silent> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(report.get_ref().as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return Err(Silent),
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Ok(None),
            }
        }
        // The reaper writes each line whole, in one write.
        let mut line = String::new();
        Ok(report
            .read_line(&mut line)
            .ok()
            .and_then(|_| Said::parse(&line)))
    }

    /// Blocks until the child has exited, without reaping it (`WNOWAIT`), so its pid
    /// stays taken until the slot is empty.
    pub(super) fn wait_exited(child: &Child) -> io::Result<()> {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => return other.map(drop).map_err(io::Error::from),
            }
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use lockcore::graceful::{Started, Underway};
    use lockcore::win_job::Job;
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::WAIT_FAILED;
    use windows_sys::Win32::System::Threading::{
        CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, INFINITE, WaitForSingleObject,
    };

    /// The bot's kill-on-close Job Object (lockcore::win_job); the bot dies when this
    /// is dropped or when the launcher dies (the OS closes the handle).
    #[derive(Debug)]
    pub struct Binding {
        job: Job,
        /// The console helper of the last ask, kept until it is done or this binding
        /// goes: dropping it would end it (its own kill-on-close job).
        asking: Mutex<Option<Underway>>,
    }

    impl Binding {
        /// CTRL_BREAK to the bot's process group. The bot is on a console of its own,
        /// and only a process attached to it can send the event: lockcore's console
        /// helper (master-launch started again with a hidden argument) attaches and
        /// sends it. Only started here, never waited for: a stage's asks go out
        /// together. Our own child: never a close request nor the checks meant for
        /// processes nobody holds (lockcore::graceful).
        pub fn ask_to_stop(&self, bot: ProcessIdentity) -> io::Result<()> {
            match lockcore::graceful::start_ctrl_break(bot) {
                Started::Underway(underway) => {
                    let mut asking = self.asking.lock().unwrap_or_else(|e| e.into_inner());
                    *asking = Some(underway);
                    Ok(())
                }
                Started::Asked(lockcore::graceful::Asked::Nothing(why)) => {
                    Err(io::Error::other(why))
                }
                Started::Asked(_) => Ok(()),
            }
        }

        /// Ends every process in the job: the child and all it started.
        pub fn kill(&self) -> io::Result<()> {
            self.job.terminate()
        }

        /// After the bot's main process exited: ends what is left in its job and
        /// waits until the job is empty (TerminateJobObject only starts the ends).
        /// Says how many were left and whether any still ran after [`TREE_END_WAIT`].
        pub fn end_tree(&mut self) -> Tree {
            let left_behind = self.job.active_processes();
            if left_behind == 0 {
                return Tree::Ended { left_behind };
            }
            let _ = self.kill();
            let deadline = std::time::Instant::now() + TREE_END_WAIT;
            loop {
                let survivors = self.job.active_processes();
                if survivors == 0 {
                    return Tree::Ended { left_behind };
                }
                if std::time::Instant::now() >= deadline {
                    return Tree::NotEnded {
                        left_behind,
                        survivors,
                    };
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// How long [`Binding::end_tree`] waits for the job to empty.
    const TREE_END_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// The bot's identity, read through the `Child`'s own process handle: the
    /// long-lived probe would open a handle of its own per start and keep it (sysinfo
    /// holds one per process it has refreshed), a process object kept alive for the
    /// life of the desk at every restart.
    pub(super) fn identity(
        child: &Child,
        pid: u32,
        _probe: &mut ProcessProbe,
    ) -> Option<ProcessIdentity> {
        let start_time = lockcore::win_handle::start_time_of(child.as_raw_handle()).ok()?;
        Some(ProcessIdentity { pid, start_time })
    }

    /// The Job Object does the binding; a killed master-launch's jobs close at once.
    pub(super) fn command(program: &str, _stage: lockcore::Stage) -> Command {
        Command::new(program)
    }

    /// Starts the bot suspended, binds it, lets it run (lockcore::win_job); a bot that
    /// cannot be bound is killed and reaped there before the error comes back.
    pub(super) fn spawn_bound(command: &mut Command) -> io::Result<(Child, Binding, u32)> {
        // Its own group: CTRL_BREAK can be sent to it alone. Its own console, without
        // a window: closing master-launch's window must not reach the bots directly,
        // or they all die at once, out of order (signals.rs stops them in order)
        // ("Process Creation Flags", Microsoft Learn).
        let (child, job) =
            lockcore::win_job::spawn_in_job(command, CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW)
                .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot bind the child to master-launch, so it was stopped: {error}"),
                )
            })?;
        let pid = child.id();
        Ok((
            child,
            Binding {
                job,
                asking: Mutex::new(None),
            },
            pid,
        ))
    }

    /// Blocks until the child has exited. Its pid stays reserved as long as `Child`
    /// keeps its process handle open, so nothing here reaps anything.
    pub(super) fn wait_exited(child: &Child) -> io::Result<()> {
        // SAFETY: the handle is open for as long as `child` lives.
        if unsafe { WaitForSingleObject(child.as_raw_handle(), INFINITE) } == WAIT_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::imp::{Silent, first_report};
    use crate::reaper::Said;
    use std::io::{BufReader, Write};
    use std::time::Duration;

    #[test]
    fn a_reapers_first_report_is_read_waited_for_and_not_waited_for_forever() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut reader = BufReader::new(reader);
        let short = Duration::from_millis(100);
        assert_eq!(first_report(&mut reader, short), Err(Silent));
        writer.write_all(b"pid 42\n").unwrap();
        assert_eq!(
            first_report(&mut reader, short),
            Ok(Some(Said::Started(42)))
        );
        drop(writer);
        assert_eq!(first_report(&mut reader, short), Ok(None));
    }
}
