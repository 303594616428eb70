"""Optional model-based scorers: lyric accuracy by ASR, Audiobox-Aesthetics, MuQ-MuLan text/audio similarity.

None of them is in the default install; each imports its package and fetches its weights through
:func:`dr2studio.hub.resolve_model_dir` (a local folder wins; a hub id is downloaded to the hub cache)
only when a take is scored, and a missing package is reported as :class:`ScorerUnavailable` with the
install line. Weights and their licences (docs/evaluation.md): faster-whisper (MIT code, Whisper
weights MIT), FunASR Paraformer (MIT code; model licence of the FunASR model card), Audiobox-Aesthetics
(CC-BY 4.0), MuQ-MuLan (CC-BY-NC 4.0: non-commercial).

- ``asr``: lyric accuracy = 1 - phoneme error rate between the lyrics and the transcript, both
  phonemised by our G2P (:class:`dr2studio.lyrics.g2p.LyricsG2P`); English through faster-whisper,
  Mandarin through a Paraformer (FunASR).
- ``aesthetics``: Audiobox-Aesthetics' production quality (PQ, 1-10) -> audio quality, content
  enjoyment (CE, 1-10) -> musicality, each ``(x - 1) / 9``.
- ``mulan``: cosine between the MuQ-MuLan embeddings of the style text and the take -> style
  similarity, ``(cos - 0.1) / 0.4`` clipped (unrelated pairs read about 0.1, matching ones 0.3-0.5).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ScorerUnavailable",
    "ModelScore",
    "phoneme_error_rate",
    "AsrLyricsScorer",
    "AestheticsScorer",
    "MulanScorer",
    "MODEL_SCORERS",
    "make_scorer",
]

log = logging.getLogger(__name__)

WHISPER_REPO = "Systran/faster-whisper-small"
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
                 "preprocessor_config.json")
PARAFORMER_MODEL = "paraformer-zh"
AESTHETICS_REPO = "facebook/audiobox-aesthetics"
AESTHETICS_FILES = ("checkpoint.pt",)
MULAN_REPO = "OpenMuQ/MuQ-MuLan-large"
MULAN_COS_FLOOR, MULAN_COS_SPAN = 0.1, 0.4


class ScorerUnavailable(RuntimeError):
    """An optional scorer whose package or weights are missing; the message says how to install them."""


ModelScore = tuple[dict[str, float | None], dict[str, Any]]


def _need(module: str, install: str, scorer: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ScorerUnavailable(f"the {scorer!r} scorer needs {module}, which is not installed: pip install {install}") from exc


def _weights(repo: str | os.PathLike, files: Sequence[str], scorer: str) -> Path:
    from dr2studio.hub import resolve_model_dir
    from dr2studio.weights import CheckpointError

    try:
        return resolve_model_dir(repo, files=tuple(files))
    except CheckpointError as exc:
        raise ScorerUnavailable(f"the {scorer!r} scorer cannot get its weights: {exc}") from exc


def _resample(audio: torch.Tensor, sr: int, target: int) -> np.ndarray:
    """Mono float32 at ``target`` Hz."""
    import torchaudio.functional as AF

    x = audio.detach().float().cpu()
    x = x.mean(0) if x.dim() == 2 else x
    if sr != target:
        x = AF.resample(x, sr, target)
    return x.numpy().astype(np.float32)


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def phoneme_error_rate(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Levenshtein distance over phones divided by the reference length (can exceed 1)."""
    if not reference:
        raise ValueError("the reference has no phones")
    return _edit_distance(list(reference), list(hypothesis)) / len(reference)


class AsrLyricsScorer:
    """Lyric accuracy: transcribe, phonemise transcript and lyrics with our G2P, 1 - PER."""

    name = "asr"

    def __init__(self, vocab: str | os.PathLike, *, language: str = "en", model: str | os.PathLike | None = None,
                 device: str = "cpu", transcriber: Callable[[np.ndarray, int], str] | None = None) -> None:
        if language not in ("en", "zh"):
            raise ValueError(f"ASR lyric scoring reads English ('en') or Mandarin ('zh'), got {language!r}")
        from dr2studio.lyrics.g2p import LyricsG2P

        self.language, self.device = language, device
        self.model = model or (WHISPER_REPO if language == "en" else PARAFORMER_MODEL)
        self.g2p = LyricsG2P(vocab)
        self._transcribe = transcriber

    def _load(self) -> Callable[[np.ndarray, int], str]:
        if self._transcribe is not None:
            return self._transcribe
        if self.language == "en":
            fw = _need("faster_whisper", "faster-whisper", self.name)
            path = _weights(self.model, WHISPER_FILES, self.name)
            whisper = fw.WhisperModel(str(path), device=self.device, compute_type="int8" if self.device == "cpu" else "float16")

            def transcribe(audio: np.ndarray, sr: int) -> str:
                segments, _ = whisper.transcribe(audio, language="en", beam_size=5, vad_filter=False)
                return " ".join(s.text.strip() for s in segments)
        else:
            funasr = _need("funasr", "funasr", self.name)
            paraformer = funasr.AutoModel(model=str(self.model), disable_update=True, device=self.device)

            def transcribe(audio: np.ndarray, sr: int) -> str:
                out = paraformer.generate(input=audio)
                return " ".join(str(r.get("text", "")) for r in out)
        self._transcribe = transcribe
        return transcribe

    def check_installed(self) -> None:
        """Raise :class:`ScorerUnavailable` now (before any take is read) when the ASR package is missing."""
        if self._transcribe is None:
            _need("faster_whisper" if self.language == "en" else "funasr",
                  "faster-whisper" if self.language == "en" else "funasr", self.name)

    def phones(self, text: str) -> list[str]:
        """Phones of every sung line of ``text`` (structure tags and time stamps dropped), word gaps removed."""
        from dr2studio.lyrics import parse_lyrics

        out: list[str] = []
        for section in parse_lyrics(text or "").sections:
            for line in section.lines:
                out += [p for p in self.g2p.line(line, self.language).raw.split("|") if p and p not in ("_", " ")]
        return out

    def __call__(self, audio: torch.Tensor, sr: int, *, lyrics: str = "", style: str | None = None) -> ModelScore:
        ref = self.phones(lyrics)
        if not ref:
            return {"lyric_accuracy": None}, {"asr_note": "no sung lyrics to compare"}
        text = self._load()(_resample(audio, sr, 16000), 16000)
        hyp: list[str] = []
        for line in text.splitlines() or [""]:
            if line.strip():
                hyp += [p for p in self.g2p.line(line, self.language).raw.split("|") if p and p not in ("_", " ")]
        per = phoneme_error_rate(ref, hyp)
        return ({"lyric_accuracy": round(max(0.0, 1.0 - per), 4)},
                {"asr_model": str(self.model), "asr_transcript": text, "phoneme_error_rate": round(per, 4)})


