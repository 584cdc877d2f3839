"""Images loaded by torch DataLoader worker processes, kept alive from one pass to the next.

Two threads of one process reach about 1.5x one decode loop on two cores (opening a file and
parsing its headers holds the GIL); processes reach about 1.8x, and on a GPU machine with many
cores they scale where threads do not. `ImageLoader` wraps a `DataLoader` whose workers are
forked once and reused by every pass (`persistent_workers`), whose sampler is a queue of
requests the caller refills per pass, and whose items are chunks of a batch (so all workers
share one batch and the next ones are prefetched while the model runs). With a CUDA device the
chunks come back in pinned memory and are copied to the device without blocking.

A load function runs in the workers on one item and returns its tensor; an exception is caught
there and comes back as `(index, "Type: message")`, which the stage turns into a reject with
that reason, so a broken file never kills a worker. A worker that dies all the same (a decoder
crash, the OOM killer) is replaced: the batches it held are retried one image at a time, and an
image that kills a worker again becomes a failure of its own.

Workers are forked, like ingest's decode processes (stages/ingest/decode_pool.py says why). Where
a process may not fork children (not Linux, or a daemonic Dask worker) the same chunks load on
threads instead.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import multiprocessing
import os
import sys
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torch.utils.data._utils import signal_handling

from affectflow.core.files import FileProblem
from affectflow.core.images import load_rgb
from affectflow.core.pixel_cache import PixelCache, PixelStore, PixelWriter
from affectflow.core.pixels import (
    Decoder,
    ImageChangedError,
    PixelTransform,
    decode_jpegs,
    decode_rgb,
    is_jpeg,
    load_pixels,
    read_checked,
)

logger = logging.getLogger(__name__)

PREFETCH_CHUNKS = 2  # chunks each worker keeps ready ahead of the consumer
# A chunk that takes longer than this fails the pass (a stuck worker must not hang a stage).
CHUNK_TIMEOUT_SECONDS = 600
_MAX_SHARED_LOADERS = 4
_WORKER_DIED = ("exited unexpectedly", "killed by signal", "is killed by")
_ALL_LOADERS: weakref.WeakSet[ImageLoader] = weakref.WeakSet()


def worker_processes_allowed() -> bool:
    """Whether this process may fork worker processes: Linux, outside a daemonic process."""
    return sys.platform == "linux" and not multiprocessing.current_process().daemon


def dataloader_options(workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader keywords: `workers` persistent forked processes (none where processes cannot
    start) each keeping `PREFETCH_CHUNKS` batches ready, pinned memory on CUDA, and a timeout
    that turns a stuck worker into an error."""
    processes = max(0, workers) if worker_processes_allowed() else 0
    options: dict[str, Any] = {"num_workers": processes, "pin_memory": device.type == "cuda"}
    if processes:
        options.update(persistent_workers=True, prefetch_factor=PREFETCH_CHUNKS,
                       multiprocessing_context=multiprocessing.get_context("fork"),
                       timeout=CHUNK_TIMEOUT_SECONDS, worker_init_fn=_worker_streams)
    return options


def _worker_streams(_worker_id: int) -> None:
    """Make a forked worker forget what belongs to its parent. Its stdout / stderr point at the
    process's real streams: the Python objects it inherited may be a log capture (pytest's,
    Prefect's) that is closed while the persistent worker lives on, and a write to it would
    kill the worker. The parent's thread-exit hooks are dropped: a process that ran a Prefect
    flow has registered its services' drain there (`threading._register_atexit`), and a worker
    that ran them on its way out would fail there and exit with code 1."""
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    threading._threading_atexits.clear()  # type: ignore[attr-defined]


@dataclass
class Loaded:
    """What a load function returns for one item: its tensor, and, on a pixel-cache miss, the
    uint8 pixels to store (`fresh`; `pixels` itself when the two are the same)."""

    pixels: Tensor
    fresh: Tensor | None = None
    fresh_is_pixels: bool = False


class LoadFunction(Protocol):
    """Runs in the workers: one item -> its tensor. `key` identifies it for sharing a loader."""

    def __call__(self, item: Any) -> Loaded: ...

    def key(self) -> Hashable: ...


@dataclass
class LoadedChunk:
    """Loaded items of a chunk: positions (in the pass), their pixels (stacked when they have
    one shape, else a list), failures and fresh rows."""

    positions: list[int]
    pixels: Tensor | list[Tensor] | None
    failures: list[tuple[int, str]]
    fresh: list[tuple[int, Tensor | None]]

    def rows(self) -> list[Tensor]:
        return [] if self.pixels is None else list(self.pixels)

    def pin_memory(self) -> LoadedChunk:
        """Called by the DataLoader's pinning thread (CUDA only)."""
        if isinstance(self.pixels, Tensor):
            self.pixels = self.pixels.pin_memory()
        return self


