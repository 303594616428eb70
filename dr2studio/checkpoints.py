"""Model directories: the DiT, decoder and encoder loaders side by side, saving in the released layout,
and hub downloads (:mod:`dr2studio.hub`).

One layout serves released and own checkpoints (see README "Model directory"): ``model.json`` +
``model.safetensors`` (keys prefixed ``transformer.``), ``decoder.json`` + ``decoder.bin`` or
``decoder.safetensors``, ``vocab.json``, optional ``encoder.*``, ``style_encoder.*`` and
``dr2studio.json``. Every loader reads, checks and places its weights through :mod:`dr2studio.weights`
(one strict loader, one device/dtype policy); the decoder and encoder loaders are defined beside
their networks (so ``models`` needs nothing from here) and gathered here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from dr2studio.hub import DEFAULT_HUB_REPO, resolve_model_dir
from dr2studio.models.bigvgan import load_decoder, save_decoder
from dr2studio.models.dit import DiT, DiTConfig
from dr2studio.models.encoder import has_encoder, load_encoder, save_encoder
from dr2studio.weights import (
    CheckpointError,
    default_device,
    default_dtype,
    device_dtype,
    load_strict,
    load_weights,
    save_safetensors,
)

__all__ = [
    "CheckpointError",
    "DEFAULT_HUB_REPO",
    "default_device",
    "default_dtype",
    "device_dtype",
    "resolve_model_dir",
    "load_dit",
    "save_dit",
    "load_decoder",
    "save_decoder",
    "load_encoder",
    "save_encoder",
    "has_encoder",
    "load_state_dict_strict",
]

log = logging.getLogger(__name__)

DIT_PREFIX = "transformer."

load_state_dict_strict = load_strict  # the old name of the one strict loader


def load_dit(
    model_dir: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> DiT:
    """Build the DiT from ``model.json`` and load ``model.safetensors`` strictly, in eval mode."""
    model_dir = Path(model_dir)
    cfg_path, weights_path = model_dir / "model.json", model_dir / "model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"missing file {p} (a model directory needs model.json and model.safetensors)")
    config = DiTConfig.load(cfg_path)
    with torch.device("meta"):
        model = DiT(config)
    model = model.to_empty(device="cpu")
    return load_weights(model, weights_path, role="dit", device=device, dtype=dtype, prefix=DIT_PREFIX, frozen=False)


def save_dit(model: DiT, model_dir: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
    """Write ``model.json`` + ``model.safetensors`` in the released layout (atomic per file)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {
        DIT_PREFIX + k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    save_safetensors(state, model_dir / "model.safetensors", metadata={"format": "pt", "producer": "dr2studio"})
    model.config.save(model_dir / "model.json")
