//! DESIGN.md rule 16, a stop fits its budget, with real processes: a closed terminal
//! (SIGHUP) stops a large desk of stubborn bots in order within 5 s; a SIGHUP shortens
//! a Ctrl+C stop already under way; a second Ctrl+C forces what is left at once, still
//! brains first, and the desk exits with no lock left. Unix-only: it sends signals
//! (the Windows console close is the same `Asked` table, tested in signals.rs).
#![cfg(unix)]
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use fleet_tests::orchestrated::log_position;
use fleet_tests::{Desk, Running, wait_until};

/// A desk of `accounts` accounts (and a global) whose every bot ignores SIGTERM, with a
/// 30 s stop timeout: only a hurried stop ends it soon. Names carry the run's pid.
fn stubborn_desk(tag: &str, accounts: usize) -> Desk {
    let names: Vec<String> = (0..accounts)
        .map(|i| format!("{tag}{i}_{}", std::process::id()))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Desk::with_options(
        &format!("{}_q{}", tag.to_lowercase(), std::process::id()),
        &names,
        &["--ignore-stop"],
        "[defaults]\nstop_timeout_secs = 30\n",
    )
}

/// The desk started by master-launch, every bot past installing its stop handler.
fn launch(desk: &Desk) -> Running {
    let (running, _lines) = fleet_tests::orchestrated::launch(desk, &[]);
    desk.wait_until_each_said_started();
    running
}

fn signal(running: &Running, which: &str) {
    let status = Command::new("kill")
        .args([which, &running.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which}");
}

/// SIGINT, then half a second into the ordered stop it begins (logged after `mark`).
fn ctrl_c_and_let_the_stop_begin(desk: &Desk, running: &Running, mark: usize) {
    signal(running, "-INT");
    wait_until("the stop to begin", || {
        desk.master_log()[mark..].contains("stopping the desk")
    });
    std::thread::sleep(Duration::from_millis(500));
}

/// Waits for master-launch to exit, at most `limit` after `from`; its exit code and
/// how long after `from` it exited.
fn exit_within(running: &mut Running, from: Instant, limit: Duration) -> (i32, Duration) {
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), from.elapsed());
        }
        assert!(
            from.elapsed() < limit + Duration::from_secs(10),
            "master-launch still runs {:?} after the signal",
            from.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every brain's exit is logged before any watchdog's, every watchdog's before the
/// global's (the log says each exit as its supervisor sees it).
fn assert_exits_in_stage_order(desk: &Desk, from: usize) {
    let log = desk.master_log();
    let exits = |prefix: &str| -> Vec<usize> {
        desk.component_names()
            .iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| {
                log_position(&log, &format!("{n}: exited"), from)
                    .unwrap_or_else(|| panic!("no exit of {n} in: {}", &log[from..]))
            })
            .collect()
    };
    let brains = exits("BRAIN_");
    let watchdogs = exits("WATCHDOG_");
    let global = log_position(&log, &format!("{}: exited", desk.global), from).unwrap();
    let last_brain = brains.iter().max().unwrap();
    let first_watchdog = watchdogs.iter().min().unwrap();
    assert!(
        last_brain < first_watchdog && watchdogs.iter().all(|w| *w < global),
        "out of order: {}",
        &log[from..]
    );
}

#[test]
fn a_hangup_stops_a_20_account_desk_of_stubborn_bots_in_order_within_5_s() {
    let desk = stubborn_desk("HUP", 20);
    let mut running = launch(&desk);
    let mark = desk.master_log().len();
    let sent = Instant::now();
    signal(&running, "-HUP");
    let (code, took) = exit_within(&mut running, sent, Duration::from_secs(5));
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?}: {}",
        &desk.master_log()[mark..]
    );
    assert_eq!(code, 0, "{}", &desk.master_log()[mark..]);
    assert_exits_in_stage_order(&desk, mark);
    desk.assert_no_lock_left("after SIGHUP");
}

#[test]
fn a_hangup_shortens_a_ctrl_c_stop_already_under_way() {
    let desk = stubborn_desk("INTHUP", 3);
    let mut running = launch(&desk);
    let mark = desk.master_log().len();
    ctrl_c_and_let_the_stop_begin(&desk, &running, mark);
    let sent = Instant::now();
    signal(&running, "-HUP");
    let (code, took) = exit_within(&mut running, sent, Duration::from_secs(5));
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?} after SIGHUP: {}",
        &desk.master_log()[mark..]
    );
    assert_eq!(code, 0);
    assert_exits_in_stage_order(&desk, mark);
    desk.assert_no_lock_left("after SIGINT and SIGHUP");
}

#[test]
fn a_second_ctrl_c_forces_what_is_left_at_once_brains_first() {
    let desk = stubborn_desk("INTINT", 3);
    let mut running = launch(&desk);
    let bots = fleet_tests::running_pids(&desk.snapshot());
    assert_eq!(bots.len(), 7, "{bots:?}");
    let mark = desk.master_log().len();
    ctrl_c_and_let_the_stop_begin(&desk, &running, mark);
    let sent = Instant::now();
    signal(&running, "-INT");
    // Every bot gone within a second of the second Ctrl+C.
    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    while bots.iter().any(alive) {
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "bots still run {:?} after the second Ctrl+C: {:?}",
            sent.elapsed(),
            bots.iter().filter(|p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, _) = exit_within(&mut running, sent, Duration::from_secs(5));
    assert_eq!(code, 0);
    assert_exits_in_stage_order(&desk, mark);
    desk.assert_no_lock_left("after two Ctrl+C");
}
