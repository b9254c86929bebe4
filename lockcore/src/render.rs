//! Turning a [`DeskSnapshot`] into the table a trader reads and the JSON a script reads
//! (check-procs; `master-launch --replace` shows the same table before it asks).
//!
//! Both are pure functions of the snapshot (and the clock reading inside it), so the
//! layout is pinned by snapshot tests.

use std::fmt::Write as _;

use crate::autostart::AutostartStatus;
use crate::desk::{ClusterSnapshot, printable_host};
use crate::output::human_duration;
use crate::process::ProcessInfo;
use crate::{ComponentState, ComponentView, DeskSnapshot, Fleet, LockStatus, ProblemKind};
use owo_colors::{OwoColorize, Style};
use serde::Serialize;

const COMMAND_WIDTH: usize = 72;

/// One row of the table.
struct Row {
    name: String,
    account: String,
    state: String,
    /// With `[cluster]`: the host its key names, and the lease's time left.
    host: String,
    lease: String,
    pid: String,
    uptime: String,
    /// How long ago it last said `ready`/`alive`/`not-ready` to master-launch.
    alive: String,
    command: String,
    style: Style,
}

/// Which optional columns the table has.
#[derive(Clone, Copy)]
struct Columns {
    /// HOST and LEASE: a desk with `[cluster]`.
    cluster: bool,
    /// ALIVE: some component's last word to master-launch is known.
    alive: bool,
}

impl Row {
    /// The row's cells; HOST and LEASE only for a desk with `[cluster]`, ALIVE only
    /// when a heartbeat age is known (without them the table is what it always was).
    fn cells(&self, columns: Columns) -> Vec<&str> {
        let mut cells = vec![&*self.name, &*self.account, &*self.state];
        if columns.cluster {
            cells.extend([&*self.host, &*self.lease]);
        }
        cells.extend([&*self.pid, &*self.uptime]);
        if columns.alive {
            cells.push(&*self.alive);
        }
        cells.push(&*self.command);
        cells
    }
}

/// check-procs' table: every component, the autostart line, the problems.
pub fn table(snapshot: &DeskSnapshot, autostart: &AutostartStatus, color: bool) -> String {
    desk_table(snapshot, Some(autostart), color)
}

/// The same table for any tool: without `autostart` (not asked: on Windows asking runs
/// `schtasks`), no autostart line. `master-launch --replace` shows it before it asks.
pub fn desk_table(
    snapshot: &DeskSnapshot,
    autostart: Option<&AutostartStatus>,
    color: bool,
) -> String {
    let mut rows = Vec::new();
    if let Some(master) = &snapshot.master {
        rows.push(lock_row(master, snapshot, "(orchestrator)"));
    }
    // etcd unread: who holds what is unknown, not "nobody".
    let unknown = snapshot.cluster.as_ref().is_some_and(|c| c.error.is_some());
    rows.extend(
        snapshot
            .components
            .iter()
            .map(|v| component_row(v, snapshot, unknown)),
    );
    rows.extend(
        snapshot
            .unknown_locks
            .iter()
            .map(|l| lock_row(l, snapshot, "(not in fleet.toml)")),
    );
    let columns = Columns {
        cluster: snapshot.cluster.is_some(),
        alive: snapshot
            .components
            .iter()
            .any(|v| v.heartbeat_age(snapshot.taken_at_exact).is_some()),
    };
    let mut headers = vec!["COMPONENT", "ACCOUNT", "STATE"];
    if columns.cluster {
        headers.extend(["HOST", "LEASE"]);
    }
    headers.extend(["PID", "UPTIME"]);
    if columns.alive {
        headers.push("ALIVE");
    }
    headers.push("COMMAND");
    let mut out = String::new();
    let widths = column_widths(&headers, rows.iter().map(|r| r.cells(columns)));
    let header_line = pad_line(&headers, &widths);
    let _ = writeln!(out, "{}", paint(&header_line, Style::new().bold(), color));
    for row in &rows {
        let _ = writeln!(
            out,
            "{}",
            paint(&pad_line(&row.cells(columns), &widths), row.style, color)
        );
    }
    out.push('\n');
    if let Some(autostart) = autostart {
        let _ = writeln!(out, "{}\n", autostart_line(autostart));
    }
    if let Some(cluster) = &snapshot.cluster {
        let _ = writeln!(out, "{}\n", cluster_line(cluster));
    }
    if snapshot.problems.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            paint("No problems found.", Style::new().green(), color)
        );
        return out;
    }
    let count = snapshot.problems.len();
    let title = format!("{count} problem{}:", if count == 1 { "" } else { "s" });
    let _ = writeln!(out, "{}", paint(&title, Style::new().bold(), color));
    for problem in &snapshot.problems {
        let label = problem.kind.as_str().to_uppercase();
        let line = format!("  {label:<13} {}", problem.message);
        let _ = writeln!(out, "{}", paint(&line, problem_style(problem.kind), color));
    }
    out
}

/// The line under the table for a desk with `[cluster]`: this machine's name in the
/// cluster, and what etcd holds (or that it cannot be read).
fn cluster_line(cluster: &ClusterSnapshot) -> String {
    let endpoints = cluster.endpoints.join(", ");
    match &cluster.error {
        None => {
            let count = cluster.entries.len();
            format!(
                "Cluster: this machine is \"{}\"; etcd ({endpoints}) holds {count} lock key{} \
                 under {}",
                cluster.host,
                if count == 1 { "" } else { "s" },
                cluster.prefix
            )
        }
        Some(_) => format!(
            "Cluster: this machine is \"{}\"; etcd ({endpoints}) cannot be read (see the \
             problems below): the table shows this machine only",
            cluster.host
        ),
    }
}

