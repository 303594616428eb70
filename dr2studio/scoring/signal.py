"""Signal-level scores of a take: measured from the audio alone, no downloaded weights, run everywhere.

What a take is compared with is what it was asked to be: the tempo and key a style text states
("pop, 120 bpm, A minor"), and the section plan its LRC lyrics give (section kinds and times). Each
measurement is kept raw in ``details`` and mapped to [0, 1]; the mappings and how they combine into the
four dimensions are documented in ``docs/evaluation.md`` (one home: the constants below).

Lyric accuracy needs an ASR model (:mod:`dr2studio.scoring.models`): it stays ``None`` here.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dr2studio.audio.effects import integrated_loudness
from dr2studio.audio.features import beat_strength, estimate_key, estimate_tempo, section_energy, spectral_flatness
from dr2studio.audio.keys import key_name, key_score, parse_key

__all__ = [
    "DIMENSIONS",
    "PLANNED_ENERGY",
    "PlannedSection",
    "TakeScore",
    "sections_from_lyrics",
    "score_signal",
    "tempo_error",
    "key_score",
    "loudness_range",
]

DIMENSIONS: tuple[str, ...] = ("musicality", "lyric_accuracy", "style_similarity", "audio_quality")

#: Relative energy a pop arrangement gives each section kind (chorus loudest, intro/outro quietest):
#: the plan a take's section levels are correlated with. Kinds not listed are left out of the contour.
PLANNED_ENERGY: dict[str, float] = {
    "intro": 0.45, "verse": 0.65, "chorus": 1.0, "hook": 1.0, "bridge": 0.75, "inst": 0.75, "solo": 0.8,
    "break": 0.5, "outro": 0.5,
}

# mapping constants (docs/evaluation.md explains each)
TEMPO_ZERO_ERROR = 0.08  # relative tempo error (octaves forgiven) that scores 0; 4 % scores 0.5
BEAT_FULL = 0.6  # beat strength (onset autocorrelation at the beat) that scores 1; real songs read 0.6-0.8
TONAL_FULL = 0.8  # key-profile correlation that scores 1 (noise ~0, a clear song > 0.6)
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CLIP_ZERO_SHARE = 0.001  # share of clipped samples that scores 0
LOUDNESS_OK = (-24.0, -8.0)  # LUFS: integrated loudness inside scores 1
LOUDNESS_FALLOFF = 12.0  # LU outside that range to reach 0
LRA_OK = (1.0, 18.0)  # LU: loudness range inside scores 1 (a flat wall of sound or wild swings lose)
LRA_FALLOFF = 8.0
FLATNESS_OK = 0.05  # spectral flatness at or under this scores 1 (music < 0.1, white noise 0.56)
FLATNESS_ZERO = 0.3


@dataclasses.dataclass(frozen=True)
class PlannedSection:
    """One section of the plan: ``kind`` (a structure tag), its span in seconds and its planned energy."""

    kind: str
    start_s: float
    end_s: float
    energy: float


@dataclasses.dataclass
class TakeScore:
    """Scores per dimension in [0, 1] (``None``: nothing measured that bears on it) and the raw details."""

    scores: dict[str, float | None]
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "details": dict(self.details)}


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def _band(value: float, lo: float, hi: float, falloff: float) -> float:
    """1 inside ``[lo, hi]``, falling linearly to 0 at ``falloff`` outside."""
    if lo <= value <= hi:
        return 1.0
    gap = lo - value if value < lo else value - hi
    return _clip01(1.0 - gap / falloff)


def tempo_error(estimate: float, reference: float) -> float:
    """Relative error of a tempo estimate, octave errors (x2, /2) forgiven; 1.0 when nothing was found."""
    if reference <= 0:
        raise ValueError(f"reference tempo must be positive, got {reference}")
    if estimate <= 0:
        return 1.0
    return min(abs(estimate * f - reference) / reference for f in (1.0, 2.0, 0.5))


def _energy_correlation(measured_db: Sequence[float], planned: Sequence[float]) -> float | None:
    m = np.asarray(measured_db, dtype=np.float64)
    p = 20.0 * np.log10(np.maximum(np.asarray(planned, dtype=np.float64), 1e-6))
    if m.size < 2 or p.std() < 1e-9:
        return None  # no contour planned
    if m.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(m, p)[0, 1])


def sections_from_lyrics(lyrics: str, duration: float) -> list[PlannedSection]:
    """The section plan of LRC ``lyrics``: each tagged section with its span and :data:`PLANNED_ENERGY`.

    A section starts at its earliest time stamp. Untimed sections take their share of the gap between
    the timed ones around them; a trailing untimed one (an outro) starts one median line spacing after
    the last sung line, a leading one (an intro) at 0. Plain lyrics (no time stamps) give no plan.
    """
    from dr2studio.lyrics import parse_lyrics

    doc = parse_lyrics(lyrics or "")
    secs = [s for s in doc.sections if s.kind in PLANNED_ENERGY]
    if not secs or all(s.first_time is None for s in secs):
        return []
    line_times = sorted(t for s in doc.sections for ts in s.times for t in ts)
    spacing = float(np.median(np.diff(line_times))) if len(line_times) >= 2 else 2.0
    starts: list[float | None] = [s.first_time for s in secs]
    # a trailing run of untimed sections begins after the last sung line
    last_timed = max(i for i, t in enumerate(starts) if t is not None)
    tail_start = (line_times[-1] + spacing) if line_times else duration
    if starts[0] is None:
        starts[0] = 0.0
    i = 0
    while i < len(starts):
        if starts[i] is not None:
            i += 1
            continue
        j = i
        while j < len(starts) and starts[j] is None:
            j += 1
        lo = float(starts[i - 1])  # type: ignore[arg-type]
        hi = float(starts[j]) if j < len(starts) else max(min(tail_start, duration), lo)
        if j >= len(starts) and i > last_timed:
            first = min(max(tail_start, lo), duration)
            n = j - i
            step = (duration - first) / n if n else 0.0
            for k in range(i, j):
                starts[k] = first + (k - i) * step
        else:
            n = j - i + 1
            for k in range(i, j):
                starts[k] = lo + (hi - lo) * (k - i + 1) / n
        i = j
    out = []
    for k, s in enumerate(secs):
        start = float(starts[k])  # type: ignore[arg-type]
        end = float(starts[k + 1]) if k + 1 < len(secs) else duration  # type: ignore[arg-type]
        out.append(PlannedSection(s.kind, start, max(start, end), PLANNED_ENERGY[s.kind]))
    return out


def _k_weighted(audio: torch.Tensor, sample_rate: int) -> np.ndarray:
    """``[C, n]`` through the BS.1770 K-weighting (high shelf +4 dB above ~1.7 kHz, high-pass at ~38 Hz),
    designed for ``sample_rate`` by the bilinear transform of the standard's analogue filters."""
    from scipy.signal import lfilter

    x = audio.double().numpy()
    # stage 1: high shelf (f0 1681.97 Hz, gain 3.99984 dB, Q 0.7071752); Vb sets the shelf's midpoint gain
    k, q = math.tan(math.pi * 1681.974450955533 / sample_rate), 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    b = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    x = lfilter(b, a, x, axis=-1)
    # stage 2: high-pass (f0 38.14 Hz, Q 0.5003270)
    k, q = math.tan(math.pi * 38.13547087602444 / sample_rate), 0.5003270373238773
    a0 = 1 + k / q + k * k
    b = [1.0, -2.0, 1.0]
    a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    return lfilter(b, a, x, axis=-1)


