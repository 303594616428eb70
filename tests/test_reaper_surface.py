"""REAPER's own OSC surface talking to a real bridge over loopback: the messages REAPER's default pattern
addresses carry (tempo, beat counter, transport, region and marker names and times) drive the session;
after a take the bridge sends /action/<command id> to a UDP listener standing in for REAPER; the shipped
Lua action, run by a real Lua interpreter against the recording ReaScript stub, places takes on fixed
lanes and MIDI files as MIDI items, and refuses a take with a file it cannot read."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from pythonosc.osc_message import OscMessage

from daw_helpers import REAPER_STUB, UdpClient, wait_for
from dr2studio.bridge.reaper_surface import (
    ReaperAction,
    ReaperSurface,
    check_command_id,
    is_reaper_address,
    parse_action_target,
    parse_region_name,
)
from dr2studio.bridge.session import BridgeError

ROOT = Path(__file__).resolve().parents[1]
PATTERN_FILE = ROOT / "bridges" / "reaper" / "dr2studio.ReaperOSC"
LUA_ACTION = ROOT / "bridges" / "reaper" / "dr2_import_takes.lua"
TIMEOUT = 60.0

#: Facts from REAPER's Default.ReaperOSC: the patterns it lists for each action this pattern file uses.
#: Default.ReaperOSC has DEVICE_MARKER_COUNT 0 and DEVICE_REGION_COUNT 0: without a change, no markers or
#: regions are reported, which is why the shipped file sets them.
DEFAULT_PATTERNS = {
    "TIME": {"f/time", "s/time/str"},
    "BEAT": {"s/beat/str"},
    "RECORD": {"t/record"}, "STOP": {"t/stop"}, "PLAY": {"t/play"}, "PAUSE": {"t/pause"},
    "TEMPO": {"n/tempo", "f/tempo/raw", "r/tempo/rotary", "s/tempo/str"},
    "MARKER_NAME": {"s/marker/@/name"}, "MARKER_NUMBER": {"s/marker/@/number/str"}, "MARKER_TIME": {"f/marker/@/time"},
    "REGION_NAME": {"s/region/@/name"}, "REGION_NUMBER": {"s/region/@/number/str"},
    "REGION_TIME": {"f/region/@/time"}, "REGION_LENGTH": {"f/region/@/length"},
    "ACTION": {"i/action", "s/action/str", "t/action/@", "f/action/@/cc"},
}
DEVICE_TO_REAPER = {"ACTION"}  # the bridge sends these; REAPER sends the rest as feedback


def _pattern_config() -> tuple[dict[str, int], dict[str, list[str]]]:
    counts, actions = {}, {}
    for raw in PATTERN_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, *values = line.split()
        if key.startswith("DEVICE_") and key.endswith("_COUNT"):
            counts[key] = int(values[0])
        else:
            actions.setdefault(key, []).extend(values)
    return counts, actions


def test_the_pattern_file_uses_reapers_addresses_and_the_bridge_reads_every_one():
    counts, actions = _pattern_config()
    assert counts["DEVICE_REGION_COUNT"] >= 32 and counts["DEVICE_MARKER_COUNT"] >= 32
    assert set(actions) == set(DEFAULT_PATTERNS)
    for action, patterns in actions.items():
        assert set(patterns) <= DEFAULT_PATTERNS[action], action
        if action in DEVICE_TO_REAPER:
            continue
        for pattern in patterns:
            address = pattern[1:]
            for slot in ("1", str(counts["DEVICE_REGION_COUNT"])):
                assert is_reaper_address(address.replace("@", slot)), pattern
    assert "t/action/@" in actions["ACTION"]
    assert is_reaper_address("/action/40364") and is_reaper_address("/action/_RSabc")  # toggle feedback: ignored
    for other in ("/track/1/volume", "/region/1/colour", "/dr2/ping", "/marker/x/name", "/region/1/name/extra"):
        assert not is_reaper_address(other)


def test_region_names_commands_and_targets():
    assert parse_region_name("Verse 1 | hello there / my friend") == (
        parse_region_name("verse 1|hello there/my friend"))
    plan = parse_region_name("Pre-Chorus 2 | up / we go")
    assert (plan.kind, plan.number, plan.lyrics) == ("pre-chorus", 2, "up\nwe go")
    assert parse_region_name("Chorus").number is None and parse_region_name("Chorus").lyrics is None
    assert parse_region_name("Instrumental").kind == "instrumental"
    for bad in ("Banana", "", "| only lyrics", "Verse one", "2 Verse"):
        with pytest.raises(BridgeError, match="no section kind"):
            parse_region_name(bad)
    assert check_command_id("_RS7f3c0a9b") == "_RS7f3c0a9b" and check_command_id("40757") == "40757"
    for bad in ("", "_", "RS12", "_RS/../x", "0", "_RS 1", "1/2"):
        with pytest.raises(BridgeError, match="command id"):
            check_command_id(bad)
    assert parse_action_target("127.0.0.1:8000") == ("127.0.0.1", 8000)
    for bad in ("127.0.0.1", ":8000", "h:0", "h:70000", "h:x"):
        with pytest.raises(BridgeError, match="HOST:PORT"):
            parse_action_target(bad)


# ------------------------------------------------------------------------------- a REAPER session

class ReaperPeer(UdpClient):
    """REAPER's side: its surface's feedback (the types its patterns give: f floats, s strings) and,
    on another socket, its listen port, where the bridge's /action messages arrive."""

    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=TIMEOUT)
        self.listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listen.bind(("127.0.0.1", 0))
        self.listen.settimeout(TIMEOUT)

    def region(self, slot: int, name: str, start: float, length: float, number: int | None = None) -> None:
        self.send(f"/region/{slot}/name", name)
        self.send(f"/region/{slot}/number/str", str(number if number is not None else slot) if name else "")
        self.send(f"/region/{slot}/time", float(start))
        self.send(f"/region/{slot}/length", float(length))

    def marker(self, slot: int, name: str, time: float) -> None:
        self.send(f"/marker/{slot}/name", name)
        self.send(f"/marker/{slot}/number/str", str(slot) if name else "")
        self.send(f"/marker/{slot}/time", float(time))

    def play_bars(self, numerator: int, bars: int, bpm: float) -> None:
        """Playback from bar 1: /play, then /time and /beat/str per beat (REAPER sends them more often)."""
        self.send("/play", 1.0)
        self.send("/stop", 0.0)
        for i in range(numerator * bars + 1):
            self.send("/time", i * 60.0 / bpm)
            self.send("/beat/str", f"{i // numerator + 1}.{i % numerator + 1}.00")

    def action(self) -> tuple[str, list]:
        msg = OscMessage(self.listen.recv(65535))
        return msg.address, list(msg.params)

    def close(self) -> None:
        self.listen.close()
        super().close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def reaper_app(tiny_model, tmp_path):
    from dr2studio.bridge import BridgeApp, BridgeOptions
    from dr2studio.engine import LocalEngine

    project = tmp_path / "reaper project"
    project.mkdir()
    (project / "song.rpp").write_text("<REAPER_PROJECT\n>\n", encoding="utf-8")
    style = torch.randn(512, generator=torch.Generator().manual_seed(1))
    app = BridgeApp(LocalEngine(str(tiny_model), style_embedding=style),
                    BridgeOptions(osc_port=0, steps=2, project=project, daw="reaper", project_roots=[tmp_path]),
                    style_embedding=style)
    peer = ReaperPeer(app.osc.udp_port)
    surface = ReaperSurface(app.bridge, ReaperAction("127.0.0.1", peer.listen.getsockname()[1], "_RSdr2import"))
    surface.attach(app.osc)
    watcher = UdpClient(app.osc.udp_port, timeout=TIMEOUT)  # another client: hears the error events
    watcher.send("/dr2/subscribe")
    watcher.until("/dr2/ack", "/dr2/subscribe")
    yield app, surface, peer, watcher, project
    watcher.close()
    peer.close()
    surface.close()
    app.close()


