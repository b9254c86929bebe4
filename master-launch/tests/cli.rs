//! `master-launch` against stand-in bots: refusals, start order, supervision,
//! restarts, giving up, and stopping, with real processes and real locks.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use assert_cmd::prelude::*;
use fleet_tests::{Desk, Launched, Running, running_pids, spawn_reader, unique};
use fleet_tests::{wait_gone, wait_until};
use lockcore::{DeskSnapshot, LockState};
use predicates::prelude::*;

/// `master-launch --config <the desk's fleet.toml>`.
fn master_launch(desk: &Desk) -> Command {
    desk.command(cargo_bin("master-launch"), &[])
}

fn launch(desk: &Desk, extra: &[&str]) -> Launched {
    let mut command = master_launch(desk);
    command.args(extra);
    Launched::spawn(command, desk)
}

/// Under Wine the bots never see CTRL_BREAK and are forced at their stop timeout: keep
/// it short where a test stops the desk on every platform.
const QUICK_STOP: &str = "[defaults]\nstop_timeout_secs = 2\n";

/// Waits until every component of the desk runs exactly once, under its lock, and
/// has logged that it started: the stand-in logs that after installing its stop
/// handler, so a stop asked for from here on is one it sees.
fn wait_all_running(desk: &Desk) -> DeskSnapshot {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snap = desk.snapshot();
        let all = snap
            .components
            .iter()
            .filter(|v| v.component.enabled)
            .all(|v| {
                v.copies.len() == 1
                    && v.copies[0].locked
                    && v.lock
                        .as_ref()
                        .is_some_and(|l| l.state == LockState::Running)
                    // The record names the bot itself, not its launcher.
                    && v.managed
                        .as_ref()
                        .is_some_and(|m| v.copies[0].tree.pids().any(|p| p == m.pid))
                    && desk.said_started(&v.component.lock_name, v.copies[0].tree.pids())
            });
        if all && snap.problems.is_empty() {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "desk never ran cleanly: {:?}",
            snap.problems
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No lock file left for `name`; on Windows a release that met an inspector holding
/// the file open may leave it, but never held.
fn released(snap: &DeskSnapshot, name: &str) -> bool {
    match &snap.component(name).unwrap().lock {
        None => true,
        Some(status) => cfg!(windows) && !status.state.is_held(),
    }
}

#[test]
fn dry_run_prints_the_plan_in_start_order_and_starts_nothing() {
    let desk = Desk::new(&unique("qs_dry"), &[&*unique("DRY1"), &*unique("DRY2")]);
    let output = master_launch(&desk)
        .args(["--dry-run", "--only", &unique("DRY2").to_lowercase()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|w| w.contains("DRY") || w.starts_with("qs_"))
        .collect();
    assert_eq!(
        order,
        [
            &*unique("qs_dry"),
            &*unique("WATCHDOG_DRY2"),
            &*unique("BRAIN_DRY2")
        ],
        "{text}"
    );
    assert!(
        text.contains(&fleet_tests::stand_in().display().to_string()),
        "{text}"
    );
    assert!(desk.lock_files().is_empty());
}

#[test]
fn an_unknown_only_account_is_a_usage_error() {
    let desk = Desk::new(&unique("qs_only"), &[&*unique("ONLY1")]);
    master_launch(&desk)
        .args(["--only", "NOPE"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--only NOPE: no such account"));
}

/// With `[cluster]`: a dry run touches no network (etcd here is a listener that
/// counts connections); `run NAME` refuses the desk until it takes cluster locks; a
/// start whose etcd cannot be reached starts nothing and leaves no lock.
#[test]
fn a_cluster_desk_dry_runs_offline_refuses_run_and_starts_nothing_without_etcd() {
    let etcd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    etcd.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", etcd.local_addr().unwrap());
    let desk = Desk::with_options(
        &unique("qs_cluster"),
        &[&*unique("CL1")],
        &[],
        &format!("\n[cluster]\nendpoints = [\"{endpoint}\"]\n"),
    );
    let text = std::fs::read_to_string(desk.config()).unwrap();
    let line = text.lines().position(|l| l == "[cluster]").unwrap() + 1;
    master_launch(&desk).arg("--dry-run").assert().success();
    master_launch(&desk)
        .args(["run", &*unique("BRAIN_CL1")])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "fleet.toml:{line}: [cluster]"
        )))
        .stderr(predicate::str::contains("does not take cluster locks yet"))
        .stderr(predicate::str::contains("remove the [cluster] table"));
    assert!(
        matches!(etcd.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a dry run or a refused run connected to the cluster endpoint"
    );
    drop(etcd);
    master_launch(&desk)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot reach etcd at"));
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
}

/// Runs everywhere, under Wine too: the two-account desk of the Windows lane.
#[test]
fn a_desk_starts_once_a_second_master_launch_refuses_and_a_stop_all_ends_it() {
    let desk = Desk::with_options(
        &unique("qs_twice"),
        &[&*unique("TWICE1"), &*unique("TWICE2")],
        &[],
        QUICK_STOP,
    );
    let mut first = launch(&desk, &[]);
    first.wait_started();
    let snap = wait_all_running(&desk);
    // Every child knows who it is. The bot writes that line after it has exec'd, and
    // the supervisor copies it into the log a moment later.
    wait_until("the brain to say who it is in its log", || {
        std::fs::read_to_string(
            desk.dir
                .path()
                .join(&*format!("{}.log", unique("logs/BRAIN_TWICE2"))),
        )
        .is_ok_and(|log| {
            log.contains(&*format!(
                "lock {} account {}",
                unique("BRAIN_TWICE2"),
                unique("TWICE2")
            ))
        })
    });
    master_launch(&desk)
        .assert()
        .code(3)
        .stderr(predicate::str::contains(format!(
            "MASTER_LAUNCH is held by pid {}",
            first.pid()
        )));
    assert_eq!(
        running_pids(&desk.snapshot()),
        running_pids(&snap),
        "the refusal changed the desk"
    );
    let pids = running_pids(&snap);
    assert_eq!(first.stop_all(), 0);
    wait_gone(&pids);
    desk.assert_no_lock_left("after the stop");
}

#[test]
fn a_held_lock_makes_it_refuse_and_start_nothing() {
    let desk = Desk::new(&unique("qs_held"), &[&*unique("HELD1"), &*unique("HELD2")]);
    let _by_hand = desk.start_locked(&unique("WATCHDOG_HELD2"), &[]);
    let output = master_launch(&desk).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(
        text.contains(&*unique("WATCHDOG_HELD2")) && text.contains("lock running held"),
        "{text}"
    );
    assert!(text.contains("safe-shutdown"), "{text}");
    let snap = desk.snapshot();
    for view in &snap.components {
        let expected = usize::from(view.component.lock_name == *unique("WATCHDOG_HELD2"));
        assert_eq!(
            view.copies.len(),
            expected,
            "{} was started",
            view.component.lock_name
        );
    }
    assert_eq!(
        desk.lock_files(),
        [&*format!("{}.lock", unique("WATCHDOG_HELD2"))]
    );
}

#[test]
fn an_unlocked_copy_started_by_hand_makes_it_refuse_and_start_nothing() {
    let desk = Desk::new(&unique("qs_hand"), &[&*unique("HAND1")]);
    let stray = desk.start_by_hand(&unique("BRAIN_HAND1"));
    let output = master_launch(&desk).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(
        text.contains("running without its lock") && text.contains(&stray.pid().to_string()),
        "{text}"
    );
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
    assert_eq!(running_pids(&desk.snapshot()), [stray.pid()]);
}

#[test]
fn stale_locks_are_cleaned_and_stale_stop_requests_ignored() {
    let desk = Desk::new(&unique("qs_clean"), &[&*unique("CLEAN1")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    std::fs::write(desk.lock_path(&unique("BRAIN_CLEAN1")), b"garbage").unwrap();
    // Stop requests left by a requester that died: not for this start.
    for name in ["MASTER_LAUNCH", &*unique("WATCHDOG_CLEAN1")] {
        lockcore::StopRequest::new(name, Duration::from_secs(1))
            .write(&desk.lock_dir())
            .unwrap();
    }
    let launcher = launch(&desk, &[]);
    assert!(
        launcher
            .lines
            .wait_for(
                &format!("cleaned corrupt lock {}", unique("BRAIN_CLEAN1")),
                Duration::from_secs(30)
            )
            .is_some()
    );
    launcher.wait_started();
    wait_all_running(&desk);
    // Still running after several looks at the lock dir.
    std::thread::sleep(Duration::from_millis(1000));
    wait_all_running(&desk);
    assert!(!desk.lock_dir().join("MASTER_LAUNCH.stop").exists());
    assert!(
        !desk
            .lock_dir()
            .join(&*format!("{}.stop", unique("WATCHDOG_CLEAN1")))
            .exists()
    );
}

#[test]
fn a_killed_child_is_restarted_under_the_same_lock() {
    // `always`: Wine's `taskkill /F` leaves exit code 0, which `on-failure` would accept.
    let desk = Desk::with_options(
        &unique("qs_restart"),
        &[&*unique("RESTART1")],
        &[],
        &format!("{QUICK_STOP}restart = \"always\"\n"),
    );
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let snap = wait_all_running(&desk);
    let brain = snap.component(&unique("BRAIN_RESTART1")).unwrap();
    let old_pid = brain.managed.as_ref().unwrap().pid;
    let holder = brain
        .lock
        .as_ref()
        .unwrap()
        .record
        .as_ref()
        .unwrap()
        .holder_pid;
    fleet_tests::force_kill(old_pid);
    assert!(
        launcher
            .lines
            .wait_for(
                &format!("{}: restarting", unique("BRAIN_RESTART1")),
                Duration::from_secs(10)
            )
            .is_some()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snap = desk.snapshot();
        let view = snap.component(&unique("BRAIN_RESTART1")).unwrap();
        if let Some(managed) = view.managed.as_ref().filter(|m| m.pid != old_pid) {
            let record = view.lock.as_ref().unwrap().record.as_ref().unwrap();
            assert_eq!(record.holder_pid, holder, "the lock changed hands");
            assert_eq!(record.holder_pid, Some(launcher.pid()));
            assert_eq!(view.copies.len(), 1);
            assert_ne!(managed.pid, old_pid);
            break;
        }
        assert!(Instant::now() < deadline, "never restarted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(launcher.stop_desk(), 0);
}

#[test]
fn a_crash_looping_child_is_given_up_while_the_rest_keep_running() {
    let desk = Desk::with_options(
        &unique("qs_loop"),
        &[&*unique("LOOP1")],
        &[],
        &format!("brain_match = [\"{}\"]\n", unique("BRAIN_LOOP1")),
    );
    // Make the brain crash at once, and restarts quick, by editing the config.
    let text = std::fs::read_to_string(desk.config()).unwrap().replace(
        &*format!("\"{}\"]\nwatchdog", unique("BRAIN_LOOP1")),
        &format!(
            "\"{}\", \"--crash-after-ms\", \"50\"]\nwatchdog",
            unique("BRAIN_LOOP1")
        ),
    ) + "\n[defaults]\nrestart_delay_ms = 50\ngive_up_after = 3\nstop_timeout_secs = 2\n";
    std::fs::write(desk.config(), text).unwrap();
    let launcher = launch(&desk, &[]);
    let line = launcher
        .lines
        .wait_for("GIVING UP", Duration::from_secs(30));
    assert!(line.unwrap().contains(&*unique("BRAIN_LOOP1")));
    // The line comes first, the release right after it.
    wait_until("the lock to be released after giving up", || {
        released(&desk.snapshot(), &unique("BRAIN_LOOP1"))
    });
    let snap = desk.snapshot();
    for name in [&*unique("qs_loop"), &*unique("WATCHDOG_LOOP1")] {
        let view = snap.component(name).unwrap();
        assert_eq!(view.copies.len(), 1, "{name} stopped too");
        assert!(view.copies[0].locked);
    }
    // Its exit code says it ended with a component given up.
    assert_eq!(launcher.stop_desk(), 1);
}

// Unix-only: it sends SIGINT; a test cannot type Ctrl+C into master-launch's console.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_brains_then_watchdogs_then_globals_and_leaves_nothing() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_order"),
        &[&*unique("ORDER1"), &*unique("ORDER2")],
        &["--exit-log", &exit_log.arg, "--stop-delay-ms", "200"],
        "",
    );
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let pids = running_pids(&wait_all_running(&desk));
    assert_eq!(launcher.stop("-INT"), 0);
    wait_gone(&pids);
    assert!(desk.lock_files().is_empty());
    let exits = exit_log.times();
    let latest = |prefix: &str| {
        exits
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| *t)
            .max()
            .unwrap()
    };
    let earliest = |prefix: &str| {
        exits
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| *t)
            .min()
            .unwrap()
    };
    assert_eq!(exits.len(), 5, "{exits:?}");
    assert!(latest("BRAIN_") <= earliest("WATCHDOG_"), "{exits:?}");
    assert!(
        latest("WATCHDOG_") <= earliest(&unique("qs_order")),
        "{exits:?}"
    );
}

// Linux-only: the parent-death signal. On Windows the Job Object does this job
// (checked by hand under Wine, see docs/reference.md).
#[cfg(target_os = "linux")]
#[test]
fn a_launcher_killed_with_sigkill_takes_its_children_along() {
    let desk = Desk::new(&unique("qs_sigkill"), &[&*unique("SIGKILL1")]);
    let mut launcher = launch(&desk, &[]);
    launcher.wait_started();
    let pids = running_pids(&wait_all_running(&desk));
    launcher.running.kill();
    wait_gone(&pids);
    // Every lock is free: the next desk starts cleanly.
    let next = launch(&desk, &[]);
    next.wait_started();
    wait_all_running(&desk);
    assert_eq!(next.stop("-TERM"), 0);
}

/// Eight master-launch at the same instant, 50 rounds (4 under Wine): one runs the desk,
/// the other seven refuse with exit 3, and each component runs exactly once.
#[test]
fn eight_concurrent_master_launches_start_the_desk_exactly_once() {
    let desk = Desk::with_options(
        &unique("qs_eight"),
        &[&*unique("EIGHT1"), &*unique("EIGHT2")],
        &[],
        QUICK_STOP,
    );
    // Under Wine a round takes some 30 s (slow process starts, forced stops).
    let rounds = fleet_tests::wine::race_rounds(50, 4);
    for round in 0..rounds {
        let mut launchers: Vec<Launched> = (0..8).map(|_| launch(&desk, &[])).collect();
        let mut refused;
        let deadline = Instant::now() + Duration::from_secs(60);
        let winner = loop {
            let mut live = Vec::new();
            for (i, l) in launchers.iter_mut().enumerate() {
                match l.running.child.try_wait().unwrap() {
                    Some(status) => assert_eq!(status.code(), Some(3), "round {round}"),
                    None => live.push(i),
                }
            }
            refused = launchers.len() - live.len();
            if refused == 7 {
                break live[0];
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {refused} refused"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(refused, 7);
        let winner = launchers.swap_remove(winner);
        winner.wait_started();
        let snap = wait_all_running(&desk);
        assert_eq!(running_pids(&snap).len(), 5, "round {round}");
        let pids = running_pids(&snap);
        assert_eq!(winner.stop_desk(), 0);
        wait_gone(&pids);
        desk.assert_no_lock_left(&format!("round {round}"));
    }
}

// Unix-only: it ends the runner with SIGINT (Ctrl+C).
#[cfg(unix)]
#[test]
fn run_starts_one_component_by_hand_under_its_lock() {
    let desk = Desk::new(&unique("qs_run"), &[&*unique("RUN1")]);
    // This is about the runner, not DESIGN.md rule 13 (see the tests after it).
    desk.allow_brains_alone();
    let runner = launch(&desk, &["run", &*unique("BRAIN_RUN1")]);
    // The bot itself says who it is, from FLEET_* variables.
    let line = runner
        .lines
        .wait_for("started pid", Duration::from_secs(30))
        .unwrap();
    assert!(
        line.contains(&*format!(
            "lock {} account {}",
            unique("BRAIN_RUN1"),
            unique("RUN1")
        )),
        "{line}"
    );
    // The runner records the bot's pid just after starting it.
    wait_until("the lock to record the bot", || {
        desk.snapshot()
            .component(&unique("BRAIN_RUN1"))
            .is_some_and(|v| v.managed.is_some())
    });
    let snap = desk.snapshot();
    let view = snap.component(&unique("BRAIN_RUN1")).unwrap();
    assert_eq!(view.copies.len(), 1);
    assert!(view.copies[0].locked);
    let record = view.lock.as_ref().unwrap().record.as_ref().unwrap();
    assert_eq!(record.holder_pid, Some(runner.pid()));
    let bot = view.managed.as_ref().unwrap().pid;
    // A double-click on the same wrapper is refused.
    master_launch(&desk)
        .args(["run", &*unique("BRAIN_RUN1")])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(format!(
            "{} is held by pid {bot}",
            unique("BRAIN_RUN1")
        )));
    assert_eq!(runner.stop("-INT"), 0);
    wait_gone(&[bot]);
    assert!(desk.lock_files().is_empty());
    master_launch(&desk)
        .args(["run", "BRAIN_NOPE"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no component named BRAIN_NOPE"));
}

/// What `safe-shutdown --account X` does: a stop request per component. The account
/// stops, is not restarted, and the rest keep running.
#[test]
fn a_stop_request_stops_one_account_for_good_while_the_rest_keep_running() {
    let desk = Desk::with_options(
        &unique("qs_req"),
        &[&*unique("REQ1"), &*unique("REQ2")],
        &[],
        QUICK_STOP,
    );
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let before = wait_all_running(&desk);
    let req2_before: Vec<u32> = fleet_tests::managed_pids(
        &before,
        &[
            &*unique("qs_req"),
            &*unique("WATCHDOG_REQ2"),
            &*unique("BRAIN_REQ2"),
        ],
    );
    for name in [&*unique("BRAIN_REQ1"), &*unique("WATCHDOG_REQ1")] {
        lockcore::StopRequest::new(name, Duration::from_secs(5))
            .write(&desk.lock_dir())
            .unwrap();
    }
    wait_until(
        &format!("{} to stop and its requests to be cleared", unique("REQ1")),
        || {
            let snap = desk.snapshot();
            [&*unique("BRAIN_REQ1"), &*unique("WATCHDOG_REQ1")]
                .iter()
                .all(|n| {
                    let view = snap.component(n).unwrap();
                    view.copies.is_empty() && released(&snap, n)
                })
                && !desk
                    .lock_dir()
                    .join(&*format!("{}.stop", unique("BRAIN_REQ1")))
                    .exists()
        },
    );
    // Well past the restart delay: still stopped, and REQ2 untouched.
    std::thread::sleep(Duration::from_millis(2500));
    let after = desk.snapshot();
    for name in [&*unique("BRAIN_REQ1"), &*unique("WATCHDOG_REQ1")] {
        assert!(
            after.component(name).unwrap().copies.is_empty(),
            "{name} was restarted"
        );
    }
    let req2_after: Vec<u32> = fleet_tests::managed_pids(
        &after,
        &[
            &*unique("qs_req"),
            &*unique("WATCHDOG_REQ2"),
            &*unique("BRAIN_REQ2"),
        ],
    );
    assert_eq!(req2_before, req2_after);
    // A lock check ran since (every 2 s): its own releases are not losses.
    let log = desk.master_log();
    assert!(!log.contains("LOCK LOST"), "{log}");
    assert_eq!(launcher.stop_desk(), 0);
}

/// A stop-all request: the orchestrator stops everything in the safe order and exits.
#[test]
fn a_stop_all_request_stops_the_desk_in_order_and_exits() {
    if fleet_tests::wine::skip_under_wine(
        "a_stop_all_request_stops_the_desk_in_order_and_exits",
        "Wine does not deliver CTRL_BREAK to the bots, so they are forced at the deadline \
         and log no graceful exit to order",
    ) {
        return;
    }
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_all"),
        &[&*unique("ALL1")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    let mut launcher = launch(&desk, &[]);
    launcher.wait_started();
    let pids = running_pids(&wait_all_running(&desk));
    assert_eq!(launcher.stop_all(), 0);
    wait_gone(&pids);
    desk.assert_no_lock_left("after the stop");
    assert!(!desk.lock_dir().join("MASTER_LAUNCH.stop").exists());
    let exits = exit_log.times();
    let names: Vec<&str> = exits.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            &*unique("BRAIN_ALL1"),
            &*unique("WATCHDOG_ALL1"),
            &*unique("qs_all")
        ],
        "{exits:?}"
    );
}

/// A bot that ignores the graceful stop is forced at the request's deadline.
#[test]
fn a_stubborn_bot_is_forced_at_the_request_deadline() {
    let desk = Desk::with_options(
        &unique("qs_stub"),
        &[&*unique("STUB1")],
        &["--ignore-stop"],
        "",
    );
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let snap = wait_all_running(&desk);
    let brain = snap
        .component(&unique("BRAIN_STUB1"))
        .unwrap()
        .managed
        .as_ref()
        .unwrap()
        .pid;
    let asked = Instant::now();
    lockcore::StopRequest::new(&unique("BRAIN_STUB1"), Duration::from_secs(2))
        .write(&desk.lock_dir())
        .unwrap();
    wait_gone(&[brain]);
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "not graceful first: {took:?}"
    );
    assert!(
        launcher
            .lines
            .wait_for("did not stop in time", Duration::from_secs(5))
            .is_some()
    );
    // The supervisor releases the lock once it has reaped the forced child.
    wait_until("the lock to be released after the forced stop", || {
        released(&desk.snapshot(), &unique("BRAIN_STUB1"))
    });
    // Dropping the launcher kills master-launch; its stubborn children go with it.
}

#[test]
fn a_stop_request_stops_a_hand_started_component() {
    let desk = Desk::new(&unique("qs_runreq"), &[&*unique("RUNREQ")]);
    let mut runner = launch(&desk, &["run", &*unique("WATCHDOG_RUNREQ")]);
    wait_until("the watchdog to run under its lock", || {
        desk.snapshot()
            .component(&unique("WATCHDOG_RUNREQ"))
            .unwrap()
            .managed
            .is_some()
    });
    lockcore::StopRequest::new(&unique("WATCHDOG_RUNREQ"), Duration::from_secs(5))
        .write(&desk.lock_dir())
        .unwrap();
    let mut status = None;
    wait_until("the runner to exit", || {
        status = runner.running.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
    desk.assert_no_lock_left("after the stop");
    assert!(
        !desk
            .lock_dir()
            .join(&*format!("{}.stop", unique("WATCHDOG_RUNREQ")))
            .exists()
    );
}

/// docs/reference.md: stop requests left from before a start are "cleared, and logged, when
/// master-launch or `run` takes the locks". `run` clears its component's request
/// (it is not obeyed: the bot keeps running) and says so in master-launch.log.
#[test]
fn run_clears_a_request_left_from_before_its_start_and_logs_it() {
    let desk = Desk::new(&unique("qs_runold"), &[&*unique("RUNOLD")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    lockcore::StopRequest::new(&unique("WATCHDOG_RUNOLD"), Duration::from_secs(1))
        .write(&desk.lock_dir())
        .unwrap();
    let mut runner = launch(&desk, &["run", &*unique("WATCHDOG_RUNOLD")]);
    wait_until("the watchdog to run under its lock", || {
        desk.snapshot()
            .component(&unique("WATCHDOG_RUNOLD"))
            .unwrap()
            .managed
            .is_some()
    });
    assert!(
        !desk
            .lock_dir()
            .join(&*format!("{}.stop", unique("WATCHDOG_RUNOLD")))
            .exists()
    );
    // Several looks at the lock dir later, it still runs.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(runner.running.child.try_wait().unwrap().is_none());
    assert!(
        desk.snapshot()
            .component(&unique("WATCHDOG_RUNOLD"))
            .unwrap()
            .managed
            .is_some()
    );
    let log = desk.master_log();
    assert!(
        log.contains(&*format!(
            "cleared a stop request for {} left from before this start",
            unique("WATCHDOG_RUNOLD")
        )),
        "{log}"
    );
    lockcore::StopRequest::new(&unique("WATCHDOG_RUNOLD"), Duration::from_secs(5))
        .write(&desk.lock_dir())
        .unwrap();
    let mut status = None;
    wait_until("the runner to exit", || {
        status = runner.running.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
}

/// `run NAME` (what every START_<NAME>.bat calls) refuses beside a copy started by
/// hand without a lock, names it, starts nothing and leaves no lock behind.
#[test]
fn run_refuses_beside_an_unlocked_copy_and_names_it() {
    let desk = Desk::new(&unique("qs_runcopy"), &[&*unique("RUNCOPY")]);
    let by_hand = desk.start_by_hand(&unique("BRAIN_RUNCOPY"));
    master_launch(&desk)
        .args(["run", &*unique("BRAIN_RUNCOPY")])
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains("running without its lock")
                .and(predicate::str::contains(by_hand.pid().to_string())),
        );
    let snap = desk.snapshot();
    let view = snap.component(&unique("BRAIN_RUNCOPY")).unwrap();
    assert_eq!(view.copies.len(), 1, "a second brain was started");
    assert!(view.lock.is_none(), "the refused run left its lock file");
    let log = std::fs::read_to_string(desk.dir.path().join("logs/master-launch.log")).unwrap();
    assert!(
        log.contains(&*format!("refused: {}", unique("BRAIN_RUNCOPY"))),
        "{log}"
    );
}

/// DESIGN.md rule 17: a second folder with the same desk (a copied desk folder) shares
/// its lock names but not its lock folder; while the first desk runs, neither `run`
/// nor master-launch from the second starts a component the first runs, and `run`'s
/// refusal names the first desk's master-launch. On Windows (under Wine) this is the
/// locked file under `%ProgramData%\desk-tools\locks`.
#[test]
fn a_second_folder_of_the_desk_cannot_run_what_the_first_runs() {
    // Unique to this run: the names are machine-wide.
    let tag = format!("CPY{}", std::process::id());
    let first = Desk::with_options(&format!("qs_{tag}"), &[&tag], &[], QUICK_STOP);
    let second = Desk::with_options(&format!("qs_{tag}"), &[&tag], &[], QUICK_STOP);
    let mut launcher = launch(&first, &[]);
    launcher.wait_started();
    let snap = wait_all_running(&first);
    let brain = format!("BRAIN_{tag}");
    master_launch(&second)
        .args(["run", &brain])
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains(format!(
                "{brain} is held on this machine by pid {}",
                launcher.pid()
            ))
            .and(predicate::str::contains("copied desk folder")),
        );
    // master-launch's pre-flight looks at the process table first and finds them.
    master_launch(&second).assert().code(3).stderr(
        predicate::str::contains(brain.as_str())
            .and(predicate::str::contains("nothing was started")),
    );
    assert_eq!(
        running_pids(&first.snapshot()),
        running_pids(&snap),
        "the refusals changed the first desk"
    );
    assert!(second.lock_files().is_empty(), "{:?}", second.lock_files());
    assert_eq!(launcher.stop_all(), 0);
}

/// Windows: a logoff, restart or shutdown. master-launch says at start that it is told
/// before its bots (its shutdown level read back); the session's end messages to its
/// hidden window (sent as Windows and `wineboot --end-session` send them, to this
/// process alone) stop the desk in order, and `WM_ENDSESSION` returns only once
/// nothing of the desk runs.
#[cfg(windows)]
#[test]
fn a_session_end_stops_the_desk_in_order_before_it_returns() {
    let tag = format!("SES{}", std::process::id());
    let accounts = [format!("{tag}A"), format!("{tag}B")];
    let global = format!("qs_{tag}");
    let desk = Desk::with_options(&global, &[&accounts[0], &accounts[1]], &[], QUICK_STOP);
    let mut launcher = launch(&desk, &[]);
    launcher.wait_started();
    let pids = running_pids(&wait_all_running(&desk));
    let log = desk.master_log();
    assert!(
        log.contains("master-launch is told before its bots (shutdown level 0x3ff)"),
        "{log}"
    );
    let ended = Command::new(fleet_tests::tool("fleet-tests", "end-session"))
        .arg(launcher.pid().to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ended.stdout).into_owned();
    assert!(ended.status.success(), "{said}{:?}", ended.stderr);
    assert!(
        said.contains("answer 1") && said.contains("ended"),
        "{said}"
    );
    // Nothing of the desk runs once WM_ENDSESSION has returned.
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| running_pids(&desk.snapshot()).contains(pid))
        .collect();
    assert!(
        left.is_empty(),
        "still running after WM_ENDSESSION: {left:?}"
    );
    launcher.wait_exit();
    let log = desk.master_log();
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("the log has no `{what}`: {log}"))
    };
    for account in &accounts {
        assert!(
            at(&format!("BRAIN_{account}: exited")) < at(&format!("WATCHDOG_{account}: exited")),
            "{log}"
        );
        assert!(
            at(&format!("WATCHDOG_{account}: exited")) < at(&format!("{global}: exited")),
            "{log}"
        );
    }
    desk.assert_no_lock_left("after the session end");
}

/// The Job Object binds a child from its first instruction: a launcher that starts
/// the real bot at once (a venv `python.exe`) is bound with it, so when master-launch
/// is killed outright (TerminateProcess, no stop handler) both die. Windows only:
/// on Linux the parent-death signal binds the direct child alone.
#[cfg(windows)]
#[test]
fn a_grandchild_started_at_once_is_bound_with_the_child() {
    let desk = Desk::with_extra(
        &*unique("qs_jobtree"),
        &[&*unique("JOBTREE")],
        "env = { STANDIN_LAUNCHER = \"1\" }\nbrain_requires_watchdog = false",
    );
    let mut runner = launch(&desk, &["run", &*unique("BRAIN_JOBTREE")]);
    let mut pids = Vec::new();
    wait_until("the launcher and its bot to run", || {
        let snap = desk.snapshot();
        pids = snap
            .component(&*unique("BRAIN_JOBTREE"))
            .map(|v| v.copies.iter().flat_map(|c| c.tree.pids()).collect())
            .unwrap_or_default();
        pids.len() == 2
    });
    runner.running.kill();
    wait_gone(&pids);
}

/// A start that fails at its third component (its log file cannot be opened): the
/// two already started get graceful stops in the safe order, every lock goes, and the
/// error names the path, exit 2.
// Unix-only: the bots' graceful exits (SIGTERM) are part of what it checks.
#[cfg(unix)]
#[test]
fn a_start_that_fails_part_way_stops_what_it_started_in_order() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_halfway"),
        &[&*unique("HALF")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    // Global, watchdog, brain: the brain's log is a folder.
    std::fs::create_dir_all(
        desk.dir
            .path()
            .join(&*format!("{}.log", unique("logs/BRAIN_HALF"))),
    )
    .unwrap();
    let output = master_launch(&desk).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&*format!("{}.log", unique("BRAIN_HALF"))),
        "{stderr}"
    );
    // Both were asked to stop, in order, and none had to be forced. (A bot stopped in
    // its first milliseconds may not have its stop handler yet: it then ends without
    // logging its graceful exit; any exit it logged comes in the safe order.)
    let log = desk.master_log();
    let watchdog = log.find(&*format!("{}: exited", unique("WATCHDOG_HALF")));
    let global = log.find(&*format!("{}: exited", unique("qs_halfway")));
    assert!(
        watchdog.is_some() && global.is_some() && watchdog < global,
        "not both stopped, or out of order: {log}"
    );
    for name in [&*unique("WATCHDOG_HALF"), &*unique("qs_halfway")] {
        assert!(log.contains(&format!("{name}: stopped (Stopped)")), "{log}");
    }
    assert!(!log.contains("did not stop in time"), "{log}");
    let names: Vec<String> = exit_log.times().into_iter().map(|(n, _)| n).collect();
    let expected = [&*unique("WATCHDOG_HALF"), &*unique("qs_halfway")];
    assert!(
        expected.windows(2).all(|pair| {
            let at = |n: &str| names.iter().position(|x| x == n);
            at(pair[0]).zip(at(pair[1])).is_none_or(|(a, b)| a < b)
        }),
        "out of order: {names:?}"
    );
    desk.assert_no_lock_left("after a failed start");
    assert!(
        desk.snapshot()
            .components
            .iter()
            .all(|v| v.copies.is_empty())
    );
}

/// SIGTERM with a brain that ignores it and `stop_timeout_secs = 2`: the brain is
/// forced at its own timeout, 2 s, not later.
// Unix-only: it sends SIGTERM.
#[cfg(unix)]
#[test]
fn sigterm_forces_a_stubborn_brain_at_its_own_timeout() {
    let desk = Desk::with_options(&unique("qs_ownto"), &[&*unique("OWNTO")], &[], QUICK_STOP);
    desk.add_args(&[&*unique("BRAIN_OWNTO")], &["--ignore-stop"]);
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    wait_all_running(&desk);
    let started = Instant::now();
    assert_eq!(launcher.stop("-TERM"), 0);
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(4)).contains(&took),
        "stopped in {took:?}, the brain's timeout is 2 s"
    );
    let log = desk.master_log();
    assert!(
        log.contains(&*format!("{} (pid", unique("BRAIN_OWNTO"))),
        "{log}"
    );
    assert_eq!(log.matches("did not stop in time").count(), 1, "{log}");
    desk.assert_no_lock_left("after SIGTERM");
}

/// `master-launch | head -n 1`: the reader takes one line and goes. The log lines that
/// follow meet a closed pipe; the desk keeps running, and SIGTERM still stops it in
/// the safe order.
// Unix-only: it sends SIGTERM and checks graceful exits.
#[cfg(unix)]
#[test]
fn a_closed_stdout_does_not_stop_the_desk() {
    use std::io::BufRead;
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_pipe"),
        &[&*unique("PIPE1")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    let mut child = master_launch(&desk)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    drop(reader);
    let mut launcher = Running::new(child);
    wait_all_running(&desk);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        launcher.child.try_wait().unwrap().is_none(),
        "master-launch died of its closed stdout"
    );
    let snap = wait_all_running(&desk);
    assert_eq!(running_pids(&snap).len(), 3);
    let status = Command::new("kill")
        .args(["-TERM", &launcher.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(launcher.child.wait().unwrap().code(), Some(0));
    let names: Vec<String> = exit_log.times().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            &*unique("BRAIN_PIPE1"),
            &*unique("WATCHDOG_PIPE1"),
            &*unique("qs_pipe")
        ]
    );
    desk.assert_no_lock_left("after SIGTERM");
}

/// master-launch in a terminal that closes (an SSH or tmux session ends): the hangup
/// means "stop in order", like Ctrl+C; nothing of the stop needs the terminal.
// Unix-only: a pseudo-terminal through Python's `pty`.
#[cfg(unix)]
#[test]
fn a_closed_terminal_stops_the_desk_in_order() {
    const SCRIPT: &str = r#"
import os, pty, select, sys, time
go = sys.argv.pop(1)
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
deadline = time.time() + 30
while not os.path.exists(go) and time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            os.read(fd, 4096)
        except OSError:
            break
os.close(fd)
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status), flush=True)
"#;
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_tty"),
        &[&*unique("TTY1")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    let go = desk.dir.path().join("close-the-terminal");
    let terminal = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&go)
        .arg(fleet_tests::tool("master-launch", "master-launch"))
        .arg("--config")
        .arg(desk.config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every bot up, its stop handler installed (it logs "started" after that).
    wait_until("every bot to have started", || {
        [
            &*unique("BRAIN_TTY1"),
            &*unique("WATCHDOG_TTY1"),
            &*unique("qs_tty"),
        ]
        .iter()
        .all(|name| {
            std::fs::read_to_string(desk.dir.path().join(format!("logs/{name}.log")))
                .is_ok_and(|log| log.contains("started pid"))
        })
    });
    std::fs::write(&go, b"").unwrap();
    let output = terminal.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("exit 0"),
        "{said} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: Vec<String> = exit_log.times().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            &*unique("BRAIN_TTY1"),
            &*unique("WATCHDOG_TTY1"),
            &*unique("qs_tty")
        ]
    );
    desk.assert_no_lock_left("after the terminal closed");
    assert!(
        desk.snapshot()
            .components
            .iter()
            .all(|v| v.copies.is_empty())
    );
    let log = desk.master_log();
    assert!(
        log.contains("stopping the desk") && log.contains("desk stopped"),
        "{log}"
    );
}

