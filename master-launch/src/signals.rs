//! How master-launch hears that it should stop, per platform. The only platform code
//! of master-launch besides `child.rs`.
//!
//! Unix: SIGINT and SIGTERM (stop in order), SIGHUP (a terminal that closed: stop in
//! order within the closing budget), read on a thread of its own through
//! `signal-hook`'s iterator (a real handler that only writes to a pipe).
//!
//! Windows: a raw `SetConsoleCtrlHandler` routine, not `ctrlc`: `ctrlc` answers a
//! console close at once and runs its closure on another thread (rust-ctrlc #122), and
//! Windows ends the process as soon as the routine returns. For a close the routine
//! itself carries the stop (about 5 s are granted; the caller compresses its budget to
//! fit). The children do not see the close themselves: each runs on a console of its
//! own without a window (`child.rs`). QuickEdit is `lockcore::console`'s.
//!
//! Windows logoff, restart and shutdown: a console program that loads user32
//! (lockcore's graceful stop does) is not sent `CTRL_LOGOFF_EVENT` or
//! `CTRL_SHUTDOWN_EVENT` (SetConsoleCtrlHandler, Remarks): it gets the session-end
//! messages at its top-level windows, and a process without a window is just ended.
//! So [`session_end`] keeps a hidden top-level window (not a message-only window: those
//! get no broadcasts) with a message loop on a thread of its own, and asks to hear
//! before the bots (`SetProcessShutdownParameters` 0x3FF, the top of the application
//! range; children stay at the default 0x280, and higher levels are shut down first).
//! On `WM_QUERYENDSESSION` it says why the session must wait
//! (`ShutdownBlockReasonCreate`: a program without it is ended after about 5 s,
//! "Shutdown Changes for Windows Vista") and starts the ordered stop; on
//! `WM_ENDSESSION` it returns only once that stop has finished ("WM_ENDSESSION":
//! the session may end any time after the return). Nothing here has run on real
//! Windows; Wine delivers no console events, and `wineboot --end-session` sends the
//! two messages to top-level windows.

use std::io;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lockcore::Grace;

/// What ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Ctrl+C, Ctrl+Break, SIGINT, SIGTERM: stop in order, with the usual deadlines.
    Interrupt,
    /// Unix: the terminal closed (SIGHUP): stop in order within the closing budget.
    #[cfg_attr(not(unix), allow(dead_code))]
    Hangup,
    /// Windows: the console is closing, the user logging off or the system shutting
    /// down. The handler must finish the stop before it returns, within about 5 s.
    ConsoleClosing,
}

/// How much a whole stop may take when a window or terminal closes: Windows grants
/// about 5 s after a console close, logoff or shutdown, and a user can lower it
/// ([`Closing::on_this_system`]). The one place each stage's share is written down:
/// brains, watchdogs and globals get [`CLOSING_GRACE`] each (of the default budget),
/// and what is forced gets the rest to go.
pub const CLOSING_BUDGET: Duration = Duration::from_millis(4500);
/// Each stage's share of [`CLOSING_BUDGET`]: 4/15 of it, three stages 80 %.
pub const CLOSING_GRACE: Duration = Duration::from_millis(1200);
/// Kept back from what Windows grants: the process must still release its locks and
/// write its log before Windows ends it.
const CLOSING_MARGIN: Duration = Duration::from_millis(500);
/// The least budget there is: one that short only forces, brains first.
const CLOSING_LEAST: Duration = Duration::from_millis(500);
/// Before the budget ends, the handler forces what is left itself (brains first), so
/// nothing is left for Windows to end out of order when the handler returns.
const FORCE_BEFORE_END: Duration = Duration::from_millis(300);

/// The closing budget in force and each stage's share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// The whole stop, from the close to the handler's return.
    pub budget: Duration,
    /// Each stage's grace.
    pub grace: Duration,
}

impl Closing {
    pub const DEFAULT: Closing = Closing {
        budget: CLOSING_BUDGET,
        grace: CLOSING_GRACE,
    };

