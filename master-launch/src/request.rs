//! `master-launch start|restart`: asking the running orchestrator, and waiting for its
//! answer.
//!
//! The requester checks names against fleet.toml, finds the orchestrator by its lock,
//! places one request per component in the lock dir ([`lockcore::control`]) and reads
//! the orchestrator's published view until every request is answered, the
//! orchestrator ends, or the wait times out. It never starts anything itself (except
//! `start --or-run` with no orchestrator, which is `run NAME`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use lockcore::config::MASTER_LOCK_NAME;
use lockcore::control::{Action, ControlRequest, DeskState, Outcome, Placed};
use lockcore::exit::{ToolError, UsageError};
use lockcore::select::AccountSelection;
use lockcore::{ExitCode, Fleet, LockDir, LockState, ProcessProbe, errln};

/// The longest a requester waits by default: a restart includes a graceful stop.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// How often the published view is read while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How long a freshly started orchestrator may take to publish its first view.
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(10);
/// How long a requester that gives up waits, at most, for its request to be taken
/// (the orchestrator looks every quarter second).
const PICKUP_WAIT: Duration = Duration::from_secs(5);

/// What a request names: components, accounts, or both.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
pub struct Targets {
    /// Components by lock name, e.g. BRAIN_ATLAS or quantum_server.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Every component of this account (repeatable): its watchdog, then its brain.
    #[arg(long = "account", value_name = "ACC")]
    accounts: Vec<String>,
}

/// The pid of the orchestrator holding the desk's `MASTER_LAUNCH` lock, if one runs.
pub fn running_orchestrator(fleet: &Fleet, probe: &mut ProcessProbe) -> Option<u32> {
    let status = LockDir::for_fleet(fleet)
        .inspect(MASTER_LOCK_NAME, probe)
        .ok()??;
    (status.state == LockState::Running)
        .then(|| status.record.map(|r| r.pid))
        .flatten()
}

pub fn ask(
    config: &Path,
    action: Action,
    targets: &Targets,
    or_run: bool,
    timeout_secs: u64,
) -> Result<ExitCode, ToolError> {
    let fleet = Fleet::load(config)?;
    let names = resolve(&fleet, targets)?;
    let mut probe = ProcessProbe::new()?;
    let Some(orchestrator) = running_orchestrator(&fleet, &mut probe) else {
        if or_run && let [name] = names.as_slice() {
            errln!(
                "master-launch: no master-launch is running; running {name} by hand, as \
                 `master-launch run {name}`"
            );
            return crate::run_one(config, name);
        }
        errln!("master-launch: no master-launch is running; start the desk with `master-launch`");
        return Ok(ExitCode::Problems);
    };
    let lock_dir = fleet.lock_dir.clone();
    let Some(first_view) = current_view(&fleet, &mut probe, FIRST_VIEW_WAIT) else {
        errln!(
            "master-launch: master-launch (pid {orchestrator}) publishes no state in {}; it may \
             be an older version: stop the desk with safe-shutdown and start it again",
            lock_dir.join(lockcore::control::STATE_FILE).display()
        );
        return Ok(ExitCode::Problems);
    };
    if let Some(unknown) = names.iter().find(|n| first_view.component(n).is_none()) {
        errln!(
            "master-launch: master-launch (pid {orchestrator}) does not supervise {unknown}: it \
             was started with another fleet.toml, or before {unknown} was added; restart the \
             desk to pick up the change"
        );
        return Ok(ExitCode::Problems);
    }
    let me = probe.own_identity();
    let mut pending: Vec<(String, String)> = Vec::new();
    for name in &names {
        let placed = ControlRequest::new(name, action, me)
            .place(&lock_dir, Duration::from_secs(3))
            .map_err(lockcore::exit::PathError::at(
                "place a request in",
                &lock_dir,
            ))?;
        if let Placed::Joined(_) = placed {
            errln!(
                "master-launch: a {} request for {name} was already pending; waiting for its answer",
                action.as_str()
            );
        }
        pending.push((name.clone(), placed.id().to_string()));
    }
    errln!(
        "master-launch: asked master-launch (pid {orchestrator}) to {} {}; waiting for it",
        action.as_str(),
        names.join(", ")
    );
    wait_for_answers(&fleet, &mut probe, action, pending, timeout_secs)
}

