//! [`PathError`]: an io error that names its path and what was being done. Every
//! module that touches files returns it; it depends on nothing else in the crate.

/// A file or folder a tool must use cannot be used (a log file that is a folder, a
/// folder it may not create). Binaries exit with `ExitCode::Usage` (2) for it: it is
/// the desk's setup that needs fixing, and the message names the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct PathError {
    pub action: &'static str,
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    /// An `io::Error` to `PathError` mapper for `map_err`.
    pub fn at(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl Fn(std::io::Error) -> PathError {
        let path = path.to_path_buf();
        move |source| PathError {
            action,
            path: path.clone(),
            source,
        }
    }
}
