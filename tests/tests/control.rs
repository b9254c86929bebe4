//! Controlling a running desk (issue "control the running desk"): `master-launch
//! start|restart` through the orchestrator, the view it publishes, what check-procs
//! says of it, and DESIGN.md rule 13 (a brain runs only while its watchdog runs), with
//! real processes, real locks and the real binaries.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::orchestrated::*;
use fleet_tests::{Desk, Running, start_master_launch, tool, unique, wait_until};
use lockcore::control::{DeskState, Supervision};
use lockcore::{ComponentState, StopRequest};

#[test]
fn a_given_up_brain_is_a_problem_until_start_brings_it_back_under_supervision() {
    let desk = Desk::with_options(&unique("ctl_gu"), &[&*unique("GU")], &[], QUICK_ALWAYS);
    let bug = desk.dir.path().join("bug");
    std::fs::write(&bug, "").unwrap();
    desk.add_args(
        &[&*unique("BRAIN_GU")],
        &["--crash-while", &bug.display().to_string()],
    );
    let (orchestrator, lines) = launch(&desk, &[]);
    let line = lines
        .wait_for("GIVING UP", Duration::from_secs(30))
        .unwrap();
    assert!(
        line.contains(&*unique("BRAIN_GU"))
            && line.contains(&*format!("master-launch start {}", unique("BRAIN_GU"))),
        "{line}"
    );
    // The view a reader gets is always whole, while the orchestrator rewrites it.
    for _ in 0..200 {
        if let Some(read) = DeskState::read(&desk.lock_dir()) {
            read.unwrap();
        }
    }
    wait_until("check-procs to say given_up", || {
        check_procs_json(&desk).1["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == *unique("BRAIN_GU") && c["state"] == "given_up")
    });
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1, "{json}");
    let brain = component(&json, &unique("BRAIN_GU"));
    let reason = brain["reason"].as_str().unwrap();
    assert!(
        reason.contains("code 3") && reason.contains("2 failure"),
        "{reason}"
    );
    let problem = &json["problems"][0];
    assert_eq!(problem["kind"], "given_up", "{json}");
    assert_eq!(problem["name"], &*unique("BRAIN_GU"));
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.contains(&*format!("master-launch start {}", unique("BRAIN_GU"))),
        "{message}"
    );
    // The rest of the desk runs on.
    assert_eq!(component(&json, &unique("WATCHDOG_GU"))["state"], "running");

    // Fixed: started again, under the orchestrator, and supervised from then on.
    std::fs::remove_file(&bug).unwrap();
    let output = master_launch(&desk, &["start", &*unique("BRAIN_GU")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&*format!("{}: running, pid", unique("BRAIN_GU"))),
        "{}",
        stderr(&output)
    );
    let first = wait_supervised(&desk, &unique("BRAIN_GU"), orchestrator.pid());
    fleet_tests::force_kill(first);
    wait_until("the killed brain to be restarted", || {
        let snapshot = desk.snapshot();
        managed_pid(&snapshot, &unique("BRAIN_GU")).is_some_and(|pid| pid != first)
            && holder_pid(&snapshot, &unique("BRAIN_GU")) == Some(orchestrator.pid())
    });
    wait_until("check-procs to be healthy", || {
        check_procs_json(&desk).0 == 0
    });
    assert_eq!(
        stop_desk(&desk, orchestrator),
        0,
        "nothing is given up any more"
    );
}

