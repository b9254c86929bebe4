//! The core's transitions, in-process: no processes, no files, no sleeps (time is
//! passed in). A small simulated executor ([`Sim`]) carries out commands the way the
//! orchestrator does (starts succeed unless told otherwise, stops end when the test
//! says so, requests wait in a simulated lock dir while the core does not take them)
//! and checks DESIGN.md rule 13 on every command it is given.

use super::*;

const GLOBAL: usize = 0;
const WATCHDOG_A: usize = 1;
const BRAIN_A: usize = 2;
const WATCHDOG_B: usize = 3;
/// `brain_requires_watchdog = false`.
const BRAIN_B: usize = 4;

fn spec(name: &str, watchdog: Option<usize>) -> Spec {
    Spec {
        name: name.into(),
        account: name.split('_').nth(1).map(str::to_string),
        watchdog,
        restart: RestartPolicy::OnFailure,
        planned: true,
        elsewhere: false,
        ready: Readiness::Settle,
        heartbeat: None,
    }
}

fn desk_specs() -> Vec<Spec> {
    vec![
        spec("quantum_server", None),
        spec("WATCHDOG_A", None),
        spec("BRAIN_A", Some(WATCHDOG_A)),
        spec("WATCHDOG_B", None),
        spec("BRAIN_B", None),
    ]
}

/// A simulated executor around a [`Desk`].
struct Sim {
    desk: Desk,
    t0: Instant,
    at: Duration,
    /// How the next start of a unit goes (default: supervising).
    begun: Vec<Option<Begun>>,
    /// Stops carried out and not yet ended.
    stops: Vec<Vec<usize>>,
    /// Requests placed in the lock dir, not yet taken by the core.
    lock_dir: Vec<Input>,
    /// Every command given, in order.
    log: Vec<Command>,
    pid: u32,
}

impl Sim {
    fn new(specs: Vec<Spec>) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim {
            begun: vec![None; specs.len()],
            desk: Desk::new(specs, &now_at(t0, Duration::ZERO)),
            t0,
            at: Duration::ZERO,
            stops: Vec::new(),
            lock_dir: Vec::new(),
            log: Vec::new(),
            pid: 100,
        };
        sim.step(Input::Tick);
        sim
    }

    /// The five-unit desk, every start made and each child running; brains once their
    /// watchdog has settled.
    fn running() -> Sim {
        let mut sim = Sim::new(desk_specs());
        for unit in [GLOBAL, WATCHDOG_A, WATCHDOG_B, BRAIN_B] {
            sim.started(unit);
        }
        sim.advance(SETTLE);
        sim.step(Input::Tick);
        sim.started(BRAIN_A);
        sim.advance(SETTLE);
        sim.step(Input::Tick);
        sim.log.clear();
        sim
    }

    fn now(&self) -> Now {
        now_at(self.t0, self.at)
    }

    fn advance(&mut self, by: Duration) {
        self.at += by;
    }

    /// Feeds one input as the orchestrator's `step` does; returns the commands given.
    fn step(&mut self, input: Input) -> Vec<Command> {
        let mut given = Vec::new();
        let mut inputs = vec![input];
        while !inputs.is_empty() {
            let input = inputs.remove(0);
            let now = self.now();
            let commands = self.desk.handle(&now, input);
            let mut started = false;
            for command in commands {
                self.check_rule_13(&command);
                match &command {
                    Command::Start(unit) => {
                        started = true;
                        let begun = self.begun[*unit].take().unwrap_or(Begun::Supervising);
                        inputs.push(Input::Begun(*unit, begun));
                    }
                    Command::Stop { units, .. } => self.stops.push(units.clone()),
                    _ => {}
                }
                self.log.push(command.clone());
                given.push(command);
            }
            if started {
                inputs.push(Input::Tick);
            }
        }
        given
    }

    /// Rule 13 and its order, on every command: a brain starts only beside a watchdog
    /// that has run for SETTLE; a stop that takes a watchdog takes every brain of it
    /// that is still supervised, and no brain of it is still in another stop.
    fn check_rule_13(&self, command: &Command) {
        let now = self.now();
        match command {
            Command::Start(unit) => {
                if let Some(w) = self.desk.units[*unit].spec.watchdog {
                    assert!(
                        self.desk.units[w].settled(&now),
                        "rule 13: {} started while its watchdog is {:?}",
                        self.desk.units[*unit].name(),
                        self.desk.units[w].state
                    );
                }
            }
            Command::Stop { units, .. } => {
                for (b, brain) in self.desk.units.iter().enumerate() {
                    let Some(w) = brain.spec.watchdog else {
                        continue;
                    };
                    if !units.contains(&w) {
                        continue;
                    }
                    assert!(
                        !self.stops.iter().any(|s| s.contains(&b)),
                        "rule 13: watchdog {w} stopped while its brain {b} is still stopping"
                    );
                    assert!(
                        units.contains(&b) || !brain.state.supervised() || brain.state.stopping(),
                        "rule 13: watchdog {w} stopped without its running brain {b}"
                    );
                }
            }
            _ => {}
        }
    }

    /// The unit's child runs.
    fn started(&mut self, unit: usize) -> Vec<Command> {
        self.pid += 1;
        self.step(Input::Report(unit, Report::Started { pid: self.pid }))
    }

    /// The oldest stop in flight ends: its supervisors report their end, then the stop.
    fn finish_stop(&mut self) -> Vec<Command> {
        let units = self.stops.remove(0);
        let mut given = Vec::new();
        for &unit in &units {
            if self.desk.units[unit].state.supervised() {
                given.extend(self.step(Input::Report(unit, Report::Ended(Outcome::Stopped))));
            }
        }
        given.extend(self.step(Input::StopEnded(units)));
        given
    }

    /// A request placed in the lock dir.
    fn place(&mut self, input: Input) {
        self.lock_dir.push(input);
    }

    /// The orchestrator's scan: every request the core takes now, in unit order (stop
    /// requests first), then a tick.
    fn scan(&mut self) -> Vec<Command> {
        let mut given = Vec::new();
        let pending = std::mem::take(&mut self.lock_dir);
        let (stops, others): (Vec<Input>, Vec<Input>) = pending
            .into_iter()
            .partition(|i| matches!(i, Input::StopRequest { .. }));
        for input in stops.into_iter().chain(others) {
            let unit = match &input {
                Input::StopRequest { unit, .. } | Input::Request { unit, .. } => *unit,
                _ => unreachable!(),
            };
            if self.desk.takes_requests(unit) {
                given.extend(self.step(input));
            } else {
                self.lock_dir.push(input);
            }
        }
        given.extend(self.step(Input::Tick));
        given
    }

    fn shown(&self, unit: usize) -> Shown {
        self.desk.units[unit].shown()
    }

    /// The pid of the unit's running child.
    fn pid_of(&self, unit: usize) -> u32 {
        match &self.desk.units[unit].state {
            State::Running { pid, .. } => *pid,
            state => panic!("unit {unit} does not run: {state:?}"),
        }
    }

    /// The unit's running child says `word`, then the orchestrator ticks (as it does
    /// after every event).
    fn says(&mut self, unit: usize, word: Word) -> Vec<Command> {
        let pid = self.pid_of(unit);
        let mut given = self.step(Input::Said { unit, pid, word });
        given.extend(self.step(Input::Tick));
        given
    }

    fn answers(&self, unit: usize) -> Vec<(String, AnswerOutcome)> {
        self.desk.view()[unit]
            .answers
            .iter()
            .map(|a| (a.id.clone(), a.outcome))
            .collect()
    }
}

