"""The decode-once pixel cache: content-addressed, checked on every read, atomic, bounded."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectflow.core import codeversion, pixel_cache
from affectflow.core.hashing import hash_file
from affectflow.core.loading import PixelRequest, fill_cache, pixel_batches
from affectflow.core.loading import _worker_streams as forget_parent
from affectflow.core.pixel_cache import SHARD_SUFFIX, PixelStore, list_cache, prune, transform_key
from affectflow.core.pixels import PixelTransform, load_pixels
from affectflow.pipelines.cli import main

SQUARE = PixelTransform("square", 24)


def write_images(folder: Path, count: int, size: tuple[int, int] = (40, 30)) -> list[PixelRequest]:
    rng = np.random.default_rng(len(str(folder)))
    folder.mkdir(parents=True, exist_ok=True)
    requests = []
    for index in range(count):
        path = folder / f"{index:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        requests.append(PixelRequest(str(path), hash_file(path)))
    return requests


def shards(store: PixelStore) -> list[Path]:
    return sorted(store.folder.glob(f"*{SHARD_SUFFIX}"))


def decoded(request: PixelRequest, transform: PixelTransform = SQUARE) -> torch.Tensor:
    return load_pixels(request.path, request.sha256, transform)


@pytest.fixture
def requests(tmp_path: Path) -> list[PixelRequest]:
    return write_images(tmp_path / "images", 6)


def test_entries_round_trip_and_are_shared_by_content_across_stores(
        requests: list[PixelRequest], tmp_path: Path) -> None:
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    assert store.missing([r.sha256 for r in requests]) == [r.sha256 for r in requests]
    assert store.write([(r.sha256, decoded(r)) for r in requests[:4]])
    other = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)  # another stage or run
    assert other.missing([r.sha256 for r in requests]) == [r.sha256 for r in requests[4:]]
    for request in requests[:4]:
        assert torch.equal(other.read(request.sha256), decoded(request))
    bigger = PixelStore(tmp_path / "cache", PixelTransform("square", 32), max_bytes=10**8)
    assert bigger.key != store.key and bigger.read(requests[0].sha256) is None


def test_the_key_follows_the_code_that_computes_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    before = transform_key(SQUARE)
    original = codeversion.read_source

    def edited(module: str) -> str:
        return original(module) + ("\n# edited\n" if module == "affectflow.core.pixels" else "")

    with monkeypatch.context() as patch:
        patch.setattr(codeversion, "read_source", edited)
        assert transform_key(SQUARE) != before
    assert transform_key(SQUARE) == before


def test_a_damaged_entry_is_never_served_and_is_rebuilt(requests: list[PixelRequest], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    list(pixel_batches(requests, 4, store, workers=2))
    (shard,) = shards(store)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flipped bits in the last entry's pixels (entries are sorted by hash)
    shard.write_bytes(bytes(data))
    victim = max(requests, key=lambda request: request.sha256)
    reader = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    with caplog.at_level(logging.WARNING):
        assert reader.read(victim.sha256) is None
    assert "damaged shard" in caplog.text and not shard.exists()
    batches = list(pixel_batches(requests, 4, reader, workers=2))
    assert torch.equal(torch.cat([b.pixels for b in batches]),
                       torch.stack([decoded(r) for r in requests]))
    assert sum(len(b.fresh) for b in batches) == len(requests)  # decoded again and re-cached
    assert reader.missing([r.sha256 for r in requests]) == []


@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_a_shard_with_a_broken_structure_is_deleted_when_opened(
        damage: str, requests: list[PixelRequest], tmp_path: Path) -> None:
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    store.write([(r.sha256, decoded(r)) for r in requests])
    (shard,) = shards(store)
    data = shard.read_bytes()
    shard.write_bytes({"truncate": data[:-100], "header": data[:20] + b"x" + data[21:],
                       "empty": b""}[damage])
    fresh = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    assert fresh.missing([requests[0].sha256]) == [requests[0].sha256]
    assert not shard.exists()


def test_a_reader_keeps_an_opened_shard_that_is_pruned_and_misses_one_gone_before(
        requests: list[PixelRequest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    store.write([(r.sha256, decoded(r)) for r in requests[:3]])
    store.write([(r.sha256, decoded(r)) for r in requests[3:]])
    reader = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    assert reader.read(requests[0].sha256) is not None  # opens (and indexes) both shards
    prune(tmp_path / "cache", 0)
    assert not shards(store)
    assert torch.equal(reader.read(requests[4].sha256), decoded(requests[4]))

    store.write([(r.sha256, decoded(r)) for r in requests])
    opened = pixel_cache._read_shard

    def pruned_between_listing_and_opening(path: Path, key: str) -> object:
        path.unlink()
        return opened(path, key)

    monkeypatch.setattr(pixel_cache, "_read_shard", pruned_between_listing_and_opening)
    latecomer = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    assert latecomer.read(requests[4].sha256) is None


def test_the_bound_evicts_least_recently_used_shards_but_not_this_passes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    requests = write_images(tmp_path / "images", 9)
    old = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    written: list[Path] = []
    for start in (0, 3):  # `first` holds requests 0-2, `second` requests 3-5
        old.write([(r.sha256, decoded(r)) for r in requests[start:start + 3]])
        written += [shard for shard in shards(old) if shard not in written]
    first, second = written
    for age, shard in ((3600, first), (1800, second)):  # first is the least recently used
        os.utime(shard, (time.time() - age, time.time() - age))
    small = PixelStore(tmp_path / "cache", SQUARE, max_bytes=2 * first.stat().st_size + 100)
    assert small.write([(r.sha256, decoded(r)) for r in requests[6:]])
    remaining = shards(small)
    assert first not in remaining and second in remaining and len(remaining) == 2
    # A shard this store has read from counts as used now: the other one goes instead.
    os.utime(second, (time.time() - 3600, time.time() - 3600))
    reader = PixelStore(tmp_path / "cache", SQUARE, max_bytes=2 * second.stat().st_size + 100)
    assert reader.read(requests[3].sha256) is not None  # from `second`
    assert reader.write([(r.sha256, decoded(r)) for r in requests[:3]])
    assert second in shards(reader) and len(shards(reader)) == 2
    tiny = PixelStore(tmp_path / "cache", PixelTransform("square", 16), max_bytes=1)
    with caplog.at_level(logging.WARNING):
        tiny.write([(requests[0].sha256, decoded(requests[0], tiny.transform))])
        assert "is full" in caplog.text
        assert not tiny.write([(requests[1].sha256, decoded(requests[1], tiny.transform))])
    assert len(shards(tiny)) <= 1


def test_a_disabled_cache_decodes_everything_and_writes_nothing(
        requests: list[PixelRequest], tmp_path: Path) -> None:
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=0)
    batches = list(pixel_batches(requests, 4, store, workers=2))
    assert sum(len(b.indices) for b in batches) == len(requests)
    assert not any(b.fresh for b in batches) and not (tmp_path / "cache").exists()


def _fill(root: str, requests: list[PixelRequest]) -> None:
    forget_parent(0)  # a fork of a test process that ran a Prefect flow: drop its exit hooks
    fill_cache(requests, PixelStore(Path(root), SQUARE, max_bytes=10**8), workers=1)


def test_two_processes_filling_the_same_images_at_once_leave_valid_entries(
        tmp_path: Path) -> None:
    requests = write_images(tmp_path / "images", 24)
    context = multiprocessing.get_context("fork")
    fillers = [context.Process(target=_fill, args=(str(tmp_path / "cache"), requests))
               for _ in range(2)]
    for filler in fillers:
        filler.start()
    for filler in fillers:
        filler.join(60)
        assert filler.exitcode == 0
    store = PixelStore(tmp_path / "cache", SQUARE, max_bytes=10**8)
    assert store.missing([r.sha256 for r in requests]) == []
    for request in requests:
        assert torch.equal(store.read(request.sha256), decoded(request))
    assert not list(store.folder.glob(".*.tmp"))  # every write was renamed into place


def test_cache_ls_and_prune_from_the_command_line(requests: list[PixelRequest], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "artifacts"
    store = PixelStore(root / "cache" / "pixels", SQUARE, max_bytes=10**8)
    store.write([(r.sha256, decoded(r)) for r in requests])
    stale = store.folder / ".leftover.pix.tmp"
    stale.write_bytes(b"killed writer")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert main(["cache", "ls", "--artifact-root", str(root)]) == 0
    listing = capsys.readouterr().out
    assert store.key in listing and "square 24 px" in listing and " 6 " in listing
    assert list_cache(root / "cache" / "pixels")[0].images == len(requests)
    assert main(["cache", "prune", "--artifact-root", str(root)]) == 2
    assert "--max-gb" in capsys.readouterr().err
    assert main(["cache", "prune", "--max-gb", "0", "--artifact-root", str(root)]) == 0
    assert "pruned 1 shard" in capsys.readouterr().out
    assert not (root / "cache" / "pixels").exists() or not any((root / "cache" / "pixels").iterdir())
    assert main(["cache", "ls", "--artifact-root", str(root)]) == 0
    assert "empty" in capsys.readouterr().out
