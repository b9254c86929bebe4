//! Starting a managed process bound to its launcher, and asking it to stop.
//!
//! The child must not outlive its lock holder (DESIGN.md, "Who holds a managed
//! process's lock"): on Linux it gets its own process group and a parent-death signal;
//! on Windows it gets its own process group (so CTRL_BREAK can reach it alone) and a
//! Job Object that kills it when the launcher's handle closes, including on a crash.
//! This is the only platform code of `master-launch`.

use std::io;
use std::process::{Child, Command};

pub use imp::{Binding, ask_to_stop};

/// Spawns `command` bound to this process. Keep the returned [`Binding`] for as long
/// as the child may run.
pub fn spawn_bound(command: &mut Command) -> io::Result<(Child, Binding)> {
    imp::prepare(command);
    let child = command.spawn()?;
    let binding = imp::bind(&child)?;
    Ok((child, binding))
}

#[cfg(unix)]
mod imp {
    use super::*;
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;

    /// Nothing to hold on Unix: the binding lives in the child (pdeathsig).
    #[derive(Debug)]
    pub struct Binding;

    pub(super) fn prepare(command: &mut Command) {
        // Its own group: a stop signal reaches the bot and its children, and a
        // terminal's Ctrl+C reaches only the launcher, which stops things in order.
        command.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let launcher = nix::unistd::getpid();
            // SAFETY: the closure runs between fork and exec and only makes two
            // async-signal-safe system calls (prctl, getppid).
            unsafe {
                command.pre_exec(move || {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                    // The launcher may have died before prctl took effect.
                    if nix::unistd::getppid() != launcher {
                        return Err(io::Error::other("the launcher exited during start"));
                    }
                    Ok(())
                });
            }
        }
    }

    pub(super) fn bind(_child: &Child) -> io::Result<Binding> {
        Ok(Binding)
    }

    /// SIGTERM to the child's process group.
    pub fn ask_to_stop(pid: u32) -> io::Result<()> {
        let group = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
        killpg(group, Signal::SIGTERM).map_err(io::Error::from)
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::os::windows::io::AsRawHandle;
    use std::os::windows::process::CommandExt;
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
        SetInformationJobObject,
    };
    use windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP;

    /// A Job Object with kill-on-close; the child dies when this is dropped or when
    /// the launcher dies (the OS closes the handle).
    #[derive(Debug)]
    pub struct Binding(HANDLE);

    // SAFETY: a job handle may be used and closed from any thread.
    unsafe impl Send for Binding {}

    impl Drop for Binding {
        fn drop(&mut self) {
            // SAFETY: the handle came from CreateJobObjectW and is closed once.
            unsafe { CloseHandle(self.0) };
        }
    }

    pub(super) fn prepare(command: &mut Command) {
        // Its own group: CTRL_BREAK can be sent to it alone.
        command.creation_flags(CREATE_NEW_PROCESS_GROUP);
    }

    pub(super) fn bind(child: &Child) -> io::Result<Binding> {
        // SAFETY: null attributes and name are allowed; the handle is owned by Binding.
        let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if job.is_null() {
            return Err(io::Error::last_os_error());
        }
        let binding = Binding(job);
        // SAFETY: plain data; all-zero is a valid "no limits" value.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `limits` is the struct the information class names, with its size.
        let ok = unsafe {
            SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                (&raw const limits).cast(),
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both handles are valid for the duration of the call.
        if unsafe { AssignProcessToJobObject(job, child.as_raw_handle()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(binding)
    }

    /// CTRL_BREAK to the child's process group. Only a process attached to the same
    /// console can send it, which is why the lock holder does the graceful part.
    pub fn ask_to_stop(pid: u32) -> io::Result<()> {
        // SAFETY: no pointers; a stale pid only makes the call fail.
        if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
