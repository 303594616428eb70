"""``dr2studio generate``: a new song from lyrics and a style."""
from __future__ import annotations

from pathlib import Path

import click

from dr2studio.commands import _studio_cli as cli
from dr2studio.requests import DURATION, GenerateRequest, SamplingRequest

__all__ = ["generate"]

_EXAMPLES = """
\b
Examples:
  dr2studio generate --model ./dr2 --lyrics song.lrc --style-embedding pop.npy --duration 120 -o song.wav
  dr2studio generate --model ASLP-lab/DiffRhythm2 --lyrics song.lrc --style "warm indie folk, male vocals" \\
      --duration 90 --steps 16 --seed 7 --stereo -o take1.wav
  dr2studio generate --lyrics song.lrc --style-audio ref.wav --duration 60 -o take.wav --json
"""


@click.command("generate", epilog=_EXAMPLES)
@click.option("--lyrics", "lyrics_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Lyrics file (plain text or LRC, with [verse]/[chorus]/... tags).")
@cli.style_options()
@click.option("--duration", type=cli.LimitType(DURATION), required=True, metavar="SECONDS",
              help="Length in seconds. The model may end the song earlier: then a warning on stderr and the "
                   "--json field 'length' say where and why (or use --full-length).")
@click.option("--full-length", is_flag=True,
              help="Hold the end of the song off: drop the end-of-song frames the model samples and go on until "
                   "--duration is reached.")
@cli.sampling_options
@cli.tempo_option
@cli.instrumental_option
@click.option("--stereo", is_flag=True, help="Write pseudo-stereo (right = 0.8 x left delayed 10 ms), as the release does.")
@cli.model_options
@cli.output_option
@cli.user_errors
def generate(lyrics_path: Path, style_text: str | None, style_audio: Path | None, style_embedding: Path | None,
             duration: float, steps: int, cfg_strength: float, seed: int | None, stereo: bool, model: str | None,
             device: str | None, dtype: str | None, g2p_assets: Path | None, output: Path, quiet: bool,
             as_json: bool, instrumental: bool = False, full_length: bool = False, tempo: float | None = None) -> None:
    """Generate a song from a lyrics file and a style; writes OUTPUT and its .dr2.safetensors sidecar."""
    cli.check_lyrics_file(lyrics_path)
    style = cli.style_from_options(style_text, style_audio, style_embedding, required=True)
    request = cli.request_ready(GenerateRequest(
        lyrics=str(lyrics_path), style=str(style), tempo=tempo, instrumental=instrumental, duration=duration,
        full_length=full_length, stereo=stereo,
        sampling=SamplingRequest(steps=steps, cfg_strength=cfg_strength, seed=seed)))
    cli.check_output(output)
    studio = cli.load_studio(model, device, dtype, g2p_assets, quiet)
    song, elapsed = cli.render_and_save(
        lambda progress: studio.run(request, progress=progress, lyrics=lyrics_path, style=style), output, quiet)
    result = cli.song_result(song, output, studio, elapsed)
    result.update(steps=steps, cfg_strength=cfg_strength, stereo=stereo, requested_duration=duration,
                  full_length=full_length)
    short = " (ended early by the model; see the warning)" if (result["length"] or {}).get("ended_early") else ""
    cli.emit(result, as_json, f"{output} ({song.duration:.1f} s of {duration:g} s{short}, seed {song.seed})")
