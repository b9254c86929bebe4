//! The stop engine: the one place where anything of the desk is asked to stop, waited
//! for, and forced. master-launch (a stop-all, a per-component request, Ctrl+C, a
//! failed start, the `run` runner) and safe-shutdown all carry out their stops here.
//!
//! A stop runs in stages, in the safe order ([`Stage::ORDER`]): brains (trading stops),
//! watchdogs (they guard open positions until no brain trades), globals, and the
//! orchestrator last. Within a stage everything is asked at once (an ask that takes
//! time, a console helper on Windows, is only started: [`Asking::Underway`]), then
//! waited for in parallel; whatever is still there at its deadline is forced, then
//! verified gone.
//!
//! Deadlines ([`Grace`]): a requester's deadline is honoured by everyone; only when
//! nobody gave one does each process's own `stop_timeout_secs` apply. The grace is per
//! process and counts from its own ask, so a later stage is never robbed of its
//! graceful stop by a stubborn earlier one, nor a process by slow asks before it. A target that is stopped through a
//! holder adds a margin ([`Stoppable::margin`]): the holder forces at the deadline
//! itself, and the requester forces only a holder that failed to.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Role;

/// Stop stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Brains,
    Watchdogs,
    Globals,
    Orchestrator,
}

impl Stage {
    /// The safe stop order; start order is the reverse (orchestrator aside).
    pub const ORDER: [Stage; 4] = [
        Stage::Brains,
        Stage::Watchdogs,
        Stage::Globals,
        Stage::Orchestrator,
    ];

    pub fn of(role: Role) -> Stage {
        match role {
            Role::Brain => Stage::Brains,
            Role::Watchdog => Stage::Watchdogs,
            Role::Global => Stage::Globals,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Stage::Brains => "brains",
            Stage::Watchdogs => "watchdogs",
            Stage::Globals => "globals",
            Stage::Orchestrator => "master-launch",
        }
    }
}

/// How long each process gets to stop on its own before it is forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// A requester's: every process gets this long from its own ask.
    Given(Duration),
    /// Nobody gave one: each process's own ([`Stoppable::own_timeout`]).
    Own,
}

/// Something the engine stops: a supervised child, a process asked through its lock
/// holder, a copy nobody holds. `C` is whatever the caller's checks need (a process
/// probe, say), lent to each call.
pub trait Stoppable<C> {
    /// For people and logs: `BRAIN_ATLAS (pid 4242)`.
    fn name(&self) -> String;
    fn stage(&self) -> Stage;
    /// Its own graceful-stop time, when nobody gave one.
    fn own_timeout(&self) -> Duration;
    /// Extra time before the engine forces it: a holder that forces at the deadline
    /// itself gets a margin before anyone else steps in.
    fn margin(&self) -> Duration {
        Duration::ZERO
    }
    /// Asks it to stop gracefully: says what was done, or starts an ask that takes time
    /// and returns [`Asking::Underway`] at once, so that the rest of its stage is asked
    /// without waiting for it.
    fn ask(&mut self, context: &mut C) -> Asking;
    /// For an ask that was [`Asking::Underway`]: what was done once it is, `None`
    /// while it still runs. Polled by the engine; an ask must end on its own deadline.
    fn answer(&mut self, _context: &mut C) -> Option<String> {
        Some("asked".into())
    }
    fn is_stopped(&mut self, context: &mut C) -> bool;
    /// Forces it; says what was done.
    fn force(&mut self, context: &mut C) -> String;
}

/// What [`Stoppable::ask`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asking {
    /// Asked; says how (for people and the audit).
    Done(String),
    /// The ask was started and ends on its own ([`Stoppable::answer`] says how).
    Underway,
}

