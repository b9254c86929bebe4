//! Windows: a Job Object with kill-on-close, and starting a process inside one before it
//! runs a single instruction. master-launch binds each bot with it (`child.rs`), and
//! the console helper of [`crate::graceful`] is bound to its caller with it.

use std::io;
use std::os::windows::io::AsRawHandle;
use std::os::windows::process::CommandExt;
use std::process::{Child, Command};

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JobObjectBasicAccountingInformation, JobObjectExtendedLimitInformation,
    QueryInformationJobObject, SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_SUSPENDED, OpenThread, ResumeThread, THREAD_SUSPEND_RESUME,
};

/// A Job Object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`: every process in it is
/// terminated when the last handle to the job is closed, so when this is dropped or
/// when its owner dies, since the system then closes the owner's handles
/// ("JOBOBJECT_BASIC_LIMIT_INFORMATION", Microsoft Learn). Nothing may break away: without
/// `JOB_OBJECT_LIMIT_BREAKAWAY_OK` a `CreateProcess` with `CREATE_BREAKAWAY_FROM_JOB`
/// inside the job fails with access denied ("Job Objects", Microsoft Learn).
#[derive(Debug)]
pub struct Job(HANDLE);

// SAFETY: a job handle may be used and closed from any thread.
unsafe impl Send for Job {}
// SAFETY: the calls made through `&Job` are thread-safe kernel calls.
unsafe impl Sync for Job {}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateJobObjectW and is closed once.
        unsafe { CloseHandle(self.0) };
    }
}

impl Job {
    /// A new, empty kill-on-close job.
    pub fn kill_on_close() -> io::Result<Job> {
        // SAFETY: null attributes and name are allowed; the handle is owned by Job.
        let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if job.is_null() {
            return Err(io::Error::last_os_error());
        }
        let job = Job(job);
        // SAFETY: plain data; all-zero is a valid "no limits" value.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `limits` is the struct the information class names, with its size.
        let ok = unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                (&raw const limits).cast(),
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(job)
    }

    /// Ends every process in the job (TerminateJobObject only starts the ends).
    pub fn terminate(&self) -> io::Result<()> {
        // SAFETY: a job handle we own; exit code 1 for every process in it.
        if unsafe { TerminateJobObject(self.0, 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Processes in the job now (JOBOBJECT_BASIC_ACCOUNTING_INFORMATION's
    /// ActiveProcesses); 0 when it cannot be read.
    pub fn active_processes(&self) -> usize {
        // SAFETY: plain data, filled by the call.
        let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is the struct the information class names, with its size.
        let ok = unsafe {
            QueryInformationJobObject(
                self.0,
                JobObjectBasicAccountingInformation,
                (&raw mut info).cast(),
                size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            0
        } else {
            info.ActiveProcesses as usize
        }
    }
}

/// Starts `command` suspended with `flags` (and `CREATE_SUSPENDED`), puts it in a new
/// kill-on-close job, then lets it run: it runs no instruction, and so starts no
/// grandchild, before it is in the job (the way process-wrap's JobObject wrapper does
/// it). A process that cannot be bound is killed (suspended, it started nothing) and
/// reaped before the error is returned.
pub fn spawn_in_job(command: &mut Command, flags: u32) -> io::Result<(Child, Job)> {
    // std keeps the flags it adds itself (CREATE_UNICODE_ENVIRONMENT).
    command.creation_flags(flags | CREATE_SUSPENDED);
    let mut child = command.spawn()?;
    let bound = Job::kill_on_close().and_then(|job| {
        // SAFETY: both handles are valid for the duration of the call.
        if unsafe { AssignProcessToJobObject(job.0, child.as_raw_handle()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        resume(child.id())?;
        Ok(job)
    });
    match bound {
        Ok(job) => Ok((child, job)),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(error)
        }
    }
}

/// Resumes the threads of a process started suspended (its one, main thread).
/// std does not hand out the thread handle, so find it with a ToolHelp snapshot.
fn resume(pid: u32) -> io::Result<()> {
    // SAFETY: a snapshot of all threads; closed below.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain data; dwSize must be set before the first call.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = size_of::<THREADENTRY32>() as u32;
    let mut resumed = 0;
    // SAFETY: a valid snapshot and a correctly sized entry, for each call.
    let mut more = unsafe { Thread32First(snapshot, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: opening a thread by id; the handle is closed at once.
            let thread = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) };
            if !thread.is_null() {
                // SAFETY: a thread handle with THREAD_SUSPEND_RESUME access.
                if unsafe { ResumeThread(thread) } != u32::MAX {
                    resumed += 1;
                }
                // SAFETY: closing the handle opened above.
                unsafe { CloseHandle(thread) };
            }
        }
        // SAFETY: as above.
        more = unsafe { Thread32Next(snapshot, &mut entry) } != 0;
    }
    // SAFETY: closing the snapshot handle.
    unsafe { CloseHandle(snapshot) };
    if resumed == 0 {
        return Err(io::Error::other("could not resume the child's main thread"));
    }
    Ok(())
}
