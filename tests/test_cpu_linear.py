"""oneDNN-packed linears: same numbers as F.linear, re-entrant, and never on the training path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dr2studio.models.cpu_linear import packed_linears, packing_supported


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.SiLU(), nn.Linear(512, 256, bias=False), nn.Linear(8, 8))


def _packed_count(model: nn.Module) -> int:
    return sum("forward" in m.__dict__ for m in model.modules())


@pytest.fixture()
def model() -> nn.Sequential:
    m = _model()
    if not packing_supported(m):
        pytest.skip("this torch build has no oneDNN linear ops")
    return m


def test_same_result_as_plain_linear_for_any_row_count(model: nn.Sequential) -> None:
    head = model[:3]
    for shape in [(3, 256), (2, 10, 256), (1, 300, 256)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            plain = head(x)
            with packed_linears(model, rows_hint=20) as active:
                assert active and _packed_count(model) == 2  # the 8x8 linear is too small to pack
                packed = head(x)
        torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    assert _packed_count(model) == 0


def test_nested_blocks_share_one_packing(model: nn.Sequential) -> None:
    with packed_linears(model):
        with packed_linears(model):
            assert _packed_count(model) == 2
        assert _packed_count(model) == 2  # the outer block is still open
    assert _packed_count(model) == 0


def test_gradients_take_the_plain_path(model: nn.Sequential) -> None:
    x = torch.randn(4, 256)
    with packed_linears(model):
        y = model[:3](x).sum()
    y.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_non_float32_or_empty_models_are_left_alone() -> None:
    half = _model().to(torch.bfloat16)
    with packed_linears(half) as active:
        assert not active and _packed_count(half) == 0
    with packed_linears(nn.SiLU()) as active:
        assert not active
