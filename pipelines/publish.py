"""Prefect artifacts of a run: what the Prefect UI shows beside the flow run.

The content is made by the stage families' views (numbers and the run id, never post text);
this module only posts it. Outside a flow or task run there is nowhere to publish: it logs one
line and does nothing.
"""

from __future__ import annotations

import logging

from affectflow.core.runs import RunStore

logger = logging.getLogger(__name__)

TABLE_KEY = "partition-shares"
MARKDOWN_KEY = "partition-summary"


def publish_partition_artifacts(run: RunStore) -> bool:
    """Create the share table and summary artifacts; False (and a log line) outside a run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    from affectflow.stages.partition.samples import partition_summary
    from affectflow.stages.partition.view import share_records, summary_markdown

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        logger.info("not inside a Prefect flow run: partition artifacts not published")
        return False
    summary = partition_summary(run)
    create_table_artifact(share_records(summary), key=TABLE_KEY,
                          description=f"partition shares of run {run.run_id} beside the paper's")
    create_markdown_artifact(summary_markdown(run.run_id, summary), key=MARKDOWN_KEY,
                             description=f"partition summary of run {run.run_id}")
    return True
