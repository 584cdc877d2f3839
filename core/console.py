"""The console of a command: which log records reach the terminal, and how they look.

One home for console levels and handlers. Which records reach the terminal is decided per
origin by the one handler's filter, not by the libraries' loggers:

- default: the project's own loggers (`affectflow.*`) at INFO; every other library (faiss'
  loader, open_clip's root-logger lines, httpx, transformers, Prefect's task and flow chatter)
  at WARNING;
- `--quiet`: errors only (the command's final summary is printed, not logged);
- `--debug`: everything at DEBUG, with tracebacks.

A warning with the same logger and text is shown once per command (later copies are counted and
the count is reported at exit). Python `warnings` go through logging, so they are shown once
too, and Hugging Face's own progress bars are off. Prefect's own report of a failed task or flow
(a traceback) stays in Prefect's run logs and is left off the console unless `--debug`: the
command prints the error itself, as one line and a hint. On a terminal, records are printed
through the same rich console as the live progress display (`core/progress.py`), so they appear
above it; elsewhere they are plain lines.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import warnings
from enum import Enum
from typing import Any

PROJECT_LOGGER = "affectflow"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
"""Prefect's per-run loggers: state changes at INFO and failure tracebacks at ERROR, which the
Prefect UI shows; the console shows them only with `--debug`."""


class Verbosity(Enum):
    QUIET = "quiet"
    NORMAL = "normal"
    DEBUG = "debug"


class ConsoleFilter(logging.Filter):
    """Decides which records reach the terminal: levels per origin, each warning once."""

    def __init__(self, verbosity: Verbosity) -> None:
        super().__init__()
        self.verbosity = verbosity
        self.repeats: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _threshold(self, name: str) -> int:
        if self.verbosity is Verbosity.DEBUG:
            return logging.DEBUG
        if self.verbosity is Verbosity.QUIET:
            return logging.ERROR
        own = name == PROJECT_LOGGER or name.startswith(PROJECT_LOGGER + ".")
        return logging.INFO if own else logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self._threshold(record.name):
            return False
        if self.verbosity is not Verbosity.DEBUG:
            if record.name.startswith(PREFECT_RUN_LOGGERS):
                return False
            if record.name != PROJECT_LOGGER and not record.name.startswith(PROJECT_LOGGER + "."):
                record.exc_info = None  # a library's traceback: one line on the console
                record.exc_text = None
        if record.levelno == logging.WARNING:
            key = (record.name, record.getMessage())
            with self._lock:
                seen = key in self.repeats
                self.repeats[key] = self.repeats.get(key, 0) + 1
            return not seen
        return True

    def repeat_note(self) -> str | None:
        """One line about the warnings that were shown once but raised more often."""
        repeated = sum(count - 1 for count in self.repeats.values() if count > 1)
        if not repeated:
            return None
        return f"{repeated} repeated warning(s) not shown again"


_STATE: dict[str, Any] = {}


def rich_console() -> Any:
    """The rich console on stderr shared by log lines and the live progress display."""
    if "console" not in _STATE:
        from rich.console import Console

        _STATE["console"] = Console(stderr=True)
    return _STATE["console"]


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def current_verbosity() -> Verbosity:
    return _STATE.get("verbosity", Verbosity.NORMAL)


def _handler(verbosity: Verbosity) -> logging.Handler:
    if stderr_is_terminal():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=rich_console(), show_path=False, markup=False,
                                               rich_tracebacks=False, keywords=[])
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(ConsoleFilter(verbosity))
    return handler


def setup_console(verbosity: Verbosity) -> None:
    """Install the one console handler on the root logger (replacing an earlier one)."""
    root = logging.getLogger()
    previous = _STATE.get("handler")
    if previous is not None:
        root.removeHandler(previous)
    handler = _handler(verbosity)
    root.addHandler(handler)
    # Records are made down to the level something may show (the handler's filter then decides
    # per origin); under --quiet the project's INFO records are not made at all.
    root.setLevel({Verbosity.DEBUG: logging.DEBUG, Verbosity.NORMAL: logging.INFO,
                   Verbosity.QUIET: logging.WARNING}[verbosity])
    logging.captureWarnings(True)
    if verbosity is not Verbosity.DEBUG:
        warnings.simplefilter("default")  # once per place; the console filter dedupes the text
    if verbosity is not Verbosity.DEBUG:
        # Hugging Face's own tqdm bars ("Loading weights") bypass logging; the live display
        # shows the stage's progress instead. Read when huggingface_hub is first imported.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _STATE["handler"] = handler
    _STATE["verbosity"] = verbosity
    if not _STATE.get("atexit"):
        atexit.register(report_repeats)
        _STATE["atexit"] = True


def report_repeats() -> None:
    """At exit: how many repeated warnings were held back (nothing when there were none)."""
    handler = _STATE.get("handler")
    if handler is None or current_verbosity() is Verbosity.QUIET:
        return
    for item in handler.filters:
        if isinstance(item, ConsoleFilter) and (note := item.repeat_note()):
            print(f"note: {note}", file=sys.stderr)
