"""Block flow matching: the training objective agrees with the sampler, and it learns."""
from __future__ import annotations

import torch

from dr2studio.flow.block_fm import BlockFlowMatching, BlockFMConfig, block_causal_sequence_mask, pad_end_of_prediction
from dr2studio.flow.repa import stochastic_block_weights
from dr2studio.flow.sampler import BlockSampler, SamplerSettings
from dr2studio.models.dit import DiT, DiTConfig

CFG = DiTConfig(dim=48, depth=2, heads=4, ff_mult=2, mel_dim=6, text_num_embeds=520, block_size=4, repa_depth=1, repa_dims=[12])


def test_end_padding_completes_the_last_block() -> None:
    lat = torch.randn(3, 9, 2)
    out, lengths = pad_end_of_prediction(lat, torch.tensor([9, 8, 5]), 4)
    assert lengths.tolist() == [12, 12, 8]
    assert torch.equal(out[0, :9], lat[0]) and torch.equal(out[0, 9:], torch.ones(3, 2))
    assert torch.equal(out[1, 8:], torch.ones(4, 2))  # already aligned: one whole end block
    assert torch.equal(out[2, 5:8], torch.ones(3, 2)) and torch.equal(out[2, 8:], torch.zeros(4, 2))


def test_mask_layout() -> None:
    m = block_causal_sequence_mask(torch.tensor([[True, True]]), torch.ones(1, 4, dtype=torch.bool), 2)[0, 0]
    n, t = 2, 4
    assert m[:n, :n].all() and not m[:n, n:].any()  # lyrics see only lyrics
    clean, noisy = slice(n, n + t), slice(n + t, n + 2 * t)
    assert m[clean][:, :n].all() and m[noisy][:, :n].all()  # everyone sees lyrics
    assert m[clean][:, clean].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert m[noisy][:, clean].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert m[noisy][:, noisy].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert not m[clean][:, noisy].any()


def test_training_forward_equals_cached_sampler_velocity() -> None:
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    fm = BlockFlowMatching(model)
    b, nb = CFG.block_size, 4
    tokens = torch.randint(1, 500, (1, 7))
    style = torch.randn(1, 512)
    clean = torch.randn(1, nb * b, CFG.mel_dim)
    z0 = torch.randn_like(clean)
    t_blocks = torch.rand(1, nb)
    t_frames = t_blocks.repeat_interleave(b, dim=1)
    noisy = (1 - t_frames[..., None]) * z0 + t_frames[..., None] * clean
    with torch.no_grad():
        v_train, _ = fm.velocity(clean, noisy, t_frames, tokens, style, torch.ones(1, 7, dtype=torch.bool), torch.ones(1, nb * b, dtype=torch.bool))
    for i in range(nb):
        sampler = BlockSampler(model, tokens, style, nb * b, SamplerSettings(steps=2, cfg_strength=0.0), prefix=clean[:, : i * b] if i else None)
        sampler.prepare()
        with torch.inference_mode():
            v_cache = sampler.velocity(noisy[:, i * b : (i + 1) * b], t_blocks[0, i], i * b)
        assert torch.allclose(v_cache, v_train[:, i * b : (i + 1) * b], atol=1e-5), i


def test_stochastic_block_weights_sum_to_one_per_sampled_block() -> None:
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, 25:] = False
    cw, nw, samples = stochastic_block_weights(valid, 5, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert samples.tolist() == [3.0, 3.0]
    assert torch.allclose((cw + nw).sum(1), samples)  # each sampled block's frames weigh 1 in total
    assert not cw[1, 25:].any() and not nw[1, 25:].any()
    assert ((nw.view(2, 8, 5) > 0).any(-1).sum(1) == 3).all()


def test_loss_decreases_with_training_and_uses_repa() -> None:
    torch.manual_seed(0)
    model = DiT(CFG)
    fm = BlockFlowMatching(model, BlockFMConfig(repa_weight=0.5))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    lat = torch.sin(torch.linspace(0, 6, 14))[None, :, None].repeat(2, 1, CFG.mel_dim) * 0.5
    tokens = torch.randint(1, 500, (2, 5))
    style = torch.randn(2, 512)
    repa = [torch.randn(2, 14, 12)]
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        out = fm(lat, torch.tensor([14, 11]), tokens, torch.tensor([5, 3]), style, repa, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.fm_loss.item())
        assert out.repa_loss.item() > 0
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_activation_checkpointing_gives_identical_gradients() -> None:
    torch.manual_seed(0)
    model = DiT(CFG)
    fm = BlockFlowMatching(model, BlockFMConfig(both_dropout=0.0, lyrics_dropout=0.0, style_dropout=0.0))
    args = (torch.randn(1, 9, CFG.mel_dim), torch.tensor([9]), torch.randint(1, 500, (1, 4)), torch.tensor([4]), torch.randn(1, 512))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        fm(*args, generator=torch.Generator().manual_seed(1)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
