"""``encode_audio``: latents for any audio, with the encoder when the model has one, else by inverting
the decoder (the released DiffRhythm 2 ships only a decoder). Used by ``extend`` and ``infill``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch

from dr2studio.weights import CheckpointError
from dr2studio.models.bigvgan import BigVGANDecoder, load_decoder
from dr2studio.models.encoder import MusicEncoder, has_encoder, load_encoder
from dr2studio.vae.inversion import InversionConfig, ProgressFn, invert_decoder

__all__ = ["EncodedAudio", "encode_audio", "encode_windowed", "as_mono", "pad_to_hop"]

log = logging.getLogger(__name__)

Method = Literal["auto", "encoder", "inversion"]


@dataclasses.dataclass
class EncodedAudio:
    """Result of :func:`encode_audio`."""

    latents: torch.Tensor  # [1, T, C] float32 on CPU
    method: str  # "encoder" or "inversion" (the one that ran)
    seconds: float  # wall-clock time spent encoding
    loss: float | None = None  # final inversion loss (None for the encoder)


def as_mono(audio: Any) -> torch.Tensor:
    """Mix to mono float32 ``[N]``. Takes ``[N]``, or 2-D audio with channels on the shorter axis
    (torchaudio's ``[C, N]`` and soundfile's ``[N, C]`` both work); tensors or numpy arrays."""
    x = torch.as_tensor(audio)
    if not (x.is_floating_point() or x.dtype in (torch.int16, torch.int32)):
        raise ValueError(f"audio must hold samples (float or int16/int32), got dtype {x.dtype}")
    if x.dtype == torch.int16:
        x = x.float() / 32768.0
    elif x.dtype == torch.int32:
        x = x.float() / 2147483648.0
    x = x.float()
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2:
        x = x.mean(dim=0) if x.shape[0] <= x.shape[1] else x.mean(dim=1)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"audio must be [N] or [C, N] / [N, C] with N > 0, got shape {list(torch.as_tensor(audio).shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    return x


def pad_to_hop(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """Zero-pad the last axis to a whole number of frames of ``hop`` samples."""
    frames = max(1, math.ceil(audio.shape[-1] / hop))
    return torch.nn.functional.pad(audio, (0, frames * hop - audio.shape[-1]))


def _resample(audio: torch.Tensor, source: int, target: int) -> torch.Tensor:
    if source == target:
        return audio
    import torchaudio.functional as AF

    return AF.resample(audio, source, target)


def encode_windowed(encoder: MusicEncoder, audio: torch.Tensor, *, window_frames: int = 300,
                    context_frames: int = 25) -> torch.Tensor:
    """Encoder latents ``[B, T, C]`` of ``audio [B, 1, T*hop]`` in windows, so memory stays bounded for long songs.

    Each window of ``window_frames`` frames is encoded with ``context_frames`` of real audio on both sides
    (cropped afterwards), so interior frames see the same context as in one pass over the whole song
    as long as the context covers the encoder's receptive field (5 s by default at 5 frames/s).
    """
    hop = encoder.hop_length
    total = audio.shape[-1] // hop
    if total <= window_frames + 2 * context_frames:
        return encoder(audio, sample=False)
    out = []
    for start in range(0, total, window_frames):
        stop = min(start + window_frames, total)
        lo, hi = max(0, start - context_frames), min(total, stop + context_frames)
        z = encoder(audio[..., lo * hop : hi * hop], sample=False)
        out.append(z[:, start - lo : stop - lo])
    return torch.cat(out, dim=1)


def _run_encoder(encoder: MusicEncoder, mono: torch.Tensor, sample_rate: int) -> torch.Tensor:
    x = pad_to_hop(_resample(mono, sample_rate, encoder.sample_rate), encoder.hop_length)
    with torch.no_grad():
        return encode_windowed(encoder, x.view(1, 1, -1).to(encoder.device)).float()


def encode_audio(audio: Any, sample_rate: int, model_dir: str | os.PathLike, method: Method = "auto",
                 progress: ProgressFn | None = None, *, device: str | torch.device | None = None,
                 inversion: InversionConfig | None = None, encoder: MusicEncoder | None = None,
                 decoder: BigVGANDecoder | None = None) -> EncodedAudio:
    """Latents ``[1, T, C]`` for ``audio`` (any rate, any channel count: resampled and mixed to mono).

    ``method``: ``"encoder"`` needs ``encoder.json`` + ``encoder.safetensors`` in ``model_dir``;
    ``"inversion"`` optimises latents through the decoder, starting from the encoder's output when there
    is one; ``"auto"`` uses the encoder if present, else inversion. ``progress(step, total, loss)``
    reports inversion steps. Already-loaded ``encoder`` / ``decoder`` skip loading from ``model_dir``.
    ``T`` is the audio length in frames at the model's frame rate, rounded up.
    """
    if method not in ("auto", "encoder", "inversion"):
        raise ValueError(f"method must be 'auto', 'encoder' or 'inversion', got {method!r}")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        from dr2studio.hub import resolve_model_dir

        model_dir = resolve_model_dir(model_dir)
    mono = as_mono(audio)
    start = time.perf_counter()
    if encoder is None and method != "inversion" and has_encoder(model_dir):
        encoder = load_encoder(model_dir, device=device)
    if encoder is None and method == "encoder":
        raise CheckpointError(f"{model_dir} has no encoder (encoder.json + encoder.safetensors); use method='inversion'")
    if encoder is None and method == "inversion" and has_encoder(model_dir):
        encoder = load_encoder(model_dir, device=device)

    init = _run_encoder(encoder, mono, sample_rate) if encoder is not None else None
    if method != "inversion" and init is not None:
        log.info("encoded %.1f s of audio with the encoder", mono.numel() / sample_rate)
        return EncodedAudio(init.cpu(), "encoder", time.perf_counter() - start)

    if decoder is None:
        decoder = load_decoder(model_dir, device=device, dtype=torch.float32)  # fp16 gradients underflow
    target = _resample(mono, sample_rate, decoder.sample_rate).view(1, 1, -1)
    frames = math.ceil(target.shape[-1] / decoder.hop_length)
    if init is not None and init.shape[1] != frames:  # rounding of two rates can differ by a frame
        init = torch.nn.functional.pad(init, (0, 0, 0, max(0, frames - init.shape[1])))[:, :frames]
    result = invert_decoder(decoder, target, init=init, config=inversion, progress=progress)
    return EncodedAudio(result.latents.cpu(), "inversion", time.perf_counter() - start, result.loss)