def _heard(client: UdpClient, address: str, first: str) -> list:
    """Arguments of a message the client got (already read while polling, or still to come)."""
    for got, params in client.log:
        if got == address and params and params[0] == first:
            return params
    return client.until(address, first, timeout=20.0)


def _state(client: UdpClient) -> dict:
    client.send("/dr2/session/state")
    return json.loads(client.until("/dr2/session/state")[0])


def _settled(client: UdpClient, check) -> dict:
    """The session state once ``check(state)`` holds (REAPER's packets are handled in order, so a state
    asked for after them already shows them; a short wait covers the rest)."""
    box = {}

    def ok() -> bool:
        box["s"] = _state(client)
        return bool(check(box["s"]))

    assert wait_for(ok, 20.0), box.get("s")
    return box["s"]


def test_the_bridge_follows_a_reaper_project(reaper_app, tmp_path):
    from dr2studio.lyrics.parse import parse_lyrics_file
    from real_material import shared_real

    app, surface, peer, watcher, project = reaper_app
    real_lrc = shared_real("1.lrc")
    shutil.copy(real_lrc, project / "lyrics.lrc")  # the song's lyrics: [verse] / [chorus] blocks
    (project / "verse-2.lrc").write_text("[00:40.00]second verse own file\n[00:44.00]and its second line\n",
                                         encoding="utf-8")
    peer.send("/tempo/raw", 96.0)
    peer.play_bars(3, 3, 96.0)
    peer.region(1, "Intro", 0.0, 7.5)
    peer.region(2, "Verse 1 | hello there / my friend", 7.5, 15.0)
    peer.region(3, "Chorus 2", 22.5, 15.0)
    peer.region(4, "Verse 2", 37.5, 15.0)
    peer.region(5, "Banana", 52.5, 5.0)
    peer.region(6, "", 0.0, 0.0)  # slots past the project's regions are empty
    peer.marker(1, "Drop", 30.0)  # the project has regions: markers do not make sections

    state = _settled(watcher, lambda s: len(s["sections"]) == 4 and s["timesig"] == [3, 4])
    assert state["bpm"] == 96.0 and state["daw"] == "reaper"
    beats = 96.0 / 60.0
    assert [(s["sec_id"], s["kind"], s["start_beats"], s["length_beats"]) for s in state["sections"]] == [
        ("intro-1", "intro", 0.0, pytest.approx(7.5 * beats)),
        ("verse-1", "verse", pytest.approx(7.5 * beats), pytest.approx(15 * beats)),
        ("chorus-2", "chorus", pytest.approx(22.5 * beats), pytest.approx(15 * beats)),
        ("verse-2", "verse", pytest.approx(37.5 * beats), pytest.approx(15 * beats)),
    ]
    real_chorus = parse_lyrics_file(real_lrc).find("chorus", 2).lines  # in 1.lrc the first [chorus] is empty
    assert len(real_chorus) >= 4
    assert state["lyrics"] == {"verse-1": "hello there\nmy friend", "chorus-2": "\n".join(real_chorus),
                               "verse-2": "second verse own file\nand its second line"}
    described = surface.describe()
    assert described["transport"] == "playing" and described["numerator"] == 3
    assert described["beat"] == [4, 1, 0] and described["position_s"] == pytest.approx(9 * 60 / 96.0)

    # the region that is no section kind: one clear error naming it, to REAPER and to subscribers
    where, message = _heard(watcher, "/dr2/error", "reaper:region 5")
    assert message.startswith("reaper:region 5: 'Banana' is no section kind") and "ignored" in message
    assert _heard(peer, "/dr2/error", "reaper:region 5")[1] == message
    assert [p for a, p in watcher.log if a == "/dr2/error" and p[0] == "reaper:region 5"] == [[where, message]]  # once

    # the project's tempo changes: the sections keep their seconds, so their beats move
    peer.send("/tempo/raw", 120.0)
    state = _settled(watcher, lambda s: s["bpm"] == 120.0)
    assert state["sections"][1]["start_beats"] == pytest.approx(15.0)
    # a renamed region that is no kind any more: its section goes, nothing of it stays
    peer.send("/region/2/name", "Versus 1 | la")
    state = _settled(watcher, lambda s: "verse-1" not in [x["sec_id"] for x in s["sections"]])
    assert "verse-1" not in state["lyrics"]
    assert "'Versus 1' is no section kind" in _heard(watcher, "/dr2/error", "reaper:region 2")[1]
    # transport flags arrive one message each, in no set order
    peer.send("/pause", 1.0)
    peer.send("/play", 1.0)
    assert wait_for(lambda: surface.describe()["transport"] == "paused", 10.0)
    peer.send("/pause", 0.0)
    assert wait_for(lambda: surface.describe()["transport"] == "playing", 10.0)
    peer.send("/record", 1.0)
    assert wait_for(lambda: surface.describe()["transport"] == "recording", 10.0)
    peer.send("/stop", 1.0)
    peer.send("/play", 0.0)
    assert wait_for(lambda: surface.describe()["transport"] == "stopped", 10.0)


