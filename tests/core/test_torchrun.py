"""torchrun launches: node settings checks, the command line, and a two-node rendezvous on one machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from affectflow.core.torchrun import ONE_NODE, TorchrunNodes, default_rdzv_id, runs_in_process, torchrun_command

# Joins the process group, sums every rank's (rank + 1) with all_reduce, reports what it saw.
ALL_REDUCE_MODULE = '''
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(total)
report = {"world_size": int(os.environ["WORLD_SIZE"]), "sum": total.item()}
Path(sys.argv[1], f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
dist.destroy_process_group()
'''


def test_one_node_is_standalone(tmp_path: Path) -> None:
    command = torchrun_command("pkg.worker", tmp_path / "job", 2, ONE_NODE)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node=2", "-m", "pkg.worker", str(tmp_path / "job")]


def test_several_nodes_meet_at_the_endpoint(tmp_path: Path) -> None:
    nodes = TorchrunNodes(nnodes=3, rdzv_endpoint="node0:29400", rdzv_id="pacl-run1")
    assert torchrun_command("pkg.worker", tmp_path / "job", 4, nodes)[3:] == [
        "--nnodes=3", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=pacl-run1",
        "--nproc-per-node=4", "-m", "pkg.worker", str(tmp_path / "job")]


def test_the_default_rendezvous_id_follows_the_job_path(tmp_path: Path) -> None:
    nodes = TorchrunNodes(nnodes=2, rdzv_endpoint="10.0.0.5:29400")
    first = torchrun_command("pkg.worker", tmp_path / "a", 1, nodes)
    assert f"--rdzv-id={default_rdzv_id(tmp_path / 'a')}" in first
    assert first == torchrun_command("pkg.worker", tmp_path / "a", 1, nodes)
    assert default_rdzv_id(tmp_path / "a") != default_rdzv_id(tmp_path / "b")


def test_only_one_process_on_one_node_skips_torchrun() -> None:
    several = TorchrunNodes(nnodes=2, rdzv_endpoint="node0:29400")
    assert runs_in_process(1, ONE_NODE)
    assert not runs_in_process(2, ONE_NODE)
    assert not runs_in_process(1, several)


@pytest.mark.parametrize(("settings", "message"), [
    ({"nnodes": 2}, "needs rdzv_endpoint"),
    ({"nnodes": 0}, "greater than or equal to 1"),
    ({"nnodes": 2, "rdzv_endpoint": "node0"}, "is not host:port"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:70000"}, "port in 1..65535"),
    ({"nnodes": 2, "rdzv_endpoint": "http://node0:29400"}, "is not host:port"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:29400", "rdzv_id": "my run"}, "letters, digits"),
    ({"rdzv_endpoint": "node0:29400"}, "only apply when nnodes > 1"),
    ({"node_rank": 1}, "Extra inputs are not permitted"),
])
def test_node_settings_are_checked_up_front(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TorchrunNodes(**settings)


def test_accepted_endpoints() -> None:
    for endpoint in ("node0:29400", "10.0.0.5:29400", "gpu-7.cluster.local:1", "[fe80::1]:29400"):
        assert TorchrunNodes(nnodes=2, rdzv_endpoint=endpoint).rdzv_endpoint == endpoint


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_on_one_machine_form_one_gloo_group(tmp_path: Path) -> None:
    """Both "nodes" run the very same command, as every node runs the same stage config."""
    (tmp_path / "all_reduce_check.py").write_text(ALL_REDUCE_MODULE)
    job = tmp_path / "job"
    job.mkdir()
    nodes = TorchrunNodes(nnodes=2, rdzv_endpoint=f"127.0.0.1:{_free_port()}")
    command = torchrun_command("all_reduce_check", job, 1, nodes)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda _: subprocess.run(command, env=env, capture_output=True,
                                                      text=True, timeout=120), range(2)))
    assert [run.returncode for run in runs] == [0, 0], [run.stderr[-2000:] for run in runs]
    reports = [json.loads((job / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports == [{"world_size": 2, "sum": 3.0}] * 2
