"""Collate variable-length examples into padded batches with masks.

Shape legend: B batch, T latent frames, C latent channels, L lyric tokens, S style dim, D SSL dim.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from dr2studio.data.shards import Example

__all__ = ["LatentBatch", "collate_examples", "pad_sequences"]


@dataclasses.dataclass
class LatentBatch:
    """A padded batch. Masks are True on real positions; token padding uses id 0 (the filler id)."""

    latents: torch.Tensor  # [B, T, C]
    latent_mask: torch.Tensor  # [B, T] bool
    tokens: torch.Tensor  # [B, L] long
    token_mask: torch.Tensor  # [B, L] bool
    style: torch.Tensor  # [B, S]
    ssl: dict[str, torch.Tensor]  # name -> [B, T, D]
    ids: list[str]
    tempo: torch.Tensor | None = None  # [B] bpm stated by each style text, NaN where none

    @property
    def frames(self) -> int:
        """Real (unpadded) latent frames in the batch: the unit of training throughput."""
        return int(self.latent_mask.sum())

    def to(self, device: torch.device | str) -> "LatentBatch":
        return dataclasses.replace(
            self,
            latents=self.latents.to(device, non_blocking=True),
            latent_mask=self.latent_mask.to(device, non_blocking=True),
            tokens=self.tokens.to(device, non_blocking=True),
            token_mask=self.token_mask.to(device, non_blocking=True),
            style=self.style.to(device, non_blocking=True),
            ssl={k: v.to(device, non_blocking=True) for k, v in self.ssl.items()},
            tempo=None if self.tempo is None else self.tempo.to(device, non_blocking=True),
        )


def pad_sequences(seqs: Sequence[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, ...]`` tensors into ``[B, max T, ...]`` plus a ``[B, max T]`` bool mask."""
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    longest = max(s.shape[0] for s in seqs)
    out = seqs[0].new_full((len(seqs), longest, *seqs[0].shape[1:]), pad_value)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):  # one copy per example, not per element
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask


def collate_examples(examples: Sequence[Example], max_frames: int | None = None) -> LatentBatch:
    """Pad a list of examples. ``max_frames`` keeps the first frames of longer songs (the lyrics
    stay whole, so a cropped song is the opening of that song, which the block layout handles)."""
    if not examples:
        raise ValueError("collate_examples needs at least one example")

    def crop(x: torch.Tensor) -> torch.Tensor:
        return x if max_frames is None else x[:max_frames]

    latents, latent_mask = pad_sequences([crop(e.latents) for e in examples])
    tokens, token_mask = pad_sequences([e.tokens.long() for e in examples], pad_value=0)
    names = sorted(examples[0].ssl)
    ssl = {n: pad_sequences([crop(e.ssl[n]) for e in examples])[0] for n in names}
    return LatentBatch(
        latents=latents,
        latent_mask=latent_mask,
        tokens=tokens,
        token_mask=token_mask,
        style=torch.stack([e.style.float() for e in examples]),
        ssl=ssl,
        ids=[e.id for e in examples],
        tempo=torch.tensor([float("nan") if e.tempo is None else e.tempo for e in examples], dtype=torch.float32),
    )
