"""dr2studio: DiffRhythm 2 song generation for producers and ML teams.

The public API is re-exported lazily so that ``import dr2studio`` stays cheap (no torch model
construction, no optional dependency imports) until a name is used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # model and sampler
    "DiT": "dr2studio.models.dit",
    "DiTConfig": "dr2studio.models.dit",
    "load_dit": "dr2studio.checkpoints",
    "save_dit": "dr2studio.checkpoints",
    "sample_latents": "dr2studio.flow.sampler",
    # music VAE
    "load_decoder": "dr2studio.models.bigvgan",
    "encode_audio": "dr2studio.vae.encode",
    # studio
    "Studio": "dr2studio.studio",
    "Song": "dr2studio.studio",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dr2studio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
