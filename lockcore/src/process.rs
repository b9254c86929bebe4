//! Process identity and matching.
//!
//! A process is identified by `(pid, start time)`, never by a bare pid (DESIGN.md rule 3):
//! pids are reused, start times tell the reuse apart. Lookups refresh only the pids
//! asked for; a full table is read once per tool run, with command lines and nothing
//! else, for finding copies started by hand. Zombies count as gone: a killed process
//! that nobody has reaped yet is not running anything.

use std::collections::HashMap;
use std::ffi::OsString;

use serde::Serialize;

use crate::graceful::Asked;
use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

/// A process as the tools name it: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub start_time: u64,
}

/// Reads process facts from the OS, refreshing only what is asked for.
pub struct ProcessProbe {
    system: System,
}

impl std::fmt::Debug for ProcessProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessProbe").finish_non_exhaustive()
    }
}

/// The process table could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the process table")]
pub struct ProcessTableError(#[source] sysinfo::Error);

impl ProcessProbe {
    pub fn new() -> Result<Self, ProcessTableError> {
        Ok(Self {
            system: System::new().map_err(ProcessTableError)?,
        })
    }

    /// The identity of a live (non-zombie) process, refreshing that pid alone.
    pub fn identity(&mut self, pid: u32) -> Option<ProcessIdentity> {
        let sys_pid = Pid::from_u32(pid);
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[sys_pid]),
            true,
            ProcessRefreshKind::nothing().without_tasks(),
        );
        let process = self.system.process(sys_pid)?;
        if is_gone(process.status()) {
            return None;
        }
        Some(ProcessIdentity {
            pid,
            start_time: process.start_time(),
        })
    }

    /// Whether the process named by this identity is still the one running.
    pub fn is_alive(&mut self, who: ProcessIdentity) -> bool {
        self.identity(who.pid)
            .is_some_and(|now| same_start(now.start_time, who.start_time))
    }

    /// This process's own identity.
    pub fn own_identity(&mut self) -> ProcessIdentity {
        let pid = std::process::id();
        // Our own pid is always readable; fall back to "now" rather than fail.
        self.identity(pid).unwrap_or(ProcessIdentity {
            pid,
            start_time: now_secs(),
        })
    }

    /// Kills `pid` and everything below it, deepest first (SIGKILL; TerminateProcess on
    /// Windows). Checks `who`'s start time first: a reused pid is left alone
    /// (DESIGN.md rule 3). Returns whether `who` was still there to kill.
    pub fn kill_tree(&mut self, who: ProcessIdentity) -> bool {
        let table = self.table();
        if !table.is_alive(who) {
            return false;
        }
        for pid in table.descendants(who.pid).into_iter().chain([who.pid]) {
            if let Some(process) = self.system.process(Pid::from_u32(pid)) {
                process.kill();
            }
        }
        true
    }

    /// Asks a process to stop on its own ([`crate::graceful`]: SIGTERM on Unix; on
    /// Windows CTRL_BREAK or a close request). Checks the start time first; returns
    /// what was sent, or `None` when the process was no longer there.
    pub fn terminate(&mut self, who: ProcessIdentity) -> Option<Asked> {
        if !self.is_alive(who) {
            return None;
        }
        Some(crate::graceful::ask_to_stop(who.pid))
    }

    /// One read of the whole process table: pids, parents, start times, command lines.
    pub fn table(&mut self) -> ProcessTable {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .without_tasks()
                .with_cmd(UpdateKind::Always),
        );
        let processes = self
            .system
            .processes()
            .values()
            .filter(|p| !is_gone(p.status()))
            .map(|p| ProcessInfo {
                pid: p.pid().as_u32(),
                parent: p.parent().map(Pid::as_u32),
                start_time: p.start_time(),
                name: p.name().to_string_lossy().into_owned(),
                cmd: p.cmd().iter().map(os_to_string).collect(),
            })
            .map(|p| (p.pid, p))
            .collect();
        ProcessTable { processes }
    }
}

/// Start times are whole seconds read from the OS; allow one second of rounding.
pub fn same_start(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= 1
}

