"""Tiny random-weight model directories for tests, examples and smoke runs.

``build_tiny_model(path)`` writes a complete model directory in the released layout (``model.json`` +
``model.safetensors``, ``decoder.json`` + decoder weights, ``vocab.json``) whose networks are a few
thousand parameters, so a whole generate -> extend -> infill -> stems session runs on a CPU in
seconds. The weights are random (seeded, every tensor perturbed so nothing is a trivial init); the
audio is noise-like, but every shape, rate and file is what the real model has: 48 kHz, 9600 samples
per latent frame, 64 latent channels, 10-frame blocks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["TINY_PHONES", "build_tiny_model", "tiny_dit_config", "tiny_decoder_config"]

#: Phone table of the tiny model: punctuation, the word separator and espeak's English IPA phones
#: (the first entries of the released table, same order), so English lyrics encode to real ids.
TINY_PHONES: tuple[str, ...] = (
    ",", ".", "?", "!", "_",
    "iː", "ɪ", "ɜː", "ɚ", "oːɹ", "ɔː", "ɔːɹ", "ɑː", "uː", "ʊ", "ɑːɹ", "ʌ", "ɛ", "æ", "eɪ", "aɪ", "ɔɪ", "aʊ",
    "oʊ", "ɪɹ", "ɛɹ", "ʊɹ", "p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "tʃ",
    "dʒ", "m", "n", "ŋ", "j", "w", "ɹ", "l", "tɹ", "dɹ", "ts", "dz", "i", "ɔ", "ə", "ɾ", "ᵻ", "ɐ", "ʔ", "n̩",
    "əl", "'", "…", ":", ";",
)


def tiny_dit_config() -> "object":
    """A DiT config with the released interface (mel_dim 64, 512 text ids, blocks of 10) and ~50k weights."""
    from dr2studio.models.dit import DiTConfig

    return DiTConfig(dim=32, depth=2, heads=2, ff_mult=2, mel_dim=64, text_num_embeds=512, block_size=10,
                     repa_depth=-1, long_skip_connection=False)


def tiny_decoder_config(sample_rate: int = 48000) -> "object":
    """A BigVGAN-style decoder config with 9600 samples per frame and a handful of channels."""
    from dr2studio.models.bigvgan import DecoderConfig

    return DecoderConfig(
        resblock="1",
        upsample_rates=[10, 8, 6, 4, 5],
        upsample_kernel_sizes=[20, 16, 12, 8, 11],
        upsample_initial_channel=32,
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
        activation="snakebeta",
        snake_logscale=True,
        in_channels=64,
        use_tanh_at_final=False,
        use_bias_at_final=False,
        sampling_rate=sample_rate,
    )


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """Add seeded noise to every floating tensor so zero-initialised layers are not silent."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.state_dict(keep_vars=True).items()):
            if p.is_floating_point() and "filter" not in name:  # anti-alias filters stay analytic
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def build_tiny_model(path: str | os.PathLike, *, seed: int = 0, style_encoder: bool = False) -> Path:
    """Write a tiny random model directory at ``path`` (created if needed) and return it.

    ``style_encoder`` adds the MuQ-free tag style encoder (``style_encoder.json`` + weights), as our own
    models ship, so text style prompts work without MuQ-MuLan.
    """
    from dr2studio.checkpoints import save_dit
    from dr2studio.config import atomic_write_text
    from dr2studio.models.bigvgan import BigVGANDecoder, save_decoder
    from dr2studio.models.dit import DiT

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dit = DiT(tiny_dit_config())
    _perturb(dit, seed)
    save_dit(dit, path)
    decoder = BigVGANDecoder(tiny_decoder_config())
    _perturb(decoder, seed + 1, scale=0.05)
    save_decoder(decoder, path)
    vocab = {"vocab": {phone: i for i, phone in enumerate(TINY_PHONES)}}
    atomic_write_text(path / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=1) + "\n")
    if style_encoder:
        from dr2studio.style.tag_encoder import TagStyleConfig, TagStyleEncoder

        TagStyleEncoder(TagStyleConfig(seed=seed)).save(path)
    return path
