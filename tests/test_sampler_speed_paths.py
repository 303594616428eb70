"""The sampler's fast paths (issue 22) give the plain path's results: cached time conditions, the folded
frame embedding, fused guidance + Euler, the fused RMSNorm; bf16 weights stay close to float32.

The plain path is the sampler with ``reference_numerics`` on a float32 model: every call embeds its
frames and times through the modules, guidance and Euler step as separate ops (spec §3).
"""
from __future__ import annotations

import pytest
import torch

from dr2studio.flow.sampler import sample_latents
from dr2studio.models.dit import DiT, DiTConfig, MaskedAttention, RMSNorm, rotary_tables, tempo_clock

CFG = DiTConfig(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=16, text_num_embeds=50, block_size=5, tempo_clock=[4.0, 1.0])


def _model(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)  # clock weights too (zero-initialised otherwise)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 50, (batch, 12), generator=g)
    tokens[1:, 9:] = 0  # a padded lyric in the second element
    return dict(tokens=tokens, style=torch.randn(batch, 512, generator=g), noise=torch.randn(batch, 40, 16, generator=g),
                prefix=torch.randn(batch, 7, 16, generator=g), token_lengths=torch.tensor([12, 9][:batch]),
                beats_per_frame=torch.tensor([0.1, float("nan")][:batch]))


@pytest.mark.parametrize("cfg_strength,history", [(2.0, None), (0.0, None), (1.5, 2)])
def test_fast_path_equals_plain_path(cfg_strength: float, history: int | None) -> None:
    model, x = _model(), _inputs()
    runs = [sample_latents(model, x["tokens"], x["style"], 45, steps=6, cfg_strength=cfg_strength, noise=x["noise"],
                           prefix=x["prefix"], token_lengths=x["token_lengths"], num_history_block=history,
                           eop_threshold=-1.0, beats_per_frame=x["beats_per_frame"], reference_numerics=plain)
            for plain in (False, True)]
    assert runs[0].shape == runs[1].shape == (2, 45, 16)
    assert _rel(runs[0], runs[1]) <= 1e-5
    assert torch.equal(runs[0][:, :7], x["prefix"])


def test_fast_path_embeds_each_time_once_per_song() -> None:
    """The time MLP runs once per distinct time (grid points, +1, the lyrics' −1), not once per call."""
    model, x = _model(), _inputs(1)
    calls = {"time": 0, "latent": 0}
    model.time_embed.register_forward_hook(lambda *_: calls.__setitem__("time", calls["time"] + 1))
    model.latent_embed.register_forward_hook(lambda *_: calls.__setitem__("latent", calls["latent"] + 1))
    steps, blocks = 8, 6
    sample_latents(model, x["tokens"], x["style"], blocks * CFG.block_size, steps=steps, noise=x["noise"], eop_threshold=-1.0)
    assert calls["latent"] == 0  # frames go through the folded projection
    assert calls["time"] <= (steps - 1) + 1 + 2  # grid times, +1, lyrics (conditional and null token)
    calls["time"] = 0
    sample_latents(model, x["tokens"], x["style"], blocks * CFG.block_size, steps=steps, noise=x["noise"],
                   eop_threshold=-1.0, reference_numerics=True)
    assert calls["time"] >= blocks * (steps - 1)  # the plain path embeds at every call


def test_folded_frame_projection_and_time_condition_match_the_modules() -> None:
    model = _model()
    g = torch.Generator().manual_seed(5)
    frames, style, t = torch.randn(2, 7, 16, generator=g), torch.randn(2, 512, generator=g), torch.rand(2, 1, generator=g)
    bpf = torch.tensor([0.2, 0.05])
    with torch.no_grad():
        c = model.time_embed(t)
        h0 = model.input_embed(model.embed_latents(frames, 3, bpf), style, c.expand(-1, 7, -1))
        proj = model.frame_projection()
        folded = (torch.nn.functional.linear(frames, proj.frames) + proj.clock_bias(tempo_clock(3, 7, bpf, CFG.tempo_clock))
                  + proj.condition_bias(style, c))
        assert _rel(folded, h0) <= 1e-6
        rope = rotary_tables(torch.arange(7)[None], CFG.head_dim, torch.float32)
        e = model.embed_latents(frames, 3, bpf)
        plain = model(e, t, style, rope, MaskedAttention())
        cached = model(e, model.time_condition(t), style, rope, MaskedAttention())
        projected = model(folded, model.time_condition(t), style, rope, MaskedAttention(), projected=True)
    assert torch.equal(plain, cached)
    assert _rel(projected, plain) <= 1e-5
    with pytest.raises(TypeError, match="TimeCondition"):
        model(folded, t, style, rope, MaskedAttention(), projected=True)


def test_fused_rms_norm_is_bit_identical_to_the_three_step_path() -> None:
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 32)
    x32 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    assert torch.equal(norm(x), norm.weight * x32)
    half = norm.half()  # low precision keeps the release's order: statistics in float32, weight in fp16
    xh = x.half()
    expected = half.weight * (xh.float() * torch.rsqrt(xh.float().pow(2).mean(-1, keepdim=True) + norm.eps)).half()
    assert torch.equal(half(xh), expected)


def test_bf16_weights_stay_close_to_float32() -> None:
    model, x = _model(), _inputs(1)
    kw = dict(steps=6, noise=x["noise"], eop_threshold=-1.0, beats_per_frame=x["beats_per_frame"])
    f32 = sample_latents(model, x["tokens"], x["style"], 30, **kw)
    bf16 = sample_latents(model.to(torch.bfloat16), x["tokens"], x["style"], 30, **kw)
    assert bf16.dtype == torch.float32  # the ODE state stays float32
    assert torch.isfinite(bf16).all()
    assert 0 < _rel(bf16, f32) <= 0.05
