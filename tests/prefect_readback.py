"""Reading what a flow left in Prefect back through the Prefect client: flow runs by name, their
log lines (with their task runs'), the artifacts by key."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import ArtifactCollection, FlowRun
from prefect.logging.handlers import APILogHandler

PAGE = 200
"""The most the API returns at once."""


def flush_logs() -> None:
    """Send the log lines still queued in this process."""
    APILogHandler().flush()


def flow_runs_named(name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def log_lines(flow_run: FlowRun) -> list[tuple[str, str]]:
    """(logger name, message) of every record of the flow run and its task runs, oldest first."""
    logs: list[Any] = []
    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter=only_this_run, limit=PAGE, offset=len(logs)):
            logs += page
    return [(log.name, log.message) for log in sorted(logs, key=lambda log: log.timestamp)]


def artifacts_with_prefix(prefix: str) -> dict[str, Any]:
    """Latest data of every artifact whose key starts with `prefix`, by key."""
    with get_client(sync_client=True) as client:
        found: list[ArtifactCollection] = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=f"{prefix}%")), limit=200)
    return {artifact.key: artifact.data for artifact in found if artifact.key}
