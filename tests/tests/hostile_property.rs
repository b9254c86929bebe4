//! Property tests: every tool against generated hostile lock dirs and configs.
//!
//! A lock dir is filled with random entries: regular files of random bytes, valid-looking
//! records (naming pids that cannot exist, so no tool ever signals a real process),
//! huge files, symlinks to a sentinel file outside the lock dir (and dangling ones),
//! FIFOs and directories, under desk lock names, other names, and `*.stop` names. Each
//! tool runs against it with a time bound. Every run must finish in time, never panic
//! (exit 101), and change nothing but what the tool owns: the sentinel and every entry
//! that is not a regular file stay as they were, and a regular file is removed only
//! when the rules allow it (DESIGN.md rule 12).
//!
//! Case counts are small to keep CI short (`PROPTEST_CASES` overrides them).

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::tool;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// Per run: generous, since the machine may be loaded; a hang is minutes, not seconds.
const RUN_BOUND: Duration = Duration::from_secs(60);
const SENTINEL_TEXT: &[u8] = b"outside the lock dir; no tool may change this";
/// Pids above Linux's largest `pid_max` (2^22): no process can have them.
const DEAD_PID_MIN: u32 = 4_194_305;

/// The desk every lock-dir case runs against: nothing enabled, so master-launch runs
/// its whole pre-flight and exits, and no process matches its patterns.
const DESK: &str = r#"lock_dir = "locks"
log_dir = "logs"

[[global]]
name = "qs_p"
command = ["/nonexistent/qs", "qs_p_marker_no_process_has"]
enabled = false

[[account]]
name = "P"
enabled = false
brain = ["/nonexistent/py", "brain_p_marker_no_process_has"]
watchdog = ["/nonexistent/py", "watchdog_p_marker_no_process_has"]
"#;
const DESK_LOCKS: [&str; 4] = ["MASTER_LAUNCH", "qs_p", "BRAIN_P", "WATCHDOG_P"];

#[derive(Debug, Clone)]
enum Content {
    Bytes(Vec<u8>),
    Record(String),
    /// A sparse file of this many MiB.
    Huge(u64),
    LinkToSentinel,
    DanglingLink,
    Fifo,
    Directory,
}