/// What the engine reports while it works: progress bars, logs, the audit trail.
pub trait StopObserver {
    fn stage_started(&mut self, _stage: Stage, _total: usize) {}
    fn asked(&mut self, _name: &str, _how: &str) {}
    /// Called on every poll; `force_in` is the time until the next forcing, if any
    /// process of the stage is still waited for.
    fn waiting(&mut self, _progress: &Progress) {}
    fn forced(&mut self, _name: &str, _how: &str) {}
    /// It is gone: on its own within its grace, or (`forced`) after being forced.
    fn gone(&mut self, _name: &str, _forced: bool) {}
    fn stage_finished(&mut self, _progress: &Progress) {}
}

/// A stage's state, as progress shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub stopped: usize,
    pub total: usize,
    /// Time until the next process of the stage is forced; `None` once none is
    /// waited for.
    pub force_in: Option<Duration>,
}

impl fmt::Display for Progress {
    /// `brains      1/2 stopped   forcing in 2.1 s`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = format!("{}/{} stopped", self.stopped, self.total);
        let line = match self.force_in {
            Some(left) if self.stopped < self.total => format!(
                "{:<11} {counts:<13} forcing in {:.1} s",
                self.stage.label(),
                left.as_secs_f64()
            ),
            _ => format!("{:<11} {counts}", self.stage.label()),
        };
        f.write_str(&line)
    }
}

/// How a stop ended, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Stopped on its own within its grace.
    pub stopped: Vec<String>,
    /// Forced, and gone after that.
    pub forced: Vec<String>,
    /// Still there after being forced.
    pub survivors: Vec<String>,
}

impl StopOutcome {
    pub fn all_stopped(&self) -> bool {
        self.survivors.is_empty()
    }

    fn add(&mut self, other: StopOutcome) {
        self.stopped.extend(other.stopped);
        self.forced.extend(other.forced);
        self.survivors.extend(other.survivors);
    }
}

/// How often the engine looks again.
const POLL: Duration = Duration::from_millis(20);
/// How long a forced process may take to disappear before it counts as a survivor.
const VERIFY: Duration = Duration::from_secs(5);
/// A deadline further out than this is no deadline anyone means (and would overflow
/// `Instant`): a day.
const LONGEST_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A limit that a stop already running can be given later (DESIGN.md rule 16): a
/// second Ctrl+C forces what is left at once, a closed window or terminal gives each
/// stage at most its share of the closing budget. Stages keep their order either way.
/// It only ever shortens a stop: a later, longer limit is ignored.
#[derive(Debug, Clone, Default)]
pub struct Cutoff(Arc<Mutex<Option<Hurry>>>);

#[derive(Debug, Clone, Copy)]
struct Hurry {
    from: Instant,
    per_stage: Duration,
}

impl Cutoff {
    /// From now on, every stage (the one running and each later one) forces what it
    /// still waits for `per_stage` after the later of now and its own start.
    pub fn hurry(&self, per_stage: Duration) {
        let mut hurry = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if hurry.is_none_or(|h| per_stage < h.per_stage) {
            *hurry = Some(Hurry {
                from: Instant::now(),
                per_stage: per_stage.min(LONGEST_GRACE),
            });
        }
    }

    /// Forces what is left now, stage by stage.
    pub fn force_now(&self) {
        self.hurry(Duration::ZERO);
    }

    /// When a stage that began at `stage_start` forces what it still waits for, if a
    /// hurry was asked for.
    fn deadline(&self, stage_start: Instant) -> Option<Instant> {
        let hurry = (*self.0.lock().unwrap_or_else(|e| e.into_inner()))?;
        Some(later(hurry.from.max(stage_start), hurry.per_stage))
    }
}