@dataclass
class ImageBatch:
    """One batch of a pass: indices of the items that loaded, their stacked pixels (a list when
    their shapes differ), failures `(index, "Type: message")`, and `fresh` (index, uint8 CPU
    pixels) for the pixel cache."""

    indices: list[int]
    pixels: Tensor | list[Tensor] | None
    failures: list[tuple[int, str]]
    fresh: list[tuple[int, Tensor]] = field(default_factory=list)

    @property
    def stacked(self) -> Tensor | None:
        """The pixels as one tensor (every stage view makes them one shape)."""
        if isinstance(self.pixels, list):
            raise TypeError("this batch's images have different shapes")
        return self.pixels


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_chunk(load: LoadFunction, chunk: tuple[list[int], list[Any]]) -> LoadedChunk:
    """Load every item of a chunk, catching each item's error (runs in a worker)."""
    positions, items = chunk
    loaded, kept, failures = [], [], []
    for position, item in zip(positions, items):
        try:
            loaded.append(load(item))
            kept.append(position)
        except Exception as error:
            failures.append((position, describe_error(error)))
    pixels: Tensor | list[Tensor] | None = None
    if loaded:
        tensors = [result.pixels for result in loaded]
        same_shape = all(tensor.shape == tensors[0].shape for tensor in tensors)
        # default_collate stacks straight into shared memory inside a worker (no extra copy
        # when the chunk is sent to the main process).
        pixels = default_collate(tensors) if same_shape else tensors
    fresh = [(position, None if result.fresh_is_pixels else result.fresh)
             for position, result in zip(kept, loaded)
             if result.fresh is not None or result.fresh_is_pixels]
    return LoadedChunk(kept, pixels, failures, fresh)


class _ChunkDataset(Dataset[LoadedChunk]):
    """A map-style dataset whose "indices" are chunks of requests."""

    def __init__(self, load: LoadFunction) -> None:
        self.load = load

    def __getitem__(self, chunk: tuple[list[int], list[Any]]) -> LoadedChunk:  # type: ignore[override]
        return load_chunk(self.load, chunk)

    def __len__(self) -> int:
        raise TypeError("a request-driven dataset has no length")


