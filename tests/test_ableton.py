"""Ableton Live beside the bridge, over real loopback UDP: an AbletonOSC peer answering the documented
addresses (tempo, signature, song length, cue points, listeners) that the bridge follows, and the
DR2Studio Remote Script's own code placing takes on a recording stub of the Live object model (Live
cannot run here), reached with real placement packets."""
from __future__ import annotations

import dataclasses
import json
import math
import socket
import sys
import threading
import time
import types
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

from daw_helpers import wait_for
from dr2studio.bridge import Bridge
from dr2studio.bridge.ableton import (
    AbletonFollower,
    AbletonLink,
    LivePlacer,
    PlaceRefused,
    PlaceTimeout,
    parse_hostport,
    sections_from_cues,
    take_request,
)
from dr2studio.bridge.deliver import DeliveredFile, take_written
from dr2studio.bridge.session import BridgeError

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "bridges" / "ableton"
if str(SCRIPT_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPT_DIR))

from DR2Studio import placement as script  # noqa: E402  (the Remote Script, as Live imports it)
from DR2Studio import smf  # noqa: E402

WAIT = 10.0


# ------------------------------------------------------------------------------ an AbletonOSC peer

class AbletonOscPeer:
    """Answers like AbletonOSC: requests on its port; replies and listener updates to the sender's host
    on a fixed response port (AbletonOSC: 11001; here the follower's bound port). ``/live/song/get/X``
    replies ``(value,)`` on the same address, ``cue_points`` replies ``name, time, ...``,
    ``start_listen/X`` sends the value at once and on every change."""

    def __init__(self, response_port: int, **state) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.response_port = response_port
        self.state = {"tempo": 120.0, "signature_numerator": 4, "signature_denominator": 4, "song_length": 0.0,
                      "cue_points": []}
        self.state.update(state)
        self.listening: set[str] = set()
        self.heard: list[str] = []
        self.client_host = "127.0.0.1"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _send(self, address: str, args: list) -> None:
        self.sock.sendto(build_msg(address, args).dgram, (self.client_host, self.response_port))

    def _value(self, prop: str) -> list:
        if prop == "cue_points":
            return [x for name, t in self.state["cue_points"] for x in (name, float(t))]
        return [self.state[prop]]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            msg = OscMessage(data)
            self.heard.append(msg.address)
            self.client_host = sender[0]
            parts = msg.address.split("/")  # ['', 'live', 'song', verb, prop]
            if len(parts) != 5 or parts[1:3] != ["live", "song"] or parts[4] not in self.state:
                self._send("/live/error", [f"Unknown OSC address: {msg.address}"])
                continue
            verb, prop = parts[3], parts[4]
            if verb == "get":
                self._send(f"/live/song/get/{prop}", self._value(prop))
            elif verb == "start_listen" and prop != "cue_points":
                self.listening.add(prop)
                self._send(f"/live/song/get/{prop}", self._value(prop))
            elif verb == "stop_listen":
                self.listening.discard(prop)

    def change(self, prop: str, value) -> None:
        """What the producer does in Live: a listened property sends its update at once."""
        self.state[prop] = value
        if prop in self.listening:
            self._send(f"/live/song/get/{prop}", self._value(prop))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture()
def bridge(tmp_path):
    project = tmp_path / "Live Song Project"
    (project / "Ableton Project Info").mkdir(parents=True)
    b = Bridge(engine=None)
    b.open_session(str(project), "ableton")
    events: list[tuple[str, list]] = []
    b.add_sink(lambda address, args: events.append((address, args)))
    b.events = events  # type: ignore[attr-defined]
    yield b
    b.close()


@pytest.fixture()
def live(bridge):
    follower = AbletonFollower(bridge, ("127.0.0.1", 9), reply_port=0, poll_s=0.2)
    peer = AbletonOscPeer(follower.reply_port)
    follower.live = ("127.0.0.1", peer.port)
    follower.start()
    yield peer, follower
    follower.close()
    peer.close()


def _errors(bridge, address):
    return [args for a, args in bridge.events if a == "/dr2/error" and args[0] == address]


def test_parse_hostport():
    assert parse_hostport("192.168.1.5:11000", 1) == ("192.168.1.5", 11000)
    assert parse_hostport("studio-mac", 11000) == ("studio-mac", 11000)
    assert parse_hostport(":12000", 11000) == ("127.0.0.1", 12000)
    with pytest.raises(ValueError, match="port"):
        parse_hostport("host:99999", 11000)


