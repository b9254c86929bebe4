//! What to stop: every process of the desk (or of some accounts), from the locks and
//! from the process table, with how it was found and who stops it; and, for the stop
//! engine, how each is asked, checked and forced.

use crate::errln;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::{ClusterEntry, EtcdClient, place_stop_request};
use crate::config::ClusterConfig;
use crate::graceful::{Asked, Started, Underway};
use crate::process::Forced;
use crate::select::AccountSelection;
use crate::stop_engine::Asking;
use crate::{
    ComponentView, DeskSnapshot, LockDir, LockRecord, LockState, ProcessIdentity, ProcessProbe,
    Stage, StopRequest, Stoppable,
};
use std::collections::HashMap;

/// Extra time a lock holder gets beyond the timeout before we force its child: it
/// forces at the deadline itself; this covers a hung holder.
const HOLDER_MARGIN: Duration = Duration::from_secs(1);

/// Who carries out the graceful part of a target's stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The running master-launch, told by one stop-all request: it keeps the order.
    Orchestrator(ProcessIdentity),
    /// Its lock holder (master-launch or a `run` runner), told by a stop request.
    Holder(ProcessIdentity),
    /// Nobody holds it: asked directly (SIGTERM; CTRL_BREAK or a close on Windows).
    Direct,
    /// `[cluster]`: its holder runs on another host, told by a stop request key in etcd;
    /// nothing on that host can be forced from here.
    Cluster,
}

/// One thing to stop.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub account: Option<String>,
    pub stage: Stage,
    /// The process, by pid and start time: checked again before every signal. `None`
    /// for a component between restarts: only its holder's lock remains.
    pub who: Option<ProcessIdentity>,
    pub via: Via,
    pub found: String,
    /// Its pid turned out to belong to another process: never touched.
    pub left_alone: bool,
    /// `[cluster]`: the host whose holder runs it, for [`Via::Cluster`].
    pub host: Option<String>,
    /// The rest of its process tree when it was found (a venv launcher's interpreter):
    /// it counts as stopped only when all of them are gone too.
    pub tree: Vec<ProcessIdentity>,
    /// The system refused us a signal to it: not this user's process.
    pub denied: bool,
}

