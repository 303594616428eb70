"""Stochastic block REPA: align DiT hidden states with self-supervised audio features.

In block flow matching every noisy block *i* is predicted from the clean prefix (blocks < i) and
itself. Stochastic block REPA samples K blocks per sequence and, for each, aligns the hidden states
of exactly what that prediction sees -- the clean prefix plus the current noisy block -- with the
SSL targets of those frames. Each sampled block's frames share a total weight of 1, so long
prefixes do not drown the current block; the per-frame weights of all samples add up and the
loss is a weighted sum of per-frame cosine distances, computed in one vectorised pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["stochastic_block_weights", "repa_loss"]


def stochastic_block_weights(
    frame_valid: Tensor,
    block_size: int,
    num_samples: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame REPA weights for the clean and the noisy stream.

    Args:
        frame_valid: ``[B, T]`` bool, frames that have an SSL target (T a multiple of the block size).
        block_size: frames per block.
        num_samples: blocks sampled per sequence (without replacement; fewer if the song is short).
    Returns:
        clean_w ``[B, T]``, noisy_w ``[B, T]`` (each sampled block's frames sum to 1) and
        ``samples [B]``, the number of blocks sampled per sequence.
    """
    bsz, total = frame_valid.shape
    nb = total // block_size
    device = frame_valid.device
    valid_f = frame_valid.float().view(bsz, nb, block_size)
    block_ok = valid_f.sum(-1) > 0  # [B, nb]: blocks with at least one target frame
    scores = torch.rand(bsz, nb, generator=generator, device=generator.device if generator else device).to(device)
    scores = scores.masked_fill(~block_ok, -1.0)
    k = min(num_samples, nb)
    top = scores.topk(k, dim=1)
    chosen = torch.zeros(bsz, nb, device=device)
    chosen.scatter_(1, top.indices, (top.values >= 0).float())  # [B, nb] 1 for sampled blocks
    per_block = valid_f.sum(-1)  # valid frames per block
    prefix_frames = torch.cumsum(per_block, dim=1) - per_block  # valid frames in blocks < i
    count = (prefix_frames + per_block).clamp(min=1.0)
    share = chosen / count  # weight of each frame seen by sample i
    # clean block j is seen by every sampled i > j: reverse cumulative sum of shares over i > j
    later = torch.flip(torch.cumsum(torch.flip(share, [1]), 1), [1]) - share
    clean_w = (later[..., None] * valid_f).view(bsz, total)
    noisy_w = (share[..., None] * valid_f).view(bsz, total)
    return clean_w, noisy_w, chosen.sum(1)


def repa_loss(
    clean_proj: Tensor,
    noisy_proj: Tensor,
    target: Tensor,
    clean_w: Tensor,
    noisy_w: Tensor,
    samples: Tensor,
) -> Tensor:
    """Weighted negative cosine similarity, ``[B, T, D]`` projections against ``[B, T, D]`` targets."""
    t = F.normalize(target.float(), dim=-1)
    dist_clean = 1.0 - (F.normalize(clean_proj.float(), dim=-1) * t).sum(-1)
    dist_noisy = 1.0 - (F.normalize(noisy_proj.float(), dim=-1) * t).sum(-1)
    per_seq = (clean_w * dist_clean + noisy_w * dist_noisy).sum(1) / samples.clamp(min=1.0)
    has = samples > 0
    return per_seq[has].mean() if bool(has.any()) else clean_proj.sum() * 0.0
