"""Tempo conform: a take made at one tempo measures the project's tempo afterwards, by the project's own
tempo estimator (:func:`dr2studio.audio.features.estimate_tempo`), its length scaled by the tempo ratio
and its first downbeat on a bar line; through every door (API, CLI, OSC) and on real recordings."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from dr2studio.audio.conform import (
    ConformError,
    ConformPlan,
    analyse_beats,
    apply_conform,
    conform_wanted,
    fold_tempo,
    plan_conform,
)
from dr2studio.audio.features import estimate_tempo
from dr2studio.requests import RequestError, TakeRequest
from real_material import midi_corpus, render_midi, shared_real

RATE = 22050


@pytest.fixture(scope="module")
def take_120() -> tuple[torch.Tensor, int]:
    """A procedural song made at exactly 120 bpm (12 s, mono): its tempo is known, not measured."""
    from dr2studio.lab.synth.arrangement import plan_song
    from dr2studio.lab.synth.song import song_from_plan

    seed = next(s for s in range(1000) if plan_song(s, 12.0).tempo == 120)
    song = song_from_plan(plan_song(seed, 12.0), RATE)
    return torch.from_numpy(song.audio)[None], RATE


def _length_ratio(out: torch.Tensor, audio: torch.Tensor, plan: ConformPlan, rate: int) -> float:
    stretched = out.shape[-1] - round(plan.offset_seconds * rate)  # the start shift is not part of the stretch
    return stretched / audio.shape[-1]


def test_a_120_bpm_take_conformed_to_96_measures_96(take_120: tuple[torch.Tensor, int]) -> None:
    audio, rate = take_120
    assert estimate_tempo(audio.numpy(), rate) == pytest.approx(120, abs=1)
    plan = plan_conform(audio, rate, 96.0, position_seconds=0.0)
    assert plan.detected_bpm == pytest.approx(120, abs=1)
    assert plan.stretch_ratio == pytest.approx(120 / 96, rel=0.01)
    out = apply_conform(audio, rate, plan)
    assert estimate_tempo(out.numpy(), rate) == pytest.approx(96, abs=1)
    assert _length_ratio(out, audio, plan, rate) == pytest.approx(120 / 96, rel=0.005)
    bar = 4 * 60 / 96
    assert abs(plan.offset_seconds) <= bar / 2 + 1e-6
    assert (plan.first_downbeat_seconds / bar) == pytest.approx(round(plan.first_downbeat_seconds / bar), abs=1e-6)
    assert plan.key is not None and plan.key.split()[1] in ("major", "minor")


def test_downbeat_lands_on_a_bar_line_from_the_take_position(take_120: tuple[torch.Tensor, int]) -> None:
    audio, rate = take_120
    beats = analyse_beats(audio, rate)
    for position in (0.0, 3.3, 10.0):
        plan = plan_conform(audio, rate, 100.0, position_seconds=position, analysis=beats)
        bar = 4 * 60 / 100
        on_line = (position + plan.first_downbeat_seconds) / bar
        assert on_line == pytest.approx(round(on_line), abs=1e-6)
        assert plan.first_downbeat_seconds >= -1e-9  # never before the take's own start
        assert plan.first_downbeat_seconds == pytest.approx(beats.first_downbeat * plan.stretch_ratio
                                                            + plan.offset_seconds, abs=1e-6)


def test_a_rendered_real_midi_file_at_120_conforms_to_96(tmp_path: Path) -> None:
    source = next(p for p in midi_corpus() if p.name == "test06.mid")  # a 120 bpm folk melody (music21 corpus)
    wav = render_midi(source, tmp_path / "t.wav", 44100, seconds=16)
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.T.copy())
    plan = plan_conform(audio, rate, 96.0)
    out = apply_conform(audio, rate, plan)
    assert out.shape[0] == 2
    assert plan.detected_bpm == pytest.approx(120, abs=1)
    assert estimate_tempo(out.numpy(), rate) == pytest.approx(96, abs=1)
    assert _length_ratio(out, audio, plan, rate) == pytest.approx(120 / 96, rel=0.005)


def test_the_real_recording_is_conformed() -> None:
    data, rate = sf.read(shared_real("2.wav"), dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.T.copy())
    before = estimate_tempo(audio.numpy(), rate)
    plan = plan_conform(audio, rate, 120.0, position_seconds=2.0)
    out = apply_conform(audio, rate, plan)
    after = estimate_tempo(out.numpy(), rate)
    assert abs(plan.stretch_ratio - 1) > 0.05, "the recording is not at 120 bpm: a real stretch is tested"
    assert after == pytest.approx(120, abs=1.5), f"{before:.2f} bpm -> {after:.2f} bpm"
    assert _length_ratio(out, audio, plan, rate) == pytest.approx(plan.stretch_ratio, rel=0.005)


def test_a_stated_source_tempo_picks_the_octave_of_the_real_recording() -> None:
    """2.wav's beat reads 67.95 bpm (librosa) as well as ~136 (our estimator): folded towards 96 it was taken as
    67.95 and sped up; the producer's stated 136 keeps that octave and slows it down instead."""
    data, rate = sf.read(shared_real("2.wav"), dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.T.copy())
    nearest = plan_conform(audio, rate, 96.0)
    stated = plan_conform(audio, rate, 96.0, source_bpm=136.0)
    assert nearest.stretch_ratio < 0.75, "the octave tie this test is about: without a stated tempo the song is sped up"
    assert stated.source_bpm == 136.0 and stated.detected_bpm == pytest.approx(136, rel=0.01)
    assert stated.stretch_ratio == pytest.approx(2 * nearest.stretch_ratio, rel=1e-3)  # the reading, an octave up
    out = apply_conform(audio, rate, stated)
    assert _length_ratio(out, audio, stated, rate) == pytest.approx(stated.stretch_ratio, rel=0.005)
    assert stated.manifest()["source_bpm"] == 136.0
    with pytest.raises(ConformError, match="stated source tempo 100 bpm does not match"):
        plan_conform(audio, rate, 96.0, source_bpm=100.0)


