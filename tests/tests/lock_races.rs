//! The lock invariant under real processes: races, kills, hand deletion, and
//! remove-if-stale running against live acquirers.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_tests::{Barrier, Lines, spawn_reader, unique};
use lockcore::{Acquire, LockClaim, LockDir, ProcessProbe, Removal};

const TAKER: &str = env!("CARGO_BIN_EXE_lock-taker");

fn taker(args: &[&str]) -> Command {
    let mut command = Command::new(TAKER);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    command
}

fn spawn_with_lines(mut command: Command) -> (Child, Lines) {
    let mut child = fleet_tests::wine::spawn(&mut command).expect("spawn lock-taker");
    let lines = spawn_reader(child.stdout.take().expect("stdout"));
    (child, lines)
}

fn field(line: &str, key: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get(key)?.as_u64().and_then(|v| u32::try_from(v).ok())
}

#[test]
fn sixteen_starters_at_once_make_exactly_one_holder_every_round() {
    const STARTERS: usize = 16;
    let rounds = fleet_tests::wine::race_rounds(200, 25);
    let tmp = tempfile::tempdir().unwrap();
    let lock_dir = tmp.path().join("locks");
    // An inspector (what check-procs does every minute) probes the lock the whole time:
    // it must never make a starter give up.
    let done = Arc::new(AtomicBool::new(false));
    let inspections = Arc::new(AtomicUsize::new(0));
    let inspector = {
        let (done, inspections, dir) = (done.clone(), inspections.clone(), LockDir::new(&lock_dir));
        std::thread::spawn(move || {
            let mut probe = ProcessProbe::new().unwrap();
            while !done.load(Ordering::Relaxed) {
                dir.inspect(&unique("BRAIN_ATLAS"), &mut probe).unwrap();
                inspections.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for round in 0..rounds {
        let go = Barrier::new(tmp.path(), &format!("go{round}"));
        let release = Barrier::new(tmp.path(), &format!("release{round}"));
        let starters: Vec<(Child, Lines)> = (0..STARTERS)
            .map(|_| {
                spawn_with_lines(taker(&[
                    "race",
                    lock_dir.to_str().unwrap(),
                    &*unique("BRAIN_ATLAS"),
                    go.path.to_str().unwrap(),
                    release.path.to_str().unwrap(),
                ]))
            })
            .collect();
        for (_, lines) in &starters {
            assert!(lines.wait_for("ready", Duration::from_secs(30)).is_some());
        }
        go.release();
        let mut winners = Vec::new();
        let mut refused_by = Vec::new();
        for (_, lines) in &starters {
            let line = lines
                .wait_for("outcome", Duration::from_secs(30))
                .expect("every starter reports");
            if line.contains("acquired") {
                winners.push(field(&line, "pid").unwrap());
            } else {
                refused_by.push(field(&line, "holder_pid").unwrap());
            }
        }
        // Losers have decided while the winner still holds; only now may it let go.
        release.release();
        for (mut child, _) in starters {
            assert!(child.wait().unwrap().success());
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert!(
            refused_by.iter().all(|&pid| pid == winners[0]),
            "round {round}: a starter was refused by someone other than the holder \
             {}: {refused_by:?}",
            winners[0]
        );
        assert_released(&lock_dir, &unique("BRAIN_ATLAS"), round);
    }
    done.store(true, Ordering::Relaxed);
    inspector.join().unwrap();
    assert!(inspections.load(Ordering::Relaxed) > rounds);
}

/// DESIGN.md rule 17: starters of one lock name in *different* lock folders (copies
/// of a desk folder) race through the machine-wide name alone: exactly one wins each
/// round, and every loser names it.
// Linux and Windows; macOS has no machine-wide name (lockcore/src/lock/machine.rs).
#[cfg(any(target_os = "linux", windows))]
#[test]
fn starters_in_separate_lock_folders_make_exactly_one_holder_on_the_machine_every_round() {
    const STARTERS: usize = 8;
    let rounds = fleet_tests::wine::race_rounds(40, 8);
    let tmp = tempfile::tempdir().unwrap();
    // Unique to this run: the name is machine-wide, and other suites run concurrently.
    let name = format!("BRAIN_MRACE_{}", std::process::id());
    for round in 0..rounds {
        let go = Barrier::new(tmp.path(), &format!("go{round}"));
        let release = Barrier::new(tmp.path(), &format!("release{round}"));
        let starters: Vec<(Child, Lines)> = (0..STARTERS)
            .map(|i| {
                let folder = tmp.path().join(format!("desk{i}")).join("locks");
                spawn_with_lines(taker(&[
                    "race",
                    folder.to_str().unwrap(),
                    &name,
                    go.path.to_str().unwrap(),
                    release.path.to_str().unwrap(),
                ]))
            })
            .collect();
        for (_, lines) in &starters {
            assert!(lines.wait_for("ready", Duration::from_secs(30)).is_some());
        }
        go.release();
        let mut winners = Vec::new();
        let mut refused_by = Vec::new();
        for (_, lines) in &starters {
            let line = lines
                .wait_for("outcome", Duration::from_secs(30))
                .expect("every starter reports");
            if line.contains("acquired") {
                winners.push(field(&line, "pid").unwrap());
            } else {
                refused_by.push(field(&line, "holder_pid").unwrap());
            }
        }
        release.release();
        for (mut child, _) in starters {
            assert!(child.wait().unwrap().success());
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        // Linux finds the holder through /proc, Windows reads the pid it wrote.
        assert!(
            refused_by.iter().all(|&pid| pid == winners[0]),
            "round {round}: losers named {refused_by:?}, the holder is {}",
            winners[0]
        );
    }
}

/// After a release the file is gone. On Windows a release cannot delete a file that an
/// inspector has open at that moment; it may then stay behind, but never held.
fn assert_released(lock_dir: &Path, name: &str, round: usize) {
    let path = lock_dir.join(format!("{name}.lock"));
    if cfg!(windows) && path.exists() {
        let mut probe = ProcessProbe::new().unwrap();
        let status = LockDir::new(lock_dir).inspect(name, &mut probe).unwrap();
        assert!(
            status.is_none_or(|s| !s.state.is_held()),
            "round {round}: still held"
        );
    } else {
        assert!(!path.exists(), "round {round}: file left");
    }
}

#[test]
fn a_holder_killed_with_sigkill_frees_the_lock_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    for _ in 0..20 {
        let (mut holder, lines) = spawn_with_lines(taker(&[
            "hold",
            tmp.path().to_str().unwrap(),
            &*unique("WATCHDOG_FTMO"),
        ]));
        assert!(
            lines
                .wait_for("acquired", Duration::from_secs(30))
                .is_some()
        );
        match dir
            .acquire(&unique("WATCHDOG_FTMO"), &LockClaim::default(), &mut probe)
            .unwrap()
        {
            Acquire::Held(h) => assert_eq!(h.record.unwrap().holder_pid, Some(holder.id())),
            Acquire::Acquired(_) => panic!("took a lock that a live process holds"),
        }
        holder.kill().unwrap(); // SIGKILL: no destructor, no clean-up
        // Signals are delivered asynchronously: wait until it is dead, but do not reap
        // it, on purpose: a zombie holds no lock.
        let pid = holder.id();
        let killed = Instant::now();
        while probe.identity(pid).is_some() {
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "SIGKILL did not kill"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        let held = match dir
            .acquire(&unique("WATCHDOG_FTMO"), &LockClaim::default(), &mut probe)
            .unwrap()
        {
            Acquire::Acquired(held) => held,
            Acquire::Held(h) => panic!("a killed holder still blocks: {h}"),
        };
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(held.record().holder_pid, Some(std::process::id()));
        held.release().unwrap();
        holder.wait().unwrap();
    }
}

// Unix-only: on Windows the delete itself is refused (the next test).
#[cfg(unix)]
#[test]
fn deleting_a_held_lock_file_by_hand_is_reported_and_repaired_by_the_holder_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut command = taker(&[
        "hold",
        tmp.path().to_str().unwrap(),
        &*unique("BRAIN_GL_3"),
        "200",
    ]);
    command.stderr(Stdio::piped());
    let mut holder = command.spawn().unwrap();
    let out = spawn_reader(holder.stdout.take().unwrap());
    let err = spawn_reader(holder.stderr.take().unwrap());
    assert!(out.wait_for("acquired", Duration::from_secs(30)).is_some());
    // The old runbook: `del .locks\*.lock`. Linux cannot refuse the unlink...
    std::fs::remove_file(tmp.path().join(&*format!("{}.lock", unique("BRAIN_GL_3")))).unwrap();
    // ...so the holder must notice, loudly, and (holding the machine-wide name, so
    // nobody could take the lock meanwhile) put its file back (DESIGN.md rule 17).
    let report = err.wait_for("LOCK TAKEN AGAIN", Duration::from_secs(5));
    let mut probe = ProcessProbe::new().unwrap();
    let status = LockDir::new(tmp.path()).inspect(&unique("BRAIN_GL_3"), &mut probe);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let report = report.expect("the holder did not report the deleted file within 5 s");
    assert!(report.contains(&*unique("BRAIN_GL_3")), "{report}");
    assert!(report.contains("deleted or replaced"), "{report}");
    let status = status.unwrap().expect("the lock file is not back");
    assert_eq!(
        status.state,
        lockcore::LockState::Running,
        "{}",
        status.detail
    );
    assert_eq!(status.record.unwrap().holder_pid, Some(holder.id()));
}

#[cfg(windows)]
#[test]
fn deleting_a_held_lock_file_by_hand_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut holder, lines) = spawn_with_lines(taker(&[
        "hold",
        tmp.path().to_str().unwrap(),
        &*unique("BRAIN_GL_3"),
    ]));
    assert!(
        lines
            .wait_for("acquired", Duration::from_secs(30))
            .is_some()
    );
    let path = tmp.path().join(&*format!("{}.lock", unique("BRAIN_GL_3")));
    let deleted = std::fs::remove_file(&path);
    // The record stays readable while held (rule 6).
    let record = std::fs::read_to_string(&path);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let error = deleted.expect_err("a held lock file was deleted");
    assert_eq!(error.raw_os_error(), Some(32), "{error}");
    assert!(record.unwrap().contains(&*unique("BRAIN_GL_3")));
}

/// Eight processes acquire and release one name in a loop, stale files keep appearing
/// (processes that "crash" while holding), and this thread runs remove-if-stale the
/// whole time. No holder may ever lose its file or share the lock.
#[test]
fn remove_if_stale_racing_eight_acquirers_never_removes_a_held_lock() {
    const ACQUIRERS: usize = 8;
    // Under Wine every lock call goes through wineserver, machine-wide name included.
    let rounds = fleet_tests::wine::race_rounds(200, 50).to_string();
    // Unique to this run: the name is machine-wide, and other suites run concurrently.
    let name = format!("BRAIN_BG_{}", std::process::id());
    let tmp = tempfile::tempdir().unwrap();
    let lock_dir = tmp.path().join("locks");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let dir_arg = lock_dir.to_str().unwrap().to_string();
    let go = Barrier::new(tmp.path(), "go");
    let acquirers: Vec<(Child, Lines)> = (0..ACQUIRERS)
        .map(|_| {
            spawn_with_lines(taker(&[
                "cycle",
                &dir_arg,
                &name,
                go.path.to_str().unwrap(),
                &rounds,
            ]))
        })
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let crashes = Arc::new(AtomicUsize::new(0));
    let crasher = {
        let (done, crashes, dir_arg, name) =
            (done.clone(), crashes.clone(), dir_arg.clone(), name.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let status = Command::new(TAKER)
                    .args(["abandon", &dir_arg, &name])
                    .status()
                    .unwrap();
                assert!(status.success());
                crashes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    go.release();
    let dir = LockDir::new(&lock_dir);
    let mut probe = ProcessProbe::new().unwrap();
    let mut removed = 0usize;
    let mut kept = 0usize;
    let mut finished = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while finished < ACQUIRERS {
        assert!(Instant::now() < deadline, "acquirers did not finish");
        match dir.remove_if_stale(&name, &mut probe).unwrap() {
            Removal::Removed(status) => {
                assert!(!status.state.is_held());
                removed += 1;
            }
            Removal::Kept(_) => kept += 1,
            Removal::Missing => {}
        }
        finished = 0;
        for (child, _) in &acquirers {
            // try_wait needs &mut; count through a cheap probe instead.
            if probe.identity(child.id()).is_none() {
                finished += 1;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    crasher.join().unwrap();
    let (mut won, mut errors) = (0u32, Vec::new());
    for (mut child, lines) in acquirers {
        assert!(child.wait().unwrap().success());
        for line in lines.collect() {
            if line.starts_with("ERROR") {
                errors.push(line);
            } else if let Some(w) = field(&line, "won") {
                won += w;
            }
        }
    }
    assert!(errors.is_empty(), "holders lost their lock: {errors:?}");
    assert!(won > 0, "no acquirer ever won");
    eprintln!(
        "won {won}, removed {removed} stale, kept {kept} held, {} crashes",
        crashes.load(Ordering::Relaxed)
    );
    // How often the remover won a stale file in the race depends on timing (printed
    // above); that it removes one when the cyclers are quiet does not.
    let status = Command::new(TAKER)
        .args(["abandon", &dir_arg, &name])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(matches!(
        dir.remove_if_stale(&name, &mut probe).unwrap(),
        Removal::Removed(_)
    ));
    assert!(crashes.load(Ordering::Relaxed) > 0);
    assert!(!lock_dir.join(format!("{name}.occupied")).exists());
}
