"""Tempo conform: fit a take to the project's tempo and put its first downbeat on a bar line.

A take is analysed once, on its mix (:func:`plan_conform`): librosa's beat tracker finds the beats,
a straight line through them gives the tempo (more exact than the tracker's tempogram bin), the beat
of the bar with the strongest low-frequency onsets is taken as the downbeat, and the key is estimated
with :func:`dr2studio.audio.features.estimate_key`. The resulting :class:`ConformPlan` is then applied
to every stem alike (:func:`apply_conform`): pedalboard's ``time_stretch`` at the same ratio and the
same start shift, so the stems stay sample-aligned with one another.

Octaves: a beat tracker may hear half or double time. The detected tempo is folded by octaves into
``[target / sqrt(2), target * sqrt(2))``, so a take is never stretched by more than ~41 % either way.
Where that picks the wrong octave (a real song whose pulse reads 68 as well as 136 bpm), the producer
states the take's own tempo (``source_bpm``): the reading is folded to that octave instead, and a stated
tempo that no octave of the reading matches within :data:`SOURCE_TOLERANCE` is refused.

Downbeat alignment: bar lines lie every ``beats_per_bar`` beats of the target tempo from timeline 0.
The take stays at its ``position_seconds``; its audio is padded with silence (or has its lead-in
trimmed) at the start so that its first downbeat lands on the bar line nearest to where it would fall,
no earlier than the take's position. The shift is at most half a bar, and nothing after the first
downbeat is ever cut.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dr2studio.requests import TEMPO

__all__ = [
    "warm_up",
    "ConformError",
    "BeatAnalysis",
    "ConformPlan",
    "ANALYSIS_RATE",
    "MIN_BEAT_STRENGTH",
    "SOURCE_TOLERANCE",
    "analyse_beats",
    "fold_tempo",
    "plan_conform",
    "apply_conform",
    "conform_wanted",
]

log = logging.getLogger(__name__)

#: librosa's beat tracker runs on a mono copy at this rate (its default; the tracker is tuned for it).
ANALYSIS_RATE = 22050
_HOP = 256  # ~11.6 ms at 22.05 kHz: finer beat times than librosa's default 512
_LOW_HZ = 200.0  # downbeats are told by kick / bass onsets below this
#: :func:`dr2studio.audio.features.beat_strength` below which a take has no beat to conform: music reads
#: 0.5-0.8 (the real recording 0.55, a rendered folk tune 0.82), a drone 0.0, white noise ~0.02.
MIN_BEAT_STRENGTH = 0.25
#: How far (relative) a stated source tempo may lie from the nearest octave of the tempo found.
SOURCE_TOLERANCE = 0.06


class ConformError(ValueError):
    """A take that cannot be conformed: no beat found, audio too short, or not finite."""


@dataclasses.dataclass(frozen=True)
class BeatAnalysis:
    """Beats of a take: ``bpm`` (from the beat grid's slope), ``beats`` (seconds), ``first_downbeat`` (seconds,
    extrapolated back to the earliest one on the grid) and the ``key`` estimate (``"A minor"``)."""

    bpm: float
    beats: np.ndarray
    first_downbeat: float
    key: str | None


@dataclasses.dataclass(frozen=True)
class ConformPlan:
    """What :func:`apply_conform` does to every stem of one take, and what the manifest records.

    ``stretch_ratio`` is output length / input length (``detected_bpm / target_bpm``; pedalboard's speed
    factor is its inverse). ``offset_seconds`` is the silence added (> 0) or lead-in trimmed (< 0) at
    the start after stretching. ``first_downbeat_seconds`` is where the first downbeat lies in the
    delivered audio, so ``position_seconds + first_downbeat_seconds`` is on a bar line.
    """

    detected_bpm: float
    target_bpm: float
    stretch_ratio: float
    key: str | None
    first_downbeat_seconds: float
    offset_seconds: float
    source_bpm: float | None = None  # the take's tempo as stated by the producer, when given

    def manifest(self) -> dict[str, Any]:
        """The take's ``conform`` entry in ``dr2studio.json`` (docs/manifest.md)."""
        return {"detected_bpm": round(self.detected_bpm, 3), "target_bpm": round(self.target_bpm, 3),
                "stretch_ratio": round(self.stretch_ratio, 6), "key": self.key,
                "first_downbeat_seconds": round(self.first_downbeat_seconds, 4),
                "offset_seconds": round(self.offset_seconds, 4),
                "source_bpm": None if self.source_bpm is None else round(self.source_bpm, 3)}


