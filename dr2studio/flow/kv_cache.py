"""A preallocated KV cache for block-wise sampling.

Layout of one layer's keys (and values), ``[B, H, capacity, hd]``::

    [ lyrics (N) | clean frames (L) | scratch for the block being sampled (n) | free ... ]

A *probe* call (an ODE velocity evaluation) writes its keys into the scratch slot and attends over
the view ``[:N+L+n]`` -- no concatenation, no copy of the history. A *store* call does the same and
then :meth:`BlockKVCache.commit` makes the scratch part of the clean history. This replaces the
reference cache, which re-concatenates the whole history at every call (quadratic in song length).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dr2studio.models.dit import apply_rotary

__all__ = ["BlockKVCache", "block_causal_mask"]


def block_causal_mask(n: int, block_size: int, device: torch.device, history_blocks: int | None = None) -> Tensor:
    """``[n, n]`` bool: frame i may see frame j iff j's block is not after i's (and within the window)."""
    blk = torch.arange(n, device=device) // block_size
    mask = blk[None, :] <= blk[:, None]
    if history_blocks is not None:
        mask &= blk[None, :] >= blk[:, None] - history_blocks
    return mask


class BlockKVCache:
    """Per-layer preallocated keys/values for lyrics plus a growing stream of clean blocks.

    Args:
        layers, batch, heads, head_dim: cache geometry (batch counts both guidance branches).
        text_len: N, the (padded) number of lyric tokens.
        capacity: maximum number of latent frames ever held (clean frames + one scratch block).
        text_mask: optional ``[batch, N]`` bool, False for padded lyric tokens.
        history_blocks: optional sliding window; clean frames older than this many blocks before
            the current block are not attended to (lyrics are always kept).
    """

    def __init__(
        self,
        *,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        text_len: int,
        capacity: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        text_mask: Tensor | None = None,
        history_blocks: int | None = None,
    ) -> None:
        shape = (batch, heads, text_len + capacity, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.text_len = text_len
        self.capacity = capacity
        self.block_size = block_size
        self.length = 0  # clean latent frames held
        self.history_blocks = history_blocks
        self.text_mask = text_mask
        self._mode = "probe"
        self._n = 0
        self._rows = 0
        self._null_rope: tuple[Tensor, Tensor] | None = None
        self._lo = 0
        self._mask: Tensor | None = None

    # -- call setup: one per model forward, shared by all layers --------------------------------
    def begin_text(self, rows: int | None = None) -> None:
        """Next forward holds the lyric tokens of cache rows ``[:rows]`` (default: all rows).

        Lyric tokens attend to themselves only.
        """
        self._mode, self._n = "text", self.text_len
        self._rows = self.k[0].shape[0] if rows is None else rows
        self._mask = None if self.text_mask is None else self.text_mask[: self._rows, None, None, :]

    def begin_null_text(self, first_row: int, cos: Tensor, sin: Tensor) -> None:
        """Next forward holds ONE null lyric token at position 0; it fills rows ``[first_row:]``.

        The guidance branch's lyrics are N filler tokens with a zero style: every position has
        the same input, so (attention over identical values returns that value) every layer's
        hidden state is the same at all N positions. One token is computed; its key is rotated to
        each position with ``cos, sin`` ``[1, 1, N, hd]`` and its value broadcast. Same cache
        contents as N tokens, up to float rounding, for 1/N of the work.
        """
        self._mode, self._n = "null_text", 1
        self._rows = first_row
        self._null_rope = (cos, sin)
        self._mask = None

    def begin_block(self, n: int, *, query_mask: Tensor | None = None) -> None:
        """Next forward holds ``n`` latent frames appended after the clean history.

        ``query_mask`` ``[n, n]`` restricts which of the new frames see each other (a block-causal
        mask when a whole prefix is stored at once); by default they all see each other.
        """
        if self.length + n > self.capacity:
            raise RuntimeError(f"KV cache full: {self.length} + {n} frames > capacity {self.capacity}")
        self._mode, self._n = "block", n
        lo = 0
        if self.history_blocks is not None and query_mask is None:
            lo = max(0, self.length - self.history_blocks * self.block_size)
        self._lo = lo
        keys_latent = self.length - lo + n
        parts: list[Tensor] = []
        batch = self.k[0].shape[0]
        device = self.k[0].device
        needs_mask = self.text_mask is not None or query_mask is not None
        if not needs_mask:
            self._mask = None
            return
        text = self.text_mask if self.text_mask is not None else torch.ones(batch, self.text_len, dtype=torch.bool, device=device)
        parts.append(text[:, None, None, :].expand(batch, 1, n, self.text_len))
        hist = torch.ones(batch, 1, n, self.length - lo, dtype=torch.bool, device=device)
        parts.append(hist)
        new = query_mask if query_mask is not None else torch.ones(n, n, dtype=torch.bool, device=device)
        parts.append(new[None, None].expand(batch, 1, n, n))
        self._mask = torch.cat(parts, dim=-1)
        assert self._mask.shape[-1] == self.text_len + keys_latent

    def commit(self, frames: int | None = None) -> None:
        """Make the first ``frames`` (default: all) frames of the last block call part of the clean history."""
        n = self._n if frames is None else frames
        if not 0 <= n <= self._n:
            raise ValueError(f"can commit 0..{self._n} frames of the last call, got {n}")
        self.length += n

    # -- the attention context protocol ----------------------------------------------------------
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        kc, vc = self.k[layer], self.v[layer]
        if self._mode == "text":
            kc[: self._rows, :, : self.text_len] = k
            vc[: self._rows, :, : self.text_len] = v
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask)
        if self._mode == "null_text":  # k is unrotated (position 0): rotate it to every lyric position
            cos, sin = self._null_rope
            rows = kc.shape[0] - self._rows
            kc[self._rows :, :, : self.text_len] = apply_rotary(k.expand(rows, -1, self.text_len, -1), cos, sin)
            vc[self._rows :, :, : self.text_len] = v.expand(rows, -1, self.text_len, -1)
            return v
        start = self.text_len + self.length
        end = start + self._n
        kc[:, :, start:end] = k
        vc[:, :, start:end] = v
        if self._lo == 0:
            keys, values = kc[:, :, :end], vc[:, :, :end]
        else:  # sliding window: lyrics + the last few blocks (bounded copy)
            lo = self.text_len + self._lo
            keys = torch.cat((kc[:, :, : self.text_len], kc[:, :, lo:end]), dim=2)
            values = torch.cat((vc[:, :, : self.text_len], vc[:, :, lo:end]), dim=2)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self._mask)
