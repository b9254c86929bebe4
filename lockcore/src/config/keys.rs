//! Every `fleet.toml` key, in words: the one place docs/reference.md's key list comes from
//! (`cargo xtask docs` writes it). A test holds [`CONFIG_KEYS`] to the keys the parser
//! accepts (the `Raw*` structs, which refuse any other key), so a key cannot be added
//! without its row, nor a row outlive its key.

use super::{RawAccount, RawAlert, RawCluster, RawFleet, RawGlobal, RawOptions};
use crate::introspect::struct_fields;

/// One key of one table.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    /// `""` for the top level, else the table: `[vars]`, `[defaults]`, `[[global]]`,
    /// `[[account]]`, `[cluster]`.
    pub table: &'static str,
    pub key: &'static str,
    pub meaning: &'static str,
}

const fn key(table: &'static str, key: &'static str, meaning: &'static str) -> ConfigKey {
    ConfigKey {
        table,
        key,
        meaning,
    }
}

const TOP: &str = "";
const DEFAULTS: &str = "[defaults]";
const GLOBAL: &str = "[[global]]";
const ACCOUNT: &str = "[[account]]";
const CLUSTER: &str = "[cluster]";
const ALERT: &str = "[[alert]]";

/// Every key, table by table, in the order docs/reference.md lists them.
pub const CONFIG_KEYS: &[ConfigKey] = &[
    key(
        TOP,
        "lock_dir",
        "the lock folder (default `.locks`); never the config's own folder",
    ),
    key(TOP, "log_dir", "the log folder (default `logs`)"),
    key(
        TOP,
        "vars",
        "`[vars]`: names for `{name}` substitution in commands, match, cwd and env",
    ),
    key(
        TOP,
        "defaults",
        "`[defaults]`: the options below, for every process",
    ),
    key(TOP, "global", "`[[global]]`: one per global process"),
    key(
        TOP,
        "account",
        "`[[account]]`: one per broker account (a watchdog and a brain)",
    ),
    key(
        TOP,
        "cluster",
        "`[cluster]`: locks shared with other machines through etcd (optional; without it \
         no network is touched)",
    ),
    key(
        TOP,
        "alert",
        "`[[alert]]`: a command told about events that need a person (optional; any number)",
    ),
    key(
        TOP,
        "log_files_kept",
        "rotated files each log keeps beside the current one (`X.log.1` ...; default 1, at \
         most 100); the event log `events.jsonl` too",
    ),
    key(
        TOP,
        "copy_scan_secs",
        "how often a running master-launch looks for copies of its components that run \
         without their lock (started by hand): each is a `duplicate` event and alert, once \
         (default 10, at most 3600; 0: never)",
    ),
    key(
        DEFAULTS,
        "cwd",
        "working folder (default: the config's folder)",
    ),
    key(
        DEFAULTS,
        "env",
        "environment variables; a process's own `env` adds to them",
    ),
    key(
        DEFAULTS,
        "stop_timeout_secs",
        "graceful stop, then forced (default 10, at most 86400)",
    ),
    key(
        DEFAULTS,
        "restart",
        "`always`, `on-failure` (default) or `never`",
    ),
    key(
        DEFAULTS,
        "restart_delay_ms",
        "delay before the first restart after a crash (default: none, at once; at most an \
         hour); later quick failures double it (from 250 ms when it is 0), capped at 30 s",
    ),
    key(
        DEFAULTS,
        "give_up_after",
        "failures within a minute before giving up (default 5, at least 1)",
    ),
    key(
        DEFAULTS,
        "ready",
        "`settle` (default: started once it has run 0.5 s) or `notify`: started once it \
         says `ready` (process_lock.ready()); a watchdog guards its brain only from then",
    ),
    key(
        DEFAULTS,
        "ready_timeout_secs",
        "with `ready = \"notify\"`: not ready this long after its start is a failed \
         start, stopped and restarted (default 60, 1 to 3600)",
    ),
    key(
        DEFAULTS,
        "heartbeat_secs",
        "once started, it must say `alive` (process_lock.heartbeat()) at least this \
         often, else it is hung: stopped and restarted, a watchdog's brain first \
         (default: none; 1 to 3600)",
    ),
    key(GLOBAL, "name", "its lock name"),
    key(GLOBAL, "command", "program and arguments"),
    key(
        GLOBAL,
        "match",
        "tokens that recognise a running copy (default: what the command runs)",
    ),
    key(
        GLOBAL,
        "enabled",
        "false: shown, never started (default true)",
    ),
    key(GLOBAL, "cwd", "as in `[defaults]`"),
    key(GLOBAL, "env", "as in `[defaults]`"),
    key(GLOBAL, "stop_timeout_secs", "as in `[defaults]`"),
    key(GLOBAL, "restart", "as in `[defaults]`"),
    key(GLOBAL, "restart_delay_ms", "as in `[defaults]`"),
    key(GLOBAL, "give_up_after", "as in `[defaults]`"),
    key(GLOBAL, "ready", "as in `[defaults]`"),
    key(GLOBAL, "ready_timeout_secs", "as in `[defaults]`"),
    key(GLOBAL, "heartbeat_secs", "as in `[defaults]`"),
    key(
        ACCOUNT,
        "name",
        "the account; locks `BRAIN_<name>` and `WATCHDOG_<name>`",
    ),
    key(ACCOUNT, "login", "broker login, `{login}`; unique"),
    key(
        ACCOUNT,
        "terminal",
        "MetaTrader terminal path, `{terminal}`; unique",
    ),
    key(
        ACCOUNT,
        "enabled",
        "false: shown, never started (default true)",
    ),
    key(ACCOUNT, "brain", "the brain's program and arguments"),
    key(ACCOUNT, "watchdog", "the watchdog's program and arguments"),
    key(ACCOUNT, "brain_match", "as `match`, for the brain"),
    key(ACCOUNT, "watchdog_match", "as `match`, for the watchdog"),
    key(ACCOUNT, "cwd", "as in `[defaults]`, for both"),
    key(ACCOUNT, "env", "as in `[defaults]`, for both"),
    key(ACCOUNT, "stop_timeout_secs", "as in `[defaults]`, for both"),
    key(ACCOUNT, "restart", "as in `[defaults]`, for both"),
    key(ACCOUNT, "restart_delay_ms", "as in `[defaults]`, for both"),
    key(ACCOUNT, "give_up_after", "as in `[defaults]`, for both"),
    key(ACCOUNT, "ready", "as in `[defaults]`, for both"),
    key(
        ACCOUNT,
        "ready_timeout_secs",
        "as in `[defaults]`, for both",
    ),
    key(ACCOUNT, "heartbeat_secs", "as in `[defaults]`, for both"),
    key(
        ACCOUNT,
        "brain_requires_watchdog",
        "false: the brain may run while its watchdog does not (default true: it never does)",
    ),
    key(
        CLUSTER,
        "endpoints",
        "etcd client URLs, `http://HOST:PORT` or (all of them) `https://HOST:PORT` with \
         `ca_file`, tried in order",
    ),
    key(
        CLUSTER,
        "lease_ttl_secs",
        "how long a lock outlives its holder's last renewal (default 10, 2 to 300)",
    ),
    key(
        CLUSTER,
        "host",
        "this machine's name in the locks (default: the machine's name; `FLEET_HOST` \
         overrides both)",
    ),
    key(
        CLUSTER,
        "desk",
        "key prefix: locks live under `/<desk>/locks/` (default `desk`)",
    ),
    key(CLUSTER, "user", "etcd user (with `password`)"),
    key(CLUSTER, "password", "etcd password (with `user`)"),
    key(
        CLUSTER,
        "ca_file",
        "PEM CA bundle that signs etcd's server certificate; required with `https://` \
         endpoints (relative to fleet.toml's folder)",
    ),
    key(
        CLUSTER,
        "cert_file",
        "PEM client certificate for etcd's `--client-cert-auth` (with `key_file`)",
    ),
    key(
        CLUSTER,
        "key_file",
        "PEM private key of `cert_file`, unencrypted (with `cert_file`)",
    ),
    key(
        ALERT,
        "command",
        "program and arguments, run in the config's folder by master-launch off the \
         supervision path: the event's JSON on stdin, a one-line summary in \
         `DESK_ALERT_SUMMARY`; exit 0 means delivered (a failure is retried twice)",
    ),
    key(
        ALERT,
        "kinds",
        "the event kinds it is told about (default: the ones marked *alert* in the event \
         table)",
    ),
    key(
        ALERT,
        "timeout_secs",
        "killed after this long, and that is logged (default 10, 1 to 600)",
    ),
];

