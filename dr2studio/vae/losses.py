"""Training losses of the music VAE: reconstruction (multi-scale mel, multi-resolution STFT) and GAN
(least-squares adversarial, feature matching, optional KL).

Shapes: audio ``[B, 1, N]`` (or ``[B, N]``); every loss returns a scalar tensor.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MultiScaleMelLoss",
    "MultiResolutionSTFTLoss",
    "frame_locked_loss",
    "frame_onset_envelope",
    "latent_onset_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "feature_matching_loss",
]

_LOG_EPS = 1e-5


def _flat(audio: torch.Tensor) -> torch.Tensor:
    if audio.dim() == 3:
        if audio.shape[1] != 1:
            raise ValueError(f"expected mono audio [B, 1, N], got {list(audio.shape)}")
        audio = audio[:, 0]
    if audio.dim() != 2:
        raise ValueError(f"expected audio [B, 1, N] or [B, N], got {list(audio.shape)}")
    return audio.float()


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = _flat(pred), _flat(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {list(pred.shape)} and target {list(target.shape)} differ in shape")
    return pred, target


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of L1 between log-mel magnitudes (torchaudio ``MelSpectrogram``, hop = n_fft / 4).

    Small windows catch transients, large ones pitch; ``n_mels`` per scale keeps every mel band fed
    by at least one FFT bin at small sizes.
    """

    def __init__(self, sample_rate: int, n_ffts: Sequence[int] = (512, 1024, 2048),
                 n_mels: Sequence[int] = (40, 80, 160), f_min: float = 0.0, f_max: float | None = None) -> None:
        super().__init__()
        if len(n_ffts) != len(n_mels):
            raise ValueError(f"n_ffts {list(n_ffts)} and n_mels {list(n_mels)} need the same length")
        import torchaudio

        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n, win_length=n, hop_length=n // 4, n_mels=m,
                f_min=f_min, f_max=f_max, power=1.0, center=True, norm="slaney", mel_scale="slaney",
            )
            for n, m in zip(n_ffts, n_mels)
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = _check_pair(pred, target)
        total = pred.new_zeros(())
        for mel in self.mels:
            a = torch.log(mel(pred).clamp_min(_LOG_EPS))
            b = torch.log(mel(target).clamp_min(_LOG_EPS))
            total = total + F.l1_loss(a, b)
        return total / len(self.mels)


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions ``(n_fft, hop, win)``."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))) -> None:
        super().__init__()
        self.resolutions = [tuple(int(v) for v in r) for r in resolutions]
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window_{i}", torch.hann_window(win), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = _check_pair(pred, target)
        total = pred.new_zeros(())
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window_{i}")
            sp = torch.stft(pred, n_fft, hop, win, window, return_complex=True).abs().clamp_min(_LOG_EPS)
            st = torch.stft(target, n_fft, hop, win, window, return_complex=True).abs().clamp_min(_LOG_EPS)
            convergence = torch.linalg.norm(st - sp) / torch.linalg.norm(st).clamp_min(_LOG_EPS)
            total = total + convergence + F.l1_loss(torch.log(sp), torch.log(st))
        return total / len(self.resolutions)


def frame_locked_loss(pred: torch.Tensor, target: torch.Tensor, hop: int) -> torch.Tensor:
    """Energy of the part of the waveform that repeats identically in every latent frame, relative to the target's.

    A decoder that upsamples by transposed convolutions can answer every frame with the same
    waveform plus a little detail: a comb at the frame rate and its harmonics. Magnitude losses with
    windows shorter than about two frames hardly see it (it has the average spectral envelope), so
    a small decoder can settle there; the shipped demo VAE did, and every song then read as the same
    key. The penalty compares the frame-synchronous means ``mean_k x[k*hop + j]`` of the decoded and
    the real segment (the real one is close to zero: music is not locked to the frame grid).
    """
    pred, target = _check_pair(pred, target)
    n = pred.shape[-1] // hop * hop
    if n == 0:
        raise ValueError(f"segments of {pred.shape[-1]} samples are shorter than one frame ({hop} samples)")
    fp = pred[..., :n].reshape(pred.shape[0], -1, hop).mean(1)
    ft = target[..., :n].reshape(target.shape[0], -1, hop).mean(1)
    return (fp - ft).pow(2).mean() / target.pow(2).mean().clamp_min(_LOG_EPS)



