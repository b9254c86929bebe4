//! Helpers for the cross-tool scenarios in `tests/tests/`.
//!
//! - [`tool`] builds (once per test process) and finds any workspace binary, so no
//!   test hard-codes `target/debug`. `assert_cmd`'s `cargo_bin` only sees binaries of
//!   its own package; the tools live in other packages.
//! - [`Barrier`] releases many processes at the same instant: each waits for a file.
//! - [`spawn_reader`] turns a child's stdout into lines a test can wait for.
//! - `pty::answer_prompt` (Unix) types an answer at a YES prompt on a pseudo-terminal.
//! - [`etcd::Etcd`] runs a real etcd on loopback; [`proxy::Proxy`] cuts a host off it.
//!
//! The helper binaries in `src/bin/` are stand-ins the scenarios drive.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod census;
pub mod etcd;
pub mod orchestrated;
pub mod proxy;
#[cfg(unix)]
pub mod pty;
pub mod wine;

/// What this run adds to every name of a test desk: `_<pid of the test process>`.
///
/// Copies are recognised machine-wide by program and tokens, and a lock's machine-wide
/// name is its lock name (DESIGN.md rules 9 and 17): a desk named alike in another
/// checkout's suite, running at the same time on this machine, would see these bots as
/// copies of its own and hold these locks. Two runs never share a pid.
pub fn run_suffix() -> String {
    format!("_{}", std::process::id())
}

/// `name` made this run's own: `name` followed by [`run_suffix`].
pub fn unique(name: &str) -> String {
    format!("{name}{}", run_suffix())
}

/// Every line of a JSON Lines file (an event log, what an alert command received),
/// each parsed; a line that is not JSON fails the test. A missing file has no lines.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The path of workspace binary `name` from package `package`, built if needed.
///
/// Builds with the same cargo and profile that runs the tests, into the same target
/// folder, once per test process. In the debug profile it builds what
/// `cargo test --workspace` builds (every package's binaries and tests): the same
/// features, so during that run it finds everything built and costs a second, where a
/// `-p package` build would resolve other features, rebuild lockcore and relink the
/// binary (30 s and more, inside a test's timed window).
pub fn tool(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    // Under Wine cargo cannot run; the lane's `cargo test --workspace` built every
    // binary before it ran any test.
    let profile = bin_dir()
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string);
    let key = match profile.as_deref() {
        Some("debug") | None => "workspace".to_string(),
        Some(_) => package.to_string(),
    };
    if !built.contains(&key) && !wine::under_wine() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet"]);
        match profile.as_deref() {
            Some("debug") | None => {
                command.args(["--workspace", "--bins", "--tests"]);
            }
            // A bench: its own profile, this package's binaries only.
            Some(profile) => {
                command.args(["--bins", "-p", package, "--profile", profile]);
            }
        }
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
        assert!(status.success(), "building {package} failed");
        built.push(key);
    }
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The folder cargo puts binaries in: the test executable lives in its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    let deps = exe.parent().unwrap_or_else(|| Path::new("."));
    if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A start line for many processes: they wait for `path` to exist, then go.
#[derive(Debug)]
pub struct Barrier {
    pub path: PathBuf,
}

impl Barrier {
    pub fn new(dir: &Path, name: &str) -> Self {
        Barrier {
            path: dir.join(format!("{name}.go")),
        }
    }

    pub fn release(&self) {
        std::fs::write(&self.path, b"go").unwrap_or_else(|e| panic!("cannot write barrier: {e}"));
    }

