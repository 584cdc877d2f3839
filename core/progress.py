"""Progress lines for long work: rows done, rows/s and ETA, throttled so logs stay readable."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Thread-safe counter that logs `label: done/total units, rate/s, ETA` every `interval` s.

    Work counted in coarse units (shards) can also count `rows`, so the line shows rows/s.
    """

    def __init__(self, label: str, total: int, unit: str = "rows", interval: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.done = 0
        self.rows = 0
        self._start = time.perf_counter()
        self._last_log = self._start
        self._lock = threading.Lock()

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
        return (f"{self.label}: {self.done}/{self.total} {self.unit}, "
                f"{rate:.1f} {self.unit}/s{rows}, ETA {eta}")

    def advance(self, count: int, rows: int = 0) -> None:
        with self._lock:
            self.done += count
            self.rows += rows
            now = time.perf_counter()
            if now - self._last_log >= self.interval or self.done >= self.total:
                self._last_log = now
                logger.info(self.line())

    def close(self) -> str:
        """Final summary line (also logged), with the overall rate."""
        rows = f", {self.rows / self.elapsed:.1f} rows/s" if self.rows and self.elapsed else ""
        line = (f"{self.label}: {self.done} {self.unit} in {format_seconds(self.elapsed)} "
                f"({self.rate:.1f} {self.unit}/s{rows})")
        logger.info(line)
        return line
