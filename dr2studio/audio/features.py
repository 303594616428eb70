"""Measurements of music audio: onset envelope, tempo, beat strength, chroma, key, section levels and
spectral flatness.

The tag style encoder reads the tempo and key of a reference recording with these
(:meth:`dr2studio.style.tag_encoder.TagStyleEncoder.embed_audio`); the lab's benchmarks use them to tell
music from noise. numpy only (no librosa). Audio may be mono ``[n]`` or channels-first ``[C, n]``; it is
mixed to mono first.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dr2studio.audio.keys import key_name

__all__ = [
    "onset_strength",
    "beat_strength",
    "estimate_tempo",
    "chroma",
    "estimate_key",
    "section_energy",
    "spectral_flatness",
]

# Key profiles (major, minor), index 0 = tonic: Krumhansl-Kessler probe-tone ratings, and the
# Albrecht & Shanahan (2013) pitch-class distributions of a pop/classical corpus.
_PROFILES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "krumhansl": (
        np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
        np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
    ),
    "albrecht-shanahan": (
        np.array([0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081]),
        np.array([0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052]),
    ),
}


_MIN_FLUX_PER_BIN = 0.005


def _mono(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"audio must be [n] or [channels, n], got shape {np.shape(audio)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinite samples")
    return x


def _check_sr(sr: int) -> int:
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer (Hz), got {sr!r}")
    return int(sr)


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Magnitude STFT with a Hann window: ``[frames, n_fft // 2 + 1]`` (zero-padded to one frame)."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1))


def onset_strength(audio: np.ndarray, sr: int) -> tuple[np.ndarray, float]:
    """Spectral-flux onset envelope ``[frames]`` at a 10 ms hop, and its frame rate (frames/s).

    Flux of the log-compressed magnitude, half-wave rectified, minus a 1 s moving average so that slow
    loudness changes (sections) do not count as onsets. All zeros when the mean flux is tiny (a steady
    tone reads ~0.001 per bin, music ~0.1), so that window-leakage wobble is not taken for a beat.
    """
    sr = _check_sr(sr)
    x = _mono(audio)
    hop = max(1, int(round(sr * 0.01)))
    n_fft = 1 << int(math.ceil(math.log2(0.04 * sr)))
    mag = _stft_mag(x, n_fft, hop)
    logmag = np.log1p(1000.0 * mag / (mag.max() + 1e-12))
    flux = np.maximum(np.diff(logmag, axis=0), 0.0).sum(axis=1)
    fps = sr / hop
    if flux.mean() < _MIN_FLUX_PER_BIN * logmag.shape[1]:  # a steady sound: leakage wobble, not onsets
        return np.zeros_like(flux), fps
    w = max(1, int(fps))
    local = np.convolve(flux, np.ones(w) / w, mode="same")
    return np.maximum(flux - local, 0.0), fps


def _acf(env: np.ndarray) -> np.ndarray:
    env = env - env.mean()
    n = len(env)
    spec = np.fft.rfft(env, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec), 2 * n)[:n]
    return ac / (ac[0] + 1e-12)


def beat_strength(audio: np.ndarray, sr: int, bpm: float) -> float:
    """Autocorrelation of the onset envelope at the period of ``bpm`` (or twice it, whichever is higher).

    A continuous measure of how strongly the audio pulses at a given tempo: our synthetic songs read
    0.6-0.8 at their own tempo, audio without a beat at that period about 0. :func:`estimate_tempo`
    only answers once the winning period passes ``min_strength``; this says how far a take is from it.
    """
    if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"bpm must be a positive number, got {bpm!r}")
    env, fps = onset_strength(audio, sr)
    if len(env) < 4 or env.max() < 1e-6:
        return 0.0
    ac = _acf(env)
    best = 0.0
    for lag in (60.0 * fps / bpm, 120.0 * fps / bpm):  # beat or half-time, as tempo_error forgives octaves
        lo = int(math.floor(lag))
        if lo + 1 >= len(ac):
            continue
        frac = lag - lo
        best = max(best, float(ac[lo] * (1 - frac) + ac[lo + 1] * frac))
    return best


def estimate_tempo(
    audio: np.ndarray,
    sr: int,
    *,
    min_bpm: float = 50.0,
    max_bpm: float = 220.0,
    prior_bpm: float = 110.0,
    min_strength: float = 0.3,
) -> float:
    """Tempo in bpm from the autocorrelation of the onset envelope.

    Each candidate period scores its autocorrelation plus half of that at twice the period (a beat
    repeats at the bar level too), weighted by a log-normal prior around ``prior_bpm`` (one octave wide)
    that settles octave ambiguity towards common tempi; the winning lag is refined by parabolic
    interpolation. Returns 0.0 when there is no detectable beat: no onsets at all (silence, a steady
    tone) or an autocorrelation at the beat period below ``min_strength`` (white noise reads about
    0.2, our synthetic songs 0.6-0.8).
    """
    if not 0 < min_bpm < max_bpm:
        raise ValueError(f"need 0 < min_bpm < max_bpm, got {min_bpm}, {max_bpm}")
    env, fps = onset_strength(audio, sr)
    if len(env) < 4 or env.max() < 1e-6:
        return 0.0
    ac = _acf(env)
    lags = np.arange(len(ac), dtype=np.float64)
    lo, hi = int(math.floor(60 * fps / max_bpm)), int(math.ceil(60 * fps / min_bpm))
    hi = min(hi, (len(ac) - 1) // 2)
    if hi <= lo + 2:
        return 0.0
    cand = np.arange(max(lo, 1), hi + 1)
    double = np.interp(2 * cand, lags, ac)
    bpm = 60.0 * fps / cand
    prior = np.exp(-0.5 * np.log2(bpm / prior_bpm) ** 2)
    score = (np.maximum(ac[cand], 0) + 0.5 * np.maximum(double, 0)) * prior
    i = int(np.argmax(score))
    if ac[cand[i]] < min_strength:
        return 0.0
    lag = float(cand[i])
    if 0 < i < len(cand) - 1:
        a, b, c = ac[cand[i] - 1], ac[cand[i]], ac[cand[i] + 1]
        den = a - 2 * b + c
        if den < 0:
            lag += float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return 60.0 * fps / lag


def _band_chroma(mag: np.ndarray, freqs: np.ndarray, sr: int, n_fft: int, lo: float, hi: float) -> np.ndarray:
    """Pitch-class weights ``[12]`` from the bins in ``[lo, hi]`` Hz of a magnitude STFT ``[F, bins]``."""
    band = (freqs >= lo) & (freqs <= hi)
    spec = np.sqrt(mag[:, band])  # [F, b]
    f = freqs[band]
    # peak emphasis: subtract the local mean over +-2.5 semitones (in bins at each frequency)
    cum = np.concatenate([np.zeros((spec.shape[0], 1)), np.cumsum(spec, axis=1)], axis=1)
    width = np.maximum(1, np.round(f * (2 ** (2.5 / 12) - 1) / (sr / n_fft))).astype(int)
    idx = np.arange(len(f))
    left = np.clip(idx - width, 0, len(f))
    right = np.clip(idx + width + 1, 0, len(f))
    local = (cum[:, right] - cum[:, left]) / (right - left)
    peaks = np.maximum(spec - local, 0.0).sum(axis=0)  # [b]
    pcs = np.mod(np.round(69.0 + 12.0 * np.log2(f / 440.0)).astype(int), 12)
    out = np.bincount(pcs, weights=peaks, minlength=12)
    total = out.sum()
    return out / total if total > 0 else out


def chroma(audio: np.ndarray, sr: int) -> np.ndarray:
    """Whole-song pitch-class profile ``[12]`` (index 0 = C), summing to 1.

    STFT with ~0.34 s frames; square-rooted magnitudes with spectral peak emphasis (above the local
    mean across ~5 semitones), which damps noise, drums and the smear of upper harmonics. The profile
    of 65 Hz - 2.1 kHz is added to that of the bass register (40-200 Hz), because chord roots in the
    bass say most about the tonic.
    """
    sr = _check_sr(sr)
    x = _mono(audio)
    n_fft = 1 << int(math.ceil(math.log2(0.34 * sr)))
    mag = _stft_mag(x, n_fft, n_fft // 4)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    out = _band_chroma(mag, freqs, sr, n_fft, 65.0, 2100.0) + _band_chroma(mag, freqs, sr, n_fft, 40.0, 200.0)
    total = out.sum()
    return out / total if total > 0 else out


def estimate_key(audio: np.ndarray, sr: int, profiles: str = "albrecht-shanahan") -> tuple[str, str, float]:
    """Key by the Krumhansl-Schmuckler method: correlate the chroma with the 24 rotated key profiles.

    ``profiles``: ``"albrecht-shanahan"`` (pop-corpus profiles; default, it confuses a minor key with
    its dominant less often on our songs) or ``"krumhansl"`` (the original probe-tone ratings).
    Returns ``(tonic_name, mode, correlation)``; the correlation (-1..1) says how clearly tonal the
    audio is (noise gives values near 0, a clear song above ~0.6).
    """
    if profiles not in _PROFILES:
        raise ValueError(f"profiles must be one of {sorted(_PROFILES)}, got {profiles!r}")
    c = chroma(audio, sr)
    if not np.any(c):
        return "C", "major", 0.0
    best = (-2.0, 0, "major")
    for mode, profile in zip(("major", "minor"), _PROFILES[profiles]):
        for tonic in range(12):
            r = float(np.corrcoef(c, np.roll(profile, tonic))[0, 1])
            if r > best[0]:
                best = (r, tonic, mode)
    r, tonic, mode = best
    return key_name(tonic, mode), mode, r


def _span(section: Any) -> tuple[float, float]:
    if isinstance(section, dict):
        return float(section["start_s"]), float(section["end_s"])
    if hasattr(section, "start_s"):
        return float(section.start_s), float(section.end_s)
    return float(section[0]), float(section[1])


def section_energy(audio: np.ndarray, sr: int, sections: Sequence[Any]) -> list[float]:
    """RMS level in dBFS of each section (objects with ``start_s``/``end_s``, dicts, or pairs).

    Sections are clipped to the audio; one that falls outside it (or silence) reads -120 dB.
    """
    sr = _check_sr(sr)
    x = _mono(audio)
    out = []
    for sec in sections:
        s, e = _span(sec)
        if e < s:
            raise ValueError(f"section ends before it starts: {s} .. {e} s")
        seg = x[int(round(max(s, 0) * sr)) : int(round(max(e, 0) * sr))]
        rms = float(np.sqrt(np.mean(seg**2))) if len(seg) else 0.0
        out.append(20.0 * math.log10(max(rms, 1e-6)))
    return out


def spectral_flatness(audio: np.ndarray, n_fft: int = 2048) -> float:
    """Mean Wiener entropy (geometric / arithmetic mean of the power spectrum) over frames within 40 dB
    of the loudest.

    White noise reads about 0.56, tonal music well under 0.1; silence reads 0.0.
    """
    x = _mono(audio)
    power = _stft_mag(x, n_fft, n_fft // 2) ** 2 + 1e-20
    energy = power.mean(axis=1)
    keep = (energy > 1e-12) & (energy > 1e-4 * float(energy.max()))  # skip silence and near-silence
    if not np.any(keep):
        return 0.0
    p = power[keep]
    flat = np.exp(np.log(p).mean(axis=1)) / p.mean(axis=1)
    return float(flat.mean())
