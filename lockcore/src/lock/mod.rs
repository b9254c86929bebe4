//! Lock files: acquire, release, inspect, scan, and remove-if-stale.
//!
//! A lock named `NAME` is the file `<lock_dir>/NAME.lock`. It is *held* while some
//! process holds an OS lock on it (DESIGN.md rule 1); the JSON [`LockRecord`] inside only
//! says who. The protocol, shared by every tool:
//!
//! - **Machine-wide** (DESIGN.md rule 17): every lock but `MASTER_LAUNCH` first takes
//!   its machine-wide name ([`machine_name`]; `machine.rs`), which no copy of the desk
//!   folder and no deleted lock folder can get around; the file lock comes second.
//! - **Acquire**: open (create, never truncate), try the exclusive lock, then check the
//!   path still names the file we locked (a release may have removed it in between:
//!   rule 2), then read what is there (a live legacy record still counts as held:
//!   rule 5), and only then write our record.
//! - **Release**: remove the file while still holding the lock, after checking that
//!   the path still names our file; free the machine-wide name last.
//! - **Verify** ([`HeldLock::verify`], [`LockWatcher::check`]): a holder whose file has
//!   gone (deleted by hand, or the whole lock folder) creates, locks and records it
//!   again, and the caller reports that loudly ([`Retaken`]).
//! - **Inspect**: a *shared* try-lock. It cannot succeed while a holder holds the
//!   exclusive lock, so it tells "held" from "not held"; and a starter that finds only
//!   shared lockers in its way retries instead of giving up, so inspection never makes
//!   a start fail.
//! - **Remove-if-stale**: exclusive try-lock, identity check, classify, remove under the
//!   lock. A starter that meets this brief exclusive lock sees a record naming no live
//!   holder and retries.
//!
//! Entries the tools did not write (DESIGN.md rule 12): an entry named `*.lock` that is
//! not a regular file (a symlink, FIFO, directory, device) is never opened for reading
//! or writing; scans report it as a [`StrayEntry`] and otherwise skip it. A record is
//! read only up to [`MAX_RECORD_BYTES`]; a bigger file is `corrupt`.

mod machine;

use machine::{MachineClaim, MachineLock};

use crate::os_file as os;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cluster::{ClusterClaim, ClusterError, ClusterLock, EtcdClient, FenceWatch};
use crate::config::{ClusterConfig, Fleet, MASTER_LOCK_NAME};
use crate::copies::{CopyRule, runs_python};
pub use crate::name::{BadName, MAX_LOCK_NAME_LEN, check_lock_name};
use crate::process::{ProcessIdentity, ProcessProbe, ProcessTableError};
use crate::record::{LockRecord, format_local, local_timestamp_now};
use crate::stop::StopRequest;

/// How long a starter waits when the lock is held but the record names no live holder:
/// a new holder about to write its record, a `lock-gc` mid-check, or a crashed Windows
/// holder whose handle is not yet released.
const UNDECIDED_WAIT: Duration = Duration::from_secs(1);
/// How long a starter retries while only readers (shared lockers: inspections) are in
/// its way. Each holds the lock for a moment; five seconds of them without a gap means
/// something keeps a shared lock on the file, and the start fails with a message
/// instead of waiting for ever.
const READERS_WAIT: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(2);
/// Between looks at a machine-wide name held by nobody in this folder: each look
/// inspects the lock file too.
const MACHINE_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long remove-if-stale waits on a lock whose record names no live holder.
const BUSY_WAIT: Duration = Duration::from_millis(200);
pub use crate::record::MAX_RECORD_BYTES;

/// The machine-wide name lock `name` takes on a desk without `[cluster]` (DESIGN.md
/// rule 17; `MASTER_LAUNCH` takes none): what `python/process_lock.py` computes too.
pub fn machine_name(name: &str) -> String {
    machine::name_for(name, None)
}

/// A folder of lock files, and what the desk's components look like when running:
/// an older tool's record is judged against them (DESIGN.md rule 11).
#[derive(Debug, Clone)]
pub struct LockDir {
    dir: PathBuf,
    /// Copy rules by lock name, lower case (Windows file names ignore case).
    copy_rules: BTreeMap<String, CopyRule>,
    /// `[cluster]`: the components whose locks also take an etcd key.
    cluster: Option<ClusterPart>,
}

/// What a lock dir needs to take cluster keys.
#[derive(Debug, Clone)]
struct ClusterPart {
    client: Arc<EtcdClient>,
    config: ClusterConfig,
    /// The component lock names, lower case: never `MASTER_LAUNCH`, which each
    /// machine's orchestrator holds for itself.
    names: Vec<String>,
}

/// What the caller wants recorded about the process the lock is for.
#[derive(Debug, Clone, Default)]
pub struct LockClaim {
    pub account: Option<String>,
    pub command: Vec<String>,
}

/// The outcome of [`LockDir::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// We hold it now; dropping the value releases it.
    Acquired(HeldLock),
    /// Someone else holds it.
    Held(Holder),
}

/// Who holds a lock that could not be taken.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    pub name: String,
    pub path: PathBuf,
    /// The holder's record; `None` if it could not be read.
    pub record: Option<LockRecord>,
    /// Held by a live process named in an older tool's PID file, not by an OS lock.
    pub legacy: bool,
    /// Held on another host, through this etcd key (`[cluster]`): a standby waits for
    /// it rather than refusing.
    pub cluster_key: Option<String>,
    /// Held on this machine through the machine-wide lock (DESIGN.md rule 17) by a
    /// process that holds no lock file here: a copy of the desk folder, or a desk
    /// whose lock folder is another.
    pub machine: Option<MachineHolder>,
}

