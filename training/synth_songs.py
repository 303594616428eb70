"""Write a dataset of procedural songs (audio, LRC lyrics, style text) and its JSONL manifest.

    python -m training.synth_songs --out data/synth --count 400 --seed 0
    python -m training.synth_songs --out data/synth --count 8 --seed 0 --min-seconds 10 --max-seconds 20

Song ``i`` uses seed ``SEED + i`` (:func:`dr2studio.lab.synth.generate_song`), so the same arguments give
the same files byte for byte. Held-out evaluation (``benchmarks/demo_quality.py``) uses seeds from
900000 on: keep training seeds below that.

Files written inside ``--out`` (each through a temporary name and a rename)::

    song-0000000.wav     mono PCM-16 at --sample-rate (default 24000 Hz)
    song-0000000.lrc     lyrics: [start], a tag line per section ([intro] [verse] [chorus] [bridge]
                         [outro]), "[mm:ss.xx]line" for each sung line, [end]
    manifest.jsonl       one JSON object per song, the input of training/prepare_data.py

Manifest fields (paths relative to the manifest's folder)::

    id           "song-0000000"
    audio        "song-0000000.wav"
    lyrics_path  "song-0000000.lrc"
    style        "pop, 112 bpm, A minor, female vocal, piano, pad, bass, drums"
    language     "en"
    duration     seconds (float)
    sample_rate, tempo (bpm), key (tonic name), mode ("major"/"minor"), genre, instruments (list),
    sections     [{"kind", "start_s", "end_s", "energy"}, ...], seed
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import soundfile as sf

from dr2studio.atomic import atomic_path
from dr2studio.config import ConfigError, atomic_write_text
from dr2studio.lab.synth import GENRES, SynthConfig, SynthSong, generate_song

__all__ = ["write_song", "write_dataset", "main"]

log = logging.getLogger("dr2studio.training.synth_songs")
MANIFEST = "manifest.jsonl"


def write_song(song: SynthSong, out_dir: Path, name: str) -> dict:
    """Write ``name``.wav and ``name``.lrc into ``out_dir`` atomically; returns the manifest row."""
    wav = out_dir / f"{name}.wav"
    with atomic_path(wav) as tmp:
        sf.write(str(tmp), song.audio, song.sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_text(out_dir / f"{name}.lrc", song.lyrics)
    meta = song.metadata()
    return {
        "id": name,
        "audio": wav.name,
        "lyrics_path": f"{name}.lrc",
        "style": song.style,
        "language": "en",
        "duration": meta.pop("duration"),
        **{k: v for k, v in meta.items() if k != "style"},
    }


def write_dataset(out_dir: str | os.PathLike, count: int, seed: int, config: SynthConfig) -> Path:
    """Generate ``count`` songs with seeds ``seed .. seed+count-1`` into ``out_dir``; returns the manifest path."""
    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    total = 0.0
    t0 = time.perf_counter()
    for i in range(count):
        s = seed + i
        song = generate_song(s, config)
        rows.append(write_song(song, out, f"song-{s:07d}"))
        total += song.duration
        if (i + 1) % 25 == 0 or i + 1 == count:
            log.info("%d/%d songs, %.1f min of audio, %.1f s", i + 1, count, total / 60, time.perf_counter() - t0)
    manifest = out / MANIFEST
    atomic_write_text(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--count", type=int, required=True, help="number of songs")
    p.add_argument("--seed", type=int, default=0, help="seed of the first song (song i uses seed+i)")
    p.add_argument("--min-seconds", type=float, default=10.0, help="shortest song (s, >= 8)")
    p.add_argument("--max-seconds", type=float, default=40.0, help="longest song (s)")
    p.add_argument("--sample-rate", type=int, default=24000, help="Hz")
    p.add_argument("--genres", default=",".join(GENRES), help=f"comma-separated subset of {','.join(GENRES)}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        cfg = SynthConfig.from_dict(
            {
                "min_seconds": args.min_seconds,
                "max_seconds": args.max_seconds,
                "sample_rate": args.sample_rate,
                "genres": [g.strip() for g in args.genres.split(",") if g.strip()],
            }
        )
        manifest = write_dataset(args.out, args.count, args.seed, cfg)
    except (ConfigError, ValueError) as exc:
        p.error(str(exc))
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
