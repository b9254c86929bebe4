//! The one way the tools write to stdout and stderr: [`Printer`], with the [`outln!`]
//! and [`errln!`] macros (uv funnels its output through one printer the same way).
//!
//! `print!` panics when its stream is gone: a pipe whose reader exited (`| head -n 1`),
//! a terminal that closed (EIO), an invalid handle on Windows. A panic in the
//! orchestrator takes its children with it, out of order; in safe-shutdown it would
//! end the emergency stop half-way. So output goes through a writer thread per stream:
//! - a failed write turns that stream off for good, silently: the tools' log files keep
//!   everything that matters, and nothing else depends on the terminal;
//! - a caller never blocks on the console: a console frozen by QuickEdit (a click into
//!   a Windows 10 console window) holds up only the writer thread, and lines beyond a
//!   bounded backlog are dropped rather than queued without end.
//!
//! [`Printer::flush`] waits (bounded) until what was written so far is out; every
//! binary's `finish` calls it before exiting.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Lines waiting for a slow console before new ones are dropped.
const BACKLOG: usize = 4096;
/// How long [`Printer::flush`] waits for a stuck console.
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

/// A stream that a writer thread owns.
#[derive(Debug, Clone)]
pub struct Printer {
    sender: SyncSender<Message>,
}

#[derive(Debug)]
enum Message {
    Text(String),
    /// Answered once everything before it was written (or the stream is gone).
    Flush(SyncSender<()>),
}

/// Which standard stream a printer writes to.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Printer {
    fn start(stream: Stream) -> Printer {
        let (sender, receiver) = sync_channel(BACKLOG);
        let spawned = std::thread::Builder::new()
            .name(format!("{stream:?} printer"))
            .spawn(move || write_all(stream, &receiver));
        // Without a thread (the OS refused one) the receiver is gone: sends fail,
        // and output is dropped, which is what a closed stream means too.
        drop(spawned);
        Printer { sender }
    }

    /// Writes `text` and a newline, without blocking and without ever failing.
    pub fn line(&self, text: impl Into<String>) {
        let mut text = text.into();
        text.push('\n');
        self.write(text);
    }

    /// Writes `text` as it is (redraws, prompts).
    pub fn write(&self, text: String) {
        match self.sender.try_send(Message::Text(text)) {
            Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits until everything written so far is out, or the stream is gone, or a
    /// stuck console has had [`FLUSH_PATIENCE`].
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.sender.try_send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_PATIENCE);
        }
    }
}

fn write_all(stream: Stream, receiver: &Receiver<Message>) {
    let mut out: Box<dyn Write> = match stream {
        Stream::Out => Box::new(std::io::stdout()),
        Stream::Err => Box::new(std::io::stderr()),
    };
    for message in receiver {
        match message {
            Message::Text(text) => {
                if out
                    .write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // The stream is gone: stop here; senders see a closed channel.
                    return;
                }
            }
            Message::Flush(done) => {
                let _ = done.try_send(());
            }
        }
    }
}

/// The printer for stdout, started on first use.
pub fn stdout() -> &'static Printer {
    static OUT: OnceLock<Printer> = OnceLock::new();
    OUT.get_or_init(|| Printer::start(Stream::Out))
}

/// The printer for stderr, started on first use.
pub fn stderr() -> &'static Printer {
    static ERR: OnceLock<Printer> = OnceLock::new();
    ERR.get_or_init(|| Printer::start(Stream::Err))
}

/// Flushes both printers; for the end of `main`.
pub fn flush_all() {
    stdout().flush();
    stderr().flush();
}

/// `println!` that never panics: through [`stdout()`].
#[macro_export]
macro_rules! outln {
    () => { $crate::printer::stdout().line(String::new()) };
    ($($arg:tt)*) => { $crate::printer::stdout().line(format!($($arg)*)) };
}

/// `eprintln!` that never panics: through [`stderr()`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::printer::stderr().line(format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_backlog_drops_lines_instead_of_blocking() {
        // A printer whose writer never runs: every send beyond the backlog must
        // return at once.
        let (sender, _receiver) = sync_channel(2);
        let printer = Printer { sender };
        let started = std::time::Instant::now();
        for i in 0..10_000 {
            printer.line(format!("line {i}"));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_gone_stream_swallows_output_and_flush_returns() {
        let (sender, receiver) = sync_channel(4);
        drop(receiver);
        let printer = Printer { sender };
        printer.line("nobody reads this");
        printer.flush();
    }
}
