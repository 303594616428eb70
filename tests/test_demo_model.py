"""The shipped demo model: complete, small, trained by our pipelines, and it makes music, not noise,
on the beat of the tempo the style text states."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dr2studio import demo
from dr2studio.demo import DEMO_FILES, DemoModelMissing, demo_model_dir, demo_model_info
from dr2studio.lab import analysis

LYRICS = """[verse]
[00:01.00]A silver horizon tonight
[00:03.50]I follow the river home
[chorus]
[00:06.00]Our golden ocean now
[00:08.00]We dance across the light
"""
STYLE = "pop, 120 bpm, A minor, female vocal, piano, pad, bass, drums"


@pytest.fixture(scope="module")
def studio():
    from dr2studio.studio import Studio

    torch.set_num_threads(1)
    return Studio.load(demo_model_dir(), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def generated(studio) -> tuple[np.ndarray, int]:
    song = studio.generate(LYRICS, STYLE, 12.0, steps=8, cfg_strength=2.0, seed=3)
    return song.audio.detach().float().cpu().numpy(), int(song.sample_rate)


def test_demo_dir_is_complete_and_small():
    root = demo_model_dir()
    sizes = {name: (root / name).stat().st_size for name in DEMO_FILES}
    assert all(size > 0 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 25 * 2**20, f"demo model is {sum(sizes.values()) / 2**20:.1f} MB (limit 25 MB)"


def test_demo_was_trained_by_our_pipelines():
    info = demo_model_info()
    training = info["training"]
    assert training["vae"]["step"] >= 500 and training["block_fm"]["step"] >= 300, training
    assert training["latent_scale"]["divided_by"] > 0
    assert info["recipe"] == "training/recipes/demo_model.sh"


def test_missing_demo_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "model.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    with pytest.raises(DemoModelMissing, match="model.safetensors"):
        demo.demo_model_dir()


def test_own_phoneme_table_covers_english_lyrics():
    from dr2studio.lyrics import load_vocab
    from dr2studio.lyrics.g2p import lyrics_phonemes

    vocab = load_vocab(demo_model_dir())
    assert len(vocab) < 100  # our own small English table, not the released 363-phone one
    lines = lyrics_phonemes("[verse]\nThe quick brown fox jumps over the lazy dog\nShe sells sea shells, doesn't she?", vocab)
    assert lines and all(not line.dropped for line in lines)


def test_style_encoder_is_the_tag_encoder(studio):
    a = studio.style_embedding("pop, 120 bpm, A minor")
    b = studio.style_embedding("rock, 90 bpm, E major")
    # length sqrt(512): unit RMS per component, like the lyric embeddings it is added to (docs/demo_model.md)
    assert a.shape == (512,) and torch.isclose(a.norm(), torch.tensor(512**0.5), rtol=1e-4)
    assert float(a @ b) / float(a.norm() * b.norm()) < 0.99  # different tags, different conditions


def _envelope_variation(mono: np.ndarray, sr: int) -> float:
    """Coefficient of variation of the 100 ms RMS envelope (stationary noise ~0.05, songs with beats and sections more)."""
    w = sr // 10
    rms = np.sqrt((mono[: len(mono) // w * w].reshape(-1, w) ** 2).mean(1))
    return float(rms.std() / (rms.mean() + 1e-12))


def test_generation_is_music_not_noise(generated):
    audio, sr = generated
    assert sr == json.loads((demo_model_dir() / "decoder.json").read_text())["sampling_rate"]
    assert audio.shape[-1] >= 8 * sr and np.isfinite(audio).all()
    mono = audio.reshape(-1, audio.shape[-1]).mean(0)
    assert float(np.sqrt(np.mean(mono**2))) > 1e-3, "output is silent"
    noise = np.random.default_rng(0).standard_normal(mono.shape[0]).astype(np.float32) * 0.1
    flat, flat_noise = analysis.spectral_flatness(mono), analysis.spectral_flatness(noise)
    assert flat < 0.1 * flat_noise, f"spectral flatness {flat:.3f} is too close to white noise ({flat_noise:.3f})"
    var, var_noise = _envelope_variation(mono, sr), _envelope_variation(noise, sr)
    assert var > 3 * var_noise, f"loudness envelope varies like stationary noise ({var:.3f} vs {var_noise:.3f})"
    assert analysis.estimate_tempo(mono, sr, min_strength=0.0) > 0, "no onsets at all in the generated audio"


def _beat_check(audio: np.ndarray, sr: int, bpm: float) -> None:
    mono = audio.reshape(-1, audio.shape[-1]).mean(0)
    found = analysis.estimate_tempo(mono, sr)  # default strength threshold: a clear beat
    assert analysis.tempo_error(found, bpm) < 0.04, f"tempo {found:.1f} bpm, the style says {bpm}"
    on, off = analysis.beat_strength(mono, sr, bpm), analysis.beat_strength(mono, sr, bpm * 1.13)
    assert on > 0.2 and on > 3 * off, f"beat strength {on:.2f} at {bpm} bpm, {off:.2f} at a wrong tempo"


def test_generation_plays_the_stated_tempo(generated):
    _beat_check(*generated, 120.0)


def test_another_stated_tempo_is_followed_too(studio):
    song = studio.generate(LYRICS, STYLE.replace("120 bpm", "96 bpm"), 12.0, steps=8, cfg_strength=2.0, seed=3)
    assert song.settings["tempo_bpm"] == 96.0
    _beat_check(song.audio.detach().float().cpu().numpy(), int(song.sample_rate), 96.0)
