"""Error measures that compare measured audio with what a style text or a song plan asked for: tempo
error, key distance and score, and how well section levels follow a planned energy pattern.

Used by ``benchmarks/demo_quality.py`` and the tests to check that a model follows its conditioning. The
measurements themselves (tempo, key, section levels, flatness) live in the product,
:mod:`dr2studio.audio.features`, and are re-exported here so a benchmark needs one import.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dr2studio.audio.features import (
    beat_strength,
    chroma,
    estimate_key,
    estimate_tempo,
    onset_strength,
    section_energy,
    spectral_flatness,
)
from dr2studio.audio import keys
from dr2studio.audio.keys import parse_key

__all__ = [
    "onset_strength",
    "estimate_tempo",
    "beat_strength",
    "tempo_error",
    "chroma",
    "estimate_key",
    "key_distance",
    "key_score",
    "section_energy",
    "energy_pattern_correlation",
    "spectral_flatness",
]


def tempo_error(estimate: float, reference: float, *, octave: bool = True) -> float:
    """Relative tempo error ``|est - ref| / ref``; with ``octave`` the best of est, 2*est and est/2."""
    if reference <= 0:
        raise ValueError(f"reference tempo must be positive, got {reference}")
    if estimate <= 0:
        return 1.0
    factors = (1.0, 2.0, 0.5) if octave else (1.0,)
    return min(abs(estimate * f - reference) / reference for f in factors)


def _key(k: Any) -> tuple[int, str]:
    """Accept ``(tonic, mode)`` with the tonic as a name or pitch class, or a text like ``"A minor"``."""
    if isinstance(k, str):
        return parse_key(k)
    tonic, mode = k[0], k[1]
    if mode not in ("major", "minor"):
        raise ValueError(f"mode must be 'major' or 'minor', got {mode!r}")
    pc = parse_key(str(tonic))[0] if isinstance(tonic, str) else int(tonic) % 12
    return pc, mode


def key_distance(a: Any, b: Any) -> float:
    """Circle-of-fifths steps between the key signatures, plus 0.5 when the modes differ.

    0 = same key, 0.5 = relative major/minor, 1 = a fifth apart in the same mode, 3.5 = parallel key.
    Keys are ``(tonic, mode)`` pairs or texts like ``"F# minor"``.
    """
    (pa, ma), (pb, mb) = _key(a), _key(b)
    d = abs(keys.key_signature(pa, ma) - keys.key_signature(pb, mb))
    return float(min(d, 12 - d)) + (0.5 if ma != mb else 0.0)


def key_score(estimate: Any, reference: Any) -> float:
    """MIREX key score (:func:`dr2studio.audio.keys.key_score`) of keys given as pairs or texts."""
    return keys.key_score(_key(estimate), _key(reference))


def energy_pattern_correlation(measured_db: Sequence[float], pattern: Sequence[float]) -> float:
    """Pearson correlation between measured section levels (dB) and a planned energy pattern (linear).

    The pattern is taken to dB too, so the figure compares loudness ratios between sections. Returns
    0.0 when either side is constant (no pattern to follow) or there are fewer than two sections.
    """
    m = np.asarray(measured_db, dtype=np.float64)
    p = 20.0 * np.log10(np.maximum(np.asarray(pattern, dtype=np.float64), 1e-6))
    if m.shape != p.shape:
        raise ValueError(f"measured has {m.size} sections but the pattern has {p.size}")
    if m.size < 2 or m.std() < 1e-9 or p.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(m, p)[0, 1])
