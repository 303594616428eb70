"""Export trained weights into the model-directory layout that ``Studio.load`` reads.

Stages write only what they trained (``model.*`` for the DiT stages, ``decoder.*``/``encoder.*``
for the VAE stage) and copy the rest (decoder, vocab, encoders) from ``assets_dir``, so the
exported folder is complete. ``dr2studio.json`` records what made it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from dr2studio.atomic import atomic_path, atomic_write_text
from dr2studio.models.dit import DiT, DiTConfig
from training.common import make_group_readable

__all__ = ["ASSET_FILES", "copy_assets", "read_training_info", "write_training_info", "export_dit"]

log = logging.getLogger("dr2studio.training")

# files a model directory may hold besides the DiT (see README "Model directory")
ASSET_FILES = (
    "decoder.json", "decoder.bin", "decoder.safetensors", "vocab.json", "encoder.json", "encoder.safetensors",
    "style_encoder.json", "style_encoder.safetensors", "dr2studio.json",
)


def copy_assets(src: str | os.PathLike | None, dst: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy the asset files present in ``src`` into ``dst`` (atomic per file); returns their names."""
    if not src:
        return []
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"assets_dir {src} is not a folder")
    copied = []
    for name in ASSET_FILES:
        if name in skip or not (src / name).is_file():
            continue
        with atomic_path(dst / name) as tmp:
            shutil.copyfile(src / name, tmp)
        copied.append(name)
    return copied


def read_training_info(model_dir: str | os.PathLike | None, stage: str) -> dict[str, Any] | None:
    """The ``stage`` record in ``model_dir/dr2studio.json``; None when there is none (e.g. released weights)."""
    if not model_dir:
        return None
    path = Path(model_dir) / "dr2studio.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("training", {}).get(stage)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def write_training_info(dst: Path, stage: str, info: dict[str, Any]) -> None:
    """Merge ``{stage: info}`` into ``dst/dr2studio.json`` (keeping earlier stages' entries)."""
    path = dst / "dr2studio.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("replacing unreadable %s", path)
    data.setdefault("training", {})[stage] = info
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def export_dit(state: dict[str, torch.Tensor], config: DiTConfig, dst: str | os.PathLike, *,
               assets_dir: str | None = None, stage: str = "block_fm", info: dict[str, Any] | None = None) -> Path:
    """Build a DiT from ``config``, load ``state`` strictly and write a complete model directory."""
    from dr2studio.checkpoints import save_dit

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model = DiT(config)
    model.load_state_dict(state, strict=True)
    copied = copy_assets(assets_dir, dst, skip=("model.json", "model.safetensors"))
    save_dit(model, dst)
    write_training_info(dst, stage, {**(info or {}), "assets_from": str(assets_dir or ""), "assets": copied})
    # safetensors leaves 0600 files; a model folder is for the whole group
    make_group_readable(*(dst / n for n in ("model.json", "model.safetensors", "dr2studio.json", *copied)))
    log.info("exported %s model to %s", stage, dst)
    return dst
