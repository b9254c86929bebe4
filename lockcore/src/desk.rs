//! The desk as it is now: every component's lock and running copies, and what is wrong.
//!
//! One [`DeskSnapshot`] is one scan of the lock dir and one read of the process table.
//! `check-procs` renders it, `master-launch` refuses on it, `safe-shutdown` finds what
//! to stop in it: the rules for "locked", "duplicate" and "unlocked" live here once.

use serde::Serialize;

mod documented;
pub use documented::{JSON_FIELDS, JSON_OPAQUE, JsonField};

use crate::cluster::{ClusterEntry, EtcdClient, from_outside, read_entries};
use crate::config::{ClusterConfig, Component, Fleet, MASTER_LOCK_NAME, Role};
use crate::control::{DeskState, Supervised, Supervision};
use crate::lock::{LockDir, LockError, LockState, LockStatus, StrayEntry};
use crate::process::{ProcessInfo, ProcessProbe, ProcessTable, ProcessTree};
use crate::record::LockRecord;

/// One look at the desk.
#[derive(Debug, Clone)]
pub struct DeskSnapshot {
    /// When it was taken, seconds since the Unix epoch.
    pub taken_at: u64,
    /// The same moment to the fraction of a second (heartbeat ages are measured from it;
    /// a snapshot built from given facts uses `taken_at`).
    pub taken_at_exact: f64,
    /// In start order: globals, then each account's watchdog and brain.
    pub components: Vec<ComponentView>,
    /// The orchestrator's own lock, if its file exists.
    pub master: Option<LockStatus>,
    /// The running orchestrator's published view, if one runs.
    pub supervision: Option<DeskState>,
    /// Lock files that no component of `fleet.toml` explains.
    pub unknown_locks: Vec<LockStatus>,
    /// `*.lock`/`*.stop` entries that are not regular files (or cannot be read): left
    /// alone by every tool, reported as [`ProblemKind::NotAFile`].
    pub strays: Vec<StrayEntry>,
    /// Most serious first.
    pub problems: Vec<Problem>,
    /// The table the snapshot was built from.
    pub table: ProcessTable,
    /// With `[cluster]`: the lock keys as etcd holds them now.
    pub cluster: Option<ClusterSnapshot>,
}

/// The cluster's view of the desk's locks, read once per snapshot.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    /// This machine's name in the cluster.
    pub host: String,
    /// The etcd endpoints asked, as `[cluster]` lists them.
    pub endpoints: Vec<String>,
    /// The key prefix the lock keys live under (`/desk/locks/`).
    pub prefix: String,
    /// Every lock key, on any host.
    pub entries: Vec<ClusterEntry>,
    /// Why etcd could not be read (then `entries` is empty and the snapshot reports a
    /// [`ProblemKind::ClusterUnreachable`]).
    pub error: Option<String>,
}

impl ClusterSnapshot {
    /// Reads every lock key once. Never blocks longer than the client's request
    /// timeout per endpoint and key; an error is kept, not returned: the local view
    /// is shown all the same.
    pub fn read(cluster: &ClusterConfig) -> ClusterSnapshot {
        let client = EtcdClient::from_config(cluster);
        let (entries, error) = match read_entries(&client, cluster) {
            Ok(entries) => (entries, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        ClusterSnapshot {
            host: cluster.host.clone(),
            endpoints: cluster.endpoints.clone(),
            prefix: cluster.lock_key(""),
            entries,
            error,
        }
    }
}

/// One component and what runs for it.
#[derive(Debug, Clone)]
pub struct ComponentView {
    pub component: Component,
    /// Its lock file, if one exists.
    pub lock: Option<LockStatus>,
    /// The process the lock record names, if it is alive (pid and start time match).
    pub managed: Option<ProcessInfo>,
    /// Whether the process holding the lock (the launcher) is alive.
    pub holder_alive: bool,
    /// Every running copy, found by command line; `locked` tells which one the lock owns.
    pub copies: Vec<RunningCopy>,
    /// A live process that an older tool's record names but that is not a copy of the
    /// component (DESIGN.md rule 11): reported, never stopped.
    pub named_not_a_copy: Option<ProcessInfo>,
    /// What the running orchestrator says of it, if one runs.
    pub supervised: Option<Supervised>,
    /// With `[cluster]`: its key, held by this host or another.
    pub cluster: Option<ClusterEntry>,
    /// With `[cluster]`: its key is held by another host (its value does not name this
    /// machine).
    pub held_elsewhere: bool,
    /// Copies another host's key owns (its holder's child, or under its holder): both
    /// "hosts" on one machine see each other's bots, which are not unlocked copies.
    pub elsewhere: Vec<RunningCopy>,
    /// For a brain that needs its watchdog (DESIGN.md rule 13): the watchdog's lock name.
    pub guard: Option<String>,
    /// A brain that runs here while the watchdog it needs does not (rule 13), whoever
    /// started it: set from the whole snapshot, with the problems.
    pub unguarded: bool,
    /// For a watchdog that a brain needs (rule 13): that brain's lock name (a watchdog
    /// that is not ready or hung holds it back).
    pub guards: Option<String>,
}

/// What a component is doing, as check-procs shows it (`--json` uses [`as_str`]).
///
/// [`as_str`]: ComponentState::as_str
///
/// Each state has a sentence in `desk/documented.rs` (`ComponentState::meaning`, `ALL`);
/// `Deserialize` is derived only so a test can hold `ALL` to the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// More than one copy runs.
    Duplicate,
    /// Its lock is held (the lock's own state, below, when there is a lock file).
    Running,
    Stale,
    Corrupt,
    Legacy,
    /// A copy runs, with no lock file at all.
    Unlocked,
    /// Enabled, not running, no lock file; with an orchestrator running: stopped on
    /// request, or exited cleanly and its restart policy does not restart it (not a
    /// problem; a crash that is not restarted is given up).
    Stopped,
    /// Its account is disabled in fleet.toml, and nothing runs.
    Disabled,
    /// The orchestrator is starting it (a brain: waiting for its watchdog to run), or
    /// it runs and has not said it is ready yet (`ready = "notify"`).
    Starting,
    /// It runs under its lock and said it is not ready (`not-ready <reason>`): a
    /// watchdog holds its brain back meanwhile.
    NotReady,
    /// It missed its heartbeat, or was not ready within its `ready_timeout_secs`: the
    /// orchestrator stops and restarts it like a crash; shown so until it is ready again.
    Hung,
    /// It exited and the orchestrator restarts it after a backoff.
    Restarting,
    /// The orchestrator gave up on it after repeated failures.
    GivenUp,
    /// A brain the orchestrator holds back because its watchdog is not running.
    Blocked,
    /// The orchestrator runs but was not asked to start it (`--only`).
    NotStarted,
    /// With `[cluster]`: another host holds its key and nothing of it runs here.
    Elsewhere,
    /// A brain that runs under its lock while its watchdog does not (DESIGN.md rule 13).
    Unguarded,
    /// Its lock is held but no process of it runs (the bot exited and its holder has
    /// not noticed or is frozen): never shown as running.
    ProcessGone,
}

impl ComponentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Duplicate => "duplicate",
            ComponentState::Running => "running",
            ComponentState::Stale => "stale",
            ComponentState::Corrupt => "corrupt",
            ComponentState::Legacy => "legacy",
            ComponentState::Unlocked => "unlocked",
            ComponentState::Stopped => "stopped",
            ComponentState::Disabled => "disabled",
            ComponentState::Starting => "starting",
            ComponentState::NotReady => "not_ready",
            ComponentState::Hung => "hung",
            ComponentState::Restarting => "restarting",
            ComponentState::GivenUp => "given_up",
            ComponentState::Blocked => "blocked",
            ComponentState::NotStarted => "not_started",
            ComponentState::Elsewhere => "elsewhere",
            ComponentState::Unguarded => "unguarded",
            ComponentState::ProcessGone => "process_gone",
        }
    }

    /// Whether this state means trouble that needs a person: shown loudly. `not_ready`
    /// is one only for a watchdog ([`ComponentView::is_alarm`]).
    pub fn is_alarm(self) -> bool {
        matches!(
            self,
            ComponentState::Duplicate
                | ComponentState::Unlocked
                | ComponentState::GivenUp
                | ComponentState::Unguarded
                | ComponentState::Hung
        )
    }
}

