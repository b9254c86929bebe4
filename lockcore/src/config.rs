//! `fleet.toml`: the desk's one config file, its model and its validation.
//!
//! Parsing is in two steps. Serde reads the file into `Raw*` structs that keep the
//! source position of every value that a later check can blame (`toml::Spanned`) and
//! refuse unknown keys; then [`Fleet::from_toml`] checks what serde cannot (duplicate
//! names, logins and terminals, empty commands, undefined or cyclic `{vars}`, names no
//! file system takes, an empty desk, a lock dir that is the config's own folder) and
//! resolves the result: paths against the config's folder (a relative program path
//! too), `{vars}` substituted (a var may use other vars), defaults applied.
//! Every refusal is a [`ConfigError::Invalid`] naming the file, the line and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::copies::CopyRule;
use crate::name::{BadName, check_lock_name};

mod keys;
pub use keys::{CONFIG_KEYS, ConfigKey, accepted_keys};

/// The config file every tool reads unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "fleet.toml";
/// The lock name `master-launch` holds for its lifetime.
pub const MASTER_LOCK_NAME: &str = "MASTER_LAUNCH";
const DEFAULT_STOP_TIMEOUT_SECS: u64 = 10;
/// Failures within a minute before supervision gives a process up.
const DEFAULT_GIVE_UP_AFTER: u32 = 5;
/// How long a `ready = "notify"` process has to say it is ready, by default.
const DEFAULT_READY_TIMEOUT_SECS: u64 = 60;
/// The most `ready_timeout_secs` and `heartbeat_secs` may be.
const MAX_READY_SECS: u64 = 3600;
/// The longest stop timeout a config may set: a day. Larger numbers are typos, and
/// would overflow the clock arithmetic that waits for them.
pub const MAX_STOP_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// The longest first restart delay a config may set: an hour.
const MAX_RESTART_DELAY_MS: u64 = 60 * 60 * 1000;
/// The longest global or account name: its lock, log and stop-request file names
/// (`WATCHDOG_<name>.stop.<pid>.tmp`) stay far below any file system's 255.
pub const MAX_NAME_LEN: usize = 64;
/// Names Windows keeps for devices, with or without an extension, in any case:
/// `CON.lock` would open the console, not a file.
/// The names `{account}`, `{login}`, `{terminal}`, `{config_dir}`, `{python}` that need no
/// [vars] (a [vars] entry of the same name wins).
const BUILTIN_VARS: [&str; 5] = ["account", "login", "terminal", "config_dir", "python"];
/// `{python}`: the name Python 3 has on this platform's PATH. Windows has no `python3`;
/// python.org's installer (with "Add python.exe to PATH") and the Store both give `python`.
pub const PYTHON: &str = if cfg!(windows) { "python" } else { "python3" };

/// A `fleet.toml` mistake, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {} (use --config PATH for another file)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {problem}; fix: {fix}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
        fix: String,
    },
}

/// What a process is for. The stop order lives in [`crate::stop_engine::Stage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trades: stopped first, started last.
    Brain,
    /// Guards open positions with stop-losses: outlives the brain.
    Watchdog,
    /// Serves every account (`quantum_server`): started first, stopped last.
    Global,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Brain => "brain",
            Role::Watchdog => "watchdog",
            Role::Global => "global",
        }
    }
}

/// What to do when a supervised process exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// When a started process counts as started (`ready`): a watchdog guards its brain
/// only from then on (DESIGN.md rule 13), and a start request is answered then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Once it has run for a fixed moment (the default; the process says nothing).
    Settle,
    /// Once it says `ready` on its notify channel (`process_lock.ready()`); one that
    /// has not within `timeout` is a failed start.
    Notify { timeout: Duration },
}

/// The `ready` key's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ReadyKey {
    Settle,
    Notify,
}

/// One managed process: a global, or an account's brain or watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// `quantum_server`, `BRAIN_ATLAS`, `WATCHDOG_ATLAS`.
    pub lock_name: String,
    pub role: Role,
    pub account: Option<String>,
    /// Disabled accounts are shown, never started.
    pub enabled: bool,
    /// The command line, `{vars}` substituted.
    pub command: Vec<String>,
    /// Where to start it (resolved against the config's folder).
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// How a running copy is recognised ([`CopyRule`], DESIGN.md rule 9): the
    /// command's program, and `match` tokens (default: what the command runs).
    pub copy_rule: CopyRule,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    /// Delay before the first restart after a crash; `None` restarts at once (the
    /// default: a watchdog's positions are unguarded until it is back). Later quick
    /// failures back off from there, doubling, capped at 30 s.
    pub restart_delay: Option<Duration>,
    /// Failures within a minute after which supervision gives up on it.
    pub give_up_after: u32,
    pub ready: Readiness,
    /// `heartbeat_secs`: once ready, it must say `alive` at least this often, else it
    /// counts as hung (stopped and restarted like a crash).
    pub heartbeat: Option<Duration>,
    /// The config line that defines it, for messages.
    pub line: usize,
}

/// One broker account and its two processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub login: Option<String>,
    pub terminal: Option<String>,
    pub enabled: bool,
    /// DESIGN.md rule 13: the brain runs only while the watchdog runs (default).
    pub brain_requires_watchdog: bool,
    pub watchdog: Component,
    pub brain: Component,
}

/// A validated `fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The config file it was read from.
    pub path: PathBuf,
    pub lock_dir: PathBuf,
    pub log_dir: PathBuf,
    pub globals: Vec<Component>,
    pub accounts: Vec<Account>,
    /// `[cluster]`: locks shared with other machines through etcd. `None` (no table)
    /// keeps every lock on this machine and touches no network.
    pub cluster: Option<ClusterConfig>,
    /// `[[alert]]`: commands told about events that need a person.
    pub alerts: Vec<AlertConfig>,
    /// `log_files_kept`: rotated files each log keeps beside the current one.
    pub log_files_kept: usize,
    /// `copy_scan_secs`: how often a running master-launch looks for copies of its
    /// components that run without their lock; 0: never.
    pub copy_scan_secs: u64,
}

/// The longest `copy_scan_secs`, and its default.
pub const MAX_COPY_SCAN_SECS: u64 = 3600;
pub const DEFAULT_COPY_SCAN_SECS: u64 = 10;

/// The longest an alert command may run before it is killed, and its default.
pub const MAX_ALERT_TIMEOUT_SECS: u64 = 600;
const DEFAULT_ALERT_TIMEOUT_SECS: u64 = 10;

/// A validated `[[alert]]` table: a command master-launch runs for each event of these
/// kinds, the event as JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// The command line (program first), run in the config's folder.
    pub command: Vec<String>,
    /// The kinds it is told about (default [`crate::events::EventKind::NEEDS_A_PERSON`]).
    pub kinds: Vec<crate::events::EventKind>,
    /// Killed after this long.
    pub timeout: Duration,
    /// The line of its table, for messages.
    pub line: usize,
}