fn now_at(t0: Instant, at: Duration) -> Now {
    let local = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .expect("a valid time")
        .with_timezone(&chrono::Local);
    Now {
        at: t0 + at,
        unix: 1_700_000_000.0 + at.as_secs_f64(),
        local: local + chrono::TimeDelta::from_std(at).expect("small"),
    }
}

fn stop_request(unit: usize) -> Input {
    Input::StopRequest {
        unit,
        requester: "safe-shutdown (pid 7)".into(),
        grace: Grace::Given(Duration::from_secs(3)),
    }
}

fn request(unit: usize, action: Action, id: &str) -> Input {
    Input::Request {
        unit,
        action,
        id: id.into(),
        requester: "pid 9".into(),
        alive: true,
    }
}

fn starts(commands: &[Command]) -> Vec<usize> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Start(unit) => Some(*unit),
            _ => None,
        })
        .collect()
}

fn stops(commands: &[Command]) -> Vec<(Vec<usize>, Grace)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Stop { units, grace, .. } => Some((units.clone(), *grace)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_first_start_goes_in_order_and_a_brain_waits_for_its_watchdog_to_settle() {
    let mut sim = Sim::new(desk_specs());
    assert_eq!(
        starts(&sim.log),
        vec![GLOBAL, WATCHDOG_A, WATCHDOG_B, BRAIN_B]
    );
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Starting);
    assert_eq!(
        sim.shown(BRAIN_A).reason,
        "waiting for its watchdog WATCHDOG_A to run"
    );
    assert!(
        !sim.log
            .iter()
            .any(|c| matches!(c, Command::Say(Note::DeskStarted { .. }))),
        "not announced while a brain still holds its first lock"
    );
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE - Duration::from_millis(1));
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    assert_eq!(
        sim.desk.next_settle(&sim.now()),
        Some(Duration::from_millis(1))
    );
    sim.advance(Duration::from_millis(1));
    let given = sim.step(Input::Tick);
    assert_eq!(starts(&given), vec![BRAIN_A]);
    assert!(given.contains(&Command::Say(Note::DeskStarted {
        started: 5,
        standing_by: 0
    })));
}

