"""The sample/decode loop: latents from the block sampler, audio from the streaming decoder, interleaved.

Shape legend: T latent frames, M latent channels, n audio samples at the model's rate.

One render knows a DiT, a decoder, the conditions and a frame budget; it knows nothing of songs,
files or sample rates other than the model's. :class:`~dr2studio.studio.Studio` plans where the
frames go (:mod:`dr2studio.audio.splice`), renders them here, and splices the audio into the song.
The decoder pulls blocks from the sampler as it needs them, so audio comes out while later blocks
are still being sampled (``on_audio``), and progress is reported per block and per decoded chunk.
For a small model on a multi-core CPU the sampler runs a block or two ahead in a worker thread
(:func:`overlap_decode`), so sampling and decoding share the wall time instead of adding up.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dr2studio.flow.sampler import SMALL_MODEL_DIM, BlockSampler, SamplerSettings, eop_distance, small_model_threads
from dr2studio.prefetch import prefetch

__all__ = ["render", "Rendered", "ProgressCallback", "AudioCallback", "HOLD_EOP_DISTANCE", "HOLD_EXTRA_SECONDS",
           "overlap_decode"]

log = logging.getLogger(__name__)

#: ``progress(done, total, stage)``: stage is "sample" (one call per block), "decode" (one per
#: decoded chunk), "encode" (a song without sidecar) and finally "done" (done == total);
#: ``done``/``total`` count over the whole call (total may grow while decoding).
ProgressCallback = Callable[[int, int, str], None]
#: ``on_audio(chunk)`` with each newly decoded ``[C, n]`` float32 chunk, in timeline order.
AudioCallback = Callable[[torch.Tensor], None]

#: While the end is held off, new frames this close (mean squared distance) to the all-ones
#: end-of-song frame are dropped: the demo model's music frames measure >= 0.78, its end frames < 0.05
#: with a few transition frames in between.
HOLD_EOP_DISTANCE = 0.5
HOLD_EXTRA_SECONDS = 30.0  # most extra seconds sampled to make up for dropped end-of-song frames
PREFETCH_BLOCKS = 2  # blocks the sampler may run ahead of the decoder when the two overlap


def overlap_decode(dit: Any) -> bool:
    """Sample the next block in a worker thread while this one decodes: a small model on a CPU with
    two or more cores (each side then runs one intra-op thread, so they do not oversubscribe).
    Larger models use every core for their own matmuls and keep the plain interleaved loop.
    """
    if dit.device.type != "cpu" or int(dit.config.dim) > SMALL_MODEL_DIM:
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores >= 2


@dataclasses.dataclass(frozen=True)
class Rendered:
    """Result of one sampling + decoding run."""

    latents: torch.Tensor  # [1, T, M] on CPU, prefix included
    audio: torch.Tensor  # [1, n] mono at the model's rate, starting at frame ``first_frame``
    first_frame: int
    seconds: float
    ended_at: int | None = None  # frame where the model ended the song before ``max_frames`` (None: it did not)
    dropped: int = 0  # end-of-song frames dropped while the end was held off


def render(
    dit: Any,
    decoder: Any,
    tokens: torch.Tensor,
    style: torch.Tensor,
    max_frames: int,
    settings: SamplerSettings,
    *,
    generator: torch.Generator,
    prefix: torch.Tensor | None = None,
    context_frames: int = 0,
    hold_end: bool = False,
    tempo: float | None = None,
    progress: ProgressCallback | None = None,
    on_audio: AudioCallback | None = None,
) -> Rendered:
    """Sample up to ``max_frames`` (prefix included) and decode the new frames block by block.

    ``tokens`` ``[N]`` lyric ids, ``style`` ``[512]``, ``prefix`` ``[1, P, M]`` clean frames the KV
    cache continues from. The decoded audio starts ``context_frames`` before the end of ``prefix``
    (old frames decoded again so the decoder's edge effects fall before a splice). ``tempo`` (bpm)
    drives the DiT's tempo clock when it has one; frame 0 of the stream is beat 0. ``settings`` is
    used as given (its ``eop_threshold`` decides whether the model may end the song).

    ``hold_end``: the song may not end before ``max_frames``. End-of-song frames the model samples
    on the way are dropped (not decoded, not kept) and more blocks are sampled in their place, up
    to :data:`HOLD_EXTRA_SECONDS` more; ``ended_at`` says where it fell short if even that ran out.
    """
    frame_rate = int(decoder.sample_rate) / int(decoder.hop_length)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    budget = max_frames
    if hold_end:
        settings = dataclasses.replace(settings, eop_threshold=-1.0)
        budget = (max_frames + min(max_frames - prefix_len, round(HOLD_EXTRA_SECONDS * frame_rate))
                  + int(dit.config.block_size))
    dev = dit.device
    beats_per_frame = None
    if tempo is not None and dit.clock_embed is not None:
        beats_per_frame = torch.tensor([tempo / 60.0 / frame_rate])
        log.info("tempo clock at %g bpm", tempo)
    sampler = BlockSampler(
        dit,
        tokens.reshape(1, -1).to(dev),
        style.reshape(1, -1).to(dev),
        budget,
        settings,
        prefix=None if prefix is None else prefix.to(dev),
        generator=generator,
        beats_per_frame=beats_per_frame,
    )
    first = prefix_len - context_frames
    total = 2 * sampler.num_blocks
    done = 0
    kept: list[torch.Tensor] = [] if prefix is None else [prefix.to("cpu", torch.float32)]
    have, dropped = prefix_len, 0

    def report(stage: str) -> None:
        nonlocal done, total
        done += 1
        total = max(total, done)
        if progress is not None:
            progress(done, total, stage)

    def sampled() -> Iterator[torch.Tensor | None]:
        """The sampler's blocks (None: a block whose frames were all dropped); may run in a worker thread."""
        nonlocal have, dropped
        for block in sampler.blocks():
            if hold_end:
                music = eop_distance(block[0].float()) > HOLD_EOP_DISTANCE
                dropped += int((~music).sum())
                block = block[:, music][:, : max_frames - have]
                if block.shape[1] == 0:
                    yield None
                    continue
                kept.append(block.to("cpu", torch.float32))
                have += block.shape[1]
            yield block
            if hold_end and have >= max_frames:
                break

    def blocks() -> Iterator[torch.Tensor]:
        if context_frames:
            yield prefix[:, first:prefix_len].to(dev)  # type: ignore[index]
        source = prefetch(sampled(), PREFETCH_BLOCKS) if overlap_decode(dit) else sampled()
        for block in source:
            report("sample")  # in the caller's thread: progress callbacks never run in the worker
            if block is not None:
                yield block

    started = time.perf_counter()
    chunks: list[torch.Tensor] = []
    with small_model_threads(dit):  # a small model's decoder too: one thread (issue 22, docs/speed.md)
        for audio in decoder.decode_stream(blocks()):
            chunk = audio[0].to("cpu", torch.float32)  # [1, n]
            chunks.append(chunk)
            report("decode")
            if on_audio is not None:
                on_audio(chunk)
    if progress is not None:
        progress(total, total, "done")
    if hold_end:
        latents = torch.cat(kept, dim=1) if kept else torch.zeros(1, 0, int(dit.config.mel_dim))
        if dropped:
            log.info("held the end off: dropped %d end-of-song frames the model sampled", dropped)
    else:
        latents = sampler.latents.to("cpu", torch.float32)
    audio = torch.cat(chunks, dim=1) if chunks else torch.zeros(1, 0)
    ended_at = int(latents.shape[1]) if latents.shape[1] < max_frames else None
    return Rendered(latents=latents, audio=audio, first_frame=first, seconds=time.perf_counter() - started,
                    ended_at=ended_at, dropped=dropped)
