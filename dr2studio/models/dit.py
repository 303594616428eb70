"""The DiffRhythm 2 diffusion transformer, written to load the released weights unchanged.

Shape legend: B batch, N lyric tokens, T latent frames, n tokens in one call, D model width,
H heads, hd head width, M latent channels (``mel_dim``), C = 512 condition width.

Module and parameter names follow the released ``model.safetensors`` (minus its ``transformer.``
prefix), so a state dict loads with strict key matching. Facts (not code) come from
``shared/design/dr2-format.md`` §2. Attention is delegated to an *attention context*
(:class:`MaskedAttention` for whole sequences, ``BlockKVCache`` in the sampler), so the same
blocks serve teacher-forced training and KV-cached block sampling.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.models import packed_linear
from dr2studio.models.packed_linear import PackableLinear, PackedWeights

__all__ = ["COND_DIM", "DiTConfig", "DiT", "AttentionContext", "MaskedAttention", "TimeCondition", "FrameProjection",
           "rotary_tables", "tempo_clock"]

COND_DIM = 512  # style, text-embedding and time-embedding width (hard-coded in the release)
TIME_FREQ_DIM = 256
RMS_EPS = 1e-6
ROPE_THETA = 10000.0


@dataclasses.dataclass
class DiTConfig(JsonConfig):
    """``model.json``: the keys the released DiT reads (others are kept in ``extra``)."""

    dim: int = 2048
    depth: int = 8
    heads: int = 8
    ff_mult: int = 4
    mel_dim: int = 100
    text_num_embeds: int = 256
    block_size: int = 10
    long_skip_connection: bool = False
    repa_depth: int = -1
    repa_dims: list[int] = dataclasses.field(default_factory=lambda: [1024])
    conv_layers: int = 0  # accepted by the release, unused
    #: dr2studio extension, off in the release: periods (in beats) of a sine/cosine "tempo clock"
    #: added to every latent frame's embedding when the style states a tempo (see :func:`tempo_clock`)
    tempo_clock: list[float] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        for name in ("dim", "depth", "heads", "ff_mult", "mel_dim", "text_num_embeds", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"DiTConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ConfigError(f"DiTConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if (self.dim // self.heads) % 2:
            raise ConfigError(f"head width dim/heads = {self.dim // self.heads} must be even for rotary positions")
        if self.repa_depth > self.depth:
            raise ConfigError(f"DiTConfig.repa_depth ({self.repa_depth}) exceeds depth ({self.depth})")
        if not isinstance(self.tempo_clock, list) or not all(
            isinstance(p, (int, float)) and math.isfinite(p) and p > 0 for p in self.tempo_clock
        ):
            raise ConfigError(f"DiTConfig.tempo_clock must be a list of positive periods in beats, got {self.tempo_clock!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class AttentionContext(Protocol):
    """Where keys and values come from: a whole masked sequence, or a KV cache."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v ``[B, H, n, hd]`` (normalised, rotated) -> attention output ``[B, H, n, hd]``."""
        ...


