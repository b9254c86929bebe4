//! What to stop: every process of the desk (or of some accounts), from the locks and
//! from the process table, with how it was found and who holds it.

use lockcore::{DeskSnapshot, LockRecord, LockState, ProcessIdentity, Role};

/// Stop stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Brains,
    Watchdogs,
    Globals,
    Orchestrator,
}

impl Stage {
    pub const ORDER: [Stage; 4] = [
        Stage::Brains,
        Stage::Watchdogs,
        Stage::Globals,
        Stage::Orchestrator,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Brains => "brains",
            Stage::Watchdogs => "watchdogs",
            Stage::Globals => "globals",
            Stage::Orchestrator => "master-launch",
        }
    }

    fn of(role: Role) -> Stage {
        match role {
            Role::Brain => Stage::Brains,
            Role::Watchdog => Stage::Watchdogs,
            Role::Global => Stage::Globals,
        }
    }
}

/// One process to stop.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub account: Option<String>,
    pub stage: Stage,
    /// The process, by pid and start time: checked again before every signal.
    pub who: ProcessIdentity,
    /// Its live lock holder, if any: the graceful stop goes through it.
    pub holder: Option<ProcessIdentity>,
    /// The holder is the running master-launch.
    pub held_by_orchestrator: bool,
    pub found: String,
}

fn wanted(accounts: &[String], account: &Option<String>) -> bool {
    accounts.is_empty()
        || account
            .as_ref()
            .is_some_and(|a| accounts.iter().any(|x| x.eq_ignore_ascii_case(a)))
}

/// Processes that an older tool's lock record names but that are not copies of their
/// component (DESIGN.md rule 11): never stopped, said out loud.
pub fn left_alone(snapshot: &DeskSnapshot, accounts: &[String]) -> Vec<String> {
    snapshot
        .components
        .iter()
        .filter(|v| wanted(accounts, &v.component.account))
        .filter_map(|v| {
            let process = v.named_not_a_copy.as_ref()?;
            Some(format!(
                "{}: left alone: pid {} (`{}`) is named by an older tool's lock record but is \
                 not a copy of {}",
                v.component.lock_name,
                process.pid,
                process.cmd.join(" "),
                v.component.lock_name
            ))
        })
        .collect()
}

/// Everything to stop, for the given accounts (all when empty; then the orchestrator
/// too), in stop order.
pub fn targets(snapshot: &DeskSnapshot, accounts: &[String]) -> Vec<Target> {
    let wanted = |account: &Option<String>| wanted(accounts, account);
    let orchestrator = snapshot
        .master
        .as_ref()
        .filter(|m| m.state == LockState::Running)
        .and_then(|m| m.record.as_ref())
        .and_then(LockRecord::holder_identity)
        .filter(|who| snapshot.table.is_alive(*who));
    let mut targets = Vec::new();
    for view in snapshot
        .components
        .iter()
        .filter(|v| wanted(&v.component.account))
    {
        let record = view
            .lock
            .as_ref()
            .filter(|l| l.state.is_held())
            .and_then(|l| l.record.as_ref());
        let holder = record
            .and_then(LockRecord::holder_identity)
            .filter(|h| snapshot.table.is_alive(*h));
        let legacy = view
            .lock
            .as_ref()
            .is_some_and(|l| l.state == LockState::Legacy);
        for copy in &view.copies {
            let locked_here = copy.locked && holder.is_some();
            let found = match (copy.locked, legacy, holder) {
                (true, true, _) => "legacy lock (older tool)".to_string(),
                (true, false, Some(h)) => format!("lock, held by pid {}", h.pid),
                (true, false, None) => "lock whose holder is gone".to_string(),
                (false, _, _) => "process table (no lock)".to_string(),
            };
            targets.push(Target {
                name: view.component.lock_name.clone(),
                account: view.component.account.clone(),
                stage: Stage::of(view.component.role),
                who: copy.tree.root.identity(),
                holder: if locked_here && !legacy { holder } else { None },
                held_by_orchestrator: locked_here && holder.is_some() && holder == orchestrator,
                found,
            });
        }
        // A live bot that our own lock record names (pid and start time) but whose
        // command line the copy rule does not recognise is still the desk's: stop it
        // too. (An older tool's record names a bot only when it is a copy.)
        if let Some(managed) = view.managed.as_ref().filter(|m| {
            !view
                .copies
                .iter()
                .any(|c| c.tree.pids().any(|p| p == m.pid))
        }) {
            targets.push(Target {
                name: view.component.lock_name.clone(),
                account: view.component.account.clone(),
                stage: Stage::of(view.component.role),
                who: managed.identity(),
                holder: if legacy { None } else { holder },
                held_by_orchestrator: !legacy && holder.is_some() && holder == orchestrator,
                found: "lock (command line not recognised as a copy)".into(),
            });
        }
    }
    if accounts.is_empty()
        && let Some(who) = orchestrator
    {
        targets.push(Target {
            name: "MASTER_LAUNCH".into(),
            account: None,
            stage: Stage::Orchestrator,
            who,
            holder: None,
            held_by_orchestrator: false,
            found: "its own lock".into(),
        });
    }
    targets.sort_by_key(|t| Stage::ORDER.iter().position(|s| *s == t.stage));
    targets
}
