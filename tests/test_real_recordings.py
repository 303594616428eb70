"""A producer's recordings through extend and infill, on the shipped demo model (issue 16).

Real material: the DiffRhythm 2 authors' 44.1 kHz 16-bit stereo recording and an orchestral 48 kHz
rendering (FluidSynth, GM soundfont) of a real MIDI file from music21's corpus, stored as 24-bit.
Each edit's output file is read back and checked against the input file as read: same rate,
channels and bit depth, every sample outside the edit bit-identical, and the new audio at the level
of the audio it continues (3 s RMS either side of the crossfade within 3 dB). The length promises
(``generate --duration``, ``extend --seconds``) are checked on the demo model, whose songs end by
themselves after about 20 s.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from real_material import midi_corpus, render_midi, shared_real

STYLE = "pop, 120 bpm, A minor, piano, drums"
LYRICS = "[verse]\nCity lights are calling me tonight\nEvery step I take feels right\n"
FAST = ["--steps", "2", "--cfg", "0", "-q", "--json"]  # one Euler step, no guidance: the tests check audio plumbing


def dr2studio(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command line, as a producer runs it (a fresh process: real stderr and exit code)."""
    env = {k: v for k, v in os.environ.items() if k != "DR2STUDIO_MODEL"}  # the shipped demo model
    exe = Path(sys.executable).parent / "dr2studio"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from dr2studio.cli import run; run()"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def rms_db(x: np.ndarray) -> float:
    return 20 * math.log10(float(np.sqrt(np.mean(np.square(x.astype(np.float64))))))


def read_int(path: Path) -> tuple[np.ndarray, int, str]:
    """Samples as the integers the file holds (``[N, C]``), its rate and subtype."""
    info = sf.info(str(path))
    dtype = "int16" if info.subtype == "PCM_16" else "int32"
    data, rate = sf.read(str(path), dtype=dtype, always_2d=True)
    return data, rate, info.subtype


def assert_level_continues(out: np.ndarray, rate: int, fade_start: int, fade_end: int) -> tuple[float, float]:
    """3 s RMS before the crossfade vs 3 s after it, within 3 dB."""
    w = 3 * rate
    before, after = rms_db(out[fade_start - w : fade_start]), rms_db(out[fade_end : fade_end + w])
    assert abs(after - before) <= 3.0, f"level jumps from {before:.1f} dBFS to {after:.1f} dBFS at the edit"
    return before, after


