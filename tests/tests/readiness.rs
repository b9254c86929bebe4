//! DESIGN.md rule 15, a guard counts only while it guards: readiness and heartbeats on
//! the notify channel, with real master-launch, check-procs and stand-in bots that say
//! `ready`, `alive` and `not-ready` (stand-in `--notify MS:LINE`, `--heartbeat-ms`,
//! `--heartbeat-until-ms`). Names carry the test run's pid: desks of two checkouts
//! tested at once never see each other.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fleet_tests::orchestrated::*;
use fleet_tests::{Desk, start_master_launch, wait_until};

/// A one-account desk named for this test and run, with `defaults` in `[defaults]`;
/// the account's name.
fn desk(tag: &str, defaults: &str) -> (Desk, String) {
    // Built before the clock starts: a build during a test's timed window would
    // outlast it.
    fleet_tests::tool("check-procs", "check-procs");
    let account = format!("{tag}{}", std::process::id());
    let desk = Desk::with_options(
        &format!("{}_q{}", tag.to_lowercase(), std::process::id()),
        &[&account],
        &[],
        &format!("[defaults]\nstop_timeout_secs = 2\n{defaults}"),
    );
    (desk, account)
}

/// Rule 13 and 15 from outside, sampled: how many copies of the brain and watchdog
/// run (never more than one each).
fn census(desk: &Desk, account: &str) -> (usize, usize) {
    let snapshot = desk.snapshot();
    let brains = copies(&snapshot, &format!("BRAIN_{account}"));
    let watchdogs = copies(&snapshot, &format!("WATCHDOG_{account}"));
    assert!(brains <= 1 && watchdogs <= 1, "{:?}", snapshot.problems);
    (brains, watchdogs)
}

