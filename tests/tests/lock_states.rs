//! What inspection, acquisition and remove-if-stale make of every kind of lock file:
//! older tools' PID files (DESIGN.md rule 5), crashed holders, corrupt bytes.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use chrono::{DateTime, Local};
use fleet_tests::unique;
use lockcore::{Acquire, CopyRule, LockClaim, LockDir, LockState, ProcessProbe, Removal};

const TAKER: &str = env!("CARGO_BIN_EXE_lock-taker");

/// A live process that holds no lock, like a bot the older tool recorded.
struct Idle(Child);

impl Idle {
    fn start() -> Idle {
        let child = Command::new(TAKER)
            .arg("idle")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn idle");
        // Until it has exec'd, the process shows our command line, not its own.
        let mut probe = ProcessProbe::new().expect("probe");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !probe
            .info(child.id())
            .is_some_and(|p| p.cmd.iter().any(|a| a == "idle"))
        {
            assert!(std::time::Instant::now() < deadline, "idle never ran");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Idle(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn local(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .expect("valid time")
        .with_timezone(&Local)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

fn write_legacy(dir: &Path, name: &str, pid: u32, timestamp: &str) {
    let text = format!(
        r#"{{"pid": {pid}, "name": "{name}", "account": "ATLAS", "timestamp": "{timestamp}"}}"#
    );
    std::fs::write(dir.join(format!("{name}.lock")), text).expect("write legacy file");
}

/// A lock dir that knows BRAIN_ATLAS runs as `lock-taker idle` (what [`Idle`] runs).
fn desk_dir(path: &Path) -> LockDir {
    LockDir::new(path).with_copy_rule(
        &unique("BRAIN_ATLAS"),
        CopyRule::new(&[TAKER.to_string(), "idle".to_string()], None),
    )
}

fn write_record(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.lock")), text).expect("write legacy file");
}

fn state_of(dir: &LockDir, name: &str, probe: &mut ProcessProbe) -> LockState {
    dir.inspect(name, probe)
        .expect("inspect")
        .expect("file exists")
        .state
}

#[test]
fn a_legacy_record_naming_a_live_older_copy_is_held() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = desk_dir(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    let bot = Idle::start();
    let started = probe.identity(bot.pid()).unwrap().start_time as i64;
    // Written by the older tool after the bot started, as it did at start-up.
    write_legacy(
        tmp.path(),
        &unique("BRAIN_ATLAS"),
        bot.pid(),
        &local(started + 2),
    );

    assert_eq!(
        state_of(&dir, &unique("BRAIN_ATLAS"), &mut probe),
        LockState::Legacy
    );
    match dir
        .acquire(&unique("BRAIN_ATLAS"), &LockClaim::default(), &mut probe)
        .unwrap()
    {
        Acquire::Held(holder) => {
            assert!(holder.legacy);
            assert_eq!(holder.record.unwrap().pid, bot.pid());
            assert!(holder_message_names_next_step(&dir, &mut probe));
        }
        Acquire::Acquired(_) => panic!("a start slipped past a live legacy lock"),
    }
    assert!(matches!(
        dir.remove_if_stale(&unique("BRAIN_ATLAS"), &mut probe).unwrap(),
        Removal::Kept(status) if status.state == LockState::Legacy
    ));
    assert!(
        tmp.path()
            .join(&*format!("{}.lock", unique("BRAIN_ATLAS")))
            .exists(),
        "legacy lock removed"
    );
}

fn holder_message_names_next_step(dir: &LockDir, probe: &mut ProcessProbe) -> bool {
    match dir.acquire(&unique("BRAIN_ATLAS"), &LockClaim::default(), probe) {
        Ok(Acquire::Held(holder)) => {
            let text = holder.to_string();
            text.contains("legacy") && text.contains("safe-shutdown")
        }
        _ => false,
    }
}

/// DESIGN.md rule 11: the record names a live process that started before it was
/// written, but that process runs neither a Python interpreter nor the component's
/// program: it cannot have written the record. Stale, and the process is untouched.
#[test]
fn a_legacy_record_naming_an_unrelated_older_process_is_stale_and_it_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path()).with_copy_rule(
        &unique("BRAIN_ATLAS"),
        CopyRule::new(
            &[
                "python".to_string(),
                format!("{}.py", unique("BRAIN_ATLAS")),
            ],
            None,
        ),
    );
    let mut probe = ProcessProbe::new().unwrap();
    let unrelated = Idle::start();
    let started = probe.identity(unrelated.pid()).unwrap().start_time as i64;
    write_legacy(
        tmp.path(),
        &unique("BRAIN_ATLAS"),
        unrelated.pid(),
        &local(started + 2),
    );
    let status = dir
        .inspect(&unique("BRAIN_ATLAS"), &mut probe)
        .unwrap()
        .unwrap();
    assert_eq!(status.state, LockState::Stale, "{}", status.detail);
    assert!(status.detail.contains("not genuine"), "{}", status.detail);
    // Without a timestamp, too.
    write_record(
        tmp.path(),
        &unique("BRAIN_ATLAS"),
        &format!(
            r#"{{"pid": {}, "name": "{}"}}"#,
            unrelated.pid(),
            unique("BRAIN_ATLAS")
        ),
    );
    let status = dir
        .inspect(&unique("BRAIN_ATLAS"), &mut probe)
        .unwrap()
        .unwrap();
    assert_eq!(status.state, LockState::Stale, "{}", status.detail);
    match dir
        .acquire(&unique("BRAIN_ATLAS"), &LockClaim::default(), &mut probe)
        .unwrap()
    {
        Acquire::Acquired(held) => held.release().unwrap(),
        Acquire::Held(h) => panic!("refused by a record that is not genuine: {h}"),
    }
    assert!(probe.identity(unrelated.pid()).is_some());
}

/// The named process runs the component's program but is not a copy (another
/// script, say): it could be the record's writer, so the lock counts as held for
/// refusals, and the detail says it is not a copy (so nothing stops it).
#[test]
fn a_legacy_record_naming_the_program_but_not_a_copy_is_held_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path()).with_copy_rule(
        &unique("BRAIN_ATLAS"),
        CopyRule::new(&[TAKER.to_string(), "run".to_string()], None),
    );
    let mut probe = ProcessProbe::new().unwrap();
    let other = Idle::start();
    write_record(
        tmp.path(),
        &unique("BRAIN_ATLAS"),
        &format!(
            r#"{{"pid": {}, "name": "{}"}}"#,
            other.pid(),
            unique("BRAIN_ATLAS")
        ),
    );
    let status = dir
        .inspect(&unique("BRAIN_ATLAS"), &mut probe)
        .unwrap()
        .unwrap();
    assert_eq!(status.state, LockState::Legacy);
    assert!(
        status.detail.contains("not a copy") && status.detail.contains("no readable timestamp"),
        "{}",
        status.detail
    );
    assert!(matches!(
        dir.acquire(&unique("BRAIN_ATLAS"), &LockClaim::default(), &mut probe)
            .unwrap(),
        Acquire::Held(holder) if holder.legacy
    ));
}

#[test]
fn a_legacy_record_whose_pid_was_reused_by_a_younger_process_is_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    let unrelated = Idle::start();
    let started = probe.identity(unrelated.pid()).unwrap().start_time as i64;
    // The record is two days older than the process now using that pid: more than
    // any zone can explain (a naive time is read at its latest, UTC-12: rule 5).
    write_legacy(
        tmp.path(),
        &unique("BRAIN_ATLAS"),
        unrelated.pid(),
        &local(started - 2 * 86_400),
    );

