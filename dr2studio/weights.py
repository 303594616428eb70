"""Weight files in and out, for every network: one reader, one strict loader, one device/dtype policy.

Below the networks (:mod:`dr2studio.models` imports this module, never the other way round), so that
``load_dit``, ``load_decoder`` and ``load_encoder`` all go through the same steps: read the file
(safetensors, or a torch pickle with ``weights_only=True`` -- nothing else is unpickled), fold weight
norm, match keys and shapes exactly (errors name the file and the key), then place the module on
the device and dtype :func:`device_dtype` picks for its role.

Weight norm appears in checkpoints in two spellings: the legacy hook (``<name>.weight_g`` /
``<name>.weight_v``, used by the released ``decoder.bin``) and the parametrization API
(``<name>.parametrizations.weight.original0`` / ``original1``). Both are folded into a plain
``<name>.weight = g * v / ||v||`` (norm over every dim except 0, as ``weight_norm(dim=0)`` does), so
inference modules carry no weight-norm machinery.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import nn

from dr2studio.atomic import atomic_path
from dr2studio.config import ConfigError

__all__ = [
    "CheckpointError",
    "Role",
    "device_dtype",
    "default_device",
    "default_dtype",
    "read_state_dict",
    "fold_weight_norm",
    "load_strict",
    "load_weights",
    "save_safetensors",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

Role = Literal["dit", "decoder", "encoder"]
"""What a network is used for; it sets the dtype the network runs in on a GPU."""

_LEGACY = (".weight_g", ".weight_v")
_PARAM = (".parametrizations.weight.original0", ".parametrizations.weight.original1")


class CheckpointError(ConfigError):
    """A model directory is missing a file, or a weight file does not match its config."""


# -- device and dtype ---------------------------------------------------------------------------------
def default_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_dtype(role: Role) -> torch.dtype:
    """GPU default per role: the DiT in bfloat16 where the card has it (float16 otherwise); the
    decoder in float16, as the reference runs it; the encoder in float32 (cheap, and its output seeds
    decoder inversion)."""
    if role == "dit":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if role == "decoder":
        return torch.float16
    if role == "encoder":
        return torch.float32
    raise ValueError(f"unknown network role {role!r} (expected 'dit', 'decoder' or 'encoder')")


def device_dtype(
    role: Role,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a network of ``role`` runs in: the given ones, else CUDA when present, and
    float32 everywhere but on CUDA (see :func:`_cuda_dtype`)."""
    dev = default_device(device)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (expected e.g. 'float32', 'bfloat16', 'float16')")
        dtype = resolved
    if dtype is None:
        dtype = _cuda_dtype(role) if dev.type == "cuda" else torch.float32
    elif dev.type == "cpu" and dtype == torch.float16:
        log.warning("float16 on CPU is slow and loses precision; consider float32 or bfloat16")
    return dev, dtype


def default_dtype(device: torch.device, dtype: torch.dtype | str | None = None, role: Role = "dit") -> torch.dtype:
    """The dtype half of :func:`device_dtype` (the DiT's policy unless ``role`` says otherwise)."""
    return device_dtype(role, device, dtype)[1]


# -- reading ----------------------------------------------------------------------------------------------
def read_state_dict(
    path: str | os.PathLike,
    *,
    pickle_key: str | None = None,
    prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors (on CPU) from ``.safetensors`` or a torch pickle read with ``weights_only=True``.

    ``pickle_key`` selects a sub-dict such as the released ``{"generator": ...}``; ``prefix``, when
    given, must start every key and is removed from it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = dict(load_file(str(path), device="cpu"))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
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
    if prefix is None:
        return dict(data)
    stray = next((k for k in data if not k.startswith(prefix)), None)
    if stray is not None:
        raise CheckpointError(f"{path}: unknown key {stray!r} (every key must start with {prefix!r})")
    return {k[len(prefix):]: v for k, v in data.items()}


# -- weight norm --------------------------------------------------------------------------------------------
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


# -- strict loading -------------------------------------------------------------------------------------------
def _first(kind: str, keys: list[str], limit: int = 5) -> str:
    more = keys[1:limit]
    tail = f" (and {len(keys) - 1} more: {', '.join(more)}{' ...' if len(keys) > limit else ''})" if more else ""
    return f"{kind} {keys[0]!r}{tail}"


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Fold weight norm, then load ``state`` into ``module`` requiring the exact key set and shapes.

    The one strict loader: a missing, unknown or misshapen key raises :class:`CheckpointError`
    naming ``source`` (the weight file) and the key.
    """
    state = fold_weight_norm(state, str(source))
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        parts = ([_first("missing key", missing)] if missing else []) + ([_first("unknown key", unknown)] if unknown else [])
        raise CheckpointError(f"{source}: weights do not match the config: {'; '.join(parts)}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the config expects {tuple(ref.shape)}"
            )
    module.load_state_dict(state, strict=True)


def load_weights(
    module: M,
    path: str | os.PathLike,
    *,
    role: Role,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    pickle_key: str | None = None,
    prefix: str | None = None,
    frozen: bool = True,
) -> M:
    """Read ``path`` into ``module`` strictly, place it per :func:`device_dtype` and put it in eval mode.

    ``frozen`` also turns off gradients (inference copies); the DiT keeps them, so that a loaded
    checkpoint can be fine-tuned.
    """
    path = Path(path)
    load_strict(module, read_state_dict(path, pickle_key=pickle_key, prefix=prefix), path)
    dev, dt = device_dtype(role, device, dtype)
    module = module.to(device=dev, dtype=dt).eval()
    if frozen:
        module.requires_grad_(False)
    log.info("loaded %s from %s (%s, %s)", role, path, dev, dt)
    return module


# -- writing ---------------------------------------------------------------------------------------------------
def save_safetensors(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors to ``path`` atomically (readers never see half a file), on CPU and contiguous.

    Tensors that view part of a larger storage, or share one, are copied (safetensors refuses shared memory).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {"format": "pt"}))
