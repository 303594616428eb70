"""Model directories: loading and saving the DiT in the released layout, and hub downloads.

One layout serves released and own checkpoints (see README "Model directory"): ``model.json`` +
``model.safetensors`` (keys prefixed ``transformer.``), ``decoder.json`` + ``decoder.bin`` or
``decoder.safetensors``, ``vocab.json``, optional ``encoder.*``, ``style_encoder.*`` and
``dr2studio.json``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dr2studio.config import ConfigError
from dr2studio.models.dit import DiT, DiTConfig

__all__ = [
    "CheckpointError",
    "DEFAULT_HUB_REPO",
    "default_device",
    "default_dtype",
    "resolve_model_dir",
    "load_dit",
    "save_dit",
    "load_state_dict_strict",
]

log = logging.getLogger(__name__)

DEFAULT_HUB_REPO = "ASLP-lab/DiffRhythm2"
DIT_PREFIX = "transformer."
RELEASED_FILES = ("model.json", "model.safetensors", "decoder.json", "decoder.bin")


class CheckpointError(ConfigError):
    """A model directory is missing a file, or a weight file does not match its config."""


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """float32 on CPU; bfloat16 on GPUs that support it, else float16."""
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes; errors name file and key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unknown:
        raise CheckpointError(f"{source}: unknown key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(tensor.shape)}, the config expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def _read_safetensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k[len(prefix):] if k.startswith(prefix) else k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path}: {exc}") from exc


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
    state = _read_safetensors(weights_path)
    if any(not k.startswith(DIT_PREFIX) for k in state):
        bad = next(k for k in state if not k.startswith(DIT_PREFIX))
        raise CheckpointError(f"{weights_path}: unknown key {bad!r} (every key must start with {DIT_PREFIX!r})")
    state = {k[len(DIT_PREFIX):]: v.float() for k, v in state.items()}
    with torch.device("meta"):
        model = DiT(config)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, state, weights_path)
    dev = default_device(device)
    return model.to(device=dev, dtype=default_dtype(dev, dtype)).eval()


def save_dit(model: DiT, model_dir: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
    """Write ``model.json`` + ``model.safetensors`` in the released layout (atomic per file)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {
        DIT_PREFIX + k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    target = model_dir / "model.safetensors"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "dr2studio"})
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    model.config.save(model_dir / "model.json")
