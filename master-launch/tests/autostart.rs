//! `master-launch install|uninstall`: the desk as a systemd user unit (Linux, against
//! stand-in `systemctl` programs and a temporary XDG_CONFIG_HOME: the real user's
//! systemd is never touched) and as a Task Scheduler task (Windows; under Wine with
//! Wine's own `schtasks`, which registers tasks but never runs them at logon).
//! `check-procs` reporting the entry is checked here too, right after the install.
//! Kept apart from `cli.rs`: these tests drive the scheduler, not a running desk.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_tests::tool;
use lockcore::autostart::{Scheduler, entry_name};

/// A desk folder whose path has spaces and parentheses, with a small valid config.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let desk = dir.path().join("Trading Desk (live)");
        std::fs::create_dir_all(&desk).unwrap();
        std::fs::write(
            desk.join("fleet.toml"),
            r#"
[defaults]
stop_timeout_secs = 4

[[global]]
name = "autostart_qs"
command = ["python", "autostart_qs.py"]

[[account]]
name = "AUTOSTART_A"
brain = ["python", "autostart_brain.py"]
watchdog = ["python", "autostart_watchdog.py"]
stop_timeout_secs = 9
"#,
        )
        .unwrap();
        Site { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir
            .path()
            .join("Trading Desk (live)")
            .join("fleet.toml")
    }

    fn name(&self, scheduler: Scheduler) -> String {
        entry_name(scheduler, self.config().to_str().unwrap())
    }

    fn master_launch(&self, args: &[&str]) -> Command {
        let mut command = Command::new(tool("master-launch", "master-launch"));
        command.arg("--config").arg(self.config()).args(args);
        command
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_procs_autostart(site: &Site, env: &[(&str, &Path)]) -> serde_json::Value {
    let mut command = Command::new(tool("check-procs", "check-procs"));
    command.arg("--config").arg(site.config()).arg("--json");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&output.stdout)));
    report["autostart"].clone()
}

#[cfg(unix)]
mod systemd {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Output;

    use super::*;

    /// A temporary home for systemd's user config, and a `systemctl` stand-in.
    struct UserSystemd {
        root: tempfile::TempDir,
    }

    impl UserSystemd {
        /// `systemctl` that logs its arguments and exits with `code` (saying
        /// `message` on stderr when it fails).
        fn new(code: i32, message: &str) -> UserSystemd {
            let root = tempfile::tempdir().unwrap();
            let bin = root.path().join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let script = format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n[ {code} -eq 0 ] || echo '{message}' >&2\nexit {code}\n",
                root.path().join("systemctl.log").display()
            );
            let fake = bin.join("systemctl");
            std::fs::write(&fake, script).unwrap();
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            UserSystemd { root }
        }

        fn xdg(&self) -> PathBuf {
            self.root.path().join("xdg")
        }

        fn home(&self) -> PathBuf {
            self.root.path().join("home")
        }

        fn unit_dir(&self) -> PathBuf {
            self.xdg().join("systemd").join("user")
        }

        fn path(&self) -> String {
            format!(
                "{}:{}",
                self.root.path().join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            )
        }

        fn env(&self, command: &mut Command) {
            command
                .env("PATH", self.path())
                .env("XDG_CONFIG_HOME", self.xdg())
                .env("HOME", self.home());
        }

        fn run(&self, site: &Site, args: &[&str]) -> Output {
            let mut command = site.master_launch(args);
            self.env(&mut command);
            command.output().unwrap()
        }

