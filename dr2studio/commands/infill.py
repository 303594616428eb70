"""``dr2studio infill``: regenerate a time range of a song with new lyrics."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dr2studio.commands import _studio_cli as cli
from dr2studio.requests import CROSSFADE, DEFAULT_CROSSFADE, InfillRequest, SamplingRequest

if TYPE_CHECKING:
    from dr2studio.tempomap import TempoMap

__all__ = ["infill", "bar_to_seconds"]

_EXAMPLES = """
\b
Examples:
  dr2studio infill song.wav --start 30 --end 45 --lyrics new.lrc -o fixed.wav
  dr2studio infill song.wav --start-bar 17 --end-bar 25 --bpm 120 --lyrics chorus2.lrc -o fixed.wav --json
  dr2studio infill song.wav --start-bar 5 --end-bar 7 --tempo-map tempo.mid --lyrics chorus2.lrc -o fixed.wav
"""


def bar_to_seconds(bar: float, bpm: float, beats_per_bar: int) -> float:
    """Start time of ``bar`` (counted from 1, like a DAW ruler; fractions allowed) in seconds at one tempo."""
    from dr2studio.tempomap import TempoMap

    return TempoMap.constant(bpm, beats_per_bar, 4).bar_to_seconds(bar)


def _tempo_map_of(path: Path) -> "TempoMap":
    """The tempo and meter map of a MIDI file (the DAW's tempo track, exported), for bars -> seconds."""
    from dr2studio.bridge.midifile import read_midi_file

    if not path.is_file():
        raise click.ClickException(f"--tempo-map: no such MIDI file: {path}")
    try:
        return read_midi_file(path).tempo_map
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise click.ClickException(f"--tempo-map: {path} is not a readable MIDI file: {exc}") from exc


def _range(start: float | None, end: float | None, start_bar: float | None, end_bar: float | None,
           bpm: float | None, beats_per_bar: int, tempo_map: Path | None = None) -> tuple[float, float]:
    bars = start_bar is not None or end_bar is not None
    secs = start is not None or end is not None
    if bars and secs:
        raise click.UsageError("give either --start/--end (seconds) or --start-bar/--end-bar with --bpm, not both")
    if bars:
        if start_bar is None or end_bar is None or (bpm is None) == (tempo_map is None):
            raise click.UsageError("--start-bar and --end-bar need each other and either --bpm or --tempo-map")
        if start_bar < 1:
            raise click.ClickException(f"--start-bar counts from 1, got {start_bar:g}")
        if tempo_map is not None:
            tmap = _tempo_map_of(tempo_map)
            return tmap.bar_to_seconds(start_bar), tmap.bar_to_seconds(end_bar)
        assert bpm is not None
        if bpm <= 0 or bpm > 400:
            raise click.ClickException(f"--bpm must be in (0, 400], got {bpm:g}")
        return bar_to_seconds(start_bar, bpm, beats_per_bar), bar_to_seconds(end_bar, bpm, beats_per_bar)
    if start is None or end is None:
        raise click.UsageError("give --start and --end in seconds (or --start-bar/--end-bar with --bpm)")
    return start, end


@click.command("infill", epilog=_EXAMPLES)
@click.argument("song_path", metavar="SONG", type=click.Path(path_type=Path))
@click.option("--start", type=float, metavar="SECONDS", help="Start of the range to regenerate.")
@click.option("--end", type=float, metavar="SECONDS", help="End of the range (exclusive).")
@click.option("--start-bar", type=float, help="Start as a bar number (from 1), with --bpm.")
@click.option("--end-bar", type=float, help="End as a bar number (exclusive), with --bpm.")
@click.option("--bpm", type=float, help="Tempo for --start-bar/--end-bar.")
@click.option("--beats-per-bar", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--tempo-map", type=click.Path(path_type=Path), metavar="MIDI",
              help="A MIDI file with the project's tempo and meter changes (the DAW's tempo track exported): "
                   "--start-bar/--end-bar follow it instead of one --bpm.")
@click.option("--lyrics", "lyrics_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Lyrics of the regenerated range.")
@click.option("--crossfade", type=cli.LimitType(CROSSFADE), default=DEFAULT_CROSSFADE, show_default=True,
              help="Equal-power crossfade length in seconds at each edge of the range.")
@cli.style_options()
@cli.sampling_options
@cli.tempo_option
@cli.instrumental_option
@cli.match_level_option
@cli.inversion_option
@cli.model_options
@cli.output_option
@cli.user_errors
def infill(song_path: Path, start: float | None, end: float | None, start_bar: float | None, end_bar: float | None,
           bpm: float | None, beats_per_bar: int, lyrics_path: Path, crossfade: float, style_text: str | None,
           style_audio: Path | None, style_embedding: Path | None, steps: int, cfg_strength: float,
           seed: int | None, inversion_steps: int | None, model: str | None, device: str | None,
           dtype: str | None, g2p_assets: Path | None,
           output: Path, quiet: bool, as_json: bool, instrumental: bool = False, match_level: bool = True,
           tempo_map: Path | None = None, tempo: float | None = None) -> None:
    """Regenerate [START, END) of SONG with new lyrics and splice it back in.

    The length, sample rate, channels and (WAV/FLAC/AIFF) bit depth are SONG's, and every sample outside
    [START - crossfade, END + crossfade] is the input's; the new part is resampled to SONG's rate and,
    unless --no-match-level, brought to the level of the audio before it.
    """
    from dr2studio.audio.io import audio_info

    t0, t1 = _range(start, end, start_bar, end_bar, bpm, beats_per_bar, tempo_map)
    request = InfillRequest(lyrics=str(lyrics_path), style=None if style_text is None else str(style_text), tempo=tempo,
                            instrumental=instrumental, crossfade=crossfade, match_level=match_level,
                            inversion_steps=inversion_steps, start=t0, end=t1,
                            sampling=SamplingRequest(steps=steps, cfg_strength=cfg_strength, seed=seed))
    cli.request_ready(request)
    cli.request_ready(request, song_seconds=audio_info(cli.check_input_audio(song_path)).duration,  # end in the song
                      song_path=song_path)
    song, style = cli.prepare_edit(song_path, lyrics_path, style_text, style_audio, style_embedding, output)
    studio = cli.load_studio(model, device, dtype, g2p_assets, quiet)
    style = studio.style_embedding(style) if style is not None else None  # fail before any progress
    cli.announce_encoding(song, studio, song_path, quiet)
    fixed, elapsed = cli.render_and_save(
        lambda progress: studio.run(request, song, progress=progress, lyrics=lyrics_path, style=style), output, quiet)
    edit = fixed.last_edit
    result = cli.song_result(fixed, output, studio, elapsed)
    result.update(level_match_db=edit.level_match_db)
    result.update(input=str(song_path.resolve()), start=t0, end=t1, crossfade_in=edit.crossfade_in,
                  crossfade_out=edit.crossfade_out, latents_from=edit.latents_from, edit_seed=edit.seed)
    cli.emit(result, as_json, f"{output} (regenerated {t0:.2f}-{t1:.2f} s of {fixed.duration:.1f} s)")
