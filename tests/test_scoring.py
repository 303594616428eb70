"""Automatic scores (``dr2studio.scoring``, ``dr2studio eval``): a procedural song of known tempo and key
scores high against its own style text and low against a wrong key or tempo; loudness, clipping and the
section plan are measured as documented (docs/evaluation.md); project scores land in
``dr2studio.scores.jsonl`` in the format ``prefs export`` reads; the optional model scorers run through
their real loading code with only the download and the model mocked; bad input gets clear errors."""
from __future__ import annotations

import json
import math
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dr2studio.cli import main
from dr2studio.demo import demo_model_dir
from dr2studio.lab.synth import SynthConfig, generate_song
from dr2studio.scoring import models as M
from dr2studio.scoring.signal import loudness_range, score_signal, sections_from_lyrics
from dr2studio.scoring.store import SCORES_NAME, ScoreStoreError, append_scores, read_scores, score_record
from dr2studio.song import Song
from dr2studio.style.tags import parse_style_tags

SR = 16000


@pytest.fixture(scope="module")
def song():
    """A 12 s procedural rock song, 111 bpm in D major (seed 3)."""
    s = generate_song(3, SynthConfig(sample_rate=SR), duration=12.0)
    assert parse_style_tags(s.style).tempo == 111 and "D major" in s.style
    return s


def _facts(style: str):
    t = parse_style_tags(style)
    return t.tempo, (t.key, t.mode)


def test_known_tempo_and_key_score_high_and_a_wrong_key_low(song) -> None:
    tempo, key = _facts(song.style)
    plan = sections_from_lyrics(song.lyrics, song.duration)
    right = score_signal(song.audio, SR, tempo=tempo, key=key, sections=plan)
    d = right.details
    assert abs(d["tempo_estimated"] - 111) / 111 < 0.02 and d["key_estimated"] == "D major" and d["key_score"] == 1.0
    assert right.scores["style_similarity"] >= 0.9
    assert right.scores["musicality"] >= 0.8 and right.scores["audio_quality"] == 1.0
    assert right.scores["lyric_accuracy"] is None  # no ASR among the signal scores
    wrong_key = score_signal(song.audio, SR, tempo=tempo, key=((key[0] + 6) % 12, key[1]), sections=plan)
    assert wrong_key.details["key_score"] == 0.0 and wrong_key.scores["style_similarity"] <= 0.05
    fifth = score_signal(song.audio, SR, tempo=tempo, key=((key[0] + 7) % 12, key[1]))
    assert fifth.scores["style_similarity"] == pytest.approx(0.5, abs=0.01)  # MIREX: a fifth away scores 0.5
    wrong_tempo = score_signal(song.audio, SR, tempo=tempo * 1.13, key=key)
    assert wrong_tempo.scores["style_similarity"] <= 0.05
    assert wrong_tempo.details["beat_strength"] < d["beat_strength"] / 2
    nothing_stated = score_signal(song.audio, SR)
    assert nothing_stated.scores["style_similarity"] is None


def test_section_plan_from_lrc_follows_the_songs_sections(song) -> None:
    plan = sections_from_lyrics(song.lyrics, song.duration)
    assert [s.kind for s in plan] == [s.kind for s in song.sections]
    for got, want in zip(plan, song.sections):
        assert abs(got.start_s - want.start_s) < 0.6, (got, want)
    assert plan[-1].end_s == pytest.approx(song.duration)
    scored = score_signal(song.audio, SR, sections=plan)
    assert scored.details["energy_r"] > 0.5  # the synthetic arrangement follows the pop energy plan
    assert sections_from_lyrics("[verse]\nno time stamps here", 10.0) == []


def test_audio_quality_sees_clipping_noise_and_level(song) -> None:
    x = torch.as_tensor(np.asarray(song.audio, np.float32))[None]
    clipped = score_signal((x * 30).clamp(-1, 1), SR)
    assert clipped.details["clipped_share"] > 0.01 and clipped.scores["audio_quality"] == 0.0
    noise = score_signal(torch.randn(1, SR * 8, generator=torch.Generator().manual_seed(0)) * 0.1, SR)
    assert noise.details["spectral_flatness"] > 0.4 and noise.scores["audio_quality"] < 0.7
    quiet = score_signal(x * 10 ** (-40 / 20), SR)
    assert quiet.details["loudness_lufs"] < -55 and quiet.scores["audio_quality"] < 0.7
    with pytest.raises(ValueError, match="NaN"):
        score_signal(torch.full((1, SR), float("nan")), SR)
    with pytest.raises(ValueError, match="sample rate"):
        score_signal(x, 0)


