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

use crate::copies::CopyRule;
use crate::graceful::Asked;
use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

/// A process as the tools name it: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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

    /// A live process with its command line, refreshing that pid alone.
    pub fn info(&mut self, pid: u32) -> Option<ProcessInfo> {
        let sys_pid = Pid::from_u32(pid);
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[sys_pid]),
            true,
            ProcessRefreshKind::nothing()
                .without_tasks()
                .with_cmd(UpdateKind::Always),
        );
        let process = self.system.process(sys_pid)?;
        (!is_gone(process.status())).then(|| process_info(process))
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

    /// Kills `pid` and everything below it, deepest first (SIGKILL; on Windows
    /// TerminateProcess through a handle whose creation time was checked). Checks `who`'s start time first: a reused pid is left alone
    /// (DESIGN.md rule 3). Returns whether `who` was still there to kill.
    pub fn kill_tree(&mut self, who: ProcessIdentity) -> bool {
        self.force_tree(who) != Forced::Gone
    }

    /// As [`ProcessProbe::kill_tree`], saying what the system did with each kill: a
    /// kill the system refuses (EPERM, access denied) is never reported as done.
    pub fn force_tree(&mut self, who: ProcessIdentity) -> Forced {
        let table = self.table();
        if !table.is_alive(who) {
            return Forced::Gone;
        }
        let mut denied = Vec::new();
        let mut failed = Vec::new();
        let identities = table
            .descendants(who.pid)
            .into_iter()
            .filter_map(|pid| table.get(pid).map(ProcessInfo::identity))
            .chain([who]);
        for ProcessIdentity { pid, start_time } in identities {
            match kill::kill(ProcessIdentity { pid, start_time }) {
                // A pid reused since the table was read is not ours to kill.
                Ok(()) | Err(kill::Failure::Gone | kill::Failure::Reused) => {}
                Err(kill::Failure::Denied) => denied.push(pid),
                Err(kill::Failure::Other(why)) => failed.push(format!("pid {pid}: {why}")),
            }
        }
        match (denied.is_empty(), failed.is_empty()) {
            (true, true) => Forced::Killed,
            (false, _) => Forced::Denied(denied),
            (true, false) => Forced::Failed(failed.join("; ")),
        }
    }

    /// Asks a process to stop on its own ([`crate::graceful`]: SIGTERM on Unix; on
    /// Windows CTRL_BREAK or a close request). Checks the start time first; returns
    /// what was sent, or `None` when the process was no longer there.
    pub fn terminate(&mut self, who: ProcessIdentity) -> Option<Asked> {
        if !self.is_alive(who) {
            return None;
        }
        Some(crate::graceful::ask_to_stop(who))
    }

    /// As [`ProcessProbe::terminate`], only starting an ask that takes time (a console
    /// helper on Windows): see [`crate::graceful::start_asking`].
    pub fn start_terminate(&mut self, who: ProcessIdentity) -> Option<crate::graceful::Started> {
        if !self.is_alive(who) {
            return None;
        }
        Some(crate::graceful::start_asking(who))
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
            .map(process_info)
            .map(|p| (p.pid, p))
            .collect();
        ProcessTable { processes }
    }
}

/// What [`ProcessProbe::force_tree`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// The process was gone before anything was sent.
    Gone,
    /// Every kill of the tree was accepted by the system.
    Killed,
    /// The system refused to let us kill these pids (not our user's processes).
    Denied(Vec<u32>),
    /// A kill failed for another reason, in words.
    Failed(String),
}

/// Killing one process, and why the system refused. Platform code, kept small.
mod kill {
    use super::ProcessIdentity;

    pub enum Failure {
        /// Not ours to kill: EPERM, ERROR_ACCESS_DENIED.
        Denied,
        /// It exited meanwhile.
        Gone,
        /// The pid now belongs to a process that started at another time: left alone.
        #[cfg_attr(unix, allow(dead_code))]
        Reused,
        Other(String),
    }

