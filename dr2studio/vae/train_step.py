"""The GAN training step of the music VAE: one implementation, run single-process and by the Ray stage.

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

import contextlib
import dataclasses
from typing import Any, Callable

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

__all__ = ["VAELossConfig", "VAEStep", "VAETrainingStep", "Generator", "check_pair", "clip_grad", "prepare_batch",
           "regulariser_terms"]


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
    channel (``onset_weight``), as :class:`VAEStep` adds them.
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


def clip_grad(module: nn.Module, max_norm: float) -> float:
    """Clip the gradient norm of ``module`` (0 disables clipping); returns the norm before clipping.

    Why here: the one clip every training step uses, single-process or data-parallel; an FSDP
    module computes the global norm across its shards (``clip_grad_norm_``).
    """
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))
    if hasattr(module, "clip_grad_norm_"):
        return float(module.clip_grad_norm_(max_norm))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


class Generator(nn.Module):
    """Encoder then decoder, as one module so a data-parallel wrapper sees the whole generator pass.

    ``forward(enc_in [B, 1, N_enc])`` -> (audio ``[B, 1, T*hop]``, mean ``[B, T, C]``, std or None).
    """

    def __init__(self, encoder: MusicEncoder, decoder: BigVGANDecoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, enc_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mean, std = self.encoder.moments(enc_in)
        latents = mean if std is None else mean + std * torch.randn_like(std)
        return self.decoder(latents.transpose(1, 2)), mean, std


def _inner(module: nn.Module) -> nn.Module:
    """The network inside a DDP/FSDP wrapper (or the module itself)."""
    return getattr(module, "module", module)


def check_pair(encoder: MusicEncoder, decoder: BigVGANDecoder) -> None:
    """Raise ``ValueError`` unless the encoder and decoder agree on frame rate and latent channels."""
    enc_rate = encoder.sample_rate / encoder.hop_length
    dec_rate = decoder.sample_rate / decoder.hop_length
    if abs(enc_rate - dec_rate) > 1e-9:
        raise ValueError(f"encoder makes {enc_rate} frames/s but the decoder expects {dec_rate} frames/s")
    if encoder.config.latent_dim != decoder.latent_dim:
        raise ValueError(f"encoder latent_dim {encoder.config.latent_dim} != decoder in_channels {decoder.latent_dim}")


def _split(outputs: tuple[list[torch.Tensor], list[list[torch.Tensor]]],
           n: int) -> tuple[tuple[list[torch.Tensor], list[list[torch.Tensor]]], tuple[list[torch.Tensor], list[list[torch.Tensor]]]]:
    """Split discriminator outputs of a ``[real; fake]`` batch into the real and the fake halves."""
    logits, feats = outputs
    real = ([x[:n] for x in logits], [[f[:n] for f in fs] for fs in feats])
    fake = ([x[n:] for x in logits], [[f[n:] for f in fs] for fs in feats])
    return real, fake


class VAEStep:
    """One GAN step of the VAE on prepared modules: the step both the tests and the Ray stage run.

    ``generator`` is a :class:`Generator`, possibly inside a data-parallel wrapper, and so may be
    ``discriminator`` (or None: reconstruction only). Modes and ``requires_grad`` stay as the caller
    set them. The discriminator sees real and generated audio in one batch (one forward through its
    wrapper); the generator's adversarial pass runs the unwrapped, frozen discriminator so no
    gradient reaches it. ``grad_clip`` clips the generator (default: ``config.grad_clip``, which
    always clips the discriminator); ``autocast`` makes the mixed-precision context of a forward.
    ``step`` counts optimiser steps (for the adversarial warm-up); set it when resuming.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module | None, gen_optimizer: torch.optim.Optimizer,
                 disc_optimizer: torch.optim.Optimizer | None = None, config: VAELossConfig | None = None, *,
                 grad_clip: float | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 step: int = 0) -> None:
        inner = _inner(generator)
        check_pair(inner.encoder, inner.decoder)
        if discriminator is not None and disc_optimizer is None:
            raise ValueError("a discriminator needs disc_optimizer")
        self.generator, self.discriminator = generator, discriminator
        self.encoder, self.decoder = inner.encoder, inner.decoder
        self.gen_optimizer, self.disc_optimizer = gen_optimizer, disc_optimizer
        self.config = config or VAELossConfig()
        self.config.validate()
        self.grad_clip = self.config.grad_clip if grad_clip is None else grad_clip
        self.autocast = autocast
        device = next(self.decoder.parameters()).device
        self.mel_loss = MultiScaleMelLoss(self.decoder.sample_rate, self.config.mel_n_ffts, self.config.mel_n_mels).to(device)
        self.stft_loss = MultiResolutionSTFTLoss(self.config.stft_resolutions).to(device)
        self.step = step
        self.target_samples = 0  # audio samples in the last step's target (for throughput)

    def reconstruction_losses(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mel": self.mel_loss(pred.float(), target), "stft": self.stft_loss(pred.float(), target)}

    def _discriminator_step(self, target: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
        assert self.discriminator is not None and self.disc_optimizer is not None
        with self.autocast():
            both = self.discriminator(torch.cat((target, pred.detach().to(target.dtype))))
            (real_logits, _), (fake_logits, _) = _split(both, target.shape[0])
            loss_d = discriminator_loss(real_logits, fake_logits)
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        grad_norm = clip_grad(self.discriminator, self.config.grad_clip)
        self.disc_optimizer.step()
        return {"disc_grad_norm": grad_norm, "loss_disc": loss_d.item()}

    def _adversarial_terms(self, target: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        disc = _inner(self.discriminator)
        disc.requires_grad_(False)
        try:
            fake_logits, fake_feats = disc(pred)
            with torch.no_grad():
                _, real_feats = disc(target)
        finally:
            disc.requires_grad_(True)
        return generator_adversarial_loss(fake_logits), feature_matching_loss(real_feats, fake_feats)

    def __call__(self, audio: torch.Tensor, sample_rate: int) -> dict[str, float]:
        """One step on ``audio [B, 1, N]`` at ``sample_rate``. Returns ``loss_*`` floats and grad norms."""
        cfg = self.config
        enc_in, target = prepare_batch(audio.to(self.decoder.device), sample_rate, self.encoder, self.decoder)
        self.target_samples = target.numel()
        adversarial = self.discriminator is not None and self.step >= cfg.adversarial_start_step
        with self.autocast():
            pred, mean, std = self.generator(enc_in)
        out: dict[str, float] = {}
        if adversarial:
            out.update(self._discriminator_step(target, pred))
        with self.autocast():
            recon = self.reconstruction_losses(pred, target)
            extra, terms = regulariser_terms(cfg, pred, target, mean, std, self.decoder.hop_length)
            total = cfg.mel_weight * recon["mel"] + cfg.stft_weight * recon["stft"] + extra
            out.update({k: v.item() for k, v in terms.items()})
            if adversarial:
                adv, fm = self._adversarial_terms(target, pred)
                total = total + cfg.adversarial_weight * adv + cfg.feature_weight * fm
                out.update(loss_adv=adv.item(), loss_fm=fm.item())
        self.gen_optimizer.zero_grad(set_to_none=True)
        total.backward()
        out["grad_norm"] = clip_grad(self.generator, self.grad_clip)
        self.gen_optimizer.step()
        self.step += 1
        out.update(loss_mel=recon["mel"].item(), loss_stft=recon["stft"].item(), loss_gen=total.item())
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


class VAETrainingStep(VAEStep):
    """:class:`VAEStep` on a plain encoder and decoder, single process, least-squares GAN.

    Call it with a batch ``[B, 1, N]`` at ``sample_rate``; it returns a dict of float losses. Puts the
    modules in train mode with gradients on (except a frozen decoder); ``config.grad_clip`` clips
    both the generator and the discriminators.
    """

    def __init__(self, encoder: MusicEncoder, decoder: BigVGANDecoder, discriminator: nn.Module | None,
                 gen_optimizer: torch.optim.Optimizer, disc_optimizer: torch.optim.Optimizer | None = None,
                 config: VAELossConfig | None = None, *, freeze_decoder: bool = False) -> None:
        check_pair(encoder, decoder)
        for module in (encoder, decoder, discriminator):
            if module is not None:
                module.train().requires_grad_(True)
        if freeze_decoder:
            decoder.eval().requires_grad_(False)
        super().__init__(Generator(encoder, decoder), discriminator, gen_optimizer, disc_optimizer, config)
        self.freeze_decoder = freeze_decoder
