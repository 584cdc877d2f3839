"""Progress of long work: a live display on a terminal, periodic log lines elsewhere.

On a terminal (and not `--quiet`) every running piece of work gets a row of one shared rich
progress display: its place in the run's stage DAG ("stage 5/10"), a bar, done/total, rows/s
and ETA; finished rows leave one summary log line. When stderr is not a terminal (CI, files,
Prefect workers) the same numbers are logged as a line every `interval` seconds.

The stage's place in the DAG is registered by whoever runs the stages (`set_stage_order`), so
stage code only names itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from affectflow.core.console import Verbosity, current_verbosity, rich_console, stderr_is_terminal

logger = logging.getLogger(__name__)

_ORDER: dict[str, tuple[int, int]] = {}
_DISPLAY: dict[str, Any] = {}
_DISPLAY_LOCK = threading.Lock()


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def set_stage_order(stages: list[str]) -> None:
    """The stages of the run being executed, in DAG order: progress rows show `stage i/n`."""
    _ORDER.clear()
    _ORDER.update({name: (index, len(stages)) for index, name in enumerate(stages, start=1)})


def stage_place(stage: str) -> str:
    """`stage 5/10 ` for a stage of the registered order, else nothing."""
    if stage not in _ORDER:
        return ""
    index, total = _ORDER[stage]
    return f"stage {index}/{total} "


def live_display_wanted() -> bool:
    return stderr_is_terminal() and current_verbosity() is not Verbosity.QUIET


def _rate_text(task: Any) -> str:
    """Rows/s when the work counts rows beside coarser units (shards), else units/s."""
    elapsed = task.elapsed or 0.0
    rows = task.fields.get("rows", 0)
    if rows and elapsed > 0:
        return f"{rows / elapsed:.1f} rows/s"
    speed = task.finished_speed or task.speed
    return f"{speed:.1f} {task.fields.get('unit', '')}/s" if speed else ""


def _open_display() -> Any:
    """The shared rich progress display, started on first use (call with the lock held)."""
    if "progress" not in _DISPLAY:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(_rate_text(task))

        display = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[unit]}"), RateColumn(), TimeElapsedColumn(),
                               TextColumn("ETA"), TimeRemainingColumn(), console=rich_console(),
                               transient=True)
        display.start()
        _DISPLAY["progress"] = display
        _DISPLAY["tasks"] = 0
    _DISPLAY["tasks"] += 1
    return _DISPLAY["progress"]


def _close_display(task_id: Any) -> None:
    with _DISPLAY_LOCK:
        display = _DISPLAY.get("progress")
        if display is None:
            return
        if task_id in display.task_ids:
            display.remove_task(task_id)
        _DISPLAY["tasks"] -= 1
        if _DISPLAY["tasks"] == 0:
            display.stop()
            _DISPLAY.clear()


def stop_display() -> None:
    """Take the live display off the terminal (a command ending, also by an error)."""
    with _DISPLAY_LOCK:
        display = _DISPLAY.pop("progress", None)
        _DISPLAY.clear()
    if display is not None:
        display.stop()


class Progress:
    """Thread-safe counter of `label: done/total units, rate/s, ETA` for one piece of work.

    Work counted in coarse units (shards) can also count `rows`, so the display shows rows/s.
    `stage` (default: the label's first word) places the work in the run's DAG.
    """

    def __init__(self, label: str, total: int, unit: str = "rows", interval: float = 2.0,
                 stage: str | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.place = stage_place(stage or label.split()[0])
        self.done = 0
        self.rows = 0
        self._start = time.perf_counter()
        self._last_log = self._start
        self._lock = threading.Lock()
        self._task: Any = None
        if live_display_wanted():
            with _DISPLAY_LOCK:
                display = _open_display()
                self._task = display.add_task(f"{self.place}{label}", total=total, unit=unit, rows=0)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = format_seconds(remaining) if rate > 0 else "?"
        rows = f", {self.rows} rows ({self.rows / self.elapsed:.1f} rows/s)" if self.rows else ""
        return (f"{self.place}{self.label}: {self.done}/{self.total} {self.unit}, "
                f"{rate:.1f} {self.unit}/s{rows}, ETA {eta}")

    def advance(self, count: int, rows: int = 0) -> None:
        with self._lock:
            self.done += count
            self.rows += rows
            display = _DISPLAY.get("progress")
            if self._task is not None and display is not None:
                display.update(self._task, advance=count, rows=self.rows)
                if self.done >= self.total:  # finished work leaves the display even unclosed
                    _close_display(self._task)
                    self._task = None
                return
            now = time.perf_counter()
            if now - self._last_log >= self.interval and self.done < self.total:
                self._last_log = now  # the finished work's line is close()'s summary
                logger.info(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> str:
        """Final summary line (also logged), with the overall rate; removes the display row."""
        if self._task is not None:
            _close_display(self._task)
            self._task = None
        rows = f", {self.rows / self.elapsed:.1f} rows/s" if self.rows and self.elapsed else ""
        line = (f"{self.place}{self.label}: {self.done} {self.unit} in {format_seconds(self.elapsed)} "
                f"({self.rate:.1f} {self.unit}/s{rows})")
        logger.info(line)
        return line
