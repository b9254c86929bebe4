//! `check-procs` against real processes: stand-in bots under locks, copies started by
//! hand, killed holders, and every kind of bad lock file; table and `--json` alike.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use assert_cmd::prelude::*;
use fleet_tests::{Desk, tool, unique};
use predicates::prelude::*;
use serde_json::Value;

fn check_procs(desk: &Desk) -> Command {
    let mut command = Command::cargo_bin("check-procs").unwrap();
    command
        .arg("--config")
        .arg(desk.config())
        .env_remove("NO_COLOR");
    command
}

/// Runs `check-procs` (table) and `check-procs --json`; returns both, checking that
/// they agree on the exit code.
fn check(desk: &Desk) -> (i32, String, Value) {
    let table = check_procs(desk).output().unwrap();
    let json = check_procs(desk).arg("--json").output().unwrap();
    let code = table.status.code().unwrap();
    assert_eq!(code, json.status.code().unwrap(), "table and json disagree");
    let text = String::from_utf8(table.stdout).unwrap();
    let document: Value = serde_json::from_slice(&json.stdout).unwrap();
    (code, text, document)
}

fn problem_kinds(document: &Value) -> Vec<String> {
    document["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

fn component<'a>(document: &'a Value, name: &str) -> &'a Value {
    document["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {document}"))
}

#[test]
fn a_desk_running_under_its_locks_is_healthy() {
    let desk = Desk::new(
        &unique("qs_healthy"),
        &[&*unique("HEALTHY1"), &*unique("HEALTHY2")],
    );
    let _bots: Vec<_> = desk
        .component_names()
        .iter()
        .map(|name| desk.start_locked(name, &[]))
        .collect();
    let (code, table, json) = check(&desk);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("No problems found."), "{table}");
    assert_eq!(json["healthy"], true);
    for name in desk.component_names() {
        let row = component(&json, &name);
        assert_eq!(row["state"], "running", "{name}");
        assert_eq!(row["copies"], 1, "{name}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&name) && l.contains("running"))
        );
    }
    assert!(!table.contains('\x1b'), "colour in a pipe");
}

#[test]
fn three_brains_for_one_account_are_a_duplicate_shown_first() {
    let desk = Desk::new(&unique("qs_dup"), &[&*unique("DUPACC")]);
    let _locked = desk.start_locked(&unique("BRAIN_DUPACC"), &[]);
    let hand1 = desk.start_by_hand(&unique("BRAIN_DUPACC"));
    let hand2 = desk.start_by_hand(&unique("BRAIN_DUPACC"));
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1);
    let kinds = problem_kinds(&json);
    assert_eq!(kinds[0], "duplicate", "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "unlocked").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(component(&json, &unique("BRAIN_DUPACC"))["copies"], 3);
    assert_eq!(
        component(&json, &unique("BRAIN_DUPACC"))["state"],
        "duplicate"
    );
    let first_problem = table
        .lines()
        .skip_while(|l| !l.contains("problems:"))
        .nth(1)
        .unwrap();
    assert!(
        first_problem.trim_start().starts_with("DUPLICATE"),
        "{table}"
    );
    assert!(
        first_problem.contains(&*format!("3 copies of {}", unique("BRAIN_DUPACC"))),
        "{first_problem}"
    );
    for hand in [&hand1, &hand2] {
        assert!(table.contains(&hand.pid().to_string()), "{table}");
    }
    let processes = json["processes"].as_array().unwrap();
    assert_eq!(processes.iter().filter(|p| p["locked"] == false).count(), 2);
}

#[test]
fn a_copy_started_by_hand_without_a_lock_is_unlocked() {
    let desk = Desk::new(&unique("qs_unlocked"), &[&*unique("HANDACC")]);
    let hand = desk.start_by_hand(&unique("WATCHDOG_HANDACC"));
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1);
    assert_eq!(problem_kinds(&json), ["unlocked"]);
    assert_eq!(json["problems"][0]["pids"][0], hand.pid());
    assert!(table.contains("UNLOCKED"), "{table}");
    assert!(
        table.contains(&format!(
            "pid {} runs {} without its lock",
            hand.pid(),
            unique("WATCHDOG_HANDACC")
        )),
        "{table}"
    );
}