/// Rule 13, one row per thing that happens to a running watchdog: whether its running
/// brain is stopped (with which grace, and in the same stop as the watchdog), and what
/// the brain is once that stop has ended.
#[test]
fn rule_13_what_happens_to_the_brain_when_its_watchdog() {
    struct Row {
        what: &'static str,
        input: Input,
        brain_stopped: bool,
        with_watchdog: bool,
        then: (Supervision, &'static str),
        still_wanted: bool,
    }
    let last_exit = || "code 1".to_string();
    let rows = [
        Row {
            what: "crashes (restarted at once)",
            input: Input::Report(
                WATCHDOG_A,
                Report::Restarting {
                    attempt: 1,
                    delay: Duration::ZERO,
                    last_exit: last_exit(),
                },
            ),
            brain_stopped: false,
            with_watchdog: false,
            then: (Supervision::Running, "running, pid"),
            still_wanted: true,
        },
        Row {
            what: "backs off before a restart",
            input: Input::Report(
                WATCHDOG_A,
                Report::Restarting {
                    attempt: 2,
                    delay: Duration::from_millis(250),
                    last_exit: last_exit(),
                },
            ),
            brain_stopped: true,
            with_watchdog: false,
            then: (
                Supervision::Starting,
                "held back: its watchdog WATCHDOG_A is restarting",
            ),
            still_wanted: true,
        },
        Row {
            what: "is given up",
            input: Input::Report(
                WATCHDOG_A,
                Report::Ended(Outcome::GaveUp {
                    failures: 5,
                    last_exit: last_exit(),
                }),
            ),
            brain_stopped: true,
            with_watchdog: false,
            then: (
                Supervision::Blocked,
                "held back: its watchdog WATCHDOG_A is given_up",
            ),
            still_wanted: true,
        },
        Row {
            what: "exits cleanly and is not restarted",
            input: Input::Report(
                WATCHDOG_A,
                Report::Ended(Outcome::Finished {
                    last_exit: "code 0".into(),
                    success: true,
                }),
            ),
            brain_stopped: true,
            with_watchdog: false,
            then: (
                Supervision::Stopped,
                "held back: its watchdog WATCHDOG_A is stopped (exited cleanly",
            ),
            still_wanted: true,
        },
        Row {
            what: "is stopped on request",
            input: stop_request(WATCHDOG_A),
            brain_stopped: true,
            with_watchdog: true,
            then: (
                Supervision::Stopped,
                "held back: its watchdog WATCHDOG_A was stopped on request by safe-shutdown",
            ),
            still_wanted: true,
        },
        Row {
            what: "is restarted on request",
            input: request(WATCHDOG_A, Action::Restart, "r1"),
            brain_stopped: true,
            with_watchdog: true,
            then: (
                Supervision::Starting,
                "restarting with its watchdog WATCHDOG_A",
            ),
            still_wanted: true,
        },
    ];
    for row in rows {
        let mut sim = Sim::running();
        let mut given = sim.step(row.input);
        given.extend(sim.step(Input::Tick));
        let stopped = stops(&given);
        let brain_stop = stopped.iter().find(|(units, _)| units.contains(&BRAIN_A));
        assert_eq!(brain_stop.is_some(), row.brain_stopped, "{}", row.what);
        if let Some((units, _)) = brain_stop {
            assert_eq!(
                units.contains(&WATCHDOG_A),
                row.with_watchdog,
                "{}",
                row.what
            );
            assert_eq!(
                units[0],
                if row.with_watchdog {
                    WATCHDOG_A
                } else {
                    BRAIN_A
                }
            );
            while !sim.stops.is_empty() {
                sim.finish_stop();
            }
        }
        let brain = sim.shown(BRAIN_A);
        assert_eq!(brain.state, row.then.0, "{}: {brain:?}", row.what);
        assert!(
            brain.reason.starts_with(row.then.1),
            "{}: {}",
            row.what,
            brain.reason
        );
        assert_eq!(
            sim.desk.units[BRAIN_A].wanted, row.still_wanted,
            "{}",
            row.what
        );
        // `brain_requires_watchdog = false`: account B's brain never follows its watchdog.
        let mut sim_b = Sim::running();
        let mut given_b = sim_b.step(rewrite_for_b(row.what));
        given_b.extend(sim_b.step(Input::Tick));
        assert!(
            !stops(&given_b)
                .iter()
                .any(|(units, _)| units.contains(&BRAIN_B)),
            "{}: BRAIN_B needs no watchdog",
            row.what
        );
    }
}

/// The same things, happening to WATCHDOG_B (whose brain needs no watchdog).
fn rewrite_for_b(what: &str) -> Input {
    match what {
        "is stopped on request" => stop_request(WATCHDOG_B),
        "is restarted on request" => request(WATCHDOG_B, Action::Restart, "rb"),
        _ => Input::Report(
            WATCHDOG_B,
            Report::Ended(Outcome::GaveUp {
                failures: 5,
                last_exit: "code 1".into(),
            }),
        ),
    }
}

#[test]
fn a_brain_held_back_by_a_backing_off_watchdog_follows_it_back_after_it_settles() {
    let mut sim = Sim::running();
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 2,
            delay: Duration::from_millis(250),
            last_exit: "code 1".into(),
        },
    ));
    sim.finish_stop();
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    sim.advance(Duration::from_millis(250));
    sim.started(WATCHDOG_A);
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    sim.advance(SETTLE);
    assert_eq!(starts(&sim.step(Input::Tick)), vec![BRAIN_A]);
}

