//! `cargo bench -p master-launch` (Linux): a 5-account desk of stand-in bots (11
//! processes).
//!
//! - `start to 11 running`: criterion, from spawning master-launch until every component
//!   runs once under its lock (as `DeskSnapshot` sees it).
//! - idle: then one minute of supervising: CPU time used per minute, and peak memory
//!   (VmHWM), printed as medians of six 10-second windows; and what each bot's reaper
//!   (DESIGN.md rule 14: the process that holds its tree) costs: resident memory
//!   (VmRSS) and CPU over that minute, medians of the 11.
//!
//! - `start to 11 running, ready = "notify"`: the same, every bot saying `ready` at once
//!   (DESIGN.md rule 15: a brain starts when its watchdog is ready, not after 0.5 s).
//! - heartbeats: a 50-account desk (101 processes), each saying `alive` every second
//!   (`heartbeat_secs = 5`), against the same desk without: master-launch's CPU per
//!   minute, medians of three 10-second windows.
//!
//! - watchdog back after kill -9: from killing a supervised watchdog (SIGKILL) until
//!   its lock records the new one, on a fresh desk each time (the first restart after
//!   a crash is immediate; later ones back off), printed as the median of 15.
//!
//! The medians go in the README.

// A benchmark's report is its printed medians.
#![allow(clippy::print_stdout)]
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use fleet_tests::{Desk, unique};
use lockcore::{DeskSnapshot, Fleet, ProcessProbe};

const ACCOUNTS: [&str; 5] = [
    "ATLAS_M",
    "BG_INSTANT_M",
    "BG_CHALLENGE_M",
    "GL_3_M",
    "FTMO_M",
];

/// [`ACCOUNTS`] made this run's own (another checkout's suite may run alongside).
fn accounts() -> [String; 5] {
    ACCOUNTS.map(unique)
}

fn launch(desk: &Desk) -> Child {
    Command::new(env!("CARGO_BIN_EXE_master-launch"))
        .arg("--config")
        .arg(desk.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn master-launch")
}

fn all_running(fleet: &Fleet, probe: &mut ProcessProbe) -> bool {
    let Ok(snapshot) = DeskSnapshot::take(fleet, probe) else {
        return false;
    };
    snapshot
        .components
        .iter()
        .all(|v| v.copies.len() == 1 && v.copies[0].locked && v.managed.is_some())
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn start_to_running(c: &mut Criterion) {
    let accounts = accounts();
    let accounts = accounts.each_ref().map(String::as_str);
    let settle = Desk::new(&unique("qs_mbench"), &accounts);
    let notify = Desk::with_options(
        &unique("qs_mbench"),
        &accounts,
        &["--notify", "0:ready"],
        "[defaults]\nready = \"notify\"\n",
    );
    let mut group = c.benchmark_group("master-launch, 5 accounts");
    group.sample_size(10);
    for (name, desk) in [
        ("start to 11 running", settle),
        ("start to 11 running, ready = notify", notify),
    ] {
        bench_start(&mut group, name, &desk);
    }
    group.finish();
}

fn bench_start(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    desk: &Desk,
) {
    let fleet = Fleet::load(&desk.config()).expect("config");
    let mut probe = ProcessProbe::new().expect("process table");
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                let child = launch(desk);
                while !all_running(&fleet, &mut probe) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                total += started.elapsed();
                stop(child);
            }
            total
        })
    });
}

/// CPU time (ms) and peak resident memory (KiB) of a process, from /proc.
fn cpu_and_peak(pid: u32) -> (u64, u64) {
    let mut probe = sysinfo::System::new().expect("process table");
    let sys_pid = sysinfo::Pid::from_u32(pid);
    probe.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[sys_pid]),
        true,
        sysinfo::ProcessRefreshKind::nothing()
            .with_cpu()
            .without_tasks(),
    );
    let cpu_ms = probe
        .process(sys_pid)
        .map_or(0, |p| p.accumulated_cpu_time());
    (cpu_ms, status_number(pid, "VmHWM:"))
}

/// A number from `/proc/PID/status` (`VmHWM:`, `VmRSS:` in KiB; `PPid:`); 0 if absent.
fn status_number(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// master-launch's CPU (ms per minute) while a running desk idles for 30 s: the median
/// of three 10-second windows.
fn idle_cpu(desk: &Desk) -> f64 {
    let fleet = Fleet::load(&desk.config()).expect("config");
    let mut probe = ProcessProbe::new().expect("process table");
    let child = launch(desk);
    while !all_running(&fleet, &mut probe) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id();
    let mut cpu_per_minute = Vec::new();
    let (mut last_cpu, _) = cpu_and_peak(pid);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(10));
        let (cpu, _) = cpu_and_peak(pid);
        cpu_per_minute.push((cpu - last_cpu) as f64 * 6.0);
        last_cpu = cpu;
    }
    stop(child);
    median(cpu_per_minute)
}