def test_follows_tempo_signature_and_locators_over_udp(bridge, live):
    peer, follower = live
    peer.state.update(tempo=96.0, signature_numerator=3, signature_denominator=4, song_length=72.0,
                      cue_points=[("Chorus", 36.0), ("Intro", 0.0), ("Verse 1", 12.0), ("End", 60.0), ("Outro", 60.0)])
    session = bridge.session
    assert wait_for(lambda: session.bpm == 96.0 and session.timesig == (3, 4) and len(session.sections) == 4, WAIT), \
        (session.bpm, session.timesig, session.sections, bridge.events[-5:])
    got = [(s.sec_id, s.kind, s.start_beats, s.length_beats) for s in session.ordered_sections()]
    # each locator runs to the next; "End" closes Chorus; Outro (last) runs to Live's song length
    assert got == [("intro", "intro", 0.0, 12.0), ("verse-1", "verse", 12.0, 24.0), ("chorus", "chorus", 36.0, 24.0),
                   ("outro", "outro", 60.0, 12.0)]
    assert {"/live/song/start_listen/tempo", "/live/song/start_listen/signature_numerator",
            "/live/song/get/cue_points"} <= set(peer.heard)
    synced = [json.loads(args[1]) for a, args in bridge.events if a == "/dr2/daw/synced"]
    assert synced and synced[-1]["sections"] == ["intro", "verse-1", "chorus", "outro"]
    # a tempo change in Live arrives through the listener, not only the poll
    follower.poll_s = 60.0
    time.sleep(0.3)  # let the poll loop settle into its long wait
    peer.change("tempo", 128.5)
    assert wait_for(lambda: session.bpm == 128.5, WAIT), session.bpm
    assert session.describe()["bpm"] == 128.5


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_bad_tempo_from_live_is_an_error_and_changes_nothing(bridge, live, bad):
    peer, _ = live
    peer.change("tempo", 100.0)
    assert wait_for(lambda: bridge.session.bpm == 100.0, WAIT)
    peer.change("tempo", bad)
    assert wait_for(lambda: _errors(bridge, "/live/song/get/tempo"), WAIT), bridge.events[-5:]
    message = _errors(bridge, "/live/song/get/tempo")[0][1]
    assert "tempo" in message and "keeps its tempo" in message
    time.sleep(0.5)  # more polls of the bad value: one error, session untouched
    assert bridge.session.bpm == 100.0
    assert len(_errors(bridge, "/live/song/get/tempo")) == 1


def test_unknown_locator_name_is_named_and_nothing_is_half_applied(bridge, live):
    peer, _ = live
    peer.state.update(song_length=64.0, cue_points=[("Verse", 0.0), ("Chorus", 16.0)])
    session = bridge.session
    assert wait_for(lambda: set(session.sections) == {"verse", "chorus"}, WAIT)
    peer.state["cue_points"] = [("Verse", 0.0), ("Drop 2", 8.0), ("Chorus", 16.0), ("Bridge", 32.0)]
    assert wait_for(lambda: _errors(bridge, "/live/song/get/cue_points"), WAIT)
    message = _errors(bridge, "/live/song/get/cue_points")[0][1]
    assert "'Drop 2' at beat 8" in message and "not changed" in message
    time.sleep(0.5)
    assert set(session.sections) == {"verse", "chorus"} and "bridge" not in session.sections
    assert session.sections["verse"].length_beats == 16.0
    assert len(_errors(bridge, "/live/song/get/cue_points")) == 1  # not repeated on every poll


def test_sections_from_cues_edges():
    assert sections_from_cues([("Chorus", 8.0)], None, 3.0) == [("chorus", "chorus", 8.0, 12.0)]  # 4 bars of 3/4
    assert sections_from_cues([], 32.0, 4.0) == []
    assert sections_from_cues([("verse", 0), ("Verse", 16), ("end", 32)], 100.0, 4.0) == [
        ("verse", "verse", 0.0, 16.0), ("verse-2", "verse", 16.0, 16.0)]
    with pytest.raises(BridgeError, match="'Setup' at beat 0"):
        sections_from_cues([("Setup", 0.0)], None, 4.0)


