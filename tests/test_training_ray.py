"""The training stages on one real local Ray instance (2 CPU workers, gloo).

Slow on a 2-core machine: one Ray instance serves every test here; each stage runs once, tiny.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

ray = pytest.importorskip("ray")

from dr2studio.data import Shard, load_index  # noqa: E402
from training import block_fm, common, cppo, faults, prepare_data, vae  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    torch.set_num_threads(1)  # tiny models on a busy 2-core machine: extra threads only spin
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_worker_niceness", "0")  # Ray's default niceness 15 starves workers on a shared machine
    for attempt in range(3):  # a loaded machine can miss Ray's 30 s node-startup deadline once
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()
    mp.undo()


# --------------------------------------------------------------------------- prepare_data


@pytest.fixture()
def encoder_dir(tmp_path):
    """A small real encoder (8 kHz in, hop 1600 -> 5 frames/s), a tag style encoder and a phoneme table."""
    from dr2studio.models.encoder import EncoderConfig, MusicEncoder, save_encoder
    from dr2studio.style import TagStyleEncoder

    d = tmp_path / "model"
    torch.manual_seed(0)
    save_encoder(MusicEncoder(EncoderConfig(sample_rate=8000, channels=4, channel_mults=[1, 2], strides=[40, 40])), d)
    TagStyleEncoder().save(d)
    (d / "vocab.json").write_text(json.dumps({"vocab": {",": 0, ".": 1, "_": 4, "l": 5, "ɑː": 6, "ə": 7, "a": 8}}))
    return d


def test_prepare_writes_shards_and_reports_bad_rows(tmp_path, encoder_dir):
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
    cfg = prepare_data.PrepareConfig(
        manifest=str(manifest), output=str(tmp_path / "shards"), min_seconds=2.0, max_seconds=4.0, shard_size=2,
        encoder_kwargs={"model_dir": str(encoder_dir)}, tokenizer_kwargs={"vocab": str(encoder_dir)},
        style_kwargs={"model_dir": str(encoder_dir)},
        ssl=[{"name": "mel", "cls": "training.prepare_data:MelFeatures", "kwargs": {"dim": 16}}],
    )
    index = prepare_data.prepare(cfg)

    assert index.num_examples == 3 and len(index.shards) == 2
    assert index.latent_rate == 5.0 and index.latent_channels == 64 and index.style_dim == 512 and index.ssl == {"mel": 16}
    assert index.report["bad"]["counts"] == {"too short": 1, "unreadable audio": 1, "empty lyrics": 1, "malformed json": 1}
    assert load_index(tmp_path / "shards").report["kept"] == 3
    examples = [ex for info in index.shards for ex in Shard(tmp_path / "shards" / info.file)]
    assert sorted(e.id for e in examples) == ["s0", "s1", "s2"]
    for ex in examples:
        assert ex.latents.shape == (20, 64)  # cut to max_seconds=4 s at 5 frames/s
        assert ex.ssl["mel"].shape == (20, 16)
        assert ex.tokens[:2].tolist() == [503, 511] and ex.tokens[-1] == 511 and len(ex.tokens) > 3
        assert torch.isfinite(ex.latents).all() and ex.style.norm() > 0
        assert ex.tempo == 120.0  # the style text's tempo travels with the song (for a tempo-clock DiT)
    # the pipeline's latents are the encoder's latents for the decoded, resampled audio
    enc = prepare_data.VaeEncoder(str(encoder_dir))
    audio = prepare_data.load_audio(songs / "s1.wav", 8000, 4.0)
    direct = enc(audio[None], np.array([audio.shape[0]]))[0]
    assert np.allclose(direct, next(e for e in examples if e.id == "s1").latents.numpy(), atol=1e-4)


# --------------------------------------------------------------------------- block flow matching


def _pattern_share(latents: torch.Tensor) -> float:
    """Share of latent energy in the training songs' pattern (each frame a sinusoid over channels)."""
    x = latents.reshape(-1, latents.shape[-1]).float()
    phi = torch.linspace(0, math.pi, x.shape[-1])
    q, _ = torch.linalg.qr(torch.stack([torch.sin(phi), torch.cos(phi)], 1))
    return float((x @ q).pow(2).sum() / x.pow(2).sum())


