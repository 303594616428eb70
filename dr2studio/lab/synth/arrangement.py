"""The score of a procedural song: genre, tempo, key, sections, chords, lyric lines and every note.

``plan_song`` only draws random choices and writes them down as plain data (:class:`SongPlan`); turning
the score into audio is :mod:`dr2studio.lab.synth.instruments`' job. Times are in seconds. The song is cut
into bars of four beats; each section holds whole bars (the last one also takes the partial bar at the
end), plays its own chord progression at one chord per half bar, and has an ``energy`` level that scales the
velocity of every note in it and decides which instruments play.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dr2studio.lab.synth.theory import DOMINANT_MAJOR, PROGRESSIONS, chord_of, scale_of
from dr2studio.lab.synth.words import LyricLine, make_line

__all__ = ["GENRES", "SECTION_KINDS", "SongSection", "Note", "SungNote", "SungLine", "SongPlan", "plan_song"]

SECTION_KINDS: tuple[str, ...] = ("intro", "verse", "chorus", "bridge", "outro")

# genre -> tempo range (bpm, inclusive), harmony instruments to pick one from, pad?, drum pattern
GENRES: dict[str, dict] = {
    "pop": {"tempo": (92, 126), "harmony": ("piano", "synth pluck"), "pad": True},
    "dance": {"tempo": (118, 132), "harmony": ("synth pluck",), "pad": True},
    "ballad": {"tempo": (66, 88), "harmony": ("piano",), "pad": True},
    "folk": {"tempo": (86, 112), "harmony": ("acoustic guitar",), "pad": False},
    "rock": {"tempo": (108, 144), "harmony": ("electric guitar",), "pad": False},
}
_DOMINANT_DEGREES = frozenset({4, 1})  # melody tones over the minor key's major V: root and fifth
_BASE_ENERGY = {"intro": 0.45, "verse": 0.65, "chorus": 1.0, "bridge": 0.75, "outro": 0.5}
_TEMPLATES = (  # (minimum full bars, section kinds, relative lengths)
    (16, ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"), (1, 2, 2, 2, 2, 2, 2, 1)),
    (10, ("intro", "verse", "chorus", "bridge", "chorus", "outro"), (1, 2, 2, 2, 2, 1)),
    (4, ("intro", "verse", "chorus", "outro"), (1, 2, 2, 1)),
    (3, ("verse", "chorus", "outro"), (1, 1, 1)),
    (2, ("verse", "chorus"), (1, 1)),
)
# 16th-note step patterns per bar: kick, snare, closed hat, open hat
_DRUMS: dict[str, dict[str, tuple[int, ...]]] = {
    "pop": {"kick": (0, 8, 10), "snare": (4, 12), "hat": tuple(range(0, 16, 2)), "open": ()},
    "dance": {"kick": (0, 4, 8, 12), "snare": (4, 12), "hat": tuple(range(0, 16, 2)), "open": (2, 6, 10, 14)},
    "ballad": {"kick": (0, 10), "snare": (4, 12), "hat": (0, 4, 8, 12), "open": ()},
    "folk": {"kick": (0, 8), "snare": (4, 12), "hat": tuple(range(0, 16, 2)), "open": ()},
    "rock": {"kick": (0, 6, 8), "snare": (4, 12), "hat": tuple(range(0, 16, 2)), "open": ()},
}


@dataclasses.dataclass(frozen=True)
class SongSection:
    """One section of the song: ``kind`` in :data:`SECTION_KINDS`, its span and its energy (0..1)."""

    kind: str
    start_s: float
    end_s: float
    energy: float


@dataclasses.dataclass(frozen=True)
class Note:
    """A pitched note (``midi`` may be fractional) or a drum hit (``midi`` unused)."""

    start: float
    dur: float
    midi: float
    vel: float


@dataclasses.dataclass(frozen=True)
class SungNote:
    """One syllable of the lead line: a note plus the vowel to sing and its onset consonant class."""

    start: float
    dur: float
    midi: float
    vel: float
    vowel: str
    onset: str


@dataclasses.dataclass(frozen=True)
class SungLine:
    """A lyric line, the section it belongs to, and when its first syllable starts."""

    section: int
    start: float
    line: LyricLine


@dataclasses.dataclass
class SongPlan:
    """Everything the renderer needs; plain data, deterministic from ``seed``."""

    seed: int
    duration: float
    genre: str
    tempo: int
    tonic_pc: int
    mode: str
    vocal: str  # "female" | "male"
    instruments: tuple[str, ...]
    sections: list[SongSection]
    chords: list[tuple[float, tuple[int, int, int]]]  # (bar start, chord offsets from the tonic)
    lines: list[SungLine]
    melody: list[SungNote]
    parts: dict[str, list[Note]]  # "pad", "harmony", "bass", "kick", "snare", "hat", "open"

    @property
    def beat_s(self) -> float:
        return 60.0 / self.tempo


def _allocate(n: int, weights: tuple[int, ...]) -> list[int]:
    """Split ``n`` bars over sections in proportion to ``weights``, at least one bar each."""
    w = np.asarray(weights, dtype=np.float64)
    ideal = w / w.sum() * n
    bars = np.maximum(np.floor(ideal).astype(int), 1)
    while bars.sum() < n:
        bars[int(np.argmax(ideal - bars))] += 1
    while bars.sum() > n:
        over = np.where(bars > 1, bars - ideal, -np.inf)
        bars[int(np.argmax(over))] -= 1
    return bars.tolist()


def _layout(rng: np.random.Generator, n_full: int) -> list[tuple[str, int]]:
    for min_bars, kinds, weights in _TEMPLATES:
        if n_full >= min_bars:
            return list(zip(kinds, _allocate(n_full, weights)))
    raise ValueError(f"a song needs at least 2 full bars, got {n_full}")


def _voice(offsets: tuple[int, ...], tonic_midi: int, low: int, high: int) -> list[int]:
    """Place chord offsets (from the tonic) as MIDI notes inside ``[low, high]``, sorted."""
    notes = []
    for off in offsets:
        m = tonic_midi + off
        m = low + (m - low) % 12
        if m > high:
            m -= 12
        notes.append(m)
    return sorted(notes)


def _melody_for_line(
    rng: np.random.Generator,
    line: LyricLine,
    bar_start: float,
    beat: float,
    chord_degrees: tuple[set[int], set[int]],
    centre: int,
    prev_degree: int,
) -> tuple[list[tuple[float, float, int]], int]:
    """Rhythm (eighth-note grid) and scale-degree pitches for one line sung over one bar.

    ``chord_degrees`` are the scale degrees (mod 7) allowed on strong beats in each half of the bar;
    weak beats move by small steps; the last syllable prefers the tonic when the chord has it.
    """
    n = len(line.syllables)
    eighth = beat / 2.0
    total = 8 if n == 8 else int(rng.integers(n, 8))  # sung eighths, leaving a breath when possible
    lengths = np.ones(n, dtype=int)
    extra = total - n
    if extra > 0:
        lengths[-1] += 1
        extra -= 1
        if extra > 0:
            np.add.at(lengths, rng.integers(0, n, size=extra), 1)
    offset = int(rng.integers(0, 8 - total + 1)) if total < 8 else 0
    starts = offset + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = []
    d = prev_degree
    for i, (s, ln) in enumerate(zip(starts, lengths)):
        allowed = chord_degrees[int(s >= 4)]
        last = i == n - 1
        if s % 2 == 0 or last:
            cands = [c for c in range(centre - 3, centre + 9) if c % 7 in allowed]
            cands.sort(key=lambda c: (not (last and c % 7 == 0), abs(c - d), rng.random()))
            d = cands[0] if last or rng.random() < 0.7 else cands[min(1, len(cands) - 1)]
        else:
            d = int(np.clip(d + rng.choice((-2, -1, -1, 0, 1, 1, 2)), centre - 3, centre + 8))
            if d % 7 == 6 and allowed == _DOMINANT_DEGREES:  # no flat seventh against the raised one
                d += 1
        out.append((bar_start + s * eighth, ln * eighth, d))
    return out, d


def _melody_degrees(degree: int, mode: str) -> set[int]:
    """Scale degrees (mod 7) of the chord on ``degree``; the minor key's major V keeps root and fifth
    only, since its raised third is not in the natural-minor scale the melody walks on."""
    if degree == DOMINANT_MAJOR:
        return set(_DOMINANT_DEGREES)
    return {degree % 7, (degree + 2) % 7, (degree + 4) % 7}


def plan_song(seed: int, duration: float, genres: tuple[str, ...] = tuple(GENRES)) -> SongPlan:
    """Draw a complete score of ``duration`` seconds from ``seed`` (deterministic)."""
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration} s")
    unknown = [g for g in genres if g not in GENRES]
    if unknown or not genres:
        raise ValueError(f"genres must be a non-empty subset of {tuple(GENRES)}, got {genres}")
    rng = np.random.default_rng([int(seed), 0])
    genre = genres[int(rng.integers(len(genres)))]
    spec = GENRES[genre]
    lo, hi = spec["tempo"]
    tempo = int(rng.integers(lo, hi + 1))
    beat = 60.0 / tempo
    bar = 4 * beat
    tonic_pc = int(rng.integers(12))
    mode = "minor" if rng.random() < 0.5 else "major"
    vocal = "female" if rng.random() < 0.5 else "male"
    harmony = spec["harmony"][int(rng.integers(len(spec["harmony"])))]
    instruments = (harmony,) + (("pad",) if spec["pad"] else ()) + ("bass", "drums")
    scale = scale_of(mode)
    tonic_midi = 48 + tonic_pc  # C3..B3

    n_full = int(duration // bar + 1e-9)
    layout = _layout(rng, n_full)
    partial = duration - n_full * bar > 0.1 * bar  # a final partial bar: let the tonic ring out
    if partial and layout[-1][0] != "outro":
        layout.append(("outro", 0))  # the ringing tonic is an outro of its own
    sections: list[SongSection] = []
    t = 0.0
    for i, (kind, n_bars) in enumerate(layout):
        end = duration if i == len(layout) - 1 else t + n_bars * bar
        energy = float(np.clip(_BASE_ENERGY[kind] + rng.uniform(-0.05, 0.05), 0.05, 1.0))
        sections.append(SongSection(kind, round(t, 4), round(end, 4), round(energy, 3)))
        t += n_bars * bar

    progressions = {k: v[int(rng.integers(len(v)))] for k, v in PROGRESSIONS[mode].items()}
    n_chorus = max([n for k, n in layout if k == "chorus"], default=0)
    chorus_lines = [make_line(rng) for _ in range(n_chorus)]
    chorus_melodies: dict[int, list[tuple[float, float, int]]] = {}
    centre_base = 0 if vocal == "male" else 7  # scale-degree index of the melody's home note
    parts: dict[str, list[Note]] = {k: [] for k in ("pad", "harmony", "bass", "kick", "snare", "hat", "open")}
    chords: list[tuple[float, tuple[int, int, int]]] = []
    lines: list[SungLine] = []
    melody: list[SungNote] = []
    drum = _DRUMS[genre]
    sixteenth = beat / 4.0
    prev_degree = centre_base + 2
    for si, ((kind, n_bars), sec) in enumerate(zip(layout, sections)):
        prog = progressions[kind]
        e = sec.energy
        last_section = si == len(layout) - 1
        for b in range(n_bars + int(last_section and partial)):
            b0 = sec.start_s + b * bar
            if b == n_bars:  # the partial bar after the outro: the tonic chord, held
                degrees = (0, 0)
            elif kind == "outro" or (last_section and kind != "intro"):  # end on the last chord (tonic)
                k = 2 * (b - n_bars)
                degrees = (prog[k % len(prog)], prog[(k + 1) % len(prog)])
            else:
                degrees = (prog[(2 * b) % len(prog)], prog[(2 * b + 1) % len(prog)])
            pair = (chord_of(degrees[0], mode), chord_of(degrees[1], mode))
            chords.append((b0, pair[0]))
            chords.append((b0 + 2 * beat, pair[1]))
            if spec["pad"]:
                for h, chord in enumerate(pair):
                    for m in _voice(chord, tonic_midi, 55, 74):
                        parts["pad"].append(Note(b0 + 2 * h * beat, 2 * beat, m, 0.55 * e))
            ring = b == n_bars
            _harmony_part(parts["harmony"], harmony, "outro" if ring else kind, pair, tonic_midi, b0, beat, e)
            _bass_part(parts["bass"], genre, "outro" if ring else kind, pair, tonic_midi, b0, beat, e)
            if kind in ("verse", "chorus", "bridge"):
                for name in ("kick", "snare", "hat", "open"):
                    steps = drum[name]
                    if kind == "bridge" and name != "kick":
                        steps = steps[::2] if name == "hat" else ()
                    if kind == "verse" and name == "open":
                        steps = ()
                    if kind == "chorus" and name == "hat" and genre in ("pop", "dance", "rock"):
                        steps = tuple(range(16))
                    for s_ in steps:
                        accent = 1.0 if s_ % 4 == 0 else 0.7
                        parts[name].append(Note(b0 + s_ * sixteenth, sixteenth, 0.0, e * accent))
            # lyrics: one line per bar in sung sections, one in the first bar of a long outro
            sung = b < n_bars and (kind in ("verse", "chorus", "bridge") or (kind == "outro" and b == 0 and n_bars >= 2))
            if not sung:
                continue
            centre = centre_base + (2 if kind == "chorus" else 0)
            allowed = (_melody_degrees(degrees[0], mode), _melody_degrees(degrees[1], mode))
            if kind == "chorus":
                line = chorus_lines[b % len(chorus_lines)]
                if b not in chorus_melodies:
                    chorus_melodies[b], prev_degree = _melody_for_line(rng, line, 0.0, beat, allowed, centre, prev_degree)
                notes = [(b0 + s_, ln, d) for s_, ln, d in chorus_melodies[b]]
            else:
                line = make_line(rng)
                notes, prev_degree = _melody_for_line(rng, line, b0, beat, allowed, centre, prev_degree)
            lines.append(SungLine(si, notes[0][0], line))
            for (start, ln, d), syl in zip(notes, line.syllables):
                midi = tonic_midi + scale[d % 7] + 12 * (d // 7)
                melody.append(SungNote(start, ln * 0.95, float(midi), 0.8 + 0.2 * e, syl.vowel, syl.onset))
    return SongPlan(
        seed=int(seed), duration=float(duration), genre=genre, tempo=tempo, tonic_pc=tonic_pc, mode=mode,
        vocal=vocal, instruments=instruments, sections=sections, chords=chords, lines=lines, melody=melody,
        parts=parts,
    )


def _harmony_part(
    out: list[Note], kind_name: str, section: str, pair: tuple[tuple[int, int, int], tuple[int, int, int]],
    tonic_midi: int, b0: float, beat: float, e: float,
) -> None:
    """Chords for the harmony instrument in one bar (``pair`` = the chords of its two halves)."""
    voiced = [_voice(c, tonic_midi, 52, 71) for c in pair]
    busy = section in ("chorus", "verse")
    if kind_name == "piano":
        hits = (0, 1, 2, 3) if section == "chorus" else (0, 2)
        length = beat * (1 if section == "chorus" else 2)
        for h in hits:
            notes = voiced[int(h >= 2)]
            for m in notes + [notes[0] - 12]:
                out.append(Note(b0 + h * beat, length, m, 0.6 * e))
    elif kind_name == "synth pluck":
        step = beat / 2.0
        for i in range(8):
            notes = voiced[int(i >= 4)]
            arp = (notes[0], notes[1], notes[2], notes[0] + 12)
            out.append(Note(b0 + i * step, step * 1.5, arp[i % 4], (0.6 if i % 2 == 0 else 0.45) * e))
    elif kind_name == "acoustic guitar":
        strums = (0, 3, 4, 6) if busy else (0, 4)
        for s in strums:
            chord = pair[int(s >= 4)]
            low = _voice(chord[:1], tonic_midi, 40, 51)[0]
            for j, m in enumerate([low] + voiced[int(s >= 4)]):
                out.append(Note(b0 + s * beat / 2.0 + 0.012 * j, beat * 1.2, m, (0.55 if s % 2 == 0 else 0.4) * e))
    elif kind_name == "electric guitar":
        for h, chord in enumerate(pair):
            root = _voice(chord[:1], tonic_midi, 40, 51)[0]
            power = (root, root + 7, root + 12)
            if section in ("chorus", "bridge", "intro", "outro"):
                for m in power:
                    out.append(Note(b0 + 2 * h * beat, 2 * beat, m, 0.55 * e))
            else:
                for i in range(4):
                    for m in power[:2]:
                        out.append(Note(b0 + (2 * h + i / 2.0) * beat, beat * 0.35, m, 0.5 * e))
    else:  # pragma: no cover - GENRES only names the instruments above
        raise ValueError(f"unknown harmony instrument {kind_name!r}")


def _bass_part(
    out: list[Note], genre: str, section: str, pair: tuple[tuple[int, int, int], tuple[int, int, int]],
    tonic_midi: int, b0: float, beat: float, e: float,
) -> None:
    """Bass line for one bar: chord roots, with more motion in the chorus; silent in the intro."""
    roots = [_voice(c[:1], tonic_midi, 33, 44)[0] for c in pair]
    if section == "intro":
        return
    if section in ("bridge", "outro"):
        for h, root in enumerate(roots):
            out.append(Note(b0 + 2 * h * beat, 2 * beat, root, 0.7 * e))
    elif genre == "dance":
        for i in range(1, 8, 2):
            out.append(Note(b0 + i * beat / 2, beat * 0.45, roots[int(i >= 4)], 0.8 * e))
    elif section == "chorus":
        for i in range(8):
            out.append(Note(b0 + i * beat / 2, beat * 0.45, roots[int(i >= 4)] + (12 if i in (3, 7) else 0), 0.8 * e))
    else:
        for h in (0, 1.5, 2, 3.5):
            out.append(Note(b0 + h * beat, beat * (0.9 if h in (0, 2) else 0.45), roots[int(h >= 2)], 0.8 * e))
