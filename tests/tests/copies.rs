//! DESIGN.md rules 9 and 11 across the tools, on a desk of real Python bots: a viewer,
//! an editor-like reader or a linter that names a bot's script is never a copy, so
//! nothing refuses because of it and nothing stops it; a copy started by hand with
//! an absolute path and interpreter options still is; an older tool's record naming a
//! process that is not a copy is reported and left alone.
//!
//! Unix-only: the bots are Python scripts (Wine has no Python) and the viewer is `tail`.
#![cfg(unix)]
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fleet_tests::{Running, tool, wait_gone, wait_until};
use lockcore::copies::file_name;
use lockcore::{DeskSnapshot, Fleet, ProcessProbe};

/// A bot that runs until SIGTERM, then exits 0.
const BOT: &str = "import os, signal, sys, time\n\
stop = []\n\
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))\n\
print('started', os.getpid(), flush=True)\n\
while not stop:\n    time.sleep(0.05)\n";

/// A module a "linter" runs: it just stays up a while.
const LINTER: &str = "import time\ntime.sleep(120)\n";

struct PyDesk {
    dir: tempfile::TempDir,
    account: String,
}

impl PyDesk {
    /// A desk of Python bots: global `qs_<tag>_<pid>`, account `<TAG>_<PID>` with its brain and
    /// watchdog, each its own script in the desk's folder.
    fn new(tag: &str) -> PyDesk {
        let dir = tempfile::tempdir().unwrap();
        // Names of this run's own: two checkouts' suites at once never meet.
        let account = fleet_tests::unique(tag).to_uppercase();
        let global = format!("qs_{}", fleet_tests::unique(tag));
        for script in [
            format!("{global}.py"),
            format!("BRAIN_{account}.py"),
            format!("WATCHDOG_{account}.py"),
        ] {
            std::fs::write(dir.path().join(script), BOT).unwrap();
        }
        std::fs::write(dir.path().join(format!("lint_{tag}.py")), LINTER).unwrap();
        let config = format!(
            "[vars]\npython = \"python3\"\n\n[defaults]\nstop_timeout_secs = 5\n\n\
             [[global]]\nname = \"{global}\"\ncommand = [\"{{python}}\", \"{global}.py\"]\n\n\
             [[account]]\nname = \"{account}\"\nlogin = \"1\"\n\
             brain = [\"{{python}}\", \"BRAIN_{account}.py\"]\n\
             watchdog = [\"{{python}}\", \"WATCHDOG_{account}.py\"]\n"
        );
        std::fs::write(dir.path().join("fleet.toml"), config).unwrap();
        PyDesk { dir, account }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("fleet.toml")
    }

    fn script(&self, role: &str) -> PathBuf {
        self.path().join(format!("{role}_{}.py", self.account))
    }

    fn snapshot(&self) -> DeskSnapshot {
        let fleet = Fleet::load(&self.config()).unwrap();
        DeskSnapshot::take(&fleet, &mut ProcessProbe::new().unwrap()).unwrap()
    }

