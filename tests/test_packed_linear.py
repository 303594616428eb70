"""Weights packed once per song (MKL packed GEMM) give ``F.linear``'s results, only where they are meant to.

The sampler relies on: the packed product equal to the plain one within float rounding (the same
kernel), inputs whose row count is not the pack's going through ``F.linear`` unchanged, the pack active
only in the thread and block that activated it (a model trained or sampled elsewhere is untouched),
gradients never going through a pack, and songs sampled with packing equal to songs without.
"""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from dr2studio.flow import sampler as sampler_module
from dr2studio.flow.sampler import BlockSampler, SamplerSettings
from dr2studio.models import packed_linear
from dr2studio.models.dit import DiT, DiTConfig
from dr2studio.models.packed_linear import PackableLinear, PackedWeights, activate

pytestmark = pytest.mark.skipif(not packed_linear.packing_available(), reason="this torch build has no MKL packed linear")

CFG = DiTConfig(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=16, text_num_embeds=50, block_size=5)


def _model(dtype: torch.dtype = torch.float32) -> DiT:
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    return model.to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs().max() <= 1e-6 * b.abs().max().clamp(min=1.0)).item())


@pytest.mark.parametrize("shape", [(20, 64), (2, 10, 64), (4, 10, 64), (3, 20, 64)])
def test_packed_product_equals_linear_for_multiples_of_its_rows(shape: tuple[int, ...]) -> None:
    layer = PackableLinear(64, 96, bias=True)
    packs = PackedWeights([layer.weight], rows=20)
    x = torch.randn(*shape)
    with torch.inference_mode():
        out = packs.linear(x, layer.weight, layer.bias)
        assert out is not None and out.shape == (*shape[:-1], 96)
        assert _close(out, F.linear(x, layer.weight, layer.bias))


def test_other_row_counts_and_unknown_weights_are_left_to_linear() -> None:
    layer, other = PackableLinear(64, 32), PackableLinear(64, 32)
    packs = PackedWeights([layer.weight], rows=20)
    with torch.inference_mode():
        assert packs.linear(torch.randn(15, 64), layer.weight) is None  # not a multiple of 20
        assert packs.linear(torch.randn(20, 64), other.weight) is None  # not packed
        assert packs.linear(torch.randn(20, 64).double(), layer.weight) is None
        x = torch.randn(3, 5, 64)
        with activate(packs):
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # 15 rows: the plain path, exactly


def test_pack_is_active_only_in_its_own_thread_and_block() -> None:
    layer = PackableLinear(64, 32, bias=False)
    packs = PackedWeights([layer.weight], rows=20)
    used: list[int] = []
    real = packs.linear

    def counting(x, w, b=None):
        used.append(threading.get_ident())
        return real(x, w, b)

    packs.linear = counting  # type: ignore[method-assign]
    x = torch.randn(20, 64)
    with torch.inference_mode():
        layer(x)
        assert used == []
        with activate(packs):
            layer(x)
            other = threading.Thread(target=lambda: layer(x))
            other.start()
            other.join()
        layer(x)
    assert used == [threading.get_ident()]


def test_gradients_never_go_through_a_pack() -> None:
    layer = PackableLinear(64, 32, bias=False)
    packs = PackedWeights([layer.weight], rows=20)
    x = torch.randn(20, 64, requires_grad=True)
    with activate(packs):
        layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert torch.allclose(layer.weight.grad, x.detach().sum(0).expand(32, 64))
    layer.weight.grad = None
    with activate(packs):
        layer(x.detach()).sum().backward()  # an input without gradient: the weight still gets one
    assert torch.allclose(layer.weight.grad, x.detach().sum(0).expand(32, 64))


def test_model_packs_float32_cpu_weights_under_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    packs = model.packed_weights(10)
    linears = [m for m in model.modules() if isinstance(m, PackableLinear)]
    assert packs is not None and len(packs) == len(linears) == CFG.depth * 7 + 1  # q k v o gate up down; proj_out
    assert _model(torch.bfloat16).packed_weights(10) is None
    monkeypatch.setattr(packed_linear, "PACK_MAX_BYTES", 1024)
    assert model.packed_weights(10) is None


def test_packed_state_dict_keys_are_nn_linear_keys() -> None:
    """Checkpoints of the released model load unchanged: PackableLinear adds no parameter or buffer."""
    layer = PackableLinear(8, 4)
    assert set(layer.state_dict()) == set(torch.nn.Linear(8, 4).state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("batch,cfg_strength,history", [(1, 2.0, None), (2, 2.0, None), (1, 0.0, None), (2, 1.5, 2)])
def test_songs_sampled_with_packed_weights_equal_songs_without(monkeypatch: pytest.MonkeyPatch, batch: int,
                                                               cfg_strength: float, history: int | None) -> None:
    model = _model()
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, 50, (batch, 12), generator=g)
    style, noise = torch.randn(batch, 512, generator=g), torch.randn(batch, 40, 16, generator=g)
    prefix = torch.randn(batch, 10, 16, generator=g)
    calls = {"packed": 0}
    real = PackedWeights.linear

    def counting(self, x, w, b=None):
        out = real(self, x, w, b)
        calls["packed"] += out is not None
        return out

    monkeypatch.setattr(PackedWeights, "linear", counting)
    monkeypatch.setattr(sampler_module, "SMALL_MODEL_DIM", CFG.dim - 1)  # pack this small test model
    runs = {}
    for pack in (True, False):
        monkeypatch.setattr(BlockSampler, "pack_weights", pack)
        settings = SamplerSettings(steps=6, cfg_strength=cfg_strength, num_history_block=history, eop_threshold=-1.0)
        sampler = BlockSampler(model, tokens, style, 45, settings, noise=noise, prefix=prefix)
        for _ in sampler.blocks():
            pass
        runs[pack] = sampler.latents
        if pack:
            assert calls["packed"] > 0, "the sampler never used its packed weights"
    assert runs[True].shape == (batch, 45, 16)
    assert _close(runs[True], runs[False])


def test_small_models_sample_without_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """DiTs up to SMALL_MODEL_DIM wide (the demo model) gain nothing from packing: their products take microseconds."""
    model = _model()
    assert model.config.dim <= sampler_module.SMALL_MODEL_DIM
    sampler = BlockSampler(model, torch.randint(1, 50, (1, 6)), torch.randn(1, 512), 10, SamplerSettings(steps=3))
    for _ in sampler.blocks():
        pass
    assert not sampler._packs


def test_compiled_graphs_never_look_up_a_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile cannot trace the context variable (a graph break at every linear: the GPU check's compile
    and CUDA-graph rows would measure fragments); while compiling, PackableLinear is plain F.linear."""
    layer = PackableLinear(64, 32, bias=False)
    packs = PackedWeights([layer.weight], rows=20)

    def boom(*_args, **_kwargs):
        raise AssertionError("a pack was looked up while compiling")

    packs.linear = boom  # type: ignore[method-assign]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = torch.randn(20, 64)
    with torch.inference_mode(), activate(packs):
        assert torch.equal(layer(x), F.linear(x, layer.weight))
