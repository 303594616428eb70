"""Stems: source separation with Hybrid Demucs and the per-stem render chain.

Separation uses torchaudio's Hybrid Demucs (``hdemucs_high``) with the ``HDEMUCS_HIGH_MUSDB_PLUS``
weights, fetched into torch's hub cache on first use. The model runs at 44.1 kHz on stereo input, so
audio is resampled in and out; long songs are cut into overlapping segments that are blended back
with linear ramps (the overlap hides the segment edges).

Rendering one stem = resample to the project rate -> effect chain (from a preset; effects that
cannot run at that rate are skipped and noted) -> loudness normalisation (measured at the project
rate). :func:`render_take` is the one path from stems to ``dr2studio.json`` for the CLI, the API and
the bridge; writing the files is :mod:`dr2studio.audio.daw`'s job.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import urllib.error
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from dr2studio.audio.effects import (
    EffectPreset,
    LoudnessResult,
    apply_chain,
    integrated_loudness,
    normalize_loudness,
    runnable_effects,
)
from dr2studio.audio.io import resample
from dr2studio.requests import TakeRequest

__all__ = [
    "STEMS",
    "SEPARATOR_URL",
    "SeparationError",
    "Separator",
    "load_separator",
    "RenderedStem",
    "render_stem",
    "DEFAULT_PROJECT_RATE",
    "project_rate",
    "render_take",
    "export_stems",
]

log = logging.getLogger(__name__)

#: stem names in the order they are written (``mix`` is the unseparated song).
STEMS = ("mix", "vocals", "drums", "bass", "other")
#: the file torchaudio's ``HDEMUCS_HIGH_MUSDB_PLUS`` bundle downloads.
SEPARATOR_URL = "https://download.pytorch.org/torchaudio/models/hdemucs_high_trained.pt"
_DEMUCS_SOURCES = ["drums", "bass", "other", "vocals"]
_DEMUCS_RATE = 44100
#: the rate takes are rendered at when neither the caller nor the project names one.
DEFAULT_PROJECT_RATE = 48000


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
    """One processed stem ready to write: ``audio [C, N]`` at ``sample_rate`` and what was done to it.

    ``loudness_lufs`` and ``peak_dbfs`` are measured on the final audio (after effects, limiting and
    normalisation), so they are what the file holds; ``target_lufs`` is what was asked for.
    """

    name: str
    audio: torch.Tensor
    sample_rate: int
    loudness: LoudnessResult | None
    preset: str = "unnamed"
    target_lufs: float | None = None
    loudness_lufs: float | None = None
    peak_dbfs: float | None = None
    skipped_effects: list[str] = dataclasses.field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """This stem's entry under a take's ``stems`` in ``dr2studio.json`` (docs/manifest.md)."""
        return {"preset": self.preset, "target_lufs": self.target_lufs, "loudness_lufs": self.loudness_lufs,
                "peak_dbfs": self.peak_dbfs, "skipped_effects": list(self.skipped_effects)}


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def render_stem(
    name: str,
    audio: torch.Tensor,
    sample_rate: int,
    preset: EffectPreset,
    *,
    target_sample_rate: int | None = None,
    loudness_lufs: float | None = None,
) -> RenderedStem:
    """Resample -> effects (``preset.chain_for(name)``) -> loudness, for one ``[C, N]`` stem.

    Effects run at the project rate, so a preset made for 48 kHz works on an 8 kHz model's output; an
    effect that still cannot run there (a filter above Nyquist) is skipped and named in
    ``skipped_effects``. ``loudness_lufs`` overrides the preset's target; a preset target of ``null``
    skips normalisation but still enforces the preset's peak ceiling.
    """
    rate = int(target_sample_rate or sample_rate)
    out = resample(audio.float(), sample_rate, rate)
    chain, skipped = runnable_effects(preset.chain_for(name), rate)
    for note in skipped:
        log.info("preset %s, stem %s: %s", preset.name, name, note)
    out = apply_chain(out, rate, chain)
    target = loudness_lufs if loudness_lufs is not None else preset.loudness_lufs
    loud: LoudnessResult | None = None
    if target is not None:
        out, loud = normalize_loudness(out, rate, float(target), preset.peak_db)
    else:
        ceiling = 10 ** (preset.peak_db / 20)
        peak = float(out.abs().max()) if out.numel() else 0.0
        if peak > ceiling:
            out = out * (ceiling / peak)
    measured = integrated_loudness(out, rate)
    peak = float(out.abs().max()) if out.numel() else 0.0
    if target is not None and math.isfinite(measured) and abs(measured - float(target)) > 0.5:
        capped = loud is not None and float(target) - loud.measured_lufs > 30.0
        why = "the gain is capped at +30 dB" if capped else f"the {preset.peak_db:g} dBFS peak ceiling held it down"
        log.warning("stem %s ends at %.1f LUFS, not the %.1f LUFS target: %s (recorded in the manifest)",
                    name, measured, float(target), why)
    return RenderedStem(
        name=name, audio=out, sample_rate=rate, loudness=loud, preset=preset.name,
        target_lufs=None if target is None else float(target), loudness_lufs=_finite(measured),
        peak_dbfs=_finite(20 * math.log10(peak)) if peak > 0 else None, skipped_effects=skipped,
    )


def project_rate(layout: Any, sample_rate: int | None = None) -> int:
    """The rate to render a take at: ``sample_rate``, else the project's (:func:`~dr2studio.audio.daw.project_sample_rate`), else 48 kHz."""
    from dr2studio.audio.daw import project_sample_rate

    rate = int(sample_rate or project_sample_rate(layout) or DEFAULT_PROJECT_RATE)
    if not (8000 <= rate <= 192000):
        raise ValueError(f"project sample rate must be in [8000, 192000] Hz, got {rate}")
    return rate


