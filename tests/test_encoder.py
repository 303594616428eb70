"""Music-VAE encoder: shapes and frame rate, KL option, weight norm, save/load."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dr2studio.config import ConfigError
from dr2studio.models.encoder import (
    EncoderConfig,
    MusicEncoder,
    has_encoder,
    kl_divergence,
    load_encoder,
    save_encoder,
)
from dr2studio.vae.checkpoint_io import CheckpointError
from vae_helpers import one_thread, tiny_vae_configs  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_encoder(**kw) -> MusicEncoder:
    torch.manual_seed(0)
    cfg, _ = tiny_vae_configs()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return MusicEncoder(cfg).eval()


def test_default_config_is_24khz_to_5hz_64_channels() -> None:
    cfg = EncoderConfig()
    assert cfg.sample_rate == 24000 and cfg.hop_length == 4800 and cfg.frame_rate == 5.0
    assert cfg.latent_dim == 64 and cfg.kl is False


def test_encodes_frames_at_the_configured_rate() -> None:
    enc = tiny_encoder()
    audio = torch.randn(2, 1, 32 * 25)
    z = enc(audio)
    assert z.shape == (2, 25, 8)
    # strided convs are local: changing the end of the audio leaves early frames untouched
    audio2 = audio.clone()
    audio2[..., -64:] = 0
    torch.testing.assert_close(enc(audio2)[:, :5], z[:, :5])
    assert not torch.allclose(enc(audio2)[:, -1], z[:, -1])


def test_bad_audio_shapes_are_explained() -> None:
    enc = tiny_encoder()
    with pytest.raises(ValueError, match="multiple of the hop 32"):
        enc(torch.randn(1, 1, 100))
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        enc(torch.randn(1, 2, 64))
    with pytest.raises(ConfigError, match="channel_mults"):
        EncoderConfig.from_dict({"strides": [2, 4], "channel_mults": [1, 2, 4]})


def test_kl_bottleneck_samples_in_training_and_returns_mean_in_eval() -> None:
    enc = tiny_encoder(kl=True)
    audio = torch.randn(1, 1, 32 * 8)
    mean, std = enc.moments(audio)
    assert std is not None and (std > 0).all() and mean.shape == std.shape == (1, 8, 8)
    torch.testing.assert_close(enc(audio), mean)
    enc.train()
    assert not torch.allclose(enc(audio), mean)
    assert kl_divergence(torch.zeros(3, 4), torch.ones(3, 4)).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(torch.ones(3, 4), torch.ones(3, 4)).item() == pytest.approx(0.5)


def test_save_load_round_trip_with_training_weight_norm(tmp_path: Path) -> None:
    enc = tiny_encoder()
    audio = torch.randn(1, 1, 32 * 6)
    ref = enc(audio)
    enc.apply_weight_norm()
    torch.testing.assert_close(enc(audio), ref, rtol=1e-5, atol=1e-6)
    assert not has_encoder(tmp_path)
    save_encoder(enc, tmp_path)
    assert has_encoder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.safetensors"]
    loaded = load_encoder(tmp_path, device="cpu")
    assert loaded.config == enc.config and not loaded.training
    torch.testing.assert_close(loaded(audio), ref, rtol=1e-5, atol=1e-6)


def test_missing_encoder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="inversion"):
        load_encoder(tmp_path)
