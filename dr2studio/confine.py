"""Keep every read and write inside the folder the user gave: one helper for every front door.

A project folder may come from someone else (a shared session, a downloaded template), so links
inside it are not trusted: each path is resolved with symbolic links followed and must stay under the
root, itself resolved once at entry (a root that is the user's own link to elsewhere is fine: the
user named it). ``..``, absolute paths elsewhere, and links such as ``dr2 -> /etc`` or
``Samples -> ~/other`` are refused with :class:`ConfineError`, whose message names the path, where it
leads and the root. :func:`check_writable_dir` probes a folder with a real file before a long render,
so a read-only folder is reported up front, by name, instead of after minutes of work.

Links are checked when the path is used; a folder swapped for a link in the instant between the check
and the write (a local attacker racing the writer) is out of scope (docs/security.md).
"""
from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

__all__ = [
    "ConfineError",
    "resolve_root",
    "is_inside",
    "resolve_inside",
    "check_dir_inside",
    "ensure_dir_inside",
    "check_file_target",
    "check_writable_dir",
    "read_text_inside",
]


class ConfineError(ValueError):
    """A path would leave the folder the user gave, or a folder there cannot be used."""


def resolve_root(root: str | os.PathLike, *, must_exist: bool = True, what: str = "folder") -> Path:
    """``root`` made absolute with links resolved: done once at entry, so the user's own link counts as theirs."""
    text = os.fspath(root)
    if not str(text).strip() or "\x00" in str(text):
        raise ConfineError(f"{what} {text!r} is empty or holds a NUL byte")
    path = Path(text).expanduser()
    try:
        resolved = path.resolve(strict=must_exist)
    except FileNotFoundError as exc:
        raise ConfineError(f"{what} {path} does not exist") from exc
    except (OSError, RuntimeError) as exc:  # a link loop
        raise ConfineError(f"{what} {path} cannot be resolved: {exc}") from exc
    if must_exist and not resolved.is_dir():
        raise ConfineError(f"{what} {path} is not a folder")
    return resolved


def is_inside(path: Path, root: Path) -> bool:
    """Whether the already-resolved ``path`` is ``root`` or below it."""
    return path == root or root in path.parents


def _resolve(candidate: Path, what: str, shown: str) -> Path:
    try:
        return candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a link loop
        raise ConfineError(f"{what} {shown!r} cannot be resolved: {exc}") from exc


def resolve_inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path", *,
                   scope: str = "project folder") -> Path:
    """Resolve ``path`` (a relative one is taken from ``root``) and require it to stay inside ``root``.

    Links are followed, so a link inside the root that points elsewhere is refused as well.
    """
    if isinstance(path, str) and ("\x00" in path or not path.strip()):
        raise ConfineError(f"{what} {path!r} is empty or holds a NUL byte")
    base = resolve_root(root)
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = _resolve(candidate, what, str(path))
    if not is_inside(resolved, base):
        raise ConfineError(f"{what} {str(path)!r} resolves to {resolved}, outside the {scope} {base}")
    return resolved


def _parts(relative: str | os.PathLike) -> tuple[str, ...]:
    parts = Path(relative).parts
    for part in parts:
        if part in ("", ".", "..") or os.sep in part or (os.altsep and os.altsep in part) or "\x00" in part:
            raise ConfineError(f"folder component {part!r} of {str(relative)!r} is not allowed")
    return parts


def _check_existing(current: Path, base: Path, scope: str) -> None:
    """``current`` exists (or is a link): it must lead to a folder inside ``base``."""
    try:
        resolved = current.resolve(strict=True)
    except FileNotFoundError as exc:
        raise ConfineError(f"{current} is a link to {os.readlink(current)!r}, which does not exist") from exc
    except (OSError, RuntimeError) as exc:
        raise ConfineError(f"{current} cannot be resolved: {exc}") from exc
    if not is_inside(resolved, base):
        raise ConfineError(f"{current} is a link to {resolved}, outside the {scope} {base}")
    if not resolved.is_dir():
        raise ConfineError(f"{current} exists and is not a folder")


