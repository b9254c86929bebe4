//! master-launch on two "hosts" that share one etcd (`[cluster]`, issue #15): each has
//! its own lock dir and `host`, both run on this machine. What must hold across them:
//! at any moment at most one copy of each component, a brain on the host of its
//! watchdog, and a standby that takes over as soon as the other host's key is free
//! (etcd pushes the deletion to its watch), never before.
//!
//! The copies are counted across both hosts by command line, every 20 ms, with the
//! fleet's own copy rules: both desks run the same commands (each bot says its host).

#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::{Duration, Instant};

use fleet_tests::census::{Census, all_once, none_running};
use fleet_tests::etcd::{Etcd, cluster_desk, skip_under_wine as skip};
use fleet_tests::orchestrated::stop_desk;
use fleet_tests::proxy::Proxy;
use fleet_tests::{Desk, Running, start_master_launch, unique, wait_until};

fn etcd_keys(etcd: &Etcd) -> Vec<String> {
    etcd.client()
        .list("/desk/locks/")
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// The first check: two hosts, one config, two accounts, started at once, 20
/// rounds: exactly one copy of each component across both hosts, every round; the host
/// that lost a key stands by for it and says who holds it.
#[test]
fn two_hosts_started_at_once_run_exactly_one_copy_of_each_component_20_rounds() {
    if skip("two_hosts_started_at_once_run_exactly_one_copy_of_each_component_20_rounds") {
        return;
    }
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CDRACE");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CDRACE");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let mut split = 0;
    for round in 0..20 {
        let a_from = desk_a.master_log().len();
        let b_from = desk_b.master_log().len();
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| start_master_launch(&desk_a.config(), &[]).0);
            let b = s.spawn(|| start_master_launch(&desk_b.config(), &[]).0);
            (a.join().unwrap(), b.join().unwrap())
        });
        let running = census.until(Duration::from_secs(20), &format!("round {round}"), all_once);
        // Some more samples: nothing else starts once everything runs.
        for _ in 0..10 {
            census.check(&format!("round {round}, settled"));
            thread::sleep(Duration::from_millis(20));
        }
        let on_b = running.values().filter(|h| h[0] == "B").count();
        if on_b > 0 && on_b < running.len() {
            split += 1;
        }
        // The host without a component says it stands by, naming the holder.
        for (name, hosts) in &running {
            let (standby, holder) = if hosts[0] == "A" {
                (&desk_b, "A")
            } else {
                (&desk_a, "B")
            };
            let from = if holder == "A" { b_from } else { a_from };
            // The other host says so once it has looked (under load, a moment after).
            let deadline = Instant::now() + Duration::from_secs(10);
            while !standby.master_log()[from..].contains(&format!("{name}: stands by")) {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {name} runs on {holder}; the other log:\n{}",
                    &standby.master_log()[from..]
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(stop_desk(&desk_a, a), 0, "round {round}");
        assert_eq!(stop_desk(&desk_b, b), 0, "round {round}");
        census.until(
            Duration::from_secs(10),
            &format!("round {round}, stopping"),
            none_running,
        );
        assert_eq!(etcd_keys(&etcd), Vec::<String>::new(), "round {round}");
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("20 rounds: {split} split the desk between the hosts");
    }
}

/// Starts host A's desk through `endpoint` and host B's as its standby; returns both
/// once A runs everything and B says it stands by for all five.
fn a_runs_b_stands_by(desk_a: &Desk, desk_b: &Desk, census: &mut Census) -> (Running, Running) {
    let (a, _) = start_master_launch(&desk_a.config(), &[]);
    desk_a.wait_until_running();
    let (b, _) = start_master_launch(&desk_b.config(), &[]);
    wait_until("B to stand by for every component", || {
        desk_b
            .master_log()
            .matches(": stands by: A holds it")
            .count()
            >= 3
            && desk_b
                .master_log()
                .contains("desk started: 0 processes, 5 standing by")
    });
    let now = census.check("A runs, B stands by");
    assert!(now.values().all(|h| h == &["A"]), "{now:?}");
    (a, b)
}

