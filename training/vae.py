"""Stage 1: the music VAE (encoder + BigVGAN decoder) against discriminators, on Ray Train.

    python training/vae.py --config vae.json          # manifest of songs; our own encoder and decoder
    python training/vae.py --smoke                    # tiny VAE, synthetic tones, 2 CPU workers
    python training/vae.py --set manifest=songs.jsonl --set decoder_from=/models/DiffRhythm2
        # train only an encoder into the released decoder's latent space (the decoder stays frozen)

The generator (encoder -> decoder) and the discriminators (multi-period, multi-resolution, CQT) are
prepared for data parallelism separately, each with its own AdamW and warm-up schedule. Losses are
those of :mod:`dr2studio.vae.losses`: multi-scale mel, multi-resolution STFT, least-squares
adversarial and feature matching (plus KL when the encoder has ``kl=True``). The discriminator sees
real and generated audio in one batch (one forward through the data-parallel wrapper); the
generator's adversarial pass runs the unwrapped, frozen discriminator so no gradient reaches it.
The export writes ``encoder.*`` and ``decoder.*`` into a model directory.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Sequence

if __package__ in (None, ""):  # run as a script: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from dr2studio.data.audio_stream import AudioSegmentStream
from dr2studio.data.manifest import read_manifest
from dr2studio.models.bigvgan import BigVGANDecoder, DecoderConfig
from dr2studio.models.discriminators import DiscriminatorConfig, build_discriminators
from dr2studio.models.encoder import EncoderConfig, MusicEncoder
from dr2studio.vae.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from dr2studio.vae.train_step import VAELossConfig, prepare_batch, regulariser_terms
from training import common
from training.common import TrainConfig

__all__ = ["VAETrainConfig", "smoke_config", "Generator", "build_models", "train_loop", "export", "main"]

log = logging.getLogger("dr2studio.training.vae")


@dataclasses.dataclass
class VAETrainConfig(TrainConfig):
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("export_dir", "manifest", "decoder_from", "encoder_from")
    manifest: str = ""  # JSONL of songs (see dr2studio.data.manifest)
    encoder: dict[str, Any] = dataclasses.field(default_factory=dict)  # EncoderConfig fields
    decoder: dict[str, Any] = dataclasses.field(default_factory=dict)  # DecoderConfig fields
    discriminator: dict[str, Any] = dataclasses.field(default_factory=dict)  # DiscriminatorConfig fields
    losses: dict[str, Any] = dataclasses.field(default_factory=dict)  # VAELossConfig fields
    decoder_from: str = ""  # model directory whose decoder is used (and frozen unless train_decoder)
    encoder_from: str = ""  # model directory whose encoder weights start the run
    train_decoder: bool = False  # with decoder_from: fine-tune the decoder too
    # False (needs encoder_from): the encoder is frozen, so the latent space -- and any DiT trained on
    # it -- stays valid while the decoder is fine-tuned (decoder_from + train_decoder, or a fresh one)
    train_encoder: bool = True
    segment_seconds: float = 2.0
    disc_lr: float = 0.0  # 0 = same as lr

    def validate(self) -> None:
        super().validate()
        if self.segment_seconds <= 0:
            raise common.ConfigError(f"segment_seconds must be > 0, got {self.segment_seconds}")

    @property
    def decoder_frozen(self) -> bool:
        return bool(self.decoder_from) and not self.train_decoder

    def decoder_config(self) -> DecoderConfig:
        if self.decoder_from:
            return DecoderConfig.load(Path(self.decoder_from).expanduser() / "decoder.json")
        return DecoderConfig.from_dict(self.decoder)

    def encoder_config(self) -> EncoderConfig:
        if self.encoder_from:
            return EncoderConfig.load(Path(self.encoder_from).expanduser() / "encoder.json")
        return EncoderConfig.from_dict(self.encoder)


def smoke_config() -> VAETrainConfig:
    """A ~50k-parameter VAE at 1.6/3.2 kHz (50 frames/s, 8 channels) on synthetic tones."""
    return VAETrainConfig(
        name="vae-smoke", num_workers=2, max_steps=20, batch_size=2, lr=2e-3, warmup_steps=2,
        checkpoint_every=10, report_every=5, segment_seconds=0.5,
        encoder=dict(sample_rate=1600, channels=8, channel_mults=[1, 2, 2], strides=[2, 4, 4], latent_dim=8),
        decoder=dict(upsample_rates=[4, 4, 4], upsample_kernel_sizes=[8, 8, 8], upsample_initial_channel=32,
                     resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], in_channels=8, sampling_rate=3200,
                     use_tanh_at_final=False, use_bias_at_final=True),
        discriminator=dict(sample_rate=3200, periods=[2, 3], resolutions=[[128, 32, 128]], cqt_hops=[32],
                           cqt_bins_per_octave=[12], cqt_octaves=4, cqt_fmin=50.0, width=0.125),
        losses=dict(mel_n_ffts=[64, 256], mel_n_mels=[10, 40], stft_resolutions=[[64, 16, 64], [256, 64, 256]]),
    )


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


def build_models(cfg: VAETrainConfig) -> tuple[Generator, nn.Module]:
    """The generator (fresh or from ``encoder_from`` / ``decoder_from``) and the discriminators."""
    from dr2studio.models.bigvgan import load_decoder
    from dr2studio.vae.checkpoint_io import load_strict, read_state_dict

    # checked here, not in validate(): a config file may leave the source folders to --set
    if not cfg.train_encoder and not cfg.encoder_from:
        raise common.ConfigError("train_encoder=false needs encoder_from (a frozen encoder must be a trained one)")
    if not cfg.train_encoder and cfg.decoder_frozen:
        raise common.ConfigError("train_encoder=false with a frozen decoder leaves nothing to train "
                                 "(set train_decoder=true or drop decoder_from)")
    encoder = MusicEncoder(cfg.encoder_config())
    if cfg.encoder_from:
        path = Path(cfg.encoder_from).expanduser() / "encoder.safetensors"
        load_strict(encoder, read_state_dict(path), str(path))
    encoder.requires_grad_(cfg.train_encoder)
    if cfg.decoder_from:
        decoder = load_decoder(cfg.decoder_from, device="cpu", dtype=torch.float32)
        decoder.requires_grad_(not cfg.decoder_frozen)
    else:
        decoder = BigVGANDecoder(cfg.decoder_config())
    enc_rate, dec_rate = encoder.sample_rate / encoder.hop_length, decoder.sample_rate / decoder.hop_length
    if abs(enc_rate - dec_rate) > 1e-9 or encoder.config.latent_dim != decoder.latent_dim:
        raise common.ConfigError(
            f"encoder ({enc_rate} frames/s, {encoder.config.latent_dim} ch) and decoder ({dec_rate} frames/s, "
            f"{decoder.latent_dim} ch) must agree on frame rate and latent channels")
    disc_cfg = DiscriminatorConfig.from_dict({"sample_rate": decoder.sample_rate, **cfg.discriminator})
    return Generator(encoder, decoder), build_discriminators(disc_cfg)


def _split(outputs: tuple[list[torch.Tensor], list[list[torch.Tensor]]], n: int):
    """Split discriminator outputs of a ``[real; fake]`` batch into the real and the fake halves."""
    logits, feats = outputs
    real = ([x[:n] for x in logits], [[f[:n] for f in fs] for fs in feats])
    fake = ([x[n:] for x in logits], [[f[n:] for f in fs] for fs in feats])
    return real, fake


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = VAETrainConfig.from_dict(loop_config["config"])
    ctx = common.worker_context()
    common.seed_everything(cfg.seed)
    gen, disc = build_models(cfg)
    losses_cfg = VAELossConfig.from_dict(cfg.losses)
    sr = gen.decoder.sample_rate
    mel_loss = MultiScaleMelLoss(sr, losses_cfg.mel_n_ffts, losses_cfg.mel_n_mels).to(ctx.device)
    stft_loss = MultiResolutionSTFTLoss(losses_cfg.stft_resolutions).to(ctx.device)
    g = common.prepare(gen, cfg)
    d = common.prepare(disc, cfg)
    opt_g = common.make_optimizer(g.parameters(), cfg)
    opt_d = common.make_optimizer(d.parameters(), cfg, lr=cfg.disc_lr or cfg.lr)
    sched_g, sched_d = common.make_scheduler(opt_g, cfg), common.make_scheduler(opt_d, cfg)
    modules = {"generator": g, "discriminator": d}
    optimizers = {"generator": (g, opt_g), "discriminator": (d, opt_d)}
    schedulers = {"generator": sched_g, "discriminator": sched_d}
    state = common.restore(modules=modules, optimizers=optimizers, schedulers=schedulers)
    if cfg.decoder_frozen:
        common.unwrap(g).decoder.eval()
    if not cfg.train_encoder:
        common.unwrap(g).encoder.eval()

    rows = read_manifest(cfg.manifest)
    stream = AudioSegmentStream(rows, sr, int(cfg.segment_seconds * sr), cfg.batch_size,
                                rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed)
    batches = stream.iter_from(state.position)
    reporter = common.StepReporter(cfg, ctx, unit="samples")
    inner_gen, inner_disc = common.unwrap(g), common.unwrap(d)
    step = state.step
    while step < cfg.max_steps:
        common.maybe_kill(cfg, ctx, step)
        audio, position = next(batches)
        enc_in, target = prepare_batch(audio.to(ctx.device), sr, inner_gen.encoder, inner_gen.decoder)
        adversarial = step >= losses_cfg.adversarial_start_step
        with common.autocast(cfg, ctx.device):
            pred, mean, std = g(enc_in)
        out: dict[str, float] = {}
        if adversarial:  # discriminator step on [real; fake]
            with common.autocast(cfg, ctx.device):
                (real_l, _), (fake_l, _) = _split(d(torch.cat((target, pred.detach().to(target.dtype)))), target.shape[0])
                loss_d = discriminator_loss(real_l, fake_l)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            out["disc_grad_norm"] = common.clip_grad(d, losses_cfg.grad_clip)
            opt_d.step()
            out["loss_disc"] = loss_d.item()
        with common.autocast(cfg, ctx.device):
            mel, stft = mel_loss(pred.float(), target), stft_loss(pred.float(), target)
            extra, terms = regulariser_terms(losses_cfg, pred, target, mean, std, inner_gen.decoder.hop_length)
            total = losses_cfg.mel_weight * mel + losses_cfg.stft_weight * stft + extra
            out.update({k: v.item() for k, v in terms.items()})
            if adversarial:
                inner_disc.requires_grad_(False)
                try:
                    fake_logits, fake_feats = inner_disc(pred)
                    with torch.no_grad():
                        _, real_feats = inner_disc(target)
                finally:
                    inner_disc.requires_grad_(True)
                adv, fm = generator_adversarial_loss(fake_logits), feature_matching_loss(real_feats, fake_feats)
                total = total + losses_cfg.adversarial_weight * adv + losses_cfg.feature_weight * fm
                out.update(loss_adv=adv.item(), loss_fm=fm.item())
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        out["grad_norm"] = common.clip_grad(g, cfg.grad_clip)
        opt_g.step()
        sched_g.step()
        sched_d.step()
        step += 1

        def save(directory: Path, write: bool, step: int = step, position=position) -> None:
            common.save_checkpoint(directory, modules=modules, optimizers=optimizers, schedulers=schedulers,
                                   step=step, position=position, config=cfg, write=write)

        reporter.report(step, {"loss": total.item(), "loss_mel": mel.item(), "loss_stft": stft.item(), **out},
                        units=float(target.numel()), lr=sched_g.get_last_lr()[0], checkpoint=save,
                        force_checkpoint=step == cfg.max_steps)


def export(cfg: VAETrainConfig, checkpoint_dir: str | Path, dst: str | Path | None = None) -> Path:
    """Write ``encoder.*`` and ``decoder.*`` of a training checkpoint into a model directory."""
    from dr2studio.models.bigvgan import save_decoder
    from dr2studio.models.encoder import save_encoder
    from training.export import write_training_info

    dst = Path(dst or common.export_dir(cfg))
    dst.mkdir(parents=True, exist_ok=True)
    gen, _ = build_models(cfg)
    gen.load_state_dict(common.load_checkpoint_module(checkpoint_dir, "generator"))
    save_encoder(gen.encoder, dst)
    save_decoder(gen.decoder, dst)
    meta = common.read_checkpoint_meta(checkpoint_dir)
    earlier = Path(cfg.encoder_from).expanduser() / "dr2studio.json" if cfg.encoder_from else None
    if earlier is not None and earlier.is_file() and not (dst / "dr2studio.json").exists():
        shutil.copy2(earlier, dst / "dr2studio.json")  # keep the history of the VAE this run started from
    # a run that starts from a trained encoder is a later stage: keep the earlier "vae" record beside it
    stage = "vae" if not cfg.encoder_from else "vae_finetune" if cfg.train_encoder else "vae_decoder_finetune"
    write_training_info(dst, stage, {"run": cfg.name, "step": meta["step"], "manifest": cfg.manifest,
                                     "decoder_from": cfg.decoder_from, "decoder_frozen": cfg.decoder_frozen,
                                     "encoder_from": cfg.encoder_from, "encoder_frozen": not cfg.train_encoder})
    # safetensors leaves 0600 files; a model folder is for the whole group
    common.make_group_readable(*(dst / f"{part}.{ext}" for part in ("encoder", "decoder") for ext in ("json", "safetensors")),
                               dst / "dr2studio.json")
    log.info("exported VAE to %s", dst)
    return dst


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, args = common.parse_args(VAETrainConfig, smoke_config, argv, description=__doc__.splitlines()[0])
    if not cfg.manifest:
        if not args.smoke:
            raise SystemExit("vae.py: set `manifest` (a JSONL of songs) or use --smoke")
        from training.smoke_data import make_audio_manifest

        sr = cfg.decoder_config().sampling_rate
        cfg.manifest = str(make_audio_manifest(common.run_dir(cfg) / "smoke-data", num_songs=8, seconds=2.0, sample_rate=sr))
    result = common.fit(train_loop, cfg)
    with result.checkpoint.as_directory() as d:
        out = export(cfg, d)
    print(f"exported {out}")
    return out


if __name__ == "__main__":
    main()