/// Who holds a lock's machine-wide name, as far as this process can tell.
#[derive(Debug, Clone, Serialize)]
pub struct MachineHolder {
    /// Linux: found through the socket's inode, for processes of our own user.
    pub pid: Option<u32>,
    /// Its command line, when the pid is known.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Some(machine), None) = (&self.machine, &self.record) {
            return write_machine_holder(f, &self.name, machine);
        }
        write!(f, "{} is held", self.name)?;
        match &self.record {
            Some(record) if self.legacy => write!(
                f,
                " by pid {}, recorded at {} by the older PID-file tool (a legacy lock)",
                record.pid,
                record.timestamp.as_deref().unwrap_or("an unknown time")
            )?,
            Some(record) => {
                write!(f, " by pid {}", record.pid)?;
                if let Some(start) = record.pid_start {
                    write!(f, " (started {})", format_local(start))?;
                }
                if let Some(holder) = record.holder_pid.filter(|&h| h != record.pid) {
                    write!(f, ", lock held by its launcher pid {holder}")?;
                }
                if let Some(host) = &record.host {
                    write!(f, " on {host}")?;
                }
            }
            None => write!(f, " by a process whose record is unreadable")?,
        }
        write!(
            f,
            "; see it with `check-procs`, stop it with `safe-shutdown`"
        )
    }
}

fn write_machine_holder(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    machine: &MachineHolder,
) -> std::fmt::Result {
    write!(f, "{name} is held on this machine")?;
    match (machine.pid, &machine.command) {
        (Some(pid), Some(command)) => write!(f, " by pid {pid} (`{command}`)")?,
        (Some(pid), None) => write!(f, " by pid {pid}")?,
        _ => write!(f, " by another process")?,
    }
    write!(
        f,
        ", outside this lock folder: another desk on this machine (a copied desk folder?) \
         runs {name}, and only one copy may run per machine; find it with `check-procs` \
         in that desk's folder and stop it with `safe-shutdown` there, or use that desk"
    )
}

/// A lock this process holds. Dropping it releases the lock and removes the file.
#[derive(Debug)]
pub struct HeldLock {
    name: String,
    path: PathBuf,
    /// The open, locked file and its record, shared with [`LockWatcher`]s (one handle:
    /// on Windows a second one would keep the release from deleting the file).
    file: Arc<Mutex<LockFile>>,
    /// The etcd key, with `[cluster]`: released before the local lock.
    cluster: Option<ClusterLock>,
    /// The machine-wide name (DESIGN.md rule 17): taken before the file, freed after it.
    machine: Option<MachineLock>,
}

/// The file half of a held lock.
#[derive(Debug)]
struct LockFile {
    /// `None` once released.
    file: Option<File>,
    record: LockRecord,
    /// Whether the machine-wide name backs this lock, so that a lost file can be
    /// created again knowing nobody else could take the lock meanwhile.
    machine_wide: bool,
}

fn lock_state(state: &Mutex<LockFile>) -> MutexGuard<'_, LockFile> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The state of a lock file, as `check-procs` and `lock-gc` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockState {
    /// An OS lock is held on it.
    Running,
    /// Nobody holds it; safe to remove.
    Stale,
    /// Nobody holds it and its record cannot be read; safe to remove.
    Corrupt,
    /// No OS lock, but an older tool's record names a live process that started no
    /// later than the record: treated as held, never removed automatically.
    Legacy,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Running => "running",
            LockState::Stale => "stale",
            LockState::Corrupt => "corrupt",
            LockState::Legacy => "legacy",
        }
    }

    /// Whether this state keeps others from taking the lock.
    pub fn is_held(self) -> bool {
        matches!(self, LockState::Running | LockState::Legacy)
    }
}

/// One inspected lock file.
#[derive(Debug, Clone, Serialize)]
pub struct LockStatus {
    pub name: String,
    pub path: PathBuf,
    pub state: LockState,
    pub record: Option<LockRecord>,
    /// Why the state is what it is, in a short phrase.
    pub detail: String,
}

/// A `*.lock` or `*.stop` entry of the lock dir that the tools cannot use: not a
/// regular file (a symlink, FIFO, directory, device), or one that could not be opened.
/// It is reported and otherwise left alone (DESIGN.md rule 12).
#[derive(Debug, Clone, Serialize)]
pub struct StrayEntry {
    /// The entry's file name, e.g. `BRAIN_ATLAS.lock`.
    pub file_name: String,
    pub path: PathBuf,
    /// What it is, e.g. "a symbolic link", or why it could not be read.
    pub what: String,
}

/// Everything a scan of the lock dir found.
#[derive(Debug, Clone, Default)]
pub struct LockScan {
    /// The lock files, inspected, sorted by name.
    pub locks: Vec<LockStatus>,
    /// Entries named like locks or stop requests that are not usable files.
    pub strays: Vec<StrayEntry>,
}

/// The outcome of [`LockDir::remove_if_stale`].
#[derive(Debug, Clone)]
pub enum Removal {
    /// The file was stale or corrupt and is gone.
    Removed(LockStatus),
    /// The file is held (or legacy-held, or busy) and was left alone.
    Kept(LockStatus),
    /// There was no such file, or it was replaced while we looked.
    Missing,
}

/// The path no longer names the file this holder locked.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "lock file {} was deleted or replaced while {name} held it, so another process could \
     take {name} now; check for a duplicate with `check-procs`",
    path.display()
)]
pub struct LockLost {
    pub name: String,
    pub path: PathBuf,
}

/// A held lock whose file had gone (deleted by hand, or its whole folder) and that its
/// holder created and recorded again: reported loudly by whoever checked.
#[derive(Debug, Clone)]
pub struct Retaken {
    pub name: String,
    pub path: PathBuf,
    /// The lock folder had gone too and was created again.
    pub folder_recreated: bool,
    /// The machine-wide name was held throughout, so nobody else had the lock meanwhile.
    pub machine_wide: bool,
}

