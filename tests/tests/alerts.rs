//! The event log and `[[alert]]` commands under a real master-launch: a crash loop
//! given up (one `given_up` alert; every start, exit and restart before it in
//! `events.jsonl`), an alert command that hangs (killed at its timeout, logged, and the
//! desk supervises meanwhile), a storm coalesced, `check-procs --events` across two
//! runs, `master-launch alert-test`, `examples/alerts/webhook.py` against a loopback
//! HTTP receiver and `examples/alerts/mail.py` against a loopback SMTP receiver.
//!
//! Unix only: the alert commands are `/bin/sh` scripts and the hang is ended with
//! `kill -9` (the alert code itself builds and runs on Windows).
#![cfg(unix)]
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_tests::orchestrated::{launch, master_launch, stop_desk, wait_supervised};
use fleet_tests::{Desk, force_kill, json_lines, tool, unique, wait_until};
use serde_json::Value;

/// `[[alert]]` appending each event it gets to `file`, one line each.
fn appending_alert(file: &Path, extra: &str) -> String {
    format!(
        "\n[[alert]]\ncommand = [\"/bin/sh\", \"-c\", 'cat >> \"{}\"']\n{extra}\n",
        file.display()
    )
}

fn events_file(desk: &Desk) -> PathBuf {
    desk.dir.path().join("logs/events.jsonl")
}

fn of(events: &[Value], component: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["component"] == component)
        .cloned()
        .collect()
}

#[test]
fn a_crash_loop_given_up_sends_exactly_one_given_up_alert_after_its_whole_history() {
    let account = unique("AGU");
    let brain = format!("BRAIN_{account}");
    let alerts = tempfile::NamedTempFile::new().unwrap();
    let tail = format!(
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 3\n{}",
        appending_alert(alerts.path(), "")
    );
    let desk = Desk::with_options(&unique("qs_gu_"), &[&account], &[], &tail);
    desk.add_args(&[&brain], &["--crash-after-ms", "100"]);
    let (running, _lines) = launch(&desk, &[]);
    wait_until("the given_up alert", || {
        json_lines(alerts.path())
            .iter()
            .any(|e| e["kind"] == "given_up")
    });
    stop_desk(&desk, running);

    let alerted = json_lines(alerts.path());
    let given_up: Vec<&Value> = alerted.iter().filter(|e| e["kind"] == "given_up").collect();
    assert_eq!(given_up.len(), 1, "{alerted:#?}");
    let alert = given_up[0];
    assert_eq!(alert["component"], brain.as_str());
    assert_eq!(alert["account"], account.as_str());
    assert_eq!(alert["failures"], 3);
    assert_eq!(alert["exit"], "code 3");
    assert!(
        alert["fix"]
            .as_str()
            .is_some_and(|fix| fix.contains("master-launch start")),
        "{alert}"
    );
    assert!(
        alert["at"]
            .as_str()
            .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok())
    );

    // The event log: every line JSON; the brain's starts, exits and restarts in order,
    // then the give-up.
    let events = json_lines(&events_file(&desk));
    let story: Vec<String> = of(&events, &brain)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .filter(|k| ["started", "exited", "restarting", "given_up"].contains(&k.as_str()))
        .collect();
    assert_eq!(
        story,
        [
            "started",
            "exited",
            "restarting",
            "started",
            "exited",
            "restarting",
            "started",
            "exited",
            "given_up"
        ],
        "{events:#?}"
    );
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["component"] == brain.as_str() && e["kind"] == "started")
        .collect();
    assert!(starts.iter().all(|e| e["pid"].as_u64().is_some()));
    assert!(events.first().is_some_and(|e| e["kind"] == "started"));
    assert!(events.iter().any(|e| e["kind"] == "desk_started"));
    assert_eq!(
        events.last().map(|e| e["kind"].clone()),
        Some("desk_stopped".into())
    );
    // The human log keeps its words.
    assert!(
        desk.master_log()
            .contains(&format!("{brain}: GIVING UP after 3 failures"))
    );
}