#[test]
fn a_killed_holder_leaves_a_stale_lock_and_an_unlocked_bot() {
    let desk = Desk::new(&unique("qs_killed"), &[&*unique("KILLACC")]);
    let mut launcher = desk.start_locked(&unique("BRAIN_KILLACC"), &[]);
    let bot_pid = {
        let (_, _, json) = check(&desk);
        component(&json, &unique("BRAIN_KILLACC"))["pid"]
            .as_u64()
            .unwrap()
    };
    launcher.kill(); // SIGKILL: the bot is not bound to it, so it lives on
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1);
    let kinds = problem_kinds(&json);
    assert!(kinds.contains(&"unlocked".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"stale".to_string()), "{kinds:?}");
    assert!(table.contains("STALE"), "{table}");
    assert_eq!(json["processes"][0]["pid"], bot_pid);
}

#[test]
fn a_lock_whose_process_is_gone_while_its_holder_lives_is_reported() {
    let desk = Desk::new(&unique("qs_gone"), &[&*unique("GONEACC")]);
    let mut command = Command::new(tool("fleet-tests", "lock-taker"));
    command
        .args(["run"])
        .arg(desk.lock_dir())
        .arg(&*unique("BRAIN_GONEACC"))
        .arg(fleet_tests::stand_in())
        .args([&*unique("BRAIN_GONEACC"), "--crash-after-ms", "10"])
        .env("LOCK_TAKER_LINGER_MS", "20000")
        .stdout(std::process::Stdio::null());
    let _holder = fleet_tests::Running::new(command.spawn().unwrap());
    // Steady state: the holder has recorded its bot, and that bot has crashed (before
    // the record names it, the holder's own start looks like a gone process too).
    fleet_tests::wait_until("the recorded bot to crash", || {
        let snap = desk.snapshot();
        let view = snap.component(&unique("BRAIN_GONEACC")).unwrap();
        view.lock
            .as_ref()
            .and_then(|l| l.record.as_ref())
            .is_some_and(|r| r.holder_pid != Some(r.pid))
            && view.managed.is_none()
    });
    wait_for_problem(&desk, "process_gone");
    // The holder lingers for 20 s: the state is steady now.
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1);
    let problem = &json["problems"][0];
    assert_eq!(problem["kind"], "process_gone");
    assert_eq!(problem["name"], &*unique("BRAIN_GONEACC"));
    assert!(table.contains("PROCESS_GONE"), "{table}");
}