def test_follower_leaves_a_non_ableton_session_alone(tmp_path):
    b = Bridge(engine=None)
    b.open_session(str(tmp_path), "reaper")
    follower = AbletonFollower(b, ("127.0.0.1", 9), reply_port=0, poll_s=0.2)
    peer = AbletonOscPeer(follower.reply_port, tempo=90.0)
    follower.live = ("127.0.0.1", peer.port)
    follower.start()
    try:
        assert wait_for(lambda: follower.grid.tempo == 90.0, WAIT)
        assert b.session.bpm == 120.0
    finally:
        follower.close()
        peer.close()
        b.close()


# ------------------------------------------------------------------------ the Live object model stub

class StubClip:
    def __init__(self, track, start: float, length: float, file_path: str | None = None) -> None:
        self.canonical_parent, self.start_time, self.length = track, start, length
        self.end_time = start + length
        self.file_path, self.name, self.notes = file_path, "", []
        self.is_audio_clip = file_path is not None

    def add_new_notes(self, specs) -> None:
        self.canonical_parent.song.calls.append(("add_new_notes", self.canonical_parent.name, len(specs)))
        self.notes.extend(specs)


class StubTrack:
    """Records its calls on the song; raises what Live raises for a MIDI track / an unreadable file."""

    def __init__(self, song, midi: bool) -> None:
        self.song, self.name = song, ""
        self.has_midi_input, self.has_audio_input = midi, not midi
        self.is_frozen = self.is_foldable = False
        self.arrangement_clips: list[StubClip] = []

    def create_audio_clip(self, file_path: str, position: float) -> StubClip:
        self.song.calls.append(("create_audio_clip", self.name, file_path, position))
        if self.has_midi_input:
            raise RuntimeError("Audio clips can only be created on audio tracks")
        if file_path in self.song.unreadable:
            raise ValueError("The provided path does not appear to point to a valid audio file")
        info = sf.info(file_path)  # the real file, as Live would read it
        clip = StubClip(self, position, info.duration * self.song.tempo / 60.0, file_path)
        self.arrangement_clips.append(clip)
        return clip

    def create_midi_clip(self, start_time: float, length: float) -> StubClip:
        self.song.calls.append(("create_midi_clip", self.name, start_time, length))
        if not self.has_midi_input:
            raise RuntimeError("MIDI clips can only be created on MIDI tracks")
        clip = StubClip(self, start_time, length)
        self.arrangement_clips.append(clip)
        return clip

    def delete_clip(self, clip: StubClip) -> None:
        self.song.calls.append(("delete_clip", self.name, clip.start_time))
        self.arrangement_clips.remove(clip)


class StubSong:
    def __init__(self, tempo: float = 120.0) -> None:
        self.tempo = tempo
        self.calls: list[tuple] = []
        self.unreadable: set[str] = set()
        self.tracks: list[StubTrack] = []
        self.undo_depth = 0

    def create_audio_track(self, index: int) -> None:
        self.calls.append(("create_audio_track", index))
        self.tracks.append(StubTrack(self, midi=False))

    def create_midi_track(self, index: int) -> None:
        self.calls.append(("create_midi_track", index))
        self.tracks.append(StubTrack(self, midi=True))

    def delete_track(self, index: int) -> None:
        self.calls.append(("delete_track", index))
        del self.tracks[index]

    def begin_undo_step(self) -> None:
        self.undo_depth += 1

    def end_undo_step(self) -> None:
        self.undo_depth -= 1


@pytest.fixture()
def live_module(monkeypatch):
    """Stand-in for Live's ``Live`` module: only ``Live.Clip.MidiNoteSpecification`` is used."""
    module = types.ModuleType("Live")

    class MidiNoteSpecification:
        def __init__(self, **fields) -> None:
            self.fields = fields

    module.Clip = types.SimpleNamespace(MidiNoteSpecification=MidiNoteSpecification)
    monkeypatch.setitem(sys.modules, "Live", module)
    return module


class RunningScript:
    """The Remote Script's placement door, polled the way Live's timer polls it (every ~20 ms here)."""

    def __init__(self, song: StubSong) -> None:
        self.song = song
        self.server = script.PlacementServer(script.Placer(song), port=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.is_set():
            self.server.process()
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


def _wav(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1) * 0.3, rate, subtype="PCM_24")
    return path


