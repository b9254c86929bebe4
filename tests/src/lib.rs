//! Helpers for the cross-tool scenarios in `tests/tests/`.
//!
//! - [`tool`] builds (once per test process) and finds any workspace binary, so no
//!   test hard-codes `target/debug`. `assert_cmd`'s `cargo_bin` only sees binaries of
//!   its own package; the tools live in other packages.
//! - [`Barrier`] releases many processes at the same instant: each waits for a file.
//! - [`spawn_reader`] turns a child's stdout into lines a test can wait for.
//!
//! The helper binaries in `src/bin/` are stand-ins the scenarios drive.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The path of workspace binary `name` from package `package`, built if needed.
///
/// Builds with the same cargo and profile that runs the tests, into the same target
/// folder, at most once per package per test process.
pub fn tool(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|p| p == package) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bins", "-p", package])
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
        assert!(status.success(), "building {package} failed");
        built.push(package.to_string());
    }
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The folder cargo puts binaries in: the test executable lives in its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    let deps = exe.parent().unwrap_or_else(|| Path::new("."));
    if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A start line for many processes: they wait for `path` to exist, then go.
#[derive(Debug)]
pub struct Barrier {
    pub path: PathBuf,
}

impl Barrier {
    pub fn new(dir: &Path, name: &str) -> Self {
        Barrier {
            path: dir.join(format!("{name}.go")),
        }
    }

    pub fn release(&self) {
        std::fs::write(&self.path, b"go").unwrap_or_else(|e| panic!("cannot write barrier: {e}"));
    }

    /// Called by the waiting side.
    pub fn wait(path: &Path) {
        while !path.exists() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Lines from a child's stream, collected on a thread.
#[derive(Debug)]
pub struct Lines {
    receiver: Receiver<String>,
}

pub fn spawn_reader(stream: impl Read + Send + 'static) -> Lines {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Lines { receiver }
}

impl Lines {
    /// The next line that contains `needle`, waiting at most `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every line until the stream ends.
    pub fn collect(self) -> Vec<String> {
        self.receiver.iter().collect()
    }
}
