"""Prefect artifacts of a run: what the Prefect UI shows beside the flow run.

Every finished stage posts its accounting table; a stage family with a `view` module that
defines `prefect_views(run, stage)` (partition, cluster, pacl, probe, cternet) posts what that
returns as well, so a new family view is published without a list to update here. The content
comes from those views (numbers, the run id, pictures of the stage; never post text); this module
only derives the keys and posts. Outside a flow or task run there is nowhere to publish: it logs
one line and does nothing. A view that cannot be built is logged as a warning: publishing never
fails a stage that has finished.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import re

from affectflow.core.runs import RunStore
from affectflow.stages.registry import STAGES
from affectflow.stages.views import StageView, accounting_view

logger = logging.getLogger(__name__)

_NOT_IN_KEYS = re.compile(r"[^a-z0-9]+")


def key_part(text: str) -> str:
    """`text` in what Prefect allows in artifact keys (lowercase letters, digits, dashes); a
    hash of the original is appended when that changed it, so two run ids never share keys."""
    part = _NOT_IN_KEYS.sub("-", text.lower()).strip("-")
    if part == text:
        return part
    return f"{part}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".lstrip("-")


def artifact_key(run_id: str, stage: str, view: str) -> str:
    """`<run>-<stage>-<view>`: one key per run, stage and view, so every run keeps its own."""
    return "-".join((key_part(run_id), _NOT_IN_KEYS.sub("-", stage), _NOT_IN_KEYS.sub("-", view)))


def family_views(run: RunStore, stage: str) -> list[StageView]:
    """What the stage's family view module shows (none for single-file stages)."""
    package = STAGES[stage].__module__.rpartition(".")[0]
    if package == "affectflow.stages" or importlib.util.find_spec(f"{package}.view") is None:
        return []
    make_views = getattr(importlib.import_module(f"{package}.view"), "prefect_views", None)
    return make_views(run, stage) if make_views is not None else []


def publish_stage(run: RunStore, stage: str) -> list[str]:
    """Post the artifacts of a finished stage; returns their keys ([] outside a Prefect run)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        logger.info("not inside a Prefect flow run: %s artifacts not published", stage)
        return []
    try:
        views = [accounting_view(run.stage(stage)), *family_views(run, stage)]
    except Exception as error:  # a broken view must not fail the finished stage
        logger.warning("%s: artifacts not published: %s: %s", stage, type(error).__name__, error)
        return []
    keys = []
    for view in views:
        key = artifact_key(run.run_id, stage, view.name)
        if view.table is not None:
            create_table_artifact(view.table, key=key, description=view.description)
        else:
            create_markdown_artifact(view.markdown or "", key=key, description=view.description)
        keys.append(key)
    return keys
