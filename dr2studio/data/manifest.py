"""Song manifests (JSONL) and audio loading shared by the data-prep and VAE-training stages.

A manifest line describes one song::

    {"id": "song-0001", "audio": "songs/0001.wav", "lyrics": "[verse]\\nla la", "style": "pop, 120 bpm",
     "language": "en", "duration": 31.2}

``lyrics`` may be given as text or as ``lyrics_path`` (a .lrc/.txt file); ``style`` as text and/or
``style_audio`` (an audio file) or ``style_embedding`` (a .npy/.pt/.safetensors vector). Relative
paths are resolved against the manifest's folder. ``id`` defaults to the audio file stem.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = ["ManifestRow", "ManifestError", "read_manifest", "load_audio", "BadRows"]

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest file cannot be used at all (missing, or no usable line)."""


@dataclasses.dataclass
class ManifestRow:
    id: str
    audio: str
    lyrics: str = ""
    style: str = ""
    style_audio: str = ""
    style_embedding: str = ""
    language: str = ""
    duration: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BadRows:
    """Counts rows dropped for a reason, keeping a few examples of each for the report."""

    def __init__(self, keep: int = 5) -> None:
        self.keep = keep
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.keep:
            ex.append(where)

    def merge(self, other: "BadRows") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            self.examples.setdefault(reason, []).extend(other.examples.get(reason, [])[: self.keep])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(self.counts), "examples": dict(self.examples)}


def _resolve(base: Path, value: str) -> str:
    if not value:
        return ""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def read_manifest(path: str | os.PathLike, bad: BadRows | None = None) -> list[ManifestRow]:
    """Parse a JSONL manifest; malformed lines are counted in ``bad`` (with ``file:line``), not fatal."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    bad = bad if bad is not None else BadRows()
    base = path.parent
    rows: list[ManifestRow] = []
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            where = f"{path}:{n}"
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.add("malformed json", f"{where}: {exc.msg}")
                continue
            if not isinstance(data, dict) or not data.get("audio"):
                bad.add("no audio path", where)
                continue
            lyrics = data.get("lyrics") or ""
            if not lyrics and data.get("lyrics_path"):
                try:
                    lyrics = Path(_resolve(base, data["lyrics_path"])).read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError) as exc:
                    bad.add("unreadable lyrics", f"{where}: {exc}")
                    continue
            audio = _resolve(base, str(data["audio"]))
            rows.append(
                ManifestRow(
                    id=str(data.get("id") or Path(audio).stem),
                    audio=audio,
                    lyrics=str(lyrics),
                    style=str(data.get("style") or ""),
                    style_audio=_resolve(base, str(data.get("style_audio") or "")),
                    style_embedding=_resolve(base, str(data.get("style_embedding") or "")),
                    language=str(data.get("language") or ""),
                    duration=float(data["duration"]) if data.get("duration") is not None else None,
                )
            )
    if not rows:
        raise ManifestError(f"{path}: no usable rows ({bad.total} bad: {bad.counts})")
    return rows


def load_audio(path: str | os.PathLike, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` with soundfile, mix to mono and resample: -> float32 ``[n]`` at ``sample_rate``.

    ``max_seconds`` stops reading early (long songs are cut, not loaded whole). Raises
    ``RuntimeError``/``sf.LibsndfileError`` for unreadable files.
    """
    with sf.SoundFile(str(path)) as f:
        frames = -1 if max_seconds is None else int(np.ceil(max_seconds * f.samplerate))
        data = f.read(frames=frames, dtype="float32", always_2d=True)
        sr = f.samplerate
    mono = data.mean(axis=1)
    if sr != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), sr, sample_rate).numpy()
    if max_seconds is not None:
        mono = mono[: int(round(max_seconds * sample_rate))]
    return np.ascontiguousarray(mono, dtype=np.float32)