class AestheticsScorer:
    """Audiobox-Aesthetics (CE, CU, PC, PQ on 1-10): PQ -> audio quality, CE -> musicality."""

    name = "aesthetics"

    def __init__(self, *, model: str | os.PathLike = AESTHETICS_REPO, device: str = "cpu",
                 predictor: Callable[[np.ndarray, int], dict[str, float]] | None = None) -> None:
        self.model, self.device, self._predict = model, device, predictor

    def check_installed(self) -> None:
        if self._predict is None:
            _need("audiobox_aesthetics.infer", "audiobox_aesthetics", self.name)

    def _load(self) -> Callable[[np.ndarray, int], dict[str, float]]:
        if self._predict is None:
            infer = _need("audiobox_aesthetics.infer", "audiobox_aesthetics", self.name)
            path = _weights(self.model, AESTHETICS_FILES, self.name) / AESTHETICS_FILES[0]
            predictor = infer.initialize_predictor(ckpt=str(path))

            def predict(audio: np.ndarray, sr: int) -> dict[str, float]:
                out = predictor.forward([{"path": torch.from_numpy(audio)[None], "sample_rate": sr}])
                return {k: float(v) for k, v in out[0].items()}

            self._predict = predict
        return self._predict

    def __call__(self, audio: torch.Tensor, sr: int, *, lyrics: str = "", style: str | None = None) -> ModelScore:
        axes = self._load()(_resample(audio, sr, 16000), 16000)
        missing = [k for k in ("CE", "PQ") if k not in axes]
        if missing:
            raise ScorerUnavailable(f"Audiobox-Aesthetics returned {sorted(axes)}, without {missing}")

        def unit(v: float) -> float:
            return round(min(1.0, max(0.0, (v - 1.0) / 9.0)), 4)

        return ({"audio_quality": unit(axes["PQ"]), "musicality": unit(axes["CE"])},
                {"aesthetics": {k: round(v, 3) for k, v in axes.items()}})


class MulanScorer:
    """MuQ-MuLan cosine between the style text and the take -> style similarity (non-commercial weights)."""

    name = "mulan"

    def __init__(self, *, model: str | os.PathLike = MULAN_REPO, device: str = "cpu", encoder: Any = None) -> None:
        self.model, self.device, self._encoder = model, device, encoder

    def check_installed(self) -> None:
        if self._encoder is None:
            _need("muq", "muq", self.name)

    def _load(self) -> Any:
        if self._encoder is None:
            from dr2studio.style.muq import MuQStyleEncoder, MuQUnavailableError

            _need("muq", "muq", self.name)
            self._encoder = MuQStyleEncoder(self.model, device=self.device)
            self._unavailable = MuQUnavailableError
        return self._encoder

    def __call__(self, audio: torch.Tensor, sr: int, *, lyrics: str = "", style: str | None = None) -> ModelScore:
        if not style:
            return {"style_similarity": None}, {"mulan_note": "no style text to compare"}
        enc = self._load()
        a = enc.embed_audio(audio.detach().float().cpu(), sr)
        t = enc.embed_text(style)
        cos = float(torch.nn.functional.cosine_similarity(a[None], t[None]).item())
        score = min(1.0, max(0.0, (cos - MULAN_COS_FLOOR) / MULAN_COS_SPAN))
        return {"style_similarity": round(score, 4)}, {"mulan_cosine": round(cos, 4)}


MODEL_SCORERS: dict[str, str] = {
    "asr": "lyric accuracy: 1 - phoneme error rate (faster-whisper / Paraformer + our G2P)",
    "aesthetics": "audio quality and musicality: Audiobox-Aesthetics PQ and CE",
    "mulan": "style similarity: MuQ-MuLan text/audio cosine (non-commercial weights)",
}


def make_scorer(name: str, *, vocab: str | os.PathLike | None = None, language: str = "en",
                device: str = "cpu") -> Callable[..., ModelScore]:
    """The model scorer called ``name`` (see :data:`MODEL_SCORERS`); nothing loads until it scores."""
    if name == "asr":
        if vocab is None:
            raise ValueError("the 'asr' scorer needs a phoneme table (a model directory's vocab.json)")
        return AsrLyricsScorer(vocab, language=language, device=device)
    if name == "aesthetics":
        return AestheticsScorer(device=device)
    if name == "mulan":
        return MulanScorer(device=device)
    raise ValueError(f"unknown scorer {name!r}; choose from signal, {', '.join(MODEL_SCORERS)}")
