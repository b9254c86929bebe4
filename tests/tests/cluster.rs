//! Cluster locks against a real etcd (`fleet_tests::etcd`): one key, one holder,
//! across "hosts" that share nothing but etcd; a lease that ends frees its key, never
//! earlier; a holder cut off from etcd knows it before half its lease is gone.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use fleet_tests::etcd::{Etcd, skip_under_wine as skip};
use fleet_tests::proxy::Proxy;
use lockcore::cluster::{ClusterClaim, ClusterError, ClusterLock, EtcdClient, Fence};
use lockcore::config::ClusterConfig;
use serde_json::json;

fn cluster(endpoint: &str, host: &str, ttl_secs: u64) -> ClusterConfig {
    ClusterConfig {
        endpoints: vec![endpoint.to_string()],
        lease_ttl: Duration::from_secs(ttl_secs),
        host: host.to_string(),
        desk: "desk".to_string(),
        auth: None,
        tls: None,
        line: 0,
    }
}

fn client(cluster: &ClusterConfig) -> Arc<EtcdClient> {
    Arc::new(EtcdClient::from_config(cluster))
}

fn record(pid: u32) -> serde_json::Value {
    json!({ "lock_name": "BRAIN_ATLAS", "pid": pid })
}

/// Waits until the holder's fence says keep. A keeper thread running late on a loaded
/// machine may let it read "ask to stop" for a moment; renewals that fail never bring
/// it back, so this still fails when they do.
fn wait_renewed(lock: &ClusterLock) {
    fleet_tests::wait_until(
        &format!("the lease of {} to be renewed", lock.key()),
        || lock.fence() == Fence::Keep,
    );
}

fn held(claim: ClusterClaim) -> ClusterLock {
    match claim {
        ClusterClaim::Held(lock) => lock,
        ClusterClaim::HeldElsewhere(holder) => panic!("expected the key, held by {holder:?}"),
        ClusterClaim::StopRequested(request) => panic!("expected the key, {request:?}"),
    }
}

#[test]
fn two_hosts_racing_for_one_key_exactly_one_wins_every_round() {
    if skip("two_hosts_racing_for_one_key_exactly_one_wins_every_round") {
        return;
    }
    let etcd = Etcd::start();
    let hosts = ["A", "B"].map(|host| cluster(&etcd.endpoint, host, 5));
    for round in 0..20 {
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = hosts
            .iter()
            .cloned()
            .map(|config| {
                let barrier = Arc::clone(&barrier);
                // Each host its own client and connections: they share only etcd.
                let client = client(&config);
                thread::spawn(move || {
                    barrier.wait();
                    let claim = ClusterLock::acquire(client, &config, "BRAIN_ATLAS", &record(1));
                    (config.host, claim.unwrap())
                })
            })
            .collect();
        let results: Vec<(String, ClusterClaim)> =
            racers.into_iter().map(|r| r.join().unwrap()).collect();
        let winners: Vec<&String> = results
            .iter()
            .filter(|(_, c)| matches!(c, ClusterClaim::Held(_)))
            .map(|(h, _)| h)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let winner = winners[0].clone();
        for (host, claim) in &results {
            if let ClusterClaim::HeldElsewhere(holder) = claim {
                assert_ne!(host, &winner);
                assert_eq!(
                    holder.host.as_deref(),
                    Some(winner.as_str()),
                    "round {round}"
                );
                assert!(holder.value.contains("\"pid\":1"), "{}", holder.value);
            }
        }
        for (_, claim) in results {
            if let ClusterClaim::Held(lock) = claim {
                lock.release().unwrap();
            }
        }
        assert_eq!(etcd.client().get("/desk/locks/BRAIN_ATLAS").unwrap(), None);
    }
}

#[test]
fn release_deletes_the_key_and_the_next_holder_takes_it_at_once() {
    if skip("release_deletes_the_key_and_the_next_holder_takes_it_at_once") {
        return;
    }
    let etcd = Etcd::start();
    let a = cluster(&etcd.endpoint, "A", 10);
    let b = cluster(&etcd.endpoint, "B", 10);
    let lock = held(ClusterLock::acquire(client(&a), &a, "WATCHDOG_GL_3", &record(7)).unwrap());
    let kv = etcd
        .client()
        .get("/desk/locks/WATCHDOG_GL_3")
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, lock.lease());
    let value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(value["host"], "A");
    assert_eq!(value["pid"], 7);
    lock.release().unwrap();
    let lock = held(ClusterLock::acquire(client(&b), &b, "WATCHDOG_GL_3", &record(8)).unwrap());
    wait_renewed(&lock);
    drop(lock);
    assert_eq!(
        etcd.client().get("/desk/locks/WATCHDOG_GL_3").unwrap(),
        None
    );
}