def check_dir_inside(root: str | os.PathLike, relative: str | os.PathLike, *, scope: str = "project folder") -> Path:
    """Check, creating nothing, that the existing part of ``root/relative`` stays inside ``root``.

    Returns the deepest existing folder on the way (the one a later write would create below), so a
    writability probe can be made there before any work starts.
    """
    base = resolve_root(root)
    current = deepest = base
    for part in _parts(relative):
        current = current / part
        if not (current.is_symlink() or current.exists()):
            break
        _check_existing(current, base, scope)
        deepest = current
    return deepest.resolve()


def ensure_dir_inside(root: str | os.PathLike, relative: str | os.PathLike, *,
                      scope: str = "project folder") -> Path:
    """Create ``root/relative`` (and parents) and return it resolved, refusing any step that leaves ``root``.

    Each existing component is checked after link resolution before anything is created below it, so a
    ``Samples`` link to ``/tmp`` stops the writer instead of leading it there; a component created here
    is checked again, in case something else put a link there first.
    """
    base = resolve_root(root)
    current = base
    for part in _parts(relative):
        current = current / part
        if not (current.is_symlink() or current.exists()):
            try:
                current.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise ConfineError(f"cannot create folder {current}: {exc.strerror or exc}") from exc
        _check_existing(current, base, scope)
    return current.resolve(strict=True)


def check_file_target(root: str | os.PathLike, path: str | os.PathLike, what: str = "file", *,
                      scope: str = "project folder") -> Path:
    """The path a file will be written at inside ``root``: its folder resolved inside ``root``, and the
    name itself not a link out of ``root`` (a plain ``open()`` would write through it)."""
    base = resolve_root(root)
    target = Path(path)
    if not target.is_absolute():
        target = base / target
    folder = _resolve(target.parent, what, str(path))
    if not is_inside(folder, base):
        raise ConfineError(f"{what} {str(path)!r} is in {folder}, outside the {scope} {base}")
    final = folder / target.name
    if final.is_symlink():
        leads = _resolve(final, what, str(path))
        if not is_inside(leads, base):
            raise ConfineError(f"{what} {final} is a link to {leads}, outside the {scope} {base}")
    if final.is_dir():
        raise ConfineError(f"{what} {final} is a folder")
    return final


def check_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Prove ``folder`` takes new files by creating and removing one; raise naming the folder if not.

    Why a real file and not ``os.access``: it is also right for root, read-only mounts, ACLs and full disks,
    and this runs before a render of minutes whose result would otherwise be lost at the last step.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ConfineError(f"{what} {path} does not exist or is not a folder")
    probe = path / f".dr2studio-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        reason = "it is read-only" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else exc.strerror
        raise ConfineError(f"{what} {path} is not writable: {reason} ({exc.strerror or exc})") from exc
    os.close(fd)
    try:
        probe.unlink()
    except OSError:  # pragma: no cover - a folder that takes files but not their removal
        pass
    return path


def read_text_inside(root: str | os.PathLike, path: str | os.PathLike, *, max_bytes: int, what: str = "file",
                     suffixes: tuple[str, ...] | None = None, scope: str = "project folder") -> tuple[Path, str]:
    """Read a UTF-8 text file that must lie inside ``root`` and be at most ``max_bytes`` long.

    The size is checked before reading, and at most ``max_bytes + 1`` bytes are read (a file that grows).
    """
    resolved = resolve_inside(root, path, what, scope=scope)
    if suffixes is not None and resolved.suffix.lower() not in suffixes:
        raise ConfineError(f"{what} {str(path)!r} must end with one of {', '.join(suffixes)}")
    if resolved.is_dir():
        raise ConfineError(f"{what} {str(path)!r} is a folder, not a file")
    if not resolved.is_file():
        raise ConfineError(f"{what} {str(path)!r} does not exist or is not a regular file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise ConfineError(f"{what} {str(path)!r} is {size} bytes; the limit is {max_bytes}")
    with resolved.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfineError(f"{what} {str(path)!r} is over {max_bytes} bytes; the limit is {max_bytes}")
    try:
        return resolved, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfineError(f"{what} {str(path)!r} is not UTF-8 text: {exc}") from exc
