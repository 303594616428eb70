"""Audio files in and out: soundfile reading, atomic writes, resampling and fake stereo.

Audio tensors are channels-first float32 ``[C, N]`` in [-1, 1] everywhere in dr2studio. Writes go
through a temporary name in the destination folder and an ``os.replace``, so a DAW or another process
never sees half a file and a failed render leaves the old file untouched.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from dr2studio.atomic import atomic_path

__all__ = [
    "AudioError",
    "read_audio",
    "write_audio",
    "resample",
    "to_mono",
    "fake_stereo",
    "audio_info",
    "SUBTYPES",
]

log = logging.getLogger(__name__)

#: soundfile subtype names accepted by :func:`write_audio` (``bit depth`` shorthand -> subtype).
SUBTYPES: dict[str, str] = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT", "float": "FLOAT"}

_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF", ".mp3": "MP3"}


class AudioError(ValueError):
    """An audio file is missing, unreadable or an audio array has the wrong shape or rate."""


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Header of an audio file (frames, sample rate, channels) without reading the samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from exc


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read a file as float32 ``[C, N]`` plus its sample rate. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def _check_audio(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor):
        audio = torch.as_tensor(np.asarray(audio))
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    if audio.dim() != 2 or audio.shape[0] > 16:
        raise AudioError(f"audio must be [channels, samples] with at most 16 channels, got shape {tuple(audio.shape)}")
    if audio.shape[1] == 0:
        raise AudioError("audio holds no samples")
    if int(sample_rate) <= 0:
        raise AudioError(f"sample rate must be a positive number of Hz, got {sample_rate}")
    if not torch.isfinite(audio).all():
        raise AudioError("audio holds NaN or infinite samples")
    return audio


def write_audio(
    path: str | os.PathLike,
    audio: torch.Tensor,
    sample_rate: int,
    subtype: str = "PCM_24",
) -> Path:
    """Write ``audio [C, N]`` atomically; the format follows the file extension.

    ``subtype`` is a soundfile subtype (``PCM_24``, ``PCM_16``, ``FLOAT``) or a shorthand from
    :data:`SUBTYPES`. It is ignored for formats without PCM subtypes (mp3, ogg). Samples outside
    [-1, 1] are clipped for integer subtypes, with a warning.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"cannot write {path}: unknown audio extension {path.suffix!r} (use one of {', '.join(_FORMATS)})")
    if not path.parent.is_dir():
        raise AudioError(f"cannot write {path}: folder {path.parent} does not exist")
    audio = _check_audio(audio, sample_rate).detach().to("cpu", torch.float32)
    subtype = SUBTYPES.get(subtype, subtype)
    if fmt in ("MP3", "OGG"):
        subtype = {"MP3": "MPEG_LAYER_III", "OGG": "VORBIS"}[fmt]
    elif subtype.startswith("PCM"):
        peak = float(audio.abs().max())
        if peak > 1.0:
            log.warning("clipping %s: peak %.3f is above full scale", path.name, peak)
            audio = audio.clamp(-1.0, 1.0)
    try:
        with atomic_path(path) as tmp:
            sf.write(str(tmp), audio.numpy().T, int(sample_rate), subtype=subtype, format=fmt)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot write {path}: {exc}") from exc
    return path


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of ``[..., N]`` (torchaudio's windowed sinc); a no-op at equal rates."""
    if int(orig_rate) <= 0 or int(new_rate) <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if int(orig_rate) == int(new_rate):
        return audio
    return AF.resample(audio, int(orig_rate), int(new_rate))


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """Average the channels: ``[C, N] -> [1, N]``."""
    return audio.mean(dim=0, keepdim=True) if audio.shape[0] > 1 else audio


def fake_stereo(audio: torch.Tensor, sample_rate: int, delay_s: float = 0.01, gain: float = 0.8) -> torch.Tensor:
    """The release's pseudo-stereo: left = mono, right = ``gain`` x mono delayed by ``delay_s``.

    ``[1, N] -> [2, N]``; a stereo input is returned unchanged.
    """
    if audio.shape[0] == 2:
        return audio
    mono = to_mono(audio)
    delay = int(delay_s * sample_rate)
    right = torch.zeros_like(mono)
    if delay < mono.shape[1]:
        right[:, delay:] = gain * mono[:, : mono.shape[1] - delay]
    return torch.cat([mono, right], dim=0)
