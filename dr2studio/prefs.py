"""Preference candidates from a producer's projects: rated (or scored) takes -> the sample lines CPPO trains on.

``dr2studio prefs export PROJECT... -o candidates.jsonl`` reads, per project, the manifest's takes, their
ratings (:mod:`dr2studio.ratings`) and automatic scores (``<project>/dr2studio.scores.jsonl``, written by
``dr2studio eval``), finds each take's song file and sidecar (the latents the model made, the lyric tokens
and the style vector it was conditioned on), and writes one JSON line per usable take in the sample format
``training/cppo.py`` reads (``load_candidates``): ``prompt``, ``tokens``, ``style_embedding``,
``latents`` and ``labels`` in [0, 1] for the dimensions it has.

Labels: a dimension a producer rated takes the ratings (mean stars over sources, 1 -> 0, 5 -> 1; with
``min_stars``, 1 when the mean reaches it, else 0); a dimension nobody rated takes the take's newest
automatic score. A take pairs in each CPPO group whose two dimensions it has labels for (the signal
scorer gives no lyric accuracy, so signal-scored takes pair on style + quality only); a take with neither
group's labels, without a song file or sidecar, or whose sidecar comes from another model than the one to
train, is left out, and the report says why. Takes
conditioned on the same lyric tokens and style vector share a ``prompt``: pairs form only within one.

Output is all or nothing: the tensors go to a fresh ``<name>.<id>.latents/`` folder beside the JSONL
(paths in the JSONL are relative to it), the JSONL is written atomically after it, and the folder of an
earlier export of the same name is removed only then.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch

from dr2studio.atomic import atomic_folder, atomic_path, atomic_write_text
from dr2studio.audio.daw import ProjectError, project_layout, read_manifest
from dr2studio.confine import ConfineError, check_file_target, resolve_inside, resolve_root
from dr2studio.flow.preference import (
    PAIR_GROUPS,
    Candidate,
    PreferenceError,
    build_pairs,
    labelled_for,
    pairs_per_case,
)
from dr2studio.ratings import DIMENSIONS, STARS, RatingError, RatingStore, stars_to_label
from dr2studio.requests import RequestError
from dr2studio.scoring.store import SCORES_NAME, ScoreStoreError, newest_scores

log = logging.getLogger(__name__)

__all__ = ["SCORES_NAME", "PrefsError", "LeftOut", "GroupReport", "ExportReport", "read_scores", "take_labels",
           "export_candidates"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PrefsError(ValueError):
    """Nothing can be exported: bad options, an unreadable project, ratings or scores file, or no usable take."""


@dataclasses.dataclass(frozen=True)
class LeftOut:
    project: str
    take: str
    reason: str


@dataclasses.dataclass
class GroupReport:
    """What one CPPO pair group gets from the export: ``available`` (chosen, rejected) pairs per losing case
    before balancing, ``pairs`` after (what training uses), ``note`` why there are none."""

    dimensions: tuple[str, str]
    pairs: int
    available: dict[str, int]
    note: str | None = None


@dataclasses.dataclass
class ExportReport:
    output: str
    data: str
    model: str
    fingerprint: str
    threshold: float
    min_stars: int | None
    candidates: int
    prompts: int
    label_sources: dict[str, int]
    groups: dict[str, GroupReport]
    left_out: list[LeftOut]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ labels


def read_scores(root: Path) -> dict[str, dict[str, float | None]]:
    """The newest automatic scores per take of ``<root>/dr2studio.scores.jsonl`` (empty when there is none).

    Read by :func:`dr2studio.scoring.store.newest_scores`; a line that is not a score record is an error
    naming it (labels from a corrupt file would train the model on garbage).
    """
    try:
        return {take: rec["scores"] for take, rec in newest_scores(root).items()}
    except ScoreStoreError as exc:
        raise PrefsError(str(exc)) from None


def take_labels(ratings: dict[str, float | None], scores: dict[str, float | None] | None, *,
                min_stars: int | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Labels in [0, 1] per dimension and where each came from (``rating`` or ``score``); a dimension with
    neither is absent. Ratings win: a producer's ear over a scorer's guess."""
    labels: dict[str, float] = {}
    sources: dict[str, str] = {}
    for dim in DIMENSIONS:
        stars = ratings.get(dim)
        if stars is not None:
            labels[dim] = (1.0 if stars >= min_stars else 0.0) if min_stars is not None else stars_to_label(stars)
            sources[dim] = "rating"
        elif scores and scores.get(dim) is not None:
            labels[dim] = float(scores[dim])  # type: ignore[arg-type]
            sources[dim] = "score"
    return labels, sources


