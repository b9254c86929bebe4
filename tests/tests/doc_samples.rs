//! The sample outputs in the documents are real: each block after a
//! `<!-- sample: NAME -->` line in README.md or docs/*.md is what the tools print on a
//! throw-away desk, run here. The desk is the demo's (`examples/demo/bot.py`, run by
//! `python3`), under names unique to this run (other suites run on this machine at the
//! same time, and copies are recognised machine-wide); the output is then normalised:
//! the names become the demo's (`quantum_server`, `DEMO_A`, `DEMO_B`), pids, times,
//! durations and paths stable placeholders, and the table's columns are re-aligned.
//!
//! A block that differs fails the test with both texts. `DESK_UPDATE_DOCS=1 cargo test
//! -p fleet-tests --test doc_samples` rewrites the blocks instead.
//!
//! Linux only: the samples show Linux output (an `os error` text, a systemd unit).

#![cfg(target_os = "linux")]
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_tests::{Running, tool};

/// Every sample the documents may show, and so every marker this test knows.
const SAMPLES: [&str; 5] = [
    "check-procs-table",
    "master-launch-refused",
    "lock-gc-dry-run",
    "check-procs-unlocked",
    "master-launch-etcd-down",
];

/// The documents that may hold samples, relative to the workspace root.
const DOCUMENTS: [&str; 4] = [
    "README.md",
    "docs/operator.md",
    "docs/troubleshooting.md",
    "docs/reference.md",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Samples are written back one at a time (the tests run on threads).
static DOCS: Mutex<()> = Mutex::new(());

/// Compares sample `name` in every document that shows it with `text`, or with
/// `DESK_UPDATE_DOCS=1` writes `text` there.
fn check_sample(name: &str, text: &str) {
    let _guard = DOCS.lock().unwrap_or_else(|e| e.into_inner());
    let update = std::env::var_os("DESK_UPDATE_DOCS").is_some_and(|v| v == "1");
    let marker = format!("<!-- sample: {name} -->");
    let mut found = 0;
    for document in DOCUMENTS {
        let path = workspace().join(document);
        let old = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
        let mut index = 0;
        while index < lines.len() {
            if lines[index].trim() != marker {
                index += 1;
                continue;
            }
            found += 1;
            let line = index + 1;
            assert_eq!(
                lines.get(index + 1).map(String::as_str),
                Some("```text"),
                "{document}:{line}: {marker} must be followed by a ```text block"
            );
            let end = (index + 2..lines.len())
                .find(|&i| lines[i] == "```")
                .unwrap_or_else(|| panic!("{document}:{line}: the sample's block never ends"));
            let shown = lines[index + 2..end].join("\n");
            if update {
                lines.splice(index + 2..end, text.lines().map(str::to_string));
            } else {
                assert_eq!(
                    shown,
                    text.trim_end(),
                    "{document}:{line}: sample `{name}` differs from a real run (left: the \
                     document, right: the run). If the change is meant, run \
                     `DESK_UPDATE_DOCS=1 cargo test -p fleet-tests --test doc_samples` and \
                     commit the documents"
                );
            }
            index = end;
        }
        if update {
            let mut new = lines.join("\n");
            new.push('\n');
            if new != old {
                std::fs::write(&path, new).unwrap();
            }
        }
    }
    assert!(found > 0, "no document shows sample `{name}` ({marker})");
}

/// Every sample marker in the documents is one this test produces.
#[test]
fn every_sample_in_the_documents_is_checked_here() {
    for document in DOCUMENTS {
        let text = std::fs::read_to_string(workspace().join(document)).unwrap();
        for (number, line) in text.lines().enumerate() {
            if let Some(rest) = line.trim().strip_prefix("<!-- sample: ") {
                let name = rest.trim_end_matches("-->").trim();
                assert!(
                    SAMPLES.contains(&name),
                    "{document}:{}: unknown sample `{name}`; add it to doc_samples.rs",
                    number + 1
                );
            }
        }
    }
}

/// A demo desk in a temp folder: `bot.py` beside `fleet.toml`, names unique to this
/// run and test.
struct DemoDesk {
    dir: tempfile::TempDir,
    /// (unique name, name shown), longest first.
    names: Vec<(String, String)>,
}

impl DemoDesk {
    fn new(tag: &str, extra: &str) -> DemoDesk {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("doc-samples-{pid}-{tag}-"))
            .tempdir()
            .unwrap();
        std::fs::copy(
            workspace().join("examples/demo/bot.py"),
            dir.path().join("bot.py"),
        )
        .unwrap();
        let global = format!("qs{tag}{pid}");
        let (a, b) = (format!("A{tag}{pid}"), format!("B{tag}{pid}"));
        let config = format!(
            "# The demo desk (examples/demo) under names unique to one test run.\n\
             lock_dir = \".locks\"\nlog_dir = \"logs\"\n{extra}\n\
             [vars]\npython = \"python3\"\n\n\
             [[global]]\nname = \"{global}\"\ncommand = [\"{{python}}\", \"bot.py\", \"{global}\"]\n\n\
             [[account]]\nname = \"{a}\"\nlogin = \"100001\"\n\
             brain = [\"{{python}}\", \"bot.py\", \"BRAIN_{a}\"]\n\
             watchdog = [\"{{python}}\", \"bot.py\", \"WATCHDOG_{a}\"]\n\n\
             [[account]]\nname = \"{b}\"\nlogin = \"100002\"\n\
             brain = [\"{{python}}\", \"bot.py\", \"BRAIN_{b}\"]\n\
             watchdog = [\"{{python}}\", \"bot.py\", \"WATCHDOG_{b}\"]\n"
        );
        std::fs::write(dir.path().join("fleet.toml"), config).unwrap();
        // The account names are inside the lock names: they are replaced with them.
        let names = vec![
            (global, "quantum_server".to_string()),
            (a, "DEMO_A".to_string()),
            (b, "DEMO_B".to_string()),
        ];
        DemoDesk { dir, names }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A tool run in the desk's folder (so `./fleet.toml`, as the documents show it).
    fn command(&self, package: &str) -> Command {
        let mut command = Command::new(tool(package, package));
        command
            .current_dir(self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, package: &str, args: &[&str]) -> Output {
        self.command(package).args(args).output().unwrap()
    }

    /// master-launch in the background, killed with what it started when dropped.
    fn start(&self) -> Running {
        let child = self
            .command("master-launch")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Running::new(child)
    }

    /// Runs `package args` until `done` says its output is the one to show (30 s at
    /// most), and returns that output.
    fn run_until(
        &self,
        package: &str,
        args: &[&str],
        mut done: impl FnMut(&Output, &str) -> bool,
    ) -> Output {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.run(package, args);
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            if done(&output, &text) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "`{package} {}` never gave the output to show; last:\n{text}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until check-procs sees the whole desk running under master-launch (healthy,
    /// six `running` rows), and returns that output.
    fn wait_until_running(&self) -> Output {
        self.run_until("check-procs", &[], |output, text| {
            output.status.code() == Some(0)
                && text.lines().filter(|l| l.contains(" running ")).count() == 6
        })
    }

    /// `$ command` and what it printed (stdout, then stderr), normalised; with the exit
    /// code when `code` says so.
    fn shown(&self, command: &str, output: &Output, code: bool) -> String {
        let mut text = format!("$ {command}\n");
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if code {
            text.push_str(&format!(
                "$ echo $?\n{}\n",
                output.status.code().unwrap_or(-1)
            ));
        }
        self.normalise(&text)
    }

    fn normalise(&self, text: &str) -> String {
        let mut text = text.to_string();
        let bin = tool("master-launch", "master-launch");
        if let Some(bin) = bin.parent() {
            text = text.replace(&format!("{}/", bin.display()), "");
        }
        for path in [
            self.path().to_path_buf(),
            self.path().canonicalize().unwrap(),
        ] {
            text = text.replace(&path.display().to_string(), "/home/trader/desk");
        }
        for (unique, shown) in &self.names {
            text = text.replace(unique.as_str(), shown);
        }
        // `MASTER_LAUNCH is held by pid N (started ...) on HOST`.
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            text = text.replace(&format!(" on {};", host.trim()), " on desk-pc;");
        }
        text = timestamps(&text);
        let mut pids = Pids::default();
        let mut lines = Vec::new();
        let mut table = Vec::new();
        for line in text.lines() {
            let line = python(line);
            if line.starts_with("COMPONENT ") || (!table.is_empty() && !line.is_empty()) {
                table.push(line);
                continue;
            }
            if !table.is_empty() {
                lines.extend(realign(&std::mem::take(&mut table), &mut pids));
            }
            lines.push(other_line(&line, &mut pids));
        }
        if !table.is_empty() {
            lines.extend(realign(&table, &mut pids));
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// Real pids become 4201, 4202, ... in the order they first appear.
#[derive(Default)]
struct Pids(BTreeMap<String, String>);

impl Pids {
    fn placeholder(&mut self, pid: &str) -> String {
        let next = 4201 + self.0.len();
        self.0
            .entry(pid.to_string())
            .or_insert_with(|| next.to_string())
            .clone()
    }

    /// Each `pid N` in `line`, replaced.
    fn in_line(&mut self, line: &str) -> String {
        let mut out = String::new();
        let mut rest = line;
        while let Some(at) = rest.find("pid ") {
            out.push_str(&rest[..at + 4]);
            rest = &rest[at + 4..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits > 0 {
                out.push_str(&self.placeholder(&rest[..digits]));
                rest = &rest[digits..];
            }
        }
        out.push_str(rest);
        out
    }
}

/// `2026-12-03 19:31:49` (and `.762`) becomes `2026-02-11 09:30:00` (`.000`).
fn timestamps(text: &str) -> String {
    let shape = "dddd-dd-dd dd:dd:dd";
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut index = 0;
    while index < text.len() {
        let fits = |at: usize| {
            shape.bytes().enumerate().all(|(i, s)| {
                bytes.get(at + i).is_some_and(|&b| match s {
                    b'd' => b.is_ascii_digit(),
                    other => b == other,
                })
            })
        };
        if fits(index) {
            out.push_str("2026-02-11 09:30:00");
            index += shape.len();
            if bytes.get(index) == Some(&b'.')
                && bytes[index + 1..].iter().take(3).all(u8::is_ascii_digit)
                && bytes.len() >= index + 4
            {
                out.push_str(".000");
                index += 4;
            }
        } else {
            let c = text[index..].chars().next().unwrap();
            out.push(c);
            index += c.len_utf8();
        }
    }
    out
}

/// A Python interpreter's path (`/usr/bin/python3`, a pyenv one) becomes `python3`;
/// in a command, whatever runs the interpreter (a pyenv shim's `bash .../pyenv-exec`)
/// is dropped.
fn python(line: &str) -> String {
    if let Some(at) = line.find(" python3 ") {
        let start = line[..at].rfind("  ").map_or(0, |s| s + 2);
        if start < at {
            return python(&format!("{}{}", &line[..start], &line[at + 1..]));
        }
    }
    line.split(' ')
        .map(|word| {
            let file = word.rsplit('/').next().unwrap_or(word);
            if word.contains('/') && file.starts_with("python3") {
                "python3"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line outside the table: pids, ages and the autostart unit's path.
fn other_line(line: &str, pids: &mut Pids) -> String {
    let unit = "Starts by itself: no (no unit file ";
    if let Some(rest) = line.strip_prefix(unit)
        && let Some(end) = rest.find(';')
    {
        return format!(
            "{unit}~/.config/systemd/user/desk-tools-desk-5e1f0c2a.service{}",
            &rest[end..]
        );
    }
    let mut line = pids.in_line(line);
    // lock-gc: `written 3s ago`.
    if let Some(at) = line.find("written ") {
        let start = at + "written ".len();
        if let Some(end) = line[start..].find(" ago") {
            line.replace_range(start..start + end, "4s");
        }
    }
    line
}

/// check-procs' table: pids and uptimes replaced, columns aligned again (two spaces
/// between columns, as check-procs writes them).
fn realign(table: &[String], pids: &mut Pids) -> Vec<String> {
    let rows: Vec<Vec<String>> = table.iter().map(|line| columns(line)).collect();
    let header = &rows[0];
    let pid_column = header.iter().position(|h| h == "PID");
    let uptime_column = header.iter().position(|h| h == "UPTIME");
    let rows: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(c, cell)| match (r, Some(c)) {
                    (0, _) => cell.clone(),
                    (_, col) if col == pid_column && cell != "-" => pids.placeholder(cell),
                    (_, col) if col == uptime_column && cell != "-" => "5s".to_string(),
                    _ => pids.in_line(cell),
                })
                .collect()
        })
        .collect();
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
    };
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let w = width(c).unwrap_or(0);
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            line
        })
        .collect()
}

/// A table line's cells: split where two or more spaces are.
fn columns(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut spaces = 0;
    for c in line.chars() {
        if c == ' ' {
            spaces += 1;
            continue;
        }
        if spaces >= 2 && !cell.is_empty() {
            cells.push(std::mem::take(&mut cell));
        } else {
            for _ in 0..spaces {
                cell.push(' ');
            }
        }
        spaces = 0;
        cell.push(c);
    }
    if !cell.is_empty() {
        cells.push(cell);
    }
    cells
}

/// The tour's first look: the demo desk running under master-launch.
#[test]
fn check_procs_table_of_a_running_desk() {
    let desk = DemoDesk::new("t", "");
    let _master = desk.start();
    let output = desk.wait_until_running();
    check_sample(
        "check-procs-table",
        &desk.shown("check-procs", &output, false),
    );
}

/// A second master-launch of one desk is refused, exit 3, naming the first.
#[test]
fn a_second_master_launch_is_refused() {
    let desk = DemoDesk::new("r", "");
    let _master = desk.start();
    // Once the first runs the desk (before that, a second could be the one to win the
    // lock, and would then run the desk itself).
    desk.wait_until_running();
    let output = desk.run("master-launch", &[]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    check_sample(
        "master-launch-refused",
        &desk.shown("master-launch", &output, true),
    );
}

/// After master-launch is killed outright, its lock files are records nobody holds.
#[test]
fn lock_gc_dry_run_after_a_kill() {
    let desk = DemoDesk::new("g", "");
    let mut master = desk.start();
    desk.wait_until_running();
    master.kill();
    let output = desk.run_until("lock-gc", &["--dry-run"], |_, text| {
        text.contains("would remove 6 lock files") && text.contains("MASTER_LAUNCH.state")
    });
    check_sample(
        "lock-gc-dry-run",
        &desk.shown("lock-gc --dry-run", &output, false),
    );
}

/// A bot started by hand, past the demo bot's guard, with no master-launch running.
#[test]
fn check_procs_shows_a_copy_started_by_hand() {
    let desk = DemoDesk::new("u", "");
    let global = desk.names[0].0.clone();
    let _copy = Running::new(
        Command::new("python3")
            .args(["bot.py", &global])
            .current_dir(desk.path())
            .env("FLEET_LOCK_FILE", "set by hand")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let output = desk.run_until("check-procs", &[], |_, text| text.contains("UNLOCKED"));
    check_sample(
        "check-procs-unlocked",
        &desk.shown("check-procs", &output, true),
    );
}

/// `[cluster]` with etcd down at start: master-launch starts nothing and exits 1.
#[test]
fn master_launch_exits_when_etcd_is_down_at_start() {
    // A port nobody listens on: taken, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = format!(
        "\n[cluster]\nendpoints = [\"http://127.0.0.1:{port}\"]\nlease_ttl_secs = 2\n\
         host = \"desk-1\"\n"
    );
    let desk = DemoDesk::new("e", &cluster);
    let output = desk.run("master-launch", &[]);
    let shown = desk
        .shown("master-launch", &output, true)
        .replace(&format!("127.0.0.1:{port}"), "10.0.0.5:2379");
    check_sample("master-launch-etcd-down", &shown);
    assert_eq!(output.status.code(), Some(1));
}