/// The second check: kill -9 of A's master-launch: A's bots die at once (the
/// local binding); B, standing by, starts them within TTL + 1 s; never two copies at
/// any moment (sampled every 20 ms).
#[test]
fn a_killed_holder_loses_its_bots_at_once_and_the_standby_takes_over_within_the_ttl() {
    if skip("a_killed_holder_loses_its_bots_at_once_and_the_standby_takes_over_within_the_ttl") {
        return;
    }
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CDKILL");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CDKILL");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (mut a, b) = a_runs_b_stands_by(&desk_a, &desk_b, &mut census);
    // Asked to start a component A runs, B refuses (exit 3), naming the holder.
    let start = std::process::Command::new(fleet_tests::tool("master-launch", "master-launch"))
        .arg("--config")
        .arg(desk_b.config())
        .args([
            "start",
            &*format!("{}1", unique("WATCHDOG_CDKILL")),
            "--timeout",
            "10",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(3), "{said}");
    assert!(said.contains("stands by: A holds it"), "{said}");
    census.check("after a refused start");
    a.kill();
    let killed = Instant::now();
    let (a_gone, _) = census.until_at(Duration::from_secs(2), "after the kill", |c| {
        c.values().all(|h| !h.contains(&"A".to_string()))
    });
    let (b_first, _) = census.until_at(Duration::from_secs(10), "takeover", |c| {
        c.values().any(|h| h == &["B"])
    });
    let (b_runs, _) = census.until_at(Duration::from_secs(10), "takeover", |c| {
        c.values().all(|h| h == &["B"])
    });
    let ttl = Duration::from_secs(2);
    // Within TTL + 1 s its first bot; its brains follow their watchdogs after the
    // watchdogs have run for SETTLE (DESIGN.md rule 13), so the whole desk gets 1 s more.
    assert!(
        b_first - killed <= ttl + Duration::from_secs(1),
        "B's first bot {:?} after the kill (TTL {ttl:?}); B's log:\n{}",
        b_first - killed,
        desk_b.master_log()
    );
    assert!(
        b_runs - killed <= ttl + Duration::from_secs(3),
        "B ran everything {:?} after the kill (TTL {ttl:?}); B's log:\n{}",
        b_runs - killed,
        desk_b.master_log()
    );
    // Not before A's lease could end: 2 s after its last renewal, which its keeper
    // makes every 2/3 s (1 s: room for a keeper running late on a loaded machine).
    assert!(b_first > a_gone);
    assert!(
        b_first - killed >= Duration::from_secs(1),
        "B started {:?} after the kill",
        b_first - killed
    );
    let log = desk_b.master_log();
    assert!(log.contains("its key is free: taking it"), "{log}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "kill -9, TTL 2 s, standby: A's bots gone {:?} after the kill, B's first bot {:?}, \
             all of B's {:?}",
            a_gone - killed,
            b_first - killed,
            b_runs - killed
        );
    }
    assert_eq!(stop_desk(&desk_b, b), 0);
}

/// The third check: A loses etcd (its proxy stops): A stops its bots before its
/// lease ends, B starts them only after; the logs say why; the gap without a running
/// bot is measured. A then stands by itself (it cannot reach etcd), and starts nothing.
#[test]
fn a_partitioned_holder_fences_first_and_the_standby_starts_only_after() {
    if skip("a_partitioned_holder_fences_first_and_the_standby_starts_only_after") {
        return;
    }
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd.endpoint);
    let desk_a = cluster_desk(&proxy.endpoint, "A", "CDPART");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CDPART");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, b) = a_runs_b_stands_by(&desk_a, &desk_b, &mut census);

    proxy.partition();
    let cut = Instant::now();
    let (a_gone, _) = census.until_at(Duration::from_secs(4), "after the cut", none_running);
    let (b_first, _) = census.until_at(Duration::from_secs(10), "takeover", |c| {
        c.values().any(|h| h == &["B"])
    });
    let (b_all, _) = census.until_at(Duration::from_secs(10), "takeover", |c| {
        c.values().all(|h| h == &["B"])
    });
    // A's bots were gone before its lease could end: 2 s after its last renewal,
    // which was before the cut.
    assert!(
        a_gone - cut <= Duration::from_secs(2),
        "A's bots ran {:?} after the cut",
        a_gone - cut
    );
    assert!(b_first > a_gone);
    let log_a = desk_a.master_log();
    assert!(
        log_a.contains("SELF-FENCING: cannot renew the lease of /desk/locks/"),
        "{log_a}"
    );
    // A says so once its request through the cut proxy has timed out.
    wait_until("A to say it stands by", || {
        desk_a.master_log().contains("stands by: cannot reach etcd")
    });
    let log_b = desk_b.master_log();
    assert!(log_b.contains("its key is free: taking it"), "{log_b}");
    // Healed, A finds B holding everything: it goes on standing by, starting nothing.
    proxy.heal();
    thread::sleep(Duration::from_secs(3));
    let now = census.check("healed");
    assert!(now.values().all(|h| h == &["B"]), "{now:?}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "partition, TTL 2 s, standby: A's bots gone {:?} after the cut, B's first bot {:?}, \
             all {:?}: no bot ran for {:?}",
            a_gone - cut,
            b_first - cut,
            b_all - cut,
            b_first - a_gone
        );
    }
    assert_eq!(stop_desk(&desk_b, b), 0);
    assert_eq!(stop_desk(&desk_a, a), 0);
}

