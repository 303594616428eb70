"""Candidate mining for CPPO: K generations per prompt with the current model, scored, as preference samples.

    python -m training.mine_candidates --make-prompts prompts.jsonl --count 40 --seed 0 --seconds 12
    python -m training.mine_candidates --prompts prompts.jsonl --model dr2studio/assets/demo --k 6 \\
        --out runs/mined --workers 2 --steps 16

Prompt sets are JSON (a list) or JSONL, one object per prompt: ``{"prompt": id, "lyrics": text,
"style": text, "duration": seconds}`` (``prompt`` defaults to the line number, ``duration`` to
``--seconds``). ``--make-prompts`` writes training-like prompts: the lyrics and style texts of the
procedural songs the demo model was trained on (seeds below the held-out 900000).

Each prompt is rendered ``--k`` times (seed ``--seed-base + prompt_index * k + j``) by
:class:`dr2studio.studio.Studio` in Ray tasks (a local Ray on CPU, or ``RAY_ADDRESS``), each take is
scored by :func:`dr2studio.scoring.signal.score_signal` against its style text and LRC plan, and
``OUT/candidates.jsonl`` gets one sample line per take in the format ``training/cppo.py`` reads::

    {"prompt": "p0003", "lyrics": "...", "style": "pop, 112 bpm, A minor, ...", "tokens": [...],
     "latents": "latents/p0003-2.safetensors", "labels": {"musicality": 0.81, "style_similarity": 0.3,
     "audio_quality": 1.0}, "scores": {...}, "details": {...}, "seed": 20}

Labels are the scores in [0, 1] that were measured (a dimension no scorer measured, e.g. lyric
accuracy without an ASR, is left out of ``labels``). ``OUT/mining.json`` records the settings, the
wall time and how many pairs each CPPO group yields per losing case at ``--threshold``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dr2studio.config import atomic_write_text

__all__ = ["Prompt", "load_prompts", "make_prompts", "mine_prompts", "pair_counts", "main"]

log = logging.getLogger("dr2studio.training.mine_candidates")

HELD_OUT_SEED = 900_000  # benchmarks/demo_quality.py measures from here on


class MiningError(ValueError):
    """A prompt set or mining setting that cannot be used; the message says where."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    prompt: str
    lyrics: str
    style: str
    duration: float


