//! `fleet.toml`: the desk's one config file, its model and its validation.
//!
//! Parsing is in two steps. Serde reads the file into `Raw*` structs that keep the
//! source position of every value that a later check can blame (`toml::Spanned`) and
//! refuse unknown keys; then [`Fleet::from_toml`] checks what serde cannot (duplicate
//! names, logins and terminals, empty commands, undefined `{vars}`) and resolves the
//! result: paths against the config's folder, `{vars}` substituted, defaults applied.
//! Every refusal is a [`ConfigError::Invalid`] naming the file, the line and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::copies::CopyRule;

/// The config file every tool reads unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "fleet.toml";
/// The lock name `master-launch` holds for its lifetime.
pub const MASTER_LOCK_NAME: &str = "MASTER_LAUNCH";
const DEFAULT_STOP_TIMEOUT_SECS: u64 = 10;

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

/// What a process is for. The order of the variants is the safe stop order.
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
    /// Delay before the first restart; doubles on each quick failure (capped).
    pub restart_delay: Duration,
    /// Failures within a minute after which supervision gives up on it.
    pub give_up_after: u32,
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

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    lock_dir: Option<String>,
    log_dir: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    defaults: RawOptions,
    #[serde(default)]
    global: Vec<Spanned<RawGlobal>>,
    #[serde(default)]
    account: Vec<Spanned<RawAccount>>,
}

/// `[defaults]`: options that every process inherits unless it sets its own.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_timeout_secs: Option<u64>,
    restart: Option<RestartPolicy>,
    /// First restart delay; it doubles on each quick failure, up to 30 s.
    restart_delay_ms: Option<u64>,
    /// Give up on a component after this many failures within a minute.
    give_up_after: Option<u32>,
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
    stop_timeout_secs: Option<u64>,
    restart: Option<RestartPolicy>,
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
    stop_timeout_secs: Option<u64>,
    restart: Option<RestartPolicy>,
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
    stop_timeout_secs: Option<u64>,
    restart: Option<RestartPolicy>,
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
            "remove the key or correct its spelling (the README lists every key)"
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
        let mut builtins = BTreeMap::new();
        builtins.insert("config_dir".to_string(), dir.display().to_string());
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
                    stop_timeout_secs: g.stop_timeout_secs,
                    restart: g.restart,
                    line,
                },
                defaults,
                &raw.vars,
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
            let mut vars = builtins.clone();
            vars.insert("account".into(), name.clone());
            if let Some(login) = &a.login {
                vars.insert("login".into(), login.get_ref().clone());
            }
            if let Some(terminal) = &a.terminal {
                vars.insert("terminal".into(), terminal.get_ref().clone());
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
                stop_timeout_secs: a.stop_timeout_secs,
                restart: a.restart,
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
                watchdog: self.component(watchdog, defaults, &raw.vars, &vars)?,
                brain: self.component(brain, defaults, &raw.vars, &vars)?,
            });
        }

        Ok(Fleet {
            path: self.path.to_path_buf(),
            lock_dir: dir.join(raw.lock_dir.as_deref().unwrap_or(".locks")),
            log_dir: dir.join(raw.log_dir.as_deref().unwrap_or("logs")),
            globals,
            accounts,
        })
    }

    /// Names become lock file names: keep them to what every file system accepts.
    fn check_name(&self, name: &Spanned<String>, what: &str) -> Result<(), ConfigError> {
        let text = name.get_ref();
        let ok = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if ok {
            return Ok(());
        }
        Err(self.invalid(
            name.span().start,
            format!("{what} name `{text}` is not usable as a lock name"),
            "use only letters, digits, `_` and `-`",
        ))
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
            let problem = if *first == 0 {
                format!("{what} lock name `{lock_name}` is reserved for `{existing}`")
            } else {
                format!(
                    "{what} lock name `{lock_name}` is already used on line {first} (`{existing}`)"
                )
            };
            return Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                line,
                problem,
                fix: "give each global and account a name of its own".into(),
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
                    "define it under [vars], or use one of {account}, {login}, {terminal}, {config_dir}",
                )
            })
        };
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
        let command = source
            .command
            .get_ref()
            .iter()
            .map(|part| substitute(part, command_at))
            .collect::<Result<Vec<_>, _>>()?;
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
        let dir = self.dir();
        let cwd = match source.cwd.or(defaults.cwd.as_ref()) {
            Some(cwd) => dir.join(substitute(cwd, command_at)?),
            None => dir,
        };
        let mut env = defaults.env.clone();
        for (key, value) in source.env {
            env.insert(key.clone(), substitute(value, command_at)?);
        }
        let stop_timeout_secs = source
            .stop_timeout_secs
            .or(defaults.stop_timeout_secs)
            .unwrap_or(DEFAULT_STOP_TIMEOUT_SECS);
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
            restart_delay: Duration::from_millis(defaults.restart_delay_ms.unwrap_or(1000)),
            give_up_after: defaults.give_up_after.unwrap_or(5).max(1),
            line: source.line,
        })
    }
}

/// Terminal paths compare as Windows compares them: case and slash direction ignored.
fn normalise_path(path: &str) -> String {
    path.trim().replace('/', "\\").to_ascii_lowercase()
}

/// Replaces `{name}` with its value; `{{` and `}}` stand for literal braces. Returns
/// the first undefined name as the error.
fn substitute_vars(
    text: &str,
    vars: &BTreeMap<String, String>,
    builtins: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        match (tail.starts_with('{'), tail.find('}')) {
            (true, Some(close)) => {
                let name = &tail[1..close];
                let value = vars
                    .get(name)
                    .or_else(|| builtins.get(name))
                    .ok_or_else(|| name.to_string())?;
                out.push_str(value);
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
