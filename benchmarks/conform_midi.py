"""Wall time of tempo conform and audio-to-MIDI for one take (default: 20 s, stereo, 44.1 kHz).

The take is the real recording ``../shared/real/2.wav`` (19.6 s) when present, else a procedural song
made at 120 bpm. Each stage is timed ``--repeats`` times after one warm-up run (the first beat-tracker
call in a process compiles librosa's numba code; its time is printed apart). Prints one table row per
stage (median / min / max seconds) and the real-time factor (seconds of take per second of work).

    python benchmarks/conform_midi.py
    python benchmarks/conform_midi.py --seconds 60 --target 96 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _take(seconds: float) -> tuple[torch.Tensor, int, str]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "real" / "2.wav"
    if shared.is_file():
        import soundfile as sf

        data, rate = sf.read(shared, dtype="float32", always_2d=True)
        audio = torch.from_numpy(data.T.copy())
        reps = int(np.ceil(seconds * rate / audio.shape[-1]))
        return audio.repeat(1, reps)[:, : int(seconds * rate)], rate, f"{shared.name} (real, looped to {seconds:g} s)"
    from dr2studio.lab.synth.arrangement import plan_song
    from dr2studio.lab.synth.song import song_from_plan

    seed = next(s for s in range(1000) if plan_song(s, seconds).tempo == 120)
    song = song_from_plan(plan_song(seed, seconds), 44100)
    mono = torch.from_numpy(song.audio)[None]
    return mono.repeat(2, 1), 44100, f"procedural song at 120 bpm ({seconds:g} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--target", type=float, default=96.0, help="conform target (bpm)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from dr2studio.audio.conform import analyse_beats, apply_conform, plan_conform
    from dr2studio.audio.transcribe import notes_to_midi, transcribe

    audio, rate, what = _take(args.seconds)
    started = time.perf_counter()
    analyse_beats(audio, rate)
    first_call = time.perf_counter() - started
    plan = plan_conform(audio, rate, args.target)
    started = time.perf_counter()
    transcribe(audio, rate)
    first_transcribe = time.perf_counter() - started

    stages = {
        "analyse (beats, tempo, downbeat, key)": lambda: plan_conform(audio, rate, args.target),
        f"time-stretch 1 stem ({audio.shape[0]} ch)": lambda: apply_conform(audio, rate, plan),
        "transcribe 1 stem (basic-pitch ONNX)": lambda: notes_to_midi(transcribe(audio, rate), bpm=args.target),
    }
    print(f"take: {what}, {audio.shape[0]} channels, {rate} Hz; conform to {args.target:g} bpm "
          f"(detected {plan.detected_bpm:.2f}, length x{plan.stretch_ratio:.4f})")
    print(f"first beat-tracker call in this process (numba compile / cache load): {first_call:.2f} s; "
          f"first transcription (ONNX model load): {first_transcribe:.2f} s")
    print("| stage | median s | min s | max s | x real time |")
    print("|---|---|---|---|---|")
    for name, run in stages.items():
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {min(times):.2f} | {max(times):.2f} | {args.seconds / median:.1f} |")


if __name__ == "__main__":
    main()
