//! Starting a managed process bound to its launcher, asking it to stop, forcing it.
//!
//! The child must not outlive its lock holder (DESIGN.md, "Who holds a managed
//! process's lock"): on Linux it gets its own process group and a parent-death signal;
//! on Windows its own process group (so CTRL_BREAK can reach it alone) and a Job Object
//! that kills it when the launcher's handle closes, including on a crash. A child that
//! cannot be bound is killed and reaped before the start is reported as failed: an
//! unbound bot would outlive us and trade beside the next one.
//!
//! A forced stop goes through the binding (DESIGN.md rule 10), never a pid walk:
//! `killpg` of the child's group on Linux, `TerminateJobObject` on Windows. Every
//! signal is sent under the [`Slot`]'s lock, and the waiting thread empties the slot
//! before it reaps the child, so no signal can reach a pid that was reused.
//! This is the only platform code of `master-launch`.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};

use lockcore::{ProcessIdentity, ProcessProbe};

/// The one running child of a lock holder, shared by the thread that waits for it and
/// the threads that stop it.
#[derive(Debug, Default)]
pub struct Slot(Mutex<Option<Entry>>);

#[derive(Debug)]
struct Entry {
    identity: ProcessIdentity,
    binding: imp::Binding,
}

impl Slot {
    fn entry(&self) -> MutexGuard<'_, Option<Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `command` bound to this process, into the slot, unless `cancelled`
    /// (checked under the slot's lock: a stop can never miss a child being started).
    /// `Ok(None)`: cancelled, nothing started.
    pub fn spawn(
        &self,
        command: &mut Command,
        cancelled: impl Fn() -> bool,
        probe: &mut ProcessProbe,
    ) -> io::Result<Option<Child>> {
        let mut entry = self.entry();
        if cancelled() {
            return Ok(None);
        }
        let (child, binding) = spawn_bound(command, imp::bind)?;
        let pid = child.id();
        // The child is ours and unreaped: its pid cannot be reused. If it has already
        // exited there is no start time to read; `now` stands in (only logs use it).
        let identity = probe.identity(pid).unwrap_or(ProcessIdentity {
            pid,
            start_time: lockcore::process::now_secs(),
        });
        *entry = Some(Entry { identity, binding });
        Ok(Some(child))
    }

    /// The running child, if any.
    pub fn identity(&self) -> Option<ProcessIdentity> {
        self.entry().as_ref().map(|e| e.identity)
    }

    /// Asks the running child to stop (SIGTERM to its group / CTRL_BREAK).
    pub fn ask_to_stop(&self) -> Option<ProcessIdentity> {
        let entry = self.entry();
        let entry = entry.as_ref()?;
        let _ = imp::ask_to_stop(entry.identity.pid);
        Some(entry.identity)
    }

    /// Kills the running child and everything bound with it.
    pub fn force(&self) -> Option<ProcessIdentity> {
        let entry = self.entry();
        let entry = entry.as_ref()?;
        let _ = entry.binding.kill();
        Some(entry.identity)
    }

    /// Waits for the child to exit, empties the slot, then reaps it. The binding is
    /// released on return: on Windows closing the job kills what the child left behind.
    pub fn wait(&self, child: &mut Child) -> io::Result<ExitStatus> {
        // Blocks until the child has exited, without reaping it (its pid stays taken).
        let observed = imp::wait_exited(child);
        // From here on no signal can be sent to the child's pid.
        let _binding = self.entry().take();
        observed?;
        child.wait()
    }
}

