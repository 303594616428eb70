"""Options and plumbing shared by ``generate``, ``extend``, ``infill`` and ``stems``.

Every command validates its inputs before loading a model or writing a file, turns user errors into a
one-line ``click.ClickException`` (exit code 1), shows a tqdm bar on stderr, prints results on stdout
(``--json`` for a machine-readable object) and writes its output through a temporary name.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from dr2studio.demo import DEMO_DIR
from dr2studio.requests import (
    CFG_STRENGTH,
    DAWS,
    DEFAULT_CFG_STRENGTH,
    DEFAULT_STEPS,
    INVERSION_STEPS,
    SEED,
    STEPS,
    TEMPO,
    Limit,
    RequestError,
    check_daw,
)

__all__ = [
    "DEMO_MODEL",
    "LimitType",
    "DawType",
    "tempo_option",
    "request_ready",
    "user_errors",
    "model_options",
    "style_options",
    "sampling_options",
    "instrumental_option",
    "lyrics_coverage_of",
    "output_option",
    "inversion_option",
    "match_level_option",
    "length_of",
    "load_studio",
    "check_lyrics_file",
    "check_output",
    "check_input_audio",
    "style_from_options",
    "progress_bar",
    "emit",
    "song_result",
    "prepare_edit",
    "announce_encoding",
    "render_and_save",
]

#: The demo model shipped inside the package (built by the training team); used when no --model is given.
DEMO_MODEL = DEMO_DIR
_AUDIO_OUT = (".wav", ".flac", ".aiff", ".aif", ".ogg", ".mp3")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from dr2studio.audio.stems import SeparationError
    from dr2studio.lyrics import EspeakMissingError

    # ValueError covers ConfigError, AudioError, StudioError, LyricsError, StyleError, ProjectError
    return (ValueError, OSError, SeparationError, EspeakMissingError)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body, turning user-facing errors into one-line ``ClickException``\\ s."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:
            from dr2studio.stack_check import explain_import_failure

            broken = explain_import_failure(exc)  # a broken install: one line that names the fix
            if broken is not None:
                raise click.ClickException(broken.removeprefix("dr2studio: ")) from exc
            if not isinstance(exc, _user_error_types()):
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise click.ClickException(message) from exc

    return wrapper


class LimitType(click.ParamType):
    """A click option type checked by a :class:`~dr2studio.requests.Limit`: the CLI refuses a bad value
    with the very message Studio, the engine and the bridge give for it (``steps must be ...``)."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.name = "integer" if limit.integer else "float"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"{'INTEGER' if self.limit.integer else 'FLOAT'} {self.limit.describe().split(' in ', 1)[1]}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = value
        if isinstance(value, str):  # as typed: "0" is the int 0, "0.0" the float 0.0, as in Python and JSON
            text = value.strip()
            for parse in (int, float):
                try:
                    number = parse(text)
                    break
                except ValueError:
                    continue
        try:
            return self.limit.check(number)
        except RequestError as exc:
            self.fail(str(exc), param, ctx)


class DawType(click.ParamType):
    """A DAW project layout name (:data:`~dr2studio.requests.DAWS`), refused with the message every door gives."""

    name = "daw"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(DAWS)}]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return check_daw(value)
        except RequestError as exc:
            self.fail(str(exc), param, ctx)


def request_ready(request: Any, song_seconds: float | None = None, song_path: Path | None = None) -> Any:
    """``request`` validated before any model loads or file is written; a bad value is the one-line
    error (exit 1) with the message every front door gives for it (a check against the song's own
    length is prefixed with the song file's name, so the user sees where)."""
    try:
        if song_seconds is not None:
            request.validate(song_seconds=song_seconds)
        else:
            request.validate()
    except RequestError as exc:
        where = f"{song_path.name}: " if song_path is not None and song_seconds is not None else ""
        raise click.ClickException(f"{where}{exc}") from exc
    return request


