"""TempoMap: beats, bars and seconds across tempo and meter changes, and a session that keeps its map."""
from __future__ import annotations

import pytest

from dr2studio.bridge.persist import restore_session, save_session
from dr2studio.bridge.session import Session
from dr2studio.tempomap import TempoMap


def test_conversions_follow_every_change():
    # 8 beats at 120 (4 s), then 90 bpm; 4/4 for two bars, then 6/8 (3 beats a bar)
    tm = TempoMap.from_changes([(0, 120), (8, 90), (8, 90)], [(0, 4, 4), (8, 6, 8)])
    assert tm.tempos == ((0.0, 120.0), (8.0, 90.0)) and tm.meters == ((0.0, 4, 4), (8.0, 6, 8))
    assert tm.seconds_at(8) == pytest.approx(4.0) and tm.seconds_at(17) == pytest.approx(4.0 + 6.0)
    for beat in (0.0, 3.5, 8.0, 11.25, 40.0):
        assert tm.beat_at(tm.seconds_at(beat)) == pytest.approx(beat)
    assert tm.beat_of_bar(3) == 8.0 and tm.beat_of_bar(4) == 11.0 and tm.bar_at(12.5) == pytest.approx(4.5)
    assert tm.bar_to_seconds(4) == pytest.approx(4.0 + 2.0)  # bar 4 = beat 11 = 4 s + 3 beats at 90
    assert tm.seconds_to_bar(6.0) == pytest.approx(4.0)
    assert tm.bar_start(12.9) == 11.0 and tm.bpm_at(7.99) == 120.0 and tm.meter_at(9) == (6, 8)
    assert tm.main_bpm(40) == 90.0  # 32 beats at 90 outlast 8 at 120
    # a meter change in the middle of a bar leaves a short bar before it
    short = TempoMap.from_changes([], [(0, 3, 4), (5, 4, 4)])
    assert short.bar_at(5) == 3.0 and short.beat_of_bar(2) == 3.0
    assert TempoMap.constant(100).seconds_at(10) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        TempoMap.from_changes([(0, 0.0)])


def test_session_places_beats_through_its_map_and_keeps_it(tmp_path):
    session = Session(project=tmp_path)
    session.set_tempo(120)
    session.tempo_map = TempoMap.from_changes([(0, 120), (8, 60)])
    assert session.seconds_between(4, 12) == pytest.approx(2.0 + 4.0)
    assert session.beat_after(4, 6.0) == pytest.approx(12.0)
    save_session(session, song=False)
    again = Session(project=tmp_path)
    assert restore_session(again) and again.tempo_map == session.tempo_map
    assert again.seconds(12) == pytest.approx(8.0)
    again.set_timesig(3, 4)  # the meter changes, the tempo changes stay
    assert again.tempo_map.meters == ((0.0, 3, 4),) and again.seconds(12) == pytest.approx(8.0)
    again.set_tempo(100)  # a tempo set by hand holds everywhere
    assert again.tempo_map is None and again.seconds(10) == pytest.approx(6.0)


def test_infill_bars_follow_a_tempo_map_file(tmp_path) -> None:
    """`dr2studio infill --start-bar/--end-bar --tempo-map tempo.mid`: bars through the file's tempo changes."""
    import click
    import mido
    import pytest

    from dr2studio.commands.infill import _range

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120), time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(60), time=8 * 480))  # bar 3 at 4 s
    track.append(mido.MetaMessage("end_of_track", time=16 * 480))
    mid.tracks.append(track)
    path = tmp_path / "tempo.mid"
    mid.save(path)
    start, end = _range(None, None, 3, 4, None, 4, path)
    assert start == pytest.approx(4.0) and end == pytest.approx(8.0)  # one average tempo would say 5.0 and 7.5
    assert _range(None, None, 3, 4, 120, 4) == pytest.approx((4.0, 6.0))
    with pytest.raises(click.UsageError):
        _range(None, None, 3, 4, 120, 4, path)  # --bpm and --tempo-map together
    with pytest.raises(click.ClickException, match="not a readable MIDI file"):
        (tmp_path / "bad.mid").write_bytes(b"not midi")
        _range(None, None, 3, 4, None, 4, tmp_path / "bad.mid")
