"""The ``<project>/dr2studio.json`` schema: one take-entry shape for the CLI, the API and the bridge.

Every writer goes through :func:`take_entry` (defaults, type checks, legacy keys renamed) and
:func:`write_manifest` (temporary file in the project folder, then ``os.replace``). Manifests of an
older schema are upgraded on read (:func:`upgrade_manifest`) and saved in the current schema on the
next write, so no take recorded before is lost. The fields and their units are in docs/manifest.md.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dr2studio.config import atomic_write_text

__all__ = [
    "MANIFEST_FORMAT",
    "SCHEMA_VERSION",
    "ManifestError",
    "empty_manifest",
    "upgrade_manifest",
    "take_entry",
    "load_manifest",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "dr2studio-manifest"
#: 1: the CLI's ``position``/``duration``/``loudness`` and the bridge's ``position_seconds`` entries side by side;
#: 2: one entry shape for every writer (docs/manifest.md).
SCHEMA_VERSION = 2
ORIGINS = ("cli", "bridge", "api")

#: every take field with its default (``take``, ``created`` and ``files`` have none: the writer sets them).
TAKE_DEFAULTS: dict[str, Any] = {
    "origin": "api",
    "position_seconds": 0.0,
    "position_beats": None,
    "bpm": None,
    "timesig": None,
    "duration_seconds": None,
    "sample_rate": None,
    "source_sample_rate": None,
    "source": None,
    "job": None,
    "kind": None,
    "lyrics": None,
    "style": None,
    "seed": None,
    "model": None,
    "settings": {},
    "preset": None,
    "separated": False,
    "stems": {},
    "conform": None,  # tempo conform (dr2studio.audio.conform.ConformPlan.manifest) or null
    "midi": {},  # stem -> .mid path relative to the project (dr2studio.audio.transcribe)
}


class ManifestError(ValueError):
    """The manifest cannot be read, is not a dr2studio manifest, or was written by a newer schema."""


def empty_manifest(daw: str) -> dict[str, Any]:
    """A manifest with no takes (``sample_rate`` is set by the first take)."""
    return {"format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION, "daw": daw, "sample_rate": None, "takes": []}


def _jsonable(value: Any) -> Any:
    """Tensors, paths and tuples become plain JSON; NaN and infinities become ``null``."""
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _upgrade_take_v1(take: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 entry (CLI or bridge flavour) in schema 2; keys it does not know are kept."""
    out = dict(take)
    bridge = out.get("source") == "bridge" or "job" in out
    out.setdefault("origin", "bridge" if bridge else "cli")
    if out.get("source") == "bridge":
        out["source"] = None
    if "position" in out:
        legacy = out.pop("position")
        out.setdefault("position_seconds", legacy)
    if "duration" in out:
        out.setdefault("duration_seconds", out.pop("duration"))
    stems = dict(out.get("stems") or {})
    files = out.get("files") if isinstance(out.get("files"), dict) else {}
    loudness = out.pop("loudness", None)
    loudness = loudness if isinstance(loudness, dict) else {}
    fx = (out.get("settings") or {}).get("fx") if isinstance(out.get("settings"), dict) else None
    fx = fx if isinstance(fx, dict) else {}
    for stem in files:
        info = dict(stems.get(stem) or {})
        info.setdefault("preset", fx.get(stem, out.get("preset")))
        info.setdefault("target_lufs", None)  # schema 1 did not record it
        info.setdefault("loudness_lufs", loudness.get(stem))
        info.setdefault("peak_dbfs", None)
        info.setdefault("skipped_effects", [])
        stems[stem] = info
    out["stems"] = stems
    return out


def upgrade_manifest(data: Any, where: str = "manifest") -> dict[str, Any]:
    """``data`` (a parsed manifest of any known schema) in the current schema; raises :class:`ManifestError`.

    Schema 1 (``version: 1``, or no version at all) is converted take by take; nothing is dropped.
    A newer schema is refused so that an older dr2studio does not rewrite what it does not understand.
    """
    if not isinstance(data, dict) or not isinstance(data.get("takes"), list):
        raise ManifestError(f"{where} is not a dr2studio manifest (no 'takes' list)")
    version = data.get("schema_version", data.get("version", 1))
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ManifestError(f"{where}: bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{where} has schema_version {version}, newer than this dr2studio understands ({SCHEMA_VERSION}); upgrade dr2studio"
        )
    out = copy.deepcopy(data)
    if version == 1:
        out.pop("version", None)
        out["takes"] = [_upgrade_take_v1(t) if isinstance(t, dict) else t for t in out["takes"]]
        log.info("%s: upgraded schema 1 -> %d (%d takes kept)", where, SCHEMA_VERSION, len(out["takes"]))
    out["format"] = MANIFEST_FORMAT
    out["schema_version"] = SCHEMA_VERSION
    if out.get("sample_rate") is None:
        rates = [t.get("sample_rate") for t in out["takes"] if isinstance(t, dict) and isinstance(t.get("sample_rate"), int)]
        out["sample_rate"] = rates[0] if rates else None
    return out


def take_entry(take: str, created: str, files: Mapping[str, str], info: Mapping[str, Any]) -> dict[str, Any]:
    """One take in the current schema: ``info`` over :data:`TAKE_DEFAULTS`, legacy keys renamed, checked.

    Why one function: the CLI, the Python API and the bridge all record takes, and the REAPER script
    reads ``position_seconds`` from every one of them.
    """
    raw = dict(_jsonable(dict(info)))
    if "position" in raw or "duration" in raw or "loudness" in raw:
        raw = _upgrade_take_v1({**raw, "files": dict(files)})
        raw.pop("files", None)
    entry: dict[str, Any] = {"take": take, "created": created}
    for key, default in TAKE_DEFAULTS.items():
        entry[key] = raw.pop(key, copy.deepcopy(default))
    entry.update(raw)  # extra, caller-specific fields are kept as they are
    entry["files"] = dict(files)
    if entry["origin"] not in ORIGINS:
        raise ManifestError(f"take origin must be one of {', '.join(ORIGINS)}, got {entry['origin']!r}")
    position = entry["position_seconds"]
    if isinstance(position, bool) or not isinstance(position, (int, float)) or not position >= 0:
        raise ManifestError(f"take position_seconds must be a number >= 0, got {position!r}")
    entry["position_seconds"] = float(position)
    if not isinstance(entry["stems"], dict):
        raise ManifestError("take 'stems' must map a stem name to its render details")
    if entry["conform"] is not None and not isinstance(entry["conform"], dict):
        raise ManifestError("take 'conform' must be null or an object (docs/manifest.md)")
    if not isinstance(entry["midi"], dict):
        raise ManifestError("take 'midi' must map a stem name to its .mid file")
    return entry


def load_manifest(path: Path, daw: str) -> dict[str, Any]:
    """The manifest at ``path`` in the current schema (an empty one when the file does not exist)."""
    if not path.exists():
        return empty_manifest(daw)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    return upgrade_manifest(data, f"manifest {path}")


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest`` atomically (temporary file next to it, then rename): readers never see half a file."""
    data = upgrade_manifest(_jsonable(dict(manifest)), f"manifest {path}")
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
