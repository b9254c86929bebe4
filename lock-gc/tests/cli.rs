//! `lock-gc` against real lock files and real holders.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::prelude::*;
use fleet_tests::{Desk, Running, tool, unique};
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
    // Names of this run's own: `<tag>_<pid>` and `<tag>B_<pid>`.
    let second = unique(&format!("{tag}B"));
    let tag = unique(tag);
    let tag = tag.as_str();
    let desk = Desk::new(&format!("gc_{tag}"), &[tag, &second]);
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
    // An unreadable file named like a lock of this desk: ours, so removable.
    std::fs::write(desk.lock_path(&format!("BRAIN_{second}")), b"\x00garbage").unwrap();
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
            predicate::str::contains(&*format!(
                "removed {}.lock: stale (no process holds it, last holder pid",
                unique("gc_GCALL")
            ))
            .and(predicate::str::contains(&*format!(
                "removed {}.lock: corrupt (the record is not valid",
                unique("BRAIN_GCALLB")
            )))
            .and(predicate::str::contains(
                "kept CORRUPT_ONE.lock (unknown_lock: the record is not valid",
            ))
            .and(predicate::str::contains(&*format!(
                "kept {} (legacy",
                unique("WATCHDOG_GCALL")
            )))
            .and(predicate::str::contains("removed 2 lock files")),
        );
    assert!(!desk.lock_path(&unique("gc_GCALL")).exists());
    assert!(!desk.lock_path(&unique("BRAIN_GCALLB")).exists());
    assert!(
        desk.lock_path("CORRUPT_ONE").exists(),
        "an unreadable file with a name of no desk lock was removed"
    );
    assert!(
        desk.lock_path(&unique("BRAIN_GCALL")).exists(),
        "held lock removed"
    );
    assert!(
        desk.lock_path(&unique("WATCHDOG_GCALL")).exists(),
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
            predicate::str::contains(&*format!("would remove {}.lock: stale", unique("gc_GCDRY")))
                .and(predicate::str::contains(&*format!(
                    "would remove {}.lock: corrupt",
                    unique("BRAIN_GCDRYB")
                )))
                .and(predicate::str::contains(
                    "kept CORRUPT_ONE.lock (unknown_lock",
                ))
                .and(predicate::str::contains("would remove 2 lock files")),
        );
    for name in [
        &*unique("gc_GCDRY"),
        "CORRUPT_ONE",
        &*unique("BRAIN_GCDRY"),
        &*unique("WATCHDOG_GCDRY"),
        &*unique("BRAIN_GCDRYB"),
    ] {
        assert!(desk.lock_path(name).exists(), "{name} removed by a dry run");
    }
}

#[test]
fn lock_dir_works_without_a_config_and_keeps_unreadable_files_of_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("X.lock"), b"").unwrap();
    std::fs::write(dir.path().join("MASTER_LAUNCH.lock"), b"").unwrap();
    std::fs::write(
        dir.path().join("OLD.lock"),
        br#"{"pid": 4000000, "name": "OLD"}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a lock").unwrap();
    lock_gc()
        .current_dir(dir.path())
        .arg("--lock-dir")
        .arg(dir.path())
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("removed MASTER_LAUNCH.lock: corrupt (the file is empty)")
                .and(predicate::str::contains(
                    "kept X.lock (unknown_lock: the file is empty",
                ))
                .and(predicate::str::contains("removed OLD.lock: stale"))
                .and(predicate::str::contains("removed 2 lock files")),
        )
        .stderr(predicate::str::contains(
            "holds files that are not lock files or stop requests (notes.txt)",
        ));
    assert!(dir.path().join("notes.txt").exists());
    assert!(dir.path().join("X.lock").exists());
}

/// Table row: `lock-gc --lock-dir /nonexistent` said "removed 0 lock files", exit 0.
#[test]
fn a_lock_dir_that_does_not_exist_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    lock_gc()
        .arg("--lock-dir")
        .arg(dir.path().join("missing"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no such folder"));
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    lock_gc().arg("--lock-dir").arg(&file).assert().code(2);
}

/// docs/reference.md: exit 1 when the lock folder cannot be read (here the config's `lock_dir` is
/// a file): the cleaning did not happen, and the message names the folder. The file
/// is left as it was, with and without `--dry-run`.
#[test]
fn a_lock_dir_that_cannot_be_read_is_exit_1_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("locks");
    std::fs::write(&not_a_folder, b"a file, not a folder").unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        "lock_dir = \"locks\"\n[[account]]\nname = \"A\"\nbrain = [\"b\"]\nwatchdog = [\"w\"]\n",
    )
    .unwrap();
    for dry_run in [false, true] {
        let mut command = lock_gc();
        command.arg("--config").arg(&config);
        if dry_run {
            command.arg("--dry-run");
        }
        command
            .assert()
            .code(1)
            .stderr(predicate::str::contains("locks").and(predicate::str::contains("cannot")));
        assert_eq!(
            std::fs::read(&not_a_folder).unwrap(),
            b"a file, not a folder"
        );
    }
}

