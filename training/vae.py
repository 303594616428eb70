"""Stage 1: the music VAE (encoder + BigVGAN decoder) against discriminators, on Ray Train.

    python -m training.vae --config vae.json          # manifest of songs; our own encoder and decoder
    python -m training.vae --smoke                    # tiny VAE, synthetic tones, 2 CPU workers
    python -m training.vae --set manifest=songs.jsonl --set decoder_from=/models/DiffRhythm2
        # train only an encoder into the released decoder's latent space (the decoder stays frozen)

The generator (encoder -> decoder) and the discriminators (multi-period, multi-resolution, CQT) are
prepared for data parallelism separately, each with its own AdamW and warm-up schedule. Losses are
those of :mod:`dr2studio.vae.losses`: multi-scale mel, multi-resolution STFT, least-squares
adversarial and feature matching (plus KL when the encoder has ``kl=True``). The discriminator sees
real and generated audio in one batch (one forward through the data-parallel wrapper); the
generator's adversarial pass runs the unwrapped, frozen discriminator so no gradient reaches it.
The step itself is :class:`dr2studio.vae.train_step.VAEStep` (the one the unit tests exercise); the
loop around it is :class:`training.solver.Solver`. The export writes ``encoder.*`` and ``decoder.*`` into a model directory.
"""
from __future__ import annotations

import dataclasses
import logging
import functools
import shutil
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from dr2studio.data.audio_stream import AudioSegmentStream
from dr2studio.data.manifest import read_manifest
from dr2studio.models.bigvgan import BigVGANDecoder, DecoderConfig
from dr2studio.models.discriminators import DiscriminatorConfig, build_discriminators
from dr2studio.models.encoder import EncoderConfig, MusicEncoder
from dr2studio.vae.train_step import Generator, VAELossConfig, VAEStep
from training import common
from training.common import TrainConfig
from training.solver import Solver, fit_and_export

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


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = VAETrainConfig.from_dict(loop_config["config"])
    ctx = common.worker_context()
    common.seed_everything(cfg.seed)
    gen, disc = build_models(cfg)
    g = common.prepare(gen, cfg)
    d = common.prepare(disc, cfg)
    opt_g = common.make_optimizer(g.parameters(), cfg)
    opt_d = common.make_optimizer(d.parameters(), cfg, lr=cfg.disc_lr or cfg.lr)
    solver = Solver(cfg, ctx, loop_config, unit="samples",
                    modules={"generator": g, "discriminator": d},
                    optimizers={"generator": (g, opt_g), "discriminator": (d, opt_d)},
                    schedulers={"generator": common.make_scheduler(opt_g, cfg),
                                "discriminator": common.make_scheduler(opt_d, cfg)})
    if cfg.decoder_frozen:
        common.unwrap(g).decoder.eval()
    if not cfg.train_encoder:
        common.unwrap(g).encoder.eval()
    step = VAEStep(g, d, opt_g, opt_d, VAELossConfig.from_dict(cfg.losses), grad_clip=cfg.grad_clip,
                   autocast=functools.partial(common.autocast, cfg, ctx.device), step=solver.step)

    sr = gen.decoder.sample_rate
    stream = AudioSegmentStream(read_manifest(cfg.manifest), sr, int(cfg.segment_seconds * sr), cfg.batch_size,
                                rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed)
    batches = stream.iter_from(solver.position)
    for _ in solver.steps():
        audio, position = next(batches)
        out = step(audio, sr)
        out["loss"] = out.pop("loss_gen")
        solver.end_step(out, units=float(step.target_samples), position=position)


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
            raise SystemExit("training.vae: set `manifest` (a JSONL of songs) or use --smoke")
        from training.smoke_data import make_audio_manifest

        sr = cfg.decoder_config().sampling_rate
        cfg.manifest = str(make_audio_manifest(common.run_dir(cfg) / "smoke-data", num_songs=8, seconds=2.0, sample_rate=sr))
    return fit_and_export(train_loop, cfg, export)


if __name__ == "__main__":
    main()
