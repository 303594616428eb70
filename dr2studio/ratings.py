"""A producer's star ratings of takes, kept beside the takes in the project: ``<project>/dr2studio.ratings.jsonl``.

Why a file of its own: ratings come from every door (OSC, MIDI, the CLI, ``Studio``, the web take page)
while takes are being made, and they feed preference training later (``dr2studio prefs export``). The
file is append-only, one JSON object per line (``take``, ``stars``, ``dimension``, ``source``, ``time``),
so nothing a producer said is ever lost: a later rating of the same take and dimension by the same
source supersedes the earlier one for :meth:`RatingStore.current`, and both stay in
:meth:`RatingStore.history`.

Each append takes an exclusive ``flock`` on the file, reads it whole first (a store that cannot be read
is not written to: the error names the file and the line), writes one line and ``fsync`` s it, so two
processes rating at once (the bridge and the CLI) never interleave and a crash loses at most the rating
being written. The file lives inside the project and is reached through :mod:`dr2studio.confine`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dr2studio.appendlog import append_lines, read_lines
from dr2studio.audio.daw import ProjectError, project_layout, read_manifest
from dr2studio.confine import ConfineError, check_file_target, resolve_root
from dr2studio.flow.preference import DIMENSIONS as _PAIR_DIMENSIONS
from dr2studio.requests import STARS, RequestError

__all__ = ["DIMENSIONS", "OVERALL", "STARS", "SOURCES", "RATINGS_NAME", "MAX_RATINGS_BYTES", "RatingError", "Rating",
           "RatingStore", "stars_to_label"]

#: The paper's four quality dimensions (the same tuple CPPO pairs on).
DIMENSIONS: tuple[str, ...] = tuple(_PAIR_DIMENSIONS)
#: A rating of this "dimension" applies to all four (where the source did not rate one specifically).
OVERALL = "overall"
#: The doors a rating may come through.
SOURCES: tuple[str, ...] = ("osc", "midi", "cli", "studio", "web")
RATINGS_NAME = "dr2studio.ratings.jsonl"
#: The largest ratings file read: far beyond a lifetime of ratings (~100 bytes each), far below a memory risk.
MAX_RATINGS_BYTES = 64 * 1024 * 1024
_MAX_TAKE_CHARS = 200
_FIELDS = ("take", "stars", "dimension", "source", "time")


class RatingError(ValueError):
    """A rating that cannot be stored or a store that cannot be read: unknown take, stars out of range,
    unknown dimension or source, a bad project, a corrupt line (named by file and line number)."""


def _shown(text: object) -> str:
    """Client text quoted in an error: at most 40 characters (docs/security.md)."""
    s = str(text)
    return repr(s if len(s) <= 40 else s[:40] + "...")


def check_stars(stars: Any) -> int:
    """``stars`` as an int in 1..5, else :class:`RatingError` (the message of :data:`STARS`)."""
    try:
        return int(STARS.check(stars))
    except RequestError as exc:
        raise RatingError(str(exc)) from None


def check_dimension(dimension: Any) -> str:
    if isinstance(dimension, str) and dimension.strip().lower() in (*DIMENSIONS, OVERALL):
        return dimension.strip().lower()
    raise RatingError(f"dimension must be one of {', '.join((OVERALL, *DIMENSIONS))}, got {_shown(dimension)}")


def check_source(source: Any) -> str:
    if isinstance(source, str) and source in SOURCES:
        return source
    raise RatingError(f"rating source must be one of {', '.join(SOURCES)}, got {_shown(source)}")


def stars_to_label(stars: float) -> float:
    """Stars (1..5, or a mean of them) as a preference label in [0, 1]: 1 -> 0, 3 -> 0.5, 5 -> 1."""
    return min(1.0, max(0.0, (float(stars) - 1.0) / 4.0))


@dataclasses.dataclass(frozen=True)
class Rating:
    """One rating as stored: ``time`` is ISO 8601 UTC (when it was stored)."""

    take: str
    stars: int
    dimension: str
    source: str
    time: str

    def to_json(self) -> str:
        return json.dumps({f: getattr(self, f) for f in _FIELDS}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Rating":
        """Parse and check one stored line; :class:`RatingError` says what is wrong with it."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RatingError(f"not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise RatingError("not a JSON object")
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise RatingError(f"lacks {', '.join(missing)}")
        take, when = data["take"], data["time"]
        if not isinstance(take, str) or not take or len(take) > _MAX_TAKE_CHARS:
            raise RatingError(f"take must be a take name, got {_shown(take)}")
        if not isinstance(when, str):
            raise RatingError(f"time must be ISO 8601 text, got {_shown(when)}")
        try:
            _dt.datetime.fromisoformat(when)
        except ValueError:
            raise RatingError(f"time must be ISO 8601 text, got {_shown(when)}") from None
        return cls(take, check_stars(data["stars"]), check_dimension(data["dimension"]), check_source(data["source"]), when)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class RatingStore:
    """The ratings of one project folder (the folder holding ``dr2studio.json``)."""

    def __init__(self, project: str | os.PathLike) -> None:
        try:
            self.root = resolve_root(project, what="project folder")
        except ConfineError as exc:
            raise RatingError(str(exc)) from None
        if not self.root.is_dir():
            raise RatingError(f"project {self.root} is not a folder")
        self.path = self.root / RATINGS_NAME

    # -- the project's takes ---------------------------------------------------------------------
    def takes(self) -> list[str]:
        """The take names of the project manifest, oldest first."""
        try:
            manifest = read_manifest(project_layout(self.root))
        except ProjectError as exc:
            raise RatingError(f"project {self.root}: {exc}") from None
        return [t["take"] for t in manifest.get("takes", []) if isinstance(t, dict) and isinstance(t.get("take"), str)]

    def _target(self) -> Path:
        try:
            return check_file_target(self.root, RATINGS_NAME, "ratings file")
        except ConfineError as exc:
            raise RatingError(str(exc)) from None

    # -- writing ---------------------------------------------------------------------------------
    def rate(self, take: str, stars: int, *, dimension: str = OVERALL, source: str) -> Rating:
        """Append one rating of ``take`` (a take of the manifest) and return it; nothing is written on bad input."""
        stars, dimension, source = check_stars(stars), check_dimension(dimension), check_source(source)
        if not isinstance(take, str) or not take:
            raise RatingError(f"take must be a take name, got {_shown(take)}")
        takes = self.takes()
        if take not in takes:
            known = ", ".join(takes[-8:]) if takes else "none yet"
            raise RatingError(f"project {self.root} has no take {_shown(take)} (newest takes: {known})")
        rating = Rating(take, stars, dimension, source, _now())
        append_lines(self._target(), (rating.to_json() + "\n").encode("utf-8"), MAX_RATINGS_BYTES, RatingError,
                     check=self._parse)  # a store that cannot be read is not written to
        return rating

    # -- reading ---------------------------------------------------------------------------------
    def history(self, take: str | None = None) -> list[Rating]:
        """Every stored rating (of ``take``, or all), oldest first, superseded ones too."""
        ratings = self._parse(read_lines(self._target(), MAX_RATINGS_BYTES, RatingError))
        return [r for r in ratings if take is None or r.take == take]

    def current(self, take: str) -> dict[str, float | None]:
        """Per dimension, the mean over sources of each source's latest rating of it; a source's latest
        ``overall`` rating stands in for the dimensions it did not rate specifically. None: unrated."""
        return _current(self.history(take))

    def all_current(self) -> dict[str, dict[str, float | None]]:
        """:meth:`current` of every take of the manifest and every rated take, in manifest order."""
        by_take: dict[str, list[Rating]] = {t: [] for t in self.takes()}
        for r in self.history():
            by_take.setdefault(r.take, []).append(r)
        return {take: _current(ratings) for take, ratings in by_take.items()}

    def _parse(self, data: bytes) -> list[Rating]:
        if not data:
            return []
        lines = data.split(b"\n")
        if lines[-1]:  # the last line never ended: a write that did not finish
            raise RatingError(f"{self.path}:{len(lines)}: unfinished line (no newline); the store is not written to "
                              "until it is repaired (remove or complete that line)")
        out = []
        for n, raw in enumerate(lines[:-1], 1):
            if not raw.strip():
                continue
            try:
                out.append(Rating.from_json(raw.decode("utf-8")))
            except (RatingError, UnicodeDecodeError) as exc:
                raise RatingError(f"{self.path}:{n}: corrupt rating ({exc}); the store is not written to until the "
                                  "line is repaired or removed") from None
        return out


def _current(ratings: Iterable[Rating]) -> dict[str, float | None]:
    latest: dict[tuple[str, str], int] = {}  # (source, dimension) -> stars; later lines overwrite earlier ones
    for r in ratings:
        latest[(r.source, r.dimension)] = r.stars
    sources = sorted({s for s, _ in latest})
    out: dict[str, float | None] = {}
    for dim in DIMENSIONS:
        values = [latest.get((s, dim), latest.get((s, OVERALL))) for s in sources]
        values = [v for v in values if v is not None]
        out[dim] = sum(values) / len(values) if values else None
    return out
