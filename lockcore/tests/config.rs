//! `fleet.toml` validation: every refusal DESIGN.md names, with its line and reason.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use lockcore::Role;
use lockcore::config::{ConfigError, Fleet, RestartPolicy};

const DESK: &str = r#"lock_dir = ".locks"
log_dir = "logs"

[vars]
python = '.venv312_gpu\Scripts\python.exe'

[[global]]
name = "quantum_server"
command = ["{python}", "quantum_server.py"]

[[account]]
name = "ATLAS"
login = "212000584"
terminal = 'C:\Program Files\Atlas Funded MT5 Terminal\terminal64.exe'
enabled = true
brain = ["{python}", "BRAIN_ATLAS.py"]
watchdog = ["{python}", "STOPLOSS_WATCHDOG_V2.py", "--account", "{account}"]

[[account]]
name = "GL_3"
login = "3000123"
terminal = 'C:\MT5\GL3\terminal64.exe'
enabled = false
brain = ["{python}", "BRAIN_GL_3.py"]
watchdog = ["{python}", "STOPLOSS_WATCHDOG_V2.py", "--account", "GL_3"]
"#;

fn refusal(text: &str) -> (usize, String) {
    match Fleet::from_toml(Path::new("desk/fleet.toml"), text) {
        Err(ConfigError::Invalid {
            line,
            problem,
            fix,
            path,
        }) => {
            assert_eq!(path, Path::new("desk/fleet.toml"));
            assert!(!fix.is_empty());
            (line, problem)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// DESK with `extra` appended as new tables: its first line is line 27.
fn desk_with(extra: &str) -> String {
    format!("{DESK}\n{extra}")
}
const EXTRA_LINE: usize = 27;

#[test]
fn the_design_example_loads_and_resolves() {
    let fleet = Fleet::from_toml(Path::new("desk/fleet.toml"), DESK).unwrap();
    assert_eq!(fleet.lock_dir, Path::new("desk/.locks"));
    assert_eq!(fleet.log_dir, Path::new("desk/logs"));
    let names: Vec<&str> = fleet.components().map(|c| c.lock_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "quantum_server",
            "WATCHDOG_ATLAS",
            "BRAIN_ATLAS",
            "WATCHDOG_GL_3",
            "BRAIN_GL_3"
        ]
    );
    let watchdog = fleet.component("WATCHDOG_ATLAS").unwrap();
    assert_eq!(watchdog.role, Role::Watchdog);
    let program = std::path::absolute("desk")
        .unwrap()
        .join(r".venv312_gpu\Scripts\python.exe");
    assert_eq!(
        watchdog.command,
        [
            program.to_str().unwrap(),
            "STOPLOSS_WATCHDOG_V2.py",
            "--account",
            "ATLAS"
        ]
    );
    assert_eq!(
        watchdog.copy_rule.tokens(),
        ["STOPLOSS_WATCHDOG_V2.py", "--account", "ATLAS"]
    );
    assert_eq!(watchdog.restart, RestartPolicy::OnFailure);
    assert_eq!(watchdog.stop_timeout.as_secs(), 10);
    assert_eq!(watchdog.cwd, Path::new("desk"));
    assert!(!fleet.account("gl_3").unwrap().enabled);
}

#[test]
fn an_unknown_top_level_key_is_refused() {
    let (line, problem) = refusal(&format!("lockdir = \"x\"\n{DESK}"));
    assert_eq!(line, 1);
    assert!(problem.contains("unknown field `lockdir`"), "{problem}");
}

#[test]
fn an_unknown_key_in_an_account_is_refused() {
    let text = DESK.replace("enabled = true", "enabeld = true");
    let (line, problem) = refusal(&text);
    assert_eq!(line, 15);
    assert!(problem.contains("unknown field `enabeld`"), "{problem}");
}

#[test]
fn a_duplicate_account_name_is_refused() {
    let extra = r#"[[account]]
name = "atlas"
login = "999"
brain = ["b.py"]
watchdog = ["w.py"]"#;
    let (line, problem) = refusal(&desk_with(extra));
    assert_eq!(line, EXTRA_LINE + 1);
    assert!(
        problem.contains("account `atlas` is defined twice (first on line 12)"),
        "{problem}"
    );
}

#[test]
fn two_accounts_with_one_login_are_refused() {
    let extra = r#"[[account]]
name = "FTMO"
login = "212000584"
brain = ["b.py"]
watchdog = ["w.py"]"#;
    let (line, problem) = refusal(&desk_with(extra));
    assert_eq!(line, EXTRA_LINE + 2);
    assert!(
        problem.contains("`ATLAS` (line 13) and `FTMO` share the login"),
        "{problem}"
    );
}

#[test]
fn two_accounts_on_one_terminal_are_refused_ignoring_case_and_slashes() {
    let extra = r#"[[account]]
name = "FTMO"
terminal = 'c:/program files/atlas funded mt5 terminal/TERMINAL64.exe'
brain = ["b.py"]
watchdog = ["w.py"]"#;
    let (line, problem) = refusal(&desk_with(extra));
    assert_eq!(line, EXTRA_LINE + 2);
    assert!(
        problem.contains("`ATLAS` (line 14) and `FTMO` share the terminal"),
        "{problem}"
    );
}

#[test]
fn an_empty_command_is_refused() {
    let text = DESK.replace(
        r#"command = ["{python}", "quantum_server.py"]"#,
        "command = []",
    );
    let (line, problem) = refusal(&text);
    assert_eq!(line, 9);
    assert!(
        problem.contains("the command of `quantum_server` is empty"),
        "{problem}"
    );
}

#[test]
fn an_empty_program_is_refused() {
    let text = DESK.replace(
        r#"brain = ["{python}", "BRAIN_GL_3.py"]"#,
        r#"brain = ["", "x.py"]"#,
    );
    let (line, problem) = refusal(&text);
    assert_eq!(line, 24);
    assert!(
        problem.contains("the command of `BRAIN_GL_3` is empty"),
        "{problem}"
    );
}

#[test]
fn an_undefined_var_is_refused() {
    let text = DESK.replace(
        r#"brain = ["{python}", "BRAIN_ATLAS.py"]"#,
        r#"brain = ["{pyhton}", "BRAIN_ATLAS.py"]"#,
    );
    let (line, problem) = refusal(&text);
    assert_eq!(line, 16);
    assert!(problem.contains("`{pyhton}` is not defined"), "{problem}");
}

#[test]
fn a_missing_required_key_is_refused() {
    let extra = r#"[[account]]
name = "FTMO"
brain = ["b.py"]"#;
    let (line, problem) = refusal(&desk_with(extra));
    assert_eq!(line, EXTRA_LINE);
    assert!(problem.contains("missing field `watchdog`"), "{problem}");
}

#[test]
fn a_name_that_cannot_be_a_file_name_is_refused() {
    let text = DESK.replace(r#"name = "GL_3""#, r#"name = "GL 3/x""#);
    let (line, problem) = refusal(&text);
    assert_eq!(line, 20);
    assert!(
        problem.contains("account name `GL 3/x` is not usable"),
        "{problem}"
    );
}

#[test]
fn a_global_clashing_with_an_account_lock_is_refused() {
    let text = DESK.replace(r#"name = "quantum_server""#, r#"name = "BRAIN_ATLAS""#);
    let (line, problem) = refusal(&text);
    assert_eq!(line, 12);
    assert!(
        problem.contains("`BRAIN_ATLAS` is already used on line 8"),
        "{problem}"
    );
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let (line, problem) = refusal(&desk_with("[[account]\nname = \"X\""));
    assert_eq!(line, EXTRA_LINE);
    assert!(!problem.is_empty());
}

#[test]
fn the_error_message_names_file_line_and_fix() {
    let text = DESK.replace("[vars]", "[vars]\n[bogus]");
    let error = Fleet::from_toml(Path::new("fleet.toml"), &text).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("fleet.toml:5: unknown field `bogus`"),
        "{message}"
    );
    assert!(message.contains("; fix: remove the key"), "{message}");
}

#[test]
fn a_missing_file_says_how_to_point_elsewhere() {
    let error = Fleet::load(Path::new("/nonexistent/fleet.toml")).unwrap_err();
    assert!(error.to_string().contains("--config PATH"), "{error}");
}

/// A minimal desk around `extra` lines placed before its one account (line 1 onwards).
fn tiny_desk(before: &str, account: &str) -> String {
    format!(
        "{before}\n[[account]]\nname = \"{account}\"\nbrain = [\"b.py\"]\nwatchdog = [\"w.py\"]\n"
    )
}

#[test]
fn a_var_may_use_vars_and_builtins_and_the_child_gets_the_value() {
    let text = r#"[vars]
a = "{b}/{account}"
b = "x{{y}}"

[[account]]
name = "ACC"
brain = ["py", "{a}"]
watchdog = ["py", "w.py"]
"#;
    let fleet = Fleet::from_toml(Path::new("desk/fleet.toml"), text).unwrap();
    assert_eq!(
        fleet.component("BRAIN_ACC").unwrap().command,
        ["py", "x{y}/ACC"]
    );
}

#[test]
fn python_is_built_in_per_platform_and_a_var_of_that_name_wins() {
    let desk = |vars: &str| {
        format!(
            "{vars}\n[[account]]\nname = \"ACC\"\nbrain = [\"{{python}}\", \"b.py\"]\n\
             watchdog = [\"{{python}}\", \"w.py\", \"--via\", \"{{p}}\"]\n"
        )
    };
    let built_in = Fleet::from_toml(
        Path::new("desk/fleet.toml"),
        &desk("[vars]\np = \"{python}\""),
    )
    .unwrap();
    let python = if cfg!(windows) { "python" } else { "python3" };
    assert_eq!(lockcore::config::PYTHON, python);
    assert_eq!(
        built_in.component("BRAIN_ACC").unwrap().command,
        [python, "b.py"]
    );
    // A var may use it too.
    assert_eq!(
        built_in.component("WATCHDOG_ACC").unwrap().command,
        [python, "w.py", "--via", python]
    );
    let venv = Fleet::from_toml(
        Path::new("desk/fleet.toml"),
        &desk("[vars]\npython = \"py\"\np = \"x\""),
    )
    .unwrap();
    assert_eq!(venv.component("BRAIN_ACC").unwrap().command, ["py", "b.py"]);
}

#[test]
fn a_var_naming_an_undefined_var_is_refused_at_its_line() {
    let (line, problem) = refusal(&tiny_desk("[vars]\nb = \"x\"\na = \"{nope}\"", "ACC"));
    assert_eq!(line, 3);
    assert!(problem.contains("`{nope}`"), "{problem}");
}

#[test]
fn a_cycle_of_vars_is_refused_with_the_circle() {
    let (line, problem) = refusal(&tiny_desk(
        "[vars]\na = \"{b}\"\nb = \"{c}\"\nc = \"{a}\"",
        "ACC",
    ));
    assert_eq!(line, 2);
    assert!(problem.contains("a -> b -> c -> a"), "{problem}");
    let (_, problem) = refusal(&tiny_desk("[vars]\na = \"{a}\"", "ACC"));
    assert!(problem.contains("a -> a"), "{problem}");
}

#[test]
fn windows_device_names_are_refused_on_every_platform_in_any_case() {
    for name in ["CON", "nul", "Com1", "LPT9", "aux", "PRN"] {
        let (line, problem) = refusal(&tiny_desk("", name));
        assert_eq!(line, 3, "{name}");
        assert!(problem.contains("device name"), "{name}: {problem}");
        let global = format!("[[global]]\nname = \"{name}\"\ncommand = [\"q.exe\"]\n");
        let (line, problem) = refusal(&global);
        assert_eq!(line, 2, "{name}");
        assert!(problem.contains("device name"), "{name}: {problem}");
    }
    // With an extension the name is refused too (a `.` is never allowed in a name).
    let (_, problem) = refusal(&tiny_desk("", "CON.txt"));
    assert!(problem.contains("not usable"), "{problem}");
    // Names that only start like one are fine.
    Fleet::from_toml(Path::new("f.toml"), &tiny_desk("", "CONSOLE")).unwrap();
    Fleet::from_toml(Path::new("f.toml"), &tiny_desk("", "COM10")).unwrap();
}

#[test]
fn a_name_longer_than_a_file_name_can_carry_is_refused() {
    let long = "A".repeat(300);
    let (line, problem) = refusal(&tiny_desk("", &long));
    assert_eq!(line, 3);
    assert!(problem.contains("300 characters"), "{problem}");
    Fleet::from_toml(Path::new("f.toml"), &tiny_desk("", &"A".repeat(64))).unwrap();
}

#[test]
fn an_empty_desk_is_refused() {
    for text in ["", "lock_dir = \".locks\"\n", "[vars]\na = \"b\"\n"] {
        let (line, problem) = refusal(text);
        assert_eq!(line, 1);
        assert!(problem.contains("the desk is empty"), "{problem}");
    }
}

#[test]
fn a_lock_dir_that_is_the_configs_own_folder_is_refused() {
    for value in [".", "./", "sub/..", ""] {
        let (line, problem) = refusal(&tiny_desk(&format!("lock_dir = \"{value}\""), "ACC"));
        assert_eq!(line, 1, "{value:?}");
        assert!(problem.contains("the config's own folder"), "{problem}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    let absolute = format!("lock_dir = '{}'", dir.path().display());
    let text = tiny_desk(&absolute, "ACC");
    std::fs::write(&config, &text).unwrap();
    assert!(matches!(
        Fleet::load(&config),
        Err(ConfigError::Invalid { line: 1, .. })
    ));
}

#[test]
fn a_relative_program_path_resolves_against_the_config_folder_not_cwd() {
    let text = r#"[defaults]
cwd = "sub"
env = { HOME_OF = "{config_dir}" }

[vars]
python = "venv/py"

[[account]]
name = "ACC"
brain = ["{python}", "b.py"]
watchdog = ["python3", "w.py"]
"#;
    let fleet = Fleet::from_toml(Path::new("desk/fleet.toml"), text).unwrap();
    let brain = fleet.component("BRAIN_ACC").unwrap();
    let desk = std::path::absolute("desk").unwrap();
    assert_eq!(Path::new(&brain.command[0]), desk.join("venv/py"));
    assert_eq!(brain.cwd, Path::new("desk/sub"));
    // [defaults] env values get {var} substitution too.
    assert_eq!(brain.env["HOME_OF"], desk.display().to_string());
    // A bare program name is left to the PATH search.
    assert_eq!(
        fleet.component("WATCHDOG_ACC").unwrap().command[0],
        "python3"
    );
}

#[test]
fn a_stop_timeout_over_a_day_is_refused() {
    let (line, problem) = refusal(&tiny_desk(
        "[defaults]\nstop_timeout_secs = 18446744073709551615",
        "ACC",
    ));
    assert_eq!(line, 2);
    assert!(problem.contains("more than a day"), "{problem}");
}

#[test]
fn restart_settings_can_be_set_per_process_and_default_to_an_immediate_first_restart() {
    let text = "[defaults]\nrestart_delay_ms = 2000\ngive_up_after = 7\n\n\
                [[global]]\nname = \"qs\"\ncommand = [\"q\"]\nrestart_delay_ms = 0\ngive_up_after = 2\n\n\
                [[account]]\nname = \"A\"\nbrain = [\"b\", \"A\"]\nwatchdog = [\"w\", \"A\"]\n\
                give_up_after = 4\nbrain_requires_watchdog = false\n\n\
                [[account]]\nname = \"B\"\nbrain = [\"b\", \"B\"]\nwatchdog = [\"w\", \"B\"]\n";
    let fleet = Fleet::from_toml(Path::new("fleet.toml"), text).unwrap();
    let qs = fleet.component("qs").unwrap();
    assert_eq!(qs.restart_delay, Some(Duration::ZERO));
    assert_eq!(qs.give_up_after, 2);
    let a = fleet.component("WATCHDOG_A").unwrap();
    assert_eq!(a.restart_delay, Some(Duration::from_millis(2000)));
    assert_eq!(a.give_up_after, 4);
    assert!(!fleet.account("A").unwrap().brain_requires_watchdog);
    assert!(
        fleet.account("B").unwrap().brain_requires_watchdog,
        "the default"
    );
    assert_eq!(fleet.component("BRAIN_B").unwrap().give_up_after, 7);
    let plain = Fleet::from_toml(Path::new("fleet.toml"), &tiny_desk("", "ACC")).unwrap();
    let brain = plain.component("BRAIN_ACC").unwrap();
    assert_eq!(brain.restart_delay, None, "no delay unless set");
    assert_eq!(brain.give_up_after, 5);
}

#[test]
fn give_up_after_zero_is_refused_where_it_is_set() {
    let (line, problem) = refusal(&tiny_desk("[defaults]\ngive_up_after = 0", "ACC"));
    assert_eq!(line, 2);
    assert!(problem.contains("give_up_after = 0"), "{problem}");
    let text = "[[global]]\nname = \"qs\"\ncommand = [\"q\"]\ngive_up_after = 0\n";
    let (line, problem) = refusal(text);
    assert_eq!(line, 4);
    assert!(problem.contains("give_up_after = 0"), "{problem}");
}

#[test]
fn a_per_process_restart_delay_over_an_hour_is_refused() {
    let text = "[[account]]\nname = \"A\"\nbrain = [\"b\"]\nwatchdog = [\"w\"]\n\
                restart_delay_ms = 18446744073709551615\n";
    let (line, problem) = refusal(text);
    assert_eq!(line, 5);
    assert!(problem.contains("more than an hour"), "{problem}");
}

/// A refusal's line, problem and fix, after checking that the message a person sees
/// names the file and the line and carries the fix.
fn refusal_and_fix(text: &str) -> (usize, String, String) {
    let error = Fleet::from_toml(Path::new("desk/fleet.toml"), text).unwrap_err();
    let message = error.to_string();
    match error {
        ConfigError::Invalid {
            line, problem, fix, ..
        } => {
            assert!(
                message.starts_with(&format!("desk/fleet.toml:{line}: ")),
                "{message}"
            );
            assert!(message.ends_with(&format!("; fix: {fix}")), "{message}");
            (line, problem, fix)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_empty_match_is_refused_at_its_line() {
    let (line, problem, fix) = refusal_and_fix(
        "[[global]]\nname = \"qs\"\ncommand = [\"q.py\"]\nmatch = []\n\n[[account]]\nname = \"A\"\nbrain = [\"b.py\"]\nwatchdog = [\"w.py\"]\n",
    );
    assert_eq!(line, 4);
    assert!(
        problem.contains("the match pattern of `qs` is empty"),
        "{problem}"
    );
    assert!(fix.contains("remove the key"), "{fix}");
    for key in ["brain_match", "watchdog_match"] {
        let (line, problem, _) = refusal_and_fix(&tiny_desk("", "ACC").replace(
            "watchdog = [\"w.py\"]\n",
            &format!("watchdog = [\"w.py\"]\n{key} = []\n"),
        ));
        assert_eq!(line, 6, "{key}");
        assert!(problem.contains("match pattern of"), "{key}: {problem}");
        assert!(problem.contains("is empty"), "{key}: {problem}");
    }
}

#[test]
fn the_reserved_master_launch_name_is_refused_in_any_case() {
    for name in ["MASTER_LAUNCH", "master_launch", "Master_Launch"] {
        let (line, problem, fix) = refusal_and_fix(&format!(
            "[[global]]\nname = \"{name}\"\ncommand = [\"q.py\"]\n"
        ));
        assert_eq!(line, 2, "{name}");
        assert!(
            problem.contains(&format!("`{name}` is reserved for `MASTER_LAUNCH`")),
            "{problem}"
        );
        assert!(fix.contains("master-launch's own lock"), "{fix}");
    }
}

#[test]
fn a_restart_delay_over_an_hour_is_refused() {
    let (line, problem, fix) = refusal_and_fix(&tiny_desk(
        "[defaults]\nrestart_delay_ms = 18446744073709551615",
        "ACC",
    ));
    assert_eq!(line, 2);
    assert!(problem.contains("more than an hour"), "{problem}");
    assert!(fix.contains("3600000"), "{fix}");
}

#[test]
fn an_empty_name_is_refused() {
    let (line, problem, fix) = refusal_and_fix(&tiny_desk("", ""));
    assert_eq!(line, 3);
    assert!(
        problem.contains("account name `` is not usable"),
        "{problem}"
    );
    assert!(fix.contains("letters, digits"), "{fix}");
}

#[test]
fn a_value_of_the_wrong_kind_is_refused_at_its_line() {
    let (line, problem, fix) =
        refusal_and_fix(&tiny_desk("[defaults]\nrestart = \"sometimes\"", "ACC"));
    assert_eq!(line, 2);
    assert!(problem.contains("sometimes"), "{problem}");
    assert!(fix.contains("correct the value"), "{fix}");
}

/// A one-account desk with a `[cluster]` table made of `lines` (the table's first key
/// is on line 7).
fn cluster_desk(lines: &str) -> String {
    tiny_desk("", "ACC") + "\n[cluster]\n" + lines + "\n"
}
const CLUSTER_LINE: usize = 8;

#[test]
fn without_a_cluster_table_the_desk_has_no_cluster() {
    let fleet = Fleet::from_toml(Path::new("desk/fleet.toml"), DESK).unwrap();
    assert_eq!(fleet.cluster, None);
}

#[test]
fn a_cluster_table_loads_with_its_defaults() {
    let text = cluster_desk(r#"endpoints = ["http://10.0.0.5:2379/", "http://etcd-b:2379"]"#);
    let fleet = Fleet::from_toml(Path::new("desk/fleet.toml"), &text).unwrap();
    let cluster = fleet.cluster.unwrap();
    assert_eq!(
        cluster.endpoints,
        ["http://10.0.0.5:2379", "http://etcd-b:2379"]
    );
    assert_eq!(cluster.lease_ttl, Duration::from_secs(10));
    assert_eq!(cluster.desk, "desk");
    assert_eq!(cluster.auth, None);
    if std::env::var_os(lockcore::config::HOST_ENV).is_none() {
        let machine = gethostname::gethostname();
        assert_eq!(cluster.host, machine.to_string_lossy());
    }
    assert_eq!(cluster.lock_key("BRAIN_ACC"), "/desk/locks/BRAIN_ACC");
}

#[test]
fn a_cluster_table_takes_every_key() {
    let text = cluster_desk(
        "endpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl_secs = 3\nhost = \"A\"\n\
         desk = \"prop-desk\"\nuser = \"desk\"\npassword = \"secret\"",
    );
    let cluster = Fleet::from_toml(Path::new("desk/fleet.toml"), &text)
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(cluster.lease_ttl, Duration::from_secs(3));
    if std::env::var_os(lockcore::config::HOST_ENV).is_none() {
        assert_eq!(cluster.host, "A");
    }
    assert_eq!(cluster.desk, "prop-desk");
    assert_eq!(cluster.auth, Some(("desk".into(), "secret".into())));
    assert_eq!(cluster.lock_key("X"), "/prop-desk/locks/X");
}

#[test]
fn cluster_refusals_name_their_line_and_fix() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "endpoints = []",
            0,
            "endpoints is empty",
            "remove [cluster]",
        ),
        (
            "endpoints = [\"https://10.0.0.5:2379\"]",
            0,
            "https:// but there is no ca_file",
            "add ca_file",
        ),
        (
            "endpoints = [\"https://a:2379\", \"http://b:2379\"]",
            0,
            "mix http:// and https://",
            "every endpoint",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nca_file = \"ca.pem\"",
            1,
            "ca_file is set but the endpoints are http://",
            "https://HOST:PORT",
        ),
        (
            "endpoints = [\"http://a:2379\"]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"",
            1,
            "cert_file is set but the endpoints are http://",
            "https://HOST:PORT",
        ),
        (
            "endpoints = [\"https://a:2379\"]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"",
            2,
            "cert_file but no key_file",
            "add key_file",
        ),
        (
            "endpoints = [\"https://a:2379\"]\nca_file = \"ca.pem\"\nkey_file = \"k.pem\"",
            2,
            "key_file but no cert_file",
            "add cert_file",
        ),
        (
            "endpoints = [\"10.0.0.5:2379\"]",
            0,
            "not an etcd client URL",
            "http://HOST:PORT",
        ),
        (
            "endpoints = [\"http://10.0.0.5:99999\"]",
            0,
            "not an etcd client URL",
            "http://HOST:PORT",
        ),
        (
            "endpoints = [\"http://a:1/v3/kv\"]",
            0,
            "not an etcd client URL",
            "http://HOST:PORT",
        ),
        (
            "endpoints = [\"http://:2379\"]",
            0,
            "not an etcd client URL",
            "http://HOST:PORT",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nlease_ttl_secs = 1",
            1,
            "lease_ttl_secs = 1 is out of range",
            "2 to 300",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nlease_ttl_secs = 18446744073709551615",
            1,
            "out of range",
            "2 to 300",
        ),
        (
            "endpoints = [\"http://a:2379\"]\ndesk = \"a/b\"",
            1,
            "not usable as an etcd key prefix",
            "no `/`",
        ),
        (
            "endpoints = [\"http://a:2379\"]\ndesk = \"..\"",
            1,
            "not usable as an etcd key prefix",
            "no `/`",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nuser = \"desk\"",
            1,
            "a user but no password",
            "add password",
        ),
        (
            "endpoints = [\"http://a:2379\"]\npassword = \"x\"",
            1,
            "a password but no user",
            "add user",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nuser = \"\"\npassword = \"x\"",
            1,
            "user is empty",
            "user's name",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nttl = 5",
            1,
            "unknown field `ttl`",
            "docs/reference.md lists every key",
        ),
        (
            "lease_ttl_secs = 5",
            0,
            "missing field `endpoints`",
            "add the missing key",
        ),
    ];
    for (lines, offset, want_problem, want_fix) in cases {
        let (line, problem, fix) = refusal_and_fix(&cluster_desk(lines));
        assert!(problem.contains(want_problem), "{lines}: {problem}");
        assert!(fix.contains(want_fix), "{lines}: {fix}");
        // A missing key is blamed on its table's header line.
        if !want_problem.starts_with("missing") {
            assert_eq!(line, CLUSTER_LINE + offset, "{lines}: {problem}");
        }
    }
}

#[test]
fn an_empty_host_is_refused_unless_fleet_host_names_the_machine() {
    if std::env::var_os(lockcore::config::HOST_ENV).is_some() {
        return;
    }
    let (line, problem, fix) = refusal_and_fix(&cluster_desk(
        "endpoints = [\"http://a:2379\"]\nhost = \" \"",
    ));
    assert_eq!(line, CLUSTER_LINE + 1);
    assert!(problem.contains("host is empty"), "{problem}");
    assert!(fix.contains("FLEET_HOST"), "{fix}");
}

/// PEM files for the TLS keys, made here: a CA, a client certificate it signed and its
/// key, in `dir`.
struct Pem {
    ca: String,
    cert: String,
    key: String,
}

fn make_pem() -> Pem {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["desk".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap()
        .pem();
    Pem {
        ca,
        cert,
        key: key.serialize_pem(),
    }
}

/// A desk in `dir/fleet.toml` with a `[cluster]` of `lines` after its endpoints line.
fn tls_desk(dir: &Path, lines: &str) -> std::path::PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        cluster_desk(&format!("endpoints = [\"https://10.0.0.5:2379\"]\n{lines}")),
    )
    .unwrap();
    path
}

#[test]
fn tls_files_load_relative_to_the_config_folder_and_are_parsed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pem = make_pem();
    std::fs::create_dir(dir.path().join("pki")).unwrap();
    // A bundle of two CAs: both are roots.
    let bundle = format!("{}{}", pem.ca, make_pem().ca);
    std::fs::write(dir.path().join("pki/ca.pem"), &bundle).unwrap();
    std::fs::write(dir.path().join("pki/desk.pem"), &pem.cert).unwrap();
    std::fs::write(dir.path().join("pki/desk-key.pem"), &pem.key).unwrap();
    let path = tls_desk(
        dir.path(),
        "ca_file = \"pki/ca.pem\"\ncert_file = \"pki/desk.pem\"\nkey_file = \"pki/desk-key.pem\"",
    );
    let cluster = Fleet::load(&path).unwrap().cluster.unwrap();
    assert_eq!(cluster.endpoints, ["https://10.0.0.5:2379"]);
    let tls = cluster.tls.as_ref().unwrap();
    assert_eq!(tls.ca_file, dir.path().join("pki/ca.pem"));
    assert_eq!(tls.ca_certs.len(), 2);
    let client = tls.client.as_ref().unwrap();
    assert_eq!(client.cert_file, dir.path().join("pki/desk.pem"));
    assert_eq!(client.key_file, dir.path().join("pki/desk-key.pem"));
    assert_eq!(client.cert.certs().len(), 1);
    // The private key never shows in a debug print (logs, panics).
    let debug = format!("{cluster:?}");
    let key_body: String = pem.key.lines().nth(1).unwrap().chars().take(40).collect();
    assert!(!debug.contains(&key_body), "{debug}");
    assert!(debug.contains("desk-key.pem"), "{debug}");

    // The CA alone (etcd without --client-cert-auth).
    let path = tls_desk(dir.path(), "ca_file = \"pki/ca.pem\"");
    let cluster = Fleet::load(&path).unwrap().cluster.unwrap();
    assert_eq!(cluster.tls.unwrap().client, None);

    // A plain http desk has no TLS.
    std::fs::write(
        &path,
        cluster_desk("endpoints = [\"http://10.0.0.5:2379\"]"),
    )
    .unwrap();
    assert_eq!(Fleet::load(&path).unwrap().cluster.unwrap().tls, None);
}

#[test]
fn tls_file_refusals_name_the_file_line_path_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pem = make_pem();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", &pem.ca);
    write("desk.pem", &pem.cert);
    write("desk-key.pem", &pem.key);
    write("empty.pem", "");
    write(
        "notes.txt",
        "this is the etcd CA, ask ops for the real file\n",
    );
    write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    );
    write("two-keys.pem", &format!("{}{}", pem.key, pem.key));
    write(
        "encrypted-key.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    std::fs::create_dir(dir.path().join("folder.pem")).unwrap();
    let ca = "ca_file = \"ca.pem\"\n";
    // Unix adds a case below (a FIFO).
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut cases: Vec<(String, usize, String, &str)> = vec![
        (
            "ca_file = \"missing.pem\"".into(),
            1,
            "missing.pem cannot be read".into(),
            "relative to the config's folder",
        ),
        (
            "ca_file = \"folder.pem\"".into(),
            1,
            "folder.pem cannot be read: it is not a regular file".into(),
            "PEM file",
        ),
        (
            "ca_file = \"empty.pem\"".into(),
            1,
            "empty.pem has no PEM certificate".into(),
            "BEGIN CERTIFICATE",
        ),
        (
            "ca_file = \"notes.txt\"".into(),
            1,
            "notes.txt has no PEM certificate".into(),
            "BEGIN CERTIFICATE",
        ),
        (
            "ca_file = \"desk-key.pem\"".into(),
            1,
            "desk-key.pem has no PEM certificate".into(),
            "BEGIN CERTIFICATE",
        ),
        (
            "ca_file = \"broken.pem\"".into(),
            1,
            "broken.pem is not valid PEM".into(),
            "BEGIN CERTIFICATE",
        ),
        (
            format!("{ca}cert_file = \"desk-key.pem\"\nkey_file = \"desk-key.pem\""),
            2,
            "cert_file ".into(),
            "BEGIN CERTIFICATE",
        ),
        (
            format!("{ca}cert_file = \"missing.pem\"\nkey_file = \"desk-key.pem\""),
            2,
            "missing.pem cannot be read".into(),
            "relative to the config's folder",
        ),
        (
            format!("{ca}cert_file = \"desk.pem\"\nkey_file = \"desk.pem\""),
            3,
            "desk.pem has no unencrypted PEM private key".into(),
            "one unencrypted private key",
        ),
        (
            format!("{ca}cert_file = \"desk.pem\"\nkey_file = \"two-keys.pem\""),
            3,
            "two-keys.pem has more than one private key".into(),
            "one unencrypted private key",
        ),
        (
            format!("{ca}cert_file = \"desk.pem\"\nkey_file = \"encrypted-key.pem\""),
            3,
            "encrypted-key.pem has no unencrypted PEM private key".into(),
            "one unencrypted private key",
        ),
        (
            format!("{ca}cert_file = \"desk.pem\"\nkey_file = \"missing-key.pem\""),
            3,
            "missing-key.pem cannot be read".into(),
            "relative to the config's folder",
        ),
    ];
    // A FIFO where the CA should be: refused at once, never opened (opening it would
    // block the start until some other program wrote to it).
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo.pem");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        cases.push((
            "ca_file = \"fifo.pem\"".into(),
            1,
            "fifo.pem cannot be read: it is not a regular file".into(),
            "PEM file",
        ));
        std::os::unix::fs::symlink(dir.path().join("gone.pem"), dir.path().join("dangling.pem"))
            .unwrap();
        cases.push((
            "ca_file = \"dangling.pem\"".into(),
            1,
            "dangling.pem cannot be read".into(),
            "relative to the config's folder",
        ));
    }
    for (lines, offset, want_problem, want_fix) in &cases {
        let path = tls_desk(dir.path(), lines);
        let error = Fleet::load(&path).unwrap_err();
        let message = error.to_string();
        let ConfigError::Invalid {
            line, problem, fix, ..
        } = error
        else {
            panic!("{lines}: expected a refusal, got {message}");
        };
        assert_eq!(line, CLUSTER_LINE + offset, "{lines}: {message}");
        assert!(
            message.starts_with(&format!("{}:{line}: ", path.display())),
            "{message}"
        );
        assert!(
            problem.contains(want_problem.as_str()),
            "{lines}: {problem}"
        );
        // The problem names the file by its full path, not only as written.
        assert!(
            problem.contains(&dir.path().display().to_string()),
            "{problem}"
        );
        assert!(fix.contains(want_fix), "{lines}: {fix}");
    }
}