#[test]
fn a_given_up_watchdog_blocks_its_brain_until_started_and_then_the_brain_follows() {
    let mut sim = Sim::running();
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Ended(Outcome::GaveUp {
            failures: 5,
            last_exit: "code 1".into(),
        }),
    ));
    sim.step(Input::Tick);
    sim.finish_stop();
    sim.step(Input::Tick);
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
    assert!(sim.desk.any_given_up());
    // A start request for the brain alone: refused by its watchdog's state.
    sim.place(request(BRAIN_A, Action::Start, "b1"));
    sim.scan();
    assert_eq!(
        sim.answers(BRAIN_A),
        vec![("b1".to_string(), AnswerOutcome::Failed)]
    );
    sim.place(request(WATCHDOG_A, Action::Start, "w1"));
    assert_eq!(starts(&sim.scan()), vec![WATCHDOG_A]);
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE);
    let given = sim.scan();
    assert_eq!(starts(&given), vec![BRAIN_A]);
    assert_eq!(
        sim.answers(WATCHDOG_A),
        vec![("w1".to_string(), AnswerOutcome::Done)]
    );
}

#[test]
fn a_watchdog_that_cannot_start_keeps_its_brain_from_starting_at_all() {
    let mut sim = Sim::new(desk_specs());
    // Its supervisor could not start it (restart = "never"): given up before it ran.
    let given = sim.step(Input::Report(
        WATCHDOG_A,
        Report::Ended(Outcome::GaveUp {
            failures: 1,
            last_exit: "cannot start wd: not found".into(),
        }),
    ));
    assert!(given.is_empty(), "{given:?}");
    let given = sim.step(Input::Tick);
    assert!(given.contains(&Command::DropLock(BRAIN_A)), "{given:?}");
    assert_eq!(starts(&given), Vec::<usize>::new());
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
    // A later start of the watchdog that is refused leaves the brain blocked.
    sim.begun[WATCHDOG_A] = Some(Begun::NotTaken {
        outcome: AnswerOutcome::Refused,
        why: "held by pid 5".into(),
    });
    sim.place(request(WATCHDOG_A, Action::Start, "w"));
    let given = sim.scan();
    assert_eq!(starts(&given), vec![WATCHDOG_A]);
    assert_eq!(
        sim.answers(WATCHDOG_A),
        vec![("w".to_string(), AnswerOutcome::Refused)]
    );
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::NotStarted);
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
}

#[test]
fn a_brain_that_crashes_while_its_watchdog_is_down_starts_again_only_once_it_runs() {
    let mut sim = Sim::running();
    // The watchdog's first restart is immediate; the brain's supervisor then finds the
    // watchdog not running and ends instead of restarting the brain.
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "signal 9".into(),
        },
    ));
    let given = sim.step(Input::Report(BRAIN_A, Report::Ended(Outcome::Stopped)));
    assert!(given.is_empty());
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    assert_eq!(
        sim.shown(BRAIN_A).reason,
        "waiting for its watchdog WATCHDOG_A to run"
    );
    sim.started(WATCHDOG_A);
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    sim.advance(SETTLE);
    assert_eq!(starts(&sim.step(Input::Tick)), vec![BRAIN_A]);
}

#[test]
fn a_restart_of_a_watchdog_restarts_its_brain_in_order_and_is_answered_for_the_new_run() {
    let mut sim = Sim::running();
    sim.place(request(WATCHDOG_A, Action::Restart, "r"));
    let given = sim.scan();
    assert_eq!(stops(&given), vec![(vec![WATCHDOG_A, BRAIN_A], Grace::Own)]);
    // Still the old run: not answered.
    sim.advance(SETTLE);
    sim.step(Input::Tick);
    assert!(sim.answers(WATCHDOG_A).is_empty());
    let given = sim.finish_stop();
    assert!(starts(&given).is_empty());
    assert_eq!(starts(&sim.scan()), vec![WATCHDOG_A]);
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Starting);
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE);
    assert_eq!(starts(&sim.scan()), vec![BRAIN_A]);
    assert_eq!(
        sim.answers(WATCHDOG_A),
        vec![("r".to_string(), AnswerOutcome::Done)]
    );
}

#[test]
fn a_stop_request_during_backoff_cancels_the_restart() {
    let mut sim = Sim::running();
    sim.step(Input::Report(
        GLOBAL,
        Report::Restarting {
            attempt: 2,
            delay: Duration::from_secs(1),
            last_exit: "code 1".into(),
        },
    ));
    assert_eq!(sim.shown(GLOBAL).state, Supervision::Restarting);
    sim.place(stop_request(GLOBAL));
    let given = sim.scan();
    assert_eq!(
        given
            .iter()
            .find(|c| matches!(c, Command::Stop { .. }))
            .cloned(),
        Some(Command::Stop {
            units: vec![GLOBAL],
            grace: Grace::Given(Duration::from_secs(3)),
            request: Some(GLOBAL),
        })
    );
    sim.finish_stop();
    sim.advance(Duration::from_secs(2));
    assert!(starts(&sim.scan()).is_empty());
    let shown = sim.shown(GLOBAL);
    assert_eq!(shown.state, Supervision::Stopped);
    assert!(
        shown
            .reason
            .starts_with("stopped on request by safe-shutdown (pid 7) at ")
    );
    assert!(!sim.desk.units[GLOBAL].wanted);
}

#[test]
fn a_stop_request_wins_over_a_restart_whose_stop_is_running() {
    let mut sim = Sim::running();
    sim.place(request(GLOBAL, Action::Restart, "r"));
    sim.scan();
    // Placed while the restart's stop runs: it waits, then wins before any start.
    sim.place(stop_request(GLOBAL));
    assert!(sim.scan().is_empty());
    sim.finish_stop();
    let given = sim.scan();
    assert!(starts(&given).is_empty(), "{given:?}");
    assert!(given.contains(&Command::RemoveStopRequest(GLOBAL)));
    assert_eq!(sim.shown(GLOBAL).state, Supervision::Stopped);
    assert_eq!(
        sim.answers(GLOBAL),
        vec![("r".to_string(), AnswerOutcome::Failed)]
    );
}

