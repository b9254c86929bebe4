//! `cargo bench -p check-procs`: whole-process time of one `check-procs` run on a
//! 5-account desk (11 managed processes under their locks) with 300 unrelated
//! processes in the table. The median goes in the README.

// A benchmark's report is its printed medians.
#![allow(clippy::print_stdout)]
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_tests::{Desk, Running, tool, unique};

fn whole_process(c: &mut Criterion) {
    // Names of this run's own: another checkout's suite may run alongside.
    let accounts = [
        "ATLAS_B",
        "BG_INSTANT_B",
        "BG_CHALLENGE_B",
        "GL_3_B",
        "FTMO_B",
    ]
    .map(unique);
    let accounts = accounts.each_ref().map(String::as_str);
    let desk = Desk::new(&unique("qs_bench"), &accounts);
    let managed: Vec<Running> = desk
        .component_names()
        .iter()
        .map(|name| desk.start_locked(name, &[]))
        .collect();
    assert_eq!(managed.len(), 11);
    let idle = tool("fleet-tests", "lock-taker");
    let unrelated: Vec<Running> = (0..300)
        .map(|_| {
            let child = Command::new(&idle)
                .arg("idle")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn idle process");
            Running::new(child)
        })
        .collect();
    let exe = env!("CARGO_BIN_EXE_check-procs");
    let run = |json: bool| {
        let mut command = Command::new(exe);
        command.arg("--config").arg(desk.config());
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("run check-procs");
        assert_eq!(output.status.code(), Some(0), "{output:?}");
    };
    let mut group = c.benchmark_group("check-procs, 11 managed + 300 other processes");
    group.sample_size(30);
    group.bench_function("table", |b| b.iter(|| run(false)));
    group.bench_function("--json", |b| b.iter(|| run(true)));
    group.finish();
    drop(unrelated);
}

criterion_group!(benches, whole_process);
criterion_main!(benches);
