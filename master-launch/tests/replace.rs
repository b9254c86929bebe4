//! `master-launch --replace` (what `SAFE_START.bat` runs) against real processes: a
//! desk under another master-launch, hand-started bots and a copy without its lock,
//! a survivor, the YES rules, and an empty desk with stale lock files. Every desk has
//! names of its own (lock names are machine-wide).

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]
// The scenarios drive SIGTERM-graceful bots, a pty or `setpriv`; on Windows the helpers
// they share go unused.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use fleet_tests::census::{Census, all_once};
use fleet_tests::{Desk, Launched, Running, assert_safe_order, running_pids, unique, wait_until};
use lockcore::{LockRecord, ProcessProbe};

/// `master-launch --config <desk> ARGS`, stdin empty (no terminal).
fn master_launch(desk: &Desk, args: &[&str]) -> Command {
    desk.command(cargo_bin("master-launch"), args)
}

/// A master-launch run in the background, its stdout in lines.
fn spawn(desk: &Desk, args: &[&str]) -> Launched {
    Launched::spawn(master_launch(desk, args), desk)
}

/// The pid whose MASTER_LAUNCH lock record names it as holder, if any.
fn orchestrator(desk: &Desk) -> Option<u32> {
    desk.snapshot()
        .master
        .as_ref()
        .filter(|m| m.state.is_held())
        .and_then(|m| m.record.as_ref())
        .and_then(LockRecord::holder_identity)
        .map(|who| who.pid)
}

