"""How much of a song's rhythm do a model's VAE latents carry? A ceiling for what its DiT can learn.

    python benchmarks/latent_rhythm.py --model dr2studio/assets/demo --count 6

For held-out synthetic songs (seeds 900000 on, as in ``demo_quality.py``) the real audio is encoded
with the model's encoder and three figures are printed per song:

- ``phase share``: the share of within-beat variation that the beat phase explains (each beat's
  mean removed, then the frames grouped into 16 phase bins at the style text's tempo), for the
  audio's onset envelope, for the latents and for the latents' frame-to-frame changes. The same
  figure at a wrong tempo (x1.13) is the level chance alone reaches.
- ``probe R2``: a ridge probe from the latents and their changes to the onset envelope (resampled
  to the latent frame rate), fitted on the other songs and scored on this one (needs two songs).

A DiT trained with a mean-squared flow-matching loss over latents only learns the rhythm that the
latents hold; when their phase share sits at the chance level, ``demo_quality``'s tempo cannot
follow the style text however long the DiT trains.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dr2studio.lab import analysis
from dr2studio.lab.synth import SynthConfig, generate_song, parse_style

log = logging.getLogger("dr2studio.benchmarks.latent_rhythm")

HELD_OUT_SEED = 900_000
PHASE_BINS = 16
WRONG_TEMPO = 1.13


def phase_share(x: np.ndarray, period: float, bins: int = PHASE_BINS) -> float:
    """Share of the within-beat variance of ``x [T, D]`` explained by the phase in a beat of ``period`` frames."""
    if x.ndim == 1:
        x = x[:, None]
    t = np.arange(len(x))
    beat = np.floor(t / period).astype(np.int64)
    phase = np.minimum((t / period % 1.0 * bins).astype(np.int64), bins - 1)
    centred = x - (np.stack([np.bincount(beat, weights=col) for col in x.T], 1) / np.bincount(beat)[:, None])[beat]
    total = float((centred**2).sum())
    if total <= 0:
        return 0.0
    counts = np.bincount(phase, minlength=bins)
    sums = np.stack([np.bincount(phase, weights=col, minlength=bins) for col in centred.T], 1)
    explained = float(((sums**2).sum(1) / np.maximum(counts, 1)).sum())
    return explained / total


def probe_r2(features: list[np.ndarray], targets: list[np.ndarray], ridge: float = 1e-2) -> list[float]:
    """Leave-one-song-out R^2 of a ridge probe ``features [T, D] -> target [T]`` fitted on the other songs."""
    if len(features) < 2:
        return [float("nan")] * len(features)
    out = []
    for i in range(len(features)):
        x = np.concatenate([f for j, f in enumerate(features) if j != i])
        y = np.concatenate([t for j, t in enumerate(targets) if j != i])
        mu, sd = x.mean(0), x.std(0) + 1e-8
        xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
        w = np.linalg.solve(xs.T @ xs + ridge * len(xs) * np.eye(xs.shape[1]), xs.T @ y)
        xt = np.concatenate([(features[i] - mu) / sd, np.ones((len(features[i]), 1))], 1)
        test = targets[i]
        out.append(float(1.0 - ((xt @ w - test) ** 2).sum() / max(((test - test.mean()) ** 2).sum(), 1e-12)))
    return out


def measure_song(audio: np.ndarray, sr: int, bpm: float, latents: np.ndarray,
                 frame_rate: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The phase figures for one song (``latents [T, C]`` at ``frame_rate``), and the probe's
    features (latents and their changes) and target (the onset envelope at the latent frames)."""
    env, fps = analysis.onset_strength(audio, sr)
    changes = np.abs(np.diff(latents, axis=0))
    period = frame_rate * 60.0 / bpm
    env_at_frames = np.interp(np.arange(1, len(latents)) / frame_rate, np.arange(len(env)) / fps, env)
    figures = {
        "bpm": bpm,
        "onsets": phase_share(env, fps * 60.0 / bpm),
        "latents": phase_share(latents, period),
        "changes": phase_share(changes, period),
        "chance": phase_share(latents, period / WRONG_TEMPO),
    }
    return figures, np.concatenate([latents[1:], changes], 1), env_at_frames


def format_table(rows: list[dict[str, float]]) -> str:
    head = (f"{'song':>4} {'bpm':>5} | {'phase share: onsets':>19} {'latents':>7} {'changes':>7} "
            f"{'latents@wrong bpm':>17} | {'probe R2':>8}")
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows + [{k: float(np.mean([x[k] for x in rows])) for k in rows[0]}]):
        name = "mean" if i == len(rows) else str(i)
        lines.append(f"{name:>4} {r['bpm']:>5.0f} | {r['onsets']:>19.3f} {r['latents']:>7.3f} {r['changes']:>7.3f} "
                     f"{r['chance']:>17.3f} | {r['probe_r2']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (or hub id) with encoder.json")
    p.add_argument("--count", type=int, default=6, help="number of held-out songs")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out song seed")
    p.add_argument("--seconds", type=float, default=20.0, help="longest song length (s)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, got {args.count}")
    if not 8.0 <= args.seconds <= 600.0:
        p.error(f"--seconds must be 8..600, got {args.seconds}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from dr2studio.checkpoints import resolve_model_dir
    from dr2studio.models.encoder import has_encoder, load_encoder
    from dr2studio.vae.encode import encode_audio

    model_dir = resolve_model_dir(args.model)
    if not has_encoder(model_dir):
        p.error(f"{model_dir} has no encoder (encoder.json + encoder.safetensors): nothing to measure")
    encoder = load_encoder(model_dir, device="cpu")
    rows, features, targets = [], [], []
    for i in range(args.count):
        song = generate_song(args.seed + i, SynthConfig(sample_rate=16000, max_seconds=args.seconds))
        enc = encode_audio(song.audio, song.sample_rate, model_dir, method="encoder", encoder=encoder)
        figures, x, y = measure_song(song.audio, song.sample_rate, float(parse_style(song.style).tempo),
                                     enc.latents[0].float().numpy(), encoder.config.frame_rate)
        rows.append(figures)
        features.append(x)
        targets.append(y)
        log.info("song %d/%d", i + 1, args.count)
    for row, r2 in zip(rows, probe_r2(features, targets)):
        row["probe_r2"] = r2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
