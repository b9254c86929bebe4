//! What check-procs' `--json` document holds and what each component state means, in
//! words: the one place docs/reference.md's field and state tables come from (`cargo xtask
//! docs` writes them). Tests hold these lists to the code: [`ComponentState::ALL`] to
//! the enum's variants, and check-procs' own test [`JSON_FIELDS`] to a real document,
//! so a state or a field cannot exist without its row.

use super::ComponentState;

impl ComponentState {
    /// Every state, in the order docs/reference.md lists them.
    pub const ALL: [ComponentState; 18] = [
        ComponentState::Running,
        ComponentState::Unguarded,
        ComponentState::ProcessGone,
        ComponentState::Stale,
        ComponentState::Corrupt,
        ComponentState::Legacy,
        ComponentState::Duplicate,
        ComponentState::Unlocked,
        ComponentState::Stopped,
        ComponentState::Disabled,
        ComponentState::Starting,
        ComponentState::NotReady,
        ComponentState::Hung,
        ComponentState::Restarting,
        ComponentState::GivenUp,
        ComponentState::Blocked,
        ComponentState::NotStarted,
        ComponentState::Elsewhere,
    ];

    /// What the state means, for docs/reference.md's state table. A new state does not
    /// compile without its sentence.
    pub fn meaning(self) -> &'static str {
        match self {
            ComponentState::Running => "its lock is held: one copy runs under it",
            ComponentState::Unguarded => {
                "a brain that runs under its lock while its account's watchdog does not run on \
                 this machine (DESIGN.md rule 13; a problem, whoever started it: a brain running \
                 without its lock stays `unlocked`, with the `unguarded` problem too)"
            }
            ComponentState::ProcessGone => {
                "its lock is held but nothing of it runs (the bot exited and its holder has not \
                 released the lock: a holder that is frozen, or about to restart it; a problem)"
            }
            ComponentState::Stale => "a lock file nobody holds; nothing runs for it",
            ComponentState::Corrupt => {
                "a lock file nobody holds and nobody can read (or over 64 KiB); nothing runs for it"
            }
            ComponentState::Legacy => "an older tool's PID file names a live process",
            ComponentState::Duplicate => {
                "more than one copy runs (with `[cluster]`, also: one runs here under this \
                 machine's lock while another host holds its key)"
            }
            ComponentState::Unlocked => "a copy runs without any lock file (started by hand)",
            ComponentState::Stopped => {
                "enabled, not running, no lock file; with master-launch running: stopped on \
                 request, or exited cleanly and its restart policy does not restart it \
                 (`reason` says which); a crash that is not restarted is `given_up`"
            }
            ComponentState::Disabled => "its account is disabled in fleet.toml, and nothing runs",
            ComponentState::Starting => {
                "master-launch is starting it (a brain: waiting for its watchdog to run), or it \
                 runs under its lock and has not said it is ready yet (`ready = \"notify\"`, \
                 within its `ready_timeout_secs`; not a problem)"
            }
            ComponentState::NotReady => {
                "it runs under its lock and said it is not ready (`reason` says why, e.g. a lost \
                 terminal connection); a watchdog then guards nothing and its brain is held back \
                 (a problem for a watchdog)"
            }
            ComponentState::Hung => {
                "it missed its heartbeat (`heartbeat_secs`) or was not ready within its \
                 `ready_timeout_secs`: master-launch stops it and starts it again like a crash \
                 (a watchdog's brain first), shown so until it is ready again (a problem)"
            }
            ComponentState::Restarting => {
                "it exited; master-launch starts it again after a backoff (a problem)"
            }
            ComponentState::GivenUp => {
                "master-launch gave up on it after repeated failures (a problem, ranked after \
                 `duplicate`, `cluster_unreachable` and `unguarded`)"
            }
            ComponentState::Blocked => {
                "a brain master-launch holds back because its watchdog is not running (a problem)"
            }
            ComponentState::NotStarted => {
                "master-launch runs but was not asked to start it (`--only`)"
            }
            ComponentState::Elsewhere => {
                "with `[cluster]`: another host holds its key (`host`, `lease_ttl_left`) and \
                 nothing of it runs here; healthy (unless this machine's master-launch gave up \
                 on it: then `given_up`)"
            }
        }
    }
}

/// One row of the `--json` field table: fields of one object, their JSON type, their
/// meaning.
#[derive(Debug, Clone, Copy)]
pub struct JsonField {
    /// Where the fields are: `""` for the document itself, `components[]` for each
    /// element of that array, `autostart` for that object.
    pub parent: &'static str,
    /// The field names; an array of objects ends in `[]` (`components[]`).
    pub names: &'static [&'static str],
    pub kind: &'static str,
    pub meaning: &'static str,
}

impl JsonField {
    /// Each field's full path, as check-procs' test derives it from a real document:
    /// `version`, `components[]`, `components[].name`.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.names.iter().map(|name| match self.parent {
            "" => (*name).to_string(),
            parent => format!("{parent}.{name}"),
        })
    }
}

/// Fields whose content is not described field by field: a lock file's record is the
/// file's own JSON (see "Lock files" in docs/reference.md).
pub const JSON_OPAQUE: &[&str] = &["locks[].record"];

const fn field(
    parent: &'static str,
    names: &'static [&'static str],
    kind: &'static str,
    meaning: &'static str,
) -> JsonField {
    JsonField {
        parent,
        names,
        kind,
        meaning,
    }
}

