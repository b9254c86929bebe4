//! `python/process_lock.py`, the drop-in module for the desk's existing bots, driven
//! through real `python3` processes: the example bot (`python/example_bot.py`, shaped
//! like the bots the desk runs: `with ProcessLock(...)` around the whole body) under
//! master-launch, under `master-launch run`, and started by hand, against the Rust
//! tools' own view of the lock.
//!
//! Unix only: the module's Windows branch needs a Windows Python, which Wine does not
//! have here. That branch is cross-checked against lockcore's Windows code by
//! `windows_branch_locks_the_same_byte_range_as_lockcore`, which reads both files.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The number in `NAME = 0x4000_0000` (Python) or `const NAME: u32 = 0x4000_0000;` (Rust).
fn hex_constant(text: &str, name: &str, file: &str) -> u64 {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(name) || l.starts_with(&format!("const {name}:")))
        .unwrap_or_else(|| panic!("no {name} in {file}"));
    let value = line
        .split('=')
        .nth(1)
        .and_then(|v| v.split([';', '#']).next())
        .map(|v| v.trim().replace('_', ""))
        .unwrap_or_else(|| panic!("no value in `{line}` ({file})"));
    let digits = value
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("`{line}` is not hex ({file})"));
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("`{line}`: {e} ({file})"))
}

/// DESIGN.md rule 6 and 7 on Windows: the Python module must lock the very byte
/// lockcore locks, and open the file without delete sharing, or a bot started by hand
/// and a master-launch would not exclude each other there.
#[test]
fn windows_branch_locks_the_same_byte_range_as_lockcore() {
    if fleet_tests::wine::skip_under_wine(
        "windows_branch_locks_the_same_byte_range_as_lockcore",
        "reads the repository's sources, which are checked on the Linux run",
    ) {
        return;
    }
    let rust_file = "lockcore/src/os_file.rs";
    let python_file = "python/process_lock.py";
    let rust = std::fs::read_to_string(repo_file(rust_file)).unwrap();
    let python = std::fs::read_to_string(repo_file(python_file)).unwrap();

    assert_eq!(
        hex_constant(&python, "_LOCK_OFFSET_HIGH", python_file),
        hex_constant(&rust, "LOCK_OFFSET_HIGH", rust_file),
        "the Python module and lockcore lock different bytes on Windows"
    );
    assert!(
        rust.contains("overlapped.Anonymous.Anonymous.OffsetHigh = LOCK_OFFSET_HIGH"),
        "lockcore no longer puts LOCK_OFFSET_HIGH into OffsetHigh: update {python_file}"
    );
    assert!(
        python.contains("overlapped.OffsetHigh = _LOCK_OFFSET_HIGH")
            && python.contains("_LOCK_LENGTH = 1\n"),
        "{python_file} must lock one byte at OffsetHigh = _LOCK_OFFSET_HIGH"
    );
    // Both lock and unlock one byte (length low 1, high 0).
    assert!(
        rust.matches("0,\n                1,\n                0,")
            .count()
            == 1
            && rust.contains("UnlockFileEx(file.as_raw_handle(), 0, 1, 0, &mut overlapped)"),
        "lockcore's LockFileEx/UnlockFileEx no longer take one byte: update {python_file}"
    );
    assert!(
        python.contains("0, _LOCK_LENGTH, 0, ctypes.byref(overlapped)")
            && python
                .matches("_LOCK_LENGTH, 0, ctypes.byref(overlapped)")
                .count()
                == 2,
        "{python_file} must lock and unlock (_LOCK_LENGTH, 0) bytes"
    );

    // Share mode: read and write, never delete (rule 7), in both.
    assert!(
        rust.contains(".share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)")
            && !rust.contains("| FILE_SHARE_DELETE")
            && !rust.contains("FILE_SHARE_DELETE,"),
        "lockcore's share mode changed: update {python_file}"
    );
    assert_eq!(hex_constant(&python, "_FILE_SHARE_READ", python_file), 0x1);
    assert_eq!(hex_constant(&python, "_FILE_SHARE_WRITE", python_file), 0x2);
    assert!(
        python.contains("_SHARE_MODE = _FILE_SHARE_READ | _FILE_SHARE_WRITE")
            && !python.contains("FILE_SHARE_DELETE ="),
        "{python_file} must open lock files with read and write sharing only"
    );
    // Every CreateFileW passes that share mode; every lock fails at once.
    let opens: Vec<&str> = python.split("_k32.CreateFileW(").skip(1).collect();
    assert!(
        !opens.is_empty(),
        "{python_file} opens no file with CreateFileW"
    );
    for call in opens {
        // The share mode is the third argument: within the call's first lines.
        let arguments: String = call.lines().take(3).collect();
        assert!(
            arguments.contains("_SHARE_MODE"),
            "a CreateFileW in {python_file} without _SHARE_MODE: {arguments}"
        );
    }
    assert!(
        rust.contains("mode | LOCKFILE_FAIL_IMMEDIATELY")
            && python.contains(
                "_LOCKFILE_FAIL_IMMEDIATELY | (_LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0)"
            )
            && python.contains("_LOCKFILE_FAIL_IMMEDIATELY, _LOCKFILE_EXCLUSIVE_LOCK = 0x1, 0x2")
    );
}

#[cfg(unix)]
mod unix {
    use std::io::{Read, Write};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fleet_tests::{
        Barrier, Desk, ExitLog, Lines, Running, managed_pids, spawn_reader, tool, wait_gone,
        wait_until,
    };
    use lockcore::{Acquire, LockClaim, LockDir, LockState, ProcessProbe};

    use super::repo_file;

