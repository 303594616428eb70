"""Procedural songs: determinism, structure, lyrics that the melody follows, style text, the dataset script."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dr2studio.config import ConfigError
from dr2studio.lab.synth import SECTION_KINDS, SynthConfig, generate_song, key_name, parse_key, parse_style
from dr2studio.lab.synth.arrangement import plan_song
from dr2studio.lab.synth.song import song_from_plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def song():
    return generate_song(11, duration=24.0)


def test_same_seed_same_song_and_different_seeds_differ(song):
    again = generate_song(11, duration=24.0)
    assert np.array_equal(song.audio, again.audio)
    assert (song.lyrics, song.style, song.sections) == (again.lyrics, again.style, again.sections)
    other = generate_song(12, duration=24.0)
    assert other.lyrics != song.lyrics
    assert not np.array_equal(other.audio[: len(song.audio)], song.audio[: len(other.audio)])


def test_audio_is_a_finite_mono_signal_of_the_asked_length(song):
    assert song.audio.dtype == np.float32 and song.audio.ndim == 1
    assert song.sample_rate == 24000 and song.duration == pytest.approx(24.0, abs=1e-3)
    assert np.all(np.isfinite(song.audio))
    peak, rms = np.abs(song.audio).max(), np.sqrt(np.mean(song.audio.astype(np.float64) ** 2))
    assert peak <= 0.96 and 0.05 < rms < 0.2


def test_length_is_drawn_from_the_configured_range_at_the_configured_rate():
    cfg = SynthConfig(min_seconds=10.0, max_seconds=14.0, sample_rate=16000)
    lengths = [generate_song(s, cfg).duration for s in range(4)]
    assert all(10.0 <= d <= 14.0 for d in lengths) and len(set(lengths)) > 1
    assert generate_song(0, cfg).sample_rate == 16000


def test_sections_tile_the_song_and_change_energy(song):
    secs = song.sections
    assert secs[0].start_s == 0.0 and secs[-1].end_s == pytest.approx(song.duration, abs=1e-3)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(secs, secs[1:]))
    kinds = [s.kind for s in secs]
    assert set(kinds) <= set(SECTION_KINDS) and {"verse", "chorus"} <= set(kinds)
    by_kind = {s.kind: s.energy for s in secs}
    assert by_kind["chorus"] > by_kind["verse"] > by_kind.get("intro", 0.0)
    # the audio follows the plan: the chorus is louder than the intro and the outro
    sr = song.sample_rate

    def level(s):
        seg = song.audio[int(s.start_s * sr) : int(s.end_s * sr)].astype(np.float64)
        return np.sqrt(np.mean(seg**2))

    chorus = max(level(s) for s in secs if s.kind == "chorus")
    quiet = [level(s) for s in secs if s.kind in ("intro", "outro")]
    assert quiet and chorus > 2 * max(quiet)


def test_harmony_changes_between_sections():
    plan = plan_song(3, 30.0)
    chords_in = {}
    for start, chord in plan.chords:
        kind = next(s.kind for s in plan.sections if s.start_s <= start + 1e-6 < s.end_s)
        chords_in.setdefault(kind, []).append(chord)
    assert chords_in["verse"] != chords_in["chorus"][: len(chords_in["verse"])]


def test_lrc_has_exact_section_tags_and_timed_lines(song):
    lines = song.lyrics.splitlines()
    assert lines[0] == "[start]" and lines[-1] == "[end]"
    tags = [ln[1:-1] for ln in lines[1:-1] if not ln[1].isdigit()]
    assert tags == [s.kind for s in song.sections]
    times = []
    current = None
    for ln in lines[1:-1]:
        if not ln[1].isdigit():
            current = next(s for s in song.sections if s.kind == ln[1:-1] and s.start_s >= (times[-1] if times else -1) - 1e-6)
            continue
        mm, ss = ln[1:9].split(":")
        t = int(mm) * 60 + float(ss)
        assert current.start_s - 0.01 <= t < current.end_s, ln
        assert ln[10:].strip() and ln[10:].replace(" ", "").isalpha()
        times.append(t)
    assert times == sorted(times) and len(times) >= 4


def test_lrc_parses_with_the_lyrics_front_end(song):
    from dr2studio.lyrics import parse_lyrics

    doc = parse_lyrics(song.lyrics)
    kinds = [s.kind for s in doc.sections if s.kind not in ("start", "end")]
    assert kinds == [s.kind for s in song.sections]
    assert sum(len(s.lines) for s in doc.sections) == sum(1 for ln in song.lyrics.splitlines() if ln[1].isdigit())


def test_melody_sings_one_note_per_syllable_starting_at_the_line_time():
    plan = plan_song(5, 30.0)
    assert sum(len(sl.line.syllables) for sl in plan.lines) == len(plan.melody)
    i = 0
    for sl in plan.lines:
        notes = plan.melody[i : i + len(sl.line.syllables)]
        assert notes[0].start == pytest.approx(sl.start)
        assert all(a.start + a.dur <= b.start + 1e-9 for a, b in zip(notes, notes[1:]))
        assert [n.vowel for n in notes] == [s.vowel for s in sl.line.syllables]
        i += len(notes)
    # repeated choruses sing the same words to the same tune
    chorus_ids = [k for k, s in enumerate(plan.sections) if s.kind == "chorus"]
    if len(chorus_ids) > 1:
        first = [sl.line.text for sl in plan.lines if sl.section == chorus_ids[0]]
        second = [sl.line.text for sl in plan.lines if sl.section == chorus_ids[1]]
        assert first[: len(second)] == second[: len(first)]


def test_the_voice_is_audible():
    """Muting the lead line changes the audio markedly in sung sections."""
    plan = plan_song(8, 16.0)
    with_voice = song_from_plan(plan, 16000).audio
    plan.melody = []
    without = song_from_plan(plan, 16000).audio
    diff = np.sqrt(np.mean((with_voice - without).astype(np.float64) ** 2))
    assert diff > 0.2 * np.sqrt(np.mean(with_voice.astype(np.float64) ** 2))


def test_style_text_names_the_choices(song):
    facts = parse_style(song.style)
    assert facts.tempo == song.tempo
    assert (facts.tonic_pc, facts.mode) == parse_key(f"{song.key} {song.mode}")
    assert song.style.startswith(song.genre + ", ")
    assert all(instr in song.style for instr in song.instruments) and "drums" in song.instruments
    assert f"{int(song.tempo)} bpm" in song.style


def test_key_names_round_trip():
    for pc in range(12):
        for mode in ("major", "minor"):
            assert parse_key(f"{key_name(pc, mode)} {mode}") == (pc, mode)
    assert parse_key("Bbm") == (10, "minor") and parse_key("F#") == (6, "major")
    with pytest.raises(ValueError, match="cannot parse key"):
        parse_key("H major")


def test_a_30_second_song_takes_well_under_a_second():
    generate_song(0, duration=12.0)  # warm up
    t0 = time.process_time()  # CPU time: the test machine is shared, wall time would measure the others
    generate_song(21, duration=30.0)
    assert time.process_time() - t0 < 1.0


def test_bad_config_is_refused_with_the_value():
    with pytest.raises(ConfigError, match="min_seconds"):
        generate_song(0, SynthConfig(min_seconds=30.0, max_seconds=20.0))
    with pytest.raises(ConfigError, match="jazz"):
        generate_song(0, SynthConfig(genres=["jazz"]))
    with pytest.raises(ValueError, match="duration"):
        generate_song(0, duration=1.0)
    cfg = SynthConfig.from_dict(SynthConfig(min_seconds=12.0, genres=["pop"]).to_dict())
    assert cfg.min_seconds == 12.0 and cfg.genres == ["pop"]


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "training" / "synth_songs.py"), *args],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)


def test_dataset_script_writes_a_manifest_that_prepare_data_reads(tmp_path):
    out = tmp_path / "data"
    res = _run_script("--out", str(out), "--count", "2", "--seed", "40", "--min-seconds", "9", "--max-seconds", "10",
                      "--sample-rate", "16000")
    assert res.returncode == 0, res.stderr
    manifest = out / "manifest.jsonl"
    assert res.stdout.strip() == str(manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["song-0000040", "song-0000041"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.jsonl"] + [f"song-00000{s}.{e}" for s in (40, 41) for e in ("wav", "lrc")]
    )
    for r in rows:
        audio, sr = sf.read(str(out / r["audio"]))
        assert sr == 16000 and len(audio) / sr == pytest.approx(r["duration"], abs=1e-3) and 9 <= r["duration"] <= 10
        assert (out / r["lyrics_path"]).read_text().startswith("[start]\n")
        assert r["language"] == "en" and parse_style(r["style"]).tempo == r["tempo"]
        assert {"kind", "start_s", "end_s", "energy"} <= set(r["sections"][0])
    expected = generate_song(40, SynthConfig(min_seconds=9, max_seconds=10, sample_rate=16000))
    assert rows[0]["style"] == expected.style and (out / "song-0000040.lrc").read_text() == expected.lyrics

    from dr2studio.data.manifest import read_manifest

    parsed = read_manifest(manifest)
    assert parsed[0].lyrics == expected.lyrics and Path(parsed[0].audio) == out / "song-0000040.wav"


def test_dataset_script_refuses_bad_arguments(tmp_path):
    res = _run_script("--out", str(tmp_path / "x"), "--count", "0")
    assert res.returncode == 2 and "--count must be at least 1" in res.stderr
    res = _run_script("--out", str(tmp_path / "x"), "--count", "1", "--min-seconds", "50", "--max-seconds", "20")
    assert res.returncode == 2 and "min_seconds" in res.stderr
    assert not (tmp_path / "x" / "manifest.jsonl").exists()