class _Requests(Sampler[tuple[list[int], list[Any]]]):
    """The sampler: the current pass's chunks, refilled by the loader before each pass."""

    def __init__(self) -> None:
        self.chunks: list[tuple[list[int], list[Any]]] = []

    def __iter__(self) -> Iterator[tuple[list[int], list[Any]]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def _chunks(items: Sequence[Any], batch_size: int, parts: int) -> list[tuple[list[int], list[Any]]]:
    """The pass as chunks of (positions, items), one worker's task each: whole batches when
    there are at least two per worker, so no batch is joined from parts in the consuming
    process (that copy took a tenth of a 2-core machine: bench/loader_speed.py); in a shorter
    pass each batch is split into `parts` chunks so that every worker has a share."""
    chunks = []
    if len(items) >= batch_size * parts * 2:
        parts = 1
    for start in range(0, len(items), batch_size):
        stop = min(start + batch_size, len(items))
        size = -(-(stop - start) // parts)
        chunks += [(list(range(low, min(low + size, stop))), list(items[low:min(low + size, stop)]))
                   for low in range(start, stop, size)]
    return chunks


Chunk = tuple[list[int], list[Any]]


class ImageLoader:
    """Batches of items loaded on `workers` persistent processes (threads where processes
    cannot start); `device` is where batches are delivered (pinned copies to CUDA)."""

    def __init__(self, load: LoadFunction, workers: int, device: torch.device | None = None) -> None:
        self.load = load
        self.workers = max(1, workers)
        self.device = device if device is not None else torch.device("cpu")
        self.processes = worker_processes_allowed()
        self._loader: DataLoader[LoadedChunk] | None = None
        self._requests = _Requests()
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pass = 0
        self._thread: int | None = None
        _ALL_LOADERS.add(self)

    def _data_loader(self) -> DataLoader[LoadedChunk]:
        if self._loader is None:
            self._loader = DataLoader(_ChunkDataset(self.load), batch_size=None,
                                      sampler=self._requests, collate_fn=_identity,
                                      **dataloader_options(self.workers, self.device))
        return self._loader

    def close(self) -> None:
        """Stop the worker processes (or threads)."""
        self._discard_workers()
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None

    def _discard_workers(self) -> None:
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None) if loader is not None else None
        if iterator is not None:
            iterator._shutdown_workers()

    def _forget_after_fork(self) -> None:
        """In a forked child: the workers and threads belong to the parent; drop them untouched
        (the DataLoader's shutdown would try to join another process's children). torch's
        record of the parent's worker pids is inherited too, keyed by the iterator's id: an
        iterator of the child can get that id and then fails "_set_worker_pids should be called
        only once", so the record is dropped as well."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown = True
            if getattr(iterator, "_worker_pids_set", False):
                signal_handling._remove_worker_pids(id(iterator))
                iterator._worker_pids_set = False
        self._loader, self._threads, self._thread = None, None, None
        self._lock = threading.Lock()

    def busy_elsewhere(self) -> bool:
        """A pass is under way in another thread (a loader serves one thread at a time)."""
        return self._thread is not None and self._thread != threading.get_ident()

    def batches(self, items: Sequence[Any], batch_size: int) -> Iterator[ImageBatch]:
        """Yield the batches of `items` in order. A new pass on this loader abandons an
        unfinished one (a consumer that stopped early)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with self._lock:
            if self.busy_elsewhere():
                raise RuntimeError("this image loader is in use by another thread")
            self._pass += 1
            self._thread = threading.get_ident()
            my_pass = self._pass
        try:
            chunks = _chunks(items, batch_size, self.workers)
            stream = self._stream(chunks, my_pass)
            for start in range(0, len(items), batch_size):
                expected = min(batch_size, len(items) - start)
                received: list[LoadedChunk] = []
                while sum(len(c.positions) + len(c.failures) for c in received) < expected:
                    chunk = next(stream, None)
                    if chunk is None:
                        raise RuntimeError("a newer pass started on this image loader, so this "
                                           "unfinished one was abandoned")
                    received.append(chunk)
                yield self._batch(received)
        finally:
            with self._lock:
                if self._pass == my_pass:
                    self._thread = None

    def _stream(self, chunks: list[Chunk], my_pass: int) -> Iterator[LoadedChunk]:
        """Loaded chunks in order. When a worker dies, the chunks in flight are retried one
        item at a time, each alone in the loader, so the item that kills a worker again is
        known and fails on its own."""
        if not self.processes:
            yield from self._thread_stream(chunks)
            return
        pending = deque(chunks)
        suspects = 0  # leading pending chunks to run one at a time
        while pending:
            requests = [pending[0]] if suspects else list(pending)
            self._requests.chunks = requests
            iterator = iter(self._data_loader())
            try:
                for _ in requests:
                    if my_pass != self._pass:
                        return
                    loaded = next(iterator)
                    pending.popleft()
                    suspects = max(0, suspects - 1)
                    yield loaded
            except RuntimeError as error:
                if not any(text in str(error) for text in _WORKER_DIED):
                    raise
                logger.warning("image loader: a worker process died (%s); starting new ones", error)
                self._discard_workers()
                if suspects:
                    positions, _ = pending.popleft()
                    suspects -= 1
                    yield LoadedChunk([], None, [(position, f"WorkerDied: the loader process "
                                                 f"died on this image ({error})")
                                                for position in positions], [])
                else:
                    head = [pending.popleft()
                            for _ in range(min(len(pending), self.workers * PREFETCH_CHUNKS))]
                    singles = [([position], [item]) for positions, items in head
                               for position, item in zip(positions, items)]
                    pending.extendleft(reversed(singles))
                    suspects = len(singles)

    def _thread_stream(self, chunks: list[Chunk]) -> Iterator[LoadedChunk]:
        """Ordered chunks from a thread pool with the same look-ahead as the processes."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.workers,
                                               thread_name_prefix="image-load")
        in_flight: deque[Future[LoadedChunk]] = deque()
        for chunk in chunks:
            in_flight.append(self._threads.submit(load_chunk, self.load, chunk))
            if len(in_flight) >= self.workers * PREFETCH_CHUNKS:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    def _batch(self, chunks: list[LoadedChunk]) -> ImageBatch:
        """Join a batch's chunks; pixels go to the loader's device, fresh rows stay on the CPU."""
        indices = [position for chunk in chunks for position in chunk.positions]
        failures = [failure for chunk in chunks for failure in chunk.failures]
        fresh: list[tuple[int, Tensor]] = []
        for chunk in chunks:
            rows = dict(zip(chunk.positions, chunk.rows()))
            fresh += [(position, tensor if tensor is not None else rows[position])
                      for position, tensor in chunk.fresh]
        parts = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
        if not parts:
            return ImageBatch(indices, None, failures, fresh)
        if any(isinstance(part, list) for part in parts):
            return ImageBatch(indices, [row for chunk in chunks for row in chunk.rows()],
                              failures, fresh)
        tensors = [part.to(self.device, non_blocking=True) if self.device.type == "cuda" else part
                   for part in parts if isinstance(part, Tensor)]
        pixels = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        return ImageBatch(indices, pixels, failures, fresh)


def _identity(chunk: LoadedChunk) -> LoadedChunk:
    return chunk


_SHARED: OrderedDict[tuple[Hashable, int, str], ImageLoader] = OrderedDict()
_SHARED_LOCK = threading.Lock()


def _forget_loaders_in_child() -> None:
    global _SHARED_LOCK
    for loader in list(_ALL_LOADERS):
        loader._forget_after_fork()
    _SHARED.clear()
    _SHARED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_loaders_in_child)


def shared_loader(load: LoadFunction, workers: int, device: torch.device | None = None) -> ImageLoader:
    """The process-wide loader for this load function (workers started once, reused by every
    shard and stage that loads the same way); the least recently used idle one is closed when
    more than a few exist."""
    key = (load.key(), max(1, workers), str(device or "cpu"))
    with _SHARED_LOCK:
        loader = _SHARED.get(key)
        if loader is None or loader.busy_elsewhere():
            if loader is not None:  # another thread holds it: this one gets its own for good
                key = (*key[:2], f"{key[2]}#{threading.get_ident()}")
            loader = _SHARED.get(key) or ImageLoader(load, workers, device)
            _SHARED[key] = loader
        _SHARED.move_to_end(key)
        idle = [k for k, v in _SHARED.items() if v._thread is None and v is not loader]
        while len(_SHARED) > _MAX_SHARED_LOADERS and idle:
            _SHARED.pop(idle.pop(0)).close()
    return loader


@atexit.register
def close_shared_loaders() -> None:
    """Stop every shared loader's workers while the interpreter is still whole."""
    with _SHARED_LOCK:
        loaders = list(_SHARED.values())
        _SHARED.clear()
    for loader in loaders:
        loader.close()


def failure_reason(detail: str) -> str:
    """The reject reason of a load failure's detail: the file is gone, its bytes changed since
    ingest, it is no regular file (`core.files`' reasons), or it does not load."""
    if detail.startswith(f"{FileProblem.__name__}: "):
        return detail.split(": ", 2)[1]
    if detail.startswith("FileNotFoundError"):
        return "missing_image"
    if detail.startswith(ImageChangedError.__name__):
        return "image_changed"
    return "image_load_failed"


@dataclass(frozen=True)
class PreprocessLoad:
    """Decode a file with `load_rgb` and apply a model's own preprocessing (a PIL transform).
    The file is read as `read_checked` reads it: a regular file only."""

    preprocess: Callable[[Any], Tensor]

    def __call__(self, path: str) -> Loaded:
        return Loaded(self.preprocess(load_rgb(io.BytesIO(read_checked(path, None)))))

    def key(self) -> Hashable:
        return ("preprocess", self.preprocess)


@dataclass(frozen=True)
class PixelRequest:
    """One image to load from the pixel cache (or its file), and the view's argument for it."""

    path: str
    sha256: str
    view_arg: Any = None


PixelView = Callable[[Tensor, Any], Tensor]
"""(uint8 cached pixels, the request's view_arg) -> what the consumer needs, in the workers."""


@dataclass(frozen=True, eq=False)
class CachedPixelLoad:
    """A request's cached pixels, or on a miss its file's (checked, then offered to the cache),
    passed through `view` when one is given."""

    store: PixelStore
    view: PixelView | None = None

    def __call__(self, request: PixelRequest) -> Loaded:
        pixels = self.store.read(request.sha256)
        miss = pixels is None
        if pixels is None:
            pixels = load_pixels(request.path, request.sha256, self.store.transform)
        keep = miss and self.store.enabled
        if self.view is None:
            return Loaded(pixels, fresh_is_pixels=keep)
        return Loaded(self.view(pixels, request.view_arg), fresh=pixels if keep else None)

    def key(self) -> Hashable:
        return ("pixels", str(self.store.root), self.store.key, self.store.max_bytes, self.view)


@dataclass(frozen=True)
class CheckedBytes:
    """A file's bytes (checked against the request's sha256) as a uint8 tensor: what a
    device-side JPEG decoder takes."""

    def __call__(self, request: PixelRequest) -> Loaded:
        return Loaded(torch.frombuffer(bytearray(read_checked(request.path, request.sha256)),
                                       dtype=torch.uint8))

    def key(self) -> Hashable:
        return ("bytes",)


FILL_BATCH = 64


@dataclass(frozen=True)
class LoaderSettings:
    """How a job loads cached images: worker processes, the pixel cache, the JPEG decoder."""

    workers: int
    cache: PixelCache
    decoder: Decoder = "pil"

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "cache": self.cache.to_dict(), "decoder": self.decoder}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoaderSettings:
        return cls(int(values["workers"]), PixelCache.from_dict(values["cache"]), values["decoder"])