#[test]
fn an_abandoned_lease_frees_the_key_after_its_ttl_and_not_before() {
    if skip("an_abandoned_lease_frees_the_key_after_its_ttl_and_not_before") {
        return;
    }
    let etcd = Etcd::start();
    let a = cluster(&etcd.endpoint, "A", 2);
    let b = cluster(&etcd.endpoint, "B", 2);
    let lock = held(ClusterLock::acquire(client(&a), &a, "BRAIN_ATLAS", &record(1)).unwrap());
    // Let the keeper renew a few times: the lease must outlive the grant's TTL.
    thread::sleep(Duration::from_millis(1500));
    wait_renewed(&lock);
    let last_renewal = lock.status().renewed_at;
    let created_at_revision = etcd
        .client()
        .get("/desk/locks/BRAIN_ATLAS")
        .unwrap()
        .unwrap();
    lock.abandon();
    let abandoned = Instant::now();
    let b_client = client(&b);
    let taken = loop {
        match ClusterLock::acquire(Arc::clone(&b_client), &b, "BRAIN_ATLAS", &record(2)).unwrap() {
            ClusterClaim::Held(lock) => break (Instant::now(), lock),
            ClusterClaim::HeldElsewhere(holder) => {
                assert_eq!(holder.host.as_deref(), Some("A"));
            }
            ClusterClaim::StopRequested(request) => panic!("{request:?}"),
        }
        assert!(
            abandoned.elapsed() < Duration::from_secs(5),
            "the key outlived its lease by far: {}",
            etcd.log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    // etcd ends a lease no earlier than TTL after it received the last renewal, which
    // was sent no earlier than `last_renewal`.
    assert!(
        taken.0 >= last_renewal + Duration::from_secs(2),
        "taken {:?} after the last renewal",
        taken.0 - last_renewal
    );
    // The old holder's release cannot delete the new holder's key.
    assert!(
        !etcd
            .client()
            .delete_if_created_at(
                "/desk/locks/BRAIN_ATLAS",
                created_at_revision.create_revision
            )
            .unwrap()
    );
    let kv = etcd
        .client()
        .get("/desk/locks/BRAIN_ATLAS")
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, taken.1.lease());
}

#[test]
fn a_partitioned_holder_fences_before_its_lease_ends_and_the_other_host_only_after() {
    if skip("a_partitioned_holder_fences_before_its_lease_ends_and_the_other_host_only_after") {
        return;
    }
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd.endpoint);
    let ttl = Duration::from_secs(2);
    let a = cluster(&proxy.endpoint, "A", 2);
    let b = cluster(&etcd.endpoint, "B", 2);
    let lock = held(ClusterLock::acquire(client(&a), &a, "BRAIN_ATLAS", &record(1)).unwrap());
    thread::sleep(Duration::from_millis(1000));
    wait_renewed(&lock);

    proxy.partition();
    let cut = Instant::now();
    let b_client = client(&b);
    // A's fence is watched on a thread of its own, so that B's requests (each up to
    // the client's timeout on a loaded machine) do not delay noticing it.
    let (asked, forced, taken) = thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut asked, mut forced) = (None, None);
            while forced.is_none() && cut.elapsed() < ttl * 4 {
                let now = Instant::now();
                match lock.fence() {
                    Fence::Keep => {}
                    Fence::AskStop => {
                        asked.get_or_insert(now);
                    }
                    Fence::Force => {
                        asked.get_or_insert(now);
                        forced = Some(now);
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
            (asked, forced)
        });
        let taken = loop {
            if let ClusterClaim::Held(b_lock) =
                ClusterLock::acquire(Arc::clone(&b_client), &b, "BRAIN_ATLAS", &record(2)).unwrap()
            {
                break (Instant::now(), b_lock);
            }
            assert!(
                cut.elapsed() < ttl * 4,
                "B never got the key: {}",
                etcd.log()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let (asked, forced) = watcher.join().unwrap();
        (asked, forced, taken)
    });
    let (asked, forced, taken) = (asked.unwrap(), forced.unwrap(), taken.0);
    let last_renewal = lock.status().renewed_at;
    // A knew before TTL/2 (plus the polling's slack) after the cut...
    assert!(
        asked - cut <= ttl / 2 + Duration::from_millis(500),
        "A asked its child to stop {:?} after the cut",
        asked - cut
    );
    // ...forced before its lease could end, and B took the key only after that.
    assert!(forced < taken, "B took the key before A forced its child");
    assert!(forced <= last_renewal + ttl - ttl / 4 + Duration::from_millis(500));
    assert!(taken >= last_renewal + ttl);
    let reason = lock.fence_reason();
    assert!(
        reason.contains("cannot renew the lease of /desk/locks/BRAIN_ATLAS since"),
        "{reason}"
    );
    // The gap without a holder: from A's force to B's start.
    let gap = taken - forced;
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");
    // The measured times, for docs/reference.md's takeover figures (`--nocapture`).
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "partition, TTL {ttl:?}: asked {:?}, forced {:?}, B took the key {:?} after the \
             cut; {gap:?} without a holder",
            asked - cut,
            forced - cut,
            taken - cut
        );
    }
    lock.abandon();
}

