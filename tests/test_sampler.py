"""The KV-cached block sampler: reference parity, continuation, batching, end detection, streaming."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dr2studio.checkpoints import load_dit
from dr2studio.flow.sampler import BlockSampler, SamplerSettings, sample_latents
from dr2studio.models.dit import DiT, DiTConfig


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def ref_model(tiny_ref_dir: Path) -> DiT:
    return load_dit(tiny_ref_dir, device="cpu")


def test_matches_reference_outputs(ref_model: DiT, tiny_reference: dict) -> None:
    for case in tiny_reference["sampler_cases"]:
        out = sample_latents(ref_model, case["text"], case["style"], case["frames"], steps=case["steps"],
                             cfg_strength=case["cfg"], noise=case["noise"])
        expected = case["latents"][:, : case["frames"]]
        assert out.shape == expected.shape, case["name"]
        assert _rel(out, expected) <= 1e-4, case["name"]


def test_continuing_from_prefix_reproduces_one_shot(ref_model: DiT, tiny_reference: dict) -> None:
    case = tiny_reference["sampler_cases"][0]
    kwargs = dict(steps=case["steps"], cfg_strength=case["cfg"])
    full = sample_latents(ref_model, case["text"], case["style"], 40, noise=case["noise"], **kwargs)
    for k in (1, 2):
        prefix = full[:, : 10 * k]
        cont = sample_latents(ref_model, case["text"], case["style"], 40, noise=case["noise"][:, 10 * k :], prefix=prefix, **kwargs)
        assert cont.shape == full.shape
        assert torch.equal(cont[:, : 10 * k], prefix)
        assert _rel(cont, full) <= 1e-5


def test_batch_of_two_equals_two_single_runs(ref_model: DiT) -> None:
    g = torch.Generator().manual_seed(3)
    t1 = torch.randint(1, 512, (1, 9), generator=g)
    t2 = torch.randint(1, 512, (1, 14), generator=g)
    styles = torch.randn(2, 512, generator=g)
    noise = torch.randn(2, 30, 64, generator=g)
    tokens = torch.zeros(2, 14, dtype=torch.long)
    tokens[0, :9], tokens[1] = t1[0], t2[0]
    both = sample_latents(ref_model, tokens, styles, 30, steps=4, noise=noise, token_lengths=torch.tensor([9, 14]))
    one = sample_latents(ref_model, t1, styles[:1], 30, steps=4, noise=noise[:1])
    two = sample_latents(ref_model, t2, styles[1:], 30, steps=4, noise=noise[1:])
    assert _rel(both[:1], one) <= 1e-5 and _rel(both[1:], two) <= 1e-5


def test_streamed_blocks_concatenate_to_output(ref_model: DiT) -> None:
    tokens = torch.randint(1, 512, (1, 5))
    seen: list[tuple[int, torch.Tensor]] = []
    out = sample_latents(ref_model, tokens, torch.randn(1, 512), 25, steps=3, generator=torch.Generator().manual_seed(1),
                         on_block=lambda i, blk: seen.append((i, blk)))
    assert [i for i, _ in seen] == [0, 1, 2]
    assert out.shape[1] == 25  # never more than max_frames, even though 3 blocks = 30 frames
    assert torch.equal(torch.cat([b for _, b in seen], dim=1), out)


def test_fused_store_matches_separate_passes_with_one_forward_less_per_block(ref_model: DiT, tiny_reference: dict,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    case = tiny_reference["sampler_cases"][0]
    calls = []
    hook = ref_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        runs = {}
        for fused in (True, False):
            monkeypatch.setattr(BlockSampler, "fuse_store", fused)
            calls.clear()
            runs[fused] = (sample_latents(ref_model, case["text"], case["style"], 40, steps=case["steps"],
                                          cfg_strength=case["cfg"], noise=case["noise"]), len(calls))
    finally:
        hook.remove()
    (fused_out, fused_calls), (sep_out, sep_calls) = runs[True], runs[False]
    assert _rel(fused_out, sep_out) <= 1e-5
    blocks = 4
    lyrics = 2  # the lyrics, then one null token for the whole guidance branch
    assert sep_calls == lyrics + blocks * case["steps"]  # (steps-1 probes + 1 store) per block
    assert fused_calls == lyrics + blocks * (case["steps"] - 1)  # stores ride along; the last block is never stored


def test_seeded_generator_is_reproducible(ref_model: DiT) -> None:
    tokens, style = torch.randint(1, 512, (1, 5)), torch.randn(1, 512)
    a = sample_latents(ref_model, tokens, style, 10, steps=3, generator=torch.Generator().manual_seed(7))
    b = sample_latents(ref_model, tokens, style, 10, steps=3, generator=torch.Generator().manual_seed(7))
    c = sample_latents(ref_model, tokens, style, 10, steps=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _constant_velocity_model() -> DiT:
    """A DiT whose velocity is exactly 1 everywhere: the sampled block is noise + 1."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(dim=32, depth=1, heads=2, ff_mult=2, mel_dim=4, text_num_embeds=520, block_size=5)).eval()
    with torch.no_grad():
        model.proj_out.weight.zero_()
        model.proj_out.bias.fill_(1.0)
    return model