/// The shortest and longest lease a `[cluster]` may ask for. Below 2 s a renewal every
/// TTL/3 leaves no room for one slow round trip; above 5 minutes a dead machine would
/// keep its components from a standby for too long.
pub const MIN_LEASE_TTL_SECS: u64 = 2;
pub const MAX_LEASE_TTL_SECS: u64 = 300;
const DEFAULT_LEASE_TTL_SECS: u64 = 10;
/// The environment variable that names this machine in the cluster, over `host`.
pub const HOST_ENV: &str = "FLEET_HOST";

/// A validated `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://10.0.0.5:2379`), tried in order.
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    /// This machine's name in lock values: `FLEET_HOST`, else `host`, else the
    /// machine's name.
    pub host: String,
    /// The key prefix: locks live under `/<desk>/locks/`.
    pub desk: String,
    /// The line of the `[cluster]` table, for messages.
    pub line: usize,
    /// etcd user and password, both or neither.
    pub auth: Option<(String, String)>,
    /// TLS to etcd: set exactly when the endpoints are `https://`.
    pub tls: Option<ClusterTls>,
}

/// The longest certificate or key file a `[cluster]` may name: a CA bundle is a few
/// hundred kilobytes at most; anything larger is the wrong file.
const MAX_PEM_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// `[cluster]` TLS material, read from its PEM files and parsed when the config loads,
/// so that a wrong file is a config error at start, never a failed renewal later.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// `ca_file`, resolved against the config's folder.
    pub ca_file: PathBuf,
    /// The certificates (DER) in `ca_file`: the only roots etcd's server certificate
    /// may chain to (the public roots are never trusted for etcd).
    pub ca_certs: Vec<Vec<u8>>,
    /// `cert_file` + `key_file`, for etcd's `--client-cert-auth`.
    pub client: Option<ClusterClientCert>,
}

/// A client certificate chain and its private key, both from PEM files.
#[derive(Clone)]
pub struct ClusterClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificates of `cert_file` (the client's own first) and the key of
    /// `key_file`.
    pub cert: ureq::tls::ClientCert,
}

impl PartialEq for ClusterClientCert {
    fn eq(&self, other: &Self) -> bool {
        let ders = |c: &ClusterClientCert| -> Vec<Vec<u8>> {
            c.cert.certs().iter().map(|c| c.der().to_vec()).collect()
        };
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && ders(self) == ders(other)
            && self.cert.private_key().der() == other.cert.private_key().der()
    }
}

impl Eq for ClusterClientCert {}

impl ClusterTls {
    /// TLS material from PEM files, as `ca_file`, `cert_file` and `key_file` give it
    /// (a program that builds its [`ClusterConfig`] without a fleet.toml, e.g. a test).
    pub fn from_files(
        ca_file: &Path,
        client: Option<(&Path, &Path)>,
    ) -> Result<ClusterTls, String> {
        let ca_certs = read_pem_certs(ca_file)?;
        let client = match client {
            Some((cert_file, key_file)) => Some(ClusterClientCert::new(
                cert_file.to_path_buf(),
                key_file.to_path_buf(),
                &read_pem_certs(cert_file)?,
                read_pem_key(key_file)?,
            )),
            None => None,
        };
        Ok(ClusterTls {
            ca_file: ca_file.to_path_buf(),
            ca_certs,
            client,
        })
    }
}

impl ClusterClientCert {
    fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        chain: &[Vec<u8>],
        key: ureq::tls::PrivateKey<'static>,
    ) -> ClusterClientCert {
        let chain: Vec<_> = chain
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
            .collect();
        ClusterClientCert {
            cert_file,
            key_file,
            cert: ureq::tls::ClientCert::new_with_certs(&chain, key),
        }
    }
}

/// Reads a PEM file. Only a regular file is read: a FIFO would block the start, a
/// device never end. The error names the path and what is wrong.
fn read_pem(path: &Path) -> Result<Vec<ureq::tls::PemItem<'static>>, String> {
    use std::io::Read as _;
    let unreadable =
        |reason: &dyn std::fmt::Display| format!("{} cannot be read: {reason}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| unreadable(&e))?;
    if !meta.is_file() {
        return Err(unreadable(&"it is not a regular file"));
    }
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(unreadable(&format_args!(
            "it is {} bytes, too large for a PEM file",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_FILE_BYTES).read_to_end(&mut bytes))
        .map_err(|e| unreadable(&e))?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))
}

