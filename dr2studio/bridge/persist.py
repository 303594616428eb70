"""The session survives a bridge restart: its state and committed song live in the project.

``<project>/.dr2studio/session.json`` holds tempo, time signature, style, sections, lyrics, fx and
the song's origin; ``<project>/.dr2studio/song.wav`` (+ its ``.dr2.safetensors`` sidecar, float WAV
so nothing is lost) is the song later jobs continue. Both are written atomically after every
committed take and when the session closes; ``/dr2/session/open`` restores them.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from dr2studio.bridge.paths import PathError, ensure_dir_inside
from dr2studio.bridge.session import BridgeError, Session
from dr2studio.config import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["STATE_DIR", "save_session", "restore_session", "clear_song"]

STATE_DIR = ".dr2studio"
_FORMAT = "dr2studio-bridge-session"


def _state_dir(session: Session, create: bool) -> Any:
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
    if song:
        path = folder / "song.wav"
        if session.song is not None:
            session.song.save(path, subtype="FLOAT")
        else:
            for stale in (path, folder / "song.dr2.safetensors"):
                if stale.exists():
                    stale.unlink()
    state = dict(session.describe(), format=_FORMAT, autocommit=session.autocommit)
    atomic_write_text(folder / "session.json", json.dumps(state, indent=1, ensure_ascii=False) + "\n")


def restore_session(session: Session) -> bool:
    """Load what a previous bridge left in the project; ``False`` when there is nothing (or it is unreadable)."""
    folder = _state_dir(session, create=False)
    if folder is None or not (folder / "session.json").is_file():
        return False
    try:
        state = json.loads((folder / "session.json").read_text(encoding="utf-8"))
        if state.get("format") != _FORMAT:
            raise ValueError("not a dr2studio bridge session")
        session.set_tempo(float(state["bpm"]))
        session.set_timesig(*[int(v) for v in state["timesig"]])
        if state.get("tempo_map"):
            from dr2studio.tempomap import TempoMap

            session.tempo_map = TempoMap.from_json(state["tempo_map"])
        session.style = state.get("style")
        for sec in state.get("sections", []):
            session.define_section(sec["sec_id"], sec["kind"], float(sec["start_beats"]), float(sec["length_beats"]))
        for sec_id, text in state.get("lyrics", {}).items():
            session.set_lyrics(sec_id, text)
        session.fx = {str(k): str(v) for k, v in state.get("fx", {}).items()}
        session.origin_beats = float(state.get("origin_beats", 0.0))
        session.autocommit = bool(state.get("autocommit", True))
        if (folder / "song.wav").is_file():
            from dr2studio.song import Song

            session.song = Song.load(folder / "song.wav")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the saved session in %s: %s", folder, exc)
        return False
    log.info("restored session from %s (%d sections, song %.1f s)", folder, len(session.sections), session.song_seconds())
    return True


def clear_song(session: Session) -> None:
    """Forget the committed song (sections and lyrics stay), on disk too."""
    session.song, session.origin_beats = None, 0.0
    save_session(session)
