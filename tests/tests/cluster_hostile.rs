//! `[cluster]` attacked from outside (issue #15): a hostile network (etcd killed and
//! started again, a partition that heals), a hostile operator (stop request keys
//! placed by hand, safe-shutdown for one account from the standby, signals to a
//! standby, start/restart requests on the standby), with real processes and a real etcd.
//! What must hold throughout: never two copies of a component across the hosts, a brain
//! only on the host of its watchdog, and recovery once etcd answers again.
//!
//! Copies are counted across all hosts by command line, every 20 ms, as in
//! `cluster_desk.rs`; each test has desk names of its own (`CX...`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fleet_tests::census::{Census, all_on, all_once};
use fleet_tests::etcd::{Etcd, cluster_desk, skip_under_wine as skip};
use fleet_tests::orchestrated::{stop_desk, wait_exit};
use fleet_tests::proxy::Proxy;
use fleet_tests::{Desk, Running, start_master_launch, tool, unique, wait_until};

/// At most two of these tests at once: each runs an etcd, two or three master-launch
/// "hosts" and their bots with a 2 s lease, and a machine loaded past the lease's
/// safety margin (TTL/4) is the documented limit, not what these tests attack.
fn slot() -> impl Drop {
    use std::sync::{Condvar, Mutex};
    static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            *SLOTS.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            SLOTS.1.notify_one();
        }
    }
    let mut taken = SLOTS.0.lock().unwrap_or_else(|e| e.into_inner());
    while *taken >= 2 {
        taken = SLOTS.1.wait(taken).unwrap_or_else(|e| e.into_inner());
    }
    *taken += 1;
    Slot
}

/// Starts `first`'s desk, waits until it runs, then each standby's, and waits until
/// each says it stands by for all five components.
fn first_runs_others_stand_by(first: &Desk, others: &[&Desk]) -> (Running, Vec<Running>) {
    let (a, _) = start_master_launch(&first.config(), &[]);
    first.wait_until_running();
    let mut standbys = Vec::new();
    for desk in others {
        let (b, _) = start_master_launch(&desk.config(), &[]);
        wait_until("a standby for every component", || {
            desk.master_log()
                .contains("desk started: 0 processes, 5 standing by")
        });
        standbys.push(b);
    }
    (a, standbys)
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn safe_shutdown(desk: &Desk, args: &[&str]) -> Output {
    run(Command::new(tool("safe-shutdown", "safe-shutdown"))
        .arg("--config")
        .arg(desk.config())
        .args(args))
}

fn keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    etcd.client()
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// etcd itself crashes (SIGKILL) while A runs the desk and B stands by, and is started
/// again 3 s later (more than the 2 s TTL) on the same ports and data: every holder
/// fences, nothing ever runs twice, and once etcd is back the desk runs again, each
/// component exactly once, brains with their watchdogs.
#[test]
fn cx_etcd_killed_and_started_again_never_two_copies_and_the_desk_recovers() {
    if skip("cx_etcd_killed_and_started_again_never_two_copies_and_the_desk_recovers") {
        return;
    }
    let _slot = slot();
    let mut etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXETCD");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXETCD");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    census.check("before");
    etcd.kill();
    // Down for longer than the TTL: every holder must have fenced by then.
    census.until(Duration::from_secs(4), "etcd down", |c| {
        c.values().all(Vec::is_empty)
    });
    census.during(Duration::from_millis(1500), "etcd down, fenced");
    etcd.start_again();
    census.until(Duration::from_secs(20), "etcd back", all_once);
    census.during(Duration::from_secs(2), "etcd back, settled");
    assert_eq!(keys(&etcd, "/desk/locks/").len(), 5);
    assert_eq!(stop_desk(&desk_b, bs.remove(0)), 0);
    assert_eq!(stop_desk(&desk_a, a), 0);
    census.until(Duration::from_secs(10), "stopped", |c| {
        c.values().all(Vec::is_empty)
    });
    assert_eq!(keys(&etcd, "/desk/locks/"), Vec::<String>::new());
}

