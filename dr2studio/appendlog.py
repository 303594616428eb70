"""Append-only line files shared between processes: the ratings and scores beside a project's takes.

Why one home: a bridge, the CLI and the web page may rate or score the same project at once. Every
writer appends whole lines under an exclusive ``flock`` and ``fsync`` s them (and the folder, when the
file is new), every reader reads under a shared lock, so nobody sees half a line and nothing earlier is
lost. Sizes are checked before reading. Where ``fcntl`` is missing (Windows) the locks are skipped.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["append_lines", "read_lines"]


def read_lines(path: Path, limit: int, error: type[Exception] = ValueError) -> bytes:
    """The whole file under a shared lock (``b""`` when it does not exist); ``error`` when over ``limit`` bytes."""
    if not path.exists():
        return b""
    fd = os.open(path, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        return _read_fd(fd, path, limit, error)
    finally:
        os.close(fd)  # closing releases the lock


def append_lines(path: Path, data: bytes, limit: int, error: type[Exception] = ValueError,
                 check: Callable[[bytes], object] | None = None) -> None:
    """Append ``data`` (whole lines, newline-terminated) under an exclusive lock and make it durable.

    ``check(existing)`` runs on the file's current content first, under the same lock: a file that cannot
    be read is not written to (it raises, nothing is appended).
    """
    if data and not data.endswith(b"\n"):
        raise ValueError("append whole lines: the data must end with a newline")
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if check is not None:
            check(_read_fd(fd, path, limit, error))
        elif os.fstat(fd).st_size + len(data) > limit:
            raise error(f"{path} would grow past its limit of {limit} bytes")
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _read_fd(fd: int, path: Path, limit: int, error: type[Exception]) -> bytes:
    size = os.fstat(fd).st_size
    if size > limit:
        raise error(f"{path} is {size} bytes; the limit is {limit}")
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _fsync_dir(folder: Path) -> None:
    """Make a newly created file's name durable too (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