def test_a_bad_tempo_is_refused_and_changes_nothing(reaper_app):
    app, surface, peer, watcher, project = reaper_app
    peer.send("/tempo/raw", 100.0)
    _settled(watcher, lambda s: s["bpm"] == 100.0)
    for bad in (0.0, -20.0, float("nan"), float("inf"), 5000.0):
        peer.send("/tempo/raw", bad)
        where, message = peer.until("/dr2/error", "/tempo/raw")
        assert "tempo" in message and ("positive" in message or "999" in message), message
    peer.send("/tempo/raw", "fast")  # a string where REAPER sends a float
    assert "one number" in peer.until("/dr2/error", "/tempo/raw")[1]
    assert _state(watcher)["bpm"] == 100.0 and surface.describe()["bpm"] == 100.0
    peer.send("/region/1/time", -1.0)
    assert "must be a number >= 0" in peer.until("/dr2/error", "/region/1/time")[1]
    # REAPER's feedback gets no acks, and an action's toggle state is no error
    peer.send("/action/40364", 1.0)
    peer.send("/time", 3.5)
    peer.send("/dr2/ping")  # the packets of one sender are handled in order: after the pong, all are done
    peer.until("/dr2/pong")
    assert [p for a, p in peer.log if a in ("/dr2/ack", "/dr2/error") and p[0] in ("/action/40364", "/time")] == []
    assert surface.describe()["position_s"] == 3.5