/// etcd pauses (SIGSTOP) for less than the TTL, then goes on (SIGCONT): a slow etcd,
/// not a dead one. Holders may fence or not, but never two copies, and the desk runs
/// again, each component once.
#[test]
fn cx_etcd_paused_briefly_never_two_copies_and_the_desk_recovers() {
    if skip("cx_etcd_paused_briefly_never_two_copies_and_the_desk_recovers") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXPAUSE");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXPAUSE");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &etcd.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // Between TTL/2 (brains asked) and 3/4 TTL (everything forced): the brains go,
    // the watchdogs may stay or go. A brain whose lock take waits on the paused etcd
    // must not start once etcd answers if its watchdog was fenced meanwhile.
    for round in 0..2 {
        signal("-STOP");
        census.during(
            Duration::from_millis(1200),
            &format!("round {round}: etcd paused"),
        );
        signal("-CONT");
        census.until(
            Duration::from_secs(20),
            &format!("round {round}: etcd going on"),
            all_once,
        );
        census.during(
            Duration::from_secs(1),
            &format!("round {round}: etcd going on, settled"),
        );
    }
    assert_eq!(stop_desk(&desk_b, bs.remove(0)), 0);
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// A is cut off and fences; B takes over; the partition heals: A must start nothing
/// while B holds. Then B's master-launch is killed (-9): A takes everything over.
#[test]
fn cx_healed_host_waits_while_the_other_holds_then_takes_over_when_it_dies() {
    if skip("cx_healed_host_waits_while_the_other_holds_then_takes_over_when_it_dies") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd.endpoint);
    let desk_a = cluster_desk(&proxy.endpoint, "A", "CXHEAL");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXHEAL");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    proxy.partition();
    census.until(Duration::from_secs(15), "B takes over", all_on("B"));
    proxy.heal();
    let now = census.during(Duration::from_secs(4), "healed");
    assert!(all_on("B")(&now), "{now:?}");
    let mut b = bs.remove(0);
    b.kill();
    census.until(Duration::from_secs(15), "A takes over again", all_on("A"));
    census.during(Duration::from_secs(1), "A runs again");
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// Three hosts: A runs, B and C stand by; A's master-launch is killed: B and C race,
/// and each component ends up on exactly one of them, each brain with its watchdog.
#[test]
fn cx_three_hosts_one_dies_exactly_one_standby_takes_each_component() {
    if skip("cx_three_hosts_one_dies_exactly_one_standby_takes_each_component") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXTRI");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXTRI");
    let desk_c = cluster_desk(&etcd.endpoint, "C", "CXTRI");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b), ("C", &desk_c)]);
    let (mut a, mut others) = first_runs_others_stand_by(&desk_a, &[&desk_b, &desk_c]);
    census.check("A runs");
    a.kill();
    let now = census.until(Duration::from_secs(15), "takeover", |c| {
        all_once(c) && c.values().all(|h| h[0] != "A")
    });
    census.during(Duration::from_secs(2), "taken over");
    let c = others.remove(1);
    let b = others.remove(0);
    #[allow(clippy::print_stderr)]
    {
        eprintln!("three hosts, A killed: {now:?}");
    }
    assert_eq!(stop_desk(&desk_b, b), 0);
    assert_eq!(stop_desk(&desk_c, c), 0);
    census.until(Duration::from_secs(10), "stopped", |c| {
        c.values().all(Vec::is_empty)
    });
}

