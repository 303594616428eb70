"""Script a whole production session with the Python API.

    python examples/scripted_session.py --model path/to/model --out session/
    python examples/scripted_session.py --out session/          # shipped demo model, else a tiny random one

Generates a song, keeps two seeded takes of the chorus, extends the song with a bridge, re-sings one
line range with infill, and renders every version as stems into an Ableton project folder, with the
manifest listing each take. Every step writes its audio with a ``.dr2.safetensors`` sidecar, so any
file can be picked up again later (``Song.load``) and continued exactly.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

from dr2studio.audio.stems import export_stems
from dr2studio.song import Song
from dr2studio.studio import Studio

DEMO = Path(__file__).resolve().parents[1] / "dr2studio" / "assets" / "demo"

VERSE = """[verse]
City lights are calling me tonight
Every step I take feels right
[chorus]
Sing it loud and let it go
"""
BRIDGE = """[bridge]
Hold on, the night is young
"""
NEW_LINE = """[verse]
Neon rivers running through the town
"""


def pick_model(model: str | None, scratch: Path) -> str:
    """The model to use: the one given, the shipped demo, else a tiny random model (plumbing demo only)."""
    if model:
        return model
    if (DEMO / "model.json").is_file():
        return str(DEMO)
    from dr2studio.lab.testing import build_tiny_model

    print("no --model and no demo model installed: using a tiny random model (the audio will be noise)")
    return str(build_tiny_model(scratch / "tiny-model", style_encoder=True))


def progress_printer(label: str):
    def progress(done: int, total: int, stage: str) -> None:
        if stage == "done":
            print(f"  {label}: done")
    return progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or hub repo id")
    parser.add_argument("--out", type=Path, default=Path("session"), help="output folder (created)")
    parser.add_argument("--style", default="pop, 120 bpm, A minor, piano, drums",
                        help="style text (needs MuQ-MuLan or a model style encoder) or a .npy embedding path")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the first draft")
    parser.add_argument("--steps", type=int, default=8, help="sampler steps (32 for final quality)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        studio = Studio.load(pick_model(args.model, Path(scratch)))
        print(f"model {studio.model_dir} [{studio.fingerprint}], {studio.sample_rate} Hz")
        style = studio.style_embedding(args.style)  # resolve once, reuse for every take

        # 1. two seeded drafts; keep the one we like (here: the louder one)
        drafts = [studio.generate(VERSE, style, args.seconds, steps=args.steps, seed=seed,
                                  progress=progress_printer(f"draft seed {seed}")) for seed in (1, 2)]
        song = max(drafts, key=lambda s: float(s.audio.pow(2).mean()))
        song.save(args.out / "draft.wav")

        # 2. pick the file up again (as a later session would) and extend it with a bridge
        song = Song.load(args.out / "draft.wav")
        longer = studio.extend(song, BRIDGE, seconds=args.seconds / 2, steps=args.steps, seed=3,
                               progress=progress_printer("extend"))
        splice = longer.last_edit.splice
        same = torch.equal(longer.audio[:, : round(splice * longer.sample_rate)],
                           song.audio[:, : round(splice * song.sample_rate)])
        print(f"  extended to {longer.duration:.1f} s; audio before {splice:.2f} s unchanged: {same}")
        longer.save(args.out / "extended.wav")

        # 3. re-sing the second quarter of the song with a new line
        start, end = longer.duration * 0.25, longer.duration * 0.5
        fixed = studio.infill(longer, start, end, NEW_LINE, steps=args.steps, seed=4,
                              progress=progress_printer("infill"))
        fixed.save(args.out / "fixed.wav")
        print(f"  regenerated {start:.2f}-{end:.2f} s; length still {fixed.duration:.1f} s")

        # 4. every version into the DAW project, one take each, placed one after the other
        project = args.out / "Session Project"
        render_takes(args.out, ("draft", "extended", "fixed"), project)


def render_takes(folder: Path, names: tuple[str, ...], project: Path) -> list[dict]:
    """Stems of each ``<folder>/<name>.wav`` into an Ableton project, one take after the other.

    The stems are rendered at the project's rate (48 kHz unless the project already has takes at
    another rate), whatever rate the model decodes at; the manifest records where each take sits.
    """
    position, entries = 0.0, []
    for name in names:
        take = Song.load(folder / f"{name}.wav")
        entry = export_stems(take, project, daw="ableton", preset="balanced", position=position)
        mix = entry["stems"]["mix"]
        print(f"  take {entry['take']} at {position:.1f} s -> {entry['files']['mix']} "
              f"({take.sample_rate} -> {entry['sample_rate']} Hz, {mix['loudness_lufs']} LUFS, target {mix['target_lufs']})")
        position += take.duration
        entries.append(entry)
    manifest = json.loads((project / "dr2studio.json").read_text())
    print(f"{project / 'dr2studio.json'}: {len(manifest['takes'])} takes (schema {manifest['schema_version']})")
    return entries


if __name__ == "__main__":
    main()
