"""The project as the page sees it: takes from ``dr2studio.json``, their files, scores, and time rulers.

Everything is read from inside the project folder only (:mod:`dr2studio.confine`): the manifest is
never read through a link out, a take's file path from the manifest must resolve inside the project
(a manifest from someone else may name ``../../etc/passwd``), and only audio files are served.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from dr2studio.audio.daw import MANIFEST_NAME
from dr2studio.audio.project_manifest import ManifestError, load_manifest
from dr2studio.confine import ConfineError, check_file_target, resolve_inside, resolve_root
from dr2studio.scoring.store import SCORES_NAME, ScoreStoreError, newest_scores

log = logging.getLogger(__name__)

__all__ = ["ProjectView", "UiError", "AUDIO_SUFFIXES", "SCORES_NAME", "TAKE_NAME_RE", "take_timeline"]

#: The files the page may fetch: audio only, never the project's other files.
AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg", ".mp3")
#: Take names as :func:`dr2studio.audio.daw.write_take` makes them.
TAKE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The most ruler marks (bars, blocks) sent for one take.
MAX_MARKS = 4000


class UiError(Exception):
    """A request the page made cannot be served; ``status`` is the HTTP answer (4xx: the request's fault)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ProjectView:
    """Read-only access to one project folder (resolved once, at construction)."""

    def __init__(self, root: str | Path) -> None:
        try:
            self.root = resolve_root(root, what="project folder")
        except ConfineError as exc:
            raise UiError(str(exc), 404) from exc

    # -- manifest ------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest in the current schema (an empty one when the project has no takes yet)."""
        try:
            path = check_file_target(self.root, MANIFEST_NAME, "manifest")
            return load_manifest(path, "generic")
        except (ManifestError, ConfineError) as exc:
            raise UiError(f"cannot read the project's manifest: {exc}", 409) from exc

    def takes(self) -> list[dict[str, Any]]:
        return [t for t in self.manifest().get("takes", []) if isinstance(t, dict) and isinstance(t.get("take"), str)]

    def take(self, name: str) -> dict[str, Any]:
        """The manifest entry of take ``name``; 404 when the project has none of that name."""
        if not isinstance(name, str) or not TAKE_NAME_RE.match(name):
            raise UiError(f"take name {name[:80]!r} is not a take name", 400)
        for entry in self.takes():
            if entry["take"] == name:
                return entry
        raise UiError(f"the project has no take {name!r}", 404)

    def take_file(self, name: str, stem: str) -> Path:
        """The file of ``stem`` of take ``name``, checked to lie inside the project."""
        if not _STEM_RE.match(stem or ""):
            raise UiError(f"stem name {stem[:80]!r} is not a stem name", 400)
        entry = self.take(name)
        files = entry.get("files") if isinstance(entry.get("files"), dict) else {}
        rel = files.get(stem)
        if not isinstance(rel, str):
            raise UiError(f"take {name!r} has no stem {stem!r} (it has {', '.join(sorted(files)) or 'none'})", 404)
        return self.audio_file(rel)

    def audio_file(self, rel: str) -> Path:
        """An audio file named relative to the project: inside it (links resolved), a file, of an audio type."""
        try:
            path = resolve_inside(self.root, rel, "file")
        except ConfineError as exc:
            raise UiError(str(exc), 403) from exc
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            raise UiError(f"{rel!r} is not an audio file ({', '.join(AUDIO_SUFFIXES)})", 403)
        if not path.is_file():
            raise UiError(f"no file {rel!r} in the project", 404)
        return path

    # -- scores --------------------------------------------------------------------------------------
    def scores(self) -> dict[str, dict[str, Any]]:
        """The newest automatic score record per take (``dr2studio.scores.jsonl``; none when absent).

        A malformed line is skipped (and logged), not fatal: the file is appended to by another tool.
        """
        try:
            newest = newest_scores(self.root, strict=False)
        except ScoreStoreError as exc:  # a link out of the project, an oversized or non-UTF-8 file
            raise UiError(str(exc), 409) from exc
        for record in newest.values():
            record["time"] = record["time"] or None
        return newest


# -- rulers ----------------------------------------------------------------------------------------------
def _tempo(entry: dict[str, Any]) -> float | None:
    """The take's tempo: the bridge session's, else the one it was rendered at, else its style text's."""
    settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
    for value in (entry.get("bpm"), settings.get("tempo_bpm")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 20 <= value <= 999:
            return float(value)
    style = entry.get("style")
    if isinstance(style, str) and style.strip():
        try:
            from dr2studio.style.tags import parse_style_tags

            tempo = parse_style_tags(style).tempo
        except ValueError:
            return None
        return float(tempo) if tempo else None
    return None


def _lyric_spans(entry: dict[str, Any], duration: float) -> list[tuple[float, float, str]]:
    """``(start, end, lyrics)`` spans of a take: an extended song's lyrics are the old text followed by
    each extension's, so every extend edit (newest first) takes its own text from the end, from its splice on."""
    text = entry.get("lyrics") if isinstance(entry.get("lyrics"), str) else ""
    settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
    edits = [e for e in settings.get("edits") or [] if isinstance(e, dict)]
    spans: list[tuple[float, float, str]] = []
    end = duration
    for edit in reversed(edits):
        new, splice = edit.get("lyrics"), edit.get("splice")
        if edit.get("kind") != "extend" or not isinstance(new, str) or not isinstance(splice, (int, float)):
            continue
        if not (0 <= splice < end) or not text.rstrip().endswith(new.strip()):
            break
        spans.insert(0, (float(splice), end, new))
        text = text.rstrip()[: len(text.rstrip()) - len(new.strip())]
        end = float(splice)
    spans.insert(0, (0.0, end, text))
    return spans


def _sections(entry: dict[str, Any], duration: float) -> tuple[list[dict[str, Any]], str]:
    """The take's sections with their lines and times. LRC time stamps place them where the lyrics have
    any; otherwise each span's time is shared out by the amount of text each section sings (marked
    ``estimated``: the model is not aligned to the words)."""
    from dr2studio.lyrics.parse import LyricsError, parse_lyrics

    out: list[dict[str, Any]] = []
    timing = "lrc"
    counts: dict[str, int] = {}
    for start, end, text in _lyric_spans(entry, duration):
        try:
            doc = parse_lyrics(text or "")
        except (LyricsError, TypeError):
            continue
        sections = list(doc)
        if not sections:
            continue
        stamps = [s.first_time for s in sections]
        if all(t is not None for t in stamps) and start == 0.0:
            bounds = [min(float(t), end) for t in stamps] + [end]  # type: ignore[arg-type]
        else:
            timing = "estimated"
            weights = [max(12, sum(len(line) for line in s.lines)) for s in sections]
            total = float(sum(weights))
            bounds = [start]
            for w in weights:
                bounds.append(bounds[-1] + (end - start) * w / total)
        for i, section in enumerate(sections):
            counts[section.kind] = counts.get(section.kind, 0) + 1
            out.append({"kind": section.kind, "index": counts[section.kind], "label": f"{section.kind} {counts[section.kind]}",
                        "lines": list(section.lines), "text": section.to_text(),
                        "start": round(bounds[i], 3), "end": round(max(bounds[i], bounds[i + 1]), 3)})
    return out, timing


def take_timeline(entry: dict[str, Any], *, block_seconds: float | None = None) -> dict[str, Any]:
    """Everything the ruler draws for one take, in seconds from the take's start: bars (from the take's
    tempo and meter, phased by its beat position), the model's blocks, sections and the edit history."""
    duration = entry.get("duration_seconds")
    duration = float(duration) if isinstance(duration, (int, float)) and duration > 0 else 0.0
    bpm = _tempo(entry)
    timesig = entry.get("timesig")
    num, den = (int(timesig[0]), int(timesig[1])) if isinstance(timesig, list) and len(timesig) == 2 \
        and all(isinstance(v, int) and v > 0 for v in timesig) else (4, 4)
    bars: list[dict[str, Any]] = []
    if bpm and duration:
        beat_s = 60.0 / bpm
        bar_beats = num * 4.0 / den  # quarter-note beats per bar
        start_beat = entry.get("position_beats") if isinstance(entry.get("position_beats"), (int, float)) else 0.0
        first = math.ceil(start_beat / bar_beats - 1e-9)
        k = first
        while len(bars) < MAX_MARKS:
            t = (k * bar_beats - start_beat) * beat_s
            if t > duration + 1e-9:
                break
            bars.append({"bar": k + 1, "time": round(t, 4)})
            k += 1
    blocks: list[float] = []
    if block_seconds and block_seconds > 0 and duration:
        n = min(MAX_MARKS, int(duration / block_seconds) + 1)
        blocks = [round(i * block_seconds, 4) for i in range(n) if i * block_seconds < duration]
    sections, timing = _sections(entry, duration)
    settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
    edits = [dict(e) for e in settings.get("edits") or [] if isinstance(e, dict)]
    return {"duration": duration, "bpm": bpm, "timesig": [num, den], "bars": bars, "block_seconds": block_seconds,
            "blocks": blocks, "sections": sections, "section_timing": timing, "edits": edits}