/// The components named, in start order, each once; an account is its watchdog and
/// its brain. Unknown names and disabled accounts are usage errors.
fn resolve(fleet: &Fleet, targets: &Targets) -> Result<Vec<String>, UsageError> {
    let selection = AccountSelection::of(fleet, &targets.accounts, "--account")?;
    let known = || {
        fleet
            .components()
            .map(|c| c.lock_name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for name in &targets.names {
        let Some(component) = fleet.component(name) else {
            return Err(UsageError(format!(
                "no component named {name} in {} (components: {})",
                fleet.path.display(),
                known()
            )));
        };
        if !component.enabled {
            return Err(UsageError(format!(
                "{name} is disabled in {} (its account has enabled = false); enable it, then \
                 restart the desk",
                fleet.path.display()
            )));
        }
    }
    for account in &targets.accounts {
        if fleet.account(account).is_some_and(|a| !a.enabled) {
            return Err(UsageError(format!(
                "account {account} is disabled in {}; enable it, then restart the desk",
                fleet.path.display()
            )));
        }
    }
    Ok(fleet
        .components()
        .filter(|c| {
            targets
                .names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&c.lock_name))
                || (!targets.accounts.is_empty()
                    && c.account.is_some()
                    && selection.includes(c.account.as_deref()))
        })
        .map(|c| c.lock_name.clone())
        .collect())
}

/// The running orchestrator's view, waiting up to `patience` for it to appear.
fn current_view(fleet: &Fleet, probe: &mut ProcessProbe, patience: Duration) -> Option<DeskState> {
    let give_up_at = Instant::now() + patience;
    loop {
        let master = LockDir::for_fleet(fleet)
            .inspect(MASTER_LOCK_NAME, probe)
            .ok()
            .flatten();
        if let Some(view) = master.and_then(|m| DeskState::read_current(&fleet.lock_dir, &m)) {
            return Some(view);
        }
        if Instant::now() >= give_up_at {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Reads the view until every request is answered; prints progress on a terminal,
/// and each answer. Exit 0 when all run, 3 when one was refused, else 1.
fn wait_for_answers(
    fleet: &Fleet,
    probe: &mut ProcessProbe,
    action: Action,
    mut pending: Vec<(String, String)>,
    timeout_secs: u64,
) -> Result<ExitCode, ToolError> {
    let timeout = Duration::from_secs(timeout_secs.min(lockcore::stop::MAX_STOP_WAIT.as_secs()));
    let give_up_at = Instant::now() + timeout;
    let progress = std::io::stderr().is_terminal();
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    while !pending.is_empty() {
        let Some(view) = current_view(fleet, probe, Duration::ZERO) else {
            if running_orchestrator(fleet, probe).is_some() && Instant::now() < give_up_at {
                // Its view is being replaced, or unreadable for a moment: look again.
                std::thread::sleep(POLL);
                continue;
            }
            errln!(
                "master-launch: master-launch ended before it answered; see {}",
                fleet.log_dir.join("master-launch.log").display()
            );
            return Ok(ExitCode::Problems);
        };
        pending.retain(|(name, id)| {
            let Some(component) = view.component(name) else {
                return true;
            };
            if progress {
                let now = format!("{}: {}", component.state.as_str(), component.reason);
                if shown.iter().all(|(n, s)| n != name || *s != now) {
                    shown.retain(|(n, _)| n != name);
                    errln!("  {name}: {now}");
                    shown.push((name.clone(), now));
                }
            }
            let Some(answer) = component.answers.iter().find(|a| &a.id == id) else {
                return true;
            };
            match answer.outcome {
                Outcome::Done => errln!("master-launch: {name}: {}", answer.detail),
                Outcome::Failed => errln!("master-launch: {name}: FAILED: {}", answer.detail),
                Outcome::Refused => errln!("master-launch: {name}: REFUSED: {}", answer.detail),
            }
            outcomes.push(answer.outcome);
            false
        });
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= give_up_at {
            // A request not taken yet would be cleared once we have ended (as one of a
            // requester that died): wait until it is taken, so that "goes on" is true.
            let not_taken = |pending: &[(String, String)]| {
                pending.iter().any(|(name, id)| {
                    matches!(ControlRequest::read(&fleet.lock_dir, name, action),
                        Some(Ok(request)) if &request.id == id)
                })
            };
            let pickup_until = Instant::now() + PICKUP_WAIT;
            while not_taken(&pending) && Instant::now() < pickup_until {
                std::thread::sleep(POLL);
            }
            let names: Vec<&str> = pending.iter().map(|(n, _)| n.as_str()).collect();
            if not_taken(&pending) {
                // Once we have ended, the orchestrator clears it unread: say so.
                errln!(
                    "master-launch: master-launch has not taken the request for {} (is it \
                     hung?); nothing was done: see `check-procs` and {}",
                    names.join(", "),
                    fleet.log_dir.join("master-launch.log").display()
                );
                return Ok(ExitCode::Problems);
            }
            errln!(
                "master-launch: no answer for {} within {} s; master-launch goes on with the \
                 request: see `check-procs` and {}",
                names.join(", "),
                timeout.as_secs(),
                fleet.log_dir.join("master-launch.log").display()
            );
            return Ok(ExitCode::Problems);
        }
        std::thread::sleep(POLL);
    }
    Ok(if outcomes.contains(&Outcome::Refused) {
        ExitCode::Refused
    } else if outcomes.contains(&Outcome::Failed) {
        ExitCode::Problems
    } else {
        ExitCode::Ok
    })
}
