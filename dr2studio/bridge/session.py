"""What a DAW session has told the bridge: project folder, tempo grid, sections, lyrics, style.

Times on the timeline are beats (Ableton) with the tempo to convert to seconds (Reaper). The state is
plain data guarded by the bridge's lock; nothing here touches the network or the engine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dr2studio.bridge.paths import PathError, check_name
from dr2studio.requests import DAWS, TEMPO, RequestError
from dr2studio.tempomap import TempoMap

__all__ = [
    "BridgeError",
    "refused",
    "SectionDef",
    "Session",
    "SECTION_KINDS",
    "DAWS",
    "MAX_SECTION_LYRICS",
    "MAX_TOTAL_LYRICS",
    "MAX_CHUNKS",
    "model_tag",
]

#: Section kinds a client may name -> the structure tag the model knows (see dr2-format.md §4.1).
SECTION_KINDS: dict[str, str] = {
    "intro": "intro", "verse": "verse", "pre-chorus": "verse", "prechorus": "verse", "chorus": "chorus",
    "bridge": "bridge", "outro": "outro", "instrumental": "inst", "inst": "inst", "interlude": "inst",
    "solo": "solo", "hook": "hook", "break": "break",
}
MAX_SECTION_LYRICS = 8 * 1024  # characters per section
MAX_TOTAL_LYRICS = 48 * 1024  # characters per song
MAX_CHUNKS = 256
#: Sections whose chunked lyrics may be unfinished at once, and how long an unfinished one is kept (seconds).
MAX_PENDING_CHUNKED = 16
CHUNK_TTL_S = 60.0
MAX_SECTIONS = 128
MAX_BEATS = 100_000.0
_LRC_STAMP = re.compile(r"\[\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?\]|<\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?>")
_LRC_META = re.compile(r"^\[[A-Za-z#][\w#-]*:[^\]]*\]$")
_TAG_LINE = re.compile(r"^\[[^\]]*\]$")


class BridgeError(ValueError):
    """A request the bridge cannot honour; the message is sent back to the client."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """Turn a :class:`~dr2studio.requests.RequestError` into a :class:`BridgeError` (400) with the same
    message, so an OSC or MIDI client hears what the CLI, Studio and the engine say for that value."""
    try:
        yield
    except RequestError as exc:
        raise BridgeError(str(exc)) from exc


def model_tag(kind: str) -> str:
    """The model's structure tag for a section kind (``pre-chorus`` -> ``verse``)."""
    try:
        return SECTION_KINDS[kind.lower()]
    except KeyError:
        raise BridgeError(f"section kind {kind!r} is not one of {', '.join(sorted(SECTION_KINDS))}") from None


@dataclasses.dataclass
class SectionDef:
    """A section on the timeline: ``kind`` (see :data:`SECTION_KINDS`), start and length in beats."""

    sec_id: str
    kind: str
    start_beats: float
    length_beats: float

    @property
    def end_beats(self) -> float:
        return self.start_beats + self.length_beats


def clean_lyrics(text: str, what: str) -> list[str]:
    """Lyric lines of one section: LRC stamps, LRC metadata and tag lines removed, blanks dropped.

    The section's own kind supplies the structure tag, so tags inside the text would only duplicate it.
    """
    if not isinstance(text, str):
        raise BridgeError(f"{what} must be text")
    if len(text) > MAX_SECTION_LYRICS:
        raise BridgeError(f"{what} has {len(text)} characters; the limit per section is {MAX_SECTION_LYRICS}", 413)
    if "\x00" in text:
        raise BridgeError(f"{what} holds a NUL character")
    lines = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.strip()
        if _LRC_META.match(line) and not _LRC_STAMP.match(line):
            continue
        line = _LRC_STAMP.sub("", line).strip()
        if not line or _TAG_LINE.match(line):
            continue
        lines.append(line)
    return lines