/// safe-shutdown on the standby host stops the desk on the host that runs it, through
/// that host's master-launch (stop request keys in etcd, stage by stage: brains, then
/// watchdogs, then the global), never by signalling another host's processes; the
/// standby takes nothing over, and the requests are withdrawn so that the desk can be
/// started again at once.
#[test]
fn safe_shutdown_on_the_standby_host_stops_the_desk_through_its_holder_in_order() {
    if skip("safe_shutdown_on_the_standby_host_stops_the_desk_through_its_holder_in_order") {
        return;
    }
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CDSAFE");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CDSAFE");
    let mut census = Census::new(&[("A", &desk_a), ("B", &desk_b)]);
    let (a, mut b) = a_runs_b_stands_by(&desk_a, &desk_b, &mut census);
    let stop = thread::spawn({
        let config = desk_b.config();
        move || {
            std::process::Command::new(fleet_tests::tool("safe-shutdown", "safe-shutdown"))
                .arg("--config")
                .arg(config)
                .args(["--yes", "--timeout", "5"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        }
    });
    // Sampled all along: never two copies, never a brain without its watchdog, and
    // nothing ever runs on B.
    census.until(Duration::from_secs(20), "stopping", |c| {
        assert!(c.values().all(|h| !h.contains(&"B".to_string())), "{c:?}");
        none_running(c)
    });
    let stop = stop.join().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&stop.stdout),
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(stop.status.code(), Some(0), "{said}");
    assert!(said.contains("etcd: runs on host A"), "{said}");
    let audit = std::fs::read_to_string(desk_b.dir.path().join("logs/safe-shutdown.log")).unwrap();
    assert_eq!(
        audit
            .matches("stop request through etcd to its holder on host A")
            .count(),
        5,
        "{audit}"
    );
    fleet_tests::wait_gone(&[b.pid()]);
    let _ = b.child.wait();
    // A's master-launch stopped them on request, brains first.
    let log_a = desk_a.master_log();
    let asked = |name: &str| {
        log_a
            .find(&format!("{name}: stop requested by pid"))
            .unwrap_or_else(|| panic!("{name} was not stopped on request:\n{log_a}"))
    };
    for account in [
        &*format!("{}1", unique("CDSAFE")),
        &*format!("{}2", unique("CDSAFE")),
    ] {
        assert!(asked(&format!("BRAIN_{account}")) < asked(&format!("WATCHDOG_{account}")));
        assert!(asked(&format!("WATCHDOG_{account}")) < asked(&unique("qs_CDSAFE")));
    }
    assert!(log_a.contains("on host B (through etcd)"), "{log_a}");
    assert_eq!(etcd_keys(&etcd), Vec::<String>::new());
    assert!(etcd.client().list("/desk/stop/").unwrap().is_empty());
    // Withdrawn: the desk starts again at once, here on B.
    let (b, _) = start_master_launch(&desk_b.config(), &[]);
    desk_b.wait_until_running();
    census.check("started again");
    assert_eq!(stop_desk(&desk_b, b), 0);
    assert_eq!(stop_desk(&desk_a, a), 0);
}
