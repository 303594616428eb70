"""MuQ-MuLan style prompts (the released model's style encoder), through the optional ``muq`` package.

Text prompt -> ``mulan(texts=[text])``; audio prompt -> 24 kHz, a 10 s excerpt, mono ->
``mulan(wavs=...)``. Both give one L2-normalised 512-d vector. Unlike the reference, which crops the
excerpt with an unseeded ``random.randint``, the excerpt start comes from a seeded generator, so the same
prompt and seed always give the same style.

Weights come from a local directory or the Hugging Face cache (``snapshot_download``, honouring
``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` as set when the call is made).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

from dr2studio.style.embedding import StyleError, check_style_embedding

__all__ = [
    "DEFAULT_MUQ",
    "MUQ_SAMPLE_RATE",
    "MuQStyleEncoder",
    "MuQUnavailableError",
    "prepare_style_audio",
    "resolve_muq_weights",
]

log = logging.getLogger(__name__)

DEFAULT_MUQ = "OpenMuQ/MuQ-MuLan-large"
MUQ_SAMPLE_RATE = 24_000
EXCERPT_SECONDS = 10.0
_INSTALL = "pip install 'dr2studio[muq]'"
_TRUE = ("1", "true", "yes", "on")


class MuQUnavailableError(StyleError):
    """The ``muq`` package or the MuQ-MuLan weights are not available."""


def prepare_style_audio(
    audio: str | os.PathLike | torch.Tensor,
    sample_rate: int | None = None,
    *,
    seed: int = 0,
    target_rate: int = MUQ_SAMPLE_RATE,
    seconds: float = EXCERPT_SECONDS,
) -> tuple[torch.Tensor, int]:
    """Audio file or ``[C, N]`` / ``[N]`` tensor -> (mono ``[1, n]`` excerpt at ``target_rate``, rate).

    Resample, then (if longer than ``seconds``) crop an excerpt whose start is drawn by a generator seeded
    with ``seed``, then average the channels: the reference's order of operations.
    """
    from dr2studio.audio.io import AudioError, read_audio, resample

    try:
        if isinstance(audio, (str, os.PathLike)):
            wav, sr = read_audio(audio)
        else:
            if sample_rate is None:
                raise StyleError("an audio tensor needs its sample_rate")
            wav, sr = torch.as_tensor(audio, dtype=torch.float32), int(sample_rate)
            if wav.dim() == 1:
                wav = wav.unsqueeze(0)
            if wav.dim() != 2 or wav.shape[-1] == 0:
                raise StyleError(f"style audio must be [channels, samples], got shape {tuple(wav.shape)}")
        wav = resample(wav.float(), sr, target_rate)
    except AudioError as exc:
        raise StyleError(f"cannot use style audio: {exc}") from exc
    if not torch.isfinite(wav).all():
        raise StyleError("style audio holds NaN or infinite samples")
    length = int(round(seconds * target_rate))
    if wav.shape[-1] > length:
        g = torch.Generator().manual_seed(int(seed))
        start = int(torch.randint(0, wav.shape[-1] - length + 1, (1,), generator=g))
        wav = wav[:, start:start + length]
    return wav.mean(dim=0, keepdim=True), target_rate


def _hub_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def resolve_muq_weights(source: str | os.PathLike = DEFAULT_MUQ, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local MuQ-MuLan directory, or the hub snapshot of repo ``source`` (downloaded unless offline)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MuQUnavailableError(f"{path} is not a MuQ-MuLan checkpoint folder (no config.json)")
        return path
    text = str(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise MuQUnavailableError(f"MuQ-MuLan weights folder not found: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise MuQUnavailableError(f"downloading MuQ-MuLan needs huggingface_hub: {_INSTALL}") from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    cache = str(cache_dir) if cache_dir is not None else _hub_cache_dir()
    try:
        local = snapshot_download(repo_id=text, cache_dir=cache, local_files_only=offline)
    except Exception as exc:  # offline without cache, network failure, unknown repo
        where = "the local hub cache" if offline else "the hub"
        raise MuQUnavailableError(
            f"MuQ-MuLan weights {text!r} are not available from {where} ({type(exc).__name__}: {exc}); "
            "download them once with network access, or give a local folder"
        ) from exc
    return Path(local)


class MuQStyleEncoder:
    """Style text / reference audio -> ``[512]`` with MuQ-MuLan; the model loads on first use.

    ``device=None`` picks CUDA when available. The model stays in float32 (as in the reference).
    """

    name = "muq-mulan"

    def __init__(
        self,
        source: str | os.PathLike = DEFAULT_MUQ,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.source = source
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_dir = cache_dir
        self._mulan: Any = None
        self._lock = threading.Lock()

    def _model(self) -> Any:
        with self._lock:
            if self._mulan is None:
                try:
                    from muq import MuQMuLan
                except ImportError as exc:
                    raise MuQUnavailableError(
                        "text and audio style prompts need MuQ-MuLan, which is not installed: "
                        f"{_INSTALL} (or give a precomputed .npy/.safetensors style vector)"
                    ) from exc
                weights = resolve_muq_weights(self.source, cache_dir=self.cache_dir)
                log.info("loading MuQ-MuLan from %s", weights)
                try:
                    mulan = MuQMuLan.from_pretrained(str(weights))
                except Exception as exc:
                    raise MuQUnavailableError(f"cannot load MuQ-MuLan from {weights}: {exc}") from exc
                self._mulan = mulan.to(self.device).eval()
            return self._mulan

    @staticmethod
    def _finish(out: Any, what: str) -> torch.Tensor:
        return check_style_embedding(torch.as_tensor(out).detach().clone(), f"MuQ-MuLan {what} embedding")

    @torch.no_grad()
    def embed_text(self, text: str) -> torch.Tensor:
        """A style description (English or Chinese) -> float32 CPU ``[512]``."""
        if not isinstance(text, str) or not text.strip():
            raise StyleError("a text style prompt must be a non-empty string")
        return self._finish(self._model()(texts=[text]), "text")

    @torch.no_grad()
    def embed_audio(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None, *, seed: int = 0) -> torch.Tensor:
        """A reference recording (file or ``[C, N]`` tensor) -> float32 CPU ``[512]`` from a seeded 10 s excerpt."""
        wav, _ = prepare_style_audio(audio, sample_rate, seed=seed)
        model = self._model()
        return self._finish(model(wavs=wav.to(self.device)), "audio")
