"""``dr2studio extend``: continue a song with new lyrics."""
from __future__ import annotations

from pathlib import Path

import click

from dr2studio.commands import _studio_cli as cli
from dr2studio.requests import (
    CROSSFADE,
    DEFAULT_CROSSFADE,
    DEFAULT_EXTEND_SECONDS,
    EXTEND_SECONDS,
    ExtendRequest,
    SamplingRequest,
)

__all__ = ["extend"]

_EXAMPLES = """
\b
Examples:
  dr2studio extend song.wav --lyrics next.lrc --seconds 30 -o longer.wav
  dr2studio extend song.wav --lyrics bridge.lrc --crossfade 0.1 --seed 3 -o longer.wav --json
  dr2studio extend old_demo.wav --lyrics next.lrc --style-embedding pop.npy -o longer.wav   # no sidecar
"""


@click.command("extend", epilog=_EXAMPLES)
@click.argument("song_path", metavar="SONG", type=click.Path(path_type=Path))
@click.option("--lyrics", "lyrics_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Lyrics of the new part (the song's own lyrics come from its sidecar).")
@click.option("--seconds", type=cli.LimitType(EXTEND_SECONDS), default=DEFAULT_EXTEND_SECONDS, show_default=True,
              help="Seconds to add (the song's end is held off until then; if the model still stops, "
                   "a warning and the --json field 'length' say so).")
@click.option("--crossfade", type=cli.LimitType(CROSSFADE), default=DEFAULT_CROSSFADE, show_default=True,
              help="Equal-power crossfade length in seconds, ending at the splice block boundary.")
@cli.style_options()
@cli.sampling_options
@cli.tempo_option
@cli.instrumental_option
@cli.match_level_option
@cli.inversion_option
@cli.model_options
@cli.output_option
@cli.user_errors
def extend(song_path: Path, lyrics_path: Path, seconds: float, crossfade: float, style_text: str | None,
           style_audio: Path | None, style_embedding: Path | None, steps: int, cfg_strength: float,
           seed: int | None, inversion_steps: int | None, model: str | None, device: str | None,
           dtype: str | None, g2p_assets: Path | None,
           output: Path, quiet: bool, as_json: bool, instrumental: bool = False, match_level: bool = True,
           tempo: float | None = None) -> None:
    """Continue SONG with new lyrics; the audio before the splice point is kept sample for sample.

    OUTPUT keeps SONG's sample rate, channels and (for WAV/FLAC/AIFF) bit depth; the new audio is
    resampled to it and, unless --no-match-level, brought to the level of the audio it continues.

    With a sidecar (SONG's .dr2.safetensors) the song continues from its exact latents and lyric
    context; without one, the audio is encoded first (VAE encoder, else decoder inversion) and a
    style must be given.
    """
    request = cli.request_ready(ExtendRequest(
        lyrics=str(lyrics_path), style=None if style_text is None else str(style_text), tempo=tempo,
        instrumental=instrumental, crossfade=crossfade, match_level=match_level, inversion_steps=inversion_steps,
        seconds=seconds, sampling=SamplingRequest(steps=steps, cfg_strength=cfg_strength, seed=seed)))
    song, style = cli.prepare_edit(song_path, lyrics_path, style_text, style_audio, style_embedding, output)
    studio = cli.load_studio(model, device, dtype, g2p_assets, quiet)
    style = studio.style_embedding(style) if style is not None else None  # fail before any progress
    cli.announce_encoding(song, studio, song_path, quiet)
    longer, elapsed = cli.render_and_save(
        lambda progress: studio.run(request, song, progress=progress, lyrics=lyrics_path, style=style), output, quiet)
    edit = longer.last_edit
    result = cli.song_result(longer, output, studio, elapsed)
    result.update(input=str(song_path.resolve()), splice=edit.splice, crossfade=edit.crossfade,
                  added_frames=edit.new_frames, added_seconds=edit.added_seconds, requested_seconds=seconds,
                  level_match_db=edit.level_match_db, latents_from=edit.latents_from, edit_seed=edit.seed)
    cli.emit(result, as_json, f"{output} ({longer.duration:.1f} s; {edit.added_seconds:.2f} of {seconds:g} s added, "
                              f"new audio from {edit.splice:.2f} s)")
