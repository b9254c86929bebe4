"""
Process lock for desk bots: at most one running copy of each lock name.

A drop-in replacement for the older PID-file `process_lock.py`, with the same surface:
`LOCK_DIR`, `ProcessLock(name, account=None)`, `acquire() -> bool`, `release()`,
`get_lock_info()`, and `with ProcessLock(...):`, which raises `RuntimeError`
("Process lock 'NAME' is held by PID N. Started at T. Cannot start duplicate
process.") when another copy runs. Standard library only.

Two ways a bot runs:

- Under master-launch (or `master-launch run NAME`): the launcher took the lock
  before it started the bot and holds it for as long as the bot runs; it tells the bot
  through FLEET_LOCK_NAME and FLEET_LOCK_FILE. `acquire()` then only checks that the
  lock is held and that its record names this process (or its launcher: a Windows
  venv `python.exe` runs the real interpreter as its child) and writes nothing;
  `release()` leaves the file to its holder.
- Started any other way (by hand): the bot takes the same OS lock the desk tools take,
  on the same file (`LOCK_DIR/NAME.lock`), and writes the same JSON record, so
  check-procs shows it `running`, master-launch refuses to start a second copy, and
  lock-gc leaves it alone. The kernel drops the lock when the bot dies, however it
  dies, so a crash never blocks the next start.

The protocol is lockcore's (lockcore/src/lock/mod.rs and os.rs in the desk tools'
source): open without truncating; try the exclusive lock (Linux `flock`; Windows
`LockFileEx` on one byte at offset 2^62, on a handle that does not share delete);
check the path still names the locked file; treat an older tool's record that names a
live process started no later than its timestamp as held; only then write the record
(write, then cut to length). Release removes the file while still holding the lock.

One copy per machine, not per folder (DESIGN.md rule 17): before the file, a bot started
by hand takes the lock's machine-wide name, as the desk tools do (lockcore's
lock/machine.rs): on Linux an abstract unix socket name, `\\0desk-tools/lock/<name in
lower case>`; on Windows an exclusive lock on the file
`%ProgramData%\\desk-tools\\locks\\<name>.lock`. The kernel frees it when the holder dies
and nobody can delete it meanwhile, so a copy of the desk folder, or
a lock folder deleted under a running bot, does not let a second copy start. A holder
whose lock file is deleted creates it again (it still holds the name) and says so.

Readiness and heartbeats: `ready()` once the bot can do its job, `heartbeat()` in its
main loop (cheap: call it every iteration), `not_ready(reason)` when it cannot (a lost
terminal). Outside master-launch they do nothing, and they never raise or block. The
protocol, for a bot in any language:

- master-launch sets `DESK_NOTIFY=fd:<n>` (Unix: file descriptor n, a non-blocking
  stream socket) or `DESK_NOTIFY=handle:<decimal>` (Windows: an inherited,
  non-blocking anonymous-pipe write HANDLE); absent or malformed: say nothing.
- Say `ready`, `alive` or `not-ready <reason>` as one UTF-8 line ending in `\\n`, at most
  512 bytes with the newline (the reason on one line, cut to fit), in one write(2) /
  WriteFile each.
- Ignore every write error (EPIPE, EAGAIN, a closed fd or handle): never retry or block.
"""

import datetime
import errno
import json
import math
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Optional

LOCK_DIR = Path(__file__).parent / ".locks"
try:
    LOCK_DIR.mkdir(exist_ok=True)  # as the older module did; acquire() creates it too
except OSError:
    pass

# The lock's byte range and share mode on Windows: they must equal lockcore's
# (lockcore/src/os_file.rs: LOCK_OFFSET_HIGH, share_mode); a test compares them.
_LOCK_OFFSET_HIGH = 0x4000_0000  # OVERLAPPED.OffsetHigh: byte 2^62, past any record
_LOCK_LENGTH = 1
_FILE_SHARE_READ = 0x1
_FILE_SHARE_WRITE = 0x2
_SHARE_MODE = _FILE_SHARE_READ | _FILE_SHARE_WRITE  # no FILE_SHARE_DELETE (rule 7)

# As lockcore: a lock held by a process whose record names no live holder is a new
# holder mid-write or a tool mid-check; wait this long before calling it held.
_UNDECIDED_WAIT = 1.0
_RETRY_PAUSE = 0.002
# master-launch records the bot's pid just after starting it: wait this long for it.
_MANAGED_WAIT = 3.0
# A path that never stays the file we locked (something replaces it in a loop).
_GIVE_UP_AFTER = 10.0
# How often a holder checks that its file is still there (rule 7; Linux can unlink it).
_WATCH_EVERY = 5.0
# The machine-wide name (lockcore's lock/machine.rs: PREFIX, MAX_NAME); a test compares.
_MACHINE_PREFIX = "desk-tools/lock/"
_MACHINE_MAX_NAME = 100
# A naive timestamp is read at its latest instant: as written in UTC-12 (rule 5).
_WESTERNMOST_OFFSET_SECS = 12 * 3600

