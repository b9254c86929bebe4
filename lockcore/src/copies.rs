//! What counts as a running copy of a component (DESIGN.md rule 9): the one rule that
//! check-procs, master-launch's pre-flights, `run` and safe-shutdown all use.
//!
//! A process is a copy of a component only when
//! 1. it runs the component's **program**: the same file name as the configured
//!    command's first element (case and a `.exe` ending ignored, as Windows does), or,
//!    where that program is a Python interpreter, any interpreter of the family
//!    (`python`, `python3`, `python3.12`, `pythonw`, `pypy3`, the `py` launcher, a
//!    venv's `python.exe`); and
//! 2. the component's **match tokens** stand where that program takes what it runs:
//!    for an interpreter, at its script position after its own options
//!    (`python -u -X utf8 BRAIN.py`), where `-m module` and `-c code` are what it runs;
//!    for any other program, right after the program.
//!
//! So an editor, viewer, linter or `grep` whose arguments name the script is never a
//! copy (`tail -f BRAIN.py`, `code BRAIN.py`, `python -m pylint BRAIN.py`), while a
//! copy started by hand with an absolute path, interpreter options, a venv's python or
//! the `py` launcher still is. The default tokens are what the configured command runs
//! (the script and its arguments); an explicit `match` in fleet.toml replaces the
//! tokens, never the program rule. A token without a path separator compares with the
//! file name of the argument (`BRAIN.py` matches `C:\desk\BRAIN.py`); tokens ignore
//! case on Windows, where the file system does.

use std::fmt;

/// How a component's running copies are recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRule {
    program: Program,
    tokens: Vec<String>,
}

/// The program a component runs, as far as recognising it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Program {
    /// Any Python interpreter; the tokens stand at its script position.
    Python,
    /// A program by its normalised file name; the tokens follow it directly.
    Named(String),
}

/// Why a command line is, or is not, a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Copy,
    /// The command line is empty (a process whose arguments cannot be read).
    NoCommandLine,
    /// It runs another program (`tail`, `notepad++`, `code`, `cmd`).
    OtherProgram(String),
    /// The interpreter runs nothing from a file: interactive, or `-c` code.
    RunsNoScript,
    /// It runs something else (another script, a module such as `pylint`).
    RunsOther(String),
}

impl Verdict {
    pub fn is_copy(&self) -> bool {
        *self == Verdict::Copy
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Copy => write!(f, "a copy"),
            Verdict::NoCommandLine => write!(f, "its command line cannot be read"),
            Verdict::OtherProgram(name) => write!(f, "it runs another program, `{name}`"),
            Verdict::RunsNoScript => write!(f, "the interpreter runs no script"),
            Verdict::RunsOther(what) => write!(f, "it runs `{what}`"),
        }
    }
}

impl CopyRule {
    /// The rule for a configured command, with fleet.toml's `match` tokens if given.
    /// Without them the tokens are what the command runs: for an interpreter its
    /// script (or `-m module`) and arguments, for any other program its arguments.
    pub fn new(command: &[String], explicit: Option<Vec<String>>) -> CopyRule {
        let program = command
            .first()
            .map_or(Program::Named(String::new()), |p| Program::of(p));
        let tokens = explicit.unwrap_or_else(|| {
            program
                .what_it_runs(command.get(1..).unwrap_or_default())
                .unwrap_or_default()
        });
        CopyRule { program, tokens }
    }

    /// The match tokens (what must stand where the program takes what it runs).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Whether `cmd` (a process's command line) is a copy, and why (not).
    pub fn judge(&self, cmd: &[String]) -> Verdict {
        let Some((first, args)) = cmd.split_first() else {
            return Verdict::NoCommandLine;
        };
        let program = Program::of(first);
        if program != self.program {
            return Verdict::OtherProgram(normalised_name(first));
        }
        let Some(runs) = program.what_it_runs(args) else {
            return Verdict::RunsNoScript;
        };
        let starts_with_tokens = runs.len() >= self.tokens.len()
            && runs
                .iter()
                .zip(&self.tokens)
                .all(|(actual, wanted)| token_eq(actual, wanted));
        if starts_with_tokens {
            Verdict::Copy
        } else {
            Verdict::RunsOther(runs.iter().take(3).cloned().collect::<Vec<_>>().join(" "))
        }
    }

    pub fn is_copy(&self, cmd: &[String]) -> bool {
        self.judge(cmd).is_copy()
    }

    /// Whether `cmd` runs the component's program at all (rule 9's first half): what
    /// an older tool's record must name to be possibly genuine (rule 11).
    pub fn runs_program(&self, cmd: &[String]) -> bool {
        cmd.first().is_some_and(|p| Program::of(p) == self.program)
    }
}

