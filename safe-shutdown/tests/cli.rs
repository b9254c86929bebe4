//! `safe-shutdown` against stand-in bots, with and without a running master-launch.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]
// Most scenarios here are Unix-only (they drive signals or a pty); on Windows the
// helpers they share go unused.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use assert_cmd::prelude::*;
use fleet_tests::{Desk, Lines, Running, assert_safe_order, tool, unique, wait_until};
use lockcore::ProcessProbe;
use predicates::prelude::*;

fn safe_shutdown(desk: &Desk, args: &[&str]) -> Command {
    desk.command(cargo_bin("safe-shutdown"), args)
}

fn running_pids(desk: &Desk) -> Vec<u32> {
    fleet_tests::running_pids(&desk.snapshot())
}

struct Launcher {
    running: Running,
    _lines: Lines,
}

/// master-launch on the desk, waited for until every component runs under its lock.
fn launch(desk: &Desk) -> Launcher {
    let (running, lines) = fleet_tests::start_master_launch(&desk.config(), &[]);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(30))
            .is_some()
    );
    desk.wait_until_running();
    desk.wait_until_each_said_started();
    Launcher {
        running,
        _lines: lines,
    }
}

#[test]
fn without_a_terminal_and_without_yes_it_refuses_and_stops_nothing() {
    let desk = Desk::new(&unique("qs_noterm"), &[&*unique("NOTERM1")]);
    let _bot = desk.start_locked(&unique("BRAIN_NOTERM1"), &[]);
    let before = running_pids(&desk);
    safe_shutdown(&desk, &[])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pass --yes"));
    assert_eq!(running_pids(&desk), before);
    let audit = std::fs::read_to_string(desk.dir.path().join("logs/safe-shutdown.log")).unwrap();
    assert!(audit.contains("refused: no terminal"), "{audit}");
}

/// docs/reference.md: with no terminal and no `--yes` it "touches nothing", also when nothing runs:
/// a stale and a corrupt lock file stay byte for byte (with `--yes` they go).
#[test]
fn without_a_terminal_and_without_yes_it_leaves_stale_locks_when_nothing_runs() {
    let desk = Desk::new(&unique("qs_noterm_idle"), &[&*unique("IDLE1")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    let stale = serde_json::json!({
        "pid": 999_999, "name": &*unique("BRAIN_IDLE1"), "account": &*unique("IDLE1"),
        "timestamp": "2026-01-01T00:00:00", "pid_start": 1,
        "holder_pid": 999_999, "holder_start": 1,
        "host": "desk", "command": ["python", &*format!("{}.py", unique("BRAIN_IDLE1"))]
    })
    .to_string();
    std::fs::write(desk.lock_path(&unique("BRAIN_IDLE1")), &stale).unwrap();
    std::fs::write(desk.lock_path(&unique("WATCHDOG_IDLE1")), b"garbage").unwrap();
    let states: Vec<String> = desk
        .snapshot()
        .components
        .iter()
        .filter_map(|c| c.lock.as_ref().map(|l| l.state.as_str().to_string()))
        .collect();
    assert_eq!(states, ["corrupt", "stale"], "the test's premise");

    safe_shutdown(&desk, &[])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("Nothing to stop"))
        .stderr(predicate::str::contains("no terminal").and(predicate::str::contains("--yes")));
    assert_eq!(
        std::fs::read_to_string(desk.lock_path(&unique("BRAIN_IDLE1"))).unwrap(),
        stale
    );
    assert_eq!(
        std::fs::read(desk.lock_path(&unique("WATCHDOG_IDLE1"))).unwrap(),
        b"garbage"
    );
    assert!(
        !desk.dir.path().join("logs/safe-shutdown.log").exists(),
        "an audit log was written"
    );

    safe_shutdown(&desk, &["--yes"]).assert().code(0);
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
}

/// The prompt through a real pseudo-terminal (fleet-tests' pty helper).
#[cfg(unix)]
fn answer_prompt(desk: &Desk, answer: &str) -> (i32, String) {
    let exe = cargo_bin("safe-shutdown");
    let config = desk.config();
    let args = [
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
        std::ffi::OsStr::new("--timeout"),
        std::ffi::OsStr::new("5"),
    ];
    fleet_tests::pty::answer_prompt(&exe, &args, answer)
}

// Unix-only: the pseudo-terminal comes from Python's pty module.
#[cfg(unix)]
#[test]
fn at_the_prompt_no_cancels_and_yes_proceeds() {
    let desk = Desk::new(&unique("qs_prompt"), &[&*unique("PROMPT1")]);
    let _bot = desk.start_locked(&unique("WATCHDOG_PROMPT1"), &[]);
    let before = running_pids(&desk);
    let (code, screen) = answer_prompt(&desk, "no");
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("Open trades are NOT closed"), "{screen}");
    assert!(
        screen.contains("Cancelled. Nothing was stopped."),
        "{screen}"
    );
    assert_eq!(running_pids(&desk), before);
    let (code, screen) = answer_prompt(&desk, "YES");
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("All 1 stopped."), "{screen}");
    assert!(running_pids(&desk).is_empty());
    // A bot is stopped once its pid is gone; its lock's holder removes the file
    // after it has reaped the bot.
    wait_until("the lock files to be removed", || {
        desk.lock_files().is_empty()
    });
}