/// Stops `targets` stage by stage in the safe order, in parallel within a stage: each
/// is asked, and forced once its grace (counted from its own ask) has passed, or
/// sooner when `cutoff` is hurried meanwhile.
pub fn stop_in_order<C, T: Stoppable<C>>(
    targets: Vec<T>,
    grace: Grace,
    cutoff: &Cutoff,
    context: &mut C,
    observer: &mut dyn StopObserver,
) -> StopOutcome {
    let mut outcome = StopOutcome::default();
    let mut remaining = targets;
    for stage in Stage::ORDER {
        let (in_stage, rest): (Vec<T>, Vec<T>) =
            remaining.into_iter().partition(|t| t.stage() == stage);
        remaining = rest;
        if !in_stage.is_empty() {
            outcome.add(stop_stage(
                stage, in_stage, grace, cutoff, context, observer,
            ));
        }
    }
    outcome
}

struct Pending<T> {
    target: T,
    /// An ask under way, not yet reported.
    answer_due: bool,
    force_at: Instant,
    forced_at: Option<Instant>,
    done: bool,
}

fn stop_stage<C, T: Stoppable<C>>(
    stage: Stage,
    targets: Vec<T>,
    grace: Grace,
    cutoff: &Cutoff,
    context: &mut C,
    observer: &mut dyn StopObserver,
) -> StopOutcome {
    let total = targets.len();
    observer.stage_started(stage, total);
    let started = Instant::now();
    // Every process of the stage is asked before any is waited for; each one's grace
    // counts from its own ask.
    let mut pending: Vec<Pending<T>> = targets
        .into_iter()
        .map(|mut target| {
            // Named before acting: a process that is gone has no pid to show.
            let name = target.name();
            let asked = target.ask(context);
            let asked_at = Instant::now();
            let answer_due = match asked {
                Asking::Done(how) => {
                    observer.asked(&name, &how);
                    false
                }
                Asking::Underway => true,
            };
            let grace = match grace {
                Grace::Given(given) => given,
                Grace::Own => target.own_timeout(),
            };
            let wait = grace.min(LONGEST_GRACE).saturating_add(target.margin());
            Pending {
                force_at: later(asked_at, wait),
                target,
                answer_due,
                forced_at: None,
                done: false,
            }
        })
        .collect();
    let mut outcome = StopOutcome::default();
    loop {
        let now = Instant::now();
        let cut = cutoff.deadline(started);
        for p in pending.iter_mut().filter(|p| !p.done) {
            if p.answer_due
                && let Some(how) = p.target.answer(context)
            {
                p.answer_due = false;
                observer.asked(&p.target.name(), &how);
            }
            if let Some(cut) = cut {
                p.force_at = p.force_at.min(cut);
            }
            if p.target.is_stopped(context) {
                p.done = true;
                let name = p.target.name();
                observer.gone(&name, p.forced_at.is_some());
                match p.forced_at {
                    Some(_) => outcome.forced.push(name),
                    None => outcome.stopped.push(name),
                }
            } else if p.forced_at.is_none() && now >= p.force_at {
                let name = p.target.name();
                let how = p.target.force(context);
                observer.forced(&name, &how);
                p.forced_at = Some(now);
            } else if p
                .forced_at
                .is_some_and(|at| now.saturating_duration_since(at) >= VERIFY)
            {
                p.done = true;
                outcome.survivors.push(p.target.name());
            }
        }
        let progress = Progress {
            stage,
            stopped: outcome.stopped.len() + outcome.forced.len(),
            total,
            force_in: pending
                .iter()
                .filter(|p| !p.done && p.forced_at.is_none())
                .map(|p| p.force_at.saturating_duration_since(now))
                .min(),
        };
        if pending.iter().all(|p| p.done) {
            observer.stage_finished(&progress);
            return outcome;
        }
        observer.waiting(&progress);
        std::thread::sleep(POLL);
    }
}

/// `start + wait`, or as far as `Instant` goes.
fn later(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait)
        .unwrap_or_else(|| start + LONGEST_GRACE)
}