    /// SIGKILL to `who.pid`. The caller read `who` from the process table just before
    /// (the start time is checked there).
    #[cfg(unix)]
    pub fn kill(who: ProcessIdentity) -> Result<(), Failure> {
        use nix::errno::Errno;
        let raw = i32::try_from(who.pid).map_err(|_| Failure::Gone)?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::SIGKILL) {
            Ok(()) => Ok(()),
            Err(Errno::EPERM) => Err(Failure::Denied),
            Err(Errno::ESRCH) => Err(Failure::Gone),
            Err(e) => Err(Failure::Other(e.to_string())),
        }
    }

    /// TerminateProcess through a handle whose creation time is `who`'s: the handle
    /// keeps the pid from being reused between the check and the kill
    /// ([`crate::win_handle`]).
    #[cfg(windows)]
    pub fn kill(who: ProcessIdentity) -> Result<(), Failure> {
        use crate::win_handle::{OpenFailure, Process};
        let process = Process::open(who.pid, true).map_err(|e| match e {
            OpenFailure::Denied => Failure::Denied,
            OpenFailure::Gone => Failure::Gone,
            OpenFailure::Other(e) => Failure::Other(e.to_string()),
        })?;
        let started = process
            .start_time()
            .map_err(|e| Failure::Other(format!("cannot read its start time: {e}")))?;
        if !who.started_at(started) {
            return Err(Failure::Reused);
        }
        process.terminate().map_err(|e| match e.raw_os_error() {
            Some(5) => Failure::Denied,
            _ => Failure::Other(e.to_string()),
        })
    }
}

/// Why [`kill_exact`] did not kill.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillRefused {
    #[error("the system refused: not this user's process")]
    Denied,
    #[error("it was gone already")]
    Gone,
    #[error("its pid now belongs to another process (another start time); left alone")]
    Reused,
    #[error("{0}")]
    Other(String),
}

/// Kills exactly the process `who` (not its tree), if it is still the one that started
/// at `who.start_time`. Windows: checked and killed through one process handle, so a
/// pid reused meanwhile is never hit; Unix: the start time is read, then SIGKILL.
pub fn kill_exact(who: ProcessIdentity) -> Result<(), KillRefused> {
    #[cfg(unix)]
    {
        let mut probe = ProcessProbe::new().map_err(|e| KillRefused::Other(e.to_string()))?;
        match probe.identity(who.pid) {
            None => return Err(KillRefused::Gone),
            Some(now) if !who.started_at(now.start_time) => return Err(KillRefused::Reused),
            Some(_) => {}
        }
    }
    kill::kill(who).map_err(|e| match e {
        kill::Failure::Denied => KillRefused::Denied,
        kill::Failure::Gone => KillRefused::Gone,
        kill::Failure::Reused => KillRefused::Reused,
        kill::Failure::Other(why) => KillRefused::Other(why),
    })
}

