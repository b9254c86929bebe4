//! Which request files wait in a lock dir, from one read of the folder.
//!
//! master-launch looks for `NAME.stop`, `NAME.start` and `NAME.restart` of every
//! component four times a second. Probing each file is three failed opens per component
//! per look; one directory read answers them all, and only a file that is there is
//! opened. A folder that cannot be read answers "maybe" for every name, so a request is
//! never missed: the callers then probe each file as before.

use std::collections::HashSet;
use std::path::Path;

/// The entry names in a lock dir at one moment, case folded (Windows names ignore
/// case, so `brain_x.stop` is `BRAIN_X.stop` there).
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// `None`: the folder could not be read, so every name may be there.
    present: Option<HashSet<String>>,
}

impl Mailbox {
    /// One read of `lock_dir`.
    pub fn look(lock_dir: &Path) -> Mailbox {
        let present = std::fs::read_dir(lock_dir).ok().map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .map(|name| fold(&name))
                .collect()
        });
        Mailbox { present }
    }

    /// Whether an entry named `file_name` may be there: false only when the look saw
    /// the folder and no such entry.
    pub fn may_have(&self, file_name: &str) -> bool {
        self.present
            .as_ref()
            .is_none_or(|present| present.contains(&fold(file_name)))
    }
}

/// The case folding of lock names (ASCII: the config allows only ASCII names).
fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_file_is_seen_in_any_case_and_an_absent_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("BRAIN_X.stop"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("WATCHDOG_X.restart")).unwrap();
        let mailbox = Mailbox::look(dir.path());
        assert!(mailbox.may_have("BRAIN_X.stop"));
        assert!(mailbox.may_have("brain_x.STOP"));
        // Any entry counts: the reader decides what a directory or FIFO of that name is.
        assert!(mailbox.may_have("WATCHDOG_X.restart"));
        assert!(!mailbox.may_have("BRAIN_X.start"));
        assert!(!mailbox.may_have("BRAIN_Y.stop"));
        // A file made after the look is seen at the next look.
        std::fs::write(dir.path().join("BRAIN_X.start"), "{}").unwrap();
        assert!(!mailbox.may_have("BRAIN_X.start"));
        assert!(Mailbox::look(dir.path()).may_have("BRAIN_X.start"));
    }

    #[test]
    fn a_folder_that_cannot_be_read_may_have_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("removed");
        let mailbox = Mailbox::look(&gone);
        assert!(mailbox.may_have("BRAIN_X.stop"));
        // A file where the folder should be: not readable as a folder either.
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(Mailbox::look(&file).may_have("MASTER_LAUNCH.stop"));
    }
}
