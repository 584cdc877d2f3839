"""The same flow on local threads, on a Dask LocalCluster and on local Ray (2 worker processes each)."""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from affectflow.core.store import StageArtifact
from affectflow.pipelines.config import load_config
from affectflow.pipelines.execution import open_run
from affectflow.pipelines.task_runners import EXTRAS
from tests.stages.helpers import demo_config

# The shard-parallel stage (ingest) and a model stage (factual); the other stages run the same
# task code path as factual.
TABLES = {"ingest": ["main"], "factual": ["main", "embeddings"]}


def needs_extra(kind: str) -> pytest.MarkDecorator:
    """Skip (before any fixture runs) when the runner's extra is missing; each runner alone."""
    module, extra = EXTRAS[kind]
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"needs {module}: pip install '{extra}'")


def run_flow(raw: dict, run_id: str) -> dict:
    from affectflow.pipelines.flows import run_stages_on_configured_runner

    config = load_config(None, raw=raw)
    ref = open_run(config, run_id)
    return run_stages_on_configured_runner(ref, config, list(TABLES), [])


@pytest.fixture(scope="module")
def threads_root(prefect_harness: None, demo_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run on local threads, made once for every runner it is compared with."""
    root = tmp_path_factory.mktemp("threads")
    run_flow(demo_config(demo_dir, root), "threads")
    return root


@pytest.fixture(params=[pytest.param(kind, marks=needs_extra(kind)) for kind in ("dask", "ray")])
def process_runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A runner with worker processes; local Ray is shut down afterwards even if the flow failed."""
    if request.param != "ray":
        yield request.param
        return
    import ray

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a test run
    yield request.param
    ray.shutdown()  # a no-op when the runner already stopped the Ray it started


def test_process_runners_write_the_same_content_as_threads(process_runner: str, threads_root: Path,
                                                            demo_dir: Path, tmp_path: Path) -> None:
    run_flow(demo_config(demo_dir, tmp_path, run={"task_runner": process_runner, "workers": 2}),
             process_runner)
    for stage, tables in TABLES.items():
        for table in tables:
            left = StageArtifact(threads_root / "runs" / "threads" / stage).read_all(table=table)
            right = StageArtifact(tmp_path / "runs" / process_runner / stage).read_all(table=table)
            assert left.sort_by("sample_id").equals(right.sort_by("sample_id")), (stage, table)


def _dask_worker_pids() -> list[int]:
    """Live Dask worker processes below this one; a zombie (a helper that exited and is not
    reaped yet) has no command line and is no worker."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
        if "distributed" in command or "spawn_main" in command:
            pids.append(child.pid)
    return pids


@needs_extra("dask")
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


def test_worker_processes_are_pointed_at_this_processes_api() -> None:
    """Without the URL, each Dask or Ray worker would start a temporary Prefect server of its own
    on its first task (seconds each) and record its task runs there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from affectflow.pipelines.task_runners import worker_environment

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert worker_environment() == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
