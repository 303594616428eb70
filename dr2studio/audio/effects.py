"""Effect presets (plain JSON files), pedalboard chains and loudness normalisation.

A preset is a JSON file that users can copy and edit::

    {"name": "balanced", "description": "...", "loudness_lufs": -14.0, "peak_db": -1.0,
     "chain": [{"effect": "highpass", "cutoff_frequency_hz": 30}, ...],
     "stems": {"vocals": [...], "drums": [...]}}

``chain`` applies to every stem; ``stems`` optionally replaces it for one stem name. Effect names
and their parameters (pedalboard's own keyword names and units) are listed in :data:`EFFECTS`.
Shipped presets live in ``dr2studio/presets/``; ``load_preset`` takes a shipped name or a file path.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pedalboard
import torch
import torchaudio.functional as AF

from dr2studio.config import ConfigError, JsonConfig

__all__ = [
    "EFFECTS",
    "EffectPreset",
    "LoudnessResult",
    "load_preset",
    "list_presets",
    "runnable_effects",
    "build_chain",
    "apply_chain",
    "integrated_loudness",
    "normalize_loudness",
]

log = logging.getLogger(__name__)

_FREQ = (10.0, 40000.0)
_GAIN = (-48.0, 48.0)
_Q = (0.05, 20.0)

#: effect name -> (pedalboard class name, {parameter: (min, max)})
EFFECTS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "highpass": ("HighpassFilter", {"cutoff_frequency_hz": _FREQ}),
    "lowpass": ("LowpassFilter", {"cutoff_frequency_hz": _FREQ}),
    "compressor": (
        "Compressor",
        {"threshold_db": (-80.0, 0.0), "ratio": (1.0, 100.0), "attack_ms": (0.01, 1000.0), "release_ms": (1.0, 5000.0)},
    ),
    "peak": ("PeakFilter", {"cutoff_frequency_hz": _FREQ, "gain_db": _GAIN, "q": _Q}),
    "lowshelf": ("LowShelfFilter", {"cutoff_frequency_hz": _FREQ, "gain_db": _GAIN, "q": _Q}),
    "highshelf": ("HighShelfFilter", {"cutoff_frequency_hz": _FREQ, "gain_db": _GAIN, "q": _Q}),
    "reverb": (
        "Reverb",
        {"room_size": (0.0, 1.0), "damping": (0.0, 1.0), "wet_level": (0.0, 1.0), "dry_level": (0.0, 1.0), "width": (0.0, 1.0)},
    ),
    "limiter": ("Limiter", {"threshold_db": (-60.0, 0.0), "release_ms": (1.0, 5000.0)}),
    "gain": ("Gain", {"gain_db": _GAIN}),
}



def _check_effect(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or "effect" not in spec:
        raise ConfigError(f"{where}: each effect must be an object with an 'effect' key, got {spec!r}")
    name = spec["effect"]
    if name not in EFFECTS:
        raise ConfigError(f"{where}: unknown effect {name!r} (known: {', '.join(EFFECTS)})")
    allowed = EFFECTS[name][1]
    for key, value in spec.items():
        if key == "effect":
            continue
        if key not in allowed:
            raise ConfigError(f"{where}: effect {name!r} has no parameter {key!r} (parameters: {', '.join(allowed)})")
        lo, hi = allowed[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
            raise ConfigError(f"{where}: {name}.{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return spec


@dataclasses.dataclass
class EffectPreset(JsonConfig):
    """One preset file: a default chain, optional per-stem chains, a loudness target and a peak ceiling."""

    name: str = "unnamed"
    description: str = ""
    chain: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stems: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    loudness_lufs: float | None = -14.0
    peak_db: float = -1.0

    def validate(self) -> None:
        if not isinstance(self.chain, list):
            raise ConfigError(f"preset {self.name!r}: 'chain' must be a list of effects")
        for i, spec in enumerate(self.chain):
            _check_effect(spec, f"preset {self.name!r} chain[{i}]")
        if not isinstance(self.stems, dict):
            raise ConfigError(f"preset {self.name!r}: 'stems' must map a stem name to a list of effects")
        for stem, chain in self.stems.items():
            if not isinstance(chain, list):
                raise ConfigError(f"preset {self.name!r}: stems.{stem} must be a list of effects")
            for i, spec in enumerate(chain):
                _check_effect(spec, f"preset {self.name!r} stems.{stem}[{i}]")
        if self.loudness_lufs is not None and not (-60.0 <= float(self.loudness_lufs) <= 0.0):
            raise ConfigError(f"preset {self.name!r}: loudness_lufs must be in [-60, 0] LUFS, got {self.loudness_lufs}")
        if not (-30.0 <= float(self.peak_db) <= 0.0):
            raise ConfigError(f"preset {self.name!r}: peak_db must be in [-30, 0] dBFS, got {self.peak_db}")

    def chain_for(self, stem: str) -> list[dict[str, Any]]:
        """The effect list for one stem name (its own entry, else the default chain)."""
        return self.stems.get(stem, self.chain)


def _preset_folder() -> Any:
    return resources.files("dr2studio") / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with dr2studio."""
    folder = _preset_folder()
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str | os.PathLike) -> EffectPreset:
    """A shipped preset by name (``"balanced"``) or a preset JSON file by path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() == ".json" or "/" in text or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"preset file not found: {path}")
        return EffectPreset.load(path)
    shipped = _preset_folder() / f"{text}.json"
    if not shipped.is_file():
        raise ConfigError(f"unknown preset {text!r} (shipped presets: {', '.join(list_presets())}; or give a .json path)")
    try:
        return EffectPreset.from_dict(json.loads(shipped.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:  # pragma: no cover - shipped files are tested
        raise ConfigError(f"shipped preset {text!r} is not valid JSON: {exc}") from exc


def _cannot_run(spec: dict[str, Any], sample_rate: int) -> str | None:
    """Why ``spec`` cannot run at ``sample_rate`` (a filter frequency at or above Nyquist), else ``None``."""
    freq = spec.get("cutoff_frequency_hz")
    if freq is not None and float(freq) >= sample_rate / 2:
        return f"cutoff {float(freq):g} Hz must be below Nyquist ({sample_rate / 2:g} Hz)"
    return None


def runnable_effects(effects: list[dict[str, Any]], sample_rate: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Split an effect list into what can run at ``sample_rate`` and one note per effect that cannot.

    Why: a preset written for 48 kHz must still render a project at a low rate; an EQ band above
    Nyquist has nothing to act on, so it is left out and the note goes into the manifest.
    """
    kept: list[dict[str, Any]] = []
    notes: list[str] = []
    for i, spec in enumerate(effects):
        _check_effect(spec, f"effect {i}")
        reason = _cannot_run(spec, sample_rate)
        if reason is None:
            kept.append(spec)
        else:
            notes.append(f"{spec['effect']} (effect {i}) skipped at {sample_rate} Hz: {reason}")
    return kept, notes