/// A watchdog that never says ready: its brain never starts, check-procs names both
/// (exit 1), and the watchdog is ended as hung after its timeout and restarted.
#[test]
fn a_watchdog_that_never_says_ready_keeps_its_brain_from_ever_starting() {
    let (desk, account) = desk(
        "RDN",
        "ready = \"notify\"\nready_timeout_secs = 1\ngive_up_after = 3\n",
    );
    let (brain, watchdog) = (format!("BRAIN_{account}"), format!("WATCHDOG_{account}"));
    desk.add_args(&[&brain], &["--notify", "0:ready"]);
    let (orchestrator, _lines) = start_master_launch(&desk.config(), &[]);
    let hung = format!("{watchdog}: HUNG");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !desk.master_log().contains(&hung) {
        assert_eq!(census(&desk, &account).0, 0, "the brain started");
        assert!(Instant::now() < deadline, "{}", desk.master_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        desk.master_log()
            .contains("not ready within 1 s of its start (ready_timeout_secs)"),
        "{}",
        desk.master_log()
    );
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1, "{json:#}");
    let problems = json["problems"].to_string();
    assert!(
        problems.contains(&watchdog) && problems.contains(&brain),
        "check-procs names the watchdog and the brain: {json:#}"
    );
    // Restarted as after a crash, and given up after `give_up_after` failures; the
    // brain never started meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !desk
        .master_log()
        .contains(&format!("{watchdog}: GIVING UP"))
    {
        assert_eq!(census(&desk, &account).0, 0, "the brain started");
        assert!(Instant::now() < deadline, "{}", desk.master_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !desk.master_log().contains(&format!("{brain}: started")),
        "{}",
        desk.master_log()
    );
    assert_eq!(check_procs_json(&desk).0, 1);
    stop_desk(&desk, orchestrator);
}

/// A watchdog whose heartbeats stop (a hung loop): within heartbeat_secs + 1 s its
/// brain is stopped, then the watchdog; the brain starts again only after the new
/// watchdog said ready. Sampled every 20 ms.
#[test]
fn a_watchdog_whose_heartbeats_stop_has_its_brain_stopped_first_then_is_restarted() {
    let (desk, account) = desk(
        "RDH",
        "ready = \"notify\"\nready_timeout_secs = 10\nheartbeat_secs = 1\nrestart = \"always\"\n",
    );
    let (brain, watchdog) = (format!("BRAIN_{account}"), format!("WATCHDOG_{account}"));
    desk.add_args(&[&brain], &["--notify", "0:ready", "--heartbeat-ms", "200"]);
    // The first run stops its heartbeats after 1.5 s; the tests tells later runs apart
    // by their pid and reads what each said from the log.
    desk.add_args(
        &[&watchdog],
        &[
            "--notify",
            "0:ready",
            "--heartbeat-ms",
            "200",
            "--heartbeat-until-ms",
            "1500",
        ],
    );
    let (orchestrator, _lines) = start_master_launch(&desk.config(), &[]);
    let first = wait_supervised(&desk, &watchdog, orchestrator.pid());
    let seen = Instant::now();
    wait_logged(&desk, &format!("{brain}: started"), 0);
    // Its heartbeats stop at most 1.5 s after `seen`; the brain must be gone within
    // heartbeat_secs + 1 s of that, and before the watchdog's run ends. Wine delivers
    // no CTRL_BREAK: there the brain is forced at its stop timeout (2 s) instead.
    let forced = if fleet_tests::wine::under_wine() {
        2000
    } else {
        0
    };
    let bound = seen + Duration::from_millis(1500 + 1000 + 1000 + forced);
    let first_brain = wait_supervised(&desk, &brain, orchestrator.pid());
    // Sampled: while the first brain runs it is within the bound and beside the first
    // watchdog's run (never after that run ended); the loop ends once a new watchdog
    // runs and the first brain is gone.
    loop {
        let snapshot = desk.snapshot();
        assert!(
            copies(&snapshot, &brain) <= 1 && copies(&snapshot, &watchdog) <= 1,
            "{:?}",
            snapshot.problems
        );
        let first_brain_runs = snapshot.component(&brain).is_some_and(|v| {
            v.copies
                .iter()
                .any(|c| c.tree.pids().any(|p| p == first_brain))
        });
        let watchdog_pid = managed_pid(&snapshot, &watchdog);
        if first_brain_runs {
            assert!(
                Instant::now() < bound,
                "the brain still runs {:?} after the watchdog's heartbeats stopped: {}",
                Instant::now() - seen,
                desk.master_log()
            );
            assert_eq!(
                watchdog_pid,
                Some(first),
                "the brain outlived its hung watchdog's run"
            );
        } else if watchdog_pid.is_some_and(|p| p != first) {
            break;
        }
        assert!(
            seen.elapsed() < Duration::from_secs(30),
            "{}",
            desk.master_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = desk.master_log();
    let hung = log_position(&log, &format!("{watchdog}: HUNG (pid {first})"), 0).unwrap();
    let brain_exit = log_position(&log, &format!("{brain}: exited"), hung).unwrap();
    let watchdog_exit = log_position(&log, &format!("{watchdog}: exited"), hung).unwrap();
    assert!(brain_exit < watchdog_exit, "out of order: {}", &log[hung..]);
    // The brain follows only once the new watchdog said ready.
    let ready_again = wait_logged(&desk, &format!("{watchdog}: ready (pid "), watchdog_exit);
    let brain_again = wait_logged(&desk, &format!("{brain}: started"), brain_exit);
    assert!(ready_again < brain_again, "{}", &desk.master_log()[hung..]);
    stop_desk(&desk, orchestrator);
}

/// `not-ready terminal lost`, then `ready`: the brain is held back meanwhile, and
/// check-procs shows the reason; then it follows.
#[test]
fn a_watchdog_that_says_not_ready_holds_its_brain_back_and_shows_why() {
    let (desk, account) = desk("RDR", "ready = \"notify\"\nready_timeout_secs = 10\n");
    let (brain, watchdog) = (format!("BRAIN_{account}"), format!("WATCHDOG_{account}"));
    desk.add_args(&[&brain], &["--notify", "0:ready"]);
    desk.add_args(
        &[&watchdog],
        &[
            "--notify",
            "0:ready",
            "--notify",
            "1500:not-ready terminal lost",
            "--notify",
            "8000:ready",
        ],
    );
    let (orchestrator, _lines) = start_master_launch(&desk.config(), &[]);
    let first_brain = wait_logged(&desk, &format!("{brain}: started"), 0);
    wait_logged(&desk, &format!("{watchdog}: NOT READY"), 0);
    wait_until("the brain to be held back", || {
        census(&desk, &account).0 == 0
    });
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1, "{json:#}");
    let shown = component(&json, &watchdog);
    assert_eq!(shown["state"], "not_ready", "{json:#}");
    assert!(json.to_string().contains("terminal lost"), "{json:#}");
    assert_ne!(component(&json, &brain)["state"], "running", "{json:#}");
    // Ready again: the brain follows.
    let log_mark = desk.master_log().len();
    wait_logged(
        &desk,
        &format!("{brain}: started"),
        log_mark.max(first_brain + 1),
    );
    let log = desk.master_log();
    let ready = log_position(&log, &format!("{watchdog}: ready"), first_brain).unwrap();
    let again = log_position(&log, &format!("{brain}: started"), first_brain + 1).unwrap();
    assert!(ready < again, "{}", &log[first_brain..]);
    stop_desk(&desk, orchestrator);
}

/// Nobody but the watchdog can make it count as ready: files in the lock dir named
/// like a readiness note, and (Linux) opening the watchdog's notify descriptor through
/// /proc, do nothing; its brain never starts.
#[test]
fn a_stray_process_cannot_make_a_watchdog_count_as_ready() {
    let (desk, account) = desk("RDS", "ready = \"notify\"\nready_timeout_secs = 30\n");
    let (brain, watchdog) = (format!("BRAIN_{account}"), format!("WATCHDOG_{account}"));
    desk.add_args(&[&brain], &["--notify", "0:ready"]);
    let (orchestrator, _lines) = start_master_launch(&desk.config(), &[]);
    let pid = wait_supervised(&desk, &watchdog, orchestrator.pid());
    for name in [
        format!("{watchdog}.ready"),
        format!("{watchdog}.notify"),
        format!("{watchdog}.alive"),
        "DESK_NOTIFY".to_string(),
    ] {
        std::fs::write(desk.lock_dir().join(name), "ready\n").unwrap();
    }
    #[cfg(target_os = "linux")]
    {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        let fd = environ
            .split('\0')
            .find_map(|v| v.strip_prefix("DESK_NOTIFY=fd:"))
            .unwrap_or_else(|| panic!("the watchdog has no notify channel: {environ}"));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/fd/{fd}"));
        assert!(
            opened.is_err(),
            "a stray process could open the watchdog's notify channel"
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(census(&desk, &account).0, 0, "the brain started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        view_state(&desk, &watchdog).map(|s| s.as_str()),
        Some("starting")
    );
    assert!(!desk.master_log().contains(&format!("{watchdog}: ready")));
    stop_desk(&desk, orchestrator);
}

/// `master-launch restart` of a watchdog that says ready 1.5 s after its start is
/// answered only then.
#[test]
fn a_restart_is_answered_when_the_watchdog_is_ready() {
    let (desk, account) = desk("RDA", "ready = \"notify\"\nready_timeout_secs = 10\n");
    let (brain, watchdog) = (format!("BRAIN_{account}"), format!("WATCHDOG_{account}"));
    desk.add_args(&[&brain], &["--notify", "0:ready"]);
    desk.add_args(&[&watchdog], &["--notify", "1500:ready"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let mark = desk.master_log().len();
    let output = master_launch(&desk, &["restart", &watchdog]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let log = desk.master_log();
    let ready = log_position(&log, &format!("{watchdog}: ready (pid "), mark);
    assert!(
        ready.is_some(),
        "answered before the new run said ready: {}",
        &log[mark..]
    );
    stop_desk(&desk, orchestrator);
}