/// The one line under the table: does this desk start by itself at logon/boot?
fn autostart_line(status: &AutostartStatus) -> String {
    if status.installed {
        format!(
            "Starts by itself: yes, {} \"{}\" ({})",
            status.scheduler.describe(),
            status.name,
            status.how
        )
    } else {
        format!("Starts by itself: no ({})", status.how)
    }
}

fn column_widths<'a>(headers: &[&str], rows: impl Iterator<Item = Vec<&'a str>>) -> Vec<usize> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for cells in rows {
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

fn pad_line(cells: &[&str], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            let _ = write!(line, "{cell:<width$}  ");
        }
    }
    line.trim_end().to_string()
}

fn paint(text: &str, style: Style, color: bool) -> String {
    if color {
        text.style(style).to_string()
    } else {
        text.to_string()
    }
}

fn problem_style(kind: ProblemKind) -> Style {
    match kind {
        ProblemKind::Duplicate
        | ProblemKind::Unlocked
        | ProblemKind::Unguarded
        | ProblemKind::Hung
        | ProblemKind::NotReady
        | ProblemKind::ClusterUnreachable => Style::new().red().bold(),
        ProblemKind::ProcessGone | ProblemKind::Legacy => Style::new().yellow().bold(),
        _ => Style::new().yellow(),
    }
}

/// What the STATE column says for a component: alarms in capitals.
fn state_cell(state: ComponentState, alarm: bool) -> String {
    if alarm {
        state.as_str().to_uppercase()
    } else {
        state.as_str().to_string()
    }
}

/// How long ago a component last spoke to master-launch: "0.4s ago", "12s ago",
/// "3m 05s ago".
fn age_cell(age: f64) -> String {
    let age = age_json(age);
    if age < 10.0 {
        format!("{age:.1}s ago")
    } else {
        format!("{} ago", human_duration(age as u64))
    }
}

/// A heartbeat age as the JSON gives it: seconds, to 0.1 s.
fn age_json(age: f64) -> f64 {
    (age * 10.0).round() / 10.0
}

/// The process to show for a component: the locked one, else the first copy.
fn shown_process(view: &ComponentView) -> Option<&ProcessInfo> {
    view.managed
        .as_ref()
        .or_else(|| view.copies.first().map(|c| &c.tree.root))
}

fn component_row(view: &ComponentView, snapshot: &DeskSnapshot, cluster_unknown: bool) -> Row {
    let now = snapshot.taken_at;
    let state = view.state();
    let alarm = view.is_alarm();
    // It runs but does not do its work yet (or any more): its reason says why.
    let readiness = matches!(
        state,
        ComponentState::Starting | ComponentState::NotReady | ComponentState::Hung
    );
    let process = shown_process(view);
    let pid = if view.copies.len() > 1 {
        view.copies
            .iter()
            .map(|c| c.tree.root.pid.to_string())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        process.map_or("-".to_string(), |p| p.pid.to_string())
    };
    // Nothing runs here: where it runs, or the orchestrator's reason, says more than
    // the configured command.
    let command = match (process, view.reason()) {
        (Some(_), Some(reason)) if readiness => reason.to_string(),
        (Some(p), _) => p.cmd.join(" "),
        (None, _) if state == ComponentState::Elsewhere => elsewhere_sentence(view),
        (None, Some(reason)) => reason.to_string(),
        (None, None) => view.component.command.join(" "),
    };
    let style = match state {
        _ if alarm => Style::new().red().bold(),
        ComponentState::Running => Style::new().green(),
        ComponentState::Elsewhere => Style::new().cyan(),
        ComponentState::Stopped | ComponentState::Disabled | ComponentState::NotStarted => {
            Style::new().dimmed()
        }
        _ => Style::new().yellow(),
    };
    Row {
        name: view.component.lock_name.clone(),
        account: view.component.account.clone().unwrap_or_else(|| "-".into()),
        state: state_cell(state, alarm),
        host: match key_host(view) {
            Some(host) => printable_host(host),
            None if cluster_unknown => "?".into(),
            None => "-".into(),
        },
        lease: match lease_left(view) {
            Some(left) => human_duration(left),
            None if cluster_unknown => "?".into(),
            None => "-".into(),
        },
        pid,
        uptime: process.map_or("-".into(), |p| uptime(now, p.start_time)),
        alive: view
            .heartbeat_age(snapshot.taken_at_exact)
            .map_or("-".into(), age_cell),
        command: shorten(&command),
        style,
    }
}

/// The host its cluster key names, if it has a key that names one.
fn key_host(view: &ComponentView) -> Option<&str> {
    view.cluster.as_ref()?.holder.host.as_deref()
}

/// Whole seconds left on its key's lease, as the etcd leader counts them.
fn lease_left(view: &ComponentView) -> Option<u64> {
    view.cluster.as_ref()?.ttl_left.map(|left| left.as_secs())
}

/// Where a component that runs on another host runs: "runs on host A, pid 4242
/// there, lease 7s left".
fn elsewhere_sentence(view: &ComponentView) -> String {
    let host = key_host(view).map_or_else(
        || "another host (its key names none)".to_string(),
        |host| format!("host {}", printable_host(host)),
    );
    let pid = view
        .cluster
        .as_ref()
        .and_then(|entry| entry.child())
        .map(|child| format!(", pid {} there", child.pid))
        .unwrap_or_default();
    let lease = lease_left(view).map_or_else(
        || "its lease is ending".to_string(),
        |left| format!("lease {} left", human_duration(left)),
    );
    format!("runs on {host}{pid}, {lease}")
}

