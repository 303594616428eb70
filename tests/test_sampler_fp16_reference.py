"""Reference-numerics mode: the sampler reproduces the released sampler's fp16 arithmetic (spec §3, §10).

The comparison is against a deliberately naive implementation written from the spec in this file:
no KV cache (every velocity call runs the whole ``[lyrics | clean | noisy]`` sequence), separate
conditional and unconditional forwards, fp16 time grid / noise / Euler / guidance, RoPE frequencies
rounded to fp16. It runs on CPU in float16 with a tiny random model.
"""
from __future__ import annotations

import torch

from dr2studio.flow.sampler import sample_latents
from dr2studio.models.dit import DiT, DiTConfig, MaskedAttention, rotary_tables

CFG = DiTConfig(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=16, text_num_embeds=50, block_size=4)
HALF = torch.float16


def _fp16_rope(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = (1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)).half().float()
    ang = positions.float()[..., None] * inv
    ang = torch.cat((ang, ang), -1)
    return ang.cos().half()[:, None], ang.sin().half()[:, None]


def _naive_velocity(model: DiT, tokens, style, clean, x, t) -> torch.Tensor:
    """One branch: the whole sequence through the DiT with the block-causal mask, no cache."""
    n_text, n_clean, b = tokens.shape[1], clean.shape[1], x.shape[1]
    seq = torch.cat((model.embed_text(tokens), model.embed_latents(torch.cat((clean, x), 1))), 1)
    time = torch.cat((torch.full((1, n_text), -1.0, dtype=HALF), torch.full((1, n_clean), 1.0, dtype=HALF),
                      t.reshape(1, 1).expand(1, b)), 1)
    pos = torch.cat((torch.arange(n_text), torch.arange(n_clean + b)))[None]
    n = seq.shape[1]
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:n_text, :n_text] = True  # lyrics see lyrics
    lat_block = torch.arange(n_clean + b) // CFG.block_size
    mask[n_text:, :n_text] = True
    mask[n_text:, n_text:] = lat_block[None, :] <= lat_block[:, None]
    out = model(seq, time, style, _fp16_rope(pos, CFG.head_dim), MaskedAttention(mask[None, None]))
    return out[:, -b:]


def _naive_sample(model, tokens, style, noise, steps, cfg) -> torch.Tensor:
    grid = torch.linspace(0, 1, steps, dtype=HALF)
    clean = torch.zeros(1, 0, CFG.mel_dim, dtype=HALF)
    for i in range(noise.shape[1] // CFG.block_size):
        x = noise[:, i * CFG.block_size : (i + 1) * CFG.block_size].half()
        for k in range(steps - 1):
            v_c = _naive_velocity(model, tokens, style, clean, x, grid[k])
            v_u = _naive_velocity(model, torch.zeros_like(tokens), torch.zeros_like(style), clean, x, grid[k])
            x = x + (grid[k + 1] - grid[k]) * (v_c + (v_c - v_u) * cfg)
        clean = torch.cat((clean, x), 1)
    return clean.float()


def test_fp16_time_grid_and_rope_follow_the_released_run() -> None:
    grid = torch.linspace(0, 1, 16, dtype=HALF)
    assert grid[1].item() == 0.066650390625 and grid[2].item() == 0.13330078125 and grid[-2].item() == 0.93359375
    assert (1000 * grid[1]).item() == 66.625  # 1000·t is rounded in the time dtype (spec §2.3)
    pos = torch.arange(1500)[None]
    exact, _ = rotary_tables(pos, 64, torch.float32)
    rounded, _ = rotary_tables(pos, 64, torch.float32, inv_freq_dtype=HALF)
    ref, _ = _fp16_rope(pos, 64)
    assert torch.allclose(rounded.half(), ref, atol=1e-3)
    assert (rounded - exact).abs().max() > 0.05  # the rounding matters at long positions


def test_reference_numerics_matches_a_naive_fp16_sampler() -> None:
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.15)
    model = model.to(HALF)
    tokens = torch.randint(1, 50, (1, 6))
    style = torch.randn(1, 512).half()
    noise = torch.randn(1, 12, CFG.mel_dim).half()
    with torch.no_grad():
        naive = _naive_sample(model, tokens, style, noise, steps=5, cfg=2.0)
    ours = sample_latents(model, tokens, style, 12, steps=5, cfg_strength=2.0, noise=noise, eop_threshold=-1.0,
                          reference_numerics=True)
    default = sample_latents(model, tokens, style, 12, steps=5, cfg_strength=2.0, noise=noise, eop_threshold=-1.0)
    err = float((ours - naive).norm() / naive.norm())
    err_default = float((default - naive).norm() / naive.norm())
    # bit-identical on the development machine (0.0); the float32 ODE of the default mode is a
    # different, more accurate trajectory (1.5e-3 away), so the mode is what makes the match
    assert err < 1e-3 and err <= 0.25 * err_default, (err, err_default)
