"""The demo model shipped inside the package: the offline default when no model is given.

It was trained by dr2studio's own pipelines (``training/vae.py``, ``training/prepare_data.py``,
``training/block_fm.py``) on procedurally generated songs; ``training/recipes/demo_model.sh``
reproduces it and ``docs/demo_model.md`` states its sizes and measured quality. It is small (8 kHz
audio, a 40 Hz x 32 latent, a ~1.6M-parameter DiT), so it makes simple synthetic-sounding songs,
but it needs no network, no GPU and no released weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DEMO_DIR", "DEMO_FILES", "DemoModelMissing", "demo_model_dir", "demo_model_info"]

#: Where the package keeps the demo model directory.
DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
#: Files a complete demo model directory holds.
DEMO_FILES = (
    "model.json", "model.safetensors", "decoder.json", "decoder.safetensors", "encoder.json",
    "encoder.safetensors", "vocab.json", "style_encoder.json", "style_encoder.safetensors", "dr2studio.json",
)


class DemoModelMissing(FileNotFoundError):
    """The package was installed without (some of) the demo model's files."""


def demo_model_dir() -> Path:
    """The shipped demo model directory (loadable with ``Studio.load``).

    Raises :class:`DemoModelMissing`, naming the missing files, when the installation lacks them
    (for example a wheel built without package data).
    """
    missing = [name for name in DEMO_FILES if not (DEMO_DIR / name).is_file()]
    if missing:
        raise DemoModelMissing(
            f"the shipped demo model is incomplete: {DEMO_DIR} lacks {', '.join(missing)}; "
            "reinstall dr2studio with its package data or pass a model directory explicitly"
        )
    return DEMO_DIR


def demo_model_info() -> dict[str, Any]:
    """How the demo model was trained (its ``dr2studio.json``: stages, steps, data, timings)."""
    return json.loads((demo_model_dir() / "dr2studio.json").read_text(encoding="utf-8"))