def pixel_batches(requests: Sequence[PixelRequest], batch_size: int, store: PixelStore,
                  workers: int, device: torch.device | None = None,
                  view: PixelView | None = None) -> Iterator[ImageBatch]:
    """Batches of the requests' pixels (through `view`), read from the cache where it has them
    and decoded where it does not; decoded images are written to the cache as the pass goes.
    With a `torchvision` decoder and a CUDA device, misses are first decoded on the GPU."""
    if store.enabled and store.transform.decoder == "torchvision" and device is not None \
            and device.type == "cuda":
        fill_cache(requests, store, workers, decode_device=device)
    writer = PixelWriter(store)
    try:
        for batch in shared_loader(CachedPixelLoad(store, view), workers, device).batches(
                requests, batch_size):
            for index, pixels in batch.fresh:
                writer.add(requests[index].sha256, pixels)
            yield batch
    finally:
        writer.flush()


def fill_cache(requests: Sequence[PixelRequest], store: PixelStore, workers: int,
               decode_device: torch.device | None = None) -> dict[int, str]:
    """Make sure the cache holds every request's pixels; returns `{index: failure}` for the
    ones that do not load. `decode_device` decodes the JPEGs in this process on that device
    (batched nvJPEG on a GPU) while the workers only read and check bytes; without it the
    workers decode."""
    missing = set(store.missing([request.sha256 for request in requests]))
    todo = [index for index, request in enumerate(requests) if request.sha256 in missing]
    if not todo:
        return {}
    failures: dict[int, str] = {}
    writer = PixelWriter(store)
    try:
        if decode_device is None:
            loader = shared_loader(CachedPixelLoad(store), workers)
            for batch in loader.batches([requests[i] for i in todo], FILL_BATCH):
                failures.update((todo[index], error) for index, error in batch.failures)
                for index, pixels in batch.fresh:
                    writer.add(requests[todo[index]].sha256, pixels)
        else:
            for batch in shared_loader(CheckedBytes(), workers).batches(
                    [requests[i] for i in todo], FILL_BATCH):
                failures.update((todo[index], error) for index, error in batch.failures)
                datas = batch.pixels if isinstance(batch.pixels, list) else list(batch.pixels or [])
                for index, pixels in _decode_on(decode_device, store.transform, batch.indices, datas):
                    if isinstance(pixels, str):
                        failures[todo[index]] = pixels
                    else:
                        writer.add(requests[todo[index]].sha256, pixels)
    finally:
        writer.flush()
    return failures


def _decode_on(device: torch.device, transform: PixelTransform, indices: list[int],
               datas: list[Tensor]) -> Iterator[tuple[int, Tensor | str]]:
    """(index, uint8 CPU pixels or failure) of encoded images: the JPEGs decoded on `device` in
    one batch (one by one when the batch fails, to find the bad files, with `load_rgb` as the
    last resort and the source of the reason), anything else by `load_rgb`."""
    jpegs = [k for k, data in enumerate(datas) if is_jpeg(data)]
    images: dict[int, Tensor] = {}
    batch_failed = False
    try:
        images.update(zip(jpegs, decode_jpegs([datas[k] for k in jpegs], device)))
    except Exception:
        batch_failed = True
    for k, data in enumerate(datas):
        if k in images:
            continue
        if batch_failed and k in jpegs:
            with contextlib.suppress(Exception):
                images[k] = decode_jpegs([data], device)[0]
                continue
        try:
            images[k] = decode_rgb(data.numpy().tobytes())
        except Exception as error:
            yield indices[k], describe_error(error)
    for k, image in images.items():
        yield indices[k], transform.apply(image).cpu()
