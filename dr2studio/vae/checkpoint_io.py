"""Reading and writing VAE weights: safetensors or ``weights_only`` torch pickles, weight-norm folding,
strict key matching with errors that name the file and the key.

Weight norm appears in checkpoints in two spellings: the legacy hook (``<name>.weight_g`` /
``<name>.weight_v``, used by the released ``decoder.bin``) and the parametrization API
(``<name>.parametrizations.weight.original0`` / ``original1``). Both are folded here into a plain
``<name>.weight = g * v / ||v||`` (norm over every dim except 0, as ``weight_norm(dim=0)`` does), so
inference modules carry no weight-norm machinery.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from dr2studio.checkpoints import CheckpointError  # one error type for every model file

__all__ = [
    "CheckpointError",
    "fold_weight_norm",
    "read_state_dict",
    "load_strict",
    "save_safetensors",
    "apply_weight_norm",
    "remove_weight_norm",
    "VAEModule",
]

_LEGACY = (".weight_g", ".weight_v")
_PARAM = (".parametrizations.weight.original0", ".parametrizations.weight.original1")


def _fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, v.dim()))
    v32 = v.to(torch.float32)
    norm = v32.pow(2).sum(dim=dims, keepdim=True).sqrt()
    return (v32 * (g.to(torch.float32) / norm)).to(v.dtype)


def fold_weight_norm(state: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Return a copy of ``state`` with every weight-norm pair (either spelling) replaced by ``.weight``."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        for suffixes in (_LEGACY, _PARAM):
            if key.endswith(suffixes[0]) or key.endswith(suffixes[1]):
                idx = 0 if key.endswith(suffixes[0]) else 1
                base = key[: -len(suffixes[idx])]
                pairs.setdefault(base, {})[idx] = value
                break
        else:
            out[key] = value
    for base, pair in pairs.items():
        if len(pair) != 2:
            which = "magnitude (weight_g/original0)" if 0 not in pair else "direction (weight_v/original1)"
            raise CheckpointError(f"{source}: weight-norm pair for {base!r} lacks its {which}")
        if base + ".weight" in out:
            raise CheckpointError(f"{source}: {base!r} has both a plain weight and a weight-norm pair")
        out[base + ".weight"] = _fold(pair[0], pair[1])
    return out


def read_state_dict(path: str | os.PathLike, *, pickle_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a torch pickle (``weights_only=True``; ``pickle_key`` selects a
    sub-dict such as the released ``{"generator": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        data = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, non-tensor pickle, wrong format
        raise CheckpointError(f"cannot read weights {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    if pickle_key is not None and pickle_key in data:
        data = data[pickle_key]
    elif pickle_key is not None and not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: no {pickle_key!r} entry (top-level keys: {sorted(data)[:8]})")
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor")
    return dict(data)


def _short(keys: list[str], limit: int = 6) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Fold weight norm, then load ``state`` into ``model`` requiring the exact key set and shapes."""
    state = fold_weight_norm(state, source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        raise CheckpointError(f"{source}: weights do not match the config ({'; '.join(parts)})")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the config expects {tuple(ref.shape)}"
            )
    model.load_state_dict(state, strict=True)


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write tensors to ``path`` through a temporary name (readers never see half a file)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _norm_targets(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d))]


def apply_weight_norm(model: nn.Module) -> nn.Module:
    """Re-parametrise every convolution with weight norm (dim 0) for training; exact on the current weights."""
    from torch.nn.utils.parametrizations import weight_norm
    from torch.nn.utils.parametrize import is_parametrized

    for module in _norm_targets(model):
        if not is_parametrized(module, "weight"):
            weight_norm(module, name="weight", dim=0)
    return model


def remove_weight_norm(model: nn.Module) -> nn.Module:
    """Fold weight norm back into plain weights (for inference and for saving)."""
    from torch.nn.utils.parametrize import is_parametrized, remove_parametrizations

    for module in _norm_targets(model):
        if is_parametrized(module, "weight"):
            remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


class VAEModule(nn.Module):
    """Base of the encoder and decoder: device/dtype of the weights, hop, weight norm on and off."""

    config: Any  # a config with a ``hop_length`` property

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return int(self.config.hop_length)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def apply_weight_norm(self):  # noqa: ANN201 - returns self for chaining
        """Weight-normalise every convolution (for training; exact on the current weights)."""
        return apply_weight_norm(self)

    def remove_weight_norm(self):  # noqa: ANN201
        """Fold weight norm back into plain weights."""
        return remove_weight_norm(self)
