"""torchrun launches of a training job: on one node, or on several meeting at a c10d rendezvous.

Stages that train (`pacl`, `cternet_train`) run their job in their own process, or under torchrun
with `processes` processes on this node. With `nnodes > 1` every node runs the same stage with the
same config: torchrun's c10d rendezvous at `rdzv_endpoint` joins the nodes and assigns their ranks
itself (torchrun ignores a node rank with c10d), so no node needs settings of its own and every
node computes the same stage fingerprint.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from affectflow.core.hashing import hash_bytes
from affectflow.core.lifeline import stop_with_this_process

logger = logging.getLogger(__name__)

RDZV_BACKEND = "c10d"
# How long an interrupted torchrun gets to let its workers write a checkpoint before it is killed.
INTERRUPT_GRACE_SECONDS = 120
_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")
_RDZV_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TorchrunNodes(BaseModel):
    """The machines one training job spans; mixed into the params of the stages that train."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nnodes: int = Field(1, ge=1, description="machines training together; > 1 needs rdzv_endpoint")
    rdzv_endpoint: str | None = Field(
        None, description="host:port of the rendezvous on node 0, reachable from every node")
    rdzv_id: str | None = Field(
        None, description="rendezvous id shared by the nodes; default: derived from the job's path")

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        match = _ENDPOINT.fullmatch(value) if value is not None else None
        if value is not None and (match is None or not 0 < int(match["port"]) < 65536):
            raise ValueError(f"{value!r} is not host:port with a port in 1..65535 "
                             "(e.g. node0:29400 or 10.0.0.5:29400)")
        return value

    @field_validator("rdzv_id")
    @classmethod
    def _plain_id(cls, value: str | None) -> str | None:
        if value is not None and _RDZV_ID.fullmatch(value) is None:
            raise ValueError(f"{value!r} must be letters, digits, '.', '_' or '-' (e.g. pacl-run1)")
        return value

    @model_validator(mode="after")
    def _endpoint_with_several_nodes(self) -> TorchrunNodes:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(f"nnodes {self.nnodes} needs rdzv_endpoint: set it to host:port on "
                             "node 0 that every node can reach (e.g. rdzv_endpoint=node0:29400)")
        if self.nnodes == 1 and (self.rdzv_endpoint is not None or self.rdzv_id is not None):
            raise ValueError("rdzv_endpoint and rdzv_id only apply when nnodes > 1: "
                             "set nnodes to the number of machines, or remove them")
        return self


ONE_NODE = TorchrunNodes()


def runs_in_process(processes: int, nodes: TorchrunNodes) -> bool:
    """One process on one node trains in the caller's own process, without torchrun."""
    return processes == 1 and nodes.nnodes == 1


def default_rdzv_id(job: Path) -> str:
    """The same on every node, because every node sees the job at the same shared path."""
    return "affectflow-" + hash_bytes(str(job.resolve()).encode("utf-8"))[:16]


def torchrun_command(module: str, job: Path, processes: int, nodes: TorchrunNodes) -> list[str]:
    """`python -m torch.distributed.run <where> --nproc-per-node=N -m <module> <job>`."""
    if nodes.nnodes == 1:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={nodes.nnodes}", f"--rdzv-backend={RDZV_BACKEND}",
                 f"--rdzv-endpoint={nodes.rdzv_endpoint}",
                 f"--rdzv-id={nodes.rdzv_id or default_rdzv_id(job)}"]
    return [sys.executable, "-m", "torch.distributed.run", *where,
            f"--nproc-per-node={processes}", "-m", module, str(job)]


def launch_job(module: str, job: Path, processes: int, nodes: TorchrunNodes, what: str) -> None:
    """Run `module` on `job` under torchrun and wait; a failed job raises with the resume hint
    (every training job resumes from the checkpoints in its own folder)."""
    code = run_torchrun(torchrun_command(module, job, processes, nodes))
    if code != 0:
        raise RuntimeError(f"{what} failed: torchrun exited with code {code} (see the worker log "
                           "above); rerunning the stage resumes from the last checkpoint")


def worker_main(argv: list[str], module: str, run: Callable[[Path], object]) -> None:
    """Entry point of a torchrun worker: one job argument, logs tagged with the process rank."""
    if len(argv) != 1:
        raise SystemExit(f"usage: torchrun --nproc-per-node N -m {module} <job>")
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    run(Path(argv[0]))


def run_torchrun(command: list[str]) -> int:
    """Run torchrun and wait for its exit code; on Ctrl-C give the workers time to checkpoint."""
    logger.info("launching %s", " ".join(command))
    process = subprocess.Popen(command)
    stop_with_this_process(process.pid)  # a killed stage must not leave training running
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=INTERRUPT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