    /// `python3`: these tests need it, and fail rather than pass without running
    /// (`cargo xtask test` installs it).
    fn python3() -> Option<&'static str> {
        let found = Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "python3 is needed for these tests; `cargo xtask test` installs it"
        );
        Some("python3")
    }

    /// A desk of three example bots (global, watchdog, brain), each a copy of
    /// `python/example_bot.py` named after its lock, beside `process_lock.py`.
    fn python_desk(tag: &str) -> Desk {
        // Names of this run's own: two checkouts' suites at once never meet.
        let tag = fleet_tests::unique(tag);
        let dir = tempfile::tempdir().unwrap();
        let global = format!("qs_py_{}", tag.to_lowercase());
        let account = format!("PY{tag}");
        std::fs::copy(
            repo_file("python/process_lock.py"),
            dir.path().join("process_lock.py"),
        )
        .unwrap();
        let names = [
            global.clone(),
            format!("WATCHDOG_{account}"),
            format!("BRAIN_{account}"),
        ];
        for name in &names {
            std::fs::copy(
                repo_file("python/example_bot.py"),
                dir.path().join(format!("{name}.py")),
            )
            .unwrap();
        }
        let text = format!(
            "lock_dir = \".locks\"\nlog_dir = \"logs\"\n\n[vars]\npython = \"python3\"\n\n\
             [defaults]\nstop_timeout_secs = 5\n\n\
             [[global]]\nname = \"{global}\"\ncommand = [\"{{python}}\", \"{global}.py\"]\n\n\
             [[account]]\nname = \"{account}\"\nlogin = \"7{}\"\n\
             brain = [\"{{python}}\", \"BRAIN_{account}.py\"]\n\
             watchdog = [\"{{python}}\", \"WATCHDOG_{account}.py\"]\n",
            tag.len()
        );
        std::fs::write(dir.path().join("fleet.toml"), text).unwrap();
        Desk {
            dir,
            accounts: vec![account],
            global,
        }
    }

    fn brain(desk: &Desk) -> String {
        format!("BRAIN_{}", desk.accounts[0])
    }

    /// `python3 NAME.py` in the desk's folder, as a double-click would start it.
    fn bot_command(desk: &Desk, name: &str) -> Command {
        let mut command = Command::new("python3");
        command
            .arg(format!("{name}.py"))
            .current_dir(desk.dir.path())
            .env_remove("FLEET_LOCK_NAME")
            .env_remove("FLEET_LOCK_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    struct Bot {
        running: Running,
        lines: Lines,
    }

    fn start_bot(mut command: Command) -> Bot {
        let mut child = command.spawn().unwrap();
        let lines = spawn_reader(child.stdout.take().unwrap());
        Bot {
            running: Running::new(child),
            lines,
        }
    }

    impl Bot {
        fn wait_running(&self) {
            assert!(
                self.lines
                    .wait_for(": running, pid", Duration::from_secs(30))
                    .is_some(),
                "the bot did not start"
            );
        }
    }

    /// Runs to the end; returns the exit code, stdout and stderr.
    fn finish(mut child: Child) -> (i32, String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let code = child.wait().unwrap().code().unwrap_or(-1);
        (code, out, err)
    }

    fn check_procs_json(desk: &Desk) -> (i32, serde_json::Value) {
        let output = Command::new(tool("check-procs", "check-procs"))
            .arg("--config")
            .arg(desk.config())
            .arg("--json")
            .output()
            .unwrap();
        let document = serde_json::from_slice(&output.stdout).unwrap();
        (output.status.code().unwrap(), document)
    }

    fn component_state(document: &serde_json::Value, name: &str) -> String {
        document["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {document}"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn lock_state(desk: &Desk, name: &str) -> Option<LockState> {
        let mut probe = ProcessProbe::new().unwrap();
        LockDir::new(desk.lock_dir())
            .inspect(name, &mut probe)
            .unwrap()
            .map(|s| s.state)
    }

    fn master_launch(desk: &Desk) -> Command {
        let mut command = Command::new(tool("master-launch", "master-launch"));
        command.arg("--config").arg(desk.config());
        command
    }

    /// master-launch on a desk where it must refuse: its exit code and stderr. Should it
    /// start the desk instead, it is stopped and the test fails, rather than hang.
    fn refused_start(desk: &Desk) -> (Option<i32>, String) {
        let errors = desk.dir.path().join("master-launch.stderr");
        let mut child = master_launch(desk)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _running = Running::new(child); // killed with what it started
                let log = std::fs::read_to_string(desk.dir.path().join("logs/master-launch.log"))
                    .unwrap_or_default();
                panic!("master-launch did not refuse; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), std::fs::read_to_string(&errors).unwrap())
    }

    fn kill(pid: u32, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The example bot under `ready = "notify"` and `heartbeat_secs = 2`, through the
    /// real channel (on Linux a socket through each bot's reaper): each says ready (the
    /// brain starts only after its watchdog did) and keeps beating: nothing is hung or
    /// restarted, and check-procs sees recent heartbeats.
    #[test]
    fn under_master_launch_the_example_bots_say_ready_and_keep_beating() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("R");
        let config = std::fs::read_to_string(desk.config()).unwrap();
        let config = config.replace(
            "[defaults]\nstop_timeout_secs = 5\n",
            "[defaults]\nstop_timeout_secs = 5\nready = \"notify\"\nready_timeout_secs = 20\n\
             heartbeat_secs = 2\n",
        );
        assert!(config.contains("heartbeat_secs"), "{config}");
        std::fs::write(desk.config(), config).unwrap();
        let mut launcher = master_launch(&desk);
        launcher
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = launcher.spawn().unwrap();
        let lines = spawn_reader(child.stdout.take().unwrap());
        let launcher = Running::new(child);
        assert!(
            lines
                .wait_for("desk started", Duration::from_secs(60))
                .is_some()
        );
        desk.wait_until_running();
        let names = desk.component_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let first = managed_pids(&desk.snapshot(), &names);
        // Twice the heartbeat: a bot that did not beat would be hung by now.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(
            managed_pids(&desk.snapshot(), &names),
            first,
            "a bot was restarted"
        );
        let log = std::fs::read_to_string(desk.dir.path().join("logs/master-launch.log")).unwrap();
        let watchdog = format!("WATCHDOG_{}", desk.accounts[0]);
        let ready = log
            .find(&format!("{watchdog}: ready (pid "))
            .unwrap_or_else(|| panic!("the watchdog never said ready: {log}"));
        let brain_started = log.find(&format!("{}: started", brain(&desk))).unwrap();
        assert!(ready < brain_started, "{log}");
        assert!(!log.contains("HUNG") && !log.contains("exited"), "{log}");
        let (code, document) = check_procs_json(&desk);
        assert_eq!(code, 0, "{document}");
        for name in &names {
            assert_eq!(component_state(&document, name), "running", "{name}");
            let entry = document["components"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == *name)
                .unwrap();
            let age = entry["heartbeat_age_secs"].as_f64();
            assert!(age.is_some_and(|a| a < 2.5), "{name}: {entry}");
        }
        drop(launcher);
    }

    /// The seed's Step 2 bot under master-launch: every component runs and stays up
    /// (no restart: the same pids, nothing in the log about exits), check-procs is
    /// healthy, and safe-shutdown stops brain, watchdog, global in that order.
    #[test]
    fn under_master_launch_the_bots_run_stay_up_and_stop_in_order() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("ML");
        let exits = ExitLog::new();
        let mut launcher = master_launch(&desk);
        launcher
            .env("EXAMPLE_BOT_EXIT_LOG", &exits.arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = launcher.spawn().unwrap();
        let lines = spawn_reader(child.stdout.take().unwrap());
        let mut launcher = Running::new(child);
        assert!(
            lines
                .wait_for("desk started", Duration::from_secs(30))
                .is_some()
        );
        desk.wait_until_running();
        let names = desk.component_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let first = managed_pids(&desk.snapshot(), &names);

        // Longer than the module's wait for its record (3 s): a bot that could not
        // confirm its lock would have exited and been restarted by now.
        std::thread::sleep(Duration::from_secs(4));
        let snap = desk.snapshot();
        assert_eq!(managed_pids(&snap, &names), first, "a bot was restarted");
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let events =
            std::fs::read_to_string(desk.dir.path().join("logs/master-launch.log")).unwrap();
        assert!(
            !events.contains("exited") && !events.contains("restarting"),
            "{events}"
        );
        let brain_log =
            std::fs::read_to_string(desk.dir.path().join(format!("logs/{}.log", brain(&desk))))
                .unwrap();
        assert!(brain_log.contains(": running, pid"), "{brain_log}");
        assert!(!brain_log.contains("LOCK FAILURE"), "{brain_log}");

        let (code, document) = check_procs_json(&desk);
        assert_eq!(code, 0, "{document}");
        for name in &names {
            assert_eq!(component_state(&document, name), "running", "{name}");
        }

        let output = Command::new(tool("safe-shutdown", "safe-shutdown"))
            .arg("--config")
            .arg(desk.config())
            .args(["--yes", "--timeout", "10"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        wait_gone(&first);
        let order: Vec<String> = exits.times().into_iter().map(|(name, _)| name).collect();
        assert_eq!(order, [names[2], names[1], names[0]], "stop order");
        let deadline = Instant::now() + Duration::from_secs(30);
        while launcher.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "master-launch did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        desk.assert_no_lock_left("after safe-shutdown");
    }

    /// `master-launch run NAME` holds the lock for the bot the same way; Ctrl+C (here
    /// SIGINT) stops it and the runner removes the lock.
    #[test]
    fn under_master_launch_run_the_bot_runs_and_stops() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("RUN");
        // A brain alone (its account says so): this is about `run`, not rule 13.
        desk.allow_brains_alone();
        let name = brain(&desk);
        let mut command = master_launch(&desk);
        command
            .args(["run", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let bot = start_bot(command);
        bot.wait_running();
        std::thread::sleep(Duration::from_secs(4)); // past the module's wait
        let snap = desk.snapshot();
        let view = snap.component(&name).unwrap();
        assert_eq!(view.lock.as_ref().unwrap().state, LockState::Running);
        let record = view.lock.as_ref().unwrap().record.clone().unwrap();
        assert_eq!(
            record.holder_pid,
            Some(bot.running.pid()),
            "the runner holds it"
        );
        assert!(view.copies.len() == 1 && view.copies[0].locked, "{view:?}");
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let mut bot = bot;
        kill(bot.running.pid(), "-INT");
        let status = bot.running.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(
            bot.lines
                .wait_for("stopped cleanly", Duration::from_secs(1))
                .is_some()
        );
        desk.assert_no_lock_left("after the runner stopped");
    }

    /// Two copies started by hand at the same instant, 50 rounds: exactly one runs,
    /// the other says `LOCK FAILURE` (the desk's bots' own wording) and exits 1.
    #[test]
    fn two_copies_started_by_hand_at_once_exactly_one_runs_50_rounds() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("RACE");
        let name = brain(&desk);
        // Both wait for the barrier inside python, then run the bot as a script would.
        let start_at = |go: &Barrier| {
            let mut command = Command::new("python3");
            command
                .arg("-c")
                .arg(
                    "import os, runpy, sys, time\n\
                     go, bot = sys.argv[1], sys.argv[2]\n\
                     while not os.path.exists(go): time.sleep(0.0002)\n\
                     sys.argv = [bot]\n\
                     runpy.run_path(bot, run_name='__main__')\n",
                )
                .arg(&go.path)
                .arg(format!("{name}.py"))
                .current_dir(desk.dir.path())
                .env_remove("FLEET_LOCK_NAME")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            start_bot(command)
        };
        for round in 0..50 {
            let go = Barrier::new(desk.dir.path(), &format!("go{round}"));
            let mut bots = [start_at(&go), start_at(&go)];
            go.release();
            // The loser exits at once; the winner runs until stopped.
            let deadline = Instant::now() + Duration::from_secs(30);
            let loser = loop {
                if let Some(i) =
                    (0..2).find(|&i| bots[i].running.child.try_wait().unwrap().is_some())
                {
                    break i;
                }
                assert!(Instant::now() < deadline, "round {round}: both still run");
                std::thread::sleep(Duration::from_millis(5));
            };
            let winner = 1 - loser;
            bots[winner].wait_running();
            let loser_output = std::mem::replace(&mut bots[loser].lines, spawn_reader(&b""[..]));
            let loser_lines = loser_output.collect();
            assert_eq!(
                bots[loser].running.child.wait().unwrap().code(),
                Some(1),
                "round {round}: {loser_lines:?}"
            );
            assert!(
                loser_lines.iter().any(|l| l.starts_with(&format!(
                    "LOCK FAILURE: Process lock '{name}' is held by PID {}.",
                    bots[winner].running.pid()
                ))) && !loser_lines.iter().any(|l| l.contains("running")),
                "round {round}: {loser_lines:?}"
            );
            assert!(
                bots[winner].running.child.try_wait().unwrap().is_none(),
                "round {round}: the winner stopped"
            );
            // Alternate a clean stop (the file is removed) and a crash (it is left stale).
            if round % 2 == 0 {
                kill(bots[winner].running.pid(), "-TERM");
                assert_eq!(bots[winner].running.child.wait().unwrap().code(), Some(0));
                assert!(desk.lock_files().is_empty(), "round {round}");
            } else {
                bots[winner].running.kill();
                assert_eq!(lock_state(&desk, &name), Some(LockState::Stale));
            }
        }
    }

    /// While a hand-started bot runs, the tools see it as the lock's holder: check-procs
    /// says `running` (not `unlocked`, not `legacy`), master-launch refuses naming it.
    /// Killed with SIGKILL, it leaves nothing that blocks: the next start runs at once.
    #[test]
    fn a_hand_started_bot_is_what_the_tools_see_and_sigkill_frees_it_at_once() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("HAND");
        // A brain alone (its account says so): this is about the lock, not rule 13.
        desk.allow_brains_alone();
        let name = brain(&desk);
        let mut bot = start_bot(bot_command(&desk, &name));
        bot.wait_running();

        let (code, document) = check_procs_json(&desk);
        assert_eq!(code, 0, "{document}");
        assert_eq!(component_state(&document, &name), "running");
        let snap = desk.snapshot();
        let view = snap.component(&name).unwrap();
        let lock = view.lock.as_ref().unwrap();
        assert_eq!(lock.state, LockState::Running);
        let record = lock.record.as_ref().unwrap();
        assert!(!record.is_legacy());
        assert_eq!(record.pid, bot.running.pid());
        assert_eq!(record.holder_pid, Some(bot.running.pid()));
        assert_eq!(record.account.as_deref(), Some(&*desk.accounts[0]));
        assert_eq!(view.managed.as_ref().unwrap().pid, bot.running.pid());
        assert!(view.holder_alive);
        assert!(view.copies.len() == 1 && view.copies[0].locked, "{view:?}");
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);

        let (code, text) = refused_start(&desk);
        assert_eq!(code, Some(3), "{text}");
        assert!(
            text.contains(&name) && text.contains(&bot.running.pid().to_string()),
            "{text}"
        );
        assert_eq!(
            desk.snapshot()
                .components
                .iter()
                .map(|v| v.copies.len())
                .sum::<usize>(),
            1
        );

        // lock-gc leaves it alone.
        let gc = Command::new(tool("lock-gc", "lock-gc"))
            .arg("--config")
            .arg(desk.config())
            .output()
            .unwrap();
        assert_eq!(gc.status.code(), Some(0));
        assert_eq!(lock_state(&desk, &name), Some(LockState::Running));

        bot.running.kill(); // SIGKILL, reaped
        let started = Instant::now();
        let next = start_bot(bot_command(&desk, &name));
        next.wait_running();
        assert!(started.elapsed() < Duration::from_secs(10));
        let record = desk
            .snapshot()
            .component(&name)
            .unwrap()
            .lock
            .clone()
            .unwrap();
        assert_eq!(record.state, LockState::Running);
        assert_eq!(record.record.unwrap().pid, next.running.pid());
    }

    /// A record the former module left (a live python pid, an older timestamp, no
    /// holder fields) holds the lock, as the Rust tools read it (DESIGN.md rule 5): the
    /// bot refuses and the file is left as it was; master-launch refuses too.
    #[test]
    fn a_former_modules_record_naming_a_live_older_process_is_held() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("LEG");
        let name = brain(&desk);
        std::fs::create_dir_all(desk.lock_dir()).unwrap();
        let path = desk.lock_path(&name);
        // A python process writes the record as the former module did, and stays. Its
        // timestamp is a second after its start, as the former module's would be.
        let script = format!(
            "import datetime, json, os, sys, time\n\
             time.sleep(1.1)\n\
             data = {{'pid': os.getpid(), 'name': {name:?}, 'account': '212000584',\n\
                     'timestamp': datetime.datetime.now().isoformat()}}\n\
             open(sys.argv[1], 'w').write(json.dumps(data, indent=2))\n\
             print('written', flush=True)\n\
             time.sleep(120)\n"
        );
        let mut old = Command::new("python3");
        old.arg("-c")
            .arg(script)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let old = start_bot(old);
        assert!(
            old.lines
                .wait_for("written", Duration::from_secs(30))
                .is_some()
        );
        let before = std::fs::read(&path).unwrap();
        assert_eq!(lock_state(&desk, &name), Some(LockState::Legacy));

        let (code, out, err) = finish(bot_command(&desk, &name).spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.contains(&format!(
                "LOCK FAILURE: Process lock '{name}' is held by PID {}.",
                old.running.pid()
            )),
            "{out}{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the record was touched"
        );
        assert_eq!(lock_state(&desk, &name), Some(LockState::Legacy));
        // master-launch refuses on it too, naming it legacy.
        let (code, text) = refused_start(&desk);
        assert_eq!(code, Some(3), "{text}");
        assert!(text.contains(&name), "{text}");
    }

    /// The same record naming a process that started after its timestamp is a reused
    /// pid: stale for the tools, and the bot takes the lock over.
    #[test]
    fn a_former_modules_record_naming_a_reused_pid_is_taken_over() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("REUSE");
        let name = brain(&desk);
        std::fs::create_dir_all(desk.lock_dir()).unwrap();
        let path = desk.lock_path(&name);
        let script = format!(
            "import datetime, json, os, sys, time\n\
             data = {{'pid': os.getpid(), 'name': {name:?}, 'account': '212000584',\n\
                     'timestamp': (datetime.datetime.now() - datetime.timedelta(days=2)).isoformat()}}\n\
             open(sys.argv[1], 'w').write(json.dumps(data, indent=2))\n\
             print('written', flush=True)\n\
             time.sleep(120)\n"
        );
        let mut old = Command::new("python3");
        old.arg("-c")
            .arg(script)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let old = start_bot(old);
        assert!(
            old.lines
                .wait_for("written", Duration::from_secs(30))
                .is_some()
        );
        assert_eq!(lock_state(&desk, &name), Some(LockState::Stale));

        let bot = start_bot(bot_command(&desk, &name));
        bot.wait_running();
        let status = desk
            .snapshot()
            .component(&name)
            .unwrap()
            .lock
            .clone()
            .unwrap();
        assert_eq!(status.state, LockState::Running);
        assert_eq!(status.record.unwrap().pid, bot.running.pid());
        drop(old);
    }

    /// A bot started under another component's name (FLEET_LOCK_NAME differs from the
    /// name it asks for) refuses with a message that says so, and touches no file.
    #[test]
    fn a_bot_started_under_another_components_name_says_so() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("MIS");
        let name = brain(&desk);
        let other = format!("WATCHDOG_{}", desk.accounts[0]);
        let mut command = bot_command(&desk, &name);
        command
            .env("FLEET_LOCK_NAME", &other)
            .env("FLEET_LOCK_FILE", desk.lock_path(&other));
        let (code, out, err) = finish(command.spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.starts_with("LOCK FAILURE: this process was started under the lock ")
                && out.contains(&format!("{other} (FLEET_LOCK_NAME)"))
                && out.contains(&format!("asks for the lock {name}")),
            "{out}{err}"
        );
        assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
    }

    /// master-launch writes the child's pid into the record just after starting it:
    /// a bot that looks first must wait for it, not give up. Here the test holds the
    /// lock the way master-launch does and records the bot only a second later.
    #[test]
    fn a_managed_bot_waits_for_its_launcher_to_record_it() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("LATE");
        let name = brain(&desk);
        let mut probe = ProcessProbe::new().unwrap();
        let claim = LockClaim {
            account: Some(desk.accounts[0].clone()),
            command: vec!["test".into()],
        };
        let Acquire::Acquired(mut held) = LockDir::new(desk.lock_dir())
            .acquire(&name, &claim, &mut probe)
            .unwrap()
        else {
            panic!("the test could not take {name}");
        };
        let mut command = bot_command(&desk, &name);
        command
            .env("FLEET_LOCK_NAME", &name)
            .env("FLEET_LOCK_FILE", held.path());
        let bot = start_bot(command);
        std::thread::sleep(Duration::from_secs(1));
        let identity = probe.identity(bot.running.pid()).unwrap();
        held.set_managed(identity, vec!["python3".into(), format!("{name}.py")])
            .unwrap();
        bot.wait_running();
        let before = std::fs::read(held.path()).unwrap();
        let mut bot = bot;
        kill(bot.running.pid(), "-TERM");
        assert_eq!(bot.running.child.wait().unwrap().code(), Some(0));
        // Its release left the holder's file alone.
        assert_eq!(std::fs::read(held.path()).unwrap(), before);
        held.verify().unwrap();

        // A record that never names the bot: it gives up after its wait, and says why.
        let mut command = bot_command(&desk, &name);
        command
            .env("FLEET_LOCK_NAME", &name)
            .env("FLEET_LOCK_FILE", held.path());
        let started = Instant::now();
        let (code, out, err) = finish(command.spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "it did not wait"
        );
        assert!(
            out.starts_with("LOCK FAILURE: FLEET_LOCK_NAME says a launcher holds")
                && out.contains(&format!("names pid {}", identity.pid)),
            "{out}{err}"
        );
        assert_eq!(std::fs::read(held.path()).unwrap(), before);
        held.release().unwrap();

        // The file exists but nobody holds it (a launcher that died): refused too.
        std::fs::write(desk.lock_path(&name), &before).unwrap();
        let mut command = bot_command(&desk, &name);
        command
            .env("FLEET_LOCK_NAME", &name)
            .env("FLEET_LOCK_FILE", desk.lock_path(&name));
        let (code, out, _) = finish(command.spawn().unwrap());
        assert_eq!(code, 1, "{out}");
        assert!(out.starts_with("LOCK FAILURE: "), "{out}");
    }

    /// DESIGN.md rule 7 on Linux: anyone can unlink a held lock's file, so the bot
    /// checks every few seconds and says so loudly on stderr.
    #[test]
    fn a_hand_started_bot_reports_its_lock_file_deleted() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("DEL");
        let name = brain(&desk);
        let mut child = bot_command(&desk, &name).spawn().unwrap();
        let errors = spawn_reader(child.stderr.take().unwrap());
        let bot = Bot {
            lines: spawn_reader(child.stdout.take().unwrap()),
            running: Running::new(child),
        };
        bot.wait_running();
        std::fs::remove_file(desk.lock_path(&name)).unwrap();
        let warning = errors
            .wait_for("WARNING: lock file", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no warning"));
        assert!(
            warning.contains(&format!("was deleted or replaced while {name} held it")),
            "{warning}"
        );
    }

    /// The older module's API without `with`: `acquire()` is True once and False for a
    /// second lock object (even in the same process), `get_lock_info()` shows the
    /// record, `release()` frees it; a numeric account is recorded as text, which the
    /// tools can read.
    #[test]
    fn acquire_release_and_get_lock_info_keep_the_older_api() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("API");
        let name = brain(&desk);
        let script = format!(
            "import os, sys, time\n\
             from process_lock import LOCK_DIR, ProcessLock\n\
             first = ProcessLock({name:?}, account=212000584)\n\
             second = ProcessLock({name:?})\n\
             print('first', first.acquire(), first.acquire(), flush=True)\n\
             print('second', second.acquire(), flush=True)\n\
             info = second.get_lock_info()\n\
             print('info', info['pid'] == os.getpid(), info['account'], flush=True)\n\
             print('dir', LOCK_DIR == second.lock_file.parent, flush=True)\n\
             sys.stdin.readline()\n\
             first.release()\n\
             print('after', second.get_lock_info(), second.acquire(), flush=True)\n\
             second.release()\n"
        );
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(script)
            .current_dir(desk.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let lines = spawn_reader(child.stdout.take().unwrap());
        let child = Running::new(child);
        let want = |needle: &str| {
            lines
                .wait_for(needle, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("no `{needle}`"))
        };
        assert_eq!(want("first"), "first True True");
        assert_eq!(want("second"), "second False");
        assert_eq!(want("info"), "info True 212000584");
        assert_eq!(want("dir"), "dir True");
        let snap = desk.snapshot();
        let lock = snap.component(&name).unwrap().lock.clone().unwrap();
        assert_eq!(lock.state, LockState::Running);
        let record = lock.record.unwrap();
        assert_eq!(record.account.as_deref(), Some("212000584"));
        assert_eq!(record.pid, child.pid());
        stdin.write_all(b"\n").unwrap();
        assert_eq!(want("after"), "after None True");
        let mut child = child;
        assert_eq!(child.child.wait().unwrap().code(), Some(0));
        assert!(desk.lock_files().is_empty(), "{:?}", desk.lock_files());
    }

    /// A bot started by hand and a Rust tool (lockcore, as `lock-taker`) race for the
    /// same lock: exactly one wins each round, so they take the same OS lock.
    #[test]
    fn a_hand_started_bot_and_a_rust_tool_exclude_each_other() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("MIX");
        let name = brain(&desk);
        for round in 0..20 {
            let go = Barrier::new(desk.dir.path(), &format!("go{round}"));
            let release = Barrier::new(desk.dir.path(), &format!("release{round}"));
            let mut taker = Command::new(tool("fleet-tests", "lock-taker"));
            taker
                .arg("race")
                .arg(desk.lock_dir())
                .arg(&name)
                .arg(&go.path)
                .arg(&release.path)
                .stdout(Stdio::piped());
            let taker = start_bot(taker);
            assert!(
                taker
                    .lines
                    .wait_for("ready", Duration::from_secs(30))
                    .is_some()
            );
            let mut command = Command::new("python3");
            command
                .arg("-c")
                .arg(
                    "import os, runpy, sys, time\n\
                     go, bot = sys.argv[1], sys.argv[2]\n\
                     while not os.path.exists(go): time.sleep(0.0002)\n\
                     sys.argv = [bot]\n\
                     runpy.run_path(bot, run_name='__main__')\n",
                )
                .arg(&go.path)
                .arg(format!("{name}.py"))
                .current_dir(desk.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
            let mut bot = start_bot(command);
            go.release();
            let outcome = taker
                .lines
                .wait_for("outcome", Duration::from_secs(30))
                .unwrap();
            if outcome.contains("acquired") {
                let (code, out) = {
                    let status = bot.running.child.wait().unwrap();
                    let lines = std::mem::replace(&mut bot.lines, spawn_reader(&b""[..]));
                    (status.code(), lines.collect().join("\n"))
                };
                assert_eq!(code, Some(1), "round {round}: {out}");
                assert!(out.starts_with("LOCK FAILURE: "), "round {round}: {out}");
                release.release();
            } else {
                bot.wait_running();
                release.release();
                kill(bot.running.pid(), "-TERM");
                assert_eq!(bot.running.child.wait().unwrap().code(), Some(0));
            }
            let mut taker = taker;
            taker.running.child.wait().unwrap();
            wait_until("the lock to be free", || {
                lock_state(&desk, &name).is_none_or(|s| !s.is_held())
            });
        }
    }

    /// Hostile lock paths: a symlink is not followed, a hard link is refused, a FIFO
    /// does not hang the bot, garbage is overwritten.
    #[test]
    fn a_symlink_fifo_or_garbage_at_the_lock_path_does_no_harm() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("ODD");
        let name = brain(&desk);
        std::fs::create_dir_all(desk.lock_dir()).unwrap();
        let target = desk.dir.path().join("elsewhere.txt");
        std::fs::write(&target, b"keep me").unwrap();
        std::os::unix::fs::symlink(&target, desk.lock_path(&name)).unwrap();
        let (code, out, err) = finish(bot_command(&desk, &name).spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("is a symbolic link"), "{out}{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        // A hard link: a regular file with another name, which a record would overwrite.
        std::fs::remove_file(desk.lock_path(&name)).unwrap();
        std::fs::hard_link(&target, desk.lock_path(&name)).unwrap();
        let (code, out, err) = finish(bot_command(&desk, &name).spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("a hard link"), "{out}{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        std::fs::remove_file(desk.lock_path(&name)).unwrap();
        let made = Command::new("mkfifo")
            .arg(desk.lock_path(&name))
            .status()
            .unwrap();
        assert!(made.success());
        let (code, out, err) = finish(bot_command(&desk, &name).spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("is not a regular file"), "{out}{err}");
        // Named as the launcher's lock file, it is not read (which would block) either.
        let mut command = bot_command(&desk, &name);
        command
            .env("FLEET_LOCK_NAME", &name)
            .env("FLEET_LOCK_FILE", desk.lock_path(&name));
        let (code, out, err) = finish(command.spawn().unwrap());
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("is missing or unreadable"), "{out}{err}");

        // A corrupt record (absurdly nested JSON) holds nothing: the bot takes over.
        std::fs::remove_file(desk.lock_path(&name)).unwrap();
        std::fs::write(desk.lock_path(&name), "[".repeat(200_000)).unwrap();
        let bot = start_bot(bot_command(&desk, &name));
        bot.wait_running();
        let status = desk
            .snapshot()
            .component(&name)
            .unwrap()
            .lock
            .clone()
            .unwrap();
        assert_eq!(status.state, LockState::Running);
        assert_eq!(status.record.unwrap().pid, bot.running.pid());
    }

    /// master-launch on `desk`, once every component runs; killed (with its bots) when
    /// dropped.
    fn start_desk(desk: &Desk) -> (Running, Lines) {
        let mut child = master_launch(desk)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = spawn_reader(child.stdout.take().unwrap());
        let launcher = Running::new(child);
        assert!(
            lines
                .wait_for("desk started", Duration::from_secs(30))
                .is_some()
        );
        desk.wait_until_running();
        (launcher, lines)
    }

    /// `master-launch ARGS` on a desk where it must refuse: its exit code and stderr,
    /// or a failed test (never a hang) should it start something.
    fn refused_with(desk: &Desk, args: &[&str]) -> (Option<i32>, String) {
        let errors = tempfile::NamedTempFile::new().unwrap();
        let mut child = master_launch(desk)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.reopen().unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _running = Running::new(child); // killed with what it started
                panic!("master-launch {args:?} did not refuse");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status.code(),
            std::fs::read_to_string(errors.path()).unwrap(),
        )
    }

    /// A bot expected to refuse at once: its exit code, stdout and stderr. One that
    /// runs instead (took the lock) is killed after 30 s and the test fails, not hangs.
    fn finish_refused(mut command: Command) -> (i32, String, String) {
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let running = Running::new(child);
                drop(running); // killed
                panic!("the bot did not refuse: it took the lock and runs");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        finish(child)
    }

    /// DESIGN.md rule 17: a bot started by hand takes the very machine-wide name the
    /// desk tools take, for short and long lock names alike.
    #[test]
    fn the_module_takes_the_machine_wide_names_lockcore_takes() {
        if python3().is_none() {
            return;
        }
        let names = [
            "BRAIN_ATLAS".to_string(),
            "quantum_server".to_string(),
            format!("WATCHDOG_{}", "X".repeat(75)),
            format!("WATCHDOG_{}", "Y".repeat(91)),
        ];
        let output = Command::new("python3")
            .arg("-c")
            .arg(
                "import sys; sys.path.insert(0, sys.argv[1]); import process_lock; \
                 print('\\n'.join(process_lock._machine_name(n) for n in sys.argv[2:]))",
            )
            .arg(repo_file("python"))
            .args(&names)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let python: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let rust: Vec<String> = names
            .iter()
            .map(|n| lockcore::lock::machine_name(n))
            .collect();
        assert_eq!(python, rust);
        assert!(rust.iter().all(|n| n.len() <= 100), "{rust:?}");
    }

    /// A copy of the desk's folder (`cp -r`) shares its lock names but not its lock
    /// folder. DESIGN.md rule 17: while the first desk runs, the copy cannot start a
    /// second brain of the account: not by hand through process_lock.py (which once
    /// took the copy's unheld lock file and traded beside the managed brain), not with
    /// `master-launch run`, not with master-launch.
    #[test]
    fn a_copied_desk_folder_cannot_start_a_second_brain_of_the_account() {
        if python3().is_none() {
            return;
        }
        // Unique to this run: a copy is recognised machine-wide.
        let desk = python_desk("CP");
        let name = brain(&desk);
        let (launcher, _lines) = start_desk(&desk);
        let copy = Desk {
            dir: tempfile::tempdir().unwrap(),
            accounts: desk.accounts.clone(),
            global: desk.global.clone(),
        };
        let copied = Command::new("cp")
            .arg("-r")
            .arg(desk.dir.path().join("."))
            .arg(copy.dir.path())
            .status()
            .unwrap();
        assert!(copied.success());
        assert!(
            copy.lock_path(&name).exists(),
            "cp -r copied the lock files too"
        );

        let (code, out, err) = finish_refused(bot_command(&copy, &name));
        assert_eq!(code, 1, "a second brain ran from the copy: {out}{err}");
        assert!(
            out.contains(&format!(
                "LOCK FAILURE: Process lock '{name}' is held by PID {} on this machine",
                launcher.pid()
            )) && out.contains("copy of the desk folder"),
            "{out}{err}"
        );

        let (code, text) = refused_with(&copy, &["run", &name]);
        assert_eq!(code, Some(3), "{text}");
        assert!(
            text.contains(&format!(
                "{name} is held on this machine by pid {}",
                launcher.pid()
            )) && text.contains("copied desk folder"),
            "{text}"
        );
        let (code, text) = refused_with(&copy, &[]);
        assert_eq!(code, Some(3), "{text}");
        assert!(
            text.contains(&name) || text.contains(&desk.global),
            "{text}"
        );

        // One brain on the machine, the first desk's, still under its lock.
        let snap = desk.snapshot();
        let view = snap.component(&name).unwrap();
        assert_eq!(view.copies.len(), 1, "{:?}", view.copies);
        assert!(view.managed.is_some());
        drop(launcher);
    }

    /// The lock folder deleted while master-launch runs (`rm -r .locks`): a bot started
    /// by hand is still refused (the machine-wide names are held), and master-launch
    /// puts the folder and every held lock file back, recorded as before, saying so
    /// loudly; check-procs shows the desk `running` again.
    #[test]
    fn a_deleted_lock_folder_is_put_back_and_a_hand_started_brain_stays_refused() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("RM");
        let name = brain(&desk);
        let (launcher, _lines) = start_desk(&desk);
        let names = desk.component_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let pids = managed_pids(&desk.snapshot(), &names);

        std::fs::remove_dir_all(desk.lock_dir()).unwrap();
        let (code, out, err) = finish_refused(bot_command(&desk, &name));
        assert_eq!(code, 1, "a second brain ran: {out}{err}");
        assert!(
            out.contains(&format!(
                "LOCK FAILURE: Process lock '{name}' is held by PID"
            )),
            "{out}{err}"
        );

        wait_until("every lock to be taken again", || {
            let log = desk.master_log();
            names
                .iter()
                .chain(&["MASTER_LAUNCH"])
                .all(|n| log.contains(&format!("{n}: lock taken again")))
        });
        // (Whether the folder was still missing then depends on who came first: the
        // hand-started bot's module creates it at import, as the former one did.)
        let log = desk.master_log();
        assert!(
            log.contains("LOCK LOST") && log.contains("machine-wide lock stayed held"),
            "{log}"
        );
        let (code, document) = check_procs_json(&desk);
        assert_eq!(code, 0, "{document}");
        for name in &names {
            assert_eq!(component_state(&document, name), "running", "{name}");
        }
        // Recorded as before: the same bots, nothing restarted.
        assert_eq!(managed_pids(&desk.snapshot(), &names), pids);
        let master = desk.snapshot().master.unwrap();
        assert_eq!(master.state, LockState::Running);
        assert_eq!(master.record.unwrap().pid, launcher.pid());

        // And by hand, after the repair: refused, naming the managed brain.
        let (code, out, err) = finish_refused(bot_command(&desk, &name));
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.contains(&format!(
                "LOCK FAILURE: Process lock '{name}' is held by PID {}.",
                pids[2]
            )),
            "{out}{err}"
        );
        drop(launcher);
    }

    /// DESIGN.md rule 5: the former module wrote local time with no zone. A record
    /// written by a bot in New York, read by tools running under UTC (where its naive
    /// time looks five hours older than the bot), is held while its bot runs, as it is
    /// under New York time: process_lock.py refuses, check-procs says `legacy`, lock-gc
    /// keeps it. Each tool runs with the zone in its environment.
    #[test]
    fn a_legacy_record_written_in_new_york_is_held_under_any_zone() {
        if python3().is_none() {
            return;
        }
        let desk = python_desk("NY");
        let name = brain(&desk);
        std::fs::create_dir_all(desk.lock_dir()).unwrap();
        let path = desk.lock_path(&name);
        let script = format!(
            "import datetime, json, os, sys, time\n\
             time.sleep(1.1)\n\
             data = {{'pid': os.getpid(), 'name': {name:?}, 'account': '212000584',\n\
                     'timestamp': datetime.datetime.now().isoformat()}}\n\
             open(sys.argv[1], 'w').write(json.dumps(data, indent=2))\n\
             print('written', data['timestamp'], flush=True)\n\
             time.sleep(120)\n"
        );
        let mut old = Command::new("python3");
        old.arg("-c")
            .arg(script)
            .arg(&path)
            .env("TZ", "America/New_York")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let old = start_bot(old);
        let written = old
            .lines
            .wait_for("written", Duration::from_secs(30))
            .expect("the old bot wrote its record");
        let before = std::fs::read(&path).unwrap();
        for zone in ["UTC", "America/New_York"] {
            let mut bot = bot_command(&desk, &name);
            bot.env("TZ", zone);
            let (code, out, err) = finish_refused(bot);
            assert_eq!(code, 1, "TZ={zone}, {written}: {out}{err}");
            assert!(
                out.contains(&format!(
                    "LOCK FAILURE: Process lock '{name}' is held by PID {}.",
                    old.running.pid()
                )),
                "TZ={zone}: {out}{err}"
            );

            let output = Command::new(tool("check-procs", "check-procs"))
                .arg("--config")
                .arg(desk.config())
                .arg("--json")
                .env("TZ", zone)
                .output()
                .unwrap();
            let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let lock = document["locks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{name} missing: {document}"));
            assert_eq!(lock["state"], "legacy", "TZ={zone}, {written}: {lock}");

            let output = Command::new(tool("lock-gc", "lock-gc"))
                .arg("--config")
                .arg(desk.config())
                .env("TZ", zone)
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            assert_eq!(
                std::fs::read(&path).ok().as_deref(),
                Some(&before[..]),
                "TZ={zone}: lock-gc removed or changed a live legacy lock: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }

    // --- readiness and heartbeats: the notify channel (DESK_NOTIFY=fd:<n>) ----------

    /// Plays master-launch's side in Python: a socketpair, the bot's end non-blocking
    /// and handed to the child as `DESK_NOTIFY=fd:<n>`. `argv`: MODE COMMAND...; MODE
    /// `read` reads after the child ends, `closed` closes the reader first (EPIPE),
    /// `bot` reads `ready` and three `alive`, then stops the child with SIGTERM. Writes
    /// what came to `received`; prints the child's exit code, output and time as JSON.
    const NOTIFY_DRIVER: &str = r#"
import json, os, signal, socket, subprocess, sys, time
mode, command = sys.argv[1], sys.argv[2:]
mine, theirs = socket.socketpair()
theirs.setblocking(False)
fd = theirs.fileno()
if mode == "closed":
    mine.close()
started = time.monotonic()
child = subprocess.Popen(command, env=dict(os.environ, DESK_NOTIFY=f"fd:{fd}"),
                         pass_fds=[fd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
theirs.close()
received = b""
if mode == "bot":
    mine.settimeout(30)
    while received.count(b"alive\n") < 3:
        chunk = mine.recv(65536)
        if not chunk:
            break
        received += chunk
    child.send_signal(signal.SIGTERM)
out, err = child.communicate(timeout=60)
secs = time.monotonic() - started
if mode != "closed":
    mine.settimeout(30)
    while True:
        chunk = mine.recv(65536)
        if not chunk:
            break
        received += chunk
open("received", "wb").write(received)
print(json.dumps({"code": child.returncode, "out": out.decode(), "err": err.decode(),
                  "secs": secs}))
"#;

    /// A folder with a copy of `process_lock.py`, for Python run in it.
    fn notify_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_file("python/process_lock.py"),
            dir.path().join("process_lock.py"),
        )
        .unwrap();
        dir
    }

    struct Notified {
        code: i64,
        out: String,
        err: String,
        secs: f64,
        /// What came through the channel.
        received: Vec<u8>,
    }

    /// NOTIFY_DRIVER in `dir` with MODE and the child's command line.
    fn drive(dir: &std::path::Path, mode: &str, child: &[&str]) -> Notified {
        let output = Command::new("python3")
            .arg("-c")
            .arg(NOTIFY_DRIVER)
            .arg(mode)
            .args(child)
            .current_dir(dir)
            .env_remove("DESK_NOTIFY")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the driver failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        Notified {
            code: report["code"].as_i64().unwrap(),
            out: report["out"].as_str().unwrap().to_string(),
            err: report["err"].as_str().unwrap().to_string(),
            secs: report["secs"].as_f64().unwrap(),
            received: std::fs::read(dir.join("received")).unwrap(),
        }
    }

    /// The received bytes as lines, each checked against the protocol: UTF-8, ending
    /// in a newline, at most 512 bytes with it.
    fn protocol_lines(received: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(received).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "a line cut short: {text:?}"
        );
        text.split_inclusive('\n')
            .map(|line| {
                assert!(line.len() <= 512, "{} bytes: {line:?}", line.len());
                line.trim_end_matches('\n').to_string()
            })
            .collect()
    }

    /// ready(), heartbeat() (also from a forked child) and not_ready() reach
    /// master-launch as the protocol's lines: a reason made one line, cut on a character
    /// boundary to 512 bytes with the newline.
    #[test]
    fn notify_calls_write_the_protocols_lines_to_the_channel() {
        if python3().is_none() {
            return;
        }
        let dir = notify_dir();
        let child = "import os\n\
                     from process_lock import heartbeat, not_ready, ready\n\
                     ready()\n\
                     heartbeat()\n\
                     pid = os.fork()\n\
                     if pid == 0:\n\
                     \x20   heartbeat()\n\
                     \x20   os._exit(0)\n\
                     os.waitpid(pid, 0)\n\
                     not_ready('a\\nb' + 'x' * 2000)\n\
                     not_ready('\\u00e9' * 600)\n\
                     not_ready('terminal\\r\\nlost')\n\
                     not_ready(42)\n\
                     ready()\n\
                     print('done', flush=True)\n";
        let run = drive(dir.path(), "read", &["python3", "-c", child]);
        assert_eq!(
            (run.code, run.out.trim(), run.err.as_str()),
            (0, "done", "")
        );
        let lines = protocol_lines(&run.received);
        let long = format!("not-ready a b{}", "x".repeat(511 - "not-ready a b".len()));
        let accents = format!("not-ready {}", "é".repeat(250)); // 510 bytes: 511 would split one
        let want = [
            "ready",
            "alive",
            "alive",
            &long,
            &accents,
            "not-ready terminal  lost",
            "not-ready 42",
            "ready",
        ];
        assert_eq!(lines, want);
        assert_eq!(long.len(), 511);
    }

    /// Without DESK_NOTIFY, or with one that names nothing usable here (a closed fd, a
    /// malformed value, a Windows handle on Linux, a terminal or file), the calls do
    /// nothing and raise nothing, even with SIGPIPE at its default and a default
    /// socket timeout set.
    #[test]
    fn notify_calls_without_a_channel_do_nothing_and_never_raise() {
        if python3().is_none() {
            return;
        }
        let dir = notify_dir();
        std::fs::write(dir.path().join("a file"), "").unwrap();
        let child = "import os, signal, socket, sys\n\
                     signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n\
                     socket.setdefaulttimeout(5)\n\
                     fd = os.open('a file', os.O_WRONLY)\n\
                     os.dup2(fd, 7)\n\
                     from process_lock import heartbeat, not_ready, ready\n\
                     ready()\n\
                     for _ in range(1000):\n\
                     \x20   heartbeat()\n\
                     not_ready('x\\ny')\n\
                     ready()\n\
                     print('done', flush=True)\n";
        let cases: [Option<&str>; 9] = [
            None,
            Some(""),
            Some("fd:999"),
            Some("fd:abc"),
            Some("fd:"),
            Some("fd:-1"),
            Some("fd:99999999999999999999999"),
            Some("handle:1"),
            Some("fd:7"), // a regular file: not a channel, never written
        ];
        for spec in cases {
            let mut command = Command::new("python3");
            command
                .args(["-c", child])
                .current_dir(dir.path())
                .env_remove("DESK_NOTIFY")
                .stdin(Stdio::null());
            if let Some(spec) = spec {
                command.env("DESK_NOTIFY", spec);
            }
            let output = command.output().unwrap();
            let out = String::from_utf8_lossy(&output.stdout);
            let err = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                (output.status.code(), out.trim(), err.as_ref()),
                (Some(0), "done", ""),
                "DESK_NOTIFY={spec:?}"
            );
            assert_eq!(
                std::fs::read(dir.path().join("a file")).unwrap(),
                b"",
                "DESK_NOTIFY={spec:?} wrote into a file"
            );
        }
    }

    /// A channel whose reader is gone (EPIPE, SIGPIPE at its default) or that nobody
    /// reads (full: EAGAIN) costs the bot nothing: no exception, no wait (not even with
    /// a default socket timeout set), and what does arrive is whole lines.
    #[test]
    fn notify_calls_never_raise_or_block_on_a_closed_or_full_channel() {
        if python3().is_none() {
            return;
        }
        let dir = notify_dir();
        let child = "import signal, socket, time\n\
                     signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n\
                     socket.setdefaulttimeout(5)\n\
                     from process_lock import heartbeat, not_ready, ready\n\
                     started = time.monotonic()\n\
                     ready()\n\
                     for i in range(30000):\n\
                     \x20   heartbeat()\n\
                     \x20   if i % 3 == 0:\n\
                     \x20       not_ready('z' * (i % 700))\n\
                     ready()\n\
                     print('done', round(time.monotonic() - started, 3), flush=True)\n";
        for mode in ["closed", "read"] {
            let run = drive(dir.path(), mode, &["python3", "-c", child]);
            assert_eq!(run.code, 0, "{mode}: {}{}", run.out, run.err);
            assert!(
                run.out.starts_with("done"),
                "{mode}: {}{}",
                run.out,
                run.err
            );
            assert_eq!(run.err, "", "{mode}");
            assert!(run.secs < 30.0, "{mode}: {} s", run.secs);
            let lines = protocol_lines(&run.received);
            if mode == "closed" {
                assert!(lines.is_empty());
                continue;
            }
            // The socket filled up: far fewer lines came than were said, all whole.
            assert!(!lines.is_empty() && lines.len() < 40_000, "{}", lines.len());
            assert_eq!(lines[0], "ready");
            for line in &lines {
                assert!(
                    line == "ready"
                        || line == "alive"
                        || line
                            .strip_prefix("not-ready")
                            .is_some_and(|z| z.trim_start().chars().all(|c| c == 'z')),
                    "not a whole line: {line:?}"
                );
            }
        }
    }

    /// A channel that takes only part of a line (a full Windows pipe may) gets the rest
    /// of it before the next line, so master-launch never reads a broken line; a line
    /// it refuses whole (EAGAIN) is lost alone. Through a stand-in channel object: the
    /// kernel's sockets and pipes never cut lines this short.
    #[test]
    fn a_channel_that_takes_part_of_a_line_gets_the_rest_first() {
        if python3().is_none() {
            return;
        }
        let dir = notify_dir();
        let script = "import sys\n\
                      import process_lock as p\n\
                      class Channel:\n\
                      \x20   def __init__(self):\n\
                      \x20       self.data, self.room = b'', [3, 0, 5, 2, 1000, 1000]\n\
                      \x20   def write(self, data):\n\
                      \x20       room = self.room.pop(0) if self.room else 1000\n\
                      \x20       if room == 0:\n\
                      \x20           raise BlockingIOError\n\
                      \x20       self.data += data[:room]\n\
                      \x20       return min(room, len(data))\n\
                      channel = p._Notify.channel = Channel()\n\
                      p.ready()\n\
                      p.heartbeat()\n\
                      p.not_ready('r')\n\
                      p.heartbeat()\n\
                      p.heartbeat()\n\
                      p.ready()\n\
                      sys.stdout.write(channel.data.decode())\n";
        let output = Command::new("python3")
            .args(["-c", script])
            .current_dir(dir.path())
            .env_remove("DESK_NOTIFY")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            // ready: "rea" | alive: refused, lost | not-ready: "dy\nno" | alive: "t-",
            // lost with the cut | alive: "ready r\n" then "alive\n" | ready: whole
            "ready\nnot-ready r\nalive\nready\n",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The example bot, shaped like the desk's bots, says `ready` once it runs and
    /// `alive` in its loop, and still stops cleanly on SIGTERM.
    #[test]
    fn the_example_bot_says_ready_then_beats_in_its_loop() {
        if python3().is_none() {
            return;
        }
        let dir = notify_dir();
        let name = format!("WATCHDOG_NTFYPY{}", std::process::id());
        std::fs::copy(
            repo_file("python/example_bot.py"),
            dir.path().join(format!("{name}.py")),
        )
        .unwrap();
        let script = format!("{name}.py");
        let run = drive(dir.path(), "bot", &["python3", &script]);
        assert_eq!(run.code, 0, "{}{}", run.out, run.err);
        assert!(run.out.contains(": stopped cleanly"), "{}", run.out);
        let lines = protocol_lines(&run.received);
        assert!(lines.len() >= 4, "{lines:?}");
        assert_eq!(lines[0], "ready", "{lines:?}");
        assert!(lines[1..].iter().all(|l| l == "alive"), "{lines:?}");
    }
}