@dataclasses.dataclass
class Session:
    """One open project. ``song`` is the committed take the next continue/regenerate works on; its
    sample 0 sits at ``origin_beats`` on the DAW timeline. ``tempo_map`` (set by a MIDI file with
    tempo or meter changes) places beats in seconds; without one, ``bpm`` holds everywhere."""

    project: Path
    daw: str = "generic"
    bpm: float = 120.0
    timesig: tuple[int, int] = (4, 4)
    style: str | None = None
    sections: dict[str, SectionDef] = dataclasses.field(default_factory=dict)
    lyrics: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    chunks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    fx: dict[str, str] = dataclasses.field(default_factory=dict)
    song: Any = None
    origin_beats: float = 0.0
    autocommit: bool = True
    tempo_map: TempoMap | None = None
    last_take: str | None = dataclasses.field(default=None, compare=False)

    def snapshot(self) -> "Session":
        """A copy a queued job renders from, taken when it is submitted.

        Why: jobs run one after another, perhaps after another client changed or switched the session;
        the job must render the sections, lyrics, style, grid, fx and project it was asked for. The
        song is shared (never mutated in place); the bridge puts the owner's committed song in at run time.
        """
        return dataclasses.replace(
            self, sections={k: dataclasses.replace(v) for k, v in self.sections.items()},
            lyrics={k: list(v) for k, v in self.lyrics.items()}, chunks={}, fx=dict(self.fx))

    # ---------------------------------------------------------------- grid
    def set_tempo(self, bpm: float) -> None:
        with refused():
            self.bpm = float(TEMPO.check(bpm))
        self.tempo_map = None  # a tempo set by hand holds for the whole timeline

    def style_prompt(self) -> str | None:
        """The style text the model gets: the session's, with the session tempo added when it states none.

        Why: the DAW's tempo is the song's tempo; a model with a tempo clock places its beat on it, so
        a take lines up with the project grid (an explicit "90 bpm" in the style text still wins).
        """
        if self.style is None:
            return None
        if self._stated_tempo() is not None:
            return self.style
        return f"{self.style}, {self.bpm:g} bpm"

    def song_tempo(self) -> float | None:
        """The tempo (bpm) a job's request carries for the model's tempo clock, as a number: the one the
        style text states, else the session's. None where the text states one outside the request limit
        (the text then speaks for itself, as it always did)."""
        stated = self._stated_tempo()
        if stated is None:
            return self.bpm
        try:
            return float(TEMPO.check(stated))
        except RequestError:
            return None

    def _stated_tempo(self) -> float | None:
        if self.style is None:
            return None
        from dr2studio.style.tags import parse_style_tags

        return parse_style_tags(self.style).tempo

    def set_timesig(self, num: int, den: int) -> None:
        if not 1 <= num <= 32 or den not in (1, 2, 4, 8, 16, 32):
            raise BridgeError(f"time signature {num}/{den}: numerator 1..32, denominator a power of two up to 32")
        self.timesig = (int(num), int(den))
        if self.tempo_map is not None:  # the tempo changes stay, the meter is now this one everywhere
            self.tempo_map = TempoMap(self.tempo_map.tempos, ((0.0, int(num), int(den)),))

    def seconds(self, beats: float) -> float:
        """Seconds from beat 0 to ``beats`` on the timeline (through the tempo map where there is one)."""
        if self.tempo_map is not None:
            return self.tempo_map.seconds_at(float(beats))
        return float(beats) * 60.0 / self.bpm

    def beats(self, seconds: float) -> float:
        """The beat ``seconds`` after beat 0 (inverse of :meth:`seconds`)."""
        if self.tempo_map is not None:
            return self.tempo_map.beat_at(float(seconds))
        return float(seconds) * self.bpm / 60.0

    def seconds_between(self, from_beats: float, to_beats: float) -> float:
        """Duration of a stretch of the timeline: with tempo changes it depends on where it lies."""
        return self.seconds(to_beats) - self.seconds(from_beats)

    def beat_after(self, beats: float, seconds: float) -> float:
        """The beat ``seconds`` after ``beats`` (where a take that starts at ``beats`` is after that long)."""
        return self.beats(self.seconds(beats) + seconds)

    @property
    def beats_per_bar(self) -> float:
        num, den = self.timesig
        return num * 4.0 / den

    # ------------------------------------------------------------ sections
    def define_section(self, sec_id: str, kind: str, start_beats: float, length_beats: float) -> SectionDef:
        check_name_or_error(sec_id, "section id")
        model_tag(kind)
        if not (0.0 <= start_beats <= MAX_BEATS and 0.0 < length_beats <= MAX_BEATS):
            raise BridgeError(f"section {sec_id}: start {start_beats} and length {length_beats} beats must be >= 0 and > 0 (max {MAX_BEATS:g})")
        if sec_id not in self.sections and len(self.sections) >= MAX_SECTIONS:
            raise BridgeError(f"a session holds at most {MAX_SECTIONS} sections")
        section = SectionDef(sec_id, kind.lower(), float(start_beats), float(length_beats))
        self.sections[sec_id] = section
        return section

    def section(self, sec_id: str) -> SectionDef:
        try:
            return self.sections[sec_id]
        except KeyError:
            known = ", ".join(sorted(self.sections)) or "none defined yet"
            raise BridgeError(f"unknown section {sec_id!r} (sections: {known})", 404) from None

    def ordered_sections(self) -> list[SectionDef]:
        return sorted(self.sections.values(), key=lambda s: (s.start_beats, s.sec_id))

    def section_at(self, beats: float) -> SectionDef | None:
        for s in self.ordered_sections():
            if s.start_beats <= beats < s.end_beats:
                return s
        return None

    # -------------------------------------------------------------- lyrics
    def set_lyrics(self, sec_id: str, text: str) -> int:
        """Set the lyrics of a section (it need not be defined yet); returns the number of lines."""
        check_name_or_error(sec_id, "section id")
        lines = clean_lyrics(text, f"lyrics of {sec_id}")
        total = sum(len("\n".join(v)) for k, v in self.lyrics.items() if k != sec_id) + len("\n".join(lines))
        if total > MAX_TOTAL_LYRICS:
            raise BridgeError(f"the song's lyrics would reach {total} characters; the limit is {MAX_TOTAL_LYRICS}", 413)
        self.lyrics[sec_id] = lines
        return len(lines)

    def add_chunk(self, sec_id: str, seq: int, total: int, text: str) -> int | None:
        """Store chunk ``seq`` of ``total``; when all have arrived, set the lyrics and return the line count."""
        check_name_or_error(sec_id, "section id")
        if not 1 <= total <= MAX_CHUNKS or not 0 <= seq < total:
            raise BridgeError(f"lyrics chunk {seq}/{total}: need 0 <= seq < total <= {MAX_CHUNKS}")
        if not isinstance(text, str):
            raise BridgeError("lyrics chunk text must be a string")
        now = time.monotonic()
        for stale in [k for k, v in self.chunks.items() if now - v["t"] > CHUNK_TTL_S]:
            del self.chunks[stale]  # a client that never sent the rest: forget it, do not keep it forever
        state = self.chunks.get(sec_id)
        if state is None and len(self.chunks) >= MAX_PENDING_CHUNKED:
            raise BridgeError(f"too many unfinished chunked lyrics (limit {MAX_PENDING_CHUNKED} sections, "
                              f"{CHUNK_TTL_S:g} s each); finish or resend them", 413)
        if state is None or state["total"] != total:
            state = self.chunks[sec_id] = {"total": total, "parts": {}, "t": now}
        state["parts"][seq] = text
        size = sum(len(p) for p in state["parts"].values())
        if size > MAX_SECTION_LYRICS:
            del self.chunks[sec_id]
            raise BridgeError(f"lyrics chunks of {sec_id} reach {size} characters; the limit per section is {MAX_SECTION_LYRICS}", 413)
        if len(state["parts"]) < total:
            return None
        del self.chunks[sec_id]
        return self.set_lyrics(sec_id, "".join(state["parts"][i] for i in range(total)))

    def section_lyrics(self, sections: list[SectionDef]) -> str:
        """Lyrics text for the model: each section's structure tag followed by its lines."""
        out: list[str] = []
        for s in sections:
            out.append(f"[{model_tag(s.kind)}]")
            out.extend(self.lyrics.get(s.sec_id, []))
        return "\n".join(out)

    # ---------------------------------------------------------------- song
    def song_seconds(self) -> float:
        if self.song is None:
            return 0.0
        return self.song.audio.shape[-1] / float(self.song.sample_rate)

    def timeline_end_beats(self) -> float:
        return max((s.end_beats for s in self.sections.values()), default=0.0)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for ``/dr2/session/state`` and the session file."""
        return {
            "project": str(self.project),
            "daw": self.daw,
            "bpm": self.bpm,
            "timesig": list(self.timesig),
            "tempo_map": self.tempo_map.to_json() if self.tempo_map is not None else None,
            "style": self.style,
            "sections": [dataclasses.asdict(s) for s in self.ordered_sections()],
            "lyrics": {k: "\n".join(v) for k, v in self.lyrics.items()},
            "fx": dict(self.fx),
            "origin_beats": self.origin_beats,
            "song_seconds": self.song_seconds(),
        }


def check_name_or_error(value: object, what: str) -> str:
    try:
        return check_name(value, what)
    except PathError as exc:
        raise BridgeError(str(exc)) from exc
