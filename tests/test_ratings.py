"""Ratings of takes: the store (append-only, superseding, corrupt lines refused), and every door that writes
it: the CLI, Studio, real OSC packets to a real bridge (surviving its restart) and MIDI over mido's socket port."""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import mido
import pytest
import torch
from click.testing import CliRunner
from mido.sockets import connect

from daw_helpers import UdpClient
from dr2studio.bridge import BridgeApp, BridgeOptions
from dr2studio.bridge.midi import CC_RATE_DIMENSION, CONTROL_CHANNEL, NOTE_RATE_FIRST, decode_event
from dr2studio.cli import main
from dr2studio.engine import LocalEngine
from dr2studio.ratings import DIMENSIONS, OVERALL, RATINGS_NAME, Rating, RatingError, RatingStore
from dr2studio.song import Song, sidecar_path
from dr2studio.studio import Studio

TIMEOUT = 120.0
STYLE = torch.randn(512, generator=torch.Generator().manual_seed(3))


def _song_file(path: Path, freq: float) -> Path:
    """A real 1 s WAV (a tone with a pulse) to render as a take."""
    rate = 8000
    t = torch.arange(rate) / rate
    x = 0.2 * torch.sin(2 * math.pi * freq * t) * (0.6 + 0.4 * (torch.sin(2 * math.pi * 3 * t) > 0))
    return Song(audio=x[None], sample_rate=rate, seed=1).save(path)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A project with two takes written by ``dr2studio stems`` (the CLI door): ``a`` and ``b``."""
    proj = tmp_path / "proj"
    runner = CliRunner()
    for name, freq in (("a", 220.0), ("b", 330.0)):
        song = _song_file(tmp_path / f"{name}.wav", freq)
        result = runner.invoke(main, ["stems", str(song), "--project", str(proj), "-q", "--preset", "clean"])
        assert result.exit_code == 0, result.output
    return proj


def _lines(project: Path) -> list[dict]:
    path = project / RATINGS_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cli_ratings_supersede_without_losing_and_overall_fills(project: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["rate", str(project), "a", "--stars", "4"]).exit_code == 0
    result = runner.invoke(main, ["rate", str(project), "a", "--stars", "2", "--dimension", "musicality", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["rating"]["stars"] == 2 and out["rating"]["source"] == "cli"
    assert out["current"] == {"musicality": 2.0, "lyric_accuracy": 4.0, "style_similarity": 4.0, "audio_quality": 4.0}
    assert runner.invoke(main, ["rate", str(project), "a", "--stars", "5"]).exit_code == 0  # supersedes overall 4
    Studio.rate(project, "a", 1, dimension="audio_quality")  # a second source: means over sources
    store = RatingStore(project)
    assert store.current("a") == {"musicality": 2.0, "lyric_accuracy": 5.0, "style_similarity": 5.0,
                                  "audio_quality": (5 + 1) / 2}
    assert store.current("b") == dict.fromkeys(DIMENSIONS)
    history = store.history("a")
    assert [(r.stars, r.dimension, r.source) for r in history] == [
        (4, OVERALL, "cli"), (2, "musicality", "cli"), (5, OVERALL, "cli"), (1, "audio_quality", "studio")]
    assert all(r.time.endswith("+00:00") for r in history)
    assert Rating.from_json(history[0].to_json()) == history[0]
    assert set(store.all_current()) == {"a", "b"}
    table = runner.invoke(main, ["rate", str(project)])
    assert table.exit_code == 0 and "musicality" in table.output and "\na " in table.output
    # the file is the record: one JSON line per rating, read back by a fresh store
    assert len(_lines(project)) == 4 and RatingStore(project).history() == history


def test_bad_ratings_are_clear_errors_and_write_nothing(project: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["a", "--stars", "0"], "stars must be an integer in [1, 5], got 0"),
        (["a", "--stars", "6"], "stars must be an integer in [1, 5], got 6"),
        (["a", "--stars", "3.5"], "stars must be an integer in [1, 5]"),
        (["a", "--stars", "3", "--dimension", "groove"], "'groove' is not one of"),
        (["nope", "--stars", "3"], "has no take 'nope' (newest takes: a, b)"),
        (["--stars", "3"], "--stars needs a TAKE"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["rate", str(project), *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    assert not (project / RATINGS_NAME).exists()
    store = RatingStore(project)
    with pytest.raises(RatingError, match="dimension must be one of overall, musicality"):
        store.rate("a", 3, dimension="groove", source="cli")
    with pytest.raises(RatingError, match="rating source must be one of"):
        store.rate("a", 3, source="fax")
    with pytest.raises(RatingError, match="stars must be an integer"):
        store.rate("a", True, source="cli")  # type: ignore[arg-type]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RatingError, match="is not a folder"):
        RatingStore(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RatingError, match="has no take 'a' \\(newest takes: none yet\\)"):
        RatingStore(empty).rate("a", 3, source="cli")
    assert not (project / RATINGS_NAME).exists() and not (empty / RATINGS_NAME).exists()


def test_a_store_that_cannot_be_read_is_not_written(project: Path) -> None:
    store = RatingStore(project)
    store.rate("a", 4, source="cli")
    path = project / RATINGS_NAME
    with path.open("a") as f:
        f.write('{"take": "a", "stars": 9, "dimension": "overall", "source": "cli", "time": "2026-01-01T00:00:00+00:00"}\n')
    before = path.read_bytes()
    with pytest.raises(RatingError, match=rf"{RATINGS_NAME}:2: corrupt rating \(stars must be an integer in \[1, 5\], got 9\)"):
        store.rate("b", 3, source="cli")
    with pytest.raises(RatingError, match=":2: corrupt"):
        store.history()
    assert path.read_bytes() == before
    path.write_bytes(before.splitlines(keepends=True)[0] + b'{"take": "a", "sta')  # a write that never finished
    with pytest.raises(RatingError, match=":2: unfinished line"):
        store.rate("b", 3, source="cli")
    path.write_bytes(before.splitlines(keepends=True)[0] + b"\xff\xfe not json\n")
    with pytest.raises(RatingError, match=":2: corrupt rating"):
        store.current("a")


def test_concurrent_writers_never_interleave(project: Path) -> None:
    def rater(source: str) -> None:
        store = RatingStore(project)  # its own file descriptions: flock serialises them
        for k in range(15):
            store.rate("a" if k % 2 else "b", 1 + k % 5, source=source)

    threads = [threading.Thread(target=rater, args=(s,)) for s in ("cli", "studio", "web", "osc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = RatingStore(project).history()
    assert len(history) == 60 and {r.source for r in history} == {"cli", "studio", "web", "osc"}


# ---------------------------------------------------------------------------------------- bridge


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    local = LocalEngine(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")), style_embedding=STYLE)
    yield local
    local.close()


def _bridge(engine) -> BridgeApp:
    return BridgeApp(engine, BridgeOptions(osc_port=0, midi_tcp=0, steps=2), style_embedding=STYLE, own_engine=False)


def _midi_until(port, address: str, last: object = None) -> list:
    """The arguments of the next event ``address`` on the MIDI port (whose last argument is ``last``, when given:
    an OSC client's rating may still reach a MIDI client that connected while it was announced)."""
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        for msg in port.iter_pending():
            event = decode_event(msg)
            if event is not None and event[0] == address and (last is None or event[1][-1] == last):
                return event[1]
        time.sleep(0.005)
    raise TimeoutError(address)


def test_osc_and_midi_ratings_land_in_the_store_and_survive_a_bridge_restart(engine, project: Path) -> None:
    app = _bridge(engine)
    c = UdpClient(app.osc.udp_port)
    try:
        c.send("/dr2/subscribe")
        c.until("/dr2/ack", "/dr2/subscribe")
        c.send("/dr2/take/rate", "a", 4)
        assert c.until("/dr2/error", "/dr2/take/rate")[1].startswith("no session is open")
        c.send("/dr2/session/open", str(project))
        c.until("/dr2/ack", "/dr2/session/open")
        c.send("/dr2/take/rate", "a", 4)
        assert c.until("/dr2/take/rated") == ["a", OVERALL, 4, "osc"]
        c.until("/dr2/ack", "/dr2/take/rate")
        c.send("/dr2/take/rate", "b", 2, "style_similarity")
        assert c.until("/dr2/take/rated") == ["b", "style_similarity", 2, "osc"]
        for args, message in [(("a", 7), "stars must be an integer in [1, 5], got 7"),
                              (("a", 0), "stars must be an integer in [1, 5], got 0"),
                              (("a", 3, "groove"), "dimension must be one of overall"),
                              (("ghost", 3), "has no take 'ghost'"),
                              (("a", 3.0), "argument 2 must be 'i'"),
                              (("a",), "takes si[s]")]:
            c.send("/dr2/take/rate", *args)
            reply = c.until("/dr2/error", "/dr2/take/rate")
            assert message in reply[1], (args, reply)

        # a bridge take: its song (with sidecar) is kept and linked from the manifest; rated by job id
        c.send("/dr2/song/tempo", 120.0)
        c.send("/dr2/section/define", "v1", "verse", 0.0, 4.0)
        c.send("/dr2/lyrics/set", "v1", "hello rating world")
        c.send("/dr2/gen/song", "job1")
        c.until("/dr2/job/done", "job1", timeout=TIMEOUT)
        take = json.loads((project / "dr2studio.json").read_text())["takes"][-1]
        assert take["job"] == "job1" and take["take"] == "job1"
        song_file = project / take["song"]
        assert take["song"].startswith(".dr2studio/takes/job1-") and song_file.is_file()
        assert sidecar_path(song_file).is_file() and Song.load(song_file).has_latents
        c.send("/dr2/take/rate", "job1", 5, "musicality")
        assert c.until("/dr2/take/rated") == ["job1", "musicality", 5, "osc"]

        # MIDI: the rating notes rate the newest take; CC 25 picks the dimension
        port = connect("127.0.0.1", app.midi_tcp.port)
        try:
            def note(n: int) -> None:
                port.send(mido.Message("note_on", channel=CONTROL_CHANNEL, note=n, velocity=100))
                port.send(mido.Message("note_off", channel=CONTROL_CHANNEL, note=n))

            note(NOTE_RATE_FIRST + 2)
            assert _midi_until(port, "/dr2/take/rated", "midi") == ["job1", OVERALL, 3, "midi"]
            port.send(mido.Message("control_change", channel=CONTROL_CHANNEL, control=CC_RATE_DIMENSION, value=2))
            note(NOTE_RATE_FIRST + 4)
            assert _midi_until(port, "/dr2/take/rated", "midi") == ["job1", "lyric_accuracy", 5, "midi"]
            port.send(mido.Message("control_change", channel=CONTROL_CHANNEL, control=CC_RATE_DIMENSION, value=9))
            assert "not a rating dimension" in _midi_until(port, "/dr2/error")[1]
            port.send(mido.Message("note_on", channel=0, note=NOTE_RATE_FIRST, velocity=100))  # other channel: ignored
            time.sleep(0.2)
        finally:
            port.close()
    finally:
        c.close()
        app.close()
    stored = [(r["take"], r["stars"], r["dimension"], r["source"]) for r in _lines(project)]
    assert stored == [("a", 4, OVERALL, "osc"), ("b", 2, "style_similarity", "osc"), ("job1", 5, "musicality", "osc"),
                      ("job1", 3, OVERALL, "midi"), ("job1", 5, "lyric_accuracy", "midi")]

    # a new bridge process reads the same store; its ratings add to it, superseding per source
    app = _bridge(engine)
    c = UdpClient(app.osc.udp_port)
    try:
        c.send("/dr2/session/open", str(project))
        c.until("/dr2/ack", "/dr2/session/open")
        c.send("/dr2/take/rate", "a", 1)
        c.until("/dr2/ack", "/dr2/take/rate")
    finally:
        c.close()
        app.close()
    store = RatingStore(project)
    assert len(store.history()) == 6 and [r.stars for r in store.history("a")] == [4, 1]
    assert store.current("a")["musicality"] == 1.0  # osc's later overall supersedes its earlier one
    # osc rated only musicality; midi overall 3 then lyric accuracy 5: each source counts where it said something
    assert store.current("job1") == {"musicality": (5 + 3) / 2, "lyric_accuracy": 5.0,
                                     "style_similarity": 3.0, "audio_quality": 3.0}
