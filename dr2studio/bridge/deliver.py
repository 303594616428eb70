"""Put a finished take into the DAW project: the part of the song a job changed, as stems + manifest.

The folder comes from :func:`dr2studio.audio.daw.project_layout`; before anything is written, every
folder on the way is created or checked with :func:`~dr2studio.bridge.paths.ensure_dir_inside`, so a
``Samples`` or ``Media`` link that points out of the project stops the job instead of writing there.
Stems are rendered with :func:`dr2studio.audio.stems.render_stem` and written by
:func:`dr2studio.audio.daw.write_take` (staging folder + rename, manifest under a lock).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from dr2studio.bridge.paths import PathError, ensure_dir_inside
from dr2studio.bridge.session import BridgeError, Session

log = logging.getLogger(__name__)

__all__ = ["DeliveredFile", "song_region", "crop_song", "changed_region", "deliver_take", "DEFAULT_PRESET",
           "TakeWritten", "take_written"]

DEFAULT_PRESET = "clean"


@dataclasses.dataclass(frozen=True)
class DeliveredFile:
    stem: str
    path: Path
    sample_rate: int


def _audio(song: Any) -> torch.Tensor:
    audio = song.audio
    if not isinstance(audio, torch.Tensor):
        audio = torch.as_tensor(audio)
    return audio.float().reshape(-1, audio.shape[-1])


@dataclasses.dataclass(frozen=True)
class TakeWritten:
    """A take now complete in the project, for whatever puts it on the DAW's timeline (the Ableton
    Remote Script, a DAW action): its ``files`` (one WAV per stem), the ``.mid`` files its manifest
    entry lists (``midi``: ``{stem: path relative to the project}``), its ``folder`` and position."""

    job_id: str
    project: Path
    daw: str
    position_beats: float
    position_seconds: float
    files: tuple[DeliveredFile, ...]
    folder: Path
    midi: dict[str, str] = dataclasses.field(default_factory=dict)


def take_written(session: Session, job_id: str, files: list[DeliveredFile], position_beats: float,
                 position_seconds: float) -> TakeWritten:
    """The :class:`TakeWritten` of a take :func:`deliver_take` just wrote (its manifest entry read back
    for the ``midi`` field; an unreadable manifest only leaves that empty)."""
    from dr2studio.audio.daw import ProjectError, project_layout, read_manifest

    folder = Path(files[0].path).parent if files else Path(session.project)
    midi: dict[str, str] = {}
    try:
        entries = read_manifest(project_layout(session.project, session.daw)).get("takes", [])
        for entry in reversed(entries):
            if entry.get("job") == job_id and entry.get("take") == folder.name:
                midi = {str(k): str(v) for k, v in (entry.get("midi") or {}).items()}
                break
    except (ProjectError, OSError, ValueError, AttributeError) as exc:
        log.warning("could not read the manifest entry of take %s: %s", job_id, exc)
    return TakeWritten(job_id, Path(session.project), session.daw, float(position_beats), float(position_seconds),
                       tuple(files), folder, midi)


def song_region(song: Any, start_s: float, end_s: float | None) -> tuple[tuple[torch.Tensor, int], float]:
    """Audio ``[C, n]`` of ``song`` between ``start_s`` and ``end_s`` (``None`` = the end), with the
    start snapped to a whole sample; returns ``((audio, rate), start_seconds)``."""
    audio, rate = _audio(song), int(song.sample_rate)
    a = max(0, min(audio.shape[-1], int(round(start_s * rate))))
    b = audio.shape[-1] if end_s is None else max(a, min(audio.shape[-1], int(round(end_s * rate))))
    if b <= a:
        raise BridgeError(f"the job produced no audio between {start_s:.2f} s and {end_s} s", 500)
    return (audio[:, a:b].contiguous(), rate), a / rate


def crop_song(song: Any, seconds: float) -> Any:
    """``song`` cut at ``seconds``, rounded down to a latent frame, with its latents cut to match, so
    ``extend`` continues from there. The lyric context (tokens) is kept whole."""
    from dr2studio.song import Edit, Song

    if not getattr(song, "has_latents", False):
        raise BridgeError("the song has no latents to cut; continue from its end instead", 409)
    audio, latents = song.audio, song.latents
    frames = latents.shape[1]
    per_frame = audio.shape[-1] / frames  # samples per latent frame; fractional at a producer's rate (44.1 kHz)
    if frames < 1 or per_frame < 1:
        raise BridgeError(f"song audio ({audio.shape[-1]} samples) does not match its {frames} latent frames", 409)
    keep = int(seconds * song.sample_rate / per_frame)
    if keep < 1:
        raise BridgeError(f"cannot continue from {seconds:.2f} s: less than one latent frame of song before it", 409)
    cut = round(keep * per_frame)
    settings = song.settings_with_edit(Edit(kind="crop", end=cut / song.sample_rate))
    return Song(audio=audio[:, :cut].clone(), sample_rate=song.sample_rate, latents=latents[:, :keep].clone(),
                tokens=song.tokens, lyrics=song.lyrics, style=song.style, seed=song.seed, settings=settings,
                model=song.model, subtype=getattr(song, "subtype", None))


def changed_region(kind: str, song: Any) -> tuple[float, float | None]:
    """Seconds ``(start, end)`` of ``song`` that a job of ``kind`` produced (``end`` None = to the end):
    all of a generated song, the continuation from the splice (crossfade included) after ``extend``,
    the regenerated span plus both crossfades after ``infill``."""
    if kind == "generate":
        return 0.0, None
    edit = song.last_edit
    if edit is None or edit.kind != kind:
        raise BridgeError(f"the {kind} result carries no edit record; cannot place it on the timeline", 500)
    if kind == "extend" and edit.splice is not None:
        return float(edit.splice), None
    if kind == "infill" and edit.start is not None and edit.end is not None:
        return float(edit.start) - float(edit.crossfade_in or 0.0), float(edit.end) + float(edit.crossfade_out or 0.0)
    raise BridgeError(f"the {kind} result's edit record has no span; cannot place it on the timeline", 500)


_SEPARATORS: dict[str | None, Any] = {}
_SEPARATOR_LOCK = threading.Lock()


def _load_separator(weights: str | None) -> Any:
    """Hybrid Demucs, loaded once per weights file for the life of the bridge."""
    from dr2studio.audio.stems import SeparationError, load_separator

    with _SEPARATOR_LOCK:
        if weights not in _SEPARATORS:
            try:
                _SEPARATORS[weights] = load_separator(weights)
            except SeparationError as exc:
                raise BridgeError(str(exc), 500) from exc
        return _SEPARATORS[weights]


def _keep_song(session: Session, job_id: str, song: Any) -> Path | None:
    """Save the job's song (audio + sidecar) as ``<project>/.dr2studio/takes/<job>-<id>.wav``: a fresh name, as
    job ids repeat across bridge runs. A song without latents is not kept (there is nothing to train on)."""
    if not getattr(song, "has_latents", False) or not hasattr(song, "save"):
        return None
    import uuid

    from dr2studio.bridge.persist import STATE_DIR

    try:
        folder = ensure_dir_inside(session.project, f"{STATE_DIR}/takes")
    except PathError as exc:
        raise BridgeError(f"cannot keep the take's song in the project: {exc}", 403) from exc
    path = folder / f"{job_id}-{uuid.uuid4().hex[:8]}.wav"
    song.save(path)
    return path


def deliver_take(session: Session, job_id: str, region: tuple[torch.Tensor, int], *, position_beats: float,
                 position_seconds: float, request: Any, check: Callable[[], None] = lambda: None,
                 separate: bool = False, separator: Any = None, sample_rate: int | None = None,
                 preset: str = DEFAULT_PRESET, loudness_lufs: float | None = None,
                 separator_weights: str | None = None, seed: int | None = None, song: Any = None,
                 take_options: Any = None) -> list[DeliveredFile]:
    """Render ``region`` (audio ``[C, n]``, rate) as stems into the session's project; one file per stem.

    ``separate`` adds vocals / drums / bass / other (Hybrid Demucs). Each stem uses the session's fx
    preset for it, else ``preset``. ``check`` is called between steps to honour cancellation. The take
    is written by :func:`dr2studio.audio.stems.render_take`, the same writer as ``dr2studio stems``, so
    its manifest entry has the same shape (docs/manifest.md). ``song`` (the whole song the job made) is
    kept with its sidecar under ``.dr2studio/takes/`` and linked from the entry's ``song`` field, so the
    take's latents and conditions can be found again (``dr2studio prefs export``). ``take_options`` (a
    :class:`~dr2studio.requests.TakeRequest`) asks for tempo conform to the session's tempo and MIDI.
    """
    from dr2studio.audio.daw import ProjectError, project_layout
    from dr2studio.audio.effects import load_preset
    from dr2studio.audio.stems import render_take

    audio, rate = region
    try:
        layout = project_layout(session.project, session.daw)
        ensure_dir_inside(layout.root, layout.takes_dir.relative_to(layout.root))
    except (ProjectError, PathError, ValueError) as exc:
        raise BridgeError(f"cannot write into the project: {exc}", 403) from exc
    sources: dict[str, torch.Tensor] = {"mix": audio}
    if separate:
        check()
        sep = separator if separator is not None else _load_separator(separator_weights)
        sources.update(sep.separate(audio, rate))
    from dr2studio.bridge.persist import check_preset_name

    for name in sources:  # the session's choices are names of shipped presets, never paths (the CLI's may be)
        if name in session.fx:
            check_preset_name(name, session.fx[name])
    fx = {name: session.fx.get(name, preset) for name in sources}
    presets = {name: load_preset(choice) for name, choice in fx.items()}
    check()
    info = {
        "origin": "bridge",
        "job": job_id,
        "kind": getattr(request, "kind", None),
        "position_beats": float(position_beats),
        "position_seconds": float(position_seconds),
        "bpm": session.bpm,
        "timesig": list(session.timesig),
        "lyrics": getattr(request, "lyrics", None),
        "style": getattr(request, "style", None),
        "seed": seed,
        "preset": str(preset),
        "separated": bool(separate),
        "settings": {"steps": getattr(request, "steps", None), "cfg_strength": getattr(request, "cfg_strength", None),
                     "fx": fx},
    }
    kept = _keep_song(session, job_id, song) if song is not None else None
    if kept is not None:
        info["song"] = kept.relative_to(layout.root).as_posix()
    try:
        entry = render_take(layout, job_id, sources, rate, presets.__getitem__, info, sample_rate=sample_rate,
                            loudness_lufs=loudness_lufs, after_stem=lambda _stem: check(), options=take_options,
                            song_settings=getattr(song, "settings", None))
    except BaseException:
        if kept is not None:  # no song file without its take
            from dr2studio.song import sidecar_path

            for path in (kept, sidecar_path(kept)):
                path.unlink(missing_ok=True)
        raise
    rate_out = int(entry["sample_rate"])
    return [DeliveredFile(stem, layout.root / rel, rate_out) for stem, rel in entry["files"].items()]