def _mono(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    x = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ConformError(f"audio must be [n] or [channels, n], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConformError("audio holds NaN or infinite samples")
    return x.astype(np.float32)


def fold_tempo(bpm: float, target: float) -> float:
    """``bpm`` times a power of two, in ``[target / sqrt(2), target * sqrt(2))`` (half / double time resolved)."""
    if not (bpm > 0 and target > 0):
        raise ConformError(f"tempi must be positive, got {bpm} and {target}")
    return bpm * 2.0 ** math.floor(0.5 - math.log2(bpm / target))


def _grid(beats: np.ndarray) -> tuple[float, float]:
    """``(first beat time, period)`` of the straight line through ``beats``; a skipped beat keeps its index."""
    gaps = np.diff(beats)
    period = float(np.median(gaps))
    index = np.round((beats - beats[0]) / period)
    slope, intercept = np.polyfit(index, beats, 1)
    return float(intercept), float(slope)


def analyse_beats(audio: torch.Tensor | np.ndarray, sample_rate: int, *, beats_per_bar: int = 4,
                  start_bpm: float = 120.0) -> BeatAnalysis:
    """Beats, tempo, first downbeat and key of ``audio`` (``[n]`` or ``[C, n]`` at ``sample_rate``).

    Raises :class:`ConformError` when no steady beat is found (silence, a drone, noise).
    """
    import librosa

    from dr2studio.audio.features import beat_strength, estimate_key
    from dr2studio.audio.io import resample

    x = _mono(audio)
    seconds = len(x) / sample_rate
    if seconds < 2.0:
        raise ConformError(f"the take is {seconds:.2f} s long; at least 2 s are needed to find its beat")
    y = resample(torch.from_numpy(x)[None], int(sample_rate), ANALYSIS_RATE)[0].numpy()
    onset = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=_HOP)
    _, frames = librosa.beat.beat_track(onset_envelope=onset, sr=ANALYSIS_RATE, hop_length=_HOP,
                                        start_bpm=float(start_bpm), units="frames")
    frames = np.asarray(frames, dtype=int)
    if len(frames) < 4 or not np.any(onset > 0):
        raise ConformError("no steady beat found in the take (silence, a drone or noise?); it cannot be conformed")
    beats = librosa.frames_to_time(frames, sr=ANALYSIS_RATE, hop_length=_HOP)
    first, period = _grid(beats)
    if not (0.06 < period < 3.0):
        raise ConformError(f"the beat grid found has a period of {period:.3f} s, not a musical tempo")
    strength = beat_strength(x, int(sample_rate), 60.0 / period)
    if strength < MIN_BEAT_STRENGTH:  # the tracker always returns beats; a drone or noise has no pulse at them
        raise ConformError(f"no steady beat found in the take (pulse strength {strength:.2f} at {60 / period:.1f} bpm, "
                           f"below {MIN_BEAT_STRENGTH}); it cannot be conformed")
    # downbeat: the phase of the bar whose beats carry the most low-frequency onset energy
    low = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=_HOP, fmax=_LOW_HZ, n_mels=32)
    bpb = max(1, int(beats_per_bar))
    index = np.round((beats - first) / period).astype(int)
    score = [float(low[frames[index % bpb == phase]].mean()) if np.any(index % bpb == phase) else -1.0
             for phase in range(bpb)]
    phase = int(np.argmax(score))
    bar = bpb * period
    downbeat = (first + phase * period) % bar  # the earliest downbeat on the grid, also in a beatless intro
    if downbeat > bar - 0.5 * period:
        downbeat -= bar  # within half a beat before 0: the song starts on it
    downbeat = max(0.0, downbeat)
    tonic, mode, _ = estimate_key(x, int(sample_rate))
    return BeatAnalysis(bpm=60.0 / period, beats=beats, first_downbeat=float(downbeat), key=f"{tonic} {mode}")