def load_prompts(path: str | Path, default_seconds: float) -> list[Prompt]:
    """Read a JSON list or JSONL prompt set; each entry needs ``lyrics`` and ``style`` texts."""
    path = Path(path)
    if not path.is_file():
        raise MiningError(f"prompt set not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as exc:
            raise MiningError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from exc
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise MiningError(f"{path}:{n}: malformed JSON ({exc.msg})") from exc
    out, seen = [], set()
    for n, row in rows:
        if not isinstance(row, dict):
            raise MiningError(f"{path}:{n}: a prompt must be an object with lyrics and style, got {type(row).__name__}")
        for key in ("lyrics", "style"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise MiningError(f"{path}:{n}: '{key}' must be a non-empty text")
        pid = str(row.get("prompt") or f"p{n:04d}")
        if pid in seen:
            raise MiningError(f"{path}:{n}: prompt id {pid!r} appears twice")
        seen.add(pid)
        dur = row.get("duration", default_seconds)
        if not isinstance(dur, (int, float)) or not math.isfinite(dur) or not 1.0 <= dur <= 600.0:
            raise MiningError(f"{path}:{n}: duration must be 1..600 s, got {dur!r}")
        out.append(Prompt(pid, row["lyrics"], row["style"], float(dur)))
    if not out:
        raise MiningError(f"{path}: no prompts")
    return out


def make_prompts(count: int, seed: int, seconds: float) -> list[Prompt]:
    """Training-like prompts: lyrics and style of the procedural songs of seeds ``seed..seed+count-1``."""
    from dr2studio.lab.synth import SynthConfig, generate_song

    if seed + count > HELD_OUT_SEED:
        raise MiningError(f"seeds {seed}..{seed + count - 1} reach the held-out range ({HELD_OUT_SEED} on)")
    cfg = SynthConfig(sample_rate=8000)
    out = []
    for i in range(count):
        song = generate_song(seed + i, cfg, duration=seconds)
        out.append(Prompt(f"s{seed + i:07d}", song.lyrics, song.style, float(song.duration)))
    return out


@dataclasses.dataclass
class MineSettings:
    model: str
    k: int = 4
    steps: int = 16
    cfg_strength: float = 2.0
    seed_base: int = 0


def _mine_chunk(chunk: list[tuple[int, dict[str, Any]]], settings: dict[str, Any], out_dir: str) -> list[dict[str, Any]]:
    """Render and score the prompts of one Ray task; writes latents files, returns sample records."""
    import torch
    from safetensors.torch import save_file

    from dr2studio.atomic import atomic_path
    from dr2studio.scoring.signal import score_signal, sections_from_lyrics
    from dr2studio.studio import Studio
    from dr2studio.style.tags import parse_style_tags

    torch.set_num_threads(1)
    s = MineSettings(**settings)
    studio = Studio.load(s.model, device="cpu")
    out = Path(out_dir)
    records = []
    for index, p in chunk:
        tags = parse_style_tags(p["style"])
        key = (tags.key, tags.mode or "major") if tags.key is not None else None
        for j in range(s.k):
            seed = s.seed_base + index * s.k + j
            song = studio.generate(p["lyrics"], p["style"], p["duration"], steps=s.steps, cfg_strength=s.cfg_strength,
                                   seed=seed)
            plan = sections_from_lyrics(p["lyrics"], song.duration)
            score = score_signal(song.audio, song.sample_rate, tempo=tags.tempo, key=key, sections=plan)
            rel = f"latents/{p['prompt']}-{j}.safetensors"
            with atomic_path(out / rel) as tmp:
                save_file({"latents": song.latents[0].detach().float().contiguous()}, str(tmp))
            labels = {d: v for d, v in score.scores.items() if v is not None}
            records.append({"prompt": p["prompt"], "lyrics": p["lyrics"], "style": p["style"],
                            "tokens": [int(t) for t in song.tokens.reshape(-1).tolist()], "latents": rel,
                            "labels": labels, "scores": score.scores, "details": score.details, "seed": seed,
                            "duration": round(song.duration, 3)})
    return records


def mine_prompts(prompts: Sequence[Prompt], settings: MineSettings, out_dir: Path, workers: int) -> list[dict[str, Any]]:
    """K scored takes per prompt, rendered by ``workers`` Ray tasks; records in prompt order."""
    import ray

    started = not ray.is_initialized()  # a Ray this call started is shut down again; a caller's is left running
    if started:
        try:  # a running cluster (RAY_ADDRESS, or one `ray start` began on this machine) does the work
            ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=True)
        except ConnectionError:  # none: a local Ray of ``workers`` CPUs for this call
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=True)
    try:
        (out_dir / "latents").mkdir(parents=True, exist_ok=True)
        items = [(i, dataclasses.asdict(p)) for i, p in enumerate(prompts)]
        chunks = [items[w::workers] for w in range(workers) if items[w::workers]]
        task = ray.remote(num_cpus=1)(_mine_chunk)
        refs = [task.remote(c, dataclasses.asdict(settings), str(out_dir)) for c in chunks]
        records = [r for part in ray.get(refs) for r in part]
    finally:
        if started:
            ray.shutdown()
    order = {p.prompt: i for i, p in enumerate(prompts)}
    return sorted(records, key=lambda r: (order[r["prompt"]], r["seed"]))