    let status = dir
        .inspect(&unique("BRAIN_ATLAS"), &mut probe)
        .unwrap()
        .unwrap();
    assert_eq!(status.state, LockState::Stale);
    assert!(status.detail.contains("reused"), "{}", status.detail);
    // A start takes it over, and the unrelated process is untouched.
    match dir
        .acquire(&unique("BRAIN_ATLAS"), &LockClaim::default(), &mut probe)
        .unwrap()
    {
        Acquire::Acquired(held) => held.release().unwrap(),
        Acquire::Held(h) => panic!("refused by a reused pid: {h}"),
    }
    assert!(probe.identity(unrelated.pid()).is_some());
}

#[test]
fn a_legacy_record_naming_a_dead_pid_is_stale_and_removable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    let dead_pid = {
        let bot = Idle::start();
        bot.pid()
    }; // killed and reaped here
    write_legacy(tmp.path(), &unique("WATCHDOG_ATLAS"), dead_pid, &local(0));

    assert_eq!(
        state_of(&dir, &unique("WATCHDOG_ATLAS"), &mut probe),
        LockState::Stale
    );
    assert!(matches!(
        dir.remove_if_stale(&unique("WATCHDOG_ATLAS"), &mut probe).unwrap(),
        Removal::Removed(status) if status.state == LockState::Stale
    ));
    assert!(
        !tmp.path()
            .join(&*format!("{}.lock", unique("WATCHDOG_ATLAS")))
            .exists()
    );
}

