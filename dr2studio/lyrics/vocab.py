"""The phoneme table and the fixed token ids of the lyrics condition.

The released model reads lyrics as one flat list of ints: phoneme ids (the vocab index **+ 1**, so
1..363 for the released table), structure tags 500..512, and a ``[stop]`` (511) after every line. Id 0
never appears in a lyrics sequence; the sampler uses it as the classifier-free-guidance filler.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = [
    "PHONE_OFFSET",
    "STOP_ID",
    "TAG_IDS",
    "PhonemeVocab",
    "VocabError",
    "VocabLike",
    "load_vocab",
]

#: Added to a vocab index to get the token id (id 0 stays free for the CFG filler).
PHONE_OFFSET = 1
#: ``[stop]``: ends every line, tag lines included.
STOP_ID = 511
#: Structure tags and their ids (``[stop]`` is one of them).
TAG_IDS: dict[str, int] = {
    "start": 500,
    "end": 501,
    "intro": 502,
    "verse": 503,
    "chorus": 504,
    "outro": 505,
    "inst": 506,
    "solo": 507,
    "bridge": 508,
    "hook": 509,
    "break": 510,
    "stop": 511,
    "space": 512,
}


class VocabError(ValueError):
    """The phoneme table is missing or malformed."""


@dataclass(frozen=True)
class PhonemeVocab:
    """Phone symbol -> vocab index (token id = index + :data:`PHONE_OFFSET`)."""

    index: Mapping[str, int]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.index:
            raise VocabError(f"{self.source}: the phoneme table is empty")
        bad = [k for k, v in self.index.items() if not isinstance(k, str) or not isinstance(v, int) or v < 0]
        if bad:
            raise VocabError(f"{self.source}: entries must map a phone string to an index >= 0, bad: {bad[:5]}")
        top = max(self.index.values()) + PHONE_OFFSET
        if top >= min(TAG_IDS.values()):
            raise VocabError(
                f"{self.source}: phone ids reach {top}, which collides with the structure tags (500..512); "
                "the table may hold at most 499 phones"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, phone: object) -> bool:
        return phone in self.index

    def token_id(self, phone: str) -> int:
        """Token id of one phone (``KeyError`` when it is not in the table)."""
        return self.index[phone] + PHONE_OFFSET

    def phone(self, token_id: int) -> str:
        """Inverse of :meth:`token_id`; tags and ``[stop]`` read as ``[name]``."""
        inverse = self._inverse()
        if token_id in inverse:
            return inverse[token_id]
        raise KeyError(f"token id {token_id} is neither a phone of {self.source} nor a structure tag")

    def _inverse(self) -> dict[int, str]:
        cached = self.__dict__.get("_inverse_cache")
        if cached is None:
            cached = {v + PHONE_OFFSET: k for k, v in self.index.items()}
            cached.update({v: f"[{k}]" for k, v in TAG_IDS.items()})
            object.__setattr__(self, "_inverse_cache", cached)
        return cached

    @property
    def num_phone_tokens(self) -> int:
        """Largest phone token id + 1 (an embedding table must also cover the tags: > 512 rows)."""
        return max(self.index.values()) + PHONE_OFFSET + 1

    def to_json(self) -> str:
        return json.dumps({"vocab": dict(self.index)}, ensure_ascii=False, indent=1) + "\n"


VocabLike = Union[PhonemeVocab, Mapping[str, int], str, os.PathLike]


def load_vocab(vocab: VocabLike) -> PhonemeVocab:
    """Read a phoneme table: a ``vocab.json`` path, a model directory holding one, a mapping, or a table.

    The file format is the released one, ``{"vocab": {phone: index}}``; a bare ``{phone: index}`` object
    is accepted too.
    """
    if isinstance(vocab, PhonemeVocab):
        return vocab
    if isinstance(vocab, Mapping):
        return PhonemeVocab(dict(vocab))
    path = Path(vocab)
    if path.is_dir():
        path = path / "vocab.json"
    if not path.is_file():
        raise VocabError(f"phoneme table not found: {path} (a model directory must hold vocab.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabError(f"cannot read phoneme table {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("vocab"), dict):
        data = data["vocab"]
    if not isinstance(data, dict):
        raise VocabError(f"{path}: expected a JSON object {{\"vocab\": {{phone: index}}}}")
    return PhonemeVocab(data, source=str(path))