/// The certificates (DER) of a PEM file: at least one.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let certs: Vec<Vec<u8>> = read_pem(path)?
        .into_iter()
        .filter_map(|item| match item {
            ureq::tls::PemItem::Certificate(cert) => Some(cert.der().to_vec()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{} has no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The one private key of a PEM file (unencrypted: PKCS#8, RSA or EC).
pub fn read_pem_key(path: &Path) -> Result<ureq::tls::PrivateKey<'static>, String> {
    let mut keys = read_pem(path)?.into_iter().filter_map(|item| match item {
        ureq::tls::PemItem::PrivateKey(key) => Some(key),
        _ => None,
    });
    match (keys.next(), keys.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(format!(
            "{} has no unencrypted PEM private key in it",
            path.display()
        )),
        (Some(_), Some(_)) => Err(format!(
            "{} has more than one private key in it",
            path.display()
        )),
    }
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca_file", &self.ca_file)
            .field("ca_certs", &self.ca_certs.len())
            .field("client", &self.client)
            .finish()
    }
}

/// The key's bytes never go into a log or a panic message.
impl std::fmt::Debug for ClusterClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClientCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("certs", &self.cert.certs().len())
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// The etcd key of a lock name.
    pub fn lock_key(&self, lock_name: &str) -> String {
        format!("/{}/locks/{lock_name}", self.desk)
    }

    /// The etcd key of a stop request for a lock name (any host's holder acts on it).
    pub fn stop_key(&self, lock_name: &str) -> String {
        format!("/{}/stop/{lock_name}", self.desk)
    }
}

impl Fleet {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Fleet, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Fleet::from_toml(path, &text)
    }

    /// Validates config text as if read from `path` (which anchors relative paths).
    pub fn from_toml(path: &Path, text: &str) -> Result<Fleet, ConfigError> {
        let checker = Checker { path, text };
        let raw: RawFleet = toml::from_str(text).map_err(|e| checker.parse_error(&e))?;
        checker.build(raw)
    }

    /// Every component in start order: globals, then per enabled-or-not account its
    /// watchdog, then its brain (a brain never trades unguarded).
    pub fn components(&self) -> impl Iterator<Item = &Component> {
        self.globals
            .iter()
            .chain(self.accounts.iter().flat_map(|a| [&a.watchdog, &a.brain]))
    }

    /// The component that owns a lock name, if any.
    pub fn component(&self, lock_name: &str) -> Option<&Component> {
        self.components().find(|c| c.lock_name == lock_name)
    }

    /// Refuses a `[cluster]` table in a tool that does not take cluster locks yet: a
    /// desk that names a cluster expects a standby never to double-trade, and a tool
    /// that ignored the table would let it. Exit 2, naming the table's line.
    pub fn refuse_cluster(&self, what: &str) -> Result<(), ConfigError> {
        match &self.cluster {
            None => Ok(()),
            Some(cluster) => Err(ConfigError::Invalid {
                path: self.path.clone(),
                line: cluster.line,
                problem: format!(
                    "[cluster]: {what} does not take cluster locks yet, so it could not keep \
                     another machine from running the same components"
                ),
                fix: "remove the [cluster] table to run this desk on this machine only (its \
                      local locks hold as before)"
                    .to_string(),
            }),
        }
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The watchdog a brain may run only beside (DESIGN.md rule 13): `None` for a
    /// watchdog or global, or when its account sets `brain_requires_watchdog = false`.
    pub fn guard_of(&self, component: &Component) -> Option<&Component> {
        if component.role != Role::Brain {
            return None;
        }
        let account = self.account(component.account.as_deref()?)?;
        account.brain_requires_watchdog.then_some(&account.watchdog)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    lock_dir: Option<Spanned<String>>,
    log_dir: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    defaults: RawOptions,
    #[serde(default)]
    global: Vec<Spanned<RawGlobal>>,
    #[serde(default)]
    account: Vec<Spanned<RawAccount>>,
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    alert: Vec<Spanned<RawAlert>>,
    log_files_kept: Option<Spanned<u64>>,
    copy_scan_secs: Option<Spanned<u64>>,
}

/// `[[alert]]`: a command told about events.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    command: Spanned<Vec<String>>,
    kinds: Option<Spanned<Vec<Spanned<String>>>>,
    timeout_secs: Option<Spanned<u64>>,
}

/// `[cluster]`: etcd endpoints and this machine's part in the shared locks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    endpoints: Spanned<Vec<Spanned<String>>>,
    lease_ttl_secs: Option<Spanned<u64>>,
    host: Option<Spanned<String>>,
    desk: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

/// `[defaults]`: options that every process inherits unless it sets its own.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_timeout_secs: Option<Spanned<u64>>,
    restart: Option<RestartPolicy>,
    /// Delay before the first restart (default: none); it doubles on each quick
    /// failure, up to 30 s.
    restart_delay_ms: Option<Spanned<u64>>,
    /// Give up on a component after this many failures within a minute.
    give_up_after: Option<Spanned<u32>>,
    ready: Option<ReadyKey>,
    ready_timeout_secs: Option<Spanned<u64>>,
    heartbeat_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(rename = "match")]
    pattern: Option<Spanned<Vec<String>>>,
    enabled: Option<bool>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_timeout_secs: Option<Spanned<u64>>,
    restart: Option<RestartPolicy>,
    restart_delay_ms: Option<Spanned<u64>>,
    give_up_after: Option<Spanned<u32>>,
    ready: Option<ReadyKey>,
    ready_timeout_secs: Option<Spanned<u64>>,
    heartbeat_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Spanned<String>,
    login: Option<Spanned<String>>,
    terminal: Option<Spanned<String>>,
    enabled: Option<bool>,
    brain: Spanned<Vec<String>>,
    watchdog: Spanned<Vec<String>>,
    brain_match: Option<Spanned<Vec<String>>>,
    watchdog_match: Option<Spanned<Vec<String>>>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_timeout_secs: Option<Spanned<u64>>,
    restart: Option<RestartPolicy>,
    restart_delay_ms: Option<Spanned<u64>>,
    give_up_after: Option<Spanned<u32>>,
    ready: Option<ReadyKey>,
    ready_timeout_secs: Option<Spanned<u64>>,
    heartbeat_secs: Option<Spanned<u64>>,
    /// DESIGN.md rule 13: `false` lets this account's brain run without its watchdog.
    brain_requires_watchdog: Option<bool>,
}

/// Turns raw values into a [`Fleet`], blaming lines as it goes.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

/// Where a component's settings come from, before resolution.
struct ComponentSource<'r> {
    lock_name: String,
    role: Role,
    account: Option<String>,
    enabled: bool,
    command: &'r Spanned<Vec<String>>,
    pattern: Option<&'r Spanned<Vec<String>>>,
    cwd: Option<&'r String>,
    env: &'r BTreeMap<String, String>,
    stop_timeout_secs: Option<&'r Spanned<u64>>,
    restart: Option<RestartPolicy>,
    restart_delay_ms: Option<&'r Spanned<u64>>,
    give_up_after: Option<&'r Spanned<u32>>,
    ready: Option<ReadyKey>,
    ready_timeout_secs: Option<&'r Spanned<u64>>,
    heartbeat_secs: Option<&'r Spanned<u64>>,
    line: usize,
}

