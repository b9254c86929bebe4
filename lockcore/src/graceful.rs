//! Asking a process we did not start, and whose lock holder is gone, to stop on its own.
//!
//! Unix: SIGTERM. Windows has no signal one process can send another:
//! - a process with windows of its own gets a close request (`WM_CLOSE` to each), as
//!   `taskkill` without `/F` does;
//! - a console process gets CTRL_BREAK: to its own process group when it is the root
//!   of one (it was the first process of its console window), else to every process
//!   on its console (group 0). Either only when nothing but the process, what it
//!   started and what started it shares that console: Windows delivers CTRL_BREAK for
//!   a pid that is not a group's root to the whole console (microsoft/terminal#335).
//!   A console window itself never gets a close request: under Windows Terminal
//!   `GetConsoleWindow()` is a pseudo-window that ignores it, and a classic console
//!   window is reported as owned by the console's oldest client, so closing "the
//!   bot's window" could end a console others share.
//!
//! A console control event reaches only processes attached to the sender's console, and
//! attaching detaches the caller from its own. So a short-lived helper does that part:
//! a copy of the calling tool started with [`CONSOLE_HELPER_ARG`]. A tool that calls
//! [`start_asking`] must call [`serve_console_helper`] first thing in `main`. The
//! helper is bound to its caller (a kill-on-close job: it dies with it), ends itself at
//! its own deadline, and re-checks the target's creation time, holding a handle to it,
//! before it attaches. [`start_asking`] only starts it ([`Started::Underway`]), so a
//! stop can ask every process of a stage before waiting for any answer.
//!
//! master-launch's own bots are not strangers: they run in a process group and a
//! console of their own, so they get CTRL_BREAK to their group ([`start_ctrl_break`],
//! Windows), never a close request nor the shared-console checks.
//!
//! Whatever this could not reach is forced by the caller after its timeout.

use std::fmt;

/// The hidden argument that turns a tool into the console helper (Windows only).
pub const CONSOLE_HELPER_ARG: &str = "--lockcore-console-helper";

/// What [`ask_to_stop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// SIGTERM (Unix).
    Terminate,
    /// CTRL_BREAK to the process group the process is the root of.
    CtrlBreak,
    /// `WM_CLOSE` to this many top-level windows of the process.
    CloseWindows(usize),
    /// CTRL_BREAK to every process of the console the process (with its own tree
    /// alone) runs in.
    CtrlBreakConsole,
    /// Nothing could be sent gracefully; the reason says why.
    Nothing(String),
    /// The system refused the signal: the process is not ours to stop (EPERM).
    NotPermitted,
}

impl fmt::Display for Asked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Asked::Terminate => write!(f, "SIGTERM"),
            Asked::CtrlBreak => write!(f, "CTRL_BREAK to its process group"),
            Asked::CloseWindows(n) => write!(f, "a close request to its {n} window(s)"),
            Asked::CtrlBreakConsole => write!(f, "CTRL_BREAK to its console (its tree alone)"),
            Asked::Nothing(reason) => write!(f, "nothing sent ({reason})"),
            Asked::NotPermitted => write!(f, "nothing sent (not permitted to signal it)"),
        }
    }
}

/// An ask that was started: done at once, or a console helper at work (Windows).
#[derive(Debug)]
pub enum Started {
    Asked(Asked),
    Underway(Underway),
}

/// A console helper at work; dropping it ends the helper.
#[derive(Debug)]
pub struct Underway(imp::Underway);

impl Underway {
    /// What was done once the helper has finished; `None` while it works. A helper
    /// that has not finished by its deadline is ended and answers [`Asked::Nothing`].
    pub fn answer(&mut self) -> Option<Asked> {
        self.0.answer()
    }
}

/// Starts asking `who`, a process we did not start, to stop gracefully. The caller
/// has checked its identity just before.
pub fn start_asking(who: crate::ProcessIdentity) -> Started {
    imp::start_asking(who)
}