_WINDOWS = os.name == "nt"


class LockError(RuntimeError):
    """The lock cannot be taken or confirmed for a reason other than another copy."""


class ProcessLock:
    def __init__(self, name: str, account: Optional[str] = None):
        if not _valid_name(name):
            raise ValueError(
                f"{name!r} is not a valid lock name: use letters, digits, '_', '-' and '.'"
            )
        self.name = name
        self.account = account
        self.lock_file = Path(LOCK_DIR) / f"{name}.lock"
        self.acquired = False
        self._fd = None  # hand-started: the open, locked lock file
        self._key = None  # (device, inode) of the file we locked
        self._managed = False
        self._holder = None  # the record that made acquire() return False
        self._stop_watch = None
        self._machine = None  # hand-started: the held machine-wide name
        self._guard = threading.Lock()  # the watch thread's re-take against release()

    def acquire(self) -> bool:
        """Takes the lock. True if this process may run, False if another copy holds it.

        Raises LockError when it cannot tell (FLEET_LOCK_NAME names another lock, the
        launcher's lock file does not name this process, the file is not a regular file).
        """
        if self.acquired:
            return True
        self._holder = None
        fleet_name = os.environ.get("FLEET_LOCK_NAME")
        if fleet_name:
            if fleet_name != self.name:
                raise LockError(
                    f"this process was started under the lock {fleet_name} "
                    f"(FLEET_LOCK_NAME), but it asks for the lock {self.name}: the bot "
                    f"and the component that starts it disagree; fix the command or "
                    f"the name in fleet.toml"
                )
            return self._confirm_managed()
        return self._take()

    def release(self):
        """Releases a lock this process took by hand and removes its file.

        Under a launcher it does nothing: the launcher holds the lock and removes it.
        """
        if not self.acquired:
            return
        self.acquired = False
        if self._managed:
            self._managed = False
            return
        if self._stop_watch is not None:
            self._stop_watch.set()
        with self._guard:
            fd, self._fd = self._fd, None
            machine, self._machine = self._machine, None
            try:
                if fd is None:
                    return
                if not _names_file(self.lock_file, self._key):
                    _os_close(fd)
                    _warn_lost(self.name, self.lock_file)
                    return
                _remove_locked(fd, self.lock_file)
            finally:
                # The machine-wide name last: a taker that gets it finds the file gone.
                _free_machine(machine)

    def get_lock_info(self) -> Optional[dict]:
        """The record in the lock file, or None if there is none or it is unreadable."""
        try:
            fd = _open_for_reading(self.lock_file)
        except (OSError, RuntimeError):
            return None
        try:
            record = json.loads(_read_fd(fd).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        finally:
            _os_close(fd)
        return record if isinstance(record, dict) else None

    def __enter__(self):
        if not self.acquire():
            info = self._holder or self.get_lock_info() or {}
            if info.get("machine_wide"):
                raise RuntimeError(
                    f"Process lock '{self.name}' is held by PID {info.get('pid', 'unknown')} "
                    f"on this machine, outside {LOCK_DIR} (another copy of the desk "
                    f"folder?). Cannot start duplicate process. Find it with check-procs "
                    f"in that desk's folder and stop it with safe-shutdown there."
                )
            raise RuntimeError(
                f"Process lock '{self.name}' is held by PID {info.get('pid', 'unknown')}. "
                f"Started at {info.get('timestamp', 'an unknown time')}. "
                f"Cannot start duplicate process."
            )
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.release()

    # --- under a launcher -------------------------------------------------------

    def _confirm_managed(self) -> bool:
        lock_file = os.environ.get("FLEET_LOCK_FILE")
        if not lock_file:
            raise LockError(
                f"FLEET_LOCK_NAME is {self.name} but FLEET_LOCK_FILE is not set: start "
                f"this bot with master-launch, or unset FLEET_LOCK_NAME to start it by hand"
            )
        self.lock_file = Path(lock_file)
        # Ourselves, and our parent for a launcher (venv python.exe) between us.
        candidates = [os.getpid(), os.getppid()]
        deadline = time.monotonic() + _MANAGED_WAIT
        while True:
            record = self.get_lock_info()
            names_us = (
                record is not None
                and record.get("name") == self.name
                and _names_process(record, candidates)
            )
            if names_us and _is_held(self.lock_file):
                self._managed = True
                self.acquired = True
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if record is None:
            why = "is missing or unreadable"
        elif not names_us:
            why = f"names pid {record.get('pid')}, not this process (pid {os.getpid()})"
        else:
            why = "is not locked by any process"
        raise LockError(
            f"FLEET_LOCK_NAME says a launcher holds {self.name} for this process, but "
            f"its lock file {self.lock_file} {why}; start the bot with master-launch "
            f"(or `master-launch run {self.name}`), or unset FLEET_LOCK_NAME and "
            f"FLEET_LOCK_FILE to start it by hand"
        )

    # --- by hand ------------------------------------------------------------------

    def _take(self) -> bool:
        # The machine-wide name first, the file second, as the desk tools do: every
        # taker goes the same way, so two never block each other half-way.
        machine = self._take_machine()
        if machine is None:
            return False
        taken = False
        try:
            taken = self._take_file()
            return taken
        finally:
            if taken:
                self._machine = machine
            else:
                _free_machine(machine)

    def _take_machine(self):
        """The machine-wide name, or None (with self._holder set) if another process
        holds it. Held by the holder of our own file: that holder, from its record.
        Held by nobody here: a holder releasing (file first, name next) or just dead
        frees it in a moment, so wait as the desk tools do before naming it."""
        machine_name = _machine_name(self.name)
        started = time.monotonic()
        while True:
            try:
                machine = _try_take_machine(machine_name)
            except OSError as e:
                raise LockError(
                    f"cannot take the machine-wide lock for {self.name} ({machine_name!r}): "
                    f"{e}; without it a copy of the desk folder could run {self.name} "
                    f"twice, so this bot does not start"
                ) from e
            if machine is not None:
                return machine
            waited = time.monotonic() - started
            if _is_held(self.lock_file):
                # Its record, once the new holder has written it (as for the file).
                record = _parse_record(_read_path(self.lock_file))
                if _names_live_holder(record) or waited >= _UNDECIDED_WAIT:
                    self._holder = record or {"name": self.name}
                    return None
            elif waited >= _UNDECIDED_WAIT:
                pid = _machine_holder_pid(machine_name)
                self._holder = {
                    "name": self.name,
                    "pid": "unknown" if pid is None else pid,
                    "machine_wide": True,
                }
                return None
            time.sleep(0.01)

    def _take_file(self) -> bool:
        path = self.lock_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LockError(f"cannot create lock folder {path.parent}: {e}") from e
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            if waited >= _GIVE_UP_AFTER:
                raise LockError(f"cannot take {self.name}: {path} keeps changing under us")
            try:
                fd = _open_lock_file(path)
            except OSError as e:
                if _is_transient(e) and waited < _UNDECIDED_WAIT:
                    time.sleep(_RETRY_PAUSE)
                    continue
                raise LockError(f"cannot open lock file {path}: {e}") from e
            keep = False
            try:
                if _try_lock(fd, exclusive=True):
                    key = _file_key(fd)
                    if not _names_file(path, key):
                        continue  # released and removed between our open and our lock
                    legacy = _live_legacy_record(_read_fd(fd))
                    if legacy is not None:
                        self._holder = legacy
                        return False
                    try:
                        self._write_record(fd)
                    except OSError as e:
                        raise LockError(f"cannot write the record to {path}: {e}") from e
                    self._fd, self._key, keep = fd, key, True
                    self.acquired = True
                    self._watch()
                    return True
                if _try_lock(fd, exclusive=False):
                    _unlock(fd)  # only inspectors were in the way: not held
                    time.sleep(_RETRY_PAUSE)
                    continue
                record = _parse_record(_read_fd(fd))
                if _names_live_holder(record) or waited >= _UNDECIDED_WAIT:
                    self._holder = record
                    return False
                time.sleep(_RETRY_PAUSE)
            except OSError as e:
                raise LockError(f"cannot lock {path}: {e}") from e
            finally:
                if not keep:
                    _os_close(fd)

    def _write_record(self, fd):
        me = os.getpid()
        start = _start_time(me)
        record = {
            "pid": me,
            "name": self.name,
            # The desk tools read it as text; bots have passed numbers.
            "account": None if self.account is None else str(self.account),
            "timestamp": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f"),
            "pid_start": start,
            "holder_pid": me,
            "holder_start": start,
            "host": socket.gethostname(),
            "command": list(getattr(sys, "orig_argv", [sys.executable] + sys.argv)),
        }
        data = (json.dumps(record, indent=2) + "\n").encode("utf-8")
        # Write first, then cut to length: a reader never sees an empty file.
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
        os.fsync(fd)

    def _watch(self):
        """On Linux anyone can unlink a held lock's file, or its whole folder. This
        process still holds the machine-wide name, so nobody else can have taken the
        lock: create, lock and record the file again, and say so loudly."""
        stop = threading.Event()
        self._stop_watch = stop
        name, path = self.name, self.lock_file

        def watch():
            while not stop.wait(_WATCH_EVERY):
                with self._guard:
                    if self._fd is None:
                        return
                    if _names_file(path, self._key):
                        continue
                    retaken = self._take_again()
                if not retaken:
                    _warn_lost(name, path)
                    return
                sys.stderr.write(
                    f"WARNING: lock file {path} was deleted or replaced while {name} held "
                    f"it; its machine-wide lock stayed held, so nobody could take {name} "
                    f"meanwhile; the lock file was taken again and its record written "
                    f"again. Find out who deletes lock files: only the desk tools may\n"
                )
                sys.stderr.flush()

        threading.Thread(target=watch, name=f"watch {name}", daemon=True).start()

    def _take_again(self) -> bool:
        """Creates, locks and records our lock file again after it went (under
        self._guard). Anything already at the path is someone else's: not taken."""
        path = self.lock_file
        try:
            os.lstat(path)
            return False
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_lock_file(path)
        except (OSError, RuntimeError):
            return False
        try:
            key = _file_key(fd)
            if (
                not _try_lock(fd, exclusive=True)
                or not _names_file(path, key)
                or os.fstat(fd).st_size != 0
            ):
                _os_close(fd)
                return False
            self._write_record(fd)
        except OSError:
            _os_close(fd)
            return False
        old, self._fd, self._key = self._fd, fd, key
        _os_close(old)  # its file is gone from the folder
        return True


# --- readiness and heartbeats: master-launch's notify channel ----------------------

# DESK_NOTIFY's longest line, the newline included (the protocol's limit).
_NOTIFY_MAX_LINE = 512


def ready():
    """Tells master-launch this bot is ready: initialised, connected, doing its job.

    A watchdog configured with `ready = "notify"` guards its account only from this
    call on (its brain starts then). Call it once initialised, and again after
    `not_ready()` once the bot is back. Does nothing outside master-launch; never
    raises, never blocks.
    """
    _notify("ready")


def heartbeat():
    """Tells master-launch this bot's main loop still runs ("alive").

    With `heartbeat_secs = N` a bot that says nothing for N seconds once ready is taken
    for hung: stopped and restarted. Cheap (one non-blocking write): call it in every
    iteration of the main loop. Does nothing outside master-launch; never raises,
    never blocks.
    """
    _notify("alive")


def not_ready(reason):
    """Tells master-launch this bot cannot do its job now, and why (shown by check-procs).

    A watchdog that is not ready holds its brain back until it says `ready()` again.
    `reason` is made one line (newlines become spaces) and cut to fit the protocol's
    512-byte line. Does nothing outside master-launch; never raises, never blocks.
    """
    try:
        text = str(reason).replace("\r", " ").replace("\n", " ")
    except Exception:  # a reason whose str() fails must not break the bot's loop
        text = "(no reason given)"
    _notify(f"not-ready {text}")


class _Notify:
    """The channel, opened on first use: `channel` is None until then, False when this
    process has none. `pending` is the tail of a line a full channel took only part of,
    written before the next line so that master-launch never reads a broken line."""

    lock = threading.Lock()
    channel = None
    pending = b""


def _notify(line):
    try:
        data = _notify_line(line)
        # Writes never block, so the lock is held for microseconds; a signal handler that
        # calls in while its own thread holds it gives up after 50 ms instead of deadlocking.
        if not _Notify.lock.acquire(timeout=0.05):
            return
        try:
            if _Notify.channel is None:
                _Notify.channel = _open_notify(os.environ.get("DESK_NOTIFY", "")) or False
            if _Notify.channel is False:
                return
            out = _Notify.pending + data
            try:
                written = _Notify.channel.write(out)
            except OSError:  # EAGAIN, EPIPE, a closed fd: this line is lost, not the bot
                return
            if not isinstance(written, int) or written <= 0:
                return  # nothing taken: this line is lost, a pending tail stays
            rest = out[written:]
            # Keep only the rest of a line cut in the middle; whole lines not taken are lost.
            cut = out[written - 1:written] != b"\n"
            _Notify.pending = rest[: rest.find(b"\n") + 1] if cut else b""
        finally:
            _Notify.lock.release()
    except Exception:  # never let the channel reach the bot's trading loop
        pass


def _reset_notify_lock():
    # A child forked while another thread held the lock must not wait for it.
    _Notify.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_notify_lock)


