"""Prefect as a window on a run: flow runs named by the run id, the project's log lines in the
run logs (also in a fresh process configured by Prefect alone, as under a worker), no per-task
"Finished in state Completed()", artifacts keyed by run and stage, read back through the client."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import yaml

from affectflow.pipelines.publish import artifact_key, key_part
from tests.conftest import write_tumemo
from tests.prefect_readback import artifacts_with_prefix, flow_runs_named, flush_logs, log_lines

REPO = Path(__file__).resolve().parents[2]
VALID_KEY = re.compile(r"[a-z0-9-]+")


def test_artifact_keys_are_valid_and_distinct_per_run_id() -> None:
    ids = ["demo1", "Demo1", "demo_1", "demo.1", "demo-1", "run-20261201-121314-a1b2c3", "x.y_Z"]
    keys = [artifact_key(run_id, "cternet_eval", "report") for run_id in ids]
    assert all(VALID_KEY.fullmatch(key) for key in keys)
    assert len(set(keys)) == len(ids)
    assert artifact_key("demo1", "cternet_eval", "report") == "demo1-cternet-eval-report"
    assert key_part("run-20261201-121314-a1b2c3") == "run-20261201-121314-a1b2c3"


def test_task_logs_reach_the_flow_run_without_completed_chatter(prefect_harness: None) -> None:
    from prefect import flow, task

    from affectflow.pipelines.prefect_logging import forward_project_logs

    project = logging.getLogger("affectflow.tests.window")

    @task(task_run_name="step-{index}")
    def step(index: int) -> int:
        project.info("step %d done", index)
        return index

    @flow(name="window-check", flow_run_name="{label} · check")
    def check(label: str) -> int:
        forward_project_logs()
        return sum(step.submit(index).result() for index in range(3))

    assert check("window-1") == 3
    flush_logs()
    [run] = flow_runs_named("window-1 · check")
    lines = log_lines(run)
    messages = [message for _, message in lines]
    assert [m for m in messages if m.startswith("step ")] == ["step 0 done", "step 1 done", "step 2 done"]
    assert not [m for name, m in lines if name == "prefect.task_runs" and m.startswith("Finished in state")]
    assert [m for name, m in lines if name == "prefect.flow_runs" and "Finished in state Completed" in m]


def ingest_only_config(tmp_path: Path) -> Path:
    """A run of the ingest stage alone on four posts, one of them with an empty text."""
    posts = {f"p{i}": ("Happy", f"a post about a red car {i}") for i in range(3)}
    posts["p3"] = ("Sad", "   ")
    data = write_tumemo(tmp_path / "tumemo", posts)
    config = tmp_path / "ingest.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"artifact_root": str(tmp_path / "artifacts"), "stages": ["ingest"], "workers": 1},
        "ingest": {"source": "tumemo", "path": str(data), "dataset_name": "window"}}))
    return config


def test_a_process_configured_by_prefect_alone_forwards_the_project_logs(
        prefect_harness: None, tmp_path: Path) -> None:
    """What a process worker starts for a deployment: a fresh interpreter that imports the flow
    and runs it with Prefect's logging config (root at WARNING) and no extra-logger setting."""
    from prefect.settings import PREFECT_API_URL

    config = ingest_only_config(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_LOGGING_EXTRA_LOGGERS"}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    script = ("import json, sys; from affectflow.pipelines.flows import pretrain_flow; "
              "print(json.dumps(pretrain_flow(config_path=sys.argv[1])['run_id']))")
    done = subprocess.run([sys.executable, "-c", script, str(config)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout.strip().splitlines()[-1])
    [flow_run] = flow_runs_named(run_id)  # named after the run id the flow made
    [chain] = flow_runs_named(f"{run_id} · stages")
    lines = log_lines(chain)
    assert ("affectflow.core.runner", "ingest: 4 in = 3 out + 1 rejected (empty_text: 1)") in lines
    assert not [m for name, m in lines if name == "prefect.task_runs" and m.startswith("Finished in state")]
    accounting = artifacts_with_prefix(f"{key_part(run_id)}-ingest-")
    assert list(accounting) == [f"{key_part(run_id)}-ingest-accounting"]
    rows = json.loads(accounting[f"{key_part(run_id)}-ingest-accounting"])
    assert {row["rows"]: row["count"] for row in rows} == {
        "in": 4, "out": 3, "rejected": 1, "rejected: empty_text": 1}
    assert flow_run.state is not None and flow_run.state.is_completed()


def test_epoch_means_leave_out_steps_and_epochs_without_a_loss() -> None:
    """A partition's loss is NaN in the steps before its phase starts (models/pacl/train.py)."""
    from affectflow.stages.pacl.view import epoch_means

    nan = float("nan")
    history = pa.table({"epoch": [0, 0, 1, 1, 1, 2], "loss_weak": [nan, nan, 2.0, nan, 4.0, 1.5]})
    assert epoch_means(history, "loss_weak") == {1: 3.0, 2: 1.5}
