"""DAW project folders: where takes go, atomic take folders, and the ``dr2studio.json`` manifest.

Layouts (``<take>`` is one rendered song, holding one WAV per stem):

- ``ableton``: ``DIR/Samples/Imported/dr2/<take>/`` (where Live keeps imported samples);
- ``reaper``: ``<media>/dr2/<take>/``, where ``<media>`` is the project's media folder read from the
  ``RECORD_PATH`` line of the ``.rpp`` in DIR (an empty path means DIR itself), else ``DIR/Media``;
- ``generic``: ``DIR/dr2/<take>/``.

Nothing is read or written outside DIR: DIR is resolved once (the user's own link is theirs), and every
folder, ``.rpp`` and manifest below it goes through :mod:`dr2studio.confine`, so a ``dr2``, ``Samples`` or
``Media`` link that leads out of the project, or a manifest linked to a file elsewhere, is refused before
anything is rendered. A take is rendered into a hidden staging folder and renamed into
place, then the manifest is rewritten through a temporary file under an exclusive lock, so a DAW or a
second dr2studio process never sees a half-written take or manifest.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from dr2studio.atomic import atomic_folder
from dr2studio.audio.io import write_audio
from dr2studio.audio.project_manifest import ManifestError, load_manifest, take_entry, write_manifest
from dr2studio.confine import (
    ConfineError,
    check_dir_inside,
    check_file_target,
    check_writable_dir,
    ensure_dir_inside,
    is_inside,
    resolve_inside,
    resolve_root,
)
from dr2studio.requests import DAWS  # the one list of project layouts (re-exported here)

try:  # POSIX only; elsewhere the manifest update is atomic but not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DAWS",
    "MANIFEST_NAME",
    "ProjectError",
    "ProjectLayout",
    "check_project_writable",
    "project_layout",
    "project_sample_rate",
    "read_manifest",
    "write_take",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "dr2studio.json"
_RECORD_PATH = re.compile(r'^\s*RECORD_PATH\s+(?:"([^"]*)"|(\S+))', re.MULTILINE)
_SAMPLERATE = re.compile(r"^\s*SAMPLERATE\s+(\d+)", re.MULTILINE)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ProjectError(ValueError):
    """The project folder is unusable (a file, unreadable manifest, unknown DAW)."""


@dataclasses.dataclass(frozen=True)
class ProjectLayout:
    """Where one DAW project keeps dr2studio takes."""

    root: Path
    daw: str
    takes_dir: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def relative(self, path: Path) -> str:
        """``path`` relative to the project root, with forward slashes (portable in the manifest)."""
        return path.relative_to(self.root).as_posix()


def _project_files(root: Path) -> list[Path]:
    """The ``.rpp`` files of ``root`` that are files inside it (a link to a file elsewhere is not read)."""
    found = []
    for rpp in sorted(root.glob("*.rpp")) + sorted(root.glob("*.RPP")):
        try:
            inside = rpp.is_file() and is_inside(rpp.resolve(strict=True), root)
        except (OSError, RuntimeError):
            inside = False
        if inside:
            found.append(rpp)
        else:
            log.warning("%s is not a file inside the project %s; not read", rpp.name, root)
    return found


def _reaper_media(root: Path) -> Path:
    for rpp in _project_files(root):
        try:
            text = rpp.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        match = _RECORD_PATH.search(text)
        if match is None:
            continue
        value = match.group(1) if match.group(1) is not None else match.group(2)
        if not value:
            return root
        try:
            return resolve_inside(root, value, "RECORD_PATH")
        except ConfineError:
            pass
        log.warning("%s records media outside the project (%s); using %s/Media instead", rpp.name, value, root)
        break
    return root / "Media"


def project_layout(project: str | os.PathLike, daw: str = "generic") -> ProjectLayout:
    """Resolve the take folder for ``daw`` inside ``project`` (which must not be a file).

    Only checks; creates nothing (``write_take`` creates folders when it writes).
    """
    if daw not in DAWS:
        raise ProjectError(f"unknown DAW {daw!r} (choose one of {', '.join(DAWS)})")
    given = Path(project).expanduser()
    if given.exists() and not given.is_dir():
        raise ProjectError(f"project path {given} is a file, not a folder")
    if not given.exists() and not given.parent.is_dir():
        raise ProjectError(f"project folder {given} cannot be created: {given.parent} does not exist")
    try:
        root = resolve_root(given, must_exist=False, what="project folder")  # once: the user's own link is theirs
    except ConfineError as exc:
        raise ProjectError(str(exc)) from exc
    if daw == "ableton":
        takes = root / "Samples" / "Imported" / "dr2"
    elif daw == "reaper":
        takes = _reaper_media(root) / "dr2" if root.is_dir() else root / "Media" / "dr2"
    else:
        takes = root / "dr2"
    layout = ProjectLayout(root=root, daw=daw, takes_dir=takes)
    if root.is_dir():  # links out of the project fail here, before anything is rendered
        try:
            check_dir_inside(root, takes.relative_to(root))
            check_file_target(root, MANIFEST_NAME, "manifest")
        except ConfineError as exc:
            raise ProjectError(str(exc)) from exc
    read_manifest(layout)  # an unreadable manifest is an error before anything is written
    return layout


def check_project_writable(layout: ProjectLayout) -> Path:
    """Prove the project takes new files where the take and the manifest will go; returns the folder probed.

    Why: a render (separation, effects) takes minutes, and a read-only project would otherwise be found
    only when the first WAV is written. Probes the deepest existing folder on the way to the take folder
    (the root itself, or its parent when the project is still to be created), and the root.
    """
    try:
        if not layout.root.exists():
            return check_writable_dir(layout.root.parent, "folder for the new project")
        check_writable_dir(layout.root, "project folder")
        deepest = check_dir_inside(layout.root, layout.takes_dir.relative_to(layout.root))
        label = "project folder" if deepest == layout.root else "take folder" if deepest == layout.takes_dir else "folder"
        return check_writable_dir(deepest, label)
    except ConfineError as exc:
        raise ProjectError(str(exc)) from exc


def read_manifest(layout: ProjectLayout) -> dict[str, Any]:
    """The project's manifest in the current schema (older schemas upgraded; empty when there is none yet)."""
    try:
        if layout.root.is_dir():
            check_file_target(layout.root, MANIFEST_NAME, "manifest")  # never read through a link out
        return load_manifest(layout.manifest_path, layout.daw)
    except (ManifestError, ConfineError) as exc:
        raise ProjectError(str(exc)) from exc


