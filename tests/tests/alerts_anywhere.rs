//! `[[alert]]` commands on every platform (run under Wine too): the alert command is
//! `alert-sink` (tests/src/bin), a Rust program that appends the event JSON it reads
//! on stdin to a file, so no shell or Python is needed. `master-launch alert-test`
//! delivers its sample; and while master-launch runs, a copy of a brain started by
//! hand (`copy_scan_secs`) raises one `duplicate` alert naming its pid, while the
//! managed brain's own worker (the same command line, started by the brain) raises
//! none.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::orchestrated::{launch, managed_pid, master_launch, stop_desk, wait_supervised};
use fleet_tests::{Desk, Running, json_lines, stand_in, tool, wait_until, wine};
use serde_json::Value;

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

/// A TOML literal string (a Windows path keeps its backslashes).
fn literal(text: &Path) -> String {
    format!("'{}'", text.display().to_string().replace('\'', ""))
}

/// `[[alert]]` running `alert-sink FILE` for `kinds` (TOML array text, or none).
fn sink_alert(file: &Path, kinds: Option<&str>) -> String {
    let kinds = kinds.map(|k| format!("kinds = {k}\n")).unwrap_or_default();
    format!(
        "\n[[alert]]\ncommand = [{}, {}]\n{kinds}",
        literal(&tool("fleet-tests", "alert-sink")),
        literal(file)
    )
}

fn duplicates(path: &Path) -> Vec<Value> {
    json_lines(path)
        .into_iter()
        .filter(|e| e["kind"] == "duplicate")
        .collect()
}

#[test]
fn alert_test_runs_a_native_alert_command_that_receives_the_json() {
    let account = unique("AAT");
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received.jsonl");
    let tail = format!(
        "[defaults]\nstop_timeout_secs = 2\n{}",
        sink_alert(&received, None)
    );
    let desk = Desk::with_options(&unique("qs_aat_"), &[&account], &[], &tail);
    let output = master_launch(&desk, &["alert-test"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let events = json_lines(&received);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["kind"], "alert_test");
    assert!(events[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(
        events[0]["at"]
            .as_str()
            .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()),
        "{events:#?}"
    );
}

/// How often the test desk looks for copies.
const SCAN: Duration = Duration::from_secs(1);
/// What the alert may take beyond the interval (a loaded 2-core machine, Wine).
const MARGIN: Duration = Duration::from_secs(10);

#[test]
fn a_copy_started_by_hand_is_alerted_once_and_a_managed_bots_worker_never() {
    let account = unique("ACS");
    let brain = format!("BRAIN_{account}");
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received.jsonl");
    let tail = format!(
        "[defaults]\nstop_timeout_secs = 2\n{}",
        sink_alert(&received, None)
    );
    let desk = Desk::with_options(&unique("qs_acs_"), &[&account], &[], &tail);
    // The brain starts a worker with its own command line (Python's multiprocessing).
    desk.add_args(&[&brain], &["--spawn", "worker"]);
    let config = std::fs::read_to_string(desk.config()).unwrap();
    std::fs::write(
        desk.config(),
        format!("copy_scan_secs = {}\n{config}", SCAN.as_secs()),
    )
    .unwrap();

    let (running, _lines) = launch(&desk, &[]);
    let managed = wait_supervised(&desk, &brain, running.pid());
    // The worker runs, and by rule 9 alone it would be a copy.
    let rule = lockcore::CopyRule::new(
        &[
            stand_in().display().to_string(),
            brain.clone(),
            "--spawn".into(),
            "worker".into(),
        ],
        None,
    );
    let mut probe = lockcore::ProcessProbe::new().unwrap();
    wait_until("the managed brain's worker", || {
        let table = probe.table();
        table
            .descendants(managed)
            .iter()
            .any(|pid| table.get(*pid).is_some_and(|p| rule.is_copy(&p.cmd)))
    });
    // Several scans: the worker is part of the managed brain, never a copy.
    std::thread::sleep(SCAN * 4);
    assert_eq!(duplicates(&received), Vec::<Value>::new());

    // A copy started by hand with the same command line: one alert naming its pid.
    let mut by_hand = Command::new(stand_in());
    by_hand
        .args([brain.as_str(), "--spawn", "worker"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let copy = Running::new(wine::spawn(&mut by_hand).unwrap());
    let started = Instant::now();
    wait_until("the duplicate alert", || !duplicates(&received).is_empty());
    let took = started.elapsed();
    assert!(took < SCAN + MARGIN, "the alert took {took:?}");
    // More scans: still the one alert (the copy, and its worker in its tree, once).
    std::thread::sleep(SCAN * 4);
    let alerts = duplicates(&received);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["pid"], copy.pid());
    assert_eq!(alert["component"], brain.as_str());
    assert_eq!(alert["account"], account.as_str());
    let reason = alert["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("pid {}", copy.pid())) && reason.contains(&brain),
        "{alert}"
    );
    assert!(reason.contains("--spawn worker"), "{alert}");
    let fix = alert["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains(&format!("kill {}", copy.pid())) && fix.contains("safe-shutdown"),
        "{alert}"
    );
    // The event log has it too, and the desk's own brain runs on untouched.
    let logged: Vec<Value> = json_lines(&desk.dir.path().join("logs/events.jsonl"))
        .into_iter()
        .filter(|e| e["kind"] == "duplicate")
        .collect();
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(managed_pid(&desk.snapshot(), &brain), Some(managed));
    drop(copy);
    stop_desk(&desk, running);
}
