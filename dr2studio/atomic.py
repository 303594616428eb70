"""Atomic file writes: a temporary name in the destination folder, then ``os.replace``.

Readers (a DAW watching a folder, another job, a resumed run) never see half a file, and a crash
leaves the old file in place. The finished file gets the mode a plain ``open()`` would have given it
(``0o666 & ~umask``): ``tempfile.mkstemp`` and ``safetensors.save_file``'s own temporary files
create 0600 files, which would lock the rest of a group out of a shared model or project folder.

One helper for every writer: :func:`atomic_write_text` and :func:`atomic_write_bytes` for data in
memory, :func:`atomic_path` (a context manager yielding the temporary path) for writers that want a
file name, such as ``soundfile.write``, ``numpy.save`` or ``safetensors.torch.save_file``, and
:func:`atomic_folder` for a folder of files that must appear together (a take, exported latents).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_folder", "atomic_path", "atomic_write_bytes", "atomic_write_text", "default_file_mode", "temp_name"]


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file here: ``0o666`` less the process umask (0o644 under 022)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read the umask by setting it, and put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def temp_name(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` that keeps its extension (writers pick the format from it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh hidden staging folder beside ``path``; when the block ends cleanly, rename it to
    ``path`` in one step (``path`` must not exist yet). On an exception the staging folder and
    everything in it is removed, so a reader sees the whole folder or none of it.
    """
    target = Path(path)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly, move the file written there
    onto ``path`` (mode ``0o666 & ~umask``). On an exception the temporary file is removed and ``path``
    is left as it was.
    """
    target = Path(path)
    tmp = temp_name(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))