/// Spawns `command` and binds it; a child that cannot be bound is killed with
/// everything it started, and reaped, before the error is returned.
fn spawn_bound(
    command: &mut Command,
    bind: impl FnOnce(&Child) -> io::Result<imp::Binding>,
) -> io::Result<(Child, imp::Binding)> {
    imp::prepare(command);
    let mut child = command.spawn()?;
    match bind(&child) {
        Ok(binding) => Ok((child, binding)),
        Err(error) => {
            imp::kill_unbound(&mut child);
            let _ = child.wait();
            Err(io::Error::new(
                error.kind(),
                format!("cannot bind the child to master-launch, so it was stopped: {error}"),
            ))
        }
    }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;

    /// The child's process group; its leader is the child (pgid = pid).
    #[derive(Debug)]
    pub struct Binding {
        group: Pid,
    }

    impl Binding {
        /// SIGKILL to the group. Safe from reuse: it is only called while the leader is
        /// our unreaped child (see [`Slot`]), and a group id is never reused while its
        /// leader's pid is taken.
        pub fn kill(&self) -> io::Result<()> {
            killpg(self.group, Signal::SIGKILL).map_err(io::Error::from)
        }
    }

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

    /// The binding was made before exec (group, pdeathsig); here it is only named.
    pub(super) fn bind(child: &Child) -> io::Result<Binding> {
        let group = i32::try_from(child.id()).map_err(io::Error::other)?;
        Ok(Binding {
            group: Pid::from_raw(group),
        })
    }

    /// The child leads its own group (set before exec), so the group holds all it
    /// started; the child is unreaped, so the group id is still its own.
    pub(super) fn kill_unbound(child: &mut Child) {
        if let Ok(group) = i32::try_from(child.id()) {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
        let _ = child.kill();
    }

    /// SIGTERM to the child's process group.
    pub fn ask_to_stop(pid: u32) -> io::Result<()> {
        let group = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
        killpg(group, Signal::SIGTERM).map_err(io::Error::from)
    }

    /// Blocks until the child has exited, without reaping it (`WNOWAIT`), so its pid
    /// stays taken until the slot is empty.
    #[cfg(target_os = "linux")]
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

    /// Other Unixes (not a platform of the desk, and not built by CI): nix has no
    /// `waitid` there; poll `waitpid(WNOHANG | WNOWAIT)` instead. Where the platform
    /// refuses that, give up waiting here and let `Child::wait` block and reap.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn wait_exited(child: &Child) -> io::Result<()> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT)) {
                Ok(WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(nix::errno::Errno::EINTR) => {}
                _ => return Ok(()),
            }
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::os::windows::io::AsRawHandle;
    use std::os::windows::process::CommandExt;
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE, WAIT_FAILED};
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
    };
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
        SetInformationJobObject, TerminateJobObject,
    };
    use windows_sys::Win32::System::Threading::{
        CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, CREATE_SUSPENDED, INFINITE, OpenThread,
        ResumeThread, THREAD_SUSPEND_RESUME, WaitForSingleObject,
    };

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

    impl Binding {
        /// Ends every process in the job: the child and all it started.
        pub fn kill(&self) -> io::Result<()> {
            // SAFETY: a job handle we own; exit code 1 for every process in it.
            if unsafe { TerminateJobObject(self.0, 1) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    pub(super) fn prepare(command: &mut Command) {
        // Its own group: CTRL_BREAK can be sent to it alone. Its own console, without
        // a window: closing master-launch's window must not reach the bots directly,
        // or they all die at once, out of order (signals.rs stops them in order).
        // Suspended: it runs no instruction, and so starts no grandchild, before it is
        // in its job (the way process-wrap's JobObject wrapper does it). std keeps the
        // flags it adds itself.
        command.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW | CREATE_SUSPENDED);
    }

    /// Creates the job, puts the suspended child in it, then lets the child run.
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
        resume(child.id())?;
        Ok(binding)
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

    /// Suspended, it has started nothing: ending it alone is enough.
    pub(super) fn kill_unbound(child: &mut Child) {
        let _ = child.kill();
    }

    /// CTRL_BREAK to the child's process group. The child is on a console of its own,
    /// and only a process attached to it can send the event: lockcore's console helper
    /// (master-launch started again with a hidden argument) attaches and sends it.
    pub fn ask_to_stop(pid: u32) -> io::Result<()> {
        match lockcore::graceful::ask_to_stop(pid) {
            lockcore::graceful::Asked::Nothing(why) => Err(io::Error::other(why)),
            _ => Ok(()),
        }
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A binding that fails leaves nothing behind: the child and a grandchild it
    /// started at once are both killed, and the child is reaped.
    #[test]
    fn a_child_that_cannot_be_bound_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().expect("temp dir");
        let grandchild_file = dir.path().join("grandchild.pid");
        let script = format!(
            "sleep 300 & echo $! > {}; sleep 300",
            grandchild_file.display()
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(&script);
        let result = spawn_bound(&mut command, |child| {
            // Let the child start its grandchild first, then refuse.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_to_string(&grandchild_file).map_or(true, |t| t.trim().is_empty()) {
                assert!(std::time::Instant::now() < deadline, "no grandchild");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = child;
            Err(io::Error::other("binding refused (test)"))
        });
        let error = result.expect_err("the binding failed");
        assert!(error.to_string().contains("cannot bind"), "{error}");
        let grandchild: u32 = std::fs::read_to_string(&grandchild_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid");
        let mut probe = ProcessProbe::new().expect("probe");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while probe.identity(grandchild).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} survived a failed binding"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
