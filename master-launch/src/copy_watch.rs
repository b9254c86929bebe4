//! `copy_scan_secs`: a thread of its own that looks for copies of the desk's
//! components running without their lock ([`lockcore::copy_scan`]) and says each
//! once, as a `duplicate` event (the event log, the human log, the alerts). It never
//! touches supervision: a scan that is slow delays only the next scan.

use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use lockcore::Fleet;
use lockcore::copy_scan::CopyScan;
use lockcore::process::ProcessProbe;

use crate::events::Events;

/// The running scan; [`CopyWatch::stop`] ends it.
#[derive(Debug)]
pub struct CopyWatch {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl CopyWatch {
    /// Starts the scans, the first one `copy_scan_secs` from now; `None` when
    /// `copy_scan_secs = 0` (or the thread cannot start, said in the log).
    pub fn start(fleet: &Fleet, events: Events) -> Option<CopyWatch> {
        if fleet.copy_scan_secs == 0 {
            return None;
        }
        let every = Duration::from_secs(fleet.copy_scan_secs);
        let fleet = fleet.clone();
        let (stop, stopped) = channel::<()>();
        let log = events.clone();
        let spawned = std::thread::Builder::new()
            .name("copy-scan".into())
            .spawn(move || {
                let mut probe = match ProcessProbe::new() {
                    Ok(probe) => probe,
                    Err(e) => {
                        events.line("", &format!("no scans for copies started by hand: {e}"));
                        return;
                    }
                };
                let mut scan = CopyScan::new();
                let mut last_error = None;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    match scan.scan(&fleet, &mut probe) {
                        Ok(found) => {
                            last_error = None;
                            for event in found {
                                events.line("", &event.message);
                                events.event(event);
                            }
                        }
                        Err(e) => {
                            // Said once until a scan works again, not every interval.
                            let text = e.to_string();
                            if last_error.as_ref() != Some(&text) {
                                events.line(
                                    "",
                                    &format!("cannot look for copies started by hand: {text}"),
                                );
                                last_error = Some(text);
                            }
                        }
                    }
                }
            });
        match spawned {
            Ok(thread) => Some(CopyWatch { stop, thread }),
            Err(e) => {
                log.line(
                    "",
                    &format!("no scans for copies started by hand: cannot start a thread: {e}"),
                );
                None
            }
        }
    }

    /// Ends the scans (a scan under way finishes first: milliseconds).
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