#[test]
fn stale_corrupt_legacy_and_unknown_lock_files_are_each_reported() {
    // A brain alone, by its account's leave: this is not about DESIGN.md rule 13.
    let desk = Desk::with_extra(
        &unique("qs_files"),
        &[&*unique("FILEACC")],
        "brain_requires_watchdog = false",
    );
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    // stale: a crash left our own record behind
    let status = Command::new(tool("fleet-tests", "lock-taker"))
        .arg("abandon")
        .arg(desk.lock_dir())
        .arg(&*unique("qs_files"))
        .status()
        .unwrap();
    assert!(status.success());
    // corrupt
    std::fs::write(
        desk.lock_path(&unique("WATCHDOG_FILEACC")),
        b"{\"pid\": 12, \"na",
    )
    .unwrap();
    // legacy: an older tool's PID file naming a live process that started before it
    let bot = desk.start_by_hand(&unique("BRAIN_FILEACC"));
    std::fs::write(
        desk.lock_path(&unique("BRAIN_FILEACC")),
        format!(
            r#"{{"pid": {}, "name": "{}", "account": "{}", "timestamp": "2999-01-01T00:00:00.000000"}}"#,
            bot.pid(),
            unique("BRAIN_FILEACC"),
            unique("FILEACC")
        ),
    )
    .unwrap();
    // unknown: a lock file no component explains
    std::fs::write(
        desk.lock_path("BRAIN_OLDACCOUNT"),
        b"{\"pid\": 1, \"name\": \"x\", \"holder_pid\": 1}",
    )
    .unwrap();

    let (code, table, json) = check(&desk);
    assert_eq!(code, 1);
    let mut kinds = problem_kinds(&json);
    kinds.sort();
    assert_eq!(
        kinds,
        ["corrupt", "legacy", "stale", "unknown_lock"],
        "{table}"
    );
    for label in ["STALE", "CORRUPT", "LEGACY", "UNKNOWN_LOCK"] {
        assert!(table.contains(label), "{label} missing:\n{table}");
    }
    assert_eq!(
        component(&json, &unique("BRAIN_FILEACC"))["state"],
        "legacy"
    );
    assert_eq!(
        component(&json, &unique("WATCHDOG_FILEACC"))["state"],
        "corrupt"
    );
    assert_eq!(component(&json, &unique("qs_files"))["state"], "stale");
    let locks = json["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 4);
    assert!(table.contains("(not in fleet.toml)"), "{table}");
}

#[test]
fn a_venv_style_launcher_and_its_child_are_one_copy_two_trees_a_duplicate() {
    // A brain alone, by its account's leave: this is not about DESIGN.md rule 13.
    let desk = Desk::with_extra(
        &unique("qs_tree"),
        &[&*unique("TREEACC")],
        "brain_requires_watchdog = false",
    );
    let _first = desk.start_launcher_by_hand(&unique("BRAIN_TREEACC"));
    let (_, _, json) = check(&desk);
    assert_eq!(problem_kinds(&json), ["unlocked"], "{json}");
    assert_eq!(json["processes"][0]["pids"].as_array().unwrap().len(), 2);
    let _second = desk.start_launcher_by_hand(&unique("BRAIN_TREEACC"));
    let (code, _, json) = check(&desk);
    assert_eq!(code, 1);
    assert_eq!(problem_kinds(&json)[0], "duplicate");
    assert_eq!(component(&json, &unique("BRAIN_TREEACC"))["copies"], 2);
}

#[test]
fn a_launcher_under_its_lock_is_healthy() {
    // A brain alone, by its account's leave: this is not about DESIGN.md rule 13.
    let desk = Desk::with_extra(
        &unique("qs_treelock"),
        &[&*unique("TREELOCK")],
        "brain_requires_watchdog = false",
    );
    let mut command = Command::new(tool("fleet-tests", "lock-taker"));
    command
        .arg("run")
        .arg(desk.lock_dir())
        .arg(&*unique("BRAIN_TREELOCK"))
        .arg(fleet_tests::stand_in())
        .arg(&*unique("BRAIN_TREELOCK"))
        .env("STANDIN_LAUNCHER", "1")
        .stdout(std::process::Stdio::null());
    let _holder = fleet_tests::Running::new(command.spawn().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Poll the JSON alone while the launcher starts its child (table and JSON taken a
    // moment apart may see different moments), then compare both once it is steady.
    loop {
        let output = check_procs(&desk).arg("--json").output().unwrap();
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        let procs = json["processes"].as_array().unwrap().clone();
        if procs.len() == 1 && procs[0]["pids"].as_array().unwrap().len() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, table, json) = check(&desk);
    assert_eq!(code, 0, "{table}");
    assert_eq!(problem_kinds(&json), Vec::<String>::new(), "{json}");
    assert_eq!(json["processes"][0]["locked"], true);
}

#[test]
fn a_bad_config_exits_2_naming_file_and_line() {
    let desk = Desk::new(&unique("qs_bad"), &[&*unique("BADACC")]);
    let text = std::fs::read_to_string(desk.config()).unwrap() + "\nbogus_key = 1\n";
    std::fs::write(desk.config(), text).unwrap();
    check_procs(&desk).assert().code(2).stdout("").stderr(
        predicate::str::contains("fleet.toml:")
            .and(predicate::str::contains("unknown field `bogus_key`")),
    );
    Command::cargo_bin("check-procs")
        .unwrap()
        .args(["--config", "/nonexistent/fleet.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read config file"));
}

#[test]
fn the_json_document_has_its_documented_fields() {
    let desk = Desk::new(&unique("qs_json"), &[&*unique("JSONACC")]);
    let _bot = desk.start_locked(&unique("WATCHDOG_JSONACC"), &[]);
    let (_, _, json) = check(&desk);
    for key in [
        "version",
        "config",
        "lock_dir",
        "taken_at",
        "healthy",
        "components",
        "locks",
        "processes",
        "problems",
        "autostart",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    for key in ["installed", "name", "scheduler", "how"] {
        assert!(
            json["autostart"].get(key).is_some(),
            "missing autostart.{key}"
        );
    }
    let row = component(&json, &unique("WATCHDOG_JSONACC"));
    for key in [
        "name",
        "account",
        "role",
        "enabled",
        "state",
        "pid",
        "start_time",
        "uptime_secs",
        "holder_pid",
        "holder_alive",
        "copies",
        "command",
    ] {
        assert!(row.get(key).is_some(), "component missing {key}");
    }
    assert_eq!(row["role"], "watchdog");
    assert_eq!(row["holder_alive"], true);
    let lock = &json["locks"][0];
    for key in ["name", "path", "state", "record", "detail"] {
        assert!(lock.get(key).is_some(), "lock missing {key}");
    }
    assert_eq!(lock["record"]["name"], &*unique("WATCHDOG_JSONACC"));
}

#[test]
fn watch_mode_redraws_until_stopped() {
    let desk = Desk::new(&unique("qs_watch"), &[&*unique("WATCHACC")]);
    let mut child = Command::cargo_bin("check-procs")
        .unwrap()
        .arg("--config")
        .arg(desk.config())
        .args(["--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = fleet_tests::spawn_reader(child.stdout.take().unwrap());
    assert!(
        lines
            .wait_for("COMPONENT", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        lines
            .wait_for("COMPONENT", Duration::from_secs(10))
            .is_some(),
        "no redraw"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wait_for_problem(desk: &Desk, kind: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let output = check_procs(desk).arg("--json").output().unwrap();
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        if problem_kinds(&json).iter().any(|k| k == kind) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} never reported: {json}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Table rows: a FIFO named `junk.lock` hung check-procs; a directory named
/// `stray.lock` failed it; a symlink at a lock's name; a FIFO named `<NAME>.stop`.
/// Each is reported as `not_a_file` with what to do, nothing hangs, nothing is touched.
#[cfg(unix)]
#[test]
fn entries_that_are_not_regular_files_are_reported_without_hanging() {
    let desk = Desk::new(&unique("qs_strays"), &[&*unique("STRAYACC")]);
    let locks = desk.lock_dir();
    std::fs::create_dir_all(&locks).unwrap();
    let sentinel = desk.config().with_file_name("sentinel.txt");
    std::fs::write(&sentinel, b"untouched").unwrap();
    for fifo in ["junk.lock", &*format!("{}.stop", unique("BRAIN_STRAYACC"))] {
        assert!(
            Command::new("mkfifo")
                .arg(locks.join(fifo))
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::create_dir(locks.join("stray.lock")).unwrap();
    std::os::unix::fs::symlink(&sentinel, locks.join("MASTER_LAUNCH.lock")).unwrap();
    for json in [false, true] {
        let mut command = check_procs(&desk);
        if json {
            command.arg("--json");
        }
        let output = assert_cmd::Command::from_std(command)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        if json {
            let document: Value = serde_json::from_str(&text).unwrap();
            let kinds = problem_kinds(&document);
            assert_eq!(
                kinds.iter().filter(|k| *k == "not_a_file").count(),
                4,
                "{kinds:?}"
            );
        } else {
            for needle in [
                "junk.lock is a named pipe (FIFO)",
                &*format!("{}.stop is a named pipe (FIFO)", unique("BRAIN_STRAYACC")),
                "stray.lock is a directory",
                "MASTER_LAUNCH.lock is a symbolic link",
                "remove it by hand",
            ] {
                assert!(text.contains(needle), "{needle} missing from:\n{text}");
            }
        }
    }
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched");
}

/// Table row: a lock record of 100 MB was printed back whole by `check-procs --json`.
#[test]
fn a_huge_lock_record_is_corrupt_and_not_printed() {
    let desk = Desk::new(&unique("qs_huge"), &[&*unique("HUGEACC")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    let filler = "A".repeat(4 * 1024 * 1024);
    std::fs::write(
        desk.lock_path(&unique("BRAIN_HUGEACC")),
        format!(
            r#"{{"pid": 1, "name": "{}", "command": ["{filler}"]}}"#,
            unique("BRAIN_HUGEACC")
        ),
    )
    .unwrap();
    let output = check_procs(&desk).arg("--json").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.len() < 64 * 1024,
        "{} bytes of output",
        output.stdout.len()
    );
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    let lock = document["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == *unique("BRAIN_HUGEACC"))
        .unwrap();
    assert_eq!(lock["state"], "corrupt");
    assert!(
        lock["detail"]
            .as_str()
            .unwrap()
            .contains("more than a record can be"),
        "{lock}"
    );
}

/// Table row: `check-procs --json --watch` wrote documents back to back.
#[test]
fn json_watch_writes_one_document_per_line() {
    let desk = Desk::new(&unique("qs_jsonl"), &[&*unique("JSONLACC")]);
    let mut child = Command::cargo_bin("check-procs")
        .unwrap()
        .arg("--config")
        .arg(desk.config())
        .args(["--json", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = fleet_tests::spawn_reader(child.stdout.take().unwrap());
    for _ in 0..2 {
        let line = lines
            .wait_for("\"version\"", Duration::from_secs(20))
            .expect("a JSON line");
        let document: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(document["version"], 1);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Table row: `--watch 9223372036854775807` panicked (overflow adding to an Instant).
#[test]
fn an_out_of_range_watch_interval_is_a_usage_error_not_a_panic() {
    let desk = Desk::new(&unique("qs_watchmax"), &[&*unique("WATCHMAXACC")]);
    for value in ["9223372036854775807", "18446744073709551615", "0", "86401"] {
        check_procs(&desk)
            .args(["--watch", value])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("1..=86400"));
    }
}

/// Table row: an empty fleet.toml was accepted as a desk with nothing in it, exit 0.
#[test]
fn an_empty_config_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, "").unwrap();
    Command::cargo_bin("check-procs")
        .unwrap()
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("fleet.toml:1: the desk is empty"));
}

/// A lock folder shared with other files invites mistakes: check-procs says so (on
/// stderr, so `--json` stays one document), and touches none of them.
#[test]
fn files_that_are_not_locks_in_the_lock_folder_are_warned_about() {
    let desk = Desk::new(&unique("qs_foreign"), &[&*unique("FOREIGN1")]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    std::fs::write(desk.lock_dir().join("notes.txt"), b"mine").unwrap();
    let output = check_procs(&desk).arg("--json").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not lock files or stop requests (notes.txt)"),
        "{stderr}"
    );
    let _: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        std::fs::read(desk.lock_dir().join("notes.txt")).unwrap(),
        b"mine"
    );
}

/// Every field path of a `--json` document: `version`, `components[]`,
/// `components[].name`, `autostart.how`; a lock's record is the file's own JSON.
fn json_paths(value: &Value, prefix: &str, paths: &mut std::collections::BTreeSet<String>) {
    let Value::Object(fields) = value else {
        return;
    };
    for (key, value) in fields {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Array(items) if items.iter().any(Value::is_object) => {
                let path = format!("{path}[]");
                if !lockcore::desk::JSON_OPAQUE.contains(&path.as_str()) {
                    for item in items {
                        json_paths(item, &path, paths);
                    }
                }
                paths.insert(path);
            }
            Value::Object(_) => {
                if !lockcore::desk::JSON_OPAQUE.contains(&path.as_str()) {
                    json_paths(value, &path, paths);
                }
                paths.insert(path);
            }
            _ => {
                paths.insert(path);
            }
        }
    }
}

/// docs/reference.md's `--json` table is generated from `lockcore::desk::JSON_FIELDS`; this
/// holds that list to a real document with every array filled (a running bot, a copy,
/// a bad lock file, a problem), so a field cannot be added or renamed without its row.
#[test]
fn the_documented_json_fields_are_exactly_the_documents_fields() {
    let desk = Desk::new(&unique("qs_fields"), &[&*unique("FIELDS1")]);
    let _bot = desk.start_locked(&unique("BRAIN_FIELDS1"), &[]);
    std::fs::create_dir_all(desk.lock_dir()).unwrap();
    std::fs::write(desk.lock_path(&unique("WATCHDOG_FIELDS1")), b"garbage").unwrap();
    let (_, _, json) = check(&desk);
    for array in ["components", "locks", "processes", "problems"] {
        assert!(
            !json[array].as_array().unwrap().is_empty(),
            "{array} is empty: {json}"
        );
    }
    let mut found = std::collections::BTreeSet::new();
    json_paths(&json, "", &mut found);
    let documented: std::collections::BTreeSet<String> = lockcore::desk::JSON_FIELDS
        .iter()
        .flat_map(lockcore::desk::JsonField::paths)
        .collect();
    assert_eq!(
        found, documented,
        "check-procs --json and JSON_FIELDS (lockcore/src/desk/documented.rs) differ"
    );
    let state = component(&json, &unique("BRAIN_FIELDS1"))["state"].clone();
    assert!(
        lockcore::ComponentState::ALL
            .iter()
            .any(|s| state == s.as_str()),
        "{state}"
    );
}

/// DESIGN.md rule 13, whoever started the brain: one started from a shell while its
/// watchdog does not run is reported `unguarded` (exit 1, table and JSON, with the
/// fix); one under its lock shows the state `unguarded`; once its watchdog runs, the
/// problem is gone; an account with `brain_requires_watchdog = false` is healthy.
#[test]
fn a_brain_running_without_its_watchdog_is_unguarded_whoever_started_it() {
    let desk = Desk::new(&unique("qs_unguard"), &[&*unique("UNGUARD1")]);
    let hand = desk.start_by_hand(&unique("BRAIN_UNGUARD1"));
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1, "{table}");
    assert_eq!(problem_kinds(&json), ["unguarded", "unlocked"], "{json}");
    let message = format!(
        "BRAIN_{account} runs (pid {}) while its watchdog WATCHDOG_{account} does not: its \
         positions have no stop-loss guard. Start WATCHDOG_{account} (`master-launch start \
         WATCHDOG_{account}` while master-launch runs, else `master-launch run \
         WATCHDOG_{account}`), or stop the brain with safe-shutdown --account {account}",
        hand.pid(),
        account = unique("UNGUARD1")
    );
    assert_eq!(json["problems"][0]["message"], message.as_str());
    assert_eq!(json["problems"][0]["name"], &*unique("BRAIN_UNGUARD1"));
    assert_eq!(json["problems"][0]["pids"][0], hand.pid());
    assert!(
        table.contains(&format!("  UNGUARDED     {message}")),
        "{table}"
    );
    // Started from a shell it is unlocked too; that state stays.
    assert_eq!(
        component(&json, &unique("BRAIN_UNGUARD1"))["state"],
        "unlocked"
    );
    drop(hand);

    // Under its lock (a launcher, as `run` or a wrapper holds it): state `unguarded`.
    let locked = desk.start_locked(&unique("BRAIN_UNGUARD1"), &[]);
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1, "{table}");
    assert_eq!(problem_kinds(&json), ["unguarded"], "{json}");
    assert_eq!(
        component(&json, &unique("BRAIN_UNGUARD1"))["state"],
        "unguarded"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&*unique("BRAIN_UNGUARD1")) && l.contains("UNGUARDED")),
        "{table}"
    );

    // Its watchdog runs: healthy.
    let _watchdog = desk.start_locked(&unique("WATCHDOG_UNGUARD1"), &[]);
    let _global = desk.start_locked(&unique("qs_unguard"), &[]);
    let (code, table, json) = check(&desk);
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        component(&json, &unique("BRAIN_UNGUARD1"))["state"],
        "running"
    );
    drop(locked);

    // An account that allows it: a brain alone is healthy.
    let alone = Desk::with_extra(
        &unique("qs_unguard2"),
        &[&*unique("UNGUARD2")],
        "brain_requires_watchdog = false",
    );
    let _brain = alone.start_locked(&unique("BRAIN_UNGUARD2"), &[]);
    let (code, table, json) = check(&alone);
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        component(&json, &unique("BRAIN_UNGUARD2"))["state"],
        "running"
    );
}

/// While master-launch is frozen (SIGSTOP) its published view still says the watchdog
/// runs; the watchdog is killed meanwhile. check-procs never calls it `running` without
/// a pid: it is `process_gone`, and its brain, still trading, is `unguarded` (exit 1).
/// Unix-only: SIGSTOP.
#[cfg(unix)]
#[test]
fn a_frozen_master_launchs_crashed_watchdog_is_not_running_and_its_brain_is_unguarded() {
    let desk = Desk::new(&unique("qs_frozen"), &[&*unique("FROZEN1")]);
    let (mut launcher, lines) = fleet_tests::start_master_launch(&desk.config(), &[]);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(30))
            .is_some()
    );
    desk.wait_until_running();
    let snap = desk.snapshot();
    let watchdog = snap
        .component(&unique("WATCHDOG_FROZEN1"))
        .unwrap()
        .managed
        .clone()
        .unwrap();
    let signal = |sig: &str, pid: u32| {
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP", launcher.pid());
    signal("-KILL", watchdog.pid);
    fleet_tests::wait_gone(&[watchdog.pid]);
    let (code, table, json) = check(&desk);
    signal("-CONT", launcher.pid());
    assert_eq!(code, 1, "{table}");
    let row = component(&json, &unique("WATCHDOG_FROZEN1"));
    assert_eq!(row["state"], "process_gone", "{row}");
    assert!(row["pid"].is_null(), "{row}");
    assert_eq!(
        component(&json, &unique("BRAIN_FROZEN1"))["state"],
        "unguarded",
        "{json}"
    );
    let kinds = problem_kinds(&json);
    assert!(kinds.contains(&"unguarded".to_string()), "{kinds:?}");
    for c in json["components"].as_array().unwrap() {
        assert!(c["state"] != "running" || !c["pid"].is_null(), "{c}");
    }
    launcher.kill();
}

/// Readiness as check-procs reads it from the running master-launch's published view
/// (frozen with SIGSTOP so the view stays as written here): a watchdog whose view names
/// its running pid as `not_ready` is `not_ready` with its reason and its heartbeat age,
/// a problem naming its brain and the fix (exit 1); `hung` likewise; a view naming
/// another pid is out of date and the watchdog is `running` again (exit 0).
/// Unix-only: SIGSTOP.
#[cfg(unix)]
#[test]
fn a_watchdog_the_view_calls_not_ready_or_hung_is_a_problem_and_a_stale_view_is_not_trusted() {
    use lockcore::control::{DeskState, Supervision};

    let desk = Desk::new(&unique("qs_ready"), &[&*unique("READY1")]);
    let (mut launcher, lines) = fleet_tests::start_master_launch(&desk.config(), &[]);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(30))
            .is_some()
    );
    desk.wait_until_running();
    let watchdog = desk
        .snapshot()
        .component(&unique("WATCHDOG_READY1"))
        .unwrap()
        .managed
        .clone()
        .unwrap();
    let signal = |sig: &str, pid: u32| {
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP", launcher.pid());
    let published = DeskState::read(&desk.lock_dir()).unwrap().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let say = |state: Supervision, pid: u32, reason: &str| {
        let mut view = published.clone();
        let entry = view
            .components
            .iter_mut()
            .find(|c| c.name == *unique("WATCHDOG_READY1"))
            .unwrap();
        entry.state = state;
        entry.pid = Some(pid);
        entry.reason = reason.into();
        entry.alive_at = Some(now - 2.0);
        entry.heartbeat_secs = Some(5);
        view.write(&desk.lock_dir()).unwrap();
    };

    say(
        Supervision::NotReady,
        watchdog.pid,
        "not ready: terminal lost",
    );
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1, "{table}");
    let row = component(&json, &unique("WATCHDOG_READY1"));
    assert_eq!(row["state"], "not_ready", "{row}");
    assert_eq!(row["reason"], "not ready: terminal lost", "{row}");
    assert_eq!(row["pid"], watchdog.pid, "{row}");
    assert_eq!(row["heartbeat_secs"], 5, "{row}");
    let age = row["heartbeat_age_secs"].as_f64().unwrap();
    assert!((2.0..30.0).contains(&age), "{row}");
    assert_eq!(problem_kinds(&json), ["not_ready"], "{json}");
    let message = json["problems"][0]["message"].as_str().unwrap();
    for words in [
        &*format!("{} runs (pid", unique("WATCHDOG_READY1")),
        "not ready: terminal lost",
        &*format!("its brain {} is held back", unique("BRAIN_READY1")),
        &*format!("`master-launch restart {}`", unique("WATCHDOG_READY1")),
    ] {
        assert!(message.contains(words), "{words}: {message}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&*unique("WATCHDOG_READY1")) && l.contains("NOT_READY")),
        "{table}"
    );
    assert!(table.contains("ALIVE"), "{table}");

    say(Supervision::Hung, watchdog.pid, "missed its heartbeat");
    let (code, table, json) = check(&desk);
    assert_eq!(code, 1, "{table}");
    assert_eq!(
        component(&json, &unique("WATCHDOG_READY1"))["state"],
        "hung"
    );
    assert_eq!(problem_kinds(&json), ["hung"], "{json}");

    // The view names a process that is not the one running: out of date.
    say(Supervision::Hung, watchdog.pid + 100_000, "an older run");
    let (code, table, json) = check(&desk);
    assert_eq!(code, 0, "{table}");
    let row = component(&json, &unique("WATCHDOG_READY1"));
    assert_eq!(row["state"], "running", "{row}");
    assert!(row["heartbeat_age_secs"].is_null(), "{row}");
    assert!(row["reason"].is_null(), "{row}");

    signal("-CONT", launcher.pid());
    launcher.kill();
}
