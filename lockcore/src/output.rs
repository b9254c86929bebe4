//! What every binary prints the same way: the colour decision and errors.
//!
//! Colour only on a terminal and never with `NO_COLOR` (clig.dev). Errors are one
//! sentence on stderr, then each underlying cause on its own "caused by" line.

use std::error::Error;
use std::io::IsTerminal;

/// Whether to colour output written to `stream`. On Windows this also switches the
/// console to ANSI mode; where that fails (very old consoles) there is no colour.
pub fn use_color(stream: &impl IsTerminal) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && stream.is_terminal() && enable_ansi_support::enable_ansi_support().is_ok()
}

/// The error and its chain of causes, as the lines a binary prints.
pub fn error_lines(tool: &str, error: &(dyn Error + 'static)) -> Vec<String> {
    let mut lines = vec![format!("{tool}: error: {error}")];
    let mut source = error.source();
    while let Some(cause) = source {
        lines.push(format!("  caused by: {cause}"));
        source = cause.source();
    }
    lines
}

/// Prints [`error_lines`] to stderr, and waits until they are out.
pub fn print_error(tool: &str, error: &(dyn Error + 'static)) {
    for line in error_lines(tool, error) {
        crate::printer::stderr().line(line);
    }
    crate::printer::stderr().flush();
}

/// The end of every binary's `main`: the exit code of a run, or the error printed with
/// its causes and the exit code it means ([`crate::exit::ToolError`]). A reader that
/// went away (`| head`) ends the tool quietly, as ripgrep does.
pub fn finish(
    tool: &str,
    result: Result<crate::ExitCode, crate::exit::ToolError>,
) -> std::process::ExitCode {
    let code = match result {
        Ok(code) => code,
        Err(error) if error.is_broken_pipe() => crate::ExitCode::Ok,
        Err(error) => {
            print_error(tool, &error);
            error.process_exit_code()
        }
    };
    crate::printer::flush_all();
    code.into()
}

/// A duration for people: `12s`, `5m 03s`, `2h 05m`, `3d 04h`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start BRAIN_ATLAS")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(303), "5m 03s");
        assert_eq!(human_duration(7500), "2h 05m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600), "3d 04h");
    }

    #[test]
    fn causes_are_listed_in_order() {
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(
            error_lines("master-launch", &error),
            vec![
                "master-launch: error: cannot start BRAIN_ATLAS".to_string(),
                "  caused by: disk full".to_string()
            ]
        );
    }
}