def _rpp_sample_rate(root: Path) -> int | None:
    for rpp in _project_files(root):
        try:
            match = _SAMPLERATE.search(rpp.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if match and 8000 <= int(match.group(1)) <= 192000:
            return int(match.group(1))
    return None


def project_sample_rate(layout: ProjectLayout) -> int | None:
    """The rate the project's takes use: the manifest's, else a REAPER project's ``SAMPLERATE``, else ``None``.

    Why: every take of a project should share one rate, so later takes follow the first one.
    """
    rate = read_manifest(layout).get("sample_rate")
    if isinstance(rate, int) and not isinstance(rate, bool) and 8000 <= rate <= 192000:
        return rate
    if layout.daw == "reaper" and layout.root.is_dir():
        return _rpp_sample_rate(layout.root)
    return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _take_name(layout: ProjectLayout, wanted: str) -> str:
    base = _SAFE_NAME.sub("_", wanted).strip("._") or "take"
    name, n = base, 1
    while (layout.takes_dir / name).exists() or (layout.takes_dir / name).is_symlink():
        n += 1
        name = f"{base}-{n}"
    return name


def write_take(
    layout: ProjectLayout,
    take: str,
    stems: Mapping[str, tuple[torch.Tensor, int]],
    info: Mapping[str, Any],
    *,
    subtype: str = "PCM_24",
    midi: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write ``{stem: (audio [C, N], rate)}`` as ``<takes_dir>/<take>/<stem>.wav`` and record the take.

    ``midi`` (``{stem: Standard MIDI File bytes}``) is written as ``<stem>.mid`` beside the WAVs, in the same
    staging folder, and listed in the entry's ``midi`` field: a take appears with all its files or not at all.

    ``info`` (position_seconds, lyrics, seed, settings, ...; see docs/manifest.md) becomes the manifest
    entry through :func:`~dr2studio.audio.project_manifest.take_entry`; the entry is returned. A take name
    already in use gets a ``-2``, ``-3`` ... suffix. The manifest's ``sample_rate`` is set by the first take.
    """
    if not stems:
        raise ValueError("a take needs at least one stem")
    rates = {int(rate) for _, rate in stems.values()}
    info = {"sample_rate": rates.pop() if len(rates) == 1 else None, **info}
    take_entry(take, "", {}, info)  # a bad entry is an error before anything is written
    layout.root.mkdir(exist_ok=True)
    with _locked(layout.root):
        manifest = read_manifest(layout)
        try:  # every folder on the way is created or checked inside the project, links resolved
            ensure_dir_inside(layout.root, layout.takes_dir.relative_to(layout.root))
            check_file_target(layout.root, MANIFEST_NAME, "manifest")
        except ConfineError as exc:
            raise ProjectError(str(exc)) from exc
        name = _take_name(layout, take)
        final = layout.takes_dir / name
        with atomic_folder(final) as staging:
            resolve_inside(layout.root, staging, "staging folder")  # nothing swapped a link in meanwhile
            for stem, (audio, rate) in stems.items():
                write_audio(staging / f"{stem}.wav", audio, rate, subtype=subtype)
            for stem, data in (midi or {}).items():
                (staging / f"{stem}.mid").write_bytes(data)
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        try:
            if midi:
                info = {**info, "midi": {stem: layout.relative(final / f"{stem}.mid") for stem in midi}}
            entry = take_entry(name, created, {stem: layout.relative(final / f"{stem}.wav") for stem in stems}, info)
            manifest.setdefault("takes", []).append(entry)
            manifest["daw"] = layout.daw
            if manifest.get("sample_rate") is None:
                manifest["sample_rate"] = entry["sample_rate"]
            write_manifest(layout.manifest_path, manifest)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)  # no take without its manifest entry
            raise
    log.info("wrote take %s (%d stems) to %s", name, len(stems), final)
    return entry
