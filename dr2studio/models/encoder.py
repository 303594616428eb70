"""Music-VAE encoder (ours; the release has none): mono audio -> latent frames.

Shape legend: B batch, N input samples (a multiple of hop = prod(strides)), T = N / hop frames,
C latent channels (64).

Oobleck-style (the Stable Audio 2 VAE encoder): a 7-tap input convolution, then per stride s a block of
three dilated residual units (dilations 1, 3, 9) followed by Snake and a strided convolution
(kernel 2s) that doubles or grows the width, then Snake and a 3-tap projection to the latent channels.
With the default strides 24 kHz audio becomes 5 latent frames per second, the rate of the released
decoder. An optional diagonal-Gaussian bottleneck (``kl=True``) doubles the projection into
mean and scale; it is off by default, as in the paper. The paper's optional transformer block between
the latents and the decoder is on the decoder side (``DecoderConfig.transformer_layers``), so that the
released decoder layout stays the ``transformer_layers = 0`` case.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.models.activations import Activation1d, make_activation
from dr2studio.models.vae_module import VAEModule
from dr2studio.weights import CheckpointError, fold_weight_norm, load_weights, save_safetensors

__all__ = ["EncoderConfig", "MusicEncoder", "load_encoder", "save_encoder", "has_encoder", "kl_divergence"]

log = logging.getLogger(__name__)

ENCODER_JSON = "encoder.json"
ENCODER_SAFETENSORS = "encoder.safetensors"


@dataclasses.dataclass
class EncoderConfig(JsonConfig):
    """``encoder.json``. Defaults: 24 kHz in, hop 4800 (5 frames/s), 64 latent channels."""

    sample_rate: int = 24000
    in_channels: int = 1
    channels: int = 64
    channel_mults: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    strides: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 6, 10, 10])
    latent_dim: int = 64
    activation: str = "snake"
    snake_logscale: bool = True
    antialias: bool = False
    kl: bool = False

    @property
    def hop_length(self) -> int:
        """Input samples per latent frame."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def validate(self) -> None:
        if not self.strides or any(s < 1 for s in self.strides):
            raise ConfigError(f"strides must be a non-empty list of positive integers, got {self.strides}")
        if len(self.channel_mults) != len(self.strides):
            raise ConfigError(
                f"channel_mults {self.channel_mults} needs one entry per stride {self.strides}"
            )
        if min(self.channels, self.latent_dim, self.in_channels, self.sample_rate, *self.channel_mults) < 1:
            raise ConfigError("channels, channel_mults, latent_dim, in_channels and sample_rate must be positive")
        if self.activation not in ("snake", "snakebeta"):
            raise ConfigError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")


def _act(cfg: EncoderConfig, channels: int) -> nn.Module:
    act = make_activation(cfg.activation, channels, cfg.snake_logscale)
    return Activation1d(act) if cfg.antialias else act


class ResidualUnit(nn.Module):
    """``x + conv1x1(act(conv7_dilated(act(x))))``, ``[B, ch, L] -> [B, ch, L]``."""

    def __init__(self, cfg: EncoderConfig, channels: int, dilation: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(cfg, channels),
            nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation),
            _act(cfg, channels),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    """Residual units at dilations 1, 3, 9, then a strided conv: ``[B, c_in, L] -> [B, c_out, L / stride]``."""

    def __init__(self, cfg: EncoderConfig, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(cfg, c_in, 1),
            ResidualUnit(cfg, c_in, 3),
            ResidualUnit(cfg, c_in, 9),
            _act(cfg, c_in),
            nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def kl_divergence(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)), averaged over all elements."""
    var = std.pow(2)
    return 0.5 * (mean.pow(2) + var - torch.log(var) - 1.0).mean()


class MusicEncoder(VAEModule):
    """Audio ``[B, 1, N]`` -> latents ``[B, T, C]`` (channels last, as the decoder and DiT take them)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        widths = [config.channels * m for m in [1, *config.channel_mults]]
        self.conv_in = nn.Conv1d(config.in_channels, widths[0], 7, padding=3)
        self.blocks = nn.Sequential(
            *(EncoderBlock(config, widths[i], widths[i + 1], s) for i, s in enumerate(config.strides))
        )
        self.act_out = _act(config, widths[-1])
        self.conv_out = nn.Conv1d(widths[-1], config.latent_dim * (2 if config.kl else 1), 3, padding=1)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``audio [B, 1, N]`` -> ``(mean [B, T, C], std [B, T, C] or None when kl is off)``."""
        if audio.dim() != 3 or audio.shape[1] != self.config.in_channels:
            raise ValueError(f"audio must be [B, {self.config.in_channels}, N], got {list(audio.shape)}")
        if audio.shape[-1] == 0 or audio.shape[-1] % self.hop_length:
            raise ValueError(
                f"audio length {audio.shape[-1]} must be a positive multiple of the hop {self.hop_length} "
                "(pad it, e.g. with dr2studio.vae.encode.pad_to_hop)"
            )
        h = self.conv_out(self.act_out(self.blocks(self.conv_in(audio.to(self.dtype)))))
        h = h.transpose(1, 2)
        if not self.config.kl:
            return h, None
        mean, scale = h.chunk(2, dim=-1)
        return mean, nn.functional.softplus(scale) + 1e-4

    def forward(self, audio: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        """Latents ``[B, T, C]``; with ``kl`` a reparameterised sample when ``sample`` (default: training mode)."""
        mean, std = self.moments(audio)
        if std is None or not (self.training if sample is None else sample):
            return mean
        return mean + std * torch.randn_like(std)


def has_encoder(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` holds ``encoder.json`` and ``encoder.safetensors``."""
    model_dir = Path(model_dir)
    return (model_dir / ENCODER_JSON).is_file() and (model_dir / ENCODER_SAFETENSORS).is_file()


def load_encoder(model_dir: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> MusicEncoder:
    """Load ``encoder.json`` + ``encoder.safetensors`` (eval mode, frozen, weight norm folded).

    The default dtype is float32 everywhere: encoding is cheap and its output seeds inversion.
    """
    model_dir = Path(model_dir)
    if not has_encoder(model_dir):
        raise CheckpointError(f"{model_dir}: no encoder ({ENCODER_JSON} + {ENCODER_SAFETENSORS}); "
                              "released DiffRhythm 2 models have none, use decoder inversion instead")
    config = EncoderConfig.load(model_dir / ENCODER_JSON)
    encoder = load_weights(MusicEncoder(config), model_dir / ENCODER_SAFETENSORS, role="encoder",
                           device=device, dtype=dtype)
    log.info("encoder hop %d at %d Hz", config.hop_length, config.sample_rate)
    return encoder


def save_encoder(encoder: MusicEncoder, model_dir: str | os.PathLike) -> Path:
    """Write ``encoder.json`` + ``encoder.safetensors`` (float32, weight norm folded) into ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = fold_weight_norm(encoder.state_dict(), "encoder")
    save_safetensors({k: v.to(torch.float32) for k, v in state.items()}, model_dir / ENCODER_SAFETENSORS)
    encoder.config.save(model_dir / ENCODER_JSON)
    return model_dir
