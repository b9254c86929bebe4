//! The definitions as golden text (insta), for the awkward paths the issue names, and
//! the rules the text must keep: names Task Scheduler and systemd accept, quoting
//! that reads back to the same arguments, XML that is well formed.

use std::time::Duration;

use super::*;

const WINDOWS_CONFIG: &str = r"C:\Program Files (x86)\Desk\fleet.toml";
const LINUX_CONFIG: &str = "/home/trader/Trading Desk (live)/fleet.toml";

/// A user SID of the usual shape (domain or machine part, then the user's RID).
const TEST_SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";

fn windows_entry(trigger: Trigger) -> Entry {
    let scheduler = Scheduler::TaskScheduler;
    Entry {
        scheduler,
        name: entry_name(scheduler, WINDOWS_CONFIG),
        exe: r"C:\Program Files (x86)\Desk\master-launch.exe".into(),
        config: WINDOWS_CONFIG.into(),
        folder: folder_of(scheduler, WINDOWS_CONFIG).into(),
        trigger,
        // A fixed SID, as `current_user` reads it from the token on Windows.
        user: Some(TEST_SID.into()),
        stop_timeout: Duration::from_secs(80),
    }
}

fn linux_entry() -> Entry {
    let scheduler = Scheduler::SystemdUser;
    Entry {
        scheduler,
        name: entry_name(scheduler, LINUX_CONFIG),
        exe: "/opt/desk tools/master-launch".into(),
        config: LINUX_CONFIG.into(),
        folder: folder_of(scheduler, LINUX_CONFIG).into(),
        trigger: Trigger::Logon,
        user: None,
        stop_timeout: Duration::from_secs(80),
    }
}

#[test]
fn task_definition_at_logon() {
    let entry = windows_entry(Trigger::Logon);
    assert_eq!(
        entry.name,
        r"DeskTools\MASTER_LAUNCH C-Program Files (x86)-Desk ".to_string()
            + &short_hash(&WINDOWS_CONFIG.to_lowercase())
    );
    assert_eq!(entry.folder, r"C:\Program Files (x86)\Desk");
    insta::assert_snapshot!(entry.definition().unwrap());
}

#[test]
fn task_definition_at_startup() {
    let xml = windows_entry(Trigger::Startup).definition().unwrap();
    // Issue #26: the startup task names its user too (by SID), not whoever registers it.
    assert!(
        xml.contains(&format!("<UserId>{TEST_SID}</UserId>")),
        "{xml}"
    );
    insta::assert_snapshot!(xml);
}

#[test]
fn unit_definition() {
    insta::assert_snapshot!(linux_entry().definition().unwrap());
}

/// A minimal well-formedness check (every tag closed in order) and the text of the
/// first element with each name: enough to pin what Task Scheduler reads.
fn xml_elements(xml: &str) -> Vec<(String, String)> {
    let body = xml.split_once("?>").expect("an XML declaration").1;
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut found = Vec::new();
    let mut rest = body;
    let mut offset = xml.len() - body.len();
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("an unclosed tag") + start;
        let tag = &rest[start + 1..end];
        let after = offset + end + 1;
        if let Some(name) = tag.strip_prefix('/') {
            let (open, text_start) = stack.pop().expect("a close tag with no open tag");
            assert_eq!(open, name, "tags closed out of order");
            found.push((
                name.to_string(),
                xml[text_start..offset + start].to_string(),
            ));
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap_or_default();
            stack.push((name.to_string(), after));
        }
        offset = after;
        rest = &xml[offset..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(!rest.contains(['<', '>']));
    found
}

fn element<'a>(elements: &'a [(String, String)], name: &str) -> &'a str {
    &elements
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no <{name}>"))
        .1
}

#[test]
fn task_definition_says_what_the_issue_asks() {
    let xml = windows_entry(Trigger::Logon).definition().unwrap();
    let elements = xml_elements(&xml);
    assert_eq!(element(&elements, "ExecutionTimeLimit"), "PT0S");
    assert_eq!(element(&elements, "MultipleInstancesPolicy"), "IgnoreNew");
    assert_eq!(element(&elements, "Interval"), "PT1M");
    assert_eq!(element(&elements, "LogonType"), "InteractiveToken");
    assert!(element(&elements, "LogonTrigger").contains(&format!("<UserId>{TEST_SID}</UserId>")));
    assert_eq!(
        element(&elements, "WorkingDirectory"),
        r"C:\Program Files (x86)\Desk"
    );
    assert_eq!(
        element(&elements, "Arguments"),
        "--headless &quot;C:\\Program Files (x86)\\Desk\\master-launch.exe&quot; \
         --config &quot;C:\\Program Files (x86)\\Desk\\fleet.toml&quot;"
    );
    let startup = windows_entry(Trigger::Startup).definition().unwrap();
    let elements = xml_elements(&startup);
    assert!(element(&elements, "BootTrigger").contains("<Enabled>true</Enabled>"));
    assert_eq!(element(&elements, "LogonType"), "S4U");
    assert!(!startup.contains("LogonTrigger"));
}

