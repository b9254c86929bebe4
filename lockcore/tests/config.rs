//! `fleet.toml` validation: every refusal DESIGN.md names, with its line and reason.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;

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
    assert_eq!(
        watchdog.command,
        [
            r".venv312_gpu\Scripts\python.exe",
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