impl std::fmt::Display for Retaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lock file {} was deleted or replaced while {} held it{}; ",
            self.path.display(),
            self.name,
            if self.folder_recreated {
                " (its whole lock folder was deleted, and was created again)"
            } else {
                ""
            }
        )?;
        if self.machine_wide {
            write!(
                f,
                "its machine-wide lock stayed held, so nobody could take {} meanwhile; ",
                self.name
            )?;
        }
        write!(
            f,
            "the lock file was taken again and its record written again. Find out who \
             deletes lock files: only the desk tools may"
        )
    }
}

/// Errors from lock operations.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "`{name}` is not a valid lock name: use letters, digits, `_` and `-`, at most {MAX_LOCK_NAME_LEN}, not a Windows device name"
    )]
    InvalidName { name: String },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is {what}, not a regular file: the tools neither read, write nor remove it; \
         find out what made it and remove it by hand",
        path.display()
    )]
    NotAFile { path: PathBuf, what: &'static str },
    #[error(
        "cannot take {}: nobody holds it, but other programs kept it locked for reading \
         (shared) for {} s without a gap; find what keeps it open and start again",
        path.display(),
        READERS_WAIT.as_secs()
    )]
    KeptBusy { path: PathBuf },
    #[error(transparent)]
    Lost(#[from] LockLost),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "{}: a stop was requested by {} through etcd; nothing takes it while that request \
         stands (it ends with its deadline)",
        request.name,
        request.requester()
    )]
    StopRequested { request: StopRequest },
    #[error(transparent)]
    ProcessTable(#[from] ProcessTableError),
    #[error(
        "cannot take the machine-wide lock for {name} (`{machine_name}`): {source}; \
         without it a copy of the desk folder could run {name} twice, so nothing is started"
    )]
    Machine {
        name: String,
        machine_name: String,
        #[source]
        source: io::Error,
    },
}

fn io_error<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> LockError + 'p {
    move |source| match os::not_a_file(&source) {
        Some(what) => LockError::NotAFile {
            path: path.to_path_buf(),
            what,
        },
        None => LockError::Io {
            action,
            path: path.to_path_buf(),
            source,
        },
    }
}

