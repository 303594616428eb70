"""The DiT: released-layout loading with clear errors, config round trip, dtypes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dr2studio.checkpoints import CheckpointError, load_dit, save_dit
from dr2studio.config import ConfigError
from dr2studio.models.dit import DiT, DiTConfig

TINY = dict(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=8, text_num_embeds=520, block_size=4, repa_depth=1, repa_dims=[16])


def test_config_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    cfg = DiTConfig.from_dict({**TINY, "some_training_key": 3})
    cfg.save(tmp_path / "model.json")
    back = DiTConfig.load(tmp_path / "model.json")
    assert back == cfg and back.extra == {"some_training_key": 3}
    assert json.loads((tmp_path / "model.json").read_text())["some_training_key"] == 3


@pytest.mark.parametrize("bad", [{"dim": 66}, {"heads": 0}, {"block_size": -1}, {"repa_depth": 9}])
def test_config_rejects_impossible_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        DiTConfig.from_dict({**TINY, **bad})


def test_released_checkpoint_loads_strictly(tiny_ref_dir: Path) -> None:
    model = load_dit(tiny_ref_dir)
    assert model.config.dim == 96 and model.projectors is not None
    state = load_file(str(tiny_ref_dir / "model.safetensors"))
    ours = model.state_dict()
    assert set(ours) == {k.removeprefix("transformer.") for k in state}
    key = "transformer.transformer_blocks.0.self_attn.q_norm.weight"
    assert torch.equal(ours[key.removeprefix("transformer.")], state[key])


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("model.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def test_load_errors_name_file_and_key(tmp_path: Path) -> None:
    model = DiT(DiTConfig.from_dict(TINY))
    good = tmp_path / "good"
    save_dit(model, good)
    state = load_file(str(good / "model.safetensors"))

    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dit(_copy_model(good, tmp_path / "a").parent / "nonexistent")

    missing = _copy_model(good, tmp_path / "missing")
    save_file({k: v for k, v in state.items() if "proj_out.bias" not in k}, str(missing / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key 'proj_out.bias'"):
        load_dit(missing)

    unknown = _copy_model(good, tmp_path / "unknown")
    save_file({**state, "transformer.extra.weight": torch.zeros(2)}, str(unknown / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unknown key 'extra.weight'"):
        load_dit(unknown)

    shape = _copy_model(good, tmp_path / "shape")
    bad = dict(state)
    bad["transformer.proj_out.weight"] = torch.zeros(3, 3)
    save_file(bad, str(shape / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"proj_out.weight.*shape \(3, 3\)"):
        load_dit(shape)

    corrupt = _copy_model(good, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_dit(corrupt)


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DiT(DiTConfig.from_dict(TINY))
    save_dit(model, tmp_path)
    back = load_dit(tmp_path, device="cpu")
    assert back.dtype == torch.float32 and not back.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_bfloat16_runs_on_cpu_close_to_float32(tmp_path: Path) -> None:
    from dr2studio.flow.sampler import sample_latents

    torch.manual_seed(0)
    save_dit(DiT(DiTConfig.from_dict(TINY)), tmp_path)
    tokens = torch.randint(1, 500, (1, 7))
    style = torch.randn(1, 512)
    noise = torch.randn(1, 8, 8)
    ref = sample_latents(load_dit(tmp_path), tokens, style, 8, steps=4, noise=noise)
    low = sample_latents(load_dit(tmp_path, dtype=torch.bfloat16), tokens, style, 8, steps=4, noise=noise)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).norm() / ref.norm() < 0.1
