"""Procedural songs with lyrics and a style text, deterministic from a seed.

``generate_song(seed)`` draws a score (:func:`~dr2studio.lab.synth.arrangement.plan_song`), synthesises it
(:mod:`~dr2studio.lab.synth.instruments`) and returns a :class:`SynthSong`: mono float32 audio ``[n]``, the
lyrics as LRC text with section tags, and the style text that names tempo, key and instruments.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.lab.synth import dsp
from dr2studio.lab.synth.arrangement import GENRES, SongPlan, SongSection, plan_song
from dr2studio.lab.synth.instruments import TONES, render_drums, render_tone, render_voice
from dr2studio.lab.synth.style import describe_style
from dr2studio.lab.synth.theory import key_name

__all__ = ["SynthConfig", "SynthSong", "generate_song", "song_from_plan", "lyrics_lrc"]

_LEVELS = {"voice": 0.55, "pad": 0.22, "harmony": 0.3, "bass": 0.5, "kick": 0.8, "snare": 0.45, "hat": 0.25, "open": 0.18}
_REVERB_SEND = {"voice": 0.3, "pad": 0.3, "harmony": 0.2}
_TARGET_RMS = 0.1


@dataclasses.dataclass
class SynthConfig(JsonConfig):
    """Song length range (seconds), output sample rate (Hz) and the genres to draw from."""

    min_seconds: float = 10.0
    max_seconds: float = 40.0
    sample_rate: int = 24000
    genres: list[str] = dataclasses.field(default_factory=lambda: list(GENRES))

    def validate(self) -> None:
        if not 8.0 <= self.min_seconds <= self.max_seconds <= 600.0:
            raise ConfigError(
                f"SynthConfig: need 8 <= min_seconds <= max_seconds <= 600, got {self.min_seconds}, {self.max_seconds}"
            )
        if not 8000 <= int(self.sample_rate) <= 192000:
            raise ConfigError(f"SynthConfig: sample_rate must be 8000..192000 Hz, got {self.sample_rate}")
        bad = [g for g in self.genres if g not in GENRES]
        if bad or not self.genres:
            raise ConfigError(f"SynthConfig: genres must be a non-empty subset of {list(GENRES)}, got {self.genres}")


@dataclasses.dataclass
class SynthSong:
    """A synthetic song. ``audio`` is mono float32 ``[n]`` at ``sample_rate``; ``key`` is the tonic name."""

    audio: np.ndarray
    sample_rate: int
    lyrics: str
    style: str
    tempo: float
    key: str
    mode: str
    sections: list[SongSection]
    seed: int
    genre: str = ""
    instruments: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def metadata(self) -> dict:
        """JSON-ready description (everything but the audio and lyrics)."""
        return {
            "style": self.style,
            "duration": round(self.duration, 4),
            "sample_rate": self.sample_rate,
            "tempo": self.tempo,
            "key": self.key,
            "mode": self.mode,
            "genre": self.genre,
            "instruments": list(self.instruments),
            "sections": [dataclasses.asdict(s) for s in self.sections],
            "seed": self.seed,
        }


def _stamp(seconds: float) -> str:
    cs = int(round(seconds * 100))
    return f"[{cs // 6000:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}]"


def lyrics_lrc(plan: SongPlan) -> str:
    """LRC text: ``[start]``, a tag line per section, ``[mm:ss.xx]line`` per sung line, ``[end]``.

    Tag lines carry no timestamp and no spaces, so that the DiffRhythm tag table matches them exactly.
    """
    out = ["[start]"]
    for si, sec in enumerate(plan.sections):
        out.append(f"[{sec.kind}]")
        out.extend(f"{_stamp(sl.start)}{sl.line.text}" for sl in plan.lines if sl.section == si)
    out.append("[end]")
    return "\n".join(out) + "\n"


def song_from_plan(plan: SongPlan, sample_rate: int) -> SynthSong:
    """Synthesise and mix ``plan`` at ``sample_rate`` Hz."""
    sr = int(sample_rate)
    n = int(round(plan.duration * sr))
    rng = np.random.default_rng([plan.seed, 1])
    harmony = plan.instruments[0]
    tracks = {
        "voice": render_voice(plan.melody, sr, n, rng, plan.vocal),
        "pad": render_tone(plan.parts["pad"], TONES["pad"], sr, n, rng),
        "harmony": render_tone(plan.parts["harmony"], TONES[harmony], sr, n, rng),
        "bass": render_tone(plan.parts["bass"], TONES["bass"], sr, n, rng),
        **render_drums(plan.parts, sr, n, rng),
    }
    dry = sum(_LEVELS[name] * x for name, x in tracks.items())
    send = sum(_LEVELS[name] * _REVERB_SEND[name] * tracks[name] for name in _REVERB_SEND)
    mix = dry + dsp.fft_convolve(send, dsp.reverb_ir(sr, rng))
    # fades: 10 ms in, and out over the last bar (at most 2 s)
    fade_out = int(min(2.0, 4 * plan.beat_s, plan.duration / 4) * sr)
    mix[: int(0.01 * sr)] *= np.linspace(0.0, 1.0, int(0.01 * sr))
    mix[n - fade_out :] *= np.linspace(1.0, 0.0, fade_out) ** 2
    mix *= _TARGET_RMS / (np.sqrt(np.mean(mix**2)) + 1e-12)
    mix = 0.95 * np.tanh(mix / 0.95)  # soft limit the rare peaks above -0.5 dBFS
    return SynthSong(
        audio=mix.astype(np.float32),
        sample_rate=sr,
        lyrics=lyrics_lrc(plan),
        style=describe_style(plan.genre, plan.tempo, plan.tonic_pc, plan.mode, plan.vocal, plan.instruments),
        tempo=float(plan.tempo),
        key=key_name(plan.tonic_pc, plan.mode),
        mode=plan.mode,
        sections=list(plan.sections),
        seed=plan.seed,
        genre=plan.genre,
        instruments=plan.instruments,
    )


def generate_song(seed: int, config: SynthConfig | None = None, *, duration: float | None = None) -> SynthSong:
    """A song deterministic from ``seed``; its length is drawn from the config's range unless given."""
    cfg = config or SynthConfig()
    cfg.validate()
    if duration is None:
        duration = float(np.random.default_rng([int(seed), 2]).uniform(cfg.min_seconds, cfg.max_seconds))
        duration = round(duration, 2)
    elif not 4.0 <= duration <= 600.0:
        raise ValueError(f"duration must be 4..600 s, got {duration}")
    plan = plan_song(int(seed), float(duration), tuple(cfg.genres))
    return song_from_plan(plan, cfg.sample_rate)