    fn tool(&self, package: &str, args: &[&str]) -> Output {
        Command::new(tool(package, package))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts a process in the desk's folder, killed when the guard drops.
    fn start(&self, program: &str, args: &[&str]) -> Running {
        let child = Command::new(program)
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Running::new(child)
    }
}

fn is_alive(pid: u32) -> bool {
    ProcessProbe::new().unwrap().identity(pid).is_some()
}

/// Whether `pid` runs `program`, with `needle` in its command line, judged as the
/// tools judge it: by the program that the command line names first. A process just
/// spawned shows its parent's command line until it has exec'd, shows none in the
/// middle of an exec, and `python3` may be a launcher (pyenv's shim is a bash script,
/// whose process is even *named* `python3`) that execs Python only two execs later.
fn runs(pid: u32, program: &str, needle: &str) -> bool {
    ProcessProbe::new().unwrap().info(pid).is_some_and(|p| {
        p.cmd
            .first()
            .is_some_and(|first| file_name(first).starts_with(program))
            && p.cmd.iter().any(|a| a.contains(needle))
    })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn viewers_and_linters_are_never_copies_and_a_hand_started_copy_still_is() {
    let desk = PyDesk::new("pyview");
    let brain = desk.script("BRAIN");
    let viewer = desk.start("tail", &["-f", brain.to_str().unwrap()]);
    let linter = desk.start(
        "python3",
        &[
            "-m",
            "lint_pyview",
            &format!("WATCHDOG_{}.py", desk.account),
        ],
    );
    wait_until("the viewer and the linter to run", || {
        runs(viewer.pid(), "tail", "BRAIN_") && runs(linter.pid(), "python", "lint_pyview")
    });

    let check = desk.tool("check-procs", &[]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    let (launcher, lines) = fleet_tests::start_master_launch(&desk.config(), &[]);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(30))
            .is_some(),
        "master-launch refused or failed beside a viewer and a linter"
    );
    wait_until("the desk to run", || {
        desk.snapshot()
            .components
            .iter()
            .all(|v| v.managed.is_some() && v.copies.len() == 1)
    });
    let check = desk.tool("check-procs", &[]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    let stop = desk.tool("safe-shutdown", &["--yes", "--timeout", "5"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    wait_gone(&[launcher.pid()]);
    assert!(is_alive(viewer.pid()), "safe-shutdown stopped the viewer");
    assert!(is_alive(linter.pid()), "safe-shutdown stopped the linter");

    // A copy started by hand, with an absolute path and an interpreter option.
    let copy = desk.start("python3", &["-u", brain.to_str().unwrap()]);
    wait_until("the hand-started copy to be seen", || {
        desk.snapshot()
            .component(&format!("BRAIN_{}", desk.account))
            .is_some_and(|v| v.copies.len() == 1)
    });
    let check = desk.tool("check-procs", &["--json"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    // A brain alone is also unguarded (DESIGN.md rule 13), ranked first.
    assert_eq!(report["problems"][0]["kind"], "unguarded", "{report}");
    let problem = &report["problems"][1];
    assert_eq!(problem["kind"], "unlocked", "{report}");
    assert_eq!(problem["pids"][0], copy.pid(), "{report}");
    let stop = desk.tool("safe-shutdown", &["--yes", "--timeout", "5"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    wait_gone(&[copy.pid()]);
    assert!(is_alive(viewer.pid()) && is_alive(linter.pid()));
}

/// An older tool's record naming a live Python process that started before it but
/// is not a copy (a linter on the script): it could be the record's writer, so the
/// lock counts as held and master-launch refuses; but it is never stopped, and both
/// check-procs and safe-shutdown say why.
#[test]
fn a_legacy_record_naming_a_python_process_that_is_not_a_copy_is_left_alone() {
    let desk = PyDesk::new("pylegacy");
    let linter = desk.start(
        "python3",
        &["-m", "lint_pylegacy", &format!("BRAIN_{}.py", desk.account)],
    );
    wait_until("the linter to run", || {
        runs(linter.pid(), "python", "lint_pylegacy")
    });
    let name = format!("BRAIN_{}", desk.account);
    let lock_dir = desk.path().join(".locks");
    std::fs::create_dir_all(&lock_dir).unwrap();
    // No timestamp: the record proves nothing about when it was written.
    std::fs::write(
        lock_dir.join(format!("{name}.lock")),
        format!(r#"{{"pid": {}, "name": "{name}"}}"#, linter.pid()),
    )
    .unwrap();

    let check = desk.tool("check-procs", &["--json"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let problem = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(problem["kind"], "legacy", "{report}");
    assert!(
        problem["message"].as_str().unwrap().contains("not a copy"),
        "{report}"
    );

    let start = desk.tool("master-launch", &[]);
    assert_eq!(start.status.code(), Some(3), "{}", text(&start));

    let stop = desk.tool("safe-shutdown", &["--yes", "--timeout", "3"]);
    let said = text(&stop);
    assert_eq!(stop.status.code(), Some(0), "{said}");
    assert!(said.contains("left alone"), "{said}");
    assert!(said.contains("Nothing to stop"), "{said}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(is_alive(linter.pid()), "safe-shutdown stopped the linter");
}
