//! check-procs' view of a cluster, against a real etcd (`fleet_tests::etcd`): which
//! host holds each component and the lease time left; a component another host runs
//! is `elsewhere`, and that host's bots are not unlocked copies here (both "hosts" run
//! on this one machine and see each other's processes); an etcd that cannot be read is
//! a problem of its own, in bounded time, with the local view still shown; without
//! `[cluster]` the fields are null and no connection is made.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fleet_tests::etcd::{Etcd, skip_under_wine as skip};
use fleet_tests::proxy::Proxy;
use fleet_tests::{Desk, tool, unique};
use serde_json::Value;

/// The lease of the desks here: long enough that a loaded machine's renewal keeps the
/// time left well above zero, short enough for the test.
const TTL_SECS: u64 = 6;

/// A desk for "host" `host` whose locks go through `endpoint`; accounts `<tag>X` and
/// `<tag>Y`, global `qs_<tag>`. Both hosts' bots have the same command lines, so each
/// host's check-procs would take the other's bots for copies of its own components
/// (names of its own per test: tests running at once must not see each other's bots).
fn cluster_desk(endpoint: &str, host: &str, tag: &str) -> Desk {
    let tag = unique(tag);
    Desk::with_options(
        &format!("qs_{tag}"),
        &[&format!("{tag}X"), &format!("{tag}Y")],
        &[],
        &format!(
            "\n[cluster]\nendpoints = [\"{endpoint}\"]\nlease_ttl_secs = {TTL_SECS}\nhost = \"{host}\"\n"
        ),
    )
}

/// The same components with no `[cluster]` (its own lock dir).
fn plain_desk(tag: &str) -> Desk {
    let tag = unique(tag);
    Desk::new(
        &format!("qs_{tag}"),
        &[&format!("{tag}X"), &format!("{tag}Y")],
    )
}

fn check_procs(config: &Path, json: bool) -> Output {
    let mut command = Command::new(tool("check-procs", "check-procs"));
    command
        .arg("--config")
        .arg(config)
        .env_remove("FLEET_HOST")
        .env_remove("NO_COLOR");
    if json {
        command.arg("--json");
    }
    command.output().unwrap()
}

/// `check-procs --json`: exit code and document.
fn json(config: &Path) -> (i32, Value) {
    let output = check_procs(config, true);
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), document)
}