// Unix-only: the bots' graceful exits (SIGTERM) are part of what it checks.
#[cfg(unix)]
#[test]
fn with_master_launch_running_the_desk_stops_in_order_and_nothing_restarts() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_full"),
        &[&*unique("FULL1"), &*unique("FULL2")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    let mut launcher = launch(&desk);
    let pids = running_pids(&desk);
    safe_shutdown(&desk, &["--yes"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("All 6 stopped."));
    let status = launcher.running.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "master-launch did not exit cleanly");
    let mut probe = ProcessProbe::new().unwrap();
    assert!(pids.iter().all(|&p| probe.identity(p).is_none()));
    // Nothing was restarted: each bot exited exactly once, in the safe order.
    let exits = exit_log.times();
    assert_eq!(exits.len(), 5, "{exits:?}");
    assert_safe_order(&exits, &unique("qs_full"));
    assert!(running_pids(&desk).is_empty());
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
    let audit = std::fs::read_to_string(desk.dir.path().join("logs/safe-shutdown.log")).unwrap();
    assert!(
        audit.contains("stop-all request") && audit.contains("all stopped"),
        "{audit}"
    );
}

// Unix-only: the bots' graceful exits (SIGTERM) are part of what it checks.
#[cfg(unix)]
#[test]
fn without_master_launch_it_stops_hand_started_and_runner_held_bots_in_order() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_loose"),
        &[&*unique("LOOSE1")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    let stand_in = fleet_tests::stand_in();
    let by_hand = |name: &str| {
        Running::new(
            Command::new(&stand_in)
                .args([name, "--exit-log", &exit_log.arg])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _global = by_hand(&unique("qs_loose"));
    // Held by the hand-start runner, which honours stop requests.
    let _watchdog = Running::new(
        Command::new(tool("master-launch", "master-launch"))
            .arg("--config")
            .arg(desk.config())
            .args(["run", &*unique("WATCHDOG_LOOSE1")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _brain = by_hand(&unique("BRAIN_LOOSE1"));
    wait_until("three copies", || {
        desk.snapshot()
            .components
            .iter()
            .map(|v| v.copies.len())
            .sum::<usize>()
            == 3
    });
    safe_shutdown(&desk, &["--yes", "--timeout", "5"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("All 3 stopped."));
    let exits = exit_log.times();
    assert_eq!(
        exits.len(),
        3,
        "a bot was forced instead of stopped: {exits:?}"
    );
    assert_safe_order(&exits, &unique("qs_loose"));
    // A bot is stopped once its pid is gone; its lock's holder removes the file
    // after it has reaped the bot.
    wait_until("the lock files to be removed", || {
        desk.lock_files().is_empty()
    });
}

#[test]
fn one_account_stops_and_stays_stopped_while_the_others_keep_trading() {
    let desk = Desk::new(&unique("qs_acct"), &[&*unique("ACCT1"), &*unique("ACCT2")]);
    let launcher = launch(&desk);
    let keep = fleet_tests::managed_pids(
        &desk.snapshot(),
        &[
            &*unique("qs_acct"),
            &*unique("WATCHDOG_ACCT2"),
            &*unique("BRAIN_ACCT2"),
        ],
    );
    // A short timeout: under Wine the bots never see CTRL_BREAK and are forced. The
    // account named in lower case: --account ignores case.
    let account = unique("ACCT1").to_lowercase();
    safe_shutdown(&desk, &["--yes", "--account", &account, "--timeout", "2"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("All 2 stopped."));
    // Longer than master-launch's restart delay: still stopped.
    std::thread::sleep(Duration::from_millis(2500));
    let snap = desk.snapshot();
    for name in [&*unique("BRAIN_ACCT1"), &*unique("WATCHDOG_ACCT1")] {
        let view = snap.component(name).unwrap();
        assert!(
            view.copies.is_empty() && view.lock.is_none(),
            "{name} restarted"
        );
    }
    let still: Vec<u32> = fleet_tests::managed_pids(
        &snap,
        &[
            &*unique("qs_acct"),
            &*unique("WATCHDOG_ACCT2"),
            &*unique("BRAIN_ACCT2"),
        ],
    );
    assert_eq!(keep, still);
    let mut probe = ProcessProbe::new().unwrap();
    assert!(
        probe.identity(launcher.running.pid()).is_some(),
        "master-launch stopped"
    );
}

/// Two bots ignore the graceful stop, one takes 2 s to close; all in one stage. The
/// stubborn ones are forced after the timeout, and the whole stop takes about one
/// timeout, not the sum.
// Unix-only: the bots' graceful exits (SIGTERM) are part of what it checks.
#[cfg(unix)]
#[test]
fn stubborn_bots_are_forced_after_one_timeout_in_parallel() {
    let desk = Desk::new(
        &unique("qs_stubborn"),
        &[&*unique("STUB_A"), &*unique("STUB_B"), &*unique("STUB_C")],
    );
    let stand_in = fleet_tests::stand_in();
    // Each is waited for until it says it started: it installs its stop handler
    // first, and a SIGTERM before that would end it at once.
    let start = |name: &str, extra: &[&str]| {
        let mut child = Command::new(&stand_in)
            .arg(name)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = fleet_tests::spawn_reader(child.stdout.take().unwrap());
        let bot = Running::new(child);
        assert!(
            lines
                .wait_for("started pid", Duration::from_secs(30))
                .is_some(),
            "{name} did not start"
        );
        (bot, lines)
    };
    let _a = start(&unique("BRAIN_STUB_A"), &["--ignore-stop"]);
    let _b = start(&unique("BRAIN_STUB_B"), &["--ignore-stop"]);
    let _c = start(&unique("BRAIN_STUB_C"), &["--stop-delay-ms", "2000"]);
    wait_until("three brains", || running_pids(&desk).len() == 3);
    let started = Instant::now();
    let output = safe_shutdown(&desk, &["--yes", "--timeout", "3"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(running_pids(&desk).is_empty());
    assert!(
        took >= Duration::from_secs(3),
        "forced before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "not parallel: {took:?} for three 3 s timeouts"
    );
    let audit = std::fs::read_to_string(desk.dir.path().join("logs/safe-shutdown.log")).unwrap();
    assert_eq!(audit.matches("forcing ").count(), 2, "{audit}");
}

/// A lock whose recorded pid now belongs to an unrelated process: that process is not
/// the bot (its start time differs), so it is left alone.
#[test]
fn a_reused_pid_in_a_lock_record_is_left_alone() {
    let desk = Desk::new(&unique("qs_reuse"), &[&*unique("REUSE1")]);
    let unrelated = Running::new(
        Command::new(tool("fleet-tests", "lock-taker"))
            .arg("idle")
            .spawn()
            .unwrap(),
    );
    let mut probe = ProcessProbe::new().unwrap();
    let start = probe.identity(unrelated.pid()).unwrap().start_time;
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    let record = serde_json::json!({
        "pid": unrelated.pid(), "name": &*unique("BRAIN_REUSE1"), "account": &*unique("REUSE1"),
        "timestamp": "2026-01-01T00:00:00", "pid_start": start - 5000,
        "holder_pid": 999_999, "holder_start": start - 5001,
        "host": "desk", "command": ["python", &*format!("{}.py", unique("BRAIN_REUSE1"))]
    });
    std::fs::write(desk.lock_path(&unique("BRAIN_REUSE1")), record.to_string()).unwrap();
    safe_shutdown(&desk, &["--yes"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("Nothing to stop"));
    assert!(
        probe.identity(unrelated.pid()).is_some(),
        "an unrelated process was stopped"
    );
    assert!(desk.lock_files().is_empty(), "the stale lock stayed");
}

#[test]
fn dry_run_lists_in_stop_order_and_stops_nothing() {
    let desk = Desk::new(&unique("qs_sdry"), &[&*unique("SDRY1")]);
    let _w = desk.start_locked(&unique("WATCHDOG_SDRY1"), &[]);
    let _b = desk.start_by_hand(&unique("BRAIN_SDRY1"));
    let before = running_pids(&desk);
    let output = safe_shutdown(&desk, &["--dry-run"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    let brain = text.find(&*unique("BRAIN_SDRY1")).unwrap();
    let watchdog = text.find(&*unique("WATCHDOG_SDRY1")).unwrap();
    assert!(brain < watchdog, "{text}");
    assert!(
        text.contains("process table (no lock)") && text.contains("lock, held by pid"),
        "{text}"
    );
    assert_eq!(running_pids(&desk), before);
}

/// DESIGN.md rule 11, the reproduced case: an older tool's record (fresh timestamp,
/// and none at all) naming a live process that is no bot of the desk. safe-shutdown
/// never signals it and says so; check-procs reports the record.
#[test]
fn a_legacy_record_naming_an_unrelated_process_never_gets_it_stopped() {
    let desk = Desk::new(&unique("qs_legx"), &[&*unique("LEGX")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    let mut unrelated = Command::new(tool("fleet-tests", "lock-taker"));
    let unrelated = Running::new(unrelated.arg("idle").stdin(Stdio::null()).spawn().unwrap());
    let pid = unrelated.pid();
    let now = lockcore::record::local_timestamp_now();
    let records = [
        format!(
            r#"{{"pid": {pid}, "name": "{}", "timestamp": "{now}"}}"#,
            unique("BRAIN_LEGX")
        ),
        format!(r#"{{"pid": {pid}, "name": "{}"}}"#, unique("BRAIN_LEGX")),
    ];
    for record in records {
        std::fs::write(desk.lock_path(&unique("BRAIN_LEGX")), &record).unwrap();
        let check = Command::new(tool("check-procs", "check-procs"))
            .arg("--config")
            .arg(desk.config())
            .arg("--json")
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        let problem = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *unique("BRAIN_LEGX"))
            .unwrap_or_else(|| panic!("not reported: {report}"));
        assert!(
            problem["message"].as_str().unwrap().contains("not genuine"),
            "{record}: {report}"
        );
        let output = safe_shutdown(&desk, &["--yes", "--timeout", "2"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string();
        assert_eq!(output.status.code(), Some(0), "{record}: {said}");
        assert!(said.contains("left alone"), "{record}: {said}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            ProcessProbe::new().unwrap().identity(pid).is_some(),
            "{record}: safe-shutdown stopped an unrelated process"
        );
    }
}

/// A supervised two-account desk whose brains ignore the graceful stop, with the
/// components' own `stop_timeout_secs` at 10 s: `--timeout 3` is honoured by
/// master-launch (the brains are forced at 3 s, not 10 s), in the safe order.
// Unix-only: the bots' graceful exits (SIGTERM) are part of what it checks.
#[cfg(unix)]
#[test]
fn the_requesters_timeout_is_honoured_by_master_launch_in_the_safe_order() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_deadline"),
        &[&*unique("DEAD1"), &*unique("DEAD2")],
        &["--exit-log", &exit_log.arg],
        "[defaults]\nstop_timeout_secs = 10\n",
    );
    desk.add_args(
        &[&*unique("BRAIN_DEAD1"), &*unique("BRAIN_DEAD2")],
        &["--ignore-stop"],
    );
    let mut launcher = launch(&desk);
    let pids = running_pids(&desk);
    let started = Instant::now();
    let output = safe_shutdown(&desk, &["--yes", "--timeout", "3"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    // 3 s of grace, then forced; the old path took the components' 10 s.
    assert!(took >= Duration::from_secs(3), "forced early: {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "the 3 s deadline was not honoured: {took:?}"
    );
    assert_eq!(launcher.running.child.wait().unwrap().code(), Some(0));
    let mut probe = ProcessProbe::new().unwrap();
    assert!(pids.iter().all(|&p| probe.identity(p).is_none()));
    desk.assert_no_lock_left("after the stop");
    // The brains were forced (no graceful exit); the watchdogs stopped gracefully
    // after that, then the global.
    let exits = exit_log.times();
    let names: Vec<&str> = exits.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3, "{exits:?}");
    assert!(
        names[..2].iter().all(|n| n.starts_with("WATCHDOG_")),
        "{exits:?}"
    );
    assert_eq!(names[2], &*unique("qs_deadline"), "{exits:?}");
    let log = desk.master_log();
    assert_eq!(log.matches("did not stop in time").count(), 2, "{log}");
}

/// The same deadline through `--account`: one account's stubborn brain is forced at
/// the request's 3 s, its watchdog follows, the other account keeps running.
#[cfg(unix)]
#[test]
fn an_account_stop_honours_the_timeout_and_leaves_the_rest() {
    let desk = Desk::with_options(
        &unique("qs_acctdead"),
        &[&*unique("ADEAD1"), &*unique("ADEAD2")],
        &[],
        "[defaults]\nstop_timeout_secs = 10\n",
    );
    desk.add_args(&[&*unique("BRAIN_ADEAD1")], &["--ignore-stop"]);
    let _launcher = launch(&desk);
    let before = desk.snapshot();
    let others = fleet_tests::managed_pids(
        &before,
        &[
            &*unique("qs_acctdead"),
            &*unique("WATCHDOG_ADEAD2"),
            &*unique("BRAIN_ADEAD2"),
        ],
    );
    let started = Instant::now();
    let output = safe_shutdown(
        &desk,
        &["--yes", "--timeout", "3", "--account", &*unique("ADEAD1")],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(6)).contains(&took),
        "{took:?}"
    );
    let after = desk.snapshot();
    for name in [&*unique("WATCHDOG_ADEAD1"), &*unique("BRAIN_ADEAD1")] {
        assert!(
            after.component(name).unwrap().copies.is_empty(),
            "{name} runs"
        );
    }
    assert_eq!(
        fleet_tests::managed_pids(
            &after,
            &[
                &*unique("qs_acctdead"),
                &*unique("WATCHDOG_ADEAD2"),
                &*unique("BRAIN_ADEAD2")
            ]
        ),
        others
    );
}

/// A hand-started `run NAME` whose bot ignores the graceful stop: its runner forces it
/// at the requester's deadline.
#[cfg(unix)]
#[test]
fn a_hand_started_run_is_forced_at_the_requesters_deadline() {
    let desk = Desk::with_options(
        &unique("qs_rundead"),
        &[&*unique("RDEAD")],
        &[],
        "[defaults]\nstop_timeout_secs = 10\n",
    );
    desk.add_args(&[&*unique("BRAIN_RDEAD")], &["--ignore-stop"]);
    desk.allow_brains_alone();
    let mut runner = Command::new(tool("master-launch", "master-launch"))
        .arg("--config")
        .arg(desk.config())
        .args(["run", &*unique("BRAIN_RDEAD")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `run` hands the bot its own stdout: the bot's "started" line says that its stop
    // handler is installed (its --ignore-stop is what this test is about).
    let bot_says = fleet_tests::spawn_reader(runner.stdout.take().unwrap());
    assert!(
        bot_says
            .wait_for("started pid", Duration::from_secs(30))
            .is_some()
    );
    wait_until("the run to record its bot", || {
        desk.snapshot()
            .component(&unique("BRAIN_RDEAD"))
            .is_some_and(|v| v.managed.is_some())
    });
    let started = Instant::now();
    let output = safe_shutdown(&desk, &["--yes", "--timeout", "3"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(6)).contains(&took),
        "{took:?}"
    );
    runner.wait().unwrap();
    desk.assert_no_lock_left("after the run was stopped");
}

/// `--account X` while X's brain is waiting out a restart delay: the holder is told
/// about it too, so it stays stopped (and so does its watchdog), instead of coming
/// back to trade unguarded.
#[cfg(unix)]
#[test]
fn an_account_stop_while_its_brain_backs_off_keeps_it_stopped() {
    let desk = Desk::with_options(
        &unique("qs_backoff"),
        &[&*unique("BACK1")],
        &[],
        "[defaults]\nrestart_delay_ms = 4000\ngive_up_after = 10\n",
    );
    desk.add_args(&[&*unique("BRAIN_BACK1")], &["--crash-after-ms", "300"]);
    let _launcher = fleet_tests::start_master_launch(&desk.config(), &[]);
    wait_until("the brain to crash and back off", || {
        desk.master_log()
            .contains(&*format!("{}: restarting in", unique("BRAIN_BACK1")))
    });
    let output = safe_shutdown(
        &desk,
        &["--yes", "--timeout", "2", "--account", &*unique("BACK1")],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    // Past the restart delay: nothing came back.
    std::thread::sleep(Duration::from_secs(5));
    let snap = desk.snapshot();
    for name in [&*unique("BRAIN_BACK1"), &*unique("WATCHDOG_BACK1")] {
        let view = snap.component(name).unwrap();
        assert!(view.copies.is_empty(), "{name} runs again");
        assert!(
            view.lock.as_ref().is_none_or(|l| !l.state.is_held()),
            "{name} is still held"
        );
    }
    assert_eq!(
        desk.master_log()
            .matches(&*format!("{}: started", unique("BRAIN_BACK1")))
            .count(),
        1,
        "{}",
        desk.master_log()
    );
}

/// Table row: a directory named `stray.lock` made safe-shutdown fail ("Is a
/// directory"), exit 1, all bots running; a FIFO `junk.lock` hung it. The emergency
/// stop now stops the desk whatever else is in the lock dir, and touches none of it.
#[cfg(unix)]
#[test]
fn the_emergency_stop_works_whatever_else_is_in_the_lock_dir() {
    let desk = Desk::new(&unique("qs_hostile"), &[&*unique("HOSTILE1")]);
    let locks = desk.lock_dir();
    std::fs::create_dir_all(&locks).unwrap();
    let sentinel = desk.config().with_file_name("sentinel.txt");
    std::fs::write(&sentinel, b"untouched").unwrap();
    std::fs::create_dir(locks.join("stray.lock")).unwrap();
    for fifo in ["junk.lock", &*format!("{}.stop", unique("BRAIN_HOSTILE1"))] {
        assert!(
            Command::new("mkfifo")
                .arg(locks.join(fifo))
                .status()
                .unwrap()
                .success()
        );
    }
    std::os::unix::fs::symlink(
        &sentinel,
        locks.join(&*format!("{}.lock", unique("WATCHDOG_HOSTILE1"))),
    )
    .unwrap();
    let _w = desk.start_by_hand(&unique("WATCHDOG_HOSTILE1"));
    let _b = desk.start_by_hand(&unique("BRAIN_HOSTILE1"));
    wait_until("two copies", || running_pids(&desk).len() == 2);
    let pids = running_pids(&desk);
    assert_cmd::Command::from_std(safe_shutdown(&desk, &["--yes", "--timeout", "5"]))
        .timeout(Duration::from_secs(90))
        .assert()
        .code(0)
        .stdout(predicate::str::contains("All 2 stopped."));
    fleet_tests::wait_gone(&pids);
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched");
    assert!(locks.join("stray.lock").is_dir());
    assert!(
        locks
            .join(&*format!("{}.lock", unique("WATCHDOG_HOSTILE1")))
            .is_symlink()
    );
}

/// Table row: `logs/safe-shutdown.log` could not be opened: safe-shutdown stopped
/// nothing ("Is a directory", no path). Now it says so with the path, stops
/// everything, and exits 1 because the audit is incomplete.
#[test]
fn an_audit_log_that_cannot_be_opened_does_not_stop_the_stop() {
    let desk = Desk::new(&unique("qs_noaudit"), &[&*unique("NOAUDIT1")]);
    let audit = desk
        .config()
        .with_file_name("logs")
        .join("safe-shutdown.log");
    std::fs::create_dir_all(&audit).unwrap();
    let _w = desk.start_by_hand(&unique("WATCHDOG_NOAUDIT1"));
    let _b = desk.start_by_hand(&unique("BRAIN_NOAUDIT1"));
    wait_until("two copies", || running_pids(&desk).len() == 2);
    let pids = running_pids(&desk);
    let output = safe_shutdown(&desk, &["--yes", "--timeout", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the audit log")
            && stderr.contains(&audit.display().to_string()),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("All 2 stopped."));
    fleet_tests::wait_gone(&pids);
}

/// Table row: `--timeout 18446744073709551615` panicked (duration overflow), exit 101.
#[test]
fn an_out_of_range_timeout_is_a_usage_error_not_a_panic() {
    let desk = Desk::new(&unique("qs_bigtimeout"), &[&*unique("BIGTO1")]);
    for value in ["18446744073709551615", "86401", "-1"] {
        safe_shutdown(&desk, &["--yes", "--timeout", value])
            .assert()
            .code(2);
    }
    safe_shutdown(&desk, &["--yes", "--timeout", "99999999"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("0..=86400"));
}

/// A small tmpfs mounted over a desk's lock dir (root only), unmounted when dropped.
#[cfg(target_os = "linux")]
struct SmallDisk {
    path: std::path::PathBuf,
}

#[cfg(target_os = "linux")]
impl SmallDisk {
    /// `None` where this user cannot mount (not root): the test then says so and ends.
    fn mount(path: &std::path::Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Fills what is left, so that no new file can get a byte (ENOSPC).
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path.join("filler.dat")).unwrap();
        let block = [0u8; 4096];
        while filler.write_all(&block).is_ok() {}
        assert!(
            std::fs::write(self.path.join("probe.txt"), b"x").is_err(),
            "the small disk is not full"
        );
    }
}

#[cfg(target_os = "linux")]
impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A full lock dir (a small disk): no stop request can be written. For one account,
/// safe-shutdown signals the bots itself, says their holder (master-launch) was not
/// told and may start them again, and, since master-launch does (restart = "always"),
/// ends with them named as running again and exit 1, never "All 2 stopped." For the
/// whole desk it asks master-launch by its own stop signal instead of the stop-all
/// request, and master-launch stops everything in the safe order: exit 0.
/// Linux, as root (a tmpfs mount); elsewhere it says so and ends.
#[cfg(target_os = "linux")]
#[test]
fn a_full_lock_dir_never_ends_in_a_false_all_stopped() {
    let log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_sdfull"),
        &[&*unique("SDFULLA"), &*unique("SDFULLB")],
        &["--exit-log", &log.arg],
        "[defaults]\nrestart = \"always\"\nstop_timeout_secs = 5\n",
    );
    let Some(disk) = SmallDisk::mount(&desk.lock_dir()) else {
        eprintln!("cannot mount a tmpfs here (not root): test not run");
        return;
    };
    let launcher = launch(&desk);
    disk.fill();
    let before = running_pids(&desk);

    let output = safe_shutdown(
        &desk,
        &["--yes", "--account", &*unique("SDFULLA"), "--timeout", "3"],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("All 2 stopped."), "{stdout}");
    assert!(
        stderr.contains("cannot write a stop request for its holder pid")
            && stderr.contains("may start it again"),
        "{stderr}"
    );
    assert!(stderr.contains("THESE ARE STILL RUNNING"), "{stderr}");
    for name in [&*unique("BRAIN_SDFULLA"), &*unique("WATCHDOG_SDFULLA")] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(name) && l.contains("running again")),
            "{name}: {stderr}"
        );
    }
    assert!(
        desk.snapshot()
            .component(&unique("BRAIN_SDFULLA"))
            .is_some_and(|v| !v.copies.is_empty()),
        "master-launch did not start the brain again: the test shows nothing"
    );

    let exits_before = log.times().len();
    let output = safe_shutdown(&desk, &["--yes", "--timeout", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write the stop-all request (No space left on device (os error 28)); asked \
             master-launch (pid {}) by SIGTERM instead",
            launcher.running.pid()
        )),
        "{stderr}"
    );
    // Five components and master-launch.
    assert!(stdout.contains("All 6 stopped."), "{stdout}");
    assert!(running_pids(&desk).is_empty());
    fleet_tests::wait_gone(&before);
    assert_safe_order(&log.times()[exits_before..], &unique("qs_sdfull"));
    drop(launcher);
}

/// Run by a user who may not signal the desk's processes (here `nobody`, through
/// `setpriv`), safe-shutdown says at once that the system refused, names the fix,
/// never says "killed", and exits 1 with the bots still running. Linux, as root;
/// elsewhere it says so and ends.
#[cfg(target_os = "linux")]
#[test]
fn a_user_without_permission_is_told_so_and_nothing_is_called_killed() {
    use std::os::unix::fs::PermissionsExt;
    let desk = Desk::new(&unique("qs_sdperm"), &[&*unique("SDPERM")]);
    let _watchdog = desk.start_locked(&unique("WATCHDOG_SDPERM"), &[]);
    let _brain = desk.start_locked(&unique("BRAIN_SDPERM"), &[]);
    let before = running_pids(&desk);
    // `nobody` must be able to read the desk's config (a temp dir is 0700).
    std::fs::set_permissions(desk.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tool("safe-shutdown", "safe-shutdown"))
        .arg("--config")
        .arg(desk.config())
        .args(["--yes", "--timeout", "1"])
        .stdin(Stdio::null())
        .output();
    let output = match as_nobody {
        Ok(output) if !String::from_utf8_lossy(&output.stderr).starts_with("setpriv:") => output,
        _ => {
            eprintln!("cannot run as nobody here (no setpriv, or not root): test not run");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    for name in [&*unique("BRAIN_SDPERM"), &*unique("WATCHDOG_SDPERM")] {
        assert!(
            stderr.lines().any(|l| l.contains(name)
                && l.contains(
                    "permission denied: this user may not signal it; run safe-shutdown as the \
                     desk's user"
                )),
            "{name}: {stderr}"
        );
    }
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(
            !line.contains("killed") || line.contains("NOT killed"),
            "{line}"
        );
    }
    assert!(
        stderr.contains("NOT killed: the system refused"),
        "{stderr}"
    );
    assert!(!stdout.contains("stopped."), "{stdout}");
    // The refusals are told before the list of survivors at the end.
    let told = stderr.find("permission denied").unwrap();
    assert!(
        told < stderr.find("THESE ARE STILL RUNNING").unwrap(),
        "{stderr}"
    );
    let mut probe = ProcessProbe::new().unwrap();
    for pid in before {
        assert!(probe.identity(pid).is_some(), "pid {pid} was stopped");
    }
}

/// `safe-shutdown --yes` writes the desk's event log: its stop request (by whom), then
/// each process stopped or forced, every line JSON, in order.
// Unix-only: the bots' graceful exits (SIGTERM) are part of what it checks.
#[cfg(unix)]
#[test]
fn its_stop_is_in_the_event_log_requested_then_each_stopped_or_forced_in_order() {
    let account = format!("EVL{}", std::process::id());
    let global = format!("qs_evl{}", std::process::id());
    let desk = Desk::new(&global, &[&account]);
    let stand_in = fleet_tests::stand_in();
    let start = |name: &str, extra: &[&str]| {
        let mut child = Command::new(&stand_in)
            .arg(name)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = fleet_tests::spawn_reader(child.stdout.take().unwrap());
        let bot = Running::new(child);
        assert!(
            lines
                .wait_for("started pid", Duration::from_secs(30))
                .is_some(),
            "{name} did not start"
        );
        (bot, lines)
    };
    let brain = format!("BRAIN_{account}");
    let watchdog = format!("WATCHDOG_{account}");
    let (_g, _) = start(&global, &[]);
    let (_w, _) = start(&watchdog, &[]);
    let (b, _) = start(&brain, &["--ignore-stop"]);
    let brain_pid = b.pid();
    wait_until("three copies", || running_pids(&desk).len() == 3);
    let output = safe_shutdown(&desk, &["--yes", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    let text = std::fs::read_to_string(desk.dir.path().join("logs/events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default(),
                e["component"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(kinds[0], ("stop_requested", "-"), "{kinds:?}");
    assert!(
        events[0]["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("safe-shutdown (pid ")),
        "{events:#?}"
    );
    assert!(
        events[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the whole desk") && r.contains("--yes")),
        "{events:#?}"
    );
    // The safe order: the brain (forced, then gone), the watchdog, the global.
    assert_eq!(
        kinds[1..],
        [
            ("forced", brain.as_str()),
            ("stopped", brain.as_str()),
            ("stopped", watchdog.as_str()),
            ("stopped", global.as_str()),
        ],
        "{events:#?}"
    );
    assert_eq!(events[1]["pid"], brain_pid);
    assert_eq!(events[2]["reason"], "forced");
    assert_eq!(events[3]["reason"], "gracefully");
    assert_eq!(events[2]["account"], account.as_str());
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = events
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{events:#?}");
}
