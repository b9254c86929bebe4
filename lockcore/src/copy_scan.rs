//! Copies found without anyone asking: while master-launch runs it looks, every
//! `copy_scan_secs`, for copies of its components that run without their lock (a bot
//! started by hand beside the desk), with the same rules as check-procs
//! ([`crate::desk`]: DESIGN.md rule 9 for what a copy is, rule 14 for a bot's whole
//! tree). A managed child, what it starts (its workers, a daemon its reaper adopted)
//! and a `run NAME` holder's child are owned by a lock, so never reported. Each copy
//! is reported once, as one [`EventKind::Duplicate`] event, keyed by pid and start
//! time (a reused pid is a new process).

use std::collections::HashSet;

use crate::config::Fleet;
use crate::desk::DeskSnapshot;
use crate::events::{DeskEvent, EventKind};
use crate::lock::LockError;
use crate::process::{ProcessIdentity, ProcessProbe};

/// What one scan found and what the scans before it reported.
#[derive(Debug, Default)]
pub struct CopyScan {
    /// The copies reported so far that still ran at the last look.
    reported: HashSet<ProcessIdentity>,
}

impl CopyScan {
    pub fn new() -> CopyScan {
        CopyScan::default()
    }

    /// One look at the desk: an event for each unlocked copy not reported before.
    ///
    /// A copy that looks unlocked is confirmed by a second snapshot: a lock is read
    /// before the process table, so a `run NAME` (or a start) that takes its lock and
    /// starts its child between the two reads would otherwise look like a copy.
    pub fn scan(
        &mut self,
        fleet: &Fleet,
        probe: &mut ProcessProbe,
    ) -> Result<Vec<DeskEvent>, LockError> {
        let first = DeskSnapshot::take(fleet, probe)?;
        let suspects = self.new_copies(&first);
        if suspects.is_empty() {
            self.forget_the_gone(&first);
            return Ok(Vec::new());
        }
        let second = DeskSnapshot::take(fleet, probe)?;
        let confirmed: Vec<Found> = self
            .new_copies(&second)
            .into_iter()
            .filter(|found| suspects.iter().any(|s| s.identity == found.identity))
            .collect();
        self.forget_the_gone(&second);
        Ok(confirmed
            .into_iter()
            .map(|found| {
                self.reported.insert(found.identity);
                found.event
            })
            .collect())
    }

    /// The unlocked copies in `snapshot` not reported before, as events.
    pub fn report(&mut self, snapshot: &DeskSnapshot) -> Vec<DeskEvent> {
        let found = self.new_copies(snapshot);
        self.forget_the_gone(snapshot);
        found
            .into_iter()
            .map(|found| {
                self.reported.insert(found.identity);
                found.event
            })
            .collect()
    }

    fn new_copies(&self, snapshot: &DeskSnapshot) -> Vec<Found> {
        let mut found = Vec::new();
        for view in &snapshot.components {
            let component = &view.component;
            let desks_own = view
                .copies
                .iter()
                .find(|c| c.locked)
                .map(|c| c.tree.root.pid);
            for copy in view.copies.iter().filter(|c| !c.locked) {
                let root = &copy.tree.root;
                let identity = root.identity();
                if self.reported.contains(&identity) {
                    continue;
                }
                let name = &component.lock_name;
                let pid = root.pid;
                let command_line = root.cmd.join(" ");
                let mut event = DeskEvent::new(
                    EventKind::Duplicate,
                    format!(
                        "{name}: a copy runs without its lock (started by hand?): pid {pid}: \
                         {command_line}"
                    ),
                );
                event.component = Some(name.clone());
                event.account = component.account.clone();
                event.pid = Some(pid);
                event.reason = Some(format!(
                    "pid {pid} runs {name} without its lock: {command_line}"
                ));
                event.fix = Some(fix(name, pid, desks_own, component.account.as_deref()));
                found.push(Found { identity, event });
            }
        }
        found
    }

    /// Keeps only the reported copies that still run (so the set does not grow).
    fn forget_the_gone(&mut self, snapshot: &DeskSnapshot) {
        self.reported
            .retain(|identity| snapshot.table.is_alive(*identity));
    }
}

