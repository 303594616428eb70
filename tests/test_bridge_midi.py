"""MIDI side of the bridge: a session over mido's socket port, MIDI file import (markers, UTF-8
lyrics, tempo map, cues), the watch folder, and hostile MIDI input."""
from __future__ import annotations

import json
import time
from pathlib import Path

import mido
import pytest
import soundfile as sf
import torch
from mido.sockets import connect

from daw_helpers import wait_for
from dr2studio.bridge import BridgeApp, BridgeOptions, read_midi_file
from dr2studio.bridge.midi import (
    CMD_LYRICS,
    CMD_LYRICS_FOR,
    CMD_OPEN,
    CMD_SECTION,
    CMD_TEMPO,
    CONTROL_CHANNEL,
    decode_event,
    encode_sysex,
)
from dr2studio.engine import LocalEngine

TIMEOUT = 120.0


def _midi_file(path: Path, *, tempo_changes: bool = False, cues: tuple[str, ...] = ()) -> Path:
    """Two sections (verse at beat 0, chorus at beat 8), UTF-8 lyrics, 100 bpm, 3/4, end marker at 16."""
    mid = mido.MidiFile(ticks_per_beat=480, charset="utf-8")
    meta = mido.MidiTrack()
    mid.tracks.append(meta)
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    meta.append(mido.MetaMessage("marker", text="Verse 1", time=0))
    for text in cues:
        meta.append(mido.MetaMessage("cue_marker", text=text, time=0))
    if tempo_changes:
        meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(150), time=480 * 4))
        meta.append(mido.MetaMessage("marker", text="Chorus", time=0))
    else:
        meta.append(mido.MetaMessage("marker", text="Chorus", time=480 * 8))
    meta.append(mido.MetaMessage("marker", text="End", time=480 * 8))
    words = mido.MidiTrack()
    mid.tracks.append(words)
    syllables = [(0, "/Hel"), (240, "lo "), (240, "world\r"), (480, "你好"), (240, "世界\r"),
                 (480 * 6, "/sing "), (240, "it "), (240, "loud\n")]
    for delta, text in syllables:
        words.append(mido.MetaMessage("lyrics", text=text, time=delta))
    mid.save(str(path))
    return path


def test_midi_file_plan_reads_sections_utf8_lyrics_and_tempo(tmp_path):
    plan = read_midi_file(_midi_file(tmp_path / "song.mid", cues=("style: dreamy lofi", "generate")))
    assert plan.bpm == pytest.approx(100.0) and plan.timesig == (3, 4)
    assert [(s.sec_id, s.kind, s.start_beats, s.length_beats) for s in plan.sections] == [
        ("verse-1", "verse", 0.0, 8.0), ("chorus", "chorus", 8.0, 8.0)]
    assert plan.sections[0].lyrics == "Hello world\n你好世界"
    assert plan.sections[1].lyrics == "sing it loud"
    assert [text for _, text in plan.cues] == ["style: dreamy lofi", "generate"]

    changing = read_midi_file(_midi_file(tmp_path / "change.mid", tempo_changes=True))
    # 4 beats at 100 bpm + 8 beats at 150 bpm = 2.4 s + 3.2 s: the chorus starts at 2.4 s, not at the
    # 2.8 s one average tempo would put it; the style tempo is the one that sounds longest
    assert changing.seconds_at(12.0) == pytest.approx(5.6)
    chorus = changing.sections[1]
    assert chorus.start_beats == 4.0 and changing.seconds_at(chorus.start_beats) == pytest.approx(2.4)
    assert changing.bpm == pytest.approx(150.0)
    assert changing.tempo_map.bar_at(4.0) == pytest.approx(7 / 3)  # 3/4: beat 4 is one beat into bar 2

    (tmp_path / "bad.mid").write_bytes(b"MThd not really")
    with pytest.raises(ValueError, match="not a readable MIDI file"):
        read_midi_file(tmp_path / "bad.mid")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


