"""Beats, bars and seconds on a timeline whose tempo and meter change.

A DAW project or a MIDI file has a tempo map (``set_tempo`` events) and a meter map
(``time_signature`` events). One average tempo gets the song's length right but places every
section boundary between the changes wrongly, so anything that turns bars or beats into seconds
(sections, ``--start-bar``, stem positions) goes through a :class:`TempoMap`.

Beats are quarter notes counted from 0. Bars are numbered from 1, as musicians and DAWs number them;
a meter change starts a new bar, so a change in the middle of a bar leaves a short bar before it.
Pure Python, no dependencies.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any, Iterable

__all__ = ["TempoMap"]

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class TempoMap:
    """Tempo changes ``(beat, bpm)`` and meter changes ``(beat, numerator, denominator)``, both
    sorted, each starting at beat 0. Build one with :meth:`constant` or :meth:`from_changes`."""

    tempos: tuple[tuple[float, float], ...]
    meters: tuple[tuple[float, int, int], ...]

    def __post_init__(self) -> None:
        if not self.tempos or self.tempos[0][0] != 0.0 or not self.meters or self.meters[0][0] != 0.0:
            raise ValueError("a tempo map needs a tempo and a meter at beat 0; use TempoMap.from_changes")
        for beat, bpm in self.tempos:
            if not (math.isfinite(beat) and math.isfinite(bpm) and bpm > 0):
                raise ValueError(f"tempo {bpm} bpm at beat {beat} must be a positive finite number")
        for beat, num, den in self.meters:
            if num < 1 or den < 1 or not math.isfinite(beat):
                raise ValueError(f"meter {num}/{den} at beat {beat} is not a time signature")
        # seconds at each tempo change, and bar number (from 1) at each meter change
        secs, bars = [0.0], [1.0]
        for (b0, bpm), (b1, _) in zip(self.tempos, self.tempos[1:]):
            secs.append(secs[-1] + (b1 - b0) * 60.0 / bpm)
        for (b0, num, den), (b1, _, _) in zip(self.meters, self.meters[1:]):
            bars.append(bars[-1] + math.ceil((b1 - b0) / (num * 4.0 / den) - 1e-6))
        object.__setattr__(self, "_tempo_beats", [b for b, _ in self.tempos])
        object.__setattr__(self, "_tempo_secs", secs)
        object.__setattr__(self, "_meter_beats", [b for b, _, _ in self.meters])
        object.__setattr__(self, "_meter_bars", bars)

    # ----------------------------------------------------------------- building
    @classmethod
    def constant(cls, bpm: float, numerator: int = 4, denominator: int = 4) -> "TempoMap":
        """One tempo and one meter for the whole timeline."""
        return cls(((0.0, float(bpm)),), ((0.0, int(numerator), int(denominator)),))

    @classmethod
    def from_changes(cls, tempos: Iterable[tuple[float, float]], meters: Iterable[tuple[float, int, int]] = (),
                     *, default_bpm: float = 120.0, default_meter: tuple[int, int] = (4, 4)) -> "TempoMap":
        """Normalise raw changes: sorted, the last change at a beat wins, repeats of the current value
        dropped, and the MIDI defaults (120 bpm, 4/4) in force until the first change."""
        tempo_list: list[tuple[float, float]] = [(0.0, float(default_bpm))]
        for beat, bpm in sorted(((max(0.0, float(b)), float(t)) for b, t in tempos), key=lambda c: c[0]):
            if tempo_list[-1][0] == beat:
                tempo_list[-1] = (beat, bpm)
            elif tempo_list[-1][1] != bpm:
                tempo_list.append((beat, bpm))
        meter_list: list[tuple[float, int, int]] = [(0.0, int(default_meter[0]), int(default_meter[1]))]
        for beat, num, den in sorted(((max(0.0, float(b)), int(n), int(d)) for b, n, d in meters), key=lambda c: c[0]):
            if meter_list[-1][0] == beat:
                meter_list[-1] = (beat, num, den)
            elif meter_list[-1][1:] != (num, den):
                meter_list.append((beat, num, den))
        tempo_list = [c for i, c in enumerate(tempo_list) if i == 0 or c[1] != tempo_list[i - 1][1]]
        meter_list = [c for i, c in enumerate(meter_list) if i == 0 or c[1:] != meter_list[i - 1][1:]]
        return cls(tuple(tempo_list), tuple(meter_list))

    def to_json(self) -> dict[str, Any]:
        return {"tempos": [list(t) for t in self.tempos], "meters": [list(m) for m in self.meters]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TempoMap":
        return cls(tuple((float(b), float(t)) for b, t in data["tempos"]),
                   tuple((float(b), int(n), int(d)) for b, n, d in data["meters"]))

    # ------------------------------------------------------------------ queries
    @property
    def is_constant(self) -> bool:
        return len(self.tempos) == 1 and len(self.meters) == 1

    def bpm_at(self, beat: float) -> float:
        return self.tempos[max(0, bisect.bisect_right(self._tempo_beats, beat) - 1)][1]  # type: ignore[attr-defined]

    def meter_at(self, beat: float) -> tuple[int, int]:
        _, num, den = self.meters[max(0, bisect.bisect_right(self._meter_beats, beat) - 1)]  # type: ignore[attr-defined]
        return num, den

    def seconds_at(self, beat: float) -> float:
        """Seconds from beat 0 to ``beat`` (before 0 and after the last change the nearest tempo holds)."""
        i = max(0, bisect.bisect_right(self._tempo_beats, beat) - 1)  # type: ignore[attr-defined]
        start, bpm = self.tempos[i]
        return self._tempo_secs[i] + (beat - start) * 60.0 / bpm  # type: ignore[attr-defined]

    def beat_at(self, seconds: float) -> float:
        """The beat sounding ``seconds`` after beat 0 (inverse of :meth:`seconds_at`)."""
        i = max(0, bisect.bisect_right(self._tempo_secs, seconds) - 1)  # type: ignore[attr-defined]
        start, bpm = self.tempos[i]
        return start + (seconds - self._tempo_secs[i]) * bpm / 60.0  # type: ignore[attr-defined]

    def beat_of_bar(self, bar: float) -> float:
        """The beat where bar number ``bar`` (from 1; fractions go into the bar) starts."""
        i = max(0, bisect.bisect_right(self._meter_bars, bar + _EPS) - 1)  # type: ignore[attr-defined]
        start, num, den = self.meters[i]
        return start + (bar - self._meter_bars[i]) * num * 4.0 / den  # type: ignore[attr-defined]

    def bar_at(self, beat: float) -> float:
        """The (fractional) bar number, from 1, at ``beat``."""
        i = max(0, bisect.bisect_right(self._meter_beats, beat) - 1)  # type: ignore[attr-defined]
        start, num, den = self.meters[i]
        return self._meter_bars[i] + (beat - start) / (num * 4.0 / den)  # type: ignore[attr-defined]

    def bar_start(self, beat: float) -> float:
        """The beat where the bar holding ``beat`` starts (for snapping a boundary to the bar line)."""
        return self.beat_of_bar(math.floor(self.bar_at(beat) + 1e-6))

    def bar_to_seconds(self, bar: float) -> float:
        return self.seconds_at(self.beat_of_bar(bar))

    def seconds_to_bar(self, seconds: float) -> float:
        return self.bar_at(self.beat_at(seconds))

    def main_bpm(self, end_beat: float | None = None) -> float:
        """The tempo that sounds longest up to ``end_beat``: the song's tempo to state in a style prompt."""
        end = self.tempos[-1][0] if end_beat is None else end_beat
        held: dict[float, float] = {}
        for i, (beat, bpm) in enumerate(self.tempos):
            nxt = self.tempos[i + 1][0] if i + 1 < len(self.tempos) else max(end, beat)
            stop = min(nxt, end) if i + 1 < len(self.tempos) else max(end, beat)
            if stop > beat or i == 0:
                held[bpm] = held.get(bpm, 0.0) + max(0.0, stop - beat) * 60.0 / bpm
        return max(held.items(), key=lambda kv: kv[1])[0]