/// `check-procs` (table): exit code and text.
fn table(config: &Path) -> (i32, String) {
    let output = check_procs(config, false);
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

fn components(document: &Value) -> &Vec<Value> {
    document["components"].as_array().unwrap()
}

fn problem_kinds(document: &Value) -> Vec<String> {
    document["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

fn assert_lease_left(component: &Value) {
    let left = component["lease_ttl_left"].as_u64();
    assert!(
        left.is_some_and(|left| (1..=TTL_SECS).contains(&left)),
        "lease_ttl_left not in (0, {TTL_SECS}]: {component}"
    );
}

/// The table with what changes from run to run made constant: every number (pids,
/// lease seconds, ports) is `N`, and the autostart line (it names a hash of the temp
/// config's path) is dropped.
fn normalised_table(text: &str) -> String {
    let text = without_run_suffix(text);
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("Starts by itself:") {
            out.push_str("Starts by itself: (redacted)\n");
            continue;
        }
        let mut in_number = false;
        for c in line.chars() {
            if c.is_ascii_digit() {
                if !in_number {
                    out.push('N');
                }
                in_number = true;
            } else {
                out.push(c);
                in_number = false;
            }
        }
        out.push('\n');
    }
    out
}

/// A JSON string without this run's suffix in it; anything else as it is.
fn unsuffixed(value: &Value) -> Value {
    match value.as_str() {
        Some(text) => Value::from(text.replace(&fleet_tests::run_suffix(), "")),
        None => value.clone(),
    }
}

/// `text` without this run's suffix in the names (see [`fleet_tests::run_suffix`]),
/// its table (the lines up to the first empty one) aligned again as check-procs aligns
/// it (each column as wide as its widest cell, two spaces between), so the golden file
/// holds the names the test gave.
fn without_run_suffix(text: &str) -> String {
    let text = text.replace(&fleet_tests::run_suffix(), "");
    let table: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
    let cells: Vec<Vec<&str>> = table
        .iter()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &cells {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    for line in text.lines().skip(table.len()) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Host A's master-launch runs the desk; check-procs with host B's config (same etcd,
/// same components, own lock dir) shows every component held by A with its lease's
/// time left, `elsewhere`, healthy, and A's bots not as unlocked copies; the same
/// components without `[cluster]` do show them as unlocked (so the view is what keeps
/// them apart). check-procs on A shows A and `running`. A copy B starts under its
/// local lock only, while A holds the key, is a duplicate.
#[test]
fn another_hosts_components_are_elsewhere_with_its_name_and_lease_and_not_unlocked_copies() {
    if skip(
        "another_hosts_components_are_elsewhere_with_its_name_and_lease_and_not_unlocked_copies",
    ) {
        return;
    }
    let etcd = Etcd::start();
    let desk_a = cluster_desk(&etcd.endpoint, "A", "CVHELD");
    let desk_b = cluster_desk(&etcd.endpoint, "B", "CVHELD");
    let plain = plain_desk("CVHELD");
    let (_a, _a_lines) = fleet_tests::start_master_launch(&desk_a.config(), &[]);
    desk_a.wait_until_running();
    let names = desk_a.component_names();

    // A's own view: running here, held by A.
    let (code, on_a) = json(&desk_a.config());
    assert_eq!(code, 0, "{on_a:#}");
    for component in components(&on_a) {
        assert_eq!(component["state"], "running", "{component}");
        assert_eq!(component["host"], "A", "{component}");
        assert_eq!(component["copies"], 1, "{component}");
        assert_lease_left(component);
    }
    let a_pids: Vec<u64> = components(&on_a)
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    let (code, a_table) = table(&desk_a.config());
    assert_eq!(code, 0, "{a_table}");
    for name in &names {
        let row = a_table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{a_table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[2..4], ["running", "A"], "{row}");
    }
    assert!(
        a_table.contains("Cluster: this machine is \"A\"; etcd"),
        "{a_table}"
    );

    // Without the cluster's view, A's bots are copies started by hand.
    let (code, seen_plain) = json(&plain.config());
    assert_eq!(code, 1, "{seen_plain:#}");
    assert_eq!(
        problem_kinds(&seen_plain),
        vec!["unlocked"; names.len()],
        "{seen_plain:#}"
    );

    // B's view: every component elsewhere, on A, healthy.
    let (code, on_b) = json(&desk_b.config());
    assert_eq!(code, 0, "{on_b:#}");
    assert_eq!(on_b["healthy"], true);
    assert_eq!(on_b["problems"], Value::Array(vec![]), "{on_b:#}");
    assert_eq!(on_b["processes"], Value::Array(vec![]), "{on_b:#}");
    for component in components(&on_b) {
        assert_eq!(component["state"], "elsewhere", "{component}");
        assert_eq!(component["host"], "A", "{component}");
        assert_eq!(component["copies"], 0, "{component}");
        assert_eq!(component["pid"], Value::Null, "{component}");
        assert_lease_left(component);
    }
    let (code, b_table) = table(&desk_b.config());
    assert_eq!(code, 0, "{b_table}");
    assert!(b_table.contains("No problems found."), "{b_table}");
    // Each row names the pid A's bot has there (this machine's, in the test).
    for (name, pid) in names.iter().zip(&a_pids) {
        let row = b_table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{b_table}"));
        assert!(
            row.contains(&format!("runs on host A, pid {pid} there, lease ")),
            "{row}"
        );
    }
    let projection: Vec<Value> = components(&on_b)
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": unsuffixed(&c["name"]), "account": unsuffixed(&c["account"]),
                "role": c["role"],
                "state": c["state"], "host": c["host"], "lease_ttl_left": "(1..=6)",
                "pid": c["pid"], "holder_pid": c["holder_pid"], "copies": c["copies"],
            })
        })
        .collect();
    insta::assert_json_snapshot!("held_by_a_seen_from_b_json", projection);
    insta::assert_snapshot!("held_by_a_seen_from_b_table", normalised_table(&b_table));

    // A copy started on B under B's local lock only (a hand start with the lock helper,
    // no key), while A holds the key: two machines run it, a duplicate.
    let twice = &names[2];
    let hand = desk_b.start_locked(twice, &[]);
    let (code, on_b) = json(&desk_b.config());
    assert_eq!(code, 1, "{on_b:#}");
    // It is a brain, and its watchdog does not run on B: unguarded here too (a brain
    // never runs on another host than its watchdog, DESIGN.md rule 13).
    assert_eq!(problem_kinds(&on_b), ["duplicate", "unguarded"], "{on_b:#}");
    let problem = &on_b["problems"][0];
    assert_eq!(problem["name"], twice.as_str());
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.contains("under this machine's lock, but its cluster key is held by host A"),
        "{message}"
    );
    let component = components(&on_b)
        .iter()
        .find(|c| c["name"] == twice.as_str())
        .unwrap();
    assert_eq!(component["state"], "duplicate", "{component}");
    assert_eq!(component["host"], "A", "{component}");
    assert_eq!(component["copies"], 1, "{component}");
    assert_ne!(component["pid"], Value::Null, "{component}");
    assert!(!a_pids.contains(&component["pid"].as_u64().unwrap()));
    drop(hand);
}

