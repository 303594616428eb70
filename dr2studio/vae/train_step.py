"""One single-process GAN training step of the music VAE (the Ray Train script wraps this).

Sample rates: the encoder reads audio at its own rate (24 kHz for the paper's VAE), the decoder writes at
its rate (48 kHz for the release). Both must have the same frame rate (``sr / hop``, 5 Hz). A batch is
given once, best at the decoder rate (48 kHz songs): the encoder input is resampled from it (torchaudio,
Hann-windowed sinc) and both are cropped to whole latent frames, so the target is the original audio
(resampled too only when the batch comes at another rate). Reconstruction losses and discriminators
work at the decoder rate. For a quick start, ``load_decoder`` a released decoder, then
pass ``freeze_decoder=True``: only the encoder learns, to produce latents the released decoder (and so
the released DiT's latent space) understands.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.models.bigvgan import BigVGANDecoder
from dr2studio.models.encoder import MusicEncoder, kl_divergence
from dr2studio.vae.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    frame_locked_loss,
    latent_onset_loss,
)

__all__ = ["VAELossConfig", "VAETrainingStep", "prepare_batch", "regulariser_terms"]


@dataclasses.dataclass
class VAELossConfig(JsonConfig):
    """Loss weights and analysis sizes (at the decoder sample rate)."""

    mel_weight: float = 15.0
    stft_weight: float = 1.0
    frame_weight: float = 0.0  # frame_locked_loss: suppresses a waveform repeated in every latent frame
    adversarial_weight: float = 1.0
    feature_weight: float = 2.0
    kl_weight: float = 1e-4  # only used when the encoder has kl=True
    onset_weight: float = 0.0  # latent_onset_loss: one latent channel follows the onset envelope
    onset_channel: int = 0
    adversarial_start_step: int = 0  # reconstruction-only warm-up steps before the GAN terms start
    grad_clip: float = 1000.0
    mel_n_ffts: list[int] = dataclasses.field(default_factory=lambda: [512, 1024, 2048])
    mel_n_mels: list[int] = dataclasses.field(default_factory=lambda: [40, 80, 160])
    stft_resolutions: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[512, 128, 512], [1024, 256, 1024], [2048, 512, 2048]]
    )

    def validate(self) -> None:
        if len(self.mel_n_ffts) != len(self.mel_n_mels):
            raise ConfigError("mel_n_ffts and mel_n_mels need the same length")
        if min(self.mel_weight, self.stft_weight, self.frame_weight, self.adversarial_weight, self.feature_weight,
               self.kl_weight, self.onset_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.onset_channel < 0:
            raise ConfigError(f"onset_channel must be >= 0, got {self.onset_channel}")


def prepare_batch(audio: torch.Tensor, sample_rate: int, encoder: MusicEncoder,
                  decoder: BigVGANDecoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio [B, 1, N]`` at ``sample_rate`` -> (encoder input ``[B, 1, T*enc_hop]``, target ``[B, 1, T*dec_hop]``).

    The target is ``audio`` resampled to the decoder rate (a no-op when it already is), the encoder input
    is resampled to the encoder rate; both are cropped to the same whole number of frames ``T``.
    """
    import torchaudio.functional as AF

    if audio.dim() != 3 or audio.shape[1] != 1:
        raise ValueError(f"audio must be mono [B, 1, N], got {list(audio.shape)}")
    target = audio if sample_rate == decoder.sample_rate else AF.resample(audio, sample_rate, decoder.sample_rate)
    enc_in = audio if sample_rate == encoder.sample_rate else AF.resample(audio, sample_rate, encoder.sample_rate)
    frames = min(enc_in.shape[-1] // encoder.hop_length, target.shape[-1] // decoder.hop_length)
    if frames < 1:
        raise ValueError(
            f"audio of {audio.shape[-1]} samples at {sample_rate} Hz is shorter than one latent frame"
        )
    return enc_in[..., : frames * encoder.hop_length], target[..., : frames * decoder.hop_length]


def regulariser_terms(cfg: VAELossConfig, pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor | None, hop: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the terms besides reconstruction and GAN, and each term by its log name.

    Frame-locked waveform (``frame_weight``), KL (an encoder with ``kl=True``) and the latent onset
    channel (``onset_weight``); shared by :class:`VAETrainingStep` and the Ray Train script.
    ``mean [B, T, C]`` are the encoder's latent means, ``hop`` the decoder's (``target`` is at its rate).
    """
    total = pred.new_zeros((), dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {}
    if cfg.frame_weight > 0:
        terms["loss_frame"] = frame_locked_loss(pred.float(), target, hop)
        total = total + cfg.frame_weight * terms["loss_frame"]
    if std is not None:
        terms["loss_kl"] = kl_divergence(mean, std)
        total = total + cfg.kl_weight * terms["loss_kl"]
    if cfg.onset_weight > 0:
        terms["loss_onset"] = latent_onset_loss(mean, target, hop, cfg.onset_channel)
        total = total + cfg.onset_weight * terms["loss_onset"]
    return total, terms


class VAETrainingStep:
    """Encoder + decoder (generator) against discriminators, two optimizers, least-squares GAN.

    Call it with a batch ``[B, 1, N]`` at ``sample_rate``; it returns a dict of float losses. Puts the
    modules in train mode with gradients on (except a frozen decoder). ``step`` counts calls (for the
    adversarial warm-up).
    """

    def __init__(self, encoder: MusicEncoder, decoder: BigVGANDecoder, discriminator: nn.Module | None,
                 gen_optimizer: torch.optim.Optimizer, disc_optimizer: torch.optim.Optimizer | None = None,
                 config: VAELossConfig | None = None, *, freeze_decoder: bool = False) -> None:
        enc_rate = encoder.sample_rate / encoder.hop_length
        dec_rate = decoder.sample_rate / decoder.hop_length
        if abs(enc_rate - dec_rate) > 1e-9:
            raise ValueError(f"encoder makes {enc_rate} frames/s but the decoder expects {dec_rate} frames/s")
        if encoder.config.latent_dim != decoder.latent_dim:
            raise ValueError(f"encoder latent_dim {encoder.config.latent_dim} != decoder in_channels {decoder.latent_dim}")
        if discriminator is not None and disc_optimizer is None:
            raise ValueError("a discriminator needs disc_optimizer")
        self.encoder, self.decoder, self.discriminator = encoder, decoder, discriminator
        self.gen_optimizer, self.disc_optimizer = gen_optimizer, disc_optimizer
        self.config = config or VAELossConfig()
        self.config.validate()
        device = next(decoder.parameters()).device
        self.mel_loss = MultiScaleMelLoss(decoder.sample_rate, self.config.mel_n_ffts, self.config.mel_n_mels).to(device)
        self.stft_loss = MultiResolutionSTFTLoss(self.config.stft_resolutions).to(device)
        self.step = 0
        self.freeze_decoder = freeze_decoder
        for module in (encoder, decoder, discriminator):
            if module is not None:
                module.train().requires_grad_(True)
        if freeze_decoder:
            decoder.eval().requires_grad_(False)

    def reconstruction_losses(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mel": self.mel_loss(pred, target), "stft": self.stft_loss(pred, target)}

    def _params(self) -> list[nn.Parameter]:
        return [p for m in (self.encoder, self.decoder) for p in m.parameters() if p.requires_grad]

    def __call__(self, audio: torch.Tensor, sample_rate: int) -> dict[str, float]:
        """One step on ``audio [B, 1, N]`` at ``sample_rate``. Returns ``loss_*`` floats and ``grad_norm``."""
        cfg = self.config
        enc_in, target = prepare_batch(audio.to(self.decoder.device), sample_rate, self.encoder, self.decoder)
        mean, std = self.encoder.moments(enc_in)
        latents = mean if std is None else mean + std * torch.randn_like(std)
        pred = self.decoder(latents.transpose(1, 2))
        adversarial = self.discriminator is not None and self.step >= cfg.adversarial_start_step
        out: dict[str, float] = {}

        if adversarial:
            assert self.discriminator is not None and self.disc_optimizer is not None
            real_logits, _ = self.discriminator(target)
            fake_logits, _ = self.discriminator(pred.detach())
            loss_d = discriminator_loss(real_logits, fake_logits)
            self.disc_optimizer.zero_grad(set_to_none=True)
            loss_d.backward()
            nn.utils.clip_grad_norm_(self.discriminator.parameters(), cfg.grad_clip)
            self.disc_optimizer.step()
            out["loss_disc"] = loss_d.item()

        recon = self.reconstruction_losses(pred, target)
        extra, terms = regulariser_terms(cfg, pred, target, mean, std, self.decoder.hop_length)
        total = cfg.mel_weight * recon["mel"] + cfg.stft_weight * recon["stft"] + extra
        out.update({k: v.item() for k, v in terms.items()})
        if adversarial:
            assert self.discriminator is not None
            self.discriminator.requires_grad_(False)
            try:
                fake_logits, fake_feats = self.discriminator(pred)
                with torch.no_grad():
                    _, real_feats = self.discriminator(target)
            finally:
                self.discriminator.requires_grad_(True)
            adv = generator_adversarial_loss(fake_logits)
            fm = feature_matching_loss(real_feats, fake_feats)
            total = total + cfg.adversarial_weight * adv + cfg.feature_weight * fm
            out["loss_adv"], out["loss_fm"] = adv.item(), fm.item()
        self.gen_optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = nn.utils.clip_grad_norm_(self._params(), cfg.grad_clip)
        self.gen_optimizer.step()
        self.step += 1
        out.update(loss_mel=recon["mel"].item(), loss_stft=recon["stft"].item(), loss_gen=total.item(),
                   grad_norm=float(grad_norm))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Counter and optimizer states (the modules are saved with save_encoder / save_decoder)."""
        state: dict[str, Any] = {"step": self.step, "gen_optimizer": self.gen_optimizer.state_dict()}
        if self.disc_optimizer is not None:
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.gen_optimizer.load_state_dict(state["gen_optimizer"])
        if self.disc_optimizer is not None and "disc_optimizer" in state:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