/// DESIGN.md rule 9, last sentence: a brain whose command is a prefix of its
/// watchdog's would make the watchdog a "copy" of the brain (a duplicate for ever,
/// killed in the brain stage by safe-shutdown).
#[test]
fn a_component_whose_command_is_a_copy_of_another_is_refused() {
    let text = "[[account]]\nname = \"PX\"\nbrain = [\"python3\", \"bot.py\"]\n\
                watchdog = [\"python3\", \"bot.py\", \"--watchdog\"]\n";
    let error = Fleet::from_toml(Path::new("desk/fleet.toml"), text).unwrap_err();
    assert_eq!(
        error.to_string(),
        "desk/fleet.toml:3: `WATCHDOG_PX` (line 4) and `BRAIN_PX` cannot be told apart: \
         `WATCHDOG_PX`'s command `python3 bot.py --watchdog` counts as a copy of \
         `BRAIN_PX`, which recognises its copies by `bot.py`, so check-procs would report \
         a duplicate and safe-shutdown would stop one as the other; fix: give `BRAIN_PX` \
         an argument the other lacks (e.g. `--brain`) in its command, or a `brain_match` \
         with tokens that `WATCHDOG_PX`'s command does not start with"
    );
}

#[test]
fn two_components_with_identical_commands_are_refused() {
    let text = "[[global]]\nname = \"qs\"\ncommand = [\"python\", \"bot.py\"]\n\n\
                [[account]]\nname = \"ID\"\nbrain = [\"python\", \"b.py\"]\n\
                watchdog = [\"python3\", \"-u\", \"bot.py\"]\n";
    let error = Fleet::from_toml(Path::new("desk/fleet.toml"), text).unwrap_err();
    assert_eq!(
        error.to_string(),
        "desk/fleet.toml:8: `qs` (line 3) and `WATCHDOG_ID` cannot be told apart: \
         `WATCHDOG_ID`'s command `python3 -u bot.py` counts as a copy of `qs`, which \
         recognises its copies by `bot.py`, so check-procs would report a duplicate and \
         safe-shutdown would stop one as the other; fix: give `qs` an argument the other \
         lacks (e.g. `--global`) in its command, or a `match` with tokens that \
         `WATCHDOG_ID`'s command does not start with"
    );
    // The same command twice in one account: `restart` and `start` were refused for
    // ever (each saw the other as an unlocked copy).
    let same = "[[account]]\nname = \"SAME\"\nbrain = [\"python3\", \"bot.py\"]\n\
                watchdog = [\"python3\", \"bot.py\"]\n";
    let message = Fleet::from_toml(Path::new("desk/fleet.toml"), same)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "desk/fleet.toml:3: `WATCHDOG_SAME` (line 4) and `BRAIN_SAME` cannot be told apart: \
         `BRAIN_SAME`'s command `python3 bot.py` counts as a copy of `WATCHDOG_SAME`, which \
         recognises its copies by `bot.py`, so check-procs would report a duplicate and \
         safe-shutdown would stop one as the other; fix: give `WATCHDOG_SAME` an argument \
         the other lacks (e.g. `--watchdog`) in its command, or a `watchdog_match` with \
         tokens that `BRAIN_SAME`'s command does not start with"
    );
    // An explicit match that tells them apart is the fix, and loads.
    let fixed = "[[account]]\nname = \"PX\"\nbrain = [\"python3\", \"bot.py\"]\n\
                 watchdog = [\"python3\", \"bot.py\", \"--watchdog\"]\n\
                 brain_match = [\"bot.py\", \"--brain\"]\n";
    Fleet::from_toml(Path::new("desk/fleet.toml"), fixed).unwrap();
}

