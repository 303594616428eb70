"""What the page draws from a WAV: waveform peaks and a log-frequency spectrogram, computed here.

Why on the server: the browser would have to download and decode every take (a 4-minute 48 kHz stereo
take is 70 MB of 24-bit WAV) before drawing anything; a few kilobytes of peaks and a byte-per-cell
spectrogram draw at once. Results are cached by file path, size and modification time, so a take
drawn twice is read once, and a take rewritten under the same name is read again.
"""
from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

__all__ = ["AnalysisError", "waveform", "spectrogram", "MAX_POINTS", "MAX_ANALYSED_SECONDS"]

#: The most peak pairs one waveform request returns (a wide screen is ~4000 pixels).
MAX_POINTS = 4000
#: The longest audio analysed (seconds): far beyond a song, a bound on the memory one request may take.
MAX_ANALYSED_SECONDS = 1200.0
_BLOCK = 1 << 16
_CACHE_SIZE = 64
_cache: "OrderedDict[tuple, dict[str, Any]]" = OrderedDict()
_cache_lock = threading.Lock()


class AnalysisError(ValueError):
    """The file cannot be read as audio, or is too long to analyse."""


def _key(path: Path, kind: str, *args: Any) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, kind, *args)


def _cached(key: tuple, compute: Any) -> dict[str, Any]:
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = compute()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def _open(path: Path) -> sf.SoundFile:
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AnalysisError(f"{path.name} cannot be read as audio: {exc}") from exc
    if f.frames / max(1, f.samplerate) > MAX_ANALYSED_SECONDS:
        f.close()
        raise AnalysisError(f"{path.name} lasts over {MAX_ANALYSED_SECONDS:g} s; not analysed")
    return f


def _mono(path: Path) -> tuple[np.ndarray, int]:
    """The file mixed to mono, float32, and its rate."""
    with _open(path) as f:
        rate = f.samplerate
        data = f.read(dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def waveform(path: Path, points: int = 1000) -> dict[str, Any]:
    """``points`` (min, max) pairs over the whole file, channels mixed: what one canvas column shows.

    Read block by block, so memory stays flat whatever the length.
    """
    points = int(max(16, min(MAX_POINTS, points)))

    def compute() -> dict[str, Any]:
        with _open(path) as f:
            rate, frames = f.samplerate, f.frames
            lo = np.zeros(points, np.float32)
            hi = np.zeros(points, np.float32)
            per = max(1, frames) / points
            pos = 0
            for block in f.blocks(blocksize=_BLOCK, dtype="float32", always_2d=True):
                mono = block.mean(axis=1)
                idx = np.minimum(((pos + np.arange(mono.shape[0])) / per).astype(np.int64), points - 1)
                np.minimum.at(lo, idx, mono)
                np.maximum.at(hi, idx, mono)
                pos += mono.shape[0]
        peak = float(max(np.abs(lo).max(initial=0.0), np.abs(hi).max(initial=0.0)))
        return {"points": points, "duration": frames / rate, "sample_rate": rate, "peak": round(peak, 5),
                "min": np.round(lo, 4).tolist(), "max": np.round(hi, 4).tolist()}

    return _cached(_key(path, "wave", points), compute)


def spectrogram(path: Path, frames: int = 400, bins: int = 96, floor_db: float = -90.0) -> dict[str, Any]:
    """A magnitude spectrogram on a log-frequency axis (``bins`` rows from 40 Hz to Nyquist), ``frames``
    columns, each cell one byte (0 = ``floor_db`` below the loudest cell, 255 = the loudest), base64.

    The window is 2048 samples at 44.1/48 kHz (scaled with the rate, at least 256), a Hann window,
    hops spread evenly so that the whole file fits ``frames`` columns.
    """
    frames = int(max(16, min(2000, frames)))
    bins = int(max(16, min(256, bins)))

    def compute() -> dict[str, Any]:
        mono, rate = _mono(path)
        n_fft = int(2 ** round(np.log2(max(256, 2048 * rate / 48000))))
        if mono.shape[0] < n_fft:
            mono = np.pad(mono, (0, n_fft - mono.shape[0]))
        starts = np.linspace(0, mono.shape[0] - n_fft, frames).astype(np.int64)
        window = np.hanning(n_fft).astype(np.float32)
        segments = np.stack([mono[s:s + n_fft] for s in starts]) * window
        power = np.abs(np.fft.rfft(segments, axis=1)) ** 2  # [frames, n_fft/2+1]
        freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
        nyquist = rate / 2
        edges = np.geomspace(40.0, nyquist, bins + 1)
        cells = np.zeros((frames, bins), np.float64)
        for b in range(bins):
            sel = (freqs >= edges[b]) & (freqs < edges[b + 1])
            if not sel.any():  # a band narrower than one FFT bin: take the nearest bin
                sel = np.zeros_like(freqs, dtype=bool)
                sel[int(np.argmin(np.abs(freqs - np.sqrt(edges[b] * edges[b + 1]))))] = True
            cells[:, b] = power[:, sel].mean(axis=1)
        db = 10 * np.log10(cells + 1e-12)
        top = float(db.max())
        scaled = np.clip((db - (top + floor_db)) / -floor_db, 0.0, 1.0)
        data = (scaled * 255).round().astype(np.uint8)  # row-major: frame by frame, low to high frequency
        return {"frames": frames, "bins": bins, "duration": len(mono) / rate, "sample_rate": rate,
                "fmin": 40.0, "fmax": nyquist, "floor_db": floor_db, "top_db": round(top, 2),
                "data": base64.b64encode(data.tobytes()).decode("ascii")}

    return _cached(_key(path, "spec", frames, bins, floor_db), compute)
