//! Stopping the desk on a person's word: what to stop ([`find`]), the YES rules, the
//! ordered stop through the stop engine with its audit trail, the clean-up of lock
//! files nobody holds, and the fresh look that says whether anything still runs.
//!
//! Two tools stop a desk this way: `safe-shutdown`, and `master-launch --replace`,
//! which stops whatever of the desk runs before it starts the desk under itself
//! ([`replace`]). Both write `<log_dir>/safe-shutdown.log`, and the desk's event log
//! `<log_dir>/events.jsonl` ([`crate::events`]): the stop requested and by whom, each
//! process stopped or forced, and what survived.

pub mod find;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::MASTER_LOCK_NAME;
use crate::events::{DeskEvent, EventKind, events_path};
use crate::graceful::Asked;
use crate::logs::Log;
use crate::output::human_duration;
use crate::select::AccountSelection;
use crate::stop_engine::{self as engine, Cutoff, StopObserver, stop_in_order};
use crate::{
    DeskSnapshot, ExitCode, Fleet, Grace, LockDir, ProcessProbe, Removal, Stage, StopRequest,
    Stoppable,
};
use crate::{errln, outln};

pub use find::{ClusterStops, StopContext, Target, Via};

/// The longest stop timeout: a day.
pub const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// The default seconds each process gets to stop gracefully.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// How long after the stop a holder that was not told (its stop request could not be
/// written) is given to start a bot again before the final look: its first restart
/// after a crash is immediate.
const RESTART_LOOK_AFTER: Duration = Duration::from_secs(1);

/// A look at the desk for a stop: the snapshot, or (lock dir unreadable) the processes
/// found by their command lines only. The emergency stop works whatever else is broken.
pub fn look(fleet: &Fleet, probe: &mut ProcessProbe, tool: &str) -> DeskSnapshot {
    DeskSnapshot::take(fleet, probe).unwrap_or_else(|e| {
        errln!("{tool}: {e}; looking for the desk's processes by their command lines only");
        DeskSnapshot::build(fleet, Vec::new(), probe.table(), crate::process::now_secs())
    })
}

