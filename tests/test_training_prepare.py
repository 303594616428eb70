"""Ray Data preparation: manifest -> decoded, VAE-encoded, tokenised shards with a bad-row report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

ray = pytest.importorskip("ray")

from dr2studio.data import Shard, load_index  # noqa: E402
from dr2studio.models.encoder import EncoderConfig, MusicEncoder, save_encoder  # noqa: E402
from dr2studio.style import TagStyleEncoder  # noqa: E402
from training import prepare_data  # noqa: E402


@pytest.fixture()
def model_dir(tmp_path):
    """A small real encoder (8 kHz in, hop 1600 -> 5 frames/s), a tag style encoder and a phoneme table."""
    d = tmp_path / "model"
    torch.manual_seed(0)
    save_encoder(MusicEncoder(EncoderConfig(sample_rate=8000, channels=4, channel_mults=[1, 2], strides=[40, 40])), d)
    TagStyleEncoder().save(d)
    (d / "vocab.json").write_text(json.dumps({"vocab": {",": 0, ".": 1, "_": 4, "l": 5, "ɑː": 6, "ə": 7, "a": 8}}))
    return d


@pytest.mark.ray
@pytest.mark.slow
def test_prepare_writes_shards_and_reports_bad_rows(tmp_path, model_dir):
    songs = tmp_path / "songs"
    songs.mkdir()
    sr = 16000
    t = np.arange(int(5.3 * sr)) / sr
    lines = []
    for i in range(3):
        sf.write(songs / f"s{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), sr)
        lines.append({"audio": f"songs/s{i}.wav", "lyrics": "[verse]\nla la la", "style": "pop, 120 bpm", "language": "en"})
    sf.write(songs / "short.wav", np.zeros(sr, np.float32), sr)
    (songs / "broken.wav").write_bytes(b"RIFF0000WAVEnot really")
    lines += [
        {"audio": "songs/short.wav", "lyrics": "la", "style": "pop"},
        {"audio": "songs/broken.wav", "lyrics": "la", "style": "pop"},
        {"audio": "songs/s0.wav", "id": "nolyrics", "lyrics": "  ", "style": "pop"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n{oops\n", encoding="utf-8")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = prepare_data.PrepareConfig(
            manifest=str(manifest), output=str(tmp_path / "shards"), min_seconds=2.0, max_seconds=4.0, shard_size=2,
            encoder_kwargs={"model_dir": str(model_dir)}, tokenizer_kwargs={"vocab": str(model_dir)},
            style_kwargs={"model_dir": str(model_dir)},
            ssl=[{"name": "mel", "cls": "training.prepare_data:MelFeatures", "kwargs": {"dim": 16}}],
        )
        index = prepare_data.prepare(cfg)
    finally:
        ray.shutdown()

    assert index.num_examples == 3 and len(index.shards) == 2
    assert index.latent_rate == 5.0 and index.latent_channels == 64 and index.style_dim == 512 and index.ssl == {"mel": 16}
    bad = index.report["bad"]["counts"]
    assert bad == {"too short": 1, "unreadable audio": 1, "empty lyrics": 1, "malformed json": 1}
    assert load_index(tmp_path / "shards").report["kept"] == 3
    examples = [ex for info in index.shards for ex in Shard(tmp_path / "shards" / info.file)]
    assert sorted(e.id for e in examples) == ["s0", "s1", "s2"]
    for ex in examples:
        assert ex.latents.shape == (20, 64)  # cut to max_seconds=4 s at 5 frames/s
        assert ex.ssl["mel"].shape == (20, 16)
        assert ex.tokens[:2].tolist() == [503, 511] and ex.tokens[-1] == 511 and len(ex.tokens) > 3
        assert torch.isfinite(ex.latents).all() and ex.style.norm() > 0
    # the encoder is deterministic: the same audio gives the same latents as encoding it directly
    enc = prepare_data.VaeEncoder(str(model_dir))
    audio = prepare_data.load_audio(songs / "s1.wav", 8000, 4.0)
    direct = enc(audio[None], np.array([audio.shape[0]]))[0]
    got = next(e for e in examples if e.id == "s1").latents.numpy()
    assert np.allclose(direct, got, atol=1e-4)