class MaskedAttention:
    """Self-attention over the call's own tokens with an optional boolean mask ``[B|1, 1, n, n]``."""

    def __init__(self, mask: Tensor | None = None) -> None:
        self.mask = mask

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def rotary_tables(positions: Tensor, head_dim: int, dtype: torch.dtype,
                  inv_freq_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Llama "default" RoPE tables for integer ``positions [B|1, n]`` -> cos, sin ``[B|1, 1, n, hd]``.

    Angles are formed in float32 (as the reference) and cast to the activation dtype.
    ``inv_freq_dtype``: round the frequencies to this dtype first, as the released GPU run does
    (its ``model.half()`` also casts the rotary buffer; spec §2.5); None keeps them exact.
    """
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    if inv_freq_dtype is not None:
        inv_freq = inv_freq.to(inv_freq_dtype).float()
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [B, n, hd/2]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def tempo_clock(start: int, n: int, beats_per_frame: Tensor, periods: list[float]) -> Tensor:
    """Beat-phase features of frames ``start .. start+n-1``: ``[B, n, 2·len(periods)]``.

    Why: a song's beat is a phase the DiT would otherwise have to infer from the stated tempo and
    the frame index through attention alone; the small demo DiT never did (its songs kept no
    beat). With the clock, frame i of a song at r beats per frame sees ``sin/cos(2π·i·r/p)`` for
    each period p (in beats), so placing onsets on the beat is a local decision. Frame 0 is
    beat 0, as in the training songs. ``beats_per_frame [B]``: NaN (or <= 0) where no tempo is
    known, which gives all-zero features, the same as the dropped condition in training.
    """
    r = beats_per_frame.float()
    known = torch.isfinite(r) & (r > 0)
    r = torch.where(known, r, torch.zeros_like(r))
    idx = torch.arange(start, start + n, device=r.device, dtype=torch.float64)
    inv = torch.tensor([1.0 / p for p in periods], device=r.device, dtype=torch.float64)
    # phases in float64, wrapped to one cycle: a frame index in the thousands keeps its precision
    cycles = (idx[None, :, None] * r.double()[:, None, None] * inv[None, None, :]) % 1.0
    angle = (2 * math.pi * cycles).float()
    feats = torch.cat((angle.sin(), angle.cos()), dim=-1)
    return feats * known[:, None, None].to(feats.dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [.., n, hd]`` by the tables of :func:`rotary_tables` (half-split pairs, as Llama)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _time_freqs(device: torch.device) -> Tensor:
    """The sinusoid frequencies of the time embedding, built once per device (same values every call)."""
    freqs = _TIME_FREQS.get(device)
    if freqs is None:
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        _TIME_FREQS[device] = freqs
    return freqs


_TIME_FREQS: dict[torch.device, Tensor] = {}


class RMSNorm(nn.Module):
    """Llama RMSNorm: statistics in float32, weight applied in the input dtype."""

    def __init__(self, dim: int, eps: float = RMS_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama RMSNorm over the last dim; ``weight`` broadcasts against ``x``'s trailing dims."""
    dtype = x.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        # one fused op, bit-identical to the three-step float32 path below (per-op overhead is
        # most of a small model's sampling time)
        return F.rms_norm(x, x.shape[-1:], None, eps) * weight
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class Attention(nn.Module):
    """Multi-head attention with per-head q/k RMSNorm applied before the rotary embedding."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = PackableLinear(dim, dim, bias=False)
        self.k_proj = PackableLinear(dim, dim, bias=False)
        self.v_proj = PackableLinear(dim, dim, bias=False)
        self.o_proj = PackableLinear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: AttentionContext, layer: int) -> Tensor:
        b, n, _ = x.shape
        h, hd = self.heads, self.head_dim
        v = self.v_proj(x).view(b, n, h, hd).transpose(1, 2)
        if self.q_norm.eps == self.k_norm.eps:
            # q and k side by side: one norm and one rotary for both (same values as apart, fewer ops)
            qk = torch.cat((self.q_proj(x), self.k_proj(x)), dim=-1).view(b, n, 2 * h, hd)
            w = torch.cat((self.q_norm.weight.expand(h, hd), self.k_norm.weight.expand(h, hd)))
            qk = apply_rotary(rms_norm(qk, w, self.q_norm.eps).transpose(1, 2), cos, sin)
            q, k = qk[:, :h], qk[:, h:]
        else:
            shape = (b, n, h, hd)
            q = apply_rotary(self.q_norm(self.q_proj(x).view(shape)).transpose(1, 2), cos, sin)
            k = apply_rotary(self.k_norm(self.k_proj(x).view(shape)).transpose(1, 2), cos, sin)
        out = ctx.attend(layer, q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = PackableLinear(dim, hidden, bias=False)
        self.up_proj = PackableLinear(dim, hidden, bias=False)
        self.down_proj = PackableLinear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Llama block (no adaptive norm inside the trunk)."""

    def __init__(self, dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, dim * ff_mult)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, ctx: AttentionContext, layer: int) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, ctx, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class TimestepEmbedding(nn.Module):
    """Per-token time: sinusoid of ``1000·t`` (sin half first, denominator half−1) then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, COND_DIM), nn.SiLU(), nn.Linear(COND_DIM, COND_DIM))

    def forward(self, t: Tensor) -> Tensor:
        arg = (1000.0 * t).float()[..., None] * _time_freqs(t.device)
        emb = torch.cat((arg.sin(), arg.cos()), dim=-1).to(self.time_mlp[0].weight.dtype)
        return self.time_mlp(emb)


class TextEmbedding(nn.Module):
    def __init__(self, num_embeds: int) -> None:
        super().__init__()
        self.text_embed = nn.Embedding(num_embeds + 1, COND_DIM)  # row 0: filler / guidance null token

    def forward(self, tokens: Tensor) -> Tensor:
        return self.text_embed(tokens)


class InputEmbedding(nn.Module):
    """``proj_2(proj(x + style + c) + x)``: the residual adds the raw input, not the conditioned sum."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(COND_DIM, COND_DIM)
        self.proj_2 = nn.Linear(COND_DIM, dim)

    def forward(self, x: Tensor, style: Tensor, c: Tensor) -> Tensor:
        return self.proj_2(self.proj(x + style[:, None, :] + c) + x)