def render_take(
    layout: Any,
    take: str,
    sources: Mapping[str, torch.Tensor],
    source_rate: int,
    presets: Callable[[str], EffectPreset],
    info: Mapping[str, Any],
    *,
    sample_rate: int | None = None,
    loudness_lufs: float | None = None,
    after_stem: Callable[[str], None] | None = None,
    options: TakeRequest | None = None,
    song_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Render ``{stem: audio [C, N]}`` at ``source_rate`` into ``layout`` as one take; returns its manifest entry.

    The one path from audio to ``dr2studio.json`` for the CLI, the Python API and the bridge, so every
    take has the same entry shape. ``presets(stem)`` picks each stem's preset; ``after_stem`` is called
    after each stem is rendered (progress, cancellation).

    ``options`` (:class:`~dr2studio.requests.TakeRequest`): tempo conform runs first, on every stem alike
    (analysed on the mix; target: ``conform_bpm``, else ``info["bpm"]``; ``song_settings`` tell whether a
    model's tempo clock already played the song on the grid), then the effects; MIDI is transcribed from
    the rendered stems and written with the take (docs/conform_and_midi.md).
    """
    from dr2studio.audio.daw import write_take

    if loudness_lufs is not None and not (-60.0 <= loudness_lufs <= 0.0):
        raise ValueError(f"loudness target must be in [-60, 0] LUFS, got {loudness_lufs}")
    rate = project_rate(layout, sample_rate)
    opts = options if options is not None else TakeRequest()
    opts.validate()
    timesig = _timesig(info.get("timesig"))
    sources, plan = _conformed(sources, source_rate, opts, info, song_settings, timesig[0])
    rendered: dict[str, RenderedStem] = {}
    for name, audio in sources.items():
        rendered[name] = render_stem(name, audio, source_rate, presets(name), target_sample_rate=rate,
                                     loudness_lufs=loudness_lufs)
        if after_stem is not None:
            after_stem(name)
    length = max(r.audio.shape[-1] for r in rendered.values())
    details = {
        **info,
        "sample_rate": rate,
        "source_sample_rate": int(source_rate),
        "duration_seconds": length / rate,
        "stems": {n: r.manifest() for n, r in rendered.items()},
        "conform": plan.manifest() if plan is not None else None,
    }
    midi: dict[str, bytes] = {}
    if opts.midi:
        from dr2studio.audio.transcribe import transcribe_stems

        bpm = plan.target_bpm if plan is not None else _project_bpm(opts, info, song_settings)
        midi = transcribe_stems({n: (r.audio, r.sample_rate) for n, r in rendered.items()}, bpm=bpm, timesig=timesig)
    return write_take(layout, take, {n: (r.audio, r.sample_rate) for n, r in rendered.items()}, details, midi=midi)


def _timesig(value: Any) -> tuple[int, int]:
    """A take's meter from its ``info["timesig"]`` (``[num, den]``), else 4/4."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return 4, 4


def _project_bpm(opts: TakeRequest, info: Mapping[str, Any], settings: Mapping[str, Any] | None) -> float:
    """The tempo a take's MIDI is mapped to: the conform target, the session's, the song's, else 120 bpm."""
    for value in (opts.conform_bpm, info.get("bpm"), (settings or {}).get("tempo_bpm")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return 120.0


def _conformed(sources: Mapping[str, torch.Tensor], rate: int, opts: TakeRequest, info: Mapping[str, Any],
               settings: Mapping[str, Any] | None, beats_per_bar: int) -> tuple[Mapping[str, torch.Tensor], Any]:
    """``sources`` conformed alike (analysed on the mix) and the plan, or unchanged and None when conform is off.

    A take with no steady beat fails when conform was asked for, and is delivered unconformed (with a
    warning) when conform was only the default.
    """
    from dr2studio.audio.conform import ConformError, apply_conform, conform_wanted, plan_conform

    target = opts.conform_bpm if opts.conform_bpm is not None else info.get("bpm")
    if not conform_wanted(opts.conform, target, settings):
        return sources, None
    mix = sources["mix"] if "mix" in sources else next(iter(sources.values()))
    try:
        plan = plan_conform(mix, rate, float(target), position_seconds=float(info.get("position_seconds") or 0.0),
                            beats_per_bar=beats_per_bar, source_bpm=opts.source_bpm)
    except ConformError as exc:
        if opts.conform or opts.source_bpm is not None:  # asked for (a stated source tempo asks for it too)
            raise
        log.warning("take not conformed to %g bpm: %s", float(target), exc)
        return sources, None
    log.info("conform: %.2f -> %.2f bpm (length x%.4f), first downbeat at %.3f s, key %s", plan.detected_bpm,
             plan.target_bpm, plan.stretch_ratio, plan.first_downbeat_seconds, plan.key)
    return {name: apply_conform(audio.float(), rate, plan) for name, audio in sources.items()}, plan


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
    origin: str = "api",
    options: TakeRequest | None = None,
) -> dict[str, Any]:
    """Render ``song`` (a :class:`~dr2studio.song.Song`) into a DAW project and record it in the manifest.

    Stems are the mix plus, with ``separate``, the Demucs sources; each is resampled to ``sample_rate``
    (default: the project's rate, else 48 kHz), goes through the preset's chain and loudness
    normalisation, and is written as 24-bit WAV. ``position`` is the take's start on the timeline in
    seconds. Everything is checked (project folder, manifest, preset, rates) before anything is
    written. Returns the manifest entry of the new take (docs/manifest.md). ``options`` asks for tempo
    conform and MIDI (:class:`~dr2studio.requests.TakeRequest`; docs/conform_and_midi.md).
    """
    from dr2studio.audio.daw import check_project_writable, project_layout
    from dr2studio.audio.effects import load_preset

    layout = project_layout(project, daw)  # links out of the project are refused here
    check_project_writable(layout)  # a read-only project fails before separation, not at the first WAV
    chosen = preset if isinstance(preset, EffectPreset) else load_preset(preset)
    project_rate(layout, sample_rate)  # a bad rate fails before separation runs
    if loudness_lufs is not None and not (-60.0 <= loudness_lufs <= 0.0):
        raise ValueError(f"loudness target must be in [-60, 0] LUFS, got {loudness_lufs}")
    if isinstance(position, bool) or not (float(position) >= 0.0):
        raise ValueError(f"timeline position must be >= 0 seconds, got {position}")
    from dr2studio.audio.conform import conform_wanted

    options = options if options is not None else TakeRequest()
    options.validate()  # a tempo of 0 fails here, before separation
    settings = song.settings if isinstance(getattr(song, "settings", None), dict) else {}
    conform_wanted(options.conform, options.conform_bpm, settings)  # conform asked for without a tempo fails now
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
    source_path = getattr(song, "path", None)
    info = {
        "origin": origin,
        "source": str(Path(source_path).resolve()) if source_path else None,
        "position_seconds": float(position),
        "lyrics": song.lyrics,
        "seed": song.seed,
        "settings": song.settings,
        "model": song.model,
        "preset": chosen.name,
        "separated": bool(separate),
    }
    name = take or (Path(source_path).stem if source_path else "take")
    if options.conform_bpm is not None:
        info["bpm"] = options.conform_bpm
    return render_take(layout, name, sources, song.sample_rate, lambda _stem: chosen, info, sample_rate=sample_rate,
                       loudness_lufs=loudness_lufs, after_stem=lambda stem: tick(f"render {stem}"), options=options,
                       song_settings=settings)
