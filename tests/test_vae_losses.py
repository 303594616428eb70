"""VAE training: reconstruction losses, discriminators, adversarial losses, and the training step."""
from __future__ import annotations

import math

import pytest
import torch

from dr2studio.config import ConfigError
from dr2studio.models.bigvgan import BigVGANDecoder
from dr2studio.models.discriminators import ConstantQTransform, DiscriminatorConfig, build_discriminators
from dr2studio.models.encoder import MusicEncoder
from dr2studio.vae.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    discriminator_loss,
    feature_matching_loss,
    frame_locked_loss,
    frame_onset_envelope,
    generator_adversarial_loss,
    latent_onset_loss,
)
from dr2studio.vae.train_step import VAELossConfig, VAETrainingStep, prepare_batch
from vae_helpers import one_thread, tiny_vae_configs, tones  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 3200


def tiny_disc_config() -> DiscriminatorConfig:
    return DiscriminatorConfig(sample_rate=SR, periods=[2, 3], resolutions=[[128, 32, 128]], cqt_hops=[32],
                               cqt_bins_per_octave=[12], cqt_octaves=4, cqt_fmin=50.0, width=0.125)


def tiny_loss_config(**kw) -> VAELossConfig:
    return VAELossConfig(mel_n_ffts=[64, 256], mel_n_mels=[10, 40], stft_resolutions=[[64, 16, 64], [256, 64, 256]], **kw)


@pytest.mark.parametrize("make", [
    lambda: MultiScaleMelLoss(SR, [64, 256], [10, 40]),
    lambda: MultiResolutionSTFTLoss([[64, 16, 64], [256, 64, 256]]),
])
def test_reconstruction_losses_rank_distortion(make) -> None:
    loss = make()
    clean = tones(0.5, SR)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=gen)
    assert loss(clean, clean).item() == pytest.approx(0.0, abs=1e-6)
    small, large = loss(clean + 0.01 * noise, clean), loss(clean + 0.1 * noise, clean)
    assert 0 < small.item() < large.item()
    pred = (clean + 0.1 * noise).requires_grad_(True)
    loss(pred, clean).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        loss(clean[..., :-1], clean)


def test_constant_q_transform_puts_a_tone_in_its_bin() -> None:
    cqt = ConstantQTransform(SR, hop=32, octaves=4, bins_per_octave=12, fmin=50.0)
    t = torch.arange(SR) / SR
    for semitones in (7, 24, 41):  # one tone in each of three different octaves
        freq = 50.0 * 2 ** (semitones / 12)
        spec = cqt(torch.sin(2 * math.pi * freq * t).view(1, 1, -1))
        assert spec.shape[:3] == (1, 2, 48)
        mag = spec.pow(2).sum(1).sqrt()[0, :, 10:-10].mean(-1)
        assert int(mag.argmax()) == semitones


def test_discriminators_score_any_length_and_expose_features() -> None:
    disc = build_discriminators(tiny_disc_config())
    logits, feats = disc(torch.randn(2, 1, 1601))  # not a multiple of any period
    assert len(logits) == len(feats) == 4  # 2 periods + 1 resolution + 1 CQT
    assert all(lg.shape[0] == 2 and torch.isfinite(lg).all() for lg in logits)
    assert all(len(f) >= 3 for f in feats)
    with pytest.raises(ConfigError, match="Nyquist"):
        DiscriminatorConfig(sample_rate=SR, cqt_octaves=6, cqt_hops=[32], cqt_bins_per_octave=[12]).validate()


def test_adversarial_and_feature_losses() -> None:
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert discriminator_loss(ones, zeros).item() == 0.0  # a perfect discriminator
    assert discriminator_loss(zeros, ones).item() == 2.0
    assert generator_adversarial_loss(ones).item() == 0.0 and generator_adversarial_loss(zeros).item() == 1.0
    real = [[torch.randn(2, 3, 4, requires_grad=True)]]
    fake = [[torch.randn(2, 3, 4, requires_grad=True)]]
    assert feature_matching_loss(real, [[real[0][0].detach()]]).item() == 0.0
    feature_matching_loss(real, fake).backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None  # real features are targets


