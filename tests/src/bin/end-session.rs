//! Ends a process's Windows session the way Windows (and `wineboot --end-session`)
//! does, for that process alone: `WM_QUERYENDSESSION` and then `WM_ENDSESSION` (TRUE)
//! to each of its top-level windows, waiting for each answer.
//!
//! ```text
//! end-session PID [logoff]
//! ```
//!
//! Prints `windows N`, `query HWND answer A`, `ended HWND`; exits 1 when the process
//! has no top-level window, 2 on bad arguments or on a system without sessions.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(pid) = args.first().and_then(|pid| pid.parse::<u32>().ok()) else {
        fail(2, "usage: end-session PID [logoff]");
    };
    let logoff = args.get(1).is_some_and(|a| a == "logoff");
    std::process::exit(imp::end_session(pid, logoff));
}

fn fail(code: i32, text: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "end-session: {text}");
    std::process::exit(code);
}

#[cfg(windows)]
mod imp {
    use std::io::Write;
    use windows_sys::Win32::Foundation::{HWND, LPARAM};
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        ENDSESSION_LOGOFF, EnumWindows, GetWindowThreadProcessId, SMTO_NORMAL, SendMessageTimeoutW,
        WM_ENDSESSION, WM_QUERYENDSESSION,
    };
    use windows_sys::core::BOOL;

    struct Search {
        pid: u32,
        found: Vec<HWND>,
    }

    unsafe extern "system" fn each(window: HWND, search: LPARAM) -> BOOL {
        // SAFETY: `search` is the &mut Search passed to EnumWindows, alive during it.
        let search = unsafe { &mut *(search as *mut Search) };
        let mut pid = 0;
        // SAFETY: a window handle from EnumWindows and an out-pointer to a local.
        unsafe { GetWindowThreadProcessId(window, &mut pid) };
        if pid == search.pid {
            search.found.push(window);
        }
        1
    }

    pub(super) fn end_session(pid: u32, logoff: bool) -> i32 {
        let mut search = Search {
            pid,
            found: Vec::new(),
        };
        // SAFETY: the callback only uses the Search it is given, which outlives the call.
        unsafe { EnumWindows(Some(each), &mut search as *mut Search as LPARAM) };
        say(&format!("windows {}", search.found.len()));
        if search.found.is_empty() {
            return 1;
        }
        let lparam = if logoff {
            ENDSESSION_LOGOFF as LPARAM
        } else {
            0
        };
        for &window in &search.found {
            let mut answer = 0;
            // SAFETY: a window of the target process; an out-pointer to a local.
            unsafe {
                SendMessageTimeoutW(
                    window,
                    WM_QUERYENDSESSION,
                    0,
                    lparam,
                    SMTO_NORMAL,
                    5_000,
                    &mut answer,
                )
            };
            say(&format!("query {window:?} answer {answer}"));
        }
        for &window in &search.found {
            let mut answer = 0;
            // SAFETY: as above. The window may keep the session for as long as its
            // stop takes: a minute bounds the wait.
            unsafe {
                SendMessageTimeoutW(
                    window,
                    WM_ENDSESSION,
                    1,
                    lparam,
                    SMTO_NORMAL,
                    60_000,
                    &mut answer,
                )
            };
            say(&format!("ended {window:?}"));
        }
        0
    }

    fn say(line: &str) {
        let _ = writeln!(std::io::stdout(), "{line}");
    }
}

#[cfg(not(windows))]
mod imp {
    pub(super) fn end_session(_pid: u32, _logoff: bool) -> i32 {
        super::fail(2, "sessions end this way on Windows only");
    }
}