def _mid(path: Path) -> tuple[Path, list[tuple[int, float, float, int]]]:
    """A real two-track SMF with running status, a note held by note-on velocity 0 and a tempo event."""
    mf = mido.MidiFile(ticks_per_beat=480)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=600000, time=0)])
    bass = mido.MidiTrack()
    expected = []
    t = 0
    for i, pitch in enumerate([40, 43, 45, 47]):
        start = i * 480 + 240
        bass.append(mido.Message("note_on", note=pitch, velocity=90 + i, time=start - t))
        bass.append(mido.Message("note_on", note=pitch, velocity=0, time=360))  # off as velocity 0
        t = start + 360
        expected.append((pitch, start / 480, 360 / 480, 90 + i))
    mf.tracks.extend([meta, bass])
    mf.save(path)
    return path, expected


@pytest.fixture()
def take_files(tmp_path):
    folder = tmp_path / "Live Song Project" / "Samples" / "Imported" / "dr2" / "take7"
    mix, vocals = _wav(folder / "mix.wav", 2.0), _wav(folder / "vocals.wav", 2.0)
    mid, notes = _mid(folder / "bass.mid")
    return folder, mix, vocals, mid, notes


def _request(files, position=32.0, take="take7"):
    return {"take": take, "position_beats": position, "stems": files}


def test_script_places_every_stem_at_its_beat_from_a_real_packet(take_files, live_module):
    folder, mix, vocals, mid, notes = take_files
    song = StubSong()
    running = RunningScript(song)
    try:
        placer = LivePlacer("127.0.0.1", running.server.port, timeout=5.0)
        assert placer.ping() == script.VERSION
        report = placer.place(_request([{"stem": "mix", "path": str(mix), "kind": "audio"},
                                        {"stem": "vocals", "path": str(vocals), "kind": "audio"},
                                        {"stem": "bass", "path": str(mid), "kind": "midi"}]))
    finally:
        running.close()
    audio_calls = [c for c in song.calls if c[0] == "create_audio_clip"]
    assert audio_calls == [("create_audio_clip", "dr2 mix", str(mix), 32.0),
                           ("create_audio_clip", "dr2 vocals", str(vocals), 32.0)]
    midi_calls = [c for c in song.calls if c[0] == "create_midi_clip"]
    assert midi_calls == [("create_midi_clip", "dr2 bass midi", 32.0, notes[-1][1] + notes[-1][2])]
    assert [t.name for t in song.tracks] == ["dr2 mix", "dr2 vocals", "dr2 bass midi"]
    assert [t.has_midi_input for t in song.tracks] == [False, False, True]
    clip = song.tracks[2].arrangement_clips[0]
    got = [(s.fields["pitch"], s.fields["start_time"], s.fields["duration"], s.fields["velocity"]) for s in clip.notes]
    assert got == notes  # the notes of the real .mid, in beats relative to the clip
    assert song.tracks[0].arrangement_clips[0].name == "take7 mix"
    assert song.tracks[0].arrangement_clips[0].length == pytest.approx(4.0)  # 2 s at 120 bpm
    assert report["clips"][2] == {"stem": "bass", "kind": "midi", "track": "dr2 bass midi", "start_beats": 32.0,
                                  "notes": 4}
    assert song.undo_depth == 0
    # a second take lands on the same dr2 tracks, no new ones
    song2_calls = len(song.calls)
    script.Placer(song).place(_request([{"stem": "mix", "path": str(mix)}], position=64.0, take="take8"))
    assert [c for c in song.calls[song2_calls:] if c[0].startswith("create")] == [
        ("create_audio_clip", "dr2 mix", str(mix), 64.0)]
    assert len(song.tracks) == 3


def test_a_bad_file_places_nothing(take_files, tmp_path):
    folder, mix, vocals, mid, notes = take_files
    not_audio = folder / "drums.wav"
    not_audio.write_text("this is not audio")
    song = StubSong()
    running = RunningScript(song)
    try:
        placer = LivePlacer("127.0.0.1", running.server.port, timeout=5.0)
        with pytest.raises(PlaceRefused, match="stem drums: .*drums.wav is not a WAV, AIFF or FLAC"):
            placer.place(_request([{"stem": "mix", "path": str(mix)}, {"stem": "drums", "path": str(not_audio)}]))
        with pytest.raises(PlaceRefused, match="does not exist"):
            placer.place(_request([{"stem": "mix", "path": str(mix)}, {"stem": "gone", "path": str(folder / "gone.wav")}]))
        with pytest.raises(PlaceRefused, match="must be absolute"):
            placer.place(_request([{"stem": "mix", "path": "Samples/mix.wav"}]))
        broken = folder / "broken.mid"
        broken.write_bytes(mid.read_bytes()[:40])
        with pytest.raises(PlaceRefused, match="stem bass: .*cut short"):
            placer.place(_request([{"stem": "mix", "path": str(mix)}, {"stem": "bass", "path": str(broken), "kind": "midi"}]))
        with pytest.raises(PlaceRefused, match="position_beats"):
            placer.place(_request([{"stem": "mix", "path": str(mix)}], position=float("nan")))
    finally:
        running.close()
    assert song.calls == [] and song.tracks == []


