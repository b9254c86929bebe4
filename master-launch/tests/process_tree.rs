//! A component is its whole process tree (DESIGN.md rule 14), tried with bots that do
//! what real ones do: fork a worker, start a child and a grandchild, daemonize. With
//! real processes, real locks and master-launch itself.
//!
//! - kill -9 of master-launch (TerminateProcess under Wine): nothing any bot started
//!   survives, daemons included.
//! - A brain whose order loop runs in a forked worker, its main process killed: the old
//!   worker is gone before the restart's brain starts (never two order writers).
//! - A brain that daemonizes under `restart = "always"`: at most one order writer at
//!   any moment, and its daemon ends with it.
//! - A restart beside a copy started by hand is refused, loudly.
//! - Linux: a worker whose main thread exited (shown as a zombie) is ended too; a
//!   reaper killed by hand gets its group killed and its brain given up, not restarted;
//!   a reaper stopped by SIGSTOP still ends its tree when master-launch is killed.
//!
//! Names carry this test process's pid: copies are recognised machine-wide, and another
//! checkout's suite may run at the same time.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fleet_tests::orchestrated::wait_logged;
use fleet_tests::wine::race_rounds;
use fleet_tests::{Desk, PidGuard, start_master_launch, wait_until};

/// A name no other test, and no other run, uses.
fn unique(what: &str) -> String {
    format!("{what}{}", std::process::id())
}

/// The live processes (zombies excluded) with `tag` in an argument, as (pid, command
/// line). On Linux each bot's reaper (master-launch again) is one of them.
fn processes_tagged(tag: &str) -> Vec<(u32, String)> {
    use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};
    let mut system = System::new().unwrap();
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always),
    );
    let mut found: Vec<(u32, String)> = system
        .processes()
        .values()
        // sysinfo lists a Linux process's threads too.
        .filter(|p| p.status() != ProcessStatus::Zombie && p.thread_kind().is_none())
        .filter(|p| {
            p.cmd()
                .iter()
                .skip(1)
                .any(|a| a.to_string_lossy().contains(tag))
        })
        .map(|p| {
            let cmd: Vec<String> = p
                .cmd()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            (p.pid().as_u32(), cmd.join(" "))
        })
        .collect();
    found.sort();
    found
}