#[test]
fn xml_special_characters_are_escaped() {
    let mut entry = windows_entry(Trigger::Logon);
    entry.config = r"C:\R&D <desk>\it's.toml".into();
    entry.folder = r"C:\R&D <desk>".into();
    let xml = entry.definition().unwrap();
    let elements = xml_elements(&xml);
    assert_eq!(
        element(&elements, "WorkingDirectory"),
        r"C:\R&amp;D &lt;desk&gt;"
    );
    assert!(xml.contains("it&apos;s.toml"));
}

#[test]
fn task_names_avoid_what_task_scheduler_refuses() {
    let name = entry_name(Scheduler::TaskScheduler, WINDOWS_CONFIG);
    let (folder, leaf) = name.split_once('\\').unwrap();
    assert_eq!(folder, TASK_FOLDER);
    assert!(
        !leaf.contains(['\\', '/', ':', '*', '?', '"', '<', '>', '|']),
        "{leaf}"
    );
    assert!(!leaf.ends_with([' ', '.']));
    // At the root of a drive, and with a hostile folder name.
    let root = entry_name(Scheduler::TaskScheduler, r"C:\fleet.toml");
    assert!(root.starts_with(r"DeskTools\MASTER_LAUNCH C "), "{root}");
    let odd = entry_name(
        Scheduler::TaskScheduler,
        "C:\\a*b?\"c<d>e|f\u{1}\\fleet.toml",
    );
    assert!(!odd[TASK_FOLDER.len() + 1..].contains(['\\', '*', '?', '"', '<', '>', '|', '\u{1}']));
    // A very long path keeps its most specific end and stays short.
    let long = format!(r"C:\{}\desk\fleet.toml", "x".repeat(400));
    let long_name = entry_name(Scheduler::TaskScheduler, &long);
    assert!(long_name.chars().count() < 140, "{long_name}");
    assert!(long_name.contains("-desk "), "{long_name}");
}

#[test]
fn two_desks_get_two_names_and_case_does_not_matter_on_windows() {
    let task = |config| entry_name(Scheduler::TaskScheduler, config);
    assert_ne!(
        task(r"C:\Desk\fleet.toml"),
        task(r"C:\Desk\fleet-test.toml")
    );
    assert_ne!(task(r"C:\Desk\A\fleet.toml"), task(r"C:\Desk-A\fleet.toml"));
    // Task Scheduler matches names ignoring case, as the hash does.
    assert_eq!(
        task(r"C:\Desk\fleet.toml").to_lowercase(),
        task(r"c:\desk\FLEET.toml").to_lowercase()
    );
    let unit = |config| entry_name(Scheduler::SystemdUser, config);
    assert_ne!(unit("/srv/a b/fleet.toml"), unit("/srv/a_b/fleet.toml"));
    assert_ne!(unit("/srv/Desk/fleet.toml"), unit("/srv/desk/fleet.toml"));
    // Stable across versions: an older install must still be found.
    // FNV-1a 64 of "" and "a" are the published 0xcbf29ce484222325, 0xaf63dc4c8601ec8c.
    assert_eq!(short_hash(""), "4fd0bfc1");
    assert_eq!(short_hash("a"), "296230c0");
}

#[test]
fn unit_names_are_valid_systemd_names() {
    for config in [
        LINUX_CONFIG,
        "/fleet.toml",
        "/tmp/ünïcode dësk/fleet.toml",
        "/a/%b$c\\d\"e/fleet.toml",
    ] {
        let name = entry_name(Scheduler::SystemdUser, config);
        let stem = name.strip_suffix(".service").unwrap();
        assert!(
            stem.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{name}"
        );
        assert!(name.len() <= 255 && !stem.is_empty(), "{name}");
    }
}

