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
        Printer::writing_to(format!("{stream:?} printer"), move || match stream {
            Stream::Out => Box::new(std::io::stdout()),
            Stream::Err => Box::new(std::io::stderr()),
        })
    }

    /// A printer whose thread (named `name`) writes to what `open` returns.
    fn writing_to(name: String, open: impl FnOnce() -> Box<dyn Write> + Send + 'static) -> Printer {
        let (sender, receiver) = sync_channel(BACKLOG);
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || write_all(open(), &receiver));
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

    /// indicatif's draw target through this printer (as uv's `Printer::target()`): a
    /// progress bar's redraws queue behind the writer thread like every line, so a
    /// console frozen by QuickEdit stalls no caller (a stop, say).
    pub fn target(&self) -> indicatif::ProgressDrawTarget {
        indicatif::ProgressDrawTarget::term_like(Box::new(Target(self.clone())))
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

fn write_all(mut out: Box<dyn Write>, receiver: &Receiver<Message>) {
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

/// A terminal for indicatif that writes through a [`Printer`]: cursor moves and line
/// clears as ANSI sequences (enabled on Windows consoles by `output`).
#[derive(Debug)]
struct Target(Printer);

impl Target {
    fn escape(&self, n: usize, code: char) -> std::io::Result<()> {
        if n > 0 {
            self.0.write(format!("\x1b[{n}{code}"));
        }
        Ok(())
    }
}

impl indicatif::TermLike for Target {
    fn width(&self) -> u16 {
        console::Term::stderr().size().1
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.escape(n, 'D')
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.line(s);
        Ok(())
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write(s.to_string());
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.0.write("\r\x1b[2K".to_string());
        Ok(())
    }

    /// The writer thread flushes after every write; waiting here could block on a
    /// frozen console.
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
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

    /// What a printer wrote, shared with the test.
    #[derive(Debug, Clone, Default)]
    struct Written(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_progress_bar_draws_through_its_printer() {
        let written = Written::default();
        let sink = written.clone();
        let printer = Printer::writing_to("test printer".into(), move || Box::new(sink));
        let bar = indicatif::ProgressBar::with_draw_target(None, printer.target());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message("brains      1/2 stopped");
        bar.tick();
        bar.println("forcing BRAIN_A");
        bar.finish_with_message("brains      2/2 stopped");
        printer.flush();
        let text = String::from_utf8_lossy(&written.0.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
        for expected in ["brains      1/2 stopped", "forcing BRAIN_A", "2/2 stopped"] {
            assert!(text.contains(expected), "{expected:?} not in {text:?}");
        }
    }

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
