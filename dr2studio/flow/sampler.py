"""KV-cached block flow matching sampler (the DiffRhythm 2 inference loop, done for production).

Shape legend: B batch, N lyric tokens, P prefix frames, b block size, M latent channels.

Semantics follow the released sampler (``shared/design/dr2-format.md`` §3): the lyrics are cached
once per guidance branch (the unconditional branch sees every token replaced by id 0 and a zero
style), each block is integrated with Euler steps on ``linspace(0, 1, steps)`` with guidance
``v = v_c + (v_c − v_u)·cfg``, and the finished block is pushed into the cache with time +1.
Differences, on purpose: both guidance branches run as one batched forward; the cache is
preallocated (:mod:`dr2studio.flow.kv_cache`); batches, padded lyrics, a clean prefix to continue
from, seeded noise and streaming are supported; the end-of-prediction trim keeps the last real
frame (the reference drops it) and the output never exceeds ``max_frames``.

Speed (float32 results equal to the plain path within float rounding, see ``docs/speed.md``): the
time embedding and output modulation of each grid time are computed once per song, not per call
(:class:`~dr2studio.models.dit.TimeCondition`); latent frames enter the trunk through the folded
input embedding (:class:`~dr2studio.models.dit.FrameProjection`), one small matmul per call; the
guidance and Euler update are two fused ops; DiTs wider than :data:`SMALL_MODEL_DIM` multiply by float32
weights packed once per song (:mod:`dr2studio.models.packed_linear`). ``reference_numerics`` keeps the
plain path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dr2studio.flow.kv_cache import BlockKVCache, block_causal_mask
from dr2studio.models import packed_linear
from dr2studio.models.dit import COND_DIM, DiT, FrameProjection, TimeCondition, rotary_tables, tempo_clock
from dr2studio.requests import CFG_STRENGTH, STEPS

__all__ = ["EOP_THRESHOLD", "SMALL_MODEL_DIM", "SamplerSettings", "BlockSampler", "sample_latents", "eop_distance",
           "small_model_threads"]

log = logging.getLogger(__name__)

EOP_THRESHOLD = 0.05  # mean squared distance to the all-ones end-of-prediction frame

#: DiTs up to this width sample on CPU with one intra-op thread. Their ops take microseconds: a second
#: thread saves nothing, and on a busy machine (a DAW, other jobs) each parallel op waits for a second
#: core to be scheduled (~6 ms on 2 shared cores, where the demo model ran 100x slower with 2 threads
#: than with 1; docs/speed.md). The process's setting is restored around every block.
SMALL_MODEL_DIM = 256

BlockCallback = Callable[[int, Tensor], None]


def eop_distance(frames: Tensor) -> Tensor:
    """Mean squared distance of each frame to the all-ones frame: ``[..., M] -> [...]``."""
    return (frames.float() - 1.0).pow(2).mean(dim=-1)


@dataclasses.dataclass
class SamplerSettings:
    """Knobs of one sampling run (stored in song sidecars so a take can be reproduced)."""

    steps: int = 32
    cfg_strength: float = 2.0
    num_history_block: int | None = None
    eop_threshold: float = EOP_THRESHOLD
    #: Do the ODE arithmetic as the released GPU sampler does, in the model's dtype (fp16 there):
    #: time grid, noise, Euler steps and guidance in that dtype, the time inputs rounded to it,
    #: and RoPE frequencies rounded to it (spec §10). For comparing against a half-precision
    #: reference run; off, the ODE state stays float32 whatever the model dtype (more accurate).
    reference_numerics: bool = False

    def validate(self) -> None:
        self.steps = STEPS.check(self.steps)  # grid points: steps-1 Euler steps; limits shared with every front door
        self.cfg_strength = CFG_STRENGTH.check(self.cfg_strength)
        if self.num_history_block is not None and self.num_history_block < 0:
            raise ValueError(f"num_history_block must be >= 0 or None, got {self.num_history_block!r}")


class BlockSampler:
    """Generates a song block by block; iterate :meth:`blocks` for streaming.

    After iteration, :attr:`latents` ``[B, T, M]`` holds the whole stream (prefix included,
    trimmed) and :attr:`lengths` ``[B]`` the number of valid frames of each batch element.
    """

    #: Store each finished block in the same forward as the next block's first probe (same
    #: result, one forward fewer per block). False restores separate store passes (benchmarks).
    fuse_store: bool = True
    #: Multiply by float32 CPU weights packed once per song, for DiTs wider than SMALL_MODEL_DIM (the
    #: same results within float rounding, 1.4x faster for the 35.6M configuration on 2 threads; see
    #: :mod:`dr2studio.models.packed_linear`). False: plain ``F.linear`` (benchmarks).
    pack_weights: bool = True

    def __init__(
        self,
        model: DiT,
        tokens: Tensor,
        style: Tensor,
        max_frames: int,
        settings: SamplerSettings | None = None,
        *,
        noise: Tensor | None = None,
        prefix: Tensor | None = None,
        token_lengths: Tensor | None = None,
        generator: torch.Generator | None = None,
        beats_per_frame: Tensor | None = None,
    ) -> None:
        self.settings = settings or SamplerSettings()
        self.settings.validate()
        cfg = model.config
        self.model, self.block_size, self.mel_dim = model, cfg.block_size, cfg.mel_dim
        device, dtype = model.device, model.dtype
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, N] lyric ids, got shape {tuple(tokens.shape)}")
        self.batch = tokens.shape[0]
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > cfg.text_num_embeds):
            raise ValueError(f"token ids must lie in [0, {cfg.text_num_embeds}], got [{int(tokens.min())}, {int(tokens.max())}]")
        if style.shape != (self.batch, COND_DIM):
            raise ValueError(f"style must be [B, {COND_DIM}] = [{self.batch}, {COND_DIM}], got {tuple(style.shape)}")
        if not torch.isfinite(style).all():
            raise ValueError("style contains NaN or infinite values")
        if not isinstance(max_frames, int) or max_frames <= 0:
            raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
        self.prefix_len = 0 if prefix is None else prefix.shape[1]
        if prefix is not None and (prefix.dim() != 3 or prefix.shape[0] != self.batch or prefix.shape[2] != self.mel_dim):
            raise ValueError(f"prefix must be [B, P, {self.mel_dim}] with B={self.batch}, got {tuple(prefix.shape)}")
        if max_frames <= self.prefix_len:
            raise ValueError(f"max_frames ({max_frames}) must exceed the prefix length ({self.prefix_len} frames)")
        self.max_frames = max_frames
        self.num_blocks = math.ceil((max_frames - self.prefix_len) / self.block_size)
        needed = self.num_blocks * self.block_size
        if noise is not None and (noise.dim() != 3 or noise.shape[0] != self.batch or noise.shape[1] < needed or noise.shape[2] != self.mel_dim):
            raise ValueError(f"noise must be [B, >= {needed}, {self.mel_dim}] (one block of noise per generated block), got {tuple(noise.shape)}")
        self.noise, self.generator = noise, generator
        self.guided = self.settings.cfg_strength >= 1e-5
        self._ode_dtype = dtype if self.settings.reference_numerics else torch.float32
        branches = 2 if self.guided else 1

        n_text = tokens.shape[1]
        text_mask = None
        if token_lengths is not None:
            token_lengths = token_lengths.to(device)
            text_mask = torch.arange(n_text, device=device)[None, :] < token_lengths[:, None]
            if bool(text_mask.all()):
                text_mask = None
        self._tokens = tokens.to(device)
        self._style = style.to(device=device, dtype=dtype)
        capacity = self.prefix_len + needed
        self.cache = BlockKVCache(
            layers=cfg.depth,
            batch=branches * self.batch,
            heads=cfg.heads,
            head_dim=cfg.head_dim,
            text_len=n_text,
            capacity=capacity,
            block_size=self.block_size,
            dtype=dtype,
            device=device,
            text_mask=None if text_mask is None else text_mask.repeat(branches, 1),
            history_blocks=self.settings.num_history_block,
        )
        inv_freq_dtype = dtype if self.settings.reference_numerics else None
        cos, sin = rotary_tables(torch.arange(max(n_text, capacity), device=device)[None], cfg.head_dim, dtype, inv_freq_dtype)
        self._cos, self._sin = cos, sin
        self._clock = None  # [B, capacity, 512]: the tempo clock of every frame, conditional branch only
        self._clock_feats: Tensor | None = None  # [B, capacity, 2P]: its features (fast path)
        if beats_per_frame is not None:
            beats_per_frame = torch.as_tensor(beats_per_frame, dtype=torch.float32).reshape(-1)
            if beats_per_frame.shape[0] != self.batch:
                raise ValueError(f"beats_per_frame must hold one value per batch element ({self.batch}), got {beats_per_frame.shape[0]}")
            if bool((beats_per_frame <= 0).any()) or bool(torch.isinf(beats_per_frame).any()):
                raise ValueError("beats_per_frame must be positive and finite (NaN: no tempo for that element)")
            with torch.inference_mode():
                self._clock = model.clock_embedding(0, capacity, beats_per_frame.to(device))
                if model.clock_embed is not None:
                    self._clock_feats = tempo_clock(0, capacity, beats_per_frame.to(device), cfg.tempo_clock)
        self.stream = torch.zeros(self.batch, capacity, self.mel_dim, device=device, dtype=torch.float32)
        if prefix is not None:
            self.stream[:, : self.prefix_len] = prefix.to(device=device, dtype=torch.float32)
        self.lengths = torch.full((self.batch,), -1, dtype=torch.long)  # -1: not ended yet
        self._grid = torch.linspace(0.0, 1.0, self.settings.steps, device=device, dtype=self._ode_dtype)
        self._grid_values = self._grid.tolist()
        self._dt_values = (self._grid[1:] - self._grid[:-1]).tolist()
        self._bstyle = torch.cat((self._style, torch.zeros_like(self._style))) if self.guided else self._style
        # the fast path: per-time conditions cached, frames through the folded input embedding
        self._fast = not self.settings.reference_numerics
        self._proj: FrameProjection | None = None
        self._clock_h: Tensor | None = None
        self._conds: dict[float, tuple[TimeCondition, Tensor | None]] = {}
        self._packs: packed_linear.PackedWeights | None | bool = None  # made at the first block; False: none apply
        self._prepared = False

    # -- helpers -------------------------------------------------------------------------------
    def _branch_style(self) -> Tensor:
        return self._bstyle

    def _setup_fast(self) -> None:
        """Fold the frame embedding (weights as they are now) and the tempo clock's contribution."""
        if not self._fast or self._proj is not None:
            return
        self._proj = self.model.frame_projection()
        if self._clock_feats is not None:
            self._clock_h = self._proj.clock_bias(self._clock_feats)

    def _cond(self, t: float) -> tuple[TimeCondition, Tensor | None]:
        """Time condition of block calls at time ``t`` (both branches) and, on the fast path, its trunk-input bias."""
        hit = self._conds.get(t)
        if hit is None:
            cond = self.model.time_condition(self._time(t, self._bstyle.shape[0]))
            bias = self._proj.condition_bias(self._bstyle, cond.c) if self._proj is not None else None
            hit = self._conds[t] = (cond, bias)
        return hit

    def _h0(self, frames: Tensor, start: int, bias: Tensor) -> Tensor:
        """Trunk input of latent frames ``[B, n, M]`` at ``start`` for both branches (fast path)."""
        assert self._proj is not None
        y = F.linear(frames.to(self._proj.frames.dtype), self._proj.frames)
        if self._clock_h is None:
            h = torch.cat((y, y)) if self.guided else y
        else:
            c = y + self._clock_h[:, start : start + frames.shape[1]]
            h = torch.cat((c, y)) if self.guided else c
        return h + bias

    def _block_forward(self, frames: Tensor, times: list[tuple[float, int]], start: int, *,
                       need_output: bool = True) -> Tensor | None:
        """One block call (fast path) on latent ``frames [B, n, M]`` whose runs of frames have times ``[(t, count), ...]``."""
        self._setup_fast()
        n = frames.shape[1]
        rope = self._rope(start, n)
        parts = [self._cond(t) for t, _ in times]
        if len(parts) == 1:
            cond, bias = parts[0]
        else:  # a fused store+probe call: per-frame conditions
            rows = self._bstyle.shape[0]

            def cat(ts: list[Tensor]) -> Tensor:
                return torch.cat([x.expand(rows, k, x.shape[-1]) for x, (_, k) in zip(ts, times)], dim=1)

            mods = [p[0].modulation for p in parts]
            cond = TimeCondition(cat([p[0].c for p in parts]),
                                 (cat([m[0] for m in mods]), cat([m[1] for m in mods])))  # type: ignore[index]
            bias = cat([p[1] for p in parts])  # type: ignore[misc]
        return self.model(self._h0(frames, start, bias), cond, self._bstyle, rope, self.cache,  # type: ignore[return-value]
                          need_output=need_output, projected=True)

    def _rope(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        return self._cos[:, :, start : start + n], self._sin[:, :, start : start + n]

    def _dup(self, x: Tensor) -> Tensor:
        return torch.cat((x, x)) if self.guided else x

    def _embed(self, frames: Tensor, start: int) -> Tensor:
        """Embedded frames for both branches; the tempo clock (a style condition) only in the conditional one."""
        e = self.model.embed_latents(frames)
        if self._clock is None:
            return self._dup(e)
        c = e + self._clock[:, start : start + frames.shape[1]]
        return torch.cat((c, e)) if self.guided else c

    def _time(self, value: Tensor | float, n_branch_rows: int) -> Tensor:
        return torch.full((n_branch_rows, 1), float(value), device=self.model.device, dtype=self._ode_dtype)

    def _block_noise(self, index: int) -> Tensor:
        b, m = self.block_size, self.mel_dim
        if self.noise is not None:
            x = self.noise[:, index * b : (index + 1) * b]
        else:
            gen_device = self.generator.device if self.generator is not None else self.model.device
            x = torch.randn(self.batch, b, m, generator=self.generator, device=gen_device)
        return x.to(device=self.model.device, dtype=self._ode_dtype)

    # -- the passes ----------------------------------------------------------------------------
    def _cache_text(self, style: Tensor) -> None:
        n_text = self._tokens.shape[1]
        if n_text == 0:
            return
        if not self.guided or self.settings.reference_numerics:  # every lyric token computed, as the reference
            tokens = torch.cat((self._tokens, torch.zeros_like(self._tokens))) if self.guided else self._tokens
            self.cache.begin_text()
            x = self.model.embed_text(tokens)
            self.model(x, self._time(-1.0, x.shape[0]), style, self._rope(0, n_text), self.cache, need_output=False)
            return
        b = self.batch
        self.cache.begin_text(rows=b)
        x = self.model.embed_text(self._tokens)
        self.model(x, self._time(-1.0, b), style[:b], self._rope(0, n_text), self.cache, need_output=False)
        # the guidance branch: N identical null tokens -> one token, broadcast (see begin_null_text)
        self.cache.begin_null_text(b, *self._rope(0, n_text))
        null = self.model.embed_text(torch.zeros(1, 1, dtype=torch.long, device=self.model.device))
        self.model(null, self._time(-1.0, 1), style[b : b + 1], self._rope(0, 1), self.cache, need_output=False)

    def _store(self, frames: Tensor, style: Tensor, start: int, query_mask: Tensor | None = None) -> None:
        """Push clean frames ``[B, n, M]`` into both caches with time +1."""
        n = frames.shape[1]
        self.cache.begin_block(n, query_mask=query_mask)
        if self._fast:
            self._block_forward(frames, [(1.0, n)], start, need_output=False)
        else:
            e = self._embed(frames, start)
            self.model(e, self._time(1.0, e.shape[0]), style, self._rope(start, n), self.cache, need_output=False)
        self.cache.commit()

    def _guide(self, v: Tensor) -> Tensor:
        if not self.guided:
            return v
        v_c, v_u = v[: self.batch], v[self.batch :]
        return v_c + (v_c - v_u) * self.settings.cfg_strength

    def _store_and_velocity(self, clean: Tensor, x: Tensor, t: float | Tensor, start: int) -> Tensor:
        """Store the finished block ``clean`` (at frame ``start``) and probe the next block ``x`` in one forward.

        The ``2b`` queries carry a block-causal mask: the clean frames see the history and
        themselves (exactly the store pass), the noisy frames also see the clean block (exactly
        the first probe of the next block). Only the clean frames are committed. One forward of
        ``2b`` tokens instead of two of ``b``: the matmuls, attention calls and per-op overhead
        of the store pass are shared with the first ODE step.
        """
        if self._fast:
            return self._guide(self._store_and_velocity_raw(clean, x, float(t), start))
        style = self._branch_style()
        b, n = clean.shape[1], x.shape[1]
        rows = style.shape[0]
        self.cache.begin_block(b + n, query_mask=block_causal_mask(b + n, b, self.model.device))
        e = self._embed(torch.cat((clean, x), dim=1), start)  # same frames in both branches
        time = torch.cat((self._time(1.0, rows).expand(rows, b), self._time(t, rows).expand(rows, n)), dim=1)
        v = self.model(e, time, style, self._rope(start, b + n), self.cache)[:, b:].to(self._ode_dtype)
        self.cache.commit(b)
        return self._guide(v)

    def velocity(self, x: Tensor, t: float | Tensor, start: int) -> Tensor:
        """Guided velocity ``[B, b, M]`` for noisy frames ``x`` at time ``t`` placed at frame ``start``.

        Probes the cache (nothing is stored): keys are lyrics, the clean history and ``x`` itself.
        """
        n = x.shape[1]
        self.cache.begin_block(n)
        if self._fast:
            return self._guide(self._block_forward(x, [(float(t), n)], start).to(self._ode_dtype))  # type: ignore[union-attr]
        style = self._branch_style()
        e = self._embed(x, start)
        v = self.model(e, self._time(t, style.shape[0]), style, self._rope(start, n), self.cache).to(self._ode_dtype)
        return self._guide(v)

    def _integrate(self, x: Tensor, start: int, pending: Tensor | None = None) -> Tensor:
        """Euler from noise (t=0) to data along the grid; velocity never evaluated at t=1.

        ``pending``: the previous finished block, not yet in the cache; it is stored by the
        first velocity evaluation (see :meth:`_store_and_velocity`).
        """
        if not self._fast:
            g = self._grid
            for k in range(self.settings.steps - 1):
                if k == 0 and pending is not None:
                    v = self._store_and_velocity(pending, x, g[0], start - pending.shape[1])
                else:
                    v = self.velocity(x, g[k], start)
                x = x + (g[k + 1] - g[k]) * v
            return x
        # fast path: raw (unguided) velocities; guidance and the Euler step fused into two ops
        grid, dts, b, cfg, n = self._grid_values, self._dt_values, self.batch, self.settings.cfg_strength, x.shape[1]
        for k in range(self.settings.steps - 1):
            if k == 0 and pending is not None:
                v = self._store_and_velocity_raw(pending, x, grid[0], start - pending.shape[1])
            else:
                self.cache.begin_block(n)
                v = self._block_forward(x, [(grid[k], n)], start).to(self._ode_dtype)  # type: ignore[union-attr]
            if self.guided:  # x + dt·(v_c + (v_c − v_u)·cfg)
                v_c = v[:b]
                v = torch.add(v_c, v_c - v[b:], alpha=cfg)
            x = torch.add(x, v, alpha=dts[k])
        return x

    def _store_and_velocity_raw(self, clean: Tensor, x: Tensor, t: float, start: int) -> Tensor:
        """:meth:`_store_and_velocity` without the guidance (fast path; the caller fuses it)."""
        b, n = clean.shape[1], x.shape[1]
        self.cache.begin_block(b + n, query_mask=block_causal_mask(b + n, b, self.model.device))
        v = self._block_forward(torch.cat((clean, x), dim=1), [(1.0, b), (t, n)], start)[:, b:]  # type: ignore[index]
        self.cache.commit(b)
        return v.to(self._ode_dtype)

    def _block_context(self) -> contextlib.ExitStack:
        """Around each block's work (never across a yield): the small-model thread count and the packed weights."""
        stack = contextlib.ExitStack()
        stack.enter_context(small_model_threads(self.model))
        if self._fast and self.pack_weights and self.model.config.dim > SMALL_MODEL_DIM:
            # (small models' products take microseconds: the packed call's dispatch costs more than it saves)
            if self._packs is None:
                rows = self._bstyle.shape[0] * self.block_size  # a probe call: branches x batch x block frames
                self._packs = self.model.packed_weights(rows) or False
            if self._packs:
                stack.enter_context(packed_linear.activate(self._packs))
        return stack

    @torch.inference_mode()
    def prepare(self) -> None:
        """Cache the lyrics and the clean prefix (done once, before the first block)."""
        style = self._branch_style()
        with self._block_context():
            self._cache_text(style)
            if self.prefix_len:
                mask = block_causal_mask(self.prefix_len, self.block_size, self.model.device, self.settings.num_history_block)
                self._store(self.stream[:, : self.prefix_len], style, 0, query_mask=mask)
        self._prepared = True

    def _check_end(self, end_frame: int) -> None:
        """Mark batch elements whose newest frame is an end-of-prediction frame."""
        thr = self.settings.eop_threshold
        last = eop_distance(self.stream[:, end_frame - 1]).cpu()
        for i in range(self.batch):
            if self.lengths[i] >= 0 or last[i] > thr:
                continue
            real = (eop_distance(self.stream[i, :end_frame]) > thr).nonzero()
            self.lengths[i] = int(real[-1]) + 1 if len(real) else 0

    @torch.inference_mode()
    def blocks(self, on_block: BlockCallback | None = None) -> Iterator[Tensor]:
        """Yield each finished block's kept frames ``[B, k, M]`` (k < b only at the end)."""
        if not self._prepared:
            self.prepare()
        style = self._branch_style()
        pos = self.prefix_len
        # a finished block joins the cache in the same forward as the next block's first probe;
        # with a sliding window the two passes see different histories, so they stay apart
        fuse = self.fuse_store and self.settings.num_history_block is None
        pending: Tensor | None = None
        for index in range(self.num_blocks):
            with self._block_context():  # not across the yield: the caller (a decoder) keeps its threads
                x = self._integrate(self._block_noise(index), pos, pending)
                if not fuse:
                    self._store(x, style, pos)
            if fuse:
                pending = x
            self.stream[:, pos : pos + self.block_size] = x
            pos += self.block_size
            self._check_end(pos)
            ends = torch.where(self.lengths >= 0, self.lengths, torch.tensor(pos)).clamp(max=self.max_frames)
            kept = int(ends.max()) - (pos - self.block_size)
            log.debug("block %d/%d done (%d frames kept)", index + 1, self.num_blocks, kept)
            if kept > 0:
                chunk = self.stream[:, pos - self.block_size : pos - self.block_size + kept].clone()
                if on_block is not None:
                    on_block(index, chunk)
                yield chunk
            if bool((self.lengths >= 0).all()) or pos >= self.max_frames:
                break
        self.lengths = torch.where(self.lengths >= 0, self.lengths, torch.tensor(pos)).clamp(max=self.max_frames)

    @property
    def latents(self) -> Tensor:
        """The finished stream ``[B, max(lengths), M]``; frames past an element's length are zero."""
        total = int(self.lengths.max())
        out = self.stream[:, :total].clone()
        valid = torch.arange(total)[None, :] < self.lengths[:, None]
        return out * valid[..., None].to(out.device)


def sample_latents(
    model: DiT,
    tokens: Tensor,
    style: Tensor,
    max_frames: int,
    steps: int = 32,
    cfg_strength: float = 2.0,
    noise: Tensor | None = None,
    prefix: Tensor | None = None,
    generator: torch.Generator | None = None,
    on_block: BlockCallback | None = None,
    *,
    token_lengths: Tensor | None = None,
    num_history_block: int | None = None,
    eop_threshold: float = EOP_THRESHOLD,
    reference_numerics: bool = False,
    beats_per_frame: Tensor | None = None,
) -> Tensor:
    """Sample a song's latents block by block.

    Args:
        model: the DiT (eval mode).
        tokens: ``[B, N]`` lyric ids (pad with 0 and give ``token_lengths`` for ragged batches).
        style: ``[B, 512]`` style embeddings.
        max_frames: the most frames to return, prefix included (5 frames per second).
        steps: time-grid points per block (``steps − 1`` Euler steps).
        cfg_strength: classifier-free guidance weight (0 disables the unconditional branch).
        noise: ``[B, F, M]`` initial noise of each generated block in order.
        prefix: ``[B, P, M]`` clean latents to continue from (returned as the first P frames).
        generator: seeds the noise when ``noise`` is not given.
        on_block: called as ``on_block(i, frames[B, k, M])`` with every finished block.
        reference_numerics: ODE arithmetic in the model's dtype, as the released fp16 GPU run
            (see :class:`SamplerSettings`).
        beats_per_frame: ``[B]`` stated tempo over the latent frame rate (NaN: none), for a
            DiT with a tempo clock (ignored by one without).
    Returns:
        ``[B, T, M]`` latents, T ≤ max_frames, trailing end-of-prediction frames trimmed.
    """
    settings = SamplerSettings(steps=steps, cfg_strength=cfg_strength, num_history_block=num_history_block,
                               eop_threshold=eop_threshold, reference_numerics=reference_numerics)
    sampler = BlockSampler(model, tokens, style, max_frames, settings, noise=noise, prefix=prefix, token_lengths=token_lengths, generator=generator,
                           beats_per_frame=beats_per_frame)
    for _ in sampler.blocks(on_block):
        pass
    return sampler.latents


def small_model_threads(model: DiT) -> contextlib.AbstractContextManager[None]:
    """One intra-op thread while a small model (and its decoder) runs on CPU (see :data:`SMALL_MODEL_DIM`)."""
    if model.device.type != "cpu" or model.config.dim > SMALL_MODEL_DIM or torch.get_num_threads() == 1:
        return contextlib.nullcontext()
    return _one_thread()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