#[test]
fn concurrent_start_requests_start_it_once_and_all_are_answered() {
    let mut sim = Sim::running();
    sim.step(Input::Report(
        GLOBAL,
        Report::Ended(Outcome::GaveUp {
            failures: 5,
            last_exit: "code 1".into(),
        }),
    ));
    for id in ["a", "b", "c"] {
        sim.place(request(GLOBAL, Action::Start, id));
    }
    // A restart of a component that does not run is a start, and joins them.
    sim.place(request(GLOBAL, Action::Restart, "d"));
    let given = sim.scan();
    assert_eq!(starts(&given), vec![GLOBAL]);
    assert_eq!(sim.shown(GLOBAL).state, Supervision::Starting);
    sim.started(GLOBAL);
    sim.advance(SETTLE);
    assert!(starts(&sim.scan()).is_empty());
    let answers = sim.answers(GLOBAL);
    assert_eq!(answers.len(), 4);
    assert!(answers.iter().all(|(_, o)| *o == AnswerOutcome::Done));
}

#[test]
fn a_request_whose_requester_has_ended_is_answered_not_acted_on() {
    let mut sim = Sim::running();
    let given = sim.step(Input::Request {
        unit: GLOBAL,
        action: Action::Restart,
        id: "x".into(),
        requester: "pid 9".into(),
        alive: false,
    });
    assert!(stops(&given).is_empty());
    assert_eq!(
        sim.answers(GLOBAL),
        vec![("x".to_string(), AnswerOutcome::Failed)]
    );
}

/// Issue #24's race: `safe-shutdown --account A` had the brain in its graceful stop
/// when `restart WATCHDOG_A` came: the watchdog was stopped beside it, and the brain
/// ran unguarded for the rest of its stop. The core takes no request for a watchdog
/// while a brain of it is stopping.
#[test]
fn requests_in_order_a_watchdog_is_never_stopped_while_its_brain_is_stopping() {
    for second in [
        request(WATCHDOG_A, Action::Restart, "r"),
        stop_request(WATCHDOG_A),
        request(WATCHDOG_A, Action::Start, "s"),
    ] {
        let mut sim = Sim::running();
        sim.place(stop_request(BRAIN_A));
        assert_eq!(stops(&sim.scan())[0].0, vec![BRAIN_A]);
        sim.place(second.clone());
        assert!(!sim.desk.takes_requests(WATCHDOG_A));
        assert!(stops(&sim.scan()).is_empty(), "{second:?}");
        assert_eq!(sim.lock_dir.len(), 1, "the request waits in the lock dir");
        sim.finish_stop();
        assert!(sim.desk.takes_requests(WATCHDOG_A));
        sim.scan();
        assert!(sim.lock_dir.is_empty());
        assert_eq!(sim.shown(BRAIN_A).state, Supervision::Stopped);
    }
}

/// A start request for a brain joining a restart of its watchdog: the brain waits for
/// the new run of its watchdog (it was started beside the stopping one before).
#[test]
fn a_brain_started_while_its_watchdog_restarts_waits_for_the_new_run() {
    let mut sim = Sim::running();
    sim.place(stop_request(BRAIN_A));
    sim.scan();
    sim.finish_stop();
    sim.scan();
    sim.place(request(WATCHDOG_A, Action::Restart, "r"));
    sim.place(request(BRAIN_A, Action::Start, "s"));
    let given = sim.scan();
    assert_eq!(stops(&given), vec![(vec![WATCHDOG_A], Grace::Own)]);
    assert!(starts(&given).is_empty(), "{given:?}");
    sim.finish_stop();
    assert_eq!(starts(&sim.scan()), vec![WATCHDOG_A]);
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE);
    assert_eq!(starts(&sim.scan()), vec![BRAIN_A]);
}

#[test]
fn a_stop_request_for_a_brain_waiting_for_its_watchdog_drops_its_lock() {
    let mut sim = Sim::new(desk_specs());
    sim.place(stop_request(BRAIN_A));
    let given = sim.scan();
    assert!(given.contains(&Command::DropLock(BRAIN_A)));
    assert!(given.contains(&Command::RemoveStopRequest(BRAIN_A)));
    assert!(stops(&given).is_empty());
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE);
    assert!(starts(&sim.scan()).is_empty());
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Stopped);
}