/// An observer that reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl StopObserver for Quiet {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stop order has one home: `Stage`. Its `Ord` (used to sort targets and joins
    /// in master-launch and safe-shutdown) is `ORDER`, and `of` puts brains first.
    #[test]
    fn stage_ordering_is_the_safe_order() {
        assert!(Stage::ORDER.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(Stage::of(Role::Brain) < Stage::of(Role::Watchdog));
        assert!(Stage::of(Role::Watchdog) < Stage::of(Role::Global));
        assert!(Stage::of(Role::Global) < Stage::Orchestrator);
    }

    /// A target that stops after `stops_after` (or never), and records what was done
    /// to it, with the time since the test began.
    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        stage: Stage,
        own: Duration,
        stops_after: Option<Duration>,
        /// An ask that takes this long (a console helper): under way until then.
        ask_takes: Option<Duration>,
        asked_at: Option<Instant>,
        forced_at: Option<Instant>,
    }

    fn fake(name: &'static str, stage: Stage, stops_after: Option<u64>) -> Fake {
        Fake {
            name,
            stage,
            own: Duration::from_millis(300),
            stops_after: stops_after.map(Duration::from_millis),
            ask_takes: None,
            asked_at: None,
            forced_at: None,
        }
    }

    /// What happened, in order: (event, name, ms since start).
    type Events = Vec<(&'static str, String, u128)>;

    impl Stoppable<(Instant, Events)> for Fake {
        fn name(&self) -> String {
            self.name.to_string()
        }
        fn stage(&self) -> Stage {
            self.stage
        }
        fn own_timeout(&self) -> Duration {
            self.own
        }
        fn ask(&mut self, (t0, events): &mut (Instant, Events)) -> Asking {
            self.asked_at = Some(Instant::now());
            events.push(("asked", self.name(), t0.elapsed().as_millis()));
            match self.ask_takes {
                Some(_) => Asking::Underway,
                None => Asking::Done("asked".into()),
            }
        }
        fn answer(&mut self, (t0, events): &mut (Instant, Events)) -> Option<String> {
            let takes = self.ask_takes.unwrap_or_default();
            let done = self.asked_at.is_some_and(|at| at.elapsed() >= takes);
            if done {
                events.push(("answered", self.name(), t0.elapsed().as_millis()));
            }
            done.then(|| "asked through a helper".into())
        }
        fn is_stopped(&mut self, (t0, events): &mut (Instant, Events)) -> bool {
            let gracefully = self
                .stops_after
                .zip(self.asked_at)
                .is_some_and(|(after, at)| at.elapsed() >= after);
            let stopped = gracefully || self.forced_at.is_some();
            if stopped
                && !events
                    .iter()
                    .any(|(e, n, _)| *e == "gone" && n == self.name)
            {
                events.push(("gone", self.name(), t0.elapsed().as_millis()));
            }
            stopped
        }
        fn force(&mut self, (t0, events): &mut (Instant, Events)) -> String {
            self.forced_at = Some(Instant::now());
            events.push(("forced", self.name(), t0.elapsed().as_millis()));
            "killed".into()
        }
    }

    fn run(targets: Vec<Fake>, grace: Grace) -> (StopOutcome, Events) {
        run_with(targets, grace, &Cutoff::default())
    }

    fn run_with(targets: Vec<Fake>, grace: Grace, cutoff: &Cutoff) -> (StopOutcome, Events) {
        let mut context = (Instant::now(), Events::new());
        let outcome = stop_in_order(targets, grace, cutoff, &mut context, &mut Quiet);
        (outcome, context.1)
    }

    /// Stubborn brains and watchdogs with a 30 s grace; `hurry` is called on the cutoff
    /// 100 ms into the stop.
    fn hurried(hurry: impl FnOnce(&Cutoff) + Send + 'static) -> (StopOutcome, Events) {
        let cutoff = Cutoff::default();
        let later = cutoff.clone();
        let hurrying = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            hurry(&later);
        });
        let targets = vec![
            fake("WATCHDOG_A", Stage::Watchdogs, None),
            fake("BRAIN_A", Stage::Brains, None),
            fake("BRAIN_B", Stage::Brains, None),
            fake("qs", Stage::Globals, None),
        ];
        let ran = run_with(targets, Grace::Given(Duration::from_secs(30)), &cutoff);
        hurrying
            .join()
            .unwrap_or_else(|_| panic!("the hurrying thread panicked"));
        ran
    }

    #[test]
    fn a_hurry_during_a_long_grace_gives_each_stage_its_share_in_order() {
        let (outcome, events) = hurried(|cutoff| cutoff.hurry(Duration::from_millis(300)));
        assert_eq!(outcome.forced.len(), 4, "{outcome:?}");
        let brains = at(&events, "forced", "BRAIN_A").max(at(&events, "forced", "BRAIN_B"));
        let watchdog_asked = at(&events, "asked", "WATCHDOG_A");
        let watchdog = at(&events, "forced", "WATCHDOG_A");
        let global = at(&events, "forced", "qs");
        // Brains: 100 ms + their share; each later stage its share from its start.
        assert!((400..1500).contains(&brains), "{events:?}");
        assert!(brains <= watchdog_asked, "{events:?}");
        assert!(watchdog - watchdog_asked >= 300, "{events:?}");
        assert!(global < 3000, "the whole stop took {global} ms: {events:?}");
    }

    #[test]
    fn force_now_forces_what_is_left_at_once_still_in_stage_order() {
        let (outcome, events) = hurried(Cutoff::force_now);
        assert_eq!(outcome.forced.len(), 4, "{outcome:?}");
        let brains = at(&events, "forced", "BRAIN_A").max(at(&events, "forced", "BRAIN_B"));
        assert!((100..1000).contains(&brains), "{events:?}");
        assert!(brains <= at(&events, "asked", "WATCHDOG_A"), "{events:?}");
        assert!(at(&events, "forced", "WATCHDOG_A") <= at(&events, "asked", "qs"));
        assert!(at(&events, "forced", "qs") < 1500, "{events:?}");
    }

    #[test]
    fn a_later_longer_hurry_never_lengthens_a_stop() {
        let (_, events) = hurried(|cutoff| {
            cutoff.force_now();
            cutoff.hurry(Duration::from_secs(20));
        });
        assert!(at(&events, "forced", "qs") < 1500, "{events:?}");
    }

    fn at(events: &Events, event: &str, name: &str) -> u128 {
        events
            .iter()
            .find(|(e, n, _)| *e == event && n == name)
            .map(|(_, _, ms)| *ms)
            .unwrap_or_else(|| panic!("no {event} for {name}: {events:?}"))
    }

    #[test]
    fn stages_run_in_the_safe_order_whatever_the_input_order() {
        let (outcome, events) = run(
            vec![
                fake("qs", Stage::Globals, Some(0)),
                fake("WATCHDOG_A", Stage::Watchdogs, Some(0)),
                fake("BRAIN_A", Stage::Brains, Some(50)),
                fake("BRAIN_B", Stage::Brains, Some(0)),
            ],
            Grace::Own,
        );
        assert!(
            outcome.all_stopped() && outcome.forced.is_empty(),
            "{outcome:?}"
        );
        let brains_gone = at(&events, "gone", "BRAIN_A").max(at(&events, "gone", "BRAIN_B"));
        assert!(
            at(&events, "asked", "WATCHDOG_A") >= brains_gone,
            "{events:?}"
        );
        assert!(at(&events, "asked", "qs") >= at(&events, "gone", "WATCHDOG_A"));
    }

    #[test]
    fn a_given_grace_wins_over_each_own_timeout() {
        let mut slow = fake("BRAIN_A", Stage::Brains, None);
        slow.own = Duration::from_secs(60);
        let (outcome, events) = run(vec![slow], Grace::Given(Duration::from_millis(200)));
        assert_eq!(outcome.forced, vec!["BRAIN_A".to_string()]);
        let forced = at(&events, "forced", "BRAIN_A");
        assert!((200..1000).contains(&forced), "forced at {forced} ms");
    }

    #[test]
    fn stubborn_processes_are_forced_in_parallel_and_a_later_stage_keeps_its_grace() {
        let (outcome, events) = run(
            vec![
                fake("BRAIN_A", Stage::Brains, None),
                fake("BRAIN_B", Stage::Brains, None),
                fake("WATCHDOG_A", Stage::Watchdogs, Some(100)),
            ],
            Grace::Given(Duration::from_millis(300)),
        );
        assert_eq!(outcome.forced.len(), 2, "{outcome:?}");
        assert_eq!(outcome.stopped, vec!["WATCHDOG_A".to_string()]);
        let a = at(&events, "forced", "BRAIN_A");
        let b = at(&events, "forced", "BRAIN_B");
        assert!(a.abs_diff(b) < 100, "forced one after the other: {a} / {b}");
        // The watchdog is asked after the brains were forced and stops gracefully.
        assert!(at(&events, "asked", "WATCHDOG_A") >= a.max(b));
        assert!(
            !events
                .iter()
                .any(|(e, n, _)| *e == "forced" && n == "WATCHDOG_A")
        );
    }

    /// Issue #26: twenty processes whose ask takes 400 ms each (a console helper on
    /// Windows) are all asked at once, not one after the other (8 s), and each keeps
    /// its whole grace, counted from its own ask.
    #[test]
    fn a_stages_slow_asks_go_out_together_and_each_grace_counts_from_its_ask() {
        const NAMES: [&str; 20] = [
            "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12",
            "B13", "B14", "B15", "B16", "B17", "B18", "B19", "B20",
        ];
        let targets = NAMES
            .iter()
            .map(|name| {
                let mut slow = fake(name, Stage::Brains, None);
                slow.ask_takes = Some(Duration::from_millis(400));
                slow
            })
            .chain([fake("WATCHDOG_A", Stage::Watchdogs, Some(0))])
            .collect();
        let (outcome, events) = run(targets, Grace::Given(Duration::from_millis(600)));
        assert_eq!(outcome.forced.len(), 20, "{outcome:?}");
        let last_asked = NAMES.iter().map(|n| at(&events, "asked", n)).max();
        assert!(
            last_asked < Some(200),
            "asked one after the other: {events:?}"
        );
        for name in NAMES {
            let answered = at(&events, "answered", name);
            assert!(answered >= at(&events, "asked", name) + 400, "{events:?}");
            let forced = at(&events, "forced", name);
            assert!(forced >= at(&events, "asked", name) + 600, "{events:?}");
            assert!(forced < 3000, "{name} forced at {forced} ms: {events:?}");
        }
        // The next stage starts once the brains are gone, as ever.
        let brains_gone = NAMES.iter().map(|n| at(&events, "gone", n)).max();
        assert!(Some(at(&events, "asked", "WATCHDOG_A")) >= brains_gone);
    }

    #[test]
    fn a_huge_grace_does_not_overflow() {
        let target = fake("BRAIN_A", Stage::Brains, Some(10));
        let (outcome, _) = run(vec![target], Grace::Given(Duration::MAX));
        assert!(outcome.all_stopped());
    }

    #[test]
    fn progress_reads_as_people_need_it() {
        let waiting = Progress {
            stage: Stage::Brains,
            stopped: 1,
            total: 2,
            force_in: Some(Duration::from_millis(2140)),
        };
        assert_eq!(
            waiting.to_string(),
            "brains      1/2 stopped   forcing in 2.1 s"
        );
        let done = Progress {
            stage: Stage::Orchestrator,
            stopped: 1,
            total: 1,
            force_in: None,
        };
        assert_eq!(done.to_string(), "master-launch 1/1 stopped");
        let forcing = Progress {
            stage: Stage::Watchdogs,
            stopped: 10,
            total: 11,
            force_in: None,
        };
        assert_eq!(forcing.to_string(), "watchdogs   10/11 stopped");
    }
}