def test_markers_make_sections_when_there_are_no_regions(reaper_app):
    app, surface, peer, watcher, project = reaper_app
    peer.send("/tempo/raw", 120.0)
    peer.marker(1, "Intro", 0.0)
    peer.marker(2, "Chorus | sing it loud", 8.0)
    peer.marker(3, "End", 24.0)
    state = _settled(watcher, lambda s: len(s["sections"]) == 2)
    assert [(s["sec_id"], s["start_beats"], s["length_beats"]) for s in state["sections"]] == [
        ("intro-1", 0.0, 16.0), ("chorus-1", 16.0, 32.0)]
    assert state["lyrics"] == {"chorus-1": "sing it loud"}
    # a chorus with no lyrics anywhere is kept, and REAPER hears that its words are missing
    peer.marker(2, "Chorus", 8.0)
    assert "no lyrics" in _heard(peer, "/dr2/error", "reaper:marker 2")[1]


def test_a_finished_take_triggers_the_import_action_and_lua_places_it(reaper_app):
    lupa = pytest.importorskip("lupa.lua54")
    app, surface, peer, watcher, project = reaper_app
    peer.send("/tempo/raw", 120.0)
    peer.region(1, "Verse 1 | hello there / my friend", 0.0, 2.0)
    _settled(watcher, lambda s: len(s["sections"]) == 1 and s["bpm"] == 120.0)
    for job, args in (("t1", ("/dr2/gen/song", "t1", 0.0, 3)), ("t2", ("/dr2/gen/continue", "t2", 4.0, 2.0, "verse-1", 4))):
        watcher.send(*args)
        address, params = watcher.reply("/dr2/job/done", "/dr2/job/error", timeout=120.0)
        assert (address, params[0]) == ("/dr2/job/done", job), params
        assert peer.action() == ("/action/_RSdr2import", [])
    takes = json.loads((project / "dr2studio.json").read_text(encoding="utf-8"))["takes"]
    assert [t["take"] for t in takes] == ["t1", "t2"]

    lua = _lua(lupa, project)
    lua.execute(LUA_ACTION.read_text(encoding="utf-8"))
    items = _placed(lua)
    assert [(i["track"], i["file"], i["D_POSITION"], i["I_FIXEDLANE"]) for i in items] == [
        ("dr2 mix", str(project / takes[0]["files"]["mix"]), 0.0, 0),
        ("dr2 mix", str(project / takes[1]["files"]["mix"]), pytest.approx(takes[1]["position_seconds"]), 1)]
    assert 1.0 < items[1]["D_POSITION"] <= 2.0  # the continue starts where it cut the song (a latent frame)
    assert items[0]["D_LENGTH"] == pytest.approx(sf.info(items[0]["file"]).duration)


