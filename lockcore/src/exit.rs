//! The exit codes every tool uses (DESIGN.md, "Exit codes shared by all tools").
//!
//! Scripts and the `.bat` wrappers branch on these, so they never change meaning.

/// A tool's exit status.
///
/// `Deserialize` is derived only so that a test can list the variants the compiler
/// knows ([`crate::introspect::enum_variants`]) and hold [`ExitCode::ALL`] to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything asked for was done; the desk is healthy.
    Ok = 0,
    /// Problems were found, or an action did not complete (something survived a stop).
    Problems = 1,
    /// Bad command-line arguments or a bad `fleet.toml`; nothing was changed.
    Usage = 2,
    /// Refused because of what runs: a lock is held, an unlocked copy runs, or (`run`)
    /// a brain's watchdog does not run; nothing was started.
    Refused = 3,
}

impl ExitCode {
    /// Every exit code, in order: docs/reference.md's table and the bundle's README.txt are
    /// generated from this list and [`ExitCode::meaning`] (`cargo xtask docs`).
    pub const ALL: [ExitCode; 4] = [
        ExitCode::Ok,
        ExitCode::Problems,
        ExitCode::Usage,
        ExitCode::Refused,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code tells a person or a script, for every tool.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Ok => "ok: everything asked for was done; the desk is healthy",
            ExitCode::Problems => {
                "problems found, or an action did not complete (something survived a stop, \
                 the answer was not YES, a folder could not be read)"
            }
            ExitCode::Usage => {
                "bad arguments, a bad fleet.toml (the message names file, line and fix), a \
                 path from it that cannot be used, or safe-shutdown (or master-launch \
                 --replace, SAFE_START.bat, with something to stop) with no terminal and no \
                 --yes; nothing is left changed"
            }
            ExitCode::Refused => {
                "refused: a lock is held, or a copy of a component already runs without any \
                 lock, or (`master-launch run`, a START_ wrapper) a brain's watchdog is not \
                 running; nothing was started"
            }
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

/// A mistake in how a tool was called that clap cannot catch (an unknown `--only`
/// account, say). Binaries exit with [`ExitCode::Usage`] for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub use crate::path_error::PathError;

/// An error at a tool's edge, and the exit code it means (as cargo-nextest's
/// `ExpectedError` carries `process_exit_code()`): every binary's `run` returns it, and
/// [`crate::output::finish`] prints it with its causes and exits with its code.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `fleet.toml` cannot be read or is wrong.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The tool was called wrongly (an unknown account, say).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A file or folder the tool needs cannot be used; the message names it.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Anything else: the action did not complete.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl ToolError {
    /// An error that means "the action did not complete".
    pub fn failed(error: impl std::error::Error + Send + Sync + 'static) -> ToolError {
        ToolError::Failed(Box::new(error))
    }

    /// The exit code this error means: the setup needs fixing (2), or the action did
    /// not complete (1).
    pub fn process_exit_code(&self) -> ExitCode {
        match self {
            ToolError::Config(_) | ToolError::Usage(_) | ToolError::Path(_) => ExitCode::Usage,
            ToolError::Failed(_) => ExitCode::Problems,
        }
    }

    /// A reader that went away (`| head`): not an error of ours.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            ToolError::Failed(error) => error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }
}

macro_rules! failed_from {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for ToolError {
            fn from(error: $error) -> ToolError {
                ToolError::failed(error)
            }
        }
    )*};
}

failed_from!(
    crate::LockError,
    crate::process::ProcessTableError,
    std::io::Error,
    serde_json::Error,
);

impl From<crate::autostart::AutostartError> for ToolError {
    /// A path no definition can hold, or no user to name: the call needs fixing (2);
    /// anything else: the scheduler or the system refused (1).
    fn from(error: crate::autostart::AutostartError) -> ToolError {
        if error.is_usage() {
            ToolError::Usage(UsageError(error.to_string()))
        } else {
            ToolError::failed(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_variant_in_code_order() {
        let names: Vec<String> = ExitCode::ALL.iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(
            names,
            crate::introspect::enum_variants::<ExitCode>(),
            "ExitCode::ALL must list every variant"
        );
        for (position, code) in ExitCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.code()), position);
            assert!(!code.meaning().is_empty());
        }
    }
}