@pytest.fixture(scope="module")
def lyrics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lyrics") / "next.lrc"
    path.write_text(LYRICS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def take48(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 s of Mozart's K. 525 (music21's corpus MIDI) rendered at 48 kHz stereo, kept as 24-bit WAV."""
    corpus = midi_corpus()
    midi = next((m for m in corpus if m.name == "k525short.mid"), corpus[0])
    folder = tmp_path_factory.mktemp("take48")
    raw = render_midi(midi, folder / "raw.wav", 48000, seconds=15)
    data, rate = sf.read(str(raw), dtype="int32", always_2d=True)
    out = folder / "k525.wav"
    sf.write(str(out), data, rate, subtype="PCM_24")
    assert sf.info(str(out)).subtype == "PCM_24" and rate == 48000 and data.shape[1] == 2
    return out


@pytest.fixture(scope="module")
def studio():
    from dr2studio.studio import Studio

    return Studio.load()  # the shipped demo model


# -- extend ------------------------------------------------------------------------------------------

def test_cli_extend_44k_stereo_keeps_the_recording_and_adds_what_was_asked(tmp_path: Path, lyrics: Path) -> None:
    take = shared_real("2.wav")
    src, rate, subtype = read_int(take)
    assert (rate, src.shape[1], subtype) == (44100, 2, "PCM_16")
    out = tmp_path / "longer.wav"
    proc = dr2studio("extend", take, "--lyrics", lyrics, "--seconds", 4, "--style", STYLE, "--seed", 1, *FAST,
                     "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    got, got_rate, got_subtype = read_int(out)
    assert (got_rate, got.shape[1], got_subtype) == (44100, 2, "PCM_16")  # not the model's 8 kHz mono
    assert res["sample_rate"] == 44100 and res["channels"] == 2
    assert got.shape[0] == src.shape[0] + 4 * 44100  # exactly the seconds asked for
    assert res["added_seconds"] == 4.0 and res["length"]["ended_early"] is False and res["length"]["reason"] is None
    splice = round(res["splice"] * rate)
    assert 0 < splice < src.shape[0]
    assert np.array_equal(got[:splice], src[:splice])  # the producer's samples, bit for bit
    assert not np.array_equal(got[splice : src.shape[0]], src[splice:])  # the edit did happen
    assert_level_continues(got, rate, splice, splice + round(res["crossfade"] * rate))
    # the next edit continues from the sidecar's latents although the take stays at 44.1 kHz
    again = tmp_path / "longer2.wav"
    proc = dr2studio("extend", out, "--lyrics", lyrics, "--seconds", 2, "--seed", 2, *FAST, "-o", again, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res2 = json.loads(proc.stdout)
    assert res2["latents_from"]["method"] == "sidecar"
    got2, rate2, subtype2 = read_int(again)
    assert (rate2, got2.shape[1], subtype2, got2.shape[0]) == (44100, 2, "PCM_16", got.shape[0] + 2 * 44100)
    splice2 = round(res2["splice"] * rate)
    assert np.array_equal(got2[:splice2], got[:splice2])


def test_studio_extend_48k_24bit_keeps_the_recording(studio, take48: Path, tmp_path: Path) -> None:
    from dr2studio.song import Song

    src, rate, _ = read_int(take48)
    song = Song.load(take48)
    longer = studio.extend(song, LYRICS, seconds=3, style=STYLE, steps=2, cfg_strength=0.0, seed=3)
    edit = longer.settings["edits"][-1]
    assert longer.sample_rate == 48000 and longer.channels == 2 and edit["sample_rate"] == 48000
    assert longer.settings["length"] == edit["length"] and edit["length"]["delivered"] == 3.0
    out = longer.save(tmp_path / "k525_longer.wav")
    got, got_rate, subtype = read_int(out)
    assert (got_rate, got.shape[1], subtype) == (48000, 2, "PCM_24")
    assert got.shape[0] == src.shape[0] + 3 * 48000
    splice = round(edit["splice"] * rate)
    assert np.array_equal(got[:splice], src[:splice])
    assert_level_continues(got, rate, splice, splice + round(edit["crossfade"] * rate))
    assert edit["level_match_db"] is not None
    # the saved take (still 48 kHz) continues from its sidecar's latents, not a re-encoding
    again = studio.extend(Song.load(out), LYRICS, seconds=1, steps=2, cfg_strength=0.0, seed=4)
    assert again.settings["edits"][-1]["latents_from"]["method"] == "sidecar"
    assert again.sample_rate == 48000 and again.audio.shape[1] == got.shape[0] + 48000


def test_extend_streams_what_it_returns_at_the_producers_rate(studio) -> None:
    """The engine/bridge path: streamed chunks from the splice point equal the returned song, at 44.1 kHz."""
    import torch

    from dr2studio.song import Song

    song = Song.load(shared_real("2.wav"))
    chunks: list[torch.Tensor] = []
    splice: list[int] = []
    longer = studio.extend(song, LYRICS, seconds=4, style=STYLE, steps=2, cfg_strength=0.0, seed=5,
                           on_audio=chunks.append, on_splice=splice.append)
    assert len(splice) == 1 and len(chunks) > 1
    assert torch.equal(torch.cat(chunks, dim=1), longer.audio[:, splice[0] :])
    assert torch.equal(longer.audio[:, : splice[0]], song.audio[:, : splice[0]])


# -- infill ------------------------------------------------------------------------------------------

def test_cli_infill_48k_keeps_everything_outside_the_range(tmp_path: Path, lyrics: Path, take48: Path) -> None:
    src, rate, subtype = read_int(take48)
    out = tmp_path / "fixed.wav"
    proc = dr2studio("infill", take48, "--start", 5, "--end", 10, "--lyrics", lyrics, "--style", STYLE,
                     "--seed", 4, *FAST, "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    got, got_rate, got_subtype = read_int(out)
    assert (got_rate, got.shape, got_subtype) == (48000, src.shape, "PCM_24")
    fade_in, fade_out = round(res["crossfade_in"] * rate), round(res["crossfade_out"] * rate)
    st, et = 5 * rate, 10 * rate
    assert np.array_equal(got[: st - fade_in], src[: st - fade_in])
    assert np.array_equal(got[et + fade_out :], src[et + fade_out :])
    assert not np.array_equal(got[st:et], src[st:et])
    assert_level_continues(got, rate, st - fade_in, st)


def test_studio_infill_44k_and_the_level_option(studio, tmp_path: Path) -> None:
    from dr2studio.song import Song

    take = shared_real("2.wav")
    src, rate, _ = read_int(take)
    song = Song.load(take)
    kw = dict(style=STYLE, steps=2, cfg_strength=0.0, seed=6)
    fixed = studio.infill(song, 6.0, 11.0, LYRICS, **kw)
    out = fixed.save(tmp_path / "fixed.wav")
    got, got_rate, subtype = read_int(out)
    assert (got_rate, got.shape, subtype) == (44100, src.shape, "PCM_16")
    fade = round(fixed.settings["edits"][-1]["crossfade_in"] * rate)
    st, et = round(6.0 * rate), round(11.0 * rate)
    assert np.array_equal(got[: st - fade], src[: st - fade]) and np.array_equal(got[et + fade :], src[et + fade :])
    assert_level_continues(got, rate, st - fade, st)
    # --no-match-level: the same new audio at the model's own level; the matched one differs by the reported gain
    raw = studio.infill(song, 6.0, 11.0, LYRICS, match_level=False, **kw)
    gain_db = fixed.settings["edits"][-1]["level_match_db"]
    assert raw.settings["edits"][-1]["level_match_db"] is None and abs(gain_db) > 0.5
    inner = slice(st, et - fade)
    measured = rms_db(fixed.audio[:, inner].numpy()) - rms_db(raw.audio[:, inner].numpy())
    assert measured == pytest.approx(gain_db, abs=0.05)


# -- lengths -----------------------------------------------------------------------------------------

def test_cli_generate_longer_than_the_model_goes_says_why(tmp_path: Path, lyrics: Path) -> None:
    out = tmp_path / "song.wav"
    proc = dr2studio("generate", "--lyrics", lyrics, "--style", STYLE, "--duration", 40, "--seed", 1,
                     "--steps", "4", "-q", "--json", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    seconds = sf.info(str(out)).duration
    length = res["length"]
    assert length["requested"] == 40.0 and length["delivered"] == pytest.approx(seconds, abs=1e-3)
    if seconds < 40.0 - 1e-3:  # the demo model ends its songs after about 20 s
        assert length["ended_early"] is True
        assert "ended the song" in length["reason"] and length["reason"] in proc.stderr
    else:
        assert length["ended_early"] is False


def test_full_length_and_extend_hold_the_end_off(studio) -> None:
    song = studio.generate(LYRICS, STYLE, 30.0, steps=4, seed=1)
    if song.duration >= 30.0:
        pytest.skip("the model did not end this song early; nothing to hold off")
    assert song.settings["length"]["ended_early"] and "ended the song" in song.settings["length"]["reason"]
    held = studio.generate(LYRICS, STYLE, 30.0, steps=4, seed=1, full_length=True)
    assert held.duration == 30.0 and held.settings["length"]["ended_early"] is False
    # extending a song the model considers finished still adds exactly what was asked
    longer = studio.extend(song, "[outro]\nRhythm of the night will show\n", seconds=5, steps=4, seed=2)
    edit = longer.settings["edits"][-1]
    assert longer.audio.shape[1] == song.audio.shape[1] + 5 * song.sample_rate
    assert edit["added_seconds"] == 5.0 and edit["new_frames"] >= 5 * studio.frame_rate


def test_cli_bad_range_on_a_real_recording_is_one_line_and_writes_nothing(tmp_path: Path, lyrics: Path) -> None:
    take = shared_real("2.wav")
    out = tmp_path / "fixed.wav"
    proc = dr2studio("infill", take, "--start", 15, "--end", 25, "--lyrics", lyrics, "--style", STYLE,
                     "-o", out, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "past the end" in lines[0] and "2.wav" in lines[0]
    assert list(tmp_path.iterdir()) == []
