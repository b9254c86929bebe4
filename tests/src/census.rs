//! Where each component of a cluster desk runs, across the "hosts" of a test that all
//! live on this machine: the processes are counted by command line with every host's
//! copy rules (each host's bots say `host-<NAME>`, so the rules differ), and each
//! census asserts the cluster's invariant: at most one copy of each component, and a
//! brain only on its watchdog's host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use lockcore::{Fleet, ProcessProbe};

use crate::Desk;

/// Lock name -> the host of each running copy.
pub type Hosts = BTreeMap<String, Vec<String>>;

/// Where each component runs, across every host: lock name -> the host of each copy.
#[allow(missing_debug_implementations)] // ProcessProbe has none
pub struct Census {
    fleets: Vec<Fleet>,
    probe: ProcessProbe,
    logs: Vec<(String, PathBuf)>,
}

impl Census {
    pub fn new(desks: &[(&str, &Desk)]) -> Census {
        Census {
            fleets: desks
                .iter()
                .map(|(_, d)| Fleet::load(&d.config()).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            probe: ProcessProbe::new().unwrap_or_else(|e| panic!("{e}")),
            logs: desks
                .iter()
                .map(|(h, d)| (h.to_string(), d.dir.path().join("logs/master-launch.log")))
                .collect(),
        }
    }

    pub fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|(host, path)| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                format!("--- host {host}'s log:\n{text}")
            })
            .collect()
    }

    pub fn take(&mut self) -> Hosts {
        let table = self.probe.table();
        let mut census = Hosts::new();
        // Every host's fleet has the same lock names; the copy rules differ by `--say`.
        for component in self.fleets.iter().flat_map(Fleet::components) {
            let hosts = census.entry(component.lock_name.clone()).or_default();
            for tree in table.find_copies(&component.copy_rule) {
                let say = tree.root.cmd.iter().find(|a| a.starts_with("host-"));
                hosts.push(say.map_or("?", |s| &s["host-".len()..]).to_string());
            }
        }
        census
    }

    /// Asserts no component runs twice and each brain runs on its watchdog's host.
    pub fn check(&mut self, when: &str) -> Hosts {
        let census = self.take();
        for (name, hosts) in &census {
            assert!(
                hosts.len() <= 1,
                "{when}: {name} runs {} times: {census:?}\n{}",
                hosts.len(),
                self.logs()
            );
        }
        for account in &self.fleets[0].accounts {
            let brain = &census[&account.brain.lock_name];
            let watchdog = &census[&account.watchdog.lock_name];
            if let Some(host) = brain.first() {
                assert_eq!(
                    watchdog.first(),
                    Some(host),
                    "{when}: {} trades on {host} without its watchdog there: {census:?}\n{}",
                    account.brain.lock_name,
                    self.logs()
                );
            }
        }
        census
    }

    /// Samples every 20 ms until `done`, at most `limit`.
    pub fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl FnMut(&Hosts) -> bool,
    ) -> Hosts {
        self.until_at(limit, what, done).1
    }

    /// [`Census::until`], with the moment the sample that satisfied `done` was taken.
    pub fn until_at(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Hosts) -> bool,
    ) -> (Instant, Hosts) {
        let start = Instant::now();
        loop {
            let now = self.check(what);
            if done(&now) {
                return (Instant::now(), now);
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not after {limit:?}: {now:?}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Samples every 20 ms for `span`, checking each sample.
    pub fn during(&mut self, span: Duration, what: &str) -> Hosts {
        let start = Instant::now();
        loop {
            let now = self.check(what);
            if start.elapsed() >= span {
                return now;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every component runs on `host`.
pub fn all_on(host: &'static str) -> impl FnMut(&Hosts) -> bool {
    move |c| c.values().all(|h| h == &[host])
}

/// Every component runs exactly once, somewhere.
pub fn all_once(c: &Hosts) -> bool {
    c.values().all(|h| h.len() == 1)
}

/// Nothing runs anywhere.
pub fn none_running(c: &Hosts) -> bool {
    c.values().all(Vec::is_empty)
}