/// Asks `who` to stop gracefully and waits for the answer (a console helper on
/// Windows answers within its deadline).
pub fn ask_to_stop(who: crate::ProcessIdentity) -> Asked {
    match start_asking(who) {
        Started::Asked(asked) => asked,
        Started::Underway(mut underway) => loop {
            if let Some(asked) = underway.answer() {
                return asked;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        },
    }
}

/// Windows: CTRL_BREAK to the process group of `who`, a child started with
/// `CREATE_NEW_PROCESS_GROUP` and a console of its own (master-launch's bots), through
/// the console helper; nothing else is tried.
#[cfg(windows)]
pub fn start_ctrl_break(who: crate::ProcessIdentity) -> Started {
    imp::start_helper(who, imp::Mode::OwnChild)
}

/// When the process was started as the console helper, does the helper's work and
/// exits; otherwise returns at once. Call it first in `main` of a tool that calls
/// [`ask_to_stop`].
pub fn serve_console_helper() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(CONSOLE_HELPER_ARG) {
        return;
    }
    let pid = args.next().and_then(|pid| pid.parse().ok());
    let start_time = args.next().and_then(|secs| secs.parse().ok());
    let own = args.next().as_deref() == Some(OWN_CHILD_ARG);
    let code = match (pid, start_time) {
        (Some(pid), Some(start_time)) => {
            imp::console_helper(crate::ProcessIdentity { pid, start_time }, own)
        }
        _ => BAD_HELPER_ARGS,
    };
    std::process::exit(code);
}

/// The helper's last argument for a child of the caller's ([`start_ctrl_break`]).
const OWN_CHILD_ARG: &str = "own-child";

/// The helper's exit code for a missing or bad pid (and for any call on Unix).
const BAD_HELPER_ARGS: i32 = 2;

#[cfg(unix)]
mod imp {
    use super::{Asked, Started};

    /// Nothing is ever under way on Unix: a signal is sent at once.
    #[derive(Debug)]
    pub enum Underway {}

    impl Underway {
        pub fn answer(&mut self) -> Option<Asked> {
            match *self {}
        }
    }

    pub fn start_asking(who: crate::ProcessIdentity) -> Started {
        Started::Asked(terminate(who.pid))
    }

    fn terminate(pid: u32) -> Asked {
        let Ok(pid) = i32::try_from(pid) else {
            return Asked::Nothing(format!("pid {pid} is out of range"));
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM) {
            Ok(()) => Asked::Terminate,
            Err(nix::errno::Errno::EPERM) => Asked::NotPermitted,
            Err(e) => Asked::Nothing(format!("SIGTERM failed: {e}")),
        }
    }

    pub fn console_helper(_who: crate::ProcessIdentity, _own: bool) -> i32 {
        super::BAD_HELPER_ARGS
    }
}