/// etcd stops: check-procs says so as a problem of its own naming the endpoint (exit
/// 1), at once, and still shows what runs here.
#[test]
fn a_stopped_etcd_is_a_cluster_problem_naming_the_endpoint_and_the_local_view_is_shown() {
    if skip("a_stopped_etcd_is_a_cluster_problem_naming_the_endpoint_and_the_local_view_is_shown") {
        return;
    }
    let etcd = Etcd::start();
    let desk = cluster_desk(&etcd.endpoint, "B", "CVDOWN");
    // A bot under its local lock only (the test's lock-taker takes no key): a watchdog,
    // which may run alone (a brain alone is `unguarded`, DESIGN.md rule 13).
    let name = format!("WATCHDOG_{}", desk.accounts[0]);
    let _bot = desk.start_locked(&name, &[]);
    let (code, before) = json(&desk.config());
    assert_eq!(code, 0, "{before:#}");
    let endpoint = etcd.endpoint.clone();
    drop(etcd);

    let started = Instant::now();
    let (code, after) = json(&desk.config());
    let took = started.elapsed();
    assert_eq!(code, 1, "{after:#}");
    assert_eq!(problem_kinds(&after), ["cluster_unreachable"], "{after:#}");
    let problem = &after["problems"][0];
    assert_eq!(problem["name"], "/desk/locks/");
    let message = problem["message"].as_str().unwrap();
    assert!(message.contains(&endpoint), "{message}");
    assert!(message.contains("cannot reach etcd"), "{message}");
    assert!(message.contains("check that etcd runs"), "{message}");
    assert!(took < Duration::from_secs(10), "check-procs took {took:?}");
    for component in components(&after) {
        assert_eq!(component["host"], Value::Null, "{component}");
        assert_eq!(component["lease_ttl_left"], Value::Null, "{component}");
        let expected = if component["name"] == name.as_str() {
            "running"
        } else {
            "stopped"
        };
        assert_eq!(component["state"], expected, "{component}");
    }

    let (code, text) = table(&desk.config());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("CLUSTER_UNREACHABLE"), "{text}");
    assert!(text.contains(&endpoint), "{text}");
    assert!(
        text.contains("cannot be read (see the problems below)"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with(&name)).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2..5], ["running", "?", "?"], "{row}");
}