class AdaLayerNormFinal(nn.Module):
    """LayerNorm without affine, modulated per token by ``[scale, shift] = Linear(SiLU(c))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(COND_DIM, 2 * dim)

    def modulation(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(1 + scale, shift)`` of condition ``c``: depends on the time only, so samplers reuse it."""
        scale, shift = self.linear(F.silu(c)).chunk(2, dim=-1)
        return 1 + scale, shift

    def forward(self, h: Tensor, c: Tensor, modulation: tuple[Tensor, Tensor] | None = None) -> Tensor:
        one_plus_scale, shift = self.modulation(c) if modulation is None else modulation
        return F.layer_norm(h, h.shape[-1:], eps=RMS_EPS) * one_plus_scale + shift


class TimeCondition(NamedTuple):
    """What a DiT call derives from its time input alone: the embedding ``c [B, n|1, 512]`` and the
    output norm's modulation. A sampler evaluates the same few times over and over (the grid, −1, +1)
    and passes this instead of the time tensor, skipping the time MLPs at every call."""

    c: Tensor
    modulation: tuple[Tensor, Tensor] | None


@dataclasses.dataclass(frozen=True)
class FrameProjection:
    """The input embedding of latent frames, its linear chain folded into one small matrix.

    For latent frames ``f``, the trunk's input ``h0 = proj_2(proj(e + style + c) + e)`` with
    ``e = latent_embed(f) (+ clock_embed(clock))`` is affine in every input, so
    ``h0 = f·frames^T + clock·clock^T + (style + c)·cond^T + bias``. The products are formed in
    float64 once; a sampler step then costs one ``[n, M] x [M, D]`` matmul instead of four
    512-wide ones. Same values as the module chain up to float32 rounding (~1e-7 relative).
    """

    frames: Tensor  # [D, M]
    clock: Tensor | None  # [D, 2·len(tempo_clock)]
    cond: Tensor  # [D, 512]
    bias: Tensor  # [D]

    def condition_bias(self, style: Tensor, c: Tensor) -> Tensor:
        """``(style [B, 512] + c [B, n|1, 512])·cond^T + bias`` in float64, returned in the weights' dtype."""
        u = style.double()[:, None, :] + c.double()
        return (u @ self.cond.double().T + self.bias.double()).to(self.frames.dtype)

    def clock_bias(self, clock: Tensor) -> Tensor:
        """The tempo clock's features ``[B, n, 2P]`` -> their contribution ``[B, n, D]``."""
        assert self.clock is not None
        return (clock.double() @ self.clock.double().T).to(self.frames.dtype)


