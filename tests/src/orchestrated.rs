//! Helpers for tests of a desk under a running orchestrator (`tests/tests/control*.rs`):
//! running `master-launch` and `check-procs --json` against a [`Desk`], and reading
//! what they did.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lockcore::DeskSnapshot;
use lockcore::StopRequest;
use lockcore::control::{DeskState, Supervision};

use crate::{Desk, Lines, Running, start_master_launch, tool, wait_until, wine};

/// Short stops (Wine never delivers CTRL_BREAK: every stop there is forced at the
/// timeout) and quick give-ups.
pub const QUICK: &str = "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 2\n";
/// [`QUICK`], restarting after any exit: Wine's `taskkill /F` leaves exit code 0, which
/// `on-failure` would take for a clean exit.
pub const QUICK_ALWAYS: &str =
    "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 2\nrestart = \"always\"\n";

/// `master-launch --config <the desk's> ARGS`, run to its end.
pub fn master_launch(desk: &Desk, args: &[&str]) -> Output {
    let mut command = Command::new(tool("master-launch", "master-launch"));
    command.arg("--config").arg(desk.config()).args(args);
    wine::output(&mut command).unwrap_or_else(|e| panic!("run master-launch: {e}"))
}

/// `check-procs --json`: its exit code and document.
pub fn check_procs_json(desk: &Desk) -> (i32, serde_json::Value) {
    let mut command = Command::new(tool("check-procs", "check-procs"));
    command.arg("--config").arg(desk.config()).arg("--json");
    let output = wine::output(&mut command).unwrap_or_else(|e| panic!("run check-procs: {e}"));
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "check-procs --json: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output.status.code().unwrap_or(-1), json)
}

/// The `components[]` entry of `name` in a check-procs document.
pub fn component<'j>(json: &'j serde_json::Value, name: &str) -> &'j serde_json::Value {
    json["components"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {json}"))
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The orchestrator, started; waits for "desk started".
pub fn launch(desk: &Desk, extra: &[&str]) -> (Running, Lines) {
    let (running, lines) = start_master_launch(&desk.config(), extra);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(30))
            .is_some(),
        "master-launch did not start the desk: {}",
        desk.master_log()
    );
    (running, lines)
}

/// Waits for `child` to end, at most `limit`; its exit code.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration, what: &str) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap_or(None) {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "{what} did not end in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stop-all request, then master-launch's exit code.
pub fn stop_desk(desk: &Desk, mut running: Running) -> i32 {
    StopRequest::new("MASTER_LAUNCH", Duration::from_secs(5))
        .write(&desk.lock_dir())
        .unwrap_or_else(|e| panic!("write the stop-all request: {e}"));
    wait_exit(&mut running.child, Duration::from_secs(60), "master-launch")
}

/// The pid of the bot the lock of `name` records, if it runs.
pub fn managed_pid(snapshot: &DeskSnapshot, name: &str) -> Option<u32> {
    snapshot
        .component(name)
        .and_then(|v| v.managed.as_ref())
        .map(|p| p.pid)
}

/// The pid of the process holding the lock of `name` (a launcher).
pub fn holder_pid(snapshot: &DeskSnapshot, name: &str) -> Option<u32> {
    snapshot
        .component(name)?
        .lock
        .as_ref()?
        .record
        .as_ref()?
        .holder_pid
}

/// How many copies of `name` run.
pub fn copies(snapshot: &DeskSnapshot, name: &str) -> usize {
    snapshot.component(name).map_or(0, |v| v.copies.len())
}

/// Waits until `name` runs under its lock, supervised by `orchestrator`; its pid.
pub fn wait_supervised(desk: &Desk, name: &str, orchestrator: u32) -> u32 {
    let mut pid = 0;
    wait_until(&format!("{name} to run under master-launch"), || {
        let snapshot = desk.snapshot();
        match managed_pid(&snapshot, name) {
            Some(managed) if copies(&snapshot, name) == 1 => {
                pid = managed;
                holder_pid(&snapshot, name) == Some(orchestrator)
            }
            _ => false,
        }
    });
    // The lock record names the child a moment before the log says it started.
    let started = format!("{name}: started, pid {pid}");
    wait_until(&format!("the log to say `{started}`"), || {
        desk.master_log().contains(&started)
    });
    pid
}

/// The position of the first occurrence of `needle` in the master log after `from`,
/// once it is there (a supervisor logs a start just after recording it).
pub fn wait_logged(desk: &Desk, needle: &str, from: usize) -> usize {
    let mut at = 0;
    wait_until(&format!("the log to say `{needle}`"), || {
        log_position(&desk.master_log(), needle, from)
            .map(|i| at = i)
            .is_some()
    });
    at
}

/// The position of the first occurrence of `needle` in the log after `from`.
pub fn log_position(log: &str, needle: &str, from: usize) -> Option<usize> {
    log.get(from..)?.find(needle).map(|i| i + from)
}

/// The published view's state of `name`.
pub fn view_state(desk: &Desk, name: &str) -> Option<Supervision> {
    let view = DeskState::read(&desk.lock_dir())?.ok()?;
    view.component(name).map(|c| c.state)
}

/// The identity of a process that has just ended (a requester that died).
pub fn ended_identity() -> lockcore::ProcessIdentity {
    let mut gone = Command::new(crate::stand_in())
        .args(["gone", "--exit-after-ms", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn a stand-in: {e}"));
    let identity = lockcore::ProcessProbe::new()
        .ok()
        .and_then(|mut probe| probe.identity(gone.id()))
        .unwrap_or(lockcore::ProcessIdentity {
            pid: gone.id(),
            start_time: 1,
        });
    let _ = gone.wait();
    identity
}
