//! The console the tools run in, while they run (Windows; nothing elsewhere).
//!
//! QuickEdit off: with it on, a click into the console window selects text and
//! freezes every write to the console until Esc (microsoft/terminal #34), so a desk's
//! log lines, or an emergency stop's progress, would stall behind a stray click. The
//! mode belongs to the console's input buffer, which `CONIN$` names even when standard
//! input is redirected (CreateFile, "Consoles"); it is restored when the guard drops.

/// Keeps QuickEdit off while it lives.
#[derive(Debug)]
pub struct QuickEditOff(#[allow(dead_code)] imp::Saved);

/// Switches QuickEdit off for this process's console, if it has one.
pub fn quick_edit_off() -> QuickEditOff {
    QuickEditOff(imp::quick_edit_off())
}

#[cfg(not(windows))]
mod imp {
    #[derive(Debug)]
    pub(super) struct Saved;

    pub(super) fn quick_edit_off() -> Saved {
        Saved
    }
}

#[cfg(windows)]
mod imp {
    use std::fs::File;
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::System::Console::{
        CONSOLE_MODE, ENABLE_EXTENDED_FLAGS, ENABLE_INSERT_MODE, ENABLE_QUICK_EDIT_MODE,
        GetConsoleMode, SetConsoleMode,
    };

    /// The console input buffer and its mode before, or nothing (no console).
    #[derive(Debug)]
    pub(super) struct Saved(Option<(File, CONSOLE_MODE)>);

    pub(super) fn quick_edit_off() -> Saved {
        let Ok(input) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("CONIN$")
        else {
            return Saved(None);
        };
        let mut mode: CONSOLE_MODE = 0;
        // SAFETY: a console handle we own, and an out-pointer to a local.
        if unsafe { GetConsoleMode(input.as_raw_handle(), &mut mode) } == 0 {
            return Saved(None);
        }
        // QuickEdit and Insert change only with ENABLE_EXTENDED_FLAGS, and setting that
        // flag without ENABLE_INSERT_MODE turns Insert off (SetConsoleMode). A mode read
        // without the flag says nothing of either: assume the console's defaults (both
        // on), and restore those.
        let (quiet, restore) = if mode & ENABLE_EXTENDED_FLAGS == 0 {
            let defaults = mode | ENABLE_EXTENDED_FLAGS | ENABLE_INSERT_MODE;
            (defaults, defaults | ENABLE_QUICK_EDIT_MODE)
        } else {
            (mode & !ENABLE_QUICK_EDIT_MODE, mode)
        };
        // SAFETY: as above.
        if unsafe { SetConsoleMode(input.as_raw_handle(), quiet) } == 0 {
            return Saved(None);
        }
        Saved(Some((input, restore)))
    }

    impl Drop for Saved {
        fn drop(&mut self) {
            if let Some((input, mode)) = &self.0 {
                // SAFETY: restoring the mode read from the same console buffer.
                unsafe { SetConsoleMode(input.as_raw_handle(), *mode) };
            }
        }
    }
}