fn lock_row(lock: &LockStatus, snapshot: &DeskSnapshot, note: &str) -> Row {
    let record = lock.record.as_ref();
    let process = record.and_then(|r| snapshot.table.get(r.pid));
    let command = match (process, record) {
        (Some(p), _) => p.cmd.join(" "),
        (None, Some(r)) => r.command.join(" "),
        (None, None) => String::new(),
    };
    Row {
        name: lock.name.clone(),
        account: record
            .and_then(|r| r.account.clone())
            .unwrap_or_else(|| "-".into()),
        state: lock.state.as_str().to_string(),
        // The orchestrator's lock and unknown files are this machine's only.
        host: "-".into(),
        lease: "-".into(),
        pid: record.map_or("-".into(), |r| r.pid.to_string()),
        uptime: process.map_or("-".into(), |p| uptime(snapshot.taken_at, p.start_time)),
        alive: "-".into(),
        command: shorten(format!("{note} {command}").trim_end()),
        style: if lock.state.is_held() {
            Style::new()
        } else {
            Style::new().yellow()
        },
    }
}

fn uptime(now: u64, start: u64) -> String {
    human_duration(now.saturating_sub(start))
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= COMMAND_WIDTH {
        return text.to_string();
    }
    let kept: String = text.chars().take(COMMAND_WIDTH - 3).collect();
    format!("{kept}...")
}

/// The `--json` document. Field names are a contract: see docs/reference.md.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub version: u32,
    pub config: String,
    pub lock_dir: String,
    pub taken_at: u64,
    pub healthy: bool,
    pub components: Vec<ComponentJson<'a>>,
    pub locks: Vec<&'a LockStatus>,
    pub processes: Vec<ProcessJson<'a>>,
    pub problems: &'a [crate::Problem],
    pub autostart: &'a AutostartStatus,
}

#[derive(Debug, Serialize)]
pub struct ComponentJson<'a> {
    pub name: &'a str,
    pub account: Option<&'a str>,
    pub role: crate::Role,
    pub enabled: bool,
    pub state: ComponentState,
    /// What the running orchestrator says of it, in plain words.
    pub reason: Option<&'a str>,
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub uptime_secs: Option<u64>,
    pub holder_pid: Option<u32>,
    pub holder_alive: bool,
    /// With `[cluster]`: the host its key names; always present (null without).
    pub host: Option<&'a str>,
    /// With `[cluster]`: whole seconds left on its key's lease.
    pub lease_ttl_left: Option<u64>,
    /// How often it must say `alive` once ready.
    pub heartbeat_secs: Option<u64>,
    /// Seconds (to 0.1 s) since its last word to master-launch; never negative.
    pub heartbeat_age_secs: Option<f64>,
    pub copies: usize,
    pub command: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct ProcessJson<'a> {
    pub name: &'a str,
    pub account: Option<&'a str>,
    pub pid: u32,
    pub pids: Vec<u32>,
    pub start_time: u64,
    pub locked: bool,
    pub command: &'a [String],
}

pub fn report<'a>(
    snapshot: &'a DeskSnapshot,
    fleet: &Fleet,
    autostart: &'a AutostartStatus,
) -> Report<'a> {
    let components = snapshot
        .components
        .iter()
        .map(|view| {
            let process = shown_process(view);
            let record = view.lock.as_ref().and_then(|l| l.record.as_ref());
            ComponentJson {
                name: &view.component.lock_name,
                account: view.component.account.as_deref(),
                role: view.component.role,
                enabled: view.component.enabled,
                state: view.state(),
                reason: view.reason(),
                pid: process.map(|p| p.pid),
                start_time: process.map(|p| p.start_time),
                uptime_secs: process.map(|p| snapshot.taken_at.saturating_sub(p.start_time)),
                holder_pid: record.and_then(|r| r.holder_pid),
                holder_alive: view.holder_alive,
                host: key_host(view),
                lease_ttl_left: lease_left(view),
                heartbeat_secs: view.heartbeat_secs(),
                heartbeat_age_secs: view.heartbeat_age(snapshot.taken_at_exact).map(age_json),
                copies: view.copies.len(),
                command: process.map_or(&view.component.command, |p| &p.cmd),
            }
        })
        .collect();
    let locks = snapshot
        .master
        .iter()
        .chain(snapshot.components.iter().filter_map(|v| v.lock.as_ref()))
        .chain(&snapshot.unknown_locks)
        .collect();
    let processes = snapshot
        .components
        .iter()
        .flat_map(|view| {
            view.copies.iter().map(move |copy| ProcessJson {
                name: &view.component.lock_name,
                account: view.component.account.as_deref(),
                pid: copy.tree.root.pid,
                pids: copy.tree.pids().collect(),
                start_time: copy.tree.root.start_time,
                locked: copy.locked,
                command: &copy.tree.root.cmd,
            })
        })
        .collect();
    Report {
        version: 1,
        config: fleet.path.display().to_string(),
        lock_dir: fleet.lock_dir.display().to_string(),
        taken_at: snapshot.taken_at,
        healthy: snapshot.is_healthy(),
        components,
        locks,
        processes,
        problems: &snapshot.problems,
        autostart,
    }
}

#[cfg(test)]
mod tests {
    //! Golden output: the table (colour off) and the JSON document for a desk with one
    //! of everything. A layout change shows up here as a snapshot diff to review.

    use std::path::{Path, PathBuf};