def plan_conform(audio: torch.Tensor | np.ndarray, sample_rate: int, target_bpm: float, *,
                 position_seconds: float = 0.0, beats_per_bar: int = 4,
                 analysis: BeatAnalysis | None = None, source_bpm: float | None = None) -> ConformPlan:
    """The conform of one take (analysed on ``audio``, its mix) to ``target_bpm`` at ``position_seconds``.

    ``target_bpm`` and ``source_bpm`` (the take's own tempo, stated where the beat is ambiguous) are
    checked by the request layer's tempo limit (a tempo of 0 is refused there).
    """
    target = float(TEMPO.check(target_bpm, "conform_bpm"))
    source = None if source_bpm is None else float(TEMPO.check(source_bpm, "source_bpm"))
    if isinstance(position_seconds, bool) or not (float(position_seconds) >= 0.0 and math.isfinite(position_seconds)):
        raise ConformError(f"timeline position must be a finite number >= 0 seconds, got {position_seconds!r}")
    beats = analysis or analyse_beats(audio, sample_rate, beats_per_bar=beats_per_bar, start_bpm=source or target)
    if source is None:
        detected = fold_tempo(beats.bpm, target)
    else:  # the producer's octave; the tracker's reading for the exact value
        detected = fold_tempo(beats.bpm, source)
        if abs(detected / source - 1.0) > SOURCE_TOLERANCE:
            raise ConformError(f"the stated source tempo {source:g} bpm does not match the beat found in the take "
                               f"({beats.bpm:.1f} bpm, or half / double that); leave it out or check it")
    # a folded tempo means the tracker's beat was half or double ours; the bar grid is unchanged in seconds
    ratio = detected / target  # output length / input length
    downbeat_out = beats.first_downbeat * ratio
    bar = max(1, int(beats_per_bar)) * 60.0 / target
    p = float(position_seconds)
    first_line = math.ceil(p / bar - 1e-9)
    line = max(first_line, round((p + downbeat_out) / bar)) * bar
    offset = line - (p + downbeat_out)
    return ConformPlan(detected_bpm=detected, target_bpm=target, stretch_ratio=ratio, key=beats.key,
                       first_downbeat_seconds=line - p, offset_seconds=offset, source_bpm=source)


def apply_conform(audio: torch.Tensor, sample_rate: int, plan: ConformPlan) -> torch.Tensor:
    """``audio [C, N]`` time-stretched by ``plan.stretch_ratio`` (pitch kept) and shifted by ``plan.offset_seconds``."""
    try:
        from pedalboard import time_stretch
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ConformError("tempo conform needs pedalboard (pip install pedalboard)") from exc
    x = audio.detach().float().cpu().numpy()
    if x.ndim != 2:
        raise ConformError(f"audio must be [channels, n], got shape {tuple(x.shape)}")
    if abs(plan.stretch_ratio - 1.0) > 1e-6:
        x = time_stretch(np.ascontiguousarray(x, dtype=np.float32), float(sample_rate), 1.0 / plan.stretch_ratio)
        x = np.asarray(x, dtype=np.float32).reshape(audio.shape[0], -1)
    shift = int(round(plan.offset_seconds * sample_rate))
    if shift > 0:
        x = np.concatenate([np.zeros((x.shape[0], shift), np.float32), x], axis=1)
    elif shift < 0:
        x = x[:, -shift:]
    return torch.from_numpy(np.ascontiguousarray(x))


def conform_wanted(requested: bool | None, target_bpm: float | None, settings: Mapping[str, Any] | None) -> bool:
    """Whether to conform a take: what the user asked (``requested``), else the default by model.

    The default is off for a song a model rendered on its tempo clock at the target tempo (it already
    plays on the grid; ``settings["tempo_clock_bpm"]``, written by the Studio), and on whenever a target
    tempo is known otherwise. Asking for it without a target tempo is an error.
    """
    if requested is not None:
        if requested and target_bpm is None:
            raise ConformError("conform needs a target tempo (conform_bpm, --conform-bpm, or the session's tempo)")
        return bool(requested)
    if target_bpm is None:
        return False
    clock = (settings or {}).get("tempo_clock_bpm")
    if isinstance(clock, (int, float)) and not isinstance(clock, bool) and abs(float(clock) - float(target_bpm)) < 0.01:
        log.info("take was rendered on the model's tempo clock at %g bpm: not conformed", float(clock))
        return False
    return True


def warm_up() -> float:
    """Compile (and cache on disk) every numba kernel of librosa that a conform runs; returns the seconds.

    librosa's beat tracker and onset code are numba functions compiled on first use, ~17 s on two cores,
    and the compiler holds the GIL while it works. ``scripts/setup.sh`` calls this once, so the kernels are
    cached in the virtualenv and a producer's first conformed take does not stall the bridge.
    """
    import time

    started = time.perf_counter()
    rate, bpm = 44100, 120.0
    t = np.arange(int(rate * 6.0)) / rate
    clicks = np.zeros_like(t)
    for beat in range(int(6.0 * bpm / 60.0)):  # a kick-like click on every beat, louder on the one
        n = int(beat * 60.0 / bpm * rate)
        length = min(2000, len(t) - n)
        clicks[n:n + length] += (1.0 if beat % 4 == 0 else 0.6) * np.sin(2 * np.pi * 60.0 * t[:length]) * np.exp(-t[:length] * 30.0)
    audio = torch.from_numpy(np.stack([clicks, clicks]).astype(np.float32))
    plan = plan_conform(audio, rate, 96.0)
    apply_conform(audio, rate, plan)
    try:  # the path of a take without a steady beat, too
        plan_conform(torch.zeros(2, rate * 4), rate, 96.0)
    except ConformError:
        pass
    return time.perf_counter() - started