/// An etcd that accepts connections and never answers (a black hole between here and
/// etcd): check-procs ends within the request timeout (TTL/6 per request), not later,
/// with the same problem.
#[test]
fn an_etcd_that_never_answers_costs_at_most_the_request_timeout() {
    if skip("an_etcd_that_never_answers_costs_at_most_the_request_timeout") {
        return;
    }
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd.endpoint);
    let desk = cluster_desk(&proxy.endpoint, "B", "CVHOLE");
    let (code, before) = json(&desk.config());
    assert_eq!(code, 0, "{before:#}");
    proxy.partition();
    let started = Instant::now();
    let (code, after) = json(&desk.config());
    let took = started.elapsed();
    assert_eq!(code, 1, "{after:#}");
    assert_eq!(problem_kinds(&after), ["cluster_unreachable"], "{after:#}");
    let message = after["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains(&proxy.endpoint), "{message}");
    // One request to the one endpoint, timing out at TTL/6 = 1 s; the rest is the
    // process's own start and scan, generous for a loaded machine.
    let timeout = lockcore::cluster::request_timeout(Duration::from_secs(TTL_SECS));
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(4),
        "check-procs took {took:?} with a request timeout of {timeout:?}"
    );
}

/// The `connect` calls of a check-procs run, as strace records them.
fn connects(config: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=connect", "-o"])
        .arg(&trace)
        .arg(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(config)
        .arg("--json")
        .env_remove("FLEET_HOST")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs strace to see every connection check-procs makes: {e}; \
                 install it (`apt-get install -y strace`; `cargo xtask test` does)"
            )
        });
    assert!(status.code().is_some(), "strace: {status}");
    std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("connect("))
        .map(str::to_string)
        .collect()
}

/// Without `[cluster]` every component has `host` and `lease_ttl_left`, both null, and
/// the table is the one without the cluster's columns.
#[test]
fn without_a_cluster_the_fields_are_null_and_the_table_has_no_cluster_columns() {
    let desk = plain_desk("CVNONE");
    let _bot = desk.start_locked(&format!("WATCHDOG_{}", desk.accounts[0]), &[]);
    let (code, document) = json(&desk.config());
    assert_eq!(code, 0, "{document:#}");
    for component in components(&document) {
        let fields = component.as_object().unwrap();
        assert_eq!(fields.get("host"), Some(&Value::Null), "{component}");
        assert_eq!(
            fields.get("lease_ttl_left"),
            Some(&Value::Null),
            "{component}"
        );
    }
    let (code, text) = table(&desk.config());
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("COMPONENT "), "{text}");
    assert!(!text.contains("HOST"), "{text}");
    assert!(!text.contains("Cluster:"), "{text}");
}

/// Without `[cluster]` check-procs connects no network socket: strace sees no
/// `connect` to an IP address (the same check on a desk with `[cluster]` sees one, so
/// the check can fail).
#[test]
fn without_a_cluster_no_connection_is_made() {
    if fleet_tests::wine::skip_under_wine(
        "without_a_cluster_no_connection_is_made",
        "strace traces Linux system calls; the tools' code that connects is platform-free",
    ) {
        return;
    }
    let desk = plain_desk("CVQUIET");
    let network = |calls: &[String]| -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.contains("AF_INET"))
            .cloned()
            .collect()
    };
    assert_eq!(network(&connects(&desk.config())), Vec::<String>::new());
    // The control: a desk with `[cluster]` (nothing listens there) does connect.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let clustered = cluster_desk(&dead, "B", "CVQUIET");
    let calls = connects(&clustered.config());
    let port = dead.rsplit(':').next().unwrap();
    assert!(
        network(&calls)
            .iter()
            .any(|c| c.contains(&format!("htons({port})"))),
        "{calls:?}"
    );
}