fn heartbeats() {
    let accounts: Vec<String> = (0..50).map(|i| unique(&format!("HB{i}_M"))).collect();
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let plain = Desk::new(&unique("qs_mbeat"), &accounts);
    let beating = Desk::with_options(
        &unique("qs_mbeat"),
        &accounts,
        &["--heartbeat-ms", "1000"],
        "[defaults]\nheartbeat_secs = 5\n",
    );
    let without = idle_cpu(&plain);
    drop(plain);
    let with = idle_cpu(&beating);
    println!(
        "master-launch idle, 101 processes: median CPU {without:.0} ms per minute without \
         heartbeats, {with:.0} ms with one per process per second ({:.3} % of one core more)",
        (with - without) / 600.0
    );
}

fn idle_minute() {
    let accounts = accounts();
    let desk = Desk::new(
        &unique("qs_midle"),
        &accounts.each_ref().map(String::as_str),
    );
    let fleet = Fleet::load(&desk.config()).expect("config");
    let mut probe = ProcessProbe::new().expect("process table");
    let child = launch(&desk);
    while !all_running(&fleet, &mut probe) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id();
    let window = Duration::from_secs(10);
    let (mut cpu_per_minute, mut peaks) = (Vec::new(), Vec::new());
    let (mut last_cpu, _) = cpu_and_peak(pid);
    for _ in 0..6 {
        std::thread::sleep(window);
        let (cpu, peak) = cpu_and_peak(pid);
        cpu_per_minute.push((cpu - last_cpu) as f64 * 6.0);
        peaks.push(peak as f64);
        last_cpu = cpu;
    }
    let reapers = reaper_cost(pid);
    println!(
        "each bot's reaper over that minute: median {:.2} MiB resident (VmRSS), {:.0} ms CPU \
         ({} reapers)",
        median(reapers.iter().map(|r| r.1 as f64 / 1024.0).collect()),
        median(reapers.iter().map(|r| r.0 as f64).collect()),
        reapers.len()
    );
    println!(
        "master-launch idle, 11 processes: median CPU {:.0} ms per minute ({:.3} % of one core), \
         peak memory (VmHWM) {:.1} MiB",
        median(cpu_per_minute.clone()),
        median(cpu_per_minute) / 600.0,
        median(peaks) / 1024.0
    );
    stop(child);
}

/// CPU time (ms) and resident memory (KiB) of each reaper, master-launch's children.
fn reaper_cost(master_launch: u32) -> Vec<(u64, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| status_number(*pid, "PPid:") == u64::from(master_launch))
        .map(|pid| (cpu_and_peak(pid).0, status_number(pid, "VmRSS:")))
        .collect()
}

/// The pid the lock of `name` records as its running bot, if the bot runs.
fn managed(lock_dir: &std::path::Path, name: &str, probe: &mut ProcessProbe) -> Option<u32> {
    let status = lockcore::LockDir::new(lock_dir)
        .inspect(name, probe)
        .ok()??;
    let record = status.record?;
    (record.holder_pid != Some(record.pid) && probe.identity(record.pid).is_some())
        .then_some(record.pid)
}

fn watchdog_back_after_kill() {
    let plain = restart_gaps("");
    // An alert command that never ends, told of every start, exit and restart: it
    // runs off the supervision path, so the restart must be as fast as without it.
    let stuck = restart_gaps(
        "[[alert]]\ncommand = [\"sleep\", \"100000\"]\n\
         kinds = [\"started\", \"exited\", \"restarting\"]\ntimeout_secs = 600\n",
    );
    for (what, gaps) in [("", &plain), (", with a stuck alert command", &stuck)] {
        let (min, max) = (
            gaps.iter().copied().fold(f64::MAX, f64::min),
            gaps.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "watchdog back after kill -9 (fresh desk, first restart{what}): median {:.1} ms \
             (min {min:.1}, max {max:.1}, {} runs)",
            median(gaps.clone()),
            gaps.len()
        );
    }
}

/// Kill -9 of a supervised watchdog until its lock records the new one, on 15 fresh
/// desks with `tail` added to their fleet.toml.
fn restart_gaps(tail: &str) -> Vec<f64> {
    let desk = Desk::with_options(&unique("qs_mkill"), &[&unique("KILL_M")], &[], tail);
    let watchdog = unique("WATCHDOG_KILL_M");
    let fleet = Fleet::load(&desk.config()).expect("config");
    let mut probe = ProcessProbe::new().expect("process table");
    let mut gaps = Vec::new();
    for _ in 0..15 {
        let child = launch(&desk);
        while !all_running(&fleet, &mut probe) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let old = managed(&fleet.lock_dir, &watchdog, &mut probe).expect("watchdog pid");
        let killed = Instant::now();
        let _ = Command::new("kill")
            .args(["-KILL", &old.to_string()])
            .status();
        loop {
            match managed(&fleet.lock_dir, &watchdog, &mut probe) {
                Some(pid) if pid != old => break,
                _ => std::thread::sleep(Duration::from_micros(500)),
            }
        }
        gaps.push(killed.elapsed().as_secs_f64() * 1000.0);
        stop(child);
    }
    gaps
}

criterion_group!(benches, start_to_running);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench -p master-launch -- heartbeats` runs that part alone (criterion
    // takes the same word as its filter and so runs none of its own).
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    if wanted("watchdog_back_after_kill") {
        watchdog_back_after_kill();
    }
    if wanted("idle_minute") {
        idle_minute();
    }
    if wanted("heartbeats") {
        heartbeats();
    }
}