fn is_gone(status: ProcessStatus) -> bool {
    matches!(status, ProcessStatus::Zombie | ProcessStatus::Dead)
}

fn os_to_string(s: &OsString) -> String {
    s.to_string_lossy().into_owned()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One live process, as read into a [`ProcessTable`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent: Option<u32>,
    pub start_time: u64,
    pub name: String,
    pub cmd: Vec<String>,
}

impl ProcessInfo {
    pub fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// A snapshot of every live process.
#[derive(Debug, Clone, Default)]
pub struct ProcessTable {
    processes: HashMap<u32, ProcessInfo>,
}

/// A matching process and its matching descendants, counted as one running copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessTree {
    /// The outermost matching process (e.g. a venv launcher).
    pub root: ProcessInfo,
    /// Matching descendants of `root` (e.g. the real interpreter), pids only.
    pub members: Vec<u32>,
}

impl ProcessTree {
    /// Every pid of the tree, root first.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.root.pid).chain(self.members.iter().copied())
    }
}

impl ProcessTable {
    /// A table from given processes (for tests and benchmarks).
    pub fn from_processes(processes: impl IntoIterator<Item = ProcessInfo>) -> Self {
        Self {
            processes: processes.into_iter().map(|p| (p.pid, p)).collect(),
        }
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Whether this identity is alive in the snapshot (same pid, same start time).
    pub fn is_alive(&self, who: ProcessIdentity) -> bool {
        self.get(who.pid)
            .is_some_and(|p| same_start(p.start_time, who.start_time))
    }

    /// Every process below `pid` (children, grandchildren...), deepest first, so that
    /// killing in this order never orphans a process out of reach.
    pub fn descendants(&self, pid: u32) -> Vec<u32> {
        let mut found: Vec<(usize, u32)> = self
            .processes
            .values()
            .filter(|p| p.pid != pid && self.is_in_tree_of(p.pid, pid))
            .map(|p| {
                (
                    self.ancestors_and_self(p.pid)
                        .take_while(|&a| a != pid)
                        .count(),
                    p.pid,
                )
            })
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Whether `pid` is `ancestor` or one of its descendants.
    pub fn is_in_tree_of(&self, pid: u32, ancestor: u32) -> bool {
        self.ancestors_and_self(pid).any(|p| p == ancestor)
    }

    /// Running copies of a component: processes whose command line matches `pattern`,
    /// grouped so that a matching descendant of a matching process is part of it
    /// (a venv launcher and its real interpreter are one copy, DESIGN.md rule 8).
    /// Sorted by root pid.
    pub fn find_copies(&self, pattern: &[String]) -> Vec<ProcessTree> {
        let own_pid = std::process::id();
        let matching: Vec<&ProcessInfo> = self
            .processes
            .values()
            .filter(|p| p.pid != own_pid && command_matches(&p.cmd, pattern))
            .collect();
        let is_match = |pid: u32| matching.iter().any(|m| m.pid == pid);
        let root_of = |pid: u32| {
            self.ancestors_and_self(pid)
                .filter(|&p| is_match(p))
                .last()
                .unwrap_or(pid)
        };
        let mut trees: Vec<ProcessTree> = Vec::new();
        for process in &matching {
            let root = root_of(process.pid);
            if root == process.pid {
                if !trees.iter().any(|t| t.root.pid == root) {
                    trees.push(ProcessTree {
                        root: (*process).clone(),
                        members: Vec::new(),
                    });
                }
            } else if let Some(tree) = trees.iter_mut().find(|t| t.root.pid == root) {
                tree.members.push(process.pid);
            } else if let Some(root_info) = self.get(root) {
                trees.push(ProcessTree {
                    root: root_info.clone(),
                    members: vec![process.pid],
                });
            }
        }
        for tree in &mut trees {
            tree.members.sort_unstable();
        }
        trees.sort_by_key(|t| t.root.pid);
        trees
    }

    /// `pid`, its parent, its grandparent... Stops at a cycle or a missing parent.
    fn ancestors_and_self(&self, pid: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = Some(pid);
        let mut steps = 0usize;
        std::iter::from_fn(move || {
            let current = next?;
            steps += 1;
            // Guard against parent cycles (pid reuse can make a table look cyclic).
            next = if steps > self.processes.len() + 1 {
                None
            } else {
                self.get(current).and_then(|p| p.parent)
            };
            Some(current)
        })
    }
}

/// Whether a command line matches a component's pattern: the pattern's tokens appear
/// in the command line, in order and next to each other. A token with a path
/// separator in either compares by file name, so `BRAIN_ATLAS.py` matches
/// `C:\desk\BRAIN_ATLAS.py`; comparison ignores case on Windows, where the file system
/// does. An empty pattern matches nothing.
pub fn command_matches(cmd: &[String], pattern: &[String]) -> bool {
    if pattern.is_empty() || cmd.len() < pattern.len() {
        return false;
    }
    cmd.windows(pattern.len())
        .any(|window| window.iter().zip(pattern).all(|(a, b)| token_eq(a, b)))
}

fn token_eq(actual: &str, wanted: &str) -> bool {
    let actual = if wanted.contains(['/', '\\']) {
        actual
    } else {
        file_name(actual)
    };
    if cfg!(windows) {
        actual.eq_ignore_ascii_case(wanted)
    } else {
        actual == wanted
    }
}

fn file_name(s: &str) -> &str {
    s.rsplit(['/', '\\']).next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn proc(pid: u32, parent: u32, cmd: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: 1000 + u64::from(pid),
            name: cmd[0].into(),
            cmd: strings(cmd),
        }
    }

    #[test]
    fn pattern_matches_by_file_name_and_in_order() {
        let cmd = strings(&[
            r"C:\desk\.venv\Scripts\python.exe",
            r"C:\desk\STOPLOSS_WATCHDOG_V2.py",
            "--account",
            "ATLAS",
        ]);
        assert!(command_matches(
            &cmd,
            &strings(&["STOPLOSS_WATCHDOG_V2.py", "--account", "ATLAS"])
        ));
        assert!(!command_matches(
            &cmd,
            &strings(&["STOPLOSS_WATCHDOG_V2.py", "--account", "GL_3"])
        ));
        assert!(!command_matches(&cmd, &strings(&["ATLAS", "--account"])));
        assert!(!command_matches(&cmd, &[]));
    }

    #[test]
    fn launcher_and_child_are_one_copy_two_trees_are_two() {
        let table = ProcessTable::from_processes([
            proc(10, 1, &["python.exe", "BRAIN_ATLAS.py"]),
            proc(11, 10, &["python3.12", "BRAIN_ATLAS.py"]),
            proc(20, 1, &["python.exe", "BRAIN_ATLAS.py"]),
            proc(21, 20, &["python3.12", "BRAIN_ATLAS.py"]),
            proc(30, 1, &["python.exe", "BRAIN_GL_3.py"]),
        ]);
        let copies = table.find_copies(&strings(&["BRAIN_ATLAS.py"]));
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].pids().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(copies[1].pids().collect::<Vec<_>>(), vec![20, 21]);
    }

    #[test]
    fn descendants_come_deepest_first() {
        let table = ProcessTable::from_processes([
            proc(10, 1, &["launcher"]),
            proc(11, 10, &["bot"]),
            proc(12, 11, &["helper"]),
            proc(20, 1, &["other"]),
        ]);
        assert_eq!(table.descendants(10), vec![12, 11]);
        assert!(table.descendants(20).is_empty());
    }

    #[test]
    fn parent_cycle_does_not_hang() {
        let table = ProcessTable::from_processes([
            proc(5, 6, &["x", "bot.py"]),
            proc(6, 5, &["x", "bot.py"]),
        ]);
        assert!(!table.find_copies(&strings(&["bot.py"])).is_empty());
    }

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let mut probe = ProcessProbe::new().unwrap();
        let me = probe.own_identity();
        assert!(probe.is_alive(me));
        let imposter = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 3600,
        };
        assert!(!probe.is_alive(imposter));
    }
}