/// kill -9 of master-launch with a five-account desk whose every bot started a child,
/// a grandchild (through a child) and a daemon (whose parent exited at once; on Unix in
/// a session of its own): moments later nothing of any bot runs. Under Wine the kill is
/// TerminateProcess and the bots' Job Objects do the work, breakaway refused.
#[test]
fn nothing_any_bot_started_survives_kill_9_of_master_launch() {
    let family = ["child", "grandchild", "daemon"];
    // Each bot, its child, the grandchild's parent, the grandchild, the daemon; on
    // Linux also the bot's reaper.
    let per_bot = if cfg!(target_os = "linux") { 6 } else { 5 };
    // Linux: within 2 s. Under Wine a process start and end is some hundred times
    // slower, so it gets longer; what it must show there is that nothing survives.
    let within = if fleet_tests::wine::under_wine() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(2)
    };
    for round in 0..race_rounds(20, 2) {
        let tag = unique(&format!("PT{round}X"));
        let accounts: Vec<String> = (0..5).map(|i| format!("{tag}A{i}")).collect();
        let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let spawn: Vec<&str> = family.iter().flat_map(|kind| ["--spawn", kind]).collect();
        let desk = Desk::with_options(&format!("{tag}G"), &accounts, &spawn, "");
        let mut launcher = launch(&desk);
        let expected = desk.component_names().len() * per_bot;
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() != expected {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} processes, not {expected}: {seen:#?}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(50));
            seen = processes_tagged(&tag);
        }
        // Anything left at the end is killed by the guards, not by the code under test.
        let _guards: Vec<PidGuard> = seen.iter().map(|(pid, _)| PidGuard(*pid)).collect();
        launcher.kill();
        let killed = Instant::now();
        let mut left = seen;
        while !left.is_empty() && killed.elapsed() < within {
            std::thread::sleep(Duration::from_millis(20));
            left = processes_tagged(&tag);
        }
        assert!(
            left.is_empty(),
            "round {round}: {} s after kill -9 of master-launch these still run:\n{}",
            within.as_secs(),
            left.iter()
                .map(|(pid, cmd)| format!("  {pid} {cmd}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// kill -9 of master-launch ends the desk in the safe order all the same: every brain
/// is gone before any watchdog goes, every watchdog before any global (DESIGN.md rule
/// 13: no moment with a brain running and its watchdog gone). Each bot's reaper waits
/// by stage before it ends its tree; without that, the kernel's closing of
/// master-launch's pipes in start order would end globals and watchdogs first. The
/// moment each bot is gone is sampled from `/proc`, 10 rounds of 3 accounts.
#[cfg(target_os = "linux")]
#[test]
fn kill_9_of_master_launch_still_ends_brains_then_watchdogs_then_globals() {
    for round in 0..10 {
        let tag = unique(&format!("PTORD{round}X"));
        let accounts: Vec<String> = (0..3).map(|i| format!("{tag}A{i}")).collect();
        let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let global = format!("{tag}G");
        let desk = Desk::with_options(&global, &accounts, &[], "");
        let mut launcher = launch(&desk);
        let names = desk.component_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut pids = Vec::new();
        wait_until("every bot to run", || {
            let snapshot = desk.snapshot();
            pids = names
                .iter()
                .filter_map(|name| fleet_tests::orchestrated::managed_pid(&snapshot, name))
                .collect();
            pids.len() == names.len()
        });
        let _guards: Vec<PidGuard> = pids.iter().map(|&pid| PidGuard(pid)).collect();
        launcher.kill();
        let killed = Instant::now();
        let mut gone: Vec<Option<Duration>> = vec![None; pids.len()];
        while gone.iter().any(Option::is_none) {
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "round {round}: still running 5 s after kill -9: {names:?} {gone:?}"
            );
            for (i, &pid) in pids.iter().enumerate() {
                if gone[i].is_none() && !alive(pid) {
                    gone[i] = Some(killed.elapsed());
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let stage_of = |name: &str| {
            if name.starts_with("BRAIN_") {
                0
            } else if name.starts_with("WATCHDOG_") {
                1
            } else {
                2
            }
        };
        let times: Vec<(usize, &str, Duration)> = names
            .iter()
            .zip(&gone)
            .map(|(name, at)| (stage_of(name), *name, at.unwrap()))
            .collect();
        for (stage, name, at) in &times {
            for (later, other, other_at) in &times {
                assert!(
                    !(later > stage && other_at < at),
                    "round {round}: {other} was gone at {other_at:?}, before {name} at {at:?}"
                );
            }
        }
    }
}

/// Whether any thread of `pid` runs: a process whose main thread has exited shows
/// as a zombie while its other threads run on.
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .is_some_and(|state| state != "Z" && state != "X")
        })
    })
}

/// master-launch on `desk`, once it says the desk started.
fn launch(desk: &Desk) -> fleet_tests::Running {
    let (launcher, lines) = start_master_launch(&desk.config(), &[]);
    assert!(
        lines
            .wait_for("desk started", Duration::from_secs(60))
            .is_some(),
        "the desk did not start: {}",
        desk.master_log()
    );
    launcher
}

/// A bot that started a child, a grandchild and a daemon (whose parent exited at
/// once) and then exits on its own: everything it started is ended before master-launch
/// reports the exit, and the log says how many. On Windows through the Job Object
/// (under Wine: the daemon's breakaway from the job is refused).
#[test]
fn what_a_bot_started_is_ended_when_it_exits() {
    let global = unique("PTEXITG");
    let desk = Desk::with_options(
        &global,
        &[],
        &[
            "--spawn",
            "child",
            "--spawn",
            "grandchild",
            "--spawn",
            "daemon",
            "--exit-after-ms",
            "3000",
        ],
        "",
    );
    let launcher = launch(&desk);
    // The bot, its child, the grandchild's parent, the grandchild, the daemon.
    wait_until("the bot's family to run", || {
        bots_tagged(&global).len() == 5
    });
    let at = wait_logged(&desk, &format!("{global}: exited (code 0)"), 0);
    let log = desk.master_log();
    let line = log[at..].lines().next().unwrap();
    // Linux counts what its reaper killed (4); Windows the processes still in the job
    // when the bot exited, which under Wine can include one more (the exiting bot or a
    // console host).
    let ended: usize = line
        .split("; ended ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ended >= 4, "{line}");
    assert_eq!(bots_tagged(&global), Vec::<u32>::new(), "{log}");
    fleet_tests::orchestrated::stop_desk(&desk, launcher);
}

/// The bots of `tag`, without their reapers.
fn bots_tagged(tag: &str) -> Vec<u32> {
    processes_tagged(tag)
        .into_iter()
        .filter(|(_, cmd)| !cmd.contains("--master-launch-reaper"))
        .map(|(pid, _)| pid)
        .collect()
}

/// A restart beside a copy that runs without the lock (started by hand while the
/// desk ran) is refused and says so, instead of starting a second copy.
#[test]
fn a_restart_beside_a_copy_started_by_hand_is_refused_loudly() {
    let global = unique("PTCOPYG");
    let desk = Desk::new(&global, &[]);
    // `always`: a forced end reads as exit code 0 under Wine, which `on-failure` would
    // not restart.
    let config = std::fs::read_to_string(desk.config()).unwrap();
    let command_line = format!("\"{global}\"]\n");
    assert!(config.contains(&command_line), "{config}");
    std::fs::write(
        desk.config(),
        config.replacen(
            &command_line,
            &format!("{command_line}restart = \"always\"\n"),
            1,
        ),
    )
    .unwrap();
    let launcher = launch(&desk);
    let supervised = fleet_tests::orchestrated::wait_supervised(&desk, &global, launcher.pid());
    let by_hand = desk.start_by_hand(&global);
    wait_until("the hand-started copy to run", || {
        bots_tagged(&global).len() == 2
    });
    fleet_tests::force_kill(supervised);
    let refused = format!("{global}: NOT RESTARTED");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !desk.master_log().contains(&refused) {
        assert!(
            Instant::now() < deadline,
            "no `{refused}` after 30 s: {}",
            desk.master_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let at = wait_logged(&desk, &refused, 0);
    let log = desk.master_log();
    let line = log[at..].lines().next().unwrap();
    assert!(
        line.contains(&format!("pid {}", by_hand.pid())) && line.contains("without its lock"),
        "{line}"
    );
    // Only the hand-started copy runs: no restart came after the refusal.
    std::thread::sleep(Duration::from_millis(500));
    let running = bots_tagged(&global);
    assert_eq!(running, vec![by_hand.pid()], "{}", desk.master_log());
    assert_eq!(
        desk.master_log()
            .matches(&format!("{global}: started"))
            .count(),
        1,
        "{}",
        desk.master_log()
    );
}

/// The reaper's hidden argument, used by hand (without the pipes master-launch hands
/// it, or naming descriptors that are not open): it starts nothing and says it was
/// started wrongly (exit 2).
#[cfg(target_os = "linux")]
#[test]
fn a_reaper_started_by_hand_starts_nothing() {
    let tag = unique("PTREAPX");
    for fds in [None, Some("77,78"), Some("1,2"), Some("garbage")] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_master-launch"));
        command
            .args(["--master-launch-reaper", "--"])
            .arg(fleet_tests::stand_in())
            .arg(&tag)
            .env_remove("MASTER_LAUNCH_REAPER_FDS");
        if let Some(fds) = fds {
            command.env("MASTER_LAUNCH_REAPER_FDS", fds);
        }
        let status = command.status().unwrap();
        assert_eq!(status.code(), Some(2), "{fds:?}");
        assert!(bots_tagged(&tag).is_empty(), "{fds:?}: a bot was started");
    }
}

/// Linux: `python3` with the real `multiprocessing` and `os.fork`.
#[cfg(target_os = "linux")]
mod python_bots {
    use super::*;
    use fleet_tests::orchestrated::managed_pid;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const ORDER_BOT: &str = include_str!("bots/order_bot.py");

    /// A one-account desk whose brain is `order_bot.py MODE`, writing to `orders`.
    fn order_desk(tag: &str, mode: &str, tail: &str) -> (Desk, PathBuf) {
        let desk = Desk::with_options(&format!("{tag}G"), &[tag], &[], tail);
        let bot = desk.dir.path().join("order_bot.py");
        std::fs::write(&bot, ORDER_BOT).unwrap();
        let orders = desk.dir.path().join("orders.txt");
        let config = std::fs::read_to_string(desk.config()).unwrap();
        let stand_in_brain = format!("brain = [\"{{bot}}\", \"BRAIN_{tag}\"]");
        assert!(config.contains(&stand_in_brain), "{config}");
        let brain = format!(
            "brain = [\"python3\", '{}', \"BRAIN_{tag}\", \"{mode}\", '{}']",
            bot.display(),
            orders.display()
        );
        std::fs::write(desk.config(), config.replace(&stand_in_brain, &brain)).unwrap();
        (desk, orders)
    }

    /// Each writer's pid with its first and last order time, ordered by first order.
    fn writers(orders: &Path) -> Vec<(u32, u128, u128)> {
        let text = std::fs::read_to_string(orders).unwrap_or_default();
        let mut spans: BTreeMap<u32, (u128, u128)> = BTreeMap::new();
        for line in text.lines() {
            let mut fields = line.split(' ');
            let (Some(pid), Some(ms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let (Ok(pid), Ok(ms)) = (pid.parse::<u32>(), ms.parse::<u128>()) else {
                continue;
            };
            let span = spans.entry(pid).or_insert((ms, ms));
            span.0 = span.0.min(ms);
            span.1 = span.1.max(ms);
        }
        let mut list: Vec<(u32, u128, u128)> =
            spans.into_iter().map(|(pid, (a, b))| (pid, a, b)).collect();
        list.sort_by_key(|w| w.1);
        list
    }

    /// No two writers' order spans overlap: each writer's last order came before the
    /// next writer's first.
    fn assert_one_writer_at_a_time(orders: &Path, context: &str) {
        let list = writers(orders);
        for pair in list.windows(2) {
            assert!(
                pair[0].2 < pair[1].1,
                "{context}: pid {} sent orders until {} ms, pid {} already from {} ms: two \
                 writers on one account",
                pair[0].0,
                pair[0].2,
                pair[1].0,
                pair[1].1
            );
        }
    }

    /// Samples every 10 ms, from `/proc`, how many of the processes that ever sent an
    /// order are alive at once (zombies are not alive).
    struct Sampler {
        stop: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<usize>,
    }

    impl Sampler {
        fn start(orders: &Path) -> Sampler {
            let stop = Arc::new(AtomicBool::new(false));
            let (orders, stopped) = (orders.to_path_buf(), stop.clone());
            let thread = std::thread::spawn(move || {
                let mut most = 0;
                while !stopped.load(Ordering::SeqCst) {
                    let live = writers(&orders)
                        .iter()
                        .filter(|(pid, _, _)| alive(*pid))
                        .count();
                    most = most.max(live);
                    std::thread::sleep(Duration::from_millis(10));
                }
                most
            });
            Sampler { stop, thread }
        }

        /// Stops sampling; the most writers seen alive at once.
        fn most_alive_at_once(self) -> usize {
            self.stop.store(true, Ordering::SeqCst);
            self.thread.join().unwrap()
        }
    }

    /// The parent of `pid` (for a bot: its reaper).
    fn parent_of(pid: u32) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        after.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn kill(pid: u32, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// A one-account desk with an order bot in `mode` as its brain, started; with the
    /// brain's pid and the pid of the first process that sent an order.
    fn trading_desk(tag: &str, mode: &str) -> (Desk, PathBuf, fleet_tests::Running, u32, u32) {
        let brain = format!("BRAIN_{tag}");
        let (desk, orders) = order_desk(tag, mode, "");
        let launcher = launch(&desk);
        let mut pid = 0;
        wait_until("the brain and its worker to trade", || {
            pid = managed_pid(&desk.snapshot(), &brain).unwrap_or(0);
            pid != 0 && !writers(&orders).is_empty()
        });
        let trader = writers(&orders)[0].0;
        (desk, orders, launcher, pid, trader)
    }

    /// kill -9 of a brain's main process whose order loop runs in a forked worker
    /// (its group leader dead, the worker would trade on): 20 rounds, and in none do
    /// two processes send orders at once; the old worker is gone before the new
    /// brain's worker starts.
    #[test]
    fn a_crashed_brains_forked_worker_is_gone_before_the_restart() {
        crash_the_brain_and_restart("fork-worker", 20);
    }

    /// The same with a worker whose main thread has exited while its order thread
    /// trades on: the kernel shows it as a zombie, and it must be ended all the same.
    #[test]
    fn a_crashed_brains_worker_without_its_main_thread_is_gone_before_the_restart() {
        crash_the_brain_and_restart("lone-thread", 5);
    }

    fn crash_the_brain_and_restart(mode: &str, rounds: usize) {
        for round in 0..rounds {
            let tag = unique(&format!("PT{}{round}X", &mode[..2].to_uppercase()));
            let brain = format!("BRAIN_{tag}");
            let (desk, orders) = order_desk(&tag, mode, "");
            let sampler = Sampler::start(&orders);
            let launcher = launch(&desk);
            let mut first = 0;
            wait_until("the brain and its worker to trade", || {
                first = managed_pid(&desk.snapshot(), &brain).unwrap_or(0);
                first != 0 && !writers(&orders).is_empty()
            });
            let old_worker = writers(&orders)[0].0;
            let _guard = PidGuard(old_worker);
            // kill -9 of the main process alone: its worker is left to the binding.
            kill(first, nix::sys::signal::Signal::SIGKILL);
            wait_until("the restarted brain's worker to trade", || {
                writers(&orders).len() >= 2
            });
            let new_brain = managed_pid(&desk.snapshot(), &brain);
            assert_ne!(new_brain, Some(first), "round {round}: not restarted");
            assert!(
                !alive(old_worker),
                "round {round}: the old worker still runs"
            );
            fleet_tests::orchestrated::stop_desk(&desk, launcher);
            let most = sampler.most_alive_at_once();
            assert_one_writer_at_a_time(&orders, &format!("{mode} round {round}"));
            assert_eq!(most, 1, "round {round}: {most} order writers alive at once");
            let log = desk.master_log();
            assert!(
                log.contains(&format!("{brain}: exited (signal 9); ended ")),
                "round {round}: {log}"
            );
        }
    }

    /// kill -9 of a brain's reaper alone (by hand, or the OOM killer): nobody can vouch
    /// for what the brain started any more. master-launch kills the reaper's process
    /// group (the brain and its worker) and does not restart the brain: a daemon that
    /// had left the group could trade beside a new copy.
    #[test]
    fn a_brain_whose_reaper_is_killed_is_ended_and_not_restarted() {
        let tag = unique("PTRKX");
        let brain = format!("BRAIN_{tag}");
        let (desk, orders, launcher, pid, worker) = trading_desk(&tag, "fork-worker");
        let _guards = (PidGuard(pid), PidGuard(worker));
        let reaper = parent_of(pid);
        // What `top` and `ps -e` call it.
        let comm = std::fs::read_to_string(format!("/proc/{reaper}/comm")).unwrap();
        assert_eq!(comm.trim_end(), "desk-reaper");
        kill(reaper, nix::sys::signal::Signal::SIGKILL);
        wait_logged(&desk, &format!("{brain}: NOT RESTARTED"), 0);
        wait_until("the brain and its worker to end", || {
            !alive(pid) && !alive(worker)
        });
        let log = desk.master_log();
        assert!(log.contains("its reaper was killed from outside"), "{log}");
        // Given up: no second brain, whatever the wait.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(managed_pid(&desk.snapshot(), &brain), None);
        assert_eq!(writers(&orders).len(), 1, "{log}");
        fleet_tests::orchestrated::stop_desk(&desk, launcher);
    }

    /// A reaper stopped from outside (SIGSTOP) cannot read the end of its control pipe.
    /// When master-launch is then killed (kill -9), the reaper is woken (its parent-death
    /// signal is SIGCONT; and a group orphaned with a stopped member gets SIGHUP and
    /// SIGCONT from the kernel), reads the pipe's end and ends the bot's tree. The kill
    /// follows the SIGSTOP at once, so the stop may still be pending when master-launch
    /// dies: the case the kernel's rule misses.
    #[test]
    fn a_stopped_reaper_still_ends_the_tree_when_master_launch_is_killed() {
        let tag = unique("PTSRX");
        let (_desk, _orders, mut launcher, pid, worker) = trading_desk(&tag, "fork-worker");
        let reaper = parent_of(pid);
        let _guards = (PidGuard(pid), PidGuard(worker), PidGuard(reaper));
        kill(reaper, nix::sys::signal::Signal::SIGSTOP);
        launcher.kill();
        wait_until("the brain, its worker and its reaper to end", || {
            !alive(pid) && !alive(worker) && !alive(reaper)
        });
    }

    /// A brain that daemonizes (double fork + setsid after connecting, then exit 0)
    /// under `restart = "always"`, for 60 s: at most one order writer at any moment,
    /// and each daemon ended with the brain that started it.
    #[test]
    fn a_daemonizing_brain_never_trades_twice_under_restart_always() {
        let tag = unique("PTDMX");
        let brain = format!("BRAIN_{tag}");
        let (desk, orders) = order_desk(&tag, "daemonize", "restart = \"always\"\n");
        let sampler = Sampler::start(&orders);
        let launcher = launch(&desk);
        std::thread::sleep(Duration::from_secs(60));
        fleet_tests::orchestrated::stop_desk(&desk, launcher);
        let most = sampler.most_alive_at_once();
        let daemons = writers(&orders);
        assert!(
            daemons.len() >= 3,
            "the brain daemonized only {} time(s) in 60 s: {}",
            daemons.len(),
            desk.master_log()
        );
        assert_one_writer_at_a_time(&orders, "restart = \"always\"");
        assert_eq!(most, 1, "{most} order writers alive at once");
        let left: Vec<u32> = daemons
            .iter()
            .map(|d| d.0)
            .filter(|pid| alive(*pid))
            .collect();
        assert!(left.is_empty(), "daemons still running: {left:?}");
        let log = desk.master_log();
        assert!(
            log.contains(&format!("{brain}: exited (code 0); ended ")),
            "{log}"
        );
    }
}
