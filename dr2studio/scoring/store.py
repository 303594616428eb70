"""Automatic scores kept beside the ratings in the project: ``<project>/dr2studio.scores.jsonl``.

One JSON object per line and take: ``{"take": str, "time": ISO 8601 UTC, "scores": {dimension: float |
null}, "details": {...}}``; ``dr2studio prefs export`` and the web take page read the newest line per take.
Append-only, like the ratings: each write takes an exclusive ``flock`` on the file, writes whole lines
in one ``write`` and ``fsync`` s them, so a concurrent reader or writer never sees half a record and an
earlier evaluation is never lost. The file is reached through :mod:`dr2studio.confine` (never a link
out of the project).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dr2studio.appendlog import append_lines, read_lines
from dr2studio.confine import ConfineError, check_file_target, resolve_root

__all__ = ["SCORES_NAME", "MAX_SCORES_BYTES", "ScoreStoreError", "score_record", "append_scores", "read_scores",
           "parse_score_line", "newest_scores"]

SCORES_NAME = "dr2studio.scores.jsonl"
MAX_SCORES_BYTES = 64 * 1024 * 1024  # a scores file larger than this is refused, never read into memory

log = logging.getLogger(__name__)
_DIMENSIONS = ("musicality", "lyric_accuracy", "style_similarity", "audio_quality")


class ScoreStoreError(ValueError):
    """A score record or scores file that cannot be written or read; the message names the file and line."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def score_record(take: str, scores: Mapping[str, float | None], details: Mapping[str, Any], *,
                 time: str | None = None) -> dict[str, Any]:
    """A checked record: every dimension present (``None`` when unmeasured), each score in [0, 1]."""
    if not isinstance(take, str) or not take or "\n" in take:
        raise ScoreStoreError(f"take must be a take name, got {take!r}")
    out: dict[str, float | None] = {}
    for dim in _DIMENSIONS:
        v = scores.get(dim)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ScoreStoreError(f"take {take!r}: score {dim} must be in [0, 1] or null, got {v!r}")
        out[dim] = None if v is None else float(v)
    unknown = sorted(set(scores) - set(_DIMENSIONS))
    if unknown:
        raise ScoreStoreError(f"take {take!r}: unknown score dimensions {unknown}; expected {list(_DIMENSIONS)}")
    return {"take": take, "time": time or _now(), "scores": out, "details": _jsonable(dict(details))}


def _target(project: str | os.PathLike) -> Path:
    try:
        root = resolve_root(project, what="project folder")
        if not root.is_dir():
            raise ScoreStoreError(f"project {root} is not a folder")
        return check_file_target(root, SCORES_NAME, "scores file")
    except ConfineError as exc:
        raise ScoreStoreError(str(exc)) from None


def append_scores(project: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Append ``records`` (from :func:`score_record`) to the project's scores file in one locked write."""
    target = _target(project)
    payload = "".join(json.dumps(dict(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    if payload:
        append_lines(target, payload.encode("utf-8"), MAX_SCORES_BYTES, ScoreStoreError)
    return target


def parse_score_line(line: str, where: str) -> dict[str, Any]:
    """One line of the scores file as ``{"take", "time", "scores", "details"}``, checked: ``take`` and ``time``
    text, every score a number in [0, 1] or null (missing dimensions are null). ``where`` names the line."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ScoreStoreError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("take"), str) or not isinstance(rec.get("time"), str) \
            or not isinstance(rec.get("scores"), dict):
        raise ScoreStoreError(f"{where}: a score line needs 'take' and 'time' (text) and 'scores' (an object)")
    scores: dict[str, float | None] = {}
    for dim in _DIMENSIONS:
        value = rec["scores"].get(dim)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or not 0.0 <= float(value) <= 1.0):
            raise ScoreStoreError(f"{where}: score {dim} must be a number in [0, 1] or null, got {value!r:.40}")
        scores[dim] = None if value is None else float(value)
    details = rec.get("details")
    return {"take": rec["take"], "time": rec["time"], "scores": scores,
            "details": details if isinstance(details, dict) else {}}


def read_scores(project: str | os.PathLike, *, strict: bool = True) -> list[dict[str, Any]]:
    """Every record of the project's scores file, oldest first (empty when there is none).

    ``strict``: a malformed line is an error naming the file and line; otherwise it is logged and skipped
    (a page that shows scores should not go blank because another tool wrote one bad line).
    """
    target = _target(project)
    data = read_lines(target, MAX_SCORES_BYTES, ScoreStoreError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScoreStoreError(f"{target}: not UTF-8 text ({exc})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse_score_line(line, f"{target}:{n}"))
        except ScoreStoreError as exc:
            if strict:
                raise
            log.warning("%s; skipped", exc)
    return out


def newest_scores(project: str | os.PathLike, *, strict: bool = True) -> dict[str, dict[str, Any]]:
    """The newest record per take (the latest ``time``; the later line on a tie), in first-seen order."""
    newest: dict[str, dict[str, Any]] = {}
    for rec in read_scores(project, strict=strict):
        if rec["take"] not in newest or rec["time"] >= newest[rec["take"]]["time"]:
            newest[rec["take"]] = rec
    return newest
