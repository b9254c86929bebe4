//! The generated `.bat` wrappers run by `cmd.exe`, the way Explorer runs them, from a
//! folder whose path has spaces and parentheses: exit codes come back, the pause shows
//! only when not switched off, and a two-account desk started by `MASTER_LAUNCH.bat`
//! is stopped by `SAFE_SHUTDOWN.bat --yes`; `SAFE_START.bat` starts an empty desk;
//! `INSTALL_AT_LOGON.bat` and
//! `UNINSTALL_AT_LOGON.bat` add and remove the Task Scheduler task. Windows only: the Windows lane runs it
//! under Wine's `cmd.exe`.
#![cfg(windows)]
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::windows::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::{Desk, Running, spawn_reader, tool, unique, wait_gone, wait_until};

/// `cargo xtask dist` of the tools under test into `<desk>\Program Files (x86)\`, with
/// the bundle's `fleet.toml` pointed at the desk's lock and log folders.
fn bundle(desk: &Desk) -> PathBuf {
    bundle_in(desk, "Program Files (x86)")
}

/// As [`bundle`], into `<desk>\<parent>\`.
fn bundle_in(desk: &Desk, parent: &str) -> PathBuf {
    for package in ["master-launch", "safe-shutdown", "check-procs", "lock-gc"] {
        tool(package, package);
    }
    let bins = tool("master-launch", "master-launch")
        .parent()
        .unwrap()
        .to_path_buf();
    let out = desk.dir.path().join(parent);
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dist", "--target", "x86_64-pc-windows-gnu", "--prebuilt"])
        .arg(&bins)
        .arg("--config")
        .arg(desk.config())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let folder = out.join(format!(
        "desk-tools-{}-x86_64-pc-windows-gnu",
        env!("CARGO_PKG_VERSION")
    ));
    let text = std::fs::read_to_string(desk.config())
        .unwrap()
        .replace(
            "lock_dir = \".locks\"",
            &format!("lock_dir = '{}'", desk.lock_dir().display()),
        )
        .replace(
            "log_dir = \"logs\"",
            &format!("log_dir = '{}'", desk.dir.path().join("logs").display()),
        );
    std::fs::write(folder.join("fleet.toml"), text).unwrap();
    folder
}

/// `cmd /c ""<bat>" <args>"`: Explorer's quoting, which keeps a path with spaces and
/// parentheses whole (`cmd /c "<bat>" <args>` would not).
fn cmd(bat: &Path, args: &str) -> Command {
    let mut command = Command::new("cmd");
    command
        .raw_arg(format!("/c \"\"{}\" {args}\"", bat.display()))
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end (two minutes at most) and returns its exit code and output.
/// The output goes through a file, not a pipe: under Wine a process that `cmd` starts
/// on the side (the desktop process, `explorer.exe`) can inherit a pipe and hold it
/// open for good, and a reader waiting for the pipe's end would wait forever.
fn run(command: &mut Command) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdout.txt");
    let mut child = command
        .stdout(std::fs::File::create(&path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{command:?} did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read(&path).unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output).into_owned(),
    )
}

#[test]
fn wrappers_pass_exit_codes_on_and_pause_only_when_not_switched_off() {
    let desk = Desk::new(&*unique("qs_batcodes"), &[&*unique("BATCODES")]);
    let folder = bundle(&desk);
    let (code, out) = run(cmd(&folder.join("LOCK_GC.bat"), "--bogus").env_remove("DESK_NO_PAUSE"));
    assert_eq!(code, 2, "{out}");
    // Started like a double-click (cmd's command line names the file): it pauses.
    assert!(out.contains("Press any key"), "{out}");
    let (code, out) = run(cmd(&folder.join("LOCK_GC.bat"), "--bogus").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 2, "{out}");
    assert!(!out.contains("Press any key"), "{out}");
    let (code, out) = run(cmd(&folder.join("CHECK_PROCS.bat"), "--json").env("DESK_NO_PAUSE", "1"));
    // Nothing runs: every component is reported stopped, which is healthy.
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["healthy"], true, "{json}");
}

