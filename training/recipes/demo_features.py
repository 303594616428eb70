"""REPA targets for the demo model: a small spectral extractor, plugged into ``training.prepare_data``.

    python -m training.prepare_data ... \
        --set 'ssl=[{"name": "spectral", "cls": "training.recipes.demo_features:SpectralFeatures"}]'

Why not the built-in ``MelFeatures``: that one pools whole latent frames, so it says nothing about
*where* inside a 200 ms frame a drum hit falls, and rhythm is what a small DiT finds hardest. Per latent
frame this extractor gives the mean log-mel of ``n_mels`` bands (timbre, pitch region, loudness) and
the spectral-flux onset envelope at ``onset_points`` evenly spaced instants inside the frame (rhythm),
``n_mels + onset_points`` = 64 values, z-scored per song so that no single feature dominates the
cosine similarity REPA maximises.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["SpectralFeatures"]


class SpectralFeatures:
    """``__call__(audio [N] float32, sample_rate, frames) -> [frames, n_mels + onset_points]`` float32."""

    def __init__(self, n_mels: int = 48, onset_points: int = 16) -> None:
        if n_mels < 1 or onset_points < 1:
            raise ValueError(f"n_mels and onset_points must be >= 1, got {n_mels}, {onset_points}")
        self.n_mels, self.points = n_mels, onset_points
        self._mel: dict[tuple[int, int], Any] = {}

    @property
    def dim(self) -> int:
        return self.n_mels + self.points

    def _transform(self, sample_rate: int, sub: int) -> Any:
        key = (sample_rate, sub)
        if key not in self._mel:
            import torchaudio

            self._mel[key] = torchaudio.transforms.MelSpectrogram(
                sample_rate, n_fft=max(64, 4 * sub), hop_length=sub, n_mels=self.n_mels, center=True, power=1.0)
        return self._mel[key]

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        hop = audio.shape[0] // frames  # samples per latent frame
        sub = hop // self.points
        if sub < 1:
            raise ValueError(f"{audio.shape[0]} samples are too few for {frames} frames x {self.points} onset points")
        x = torch.from_numpy(np.ascontiguousarray(audio[: frames * self.points * sub], np.float32))
        logmel = torch.log(self._transform(sample_rate, sub)(x).clamp_min(1e-5))[:, : frames * self.points]
        logmel = torch.nn.functional.pad(logmel, (0, frames * self.points - logmel.shape[1]), mode="replicate")
        flux = torch.relu(torch.diff(logmel, dim=1, prepend=logmel[:, :1])).mean(0)  # [frames * points]
        per_frame = logmel.reshape(self.n_mels, frames, self.points).mean(-1).T  # [frames, n_mels]
        feats = torch.cat([per_frame, flux.reshape(frames, self.points)], dim=1)
        feats = (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp_min(1e-3)
        return feats.numpy().astype(np.float32)
