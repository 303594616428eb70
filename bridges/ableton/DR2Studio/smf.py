"""Notes of a Standard MIDI File, in beats, read with the standard library only.

Why here: a MIDI stem becomes an arrangement MIDI clip in Live (``Track.create_midi_clip`` +
``Clip.add_new_notes``), and Live's embedded Python has no mido. Only what a clip needs is read:
note on/off pairs of every track and channel (tempo and meter events are skipped: positions are
beats, ticks / ticks-per-quarter, which is what Live's clips count in). The whole file is checked
before any clip is made, so a broken file places nothing.
"""
from __future__ import annotations

import struct

__all__ = ["MidiFileError", "Note", "read_notes", "MAX_BYTES", "MAX_NOTES"]

MAX_BYTES = 8 * 1024 * 1024
MAX_NOTES = 100000


class MidiFileError(ValueError):
    """The file is not a Standard MIDI File this script can read."""


class Note(tuple):
    """``(pitch, start_beats, duration_beats, velocity)``."""

    __slots__ = ()

    def __new__(cls, pitch: int, start: float, duration: float, velocity: int) -> "Note":
        return tuple.__new__(cls, (pitch, start, duration, velocity))

    pitch = property(lambda self: self[0])
    start = property(lambda self: self[1])
    duration = property(lambda self: self[2])
    velocity = property(lambda self: self[3])


def _varlen(data: bytes, at: int, end: int) -> tuple:
    value = 0
    for _ in range(4):
        if at >= end:
            raise MidiFileError("a variable-length number runs past its track")
        byte = data[at]
        at += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at
    raise MidiFileError("a variable-length number is longer than 4 bytes")


def _track_notes(data: bytes, at: int, end: int, division: int, notes: list) -> None:
    tick, status = 0, 0
    sounding = {}  # (channel, pitch) -> [(start tick, velocity)]
    while at < end:
        delta, at = _varlen(data, at, end)
        tick += delta
        if at >= end:
            raise MidiFileError("an event runs past its track")
        byte = data[at]
        if byte == 0xFF:  # meta event
            if at + 2 > end:
                raise MidiFileError("a meta event runs past its track")
            length, at = _varlen(data, at + 2, end)
            at += length
            if at > end:
                raise MidiFileError("a meta event runs past its track")
            continue
        if byte in (0xF0, 0xF7):  # sysex
            length, at = _varlen(data, at + 1, end)
            at += length
            if at > end:
                raise MidiFileError("a sysex event runs past its track")
            continue
        if byte & 0x80:
            status = byte
            at += 1
        elif not status:
            raise MidiFileError("a data byte comes before any status byte")
        kind, channel = status & 0xF0, status & 0x0F
        size = 1 if kind in (0xC0, 0xD0) else 2
        if at + size > end:
            raise MidiFileError("a channel event runs past its track")
        a = data[at]
        b = data[at + 1] if size == 2 else 0
        at += size
        if kind == 0x90 and b > 0:
            sounding.setdefault((channel, a), []).append((tick, b))
        elif kind == 0x80 or (kind == 0x90 and b == 0):
            started = sounding.get((channel, a))
            if started:
                start, velocity = started.pop(0)
                notes.append(Note(a, start / division, max(tick - start, 1) / division, velocity))
                if len(notes) > MAX_NOTES:
                    raise MidiFileError("more than %d notes" % MAX_NOTES)
    for (channel, pitch), started in sounding.items():  # never released: held to the track's end
        for start, velocity in started:
            notes.append(Note(pitch, start / division, max(tick - start, 1) / division, velocity))


def read_notes(path: str) -> list:
    """All notes of the file at ``path``, sorted by start; :class:`MidiFileError` when unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise MidiFileError("cannot read %s: %s" % (path, exc)) from None
    if len(data) > MAX_BYTES:
        raise MidiFileError("%s is larger than %d bytes" % (path, MAX_BYTES))
    if data[:4] != b"MThd" or len(data) < 14:
        raise MidiFileError("%s is not a Standard MIDI File (no MThd header)" % path)
    (header_len,) = struct.unpack(">I", data[4:8])
    _fmt, ntracks, division = struct.unpack(">HHH", data[8:14])
    if division & 0x8000 or division == 0:
        raise MidiFileError("%s counts time in SMPTE frames; only ticks per quarter note are read" % path)
    at = 8 + header_len
    notes: list = []
    for index in range(ntracks):
        if at + 8 > len(data):
            raise MidiFileError("%s is cut short: track %d of %d is missing" % (path, index + 1, ntracks))
        if data[at:at + 4] != b"MTrk":
            raise MidiFileError("%s: track %d of %d has no MTrk header" % (path, index + 1, ntracks))
        (length,) = struct.unpack(">I", data[at + 4:at + 8])
        start, end = at + 8, at + 8 + length
        if end > len(data):
            raise MidiFileError("%s: track %d is cut short (%d of %d bytes)" % (path, index, len(data) - start, length))
        _track_notes(data, start, end, division, notes)
        at = end
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes
