"""The released Mandarin G2P data: lexicon, pinyin->bopomofo table and the ONNX polyphone classifier.

None of it ships with dr2studio (the lexicon alone is 15 MB). Users point ``--g2p-assets`` at a copy
(the official repository's ``g2p/sources`` folder, or a ``g2p/`` folder inside the model directory). Both
the official nested layout (``sources/g2p_chinese_model/...``) and a flat folder are accepted.

Loading is lazy and cached per folder: the 665k-entry lexicon takes about half a second to read once.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ASSET_FILES", "G2PAssetsError", "MandarinAssets", "PolyphoneModel", "find_asset_files", "load_mandarin_assets"]

log = logging.getLogger(__name__)

#: Logical name -> file name of every asset the exact Mandarin path needs.
ASSET_FILES = {
    "lexicon": "chinese_lexicon.txt",
    "pinyin_to_bopomofo": "pinyin_2_bpmf.txt",
    "polychar": "polychar.txt",
    "polydict": "polydict.json",
    "bert_vocab": "vocab.txt",
    "onnx": "poly_bert_model.onnx",
}
_SUBDIRS = ("", "g2p_chinese_model", "sources", "sources/g2p_chinese_model", "g2p/sources",
            "g2p/sources/g2p_chinese_model", "g2p", "g2p/g2p_chinese_model")
_MAX_BERT_LEN = 510  # position table of 512 minus [CLS]


class G2PAssetsError(FileNotFoundError):
    """The Mandarin G2P folder is missing files or holds unreadable ones."""


def find_asset_files(folder: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Locate each asset under ``folder``: returns (found name -> path, missing file names)."""
    root = Path(folder)
    found: dict[str, Path] = {}
    for name, filename in ASSET_FILES.items():
        for sub in _SUBDIRS:
            candidate = root / sub / filename
            if candidate.is_file():
                found[name] = candidate
                break
    missing = [ASSET_FILES[n] for n in ASSET_FILES if n not in found]
    return found, missing


def _read_lexicon(path: Path) -> dict[str, str]:
    """``word<TAB>pinyin pinyin`` lines -> dict (a later duplicate wins, as in the reference)."""
    text = path.read_text(encoding="utf-8")
    if text.count("\t") == text.count("\n") + (0 if text.endswith("\n") else 1) and "\r" not in text:
        parts = text.replace("\n", "\t").split("\t")
        if parts and parts[-1] == "":
            parts.pop()
        if len(parts) % 2 == 0:
            it = iter(parts)
            return dict(zip(it, it))
    table: dict[str, str] = {}
    for line in text.splitlines():  # slow path for hand-edited files
        word, sep, pinyin = line.strip().partition("\t")
        if sep:
            table[word] = pinyin.strip()
    return table


def _read_tsv(path: Path) -> dict[str, str]:
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("\t")
        if sep:
            table[key] = value.strip()
    return table


class PolyphoneModel:
    """The released BERT polyphone classifier (6 layers, 391 pinyin classes) run with onnxruntime.

    Input ``input_ids`` int32 ``[1, 1 + L]`` ([CLS] then one id per character, no [SEP]); output
    ``outputs`` ``[1, L, 391]``. One run per distinct sentence is cached, so a line with several
    polyphones costs one forward pass.
    """

    def __init__(self, onnx_path: Path, bert_vocab: dict[str, int], classes: dict[int, str]) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise G2PAssetsError(
                "the Mandarin polyphone model needs onnxruntime: pip install 'dr2studio[g2p]'"
            ) from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = min(4, os.cpu_count() or 1)
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.vocab = bert_vocab
        self.unk = bert_vocab.get("[UNK]", 100)
        self.cls = bert_vocab.get("[CLS]", 101)
        self.classes = classes
        self._lock = threading.Lock()
        self._cache: dict[str, np.ndarray] = {}

    def _argmax(self, sentence: str) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(sentence)
            if hit is None:
                ids = np.array([[self.cls] + [self.vocab.get(c, self.unk) for c in sentence]], dtype=np.int32)
                out = self.session.run(["outputs"], {"input_ids": ids})[0]
                hit = out[0].argmax(axis=-1)
                if len(self._cache) > 1024:
                    self._cache.clear()
                self._cache[sentence] = hit
            return hit

    def predict(self, sentence: str, index: int) -> str:
        """Pinyin with tone digit (``"de5"``) of ``sentence[index]``, argmax over all classes."""
        start = 0
        if len(sentence) > _MAX_BERT_LEN:  # the reference would overflow BERT's positions; use a window
            start = min(max(0, index - _MAX_BERT_LEN // 2), len(sentence) - _MAX_BERT_LEN)
            sentence = sentence[start:start + _MAX_BERT_LEN]
        label = self.classes[int(self._argmax(sentence)[index - start]) + 1]
        return label[label.index("{") + 1:label.rindex("}")]


_POLY_LOCK = threading.Lock()


@dataclass
class MandarinAssets:
    """The released Mandarin data, read from one folder."""

    folder: Path
    lexicon: dict[str, str]
    pinyin_to_bopomofo: dict[str, str]
    polychars: frozenset[str]
    files: dict[str, Path] = field(repr=False)
    _poly: PolyphoneModel | None = field(default=None, repr=False)

    @property
    def polyphone(self) -> PolyphoneModel:
        """The ONNX classifier, started on first use (once, even when several threads ask)."""
        with _POLY_LOCK:
            return self._polyphone()

    def _polyphone(self) -> PolyphoneModel:
        if self._poly is None:
            bert_vocab = {
                tok: i for i, tok in enumerate(self.files["bert_vocab"].read_text(encoding="utf-8").split("\n"))
            }
            raw: dict[str, Any] = json.loads(self.files["polydict"].read_text(encoding="utf-8"))
            classes = {int(k): str(v) for k, v in raw.items()}
            self._poly = PolyphoneModel(self.files["onnx"], bert_vocab, classes)
        return self._poly


_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _load_cached(folder: str, stamp: tuple[int, int]) -> MandarinAssets:
    files, missing = find_asset_files(folder)
    if missing:
        raise G2PAssetsError(
            f"Mandarin G2P assets incomplete in {folder}: missing {', '.join(missing)} (copy the official "
            "DiffRhythm2 repository's g2p/sources folder, lexicon and ONNX model included)"
        )
    try:
        lexicon = _read_lexicon(files["lexicon"])
        p2b = _read_tsv(files["pinyin_to_bopomofo"])
        polychars = frozenset(
            line.strip() for line in files["polychar"].read_text(encoding="utf-8").splitlines() if line.strip()
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise G2PAssetsError(f"cannot read Mandarin G2P assets in {folder}: {exc}") from exc
    if len(lexicon) < 1000:
        raise G2PAssetsError(
            f"{files['lexicon']} holds only {len(lexicon)} entries (the released one has 664,982 lines); "
            "it is probably a Git LFS pointer or a truncated copy"
        )
    log.info("loaded Mandarin lexicon %s (%d words)", files["lexicon"], len(lexicon))
    return MandarinAssets(Path(folder), lexicon, p2b, polychars, files)


def load_mandarin_assets(folder: str | os.PathLike) -> MandarinAssets:
    """Read (once per folder and lexicon version) the Mandarin assets under ``folder``."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise G2PAssetsError(f"Mandarin G2P asset folder not found: {root}")
    files, missing = find_asset_files(root)
    lex = files.get("lexicon")
    stat = lex.stat() if lex is not None else None
    stamp = (stat.st_mtime_ns, stat.st_size) if stat is not None else (0, 0)
    with _LOCK:
        return _load_cached(str(root), stamp)