# ------------------------------------------------------------------------- the Lua action alone

def _lua(lupa, project: Path):
    """Lua 5.4 with the ReaScript stub; media lengths read from the real files (soundfile, mido)."""
    import mido

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().PROJECT_FILE = str(project / "song.rpp")
    lua.execute(REAPER_STUB)

    def length(src):  # REAPER reports 0 for a source it cannot decode
        file = src["file"]
        try:
            if file.lower().endswith((".mid", ".midi")):
                return mido.MidiFile(file).length, False
            return sf.info(file).duration, False
        except (OSError, ValueError, EOFError, RuntimeError):
            return 0.0, False

    lua.globals().reaper.GetMediaSourceLength = length
    return lua


def _placed(lua) -> list[dict]:
    placed = lua.globals().placed
    return [dict(placed[i].items()) for i in range(1, len(placed) + 1)]


def _tracks(lua) -> dict[str, dict]:
    tracks = lua.globals().tracks
    return {tracks[i]["name"]: dict(tracks[i].items()) for i in range(1, len(tracks) + 1)}


def _wav(path: Path, seconds: float, rate: int = 8000) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t)[:, None].repeat(2, 1), rate)
    return path.name


def _manifest(project: Path, takes: list[dict]) -> None:
    (project / "dr2studio.json").write_text(json.dumps({"schema_version": 2, "takes": takes}), encoding="utf-8")


def _take(name: str, position: float, files: dict, midi: dict | None = None) -> dict:
    take = {"take": name, "origin": "bridge", "position_seconds": position, "files": files}
    if midi is not None:
        take["midi"] = midi
    return take


@pytest.fixture()
def lua_project(tmp_path):
    from real_material import midi_corpus

    project = tmp_path / "rp"
    project.mkdir()
    (project / "song.rpp").write_text("<REAPER_PROJECT\n>\n", encoding="utf-8")
    midis = {p.name: p for p in midi_corpus()}
    return project, midis