    use crate::autostart::{AutostartStatus, Scheduler};
    use crate::process::{ProcessInfo, ProcessTable};
    use crate::{DeskSnapshot, Fleet, LockRecord, LockState, LockStatus};

    const NOW: u64 = 1_790_000_000;

    const FLEET: &str = r#"
[vars]
python = 'C:\desk\.venv\Scripts\python.exe'

[[global]]
name = "quantum_server"
command = ["{python}", "quantum_server.py"]

[[account]]
name = "ATLAS"
login = "212000584"
brain = ["{python}", "BRAIN_ATLAS.py"]
watchdog = ["{python}", "STOPLOSS_WATCHDOG_V2.py", "--account", "ATLAS"]

[[account]]
name = "GL_3"
login = "3000123"
brain = ["{python}", "BRAIN_GL_3.py"]
watchdog = ["{python}", "STOPLOSS_WATCHDOG_V2.py", "--account", "GL_3"]

[[account]]
name = "FTMO"
login = "5550001"
enabled = false
brain = ["{python}", "BRAIN_FTMO.py"]
watchdog = ["{python}", "STOPLOSS_WATCHDOG_V2.py", "--account", "FTMO"]
"#;

    fn process(pid: u32, parent: u32, started_ago: u64, args: &[&str]) -> ProcessInfo {
        let mut cmd = vec![r"C:\desk\.venv\Scripts\python.exe".to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: NOW - started_ago,
            name: "python.exe".into(),
            cmd,
        }
    }

    fn lock(
        name: &str,
        state: LockState,
        pid: u32,
        holder: Option<u32>,
        started_ago: u64,
    ) -> LockStatus {
        LockStatus {
            name: name.into(),
            path: PathBuf::from(format!(".locks/{name}.lock")),
            state,
            record: Some(LockRecord {
                pid,
                name: name.into(),
                account: name.split_once('_').map(|(_, a)| a.to_string()),
                timestamp: Some("2026-09-21T14:13:20.000000".into()),
                pid_start: holder.map(|_| NOW - started_ago),
                holder_pid: holder,
                holder_start: holder.map(|_| NOW - 90_000),
                host: holder.map(|_| "DESK-01".into()),
                command: vec!["python.exe".into(), format!("{name}.py")],
            }),
            detail: match state {
                LockState::Running => "an OS lock is held on it".into(),
                LockState::Stale => format!("no process holds it, last holder pid {pid}"),
                LockState::Legacy => {
                    format!("older tool's record; pid {pid} is alive and no OS lock guards it")
                }
                LockState::Corrupt => "the record is not valid: EOF while parsing".into(),
            },
        }
    }

    /// quantum_server and ATLAS healthy under master-launch (pid 100); GL_3's brain
    /// running three times (one locked, two by hand, one of them a venv launcher
    /// tree); GL_3's watchdog stale; FTMO disabled; plus a legacy and a corrupt file.
    fn snapshot() -> (Fleet, DeskSnapshot) {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            ProcessInfo {
                pid: 100,
                parent: Some(1),
                start_time: NOW - 90_000,
                name: "master-launch.exe".into(),
                cmd: vec!["master-launch.exe".into()],
            },
            process(200, 100, 90_000, &["quantum_server.py"]),
            process(
                300,
                100,
                89_000,
                &["STOPLOSS_WATCHDOG_V2.py", "--account", "ATLAS"],
            ),
            process(301, 100, 88_990, &["BRAIN_ATLAS.py"]),
            process(400, 100, 3_700, &["BRAIN_GL_3.py"]),
            process(500, 1, 125, &["BRAIN_GL_3.py"]),
            process(600, 1, 42, &["BRAIN_GL_3.py"]),
            process(601, 600, 41, &["BRAIN_GL_3.py"]),
            process(700, 1, 7_200, &["old_bot.py"]),
        ]);
        let mut master = lock("MASTER_LAUNCH", LockState::Running, 100, Some(100), 90_000);
        if let Some(record) = master.record.as_mut() {
            record.account = None;
            record.command = vec!["master-launch.exe".into()];
        }
        let locks = vec![
            master,
            lock("quantum_server", LockState::Running, 200, Some(100), 90_000),
            lock("WATCHDOG_ATLAS", LockState::Running, 300, Some(100), 89_000),
            lock("BRAIN_ATLAS", LockState::Running, 301, Some(100), 88_990),
            lock("BRAIN_GL_3", LockState::Running, 400, Some(100), 3_700),
            lock("WATCHDOG_GL_3", LockState::Stale, 450, Some(99), 0),
            lock("BRAIN_OLD", LockState::Legacy, 700, None, 0),
            LockStatus {
                name: "WATCHDOG_OLD".into(),
                path: PathBuf::from(".locks/WATCHDOG_OLD.lock"),
                state: LockState::Corrupt,
                record: None,
                detail: "the file is empty".into(),
            },
        ];
        let snapshot = DeskSnapshot::build(&fleet, locks, table, NOW);
        (fleet, snapshot)
    }

    /// The desk installed as a Task Scheduler task (what a Windows desk shows).
    fn installed() -> AutostartStatus {
        AutostartStatus {
            installed: true,
            name: r"DeskTools\MASTER_LAUNCH C-desk 5c0ffee5".into(),
            scheduler: Scheduler::TaskScheduler,
            how: "registered; see it in Task Scheduler under DeskTools".into(),
        }
    }

    #[test]
    fn table_layout() {
        let (_, snapshot) = snapshot();
        insta::assert_snapshot!(super::table(&snapshot, &installed(), false));
    }

    #[test]
    fn a_desk_not_installed_says_how_to_install_it() {
        let (_, snapshot) = snapshot();
        let status = AutostartStatus {
            installed: false,
            name: "desk-tools-srv-desk-5c0ffee5.service".into(),
            scheduler: Scheduler::SystemdUser,
            how: "no unit file /x.service; `master-launch install` adds it".into(),
        };
        let table = super::table(&snapshot, &status, false);
        assert!(
            table.contains(
                "\nStarts by itself: no (no unit file /x.service; `master-launch install` adds it)\n\n"
            ),
            "{table}"
        );
    }

    #[test]
    fn json_document() {
        let (fleet, snapshot) = snapshot();
        let autostart = installed();
        let mut report = super::report(&snapshot, &fleet, &autostart);
        // The same snapshot on Windows, where paths join with `\`.
        report.lock_dir = report.lock_dir.replace('\\', "/");
        insta::assert_json_snapshot!(report);
    }

    #[test]
    fn colour_is_only_added_when_asked() {
        let (_, snapshot) = snapshot();
        assert!(!super::table(&snapshot, &installed(), false).contains('\x1b'));
        assert!(super::table(&snapshot, &installed(), true).contains('\x1b'));
    }
}

