"""DataLoader-based image loading: order, failures as reasons, persistent and replaced workers,
the thread fallback, and the device-side JPEG decoder checked on the CPU."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data._utils import signal_handling
from torchvision.transforms.v2 import functional as TF

from affectflow.core.hashing import hash_file
from affectflow.core.images import load_rgb
from affectflow.core.loading import (
    ImageLoader,
    Loaded,
    PixelRequest,
    failure_reason,
    fill_cache,
    pixel_batches,
    shared_loader,
)
from affectflow.core.loading import _chunks as chunks_of
from affectflow.core.loading import _worker_streams as forget_parent
from affectflow.core.pixel_cache import PixelStore
from affectflow.core.pixels import PixelTransform, load_pixels
from affectflow.stages.batching import prefetched_image_batches
from tests.core.test_pixel_cache import write_images

SQUARE = PixelTransform("square", 24)


@dataclass(frozen=True)
class Pid:
    """Loads nothing: returns the worker's process id (and dies on `kill`)."""

    kill: str = ""

    def __call__(self, item: str) -> Loaded:
        if item == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if item == "raise":
            raise OSError("unreadable on purpose")
        return Loaded(torch.tensor([os.getpid()]))

    def key(self) -> Hashable:
        return ("pid", self.kill)


def test_batches_come_in_order_with_failures_as_reasons(tmp_path: Path) -> None:
    requests = write_images(tmp_path / "images", 10)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a picture")
    changed = requests[3]
    requests += [PixelRequest(str(broken), hash_file(broken)),
                 PixelRequest(str(tmp_path / "gone.jpg"), "0" * 64),
                 PixelRequest(changed.path, "1" * 64),
                 PixelRequest(changed.path, "not a hash")]
    fifo = tmp_path / "fifo.jpg"  # a path swapped for a FIFO since ingest must not block
    os.mkfifo(fifo)
    requests.append(PixelRequest(str(fifo), "2" * 64))
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    batches = list(pixel_batches(requests, 4, store, workers=2))
    assert [len(b.indices) + len(b.failures) for b in batches] == [4, 4, 4, 3]
    indices = [i for b in batches for i in b.indices]
    assert indices == list(range(10))
    pixels = torch.cat([b.pixels for b in batches if b.pixels is not None])
    assert torch.equal(pixels, torch.stack([load_pixels(r.path, r.sha256, SQUARE)
                                            for r in requests[:10]]))
    failures = dict(f for b in batches for f in b.failures)
    assert [failure_reason(failures[i]) for i in (10, 11, 12, 13, 14)] == [
        "image_load_failed", "missing_image", "image_changed", "image_changed",
        "not_a_regular_file"]
    assert "not a recognised image format" in failures[10]


def test_long_passes_load_whole_batches_and_short_ones_share_each_batch() -> None:
    """Two workers: with two batches or more each, a worker loads whole batches (nothing to join
    in the consumer); a shorter pass splits each batch so that both work on it."""
    long = chunks_of(list("abcdefghij"), batch_size=2, parts=2)
    assert [positions for positions, _ in long] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    short = chunks_of(list("abcdef"), batch_size=4, parts=2)
    assert [positions for positions, _ in short] == [[0, 1], [2, 3], [4], [5]]
    assert [items for _, items in short] == [["a", "b"], ["c", "d"], ["e"], ["f"]]


def test_workers_persist_across_passes_and_a_new_pass_abandons_an_old_one() -> None:
    loader = ImageLoader(Pid(), workers=2)
    try:
        first = {int(p) for b in loader.batches(["a"] * 8, 4) for p in b.pixels}
        assert len(first) == 2 and os.getpid() not in first
        unfinished = loader.batches(["a"] * 40, 4)
        next(unfinished)
        second = {int(p) for b in loader.batches(["a"] * 8, 4) for p in b.pixels}
        assert second == first
        with pytest.raises(RuntimeError, match="abandoned"):
            next(unfinished)
    finally:
        loader.close()


def test_the_process_wide_loader_is_shared_by_equal_load_functions() -> None:
    assert shared_loader(Pid(), 2) is shared_loader(Pid(), 2)
    assert shared_loader(Pid(), 2) is not shared_loader(Pid("x"), 2)


def test_an_item_that_kills_its_worker_fails_alone_and_the_rest_load() -> None:
    loader = ImageLoader(Pid(kill="poison"), workers=2)
    try:
        items = ["a"] * 5 + ["poison"] + ["a"] * 6 + ["raise"]
        batches = list(loader.batches(items, 4))
        failures = dict(f for b in batches for f in b.failures)
        assert set(failures) == {5, 12}
        assert failures[5].startswith("WorkerDied") and failures[12].startswith("OSError")
        assert sorted(i for b in batches for i in b.indices) == [i for i in range(13) if i not in (5, 12)]
    finally:
        loader.close()


