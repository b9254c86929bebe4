//! `lock-gc` against real lock files and real holders.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::prelude::*;
use fleet_tests::{Desk, Running, tool};
use predicates::prelude::*;

fn lock_gc() -> Command {
    Command::cargo_bin("lock-gc").unwrap()
}

/// A lock dir with one file of each kind: held, legacy, stale, corrupt.
struct Mess {
    desk: Desk,
    _holder: Running,
    _legacy_bot: Running,
}

fn mess(tag: &str) -> Mess {
    let desk = Desk::new(&format!("gc_{tag}"), &[tag]);
    let holder = desk.start_locked(&format!("BRAIN_{tag}"), &[]);
    let legacy_bot = desk.start_by_hand(&format!("WATCHDOG_{tag}"));
    std::fs::write(
        desk.lock_path(&format!("WATCHDOG_{tag}")),
        format!(
            r#"{{"pid": {}, "name": "WATCHDOG_{tag}", "timestamp": "2999-01-01T00:00:00"}}"#,
            legacy_bot.pid()
        ),
    )
    .unwrap();
    let status = Command::new(tool("fleet-tests", "lock-taker"))
        .arg("abandon")
        .arg(desk.lock_dir())
        .arg(format!("gc_{tag}"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(desk.lock_path("CORRUPT_ONE"), b"\x00garbage").unwrap();
    Mess {
        desk,
        _holder: holder,
        _legacy_bot: legacy_bot,
    }
}

#[test]
fn removes_stale_and_corrupt_files_and_keeps_held_and_legacy_ones() {
    let m = mess("GCALL");
    let desk = &m.desk;
    lock_gc()
        .arg("--config")
        .arg(desk.config())
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains(
                "removed gc_GCALL.lock: stale (no process holds it, last holder pid",
            )
            .and(predicate::str::contains(
                "removed CORRUPT_ONE.lock: corrupt (the record is not valid",
            ))
            .and(predicate::str::contains("kept WATCHDOG_GCALL (legacy"))
            .and(predicate::str::contains("removed 2 lock files")),
        );
    assert!(!desk.lock_path("gc_GCALL").exists());
    assert!(!desk.lock_path("CORRUPT_ONE").exists());
    assert!(desk.lock_path("BRAIN_GCALL").exists(), "held lock removed");
    assert!(
        desk.lock_path("WATCHDOG_GCALL").exists(),
        "legacy lock removed"
    );
    // Nothing left to do the second time.
    lock_gc()
        .arg("--config")
        .arg(desk.config())
        .assert()
        .code(0)
        .stdout(predicate::str::contains("removed 0 lock files"));
}

#[test]
fn dry_run_lists_and_removes_nothing() {
    let m = mess("GCDRY");
    let desk = &m.desk;
    lock_gc()
        .arg("--config")
        .arg(desk.config())
        .arg("--dry-run")
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("would remove gc_GCDRY.lock: stale")
                .and(predicate::str::contains(
                    "would remove CORRUPT_ONE.lock: corrupt",
                ))
                .and(predicate::str::contains("would remove 2 lock files")),
        );
    for name in ["gc_GCDRY", "CORRUPT_ONE", "BRAIN_GCDRY", "WATCHDOG_GCDRY"] {
        assert!(desk.lock_path(name).exists(), "{name} removed by a dry run");
    }
}

#[test]
fn lock_dir_works_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("X.lock"), b"").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a lock").unwrap();
    lock_gc()
        .current_dir(dir.path())
        .arg("--lock-dir")
        .arg(dir.path())
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "removed X.lock: corrupt (the file is empty)",
        ));
    assert!(dir.path().join("notes.txt").exists());
    // A missing folder has nothing to clean.
    lock_gc()
        .arg("--lock-dir")
        .arg(dir.path().join("missing"))
        .assert()
        .code(0)
        .stdout(predicate::str::contains("removed 0 lock files"));
}

#[test]
fn bad_arguments_and_bad_config_exit_2() {
    lock_gc().arg("--bogus").assert().code(2);
    lock_gc()
        .args(["--config", "a.toml", "--lock-dir", "x"])
        .assert()
        .code(2);
    lock_gc()
        .args(["--config", "/nonexistent/fleet.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "lock-gc: error: cannot read config file",
        ));
}

/// lock-gc runs over and over while eight processes take and release the same name
/// and crashed holders keep leaving stale files: no holder ever loses its lock file.
#[test]
fn lock_gc_in_a_loop_never_removes_a_held_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let lock_dir = tmp.path().join("locks");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let go = fleet_tests::Barrier::new(tmp.path(), "go");
    let taker = tool("fleet-tests", "lock-taker");
    let cyclers: Vec<(Running, fleet_tests::Lines)> = (0..8)
        .map(|_| {
            let mut child = Command::new(&taker)
                .arg("cycle")
                .arg(&lock_dir)
                .arg("BRAIN_GCRACE")
                .arg(&go.path)
                .arg("400")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = fleet_tests::spawn_reader(child.stdout.take().unwrap());
            (Running::new(child), lines)
        })
        .collect();
    go.release();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut gc_runs = 0;
    let mut removed = 0;
    let mut cyclers = cyclers;
    while cyclers
        .iter_mut()
        .any(|(r, _)| r.child.try_wait().unwrap().is_none())
    {
        assert!(Instant::now() < deadline, "cyclers did not finish");
        // Crashed holders leave stale files: one on the contested name (the cyclers may
        // take it over first) and one on a quiet name that lock-gc must always remove.
        for name in ["BRAIN_GCRACE", "WATCHDOG_GCRACE"] {
            let status = Command::new(&taker)
                .arg("abandon")
                .arg(&lock_dir)
                .arg(name)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let output = lock_gc().arg("--lock-dir").arg(&lock_dir).output().unwrap();
        assert_eq!(output.status.code(), Some(0));
        let text = String::from_utf8(output.stdout).unwrap();
        removed += text
            .lines()
            .filter(|l| l.starts_with("removed BRAIN_GCRACE"))
            .count();
        // The quiet name's stale file is always there to remove.
        assert!(
            text.contains("removed WATCHDOG_GCRACE.lock: stale"),
            "{text}"
        );
        gc_runs += 1;
    }
    let mut won = 0;
    for (mut running, lines) in cyclers {
        assert!(running.child.wait().unwrap().success());
        for line in lines.collect() {
            assert!(!line.starts_with("ERROR"), "{line}");
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                won += value["won"].as_u64().unwrap_or(0);
            }
        }
    }
    eprintln!(
        "{gc_runs} lock-gc runs removed {removed} stale files of the contested name; \
         holders won {won} times"
    );
    assert!(won > 0 && gc_runs > 5);
}