#[test]
fn a_revoked_lease_is_seen_as_gone_and_forces_at_once() {
    if skip("a_revoked_lease_is_seen_as_gone_and_forces_at_once") {
        return;
    }
    let etcd = Etcd::start();
    let a = cluster(&etcd.endpoint, "A", 3);
    let lock = held(ClusterLock::acquire(client(&a), &a, "quantum_server", &record(1)).unwrap());
    etcd.client().revoke(lock.lease()).unwrap();
    let start = Instant::now();
    while lock.fence() != Fence::Force {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            lock.status()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(lock.status().gone);
    assert!(
        lock.fence_reason().contains("is gone"),
        "{}",
        lock.fence_reason()
    );
    // Releasing a lease etcd already dropped is not an error.
    lock.release().unwrap();
}

#[test]
fn a_dead_endpoint_is_skipped_and_no_endpoint_is_an_error_naming_them() {
    if skip("a_dead_endpoint_is_skipped_and_no_endpoint_is_an_error_naming_them") {
        return;
    }
    let etcd = Etcd::start();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut config = cluster(&dead, "A", 2);
    config.endpoints.push(etcd.endpoint.clone());
    let lock = held(ClusterLock::acquire(client(&config), &config, "BRAIN_X", &record(1)).unwrap());
    lock.release().unwrap();

    let config = cluster(&dead, "A", 2);
    let start = Instant::now();
    let error = ClusterLock::acquire(client(&config), &config, "BRAIN_X", &record(1)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(error, ClusterError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains(&dead), "{error}");
}

#[test]
fn list_reads_every_lock_under_the_desk_prefix() {
    if skip("list_reads_every_lock_under_the_desk_prefix") {
        return;
    }
    let etcd = Etcd::start();
    let a = cluster(&etcd.endpoint, "A", 5);
    let mut other_desk = cluster(&etcd.endpoint, "A", 5);
    other_desk.desk = "desk2".into();
    let c = client(&a);
    let locks: Vec<ClusterLock> = ["BRAIN_A", "WATCHDOG_A"]
        .iter()
        .map(|name| held(ClusterLock::acquire(Arc::clone(&c), &a, name, &record(1)).unwrap()))
        .collect();
    let _other = held(
        ClusterLock::acquire(client(&other_desk), &other_desk, "BRAIN_A", &record(1)).unwrap(),
    );
    let keys: Vec<String> = etcd
        .client()
        .list("/desk/locks/")
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/desk/locks/BRAIN_A", "/desk/locks/WATCHDOG_A"]);
    drop(locks);
    assert!(etcd.client().list("/desk/locks/").unwrap().is_empty());
}

/// One plain HTTP POST (the test's own, to set etcd up without the client under test).
fn post(endpoint: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// With authentication on in etcd: the right user and password take and renew the
/// key; none, or a wrong password, is an error that says so.
#[test]
fn user_and_password_authenticate_and_a_wrong_password_is_refused() {
    if skip("user_and_password_authenticate_and_a_wrong_password_is_refused") {
        return;
    }
    let etcd = Etcd::start();
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let answer = post(&etcd.endpoint, path, body);
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    let mut config = cluster(&etcd.endpoint, "A", 2);
    let error = ClusterLock::acquire(client(&config), &config, "BRAIN_X", &record(1)).unwrap_err();
    assert!(error.to_string().contains("user name is empty"), "{error}");

    config.auth = Some(("root".into(), "wrong".into()));
    let error = ClusterLock::acquire(client(&config), &config, "BRAIN_X", &record(1)).unwrap_err();
    assert!(
        error.to_string().contains("authentication failed"),
        "{error}"
    );

    config.auth = Some(("root".into(), "pw".into()));
    let lock = held(ClusterLock::acquire(client(&config), &config, "BRAIN_X", &record(1)).unwrap());
    // Renewals carry the token too: the lease outlives its TTL.
    thread::sleep(Duration::from_millis(2500));
    wait_renewed(&lock);
    lock.release().unwrap();
}

/// A stop request placed through etcd (safe-shutdown on another host) keeps every host
/// from taking the component's key while it stands, in the same transaction that
/// would take it; withdrawn, the key can be taken again at once. Its lease outlives
/// its deadline by a TTL, then it goes by itself.
#[test]
fn a_stop_request_key_keeps_every_host_from_taking_the_key_while_it_stands() {
    if skip("a_stop_request_key_keeps_every_host_from_taking_the_key_while_it_stands") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b) = (
        cluster(&etcd.endpoint, "A", 2),
        cluster(&etcd.endpoint, "B", 2),
    );
    let request = lockcore::StopRequest::new("BRAIN_ATLAS", Duration::from_secs(1));
    lockcore::cluster::place_stop_request(&client(&b), &b, &request).unwrap();
    let stored = etcd
        .client()
        .get("/desk/stop/BRAIN_ATLAS")
        .unwrap()
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(value["requested_on"], "B", "{value}");
    assert_eq!(value["requested_by"], std::process::id(), "{value}");
    match ClusterLock::acquire(client(&a), &a, "BRAIN_ATLAS", &record(1)).unwrap() {
        ClusterClaim::StopRequested(seen) => {
            assert_eq!(seen.name, "BRAIN_ATLAS");
            assert_eq!(seen.requested_on.as_deref(), Some("B"));
            assert!(
                seen.requester().contains("on host B"),
                "{}",
                seen.requester()
            );
        }
        other => panic!("a stop request did not block the key: {other:?}"),
    }
    assert_eq!(etcd.client().get("/desk/locks/BRAIN_ATLAS").unwrap(), None);
    // Another component's key is not blocked.
    drop(held(
        ClusterLock::acquire(client(&a), &a, "WATCHDOG_ATLAS", &record(1)).unwrap(),
    ));
    // Left alone, the request ends with its lease: deadline (1 s) + TTL (2 s).
    let placed = Instant::now();
    let taken = loop {
        if let ClusterClaim::Held(lock) =
            ClusterLock::acquire(client(&a), &a, "BRAIN_ATLAS", &record(1)).unwrap()
        {
            break (placed.elapsed(), lock);
        }
        assert!(placed.elapsed() < Duration::from_secs(8), "{}", etcd.log());
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        taken.0 >= Duration::from_secs(2),
        "the request went after {:?}",
        taken.0
    );
}

/// A corrupt stop request value still blocks, and still reads as a request (with the
/// component's own timeout), saying why.
#[test]
fn an_unreadable_stop_request_key_still_means_stop() {
    if skip("an_unreadable_stop_request_key_still_means_stop") {
        return;
    }
    let etcd = Etcd::start();
    let a = cluster(&etcd.endpoint, "A", 2);
    etcd.client()
        .put("/desk/stop/BRAIN_ATLAS", b"\0not json", 0)
        .unwrap();
    match ClusterLock::acquire(client(&a), &a, "BRAIN_ATLAS", &record(1)).unwrap() {
        ClusterClaim::StopRequested(seen) => {
            assert_eq!(seen.deadline, None);
            let why = seen.unreadable.unwrap_or_default();
            assert!(why.contains("/desk/stop/BRAIN_ATLAS"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}