/// A desk of one account followed by `alert`, one `[[alert]]` table or more.
fn desk_with_alert(alert: &str) -> String {
    format!("[[account]]\nname = \"A\"\nbrain = [\"b\"]\nwatchdog = [\"w\"]\n\n{alert}")
}

#[test]
fn an_alert_loads_with_its_defaults_and_its_kinds() {
    let fleet = Fleet::from_toml(
        Path::new("desk/fleet.toml"),
        &desk_with_alert(
            "[[alert]]\ncommand = [\"notify\"]\n\n[[alert]]\ncommand = [\"page\", \"--loud\"]\n\
             kinds = [\"given_up\", \"exited\", \"given_up\"]\ntimeout_secs = 3\n",
        ),
    )
    .unwrap();
    assert_eq!(fleet.alerts.len(), 2);
    assert_eq!(fleet.alerts[0].line, 6);
    assert_eq!(fleet.alerts[0].timeout, Duration::from_secs(10));
    assert_eq!(
        fleet.alerts[0].kinds,
        lockcore::events::EventKind::NEEDS_A_PERSON.to_vec()
    );
    use lockcore::events::EventKind::{Exited, GivenUp};
    assert_eq!(fleet.alerts[1].kinds, [GivenUp, Exited]);
    assert_eq!(fleet.alerts[1].command, ["page", "--loud"]);
    assert_eq!(fleet.alerts[1].timeout, Duration::from_secs(3));
    assert_eq!(fleet.log_files_kept, 1);
}

