"""Level matching: new audio continues at the loudness of the recording it joins.

The model's output level has nothing to do with a producer's mix (the demo model's continuations
came out 9-25 dB quieter than the take they extended). ``extend`` and ``infill`` therefore scale the
new audio by one gain so that its RMS over the ``window`` after the crossfade equals the RMS of the
original over the ``window`` before it. :class:`LevelStream` does this for audio that arrives in
chunks: it holds the new audio back until the measuring window is complete, then fixes the gain.
"""
from __future__ import annotations

import logging
import math

import torch

__all__ = ["rms", "rms_db", "match_gain", "LevelStream", "MAX_GAIN_DB", "SILENCE_DB", "LEVEL_WINDOW"]

log = logging.getLogger(__name__)

MAX_GAIN_DB = 30.0  # never scale the new audio by more than this either way
SILENCE_DB = -60.0  # a reference (or new audio) quieter than this is not matched: the gain stays 1
LEVEL_WINDOW = 3.0  # seconds of audio either side of a crossfade whose RMS level matching equalises


def rms(audio: torch.Tensor) -> float:
    """Root mean square over all channels and samples of ``[C, n]`` (0 for an empty tensor)."""
    if audio.numel() == 0:
        return 0.0
    return float(audio.double().pow(2).mean().sqrt())


def rms_db(audio: torch.Tensor) -> float:
    """:func:`rms` in dB relative to full scale (``-inf`` for digital silence)."""
    value = rms(audio)
    return 20.0 * math.log10(value) if value > 0 else -math.inf


def match_gain(reference: torch.Tensor, new: torch.Tensor) -> float:
    """The gain that gives ``new`` the RMS of ``reference``; 1 when either is (near) silent.

    Clamped to +-:data:`MAX_GAIN_DB`.
    """
    ref_db, new_db = rms_db(reference), rms_db(new)
    if ref_db < SILENCE_DB or new_db < SILENCE_DB:
        log.info("level matching skipped: reference %.1f dBFS, new audio %.1f dBFS", ref_db, new_db)
        return 1.0
    gain_db = max(-MAX_GAIN_DB, min(MAX_GAIN_DB, ref_db - new_db))
    if abs(gain_db) >= MAX_GAIN_DB:
        log.warning("level matching needs %.1f dB; limited to %+.0f dB", ref_db - new_db, gain_db)
    return 10.0 ** (gain_db / 20.0)


class LevelStream:
    """Scale a stream of new audio so it matches ``reference``'s RMS over ``[start, start + window)``.

    ``offset`` is the timeline sample of the first incoming sample; ``start`` the timeline sample
    where the measuring window begins (the end of the crossfade). Calls return the scaled audio that
    is final (nothing until the window is complete); :meth:`flush` returns the rest, measuring over
    what arrived when the stream ends inside the window. ``enabled=False`` passes audio through.
    """

    def __init__(self, reference: torch.Tensor, start: int, window: int, offset: int = 0, *, enabled: bool = True) -> None:
        if start < offset:
            raise ValueError(f"the measuring window starts at {start}, before the stream ({offset})")
        self.reference, self.start, self.window = reference, start, window
        self.enabled = enabled
        self.gain: float | None = None if enabled else 1.0
        self._pos = offset
        self._held: list[torch.Tensor] = []

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.gain is not None:
            return chunk * self.gain if self.gain != 1.0 else chunk
        self._held.append(chunk)
        self._pos += chunk.shape[1]
        if self._pos < self.start + self.window:
            return chunk[:, :0]
        return self._release()

    def flush(self) -> torch.Tensor | None:
        """The held-back audio, scaled (None when nothing is held)."""
        if self.gain is not None or not self._held:
            if self.gain is None:
                self.gain = 1.0
            return None
        return self._release()

    def _release(self) -> torch.Tensor:
        held = torch.cat(self._held, dim=1)
        self._held = []
        first = held.shape[1] - (self._pos - self.start)  # index of timeline sample ``start`` in ``held``
        measured = held[:, max(first, 0) : max(first, 0) + self.window]
        self.gain = match_gain(self.reference, measured)
        log.info("level match: new audio %.1f dBFS -> reference %.1f dBFS (gain %+.1f dB)",
                 rms_db(measured), rms_db(self.reference), 20 * math.log10(self.gain))
        return held * self.gain if self.gain != 1.0 else held
