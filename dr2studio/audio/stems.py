"""Stems: source separation with Hybrid Demucs and the per-stem render chain.

Separation uses torchaudio's Hybrid Demucs (``hdemucs_high``) with the ``HDEMUCS_HIGH_MUSDB_PLUS``
weights, fetched into torch's hub cache on first use. The model runs at 44.1 kHz on stereo input, so
audio is resampled in and out; long songs are cut into overlapping segments that are blended back
with linear ramps (the overlap hides the segment edges).

Rendering one stem = effect chain (from a preset) -> resample to the project rate -> loudness
normalisation (measured at the project rate, so the file hits the target). Writing the files is
:mod:`dr2studio.audio.daw`'s job.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dr2studio.audio.effects import EffectPreset, LoudnessResult, apply_chain, normalize_loudness
from dr2studio.audio.io import resample

__all__ = [
    "STEMS",
    "SEPARATOR_URL",
    "SeparationError",
    "Separator",
    "load_separator",
    "RenderedStem",
    "render_stem",
    "export_stems",
]

log = logging.getLogger(__name__)

#: stem names in the order they are written (``mix`` is the unseparated song).
STEMS = ("mix", "vocals", "drums", "bass", "other")
#: the file torchaudio's ``HDEMUCS_HIGH_MUSDB_PLUS`` bundle downloads.
SEPARATOR_URL = "https://download.pytorch.org/torchaudio/models/hdemucs_high_trained.pt"
_DEMUCS_SOURCES = ["drums", "bass", "other", "vocals"]
_DEMUCS_RATE = 44100


class SeparationError(RuntimeError):
    """The separation model could not be loaded (offline, bad weights file) or run."""


def _default_factory() -> torch.nn.Module:
    from torchaudio.models import hdemucs_high

    return hdemucs_high(sources=list(_DEMUCS_SOURCES))


def load_separator(
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    factory: Callable[[], torch.nn.Module] = _default_factory,
) -> "Separator":
    """Hybrid Demucs with pretrained weights: a local ``weights`` file, else the hub cache / download.

    Offline without a cached copy this raises :class:`SeparationError` saying how to fix it. The
    state dict is loaded with ``weights_only=True``.
    """
    model = factory()
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise SeparationError(f"separator weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files
            raise SeparationError(f"cannot read separator weights {path}: {exc}") from exc
    else:
        try:
            state = torch.hub.load_state_dict_from_url(SEPARATOR_URL, map_location="cpu", weights_only=True, progress=False)
        except (urllib.error.URLError, OSError, ConnectionError) as exc:
            raise SeparationError(
                f"cannot download the Hybrid Demucs weights ({SEPARATOR_URL}): {exc}. "
                f"Connect once so torch caches them in {torch.hub.get_dir()}, or pass a local copy "
                "(--separator-weights PATH)"
            ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SeparationError(f"separator weights do not match Hybrid Demucs (hdemucs_high): {exc}") from exc
    return Separator(model.eval(), device=device)


class Separator:
    """Splits a mix ``[C, N]`` into Demucs sources, each ``[C', N]`` at the input rate.

    ``model`` is any torchaudio ``HDemucs`` (its ``sources`` attribute names the outputs), expected
    to run at 44.1 kHz on stereo ``[B, 2, L]``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        sample_rate: int = _DEMUCS_RATE,
        segment_s: float = 10.0,
        overlap_s: float = 1.0,
        device: str | torch.device | None = None,
    ) -> None:
        if overlap_s <= 0 or segment_s <= 2 * overlap_s:
            raise ValueError(f"need 0 < overlap < segment/2, got segment {segment_s}s, overlap {overlap_s}s")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device).eval()
        self.sources: list[str] = list(getattr(model, "sources", _DEMUCS_SOURCES))
        self.sample_rate = int(sample_rate)
        self.segment = int(segment_s * self.sample_rate)
        self.overlap = int(overlap_s * self.sample_rate)

    @torch.inference_mode()
    def _run(self, mix: torch.Tensor) -> torch.Tensor:
        """``[2, L]`` at the model rate -> ``[S, 2, L]``, overlapping segments blended linearly."""
        length = mix.shape[-1]
        step = self.segment - self.overlap
        starts = list(range(0, max(length - self.segment, 0), step)) + [max(length - self.segment, 0)]
        out = torch.zeros(len(self.sources), mix.shape[0], length)
        weight = torch.zeros(length)
        ramp = torch.linspace(0.0, 1.0, self.overlap + 2)[1:-1]  # strictly inside (0, 1)
        for i, start in enumerate(starts):
            end = min(start + self.segment, length)
            est = self.model(mix[:, start:end].unsqueeze(0).to(self.device))[0].float().cpu()  # [S, 2, n]
            w = torch.ones(end - start)
            if i > 0:
                w[: self.overlap] = ramp
            if i < len(starts) - 1:
                w[-self.overlap :] = torch.minimum(w[-self.overlap :], ramp.flip(0))
            out[..., start:end] += est * w
            weight[start:end] += w
        return out / weight.clamp_min(1e-8)

    def separate(self, audio: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
        """``{source: [C, N]}`` for ``audio [C, N]`` (mono in gives mono stems, stereo gives stereo)."""
        channels, length = audio.shape
        mix = resample(audio.float(), sample_rate, self.sample_rate)
        mix = mix.expand(2, -1) if channels == 1 else mix[:2]
        std = mix.mean(0).std().clamp_min(1e-8)  # Demucs expects unit-variance input; music has no DC to remove
        try:
            est = self._run(mix / std) * std
        except RuntimeError as exc:
            raise SeparationError(f"source separation failed: {exc}") from exc
        stems: dict[str, torch.Tensor] = {}
        for name, src in zip(self.sources, est):
            src = resample(src, self.sample_rate, sample_rate)
            src = src.mean(0, keepdim=True) if channels == 1 else src
            if src.shape[-1] < length:
                src = torch.nn.functional.pad(src, (0, length - src.shape[-1]))
            stems[name] = src[:, :length].contiguous()
        return stems


@dataclasses.dataclass
class RenderedStem:
    """One processed stem ready to write: ``audio [C, N]`` at ``sample_rate`` plus its loudness."""

    name: str
    audio: torch.Tensor
    sample_rate: int
    loudness: LoudnessResult | None


def render_stem(
    name: str,
    audio: torch.Tensor,
    sample_rate: int,
    preset: EffectPreset,
    *,
    target_sample_rate: int | None = None,
    loudness_lufs: float | None = None,
) -> RenderedStem:
    """Effects (``preset.chain_for(name)``) -> resample -> loudness, for one ``[C, N]`` stem.

    The effects run at the song's rate; loudness is measured and set after resampling, so the written
    file hits the target exactly. ``loudness_lufs`` overrides the preset's target; a preset target of
    ``null`` skips normalisation but still enforces the preset's peak ceiling.
    """
    rate = int(target_sample_rate or sample_rate)
    out = resample(apply_chain(audio, sample_rate, preset.chain_for(name)), sample_rate, rate)
    target = loudness_lufs if loudness_lufs is not None else preset.loudness_lufs
    loud: LoudnessResult | None = None
    if target is not None:
        out, loud = normalize_loudness(out, rate, float(target), preset.peak_db)
    else:
        ceiling = 10 ** (preset.peak_db / 20)
        peak = float(out.abs().max()) if out.numel() else 0.0
        if peak > ceiling:
            out = out * (ceiling / peak)
    return RenderedStem(name=name, audio=out, sample_rate=rate, loudness=loud)


def export_stems(
    song: Any,
    project: str | os.PathLike,
    *,
    daw: str = "generic",
    preset: str | os.PathLike | EffectPreset = "balanced",
    separate: bool = False,
    sample_rate: int | None = None,
    loudness_lufs: float | None = None,
    position: float = 0.0,
    take: str | None = None,
    separator: Separator | None = None,
    separator_weights: str | os.PathLike | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Render ``song`` (a :class:`~dr2studio.song.Song`) into a DAW project and record it in the manifest.

    Stems are the mix plus, with ``separate``, the Demucs sources; each goes through the preset's chain,
    loudness normalisation and resampling to ``sample_rate`` (default: the song's), and is written as
    24-bit WAV. Everything is checked (project folder, manifest, preset, rates) before anything is
    written. Returns the manifest entry of the new take.
    """
    from dr2studio.audio.daw import project_layout, write_take
    from dr2studio.audio.effects import load_preset

    layout = project_layout(project, daw)
    chosen = preset if isinstance(preset, EffectPreset) else load_preset(preset)
    rate = int(sample_rate or song.sample_rate)
    if not (8000 <= rate <= 192000):
        raise ValueError(f"project sample rate must be in [8000, 192000] Hz, got {rate}")
    if loudness_lufs is not None and not (-60.0 <= loudness_lufs <= 0.0):
        raise ValueError(f"loudness target must be in [-60, 0] LUFS, got {loudness_lufs}")
    if not (position >= 0.0):
        raise ValueError(f"timeline position must be >= 0 seconds, got {position}")
    sources: dict[str, torch.Tensor] = {"mix": song.audio.float()}
    steps = len(STEMS) + 1 if separate else 1  # separation + one render per stem
    done = 0

    def tick(stage: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps, stage)

    if separate:
        sep = separator or load_separator(separator_weights)
        parts = sep.separate(song.audio.float(), song.sample_rate)
        tick("separate")
        sources.update({name: parts[name] for name in STEMS if name in parts})
    rendered: dict[str, RenderedStem] = {}
    for name, audio in sources.items():
        rendered[name] = render_stem(name, audio, song.sample_rate, chosen, target_sample_rate=rate,
                                     loudness_lufs=loudness_lufs)
        tick(f"render {name}")
    source_path = getattr(song, "path", None)
    info = {
        "source": str(Path(source_path).resolve()) if source_path else None,
        "position": float(position),
        "duration": song.audio.shape[1] / song.sample_rate,
        "sample_rate": rate,
        "lyrics": song.lyrics,
        "seed": song.seed,
        "settings": song.settings,
        "model": song.model,
        "preset": chosen.name,
        "separated": bool(separate),
        "loudness": {n: (r.loudness.output_lufs if r.loudness else None) for n, r in rendered.items()},
    }
    name = take or (Path(source_path).stem if source_path else "take")
    entry = write_take(layout, name, {n: (r.audio, r.sample_rate) for n, r in rendered.items()}, info)
    return entry