#[test]
fn standby_a_brain_stands_by_with_its_watchdog_requests_are_refused_and_a_free_key_starts_it() {
    let mut specs = desk_specs();
    for unit in [WATCHDOG_A, BRAIN_A] {
        specs[unit].planned = false;
        specs[unit].elsewhere = true;
    }
    let t0 = Instant::now();
    let mut sim = Sim {
        begun: vec![None; specs.len()],
        desk: Desk::new(specs, &now_at(t0, Duration::ZERO)),
        t0,
        at: Duration::ZERO,
        stops: Vec::new(),
        lock_dir: Vec::new(),
        log: Vec::new(),
        pid: 100,
    };
    let reason = "stands by: host-b holds it, pid 4; starts here as soon as its key k is free";
    sim.begun[WATCHDOG_A] = Some(Begun::StandingBy {
        reason: reason.into(),
    });
    let given = sim.step(Input::Tick);
    assert_eq!(
        starts(&given),
        vec![GLOBAL, WATCHDOG_A, WATCHDOG_B, BRAIN_B]
    );
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Standby);
    let brain = sim.shown(BRAIN_A);
    assert_eq!(brain.state, Supervision::Standby);
    assert_eq!(
        brain.reason,
        format!("stands by with its watchdog WATCHDOG_A: {reason}")
    );
    assert!(sim.log.contains(&Command::Say(Note::DeskStarted {
        started: 3,
        standing_by: 2
    })));
    sim.place(request(WATCHDOG_A, Action::Start, "s"));
    sim.scan();
    assert_eq!(
        sim.answers(WATCHDOG_A),
        vec![("s".to_string(), AnswerOutcome::Refused)]
    );
    let given = sim.step(Input::KeyFree(WATCHDOG_A));
    assert!(given.contains(&Command::EndStandby(WATCHDOG_A)));
    assert_eq!(starts(&sim.step(Input::Tick)), vec![WATCHDOG_A]);
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE);
    assert_eq!(starts(&sim.step(Input::Tick)), vec![BRAIN_A]);
}

/// Self-fencing (`[cluster]`): the supervisors stop the brain, then the watchdog, on
/// their own and end as stopped; both stay wanted, the watchdog is started again (a
/// fresh take of lock and key), the brain only after it.
#[test]
fn fencing_ends_both_and_the_brain_comes_back_only_after_its_watchdog() {
    let mut sim = Sim::running();
    sim.step(Input::Report(BRAIN_A, Report::Ended(Outcome::Stopped)));
    sim.step(Input::Report(WATCHDOG_A, Report::Ended(Outcome::Stopped)));
    sim.begun[WATCHDOG_A] = Some(Begun::StandingBy {
        reason: "stands by: etcd is out of reach".into(),
    });
    let given = sim.step(Input::Tick);
    assert_eq!(starts(&given), vec![WATCHDOG_A]);
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Standby);
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Standby);
    // A stop request for the standby ends its watch and keeps it stopped.
    sim.place(stop_request(WATCHDOG_A));
    let given = sim.scan();
    assert!(given.contains(&Command::EndStandby(WATCHDOG_A)));
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Stopped);
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Stopped);
}

#[test]
fn the_view_is_derived_from_the_states_with_since_changing_with_the_state() {
    let mut sim = Sim::running();
    let before = sim.desk.view()[GLOBAL].clone();
    assert_eq!(before.state, Supervision::Running);
    assert!(before.pid.is_some());
    sim.advance(Duration::from_secs(1));
    sim.step(Input::Tick);
    assert_eq!(sim.desk.view()[GLOBAL].since, before.since);
    sim.step(Input::Report(
        GLOBAL,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "code 3".into(),
        },
    ));
    let after = sim.desk.view()[GLOBAL].clone();
    assert_eq!(after.state, Supervision::Restarting);
    assert_eq!(after.pid, None);
    assert!(after.since > before.since);
    assert!(
        after
            .reason
            .starts_with("exited (code 3); restart 1 in 0.0 s, at ")
    );
    for unit in 0..sim.desk.units.len() {
        let shown = sim.shown(unit);
        let view = &sim.desk.view()[unit];
        assert_eq!(
            (view.state, &view.reason, view.pid),
            (shown.state, &shown.reason, shown.pid)
        );
    }
}

#[test]
fn ending_fails_every_waiting_request_and_announces_nothing() {
    let mut sim = Sim::new(desk_specs());
    sim.place(request(GLOBAL, Action::Start, "s"));
    sim.scan();
    let given = sim.step(Input::Ending);
    assert!(given.is_empty());
    assert_eq!(
        sim.answers(GLOBAL),
        vec![("s".to_string(), AnswerOutcome::Failed)]
    );
}

/// The notes print the words the log always had (tests and people grep for them).
#[test]
fn notes_print_the_logs_words() {
    let rows = [
        (
            Note::StopRequested {
                name: "BRAIN_A".into(),
                requester: "pid 7".into(),
            },
            "BRAIN_A: stop requested by pid 7; it will not be restarted",
        ),
        (
            Note::DeskStarted {
                started: 3,
                standing_by: 0,
            },
            "desk started: 3 processes; Ctrl+C stops it",
        ),
        (
            Note::DeskStarted {
                started: 3,
                standing_by: 2,
            },
            "desk started: 3 processes, 2 standing by for another host; Ctrl+C stops it",
        ),
        (
            Note::LockRetaken {
                name: "BRAIN_A".into(),
                path: "/l/BRAIN_A.lock".into(),
                retaken: "anew".into(),
            },
            "LOCK LOST: lock file /l/BRAIN_A.lock was deleted or replaced while BRAIN_A held \
             it\nBRAIN_A: lock taken again: anew",
        ),
        (
            Note::MasterLockAgain(Err("held by pid 3".into())),
            "MASTER_LAUNCH: cannot take it again: held by pid 3",
        ),
        (
            Note::UnreadableStop {
                name: None,
                why: "bad".into(),
            },
            "bad; it still means: stop all",
        ),
    ];
    for (note, words) in rows {
        assert_eq!(note.to_string(), words);
    }
}