def _notify_line(line) -> bytes:
    """`line` as the protocol's UTF-8 line: cut on a character boundary to 511 bytes,
    then the newline."""
    data = line.encode("utf-8", "replace")
    if len(data) >= _NOTIFY_MAX_LINE:
        data = data[: _NOTIFY_MAX_LINE - 1].decode("utf-8", "ignore").encode("utf-8")
    return data + b"\n"


def _notify_spec(text, kind) -> Optional[int]:
    """The number in `kind:<decimal>`, or None if `text` is not that."""
    prefix = kind + ":"
    if not text.startswith(prefix):
        return None
    digits = text[len(prefix):]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        return None
    return int(digits)


# --- records and processes ----------------------------------------------------------


def _valid_name(name) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and all(c.isascii() and (c.isalnum() or c in "_-.") for c in name)
    )


def _parse_record(data: bytes) -> Optional[dict]:
    """A record the desk tools can read (an object with an integer pid and a name)."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 2**32:
        return None
    return record


def _same_start(a, b) -> bool:
    # Start times are whole seconds; allow one second of rounding, as lockcore does.
    return isinstance(a, int) and isinstance(b, int) and abs(a - b) <= 1


def _is_alive(pid, start) -> bool:
    return isinstance(pid, int) and _same_start(_start_time(pid), start)


def _names_live_holder(record: Optional[dict]) -> bool:
    return record is not None and _is_alive(record.get("holder_pid"), record.get("holder_start"))


def _names_process(record: dict, pids) -> bool:
    """The record's managed process is one of `pids`, with that process's start time."""
    pid = record.get("pid")
    return pid in pids and _same_start(_start_time(pid), record.get("pid_start"))


def _live_legacy_record(data: bytes) -> Optional[dict]:
    """DESIGN.md rule 5: an older tool's record (no holder fields) naming a live process
    that started no later than the record's timestamp holds the lock. A live process
    that started after it has reused the pid: the record is stale."""
    record = _parse_record(data)
    if record is None or record.get("holder_pid") is not None:
        return None
    started = _start_time(record["pid"])
    if started is None:
        return None
    written = _written_no_later_than(record.get("timestamp"))
    if written is not None and started > written:
        return None
    return record  # no readable timestamp: cannot tell reuse, so err towards held


def _written_no_later_than(text) -> Optional[int]:
    """The latest instant, in Unix seconds, a record's timestamp can name (lockcore's
    LockRecord::written_no_later_than). With a zone: exact. The older tool wrote local
    time with no zone, in a zone nobody recorded (a bot in New York, read here under
    UTC), so it is read at its latest: as if written in UTC-12, the westernmost zone."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            naive_as_utc = when.replace(tzinfo=datetime.timezone.utc).timestamp()
            return math.floor(naive_as_utc) + _WESTERNMOST_OFFSET_SECS
        return math.floor(when.timestamp())
    except (ValueError, OverflowError, OSError):
        return None


