//! `lockcore`: the library every desk tool stands on.
//!
//! It owns the one invariant of the product, *at most one live instance of each lock
//! name*, and everything the tools share around it:
//!
//! - [`lock`]: kernel-held lock files: acquire, release, inspect, scan, remove-if-stale.
//! - [`logs`]: time-stamped, size-rotated log files.
//! - [`record`]: the JSON record inside a lock file, compatible with the older tool's.
//! - [`process`]: process identity (pid + start time) and command-line matching.
//! - [`config`]: `fleet.toml`, its model and its validation.
//! - [`desk`]: one snapshot of locks and processes, and the problems in it.
//! - [`stop`]: stop requests, the way anyone asks a lock holder to stop.
//! - [`graceful`]: asking a process we did not start to stop (SIGTERM, CTRL_BREAK, close).
//! - [`exit`]: the exit codes every tool uses.
//! - [`output`]: colour decisions and error printing at the binary edge.
//!
//! See `ARCHITECTURE.md` at the repository root for how the pieces fit.

pub mod config;
pub mod desk;
pub mod exit;
pub mod graceful;
pub mod lock;
pub mod logs;
pub mod output;
pub mod process;
pub mod record;
pub mod stop;

pub use config::{Component, ConfigError, Fleet, Role};
pub use desk::{ComponentView, DeskSnapshot, Problem, ProblemKind, RunningCopy};
pub use exit::ExitCode;
pub use lock::{
    Acquire, HeldLock, Holder, LockClaim, LockDir, LockError, LockLost, LockScan, LockState,
    LockStatus, LockWatcher, Removal, StrayEntry,
};
pub use process::{ProcessIdentity, ProcessInfo, ProcessProbe, ProcessTable, ProcessTree};
pub use record::LockRecord;
pub use stop::StopRequest;