/// The five-unit desk with WATCHDOG_A under `ready = "notify"` (5 s) and, if given,
/// `heartbeat_secs` for it.
fn notify_specs(heartbeat: Option<Duration>) -> Vec<Spec> {
    let mut specs = desk_specs();
    specs[WATCHDOG_A].ready = Readiness::Notify {
        timeout: Duration::from_secs(5),
    };
    specs[WATCHDOG_A].heartbeat = heartbeat;
    specs
}

fn end_runs(commands: &[Command]) -> Vec<(usize, u32)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::EndRun { unit, pid, .. } => Some((*unit, *pid)),
            _ => None,
        })
        .collect()
}

/// A desk whose WATCHDOG_A said ready and whose BRAIN_A runs.
fn notify_running(heartbeat: Option<Duration>) -> Sim {
    let mut sim = Sim::new(notify_specs(heartbeat));
    for unit in [WATCHDOG_A, WATCHDOG_B, BRAIN_B, GLOBAL] {
        sim.started(unit);
    }
    let given = sim.says(WATCHDOG_A, Word::Ready);
    assert_eq!(starts(&given), vec![BRAIN_A]);
    sim.started(BRAIN_A);
    sim.log.clear();
    sim
}

#[test]
fn rule_15_a_brain_starts_when_its_watchdog_says_ready_not_after_a_settle_time() {
    let mut sim = Sim::new(notify_specs(None));
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE * 4);
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Starting);
    assert_eq!(
        sim.shown(BRAIN_A).reason,
        "waiting for its watchdog WATCHDOG_A to be ready"
    );
    // Ready the moment it says so: no settle wait after it.
    let given = sim.says(WATCHDOG_A, Word::Ready);
    assert_eq!(starts(&given), vec![BRAIN_A]);
    assert!(given.iter().any(|c| matches!(
        c,
        Command::Say(Note::Ready { name, after, .. }) if name == "WATCHDOG_A" && *after == SETTLE * 4
    )));
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Running);
    // Without the setting, the settle time still counts.
    let mut plain = Sim::new(desk_specs());
    plain.started(WATCHDOG_A);
    assert_eq!(
        starts(&plain.says(WATCHDOG_A, Word::Ready)),
        Vec::<usize>::new()
    );
}

#[test]
fn rule_15_a_watchdog_never_ready_is_ended_as_hung_and_its_brain_never_starts() {
    let mut sim = Sim::new(notify_specs(None));
    sim.started(WATCHDOG_A);
    let pid = sim.pid_of(WATCHDOG_A);
    sim.advance(Duration::from_secs(5));
    assert_eq!(end_runs(&sim.step(Input::Tick)), vec![]);
    sim.advance(Duration::from_millis(1));
    let given = sim.step(Input::Tick);
    assert_eq!(end_runs(&given), vec![(WATCHDOG_A, pid)]);
    assert_eq!(starts(&given), Vec::<usize>::new());
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Hung);
    assert!(
        sim.shown(WATCHDOG_A)
            .reason
            .contains("not ready within 5 s of its start"),
        "{:?}",
        sim.shown(WATCHDOG_A)
    );
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
    // Ended once, however many ticks follow; a late `ready` of the hung run is dropped.
    assert_eq!(end_runs(&sim.step(Input::Tick)), vec![]);
    assert_eq!(
        starts(&sim.says(WATCHDOG_A, Word::Ready)),
        Vec::<usize>::new()
    );
    // Its supervisor restarts it as after a crash: still hung (with why) until the
    // new run says ready, and the brain still held back.
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "hung: ...; code 0".into(),
        },
    ));
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Hung);
    sim.started(WATCHDOG_A);
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Hung);
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
    let given = sim.says(WATCHDOG_A, Word::Ready);
    assert_eq!(starts(&given), vec![BRAIN_A]);
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Running);
}

#[test]
fn rule_15_a_missed_heartbeat_stops_the_brain_first_then_ends_the_watchdogs_run() {
    let mut sim = notify_running(Some(Duration::from_secs(2)));
    let watchdog = sim.pid_of(WATCHDOG_A);
    // Heartbeats keep it guarding, however long it runs.
    for _ in 0..10 {
        sim.advance(Duration::from_millis(1500));
        let given = sim.says(WATCHDOG_A, Word::Alive);
        assert_eq!(stops(&given), vec![], "{given:?}");
    }
    sim.advance(Duration::from_millis(2000));
    assert_eq!(stops(&sim.step(Input::Tick)), vec![]);
    sim.advance(Duration::from_millis(1));
    let given = sim.step(Input::Tick);
    assert_eq!(stops(&given), vec![(vec![BRAIN_A], Grace::Own)]);
    assert_eq!(end_runs(&given), vec![], "the brain goes first");
    assert!(given.iter().any(|c| matches!(
        c,
        Command::Say(Note::Hung { name, why, .. })
            if name == "WATCHDOG_A" && why.contains("no heartbeat for 2.0 s (heartbeat_secs = 2)")
    )));
    // A heartbeat of the hung run cannot make it guard again.
    assert_eq!(end_runs(&sim.says(WATCHDOG_A, Word::Alive)), vec![]);
    assert_eq!(
        end_runs(&sim.step(Input::Tick)),
        vec![],
        "the brain still stops"
    );
    sim.finish_stop();
    assert_eq!(
        end_runs(&sim.step(Input::Tick)),
        vec![(WATCHDOG_A, watchdog)]
    );
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
    assert!(
        sim.desk.units[BRAIN_A].wanted,
        "it follows its watchdog back"
    );
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "hung".into(),
        },
    ));
    sim.started(WATCHDOG_A);
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    assert_eq!(starts(&sim.says(WATCHDOG_A, Word::Ready)), vec![BRAIN_A]);
}