/// Processes that an older tool's lock record names but that are not copies of their
/// component (DESIGN.md rule 11): never stopped, said out loud.
pub fn left_alone(snapshot: &DeskSnapshot, selection: &AccountSelection) -> Vec<String> {
    snapshot
        .components
        .iter()
        .filter(|v| selection.includes(v.component.account.as_deref()))
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

/// Everything to stop, for the selected accounts (all: then the orchestrator too), in
/// stop order. A component whose holder lives but whose process does not (between
/// restarts) is a target too, so that its holder is told not to start it again.
pub fn targets(snapshot: &DeskSnapshot, selection: &AccountSelection) -> Vec<Target> {
    let orchestrator = snapshot
        .master
        .as_ref()
        .filter(|m| m.state == LockState::Running)
        .and_then(|m| m.record.as_ref())
        .and_then(LockRecord::holder_identity)
        .filter(|who| snapshot.table.is_alive(*who));
    let via_holder = |holder: Option<ProcessIdentity>| match holder {
        Some(h) if selection.is_all() && Some(h) == orchestrator => Via::Orchestrator(h),
        Some(h) => Via::Holder(h),
        None => Via::Direct,
    };
    let mut targets = Vec::new();
    for view in snapshot
        .components
        .iter()
        .filter(|v| selection.includes(v.component.account.as_deref()))
    {
        let target = |who, via, found: String| Target {
            name: view.component.lock_name.clone(),
            account: view.component.account.clone(),
            stage: Stage::of(view.component.role),
            who,
            via,
            found,
            left_alone: false,
            host: None,
            tree: Vec::new(),
            denied: false,
        };
        if let Some((host, entry)) = held_elsewhere(snapshot, view) {
            let pid = entry
                .record
                .as_ref()
                .map_or_else(String::new, |r| format!(", pid {}", r.pid));
            targets.push(Target {
                host: Some(host.to_string()),
                ..target(
                    None,
                    Via::Cluster,
                    format!("etcd: runs on host {host}{pid}"),
                )
            });
            continue;
        }
        let lock = view.lock.as_ref().filter(|l| l.state.is_held());
        let legacy = lock.is_some_and(|l| l.state == LockState::Legacy);
        let holder = lock
            .and_then(|l| l.record.as_ref())
            .and_then(LockRecord::holder_identity)
            .filter(|h| snapshot.table.is_alive(*h));
        for copy in &view.copies {
            let (via, found) = match (copy.locked, legacy, holder) {
                (true, true, _) => (Via::Direct, "legacy lock (older tool)".to_string()),
                (true, false, Some(h)) => {
                    (via_holder(Some(h)), format!("lock, held by pid {}", h.pid))
                }
                (true, false, None) => (Via::Direct, "lock whose holder is gone".to_string()),
                (false, _, _) => (Via::Direct, "process table (no lock)".to_string()),
            };
            targets.push(Target {
                tree: copy
                    .tree
                    .members
                    .iter()
                    .filter_map(|&pid| snapshot.table.get(pid).map(|p| p.identity()))
                    .collect(),
                ..target(Some(copy.tree.root.identity()), via, found)
            });
        }
        let managed_is_a_copy = view.managed.as_ref().is_some_and(|m| {
            view.copies
                .iter()
                .any(|c| c.tree.pids().any(|p| p == m.pid))
        });
        match (&view.managed, holder) {
            // A live bot that our own lock record names (pid and start time) but whose
            // command line the copy rule does not recognise is still the desk's.
            (Some(managed), _) if !managed_is_a_copy => targets.push(target(
                Some(managed.identity()),
                if legacy {
                    Via::Direct
                } else {
                    via_holder(holder)
                },
                "lock (command line not recognised as a copy)".into(),
            )),
            // Held, nothing running: between restarts. Its holder must not restart it.
            (None, Some(h)) if !legacy && view.copies.iter().all(|c| !c.locked) => {
                targets.push(target(
                    None,
                    via_holder(Some(h)),
                    format!("lock held by pid {}, between restarts", h.pid),
                ));
            }
            _ => {}
        }
    }
    if selection.is_all()
        && let Some(who) = orchestrator
    {
        targets.push(Target {
            name: "MASTER_LAUNCH".into(),
            account: None,
            stage: Stage::Orchestrator,
            who: Some(who),
            via: Via::Orchestrator(who),
            found: "its own lock".into(),
            left_alone: false,
            host: None,
            tree: Vec::new(),
            denied: false,
        });
    }
    targets.sort_by_key(|t| t.stage);
    targets
}

/// `[cluster]`: the key of a component that another host holds, with that host, when
/// nothing of it runs here.
fn held_elsewhere<'s>(
    snapshot: &'s DeskSnapshot,
    view: &'s ComponentView,
) -> Option<(&'s str, &'s ClusterEntry)> {
    let ours = &snapshot.cluster.as_ref()?.host;
    let entry = view.cluster.as_ref()?;
    let host = entry.holder.host.as_deref()?;
    (host != ours && view.copies.is_empty() && view.managed.is_none()).then_some((host, entry))
}

/// What the stop engine needs to ask, check and force a [`Target`].
#[derive(Debug)]
pub struct StopContext {
    /// The tool that stops, for the lines it prints (`safe-shutdown`, `master-launch`).
    pub tool: &'static str,
    pub probe: ProcessProbe,
    pub locks: LockDir,
    pub lock_dir: PathBuf,
    /// The graceful-stop time asked of holders.
    pub timeout: Duration,
    /// `[cluster]`: the stop requests placed in etcd, removed once the stop is over.
    pub cluster: Option<ClusterStops>,
    /// How the running master-launch was told to stop the desk (for its targets).
    pub orchestrator_told: String,
    /// A supervised bot was signalled directly (its stop request could not be
    /// written): its holder may start it again, so the end is checked with a fresh look.
    pub signalled_past_a_holder: bool,
    /// Asks under way (console helpers on Windows), by target name.
    pub asking: HashMap<String, Underway>,
}

