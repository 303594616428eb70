"""The session survives a bridge restart: its state and committed song live in the project.

``<project>/.dr2studio/session.json`` holds tempo, time signature, style, sections, lyrics, fx and
the song's origin; ``<project>/.dr2studio/song.wav`` (+ its ``.dr2.safetensors`` sidecar, float WAV
so nothing is lost) is the song later jobs continue. Both are written atomically after every
committed take and when the session closes; ``/dr2/session/open`` restores them.

A project folder may come from someone else, so its saved session is data to check, not to trust:
it is read only from inside the project (no link out), size-limited, every field validated with the
same limits as a client's request, effect presets only by shipped name; it is restored into a fresh
session all or nothing. A saved session that fails is refused with :class:`CorruptSession`, and its
files are moved aside (``*.corrupt-<time>``), never overwritten.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from dr2studio.atomic import atomic_write_text
from dr2studio.bridge.paths import PathError, check_name, ensure_dir_inside, resolve_inside
from dr2studio.bridge.session import BridgeError, Session

log = logging.getLogger(__name__)

__all__ = ["STATE_DIR", "MAX_SESSION_FILE", "MAX_SAVED_SONG", "CorruptSession", "save_session", "restore_session", "clear_song",
           "check_preset_name"]

STATE_DIR = ".dr2studio"
#: Bytes a saved ``session.json`` may have (lyrics are limited to 48 K characters; this leaves room).
MAX_SESSION_FILE = 1024 * 1024
#: Bytes a saved ``song.wav`` may have (float WAV: about 10 minutes of 48 kHz stereo).
MAX_SAVED_SONG = 256 * 1024 * 1024
_FORMAT = "dr2studio-bridge-session"
_STATE_FILES = ("session.json", "song.wav", "song.dr2.safetensors")


class CorruptSession(BridgeError):
    """The project's saved session cannot be restored; its files were moved aside (``moved``)."""

    def __init__(self, message: str, moved: list[Path]) -> None:
        super().__init__(message, 409)
        self.moved = moved


def check_preset_name(stem: object, preset: object) -> tuple[str, str]:
    """A stem's effect preset as a session may hold it: a shipped preset *name*, never a path.

    Why: a saved session comes with the project folder, perhaps from someone else; a path there
    (``../../../../etc/passwd``) would make the bridge open any file it names.
    """
    from dr2studio.audio.effects import list_presets

    try:
        check_name(stem, "stem name")
        check_name(preset, "preset name")
    except PathError as exc:
        raise BridgeError(str(exc)) from exc
    shipped = list_presets()
    if preset not in shipped:
        raise BridgeError(f"unknown preset {preset!r} for stem {stem!r}; presets: {', '.join(shipped)}", 404)
    return str(stem), str(preset)


def _state_dir(session: Session, create: bool) -> Path | None:
    folder = session.project / STATE_DIR
    if not create and not (folder.exists() or folder.is_symlink()):
        return None
    try:
        return ensure_dir_inside(session.project, STATE_DIR)
    except PathError as exc:
        raise BridgeError(f"cannot keep the session in the project: {exc}", 403) from exc


def save_session(session: Session, *, song: bool = True) -> None:
    """Write the session state (and, with ``song``, the committed song) into the project."""
    folder = _state_dir(session, create=True)
    assert folder is not None
    if song:
        path = folder / "song.wav"
        if session.song is not None:
            session.song.save(path, subtype="FLOAT")
        else:
            for stale in (path, folder / "song.dr2.safetensors"):
                if stale.exists() or stale.is_symlink():
                    stale.unlink()
    state = dict(session.describe(), format=_FORMAT, autocommit=session.autocommit)
    atomic_write_text(folder / "session.json", json.dumps(state, indent=1, ensure_ascii=False) + "\n")


def _number(state: dict, key: str, default: Any = None) -> float:
    value = state.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r:.60}")
    return float(value)