impl ComponentView {
    /// What the component is doing: duplicates first; then, while nothing of it runs
    /// here, another host that holds its key (unless this machine's orchestrator gave
    /// up on it: a standby that would not take over is a problem); then what the
    /// running orchestrator says (given up, restarting, stopped on request, ...); then
    /// its lock file's state, then a copy without a lock, else stopped or disabled.
    pub fn state(&self) -> ComponentState {
        if self.copies.len() > 1 || self.runs_here_and_elsewhere() {
            return ComponentState::Duplicate;
        }
        if self.runs_elsewhere() {
            return ComponentState::Elsewhere;
        }
        if let Some(state) = self.supervised_state() {
            return state;
        }
        if let Some(lock) = &self.lock {
            return match lock.state {
                // Only what runs is running: a held lock whose bot is gone (a frozen or
                // slow holder, whatever its published view says) is not.
                LockState::Running if !self.runs_under_lock() => {
                    if self.copies.is_empty() {
                        ComponentState::ProcessGone
                    } else {
                        ComponentState::Unlocked
                    }
                }
                LockState::Running if self.unguarded => ComponentState::Unguarded,
                LockState::Running => ComponentState::Running,
                LockState::Stale => ComponentState::Stale,
                LockState::Corrupt => ComponentState::Corrupt,
                LockState::Legacy => ComponentState::Legacy,
            };
        }
        if !self.copies.is_empty() {
            ComponentState::Unlocked
        } else if self.component.enabled {
            ComponentState::Stopped
        } else {
            ComponentState::Disabled
        }
    }
}

impl ComponentView {
    /// The process its lock records is alive, or a copy runs that its lock owns.
    fn runs_under_lock(&self) -> bool {
        self.managed.is_some() || self.copies.iter().any(|c| c.locked)
    }

    /// Something of it runs on this machine, under its lock or not.
    pub fn runs_here(&self) -> bool {
        self.managed.is_some() || !self.copies.is_empty()
    }

    /// It runs here under this machine's lock while another host holds its key: two
    /// machines may run it at once (a holder that failed to fence itself, a copy
    /// hand-started under a local lock only, or this machine named otherwise before).
    fn runs_here_and_elsewhere(&self) -> bool {
        self.held_elsewhere && (self.managed.is_some() || self.copies.iter().any(|c| c.locked))
    }

    /// Another host holds its key and nothing of it runs here. A held local lock with
    /// no child (a holder waiting for the key) does not change that.
    fn runs_elsewhere(&self) -> bool {
        self.held_elsewhere
            && self.copies.is_empty()
            && self.managed.is_none()
            && self.supervised.as_ref().map(|s| s.state) != Some(Supervision::GivenUp)
    }

    /// The orchestrator's word for a component of which nothing runs; `None` while a
    /// copy runs (the processes then speak for themselves) or no orchestrator runs,
    /// except for readiness: see [`ComponentView::readiness_state`].
    fn supervised_state(&self) -> Option<ComponentState> {
        let supervised = self.supervised.as_ref()?;
        if !self.copies.is_empty() || self.managed.is_some() {
            return self.readiness_state(supervised);
        }
        Some(match supervised.state {
            Supervision::Running => return None,
            Supervision::NotStarted => ComponentState::NotStarted,
            Supervision::Starting => ComponentState::Starting,
            Supervision::Restarting => ComponentState::Restarting,
            Supervision::Stopped => ComponentState::Stopped,
            Supervision::GivenUp => ComponentState::GivenUp,
            Supervision::Blocked => ComponentState::Blocked,
            // Another host holds its key (or etcd is out of reach): it waits for the
            // key, and nothing is wrong here.
            Supervision::Standby => ComponentState::Elsewhere,
            // Between a hung run's stop and its restart (or a view about to change).
            Supervision::NotReady => ComponentState::NotReady,
            Supervision::Hung => ComponentState::Hung,
        })
    }

    /// While it runs: the orchestrator's word on its readiness (`starting`: runs, not
    /// ready yet; `not_ready`; `hung`), trusted only for the process that runs under its
    /// lock alone (no other copy, not unguarded) and that the view names (its pid is the
    /// lock's managed process; a `not_ready` or `hung` view without a pid is taken too:
    /// no newer child was recorded). A view naming another pid is out of date: the
    /// processes speak for themselves, as for every other state.
    fn readiness_state(&self, supervised: &Supervised) -> Option<ComponentState> {
        let state = match supervised.state {
            Supervision::Starting => ComponentState::Starting,
            Supervision::NotReady => ComponentState::NotReady,
            Supervision::Hung => ComponentState::Hung,
            _ => return None,
        };
        let managed = self.managed.as_ref()?;
        let alone_under_its_lock = self
            .lock
            .as_ref()
            .is_some_and(|l| l.state == LockState::Running)
            && self.copies.len() <= 1
            && self.copies.iter().all(|c| c.locked)
            && !self.unguarded;
        let names_it = match supervised.pid {
            Some(pid) => pid == managed.pid,
            None => state != ComponentState::Starting,
        };
        (alone_under_its_lock && names_it).then_some(state)
    }

    /// The orchestrator's view speaks of the process that runs, or nothing runs: not a
    /// view naming a pid other than the running one's.
    fn view_is_current(&self, supervised: &Supervised) -> bool {
        match (supervised.pid, &self.managed) {
            (Some(pid), Some(managed)) => pid == managed.pid,
            (Some(_), None) => self.copies.is_empty(),
            (None, _) => true,
        }
    }

    /// Seconds since its last word on its notify channel (`ready`, `alive`,
    /// `not-ready`), as of `now` (Unix seconds); never negative. `None` when the
    /// orchestrator has heard nothing of it, or its view speaks of another process.
    pub fn heartbeat_age(&self, now: f64) -> Option<f64> {
        let supervised = self.supervised.as_ref()?;
        let alive_at = supervised.alive_at?;
        if !self.view_is_current(supervised) || !alive_at.is_finite() {
            return None;
        }
        Some((now - alive_at).max(0.0))
    }

    /// How often it must say `alive` once ready: the running orchestrator's setting,
    /// else fleet.toml's `heartbeat_secs`.
    pub fn heartbeat_secs(&self) -> Option<u64> {
        self.supervised
            .as_ref()
            .and_then(|s| s.heartbeat_secs)
            .or_else(|| self.component.heartbeat.map(|d| d.as_secs()))
    }

    /// Whether its state is trouble that needs a person: the state's own rule, and a
    /// watchdog that is not ready (its brain is held back, its positions unguarded).
    pub fn is_alarm(&self) -> bool {
        let state = self.state();
        state.is_alarm()
            || (state == ComponentState::NotReady && self.component.role == Role::Watchdog)
    }

    /// Why it is in its state, in plain words, when the orchestrator says. Its word
    /// that it runs is dropped when nothing of it runs, and any word on a process
    /// other than the one running under its lock: a frozen orchestrator's view is out
    /// of date (the state says what runs).
    pub fn reason(&self) -> Option<&str> {
        self.supervised
            .as_ref()
            .filter(|s| s.state != Supervision::Running || self.runs_here())
            .filter(|s| self.view_is_current(s))
            .map(|s| s.reason.as_str())
    }
}

/// A process tree running a component, and whether a lock owns it.
#[derive(Debug, Clone, Serialize)]
pub struct RunningCopy {
    #[serde(flatten)]
    pub tree: ProcessTree,
    pub locked: bool,
}

/// Kinds of trouble, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// More than one copy of one component: duplicate orders.
    Duplicate,
    /// With `[cluster]`: etcd cannot be read, so this machine cannot see which host
    /// holds what (and no holder here can renew its lease).
    ClusterUnreachable,
    /// A brain runs while its watchdog does not (DESIGN.md rule 13): its positions have
    /// no stop-loss guard.
    Unguarded,
    /// It missed its heartbeat (or was not ready in time): the orchestrator stops and
    /// restarts it; a hung watchdog guards nothing and holds its brain back.
    Hung,
    /// The orchestrator gave up on it: that account is not trading (or not guarded).
    GivenUp,
    /// A watchdog that runs but said it is not ready (a lost terminal connection): it
    /// guards nothing, and its brain is held back.
    NotReady,
    /// A brain held back because its watchdog is not running.
    Blocked,
    /// A copy that no lock owns: started by hand, around the tools.
    Unlocked,
    /// It exited and the orchestrator is backing off before restarting it.
    Restarting,
    /// The lock is held but the process it records is gone.
    ProcessGone,
    /// Held only by an older tool's PID file.
    Legacy,
    Stale,
    Corrupt,
    /// A `*.lock`/`*.stop` entry that is not a regular file (a link, FIFO, directory):
    /// no tool reads, writes or removes it (DESIGN.md rule 12).
    NotAFile,
    /// A lock file no component of `fleet.toml` explains.
    UnknownLock,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Duplicate => "duplicate",
            ProblemKind::ClusterUnreachable => "cluster_unreachable",
            ProblemKind::Unguarded => "unguarded",
            ProblemKind::Hung => "hung",
            ProblemKind::GivenUp => "given_up",
            ProblemKind::NotReady => "not_ready",
            ProblemKind::Blocked => "blocked",
            ProblemKind::Unlocked => "unlocked",
            ProblemKind::Restarting => "restarting",
            ProblemKind::ProcessGone => "process_gone",
            ProblemKind::Legacy => "legacy",
            ProblemKind::Stale => "stale",
            ProblemKind::Corrupt => "corrupt",
            ProblemKind::NotAFile => "not_a_file",
            ProblemKind::UnknownLock => "unknown_lock",
        }
    }
}