    /// Fitted to what the system grants: never more than the default, a margin kept
    /// back, the shares in the default's proportions.
    pub fn within(granted: Duration) -> Closing {
        let budget = granted
            .saturating_sub(CLOSING_MARGIN)
            .clamp(CLOSING_LEAST, CLOSING_BUDGET);
        Closing {
            budget,
            grace: budget * 4 / 15,
        }
    }

    /// Windows: what this user's system grants a console close (the hung-app timeout,
    /// which HandlerRoutine's "Timeouts" table names for `CTRL_CLOSE_EVENT`); read once
    /// at start. Elsewhere the default.
    pub fn on_this_system() -> Closing {
        imp::granted_on_close().map_or(Closing::DEFAULT, Closing::within)
    }

    /// When the handler forces what is left, counted from the close.
    pub fn force_at(self) -> Duration {
        self.budget.saturating_sub(FORCE_BEFORE_END)
    }
}

/// What a stop signal asks for, given how many came before it (DESIGN.md rule 16; as
/// cargo-nextest's `SignalCount`): the first starts the ordered stop; a later one can
/// only shorten it: a second Ctrl+C forces what is left (still brains first), a
/// closed window or terminal gives each stage at most its closing share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Stop(Grace),
    Hurry(Duration),
    ForceNow,
}

impl Asked {
    pub fn after(signals_before: u32, ending: Ending, closing: Closing) -> Asked {
        match (signals_before, ending) {
            (0, Ending::Interrupt) => Asked::Stop(Grace::Own),
            (0, Ending::Hangup | Ending::ConsoleClosing) => {
                Asked::Stop(Grace::Given(closing.grace))
            }
            (_, Ending::Interrupt) => Asked::ForceNow,
            (_, Ending::Hangup | Ending::ConsoleClosing) => Asked::Hurry(closing.grace),
        }
    }
}

/// Waits, in a console-close handler, until `done` says the desk has stopped: forces
/// what is left at [`Closing::force_at`] (brains first), and gives up at the budget's
/// end, when Windows is about to end the process anyway. Starts counting at the call.
pub fn hold_the_close(closing: Closing, done: impl Fn(Duration) -> bool, force_now: impl Fn()) {
    let start = Instant::now();
    if done(closing.force_at()) {
        return;
    }
    force_now();
    let _ = done(closing.budget.saturating_sub(start.elapsed()));
}

/// Between a console-close handler and the thread that stops the desk: the handler
/// holds the close (Windows ends the process when it returns) until the desk is done,
/// and the stopping side knows how much of the close budget is left for its last
/// words (alerts).
pub struct StopHandshake {
    closing: Closing,
    done: Mutex<bool>,
    changed: Condvar,
    closing_since: OnceLock<Instant>,
}

impl StopHandshake {
    pub fn new(closing: Closing) -> StopHandshake {
        StopHandshake {
            closing,
            done: Mutex::new(false),
            changed: Condvar::new(),
            closing_since: OnceLock::new(),
        }
    }

    pub fn closing(&self) -> Closing {
        self.closing
    }

    /// The desk has stopped and said its last words: a held close may end.
    pub fn done(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// In the handler of a closing ending: holds it until [`StopHandshake::done`],
    /// forcing what is left before the budget ends ([`hold_the_close`]).
    pub fn hold(&self, force_now: impl Fn()) {
        let _ = self.closing_since.set(Instant::now());
        hold_the_close(
            self.closing,
            |up_to| {
                let guard = self.done.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) = self
                    .changed
                    .wait_timeout_while(guard, up_to, |done| !*done)
                    .unwrap_or_else(|e| e.into_inner());
                *guard
            },
            force_now,
        );
    }

    /// While a close is held: what is left of its budget.
    pub fn left(&self) -> Option<Duration> {
        let since = self.closing_since.get()?;
        Some(self.closing.budget.saturating_sub(since.elapsed()))
    }
}

/// Installs `handler`, called on a thread of its own for each ending.
pub fn on_stop(handler: impl Fn(Ending) + Send + Sync + 'static) -> io::Result<()> {
    imp::on_stop(Box::new(handler))
}