impl Checker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, offset: usize, problem: String, fix: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(offset),
            problem,
            fix: fix.to_string(),
        }
    }

    fn parse_error(&self, error: &toml::de::Error) -> ConfigError {
        let offset = error.span().map_or(0, |span| span.start);
        let message = error.message().trim().to_string();
        let fix = if message.starts_with("unknown field") {
            "remove the key or correct its spelling (docs/reference.md lists every key)"
        } else if message.starts_with("missing field") {
            "add the missing key to this table"
        } else {
            "correct the value or the TOML syntax on that line"
        };
        self.invalid(offset, message, fix)
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn build(&self, raw: RawFleet) -> Result<Fleet, ConfigError> {
        let dir = self.dir();
        let defaults = &raw.defaults;
        if raw.global.is_empty() && raw.account.is_empty() {
            return Err(self.invalid(
                0,
                "the desk is empty: no [[global]] and no [[account]]".into(),
                "add the desk's [[account]] tables (see examples/demo/fleet.toml), or pass \
                 --config with the desk's own fleet.toml",
            ));
        }
        self.check_restart_delay(defaults.restart_delay_ms.as_ref())?;
        self.check_give_up_after(defaults.give_up_after.as_ref())?;
        let mut builtins = BTreeMap::new();
        let config_dir = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
        builtins.insert("config_dir".to_string(), config_dir.display().to_string());
        builtins.insert("python".to_string(), PYTHON.to_string());
        let vars = self.resolve_vars(&raw.vars)?;
        let lock_dir = match &raw.lock_dir {
            Some(value) => {
                let lock_dir = dir.join(value.get_ref());
                if same_folder(&lock_dir, &dir) {
                    return Err(self.invalid(
                        value.span().start,
                        format!(
                            "lock_dir `{}` is the config's own folder, where other programs keep \
                             files named *.lock (poetry.lock, Pipfile.lock)",
                            value.get_ref()
                        ),
                        "use a folder of its own, e.g. lock_dir = \".locks\"",
                    ));
                }
                lock_dir
            }
            None => dir.join(".locks"),
        };
        let mut names: Vec<(String, usize)> = vec![(MASTER_LOCK_NAME.into(), 0)];

        let mut globals = Vec::new();
        for global in &raw.global {
            let g = global.get_ref();
            let line = self.line_of(g.name.span().start);
            self.check_name(&g.name, "global")?;
            self.claim_name(&mut names, g.name.get_ref(), line, "global")?;
            globals.push(self.component(
                ComponentSource {
                    lock_name: g.name.get_ref().clone(),
                    role: Role::Global,
                    account: None,
                    enabled: g.enabled.unwrap_or(true),
                    command: &g.command,
                    pattern: g.pattern.as_ref(),
                    cwd: g.cwd.as_ref(),
                    env: &g.env,
                    stop_timeout_secs: g.stop_timeout_secs.as_ref(),
                    restart: g.restart,
                    restart_delay_ms: g.restart_delay_ms.as_ref(),
                    give_up_after: g.give_up_after.as_ref(),
                    ready: g.ready,
                    ready_timeout_secs: g.ready_timeout_secs.as_ref(),
                    heartbeat_secs: g.heartbeat_secs.as_ref(),
                    line,
                },
                defaults,
                &vars,
                &builtins,
            )?);
        }

        let mut accounts: Vec<Account> = Vec::new();
        let mut account_lines: Vec<usize> = Vec::new();
        let mut logins: Vec<(String, usize, String)> = Vec::new();
        let mut terminals: Vec<(String, usize, String)> = Vec::new();
        for account in &raw.account {
            let a = account.get_ref();
            let name = a.name.get_ref();
            let line = self.line_of(a.name.span().start);
            self.check_name(&a.name, "account")?;
            if let Some(first) = accounts
                .iter()
                .zip(&account_lines)
                .find_map(|(a, line)| a.name.eq_ignore_ascii_case(name).then_some(line))
            {
                return Err(self.invalid(
                    a.name.span().start,
                    format!("account `{name}` is defined twice (first on line {first})"),
                    "rename or remove one of the two [[account]] tables",
                ));
            }
            let brain_lock = format!("BRAIN_{name}");
            let watchdog_lock = format!("WATCHDOG_{name}");
            self.claim_name(&mut names, &watchdog_lock, line, "account")?;
            self.claim_name(&mut names, &brain_lock, line, "account")?;
            if let Some(login) = &a.login {
                self.claim_unique(&mut logins, login, name, "login", |s| s.trim().to_string())?;
            }
            if let Some(terminal) = &a.terminal {
                self.claim_unique(&mut terminals, terminal, name, "terminal", normalise_path)?;
            }
            let mut account_builtins = builtins.clone();
            account_builtins.insert("account".into(), name.clone());
            if let Some(login) = &a.login {
                account_builtins.insert("login".into(), login.get_ref().clone());
            }
            if let Some(terminal) = &a.terminal {
                account_builtins.insert("terminal".into(), terminal.get_ref().clone());
            }
            let enabled = a.enabled.unwrap_or(true);
            let part = |lock_name: String, role, command, pattern| ComponentSource {
                lock_name,
                role,
                account: Some(name.clone()),
                enabled,
                command,
                pattern,
                cwd: a.cwd.as_ref(),
                env: &a.env,
                stop_timeout_secs: a.stop_timeout_secs.as_ref(),
                restart: a.restart,
                restart_delay_ms: a.restart_delay_ms.as_ref(),
                give_up_after: a.give_up_after.as_ref(),
                ready: a.ready,
                ready_timeout_secs: a.ready_timeout_secs.as_ref(),
                heartbeat_secs: a.heartbeat_secs.as_ref(),
                line,
            };
            let watchdog = part(
                watchdog_lock,
                Role::Watchdog,
                &a.watchdog,
                a.watchdog_match.as_ref(),
            );
            let brain = part(brain_lock, Role::Brain, &a.brain, a.brain_match.as_ref());
            account_lines.push(line);
            accounts.push(Account {
                name: name.clone(),
                login: a.login.as_ref().map(|l| l.get_ref().clone()),
                terminal: a.terminal.as_ref().map(|t| t.get_ref().clone()),
                enabled,
                brain_requires_watchdog: a.brain_requires_watchdog.unwrap_or(true),
                watchdog: self.component(watchdog, defaults, &vars, &account_builtins)?,
                brain: self.component(brain, defaults, &vars, &account_builtins)?,
            });
        }

        // Where each component's command stands, in the order they were defined.
        let mut commands: Vec<(&Component, usize, &str)> = globals
            .iter()
            .zip(&raw.global)
            .map(|(c, g)| (c, g.get_ref().command.span().start, "match"))
            .collect();
        for (account, raw) in accounts.iter().zip(&raw.account) {
            let raw = raw.get_ref();
            commands.push((
                &account.watchdog,
                raw.watchdog.span().start,
                "watchdog_match",
            ));
            commands.push((&account.brain, raw.brain.span().start, "brain_match"));
        }
        self.check_no_copies_of_each_other(&commands)?;

        let cluster = match &raw.cluster {
            Some(cluster) => Some(self.cluster(cluster)?),
            None => None,
        };
        let alerts = raw
            .alert
            .iter()
            .map(|alert| self.alert(alert))
            .collect::<Result<Vec<_>, _>>()?;
        let log_files_kept = match &raw.log_files_kept {
            None => crate::logs::DEFAULT_FILES_KEPT,
            Some(kept) => {
                let max = crate::logs::MAX_FILES_KEPT;
                match usize::try_from(*kept.get_ref()) {
                    Ok(n) if (1..=max).contains(&n) => n,
                    _ => {
                        return Err(self.invalid(
                            kept.span().start,
                            format!("log_files_kept = {} is outside 1 to {max}", kept.get_ref()),
                            &format!(
                                "use the number of rotated files each log keeps, 1 (the \
                                 default) to {max}"
                            ),
                        ));
                    }
                }
            }
        };
        let copy_scan_secs = match &raw.copy_scan_secs {
            None => DEFAULT_COPY_SCAN_SECS,
            Some(secs) if *secs.get_ref() <= MAX_COPY_SCAN_SECS => *secs.get_ref(),
            Some(secs) => {
                return Err(self.invalid(
                    secs.span().start,
                    format!(
                        "copy_scan_secs = {} is outside 0 to {MAX_COPY_SCAN_SECS}",
                        secs.get_ref()
                    ),
                    &format!(
                        "use how often master-launch looks for copies started by hand, in \
                         seconds: 1 to {MAX_COPY_SCAN_SECS} ({DEFAULT_COPY_SCAN_SECS} is the \
                         default), or 0 to never look"
                    ),
                ));
            }
        };
        Ok(Fleet {
            path: self.path.to_path_buf(),
            lock_dir,
            log_dir: dir.join(raw.log_dir.as_deref().unwrap_or("logs")),
            globals,
            accounts,
            cluster,
            alerts,
            log_files_kept,
            copy_scan_secs,
        })
    }

    /// `[[alert]]`: a command that can run, kinds that exist, a timeout that ends.
    fn alert(&self, raw: &Spanned<RawAlert>) -> Result<AlertConfig, ConfigError> {
        let line = self.line_of(raw.span().start);
        let raw = raw.get_ref();
        let command = raw.command.get_ref();
        if command
            .first()
            .is_none_or(|program| program.trim().is_empty())
        {
            return Err(self.invalid(
                raw.command.span().start,
                "[[alert]] command is empty".into(),
                "name the program and its arguments, e.g. command = [\"python\", \
                 \"alerts/webhook.py\"], or remove the [[alert]] table",
            ));
        }
        let mut kinds = Vec::new();
        match &raw.kinds {
            None => kinds.extend(crate::events::EventKind::NEEDS_A_PERSON),
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(self.invalid(
                        list.span().start,
                        "[[alert]] kinds is empty: the command would never run".into(),
                        "name the event kinds it wants, or remove `kinds` for the ones that \
                         need a person",
                    ));
                }
                for name in list.get_ref() {
                    let Some(kind) = crate::events::EventKind::parse(name.get_ref()) else {
                        let known: Vec<&str> = crate::events::EventKind::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect();
                        return Err(self.invalid(
                            name.span().start,
                            format!("[[alert]] kinds: unknown event kind `{}`", name.get_ref()),
                            &format!("use one of: {}", known.join(", ")),
                        ));
                    };
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
            }
        }
        let timeout = match &raw.timeout_secs {
            None => DEFAULT_ALERT_TIMEOUT_SECS,
            Some(secs) if (1..=MAX_ALERT_TIMEOUT_SECS).contains(secs.get_ref()) => *secs.get_ref(),
            Some(secs) => {
                return Err(self.invalid(
                    secs.span().start,
                    format!(
                        "[[alert]] timeout_secs = {} is outside 1 to {MAX_ALERT_TIMEOUT_SECS} \
                         seconds",
                        secs.get_ref()
                    ),
                    &format!(
                        "use the seconds the command may run before it is killed, 1 to \
                         {MAX_ALERT_TIMEOUT_SECS} (default {DEFAULT_ALERT_TIMEOUT_SECS})"
                    ),
                ));
            }
        };
        Ok(AlertConfig {
            command: command.clone(),
            kinds,
            timeout: Duration::from_secs(timeout),
            line,
        })
    }

    /// `[cluster]`: every value checked here, so that a typo is a config error at start
    /// and never a lock that silently lives on another etcd or under another prefix.
    fn cluster(&self, raw: &Spanned<RawCluster>) -> Result<ClusterConfig, ConfigError> {
        let line = self.line_of(raw.span().start);
        let raw = raw.get_ref();
        if raw.endpoints.get_ref().is_empty() {
            return Err(self.invalid(
                raw.endpoints.span().start,
                "[cluster] endpoints is empty".into(),
                "list the etcd client URLs, e.g. endpoints = [\"http://10.0.0.5:2379\"], or \
                 remove [cluster] to keep every lock on this machine",
            ));
        }
        let mut endpoints: Vec<String> = Vec::new();
        for endpoint in raw.endpoints.get_ref() {
            let url = self.check_endpoint(endpoint)?;
            // One scheme for all: a desk that is half on TLS is not on TLS.
            if let Some(first) = endpoints.first()
                && first.starts_with("https://") != url.starts_with("https://")
            {
                return Err(self.invalid(
                    endpoint.span().start,
                    format!("[cluster] endpoints mix http:// and https:// (`{first}`, `{url}`)"),
                    "use https:// for every endpoint (with ca_file), or http:// for every one",
                ));
            }
            endpoints.push(url);
        }
        let https = endpoints.iter().all(|e| e.starts_with("https://"));
        let tls = self.cluster_tls(raw, https)?;
        let lease_ttl_secs = match &raw.lease_ttl_secs {
            Some(ttl) if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(ttl.get_ref()) => {
                return Err(self.invalid(
                    ttl.span().start,
                    format!("lease_ttl_secs = {} is out of range", ttl.get_ref()),
                    &format!(
                        "use {MIN_LEASE_TTL_SECS} to {MAX_LEASE_TTL_SECS} seconds (default \
                         {DEFAULT_LEASE_TTL_SECS}): a standby takes over at most this long after \
                         a machine dies"
                    ),
                ));
            }
            Some(ttl) => *ttl.get_ref(),
            None => DEFAULT_LEASE_TTL_SECS,
        };
        let desk = match &raw.desk {
            Some(desk) => {
                let text = desk.get_ref();
                let usable = !text.is_empty()
                    && text.len() <= MAX_NAME_LEN
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    && text != "."
                    && text != "..";
                if !usable {
                    return Err(self.invalid(
                        desk.span().start,
                        format!("[cluster] desk `{text}` is not usable as an etcd key prefix"),
                        &format!(
                            "use letters, digits, `_`, `-` and `.` only (no `/`), at most \
                             {MAX_NAME_LEN} characters, e.g. desk = \"desk\""
                        ),
                    ));
                }
                text.clone()
            }
            None => "desk".to_string(),
        };
        let host = match std::env::var(HOST_ENV) {
            Ok(host) if !host.trim().is_empty() => host.trim().to_string(),
            _ => match &raw.host {
                Some(host) => {
                    let text = host.get_ref().trim();
                    if text.is_empty() || text.len() > 255 || text.chars().any(char::is_control) {
                        return Err(self.invalid(
                            host.span().start,
                            "[cluster] host is empty, too long or has control characters".into(),
                            "name this machine (at most 255 characters), or remove the key to \
                             use the machine's own name (FLEET_HOST overrides both)",
                        ));
                    }
                    text.to_string()
                }
                None => gethostname::gethostname().to_string_lossy().into_owned(),
            },
        };
        let auth = match (&raw.user, &raw.password) {
            (None, None) => None,
            (Some(user), _) if user.get_ref().is_empty() => {
                return Err(self.invalid(
                    user.span().start,
                    "[cluster] user is empty".into(),
                    "give the etcd user's name, or remove user and password",
                ));
            }
            (Some(user), Some(password)) => {
                Some((user.get_ref().clone(), password.get_ref().clone()))
            }
            (Some(user), None) => {
                return Err(self.invalid(
                    user.span().start,
                    "[cluster] has a user but no password".into(),
                    "add password = \"...\" next to user, or remove user",
                ));
            }
            (None, Some(password)) => {
                return Err(self.invalid(
                    password.span().start,
                    "[cluster] has a password but no user".into(),
                    "add user = \"...\" next to password, or remove password",
                ));
            }
        };
        Ok(ClusterConfig {
            endpoints,
            lease_ttl: Duration::from_secs(lease_ttl_secs),
            host,
            desk,
            auth,
            tls,
            line,
        })
    }

    /// `ca_file`, `cert_file`, `key_file`: required (the CA) and allowed only with
    /// `https://` endpoints; each file read and parsed now.
    fn cluster_tls(
        &self,
        raw: &RawCluster,
        https: bool,
    ) -> Result<Option<ClusterTls>, ConfigError> {
        if !https {
            let stray = [
                ("ca_file", &raw.ca_file),
                ("cert_file", &raw.cert_file),
                ("key_file", &raw.key_file),
            ];
            if let Some((key, Some(value))) = stray.into_iter().find(|(_, v)| v.is_some()) {
                return Err(self.invalid(
                    value.span().start,
                    format!(
                        "[cluster] {key} is set but the endpoints are http://, which never use it"
                    ),
                    &format!(
                        "write the endpoints as https://HOST:PORT to talk TLS to etcd, or \
                         remove {key}"
                    ),
                ));
            }
            return Ok(None);
        }
        let Some(ca_file) = &raw.ca_file else {
            return Err(self.invalid(
                raw.endpoints.span().start,
                "[cluster] endpoints are https:// but there is no ca_file".into(),
                "add ca_file = \"etcd-ca.pem\": the PEM CA bundle that signs etcd's server \
                 certificate (etcd's --trusted-ca-file); public roots are never trusted for etcd",
            ));
        };
        let pair = match (&raw.cert_file, &raw.key_file) {
            (None, None) => None,
            (Some(cert_file), None) => {
                return Err(self.invalid(
                    cert_file.span().start,
                    "[cluster] has a cert_file but no key_file".into(),
                    "add key_file = \"...\" (the client certificate's private key, PEM), or \
                     remove cert_file",
                ));
            }
            (None, Some(key_file)) => {
                return Err(self.invalid(
                    key_file.span().start,
                    "[cluster] has a key_file but no cert_file".into(),
                    "add cert_file = \"...\" (the client certificate, PEM), or remove key_file",
                ));
            }
            (Some(cert_file), Some(key_file)) => Some((cert_file, key_file)),
        };
        let certs_fix = |key: &str| {
            format!(
                "name a PEM file with -----BEGIN CERTIFICATE----- blocks in {key} (a relative \
                 path is relative to the config's folder; DER converts with `openssl x509 \
                 -inform der -in FILE -out FILE.pem`)"
            )
        };
        let ca_path = self.dir().join(ca_file.get_ref());
        let ca_certs = read_pem_certs(&ca_path).map_err(|reason| {
            self.invalid(
                ca_file.span().start,
                format!("ca_file {reason}"),
                &certs_fix("ca_file"),
            )
        })?;
        let client = match pair {
            None => None,
            Some((cert_file, key_file)) => {
                let cert_path = self.dir().join(cert_file.get_ref());
                let key_path = self.dir().join(key_file.get_ref());
                let chain = read_pem_certs(&cert_path).map_err(|reason| {
                    self.invalid(
                        cert_file.span().start,
                        format!("cert_file {reason}"),
                        &certs_fix("cert_file"),
                    )
                })?;
                let key = read_pem_key(&key_path).map_err(|reason| {
                    self.invalid(
                        key_file.span().start,
                        format!("key_file {reason}"),
                        "name a PEM file with the client certificate's one unencrypted private \
                         key (-----BEGIN PRIVATE KEY-----, or RSA/EC PRIVATE KEY); a relative \
                         path is relative to the config's folder",
                    )
                })?;
                Some(ClusterClientCert::new(cert_path, key_path, &chain, key))
            }
        };
        Ok(Some(ClusterTls {
            ca_file: ca_path,
            ca_certs,
            client,
        }))
    }

    /// An etcd client URL: `http://HOST:PORT` or `https://HOST:PORT` with nothing after
    /// the authority but an optional `/`.
    fn check_endpoint(&self, endpoint: &Spanned<String>) -> Result<String, ConfigError> {
        let text = endpoint.get_ref().trim();
        let at = endpoint.span().start;
        let (scheme, rest) = match text.strip_prefix("https://") {
            Some(rest) => ("https", Some(rest)),
            None => ("http", text.strip_prefix("http://")),
        };
        let authority = rest.map(|rest| rest.strip_suffix('/').unwrap_or(rest));
        let valid = authority.is_some_and(|authority| {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            !host.is_empty()
                && !host.contains(['/', '@', '?', '#', ' '])
                && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
        });
        match authority {
            Some(authority) if valid => Ok(format!("{scheme}://{authority}")),
            _ => Err(self.invalid(
                at,
                format!("endpoint `{text}` is not an etcd client URL"),
                "write it as http://HOST:PORT or https://HOST:PORT, e.g. \"http://10.0.0.5:2379\"",
            )),
        }
    }

    /// Names become lock file names: keep them to what every file system accepts, on
    /// every platform (a desk's config moves between Windows and the test machines).
    fn check_name(&self, name: &Spanned<String>, what: &str) -> Result<(), ConfigError> {
        let text = name.get_ref();
        // A config-level limit first: the lock names built from it (`WATCHDOG_` + it)
        // stay within the lock-level one.
        let problem = if text.len() > MAX_NAME_LEN {
            Some(BadName::TooLong)
        } else {
            check_lock_name(text).err()
        };
        let (problem, fix) = match problem {
            None => return Ok(()),
            Some(BadName::Empty | BadName::Characters) => (
                format!("{what} name `{text}` is not usable as a lock name"),
                "use only letters, digits, `_` and `-`".to_string(),
            ),
            Some(BadName::TooLong) => (
                format!(
                    "{what} name `{}…` is {} characters long; lock and log file names built \
                     from it would be too long",
                    text.chars().take(16).collect::<String>(),
                    text.len()
                ),
                format!("use at most {MAX_NAME_LEN} characters"),
            ),
            Some(BadName::Device) => (
                format!(
                    "{what} name `{text}` is a device name on Windows: `{text}.lock` would not be a file"
                ),
                "choose another name (CON, PRN, AUX, NUL, COM1-COM9 and LPT1-LPT9 are reserved)"
                    .to_string(),
            ),
        };
        Err(self.invalid(name.span().start, problem, &fix))
    }

    /// A number the tools wait on: bounded, so no clock arithmetic can overflow.
    fn check_restart_delay(&self, delay: Option<&Spanned<u64>>) -> Result<(), ConfigError> {
        if let Some(delay) = delay
            && *delay.get_ref() > MAX_RESTART_DELAY_MS
        {
            return Err(self.invalid(
                delay.span().start,
                format!(
                    "restart_delay_ms = {} is more than an hour",
                    delay.get_ref()
                ),
                &format!("use at most {MAX_RESTART_DELAY_MS}"),
            ));
        }
        Ok(())
    }

    /// Zero would give up before the first restart: say so rather than guess.
    fn check_give_up_after(&self, value: Option<&Spanned<u32>>) -> Result<(), ConfigError> {
        match value {
            Some(value) if *value.get_ref() == 0 => Err(self.invalid(
                value.span().start,
                "give_up_after = 0 would give up on a process before its first restart".into(),
                "use 1 or more (the number of failures within a minute before giving up), \
                 or restart = \"never\"",
            )),
            _ => Ok(()),
        }
    }

    /// `ready_timeout_secs` and `heartbeat_secs`: whole seconds, 1 to an hour.
    fn check_seconds(&self, value: &Spanned<u64>, key: &str) -> Result<u64, ConfigError> {
        let secs = *value.get_ref();
        if !(1..=MAX_READY_SECS).contains(&secs) {
            return Err(self.invalid(
                value.span().start,
                format!("{key} = {secs} is outside 1 to {MAX_READY_SECS} seconds"),
                &format!("use a number of seconds from 1 to {MAX_READY_SECS}"),
            ));
        }
        Ok(secs)
    }

    fn check_stop_timeout(&self, value: &Spanned<u64>) -> Result<u64, ConfigError> {
        if *value.get_ref() > MAX_STOP_TIMEOUT_SECS {
            return Err(self.invalid(
                value.span().start,
                format!("stop_timeout_secs = {} is more than a day", value.get_ref()),
                &format!("use at most {MAX_STOP_TIMEOUT_SECS}"),
            ));
        }
        Ok(*value.get_ref())
    }

    /// Substitutes `{vars}` inside [vars] values (a var may use other vars and the
    /// built-in names), refusing an undefined name or a cycle at the var's line. The
    /// built-ins that differ per account (`{account}`, `{login}`, `{terminal}`) stay
    /// in place here and are substituted where the var is used.
    fn resolve_vars(
        &self,
        raw: &BTreeMap<String, Spanned<String>>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let plain: BTreeMap<String, String> = raw
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect();
        let mut resolved = BTreeMap::new();
        for (name, value) in raw {
            let mut chain = vec![name.clone()];
            let text = expand(value.get_ref(), &plain, &BTreeMap::new(), &mut chain, true)
                .map_err(|e| match e {
                    VarError::Undefined(undefined) => self.invalid(
                        value.span().start,
                        format!("var `{name}` uses `{{{undefined}}}`, which is not defined"),
                        "define it under [vars], or use one of {account}, {login}, {terminal}, {config_dir}, {python}",
                    ),
                    VarError::Cycle(cycle) => self.invalid(
                        value.span().start,
                        format!("vars refer to each other in a circle: {}", cycle.join(" -> ")),
                        "write the value out in one of these vars",
                    ),
                })?;
            resolved.insert(name.clone(), text);
        }
        Ok(resolved)
    }

    /// DESIGN.md rule 9, last sentence: no component's command may be a copy of
    /// another's by the copy rule, or every tool would take one for the other (a
    /// watchdog shown as a duplicate brain and killed in the brain stage). Each entry
    /// is a component, where its command stands, and its `match` key's name.
    fn check_no_copies_of_each_other(
        &self,
        components: &[(&Component, usize, &str)],
    ) -> Result<(), ConfigError> {
        for (j, &(later, later_at, later_key)) in components.iter().enumerate() {
            for &(earlier, earlier_at, earlier_key) in &components[..j] {
                // `rule` recognises its copies by tokens `taken`'s command starts with.
                let (rule, rule_key, taken) = if earlier.copy_rule.is_copy(&later.command) {
                    (earlier, earlier_key, later)
                } else if later.copy_rule.is_copy(&earlier.command) {
                    (later, later_key, earlier)
                } else {
                    continue;
                };
                return Err(self.invalid(
                    later_at,
                    format!(
                        "`{}` (line {}) and `{}` cannot be told apart: `{}`'s command `{}` \
                             counts as a copy of `{}`, which recognises its copies by `{}`, so \
                             check-procs would report a duplicate and safe-shutdown would stop \
                             one as the other",
                        earlier.lock_name,
                        self.line_of(earlier_at),
                        later.lock_name,
                        taken.lock_name,
                        taken.command.join(" "),
                        rule.lock_name,
                        rule.copy_rule.tokens().join(" "),
                    ),
                    &format!(
                        "give `{}` an argument the other lacks (e.g. `--{}`) in its command, \
                             or a `{rule_key}` with tokens that `{}`'s command does not start with",
                        rule.lock_name,
                        rule.role.as_str(),
                        taken.lock_name,
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Lock names must be unique ignoring case: Windows file names ignore case.
    fn claim_name(
        &self,
        names: &mut Vec<(String, usize)>,
        lock_name: &str,
        line: usize,
        what: &str,
    ) -> Result<(), ConfigError> {
        if let Some((existing, first)) = names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(lock_name))
        {
            let (problem, fix) = if *first == 0 {
                (
                    format!("{what} lock name `{lock_name}` is reserved for `{existing}`"),
                    format!("choose another name: `{existing}` is master-launch's own lock"),
                )
            } else {
                (
                    format!(
                        "{what} lock name `{lock_name}` is already used on line {first} (`{existing}`)"
                    ),
                    "give each global and account a name of its own".to_string(),
                )
            };
            return Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                line,
                problem,
                fix,
            });
        }
        names.push((lock_name.to_string(), line));
        Ok(())
    }

    fn claim_unique(
        &self,
        seen: &mut Vec<(String, usize, String)>,
        value: &Spanned<String>,
        account: &str,
        what: &str,
        normalise: impl Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        let key = normalise(value.get_ref());
        let line = self.line_of(value.span().start);
        if let Some((_, first, other)) = seen.iter().find(|(k, _, _)| *k == key) {
            return Err(self.invalid(
                value.span().start,
                format!(
                    "accounts `{other}` (line {first}) and `{account}` share the {what} `{}`",
                    value.get_ref()
                ),
                &format!("give each account its own {what}: two bots on one {what} trade against each other"),
            ));
        }
        seen.push((key, line, account.to_string()));
        Ok(())
    }

    fn component(
        &self,
        source: ComponentSource<'_>,
        defaults: &RawOptions,
        vars: &BTreeMap<String, String>,
        builtins: &BTreeMap<String, String>,
    ) -> Result<Component, ConfigError> {
        let substitute = |value: &str, offset: usize| -> Result<String, ConfigError> {
            substitute_vars(value, vars, builtins).map_err(|undefined| {
                self.invalid(
                    offset,
                    format!("`{{{undefined}}}` is not defined"),
                    "define it under [vars], or use one of {account}, {login}, {terminal}, {config_dir}, {python}",
                )
            })
        };
        let dir = self.dir();
        let command_at = source.command.span().start;
        if source
            .command
            .get_ref()
            .first()
            .is_none_or(|p| p.trim().is_empty())
        {
            return Err(self.invalid(
                command_at,
                format!("the command of `{}` is empty", source.lock_name),
                "give the program and its arguments, e.g. [\"{python}\", \"BRAIN_ATLAS.py\"]",
            ));
        }
        let mut command = source
            .command
            .get_ref()
            .iter()
            .map(|part| substitute(part, command_at))
            .collect::<Result<Vec<_>, _>>()?;
        // A relative program path resolves against the config's folder (as docs/reference.md
        // says), not against `cwd`; a bare name is left to the PATH search.
        if let Some(program) = command.first_mut()
            && is_relative_path(program)
        {
            let joined = dir.join(program.as_str());
            *program = std::path::absolute(&joined)
                .unwrap_or(joined)
                .display()
                .to_string();
        }
        let tokens = match source.pattern {
            Some(pattern) if pattern.get_ref().is_empty() => {
                return Err(self.invalid(
                    pattern.span().start,
                    format!("the match pattern of `{}` is empty", source.lock_name),
                    "list the command-line tokens that identify this process, or remove the key",
                ));
            }
            Some(pattern) => Some(
                pattern
                    .get_ref()
                    .iter()
                    .map(|part| substitute(part, pattern.span().start))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let copy_rule = CopyRule::new(&command, tokens);
        let cwd = match source.cwd.or(defaults.cwd.as_ref()) {
            Some(cwd) => dir.join(substitute(cwd, command_at)?),
            None => dir,
        };
        let mut env = BTreeMap::new();
        for (key, value) in defaults.env.iter().chain(source.env) {
            env.insert(key.clone(), substitute(value, command_at)?);
        }
        let restart_delay_ms = source
            .restart_delay_ms
            .or(defaults.restart_delay_ms.as_ref());
        self.check_restart_delay(source.restart_delay_ms)?;
        let give_up_after = source.give_up_after.or(defaults.give_up_after.as_ref());
        self.check_give_up_after(source.give_up_after)?;
        let stop_timeout_secs = match source
            .stop_timeout_secs
            .or(defaults.stop_timeout_secs.as_ref())
        {
            Some(value) => self.check_stop_timeout(value)?,
            None => DEFAULT_STOP_TIMEOUT_SECS,
        };
        let ready_timeout = match source
            .ready_timeout_secs
            .or(defaults.ready_timeout_secs.as_ref())
        {
            Some(value) => self.check_seconds(value, "ready_timeout_secs")?,
            None => DEFAULT_READY_TIMEOUT_SECS,
        };
        let heartbeat = match source.heartbeat_secs.or(defaults.heartbeat_secs.as_ref()) {
            Some(value) => Some(Duration::from_secs(
                self.check_seconds(value, "heartbeat_secs")?,
            )),
            None => None,
        };
        let ready = match source.ready.or(defaults.ready) {
            Some(ReadyKey::Notify) => Readiness::Notify {
                timeout: Duration::from_secs(ready_timeout),
            },
            Some(ReadyKey::Settle) | None => Readiness::Settle,
        };
        Ok(Component {
            lock_name: source.lock_name,
            role: source.role,
            account: source.account,
            enabled: source.enabled,
            command,
            cwd,
            env,
            copy_rule,
            stop_timeout: Duration::from_secs(stop_timeout_secs),
            restart: source
                .restart
                .or(defaults.restart)
                .unwrap_or(RestartPolicy::OnFailure),
            restart_delay: restart_delay_ms.map(|d| Duration::from_millis(*d.get_ref())),
            give_up_after: give_up_after.map_or(DEFAULT_GIVE_UP_AFTER, |g| *g.get_ref()),
            ready,
            heartbeat,
            line: source.line,
        })
    }
}

/// Terminal paths compare as Windows compares them: case and slash direction ignored.
fn normalise_path(path: &str) -> String {
    path.trim().replace('/', "\\").to_ascii_lowercase()
}

/// Whether a program names a path relative to somewhere (`venv/py`, `.\\py.exe`),
/// rather than a bare name for the PATH search or an absolute path (on either system:
/// `C:\\...` and `\\\\server\\...` count as absolute everywhere).
fn is_relative_path(program: &str) -> bool {
    let bytes = program.as_bytes();
    let windows_absolute = (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
        || program.starts_with(['\\', '/']);
    program.contains(['/', '\\']) && Path::new(program).is_relative() && !windows_absolute
}

/// Whether two paths name one folder: the same folder once both exist, else the same
/// path once `.` and `..` are resolved lexically.
fn same_folder(a: &Path, b: &Path) -> bool {
    if let (Ok(a), Ok(b)) = (a.canonicalize(), b.canonicalize()) {
        return a == b;
    }
    let lexical = |p: &Path| {
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = PathBuf::new();
        for part in absolute.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    };
    lexical(a) == lexical(b)
}

/// Why a `{var}` could not be substituted.
#[derive(Debug, PartialEq, Eq)]
enum VarError {
    Undefined(String),
    /// The chain of vars that leads back to its start.
    Cycle(Vec<String>),
}

/// Replaces `{name}` with its value; `{{` and `}}` stand for literal braces. Returns
/// the first undefined name as the error. Values of `vars` are already resolved.
fn substitute_vars(
    text: &str,
    vars: &BTreeMap<String, String>,
    builtins: &BTreeMap<String, String>,
) -> Result<String, String> {
    expand(text, vars, builtins, &mut Vec::new(), false).map_err(|e| match e {
        VarError::Undefined(name) => name,
        VarError::Cycle(chain) => chain.join(" -> "),
    })
}

/// The substitution itself. With `recurse`, a var's value is expanded in turn (with
/// `chain` the vars being expanded, to find a cycle), and the built-in names are kept
/// as they are, to be substituted where the var is used.
fn expand(
    text: &str,
    vars: &BTreeMap<String, String>,
    builtins: &BTreeMap<String, String>,
    chain: &mut Vec<String>,
    recurse: bool,
) -> Result<String, VarError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            // Kept doubled while resolving vars: the final substitution turns it into one.
            out.push_str(if recurse { &tail[..2] } else { &tail[..1] });
            rest = &tail[2..];
            continue;
        }
        match (tail.starts_with('{'), tail.find('}')) {
            (true, Some(close)) => {
                let name = &tail[1..close];
                if recurse {
                    if let Some(value) = vars.get(name) {
                        if let Some(first) = chain.iter().position(|n| n == name) {
                            let mut cycle = chain[first..].to_vec();
                            cycle.push(name.to_string());
                            return Err(VarError::Cycle(cycle));
                        }
                        chain.push(name.to_string());
                        out.push_str(&expand(value, vars, builtins, chain, true)?);
                        chain.pop();
                    } else if BUILTIN_VARS.contains(&name) {
                        out.push_str(&tail[..=close]);
                    } else {
                        return Err(VarError::Undefined(name.to_string()));
                    }
                } else {
                    let value = vars
                        .get(name)
                        .or_else(|| builtins.get(name))
                        .ok_or_else(|| VarError::Undefined(name.to_string()))?;
                    // A resolved var may still hold a built-in (`{account}`).
                    if vars.contains_key(name) && value.contains(['{', '}']) {
                        out.push_str(&expand(value, &BTreeMap::new(), builtins, chain, false)?);
                    } else {
                        out.push_str(value);
                    }
                }
                rest = &tail[close + 1..];
            }
            _ => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitution_handles_vars_builtins_and_escapes() {
        let v = vars(&[("python", "py.exe")]);
        let b = vars(&[("account", "ATLAS")]);
        assert_eq!(
            substitute_vars("{python} --account {account} {{x}}", &v, &b),
            Ok("py.exe --account ATLAS {x}".to_string())
        );
        assert_eq!(
            substitute_vars("{pyhton}", &v, &b),
            Err("pyhton".to_string())
        );
    }
}
