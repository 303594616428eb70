"""Issue 18: a sidecar cannot smuggle bad state into a take.

Its ``state_sha256`` covers latents, tokens, style and every metadata field; every value is validated on
load, for old sidecars (written before the checksum) too. One rule: a sidecar that fails either is refused
with a one-line :class:`SidecarError` naming the sidecar and the field; nothing renders from it. A sidecar
whose audio changed is still ignored with a warning (the audio was edited: a normal workflow).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from dr2studio.cli import main
from dr2studio.song import MAX_LATENT_ABS, SidecarError, Song, _state_sha256, sidecar_path

SR = 48000


def _song(**settings: object) -> Song:
    gen = torch.Generator().manual_seed(0)
    return Song(audio=torch.rand(1, SR, generator=gen) - 0.5, sample_rate=SR,
                latents=torch.randn(1, 5, 32, generator=gen), tokens=torch.tensor([3, 511, 7, 511]),
                lyrics="[verse]\nhi", style=torch.randn(512, generator=gen), seed=3,
                settings={"steps": 8, "cfg_strength": 2.0, "edits": [], "tempo_bpm": 120.0, **settings})


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(sidecar_path(path)), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _rewrite(path: Path, *, tensors: dict | None = None, meta: dict | None = None, checksum: str = "keep") -> None:
    """Rewrite the sidecar of ``path`` with some tensors/metadata changed. ``checksum``: ``keep`` the stored one
    (a naive edit), ``recompute`` it (an attacker who read this code), or ``drop`` it (an old sidecar)."""
    old_tensors, old_meta = _read(path)
    old_tensors.update(tensors or {})
    old_meta.update(meta or {})
    if checksum == "drop":
        old_meta.pop("state_sha256")
    elif checksum == "recompute":
        old_meta["state_sha256"] = _state_sha256(old_tensors, old_meta)
    save_file(old_tensors, str(sidecar_path(path)), metadata=old_meta)


@pytest.fixture
def take(tmp_path: Path) -> Path:
    return _song().save(tmp_path / "take.wav")


def test_checksum_is_written_and_a_good_sidecar_loads(take: Path) -> None:
    _, meta = _read(take)
    assert len(meta["state_sha256"]) == 64
    song = Song.load(take)
    assert song.has_latents and song.settings["tempo_bpm"] == 120.0 and song.tokens.tolist() == [3, 511, 7, 511]


def test_scaled_latents_are_refused(take: Path) -> None:
    """The case of the issue: latents x1000 rendered a clipped, garbage take with exit 0."""
    latents = _read(take)[0]["latents"] * 1000
    _rewrite(take, tensors={"latents": latents})
    with pytest.raises(SidecarError, match=r"take.dr2.safetensors: state_sha256 does not match"):
        Song.load(take)
    _rewrite(take, tensors={"latents": latents}, checksum="recompute")  # checksum forged: the range still holds
    with pytest.raises(SidecarError, match=rf"take.dr2.safetensors: latents reach .* \(at most {MAX_LATENT_ABS:g}\)"):
        Song.load(take)


@pytest.mark.parametrize("change", [
    {"tensors": {"latents": torch.zeros(1, 5, 32)}},
    {"tensors": {"tokens": torch.tensor([3, 511, 8, 511])}},
    {"tensors": {"style": torch.zeros(512)}},
    {"meta": {"lyrics": "[verse]\nsomething else"}},
    {"meta": {"seed": "4"}},
    {"meta": {"model": "another-model"}},
    {"meta": {"settings": json.dumps({"steps": 9, "cfg_strength": 2.0, "edits": [], "tempo_bpm": 120.0})}},
])
def test_any_change_to_the_sidecar_breaks_its_checksum(take: Path, change: dict) -> None:
    _rewrite(take, **change)
    with pytest.raises(SidecarError, match="state_sha256 does not match") as err:
        Song.load(take)
    assert "\n" not in str(err.value) and "delete or rename it" in str(err.value)


@pytest.mark.parametrize("field,change", [
    ("settings.tempo_bpm", {"meta": {"settings": json.dumps({"tempo_bpm": 1e12})}}),  # the case
    ("settings.tempo_bpm", {"meta": {"settings": json.dumps({"tempo_bpm": "fast"})}}),
    ("settings.edits", {"meta": {"settings": json.dumps({"edits": {"kind": "extend"}})}}),  # the case
    ("settings.edits[1]", {"meta": {"settings": json.dumps({"edits": [{"kind": "crop"}, "extend"]})}}),
    ("settings.edits[0]", {"meta": {"settings": json.dumps({"edits": [{"kind": 3}]})}}),
    ("settings.steps", {"meta": {"settings": json.dumps({"steps": 10**9})}}),
    ("settings.cfg_strength", {"meta": {"settings": json.dumps({"cfg_strength": float("nan")})}}),
    ("settings.duration", {"meta": {"settings": json.dumps({"duration": -3})}}),
    ("settings", {"meta": {"settings": json.dumps([1, 2])}}),
    ("settings", {"meta": {"settings": "{not json"}}),
    ("seed", {"meta": {"seed": "-1"}}),
    ("seed", {"meta": {"seed": "x" * 1000}}),
    ("latents", {"tensors": {"latents": torch.full((1, 5, 32), float("nan"))}}),
    ("latents", {"tensors": {"latents": torch.full((1, 5, 32), float("inf"))}}),
    ("latents", {"tensors": {"latents": torch.zeros(2, 5, 32)}}),
    ("latents", {"tensors": {"latents": torch.zeros(1, 5, 32, dtype=torch.int64)}}),
    ("tokens", {"tensors": {"tokens": torch.tensor([3, 100000])}}),
    ("tokens", {"tensors": {"tokens": torch.tensor([-1, 3])}}),
    ("tokens", {"tensors": {"tokens": torch.tensor([1.5, 3.0])}}),
    ("tokens", {"tensors": {"tokens": torch.zeros(2, 2, dtype=torch.long)}}),
    ("tokens", {"tensors": {"tokens": torch.ones(20000, dtype=torch.long)}}),
    ("style", {"tensors": {"style": torch.zeros(511)}}),
    ("style", {"tensors": {"style": torch.full((512,), float("nan"))}}),
])
@pytest.mark.parametrize("checksum", ["recompute", "drop"])
def test_bad_values_are_refused_naming_the_field(take: Path, field: str, change: dict, checksum: str) -> None:
    """With a forged checksum, and in an old sidecar without one: validation alone names the field."""
    _rewrite(take, checksum=checksum, **change)
    with pytest.raises(SidecarError) as err:
        Song.load(take)
    message = str(err.value)
    assert message.startswith(f"sidecar {sidecar_path(take)}: {field} ") and "\n" not in message and len(message) < 400


def test_old_sidecar_without_checksum_still_loads(take: Path) -> None:
    _rewrite(take, checksum="drop")
    song = Song.load(take)
    assert song.has_latents and song.seed == 3 and song.settings["steps"] == 8


def test_changed_audio_still_falls_back_to_the_audio(take: Path, caplog: pytest.LogCaptureFixture) -> None:
    audio, _ = sf.read(take)
    sf.write(take, audio * 0.5, SR, subtype="PCM_24")
    song = Song.load(take)
    assert not song.has_latents and "ignoring the sidecar" in caplog.text


def test_oversized_or_odd_sidecars_are_refused_before_reading(take: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dr2studio.song as song_module

    monkeypatch.setattr(song_module, "MAX_SIDECAR_BYTES", 1024)
    with pytest.raises(SidecarError, match=r"take.dr2.safetensors is \d+ bytes; the limit is 1024"):
        Song.load(take)
    monkeypatch.undo()
    side = sidecar_path(take)
    side.unlink()
    side.mkdir()
    with pytest.raises(SidecarError, match="is not a regular file"):
        Song.load(take)


def test_extra_tensors_are_ignored_not_loaded(take: Path) -> None:
    tensors, meta = _read(take)
    tensors["payload"] = torch.zeros(1000)
    save_file(tensors, str(sidecar_path(take)), metadata=meta)
    assert Song.load(take).has_latents


def test_cli_extend_refuses_a_tampered_sidecar_in_one_line(take: Path, tmp_path: Path) -> None:
    """A real CLI run: non-zero exit, one error line naming the sidecar and the field, no file written."""
    _rewrite(take, meta={"settings": json.dumps({"tempo_bpm": 1e12, "edits": "lots"})}, checksum="drop")
    (tmp_path / "next.lrc").write_text("[chorus]\nla la\n", encoding="utf-8")
    np.save(tmp_path / "style.npy", np.zeros(512, dtype=np.float32))
    out = tmp_path / "longer.wav"
    result = CliRunner().invoke(main, ["extend", str(take), "--lyrics", str(tmp_path / "next.lrc"), "--seconds", "1",
                                       "--steps", "2", "-o", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "take.dr2.safetensors: settings.tempo_bpm must be" in errors[0], result.stderr
    assert not out.exists() and not sidecar_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.lrc", "style.npy", "take.dr2.safetensors", "take.wav"]


def test_cli_generate_refuses_ten_megabytes_of_lyrics_before_any_model(tmp_path: Path) -> None:
    """The case of the issue (OOM-killed at 22 GB): now a one-line error from the file's size, nothing written."""
    big = tmp_path / "big.txt"
    big.write_bytes(b"la la la la la la la\n" * 500_000)
    out = tmp_path / "song.wav"
    result = CliRunner().invoke(main, ["generate", "--lyrics", str(big), "--duration", "2", "--steps", "2",
                                       "--model", str(tmp_path / "no-such-model"), "-o", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "big.txt: file is 10500000 bytes; the limit for lyrics is" in errors[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]


def test_a_stated_tempo_outside_the_request_limit_is_not_kept() -> None:
    """Our own takes must load: a style saying "10 bpm" must not leave a tempo the sidecar check refuses."""
    from dr2studio.style.tags import parse_style_tags

    assert parse_style_tags("pop, 10 bpm").tempo is None
    assert parse_style_tags("pop, 20 bpm").tempo == 20.0 and parse_style_tags("pop, 999 bpm").tempo == 999.0