def test_the_action_puts_versions_on_lanes_and_midi_on_midi_lanes(lua_project):
    lupa = pytest.importorskip("lupa.lua54")
    project, midis = lua_project
    for take, seconds in (("a", 4.0), ("b", 2.0), ("c", 3.0)):
        for stem in ("vocals", "bass"):
            _wav(project / "Media/dr2" / take / f"{stem}.wav", seconds)
    for name in ("test01.mid", "test05.mid"):
        shutil.copy(midis[name], project / "Media/dr2/a" / name)
    _manifest(project, [
        _take("a", 10.0, {"vocals": "Media/dr2/a/vocals.wav", "bass": "Media/dr2/a/bass.wav"},
              {"vocals": "Media/dr2/a/test01.mid", "bass": "Media/dr2/a/test05.mid"}),
        _take("b", 12.0, {"vocals": "Media/dr2/b/vocals.wav", "bass": "Media/dr2/b/bass.wav"}),  # overlaps a
    ])
    lua = _lua(lupa, project)
    script = LUA_ACTION.read_text(encoding="utf-8")
    lua.execute(script)
    items = _placed(lua)
    got = [(i["track"], Path(i["file"]).relative_to(project).as_posix(), i["D_POSITION"], i["I_FIXEDLANE"],
            round(i["D_LENGTH"], 3)) for i in items]
    assert got == [
        ("dr2 bass", "Media/dr2/a/bass.wav", 10.0, 0, 4.0),
        ("dr2 vocals", "Media/dr2/a/vocals.wav", 10.0, 0, 4.0),
        ("dr2 bass MIDI", "Media/dr2/a/test05.mid", 10.0, 0, round(7.2421875, 3)),
        ("dr2 vocals MIDI", "Media/dr2/a/test01.mid", 10.0, 0, round(3.96875, 3)),
        ("dr2 bass", "Media/dr2/b/bass.wav", 12.0, 1, 2.0),
        ("dr2 vocals", "Media/dr2/b/vocals.wav", 12.0, 1, 2.0),
    ]
    tracks = _tracks(lua)
    assert set(tracks) == {"dr2 bass", "dr2 vocals", "dr2 bass MIDI", "dr2 vocals MIDI"}  # one track per stem, not per take
    vocals = tracks["dr2 vocals"]
    assert vocals["I_FREEMODE"] == 2 and vocals["I_NUMFIXEDLANES"] == 2
    assert (vocals["P_LANENAME:0"], vocals["P_LANENAME:1"]) == ("a vocals", "b vocals")
    assert (vocals["C_LANEPLAYS:0"], vocals["C_LANEPLAYS:1"]) == (0, 2)  # b overlaps a: the newest plays

    # a third version elsewhere on the timeline: a new lane that plays along, the others untouched
    manifest = json.loads((project / "dr2studio.json").read_text())
    manifest["takes"].append(_take("c", 30.0, {"vocals": "Media/dr2/c/vocals.wav"}))
    (project / "dr2studio.json").write_text(json.dumps(manifest))
    lua.execute(script)
    vocals = _tracks(lua)["dr2 vocals"]
    assert vocals["I_NUMFIXEDLANES"] == 3 and vocals["P_LANENAME:2"] == "c vocals"
    assert (vocals["C_LANEPLAYS:0"], vocals["C_LANEPLAYS:1"], vocals["C_LANEPLAYS:2"]) == (0, 2, 2)
    assert len(_placed(lua)) == 7
    lua.execute(script)  # everything imported: nothing new
    assert len(_placed(lua)) == 7 and len(lua.globals().console) == 0


def test_a_take_with_a_file_reaper_cannot_read_is_not_placed_at_all(lua_project):
    lupa = pytest.importorskip("lupa.lua54")
    project, midis = lua_project
    _wav(project / "Media/dr2/good/mix.wav", 1.0)
    _wav(project / "Media/dr2/bad/mix.wav", 1.0)
    (project / "Media/dr2/bad/vocals.wav").write_bytes(b"this is no audio file" * 10)
    _wav(project / "Media/dr2/empty/mix.wav", 0.0)  # a valid WAV header with no samples
    _wav(project / "Media/dr2/nomidi/mix.wav", 1.0)
    shutil.copy(project / "Media/dr2/good/mix.wav", project / "Media/dr2/nomidi/fake.mid")  # audio named .mid
    _manifest(project, [
        _take("bad", 0.0, {"mix": "Media/dr2/bad/mix.wav", "vocals": "Media/dr2/bad/vocals.wav"}),
        _take("gone", 1.0, {"mix": "Media/dr2/gone/mix.wav"}),
        _take("empty", 1.5, {"mix": "Media/dr2/empty/mix.wav"}),
        _take("nomidi", 2.0, {"mix": "Media/dr2/nomidi/mix.wav"}, {"mix": "Media/dr2/nomidi/fake.mid"}),
        _take("escape", 3.0, {"mix": "../outside.wav"}),
        _take("good", 4.0, {"mix": "Media/dr2/good/mix.wav"}),
    ])
    lua = _lua(lupa, project)
    script = LUA_ACTION.read_text(encoding="utf-8")
    lua.execute(script)
    assert [(i["file"], i["D_POSITION"]) for i in _placed(lua)] == [(str(project / "Media/dr2/good/mix.wav"), 4.0)]
    console = "".join(lua.globals().console[i] for i in range(1, len(lua.globals().console) + 1))
    assert "bad vocals: " + str(project / "Media/dr2/bad/vocals.wav") in console and "not audio" in console
    assert "gone mix: " in console and "missing" in console
    assert "empty mix: " in console and "no media (length 0)" in console
    assert "nomidi mix MIDI" not in console and "nomidi mix: " in console and "not MIDI" in console
    assert "escape mix: \"../outside.wav\" is not a file inside the project" in console
    assert "bad mix:" not in console  # the readable file of a refused take is simply not placed

    # fixed on disk: the next run places the take it refused (it was not marked imported)
    _wav(project / "Media/dr2/bad/vocals.wav", 1.0)
    lua.globals().console = lua.table()
    lua.execute(script)
    assert sorted(Path(i["file"]).name for i in _placed(lua) if "/bad/" in i["file"]) == ["mix.wav", "vocals.wav"]


