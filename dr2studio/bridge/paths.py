"""Keep the bridge inside the project folder the user opened.

Every path a client sends (lyrics files, MIDI files) and every folder the bridge writes into is
resolved with symbolic links followed and must stay under the resolved project root; ``..``,
absolute paths elsewhere and links pointing out of the project are refused with :class:`PathError`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["PathError", "resolve_inside", "ensure_dir_inside", "check_name", "read_text_inside", "NAME_RE"]

#: Names that become file or folder names (job ids, section ids, stem names).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PathError(ValueError):
    """A path or name from a client would leave the project folder or is not acceptable."""


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a safe single path component (no separators, no leading dot)."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise PathError(f"{what} {value!r} must be 1-64 letters, digits, '_', '-' or '.', start with a letter or digit, and hold no '..'")
    return value


def resolve_inside(root: Path, path: str | os.PathLike, what: str = "path") -> Path:
    """Resolve ``path`` (relative paths are taken from ``root``) and require it to stay inside ``root``.

    Links are followed, so a link inside the project that points elsewhere is refused as well.
    """
    if isinstance(path, str) and ("\x00" in path or not path.strip()):
        raise PathError(f"{what} {path!r} is empty or holds a NUL byte")
    root = Path(root).resolve(strict=True)
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve(strict=False)
    if resolved != root and root not in resolved.parents:
        raise PathError(f"{what} {str(path)!r} resolves to {resolved}, outside the project folder {root}")
    return resolved


def ensure_dir_inside(root: Path, relative: str | os.PathLike) -> Path:
    """Create ``root/relative`` (and parents) and return it, refusing any step that leaves ``root``.

    Each existing component is checked after link resolution before anything is created below it,
    so a ``Samples`` link to ``/tmp`` does not lead the bridge to write there.
    """
    root = Path(root).resolve(strict=True)
    current = root
    for part in Path(relative).parts:
        if part in ("", ".", "..") or os.sep in part or (os.altsep and os.altsep in part):
            raise PathError(f"folder component {part!r} of {str(relative)!r} is not allowed")
        current = current / part
        if current.is_symlink() or current.exists():
            resolved = current.resolve(strict=True)
            if resolved != root and root not in resolved.parents:
                raise PathError(f"{current} is a link to {resolved}, outside the project folder {root}")
            if not resolved.is_dir():
                raise PathError(f"{current} exists and is not a folder")
        else:
            current.mkdir()
    return current.resolve(strict=True)


def read_text_inside(root: Path, path: str | os.PathLike, *, max_bytes: int, what: str = "file",
                     suffixes: tuple[str, ...] | None = None) -> tuple[Path, str]:
    """Read a UTF-8 text file that must lie inside ``root`` and be at most ``max_bytes`` long."""
    resolved = resolve_inside(root, path, what)
    if suffixes is not None and resolved.suffix.lower() not in suffixes:
        raise PathError(f"{what} {str(path)!r} must end with one of {', '.join(suffixes)}")
    if not resolved.is_file():
        raise PathError(f"{what} {str(path)!r} does not exist or is not a regular file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise PathError(f"{what} {str(path)!r} is {size} bytes; the limit is {max_bytes}")
    data = resolved.read_bytes()[: max_bytes + 1]
    try:
        return resolved, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PathError(f"{what} {str(path)!r} is not UTF-8 text: {exc}") from exc
