"""Block flow matching stage on a real local Ray instance (2 CPU workers, gloo)."""
from __future__ import annotations

import json

import pytest
import torch

ray = pytest.importorskip("ray")

from training import block_fm, common  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_run_survives_a_killed_worker_resumes_and_exports(ray_local, tmp_path):
    args = ["--smoke", "--storage-path", str(tmp_path), "--name", "bfm",
            "--set", "kill_at_step=15", "--set", "max_failures=1"]
    out = block_fm.main(args)
    cfg, _ = common.parse_args(block_fm.BlockFMTrainConfig, block_fm.smoke_config, args)
    steps = [m["step"] for m in common.read_metrics(cfg)]
    # rank 1 died at step 15; the group restarted from checkpoint 10 and counted on from 11
    assert steps[-1] == 30
    restart = steps.index(11, steps.index(11) + 1)
    assert steps[restart - 1] >= 14 and steps[restart:] == list(range(11, 31))
    losses = [m["loss"] for m in common.read_metrics(cfg)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, "the loss must go down on the synthetic data"
    metrics = common.read_metrics(cfg)[-1]
    assert metrics["frames_per_s"] > 0 and metrics["lr"] == pytest.approx(cfg.lr)
    kept = sorted(p.name for p in (tmp_path / "bfm").glob("checkpoint_0*"))
    assert kept == ["checkpoint_00000020", "checkpoint_00000030"]  # num_to_keep=2
    meta = json.loads((tmp_path / "bfm" / "checkpoint_00000030" / "meta.json").read_text())
    assert meta["step"] == 30 and meta["position"]["epoch"] >= 1

    from dr2studio.checkpoints import load_dit

    model = load_dit(out, device="cpu")
    assert model.config.dim == 64 and (out / "dr2studio.json").is_file()

    # starting the same run again with more steps continues from its newest checkpoint
    block_fm.main(args + ["--max-steps", "34"])
    steps = [m["step"] for m in common.read_metrics(cfg)]
    assert steps[-4:] == [31, 32, 33, 34]
    again = load_dit(out, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
