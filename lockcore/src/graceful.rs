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
//! [`ask_to_stop`] must call [`serve_console_helper`] first thing in `main`.
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

/// Asks `pid` to stop gracefully. The caller has checked its identity just before.
pub fn ask_to_stop(pid: u32) -> Asked {
    imp::ask_to_stop(pid)
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
    std::process::exit(pid.map_or(BAD_HELPER_ARGS, imp::console_helper));
}

/// The helper's exit code for a missing or bad pid (and for any call on Unix).
const BAD_HELPER_ARGS: i32 = 2;

#[cfg(unix)]
mod imp {
    use super::Asked;

    pub fn ask_to_stop(pid: u32) -> Asked {
        let Ok(pid) = i32::try_from(pid) else {
            return Asked::Nothing(format!("pid {pid} is out of range"));
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM) {
            Ok(()) => Asked::Terminate,
            Err(nix::errno::Errno::EPERM) => Asked::NotPermitted,
            Err(e) => Asked::Nothing(format!("SIGTERM failed: {e}")),
        }
    }

    pub fn console_helper(_pid: u32) -> i32 {
        super::BAD_HELPER_ARGS
    }
}

#[cfg(windows)]
mod imp {
    use super::{Asked, CONSOLE_HELPER_ARG};
    use std::os::windows::process::CommandExt;
    use std::process::{Command, Stdio};
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
    }

    /// How long the helper may take: it attaches, reads the process table once and
    /// sends one event. A helper stuck on a hung console must not hold up the stop
    /// (the caller forces at its deadline all the same).
    const HELPER_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

    pub fn ask_to_stop(pid: u32) -> Asked {
        let windows = top_level_windows(pid);
        if !windows.is_empty() {
            for window in &windows {
                // SAFETY: posting to a window that closed meanwhile just fails.
                unsafe { PostMessageW(*window, WM_CLOSE, 0, 0) };
            }
            return Asked::CloseWindows(windows.len());
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return Asked::Nothing(format!("cannot find own executable: {e}")),
        };
        // Detached: the helper has no console of its own to leave before attaching.
        let helper = Command::new(exe)
            .arg(CONSOLE_HELPER_ARG)
            .arg(pid.to_string())
            .creation_flags(DETACHED_PROCESS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let status = helper.and_then(|mut helper| {
            let started = std::time::Instant::now();
            loop {
                if let Some(status) = helper.try_wait()? {
                    return Ok(status);
                }
                if started.elapsed() >= HELPER_PATIENCE {
                    let _ = helper.kill();
                    let _ = helper.wait();
                    return Err(std::io::Error::other(
                        "the console helper did not answer in time",
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        match status.map(|s| s.code()) {
            Ok(Some(helper_exit::CTRL_BREAK)) => Asked::CtrlBreak,
            Ok(Some(helper_exit::CTRL_BREAK_CONSOLE)) => Asked::CtrlBreakConsole,
            Ok(Some(helper_exit::SHARED_CONSOLE)) => {
                Asked::Nothing("it shares its console with other processes".into())
            }
            Ok(Some(helper_exit::NO_CONSOLE)) => {
                Asked::Nothing("it has neither a console nor a window".into())
            }
            Ok(Some(helper_exit::NOT_SENT)) => {
                Asked::Nothing("the console refused the event".into())
            }
            Ok(code) => Asked::Nothing(format!("the console helper failed ({code:?})")),
            Err(e) => Asked::Nothing(format!("console helper: {e}")),
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

    /// Runs in the helper: attach to `pid`'s console, then CTRL_BREAK.
    pub fn console_helper(pid: u32) -> i32 {
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
        let attached = console_processes();
        let own = std::process::id();
        let table = crate::ProcessProbe::new().map(|mut probe| probe.table());
        let Ok(table) = table else {
            // SAFETY: detaching from the console we attached to.
            unsafe { FreeConsole() };
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
        let code = if !console_is_its_own {
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
        };
        // SAFETY: detaching from the console we attached to.
        unsafe { FreeConsole() };
        code
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