impl Stoppable<StopContext> for Target {
    fn name(&self) -> String {
        match self.who {
            Some(who) => format!("{} (pid {})", self.name, who.pid),
            None => self.name.clone(),
        }
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn own_timeout(&self) -> Duration {
        Duration::ZERO
    }

    fn margin(&self) -> Duration {
        match self.via {
            Via::Direct => Duration::ZERO,
            Via::Orchestrator(_) | Via::Holder(_) | Via::Cluster => HOLDER_MARGIN,
        }
    }

    fn ask(&mut self, context: &mut StopContext) -> Asking {
        if let Some(who) = self.who
            && self.via == Via::Direct
        {
            if !self.still_the_one(context) {
                return Asking::Done(self.reused_line(context));
            }
            // Only started here: the rest of the stage is asked meanwhile.
            match context.probe.start_terminate(who) {
                Some(Started::Underway(underway)) => {
                    context.asking.insert(self.name(), underway);
                    return Asking::Underway;
                }
                Some(Started::Asked(asked)) => {
                    return Asking::Done(self.direct_line(context, Some(asked)));
                }
                None => return Asking::Done(self.direct_line(context, None)),
            }
        }
        Asking::Done(self.ask_now(context))
    }

    fn answer(&mut self, context: &mut StopContext) -> Option<String> {
        let name = self.name();
        let asked = context.asking.get_mut(&name).map_or(
            Some(Asked::Nothing("no ask under way".into())),
            Underway::answer,
        )?;
        context.asking.remove(&name);
        Some(self.direct_line(context, Some(asked)))
    }

    fn is_stopped(&mut self, context: &mut StopContext) -> bool {
        self.is_stopped_now(context)
    }

    fn force(&mut self, context: &mut StopContext) -> String {
        // A helper still at work is ended first: the process is forced now.
        context.asking.remove(&self.name());
        self.force_now(context)
    }
}

impl Target {
    /// Whether its pid still names the process found (or it is gone).
    fn still_the_one(&self, context: &mut StopContext) -> bool {
        match self.who {
            Some(who) => context
                .probe
                .identity(who.pid)
                .is_none_or(|now| crate::process::same_start(now.start_time, who.start_time)),
            None => true,
        }
    }

    fn reused_line(&mut self, context: &mut StopContext) -> String {
        self.left_alone = true;
        let (pid, started) = self
            .who
            .and_then(|who| context.probe.identity(who.pid))
            .map_or((0, 0), |now| (now.pid, now.start_time));
        format!(
            "pid {pid} now belongs to another process (started {}); left alone",
            crate::record::format_local(started)
        )
    }

    /// What a direct ask did, in words (`None`: it was gone).
    fn direct_line(&mut self, context: &mut StopContext, asked: Option<Asked>) -> String {
        let line = match asked {
            Some(Asked::NotPermitted) => {
                self.denied = true;
                not_permitted(context.tool)
            }
            Some(asked) => format!("asked to stop: {asked}"),
            None => "already gone".into(),
        };
        if self.denied {
            // At once, not after the timeout: nothing this run does can stop it.
            errln!("{}: {}: {line}", context.tool, self.name());
        }
        line
    }

    fn ask_now(&mut self, context: &mut StopContext) -> String {
        if let Some(who) = self.who
            && let Some(now) = context.probe.identity(who.pid)
            && !crate::process::same_start(now.start_time, who.start_time)
        {
            self.left_alone = true;
            return format!(
                "pid {} now belongs to another process (started {}); left alone",
                who.pid,
                crate::record::format_local(now.start_time)
            );
        }
        let name = self.name();
        let mut directly =
            |context: &mut StopContext| match self.who.and_then(|who| context.probe.terminate(who))
            {
                Some(Asked::NotPermitted) => {
                    self.denied = true;
                    not_permitted(context.tool)
                }
                Some(asked) => format!("asked to stop: {asked}"),
                None => "already gone".into(),
            };
        match self.via {
            Via::Orchestrator(_) => context.orchestrator_told.clone(),
            Via::Holder(holder) => {
                match StopRequest::new(&self.name, context.timeout).write(&context.lock_dir) {
                    Ok(_) => format!("stop request to its holder pid {}", holder.pid),
                    // The emergency stop works whatever else is broken: ask the bot. Its
                    // holder was not told, and a supervising one (master-launch) may
                    // start it again as after a crash: said here, checked at the end.
                    Err(e) => {
                        context.signalled_past_a_holder = true;
                        let asked = directly(context);
                        let line = format!(
                            "cannot write a stop request for its holder pid {} ({e}); {asked}; \
                             its holder was not told and may start it again (checked at the end)",
                            holder.pid,
                        );
                        errln!("{}: {name}: {line}", context.tool);
                        line
                    }
                }
            }
            Via::Direct => {
                let asked = directly(context);
                if self.denied {
                    // At once, not after the timeout: nothing this run does can stop it.
                    errln!("{}: {name}: {asked}", context.tool);
                }
                asked
            }
            Via::Cluster => {
                let host = self.host.as_deref().unwrap_or("another host");
                let request = StopRequest::new(&self.name, context.timeout);
                match context.cluster.as_mut().map(|c| c.place(&request)) {
                    Some(Ok(())) => {
                        format!("stop request through etcd to its holder on host {host}")
                    }
                    Some(Err(e)) => format!(
                        "cannot place a stop request in etcd for its holder on host {host}: {e}"
                    ),
                    None => "no [cluster] to reach it through".into(),
                }
            }
        }
    }

