//! `cargo bench -p safe-shutdown` (Unix): stop the 11 processes of a 5-account desk,
//! two of them stubborn (they ignore the graceful stop), with a 10 s timeout. Five
//! runs; prints the median wall time next to what a sequential stop would take
//! (one timeout per process). The median goes in the README.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::{Desk, Running};

const ACCOUNTS: [&str; 5] = [
    "ATLAS_S",
    "BG_INSTANT_S",
    "BG_CHALLENGE_S",
    "GL_3_S",
    "FTMO_S",
];
const RUNS: usize = 5;
const TIMEOUT_SECS: u64 = 10;

fn main() {
    let desk = Desk::new("qs_sbench", &ACCOUNTS);
    let stand_in = fleet_tests::stand_in();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let bots: Vec<Running> = desk
            .component_names()
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut command = Command::new(&stand_in);
                command.arg(name).stdout(Stdio::null());
                // Two stubborn brains (positions 2 and 4 are brains).
                if i == 2 || i == 4 {
                    command.arg("--ignore-stop");
                }
                Running::new(command.spawn().expect("spawn stand-in"))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_safe-shutdown"))
            .arg("--config")
            .arg(desk.config())
            .args(["--yes", "--timeout", &TIMEOUT_SECS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run safe-shutdown");
        times.push(started.elapsed());
        assert!(status.success(), "safe-shutdown left survivors");
        drop(bots);
    }
    times.sort();
    println!(
        "safe-shutdown, 11 processes (2 stubborn), --timeout {TIMEOUT_SECS}: median {:.2} s over {RUNS} runs \
         (min {:.2} s, max {:.2} s); a sequential stop would take up to {} s",
        times[RUNS / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[RUNS - 1].as_secs_f64(),
        11 * TIMEOUT_SECS
    );
}
