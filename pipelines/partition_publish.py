"""Publish the partition's share table and a markdown summary as Prefect artifacts.

Called by the flow after the partition stage so the Prefect UI shows the split of each run
next to the paper's. Outside a flow or task run there is nowhere to publish: it logs one line
and does nothing. The content is numbers and the run id only, never post text.
"""

from __future__ import annotations

import logging
from typing import Any

from affectflow.core.runs import RunStore
from affectflow.pipelines.partition_samples import partition_summary, share_rows
from affectflow.stages.partition import SCORES

logger = logging.getLogger("affectflow.partition")

TABLE_KEY = "partition-shares"
MARKDOWN_KEY = "partition-summary"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def share_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"partition": row.name, "count": row.count, "share": _percent(row.share),
             f"paper (sigma {summary['paper']['sigma']:g})": _percent(row.paper_share)}
            for row in share_rows(summary)]


def summary_markdown(run_id: str, summary: dict[str, Any]) -> str:
    records = share_records(summary)
    header = list(records[0])
    lines = [f"### Partition of run `{run_id}`", "", f"{summary['samples']} samples.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(record[key]) for key in header) + " |" for record in records]
    lines += ["", "Thresholds (matched = normalised score strictly greater):"]
    for score in SCORES:
        facts = summary["thresholds"][score]
        cut = ("no valid scores" if facts["threshold_raw"] is None
               else f"raw > {facts['threshold_raw']:.4g}, normalised > {facts['threshold_norm']:.4g}")
        lines.append(f"- {score}: {facts['mode']}, sigma {facts['sigma']:g} ({cut})")
    truth = summary.get("ground_truth")
    if truth:
        lines += ["", "Planted mismatches (ground truth):"]
        for kind in ("factual_mismatch", "emotional_mismatch"):
            facts = truth[kind]
            lines.append(f"- {kind}: precision {_percent(facts['precision'])}, "
                         f"recall {_percent(facts['recall'])}")
    return "\n".join(lines)


def publish_partition_artifacts(run: RunStore) -> bool:
    """Create the table and markdown artifacts; False (and a log line) outside a Prefect run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        logger.info("not inside a Prefect flow run: partition artifacts not published")
        return False
    summary = partition_summary(run)
    create_table_artifact(share_records(summary), key=TABLE_KEY,
                          description=f"partition shares of run {run.run_id} beside the paper's")
    create_markdown_artifact(summary_markdown(run.run_id, summary), key=MARKDOWN_KEY,
                             description=f"partition summary of run {run.run_id}")
    return True