/// Whether `cmd` runs a Python interpreter: the older PID-file tool was a Python
/// module, so every record it wrote names one.
pub fn runs_python(cmd: &[String]) -> bool {
    cmd.first()
        .is_some_and(|p| Program::of(p) == Program::Python)
}

impl Program {
    fn of(program: &str) -> Program {
        let name = normalised_name(program);
        if is_python(&name) {
            Program::Python
        } else {
            Program::Named(name)
        }
    }

    /// What a command line with these arguments runs, from where the program takes
    /// it; `None` when it runs nothing from a file.
    fn what_it_runs(&self, args: &[String]) -> Option<Vec<String>> {
        match self {
            Program::Python => python_runs(args),
            Program::Named(_) => Some(args.to_vec()),
        }
    }
}

/// File name, lower case, without `.exe`: how Windows names a program.
fn normalised_name(program: &str) -> String {
    let name = file_name(program).to_ascii_lowercase();
    match name.strip_suffix(".exe") {
        Some(stem) => stem.to_string(),
        None => name,
    }
}

/// `python`, `python3`, `python3.12`, `pythonw`, `pypy3`, `py`, `pyw`.
fn is_python(name: &str) -> bool {
    if matches!(name, "py" | "pyw") {
        return true;
    }
    ["pythonw", "python", "pypy"].iter().any(|family| {
        name.strip_prefix(family)
            .is_some_and(|version| version.chars().all(|c| c.is_ascii_digit() || c == '.'))
    })
}

/// What a Python interpreter runs, given its arguments: skips the `py` launcher's
/// version selector (`-3.12`, `-V:3.12`) and the interpreter's own options
/// (CPython's `bBdEhiIOPqRsStuvVx?` take nothing, `WX` take a value, `cm` end the
/// options and name what runs). `None`: interactive, or code from stdin.
fn python_runs(args: &[String]) -> Option<Vec<String>> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let is_version_selector = arg
            .strip_prefix('-')
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) || v.starts_with("V:"));
        if is_version_selector {
            i += 1;
            continue;
        }
        if arg == "--" {
            return args.get(i + 1).map(|_| args[i + 1..].to_vec());
        }
        if let Some(long) = arg.strip_prefix("--") {
            // `--check-hash-based-pycs MODE` is the one long option with a value.
            i += if long == "check-hash-based-pycs" {
                2
            } else {
                1
            };
            continue;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            return Some(args[i..].to_vec()); // the script (or `-` for stdin)
        };
        let mut consumed = 1;
        for (at, flag) in flags.char_indices() {
            let rest = &flags[at + flag.len_utf8()..];
            match flag {
                'c' | 'm' => {
                    let (value, after) = if rest.is_empty() {
                        (args.get(i + 1)?.clone(), i + 2)
                    } else {
                        (rest.to_string(), i + 1)
                    };
                    let mut runs = vec![format!("-{flag}"), value];
                    runs.extend(args.get(after..).unwrap_or_default().iter().cloned());
                    return Some(runs);
                }
                'W' | 'X' => {
                    if rest.is_empty() {
                        consumed = 2;
                    }
                    break;
                }
                _ => {}
            }
        }
        i += consumed;
    }
    None
}

fn token_eq(actual: &str, wanted: &str) -> bool {
    let actual = if wanted.contains(['/', '\\']) {
        actual
    } else {
        file_name(actual)
    };
    if cfg!(windows) {
        actual.eq_ignore_ascii_case(wanted)
    } else {
        actual == wanted
    }
}

