"""The tempo clock: an optional DiT input that tells every latent frame its beat phase.

What a user relies on: the released architecture is untouched when the clock is off; with it on,
training and the KV-cached sampler see the same clock (so what is learned is what is sampled),
the guidance branch sees none, a song with no stated tempo samples as without a clock, and a
DiT trained without a clock can be fine-tuned with one starting from exactly its old outputs.
"""
from __future__ import annotations

import math

import pytest
import torch

from dr2studio.config import ConfigError
from dr2studio.flow.block_fm import BlockFlowMatching
from dr2studio.flow.sampler import BlockSampler, SamplerSettings, sample_latents
from dr2studio.models.dit import DiT, DiTConfig, tempo_clock
from dr2studio.song import Song

PERIODS = [4.0, 1.0, 0.5]
CFG = DiTConfig(dim=48, depth=2, heads=4, ff_mult=2, mel_dim=6, text_num_embeds=520, block_size=4,
                tempo_clock=PERIODS)


def _clocked_model(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(CFG).eval()
    torch.nn.init.normal_(model.clock_embed.weight, std=0.5)  # a trained clock is not zero
    return model


def test_clock_phase_repeats_every_period_and_is_zero_without_tempo() -> None:
    bpf = torch.tensor([0.05, float("nan")])  # 120 bpm at 40 frames/s; no tempo
    feats = tempo_clock(0, 200, bpf, PERIODS)
    assert feats.shape == (2, 200, 6)
    assert torch.equal(feats[1], torch.zeros(200, 6))
    # a beat is 20 frames: the 1-beat sine/cosine repeat every 20, the 4-beat ones every 80
    assert torch.allclose(feats[0, 20:40, [1, 4]], feats[0, 0:20, [1, 4]], atol=1e-5)
    assert torch.allclose(feats[0, 80:160, [0, 3]], feats[0, 0:80, [0, 3]], atol=1e-5)
    assert not torch.allclose(feats[0, 40:80, [0, 3]], feats[0, 0:40, [0, 3]], atol=1e-2)
    assert torch.allclose(feats[0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))  # frame 0 is beat 0
    # a window starting later is the same clock, shifted
    assert torch.allclose(tempo_clock(37, 10, bpf[:1], PERIODS), feats[:1, 37:47], atol=1e-5)


def test_released_architecture_has_no_clock_and_rejects_bad_periods() -> None:
    plain = DiT(DiTConfig(dim=48, depth=2, heads=4, ff_mult=2, mel_dim=6, text_num_embeds=520, block_size=4))
    assert plain.clock_embed is None
    assert not any(k.startswith("clock_embed") for k in plain.state_dict())
    x = torch.randn(1, 8, 6)
    assert torch.equal(plain.embed_latents(x, 0, torch.tensor([0.05])), plain.embed_latents(x))
    for bad in ([0.0], [-1.0], [float("inf")], "1"):
        with pytest.raises(ConfigError, match="tempo_clock"):
            DiTConfig(tempo_clock=bad).validate()  # type: ignore[arg-type]
    assert DiTConfig.from_dict(CFG.to_dict()).tempo_clock == PERIODS


def test_training_forward_equals_cached_sampler_velocity_with_the_clock() -> None:
    model = _clocked_model()
    fm = BlockFlowMatching(model)
    b, nb = CFG.block_size, 4
    tokens = torch.randint(1, 500, (1, 7))
    style = torch.randn(1, 512)
    bpf = torch.tensor([0.3])
    clean = torch.randn(1, nb * b, CFG.mel_dim)
    z0 = torch.randn_like(clean)
    t_blocks = torch.rand(1, nb)
    t_frames = t_blocks.repeat_interleave(b, dim=1)
    noisy = (1 - t_frames[..., None]) * z0 + t_frames[..., None] * clean
    valid_t, valid_f = torch.ones(1, 7, dtype=torch.bool), torch.ones(1, nb * b, dtype=torch.bool)
    with torch.no_grad():
        v_train, _ = fm.velocity(clean, noisy, t_frames, tokens, style, valid_t, valid_f, beats_per_frame=bpf)
        v_plain, _ = fm.velocity(clean, noisy, t_frames, tokens, style, valid_t, valid_f)
    assert not torch.allclose(v_train, v_plain, atol=1e-3)  # the clock reaches the output
    for i in range(nb):
        sampler = BlockSampler(model, tokens, style, nb * b, SamplerSettings(steps=2, cfg_strength=0.0),
                               prefix=clean[:, : i * b] if i else None, beats_per_frame=bpf)
        sampler.prepare()
        with torch.inference_mode():
            v_cache = sampler.velocity(noisy[:, i * b : (i + 1) * b], t_blocks[0, i], i * b)
        assert torch.allclose(v_cache, v_train[:, i * b : (i + 1) * b], atol=1e-5), i


def test_guidance_branch_has_no_clock_and_no_tempo_means_no_clock() -> None:
    model = _clocked_model(1)
    tokens = torch.randint(1, 500, (1, 5))
    style = torch.randn(1, 512)
    kw = dict(steps=3, cfg_strength=2.0)

    def run(bpf: torch.Tensor | None, **extra: object) -> torch.Tensor:
        return sample_latents(model, tokens, style, 16, generator=torch.Generator().manual_seed(3),
                              beats_per_frame=bpf, **kw, **extra)  # type: ignore[arg-type]

    with_clock, without = run(torch.tensor([0.2])), run(None)
    assert not torch.allclose(with_clock, without, atol=1e-3)
    assert torch.equal(run(torch.tensor([math.nan])), without)
    # the unconditional rows are exactly a clock-free model's
    sampler = BlockSampler(model, tokens, style, 16, SamplerSettings(steps=3), beats_per_frame=torch.tensor([0.2]))
    frames = torch.randn(1, 4, CFG.mel_dim)
    with torch.inference_mode():
        e = sampler._embed(frames, 4)
        plain = model.embed_latents(frames)
    assert torch.equal(e[1:], plain) and not torch.allclose(e[:1], plain)
    with pytest.raises(ValueError, match="beats_per_frame"):
        BlockSampler(model, tokens, style, 16, beats_per_frame=torch.tensor([0.2, 0.3]))
    with pytest.raises(ValueError, match="positive"):
        BlockSampler(model, tokens, style, 16, beats_per_frame=torch.tensor([-0.2]))


def test_loss_sees_the_clock_and_drops_it_with_the_style() -> None:
    model = _clocked_model(2)
    torch.nn.init.normal_(model.clock_embed.weight, std=5.0)
    b = CFG.block_size
    lat = torch.randn(2, 3 * b, CFG.mel_dim)
    args = (lat, torch.tensor([3 * b, 2 * b]), torch.randint(1, 500, (2, 5)), torch.tensor([5, 3]), torch.randn(2, 512))

    def loss(bpf: torch.Tensor | None, dropout: float) -> float:
        fm = BlockFlowMatching(model)
        fm.config.style_dropout = dropout
        with torch.no_grad():
            return float(fm(*args, generator=torch.Generator().manual_seed(0), beats_per_frame=bpf).loss)

    bpf = torch.tensor([0.25, 0.1])
    assert loss(bpf, 0.0) != pytest.approx(loss(None, 0.0))
    assert loss(bpf, 1.0) == pytest.approx(loss(None, 1.0))  # dropped style: no clock either


def test_fine_tuning_adds_a_zero_clock_to_a_trained_dit(tmp_path) -> None:
    from dr2studio.checkpoints import save_dit
    from training.block_fm import BlockFMTrainConfig, build_dit

    torch.manual_seed(4)
    plain_cfg = DiTConfig(dim=48, depth=2, heads=4, ff_mult=2, mel_dim=6, text_num_embeds=520, block_size=4)
    plain = DiT(plain_cfg).eval()
    save_dit(plain, tmp_path)
    cfg = BlockFMTrainConfig(name="t", init_from=str(tmp_path), model={"tempo_clock": PERIODS})
    model = build_dit(cfg).eval()
    assert model.config.tempo_clock == PERIODS and torch.equal(model.clock_embed.weight, torch.zeros(512, 6))
    x = torch.randn(1, 8, 6)
    assert torch.equal(model.embed_latents(x, 0, torch.tensor([0.05])), plain.embed_latents(x))
    assert cfg.dit_config().tempo_clock == PERIODS  # and so the export records it
    save_dit(model, tmp_path / "clocked")
    with pytest.raises(ConfigError, match="cannot change"):
        build_dit(BlockFMTrainConfig(name="t", init_from=str(tmp_path / "clocked"), model={"tempo_clock": [1.0]}))


def test_studio_drives_the_clock_from_the_style_text_and_keeps_it_for_extend(tmp_path) -> None:
    from dr2studio.checkpoints import load_dit, save_dit
    from dr2studio.studio import Studio, StudioError
    from dr2studio.lab.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "m", style_encoder=True)
    plain = load_dit(path, device="cpu", dtype=torch.float32)
    config = DiTConfig.from_dict(dict(plain.config.to_dict(), tempo_clock=PERIODS))
    clocked = DiT(config)
    clocked.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(clocked.clock_embed.weight, std=2.0, generator=torch.Generator().manual_seed(0))
    save_dit(clocked, path)
    studio = Studio.load(path)
    lyrics, kw = "[verse]\nhello world\n", dict(steps=2, seed=7)

    fast = studio.generate(lyrics, "pop, 120 bpm, piano", 2.0, **kw)
    assert fast.settings["tempo_bpm"] == 120.0
    assert not torch.equal(fast.latents, studio.generate(lyrics, "pop, piano", 2.0, **kw).latents)
    assert Studio.stated_tempo("pop, piano") is None and Studio.stated_tempo("ref.wav") is None
    # an embedding states no tempo: given explicitly, the take is the text prompt's
    vec = studio.style_embedding("pop, 120 bpm, piano")
    assert torch.equal(studio.generate(lyrics, vec, 2.0, tempo=120, **kw).latents, fast.latents)
    for bad in (5, float("nan"), "fast"):
        with pytest.raises(StudioError, match="tempo"):
            studio.generate(lyrics, vec, 2.0, tempo=bad, **kw)

    longer = studio.extend(fast, "[chorus]\nla la\n", seconds=1.0, **kw)
    assert longer.settings["tempo_bpm"] == 120.0  # continued at the tempo it was made with
    forgot = _without_tempo(fast)
    assert not torch.equal(longer.latents, studio.extend(forgot, "[chorus]\nla la\n", seconds=1.0, **kw).latents)
    slower = studio.extend(fast, "[chorus]\nla la\n", seconds=1.0, style="pop, 90 bpm", **kw)
    assert slower.settings["tempo_bpm"] == 90.0


def _without_tempo(song: Song) -> Song:
    """The song as a sidecar from before tempos were recorded."""
    import dataclasses

    settings = {k: v for k, v in song.settings.items() if k != "tempo_bpm"}
    return dataclasses.replace(song, settings=settings)
