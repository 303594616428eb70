"""Music theory for the procedural songs: key names, scales, diatonic chords and progressions.

Pitches are MIDI note numbers (69 = A4 = 440 Hz); pitch classes are 0..11 with 0 = C. A chord is a
tuple of pitch-class offsets from the tonic, so it can be voiced in any octave.
"""
from __future__ import annotations

import re

import numpy as np

__all__ = [
    "MAJOR_SCALE",
    "MINOR_SCALE",
    "MODES",
    "PROGRESSIONS",
    "key_name",
    "parse_key",
    "scale_of",
    "chord_of",
    "midi_to_hz",
]

MAJOR_SCALE: tuple[int, ...] = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE: tuple[int, ...] = (0, 2, 3, 5, 7, 8, 10)  # natural minor
MODES: tuple[str, ...] = ("major", "minor")

# Conventional spellings: flats where the key signature uses flats.
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_RE = re.compile(r"^\s*([A-Ga-g])\s*([#♯b♭]?)\s*(major|minor|maj|min|m)?\s*$", re.IGNORECASE)

# Chord progressions as scale degrees (0-based), one chord per half bar. Degree 7 in minor means the major dominant (V with a
# raised leading tone, from harmonic minor), which makes a minor key audible as minor.
DOMINANT_MAJOR = 7
PROGRESSIONS: dict[str, dict[str, tuple[tuple[int, ...], ...]]] = {
    "major": {
        "intro": ((0, 3, 0, 4), (0, 0, 3, 4), (0, 5, 3, 4)),
        "verse": ((0, 5, 3, 4), (0, 3, 0, 4), (0, 3, 4, 0), (0, 2, 3, 4)),
        "chorus": ((3, 4, 0, 0), (0, 4, 5, 3), (3, 0, 4, 0), (0, 3, 4, 0)),
        "bridge": ((5, 3, 0, 4), (1, 4, 0, 5), (3, 4, 5, 4), (5, 2, 3, 4)),
        "outro": ((3, 4, 0, 0), (5, 3, 4, 0), (1, 4, 0, 0)),
    },
    "minor": {
        "intro": ((0, 5, 0, DOMINANT_MAJOR), (0, 3, 0, DOMINANT_MAJOR), (0, 0, 5, DOMINANT_MAJOR)),
        "verse": ((0, 5, 3, DOMINANT_MAJOR), (0, 3, 0, DOMINANT_MAJOR), (0, 6, 5, DOMINANT_MAJOR), (0, 5, 2, DOMINANT_MAJOR)),
        "chorus": ((5, 2, 3, DOMINANT_MAJOR), (0, 3, 5, DOMINANT_MAJOR), (5, 6, 0, DOMINANT_MAJOR), (3, DOMINANT_MAJOR, 0, 0)),
        "bridge": ((3, 6, 2, 5), (5, 6, 0, 0), (3, DOMINANT_MAJOR, 0, 5), (2, 6, 3, DOMINANT_MAJOR)),
        "outro": ((5, DOMINANT_MAJOR, 0, 0), (3, DOMINANT_MAJOR, 0, 0), (5, 6, DOMINANT_MAJOR, 0)),
    },
}


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


def scale_of(mode: str) -> tuple[int, ...]:
    """The seven pitch-class offsets of ``mode`` (natural minor for ``"minor"``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return MAJOR_SCALE if mode == "major" else MINOR_SCALE


def chord_of(degree: int, mode: str) -> tuple[int, int, int]:
    """Diatonic triad on scale ``degree`` as semitone offsets from the tonic (root first, ascending)."""
    scale = scale_of(mode)
    if mode == "minor" and degree == DOMINANT_MAJOR:
        return (7, 11, 14)
    if not 0 <= degree < 7:
        raise ValueError(f"scale degree must be 0..6 (or {DOMINANT_MAJOR} in minor), got {degree}")
    notes = []
    for step in (0, 2, 4):
        idx = degree + step
        notes.append(scale[idx % 7] + 12 * (idx // 7))
    return notes[0], notes[1], notes[2]


def midi_to_hz(midi: float | np.ndarray) -> float | np.ndarray:
    """Equal temperament, A4 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)