def _machine_name(name: str) -> str:
    """The lock's machine-wide name, as lockcore's machine::name_for (no cluster host:
    a hand-started bot takes no etcd key either)."""
    key = name.lower()
    full = _MACHINE_PREFIX + key
    if len(full) <= _MACHINE_MAX_NAME:
        return full
    return f"{full[:_MACHINE_MAX_NAME - 17]}~{_fnv1a(key.encode('ascii')):016x}"


def _fnv1a(data: bytes) -> int:
    """FNV-1a, 64 bits, as lockcore's."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def _free_machine(machine):
    if machine is not None:
        try:
            machine.close()
        except OSError:
            pass


def _warn_lost(name, path):
    sys.stderr.write(
        f"WARNING: lock file {path} was deleted or replaced while {name} held it, so "
        f"another process could take {name} now; check for a duplicate with `check-procs`\n"
    )
    sys.stderr.flush()


def _read_path(path) -> bytes:
    """The file's bytes, read as lockcore reads them (no link followed); b"" if none."""
    try:
        fd = _open_for_reading(path)
    except (OSError, RuntimeError):
        return b""
    try:
        return _read_fd(fd)
    except OSError:
        return b""
    finally:
        _os_close(fd)


def _read_fd(fd) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _os_close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _check_regular(fd, path):
    st = os.fstat(fd)
    reparse = getattr(st, "st_file_attributes", 0) & 0x400  # FILE_ATTRIBUTE_REPARSE_POINT
    if not stat.S_ISREG(st.st_mode) or reparse:
        _os_close(fd)
        raise LockError(f"{path} is not a regular file: remove or rename it, then start again")
    if st.st_nlink > 1:  # a record written into it would land in the other file too
        _os_close(fd)
        raise LockError(
            f"{path} is a file with other names (a hard link): remove it, then start again"
        )


