"""Music theory for the procedural songs: scales, diatonic chords and progressions.

Pitches are MIDI note numbers (69 = A4 = 440 Hz); pitch classes are 0..11 with 0 = C. A chord is a
tuple of pitch-class offsets from the tonic, so it can be voiced in any octave. Key names and key
parsing come from the product (:mod:`dr2studio.audio.keys`) and are re-exported here.
"""
from __future__ import annotations

import numpy as np

from dr2studio.audio.keys import MODES, key_name, parse_key

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
