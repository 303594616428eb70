"""CPPO stage: one Ray Train run per pair group on 2 CPU workers, then the weight-average merge."""
from __future__ import annotations

import json
import math

import pytest
import torch

ray = pytest.importorskip("ray")

from training import common, cppo  # noqa: E402


@pytest.mark.ray
@pytest.mark.slow
def test_cppo_smoke_trains_each_group_and_merges(tmp_path):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        args = ["--smoke", "--storage-path", str(tmp_path), "--name", "cppo"]
        out = cppo.main(args)
    finally:
        ray.shutdown()
    cfg, _ = common.parse_args(cppo.CPPOTrainConfig, cppo.smoke_config, args)
    states = []
    for group in ("musicality_lyrics", "style_quality"):
        run = common.read_metrics(cppo.dataclasses.replace(cfg, name=f"cppo-{group}"))
        assert [m["step"] for m in run] == list(range(1, 13))
        assert run[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # policy == reference at the start
        assert sum(m["loss"] for m in run[-3:]) / 3 < run[0]["loss"] - 0.05
        ckpt = tmp_path / f"cppo-{group}" / "checkpoint_00000012"
        states.append(cppo._policy_state(ckpt))
    from dr2studio.checkpoints import load_dit

    merged = load_dit(out, device="cpu").state_dict()
    for k in ("proj_out.weight", "transformer_blocks.0.mlp.up_proj.weight"):
        assert torch.allclose(merged[k], (states[0][k] + states[1][k]) / 2, atol=1e-6)
    info = json.loads((out / "dr2studio.json").read_text())["training"]["cppo"]
    counts = info["groups"]["musicality_lyrics"]["pairs_per_case"]
    assert len(set(counts.values())) == 1 and counts["both"] > 0