def pair_counts(records: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Per CPPO group: pairs per losing case before balancing, or why the group yields none."""
    from dr2studio.flow.preference import PAIR_GROUPS, Candidate, PreferenceError, build_pairs, pairs_per_case

    cands = [Candidate(str(i), r["prompt"], r["labels"]) for i, r in enumerate(records)]
    out: dict[str, Any] = {}
    for group, dims in PAIR_GROUPS.items():
        missing = [d for d in dims if any(d not in c.labels for c in cands)]
        if missing:
            out[group] = {"pairs": 0, "reason": f"no score for {missing} (needs a model-based scorer)"}
            continue
        counts = pairs_per_case(cands, group, threshold)
        try:
            balanced = len(build_pairs(cands, group, threshold=threshold))
        except PreferenceError as exc:
            balanced, why = 0, str(exc)
        else:
            why = None
        out[group] = {"pairs_per_case": counts, "balanced_pairs": balanced, **({"reason": why} if why else {})}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-prompts", metavar="FILE", help="write training-like prompts (JSONL) and exit")
    p.add_argument("--count", type=int, default=40, help="prompts to make (--make-prompts)")
    p.add_argument("--seed", type=int, default=0, help="first song seed (--make-prompts)")
    p.add_argument("--prompts", help="prompt set (JSON list or JSONL)")
    p.add_argument("--model", help="model directory or hub id to mine with")
    p.add_argument("--out", help="output folder (candidates.jsonl, latents/, mining.json)")
    p.add_argument("--k", type=int, default=4, help="candidates per prompt")
    p.add_argument("--seconds", type=float, default=12.0, help="song length where a prompt gives none")
    p.add_argument("--steps", type=int, default=16, help="sampler steps")
    p.add_argument("--cfg-strength", type=float, default=2.0)
    p.add_argument("--seed-base", type=int, default=0, help="sampler seed of the first candidate")
    p.add_argument("--workers", type=int, default=2, help="Ray tasks (CPU cores)")
    p.add_argument("--threshold", type=float, default=0.5, help="label threshold for the pair counts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.make_prompts:
            if args.count < 1:
                raise MiningError(f"--count must be at least 1, got {args.count}")
            prompts = make_prompts(args.count, args.seed, args.seconds)
            atomic_write_text(args.make_prompts, "".join(json.dumps(dataclasses.asdict(x)) + "\n" for x in prompts))
            log.info("wrote %d prompts to %s", len(prompts), args.make_prompts)
            return 0
        if not (args.prompts and args.model and args.out):
            p.error("--prompts, --model and --out are required (or --make-prompts FILE)")
        if args.k < 2:
            raise MiningError(f"--k must be at least 2 (pairs are formed within a prompt), got {args.k}")
        if args.workers < 1:
            raise MiningError(f"--workers must be at least 1, got {args.workers}")
        prompts = load_prompts(args.prompts, args.seconds)
        from dr2studio.checkpoints import resolve_model_dir

        model_dir = resolve_model_dir(args.model)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise MiningError(f"--out {out} is a file")
        out.mkdir(parents=True, exist_ok=True)
        settings = MineSettings(str(model_dir), args.k, args.steps, args.cfg_strength, args.seed_base)
        t0 = time.perf_counter()
        records = mine_prompts(prompts, settings, out, min(args.workers, len(prompts)))
        wall = time.perf_counter() - t0
    except (MiningError, OSError, ValueError) as exc:
        print(f"mine_candidates: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(out / "candidates.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    dims = sorted({d for r in records for d in r["labels"]})
    summary = {
        "settings": dataclasses.asdict(settings), "prompts": len(prompts), "candidates": len(records),
        "wall_seconds": round(wall, 1), "threshold": args.threshold,
        "label_means": {d: round(sum(r["labels"][d] for r in records) / len(records), 4) for d in dims},
        "good_share": {d: round(sum(r["labels"][d] >= args.threshold for r in records) / len(records), 4) for d in dims},
        "groups": pair_counts(records, args.threshold),
    }
    atomic_write_text(out / "mining.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