#[cfg(windows)]
mod imp {
    use super::{Asked, CONSOLE_HELPER_ARG, OWN_CHILD_ARG, Started};
    use crate::ProcessIdentity;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use windows_sys::Win32::Foundation::{HWND, LPARAM};
    use windows_sys::Win32::System::Console::{
        AttachConsole, CTRL_BREAK_EVENT, FreeConsole, GenerateConsoleCtrlEvent,
        GetConsoleProcessList, SetConsoleCtrlHandler,
    };
    use windows_sys::Win32::System::Threading::DETACHED_PROCESS;
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        EnumWindows, GetClassNameW, GetWindowThreadProcessId, IsWindowVisible, PostMessageW,
        WM_CLOSE,
    };

    /// The helper's exit codes: its one way to report back (its standard handles are
    /// not to be trusted once it has attached to another console).
    mod helper_exit {
        pub const CTRL_BREAK: i32 = 0;
        pub const CTRL_BREAK_CONSOLE: i32 = 3;
        pub const SHARED_CONSOLE: i32 = 4;
        pub const NO_CONSOLE: i32 = 5;
        /// GenerateConsoleCtrlEvent itself failed.
        pub const NOT_SENT: i32 = 6;
        /// The pid belongs to a process with another creation time.
        pub const REUSED: i32 = 7;
        /// The helper's own deadline passed (a hung console).
        pub const TIMED_OUT: i32 = 8;
        /// No process has the pid any more.
        pub const GONE: i32 = 9;
    }

    /// How long the helper may take: it opens the target, attaches, reads the process
    /// table once and sends one event. It ends itself at this deadline; the caller
    /// ends it (through its job) a little later if it could not. A helper stuck on a
    /// hung console must not hold up the stop (the caller forces at its deadline all
    /// the same).
    const HELPER_DEADLINE: Duration = Duration::from_millis(1500);
    const CALLER_PATIENCE: Duration = Duration::from_millis(2000);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// A process we did not start: the shared-console checks apply.
        Stranger,
        /// A child of the caller in a process group and console of its own.
        OwnChild,
    }

    #[derive(Debug)]
    pub struct Underway {
        helper: Child,
        /// The kill-on-close job the helper runs in: dropped with this, it ends the
        /// helper, and the system closes it (ending the helper) if the caller dies.
        _job: crate::win_job::Job,
        started: Instant,
        answered: bool,
    }

    impl Underway {
        pub fn answer(&mut self) -> Option<Asked> {
            if self.answered {
                return Some(Asked::Nothing("already answered".into()));
            }
            let answer = match self.helper.try_wait() {
                Ok(Some(status)) => from_exit(status.code()),
                Ok(None) if self.started.elapsed() < CALLER_PATIENCE => return None,
                Ok(None) => {
                    let _ = self.helper.kill();
                    Asked::Nothing("the console helper did not answer in time".into())
                }
                Err(e) => {
                    let _ = self.helper.kill();
                    Asked::Nothing(format!("console helper: {e}"))
                }
            };
            self.answered = true;
            Some(answer)
        }
    }

    fn from_exit(code: Option<i32>) -> Asked {
        match code {
            Some(helper_exit::CTRL_BREAK) => Asked::CtrlBreak,
            Some(helper_exit::CTRL_BREAK_CONSOLE) => Asked::CtrlBreakConsole,
            Some(helper_exit::SHARED_CONSOLE) => {
                Asked::Nothing("it shares its console with other processes".into())
            }
            Some(helper_exit::NO_CONSOLE) => {
                Asked::Nothing("it has neither a console nor a window".into())
            }
            Some(helper_exit::NOT_SENT) => Asked::Nothing("the console refused the event".into()),
            Some(helper_exit::REUSED) => {
                Asked::Nothing("its pid now belongs to another process".into())
            }
            Some(helper_exit::GONE) => Asked::Nothing("it was gone already".into()),
            Some(helper_exit::TIMED_OUT) => {
                Asked::Nothing("the console helper did not answer in time".into())
            }
            code => Asked::Nothing(format!("the console helper failed ({code:?})")),
        }
    }

    pub fn start_asking(who: ProcessIdentity) -> Started {
        let windows = top_level_windows(who.pid);
        if !windows.is_empty() {
            for window in &windows {
                // SAFETY: posting to a window that closed meanwhile just fails.
                unsafe { PostMessageW(*window, WM_CLOSE, 0, 0) };
            }
            return Started::Asked(Asked::CloseWindows(windows.len()));
        }
        start_helper(who, Mode::Stranger)
    }

    /// Starts the helper in a kill-on-close job and returns at once.
    pub fn start_helper(who: ProcessIdentity, mode: Mode) -> Started {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                return Started::Asked(Asked::Nothing(format!("cannot find own executable: {e}")));
            }
        };
        let mut command = Command::new(exe);
        command
            .arg(CONSOLE_HELPER_ARG)
            .arg(who.pid.to_string())
            .arg(who.start_time.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if mode == Mode::OwnChild {
            command.arg(OWN_CHILD_ARG);
        }
        // Detached: the helper has no console of its own to leave before attaching
        // ("Process Creation Flags", Microsoft Learn).
        match crate::win_job::spawn_in_job(&mut command, DETACHED_PROCESS) {
            Ok((helper, job)) => Started::Underway(super::Underway(Underway {
                helper,
                _job: job,
                started: Instant::now(),
                answered: false,
            })),
            Err(e) => Started::Asked(Asked::Nothing(format!(
                "cannot start the console helper: {e}"
            ))),
        }
    }

    /// The visible top-level windows owned by `pid`.
    fn top_level_windows(pid: u32) -> Vec<HWND> {
        struct Search {
            pid: u32,
            found: Vec<HWND>,
        }
        unsafe extern "system" fn visit(window: HWND, search: LPARAM) -> i32 {
            // SAFETY: `search` is the &mut Search passed to EnumWindows below, alive for
            // the whole (synchronous) enumeration.
            let search = unsafe { &mut *(search as *mut Search) };
            let mut owner = 0u32;
            // SAFETY: a valid window handle from the enumeration and an out pointer.
            unsafe { GetWindowThreadProcessId(window, &mut owner) };
            // SAFETY: as above.
            if owner == search.pid
                && unsafe { IsWindowVisible(window) } != 0
                && !is_console_window(window)
            {
                search.found.push(window);
            }
            1
        }
        let mut search = Search {
            pid,
            found: Vec::new(),
        };
        // SAFETY: the callback only runs during this call, while `search` lives.
        unsafe { EnumWindows(Some(visit), (&raw mut search) as LPARAM) };
        search.found
    }

    /// A classic console window (`ConsoleWindowClass`) or Windows Terminal's
    /// `PseudoConsoleWindow`: never closed by us (see the module docs).
    fn is_console_window(window: HWND) -> bool {
        let mut class = [0u16; 64];
        // SAFETY: the buffer holds 64 UTF-16 units and its length says so.
        let len = unsafe { GetClassNameW(window, class.as_mut_ptr(), class.len() as i32) };
        let name = String::from_utf16_lossy(&class[..usize::try_from(len).unwrap_or(0)]);
        matches!(name.as_str(), "ConsoleWindowClass" | "PseudoConsoleWindow")
    }

    /// Runs in the helper: check `who` is still the process meant, attach to its
    /// console, then CTRL_BREAK.
    pub fn console_helper(who: ProcessIdentity, own_child: bool) -> i32 {
        // Its own deadline, whatever the caller does.
        std::thread::spawn(|| {
            std::thread::sleep(HELPER_DEADLINE);
            std::process::exit(helper_exit::TIMED_OUT);
        });
        // Held until the end: the pid cannot be reused while this handle is open
        // (crate::win_handle), so the console attached to is the target's.
        let target = match crate::win_handle::Process::open(who.pid, false) {
            Ok(target) => target,
            Err(crate::win_handle::OpenFailure::Gone) => return helper_exit::GONE,
            Err(_) => return helper_exit::NO_CONSOLE,
        };
        match target.start_time() {
            Ok(started) if who.started_at(started) => {}
            Ok(_) => return helper_exit::REUSED,
            Err(_) => return helper_exit::NO_CONSOLE,
        }
        let code = attach_and_break(who.pid, own_child);
        drop(target);
        code
    }

    fn attach_and_break(pid: u32, own_child: bool) -> i32 {
        // Survive the event we send: it may reach everything on the console, us too.
        unsafe extern "system" fn ignore(_event: u32) -> i32 {
            1
        }
        // SAFETY: fails when pid has no console (or is gone).
        if unsafe { AttachConsole(pid) } == 0 {
            return helper_exit::NO_CONSOLE;
        }
        // After attaching: AttachConsole resets the console control handler table
        // (Microsoft, "Registering a Control Handler Function").
        // SAFETY: a valid handler function for the life of the process.
        unsafe { SetConsoleCtrlHandler(Some(ignore), 1) };
        let code = if own_child {
            // The caller started it with CREATE_NEW_PROCESS_GROUP, so it is the root of
            // its group, whose id is its pid ("Process Creation Flags"); on a console of
            // its own. GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, group) reaches that
            // group alone ("GenerateConsoleCtrlEvent", Microsoft Learn).
            // SAFETY: no pointers.
            match unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } {
                0 => helper_exit::NOT_SENT,
                _ => helper_exit::CTRL_BREAK,
            }
        } else {
            stranger_break(pid)
        };
        // SAFETY: detaching from the console we attached to.
        unsafe { FreeConsole() };
        code
    }

    /// CTRL_BREAK to a process we did not start, only when its console holds nothing
    /// but its own tree.
    fn stranger_break(pid: u32) -> i32 {
        let attached = console_processes();
        let own = std::process::id();
        let table = crate::ProcessProbe::new().map(|mut probe| probe.table());
        let Ok(table) = table else {
            return helper_exit::NO_CONSOLE;
        };
        // Parent links count only to older processes (DESIGN.md rule 10), here and in
        // the tree checks below: a reused pid must not make a stranger look related.
        let parent_attached = table
            .parent_of(pid)
            .is_some_and(|parent| attached.contains(&parent));
        // Only the process, what it started and what started it (the shell of its
        // window): then neither the event nor the close can reach anything else.
        let console_is_its_own = attached.iter().all(|&other| {
            other == own
                || other == pid
                || table.is_in_tree_of(other, pid)
                || table.is_in_tree_of(pid, other)
        });
        if !console_is_its_own {
            helper_exit::SHARED_CONSOLE
        } else if !parent_attached {
            // The first process of its console is the root of the console's group.
            // SAFETY: no pointers.
            match unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } {
                0 => helper_exit::NOT_SENT,
                _ => helper_exit::CTRL_BREAK,
            }
        } else {
            // Everything on this console is the bot's own tree (checked above): group 0
            // is every process on it, and the helper ignores the event.
            // SAFETY: no pointers.
            match unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, 0) } {
                0 => helper_exit::NOT_SENT,
                _ => helper_exit::CTRL_BREAK_CONSOLE,
            }
        }
    }

    /// The pids attached to our (just attached) console.
    fn console_processes() -> Vec<u32> {
        let mut pids = vec![0u32; 64];
        loop {
            let capacity = u32::try_from(pids.len()).unwrap_or(u32::MAX);
            // SAFETY: the buffer holds `capacity` u32s.
            let count = unsafe { GetConsoleProcessList(pids.as_mut_ptr(), capacity) };
            let count = usize::try_from(count).unwrap_or(0);
            if count <= pids.len() {
                pids.truncate(count);
                return pids;
            }
            pids.resize(count, 0);
        }
    }
}
