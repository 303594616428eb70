"""Resumable batches of fixed-length audio segments for VAE training.

Each song in a manifest is cut into non-overlapping segments of ``segment_samples`` at the VAE
rate. An epoch's order is a function of ``(seed, epoch)`` and is dealt round-robin to ranks (the
same contract as :class:`dr2studio.data.stream.ShardStream`), so a :class:`DataPosition` resumes it.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from dr2studio.data.manifest import BadRows, ManifestRow, load_audio
from dr2studio.data.stream import DataPosition

__all__ = ["AudioSegmentStream"]

log = logging.getLogger(__name__)


class AudioSegmentStream:
    """Yields ``audio [B, 1, segment_samples]`` float32 batches and the position after each."""

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        sample_rate: int,
        segment_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        cache_files: int = 64,
    ) -> None:
        if segment_samples < 1 or batch_size < 1:
            raise ValueError(f"segment_samples and batch_size must be >= 1, got {segment_samples}, {batch_size}")
        self.rows, self.sample_rate, self.segment_samples = list(rows), sample_rate, segment_samples
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.bad = BadRows()
        self.segments: list[tuple[int, int]] = []  # (row, start sample at the VAE rate)
        for r, row in enumerate(self.rows):
            try:
                info = sf.info(row.audio)
            except Exception as exc:  # libsndfile raises several types
                self.bad.add("unreadable audio", f"{row.audio}: {exc}")
                continue
            n = int(info.frames * sample_rate / info.samplerate)
            count = n // segment_samples
            if count == 0:
                self.bad.add("too short", f"{row.audio}: {n / sample_rate:.2f} s")
            self.segments.extend((r, k * segment_samples) for k in range(count))
        if self.bad.total:
            log.warning("audio stream skipped %d songs: %s", self.bad.total, self.bad.counts)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_files = cache_files
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.segments)} segments of {segment_samples} samples are too few for batch_size "
                f"{batch_size} on {world_size} rank(s)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return (len(self.segments) // self.world_size) // self.batch_size

    def _audio(self, r: int) -> np.ndarray:
        if r in self._cache:
            self._cache.move_to_end(r)
            return self._cache[r]
        audio = load_audio(self.rows[r].audio, self.sample_rate)
        self._cache[r] = audio
        if len(self._cache) > self._cache_files:
            self._cache.popitem(last=False)
        return audio

    def _segment(self, r: int, start: int) -> np.ndarray:
        audio = self._audio(r)[start : start + self.segment_samples]
        if audio.shape[0] < self.segment_samples:  # resampler rounding at the very end
            audio = np.pad(audio, (0, self.segment_samples - audio.shape[0]))
        return audio

    def iter_from(self, position: DataPosition = DataPosition()) -> Iterator[tuple[torch.Tensor, DataPosition]]:
        epoch, start = position.epoch, position.batch
        per_rank = len(self.segments) // self.world_size
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.segments), generator=g).tolist()
            mine = order[self.rank :: self.world_size][:per_rank]
            for b in range(start, self.batches_per_epoch):
                idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
                batch = np.stack([self._segment(*self.segments[i]) for i in idx])
                nxt = DataPosition(epoch, b + 1) if b + 1 < self.batches_per_epoch else DataPosition(epoch + 1, 0)
                yield torch.from_numpy(batch)[:, None], nxt
            epoch, start = epoch + 1, 0
