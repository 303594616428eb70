"""``dr2studio stems``: render a song (and optionally its separated sources) into a DAW project."""
from __future__ import annotations

import time
from pathlib import Path

import click

from dr2studio.commands._studio_cli import DawType, check_input_audio, emit, progress_bar, user_errors

__all__ = ["stems"]

_EXAMPLES = """
\b
Examples:
  dr2studio stems song.wav --project ~/Music/MySong\\ Project --daw ableton
  dr2studio stems song.wav --project ./reaper_proj --daw reaper --separate --preset balanced --sample-rate 44100
  dr2studio stems song.wav --project ./out --preset ./my_preset.json --lufs -16 --position 32 --json
  dr2studio stems song.wav --project ./out --separate --conform-bpm 96 --midi
\b
Shipped presets: balanced (default), clean, broadcast, loud. Copy one from dr2studio/presets/ to edit it.
Ableton takes go to DIR/Samples/Imported/dr2/<take>/, Reaper takes to the project's media folder
(RECORD_PATH of the .rpp, else DIR/Media) under dr2/<take>/, generic takes to DIR/dr2/<take>/.
DIR/dr2studio.json lists every take: files, timeline position (position_seconds), rate, lyrics, seed,
settings and per-stem loudness (target and measured); its fields are described in docs/manifest.md.
An effect that cannot run at the project rate (an EQ band above Nyquist) is skipped and noted there.
Nothing is written outside DIR: a link inside it that leads out (dr2/, Samples/, Media/, dr2studio.json)
is refused, and a read-only DIR is reported before any rendering starts.
--conform-bpm stretches the take to that tempo (pitch kept) and puts its first downbeat on a bar line of
the project grid from --position (--source-bpm 136 where the song's beat also reads as 68); --midi writes <stem>.mid beside the vocals, bass and other WAVs (the
mix when not separated). Both are recorded in the manifest (conform, midi); see docs/conform_and_midi.md.
"""


@click.command("stems", epilog=_EXAMPLES)
@click.argument("song_path", metavar="SONG", type=click.Path(path_type=Path))
@click.option("--project", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="The DAW project folder (created if missing; must not be a file).")
@click.option("--daw", type=DawType(), default="generic", show_default=True)
@click.option("--preset", default="balanced", show_default=True, metavar="NAME|FILE",
              help="Effect preset: a shipped name or a .json file.")
@click.option("--separate", is_flag=True, help="Also write vocals / drums / bass / other stems (Hybrid Demucs).")
@click.option("--separator-weights", type=click.Path(path_type=Path), metavar="FILE",
              help="Local copy of the Hybrid Demucs weights (hdemucs_high_trained.pt); default: torch hub cache/download.")
@click.option("--sample-rate", type=click.IntRange(8000, 192000), metavar="HZ",
              help="Project sample rate (default: the project's: its first take's, a REAPER .rpp's SAMPLERATE, "
                   "else 48000). Stems are resampled to it before the effects run.")
@click.option("--lufs", type=click.FloatRange(-60.0, 0.0), metavar="LUFS",
              help="Loudness target per stem (default: the preset's, -14 for most).")
@click.option("--position", type=click.FloatRange(min=0.0), default=0.0, show_default=True, metavar="SECONDS",
              help="Where the take starts on the DAW timeline (recorded in the manifest).")
@click.option("--take", metavar="NAME", help="Take folder name (default: the song's file name; -2, -3 ... when taken).")
@click.option("--conform-bpm", type=float, metavar="BPM",
              help="Conform the take to this tempo: time-stretch it and align its first downbeat to a bar.")
@click.option("--source-bpm", type=float, metavar="BPM",
              help="The song's own tempo, where its beat reads in half or double time (conform then keeps "
                   "that octave instead of the one nearest the target).")
@click.option("--conform/--no-conform", "conform", default=None,
              help="Force tempo conform on or off (default: on when --conform-bpm is given, unless the "
                   "model's tempo clock already played the song at that tempo).")
@click.option("--midi", is_flag=True, help="Also write a .mid per pitched stem (basic-pitch ONNX model).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or status lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entry of the new take as JSON on stdout.")
@user_errors
def stems(song_path: Path, project: Path, daw: str, preset: str, separate: bool, separator_weights: Path | None,
          sample_rate: int | None, lufs: float | None, position: float, take: str | None,
          conform_bpm: float | None, source_bpm: float | None, conform: bool | None, midi: bool, quiet: bool,
          as_json: bool) -> None:
    """Render SONG into the project folder DIR as 24-bit WAV stems and record the take in DIR/dr2studio.json."""
    from dr2studio.audio.daw import check_project_writable, project_layout
    from dr2studio.audio.effects import load_preset
    from dr2studio.audio.stems import export_stems, load_separator
    from dr2studio.requests import TakeRequest
    from dr2studio.song import Song

    options = TakeRequest(conform=conform, conform_bpm=conform_bpm, source_bpm=source_bpm, midi=midi)
    options.validate()  # a tempo of 0 is refused before the song is read or anything is written
    check_input_audio(song_path)
    layout = project_layout(project, daw)  # a file, an unreadable manifest, or a link out of DIR fails here
    check_project_writable(layout)  # a read-only project fails now, not after separation and effects
    chosen = load_preset(preset)
    if separator_weights is not None and not separator_weights.is_file():
        raise click.ClickException(f"--separator-weights file not found: {separator_weights}")
    song = Song.load(song_path)
    separator = load_separator(separator_weights) if separate else None
    started = time.perf_counter()
    with progress_bar(quiet) as progress:
        entry = export_stems(song, layout.root, daw=daw, preset=chosen, separate=separate, sample_rate=sample_rate,
                             loudness_lufs=lufs, position=position, take=take, separator=separator, progress=progress,
                             origin="cli", options=options)
    entry = dict(entry, project=str(layout.root), manifest=str(layout.manifest_path),
                 elapsed=round(time.perf_counter() - started, 3))
    files = ", ".join([*entry["files"].values(), *(entry.get("midi") or {}).values()])
    emit(entry, as_json, f"{layout.root}: take {entry['take']} ({files})")