def _fill(session: Session, state: Any, folder: Path) -> None:
    """Validate ``state`` field by field into ``session`` (a fresh one); raise on the first bad field."""
    from dr2studio.tempomap import TempoMap

    if not isinstance(state, dict):
        raise ValueError(f"holds a JSON {type(state).__name__}, not an object")
    if state.get("format") != _FORMAT:
        raise ValueError(f"format is {state.get('format')!r:.60}, not {_FORMAT!r}")
    session.set_tempo(_number(state, "bpm"))
    timesig = state.get("timesig")
    if not (isinstance(timesig, list) and len(timesig) == 2 and all(type(v) is int for v in timesig)):
        raise ValueError(f"timesig must be two integers, got {timesig!r:.60}")
    session.set_timesig(*timesig)
    if state.get("tempo_map"):
        tempo_map = TempoMap.from_json(state["tempo_map"])
        if len(tempo_map.tempos) + len(tempo_map.meters) > 20_000:
            raise ValueError("tempo_map has more than 20000 changes")
        session.tempo_map = tempo_map
    style = state.get("style")
    if style is not None and (not isinstance(style, str) or len(style) > 1000):
        raise ValueError("style must be text of at most 1000 characters")
    session.style = style
    sections = state.get("sections", [])
    if not isinstance(sections, list):
        raise ValueError("sections must be a list")
    for i, sec in enumerate(sections):
        if not isinstance(sec, dict):
            raise ValueError(f"sections[{i}] must be an object")
        session.define_section(sec.get("sec_id"), str(sec.get("kind")), _number(sec, "start_beats"),
                               _number(sec, "length_beats"))
    lyrics = state.get("lyrics", {})
    if not isinstance(lyrics, dict):
        raise ValueError("lyrics must be an object")
    for sec_id, text in lyrics.items():
        session.set_lyrics(sec_id, text)
    fx = state.get("fx", {})
    if not isinstance(fx, dict):
        raise ValueError("fx must be an object")
    session.fx = dict(check_preset_name(stem, preset) for stem, preset in fx.items())
    session.origin_beats = _number(state, "origin_beats", 0.0)
    autocommit = state.get("autocommit", True)
    if not isinstance(autocommit, bool):
        raise ValueError(f"autocommit must be true or false, got {autocommit!r:.20}")
    session.autocommit = autocommit
    song = folder / "song.wav"
    if song.exists() or song.is_symlink():
        from dr2studio.song import Song

        resolved = resolve_inside(session.project, song, "saved song")  # a link out of the project is refused
        size = resolved.stat().st_size
        if size > MAX_SAVED_SONG:
            raise ValueError(f"saved song {song.name} is {size} bytes; the limit is {MAX_SAVED_SONG}")
        session.song = Song.load(resolved)


def _move_aside(folder: Path) -> list[Path]:
    """Rename the saved session's files to ``*.corrupt-<time>`` so nothing overwrites them."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for name in _STATE_FILES:
        path = folder / name
        if path.exists() or path.is_symlink():
            target = folder / f"{name}.corrupt-{stamp}"
            n = 1
            while target.exists() or target.is_symlink():
                n += 1
                target = folder / f"{name}.corrupt-{stamp}-{n}"
            path.rename(target)
            moved.append(target)
    return moved


def restore_session(session: Session) -> bool:
    """Load what a previous bridge left in the project into ``session`` (a fresh one).

    Returns ``False`` when nothing was saved. Raises :class:`CorruptSession` when the saved session
    cannot be restored; ``session`` is then unchanged and the bad files are moved aside.
    """
    folder = _state_dir(session, create=False)
    if folder is None:
        return False
    path = folder / "session.json"
    if not (path.exists() or path.is_symlink()):
        return False
    scratch = Session(project=session.project, daw=session.daw)
    try:
        resolved = resolve_inside(session.project, path, "saved session")
        if not resolved.is_file():
            raise ValueError("is not a regular file")
        size = resolved.stat().st_size
        if size > MAX_SESSION_FILE:
            raise ValueError(f"is {size} bytes; the limit is {MAX_SESSION_FILE}")
        with open(resolved, "rb") as fh:
            data = fh.read(MAX_SESSION_FILE + 1)
        if len(data) > MAX_SESSION_FILE:
            raise ValueError(f"is over {MAX_SESSION_FILE} bytes")
        _fill(scratch, json.loads(data.decode("utf-8")), folder)
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        # BridgeError, PathError, JSONDecodeError, UnicodeDecodeError and SidecarError are ValueErrors
        try:
            moved = _move_aside(folder)
        except OSError as move_exc:
            raise BridgeError(f"the saved session in {folder} cannot be restored ({exc}) and could not be moved "
                              f"aside ({move_exc}); fix or remove it, then open the project again", 409) from exc
        names = ", ".join(p.name for p in moved)
        log.warning("refused the saved session in %s (%s); moved aside as %s", folder, exc, names)
        raise CorruptSession(f"the saved session in {folder} cannot be restored: {exc}; it was moved aside as "
                             f"{names} (nothing was changed); open the project again to start a fresh session",
                             moved) from exc
    for field in ("bpm", "timesig", "tempo_map", "style", "sections", "lyrics", "fx", "origin_beats", "autocommit",
                  "song"):
        setattr(session, field, getattr(scratch, field))
    log.info("restored session from %s (%d sections, song %.1f s)", folder, len(session.sections), session.song_seconds())
    return True


def clear_song(session: Session) -> None:
    """Forget the committed song (sections and lyrics stay), on disk too."""
    session.song, session.origin_beats = None, 0.0
    save_session(session)
