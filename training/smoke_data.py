"""Tiny structured datasets for ``--smoke`` runs and tests (seconds to make, learnable).

Why not random noise: a smoke run must show the loss going down, so the data has structure a
small model can pick up -- latents are smooth style-dependent oscillations, SSL targets are a fixed
projection of the latents, audio is a few sines whose pitch depends on the song.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from dr2studio.data.shards import DatasetIndex, Example, write_index, write_shard

__all__ = ["make_latent_dataset", "make_audio_manifest", "synthetic_example"]


def synthetic_example(i: int, *, channels: int = 64, style_dim: int = 512, ssl_dim: int = 32, vocab: int = 300,
                      min_frames: int = 12, max_frames: int = 40, num_styles: int = 4, seed: int = 0,
                      styles: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> Example:
    """Song ``i``: latents ``[T, channels]`` oscillating at a rate set by its style ``i % num_styles``.

    ``styles [num_styles, style_dim]`` and ``tokens [L]`` replace the random conditions, so a test can
    use the vectors and ids of a real front end (a model's tag style encoder and phoneme table).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    num_styles = styles.shape[0] if styles is not None else num_styles
    k = i % num_styles
    frames = int(torch.randint(min_frames, max_frames + 1, (1,), generator=g))
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    phase = torch.linspace(0, math.pi, channels)[None]
    latents = 0.8 * torch.sin(2 * math.pi * t / (4 + 2 * k) + phase) + 0.05 * torch.randn(frames, channels, generator=g)
    if styles is None:
        styles = torch.nn.functional.normalize(
            torch.randn(num_styles, style_dim, generator=torch.Generator().manual_seed(seed)), dim=-1)
    proj = torch.randn(channels, ssl_dim, generator=torch.Generator().manual_seed(seed + 1)) / math.sqrt(channels)
    if tokens is None:
        tokens = torch.randint(1, vocab, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)
    return Example(id=f"smoke-{i:05d}", latents=latents, tokens=tokens, style=styles[k],
                   ssl={"smoke": torch.tanh(latents @ proj)}, language="en")


def make_latent_dataset(root: str | Path, num_songs: int = 32, per_shard: int = 8, seed: int = 0, **kw) -> Path:
    """Write a shard dataset of :func:`synthetic_example` songs to ``root``; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    infos = []
    for s in range(0, num_songs, per_shard):
        exs = [synthetic_example(i, seed=seed, **kw) for i in range(s, min(num_songs, s + per_shard))]
        infos.append(write_shard(root / f"shard-{s // per_shard:05d}.safetensors", exs))
    ex = synthetic_example(0, seed=seed, **kw)
    write_index(root, DatasetIndex(shards=infos, latent_rate=5.0, latent_channels=ex.latents.shape[1],
                                   style_dim=ex.style.shape[0], ssl={n: v.shape[1] for n, v in ex.ssl.items()},
                                   report={"source": "training.smoke_data"}))
    return root


def make_audio_manifest(root: str | Path, num_songs: int = 6, seconds: float = 2.0, sample_rate: int = 24000,
                        seed: int = 0) -> Path:
    """Write ``num_songs`` short tonal WAV files and a manifest; returns the manifest path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for i in range(num_songs):
        f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        env = 0.5 + 0.5 * np.sin(2 * np.pi * (1 + i % 3) * t) ** 2
        audio = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * env * 0.25
        sf.write(root / f"song{i:03d}.wav", audio.astype(np.float32), sample_rate)
        lines.append(json.dumps({"id": f"song{i:03d}", "audio": f"song{i:03d}.wav", "lyrics": "[verse]\nla la la",
                                 "style": f"test, {int(f0)} hz", "language": "en"}))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
