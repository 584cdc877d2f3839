"""Prefect defaults for affectflow, applied before Prefect is imported.

Ephemeral mode keeps its SQLite state under `./.prefect` (the project's working area, not the
user's home) and telemetry is off (Prefect's, and Ray's when the ray runner is used). Values the
user already set in the environment win. The project's log lines reach Prefect's run logs
through `pipelines/prefect_logging.py`, which every flow calls, not through an environment
variable a worker's environment may lack. The temporary server ephemeral mode starts is stopped
when this process ends, however it ends (`guard_ephemeral_server`).
"""

from __future__ import annotations

import os
from pathlib import Path

from affectflow.core.lifeline import stop_with_this_process


def configure_prefect_env(home: Path | None = None) -> None:
    defaults = {
        "PREFECT_HOME": str((home or Path.cwd() / ".prefect").resolve()),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def guard_ephemeral_server() -> None:
    """Make the temporary Prefect server this process started (if any) end with this process:
    Prefect stops it at exit, but a killed process runs no exit handlers."""
    from prefect.server.api.server import SubprocessASGIServer

    process = SubprocessASGIServer().server_process
    if process is not None and process.poll() is None:
        stop_with_this_process(process.pid)
