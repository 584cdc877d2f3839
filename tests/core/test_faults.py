"""Fault injection: truncated, deleted, rewritten and stray shards, interrupted swaps, two writers
on one run, killed writers — and what a user sees (messages naming the file and the fix, exit
codes, only the broken shard and what depends on it computed again, nothing trusted silently)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from affectflow.core.integrity import IntegrityError, forget_verified
from affectflow.core.locks import LOCK_FILE, RunBusy, live_writer, read_holder
from affectflow.core.runner import recover_swap, run_stage
from affectflow.core.runs import RunStore, validate_run_id
from affectflow.core.stage import ShardOutput, StageContext
from affectflow.core.store import MAIN_TABLE, MANIFEST
from affectflow.pipelines.inspect import run_report, runs_table
from tests.conftest import run_cli, write_tumemo
from tests.core.test_runner import CALLS, NumbersStage, ScaleStage, job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    CALLS.clear()
    forget_verified()
    run = RunStore(tmp_path, "run")
    run.create({}, {})
    return run


def finished_chain(store: RunStore) -> None:
    run_stage(job(store, NumbersStage()))
    run_stage(job(store, ScaleStage()))
    CALLS.clear()


def rerun_chain(store: RunStore) -> list[tuple[str, int]]:
    run_stage(job(store, NumbersStage()))
    run_stage(job(store, ScaleStage()))
    return list(CALLS)


def test_a_truncated_shard_is_reported_by_path_and_only_it_is_recomputed(
        store: RunStore, caplog: pytest.LogCaptureFixture) -> None:
    finished_chain(store)
    shard = store.stage("numbers").path / "part-00001.parquet"
    good = store.stage("numbers").read_all().to_pylist()
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(IntegrityError, match=r"part-00001\.parquet.*truncated") as raised:
        store.stage("numbers").read_all()
    assert "affectflow stage numbers --run run" in raised.value.hint
    with caplog.at_level(logging.WARNING):
        calls = rerun_chain(store)
    assert calls == [("numbers", 1)]  # same bytes again, so `scaled` stays valid
    assert str(shard) in caplog.text and "computing shard 1 again" in caplog.text
    assert store.stage("numbers").read_all().to_pylist() == good


def test_a_deleted_upstream_shard_stops_the_downstream_stage_it_never_becomes_rejects(
        store: RunStore) -> None:
    finished_chain(store)
    (store.stage("numbers").path / "part-00002.parquet").unlink()
    before = store.stage("scaled").read_all()
    with pytest.raises(IntegrityError, match=r"part-00002\.parquet: missing") as raised:
        run_stage(job(store, ScaleStage()), force=True)
    assert "repaired first" in raised.value.hint and "stage numbers" in raised.value.hint
    assert store.stage("scaled").read_all().equals(before)  # the old output is untouched
    assert CALLS == []
    assert rerun_chain(store) == [("numbers", 2)]
    assert store.stage("scaled").manifest["rows_in"] == 11


def test_the_same_size_rewritten_bytes_are_caught_by_the_checksum(store: RunStore) -> None:
    finished_chain(store)
    shard = store.stage("numbers").path / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    forget_verified()
    with pytest.raises(IntegrityError, match="checksum"):
        store.stage("numbers").read_shard(0)
    assert rerun_chain(store) == [("numbers", 0)]


def test_a_file_the_stage_never_wrote_is_not_read(store: RunStore) -> None:
    finished_chain(store)
    stray = store.stage("numbers").path / "part-00007.parquet"
    stray.write_bytes((store.stage("numbers").path / "part-00000.parquet").read_bytes())
    with pytest.raises(IntegrityError, match="not written by the stage"):
        store.stage("numbers").read_shard(7)
    assert store.stage("numbers").shard_ids() == [0, 1, 2]


class Drifting(NumbersStage):
    """Writes different values each time it computes (a non-deterministic stage)."""

    generation = 0

    def process(self, ctx: StageContext, state: Any, shard_id: int) -> ShardOutput:
        output = super().process(ctx, state, shard_id)
        Drifting.generation += 1
        main = output.main.set_column(1, "value", pa.array(
            [value + 1000 * Drifting.generation for value in output.main["value"].to_pylist()]))
        return ShardOutput(output.rows_in, {MAIN_TABLE: main}, output.rejects)


def test_a_repaired_shard_with_new_bytes_recomputes_what_depends_on_it(store: RunStore) -> None:
    stage = Drifting()
    stage.name = "numbers"
    run_stage(job(store, stage))
    run_stage(job(store, ScaleStage()))
    CALLS.clear()
    (store.stage("numbers").path / "part-00001.parquet").unlink()
    run_stage(job(store, stage))
    run_stage(job(store, ScaleStage()))
    assert [c for c in CALLS if c[0] == "numbers"] == [("numbers", 1)]
    assert sorted(c for c in CALLS if c[0] == "scaled") == [("scaled", i) for i in range(3)]


def test_a_failing_recompute_keeps_the_previous_output(store: RunStore) -> None:
    finished_chain(store)
    before = store.stage("numbers").read_all()
    with pytest.raises(RuntimeError, match="injected"):
        run_stage(job(store, NumbersStage(), fail_on_shard=1), force=False)
    assert store.stage("numbers").complete and store.stage("numbers").read_all().equals(before)
    assert store.stage("scaled").read_all().num_rows == 11  # its input is still there
    assert (store.path / ".work" / "numbers" / "_shards" / "00000.json").is_file()  # resumable


def test_a_swap_cut_short_by_a_crash_is_finished_or_undone(store: RunStore) -> None:
    final = store.stage("numbers").path
    building = store.building("numbers").path
    retired = building.with_name(".numbers.retired")
    run_stage(job(store, NumbersStage()))
    shutil.copytree(final, retired)
    run_stage(job(store, NumbersStage(), rows_per_shard=6))
    # A crash between the swap's two renames: old output moved aside, new build complete.
    os.rename(final, building)
    recover_swap(job(store, NumbersStage()))
    assert json.loads((final / MANIFEST).read_text())["rows_in"] == 18
    assert not retired.exists() and not building.exists()
    # A crash after moving the old output aside with no finished build: the old one comes back.
    shutil.copytree(final, retired)
    shutil.rmtree(final)
    recover_swap(job(store, NumbersStage()))
    assert json.loads((final / MANIFEST).read_text())["rows_in"] == 18 and not retired.exists()


# --- one writer per run ---------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from affectflow.core.runs import RunStore
    with RunStore(Path(sys.argv[1]), "run").writer("test holder"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold_lock(root: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    store = RunStore(tmp_path, "run")
    holder = hold_lock(tmp_path, 60)
    try:
        started = time.monotonic()
        with pytest.raises(RunBusy, match=f"run run is being written by pid {holder.pid} on "
                                          r".* since .*\(test holder\)"):
            with store.writer():
                pass
        assert time.monotonic() - started < 5
        writer = live_writer(store.path)
        assert writer is not None and writer.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_writer_is_taken_over_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = RunStore(tmp_path, "run")
    posts = write_tumemo(tmp_path / "posts", {"1": ("Calm", "calm")})
    store.create({"run": {"stages": ["ingest"]}, "ingest": {"source": "tumemo", "path": str(posts)}},
                 {})
    store.update_stage("ingest", status="running", started="2026-01-01T00:00:00+00:00")
    holder = hold_lock(tmp_path, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_holder(store.path).pid == holder.pid and live_writer(store.path) is None
    assert "1 interrupted" in runs_table(tmp_path)
    assert (f"interrupted {'-':<32} {'-':>7}  started 2026-01-01T00:00:00+00:00; its writer "
            f"(pid {holder.pid}) is gone") in run_report(store)
    with caplog.at_level(logging.WARNING), store.writer():
        assert live_writer(store.path).pid == os.getpid()
        assert f"[written by pid {os.getpid()}]" in runs_table(tmp_path)
        # the attempt recorded before this writer took the lock is the killed writer's
        assert "interrupted" in run_report(store) and "running" not in run_report(store)
    assert f"taking over the lock of pid {holder.pid}" in caplog.text
    assert (store.path / LOCK_FILE).read_text() == ""  # released cleanly


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    store = RunStore(tmp_path, "run")
    with store.writer(), store.writer():
        assert live_writer(store.path).pid == os.getpid()
    assert live_writer(store.path) is None


# --- clean death -----------------------------------------------------------------------------

DECODE_PARENT = textwrap.dedent("""
    import os, time
    from affectflow.stages.ingest.decode_pool import decode_pool
    pool = decode_pool(2)
    pool.submit(os.getpid).result()
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(60)
""")

WATCHED_PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from affectflow.core.lifeline import stop_with_this_process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    stop_with_this_process(child.pid)
    print(child.pid, flush=True)
    time.sleep(60)
""")


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as handle:
                    if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