/// safe-shutdown `--account X` on the standby host: `--dry-run` first touches nothing
/// (no key placed, nothing stops); then only X's brain and watchdog stop on A, nothing
/// else anywhere, and B takes nothing over.
#[test]
fn cx_safe_shutdown_of_one_account_from_the_standby_stops_only_that_account() {
    if skip("cx_safe_shutdown_of_one_account_from_the_standby_stops_only_that_account") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXACC");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXACC");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    let dry = safe_shutdown(
        &desk_b,
        &["--account", &*format!("{}1", unique("CXACC")), "--dry-run"],
    );
    assert_eq!(dry.status.code(), Some(0), "{}", said(&dry));
    assert!(keys(&etcd, "/desk/stop/").is_empty());
    let now = census.during(Duration::from_millis(500), "after a dry run");
    assert!(all_on("A")(&now), "{now:?}");

    let stop = safe_shutdown(
        &desk_b,
        &[
            "--account",
            &*format!("{}1", unique("CXACC")),
            "--yes",
            "--timeout",
            "5",
        ],
    );
    assert_eq!(stop.status.code(), Some(0), "{}", said(&stop));
    let now = census.during(
        Duration::from_secs(3),
        &format!("after the stop of {}1", unique("CXACC")),
    );
    let expected: BTreeMap<String, Vec<String>> = [
        (&*format!("{}1", unique("BRAIN_CXACC")), vec![]),
        (&*format!("{}1", unique("WATCHDOG_CXACC")), vec![]),
        (
            &*format!("{}2", unique("BRAIN_CXACC")),
            vec!["A".to_string()],
        ),
        (
            &*format!("{}2", unique("WATCHDOG_CXACC")),
            vec!["A".to_string()],
        ),
        (&*unique("qs_CXACC"), vec!["A".to_string()]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(now, expected, "{}", census.logs());
    assert!(keys(&etcd, "/desk/stop/").is_empty());
    // Both master-launches go on.
    let mut b = bs.remove(0);
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "B's master-launch ended"
    );
    assert_eq!(stop_desk(&desk_b, b), 0);
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// safe-shutdown with etcd unreachable (a black hole): it must end in bounded time,
/// say what it could not do, and not report success.
#[test]
fn cx_safe_shutdown_with_etcd_unreachable_ends_and_says_so() {
    if skip("cx_safe_shutdown_with_etcd_unreachable_ends_and_says_so") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd.endpoint);
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXDOWN");
    let desk_b = cluster_desk(&proxy.endpoint, "B", "CXDOWN");
    let (a, _) = start_master_launch(&desk_a.config(), &[]);
    desk_a.wait_until_running();
    proxy.partition();
    let started = Instant::now();
    let stop = safe_shutdown(&desk_b, &["--yes", "--timeout", "3"]);
    let took = started.elapsed();
    let text = said(&stop);
    assert!(took < Duration::from_secs(30), "took {took:?}: {text}");
    assert_ne!(stop.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cannot read the cluster's locks in etcd"),
        "{text}"
    );
    assert!(
        !text.contains("Nothing to stop: no process of the desk runs."),
        "{text}"
    );
    // The dry run says the same.
    let dry = safe_shutdown(&desk_b, &["--dry-run"]);
    assert_ne!(dry.status.code(), Some(0), "{}", said(&dry));
    // A's desk was never touched.
    desk_a.wait_until_running();
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// Stop request keys placed by hand in etcd, with names and values nobody should
/// write: a path (`../x`, `a/b`), the orchestrator's own name, a name not in the desk,
/// a huge value. The orchestrator writes nothing outside its lock dir, never stops
/// itself, stops nothing for them; a garbage value for a real component still means
/// "stop" (with its own timeout) and only that component stops.
#[test]
fn cx_hostile_stop_request_keys_stop_nothing_they_do_not_name() {
    if skip("cx_hostile_stop_request_keys_stop_nothing_they_do_not_name") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXKEY");
    let mut census = Census::new(&[("A", &desk_a)]);
    let (mut a, _) = start_master_launch(&desk_a.config(), &[]);
    desk_a.wait_until_running();
    let client = etcd.client();
    let lease = client.grant(Duration::from_secs(60)).unwrap();
    let huge = vec![b'x'; 1 << 20];
    for (key, value) in [
        ("/desk/stop/../x", &b"{}"[..]),
        ("/desk/stop/a/b", b"{}"),
        ("/desk/stop/", b"{}"),
        ("/desk/stop/MASTER_LAUNCH", b"{}"),
        ("/desk/stop/master_launch", b"garbage"),
        ("/desk/stop/NOT_IN_THE_DESK", b"{}"),
        (&*format!("{}.lock", unique("/desk/stop/qs_CXKEY")), b"{}"),
        (&*format!("{}2", unique("/desk/stop/BRAIN_CXKEY")), &huge),
    ] {
        client.put(key, value, lease).unwrap();
    }
    // The huge garbage one still means: stop BRAIN_CXKEY2 (its own timeout).
    let now = census.until(Duration::from_secs(15), "hostile keys", |c| {
        c[&*format!("{}2", unique("BRAIN_CXKEY"))].is_empty()
    });
    let now2 = census.during(Duration::from_secs(2), "hostile keys, later");
    for c in [&now, &now2] {
        for name in [
            &*format!("{}1", unique("BRAIN_CXKEY")),
            &*format!("{}1", unique("WATCHDOG_CXKEY")),
            &*format!("{}2", unique("WATCHDOG_CXKEY")),
            &*unique("qs_CXKEY"),
        ] {
            assert_eq!(c[name], ["A"], "{name}: {c:?}\n{}", census.logs());
        }
    }
    assert!(a.child.try_wait().unwrap().is_none(), "master-launch ended");
    // Nothing written outside the lock dir, nothing for names not in the desk.
    assert!(!desk_a.lock_dir().join("../x.stop").exists());
    assert!(!desk_a.lock_dir().join("../x").exists());
    let entries: Vec<String> = std::fs::read_dir(desk_a.lock_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".stop"))
        .collect();
    assert_eq!(entries, Vec::<String>::new());
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// A standby that gets SIGTERM (or Ctrl+C) ends promptly, and touches nothing the
/// other host holds: A's keys and bots stay.
#[test]
fn cx_a_standby_told_to_end_ends_promptly_and_releases_nothing_of_the_holder() {
    if skip("cx_a_standby_told_to_end_ends_promptly_and_releases_nothing_of_the_holder") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXTERM");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXTERM");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    let before: Vec<_> = etcd.client().list("/desk/locks/").unwrap();
    for signal in ["-TERM", "-INT"] {
        let mut b = bs.pop().unwrap_or_else(|| {
            let (b, _) = start_master_launch(&desk_b.config(), &[]);
            let from = desk_b.master_log().matches("5 standing by").count();
            wait_until("B to stand by again", || {
                desk_b.master_log().matches("5 standing by").count() > from
            });
            b
        });
        let status = Command::new("kill")
            .args([signal, &b.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = wait_exit(&mut b.child, Duration::from_secs(10), "the standby");
        assert_eq!(code, 0, "{signal}: {}", desk_b.master_log());
        let now = census.during(Duration::from_millis(300), "standby ended");
        assert!(all_on("A")(&now), "{now:?}");
        let after: Vec<_> = etcd.client().list("/desk/locks/").unwrap();
        assert_eq!(
            after
                .iter()
                .map(|k| (&k.key, k.create_revision))
                .collect::<Vec<_>>(),
            before
                .iter()
                .map(|k| (&k.key, k.create_revision))
                .collect::<Vec<_>>(),
            "{signal}"
        );
    }
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// `master-launch start NAME` / `restart NAME` / `stop NAME` on the standby host, for a
/// component the other host runs: refused or harmless, never a second copy, never a
/// stop of A's bot through the standby's lock dir.
#[test]
fn cx_start_and_restart_on_the_standby_host_never_make_a_second_copy() {
    if skip("cx_start_and_restart_on_the_standby_host_never_make_a_second_copy") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXREQ");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXREQ");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    for action in ["start", "restart"] {
        for name in [
            &*format!("{}1", unique("WATCHDOG_CXREQ")),
            &*format!("{}1", unique("BRAIN_CXREQ")),
            &*unique("qs_CXREQ"),
        ] {
            let out = run(Command::new(tool("master-launch", "master-launch"))
                .arg("--config")
                .arg(desk_b.config())
                .args([action, name, "--timeout", "10"]));
            assert_ne!(
                out.status.code(),
                Some(0),
                "{action} {name}: {}",
                said(&out)
            );
            let now = census.during(Duration::from_millis(200), &format!("{action} {name}"));
            assert!(all_on("A")(&now), "{action} {name}: {now:?}");
        }
    }
    let now = census.during(Duration::from_secs(1), "after the requests");
    assert!(all_on("A")(&now), "{now:?}");
    assert_eq!(stop_desk(&desk_b, bs.remove(0)), 0);
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// A stop request placed while the standby is about to take over (the holder was just
/// killed, its key not yet expired): the standby never takes that component, nor the
/// brain that follows it, and takes everything else.
#[test]
fn cx_stop_request_during_a_takeover_keeps_that_component_stopped() {
    if skip("cx_stop_request_during_a_takeover_keeps_that_component_stopped") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CXMID");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CXMID");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (mut a, mut bs) = first_runs_others_stand_by(&desk_a, &[&desk_b]);
    a.kill();
    let client = etcd.client();
    let lease = client.grant(Duration::from_secs(30)).unwrap();
    client
        .put(
            &format!("{}1", unique("/desk/stop/WATCHDOG_CXMID")),
            b"{}",
            lease,
        )
        .unwrap();
    let done = |c: &BTreeMap<String, Vec<String>>| {
        [
            &*format!("{}2", unique("BRAIN_CXMID")),
            &*format!("{}2", unique("WATCHDOG_CXMID")),
            &*unique("qs_CXMID"),
        ]
        .iter()
        .all(|n| c[*n] == ["B"])
    };
    census.until(Duration::from_secs(15), "takeover", done);
    // The stop request withdrawn: still not restarted (stopped on request).
    client.revoke(lease).unwrap();
    let now = census.during(Duration::from_secs(3), "after the takeover");
    assert!(done(&now), "{now:?}");
    for name in [
        &*format!("{}1", unique("BRAIN_CXMID")),
        &*format!("{}1", unique("WATCHDOG_CXMID")),
    ] {
        assert!(now[name].is_empty(), "{name}: {now:?}\n{}", census.logs());
    }
    assert_eq!(stop_desk(&desk_b, bs.remove(0)), 0);
}

/// check-procs against lock keys placed by hand: a name not in the desk, a value that
/// is not JSON, a huge one: no panic, a JSON document, each lease's time left within
/// its TTL.
#[test]
fn cx_check_procs_reads_hostile_lock_keys_without_failing() {
    if skip("cx_check_procs_reads_hostile_lock_keys_without_failing") {
        return;
    }
    let _slot = slot();
    let etcd = Etcd::start();
    let desk = cluster_desk(&etcd.endpoint, "A", "CXVIEW");
    let client = etcd.client();
    let lease = client.grant(Duration::from_secs(30)).unwrap();
    let huge = vec![b'{'; 1 << 20];
    for (key, value) in [
        (
            "/desk/locks/NOT_IN_THE_DESK",
            &b"{\"host\":\"Z\",\"pid\":1}"[..],
        ),
        (&*unique("/desk/locks/qs_CXVIEW"), b"garbage \x1b[31m red"),
        (&*format!("{}1", unique("/desk/locks/BRAIN_CXVIEW")), &huge),
        (
            &*format!("{}1", unique("/desk/locks/WATCHDOG_CXVIEW")),
            b"{\"host\":\"Z\",\"pid\":18446744073709551615}",
        ),
        ("/desk/locks/../x", b"{}"),
    ] {
        client.put(key, value, lease).unwrap();
    }
    let out = run(Command::new(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(desk.config())
        .arg("--json"));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&out)));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", said(&out));
    for component in json["components"].as_array().unwrap() {
        if let Some(left) = component["lease_ttl_left"].as_f64() {
            assert!((0.0..=30.0).contains(&left), "{component}");
        }
    }
    let text = run(Command::new(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(desk.config()));
    assert!(matches!(text.status.code(), Some(0 | 1)), "{}", said(&text));
    assert!(!said(&text).contains('\x1b'), "{}", said(&text));
    // A desk started against them stands by for the keys held "elsewhere", runs the
    // others, and never panics.
    let (a, _) = start_master_launch(&desk.config(), &[]);
    wait_until("the desk to start", || {
        desk.master_log().contains("desk started")
    });
    let log = desk.master_log();
    assert!(
        log.contains(&*format!("{}: stands by", unique("qs_CXVIEW"))),
        "{log}"
    );
    assert_eq!(stop_desk(&desk, a), 0);
}

/// A fake etcd on loopback that answers every request with `response` (a whole HTTP
/// response), or, with `dribble`, sends it one byte every 100 ms. Runs until the
/// test ends.
fn fake_etcd(response: Vec<u8>, dribble: bool) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let response = response.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64 * 1024];
                let _ = stream.read(&mut buf);
                if dribble {
                    for byte in response.iter().cycle() {
                        if stream.write_all(&[*byte]).is_err() {
                            return;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                }
                let _ = stream.write_all(&response);
                let _ = stream.flush();
            });
        }
    });
    endpoint
}