def _tiny_vae(seed: int = 0) -> tuple[MusicEncoder, BigVGANDecoder]:
    torch.manual_seed(seed)
    enc_cfg, dec_cfg = tiny_vae_configs()
    return MusicEncoder(enc_cfg).apply_weight_norm(), BigVGANDecoder(dec_cfg).apply_weight_norm()


def test_prepare_batch_resamples_and_aligns_frames() -> None:
    enc, dec = _tiny_vae()
    enc_in, target = prepare_batch(tones(1.0, 8000), 8000, enc, dec)  # 8 kHz in: both sides resampled
    assert enc_in.shape == (1, 1, 50 * 32) and target.shape == (1, 1, 50 * 64)
    enc_in, target = prepare_batch(tones(0.5, SR)[..., :1000], SR, enc, dec)
    assert enc_in.shape[-1] // 32 == target.shape[-1] // 64 == 15


def test_training_step_reduces_reconstruction_loss() -> None:
    enc, dec = _tiny_vae()
    audio = tones(2.0, SR)  # two seconds at the decoder rate
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2, betas=(0.8, 0.99))
    step = VAETrainingStep(enc, dec, None, opt, config=tiny_loss_config())
    history = [step(audio, SR)["loss_mel"] for _ in range(14)]
    assert step.step == 14
    # log-mel L1 falls by a fifth or more in 14 steps (by 40% with this seed)
    assert sum(history[-3:]) / 3 < 0.8 * sum(history[:3]) / 3, history