#[test]
fn rule_15_not_ready_holds_the_brain_back_with_the_reason_and_ready_lets_it_follow() {
    let mut sim = notify_running(None);
    let given = sim.says(WATCHDOG_A, Word::NotReady("terminal lost".into()));
    assert_eq!(stops(&given), vec![(vec![BRAIN_A], Grace::Own)]);
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::NotReady);
    assert_eq!(sim.shown(WATCHDOG_A).reason, "not ready: terminal lost");
    sim.finish_stop();
    assert_eq!(sim.shown(BRAIN_A).state, Supervision::Blocked);
    assert!(
        sim.shown(BRAIN_A).reason.contains("terminal lost"),
        "{:?}",
        sim.shown(BRAIN_A)
    );
    assert_eq!(starts(&sim.step(Input::Tick)), Vec::<usize>::new());
    assert_eq!(starts(&sim.says(WATCHDOG_A, Word::Ready)), vec![BRAIN_A]);
    // The same word again changes nothing; a word of an earlier run is dropped.
    sim.started(BRAIN_A);
    let old = sim.pid_of(WATCHDOG_A) - 1;
    let given = sim.step(Input::Said {
        unit: WATCHDOG_A,
        pid: old,
        word: Word::NotReady("stale".into()),
    });
    assert_eq!(given, vec![]);
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Running);
}

#[test]
fn rule_15_a_crashed_notify_watchdog_takes_its_brain_down_until_the_new_run_is_ready() {
    let mut sim = notify_running(None);
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "code 1".into(),
        },
    ));
    sim.started(WATCHDOG_A);
    let given = sim.step(Input::Tick);
    assert_eq!(stops(&given), vec![(vec![BRAIN_A], Grace::Own)]);
    sim.finish_stop();
    assert_eq!(
        sim.shown(BRAIN_A).reason,
        "waiting for its watchdog WATCHDOG_A to be ready"
    );
    assert_eq!(starts(&sim.says(WATCHDOG_A, Word::Ready)), vec![BRAIN_A]);
}

#[test]
fn rule_15_the_view_shows_the_last_word_at_most_once_a_second() {
    let mut sim = notify_running(Some(Duration::from_secs(5)));
    let first = sim.desk.view()[WATCHDOG_A].alive_at.expect("said ready");
    assert_eq!(sim.desk.view()[WATCHDOG_A].heartbeat_secs, Some(5));
    sim.advance(Duration::from_millis(600));
    sim.says(WATCHDOG_A, Word::Alive);
    assert_eq!(sim.desk.view()[WATCHDOG_A].alive_at, Some(first));
    sim.advance(Duration::from_millis(600));
    sim.says(WATCHDOG_A, Word::Alive);
    let later = sim.desk.view()[WATCHDOG_A].alive_at.expect("alive");
    assert!((later - first - 1.2).abs() < 1e-6, "{later} {first}");
    assert_eq!(sim.desk.view()[BRAIN_A].alive_at, None);
}

#[test]
fn rule_15_heartbeats_without_notify_count_from_the_settle_and_a_new_run_settles_as_before() {
    let mut specs = desk_specs();
    specs[WATCHDOG_A].heartbeat = Some(Duration::from_secs(1));
    let mut sim = Sim::new(specs);
    for unit in [GLOBAL, WATCHDOG_A, WATCHDOG_B, BRAIN_B] {
        sim.started(unit);
    }
    sim.advance(SETTLE);
    assert_eq!(starts(&sim.step(Input::Tick)), vec![BRAIN_A]);
    sim.started(BRAIN_A);
    let watchdog = sim.pid_of(WATCHDOG_A);
    // Never said a word: hung a heartbeat after its start.
    sim.advance(Duration::from_millis(501));
    let given = sim.step(Input::Tick);
    assert_eq!(stops(&given), vec![(vec![BRAIN_A], Grace::Own)]);
    sim.finish_stop();
    assert_eq!(
        end_runs(&sim.step(Input::Tick)),
        vec![(WATCHDOG_A, watchdog)]
    );
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "hung".into(),
        },
    ));
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Hung);
    sim.started(WATCHDOG_A);
    sim.advance(SETTLE);
    let given = sim.says(WATCHDOG_A, Word::Alive);
    assert_eq!(starts(&given), vec![BRAIN_A]);
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Running);
    // A later plain crash is a crash, not a hang.
    sim.step(Input::Report(
        WATCHDOG_A,
        Report::Restarting {
            attempt: 1,
            delay: Duration::ZERO,
            last_exit: "code 1".into(),
        },
    ));
    assert_eq!(sim.shown(WATCHDOG_A).state, Supervision::Restarting);
}
