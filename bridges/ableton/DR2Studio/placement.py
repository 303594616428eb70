"""Place a dr2studio take on Live's arrangement: every stem of it, or none.

The bridge sends one request per take (``/dr2/place s:request_id s:json``, see :class:`PlacementServer`);
:class:`Placer` turns it into Live Object Model calls on the Song it is given:

- every file is checked first (absolute path, an audio or MIDI file it can read: WAV/AIFF/FLAC by
  their header bytes, ``.mid`` parsed in full), so a bad file places nothing;
- each stem goes on a track named ``dr2 <stem>`` (``dr2 <stem> midi`` for MIDI), reused when it
  exists with the right type and is not frozen, else created at the end of the set;
- audio: ``Track.create_audio_clip(file_path, position)`` (Live 12); MIDI:
  ``Track.create_midi_clip(start_time, length)`` then ``Clip.add_new_notes`` with
  ``Live.Clip.MidiNoteSpecification`` (Live 11+), or ``Clip.set_notes`` where that is missing;
- the whole take is one undo step (``Song.begin_undo_step`` / ``end_undo_step``); when a call fails
  half way, the clips made so far are deleted (``Track.delete_clip``) and the tracks made so far too
  (``Song.delete_track``), and the error names the stem and the call.

Nothing here imports Live at module level, so the same code runs in Live and in tests against a
recording stub of the object model.
"""
from __future__ import annotations

import json
import math
import os
import socket

from .oscwire import OscError, decode, encode
from .smf import MidiFileError, read_notes

__all__ = ["PlaceError", "Placer", "PlacementServer", "DEFAULT_PORT", "VERSION", "MAX_POSITION"]

VERSION = "1"
DEFAULT_PORT = 11010
#: The arrangement range Live accepts for a clip's start, in beats (LOM: create_audio_clip / create_midi_clip).
MAX_POSITION = 1576800.0
MAX_STEMS = 32
MAX_PACKET = 64 * 1024
AUDIO_SUFFIXES = (".wav", ".wave", ".aif", ".aiff", ".flac")
MIDI_SUFFIXES = (".mid", ".midi")
TRACK_PREFIX = "dr2"


class PlaceError(ValueError):
    """A take that cannot be placed; nothing of it is left in the set."""


