"""Stage 2: block flow matching with stochastic block REPA, on Ray Train.

    python -m training.block_fm --config training/configs/block_fm_tiny.json
    python -m training.block_fm --smoke                      # tiny model, synthetic latents, 2 CPU workers
    ray job submit --working-dir . -- python -m training.block_fm --config cfg.json --storage-path /shared/runs

Trains a :class:`dr2studio.models.dit.DiT` on the shards written by ``prepare_data.py`` with the
:class:`dr2studio.flow.block_fm.BlockFlowMatching` objective (paper sequence layout and mask,
end-of-prediction padding, condition dropout, REPA on the clean prefix plus the current noisy
block). AdamW (0.8, 0.9), weight decay 1e-2, gradient clipping 0.5, linear warm-up; bf16 autocast
and activation checkpointing on GPU; DDP by default, FSDP as an option; ``init_from`` starts from
released (or any model-directory) weights. The final model is exported to a model directory.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from dr2studio.data.collate import LatentBatch, collate_examples
from dr2studio.data.shards import load_index
from dr2studio.data.stream import ShardStream
from dr2studio.flow.block_fm import BlockFlowMatching, BlockFMConfig
from dr2studio.models.dit import DecoderLayer, DiT, DiTConfig
from training import common
from training.common import TrainConfig
from training.export import export_dit, read_training_info
from training.solver import Solver, fit_and_export

__all__ = ["BlockFMTrainConfig", "smoke_config", "build_dit", "train_loop", "export", "stage_info", "main"]

log = logging.getLogger("dr2studio.training.block_fm")


@dataclasses.dataclass
class BlockFMTrainConfig(TrainConfig):
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("export_dir", "data", "init_from", "assets_dir")
    data: str = ""  # shard folder written by prepare_data.py
    #: DiTConfig fields; with init_from only ``tempo_clock`` is read (it adds a zero-initialised clock)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str = ""  # model directory to start from (released or own weights)
    objective: dict[str, Any] = dataclasses.field(default_factory=dict)  # BlockFMConfig fields
    ssl_names: list[str] = dataclasses.field(default_factory=list)  # REPA targets per projector ([] = all, sorted)
    max_frames: int = 1050  # songs are cut to their first max_frames latent frames (210 s at 5 Hz)
    assets_dir: str = ""  # model directory whose decoder/vocab/encoder files go into the export

    def validate(self) -> None:
        super().validate()
        if self.max_frames < 1:
            raise common.ConfigError(f"max_frames must be >= 1, got {self.max_frames}")

    def dit_config(self) -> DiTConfig:
        if self.init_from:
            config = DiTConfig.load(Path(self.init_from).expanduser() / "model.json")
            if "tempo_clock" in self.model:
                config.tempo_clock = list(self.model["tempo_clock"])
                config.validate()
            return config
        return DiTConfig.from_dict(self.model)


def smoke_config() -> BlockFMTrainConfig:
    """A ~0.3M-parameter DiT on synthetic latents: finishes in about a minute on 2 CPU workers."""
    return BlockFMTrainConfig(
        name="block_fm-smoke", storage_path="~/dr2studio-runs", num_workers=2, max_steps=30, batch_size=4,
        lr=2e-3, warmup_steps=5, checkpoint_every=10, report_every=5, num_to_keep=2,
        model=dict(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=64, text_num_embeds=512, block_size=5,
                   repa_depth=1, repa_dims=[32]),
        objective=dict(repa_blocks=4), max_frames=40,
    )


def build_dit(cfg: BlockFMTrainConfig) -> DiT:
    """A fresh DiT from ``cfg.model``, or the weights in ``cfg.init_from``."""
    if cfg.init_from:
        from dr2studio.checkpoints import load_dit

        loaded = load_dit(cfg.init_from, device="cpu", dtype=torch.float32)
        config = cfg.dit_config()
        if config.tempo_clock == loaded.config.tempo_clock:
            return loaded.train()
        if loaded.config.tempo_clock:
            raise common.ConfigError(f"{cfg.init_from} has tempo clock {loaded.config.tempo_clock}; "
                                     f"model.tempo_clock {config.tempo_clock} cannot change it")
        model = DiT(config)  # the loaded weights plus a fresh (zero) clock projection
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or any(not k.startswith("clock_embed.") for k in missing):
            raise common.ConfigError(f"cannot add a tempo clock to {cfg.init_from}: missing {missing}, unexpected {unexpected}")
        log.info("added a tempo clock with periods %s beats to %s", config.tempo_clock, cfg.init_from)
        return model.train()
    return DiT(cfg.dit_config())


def _repa_targets(batch: LatentBatch, names: Sequence[str]) -> list[torch.Tensor]:
    return [batch.ssl[n] for n in names]


def _select_ssl(cfg: BlockFMTrainConfig, model: DiT, available: dict[str, int]) -> list[str]:
    """Which SSL features feed which REPA projector; [] disables REPA (with a warning)."""
    if model.projectors is None:
        return []
    names = cfg.ssl_names or sorted(available)
    dims = [available.get(n) for n in names]
    if len(names) != len(model.config.repa_dims) or dims != list(model.config.repa_dims):
        log.warning("REPA disabled: projectors want dims %s, data has %s for %s",
                    model.config.repa_dims, dims, names)
        return []
    return names


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = BlockFMTrainConfig.from_dict(loop_config["config"])
    ctx = common.worker_context()
    common.seed_everything(cfg.seed)
    model = build_dit(cfg)
    on_gpu = ctx.device.type == "cuda"
    model.gradient_checkpointing = bool(cfg.activation_checkpointing and on_gpu)
    index = load_index(cfg.data)
    ssl_names = _select_ssl(cfg, model, index.ssl)
    if model.projectors is not None and not ssl_names:
        model.projectors.requires_grad_(False)  # unused: keep DDP from waiting for their gradients
    objective = BlockFlowMatching(model, BlockFMConfig.from_dict(cfg.objective))
    wrapped = common.prepare(objective, cfg, fsdp_wrap={DecoderLayer})
    opt = common.make_optimizer(wrapped.parameters(), cfg)
    solver = Solver(cfg, ctx, loop_config, unit="frames", modules={"objective": wrapped},
                    optimizers={"adamw": (wrapped, opt)}, schedulers={"warmup": common.make_scheduler(opt, cfg)})

    frames_per_minute = None
    if model.clock_embed is not None:  # the clock runs in beats per latent frame: bpm / frames per minute
        frames_per_minute = 60.0 * index.latent_rate
    stream = ShardStream(cfg.data, cfg.batch_size, functools.partial(collate_examples, max_frames=cfg.max_frames),
                         rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed)
    batches = stream.iter_from(solver.position)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank * 104_729 + solver.step)
    for _ in solver.steps():
        batch, position = next(batches)
        batch = batch.to(ctx.device)
        bpf = None if frames_per_minute is None or batch.tempo is None else batch.tempo / frames_per_minute
        with common.autocast(cfg, ctx.device):
            out = wrapped(batch.latents, batch.latent_mask.sum(1), batch.tokens, batch.token_mask.sum(1),
                          batch.style, _repa_targets(batch, ssl_names), generator=gen, beats_per_frame=bpf)
        grad_norm = solver.optimize(out.loss, wrapped, opt)
        solver.end_step({"loss": out.loss.item(), "fm_loss": out.fm_loss.item(), "repa_loss": out.repa_loss.item(),
                         "grad_norm": grad_norm, "epoch": position.epoch}, units=out.frames, position=position)


def export(cfg: BlockFMTrainConfig, checkpoint_dir: str | Path, dst: str | Path | None = None) -> Path:
    """Write the DiT of a training checkpoint into a model directory."""
    meta = common.read_checkpoint_meta(checkpoint_dir)
    state = common.load_checkpoint_module(checkpoint_dir, "objective")
    dit_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assets = cfg.assets_dir or cfg.init_from or None
    return export_dit(dit_state, cfg.dit_config(), dst or common.export_dir(cfg), assets_dir=assets,
                      stage="block_fm", info=stage_info(cfg, meta["step"]))


def stage_info(cfg: BlockFMTrainConfig, step: int) -> dict[str, Any]:
    """The export's ``block_fm`` record; a DiT fine-tuned from one of ours nests that one's record
    as ``previous``, so a chain of runs stays on record after the assets come from elsewhere."""
    info: dict[str, Any] = {"run": cfg.name, "step": step, "data": cfg.data, "init_from": cfg.init_from,
                            "lr": cfg.lr, "decay_steps": cfg.decay_steps}
    clock = cfg.dit_config().tempo_clock
    if clock:
        info["tempo_clock"] = clock
    previous = read_training_info(cfg.init_from, "block_fm")
    if previous is not None:
        info["previous"] = previous
    return info


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, args = common.parse_args(BlockFMTrainConfig, smoke_config, argv, description=__doc__.splitlines()[0])
    if not cfg.data:
        if not args.smoke:
            raise SystemExit("training.block_fm: set `data` (a shard folder from prepare_data.py) or use --smoke")
        from training.smoke_data import make_latent_dataset

        cfg.data = str(make_latent_dataset(common.run_dir(cfg) / "smoke-data", num_songs=32))
    return fit_and_export(train_loop, cfg, export)


if __name__ == "__main__":
    main()
