"""MIDI files as song plans: ``marker`` events name sections, ``lyrics`` events carry the words,
``set_tempo`` / ``time_signature`` give the grid and ``cue_marker`` events carry commands.

Times are read in beats (quarter notes: ticks / ticks_per_beat), the unit Ableton's timeline uses, and
converted to seconds through the tempo map. Text is decoded as UTF-8 (mido's default latin-1 garbles
Chinese lyrics); files that are not valid UTF-8 fall back to latin-1 with a warning.

Lyrics follow the karaoke conventions: syllables are concatenated; a syllable starting with ``/`` or
``\\`` starts a new line; one ending in ``\\r`` or ``\\n`` ends its line.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from pathlib import Path
from typing import Any

from dr2studio.bridge.session import SECTION_KINDS, BridgeError

log = logging.getLogger(__name__)

__all__ = ["MidiPlan", "PlannedSection", "read_midi_file", "apply_midi_plan", "MAX_MIDI_FILE"]

MAX_MIDI_FILE = 4 * 1024 * 1024
_KIND_RE = re.compile(r"^\s*([A-Za-z][A-Za-z -]*?)[\s_-]*(\d*)\s*(?::.*)?$")
_STOP_MARKERS = {"end", "stop", "fin"}


@dataclasses.dataclass
class PlannedSection:
    sec_id: str
    kind: str
    start_beats: float
    length_beats: float
    lyrics: str = ""


@dataclasses.dataclass
class MidiPlan:
    """What a MIDI file says about a song. ``tempo_map`` is ``[(beat, bpm), ...]``."""

    source: str
    bpm: float
    tempo_map: list[tuple[float, float]]
    timesig: tuple[int, int]
    sections: list[PlannedSection]
    cues: list[tuple[float, str]]
    length_beats: float

    def seconds_at(self, beats: float) -> float:
        """Seconds at ``beats`` following the tempo map."""
        total, prev_beat, prev_bpm = 0.0, 0.0, self.tempo_map[0][1] if self.tempo_map else self.bpm
        for beat, bpm in self.tempo_map:
            if beat >= beats:
                break
            total += (beat - prev_beat) * 60.0 / prev_bpm
            prev_beat, prev_bpm = beat, bpm
        return total + (beats - prev_beat) * 60.0 / prev_bpm


def _kind_of(name: str) -> str | None:
    m = _KIND_RE.match(name)
    if m is None:
        return None
    word = m.group(1).strip().lower().replace(" ", "-")
    return word if word in SECTION_KINDS else None


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:48] or "section"
    if not base[0].isalnum():
        base = "s" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _open(path: Path) -> Any:
    import mido

    try:
        return mido.MidiFile(str(path), charset="utf-8")
    except UnicodeDecodeError:
        log.warning("%s: text events are not UTF-8; reading them as latin-1", path)
        return mido.MidiFile(str(path), charset="latin1")


def read_midi_file(path: str | Path) -> MidiPlan:
    """Read sections, lyrics, tempo map, time signature and cues from a Standard MIDI File."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"MIDI file {path} does not exist", 404)
    if path.stat().st_size > MAX_MIDI_FILE:
        raise BridgeError(f"MIDI file {path} is larger than {MAX_MIDI_FILE} bytes", 413)
    try:
        mid = _open(path)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise BridgeError(f"{path.name} is not a readable MIDI file: {exc}") from exc
    if mid.type == 2:
        raise BridgeError(f"{path.name}: type 2 MIDI files (independent patterns) have no common timeline")
    tpb = float(mid.ticks_per_beat)
    events: list[tuple[int, Any]] = []
    end_tick = 0
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            end_tick = max(end_tick, tick)
            if msg.is_meta and msg.type in ("set_tempo", "time_signature", "marker", "lyrics", "cue_marker"):
                events.append((tick, msg))
    events.sort(key=lambda e: e[0])
    tempo_map: list[tuple[float, float]] = []
    timesig: tuple[int, int] | None = None
    markers: list[tuple[float, str]] = []
    lyrics: list[tuple[float, str]] = []
    cues: list[tuple[float, str]] = []
    for tick, msg in events:
        beat = tick / tpb
        if msg.type == "set_tempo":
            bpm = 60_000_000.0 / msg.tempo
            if tempo_map and tempo_map[-1][0] == beat:
                tempo_map[-1] = (beat, bpm)
            else:
                tempo_map.append((beat, bpm))
        elif msg.type == "time_signature" and timesig is None:
            timesig = (int(msg.numerator), int(msg.denominator))
        elif msg.type == "marker":
            markers.append((beat, msg.text.strip()))
        elif msg.type == "lyrics":
            lyrics.append((beat, msg.text))
        else:
            cues.append((beat, msg.text.strip()))
    if not tempo_map or tempo_map[0][0] > 0:
        tempo_map.insert(0, (0.0, 120.0))
    length = end_tick / tpb
    plan = MidiPlan(str(path), tempo_map[0][1], tempo_map, timesig or (4, 4), [], cues, length)
    if len(tempo_map) > 1 and length > 0:  # one bpm for the session: the average keeps the song's duration
        plan.bpm = length * 60.0 / plan.seconds_at(length)
    plan.sections = _sections(markers, lyrics, length, plan.timesig)
    return plan