def loudness_range(audio: torch.Tensor, sample_rate: int) -> float | None:
    """EBU Tech 3342 loudness range (LU): the spread (10th to 95th percentile) of the short-term
    loudness (3 s windows, every 1 s), windows under -70 LUFS and 20 LU below their mean left out.
    ``None`` for takes shorter than two windows."""
    win, hop = 3 * sample_rate, sample_rate
    if audio.shape[1] < win + hop:
        return None
    power = (_k_weighted(audio, sample_rate) ** 2).sum(0)  # channel weights 1 (L, R)
    csum = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, audio.shape[1] - win + 1, hop)
    ms = (csum[starts + win] - csum[starts]) / win
    st = -0.691 + 10 * np.log10(np.maximum(ms, 1e-30))
    st = st[st > -70.0]
    if st.size < 2:
        return None
    mean = 10 * math.log10(np.mean(10 ** (st / 10)))
    st = st[st > mean - 20.0]
    if st.size < 2:
        return None
    return float(np.percentile(st, 95) - np.percentile(st, 10))


def _least(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(min(vals)) if vals else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def score_signal(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    tempo: float | None = None,
    key: str | tuple[int, str] | None = None,
    sections: Sequence[PlannedSection] = (),
) -> TakeScore:
    """Signal-level scores of ``audio`` (``[n]`` or ``[C, n]``) against a stated ``tempo`` (bpm),
    ``key`` (``"A minor"`` or ``(pitch class, mode)``) and section plan; any of them may be absent.

    Dimensions: ``style_similarity``, the lesser of tempo and key adherence (a take is as close to the
    style as its worst stated fact; ``None`` when neither is stated);
    ``musicality`` from beat strength, tonal clarity and the section energy contour; ``audio_quality``
    from clipping, integrated loudness, loudness range and spectral flatness; ``lyric_accuracy`` None.
    """
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, torch.Tensor) else audio)
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"audio must be [n] or [channels, n] with samples, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample rate must be a positive integer (Hz), got {sample_rate!r}")
    mono = x.mean(0).numpy().astype(np.float64)
    duration = x.shape[1] / sample_rate
    d: dict[str, Any] = {"duration_s": round(duration, 3), "sample_rate": sample_rate}
    part: dict[str, float | None] = {}

    # style: tempo and key against the text
    est_bpm = estimate_tempo(mono, sample_rate)
    d["tempo_estimated"] = round(est_bpm, 2)
    if tempo is not None:
        if not (math.isfinite(tempo) and tempo > 0):
            raise ValueError(f"stated tempo must be a positive number of bpm, got {tempo!r}")
        err = tempo_error(est_bpm, float(tempo))
        d.update(tempo_stated=float(tempo), tempo_error=round(err, 4))
        part["tempo"] = _clip01(1.0 - err / TEMPO_ZERO_ERROR)
        beat = beat_strength(mono, sample_rate, float(tempo))
    else:
        beat = beat_strength(mono, sample_rate, est_bpm) if est_bpm > 0 else 0.0
    d["beat_strength"] = round(beat, 4)
    tonic, mode, corr = estimate_key(mono, sample_rate)
    est_key = parse_key(f"{tonic} {mode}")
    d.update(key_estimated=f"{tonic} {mode}", key_correlation=round(corr, 4))
    if key is not None:
        ref = parse_key(key) if isinstance(key, str) else (int(key[0]) % 12, str(key[1]))
        d["key_stated"] = f"{key_name(*ref)} {ref[1]}"
        part["key"] = key_score(est_key, ref)
        d["key_score"] = part["key"]

    # musicality: pulse, tonality, the plan's energy contour
    part["beat"] = _clip01(beat / BEAT_FULL)
    part["tonal"] = _clip01(corr / TONAL_FULL)
    planned = [s for s in sections if s.start_s + 0.5 <= duration]
    if len(planned) >= 2:
        levels = section_energy(mono, sample_rate, planned)
        r = _energy_correlation(levels, [s.energy for s in planned])
        d.update(section_levels_db=[round(v, 2) for v in levels], section_kinds=[s.kind for s in planned])
        if r is not None:
            d["energy_r"] = round(r, 4)
            part["energy"] = _clip01((r + 1.0) / 2.0)

    # audio quality
    peak = float(x.abs().max())
    clipped = float((x.abs() >= CLIP_LEVEL).float().mean())
    lufs = integrated_loudness(x, sample_rate)
    lra = loudness_range(x, sample_rate)
    flat = spectral_flatness(mono)
    d.update(peak_dbfs=round(20 * math.log10(peak), 2) if peak > 0 else None, clipped_share=round(clipped, 6),
             loudness_lufs=round(lufs, 2) if math.isfinite(lufs) else None,
             loudness_range_lu=None if lra is None else round(lra, 2), spectral_flatness=round(flat, 5))
    part["clipping"] = _clip01(1.0 - clipped / CLIP_ZERO_SHARE)
    part["loudness"] = _band(lufs, *LOUDNESS_OK, LOUDNESS_FALLOFF) if math.isfinite(lufs) else 0.0
    part["loudness_range"] = None if lra is None else _band(lra, *LRA_OK, LRA_FALLOFF)
    part["flatness"] = 0.0 if peak == 0 else _clip01(1.0 - (flat - FLATNESS_OK) / (FLATNESS_ZERO - FLATNESS_OK))

    d["parts"] = {k: None if v is None else round(v, 4) for k, v in part.items()}
    scores: dict[str, float | None] = {
        "musicality": _mean([part["beat"], part["tonal"], part.get("energy")]),
        "lyric_accuracy": None,
        "style_similarity": _least([part.get("tempo"), part.get("key")]),
        "audio_quality": min(_mean([part["loudness"], part["loudness_range"], part["flatness"]]) or 0.0,
                             part["clipping"]),
    }
    return TakeScore({k: None if v is None else round(v, 4) for k, v in scores.items()}, d)
