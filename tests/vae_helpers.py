"""Tiny VAE configurations and fixtures shared by the VAE tests (decoder, encoder, losses, inversion)."""
from __future__ import annotations

import math

import pytest
import torch

from dr2studio.models.bigvgan import BigVGANDecoder, DecoderConfig
from dr2studio.models.encoder import EncoderConfig


@pytest.fixture
def one_thread():
    """Tiny models are dominated by per-op overhead; on a shared, busy CPU two threads spin-wait for each
    other and run ~30x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro_config(**kw) -> DecoderConfig:
    """A decoder small enough to decode hundreds of frames in milliseconds (hop 8, 8 latent channels)."""
    base = dict(upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4], upsample_initial_channel=16,
                resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], in_channels=8,
                use_tanh_at_final=False, use_bias_at_final=False, sampling_rate=40)
    base.update(kw)
    return DecoderConfig(**base)


def micro_decoder(seed: int = 0, **kw) -> BigVGANDecoder:
    """Random micro decoder with non-trivial snake parameters, eval mode, frozen."""
    torch.manual_seed(seed)
    dec = BigVGANDecoder(micro_config(**kw)).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.normal_(0.0, 0.3)
    return dec


def tiny_vae_configs() -> tuple[EncoderConfig, DecoderConfig]:
    """Encoder at 1.6 kHz (hop 32) and decoder at 3.2 kHz (hop 64): both 50 frames/s, 8 latent channels.
    Same layout as the paper's 24 kHz -> 5 Hz -> 48 kHz VAE, scaled down."""
    enc = EncoderConfig(sample_rate=1600, channels=8, channel_mults=[1, 2, 2], strides=[2, 4, 4], latent_dim=8)
    dec = DecoderConfig(upsample_rates=[4, 4, 4], upsample_kernel_sizes=[8, 8, 8], upsample_initial_channel=32,
                        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], in_channels=8,
                        sampling_rate=3200, use_tanh_at_final=False, use_bias_at_final=True)
    return enc, dec


def tones(seconds: float, sample_rate: int, batch: int = 1) -> torch.Tensor:
    """A deterministic little 'song': two tones, one gated on and off, ``[B, 1, N]``."""
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    x = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 523 * t) * ((t % 0.5) < 0.25)
    return x.view(1, 1, -1).repeat(batch, 1, 1)