def test_a_failure_half_way_undoes_what_was_made(take_files, live_module):
    """Live refuses the third stem's file: the two clips and the tracks made for them go again."""
    folder, mix, vocals, mid, notes = take_files
    song = StubSong()
    song.create_audio_track(-1)
    song.tracks[0].name = "dr2 mix"  # an existing dr2 track is reused, and kept on failure
    song.calls.clear()
    other = _wav(folder / "other.wav", 1.0)
    song.unreadable.add(str(other))
    with pytest.raises(script.PlaceError, match="take take7, stem other: ValueError: The provided path does not"):
        script.Placer(song).place(_request([{"stem": "mix", "path": str(mix)},
                                            {"stem": "bass", "path": str(mid), "kind": "midi"},
                                            {"stem": "other", "path": str(other)}]))
    assert [t.name for t in song.tracks] == ["dr2 mix"]
    assert song.tracks[0].arrangement_clips == []
    assert ("delete_clip", "dr2 mix", 32.0) in song.calls
    assert [c[0] for c in song.calls if c[0] == "delete_track"] == ["delete_track", "delete_track"]
    assert song.undo_depth == 0


def test_midi_note_fallback_without_note_specification(take_files, monkeypatch):
    """Without Live.Clip.MidiNoteSpecification (older Live) the notes go through Clip.set_notes."""
    folder, mix, vocals, mid, notes = take_files
    monkeypatch.delitem(sys.modules, "Live", raising=False)
    song = StubSong()
    recorded = []
    StubClip.set_notes = lambda self, tuples: recorded.extend(tuples)  # type: ignore[attr-defined]
    try:
        script.Placer(song).place(_request([{"stem": "bass", "path": str(mid), "kind": "midi"}], position=0.0))
    finally:
        del StubClip.set_notes
    assert [(p, s, d, v) for p, s, d, v, _mute in recorded] == notes


def test_script_reads_real_corpus_midi_like_mido():
    from real_material import midi_corpus

    files = [p for p in midi_corpus() if p.suffix.lower() in (".mid", ".midi")][:6]
    assert files
    for path in files:
        mf = mido.MidiFile(str(path))
        ons = sum(1 for tr in mf.tracks for m in tr if m.type == "note_on" and m.velocity > 0)
        notes = smf.read_notes(str(path))
        assert len(notes) == ons, path.name
        assert all(n.duration > 0 and 0 <= n.pitch < 128 for n in notes)


def test_script_answers_garbage_with_an_error():
    song = StubSong()
    server = script.PlacementServer(script.Placer(song), port=0)
    try:
        assert server.handle(b"\x00\x01garbage")[0] == "/dr2/place/error"
        address, args = server.handle(build_msg("/dr2/place", ["r1", "{not json"]).dgram)
        assert address == "/dr2/place/error" and args[0] == "r1" and "not JSON" in args[1]
        address, args = server.handle(build_msg("/dr2/place", ["r2", "[1, 2]"]).dgram)
        assert address == "/dr2/place/error" and args == ["r2", "the request must be a JSON object"]
        address, args = server.handle(build_msg("/dr2/nope", []).dgram)
        assert address == "/dr2/place/error" and "unknown address" in args[1]
    finally:
        server.close()
    assert song.calls == []