/// Every field of check-procs' `--json` document, in the document's order.
pub const JSON_FIELDS: &[JsonField] = &[
    field("", &["version"], "number", "format version, `1`"),
    field("", &["config", "lock_dir"], "string", "the files read"),
    field("", &["taken_at"], "number", "Unix seconds"),
    field("", &["healthy"], "bool", "no problems"),
    field(
        "",
        &["components[]"],
        "object",
        "one per component, in start order",
    ),
    field(
        "components[]",
        &["name", "account", "role"],
        "string",
        "lock name, account (or null), `global`/`watchdog`/`brain`",
    ),
    field(
        "components[]",
        &["enabled"],
        "bool",
        "false for disabled accounts",
    ),
    field(
        "components[]",
        &["state"],
        "string",
        "what it is doing: one of the states below",
    ),
    field(
        "components[]",
        &["reason"],
        "string or null",
        "what the running master-launch says of it, in words (who stopped it and when, why \
         it was given up, when the next restart is); null without master-launch",
    ),
    field(
        "components[]",
        &["pid", "start_time", "uptime_secs"],
        "number or null",
        "the process shown (the locked one, else the first copy)",
    ),
    field(
        "components[]",
        &["holder_pid", "holder_alive"],
        "number or null, bool",
        "the process that holds the lock (a launcher)",
    ),
    field(
        "components[]",
        &["host"],
        "string or null",
        "with `[cluster]`: the host its etcd key names as holder (this machine's own name \
         when the key is held here); null when it has no key; always present, null without \
         `[cluster]`",
    ),
    field(
        "components[]",
        &["lease_ttl_left"],
        "number or null",
        "with `[cluster]`: whole seconds left on its key's lease, as the etcd leader counts \
         them; null when no key exists (or its lease just ended) or without `[cluster]`",
    ),
    field(
        "components[]",
        &["heartbeat_secs"],
        "number or null",
        "how often it must say `alive` once ready (the running master-launch's setting, else \
         fleet.toml's `heartbeat_secs`); null without heartbeats",
    ),
    field(
        "components[]",
        &["heartbeat_age_secs"],
        "number or null",
        "seconds (to 0.1 s) since its last word to master-launch (`ready`, `alive`, \
         `not-ready`), when the snapshot was taken; null when unknown (no master-launch, nothing heard \
         from this run)",
    ),
    field(
        "components[]",
        &["copies"],
        "number",
        "running copies found by command line (with `[cluster]`, not those another host's \
         key owns: both hosts on one machine see each other's bots)",
    ),
    field(
        "components[]",
        &["command"],
        "string[]",
        "the running command line, else the configured one",
    ),
    field("", &["locks[]"], "object", "every lock file"),
    field(
        "locks[]",
        &["name", "path"],
        "string",
        "lock name, the file's path",
    ),
    field(
        "locks[]",
        &["state"],
        "string",
        "`running`, `stale`, `corrupt` or `legacy`",
    ),
    field(
        "locks[]",
        &["record"],
        "object or null",
        "the file's JSON (see Lock files), or null when it cannot be read",
    ),
    field(
        "locks[]",
        &["detail"],
        "string",
        "why the state is what it is, in a short phrase",
    ),
    field(
        "",
        &["processes[]"],
        "object",
        "every running copy found by command line (not those another host's key owns)",
    ),
    field(
        "processes[]",
        &["name", "account"],
        "string",
        "the component's lock name, its account (or null)",
    ),
    field(
        "processes[]",
        &["pid", "start_time"],
        "number",
        "the copy's outermost process (a venv launcher, say)",
    ),
    field(
        "processes[]",
        &["pids"],
        "number[]",
        "the copy's whole tree, outermost first",
    ),
    field(
        "processes[]",
        &["locked"],
        "bool",
        "whether the component's lock owns this copy",
    ),
    field("processes[]", &["command"], "string[]", "its command line"),
    field(
        "",
        &["problems[]"],
        "object",
        "what is wrong, the worst first",
    ),
    field("problems[]", &["kind"], "string", "the problem table above"),
    field(
        "problems[]",
        &["name", "account"],
        "string",
        "the lock name it concerns (for `not_a_file` the entry's name, for \
         `cluster_unreachable` the key prefix), its account (or null)",
    ),
    field(
        "problems[]",
        &["pids"],
        "number[]",
        "the processes it concerns",
    ),
    field(
        "problems[]",
        &["message"],
        "string",
        "what is wrong and what to do, in words",
    ),
    field(
        "",
        &["autostart"],
        "object",
        "does the desk start by itself at logon/boot (`master-launch install`)",
    ),
    field(
        "autostart",
        &["installed"],
        "bool",
        "the task exists (Windows) or the unit file exists (Linux)",
    ),
    field(
        "autostart",
        &["name", "scheduler"],
        "string",
        "the task path or unit name; `task-scheduler` or `systemd-user`",
    ),
    field(
        "autostart",
        &["how"],
        "string",
        "in words: what was found (on Linux whether it is enabled), or how to install it",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_states_are_listed_once_and_spelled_as_json_spells_them() {
        let mut listed: Vec<&str> = ComponentState::ALL.iter().map(|s| s.as_str()).collect();
        for state in ComponentState::ALL {
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::Value::from(state.as_str()))
            );
            assert!(!state.meaning().is_empty());
        }
        let mut variants = crate::introspect::enum_variants::<ComponentState>().to_vec();
        listed.sort_unstable();
        variants.sort_unstable();
        assert_eq!(
            listed, variants,
            "ComponentState::ALL (lockcore/src/desk/documented.rs) must list every state"
        );
    }

    #[test]
    fn every_documented_field_is_named_once() {
        let mut paths: Vec<String> = JSON_FIELDS.iter().flat_map(JsonField::paths).collect();
        let count = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), count, "a field is documented twice");
        for field in JSON_FIELDS {
            assert!(
                field.parent.is_empty() || paths.iter().any(|p| p == field.parent),
                "{} has no row of its own",
                field.parent
            );
        }
    }
}
