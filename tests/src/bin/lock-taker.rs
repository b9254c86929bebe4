//! A stand-in process for lock races: takes a lock through `lockcore` exactly as a
//! tool would, and reports on stdout, one JSON object a line.
//!
//! ```text
//! lock-taker race  DIR NAME GO_FILE RELEASE_FILE   one attempt when GO_FILE appears;
//!                                                  a winner holds until RELEASE_FILE appears
//! lock-taker hold  DIR NAME [WATCH_MS]             hold until killed; report a lost file on stderr
//! lock-taker cycle DIR NAME GO_FILE ROUNDS         acquire/verify/release ROUNDS times, checking
//!                                                  that no one else holds it at the same time
//! lock-taker abandon DIR NAME                      acquire, then exit without releasing, as a
//!                                                  crash would: leaves a stale file
//! lock-taker idle                                  sleep until killed (a live, lock-less process)
//! lock-taker run DIR NAME PROGRAM [ARGS...]         hold NAME while PROGRAM runs, recorded as the
//!                                                  managed process (a bare-bones launcher)
//! ```
//!
//! Mutual exclusion is checked independently of the lock: a holder creates
//! `NAME.occupied` with `create_new` and removes it before releasing; finding it
//! already there means two holders at once.

// A test helper whose stdout is its report to the test: plain prints are what it needs.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_tests::Barrier;
use lockcore::{Acquire, LockClaim, LockDir, ProcessProbe};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let mut probe = ProcessProbe::new().unwrap_or_else(|e| fail(&e.to_string()));
    let dir = LockDir::new(arg(1));
    let name = arg(2);
    match arg(0).as_str() {
        "race" => race(
            &dir,
            &name,
            Path::new(&arg(3)),
            Path::new(&arg(4)),
            &mut probe,
        ),
        "hold" => hold(&dir, &name, arg(3).parse().unwrap_or(200), &mut probe),
        "cycle" => cycle(
            &dir,
            &name,
            Path::new(&arg(3)),
            arg(4).parse().unwrap_or(1),
            &mut probe,
        ),
        "abandon" => abandon(&dir, &name, &mut probe),
        "run" => run(&dir, &name, &args[3.min(args.len())..], &mut probe),
        "idle" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => fail(&format!("unknown mode `{other}`")),
    }
}

fn claim() -> LockClaim {
    LockClaim {
        account: Some("TEST".into()),
        command: std::env::args().collect(),
    }
}

fn race(dir: &LockDir, name: &str, go: &Path, release: &Path, probe: &mut ProcessProbe) {
    println!("{{\"ready\": {}}}", std::process::id());
    Barrier::wait(go);
    match dir.acquire(name, &claim(), probe) {
        Ok(Acquire::Acquired(held)) => {
            println!(
                "{{\"outcome\": \"acquired\", \"pid\": {}}}",
                std::process::id()
            );
            Barrier::wait(release);
            if let Err(e) = held.release() {
                fail(&e.to_string());
            }
        }
        Ok(Acquire::Held(holder)) => {
            // A holder in another lock folder is known by its machine-wide name only.
            let holder_pid = holder
                .record
                .as_ref()
                .and_then(|r| r.holder_pid)
                .or(holder.machine.as_ref().and_then(|m| m.pid))
                .unwrap_or(0);
            println!("{{\"outcome\": \"held\", \"holder_pid\": {holder_pid}}}");
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn hold(dir: &LockDir, name: &str, watch_ms: u64, probe: &mut ProcessProbe) {
    let held = match dir.acquire(name, &claim(), probe) {
        Ok(Acquire::Acquired(held)) => held,
        Ok(Acquire::Held(holder)) => fail(&holder.to_string()),
        Err(e) => fail(&e.to_string()),
    };
    println!(
        "{{\"outcome\": \"acquired\", \"pid\": {}}}",
        std::process::id()
    );
    let watcher = held.watcher().unwrap_or_else(|e| fail(&e.to_string()));
    loop {
        std::thread::sleep(Duration::from_millis(watch_ms));
        match watcher.check() {
            Ok(None) => {}
            Ok(Some(retaken)) => eprintln!("LOCK TAKEN AGAIN: {retaken}"),
            Err(lost) => {
                eprintln!("LOCK LOST: {lost}");
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

fn cycle(dir: &LockDir, name: &str, go: &Path, rounds: u32, probe: &mut ProcessProbe) {
    let occupied = dir.path().join(format!("{name}.occupied"));
    Barrier::wait(go);
    let (mut won, mut lost) = (0u32, 0u32);
    for _ in 0..rounds {
        match dir.acquire(name, &claim(), probe) {
            Ok(Acquire::Acquired(held)) => {
                won += 1;
                occupy(&occupied);
                std::thread::sleep(Duration::from_micros(200));
                if let Err(e) = held.verify() {
                    println!("ERROR: {e}");
                }
                vacate(&occupied);
                if let Err(e) = held.release() {
                    println!("ERROR: {e}");
                }
            }
            Ok(Acquire::Held(_)) => lost += 1,
            Err(e) => fail(&e.to_string()),
        }
        // Leave the name free now and then, so crashed holders' files can appear.
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("{{\"won\": {won}, \"lost\": {lost}}}");
}

fn run(dir: &LockDir, name: &str, command: &[String], probe: &mut ProcessProbe) {
    let mut held = match dir.acquire(name, &claim(), probe) {
        Ok(Acquire::Acquired(held)) => held,
        Ok(Acquire::Held(holder)) => fail(&holder.to_string()),
        Err(e) => fail(&e.to_string()),
    };
    let Some((program, args)) = command.split_first() else {
        fail("run needs a program");
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .env("FLEET_LOCK_NAME", name)
        .env("FLEET_LOCK_FILE", held.path())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {program}: {e}")));
    let identity = probe
        .identity(child.id())
        .unwrap_or_else(|| fail("the child died at once"));
    if let Err(e) = held.set_managed(identity, command.to_vec()) {
        fail(&e.to_string());
    }
    println!("{{\"outcome\": \"running\", \"pid\": {}}}", child.id());
    let status = child.wait();
    // LOCK_TAKER_LINGER_MS: keep holding after the child is gone (a launcher waiting
    // to restart it).
    let linger = std::env::var("LOCK_TAKER_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    std::thread::sleep(Duration::from_millis(linger.unwrap_or(0)));
    drop(held);
    std::process::exit(status.ok().and_then(|s| s.code()).unwrap_or(1));
}

fn abandon(dir: &LockDir, name: &str, probe: &mut ProcessProbe) {
    if let Ok(Acquire::Acquired(held)) = dir.acquire(name, &claim(), probe) {
        // Exit without running destructors: the kernel drops the OS lock, the file stays.
        std::mem::forget(held);
    }
    std::process::exit(0);
}

fn occupy(marker: &PathBuf) {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_err()
    {
        println!(
            "ERROR: two holders at once: {} already exists",
            marker.display()
        );
    }
}

fn vacate(marker: &PathBuf) {
    let _ = std::fs::remove_file(marker);
}

fn fail(message: &str) -> ! {
    eprintln!("lock-taker: {message}");
    std::process::exit(2);
}