impl ProcessIdentity {
    /// Whether a process that started at `start_time` (seconds) is this one.
    pub fn started_at(&self, start_time: u64) -> bool {
        same_start(self.start_time, start_time)
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

fn process_info(p: &sysinfo::Process) -> ProcessInfo {
    ProcessInfo {
        pid: p.pid().as_u32(),
        parent: p.parent().map(Pid::as_u32),
        start_time: p.start_time(),
        name: p.name().to_string_lossy().into_owned(),
        cmd: p.cmd().iter().map(os_to_string).collect(),
    }
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

    /// Running copies of a component ([`CopyRule`], DESIGN.md rule 9), grouped so that
    /// a copy's descendant that is a copy too is part of it (a venv launcher and its
    /// real interpreter are one copy, rule 8). Sorted by root pid.
    pub fn find_copies(&self, rule: &CopyRule) -> Vec<ProcessTree> {
        let own_pid = std::process::id();
        let matching: Vec<&ProcessInfo> = self
            .processes
            .values()
            .filter(|p| p.pid != own_pid && rule.is_copy(&p.cmd))
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

    /// The parent of `pid`, if the link counts (DESIGN.md rule 10): the process now at
    /// the parent pid must have started no later than the child. Windows never
    /// re-parents orphans and reuses pids quickly, so a recorded parent pid may name
    /// a younger, unrelated process (psutil #314). Start times are whole seconds: a
    /// reuse within the child's own second still counts; nothing finer is to be had.
    pub fn parent_of(&self, pid: u32) -> Option<u32> {
        let child = self.get(pid)?;
        let parent = self.get(child.parent?)?;
        (parent.pid != pid && parent.start_time <= child.start_time).then_some(parent.pid)
    }

    /// `pid`, its parent, its grandparent... through links that count
    /// ([`ProcessTable::parent_of`]). Stops at a missing parent or a cycle.
    fn ancestors_and_self(&self, pid: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = Some(pid);
        let mut steps = 0usize;
        std::iter::from_fn(move || {
            let current = next?;
            steps += 1;
            // Equal start times could still close a cycle: never walk further than
            // the table is long.
            next = if steps > self.processes.len() {
                None
            } else {
                self.parent_of(current)
            };
            Some(current)
        })
    }
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

    fn started(pid: u32, parent: u32, start_time: u64, cmd: &[&str]) -> ProcessInfo {
        ProcessInfo {
            start_time,
            ..proc(pid, parent, cmd)
        }
    }

    fn brain_rule() -> CopyRule {
        CopyRule::new(&strings(&["python", "BRAIN_ATLAS.py"]), None)
    }

    #[test]
    fn launcher_and_child_are_one_copy_two_trees_are_two() {
        let table = ProcessTable::from_processes([
            proc(10, 1, &["python.exe", "BRAIN_ATLAS.py"]),
            proc(11, 10, &["python3.12", "BRAIN_ATLAS.py"]),
            proc(20, 1, &["python.exe", "BRAIN_ATLAS.py"]),
            proc(21, 20, &["python3.12", "BRAIN_ATLAS.py"]),
            proc(30, 1, &["python.exe", "BRAIN_GL_3.py"]),
            proc(40, 1, &["tail", "-f", "BRAIN_ATLAS.py"]),
        ]);
        let copies = table.find_copies(&brain_rule());
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

    /// Windows does not re-parent orphans: pid 10's parent exited, and its pid now
    /// belongs to a younger process. Neither a forced stop of the younger one nor
    /// copy grouping may reach the older, innocent process through that stale link.
    #[test]
    fn a_parent_link_to_a_younger_process_does_not_count() {
        let table = ProcessTable::from_processes([
            // An editor started at 500, whose parent (pid 30) has exited.
            started(20, 30, 500, &["notepad++.exe", "BRAIN_ATLAS.py"]),
            // A bot started at 900 got pid 30.
            started(30, 1, 900, &["python.exe", "BRAIN_ATLAS.py"]),
            // Its real interpreter, a true child.
            started(31, 30, 901, &["python3.12", "BRAIN_ATLAS.py"]),
            // An older bot copy whose dead parent also had pid 31.
            started(40, 31, 600, &["python.exe", "BRAIN_ATLAS.py"]),
        ]);
        assert_eq!(table.parent_of(20), None);
        assert_eq!(table.parent_of(31), Some(30));
        assert_eq!(table.parent_of(40), None);
        assert_eq!(table.descendants(30), vec![31]);
        assert!(!table.is_in_tree_of(20, 30));
        let copies = table.find_copies(&brain_rule());
        let trees: Vec<Vec<u32>> = copies.iter().map(|c| c.pids().collect()).collect();
        assert_eq!(trees, vec![vec![30, 31], vec![40]]);
    }

    #[test]
    fn a_parent_cycle_through_reused_pids_does_not_form() {
        // 5 says its parent is 6 and 6 says 5: only the link to the older one counts.
        let table = ProcessTable::from_processes([
            started(5, 6, 100, &["python", "BRAIN_ATLAS.py"]),
            started(6, 5, 200, &["python", "BRAIN_ATLAS.py"]),
        ]);
        assert_eq!(table.parent_of(5), None);
        assert_eq!(table.parent_of(6), Some(5));
        assert_eq!(table.descendants(5), vec![6]);
        assert!(table.descendants(6).is_empty());
        let copies = table.find_copies(&brain_rule());
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].pids().collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn equal_start_times_cannot_make_a_walk_hang() {
        let table = ProcessTable::from_processes([
            started(5, 6, 100, &["python", "BRAIN_ATLAS.py"]),
            started(6, 5, 100, &["python", "BRAIN_ATLAS.py"]),
        ]);
        assert!(table.is_in_tree_of(5, 6));
        assert!(!table.find_copies(&brain_rule()).is_empty());
        assert!(table.descendants(5).len() <= 1);
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
