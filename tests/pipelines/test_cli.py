"""The CLI end to end on a small demo dataset, under Prefect's test harness."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from affectflow.pipelines.cli import main
from tests.conftest import run_cli
from tests.prefect_readback import artifacts_with_prefix, flow_runs_named, flush_logs, log_lines

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path: Path, demo_dir: Path) -> Iterator[Path]:
    """A working folder with the demo config and demo data where the config expects them."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(demo_dir, tmp_path / "artifacts" / "demo-data")
    with contextlib.chdir(tmp_path):
        yield tmp_path


def test_pretrain_rerun_runs_and_inspect(prefect_harness: None, workdir: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    code, out, err = run_cli(capsys, "run", "pretrain", "--config", "configs/demo.yaml",
                             "--run-id", "demo1", "--set", "ingest.shard_size=16")
    assert code == 0, err
    assert "run demo1 finished" in out
    assert "ingest" in out and "61 in = 57 out + 4 rejected" in out
    run = json.loads((workdir / "artifacts/runs/demo1/run.json").read_text())
    assert run["config"]["ingest"]["shard_size"] == 16
    assert run["stages"]["ingest"]["status"] == "done"
    assert (workdir / "artifacts/runs/demo1/ingest/_manifest.json").is_file()
    assert (workdir / "artifacts/runs/demo1/ingest/rejects.parquet").is_file()
    assert len(list((workdir / "artifacts/runs/demo1/ingest").glob("part-*.parquet"))) == 4
    check_prefect_window(run["config"]["run"]["stages"])

    # A no-change rerun is answered from the artifact store: the flow (and Prefect) never starts,
    # and no preflight runs (it asks the model libraries' registries, which import torch).
    with monkeypatch.context() as patched:
        def no_flow(**_: object) -> None:
            raise AssertionError("a no-change rerun started the Prefect flow")

        def no_preflight(*_: object) -> None:
            raise AssertionError("a no-change rerun ran the preflight")

        patched.setattr("affectflow.pipelines.flows.pretrain_flow", no_flow)
        patched.setattr("affectflow.pipelines.preflight.require_ready", no_preflight)
        code, out, err = run_cli(capsys, "run", "pretrain", "--config", "configs/demo.yaml",
                                 "--run-id", "demo1", "--set", "ingest.shard_size=16")
    assert code == 0, err
    assert "skipped" in out and "running" not in out

    code, out, _ = run_cli(capsys, "stage", "ingest", "--run", "demo1",
                           "--set", "ingest.min_image_side=100")
    assert code == 0 and "running" not in out
    assert "downstream stages now stale" in out
    run = json.loads((workdir / "artifacts/runs/demo1/run.json").read_text())
    assert run["config"]["ingest"]["min_image_side"] == 100

    code, out, _ = run_cli(capsys, "runs")  # one line per run: its stages counted by state
    assert code == 0 and "demo1" in out and " done" in out and "stale" in out

    code, out, _ = run_cli(capsys, "inspect", "demo1", "ingest", "--samples", "2")
    assert code == 0
    for expected in ("schema:", "sample_id: string", "rejects by reason:", "truncated_image",
                     "first 2 rows:"):
        assert expected in out

    code, out, _ = run_cli(capsys, "inspect", "demo1", "ingest", "--samples", "0")
    assert code == 0 and "truncated_image: 1" in out
    assert "Empty DataFrame" not in out and "first 0 rows" not in out

    code, out, _ = run_cli(capsys, "inspect", "demo1")
    assert code == 0 and "ingest" in out

    # The run folder copied to another place where the folder it was made in (its config,
    # its dataset) does not exist: its outputs still inspect and export from any folder.
    copied = tmp_path_factory.mktemp("copied")
    shutil.copytree(workdir / "artifacts/runs/demo1", copied / "runs" / "demo1")
    gone = workdir.with_name(workdir.name + "-gone")
    with contextlib.chdir(tmp_path_factory.mktemp("another-folder")):
        workdir.rename(gone)
        try:
            code, out, err = run_cli(capsys, "inspect", "demo1", "partition", "--artifact-root",
                                     str(copied))
            assert code == 0 and "strong" in out, err
            code, out, err = run_cli(capsys, "export", "demo1", "partition", "--partition",
                                     "strong", "--out", "strong.csv", "--artifact-root", str(copied))
            assert code == 0, err
            assert int(out.split()[0]) > 0 and Path("strong.csv").is_file()
            # Its dataset is not here: states cannot be compared, and say why; resume refuses.
            code, out, err = run_cli(capsys, "runs", "demo1", "--artifact-root", str(copied))
            assert code == 0 and "not on this machine" in out, err
            assert all(line.split()[1] == "unknown" for line in out.splitlines()
                       if line.startswith("  ") and line.split()[0] in ("ingest", "partition"))
            code, out, err = run_cli(capsys, "resume", "demo1", "--artifact-root", str(copied))
            assert code == 2 and "does not validate here" in err and "--update" in err
        finally:
            gone.rename(workdir)


def check_prefect_window(stages: list[str]) -> None:
    """What the demo run left in Prefect: flow runs named by the run id, the project's log lines
    (accounting, losses per epoch, k-means, probe accuracies) without per-task chatter, and every stage's artifacts."""
    flush_logs()
    assert len(flow_runs_named("demo1")) == 1
    [chain] = flow_runs_named("demo1 · stages")
    lines = log_lines(chain)
    messages = [message for _, message in lines]
    assert any(m.startswith("ingest: 61 in = 57 out + 4 rejected (") for m in messages)
    assert any(m.startswith("pacl epoch 45/45 (") for m in messages)
    assert any(m.startswith("cluster factual k=2: ") for m in messages)
    assert any(m.startswith("probe single_label linear: test Acc ") and "before PACL" in m
               for m in messages)
    assert not [m for name, m in lines if name == "prefect.task_runs" and m.startswith("Finished in state")]
    found = artifacts_with_prefix("demo1-")
    views = {"partition-shares", "partition-summary", "cluster-sweep", "pacl-losses", "probe-results"}
    assert set(found) == ({f"demo1-{stage.replace('_', '-')}-accounting" for stage in stages}
                          | {f"demo1-{view}" for view in views})
    assert "data:image/png;base64," in found["demo1-pacl-losses"]
    assert "| weighted total |" in found["demo1-pacl-losses"]
    assert "| factual | 2 |" in found["demo1-cluster-sweep"]
    assert "Linear probe" in found["demo1-probe-results"] and "Zero-shot" in found["demo1-probe-results"]
    ingest = {row["rows"]: row["count"] for row in json.loads(found["demo1-ingest-accounting"])}
    assert ingest["in"] == 61 and ingest["out"] == 57 and ingest["rejected"] == 4
    assert sum(count for rows, count in ingest.items() if rows.startswith("rejected: ")) == 4


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "pretrain", "--config", "configs/missing.yaml"], "config file not found"),
    (["run", "pretrain", "--config", "configs/demo.yaml", "--set", "ingest.nope=1"],
     "unknown key 'ingest.nope'"),
    (["stage", "nosuch", "--run", "x"], "unknown stage 'nosuch'"),
    (["stage", "ingest", "--run", "never-ran"], "no run 'never-ran'"),
    (["inspect", "never-ran"], "no run 'never-ran'"),
    (["demo-data", "out", "--posts", "3"], "too small"),
])
def test_errors_are_one_line_with_a_hint(workdir: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in err and len(lines) <= 2


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo-data", "demo-models", "run", "stage", "resume", "runs", "inspect", "export",
                    "bench"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        assert "usage: affectflow" in capsys.readouterr().out