def _audio_header_ok(head: bytes) -> bool:
    return ((head[:4] == b"RIFF" and head[8:12] == b"WAVE") or (head[:4] == b"RF64" and head[8:12] == b"WAVE")
            or (head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")) or head[:4] == b"fLaC")


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or any(c in value for c in "\x00/\\\n\r"):
        raise PlaceError("%s %r must be 1-64 characters without slashes or line breaks" % (what, value))
    return value


class _Stem:
    def __init__(self, stem: str, path: str, kind: str, notes: list | None) -> None:
        self.stem, self.path, self.kind, self.notes = stem, path, kind, notes

    @property
    def track_name(self) -> str:
        return "%s %s%s" % (TRACK_PREFIX, self.stem, " midi" if self.kind == "midi" else "")


def check_request(request: object) -> tuple:
    """``(take, position_beats, [stems])`` of a placement request, every file opened and checked."""
    if not isinstance(request, dict):
        raise PlaceError("the request must be a JSON object")
    take = _name(request.get("take"), "take")
    position = request.get("position_beats")
    if isinstance(position, bool) or not isinstance(position, (int, float)) or not math.isfinite(position) \
            or not 0.0 <= position <= MAX_POSITION:
        raise PlaceError("position_beats %r must be a number of beats in 0..%g" % (position, MAX_POSITION))
    stems = request.get("stems")
    if not isinstance(stems, list) or not stems or len(stems) > MAX_STEMS:
        raise PlaceError("stems must be a list of 1..%d entries" % MAX_STEMS)
    checked, seen = [], set()
    for entry in stems:
        if not isinstance(entry, dict):
            raise PlaceError("each stem must be an object {stem, path, kind}")
        stem = _name(entry.get("stem"), "stem")
        kind = entry.get("kind", "audio")
        path = entry.get("path")
        if kind not in ("audio", "midi"):
            raise PlaceError("stem %s: kind %r is not audio or midi" % (stem, kind))
        if (stem, kind) in seen:
            raise PlaceError("stem %s (%s) is listed twice" % (stem, kind))
        seen.add((stem, kind))
        if not isinstance(path, str) or not os.path.isabs(path):
            raise PlaceError("stem %s: path %r must be absolute (Live resolves relative paths elsewhere)" % (stem, path))
        suffixes = AUDIO_SUFFIXES if kind == "audio" else MIDI_SUFFIXES
        if not path.lower().endswith(suffixes):
            raise PlaceError("stem %s: %s is not a %s file (%s)" % (stem, path, kind, ", ".join(suffixes)))
        if not os.path.isfile(path):
            raise PlaceError("stem %s: %s does not exist or is not a file" % (stem, path))
        notes = None
        if kind == "audio":
            try:
                with open(path, "rb") as handle:
                    head = handle.read(12)
            except OSError as exc:
                raise PlaceError("stem %s: cannot read %s: %s" % (stem, path, exc)) from None
            if not _audio_header_ok(head):
                raise PlaceError("stem %s: %s is not a WAV, AIFF or FLAC file Live can read (header %r)"
                                 % (stem, path, head[:12]))
        else:
            try:
                notes = read_notes(path)
            except MidiFileError as exc:
                raise PlaceError("stem %s: %s" % (stem, exc)) from None
        checked.append(_Stem(stem, path, kind, notes))
    return take, float(position), checked


class Placer:
    """Places takes on ``song`` (a ``Live.Song.Song``, or a stub with the same calls).

    ``note_spec``: how a MIDI note is made for ``Clip.add_new_notes``; by default
    ``Live.Clip.MidiNoteSpecification`` when the ``Live`` module has it, else the older
    ``Clip.set_notes`` tuples are used.
    """

    def __init__(self, song, note_spec=None) -> None:
        self.song = song
        if note_spec is None:
            try:
                import Live  # only inside Live (or a test's stand-in)

                note_spec = getattr(getattr(Live, "Clip", None), "MidiNoteSpecification", None)
            except ImportError:
                note_spec = None
        self.note_spec = note_spec

    # ------------------------------------------------------------------ tracks
    def _find_track(self, name: str, kind: str):
        for track in self.song.tracks:
            if track.name != name or getattr(track, "is_frozen", False) or getattr(track, "is_foldable", False):
                continue
            if bool(getattr(track, "has_midi_input", False)) == (kind == "midi"):
                return track
        return None

    def _new_track(self, name: str, kind: str):
        if kind == "midi":
            self.song.create_midi_track(-1)
        else:
            self.song.create_audio_track(-1)
        track = list(self.song.tracks)[-1]
        track.name = name
        return track

    def _delete_track(self, track) -> None:
        tracks = list(self.song.tracks)
        if track in tracks:
            self.song.delete_track(tracks.index(track))

    # ------------------------------------------------------------------- clips
    def _audio_clip(self, track, stem: _Stem, position: float):
        if not hasattr(track, "create_audio_clip"):
            raise PlaceError("this Live has no Track.create_audio_clip (Live 12 or newer is needed); "
                             "the take stays in Samples/Imported/dr2")
        before = list(track.arrangement_clips)
        clip = track.create_audio_clip(stem.path, position)
        if clip is None:  # older builds return nothing: find the new clip
            fresh = [c for c in track.arrangement_clips if c not in before]
            clip = fresh[0] if fresh else None
        if clip is None:
            raise PlaceError("Live made no clip from %s" % stem.path)
        return clip

    def _midi_clip(self, track, stem: _Stem, position: float):
        if not hasattr(track, "create_midi_clip"):
            raise PlaceError("this Live has no Track.create_midi_clip (Live 12 or newer is needed)")
        notes = stem.notes or []
        length = max([n.start + n.duration for n in notes] + [1.0])
        clip = track.create_midi_clip(position, length)
        if clip is None:
            raise PlaceError("Live made no MIDI clip at beat %g" % position)
        if notes:
            if self.note_spec is not None and hasattr(clip, "add_new_notes"):
                clip.add_new_notes(tuple(self.note_spec(pitch=n.pitch, start_time=n.start, duration=n.duration,
                                                        velocity=n.velocity, mute=False) for n in notes))
            else:
                clip.set_notes(tuple((n.pitch, n.start, n.duration, n.velocity, False) for n in notes))
        return clip

    # ------------------------------------------------------------------- place
    def place(self, request: object) -> dict:
        """Place every stem of ``request`` at its beat position; returns what was made.

        :class:`PlaceError` when it cannot; then nothing of the take is left in the set.
        """
        take, position, stems = check_request(request)
        undo = hasattr(self.song, "begin_undo_step")
        if undo:
            self.song.begin_undo_step()
        made_tracks, made_clips, placed = [], [], []
        current = None
        try:
            for stem in stems:
                current = stem
                track = self._find_track(stem.track_name, stem.kind)
                if track is None:
                    track = self._new_track(stem.track_name, stem.kind)
                    made_tracks.append(track)
                clip = (self._audio_clip if stem.kind == "audio" else self._midi_clip)(track, stem, position)
                made_clips.append((track, clip))
                clip.name = "%s %s" % (take, stem.stem)
                placed.append({"stem": stem.stem, "kind": stem.kind, "track": stem.track_name,
                               "start_beats": position, "notes": len(stem.notes or [])})
        except Exception as exc:
            left = self._undo(made_tracks, made_clips)
            where = "stem %s" % current.stem if current is not None else "the take"
            message = str(exc) if isinstance(exc, PlaceError) else "%s: %s" % (type(exc).__name__, exc)
            outcome = ("nothing of the take was placed" if not left else
                       "could not remove %s again; undo the step in Live" % ", ".join(left))
            raise PlaceError("take %s, %s: %s; %s" % (take, where, message, outcome)) from None
        finally:
            if undo:
                self.song.end_undo_step()
        return {"take": take, "position_beats": position, "clips": placed}

    def _undo(self, made_tracks: list, made_clips: list) -> list:
        """Delete the clips, then the tracks, made for a take that failed; returns what stayed."""
        left = []
        for track, clip in reversed(made_clips):
            try:
                track.delete_clip(clip)
            except Exception as exc:  # a track made for the take goes next anyway
                if track not in made_tracks:
                    left.append("the clip on %s (%s)" % (track.name, exc))
        for track in reversed(made_tracks):
            try:
                self._delete_track(track)
            except Exception as exc:
                left.append("the track %s (%s)" % (track.name, exc))
        return left


class PlacementServer:
    """The script's OSC door: a UDP socket on ``host:port`` (loopback by default), read without
    blocking from Live's timer (:meth:`process`), since Live's Python must not run its own threads.

    Requests and replies (replies go to the sender's address and port):

    - ``/dr2/place/ping`` -> ``/dr2/place/pong s:version``
    - ``/dr2/place s:request_id s:json`` -> ``/dr2/placed s:request_id i:clips s:json`` or
      ``/dr2/place/error s:request_id s:message``
    """

    def __init__(self, placer: Placer, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.placer = placer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.setblocking(False)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def process(self, limit: int = 16) -> int:
        """Answer the requests waiting (at most ``limit``); returns how many were read."""
        count = 0
        while count < limit:
            try:
                data, sender = self.sock.recvfrom(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # e.g. ICMP port unreachable from an earlier reply on some systems
            count += 1
            address, args = self.handle(data)
            try:
                self.sock.sendto(encode(address, args), sender)
            except OSError:
                pass
        return count

    def handle(self, data: bytes) -> tuple:
        """The reply ``(address, args)`` to one packet."""
        try:
            address, args = decode(data)
        except OscError as exc:
            return "/dr2/place/error", ["", str(exc)]
        if address == "/dr2/place/ping":
            return "/dr2/place/pong", [VERSION]
        if address != "/dr2/place":
            return "/dr2/place/error", ["", "unknown address %r (known: /dr2/place, /dr2/place/ping)" % address]
        if len(args) != 2 or not all(isinstance(a, str) for a in args):
            return "/dr2/place/error", ["", "/dr2/place takes s:request_id s:json"]
        request_id, text = args
        try:
            request = json.loads(text)
        except ValueError as exc:
            return "/dr2/place/error", [request_id, "the request is not JSON: %s" % exc]
        try:
            result = self.placer.place(request)
        except PlaceError as exc:
            return "/dr2/place/error", [request_id, str(exc)]
        return "/dr2/placed", [request_id, len(result["clips"]), json.dumps(result)]

    def close(self) -> None:
        self.sock.close()
