//! Log files: one per child (`<log_dir>/<NAME>.log`), the orchestrator's
//! (`<log_dir>/master-launch.log`) and the shutdown audit trail
//! (`<log_dir>/safe-shutdown.log`), each line time-stamped, rotated by size.
//!
//! Rotation renames `X.log` to `X.log.1` (and, when more files are kept, `X.log.1` to
//! `X.log.2` and so on, the oldest dropped). The desk's event log
//! (`<log_dir>/events.jsonl`, [`crate::events`]) is one of these, written unstamped
//! ([`Log::open_records`]): each line is a whole JSON object. On Windows a rename
//! fails while another program (an editor, a `Get-Content -Wait`) has the file open:
//! then we keep writing to the current file and try again at the next threshold,
//! rather than lose lines.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::path_error::PathError;

const ROTATE_AT_BYTES: u64 = 10 * 1024 * 1024;
/// How many rotated files a log keeps beside the current one, unless told otherwise.
pub const DEFAULT_FILES_KEPT: usize = 1;
/// The most rotated files a log may keep.
pub const MAX_FILES_KEPT: usize = 100;

/// A size-rotated, time-stamped log file that threads can share.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Mutex<LogFile>>,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    rotate_at: u64,
    /// Also print each line to stdout (the orchestrator's own log).
    echo: bool,
    /// Rotated files kept beside the current one (`X.log.1` ... `X.log.<kept>`).
    kept: usize,
}

impl Log {
    /// Opens (creating it and its folder if need be) a log file for appending.
    pub fn open(path: &Path, echo: bool) -> Result<Log, PathError> {
        Log::open_as(path, echo)
    }

    /// Opens a log whose lines are records written as given ([`Log::record`]): no
    /// time stamp, no echo.
    pub fn open_records(path: &Path) -> Result<Log, PathError> {
        Log::open_as(path, false)
    }

    /// Keeps this many rotated files (at least 1, at most [`MAX_FILES_KEPT`]).
    #[must_use]
    pub fn keeping(self, kept: usize) -> Log {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).kept = kept.clamp(1, MAX_FILES_KEPT);
        self
    }

    fn open_as(path: &Path, echo: bool) -> Result<Log, PathError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(PathError::at("create the log folder", dir))?;
        }
        let cannot_open = PathError::at("open the log file", path);
        let file = append(path).map_err(&cannot_open)?;
        let written = file.metadata().map_err(cannot_open)?.len();
        Ok(Log {
            inner: Arc::new(Mutex::new(LogFile {
                path: path.to_path_buf(),
                file,
                written,
                rotate_at: ROTATE_AT_BYTES,
                echo,
                kept: DEFAULT_FILES_KEPT,
            })),
        })
    }

    /// Appends one time-stamped line (and echoes it, if asked, through the stdout
    /// printer). Log trouble never stops the desk.
    pub fn line(&self, stream: &str, text: &str) {
        let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.3f");
        let line = if stream.is_empty() {
            format!("{stamp} {text}\n")
        } else {
            format!("{stamp} [{stream}] {text}\n")
        };
        self.write(line);
    }

    /// Appends one line as given (a record of the event log), unstamped.
    pub fn record(&self, text: &str) {
        self.write(format!("{text}\n"));
    }

    fn write(&self, line: String) {
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if log.echo {
            // Never `print!`: a closed terminal or pipe must not stop the desk, and a
            // frozen console must not hold this lock (crate::printer).
            crate::printer::stdout().write(line.clone());
        }
        if log.file.write_all(line.as_bytes()).is_ok() {
            log.written += line.len() as u64;
        }
        if log.written >= log.rotate_at {
            log.rotate();
        }
    }

    /// Copies a child's output stream into the log on a thread of its own.
    pub fn follow(&self, stream: &'static str, source: impl Read + Send + 'static) {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buffer = Vec::new();
            while reader.read_until(b'\n', &mut buffer).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&buffer);
                log.line(stream, text.trim_end_matches(['\r', '\n']));
                buffer.clear();
            }
        });
    }
}

impl LogFile {
    fn rotate(&mut self) {
        let _ = std::fs::remove_file(rotated(&self.path, self.kept));
        for n in (1..self.kept).rev() {
            let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        let old = rotated(&self.path, 1);
        if crate::os_file::retry_transient(|| std::fs::rename(&self.path, &old)).is_err() {
            // Open elsewhere (Windows): keep writing here, try again later.
            self.rotate_at = self.written + ROTATE_AT_BYTES;
            return;
        }
        match append(&self.path) {
            Ok(file) => {
                self.file = file;
                self.written = 0;
                self.rotate_at = ROTATE_AT_BYTES;
            }
            Err(_) => self.rotate_at = self.written + ROTATE_AT_BYTES,
        }
    }
}

/// `X.log` rotated `n` times: `X.log.<n>`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}"));
    path.with_file_name(name)
}

/// A log's files that exist, oldest first: `X.log.<n>` ... `X.log.1`, then `X.log`.
pub fn files_oldest_first(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=MAX_FILES_KEPT)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_and_the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BRAIN_X.log");
        let log = Log::open(&path, false).unwrap();
        log.inner.lock().unwrap().rotate_at = 200;
        for i in 0..10 {
            log.line("stdout", &format!("line {i}"));
        }
        let rotated = std::fs::read_to_string(path.with_extension("log.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(rotated.contains("[stdout] line 0"), "{rotated}");
        assert!(current.contains("[stdout] line 9"), "{current}");
        // One rotation at the test's tiny threshold, then the normal one: nothing lost.
        assert_eq!(rotated.lines().count() + current.lines().count(), 10);
    }

    #[test]
    fn records_are_unstamped_and_kept_files_shift_oldest_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = Log::open_records(&path).unwrap().keeping(3);
        for i in 0..6 {
            // A rotation sets the normal threshold again: each record fills a file.
            log.inner.lock().unwrap().rotate_at = 10;
            log.record(&format!("{{\"n\":{i:03}}}"));
        }
        let files = files_oldest_first(&path);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "events.jsonl.3",
                "events.jsonl.2",
                "events.jsonl.1",
                "events.jsonl"
            ],
            "every record filled a file: three kept, the current one empty"
        );
        let text: Vec<String> = files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(
            text,
            ["{\"n\":003}\n", "{\"n\":004}\n", "{\"n\":005}\n", ""]
        );
    }
}
