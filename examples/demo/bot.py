#!/usr/bin/env python3
"""A stand-in trading bot: what every desk bot must do to live under the desk tools.

1. Refuse to run unless the desk tools started it under its lock (the two-line guard).
2. Know who it is from FLEET_LOCK_NAME, FLEET_ACCOUNT, FLEET_LOGIN, FLEET_TERMINAL.
3. Stop cleanly on SIGTERM (Linux) and CTRL_BREAK / SIGBREAK (Windows): close down,
   then exit 0. The tools force-kill a bot that does not stop within its timeout.
"""
import os
import signal
import sys
import time

# The two-line guard: a double-clicked copy has no lock, so it must not trade.
if not os.environ.get("FLEET_LOCK_FILE"):
    sys.exit("refusing to start: FLEET_LOCK_FILE is not set; start me through master-launch")

NAME = os.environ.get("FLEET_LOCK_NAME", "bot")
ACCOUNT = os.environ.get("FLEET_ACCOUNT", "-")
stopping = False


def request_stop(signum, _frame):
    global stopping
    print(f"{NAME}: signal {signum}: closing down", flush=True)
    stopping = True


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)
if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT
    signal.signal(signal.SIGBREAK, request_stop)

print(f"{NAME}: started, pid {os.getpid()}, account {ACCOUNT}, "
      f"login {os.environ.get('FLEET_LOGIN', '-')}", flush=True)
last_tick = 0.0
while not stopping:
    if time.monotonic() - last_tick >= 5:
        print(f"{NAME}: watching the market", flush=True)
        last_tick = time.monotonic()
    time.sleep(0.2)
print(f"{NAME}: stopped cleanly", flush=True)
