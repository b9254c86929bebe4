//! The notify channel (DESIGN.md rule 15): how a supervised child says `ready`,
//! `alive` and `not-ready <reason>` to master-launch, as s6's readiness fd does it.
//!
//! Each run gets a fresh channel that only it (and what it starts) inherits, named in
//! its environment as `DESK_NOTIFY`: on Linux `fd:<n>`, one end of a socket pair
//! (a socket cannot be opened through `/proc/<pid>/fd`, and has no name anyone could
//! guess); on Windows `handle:<n>`, the write end of an anonymous pipe (one
//! instance, already connected). The child's end is non-blocking, so a bot whose
//! master-launch is frozen loses a heartbeat rather than hang in it. A thread per run
//! reads lines (at most [`LINE_MAX`] bytes each) and passes on each word as it comes,
//! `alive` at most every [`ALIVE_EVERY`], so a flood costs master-launch little.
//! Writing the lock dir does nothing: nobody reads a file there for this.

use std::io::{self, Read};
use std::process::Command;
use std::time::{Duration, Instant};

/// A word a child said on its notify channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    Ready,
    Alive,
    NotReady(String),
}

/// The variable that names the child's end.
pub const VAR: &str = "DESK_NOTIFY";
/// The longest line read; the rest of a longer one is dropped.
pub const LINE_MAX: usize = 512;
/// `alive` is passed on at most this often (it only moves a timestamp).
const ALIVE_EVERY: Duration = Duration::from_millis(250);

/// The two ends of a run's channel, before its spawn.
#[derive(Debug)]
pub struct Channel {
    reader: imp::Reader,
    child_end: imp::ChildEnd,
}

/// The reading end, once the child runs.
#[derive(Debug)]
pub struct Listener(imp::Reader);

impl Channel {
    pub fn new() -> io::Result<Channel> {
        let (reader, child_end) = imp::pair()?;
        Ok(Channel { reader, child_end })
    }

    /// Gives `command` the child's end (inherited, named in [`VAR`]); `spawn` starts
    /// it. Master-launch's copy of that end is closed after the spawn, so the reader
    /// ends once the child's tree has closed its copies.
    pub fn spawn<T>(
        self,
        command: &mut Command,
        spawn: impl FnOnce(&mut Command) -> T,
    ) -> (T, Listener) {
        let spawned = imp::spawn_with(self.child_end, command, spawn);
        (spawned, Listener(self.reader))
    }
}

impl Listener {
    /// Reads the child's words on a thread of its own until the channel ends, passing
    /// each to `said`.
    pub fn follow(self, name: &str, said: impl Fn(Word) + Send + 'static) {
        let reader = self.0;
        let _ = std::thread::Builder::new()
            .name(format!("notify {name}"))
            .spawn(move || read_words(reader, said));
    }
}

/// Splits the stream into lines, bounded, and passes on the words.
fn read_words(mut reader: impl Read, said: impl Fn(Word)) {
    let mut buf = [0u8; 4096];
    let mut line = Vec::with_capacity(LINE_MAX);
    let mut last_alive: Option<Instant> = None;
    let mut last_not_ready: Option<String> = None;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for &byte in &buf[..n] {
            if byte != b'\n' {
                if line.len() < LINE_MAX {
                    line.push(byte);
                }
                continue;
            }
            let word = parse(&line);
            line.clear();
            let Some(word) = word else { continue };
            match &word {
                Word::Alive => {
                    if last_alive.is_some_and(|t| t.elapsed() < ALIVE_EVERY) {
                        continue;
                    }
                    last_alive = Some(Instant::now());
                }
                Word::NotReady(reason) => {
                    if last_not_ready.as_ref() == Some(reason) {
                        continue;
                    }
                    last_not_ready = Some(reason.clone());
                }
                Word::Ready => last_not_ready = None,
            }
            said(word);
        }
    }
}

