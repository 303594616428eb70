"""GAN discriminators for training the music VAE.

Every discriminator maps audio ``[B, 1, N]`` to ``(logits, features)``: a list of score maps (one per
sub-discriminator) and, for each, the list of its intermediate activations (for feature matching).

- Multi-period (HiFi-GAN): the waveform folded into ``[B, 1, N/p, p]`` for several primes p, 2-D convs
  along time: periodic structure.
- Multi-resolution (UnivNet/BigVGAN): log-magnitude STFTs at several sizes, 2-D convs: spectral detail.
- Multi-scale sub-band CQT (BigVGAN-v2 style): a constant-Q transform (octave by octave, on successively
  halved audio) as a 2-channel real/imag image, one input conv per octave, then dilated 2-D convs:
  pitch structure with log-frequency resolution, which music needs.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.models.activations import kaiser_sinc_filter

__all__ = [
    "DiscriminatorConfig",
    "PeriodDiscriminator",
    "MultiPeriodDiscriminator",
    "ResolutionDiscriminator",
    "MultiResolutionDiscriminator",
    "ConstantQTransform",
    "CQTDiscriminator",
    "MultiScaleCQTDiscriminator",
    "CombinedDiscriminator",
    "build_discriminators",
]

Output = tuple[list[torch.Tensor], list[list[torch.Tensor]]]
_SLOPE = 0.1


@dataclasses.dataclass
class DiscriminatorConfig(JsonConfig):
    """Which discriminators to build and how wide. ``width`` scales every channel count (1.0 = full size)."""

    sample_rate: int = 48000
    periods: list[int] = dataclasses.field(default_factory=lambda: [2, 3, 5, 7, 11])
    resolutions: list[list[int]] = dataclasses.field(  # [n_fft, hop, win]
        default_factory=lambda: [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]]
    )
    cqt_hops: list[int] = dataclasses.field(default_factory=lambda: [512, 256, 256])
    cqt_bins_per_octave: list[int] = dataclasses.field(default_factory=lambda: [24, 36, 48])
    cqt_octaves: int = 9
    cqt_fmin: float = 32.7
    width: float = 1.0

    def validate(self) -> None:
        if len(self.cqt_hops) != len(self.cqt_bins_per_octave):
            raise ConfigError("cqt_hops and cqt_bins_per_octave need one entry per CQT discriminator")
        if self.cqt_hops and self.cqt_fmin * 2**self.cqt_octaves > self.sample_rate / 2:
            raise ConfigError(
                f"CQT tops out at {self.cqt_fmin * 2 ** self.cqt_octaves:.0f} Hz, above Nyquist "
                f"{self.sample_rate / 2:.0f} Hz: lower cqt_octaves or cqt_fmin"
            )
        for hop in self.cqt_hops:
            if hop % 2 ** (self.cqt_octaves - 1):
                raise ConfigError(f"cqt hop {hop} must be divisible by 2**(cqt_octaves-1) = {2 ** (self.cqt_octaves - 1)}")
        if self.width <= 0:
            raise ConfigError(f"width must be positive, got {self.width}")


def _w(width: float, channels: int) -> int:
    return max(4, int(round(channels * width)))


def _run(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), _SLOPE)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x, feats


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: ``[B, 1, N] -> [B, 1, N/(p*3^k), p]`` scores."""

    def __init__(self, period: int, width: float = 1.0) -> None:
        super().__init__()
        self.period = period
        chans = [1] + [_w(width, c) for c in (32, 128, 512, 1024, 1024)]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)) for i in range(5)
        )
        self.post = nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, n = audio.shape
        if n % self.period:
            pad = self.period - n % self.period
            audio = F.pad(audio, (0, pad), mode="reflect" if n > pad else "constant")
            n += pad
        return _run(self.convs, self.post, audio.view(b, c, n // self.period, self.period))


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: list[int], width: float = 1.0) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, width) for p in periods)

    def forward(self, audio: torch.Tensor) -> Output:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class ResolutionDiscriminator(nn.Module):
    """Scores a log-magnitude STFT ``[B, 1, frames, bins]`` with 2-D convs (strided along frequency)."""

    def __init__(self, n_fft: int, hop: int, win: int, width: float = 1.0) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop, win
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        ch = _w(width, 32)
        self.convs = nn.ModuleList([
            nn.Conv2d(1, ch, (3, 9), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)),
        ])
        self.post = nn.Conv2d(ch, 1, (3, 3), padding=(1, 1))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = audio.squeeze(1).float()
        spec = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=True, return_complex=True)
        mag = torch.log1p(spec.abs()).transpose(1, 2).unsqueeze(1).to(audio.dtype)
        return _run(self.convs, self.post, mag)


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, resolutions: list[list[int]], width: float = 1.0) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(*r, width=width) for r in resolutions)

    def forward(self, audio: torch.Tensor) -> Output:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class ConstantQTransform(nn.Module):
    """Complex CQT by octaves: ``[B, 1, N] -> [B, 2, octaves * bins_per_octave, frames]`` (real, imag; low -> high).

    One bank of Hann-windowed complex exponentials covers the top octave; each lower octave reuses it
    on the audio low-passed and halved once more (and the hop halved), as in the classic recursive CQT.
    """

    def __init__(self, sample_rate: int, hop: int, octaves: int, bins_per_octave: int, fmin: float) -> None:
        super().__init__()
        if hop % 2 ** (octaves - 1):
            raise ValueError(f"hop {hop} must be divisible by 2**(octaves-1) = {2 ** (octaves - 1)}")
        self.hop, self.octaves, self.bins = hop, octaves, bins_per_octave
        q = 1.0 / (2 ** (1.0 / bins_per_octave) - 1)
        top_fmin = fmin * 2 ** (octaves - 1)
        freqs = top_fmin * 2 ** (torch.arange(bins_per_octave, dtype=torch.float64) / bins_per_octave)
        lengths = torch.ceil(q * sample_rate / freqs).long()
        size = int(lengths[0]) | 1  # odd, centred
        kernels = torch.zeros(2 * bins_per_octave, 1, size, dtype=torch.float64)
        for k, (f, n) in enumerate(zip(freqs.tolist(), lengths.tolist())):
            t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
            win = torch.hann_window(n, periodic=False, dtype=torch.float64)
            phase = 2 * math.pi * f * t / sample_rate
            start = (size - n) // 2
            kernels[k, 0, start : start + n] = win * torch.cos(phase) / win.sum()
            kernels[bins_per_octave + k, 0, start : start + n] = win * torch.sin(phase) / win.sum()
        self.register_buffer("kernels", kernels.float(), persistent=False)
        self.register_buffer("halfband", kaiser_sinc_filter(0.25, 0.05, 32), persistent=False)

    def _halve(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (15, 16), mode="reflect" if x.shape[-1] > 16 else "replicate")
        return F.conv1d(x, self.halfband.to(x.dtype), stride=2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x, hop, size = audio, self.hop, self.kernels.shape[-1]
        bands = []
        for _ in range(self.octaves):
            pad = size // 2
            xp = F.pad(x, (pad, pad), mode="reflect" if x.shape[-1] > pad else "constant")
            y = F.conv1d(xp, self.kernels.to(x.dtype), stride=hop)
            bands.insert(0, y)
            if len(bands) < self.octaves:
                x, hop = self._halve(x), hop // 2
        frames = min(b.shape[-1] for b in bands)
        bands = [b[..., :frames] for b in bands]
        real = torch.cat([b[:, : self.bins] for b in bands], dim=1)
        imag = torch.cat([b[:, self.bins :] for b in bands], dim=1)
        return torch.stack([real, imag], dim=1)


class CQTDiscriminator(nn.Module):
    """Scores a CQT image ``[B, 2, bins, frames]``: a separate input conv per octave (sub-band), then dilated convs."""

    def __init__(self, cfg: DiscriminatorConfig, hop: int, bins_per_octave: int) -> None:
        super().__init__()
        self.cqt = ConstantQTransform(cfg.sample_rate, hop, cfg.cqt_octaves, bins_per_octave, cfg.cqt_fmin)
        self.bins = bins_per_octave
        ch = _w(cfg.width, 32)
        self.subbands = nn.ModuleList(nn.Conv2d(2, ch, (3, 9), padding=(1, 4)) for _ in range(cfg.cqt_octaves))
        self.convs = nn.ModuleList(
            nn.Conv2d(ch, ch, (3, 9), stride=(2, 1), dilation=(1, d), padding=(1, 4 * d)) for d in (1, 2, 4)
        )
        self.convs.append(nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)))
        self.post = nn.Conv2d(ch, 1, (3, 3), padding=(1, 1))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = self.cqt(audio)
        x = torch.cat(
            [conv(spec[:, :, i * self.bins : (i + 1) * self.bins]) for i, conv in enumerate(self.subbands)], dim=2
        )
        return _run(self.convs, self.post, x)


class MultiScaleCQTDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            CQTDiscriminator(cfg, h, b) for h, b in zip(cfg.cqt_hops, cfg.cqt_bins_per_octave)
        )

    def forward(self, audio: torch.Tensor) -> Output:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class CombinedDiscriminator(nn.Module):
    """Runs several multi-discriminators and concatenates their outputs."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def forward(self, audio: torch.Tensor) -> Output:
        logits: list[torch.Tensor] = []
        feats: list[list[torch.Tensor]] = []
        for part in self.parts.values():
            lo, fe = part(audio)
            logits += lo
            feats += fe
        return logits, feats


def build_discriminators(cfg: DiscriminatorConfig) -> CombinedDiscriminator:
    """Multi-period + multi-resolution + multi-scale CQT (each skipped when its list is empty)."""
    cfg.validate()
    parts: dict[str, nn.Module] = {}
    if cfg.periods:
        parts["mpd"] = MultiPeriodDiscriminator(cfg.periods, cfg.width)
    if cfg.resolutions:
        parts["mrd"] = MultiResolutionDiscriminator(cfg.resolutions, cfg.width)
    if cfg.cqt_hops:
        parts["cqt"] = MultiScaleCQTDiscriminator(cfg)
    if not parts:
        raise ConfigError("no discriminator configured (periods, resolutions and cqt_hops are all empty)")
    return CombinedDiscriminator(parts)
