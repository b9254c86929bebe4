//! `cargo bench -p master-launch --bench copy_scan`: one look for copies started by
//! hand (`copy_scan_secs`, `lockcore::copy_scan`), as master-launch's scan thread takes
//! it every interval, on a 5-account desk (11 processes under their locks) with 300
//! unrelated processes in the table. The median goes in the README.

// A benchmark's report is its printed medians.
#![allow(clippy::print_stdout)]
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_tests::{Desk, Running, tool};
use lockcore::copy_scan::CopyScan;
use lockcore::{Fleet, ProcessProbe};

fn one_scan(c: &mut Criterion) {
    let pid = std::process::id();
    let accounts: Vec<String> = ["SCA", "SCB", "SCC", "SCD", "SCE"]
        .iter()
        .map(|a| format!("{a}{pid}"))
        .collect();
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let desk = Desk::new(&format!("qs_scan_bench{pid}"), &accounts);
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
    let fleet = Fleet::load(&desk.config()).expect("the bench desk's fleet.toml");
    let mut probe = ProcessProbe::new().expect("a process probe");
    let mut scan = CopyScan::new();
    // Nothing to report: the cost of every scan of a healthy desk.
    let found = scan.scan(&fleet, &mut probe).expect("a scan");
    assert!(found.is_empty(), "{found:?}");
    let mut group = c.benchmark_group("copy scan, 11 managed + 300 other processes");
    group.sample_size(30);
    group.bench_function("one scan", |b| {
        b.iter(|| scan.scan(&fleet, &mut probe).expect("a scan"))
    });
    group.finish();
    drop(unrelated);
}

criterion_group!(benches, one_scan);
criterion_main!(benches);
