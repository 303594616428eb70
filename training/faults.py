"""Test-only fault injection for the resume path; never part of a run's configuration.

Why: the resume tests need a worker to die mid-run, but a "kill me at step N" switch does not belong
in the configuration people train with (it would be saved with every checkpoint and run record).
The tests set :data:`KILL_AT_STEP_ENV` in the driver's environment; :func:`training.common.fit`
reads it once with :func:`from_environment` and hands the plan to the workers inside the loop
config (a worker's own environment is the Ray node's, not the driver's).

    DR2STUDIO_TEST_KILL_AT_STEP=15 python -m training.block_fm --smoke --set max_failures=1
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Mapping

from training.common import TrainConfig, WorkerContext, run_dir

__all__ = ["KILL_AT_STEP_ENV", "LOOP_CONFIG_KEY", "FaultPlan", "from_environment"]

log = logging.getLogger("dr2studio.training.faults")

#: test-only: the last rank SIGKILLs itself once when this many steps are done
KILL_AT_STEP_ENV = "DR2STUDIO_TEST_KILL_AT_STEP"
#: where the plan travels in Ray Train's ``train_loop_config``
LOOP_CONFIG_KEY = "test_faults"


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject; the default injects none."""

    kill_at_step: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_loop_config(cls, loop_config: Mapping[str, Any]) -> FaultPlan:
        """The plan :func:`training.common.fit` put into the loop config (none when absent)."""
        return cls(**loop_config.get(LOOP_CONFIG_KEY, {}))

    def before_step(self, cfg: TrainConfig, ctx: WorkerContext, step: int) -> None:
        """The last rank SIGKILLs itself once, at ``kill_at_step`` (a marker file in the run folder
        makes it once per run, across restarts)."""
        if not self.kill_at_step or step != self.kill_at_step or ctx.rank != ctx.world_size - 1:
            return
        marker = run_dir(cfg) / f".killed-at-{step}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("fault injection\n")
        _wait_for_registered_checkpoint(cfg, step)
        log.warning("%s=%d: killing rank %d", KILL_AT_STEP_ENV, step, ctx.rank)
        os.kill(os.getpid(), 9)


def from_environment(environ: Mapping[str, str] | None = None) -> FaultPlan:
    """The plan the environment asks for (driver side); a bad value is an error, not silence."""
    value = (os.environ if environ is None else environ).get(KILL_AT_STEP_ENV, "").strip()
    if not value:
        return FaultPlan()
    try:
        step = int(value)
    except ValueError as exc:
        raise SystemExit(f"{KILL_AT_STEP_ENV} must be a step number, got {value!r}") from exc
    log.warning("test fault injection: the last rank dies once at step %d", step)
    return FaultPlan(kill_at_step=step)


def _wait_for_registered_checkpoint(cfg: TrainConfig, step: int, timeout_s: float = 60.0) -> None:
    """Hold the injected fault until Ray's controller has registered the newest checkpoint.

    Workers hand checkpoints to the controller, which picks reports up once per poll (2 s by
    default). A fault a few fast steps after a checkpoint can land before the controller has seen
    it, and the group then restarts from the previous one (or from scratch): correct for Ray, but
    not the resume this fault exists to exercise. The controller's registry is the checkpoint
    manager snapshot it writes into the run folder (a Ray Train v2 file; if it never names the
    checkpoint, the fault fires anyway after ``timeout_s``).
    """
    last = (step // cfg.checkpoint_every) * cfg.checkpoint_every
    if last <= 0 or "://" in cfg.storage_path:
        return
    snapshot = run_dir(cfg) / "checkpoint_manager_snapshot.json"
    wanted = f"checkpoint_{last:08d}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if wanted in snapshot.read_text(encoding="utf-8"):
                return
        time.sleep(0.1)
    log.warning("fault at step %d: Ray has not registered %s after %.0f s", step, wanted, timeout_s)
