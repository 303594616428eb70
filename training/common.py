"""Ray Train plumbing shared by the three training stages (VAE, block flow matching, CPPO).

Why one module: every stage needs the same run contract — ``--config FILE`` / ``--smoke``,
``RunConfig(name, storage_path)``, checkpoints through ``ray.train.report`` every
``checkpoint_every`` steps with ``num_to_keep``, resume of model + optimisers + schedulers + step +
data position when the same run is started again, ``FailureConfig(max_failures)``, metrics every
step (losses, learning rate, throughput), and an export to the model-directory layout.

Worker side: :func:`worker_context`, :func:`prepare`, :func:`make_optimizer`,
:func:`warmup_scheduler`, :func:`autocast`, :func:`restore` and :class:`StepReporter` (the loop
itself is :class:`training.solver.Solver`).
Driver side: :func:`parse_args` (with :func:`absolute_paths`) and :func:`fit`.

Checkpoint directory (written by rank 0, read by every rank on resume)::

    meta.json              {"step", "position", "extra", "config"}
    models/<name>.safetensors   full (unsharded) state dict of each trained module
    state.pt               optimiser and scheduler states (torch.load(weights_only=True))
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dr2studio.atomic import default_file_mode
from dr2studio.config import ConfigError, JsonConfig, atomic_write_text
from dr2studio.data.stream import DataPosition
from dr2studio.vae.train_step import clip_grad

__all__ = [
    "TrainConfig",
    "WorkerContext",
    "worker_context",
    "seed_everything",
    "prepare",
    "unwrap",
    "make_optimizer",
    "warmup_scheduler",
    "make_scheduler",
    "autocast",
    "clip_grad",
    "ResumeState",
    "restore",
    "save_checkpoint",
    "read_checkpoint_meta",
    "load_checkpoint_module",
    "StepReporter",
    "parse_args",
    "fit",
    "run_dir",
    "read_metrics",
    "RUN_RECORD",
    "RunClaimError",
    "claim_run",
    "default_file_mode",
    "make_group_readable",
]

log = logging.getLogger("dr2studio.training")

C = TypeVar("C", bound="TrainConfig")


@dataclasses.dataclass
class TrainConfig(JsonConfig):
    """Fields every stage shares. Stages subclass this with their own model and data fields."""

    #: fields holding local paths: made absolute on the driver (Ray workers run in another folder)
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("export_dir",)

    name: str = "dr2-run"
    storage_path: str = "~/dr2studio-runs"
    num_workers: int = 2
    use_gpu: bool = False
    strategy: str = "ddp"  # "ddp" or "fsdp" (GPU only)
    max_steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.9])
    weight_decay: float = 1e-2
    grad_clip: float = 0.5
    warmup_steps: int = 100
    decay_steps: int = 0  # linear decay to 0 over the last decay_steps before max_steps (0 = constant)
    checkpoint_every: int = 100
    report_every: int = 10  # steps between ray.train.report calls (metrics.jsonl gets every step)
    num_to_keep: int = 2
    max_failures: int = 0
    seed: int = 0
    mixed_precision: str = "bf16"  # "bf16" or "fp32"; bf16 autocast applies on GPU only
    activation_checkpointing: bool = True  # applied on GPU only (CPU runs are tiny)
    export_dir: str = ""  # where the final model directory goes ("" = <run dir>/export)
    resume: bool = False  # continue a run started by another user or with another config (see claim_run)

    def validate(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ConfigError("strategy 'fsdp' needs use_gpu=true (FSDP has no CPU/gloo path)")
        if self.mixed_precision not in ("bf16", "fp32"):
            raise ConfigError(f"mixed_precision must be 'bf16' or 'fp32', got {self.mixed_precision!r}")
        for name in ("num_workers", "max_steps", "batch_size", "checkpoint_every", "report_every", "num_to_keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr <= 0 or self.grad_clip < 0 or self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError("lr must be > 0, grad_clip, warmup_steps and decay_steps >= 0")
        if self.decay_steps > self.max_steps:
            raise ConfigError(f"decay_steps ({self.decay_steps}) must not exceed max_steps ({self.max_steps})")


# --------------------------------------------------------------------------- worker side


@dataclasses.dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device


def worker_context() -> WorkerContext:
    """Rank, world size and device of this Ray Train worker (or a single local process)."""
    try:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        device = ray.train.torch.get_device()
        if isinstance(device, list):
            device = device[0]
        return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), torch.device(device))
    except (ImportError, RuntimeError, AttributeError):  # not inside Ray Train
        return WorkerContext(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed: int, rank: int = 0) -> None:
    """Same model init on every rank (``seed``); different augmentation noise per rank."""
    random.seed(seed + rank)
    torch.manual_seed(seed)


def prepare(module: nn.Module, cfg: TrainConfig, *, find_unused_parameters: bool = False,
            fsdp_wrap: set[type[nn.Module]] | None = None) -> nn.Module:
    """Move ``module`` to the worker's device and wrap it in DDP (default) or FSDP.

    Each trained network is prepared separately (the VAE stage prepares the generator and the
    discriminators as two modules with two optimisers). With FSDP, each instance of a class in
    ``fsdp_wrap`` (for example the DiT's decoder layer) becomes its own shard unit, so only one
    layer's full weights exist at a time.
    """
    ctx = worker_context()
    if ctx.world_size == 1:
        return module.to(ctx.device)
    import ray.train.torch

    if cfg.strategy == "ddp":
        kwargs: dict[str, Any] = {"find_unused_parameters": find_unused_parameters}
    else:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        kwargs = {"auto_wrap_policy": ModuleWrapPolicy(fsdp_wrap)} if fsdp_wrap else {}
    return ray.train.torch.prepare_model(module, parallel_strategy=cfg.strategy, parallel_strategy_kwargs=kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP/FSDP wrapper."""
    return getattr(module, "module", module)


def make_optimizer(params: Iterator[nn.Parameter] | Sequence[nn.Parameter], cfg: TrainConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW with the paper's betas (0.8, 0.9) and weight decay 1e-2 unless the config says otherwise."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr or cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def warmup_scheduler(opt: torch.optim.Optimizer, warmup_steps: int, *, max_steps: int = 0,
                     decay_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base learning rate over ``warmup_steps``, then constant; with
    ``decay_steps``, a linear decay to 0 over the last ``decay_steps`` before ``max_steps``.

    The factor is a function of the absolute step only, so a run resumed with a larger ``max_steps``
    and a decay phase continues its constant stretch and then anneals (warm-up, stable, decay).
    """
    w, d = max(0, warmup_steps), max(0, decay_steps)

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / w) if w else 1.0
        if d and max_steps:
            f = min(f, max(0.0, (max_steps - step) / d))
        return f

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The configured schedule (:func:`warmup_scheduler` with ``cfg``'s warm-up, decay and length)."""
    return warmup_scheduler(opt, cfg.warmup_steps, max_steps=cfg.max_steps, decay_steps=cfg.decay_steps)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU when configured; a no-op context on CPU."""
    if device.type == "cuda" and cfg.mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if isinstance(module, (nn.parallel.DistributedDataParallel,)) or not _is_fsdp(module):
        return {k: v.detach().cpu().contiguous() for k, v in unwrap(module).state_dict().items()}
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=opts)


def _is_fsdp(module: nn.Module) -> bool:
    return type(module).__name__ in ("FullyShardedDataParallel",) or hasattr(module, "_fsdp_wrapped_module")


def _optimizer_state(module: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    if _is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
    schedulers: Mapping[str, Any],
    step: int,
    position: DataPosition,
    config: TrainConfig,
    extra: dict[str, Any] | None = None,
    write: bool = True,
) -> None:
    """Write a resumable checkpoint into ``directory``. Every rank must call it (FSDP gathers
    shards collectively); only ranks with ``write=True`` touch the disk."""
    states = {name: _full_state_dict(m) for name, m in modules.items()}
    opt_states = {name: _optimizer_state(m, o) for name, (m, o) in optimizers.items()}
    if not write:
        return
    directory = Path(directory)
    (directory / "models").mkdir(parents=True, exist_ok=True)
    for name, sd in states.items():
        save_file(sd, str(directory / "models" / f"{name}.safetensors"))
    make_group_readable(directory / "models")  # safetensors writes 0600 (a private temp file renamed)
    torch.save(
        {"optimizers": opt_states, "schedulers": {k: s.state_dict() for k, s in schedulers.items()}},
        directory / "state.pt",
    )
    meta = {"step": step, "position": position.to_dict(), "extra": extra or {}, "config": config.to_dict()}
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a dr2studio training checkpoint (no meta.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_checkpoint_module(directory: str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """The saved state dict of module ``name`` from a checkpoint directory."""
    path = Path(directory) / "models" / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no module {name!r} ({path} missing)")
    return load_file(str(path))


@dataclasses.dataclass
class ResumeState:
    step: int = 0
    position: DataPosition = DataPosition()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    resumed_from: str = ""


def restore(
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
    schedulers: Mapping[str, Any],
) -> ResumeState:
    """Load the newest checkpoint of this run (``ray.train.get_checkpoint()``) if there is one.

    Call it after :func:`prepare` and after building optimisers and schedulers.
    """
    try:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
    except (ImportError, RuntimeError):
        checkpoint = None
    if checkpoint is None:
        return ResumeState()
    with checkpoint.as_directory() as d:
        meta = read_checkpoint_meta(d)
        for name, m in modules.items():
            sd = load_checkpoint_module(d, name)
            if _is_fsdp(m):
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(m, sd, options=StateDictOptions(full_state_dict=True))
            else:
                unwrap(m).load_state_dict(sd)
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        for name, (m, opt) in optimizers.items():
            if _is_fsdp(m):
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(m, opt, state["optimizers"][name], options=StateDictOptions(full_state_dict=True))
            else:
                opt.load_state_dict(state["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
    log.info("resumed at step %d from %s", meta["step"], checkpoint.path)
    return ResumeState(meta["step"], DataPosition.from_dict(meta["position"]), meta.get("extra", {}), checkpoint.path)


def run_dir(cfg: TrainConfig) -> Path:
    """``<storage_path>/<name>``: where Ray keeps this run's checkpoints and we keep metrics.jsonl."""
    return Path(os.path.expanduser(cfg.storage_path)).resolve() / cfg.name


def read_metrics(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Every metrics line written so far by rank 0 (across restarts)."""
    path = run_dir(cfg) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class StepReporter:
    """Reports metrics every step and a checkpoint every ``checkpoint_every`` steps.

    Every step: one JSON line on rank 0 in ``<run dir>/metrics.jsonl`` (appended across restarts)
    and a log line. Every ``report_every`` steps and with each checkpoint: ``ray.train.report``.
    (Ray Train's controller consumes one report per health-check poll, 2 s by default, so a report
    on every step would cap training at half a step per second.) Throughput counts latent frames
    (or audio samples for the VAE) across all ranks.
    """

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext, unit: str = "frames") -> None:
        self.cfg, self.ctx, self.unit = cfg, ctx, unit
        self._t = time.perf_counter()
        self._metrics_path = run_dir(cfg) / "metrics.jsonl" if "://" not in cfg.storage_path else None
        if self._metrics_path is not None and ctx.rank == 0:
            self._metrics_path.parent.mkdir(parents=True, exist_ok=True)

    def _global_sum(self, value: float) -> float:
        if self.ctx.world_size == 1 or not torch.distributed.is_initialized():
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.ctx.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def report(
        self,
        step: int,
        metrics: dict[str, float],
        *,
        units: float,
        lr: float,
        checkpoint: Callable[[Path, bool], None] | None = None,
        force_checkpoint: bool = False,
    ) -> None:
        """``step`` is the number of optimiser steps done. ``checkpoint(dir, write)`` saves state."""
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        total_units = self._global_sum(units)
        out = {"step": step, "lr": lr, f"{self.unit}_per_s": total_units / max(dt, 1e-9), "step_time_s": dt,
               "time": time.time()}
        out.update({k: float(v) for k, v in metrics.items()})
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite training metric at step {step}: {out}")
        if self.ctx.rank == 0 and self._metrics_path is not None:
            with self._metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(out) + "\n")
        if self.ctx.rank == 0:
            log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in out.items() if k != "step"))
        want_ckpt = checkpoint is not None and (force_checkpoint or step % self.cfg.checkpoint_every == 0)
        import ray.train

        if not want_ckpt:
            if step % self.cfg.report_every == 0:
                ray.train.report(out)
            return
        with tempfile.TemporaryDirectory(prefix="dr2ckpt-") as tmp:
            checkpoint(Path(tmp), self.ctx.rank == 0)
            ckpt = ray.train.Checkpoint.from_directory(tmp) if self.ctx.rank == 0 else None
            ray.train.report(out, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:08d}")


# --------------------------------------------------------------------------- driver side


def parse_args(
    config_cls: type[C],
    smoke: Callable[[], C],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[C, argparse.Namespace]:
    """``--config FILE`` and ``--smoke`` plus the common overrides; returns (config, args).

    Precedence: the smoke or default config, then the config file, then ``--set key=value``
    (value parsed as JSON, else a string), then the explicit flags.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", type=Path, help="JSON config file (a dataclass dump; unknown keys kept)")
    p.add_argument("--smoke", action="store_true", help="tiny config and synthetic data: a CPU check of the stage")
    p.add_argument("--name", help="run name (restarting the same name resumes from its newest checkpoint)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the named run even if another user or another config started it")
    p.add_argument("--storage-path", help="where runs live (local folder or a cluster-shared URI)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--export-dir", help="model directory to export the final weights to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    if extra_args is not None:
        extra_args(p)
    args = p.parse_args(argv)
    base = smoke() if args.smoke else config_cls()
    data = base.to_dict()
    if args.config is not None:
        file_cfg = config_cls.load(args.config)
        data.update({k: v for k, v in file_cfg.to_dict().items()})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    for flag, key in (("name", "name"), ("storage_path", "storage_path"), ("num_workers", "num_workers"),
                      ("use_gpu", "use_gpu"), ("max_steps", "max_steps"), ("export_dir", "export_dir"),
                      ("resume", "resume")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    try:
        cfg = config_cls.from_dict(data)
    except ConfigError as exc:
        raise SystemExit(f"bad training config: {exc}") from exc
    unknown = sorted(cfg.extra)
    if unknown:
        log.warning("config keys not used by %s: %s", config_cls.__name__, unknown)
    absolute_paths(cfg)
    return cfg, args


def absolute_paths(cfg: TrainConfig, base: Path | None = None) -> TrainConfig:
    """Make relative local paths in ``cfg.PATH_FIELDS`` absolute (relative to ``base`` or the cwd).

    Ray Train workers do not run in the driver's working directory, so ``--set manifest=songs/m.jsonl``
    would otherwise point nowhere on a worker. A value counts as a local path when its parent folder
    exists here (inputs and outputs alike); URIs, empty values and model-hub ids such as
    ``org/name`` (no folder ``org`` here) are left as they are.
    """
    base = Path.cwd() if base is None else base
    for name in cfg.PATH_FIELDS:
        value = getattr(cfg, name)
        if not value or "://" in value:
            continue
        path = Path(value).expanduser()
        if not path.is_absolute() and (base / path).parent.is_dir():
            setattr(cfg, name, str((base / path).resolve()))
    return cfg


def fit(train_fn: Callable[[dict], None], cfg: TrainConfig) -> Any:
    """Run ``train_fn`` on ``cfg.num_workers`` Ray Train workers and return the ``Result``.

    Connects to the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``) or starts a local
    instance. Restarting with the same ``name`` and ``storage_path`` resumes from the newest
    checkpoint of that run, once :func:`claim_run` has checked that it is the same run.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    import training
    from ray import cloudpickle
    from training import faults

    claim_run(cfg)
    # ship the training package with the function, so workers need only dr2studio installed
    cloudpickle.register_pickle_by_value(training)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    storage = cfg.storage_path if "://" in cfg.storage_path else str(Path(os.path.expanduser(cfg.storage_path)).resolve())
    trainer = TorchTrainer(
        train_fn,
        # test-only fault injection travels beside the config, never in it
        train_loop_config={"config": cfg.to_dict(), faults.LOOP_CONFIG_KEY: faults.from_environment().to_dict()},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def export_dir(cfg: TrainConfig) -> Path:
    """Where the final model directory goes: ``export_dir`` or ``<run dir>/export``."""
    return Path(os.path.expanduser(cfg.export_dir)).resolve() if cfg.export_dir else run_dir(cfg) / "export"


# --------------------------------------------------------------------------- run ownership and file modes

#: the record in a run folder of who started the run, with which stage and which settings
RUN_RECORD = "dr2run.json"

#: fields that may change between starts of one run: how long, where and on what it runs, how often it
#: checkpoints; everything else (model, data, optimiser, seed) defines the run
CONTINUATION_FIELDS = frozenset({
    "name", "storage_path", "max_steps", "decay_steps", "num_workers", "use_gpu", "strategy", "checkpoint_every",
    "report_every", "num_to_keep", "max_failures", "export_dir", "resume",
    "kill_at_step",  # a test switch of older config files (now the DR2STUDIO_TEST_KILL_AT_STEP variable)
})


class RunClaimError(SystemExit):
    """A run name already used by another user, another stage or another configuration."""


def _owner() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid {os.getuid()}"


def _run_settings(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in sorted(cfg.to_dict().items()) if k not in CONTINUATION_FIELDS}


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {json.dumps(old.get(k))[:40]} -> {json.dumps(new.get(k))[:40]}" for k in keys[:limit]]
    return "; ".join(shown) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def claim_run(cfg: TrainConfig) -> Path | None:
    """Make sure ``<storage_path>/<name>`` is this run before Ray resumes whatever checkpoints it holds.

    Why: Ray Train resumes any run folder of the same name, so two people (or two experiments) that
    both keep the default name on shared storage would silently continue each other's checkpoints.
    The first start writes :data:`RUN_RECORD` (owner, stage, defining settings); a later start
    continues only when the owner, the stage and the settings outside :data:`CONTINUATION_FIELDS`
    match, and otherwise stops with an error naming what differs. ``cfg.resume`` (``--resume``)
    continues anyway. A folder with checkpoints but no record (a run from before the record
    existed) also needs ``--resume``. URIs are not checked. Returns the record's path.
    """
    if "://" in cfg.storage_path:
        log.warning("run folder %s is a URI: not checking who started run %r", cfg.storage_path, cfg.name)
        return None
    folder = run_dir(cfg)
    record_path = folder / RUN_RECORD
    mine = {"owner": _owner(), "stage": type(cfg).__name__, "settings": _run_settings(cfg)}
    if record_path.is_file():
        try:
            theirs = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunClaimError(f"run {cfg.name!r}: unreadable {record_path} ({exc}); use another --name") from exc
        problems = []
        if theirs.get("owner") != mine["owner"]:
            problems.append(f"was started by {theirs.get('owner')!r}, not {mine['owner']!r}")
        if theirs.get("stage") != mine["stage"]:
            problems.append(f"is a {theirs.get('stage')} run, not {mine['stage']}")
        elif theirs.get("settings") != mine["settings"]:
            problems.append(f"has other settings ({_differences(theirs.get('settings') or {}, mine['settings'])})")
        if problems and not cfg.resume:
            raise RunClaimError(
                f"run {cfg.name!r} in {folder.parent} {'; '.join(problems)}: "
                "pick another --name, or pass --resume to continue it anyway")
        if problems:
            log.warning("--resume: continuing run %r, which %s", cfg.name, "; ".join(problems))
        else:
            log.info("continuing run %r (%s)", cfg.name, record_path)
        return record_path
    if folder.is_dir() and any(folder.glob("checkpoint_*")) and not cfg.resume:
        raise RunClaimError(
            f"run {cfg.name!r} in {folder.parent} has checkpoints but no {RUN_RECORD} (a run from an older "
            "version, or not ours): pick another --name, or pass --resume to continue it")
    if cfg.resume and not folder.is_dir():
        log.warning("--resume: there is no run %r in %s yet; starting it", cfg.name, folder.parent)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, json.dumps({**mine, "created": time.time()}, indent=2, default=str) + "\n")
    make_group_readable(record_path)
    return record_path


def make_group_readable(*paths: str | os.PathLike) -> None:
    """Give each file in ``paths`` (every file under it, for a folder; missing ones are skipped) the
    mode a plain ``open()`` would have given it.

    Why: writers that go through a private temporary file and a rename (``safetensors.save_file``
    0.8, ``tempfile.mkstemp``) leave 0600 files, so an exported model or a checkpoint would be
    unreadable to the rest of the group that shares the model folder. Only permission bits the
    umask allows are set; files are never made executable.
    """
    mode = default_file_mode()
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and not path.is_symlink():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    for f in files:
        with contextlib.suppress(OSError):  # a file of another owner: leave it as it is
            if f.stat().st_mode & 0o777 != mode:
                os.chmod(f, mode)