def test_end_of_prediction_trims_but_keeps_last_real_frame() -> None:
    model = _constant_velocity_model()
    noise = torch.zeros(1, 20, 4)
    noise[:, :5] = -1.0  # block 0 -> all zeros (real)
    noise[:, 5:8] = -1.0  # block 1: three real frames, then end frames (noise 0 -> 1)
    out = sample_latents(model, torch.tensor([[1, 2, 3]]), torch.zeros(1, 512), 20, steps=4, noise=noise)
    assert out.shape[1] == 8  # the reference would return 7 (it drops the last real frame)
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)


def test_end_detection_is_per_batch_element() -> None:
    model = _constant_velocity_model()
    noise = torch.full((2, 20, 4), -1.0)
    noise[0, 5:] = 0.0  # element 0 ends after block 0; element 1 runs to max_frames
    sampler = BlockSampler(model, torch.tensor([[1, 2], [3, 4]]), torch.zeros(2, 512), 20, SamplerSettings(steps=3), noise=noise)
    blocks = list(sampler.blocks())
    assert sampler.lengths.tolist() == [5, 20] and len(blocks) == 4
    out = sampler.latents
    assert out.shape == (2, 20, 4) and torch.equal(out[0, 5:], torch.zeros(15, 4))


def test_sliding_history_window(ref_model: DiT) -> None:
    tokens, style, noise = torch.randint(1, 512, (1, 6)), torch.randn(1, 512), torch.randn(1, 40, 64)
    full = sample_latents(ref_model, tokens, style, 40, steps=3, noise=noise)
    wide = sample_latents(ref_model, tokens, style, 40, steps=3, noise=noise, num_history_block=10)
    narrow = sample_latents(ref_model, tokens, style, 40, steps=3, noise=noise, num_history_block=1)
    assert _rel(wide, full) <= 1e-5
    assert torch.allclose(narrow[:, :20], full[:, :20], atol=1e-5)  # blocks 0-1 see the same history
    assert not torch.allclose(narrow[:, 30:], full[:, 30:], atol=1e-4)
    prefix_narrow = sample_latents(ref_model, tokens, style, 40, steps=3, noise=noise[:, 20:], prefix=narrow[:, :20], num_history_block=1)
    assert _rel(prefix_narrow, narrow) <= 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_frames=0), "max_frames"),
        (dict(steps=1), "steps"),
        (dict(cfg_strength=float("nan")), "cfg_strength"),
        (dict(style=torch.randn(1, 100)), "style"),
        (dict(noise=torch.randn(1, 3, 64)), "noise"),
        (dict(tokens=torch.tensor([[1, 9999]])), "token ids"),
        (dict(prefix=torch.randn(1, 30, 64)), "prefix"),
    ],
)
def test_bad_arguments_are_clear_errors(ref_model: DiT, kwargs: dict, message: str) -> None:
    args = dict(tokens=torch.tensor([[1, 2]]), style=torch.randn(1, 512), max_frames=20)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample_latents(ref_model, **args)


def test_null_lyrics_are_computed_once_and_fill_the_same_cache(ref_model: DiT, tiny_reference: dict,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The guidance branch's N null tokens are one token broadcast: same cache and output as N tokens."""
    case = tiny_reference["sampler_cases"][0]
    caches, outs = [], []
    for dedupe in (True, False):
        if not dedupe:  # the reference-numerics switch also restores every-token lyrics; isolate that part
            orig = BlockSampler._cache_text

            def full_text(self: BlockSampler, style: torch.Tensor) -> None:
                self.settings.reference_numerics = True
                try:
                    orig(self, style)
                finally:
                    self.settings.reference_numerics = False

            monkeypatch.setattr(BlockSampler, "_cache_text", full_text)
        s = BlockSampler(ref_model, case["text"], case["style"], 20, SamplerSettings(steps=case["steps"], cfg_strength=case["cfg"]),
                         noise=case["noise"])
        s.prepare()
        n = case["text"].shape[1]
        caches.append(torch.stack([k[:, :, :n] for k in s.cache.k] + [v[:, :, :n] for v in s.cache.v]))
        list(s.blocks())
        outs.append(s.latents)
    assert _rel(caches[0], caches[1]) <= 1e-5
    assert _rel(outs[0], outs[1]) <= 1e-5
