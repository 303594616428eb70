"""Anti-aliased periodic activations of the BigVGAN decoder (and the Snake of the encoder).

Shapes: B batch, C channels, L samples. Every module here maps ``[B, C, L] -> [B, C, L]``.

An anti-aliased activation upsamples 2x with a Kaiser-windowed sinc, applies Snake/SnakeBeta at the
doubled rate (the nonlinearity creates harmonics that would otherwise fold back), and low-pass
filters back down. The two 12-tap filters are persistent buffers, because the released checkpoint
stores them (``upsample.filter``, ``downsample.lowpass.filter``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "kaiser_sinc_filter",
    "Snake",
    "SnakeBeta",
    "UpSample1d",
    "LowPassFilter1d",
    "DownSample1d",
    "Activation1d",
    "make_activation",
]

_EPS = 1e-9  # the reference divides by (alpha + 1e-9)


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass filter ``[1, 1, kernel_size]``, normalised to unit DC gain.

    ``cutoff`` and ``half_width`` are fractions of the sample rate. The Kaiser beta follows the
    usual attenuation formula (A > 50 dB, 21..50 dB, below).
    """
    if cutoff <= 0 or kernel_size < 2:
        raise ValueError(f"kaiser_sinc_filter: need cutoff > 0 and kernel_size >= 2, got {cutoff}, {kernel_size}")
    half = kernel_size // 2
    atten = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, dtype=torch.float64)
    if kernel_size % 2 == 0:
        t = torch.arange(-half, half, dtype=torch.float64) + 0.5
    else:
        t = torch.arange(kernel_size, dtype=torch.float64) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    taps = taps / taps.sum()
    return taps.to(torch.float32).view(1, 1, kernel_size)


class Snake(nn.Module):
    """``x + sin^2(alpha x) / alpha`` with a learned per-channel frequency ``alpha`` (log-scaled if asked)."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def _scale(self, p: torch.Tensor) -> torch.Tensor:
        p = p.exp() if self.logscale else p
        return p.view(1, -1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self._scale(self.alpha)
        return x + (1.0 / (alpha + _EPS)) * torch.sin(x * alpha).pow(2)


class SnakeBeta(Snake):
    """Snake with a separate magnitude: ``x + sin^2(alpha x) / beta``."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__(channels, logscale)
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self._scale(self.alpha), self._scale(self.beta)
        return x + (1.0 / (beta + _EPS)) * torch.sin(x * alpha).pow(2)


class UpSample1d(nn.Module):
    """Band-limited upsampling by ``ratio``: replicate pad, depthwise transposed conv, crop."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None) -> None:
        super().__init__()
        self.ratio = ratio
        self.kernel_size = kernel_size or int(6 * ratio // 2) * 2
        self.pad = self.kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (self.kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (self.kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, self.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, weight, stride=self.ratio, groups=channels)
        return x[..., self.crop_left : x.shape[-1] - self.crop_right]


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass filter with replicate padding and an optional stride."""

    def __init__(self, cutoff: float, half_width: float, stride: int = 1, kernel_size: int = 12) -> None:
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        return F.conv1d(x, weight, stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    """Band-limited downsampling by ``ratio`` (low-pass then decimate in one strided conv)."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None) -> None:
        super().__init__()
        kernel_size = kernel_size or int(6 * ratio // 2) * 2
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, stride=ratio, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Activation1d(nn.Module):
    """Anti-aliased activation: 2x upsample -> ``act`` -> 2x downsample. ``[B, C, L] -> [B, C, L]``."""

    def __init__(self, act: nn.Module, up_ratio: int = 2, down_ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(up_ratio, kernel_size)
        self.downsample = DownSample1d(down_ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def make_activation(kind: str, channels: int, logscale: bool) -> nn.Module:
    """Build ``Snake`` or ``SnakeBeta`` by the name used in ``decoder.json`` (``activation``)."""
    if kind == "snake":
        return Snake(channels, logscale)
    if kind == "snakebeta":
        return SnakeBeta(channels, logscale)
    raise ValueError(f"activation must be 'snake' or 'snakebeta', got {kind!r}")
