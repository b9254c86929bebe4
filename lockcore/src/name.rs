//! Lock names: the one rule for what may name a lock (a file name on every platform,
//! and a part of the machine-wide name). `fleet.toml` validation and every lock
//! operation use it; it depends on nothing else in the crate.

/// The longest lock name: `WATCHDOG_` and a 64-character account fit, far within what
/// any file system takes.
pub const MAX_LOCK_NAME_LEN: usize = 100;

/// Windows reserves these for devices, in any case and with any extension: `CON.lock`
/// is the console, not a file.
const DEVICE_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Why a string cannot be a lock name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Empty,
    /// Something other than ASCII letters, digits, `_` and `-`.
    Characters,
    TooLong,
    /// A Windows device name.
    Device,
}

/// The one rule for lock names (they are file names on every platform): `fleet.toml`
/// validation and every lock operation use it.
pub fn check_lock_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(BadName::Characters);
    }
    if name.len() > MAX_LOCK_NAME_LEN {
        return Err(BadName::TooLong);
    }
    if DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(name)) {
        return Err(BadName::Device);
    }
    Ok(())
}
