//! Windows: a process reached through a handle, never through a bare pid, and this
//! process's own handles kept from its children.
//!
//! A pid names a process only while it runs; once it has exited and the last handle to
//! it is closed, the pid can be given to a new process. An open handle keeps the
//! process object, and so its pid, from being reused ("Process Handles and
//! Identifiers", Microsoft Learn: "the identifier is valid ... until all handles to the
//! process have been closed"). So: open a handle, check that the process behind it
//! started when the recorded one did, then act on that handle.

use std::io;

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, FILETIME, GetLastError, HANDLE,
    HANDLE_FLAG_INHERIT, SetHandleInformation,
};
use windows_sys::Win32::System::Console::{
    GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};
use windows_sys::Win32::System::Threading::{
    GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_TERMINATE,
    TerminateProcess,
};

/// An open handle to a process; closed on drop.
#[derive(Debug)]
pub struct Process(HANDLE);

// SAFETY: a process handle may be used and closed from any thread.
unsafe impl Send for Process {}

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: opened by OpenProcess below and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// Why a process could not be opened.
#[derive(Debug)]
pub enum OpenFailure {
    /// ERROR_ACCESS_DENIED: not ours to open (another user's, or elevated).
    Denied,
    /// ERROR_INVALID_PARAMETER: no process has this pid ("OpenProcess", Microsoft
    /// Learn: a pid of no process fails with this code).
    Gone,
    Other(io::Error),
}

/// Seconds between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
const FILETIME_TO_UNIX_SECS: u64 = 11_644_473_600;

impl Process {
    /// Opens `pid` to read its times and, if `terminate`, to end it.
    pub fn open(pid: u32, terminate: bool) -> Result<Process, OpenFailure> {
        // PROCESS_QUERY_LIMITED_INFORMATION is what GetProcessTimes needs
        // ("GetProcessTimes", Microsoft Learn); PROCESS_TERMINATE what TerminateProcess
        // needs ("TerminateProcess", Microsoft Learn).
        let access =
            PROCESS_QUERY_LIMITED_INFORMATION | if terminate { PROCESS_TERMINATE } else { 0 };
        // SAFETY: no pointers; a null handle is checked below.
        let handle = unsafe { OpenProcess(access, 0, pid) };
        if handle.is_null() {
            // SAFETY: reads this thread's last error.
            return Err(match unsafe { GetLastError() } {
                ERROR_ACCESS_DENIED => OpenFailure::Denied,
                ERROR_INVALID_PARAMETER => OpenFailure::Gone,
                code => OpenFailure::Other(io::Error::from_raw_os_error(code as i32)),
            });
        }
        Ok(Process(handle))
    }

    /// When it started, in whole seconds since the Unix epoch: its creation time
    /// (`GetProcessTimes`' lpCreationTime, a FILETIME: 100 ns units since 1601-01-01,
    /// "FILETIME", Microsoft Learn), the clock sysinfo's start times come from.
    pub fn start_time(&self) -> io::Result<u64> {
        start_time_of(self.0)
    }

    /// TerminateProcess on this handle, exit code 1.
    pub fn terminate(&self) -> io::Result<()> {
        // SAFETY: a handle opened with PROCESS_TERMINATE.
        if unsafe { TerminateProcess(self.0, 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// As [`Process::start_time`], for a process handle the caller holds (a `Child`'s):
/// no new handle is opened, and none is kept.
pub fn start_time_of(handle: HANDLE) -> io::Result<u64> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: a handle with query access and four out-structs.
    let ok = unsafe { GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let ticks = (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime);
    Ok((ticks / 10_000_000).saturating_sub(FILETIME_TO_UNIX_SECS))
}

/// Marks this process's standard handles as not inheritable, so that a child started
/// later gets none of them by the blanket inheritance `CreateProcess` does with
/// `bInheritHandles` (Rust's `Command` always passes TRUE): only the handles std hands
/// it on purpose. std's `Stdio::inherit` still works: it passes a duplicate made
/// inheritable for that one child. `SetHandleInformation` with `HANDLE_FLAG_INHERIT`
/// ("SetHandleInformation", "Handle Inheritance", Microsoft Learn). Without it, a
/// child keeps, say, the write end of the pipe a caller reads this tool's output from,
/// and the caller never sees its end. Best effort: a handle that refuses is left as is.
pub fn std_handles_not_inherited() {
    for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: no pointers; an invalid or null handle is skipped.
        let handle = unsafe { GetStdHandle(which) };
        if !handle.is_null() && handle as isize != -1 {
            // SAFETY: a handle of this process; only its inherit flag changes.
            unsafe { SetHandleInformation(handle, HANDLE_FLAG_INHERIT, 0) };
        }
    }
}