/// What the platform tells of how a session end reaches master-launch, for its log
/// (Windows: the shutdown level read back); `None` where there is nothing to tell.
pub fn session_end_note() -> Option<String> {
    imp::session_end_note()
}

#[cfg(unix)]
mod imp {
    use super::*;

    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    pub(super) fn on_stop(handler: Box<dyn Fn(Ending) + Send + Sync>) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    handler(if signal == SIGHUP {
                        Ending::Hangup
                    } else {
                        Ending::Interrupt
                    });
                }
            })?;
        Ok(())
    }

    pub(super) fn session_end_note() -> Option<String> {
        None
    }

    pub(super) fn granted_on_close() -> Option<Duration> {
        None
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::sync::OnceLock;
    use windows_sys::Win32::System::Console::{
        CTRL_BREAK_EVENT, CTRL_C_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT,
        SetConsoleCtrlHandler,
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
        // Not fatal: a desk that runs is better than none, and the log says what is
        // missing (under Wine without a display no window can be created).
        let listening = session_end::listen(|| {
            if let Some(handler) = HANDLER.get() {
                handler(Ending::ConsoleClosing);
            }
        });
        let _ = SESSION_END.set(listening.map_err(|e| e.to_string()));
        Ok(())
    }

    /// SPI_GETHUNGAPPTIMEOUT (SystemParametersInfoW): "the number of milliseconds that a
    /// thread can go without dispatching a message before the system considers it
    /// unresponsive"; HandlerRoutine's "Timeouts" table gives it as the time a process
    /// has after `CTRL_CLOSE_EVENT` (default 5000 ms; users and policies lower it).
    pub(super) fn granted_on_close() -> Option<Duration> {
        use windows_sys::Win32::UI::WindowsAndMessaging::{
            SPI_GETHUNGAPPTIMEOUT, SystemParametersInfoW,
        };
        let mut millis: u32 = 0;
        // SAFETY: this action writes one UINT to the pointer, a local that outlives it.
        let read = unsafe {
            SystemParametersInfoW(
                SPI_GETHUNGAPPTIMEOUT,
                0,
                (&raw mut millis).cast::<std::ffi::c_void>(),
                0,
            )
        };
        (read != 0 && millis > 0).then(|| Duration::from_millis(u64::from(millis)))
    }

    /// Whether the session-end window runs, or why not.
    static SESSION_END: OnceLock<Result<(), String>> = OnceLock::new();

    pub(super) fn session_end_note() -> Option<String> {
        Some(match (SESSION_END.get()?, session_end::level()) {
            (Ok(()), Some(level)) => format!(
                "a logoff, restart or shutdown stops the desk in order: master-launch is told \
                 before its bots (shutdown level {level:#x})"
            ),
            (Ok(()), None) => "a logoff, restart or shutdown stops the desk in order".into(),
            (Err(why), _) => format!(
                "WARNING: master-launch cannot hear a logoff, restart or shutdown ({why}): \
                 Windows would end the bots out of order. Stop the desk with \
                 SAFE_SHUTDOWN.bat before one"
            ),
        })
    }
}