def test_surface_entry_point_polls_from_live_timer(monkeypatch):
    """create_instance as Live calls it, with a stand-in for Live's _Framework.ControlSurface."""
    scheduled = []

    class ControlSurface:
        def __init__(self, c_instance) -> None:
            self.messages = []

        def song(self):
            return StubSong()

        def schedule_message(self, delay, callback):
            scheduled.append(callback)

        def show_message(self, text):
            self.messages.append(text)

        def disconnect(self):
            pass

    framework = types.ModuleType("_Framework")
    cs_module = types.ModuleType("_Framework.ControlSurface")
    cs_module.ControlSurface = ControlSurface
    monkeypatch.setitem(sys.modules, "_Framework", framework)
    monkeypatch.setitem(sys.modules, "_Framework.ControlSurface", cs_module)
    monkeypatch.setenv("DR2STUDIO_LIVE_PORT", "0")  # not a port number: the default
    import DR2Studio

    from DR2Studio.surface import configured_port

    assert configured_port() == script.DEFAULT_PORT
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    free = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("DR2STUDIO_LIVE_PORT", str(free))
    surface = DR2Studio.create_instance(object())
    try:
        assert "listening on port %d" % free in surface.messages[-1]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(build_msg("/dr2/place/ping", []).dgram, ("127.0.0.1", free))
        time.sleep(0.05)
        scheduled.pop(0)()  # Live's timer fires
        reply = OscMessage(client.recv(65535))
        client.close()
        assert (reply.address, list(reply.params)) == ("/dr2/place/pong", [script.VERSION])
        assert scheduled  # the tick re-armed itself
    finally:
        surface.disconnect()
    scheduled.pop(0)()  # after disconnect the tick ends quietly
    assert not scheduled


# ----------------------------------------------------------------------------- the bridge's placement

def _take(bridge, files, folder):
    delivered = [DeliveredFile(p.stem, p, 44100) for p in files]
    return take_written(bridge.session, folder.name, delivered, 32.0, bridge.session.seconds(32.0))


def test_bridge_places_a_take_and_reports_it(bridge, take_files, live_module):
    folder, mix, vocals, mid, notes = take_files
    song = StubSong()
    running = RunningScript(song)
    link = AbletonLink(bridge, placer=LivePlacer("127.0.0.1", running.server.port, timeout=5.0)).start()
    try:
        take = _take(bridge, [mix, vocals], folder)
        take = dataclasses.replace(take, midi={"bass": mid.relative_to(bridge.session.project).as_posix()})
        assert take_request(take)["stems"][2] == {"stem": "bass", "path": str(mid.resolve()), "kind": "midi"}
        link._on_take(take)
        link.wait(10)
    finally:
        link.close()
        running.close()
    placed = [args for a, args in bridge.events if a == "/dr2/daw/placed"]
    assert placed and placed[0][:2] == ["take7", 3]
    assert [c[2:] for c in song.calls if c[0] == "create_audio_clip"] == [(str(mix.resolve()), 32.0),
                                                                          (str(vocals.resolve()), 32.0)]
    assert not [a for a, _ in bridge.events if a == "/dr2/daw/fallback"]


def test_script_not_answering_falls_back_with_an_event(bridge, take_files):
    folder, mix, vocals, mid, notes = take_files
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers (Live busy / no script)
    silent.bind(("127.0.0.1", 0))
    link = AbletonLink(bridge, placer=LivePlacer("127.0.0.1", silent.getsockname()[1], timeout=0.3)).start()
    try:
        started = time.monotonic()
        assert link.place(_take(bridge, [mix, vocals], folder)) is False
        assert time.monotonic() - started < 3.0
    finally:
        link.close()
        silent.close()
    fallback = [args for a, args in bridge.events if a == "/dr2/daw/fallback"]
    assert len(fallback) == 1 and fallback[0][0] == "take7" and fallback[0][1] == str(folder)
    assert "did not answer within 0.3 s" in fallback[0][2]
    assert mix.exists() and vocals.exists()  # the take stays where it was written
    with pytest.raises(PlaceTimeout):
        LivePlacer("127.0.0.1", 9, timeout=0.2).ping()


def test_script_refusal_is_relayed_as_an_error(bridge, take_files):
    folder, mix, vocals, mid, notes = take_files
    bad = folder / "other.wav"
    bad.write_bytes(b"RIFF")
    song = StubSong()
    running = RunningScript(song)
    link = AbletonLink(bridge, placer=LivePlacer("127.0.0.1", running.server.port, timeout=5.0)).start()
    try:
        assert link.place(_take(bridge, [mix, bad], folder)) is False
    finally:
        link.close()
        running.close()
    errors = _errors(bridge, "/dr2/daw/place")
    assert errors and "stem other" in errors[0][1] and "not a WAV" in errors[0][1], errors
    assert [a for a, _ in bridge.events if a == "/dr2/daw/fallback"]
    assert song.calls == []


