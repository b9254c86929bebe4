//! An `[[alert]]` command for tests on every platform (no shell, no Python):
//! `alert-sink EVENTS [SUMMARIES]` reads the event JSON on stdin and appends it to
//! EVENTS as one line; with SUMMARIES, appends there the one-line summary master-launch
//! gives in `DESK_ALERT_SUMMARY`.
// A test tool's errors are its stderr.
#![allow(clippy::print_stderr)]

use std::ffi::OsString;
use std::io::{Read, Write};

fn append(file: &OsString, line: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(events) = args.next() else {
        eprintln!("usage: alert-sink EVENTS [SUMMARIES]");
        return std::process::ExitCode::from(2);
    };
    let summaries = args.next();
    let mut event = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut event) {
        eprintln!("alert-sink: cannot read stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let summary = std::env::var("DESK_ALERT_SUMMARY").unwrap_or_default();
    let written = append(&events, event.trim_end()).and_then(|()| match &summaries {
        Some(file) => append(file, &summary),
        None => Ok(()),
    });
    match written {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alert-sink: cannot append: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