def _daemon_pass(results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    loader = ImageLoader(Pid(), workers=2)
    results.put((loader.processes, sorted({int(p) for b in loader.batches(["a"] * 6, 3)
                                           for p in b.pixels}), os.getpid()))


def test_inside_a_daemonic_process_the_same_chunks_load_on_threads() -> None:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    daemon = context.Process(target=_daemon_pass, args=(results,), daemon=True)
    daemon.start()
    processes, pids, daemon_pid = results.get(timeout=60)
    daemon.join(30)
    assert processes is False and pids == [daemon_pid]


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x24 landscape JPEG whose EXIF says: rotate 90 degrees for display."""
    image = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (24, 1))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_the_device_jpeg_decoder_on_the_cpu_matches_the_workers_and_load_rgb(tmp_path: Path) -> None:
    requests = write_images(tmp_path / "images", 5, size=(64, 48))
    rotated = exif_rotated_jpeg(tmp_path / "rotated.jpg")
    png = tmp_path / "image.png"
    Image.open(requests[0].path).save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(requests[1].path).read_bytes()[:200])
    requests += [PixelRequest(str(path), hash_file(path)) for path in (rotated, png, broken)]
    transform = PixelTransform("short_side", 20, "bilinear", decoder="torchvision")
    on_device = PixelStore(tmp_path / "device", transform, max_bytes=10**8)
    in_workers = PixelStore(tmp_path / "workers", transform, max_bytes=10**8)
    failures = fill_cache(requests, on_device, workers=2, decode_device=torch.device("cpu"))
    assert list(failures) == [7] and failure_reason(failures[7]) == "image_load_failed"
    assert fill_cache(requests, in_workers, workers=2).keys() == {7}
    pil = PixelTransform("short_side", 20, "bilinear")
    for request in requests[:7]:
        ours = on_device.read(request.sha256)
        assert torch.equal(ours, in_workers.read(request.sha256))
        reference = pil.apply(torch.from_numpy(np.array(load_rgb(request.path))).permute(2, 0, 1))
        assert ours.shape == reference.shape
        assert (ours.int() - reference.int()).abs().float().mean() < 1.5
    assert on_device.read(requests[5].sha256).shape[1:] == (33, 20)  # EXIF applied: portrait


def test_a_kept_aspect_transform_bounds_elongated_images(tmp_path: Path) -> None:
    path = tmp_path / "panorama.png"
    Image.new("RGB", (400, 20), (10, 200, 30)).save(path)
    pixels = load_pixels(path, None, PixelTransform("short_side", 10))
    assert pixels.shape == (3, 10, 40)
    assert load_pixels(path, None, PixelTransform("square", 10)).shape == (3, 10, 10)


def _child_pass(results: multiprocessing.Queue, parent_iterator: int) -> None:  # type: ignore[type-arg]
    forget_parent(0)  # a fork of a test process that ran a Prefect flow: drop its exit hooks
    # torch keys its record of worker pids by the iterator's id; a child iterator that gets the
    # parent's id must be able to register (it failed now and then before the record was dropped)
    signal_handling._set_worker_pids(parent_iterator, (os.getpid(),))
    signal_handling._remove_worker_pids(parent_iterator)
    pids = {int(p) for b in shared_loader(Pid(), 2).batches(["a"] * 4, 2) for p in b.pixels}
    results.put(sorted(pids))


def test_a_forked_child_starts_its_own_workers_and_leaves_the_parents_alone() -> None:
    parent = {int(p) for b in shared_loader(Pid(), 2).batches(["a"] * 4, 2) for p in b.pixels}
    iterator = shared_loader(Pid(), 2)._data_loader()._iterator
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_pass, args=(results, id(iterator)))
    child.start()
    child_pids = results.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0 and not set(child_pids) & parent
    again = {int(p) for b in shared_loader(Pid(), 2).batches(["a"] * 4, 2) for p in b.pixels}
    assert again == parent


def test_model_preprocessing_loads_reject_what_is_no_regular_file(tmp_path: Path) -> None:
    requests = write_images(tmp_path / "images", 2)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    paths = [requests[0].path, str(fifo), str(tmp_path / "gone.jpg"), requests[1].path]
    batches = list(prefetched_image_batches(paths, 4, TF.pil_to_tensor, workers=2))
    assert [i for b in batches for i in b.indices] == [0, 3]
    assert torch.equal(batches[0].pixels[0], TF.pil_to_tensor(load_rgb(requests[0].path)))
    failures = dict(f for b in batches for f in b.failures)
    assert [failure_reason(failures[i]) for i in (1, 2)] == ["not_a_regular_file", "missing_image"]


def test_workers_leave_the_parents_thread_exit_hooks_alone() -> None:
    """A process that ran a Prefect flow has registered its services' drain as a thread-exit
    hook; a worker that inherited and ran it on its way out would exit with code 1."""
    import threading

    def parents_only() -> None:
        raise RuntimeError("a hook of the parent ran in a worker")
    threading._register_atexit(parents_only)  # type: ignore[attr-defined]
    hook = threading._threading_atexits[-1]  # type: ignore[attr-defined]
    try:
        loader = ImageLoader(Pid(), workers=2)
        try:
            assert len({int(p) for b in loader.batches(["a"] * 8, 4) for p in b.pixels}) == 2
        finally:
            loader.close()  # raised "worker exited unexpectedly with exit code 1" before
    finally:
        threading._threading_atexits.remove(hook)  # type: ignore[attr-defined]
