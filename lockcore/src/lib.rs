//! `lockcore`: the library every desk tool stands on.
//!
//! It owns the one invariant of the product, *at most one live instance of each lock
//! name*, and everything the tools share around it:
//!
//! - [`autostart`]: starting the desk at logon or boot (Task Scheduler, systemd user unit).
//! - [`lock`]: kernel-held lock files: acquire, release, inspect, scan, remove-if-stale.
//! - [`logs`]: time-stamped, size-rotated log files.
//! - [`events`]: the desk's history as JSON lines (`events.jsonl`), its schema and reader.
//! - [`record`]: the JSON record inside a lock file, compatible with the older tool's.
//! - [`process`]: process identity (pid + start time) and the process table.
//! - [`copies`]: what counts as a running copy of a component (DESIGN.md rule 9).
//! - [`config`]: `fleet.toml`, its model and its validation.
//! - [`cluster`]: locks shared between machines through etcd (`[cluster]`; optional).
//! - [`select`]: which accounts a command acts on (`--only`, `--account`).
//! - [`desk`]: one snapshot of locks and processes, and the problems in it.
//! - [`render`]: the desk table (check-procs, `master-launch --replace`) and check-procs' JSON.
//! - [`shutdown`]: what to stop of the desk, and the confirmed, audited, ordered stop
//!   (safe-shutdown, `master-launch --replace`).
//! - [`stop`]: stop requests, the way anyone asks a lock holder to stop.
//! - [`control`]: start and restart requests to the orchestrator, and the view it publishes.
//! - [`mailbox`]: which request files wait in a lock dir, from one read of the folder.
//! - [`stop_engine`]: stages in the safe order, deadlines, graceful-then-forced: every stop.
//! - [`graceful`]: asking a process we did not start to stop (SIGTERM, CTRL_BREAK, close).
//! - [`exit`]: the exit codes every tool uses.
//! - [`introspect`]: the field and variant names serde knows, for the generated docs.
//! - [`output`]: colour decisions and error printing at the binary edge.
//! - [`printer`]: stdout and stderr that never panic or block (`outln!`, `errln!`).
//!
//! See `ARCHITECTURE.md` at the repository root for how the pieces fit.

pub mod autostart;
pub mod cluster;
pub mod config;
pub mod console;
pub mod control;
pub mod copies;
pub mod copy_scan;
pub mod desk;
pub(crate) mod entry;
pub mod events;
pub mod exit;
pub mod graceful;
pub mod introspect;
pub mod lock;
pub mod logs;
pub mod mailbox;
pub mod name;
pub(crate) mod os_file;
pub mod output;
pub mod path_error;
pub mod printer;
pub mod process;
pub mod record;
pub mod render;
pub mod select;
pub mod shutdown;
pub mod stop;
pub mod stop_engine;
#[cfg(windows)]
pub mod win_handle;
#[cfg(windows)]
pub mod win_job;
#[cfg(windows)]
pub mod win_token;

pub use config::{Component, ConfigError, Fleet, Role};
pub use copies::{CopyRule, Verdict};
pub use desk::{ComponentState, ComponentView, DeskSnapshot, Problem, ProblemKind, RunningCopy};
pub use exit::ExitCode;
pub use lock::{
    Acquire, HeldLock, Holder, LockClaim, LockDir, LockError, LockLost, LockScan, LockState,
    LockStatus, LockWatcher, MachineHolder, Removal, Retaken, StrayEntry,
};
pub use process::{ProcessIdentity, ProcessInfo, ProcessProbe, ProcessTable, ProcessTree};
pub use record::LockRecord;
pub use stop::StopRequest;
pub use stop_engine::{Cutoff, Grace, Stage, StopOutcome, Stoppable};
