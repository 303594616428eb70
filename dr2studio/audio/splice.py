"""Equal-power crossfades: joining an original take with newly generated audio.

The joins used by ``extend`` and ``infill`` keep every sample outside the crossfade window exactly as it
was. Inside the window the old audio fades out along a cosine and the new one fades in along a sine,
so the summed power of uncorrelated material stays constant (cos^2 + sin^2 = 1).

A splice plan (:class:`ExtendPlan`, :class:`InfillPlan`) is the arithmetic of one edit, done once
before anything is rendered: from the song's length at its own rate, the model's rate and hop, the
latents' length and the request's seconds/range/crossfade it fixes every index (the prefix and
context frames the sampler gets, its frame budget, the splice sample, the fades, where the new audio
lands at the input's rate). :func:`plan_extend` / :func:`plan_infill` compute them;
:class:`ExtendSplice` / :func:`apply_extend` and :func:`apply_infill` splice rendered model audio
into the input by them. Nothing here knows a model or a file: plans are pure arithmetic.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from dr2studio.audio.io import resample
from dr2studio.audio.level import LEVEL_WINDOW, LevelStream, match_gain
from dr2studio.audio.stream_resample import StreamResampler

__all__ = ["equal_power_ramps", "crossfade", "splice", "SpliceStream", "CONTEXT_FRAMES", "ExtendPlan", "InfillPlan",
           "plan_extend", "plan_infill", "ExtendSplice", "apply_extend", "apply_infill", "infill_latents"]

#: Old frames decoded again before a splice, so the decoder's edge effects fall before the crossfade.
CONTEXT_FRAMES = 8


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


# -- splice plans -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExtendPlan:
    """Every index of one ``extend``; samples count at the song's rate, frames at the model's.

    The sampler continues the first ``prefix_frames`` latents up to ``max_frames``; the decoded audio
    starts ``context_frames`` before the prefix's end, at timeline sample ``offset``. The old audio
    ends at ``joint`` (the first new block); it is kept before ``splice`` and crossfaded into the new
    over ``[splice, joint)`` (``fade`` samples); the output is ``target`` samples long.
    """

    song_rate: int
    model_rate: int
    frame_rate: float  # latent frames per second
    input_samples: int
    prefix_frames: int
    context_frames: int
    max_frames: int
    joint: int
    splice: int
    fade: int
    offset: int
    target: int
    level_window: int  # samples measured either side of the crossfade for level matching

    @property
    def first_frame(self) -> int:
        """The latent frame the decoded audio starts at."""
        return self.prefix_frames - self.context_frames


def plan_extend(input_samples: int, song_rate: int, model_rate: int, hop: int, latent_frames: int, *,
                seconds: float, crossfade: float, level_window: float = LEVEL_WINDOW,
                context_frames: int = CONTEXT_FRAMES) -> ExtendPlan:
    """The :class:`ExtendPlan` adding ``seconds`` to a song of ``input_samples`` at ``song_rate``.

    The prefix is the whole frames the audio holds (a last partial frame is dropped, so new blocks
    start on a frame of the input's timeline); the crossfade ends there and is cut to the audio
    before it. Raises ``ValueError`` for a song shorter than one latent frame.
    """
    sr, fps, n_in = int(song_rate), int(model_rate) / int(hop), int(input_samples)
    prefix_len = min(int(latent_frames), math.floor(n_in * fps / sr + 1e-9))  # a last partial frame is dropped
    if prefix_len < 1:
        raise ValueError(f"the song is shorter than one latent frame ({1 / fps:g} s)")
    joint = min(round(prefix_len * sr / fps), n_in)  # end of the old audio = start of the first new block
    fade = min(round(crossfade * sr), joint)
    ctx = min(prefix_len, math.ceil(fade * fps / sr) + context_frames)
    target = n_in + round(seconds * sr)  # the output's length: the input plus exactly ``seconds``
    return ExtendPlan(
        song_rate=sr, model_rate=int(model_rate), frame_rate=fps, input_samples=n_in, prefix_frames=prefix_len,
        context_frames=ctx, max_frames=max(prefix_len + 1, math.ceil(target * fps / sr)), joint=joint,
        splice=joint - fade, fade=fade, offset=round((prefix_len - ctx) * sr / fps), target=target,
        level_window=round(level_window * sr),
    )


class ExtendSplice:
    """Splices an extension into ``audio`` ``[C, N]`` while it is decoded, by an :class:`ExtendPlan`.

    Feed the model's mono chunks (model rate, in order, starting at ``plan.offset``); each is
    resampled to the song's rate, mapped to its channels (``channels``), level matched
    (``match_level``: the RMS over ``plan.level_window`` after the crossfade equals the input's before
    it) and spliced; final output from ``plan.splice`` on goes to ``on_audio``. :meth:`finish` returns
    the whole output: ``audio[:, :splice]`` untouched, then the crossfade and the new audio, cut to
    ``plan.target`` samples (the input alone when not even the crossfade's worth arrived).
    """

    def __init__(self, plan: ExtendPlan, audio: torch.Tensor, *,
                 channels: Callable[[torch.Tensor], torch.Tensor] | None = None, match_level: bool = True,
                 on_audio: Callable[[torch.Tensor], None] | None = None) -> None:
        at, window = plan.splice, plan.level_window
        self.plan, self.audio, self.on_audio = plan, audio, on_audio
        self._to_rate = StreamResampler(plan.model_rate, plan.song_rate)
        self._channels = channels if channels is not None else (lambda chunk: chunk)
        self._level = LevelStream(audio[:, max(0, at - window) : at], plan.joint, window, plan.offset,
                                  enabled=match_level)
        self._joined = SpliceStream(audio[:, at : plan.joint], at, offset=plan.offset)
        self._pieces: list[torch.Tensor] = []
        self._emitted = at

    @property
    def gain(self) -> float | None:
        """The level-matching gain, once measured (1 when matching is off)."""
        return self._level.gain

    def __call__(self, chunk: torch.Tensor) -> None:
        self._deliver(self._level(self._channels(self._to_rate(chunk))))

    def finish(self) -> torch.Tensor:
        """Flush the resampler and the level stream; the output ``[C, <= target]``."""
        self._deliver(self._level(self._channels(self._to_rate.flush())))
        rest = self._level.flush()
        if rest is not None:
            self._deliver(rest)
        if not self._pieces:  # not even the crossfade's worth of new audio: the input, untouched
            return self.audio
        return torch.cat([self.audio[:, : self.plan.splice], *self._pieces], dim=1)

    def _deliver(self, chunk: torch.Tensor) -> None:
        if not chunk.shape[1]:
            return
        chunk = self._joined(chunk)[:, : self.plan.target - self._emitted]
        if chunk.shape[1]:
            self._pieces.append(chunk)
            self._emitted += chunk.shape[1]
            if self.on_audio is not None:
                self.on_audio(chunk)


def apply_extend(plan: ExtendPlan, audio: torch.Tensor, new: torch.Tensor, *,
                 channels: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 match_level: bool = True) -> tuple[torch.Tensor, float | None]:
    """:class:`ExtendSplice` for new audio ``[1, n]`` (model rate, from ``plan.offset``) held whole:
    ``(output, level gain)``."""
    joined = ExtendSplice(plan, audio, channels=channels, match_level=match_level)
    joined(new)
    out = joined.finish()
    return out, joined.gain


@dataclasses.dataclass(frozen=True)
class InfillPlan:
    """Every index of one ``infill``; samples count at the song's rate, frames at the model's.

    The sampler continues the first ``prefix_frames`` latents up to ``max_frames``; the decoded audio
    starts ``context_frames`` before the prefix's end, at timeline sample ``offset``. The new audio
    replaces ``[start, end)`` with crossfades of ``fade_in`` samples before ``start`` and ``fade_out``
    after ``end``; latents before frame ``keep_frames`` are the new ones. Level matching measures the
    input over ``reference`` and the new audio over ``measure`` (timeline ``[a, b)`` spans).
    """

    song_rate: int
    model_rate: int
    frame_rate: float
    input_samples: int
    start: int
    end: int
    fade_in: int
    fade_out: int
    prefix_frames: int
    context_frames: int
    max_frames: int
    keep_frames: int
    offset: int
    reference: tuple[int, int]
    measure: tuple[int, int]

    @property
    def first_frame(self) -> int:
        """The latent frame the decoded audio starts at."""
        return self.prefix_frames - self.context_frames


def plan_infill(input_samples: int, song_rate: int, model_rate: int, hop: int, latent_frames: int, *,
                start: float, end: float, crossfade: float, level_window: float = LEVEL_WINDOW,
                context_frames: int = CONTEXT_FRAMES) -> InfillPlan:
    """The :class:`InfillPlan` regenerating ``[start, end)`` seconds of a song of ``input_samples``.

    The fades are cut to the audio before ``start`` and after ``end``; the sampler renders one frame
    past the fade out (rounding at the song's rate). The level reference is the input's
    ``level_window`` before the fade in, or what the range leads into when that is under half a second.
    """
    sr, fps, length = int(song_rate), int(model_rate) / int(hop), int(input_samples)
    st, et = round(start * sr), min(round(end * sr), length)
    fade_in, fade_out = min(round(crossfade * sr), st), min(round(crossfade * sr), length - et)
    first_new = min(math.floor(start * fps), int(latent_frames))
    ctx = min(first_new, math.ceil(fade_in * fps / sr) + context_frames)
    window = round(level_window * sr)
    reference = (max(0, st - fade_in - window), st - fade_in)
    if reference[1] - reference[0] < sr // 2:  # the range starts the song: match what it leads into
        reference = (et + fade_out, min(et + fade_out + window, length))
    return InfillPlan(
        song_rate=sr, model_rate=int(model_rate), frame_rate=fps, input_samples=length, start=st, end=et,
        fade_in=fade_in, fade_out=fade_out, prefix_frames=first_new, context_frames=ctx,
        max_frames=max(first_new + 1, math.ceil((et + fade_out) * fps / sr) + 1),  # + 1: rounding at the song's rate
        keep_frames=min(round(end * fps), int(latent_frames)), offset=round((first_new - ctx) * sr / fps),
        reference=reference, measure=(st, st + min(window, et - st)),
    )


def apply_infill(plan: InfillPlan, audio: torch.Tensor, new: torch.Tensor, *,
                 channels: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 match_level: bool = True) -> tuple[torch.Tensor, float]:
    """Splice new audio ``[1, n]`` (model rate, from ``plan.offset``) into ``audio`` ``[C, N]``:
    ``(output [C, N], level gain)``. Samples outside ``[start - fade_in, end + fade_out)`` are the input's."""
    new = resample(new, plan.model_rate, plan.song_rate)
    if channels is not None:
        new = channels(new)
    st, et, offset = plan.start, plan.end, plan.offset
    gain = 1.0
    if match_level:
        gain = match_gain(audio[:, plan.reference[0] : plan.reference[1]],
                          new[:, plan.measure[0] - offset : plan.measure[1] - offset])
        new = new * gain if gain != 1.0 else new
    head = splice(audio[:, : et + plan.fade_out], new, at=st - plan.fade_in, fade=plan.fade_in, offset=offset)
    return splice(head, audio, at=et, fade=plan.fade_out), gain


def infill_latents(plan: InfillPlan, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The song's latents ``[1, T, M]`` after an infill: the rendered ``new`` up to ``plan.keep_frames``
    (or where the render stopped), ``old`` after it."""
    keep = min(plan.keep_frames, new.shape[1])
    return torch.cat([new[:, :keep], old[:, keep:]], dim=1)
