//! The stand-in bot's side of master-launch's notify channel (`DESK_NOTIFY=fd:<n>`):
//! `--notify MS:LINE`, `--heartbeat-ms` and `--heartbeat-until-ms` write the right lines,
//! in order, to a real socket, and a missing or broken channel changes nothing else.
//!
//! Unix only (a socketpair end handed down as a descriptor); the Windows handle is
//! exercised by master-launch's own tests under Wine. No locks are taken: the stand-in
//! runs without `FLEET_LOCK_NAME`; its names start with `NTFY_SI_`.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[cfg(unix)]
mod unix {
    use std::io::{ErrorKind, Read};
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use fleet_tests::{Lines, Running, spawn_reader, stand_in};

    /// The stand-in named `name` with `args`, its stdout read into lines; with
    /// `channel`, the descriptor is left open in it (in the child only: other tests'
    /// children must not inherit it) and named in `DESK_NOTIFY`.
    fn start(
        name: &str,
        args: &[&str],
        channel: Option<RawFd>,
        notify: Option<&str>,
    ) -> (Running, Lines) {
        let mut command = Command::new(stand_in());
        command
            .arg(name)
            .args(args)
            .env_remove("FLEET_LOCK_NAME")
            .env_remove("FLEET_LOCK_FILE")
            .env_remove("DESK_NOTIFY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(spec) = notify {
            command.env("DESK_NOTIFY", spec);
        }
        if let Some(fd) = channel {
            command.env("DESK_NOTIFY", format!("fd:{fd}"));
            // SAFETY: between fork and exec only fcntl runs (async-signal-safe), on a
            // descriptor the parent keeps open until spawn returns.
            unsafe {
                command.pre_exec(move || {
                    let fd = BorrowedFd::borrow_raw(fd);
                    nix::fcntl::fcntl(
                        fd,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )
                    .map(drop)
                    .map_err(Into::into)
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let lines = spawn_reader(child.stdout.take().unwrap());
        (Running::new(child), lines)
    }

    /// A socketpair as master-launch makes it: the bot's end non-blocking.
    fn pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    /// The complete lines read from `stream` until `count` came or `window` passed.
    fn read_lines(stream: &mut UnixStream, count: usize, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    data.extend_from_slice(&buffer[..n]);
                    if data.iter().filter(|&&b| b == b'\n').count() >= count {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the channel: {e}"),
            }
        }
        let text = String::from_utf8(data).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "a line cut short: {text:?}"
        );
        text.lines().map(str::to_string).collect()
    }

    /// `--notify MS:LINE` lines and heartbeats arrive on the descriptor in time order, one
    /// line each; heartbeats stop at `--heartbeat-until-ms` while the bot runs on; each
    /// line is logged as `said: LINE`; a plain `--say TEXT` is still only printed.
    #[test]
    fn stand_in_says_timed_lines_and_heartbeats_on_the_notify_fd() {
        let (mut ours, theirs) = pair();
        let name = "NTFY_SI_say";
        let (mut bot, lines) = start(
            name,
            &[
                "--notify",
                "300:not-ready terminal lost",
                "--notify",
                "100:ready",
                "--heartbeat-ms",
                "50",
                "--heartbeat-until-ms",
                "400",
                "--say",
                "plain text",
            ],
            Some(theirs.as_raw_fd()),
            None,
        );
        drop(theirs);
        let mut want = vec!["alive", "ready", "alive", "alive", "alive", "alive"];
        want.extend(["not-ready terminal lost", "alive", "alive", "alive"]);
        let said = read_lines(&mut ours, want.len(), Duration::from_secs(30));
        assert_eq!(said, want);
        assert!(
            bot.child.try_wait().unwrap().is_none(),
            "the stand-in must run on after its heartbeats stop"
        );
        // Nothing more once heartbeats stopped, though the bot still runs.
        assert_eq!(
            read_lines(&mut ours, 1, Duration::from_millis(300)),
            Vec::<String>::new()
        );
        assert!(bot.child.try_wait().unwrap().is_none());

        bot.kill();
        let log = lines.collect();
        let logged: Vec<&str> = log
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{name}: said: ")))
            .collect();
        assert_eq!(logged, want, "{log:#?}");
        assert!(log.contains(&format!("{name}: plain text")), "{log:#?}");
    }

    /// Without a channel, with a malformed or closed one, and with the reader gone
    /// (EPIPE), the stand-in says its lines (logged), keeps beating and stops cleanly.
    #[test]
    fn stand_in_without_a_working_channel_runs_and_stops_as_before() {
        let (ours, theirs) = pair();
        drop(ours); // the reader is gone: every write is EPIPE
        let cases: [(&str, Option<RawFd>, Option<&str>); 5] = [
            ("NTFY_SI_none", None, None),
            ("NTFY_SI_abc", None, Some("fd:abc")),
            ("NTFY_SI_closed", None, Some("fd:999")),
            ("NTFY_SI_handle", None, Some("handle:1")),
            ("NTFY_SI_epipe", Some(theirs.as_raw_fd()), None),
        ];
        for (name, channel, notify) in cases {
            let (mut bot, lines) = start(
                name,
                &["--notify", "0:ready", "--heartbeat-ms", "20"],
                channel,
                notify,
            );
            for needle in ["said: ready", "said: alive", "said: alive", "said: alive"] {
                assert!(
                    lines.wait_for(needle, Duration::from_secs(30)).is_some(),
                    "{name}: no `{needle}`"
                );
            }
            assert!(bot.child.try_wait().unwrap().is_none(), "{name} died");
            let status = Command::new("kill")
                .args(["-TERM", &bot.pid().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            assert!(
                lines
                    .wait_for(&format!("{name}: stopped"), Duration::from_secs(30))
                    .is_some(),
                "{name} did not stop cleanly"
            );
            assert_eq!(bot.child.wait().unwrap().code(), Some(0), "{name}");
        }
    }
}
