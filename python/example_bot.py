"""
An example desk bot, shaped like the bots the desk already runs: the whole body inside
`with ProcessLock(...)`, "LOCK FAILURE: ..." and exit 1 when another copy runs.

It works under master-launch (the launcher holds the lock; FLEET_LOCK_NAME tells the
module so) and started by hand (the module takes the lock itself). Copy it beside
process_lock.py as, say, BRAIN_ATLAS.py: it takes its lock name from its file name
(the desk's bots write it out: `ProcessLock("BRAIN_ATLAS", account="212000584")`).

It says `ready()` once it runs and `heartbeat()` in every turn of its loop, so a desk
configured with `ready = "notify"` and `heartbeat_secs` can tell it started and that it
does not hang (both do nothing outside master-launch).
"""

import os
import signal
import sys
import time
from pathlib import Path

from process_lock import ProcessLock, heartbeat, ready

NAME = Path(__file__).stem
ACCOUNT = NAME.split("_", 1)[1] if "_" in NAME else None
stopping = False


def request_stop(signum, _frame):
    """SIGTERM (Linux) or CTRL_BREAK (Windows): finish the current step, then exit 0."""
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, request_stop)
if hasattr(signal, "SIGBREAK"):
    signal.signal(signal.SIGBREAK, request_stop)


def main():
    try:
        with ProcessLock(NAME, account=ACCOUNT):
            print(f"{NAME}: running, pid {os.getpid()}", flush=True)
            ready()  # connected and initialised: a real bot says so only then
            while not stopping:
                heartbeat()  # the loop still turns
                time.sleep(0.1)  # the bot's real work goes here
            print(f"{NAME}: stopped cleanly", flush=True)
            exit_log = os.environ.get("EXAMPLE_BOT_EXIT_LOG")  # for the desk's tests
            if exit_log:
                with open(exit_log, "a") as log:
                    log.write(f"{NAME} {time.time_ns() // 1_000_000}\n")
    except RuntimeError as e:
        print(f"LOCK FAILURE: {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