#[test]
fn garbage_empty_and_truncated_files_are_corrupt_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    let cases: [(&str, &[u8]); 5] = [
        (&*unique("GARBAGE"), b"\x00\xff\xfe binary \x13 junk"),
        (&*unique("EMPTY"), b""),
        (&*unique("TRUNCATED"), br#"{"pid": 4242, "name": "BRAIN_AT"#),
        (&*unique("WRONG_SHAPE"), b"[1, 2, 3]"),
        (
            &*unique("NO_PID"),
            br#"{"name": "X", "timestamp": "2026-02-11T09:30:00"}"#,
        ),
    ];
    for (name, bytes) in cases {
        std::fs::write(tmp.path().join(format!("{name}.lock")), bytes).unwrap();
        let status = dir.inspect(name, &mut probe).unwrap().unwrap();
        assert_eq!(
            status.state,
            LockState::Corrupt,
            "{name}: {}",
            status.detail
        );
        assert!(status.record.is_none());
    }
    // A scan sees all five; a start on a corrupt file takes it over.
    let states: Vec<LockState> = dir
        .scan(&mut probe)
        .unwrap()
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(states, vec![LockState::Corrupt; 5]);
    match dir
        .acquire(&unique("TRUNCATED"), &LockClaim::default(), &mut probe)
        .unwrap()
    {
        Acquire::Acquired(held) => {
            assert_eq!(
                state_of(&dir, &unique("TRUNCATED"), &mut probe),
                LockState::Running
            );
            held.release().unwrap();
        }
        Acquire::Held(h) => panic!("a corrupt file blocked a start: {h}"),
    }
    assert!(matches!(
        dir.remove_if_stale(&unique("GARBAGE"), &mut probe).unwrap(),
        Removal::Removed(_)
    ));
}

#[test]
fn our_own_record_left_by_a_crash_is_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    let status = Command::new(TAKER)
        .args([
            "abandon",
            tmp.path().to_str().unwrap(),
            &*unique("quantum_server"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let status = dir
        .inspect(&unique("quantum_server"), &mut probe)
        .unwrap()
        .unwrap();
    assert_eq!(status.state, LockState::Stale);
    assert!(status.record.unwrap().holder_pid.is_some());
}

#[test]
fn a_held_lock_is_running_and_its_record_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    let claim = LockClaim {
        account: Some("FTMO".into()),
        command: vec!["python".into(), format!("{}.py", unique("BRAIN_FTMO"))],
    };
    let Acquire::Acquired(mut held) = dir
        .acquire(&unique("BRAIN_FTMO"), &claim, &mut probe)
        .unwrap()
    else {
        panic!("free lock not acquired");
    };
    let child = Idle::start();
    let child_identity = probe.identity(child.pid()).unwrap();
    held.set_managed(child_identity, vec!["bot".into()])
        .unwrap();

    let status = dir
        .inspect(&unique("BRAIN_FTMO"), &mut probe)
        .unwrap()
        .unwrap();
    assert_eq!(status.state, LockState::Running);
    let record = status.record.unwrap();
    assert_eq!(record.pid, child.pid());
    assert_eq!(record.pid_start, Some(child_identity.start_time));
    assert_eq!(record.holder_pid, Some(std::process::id()));
    assert_eq!(record.account.as_deref(), Some("FTMO"));
    assert!(record.host.is_some() && record.timestamp.is_some());
    // Readable by anyone, as plain JSON (rule 6).
    let text = std::fs::read_to_string(held.path()).unwrap();
    assert!(text.contains("\"holder_pid\""), "{text}");
    held.release().unwrap();
    assert!(
        dir.inspect(&unique("BRAIN_FTMO"), &mut probe)
            .unwrap()
            .is_none()
    );
}

#[test]
fn names_that_could_escape_the_lock_dir_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().unwrap();
    for name in ["../x", "a/b", "", "..", r"c:\x"] {
        assert!(
            dir.acquire(name, &LockClaim::default(), &mut probe)
                .is_err(),
            "{name}"
        );
    }
}

/// ARCHITECTURE: a starter that meets only shared lockers (inspections) retries, but
/// not for ever: a reader that never lets go makes the start fail with a message
/// naming the file within READERS_WAIT (5 s), and once the reader is gone the lock
/// is taken.
#[test]
fn a_starter_kept_out_by_a_reader_that_never_lets_go_fails_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::new(tmp.path());
    let path = tmp
        .path()
        .join(&*format!("{}.lock", unique("BRAIN_READER")));
    std::fs::write(&path, b"").unwrap();
    let reader = std::fs::File::open(&path).unwrap();
    reader.lock_shared().unwrap();
    let claim = LockClaim {
        account: None,
        command: vec!["python".into(), format!("{}.py", unique("BRAIN_READER"))],
    };
    let mut probe = ProcessProbe::new().unwrap();
    let started = std::time::Instant::now();
    let error = match dir.acquire(&unique("BRAIN_READER"), &claim, &mut probe) {
        Err(error) => error,
        Ok(_) => panic!("acquired under a shared lock"),
    };
    let took = started.elapsed();
    assert!(
        matches!(error, lockcore::LockError::KeptBusy { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&*format!("{}.lock", unique("BRAIN_READER"))),
        "{error}"
    );
    assert!(took >= std::time::Duration::from_secs(5), "{took:?}");
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");

    // Closing lets go (Wine refuses std's explicit unlock of a whole-file lock).
    drop(reader);
    // Read after the reader let go: its whole-file lock blocks reads under Wine.
    assert_eq!(std::fs::read(&path).unwrap(), b"", "the file was written");
    match dir
        .acquire(&unique("BRAIN_READER"), &claim, &mut probe)
        .unwrap()
    {
        Acquire::Acquired(held) => held.release().unwrap(),
        Acquire::Held(holder) => panic!("held by {holder}"),
    }
}