    fn is_stopped_now(&mut self, context: &mut StopContext) -> bool {
        if self.left_alone {
            return true;
        }
        if self.via == Via::Cluster {
            // Stopped once that host's holder let go of the key (after its child).
            return context
                .cluster
                .as_ref()
                .is_some_and(|c| c.released(&self.name));
        }
        match self.who {
            // Its whole tree, as found: a launcher gone with its interpreter left is not
            // stopped.
            Some(who) => {
                !context.probe.is_alive(who)
                    && !self.tree.iter().any(|&p| context.probe.is_alive(p))
            }
            // Between restarts: stopped once its holder let go of the lock.
            None => {
                let holder = match self.via {
                    Via::Holder(h) | Via::Orchestrator(h) => Some(h),
                    Via::Direct | Via::Cluster => None,
                };
                !still_held_by(context, &self.name, holder)
            }
        }
    }

    fn force_now(&mut self, context: &mut StopContext) -> String {
        if self.via == Via::Cluster {
            return format!(
                "cannot force a process on host {} from here; its master-launch forces it at \
                 the deadline",
                self.host.as_deref().unwrap_or("another host")
            );
        }
        let Some(who) = self.who else {
            return "its holder does not let go of the lock; nothing to kill".into();
        };
        // The root with what runs under it now, then what is left of the tree as found
        // (an interpreter whose launcher is gone is under nobody).
        let mut outcomes = vec![context.probe.force_tree(who)];
        for &member in &self.tree {
            outcomes.push(context.probe.force_tree(member));
        }
        let denied: Vec<u32> = outcomes
            .iter()
            .flat_map(|o| match o {
                Forced::Denied(pids) => pids.clone(),
                _ => Vec::new(),
            })
            .collect();
        if !denied.is_empty() {
            self.denied = true;
            let line = format!(
                "NOT killed: the system refused (pids {}): {}",
                denied
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                not_permitted(context.tool)
            );
            errln!("{}: {}: {line}", context.tool, self.name());
            return line;
        }
        let failed: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| match o {
                Forced::Failed(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            return format!("NOT killed: {}", failed.join("; "));
        }
        if outcomes.iter().all(|o| *o == Forced::Gone) {
            return "it was gone already".into();
        }
        // Sent and accepted; whether it is gone is what the engine checks next.
        let how = if cfg!(windows) {
            "TerminateProcess"
        } else {
            "SIGKILL"
        };
        format!("{how} accepted for pid {} and its children", who.pid)
    }
}

/// What to tell a person whose signal the system refused: who may stop it.
pub fn not_permitted(tool: &str) -> String {
    let who = if cfg!(windows) {
        "as the user who started the desk, or as administrator"
    } else {
        "as the desk's user (the user its processes run as), or as root"
    };
    format!("permission denied: this user may not signal it; run {tool} {who}")
}

/// `[cluster]`: the stop requests this run places in etcd, and how it sees their end.
#[derive(Debug)]
pub struct ClusterStops {
    client: EtcdClient,
    config: ClusterConfig,
    placed: Vec<String>,
}

impl ClusterStops {
    pub fn new(config: &ClusterConfig) -> ClusterStops {
        ClusterStops {
            client: EtcdClient::from_config(config),
            config: config.clone(),
            placed: Vec::new(),
        }
    }

    fn place(&mut self, request: &StopRequest) -> Result<(), crate::cluster::ClusterError> {
        place_stop_request(&self.client, &self.config, request)?;
        self.placed.push(request.name.clone());
        Ok(())
    }

    /// Whether `name`'s key is free. While the request stands no host can take it, so
    /// a key held by any host (one that took it just before the request) is still
    /// running; that host got the request too. An etcd that does not answer tells
    /// nothing: not released.
    fn released(&self, name: &str) -> bool {
        matches!(self.client.get(&self.config.lock_key(name)), Ok(None))
    }

    /// Removes the requests placed (best effort: their leases end them anyway), so that
    /// the desk can be started again at once. Standbys were told while they stood.
    pub fn withdraw(&self) {
        for name in &self.placed {
            let _ = self.client.delete_prefix(&self.config.stop_key(name));
        }
    }
}

/// Whether lock `name` is still held (by `holder`, when given).
fn still_held_by(context: &mut StopContext, name: &str, holder: Option<ProcessIdentity>) -> bool {
    let Ok(Some(status)) = context.locks.inspect(name, &mut context.probe) else {
        return false;
    };
    let by = status.record.as_ref().and_then(LockRecord::holder_identity);
    status.state == LockState::Running && (holder.is_none() || by == holder)
}
