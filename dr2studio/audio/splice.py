"""Equal-power crossfades: joining an original take with newly generated audio.

The joins used by ``extend`` and ``infill`` keep every sample outside the crossfade window exactly as it
was. Inside the window the old audio fades out along a cosine and the new one fades in along a sine,
so the summed power of uncorrelated material stays constant (cos^2 + sin^2 = 1).
"""
from __future__ import annotations

import math

import torch

__all__ = ["equal_power_ramps", "crossfade", "splice", "SpliceStream"]


def equal_power_ramps(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fade_out, fade_in)``, each ``[n]``, with ``fade_out**2 + fade_in**2 == 1``.

    Sample i sits at phase (i + 0.5) / n of a quarter period, so neither ramp holds an exact 0 or 1
    and the window is symmetric.
    """
    if n < 0:
        raise ValueError(f"crossfade length must be >= 0 samples, got {n}")
    phase = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / max(n, 1) * (math.pi / 2)
    return torch.cos(phase).to(dtype), torch.sin(phase).to(dtype)


def crossfade(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Blend two equally long ``[C, n]`` segments: ``old`` fades out while ``new`` fades in."""
    if old.shape != new.shape:
        raise ValueError(f"crossfade segments must have the same shape, got {tuple(old.shape)} and {tuple(new.shape)}")
    fade_out, fade_in = equal_power_ramps(old.shape[-1], dtype=old.dtype, device=old.device)
    return old * fade_out + new * fade_in


def splice(first: torch.Tensor, second: torch.Tensor, at: int, fade: int, *, offset: int = 0) -> torch.Tensor:
    """Join two ``[C, N]`` timelines at sample ``at`` with a ``fade``-sample crossfade.

    ``second`` starts ``offset`` samples into the timeline of ``first`` (its sample k is the moment
    ``offset + k``). The result is ``first[:, :at]`` unchanged, then a crossfade over ``[at, at + fade)``,
    then the rest of ``second`` unchanged; it ends where ``second`` ends (``offset + second.shape[1]``).
    """
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"channel counts differ: {first.shape[0]} vs {second.shape[0]}")
    if at < 0 or fade < 0 or offset < 0:
        raise ValueError(f"splice point, fade and offset must be >= 0, got at={at}, fade={fade}, offset={offset}")
    end = at + fade
    if offset > at:
        raise ValueError(f"the second timeline starts at sample {offset}, after the splice point {at}")
    if end > first.shape[1] or end > offset + second.shape[1]:
        raise ValueError(
            f"splice window [{at}, {end}) runs past the audio ({first.shape[1]} and {offset + second.shape[1]} samples)"
        )
    mixed = crossfade(first[:, at:end], second[:, at - offset : end - offset])
    return torch.cat([first[:, :at], mixed, second[:, end - offset :]], dim=1)


class SpliceStream:
    """:func:`splice` for a ``second`` timeline that arrives in chunks (an extension being decoded).

    Feed the chunks of ``second`` in order; each call returns the output samples that are final, from
    ``at`` on: nothing before the splice point, the whole crossfade at once when its window is
    complete, then the new audio as it comes. The returned pieces concatenated equal
    ``splice(first, second, at, fade, offset=offset)[:, at:]``. ``window`` is ``first[:, at:at + fade]``.
    """

    def __init__(self, window: torch.Tensor, at: int, offset: int = 0) -> None:
        if at < 0 or offset < 0 or offset > at:
            raise ValueError(f"need 0 <= offset <= at, got at={at}, offset={offset}")
        self.window, self.at = window, at
        self.end = at + window.shape[1]
        self.pos = offset  # timeline position of the next incoming sample
        self._pending: list[torch.Tensor] = []  # new audio inside the crossfade window, not yet emitted

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        start, self.pos = self.pos, self.pos + chunk.shape[1]
        if self.pos <= self.at:
            return chunk[:, :0]
        chunk = chunk[:, max(self.at - start, 0):]
        start = max(start, self.at)
        if start >= self.end:
            return chunk
        self._pending.append(chunk[:, : self.end - start])
        if self.pos < self.end:
            return chunk[:, :0]
        mixed = crossfade(self.window.to(chunk.dtype), torch.cat(self._pending, dim=1))
        self._pending = []
        return torch.cat([mixed, chunk[:, self.end - start :]], dim=1)