/// A bot's non-ASCII output reaches its log intact, and every child is told to write
/// UTF-8, unbuffered (PYTHONIOENCODING, PYTHONUNBUFFERED) unless fleet.toml says else.
#[test]
fn non_ascii_output_reaches_the_log_and_children_get_utf8() {
    let desk = Desk::with_options(&unique("qs_utf8"), &[&*unique("UTF1")], &[], QUICK_STOP);
    desk.add_args(&[&*unique("BRAIN_UTF1")], &["--say", "ордер → исполнен ✓"]);
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let log_path = desk
        .dir
        .path()
        .join(&*format!("{}.log", unique("logs/BRAIN_UTF1")));
    wait_until("the brain's line in its log", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.contains("ордер → исполнен ✓"))
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("PYTHONIOENCODING=utf-8 PYTHONUNBUFFERED=1"),
        "{log}"
    );
    assert_eq!(launcher.stop_desk(), 0);
}

/// Table row: `MASTER_LAUNCH.lock` (or `BRAIN_X.lock` before `run BRAIN_X`) a symlink
/// to another file: master-launch wrote its record through the link. Now it refuses,
/// and the linked file and the link stay as they were.
#[cfg(unix)]
#[test]
fn a_symlink_at_a_lock_name_is_never_written_through() {
    let desk = Desk::new(&unique("qs_link"), &[&*unique("LINK1")]);
    let locks = desk.lock_dir();
    std::fs::create_dir_all(&locks).unwrap();
    let victim = desk.config().with_file_name("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    for (name, args) in [
        ("MASTER_LAUNCH", vec![]),
        (
            &*unique("BRAIN_LINK1"),
            vec!["run", &*unique("BRAIN_LINK1")],
        ),
    ] {
        let link = locks.join(format!("{name}.lock"));
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let output = assert_cmd::Command::from_std({
            let mut command = master_launch(&desk);
            command.args(&args).stdin(Stdio::null());
            command
        })
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{name}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{name}: {stderr}");
        assert!(stderr.contains("symbolic link"), "{name}: {stderr}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{name}");
        assert!(
            link.is_symlink(),
            "{name}: the link was removed or replaced"
        );
        std::fs::remove_file(&link).unwrap();
    }
    assert!(
        running_pids(&desk.snapshot()).is_empty(),
        "something started"
    );
}