#[test]
fn an_alert_with_an_unknown_kind_is_refused_naming_the_kinds() {
    let (line, problem, fix) = refusal_and_fix(&desk_with_alert(
        "[[alert]]\ncommand = [\"notify\"]\nkinds = [\"given_up\",\n  \"gave_up\"]\n",
    ));
    assert_eq!(line, 9);
    assert_eq!(problem, "[[alert]] kinds: unknown event kind `gave_up`");
    assert!(fix.starts_with("use one of: desk_started, "), "{fix}");
    assert!(fix.contains("given_up"), "{fix}");
}

#[test]
fn an_alert_with_an_empty_command_or_no_kinds_is_refused() {
    for command in ["[]", "[\"\"]", "[\" \", \"x\"]"] {
        let (line, problem, fix) = refusal_and_fix(&desk_with_alert(&format!(
            "[[alert]]\ncommand = {command}\n"
        )));
        assert_eq!(line, 7, "{command}");
        assert_eq!(problem, "[[alert]] command is empty");
        assert!(fix.contains("name the program and its arguments"), "{fix}");
    }
    let (line, problem, fix) = refusal_and_fix(&desk_with_alert(
        "[[alert]]\ncommand = [\"x\"]\nkinds = []\n",
    ));
    assert_eq!(line, 8);
    assert!(problem.contains("kinds is empty"), "{problem}");
    assert!(fix.contains("remove `kinds`"), "{fix}");
}

