"""A brain shaped like the desk's real ones, for the process-tree tests.

    order_bot.py NAME fork-worker ORDERS   the order loop runs in a forked worker
                                           (multiprocessing, as real bots do); the main
                                           process only watches
    order_bot.py NAME daemonize ORDERS     "connects", then daemonizes (double fork +
                                           setsid); the daemon trades; the main process
                                           exits 0
    order_bot.py NAME lone-thread ORDERS   as fork-worker, but the worker's main thread
                                           exits (the raw exit system call) while its
                                           order thread trades on: the kernel then shows
                                           the worker as a zombie although it runs

Whoever trades appends `PID MILLISECONDS ROLE` to ORDERS every 5 ms, one write per
line, so two processes trading one account at once show as overlapping orders.
Standard library only; Linux (fork).
"""

import ctypes
import multiprocessing
import os
import platform
import signal
import sys
import threading
import time


def trade(orders: str, role: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    trade_loop(orders, role)


def trade_on_a_thread(orders: str) -> None:
    """Trades on a second thread and ends the main thread alone: SYS_exit, not
    exit_group, so the process lives on as long as the order thread does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=trade_loop, args=(orders, "lone-thread"), daemon=True).start()
    time.sleep(0.05)
    sys_exit = {"x86_64": 60, "aarch64": 93}[platform.machine()]
    ctypes.CDLL(None, use_errno=True).syscall(sys_exit, 0)


def trade_loop(orders: str, role: str) -> None:
    fd = os.open(orders, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        os.write(fd, f"{os.getpid()} {time.time_ns() // 1_000_000} {role}\n".encode())
        time.sleep(0.005)


def main() -> None:
    name, mode, orders = sys.argv[1], sys.argv[2], sys.argv[3]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if mode in ("fork-worker", "lone-thread"):
        target, args = (trade, (orders, "worker")) if mode == "fork-worker" else (
            trade_on_a_thread, (orders,))
        worker = multiprocessing.get_context("fork").Process(target=target, args=args)
        worker.start()
        print(f"{name}: started pid {os.getpid()} worker {worker.pid}", flush=True)
        while True:
            time.sleep(1)
    elif mode == "daemonize":
        time.sleep(0.2)  # connecting to the terminal
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                trade(orders, "daemon")
            os._exit(0)
        print(f"{name}: daemonized", flush=True)
        time.sleep(0.1)  # closing its own connection
        print(f"{name}: exiting", flush=True)
        sys.exit(0)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
