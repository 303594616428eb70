"""Precomputed style vectors: one 512-d float vector in a ``.npy`` or ``.safetensors`` file.

These always work, with no MuQ-MuLan install: compute a style once (or take it from a song's sidecar)
and reuse it. The null style for classifier-free guidance is the zero vector, so an all-zero file is
accepted but logged.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from dr2studio.atomic import atomic_path

__all__ = ["STYLE_DIM", "StyleError", "check_style_embedding", "load_style_embedding", "save_style_embedding"]

log = logging.getLogger(__name__)

#: Width of a style embedding (MuQ-MuLan's joint space).
STYLE_DIM = 512
_KEYS = ("style", "style_embedding", "embedding", "style_emb")


class StyleError(ValueError):
    """A style prompt or vector cannot be used (missing, wrong shape, not finite, encoder unavailable)."""


def check_style_embedding(vec: torch.Tensor | np.ndarray, source: str = "style embedding") -> torch.Tensor:
    """Validate and return a float32 CPU tensor ``[512]`` (``[1, 512]`` is squeezed)."""
    t = torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1 or t.shape[0] != STYLE_DIM:
        raise StyleError(f"{source}: expected a vector of {STYLE_DIM} values ([512] or [1, 512]), got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise StyleError(f"{source}: expected floating-point values, got {t.dtype}")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise StyleError(f"{source}: holds NaN or infinite values")
    if float(t.abs().max()) == 0.0:
        log.warning("%s is all zeros: that is the null (unconditional) style", source)
    return t


def load_style_embedding(path: str | os.PathLike) -> torch.Tensor:
    """Read a ``.npy`` / ``.safetensors`` style vector -> float32 ``[512]``.

    A safetensors file must hold one tensor, or name it ``style`` / ``style_embedding`` / ``embedding``.
    """
    path = Path(path)
    if not path.is_file():
        raise StyleError(f"style embedding file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            key = next((k for k in _KEYS if k in tensors), None)
            if key is None:
                if len(tensors) != 1:
                    raise StyleError(
                        f"{path}: holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:6])}); "
                        f"name the style vector one of {', '.join(_KEYS)}"
                    )
                key = next(iter(tensors))
            data = tensors[key]
        else:
            raise StyleError(f"{path}: a precomputed style must be a .npy or .safetensors file")
    except StyleError:
        raise
    except Exception as exc:  # numpy/safetensors raise several types for corrupt files
        raise StyleError(f"cannot read style embedding {path}: {exc}") from exc
    return check_style_embedding(data, str(path))


def save_style_embedding(vec: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write a style vector atomically as ``.npy`` or ``.safetensors`` (key ``style``)."""
    path = Path(path)
    t = check_style_embedding(vec, str(path))
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise StyleError(f"{path}: save a style vector as .npy or .safetensors")
    if not path.parent.is_dir():
        raise StyleError(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, t.numpy())
        else:
            from safetensors.torch import save_file

            save_file({"style": t}, str(tmp))
    return path