/// One thing that is wrong, with what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The lock name it concerns.
    pub name: String,
    pub account: Option<String>,
    pub pids: Vec<u32>,
    pub message: String,
}

impl DeskSnapshot {
    /// Scans the lock dir once, reads the process table once, and reads the running
    /// orchestrator's view, if one runs.
    pub fn take(fleet: &Fleet, probe: &mut ProcessProbe) -> Result<DeskSnapshot, LockError> {
        let scan = LockDir::for_fleet(fleet).scan_all(probe)?;
        let table = probe.table();
        let supervision = scan
            .locks
            .iter()
            .find(|l| l.name == MASTER_LOCK_NAME)
            .and_then(|master| DeskState::read_current(&fleet.lock_dir, master));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut snapshot =
            DeskSnapshot::build_supervised(fleet, scan.locks, table, now as u64, supervision);
        snapshot.taken_at_exact = now;
        // Without `[cluster]` no connection is made.
        if let Some(cluster) = &fleet.cluster {
            snapshot.add_cluster(ClusterSnapshot::read(cluster));
        }
        snapshot.add_strays(scan.strays);
        Ok(snapshot)
    }

    /// Adds the cluster's view: each component's key, and the copies another host's key
    /// owns set apart from this machine's copies (then the problems are found again).
    pub fn add_cluster(&mut self, cluster: ClusterSnapshot) {
        for view in &mut self.components {
            view.cluster = cluster
                .entries
                .iter()
                .find(|e| e.name.eq_ignore_ascii_case(&view.component.lock_name))
                .cloned();
            let Some(entry) = view
                .cluster
                .as_ref()
                .filter(|e| e.holder.host.as_deref() != Some(cluster.host.as_str()))
            else {
                view.held_elsewhere = false;
                continue;
            };
            view.held_elsewhere = true;
            let (elsewhere, here) = std::mem::take(&mut view.copies)
                .into_iter()
                .partition(|copy| !copy.locked && owned_elsewhere(&self.table, &copy.tree, entry));
            view.copies = here;
            view.elsewhere = elsewhere;
        }
        self.cluster = Some(cluster);
        self.find_problems();
    }

    /// Records entries that are not usable files, each as a problem with what to do.
    pub fn add_strays(&mut self, strays: Vec<StrayEntry>) {
        self.strays.extend(strays);
        self.find_problems();
    }

    /// Builds a snapshot from given facts, with no orchestrator's view.
    pub fn build(
        fleet: &Fleet,
        locks: Vec<LockStatus>,
        table: ProcessTable,
        taken_at: u64,
    ) -> DeskSnapshot {
        DeskSnapshot::build_supervised(fleet, locks, table, taken_at, None)
    }

    /// Builds a snapshot from given facts (the pure part of [`DeskSnapshot::take`]).
    pub fn build_supervised(
        fleet: &Fleet,
        mut locks: Vec<LockStatus>,
        table: ProcessTable,
        taken_at: u64,
        supervision: Option<DeskState>,
    ) -> DeskSnapshot {
        let master = take_lock(&mut locks, MASTER_LOCK_NAME);
        let components: Vec<ComponentView> = fleet
            .components()
            .map(|component| {
                let lock = take_lock(&mut locks, &component.lock_name);
                let mut view = view(component.clone(), lock, &table);
                view.supervised = supervision
                    .as_ref()
                    .and_then(|s| s.component(&component.lock_name))
                    .cloned();
                view.guard = fleet.guard_of(component).map(|w| w.lock_name.clone());
                view
            })
            .collect();
        let components = with_guards(components);
        let mut snapshot = DeskSnapshot {
            taken_at,
            taken_at_exact: taken_at as f64,
            components,
            master,
            supervision,
            unknown_locks: locks,
            strays: Vec::new(),
            problems: Vec::new(),
            table,
            cluster: None,
        };
        snapshot.find_problems();
        snapshot
    }

    /// The problems of the components, unknown locks, the orchestrator's lock, the
    /// cluster and stray entries, most serious first.
    fn find_problems(&mut self) {
        let unguarded: Vec<bool> = self
            .components
            .iter()
            .map(|view| self.missing_guard(view).is_some())
            .collect();
        for (view, unguarded) in self.components.iter_mut().zip(unguarded) {
            view.unguarded = unguarded;
        }
        let mut problems: Vec<Problem> = self.components.iter().flat_map(problems_of).collect();
        problems.extend(self.unknown_locks.iter().map(unknown_lock_problem));
        if let Some(master) = &self.master {
            problems.extend(lock_file_problem(master, None));
        }
        problems.extend(self.cluster.as_ref().and_then(cluster_problem));
        problems.extend(self.strays.iter().map(stray_problem));
        problems.sort_by_key(|p| p.kind);
        self.problems = problems;
    }

    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn component(&self, lock_name: &str) -> Option<&ComponentView> {
        self.components
            .iter()
            .find(|v| v.component.lock_name == lock_name)
    }

    /// DESIGN.md rule 13, the one test every tool uses: for a brain that needs its
    /// watchdog, the watchdog's view when nothing of the watchdog runs on this machine
    /// (`None`: it runs, or the brain does not need it). Whether the brain itself runs
    /// is the caller's question: `run` asks before starting one.
    pub fn watchdog_not_running(&self, brain: &ComponentView) -> Option<&ComponentView> {
        let watchdog = self.component(brain.guard.as_deref()?)?;
        (!watchdog.runs_here()).then_some(watchdog)
    }

    /// A brain that runs while the watchdog it needs does not: its watchdog's view.
    fn missing_guard(&self, view: &ComponentView) -> Option<&ComponentView> {
        view.runs_here()
            .then(|| self.watchdog_not_running(view))
            .flatten()
    }
}

/// Names on each watchdog the brain that needs it (the inverse of `guard`).
fn with_guards(mut components: Vec<ComponentView>) -> Vec<ComponentView> {
    let pairs: Vec<(String, String)> = components
        .iter()
        .filter_map(|brain| Some((brain.guard.clone()?, brain.component.lock_name.clone())))
        .collect();
    for (watchdog, brain) in pairs {
        if let Some(view) = components
            .iter_mut()
            .find(|v| v.component.lock_name == watchdog)
        {
            view.guards = Some(brain);
        }
    }
    components
}

fn take_lock(locks: &mut Vec<LockStatus>, name: &str) -> Option<LockStatus> {
    // Windows file names ignore case, so lock names do too.
    let index = locks
        .iter()
        .position(|l| l.name.eq_ignore_ascii_case(name))?;
    Some(locks.remove(index))
}

