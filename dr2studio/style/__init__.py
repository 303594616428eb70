"""Style conditioning: a 512-d vector from a precomputed file, MuQ-MuLan (text or audio), or style tags.

:func:`load_style_encoder` picks the encoder a model was trained with (the tag encoder when the model
folder has ``style_encoder.json``, else MuQ-MuLan, loaded on first use); :func:`style_embedding` turns any
prompt (a vector, a ``.npy``/``.safetensors`` file, an audio file, or text) into ``[512]``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from dr2studio.style.embedding import (
    STYLE_DIM,
    StyleError,
    check_style_embedding,
    load_style_embedding,
    save_style_embedding,
)
from dr2studio.style.muq import DEFAULT_MUQ, MuQStyleEncoder, MuQUnavailableError, prepare_style_audio, resolve_muq_weights
from dr2studio.style.tag_encoder import CONFIG_NAME, TagStyleConfig, TagStyleEncoder
from dr2studio.style.tags import StyleTags, parse_style_tags

__all__ = [
    "DEFAULT_MUQ",
    "STYLE_DIM",
    "MuQStyleEncoder",
    "MuQUnavailableError",
    "StyleEncoder",
    "StyleError",
    "StyleTags",
    "TagStyleConfig",
    "TagStyleEncoder",
    "check_style_embedding",
    "load_style_embedding",
    "load_style_encoder",
    "parse_style_tags",
    "prepare_style_audio",
    "resolve_muq_weights",
    "save_style_embedding",
    "style_embedding",
]

_VECTOR_SUFFIXES = (".npy", ".safetensors")
_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif", ".m4a", ".opus")


@runtime_checkable
class StyleEncoder(Protocol):
    """What generation needs from a style encoder."""

    name: str

    def embed_text(self, text: str) -> torch.Tensor: ...

    def embed_audio(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None, *, seed: int = 0) -> torch.Tensor: ...


def load_style_encoder(
    model_dir: str | os.PathLike | None = None,
    *,
    muq: str | os.PathLike = DEFAULT_MUQ,
    device: str | torch.device | None = None,
) -> StyleEncoder:
    """The style encoder of a model: its own tag encoder if ``model_dir`` holds ``style_encoder.json``,
    else the MuQ-MuLan adapter (weights from ``muq``: a folder or hub id, loaded on first use)."""
    if model_dir is not None and (Path(model_dir) / CONFIG_NAME).is_file():
        return TagStyleEncoder.load(model_dir, device=device)
    return MuQStyleEncoder(muq, device=device)


def style_embedding(
    prompt: str | os.PathLike | torch.Tensor | np.ndarray,
    encoder: StyleEncoder | None = None,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Any style prompt -> float32 ``[512]``.

    A tensor/array is validated; an existing ``.npy``/``.safetensors`` file is read; an existing audio file
    goes through ``encoder.embed_audio`` (10 s excerpt chosen with ``seed``); any other string is a text
    prompt for ``encoder.embed_text`` (as in the reference: a prompt that is not a file is text).
    """
    if isinstance(prompt, (torch.Tensor, np.ndarray)):
        return check_style_embedding(prompt)
    text = str(prompt)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    looks_like_path = " " not in text.strip() and suffix in _VECTOR_SUFFIXES + _AUDIO_SUFFIXES
    if suffix in _VECTOR_SUFFIXES and looks_like_path:
        return load_style_embedding(path)
    try:
        is_audio = path.is_file()
    except (OSError, ValueError):  # a long text prompt is not a valid file name
        is_audio = False
    if looks_like_path and not is_audio:
        raise StyleError(f"style audio file not found: {path}")
    if encoder is None:
        raise StyleError("a text or audio style prompt needs a style encoder (see load_style_encoder)")
    vec = encoder.embed_audio(path, seed=seed) if is_audio else encoder.embed_text(text)
    return check_style_embedding(vec, f"{encoder.name} style embedding")