def test_block_fm_resumes_after_a_killed_worker_and_exports_a_studio_model(tmp_path, monkeypatch):
    from dr2studio.checkpoints import load_dit
    from dr2studio.lyrics import encode_lyrics
    from dr2studio.models.dit import DiT
    from dr2studio.studio import Studio
    from dr2studio.style import TagStyleEncoder
    from dr2studio.lab.testing import build_tiny_model
    from training.export import export_dit
    from training.smoke_data import make_latent_dataset

    # conditions from a real front end: the tiny model's phoneme table and tag style encoder
    assets = build_tiny_model(tmp_path / "assets", style_encoder=True)
    styles = torch.stack([TagStyleEncoder.load(assets).embed_text(t) for t in ("pop, 90 bpm", "rock, 140 bpm")])
    lyrics = "[verse]\nhello world\nla la la"
    data = make_latent_dataset(tmp_path / "data", num_songs=16, per_shard=8, styles=styles,
                               tokens=torch.tensor(encode_lyrics(lyrics, assets)))
    args = ["--smoke", "--storage-path", str(tmp_path), "--name", "bfm", "--set", f"data={data}",
            "--set", f"assets_dir={assets}", "--set", "max_failures=1"]
    monkeypatch.setenv(faults.KILL_AT_STEP_ENV, "15")  # test-only fault injection: rank 1 dies at step 15
    out = block_fm.main(args)
    cfg, _ = common.parse_args(block_fm.BlockFMTrainConfig, block_fm.smoke_config, args)
    steps = [m["step"] for m in common.read_metrics(cfg)]
    # rank 1 died at step 15; the group restarted from checkpoint 10 and counted on from 11
    restart = steps.index(11, steps.index(11) + 1)
    assert steps[restart - 1] >= 14 and steps[restart:] == list(range(11, 31))
    losses = [m["loss"] for m in common.read_metrics(cfg)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, "the loss must go down on the synthetic data"
    last = common.read_metrics(cfg)[-1]
    assert last["frames_per_s"] > 0 and last["lr"] == pytest.approx(cfg.lr) and last["repa_loss"] > 0
    kept = sorted(p.name for p in (tmp_path / "bfm").glob("checkpoint_0*"))
    assert kept == ["checkpoint_00000020", "checkpoint_00000030"]  # num_to_keep=2
    meta = json.loads((tmp_path / "bfm" / "checkpoint_00000030" / "meta.json").read_text())
    assert meta["step"] == 30 and meta["position"]["epoch"] >= 1
    first = load_dit(out, device="cpu").state_dict()

    # starting the same run again with more steps continues from its newest checkpoint
    block_fm.main(args + ["--max-steps", "160", "--set", "checkpoint_every=80", "--set", "report_every=40"])
    steps = [m["step"] for m in common.read_metrics(cfg)]
    assert steps[steps.index(30) + 1 :] == list(range(31, 161))
    trained = load_dit(out, device="cpu").state_dict()
    assert any(not torch.equal(first[k], trained[k]) for k in first)

    # the exported folder is a complete model: Studio loads it and generates the learnt pattern
    torch.manual_seed(0)
    untrained = export_dit(DiT(cfg.dit_config()).state_dict(), cfg.dit_config(), tmp_path / "untrained", assets_dir=str(assets))
    shares = {}
    for name, model_dir in (("trained", out), ("untrained", untrained)):
        song = Studio.load(model_dir, device="cpu").generate(lyrics, "pop, 90 bpm", duration=4, steps=8, seed=0)
        assert song.audio.shape[-1] == song.latents.shape[1] * 9600 and torch.isfinite(song.audio).all()
        shares[name] = _pattern_share(song.latents)
    assert shares["trained"] > 0.5 > 0.2 > shares["untrained"], shares


# --------------------------------------------------------------------------- VAE


def test_vae_smoke_trains_generator_and_discriminators(tmp_path):
    from dr2studio.models.bigvgan import load_decoder
    from dr2studio.models.encoder import load_encoder

    args = ["--smoke", "--storage-path", str(tmp_path), "--name", "vae"]
    out = vae.main(args)
    cfg, _ = common.parse_args(vae.VAETrainConfig, vae.smoke_config, args)
    metrics = common.read_metrics(cfg)
    assert [m["step"] for m in metrics] == list(range(1, 21))
    mel = [m["loss_mel"] for m in metrics]
    assert sum(mel[-5:]) / 5 < 0.85 * sum(mel[:3]) / 3
    assert all("loss_disc" in m and "loss_fm" in m and m["samples_per_s"] > 0 for m in metrics)
    state = torch.load(tmp_path / "vae" / "checkpoint_00000020" / "state.pt", weights_only=True)
    assert set(state["optimizers"]) == {"generator", "discriminator"}
    enc, dec = load_encoder(out, device="cpu"), load_decoder(out, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        audio = dec(enc(torch.zeros(1, 1, 1600)).transpose(1, 2))
    assert audio.shape == (1, 1, 3200)


# --------------------------------------------------------------------------- CPPO


def test_cppo_smoke_trains_each_group_and_merges(tmp_path):
    from dr2studio.checkpoints import load_dit

    args = ["--smoke", "--storage-path", str(tmp_path), "--name", "cppo"]
    out = cppo.main(args)
    cfg, _ = common.parse_args(cppo.CPPOTrainConfig, cppo.smoke_config, args)
    states = []
    for group in ("musicality_lyrics", "style_quality"):
        run = common.read_metrics(cppo.dataclasses.replace(cfg, name=f"cppo-{group}"))
        assert [m["step"] for m in run] == list(range(1, 9))
        assert run[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # policy == reference at the start
        assert sum(m["loss"] for m in run[-3:]) / 3 < run[0]["loss"] - 0.05
        states.append(cppo._policy_state(tmp_path / f"cppo-{group}" / "checkpoint_00000008"))
    merged = load_dit(out, device="cpu").state_dict()
    for k in ("proj_out.weight", "transformer_blocks.0.mlp.up_proj.weight"):
        assert torch.allclose(merged[k], (states[0][k] + states[1][k]) / 2, atol=1e-6)
    info = json.loads((out / "dr2studio.json").read_text())["training"]["cppo"]
    counts = info["groups"]["musicality_lyrics"]["pairs_per_case"]
    assert len(set(counts.values())) == 1 and counts["both"] > 0
