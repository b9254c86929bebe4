//! A prompt answered through a real pseudo-terminal (Python's `pty` module drives it):
//! the YES prompts of `safe-shutdown` and `master-launch --replace`. Unix only.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Runs `exe args...` on a pseudo-terminal, waits for `Type YES` on its screen, types
/// `answer` and Enter, and returns its exit code and everything it showed.
pub fn answer_prompt(exe: &Path, args: &[&OsStr], answer: &str) -> (i32, String) {
    let script = r#"
import os, pty, sys
answer, exe, args = sys.argv[1], sys.argv[2], sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(exe, [exe] + args)
seen = b""
while b"Type YES" not in seen:
    chunk = os.read(fd, 1024)
    if not chunk:
        break
    seen += chunk
os.write(fd, answer.encode() + b"\r")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(answer)
        .arg(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run python3 for a pty: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}
