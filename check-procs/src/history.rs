//! `check-procs --events`: the desk's history from the event log (`events.jsonl` and
//! its rotated files, oldest first), filtered, as a table or JSON Lines.

use std::io::Write;
use std::time::Duration;

use lockcore::events::{DeskEvent, EventKind, events_path, read_history};
use lockcore::exit::ToolError;
use lockcore::{ExitCode, Fleet, errln};

/// The longest `--since`: ten years.
const MAX_SINCE: Duration = Duration::from_secs(3650 * 24 * 60 * 60);

/// Which events to show.
#[derive(Debug, Default)]
pub struct Filter {
    pub component: Option<String>,
    pub account: Option<String>,
    pub kinds: Vec<EventKind>,
    pub since: Option<Duration>,
}

impl Filter {
    fn keeps(&self, event: &DeskEvent, now: chrono::DateTime<chrono::Local>) -> bool {
        let same = |wanted: &Option<String>, have: &Option<String>| {
            wanted.as_ref().is_none_or(|w| {
                have.as_ref()
                    .is_some_and(|h: &String| h.eq_ignore_ascii_case(w))
            })
        };
        if !same(&self.component, &event.component) || !same(&self.account, &event.account) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind) {
            return false;
        }
        match self.since {
            None => true,
            Some(since) => event.time().is_some_and(|at| {
                let age = now.fixed_offset().signed_duration_since(at);
                age.to_std().map_or(true, |age| age <= since)
            }),
        }
    }
}

/// `--since 2h`: a number and a unit (`s`, `m`, `h`, `d`).
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a duration; use a number and a unit: 90s, 30m, 2h or 7d");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit.trim() {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(unit_secs).ok_or_else(bad)?;
    let since = Duration::from_secs(secs);
    if since > MAX_SINCE {
        return Err(format!(
            "`{text}` is more than ten years; use a shorter --since"
        ));
    }
    Ok(since)
}

/// `--kind K`: an event kind.
pub fn parse_kind(text: &str) -> Result<EventKind, String> {
    EventKind::parse(text).ok_or_else(|| {
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "unknown event kind `{text}`; the kinds: {}",
            known.join(", ")
        )
    })
}

/// Prints the history; exit 0 (an event log that cannot be read is an error naming it).
/// With `follow`, then prints each new event as it is written, until Ctrl+C.
pub fn print(
    fleet: &Fleet,
    filter: &Filter,
    json: bool,
    follow: bool,
) -> Result<ExitCode, ToolError> {
    let history = read_history(&fleet.log_dir)?;
    if history.files.is_empty() {
        errln!(
            "check-procs: no event log yet at {} (master-launch writes it while it runs)",
            events_path(&fleet.log_dir).display()
        );
    }
    let now = chrono::Local::now();
    let events: Vec<&DeskEvent> = history
        .events
        .iter()
        .filter(|e| filter.keeps(e, now))
        .collect();
    let mut text = String::new();
    if json {
        for event in &events {
            text.push_str(&serde_json::to_string(event)?);
            text.push('\n');
        }
    } else {
        text = table(&events);
    }
    write_out(&text)?;
    if history.skipped > 0 {
        errln!(
            "check-procs: note: {} line(s) of the event log are not events (cut short or \
             edited) and were skipped",
            history.skipped
        );
    }
    if follow {
        follow_events(&events_path(&fleet.log_dir), filter, json)?;
    }
    Ok(ExitCode::Ok)
}

fn write_out(text: &str) -> Result<(), ToolError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// How often `--follow` looks at the event log.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `--follow`: from the current end of the event log, each new complete line as it is
/// written (across a rotation: the rest of `events.jsonl.1`, then the new file).
fn follow_events(path: &std::path::Path, filter: &Filter, json: bool) -> Result<(), ToolError> {
    let mut offset = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut partial: Vec<u8> = Vec::new();
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut fresh = Vec::new();
        if len < offset {
            // Rotated: what was written after our offset is at the end of `.1`.
            fresh.extend(read_from(&lockcore::logs::rotated(path, 1), offset));
            offset = 0;
        }
        let tail = read_from(path, offset);
        offset += tail.len() as u64;
        fresh.extend(tail);
        partial.extend(fresh);
        let Some(end) = partial.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = partial.drain(..=end).collect();
        let now = chrono::Local::now();
        let mut text = String::new();
        for line in complete.split(|&b| b == b'\n') {
            let Ok(event) = serde_json::from_slice::<DeskEvent>(line) else {
                continue;
            };
            if !filter.keeps(&event, now) {
                continue;
            }
            if json {
                text.push_str(&serde_json::to_string(&event)?);
                text.push('\n');
            } else {
                text.push_str(table(&[&event]).lines().nth(1).unwrap_or_default());
                text.push('\n');
            }
        }
        write_out(&text)?;
    }
}

/// The bytes of `path` from `offset` on (nothing if it cannot be read).
fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.take(16 * 1024 * 1024).read_to_end(&mut bytes);
    }
    bytes
}

fn table(events: &[&DeskEvent]) -> String {
    let rows: Vec<[String; 4]> = events
        .iter()
        .map(|e| {
            let time = e.time().map_or_else(
                || e.at.clone(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            );
            let component = e.component.clone().unwrap_or_else(|| "-".into());
            let first = e.message.lines().next().unwrap_or_default();
            let summary = first
                .strip_prefix(&format!("{component}: "))
                .unwrap_or(first);
            let summary = match e.covers {
                Some(n) => format!("{summary} (covers {n})"),
                None => summary.to_string(),
            };
            [time, e.kind.as_str().to_string(), component, summary]
        })
        .collect();
    let header = ["TIME", "KIND", "COMPONENT", "SUMMARY"].map(String::from);
    let width = |i: usize| {
        rows.iter()
            .chain([&header])
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    let mut text = String::new();
    for row in [&header].into_iter().chain(rows.iter()) {
        text.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    if rows.is_empty() {
        text.push_str("(no events)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "2", "2x", "-1h", "99999999999999999999d", "5000d"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
