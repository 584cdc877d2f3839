"""Schedules fire: a real `prefect server start` on loopback, the project's deployment deployed
with a short interval schedule, a process work pool and worker, and a scheduled flow run that
the scheduler creates and the worker completes (README "Scheduling with a Prefect server")."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from affectflow.core.lifeline import stop_with_this_process
from tests.conftest import write_tumemo

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "affectflow-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process and everything it started (each runs in its own session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free loopback port, with a scheduler that looks every second;
    stopped (with its children) when the test ends, however it ends."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
           # a few runs ahead, not the default hundred: each is a process importing torch
           "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
           "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "2",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
           "PREFECT_UI_ENABLED": "false"}
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                                str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    stop_with_this_process(process.pid)  # even a killed test session leaves no server behind
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not become healthy in 180 s")
        yield env
    finally:
        stop(process)
        log.close()
    assert process.poll() is not None


def prefect(env: dict[str, str], *args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def flow_runs(env: dict[str, str], deployment_id: str) -> list[dict]:
    """The deployment's flow runs (none while the busy server does not answer in time)."""
    try:
        response = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", timeout=30,
                              json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
    except httpx.TimeoutException:
        return []
    response.raise_for_status()
    return list(response.json())


def test_scheduler_creates_runs_and_a_process_worker_completes_one(
        server: dict[str, str], tmp_path: Path) -> None:
    posts = write_tumemo(tmp_path / "posts", {str(i): ("Calm", f"calm post {i}") for i in range(6)})
    config = tmp_path / "ingest.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"artifact_root": str(tmp_path / "artifacts"), "stages": ["ingest"]},
        "ingest": {"source": "tumemo", "path": str(posts)}}))
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    nightly = next(d for d in project["deployments"] if d["name"] == "pretrain-demo-nightly")
    nightly.update(name="every-few-seconds", schedules=[{"interval": 20}],
                   work_pool={"name": POOL},
                   parameters={**nightly["parameters"], "config_path": str(config)})
    project["deployments"] = [nightly]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(project))

    prefect(server, "work-pool", "create", POOL, "--type", "process")
    prefect(server, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    deployment = json.loads(httpx.get(
        f"{server['PREFECT_API_URL']}/deployments/name/pretrain/every-few-seconds",
        timeout=10).text)
    assert deployment["parameters"]["run_id"] == nightly["parameters"]["run_id"]

    deadline = time.monotonic() + 120
    while not [run for run in flow_runs(server, deployment["id"]) if run["auto_scheduled"]]:
        assert time.monotonic() < deadline, "the scheduler created no scheduled flow run"
        time.sleep(1)

    worker_log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", POOL, "--type", "process",
                               "--limit", "1"],
                              env=server, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    stop_with_this_process(worker.pid)
    try:
        deadline = time.monotonic() + 420
        while True:
            runs = flow_runs(server, deployment["id"])
            completed = [run for run in runs if run["state_type"] == "COMPLETED"]
            if completed:
                break
            failed = [run for run in runs if run["state_type"] in ("FAILED", "CRASHED")]
            assert not failed, (tmp_path / "worker.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(2)
    finally:
        stop(worker)
        worker_log.close()
    assert completed[0]["auto_scheduled"]
    runs_dir = tmp_path / "artifacts" / "runs"
    finished = [json.loads((folder / "run.json").read_text()) for folder in runs_dir.iterdir()]
    assert any(record["stages"]["ingest"]["status"] == "done" for record in finished)
    assert all(record["run_id"].startswith("nightly-") for record in finished)


def test_a_run_id_template_is_filled_from_the_scheduled_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.runtime import flow_run

    from affectflow.core.errors import UserError
    from affectflow.pipelines.flows import expand_run_id

    # What Prefect's runtime reports inside a scheduled flow run (23:30 at UTC-2 = 01:30 UTC).
    start = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    monkeypatch.setitem(flow_run.FIELDS, "scheduled_start_time", lambda: start)
    assert expand_run_id("nightly-{scheduled:%Y%m%d-%H%M}") == "nightly-20260305-0130"
    assert expand_run_id("demo-nightly") == "demo-nightly"  # a plain id: every run continues it
    with pytest.raises(UserError, match="bad run id template"):
        expand_run_id("nightly-{when}")