#[test]
fn an_alert_command_that_hangs_is_killed_at_its_timeout_and_supervision_goes_on() {
    let account = unique("AHG");
    let watchdog = format!("WATCHDOG_{account}");
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("hung-pids");
    // One hangs with the longest timeout (the watchdog's restart cannot be waiting for
    // it), one with a short one (it is killed, and that is said).
    let hang = |timeout: u32| {
        format!(
            "\n[[alert]]\ncommand = [\"/bin/sh\", \"-c\", 'echo $$ >> \"{}\"; exec sleep 1000']\n\
             kinds = [\"exited\"]\ntimeout_secs = {timeout}\n",
            pids.display()
        )
    };
    let tail = format!(
        "[defaults]\nstop_timeout_secs = 2\n{}{}",
        hang(600),
        hang(1)
    );
    let desk = Desk::with_options(&unique("qs_hg_"), &[&account], &[], &tail);
    let (running, _lines) = launch(&desk, &[]);
    let orchestrator = running.pid();
    let first = wait_supervised(&desk, &watchdog, orchestrator);
    force_kill(first);
    // Restarted while both alert commands hang on its exit.
    let second = wait_supervised(&desk, &watchdog, orchestrator);
    assert_ne!(first, second);
    wait_until("the short alert to be killed at its timeout", || {
        desk.master_log()
            .contains("still running after its timeout of 1 s: killed")
    });
    // Kill -9 it again: still restarted, the long alert still hanging.
    force_kill(second);
    let third = wait_supervised(&desk, &watchdog, orchestrator);
    assert_ne!(second, third);
    stop_desk(&desk, running);
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        if let Ok(pid) = pid.trim().parse() {
            force_kill(pid);
        }
    }
    let failed: Vec<Value> = json_lines(&events_file(&desk))
        .into_iter()
        .filter(|e| e["kind"] == "alert_failed")
        .collect();
    assert!(
        failed.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("timeout of 1 s"))),
        "{failed:#?}"
    );
}

#[test]
fn a_storm_of_crashes_is_coalesced_into_a_handful_of_alerts() {
    let account = unique("AST");
    let brain = format!("BRAIN_{account}");
    let alerts = tempfile::NamedTempFile::new().unwrap();
    let tail = format!(
        "[defaults]\nstop_timeout_secs = 2\ngive_up_after = 1000\nrestart_delay_ms = 1\n{}",
        appending_alert(alerts.path(), "kinds = [\"exited\"]")
    );
    let desk = Desk::with_options(&unique("qs_st_"), &[&account], &[], &tail);
    desk.add_args(&[&brain], &["--crash-after-ms", "50"]);
    let (running, _lines) = launch(&desk, &[]);
    wait_until("ten crashes", || {
        of(&json_lines(&events_file(&desk)), &brain)
            .iter()
            .filter(|e| e["kind"] == "exited")
            .count()
            >= 10
    });
    stop_desk(&desk, running);

    let exits = of(&json_lines(&events_file(&desk)), &brain)
        .iter()
        .filter(|e| e["kind"] == "exited")
        .count();
    let alerted: Vec<Value> = of(&json_lines(alerts.path()), &brain);
    assert!(alerted.len() <= 8, "{} alerts: {alerted:#?}", alerted.len());
    let last = alerted.last().unwrap_or_else(|| panic!("no alert at all"));
    let covered: u64 = alerted
        .iter()
        .map(|e| e["covers"].as_u64().unwrap_or(1))
        .sum();
    assert!(last["covers"].as_u64().is_some_and(|n| n >= 1), "{last}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("coalesced")),
        "{last}"
    );
    assert_eq!(
        covered, exits as u64,
        "every exit is told, one way or the other"
    );
}

