"""Old home of the VAE weight I/O, kept importable. Reading, strict loading and saving live in
:mod:`dr2studio.weights` (one loader for every network); the VAE base class and weight norm on/off
in :mod:`dr2studio.models.vae_module`."""
from __future__ import annotations

from dr2studio.models.vae_module import VAEModule, apply_weight_norm, remove_weight_norm
from dr2studio.weights import CheckpointError, fold_weight_norm, load_strict, read_state_dict, save_safetensors

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