fn view(component: Component, lock: Option<LockStatus>, table: &ProcessTable) -> ComponentView {
    let held = lock.as_ref().filter(|l| l.state.is_held());
    let record = held.and_then(|l| l.record.as_ref());
    let named = lock
        .as_ref()
        .and_then(|l| l.record.as_ref())
        .and_then(|r| table.get(r.pid).map(|info| (r, info)));
    let is_copy = |info: &ProcessInfo| component.copy_rule.is_copy(&info.cmd);
    let managed = record.and_then(|r| {
        let info = table.get(r.pid)?;
        let is_the_bot = if r.is_legacy() {
            // An older tool's record is evidence, not proof: only a copy is the bot.
            is_copy(info)
        } else {
            // A launcher records itself until its child is running: that is not the
            // bot, unless the holder runs the component itself.
            r.pid_start
                .is_some_and(|start| crate::process::same_start(start, info.start_time))
                && (r.holder_pid != Some(r.pid) || is_copy(info))
        };
        is_the_bot.then(|| info.clone())
    });
    let named_not_a_copy = named
        .filter(|(r, info)| {
            r.is_legacy()
                && !is_copy(info)
                && r.written_no_later_than().is_none_or(|written| {
                    i64::try_from(info.start_time).is_ok_and(|start| start <= written)
                })
        })
        .map(|(_, info)| info.clone());
    let holder_alive = record
        .and_then(LockRecord::holder_identity)
        .is_some_and(|holder| table.is_alive(holder));
    let trees = table.find_copies(&component.copy_rule);
    let trees = one_tree_per_binding(
        table,
        trees,
        managed.as_ref().map(|m| m.pid),
        record.and_then(|r| r.holder_pid),
    );
    let copies = trees
        .into_iter()
        .map(|tree| {
            let locked = record.is_some_and(|r| {
                owns(
                    table,
                    &tree,
                    managed.as_ref().map(|m| m.pid),
                    r.holder_pid,
                    holder_alive,
                )
            });
            RunningCopy { tree, locked }
        })
        .collect();
    ComponentView {
        component,
        lock,
        managed,
        holder_alive,
        copies,
        named_not_a_copy,
        supervised: None,
        cluster: None,
        held_elsewhere: false,
        elsewhere: Vec::new(),
        guard: None,
        unguarded: false,
        guards: None,
    }
}

/// DESIGN.md rule 14: a component is its whole process tree. On Linux master-launch
/// runs each bot under a reaper of its own (the bot's parent, under the holder), which
/// adopts what the bot daemonizes: a copy in the reaper's tree is part of the bot's
/// copy, not a second one. Only such a binding parent counts: copies directly under
/// the holder stay separate, so a second child of one holder is still a duplicate.
fn one_tree_per_binding(
    table: &ProcessTable,
    trees: Vec<ProcessTree>,
    managed: Option<u32>,
    holder: Option<u32>,
) -> Vec<ProcessTree> {
    let binding = managed
        .and_then(|pid| table.parent_of(pid))
        .filter(|parent| holder.is_some_and(|h| *parent != h && table.is_in_tree_of(*parent, h)));
    let (Some(binding), Some(managed)) = (binding, managed) else {
        return trees;
    };
    let (inside, mut outside): (Vec<ProcessTree>, Vec<ProcessTree>) = trees
        .into_iter()
        .partition(|t| table.is_in_tree_of(t.root.pid, binding));
    let Some(main) = inside.iter().position(|t| t.pids().any(|p| p == managed)) else {
        outside.extend(inside);
        return outside;
    };
    let mut inside = inside;
    let mut merged = inside.swap_remove(main);
    for tree in inside {
        merged.members.extend(tree.pids());
    }
    merged.members.sort_unstable();
    outside.push(merged);
    outside.sort_by_key(|t| t.root.pid);
    outside
}

/// Whether another host's key owns a copy: the copy is the child its record names
/// (same pid and start time), or runs under the holder it records.
fn owned_elsewhere(table: &ProcessTable, tree: &ProcessTree, entry: &ClusterEntry) -> bool {
    let child = entry.child().filter(|&c| table.is_alive(c)).map(|c| c.pid);
    let holder = entry.record.as_ref().and_then(LockRecord::holder_identity);
    let holder_alive = holder.is_some_and(|h| table.is_alive(h));
    owns(table, tree, child, holder.map(|h| h.pid), holder_alive)
}

/// Whether a lock owns a running copy: the copy is (or contains, or runs under) the
/// recorded process, or runs under the live lock holder.
fn owns(
    table: &ProcessTable,
    tree: &ProcessTree,
    managed: Option<u32>,
    holder: Option<u32>,
    holder_alive: bool,
) -> bool {
    let root = tree.root.pid;
    let by_managed = managed.is_some_and(|pid| {
        tree.pids().any(|p| p == pid)
            || table.is_in_tree_of(root, pid)
            || table.is_in_tree_of(pid, root)
    });
    let by_holder = holder_alive && holder.is_some_and(|pid| table.is_in_tree_of(root, pid));
    by_managed || by_holder
}

fn problems_of(view: &ComponentView) -> Vec<Problem> {
    let component = &view.component;
    let problem = |kind, pids: Vec<u32>, message: String| Problem {
        kind,
        name: component.lock_name.clone(),
        account: component.account.clone(),
        pids,
        message,
    };
    let mut problems = Vec::new();
    if view.copies.len() > 1 {
        let pids: Vec<u32> = view.copies.iter().map(|c| c.tree.root.pid).collect();
        problems.push(problem(
            ProblemKind::Duplicate,
            pids.clone(),
            format!(
                "{} copies of {} are running (pids {}); stop them all with safe-shutdown{}, then start once",
                view.copies.len(),
                component.lock_name,
                join(&pids),
                account_flag(component)
            ),
        ));
    }
    if view.copies.len() <= 1 && view.runs_here_and_elsewhere() {
        let pids: Vec<u32> = match &view.managed {
            Some(managed) => vec![managed.pid],
            None => view.copies.iter().map(|c| c.tree.root.pid).collect(),
        };
        let host = view
            .cluster
            .as_ref()
            .and_then(|e| e.holder.host.as_deref())
            .map_or_else(|| "(none named)".to_string(), printable_host);
        problems.push(problem(
            ProblemKind::Duplicate,
            pids.clone(),
            format!(
                "{} runs here (pid {}) under this machine's lock, but its cluster key is held \
                 by host {host}: two machines may run it at once. Stop it here with \
                 safe-shutdown{}; if host {host} is this machine, FLEET_HOST or [cluster] host \
                 differs between the tools",
                component.lock_name,
                join(&pids),
                account_flag(component)
            ),
        ));
    }
    for copy in view.copies.iter().filter(|c| !c.locked) {
        let pid = copy.tree.root.pid;
        problems.push(problem(
            ProblemKind::Unlocked,
            copy.tree.pids().collect(),
            format!(
                "pid {pid} runs {} without its lock (started by hand?); stop it with safe-shutdown{} and start through master-launch",
                component.lock_name,
                account_flag(component)
            ),
        ));
    }
    if view.unguarded {
        let mut pids: Vec<u32> = view.copies.iter().map(|c| c.tree.root.pid).collect();
        if pids.is_empty() {
            pids.extend(view.managed.as_ref().map(|m| m.pid));
        }
        let watchdog = view.guard.as_deref().unwrap_or("its watchdog");
        problems.push(problem(
            ProblemKind::Unguarded,
            pids.clone(),
            format!(
                "{} runs (pid{} {}) while its watchdog {watchdog} does not: its positions have \
                 no stop-loss guard. Start {watchdog} (`master-launch start {watchdog}` while \
                 master-launch runs, else `master-launch run {watchdog}`), or stop the brain \
                 with safe-shutdown{}",
                component.lock_name,
                if pids.len() == 1 { "" } else { "s" },
                join(&pids),
                account_flag(component)
            ),
        ));
    }
    problems.extend(supervision_problem(view));
    let between_runs = matches!(
        view.supervised.as_ref().map(|s| s.state),
        Some(
            Supervision::Starting
                | Supervision::Restarting
                | Supervision::Standby
                | Supervision::Hung
        )
    );
    // A holder here waiting for the key another host holds runs no child, rightly.
    let elsewhere = view.state() == ComponentState::Elsewhere;
    if let Some(lock) = &view.lock {
        if lock.state == LockState::Running && view.managed.is_none() && !between_runs && !elsewhere
        {
            let record = lock.record.as_ref();
            let pid = record.map_or(0, |r| r.pid);
            let holder = record.and_then(|r| r.holder_pid).unwrap_or(0);
            problems.push(problem(
                ProblemKind::ProcessGone,
                vec![pid],
                format!(
                    "{} is locked by pid {holder}, but the process it runs (pid {pid}) is gone; \
                     a restart may be pending, else stop it with safe-shutdown{}",
                    component.lock_name,
                    account_flag(component)
                ),
            ));
        }
        match &view.named_not_a_copy {
            Some(process) if lock.state == LockState::Legacy => problems.push(problem(
                ProblemKind::Legacy,
                vec![process.pid],
                format!(
                    "{} has an older tool's record naming pid {} (`{}`), which is not a copy of {}: \
                     the tools leave it alone and refuse to start {} while it runs; if it is not \
                     that bot, delete {} by hand",
                    component.lock_name,
                    process.pid,
                    process.cmd.join(" "),
                    component.lock_name,
                    component.lock_name,
                    lock.path.display()
                ),
            )),
            _ => problems.extend(lock_file_problem(lock, component.account.clone())),
        }
    }
    problems
}

