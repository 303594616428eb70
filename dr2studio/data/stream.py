"""Deterministic, resumable streaming of shard examples to data-parallel ranks.

Why: a restarted training run must continue with exactly the batches it had not seen, and every
rank must take the same number of steps per epoch (DDP hangs otherwise). The order of an epoch is
a pure function of ``(seed, epoch)``: shards are shuffled, then examples inside each shard, and the
global sequence is dealt round-robin to ranks and cut to the same length on every rank. A
:class:`DataPosition` ``(epoch, batch)`` therefore fully describes where a run is.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch

from dr2studio.data.shards import DatasetIndex, Example, Shard, ShardError, load_index

__all__ = ["DataPosition", "ShardStream", "epoch_order"]

B = TypeVar("B")


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """The next batch to read: ``batch`` batches of ``epoch`` are already consumed."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> "DataPosition":
        return cls(epoch=int(data.get("epoch", 0)), batch=int(data.get("batch", 0)))


def epoch_order(counts: list[int], seed: int, epoch: int, shuffle: bool = True) -> list[tuple[int, int]]:
    """Global ``(shard, example)`` order of one epoch: shard order, then example order in a shard."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    shards = torch.randperm(len(counts), generator=g).tolist() if shuffle else list(range(len(counts)))
    order: list[tuple[int, int]] = []
    for s in shards:
        inner = torch.randperm(counts[s], generator=g).tolist() if shuffle else range(counts[s])
        order.extend((s, i) for i in inner)
    return order


class ShardStream:
    """Batches of one rank's share of a shard dataset, resumable from a :class:`DataPosition`.

    ``collate`` turns a list of :class:`Example` into a batch (for example
    :func:`dr2studio.data.collate.collate_examples`). Incomplete final batches are dropped so that
    all ranks step together.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int,
        collate: Callable[[list[Example]], B],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.root = Path(root)
        self.index: DatasetIndex = load_index(self.root)
        self.batch_size, self.collate = batch_size, collate
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self._counts = [s.count for s in self.index.shards]
        self._open: dict[int, Shard] = {}
        if self.batches_per_epoch == 0:
            raise ShardError(
                f"{self.root}: {self.index.num_examples} examples are too few for batch_size {batch_size} "
                f"on {world_size} rank(s)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return (sum(self._counts) // self.world_size) // self.batch_size

    def _shard(self, s: int) -> Shard:
        if s not in self._open:
            if len(self._open) >= 4:  # keep a few memory-mapped files open, not all
                self._open.pop(next(iter(self._open)))
            self._open[s] = Shard(self.root / self.index.shards[s].file)
        return self._open[s]

    def _rank_order(self, epoch: int) -> list[tuple[int, int]]:
        order = epoch_order(self._counts, self.seed, epoch, self.shuffle)
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def iter_from(self, position: DataPosition = DataPosition()) -> Iterator[tuple[B, DataPosition]]:
        """Yield ``(batch, position after this batch)`` forever, starting at ``position``."""
        epoch, start = position.epoch, position.batch
        while True:
            order = self._rank_order(epoch)
            for b in range(start, self.batches_per_epoch):
                items = order[b * self.batch_size : (b + 1) * self.batch_size]
                examples = [self._shard(s)[i] for s, i in items]
                nxt = DataPosition(epoch, b + 1) if b + 1 < self.batches_per_epoch else DataPosition(epoch + 1, 0)
                yield self.collate(examples), nxt
            epoch, start = epoch + 1, 0
