//! Hostile tests of the control of a running desk (`master-launch start|restart`, the
//! orchestrator's published view, DESIGN.md rule 13): what a careful user running real
//! money does wrong or meets by bad luck, with real processes, real locks and the real
//! binaries. The friendly paths are in `control.rs`.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::orchestrated::*;
use fleet_tests::{Desk, Lines, tool, unique, wait_until};
use lockcore::StopRequest;
use lockcore::control::{DeskState, Supervision};

/// `master-launch ARGS` in the background, its stderr read into lines.
fn master_launch_spawn(desk: &Desk, args: &[&str]) -> (std::process::Child, Lines) {
    let mut command = Command::new(tool("master-launch", "master-launch"));
    command
        .arg("--config")
        .arg(desk.config())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = fleet_tests::wine::spawn(&mut command).unwrap();
    let lines = fleet_tests::spawn_reader(child.stderr.take().unwrap());
    (child, lines)
}

#[cfg(unix)]
fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

/// A stop request (safe-shutdown --account, say) that arrives while the component is
/// being stopped for a restart: the user's stop wins, and the component is not started
/// again in between, not even for a moment.
#[test]
fn hx_a_stop_request_arriving_during_a_restart_wins_and_nothing_starts_in_between() {
    let desk = Desk::with_options(
        &unique("hx_sr"),
        &[&*unique("HXSR")],
        &[],
        "[defaults]\nstop_timeout_secs = 5\ngive_up_after = 2\n",
    );
    // Long enough that the stop request lands inside it even on a slow machine.
    desk.add_args(&[&*unique("BRAIN_HXSR")], &["--stop-delay-ms", "3000"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    for round in 0..3 {
        if round > 0 {
            let output = master_launch(&desk, &["start", &*unique("BRAIN_HXSR")]);
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        }
        let asked = desk
            .master_log()
            .matches(&*format!("{}: restart requested", unique("BRAIN_HXSR")))
            .count();
        let (mut restart, _restart_lines) =
            master_launch_spawn(&desk, &["restart", &*unique("BRAIN_HXSR")]);
        wait_until("the restart to be taken", || {
            desk.master_log()
                .matches(&*format!("{}: restart requested", unique("BRAIN_HXSR")))
                .count()
                > asked
        });
        let mark = desk.master_log().len();
        StopRequest::new(&unique("BRAIN_HXSR"), Duration::from_secs(10))
            .write(&desk.lock_dir())
            .unwrap();
        let code = wait_exit(&mut restart, Duration::from_secs(30), "the restart");
        assert_eq!(code, 1, "round {round}: a restart overtaken by a stop");
        wait_until("the brain to show as stopped on request", || {
            view_state(&desk, &unique("BRAIN_HXSR")) == Some(Supervision::Stopped)
                && !desk
                    .lock_dir()
                    .join(&*format!("{}.stop", unique("BRAIN_HXSR")))
                    .exists()
        });
        std::thread::sleep(Duration::from_millis(600));
        let log = desk.master_log();
        assert!(
            log_position(&log, &format!("{}: started", unique("BRAIN_HXSR")), mark).is_none(),
            "round {round}: the brain was started although a stop was asked for: {}",
            &log[mark..]
        );
        assert_eq!(
            copies(&desk.snapshot(), &unique("BRAIN_HXSR")),
            0,
            "round {round}"
        );
    }
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// Two requesters of one start share one request file; the one that placed it dies
/// before the orchestrator reads it. The request is cleared, and the survivor, who
/// joined it, must get an answer at once instead of waiting out its whole timeout.
#[cfg(unix)]
#[test]
fn hx_a_requester_that_joined_a_request_whose_placer_died_is_answered_promptly() {
    let desk = Desk::with_options(
        &unique("hx_jn"),
        &[&*unique("HXJNRUN"), &*unique("HXJN")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("HXJNRUN")]);
    let identity = ended_identity();
    // Hold the orchestrator still, so that the survivor joins before it looks.
    signal(orchestrator.pid(), "-STOP");
    lockcore::control::ControlRequest::new(
        &unique("WATCHDOG_HXJN"),
        lockcore::control::Action::Start,
        identity,
    )
    .place(&desk.lock_dir(), Duration::from_secs(1))
    .unwrap();
    let (mut survivor, lines) = master_launch_spawn(
        &desk,
        &["start", &*unique("WATCHDOG_HXJN"), "--timeout", "60"],
    );
    let joined = lines.wait_for("already pending", Duration::from_secs(20));
    signal(orchestrator.pid(), "-CONT");
    assert!(joined.is_some(), "the survivor did not join the request");
    let asked_at = Instant::now();
    let code = wait_exit(&mut survivor, Duration::from_secs(90), "the survivor");
    let rest = lines.collect().join("\n");
    assert!(
        asked_at.elapsed() < Duration::from_secs(15),
        "the survivor waited {:?} for an answer that never came: {rest}",
        asked_at.elapsed()
    );
    assert_eq!(code, 1, "{rest}");
    assert!(rest.contains("ask again"), "{rest}");
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// The orchestrator is killed (-9) while a requester waits for a restart: the
/// requester says so and exits 1 promptly; nothing of the desk survives.
#[test]
fn hx_a_requester_waiting_on_a_killed_orchestrator_exits_promptly() {
    let desk = Desk::with_options(&unique("hx_kl"), &[&*unique("HXKL")], &[], QUICK);
    desk.add_args(&[&*unique("BRAIN_HXKL")], &["--stop-delay-ms", "1500"]);
    let (mut orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let pids = fleet_tests::running_pids(&desk.snapshot());
    let (mut restart, lines) = master_launch_spawn(&desk, &["restart", &*unique("BRAIN_HXKL")]);
    wait_until("the restart to be taken", || {
        desk.master_log()
            .contains(&*format!("{}: restart requested", unique("BRAIN_HXKL")))
    });
    orchestrator.kill();
    let killed_at = Instant::now();
    let code = wait_exit(&mut restart, Duration::from_secs(30), "the requester");
    let text = lines.collect().join("\n");
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "took {:?}: {text}",
        killed_at.elapsed()
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("ended before it answered"), "{text}");
    fleet_tests::wait_gone(&pids);
}

/// `restart WATCHDOG_X`: its brain is stopped first and comes back after it; sampled
/// all along, a brain never runs without its watchdog.
#[test]
fn hx_restarting_a_watchdog_never_leaves_its_brain_unguarded() {
    let desk = Desk::with_options(&unique("hx_rw"), &[&*unique("HXRW")], &[], QUICK);
    desk.add_args(&[&*unique("BRAIN_HXRW")], &["--stop-delay-ms", "300"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    for round in 0..2 {
        desk.wait_until_running();
        let before = fleet_tests::managed_pids(
            &desk.snapshot(),
            &[&*unique("WATCHDOG_HXRW"), &*unique("BRAIN_HXRW")],
        );
        let mark = desk.master_log().len();
        let (mut restart, lines) =
            master_launch_spawn(&desk, &["restart", &*unique("WATCHDOG_HXRW")]);
        let mut samples = 0;
        let code = loop {
            let snapshot = desk.snapshot();
            let (watchdogs, brains) = (
                copies(&snapshot, &unique("WATCHDOG_HXRW")),
                copies(&snapshot, &unique("BRAIN_HXRW")),
            );
            assert!(
                watchdogs <= 1 && brains <= 1,
                "round {round}: two copies: {:?}",
                snapshot.problems
            );
            assert!(
                brains == 0 || watchdogs == 1,
                "round {round}: a brain without its watchdog"
            );
            samples += 1;
            if let Some(status) = restart.try_wait().unwrap() {
                break status.code();
            }
        };
        let text = lines.collect().join("\n");
        assert_eq!(code, Some(0), "round {round}: {text}");
        assert!(samples >= 2, "sampled only {samples} times");
        // The brain comes back after its watchdog, without being asked.
        desk.wait_until_running();
        let after = fleet_tests::managed_pids(
            &desk.snapshot(),
            &[&*unique("WATCHDOG_HXRW"), &*unique("BRAIN_HXRW")],
        );
        assert!(
            before.iter().all(|pid| !after.contains(pid)),
            "round {round}: {before:?} -> {after:?}"
        );
        let brain_start = wait_logged(&desk, &format!("{}: started", unique("BRAIN_HXRW")), mark);
        let log = desk.master_log();
        let brain_exit =
            log_position(&log, &format!("{}: exited", unique("BRAIN_HXRW")), mark).unwrap();
        let watchdog_exit =
            log_position(&log, &format!("{}: exited", unique("WATCHDOG_HXRW")), mark).unwrap();
        let watchdog_start =
            log_position(&log, &format!("{}: started", unique("WATCHDOG_HXRW")), mark).unwrap();
        assert!(
            brain_exit < watchdog_exit
                && watchdog_exit < watchdog_start
                && watchdog_start < brain_start,
            "round {round}: out of order: {}",
            &log[mark..]
        );
    }
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// A brain that ignores stop requests: a restart forces it at its stop timeout and
/// never runs two copies.
#[test]
fn hx_restarting_a_brain_that_ignores_stop_forces_it_and_never_runs_two() {
    let desk = Desk::with_options(&unique("hx_ig"), &[&*unique("HXIG")], &[], QUICK);
    desk.add_args(&[&*unique("BRAIN_HXIG")], &["--ignore-stop"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let old = managed_pid(&desk.snapshot(), &unique("BRAIN_HXIG")).unwrap();
    let (mut restart, lines) =
        master_launch_spawn(&desk, &["restart", "--account", &*unique("HXIG")]);
    let code = loop {
        let snapshot = desk.snapshot();
        assert!(
            copies(&snapshot, &unique("BRAIN_HXIG")) <= 1,
            "{:?}",
            snapshot.problems
        );
        assert!(
            copies(&snapshot, &unique("BRAIN_HXIG")) == 0
                || copies(&snapshot, &unique("WATCHDOG_HXIG")) == 1,
            "a brain without its watchdog"
        );
        if let Some(status) = restart.try_wait().unwrap() {
            break status.code();
        }
    };
    let text = lines.collect().join("\n");
    assert_eq!(code, Some(0), "{text}");
    let log = desk.master_log();
    assert!(
        log.contains(&*format!("{} (pid", unique("BRAIN_HXIG"))),
        "{log}"
    );
    assert!(log.contains("did not stop in time"), "{log}");
    desk.wait_until_running();
    assert_ne!(
        managed_pid(&desk.snapshot(), &unique("BRAIN_HXIG")),
        Some(old)
    );
    fleet_tests::wait_gone(&[old]);
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// Garbage, a huge file and a request naming another component at request names are
/// cleared and logged, never acted on; a link and a FIFO are left alone, never read
/// through, and a requester meeting them gives up with the reason instead of hanging.
#[cfg(unix)]
#[test]
fn hx_garbage_links_and_fifos_at_request_names_are_never_acted_on_nor_hang() {
    let desk = Desk::with_options(
        &unique("hx_gb"),
        &[&*unique("HXGBRUN"), &*unique("HXGB")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("HXGBRUN")]);
    wait_until("the --only part to run", || {
        let snapshot = desk.snapshot();
        [
            &*unique("hx_gb"),
            &*unique("WATCHDOG_HXGBRUN"),
            &*unique("BRAIN_HXGBRUN"),
        ]
        .iter()
        .all(|n| managed_pid(&snapshot, n).is_some())
    });
    let global = managed_pid(&desk.snapshot(), &unique("hx_gb")).unwrap();
    let locks = desk.lock_dir();
    std::fs::write(
        locks.join(&*format!("{}.start", unique("WATCHDOG_HXGB"))),
        b"not json {",
    )
    .unwrap();
    std::fs::write(
        locks.join(&*format!("{}.restart", unique("BRAIN_HXGB"))),
        vec![b'x'; 1 << 20],
    )
    .unwrap();
    let other = serde_json::json!({
        "name": &*unique("WATCHDOG_HXGB"), "action": "start", "id": "x", "requested_by": null
    });
    std::fs::write(
        locks.join(&*format!("{}.restart", unique("hx_gb"))),
        other.to_string(),
    )
    .unwrap();
    // A link to a perfectly good request elsewhere: never followed.
    let victim = desk.dir.path().join("victim.json");
    let good = serde_json::json!({
        "name": &*unique("WATCHDOG_HXGB"), "action": "restart", "id": "y", "requested_by": null
    });
    std::fs::write(&victim, good.to_string()).unwrap();
    std::os::unix::fs::symlink(
        &victim,
        locks.join(&*format!("{}.restart", unique("WATCHDOG_HXGB"))),
    )
    .unwrap();
    let fifo = locks.join(&*format!("{}.start", unique("BRAIN_HXGB")));
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    wait_until("the three unusable requests to be cleared", || {
        desk.master_log()
            .matches("cleared an unusable request")
            .count()
            >= 3
    });
    std::thread::sleep(Duration::from_millis(600));
    let log = desk.master_log();
    assert!(
        !log.contains(&*format!("{}: started", unique("HXGB"))),
        "{log}"
    );
    assert!(
        !log.contains(&*format!("{}: restart requested", unique("hx_gb"))),
        "{log}"
    );
    for name in [
        &*format!("{}.start", unique("WATCHDOG_HXGB")),
        &*format!("{}.restart", unique("BRAIN_HXGB")),
        &*format!("{}.restart", unique("hx_gb")),
    ] {
        assert!(!locks.join(name).exists(), "{name} left");
    }
    assert!(
        std::fs::symlink_metadata(locks.join(&*format!("{}.restart", unique("WATCHDOG_HXGB"))))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::symlink_metadata(&fifo).is_ok(), "the FIFO went");
    assert_eq!(std::fs::read(&victim).unwrap(), good.to_string().as_bytes());
    assert_eq!(
        managed_pid(&desk.snapshot(), &unique("hx_gb")),
        Some(global)
    );
    // A requester that meets the FIFO or the link gives up with the reason.
    for (args, entry) in [
        (
            ["start", &*unique("BRAIN_HXGB")],
            &*format!("{}.start", unique("BRAIN_HXGB")),
        ),
        (
            ["restart", &*unique("WATCHDOG_HXGB")],
            &*format!("{}.restart", unique("WATCHDOG_HXGB")),
        ),
    ] {
        let asked = Instant::now();
        let output = master_launch(&desk, &args);
        assert!(asked.elapsed() < Duration::from_secs(20), "{args:?}");
        assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
        assert!(stderr(&output).contains(entry), "{}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    }
    assert_eq!(std::fs::read(&victim).unwrap(), good.to_string().as_bytes());
    // The orchestrator still serves good requests.
    let output = master_launch(&desk, &["start", &*unique("WATCHDOG_HXGB")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// A link at `MASTER_LAUNCH.state`: never written through, and the orchestrator says
/// so once, not on every tick for as long as the desk runs.
#[cfg(unix)]
#[test]
fn hx_a_link_at_the_views_name_is_reported_once_not_on_every_tick() {
    let desk = Desk::with_options(&unique("hx_ln"), &[&*unique("HXLN")], &[], QUICK);
    let victim = desk.dir.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    std::os::unix::fs::symlink(&victim, desk.lock_dir().join("MASTER_LAUNCH.state")).unwrap();
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    std::thread::sleep(Duration::from_secs(3));
    let log = desk.master_log();
    let complaints = log.matches("cannot publish the desk's state").count();
    assert!(
        (1..=2).contains(&complaints),
        "{complaints} complaints in 3 s: {log}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(stop_desk(&desk, orchestrator), 0);
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(
        std::fs::symlink_metadata(desk.lock_dir().join("MASTER_LAUNCH.state"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// safe-shutdown of the whole desk while a watchdog restart is under way: everything
/// stops, brain before watchdog, and nothing is started again.
#[test]
fn hx_safe_shutdown_during_a_restart_stops_everything_in_order_and_starts_nothing() {
    let desk = Desk::with_options(
        &unique("hx_sd"),
        &[&*unique("HXSD")],
        &[],
        "[defaults]\nstop_timeout_secs = 15\ngive_up_after = 2\n",
    );
    // Long enough a stop that the shutdown lands while the restart still stops it.
    desk.add_args(&[&*unique("BRAIN_HXSD")], &["--stop-delay-ms", "4000"]);
    let (mut orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let pids = fleet_tests::running_pids(&desk.snapshot());
    let (mut restart, _restart_lines) =
        master_launch_spawn(&desk, &["restart", &*unique("WATCHDOG_HXSD")]);
    wait_until("the restart to be taken", || {
        desk.master_log()
            .contains(&*format!("{}: restart requested", unique("WATCHDOG_HXSD")))
    });
    let mark = desk.master_log().len();
    let mut command = Command::new(tool("safe-shutdown", "safe-shutdown"));
    command
        .arg("--config")
        .arg(desk.config())
        .args(["--yes", "--timeout", "10"]);
    let output = fleet_tests::wine::output(&mut command).unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    wait_exit(
        &mut orchestrator.child,
        Duration::from_secs(30),
        "master-launch",
    );
    assert_eq!(
        wait_exit(&mut restart, Duration::from_secs(30), "the restart"),
        1
    );
    fleet_tests::wait_gone(&pids);
    let log = desk.master_log();
    assert!(
        log_position(&log, ": started", mark).is_none(),
        "started during a shutdown: {}",
        &log[mark..]
    );
    let brain = log_position(&log, &format!("{}: exited", unique("BRAIN_HXSD")), mark).unwrap();
    let watchdog =
        log_position(&log, &format!("{}: exited", unique("WATCHDOG_HXSD")), mark).unwrap();
    assert!(brain < watchdog, "{}", &log[mark..]);
    assert!(
        desk.snapshot()
            .components
            .iter()
            .all(|c| c.copies.is_empty())
    );
    desk.assert_no_lock_left("after safe-shutdown");
}

/// A request whose id is huge (the id is copied into every answer of the view): the
/// view must stay readable, or check-procs would stop reporting a given-up brain and
/// every requester would stop getting answers.
#[test]
fn hx_a_request_with_a_huge_id_cannot_hide_a_given_up_brain() {
    let desk = Desk::with_options(&unique("hx_id"), &[&*unique("HXID")], &[], QUICK);
    let bug = desk.dir.path().join("bug");
    std::fs::write(&bug, "").unwrap();
    desk.add_args(
        &[&*unique("BRAIN_HXID")],
        &["--crash-while", &bug.display().to_string()],
    );
    let (orchestrator, lines) = launch(&desk, &[]);
    assert!(
        lines
            .wait_for(
                &format!("{}: GIVING UP", unique("BRAIN_HXID")),
                Duration::from_secs(30)
            )
            .is_some()
    );
    wait_until("check-procs to say given_up", || {
        let (code, json) = check_procs_json(&desk);
        code == 1 && component(&json, &unique("BRAIN_HXID"))["state"] == "given_up"
    });
    // Each fits the size a request may have; their answers together do not.
    for id in ["i", "j"] {
        let request = serde_json::json!({
            "name": &*unique("hx_id"), "action": "start", "id": id.repeat(60_000), "requested_by": null
        });
        std::fs::write(
            desk.lock_dir().join(&*format!("{}.start", unique("hx_id"))),
            request.to_string(),
        )
        .unwrap();
        wait_until("the request to be taken", || {
            !desk
                .lock_dir()
                .join(&*format!("{}.start", unique("hx_id")))
                .exists()
        });
    }
    std::thread::sleep(Duration::from_millis(800));
    let view = DeskState::read(&desk.lock_dir()).unwrap();
    assert!(view.is_ok(), "{view:?}");
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1, "{json}");
    assert_eq!(
        component(&json, &unique("BRAIN_HXID"))["state"],
        "given_up",
        "{json}"
    );
    let output = master_launch(&desk, &["start", &*unique("hx_id"), "--timeout", "20"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stop_desk(&desk, orchestrator), 1);
}

/// The view of an orchestrator killed with -9 stays in the lock dir: check-procs must
/// not take its given-up component for the truth of a desk that no longer runs.
#[test]
fn hx_the_view_of_a_dead_orchestrator_is_ignored_by_check_procs() {
    let desk = Desk::with_options(&unique("hx_dv"), &[&*unique("HXDV")], &[], QUICK);
    let bug = desk.dir.path().join("bug");
    std::fs::write(&bug, "").unwrap();
    desk.add_args(
        &[&*unique("BRAIN_HXDV")],
        &["--crash-while", &bug.display().to_string()],
    );
    let (mut orchestrator, lines) = launch(&desk, &[]);
    assert!(
        lines
            .wait_for(
                &format!("{}: GIVING UP", unique("BRAIN_HXDV")),
                Duration::from_secs(30)
            )
            .is_some()
    );
    wait_until("the view to say given_up", || {
        view_state(&desk, &unique("BRAIN_HXDV")) == Some(Supervision::GivenUp)
    });
    let pids = fleet_tests::running_pids(&desk.snapshot());
    orchestrator.kill();
    fleet_tests::wait_gone(&pids);
    assert!(
        DeskState::read(&desk.lock_dir()).is_some(),
        "the view is left"
    );
    let (_, json) = check_procs_json(&desk);
    for c in json["components"].as_array().unwrap() {
        assert!(
            !["given_up", "blocked", "restarting", "starting"]
                .contains(&c["state"].as_str().unwrap()),
            "{json}"
        );
    }
    assert!(
        json["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["kind"] != "given_up"),
        "{json}"
    );
    // A requester is told no orchestrator runs.
    let output = master_launch(&desk, &["start", &*unique("BRAIN_HXDV")]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no master-launch is running"),
        "{}",
        stderr(&output)
    );
}

/// A requester whose stderr and stdout readers are gone (`| head -c0`) does its job and
/// exits with its code, no panic; `--timeout 0` answers at once and the request goes on.
#[test]
fn hx_a_requester_with_closed_pipes_or_timeout_zero_does_not_panic() {
    let desk = Desk::with_options(&unique("hx_cp"), &[&*unique("HXCP")], &[], QUICK);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let old = managed_pid(&desk.snapshot(), &unique("BRAIN_HXCP")).unwrap();
    let mut command = Command::new(tool("master-launch", "master-launch"));
    command
        .arg("--config")
        .arg(desk.config())
        .args(["restart", &*unique("BRAIN_HXCP")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = fleet_tests::wine::spawn(&mut command).unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(60), "the restart"),
        0
    );
    desk.wait_until_running();
    let second = managed_pid(&desk.snapshot(), &unique("BRAIN_HXCP")).unwrap();
    assert_ne!(second, old);
    let asked = Instant::now();
    let output = master_launch(
        &desk,
        &["restart", &*unique("BRAIN_HXCP"), "--timeout", "0"],
    );
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("goes on with the request"),
        "{}",
        stderr(&output)
    );
    wait_until("the restart to go on", || {
        managed_pid(&desk.snapshot(), &unique("BRAIN_HXCP")).is_some_and(|pid| pid != second)
    });
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// A watchdog crash-loops (each restart further off) and meanwhile its brain crashes:
/// the brain's own supervisor must not start it again while the watchdog is down
/// (DESIGN.md rule 13: started after it); it follows the watchdog back.
#[test]
fn hx_a_crashed_brain_is_not_restarted_while_its_watchdog_is_down() {
    let desk = Desk::with_options(
        &unique("hx_wb"),
        &[&*unique("HXWB")],
        &[],
        // `always`: Wine's `taskkill /F` leaves exit code 0, which `on-failure` would
        // take for a clean exit.
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 20\nrestart_delay_ms = 1500\n\
         restart = \"always\"\n",
    );
    let bug = desk.dir.path().join("bug");
    desk.add_args(
        &[&*unique("WATCHDOG_HXWB")],
        &["--crash-while", &bug.display().to_string()],
    );
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let snapshot = desk.snapshot();
    let brain = managed_pid(&snapshot, &unique("BRAIN_HXWB")).unwrap();
    let watchdog = managed_pid(&snapshot, &unique("WATCHDOG_HXWB")).unwrap();
    std::fs::write(&bug, "").unwrap();
    fleet_tests::force_kill(watchdog);
    wait_until("the watchdog to back off", || {
        view_state(&desk, &unique("WATCHDOG_HXWB")) == Some(Supervision::Restarting)
    });
    fleet_tests::force_kill(brain);
    fleet_tests::wait_gone(&[brain]);
    // The brain's restart (1.5 s) comes while the watchdog crash-loops (1.5 s, 3 s).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let snapshot = desk.snapshot();
        assert!(
            copies(&snapshot, &unique("BRAIN_HXWB")) == 0
                || copies(&snapshot, &unique("WATCHDOG_HXWB")) == 1,
            "a brain started while its watchdog was down: {}",
            desk.master_log()
        );
    }
    // Held back either way: stopped as its watchdog began to back off, or, had it
    // crashed first, not restarted by its own supervisor.
    let log = desk.master_log();
    assert!(
        log.contains(&*format!(
            "{}: not restarted while its watchdog is not running",
            unique("BRAIN_HXWB")
        )) || log.contains(&*format!(
            "{}: stopping it: its watchdog {} is backing off",
            unique("BRAIN_HXWB"),
            unique("WATCHDOG_HXWB")
        )),
        "{log}"
    );
    // Fixed: the watchdog comes back at its next attempt, and the brain follows it.
    let mark = desk.master_log().len();
    std::fs::remove_file(&bug).unwrap();
    desk.wait_until_running();
    // The lock records a child a moment before the log says "started": wait for both.
    let watchdog_at = wait_logged(
        &desk,
        &format!("{}: started", unique("WATCHDOG_HXWB")),
        mark,
    );
    let brain_at = wait_logged(&desk, &format!("{}: started", unique("BRAIN_HXWB")), mark);
    assert!(watchdog_at < brain_at, "{}", desk.master_log());
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// The view keeps the last answers of every component. A desk that answers many
/// requests with long reasons (a watchdog whose program path is long and missing, so
/// every start of its brain fails naming it) must keep a view that readers accept, or
/// check-procs stops reporting the given-up watchdog and requesters get no answers.
#[test]
fn hx_many_long_answers_keep_the_view_readable() {
    let accounts = [&*unique("HXLA1"), &*unique("HXLA2")];
    let desk = Desk::with_options(&unique("hx_la"), &accounts, &[], QUICK);
    let mut missing = desk.dir.path().to_path_buf();
    for part in 0..12 {
        missing.push(format!("{part}{}", "m".repeat(240)));
    }
    let text = std::fs::read_to_string(desk.config()).unwrap().replace(
        "watchdog = [\"{bot}\"",
        &format!("watchdog = [{:?}", missing.display().to_string()),
    );
    std::fs::write(desk.config(), text).unwrap();
    let (orchestrator, _lines) = launch(&desk, &[]);
    wait_until("both watchdogs to be given up", || {
        desk.master_log().matches(": GIVING UP").count() >= 2
    });
    for round in 0..lockcore::control::ANSWERS_KEPT {
        let output = master_launch(
            &desk,
            &["start", &*unique("BRAIN_HXLA1"), &*unique("BRAIN_HXLA2")],
        );
        assert_eq!(
            output.status.code(),
            Some(1),
            "round {round}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("start --account"),
            "round {round}: {}",
            stderr(&output)
        );
    }
    let view = DeskState::read(&desk.lock_dir()).unwrap();
    assert!(view.is_ok(), "{view:?}");
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 1, "{json}");
    for account in accounts {
        assert_eq!(
            component(&json, &format!("WATCHDOG_{account}"))["state"],
            "given_up",
            "{json}"
        );
    }
    assert_eq!(stop_desk(&desk, orchestrator), 1);
}

/// A requester whose orchestrator is hung (here: paused) gives up after its timeout
/// and its wait for the request to be taken, and does not claim that the request goes
/// on; once resumed, the orchestrator clears the orphan unread.
#[cfg(unix)]
#[test]
fn hx_a_requester_facing_a_hung_orchestrator_says_nothing_was_done() {
    let desk = Desk::with_options(
        &unique("hx_hg"),
        &[&*unique("HXHGRUN"), &*unique("HXHG")],
        &[],
        QUICK,
    );
    let (orchestrator, _lines) = launch(&desk, &["--only", &*unique("HXHGRUN")]);
    signal(orchestrator.pid(), "-STOP");
    let asked = Instant::now();
    let output = master_launch(
        &desk,
        &["start", &*unique("WATCHDOG_HXHG"), "--timeout", "0"],
    );
    let took = asked.elapsed();
    signal(orchestrator.pid(), "-CONT");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        stderr(&output).contains("nothing was done"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("goes on"), "{}", stderr(&output));
    wait_until("the orphan request to be cleared", || {
        desk.master_log().contains(&*format!(
            "{}: cleared a start request",
            unique("WATCHDOG_HXHG")
        ))
    });
    assert!(
        !desk
            .master_log()
            .contains(&*format!("{}: started", unique("WATCHDOG_HXHG")))
    );
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// A stop request for a brain that arrives while its watchdog is being restarted (the
/// brain is being stopped as part of it): the watchdog comes back, the brain does not.
#[test]
fn hx_a_brain_stopped_during_its_watchdogs_restart_stays_stopped() {
    let desk = Desk::with_options(
        &unique("hx_bs"),
        &[&*unique("HXBS")],
        &[],
        "[defaults]\nstop_timeout_secs = 5\ngive_up_after = 2\n",
    );
    // Long enough that the stop request lands inside it even on a slow machine.
    desk.add_args(&[&*unique("BRAIN_HXBS")], &["--stop-delay-ms", "3000"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let (mut restart, _restart_lines) =
        master_launch_spawn(&desk, &["restart", &*unique("WATCHDOG_HXBS")]);
    wait_until("the restart to be taken", || {
        desk.master_log()
            .contains(&*format!("{}: restart requested", unique("WATCHDOG_HXBS")))
    });
    let mark = desk.master_log().len();
    StopRequest::new(&unique("BRAIN_HXBS"), Duration::from_secs(10))
        .write(&desk.lock_dir())
        .unwrap();
    assert_eq!(
        wait_exit(&mut restart, Duration::from_secs(30), "the restart"),
        0
    );
    wait_until("the brain to show as stopped on request", || {
        view_state(&desk, &unique("BRAIN_HXBS")) == Some(Supervision::Stopped)
            && !desk
                .lock_dir()
                .join(&*format!("{}.stop", unique("BRAIN_HXBS")))
                .exists()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let log = desk.master_log();
    assert!(
        log_position(&log, &format!("{}: started", unique("WATCHDOG_HXBS")), mark).is_some(),
        "{}",
        &log[mark..]
    );
    assert!(
        log_position(&log, &format!("{}: started", unique("BRAIN_HXBS")), mark).is_none(),
        "{}",
        &log[mark..]
    );
    let snapshot = desk.snapshot();
    assert_eq!(copies(&snapshot, &unique("BRAIN_HXBS")), 0);
    assert_eq!(copies(&snapshot, &unique("WATCHDOG_HXBS")), 1);
    let (code, json) = check_procs_json(&desk);
    assert_eq!(code, 0, "stopped on request is no problem: {json}");
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// A disabled account: neither `master-launch --only` nor `start --account` nor
/// `start BRAIN_X` brings it in against a running orchestrator (exit 2, naming it).
#[test]
fn hx_a_disabled_account_cannot_be_started_through_the_orchestrator() {
    let desk = Desk::with_options(
        &unique("hx_da"),
        &[&*unique("HXDARUN"), &*unique("HXDA")],
        &[],
        QUICK,
    );
    let text = std::fs::read_to_string(desk.config()).unwrap().replace(
        &*format!("name = \"{}\"\n", unique("HXDA")),
        &format!("name = \"{}\"\nenabled = false\n", unique("HXDA")),
    );
    std::fs::write(desk.config(), text).unwrap();
    let (orchestrator, _lines) = launch(&desk, &[]);
    for args in [
        &["start", "--account", &*unique("HXDA")][..],
        &["restart", &*unique("BRAIN_HXDA")][..],
        &["start", &*unique("WATCHDOG_HXDA"), "--or-run"][..],
    ] {
        let output = master_launch(&desk, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&*unique("HXDA")),
            "{}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("disabled"), "{}", stderr(&output));
    }
    let snapshot = desk.snapshot();
    assert_eq!(copies(&snapshot, &unique("BRAIN_HXDA")), 0);
    assert_eq!(copies(&snapshot, &unique("WATCHDOG_HXDA")), 0);
    assert!(
        !desk
            .lock_dir()
            .join(&*format!("{}.restart", unique("BRAIN_HXDA")))
            .exists()
            && !desk
                .lock_dir()
                .join(&*format!("{}.start", unique("WATCHDOG_HXDA")))
                .exists()
    );
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// A requester killed (-9) after its restart was taken: the restart is carried out
/// all the same, one brain at a time, and the desk is healthy after it.
#[test]
fn hx_a_requester_killed_while_waiting_leaves_a_completed_restart() {
    let desk = Desk::with_options(&unique("hx_rk"), &[&*unique("HXRK")], &[], QUICK);
    desk.add_args(&[&*unique("BRAIN_HXRK")], &["--stop-delay-ms", "500"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    desk.wait_until_running();
    let old = managed_pid(&desk.snapshot(), &unique("BRAIN_HXRK")).unwrap();
    let (mut restart, _restart_lines) =
        master_launch_spawn(&desk, &["restart", &*unique("BRAIN_HXRK")]);
    wait_until("the restart to be taken", || {
        desk.master_log()
            .contains(&*format!("{}: restart requested", unique("BRAIN_HXRK")))
    });
    restart.kill().unwrap();
    restart.wait().unwrap();
    wait_until("the new brain to run", || {
        let snapshot = desk.snapshot();
        assert!(
            copies(&snapshot, &unique("BRAIN_HXRK")) <= 1,
            "two brains at once"
        );
        managed_pid(&snapshot, &unique("BRAIN_HXRK")).is_some_and(|pid| pid != old)
    });
    wait_until("check-procs to be healthy", || {
        check_procs_json(&desk).0 == 0
    });
    assert!(
        !desk
            .lock_dir()
            .join(&*format!("{}.restart", unique("BRAIN_HXRK")))
            .exists()
    );
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}

/// Issue #24: `master-launch restart WATCHDOG_X` racing `safe-shutdown --account X`.
/// The restart used to be taken while the brain was in the graceful stop
/// safe-shutdown asked for, and stopped the watchdog beside it: the brain ran alone
/// for the rest of its stop. Now a watchdog's requests wait until its brain's stop has
/// ended. Rule 13 is sampled every 10 ms over 20 rounds.
#[test]
fn hx_a_watchdog_restart_racing_an_account_stop_never_leaves_its_brain_alone() {
    let desk = Desk::with_options(&unique("hx_ra"), &[&*unique("HXRA")], &[], QUICK);
    // A graceful stop longer than the orchestrator's 250 ms look at the lock dir, so
    // that the restart request lands inside it.
    desk.add_args(&[&*unique("BRAIN_HXRA")], &["--stop-delay-ms", "600"]);
    let (orchestrator, _lines) = launch(&desk, &[]);
    for round in 0..fleet_tests::wine::race_rounds(20, 2) {
        desk.wait_until_running();
        let mark = desk.master_log().len();
        let mut command = Command::new(tool("safe-shutdown", "safe-shutdown"));
        command
            .arg("--config")
            .arg(desk.config())
            .args(["--yes", "--account", &*unique("HXRA"), "--timeout", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut shutdown = fleet_tests::wine::spawn(&mut command).unwrap();
        wait_until("the brain's stop request to be taken", || {
            log_position(
                &desk.master_log(),
                &format!("{}: stop requested", unique("BRAIN_HXRA")),
                mark,
            )
            .is_some()
        });
        let (mut restart, _restart_lines) =
            master_launch_spawn(&desk, &["restart", &*unique("WATCHDOG_HXRA")]);
        let mut restarted = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: the race did not end"
            );
            let snapshot = desk.snapshot();
            let (watchdogs, brains) = (
                copies(&snapshot, &unique("WATCHDOG_HXRA")),
                copies(&snapshot, &unique("BRAIN_HXRA")),
            );
            assert!(
                brains == 0 || watchdogs == 1,
                "round {round}: a brain without its watchdog: {}",
                &desk.master_log()[mark..]
            );
            restarted = restarted || restart.try_wait().unwrap().is_some();
            if restarted && shutdown.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let shutdown_code = shutdown.wait().unwrap().code();
        assert_eq!(shutdown_code, Some(0), "round {round}");
        let log = desk.master_log();
        let brain_exit =
            log_position(&log, &format!("{}: exited", unique("BRAIN_HXRA")), mark).unwrap();
        let watchdog_exit =
            log_position(&log, &format!("{}: exited", unique("WATCHDOG_HXRA")), mark).unwrap();
        assert!(
            brain_exit < watchdog_exit,
            "round {round}: {}",
            &log[mark..]
        );
        // Whatever the restart left running, the account comes back whole.
        let output = master_launch(&desk, &["start", "--account", &*unique("HXRA")]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_eq!(stop_desk(&desk, orchestrator), 0);
}