#[test]
fn an_account_stopped_on_request_is_no_problem_and_start_brings_it_back_in_order() {
    let desk = Desk::with_options(
        &unique("ctl_bg"),
        &[&*unique("BG"), &*unique("BGKEEP")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let keep = fleet_tests::managed_pids(
        &desk.snapshot(),
        &[&*unique("WATCHDOG_BGKEEP"), &*unique("BRAIN_BGKEEP")],
    );
    let mut command = Command::new(tool("safe-shutdown", "safe-shutdown"));
    command.arg("--config").arg(desk.config()).args([
        "--account",
        &*unique("BG"),
        "--yes",
        "--timeout",
        "5",
    ]);
    let output = fleet_tests::wine::output(&mut command).unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    wait_until(
        &format!("{} to show as stopped on request", unique("BG")),
        || {
            let (_, json) = check_procs_json(&desk);
            [&*unique("WATCHDOG_BG"), &*unique("BRAIN_BG")]
                .iter()
                .all(|n| component(&json, n)["state"] == "stopped")
        },
    );
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 0, "stopped on request is not a problem: {json}");
    for name in [&*unique("WATCHDOG_BG"), &*unique("BRAIN_BG")] {
        let reason = component(&json, name)["reason"].as_str().unwrap();
        assert!(
            reason.contains("stopped on request by pid"),
            "{name}: {reason}"
        );
    }

    let before = desk.master_log().len();
    let output = master_launch(&desk, &["start", "--account", &*unique("BG")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let watchdog = wait_supervised(&desk, &unique("WATCHDOG_BG"), orchestrator.pid());
    let brain = wait_supervised(&desk, &unique("BRAIN_BG"), orchestrator.pid());
    assert_ne!(watchdog, brain);
    let log = desk.master_log();
    let watchdog_at =
        log_position(&log, &format!("{}: started", unique("WATCHDOG_BG")), before).unwrap();
    let brain_at = log_position(&log, &format!("{}: started", unique("BRAIN_BG")), before).unwrap();
    assert!(
        watchdog_at < brain_at,
        "the brain started first: {}",
        &log[before..]
    );
    assert_eq!(
        fleet_tests::managed_pids(
            &desk.snapshot(),
            &[&*unique("WATCHDOG_BGKEEP"), &*unique("BRAIN_BGKEEP")]
        ),
        keep,
        "the other account was touched"
    );
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn restart_replaces_the_brain_never_runs_two_and_leaves_the_watchdog_alone() {
    let desk = Desk::with_options(&unique("ctl_rs"), &[&*unique("RS")], &[], QUICK);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let snapshot = desk.snapshot();
    let old_brain = managed_pid(&snapshot, &unique("BRAIN_RS")).unwrap();
    let watchdog = managed_pid(&snapshot, &unique("WATCHDOG_RS")).unwrap();
    let mut command = Command::new(tool("master-launch", "master-launch"));
    command
        .arg("--config")
        .arg(desk.config())
        .args(["restart", &*unique("BRAIN_RS")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut restart = fleet_tests::wine::spawn(&mut command).unwrap();
    let mut samples = 0;
    let status = loop {
        let snapshot = desk.snapshot();
        let copies = snapshot
            .component(&unique("BRAIN_RS"))
            .unwrap()
            .copies
            .len();
        assert!(copies <= 1, "two brains at once: {:?}", snapshot.problems);
        samples += 1;
        if let Some(status) = restart.try_wait().unwrap() {
            break status;
        }
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut restart.stderr.take().unwrap(), &mut text).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(samples >= 2, "sampled only {samples} times");
    let snapshot = desk.snapshot();
    let new_brain = managed_pid(&snapshot, &unique("BRAIN_RS")).unwrap();
    assert_ne!(new_brain, old_brain);
    assert_eq!(
        managed_pid(&snapshot, &unique("WATCHDOG_RS")),
        Some(watchdog)
    );
    assert_eq!(
        holder_pid(&snapshot, &unique("BRAIN_RS")),
        Some(orchestrator.pid())
    );
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn a_watchdog_that_cannot_start_keeps_its_brain_from_ever_starting() {
    let desk = Desk::with_options(&unique("ctl_wv"), &[&*unique("WV")], &[], QUICK);
    let missing = desk.dir.path().join("no-such-watchdog");
    let text = std::fs::read_to_string(desk.config()).unwrap().replace(
        "watchdog = [\"{bot}\"",
        &format!("watchdog = [{:?}", missing.display().to_string()),
    );
    std::fs::write(desk.config(), text).unwrap();
    let (orchestrator, _lines) = launch(&desk, &[]);
    wait_until("the watchdog to be given up", || {
        desk.master_log()
            .contains(&*format!("{}: GIVING UP", unique("WATCHDOG_WV")))
    });
    wait_until("check-procs to say given_up and blocked", || {
        let (_, json) = check_procs_json(&desk);
        component(&json, &unique("WATCHDOG_WV"))["state"] == "given_up"
            && component(&json, &unique("BRAIN_WV"))["state"] == "blocked"
    });
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1, "{json}");
    let reason = component(&json, &unique("WATCHDOG_WV"))["reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("no-such-watchdog"),
        "the program is not named: {reason}"
    );
    let log = desk.master_log();
    assert!(
        !log.contains(&*format!("{}: started", unique("BRAIN_WV"))),
        "the brain traded unguarded: {log}"
    );
    assert!(
        desk.snapshot()
            .component(&unique("BRAIN_WV"))
            .unwrap()
            .copies
            .is_empty()
    );
    // Asking for the brain alone is refused with the way out.
    let output = master_launch(&desk, &["start", &*unique("BRAIN_WV"), "--timeout", "20"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&*format!("start --account {}", unique("WV"))),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        stop_desk(&desk, orchestrator),
        1,
        "it ended with components given up"
    );
}

#[test]
fn a_watchdog_given_up_while_its_brain_runs_stops_the_brain_and_the_brain_follows_it_back() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("ctl_wg"),
        &[&*unique("WG")],
        &["--exit-log", &exit_log.arg],
        QUICK_ALWAYS,
    );
    let bug = desk.dir.path().join("bug");
    desk.add_args(
        &[&*unique("WATCHDOG_WG")],
        &["--crash-while", &bug.display().to_string()],
    );
    let (orchestrator, lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let brain = managed_pid(&desk.snapshot(), &unique("BRAIN_WG")).unwrap();
    let watchdog = managed_pid(&desk.snapshot(), &unique("WATCHDOG_WG")).unwrap();
    std::fs::write(&bug, "").unwrap();
    fleet_tests::force_kill(watchdog);
    assert!(
        lines
            .wait_for(
                &format!("{}: GIVING UP", unique("WATCHDOG_WG")),
                Duration::from_secs(30)
            )
            .is_some()
    );
    fleet_tests::wait_gone(&[brain]);
    wait_until("the brain to be held back", || {
        let (code, json) = check_procs_json(&desk);
        code == 1 && component(&json, &unique("BRAIN_WG"))["state"] == "blocked"
    });
    let log = desk.master_log();
    assert!(
        log.contains(&*format!("{}: stopping it", unique("BRAIN_WG"))),
        "{log}"
    );
    if !fleet_tests::wine::under_wine() {
        // Stopped gracefully: its stop handler ran (Wine delivers no CTRL_BREAK).
        assert!(
            exit_log
                .times()
                .iter()
                .any(|(n, _)| n == &*unique("BRAIN_WG")),
            "the brain was not stopped gracefully"
        );
    }
    std::fs::remove_file(&bug).unwrap();
    let output = master_launch(&desk, &["start", &*unique("WATCHDOG_WG")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let new_brain = wait_supervised(&desk, &unique("BRAIN_WG"), orchestrator.pid());
    assert_ne!(new_brain, brain);
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn concurrent_starts_of_one_account_start_exactly_one_copy_of_each() {
    let desk = Desk::with_options(
        &unique("ctl_cc"),
        &[&*unique("CCRUN"), &*unique("CC")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("CCRUN")]);
    let rounds = fleet_tests::wine::race_rounds(5, 2);
    for round in 0..rounds {
        let starters: Vec<std::process::Child> = (0..6)
            .map(|_| {
                let mut command = Command::new(tool("master-launch", "master-launch"));
                command
                    .arg("--config")
                    .arg(desk.config())
                    .args(["start", "--account", &*unique("CC")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                fleet_tests::wine::spawn(&mut command).unwrap()
            })
            .collect();
        for starter in starters {
            let output = starter.wait_with_output().unwrap();
            assert_eq!(
                output.status.code(),
                Some(0),
                "round {round}: {}",
                stderr(&output)
            );
        }
        let snapshot = desk.snapshot();
        for name in [&*unique("WATCHDOG_CC"), &*unique("BRAIN_CC")] {
            let view = snapshot.component(name).unwrap();
            assert_eq!(view.copies.len(), 1, "round {round}: {name}");
            assert_eq!(holder_pid(&snapshot, name), Some(orchestrator.pid()));
        }
        for name in [&*unique("BRAIN_CC"), &*unique("WATCHDOG_CC")] {
            StopRequest::new(name, Duration::from_secs(3))
                .write(&desk.lock_dir())
                .unwrap();
        }
        wait_until(&format!("{} to stop", unique("CC")), || {
            let snapshot = desk.snapshot();
            [&*unique("WATCHDOG_CC"), &*unique("BRAIN_CC")]
                .iter()
                .all(|n| {
                    let view = snapshot.component(n).unwrap();
                    view.copies.is_empty() && view.state() == ComponentState::Stopped
                })
        });
    }
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn a_start_is_refused_by_a_hand_started_run_and_by_an_unlocked_copy() {
    let desk = Desk::with_options(
        &unique("ctl_rf"),
        &[&*unique("RFRUN"), &*unique("RF")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("RFRUN")]);
    // A hand-started `run` holds the watchdog's lock.
    let mut command = Command::new(tool("master-launch", "master-launch"));
    command
        .arg("--config")
        .arg(desk.config())
        .args(["run", &*unique("WATCHDOG_RF")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let hand = Running::new(fleet_tests::wine::spawn(&mut command).unwrap());
    wait_until("the hand-started watchdog to run", || {
        managed_pid(&desk.snapshot(), &unique("WATCHDOG_RF")).is_some()
    });
    let output = master_launch(&desk, &["start", &*unique("WATCHDOG_RF")]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("{}", hand.pid())),
        "{}",
        stderr(&output)
    );
    drop(hand);
    wait_until("the hand-started watchdog to end", || {
        desk.snapshot()
            .component(&unique("WATCHDOG_RF"))
            .unwrap()
            .copies
            .is_empty()
    });
    // A copy with no lock at all.
    let copy = desk.start_by_hand(&unique("WATCHDOG_RF"));
    wait_until("the copy to be seen", || {
        !desk
            .snapshot()
            .component(&unique("WATCHDOG_RF"))
            .unwrap()
            .copies
            .is_empty()
    });
    let output = master_launch(&desk, &["start", &*unique("WATCHDOG_RF")]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("pid {}", copy.pid())),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        desk.snapshot()
            .component(&unique("WATCHDOG_RF"))
            .unwrap()
            .copies
            .len(),
        1
    );
    drop(copy);
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn the_start_order_is_real_on_a_five_account_desk() {
    let accounts = [
        &*unique("SO1"),
        &*unique("SO2"),
        &*unique("SO3"),
        &*unique("SO4"),
        &*unique("SO5"),
    ];
    let desk = Desk::with_options(&unique("ctl_so"), &accounts, &[], QUICK);
    let rounds = fleet_tests::wine::race_rounds(3, 1);
    for round in 0..rounds {
        let before = desk.master_log().len();
        let (orchestrator, _lines) = launch(&desk, &[]);
        desk.wait_until_running();
        // The lock records a bot a moment before the log line about it is written.
        wait_until("every start to be logged", || {
            let log = desk.master_log();
            accounts
                .iter()
                .all(|a| log_position(&log, &format!("BRAIN_{a}: started"), before).is_some())
        });
        let log = desk.master_log();
        for account in accounts {
            let watchdog = log_position(&log, &format!("WATCHDOG_{account}: started"), before);
            let brain = log_position(&log, &format!("BRAIN_{account}: started"), before);
            assert!(
                watchdog.is_some() && watchdog < brain,
                "round {round}: BRAIN_{account} started before its watchdog: {}",
                &log[before..]
            );
        }
        assert_eq!(stop_desk(&desk, orchestrator), 0);
    }
}

#[test]
fn the_orchestrator_stays_up_with_everything_given_up_and_its_exit_code_says_so() {
    let desk = Desk::with_options(
        &unique("ctl_up"),
        &[&*unique("UP")],
        &["--crash-after-ms", "20"],
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 1\n",
    );
    let (mut orchestrator, lines) = start_master_launch(&desk.config(), &[]);
    wait_until("every component to be given up", || {
        desk.master_log().matches("GIVING UP").count() >= 2
    });
    // The brain never started: its watchdog was given up first.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        orchestrator.child.try_wait().unwrap().is_none(),
        "master-launch ended"
    );
    let log = desk.master_log();
    assert!(!log.contains("desk stopped"), "{log}");
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1);
    assert_eq!(
        component(&json, &unique("ctl_up"))["state"],
        "given_up",
        "{json}"
    );
    drop(lines);
    assert_eq!(stop_desk(&desk, orchestrator), 1);
}

#[test]
fn restart_always_does_not_count_clean_exits_and_restart_never_does_not_retry_a_failed_start() {
    let desk = Desk::with_options(
        &unique("ctl_pol"),
        &[&*unique("POL")],
        &[],
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 2\n",
    );
    desk.add_args(&[&*unique("ctl_pol")], &["--exit-after-ms", "100"]);
    let text = std::fs::read_to_string(desk.config()).unwrap();
    let text = text.replacen("command = [", "restart = \"always\"\ncommand = [", 1);
    let missing = desk.dir.path().join("no-such-brain");
    let text = text.replace(
        "brain = [\"{bot}\"",
        &format!("brain = [{:?}", missing.display().to_string()),
    ) + "\n";
    let text = text.replace(
        &*format!("[[account]]\nname = \"{}\"", unique("POL")),
        &format!(
            "[[account]]\nname = \"{}\"\nrestart = \"never\"",
            unique("POL")
        ),
    );
    std::fs::write(desk.config(), text).unwrap();
    let (orchestrator, _lines) = start_master_launch(&desk.config(), &[]);
    wait_until("four clean exits of the global", || {
        desk.master_log()
            .matches(&*format!("{}: started", unique("ctl_pol")))
            .count()
            >= 4
    });
    wait_until("the brain to be given up", || {
        desk.master_log()
            .contains(&*format!("{}: GIVING UP", unique("BRAIN_POL")))
    });
    let log = desk.master_log();
    assert!(
        !log.contains(&*format!("{}: GIVING UP", unique("ctl_pol"))),
        "{log}"
    );
    assert_eq!(
        log.matches(&*format!("{}: cannot start", unique("BRAIN_POL")))
            .count(),
        1,
        "{log}"
    );
    assert_eq!(stop_desk(&desk, orchestrator), 1);
}

#[test]
fn requests_without_an_orchestrator_or_with_bad_names_and_start_or_run() {
    let desk = Desk::with_options(
        &unique("ctl_no"),
        &[&*unique("NORUN"), &*unique("NO")],
        &[],
        QUICK,
    );
    let output = master_launch(&desk, &["start", &*unique("BRAIN_NO")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no master-launch is running"),
        "{}",
        stderr(&output)
    );
    let output = master_launch(&desk, &["restart", "--account", "NOPE"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = master_launch(&desk, &["start", "BRAIN_NOPE"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("BRAIN_NOPE"));
    let output = master_launch(&desk, &["start"]);
    assert_eq!(output.status.code(), Some(2), "a start of nothing");
    let output = master_launch(
        &desk,
        &[
            "restart",
            &*unique("ctl_no"),
            "--timeout",
            "18446744073709551615",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());

    // `start --or-run` with no orchestrator: runs it by hand, as `run` does.
    let mut command = Command::new(tool("master-launch", "master-launch"));
    command
        .arg("--config")
        .arg(desk.config())
        .args(["start", "--or-run", &*unique("ctl_no")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut by_hand = fleet_tests::wine::spawn(&mut command).unwrap();
    wait_until("the global to run by hand", || {
        managed_pid(&desk.snapshot(), &unique("ctl_no")).is_some()
    });
    assert_eq!(
        holder_pid(&desk.snapshot(), &unique("ctl_no")),
        Some(by_hand.id())
    );
    StopRequest::new(&unique("ctl_no"), Duration::from_secs(2))
        .write(&desk.lock_dir())
        .unwrap();
    assert_eq!(by_hand.wait().unwrap().code(), Some(0));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut by_hand.stderr.take().unwrap(), &mut text).unwrap();
    assert!(
        text.contains(&*format!("running {} by hand", unique("ctl_no"))),
        "{text}"
    );

    // With an orchestrator, `start --or-run` asks it.
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("NORUN")]);
    let output = master_launch(&desk, &["start", "--or-run", &*unique("WATCHDOG_NO")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("asked master-launch"),
        "{}",
        stderr(&output)
    );
    wait_supervised(&desk, &unique("WATCHDOG_NO"), orchestrator.pid());
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn a_request_left_by_a_requester_that_died_is_cleared_not_served() {
    let desk = Desk::with_options(
        &unique("ctl_dead"),
        &[&*unique("DEADRUN"), &*unique("DEAD")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("DEADRUN")]);
    let identity = ended_identity();
    let request = lockcore::control::ControlRequest::new(
        &unique("WATCHDOG_DEAD"),
        lockcore::control::Action::Start,
        identity,
    );
    request
        .place(&desk.lock_dir(), Duration::from_secs(1))
        .unwrap();
    wait_until("the request to be cleared", || {
        desk.master_log().contains(&*format!(
            "{}: cleared a start request",
            unique("WATCHDOG_DEAD")
        ))
    });
    let view = DeskState::read(&desk.lock_dir()).unwrap().unwrap();
    assert_eq!(
        view.component(&unique("WATCHDOG_DEAD")).unwrap().state,
        Supervision::NotStarted
    );
    assert!(
        desk.snapshot()
            .component(&unique("WATCHDOG_DEAD"))
            .unwrap()
            .copies
            .is_empty()
    );
    assert!(
        !desk
            .lock_dir()
            .join(&*format!("{}.start", unique("WATCHDOG_DEAD")))
            .exists()
    );
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// Unix-only: Windows cannot delete a file another process holds open.
#[cfg(unix)]
#[test]
fn a_deleted_orchestrator_lock_is_noticed_and_taken_again() {
    let desk = Desk::with_options(&unique("ctl_ml"), &[&*unique("ML")], &[], QUICK);
    let (orchestrator, _lines) = launch(&desk, &[]);
    let lock = desk.lock_path("MASTER_LAUNCH");
    std::fs::remove_file(&lock).unwrap();
    wait_until("the orchestrator to take its lock again", || {
        desk.master_log()
            .contains("MASTER_LAUNCH: lock taken again")
    });
    let log = desk.master_log();
    assert!(log.contains("LOCK LOST"), "{log}");
    let snapshot = desk.snapshot();
    let master = snapshot.master.as_ref().unwrap();
    assert!(master.state.is_held());
    assert_eq!(master.record.as_ref().unwrap().pid, orchestrator.pid());
    // A second orchestrator is still refused.
    let output = {
        let mut command = Command::new(tool("master-launch", "master-launch"));
        command.arg("--config").arg(desk.config());
        fleet_tests::wine::output(&mut command).unwrap()
    };
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// What a monitor of the published view never sees: a half-written file.
#[test]
fn the_published_view_is_always_whole_while_it_changes() {
    let desk = Desk::with_options(
        &unique("ctl_view"),
        &[&*unique("VIEW")],
        &[],
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 1000\nrestart_delay_ms = 1\n",
    );
    desk.add_args(&[&*unique("BRAIN_VIEW")], &["--crash-after-ms", "10"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    let lock_dir = desk.lock_dir();
    let (mut reads, mut states) = (0, std::collections::BTreeSet::new());
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Some(read) = DeskState::read(&lock_dir) {
            let view = read.unwrap_or_else(|e| panic!("a reader saw a broken view: {e}"));
            states.insert(
                view.component(&unique("BRAIN_VIEW"))
                    .unwrap()
                    .state
                    .as_str(),
            );
            reads += 1;
        }
    }
    assert!(reads > 50, "only {reads} reads");
    assert!(states.contains("restarting"), "{states:?}");
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

#[test]
fn an_account_may_allow_an_unguarded_brain_explicitly() {
    let desk = Desk::with_options(
        &unique("ctl_ug"),
        &[&*unique("UG")],
        &[],
        "brain_requires_watchdog = false\n",
    );
    let missing = desk.dir.path().join("no-such-watchdog");
    let text = std::fs::read_to_string(desk.config()).unwrap().replace(
        "watchdog = [\"{bot}\"",
        &format!("watchdog = [{:?}", missing.display().to_string()),
    ) + QUICK;
    std::fs::write(desk.config(), text).unwrap();
    let (orchestrator, _lines) = launch(&desk, &[]);
    wait_supervised(&desk, &unique("BRAIN_UG"), orchestrator.pid());
    wait_until("the watchdog to be given up", || {
        desk.master_log()
            .contains(&*format!("{}: GIVING UP", unique("WATCHDOG_UG")))
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        desk.snapshot()
            .component(&unique("BRAIN_UG"))
            .unwrap()
            .copies
            .len(),
        1,
        "the brain was stopped although its account allows it to run unguarded"
    );
    assert_eq!(stop_desk(&desk, orchestrator), 1);
}

#[test]
fn a_brain_is_held_back_while_its_watchdog_backs_off_and_follows_it_back() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("ctl_bo"),
        &[&*unique("BO")],
        &["--exit-log", &exit_log.arg],
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 5\nrestart = \"always\"\n",
    );
    let bug = desk.dir.path().join("bug");
    desk.add_args(
        &[&*unique("WATCHDOG_BO")],
        &["--crash-while", &bug.display().to_string()],
    );
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let brain = managed_pid(&desk.snapshot(), &unique("BRAIN_BO")).unwrap();
    let watchdog = managed_pid(&desk.snapshot(), &unique("WATCHDOG_BO")).unwrap();
    // The watchdog crashes again at once after its immediate restart: it backs off.
    std::fs::write(&bug, "").unwrap();
    fleet_tests::force_kill(watchdog);
    wait_until("the brain to be held back", || {
        desk.master_log().contains(&*format!(
            "{}: stopping it: its watchdog {} is backing off",
            unique("BRAIN_BO"),
            unique("WATCHDOG_BO")
        ))
    });
    fleet_tests::wait_gone(&[brain]);
    if !fleet_tests::wine::under_wine() {
        assert!(
            exit_log
                .times()
                .iter()
                .any(|(n, _)| n == &*unique("BRAIN_BO")),
            "the brain was not stopped gracefully"
        );
    }
    // Fixed: the watchdog's next attempt runs, and the brain follows by itself.
    std::fs::remove_file(&bug).unwrap();
    let new_brain = wait_supervised(&desk, &unique("BRAIN_BO"), orchestrator.pid());
    assert_ne!(new_brain, brain);
    let log = desk.master_log();
    let held = log
        .find(&*format!("{}: stopping it", unique("BRAIN_BO")))
        .unwrap();
    let watchdog_back =
        log_position(&log, &format!("{}: started", unique("WATCHDOG_BO")), held).unwrap();
    let brain_back = log_position(&log, &format!("{}: started", unique("BRAIN_BO")), held).unwrap();
    assert!(watchdog_back < brain_back, "{}", &log[held..]);
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}
