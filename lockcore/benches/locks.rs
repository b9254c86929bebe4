//! `cargo bench -p lockcore`: the lock operations every tool pays for.
//! Medians go in the README's performance section.

// A benchmark's report is its printed medians.
#![allow(clippy::print_stdout)]
use criterion::{Criterion, criterion_group, criterion_main};
use lockcore::{Acquire, LockClaim, LockDir, ProcessProbe};

/// A lock name of this run's own: every lock also takes a machine-wide name (DESIGN.md
/// rule 17), which another checkout's tests or benches may hold at the same time.
fn unique(name: &str) -> String {
    format!("{name}_{}", std::process::id())
}

fn acquire_release(c: &mut Criterion) {
    let name = unique("BRAIN_ATLAS");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().expect("process table");
    let claim = LockClaim::default();
    c.bench_function("acquire+release one lock", |b| {
        b.iter(|| match dir.acquire(&name, &claim, &mut probe) {
            Ok(Acquire::Acquired(held)) => held.release().expect("release"),
            other => panic!("bench lock not free: {other:?}"),
        })
    });
}

fn inspect_one(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().expect("process table");
    let name = unique("BRAIN_ATLAS");
    let _held = dir
        .acquire(&name, &LockClaim::default(), &mut probe)
        .expect("acquire");
    c.bench_function("inspect one held lock", |b| {
        b.iter(|| dir.inspect(&name, &mut probe).expect("inspect"))
    });
}

fn scan_hundred(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = LockDir::new(tmp.path());
    let mut probe = ProcessProbe::new().expect("process table");
    // 50 held by us, 50 stale (our own record format, no OS lock).
    let mut held = Vec::new();
    for i in 0..50 {
        match dir.acquire(
            &unique(&format!("HELD_{i}")),
            &LockClaim::default(),
            &mut probe,
        ) {
            Ok(Acquire::Acquired(lock)) => held.push(lock),
            other => panic!("cannot set up: {other:?}"),
        }
    }
    let record = std::fs::read(held[0].path()).expect("read record");
    for i in 0..50 {
        std::fs::write(tmp.path().join(format!("STALE_{i}.lock")), &record).expect("write");
    }
    c.bench_function("scan a lock dir of 100 files", |b| {
        b.iter(|| {
            let statuses = dir.scan(&mut probe).expect("scan");
            assert_eq!(statuses.len(), 100);
        })
    });
}

criterion_group!(benches, acquire_release, inspect_one, scan_hundred);
criterion_main!(benches);