def _projector(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, out))


class DiT(nn.Module):
    """The DiffRhythm 2 transformer. One call embeds tokens or latents and runs the trunk.

    Inputs are already embedded (``embed_text`` / ``embed_latents``) so that a call can mix
    lyric tokens, clean frames and noisy frames in one sequence (training) or hold one kind
    only (sampling).
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.dim
        self.time_embed = TimestepEmbedding()
        self.text_embed = TextEmbedding(config.text_num_embeds)
        self.input_embed = InputEmbedding(d)
        self.latent_embed = nn.Sequential(nn.Linear(config.mel_dim, COND_DIM), nn.Linear(COND_DIM, COND_DIM))
        if config.tempo_clock:
            # zero at initialisation: a DiT fine-tuned from one without a clock starts out unchanged
            self.clock_embed: nn.Linear | None = nn.Linear(2 * len(config.tempo_clock), COND_DIM, bias=False)
            nn.init.zeros_(self.clock_embed.weight)
        else:
            self.clock_embed = None
        self.transformer_blocks = nn.ModuleList(DecoderLayer(d, config.heads, config.ff_mult) for _ in range(config.depth))
        self.long_skip_connection = PackableLinear(2 * d, d, bias=False) if config.long_skip_connection else None
        self.norm_out = AdaLayerNormFinal(d)
        self.proj_out = PackableLinear(d, config.mel_dim)
        if config.repa_depth > 0:
            self.projectors = nn.ModuleList(_projector(d, n) for n in config.repa_dims)
        else:
            self.projectors = None
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def embed_text(self, tokens: Tensor) -> Tensor:
        """tokens ``[B, N]`` long -> ``[B, N, 512]``."""
        return self.text_embed(tokens)

    def embed_latents(self, latents: Tensor, start: int = 0, beats_per_frame: Tensor | None = None) -> Tensor:
        """latents ``[B, T, M]`` (frames ``start ..``) -> ``[B, T, 512]`` (two linears, no activation between).

        With a tempo clock in the config and ``beats_per_frame [B]`` given, the frames' beat-phase
        features (:func:`tempo_clock`) are projected and added; otherwise the release's embedding.
        """
        e = self.latent_embed(latents.to(self.dtype))
        clock = self.clock_embedding(start, latents.shape[1], beats_per_frame)
        return e if clock is None else e + clock

    def clock_embedding(self, start: int, n: int, beats_per_frame: Tensor | None) -> Tensor | None:
        """The tempo clock's contribution ``[B, n, 512]`` to frames ``start ..``; None without a clock."""
        if self.clock_embed is None or beats_per_frame is None:
            return None
        clock = tempo_clock(start, n, beats_per_frame.to(self.device), self.config.tempo_clock)
        return self.clock_embed(clock.to(self.dtype))

    @torch.no_grad()
    def frame_projection(self) -> FrameProjection:
        """The folded input embedding of latent frames (see :class:`FrameProjection`); recompute after
        the weights change."""
        f64 = lambda lin: lin.weight.double()  # noqa: E731
        l1, l2 = self.latent_embed[0], self.latent_embed[1]
        p, p2 = self.input_embed.proj, self.input_embed.proj_2
        eye = torch.eye(COND_DIM, dtype=torch.float64, device=self.device)
        outer = f64(p2) @ (f64(p) + eye)  # [D, 512]: what e contributes to h0
        frames = outer @ f64(l2) @ f64(l1)
        bias = outer @ (f64(l2) @ l1.bias.double() + l2.bias.double()) + f64(p2) @ p.bias.double() + p2.bias.double()
        clock = None if self.clock_embed is None else outer @ f64(self.clock_embed)
        dt = self.dtype
        return FrameProjection(frames.to(dt), None if clock is None else clock.to(dt), (f64(p2) @ f64(p)).to(dt), bias.to(dt))

    def packed_weights(self, rows: int) -> PackedWeights | None:
        """The trunk's float32 CPU weights packed for ``rows``-row products (see
        :mod:`dr2studio.models.packed_linear`); None where packing does not apply. Recompute after the
        weights change."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return None
        return packed_linear.pack_model([m.weight for m in self.modules() if isinstance(m, PackableLinear)], rows)

    def time_condition(self, time: Tensor) -> TimeCondition:
        """Everything a call derives from ``time [B, n|1]`` (reusable across calls with the same time)."""
        c = self.time_embed(time)
        return TimeCondition(c, self.norm_out.modulation(c))

    def forward(
        self,
        x: Tensor,
        time: Tensor | TimeCondition,
        style: Tensor,
        rope: tuple[Tensor, Tensor],
        ctx: AttentionContext,
        *,
        need_output: bool = True,
        return_repa: bool = False,
        projected: bool = False,
    ) -> Tensor | None | tuple[Tensor, list[Tensor]]:
        """Run the trunk on embedded tokens.

        Args:
            x: ``[B, n, 512]`` embedded lyric tokens and/or latent frames.
            time: ``[B, n]`` or ``[B, 1]`` per-token time (−1 lyrics, t noisy, +1 clean), or its
                :meth:`time_condition` computed earlier (same result, fewer ops).
            style: ``[B, 512]`` style vector (zeros for the unconditional branch).
            rope: cos, sin from :func:`rotary_tables` for the tokens' positions.
            ctx: where keys/values come from (a masked sequence or a KV cache).
            need_output: False for passes that only fill a cache (skips the output head).
            return_repa: also return the REPA projections of the hidden state after
                ``repa_depth`` layers, one ``[B, n, repa_dims[k]]`` per projector.
            projected: ``x`` is already the trunk's input ``[B, n, D]`` (the input embedding done,
                e.g. with :meth:`frame_projection`); ``time`` must then be a :class:`TimeCondition`
                and ``style`` is not used.
        Returns:
            velocity ``[B, n, M]`` (or None when ``need_output`` is False), plus the REPA list.
        """
        cond = time if isinstance(time, TimeCondition) else None
        if projected:
            if cond is None:
                raise TypeError("a projected call needs its time as a TimeCondition")
            return self.trunk(x, cond, rope, ctx, need_output=need_output, return_repa=return_repa)
        c = self.time_embed(time) if cond is None else cond.c
        if c.shape[1] != x.shape[1]:
            c = c.expand(-1, x.shape[1], -1)
        h0 = self.input_embed(x, style.to(x.dtype), c)
        return self.trunk(h0, cond if cond is not None else TimeCondition(c, None), rope, ctx,  # type: ignore[arg-type]
                          need_output=need_output, return_repa=return_repa)

    def trunk(
        self,
        h0: Tensor,
        cond: TimeCondition,
        rope: tuple[Tensor, Tensor],
        ctx: AttentionContext,
        *,
        need_output: bool = True,
        return_repa: bool = False,
    ) -> Tensor | None | tuple[Tensor, list[Tensor]]:
        """The transformer blocks and output head on the trunk's input ``h0 [B, n, D]`` (see :meth:`forward`;
        a sampler forms ``h0`` with :meth:`frame_projection`). ``cond.modulation`` None: derived from ``cond.c``."""
        h = h0
        c = cond.c
        cos, sin = rope
        repa: list[Tensor] = []
        for i, block in enumerate(self.transformer_blocks):
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(block, h, cos, sin, ctx, i, use_reentrant=False)
            else:
                h = block(h, cos, sin, ctx, i)
            if return_repa and self.projectors is not None and i + 1 == self.config.repa_depth:
                repa = [proj(h) for proj in self.projectors]
        if not need_output:
            return None
        if self.long_skip_connection is not None:
            h = self.long_skip_connection(torch.cat((h, h0), dim=-1))
        out = self.proj_out(self.norm_out(h, c, cond.modulation))
        return (out, repa) if return_repa else out