struct Found {
    identity: ProcessIdentity,
    event: DeskEvent,
}

/// What to do about copy `pid` of `name`.
fn fix(name: &str, pid: u32, desks_own: Option<u32>, account: Option<&str>) -> String {
    let end_it = format!(
        "end pid {pid} and what it started (`kill {pid}`; on Windows `taskkill /PID {pid} /T`)"
    );
    let stop_all = match account {
        Some(account) => format!("`safe-shutdown --account {account}`"),
        None => "`safe-shutdown`".to_string(),
    };
    match desks_own {
        Some(own) => format!(
            "two copies of {name} may trade at once: {end_it}; the desk's own copy (pid \
             {own}) keeps running under its lock. Or stop both with {stop_all} and start \
             again through master-launch"
        ),
        None => format!(
            "{name} runs outside the desk's supervision: {end_it}, then `master-launch start \
             {name}`; or stop it with {stop_all}"
        ),
    }
}

#[cfg(test)]
mod tests {
    //! What a scan reports, from given facts: master-launch (100) runs BRAIN_ATLAS (301)
    //! under its lock, with a worker (302) that has the brain's own command line.
    // Test helpers may unwrap: a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::desk::readiness_tests::{NOW, held};
    use crate::process::{ProcessInfo, ProcessTable};

    const FLEET: &str = r#"
[[account]]
name = "ATLAS"
brain = ["python", "BRAIN_ATLAS.py"]
watchdog = ["python", "WATCHDOG_ATLAS.py"]
brain_requires_watchdog = false
"#;

    fn process(pid: u32, parent: u32, start: u64, cmd: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: start,
            name: cmd[0].into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The desk, plus `by_hand` processes.
    fn snapshot(by_hand: &[ProcessInfo]) -> DeskSnapshot {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let brain = ["python", "BRAIN_ATLAS.py"];
        let mut processes = vec![
            process(100, 1, NOW - 60, &["master-launch"]),
            process(301, 100, NOW - 60, &brain),
            process(302, 301, NOW - 59, &brain),
        ];
        processes.extend(by_hand.iter().cloned());
        DeskSnapshot::build(
            &fleet,
            vec![held("BRAIN_ATLAS", 301)],
            ProcessTable::from_processes(processes),
            NOW,
        )
    }

    #[test]
    fn a_copy_by_hand_is_reported_once_and_the_managed_brain_and_its_worker_never() {
        let mut scan = CopyScan::new();
        assert_eq!(scan.report(&snapshot(&[])), Vec::new());
        let copy = process(500, 1, NOW - 5, &["python3", "-u", "BRAIN_ATLAS.py"]);
        let found = scan.report(&snapshot(std::slice::from_ref(&copy)));
        assert_eq!(found.len(), 1, "{found:#?}");
        let event = &found[0];
        assert_eq!(event.kind, EventKind::Duplicate);
        assert_eq!(event.component.as_deref(), Some("BRAIN_ATLAS"));
        assert_eq!(event.account.as_deref(), Some("ATLAS"));
        assert_eq!(event.pid, Some(500));
        let reason = event.reason.as_deref().unwrap();
        assert!(reason.contains("python3 -u BRAIN_ATLAS.py"), "{reason}");
        let fix = event.fix.as_deref().unwrap();
        assert!(
            fix.contains("kill 500")
                && fix.contains("pid 301")
                && fix.contains("safe-shutdown --account ATLAS"),
            "{fix}"
        );
        // The same copy: not again.
        assert_eq!(
            scan.report(&snapshot(std::slice::from_ref(&copy))),
            Vec::new()
        );
        // Gone, then its pid reused by another copy (a new start time): a new report.
        assert_eq!(scan.report(&snapshot(&[])), Vec::new());
        let reused = process(500, 1, NOW - 1, &["python", "BRAIN_ATLAS.py"]);
        assert_eq!(scan.report(&snapshot(&[reused])).len(), 1);
    }
}
