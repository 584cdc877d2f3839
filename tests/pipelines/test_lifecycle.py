"""A run's lifecycle through the CLI: state derived from disk (done, stale with its reason,
failed with its error, interrupted, running, not run), the run's saved config as the source of
truth (overrides recorded with history, `run` on an existing run diffs and refuses unless
`--update`), `resume`, and runs that still work from another folder or after a move."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

CHAIN = ["ingest", "factual"]


@pytest.fixture
def workdir(tmp_path: Path, demo_dir: Path) -> Iterator[Path]:
    """A working folder with a two-stage config (ingest -> factual) on the demo data."""
    shutil.copytree(demo_dir, tmp_path / "data")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "run": {"artifact_root": "artifacts", "stages": CHAIN},
        "ingest": {"source": "tumemo", "path": "data/tumemo", "dataset_name": "demo",
                   "shard_size": 32},
        "factual": {"clip": "data/models/clip", "batch_size": 32}}))
    with contextlib.chdir(tmp_path):
        yield tmp_path


def states(capsys: pytest.CaptureFixture[str], run_id: str, *extra: str) -> dict[str, str]:
    """`affectflow runs R`: stage -> the rest of its line."""
    code, out, err = run_cli(capsys, "runs", run_id, *extra)
    assert code == 0, err
    lines = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ")]
    return {parts[0]: parts[1] for parts in lines if parts[0] in CHAIN}


def test_override_stale_resume_done_and_the_saved_config_wins(
        prefect_harness: None, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", "pretrain", "--config", "run.yaml", "--run-id", "r")
    assert code == 0, err
    assert all(line.startswith("done") for line in states(capsys, "r").values())

    code, out, err = run_cli(capsys, "stage", "ingest", "--run", "r", "--set", "ingest.min_image_side=40")
    assert code == 0, err
    assert "downstream stages now stale: factual" in out and "affectflow resume r" in out
    shown = states(capsys, "r")
    assert shown["ingest"].startswith("done")
    assert shown["factual"].startswith("stale") and "input ingest" in shown["factual"]
    record = json.loads(Path("artifacts/runs/r/run.json").read_text())
    assert record["config"]["ingest"]["min_image_side"] == 40
    assert record["history"][-1]["changes"] == {"ingest.min_image_side": [32, 40]}
    assert "stage ingest" in record["history"][-1]["command"]

    code, _, err = run_cli(capsys, "run", "pretrain", "--config", "run.yaml", "--run-id", "r")
    assert code == 2 and "ingest.min_image_side: 40 -> 32" in err and "--update" in err

    code, out, err = run_cli(capsys, "inspect", "r")
    assert code == 0 and "stale" in out and "input ingest" in out
    code, out, err = run_cli(capsys, "resume", "r")
    assert code == 0, err
    assert "factual" in out
    assert all(line.startswith("done") for line in states(capsys, "r").values())
    assert json.loads(Path("artifacts/runs/r/run.json").read_text())[
        "config"]["ingest"]["min_image_side"] == 40

    code, out, err = run_cli(capsys, "run", "pretrain", "--config", "run.yaml", "--run-id", "r",
                         "--update")
    assert code == 0, err
    record = json.loads(Path("artifacts/runs/r/run.json").read_text())
    assert record["config"]["ingest"]["min_image_side"] == 32
    assert record["history"][-1]["changes"] == {"ingest.min_image_side": [40, 32]}


def test_a_stage_that_fails_shows_its_error_and_resume_finishes_it(
        prefect_harness: None, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "pretrain", "--config", "run.yaml", "--run-id", "f")
    assert code == 0, err
    # Weights that are there (the preflight finds them) but do not load: the stage itself fails.
    weights = workdir / "data/models/clip/open_clip_model.safetensors"
    kept = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    code, _, err = run_cli(capsys, "stage", "factual", "--run", "f", "--force")
    assert code == 1 and "\nerror: " in f"\n{err}"  # after Prefect's own log of the failed task
    shown = states(capsys, "f")
    assert shown["ingest"].startswith("done")
    record = json.loads(Path("artifacts/runs/f/run.json").read_text())["stages"]["factual"]
    assert shown["factual"].startswith("failed") and record["error"][:40] in shown["factual"]
    assert "(full text: errors/factual.txt)" in shown["factual"]
    assert "Traceback" in (workdir / "artifacts/runs/f/errors/factual.txt").read_text()
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "1 failed" in out

    weights.write_bytes(kept)
    code, out, err = run_cli(capsys, "resume", "f")
    assert code == 0, err
    pending = out.split("resuming run f:", 1)[1].split("run f resumed", 1)[0]
    assert "factual" in pending and "ingest" not in pending  # only the failed stage
    assert all(line.startswith("done") for line in states(capsys, "f").values())


def test_a_killed_run_shows_interrupted_and_resume_finishes_it(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {**os.environ, "PREFECT_HOME": str(workdir / ".prefect")}
    command = [sys.executable, "-m", "affectflow.pipelines.cli", "--quiet", "run", "pretrain",
               "--config", "run.yaml", "--run-id", "k"]
    writer = subprocess.Popen(command, env=env, start_new_session=True)
    run_file = workdir / "artifacts/runs/k/run.json"
    deadline = time.monotonic() + 600
    while not (run_file.is_file() and json.loads(run_file.read_text()).get("stages", {}).get(
            "factual", {}).get("status") == "running"):
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    shown = states(capsys, "k")
    assert shown["factual"].startswith("running") and f"pid {writer.pid}" in shown["factual"]
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait()
    shown = states(capsys, "k")
    assert shown["factual"].startswith("interrupted") and f"pid {writer.pid}" in shown["factual"]
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "interrupted" in out

    done = subprocess.run([sys.executable, "-m", "affectflow.pipelines.cli", "--quiet", "resume",
                           "k"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert all(line.startswith("done") for line in states(capsys, "k").values())


def test_a_moved_run_inspects_exports_and_resumes_from_another_folder(
        prefect_harness: None, workdir: Path, capsys: pytest.CaptureFixture[str],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    code, _, err = run_cli(capsys, "run", "pretrain", "--config", "run.yaml", "--run-id", "m")
    assert code == 0, err
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "runs").mkdir()
    shutil.move(workdir / "artifacts" / "runs" / "m", elsewhere / "runs" / "m")
    with contextlib.chdir(tmp_path_factory.mktemp("another-folder")):
        root = str(elsewhere)
        code, out, err = run_cli(capsys, "inspect", "m", "ingest", "--artifact-root", root)
        assert code == 0, err
        assert all(line.startswith("done") for line in
                   states(capsys, "m", "--artifact-root", root).values())
        code, out, err = run_cli(capsys, "resume", "m", "--artifact-root", root)
        assert code == 0 and "up to date" in out, err
        code, out, err = run_cli(capsys, "stage", "factual", "--run", "m", "--artifact-root", root,
                             "--force")
        assert code == 0, err


def test_a_dataset_copied_without_its_mtimes_recomputes_only_in_stat_mode(
        prefect_harness: None, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("stat", "content"):
        code, _, err = run_cli(capsys, "run", "pretrain", "--config", "run.yaml", "--run-id", mode,
                           "--set", f"run.fingerprint={mode}")
        assert code == 0, err
    # The posts and the local CLIP folder copied byte for byte with new mtimes, as `cp` or an
    # archive extracted without them does.
    shutil.copytree(workdir / "data", workdir / "copy", copy_function=shutil.copyfile)
    shutil.rmtree(workdir / "data")
    (workdir / "copy").rename(workdir / "data")

    shown = states(capsys, "stat")
    assert shown["ingest"].startswith("stale") and "external data changed" in shown["ingest"]
    assert shown["factual"].startswith("stale")
    assert all(line.startswith("done") for line in states(capsys, "content").values())
    code, out, err = run_cli(capsys, "resume", "content")
    assert code == 0 and "up to date" in out, err
