//! The JSON record inside a lock file: who holds the lock and what it runs.
//!
//! The format is a superset of the older PID-file tool's (`pid`, `name`, `account`,
//! `timestamp`), so a file written by either can be read by both. A record without
//! holder fields is a *legacy* record (DESIGN.md rule 5).

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use serde::{Deserialize, Serialize};

/// A record is a few hundred bytes; a file bigger than this is not one of ours, is
/// `corrupt`, and is never read whole into memory or printed. Lock-dir entries (stop
/// and start requests) are bounded by it too.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// What a lock file says about its holder and the process it manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The managed process (the bot). Equal to `holder_pid` until a child is spawned.
    pub pid: u32,
    /// The lock name, e.g. `BRAIN_ATLAS`.
    pub name: String,
    /// The account this lock belongs to, if any.
    #[serde(default)]
    pub account: Option<String>,
    /// When the record was written: local time without a zone, as the older tool wrote it.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Start time of `pid`, seconds since the Unix epoch.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The process that holds the OS lock (a launcher, or the tool itself).
    #[serde(default)]
    pub holder_pid: Option<u32>,
    /// Start time of `holder_pid`, seconds since the Unix epoch.
    #[serde(default)]
    pub holder_start: Option<u64>,
    /// Host name of the machine the holder runs on.
    #[serde(default)]
    pub host: Option<String>,
    /// Command line of the managed process.
    #[serde(default)]
    pub command: Vec<String>,
}

impl LockRecord {
    /// A record written by the older PID-file tool: no holder fields.
    pub fn is_legacy(&self) -> bool {
        self.holder_pid.is_none()
    }

    /// The lock holder's identity, when the record has both its pid and start time.
    pub fn holder_identity(&self) -> Option<crate::ProcessIdentity> {
        Some(crate::ProcessIdentity {
            pid: self.holder_pid?,
            start_time: self.holder_start?,
        })
    }

    /// The `timestamp` field as seconds since the Unix epoch, if it parses.
    ///
    /// Accepts the older tool's local time with no zone
    /// (`2026-02-11T09:30:00.123456`) and RFC 3339 with an offset.
    pub fn timestamp_secs(&self) -> Option<i64> {
        parse_timestamp(self.timestamp.as_deref()?)
    }

    /// The latest instant at which the record can have been written, in seconds since
    /// the Unix epoch: what a live process's start time is judged against (DESIGN.md
    /// rule 5). A timestamp with a zone is exact. The older tool wrote local time with
    /// no zone, and the writer's zone is unknown (a record from a bot in New York read
    /// by a tool under UTC), so its latest reading is taken: as if written in the
    /// westernmost zone, UTC-12. A genuine holder is then never judged younger than
    /// its record; a reused pid is still seen once its process started more than
    /// 12 h after the naive time (or after a zoned one).
    pub fn written_no_later_than(&self) -> Option<i64> {
        let text = self.timestamp.as_deref()?;
        if let Ok(with_zone) = DateTime::parse_from_rfc3339(text) {
            return Some(with_zone.timestamp());
        }
        let naive = parse_naive(text)?;
        Some(naive.and_utc().timestamp() + WESTERNMOST_OFFSET_SECS)
    }

    /// Parses a record; an error for anything that is not a JSON object with `pid` and `name`.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The record as the bytes written to a lock file.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The current local time in the older tool's format.
pub fn local_timestamp_now() -> String {
    Local::now()
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

/// Formats seconds since the epoch as local time, for display.
pub fn format_local(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| format!("{secs}s after the epoch"))
}

/// UTC-12 (Baker Island) is the last zone to reach any given local time: a naive local
/// time read there is the latest instant it can name.
const WESTERNMOST_OFFSET_SECS: i64 = 12 * 3600;

fn parse_naive(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
}

fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(with_zone) = DateTime::parse_from_rfc3339(text) {
        return Some(with_zone.timestamp());
    }
    let naive = parse_naive(text)?;
    // An ambiguous local time (DST fall-back) takes the earlier reading: it makes a
    // live process look older than the record, which errs towards "held".
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_record_parses_with_local_timestamp() {
        let text = br#"{"pid": 4242, "name": "BRAIN_ATLAS", "account": "ATLAS",
                        "timestamp": "2026-02-11T09:30:00.123456"}"#;
        let record = LockRecord::parse(text).unwrap();
        assert!(record.is_legacy());
        let expected = Local
            .with_ymd_and_hms(2026, 2, 11, 9, 30, 0)
            .earliest()
            .unwrap()
            .timestamp();
        assert_eq!(record.timestamp_secs(), Some(expected));
    }

    #[test]
    fn a_naive_timestamp_is_judged_at_its_latest_reading_and_a_zoned_one_exactly() {
        let at = |timestamp: &str| LockRecord {
            timestamp: Some(timestamp.into()),
            ..LockRecord::parse(br#"{"pid": 1, "name": "X"}"#).unwrap()
        };
        // 09:30 in New York is 14:30 UTC; the latest reading (UTC-12) is 21:30 UTC, so a
        // bot started at 14:30 UTC is never judged younger than its record, whatever
        // the reader's zone.
        let naive = at("2026-02-11T09:30:00.123456").written_no_later_than();
        let utc_2130 = DateTime::parse_from_rfc3339("2026-02-11T21:30:00Z")
            .unwrap()
            .timestamp();
        assert_eq!(naive, Some(utc_2130));
        let zoned = at("2026-02-11T09:30:00-05:00").written_no_later_than();
        let utc_1430 = DateTime::parse_from_rfc3339("2026-02-11T14:30:00Z")
            .unwrap()
            .timestamp();
        assert_eq!(zoned, Some(utc_1430));
        assert_eq!(
            at("2026-02-11T14:30:00Z").written_no_later_than(),
            Some(utc_1430)
        );
        assert_eq!(at("not a time").written_no_later_than(), None);
    }

    #[test]
    fn record_round_trips() {
        let record = LockRecord {
            pid: 7,
            name: "WATCHDOG_GL_3".into(),
            account: Some("GL_3".into()),
            timestamp: Some(local_timestamp_now()),
            pid_start: Some(100),
            holder_pid: Some(6),
            holder_start: Some(99),
            host: Some("desk".into()),
            command: vec!["python".into(), "w.py".into()],
        };
        assert_eq!(LockRecord::parse(&record.to_bytes()).unwrap(), record);
        assert!(!record.is_legacy());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xfe\x00garbage",
            b"{\"pid\": 12, \"na",
            b"[1,2]",
        ] {
            assert!(LockRecord::parse(bytes).is_err(), "{bytes:?}");
        }
    }
}
