"""The one weights module: one reader, one strict loader and one device/dtype policy for all three networks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dr2studio import checkpoints, weights
from dr2studio.models import bigvgan, encoder
from dr2studio.weights import CheckpointError, device_dtype, load_weights, read_state_dict, save_safetensors


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Conv1d(2, 2, 3)


def test_cpu_runs_float32_for_every_role() -> None:
    for role in ("dit", "decoder", "encoder"):
        assert device_dtype(role, "cpu") == (torch.device("cpu"), torch.float32)
    assert device_dtype("decoder", "cpu", "bfloat16")[1] == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        device_dtype("dit", "cpu", "float33")


def test_gpu_policy_per_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """DiT in bf16 where the card has it (else fp16), decoder in fp16 as the reference, encoder in fp32."""
    for bf16, dit_dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        assert device_dtype("dit", "cuda")[1] == dit_dtype
        assert device_dtype("decoder", "cuda")[1] == torch.float16
        assert device_dtype("encoder", "cuda")[1] == torch.float32
    with pytest.raises(ValueError, match="role"):
        device_dtype("vocoder", "cuda")  # type: ignore[arg-type]


def test_old_entry_points_are_the_one_policy_and_loaders() -> None:
    assert bigvgan.default_device_dtype("cpu", None) == device_dtype("decoder", "cpu")
    assert checkpoints.default_dtype(torch.device("cpu")) == torch.float32
    assert checkpoints.load_decoder is bigvgan.load_decoder and checkpoints.load_encoder is encoder.load_encoder
    assert checkpoints.load_state_dict_strict is weights.load_strict


def test_load_weights_is_strict_placed_and_frozen(tmp_path: Path) -> None:
    src = _Pair()
    save_safetensors({"net." + k: v for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    got = load_weights(_Pair(), tmp_path / "w.safetensors", role="encoder", device="cpu", prefix="net.")
    assert not got.training and not any(p.requires_grad for p in got.parameters())
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), src.state_dict().values()))
    trainable = load_weights(_Pair(), tmp_path / "w.safetensors", role="dit", device="cpu", prefix="net.", frozen=False)
    assert all(p.requires_grad for p in trainable.parameters())
    with pytest.raises(CheckpointError, match=r"w.safetensors: unknown key 'net\.[ab]\.\w+' \(every key must start"):
        load_weights(_Pair(), tmp_path / "w.safetensors", role="dit", prefix="model.")
    save_safetensors({k: v for k, v in src.state_dict().items() if k != "b.bias"}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m.safetensors: weights do not match the config: missing key 'b.bias'"):
        load_weights(_Pair(), tmp_path / "m.safetensors", role="dit")


def test_pickles_are_read_weights_only(tmp_path: Path) -> None:
    """A torch pickle holding anything but tensors is refused, not executed."""
    torch.save({"generator": {"w": torch.ones(1)}}, tmp_path / "ok.bin")
    assert torch.equal(read_state_dict(tmp_path / "ok.bin", pickle_key="generator")["w"], torch.ones(1))
    torch.save({"w": torch.ones(1), "hook": _Pair}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="cannot read weights .*evil.bin"):
        read_state_dict(tmp_path / "evil.bin")


def test_shared_and_view_tensors_are_saved(tmp_path: Path) -> None:
    """Tied weights and slices would make safetensors refuse the file; the saver copies just those."""
    base = torch.arange(12.0).view(3, 4)
    save_safetensors({"a": base, "tied": base, "row": base[1]}, tmp_path / "t.safetensors")
    back = read_state_dict(tmp_path / "t.safetensors")
    assert torch.equal(back["tied"], base) and torch.equal(back["row"], base[1])