def test_a_stated_source_tempo_is_checked_through_every_door(take_120, tmp_path: Path) -> None:
    from dr2studio.cli import main

    with pytest.raises(RequestError, match="source_bpm must be a number in"):
        TakeRequest(conform_bpm=96, source_bpm=0).validate()
    with pytest.raises(RequestError, match="source_bpm is given but conform is off"):
        TakeRequest(conform=False, source_bpm=120).validate()
    audio, rate = take_120
    plan = plan_conform(audio, rate, 96.0, source_bpm=60.0)  # the 120 bpm song stated in half time: its octave kept
    assert plan.detected_bpm == pytest.approx(60, abs=0.5) and plan.stretch_ratio == pytest.approx(60 / 96, rel=0.01)
    song = _song_file(take_120, tmp_path / "take.wav")
    project = tmp_path / "proj"
    for args, message in ((["--conform-bpm", "96", "--source-bpm", "100"], "stated source tempo 100 bpm does not match"),
                          (["--no-conform", "--source-bpm", "120"], "source_bpm is given but conform is off")):
        result = CliRunner().invoke(main, ["stems", str(song), "--project", str(project), *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert not (project / "dr2studio.json").exists() and not list(project.rglob("*.wav"))
    result = CliRunner().invoke(main, ["stems", str(song), "--project", str(project), "--conform-bpm", "96",
                                       "--source-bpm", "120", "--json", "-q"])
    assert result.exit_code == 0, result.output
    conform = json.loads((project / "dr2studio.json").read_text())["takes"][-1]["conform"]
    assert conform["source_bpm"] == 120 and conform["stretch_ratio"] == pytest.approx(120 / 96, rel=0.01)


def test_octaves_fold_towards_the_target() -> None:
    assert fold_tempo(60, 96) == 120 and fold_tempo(68, 96) == 68 and fold_tempo(240, 96) == 120
    for bpm in (40.0, 61.0, 97.0, 180.0, 300.0):
        folded = fold_tempo(bpm, 96)
        assert 96 / math.sqrt(2) <= folded < 96 * math.sqrt(2)
        assert math.log2(folded / bpm) == pytest.approx(round(math.log2(folded / bpm)))


def test_bad_input_is_refused_with_a_clear_error(take_120: tuple[torch.Tensor, int]) -> None:
    audio, rate = take_120
    for bad in (0, -5, float("nan"), 5000):
        with pytest.raises(RequestError, match="conform_bpm must be a number in"):
            plan_conform(audio, rate, bad)
    with pytest.raises(RequestError, match="conform_bpm"):
        TakeRequest(conform_bpm=0).validate()
    with pytest.raises(ConformError, match="no steady beat"):
        plan_conform(torch.zeros(1, rate * 4), rate, 96)
    with pytest.raises(ConformError, match="at least 2 s"):
        plan_conform(audio[:, : rate // 2], rate, 96)
    bad_audio = audio.clone()
    bad_audio[0, 100] = float("nan")
    with pytest.raises(ConformError, match="NaN"):
        plan_conform(bad_audio, rate, 96)
    with pytest.raises(ConformError, match="position"):
        plan_conform(audio, rate, 96, position_seconds=-1)


def test_default_by_model() -> None:
    assert conform_wanted(None, 96.0, {}) is True  # a target is known, no clock: on
    assert conform_wanted(None, None, {}) is False  # no target: nothing to conform to
    assert conform_wanted(None, 96.0, {"tempo_clock_bpm": 96.0}) is False  # the clock played it on the grid
    assert conform_wanted(None, 96.0, {"tempo_clock_bpm": 120.0}) is True  # on a clock, at another tempo
    assert conform_wanted(False, 96.0, {}) is False and conform_wanted(True, 96.0, {"tempo_clock_bpm": 96.0}) is True
    with pytest.raises(ConformError, match="needs a target tempo"):
        conform_wanted(True, None, {})


def _song_file(take: tuple[torch.Tensor, int], path: Path) -> Path:
    audio, rate = take
    sf.write(path, audio[0].numpy(), rate, subtype="PCM_16")
    return path


def test_cli_conform_and_midi_write_wavs_mids_and_the_manifest(take_120, tmp_path: Path) -> None:
    from dr2studio.cli import main

    if importlib.util.find_spec("basic_pitch") is None:
        pytest.skip("basic-pitch is not installed (scripts/setup.sh installs it with --no-deps)")

    song = _song_file(take_120, tmp_path / "take.wav")
    project = tmp_path / "proj"
    result = CliRunner().invoke(main, ["stems", str(song), "--project", str(project), "--conform-bpm", "96",
                                       "--midi", "--position", "4", "--sample-rate", "44100", "--json", "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((project / "dr2studio.json").read_text())
    entry = manifest["takes"][-1]
    conform = entry["conform"]
    assert set(conform) == {"detected_bpm", "target_bpm", "stretch_ratio", "key", "first_downbeat_seconds",
                            "offset_seconds", "source_bpm"}
    assert conform["source_bpm"] is None
    assert conform["target_bpm"] == 96 and conform["detected_bpm"] == pytest.approx(120, abs=1)
    wav = project / entry["files"]["mix"]
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == 44100 and estimate_tempo(data.T, rate) == pytest.approx(96, abs=1)
    assert entry["duration_seconds"] == pytest.approx(12 * 120 / 96 + conform["offset_seconds"], abs=0.02)
    bar = 4 * 60 / 96
    assert ((4 + conform["first_downbeat_seconds"]) / bar) % 1 == pytest.approx(0, abs=1e-3)
    assert set(entry["midi"]) == {"mix"}
    mid = project / entry["midi"]["mix"]
    assert mid.parent == wav.parent and mid.name == "mix.mid"
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(mid))
    assert midi.get_tempo_changes()[1][0] == pytest.approx(96)
    assert len(midi.instruments[0].notes) > 10
    assert not list(project.rglob("*.tmp*"))


def test_cli_refuses_tempo_zero_and_an_unreadable_file_writing_nothing(take_120, tmp_path: Path) -> None:
    from dr2studio.cli import main

    song = _song_file(take_120, tmp_path / "take.wav")
    project = tmp_path / "proj"
    result = CliRunner().invoke(main, ["stems", str(song), "--project", str(project), "--conform-bpm", "0"])
    assert result.exit_code != 0 and "conform_bpm must be a number in [20, 999] bpm" in result.output
    assert not project.exists()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    result = CliRunner().invoke(main, ["stems", str(broken), "--project", str(project), "--conform-bpm", "96",
                                       "--midi"])
    assert result.exit_code != 0 and "broken.wav" in result.output
    assert not (project / "dr2studio.json").exists() and not list(project.rglob("*.wav"))
    result = CliRunner().invoke(main, ["stems", str(song), "--project", str(project), "--conform"])
    assert result.exit_code != 0 and "needs a target tempo" in result.output
    assert not (project / "dr2studio.json").exists()


def test_a_beatless_take_fails_when_conform_is_asked_and_is_kept_whole_when_only_default(tmp_path: Path) -> None:
    from dr2studio.audio.stems import export_stems
    from dr2studio.song import Song

    t = np.arange(RATE * 4) / RATE
    drone = Song(audio=torch.from_numpy((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))[None],
                 sample_rate=RATE)
    project = tmp_path / "p"
    with pytest.raises(ConformError, match="no steady beat"):
        export_stems(drone, project, options=TakeRequest(conform=True, conform_bpm=96))
    assert not (project / "dr2studio.json").exists()
    entry = export_stems(drone, project, options=TakeRequest(conform_bpm=96))  # default: on, but skipped
    assert entry["conform"] is None and entry["duration_seconds"] == pytest.approx(4.0, abs=1e-3)


def test_osc_routes_set_the_take_options_over_udp(tmp_path: Path) -> None:
    from dr2studio.bridge.core import Bridge
    from dr2studio.bridge.osc import OscServer
    from daw_helpers import UdpClient

    bridge = Bridge(engine=None)
    server = OscServer(bridge, port=0, tcp=False).start()
    client = UdpClient(server.udp_port)
    try:
        client.send("/dr2/take/conform", 1, 96.0)
        assert client.reply("/dr2/ack", "/dr2/error")[0] == "/dr2/error"  # no session yet
        bridge.open_session(str(tmp_path), "generic")
        client.send("/dr2/take/conform", 1, 96.0)
        assert client.reply("/dr2/ack", "/dr2/error") == ("/dr2/ack", ["/dr2/take/conform"])
        client.send("/dr2/take/midi", 1)
        assert client.reply("/dr2/ack", "/dr2/error") == ("/dr2/ack", ["/dr2/take/midi"])
        assert bridge.take_options == TakeRequest(conform=True, conform_bpm=96.0, midi=True)
        client.send("/dr2/take/conform", 1, 0.0)
        address, args = client.reply("/dr2/ack", "/dr2/error")
        assert address == "/dr2/error" and "conform_bpm must be a number in [20, 999] bpm" in args[1]
        client.send("/dr2/take/conform", 2)
        assert client.reply("/dr2/ack", "/dr2/error")[0] == "/dr2/error"
        assert bridge.take_options.conform_bpm == 96.0  # the refused values changed nothing
        client.send("/dr2/take/conform", -1)
        assert client.reply("/dr2/ack", "/dr2/error")[0] == "/dr2/ack"
        assert bridge.take_options == TakeRequest(conform=None, conform_bpm=None, midi=True)
        client.send("/dr2/take/conform", 1, 0.0, 136.0)  # the session's tempo, the takes' own tempo stated
        assert client.reply("/dr2/ack", "/dr2/error") == ("/dr2/ack", ["/dr2/take/conform"])
        assert bridge.take_options == TakeRequest(conform=True, conform_bpm=None, source_bpm=136.0, midi=True)
        client.send("/dr2/take/conform", 0, 0.0, 136.0)
        address, args = client.reply("/dr2/ack", "/dr2/error")
        assert address == "/dr2/error" and "source_bpm is given but conform is off" in args[1]
        assert bridge.take_options.source_bpm == 136.0
    finally:
        client.close()
        server.close()
        bridge.close()


def test_studio_door_refuses_alike_and_conforms(take_120, tmp_path: Path) -> None:
    from dr2studio.song import Song
    from dr2studio.studio import Studio

    audio, rate = take_120
    song = Song(audio=audio, sample_rate=rate, settings={"tempo_clock_bpm": 96.0})
    with pytest.raises(RequestError, match=r"conform_bpm must be a number in \[20, 999\] bpm, got 0"):
        Studio.export_stems(song, tmp_path / "p", options=TakeRequest(conform_bpm=0))
    assert not (tmp_path / "p").exists()
    # the model's tempo clock played it at 96: not conformed by default, conformed when forced
    entry = Studio.export_stems(song, tmp_path / "p", options=TakeRequest(conform_bpm=96))
    assert entry["conform"] is None and entry["bpm"] == 96
    entry = Studio.export_stems(song, tmp_path / "p", options=TakeRequest(conform=True, conform_bpm=96))
    assert entry["conform"]["stretch_ratio"] == pytest.approx(1.25, rel=0.01)


def test_a_bridge_take_follows_the_session_tempo_by_default(take_120, tmp_path: Path) -> None:
    """The bridge's delivery: conform on by default to the session's tempo and meter, MIDI when asked."""
    if importlib.util.find_spec("basic_pitch") is None:
        pytest.skip("basic-pitch is not installed (scripts/setup.sh installs it with --no-deps)")
    from dr2studio.bridge.deliver import deliver_take
    from dr2studio.bridge.session import Session
    from dr2studio.song import Song

    audio, rate = take_120
    session = Session(project=tmp_path, daw="generic")
    session.set_tempo(96)
    session.set_timesig(3, 4)
    song = Song(audio=audio, sample_rate=rate)
    written = deliver_take(session, "job1", (audio, rate), position_beats=6.0, position_seconds=session.seconds(6.0),
                           request=None, song=song, take_options=TakeRequest(midi=True))
    entry = json.loads((tmp_path / "dr2studio.json").read_text())["takes"][-1]
    conform = entry["conform"]
    assert conform["target_bpm"] == 96 and conform["detected_bpm"] == pytest.approx(120, abs=1)
    bar = 3 * 60 / 96  # the session's 3/4
    assert ((session.seconds(6.0) + conform["first_downbeat_seconds"]) / bar) % 1 == pytest.approx(0, abs=1e-3)
    assert set(entry["midi"]) == {"mix"} and (tmp_path / entry["midi"]["mix"]).is_file()
    data, wav_rate = sf.read(written[0].path, dtype="float32", always_2d=True)
    assert estimate_tempo(data.T, wav_rate) == pytest.approx(96, abs=1)
    # the model's tempo clock played it at the session tempo: not conformed by default
    song.settings["tempo_clock_bpm"] = 96.0
    deliver_take(session, "job2", (audio, rate), position_beats=0.0, position_seconds=0.0, request=None, song=song)
    assert json.loads((tmp_path / "dr2studio.json").read_text())["takes"][-1]["conform"] is None


def test_the_studio_records_when_a_tempo_clock_played_the_song(tmp_path: Path) -> None:
    """What the default reads: a song a model's tempo clock played carries ``tempo_clock_bpm``; a model
    without a clock (the released architecture) leaves it out, whatever tempo the style states."""
    from dr2studio.checkpoints import load_dit, save_dit
    from dr2studio.lab.testing import build_tiny_model
    from dr2studio.models.dit import DiT, DiTConfig
    from dr2studio.studio import Studio

    path = build_tiny_model(tmp_path / "m", style_encoder=True)
    lyrics, kw = "[verse]\nhello world\n", dict(steps=2, seed=7)
    plain = Studio.load(path).generate(lyrics, "pop, 120 bpm, piano", 1.0, **kw)
    assert plain.settings["tempo_bpm"] == 120.0 and "tempo_clock_bpm" not in plain.settings
    assert conform_wanted(None, 120.0, plain.settings) is True
    dit = load_dit(path, device="cpu", dtype=torch.float32)
    clocked = DiT(DiTConfig.from_dict(dict(dit.config.to_dict(), tempo_clock=[4.0, 1.0])))
    clocked.load_state_dict(dit.state_dict(), strict=False)
    save_dit(clocked, path)
    studio = Studio.load(path)
    song = studio.generate(lyrics, "pop, 120 bpm, piano", 1.0, **kw)
    assert song.settings["tempo_clock_bpm"] == 120.0
    assert conform_wanted(None, 120.0, song.settings) is False and conform_wanted(None, 96.0, song.settings) is True
    assert studio.extend(song, "[chorus]\nla la\n", seconds=1.0, **kw).settings["tempo_clock_bpm"] == 120.0
