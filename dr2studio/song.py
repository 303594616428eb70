"""A rendered song and the sidecar that lets it be continued exactly.

``song.save("take.wav")`` writes the audio and ``take.dr2.safetensors`` beside it: the latents
``[1, T, M]``, the lyric token context ``[N]``, the style embedding ``[512]`` and, as metadata, the
lyrics text, seed, sampler settings, model fingerprint, sample rate, the sample format (bit depth) the
song is kept in and a SHA-256 of the audio file.
``Song.load`` reads both; a sidecar whose hash does not match the audio (the file was edited or
re-rendered since) is ignored with a warning, so ``extend`` falls back to encoding the audio instead
of continuing from latents that no longer describe it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import soundfile as sf

from dr2studio.atomic import atomic_path
from dr2studio.audio.io import AudioError, audio_info, read_audio, write_audio

__all__ = ["Song", "Edit", "SidecarError", "SIDECAR_SUFFIX", "sidecar_path"]

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".dr2.safetensors"
_SIDECAR_FORMAT = "dr2studio-song"
_SIDECAR_VERSION = "1"


class SidecarError(ValueError):
    """A sidecar file exists but cannot be read."""


def sidecar_path(audio_path: str | os.PathLike) -> Path:
    """``song.wav`` -> ``song.dr2.safetensors`` (same folder)."""
    path = Path(audio_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class Edit:
    """One operation in a song's history (``extend``, ``infill``, ``crop``), as kept in ``settings["edits"]``.

    The history is stored as plain JSON objects so sidecars stay readable both ways: an old sidecar's
    dicts load as :class:`Edit` (:meth:`from_dict`), and :meth:`to_dict` writes the same keys old code
    reads. A field left ``None`` is not written (a crop has no ``seed``), except ``level_match_db``,
    whose ``None`` says that level matching was off. Keys this version does not know are kept in ``extra``.

    extend: ``splice`` (seconds where the new audio starts, crossfade included), ``crossfade``,
    ``prefix_frames`` / ``new_frames`` (latent frames kept / added), ``seconds`` (asked),
    ``added_seconds`` and ``length`` (delivered, :func:`~dr2studio.studio.length_report`), ``end_frames_dropped``.
    infill: ``start`` / ``end`` (seconds), ``crossfade_in`` / ``crossfade_out``. crop: ``end``.
    Both edits: ``sample_rate``, ``level_match_db``, ``lyrics`` (the new text), ``seed``, ``latents_from``
    (how the input's latents were obtained), ``lyrics_coverage``, ``steps``, ``cfg_strength``.
    """

    kind: str
    splice: float | None = None
    crossfade: float | None = None
    prefix_frames: int | None = None
    new_frames: int | None = None
    seconds: float | None = None
    added_seconds: float | None = None
    length: dict[str, Any] | None = None
    start: float | None = None
    end: float | None = None
    crossfade_in: float | None = None
    crossfade_out: float | None = None
    sample_rate: int | None = None
    level_match_db: float | None = None
    end_frames_dropped: int | None = None
    lyrics: str | None = None
    seed: int | None = None
    latents_from: dict[str, Any] | None = None
    lyrics_coverage: dict[str, Any] | None = None
    steps: int | None = None
    cfg_strength: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    _NULLABLE: ClassVar[frozenset[str]] = frozenset({"level_match_db"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Edit":
        """An edit from its stored JSON object (any version); unknown keys go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("kind", "")
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in ``settings["edits"]`` (readable by code that reads the dicts by key)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None or (f.name in self._NULLABLE and self.kind in ("extend", "infill")):
                out[f.name] = value
        out.update(self.extra)
        return out


@dataclasses.dataclass
class Song:
    """Audio ``[C, N]`` float32 at ``sample_rate`` plus the state needed to continue it.

    ``latents`` is ``[1, T, M]`` (None when only audio is known), ``tokens`` the ``[N]`` lyric ids the
    sampler conditioned on, ``style`` the ``[512]`` embedding. ``settings`` holds the sampler settings,
    stereo flag and the edit history (``settings["edits"]``, read and written as :class:`Edit` records
    through :attr:`edits`). ``subtype`` is the sample format
    (soundfile subtype, e.g. ``PCM_16``) the song came in; :meth:`save` writes it back in that
    format so the samples an edit keeps are bit for bit the producer's.
    """

    audio: torch.Tensor
    sample_rate: int
    latents: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    lyrics: str = ""
    style: torch.Tensor | None = None
    seed: int | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: str | None = None
    path: Path | None = None
    subtype: str | None = None

    def __post_init__(self) -> None:
        if self.audio.dim() == 1:
            self.audio = self.audio.unsqueeze(0)
        if self.audio.dim() != 2:
            raise ValueError(f"song audio must be [channels, samples], got shape {tuple(self.audio.shape)}")
        if self.latents is not None and self.latents.dim() == 2:
            self.latents = self.latents.unsqueeze(0)
        if self.latents is not None and (self.latents.dim() != 3 or self.latents.shape[0] != 1):
            raise ValueError(f"song latents must be [1, T, M], got shape {tuple(self.latents.shape)}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.audio.shape[1] / self.sample_rate

    @property
    def channels(self) -> int:
        return self.audio.shape[0]

    @property
    def has_latents(self) -> bool:
        return self.latents is not None and self.latents.shape[1] > 0

    @property
    def edits(self) -> list[Edit]:
        """The edit history, oldest first (a copy: assign the list back, or use :meth:`with_edit`)."""
        stored = self.settings.get("edits") if isinstance(self.settings, dict) else None
        return [Edit.from_dict(e) for e in stored or [] if isinstance(e, dict)]

    @edits.setter
    def edits(self, edits: list[Edit]) -> None:
        self.settings["edits"] = [e.to_dict() for e in edits]

    @property
    def last_edit(self) -> Edit | None:
        """The newest edit, or None for a song as generated (or loaded without history)."""
        edits = self.edits
        return edits[-1] if edits else None

    def settings_with_edit(self, edit: Edit) -> dict[str, Any]:
        """A copy of :attr:`settings` with ``edit`` appended to the history (for the song an edit makes);
        the records already there are kept exactly as stored."""
        settings = dict(self.settings)
        settings["edits"] = list(settings.get("edits") or []) + [edit.to_dict()]
        return settings

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, subtype: str | None = None) -> Path:
        """Write the audio and (when latents are known) the sidecar, each atomically.

        ``subtype`` defaults to the song's own sample format (a 16-bit take is written back as 16-bit,
        so every sample read from it is written back unchanged), else 24-bit PCM; both round-trip
        exactly through :func:`read_audio`. A stale sidecar from an earlier take of the same name is
        removed when this song has no latents.
        """
        path = Path(path)
        subtype = subtype or self._file_subtype(path)
        side = sidecar_path(path)
        if not self.has_latents:
            write_audio(path, self.audio, self.sample_rate, subtype=subtype)
            if side.exists():
                side.unlink()
            self.path = path
            return path
        try:  # the audio is moved into place first, then its sidecar
            with atomic_path(side) as tmp_side, atomic_path(path) as tmp_audio:
                write_audio(tmp_audio, self.audio, self.sample_rate, subtype=subtype)
                self._write_sidecar(tmp_side, _file_sha256(tmp_audio))
        except OSError as exc:
            raise AudioError(f"cannot write {path}: {exc}") from exc
        self.path = path
        return path

    def _file_subtype(self, path: Path) -> str:
        """The song's own subtype when ``path``'s format can hold it, else 24-bit PCM."""
        fmt = {".wav": "WAV", ".flac": "FLAC", ".aiff": "AIFF", ".aif": "AIFF"}.get(path.suffix.lower())
        if self.subtype and fmt and sf.check_format(fmt, self.subtype):
            return self.subtype
        return "PCM_24"

    def _write_sidecar(self, path: Path, audio_sha256: str) -> None:
        assert self.latents is not None
        tensors = {"latents": self.latents.detach().to("cpu", torch.float32).contiguous()}
        if self.tokens is not None:
            tensors["tokens"] = self.tokens.detach().to("cpu", torch.long).reshape(-1).contiguous()
        if self.style is not None:
            tensors["style"] = self.style.detach().to("cpu", torch.float32).reshape(-1).contiguous()
        meta = {
            "format": _SIDECAR_FORMAT,
            "version": _SIDECAR_VERSION,
            "lyrics": self.lyrics,
            "seed": "" if self.seed is None else str(int(self.seed)),
            "settings": json.dumps(self.settings, ensure_ascii=False, default=str),
            "model": self.model or "",
            "sample_rate": str(int(self.sample_rate)),
            "audio_samples": str(self.audio.shape[1]),
            "audio_channels": str(self.audio.shape[0]),
            "audio_sha256": audio_sha256,
            "subtype": self.subtype or "",
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Song":
        """Read an audio file and its sidecar if there is a matching one (else the audio alone)."""
        path = Path(path)
        audio, rate = read_audio(path)
        subtype = audio_info(path).subtype
        side = sidecar_path(path)
        if not side.is_file():
            return cls(audio=audio, sample_rate=rate, path=path, subtype=subtype)
        try:
            with safe_open(str(side), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise SidecarError(f"cannot read sidecar {side}: {exc}") from exc
        if meta.get("format") != _SIDECAR_FORMAT or "latents" not in tensors:
            raise SidecarError(f"{side} is not a dr2studio song sidecar")
        if meta.get("audio_sha256") != _file_sha256(path):
            log.warning("%s does not match %s (the audio changed since it was rendered); ignoring the sidecar", side.name, path.name)
            return cls(audio=audio, sample_rate=rate, path=path, subtype=subtype)
        seed = meta.get("seed", "")
        try:
            settings = json.loads(meta.get("settings") or "{}")
        except json.JSONDecodeError as exc:
            raise SidecarError(f"{side}: settings are not valid JSON: {exc}") from exc
        return cls(
            audio=audio,
            sample_rate=rate,
            latents=tensors["latents"],
            tokens=tensors.get("tokens"),
            lyrics=meta.get("lyrics", ""),
            style=tensors.get("style"),
            seed=int(seed) if seed else None,
            settings=settings,
            model=meta.get("model") or None,
            path=path,
            subtype=meta.get("subtype") or subtype,  # the sidecar knows it when the file went over the wire as float
        )