#[cfg(test)]
mod supervised_tests {
    //! Golden output for what a running orchestrator says: a given-up brain, a
    //! watchdog backing off, a brain held back, an account stopped on request, and an
    //! account left out by `--only`.

    use std::path::{Path, PathBuf};

    use crate::autostart::{AutostartStatus, Scheduler};
    use crate::control::{DeskState, Supervised, Supervision};
    use crate::process::{ProcessIdentity, ProcessInfo, ProcessTable};
    use crate::{DeskSnapshot, Fleet, LockRecord, LockState, LockStatus};

    const NOW: u64 = 1_790_000_000;

    const FLEET: &str = r#"
[[global]]
name = "quantum_server"
command = ["python", "quantum_server.py"]

[[account]]
name = "ATLAS"
brain = ["python", "BRAIN_ATLAS.py"]
watchdog = ["python", "WATCHDOG_ATLAS.py"]

[[account]]
name = "GL_3"
brain = ["python", "BRAIN_GL_3.py"]
watchdog = ["python", "WATCHDOG_GL_3.py"]

[[account]]
name = "BG"
brain = ["python", "BRAIN_BG.py"]
watchdog = ["python", "WATCHDOG_BG.py"]

[[account]]
name = "SPARE"
brain = ["python", "BRAIN_SPARE.py"]
watchdog = ["python", "WATCHDOG_SPARE.py"]
"#;

    fn held(name: &str, pid: u32) -> LockStatus {
        LockStatus {
            name: name.into(),
            path: PathBuf::from(format!(".locks/{name}.lock")),
            state: LockState::Running,
            record: Some(LockRecord {
                pid,
                name: name.into(),
                account: None,
                timestamp: Some("2026-09-21T14:13:20.000000".into()),
                pid_start: Some(NOW - 600),
                holder_pid: Some(100),
                holder_start: Some(NOW - 600),
                host: Some("DESK-01".into()),
                command: vec![],
            }),
            detail: "an OS lock is held on it".into(),
        }
    }

