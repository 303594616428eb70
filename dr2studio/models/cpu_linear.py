"""oneDNN linears with weights reordered once, for float32 sampling on CPU.

Why: a sampler forward multiplies only 20-40 rows (one block, both guidance branches) by every
weight matrix of the model. The weights do not fit in cache, and MKL's ``sgemm`` (what
``F.linear`` calls) re-packs each weight on every call. oneDNN multiplies against a weight that was
reordered into its blocked layout once, before sampling: the trunk's matmuls of a 35.6M model take
~30% less time on a 2-core AVX2 machine (``benchmarks/sampler.py --unpacked`` compares both).

The reordered copies live only while :func:`packed_linears` is entered (they double the weight
memory then). Anything else -- CUDA, bf16/fp16, gradients enabled, a torch without oneDNN -- runs
the ordinary ``F.linear``; results agree to float32 rounding either way.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["packing_supported", "packed_linears", "MIN_PACKED_WEIGHT"]

log = logging.getLogger(__name__)

#: Weights smaller than this many elements stay on ``F.linear`` (they stay in cache anyway).
MIN_PACKED_WEIGHT = 1 << 16

_lock = threading.Lock()
_depth: dict[int, int] = {}  # id(model) -> how many packed_linears blocks are open on it
_installed: dict[int, list[tuple[nn.Linear, Callable[[Tensor], Tensor]]]] = {}  # id(model) -> what we set


def packing_supported(model: nn.Module) -> bool:
    """True when ``model``'s weights are float32 on CPU and this torch has the oneDNN linear ops."""
    try:
        p = next(model.parameters())
    except StopIteration:
        return False
    return (
        p.device.type == "cpu"
        and p.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _packed_forward(module: nn.Linear, packed: Tensor) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, module.weight, module.bias)  # training or a moved model: the plain path
        bias = None if module.bias is None else module.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.numel() >= MIN_PACKED_WEIGHT]


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows_hint: int = 32) -> Iterator[bool]:
    """Run ``model``'s large ``nn.Linear`` layers through reordered oneDNN weights inside the block.

    ``rows_hint``: the typical number of rows per call (oneDNN picks its blocking for it; any row
    count gives the same result). Yields whether packing is active. Re-entrant: nested or
    concurrent blocks on the same model share one packing, removed when the last one exits.
    Do not change the weights inside the block (the packed copies would be stale).
    """
    if not packing_supported(model):
        yield False
        return
    key = id(model)
    with _lock:
        if _depth.get(key, 0) == 0:
            installed = []
            with torch.no_grad():
                for m in _linears(model):
                    packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows_hint)
                    m.forward = fwd = _packed_forward(m, packed)  # instance attribute shadows Linear.forward
                    installed.append((m, fwd))
            _installed[key] = installed
            log.debug("packed %d linears of %s for oneDNN", len(installed), type(model).__name__)
        _depth[key] = _depth.get(key, 0) + 1
    try:
        yield True
    finally:
        with _lock:
            _depth[key] -= 1
            if _depth[key] == 0:
                del _depth[key]
                for m, fwd in _installed.pop(key, []):
                    if m.__dict__.get("forward") is fwd:  # only undo what this module set
                        del m.forward