def build_chain(effects: list[dict[str, Any]], sample_rate: int) -> pedalboard.Pedalboard:
    """A pedalboard for one effect list; filter frequencies must sit below Nyquist (see :func:`runnable_effects`)."""
    plugins = []
    for i, spec in enumerate(effects):
        _check_effect(spec, f"effect {i}")
        cls_name, _ = EFFECTS[spec["effect"]]
        params = {k: float(v) for k, v in spec.items() if k != "effect"}
        reason = _cannot_run(spec, sample_rate)
        if reason is not None:
            raise ConfigError(f"effect {i} ({spec['effect']}): {reason}")
        plugins.append(getattr(pedalboard, cls_name)(**params))
    return pedalboard.Pedalboard(plugins)


def apply_chain(audio: torch.Tensor, sample_rate: int, effects: list[dict[str, Any]]) -> torch.Tensor:
    """Run ``audio [C, N]`` through an effect list; returns float32 ``[C, N]`` (reverb tails are cut)."""
    if not effects:
        return audio
    board = build_chain(effects, sample_rate)
    out = board(audio.detach().cpu().numpy().astype(np.float32, copy=False), float(sample_rate))
    return torch.from_numpy(np.ascontiguousarray(out[:, : audio.shape[1]]))


@dataclasses.dataclass
class LoudnessResult:
    """What :func:`normalize_loudness` measured and did (dB values; ``-inf`` for silence)."""

    measured_lufs: float
    gain_db: float
    output_lufs: float
    peak_db: float


_MIN_BLOCK_S = 0.4  # one BS.1770 gating block


def integrated_loudness(audio: torch.Tensor, sample_rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness of ``[C, N]`` in LUFS (``-inf`` for silence).

    K-weighting, 400 ms blocks with 75 % overlap, absolute (-70 LUFS) and relative (-10 LU) gates,
    via ``torchaudio.functional.loudness``. Clips shorter than one block are zero-padded to one.
    """
    audio = audio.detach().to("cpu", torch.float64)
    if audio.shape[0] > 5:
        raise ValueError(f"loudness is defined for at most 5 channels, got {audio.shape[0]}")
    need = int(round(_MIN_BLOCK_S * sample_rate))
    if audio.shape[1] < need:
        audio = torch.nn.functional.pad(audio, (0, need - audio.shape[1]))
    if float(audio.abs().max()) == 0.0:
        return -math.inf
    value = float(AF.loudness(audio, int(sample_rate)))
    return value if math.isfinite(value) else -math.inf


def _peak_db(audio: torch.Tensor) -> float:
    peak = float(audio.abs().max()) if audio.numel() else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def normalize_loudness(
    audio: torch.Tensor,
    sample_rate: int,
    target_lufs: float = -14.0,
    peak_db: float = -1.0,
    max_gain_db: float = 30.0,
) -> tuple[torch.Tensor, LoudnessResult]:
    """Gain ``audio [C, N]`` to ``target_lufs``, then pull the sample peak under ``peak_db``.

    Silence is left alone; the gain is capped at ``max_gain_db`` so a near-silent stem is not blown
    up into noise. When the peak ceiling wins, the output ends below the target (logged).
    """
    if not (-60.0 <= target_lufs <= 0.0):
        raise ValueError(f"loudness target must be in [-60, 0] LUFS, got {target_lufs}")
    measured = integrated_loudness(audio, sample_rate)
    gain_db = 0.0 if not math.isfinite(measured) else min(target_lufs - measured, max_gain_db)
    out = audio * (10 ** (gain_db / 20))
    peak = _peak_db(out)
    if peak > peak_db:
        trim = peak_db - peak
        out = out * (10 ** (trim / 20))
        gain_db += trim
        log.info("peak ceiling %.1f dBFS lowered the gain by %.2f dB (loudness below target)", peak_db, -trim)
    result = LoudnessResult(
        measured_lufs=measured,
        gain_db=gain_db,
        output_lufs=measured + gain_db if math.isfinite(measured) else -math.inf,
        peak_db=_peak_db(out),
    )
    return out, result