/// A component the orchestrator should run but does not: given up, held back, or
/// backing off before a restart; or one that runs but does not do its work: hung, or a
/// watchdog that is not ready (DESIGN.md: check-procs tells the truth). A watchdog
/// merely `starting` (not ready yet, within its timeout) is not a problem.
fn supervision_problem(view: &ComponentView) -> Option<Problem> {
    let component = &view.component;
    let name = &component.lock_name;
    let state = view.state();
    let kind = match state {
        ComponentState::GivenUp => ProblemKind::GivenUp,
        ComponentState::Blocked => ProblemKind::Blocked,
        ComponentState::Restarting => ProblemKind::Restarting,
        ComponentState::Hung => ProblemKind::Hung,
        ComponentState::NotReady if component.role == Role::Watchdog => ProblemKind::NotReady,
        _ => return None,
    };
    let reason = view.reason().unwrap_or_default();
    let pid = view.managed.as_ref().map(|m| m.pid);
    let runs = pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
    // A watchdog that does not guard holds its brain back (DESIGN.md rule 13).
    let brain = match (component.role, view.guards.as_deref()) {
        (Role::Watchdog, Some(brain)) => format!(
            "; its brain {brain} is held back (stopped first if it ran) until {name} says ready"
        ),
        (Role::Watchdog, None) => "; it guards no positions meanwhile".to_string(),
        _ => String::new(),
    };
    let terminal = if component.role == Role::Watchdog {
        " and that its MetaTrader terminal runs and is logged in"
    } else {
        ""
    };
    let message = match kind {
        ProblemKind::GivenUp => format!(
            "{name} is not running: {reason}. Fix it (its log is {name}.log), then `master-launch start {name}`"
        ),
        ProblemKind::Hung => format!(
            "{name} is hung{runs}: {reason}{brain}. master-launch stops it and starts it \
             again; if it hangs again, check its log ({name}.log){terminal}, then \
             `master-launch restart {name}`"
        ),
        ProblemKind::NotReady => format!(
            "{name} runs{runs} but guards nothing: {reason}{brain}. Check its log \
             ({name}.log){terminal}; `master-launch restart {name}` starts it again"
        ),
        _ => format!("{name} is not running: {reason}"),
    };
    Some(Problem {
        kind,
        name: name.clone(),
        account: component.account.clone(),
        pids: pid.into_iter().collect(),
        message,
    })
}

/// Legacy, stale and corrupt lock files.
fn lock_file_problem(lock: &LockStatus, account: Option<String>) -> Option<Problem> {
    let pid = lock.record.as_ref().map(|r| r.pid);
    let (kind, message) = match lock.state {
        LockState::Running => return None,
        // safe-shutdown stops the process a component's legacy record names when it is
        // a copy of the component (a record naming anything else is reported by
        // `problems_of` instead); it never stops what a legacy MASTER_LAUNCH record names.
        LockState::Legacy if lock.name == MASTER_LOCK_NAME => (
            ProblemKind::Legacy,
            format!(
                "{} is held by an older tool's PID file ({}); safe-shutdown does not stop \
                 that process: stop the old launcher by hand, then start through master-launch",
                lock.name, lock.detail
            ),
        ),
        LockState::Legacy => (
            ProblemKind::Legacy,
            format!(
                "{} is held by an older tool's PID file ({}); stop that process with safe-shutdown, \
                 then start through master-launch",
                lock.name, lock.detail
            ),
        ),
        LockState::Stale => (
            ProblemKind::Stale,
            format!(
                "{} is stale ({}); lock-gc removes it",
                lock.name, lock.detail
            ),
        ),
        LockState::Corrupt => (
            ProblemKind::Corrupt,
            format!(
                "{} is corrupt ({}); lock-gc removes it",
                lock.name, lock.detail
            ),
        ),
    };
    Some(Problem {
        kind,
        name: lock.name.clone(),
        account,
        pids: pid.into_iter().collect(),
        message,
    })
}

/// The widest host name shown in a table or message (the config allows 255).
pub const HOST_WIDTH: usize = 32;

/// A host name from etcd as tables and messages show it: anyone who can write to etcd
/// wrote it, so control characters (a terminal escape) become `?` and it is cut at
/// [`HOST_WIDTH`] characters.
pub fn printable_host(host: &str) -> String {
    if host.chars().count() <= HOST_WIDTH {
        return from_outside(host, HOST_WIDTH);
    }
    // Cut with room for the "..." that marks it.
    from_outside(host, HOST_WIDTH - 3)
}

/// etcd could not be read: say which endpoints, why, and what to do.
fn cluster_problem(cluster: &ClusterSnapshot) -> Option<Problem> {
    let error = cluster.error.as_ref()?;
    Some(Problem {
        kind: ProblemKind::ClusterUnreachable,
        name: cluster.prefix.clone(),
        account: None,
        pids: Vec::new(),
        message: format!(
            "cannot read the cluster's locks: {}. This view shows this machine only, \
             and a holder that cannot renew its lease stops its bots before the lease ends; \
             check that etcd runs at {} and that this machine reaches it ([cluster] \
             endpoints in fleet.toml)",
            from_outside(error, usize::MAX),
            cluster.endpoints.join(", ")
        ),
    })
}

fn stray_problem(stray: &StrayEntry) -> Problem {
    Problem {
        kind: ProblemKind::NotAFile,
        name: stray.file_name.clone(),
        account: None,
        pids: Vec::new(),
        message: format!(
            "{} is {}, not a lock file or stop request the tools wrote; every tool ignores it. \
             Find out what made it and remove it by hand",
            stray.path.display(),
            stray.what
        ),
    }
}

fn unknown_lock_problem(lock: &LockStatus) -> Problem {
    // lock-gc removes an unknown lock only when it can read it as the tools' record: an
    // unreadable one may be another program's (a `poetry.lock`).
    let advice = if lock.state.is_held() {
        "find out what holds it before adding it to fleet.toml"
    } else if lock.state == LockState::Corrupt {
        "lock-gc keeps it (unreadable, and not a lock of this desk: another program may own \
         it); remove it by hand if it is not another program's"
    } else {
        "lock-gc removes it"
    };
    Problem {
        kind: ProblemKind::UnknownLock,
        name: lock.name.clone(),
        account: lock.record.as_ref().and_then(|r| r.account.clone()),
        pids: lock.record.iter().map(|r| r.pid).collect(),
        message: format!(
            "{} is {} but no component of fleet.toml uses it; {advice}",
            lock.name,
            lock.state.as_str()
        ),
    }
}