/// Table rows: a FIFO named `junk.lock` hung master-launch's pre-flight; a FIFO named
/// `<NAME>.stop` hung its main loop (SIGTERM, stop requests and lock checks waited for
/// a writer). Now it starts, acts on signals and requests, and stops in order.
#[cfg(unix)]
#[test]
fn fifos_in_the_lock_dir_never_hang_the_orchestrator() {
    let desk = Desk::with_options(&unique("qs_fifo"), &[&*unique("FIFO1")], &[], QUICK_STOP);
    let locks = desk.lock_dir();
    std::fs::create_dir_all(&locks).unwrap();
    let mkfifo = |name: &str| {
        assert!(
            Command::new("mkfifo")
                .arg(locks.join(name))
                .status()
                .unwrap()
                .success()
        );
    };
    mkfifo("junk.lock");
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let pids = running_pids(&wait_all_running_but(&desk, &["not_a_file"]));
    mkfifo(&format!("{}.stop", unique("BRAIN_FIFO1")));
    mkfifo("MASTER_LAUNCH.stop");
    // Several ticks with the FIFOs in place: still supervising, nothing stopped.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(running_pids(&desk.snapshot()), pids);
    let asked = Instant::now();
    assert_eq!(launcher.stop_desk(), 0);
    assert!(asked.elapsed() < Duration::from_secs(30));
    wait_gone(&pids);
}

