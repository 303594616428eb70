"""A rendered song and the sidecar that lets it be continued exactly.

``song.save("take.wav")`` writes the audio and ``take.dr2.safetensors`` beside it: the latents
``[1, T, M]``, the lyric token context ``[N]``, the style embedding ``[512]`` and, as metadata, the
lyrics text, seed, sampler settings, model fingerprint, sample rate, the sample format (bit depth) the
song is kept in and a SHA-256 of the audio file.
``Song.load`` reads both; a sidecar whose hash does not match the audio (the file was edited or
re-rendered since) is ignored with a warning, so ``extend`` falls back to encoding the audio instead
of continuing from latents that no longer describe it.

The sidecar itself is trusted only as far as it checks out (one rule, see ``docs/security.md``): its
``state_sha256`` covers the latents, tokens, style and every metadata field (lyrics, seed, settings, model,
...), and every value is validated on load (latents finite and of plausible magnitude, tokens in the
lyric table's range, settings a JSON object whose tempo, steps, guidance and edit history have the right
types and ranges). A sidecar that fails either is refused with :class:`SidecarError` naming the sidecar and
the field; nothing is rendered from it. Delete or rename it to continue from the audio alone. Sidecars
written before the checksum existed still load, and are validated the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import soundfile as sf

from dr2studio.atomic import atomic_path
from dr2studio.audio.io import AudioError, audio_info, read_audio, write_audio
from dr2studio.lyrics.vocab import STOP_ID
from dr2studio.requests import CFG_STRENGTH, DURATION, MAX_LYRIC_TOKENS, SEED, STEPS, TEMPO, RequestError

__all__ = ["Song", "Edit", "SidecarError", "SIDECAR_SUFFIX", "MAX_SIDECAR_BYTES", "MAX_LATENT_ABS", "sidecar_path",
           "validate_sidecar_state"]

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".dr2.safetensors"
_SIDECAR_FORMAT = "dr2studio-song"
_SIDECAR_VERSION = "1"
#: The largest sidecar read (bytes), checked on its size before reading: a 600 s take's latents are a few MB.
MAX_SIDECAR_BYTES = 64 * 1024 * 1024
#: The largest latent value a sidecar may hold: the VAE's latents stay within a few units; a scaled copy
#: (x1000) decodes to clipped noise.
MAX_LATENT_ABS = 100.0
_CHECKSUM_KEY = "state_sha256"
_TENSOR_NAMES = ("latents", "tokens", "style")
#: settings keys with a request limit, checked on load
_SETTING_LIMITS = {"tempo_bpm": TEMPO, "steps": STEPS, "cfg_strength": CFG_STRENGTH, "duration": DURATION}


class SidecarError(ValueError):
    """A sidecar file exists but cannot be read."""


def sidecar_path(audio_path: str | os.PathLike) -> Path:
    """``song.wav`` -> ``song.dr2.safetensors`` (same folder)."""
    path = Path(audio_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def _state_sha256(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata field but the checksum itself,
    in a fixed order, so that no part of the sidecar can change without the checksum noticing."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"tensor\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for key in sorted(k for k in meta if k != _CHECKSUM_KEY):
        h.update(f"meta\0{key}\0{len(meta[key])}\0".encode())
        h.update(meta[key].encode("utf-8"))
    return h.hexdigest()


def _bad(side: Path, field: str, message: str) -> SidecarError:
    return SidecarError(f"sidecar {side}: {field} {message}; delete or rename it to continue from the audio alone")


def validate_sidecar_state(side: Path, tensors: dict[str, torch.Tensor], settings: Any, seed: str) -> None:
    """Refuse (:class:`SidecarError` naming ``side`` and the field) values no render of this package writes:
    latents not ``[1, T, M]`` float, not finite or beyond :data:`MAX_LATENT_ABS`; tokens not 1-D integers in
    ``[0, STOP_ID]`` or more than MAX_LYRIC_TOKENS of them; a style not 512 finite floats; settings not an object,
    a tempo, steps, guidance or duration out of the request limits, an edit history not a list of objects."""
    lat = tensors["latents"]
    if not lat.is_floating_point() or lat.dim() not in (2, 3) or (lat.dim() == 3 and lat.shape[0] != 1):
        raise _bad(side, "latents", f"must be a float [1, T, M] tensor, got {lat.dtype} {tuple(lat.shape)}")
    if lat.numel():
        if not bool(torch.isfinite(lat).all()):
            raise _bad(side, "latents", "hold NaN or infinite values")
        peak = float(lat.abs().max())
        if peak > MAX_LATENT_ABS:
            raise _bad(side, "latents", f"reach {peak:.3g}, beyond any the model makes (at most {MAX_LATENT_ABS:g})")
    tokens = tensors.get("tokens")
    if tokens is not None:
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool or tokens.dim() != 1:
            raise _bad(side, "tokens", f"must be a 1-D integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() > MAX_LYRIC_TOKENS:
            raise _bad(side, "tokens", f"hold {tokens.numel()} ids; the limit is {MAX_LYRIC_TOKENS}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > STOP_ID):
            raise _bad(side, "tokens", f"must be lyric ids in [0, {STOP_ID}], got [{int(tokens.min())}, {int(tokens.max())}]")
    style = tensors.get("style")
    if style is not None:
        if not style.is_floating_point() or style.numel() != 512:
            raise _bad(side, "style", f"must be 512 floats, got {style.dtype} {tuple(style.shape)}")
        if not bool(torch.isfinite(style).all()):
            raise _bad(side, "style", "holds NaN or infinite values")
    if seed:
        try:
            SEED.check(int(seed))
        except (ValueError, RequestError):
            raise _bad(side, "seed", f"must be {SEED.describe()}, got {seed[:40]!r}") from None
    if not isinstance(settings, dict):
        raise _bad(side, "settings", f"must be a JSON object, got {type(settings).__name__}")
    for key, limit in _SETTING_LIMITS.items():
        if settings.get(key) is not None:
            try:
                limit.check(settings[key], f"settings.{key}")
            except RequestError:
                raise _bad(side, f"settings.{key}", f"must be {limit.describe()}, got {settings[key]!r}") from None
    edits = settings.get("edits")
    if edits is not None:
        if not isinstance(edits, list):
            raise _bad(side, "settings.edits", f"must be a list of edit objects, got {type(edits).__name__}")
        for i, edit in enumerate(edits):
            if not isinstance(edit, dict) or not isinstance(edit.get("kind", ""), str):
                raise _bad(side, f"settings.edits[{i}]", "must be an object with a text 'kind'")


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
        meta[_CHECKSUM_KEY] = _state_sha256(tensors, meta)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Song":
        """Read an audio file and its sidecar if there is a matching one (else the audio alone)."""
        path = Path(path)
        audio, rate = read_audio(path)
        subtype = audio_info(path).subtype
        side = sidecar_path(path)
        if not side.exists() and not side.is_symlink():
            return cls(audio=audio, sample_rate=rate, path=path, subtype=subtype)
        tensors, meta = _read_sidecar(side)
        if meta.get("audio_sha256") != _file_sha256(path):
            log.warning("%s does not match %s (the audio changed since it was rendered); ignoring the sidecar", side.name, path.name)
            return cls(audio=audio, sample_rate=rate, path=path, subtype=subtype)
        stored = meta.get(_CHECKSUM_KEY)
        if stored is None:
            log.info("%s predates sidecar checksums; its values are validated only", side.name)
        elif stored != _state_sha256(tensors, meta):
            raise _bad(side, _CHECKSUM_KEY, "does not match its latents, tokens, style and settings (the sidecar was edited)")
        seed = meta.get("seed", "")
        try:
            settings = json.loads(meta.get("settings") or "{}")
        except json.JSONDecodeError as exc:
            raise _bad(side, "settings", f"are not valid JSON ({exc})") from exc
        validate_sidecar_state(side, tensors, settings, seed)
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


def _read_sidecar(side: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a sidecar, refused before reading when it is not a regular file or is
    larger than :data:`MAX_SIDECAR_BYTES`; only the three known tensors are loaded."""
    try:
        info = os.stat(side)
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar {side}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise SidecarError(f"sidecar {side} is not a regular file")
    if info.st_size > MAX_SIDECAR_BYTES:
        raise SidecarError(f"sidecar {side} is {info.st_size} bytes; the limit is {MAX_SIDECAR_BYTES}")
    try:
        with safe_open(str(side), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k in _TENSOR_NAMES}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise SidecarError(f"cannot read sidecar {side}: {exc}") from exc
    if meta.get("format") != _SIDECAR_FORMAT or "latents" not in tensors:
        raise SidecarError(f"{side} is not a dr2studio song sidecar")
    return tensors, meta