    fn python(pid: u32, script: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(100),
            start_time: NOW - 600,
            name: "python".into(),
            cmd: vec!["python".into(), script.into()],
        }
    }

    fn supervised(name: &str, state: Supervision, reason: &str) -> Supervised {
        Supervised {
            alive_at: None,
            heartbeat_secs: None,
            name: name.into(),
            state,
            pid: None,
            since: NOW as f64,
            reason: reason.into(),
            answers: vec![],
        }
    }

    fn snapshot() -> (Fleet, DeskSnapshot) {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            ProcessInfo {
                pid: 100,
                parent: Some(1),
                start_time: NOW - 600,
                name: "master-launch".into(),
                cmd: vec!["master-launch".into()],
            },
            python(200, "quantum_server.py"),
            python(300, "WATCHDOG_ATLAS.py"),
        ]);
        let mut master = held("MASTER_LAUNCH", 100);
        if let Some(record) = master.record.as_mut() {
            record.pid_start = Some(NOW - 600);
        }
        let locks = vec![
            master,
            held("quantum_server", 200),
            held("WATCHDOG_ATLAS", 300),
            // Backing off: the orchestrator keeps the lock, no child runs.
            held("WATCHDOG_GL_3", 100),
        ];
        let running = |name: &str, pid| Supervised {
            pid: Some(pid),
            ..supervised(name, Supervision::Running, &format!("running, pid {pid}"))
        };
        let state = DeskState {
            orchestrator: ProcessIdentity {
                pid: 100,
                start_time: NOW - 600,
            },
            updated_at: NOW as f64,
            components: vec![
                running("quantum_server", 200),
                running("WATCHDOG_ATLAS", 300),
                supervised(
                    "BRAIN_ATLAS",
                    Supervision::GivenUp,
                    "given up after 3 failure(s) within 60 s; last: code 3, at 14:02:11",
                ),
                supervised(
                    "WATCHDOG_GL_3",
                    Supervision::Restarting,
                    "exited (signal 9); restart 2 in 0.5 s, at 14:05:00",
                ),
                supervised(
                    "BRAIN_GL_3",
                    Supervision::Starting,
                    "waiting for its watchdog WATCHDOG_GL_3 to run",
                ),
                supervised(
                    "WATCHDOG_BG",
                    Supervision::Stopped,
                    "stopped on request by pid 4242 at 14:00:01",
                ),
                supervised(
                    "BRAIN_BG",
                    Supervision::Stopped,
                    "stopped on request by pid 4242 at 14:00:00",
                ),
                supervised(
                    "WATCHDOG_SPARE",
                    Supervision::GivenUp,
                    "given up after 1 failure(s) within 60 s; last: cannot start python: No such file or directory (os error 2), at 14:01:00",
                ),
                supervised(
                    "BRAIN_SPARE",
                    Supervision::Blocked,
                    "held back: its watchdog WATCHDOG_SPARE is given_up",
                ),
            ],
        };
        let snapshot = DeskSnapshot::build_supervised(&fleet, locks, table, NOW, Some(state));
        (fleet, snapshot)
    }

    fn not_installed() -> AutostartStatus {
        AutostartStatus {
            installed: false,
            name: "x".into(),
            scheduler: Scheduler::SystemdUser,
            how: "not installed".into(),
        }
    }

    #[test]
    fn supervised_table_layout() {
        let (_, snapshot) = snapshot();
        insta::assert_snapshot!(super::table(&snapshot, &not_installed(), false));
    }

    /// Readiness and heartbeats: quantum_server heard from 0.4 s ago; ATLAS's watchdog
    /// runs but is not ready yet (its brain waits); GL_3's said `not-ready` (its brain
    /// held back); BG's missed its heartbeat (hung, being stopped; its brain held
    /// back); SPARE's clock is ahead of ours (age 0, never negative) and its brain
    /// spoke last 75 s ago.
    fn readiness_snapshot() -> (Fleet, DeskSnapshot) {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            ProcessInfo {
                pid: 100,
                parent: Some(1),
                start_time: NOW - 600,
                name: "master-launch".into(),
                cmd: vec!["master-launch".into()],
            },
            python(200, "quantum_server.py"),
            python(300, "WATCHDOG_ATLAS.py"),
            python(302, "WATCHDOG_GL_3.py"),
            python(304, "WATCHDOG_BG.py"),
            python(306, "WATCHDOG_SPARE.py"),
            python(307, "BRAIN_SPARE.py"),
        ]);
        let mut master = held("MASTER_LAUNCH", 100);
        if let Some(record) = master.record.as_mut() {
            record.pid_start = Some(NOW - 600);
        }
        let locks = vec![
            master,
            held("quantum_server", 200),
            held("WATCHDOG_ATLAS", 300),
            held("WATCHDOG_GL_3", 302),
            held("WATCHDOG_BG", 304),
            held("WATCHDOG_SPARE", 306),
            held("BRAIN_SPARE", 307),
        ];
        let speaking = |name: &str, state, pid, reason: &str, ago: Option<f64>, every| Supervised {
            pid: Some(pid),
            alive_at: ago.map(|ago| NOW as f64 - ago),
            heartbeat_secs: every,
            ..supervised(name, state, reason)
        };
        let state = DeskState {
            orchestrator: ProcessIdentity {
                pid: 100,
                start_time: NOW - 600,
            },
            updated_at: NOW as f64,
            components: vec![
                speaking(
                    "quantum_server",
                    Supervision::Running,
                    200,
                    "running, pid 200",
                    Some(0.4),
                    Some(1),
                ),
                speaking(
                    "WATCHDOG_ATLAS",
                    Supervision::Starting,
                    300,
                    "started, pid 300; not ready yet (it has 60 s to say ready)",
                    None,
                    Some(5),
                ),
                supervised(
                    "BRAIN_ATLAS",
                    Supervision::Starting,
                    "waiting for its watchdog WATCHDOG_ATLAS to be ready",
                ),
                speaking(
                    "WATCHDOG_GL_3",
                    Supervision::NotReady,
                    302,
                    "not ready: terminal lost",
                    Some(2.25),
                    Some(5),
                ),
                supervised(
                    "BRAIN_GL_3",
                    Supervision::Blocked,
                    "held back: its watchdog WATCHDOG_GL_3 is not ready (terminal lost)",
                ),
                speaking(
                    "WATCHDOG_BG",
                    Supervision::Hung,
                    304,
                    "missed its heartbeat (every 5 s); stopping it, then a restart",
                    Some(7.3),
                    Some(5),
                ),
                supervised(
                    "BRAIN_BG",
                    Supervision::Blocked,
                    "held back: its watchdog WATCHDOG_BG is hung (missed its heartbeat)",
                ),
                speaking(
                    "WATCHDOG_SPARE",
                    Supervision::Running,
                    306,
                    "running, pid 306",
                    Some(-0.5),
                    Some(5),
                ),
                speaking(
                    "BRAIN_SPARE",
                    Supervision::Running,
                    307,
                    "running, pid 307",
                    Some(75.0),
                    None,
                ),
            ],
        };
        let snapshot = DeskSnapshot::build_supervised(&fleet, locks, table, NOW, Some(state));
        (fleet, snapshot)
    }

    #[test]
    fn readiness_table_layout() {
        let (_, snapshot) = readiness_snapshot();
        insta::assert_snapshot!(super::table(&snapshot, &not_installed(), false));
    }

    #[test]
    fn readiness_json_components_and_problems() {
        let (fleet, snapshot) = readiness_snapshot();
        let autostart = not_installed();
        let report = super::report(&snapshot, &fleet, &autostart);
        let json = serde_json::to_value(&report).unwrap();
        insta::assert_json_snapshot!(serde_json::json!({
            "healthy": json["healthy"],
            "components": json["components"],
            "problems": json["problems"],
        }));
    }

    #[test]
    fn supervised_json_components_and_problems() {
        let (fleet, snapshot) = snapshot();
        let autostart = not_installed();
        let report = super::report(&snapshot, &fleet, &autostart);
        let json = serde_json::to_value(&report).unwrap();
        insta::assert_json_snapshot!(serde_json::json!({
            "healthy": json["healthy"],
            "components": json["components"],
            "problems": json["problems"],
        }));
    }

    /// A frozen orchestrator (SIGSTOP) still publishes "running" for a watchdog that
    /// crashed meanwhile, and still holds its lock: the state comes from what runs
    /// (`process_gone`, no pid, no stale reason), and its brain, still trading, is
    /// `unguarded` (DESIGN.md rule 13).
    #[test]
    fn a_frozen_orchestrators_running_view_of_a_crashed_watchdog_is_not_running() {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            ProcessInfo {
                pid: 100,
                parent: Some(1),
                start_time: NOW - 600,
                name: "master-launch".into(),
                cmd: vec!["master-launch".into()],
            },
            python(301, "BRAIN_ATLAS.py"),
        ]);
        let mut master = held("MASTER_LAUNCH", 100);
        if let Some(record) = master.record.as_mut() {
            record.pid_start = Some(NOW - 600);
        }
        // Pid 300, the watchdog, is gone (a zombie of the frozen orchestrator).
        let locks = vec![
            master,
            held("WATCHDOG_ATLAS", 300),
            held("BRAIN_ATLAS", 301),
        ];
        let running = |name: &str, pid| Supervised {
            pid: Some(pid),
            ..supervised(name, Supervision::Running, &format!("running, pid {pid}"))
        };
        let state = DeskState {
            orchestrator: ProcessIdentity {
                pid: 100,
                start_time: NOW - 600,
            },
            updated_at: NOW as f64,
            components: vec![running("WATCHDOG_ATLAS", 300), running("BRAIN_ATLAS", 301)],
        };
        let snapshot = DeskSnapshot::build_supervised(&fleet, locks, table, NOW, Some(state));
        let json =
            serde_json::to_value(super::report(&snapshot, &fleet, &not_installed())).unwrap();
        let component = |name: &str| {
            json["components"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .cloned()
                .unwrap()
        };
        let watchdog = component("WATCHDOG_ATLAS");
        assert_eq!(watchdog["state"], "process_gone", "{watchdog}");
        assert!(watchdog["pid"].is_null(), "{watchdog}");
        assert!(watchdog["reason"].is_null(), "{watchdog}");
        let brain = component("BRAIN_ATLAS");
        assert_eq!(brain["state"], "unguarded", "{brain}");
        assert_eq!(brain["pid"], 301, "{brain}");
        let kinds: Vec<(&str, &str)> = json["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["kind"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        assert!(kinds.contains(&("unguarded", "BRAIN_ATLAS")), "{kinds:?}");
        assert!(
            kinds.contains(&("process_gone", "WATCHDOG_ATLAS")),
            "{kinds:?}"
        );
        // No component anywhere is "running" without a pid.
        for c in json["components"].as_array().unwrap() {
            assert!(c["state"] != "running" || !c["pid"].is_null(), "{c}");
        }
        let table = super::table(&snapshot, &not_installed(), false);
        assert!(
            table.contains("UNGUARDED     BRAIN_ATLAS runs (pid 301)"),
            "{table}"
        );
    }
}

