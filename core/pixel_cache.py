"""The decode-once pixel cache: uint8 images keyed by content (image sha256) and transform.

Layout under the cache root (`<artifact_root>/cache/pixels/`):

    <key>/transform.json      the transform and code version behind the key (for `cache ls`)
    <key>/<shard>.pix         shards of entries, each written once, atomically

`key` hashes the `PixelTransform` and the code version of `core.pixels` (its source and the
torch / torchvision / Pillow versions), so an edit or upgrade that could change the pixels
starts new entries instead of serving old ones. Entries are found by the image's sha256, not
its path: every stage, run and process that needs those pixels shares them.

A shard file is a fixed prefix (magic, header length, header CRC-32), a JSON header, a table of
entries (sha256, offset, size, height, width, CRC-32 of the pixels) and the pixel bytes. It is
written to a temporary name, fsynced and renamed, so readers see whole shards or none. Every
read checks the entry's CRC (and a shard's header and size when it is first opened): a damaged
shard is deleted and its images count as misses, which the loaders decode from their files and
write again, so a corrupt entry is rebuilt and never served. Concurrent readers are safe: a
shard is never modified, a reader keeps a shard it opened even if another process prunes it,
and a shard that vanished before it was opened is a miss.

The cache is bounded (`max_bytes` over the whole root): after writing a shard, the least
recently used shards (modification time; a process touches a shard when it first reads from it) are deleted
until the total fits, except shards used or written since this store was created; when even
that is not enough, the store stops writing for the rest of its life and says so once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from affectflow.core.atomic import atomic_path, write_json
from affectflow.core.codeversion import code_record
from affectflow.core.hashing import hash_value
from affectflow.core.pixels import PixelTransform

logger = logging.getLogger(__name__)

MAGIC = b"AFPIXEL1"
SHARD_SUFFIX = ".pix"
TRANSFORM_FILE = "transform.json"
PREFIX = struct.Struct("<8sII")  # magic, header length, CRC-32 of the header
META = struct.Struct("<QI")  # file size, length of the JSON part of the header
ENTRY = np.dtype([("sha256", "u1", (32,)), ("offset", "<u8"), ("nbytes", "<u8"), ("height", "<u4"),
                  ("width", "<u4"), ("crc32", "<u4")])
ALIGN = 64
# A shard is flushed once it holds this many bytes or entries.
SHARD_BYTES = 256 << 20
SHARD_ENTRIES = 4096
_STALE_TEMP_SECONDS = 3600


def _digest(sha256: str) -> bytes | None:
    """The 32 bytes of a hex SHA-256, or None for anything else (such a hash has no entry: its
    image is a miss, and the file check then reports that the bytes are not the recorded ones)."""
    if not isinstance(sha256, str) or len(sha256) != 64:
        return None
    try:
        return bytes.fromhex(sha256)
    except ValueError:
        return None


class CorruptShardError(ValueError):
    """A shard file whose structure or checksums do not hold."""


def transform_key(transform: PixelTransform) -> str:
    """The cache folder of a transform: its identity and the code that computes it."""
    return hash_value({"transform": transform.identity(),
                       "code": code_record(PixelTransform.__module__)["version"]})[:24]


@dataclass
class _Shard:
    """An opened shard: its entry table and the memory map of its file."""

    path: Path
    entries: np.ndarray
    data: mmap.mmap


def _read_shard(path: Path, key: str) -> _Shard:
    """Open and check a shard's structure (header checksum, key, sizes); raises on damage."""
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as error:  # an empty file cannot be mapped
            raise CorruptShardError(f"{path.name}: {error}") from None
    if len(data) < PREFIX.size + META.size:
        raise CorruptShardError(f"{path.name}: {len(data)} bytes, shorter than its prefix")
    magic, header_length, header_crc = PREFIX.unpack_from(data, 0)
    header = data[PREFIX.size:PREFIX.size + header_length]
    if magic != MAGIC or len(header) != header_length or zlib.crc32(header) != header_crc:
        raise CorruptShardError(f"{path.name}: bad magic or header checksum")
    size, meta_length = META.unpack_from(header, 0)
    meta = json.loads(header[META.size:META.size + meta_length])
    if meta.get("key") != key:
        raise CorruptShardError(f"{path.name}: written for key {meta.get('key')}, not {key}")
    if len(data) != size:
        raise CorruptShardError(f"{path.name}: {len(data)} bytes, the header says {size}")
    entries = np.frombuffer(header, dtype=ENTRY, count=meta["count"],
                            offset=META.size + meta_length).copy()
    if len(entries) and int((entries["offset"] + entries["nbytes"]).max()) > size:
        raise CorruptShardError(f"{path.name}: an entry points past the end of the file")
    return _Shard(path, entries, data)