EPHEMERAL_PARENT = textwrap.dedent("""
    import time
    from affectflow.pipelines.prefect_env import configure_prefect_env, guard_ephemeral_server
    configure_prefect_env()
    from prefect import flow
    from prefect.server.api.server import SubprocessASGIServer

    @flow
    def probe() -> int:
        guard_ephemeral_server()
        return SubprocessASGIServer().server_process.pid

    print(probe(), flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("script", [DECODE_PARENT, WATCHED_PARENT, EPHEMERAL_PARENT],
                         ids=["decode-workers", "watched-child", "temporary-prefect-server"])
def test_helpers_end_when_their_parent_is_killed(script: str, tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    assert parent.stdout is not None
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert pids
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone_within(pids, 15), f"helpers {pids} outlived their killed parent"


# --- through the CLI ------------------------------------------------------------------------


@pytest.fixture
def ingest_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_tumemo(tmp_path / "posts", {str(i): ("Calm", f"calm post {i}") for i in range(12)})
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump({
        "run": {"artifact_root": "artifacts", "stages": ["ingest"]},
        "ingest": {"source": "tumemo", "path": "posts", "shard_size": 4}}))
    monkeypatch.chdir(tmp_path)
    forget_verified()
    return tmp_path


def test_cli_heals_a_truncated_shard_and_refuses_a_second_writer(
        prefect_harness: None, ingest_workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", "pretrain", "--config", "ingest.yaml", "--run-id", "r1")
    assert code == 0, err
    shard = Path("artifacts/runs/r1/ingest/part-00001.parquet")
    shard.write_bytes(shard.read_bytes()[:100])
    code, out, err = run_cli(capsys, "inspect", "r1", "ingest")
    assert code == 2 and str(shard) in err and "hint: rerun the stage" in err
    # the repair is a warning: shown on the default console, not under --quiet
    code, out, err = run_cli(capsys, "run", "pretrain", "--config", "ingest.yaml", "--run-id", "r1",
                         quiet=False)
    assert code == 0, err
    assert f"{shard}: " in err and "computing shard 1 again" in err
    assert "12 in = 12 out" in out
    code, out, _ = run_cli(capsys, "inspect", "r1", "ingest", "--samples", "0")
    assert code == 0 and "12 in = 12 out" in out

    script = HOLDER.replace('"run"', '"r1"')
    r1_holder = subprocess.Popen([sys.executable, "-c", script, str(ingest_workdir / "artifacts"),
                                  "60"], stdout=subprocess.PIPE, text=True)
    assert r1_holder.stdout is not None and r1_holder.stdout.readline().strip() == "locked"
    try:
        for argv in (["run", "pretrain", "--config", "ingest.yaml", "--run-id", "r1"],
                     ["stage", "ingest", "--run", "r1", "--force"]):
            code, _, err = run_cli(capsys, *argv)
            assert code == 2
            assert f"error: run r1 is being written by pid {r1_holder.pid}" in err
        code, out, _ = run_cli(capsys, "runs")  # readers need no lock
        assert code == 0 and "r1" in out
    finally:
        r1_holder.kill()
        r1_holder.wait()


@pytest.mark.parametrize("run_id", ["../../x", "x\n", "", "a/b"])
def test_run_ids_that_could_leave_the_artifact_root_are_refused(
        ingest_workdir: Path, capsys: pytest.CaptureFixture[str], run_id: str) -> None:
    for argv in (["inspect", run_id], ["stage", "ingest", "--run", run_id],
                 ["export", run_id, "partition", "--out", "x.csv"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "invalid run id" in err, argv
    with pytest.raises(Exception, match="invalid run id"):
        validate_run_id(run_id)


def test_a_run_folder_that_is_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "runs" / "r").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(Exception, match="leads outside"):
        RunStore(tmp_path, "r")


def test_workers_are_bounded_with_a_fix_in_the_message(
        ingest_workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "pretrain", "--config", "ingest.yaml",
                       "--set", "run.workers=100000")
    assert code == 2 and "run.workers" in err and "use at most" in err


def test_run_stage_recorded_markers_hold_file_records(store: RunStore) -> None:
    run_stage(job(store, NumbersStage(), shards=2))
    manifest = store.stage("numbers").manifest
    assert set(manifest["files"]) == {"part-00000.parquet", "part-00001.parquet", "rejects.parquet",
                                      "_shards/rejects-00000.parquet", "_shards/rejects-00001.parquet"}
    record = manifest["files"]["part-00000.parquet"]
    assert record["rows"] == 3 and record["bytes"] > 0 and len(record["sha256"]) == 64
    marker = json.loads((store.stage("numbers").path / "_shards" / "00001.json").read_text())
    assert marker["files"]["part-00001.parquet"] == manifest["files"]["part-00001.parquet"]
