"""Automatic scores of takes on the paper's four quality dimensions, each in [0, 1].

:mod:`~dr2studio.scoring.signal` measures what needs no downloaded weights (tempo and key against the
style text, clipping, loudness, flatness, section energy against the plan); :mod:`~dr2studio.scoring.models`
holds the optional model-based scorers (ASR phoneme error rate, Audiobox-Aesthetics, MuQ-MuLan), loaded
only when asked for; :mod:`~dr2studio.scoring.store` appends scores to a project's
``dr2studio.scores.jsonl``. Mappings to [0, 1] are documented in ``docs/evaluation.md``.
"""
from __future__ import annotations

from dr2studio.scoring.signal import DIMENSIONS, PLANNED_ENERGY, PlannedSection, TakeScore, score_signal, sections_from_lyrics

__all__ = ["DIMENSIONS", "PLANNED_ENERGY", "PlannedSection", "TakeScore", "score_signal", "sections_from_lyrics"]
