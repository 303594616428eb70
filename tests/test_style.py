"""Style embeddings: precomputed vectors, MuQ-MuLan plumbing (fake hub cache, fake muq), tag encoder."""
from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from dr2studio.config import ConfigError
from dr2studio.style import (
    MuQStyleEncoder,
    MuQUnavailableError,
    StyleError,
    TagStyleConfig,
    TagStyleEncoder,
    load_style_embedding,
    load_style_encoder,
    parse_style_tags,
    prepare_style_audio,
    resolve_muq_weights,
    save_style_embedding,
    style_embedding,
)

REPO = "OpenMuQ/MuQ-MuLan-large"


# ---------------------------------------------------------------- precomputed vectors

def test_precomputed_vectors_roundtrip_and_validation(tmp_path):
    vec = torch.randn(512)
    for name in ("s.npy", "s.safetensors"):
        save_style_embedding(vec, tmp_path / name)
        assert torch.equal(load_style_embedding(tmp_path / name), vec)
    np.save(tmp_path / "row.npy", vec.numpy()[None].astype(np.float16))
    assert load_style_embedding(tmp_path / "row.npy").dtype == torch.float32
    np.save(tmp_path / "short.npy", np.zeros(256, np.float32))
    with pytest.raises(StyleError, match=r"short.npy: expected a vector of 512 values.*\(256,\)"):
        load_style_embedding(tmp_path / "short.npy")
    bad = vec.clone()
    bad[3] = math.nan
    np.save(tmp_path / "nan.npy", bad.numpy())
    with pytest.raises(StyleError, match="NaN"):
        load_style_embedding(tmp_path / "nan.npy")
    from safetensors.torch import save_file

    save_file({"a": vec, "b": vec.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(StyleError, match="holds 2 tensors"):
        load_style_embedding(tmp_path / "two.safetensors")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(StyleError, match="cannot read"):
        load_style_embedding(tmp_path / "junk.npy")
    with pytest.raises(StyleError, match="not found"):
        style_embedding(str(tmp_path / "missing.npy"))
    assert torch.equal(style_embedding(str(tmp_path / "s.npy")), vec)  # no encoder needed


# ---------------------------------------------------------------- audio excerpt

def test_audio_excerpt_is_seeded_resampled_and_mono():
    sr = 48_000
    t = torch.arange(30 * sr) / sr
    stereo = torch.stack([t / 30, 0.5 * torch.ones_like(t)])  # a ramp marks where the excerpt starts
    a, rate = prepare_style_audio(stereo, sr, seed=1)
    b, _ = prepare_style_audio(stereo, sr, seed=1)
    c, _ = prepare_style_audio(stereo, sr, seed=2)
    assert rate == 24_000 and a.shape == (1, 240_000)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the excerpt is a contiguous 10 s window of the (resampled, channel-averaged) signal
    full = 0.5 * (torch.arange(30 * 24_000) / 24_000 / 30 + 0.5)
    start = int(torch.argmin((full - a[0, 5000]).abs())) - 5000
    assert 0 <= start <= 20 * 24_000
    assert torch.allclose(a[0, 5000:-5000], full[start + 5000:start + 240_000 - 5000], atol=1e-4)
    short, _ = prepare_style_audio(torch.zeros(2, 3 * sr), sr)
    assert short.shape == (1, 72_000)
    with pytest.raises(StyleError, match="sample_rate"):
        prepare_style_audio(torch.zeros(2, 100))


def test_audio_excerpt_mixes_channels():
    sr = 24_000
    x = torch.stack([torch.full((sr,), 0.2), torch.full((sr,), 0.6)])
    mono, _ = prepare_style_audio(x, sr)
    assert torch.allclose(mono, torch.full((1, sr), 0.4))


# ---------------------------------------------------------------- MuQ-MuLan adapter

def _fake_hub(root, repo=REPO, commit="0123456789abcdef0123456789abcdef01234567"):
    folder = root / "hub" / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    (snap / "config.json").write_text(json.dumps({"dim": 512}))
    (snap / "model.safetensors").write_bytes(b"\0" * 16)
    return snap


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _fake_hub(tmp_path)


def test_hub_cache_resolution_offline(offline_hub, tmp_path):
    assert resolve_muq_weights(REPO).resolve() == offline_hub.resolve()
    with pytest.raises(MuQUnavailableError, match="not available from the local hub cache"):
        resolve_muq_weights("OpenMuQ/not-downloaded")
    assert resolve_muq_weights(offline_hub) == offline_hub  # a local folder
    with pytest.raises(MuQUnavailableError, match="no config.json"):
        resolve_muq_weights(tmp_path)


def test_muq_missing_is_a_clear_error(monkeypatch, offline_hub):
    monkeypatch.setitem(sys.modules, "muq", None)  # as if not installed
    enc = load_style_encoder(None)
    assert isinstance(enc, MuQStyleEncoder)
    with pytest.raises(MuQUnavailableError, match=r"pip install 'dr2studio\[muq\]'"):
        enc.embed_text("calm piano")
    with pytest.raises(StyleError, match="needs a style encoder"):
        style_embedding("calm piano")


class _FakeMuLan(torch.nn.Module):
    """Stands in for the 2 GB MuQ-MuLan checkpoint: same call signature, deterministic outputs."""

    loaded_from: list[str] = []

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 512)
        self.calls: list[tuple] = []

    @classmethod
    def from_pretrained(cls, path):
        cls.loaded_from.append(path)
        torch.manual_seed(0)
        return cls()

    def forward(self, wavs=None, texts=None):
        if texts is not None:
            self.calls.append(("texts", list(texts)))
            feats = torch.tensor([[len(t), t.count(" "), ord(t[0]), 1.0] for t in texts])
        else:
            self.calls.append(("wavs", tuple(wavs.shape)))
            feats = torch.stack([wavs.mean(-1), wavs.std(-1), wavs.abs().max(-1).values, torch.ones(len(wavs))], -1)
        return torch.nn.functional.normalize(self.proj(feats), dim=-1)


def test_muq_adapter_with_fake_package(monkeypatch, offline_hub, tmp_path):
    fake = types.ModuleType("muq")
    fake.MuQMuLan = _FakeMuLan
    monkeypatch.setitem(sys.modules, "muq", fake)
    enc = MuQStyleEncoder(REPO, device="cpu")
    v = enc.embed_text("dreamy synthwave, 100 bpm")
    assert v.shape == (512,) and v.dtype == torch.float32 and abs(float(v.norm()) - 1) < 1e-5
    assert _FakeMuLan.loaded_from[-1] == str(offline_hub)
    wav = torch.randn(2, 48_000 * 25)
    a = enc.embed_audio(wav, 48_000, seed=3)
    assert enc._model().calls[-1] == ("wavs", (1, 240_000))
    assert torch.equal(a, enc.embed_audio(wav, 48_000, seed=3))
    # style_embedding routes text and audio files to the encoder
    import soundfile as sf

    sf.write(tmp_path / "ref.wav", wav[:, :48_000].T.numpy(), 48_000)
    assert style_embedding(str(tmp_path / "ref.wav"), enc).shape == (512,)
    assert torch.equal(style_embedding("dreamy synthwave, 100 bpm", enc), v)
    with pytest.raises(StyleError, match="style audio file not found"):
        style_embedding(str(tmp_path / "nope.wav"), enc)
    with pytest.raises(StyleError, match="non-empty"):
        enc.embed_text("  ")


# ---------------------------------------------------------------- tag encoder

def test_style_text_parsing():
    t = parse_style_tags("pop, 120 bpm, A minor, female vocal, piano, pad, bass, drums")
    assert t.tempo == 120 and t.key == 9 and t.mode == "minor"
    assert {"genre:pop", "vocal:female", "inst:piano", "inst:pad", "inst:bass", "inst:drums",
            "tempo:120", "key:9", "mode:minor"} == set(t.tags)
    t = parse_style_tags("Upbeat Hip-Hop track with 808 and synths in F# Major, 93bpm; late night vibes")
    assert {"genre:hip hop", "inst:808", "inst:synth", "mood:upbeat", "key:6", "mode:major"} <= set(t.tags)
    weights = t.as_dict()
    assert weights["tempo:90"] == pytest.approx(0.8) and weights["tempo:105"] == pytest.approx(0.2)
    assert t.unknown == ("late night vibes",) and any(tag.startswith("hash:") for tag in t.tags)
    assert parse_style_tags("Bb major, acoustic guitar").key == 10
    assert parse_style_tags("Am, instrumental").as_dict() == {"vocal:none": 1.0, "key:9": 1.0, "mode:minor": 1.0}
    assert parse_style_tags("").tags == ()
    assert "inst:guitar" not in parse_style_tags("electric guitar").tags


def test_tag_encoder_is_deterministic_and_meaningful():
    a, b = TagStyleEncoder(), TagStyleEncoder()
    text = "pop, 120 bpm, A minor, female vocal, piano, drums"
    va = a.embed_text(text)
    assert va.shape == (512,) and torch.equal(va, b.embed_text(text))
    assert abs(float(va.norm()) - 1.0) < 1e-5
    near = a.embed_text("pop, 122 bpm, A minor, female vocal, piano, drums")
    far = a.embed_text("pop, 170 bpm, A minor, female vocal, piano, drums")
    other = a.embed_text("metal, 120 bpm, E major, male vocal, electric guitar")
    assert va @ near > va @ far > va @ other
    assert not torch.equal(a.embed_text(""), torch.zeros(512))  # empty text is a valid style, not the null one
    batch = a.embed_texts([text, "jazz, piano"])
    assert torch.allclose(batch[0], va, atol=1e-6)
    seeded = TagStyleEncoder(TagStyleConfig(seed=5)).embed_text(text)
    assert not torch.allclose(seeded, va)


def test_tag_encoder_scale_sets_the_length_and_old_configs_stay_unit(tmp_path):
    text = "pop, 120 bpm, A minor, piano"
    unit = TagStyleEncoder().embed_text(text)
    big = TagStyleEncoder(TagStyleConfig(scale=22.5))
    assert abs(float(big.embed_text(text).norm()) - 22.5) < 1e-4
    assert torch.allclose(big.embed_text(text), 22.5 * unit, atol=1e-5)  # same direction
    big.save(tmp_path)
    assert abs(float(TagStyleEncoder.load(tmp_path).embed_text(text).norm()) - 22.5) < 1e-4
    cfg = json.loads((tmp_path / "style_encoder.json").read_text())
    del cfg["scale"]  # a file written before the field existed
    (tmp_path / "style_encoder.json").write_text(json.dumps(cfg))
    assert abs(float(TagStyleEncoder.load(tmp_path).embed_text(text).norm()) - 1.0) < 1e-5
    with pytest.raises(ConfigError, match="scale"):
        TagStyleConfig(scale=0.0).validate()


def test_tag_encoder_trains(tmp_path):
    enc = TagStyleEncoder(TagStyleConfig(hidden=32))
    target = torch.nn.functional.normalize(torch.randn(512), dim=0)
    texts = ["rock, 140 bpm", "rock, 150 bpm, drums"]
    start = float((enc.embed_texts(texts) @ target).mean().detach())
    for _ in range(30):  # plain gradient steps (torch.optim's first import alone takes seconds here)
        enc.zero_grad()
        (-(enc.embed_texts(texts) @ target).mean()).backward()
        with torch.no_grad():
            for p in enc.parameters():
                p -= 2.0 * p.grad
    assert float((enc.embed_texts(texts) @ target).mean().detach()) > start + 0.3


def test_tag_encoder_save_load_and_factory(tmp_path, monkeypatch):
    enc = TagStyleEncoder(TagStyleConfig(hidden=64, seed=3))
    with torch.no_grad():
        enc.proj.bias.add_(0.1)  # "trained" weights must survive the round trip
    enc.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style_encoder.json", "style_encoder.safetensors"]
    loaded = load_style_encoder(tmp_path)
    assert isinstance(loaded, TagStyleEncoder) and loaded.config.hidden == 64
    text = "folk, 100 bpm, G major, acoustic guitar"
    assert torch.equal(loaded.embed_text(text), enc.embed_text(text))
    assert torch.equal(style_embedding(text, loaded), enc.embed_text(text))
    (tmp_path / "style_encoder.safetensors").unlink()
    with pytest.raises(StyleError, match="missing"):
        load_style_encoder(tmp_path)
    assert isinstance(load_style_encoder(tmp_path / "elsewhere"), MuQStyleEncoder)


def test_tag_encoder_reads_audio_through_tempo_and_key(tmp_path):
    import soundfile as sf

    sr, bpm = 22_050, 120
    t = np.arange(8 * sr) / sr
    tone = 0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 277.18 * t) + np.sin(2 * np.pi * 329.63 * t))
    clicks = np.zeros_like(t)
    for k in range(int(8 * bpm / 60)):
        i = int(k * 60 / bpm * sr)
        clicks[i:i + 400] += np.hanning(400)
    sf.write(tmp_path / "ref.wav", (tone * (0.5 + clicks)).astype(np.float32), sr)
    enc = TagStyleEncoder()
    v = style_embedding(str(tmp_path / "ref.wav"), enc)
    assert v.shape == (512,)
    assert v @ enc.embed_text("120 bpm, A major") > v @ enc.embed_text("70 bpm, Eb minor")