/// The last part of a path, for either slash direction.
pub fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    /// Every decision, Linux and Windows shapes, against the configured commands of
    /// a brain and a watchdog.
    #[test]
    fn command_lines_and_their_verdicts() {
        let brain = CopyRule::new(&words(r".venv\Scripts\python.exe BRAIN_ATLAS.py"), None);
        let watchdog = CopyRule::new(
            &words("python3 STOPLOSS_WATCHDOG_V2.py --account ATLAS"),
            None,
        );
        let copy = || Verdict::Copy;
        let other = |p: &str| Verdict::OtherProgram(p.to_string());
        let runs = |w: &str| Verdict::RunsOther(w.to_string());
        let table: &[(&CopyRule, &str, Verdict)] = &[
            // Copies: any interpreter of the family, options, absolute paths.
            (&brain, "python BRAIN_ATLAS.py", copy()),
            (
                &brain,
                "/usr/bin/python3.12 -u /home/desk/BRAIN_ATLAS.py",
                copy(),
            ),
            (&brain, "python -u -X utf8 BRAIN_ATLAS.py", copy()),
            (
                &brain,
                "python -uXutf8 -W ignore BRAIN_ATLAS.py --live",
                copy(),
            ),
            (
                &brain,
                r"C:\desk\.venv312_gpu\Scripts\python.exe C:\desk\BRAIN_ATLAS.py",
                copy(),
            ),
            (&brain, r"C:\Python312\PYTHON.EXE BRAIN_ATLAS.py", copy()),
            (&brain, "pythonw.exe BRAIN_ATLAS.py", copy()),
            (&brain, "py -3.12 BRAIN_ATLAS.py", copy()),
            (&brain, "py -V:3.12 -u BRAIN_ATLAS.py", copy()),
            (&brain, "pypy3 BRAIN_ATLAS.py", copy()),
            (&brain, "python -- BRAIN_ATLAS.py", copy()),
            (
                &watchdog,
                "python STOPLOSS_WATCHDOG_V2.py --account ATLAS",
                copy(),
            ),
            (
                &watchdog,
                "python3 -B STOPLOSS_WATCHDOG_V2.py --account ATLAS -v",
                copy(),
            ),
            // Not copies: other programs that name the script.
            (&brain, "tail -f BRAIN_ATLAS.py", other("tail")),
            (
                &brain,
                r"notepad++.exe C:\desk\BRAIN_ATLAS.py",
                other("notepad++"),
            ),
            (&brain, "code BRAIN_ATLAS.py", other("code")),
            (&brain, "cmd /c type BRAIN_ATLAS.py", other("cmd")),
            (&brain, "grep BRAIN_ATLAS", other("grep")),
            (&brain, "vim -R BRAIN_ATLAS.py", other("vim")),
            (&brain, "pythonista BRAIN_ATLAS.py", other("pythonista")),
            // Not copies: the interpreter runs something else.
            (
                &brain,
                "python -m pylint BRAIN_ATLAS.py",
                runs("-m pylint BRAIN_ATLAS.py"),
            ),
            (
                &brain,
                "python -mpylint BRAIN_ATLAS.py",
                runs("-m pylint BRAIN_ATLAS.py"),
            ),
            (
                &brain,
                "python -c print(1) BRAIN_ATLAS.py",
                runs("-c print(1) BRAIN_ATLAS.py"),
            ),
            (
                &brain,
                "python lint.py BRAIN_ATLAS.py",
                runs("lint.py BRAIN_ATLAS.py"),
            ),
            (&brain, "python -W BRAIN_ATLAS.py", Verdict::RunsNoScript),
            (&brain, "python -i", Verdict::RunsNoScript),
            (&brain, "", Verdict::NoCommandLine),
            (
                &watchdog,
                "python STOPLOSS_WATCHDOG_V2.py --account GL_3",
                runs("STOPLOSS_WATCHDOG_V2.py --account GL_3"),
            ),
            (
                &watchdog,
                "python STOPLOSS_WATCHDOG_V2.py",
                runs("STOPLOSS_WATCHDOG_V2.py"),
            ),
        ];
        for (rule, line, expected) in table {
            assert_eq!(&rule.judge(&words(line)), expected, "{line}");
        }
    }

    #[test]
    fn other_programs_take_the_tokens_right_after_the_program() {
        let server = CopyRule::new(&words(r"C:\bin\quantum_server.exe --port 5000"), None);
        assert!(server.is_copy(&words("quantum_server --port 5000")));
        assert!(server.is_copy(&words(r"D:\x\Quantum_Server.EXE --port 5000 -v")));
        assert!(!server.is_copy(&words("quantum_server --verbose --port 5000")));
        assert!(!server.is_copy(&words("strace quantum_server --port 5000")));
        let bare = CopyRule::new(&words("quantum_server"), None);
        assert!(bare.is_copy(&words("/opt/quantum_server --anything")));
    }

    #[test]
    fn explicit_match_replaces_the_tokens_not_the_program() {
        let rule = CopyRule::new(
            &words("python BRAIN_ATLAS.py --config atlas.json"),
            Some(words("BRAIN_ATLAS.py")),
        );
        assert!(rule.is_copy(&words("python BRAIN_ATLAS.py --config other.json")));
        assert!(!rule.is_copy(&words("less BRAIN_ATLAS.py")));
        assert!(!rule.is_copy(&words("python -m pylint BRAIN_ATLAS.py")));
        let module = CopyRule::new(&words("python -m desk.brain ATLAS"), None);
        assert_eq!(module.tokens(), words("-m desk.brain ATLAS"));
        assert!(module.is_copy(&words("python3 -u -m desk.brain ATLAS")));
        assert!(!module.is_copy(&words("python -m pylint desk.brain ATLAS")));
    }
}
