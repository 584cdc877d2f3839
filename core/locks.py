"""One writer per run: an exclusive lock that every command writing a run holds while it works.

The lock is an `flock` on `<run>/.writer.lock`, so the kernel releases it when the holder dies,
however it dies. The file also holds who took it (pid, host, start time, command); the holder
empties it on a clean exit, so a lock found free but still naming a holder means that writer was
killed: the next writer takes it over with a warning, and readers report the run as interrupted.
Readers (`runs`, `inspect`, `export`) never take the lock; they read the holder record only.

The lock is re-entrant within a process: a command takes it before Prefect starts and the flow it
runs takes it again (a deployment's flow run, started by a worker, takes it itself). Processes a
writer starts (decode workers, task-runner workers) write under their parent's lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"

_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth) held by this process
_HELD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run's writer lock."""

    pid: int
    host: str
    started: str
    command: str
    process_start: str | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started} ({self.command})"


class RunBusy(UserError):
    """Another live process is writing the run."""


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), which tells a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(holder: Holder) -> bool:
    """Whether the recorded holder still runs (a holder on another host is assumed to)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = process_start(holder.pid)
    return holder.process_start is None or started is None or started == holder.process_start


def read_holder(run_path: Path) -> Holder | None:
    """The holder record of a run's lock (None when empty, absent or unreadable)."""
    try:
        text = (run_path / LOCK_FILE).read_text(encoding="utf-8")
        record: dict[str, Any] = json.loads(text) if text.strip() else {}
        return Holder(**record) if record else None
    except (OSError, ValueError, TypeError):
        return None


def live_writer(run_path: Path) -> Holder | None:
    """The process writing the run now, if any."""
    holder = read_holder(run_path)
    return holder if holder is not None and holder_alive(holder) else None


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record) + "\n").encode("utf-8") if record else b""
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


_COMMAND: list[str] = []


def set_command(argv: list[str]) -> None:
    """The command this process runs, as a person typed it (the CLI calls this; otherwise the
    process's own argv is shown)."""
    _COMMAND[:] = argv


def command_line() -> str:
    """What holders and history entries record as the command."""
    argv = _COMMAND or sys.argv
    return " ".join(os.path.basename(arg) if index == 0 else arg
                    for index, arg in enumerate(argv))[:300]


@contextmanager
def run_writer(run_path: Path, run_id: str, command: str | None = None) -> Iterator[None]:
    """Hold the run's writer lock for the body; a second writer fails at once with `RunBusy`."""
    run_path.mkdir(parents=True, exist_ok=True)
    lock_file = (run_path / LOCK_FILE).resolve()
    with _HELD_LOCK:
        if lock_file in _HELD:
            fd, depth = _HELD[lock_file]
            _HELD[lock_file] = (fd, depth + 1)
        else:
            _HELD[lock_file] = (_acquire(lock_file, run_id, command or command_line()), 1)
    try:
        yield
    finally:
        with _HELD_LOCK:
            fd, depth = _HELD[lock_file]
            if depth > 1:
                _HELD[lock_file] = (fd, depth - 1)
            else:
                del _HELD[lock_file]
                _write_record(fd, {})
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def _acquire(lock_file: Path, run_id: str, command: str) -> int:
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = read_holder(lock_file.parent)
        who = holder.describe() if holder else "another process"
        raise RunBusy(f"run {run_id} is being written by {who}",
                      hint="wait for it to finish or stop that process; `affectflow runs` and "
                           "`affectflow inspect` work meanwhile") from None
    previous = read_holder(lock_file.parent)
    if previous is not None:
        logger.warning("run %s: taking over the lock of %s, which is no longer running "
                       "(that run was interrupted)", run_id, previous.describe())
    _write_record(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                       "command": command, "process_start": process_start(os.getpid())})
    return fd
