"""Training shards: pre-encoded songs stored as safetensors files plus one ``index.json``.

Why this format: the trainers need random access by example without loading whole shards (a
shard can hold hours of latents), and safetensors gives memory-mapped slices with no pickle.

One shard file holds N examples, concatenated along time, with offset tables:

- ``latents`` [sum T, C] float32: 5 Hz VAE latents; ``latent_offsets`` [N+1] int64
- ``tokens`` [sum L] int64: lyric token ids (0 is never produced; it is the padding/CFG filler);
  ``token_offsets`` [N+1]
- ``style`` [N, S] float32: one style embedding per example
- ``tempo`` [N] float32: the tempo the style text states, in bpm (NaN where it states none; shards
  written before this key read as no tempo)
- ``ssl.<name>`` [sum T, D] float32: REPA targets resampled to the latent frame rate (same offsets
  as ``latents``), one key per extractor
- metadata (safetensors string map): ``format``, ``version``, ``ids`` and ``languages`` (JSON lists)

``index.json`` lists the shards with their example and frame counts and records what made them
(latent rate, channels, style dimension, SSL names and dimensions, and the bad-row report).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dr2studio.atomic import atomic_path, atomic_write_text

__all__ = [
    "SHARD_FORMAT",
    "SHARD_VERSION",
    "ShardError",
    "Example",
    "ShardInfo",
    "DatasetIndex",
    "write_shard",
    "Shard",
    "write_index",
    "load_index",
]

SHARD_FORMAT = "dr2studio-shard"
SHARD_VERSION = 1
INDEX_NAME = "index.json"


class ShardError(ValueError):
    """A shard or index file is missing, malformed or inconsistent."""


@dataclasses.dataclass
class Example:
    """One training song. ``latents`` [T, C], ``tokens`` [L], ``style`` [S], ``ssl[name]`` [T, D]."""

    id: str
    latents: torch.Tensor
    tokens: torch.Tensor
    style: torch.Tensor
    ssl: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    language: str = ""
    tempo: float | None = None  # bpm stated by the style text (for a DiT with a tempo clock)

    def __post_init__(self) -> None:
        if self.tempo is not None and not (math.isfinite(self.tempo) and self.tempo > 0):
            self.tempo = None
        if self.latents.ndim != 2:
            raise ShardError(f"example {self.id!r}: latents must be [T, C], got {tuple(self.latents.shape)}")
        if self.tokens.ndim != 1:
            raise ShardError(f"example {self.id!r}: tokens must be [L], got {tuple(self.tokens.shape)}")
        if self.style.ndim != 1:
            raise ShardError(f"example {self.id!r}: style must be [S], got {tuple(self.style.shape)}")
        for name, feats in self.ssl.items():
            if feats.ndim != 2 or feats.shape[0] != self.latents.shape[0]:
                raise ShardError(
                    f"example {self.id!r}: ssl[{name!r}] must be [T={self.latents.shape[0]}, D], got {tuple(feats.shape)}"
                )


@dataclasses.dataclass
class ShardInfo:
    file: str
    count: int
    frames: int


@dataclasses.dataclass
class DatasetIndex:
    """What ``index.json`` holds. ``ssl`` maps extractor name -> feature dimension."""

    shards: list[ShardInfo]
    latent_rate: float
    latent_channels: int
    style_dim: int
    ssl: dict[str, int] = dataclasses.field(default_factory=dict)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: str = SHARD_FORMAT
    version: int = SHARD_VERSION

    @property
    def num_examples(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def num_frames(self) -> int:
        return sum(s.frames for s in self.shards)


def _offsets(lengths: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    out[1:] = torch.cumsum(torch.tensor(list(lengths), dtype=torch.int64), 0)
    return out


def write_shard(path: str | os.PathLike, examples: Sequence[Example]) -> ShardInfo:
    """Write ``examples`` to one shard file atomically; returns its :class:`ShardInfo`."""
    path = Path(path)
    if not examples:
        raise ShardError(f"{path}: refusing to write an empty shard")
    names = sorted(examples[0].ssl)
    channels, style_dim = examples[0].latents.shape[1], examples[0].style.shape[0]
    for ex in examples:
        if sorted(ex.ssl) != names:
            raise ShardError(f"{path}: example {ex.id!r} has SSL features {sorted(ex.ssl)}, expected {names}")
        if ex.latents.shape[1] != channels or ex.style.shape[0] != style_dim:
            raise ShardError(f"{path}: example {ex.id!r} has a different latent/style width than the first example")
    tensors = {
        "latents": torch.cat([e.latents.float() for e in examples]).contiguous(),
        "latent_offsets": _offsets([e.latents.shape[0] for e in examples]),
        "tokens": torch.cat([e.tokens.long() for e in examples]).contiguous(),
        "token_offsets": _offsets([e.tokens.shape[0] for e in examples]),
        "style": torch.stack([e.style.float() for e in examples]).contiguous(),
        "tempo": torch.tensor([math.nan if e.tempo is None else float(e.tempo) for e in examples], dtype=torch.float32),
    }
    for name in names:
        tensors[f"ssl.{name}"] = torch.cat([e.ssl[name].float() for e in examples]).contiguous()
    meta = {
        "format": SHARD_FORMAT,
        "version": str(SHARD_VERSION),
        "ids": json.dumps([e.id for e in examples], ensure_ascii=False),
        "languages": json.dumps([e.language for e in examples]),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return ShardInfo(file=path.name, count=len(examples), frames=int(tensors["latent_offsets"][-1]))


class Shard:
    """Random access to one shard file; reads only the slices an example needs."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"shard not found: {self.path}")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            meta = self._file.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types
            raise ShardError(f"cannot read shard {self.path}: {exc}") from exc
        if meta.get("format") != SHARD_FORMAT:
            raise ShardError(f"{self.path} is not a {SHARD_FORMAT} file (format={meta.get('format')!r})")
        if int(meta.get("version", "0")) > SHARD_VERSION:
            raise ShardError(f"{self.path}: shard version {meta['version']} is newer than this reader ({SHARD_VERSION})")
        self.ids: list[str] = json.loads(meta["ids"])
        self.languages: list[str] = json.loads(meta.get("languages", "[]")) or [""] * len(self.ids)
        self._latent_off = self._file.get_tensor("latent_offsets").tolist()
        self._token_off = self._file.get_tensor("token_offsets").tolist()
        self.ssl_names = sorted(k[4:] for k in self._file.keys() if k.startswith("ssl."))
        self._tempo = self._file.get_tensor("tempo").tolist() if "tempo" in self._file.keys() else [math.nan] * len(self.ids)
        if len(self._latent_off) != len(self.ids) + 1 or len(self._token_off) != len(self.ids) + 1:
            raise ShardError(f"{self.path}: offset tables do not match the {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    def frames(self, i: int) -> int:
        return self._latent_off[i + 1] - self._latent_off[i]

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < len(self.ids):
            raise IndexError(f"{self.path}: example {i} out of range 0..{len(self.ids) - 1}")
        a, b = self._latent_off[i], self._latent_off[i + 1]
        ta, tb = self._token_off[i], self._token_off[i + 1]
        return Example(
            id=self.ids[i],
            latents=self._file.get_slice("latents")[a:b],
            tokens=self._file.get_slice("tokens")[ta:tb],
            style=self._file.get_slice("style")[i],
            ssl={n: self._file.get_slice(f"ssl.{n}")[a:b] for n in self.ssl_names},
            language=self.languages[i],
            tempo=self._tempo[i],
        )

    def __iter__(self) -> Iterable[Example]:
        return (self[i] for i in range(len(self)))


def write_index(root: str | os.PathLike, index: DatasetIndex) -> Path:
    """Write ``root/index.json`` atomically."""
    path = Path(root) / INDEX_NAME
    data = dataclasses.asdict(index)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def load_index(root: str | os.PathLike) -> DatasetIndex:
    """Read ``root/index.json`` and check that every listed shard exists."""
    root = Path(root)
    path = root / INDEX_NAME
    if not path.is_file():
        raise ShardError(f"no {INDEX_NAME} in {root}: run training/prepare_data.py first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != SHARD_FORMAT:
            raise ShardError(f"{path}: format {data.get('format')!r} is not {SHARD_FORMAT!r}")
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        index = DatasetIndex(**data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ShardError(f"malformed {path}: {exc}") from exc
    missing = [s.file for s in index.shards if not (root / s.file).is_file()]
    if missing:
        raise ShardError(f"{path} lists shards that are missing: {missing[:5]}")
    if not index.shards:
        raise ShardError(f"{path} lists no shards (the prepare step kept no rows; see its report)")
    return index
