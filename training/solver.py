"""The training loop every stage shares, in the manner of audiocraft's ``StandardSolver``.

Why one helper: the VAE, block flow matching and CPPO loops differ only in how a batch becomes a
loss. Resume, the step tail (backward, clip, optimiser, schedulers), metrics, checkpoint cadence,
the final checkpoint and the export after training were written out in each loop; here they are
written once. A stage's worker loop reads::

    solver = Solver(cfg, ctx, loop_config, modules=..., optimizers=..., schedulers=...)
    batches = stream.iter_from(solver.position)
    for _ in solver.steps():
        batch, position = next(batches)
        loss = ...
        grad_norm = solver.optimize(loss, wrapped, opt)
        solver.end_step({"loss": loss.item(), "grad_norm": grad_norm}, units=frames, position=position)

and its driver calls :func:`fit_and_export`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
from torch import nn

from dr2studio.data.stream import DataPosition
from training import common, faults
from training.common import TrainConfig, WorkerContext

__all__ = ["Solver", "fit_and_export"]

log = logging.getLogger("dr2studio.training.solver")

C = TypeVar("C", bound=TrainConfig)


class Solver:
    """Owns a worker's run state (step, data position) and everything after the loss.

    Construct it after :func:`common.prepare` and after building optimisers and schedulers: it
    restores the newest checkpoint of the run into them. The first scheduler's learning rate is
    the one reported.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: WorkerContext,
        loop_config: Mapping[str, Any],
        *,
        modules: Mapping[str, nn.Module],
        optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
        schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
        unit: str = "frames",
    ) -> None:
        if not schedulers:
            raise ValueError("a Solver needs at least one scheduler (its learning rate is reported)")
        self.cfg, self.ctx = cfg, ctx
        self.modules, self.optimizers, self.schedulers = dict(modules), dict(optimizers), dict(schedulers)
        resumed = common.restore(modules=self.modules, optimizers=self.optimizers, schedulers=self.schedulers)
        self.step: int = resumed.step
        self.position: DataPosition = resumed.position
        self.resumed_from = resumed.resumed_from
        self.reporter = common.StepReporter(cfg, ctx, unit=unit)
        self._faults = faults.FaultPlan.from_loop_config(loop_config)

    def steps(self) -> Iterator[int]:
        """Yield the number of steps done before each step, until ``max_steps``.

        The loop body must end with :meth:`end_step` (which advances the count).
        """
        while self.step < self.cfg.max_steps:
            self._faults.before_step(self.cfg, self.ctx, self.step)
            yield self.step

    def optimize(self, loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer,
                 max_norm: float | None = None) -> float:
        """Backward, clip (``cfg.grad_clip`` unless ``max_norm``) and one optimiser step; the norm
        before clipping."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = common.clip_grad(module, self.cfg.grad_clip if max_norm is None else max_norm)
        optimizer.step()
        return grad_norm

    def end_step(self, metrics: Mapping[str, float], *, units: float, position: DataPosition) -> None:
        """Step every scheduler, count the step, report it, and checkpoint on the cadence and at the end.

        ``position`` is the data position after this step's batch (where a resumed run continues).
        """
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        self.position = position
        lr = next(iter(self.schedulers.values())).get_last_lr()[0]
        self.reporter.report(self.step, dict(metrics), units=units, lr=lr, checkpoint=self.save,
                             force_checkpoint=self.step == self.cfg.max_steps)

    def save(self, directory: Path, write: bool) -> None:
        """A resumable checkpoint of the current step (every rank calls it; ``write`` on rank 0)."""
        common.save_checkpoint(directory, modules=self.modules, optimizers=self.optimizers,
                               schedulers=self.schedulers, step=self.step, position=self.position,
                               config=self.cfg, write=write)


def fit_and_export(train_fn: Callable[[dict], None], cfg: C,
                   export: Callable[[C, Path], Path]) -> Path:
    """Driver side: train on Ray (:func:`common.fit`), then export the final checkpoint with
    ``export(cfg, checkpoint_dir)``; returns the model directory."""
    result = common.fit(train_fn, cfg)
    with result.checkpoint.as_directory() as d:
        out = export(cfg, Path(d))
    log.info("exported %s", out)
    return out