STYLE = torch.randn(512, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def engine(tiny_model):
    local = LocalEngine(str(tiny_model), style_embedding=STYLE)
    yield local
    local.close()


@pytest.fixture()
def app(engine, tmp_path):
    watch = tmp_path / "inbox"
    watch.mkdir()
    options = BridgeOptions(osc_port=0, midi_tcp=0, watch=watch, steps=2)
    bridge_app = BridgeApp(engine, options, style_embedding=STYLE, own_engine=False)
    bridge_app.watch.interval = 0.1
    yield bridge_app
    bridge_app.close()


class MidiClient:
    def __init__(self, port: int) -> None:
        self.port = connect("127.0.0.1", port)
        self.events: list[tuple[str, list]] = []

    def send(self, msg) -> None:
        self.port.send(msg)

    def cc(self, control: int, value: int) -> None:
        self.send(mido.Message("control_change", channel=CONTROL_CHANNEL, control=control, value=value))

    def note(self, note: int, velocity: int = 100) -> None:
        self.send(mido.Message("note_on", channel=CONTROL_CHANNEL, note=note, velocity=velocity))
        self.send(mido.Message("note_off", channel=CONTROL_CHANNEL, note=note))

    def until(self, address: str, timeout: float = TIMEOUT) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for msg in self.port.iter_pending():
                event = decode_event(msg)
                if event is None:
                    continue
                self.events.append(event)
                if event[0] == address:
                    return event[1]
            time.sleep(0.005)
        raise TimeoutError(f"no {address}; got {self.events[-8:]}")

    def close(self) -> None:
        self.port.close()


def test_session_over_midi_socket_port(app, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    c = MidiClient(app.midi_tcp.port)
    try:
        c.send(encode_sysex(CMD_OPEN, f"{project}\ngeneric"))
        c.send(encode_sysex(CMD_TEMPO, "96"))
        c.send(encode_sysex(CMD_SECTION, "v1 verse 0 16"))
        c.send(encode_sysex(CMD_LYRICS_FOR, "v1\nhello from the keys\nover socket lines"))
        c.send(mido.Message("program_change", channel=CONTROL_CHANNEL, program=3))  # chorus for new sections
        c.cc(21, 2)  # two bars
        c.send(mido.Message("songpos", pos=64))  # 64 sixteenths = beat 16, the end of v1
        c.send(encode_sysex(CMD_LYRICS, "la la la chorus"))  # lyrics of the section at the position (created)
        c.cc(23, 1)
        c.cc(24, 2)  # seed 130
        c.note(36)  # continue from the song position: no song yet, so it generates there
        first = c.until("/dr2/job/stem")
        done = c.until("/dr2/job/done")
        assert done[0] == first[0] and done[1] == 1
        assert first[3] == 16.0 and Path(first[2]).is_file()
        assert sf.info(first[2]).duration == pytest.approx(8 * 60 / 96, abs=0.21)  # 2 bars of 4/4 at 96 bpm

        # clock: start at 0, 96 ticks = 4 beats -> inside the new section (beat 16..24)? no: still v1
        c.send(mido.Message("start"))
        for _ in range(24 * 18):  # 18 beats -> inside the chorus section created at beat 16
            c.send(mido.Message("clock"))
        c.send(mido.Message("stop"))
        c.note(37)  # regenerate the section under the position
        stem = c.until("/dr2/job/stem")
        assert c.until("/dr2/job/done")[0] == stem[0]
        assert stem[3] == pytest.approx(16.0)  # the section starts the song: no crossfade before it

        session = app.bridge.require_session()
        assert session.sections["midi-2"].kind == "chorus" and session.lyrics["midi-2"] == ["la la la chorus"]
        manifest = json.loads((project / "dr2studio.json").read_text(encoding="utf-8"))
        assert [t["kind"] for t in manifest["takes"]] == ["generate", "infill"]
        assert manifest["takes"][0]["seed"] == 130 and manifest["takes"][0]["position_beats"] == 16.0

        # hostile MIDI: bad SysEx payload, unknown command, bad program, and the port still works
        c.send(mido.Message("sysex", data=[0x7D, CMD_LYRICS, 0x21, 0x21]))
        assert "base64" in c.until("/dr2/error")[1]
        c.send(encode_sysex(0x55, "x"))
        assert "unknown dr2 SysEx" in c.until("/dr2/error")[1]
        c.send(mido.Message("program_change", channel=CONTROL_CHANNEL, program=99))
        assert "not a section kind" in c.until("/dr2/error")[1]
        c.cc(20, 9)
        c.note(37)
        assert "section index 9" in c.until("/dr2/error")[1]
        c.send(mido.Message("note_on", channel=0, note=36, velocity=100))  # other channels are ignored
        c.cc(20, 0)
        c.send(encode_sysex(CMD_TEMPO, "120"))
        c.note(38)  # cancel with nothing running: harmless
        time.sleep(0.2)
        assert app.bridge.require_session().bpm == 120.0
    finally:
        c.close()


def test_midi_file_by_osc_and_by_watch_folder(app, tmp_path):
    from pythonosc.osc_message import OscMessage
    from pythonosc.osc_message_builder import build_msg
    import socket

    project = tmp_path / "proj"
    project.mkdir()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)

    def send(address, *args):
        sock.sendto(build_msg(address, list(args)).dgram, ("127.0.0.1", app.osc.udp_port))

    def until(address, first=None):
        while True:
            m = OscMessage(sock.recv(65535))
            if m.address == address and (first is None or m.params[0] == first):
                return list(m.params)

    try:
        send("/dr2/subscribe")
        send("/dr2/session/open", str(project), "generic")
        _midi_file(project / "plan.mid")
        send("/dr2/midi/file", "plan.mid")
        name, n_sections, n_syllables, encoding, detail = until("/dr2/midi/imported", "plan.mid")
        assert (n_sections, n_syllables, encoding) == (2, 8, "utf_8")
        assert json.loads(detail)["sections"] == ["verse-1", "chorus"]
        session = app.bridge.require_session()
        assert session.bpm == pytest.approx(100.0) and session.timesig == (3, 4)
        assert session.lyrics["verse-1"] == ["Hello world", "你好世界"]

        # a second file replaces the plan: no stale verse-1 left behind, and its tempo map places beats
        _midi_file(project / "change.mid", tempo_changes=True)
        send("/dr2/midi/file", "change.mid")
        until("/dr2/midi/imported", "change.mid")
        session = app.bridge.require_session()
        assert sorted(session.sections) == ["chorus", "verse-1"]
        assert session.sections["chorus"].start_beats == 4.0 and session.seconds(4.0) == pytest.approx(2.4)
        assert session.seconds(12.0) == pytest.approx(5.6) and session.beats(5.6) == pytest.approx(12.0)
        send("/dr2/section/define", "extra", "bridge", 40.0, 8.0)
        send("/dr2/midi/file", "plan.mid")
        until("/dr2/midi/imported", "plan.mid")
        assert "extra" not in app.bridge.require_session().sections
        send("/dr2/section/define", "extra", "bridge", 40.0, 8.0)
        send("/dr2/midi/file", "plan.mid", 1)  # merge: what the session had stays
        assert json.loads(until("/dr2/midi/imported", "plan.mid")[4])["merged"] is True
        assert sorted(app.bridge.require_session().sections) == ["chorus", "extra", "verse-1"]
        send("/dr2/song/tempo", 100.0)  # a tempo set by hand holds everywhere again
        until("/dr2/ack", "/dr2/song/tempo")
        assert app.bridge.require_session().tempo_map is None
        send("/dr2/midi/file", "../plan.mid")
        assert "outside the project" in until("/dr2/error", "/dr2/midi/file")[1]

        # a file dropped into the watch folder with a generate cue renders a whole song (at the plan's
        # length: tempo conform off, or a beat found in the random model's noise may stretch the take)
        send("/dr2/take/conform", 0)
        until("/dr2/ack", "/dr2/take/conform")
        _midi_file(tmp_path / "staging.mid", cues=("generate",))
        (tmp_path / "staging.mid").rename(app.watch.folder / "dropped.mid")
        imported = until("/dr2/midi/imported", "dropped.mid")
        assert imported[1:4] == [2, 8, "utf_8"]
        (job_id,) = json.loads(imported[4])["jobs"]
        stem = until("/dr2/job/stem")
        assert stem[0] == job_id and stem[0].startswith("watch-dropped-")
        assert until("/dr2/job/done", stem[0])[1] == 1
        assert sf.info(stem[2]).duration == pytest.approx(16 * 60 / 100, abs=0.21)
        (app.watch.folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
        assert "broken.mid" in until("/dr2/error")[0]
    finally:
        sock.close()


def test_virtual_port_or_clear_error(app):
    from dr2studio.bridge.midi import open_virtual_port
    from dr2studio.bridge.session import BridgeError

    try:
        port = open_virtual_port(app.midi, "dr2-test")
    except BridgeError as exc:
        assert "--midi-tcp" in str(exc)
        pytest.skip(f"no virtual MIDI ports on this machine: {exc}")
    else:
        port.close()


# ----------------------------------------------------------------------- freezes and bounded memory
# Real sockets: a stalled client is a TCP connection that stops reading.

def _udp_ping(port: int) -> float:
    """Seconds an OSC /dr2/ping over UDP takes to answer (the OSC side must not wait for MIDI)."""
    import socket

    from pythonosc.osc_message_builder import build_msg

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        t0 = time.monotonic()
        s.sendto(build_msg("/dr2/ping", []).dgram, ("127.0.0.1", port))
        while b"/dr2/pong" not in s.recv(65535):
            pass
        return time.monotonic() - t0


_wait_for = wait_for


@pytest.fixture()
def tight_midi(app):
    """A second MIDI-over-TCP server on the same bridge with small limits, reached in seconds."""
    from dr2studio.bridge.midi import MidiController, MidiTcpServer

    controller = MidiController(app.bridge)
    server = MidiTcpServer(controller, port=0, max_clients=3, send_stall_s=1.5, outbox_frames=64,
                           outbox_bytes=128 * 1024, max_sysex=32768).start()
    yield server
    server.close()
    controller.close()


def test_stalled_midi_client_never_freezes_midi_or_osc(app, tight_midi):
    import socket
    import threading

    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", tight_midi.port))
    driver = socket.create_connection(("127.0.0.1", tight_midi.port), timeout=5)
    received = [0]

    def drain() -> None:  # the driving client reads everything it is sent
        try:
            while more := driver.recv(1 << 20):
                received[0] += len(more)
        except OSError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert _wait_for(lambda: tight_midi.stats()["clients"] == 2, 5)
        worst = 0.0
        bad = bytes(mido.Message("program_change", channel=CONTROL_CHANNEL, program=99).bin())
        for i in range(100):  # each bad program comes back as a ~250-byte error event to every client: 12 MB,
            driver.sendall(bad * 500)  # paced so that the writers keep up and the stalled one's kernel buffer fills
            worst = max(worst, _udp_ping(app.osc.udp_port))
            if tight_midi.stats()["clients"] == 1:
                break  # the stalled one was disconnected
            time.sleep(0.1)
        assert worst < 1.0
        assert _wait_for(lambda: tight_midi.stats()["clients"] == 1, 10)  # the stalled one is gone
        assert _wait_for(lambda: received[0] > 1_000_000, 10)  # the reading one is served (its small outbox may drop)
        c = MidiClient(tight_midi.port)
        try:
            c.send(encode_sysex(CMD_TEMPO, "oops"))
            end = time.monotonic() + 5
            while "'oops'" not in c.until("/dr2/error", timeout=5)[1]:
                assert time.monotonic() < end
        finally:
            c.close()
    finally:
        stalled.close()
        driver.close()


def test_unterminated_and_oversize_sysex_are_bounded(app, tight_midi, tmp_path):
    from dr2studio.bridge.midi import MidiStream

    # the parser alone: 10 MB of a SysEx that never ends keeps at most the limit
    stream = MidiStream(limit=4096)
    errors = stream.feed(b"\xf0\x7d\x01")
    for _ in range(160):
        errors += stream.feed(b"A" * 65536)
        assert len(stream._sysex or b"") <= 4096
    assert len(errors) == 1 and "4096-byte limit" in errors[0]  # reported once, not per chunk
    # a status byte ends it; the message after it is parsed; real-time bytes inside pass through
    out = stream.feed(b"\xf8\x90\x3c\x40" + b"\xf0\x7d\x04MTIw\xf8\xf7")
    assert [m.type for m in out if not isinstance(m, str)] == ["clock", "note_on", "clock", "sysex"]
    assert any(isinstance(m, str) and "without its F7" in m for m in stream.feed(b"\xf0\x7dxx\x80\x3c\x00"))

    # over the wire: the bridge answers, drops the SysEx and keeps serving the client
    project = tmp_path / "proj"
    project.mkdir()
    c = MidiClient(tight_midi.port)
    try:
        import socket

        with socket.create_connection(("127.0.0.1", tight_midi.port)) as raw:
            raw.sendall(b"\xf0\x7d\x04" + b"A" * 200_000)  # no F7
            assert "32768-byte limit" in c.until("/dr2/error", timeout=5)[1]
            raw.sendall(b"\xf7")  # the end of the oversize one
            c.send(encode_sysex(CMD_OPEN, f"{project}\ngeneric"))
            raw.sendall(bytes(encode_sysex(CMD_TEMPO, "93").bin()))
            assert _wait_for(lambda: app.bridge.session is not None and app.bridge.session.bpm == 93.0, 5)
        assert _udp_ping(app.osc.udp_port) < 1.0
    finally:
        c.close()


def test_midi_clients_are_capped(tight_midi):
    import socket

    clients = [MidiClient(tight_midi.port) for _ in range(3)]
    try:
        assert _wait_for(lambda: tight_midi.stats()["clients"] == 3, 5)
        with socket.create_connection(("127.0.0.1", tight_midi.port), timeout=5) as extra:
            data = b""
            while True:
                more = extra.recv(65536)
                if not more:
                    break
                data += more
        event = decode_event(mido.Message.from_bytes(list(data)))
        assert event == ("/dr2/error", ["midi:connection", "too many MIDI TCP clients (limit 3)"])
        clients.pop().close()
        assert _wait_for(lambda: tight_midi.stats()["clients"] == 2, 5)
        clients.append(MidiClient(tight_midi.port))  # a free slot is usable again
        assert _wait_for(lambda: tight_midi.stats()["clients"] == 3, 5)
    finally:
        for c in clients:
            c.close()


def test_take_options_over_midi_follow_the_request_layer(app, tmp_path):
    """CC 26 / 27 and SysEx 7 set tempo conform, MIDI and the stated source tempo of later takes, through the
    same request checks as OSC and the CLI; a refused change is an error event and changes nothing."""
    from dr2studio.bridge.midi import CC_CONFORM, CC_TAKE_MIDI, CMD_SOURCE_TEMPO
    from dr2studio.requests import TakeRequest

    project = tmp_path / "proj"
    project.mkdir()
    c = MidiClient(app.midi_tcp.port)

    def options_become(expected: TakeRequest) -> None:
        end = time.monotonic() + TIMEOUT
        while app.bridge.take_options != expected:
            assert time.monotonic() < end, f"take options {app.bridge.take_options} never became {expected}"
            time.sleep(0.01)

    try:
        c.send(encode_sysex(CMD_OPEN, f"{project}\ngeneric"))
        c.cc(CC_CONFORM, 127)
        options_become(TakeRequest(conform=True))
        c.send(encode_sysex(CMD_SOURCE_TEMPO, "136"))
        c.cc(CC_TAKE_MIDI, 100)
        options_become(TakeRequest(conform=True, source_bpm=136.0, midi=True))
        c.cc(CC_CONFORM, 1)  # back to the default by model; the stated source tempo stays
        options_become(TakeRequest(conform=None, source_bpm=136.0, midi=True))
        c.send(encode_sysex(CMD_SOURCE_TEMPO, "5000"))
        assert "source_bpm must be a number in [20, 999] bpm" in c.until("/dr2/error")[1]
        c.send(encode_sysex(CMD_SOURCE_TEMPO, "fast"))
        assert "SysEx source tempo 'fast' is not a number" in c.until("/dr2/error")[1]
        assert app.bridge.take_options == TakeRequest(conform=None, source_bpm=136.0, midi=True)
        c.cc(CC_CONFORM, 0)  # off drops the stated source tempo with it
        c.cc(CC_TAKE_MIDI, 0)
        options_become(TakeRequest(conform=False))
        c.send(encode_sysex(CMD_SOURCE_TEMPO, "120"))
        assert "source_bpm is given but conform is off" in c.until("/dr2/error")[1]
        c.send(encode_sysex(CMD_SOURCE_TEMPO, ""))  # clearing is always fine
        time.sleep(0.2)
        assert app.bridge.take_options == TakeRequest(conform=False)
    finally:
        c.close()
