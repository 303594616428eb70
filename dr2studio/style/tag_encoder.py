"""A MuQ-free style encoder for dr2studio's own small models: style tags -> a 512-d unit vector.

Text is parsed into weighted tags (:mod:`dr2studio.style.tags`); the tag embeddings are averaged with
their weights (``EmbeddingBag``), projected to 512 and L2-normalised like MuQ-MuLan's output (then scaled by ``scale``, 1 unless the
config says otherwise). The initial
weights come from a seeded generator, so an untrained encoder is already a fixed, deterministic map (the
demo model can be trained against it, or train it jointly). Saved beside a model as
``style_encoder.json`` + ``style_encoder.safetensors``.

Audio prompts are read through the same tags: tempo, key and mode measured from the audio.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dr2studio.atomic import atomic_path
from dr2studio.config import ConfigError, JsonConfig
from dr2studio.style.embedding import STYLE_DIM, StyleError
from dr2studio.style.tags import StyleTags, default_tag_vocab, parse_style_tags

__all__ = ["TagStyleConfig", "TagStyleEncoder", "CONFIG_NAME", "WEIGHTS_NAME"]

log = logging.getLogger(__name__)

CONFIG_NAME = "style_encoder.json"
WEIGHTS_NAME = "style_encoder.safetensors"


@dataclasses.dataclass
class TagStyleConfig(JsonConfig):
    """Tag vocabulary and sizes of a :class:`TagStyleEncoder` (stored as ``style_encoder.json``)."""

    kind: str = "tags"
    dim: int = STYLE_DIM
    hidden: int = 256
    seed: int = 0
    #: Length of the output vectors. 1 is MuQ-MuLan's convention. The DiT adds the style to every
    #: token's input, where lyric embeddings have unit RMS per component; a unit-length style has
    #: 1/sqrt(512) and a small DiT trained briefly learns to ignore it. sqrt(512) matches the two.
    scale: float = 1.0
    tags: list[str] = dataclasses.field(default_factory=default_tag_vocab)

    def validate(self) -> None:
        if self.kind != "tags":
            raise ConfigError(f"TagStyleConfig: kind must be 'tags', got {self.kind!r}")
        if self.dim != STYLE_DIM:
            raise ConfigError(f"TagStyleConfig: dim must be {STYLE_DIM} (the DiT's style width), got {self.dim}")
        if self.hidden < 1:
            raise ConfigError(f"TagStyleConfig: hidden must be >= 1, got {self.hidden}")
        if not self.scale > 0:
            raise ConfigError(f"TagStyleConfig: scale must be > 0, got {self.scale}")
        if not self.tags or self.tags[0] != "<none>" or len(set(self.tags)) != len(self.tags):
            raise ConfigError("TagStyleConfig: tags must be unique and start with '<none>'")


class TagStyleEncoder(nn.Module):
    """Weighted tag bag -> ``[B, 512]`` vectors of length ``config.scale`` (unit by default)."""

    def __init__(self, config: TagStyleConfig | None = None) -> None:
        super().__init__()
        self.config = config or TagStyleConfig()
        self.config.validate()
        self.index = {t: i for i, t in enumerate(self.config.tags)}
        self.tags = nn.EmbeddingBag(len(self.config.tags), self.config.hidden, mode="sum")
        self.proj = nn.Linear(self.config.hidden, self.config.dim)
        g = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            self.tags.weight.normal_(0.0, 1.0, generator=g)
            self.proj.weight.normal_(0.0, self.config.hidden ** -0.5, generator=g)
            self.proj.bias.zero_()

    name = "tags"

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``ids [K]`` tag indices of all texts, ``offsets [B]`` start of each text in ``ids``, ``weights [K]``
        (summing to 1 within each text) -> ``[B, 512]`` vectors of length ``config.scale``."""
        return self.config.scale * F.normalize(self.proj(self.tags(ids, offsets, per_sample_weights=weights)), dim=-1)

    def _bag(self, parsed: StyleTags) -> tuple[list[int], list[float]]:
        ids, weights = [], []
        for tag, w in zip(parsed.tags, parsed.weights):
            i = self.index.get(tag)
            if i is None:
                log.debug("style tag %s is not in this encoder's vocabulary; ignored", tag)
            elif w > 0:
                ids.append(i)
                weights.append(w)
        if not ids:
            return [0], [1.0]
        total = sum(weights)
        return ids, [w / total for w in weights]

    def encode_tags(self, parsed: Sequence[StyleTags]) -> torch.Tensor:
        """Parsed tags of B texts -> ``[B, 512]`` on the module's device."""
        device = self.proj.weight.device
        ids, weights, offsets = [], [], []
        for p in parsed:
            i, w = self._bag(p)
            offsets.append(len(ids))
            ids += i
            weights += w
        return self(
            torch.tensor(ids, dtype=torch.long, device=device),
            torch.tensor(offsets, dtype=torch.long, device=device),
            torch.tensor(weights, dtype=self.proj.weight.dtype, device=device),
        )

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Style texts -> ``[B, 512]``."""
        return self.encode_tags([parse_style_tags(t) for t in texts])

    @torch.no_grad()
    def embed_text(self, text: str) -> torch.Tensor:
        """One style text -> float32 CPU ``[512]``."""
        return self.embed_texts([text])[0].float().cpu()

    @torch.no_grad()
    def embed_audio(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None, *, seed: int = 0) -> torch.Tensor:
        """A reference recording -> ``[512]`` through its measured tempo, key and mode.

        ``seed`` picks the 10 s excerpt that is analysed, as for MuQ-MuLan.
        """
        from dr2studio.audio.features import estimate_key, estimate_tempo
        from dr2studio.style.muq import prepare_style_audio

        wav, sr = prepare_style_audio(audio, sample_rate, seed=seed, target_rate=22050)
        x = wav[0].numpy().astype(np.float32)
        bpm = estimate_tempo(x, sr)
        tonic, mode, strength = estimate_key(x, sr)
        text = ", ".join(([f"{bpm:.0f} bpm"] if bpm > 0 else []) + ([f"{tonic} {mode}"] if strength > 0.3 else []))
        log.info("audio style prompt read as %r", text or "<no clear tempo or key>")
        return self.embed_text(text)

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``style_encoder.json`` and ``style_encoder.safetensors`` into ``model_dir`` (atomically)."""
        from safetensors.torch import save_file

        root = Path(model_dir)
        if not root.is_dir():
            raise StyleError(f"cannot save the style encoder: folder {root} does not exist")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(root / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "kind": "dr2studio.style.tags"})
        self.config.save(root / CONFIG_NAME)
        return root

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | torch.device | None = None) -> "TagStyleEncoder":
        """Read an encoder saved by :meth:`save` (weights are required; strict key match)."""
        from safetensors.torch import load_file

        root = Path(model_dir)
        config = TagStyleConfig.load(root / CONFIG_NAME)
        weights = root / WEIGHTS_NAME
        if not weights.is_file():
            raise StyleError(f"{root / CONFIG_NAME} has no weights beside it: {weights} is missing")
        model = cls(config)
        try:
            state = load_file(str(weights))
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError) as exc:
            raise StyleError(f"cannot load style encoder weights {weights}: {exc}") from exc
        return model.to(device or "cpu").eval()