fn http(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A desk whose `[cluster]` endpoint is `endpoint`, TTL 2 s.
fn desk_on(endpoint: &str, tag: &str) -> Desk {
    cluster_desk(endpoint, "A", tag)
}

/// "etcd" answers garbage with terminal escapes, a huge error message, or dribbles
/// its answer a byte at a time: check-procs, safe-shutdown and master-launch end in
/// bounded time, report etcd as the problem, print no control characters and no
/// megabyte of someone else's text, and never run anything unprotected.
#[test]
fn cx_an_etcd_that_answers_garbage_or_slowly_is_reported_not_obeyed() {
    if skip("cx_an_etcd_that_answers_garbage_or_slowly_is_reported_not_obeyed") {
        return;
    }
    let _slot = slot();
    let huge = format!(
        "{{\"error\":\"\\u001b[31m{}\",\"code\":2}}",
        "x".repeat(1 << 20)
    );
    let cases = [
        (
            "CXGARB",
            http(b"\x1b]0;pwned\x07\x1b[31mNOT JSON at all"),
            false,
        ),
        ("CXHUGE", http(huge.as_bytes()), false),
        ("CXSLOW", http(b"{\"kvs\":[]}"), true),
    ];
    for (tag, response, dribble) in cases {
        let endpoint = fake_etcd(response, dribble);
        let desk = desk_on(&endpoint, tag);
        let check = |what: &str, out: &Output, took: Duration| {
            let text = said(out);
            assert!(
                took < Duration::from_secs(20),
                "{tag} {what}: took {took:?}"
            );
            assert!(!text.contains('\x1b'), "{tag} {what}: {text}");
            assert!(!text.contains('\x07'), "{tag} {what}: {text}");
            assert!(text.len() < 64 * 1024, "{tag} {what}: {} bytes", text.len());
            assert_ne!(out.status.code(), Some(0), "{tag} {what}: {text}");
        };
        for args in [&["--json"][..], &[]] {
            let started = Instant::now();
            let out = run(Command::new(tool("check-procs", "check-procs"))
                .arg("--config")
                .arg(desk.config())
                .args(args));
            check("check-procs", &out, started.elapsed());
            let needle = if args.is_empty() {
                "cannot read the cluster's locks"
            } else {
                "cluster_unreachable"
            };
            assert!(said(&out).contains(needle), "{tag}: {}", said(&out));
        }
        let started = Instant::now();
        let out = safe_shutdown(&desk, &["--yes", "--timeout", "2"]);
        check("safe-shutdown", &out, started.elapsed());
        // master-launch runs nothing it cannot lock in etcd: it stands by, or refuses
        // to start (exit 1) saying why, printably.
        let stderr_path = desk.dir.path().join("master-launch.stderr");
        let mut ml = Running::new(
            Command::new(tool("master-launch", "master-launch"))
                .arg("--config")
                .arg(desk.config())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut census = Census::new(&[("A", &desk)]);
        let deadline = Instant::now() + Duration::from_secs(40);
        let exited = loop {
            let now = census.check(tag);
            assert!(now.values().all(Vec::is_empty), "{tag}: {now:?}");
            if let Some(status) = ml.child.try_wait().unwrap() {
                break Some(status);
            }
            if desk.master_log().contains("desk started") {
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "{tag}: master-launch neither started nor ended"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let text = format!(
            "{}{}",
            desk.master_log(),
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        assert!(!text.contains('\x1b'), "{tag}: {text}");
        assert!(
            text.len() < 64 * 1024,
            "{tag}: master-launch said {} bytes",
            text.len()
        );
        match exited {
            Some(status) => assert_eq!(status.code(), Some(1), "{tag}: {text}"),
            None => {
                assert!(
                    text.contains("desk started: 0 processes, 5 standing by"),
                    "{tag}: {text}"
                );
                census.during(Duration::from_millis(500), tag);
                assert_eq!(stop_desk(&desk, ml), 0);
            }
        }
    }
}