/// The keys the parser accepts, table by table: read from the `Raw*` structs
/// themselves.
pub fn accepted_keys() -> [(&'static str, &'static [&'static str]); 6] {
    [
        (TOP, struct_fields::<RawFleet>()),
        (DEFAULTS, struct_fields::<RawOptions>()),
        (GLOBAL, struct_fields::<RawGlobal>()),
        (ACCOUNT, struct_fields::<RawAccount>()),
        (CLUSTER, struct_fields::<RawCluster>()),
        (ALERT, struct_fields::<RawAlert>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_key_has_exactly_one_row_and_every_row_a_key() {
        for (table, accepted) in accepted_keys() {
            assert!(!accepted.is_empty(), "no keys found for {table:?}");
            let mut documented: Vec<&str> = CONFIG_KEYS
                .iter()
                .filter(|k| k.table == table)
                .map(|k| k.key)
                .collect();
            let mut accepted = accepted.to_vec();
            documented.sort_unstable();
            accepted.sort_unstable();
            assert_eq!(
                documented, accepted,
                "the keys of {table:?} in CONFIG_KEYS (lockcore/src/config/keys.rs) must be \
                 the keys the parser accepts"
            );
        }
        assert!(
            CONFIG_KEYS
                .iter()
                .all(|k| [TOP, DEFAULTS, GLOBAL, ACCOUNT, CLUSTER, ALERT].contains(&k.table))
        );
    }
}
