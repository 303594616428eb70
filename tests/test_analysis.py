"""Tempo, key, section energy and flatness measurements, on signals with known answers and on synthetic songs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dr2studio.lab import analysis as A
from dr2studio.lab.synth import generate_song, parse_style

REPO = Path(__file__).resolve().parents[1]
SR = 22050


@pytest.fixture(scope="module")
def songs():
    return [generate_song(seed, duration=15.0) for seed in range(300, 308)]


def click_track(bpm: float, seconds: float = 12.0, sr: int = SR) -> np.ndarray:
    """Decaying 1 kHz clicks on every beat, accented on the bar."""
    x = np.zeros(int(seconds * sr))
    t = np.arange(int(0.05 * sr)) / sr
    click = np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.01)
    for i, start in enumerate(np.arange(0, seconds, 60.0 / bpm)):
        s = int(start * sr)
        seg = click[: len(x) - s] * (1.0 if i % 4 == 0 else 0.6)
        x[s : s + len(seg)] += seg
    return x


def chord_audio(chords: list[tuple[int, ...]], seconds_each: float = 1.0, sr: int = SR) -> np.ndarray:
    """Chords of sine tones (MIDI numbers) with a couple of harmonics, one after another."""
    t = np.arange(int(seconds_each * sr)) / sr
    out = []
    for chord in chords:
        seg = sum(
            a * np.sin(2 * np.pi * h * 440.0 * 2 ** ((m - 69) / 12) * t)
            for m in chord
            for h, a in ((1, 1.0), (2, 0.3), (3, 0.15))
        )
        out.append(seg * np.minimum(1, np.minimum(t, t[::-1]) / 0.02))
    return np.concatenate(out) * 0.1


@pytest.mark.parametrize("bpm", [72.0, 100.0, 123.0, 140.0])
def test_tempo_of_a_click_track(bpm):
    assert A.estimate_tempo(click_track(bpm), SR) == pytest.approx(bpm, rel=0.01)


def test_tempo_of_synthetic_songs_is_within_a_few_percent(songs):
    errors = [A.tempo_error(A.estimate_tempo(s.audio, s.sample_rate), s.tempo) for s in songs]
    assert sum(e <= 0.04 for e in errors) >= 7, errors


def test_tempo_of_silence_and_of_a_steady_tone_is_zero():
    assert A.estimate_tempo(np.zeros(SR * 5), SR) == 0.0
    t = np.arange(SR * 5) / SR
    assert A.estimate_tempo(0.3 * np.sin(2 * np.pi * 220 * t), SR) == 0.0



def test_beat_strength_is_high_at_the_played_tempo_only(songs):
    clicks = click_track(100.0)
    assert A.beat_strength(clicks, SR, 100.0) > 0.5
    assert A.beat_strength(clicks, SR, 50.0) > 0.5  # half time: the same pulse, every other beat
    assert A.beat_strength(clicks, SR, 77.0) < 0.2
    noise = np.random.default_rng(0).standard_normal(SR * 10) * 0.1
    assert A.beat_strength(noise, SR, 100.0) < 0.2
    assert A.beat_strength(np.zeros(SR * 5), SR, 100.0) == 0.0
    strengths = [A.beat_strength(s.audio, s.sample_rate, s.tempo) for s in songs]
    assert np.median(strengths) > 0.5, strengths
    with pytest.raises(ValueError, match="bpm"):
        A.beat_strength(clicks, SR, 0.0)

def test_tempo_error_forgives_octaves_only_when_asked():
    assert A.tempo_error(60.0, 120.0) == 0.0 and A.tempo_error(240.0, 120.0) == 0.0
    assert A.tempo_error(60.0, 120.0, octave=False) == pytest.approx(0.5)
    assert A.tempo_error(126.0, 120.0) == pytest.approx(0.05)
    assert A.tempo_error(0.0, 120.0) == 1.0
    with pytest.raises(ValueError, match="reference tempo"):
        A.tempo_error(120.0, 0.0)


def test_key_of_a_cadence():
    # C major: I IV V I (with the bass note)
    c_major = chord_audio([(48, 60, 64, 67), (41, 60, 65, 69), (43, 59, 62, 67), (48, 60, 64, 67)] * 2)
    assert A.estimate_key(c_major, SR)[:2] == ("C", "major")
    # A minor: i iv V i, with the raised leading tone in V
    a_minor = chord_audio([(45, 57, 60, 64), (50, 57, 62, 65), (40, 56, 59, 64), (45, 57, 60, 64)] * 2)
    tonic, mode, r = A.estimate_key(a_minor, SR)
    assert (tonic, mode) == ("A", "minor") and r > 0.6
    assert A.estimate_key(c_major, SR, profiles="krumhansl")[:2] == ("C", "major")
    with pytest.raises(ValueError, match="profiles"):
        A.estimate_key(a_minor, SR, profiles="nope")


def test_key_of_synthetic_songs_is_mostly_right(songs):
    hits = 0
    for s in songs:
        facts = parse_style(s.style)
        tonic, mode, _ = A.estimate_key(s.audio, s.sample_rate)
        hits += A.key_score((tonic, mode), (facts.tonic_pc, facts.mode)) == 1.0
    assert hits >= 6


def test_chroma_is_a_distribution_that_peaks_at_the_played_notes():
    c = A.chroma(chord_audio([(60, 64, 67)] * 3), SR)
    assert c.shape == (12,) and c.sum() == pytest.approx(1.0)
    assert set(np.argsort(c)[-3:]) == {0, 4, 7}


def test_key_distance_and_mirex_score():
    assert A.key_distance("A minor", ("A", "minor")) == 0.0
    assert A.key_distance("A minor", "C major") == 0.5  # relative keys share a signature
    assert A.key_distance("C major", "G major") == 1.0
    assert A.key_distance("C major", "F# major") == 6.0
    assert A.key_distance("A major", (9, "minor")) == 3.5  # parallel
    assert A.key_score("C major", "C major") == 1.0
    assert A.key_score("G major", "C major") == 0.5
    assert A.key_score("A minor", "C major") == 0.3
    assert A.key_score("C minor", "C major") == 0.2
    assert A.key_score("F# major", "C major") == 0.0
    with pytest.raises(ValueError, match="mode"):
        A.key_distance(("C", "dorian"), "C major")


def test_white_noise_is_far_flatter_than_a_song(songs):
    noise = np.random.default_rng(0).standard_normal(SR * 10)
    flat_noise = A.spectral_flatness(noise)
    flat_songs = [A.spectral_flatness(s.audio) for s in songs[:3]]
    assert 0.45 < flat_noise < 0.65
    assert max(flat_songs) < 0.05 and flat_noise > 10 * max(flat_songs)
    assert A.spectral_flatness(np.zeros(SR)) == 0.0 or A.spectral_flatness(np.zeros(SR)) < 1.0


def test_section_energy_follows_the_level_steps():
    rng = np.random.default_rng(1)
    gains = [0.1, 0.4, 1.0, 0.2]
    x = np.concatenate([g * rng.standard_normal(SR) for g in gains])
    sections = [{"start_s": float(i), "end_s": float(i + 1)} for i in range(4)]
    levels = A.section_energy(x, SR, sections)
    assert np.allclose(np.diff(levels), 20 * np.log10(np.array(gains[1:]) / gains[:-1]), atol=0.3)
    assert A.energy_pattern_correlation(levels, gains) == pytest.approx(1.0, abs=1e-3)
    assert A.energy_pattern_correlation(levels, [1 / g for g in gains]) == pytest.approx(-1.0, abs=1e-3)
    assert A.section_energy(x, SR, [(10.0, 11.0)]) == [-120.0]  # past the end
    assert A.energy_pattern_correlation([1.0, 1.0], [0.2, 0.9]) == 0.0
    with pytest.raises(ValueError, match="sections"):
        A.energy_pattern_correlation([1.0, 2.0], [1.0])


def test_synthetic_songs_follow_their_energy_pattern(songs):
    rs = [A.energy_pattern_correlation(A.section_energy(s.audio, s.sample_rate, s.sections), [x.energy for x in s.sections])
          for s in songs]
    assert np.mean(rs) > 0.7 and min(rs) > 0.3, rs


def test_stereo_input_is_mixed_and_bad_input_is_refused():
    x = click_track(120.0, 8.0)
    assert A.estimate_tempo(np.stack([x, x]), SR) == pytest.approx(A.estimate_tempo(x, SR))
    with pytest.raises(ValueError, match="shape"):
        A.estimate_tempo(np.zeros((1, 2, 100)), SR)
    with pytest.raises(ValueError, match="NaN"):
        A.spectral_flatness(np.full(4096, np.nan))
    with pytest.raises(ValueError, match="sample rate"):
        A.estimate_key(x, 0)


def test_demo_quality_benchmark_measures_real_songs():
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "demo_quality.py"), "--only-real", "--count", "2", "--seconds", "12"],
        capture_output=True, text=True, cwd=str(REPO), timeout=120,
    )
    assert res.returncode == 0, res.stderr
    header, _, row = res.stdout.strip().splitlines()
    assert "tempo err %" in header and "beat" in header and "key acc" in header and "flatness" in header
    fields = row.split()
    assert fields[0] == "real" and fields[1] == "2"
    tempo_err, tempo_ok, beat, key_acc, key_score, energy_r, flatness = map(float, fields[2:9])
    assert tempo_err < 4 and tempo_ok == 1.0 and beat > 0.5 and energy_r > 0.5 and flatness < 0.05


def test_demo_quality_needs_a_model_unless_only_real():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_quality.py"), "--count", "1"],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert res.returncode == 2 and "--model is required" in res.stderr


def test_randomised_copy_keeps_everything_but_the_dit_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import demo_quality
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from dr2studio.lab.testing import build_tiny_model

    src = build_tiny_model(tmp_path / "src")
    dst = demo_quality.randomised_copy(src, tmp_path / "dst")
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in dst.iterdir())
    assert (src / "vocab.json").read_bytes() == (dst / "vocab.json").read_bytes()
    a, b = load_file(str(src / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _benchmark(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_phase_share_finds_a_pulse_locked_to_the_beat_and_not_at_a_wrong_tempo():
    latent_rhythm = _benchmark("latent_rhythm")
    rng = np.random.default_rng(0)
    period = 40 * 60 / 107  # frames per beat at 107 bpm and 40 frames/s
    t = np.arange(800)
    pulse = np.exp(-((t / period) % 1.0) * 8.0)[:, None] * np.array([1.0, -1.0, 0.5, 2.0])  # a hit on each beat
    noise = rng.standard_normal((800, 4))
    assert latent_rhythm.phase_share(pulse + 0.3 * noise, period) > 0.3  # about 0.45: the noise is most of the rest
    assert latent_rhythm.phase_share(pulse + 0.3 * noise, period / 1.13) < 0.1
    assert latent_rhythm.phase_share(noise, period) < 0.1


def test_latent_rhythm_benchmark_runs_on_the_shipped_demo_model():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "latent_rhythm.py"), "--model",
                          str(REPO / "dr2studio" / "assets" / "demo"), "--count", "2", "--seconds", "10"],
                         capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert "phase share" in lines[0] and len(lines) == 5 and lines[-1].split()[0] == "mean"
    onsets = float(lines[-1].split()[3])
    assert onsets > 0.2  # the real songs' onsets are beat-locked; the column reads the audio right