/// [`wait_all_running`], allowing problems of the given kinds (an entry the test put
/// in the lock dir on purpose).
#[cfg(unix)]
fn wait_all_running_but(desk: &Desk, allowed: &[&str]) -> DeskSnapshot {
    let mut snap = desk.snapshot();
    wait_until("every component to run under its lock", || {
        snap = desk.snapshot();
        snap.components
            .iter()
            .filter(|v| v.component.enabled)
            .all(|v| v.copies.len() == 1 && v.copies[0].locked && v.managed.is_some())
            && snap
                .problems
                .iter()
                .all(|p| allowed.contains(&p.kind.as_str()))
    });
    snap
}

/// Table row: a stop request without `requested_by` counted as unreadable, its deadline
/// became 0, and a bot asked to stop within 10 s was forced after 1 s. Now a missing
/// deadline means the component's stop_timeout_secs: the slow bot stops gracefully.
#[test]
fn a_stop_request_without_requester_or_deadline_gets_the_full_stop_timeout() {
    if fleet_tests::wine::skip_under_wine(
        "a_stop_request_without_requester_or_deadline_gets_the_full_stop_timeout",
        "Wine does not deliver CTRL_BREAK to the bots: no graceful exit to log",
    ) {
        return;
    }
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_noreq"),
        &[&*unique("NOREQ1")],
        &["--stop-delay-ms", "2500", "--exit-log", &exit_log.arg],
        "[defaults]\nstop_timeout_secs = 10\n",
    );
    let launcher = launch(&desk, &[]);
    launcher.wait_started();
    let snap = wait_all_running(&desk);
    let brain = snap
        .component(&unique("BRAIN_NOREQ1"))
        .unwrap()
        .managed
        .as_ref()
        .unwrap()
        .pid;
    std::fs::write(
        desk.lock_dir()
            .join(&*format!("{}.stop", unique("BRAIN_NOREQ1"))),
        format!(r#"{{"name": "{}"}}"#, unique("BRAIN_NOREQ1")),
    )
    .unwrap();
    wait_gone(&[brain]);
    let exits = exit_log.times();
    assert!(
        exits
            .iter()
            .any(|(name, _)| name == &*unique("BRAIN_NOREQ1")),
        "the brain was forced instead of stopping gracefully: {exits:?}"
    );
    assert!(
        launcher
            .lines
            .wait_for("stop requested by someone", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(launcher.stop_desk(), 0);
}

/// A stop request with a huge deadline panicked master-launch (overflow adding to an
/// Instant). Now the wait is clamped to a day: the graceful stop happens, no panic.
#[test]
fn a_stop_request_with_a_huge_deadline_does_not_panic() {
    let desk = Desk::with_options(
        &unique("qs_hugedl"),
        &[&*unique("HUGEDL1")],
        &[],
        QUICK_STOP,
    );
    let mut launcher = launch(&desk, &[]);
    launcher.wait_started();
    let snap = wait_all_running(&desk);
    let brain = snap
        .component(&unique("BRAIN_HUGEDL1"))
        .unwrap()
        .managed
        .as_ref()
        .unwrap()
        .pid;
    std::fs::write(
        desk.lock_dir()
            .join(&*format!("{}.stop", unique("BRAIN_HUGEDL1"))),
        format!(
            r#"{{"name": "{}", "deadline": 18446744073709551615, "requested_by": 4294967295}}"#,
            unique("BRAIN_HUGEDL1")
        ),
    )
    .unwrap();
    if cfg!(unix) {
        wait_gone(&[brain]);
    }
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        launcher.running.child.try_wait().unwrap().is_none(),
        "master-launch died"
    );
    assert_eq!(launcher.stop_all(), 0);
}

/// Table row: `cwd = "sub"` with `python = 'venv/py'`: the program was looked up
/// relative to `cwd` ("No such file or directory", a restart loop). A relative program
/// path resolves against the config file's folder; the working directory stays `cwd`.
#[test]
fn a_relative_program_path_resolves_against_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir
        .path()
        .join("venv")
        .join(format!("py{}", std::env::consts::EXE_SUFFIX));
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    std::fs::copy(fleet_tests::stand_in(), &program).unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[vars]\npython = 'venv/py{}'\n\n[[global]]\nname = \"relg\"\ncwd = \"sub\"\n\
             command = [\"{{python}}\", \"relg\"]\nstop_timeout_secs = 2\n",
            std::env::consts::EXE_SUFFIX
        ),
    )
    .unwrap();
    let mut child = Command::cargo_bin("master-launch")
        .unwrap()
        .arg("--config")
        .arg(&config)
        .args(["run", "relg"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = spawn_reader(child.stderr.take().unwrap());
    let mut runner = Running::new(child);
    let started = lines.wait_for("started under its lock", Duration::from_secs(30));
    let fleet = lockcore::Fleet::load(&config).unwrap();
    let mut probe = lockcore::ProcessProbe::new().unwrap();
    let snapshot = DeskSnapshot::take(&fleet, &mut probe).unwrap();
    runner.kill();
    assert!(started.is_some(), "the program was not found");
    let view = snapshot.component("relg").unwrap();
    assert_eq!(view.copies.len(), 1, "{:?}", snapshot.problems);
}

/// DESIGN.md rule 13 for a brain started by hand (`run`, what every START_ wrapper
/// calls without an orchestrator): refused (exit 3) while its watchdog is not
/// running, naming the watchdog and what to run, with nothing started and no lock
/// left; accepted once the watchdog runs. Unix-only: the runners end with SIGINT.
#[cfg(unix)]
#[test]
fn run_refuses_a_brain_whose_watchdog_is_not_running_and_starts_it_beside_one() {
    let desk = Desk::new(&unique("qs_rguard"), &[&*unique("RGUARD")]);
    // Bounded: a runner that wrongly starts the brain would never exit.
    let output = assert_cmd::Command::from_std({
        let mut command = master_launch(&desk);
        command
            .args(["run", &*unique("BRAIN_RGUARD")])
            .stdin(Stdio::null());
        command
    })
    .timeout(Duration::from_secs(60))
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "master-launch: refused: BRAIN_{account} may run only while its watchdog \
             WATCHDOG_{account} runs (a brain never trades unguarded), and WATCHDOG_{account} is not \
             running; nothing was started. Start it first: `master-launch run WATCHDOG_{account}` \
             (or START_WATCHDOG_{account}.bat), then run BRAIN_{account} again. An account that \
             trades without a watchdog says so in {}: brain_requires_watchdog = false under \
             [[account]] {account}.",
            desk.config().display(),
            account = unique("RGUARD")
        )
    );
    assert!(
        running_pids(&desk.snapshot()).is_empty(),
        "something started"
    );
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
    assert!(
        desk.master_log().contains(&*format!(
            "refused: {}: its watchdog {} is not running",
            unique("BRAIN_RGUARD"),
            unique("WATCHDOG_RGUARD")
        )),
        "{}",
        desk.master_log()
    );

    // With its watchdog running (by hand too), the brain starts.
    let watchdog = launch(&desk, &["run", &*unique("WATCHDOG_RGUARD")]);
    wait_until("the watchdog to run", || {
        desk.snapshot()
            .component(&unique("WATCHDOG_RGUARD"))
            .is_some_and(|v| v.managed.is_some())
    });
    let brain = launch(&desk, &["run", &*unique("BRAIN_RGUARD")]);
    wait_until("the brain to run beside its watchdog", || {
        desk.snapshot()
            .component(&unique("BRAIN_RGUARD"))
            .is_some_and(|v| v.managed.is_some())
    });
    let snap = desk.snapshot();
    assert!(
        snap.problems.is_empty(),
        "{:?}",
        snap.problems.iter().map(|p| &p.message).collect::<Vec<_>>()
    );
    assert_eq!(brain.stop("-INT"), 0);
    assert_eq!(watchdog.stop("-INT"), 0);
    desk.assert_no_lock_left("after both runners stopped");
}

/// An account whose config lets its brain run without a watchdog
/// (`brain_requires_watchdog = false`): `run BRAIN` starts it alone.
#[cfg(unix)]
#[test]
fn run_starts_a_brain_alone_where_its_account_allows_it() {
    let desk = Desk::with_extra(
        &unique("qs_ralone"),
        &[&*unique("RALONE")],
        "brain_requires_watchdog = false",
    );
    let brain = launch(&desk, &["run", &*unique("BRAIN_RALONE")]);
    wait_until("the brain to run alone", || {
        desk.snapshot()
            .component(&unique("BRAIN_RALONE"))
            .is_some_and(|v| v.managed.is_some())
    });
    let snap = desk.snapshot();
    assert!(
        snap.component(&unique("WATCHDOG_RALONE"))
            .unwrap()
            .copies
            .is_empty()
    );
    assert!(
        snap.problems.is_empty(),
        "{:?}",
        snap.problems.iter().map(|p| &p.message).collect::<Vec<_>>()
    );
    assert_eq!(brain.stop("-INT"), 0);
    desk.assert_no_lock_left("after the runner stopped");
}