def test_follow_daw_is_all_or_nothing(bridge):
    bridge.define_section("mine", "verse", 0, 16)
    with pytest.raises(BridgeError):
        bridge.follow_daw(bpm=100.0, sections=[("a", "verse", 0, 8), ("b", "nope", 8, 8)])
    assert bridge.session.bpm == 120.0 and set(bridge.session.sections) == {"mine"}
    assert bridge.follow_daw(bpm=100.0, timesig=(6, 8)) == ["bpm", "timesig"]
    assert bridge.follow_daw(bpm=100.0, timesig=(6, 8)) == []
    assert math.isclose(bridge.session.seconds(100.0), 60.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_a_finished_job_is_placed_in_live(tiny_model, tmp_path, live_module):
    """The whole path: a bridge job writes its take into Samples/Imported/dr2, the bridge sends the
    placement, the Remote Script puts the WAV on 'dr2 mix' at the take's beat."""
    import torch

    from dr2studio.bridge import BridgeJob
    from dr2studio.engine import LocalEngine

    project = tmp_path / "Song Project"
    (project / "Ableton Project Info").mkdir(parents=True)
    style = torch.randn(512, generator=torch.Generator().manual_seed(1))
    engine = LocalEngine(str(tiny_model), style_embedding=style)
    b = Bridge(engine, style_embedding=style, steps=2)
    events: list[tuple[str, list]] = []
    b.add_sink(lambda address, args: events.append((address, args)))
    song = StubSong(tempo=96.0)
    running = RunningScript(song)
    link = AbletonLink(b, placer=LivePlacer("127.0.0.1", running.server.port, timeout=5.0)).start()
    try:
        b.open_session(str(project), "ableton")
        b.follow_daw(bpm=96.0, sections=[("intro", "intro", 0.0, 4.0), ("verse-1", "verse", 4.0, 4.0)])
        b.set_lyrics("verse-1", "la la la")
        b.submit("take1", BridgeJob("continue", from_beats=8.0, length_beats=4.0, sec_id="verse-1", seed=1))
        assert wait_for(lambda: any(a in ("/dr2/daw/placed", "/dr2/daw/fallback", "/dr2/job/error") for a, _ in events), 120)
        link.wait(10)
    finally:
        link.close()
        running.close()
        b.close()
        engine.close()
    stems = [args for a, args in events if a == "/dr2/job/stem"]
    placed = [args for a, args in events if a == "/dr2/daw/placed"]
    assert stems and placed, events[-6:]
    assert placed[0][0] == "take1" and placed[0][1] == len(stems), (placed, stems)
    mix = next(args for args in stems if args[1] == "mix")
    assert Path(mix[2]).parent.parent == (project / "Samples" / "Imported" / "dr2").resolve()
    assert ("create_audio_clip", "dr2 mix", str(Path(mix[2]).resolve()), 8.0) in song.calls
    clip = song.tracks[0].arrangement_clips[0]
    assert clip.name == "take1 mix" and 0.0 < clip.length <= 4.05, clip.length  # at most the 4 beats asked for


def test_cli_options_refuse_a_bad_target_and_port_in_use(bridge):
    import click

    from dr2studio.commands.bridge import _ableton_link

    with pytest.raises(click.ClickException, match="--ableton live:abc.*port"):
        _ableton_link(bridge, "live:abc", 0, 11010, 5.0)
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(click.ClickException, match="cannot listen for AbletonOSC's replies on port"):
            _ableton_link(bridge, "127.0.0.1", busy.getsockname()[1], 11010, 5.0)
    finally:
        busy.close()
    link = _ableton_link(bridge, "127.0.0.1:9", 0, 0, 5.0)  # script port 0: follow only
    try:
        assert link.placer is None and link.follower is not None
    finally:
        link.close()


def test_only_lives_host_speaks_for_live(bridge, live):
    peer, follower = live
    peer.change("tempo", 101.0)
    assert wait_for(lambda: bridge.session.bpm == 101.0, WAIT)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind(("127.0.0.2", 0))  # another host on the loopback network
    except OSError:
        pytest.skip("this system cannot bind 127.0.0.2")
    try:
        before = follower.received
        stranger.sendto(build_msg("/live/song/get/tempo", [55.0]).dgram, ("127.0.0.1", follower.reply_port))
        time.sleep(0.5)
    finally:
        stranger.close()
    assert bridge.session.bpm == 101.0
    assert follower.grid.tempo == 101.0 and follower.received > before  # the peer's polls still arrive
