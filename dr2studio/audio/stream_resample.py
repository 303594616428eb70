"""Resampling audio that arrives in chunks, equal to resampling the whole signal at once.

``extend`` decodes the model's new audio block by block at the model's rate and has to hand it on at
the producer's rate while later blocks are still being sampled. Resampling each chunk on its own
would put filter edge effects at every chunk boundary; :class:`StreamResampler` instead keeps enough
input on either side of each piece it resamples that every output sample sees exactly the input the
whole-signal windowed-sinc resampler (:func:`torchaudio.functional.resample`) would have used.
"""
from __future__ import annotations

import math

import torch
import torchaudio.functional as AF

__all__ = ["StreamResampler"]

_LOWPASS_WIDTH = 6  # torchaudio's default lowpass_filter_width
_ROLLOFF = 0.99  # torchaudio's default rolloff


class StreamResampler:
    """Feed ``[C, n]`` chunks at ``orig_rate``; each call returns the ``[C, m]`` output now final.

    The pieces returned by the calls and :meth:`flush` concatenated equal (to float rounding)
    ``torchaudio.functional.resample(whole_input, orig_rate, new_rate)``, same length included.
    Output lags the input by a few dozen input samples (the filter's reach).
    """

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        if int(orig_rate) <= 0 or int(new_rate) <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        g = math.gcd(self.orig_rate, self.new_rate)
        self._o, self._n = self.orig_rate // g, self.new_rate // g  # input / output samples per phase block
        width = math.ceil(_LOWPASS_WIDTH * self._o / (min(self._o, self._n) * _ROLLOFF))
        self._margin = (math.ceil(width / self._o) + 1) * self._o  # input kept either side, block aligned
        self._buf: torch.Tensor | None = None  # input from sample ``_buf_start`` on
        self._buf_start = -self._margin  # the zeros before the signal, as the whole-signal resampler pads
        self._next = 0  # first input sample (block aligned) whose output is not returned yet
        self._total_in = 0
        self._total_out = 0

    @property
    def passthrough(self) -> bool:
        return self.orig_rate == self.new_rate

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        self._total_in += chunk.shape[-1]
        if self._buf is None:
            self._buf = torch.zeros(chunk.shape[0], self._margin, dtype=chunk.dtype, device=chunk.device)
        if self.passthrough:
            self._total_out += chunk.shape[-1]
            return chunk
        self._buf = torch.cat([self._buf, chunk], dim=-1)
        end = self._buf_start + self._buf.shape[-1]
        safe = (end - self._margin) // self._o * self._o  # outputs before this input sample are final
        if safe <= self._next:
            return chunk[:, :0]
        return self._emit(safe, stop=safe + self._margin)

    def flush(self) -> torch.Tensor:
        """The rest of the output, once the input is complete (the signal ends in zeros, as torchaudio's)."""
        if self._buf is None:
            return torch.zeros(1, 0)
        if self.passthrough:
            return self._buf[:, :0]
        end = self._buf_start + self._buf.shape[-1]
        last = math.ceil(self._total_in / self._o) * self._o
        return self._emit(max(last, self._next), stop=end)

    def _emit(self, safe: int, stop: int) -> torch.Tensor:
        assert self._buf is not None
        a = self._next - self._margin
        seg = self._buf[:, a - self._buf_start : stop - self._buf_start]
        y = AF.resample(seg, self._o, self._n)
        first = self._margin // self._o * self._n
        want = (safe - self._next) // self._o * self._n
        limit = math.ceil(self._total_in * self._n / self._o) - self._total_out  # whole-signal length
        out = y[:, first : first + min(want, limit)]
        self._total_out += out.shape[-1]
        self._next = safe
        drop = self._next - self._margin - self._buf_start
        if drop > 0:
            self._buf, self._buf_start = self._buf[:, drop:], self._buf_start + drop
        return out