def encode_shard(key: str, pixels: list[tuple[str, Tensor]]) -> bytes:
    """One shard file's bytes for (sha256, uint8 (3, H, W)) entries."""
    blobs = [np.ascontiguousarray(image.cpu().numpy()).tobytes() for _, image in pixels]
    meta = json.dumps({"key": key, "count": len(pixels)}).encode()
    entries = np.zeros(len(pixels), dtype=ENTRY)
    header_length = META.size + len(meta) + entries.nbytes
    offset = -(-(PREFIX.size + header_length) // ALIGN) * ALIGN
    for row, ((sha, image), blob) in enumerate(zip(pixels, blobs)):
        entries[row] = (np.frombuffer(bytes.fromhex(sha), np.uint8), offset, len(blob), image.shape[1], image.shape[2],
                        zlib.crc32(blob))
        offset += len(blob)
    header = META.pack(offset, len(meta)) + meta + entries.tobytes()
    body = bytearray(offset)
    body[:PREFIX.size] = PREFIX.pack(MAGIC, len(header), zlib.crc32(header))
    body[PREFIX.size:PREFIX.size + len(header)] = header
    for entry, blob in zip(entries, blobs):
        body[int(entry["offset"]):int(entry["offset"]) + len(blob)] = blob
    return bytes(body)


@dataclass
class ShardStats:
    """One shard on disk, for listing and pruning."""

    path: Path
    size: int
    used: float


def _shards_below(root: Path) -> list[ShardStats]:
    stats = []
    for folder in root.iterdir() if root.is_dir() else ():
        if not folder.is_dir():
            continue
        for path in folder.glob(f"*{SHARD_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            stats.append(ShardStats(path, stat.st_size, stat.st_mtime))
    return stats


def evict(root: Path, max_bytes: int, keep_since: float | None = None) -> tuple[int, int]:
    """Delete least recently used shards below `root` until they total <= `max_bytes`, sparing
    shards used at or after `keep_since`; returns (shards deleted, bytes left)."""
    shards = sorted(_shards_below(root), key=lambda shard: shard.used)
    total = sum(shard.size for shard in shards)
    deleted = 0
    for shard in shards:
        if total <= max_bytes:
            break
        if keep_since is not None and shard.used >= keep_since:
            continue
        shard.path.unlink(missing_ok=True)
        total -= shard.size
        deleted += 1
    return deleted, total


@dataclass
class PixelStore:
    """The entries of one transform: look up, read (checked) and write shards.

    Picklable and fork-safe: loader worker processes take a copy and open shards themselves.
    """

    root: Path
    transform: PixelTransform
    max_bytes: int
    key: str = ""
    created: float = field(default_factory=time.time)
    _shards: dict[str, _Shard] = field(default_factory=dict, repr=False)
    _index: dict[bytes, tuple[str, int]] = field(default_factory=dict, repr=False)
    _listed: int = field(default=-1, repr=False)
    _touched: set[str] = field(default_factory=set, repr=False)
    _full: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.key = self.key or transform_key(self.transform)

    @property
    def folder(self) -> Path:
        return self.root / self.key

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __getstate__(self) -> dict[str, Any]:
        """Workers re-open shards themselves (memory maps do not pickle)."""
        return {**self.__dict__, "_shards": {}, "_index": {}, "_listed": -1, "_touched": set()}

    # ------------------------------------------------------------------ lookup
    def refresh(self, force: bool = False) -> None:
        """Pick up shards other processes wrote (or deleted) since the last look: when the
        folder's modification time moved, or always with `force` (coarse file-system clocks)."""
        try:
            listed = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            listed = 0
        if listed == self._listed and not force:
            return
        self._listed = listed
        names = {path.name for path in self.folder.glob(f"*{SHARD_SUFFIX}")} if listed else set()
        for gone in set(self._shards) - names:
            self._forget(gone)
        for name in sorted(names - set(self._shards)):
            self._open(name)

    def _open(self, name: str) -> _Shard | None:
        path = self.folder / name
        try:
            shard = _read_shard(path, self.key)
        except FileNotFoundError:
            return None
        except (CorruptShardError, ValueError, KeyError, struct.error) as error:
            self._discard(name, f"{error}")
            return None
        self._shards[name] = shard
        for row, sha in enumerate(bytes(digest) for digest in shard.entries["sha256"]):
            self._index.setdefault(sha, (name, row))
        return shard

    def _forget(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            self._index = {sha: place for sha, place in self._index.items() if place[0] != name}

    def _discard(self, name: str, reason: str) -> None:
        """Delete a damaged shard: its images become misses and are written again."""
        logger.warning("pixel cache: deleting damaged shard %s (%s); its images will be decoded "
                       "from their files and cached again", self.folder / name, reason)
        self._forget(name)
        (self.folder / name).unlink(missing_ok=True)

    def contains(self, sha256: str) -> bool:
        digest = _digest(sha256)
        return digest is not None and digest in self._index

    def missing(self, sha256s: Iterable[str]) -> list[str]:
        """The hashes without an entry (after picking up other processes' shards)."""
        if not self.enabled:
            return list(sha256s)
        self.refresh(force=True)
        return [sha for sha in sha256s if not self.contains(sha)]

    def read(self, sha256: str) -> Tensor | None:
        """The entry's pixels, checked against their CRC; None when absent or damaged."""
        if not self.enabled:
            return None
        sha = _digest(sha256)
        if sha is None:
            return None
        if sha not in self._index:
            self.refresh()
            if sha not in self._index:
                return None
        name, row = self._index[sha]
        shard = self._shards[name]
        if name not in self._touched:  # most recently used (a read-only cache still serves)
            self._touched.add(name)
            with contextlib.suppress(OSError):
                os.utime(shard.path)
        entry = shard.entries[row]
        start, size = int(entry["offset"]), int(entry["nbytes"])
        height, width = int(entry["height"]), int(entry["width"])
        blob = np.frombuffer(shard.data, dtype=np.uint8, count=size, offset=start)
        if size != 3 * height * width or zlib.crc32(blob) != int(entry["crc32"]):
            self._discard(name, f"entry {sha256[:12]} fails its checksum")
            return None
        return torch.from_numpy(blob.copy()).view(3, height, width)

    # ------------------------------------------------------------------ writing
    def write(self, pixels: list[tuple[str, Tensor]]) -> bool:
        """Store (sha256, uint8 (3, H, W)) entries as one shard; False when the cache is
        disabled or full. Entries already present are skipped."""
        if not self.enabled or self._full:
            return False
        self.refresh()
        fresh: dict[str, Tensor] = {}
        for sha, image in pixels:
            if _digest(sha) is None:
                raise ValueError(f"pixel cache entries are filed under SHA-256 hex digests, "
                                 f"not {sha!r}")
            if not self.contains(sha):
                fresh.setdefault(sha, image)
        if not fresh:
            return True
        if not (self.folder / TRANSFORM_FILE).is_file():
            write_json(self.folder / TRANSFORM_FILE, {"transform": self.transform.identity(),
                                                      "describe": self.transform.describe()})
        entries = sorted(fresh.items())
        name = hash_value([self.key, [sha for sha, _ in entries]])[:24] + SHARD_SUFFIX
        with atomic_path(self.folder / name) as tmp:
            tmp.write_bytes(encode_shard(self.key, entries))
        self._open(name)
        _, total = evict(self.root, self.max_bytes, keep_since=self.created)
        if total > self.max_bytes:
            self._full = True
            logger.warning("pixel cache %s is full (%.2f GB in use by this and concurrent "
                           "stages, bound %.2f GB): further images are decoded from their files "
                           "each time; raise run.pixel_cache_gb to cache them", self.root,
                           total / 1e9, self.max_bytes / 1e9)
        return True


@dataclass
class PixelCache:
    """A cache root and its bound; one `PixelStore` per transform, kept for the process."""

    root: Path
    max_bytes: int
    _stores: dict[PixelTransform, PixelStore] = field(default_factory=dict, repr=False)

    def store(self, transform: PixelTransform) -> PixelStore:
        if transform not in self._stores:
            self._stores[transform] = PixelStore(self.root, transform, self.max_bytes)
        return self._stores[transform]

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "max_bytes": self.max_bytes}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PixelCache:
        return cls(Path(values["root"]), int(values["max_bytes"]))


@dataclass
class PixelWriter:
    """Buffers fresh entries of a pass and writes them as shards of about `SHARD_BYTES`."""

    store: PixelStore
    _pending: list[tuple[str, Tensor]] = field(default_factory=list)
    _bytes: int = 0

    def add(self, sha256: str, pixels: Tensor) -> None:
        if not self.store.enabled:
            return
        self._pending.append((sha256, pixels))
        self._bytes += pixels.numel()
        if self._bytes >= SHARD_BYTES or len(self._pending) >= SHARD_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.store.write(self._pending)
        self._pending, self._bytes = [], 0


@dataclass(frozen=True)
class CacheEntryInfo:
    """One transform's entries on disk, for `affectflow cache ls`."""

    key: str
    describe: str
    shards: int
    images: int
    size: int
    last_used: float | None


def list_cache(root: Path) -> list[CacheEntryInfo]:
    """Every transform folder under the cache root, largest first."""
    infos = []
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if not folder.is_dir():
            continue
        shards = [shard for shard in _shards_below(root) if shard.path.parent == folder]
        images = 0
        for shard in shards:
            try:
                images += len(_read_shard(shard.path, folder.name).entries)
            except (OSError, CorruptShardError, ValueError, KeyError, struct.error):
                continue
        try:
            describe = json.loads((folder / TRANSFORM_FILE).read_text())["describe"]
        except (OSError, ValueError, KeyError):
            describe = "(no transform.json)"
        infos.append(CacheEntryInfo(folder.name, describe, len(shards), images,
                                    sum(shard.size for shard in shards),
                                    max((shard.used for shard in shards), default=None)))
    return sorted(infos, key=lambda info: -info.size)


def prune(root: Path, max_bytes: int) -> tuple[int, int]:
    """Delete least recently used shards until the cache holds <= `max_bytes`, plus temporary
    files older than an hour (left by killed writers) and empty folders; (deleted, bytes left)."""
    deleted, left = evict(root, max_bytes)
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for folder in root.iterdir() if root.is_dir() else ():
        if not folder.is_dir():
            continue
        for temp in folder.glob(".*.tmp"):
            if temp.stat().st_mtime < cutoff:
                temp.unlink(missing_ok=True)
        if not any(folder.glob(f"*{SHARD_SUFFIX}")):
            (folder / TRANSFORM_FILE).unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
    return deleted, left