def test_the_cli_checks_the_reaper_options_before_loading_a_model(tmp_path):
    from click.testing import CliRunner

    from dr2studio.cli import main

    base = ["bridge", "--model", str(tmp_path / "no model"), "--projects-root", str(tmp_path)]
    for extra, words in (
        (["--reaper-osc", "127.0.0.1:8000"], "go together"),
        (["--reaper-action", "_RSabc"], "go together"),
        (["--reaper-osc", "127.0.0.1", "--reaper-action", "_RSabc"], "HOST:PORT"),
        (["--reaper-osc", "127.0.0.1:8000", "--reaper-action", "RS abc"], "command id"),
    ):
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code != 0 and words in result.output, result.output
        assert "no model" not in result.output  # refused before the model was looked for


@pytest.mark.slow
def test_the_cli_bridge_follows_reaper_and_triggers_the_action(tiny_model, tmp_path):
    """``dr2studio bridge --reaper-osc --reaper-action`` as a producer starts it: REAPER's messages reach
    the session, and a finished take sends the action to REAPER's listen port."""
    import signal
    import subprocess
    import sys

    from dr2studio.style.embedding import save_style_embedding

    style = save_style_embedding(torch.randn(512, generator=torch.Generator().manual_seed(4)), tmp_path / "style.npy")
    project = tmp_path / "proj"
    project.mkdir()
    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.bind(("127.0.0.1", 0))
    listen.settimeout(TIMEOUT)
    cmd = [sys.executable, "-m", "dr2studio.cli", "bridge", "--model", str(tiny_model), "--osc-port", "0",
           "--steps", "2", "--style-embedding", str(style), "--project", str(project), "--daw", "reaper",
           "--reaper-osc", f"127.0.0.1:{listen.getsockname()[1]}", "--reaper-action", "40757"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["osc_udp"]
        reaper, client = ReaperPeer(port), UdpClient(port, timeout=TIMEOUT)
        client.send("/dr2/subscribe")
        client.until("/dr2/ack", "/dr2/subscribe")
        reaper.send("/tempo/raw", 90.0)
        reaper.region(1, "Verse | la la la", 0.0, 2.0)
        state = _settled(client, lambda s: s["sections"] and s["bpm"] == 90.0)
        assert state["sections"][0]["length_beats"] == pytest.approx(3.0) and state["lyrics"] == {"verse-1": "la la la"}
        client.send("/dr2/gen/song", "c1", 0.0, 1)
        reply = client.reply("/dr2/job/done", "/dr2/job/error", timeout=120.0)
        assert reply[0] == "/dr2/job/done", reply
        assert OscMessage(listen.recv(65535)).address == "/action/40757"
        reaper.close()
        client.close()
    finally:
        listen.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