fn account_flag(component: &Component) -> String {
    component
        .account
        .as_ref()
        .map(|a| format!(" --account {a}"))
        .unwrap_or_default()
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod cluster_tests {
    //! The cluster's view on a snapshot built from given facts: which copies another
    //! host's key owns, the `elsewhere` state, and an etcd that cannot be read.

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::cluster::ClusterHolder;

    const NOW: u64 = 1_790_000_000;

    const FLEET: &str = r#"
[[global]]
name = "qs"
command = ["python", "qs.py"]

[[account]]
name = "ATLAS"
brain = ["python", "BRAIN_ATLAS.py"]
watchdog = ["python", "WATCHDOG_ATLAS.py"]
"#;

    fn process(pid: u32, parent: u32, cmd: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: NOW - 60,
            name: cmd[0].into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn record(name: &str, pid: u32, holder: u32) -> LockRecord {
        LockRecord {
            pid,
            name: name.into(),
            account: None,
            timestamp: None,
            pid_start: Some(NOW - 60),
            holder_pid: Some(holder),
            holder_start: Some(NOW - 60),
            host: None,
            command: vec![],
        }
    }

    /// A key held by `host` whose record names `pid` under `holder`, 7 s left.
    fn entry(name: &str, host: &str, pid: u32, holder: u32) -> ClusterEntry {
        let record = record(name, pid, holder);
        ClusterEntry {
            name: name.into(),
            holder: ClusterHolder {
                host: Some(host.into()),
                value: String::new(),
                lease: 1,
                create_revision: 1,
            },
            record: Some(record),
            ttl_left: Some(Duration::from_secs(7)),
        }
    }

    fn cluster(host: &str, entries: Vec<ClusterEntry>, error: Option<&str>) -> ClusterSnapshot {
        ClusterSnapshot {
            host: host.into(),
            endpoints: vec!["http://10.0.0.5:2379".into()],
            prefix: "/desk/locks/".into(),
            entries,
            error: error.map(str::to_string),
        }
    }

    /// This machine ("B") sees host A's master-launch (pid 900) and its bots for qs
    /// (901) and WATCHDOG_ATLAS (902): both "hosts" on one machine.
    fn snapshot() -> DeskSnapshot {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            process(900, 1, &["master-launch"]),
            process(901, 900, &["python", "qs.py"]),
            process(902, 900, &["python", "WATCHDOG_ATLAS.py"]),
        ]);
        DeskSnapshot::build(&fleet, Vec::new(), table, NOW)
    }

    #[test]
    fn copies_another_hosts_key_owns_are_set_apart_and_the_component_is_elsewhere() {
        let mut snapshot = snapshot();
        // Without the cluster's view A's bots look like copies started by hand.
        assert_eq!(
            snapshot.component("qs").unwrap().state(),
            ComponentState::Unlocked
        );
        assert_eq!(snapshot.problems.len(), 2, "{:?}", snapshot.problems);
        snapshot.add_cluster(cluster(
            "B",
            vec![
                // qs: the record names the child; WATCHDOG_ATLAS: it names the holder
                // only (the child is not recorded yet), and the bot runs under it.
                entry("qs", "A", 901, 900),
                entry("WATCHDOG_ATLAS", "A", 900, 900),
                // A brain running on A that this machine cannot see.
                entry("BRAIN_ATLAS", "A", 4242, 4240),
            ],
            None,
        ));
        for name in ["qs", "WATCHDOG_ATLAS", "BRAIN_ATLAS"] {
            let view = snapshot.component(name).unwrap();
            assert_eq!(view.state(), ComponentState::Elsewhere, "{name}");
            assert!(view.copies.is_empty(), "{name}: {:?}", view.copies);
            assert!(view.held_elsewhere);
        }
        assert_eq!(
            snapshot.component("qs").unwrap().elsewhere[0].tree.root.pid,
            901
        );
        assert_eq!(
            snapshot.component("WATCHDOG_ATLAS").unwrap().elsewhere[0]
                .tree
                .root
                .pid,
            902
        );
        assert!(snapshot.is_healthy(), "{:?}", snapshot.problems);
        assert!(!ComponentState::Elsewhere.is_alarm());
    }

    #[test]
    fn a_copy_no_key_owns_is_still_unlocked_even_when_another_host_holds_the_key() {
        let mut snapshot = snapshot();
        // qs's key names a child and a holder that are not the copy running here.
        snapshot.add_cluster(cluster("B", vec![entry("qs", "A", 4242, 4240)], None));
        let view = snapshot.component("qs").unwrap();
        assert_eq!(view.state(), ComponentState::Unlocked);
        assert!(view.elsewhere.is_empty());
        let kinds: Vec<ProblemKind> = snapshot.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ProblemKind::Unlocked, ProblemKind::Unlocked]);
    }

    #[test]
    fn a_key_this_host_holds_sets_nothing_apart() {
        let mut snapshot = snapshot();
        snapshot.add_cluster(cluster("A", vec![entry("qs", "A", 901, 900)], None));
        let view = snapshot.component("qs").unwrap();
        assert!(!view.held_elsewhere);
        assert_eq!(view.copies.len(), 1);
        assert_eq!(
            view.cluster.as_ref().unwrap().holder.host.as_deref(),
            Some("A")
        );
        // No key and nothing running: stopped, as without a cluster.
        assert_eq!(
            snapshot.component("BRAIN_ATLAS").unwrap().state(),
            ComponentState::Stopped
        );
    }

    #[test]
    fn a_standby_orchestrator_waiting_for_the_key_is_elsewhere_but_given_up_stays_a_problem() {
        let mut snapshot = snapshot();
        let supervised = |state| Supervised {
            alive_at: None,
            heartbeat_secs: None,
            name: "BRAIN_ATLAS".into(),
            state,
            pid: None,
            since: NOW as f64,
            reason: "waiting".into(),
            answers: vec![],
        };
        snapshot.add_cluster(cluster(
            "B",
            vec![entry("BRAIN_ATLAS", "A", 4242, 4240)],
            None,
        ));
        let view = &mut snapshot.components[2];
        // A holder here that took the local lock and waits for the key runs no child.
        view.lock = Some(LockStatus {
            name: "BRAIN_ATLAS".into(),
            path: PathBuf::from(".locks/BRAIN_ATLAS.lock"),
            state: LockState::Running,
            record: Some(record("BRAIN_ATLAS", 800, 800)),
            detail: String::new(),
        });
        for state in [
            Supervision::Starting,
            Supervision::Restarting,
            Supervision::NotStarted,
            Supervision::Stopped,
        ] {
            view.supervised = Some(supervised(state));
            assert_eq!(view.state(), ComponentState::Elsewhere, "{state:?}");
            assert!(problems_of(view).is_empty(), "{state:?}");
        }
        view.supervised = Some(supervised(Supervision::GivenUp));
        assert_eq!(view.state(), ComponentState::GivenUp);
    }

    #[test]
    fn running_here_under_the_local_lock_while_another_host_holds_the_key_is_a_duplicate() {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            process(100, 1, &["master-launch"]),
            process(101, 100, &["python", "qs.py"]),
        ]);
        let lock = LockStatus {
            name: "qs".into(),
            path: PathBuf::from(".locks/qs.lock"),
            state: LockState::Running,
            record: Some(record("qs", 101, 100)),
            detail: String::new(),
        };
        let mut snapshot = DeskSnapshot::build(&fleet, vec![lock], table, NOW);
        assert_eq!(
            snapshot.component("qs").unwrap().state(),
            ComponentState::Running
        );
        snapshot.add_cluster(cluster("B", vec![entry("qs", "A", 4242, 4240)], None));
        let view = snapshot.component("qs").unwrap();
        assert_eq!(view.state(), ComponentState::Duplicate);
        assert_eq!(view.copies.len(), 1);
        assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
        let problem = &snapshot.problems[0];
        assert_eq!(problem.kind, ProblemKind::Duplicate);
        assert_eq!(problem.pids, [101]);
        assert!(
            problem
                .message
                .contains("its cluster key is held by host A"),
            "{}",
            problem.message
        );
        // The same key held by this host: running, healthy.
        let mut snapshot = snapshot.clone();
        snapshot.add_cluster(cluster("A", vec![entry("qs", "A", 101, 100)], None));
        assert_eq!(
            snapshot.component("qs").unwrap().state(),
            ComponentState::Running
        );
        assert!(snapshot.is_healthy(), "{:?}", snapshot.problems);
    }

    #[test]
    fn an_etcd_that_cannot_be_read_is_a_problem_naming_the_endpoints_and_the_error() {
        let mut snapshot = snapshot();
        snapshot.add_strays(vec![StrayEntry {
            path: PathBuf::from(".locks/X.lock"),
            file_name: "X.lock".into(),
            what: "a directory".into(),
        }]);
        snapshot.add_cluster(cluster(
            "B",
            Vec::new(),
            Some("cannot reach etcd at http://10.0.0.5:2379: connection refused\x1b[2J"),
        ));
        let kinds: Vec<ProblemKind> = snapshot.problems.iter().map(|p| p.kind).collect();
        // Second only to duplicates; the stray found before is kept.
        assert_eq!(
            kinds,
            [
                ProblemKind::ClusterUnreachable,
                ProblemKind::Unlocked,
                ProblemKind::Unlocked,
                ProblemKind::NotAFile
            ]
        );
        let message = &snapshot.problems[0].message;
        assert!(message.contains("http://10.0.0.5:2379"), "{message}");
        assert!(message.contains("connection refused"), "{message}");
        assert!(message.contains("check that etcd runs"), "{message}");
        // Text from outside cannot paint the terminal.
        assert!(message.contains("refused?[2J"), "{message}");
        assert_eq!(snapshot.problems[0].name, "/desk/locks/");
    }
}

#[cfg(test)]
mod binding_tests {
    //! A bot's reaper adopts what the bot daemonizes: copies in its tree are one copy.

    use super::*;
    use crate::copies::CopyRule;