#[test]
fn an_alert_timeout_of_zero_or_over_ten_minutes_is_refused() {
    for secs in ["0", "601"] {
        let (line, problem, fix) = refusal_and_fix(&desk_with_alert(&format!(
            "[[alert]]\ncommand = [\"x\"]\ntimeout_secs = {secs}\n"
        )));
        assert_eq!(line, 8);
        assert_eq!(
            problem,
            format!("[[alert]] timeout_secs = {secs} is outside 1 to 600 seconds")
        );
        assert!(fix.contains("1 to 600 (default 10)"), "{fix}");
    }
}

#[test]
fn an_unknown_alert_key_and_log_files_kept_out_of_bounds_are_refused() {
    let (line, problem, fix) = refusal_and_fix(&desk_with_alert(
        "[[alert]]\ncommand = [\"x\"]\nkind = [\"hung\"]\n",
    ));
    assert_eq!(line, 8);
    assert!(problem.starts_with("unknown field `kind`"), "{problem}");
    assert!(fix.contains("correct its spelling"), "{fix}");
    for kept in ["0", "101"] {
        let (line, problem, _) =
            refusal_and_fix(&format!("log_files_kept = {kept}\n{}", desk_with_alert("")));
        assert_eq!(line, 1);
        assert!(problem.contains("log_files_kept"), "{problem}");
    }
    let kept = Fleet::from_toml(
        Path::new("desk/fleet.toml"),
        &format!("log_files_kept = 7\n{}", desk_with_alert("")),
    )
    .unwrap();
    assert_eq!(kept.log_files_kept, 7);
}

#[test]
fn copy_scan_secs_defaults_to_10_takes_0_as_never_and_refuses_more_than_an_hour() {
    let default = Fleet::from_toml(Path::new("desk/fleet.toml"), &desk_with_alert("")).unwrap();
    assert_eq!(default.copy_scan_secs, 10);
    for (text, secs) in [("0", 0), ("1", 1), ("3600", 3600)] {
        let fleet = Fleet::from_toml(
            Path::new("desk/fleet.toml"),
            &format!("copy_scan_secs = {text}\n{}", desk_with_alert("")),
        )
        .unwrap();
        assert_eq!(fleet.copy_scan_secs, secs);
    }
    let (line, problem, fix) =
        refusal_and_fix(&format!("\ncopy_scan_secs = 3601\n{}", desk_with_alert("")));
    assert_eq!(line, 2);
    assert!(problem.contains("copy_scan_secs = 3601"), "{problem}");
    assert!(fix.contains("0 to never look"), "{fix}");
    let negative = Fleet::from_toml(
        Path::new("desk/fleet.toml"),
        &format!("copy_scan_secs = -1\n{}", desk_with_alert("")),
    );
    assert!(negative.is_err(), "{negative:?}");
}
