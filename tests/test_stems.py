"""Source separation (Hybrid Demucs, random weights), stem rendering and project export."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from torchaudio.models import HDemucs

from dr2studio.audio.effects import integrated_loudness, load_preset
from dr2studio.audio.io import read_audio
from dr2studio.audio.stems import STEMS, SeparationError, Separator, export_stems, load_separator, render_stem
from dr2studio.song import Song

SR = 48000
SOURCES = ["drums", "bass", "other", "vocals"]


def _small_demucs() -> HDemucs:
    """The hdemucs_high architecture (nfft 4096, depth 6) with few channels: real code, fast on CPU."""
    torch.manual_seed(0)
    return HDemucs(sources=list(SOURCES), channels=4, growth=2, nfft=4096, depth=6)


class _Gains(torch.nn.Module):
    """A separator whose sources are fixed gains of the mix, so overlap-add must be exact."""

    sources = SOURCES

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 2, L] -> [B, 4, 2, L]
        gains = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
        return x.unsqueeze(1) * gains


def _noise(seconds: float, channels: int = 2, sr: int = SR) -> torch.Tensor:
    torch.manual_seed(1)
    return 0.1 * torch.randn(channels, int(seconds * sr))


def test_segmented_separation_blends_exactly() -> None:
    sep = Separator(_Gains(), segment_s=1.0, overlap_s=0.25)
    mix = _noise(3.3, sr=44100)
    out = sep.separate(mix, 44100)
    assert set(out) == set(SOURCES)
    for gain, name in zip([0.1, 0.2, 0.3, 0.4], SOURCES):
        assert out[name].shape == mix.shape
        assert torch.allclose(out[name], gain * mix, atol=1e-5), name


def test_demucs_random_weights_shapes_mono_and_stereo() -> None:
    sep = Separator(_small_demucs(), segment_s=1.0, overlap_s=0.25)
    stereo = sep.separate(_noise(1.5), SR)  # two overlapping segments
    assert {k: tuple(v.shape) for k, v in stereo.items()} == {k: (2, int(1.5 * SR)) for k in SOURCES}
    mono = sep.separate(_noise(0.5, channels=1), SR)
    assert all(v.shape == (1, SR // 2) and torch.isfinite(v).all() for v in mono.values())


def test_load_separator_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(SeparationError, match="cannot download the Hybrid Demucs weights.*--separator-weights"):
        load_separator(factory=_small_demucs)


def test_load_separator_local_weights(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(_small_demucs().state_dict(), weights)
    sep = load_separator(weights, factory=_small_demucs)
    assert sep.sources == SOURCES
    with pytest.raises(SeparationError, match="do not match"):
        load_separator(weights, factory=lambda: HDemucs(sources=list(SOURCES), channels=8, nfft=4096, depth=6))
    with pytest.raises(SeparationError, match="not found"):
        load_separator(tmp_path / "missing.pt")


def test_render_stem_targets_loudness_at_project_rate() -> None:
    preset = load_preset("balanced")
    out = render_stem("vocals", _noise(2.0), SR, preset, target_sample_rate=44100, loudness_lufs=-16.0)
    assert out.sample_rate == 44100 and out.audio.shape == (2, 88200)
    assert abs(integrated_loudness(out.audio, 44100) - (-16.0)) < 0.1
    assert float(out.audio.abs().max()) <= 10 ** (preset.peak_db / 20) + 1e-6


def test_export_stems_with_separation(tmp_path: Path) -> None:
    song = Song(audio=_noise(1.0), sample_rate=SR, lyrics="[verse]\nla", seed=5, settings={"steps": 4})
    song.path = tmp_path / "take.wav"
    calls = []
    entry = export_stems(song, tmp_path / "proj", daw="generic", preset="clean", separate=True, sample_rate=44100,
                         position=12.5, separator=Separator(_small_demucs(), segment_s=1.0, overlap_s=0.25),
                         progress=lambda *a: calls.append(a))
    folder = tmp_path / "proj" / "dr2" / "take"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    for name in STEMS:
        audio, rate = read_audio(folder / f"{name}.wav")
        assert rate == 44100 and audio.shape == (2, 44100)
    manifest = json.loads((tmp_path / "proj" / "dr2studio.json").read_text())
    (take,) = manifest["takes"]
    assert take == entry
    assert take["position"] == 12.5 and take["seed"] == 5 and take["separated"] is True
    assert take["lyrics"] == "[verse]\nla" and take["preset"] == "clean"
    assert take["files"]["vocals"] == "dr2/take/vocals.wav"
    assert abs(take["loudness"]["mix"] - (-14.0)) < 0.1
    assert [c[2] for c in calls][0] == "separate" and calls[-1][0] == calls[-1][1] == len(STEMS) + 1


def test_export_stems_checks_before_writing(tmp_path: Path) -> None:
    song = Song(audio=_noise(0.5), sample_rate=SR)
    with pytest.raises(ValueError, match="sample rate"):
        export_stems(song, tmp_path / "p", sample_rate=1000)
    with pytest.raises(ValueError, match="unknown preset"):
        export_stems(song, tmp_path / "p", preset="nope")
    assert not (tmp_path / "p").exists()

