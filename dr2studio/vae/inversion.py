"""Decoder inversion: find latents whose decoding matches given audio (the release ships no encoder).

Shapes: B batch, T frames, C latent channels, N = T * hop samples at the decoder rate.

The latents are optimised with Adam on a multi-resolution STFT + multi-scale mel loss. The loss follows
the decoder's own chunk schedule (:func:`~dr2studio.models.chunking.plan_segments`, as
:meth:`BigVGANDecoder.decode` uses it): each window of ``chunk_frames`` frames is decoded alone, but only
the frames it contributes to the decoded song (its segment) are kept, and a group of up to ``max_batch``
consecutive windows is compared with the matching contiguous stretch of the target. The objective is
thus exactly "``decoder.decode(latents)`` matches the audio", whose minimum is at the latents that made
it; comparing whole windows instead would also pull each window's overlap, which the decoded song
takes from the neighbouring window, towards audio it never produces. Each group is back-propagated as
soon as it is computed, so memory stays bounded by ``max_batch`` windows however long the song is.
Optimisation stops at ``steps``, when the loss falls below ``target_loss``, or when it has not improved
by ``min_delta`` (relative) for ``patience`` steps; the best latents seen are returned.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.models.bigvgan import CHUNK_FRAMES, CHUNK_OVERLAP, BigVGANDecoder
from dr2studio.models.chunking import plan_segments
from dr2studio.vae.losses import MultiResolutionSTFTLoss, MultiScaleMelLoss

__all__ = ["InversionConfig", "InversionResult", "invert_decoder", "ProgressFn"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]
"""``progress(step, total_steps, loss)``, called after every optimisation step."""


@dataclasses.dataclass
class InversionConfig(JsonConfig):
    """Optimiser settings. ``stft_sizes`` / ``mel_sizes`` of ``None`` scale the 48 kHz defaults
    (2048/1024/512-point FFTs) to the decoder's sample rate and window length."""

    steps: int = 300
    lr: float = 0.1
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    patience: int = 40
    min_delta: float = 1e-3
    target_loss: float = 0.0
    stft_sizes: list[int] | None = None
    mel_sizes: list[int] | None = None
    chunk_frames: int = CHUNK_FRAMES
    overlap: int = CHUNK_OVERLAP
    max_batch: int = 8

    def validate(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.patience < 1:
            raise ConfigError(f"need steps >= 1, lr > 0, patience >= 1; got {self.steps}, {self.lr}, {self.patience}")


@dataclasses.dataclass
class InversionResult:
    latents: torch.Tensor  # [B, T, C], float32, detached
    loss: float  # best loss reached
    steps: int  # optimisation steps run
    history: list[float]  # loss after every step
    stopped_early: bool


def _fft_sizes(sample_rate: int, window_samples: int, given: list[int] | None) -> list[int]:
    if given:
        return list(given)
    sizes = []
    for base in (2048, 1024, 512):
        n = 2 ** max(4, round(math.log2(base * sample_rate / 48000)))
        sizes.append(min(n, 2 ** int(math.log2(max(16, window_samples // 2)))))
    return sorted(set(sizes), reverse=True)


def _losses(decoder: BigVGANDecoder, cfg: InversionConfig, window_samples: int, device: torch.device
            ) -> tuple[MultiResolutionSTFTLoss, MultiScaleMelLoss]:
    sr = decoder.sample_rate
    stft = MultiResolutionSTFTLoss([(n, n // 4, n) for n in _fft_sizes(sr, window_samples, cfg.stft_sizes)])
    mel_ffts = _fft_sizes(sr, window_samples, cfg.mel_sizes)
    mel = MultiScaleMelLoss(sr, mel_ffts, [max(4, min(n // 16, 128)) for n in mel_ffts])
    return stft.to(device), mel.to(device)


def invert_decoder(decoder: BigVGANDecoder, audio: torch.Tensor, *, init: torch.Tensor | None = None,
                   config: InversionConfig | None = None, progress: ProgressFn | None = None) -> InversionResult:
    """Latents ``[B, T, C]`` that decode to ``audio [B, 1, N]`` (or ``[B, N]``) at ``decoder.sample_rate``.

    ``T = ceil(N / hop)``; the audio is zero-padded to whole frames. ``init`` (e.g. the encoder's output)
    is the starting point, zeros otherwise. The decoder's parameters are left untouched.
    """
    cfg = config or InversionConfig()
    cfg.validate()
    if audio.dim() == 2:
        audio = audio.unsqueeze(1)
    if audio.dim() != 3 or audio.shape[1] != 1 or audio.shape[-1] == 0:
        raise ValueError(f"audio must be mono [B, 1, N] with N > 0, got {list(audio.shape)}")
    hop, device = decoder.hop_length, decoder.device
    frames = math.ceil(audio.shape[-1] / hop)
    target = torch.nn.functional.pad(audio.to(device, torch.float32), (0, frames * hop - audio.shape[-1]))
    batch = target.shape[0]
    shape = (batch, frames, decoder.latent_dim)
    if init is not None and tuple(init.shape) != shape:
        raise ValueError(f"init latents must be {list(shape)} for this audio, got {list(init.shape)}")
    latents = (init.detach().to(device, torch.float32).clone() if init is not None
               else torch.zeros(shape, device=device)).requires_grad_(True)
    segments = plan_segments(frames, cfg.chunk_frames, cfg.overlap, final=True)
    size = segments[0].size
    stft_loss, mel_loss = _losses(decoder, cfg, size * hop, device)
    optimizer = torch.optim.Adam([latents], lr=cfg.lr)
    per_pass = max(1, cfg.max_batch // batch)
    groups = [segments[i : i + per_pass] for i in range(0, len(segments), per_pass)]
    # each group's stretch of the song: from its first segment's first frame to its last one's end
    targets = [target[..., g[0].lo * hop : g[-1].hi * hop] for g in groups]

    grad_state = [p.requires_grad for p in decoder.parameters()]
    decoder.requires_grad_(False)
    best, best_latents, history, stale = math.inf, latents.detach().clone(), [], 0
    try:
        for step in range(1, cfg.steps + 1):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for group, tgt in zip(groups, targets):
                x = torch.cat([latents[:, g.start : g.start + g.size] for g in group]).transpose(1, 2)
                windows = decoder(x).float().split(batch)  # one [B, 1, size * hop] per window
                pred = torch.cat([w[..., (g.lo - g.start) * hop : (g.hi - g.start) * hop]
                                  for w, g in zip(windows, group)], dim=-1)
                loss = cfg.stft_weight * stft_loss(pred, tgt) + cfg.mel_weight * mel_loss(pred, tgt)
                loss = loss * ((group[-1].hi - group[0].lo) / frames)
                loss.backward()
                total += loss.item()
            history.append(total)
            stale = 0 if total < best * (1 - cfg.min_delta) else stale + 1
            if total < best:  # the loss belongs to the latents before this step's update
                best, best_latents = total, latents.detach().clone()
            optimizer.step()
            if progress is not None:
                progress(step, cfg.steps, total)
            if total <= cfg.target_loss or stale >= cfg.patience:
                break
    finally:
        for p, flag in zip(decoder.parameters(), grad_state):
            p.requires_grad_(flag)
    stopped = len(history) < cfg.steps
    log.info("inversion: %d steps, loss %.4f -> %.4f%s", len(history), history[0], best,
             " (early stop)" if stopped else "")
    return InversionResult(best_latents, best, len(history), history, stopped)
