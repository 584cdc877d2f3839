"""Helper processes that end with the process that started them, however it ends.

A process killed with SIGKILL runs no `atexit` handler and no `finally`, so whatever it started
lives on: forked decode workers block forever on their task queue, and a temporary Prefect server
keeps its port and memory. Two remedies:

- `exit_with_parent()`, called in a forked child, starts a thread that ends the child as soon as
  its parent is gone (the child is re-parented, so `getppid()` changes). `prctl`'s parent-death
  signal is not used: it fires when the *thread* that forked exits, and pools are grown from
  short-lived worker threads.
- `stop_with_this_process(pid)` starts a small watcher process for a child this process did not
  fork itself (Prefect starts its own server): the watcher stops the child when this process is
  gone, and exits when the child does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0

_WATCHED: dict[int, subprocess.Popen[bytes]] = {}


def exit_with_parent() -> None:
    """In a forked child: exit at once when the parent process is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def stop_with_this_process(pid: int) -> None:
    """Stop process `pid` (SIGTERM, then SIGKILL) when this process ends, even by SIGKILL."""
    watcher = _WATCHED.get(pid)
    if watcher is not None and watcher.poll() is None:
        return
    _WATCHED[pid] = subprocess.Popen(
        [sys.executable, "-m", "affectflow.core.lifeline", str(os.getpid()), str(pid)],
        stdin=subprocess.DEVNULL, start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def watch(owner: int, child: int) -> None:
    """The watcher's loop: stop `child` once `owner` is gone; return when `child` is gone."""
    while _alive(child):
        if not _alive(owner):
            _stop(child)
            return
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