def tempo_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--tempo BPM`` for a model's tempo clock (default: the tempo the --style text states)."""
    return click.option("--tempo", type=LimitType(TEMPO), metavar="BPM",
                        help="Tempo for a model with a tempo clock (default: the one --style states, e.g. '120 bpm'; "
                             "give it with --style-audio or --style-embedding).")(fn)


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--model`` (env ``DR2STUDIO_MODEL``), ``--device``, ``--dtype``, ``--g2p-assets``."""
    fn = click.option("--g2p-assets", type=click.Path(file_okay=False, path_type=Path),
                      help="Folder with the released Mandarin G2P data (default: MODEL/g2p, else pypinyin).")(fn)
    fn = click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
                      help="Weights dtype (default: float32 on CPU, bf16/fp16 on GPU).")(fn)
    fn = click.option("--device", metavar="DEV", help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA if present).")(fn)
    fn = click.option("--model", "model", metavar="DIR|REPO", envvar="DR2STUDIO_MODEL",
                      help="Model directory or hub repo id (env DR2STUDIO_MODEL; default: the shipped demo model).")(fn)
    return fn


def style_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--style TEXT | --style-audio FILE | --style-embedding FILE`` (see :func:`style_from_options`)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--style-embedding", type=click.Path(path_type=Path), metavar="FILE",
                          help="Precomputed 512-d style vector (.npy or .safetensors).")(fn)
        fn = click.option("--style-audio", type=click.Path(path_type=Path), metavar="FILE",
                          help="Reference recording whose style to follow (needs MuQ-MuLan or a model style encoder).")(fn)
        fn = click.option("--style", "style_text", metavar="TEXT",
                          help="Style prompt, e.g. 'dreamy synth pop, female vocals' (needs MuQ-MuLan or a model style encoder).")(fn)
        return fn

    return deco


def style_from_options(style_text: str | None, style_audio: Path | None, style_embedding: Path | None,
                       *, required: bool) -> Any:
    """The one style source given (a str prompt or a Path), validated before any model is loaded."""
    given = [(n, v) for n, v in (("--style", style_text), ("--style-audio", style_audio),
                                 ("--style-embedding", style_embedding)) if v is not None]
    if len(given) > 1:
        raise click.UsageError(f"give only one of --style, --style-audio, --style-embedding (got {', '.join(n for n, _ in given)})")
    if not given:
        if required:
            raise click.UsageError("give a style: --style TEXT, --style-audio FILE or --style-embedding FILE")
        return None
    name, value = given[0]
    if name == "--style":
        if not str(value).strip():
            raise click.ClickException("--style prompt is empty")
        return str(value)
    path = Path(value)
    if not path.is_file():
        raise click.ClickException(f"{name} file not found: {path}")
    if name == "--style-embedding":
        from dr2studio.style.embedding import load_style_embedding

        load_style_embedding(path)  # validate now: shape and values
    return path


def sampling_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--steps``, ``--cfg``, ``--seed``."""
    fn = click.option("--seed", type=LimitType(SEED), metavar="INTEGER", help="Random seed (default: random, printed in the results).")(fn)
    fn = click.option("--cfg", "cfg_strength", type=LimitType(CFG_STRENGTH), default=DEFAULT_CFG_STRENGTH,
                      show_default=True, help="Classifier-free guidance strength (0 disables it).")(fn)
    fn = click.option("--steps", type=LimitType(STEPS), default=DEFAULT_STEPS, show_default=True,
                      help="Time-grid points per block (steps-1 Euler steps).")(fn)
    return fn


