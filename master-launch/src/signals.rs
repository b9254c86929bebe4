//! How master-launch hears that it should stop, per platform. The only platform code
//! of master-launch besides `child.rs`.
//!
//! Unix: SIGINT, SIGTERM and SIGHUP (a terminal that closes means "stop in order",
//! like Ctrl+C), through `ctrlc`.
//!
//! Windows: a raw `SetConsoleCtrlHandler` routine, not `ctrlc`: `ctrlc` answers a
//! console close at once and runs its closure on another thread (rust-ctrlc #122), and
//! Windows ends the process as soon as the routine returns. For a close the routine
//! itself carries the stop (about 5 s are granted; the caller compresses its budget to
//! fit). The children do not see the close themselves: each runs on a console of its
//! own without a window (`child.rs`). Logoff and shutdown are not covered: a console
//! program that loads user32 (lockcore's graceful stop does) is not sent those events
//! (SetConsoleCtrlHandler, Remarks); Windows then ends master-launch, and the job ends
//! the bots with it, out of order. The README says to run safe-shutdown before. Also QuickEdit is
//! switched off for our console while we run (a click into the window would otherwise
//! freeze console writes until Esc, microsoft/terminal #34), and restored at exit.
//! Nothing here has run on real Windows; Wine delivers no console events.

use std::io;

/// What ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Ctrl+C, Ctrl+Break, SIGTERM, SIGHUP: stop in order, with the usual deadlines.
    Interrupt,
    /// Windows: the console is closing, the user logging off or the system shutting
    /// down. The handler must finish the stop before it returns, within about 5 s.
    ConsoleClosing,
}

/// Installs `handler`, called on a thread of its own for each ending.
pub fn on_stop(handler: impl Fn(Ending) + Send + Sync + 'static) -> io::Result<()> {
    imp::on_stop(Box::new(handler))
}

/// Keeps console settings changed for the run; restores them when dropped.
pub use imp::ConsoleGuard;

/// Prepares our console for a long run (Windows: QuickEdit off).
pub fn prepare_console() -> ConsoleGuard {
    imp::prepare_console()
}

#[cfg(unix)]
mod imp {
    use super::*;

    #[derive(Debug)]
    pub struct ConsoleGuard;

    pub(super) fn prepare_console() -> ConsoleGuard {
        ConsoleGuard
    }

    pub(super) fn on_stop(handler: Box<dyn Fn(Ending) + Send + Sync>) -> io::Result<()> {
        ctrlc::set_handler(move || handler(Ending::Interrupt)).map_err(io::Error::other)
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::sync::OnceLock;
    use windows_sys::Win32::Foundation::HANDLE;
    use windows_sys::Win32::System::Console::{
        CONSOLE_MODE, CTRL_BREAK_EVENT, CTRL_C_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT,
        CTRL_SHUTDOWN_EVENT, ENABLE_EXTENDED_FLAGS, ENABLE_INSERT_MODE, ENABLE_QUICK_EDIT_MODE,
        GetConsoleMode, GetStdHandle, STD_INPUT_HANDLE, SetConsoleCtrlHandler, SetConsoleMode,
    };
    use windows_sys::core::BOOL;

    static HANDLER: OnceLock<Box<dyn Fn(Ending) + Send + Sync>> = OnceLock::new();

    /// Runs on a thread the system creates for each event.
    unsafe extern "system" fn routine(event: u32) -> BOOL {
        let Some(handler) = HANDLER.get() else {
            return 0;
        };
        match event {
            CTRL_C_EVENT | CTRL_BREAK_EVENT => handler(Ending::Interrupt),
            CTRL_CLOSE_EVENT | CTRL_LOGOFF_EVENT | CTRL_SHUTDOWN_EVENT => {
                handler(Ending::ConsoleClosing)
            }
            _ => return 0,
        }
        1
    }

    pub(super) fn on_stop(handler: Box<dyn Fn(Ending) + Send + Sync>) -> io::Result<()> {
        if HANDLER.set(handler).is_err() {
            return Err(io::Error::other("the stop handler was installed twice"));
        }
        // SAFETY: a valid routine for the life of the process.
        if unsafe { SetConsoleCtrlHandler(Some(routine), 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The console input mode as it was before we changed it.
    #[derive(Debug)]
    pub struct ConsoleGuard(Option<(HANDLE, CONSOLE_MODE)>);

    // SAFETY: a console handle may be used from any thread.
    unsafe impl Send for ConsoleGuard {}

    pub(super) fn prepare_console() -> ConsoleGuard {
        // SAFETY: GetStdHandle has no preconditions; the mode calls fail harmlessly on
        // a handle that is not a console (a pipe, none).
        unsafe {
            let input = GetStdHandle(STD_INPUT_HANDLE);
            let mut mode: CONSOLE_MODE = 0;
            if GetConsoleMode(input, &mut mode) == 0 {
                return ConsoleGuard(None);
            }
            // QuickEdit and Insert change only with ENABLE_EXTENDED_FLAGS, and setting
            // that flag without ENABLE_INSERT_MODE turns Insert off (SetConsoleMode).
            // A mode read without the flag says nothing of either: assume the
            // console's defaults (both on), and restore those.
            let (quiet, restore) = if mode & ENABLE_EXTENDED_FLAGS == 0 {
                let defaults = mode | ENABLE_EXTENDED_FLAGS | ENABLE_INSERT_MODE;
                (defaults, defaults | ENABLE_QUICK_EDIT_MODE)
            } else {
                (mode & !ENABLE_QUICK_EDIT_MODE, mode)
            };
            if SetConsoleMode(input, quiet) == 0 {
                return ConsoleGuard(None);
            }
            ConsoleGuard(Some((input, restore)))
        }
    }

    impl Drop for ConsoleGuard {
        fn drop(&mut self) {
            if let Some((input, mode)) = self.0 {
                // SAFETY: restoring the mode read from the same handle.
                unsafe { SetConsoleMode(input, mode) };
            }
        }
    }
}
