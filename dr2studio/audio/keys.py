"""Musical key names: spelling a tonic pitch class and parsing key texts such as ``"F# minor"``.

Pitch classes are 0..11 with 0 = C. Lives in the product because the key estimate of a reference
recording (:func:`dr2studio.audio.features.estimate_key`) is reported by name.
"""
from __future__ import annotations

import re

__all__ = ["MODES", "key_name", "key_score", "key_signature", "parse_key"]

MODES: tuple[str, ...] = ("major", "minor")

# Conventional spellings: flats where the key signature uses flats.
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_RE = re.compile(r"^\s*([A-Ga-g])\s*([#♯b♭]?)\s*(major|minor|maj|min|m)?\s*$", re.IGNORECASE)


def key_name(tonic_pc: int, mode: str) -> str:
    """Tonic spelling for ``tonic_pc`` (0..11) in ``mode``: e.g. ``key_name(10, "major") == "Bb"``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = _MAJOR_NAMES if mode == "major" else _MINOR_NAMES
    return names[int(tonic_pc) % 12]


def parse_key(text: str) -> tuple[int, str]:
    """Parse ``"A minor"``, ``"F# major"``, ``"Bbm"`` or ``"Eb"`` (major) -> ``(tonic_pc, mode)``."""
    m = _KEY_RE.match(text)
    if not m:
        raise ValueError(f"cannot parse key {text!r}: expected a tonic letter A-G, optional #/b, and major/minor")
    letter, accidental, mode = m.groups()
    pc = _LETTER_PC[letter.upper()]
    if accidental in ("#", "♯"):
        pc += 1
    elif accidental in ("b", "♭"):
        pc -= 1
    mode_l = (mode or "major").lower()
    return pc % 12, "minor" if mode_l in ("minor", "min", "m") else "major"


def key_signature(pc: int, mode: str) -> int:
    """Position on the circle of fifths of the key signature (relative keys share one)."""
    major_pc = pc if mode == "major" else (pc + 3) % 12
    return (major_pc * 7) % 12


def key_score(estimate: tuple[int, str], reference: tuple[int, str]) -> float:
    """MIREX key score of ``(tonic pitch class, mode)`` pairs: 1 same key, 0.5 a fifth away (same mode),
    0.3 relative, 0.2 parallel, else 0 (the standard key-evaluation weights)."""
    (pe, me), (pr, mr) = estimate, reference
    if (pe, me) == (pr, mr):
        return 1.0
    if me == mr and (pe - pr) % 12 in (5, 7):
        return 0.5
    if me != mr and key_signature(pe, me) == key_signature(pr, mr):
        return 0.3
    if pe == pr:
        return 0.2
    return 0.0