/// Windows: hears a session end (logoff, restart, shutdown) at a hidden top-level
/// window, and holds the session until the ordered stop has finished. See the module
/// documentation for the sources.
#[cfg(windows)]
mod session_end {
    use std::io;
    use std::sync::Mutex;
    use std::sync::OnceLock;
    use std::thread::JoinHandle;
    use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
    use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
    use windows_sys::Win32::System::Shutdown::{
        ShutdownBlockReasonCreate, ShutdownBlockReasonDestroy,
    };
    use windows_sys::Win32::System::Threading::{
        GetProcessShutdownParameters, SetProcessShutdownParameters,
    };
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        CreateWindowExW, DefWindowProcW, DispatchMessageW, GetMessageW, MSG, RegisterClassW,
        WM_ENDSESSION, WM_QUERYENDSESSION, WNDCLASSW, WS_OVERLAPPED,
    };

    /// The top of the range for applications (SetProcessShutdownParameters): above the
    /// bots' default 0x280, so master-launch is asked first.
    const LEVEL: u32 = 0x3FF;
    /// The window class, also how a test finds the window.
    pub const CLASS: &str = "DeskToolsSessionEnd";
    /// What Windows shows while it waits for us.
    const REASON: &str =
        "Stopping the trading desk in order: brains, then watchdogs, then the rest";

    /// Starts the ordered stop (and waits for it, within the closing budget).
    static STOP: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();
    /// The thread that runs it, joined by `WM_ENDSESSION`.
    static RUNNING: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

    /// Sets the shutdown level and starts the window's thread.
    pub(super) fn listen(stop: impl Fn() + Send + Sync + 'static) -> io::Result<()> {
        if STOP.set(Box::new(stop)).is_err() {
            return Err(io::Error::other("the session-end window was started twice"));
        }
        // SAFETY: no pointers; a level in the documented application range.
        if unsafe { SetProcessShutdownParameters(LEVEL, 0) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let (ready, created) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("session end".into())
            .spawn(move || run_window(&ready))?;
        created
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the session-end window's thread ended")))
    }

    /// The shutdown level in force, read back.
    pub(super) fn level() -> Option<u32> {
        let (mut level, mut flags) = (0, 0);
        // SAFETY: two out-pointers to locals.
        (unsafe { GetProcessShutdownParameters(&mut level, &mut flags) } != 0).then_some(level)
    }

    fn wide(text: &str) -> Vec<u16> {
        text.encode_utf16().chain([0]).collect()
    }

    /// Creates the window and runs its message loop for the life of the process.
    fn run_window(ready: &std::sync::mpsc::SyncSender<io::Result<()>>) {
        let class = wide(CLASS);
        // SAFETY: null asks for this executable's module.
        let instance = unsafe { GetModuleHandleW(std::ptr::null()) };
        // SAFETY: plain data; every field not set is a valid zero.
        let mut description: WNDCLASSW = unsafe { std::mem::zeroed() };
        description.lpfnWndProc = Some(window_proc);
        description.hInstance = instance;
        description.lpszClassName = class.as_ptr();
        // SAFETY: the description and the class name outlive the call.
        if unsafe { RegisterClassW(&description) } == 0 {
            let _ = ready.send(Err(io::Error::last_os_error()));
            return;
        }
        let title = wide("master-launch");
        // SAFETY: a registered class; a top-level window (no parent), never shown.
        let window = unsafe {
            CreateWindowExW(
                0,
                class.as_ptr(),
                title.as_ptr(),
                WS_OVERLAPPED,
                0,
                0,
                0,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                instance,
                std::ptr::null(),
            )
        };
        if window.is_null() {
            let _ = ready.send(Err(io::Error::last_os_error()));
            return;
        }
        let _ = ready.send(Ok(()));
        // SAFETY: plain data, filled by GetMessageW.
        let mut message: MSG = unsafe { std::mem::zeroed() };
        // SAFETY: a message struct we own; 0 is WM_QUIT, -1 an error: both end the loop.
        while unsafe { GetMessageW(&mut message, std::ptr::null_mut(), 0, 0) } > 0 {
            // SAFETY: a message GetMessageW returned.
            unsafe { DispatchMessageW(&message) };
        }
    }

    unsafe extern "system" fn window_proc(
        window: HWND,
        message: u32,
        wparam: WPARAM,
        lparam: LPARAM,
    ) -> LRESULT {
        match message {
            WM_QUERYENDSESSION => {
                begin_stop(window);
                1
            }
            // TRUE: the session ends (maybe without a query before, when forced).
            WM_ENDSESSION if wparam != 0 => {
                begin_stop(window);
                let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(stop) = running {
                    let _ = stop.join();
                }
                0
            }
            // FALSE: the end was cancelled; the stop already begun goes on.
            WM_ENDSESSION => {
                // SAFETY: our window.
                unsafe { ShutdownBlockReasonDestroy(window) };
                0
            }
            // SAFETY: the arguments this procedure was called with.
            _ => unsafe { DefWindowProcW(window, message, wparam, lparam) },
        }
    }

    /// Once per process: says why the session waits, and starts the ordered stop on a
    /// thread (the window must go on answering messages meanwhile).
    fn begin_stop(window: HWND) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        static BEGUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if BEGUN.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let reason = wide(REASON);
        // SAFETY: our window and a terminated string that outlives the call.
        unsafe { ShutdownBlockReasonCreate(window, reason.as_ptr()) };
        *running = std::thread::Builder::new()
            .name("session end stop".into())
            .spawn(|| {
                if let Some(stop) = STOP.get() {
                    stop();
                }
            })
            .ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_signal_only_shortens_the_stop_the_first_began() {
        let closing = Grace::Given(CLOSING_GRACE);
        let after = |before, ending| Asked::after(before, ending, Closing::DEFAULT);
        let table = [
            (0, Ending::Interrupt, Asked::Stop(Grace::Own)),
            (0, Ending::Hangup, Asked::Stop(closing)),
            (0, Ending::ConsoleClosing, Asked::Stop(closing)),
            (1, Ending::Interrupt, Asked::ForceNow),
            (5, Ending::Interrupt, Asked::ForceNow),
            (1, Ending::Hangup, Asked::Hurry(CLOSING_GRACE)),
            (1, Ending::ConsoleClosing, Asked::Hurry(CLOSING_GRACE)),
        ];
        for (before, ending, asked) in table {
            assert_eq!(after(before, ending), asked, "{before} {ending:?}");
        }
        // Three stages' shares, and what is forced, fit the budget.
        assert!(CLOSING_GRACE * 3 < CLOSING_BUDGET);
        assert_eq!(Closing::within(CLOSING_BUDGET * 2), Closing::DEFAULT);
    }

    #[test]
    fn a_lowered_close_timeout_shrinks_the_budget_and_every_share_with_it() {
        let ms = Duration::from_millis;
        // What Windows grants by default: the default budget.
        assert_eq!(Closing::within(ms(5000)), Closing::DEFAULT);
        // A user who lowered it to 2 s: 1.5 s, each stage 0.4 s, forced at 1.2 s.
        let lowered = Closing::within(ms(2000));
        assert_eq!(lowered.budget, ms(1500));
        assert_eq!(lowered.grace, ms(400));
        assert_eq!(lowered.force_at(), ms(1200));
        assert!(lowered.grace * 3 <= lowered.force_at());
        // Absurdly low or zero: a floor that still forces, brains first.
        assert_eq!(Closing::within(ms(0)).budget, CLOSING_LEAST);
        assert_eq!(Closing::within(Duration::MAX), Closing::DEFAULT);
        let second = Asked::after(1, Ending::ConsoleClosing, lowered);
        assert_eq!(second, Asked::Hurry(ms(400)));
    }

    #[test]
    fn the_close_is_held_until_done_and_forced_before_the_end() {
        use std::cell::{Cell, RefCell};
        let ms = Duration::from_millis;
        let closing = Closing::within(ms(2000));
        // The waits asked for, and whether it forced, when every wait answers `done`.
        let hold = |done: bool| {
            let (waits, forced) = (RefCell::new(Vec::new()), Cell::new(false));
            hold_the_close(
                closing,
                |up_to| {
                    waits.borrow_mut().push(up_to);
                    done
                },
                || forced.set(true),
            );
            (waits.into_inner(), forced.get())
        };
        // Done in time: nothing forced, one wait up to force_at.
        let (waits, forced) = hold(true);
        assert_eq!(waits, [ms(1200)]);
        assert!(!forced);
        // Not done at force_at: forced, then waited for the rest of the budget.
        let (waits, forced) = hold(false);
        assert!(forced);
        assert_eq!(waits.len(), 2);
        assert!(waits[1] <= ms(1500), "{waits:?}");
    }
}
