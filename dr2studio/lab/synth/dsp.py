"""Vectorised DSP building blocks: wavetable oscillators, envelopes, FFT convolution, drum one-shots.

Every function works on whole numpy arrays; the callers loop over notes (hundreds per song), never
over samples. Audio is mono float64 ``[n]`` until the final mix.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "TABLE_SIZE",
    "harmonic_table",
    "wavetable",
    "envelope",
    "fft_convolve",
    "impulse_train",
    "add_into",
    "highpass_noise",
    "kick",
    "snare",
    "hat",
    "reverb_ir",
]

TABLE_SIZE = 2048


def harmonic_table(amps: np.ndarray) -> np.ndarray:
    """One period of ``sum_k amps[k-1] * sin(2 pi k x)`` sampled at ``TABLE_SIZE`` points, plus a wrap
    sample (``[TABLE_SIZE + 1]``) so that linear interpolation needs no modulo."""
    amps = np.asarray(amps, dtype=np.float64)
    k = min(len(amps), TABLE_SIZE // 2 - 1)
    spec = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    spec[1 : k + 1] = -0.5j * TABLE_SIZE * amps[:k]
    table = np.fft.irfft(spec, n=TABLE_SIZE)
    return np.concatenate([table, table[:1]])


def wavetable(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Read ``table`` (from :func:`harmonic_table`) at ``phase`` in cycles, with linear interpolation."""
    pos = (phase - np.floor(phase)) * TABLE_SIZE
    i = pos.astype(np.int64)
    np.minimum(i, TABLE_SIZE - 1, out=i)
    frac = pos - i
    lo = table[i]
    return lo + frac * (table[i + 1] - lo)


def envelope(n: int, sr: int, attack: float, hold: float, release: float, decay: float | None = None) -> np.ndarray:
    """Attack ramp, optional exponential decay (time constant ``decay`` s), release ramp after ``hold`` s."""
    t = np.arange(n) / sr
    env = np.minimum(t / max(attack, 1e-4), 1.0)
    if decay is not None:
        env *= np.exp(-t / decay)
    rel = np.clip((t - hold) / max(release, 1e-4), 0.0, 1.0)
    return env * (1.0 - rel)


def _fast_len(n: int) -> int:
    """Smallest 2^a * 3^b * 5^c >= ``n`` (pocketfft is fastest on such sizes)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 * (1 << max(0, (-(-n // p35) - 1).bit_length()))
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution of ``x`` with ``h``, cut to ``len(x)`` (``[n]``)."""
    size = _fast_len(len(x) + len(h) - 1)
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)
    return y[: len(x)]


def impulse_train(n: int, sr: int, times: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``[n]`` zeros with ``gains`` added at sample positions ``times * sr`` (times past the end dropped)."""
    out = np.zeros(n)
    idx = np.round(np.asarray(times) * sr).astype(np.int64)
    keep = (idx >= 0) & (idx < n)
    np.add.at(out, idx[keep], np.asarray(gains, dtype=np.float64)[keep])
    return out


def add_into(buf: np.ndarray, start: int, seg: np.ndarray) -> None:
    """``buf[start:start+len(seg)] += seg``, clipped at both ends of ``buf``."""
    if start >= len(buf) or start + len(seg) <= 0:
        return
    s0 = max(0, -start)
    end = min(len(buf), start + len(seg))
    buf[start + s0 : end] += seg[s0 : s0 + end - start - s0]


def highpass_noise(rng: np.random.Generator, n: int, order: int = 1) -> np.ndarray:
    """White noise differentiated ``order`` times (a gentle high-pass), scaled to unit RMS."""
    x = rng.standard_normal(n + order)
    for _ in range(order):
        x = np.diff(x)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def kick(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Sine with a falling pitch sweep (110 -> 45 Hz) and a short click."""
    t = np.arange(int(0.4 * sr)) / sr
    freq = 45.0 + 110.0 * np.exp(-t / 0.035)
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.16)
    click = rng.standard_normal(len(t)) * np.exp(-t / 0.002) * 0.3
    return body + click


def snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Noise rattle plus a 185 Hz drum tone."""
    t = np.arange(int(0.3 * sr)) / sr
    rattle = highpass_noise(rng, len(t)) * np.exp(-t / 0.07) * 0.45
    tone = np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.04) * 0.6
    return rattle + tone


def hat(sr: int, rng: np.random.Generator, open_: bool = False) -> np.ndarray:
    """Twice-differentiated noise with a short (closed) or long (open) decay."""
    t = np.arange(int((0.35 if open_ else 0.08) * sr)) / sr
    return highpass_noise(rng, len(t), order=2) * np.exp(-t / (0.12 if open_ else 0.018)) * 0.25


def reverb_ir(sr: int, rng: np.random.Generator, seconds: float = 1.2, rt: float = 0.3) -> np.ndarray:
    """Exponentially decaying, slightly low-passed noise impulse response with unit energy."""
    t = np.arange(int(seconds * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-t / rt)
    k = max(1, sr // 8000)
    ir = np.convolve(ir, np.ones(k) / k, mode="same")
    ir[: int(0.01 * sr)] = 0.0  # pre-delay
    return ir / (np.sqrt(np.sum(ir**2)) + 1e-12)