def frame_onset_envelope(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """Spectral-flux onset strength per latent frame, standardised per item: ``[B, N] -> [B, N // hop]``.

    Frame ``k`` is the rectified rise of the log magnitude over a window ending at ``(k + 1) * hop``
    (so it belongs to the latent frame that covers those samples), averaged over frequency; then zero
    mean and unit variance per item (all zeros for an item without onsets). The same flux as
    :func:`dr2studio.audio.features.onset_strength`, but in torch on the training device and on the latent
    frame grid, because it is a per-batch training target.
    """
    x = _flat(audio)
    frames = x.shape[-1] // hop
    if frames < 2:
        raise ValueError(f"need at least two frames of {hop} samples, got {x.shape[-1]} samples")
    n_fft = 1 << (2 * hop - 1).bit_length()
    padded = F.pad(x[..., : frames * hop], (n_fft - hop, 0))
    mag = torch.stft(padded, n_fft, hop, n_fft, torch.hann_window(n_fft, device=x.device), center=False,
                     return_complex=True).abs()  # [B, F, frames]
    logmag = torch.log1p(1000.0 * mag / mag.amax(dim=(1, 2), keepdim=True).clamp_min(_LOG_EPS))
    flux = F.pad(torch.relu(logmag.diff(dim=-1)).mean(1), (1, 0))
    centred = flux - flux.mean(-1, keepdim=True)
    return centred / centred.std(-1, keepdim=True).clamp_min(1e-4)


def latent_onset_loss(latents: torch.Tensor, audio: torch.Tensor, hop: int, channel: int = 0) -> torch.Tensor:
    """Mean squared error between one latent channel and the audio's onset envelope (:func:`frame_onset_envelope`).

    Why: a VAE trained on reconstruction alone may keep the beat where a mean-squared flow-matching
    DiT cannot see it (the demo VAE's latents held no more beat-locked variation than chance, so its
    DiT never learned tempo). Tying a channel to the onset envelope gives rhythm its own unit-variance
    direction in the latent space. ``latents [B, T, C]`` with ``T = N // hop`` of ``audio [B, 1, N]``.
    """
    if latents.dim() != 3 or not 0 <= channel < latents.shape[-1]:
        raise ValueError(f"latents must be [B, T, C] with channel {channel} < C, got {list(latents.shape)}")
    with torch.no_grad():
        envelope = frame_onset_envelope(audio, hop)
    if envelope.shape != latents.shape[:2]:
        raise ValueError(f"{latents.shape[1]} latent frames but {envelope.shape[1]} audio frames of {hop} samples")
    return (latents[..., channel].float() - envelope).pow(2).mean()

def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN: push real scores to 1 and fake scores to 0 (summed over sub-discriminators)."""
    total = real_logits[0].new_zeros(())
    for real, fake in zip(real_logits, fake_logits, strict=True):
        total = total + (1 - real.float()).pow(2).mean() + fake.float().pow(2).mean()
    return total


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN, generator side: push fake scores to 1."""
    total = fake_logits[0].new_zeros(())
    for fake in fake_logits:
        total = total + (1 - fake.float()).pow(2).mean()
    return total


def feature_matching_loss(real_feats: Sequence[Sequence[torch.Tensor]],
                          fake_feats: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """L1 between discriminator activations on real (treated as constants) and generated audio."""
    total = fake_feats[0][0].new_zeros(())
    count = 0
    for reals, fakes in zip(real_feats, fake_feats, strict=True):
        for real, fake in zip(reals, fakes, strict=True):
            total = total + F.l1_loss(fake.float(), real.detach().float())
            count += 1
    return total / max(count, 1)
