"""The project's log lines in Prefect's run logs, and less of Prefect's own chatter there.

`forward_project_logs` runs at the start of every flow, so it works wherever the flow runs: in
the CLI's process (ephemeral server) and in the process a Prefect worker starts for a
deployment, where Prefect's own logging config leaves the root logger at WARNING and no
`PREFECT_LOGGING_EXTRA_LOGGERS` may be set.

What reaches the console is the console set-up's business (handler levels); this module only
makes sure the `affectflow` loggers let INFO records through to Prefect's API handler.
"""

from __future__ import annotations

import logging

PROJECT_LOGGER = "affectflow"
TASK_RUN_LOGGER = "prefect.task_runs"


class InRunOnly(logging.Filter):
    """Pass records made inside a Prefect flow or task run (thread pools that copy the context
    included); records from elsewhere have no run to attach to and stay on the console only."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return bool(getattr(record, "flow_run_id", None) or FlowRunContext.get() or TaskRunContext.get())


class DropCompletedTaskRuns(logging.Filter):
    """Drop "Finished in state Completed()" of every task run: it carries nothing the task's
    state does not show (failures and retries are logged at other levels or wordings and pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO
                    and record.getMessage().startswith("Finished in state Completed"))


def forward_project_logs() -> None:
    """Attach Prefect's API log handler to the project's logger (once; the one
    `PREFECT_LOGGING_EXTRA_LOGGERS=affectflow` adds is reused) and let INFO records through
    unless a level was set on the logger on purpose."""
    from prefect.logging.handlers import APILogHandler

    project = logging.getLogger(PROJECT_LOGGER)
    handlers = [handler for handler in project.handlers if isinstance(handler, APILogHandler)]
    if not handlers:
        handlers = [APILogHandler()]
        project.addHandler(handlers[0])
    for handler in handlers:
        if not any(isinstance(existing, InRunOnly) for existing in handler.filters):
            handler.addFilter(InRunOnly())
    if project.level == logging.NOTSET and project.getEffectiveLevel() > logging.INFO:
        project.setLevel(logging.INFO)
    task_runs = logging.getLogger(TASK_RUN_LOGGER)
    if not any(isinstance(existing, DropCompletedTaskRuns) for existing in task_runs.filters):
        task_runs.addFilter(DropCompletedTaskRuns())