    fn process(pid: u32, parent: u32, cmd: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: 1_790_000_000,
            name: cmd[0].into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
        }
    }

    const BOT: [&str; 2] = ["python", "BRAIN_ATLAS.py"];
    const REAPER: [&str; 5] = [
        "master-launch",
        "--master-launch-reaper",
        "--",
        "python",
        "BRAIN_ATLAS.py",
    ];

    fn copies_of(table: &ProcessTable, managed: u32, holder: u32) -> Vec<Vec<u32>> {
        let rule = CopyRule::new(&BOT.map(String::from), None);
        let trees = table.find_copies(&rule);
        one_tree_per_binding(table, trees, Some(managed), Some(holder))
            .iter()
            .map(|t| t.pids().collect())
            .collect()
    }

    #[test]
    fn a_daemon_the_reaper_adopted_is_part_of_the_bots_copy() {
        // master-launch 900, reaper 901, bot 902, its worker 903, a daemon 904 (its
        // parent gone, adopted by the reaper).
        let table = ProcessTable::from_processes([
            process(900, 1, &["master-launch"]),
            process(901, 900, &REAPER),
            process(902, 901, &BOT),
            process(903, 902, &BOT),
            process(904, 901, &BOT),
        ]);
        assert_eq!(copies_of(&table, 902, 900), vec![vec![902, 903, 904]]);
    }

    #[test]
    fn copies_outside_the_bots_reaper_stay_copies_of_their_own() {
        // A copy started by hand (905, under a shell) and a second child of the holder
        // (906): each its own copy, so the desk reports the duplicate.
        let table = ProcessTable::from_processes([
            process(900, 1, &["master-launch"]),
            process(901, 900, &REAPER),
            process(902, 901, &BOT),
            process(904, 901, &BOT),
            process(950, 1, &["bash"]),
            process(905, 950, &BOT),
            process(906, 900, &BOT),
        ]);
        assert_eq!(
            copies_of(&table, 902, 900),
            vec![vec![902, 904], vec![905], vec![906]]
        );
    }

    #[test]
    fn a_bot_started_by_its_holder_directly_merges_nothing() {
        // Windows, or `lock-taker run`: the bot's parent is the holder itself.
        let table = ProcessTable::from_processes([
            process(900, 1, &["master-launch"]),
            process(902, 900, &BOT),
            process(906, 900, &BOT),
        ]);
        assert_eq!(copies_of(&table, 902, 900), vec![vec![902], vec![906]]);
    }
}

#[cfg(test)]
pub(crate) mod readiness_tests {
    //! Readiness and heartbeats as check-procs shows them: the orchestrator's `starting`
    //! (with a pid), `not_ready` and `hung` for the process that runs under the lock
    //! it names, never over a duplicate, an unguarded brain or a view out of date.

    use std::path::{Path, PathBuf};

    use super::*;
    use crate::process::ProcessIdentity;

    /// "Now" in these tests (also copy_scan's).
    pub(crate) const NOW: u64 = 1_790_000_000;

    const FLEET: &str = r#"
[[account]]
name = "ATLAS"
brain = ["python", "BRAIN_ATLAS.py"]
watchdog = ["python", "WATCHDOG_ATLAS.py"]
heartbeat_secs = 5
"#;

