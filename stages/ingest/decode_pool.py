"""The worker processes `ingest` decodes images in, shared by every ingest in this process.

JPEG decoding releases the GIL, but opening a file and parsing its headers does not, so on two
cores two threads reach about 1.5x a single-threaded decode loop and two processes about 1.8x.
Starting processes costs ~0.1 s, so the pool is made once per worker count and reused by every
shard and every run in this process (shut down at exit).

Each worker exits as soon as the process that forked it is gone (`core/lifeline.py`), so a killed
run leaves no decode process behind.

The workers are forked, as PyTorch's DataLoader workers are on Linux: spawn and forkserver
children re-import the caller's `__main__`, which re-runs any script without a `__main__` guard.
The children only decode with Pillow and hash, so they touch none of the parent's threads' locks
(CPython re-initialises the import and logging locks after a fork). Where fork is unavailable
(macOS, Windows) or a daemonic process may not start children (a Dask worker), the pool is
threads.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import sys
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from affectflow.core.lifeline import exit_with_parent

logger = logging.getLogger(__name__)

_POOLS: dict[int, Executor] = {}
_LOCK = threading.Lock()


def decode_pool(workers: int) -> Executor:
    """The shared pool with `workers` processes (threads inside a daemonic process)."""
    with _LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = _new_pool(workers)
        return pool


def discard_pool(workers: int, broken: Executor) -> None:
    """Forget a broken pool (a worker process died) so the next shard starts a fresh one; a pool
    another shard already replaced it with is left alone."""
    with _LOCK:
        if _POOLS.get(workers) is broken:
            del _POOLS[workers]
    broken.shutdown(wait=False, cancel_futures=True)


@atexit.register
def _shut_down_pools() -> None:
    """Stop the workers while the interpreter is still whole (not from a late garbage collection)."""
    with _LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _new_pool(workers: int) -> Executor:
    if sys.platform != "linux" or multiprocessing.current_process().daemon:
        logger.info("decoding on %d threads (no forked worker processes here)", workers)
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=exit_with_parent)