/// A `!` in the install folder survives: cmd's delayed expansion would eat it.
#[test]
fn wrappers_run_from_a_folder_with_a_bang_in_its_name() {
    let desk = Desk::new(&*unique("qs_batbang"), &[&*unique("BATBANG")]);
    let folder = bundle_in(&desk, "bang!desk");
    let (code, out) =
        run(cmd(&folder.join("CHECK_PROCS.bat"), "--version").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("check-procs"), "{out}");
    let (code, out) = run(cmd(&folder.join("CHECK_PROCS.bat"), "--json").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
}

/// Started through a quoted relative path from the folder above (`cmd /c
/// ""bundle\CHECK_PROCS.bat" --json"`): `%~dp0` read after the wrapper's `cd` would
/// name `bundle\bundle\`; the wrapper keeps its folder before it moves.
#[test]
fn a_wrapper_started_through_a_relative_path_finds_its_tools() {
    let desk = Desk::new(&*unique("qs_batrel"), &[&*unique("BATREL")]);
    let folder = bundle(&desk);
    let parent = folder.parent().unwrap();
    let relative = Path::new(folder.file_name().unwrap()).join("CHECK_PROCS.bat");
    let (code, out) = run(cmd(&relative, "--json")
        .current_dir(parent)
        .env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["healthy"], true, "{json}");
}

#[test]
fn master_launch_bat_starts_a_two_account_desk_and_safe_shutdown_bat_stops_it() {
    // Wine does not deliver CTRL_BREAK: a short stop timeout forces the bots soon.
    let desk = Desk::with_options(
        &*unique("qs_batdesk"),
        &[&*unique("BATDESK1"), &*unique("BATDESK2")],
        &[],
        "[defaults]\nstop_timeout_secs = 2\n",
    );
    let folder = bundle(&desk);
    let mut child = cmd(&folder.join("MASTER_LAUNCH.bat"), "")
        .env("DESK_NO_PAUSE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = spawn_reader(child.stdout.take().unwrap());
    let mut launcher = Running::new(child);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(60))
            .is_some()
    );
    desk.wait_until_running();
    let expected = desk.component_names().len();
    let pids = fleet_tests::managed_pids(
        &desk.snapshot(),
        &desk
            .component_names()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );

    let (code, out) = run(cmd(&folder.join("CHECK_PROCS.bat"), "--json").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["healthy"], true, "{json}");
    assert_eq!(
        json["processes"].as_array().unwrap().len(),
        expected,
        "{json}"
    );

    let (code, out) =
        run(cmd(&folder.join("SAFE_SHUTDOWN.bat"), "--yes --timeout 2").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    wait_gone(&pids);
    desk.assert_no_lock_left("after SAFE_SHUTDOWN.bat");
    // MASTER_LAUNCH.bat hands master-launch's exit code (0: stopped on request) back.
    let mut status = None;
    wait_until("MASTER_LAUNCH.bat to exit", || {
        status = launcher.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
}

/// `SAFE_START.bat` on an empty desk starts it at once (nothing to stop, nothing asked),
/// through `cmd /c` with `DESK_NO_PAUSE=1`; `SAFE_SHUTDOWN.bat --yes` stops it.
#[test]
fn safe_start_bat_on_an_empty_desk_starts_the_desk() {
    // Wine does not deliver CTRL_BREAK: a short stop timeout forces the bots soon.
    let desk = Desk::with_options(
        &*unique("qs_batsafestart"),
        &[&*unique("BATSAFE1")],
        &[],
        "[defaults]\nstop_timeout_secs = 2\n",
    );
    let folder = bundle(&desk);
    let mut child = cmd(&folder.join("SAFE_START.bat"), "")
        .env("DESK_NO_PAUSE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = spawn_reader(child.stdout.take().unwrap());
    let mut launcher = Running::new(child);
    assert!(
        lines
            .wait_for(
                "Nothing of the desk runs here: starting it.",
                Duration::from_secs(60)
            )
            .is_some()
    );
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(60))
            .is_some()
    );
    desk.wait_until_running();
    let pids = fleet_tests::managed_pids(
        &desk.snapshot(),
        &desk
            .component_names()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let (code, out) =
        run(cmd(&folder.join("SAFE_SHUTDOWN.bat"), "--yes --timeout 2").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    wait_gone(&pids);
    desk.assert_no_lock_left("after SAFE_SHUTDOWN.bat");
    let mut status = None;
    wait_until("SAFE_START.bat to exit", || {
        status = launcher.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
}

/// `INSTALL_AT_LOGON.bat` registers the desk's Task Scheduler task (Wine's `schtasks`
/// keeps it; Wine never runs a task at logon, so only the registration is checked)
/// and `UNINSTALL_AT_LOGON.bat` removes exactly that task.
#[test]
fn install_at_logon_bat_registers_the_task_and_uninstall_at_logon_bat_removes_it() {
    use lockcore::autostart::{Scheduler, status};

    let desk = Desk::new(&*unique("qs_autostart_bat"), &[&*unique("AUTOBAT")]);
    let folder = bundle(&desk);
    let config = folder.join("fleet.toml");
    // What check-procs asks: the task's file (Wine keeps one per task; its
    // `schtasks /query` is a stub), else `schtasks /query` naming the task.
    let query = || status(Scheduler::TaskScheduler, &config).installed;
    let name = status(Scheduler::TaskScheduler, &config).name;
    assert!(!query(), "{name} exists before the test");
    let (code, out) = run(cmd(&folder.join("INSTALL_AT_LOGON.bat"), "").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&name), "{out}");
    assert!(query(), "INSTALL_AT_LOGON.bat did not register {name}");
    let (code, out) =
        run(cmd(&folder.join("UNINSTALL_AT_LOGON.bat"), "").env("DESK_NO_PAUSE", "1"));
    assert_eq!(code, 0, "{out}");
    assert!(!query(), "UNINSTALL_AT_LOGON.bat left {name}");
}