#[cfg(test)]
mod cluster_tests {
    //! Golden output for a desk with `[cluster]`, seen from host B: components another
    //! host holds (one of its bots visible here, as when both "hosts" share a machine),
    //! one running here, one with no key, a copy started by hand here; and the same
    //! desk when etcd cannot be read.

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use crate::autostart::{AutostartStatus, Scheduler};
    use crate::cluster::{ClusterEntry, ClusterHolder};
    use crate::desk::ClusterSnapshot;
    use crate::process::{ProcessInfo, ProcessTable};
    use crate::{DeskSnapshot, Fleet, LockRecord, LockState, LockStatus};

    const NOW: u64 = 1_790_000_000;

    const FLEET: &str = r#"
[[global]]
name = "quantum_server"
command = ["python", "quantum_server.py"]

[[account]]
name = "ATLAS"
brain = ["python", "BRAIN_ATLAS.py"]
watchdog = ["python", "WATCHDOG_ATLAS.py"]

[[account]]
name = "GL_3"
brain = ["python", "BRAIN_GL_3.py"]
watchdog = ["python", "WATCHDOG_GL_3.py"]

[cluster]
endpoints = ["http://10.0.0.5:2379"]
host = "B"
"#;

    fn python(pid: u32, parent: u32, script: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent: Some(parent),
            start_time: NOW - 600,
            name: "python".into(),
            cmd: vec!["python".into(), script.into()],
        }
    }

    fn record(name: &str, pid: u32, holder: u32) -> LockRecord {
        LockRecord {
            pid,
            name: name.into(),
            account: None,
            timestamp: Some("2026-09-21T14:13:20.000000".into()),
            pid_start: Some(NOW - 600),
            holder_pid: Some(holder),
            holder_start: Some(NOW - 600),
            host: None,
            command: vec!["python".into(), format!("{name}.py")],
        }
    }

    fn entry(name: &str, host: &str, pid: u32, holder: u32, ttl: Option<u64>) -> ClusterEntry {
        ClusterEntry {
            name: name.into(),
            holder: ClusterHolder {
                host: Some(host.into()),
                value: String::new(),
                lease: 7_587_000_000_000_000_000,
                create_revision: 12,
            },
            record: Some(record(name, pid, holder)),
            ttl_left: ttl.map(Duration::from_secs),
        }
    }

    /// Host B runs WATCHDOG_ATLAS under its own lock (master-launch pid 100); host A
    /// (master-launch pid 900) runs quantum_server (its bot, pid 901, visible here)
    /// and BRAIN_ATLAS (pid 4242 on A); WATCHDOG_GL_3 has no key and nothing runs;
    /// BRAIN_GL_3's key is A's but a copy started by hand runs here (pid 500).
    fn snapshot(error: Option<&str>) -> (Fleet, DeskSnapshot) {
        let fleet = Fleet::from_toml(Path::new("fleet.toml"), FLEET).unwrap();
        let table = ProcessTable::from_processes([
            ProcessInfo {
                pid: 100,
                parent: Some(1),
                start_time: NOW - 600,
                name: "master-launch".into(),
                cmd: vec!["master-launch".into()],
            },
            python(300, 100, "WATCHDOG_ATLAS.py"),
            ProcessInfo {
                pid: 900,
                parent: Some(1),
                start_time: NOW - 600,
                name: "master-launch".into(),
                cmd: vec!["master-launch".into()],
            },
            python(901, 900, "quantum_server.py"),
            python(500, 1, "BRAIN_GL_3.py"),
        ]);
        let locks = vec![LockStatus {
            name: "WATCHDOG_ATLAS".into(),
            path: PathBuf::from(".locks/WATCHDOG_ATLAS.lock"),
            state: LockState::Running,
            record: Some(record("WATCHDOG_ATLAS", 300, 100)),
            detail: "an OS lock is held on it".into(),
        }];
        let mut snapshot = DeskSnapshot::build(&fleet, locks, table, NOW);
        let entries = match error {
            Some(_) => Vec::new(),
            None => vec![
                entry("BRAIN_ATLAS", "A", 4242, 4240, Some(7)),
                entry("BRAIN_GL_3", "A", 4343, 4240, Some(7)),
                entry("WATCHDOG_ATLAS", "B", 300, 100, Some(9)),
                entry("quantum_server", "A", 901, 900, None),
            ],
        };
        snapshot.add_cluster(ClusterSnapshot {
            host: "B".into(),
            endpoints: vec!["http://10.0.0.5:2379".into()],
            prefix: "/desk/locks/".into(),
            entries,
            error: error.map(str::to_string),
        });
        (fleet, snapshot)
    }

    fn not_installed() -> AutostartStatus {
        AutostartStatus {
            installed: false,
            name: "x".into(),
            scheduler: Scheduler::SystemdUser,
            how: "not installed".into(),
        }
    }

    #[test]
    fn cluster_table_layout() {
        let (_, snapshot) = snapshot(None);
        insta::assert_snapshot!(super::table(&snapshot, &not_installed(), false));
    }

    #[test]
    fn cluster_json_components_and_problems() {
        let (fleet, snapshot) = snapshot(None);
        let autostart = not_installed();
        let report = super::report(&snapshot, &fleet, &autostart);
        let json = serde_json::to_value(&report).unwrap();
        insta::assert_json_snapshot!(serde_json::json!({
            "healthy": json["healthy"],
            "components": json["components"],
            "processes": json["processes"],
            "problems": json["problems"],
        }));
    }

    #[test]
    fn a_host_name_from_etcd_cannot_paint_the_terminal_or_stretch_the_table() {
        let (fleet, mut snapshot) = snapshot(None);
        let hostile = format!("evil\x1b[2J\x07{}", "x".repeat(300));
        let entries: Vec<ClusterEntry> = snapshot
            .cluster
            .as_ref()
            .unwrap()
            .entries
            .iter()
            .map(|e| ClusterEntry {
                holder: ClusterHolder {
                    // WATCHDOG_ATLAS runs here: its problem names the host too.
                    host: e.name.ends_with("_ATLAS").then(|| hostile.clone()),
                    ..e.holder.clone()
                },
                ..e.clone()
            })
            .collect();
        let mut cluster = snapshot.cluster.take().unwrap();
        cluster.entries = entries;
        snapshot.add_cluster(cluster);
        let text = super::table(&snapshot, &not_installed(), false);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text}");
        let row = text.lines().find(|l| l.starts_with("BRAIN_ATLAS")).unwrap();
        let expected = format!("evil?[2J?{}...", "x".repeat(20));
        assert!(row.contains(&format!("  {expected}  ")), "{row}");
        assert!(
            row.contains(&format!("runs on host {expected}, pid 4242 there")),
            "{row}"
        );
        assert!(
            text.contains(&format!(
                "its cluster key is held by host {expected}: two machines"
            )),
            "{text}"
        );
        // A key whose value names no host: held elsewhere all the same.
        let row = text
            .lines()
            .find(|l| l.starts_with("quantum_server"))
            .unwrap();
        assert!(
            row.contains("runs on another host (its key names none)"),
            "{row}"
        );
        assert!(row.contains("elsewhere"), "{row}");
        // The JSON carries the name as etcd holds it (serde escapes it).
        let json =
            serde_json::to_string(&super::report(&snapshot, &fleet, &not_installed())).unwrap();
        assert!(json.contains("evil\\u001b[2J\\u0007x"), "{json}");
    }

    #[test]
    fn cluster_unreachable_table_layout() {
        let (_, snapshot) = snapshot(Some(
            "cannot reach etcd at http://10.0.0.5:2379: http://10.0.0.5:2379: Connection refused",
        ));
        insta::assert_snapshot!(super::table(&snapshot, &not_installed(), false));
    }
}