    /// Called by the waiting side.
    pub fn wait(path: &Path) {
        while !path.exists() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Lines from a child's stream, collected on a thread.
#[derive(Debug)]
pub struct Lines {
    receiver: Receiver<String>,
}

pub fn spawn_reader(stream: impl Read + Send + 'static) -> Lines {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Lines { receiver }
}

impl Lines {
    /// The next line that contains `needle`, waiting at most `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every line until the stream ends.
    pub fn collect(self) -> Vec<String> {
        self.receiver.iter().collect()
    }
}

/// A child process that is killed (and reaped) when the guard is dropped, with any
/// processes it started, so a failing test never leaves stand-in bots behind (they
/// would also keep the test runner's output pipe open).
#[derive(Debug)]
pub struct Running {
    pub child: std::process::Child,
    /// Processes the child started that are not bound to it.
    pub started: Vec<PidGuard>,
}

impl Running {
    pub fn new(child: std::process::Child) -> Running {
        Running {
            child,
            started: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child alone (SIGKILL), leaving what it started running.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Innermost first: a killed launcher's children would be orphaned out of reach.
        self.started.clear();
        force_kill(self.pid());
        self.kill();
    }
}

/// `master-launch --config CONFIG EXTRA...`, its stdout read into lines; killed (with
/// what it started) when the guard drops.
pub fn start_master_launch(config: &Path, extra: &[&str]) -> (Running, Lines) {
    let mut child = Command::new(tool("master-launch", "master-launch"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn master-launch: {e}"));
    let lines = spawn_reader(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
    (Running::new(child), lines)
}

/// master-launch on a desk, run in the background with its stdout read into lines;
/// killed (with what it started) when dropped. What the tools' own tests start it with
/// is theirs to say: [`Launched::spawn`] takes the command, [`Desk::command`] builds one.
#[derive(Debug)]
pub struct Launched {
    pub running: Running,
    pub lines: Lines,
    lock_dir: PathBuf,
}

impl Launched {
    /// Spawns `command` (a master-launch on `desk`), stdout piped, stderr discarded.
    pub fn spawn(mut command: Command, desk: &Desk) -> Launched {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn master-launch: {e}"));
        let lines = spawn_reader(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        Launched {
            running: Running::new(child),
            lines,
            lock_dir: desk.lock_dir(),
        }
    }

    /// Waits (up to a minute) until it says the desk started.
    pub fn wait_started(&self) {
        assert!(
            self.lines
                .wait_for("desk started", Duration::from_secs(60))
                .is_some(),
            "master-launch did not start the desk"
        );
    }

    pub fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// How a test that runs everywhere ends the desk: SIGTERM on Unix (what a service
    /// manager sends), a stop-all request on Windows (what safe-shutdown writes); then
    /// the exit code.
    pub fn stop_desk(mut self) -> i32 {
        if cfg!(unix) {
            self.stop("-TERM")
        } else {
            self.stop_all()
        }
    }

    /// A stop-all request (what safe-shutdown writes), then the exit code.
    pub fn stop_all(&mut self) -> i32 {
        lockcore::StopRequest::new("MASTER_LAUNCH", Duration::from_secs(10))
            .write(&self.lock_dir)
            .unwrap_or_else(|e| panic!("cannot ask master-launch to stop: {e}"));
        self.wait_exit()
    }

    /// `kill SIGNAL` (Unix: `-TERM`, `-INT`), then the exit code.
    pub fn stop(mut self, signal: &str) -> i32 {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill {signal} failed");
        self.wait_exit()
    }

    /// Its exit code, waited for up to a minute (-1: ended by a signal).
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self
                .running
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot wait for master-launch: {e}"));
            if let Some(status) = status {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "master-launch did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The stop order (DESIGN.md's safe order) in a stand-in `--exit-log`: every brain
/// exits before any watchdog, every watchdog before any global (names starting with
/// `global`).
pub fn assert_safe_order(exits: &[(String, u128)], global: &str) {
    let times = |prefix: &str| -> Vec<u128> {
        exits
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| *t)
            .collect()
    };
    let (brains, watchdogs, globals) = (times("BRAIN_"), times("WATCHDOG_"), times(global));
    assert!(
        !brains.is_empty() && !watchdogs.is_empty() && !globals.is_empty(),
        "{exits:?}"
    );
    assert!(brains.iter().max() <= watchdogs.iter().min(), "{exits:?}");
    assert!(watchdogs.iter().max() <= globals.iter().min(), "{exits:?}");
}

/// A throw-away desk: a temp folder with a `fleet.toml` whose components are stand-in
/// bots, and helpers to start them the ways the real desk sees them started.
#[derive(Debug)]
pub struct Desk {
    pub dir: tempfile::TempDir,
    pub accounts: Vec<String>,
    pub global: String,
}

impl Desk {
    /// A desk with one global and the given accounts. Names must be unique across
    /// tests that run at the same time: they are how processes are recognised.
    pub fn new(global: &str, accounts: &[&str]) -> Desk {
        Desk::with_extra(global, accounts, "")
    }

    /// As [`Desk::new`], with `extra` TOML appended to every account table.
    pub fn with_extra(global: &str, accounts: &[&str], account_extra: &str) -> Desk {
        Desk::with_options(global, accounts, &[], &format!("\n{account_extra}"))
    }

    /// A desk whose every command gets `bot_args` (stand-in options such as
    /// `--exit-log`), with `tail` TOML appended to every account table (or, when it
    /// starts with a table header, after the accounts).
    pub fn with_options(global: &str, accounts: &[&str], bot_args: &[&str], tail: &str) -> Desk {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let standin = toml_string(&stand_in().display().to_string());
        let args: String = bot_args
            .iter()
            .map(|a| format!(", {}", toml_string(a)))
            .collect();
        let (account_extra, after) = if tail.trim_start().starts_with('[') {
            ("", tail)
        } else {
            (tail, "")
        };
        let mut text = format!(
            "lock_dir = \".locks\"\nlog_dir = \"logs\"\n\n[vars]\nbot = {standin}\n\n\
             [[global]]\nname = \"{global}\"\ncommand = [\"{{bot}}\", \"{global}\"{args}]\n"
        );
        for (i, account) in accounts.iter().enumerate() {
            text.push_str(&format!(
                "\n[[account]]\nname = \"{account}\"\nlogin = \"{}\"\n\
                 brain = [\"{{bot}}\", \"BRAIN_{account}\"{args}]\n\
                 watchdog = [\"{{bot}}\", \"WATCHDOG_{account}\"{args}]\n{account_extra}\n",
                1000 + i
            ));
        }
        text.push_str(after);
        std::fs::write(dir.path().join("fleet.toml"), text)
            .unwrap_or_else(|e| panic!("write fleet.toml: {e}"));
        Desk {
            dir,
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            global: global.to_string(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("fleet.toml")
    }

    /// `PROGRAM --config <the desk's fleet.toml> ARGS`, stdin empty (no terminal).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(std::process::Stdio::null());
        command
    }

    /// Appends `args` to the command of every component named in `names` (a brain
    /// that ignores stop requests, say), leaving the others as they are.
    pub fn add_args(&self, names: &[&str], args: &[&str]) {
        let path = self.config();
        let mut text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read fleet.toml: {e}"));
        let extra: String = args
            .iter()
            .map(|a| format!(", {}", toml_string(a)))
            .collect();
        for name in names {
            // In a command array the name follows the program: `"{bot}", "NAME"`.
            let token = format!(", \"{name}\"");
            assert!(text.contains(&token), "{name} is not in the desk");
            text = text.replace(&token, &format!("{token}{extra}"));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write fleet.toml: {e}"));
    }

    /// Lets every account's brain run without its watchdog (`brain_requires_watchdog =
    /// false`, DESIGN.md rule 13): for tests of a brain alone (`run BRAIN_X`), not of
    /// that rule. Not for a desk whose accounts already set the key.
    pub fn allow_brains_alone(&self) {
        let path = self.config();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read fleet.toml: {e}"));
        let text: String = text
            .lines()
            .map(|line| {
                if line.starts_with("watchdog = [") {
                    format!("{line}\nbrain_requires_watchdog = false\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write fleet.toml: {e}"));
    }

    /// The orchestrator's log, `<log_dir>/master-launch.log`.
    pub fn master_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/master-launch.log")).unwrap_or_default()
    }

    pub fn lock_dir(&self) -> PathBuf {
        self.dir.path().join(".locks")
    }

    pub fn lock_path(&self, name: &str) -> PathBuf {
        self.lock_dir().join(format!("{name}.lock"))
    }

    /// Every lock name of the desk's components, in start order.
    pub fn component_names(&self) -> Vec<String> {
        let mut names = vec![self.global.clone()];
        for account in &self.accounts {
            names.push(format!("WATCHDOG_{account}"));
            names.push(format!("BRAIN_{account}"));
        }
        names
    }

    /// Starts component `name` under its lock, held by a bare-bones launcher
    /// (`lock-taker run`), and waits until the lock records the bot.
    pub fn start_locked(&self, name: &str, extra_args: &[&str]) -> Running {
        let mut command = Command::new(tool("fleet-tests", "lock-taker"));
        command
            .arg("run")
            .arg(self.lock_dir())
            .arg(name)
            .arg(stand_in())
            .arg(name)
            .args(extra_args)
            .stdout(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn lock-taker: {e}"));
        let lines = spawn_reader(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        let mut running = Running::new(child);
        let line = lines
            .wait_for("running", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{name} did not start under its lock"));
        let bot_pid = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no pid in {line}"));
        running.started.push(PidGuard(bot_pid));
        running
    }

    /// Starts a copy of component `name` by hand, with no lock (what a double-click on
    /// an old batch file did).
    pub fn start_by_hand(&self, name: &str) -> Running {
        self.spawn_stand_in(name, false)
    }

    /// Starts a copy by hand through a launcher whose real work runs in a child with
    /// the same command line, as a Windows venv `python.exe` does.
    pub fn start_launcher_by_hand(&self, name: &str) -> Running {
        self.spawn_stand_in(name, true)
    }

    fn spawn_stand_in(&self, name: &str, launcher: bool) -> Running {
        let mut command = Command::new(stand_in());
        command
            .arg(name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if launcher {
            command.env("STANDIN_LAUNCHER", "1");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn stand-in: {e}"));
        let running = Running::new(child);
        wait_for_process_count(name, if launcher { 2 } else { 1 }, running.pid());
        running
    }
}

/// Waits until the tree under `root` has `count` processes whose command line names
/// `name`, so a test never looks before a launcher's child exists.
fn wait_for_process_count(name: &str, count: usize, root: u32) {
    let mut probe = lockcore::ProcessProbe::new().unwrap_or_else(|e| panic!("{e}"));
    let rule = lockcore::CopyRule::new(&[stand_in().display().to_string(), name.to_string()], None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = probe.table();
        let copies = table.find_copies(&rule);
        let seen = copies
            .iter()
            .find(|c| c.root.pid == root)
            .map_or(0, |c| c.pids().count());
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never showed {count} processes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The stand-in bot binary.
pub fn stand_in() -> PathBuf {
    tool("fleet-tests", "stand-in")
}

/// A TOML literal string, safe for Windows paths.
fn toml_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', ""))
}

/// Kills a process that is not our child (e.g. a bot orphaned by a killed launcher)
/// when dropped.
#[derive(Debug)]
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        force_kill(self.0);
    }
}

/// Kills a process and everything below it, deepest first, by the platform's own
/// command (these helpers must not depend on the code under test to clean up).
pub fn force_kill(pid: u32) {
    let mut targets = lockcore::ProcessProbe::new()
        .map(|mut probe| probe.table().descendants(pid))
        .unwrap_or_default();
    targets.push(pid);
    for target in targets {
        kill_one(target);
    }
}

fn kill_one(pid: u32) {
    #[cfg(unix)]
    let command = ("kill", vec!["-9".to_string(), pid.to_string()]);
    #[cfg(windows)]
    let command = (
        "taskkill",
        vec!["/F".into(), "/PID".into(), pid.to_string()],
    );
    let _ = Command::new(command.0)
        .args(command.1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

impl Desk {
    /// One look at the desk, as the tools see it.
    pub fn snapshot(&self) -> lockcore::DeskSnapshot {
        let fleet = lockcore::Fleet::load(&self.config()).unwrap_or_else(|e| panic!("{e}"));
        let mut probe = lockcore::ProcessProbe::new().unwrap_or_else(|e| panic!("{e}"));
        lockcore::DeskSnapshot::take(&fleet, &mut probe).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether `<log_dir>/<name>.log` has a stand-in's "started pid N" line for one of
    /// `pids`. A stand-in logs it after installing its stop handler, so a stop asked
    /// for after that line is one the bot sees (before it, SIGTERM kills at once).
    pub fn said_started(&self, name: &str, mut pids: impl Iterator<Item = u32>) -> bool {
        let log = std::fs::read_to_string(self.dir.path().join(format!("logs/{name}.log")))
            .unwrap_or_default();
        pids.any(|pid| log.contains(&format!("started pid {pid} ")))
    }

    /// Waits until every component that master-launch started has logged that it
    /// started (see [`Desk::said_started`]).
    pub fn wait_until_each_said_started(&self) {
        wait_until("every bot to log that it started", || {
            self.snapshot().components.iter().all(|v| {
                v.copies
                    .first()
                    .is_some_and(|copy| self.said_started(&v.component.lock_name, copy.tree.pids()))
            })
        });
    }

    /// Waits until every component runs exactly once, under its lock.
    pub fn wait_until_running(&self) {
        let expected = self.component_names().len();
        wait_until("the desk to run", || {
            let snap = self.snapshot();
            snap.components.len() == expected
                && snap
                    .components
                    .iter()
                    .all(|v| v.managed.is_some() && v.copies.len() == 1)
        });
    }

    /// Asserts that everything was released: no lock held, and on Unix no lock file
    /// left. (On Windows a release that meets an inspector may leave its file, never
    /// held.) `context` goes into the failure message.
    pub fn assert_no_lock_left(&self, context: &str) {
        assert_eq!(self.held_locks(), Vec::<String>::new(), "{context}");
        if cfg!(unix) {
            assert!(
                self.lock_files().is_empty(),
                "{context}: {:?}",
                self.lock_files()
            );
        }
    }

    /// The lock names in the desk's lock folder that a live process holds.
    pub fn held_locks(&self) -> Vec<String> {
        let mut probe = lockcore::ProcessProbe::new().unwrap_or_else(|e| panic!("{e}"));
        let statuses = lockcore::LockDir::new(self.lock_dir())
            .scan(&mut probe)
            .unwrap_or_else(|e| panic!("{e}"));
        statuses
            .into_iter()
            .filter(|status| status.state.is_held())
            .map(|status| status.name)
            .collect()
    }

    /// The `*.lock` files in the desk's lock folder.
    pub fn lock_files(&self) -> Vec<String> {
        std::fs::read_dir(self.lock_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".lock"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Polls `done` every 50 ms for up to 30 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until none of `pids` is alive (zombies count as gone).
pub fn wait_gone(pids: &[u32]) {
    let mut probe = lockcore::ProcessProbe::new().unwrap_or_else(|e| panic!("{e}"));
    wait_until("processes to exit", || {
        pids.iter().all(|&p| probe.identity(p).is_none())
    });
}

/// The `NAME unix-ms` lines stand-in bots append to their `--exit-log`.
pub fn exit_times(path: &Path) -> Vec<(String, u128)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let parsed = l
                .split_once(' ')
                .and_then(|(n, t)| Some((n.to_string(), t.parse().ok()?)));
            parsed.unwrap_or_else(|| panic!("bad exit-log line {l:?} in:\n{text}"))
        })
        .collect()
}

/// A file stand-in bots append their exit times to (`--exit-log`), in a folder of its
/// own, so a test can check the order in which they stopped.
#[derive(Debug)]
pub struct ExitLog {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    /// The path as a stand-in argument.
    pub arg: String,
}

impl ExitLog {
    pub fn new() -> ExitLog {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = dir.path().join("exits.log");
        let arg = path.display().to_string();
        ExitLog {
            _dir: dir,
            path,
            arg,
        }
    }

    /// `(name, unix-ms)` per bot that exited gracefully, in file order.
    pub fn times(&self) -> Vec<(String, u128)> {
        exit_times(&self.path)
    }
}

impl Default for ExitLog {
    fn default() -> Self {
        ExitLog::new()
    }
}

/// Every pid of every running copy of the desk's components.
pub fn running_pids(snapshot: &lockcore::DeskSnapshot) -> Vec<u32> {
    snapshot
        .components
        .iter()
        .flat_map(|v| v.copies.iter().flat_map(|c| c.tree.pids()))
        .collect()
}

/// The pid of the bot each named component's lock records; panics if one is not running.
pub fn managed_pids(snapshot: &lockcore::DeskSnapshot, names: &[&str]) -> Vec<u32> {
    names
        .iter()
        .map(|name| {
            snapshot
                .component(name)
                .and_then(|view| view.managed.as_ref())
                .map(|process| process.pid)
                .unwrap_or_else(|| panic!("{name} is not running under its lock"))
        })
        .collect()
}