def test_gan_step_trains_the_discriminators() -> None:
    enc, dec = _tiny_vae()
    disc = build_discriminators(tiny_disc_config())
    gen_opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    step = VAETrainingStep(enc, dec, disc, gen_opt, disc_opt, tiny_loss_config(adversarial_start_step=1))
    before = [p.detach().clone() for p in disc.parameters()]
    warmup = step(tones(0.5, SR), SR)
    assert "loss_disc" not in warmup and "loss_adv" not in warmup
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    out = step(tones(0.5, SR), SR)
    assert {"loss_disc", "loss_adv", "loss_fm", "loss_mel", "loss_stft", "grad_norm"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    state = step.state_dict()
    step.load_state_dict(state)
    assert step.step == 2


def test_frozen_decoder_trains_only_the_encoder() -> None:
    enc, dec = _tiny_vae()
    frozen = [p.detach().clone() for p in dec.parameters()]
    enc_before = [p.detach().clone() for p in enc.parameters()]
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    step = VAETrainingStep(enc, dec, None, opt, config=tiny_loss_config(), freeze_decoder=True)
    step(tones(0.5, SR), SR)
    assert all(torch.equal(a, b) for a, b in zip(frozen, dec.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, enc.parameters()))


def test_kl_option_adds_its_term() -> None:
    enc_cfg, dec_cfg = tiny_vae_configs()
    enc_cfg.kl = True
    torch.manual_seed(0)
    enc, dec = MusicEncoder(enc_cfg), BigVGANDecoder(dec_cfg)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    out = VAETrainingStep(enc, dec, None, opt, config=tiny_loss_config(kl_weight=0.1))(tones(0.5, SR), SR)
    assert out["loss_kl"] > 0
    cfg = tiny_loss_config(kl_weight=0.1)
    expected = cfg.mel_weight * out["loss_mel"] + cfg.stft_weight * out["loss_stft"] + 0.1 * out["loss_kl"]
    assert out["loss_gen"] == pytest.approx(expected, rel=1e-5)


def test_training_step_rejects_mismatched_frame_rates() -> None:
    enc, dec = _tiny_vae()
    enc.config.strides = [2, 4, 8]  # 1600 / 64 = 25 frames/s vs the decoder's 50
    with pytest.raises(ValueError, match="frames/s"):
        VAETrainingStep(enc, dec, None, torch.optim.Adam(dec.parameters()))


def test_frame_locked_loss_sees_a_waveform_repeated_every_frame() -> None:
    hop = 64
    g = torch.Generator().manual_seed(0)
    music = tones(1.0, SR)  # tones not locked to the frame grid
    pattern = torch.randn(hop, generator=g).repeat(SR // hop)[None, None] * music.std()
    assert frame_locked_loss(music, music, hop) == 0
    # the comb that spectral losses with short windows barely see costs about its energy ratio
    assert frame_locked_loss(0.5 * music + pattern, music, hop) > 0.5
    assert frame_locked_loss(1.1 * music, music, hop) < 0.05
    with pytest.raises(ValueError, match="shorter than one frame"):
        frame_locked_loss(music[..., :10], music[..., :10], hop)


def test_frame_weight_adds_the_frame_locked_term() -> None:
    enc, dec = _tiny_vae()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    cfg = tiny_loss_config(frame_weight=3.0)
    out = VAETrainingStep(enc, dec, None, opt, config=cfg)(tones(0.5, SR), SR)
    assert out["loss_frame"] > 0
    expected = cfg.mel_weight * out["loss_mel"] + cfg.stft_weight * out["loss_stft"] + 3.0 * out["loss_frame"]
    assert out["loss_gen"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError):
        VAELossConfig.from_dict({"frame_weight": -1.0})


def _clicks(hop: int, frames: int, every: int) -> torch.Tensor:
    """Short decaying noise bursts at the start of every ``every``-th frame, ``[1, 1, frames * hop]``."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(frames * hop)
    burst = torch.randn(hop // 2, generator=g) * torch.exp(-torch.arange(hop // 2) / 4.0)
    for k in range(0, frames, every):
        x[k * hop : k * hop + hop // 2] += burst
    return (x + 1e-3 * torch.randn(frames * hop, generator=g))[None, None]


def test_onset_envelope_peaks_in_the_frames_that_hold_the_clicks() -> None:
    hop = 64
    env = frame_onset_envelope(_clicks(hop, 40, 8), hop)
    assert env.shape == (1, 40)
    assert env.mean().abs() < 1e-5 and env.std() == pytest.approx(1.0, rel=1e-3)
    peaks = set(torch.topk(env[0], 4).indices.tolist())
    assert peaks == {8, 16, 24, 32}  # the first frame has nothing before it to rise from
    assert env[0, [8, 16, 24, 32]].min() > 5 * env[0, 1:8].abs().max()
    with pytest.raises(ValueError, match="two frames"):
        frame_onset_envelope(_clicks(hop, 40, 8)[..., :hop], hop)


def test_latent_onset_loss_ties_one_channel_to_the_envelope() -> None:
    hop = 64
    audio = _clicks(hop, 40, 8)
    env = frame_onset_envelope(audio, hop)
    latents = torch.randn(1, 40, 4)
    matched = latents.clone()
    matched[..., 2] = env
    assert latent_onset_loss(matched, audio, hop, channel=2) < 1e-8
    assert latent_onset_loss(matched, audio, hop, channel=0) > 0.5
    trainable = latents.clone().requires_grad_(True)
    latent_onset_loss(trainable, audio, hop).backward()
    assert trainable.grad[..., 0].abs().sum() > 0 and trainable.grad[..., 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="latent frames"):
        latent_onset_loss(latents[:, :30], audio, hop)
    with pytest.raises(ValueError, match="channel"):
        latent_onset_loss(latents, audio, hop, channel=4)


def test_onset_weight_adds_the_latent_onset_term_and_rejects_bad_settings() -> None:
    enc, dec = _tiny_vae()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    cfg = tiny_loss_config(onset_weight=2.0, onset_channel=1)
    out = VAETrainingStep(enc, dec, None, opt, config=cfg)(tones(0.5, SR), SR)
    assert out["loss_onset"] > 0
    expected = cfg.mel_weight * out["loss_mel"] + cfg.stft_weight * out["loss_stft"] + 2.0 * out["loss_onset"]
    assert out["loss_gen"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="onset_channel"):
        VAELossConfig.from_dict({"onset_channel": -1})