# ------------------------------------------------------------------------------------------ takes


@dataclasses.dataclass
class _Sample:
    project: Path
    entry: dict[str, Any]
    song: Any
    labels: dict[str, float]
    sources: dict[str, str]
    prompt: str


def _prompt_id(tokens: torch.Tensor, style: torch.Tensor) -> str:
    """Takes made from the same lyrics and style share a prompt: the hash of the conditions themselves."""
    h = hashlib.sha256()
    h.update(tokens.to(torch.long).reshape(-1).numpy().tobytes())
    h.update(style.to(torch.float32).reshape(-1).numpy().tobytes())
    return "p-" + h.hexdigest()[:12]


def _song_path(root: Path, entry: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The take's song file: the bridge's ``song`` (inside the project), else the CLI's ``source``."""
    linked = entry.get("song")
    if isinstance(linked, str) and linked:
        try:
            return resolve_inside(root, linked, "take song file"), None
        except ConfineError as exc:
            return None, f"its song link is refused: {exc}"
    source = entry.get("source")
    if isinstance(source, str) and source:
        return Path(source), None
    return None, "no song file recorded (a bridge take made before takes kept their song, or a take rendered from audio alone)"


def _load_sample(root: Path, entry: dict[str, Any], fingerprint: str) -> tuple[Any, str | None]:
    """The take's :class:`~dr2studio.song.Song` with its sidecar state, or why it cannot be used."""
    from dr2studio.audio.io import AudioError
    from dr2studio.song import SidecarError, Song, sidecar_path

    path, why = _song_path(root, entry)
    if path is None:
        return None, why
    if not path.is_file():
        return None, f"song file {path} is missing"
    side = sidecar_path(path)
    if not side.is_file():
        return None, f"no sidecar beside {path} (nothing records the latents it was made from)"
    try:
        song = Song.load(path)
    except (SidecarError, AudioError, OSError) as exc:
        return None, f"sidecar refused: {exc}"
    if not song.has_latents:
        return None, f"sidecar {side.name} does not match {path.name} (the audio was edited or re-rendered since)"
    if song.model != fingerprint:
        return None, f"sidecar from another model ({song.model or 'unrecorded'}; exporting for {fingerprint})"
    if song.tokens is None or song.style is None:
        return None, f"sidecar {side.name} lacks the lyric tokens or the style vector"
    return song, None


def _group_reports(samples: Sequence[_Sample], threshold: float) -> dict[str, GroupReport]:
    everyone = [Candidate(str(i), s.prompt, s.labels) for i, s in enumerate(samples)]
    reports = {}
    for group, dims in sorted(PAIR_GROUPS.items()):
        candidates = labelled_for(everyone, group)  # a take pairs only in the groups it has both labels of
        available = pairs_per_case(candidates, group, threshold)
        try:
            pairs, note = len(build_pairs(candidates, group, threshold=threshold)), None
        except PreferenceError as exc:
            pairs, note = 0, str(exc)
        reports[group] = GroupReport(dims, pairs, available, note)
    return reports


# ------------------------------------------------------------------------------------------ export


def _model(model: str | os.PathLike | None) -> tuple[Path, str]:
    from dr2studio.hub import resolve_model_dir
    from dr2studio.studio import model_fingerprint

    if model is None:
        from dr2studio.demo import demo_model_dir

        model = demo_model_dir()
    model_dir = resolve_model_dir(model)
    if not (model_dir / "model.json").is_file():
        raise PrefsError(f"--model {model_dir} is not a model directory (it has no model.json)")
    return model_dir, model_fingerprint(model_dir)


def _check_output(output: str | os.PathLike) -> Path:
    out = Path(output).expanduser()
    if out.is_dir():
        raise PrefsError(f"output {out} is a folder; give a file name such as {out / 'candidates.jsonl'}")
    if not out.parent.is_dir():
        raise PrefsError(f"output folder {out.parent} does not exist")
    try:
        folder = resolve_root(out.parent, what="output folder")
        return check_file_target(folder, out.name, "candidates file")
    except ConfineError as exc:
        raise PrefsError(str(exc)) from None


def export_candidates(projects: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                      model: str | os.PathLike | None = None, threshold: float = 0.5,
                      min_stars: int | None = None) -> ExportReport:
    """Write the CPPO sample lines of every usable take of ``projects`` to ``output``; see the module doc.

    ``model``: the model the candidates will train (its fingerprint must be the sidecars'; default the
    shipped demo model). ``threshold``: the label from which a dimension counts as good, for the pair
    counts (train with the same ``label_threshold``). Raises :class:`PrefsError` before writing anything
    when no take can be used.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        raise PrefsError(f"threshold must be a number in (0, 1], got {threshold!r:.40}")
    if min_stars is not None:
        try:
            min_stars = int(STARS.check(min_stars, "min_stars"))
        except RequestError as exc:
            raise PrefsError(str(exc)) from None
    if not projects:
        raise PrefsError("name at least one project folder")
    out = _check_output(output)
    model_dir, fingerprint = _model(model)
    samples: list[_Sample] = []
    left_out: list[LeftOut] = []
    for project in projects:
        try:
            store = RatingStore(project)
            root = store.root
            takes = [t for t in read_manifest(project_layout(root)).get("takes", []) if isinstance(t, dict)]
            ratings = store.all_current()
        except (RatingError, ProjectError) as exc:
            raise PrefsError(f"project {project}: {exc}") from None
        if not takes:
            raise PrefsError(f"project {root} has no takes (no dr2studio.json, or an empty one)")
        scores = read_scores(root)
        for entry in takes:
            name = str(entry.get("take"))
            labels, sources = take_labels(ratings.get(name, {}), scores.get(name), min_stars=min_stars)
            missing = [d for d in DIMENSIONS if d not in labels]
            if len(missing) == len(DIMENSIONS):
                left_out.append(LeftOut(str(root), name, "unrated and unscored"))
                continue
            if not any(all(d in labels for d in dims) for dims in PAIR_GROUPS.values()):  # pairs in no group
                left_out.append(LeftOut(str(root), name, f"no label for {', '.join(missing)} (not rated, not scored)"))
                continue
            song, why = _load_sample(root, entry, fingerprint)
            if song is None:
                left_out.append(LeftOut(str(root), name, str(why)))
                continue
            samples.append(_Sample(root, entry, song, labels, sources, _prompt_id(song.tokens, song.style)))
    if not samples:
        if all(item.reason == "unrated and unscored" for item in left_out):
            raise PrefsError(f"no rated or scored takes in {', '.join(map(str, projects))}: rate takes "
                             "(dr2studio rate) or score them (dr2studio eval) first; nothing written")
        summary = "; ".join(f"{item.take}: {item.reason}" for item in left_out[:6])
        raise PrefsError(f"no usable take in {', '.join(map(str, projects))} ({len(left_out)} left out: {summary}); "
                         "nothing written")
    groups = _group_reports(samples, float(threshold))
    data = _write(out, samples, fingerprint)
    label_sources = Counter(src for s in samples for src in s.sources.values())
    report = ExportReport(str(out), str(data), str(model_dir), fingerprint, float(threshold), min_stars, len(samples),
                          len({s.prompt for s in samples}), dict(label_sources), groups, left_out)
    log.info("exported %d candidates (%d left out) to %s", len(samples), len(left_out), out)
    return report


def _write(out: Path, samples: Sequence[_Sample], fingerprint: str) -> Path:
    """Tensors into a fresh folder, then the JSONL over the old one, then the old folders away."""
    from safetensors.torch import save_file

    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    data = out.with_name(f"{stem}.{uuid.uuid4().hex[:8]}.latents")
    with atomic_folder(data) as staging:
        lines = []
        for i, s in enumerate(samples):
            name = f"{i:05d}-{_SAFE.sub('_', str(s.entry.get('take')))[:60]}.safetensors"
            tensors = {"latents": s.song.latents[0].detach().to("cpu", torch.float32).contiguous(),
                       "style": s.song.style.detach().to("cpu", torch.float32).reshape(-1).contiguous()}
            with atomic_path(staging / name) as tmp:
                save_file(tensors, str(tmp))
            rel = f"{data.name}/{name}"
            line = {"prompt": s.prompt, "tokens": [int(t) for t in s.song.tokens.reshape(-1).tolist()],
                    "style_embedding": rel, "latents": rel, "labels": s.labels, "label_sources": s.sources,
                    "lyrics": s.song.lyrics, "project": str(s.project), "take": s.entry.get("take"),
                    "model": fingerprint, "seed": s.song.seed}
            if isinstance(s.entry.get("style"), str):
                line["style"] = s.entry["style"]
            lines.append(json.dumps(line, ensure_ascii=False))
    try:
        atomic_write_text(out, "\n".join(lines) + "\n")
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    for old in out.parent.glob(f"{_glob_escape(stem)}.*.latents"):
        if old != data and old.is_dir() and not old.is_symlink() and re.fullmatch(r"[0-9a-f]{8}", old.name[len(stem) + 1: -8]):
            shutil.rmtree(old, ignore_errors=True)
    return data


def _glob_escape(text: str) -> str:
    """``text`` with glob metacharacters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)
