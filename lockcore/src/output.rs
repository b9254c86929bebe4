//! What every binary prints the same way: the colour decision and errors.
//!
//! Colour only on a terminal and never with `NO_COLOR` (clig.dev). Errors are one
//! sentence on stderr, then each underlying cause on its own "caused by" line.

use std::error::Error;
use std::io::IsTerminal;

/// Whether to colour output written to `stream`.
pub fn use_color(stream: &impl IsTerminal) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && stream.is_terminal()
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

/// Prints [`error_lines`] to stderr.
pub fn print_error(tool: &str, error: &(dyn Error + 'static)) {
    for line in error_lines(tool, error) {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start BRAIN_ATLAS")]
    struct Outer(#[source] std::io::Error);

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