def test_loudness_measures_match_bs1770() -> None:
    from dr2studio.audio.effects import integrated_loudness
    from dr2studio.scoring.signal import _k_weighted

    def ours(f: float, sr: int) -> float:
        tone = torch.sin(2 * math.pi * f * torch.arange(10 * sr, dtype=torch.float64) / sr)[None].float() * 0.5
        return -0.691 + 10 * math.log10(float(np.mean(_k_weighted(tone, sr)[0, sr:] ** 2)))

    # our K-weighting (used for the loudness range) is the product's BS.1770 loudness at 48 kHz (a full-scale
    # 997 Hz sine reads -3.01 LUFS), and designed per rate it reads a tone within 0.3 dB of that at 8 and 16 kHz
    tone = torch.sin(2 * math.pi * 997 * torch.arange(10 * 48000, dtype=torch.float64) / 48000)[None].float()
    assert ours(997.0, 48000) + 20 * math.log10(2) == pytest.approx(-3.01, abs=0.03)
    assert ours(997.0, 48000) == pytest.approx(integrated_loudness(tone * 0.5, 48000), abs=0.06)
    for f in (100.0, 440.0, 1500.0):  # near Nyquist the bilinear design bends: 3 kHz at 8 kHz reads +0.4 dB
        for sr in (8000, 16000):
            assert ours(f, sr) == pytest.approx(ours(f, 48000), abs=0.3), (f, sr)
    sine = torch.sin(2 * math.pi * 997 * torch.arange(20 * 48000, dtype=torch.float64) / 48000)[None].float()
    stepped = torch.cat([sine[:, : 10 * 48000] * 10 ** (-20 / 20), sine[:, 10 * 48000 :] * 10 ** (-30 / 20)], dim=1)
    assert loudness_range(stepped, 48000) == pytest.approx(10.0, abs=0.6)
    assert loudness_range(sine * 0.1, 48000) == pytest.approx(0.0, abs=0.05)
    assert loudness_range(sine[:, :48000], 48000) is None


def _project_with_take(tmp_path: Path, song) -> Path:
    """A DAW project with one take rendered by ``dr2studio stems`` from a song file with a sidecar."""
    audio = torch.as_tensor(np.asarray(song.audio, np.float32))[None]
    s = Song(audio=audio, sample_rate=SR, latents=torch.zeros(1, 4, 32), tokens=torch.tensor([1, 2, 511]),
             lyrics=song.lyrics, style=torch.zeros(512), seed=0, settings={"tempo_bpm": 111.0})
    path = s.save(tmp_path / "take.wav")
    project = tmp_path / "proj"
    res = CliRunner().invoke(main, ["stems", str(path), "--project", str(project), "--take", "t1", "-q", "--preset", "clean"])
    assert res.exit_code == 0, res.output
    return project


def test_eval_project_appends_records_prefs_export_reads(tmp_path: Path, song) -> None:
    project = _project_with_take(tmp_path, song)
    runner = CliRunner()
    res = runner.invoke(main, ["eval", str(project), "--json", "--style", "rock, 111 bpm, D major"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out[0]["take"] == "t1" and out[0]["scores"]["style_similarity"] >= 0.9
    res = runner.invoke(main, ["eval", str(project), "--style", "rock, 111 bpm, Ab major"])  # a tritone away
    assert res.exit_code == 0, res.output
    assert "t1" in res.stdout and "Ab major" in res.stdout
    lines = (project / SCORES_NAME).read_text().splitlines()
    assert len(lines) == 2
    recs = [json.loads(line) for line in lines]
    assert set(recs[0]) == {"take", "time", "scores", "details"} and recs[0]["time"].endswith("+00:00")
    assert recs[1]["scores"]["style_similarity"] <= 0.05
    assert recs[0]["details"]["signal"]["section_kinds"]  # the plan came from the sidecar's LRC lyrics
    from dr2studio.prefs import read_scores as prefs_read_scores

    assert prefs_read_scores(project)["t1"]["style_similarity"] == recs[1]["scores"]["style_similarity"]
    # without --style the stated tempo from the sidecar still counts; no key is known
    res = runner.invoke(main, ["eval", str(project), "--json", "--no-store"])
    assert json.loads(res.stdout)[0]["details"]["signal"]["tempo_stated"] == 111.0
    assert len((project / SCORES_NAME).read_text().splitlines()) == 2


def test_eval_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "notes.txt").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, msg in [([str(tmp_path / "missing.wav")], "no such file"), ([str(tmp_path / "notes.txt")], "not an audio file"),
                      ([str(empty)], "no audio files"), ([str(empty), "--scorers", "vibes"], "unknown scorer")]:
        res = runner.invoke(main, ["eval", *args])
        assert res.exit_code != 0 and msg in res.output, (args, res.output)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    res = runner.invoke(main, ["eval", str(broken)])
    assert res.exit_code != 0 and "broken" in res.output
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "dr2studio.json").write_text(json.dumps({"format": "dr2studio-manifest", "schema_version": 2, "daw": "generic",
                                                     "sample_rate": None, "takes": []}))
    res = runner.invoke(main, ["eval", str(proj)])
    assert res.exit_code != 0 and "no takes" in res.output and not (proj / SCORES_NAME).exists()


