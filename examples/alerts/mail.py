#!/usr/bin/env python3
"""An [[alert]] command for master-launch: sends the event by e-mail (SMTP).

(Named mail.py, not email.py: a script named email.py would hide Python's own
`email` package from smtplib.)

master-launch runs it with the event's JSON on stdin and a one-line summary in
DESK_ALERT_SUMMARY. It mails the summary as the subject and the event (its message,
fix and every field) as the body, through the SMTP server named by:

    DESK_ALERT_SMTP_HOST   the server (required)
    DESK_ALERT_SMTP_PORT   its port (default 25; 587 with DESK_ALERT_SMTP_STARTTLS=1)
    DESK_ALERT_FROM        the sender address (required)
    DESK_ALERT_TO          the recipients, comma-separated (required)
    DESK_ALERT_SMTP_STARTTLS  1: upgrade to TLS (STARTTLS) before anything else
    DESK_ALERT_SMTP_USER / DESK_ALERT_SMTP_PASSWORD  log in (after STARTTLS) if set
    DESK_ALERT_SMTP_TIMEOUT   seconds to wait for the server (default 10; keep it
                              below the alert's timeout_secs)

    [[alert]]
    command = ["python", "alerts/mail.py"]
    # the variables above set in master-launch's environment

Exit 0 when the server accepted the mail; 1 when it could not be reached or refused
it (master-launch then tries twice more, and records alert_failed); 2 when a variable
or the event is missing or wrong. Standard library only.
"""

import json
import os
import smtplib
import socket
import sys
from email.message import EmailMessage


def fail(code, message):
    sys.stderr.write("mail.py: %s\n" % message)
    sys.exit(code)


def required(name, what):
    value = os.environ.get(name, "").strip()
    if not value:
        fail(2, "%s is not set: set it to %s (in the environment master-launch "
                "starts in)" % (name, what))
    return value


def number(name, default, kind):
    text = os.environ.get(name, "").strip() or str(default)
    try:
        return kind(text)
    except ValueError:
        fail(2, "%s must be a number, not %r" % (name, text))


def main():
    host = required("DESK_ALERT_SMTP_HOST", "the SMTP server's name or address")
    sender = required("DESK_ALERT_FROM", "the sender's e-mail address")
    recipients = [r.strip() for r in required(
        "DESK_ALERT_TO", "the recipients' addresses, comma-separated").split(",")
        if r.strip()]
    if not recipients:
        fail(2, "DESK_ALERT_TO names no address")
    starttls = os.environ.get("DESK_ALERT_SMTP_STARTTLS", "").strip() == "1"
    port = number("DESK_ALERT_SMTP_PORT", 587 if starttls else 25, int)
    timeout = number("DESK_ALERT_SMTP_TIMEOUT", 10, float)
    user = os.environ.get("DESK_ALERT_SMTP_USER", "")
    password = os.environ.get("DESK_ALERT_SMTP_PASSWORD", "")
    raw = sys.stdin.buffer.read()
    try:
        event = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        fail(2, "stdin is not the event's JSON (%s); run me from master-launch, "
                "or try `master-launch alert-test`" % e)
    if not isinstance(event, dict):
        fail(2, "stdin is JSON but not an event (an object)")
    summary = os.environ.get("DESK_ALERT_SUMMARY") or "%s: %s" % (
        event.get("component") or "desk", event.get("kind", "event"))
    mail = EmailMessage()
    # A header holds one line: the summary's first.
    mail["Subject"] = "[desk] " + summary.splitlines()[0] if summary else "[desk] alert"
    mail["From"] = sender
    mail["To"] = ", ".join(recipients)
    lines = [event.get("message") or summary, ""]
    if event.get("fix"):
        lines += ["What to do: " + event["fix"], ""]
    lines += ["The event:", json.dumps(event, indent=2, ensure_ascii=False)]
    mail.set_content("\n".join(lines))
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as server:
            if starttls:
                server.starttls()
            if user:
                server.login(user, password)
            server.send_message(mail, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPResponseException as e:
        fail(1, "the SMTP server %s:%d refused the alert: %d %s"
             % (host, port, e.smtp_code, e.smtp_error.decode("utf-8", "replace")))
    except smtplib.SMTPRecipientsRefused as e:
        fail(1, "the SMTP server %s:%d refused the recipients: %s"
             % (host, port, ", ".join(e.recipients)))
    except (smtplib.SMTPException, socket.timeout, OSError) as e:
        fail(1, "cannot send through the SMTP server %s:%d: %s (check "
                "DESK_ALERT_SMTP_HOST/PORT and the network)" % (host, port, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
