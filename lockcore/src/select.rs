//! Which accounts a command acts on (`--only`, `--account`): one rule for every tool.

use crate::config::Fleet;
use crate::exit::UsageError;

/// All accounts, or the named ones: names checked against `fleet.toml`, compared
/// ignoring case (as account names are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountSelection {
    /// Empty: all.
    accounts: Vec<String>,
}

impl AccountSelection {
    /// Every account.
    pub fn all() -> AccountSelection {
        AccountSelection::default()
    }

    /// The named accounts, each of which must exist; `flag` names the option in the
    /// error (`--only`, `--account`).
    pub fn of(fleet: &Fleet, names: &[String], flag: &str) -> Result<AccountSelection, UsageError> {
        for name in names {
            if fleet.account(name).is_none() {
                let known: Vec<&str> = fleet.accounts.iter().map(|a| a.name.as_str()).collect();
                return Err(UsageError(format!(
                    "{flag} {name}: no such account in {} (accounts: {})",
                    fleet.path.display(),
                    known.join(", ")
                )));
            }
        }
        Ok(AccountSelection {
            accounts: names.to_vec(),
        })
    }

    pub fn is_all(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Whether something of `account` is selected; a global (no account) only when
    /// every account is.
    pub fn includes(&self, account: Option<&str>) -> bool {
        self.is_all()
            || account.is_some_and(|a| self.accounts.iter().any(|x| x.eq_ignore_ascii_case(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn accounts_are_checked_and_matched_ignoring_case() {
        let fleet = Fleet::from_toml(
            Path::new("fleet.toml"),
            "[[account]]\nname = \"ATLAS\"\nbrain = [\"b\"]\nwatchdog = [\"w\"]\n\
             [[account]]\nname = \"GL_3\"\nbrain = [\"b3\"]\nwatchdog = [\"w3\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let some = AccountSelection::of(&fleet, &["atlas".to_string()], "--account")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(some.includes(Some("ATLAS")));
        assert!(!some.includes(Some("GL_3")));
        assert!(!some.includes(None));
        assert!(AccountSelection::all().includes(None));
        let error = AccountSelection::of(&fleet, &["NOPE".to_string()], "--only")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("--only NOPE") && error.contains("ATLAS, GL_3"),
            "{error}"
        );
    }
}
