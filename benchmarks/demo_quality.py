"""Does a model make music that follows its conditioning? Measured against real synthetic songs.

    python benchmarks/demo_quality.py --model path/to/demo-model --count 16
    python benchmarks/demo_quality.py --only-real --count 16          # the upper bound alone, no model

For held-out seeds (900000 on; training data uses lower seeds) the synthetic-song generator makes a
song with LRC lyrics and a style text ("pop, 112 bpm, A minor, ..."). Up to four rows are measured:

- ``real``: the synthetic songs themselves (what a perfect model would score);
- ``vae``: the real songs encoded and decoded by the model's VAE (skipped when the model directory
  has no encoder): the ceiling any DiT over this VAE can reach;
- ``model``: ``Studio.load(--model).generate(lyrics, style, duration, steps, cfg_strength, seed)``;
- ``random``: the same model directory with the DiT re-initialised (a fresh ``DiT(config)`` under a
  fixed seed; decoder, style encoder and phoneme table kept), the lower bound.

Columns (means over songs unless said):

- ``tempo err``: median relative error of the estimated tempo against the style text's bpm, with
  octave errors (x2, /2) forgiven, in %; ``tempo ok``: share of songs within 4 %;
- ``beat``: how strongly the audio pulses at the style text's tempo (onset autocorrelation at the beat
  period or twice it; real songs 0.6-0.8, no pulse about 0): a continuous view of what ``tempo ok``
  only counts once the estimator's strength threshold is passed;
- ``key acc``: share whose estimated key equals the style text's; ``key score``: MIREX key score
  (1 same, 0.5 fifth, 0.3 relative, 0.2 parallel);
- ``energy r``: Pearson correlation between section levels (dB) of the audio, cut at the planned
  section times, and the generator's energy pattern (sections that start after the audio ends are
  left out; fewer than two sections left reads 0);
- ``flatness``: spectral flatness (white noise about 0.56, music well under 0.1);
- ``music``, ``style``, ``quality``: mean automatic scores in [0, 1] of ``dr2studio eval``'s signal scorer
  (:func:`dr2studio.scoring.signal.score_signal` against the style text and the LRC section plan: the labels
  ``training/mine_candidates.py`` gives CPPO; docs/evaluation.md).

``--compare NAME=DIR`` adds a ``model`` row per further model directory (e.g. a CPPO export next to the
shipped model), rendered with the same seeds.

Prints the table to stdout (and writes it as JSON with ``--json``); progress goes to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dr2studio.config import atomic_write_text
from dr2studio.lab import analysis
from dr2studio.lab.synth import SynthConfig, SynthSong, generate_song, parse_style
from dr2studio.scoring.signal import score_signal, sections_from_lyrics

log = logging.getLogger("dr2studio.benchmarks.demo_quality")

HELD_OUT_SEED = 900_000
TEMPO_TOLERANCE = 0.04


@dataclasses.dataclass
class SongScore:
    """The figures for one audio clip against the song it was asked to be."""

    tempo_error: float
    beat: float
    key_score: float
    key_exact: bool
    energy_r: float
    flatness: float
    musicality: float = float("nan")
    style: float = float("nan")
    quality: float = float("nan")


@dataclasses.dataclass
class RowSummary:
    name: str
    songs: int
    tempo_err_pct: float
    tempo_ok: float
    beat: float
    key_acc: float
    key_score: float
    energy_r: float
    flatness: float
    seconds: float
    musicality: float = float("nan")
    style: float = float("nan")
    quality: float = float("nan")


def score_audio(audio: np.ndarray, sr: int, song: SynthSong) -> SongScore:
    """Measure ``audio`` (``[n]`` or ``[C, n]``) against the style text and section plan of ``song``."""
    facts = parse_style(song.style)
    if facts.tempo is None or facts.tonic_pc is None:
        raise ValueError(f"style text {song.style!r} states no tempo or key")
    bpm = analysis.estimate_tempo(audio, sr)
    tonic, mode, _ = analysis.estimate_key(audio, sr)
    ks = analysis.key_score((tonic, mode), (facts.tonic_pc, facts.mode))
    length = np.shape(audio)[-1] / sr
    sections = [s for s in song.sections if s.start_s + 0.5 <= length]
    levels = analysis.section_energy(audio, sr, sections)
    r = analysis.energy_pattern_correlation(levels, [s.energy for s in sections]) if len(sections) >= 2 else 0.0
    auto = score_signal(audio, sr, tempo=facts.tempo, key=(facts.tonic_pc, facts.mode),
                        sections=sections_from_lyrics(song.lyrics, length)).scores
    return SongScore(
        tempo_error=analysis.tempo_error(bpm, facts.tempo),
        beat=analysis.beat_strength(audio, sr, facts.tempo),
        key_score=ks,
        key_exact=ks == 1.0,
        energy_r=r,
        flatness=analysis.spectral_flatness(audio),
        musicality=float(auto["musicality"]),
        style=float(auto["style_similarity"]),
        quality=float(auto["audio_quality"]),
    )


def summarise(name: str, scores: list[SongScore], seconds: float) -> RowSummary:
    err = np.array([s.tempo_error for s in scores])
    return RowSummary(
        name=name,
        songs=len(scores),
        tempo_err_pct=float(np.median(err) * 100),
        tempo_ok=float(np.mean(err <= TEMPO_TOLERANCE)),
        beat=float(np.mean([s.beat for s in scores])),
        key_acc=float(np.mean([s.key_exact for s in scores])),
        key_score=float(np.mean([s.key_score for s in scores])),
        energy_r=float(np.mean([s.energy_r for s in scores])),
        flatness=float(np.mean([s.flatness for s in scores])),
        seconds=seconds,
        musicality=float(np.mean([s.musicality for s in scores])),
        style=float(np.mean([s.style for s in scores])),
        quality=float(np.mean([s.quality for s in scores])),
    )


def format_table(rows: list[RowSummary]) -> str:
    head = (f"{'row':<10} {'songs':>5} {'tempo err %':>11} {'tempo ok':>8} {'beat':>5} {'key acc':>7} {'key score':>9} "
            f"{'energy r':>8} {'flatness':>8} {'music':>5} {'style':>5} {'quality':>7} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<10} {r.songs:>5d} {r.tempo_err_pct:>11.1f} {r.tempo_ok:>8.2f} {r.beat:>5.2f} {r.key_acc:>7.2f} "
            f"{r.key_score:>9.2f} {r.energy_r:>8.2f} {r.flatness:>8.4f} {r.musicality:>5.2f} {r.style:>5.2f} {r.quality:>7.2f} "
            f"{r.seconds:>7.1f}"
        )
    return "\n".join(lines)


def held_out_songs(count: int, seed: int, seconds: float | None, sample_rate: int) -> list[SynthSong]:
    cfg = SynthConfig(sample_rate=sample_rate)
    return [generate_song(seed + i, cfg, duration=seconds) for i in range(count)]


def measure(name: str, songs: list[SynthSong], render: Callable[[SynthSong, int], tuple[np.ndarray, int]]) -> RowSummary:
    """Render every song with ``render(song, index) -> (audio, sample_rate)`` and score it."""
    scores = []
    t0 = time.perf_counter()
    for i, song in enumerate(songs):
        audio, sr = render(song, i)
        scores.append(score_audio(audio, sr, song))
        log.info("%s: %d/%d", name, i + 1, len(songs))
    return summarise(name, scores, time.perf_counter() - t0)


def randomised_copy(model_dir: Path, dest: Path, seed: int = 0) -> Path:
    """Copy ``model_dir`` to ``dest`` with the DiT replaced by a fresh ``DiT(config)`` (seeded)."""
    import torch

    from dr2studio.checkpoints import save_dit
    from dr2studio.models.dit import DiT, DiTConfig

    dest.mkdir(parents=True, exist_ok=True)
    for p in model_dir.iterdir():
        if p.is_file() and p.name not in ("model.safetensors", "model.json"):
            shutil.copy2(p, dest / p.name)
    torch.manual_seed(seed)
    save_dit(DiT(DiTConfig.load(model_dir / "model.json")), dest)
    return dest


def studio_renderer(model: str | Path, args: argparse.Namespace) -> Callable[[SynthSong, int], tuple[np.ndarray, int]]:
    from dr2studio.studio import Studio

    studio = Studio.load(model, device=args.device)

    def render(song: SynthSong, i: int) -> tuple[np.ndarray, int]:
        out = studio.generate(song.lyrics, song.style, song.duration, steps=args.steps,
                              cfg_strength=args.cfg_strength, seed=args.seed + i)
        audio = out.audio
        audio = audio.detach().float().cpu().numpy() if hasattr(audio, "detach") else np.asarray(audio, np.float32)
        return audio, int(out.sample_rate)

    return render


def vae_renderer(model_dir: Path, args: argparse.Namespace) -> Callable[[SynthSong, int], tuple[np.ndarray, int]] | None:
    """Encode -> decode with the model's own VAE (the path ``extend`` uses), or None without an encoder."""
    import torch

    from dr2studio.models.bigvgan import load_decoder
    from dr2studio.models.encoder import has_encoder, load_encoder
    from dr2studio.vae.encode import encode_audio

    if not has_encoder(model_dir):
        return None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder, decoder = load_encoder(model_dir, device=device), load_decoder(model_dir, device=device)

    def render(song: SynthSong, i: int) -> tuple[np.ndarray, int]:
        latents = encode_audio(song.audio, song.sample_rate, model_dir, method="encoder", encoder=encoder).latents
        with torch.inference_mode():
            audio = decoder.decode(latents)
        return audio.reshape(-1).cpu().numpy(), decoder.sample_rate

    return render


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (or hub id) to measure")
    p.add_argument("--count", type=int, default=16, help="number of held-out songs")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out song seed")
    p.add_argument("--seconds", type=float, default=None, help="song length (default: drawn from 10..40 s per song)")
    p.add_argument("--sample-rate", type=int, default=24000, help="sample rate of the real songs (Hz)")
    p.add_argument("--steps", type=int, default=32, help="sampler steps")
    p.add_argument("--cfg-strength", type=float, default=2.0, help="classifier-free guidance strength")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--only-real", action="store_true", help="measure the synthetic songs only (no model needed)")
    p.add_argument("--no-random", action="store_true", help="skip the randomly initialised model")
    p.add_argument("--no-vae", action="store_true", help="skip the VAE reconstruction row")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                   help="also measure this model directory as row NAME (repeatable)")
    p.add_argument("--json", help="also write the table to this JSON file")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, got {args.count}")
    if args.seconds is not None and not 8.0 <= args.seconds <= 600.0:
        p.error(f"--seconds must be 8..600, got {args.seconds}")
    if not args.only_real and not args.model:
        p.error("--model is required unless --only-real is given")
    compare = []
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_dir():
            p.error(f"--compare needs NAME=DIR with an existing model directory, got {item!r}")
        compare.append((name, Path(path)))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    songs = held_out_songs(args.count, args.seed, args.seconds, args.sample_rate)
    rows = [measure("real", songs, lambda s, i: (s.audio, s.sample_rate))]
    if not args.only_real:
        from dr2studio.checkpoints import resolve_model_dir

        model_dir = resolve_model_dir(args.model)
        if not args.no_vae and (vae := vae_renderer(model_dir, args)) is not None:
            rows.append(measure("vae", songs, vae))
        rows.append(measure("model", songs, studio_renderer(model_dir, args)))
        for name, path in compare:
            rows.append(measure(name, songs, studio_renderer(path, args)))
        if not args.no_random:
            with tempfile.TemporaryDirectory(prefix="dr2-random-") as tmp:
                rand_dir = randomised_copy(model_dir, Path(tmp) / "model")
                rows.append(measure("random", songs, studio_renderer(rand_dir, args)))
    print(format_table(rows))
    if args.json:
        payload = {"args": {k: v for k, v in vars(args).items() if k != "json"}, "rows": [dataclasses.asdict(r) for r in rows]}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