/// One line: `ready`, `alive` or `not-ready <reason>`; anything else is no word.
pub fn parse(line: &[u8]) -> Option<Word> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r').trim();
    match text {
        "ready" => Some(Word::Ready),
        "alive" => Some(Word::Alive),
        _ => {
            let reason = text.strip_prefix("not-ready")?;
            if !reason.is_empty() && !reason.starts_with(' ') {
                return None;
            }
            let reason: String = reason
                .trim()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Some(Word::NotReady(if reason.is_empty() {
                "no reason given".into()
            } else {
                reason
            }))
        }
    }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;

    pub type Reader = UnixStream;
    pub type ChildEnd = OwnedFd;

    pub fn pair() -> io::Result<(Reader, ChildEnd)> {
        // Both ends close-on-exec (std's): no other child inherits them.
        let (reader, child) = UnixStream::pair()?;
        child.set_nonblocking(true)?;
        // The reader only reads: the child's writes then never block on it either way.
        reader.shutdown(std::net::Shutdown::Write)?;
        Ok((reader, OwnedFd::from(child)))
    }

    pub fn spawn_with<T>(
        child_end: ChildEnd,
        command: &mut Command,
        spawn: impl FnOnce(&mut Command) -> T,
    ) -> T {
        let fd = child_end.as_raw_fd();
        command.env(VAR, format!("fd:{fd}"));
        // SAFETY: only fcntl between fork and exec, which is async-signal-safe. The
        // end stays close-on-exec in master-launch: only this child keeps it (and on
        // Linux its reaper, which passes it on to the bot).
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = spawn(command);
        drop(child_end);
        spawned
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::io::{PipeReader, PipeWriter};
    use std::os::windows::io::AsRawHandle;
    use std::sync::Mutex;
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};
    use windows_sys::Win32::System::Pipes::{PIPE_NOWAIT, SetNamedPipeHandleState};

    pub type Reader = PipeReader;
    pub type ChildEnd = PipeWriter;

    /// Held from making a child's end inheritable until it is closed again: another
    /// run's spawn meanwhile would inherit it too.
    static INHERITING: Mutex<()> = Mutex::new(());

    pub fn pair() -> io::Result<(Reader, ChildEnd)> {
        let (reader, writer) = io::pipe()?;
        let mode = PIPE_NOWAIT;
        // SAFETY: a valid pipe handle, the mode by pointer; no other members changed.
        let ok = unsafe {
            SetNamedPipeHandleState(
                writer.as_raw_handle(),
                &mode,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((reader, writer))
    }

    pub fn spawn_with<T>(
        child_end: ChildEnd,
        command: &mut Command,
        spawn: impl FnOnce(&mut Command) -> T,
    ) -> T {
        let _inheriting = INHERITING.lock().unwrap_or_else(|e| e.into_inner());
        let handle = child_end.as_raw_handle();
        // SAFETY: a valid handle we own; only its inherit flag changes.
        unsafe { SetHandleInformation(handle, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT) };
        command.env(VAR, format!("handle:{}", handle as usize));
        let spawned = spawn(command);
        drop(child_end);
        spawned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_words_parse_and_nothing_else_does() {
        let cases: &[(&[u8], Option<Word>)] = &[
            (b"ready", Some(Word::Ready)),
            (b"ready\r", Some(Word::Ready)),
            (b"alive", Some(Word::Alive)),
            (
                b"not-ready terminal lost",
                Some(Word::NotReady("terminal lost".into())),
            ),
            (b"not-ready", Some(Word::NotReady("no reason given".into()))),
            (b"not-ready a\x1bb", Some(Word::NotReady("a b".into()))),
            (b"not-readyx", None),
            (b"READY", None),
            (b"ready now", None),
            (b"", None),
            (b"\xff\xfe", None),
        ];
        for (line, word) in cases {
            assert_eq!(&parse(line), word, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_stream_of_words_is_split_bounded_and_alive_is_thinned() {
        let mut input = Vec::new();
        input.extend_from_slice(b"alive\nalive\nalive\n");
        input.extend_from_slice(b"not-ready ");
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend_from_slice(b"\nnot-ready same\nnot-ready same\nready\nbogus\n");
        let said = std::sync::Mutex::new(Vec::new());
        read_words(&input[..], |w| {
            said.lock().unwrap_or_else(|e| e.into_inner()).push(w)
        });
        let said = said.into_inner().unwrap_or_else(|e| e.into_inner());
        assert_eq!(said[0], Word::Alive);
        assert!(matches!(&said[1], Word::NotReady(r) if r.len() == LINE_MAX - "not-ready ".len()));
        assert_eq!(
            &said[2..],
            &[Word::NotReady("same".into()), Word::Ready],
            "{said:?}"
        );
    }
}
