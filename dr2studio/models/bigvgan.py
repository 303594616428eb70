"""BigVGAN-style latent decoder, compatible with the released DiffRhythm 2 ``decoder.json`` / ``decoder.bin``.

Shape legend: B batch, T latent frames, C latent channels (64), N = T * hop output samples
(hop = prod(upsample_rates), 9600 for the release), K resblock kernel sizes per stage.

``forward`` is one pass of the generator over channels-first latents ``[B, C, T] -> [B, 1, N]``.
``decode`` applies the reference's chunk schedule (see :mod:`dr2studio.models.chunking`) to
channels-last latents ``[B, T, C]``; ``decode_stream`` does the same on latents that arrive block by block
and yields each stretch of audio as soon as no later block can change it.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.models.activations import Activation1d, make_activation
from dr2studio.models.chunking import Segment, check_schedule, plan_segments, stable_frames
from dr2studio.models.vae_module import VAEModule
from dr2studio.weights import CheckpointError, device_dtype, fold_weight_norm, load_weights, save_safetensors

__all__ = [
    "DecoderConfig",
    "BigVGANDecoder",
    "load_decoder",
    "save_decoder",
    "default_device_dtype",
    "CHUNK_FRAMES",
    "CHUNK_OVERLAP",
]


CHUNK_FRAMES = 20  # reference decode_audio chunk_size
CHUNK_OVERLAP = 5  # reference decode_audio overlap
DECODER_JSON = "decoder.json"
DECODER_SAFETENSORS = "decoder.safetensors"
DECODER_BIN = "decoder.bin"


@dataclasses.dataclass
class DecoderConfig(JsonConfig):
    """``decoder.json``. Defaults are the released sizes; the release's file sets every key explicitly.

    ``transformer_layers > 0`` adds a small transformer over the latents before ``conv_pre`` (our own
    models only; the release has none and its checkpoint has no such keys).
    """

    resblock: str = "1"
    upsample_rates: list[int] = dataclasses.field(default_factory=lambda: [10, 10, 8, 3, 2, 2])
    upsample_kernel_sizes: list[int] = dataclasses.field(default_factory=lambda: [20, 20, 16, 7, 4, 4])
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: list[int] = dataclasses.field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    )
    activation: str = "snakebeta"
    snake_logscale: bool = True
    in_channels: int = 64
    use_tanh_at_final: bool = True  # reference default when the key is absent
    use_bias_at_final: bool = True  # reference default when the key is absent
    sampling_rate: int = 48000
    transformer_layers: int = 0
    transformer_dim: int = 256
    transformer_heads: int = 4

    @property
    def hop_length(self) -> int:
        """Output samples per latent frame (9600 for the release)."""
        return math.prod(self.upsample_rates)

    def validate(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ConfigError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ConfigError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if not self.upsample_rates or len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError(
                f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes {self.upsample_kernel_sizes} "
                "must be non-empty lists of equal length"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if u < 1 or k < u or (k - u) % 2:
                raise ConfigError(
                    f"upsample kernel {k} with rate {u}: need kernel >= rate and an even difference "
                    "(else the output is not exactly rate x longer)"
                )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) or not self.resblock_kernel_sizes:
            raise ConfigError("resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of equal length")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ConfigError(
                f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2**{len(self.upsample_rates)} (the channels halve at every stage)"
            )
        if self.in_channels < 1 or self.sampling_rate < 1:
            raise ConfigError(f"in_channels and sampling_rate must be positive, got {self.in_channels}, {self.sampling_rate}")
        if self.transformer_layers < 0 or (
            self.transformer_layers and self.transformer_dim % self.transformer_heads
        ):
            raise ConfigError("transformer_layers must be >= 0 and transformer_dim divisible by transformer_heads")


def _same_pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Resblock "1": per dilation d, ``x += conv2(act(conv1_d(act(x))))``; all ``[B, ch, L] -> [B, ch, L]``."""

    def __init__(self, cfg: DecoderConfig, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_pad(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=_same_pad(kernel)) for _ in dilations
        )
        self.activations = nn.ModuleList(
            Activation1d(make_activation(cfg.activation, channels, cfg.snake_logscale)) for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.activations
        for m, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            x = x + c2(acts[2 * m + 1](c1(acts[2 * m](x))))
        return x


class AMPBlock2(nn.Module):
    """Resblock "2": per dilation d, ``x += conv_d(act(x))``."""

    def __init__(self, cfg: DecoderConfig, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_pad(kernel, d)) for d in dilations
        )
        self.activations = nn.ModuleList(
            Activation1d(make_activation(cfg.activation, channels, cfg.snake_logscale)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.activations):
            x = x + conv(act(x))
        return x


class LatentTransformer(nn.Module):
    """Optional pre-decoder transformer over latent frames ``[B, C, T] -> [B, C, T]`` (residual).

    A depthwise convolution gives relative position; pre-norm encoder layers mix context.
    """

    def __init__(self, channels: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(channels, dim)
        self.pos_conv = nn.Conv1d(dim, dim, 5, padding=2, groups=dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj_out = nn.Linear(dim, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x.transpose(1, 2))
        h = h + self.pos_conv(h.transpose(1, 2)).transpose(1, 2)
        return x + self.proj_out(self.layers(h)).transpose(1, 2)


class BigVGANDecoder(VAEModule):
    """Latents -> waveform. State-dict keys are those of the released checkpoint (after weight-norm folding)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c0 = config.upsample_initial_channel
        if config.transformer_layers:
            self.pre_transformer = LatentTransformer(
                config.in_channels, config.transformer_dim, config.transformer_layers, config.transformer_heads
            )
        self.conv_pre = nn.Conv1d(config.in_channels, c0, 7, padding=3)
        block = AMPBlock1 if config.resblock == "1" else AMPBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            cin, cout = c0 // 2**i, c0 // 2 ** (i + 1)
            self.ups.append(nn.ModuleList([nn.ConvTranspose1d(cin, cout, k, stride=u, padding=(k - u) // 2)]))
            for kr, dil in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(config, cout, kr, list(dil)))
        last = c0 // 2 ** len(config.upsample_rates)
        self.activation_post = Activation1d(make_activation(config.activation, last, config.snake_logscale))
        self.conv_post = nn.Conv1d(last, 1, 7, padding=3, bias=config.use_bias_at_final)

    # -- properties -----------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def latent_dim(self) -> int:
        return self.config.in_channels

    # -- one generator pass -----------------------------------------------------------------------
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """One pass, no chunking: ``[B, C, T] -> [B, 1, T * hop]`` in the module's dtype."""
        x = latents.to(self.dtype)
        if self.config.transformer_layers:
            x = self.pre_transformer(x)
        x = self.conv_pre(x)
        k = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            acc = self.resblocks[i * k](x)
            for j in range(1, k):
                acc = acc + self.resblocks[i * k + j](x)
            x = acc / k
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else torch.clamp(x, -1.0, 1.0)

    # -- chunked decoding ---------------------------------------------------------------------------
    def _check_latents(self, latents: torch.Tensor, what: str = "latents") -> None:
        if latents.dim() != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"{what} must be [B, T, {self.latent_dim}], got {list(latents.shape)}")

    def _run_windows(self, latents: torch.Tensor, windows: list[tuple[int, int]], max_batch: int) -> list[torch.Tensor]:
        """Decode windows ``(start, size)`` of ``latents [B, T, C]``; returns one ``[B, 1, size*hop]`` per window.

        Windows of equal size are stacked into the batch dimension, ``max_batch`` sequences per pass.
        """
        b = latents.shape[0]
        out: list[torch.Tensor | None] = [None] * len(windows)
        by_size: dict[int, list[int]] = {}
        for idx, (_, size) in enumerate(windows):
            by_size.setdefault(size, []).append(idx)
        per_pass = max(1, max_batch // b)
        for size, idxs in by_size.items():
            for g in range(0, len(idxs), per_pass):
                group = idxs[g : g + per_pass]
                x = torch.cat([latents[:, windows[i][0] : windows[i][0] + size] for i in group], dim=0)
                y = self(x.transpose(1, 2)).to(torch.float32)
                for n, i in enumerate(group):
                    out[i] = y[n * b : (n + 1) * b]
        return out  # type: ignore[return-value]

    def _assemble(self, latents: torch.Tensor, segments: list[Segment], lo: int, hi: int,
                  cache: dict[tuple[int, int], torch.Tensor], max_batch: int) -> torch.Tensor:
        """Audio for frames ``[lo, hi)`` from the windows of ``segments`` (computing those not in ``cache``)."""
        hop = self.hop_length
        used = [s for s in segments if s.hi > lo and s.lo < hi]
        todo = [(s.start, s.size) for s in used if (s.start, s.size) not in cache]
        for key, audio in zip(todo, self._run_windows(latents, todo, max_batch)):
            cache[key] = audio
        pieces = []
        for s in used:
            a, z = max(s.lo, lo), min(s.hi, hi)
            pieces.append(cache[(s.start, s.size)][..., (a - s.start) * hop : (z - s.start) * hop])
        return torch.cat(pieces, dim=-1)

    def decode(self, latents: torch.Tensor, *, chunk_frames: int = CHUNK_FRAMES, overlap: int = CHUNK_OVERLAP,
               max_batch: int = 8) -> torch.Tensor:
        """Decode ``latents [B, T, C]`` to float32 audio ``[B, 1, T * hop]`` with the reference chunk schedule.

        Memory is bounded by ``max_batch`` windows of ``chunk_frames`` per generator pass. Gradients flow
        to ``latents`` when they require grad (used by decoder inversion).
        """
        self._check_latents(latents)
        check_schedule(chunk_frames, overlap)
        total = latents.shape[1]
        if total == 0:
            return latents.new_zeros(latents.shape[0], 1, 0, dtype=torch.float32)
        segments = plan_segments(total, chunk_frames, overlap, final=True)
        return self._assemble(latents.to(self.device), segments, 0, total, {}, max_batch)

    def decode_stream(self, blocks: Iterable[torch.Tensor], *, chunk_frames: int = CHUNK_FRAMES,
                      overlap: int = CHUNK_OVERLAP, max_batch: int = 8) -> Iterator[torch.Tensor]:
        """Decode latent blocks ``[B, t, C]`` as they arrive; yield float32 audio ``[B, 1, n]`` once final.

        The concatenated output equals ``decode(torch.cat(blocks, 1))``: every window of the reference
        schedule is decoded exactly once, and a frame is released only when no later block can change
        which window it comes from (:func:`~dr2studio.models.chunking.stable_frames`). Audio starts once
        ``chunk_frames`` frames exist (after two blocks of 10) and then trails the newest frame by about
        ``chunk_frames - overlap // 2`` frames; the rest comes out when ``blocks`` is exhausted (the last
        window of the reference schedule starts at ``T - chunk_frames`` and needs the total length ``T``).
        Runs without autograd.
        """
        check_schedule(chunk_frames, overlap)
        latents: torch.Tensor | None = None
        cache: dict[tuple[int, int], torch.Tensor] = {}
        emitted = 0
        for i, block in enumerate(blocks):
            self._check_latents(block, f"block {i}")
            if latents is not None and block.shape[0] != latents.shape[0]:
                raise ValueError(f"block {i} has batch size {block.shape[0]}, earlier blocks {latents.shape[0]}")
            block = block.to(self.device)
            latents = block if latents is None else torch.cat([latents, block], dim=1)
            ready = stable_frames(latents.shape[1], chunk_frames, overlap)
            if ready > emitted:
                segments = plan_segments(latents.shape[1], chunk_frames, overlap, final=False)
                with torch.no_grad():
                    audio = self._assemble(latents, segments, emitted, ready, cache, max_batch)
                emitted = ready
                _evict(cache, segments, emitted)
                yield audio
        if latents is None or latents.shape[1] == emitted:
            return
        segments = plan_segments(latents.shape[1], chunk_frames, overlap, final=True)
        with torch.no_grad():
            audio = self._assemble(latents, segments, emitted, latents.shape[1], cache, max_batch)
        yield audio


def _evict(cache: dict[tuple[int, int], torch.Tensor], segments: list[Segment], emitted: int) -> None:
    """Drop decoded windows whose frames have all been released."""
    done = {(s.start, s.size) for s in segments[:-1] if s.hi <= emitted}
    for key in done & set(cache):
        del cache[key]


def default_device_dtype(device: str | torch.device | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """The decoder's device and dtype: :func:`dr2studio.weights.device_dtype` for the ``"decoder"`` role."""
    return device_dtype("decoder", device, dtype)


def load_decoder(model_dir: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> BigVGANDecoder:
    """Load ``decoder.json`` + ``decoder.safetensors`` (preferred) or ``decoder.bin`` (``{"generator": ...}``).

    Weight norm (either key style) is folded away; the model is in eval mode with frozen parameters.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory not found: {model_dir}")
    config = DecoderConfig.load(model_dir / DECODER_JSON)
    weights = model_dir / DECODER_SAFETENSORS
    if not weights.is_file():
        weights = model_dir / DECODER_BIN
    if not weights.is_file():
        raise CheckpointError(f"{model_dir}: no {DECODER_SAFETENSORS} or {DECODER_BIN} next to {DECODER_JSON}")
    return load_weights(BigVGANDecoder(config), weights, role="decoder", device=device, dtype=dtype,
                        pickle_key="generator")


def save_decoder(decoder: BigVGANDecoder, model_dir: str | os.PathLike) -> Path:
    """Write ``decoder.json`` + ``decoder.safetensors`` (float32, weight norm folded) into ``model_dir``.

    :func:`load_decoder` prefers ``decoder.safetensors`` over a ``decoder.bin`` in the same folder.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = fold_weight_norm(decoder.state_dict(), "decoder")
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    save_safetensors(state, model_dir / DECODER_SAFETENSORS)
    decoder.config.save(model_dir / DECODER_JSON)
    return model_dir
