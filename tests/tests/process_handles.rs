//! Issue #26: a process is reached through what names it for certain, and a tool's own
//! handles do not leak into what it starts.
//!
//! - A forced kill with a recorded start time that is not the process's refuses, and
//!   the process runs on; with the right one it kills (Linux and Windows; on Windows
//!   through one process handle whose creation time is checked).
//! - Windows: standard handles marked not inheritable (what master-launch does first
//!   thing) reach no child: the reader of such a pipe sees its end while a child runs.
//! - Windows: the user's SID comes from the process token (the autostart task's UserId).

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::{tool, wait_until};
use lockcore::process::{KillRefused, kill_exact};
use lockcore::{ProcessIdentity, ProcessProbe};

/// A stand-in bot named after this test process, running until killed.
fn stand_in(label: &str) -> Child {
    fleet_tests::wine::spawn(
        Command::new(tool("fleet-tests", "stand-in"))
            .arg(format!("HANDLES_{label}_{}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap()
}

/// One test at a time: the Windows test changes this process's standard error, and a
/// process another test started meanwhile would inherit it.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills `child` (through std, not the code under test) if it still runs, and reaps it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_kill_with_a_wrong_recorded_start_time_refuses_and_the_process_runs_on() {
    let _one = one_at_a_time();
    let mut bot = Reaped(stand_in("KILL"));
    let pid = bot.0.id();
    let mut probe = ProcessProbe::new().unwrap();
    let mut found = None;
    wait_until("the stand-in is in the process table", || {
        found = probe.identity(pid);
        found.is_some()
    });
    let real = found.unwrap();
    for wrong in [real.start_time - 3600, real.start_time + 7200] {
        let recorded = ProcessIdentity {
            pid,
            start_time: wrong,
        };
        assert_eq!(kill_exact(recorded), Err(KillRefused::Reused));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bot.0.try_wait().unwrap().is_none(),
        "a kill that refused must not have ended the process"
    );
    assert_eq!(kill_exact(real), Ok(()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while bot.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "still running 10 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(windows)]
mod windows {
    use super::*;
    use std::io::Read;
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};
    use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE, SetStdHandle};

    /// Whether the reader of a pipe sees its end within `within` (a read returning 0).
    fn sees_end(mut reader: std::io::PipeReader, within: Duration) -> bool {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 64];
            let _ = sender.send(matches!(reader.read(&mut buffer), Ok(0)));
        });
        receiver.recv_timeout(within).unwrap_or(false)
    }

    /// Makes the write end of a new pipe this process's (inheritable) standard error,
    /// runs `before_spawn`, restores the standard error, starts a stand-in with
    /// nothing of ours given on purpose, closes our write end and says whether the
    /// reader then sees the pipe's end while the stand-in still runs.
    fn pipe_end_seen_with_a_child_running(before_spawn: fn()) -> bool {
        let (reader, writer) = std::io::pipe().unwrap();
        let raw = writer.as_raw_handle();
        // SAFETY: our own handles; the original standard error is put back below.
        let original = unsafe { GetStdHandle(STD_ERROR_HANDLE) };
        unsafe {
            SetHandleInformation(raw, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
            SetStdHandle(STD_ERROR_HANDLE, raw);
        }
        before_spawn();
        let bot = Reaped(stand_in("INHERIT"));
        // SAFETY: as above.
        unsafe { SetStdHandle(STD_ERROR_HANDLE, original) };
        drop(writer);
        let seen = sees_end(reader, Duration::from_secs(3));
        let mut bot = bot;
        assert!(
            bot.0.try_wait().unwrap().is_none(),
            "the stand-in must still run while the pipe is read"
        );
        seen
    }

    /// master-launch calls `std_handles_not_inherited` first thing (issue #26): a bot
    /// then holds no end of a pipe master-launch's output goes to. The control run
    /// (nothing marked) shows that Windows' blanket inheritance would give it one.
    #[test]
    fn standard_handles_marked_not_inheritable_reach_no_child() {
        let _one = one_at_a_time();
        assert!(pipe_end_seen_with_a_child_running(
            lockcore::win_handle::std_handles_not_inherited
        ));
        assert!(
            !pipe_end_seen_with_a_child_running(|| {}),
            "the control: an inheritable standard handle reaches the child"
        );
    }

    /// The console helper (master-launch started again with a hidden argument) re-checks
    /// its target's creation time, through a handle it holds, before it attaches to its
    /// console: a recorded start time that is not the process's gets exit code 7 ("its
    /// pid now belongs to another process", lockcore::graceful) and nothing is sent.
    #[test]
    fn the_console_helper_refuses_a_pid_whose_start_time_is_not_the_recorded_one() {
        let _one = one_at_a_time();
        let mut bot = Reaped(stand_in("HELPER"));
        let pid = bot.0.id();
        let mut probe = ProcessProbe::new().unwrap();
        let mut found = None;
        wait_until("the stand-in is in the process table", || {
            found = probe.identity(pid);
            found.is_some()
        });
        let wrong = found.unwrap().start_time - 3600;
        let status = fleet_tests::wine::status(
            Command::new(tool("master-launch", "master-launch"))
                .arg(lockcore::graceful::CONSOLE_HELPER_ARG)
                .arg(pid.to_string())
                .arg(wrong.to_string())
                .arg("own-child")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        assert_eq!(status.code(), Some(7));
        std::thread::sleep(Duration::from_millis(300));
        assert!(bot.0.try_wait().unwrap().is_none());
    }

    #[test]
    fn the_users_sid_comes_from_the_process_token() {
        let sid = lockcore::win_token::user_sid().unwrap();
        assert!(sid.starts_with("S-1-5-"), "{sid}");
        assert!(
            sid.split('-')
                .skip(1)
                .all(|part| part.parse::<u64>().is_ok()),
            "{sid}"
        );
    }
}