/// Samples the desk every 20 ms (never two copies of a component, never a brain
/// without its watchdog: `Census::check`) until `replacer` has started the desk and
/// every component runs once.
fn census_until_started(desk: &Desk, replacer: &Launched, what: &str) {
    let mut census = Census::new(&[("here", desk)]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = census.check(what);
        if all_once(&now)
            && replacer
                .lines
                .wait_for("desk started", Duration::ZERO)
                .is_some()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not started: {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Output as text: (stdout, stderr).
fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// Unix-only: the old desk's bots exit gracefully on SIGTERM and log it, which is how
// the order is read.
#[cfg(unix)]
#[test]
fn a_desk_under_another_master_launch_is_stopped_in_order_and_started_once_under_the_new_one() {
    let exit_log = fleet_tests::ExitLog::new();
    let desk = Desk::with_options(
        &unique("qs_rplc"),
        &[&*unique("RPLCA"), &*unique("RPLCB")],
        &["--exit-log", &exit_log.arg],
        "",
    );
    let mut old = spawn(&desk, &[]);
    old.wait_started();
    desk.wait_until_running();
    desk.wait_until_each_said_started();
    let old_pids = running_pids(&desk.snapshot());
    assert_eq!(orchestrator(&desk), Some(old.pid()));

    let new = spawn(&desk, &["--replace", "--yes", "--timeout", "5"]);
    census_until_started(&desk, &new, "during the replace");

    // The old master-launch ended cleanly after its desk, and no bot of its desk runs.
    assert_eq!(
        old.wait_exit(),
        0,
        "the old master-launch did not end cleanly"
    );
    let mut probe = ProcessProbe::new().unwrap();
    assert!(old_pids.iter().all(|&p| probe.identity(p).is_none()));
    // Each old bot stopped once, in the safe order; nothing was restarted behind it.
    let exits = exit_log.times();
    assert_eq!(exits.len(), 5, "{exits:?}");
    assert_safe_order(&exits, &unique("qs_rplc"));
    // The old one said its desk was stopped before the new one started its own.
    let log = desk.master_log();
    let old_done = log
        .find("desk stopped; all locks released")
        .unwrap_or_else(|| panic!("{log}"));
    let new_started = log.rfind("desk started").unwrap_or_else(|| panic!("{log}"));
    assert!(old_done < new_started, "{log}");
    // The desk runs once, under the new master-launch.
    desk.wait_until_running();
    assert_eq!(orchestrator(&desk), Some(new.pid()));
    let audit = std::fs::read_to_string(desk.dir.path().join("logs/safe-shutdown.log")).unwrap();
    assert!(
        audit.contains("--replace found 6 process(es)")
            && audit.contains("stop-all request")
            && audit.contains("confirmed by --yes")
            && audit.contains("all stopped"),
        "{audit}"
    );
    assert_eq!(new.stop_desk(), 0);
    desk.assert_no_lock_left("after the new desk stopped");
}

// Unix-only: hand-started stand-ins are asked with SIGTERM.
#[cfg(unix)]
#[test]
fn hand_started_bots_and_a_copy_without_its_lock_are_stopped_then_the_desk_starts() {
    let desk = Desk::new(&unique("qs_rplhand"), &[&*unique("RPLHAND")]);
    // A watchdog under its lock, held by a hand-started runner, and a brain started
    // by hand around the tools (a copy without its lock), and the global the same way.
    let _watchdog = desk.start_locked(&unique("WATCHDOG_RPLHAND"), &[]);
    let _brain = desk.start_by_hand(&unique("BRAIN_RPLHAND"));
    let _global = desk.start_launcher_by_hand(&unique("qs_rplhand"));
    let before = running_pids(&desk.snapshot());
    assert_eq!(before.len(), 4, "the test's premise: {before:?}");

    let new = spawn(&desk, &["--replace", "--yes", "--timeout", "2"]);
    census_until_started(&desk, &new, "replacing hand-started bots");
    let mut probe = ProcessProbe::new().unwrap();
    assert!(before.iter().all(|&p| probe.identity(p).is_none()));
    desk.wait_until_running();
    assert_eq!(orchestrator(&desk), Some(new.pid()));
    let audit = std::fs::read_to_string(desk.dir.path().join("logs/safe-shutdown.log")).unwrap();
    // The copy without its lock was asked directly; the runner-held watchdog through
    // its holder.
    assert!(
        audit.contains(&*format!("{} (pid", unique("BRAIN_RPLHAND")))
            && audit.contains("asked to stop: SIGTERM"),
        "{audit}"
    );
    assert!(
        audit.contains(&*format!("{} (pid", unique("WATCHDOG_RPLHAND")))
            && audit.contains("stop request to its holder"),
        "{audit}"
    );
    assert!(audit.contains("all stopped"), "{audit}");
    assert_eq!(new.stop_desk(), 0);
}

/// What the replace shows before it acts: check-procs' table and problems (the copy
/// without its lock), then what it stops in order; without a terminal and without
/// `--yes` it refuses (exit 2) and the desk runs on untouched, the old master-launch
/// included.
#[test]
fn without_a_terminal_and_without_yes_it_refuses_and_touches_nothing() {
    let desk = Desk::new(&unique("qs_rplnoterm"), &[&*unique("RPLNOTERM")]);
    let mut old = spawn(&desk, &[]);
    old.wait_started();
    desk.wait_until_running();
    let _copy = desk.start_by_hand(&unique("qs_rplnoterm"));
    let before = running_pids(&desk.snapshot());
    let locks = desk.lock_files();

    let output = master_launch(&desk, &["--replace"]).output().unwrap();
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("pass --yes"), "{stderr}");
    // check-procs' table, its problems, and the list of what would be stopped.
    assert!(
        stdout.contains("COMPONENT") && stdout.contains("(orchestrator)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("problem") && (stdout.contains("DUPLICATE") || stdout.contains("UNLOCKED")),
        "{stdout}"
    );
    assert!(
        stdout.contains("HOW IT WAS FOUND") && stdout.contains("process table (no lock)"),
        "{stdout}"
    );
    assert_eq!(running_pids(&desk.snapshot()), before);
    assert_eq!(desk.lock_files(), locks);
    assert_eq!(orchestrator(&desk), Some(old.pid()));
    assert!(old.running.child.try_wait().unwrap().is_none());
    let audit = std::fs::read_to_string(desk.dir.path().join("logs/safe-shutdown.log")).unwrap();
    assert!(audit.contains("refused: no terminal"), "{audit}");
    old.stop_desk();
}

// Unix-only: the pseudo-terminal comes from Python's pty module.
#[cfg(unix)]
#[test]
fn at_the_prompt_an_answer_other_than_yes_touches_nothing() {
    let desk = Desk::new(&unique("qs_rplprompt"), &[&*unique("RPLPROMPT")]);
    let old = spawn(&desk, &[]);
    old.wait_started();
    desk.wait_until_running();
    let before = running_pids(&desk.snapshot());
    let exe = cargo_bin("master-launch");
    let config = desk.config();
    let args = [
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
        std::ffi::OsStr::new("--replace"),
    ];
    for answer in ["no", "yes please", ""] {
        let (code, screen) = fleet_tests::pty::answer_prompt(&exe, &args, answer);
        assert_eq!(code, 1, "{answer:?}: {screen}");
        assert!(
            screen.contains("Type YES to stop these and start the desk"),
            "{screen}"
        );
        assert!(
            screen.contains("Cancelled. Nothing was stopped and nothing started."),
            "{screen}"
        );
        assert_eq!(running_pids(&desk.snapshot()), before, "{answer:?}");
        assert_eq!(orchestrator(&desk), Some(old.pid()));
    }
    assert_eq!(old.stop_desk(), 0);
}

/// A brain that outlives its stop (here: one the replacing user may not signal, run
/// through `setpriv` as `nobody`, and that ignores stop requests besides): nothing is
/// started, exit 1, the survivor is named. Linux, as root; elsewhere it says so and
/// ends.
#[cfg(target_os = "linux")]
#[test]
fn a_brain_that_survives_its_stop_starts_nothing_and_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let desk = Desk::new(&unique("qs_rplsurv"), &[&*unique("RPLSURV")]);
    desk.allow_brains_alone();
    let brain = {
        let mut command = Command::new(fleet_tests::stand_in());
        command
            .args([&*unique("BRAIN_RPLSURV"), "--ignore-stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Running::new(command.spawn().unwrap())
    };
    wait_until("the brain to run", || {
        desk.snapshot()
            .component(&unique("BRAIN_RPLSURV"))
            .is_some_and(|v| v.copies.len() == 1)
    });
    // `nobody` must read the config and write the logs and the lock dir.
    std::fs::set_permissions(desk.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["logs", ".locks"] {
        let path = desk.dir.path().join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(fleet_tests::tool("master-launch", "master-launch"))
        .arg("--config")
        .arg(desk.config())
        .args(["--replace", "--yes", "--timeout", "1"])
        .stdin(Stdio::null())
        .output();
    let output = match as_nobody {
        Ok(output) if !String::from_utf8_lossy(&output.stderr).starts_with("setpriv:") => output,
        _ => {
            eprintln!("cannot run as nobody here (no setpriv, or not root): test not run");
            return;
        }
    };
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let pid = brain.pid();
    assert!(
        stderr.contains("THESE ARE STILL RUNNING, so nothing was started")
            && stderr.contains(&format!("{} (pid {pid})", unique("BRAIN_RPLSURV"))),
        "{stderr}"
    );
    assert!(
        stderr.contains("NOT killed: the system refused"),
        "{stderr}"
    );
    assert!(!stdout.contains("Starting the desk"), "{stdout}");
    // Nothing was started: no lock taken, no other component running.
    assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
    let snapshot = desk.snapshot();
    assert_eq!(running_pids(&snapshot), vec![pid], "{snapshot:?}");
    assert!(!desk.master_log().contains("desk started"));
}

/// Nothing of the desk runs: it starts at once, no question asked (also with no
/// terminal), after pre-flight cleaned the desk's stale and corrupt lock files; files
/// the tools did not write are left as they are.
#[test]
fn an_empty_desk_starts_at_once_and_only_the_desks_stale_locks_are_cleaned() {
    let desk = Desk::new(&unique("qs_rplempty"), &[&*unique("RPLEMPTY")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    let stale = serde_json::json!({
        "pid": 999_999, "name": &*unique("BRAIN_RPLEMPTY"), "account": &*unique("RPLEMPTY"),
        "timestamp": "2026-01-01T00:00:00", "pid_start": 1,
        "holder_pid": 999_999, "holder_start": 1,
        "host": "desk", "command": ["python", &*format!("{}.py", unique("BRAIN_RPLEMPTY"))]
    })
    .to_string();
    std::fs::write(desk.lock_path(&unique("BRAIN_RPLEMPTY")), &stale).unwrap();
    std::fs::write(desk.lock_path(&unique("WATCHDOG_RPLEMPTY")), b"garbage").unwrap();
    let notes = desk.lock_dir().join("notes.txt");
    std::fs::write(&notes, b"the trader's notes").unwrap();

    let new = spawn(&desk, &["--replace"]);
    new.wait_started();
    desk.wait_until_running();
    assert_eq!(orchestrator(&desk), Some(new.pid()));
    assert_eq!(std::fs::read(&notes).unwrap(), b"the trader's notes");
    let log = desk.master_log();
    assert!(
        log.contains(&*format!("cleaned stale lock {}", unique("BRAIN_RPLEMPTY")))
            && log.contains(&*format!(
                "cleaned corrupt lock {}",
                unique("WATCHDOG_RPLEMPTY")
            )),
        "{log}"
    );
    assert!(
        !desk.dir.path().join("logs/safe-shutdown.log").exists(),
        "nothing was stopped, yet an audit was written"
    );
    assert_eq!(new.stop_desk(), 0);
    assert_eq!(std::fs::read(&notes).unwrap(), b"the trader's notes");
}

/// `--yes` and `--timeout` belong to `--replace`; `--replace` does not go with `--only`
/// or a subcommand: usage errors (exit 2), nothing started.
#[test]
fn replace_options_out_of_place_are_usage_errors() {
    let desk = Desk::new(&unique("qs_rplusage"), &[&*unique("RPLUSAGE")]);
    for args in [
        &["--yes"][..],
        &["--timeout", "5"],
        &["--replace", "--only", &*unique("RPLUSAGE")],
        &["--replace", "--timeout", "86401"],
        &["--replace", "run", &*unique("qs_rplusage")],
    ] {
        let output = master_launch(&desk, args).output().unwrap();
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {stdout}\n{stderr}"
        );
        assert!(desk.lock_files().is_empty(), "{args:?}");
    }
}

/// Ctrl+C (SIGINT) while the replace waits for the old desk to stop ends it at once
/// with nothing started: the replacer is gone while the old brain, which ignores its
/// stop, still runs within its grace, and the old master-launch alone holds the desk.
// Unix-only: it sends SIGINT.
#[cfg(unix)]
#[test]
fn ctrl_c_during_the_stop_ends_it_with_nothing_started() {
    let desk = Desk::new(&unique("qs_rplint"), &[&*unique("RPLINT")]);
    desk.add_args(&[&*unique("BRAIN_RPLINT")], &["--ignore-stop"]);
    let old = spawn(&desk, &[]);
    old.wait_started();
    desk.wait_until_running();
    desk.wait_until_each_said_started();
    let brain = fleet_tests::managed_pids(&desk.snapshot(), &[&*unique("BRAIN_RPLINT")])[0];

    let mut new = spawn(&desk, &["--replace", "--yes", "--timeout", "60"]);
    assert!(
        new.lines
            .wait_for("stopping brains", Duration::from_secs(60))
            .is_some(),
        "the replace did not start stopping"
    );
    let status = Command::new("kill")
        .args(["-INT", &new.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(new.wait_exit(), 1);
    // The old brain is within its 60 s grace: the replacer did not wait for the stop.
    let mut probe = ProcessProbe::new().unwrap();
    assert!(probe.identity(brain).is_some(), "the brain is gone already");
    assert_eq!(desk.master_log().matches("desk started").count(), 1);
    assert_ne!(orchestrator(&desk), Some(new.pid()));
    let census = Census::new(&[("here", &desk)]).check("after the interrupt");
    assert!(census.values().all(|hosts| hosts.len() <= 1), "{census:?}");
    drop(old);
}

/// `[cluster]`: what another host runs is not stopped from here. Host B's `--replace`
/// names each component host A holds as not stopped, asks nothing (nothing of the desk
/// runs on B), starts, and stands by for all of them; A's desk runs on untouched, every
/// component once (sampled every 20 ms). A real etcd on loopback; not under Wine.
#[test]
fn with_a_cluster_what_another_host_holds_is_not_stopped_and_stands_by() {
    use fleet_tests::etcd::{Etcd, cluster_desk, skip_under_wine};
    if skip_under_wine("with_a_cluster_what_another_host_holds_is_not_stopped_and_stands_by") {
        return;
    }
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "RPLCLU");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "RPLCLU");
    let mut a = spawn(&desk_a, &[]);
    a.wait_started();
    desk_a.wait_until_running();
    let a_pids = running_pids(&desk_a.snapshot());
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);

    let b = spawn(&desk_b, &["--replace", "--yes"]);
    // Everything B says before it starts, in order.
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = b
            .lines
            .wait_for("", deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("B never started; it said: {said:#?}"));
        if line.contains("Nothing of the desk runs here: starting it.") {
            break;
        }
        said.push(line);
    }
    for name in desk_b.component_names() {
        assert!(
            said.iter()
                .any(|l| l.starts_with(&format!("{name}: runs on host A"))
                    && l.contains("not stopped from here")),
            "{name}: {said:#?}"
        );
    }
    wait_until("B to stand by for every component", || {
        desk_b
            .master_log()
            .contains("desk started: 0 processes, 5 standing by")
    });
    let now = census.during(Duration::from_millis(500), "B stands by");
    assert!(now.values().all(|h| h == &["A"]), "{now:?}");
    assert_eq!(running_pids(&desk_a.snapshot()), a_pids);
    assert!(a.running.child.try_wait().unwrap().is_none());
    assert_eq!(b.stop_desk(), 0);
    assert_eq!(a.stop_desk(), 0);
}
