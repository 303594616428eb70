"""Real MIDI files through the bridge: music21's corpus (time-signature changes, tempo maps, markers,
lyrics in UTF-8, GBK and CP949, Shift-JIS titles), karaoke files with lyrics in legacy encodings, over
real OSC loopback to a real bridge and through the watch folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mido
import pytest
import torch

from daw_helpers import UdpClient
from dr2studio.bridge import BridgeApp, BridgeOptions, read_midi_file
from dr2studio.bridge.miditext import decode_texts
from dr2studio.engine import LocalEngine
from real_material import midi_corpus, shared_real

TIMEOUT = 30.0
#: "Sakura sakura", the traditional Japanese song (public domain), two paragraphs of lines.
SAKURA = [["さくら さくら", "やよいの空は", "見わたす限り"], ["かすみか雲か", "匂いぞ出ずる", "いざや いざや", "見にゆかん"]]


def _by_name(name: str) -> Path:
    found = [p for p in midi_corpus() if p.name == name]
    if not found:
        pytest.skip(f"{name} is not in this music21's corpus")
    return found[0]


def _lyric_events(path: Path, charset: str) -> list[str]:
    mid = mido.MidiFile(str(path), charset=charset)
    return [m.text for track in mid.tracks for m in track if m.type == "lyrics"]


def _sung(text: str) -> str:
    return "".join(text.split())


def test_every_corpus_file_imports_and_keeps_its_lyrics():
    files = midi_corpus()
    plans = {path.name: read_midi_file(path) for path in files}  # no file may raise
    assert len(plans) == len(files)
    assert any(len(p.tempo_map.meters) > 1 for p in plans.values()), "the corpus should hold a meter change"
    assert any(len(p.tempo_map.tempos) > 10 for p in plans.values()), "the corpus should hold a tempo map"
    for path in files:
        plan = plans[path.name]
        assert plan.sections, f"{path.name}: no sections"
        lyrics = "".join(s.lyrics for s in plan.sections)
        raw = [t for t in _lyric_events(path, "latin1") if t.strip("-_+~ ")]
        assert plan.syllables == len(raw), path.name  # every syllable of a marker-less file is kept
        assert bool(lyrics) == bool(raw), path.name
        ends = [s.start_beats + s.length_beats for s in plan.sections]
        assert all(s.length_beats > 0 for s in plan.sections) and max(ends) >= plan.length_beats - 1e-6, path.name

    # the same anthem written by one sequencer in UTF-8 and by another in GBK (and a Korean one in
    # UTF-8 and CP949) reads as the same words; UTF-8 read by mido itself is the reference
    utf8 = _lyric_events(_by_name("test18.mid"), "utf-8")
    assert _sung("".join(s.lyrics for s in plans["test18.mid"].sections)) == _sung("".join(t for t in utf8 if t != "-"))
    assert "明山涌水" in plans["test19.mid"].sections[-1].lyrics
    for utf8_name, legacy_name, encoding in (("test18.mid", "test19.mid", "gb18030"), ("test20.mid", "test21.mid", "cp949")):
        assert plans[legacy_name].encoding == encoding
        assert [s.lyrics for s in plans[legacy_name].sections] == [s.lyrics for s in plans[utf8_name].sections]
    # no markers, words from beat 4: an instrumental bar, then the verse, snapped to the bar line
    assert [(s.kind, s.start_beats) for s in plans["test18.mid"].sections] == [("intro", 0.0), ("verse", 4.0)]
    # the meter change of test03 (4/4 for a bar, then 3/4) is on the bar grid
    meters = plans["test03.mid"].tempo_map
    assert meters.meters == ((0.0, 4, 4), (4.0, 3, 4)) and meters.beat_of_bar(3) == 7.0


def test_shift_jis_title_and_latin1_copyright():
    """Legacy text outside the lyrics: a Shift-JIS track name and a one-byte ``©``."""
    def names(path: Path) -> list[str]:
        mid = mido.MidiFile(str(path), charset="latin1")
        return decode_texts([(m.text if hasattr(m, "text") else m.name).encode("latin-1")
                             for t in mid.tracks for m in t if m.type in ("track_name", "copyright", "text")])[0]

    assert names(_by_name("test04.mid"))[0].strip() == "ベートーベン\u3000交響曲第７番\u3000第２楽章"
    assert "Copyright © 2000 by Gabriel Mihai Dragomir" in names(_by_name("test09.mid"))


def _karaoke(path: Path, paragraphs: list[list[str]], encoding: str, *, kar: bool = False) -> Path:
    """A karaoke file as sequencers write it: one syllable per character, ``\\`` opens a paragraph and
    ``/`` a line, each paragraph on a new bar, text encoded in ``encoding`` (mido writes the bytes as given)."""
    mid = mido.MidiFile(ticks_per_beat=480, charset="latin1")
    meta, words = mido.MidiTrack(), mido.MidiTrack()
    mid.tracks += [meta, words]
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90), time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    kind = "text" if kar else "lyrics"
    if kar:
        for header in ("@KMIDI KARAOKE FILE", "@LJPN", "@Tさくら"):
            words.append(mido.MetaMessage("text", text=header.encode(encoding).decode("latin-1"), time=0))
    tick = 0
    for p, lines in enumerate(paragraphs):
        bar = 1920 * (tick // 1920 + (1 if tick % 1920 else 0))
        delay = bar - tick
        for i, line in enumerate(lines):
            for j, char in enumerate(line):
                mark = ("\\" if i == 0 else "/") if j == 0 else ""
                words.append(mido.MetaMessage(kind, text=(mark + char).encode(encoding).decode("latin-1"), time=delay))
                tick += delay
                delay = 240
            delay = 480
    mid.save(str(path))
    return path


def _lrc_paragraphs() -> list[list[str]]:
    paragraphs: list[list[str]] = [[]]
    for line in shared_real("1.lrc").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            if paragraphs[-1]:
                paragraphs.append([])
        elif line:
            paragraphs[-1].append(line)
    return [p for p in paragraphs if p]


@pytest.mark.parametrize("encoding, detected", [("gbk", "gb18030"), ("utf-8", "utf_8")])
def test_mandarin_lyrics_in_gbk_and_utf8_decode_exactly(tmp_path, encoding, detected):
    paragraphs = _lrc_paragraphs()
    plan = read_midi_file(_karaoke(tmp_path / f"{encoding}.mid", paragraphs, encoding))
    assert plan.encoding == detected
    assert [s.lyrics for s in plan.sections] == ["\n".join(p) for p in paragraphs]
    assert [s.kind for s in plan.sections] == ["verse"] * len(paragraphs)
    assert all(plan.tempo_map.bar_at(s.start_beats) % 1 == 0 for s in plan.sections)  # on bar lines


def test_shift_jis_kar_file_with_headers(tmp_path):
    plan = read_midi_file(_karaoke(tmp_path / "sakura.kar", SAKURA, "shift_jis", kar=True))
    assert plan.encoding in ("cp932", "shift_jis", "shift_jis_2004", "shift_jisx0213")
    assert [s.lyrics for s in plan.sections] == ["\n".join(p) for p in SAKURA]  # @ headers are not sung


# ------------------------------------------------------------------------------ over OSC, for real

@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    root = tmp_path_factory.mktemp("corpus")
    style = torch.randn(512, generator=torch.Generator().manual_seed(3))
    engine = LocalEngine(str(build_tiny_model(root / "model")), style_embedding=style)
    (root / "inbox").mkdir()
    bridge_app = BridgeApp(engine, BridgeOptions(osc_port=0, watch=root / "inbox", steps=2), style_embedding=style)
    bridge_app.watch.interval = 0.1
    yield bridge_app
    bridge_app.close()


class Client(UdpClient):
    """An OSC client that can ask for the session state."""

    def state(self) -> dict:
        self.send("/dr2/session/state")
        return json.loads(self.reply("/dr2/session/state")[1][0])


def test_whole_corpus_over_osc_then_watch_folder(app, tmp_path):
    project = tmp_path / "project"
    (project / "midi").mkdir(parents=True)
    client = Client(app.osc.udp_port)
    try:
        client.send("/dr2/subscribe")
        client.send("/dr2/session/open", str(project), "generic")
        client.reply("/dr2/ack")
        for n, path in enumerate(midi_corpus()):
            name = f"{n:02d}-{path.name}"
            shutil.copyfile(path, project / "midi" / name)
            client.send("/dr2/midi/file", f"midi/{name}")
            address, args = client.reply("/dr2/midi/imported", "/dr2/error")
            assert address == "/dr2/midi/imported", f"{path}: {args}"
            assert args[0] == name and args[1] >= 1
            state = client.state()
            assert [s["sec_id"] for s in state["sections"]] == json.loads(args[4])["sections"]  # replaced, not piled
            assert set(state["lyrics"]) <= {s["sec_id"] for s in state["sections"]}
            if path.name == "test19.mid":  # GBK: decoded before it reaches the session
                assert args[3] == "gb18030" and "郁郁葱葱" in "".join(state["lyrics"].values())

        # a GBK file dropped into the watch folder: the client hears the same event, and the
        # session switches to its plan
        shutil.copyfile(_by_name("test19.mid"), tmp_path / "staging.mid")
        (tmp_path / "staging.mid").rename(app.watch.folder / "anthem.mid")
        address, args = client.reply("/dr2/midi/imported")
        assert args[:4] == ["anthem.mid", 2, 28, "gb18030"]
        assert "明山涌水郁郁葱葱" in client.state()["lyrics"]["verse"]
    finally:
        client.sock.close()