def _sections(markers: list[tuple[float, str]], lyrics: list[tuple[float, str]], length: float,
              timesig: tuple[int, int]) -> list[PlannedSection]:
    taken: set[str] = set()
    sections: list[PlannedSection] = []
    bounds = [b for b, _ in markers] + [length]
    for i, (start, name) in enumerate(markers):
        end = bounds[i + 1]
        if name.lower() in _STOP_MARKERS:
            continue
        kind = _kind_of(name)
        if kind is None:
            log.warning("marker %r at beat %g is not a section kind (%s); skipped", name, start, ", ".join(SECTION_KINDS))
            continue
        if end <= start:
            end = start + timesig[0] * 4.0 / timesig[1] * 4  # a marker at the very end: four bars
        sections.append(PlannedSection(_slug(name, taken), kind, start, end - start))
    for sec in sections:
        words = [text for beat, text in lyrics if sec.start_beats <= beat < sec.start_beats + sec.length_beats]
        sec.lyrics = _join_syllables(words)
    return sections


def _join_syllables(syllables: list[str]) -> str:
    lines: list[str] = []
    current = ""
    for syl in syllables:
        if syl[:1] in ("/", "\\"):
            if current.strip():
                lines.append(current.strip())
            current, syl = "", syl[1:]
        ends = syl.endswith(("\r", "\n"))
        current += syl.rstrip("\r\n")
        if ends:
            if current.strip():
                lines.append(current.strip())
            current = ""
    if current.strip():
        lines.append(current.strip())
    return "\n".join(lines)


def apply_midi_plan(bridge: Any, plan: MidiPlan, *, job_prefix: str = "midi") -> list[str]:
    """Set the session's tempo, time signature, sections and lyrics from ``plan`` and run its cues.

    Cues: ``style: TEXT`` sets the style; ``generate`` (or ``song``) starts a whole-song job.
    Returns the ids of the jobs started.
    """
    bridge.set_tempo(round(plan.bpm, 3))
    bridge.set_timesig(*plan.timesig)
    for sec in plan.sections:
        bridge.define_section(sec.sec_id, sec.kind, sec.start_beats, sec.length_beats)
        if sec.lyrics:
            bridge.set_lyrics(sec.sec_id, sec.lyrics)
    jobs = []
    for n, (_, text) in enumerate(plan.cues):
        command, _, arg = text.partition(":")
        command = command.strip().lower()
        if command == "style" and arg.strip():
            bridge.set_style(arg.strip())
        elif command in ("generate", "song"):
            from dr2studio.bridge.core import BridgeJob

            stem = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(plan.source).stem)[:40]
            job_id = f"{job_prefix}-{stem}-{uuid.uuid4().hex[:8]}"
            bridge.submit(job_id, BridgeJob("song"))
            jobs.append(job_id)
        else:
            log.warning("%s: cue %r is not a command (style: TEXT, generate)", plan.source, text)
    return jobs


def import_midi_file(bridge: Any, path: str) -> list[str]:
    """``/dr2/midi/file``: read a MIDI file from inside the open project and apply it."""
    from dr2studio.bridge.paths import PathError, resolve_inside

    session = bridge.require_session()
    try:
        resolved = resolve_inside(session.project, path, "MIDI file")
    except PathError as exc:
        raise BridgeError(str(exc), 403) from exc
    if resolved.suffix.lower() not in (".mid", ".midi", ".kar"):
        raise BridgeError(f"MIDI file {path!r} must end with .mid, .midi or .kar")
    return apply_midi_plan(bridge, read_midi_file(resolved))
