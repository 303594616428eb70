"""Audio I/O, splicing, effect presets, loudness and DAW project folders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from dr2studio.audio.daw import ProjectError, project_layout, read_manifest, write_take
from dr2studio.audio.effects import (
    EFFECTS,
    apply_chain,
    integrated_loudness,
    list_presets,
    load_preset,
    normalize_loudness,
    runnable_effects,
)
from dr2studio.audio.io import AudioError, fake_stereo, read_audio, resample, write_audio
from dr2studio.audio.splice import SpliceStream, crossfade, equal_power_ramps, splice
from dr2studio.config import ConfigError

SR = 48000


def _tone(seconds: float = 1.0, freq: float = 440.0, amp: float = 0.5, channels: int = 1, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    x = amp * torch.sin(2 * math.pi * freq * t)
    return x.repeat(channels, 1)


# -- io ------------------------------------------------------------------------------------------------

def test_pcm24_round_trip_is_exact_and_leaves_no_temp_files(tmp_path: Path) -> None:
    audio = torch.rand(2, 4800) * 2 - 1
    write_audio(tmp_path / "a.wav", audio, SR)
    first, sr = read_audio(tmp_path / "a.wav")
    assert sr == SR and first.shape == (2, 4800)
    assert sf.info(str(tmp_path / "a.wav")).subtype == "PCM_24"
    assert (first - audio).abs().max() < 2 ** -22
    write_audio(tmp_path / "b.wav", first, SR)
    second, _ = read_audio(tmp_path / "b.wav")
    assert torch.equal(first, second)  # what extend/infill rely on for sample identity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav"]


def test_read_audio_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found.*missing.wav"):
        read_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio")
    with pytest.raises(AudioError, match="bad.wav"):
        read_audio(bad)


def test_write_audio_refuses_bad_input_without_touching_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.wav"
    write_audio(target, _tone(0.1), SR)
    before = target.read_bytes()
    with pytest.raises(AudioError, match="NaN"):
        write_audio(target, torch.full((1, 100), float("nan")), SR)
    with pytest.raises(AudioError, match="extension"):
        write_audio(tmp_path / "x.xyz", _tone(0.1), SR)
    with pytest.raises(AudioError, match="does not exist"):
        write_audio(tmp_path / "nope" / "x.wav", _tone(0.1), SR)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


def test_fake_stereo_matches_release_rule() -> None:
    mono = torch.randn(1, 2000)
    st = fake_stereo(mono, SR)
    assert st.shape == (2, 2000)
    assert torch.equal(st[0], mono[0])
    assert torch.all(st[1, :480] == 0)
    assert torch.allclose(st[1, 480:], 0.8 * mono[0, :-480])


def test_resample_changes_length_and_keeps_a_tone() -> None:
    x = _tone(1.0, 1000.0)
    y = resample(x, SR, 44100)
    assert y.shape[1] == 44100
    spectrum = torch.fft.rfft(y[0, 4410:-4410])
    peak_hz = int(spectrum.abs().argmax()) * 44100 / (y.shape[1] - 8820)
    assert abs(peak_hz - 1000) < 5


# -- splice --------------------------------------------------------------------------------------------

def test_equal_power_ramps_keep_power_constant() -> None:
    out, inn = equal_power_ramps(257)
    assert torch.allclose(out**2 + inn**2, torch.ones(257), atol=1e-6)
    assert out[0] > 0.99 and inn[-1] > 0.99 and torch.all(out[1:] <= out[:-1])
    a, b = torch.ones(1, 8), torch.zeros(1, 8)
    assert torch.allclose(crossfade(a, b)[0], equal_power_ramps(8)[0])
    assert torch.allclose(crossfade(b, a)[0], equal_power_ramps(8)[1])


def test_splice_keeps_outside_samples_and_uses_offset() -> None:
    first = torch.randn(2, 1000)
    second = torch.randn(2, 700)  # starts at sample 500 of first's timeline
    out = splice(first, second, at=600, fade=50, offset=500)
    assert out.shape == (2, 1200)
    assert torch.equal(out[:, :600], first[:, :600])
    assert torch.equal(out[:, 650:], second[:, 150:])
    fo, fi = equal_power_ramps(50)
    assert torch.allclose(out[:, 600:650], first[:, 600:650] * fo + second[:, 100:150] * fi)
    with pytest.raises(ValueError, match="after the splice point"):
        splice(first, second, at=400, fade=10, offset=500)
    with pytest.raises(ValueError, match="runs past"):
        splice(first, second, at=990, fade=50, offset=500)



@pytest.mark.parametrize("fade", [0, 50, 333])
@pytest.mark.parametrize("sizes", [[700], [1, 99, 150, 450], [37] * 18 + [34], [100, 0, 600]])
def test_splice_stream_gives_the_splice_whatever_the_chunking(fade: int, sizes: list[int]) -> None:
    first, second, at, offset = torch.randn(2, 1000), torch.randn(2, 700), 600, 500
    stream = SpliceStream(first[:, at : at + fade], at, offset)
    pieces, start = [], 0
    for n in sizes:
        pieces.append(stream(second[:, start : start + n]))
        start += n
    assert start == second.shape[1]
    assert torch.equal(torch.cat(pieces, dim=1), splice(first, second, at, fade, offset=offset)[:, at:])
    if sizes[0] <= at - offset:  # nothing before the splice point comes out
        assert pieces[0].shape[1] == 0
    with pytest.raises(ValueError, match="offset <= at"):
        SpliceStream(first[:, :10], 400, offset=500)

# -- effects -------------------------------------------------------------------------------------------

def test_shipped_presets_load_and_run() -> None:
    names = list_presets()
    assert {"balanced", "clean", "broadcast", "loud"} <= set(names)
    x = _tone(1.0, 220.0, 0.3, channels=2)
    for name in names:
        preset = load_preset(name)
        for stem in ("mix", "vocals", "drums", "bass", "other"):
            y = apply_chain(x, SR, preset.chain_for(stem))
            assert y.shape == x.shape and torch.isfinite(y).all()


def test_every_effect_type_builds(tmp_path: Path) -> None:
    chain = []
    for name, (_, params) in EFFECTS.items():
        spec = {"effect": name}
        spec.update({k: (lo + hi) / 2 if "hz" not in k else 1000.0 for k, (lo, hi) in params.items()})
        chain.append(spec)
    y = apply_chain(_tone(0.5), SR, chain)
    assert y.shape == (1, SR // 2) and torch.isfinite(y).all()


def test_highpass_preset_removes_low_tone() -> None:
    x = _tone(1.0, 30.0, 0.5)
    y = apply_chain(x, SR, [{"effect": "highpass", "cutoff_frequency_hz": 1000}])
    assert y[:, SR // 2 :].abs().max() < 0.05 * x.abs().max()


def test_bad_preset_files_are_clear_errors(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"name": "x", "chain": [{"effect": "flanger"}]}))
    with pytest.raises(ConfigError, match=r"p.json.*unknown effect 'flanger'"):
        load_preset(p)
    p.write_text(json.dumps({"name": "x", "chain": [{"effect": "compressor", "ratio": 0.5}]}))
    with pytest.raises(ConfigError, match=r"compressor.ratio must be a number in \[1, 100\]"):
        load_preset(p)
    p.write_text(json.dumps({"name": "x", "chain": [{"effect": "reverb", "size": 0.5}]}))
    with pytest.raises(ConfigError, match="no parameter 'size'"):
        load_preset(p)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_preset(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="below Nyquist"):
        apply_chain(_tone(0.1, sr=16000), 16000, [{"effect": "lowpass", "cutoff_frequency_hz": 12000}])


def test_runnable_effects_leave_out_bands_above_nyquist() -> None:
    chain = load_preset("balanced").chain
    kept, notes = runnable_effects(chain, 8000)
    assert [e["effect"] for e in kept] == [e["effect"] for e in chain if e["effect"] != "highshelf"]
    assert notes == ["highshelf (effect 3) skipped at 8000 Hz: cutoff 10000 Hz must be below Nyquist (4000 Hz)"]
    assert runnable_effects(chain, 48000) == (chain, [])
    y = apply_chain(_tone(0.5, sr=8000), 8000, kept)
    assert y.shape == (1, 4000) and torch.isfinite(y).all()


def test_user_preset_round_trips(tmp_path: Path) -> None:
    preset = load_preset("balanced")
    preset.name = "mine"
    preset.loudness_lufs = -18.0
    preset.save(tmp_path / "mine.json")
    again = load_preset(tmp_path / "mine.json")
    assert again == preset and again.chain_for("vocals") != again.chain_for("other")


def test_loudness_normalisation_hits_target() -> None:
    x = _tone(3.0, 1000.0, 0.05, channels=2)
    before = integrated_loudness(x, SR)
    y, res = normalize_loudness(x, SR, -14.0, peak_db=-0.1)
    assert abs(integrated_loudness(y, SR) - (-14.0)) < 0.05
    assert abs(res.measured_lufs - before) < 1e-9 and abs(res.gain_db - (-14.0 - before)) < 1e-6


def test_loudness_peak_ceiling_and_silence() -> None:
    x = torch.zeros(1, SR)
    x[0, ::4800] = 0.9  # sparse clicks: quiet integrated loudness, high peak
    y, res = normalize_loudness(x, SR, -6.0, peak_db=-1.0)
    assert float(y.abs().max()) <= 10 ** (-1 / 20) + 1e-6
    assert res.output_lufs < -6.0
    silent, res = normalize_loudness(torch.zeros(2, SR), SR, -14.0)
    assert torch.equal(silent, torch.zeros(2, SR)) and res.gain_db == 0.0 and res.measured_lufs == -math.inf
    short = integrated_loudness(_tone(0.1), SR)  # shorter than one gating block
    assert math.isfinite(short)


# -- DAW folders ---------------------------------------------------------------------------------------

def test_project_layouts(tmp_path: Path) -> None:
    assert project_layout(tmp_path / "a", "ableton").takes_dir == (tmp_path / "a" / "Samples" / "Imported" / "dr2").resolve()
    assert project_layout(tmp_path / "g", "generic").takes_dir == (tmp_path / "g" / "dr2").resolve()
    reaper = tmp_path / "r"
    reaper.mkdir()
    assert project_layout(reaper, "reaper").takes_dir == reaper.resolve() / "Media" / "dr2"
    (reaper / "song.rpp").write_text('<REAPER_PROJECT 0.1 "7.0"\n  RECORD_PATH "Audio Files" ""\n>\n')
    assert project_layout(reaper, "reaper").takes_dir == reaper.resolve() / "Audio Files" / "dr2"
    (reaper / "song.rpp").write_text('<REAPER_PROJECT 0.1 "7.0"\n  RECORD_PATH "" ""\n>\n')
    assert project_layout(reaper, "reaper").takes_dir == reaper.resolve() / "dr2"
    (reaper / "song.rpp").write_text('<REAPER_PROJECT\n  RECORD_PATH "/elsewhere/media" ""\n>\n')
    assert project_layout(reaper, "reaper").takes_dir == reaper.resolve() / "Media" / "dr2"  # never outside DIR


def test_project_errors(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ProjectError, match="is a file"):
        project_layout(f, "generic")
    with pytest.raises(ProjectError, match="unknown DAW"):
        project_layout(tmp_path, "logic")
    with pytest.raises(ProjectError, match="does not exist"):
        project_layout(tmp_path / "a" / "b", "generic")
    (tmp_path / "dr2studio.json").write_text("{broken")
    with pytest.raises(ProjectError, match="cannot read manifest"):
        project_layout(tmp_path, "generic")


def test_write_take_files_and_manifest(tmp_path: Path) -> None:
    layout = project_layout(tmp_path / "proj", "ableton")
    stems = {"mix": (_tone(0.2, channels=2), SR), "vocals": (_tone(0.2, 330.0, channels=2), SR)}
    e1 = write_take(layout, "my song", stems, {"position_seconds": 4.0, "lyrics": "la", "seed": 3, "settings": {"steps": 2}})
    e2 = write_take(layout, "my song", stems, {"position": 8.0, "lyrics": "la", "seed": 4, "settings": {}})  # schema-1 key
    assert e1["take"] == "my_song" and e2["take"] == "my_song-2"
    root = layout.root
    assert (root / "Samples/Imported/dr2/my_song/mix.wav").is_file()
    assert (root / "Samples/Imported/dr2/my_song-2/vocals.wav").is_file()
    manifest = json.loads((root / "dr2studio.json").read_text())
    assert manifest == read_manifest(layout)
    assert [t["take"] for t in manifest["takes"]] == ["my_song", "my_song-2"]
    assert manifest["takes"][0]["files"] == {"mix": "Samples/Imported/dr2/my_song/mix.wav",
                                             "vocals": "Samples/Imported/dr2/my_song/vocals.wav"}
    assert manifest["takes"][1]["position_seconds"] == 8.0 and manifest["takes"][0]["seed"] == 3
    assert manifest["schema_version"] == 2 and manifest["sample_rate"] == SR == manifest["takes"][0]["sample_rate"]
    assert sf.info(str(root / "Samples/Imported/dr2/my_song/mix.wav")).subtype == "PCM_24"
    leftovers = [p for p in root.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_take_names_cannot_escape_the_project(tmp_path: Path) -> None:
    layout = project_layout(tmp_path / "proj", "generic")
    entry = write_take(layout, "../../etc/evil", {"mix": (_tone(0.05), SR)}, {})
    written = [p for p in tmp_path.rglob("*.wav")]
    assert len(written) == 1 and layout.takes_dir in written[0].parents
    assert "/" not in entry["take"] and not entry["take"].startswith(".")


def test_failed_take_leaves_nothing(tmp_path: Path) -> None:
    layout = project_layout(tmp_path / "proj", "generic")
    bad = {"mix": (_tone(0.1), SR), "vocals": (torch.full((1, 10), float("nan")), SR)}
    with pytest.raises(AudioError):
        write_take(layout, "t", bad, {})
    assert not (layout.takes_dir / "t").exists()
    assert [p for p in layout.takes_dir.iterdir()] == []
    assert not layout.manifest_path.exists()