#[test]
fn check_procs_events_reads_the_whole_history_across_master_launch_runs() {
    let account = unique("AEV");
    let desk = Desk::with_options(
        &unique("qs_ev_"),
        &[&account],
        &[],
        "[defaults]\nstop_timeout_secs = 2\n",
    );
    for _ in 0..2 {
        let (running, _lines) = launch(&desk, &[]);
        stop_desk(&desk, running);
    }
    // A line cut short by a crash is skipped and counted.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(events_file(&desk))
        .unwrap();
    file.write_all(b"{\"at\": \"2026-\n").unwrap();
    drop(file);

    let output = Command::new(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(desk.config())
        .args(["--events", "--json", "--since", "1h"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let desk_kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("desk_"))
        .collect();
    assert_eq!(
        desk_kinds,
        [
            "desk_started",
            "desk_stopping",
            "desk_stopped",
            "desk_started",
            "desk_stopping",
            "desk_stopped"
        ]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 line(s)"), "{stderr}");

    // Filters and the table.
    let brain = format!("BRAIN_{account}");
    let table = Command::new(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(desk.config())
        .args(["--events", "--component", &brain, "--kind", "started"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.contains(&brain) && r.contains("started, pid")),
        "{table}"
    );

    let refused = Command::new(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(desk.config())
        .args(["--events", "--kind", "exploded"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown event kind `exploded`"));
}

#[test]
fn alert_test_reports_each_command_and_fails_when_one_is_not_delivered() {
    let account = unique("AAT");
    let alerts = tempfile::NamedTempFile::new().unwrap();
    let tail = format!(
        "{}\n[[alert]]\ncommand = [\"/bin/sh\", \"-c\", 'echo no route to chat >&2; exit 3']\n",
        appending_alert(alerts.path(), "")
    );
    let desk = Desk::with_options(&unique("qs_at_"), &[&account], &[], &tail);
    let output = master_launch(&desk, &["alert-test"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("delivered"), "{stdout}");
    assert!(
        stdout.contains("NOT delivered: exited (code 3): no route to chat (tried 3 times)"),
        "{stdout}"
    );
    let sample = json_lines(alerts.path());
    assert_eq!(sample.len(), 1);
    assert_eq!(sample[0]["kind"], "alert_test");
}

/// A one-request HTTP receiver on loopback: answers `status`, hands back the body.
fn receiver(status: u16) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        String::from_utf8(body).unwrap()
    });
    (url, thread)
}

fn webhook(url: &str, stdin: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/alerts/webhook.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("DESK_ALERT_WEBHOOK_URL", url)
        .env("DESK_ALERT_SUMMARY", "BRAIN_X (X): given_up: gave up")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_webhook_example_posts_the_event_to_a_loopback_receiver() {
    let event = r#"{"kind":"given_up","component":"BRAIN_X","account":"X"}"#;
    let (url, received) = receiver(200);
    let output = webhook(&url, event);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let body: Value = serde_json::from_str(&received.join().unwrap()).unwrap();
    assert_eq!(body["text"], "BRAIN_X (X): given_up: gave up");
    assert_eq!(body["event"]["component"], "BRAIN_X");

    let (url, refused) = receiver(500);
    let output = webhook(&url, event);
    let _ = refused.join();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the alert: HTTP 500"), "{stderr}");

    let output = webhook("", event);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DESK_ALERT_WEBHOOK_URL is not set"));
}

#[test]
fn check_procs_events_follow_prints_new_events_across_a_rotation() {
    let desk = Desk::new(&unique("qs_fo_"), &[&unique("AFO")]);
    let path = events_file(&desk);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let line = |n: u32| {
        let mut event =
            lockcore::events::DeskEvent::new(lockcore::events::EventKind::Started, format!("n{n}"));
        event.pid = Some(n);
        serde_json::to_string(&event).unwrap() + "\n"
    };
    std::fs::write(&path, line(1) + &line(2)).unwrap();
    let mut child = Command::new(tool("check-procs", "check-procs"))
        .arg("--config")
        .arg(desk.config())
        .args(["--events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = fleet_tests::PidGuard(child.id());
    let lines = fleet_tests::spawn_reader(child.stdout.take().unwrap());
    let pid_of = |text: Option<String>| -> Option<u64> {
        serde_json::from_str::<Value>(&text?).ok()?["pid"].as_u64()
    };
    let wait = Duration::from_secs(30);
    assert_eq!(pid_of(lines.wait_for("\"pid\"", wait)), Some(1));
    assert_eq!(pid_of(lines.wait_for("\"pid\"", wait)), Some(2));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(line(3).as_bytes()).unwrap();
    drop(file);
    assert_eq!(pid_of(lines.wait_for("\"pid\"", wait)), Some(3));
    // A rotation as the log does it: the file becomes `.1`, a new one starts.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(line(4).as_bytes()).unwrap();
    drop(file);
    std::fs::rename(&path, lockcore::logs::rotated(&path, 1)).unwrap();
    std::fs::write(&path, line(5)).unwrap();
    assert_eq!(pid_of(lines.wait_for("\"pid\"", wait)), Some(4));
    assert_eq!(pid_of(lines.wait_for("\"pid\"", wait)), Some(5));
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback SMTP receiver for one session (RFC 5321's dialogue, as small as
/// smtplib needs): answers RCPT TO with `rcpt_code`; returns the transcript of what
/// the client said (commands and the message).
fn smtp_receiver(rcpt_code: u16) -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        let mut said = String::new();
        stream.write_all(b"220 loopback ESMTP test\r\n").unwrap();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            said.push_str(&line);
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    stream.write_all(b"250 queued\r\n").unwrap();
                }
                continue;
            }
            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
            let answer = match verb.as_str() {
                "EHLO" | "HELO" => "250 loopback\r\n".to_string(),
                "MAIL" => "250 ok\r\n".to_string(),
                "RCPT" => format!("{rcpt_code} rcpt\r\n"),
                "DATA" => {
                    in_data = true;
                    "354 go on\r\n".to_string()
                }
                "RSET" | "NOOP" => "250 ok\r\n".to_string(),
                "QUIT" => {
                    let _ = stream.write_all(b"221 bye\r\n");
                    break;
                }
                _ => "502 not here\r\n".to_string(),
            };
            stream.write_all(answer.as_bytes()).unwrap();
        }
        said
    });
    (port, thread)
}

fn email(env: &[(&str, String)], stdin: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/alerts/mail.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .env("DESK_ALERT_SUMMARY", "BRAIN_X (X): given_up: gave up")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in [
        "DESK_ALERT_SMTP_HOST",
        "DESK_ALERT_SMTP_PORT",
        "DESK_ALERT_FROM",
        "DESK_ALERT_TO",
        "DESK_ALERT_SMTP_STARTTLS",
        "DESK_ALERT_SMTP_USER",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_email_example_mails_the_event_to_a_loopback_smtp_receiver() {
    let event = r#"{"kind":"given_up","component":"BRAIN_X","account":"X","message":"BRAIN_X: GIVING UP after 5 failures","fix":"fix it, then master-launch start BRAIN_X"}"#;
    let settings = |port: u16| {
        vec![
            ("DESK_ALERT_SMTP_HOST", "127.0.0.1".to_string()),
            ("DESK_ALERT_SMTP_PORT", port.to_string()),
            ("DESK_ALERT_FROM", "desk@example.test".to_string()),
            (
                "DESK_ALERT_TO",
                "ops@example.test, night@example.test".to_string(),
            ),
        ]
    };
    let (port, received) = smtp_receiver(250);
    let output = email(&settings(port), event);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said = received.join().unwrap();
    // SMTP verbs ignore case (smtplib says `mail FROM:`).
    let envelope = said.to_ascii_lowercase();
    assert!(envelope.contains("mail from:<desk@example.test>"), "{said}");
    assert!(envelope.contains("rcpt to:<ops@example.test>"), "{said}");
    assert!(envelope.contains("rcpt to:<night@example.test>"), "{said}");
    assert!(
        said.contains("Subject: [desk] BRAIN_X (X): given_up: gave up"),
        "{said}"
    );
    assert!(
        said.contains("What to do: fix it, then master-launch start BRAIN_X"),
        "{said}"
    );
    assert!(said.contains("\"component\": \"BRAIN_X\""), "{said}");

    // The server refuses the recipients: exit 1, saying so.
    let (port, refused) = smtp_receiver(550);
    let output = email(&settings(port), event);
    let _ = refused.join();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the recipients"), "{stderr}");

    // Nothing set: exit 2, naming the variable.
    let output = email(&[], event);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DESK_ALERT_SMTP_HOST is not set"),
        "{stderr}"
    );
}