def instrumental_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--instrumental``: condition on the structure tags only (lyrics the model cannot voice are refused otherwise)."""
    return click.option("--instrumental", is_flag=True,
                        help="Sing no lyric line: the model gets the structure tags only ([inst] if none). Without it, "
                             "lyrics of which the model's phoneme table keeps no sung phone are refused.")(fn)


def lyrics_coverage_of(song: Any) -> dict[str, Any] | None:
    """The coverage record of the lyrics the last operation on ``song`` encoded (its newest edit's, else its own).

    The studio logs the warning itself (on stderr through the CLI's logging); this is the ``--json`` field.
    """
    edit = song.last_edit
    if edit is not None and edit.lyrics_coverage is not None:
        return edit.lyrics_coverage
    settings = song.settings if isinstance(song.settings, dict) else {}
    return settings.get("lyrics_coverage")


def match_level_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--match-level/--no-match-level`` for extend and infill."""
    return click.option("--match-level/--no-match-level", "match_level", default=True, show_default=True,
                        help="Scale the new audio so the 3 s after the crossfade have the RMS level of the 3 s before it "
                             "(--no-match-level keeps the model's own level).")(fn)


def length_of(song: Any) -> dict[str, Any] | None:
    """Requested vs delivered seconds and why they differ (``settings["length"]``), for ``--json``."""
    settings = song.settings if isinstance(song.settings, dict) else {}
    length = settings.get("length")
    return length if isinstance(length, dict) else None


def inversion_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--inversion-steps`` for songs without a sidecar on models without an encoder."""
    return click.option("--inversion-steps", type=LimitType(INVERSION_STEPS), metavar="N",
                        help="Optimiser steps when a song without sidecar must be inverted through the decoder "
                             "(default 300; fewer is faster and rougher).")(fn)


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the results on stdout.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bar or status lines on stderr.")(fn)
    fn = click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="FILE",
                      help="Output audio file (.wav recommended; the .dr2.safetensors sidecar is written beside it).")(fn)
    return fn


def check_output(path: Path) -> Path:
    """The output's folder must exist and take new files, the name must not be a folder, the extension
    must be audio. Checked before the model loads, so a read-only folder costs no render."""
    from dr2studio.confine import ConfineError, check_writable_dir

    if path.is_dir():
        raise click.ClickException(f"output {path} is a folder; give a file name such as {path / 'song.wav'}")
    if path.suffix.lower() not in _AUDIO_OUT:
        raise click.ClickException(f"output {path} must end in one of {', '.join(_AUDIO_OUT)}")
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise click.ClickException(f"output folder {path.parent} does not exist")
    try:
        check_writable_dir(folder, "output folder")
    except ConfineError as exc:
        raise click.ClickException(str(exc)) from exc
    return path


def check_input_audio(path: Path) -> Path:
    """An existing, readable audio file (header only; samples are read later)."""
    from dr2studio.audio.io import audio_info

    if path.is_dir():
        raise click.ClickException(f"{path} is a folder, not an audio file")
    audio_info(path)
    return path


def check_lyrics_file(path: Path) -> Path:
    """An existing lyrics file with at least one line or tag (parsed now, tokenised after the model loads)."""
    from dr2studio.lyrics import parse_lyrics_file

    if path.is_dir():
        raise click.ClickException(f"{path} is a folder, not a lyrics file")
    if not path.is_file():
        kind = "not a regular file" if path.exists() else "not found"
        raise click.ClickException(f"lyrics file {kind}: {path}")
    doc = parse_lyrics_file(path)
    if not any(s.lines or s.tag for s in doc.sections):
        raise click.ClickException(f"lyrics file {path} is empty")
    return path


def _model_source(model: str | None) -> str:
    if model:
        return model
    if (DEMO_MODEL / "model.json").is_file():
        return str(DEMO_MODEL)
    raise click.ClickException(
        "no --model given and no demo model is installed: pass --model DIR (a model directory) or a hub repo id "
        "such as ASLP-lab/DiffRhythm2, or set DR2STUDIO_MODEL"
    )


def load_studio(model: str | None, device: str | None, dtype: str | None, g2p_assets: Path | None,
                quiet: bool = False) -> Any:
    """Load the Studio and say on stderr which model is used."""
    from dr2studio.studio import Studio

    source = _model_source(model)
    if not quiet:
        demo = " (shipped demo model)" if model is None else ""
        click.echo(f"dr2studio: loading model {source}{demo}", err=True)
    studio = Studio.load(source, device=device, dtype=dtype, g2p_assets=g2p_assets)
    if not quiet:
        click.echo(f"dr2studio: model {studio.model_dir} [{studio.fingerprint}] on {studio.dit.device} "
                   f"({str(studio.dit.dtype).replace('torch.', '')})", err=True)
    return studio


@contextlib.contextmanager
def progress_bar(quiet: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A ``progress(done, total, stage)`` callback drawing a tqdm bar on stderr."""
    if quiet:
        yield lambda done, total, stage: None
        return
    from tqdm import tqdm

    bars: list[Any] = []  # drawn at the first update, so warnings and errors before it stay clean lines

    def update(done: int, total: int, stage: str) -> None:
        if not bars:
            bars.append(tqdm(total=1, file=sys.stderr, unit="step", dynamic_ncols=True, leave=True))
        bar = bars[0]
        bar.total = max(int(total), 1)
        bar.set_description(stage, refresh=False)
        bar.n = min(int(done), bar.total)
        bar.refresh()

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: dict[str, Any], as_json: bool, summary: str) -> None:
    """Results on stdout: the JSON object with ``--json``, else a one-line summary."""
    if as_json:
        click.echo(json.dumps(_clean(result), ensure_ascii=False, indent=1))
    else:
        click.echo(summary)


def song_result(song: Any, output: Path, studio: Any, seconds: float) -> dict[str, Any]:
    """The common part of the JSON result of generate / extend / infill."""
    from dr2studio.song import sidecar_path

    side = sidecar_path(output)
    return {
        "output": str(output.resolve()),
        "sidecar": str(side.resolve()) if side.is_file() else None,
        "duration": round(song.duration, 4),
        "sample_rate": song.sample_rate,
        "channels": song.channels,
        "frames": None if song.latents is None else int(song.latents.shape[1]),
        "seed": song.seed,
        "model": studio.fingerprint,
        "model_dir": str(studio.model_dir),
        "elapsed": round(seconds, 3),
        "length": length_of(song),
        "lyrics_coverage": lyrics_coverage_of(song),
    }


def prepare_edit(song_path: Path, lyrics_path: Path, style_text: str | None, style_audio: Path | None,
                 style_embedding: Path | None, output: Path) -> tuple[Any, Any]:
    """Checks shared by extend and infill; returns ``(song, style or None)`` before any model loads."""
    from dr2studio.song import Song

    check_input_audio(song_path)
    check_lyrics_file(lyrics_path)
    style = style_from_options(style_text, style_audio, style_embedding, required=False)
    check_output(output)
    song = Song.load(song_path)
    if not song.has_latents and style is None:
        raise click.ClickException(
            f"{song_path} has no sidecar with its style; give --style, --style-audio or --style-embedding"
        )
    return song, style


def announce_encoding(song: Any, studio: Any, source: Path, quiet: bool) -> None:
    """Say on stderr, once and before the progress bar, how the song becomes latents: a sidecar from
    another model (continued as it is, or not used), or no sidecar (encoded, and roughly how long)."""
    if song.has_latents and song.model and song.model != studio.fingerprint:
        used = song.sample_rate == studio.sample_rate and song.latents.shape[-1] == int(studio.dit.config.mel_dim)
        what = "its latents are continued as they are" if used else "the audio is encoded instead"
        click.echo(f"dr2studio: warning: {source.name}'s sidecar was rendered by model {song.model}, not "
                   f"{studio.fingerprint}; {what}", err=True)
    if quiet or song.has_latents:
        return
    if (studio.model_dir / "encoder.json").is_file():
        how = "the model's VAE encoder (a few seconds)"
    else:
        how = (f"decoder inversion (the model has no encoder; optimising latents for {song.duration:.0f} s "
               "of audio can take minutes)")
    click.echo(f"dr2studio: {source.name} has no matching sidecar; encoding it with {how}", err=True)


def render_and_save(run: Callable[[Callable[[int, int, str], None]], Any], output: Path,
                    quiet: bool) -> tuple[Any, float]:
    """Run a studio call with a progress bar, save the song (audio + sidecar); returns it and the seconds taken."""
    import time

    started = time.perf_counter()
    with progress_bar(quiet) as progress:
        song = run(progress)
    elapsed = time.perf_counter() - started
    song.save(output)
    return song, elapsed
