"""The same flow on a Dask LocalCluster (2 worker processes) and on local threads."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from affectflow.core.store import StageArtifact
from affectflow.pipelines.config import load_config
from affectflow.pipelines.execution import open_run
from tests.stages.helpers import demo_config

pytest.importorskip("prefect_dask", reason="the dask extra is not installed")

# The shard-parallel stage (ingest) and a model stage (factual); the other stages run the same
# task code path as factual.
TABLES = {"ingest": ["main"], "factual": ["main", "embeddings"]}


def run_flow(raw: dict, run_id: str) -> dict:
    from affectflow.pipelines.flows import run_stages_on_configured_runner

    config = load_config(None, raw=raw)
    ref = open_run(config, run_id)
    return run_stages_on_configured_runner(ref, config, list(TABLES), [])


def test_dask_and_threads_write_identical_content(prefect_harness: None, demo_dir: Path,
                                                  tmp_path: Path) -> None:
    threads = demo_config(demo_dir, tmp_path)
    dask = demo_config(demo_dir, tmp_path, run={"task_runner": "dask", "workers": 2})
    run_flow(threads, "threads")
    run_flow(dask, "dask")
    for stage, tables in TABLES.items():
        for table in tables:
            left = StageArtifact(tmp_path / "runs" / "threads" / stage).read_all(table=table)
            right = StageArtifact(tmp_path / "runs" / "dask" / stage).read_all(table=table)
            assert left.sort_by("sample_id").equals(right.sort_by("sample_id")), (stage, table)


def _dask_worker_pids() -> list[int]:
    me = psutil.Process()
    return [child.pid for child in me.children(recursive=True)
            if "distributed" in " ".join(child.cmdline()) or "spawn_main" in " ".join(child.cmdline())]


def test_a_killed_dask_worker_loses_no_shard(prefect_harness: None, demo_dir: Path,
                                            tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, run={"task_runner": "dask", "workers": 2},
                      ingest={"shard_size": 4})
    config = load_config(None, raw=raw)
    ref = open_run(config, "killed")
    from affectflow.pipelines.flows import run_stages_on_configured_runner

    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        run_stages_on_configured_runner(ref, config, ["ingest"], [])))
    runner.start()
    shard_markers = tmp_path / "runs" / "killed" / "ingest" / "_shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shard_markers.glob("*.json"))) < 2:
        time.sleep(0.05)
    victims = _dask_worker_pids()
    assert victims, "no Dask worker process found to kill"
    os.kill(victims[-1], signal.SIGKILL)
    runner.join(timeout=300)
    manifest = StageArtifact(tmp_path / "runs" / "killed" / "ingest").manifest
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"] == 61
    assert len(manifest["shard_ids"]) == 16
