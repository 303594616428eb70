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
    "save_decoder": "dr2studio.models.bigvgan",
    "load_encoder": "dr2studio.models.encoder",
    "save_encoder": "dr2studio.models.encoder",
    "encode_audio": "dr2studio.vae.encode",
    # lyrics and style
    "parse_lyrics": "dr2studio.lyrics",
    "encode_lyrics": "dr2studio.lyrics",
    "load_vocab": "dr2studio.lyrics",
    "load_style_encoder": "dr2studio.style",
    "style_embedding": "dr2studio.style",
    # engine
    "LocalEngine": "dr2studio.engine",
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
