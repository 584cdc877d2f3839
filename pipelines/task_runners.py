"""The Prefect task runner a run uses: local threads (default), Dask, or Ray — chosen by config.

Map stages fan out one task per shard; with Dask or Ray those tasks run in worker processes
(or on a cluster) that each load a stage's model once and keep it for every shard they process.
Shards travel as paths, so nothing large crosses the wire.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from affectflow.core.errors import UserError

EXTRAS = {"dask": ("prefect_dask", "affectflow[dask]"), "ray": ("prefect_ray", "affectflow[ray]")}


def check_runner_installed(kind: str) -> None:
    """Config-time check so a missing extra fails before any work."""
    if kind in EXTRAS and importlib.util.find_spec(EXTRAS[kind][0]) is None:
        module, extra = EXTRAS[kind]
        raise ValueError(f"task_runner '{kind}' needs {module}: pip install '{extra}'")


def worker_environment() -> dict[str, str]:
    """What worker processes need to report to this process's Prefect API.

    In ephemeral mode the API is a temporary server this process started, and PREFECT_API_URL is
    unset: a worker process that does not get the URL starts a temporary server of its own on its
    first task (seconds each), so its task runs would land in another server. Empty when there is
    no API yet (the runner is built outside a flow)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        server = SubprocessASGIServer()
        url = server.api_url if server.running else None
    return {"PREFECT_API_URL": url} if url else {}


def make_task_runner(settings: Any) -> Any:
    """Build the configured runner; local Dask or Ray gets `workers` single-task worker processes
    that report to this process's Prefect API."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if settings.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max(4, settings.workers))
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.workers,
                                              "threads_per_worker": 1, "processes": True,
                                              "env": worker_environment()})
    if settings.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        if settings.ray_address:
            return RayTaskRunner(address=settings.ray_address)
        # Local Ray otherwise claims every core and starts a dashboard; size it like Dask's cluster.
        return RayTaskRunner(init_kwargs={"num_cpus": settings.workers, "include_dashboard": False,
                                          "runtime_env": {"env_vars": worker_environment()}})
    raise UserError(f"unknown task runner {settings.task_runner!r}",
                    hint="set run.task_runner to threads, dask or ray")