/// systemd's reading of one `ExecStart=` line (systemd.syntax(7)): words split on
/// blanks, double quotes group, `\\` and `\"` unescape inside them, `%%` and `$$`
/// stand for `%` and `$`. Any other `%` or `$` would be expanded: refused here.
fn systemd_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        let Some(first) = chars.next() else { break };
        let mut word = String::new();
        assert_eq!(first, '"', "an unquoted word in {line}");
        loop {
            match chars.next().expect("an unterminated quote") {
                '"' => break,
                '\\' => word.push(chars.next().expect("a trailing backslash")),
                '%' => {
                    assert_eq!(chars.next(), Some('%'), "a bare % is a specifier");
                    word.push('%');
                }
                '$' => {
                    assert_eq!(chars.next(), Some('$'), "a bare $ is expanded");
                    word.push('$');
                }
                c => word.push(c),
            }
        }
        if let Some(c) = chars.peek() {
            assert_eq!(*c, ' ', "a quote must end its word");
        }
        words.push(word);
    }
    words
}

#[test]
fn unit_exec_start_quoting_round_trips() {
    for exe in [
        "/opt/desk tools/master-launch",
        r#"/opt/odd "quoted" \ 100% $HOME/master-launch"#,
    ] {
        let mut entry = linux_entry();
        entry.exe = exe.into();
        entry.config = "/srv/50% ${desk}/fleet.toml".into();
        let unit = entry.definition().unwrap();
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let words = systemd_words(line.replace("--config", "\"--config\"").as_str());
        assert_eq!(words, [exe, "--config", "/srv/50% ${desk}/fleet.toml"]);
        assert!(words[0].starts_with('/'), "ExecStart must be absolute");
    }
}

#[test]
fn unit_has_the_keys_the_issue_asks_for() {
    let unit = linux_entry().definition().unwrap();
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    for (key, value) in [
        ("Restart", "on-failure"),
        ("KillMode", "mixed"),
        ("TimeoutStopSec", "80"),
        ("WorkingDirectory", "/home/trader/Trading Desk (live)"),
        ("WantedBy", "default.target"),
    ] {
        assert!(
            keys.contains(&(key, value)),
            "{key}={value} missing:\n{unit}"
        );
    }
    let mut percent = linux_entry();
    percent.folder = "/srv/100%".into();
    assert!(
        percent
            .definition()
            .unwrap()
            .contains("WorkingDirectory=/srv/100%%\n")
    );
}

#[test]
fn windows_quoting_follows_command_line_to_argv() {
    assert_eq!(windows_quote(r"C:\a b\x.exe"), r#""C:\a b\x.exe""#);
    assert_eq!(windows_quote(r"C:\a b\"), r#""C:\a b\\""#);
    assert_eq!(windows_quote(r#"a"b"#), r#""a\"b""#);
    assert_eq!(windows_quote(r#"a\"b"#), r#""a\\\"b""#);
}

#[test]
fn task_xml_is_utf16_little_endian_with_a_bom_and_crlf() {
    let bytes = utf16le_with_bom("<a>é\n</a>");
    assert_eq!(&bytes[..2], &[0xff, 0xfe]);
    let units: Vec<u16> = bytes[2..]
        .chunks(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    assert_eq!(String::from_utf16(&units).unwrap(), "<a>é\r\n</a>");
}

#[test]
fn folders_of_both_syntaxes() {
    let win = Scheduler::TaskScheduler;
    assert_eq!(folder_of(win, r"C:\Desk\fleet.toml"), r"C:\Desk");
    assert_eq!(folder_of(win, r"C:\fleet.toml"), r"C:\");
    assert_eq!(
        folder_of(win, r"\\server\share\fleet.toml"),
        r"\\server\share"
    );
    let unix = Scheduler::SystemdUser;
    assert_eq!(folder_of(unix, "/srv/desk/fleet.toml"), "/srv/desk");
    assert_eq!(folder_of(unix, "/fleet.toml"), "/");
}

#[test]
fn the_stop_timeout_covers_every_stage() {
    let fleet = Fleet::from_toml(
        Path::new("/srv/desk/fleet.toml"),
        r#"
[defaults]
stop_timeout_secs = 5

[[global]]
name = "quantum_server"
command = ["python", "q.py"]
stop_timeout_secs = 7

[[account]]
name = "A"
brain = ["python", "brain_a.py"]
watchdog = ["python", "watchdog_a.py"]
stop_timeout_secs = 20

[[account]]
name = "B"
brain = ["python", "brain_b.py"]
watchdog = ["python", "watchdog_b.py"]

[[account]]
name = "OFF"
enabled = false
brain = ["python", "brain_off.py"]
watchdog = ["python", "watchdog_off.py"]
stop_timeout_secs = 1000
"#,
    )
    .unwrap();
    // brains: max(20, 5); watchdogs: max(20, 5); globals: 7; plus the 30 s margin.
    assert_eq!(
        desk_stop_timeout(&fleet),
        Duration::from_secs(20 + 20 + 7 + 30)
    );
}