/// Whether a person can be asked: stdin is a terminal. dialoguer reads `/dev/tty` and
/// checks only stderr, so this is checked first: no terminal and no `--yes` means
/// refuse and touch nothing.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks the person to type YES after saying how many processes stop; `prompt` is the
/// question (`Type YES to stop them`). Anything but YES (any case) is a no.
pub fn confirmed(count: usize, prompt: &str) -> Result<bool, dialoguer::Error> {
    outln!();
    outln!("This stops {count} process(es). Open trades are NOT closed by stopping the bots.");
    let answer: String = dialoguer::Input::new()
        .with_prompt(prompt)
        .allow_empty(true)
        .interact_text()?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

/// `[cluster]` and etcd could not be read: why, and what that leaves undone.
pub fn cluster_blind(snapshot: &DeskSnapshot) -> Option<String> {
    let cluster = snapshot.cluster.as_ref()?;
    let error = cluster.error.as_ref()?;
    Some(format!(
        "cannot read the cluster's locks in etcd ({error}): what other hosts run can be \
         neither seen nor stopped from here; only this machine's processes are handled. \
         Run safe-shutdown on each host, or again once etcd at {} answers",
        cluster.endpoints.join(", ")
    ))
}

/// The names of `targets`, for the audit: `BRAIN_ATLAS (pid 4242), ...`.
pub fn summary(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The list of what will be stopped, in stop order, with how each was found.
pub fn print_targets(targets: &[Target], now: u64) {
    outln!(
        "{:<20} {:<14} {:<8} {:<10} HOW IT WAS FOUND",
        "NAME",
        "ACCOUNT",
        "PID",
        "UPTIME"
    );
    for target in targets {
        let (pid, uptime) = match target.who {
            Some(who) => (
                who.pid.to_string(),
                human_duration(now.saturating_sub(who.start_time)),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        outln!(
            "{:<20} {:<14} {:<8} {:<10} {}",
            target.name,
            target.account.as_deref().unwrap_or("-"),
            pid,
            uptime,
            target.found
        );
    }
}

/// How a confirmed stop ended.
#[derive(Debug)]
pub struct Stopped {
    /// How many targets were stopped (or tried).
    pub total: usize,
    /// What still runs, each as `NAME (pid N)` or `NAME (pid N): running again ...`.
    pub survivors: Vec<String>,
    pub probe: ProcessProbe,
}

/// Stops `targets` (found for `selection`) in the safe order, each given `timeout`:
/// a running master-launch is told first (a stop-all request, or its own stop signal
/// when the request cannot be written) so that it restarts nothing and keeps the
/// order itself; then the stop engine, stage by stage; then lock files nobody holds
/// are removed; then a fresh look names whatever of the selection still runs.
/// Everything done goes to `audit`; `tool` names the lines it prints.
pub fn stop_targets(
    fleet: &Fleet,
    selection: &AccountSelection,
    mut targets: Vec<Target>,
    mut probe: ProcessProbe,
    timeout: Duration,
    audit: &Audit,
    tool: &'static str,
) -> Stopped {
    let timeout = timeout.min(Duration::from_secs(MAX_TIMEOUT_SECS));
    let orchestrator_told = tell_orchestrator(fleet, &mut targets, &mut probe, timeout, audit);
    let total = targets.len();
    let mut context = StopContext {
        tool,
        probe,
        locks: LockDir::for_fleet(fleet),
        lock_dir: fleet.lock_dir.clone(),
        timeout,
        cluster: fleet.cluster.as_ref().map(ClusterStops::new),
        orchestrator_told,
        signalled_past_a_holder: false,
        asking: Default::default(),
    };
    let outcome = stop_in_order(
        targets,
        Grace::Given(timeout),
        &Cutoff::default(),
        &mut context,
        &mut Progress::new(audit),
    );
    if let Some(cluster) = &context.cluster {
        cluster.withdraw();
    }
    let mut probe = context.probe;
    let _ = StopRequest::remove(&fleet.lock_dir, MASTER_LOCK_NAME);
    clean_locks(fleet, selection, &mut probe, audit);
    let mut survivors = outcome.survivors;
    // "All stopped" is said only after a fresh look finds nothing of what was asked
    // for still running: a holder that was not told may have started a bot again.
    if context.signalled_past_a_holder {
        std::thread::sleep(RESTART_LOOK_AFTER);
    }
    let again = running_again(fleet, selection, &mut probe, &survivors);
    survivors.extend(again);
    if !survivors.is_empty() {
        audit.line(&format!("survivors: {}", survivors.join(", ")));
        let mut event = DeskEvent::new(
            EventKind::Survived,
            format!("still running after the stop: {}", survivors.join(", ")),
        );
        event.reason = Some(survivors.join(", "));
        event.by = Some(audit.by());
        event.fix = Some(
            "see them with check-procs; stop them as the user who started them (safe-shutdown \
             there, or end their pids), then check again"
                .into(),
        );
        audit.event(event);
    }
    Stopped {
        total,
        survivors,
        probe,
    }
}

/// Tells a running master-launch among `targets` to stop the whole desk: a stop-all
/// request, else its own stop signal, else a request per component (its targets then
/// go through it as their holder). Says how, for its targets' lines.
fn tell_orchestrator(
    fleet: &Fleet,
    targets: &mut [Target],
    probe: &mut ProcessProbe,
    timeout: Duration,
    audit: &Audit,
) -> String {
    let Some(orchestrator) = targets.iter().find_map(|t| match t.via {
        Via::Orchestrator(who) => Some(who),
        _ => None,
    }) else {
        return String::new();
    };
    match StopRequest::new(MASTER_LOCK_NAME, timeout).write(&fleet.lock_dir) {
        Ok(_) => {
            audit.line("asked master-launch to stop the whole desk (stop-all request)");
            "master-launch stops it (stop-all request)".into()
        }
        // A full or read-only lock dir: its own stop signal means the same ordered
        // stop (brains, watchdogs, globals, then it exits), with nothing restarted.
        // Signalling its bots instead would have them restarted as crashes.
        Err(e) => match probe.terminate(orchestrator) {
            Some(asked @ Asked::Terminate | asked @ Asked::CtrlBreak) => {
                audit.warn(&format!(
                    "cannot write the stop-all request ({e}); asked master-launch (pid {}) \
                     by {asked} instead: it stops the desk in order itself",
                    orchestrator.pid
                ));
                format!(
                    "master-launch stops it (asked by {asked}: the stop-all request could not be written)"
                )
            }
            asked => {
                let why = match &asked {
                    Some(Asked::NotPermitted) => find::not_permitted(audit.tool),
                    Some(other) => other.to_string(),
                    None => "it is gone".into(),
                };
                audit.warn(&format!(
                    "cannot write the stop-all request ({e}) nor signal master-launch (pid \
                     {}: {why}); asking it for each component instead",
                    orchestrator.pid
                ));
                for target in targets
                    .iter_mut()
                    .filter(|t| t.via == Via::Orchestrator(orchestrator))
                {
                    target.via = Via::Holder(orchestrator);
                }
                String::new()
            }
        },
    }
}

/// What of the selected components runs after the stop, by a fresh look: each as
/// "NAME (pid N): running again", except those already named among `survivors`.
fn running_again(
    fleet: &Fleet,
    selection: &AccountSelection,
    probe: &mut ProcessProbe,
    survivors: &[String],
) -> Vec<String> {
    let snapshot = DeskSnapshot::take(fleet, probe).unwrap_or_else(|_| {
        DeskSnapshot::build(fleet, Vec::new(), probe.table(), crate::process::now_secs())
    });
    let mut found = Vec::new();
    for view in snapshot
        .components
        .iter()
        .filter(|v| selection.includes(v.component.account.as_deref()))
    {
        for copy in &view.copies {
            let pid = copy.tree.root.pid;
            let name = format!("{} (pid {pid})", view.component.lock_name);
            if !survivors.contains(&name) {
                found.push(format!(
                    "{name}: running again after its stop (started by its holder or someone else)"
                ));
            }
        }
    }
    found
}

/// Removes the lock files of what was asked for, where no holder is left (DESIGN.md
/// rule 4: only under the lock, only files the tools wrote).
pub fn clean_locks(
    fleet: &Fleet,
    selection: &AccountSelection,
    probe: &mut ProcessProbe,
    audit: &Audit,
) {
    let locks = LockDir::for_fleet(fleet);
    let mut names: Vec<String> = fleet
        .components()
        .filter(|c| selection.includes(c.account.as_deref()))
        .map(|c| c.lock_name.clone())
        .collect();
    if selection.is_all() {
        names.push(MASTER_LOCK_NAME.to_string());
    }
    for name in names {
        if let Ok(Removal::Removed(status)) = locks.remove_if_stale(&name, probe) {
            let line = format!(
                "removed {} lock {} ({})",
                status.state.as_str(),
                status.name,
                status.detail
            );
            outln!("{line}");
            audit.line(&line);
        }
    }
}

/// What `master-launch --replace` stops before it starts the desk: everything of the
/// desk that runs on this machine (the whole desk: a running master-launch is told
/// once and keeps the order), and, with `[cluster]`, what another host holds, which
/// is not stopped from here: it stands by, as a plain start does.
#[derive(Debug)]
pub struct ReplacePlan {
    /// To stop here, in stop order.
    pub targets: Vec<Target>,
    /// Held by another host (`[cluster]`): left to it.
    pub elsewhere: Vec<Target>,
    /// Processes an older tool's record names that are not copies: left alone.
    pub left_alone: Vec<String>,
}

impl ReplacePlan {
    pub fn of(snapshot: &DeskSnapshot) -> ReplacePlan {
        let all = AccountSelection::all();
        let (elsewhere, targets) = find::targets(snapshot, &all)
            .into_iter()
            .partition(|t| t.via == Via::Cluster);
        ReplacePlan {
            targets,
            elsewhere,
            left_alone: find::left_alone(snapshot, &all),
        }
    }
}

/// How `master-launch --replace`'s stop part ended: the binary starts the desk only
/// after [`Replace::Clear`] or [`Replace::Stopped`].
#[derive(Debug)]
pub enum Replace {
    /// Nothing of the desk ran here: start at once.
    Clear,
    /// Everything stopped and a fresh look found nothing running: start now.
    Stopped { total: usize },
    /// No terminal to ask on and no `--yes`: nothing was touched.
    NoTerminal,
    /// The answer was not YES: nothing was touched.
    Cancelled,
    /// These still run: nothing may start.
    Survivors(Vec<String>),
}

impl Replace {
    /// The exit code when the desk is not started after this.
    pub fn exit_code(&self) -> Option<ExitCode> {
        match self {
            Replace::Clear | Replace::Stopped { .. } => None,
            Replace::NoTerminal => Some(ExitCode::Usage),
            Replace::Cancelled | Replace::Survivors(_) => Some(ExitCode::Problems),
        }
    }
}

/// The prompt of `master-launch --replace`.
pub const REPLACE_PROMPT: &str = "Type YES to stop these and start the desk";

/// `master-launch --replace` up to the start: shows the desk as check-procs does (the
/// table and its problems), says what another host holds, and when anything of the
/// desk runs here asks (YES, or `yes`; no terminal and no `yes`: refuse, touch
/// nothing), stops it in the safe order with `timeout` each and the audit, and looks
/// again. The caller starts the desk only when [`Replace::exit_code`] is `None`, with
/// its own pre-flight (which cleans stale and corrupt lock files of the desk).
pub fn replace(
    fleet: &Fleet,
    mut probe: ProcessProbe,
    yes: bool,
    timeout: Duration,
    color: bool,
    tool: &'static str,
) -> Result<Replace, dialoguer::Error> {
    let snapshot = look(fleet, &mut probe, tool);
    outln!(
        "{}",
        crate::render::desk_table(&snapshot, None, color).trim_end()
    );
    outln!();
    let plan = ReplacePlan::of(&snapshot);
    for line in &plan.left_alone {
        outln!("{line}");
    }
    for target in &plan.elsewhere {
        outln!(
            "{}: runs on host {}; not stopped from here: it stands by and starts here when \
             that host lets go of it",
            target.name,
            target.host.as_deref().unwrap_or("another host")
        );
    }
    if let Some(why) = cluster_blind(&snapshot) {
        errln!("{tool}: {why}");
    }
    if plan.targets.is_empty() {
        outln!("Nothing of the desk runs here: starting it.");
        return Ok(Replace::Clear);
    }
    outln!("These run and are stopped first, in this order:");
    print_targets(&plan.targets, snapshot.taken_at);
    let audit = Audit::open(&fleet.log_dir.join("safe-shutdown.log"), tool).with_events(fleet);
    audit.line(&format!(
        "{tool} --replace found {} process(es): {}",
        plan.targets.len(),
        summary(&plan.targets)
    ));
    if !yes {
        if !can_ask() {
            audit.line("refused: no terminal to confirm on and no --yes; nothing stopped");
            errln!(
                "{tool}: refusing to stop anything without confirmation: there is no terminal \
                 to ask on; nothing was touched and nothing started. Run it in a console, or \
                 pass --yes."
            );
            return Ok(Replace::NoTerminal);
        }
        if !confirmed(plan.targets.len(), REPLACE_PROMPT)? {
            audit.line("cancelled by the user; nothing stopped");
            outln!("Cancelled. Nothing was stopped and nothing started.");
            return Ok(Replace::Cancelled);
        }
    }
    audit.line(if yes {
        "confirmed by --yes"
    } else {
        "confirmed by the user (YES)"
    });
    let stopped = stop_targets(
        fleet,
        &AccountSelection::all(),
        plan.targets,
        probe,
        timeout,
        &audit,
        tool,
    );
    if !stopped.survivors.is_empty() {
        audit.line("nothing started: something survived the stop");
        return Ok(Replace::Survivors(stopped.survivors));
    }
    audit.line(&format!("all stopped; {tool} starts the desk under itself"));
    outln!("All {} stopped. Starting the desk.", stopped.total);
    Ok(Replace::Stopped {
        total: stopped.total,
    })
}

/// The audit trail: `<log_dir>/safe-shutdown.log`. If it cannot be opened, the stop
/// goes on (the emergency stop never waits on a log); stderr says so with the path, and
/// the exit code says the audit is incomplete.
#[derive(Debug)]
pub struct Audit {
    log: Option<Log>,
    broken: Option<PathBuf>,
    tool: &'static str,
    /// The desk's event log, once [`Audit::with_events`] opened it.
    journal: Option<Log>,
    /// Each component's account, for the events.
    accounts: std::collections::HashMap<String, String>,
}

impl Audit {
    pub fn open(path: &Path, tool: &'static str) -> Audit {
        match Log::open(path, false) {
            Ok(log) => Audit {
                log: Some(log),
                broken: None,
                tool,
                journal: None,
                accounts: Default::default(),
            },
            Err(e) => {
                errln!(
                    "{tool}: cannot open the audit log {}: {e}; stopping anyway, without an audit",
                    path.display()
                );
                Audit {
                    log: None,
                    broken: Some(path.to_path_buf()),
                    tool,
                    journal: None,
                    accounts: Default::default(),
                }
            }
        }
    }

    /// No audit wanted (nothing is being stopped).
    pub fn none(tool: &'static str) -> Audit {
        Audit {
            log: None,
            broken: None,
            tool,
            journal: None,
            accounts: Default::default(),
        }
    }

    /// Also writes events to the desk's event log (`events.jsonl` in the fleet's log
    /// dir, rotated as master-launch rotates it). If it cannot be opened the stop goes
    /// on; the audit log says why.
    #[must_use]
    pub fn with_events(mut self, fleet: &Fleet) -> Audit {
        match Log::open_records(&events_path(&fleet.log_dir)) {
            Ok(journal) => self.journal = Some(journal.keeping(fleet.log_files_kept)),
            Err(e) => self.line(&format!("cannot write the event log: {e}")),
        }
        self.accounts = fleet
            .components()
            .filter_map(|c| Some((c.lock_name.clone(), c.account.clone()?)))
            .collect();
        self
    }

    /// An event in the desk's event log, with the component's account filled in.
    pub fn event(&self, mut event: DeskEvent) {
        let Some(journal) = &self.journal else {
            return;
        };
        if event.account.is_none()
            && let Some(component) = &event.component
        {
            event.account = self.accounts.get(component).cloned();
        }
        if let Ok(line) = serde_json::to_string(&event) {
            journal.record(&line);
        }
    }

    /// An event about a stop target named as the stop engine names it, `NAME (pid
    /// N)` or `NAME` ([`find`]'s targets): the component and pid apart.
    fn target_event(&self, kind: EventKind, target: &str, message: String, reason: String) {
        let (component, pid) = match target.split_once(" (pid ") {
            Some((name, rest)) => (name, rest.trim_end_matches(')').parse().ok()),
            None => (target, None),
        };
        let mut event = DeskEvent::new(kind, message);
        event.component = Some(component.to_string());
        event.pid = pid;
        event.reason = Some(reason);
        event.by = Some(self.by());
        self.event(event);
    }

    /// Who stops: this tool and its process.
    pub fn by(&self) -> String {
        format!("{} (pid {})", self.tool, std::process::id())
    }

    pub fn line(&self, text: &str) {
        if let Some(log) = &self.log {
            log.line("", text);
        }
    }

    /// A line for the audit and for stderr: something did not go as planned.
    pub fn warn(&self, text: &str) {
        errln!("{}: {text}", self.tool);
        self.line(text);
    }

    /// The audit log's path, if it could not be opened.
    pub fn broken(&self) -> Option<&Path> {
        self.broken.as_deref()
    }
}

/// What people see of a stop: on a terminal a bar per stage that names the stage and
/// counts down to forcing; otherwise one plain line when a stage starts and one when
/// it ends. Forced processes are named as they are forced, and everything done goes
/// to the audit log.
#[derive(Debug)]
pub struct Progress<'a> {
    audit: &'a Audit,
    bar: Option<indicatif::ProgressBar>,
    on_terminal: bool,
}

impl<'a> Progress<'a> {
    pub fn new(audit: &'a Audit) -> Progress<'a> {
        Progress {
            audit,
            bar: None,
            on_terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl StopObserver for Progress<'_> {
    fn stage_started(&mut self, stage: Stage, total: usize) {
        if self.on_terminal {
            // Drawn through the printer: a frozen console must not stall the stop.
            let bar =
                indicatif::ProgressBar::with_draw_target(None, crate::printer::stderr().target());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        } else {
            outln!("stopping {} ({total})...", stage.label());
        }
    }

    fn asked(&mut self, name: &str, how: &str) {
        self.audit.line(&format!("{name}: {how}"));
    }

    fn waiting(&mut self, progress: &engine::Progress) {
        if let Some(bar) = &self.bar {
            bar.set_message(progress.to_string());
        }
    }

    fn forced(&mut self, name: &str, how: &str) {
        let line = format!("forcing {name}: it did not stop in time; {how}");
        self.audit.line(&line);
        self.audit
            .target_event(EventKind::Forced, name, line.clone(), how.to_string());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => outln!("{line}"),
        }
    }

    fn gone(&mut self, name: &str, forced: bool) {
        let how = if forced { "forced" } else { "gracefully" };
        self.audit.target_event(
            EventKind::Stopped,
            name,
            format!("{name}: stopped ({how})"),
            how.to_string(),
        );
    }

    fn stage_finished(&mut self, progress: &engine::Progress) {
        let line = format!(
            "{}: {} of {} stopped",
            progress.stage.label(),
            progress.stopped,
            progress.total
        );
        self.audit.line(&line);
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(progress.to_string()),
            None => outln!("{line}"),
        }
    }
}
