//! `cargo bench -p safe-shutdown` (Unix): stop the 11 processes of a 5-account desk.
//!
//! 1. Under master-launch, two brains stubborn (they ignore the graceful stop), the
//!    components' own `stop_timeout_secs` at 10 s, `--timeout 3`: the requester's
//!    deadline must win, so the goal is 3 s plus a little (T + 0.3 s).
//! 2. Hand-started copies (no holder), two stubborn, `--timeout 3`: safe-shutdown asks
//!    and forces them itself, in parallel.
//!
//! Five runs each; prints the medians. The medians go in the README.

// A benchmark's report is its printed medians.
#![allow(clippy::print_stdout)]
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::{Desk, Running, unique};

const ACCOUNTS: [&str; 5] = [
    "ATLAS_S",
    "BG_INSTANT_S",
    "BG_CHALLENGE_S",
    "GL_3_S",
    "FTMO_S",
];
const RUNS: usize = 5;
const TIMEOUT_SECS: u64 = 3;
const STUBBORN: [&str; 2] = ["BRAIN_ATLAS_S", "BRAIN_GL_3_S"];

/// `names` made this run's own (another checkout's suite may run alongside).
fn own<const N: usize>(names: [&str; N]) -> [String; N] {
    names.map(unique)
}

fn main() {
    report("under master-launch", &under_master_launch());
    report("hand-started, no holder", &hand_started());
}

fn safe_shutdown(desk: &Desk) -> Duration {
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_safe-shutdown"))
        .arg("--config")
        .arg(desk.config())
        .args(["--yes", "--timeout", &TIMEOUT_SECS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run safe-shutdown");
    let took = started.elapsed();
    assert!(status.success(), "safe-shutdown left survivors");
    took
}

fn under_master_launch() -> Vec<Duration> {
    let accounts = own(ACCOUNTS);
    let desk = Desk::with_options(
        &unique("qs_sbench_ml"),
        &accounts.each_ref().map(String::as_str),
        &[],
        "[defaults]\nstop_timeout_secs = 10\n",
    );
    let stubborn = own(STUBBORN);
    desk.add_args(&stubborn.each_ref().map(String::as_str), &["--ignore-stop"]);
    (0..RUNS)
        .map(|_| {
            let (mut launcher, lines) = fleet_tests::start_master_launch(&desk.config(), &[]);
            lines
                .wait_for("desk started", Duration::from_secs(30))
                .expect("the desk started");
            desk.wait_until_running();
            let took = safe_shutdown(&desk);
            let _ = launcher.child.wait();
            took
        })
        .collect()
}

fn hand_started() -> Vec<Duration> {
    let accounts = own(ACCOUNTS);
    let desk = Desk::new(
        &unique("qs_sbench"),
        &accounts.each_ref().map(String::as_str),
    );
    let stubborn = own(STUBBORN);
    let stand_in = fleet_tests::stand_in();
    (0..RUNS)
        .map(|_| {
            let bots: Vec<Running> = desk
                .component_names()
                .iter()
                .map(|name| {
                    let mut command = Command::new(&stand_in);
                    command.arg(name).stdout(Stdio::null());
                    if stubborn.contains(name) {
                        command.arg("--ignore-stop");
                    }
                    Running::new(command.spawn().expect("spawn stand-in"))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let took = safe_shutdown(&desk);
            drop(bots);
            took
        })
        .collect()
}

fn report(what: &str, times: &[Duration]) {
    let mut times = times.to_vec();
    times.sort();
    println!(
        "safe-shutdown --yes --timeout {TIMEOUT_SECS}, 11 processes (2 stubborn), {what}: \
         median {:.2} s over {RUNS} runs (min {:.2} s, max {:.2} s)",
        times[RUNS / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[RUNS - 1].as_secs_f64(),
    );
}
