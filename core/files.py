"""Reading files that a dataset names: only regular files, only inside the dataset's roots,
never more than a byte limit.

Paths in a manifest or label file are untrusted. A FIFO named like an image would block a reader
forever, a device can be endless, and `../../etc/passwd` or a symlink can lead anywhere. Every
file ingest reads goes through `read_dataset_file`, which opens without blocking, checks what the
opened descriptor is (so a swap after the check cannot trick it) and reads at most the limit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence


class FileProblem(Exception):
    """Why a dataset file was not read: a reject reason and a detail for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def real_roots(roots: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    """The roots with symlinks resolved, as containment checks compare them."""
    return tuple(os.path.realpath(root) for root in roots)


def inside_roots(path: str | os.PathLike[str], roots: tuple[str, ...]) -> bool:
    """Whether `path`, symlinks resolved, lies inside one of the (already resolved) roots."""
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def read_dataset_file(path: str | os.PathLike[str], what: str, max_bytes: int,
                      roots: tuple[str, ...]) -> bytes:
    """The bytes of the regular file at `path`, or `FileProblem` with reason `missing_<what>`,
    `outside_dataset_root`, `not_a_regular_file`, `<what>_file_too_large` or
    `unreadable_<what>` (`what` is "image" or "text")."""
    if not inside_roots(path, roots):
        raise FileProblem("outside_dataset_root",
                      f"{path} resolves to {os.path.realpath(path)}, outside {', '.join(roots)}")
    return read_regular_file(path, what, max_bytes)


def read_regular_file(path: str | os.PathLike[str], what: str, max_bytes: int | None) -> bytes:
    """The bytes of the regular file at `path` (up to `max_bytes` when given), or `FileProblem`
    with reason `missing_<what>`, `not_a_regular_file`, `<what>_file_too_large` or
    `unreadable_<what>`. Later stages re-read files ingest validated through this too: a path
    swapped for a FIFO since then must not block a reader."""
    limit = max_bytes if max_bytes is not None else float("inf")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileProblem(f"missing_{what}", str(path)) from None
    except OSError as error:
        raise FileProblem(f"unreadable_{what}", f"{path}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("not_a_regular_file", f"{path} is a {_kind(info.st_mode)}")
        if info.st_size > limit:
            raise FileProblem(f"{what}_file_too_large",
                          f"{path}: {info.st_size} bytes, more than max_{what}_bytes={max_bytes}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, int(min(1 << 20, limit + 1 - size)))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # the file grew after the size check
            raise FileProblem(f"{what}_file_too_large",
                          f"{path}: more than max_{what}_bytes={max_bytes}")
        return b"".join(chunks)
    except OSError as error:
        raise FileProblem(f"unreadable_{what}", f"{path}: {error.strerror or error}") from None
    finally:
        os.close(fd)