if not _WINDOWS:
    import fcntl

    _ABSTRACT_NAMES = sys.platform.startswith("linux")

    class _NoMachineName:
        """Unix without abstract socket names (macOS): only the file lock."""

        def close(self):
            pass

    class _SocketChannel:
        """DESK_NOTIFY's socket, through our own duplicate of the descriptor (not
        inherited by programs the bot starts; unaffected if the bot closes fd n)."""

        def __init__(self, sock):
            self._sock = sock

        def write(self, data) -> int:
            # MSG_NOSIGNAL: a closed reader is EPIPE, never SIGPIPE (a bot may have put
            # SIGPIPE back to its default, which kills).
            return self._sock.send(data, getattr(socket, "MSG_NOSIGNAL", 0))

    class _FdChannel:
        """A pipe or FIFO given as the channel: plain write(2) on our duplicate."""

        def __init__(self, fd):
            self._fd = fd

        def write(self, data) -> int:
            return os.write(self._fd, data)

    def _open_notify(spec):
        """The channel DESK_NOTIFY=fd:<n> names, or None: n must be an open socket or
        pipe (never a file or terminal the variable was left pointing at)."""
        fd = _notify_spec(spec, "fd")
        if fd is None or fd > 2**31 - 1:
            return None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISSOCK(mode):
                sock = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)  # whatever socket.setdefaulttimeout() says
                if hasattr(socket, "SO_NOSIGPIPE"):  # macOS: no MSG_NOSIGNAL
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_NOSIGPIPE, 1)
                return _SocketChannel(sock)
            if stat.S_ISFIFO(mode):
                dup = os.dup(fd)
                os.set_blocking(dup, False)
                return _FdChannel(dup)
        except OSError:
            pass
        return None

    def _try_take_machine(machine_name):
        """Binds the abstract name (a stream socket, as lockcore: the kernel keeps
        abstract names per socket type); None if another process has it. Python's
        sockets are not inherited by children (PEP 446)."""
        if not _ABSTRACT_NAMES:
            return _NoMachineName()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(b"\0" + machine_name.encode("ascii"))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                return None
            raise
        return sock

    def _machine_holder_pid(machine_name) -> Optional[int]:
        """Best effort: the socket's inode from /proc/net/unix, then the process with
        a descriptor on it (only our own user's processes can be looked into)."""
        try:
            with open("/proc/net/unix") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return None
        inode = None
        for line in lines:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == "@" + machine_name:
                inode = fields[6]
                break
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                        return int(entry)
            except OSError:
                continue
        return None

    _CLK_TCK = os.sysconf("SC_CLK_TCK")
    _boot_time_cache = []

    def _open_lock_file(path):
        # No symlinks followed, no blocking on a FIFO (DESIGN.md rule 12); never truncate.
        try:
            fd = os.open(
                path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o644,
            )
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symbolic link
                raise LockError(f"{path} is a symbolic link: remove it, then start again") from e
            raise
        _check_regular(fd, path)
        return fd

    def _file_key(fd):
        """Device and inode."""
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    def _names_file(path, key) -> bool:
        """Whether `path` still names the file we locked (DESIGN.md rule 2)."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == key

    def _open_for_reading(path):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        _check_regular(fd, path)
        return fd

    def _try_lock(fd, exclusive) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _is_transient(error) -> bool:
        return False

    def _is_held(path) -> bool:
        """Whether some process holds the exclusive lock on `path`."""
        try:
            fd = _open_for_reading(path)
        except (OSError, RuntimeError):
            return False
        try:
            if _try_lock(fd, exclusive=False):
                return False
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # also drops the shared lock, if we got it

    def _remove_locked(fd, path):
        # Unlink while still holding the lock, then close: a waiter that opened the old
        # file finds, once it has the lock, that the path no longer names it, and retries.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        finally:
            _os_close(fd)

    def _boot_time():
        if not _boot_time_cache:
            btime = 0
            try:
                with open("/proc/stat", "rb") as f:
                    for line in f:
                        if line.startswith(b"btime"):
                            btime = int(line.split()[1])
                            break
            except (OSError, ValueError, IndexError):
                pass
            _boot_time_cache.append(btime)
        return _boot_time_cache[0]

    def _start_time(pid) -> Optional[int]:
        """Start time in Unix seconds, computed as the desk tools (sysinfo) do:
        starttime ticks / SC_CLK_TCK + btime. None if gone or a zombie."""
        if not isinstance(pid, int) or pid <= 0:
            return None
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):  # a zombie is not running anything
                return None
            return int(fields[19]) // _CLK_TCK + _boot_time()  # field 22: starttime
        except (OSError, ValueError, IndexError):
            return None

else:
    # Windows: kernel32 through ctypes. Sources: lockcore/src/os_file.rs (the same calls
    # through windows-sys) and the Win32 documentation of CreateFileW, LockFileEx,
    # UnlockFileEx, OpenProcess, GetProcessTimes.
    import ctypes
    import msvcrt
    from ctypes import wintypes

    _k32 = ctypes.WinDLL("kernel32", use_last_error=True)

    class _OVERLAPPED(ctypes.Structure):
        _fields_ = [
            ("Internal", ctypes.c_size_t),
            ("InternalHigh", ctypes.c_size_t),
            ("Offset", wintypes.DWORD),
            ("OffsetHigh", wintypes.DWORD),
            ("hEvent", wintypes.HANDLE),
        ]

    _k32.CreateFileW.restype = wintypes.HANDLE
    _k32.CreateFileW.argtypes = [
        wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, ctypes.c_void_p,
        wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE,
    ]
    for _f in (_k32.LockFileEx, _k32.UnlockFileEx):
        _f.restype = wintypes.BOOL
    _k32.LockFileEx.argtypes = [
        wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
        ctypes.POINTER(_OVERLAPPED),
    ]
    _k32.UnlockFileEx.argtypes = [
        wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
        ctypes.POINTER(_OVERLAPPED),
    ]
    _k32.OpenProcess.restype = wintypes.HANDLE
    _k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    _k32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    _k32.GetProcessTimes.argtypes = [wintypes.HANDLE] + [ctypes.POINTER(wintypes.FILETIME)] * 4
    _k32.CloseHandle.argtypes = [wintypes.HANDLE]

    class _FILE_INFORMATION(ctypes.Structure):  # BY_HANDLE_FILE_INFORMATION
        _fields_ = [
            ("dwFileAttributes", wintypes.DWORD),
            ("ftCreationTime", wintypes.FILETIME),
            ("ftLastAccessTime", wintypes.FILETIME),
            ("ftLastWriteTime", wintypes.FILETIME),
            ("dwVolumeSerialNumber", wintypes.DWORD),
            ("nFileSizeHigh", wintypes.DWORD),
            ("nFileSizeLow", wintypes.DWORD),
            ("nNumberOfLinks", wintypes.DWORD),
            ("nFileIndexHigh", wintypes.DWORD),
            ("nFileIndexLow", wintypes.DWORD),
        ]

    _k32.GetFileInformationByHandle.argtypes = [
        wintypes.HANDLE, ctypes.POINTER(_FILE_INFORMATION),
    ]

    _GENERIC_READ, _GENERIC_WRITE = 0x80000000, 0x40000000
    _OPEN_EXISTING, _OPEN_ALWAYS = 3, 4
    _FILE_ATTRIBUTE_NORMAL = 0x80
    _FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000  # a symlink is opened, not followed
    _FILE_FLAG_BACKUP_SEMANTICS = 0x02000000  # lets a handle open a folder, to see what it is
    _LOCKFILE_FAIL_IMMEDIATELY, _LOCKFILE_EXCLUSIVE_LOCK = 0x1, 0x2
    _ERROR_SHARING_VIOLATION, _ERROR_LOCK_VIOLATION, _ERROR_IO_PENDING = 32, 33, 997
    _INVALID_HANDLE = wintypes.HANDLE(-1).value
    _PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    _STILL_ACTIVE = 259

    _k32.GetFileType.restype = wintypes.DWORD
    _k32.GetFileType.argtypes = [wintypes.HANDLE]
    _FILE_TYPE_PIPE = 3

    class _HandleChannel:
        """DESK_NOTIFY's pipe handle as a C runtime descriptor (binary: no _O_TEXT)."""

        def __init__(self, fd):
            self._fd = fd

        def write(self, data) -> int:
            return os.write(self._fd, data)  # WriteFile; the pipe is PIPE_NOWAIT

    def _open_notify(spec):
        """The channel DESK_NOTIFY=handle:<decimal> names, or None: it must be a pipe
        handle (never a file or console the variable was left pointing at)."""
        handle = _notify_spec(spec, "handle")
        if handle is None or handle == 0 or handle > 2**64 - 1:
            return None
        try:
            if _k32.GetFileType(handle) != _FILE_TYPE_PIPE:
                return None
            return _HandleChannel(msvcrt.open_osfhandle(handle, os.O_WRONLY))
        except (OSError, ValueError, OverflowError, ctypes.ArgumentError):
            return None

    def _machine_path(machine_name) -> Path:
        """The machine-wide name's file, as lockcore's lock/machine.rs on Windows:
        %ProgramData%\\desk-tools\\locks\\<name without its prefix>.lock."""
        base = os.environ.get("ProgramData") or os.environ.get("ALLUSERSPROFILE") or r"C:\ProgramData"
        key = machine_name[len(_MACHINE_PREFIX):] if machine_name.startswith(_MACHINE_PREFIX) else machine_name
        return Path(base) / "desk-tools" / "locks" / f"{key}.lock"

    class _MachineFile:
        """The open, locked machine-wide file; the lock goes with the handle."""

        def __init__(self, fd):
            self._fd = fd

        def close(self):
            fd, self._fd = self._fd, None
            if fd is not None:
                _os_close(fd)

    def _try_take_machine(machine_name):
        """Locks the machine-wide file as lock files are locked (the same byte, no
        delete sharing), then writes our pid in it; None if another process holds it."""
        path = _machine_path(machine_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = _open_lock_file(path)
        except PermissionError:
            # Made by another Windows user: ours to lock (a read handle may hold the
            # lock), not to write; the pid in it is only a hint.
            try:
                fd = _open_for_reading(path)
            except OSError as e:
                raise OSError(e.errno, f"{path}: {e}") from e
        except OSError as e:
            raise OSError(e.errno, f"{path}: {e}") from e
        try:
            if not _try_lock(fd, exclusive=True):
                _os_close(fd)
                return None
        except OSError:
            _os_close(fd)
            raise
        try:  # best effort: the pid only names the holder in a refusal
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(os.getpid()).encode("ascii"))
        except OSError:
            pass
        return _MachineFile(fd)

    def _machine_holder_pid(machine_name) -> Optional[int]:
        """The pid the holder wrote in the machine-wide file."""
        try:
            text = _read_path(_machine_path(machine_name))[:32].decode("ascii").strip()
            return int(text)
        except (ValueError, UnicodeDecodeError):
            return None

    def _create(path, access, disposition):
        handle = _k32.CreateFileW(
            str(path), access, _SHARE_MODE, None, disposition,
            _FILE_ATTRIBUTE_NORMAL | _FILE_FLAG_OPEN_REPARSE_POINT, None,
        )
        if handle is None or handle == _INVALID_HANDLE:
            raise ctypes.WinError(ctypes.get_last_error())
        fd = msvcrt.open_osfhandle(handle, os.O_RDWR if access & _GENERIC_WRITE else os.O_RDONLY)
        _check_regular(fd, path)
        return fd

    def _handle_key(handle):
        info = _FILE_INFORMATION()
        if not _k32.GetFileInformationByHandle(handle, ctypes.byref(info)):
            raise ctypes.WinError(ctypes.get_last_error())
        return (info.dwVolumeSerialNumber, (info.nFileIndexHigh << 32) | info.nFileIndexLow)

    def _file_key(fd):
        """Volume serial number and file index, as lockcore's os::file_key."""
        return _handle_key(msvcrt.get_osfhandle(fd))

    def _names_file(path, key) -> bool:
        """Whether `path` still names the file we locked (DESIGN.md rule 2): a second
        handle on the path, for its attributes only, compared by file index."""
        handle = _k32.CreateFileW(
            str(path), 0, _SHARE_MODE, None, _OPEN_EXISTING,
            _FILE_FLAG_OPEN_REPARSE_POINT | _FILE_FLAG_BACKUP_SEMANTICS, None,
        )
        if handle is None or handle == _INVALID_HANDLE:
            return False
        try:
            return _handle_key(handle) == key
        except OSError:
            return False
        finally:
            _k32.CloseHandle(handle)

    def _open_lock_file(path):
        return _create(path, _GENERIC_READ | _GENERIC_WRITE, _OPEN_ALWAYS)

    def _open_for_reading(path):
        return _create(path, _GENERIC_READ, _OPEN_EXISTING)

    def _position():
        overlapped = _OVERLAPPED()
        overlapped.OffsetHigh = _LOCK_OFFSET_HIGH
        return overlapped

    def _try_lock(fd, exclusive) -> bool:
        flags = _LOCKFILE_FAIL_IMMEDIATELY | (_LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0)
        overlapped = _position()
        if _k32.LockFileEx(
            msvcrt.get_osfhandle(fd), flags, 0, _LOCK_LENGTH, 0, ctypes.byref(overlapped)
        ):
            return True
        error = ctypes.get_last_error()
        if error in (_ERROR_LOCK_VIOLATION, _ERROR_IO_PENDING):
            return False
        raise ctypes.WinError(error)

    def _unlock(fd):
        overlapped = _position()
        if not _k32.UnlockFileEx(
            msvcrt.get_osfhandle(fd), 0, _LOCK_LENGTH, 0, ctypes.byref(overlapped)
        ):
            raise ctypes.WinError(ctypes.get_last_error())

    def _is_transient(error) -> bool:
        # A crashed holder's handle is released "when resources allow".
        return getattr(error, "winerror", None) in (_ERROR_SHARING_VIOLATION, _ERROR_LOCK_VIOLATION)

    def _is_held(path) -> bool:
        try:
            fd = _open_for_reading(path)
        except (OSError, RuntimeError):
            return False
        try:
            if _try_lock(fd, exclusive=False):
                _unlock(fd)
                return False
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _remove_locked(fd, path):
        # Without delete sharing not even the holder can delete its open file: unlock,
        # close, then delete. A sharing violation means another process has it open:
        # an inspector for a moment (retry briefly), or a new holder, whose file it is.
        try:
            _unlock(fd)
        except OSError:
            pass
        _os_close(fd)
        deadline = time.monotonic() + 0.5
        while True:
            try:
                os.unlink(path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if not _is_transient(e) or time.monotonic() >= deadline:
                    return
                time.sleep(0.005)

    def _start_time(pid) -> Optional[int]:
        """Creation time in Unix seconds, as sysinfo computes it. None if gone."""
        if not isinstance(pid, int) or pid < 0:
            return None
        handle = _k32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not handle:
            return None
        try:
            code = wintypes.DWORD()
            if not _k32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value != _STILL_ACTIVE:
                return None
            times = [wintypes.FILETIME() for _ in range(4)]
            if not _k32.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
                return None
            created = (times[0].dwHighDateTime << 32) | times[0].dwLowDateTime
            return max(created // 10_000_000 - 11_644_473_600, 0)
        finally:
            _k32.CloseHandle(handle)
