"""Style text of a synthetic song, and reading the measurable facts back out of a style text.

The generator writes ``"<genre>, <tempo> bpm, <tonic> <mode>, <female|male> vocal, <instrument>, ..."``,
for example ``"pop, 112 bpm, A minor, female vocal, piano, pad, bass, drums"``. :func:`parse_style`
finds the tempo and key in any text that follows that convention (order and extra tags do not matter).
"""
from __future__ import annotations

import dataclasses
import re

from dr2studio.lab.synth.theory import key_name, parse_key

__all__ = ["StyleFacts", "describe_style", "parse_style"]

_BPM_RE = re.compile(r"(\d+(?:\.\d+)?)\s*bpm\b", re.IGNORECASE)
_KEY_RE = re.compile(r"(?<![A-Za-z])([A-G][#♯b♭]?)\s+(major|minor)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class StyleFacts:
    """What a style text states: tempo in bpm, tonic pitch class (0 = C) and mode; ``None`` if absent."""

    tempo: float | None
    tonic_pc: int | None
    mode: str | None


def describe_style(genre: str, tempo: int, tonic_pc: int, mode: str, vocal: str, instruments: tuple[str, ...]) -> str:
    """Comma-separated tags naming every choice the generator made."""
    tags = [genre, f"{tempo} bpm", f"{key_name(tonic_pc, mode)} {mode}", f"{vocal} vocal", *instruments]
    return ", ".join(tags)


def parse_style(text: str) -> StyleFacts:
    """Tempo and key stated in ``text`` (``"120 bpm"``, ``"F# minor"``); missing facts are ``None``."""
    bpm = _BPM_RE.search(text)
    key = _KEY_RE.search(text)
    tonic, mode = parse_key(f"{key.group(1)} {key.group(2)}") if key else (None, None)
    return StyleFacts(float(bpm.group(1)) if bpm else None, tonic, mode)
