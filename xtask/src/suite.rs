//! `cargo xtask test [ARGS]...`: the README's test command.
//!
//! The suite starts real programs besides the desk's own: Python for the demo bots and
//! `process_lock.py`, a real etcd for the cluster tests, strace to prove a desk without
//! `[cluster]` connects nowhere. Without them those tests fail after a long build, so
//! this checks for them first: it installs what is missing where it can (root with
//! `apt-get`, as on a fresh CI machine), and otherwise stops at once with the exact
//! install command. Then it runs `cargo test --workspace --locked` with the given
//! arguments and exits with its code.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// A program the suite runs, and where it comes from.
pub struct Needed {
    pub program: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// Which tests need it, for the message.
    pub for_what: &'static str,
}

/// What the suite needs on this platform. The cluster and strace tests are Unix-only.
pub fn needed() -> Vec<Needed> {
    let mut needed = vec![Needed {
        program: if cfg!(windows) { "python" } else { "python3" },
        package: "python3",
        for_what: "the demo bots and the tests of python/process_lock.py",
    }];
    if cfg!(unix) {
        needed.push(Needed {
            program: "etcd",
            package: "etcd-server",
            for_what: "the cluster tests (a real etcd on loopback)",
        });
    }
    if cfg!(target_os = "linux") {
        needed.push(Needed {
            program: "strace",
            package: "strace",
            for_what: "the proof that a desk without [cluster] connects nowhere",
        });
    }
    needed
}

/// Whether `program` is an executable file in one of `path`'s folders.
pub fn on_path(program: &str, path: Option<&OsString>) -> bool {
    let Some(path) = path else { return false };
    std::env::split_paths(path).any(|dir| {
        let file = dir.join(program);
        is_executable(&file) || (cfg!(windows) && is_executable(&file.with_extension("exe")))
    })
}

fn is_executable(file: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        file.is_file()
    }
}

/// The command that installs `missing`, for the message.
pub fn install_command(missing: &[&Needed]) -> String {
    let packages: Vec<&str> = missing.iter().map(|needed| needed.package).collect();
    if cfg!(windows) {
        "winget install Python.Python.3.12".to_string()
    } else {
        format!("sudo apt-get install -y {}", packages.join(" "))
    }
}

/// Checks, installs where it can, then runs the suite. `Ok(false)` when the suite
/// failed or could not run.
pub fn run(args: &[OsString]) -> crate::Result<bool> {
    let path = std::env::var_os("PATH");
    let needed = needed();
    let mut missing: Vec<&Needed> = needed
        .iter()
        .filter(|needed| !on_path(needed.program, path.as_ref()))
        .collect();
    if !missing.is_empty() && can_install() {
        let packages: Vec<&str> = missing.iter().map(|needed| needed.package).collect();
        println!(
            "xtask test: installing {} with apt-get",
            packages.join(", ")
        );
        let updated = Command::new("apt-get").args(["update", "-qq"]).status();
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&packages)
            .status();
        report_failed("apt-get update", updated);
        report_failed("apt-get install", installed);
        missing.retain(|needed| !on_path(needed.program, path.as_ref()));
    }
    if !missing.is_empty() {
        eprintln!("xtask test: the tests need programs that are not on the PATH:");
        for needed in &missing {
            eprintln!(
                "  {:<8} for {} (package {})",
                needed.program, needed.for_what, needed.package
            );
        }
        eprintln!("Install them, then run `cargo xtask test` again:");
        eprintln!("  {}", install_command(&missing));
        return Ok(false);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace", "--locked"])
        .args(args)
        .current_dir(crate::workspace_root())
        .status()
        .map_err(|error| format!("run cargo test: {error}"))?;
    Ok(status.success())
}

/// Root with apt-get: a fresh CI machine or container, where installing is expected.
/// Anywhere else installing would need a password or a choice the user should make.
fn can_install() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        root && on_path("apt-get", std::env::var_os("PATH").as_ref())
    }
    #[cfg(not(unix))]
    {
        false
    }
}

fn report_failed(what: &str, status: std::io::Result<ExitStatus>) {
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("xtask test: {what} failed ({status})"),
        Err(error) => eprintln!("xtask test: {what} could not run: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_found_only_as_an_executable_file_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = OsString::from(dir.path());
        assert!(!on_path("tool", Some(&path)));
        std::fs::write(dir.path().join("tool"), "").unwrap();
        #[cfg(unix)]
        {
            // A file that cannot be executed is not the program.
            assert!(!on_path("tool", Some(&path)));
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join("tool"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        assert!(on_path("tool", Some(&path)));
        // A folder of that name is not the program either.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(!on_path("sub", Some(&path)));
        assert!(!on_path("tool", None));
    }

    #[test]
    fn the_install_command_names_every_missing_package() {
        let needed = needed();
        let all: Vec<&Needed> = needed.iter().collect();
        let command = install_command(&all);
        if cfg!(target_os = "linux") {
            assert_eq!(
                command,
                "sudo apt-get install -y python3 etcd-server strace"
            );
        }
    }
}