/// Table row: `lock_dir = "."` beside `poetry.lock` and `Pipfile.lock`: lock-gc deleted
/// both. Validation now refuses that lock dir; and a lock dir that holds another
/// program's `*.lock` files keeps them.
#[test]
fn other_programs_lock_files_are_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let poetry = "[[package]]\nname = \"requests\"\n";
    std::fs::write(dir.path().join("poetry.lock"), poetry).unwrap();
    std::fs::write(dir.path().join("Pipfile.lock"), b"{\"_meta\": {}}").unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        "lock_dir = \".\"\n[[account]]\nname = \"A\"\nbrain = [\"b\"]\nwatchdog = [\"w\"]\n",
    )
    .unwrap();
    lock_gc()
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the config's own folder"));
    for dry_run in [true, false] {
        let mut command = lock_gc();
        command.arg("--lock-dir").arg(dir.path());
        if dry_run {
            command.arg("--dry-run");
        }
        command.assert().code(0).stdout(
            predicate::str::contains("kept poetry.lock (unknown_lock")
                .and(predicate::str::contains("kept Pipfile.lock (unknown_lock")),
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("poetry.lock")).unwrap(),
        poetry
    );
    assert!(dir.path().join("Pipfile.lock").exists());
}

/// Table row: a FIFO named `junk.lock` hung lock-gc (also `--dry-run`); a symlink or a
/// directory named like a lock must be reported and left alone.
#[cfg(unix)]
#[test]
fn fifos_links_and_directories_named_like_locks_are_skipped_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let sentinel = dir.path().join("sentinel");
    std::fs::write(&sentinel, b"").unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(locks.join("junk.lock"))
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(&sentinel, locks.join("MASTER_LAUNCH.lock")).unwrap();
    std::fs::create_dir(locks.join("stray.lock")).unwrap();
    for dry_run in [true, false] {
        let mut command = lock_gc();
        command.arg("--lock-dir").arg(&locks);
        if dry_run {
            command.arg("--dry-run");
        }
        assert_cmd::Command::from_std(command)
            .timeout(Duration::from_secs(60))
            .assert()
            .code(0)
            .stdout(
                predicate::str::contains("skipped junk.lock: it is a named pipe (FIFO)")
                    .and(predicate::str::contains(
                        "skipped MASTER_LAUNCH.lock: it is a symbolic link",
                    ))
                    .and(predicate::str::contains(
                        "skipped stray.lock: it is a directory",
                    )),
            );
    }
    assert!(sentinel.exists());
    assert!(locks.join("junk.lock").exists());
    assert!(locks.join("stray.lock").is_dir());
    assert!(locks.join("MASTER_LAUNCH.lock").is_symlink());
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
                .arg(&*unique("BRAIN_GCRACE"))
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
        // Wine's CreateProcess fails now and then (1359): these starts retry there.
        for name in [&*unique("BRAIN_GCRACE"), &*unique("WATCHDOG_GCRACE")] {
            let status = fleet_tests::wine::status(
                Command::new(&taker).arg("abandon").arg(&lock_dir).arg(name),
            )
            .unwrap();
            assert!(status.success());
        }
        let output = fleet_tests::wine::output(lock_gc().arg("--lock-dir").arg(&lock_dir)).unwrap();
        assert_eq!(output.status.code(), Some(0));
        let text = String::from_utf8(output.stdout).unwrap();
        removed += text
            .lines()
            .filter(|l| l.starts_with(&*format!("removed {}", unique("BRAIN_GCRACE"))))
            .count();
        // The quiet name's stale file is always there to remove.
        assert!(
            text.contains(&*format!(
                "removed {}.lock: stale",
                unique("WATCHDOG_GCRACE")
            )),
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

/// The view `MASTER_LAUNCH.state` of a master-launch killed outright is removed (a dry
/// run only names it); the view of one that runs is never touched.
#[test]
fn the_view_of_a_killed_master_launch_is_removed_and_a_live_ones_kept() {
    let desk = Desk::new(
        &format!("gc_view{}", std::process::id()),
        &[&format!("GCVIEW{}", std::process::id())],
    );
    let view = desk.lock_dir().join("MASTER_LAUNCH.state");
    let (mut orchestrator, lines) = fleet_tests::start_master_launch(&desk.config(), &[]);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(30))
            .is_some()
    );
    fleet_tests::wait_until("the view to be published", || view.exists());
    let run = |extra: &[&str]| {
        let output = lock_gc()
            .arg("--config")
            .arg(desk.config())
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let live = run(&[]);
    assert!(
        view.exists(),
        "a live master-launch's view was removed: {live}"
    );
    assert!(!live.contains("MASTER_LAUNCH.state"), "{live}");
    let pid = orchestrator.pid();
    orchestrator.kill();
    let dry = run(&["--dry-run"]);
    assert!(
        dry.contains(&format!(
            "would remove MASTER_LAUNCH.state: the view of master-launch pid {pid}, which is gone"
        )),
        "{dry}"
    );
    assert!(view.exists(), "a dry run removed the view");
    let removed = run(&[]);
    assert!(
        removed.contains(&format!(
            "removed MASTER_LAUNCH.state: the view of master-launch pid {pid}"
        )),
        "{removed}"
    );
    assert!(!view.exists(), "the stale view is still there");
}