def test_store_checks_records_and_keeps_concurrent_appends_whole(tmp_path: Path) -> None:
    with pytest.raises(ScoreStoreError, match="in \\[0, 1\\]"):
        score_record("t", {"musicality": 1.5}, {})
    with pytest.raises(ScoreStoreError, match="unknown score dimensions"):
        score_record("t", {"vibe": 0.5}, {})
    with pytest.raises(ScoreStoreError, match="does not exist"):
        append_scores(tmp_path / "nope", [score_record("t", {}, {})])

    def writer(n: int) -> None:
        for i in range(20):
            append_scores(tmp_path, [score_record(f"w{n}-{i}", {"musicality": 0.5}, {"pad": "x" * 5000})])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = read_scores(tmp_path)
    assert len(recs) == 80 and {r["take"] for r in recs} == {f"w{n}-{i}" for n in range(4) for i in range(20)}
    (tmp_path / SCORES_NAME).write_text((tmp_path / SCORES_NAME).read_text() + "{oops\n")
    with pytest.raises(ScoreStoreError, match=":81: not JSON"):
        read_scores(tmp_path)


# --------------------------------------------------------------------------- optional model scorers


def test_phoneme_error_rate_and_asr_scorer_with_a_given_transcriber() -> None:
    assert M.phoneme_error_rate(list("abcd"), list("abed")) == 0.25
    lyrics = "[verse]\n[00:01.00]City lights are calling me tonight\n[00:03.00]Under the silver moon"
    vocab = demo_model_dir() / "vocab.json"
    exact = M.AsrLyricsScorer(vocab, transcriber=lambda a, sr: "City lights are calling me tonight\nUnder the silver moon")
    scores, details = exact(torch.zeros(1, 8000), 8000, lyrics=lyrics)
    assert scores["lyric_accuracy"] == 1.0 and details["phoneme_error_rate"] == 0.0
    wrong = M.AsrLyricsScorer(vocab, transcriber=lambda a, sr: "pretty kites were falling free")
    assert wrong(torch.zeros(1, 8000), 8000, lyrics=lyrics)[0]["lyric_accuracy"] < 0.6
    assert exact(torch.zeros(1, 8000), 8000, lyrics="[inst]")[0]["lyric_accuracy"] is None


def test_whisper_loads_through_the_hub_with_only_the_download_and_model_mocked(monkeypatch, tmp_path: Path) -> None:
    calls: dict = {}

    def snapshot_download(repo_id, allow_patterns):
        calls["download"] = (repo_id, allow_patterns)
        (tmp_path / "model.bin").write_bytes(b"0")
        return str(tmp_path)

    class WhisperModel:
        def __init__(self, path, device, compute_type):
            calls["model"] = (path, device, compute_type)

        def transcribe(self, audio, language, beam_size, vad_filter):
            calls["audio"] = (audio.dtype, audio.shape, language)
            return [types.SimpleNamespace(text=" City lights are calling me tonight ")], None

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setitem(sys.modules, "faster_whisper", types.SimpleNamespace(WhisperModel=WhisperModel))
    scorer = M.make_scorer("asr", vocab=demo_model_dir() / "vocab.json")
    scorer.check_installed()
    scores, details = scorer(torch.zeros(2, 8000), 8000, lyrics="[verse]\nCity lights are calling me tonight")
    assert scores["lyric_accuracy"] == 1.0
    assert calls["download"][0] == M.WHISPER_REPO and "model.bin" in calls["download"][1]
    assert calls["model"] == (str(tmp_path), "cpu", "int8")
    assert calls["audio"] == (np.float32, (16000,), "en")  # mono, resampled to 16 kHz


def test_missing_optional_packages_say_how_to_install(monkeypatch) -> None:
    for mod in ("faster_whisper", "audiobox_aesthetics", "audiobox_aesthetics.infer", "muq"):
        monkeypatch.setitem(sys.modules, mod, None)
    for name, pkg in (("asr", "faster-whisper"), ("aesthetics", "audiobox_aesthetics"), ("mulan", "muq")):
        scorer = M.make_scorer(name, vocab=demo_model_dir() / "vocab.json")
        with pytest.raises(M.ScorerUnavailable, match=f"pip install {pkg}"):
            scorer.check_installed()
    with pytest.raises(ValueError, match="unknown scorer"):
        M.make_scorer("vibes")


def test_aesthetics_and_mulan_map_their_outputs() -> None:
    aes = M.AestheticsScorer(predictor=lambda a, sr: {"CE": 7.3, "CU": 6.0, "PC": 4.0, "PQ": 10.0})
    scores, details = aes(torch.zeros(1, 8000), 8000)
    assert scores == {"audio_quality": 1.0, "musicality": pytest.approx(0.7)} and details["aesthetics"]["CE"] == 7.3
    v = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(1)), dim=0)

    class Encoder:
        def embed_audio(self, audio, sr):
            return v

        def embed_text(self, text):
            return v if "rock" in text else torch.roll(v, 7)

    mulan = M.MulanScorer(encoder=Encoder())
    assert mulan(torch.zeros(1, 8000), 8000, style="rock")[0]["style_similarity"] == 1.0
    assert mulan(torch.zeros(1, 8000), 8000, style="jazz")[0]["style_similarity"] < 0.2
    assert mulan(torch.zeros(1, 8000), 8000, style=None)[0]["style_similarity"] is None