fn record() -> impl Strategy<Value = String> {
    (
        DEAD_PID_MIN..=u32::MAX,
        prop_oneof![Just("BRAIN_P"), Just("junk"), Just("MASTER_LAUNCH")],
        proptest::option::of(DEAD_PID_MIN..=u32::MAX),
        proptest::option::of(any::<u64>()),
        prop_oneof![
            Just(None),
            Just(Some("2999-01-01T00:00:00")),
            Just(Some("2000-01-01T00:00:00.123456")),
            Just(Some("not a time")),
        ],
    )
        .prop_map(|(pid, name, holder, start, timestamp)| {
            let mut fields = vec![format!(r#""pid": {pid}"#), format!(r#""name": "{name}""#)];
            if let Some(holder) = holder {
                fields.push(format!(r#""holder_pid": {holder}"#));
            }
            if let Some(start) = start {
                fields.push(format!(r#""holder_start": {start}, "pid_start": {start}"#));
            }
            if let Some(timestamp) = timestamp {
                fields.push(format!(r#""timestamp": "{timestamp}""#));
            }
            format!("{{{}}}", fields.join(", "))
        })
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(Content::Bytes),
        3 => record().prop_map(Content::Record),
        1 => (1u64..=100).prop_map(Content::Huge),
        2 => Just(Content::LinkToSentinel),
        1 => Just(Content::DanglingLink),
        2 => Just(Content::Fifo),
        2 => Just(Content::Directory),
    ]
}

fn file_name() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("MASTER_LAUNCH"),
            Just("qs_p"),
            Just("BRAIN_P"),
            Just("WATCHDOG_P"),
            Just("junk"),
            Just("poetry"),
            Just("stray"),
        ],
        prop_oneof![
            4 => Just(".lock"),
            2 => Just(".stop"),
            1 => Just(".txt"),
        ],
    )
        .prop_map(|(stem, ext)| format!("{stem}{ext}"))
}

fn lock_dir_contents() -> impl Strategy<Value = BTreeMap<String, Content>> {
    proptest::collection::btree_map(file_name(), content(), 1..8)
}

/// What one entry is, for comparing a tree before and after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File { len: u64, hash: u64 },
    Link(PathBuf),
    Dir,
    Other,
}

/// Every entry under `root`, without following links or opening anything that is not
/// a regular file.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut seen = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let kind = metadata.file_type();
            let what = if kind.is_symlink() {
                Seen::Link(std::fs::read_link(&path).unwrap())
            } else if kind.is_dir() {
                pending.push(path.clone());
                Seen::Dir
            } else if kind.is_file() {
                let mut head = Vec::new();
                std::fs::File::open(&path)
                    .unwrap()
                    .take(1024 * 1024)
                    .read_to_end(&mut head)
                    .unwrap();
                let mut hasher = DefaultHasher::new();
                head.hash(&mut hasher);
                Seen::File {
                    len: metadata.len(),
                    hash: hasher.finish(),
                }
            } else {
                Seen::Other
            };
            seen.insert(path.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    seen
}

fn build(root: &Path, contents: &BTreeMap<String, Content>) {
    let locks = root.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let sentinel = root.join("sentinel.txt");
    for (name, content) in contents {
        let path = locks.join(name);
        match content {
            Content::Bytes(bytes) => std::fs::write(&path, bytes).unwrap(),
            Content::Record(text) => std::fs::write(&path, text).unwrap(),
            Content::Huge(mib) => std::fs::File::create(&path)
                .unwrap()
                .set_len(mib * 1024 * 1024)
                .unwrap(),
            Content::LinkToSentinel => std::os::unix::fs::symlink(&sentinel, &path).unwrap(),
            Content::DanglingLink => {
                std::os::unix::fs::symlink(root.join("no-such-file"), &path).unwrap();
            }
            Content::Fifo => {
                let status = Command::new("mkfifo").arg(&path).status().unwrap();
                assert!(status.success());
            }
            Content::Directory => std::fs::create_dir(&path).unwrap(),
        }
    }
}

/// Runs a tool with a time bound; returns its exit code. Output goes to files (a huge
/// output cannot block the run on a full pipe).
fn run_bounded(program: &Path, args: &[&str], config: &Path, out_dir: &Path) -> (i32, String) {
    let stdout = out_dir.join("stdout");
    let stderr = out_dir.join("stderr");
    let mut child = Command::new(program)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish within {RUN_BOUND:?}",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let errors = std::fs::read_to_string(&stderr).unwrap_or_default();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("{} {args:?} died of a signal: {errors}", program.display()));
    assert_ne!(
        code,
        101,
        "{} {args:?} panicked: {errors}",
        program.display()
    );
    assert!(
        std::fs::metadata(&stdout).unwrap().len() < 1024 * 1024,
        "{} {args:?} printed more than 1 MiB",
        program.display()
    );
    (code, errors)
}

/// Whether `tool` may have removed the regular file `name` from the lock dir.
fn may_remove(tool: &str, name: &str, before: &Seen, contents: &BTreeMap<String, Content>) -> bool {
    if !matches!(before, Seen::File { .. }) {
        return false;
    }
    let Some(stem) = name.strip_suffix(".lock") else {
        // Stop requests: only master-launch clears its own, left from before a start.
        return tool == "master-launch" && name == "MASTER_LAUNCH.stop";
    };
    let desk_lock = DESK_LOCKS.contains(&stem);
    let readable_record = matches!(contents.get(name), Some(Content::Record(_)));
    match tool {
        "lock-gc" => desk_lock || readable_record,
        "safe-shutdown" => desk_lock,
        "master-launch" => stem == "MASTER_LAUNCH",
        _ => false,
    }
}

fn tool_paths() -> Vec<(&'static str, PathBuf, Vec<&'static str>)> {
    vec![
        ("check-procs", tool("check-procs", "check-procs"), vec![]),
        (
            "check-procs",
            tool("check-procs", "check-procs"),
            vec!["--json"],
        ),
        ("lock-gc", tool("lock-gc", "lock-gc"), vec!["--dry-run"]),
        ("lock-gc", tool("lock-gc", "lock-gc"), vec![]),
        (
            "safe-shutdown",
            tool("safe-shutdown", "safe-shutdown"),
            vec!["--yes", "--timeout", "1"],
        ),
        (
            "master-launch",
            tool("master-launch", "master-launch"),
            vec!["--dry-run"],
        ),
        (
            "master-launch",
            tool("master-launch", "master-launch"),
            vec![],
        ),
    ]
}

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn every_tool_survives_a_hostile_lock_dir_and_touches_only_what_it_owns(
        contents in lock_dir_contents()
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("desk");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(root.join("sentinel.txt"), SENTINEL_TEXT).unwrap();
        let config = root.join("fleet.toml");
        std::fs::write(&config, DESK).unwrap();
        build(&root, &contents);
        for (name, program, args) in tool_paths() {
            let before = snapshot(&root);
            let (code, errors) = run_bounded(&program, &args, &config, &out);
            prop_assert!(code <= 3, "{name} {args:?} exit {code}: {errors}");
            let after = snapshot(&root);
            prop_assert_eq!(
                std::fs::read(root.join("sentinel.txt")).unwrap(),
                SENTINEL_TEXT.to_vec()
            );
            for (path, seen) in &before {
                if path.starts_with("logs") {
                    continue;
                }
                let entry = path.file_name().unwrap().to_str().unwrap();
                let in_lock_dir = path.parent() == Some(Path::new("locks"));
                let read_only = args.contains(&"--dry-run") || name == "check-procs";
                match after.get(path) {
                    Some(now) if now == seen => {}
                    // master-launch takes over a stale or corrupt MASTER_LAUNCH.lock
                    // (its record is written into it) and removes it at release.
                    Some(_) if !read_only && in_lock_dir && entry == "MASTER_LAUNCH.lock"
                        && name == "master-launch" && matches!(seen, Seen::File { .. }) => {}
                    None if !read_only && in_lock_dir
                        && may_remove(name, entry, seen, &contents) => {}
                    other => prop_assert!(
                        false,
                        "{} {:?} changed {}: {:?} -> {:?}",
                        name, args, path.display(), seen, other
                    ),
                }
            }
            for path in after.keys() {
                let owned = path.starts_with("logs")
                    || path == Path::new("logs")
                    || (name == "master-launch" && !args.contains(&"--dry-run")
                        && path == Path::new("locks/MASTER_LAUNCH.lock"));
                prop_assert!(
                    before.contains_key(path) || owned,
                    "{} {:?} created {}", name, args, path.display()
                );
            }
        }
    }
}

/// Config fragments, valid and not: each line is a chance for a refusal, a panic or a
/// deletion. `poetry.lock` beside the config must survive every one.
fn config_text() -> impl Strategy<Value = String> {
    let lock_dir = prop_oneof![
        Just(String::new()),
        Just("lock_dir = \".\"\n".to_string()),
        Just("lock_dir = \"\"\n".to_string()),
        Just("lock_dir = \"sub/..\"\n".to_string()),
        Just("lock_dir = \"locks\"\n".to_string()),
        Just("lock_dir = \"/nonexistent/locks\"\n".to_string()),
    ];
    let vars = prop_oneof![
        Just(String::new()),
        Just("[vars]\na = \"{b}\"\nb = \"x\"\n".to_string()),
        Just("[vars]\na = \"{b}\"\nb = \"{a}\"\n".to_string()),
        Just("[vars]\na = \"{nope}\"\n".to_string()),
        Just("[vars]\na = \"{{literal}}\"\n".to_string()),
    ];
    let defaults = prop_oneof![
        Just(String::new()),
        Just("[defaults]\nstop_timeout_secs = 18446744073709551615\n".to_string()),
        Just("[defaults]\nrestart_delay_ms = 18446744073709551615\n".to_string()),
        Just("[defaults]\nstop_timeout_secs = 1\nenv = { X = \"{a}\" }\n".to_string()),
    ];
    let name = prop_oneof![
        Just("ACC".to_string()),
        Just("CON".to_string()),
        Just("nul".to_string()),
        Just("Com1".to_string()),
        Just("A".repeat(300)),
        Just(String::new()),
        Just("a.b".to_string()),
        Just("MASTER_LAUNCH".to_string()),
        "[A-Za-z0-9_]{1,12}",
    ];
    let accounts = proptest::collection::vec((name, any::<bool>()), 0..3).prop_map(|accounts| {
        accounts
            .iter()
            .map(|(name, enabled)| {
                format!(
                    "[[account]]\nname = \"{name}\"\nenabled = {enabled}\nbrain = [\"/nonexistent/py\", \"b_{{account}}_marker_x\"]\nwatchdog = [\"/nonexistent/py\", \"w_{{a}}_marker_x\"]\n"
                )
            })
            .collect::<String>()
    });
    (lock_dir, vars, defaults, accounts, any::<bool>()).prop_map(
        |(lock_dir, vars, defaults, accounts, garbage)| {
            let tail = if garbage { "\n[[[ not toml" } else { "" };
            format!("{lock_dir}{vars}{defaults}{accounts}{tail}")
        },
    )
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn every_tool_refuses_or_runs_on_a_generated_config_and_deletes_nothing_of_others(
        text in config_text()
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("desk");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(root.join("poetry.lock"), b"[[package]]\nname = \"x\"\n").unwrap();
        std::fs::write(root.join("Pipfile.lock"), b"{}").unwrap();
        let config = root.join("fleet.toml");
        std::fs::write(&config, &text).unwrap();
        for (name, program, mut args) in tool_paths() {
            if name == "master-launch" {
                // A generated config may enable accounts: never start anything.
                args = vec!["--dry-run"];
            }
            let (code, errors) = run_bounded(&program, &args, &config, &out);
            prop_assert!(code <= 3, "{name} {args:?} exit {code}: {errors}\n{text}");
            prop_assert!(root.join("poetry.lock").exists(), "{} {:?} deleted poetry.lock\n{}", name, args, text);
            prop_assert!(root.join("Pipfile.lock").exists(), "{} {:?} deleted Pipfile.lock\n{}", name, args, text);
        }
    }
}
