"""Where a model directory comes from: a local folder, or a hub repository id downloaded to the hub cache.

Below ``models``, ``vae`` and ``checkpoints`` (anything that takes a model directory may resolve
one); ``huggingface_hub`` comes from the ``hub`` extra and is imported only when a download is needed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from dr2studio.weights import CheckpointError

__all__ = ["DEFAULT_HUB_REPO", "RELEASED_FILES", "resolve_model_dir"]

log = logging.getLogger(__name__)

DEFAULT_HUB_REPO = "ASLP-lab/DiffRhythm2"
RELEASED_FILES = ("model.json", "model.safetensors", "decoder.json", "decoder.bin")


def resolve_model_dir(model: str | os.PathLike, *, files: tuple[str, ...] = RELEASED_FILES) -> Path:
    """A local model directory, or a hub repository id (``owner/name``) downloaded to the hub cache.

    Local paths win: an existing directory is returned as is. Anything else that looks like a
    repository id is fetched with ``huggingface_hub.snapshot_download`` (honouring ``HF_HOME``,
    ``HF_HUB_OFFLINE`` and the local cache), restricted to the model files.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"model path {path} is a file; give the directory that holds model.json")
    text = str(model)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"model directory not found: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            f"{text!r} is not a local directory, and downloading it needs huggingface_hub: pip install 'dr2studio[hub]'"
        ) from exc
    patterns = list(files) + ["vocab.json", "*.json", "*.safetensors", "g2p/*"]
    try:
        local = snapshot_download(repo_id=text, allow_patterns=patterns)
    except Exception as exc:  # network errors, missing repo, offline without cache
        raise CheckpointError(f"cannot fetch model {text!r} from the hub: {exc}") from exc
    log.info("model %s resolved to %s", text, local)
    return Path(local)