        /// Each call of the stand-in `systemctl`, one line of arguments each.
        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.root.path().join("systemctl.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    #[test]
    fn print_shows_a_valid_unit_and_installs_nothing() {
        let site = Site::new();
        let systemd = UserSystemd::new(0, "");
        let output = systemd.run(&site, &["install", "--print"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let unit = text(&output.stdout);
        let name = site.name(Scheduler::SystemdUser);
        assert!(text(&output.stderr).contains(&name));
        assert!(systemd.calls().is_empty(), "systemctl was called");
        assert!(!systemd.unit_dir().exists(), "something was installed");
        assert!(!systemd.home().exists());

        // A documented structural check (systemd-analyze may be missing): the keys,
        // an absolute ExecStart that names this master-launch and config.
        let exe = tool("master-launch", "master-launch");
        let exec_start = format!(
            "ExecStart=\"{}\" --config \"{}\"",
            exe.display(),
            site.config().display()
        );
        for line in [
            "[Service]",
            exec_start.as_str(),
            &format!(
                "WorkingDirectory={}",
                site.config().parent().unwrap().display()
            ),
            "Restart=on-failure",
            "KillMode=mixed",
            // brains 9, watchdogs 9, globals 4, plus the 30 s margin
            "TimeoutStopSec=52",
            "[Install]",
            "WantedBy=default.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "no `{line}` in\n{unit}");
        }

        // systemd's own reading, where systemd-analyze runs (it reads unit files
        // without a running systemd): no complaint about any line.
        let check = tempfile::tempdir().unwrap();
        let file = check.path().join(&name);
        std::fs::write(&file, &unit).unwrap();
        match Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
        {
            Ok(verify) => {
                let complaints = text(&verify.stderr);
                assert!(verify.status.success(), "{complaints}");
                assert!(
                    !complaints.contains(name.as_str()),
                    "systemd-analyze: {complaints}"
                );
            }
            Err(e) => eprintln!("systemd-analyze not available ({e}); structural check only"),
        }
    }

    #[test]
    fn install_writes_and_enables_the_unit_uninstall_removes_it() {
        let site = Site::new();
        let systemd = UserSystemd::new(0, "");
        let name = site.name(Scheduler::SystemdUser);
        let unit_file = systemd.unit_dir().join(&name);
        let env = [("XDG_CONFIG_HOME", systemd.xdg()), ("HOME", systemd.home())];
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let before = check_procs_autostart(&site, &env);
        assert_eq!(before["installed"], false, "{before}");
        assert_eq!(before["name"], name.as_str());

        let output = systemd.run(&site, &["install"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).contains(&name));
        let printed = systemd.run(&site, &["install", "--print"]);
        assert_eq!(std::fs::read(&unit_file).unwrap(), printed.stdout);
        assert_eq!(
            systemd.calls(),
            [
                "--user daemon-reload".to_string(),
                format!("--user enable {name}")
            ]
        );
        let after = check_procs_autostart(&site, &env);
        assert_eq!(after["installed"], true, "{after}");
        assert_eq!(after["scheduler"], "systemd-user");
        assert!(
            after["how"].as_str().unwrap().contains("not enabled"),
            "{after}"
        );
        // systemctl enable makes this link; check-procs reads it.
        let wants = systemd.unit_dir().join("default.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(&unit_file, wants.join(&name)).unwrap();
        let enabled = check_procs_autostart(&site, &env);
        assert!(
            enabled["how"].as_str().unwrap().ends_with(", enabled"),
            "{enabled}"
        );

        // Installing again replaces the one unit; nothing else appears.
        let again = systemd.run(&site, &["install", "--at", "logon"]);
        assert!(again.status.success(), "{}", text(&again.stderr));
        let files: Vec<_> = std::fs::read_dir(systemd.unit_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}"); // the unit and default.target.wants

        let removed = systemd.run(&site, &["uninstall"]);
        assert!(removed.status.success(), "{}", text(&removed.stderr));
        assert!(!unit_file.exists());
        assert_eq!(
            systemd.calls()[4..],
            [
                format!("--user disable {name}"),
                "--user daemon-reload".to_string()
            ]
        );
        let gone = systemd.run(&site, &["uninstall"]);
        assert!(gone.status.success());
        assert!(text(&gone.stdout).contains("nothing to remove"));
        assert_eq!(systemd.calls().len(), 6, "systemctl called for nothing");
    }

    #[test]
    fn a_refusing_systemctl_is_exit_1_with_its_message_and_leaves_no_unit() {
        let site = Site::new();
        let systemd = UserSystemd::new(1, "Failed to connect to bus: No medium found");
        let output = systemd.run(&site, &["install"]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("Failed to connect to bus: No medium found"),
            "{stderr}"
        );
        assert!(
            stderr.contains("systemctl --user daemon-reload"),
            "{stderr}"
        );
        let unit_file = systemd.unit_dir().join(site.name(Scheduler::SystemdUser));
        assert!(!unit_file.exists(), "a unit was left behind");

        // An earlier, working unit survives a refused reinstall unchanged.
        std::fs::write(&unit_file, "earlier").unwrap();
        let output = systemd.run(&site, &["install"]);
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(std::fs::read_to_string(&unit_file).unwrap(), "earlier");
        // Uninstall refused too: exit 1, and the unit stays.
        let output = systemd.run(&site, &["uninstall"]);
        assert_eq!(output.status.code(), Some(1));
        assert!(text(&output.stderr).contains("No medium found"));
        assert!(unit_file.exists());
    }

    #[test]
    fn without_xdg_config_home_the_unit_goes_under_home() {
        let site = Site::new();
        let systemd = UserSystemd::new(0, "");
        let mut command = site.master_launch(&["install"]);
        systemd.env(&mut command);
        command.env_remove("XDG_CONFIG_HOME");
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        let unit = systemd
            .home()
            .join(".config/systemd/user")
            .join(site.name(Scheduler::SystemdUser));
        assert!(unit.is_file());
        assert!(!systemd.xdg().exists());
    }

    #[test]
    fn bad_arguments_and_configs_are_exit_2_and_touch_nothing() {
        let site = Site::new();
        let systemd = UserSystemd::new(0, "");
        for args in [&["install", "--at", "noon"][..], &["install", "--bogus"]] {
            let output = systemd.run(&site, args);
            assert_eq!(output.status.code(), Some(2), "{args:?}");
        }
        std::fs::write(site.config(), "bogus = 1\n").unwrap();
        for args in [&["install"][..], &["uninstall"]] {
            let output = systemd.run(&site, args);
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            assert!(text(&output.stderr).contains("fleet.toml:1:"));
        }
        // A directory where the config should be.
        std::fs::remove_file(site.config()).unwrap();
        std::fs::create_dir(site.config()).unwrap();
        assert_eq!(systemd.run(&site, &["install"]).status.code(), Some(2));
        assert!(systemd.calls().is_empty());
        assert!(!systemd.xdg().exists());
    }

    #[test]
    fn a_config_path_no_unit_can_hold_is_exit_2_and_installs_nothing() {
        let site = Site::new();
        let systemd = UserSystemd::new(0, "");
        let odd = site.dir.path().join("line\nbreak");
        std::fs::create_dir(&odd).unwrap();
        std::fs::copy(site.config(), odd.join("fleet.toml")).unwrap();
        let mut command = Command::new(tool("master-launch", "master-launch"));
        command
            .arg("--config")
            .arg(odd.join("fleet.toml"))
            .arg("install");
        systemd.env(&mut command);
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
        assert!(text(&output.stderr).contains("control character"));
        assert!(systemd.calls().is_empty());
        assert!(!systemd.xdg().exists());
    }

    #[test]
    fn a_directory_where_the_unit_file_goes_is_an_error_not_a_panic() {
        let site = Site::new();
        let systemd = UserSystemd::new(0, "");
        let unit_file = systemd.unit_dir().join(site.name(Scheduler::SystemdUser));
        std::fs::create_dir_all(unit_file.join("inside")).unwrap();
        let output = systemd.run(&site, &["install"]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(&site.name(Scheduler::SystemdUser)),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(systemd.calls().is_empty());
    }
}

/// Under Wine: Wine's `schtasks /create /xml` and `/delete` work and keep tasks as
/// files under `windows\system32\tasks`; Wine never runs them at logon, so this checks
/// registration only. Wine's `schtasks /query` is a stub (success, no output): the
/// task's file is the evidence there, and on Windows `schtasks /query` as well.
#[cfg(windows)]
#[test]
fn install_registers_the_task_a_second_install_replaces_it_uninstall_removes_it() {
    let site = Site::new();
    let name = site.name(Scheduler::TaskScheduler);
    let windir = std::env::var_os("SystemRoot")
        .or_else(|| std::env::var_os("windir"))
        .unwrap();
    let mut task_file = Path::new(&windir).join("System32").join("Tasks");
    task_file.extend(name.split('\\'));
    let registered = || {
        let listed = fleet_tests::wine::under_wine()
            || Command::new("schtasks")
                .args(["/query", "/tn", &name])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
                .status
                .success();
        // Under Wine the file decides; on Windows a user may not see it.
        (task_file.is_file() || !fleet_tests::wine::under_wine()) && listed
    };
    assert!(!task_file.exists(), "{name} exists before the test");

    let printed = site
        .master_launch(&["install", "--print"])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    assert!(text(&printed.stdout).contains("<LogonTrigger>"));
    assert!(!task_file.exists(), "--print installed the task");

    for round in 0..2 {
        let output = site.master_launch(&["install"]).output().unwrap();
        assert!(
            output.status.success(),
            "install {round}: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        assert!(registered(), "install {round}: {name} is not registered");
    }
    if task_file.is_file() {
        // Task Scheduler keeps UTF-16, Wine UTF-8: look for the program either way.
        let stored = std::fs::read(&task_file).unwrap();
        let utf16: Vec<u16> = stored
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&stored),
            String::from_utf16_lossy(&utf16)
        );
        assert!(text.contains("master-launch"), "{text}");
        assert!(text.contains("IgnoreNew"), "{text}");
    }
    let status = check_procs_autostart(&site, &[]);
    assert_eq!(status["installed"], true, "{status}");
    assert_eq!(status["name"], name.as_str());

    let removed = site.master_launch(&["uninstall"]).output().unwrap();
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(
        text(&removed.stdout).contains("removed"),
        "{}",
        text(&removed.stdout)
    );
    assert!(!task_file.exists(), "uninstall left {name}");
    let again = site.master_launch(&["uninstall"]).output().unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("nothing to remove"));
    assert_eq!(check_procs_autostart(&site, &[])["installed"], false);
}
