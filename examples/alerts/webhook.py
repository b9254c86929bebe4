#!/usr/bin/env python3
"""An [[alert]] command for master-launch: posts the event to a chat webhook.

master-launch runs it with the event's JSON on stdin and a one-line summary in
DESK_ALERT_SUMMARY. It POSTs {"text": <summary>, "event": <the event>} as JSON to the
URL in DESK_ALERT_WEBHOOK_URL (Slack, Mattermost, Rocket.Chat and most chat webhooks
show "text"; the whole event rides along for anything that reads it).

    [[alert]]
    command = ["python", "alerts/webhook.py"]
    # DESK_ALERT_WEBHOOK_URL set in master-launch's environment

Exit 0 when the webhook answered 2xx; 1 when it could not be reached or refused the
post (master-launch then tries twice more, and records alert_failed); 2 when the URL
or the event is missing. Standard library only. DESK_ALERT_WEBHOOK_TIMEOUT sets the
seconds to wait for the webhook (default 5; keep it below the alert's timeout_secs).
"""

import json
import os
import sys
import urllib.error
import urllib.request

URL_VAR = "DESK_ALERT_WEBHOOK_URL"


def fail(code, message):
    sys.stderr.write("webhook.py: %s\n" % message)
    sys.exit(code)


def main():
    url = os.environ.get(URL_VAR, "").strip()
    if not url:
        fail(2, "%s is not set: set it to the chat webhook's URL "
                "(in the environment master-launch starts in)" % URL_VAR)
    if not url.lower().startswith(("http://", "https://")):
        fail(2, "%s must be an http:// or https:// URL, not %r" % (URL_VAR, url))
    try:
        timeout = float(os.environ.get("DESK_ALERT_WEBHOOK_TIMEOUT", "5"))
    except ValueError:
        fail(2, "DESK_ALERT_WEBHOOK_TIMEOUT must be a number of seconds")
    raw = sys.stdin.buffer.read()
    try:
        event = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        fail(2, "stdin is not the event's JSON (%s); run me from master-launch, "
                "or try `master-launch alert-test`" % e)
    summary = os.environ.get("DESK_ALERT_SUMMARY") or "%s: %s" % (
        event.get("component") or "desk", event.get("kind", "event"))
    body = json.dumps({"text": summary, "event": event}).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "desk-alert/1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as e:
        fail(1, "the webhook at %s refused the alert: HTTP %d %s" % (url, e.code, e.reason))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        fail(1, "cannot reach the webhook at %s: %s (check the URL and the network)"
             % (url, reason))
    if not 200 <= status < 300:
        fail(1, "the webhook at %s answered HTTP %d" % (url, status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