impl LockDir {
    /// A lock folder with no knowledge of components: an older tool's record is then
    /// possibly genuine only when it names a Python interpreter.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            copy_rules: BTreeMap::new(),
            cluster: None,
        }
    }

    /// With `[cluster]`, a component's lock is the local lock and then its etcd key
    /// ([`ClusterLock`]), released in the reverse order. Without it, nothing changes.
    pub fn with_cluster(mut self, fleet: &Fleet) -> Self {
        self.cluster = fleet.cluster.as_ref().map(|config| ClusterPart {
            client: Arc::new(EtcdClient::from_config(config)),
            config: config.clone(),
            names: fleet
                .components()
                .map(|c| c.lock_name.to_ascii_lowercase())
                .collect(),
        });
        self
    }

    /// Takes the cluster key of a lock just taken locally, if the desk has a cluster.
    /// Held elsewhere: the local lock goes, and the answer names the other host.
    fn take_cluster_key(&self, mut held: HeldLock) -> Result<Acquire, LockError> {
        let Some(part) = &self.cluster else {
            return Ok(Acquire::Acquired(held));
        };
        if !part.names.contains(&held.name.to_ascii_lowercase()) {
            return Ok(Acquire::Acquired(held));
        }
        let record = held.update_record(|r| r.host = Some(part.config.host.clone()))?;
        match ClusterLock::acquire(Arc::clone(&part.client), &part.config, &held.name, &record)? {
            ClusterClaim::Held(key) => {
                held.cluster = Some(key);
                Ok(Acquire::Acquired(held))
            }
            ClusterClaim::StopRequested(request) => {
                held.release()?;
                Err(LockError::StopRequested { request })
            }
            ClusterClaim::HeldElsewhere(other) => {
                let key = part.config.lock_key(&held.name);
                let holder = Holder {
                    name: held.name.clone(),
                    path: PathBuf::from(&key),
                    record: serde_json::from_str(&other.value).ok(),
                    legacy: false,
                    cluster_key: Some(key),
                    machine: None,
                };
                held.release()?;
                Ok(Acquire::Held(holder))
            }
        }
    }

    /// With `[cluster]`: waits on a thread of its own until the key of a lock held on
    /// another host is free, then calls `on_free` (a standby's wait; see
    /// [`crate::cluster::spawn_free_watch`]). `None` without a cluster.
    pub fn wait_until_free(
        &self,
        key: &str,
        keep_waiting: impl Fn() -> bool + Send + 'static,
        on_free: impl FnOnce() + Send + 'static,
    ) -> Option<io::Result<JoinHandle<()>>> {
        let part = self.cluster.as_ref()?;
        Some(crate::cluster::spawn_free_watch(
            Arc::clone(&part.client),
            key.to_string(),
            part.config.lease_ttl,
            keep_waiting,
            on_free,
        ))
    }

    /// With `[cluster]`: watches the desk's stop requests in etcd (placed by
    /// safe-shutdown on another host) on a thread of its own, and writes each as this
    /// lock dir's `<NAME>.stop`, where the orchestrator acts on it as on a local one.
    /// `None` without a cluster.
    pub fn relay_cluster_stop_requests(
        &self,
        keep_watching: impl Fn() -> bool + Send + 'static,
        on_relayed: impl Fn(Result<&StopRequest, String>) + Send + 'static,
    ) -> Option<io::Result<JoinHandle<()>>> {
        let part = self.cluster.as_ref()?;
        let dir = self.dir.clone();
        let names = part.names.clone();
        Some(crate::cluster::spawn_stop_watch(
            Arc::clone(&part.client),
            &part.config,
            keep_watching,
            move |request| {
                // Only this desk's components: each host's orchestrator is stopped on its
                // own host, and a key for any other name (placed by hand, or by a desk
                // with another fleet.toml) would leave a `<NAME>.stop` in the lock dir
                // that nothing ever removes (master-launch clears its components' own).
                if !names.contains(&request.name.to_ascii_lowercase())
                    || check_lock_name(&request.name).is_err()
                {
                    return;
                }
                match request.write(&dir) {
                    Ok(_) => on_relayed(Ok(&request)),
                    Err(e) => on_relayed(Err(format!(
                        "cannot relay the stop request for {} from etcd into {}: {e}",
                        request.name,
                        dir.display()
                    ))),
                }
            },
        ))
    }

    /// The desk's lock folder, knowing how each of its components runs.
    pub fn for_fleet(fleet: &Fleet) -> Self {
        fleet
            .components()
            .fold(LockDir::new(&fleet.lock_dir), |dir, c| {
                dir.with_copy_rule(&c.lock_name, c.copy_rule.clone())
            })
    }

    /// Adds how the component holding lock `name` runs.
    pub fn with_copy_rule(mut self, name: &str, rule: CopyRule) -> Self {
        self.copy_rules.insert(name.to_ascii_lowercase(), rule);
        self
    }

    fn copy_rule(&self, name: &str) -> Option<&CopyRule> {
        self.copy_rules.get(&name.to_ascii_lowercase())
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `<lock_dir>/<name>.lock`, for a valid lock name ([`check_lock_name`]): it
    /// cannot escape the folder, nor be a device on Windows.
    pub fn lock_path(&self, name: &str) -> Result<PathBuf, LockError> {
        if check_lock_name(name).is_err() {
            return Err(LockError::InvalidName { name: name.into() });
        }
        Ok(self.dir.join(format!("{name}.lock")))
    }

    /// Takes the lock `name` for this process, or says who holds it.
    pub fn acquire(
        &self,
        name: &str,
        claim: &LockClaim,
        probe: &mut ProcessProbe,
    ) -> Result<Acquire, LockError> {
        let path = self.lock_path(name)?;
        std::fs::create_dir_all(&self.dir).map_err(io_error("create lock folder", &self.dir))?;
        // The machine-wide name first, the file second (and freed in the reverse order):
        // every taker goes the same way, so two can never block each other half-way.
        let machine = match self.take_machine_lock(name, &path, probe)? {
            Ok(machine) => machine,
            Err(holder) => return Ok(Acquire::Held(*holder)),
        };
        let started = Instant::now();
        loop {
            let file = match os::open(&path, true) {
                Ok(file) => file,
                Err(e) if os::is_transient(&e) && started.elapsed() < UNDECIDED_WAIT => {
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
                Err(e) => return Err(io_error("open lock file", &path)(e)),
            };
            if os::try_lock_exclusive(&file).map_err(io_error("lock", &path))? {
                if !names_file(&path, &file) {
                    continue; // released and removed between our open and our lock
                }
                let existing = read_record(&file).map_err(io_error("read", &path))?;
                let rule = self.copy_rule(name);
                if let Some(holder) = live_legacy_holder(name, &path, existing.bytes(), rule, probe)
                {
                    return Ok(Acquire::Held(holder));
                }
                let held = HeldLock::start(name, path, file, claim, machine, probe)?;
                return self.take_cluster_key(held);
            }
            if os::try_lock_shared(&file).map_err(io_error("lock", &path))? {
                // Only inspectors were in the way: not held. Let go and try again.
                os::unlock(&file).map_err(io_error("unlock", &path))?;
                if started.elapsed() >= READERS_WAIT {
                    return Err(LockError::KeptBusy { path });
                }
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            let record = read_record(&file).ok().and_then(|r| r.parse());
            if names_live_holder(record.as_ref(), probe) || started.elapsed() >= UNDECIDED_WAIT {
                return Ok(Acquire::Held(Holder {
                    name: name.into(),
                    path,
                    record,
                    legacy: false,
                    cluster_key: None,
                    machine: None,
                }));
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// The machine-wide name of lock `name` (DESIGN.md rule 17); `None` for
    /// `MASTER_LAUNCH`, which stays per desk folder: two different desks may run on one
    /// machine, each with its orchestrator, while their components are unique machine-wide.
    /// With `[cluster]` and a host other than this machine's own name, the name includes
    /// that host, so that tests can run two "hosts" on one machine. A desk under its own
    /// host name takes the plain name, the one `process_lock.py` takes (it reads no config).
    fn machine_name(&self, name: &str) -> Option<String> {
        if name.eq_ignore_ascii_case(MASTER_LOCK_NAME) {
            return None;
        }
        let own = gethostname::gethostname();
        let host = self
            .cluster
            .as_ref()
            .map(|part| part.config.host.as_str())
            .filter(|host| {
                !own.to_str()
                    .is_some_and(|own| own.eq_ignore_ascii_case(host))
            });
        Some(machine::name_for(name, host))
    }

    /// Takes the machine-wide name of lock `name`, or says who holds it. Held by a
    /// process that holds the file here too: that holder, from its record. Held by
    /// nobody here: a holder releasing (file first, name next) or just dead frees it in
    /// a moment, so this waits [`UNDECIDED_WAIT`] before naming a holder elsewhere.
    fn take_machine_lock(
        &self,
        name: &str,
        path: &Path,
        probe: &mut ProcessProbe,
    ) -> Result<Result<Option<MachineLock>, Box<Holder>>, LockError> {
        let Some(machine_name) = self.machine_name(name) else {
            return Ok(Ok(None));
        };
        let started = Instant::now();
        loop {
            let claim =
                MachineLock::try_take(&machine_name).map_err(|source| LockError::Machine {
                    name: name.into(),
                    machine_name: machine_name.clone(),
                    source,
                })?;
            let pid = match claim {
                MachineClaim::Taken(lock) => return Ok(Ok(Some(lock))),
                MachineClaim::Held(pid) => pid,
            };
            // Only the name is polled while waiting: a holder that is releasing, or dead,
            // frees it in a moment. Reading the file in this loop would keep a race's
            // winner (which holds the name before its file) from its exclusive lock:
            // fifteen losers' shared probes did, under Wine. The file is read once, at
            // the end, to name a holder in this folder (`inspect` waits for its record).
            if started.elapsed() >= UNDECIDED_WAIT {
                let here = match self.inspect(name, probe)? {
                    Some(status) if status.state.is_held() => Some(status),
                    _ => None,
                };
                let machine = MachineHolder {
                    pid,
                    command: pid
                        .and_then(|pid| probe.info(pid))
                        .map(|info| info.cmd.join(" ")),
                };
                return Ok(Err(Box::new(Holder {
                    name: name.into(),
                    path: path.to_path_buf(),
                    legacy: here.as_ref().is_some_and(|s| s.state == LockState::Legacy),
                    record: here.and_then(|s| s.record),
                    cluster_key: None,
                    machine: Some(machine),
                })));
            }
            std::thread::sleep(MACHINE_RETRY_PAUSE);
        }
    }

    /// The state of one lock; `None` if there is no such file.
    pub fn inspect(
        &self,
        name: &str,
        probe: &mut ProcessProbe,
    ) -> Result<Option<LockStatus>, LockError> {
        let path = self.lock_path(name)?;
        let started = Instant::now();
        loop {
            let file = match os::open(&path, false) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if os::is_transient(&e) && started.elapsed() < UNDECIDED_WAIT => {
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
                Err(e) => return Err(io_error("open lock file", &path)(e)),
            };
            if os::try_lock_shared(&file).map_err(io_error("lock", &path))? {
                if !names_file(&path, &file) {
                    continue;
                }
                let read = read_record(&file).map_err(io_error("read", &path));
                os::unlock(&file).map_err(io_error("unlock", &path))?;
                let rule = self.copy_rule(name);
                return Ok(Some(classify_unheld(name, path, &read?, rule, probe)));
            }
            let record = read_record(&file).map_err(io_error("read", &path))?.parse();
            if names_live_holder(record.as_ref(), probe) || started.elapsed() >= UNDECIDED_WAIT {
                let detail = match &record {
                    Some(_) => "an OS lock is held on it".to_string(),
                    None => "an OS lock is held on it; its record is unreadable".to_string(),
                };
                return Ok(Some(LockStatus {
                    name: name.into(),
                    path,
                    state: LockState::Running,
                    record,
                    detail,
                }));
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// Every `*.lock` file in the folder, inspected, sorted by name. A missing folder
    /// has no locks. Entries that are not regular files are left out (see [`Self::scan_all`]).
    pub fn scan(&self, probe: &mut ProcessProbe) -> Result<Vec<LockStatus>, LockError> {
        Ok(self.scan_all(probe)?.locks)
    }

    /// Every `*.lock` file inspected, and every `*.lock`/`*.stop` entry that is not a
    /// usable file. Only an unreadable folder is an error: one bad entry never keeps
    /// the others from being seen (the emergency stop depends on this scan).
    pub fn scan_all(&self, probe: &mut ProcessProbe) -> Result<LockScan, LockError> {
        let mut scan = LockScan {
            locks: Vec::new(),
            strays: self.stray_entries()?,
        };
        for name in self.lock_names()? {
            match self.inspect(&name, probe) {
                Ok(Some(status)) => scan.locks.push(status),
                Ok(None) => {}
                // Replaced by something else since the folder was read, or unreadable.
                Err(LockError::NotAFile { path, what }) => scan.strays.push(StrayEntry {
                    file_name: format!("{name}.lock"),
                    path,
                    what: what.to_string(),
                }),
                Err(LockError::Io {
                    action,
                    path,
                    source,
                }) => scan.strays.push(StrayEntry {
                    file_name: format!("{name}.lock"),
                    path,
                    what: format!("cannot {action} it: {source}"),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(scan)
    }

    /// The names of the `*.lock` entries in the folder that are regular files, sorted.
    pub fn lock_names(&self) -> Result<Vec<String>, LockError> {
        let mut names: Vec<String> = self
            .entries()?
            .into_iter()
            .filter(|(_, _, non_regular)| non_regular.is_none())
            .filter_map(|(file_name, _, _)| {
                let name = file_name.strip_suffix(".lock")?;
                self.lock_path(name).is_ok().then(|| name.to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Entries that are neither lock files nor stop requests (nor a request being
    /// written): the tools leave them alone, but a lock folder shared with other files
    /// invites mistakes, so callers warn about them.
    pub fn foreign_entries(&self) -> Result<Vec<String>, LockError> {
        let mut names: Vec<String> = self
            .entries()?
            .into_iter()
            .map(|(file_name, _, _)| file_name)
            .filter(|n| !is_desk_entry(n) && !n.ends_with(".tmp"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The warning every tool gives when the lock folder holds [foreign
    /// entries](LockDir::foreign_entries); `None` when it holds none (or cannot be read:
    /// the tool reports that itself).
    pub fn foreign_warning(&self) -> Option<String> {
        let foreign = self.foreign_entries().ok().filter(|f| !f.is_empty())?;
        Some(format!(
            "warning: {} holds files that are not lock files or stop requests ({}); they \
             are left alone, but give the lock folder a folder of its own",
            self.dir.display(),
            foreign.join(", ")
        ))
    }

    /// Entries named like the tools' own (`*.lock`, `*.stop`, `*.start`, `*.restart`,
    /// `*.state`) that are not regular files, sorted by name.
    pub fn stray_entries(&self) -> Result<Vec<StrayEntry>, LockError> {
        let mut strays: Vec<StrayEntry> = self
            .entries()?
            .into_iter()
            .filter(|(file_name, _, _)| is_desk_entry(file_name))
            .filter_map(|(file_name, path, non_regular)| {
                Some(StrayEntry {
                    file_name,
                    path,
                    what: non_regular?.to_string(),
                })
            })
            .collect();
        strays.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        Ok(strays)
    }

    /// Every entry with a UTF-8 name: its name, path, and what it is if it is not a
    /// regular file. Types come from the directory listing or `lstat`: links are not
    /// followed and nothing is opened.
    fn entries(&self) -> Result<Vec<Entry>, LockError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read lock folder", &self.dir)(e)),
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let file_name = entry.file_name().into_string().ok()?;
                let path = entry.path();
                let non_regular = match std::fs::symlink_metadata(&path) {
                    Ok(metadata) => os::describe_non_regular(&metadata),
                    // Gone since the listing: nothing to report.
                    Err(_) => return None,
                };
                Some((file_name, path, non_regular))
            })
            .collect())
    }

    /// Removes the lock file if nobody holds it (stale or corrupt). Safe while other
    /// processes acquire and release the same name: the removal happens under the
    /// exclusive lock, after checking that the path still names the file we locked.
    pub fn remove_if_stale(
        &self,
        name: &str,
        probe: &mut ProcessProbe,
    ) -> Result<Removal, LockError> {
        self.remove_if_stale_or_unknown(name, true, probe)
    }

    /// [`Self::remove_if_stale`], except that a file whose record cannot be read is
    /// removed only if `desk_lock` says its name is a lock of this desk: a `*.lock` file
    /// with another name and no record of ours (a `poetry.lock`) was written by
    /// someone else, and is kept (DESIGN.md rule 12).
    pub fn remove_if_stale_or_unknown(
        &self,
        name: &str,
        desk_lock: bool,
        probe: &mut ProcessProbe,
    ) -> Result<Removal, LockError> {
        let path = self.lock_path(name)?;
        let file = match os::open(&path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Missing),
            Err(e) if os::is_transient(&e) => return Ok(Removal::Kept(busy(name, path))),
            Err(e) => return Err(io_error("open lock file", &path)(e)),
        };
        if !self.lock_unless_held(&file, &path, probe)? {
            return Ok(Removal::Kept(busy(name, path)));
        }
        if !names_file(&path, &file) {
            return Ok(Removal::Missing);
        }
        let read = read_record(&file).map_err(io_error("read", &path))?;
        let status = classify_unheld(name, path.clone(), &read, self.copy_rule(name), probe);
        if status.state.is_held() || (status.state == LockState::Corrupt && !desk_lock) {
            return Ok(Removal::Kept(status));
        }
        match os::remove_locked(file, &path).map_err(io_error("remove", &path))? {
            os::Removed::Yes => Ok(Removal::Removed(status)),
            os::Removed::InUse => Ok(Removal::Kept(busy(name, path))),
            os::Removed::Gone => Ok(Removal::Missing),
        }
    }

    /// Takes the exclusive lock for remove-if-stale. Gives up at once when the record
    /// names a live holder; otherwise retries briefly, since the lock may be held only
    /// for a moment: by an inspector, a starter mid-check, or a child that another
    /// thread of the holding process is forking (it shares the open file until exec).
    fn lock_unless_held(
        &self,
        file: &File,
        path: &Path,
        probe: &mut ProcessProbe,
    ) -> Result<bool, LockError> {
        let started = Instant::now();
        loop {
            if os::try_lock_exclusive(file).map_err(io_error("lock", path))? {
                return Ok(true);
            }
            let record = read_record(file).ok().and_then(|r| r.parse());
            if names_live_holder(record.as_ref(), probe) || started.elapsed() >= BUSY_WAIT {
                return Ok(false);
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }
}

fn busy(name: &str, path: PathBuf) -> LockStatus {
    LockStatus {
        name: name.into(),
        path,
        state: LockState::Running,
        record: None,
        detail: "another process holds or is checking it".into(),
    }
}

impl HeldLock {
    fn start(
        name: &str,
        path: PathBuf,
        file: File,
        claim: &LockClaim,
        machine: Option<MachineLock>,
        probe: &mut ProcessProbe,
    ) -> Result<Self, LockError> {
        let me = probe.own_identity();
        let record = LockRecord {
            pid: me.pid,
            name: name.into(),
            account: claim.account.clone(),
            timestamp: Some(local_timestamp_now()),
            pid_start: Some(me.start_time),
            holder_pid: Some(me.pid),
            holder_start: Some(me.start_time),
            host: Some(gethostname::gethostname().to_string_lossy().into_owned()),
            command: claim.command.clone(),
        };
        let held = HeldLock {
            name: name.into(),
            file: Arc::new(Mutex::new(LockFile {
                file: Some(file),
                record,
                machine_wide: machine.is_some(),
            })),
            path,
            cluster: None,
            machine,
        };
        held.update_record(|_| ())?;
        Ok(held)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record as last written.
    pub fn record(&self) -> LockRecord {
        lock_state(&self.file).record.clone()
    }

    /// Records the process this lock now guards (a spawned child) and its command line.
    pub fn set_managed(
        &mut self,
        managed: ProcessIdentity,
        command: Vec<String>,
    ) -> Result<(), LockError> {
        let record = self.update_record(|record| {
            record.pid = managed.pid;
            record.pid_start = Some(managed.start_time);
            record.command = command;
            record.timestamp = Some(local_timestamp_now());
        })?;
        // The key names the child too: another host's tools on one machine (tests)
        // must not take it for an unlocked copy. A key that is no longer ours is the
        // fencing thread's business.
        if let (Some(cluster), Some(host)) = (&self.cluster, &record.host) {
            cluster.update_record(&record, host)?;
        }
        Ok(())
    }

    /// Checks that the path still names the file we hold (DESIGN.md rule 7: on Linux
    /// anyone may unlink it, or the whole lock folder; on Windows the open handle
    /// refuses deletion). A file that has gone is created, locked and recorded again
    /// ([`Retaken`], for the caller to report loudly); [`LockLost`] if that cannot be
    /// done (someone else has the new file).
    pub fn verify(&self) -> Result<Option<Retaken>, LockLost> {
        check_or_take_again(&self.name, &self.path, &self.file)
    }

    /// A handle another thread can use to [`LockWatcher::check`] this lock periodically.
    pub fn watcher(&self) -> Result<LockWatcher, LockError> {
        if lock_state(&self.file).file.is_none() {
            return Err(self.lost().into());
        }
        Ok(LockWatcher {
            name: self.name.clone(),
            path: self.path.clone(),
            file: Arc::clone(&self.file),
        })
    }

    /// Releases the lock and removes its file. If the path no longer names our file
    /// (someone deleted or replaced it), the file there is left alone and the loss
    /// is reported.
    pub fn release(mut self) -> Result<(), LockError> {
        self.release_inner()
    }

    /// With `[cluster]`: what the holder must do with its child now, shareable with a
    /// thread that watches while another waits for the child.
    pub fn fence_watch(&self) -> Option<FenceWatch> {
        self.cluster.as_ref().map(ClusterLock::watch)
    }

    fn release_inner(&mut self) -> Result<(), LockError> {
        // The key first: another machine may take over only once nothing runs here.
        let cluster = self.cluster.take().map(ClusterLock::release);
        let file = lock_state(&self.file).file.take();
        let removed = match file {
            None => Ok(()),
            Some(file) if !names_file(&self.path, &file) => Err(self.lost().into()),
            Some(file) => os::remove_locked(file, &self.path)
                .map(|_| ())
                .map_err(io_error("remove", &self.path)),
        };
        // The machine-wide name last: a taker that gets it finds the file gone.
        self.machine.take();
        removed?;
        cluster.transpose().map(|_| ()).map_err(LockError::from)
    }

    /// Changes the record and writes it; returns what was written.
    fn update_record(&self, change: impl FnOnce(&mut LockRecord)) -> Result<LockRecord, LockError> {
        let mut state = lock_state(&self.file);
        change(&mut state.record);
        let record = state.record.clone();
        let Some(file) = state.file.as_mut() else {
            return Err(self.lost().into());
        };
        write_record(file, &record).map_err(io_error("write the record to", &self.path))?;
        Ok(record)
    }

    fn lost(&self) -> LockLost {
        LockLost {
            name: self.name.clone(),
            path: self.path.clone(),
        }
    }
}

/// Writes `record` at the start of `file`: write first, then cut to length, so a
/// reader never sees an empty file.
fn write_record(mut file: &File, record: &LockRecord) -> io::Result<()> {
    let bytes = record.to_bytes();
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_data()
}

/// [`HeldLock::verify`] and [`LockWatcher::check`]: under the state's mutex, so a
/// release and a re-take never interleave (a released lock is never created again).
fn check_or_take_again(
    name: &str,
    path: &Path,
    state: &Mutex<LockFile>,
) -> Result<Option<Retaken>, LockLost> {
    let lost = || LockLost {
        name: name.into(),
        path: path.to_path_buf(),
    };
    let mut state = lock_state(state);
    let Some(file) = &state.file else {
        return Err(lost());
    };
    let ours = os::file_key(file).map_err(|_| lost())?;
    match os::path_key(path) {
        Ok(key) if key == ours => return Ok(None),
        // Cannot tell this time (a sharing violation for a moment); the next check will.
        Err(e) if e.kind() != io::ErrorKind::NotFound && os::not_a_file(&e).is_none() => {
            return Ok(None);
        }
        // Something else is at the path (a link, a folder, another file): not ours to
        // overwrite; say so.
        Ok(_) | Err(_) if path.symlink_metadata().is_ok() => return Err(lost()),
        _ => {}
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    let folder_recreated = !folder.exists();
    std::fs::create_dir_all(folder).map_err(|_| lost())?;
    let file = os::open(path, true).map_err(|_| lost())?;
    // Someone else's new file (a holder without the machine-wide name, an older tool
    // that wrote a record): it is theirs, and the loss stands.
    let free = os::try_lock_exclusive(&file).unwrap_or(false)
        && names_file(path, &file)
        && file.metadata().is_ok_and(|m| m.len() == 0);
    if !free {
        return Err(lost());
    }
    write_record(&file, &state.record).map_err(|_| lost())?;
    // The old handle closes here: its file is gone from the folder.
    state.file = Some(file);
    Ok(Some(Retaken {
        name: name.into(),
        path: path.to_path_buf(),
        folder_recreated,
        machine_wide: state.machine_wide,
    }))
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Errors here have nowhere to go; the OS lock is dropped with the handle anyway.
        let _ = self.release_inner();
    }
}

/// Checks from another thread that a held lock's path still names its file, and takes
/// a file that has gone again ([`HeldLock::verify`]). It shares the holder's one
/// handle: a second one would outlive the release and, on Windows, keep the holder
/// from deleting the file.
#[derive(Debug)]
pub struct LockWatcher {
    name: String,
    path: PathBuf,
    file: Arc<Mutex<LockFile>>,
}

impl LockWatcher {
    pub fn check(&self) -> Result<Option<Retaken>, LockLost> {
        check_or_take_again(&self.name, &self.path, &self.file)
    }
}

/// Suffixes of the entries the tools write in the lock dir: locks, stop, start and
/// restart requests, and the orchestrator's published view.
const DESK_ENTRY_SUFFIXES: [&str; 5] = [".lock", ".stop", ".start", ".restart", ".state"];

fn is_desk_entry(file_name: &str) -> bool {
    DESK_ENTRY_SUFFIXES
        .iter()
        .any(|suffix| file_name.ends_with(suffix))
}

/// A lock-dir entry: its file name, its path, and what it is if not a regular file.
type Entry = (String, PathBuf, Option<&'static str>);

/// Whether `path` names the same file as the open handle. The path is looked at
/// without following a link or opening what may be a FIFO.
fn names_file(path: &Path, file: &File) -> bool {
    match (os::file_key(file), os::path_key(path)) {
        (Ok(ours), Ok(there)) => ours == there,
        _ => false,
    }
}

/// What a lock file holds, read at most up to [`MAX_RECORD_BYTES`].
#[derive(Debug)]
enum RecordBytes {
    Read(Vec<u8>),
    /// Bigger than any record: not read.
    TooBig(u64),
}

impl RecordBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            RecordBytes::Read(bytes) => bytes,
            RecordBytes::TooBig(_) => &[],
        }
    }

    fn parse(&self) -> Option<LockRecord> {
        match self {
            RecordBytes::Read(bytes) => LockRecord::parse(bytes).ok(),
            RecordBytes::TooBig(_) => None,
        }
    }
}

/// Reads the record from the start; never more than [`MAX_RECORD_BYTES`] + 1 bytes.
fn read_record(mut file: &File) -> io::Result<RecordBytes> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.take(MAX_RECORD_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        let size = file.metadata().map_or(bytes.len() as u64, |m| m.len());
        return Ok(RecordBytes::TooBig(size));
    }
    Ok(RecordBytes::Read(bytes))
}

fn names_live_holder(record: Option<&LockRecord>, probe: &mut ProcessProbe) -> bool {
    record
        .and_then(LockRecord::holder_identity)
        .is_some_and(|holder| probe.is_alive(holder))
}

/// A legacy record that could be genuine (DESIGN.md rules 5 and 11).
fn live_legacy_holder(
    name: &str,
    path: &Path,
    bytes: &[u8],
    rule: Option<&CopyRule>,
    probe: &mut ProcessProbe,
) -> Option<Holder> {
    let record = LockRecord::parse(bytes).ok()?;
    let (state, _) = classify_legacy(&record, rule, probe)?;
    (state == LockState::Legacy).then(|| Holder {
        name: name.into(),
        path: path.to_path_buf(),
        record: Some(record),
        legacy: true,
        cluster_key: None,
        machine: None,
    })
}

/// The state of a lock file on which no OS lock is held.
fn classify_unheld(
    name: &str,
    path: PathBuf,
    read: &RecordBytes,
    rule: Option<&CopyRule>,
    probe: &mut ProcessProbe,
) -> LockStatus {
    let bytes = match read {
        RecordBytes::Read(bytes) => bytes,
        RecordBytes::TooBig(size) => {
            return LockStatus {
                name: name.into(),
                path,
                state: LockState::Corrupt,
                record: None,
                detail: format!(
                    "the file is {size} bytes, more than a record can be ({MAX_RECORD_BYTES}); not read"
                ),
            };
        }
    };
    let record = match LockRecord::parse(bytes) {
        Ok(record) => record,
        Err(e) => {
            let detail = if bytes.iter().all(u8::is_ascii_whitespace) {
                "the file is empty".to_string()
            } else {
                format!("the record is not valid: {e}")
            };
            return LockStatus {
                name: name.into(),
                path,
                state: LockState::Corrupt,
                record: None,
                detail,
            };
        }
    };
    let (state, detail) = classify_legacy(&record, rule, probe).unwrap_or_else(|| {
        (
            LockState::Stale,
            format!("no process holds it, last holder pid {}", record.pid),
        )
    });
    LockStatus {
        name: name.into(),
        path,
        state,
        record: Some(record),
        detail,
    }
}

/// DESIGN.md rules 5 and 11, for records without holder fields; `None` for our own.
///
/// Such a record could be genuine only while the process it names is alive, started
/// no later than the record, and runs a Python interpreter (the older tool was a
/// Python module recording its own pid) or the component's program. Then the lock
/// counts as held (a false refusal is recoverable, a duplicate trade is not); anything
/// else is stale. Held is not a licence to stop: only a copy of the component
/// (rule 9) is ever stopped, and the detail says which it is.
fn classify_legacy(
    record: &LockRecord,
    rule: Option<&CopyRule>,
    probe: &mut ProcessProbe,
) -> Option<(LockState, String)> {
    if !record.is_legacy() {
        return None;
    }
    let pid = record.pid;
    let Some(process) = probe.info(pid) else {
        return Some((
            LockState::Stale,
            format!("older tool's record; pid {pid} is not running"),
        ));
    };
    // The latest instant the record can name: a naive time, in any zone (rule 5).
    let written = record.written_no_later_than();
    if let Some(written) = written
        && i64::try_from(process.start_time).unwrap_or(i64::MAX) > written
    {
        return Some((
            LockState::Stale,
            format!(
                "older tool's record; pid {pid} was reused by a process started {}, after the record",
                format_local(process.start_time)
            ),
        ));
    }
    let program = crate::copies::file_name(process.cmd.first().map_or("", String::as_str));
    let could_have_written_it =
        runs_python(&process.cmd) || rule.is_some_and(|r| r.runs_program(&process.cmd));
    if !could_have_written_it {
        return Some((
            LockState::Stale,
            format!(
                "older tool's record names pid {pid}, which runs `{program}`, not a bot: \
                 the record is not genuine"
            ),
        ));
    }
    let when = if written.is_some() {
        ""
    } else {
        " (the record has no readable timestamp)"
    };
    let what = match rule.map(|r| r.judge(&process.cmd)) {
        Some(verdict) if verdict.is_copy() => format!("pid {pid} is a running copy"),
        Some(verdict) => {
            format!("pid {pid} (`{program}`) is alive but not a copy ({verdict}): left alone")
        }
        None => format!("pid {pid} (`{program}`) is alive"),
    };
    Some((
        LockState::Legacy,
        format!("older tool's record{when}; {what}; no OS lock guards it"),
    ))
}