    fn process(pid: u32, parent: u32, cmd: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: NOW - 60,
            name: cmd[0].into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// `name` held by master-launch (pid 100) for a child `pid` of account ATLAS.
    pub(crate) fn held(name: &str, pid: u32) -> LockStatus {
        LockStatus {
            name: name.into(),
            path: PathBuf::from(format!(".locks/{name}.lock")),
            state: LockState::Running,
            record: Some(LockRecord {
                pid,
                name: name.into(),
                account: Some("ATLAS".into()),
                timestamp: None,
                pid_start: Some(NOW - 60),
                holder_pid: Some(100),
                holder_start: Some(NOW - 60),
                host: None,
                command: vec![],
            }),
            detail: String::new(),
        }
    }

    fn supervised(name: &str, state: Supervision, pid: Option<u32>, reason: &str) -> Supervised {
        Supervised {
            alive_at: None,
            heartbeat_secs: None,
            name: name.into(),
            state,
            pid,
            since: NOW as f64,
            reason: reason.into(),
            answers: vec![],
        }
    }

    /// master-launch (100) runs WATCHDOG_ATLAS (300) and, if `brain`, BRAIN_ATLAS (301)
    /// under their locks, plus `extra` processes; its view says `watchdog` and `brain_view`.
    fn desk(
        watchdog: Supervised,
        brain_view: Supervised,
        watchdog_runs: bool,
        brain: bool,
        extra: &[ProcessInfo],
    ) -> DeskSnapshot {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let mut processes = vec![process(100, 1, &["master-launch"])];
        if watchdog_runs {
            processes.push(process(300, 100, &["python", "WATCHDOG_ATLAS.py"]));
        }
        if brain {
            processes.push(process(301, 100, &["python", "BRAIN_ATLAS.py"]));
        }
        processes.extend(extra.iter().cloned());
        let mut locks = vec![held("WATCHDOG_ATLAS", 300)];
        if brain {
            locks.push(held("BRAIN_ATLAS", 301));
        }
        let state = DeskState {
            orchestrator: ProcessIdentity {
                pid: 100,
                start_time: NOW - 60,
            },
            updated_at: NOW as f64,
            components: vec![watchdog, brain_view],
        };
        let table = ProcessTable::from_processes(processes);
        DeskSnapshot::build_supervised(&fleet, locks, table, NOW, Some(state))
    }

    fn held_back(reason: &str) -> Supervised {
        supervised("BRAIN_ATLAS", Supervision::Blocked, None, reason)
    }

    fn kinds(snapshot: &DeskSnapshot) -> Vec<(ProblemKind, &str)> {
        snapshot
            .problems
            .iter()
            .map(|p| (p.kind, p.name.as_str()))
            .collect()
    }

    #[test]
    fn a_watchdog_that_runs_but_is_not_ready_yet_is_starting_and_no_problem() {
        let snapshot = desk(
            supervised(
                "WATCHDOG_ATLAS",
                Supervision::Starting,
                Some(300),
                "started, pid 300; waiting for it to say ready (timeout 60 s)",
            ),
            supervised(
                "BRAIN_ATLAS",
                Supervision::Starting,
                None,
                "waiting for its watchdog WATCHDOG_ATLAS to run",
            ),
            true,
            false,
            &[],
        );
        let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
        assert_eq!(watchdog.state(), ComponentState::Starting);
        assert!(!watchdog.is_alarm());
        assert_eq!(
            snapshot.component("BRAIN_ATLAS").unwrap().state(),
            ComponentState::Starting
        );
        assert!(snapshot.is_healthy(), "{:?}", snapshot.problems);
    }

    #[test]
    fn a_watchdog_not_ready_is_a_problem_naming_its_held_back_brain_and_the_fix() {
        let snapshot = desk(
            supervised(
                "WATCHDOG_ATLAS",
                Supervision::NotReady,
                Some(300),
                "not ready: terminal lost",
            ),
            held_back("held back: its watchdog WATCHDOG_ATLAS is not ready (terminal lost)"),
            true,
            false,
            &[],
        );
        let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
        assert_eq!(watchdog.state(), ComponentState::NotReady);
        assert!(watchdog.is_alarm(), "a watchdog not ready guards nothing");
        assert!(!ComponentState::NotReady.is_alarm());
        assert_eq!(watchdog.reason(), Some("not ready: terminal lost"));
        assert_eq!(
            kinds(&snapshot),
            [
                (ProblemKind::NotReady, "WATCHDOG_ATLAS"),
                (ProblemKind::Blocked, "BRAIN_ATLAS")
            ]
        );
        let problem = &snapshot.problems[0];
        assert_eq!(problem.pids, [300]);
        assert_eq!(
            problem.message,
            "WATCHDOG_ATLAS runs (pid 300) but guards nothing: not ready: terminal lost; its \
             brain BRAIN_ATLAS is held back (stopped first if it ran) until WATCHDOG_ATLAS \
             says ready. Check its log (WATCHDOG_ATLAS.log) and that its MetaTrader \
             terminal runs and is logged in; `master-launch restart WATCHDOG_ATLAS` starts \
             it again"
        );
        assert!(
            snapshot.problems[1]
                .message
                .contains("held back: its watchdog WATCHDOG_ATLAS is not ready"),
            "{}",
            snapshot.problems[1].message
        );
    }

    #[test]
    fn a_hung_watchdog_is_a_problem_and_an_alarm_while_it_runs_and_after_it_is_stopped() {
        let reason = "missed its heartbeat (every 5 s): last alive 7.1 s ago";
        let snapshot = desk(
            supervised("WATCHDOG_ATLAS", Supervision::Hung, Some(300), reason),
            held_back("held back: its watchdog WATCHDOG_ATLAS is hung (missed its heartbeat)"),
            true,
            false,
            &[],
        );
        let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
        assert_eq!(watchdog.state(), ComponentState::Hung);
        assert!(watchdog.is_alarm() && ComponentState::Hung.is_alarm());
        assert_eq!(
            kinds(&snapshot),
            [
                (ProblemKind::Hung, "WATCHDOG_ATLAS"),
                (ProblemKind::Blocked, "BRAIN_ATLAS")
            ]
        );
        let message = &snapshot.problems[0].message;
        for words in [
            "WATCHDOG_ATLAS is hung (pid 300): missed its heartbeat",
            "its brain BRAIN_ATLAS is held back",
            "master-launch stops it and starts it again",
            "check its log (WATCHDOG_ATLAS.log)",
            "MetaTrader terminal",
            "`master-launch restart WATCHDOG_ATLAS`",
        ] {
            assert!(message.contains(words), "{words}: {message}");
        }

        // Stopped, backing off before its restart: the lock is held, no child runs,
        // the view names no pid. Still hung, and not also `process_gone`.
        let snapshot = desk(
            supervised("WATCHDOG_ATLAS", Supervision::Hung, None, reason),
            held_back("held back: its watchdog WATCHDOG_ATLAS is hung"),
            false,
            false,
            &[],
        );
        let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
        assert_eq!(watchdog.state(), ComponentState::Hung);
        assert_eq!(
            kinds(&snapshot),
            [
                (ProblemKind::Hung, "WATCHDOG_ATLAS"),
                (ProblemKind::Blocked, "BRAIN_ATLAS")
            ]
        );
        assert!(snapshot.problems[0].pids.is_empty());
        assert!(
            snapshot.problems[0]
                .message
                .starts_with("WATCHDOG_ATLAS is hung: missed"),
            "{}",
            snapshot.problems[0].message
        );
    }

    #[test]
    fn a_view_naming_another_pid_is_out_of_date_and_what_runs_speaks() {
        for state in [
            Supervision::Starting,
            Supervision::NotReady,
            Supervision::Hung,
        ] {
            let snapshot = desk(
                supervised("WATCHDOG_ATLAS", state, Some(299), "the last run"),
                supervised("BRAIN_ATLAS", Supervision::Running, Some(301), "running"),
                true,
                true,
                &[],
            );
            let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
            assert_eq!(watchdog.state(), ComponentState::Running, "{state:?}");
            assert_eq!(watchdog.reason(), None, "{state:?}");
            assert!(snapshot.is_healthy(), "{state:?}: {:?}", snapshot.problems);
        }
        // Starting without a pid (not started yet, by the view) while one runs: as today.
        let snapshot = desk(
            supervised("WATCHDOG_ATLAS", Supervision::Starting, None, "starting"),
            supervised("BRAIN_ATLAS", Supervision::Running, Some(301), "running"),
            true,
            true,
            &[],
        );
        assert_eq!(
            snapshot.component("WATCHDOG_ATLAS").unwrap().state(),
            ComponentState::Running
        );
    }

    #[test]
    fn a_duplicate_stays_a_duplicate_whatever_the_view_says() {
        let hand = process(500, 1, &["python", "WATCHDOG_ATLAS.py"]);
        for state in [
            Supervision::Starting,
            Supervision::NotReady,
            Supervision::Hung,
        ] {
            let snapshot = desk(
                supervised("WATCHDOG_ATLAS", state, Some(300), "whatever"),
                held_back("held back"),
                true,
                false,
                std::slice::from_ref(&hand),
            );
            let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
            assert_eq!(watchdog.state(), ComponentState::Duplicate, "{state:?}");
            assert_eq!(snapshot.problems[0].kind, ProblemKind::Duplicate);
            assert!(
                !kinds(&snapshot)
                    .iter()
                    .any(|(k, _)| matches!(k, ProblemKind::Hung | ProblemKind::NotReady)),
                "{state:?}: {:?}",
                snapshot.problems
            );
        }
    }

    #[test]
    fn an_unguarded_brain_stays_unguarded_whatever_the_view_says_of_it() {
        // The watchdog is gone; the brain runs under its lock and the view calls it hung.
        let snapshot = desk(
            supervised("WATCHDOG_ATLAS", Supervision::Restarting, None, "exited"),
            supervised("BRAIN_ATLAS", Supervision::Hung, Some(301), "missed"),
            false,
            true,
            &[],
        );
        let brain = snapshot.component("BRAIN_ATLAS").unwrap();
        assert_eq!(brain.state(), ComponentState::Unguarded);
        assert_eq!(snapshot.problems[0].kind, ProblemKind::Unguarded);
    }

    #[test]
    fn a_brain_not_ready_is_shown_but_no_problem_and_a_hung_brain_is_one() {
        let watchdog = || supervised("WATCHDOG_ATLAS", Supervision::Running, Some(300), "running");
        let snapshot = desk(
            watchdog(),
            supervised(
                "BRAIN_ATLAS",
                Supervision::NotReady,
                Some(301),
                "not ready: no quotes",
            ),
            true,
            true,
            &[],
        );
        let brain = snapshot.component("BRAIN_ATLAS").unwrap();
        assert_eq!(brain.state(), ComponentState::NotReady);
        assert!(!brain.is_alarm());
        assert!(snapshot.is_healthy(), "{:?}", snapshot.problems);

        let snapshot = desk(
            watchdog(),
            supervised("BRAIN_ATLAS", Supervision::Hung, Some(301), "missed"),
            true,
            true,
            &[],
        );
        assert_eq!(
            kinds(&snapshot),
            [(ProblemKind::Hung, "BRAIN_ATLAS")],
            "{:?}",
            snapshot.problems
        );
        let message = &snapshot.problems[0].message;
        assert!(!message.contains("held back"), "{message}");
        assert!(!message.contains("MetaTrader"), "{message}");
        assert!(message.contains("(BRAIN_ATLAS.log)"), "{message}");
    }

    #[test]
    fn without_anything_running_not_ready_and_hung_are_shown_as_such() {
        let snapshot = desk(
            supervised("WATCHDOG_ATLAS", Supervision::NotReady, None, "not ready"),
            held_back("held back"),
            false,
            false,
            &[],
        );
        assert_eq!(
            snapshot.component("WATCHDOG_ATLAS").unwrap().state(),
            ComponentState::NotReady
        );
        assert_eq!(snapshot.problems[0].kind, ProblemKind::NotReady);
    }

    #[test]
    fn problems_rank_hung_after_unguarded_and_not_ready_before_blocked() {
        let mut ranked = [
            ProblemKind::Blocked,
            ProblemKind::NotReady,
            ProblemKind::GivenUp,
            ProblemKind::Hung,
            ProblemKind::Unguarded,
        ];
        ranked.sort();
        assert_eq!(
            ranked,
            [
                ProblemKind::Unguarded,
                ProblemKind::Hung,
                ProblemKind::GivenUp,
                ProblemKind::NotReady,
                ProblemKind::Blocked
            ]
        );
    }

    #[test]
    fn the_heartbeat_age_is_from_the_snapshots_time_never_negative_and_only_for_this_run() {
        let alive = |alive_at: f64, pid| Supervised {
            alive_at: Some(alive_at),
            heartbeat_secs: Some(5),
            ..supervised("WATCHDOG_ATLAS", Supervision::Running, Some(pid), "running")
        };
        let mut snapshot = desk(
            alive(NOW as f64 - 0.4, 300),
            supervised("BRAIN_ATLAS", Supervision::Running, Some(301), "running"),
            true,
            true,
            &[],
        );
        snapshot.taken_at_exact = NOW as f64;
        let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
        let age = watchdog.heartbeat_age(snapshot.taken_at_exact).unwrap();
        assert!((age - 0.4).abs() < 1e-6, "{age}");
        assert_eq!(watchdog.heartbeat_secs(), Some(5));
        // Its clock ahead of ours: zero, not negative.
        assert_eq!(watchdog.heartbeat_age(NOW as f64 - 3.0), Some(0.0));
        // fleet.toml's heartbeat_secs without the orchestrator's.
        let brain = snapshot.component("BRAIN_ATLAS").unwrap();
        assert_eq!(brain.heartbeat_secs(), Some(5));
        assert_eq!(brain.heartbeat_age(NOW as f64), None);
        // A view naming another process: its age is not this one's.
        let snapshot = desk(
            alive(NOW as f64 - 0.4, 299),
            supervised("BRAIN_ATLAS", Supervision::Running, Some(301), "running"),
            true,
            true,
            &[],
        );
        let watchdog = snapshot.component("WATCHDOG_ATLAS").unwrap();
        assert_eq!(watchdog.heartbeat_age(NOW as f64), None);
    }
}
