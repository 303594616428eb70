"""``dr2studio eval TAKE|FOLDER|PROJECT... [--json] [--scorers signal,...]``: automatic scores of takes.

Each take gets a score in [0, 1] per quality dimension (musicality, lyric accuracy, style similarity,
audio quality; ``-`` where no scorer measured it) and its raw measurements. What a take is compared with
comes from where it lives: a DAW project's manifest entry (lyrics, style text, tempo), a song file's
``.dr2.safetensors`` sidecar (lyrics, stated tempo), or ``--style``. For a project (a folder holding
``dr2studio.json``) the scores are appended to ``<project>/dr2studio.scores.jsonl``, where ``dr2studio
prefs export`` reads them. Mappings: docs/evaluation.md.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import click

__all__ = ["eval_command", "resolve_takes", "EvalTake"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg", ".mp3")
_SIGNAL = "signal"
_DIM_HEADS = (("musicality", "music"), ("lyric_accuracy", "lyrics"), ("style_similarity", "style"),
              ("audio_quality", "quality"))


@dataclasses.dataclass
class EvalTake:
    """One take to score: its name, audio file, and what it was asked to be."""

    name: str
    audio: Path
    lyrics: str = ""
    style: str | None = None
    tempo: float | None = None
    project: Path | None = None


def _from_song(name: str, path: Path, project: Path | None = None, entry: dict[str, Any] | None = None) -> EvalTake:
    from dr2studio.audio.io import AudioError
    from dr2studio.song import SidecarError, Song

    try:
        song = Song.load(path)
    except (AudioError, SidecarError) as exc:
        raise click.ClickException(f"take {name}: {exc}") from None
    entry = entry or {}
    settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else song.settings or {}
    tempo = settings.get("tempo_bpm") if isinstance(settings, dict) else None
    style = entry.get("style") or (song.settings.get("style") if isinstance(song.settings.get("style"), str) else None)
    return EvalTake(name, path, str(entry.get("lyrics") or song.lyrics or ""), style,
                    float(tempo) if isinstance(tempo, (int, float)) and not isinstance(tempo, bool) else None, project)


def _project_takes(root: Path) -> list[EvalTake]:
    from dr2studio.audio.daw import ProjectError, project_layout, read_manifest
    from dr2studio.confine import ConfineError, resolve_inside

    try:
        manifest = read_manifest(project_layout(root))
    except ProjectError as exc:
        raise click.ClickException(f"project {root}: {exc}") from None
    takes = [t for t in manifest.get("takes", []) if isinstance(t, dict) and isinstance(t.get("take"), str)]
    if not takes:
        raise click.ClickException(f"project {root} has no takes in its dr2studio.json")
    out = []
    for t in takes:
        files = t.get("files") if isinstance(t.get("files"), dict) else {}
        rel = files.get("mix") or next(iter(files.values()), None)
        if not isinstance(rel, str):
            raise click.ClickException(f"project {root}: take {t['take']} lists no audio file")
        try:
            path = resolve_inside(root, rel)
        except ConfineError as exc:
            raise click.ClickException(f"project {root}: take {t['take']}: {exc}") from None
        out.append(_from_song(t["take"], path, root, t))
    return out


def resolve_takes(targets: tuple[Path, ...]) -> list[EvalTake]:
    """Takes of audio files, folders of audio files and DAW project folders, in the order given."""
    out: list[EvalTake] = []
    for target in targets:
        if target.is_file():
            if target.suffix.lower() not in AUDIO_SUFFIXES:
                raise click.ClickException(f"{target}: not an audio file ({', '.join(AUDIO_SUFFIXES)})")
            out.append(_from_song(target.stem, target))
        elif target.is_dir():
            if (target / "dr2studio.json").is_file():
                out += _project_takes(target.resolve())
                continue
            files = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise click.ClickException(f"{target}: no audio files ({', '.join(AUDIO_SUFFIXES)}) and no dr2studio.json")
            out += [_from_song(p.stem, p) for p in files]
        else:
            raise click.ClickException(f"{target}: no such file or folder")
    return out


def _parse_scorers(text: str) -> list[str]:
    from dr2studio.scoring.models import MODEL_SCORERS

    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    known = (_SIGNAL, *MODEL_SCORERS)
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise click.BadParameter(f"unknown scorer(s) {bad or text!r}; choose from {', '.join(known)}", param_hint="--scorers")
    return list(dict.fromkeys(names))


def score_take(take: EvalTake, scorers: list[str], model_scorers: dict[str, Any], style_override: str | None) -> dict[str, Any]:
    """The score record of one take: signal scores first, model scores over them where they measure."""
    from dr2studio.audio.io import AudioError, read_audio
    from dr2studio.scoring.signal import DIMENSIONS, score_signal, sections_from_lyrics
    from dr2studio.scoring.store import score_record
    from dr2studio.style.tags import parse_style_tags

    try:
        audio, sr = read_audio(take.audio)
    except AudioError as exc:
        raise click.ClickException(f"take {take.name}: {exc}") from None
    style = style_override if style_override is not None else take.style
    tempo, key = take.tempo, None
    if style:
        try:
            tags = parse_style_tags(style)
        except ValueError as exc:
            raise click.ClickException(f"take {take.name}: style text: {exc}") from None
        tempo = tags.tempo if tags.tempo is not None else tempo
        key = (tags.key, tags.mode or "major") if tags.key is not None else None
    scores: dict[str, float | None] = dict.fromkeys(DIMENSIONS)
    details: dict[str, Any] = {"audio": str(take.audio), "style": style, "scorers": scorers}
    for name in scorers:
        try:
            if name == _SIGNAL:
                plan = sections_from_lyrics(take.lyrics, audio.shape[1] / sr) if take.lyrics else []
                result = score_signal(audio, sr, tempo=tempo, key=key, sections=plan)
                got, raw = result.scores, result.details
            else:
                got, raw = model_scorers[name](audio, sr, lyrics=take.lyrics, style=style)
        except ValueError as exc:
            raise click.ClickException(f"take {take.name}: {name} scorer: {exc}") from None
        details[name] = raw
        scores.update({k: v for k, v in got.items() if v is not None})
    return score_record(take.name, scores, details)


def _cell(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def format_table(records: list[dict[str, Any]]) -> str:
    width = max([4] + [len(r["take"]) for r in records])
    head = f"{'take':<{width}} " + " ".join(f"{h:>7}" for _, h in _DIM_HEADS) + f" {'bpm est/stated':>15} {'key est / stated':>24} {'LUFS':>6}"
    lines = [head, "-" * len(head)]
    for r in records:
        sig = r["details"].get(_SIGNAL) or {}
        bpm = f"{_cell(sig.get('tempo_estimated'), '{:.1f}')}/{_cell(sig.get('tempo_stated'), '{:.0f}')}"
        key = f"{sig.get('key_estimated') or '-'} / {sig.get('key_stated') or '-'}"
        lines.append(f"{r['take']:<{width}} " + " ".join(f"{_cell(r['scores'].get(d)):>7}" for d, _ in _DIM_HEADS)
                     + f" {bpm:>15} {key:>24} {_cell(sig.get('loudness_lufs'), '{:.1f}'):>6}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--scorers", default=_SIGNAL, show_default=True,
              help="Comma-separated: signal (no weights), asr (lyric accuracy), aesthetics, mulan (optional extras).")
@click.option("--style", "style_text", help="Style text to score against (overrides the take's own).")
@click.option("--model", "model", metavar="DIR|REPO", envvar="DR2STUDIO_MODEL",
              help="Model whose phoneme table the asr scorer uses (default: the shipped demo model).")
@click.option("--language", type=click.Choice(["en", "zh"]), default="en", show_default=True,
              help="Language the asr scorer transcribes.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the model scorers.")
@click.option("--no-store", is_flag=True, help="Do not append project scores to dr2studio.scores.jsonl.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def eval_command(targets: tuple[Path, ...], scorers: str, style_text: str | None, model: str | None, language: str,
                 device: str, no_store: bool, as_json: bool) -> None:
    """Score takes (audio files, folders of them, or DAW project folders) on the four quality dimensions."""
    from dr2studio.scoring.models import ScorerUnavailable, make_scorer
    from dr2studio.scoring.store import ScoreStoreError, append_scores

    names = _parse_scorers(scorers)
    takes = resolve_takes(targets)
    model_scorers: dict[str, Any] = {}
    for name in names:
        if name == _SIGNAL:
            continue
        vocab = None
        if name == "asr":
            from dr2studio.checkpoints import CheckpointError, resolve_model_dir
            from dr2studio.commands._studio_cli import DEMO_MODEL

            try:
                vocab = (resolve_model_dir(model) if model else DEMO_MODEL) / "vocab.json"
            except CheckpointError as exc:
                raise click.ClickException(str(exc)) from None
        model_scorers[name] = make_scorer(name, vocab=vocab, language=language, device=device)
        try:
            model_scorers[name].check_installed()
        except ScorerUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    records: list[dict[str, Any]] = []
    try:
        for take in takes:
            records.append(score_take(take, names, model_scorers, style_text))
    except ScorerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if not no_store:
        by_project: dict[Path, list[dict[str, Any]]] = {}
        for take, rec in zip(takes, records):
            if take.project is not None:
                by_project.setdefault(take.project, []).append(rec)
        for project, recs in by_project.items():
            try:
                path = append_scores(project, recs)
            except (ScoreStoreError, OSError) as exc:
                raise click.ClickException(f"cannot store scores in {project}: {exc}") from None
            click.echo(f"dr2studio: {len(recs)} score(s) appended to {path}", err=True)
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        click.echo(format_table(records))
