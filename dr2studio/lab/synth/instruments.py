"""Synthesis of each part of a :class:`~dr2studio.lab.synth.arrangement.SongPlan` into mono audio.

Tonal instruments are wavetable oscillators (tables built from harmonic amplitudes by an inverse FFT,
band-limited per note); the lead voice is additive synthesis whose harmonic amplitudes follow the
three formants of the syllable's vowel, with vibrato, glides between notes and a short noise burst for
the onset consonant; drums are one-shots convolved with impulse trains.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from dr2studio.lab.synth import dsp
from dr2studio.lab.synth.arrangement import Note, SungNote
from dr2studio.lab.synth.theory import midi_to_hz

__all__ = ["ToneSpec", "TONES", "render_tone", "render_voice", "render_drums", "FORMANTS"]

# Peterson & Barney style formants (Hz) for an adult male voice; a female voice scales them by 1.15.
FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
_FORMANT_GAINS = np.array([1.0, 0.5, 0.25])


@dataclasses.dataclass(frozen=True)
class ToneSpec:
    """A tonal instrument: layers of (harmonic amplitudes for k = 1.., decay time constant or None)."""

    layers: tuple[tuple[Callable[[np.ndarray], np.ndarray], float | None], ...]
    attack: float
    release: float
    detune_cents: tuple[float, ...] = (0.0,)
    drive: float | None = None  # tanh saturation gain (electric guitar)
    max_harmonics: int = 24


TONES: dict[str, ToneSpec] = {
    "pad": ToneSpec(((lambda k: np.exp(-k / 5.0) / k, None),), attack=0.35, release=0.4, detune_cents=(-7.0, 7.0), max_harmonics=16),
    "piano": ToneSpec(((lambda k: k**-1.3, 0.25), (lambda k: k**-2.5, 1.2)), attack=0.004, release=0.15),
    "synth pluck": ToneSpec(((lambda k: 1.0 / k, 0.15), (lambda k: k**-2.0, 0.4)), attack=0.003, release=0.06),
    "acoustic guitar": ToneSpec(((lambda k: k**-1.1, 0.12), (lambda k: k**-2.0, 0.8)), attack=0.002, release=0.08),
    "electric guitar": ToneSpec(((lambda k: 1.0 / k, 1.5),), attack=0.004, release=0.05, drive=3.0, max_harmonics=12),
    "bass": ToneSpec(((lambda k: np.array([1.0, 0.5, 0.25, 0.12, 0.06])[: len(k)], 0.6),), attack=0.005, release=0.05, max_harmonics=5),
}


def _harmonics(sr: int, f0: float, cap: int) -> np.ndarray:
    """Harmonic numbers ``1..K`` that stay below 0.45 * ``sr`` (no aliasing)."""
    k_max = int(max(1, min(cap, 0.45 * sr // max(f0, 1.0))))
    return np.arange(1, k_max + 1, dtype=np.float64)


def render_tone(notes: Sequence[Note], spec: ToneSpec, sr: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Render ``notes`` with instrument ``spec`` into a ``[n]`` buffer."""
    out = np.zeros(n)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for note in notes:
        f0 = float(midi_to_hz(note.midi))
        k = _harmonics(sr, f0 * 2 ** (max(spec.detune_cents) / 1200), spec.max_harmonics)
        m = int((note.dur + spec.release) * sr)
        if m <= 0:
            continue
        t = np.arange(m) / sr
        seg = np.zeros(m)
        for li, (amps, decay) in enumerate(spec.layers):
            key = (li, len(k))
            if key not in cache:
                cache[key] = dsp.harmonic_table(amps(k))
            layer = np.zeros(m)
            for cents in spec.detune_cents:
                layer += dsp.wavetable(cache[key], f0 * 2 ** (cents / 1200) * t + rng.random())
            if decay is not None:
                layer *= np.exp(-t / decay)
            seg += layer
        seg /= len(spec.detune_cents)
        if spec.drive is not None:
            seg = np.tanh(spec.drive * seg) / np.tanh(spec.drive)
        seg *= dsp.envelope(m, sr, spec.attack, note.dur, spec.release) * note.vel
        dsp.add_into(out, int(round(note.start * sr)), seg)
    return out


def _formant_amps(k: np.ndarray, f0: float, vowel: str, scale: float) -> np.ndarray:
    freqs = np.asarray(FORMANTS[vowel]) * scale  # [3]
    f = k[:, None] * f0  # [K, 1]
    res = _FORMANT_GAINS / (1.0 + ((f - freqs) / (_BANDWIDTHS / 2.0)) ** 2)  # [K, 3]
    return (res.sum(axis=1) + 0.03) / k


def render_voice(notes: Sequence[SungNote], sr: int, n: int, rng: np.random.Generator, vocal: str) -> np.ndarray:
    """Sing ``notes`` (one per syllable) with a formant voice; ``vocal`` is ``"female"`` or ``"male"``."""
    out = np.zeros(n)
    scale = 1.15 if vocal == "female" else 1.0
    release = 0.06
    prev_end, prev_midi = -1.0, None
    for note in notes:
        m = int((note.dur + release) * sr)
        if m <= 0:
            continue
        t = np.arange(m) / sr
        glide = (prev_midi - note.midi) if prev_midi is not None and note.start - prev_end < 0.08 else 0.0
        vib = 0.3 * np.sin(2 * np.pi * 5.5 * t) * np.clip((t - 0.15) / 0.2, 0.0, 1.0)
        midi = note.midi + glide * np.exp(-t / 0.03) + vib
        freq = midi_to_hz(midi)
        phase = np.cumsum(freq) / sr
        f0 = float(midi_to_hz(note.midi))
        k = _harmonics(sr, f0 * 1.03, 60)
        amps = _formant_amps(k, f0, note.vowel, scale)
        seg = dsp.wavetable(dsp.harmonic_table(amps / amps.max()), phase)
        attack = 0.05 if note.onset == "sonorant" else 0.025
        seg *= dsp.envelope(m, sr, attack, note.dur, release) * note.vel
        if note.onset in ("fricative", "plosive"):
            length = int((0.05 if note.onset == "fricative" else 0.015) * sr)
            burst = dsp.highpass_noise(rng, length, order=2 if note.onset == "fricative" else 1)
            burst *= np.hanning(length) * (0.12 if note.onset == "fricative" else 0.25)
            seg[: min(length, m)] += burst[: min(length, m)]
        dsp.add_into(out, int(round(note.start * sr)), seg)
        prev_end, prev_midi = note.start + note.dur, note.midi
    return out


def render_drums(parts: dict[str, list[Note]], sr: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Kick, snare, closed and open hat tracks (``[n]`` each) from their hit lists."""
    shots = {
        "kick": dsp.kick(sr, rng),
        "snare": dsp.snare(sr, rng),
        "hat": dsp.hat(sr, rng),
        "open": dsp.hat(sr, rng, open_=True),
    }
    tracks = {}
    for name, shot in shots.items():
        track = np.zeros(n)
        hits = parts.get(name, [])
        gains = 1.0 + 0.05 * rng.standard_normal(len(hits))
        for hit, g in zip(hits, gains):
            dsp.add_into(track, int(round(hit.start * sr)), shot * (hit.vel * g))
        tracks[name] = track
    return tracks
