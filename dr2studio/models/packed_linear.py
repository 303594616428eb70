"""Float32 CPU matmuls on weights packed once per song (MKL packed GEMM), for the sampler's repeated small calls.

Why: a sampling step multiplies a few dozen rows (guidance branches x block frames) by every weight
matrix of the trunk, hundreds of times per song. For so few rows MKL's ``sgemm`` spends more time
repacking the weight on each call than multiplying: on 2 cores a 20-row 2048x512 product takes 315 us
through ``F.linear`` and 115 us on a weight packed once (``docs/speed.md``). The packed call is the
same kernel, so results equal ``F.linear``'s within float rounding (bit-identical for most shapes here; a
2048-deep product differs in the last bits; ``tests/test_packed_linear.py``).

A pack is made for one row count; an input whose rows are a multiple of it is multiplied in chunks
(the same result as one product), any other input goes through ``F.linear``. Packs live as long as the sampler that
made them and are active only inside :func:`activate`, per thread (a context variable), so a model
shared by several threads, or being trained, is never affected.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PACK_MAX_BYTES", "PackableLinear", "PackedWeights", "activate", "linear", "pack_model", "packing_available"]

log = logging.getLogger(__name__)

#: Models whose packable weights exceed this are not packed: a pack costs as much memory as its weight
#: (a released-size DiT in float32 on a CPU would need another 4 GB).
PACK_MAX_BYTES = 1 << 30

_ACTIVE: contextvars.ContextVar[PackedWeights | None] = contextvars.ContextVar("dr2studio_packed_weights", default=None)


def packing_available() -> bool:
    """True where this torch build has MKL's packed linear (x86 CPU wheels)."""
    ops = torch.ops.mkl
    return bool(torch.backends.mkl.is_available()) and hasattr(ops, "_mkl_linear") and hasattr(ops, "_mkl_reorder_linear_weight")


class PackedWeights:
    """Packed copies of float32 CPU weights for products of exactly ``rows`` rows."""

    def __init__(self, weights: Iterable[Tensor], rows: int) -> None:
        if rows <= 0:
            raise ValueError(f"rows must be positive, got {rows}")
        self.rows = rows
        # id(weight) -> (the weight itself, kept alive so the id stays its own; its pack)
        self._packs: dict[int, tuple[Tensor, Tensor]] = {}
        with torch.inference_mode():
            for w in weights:
                if id(w) not in self._packs and _packable(w):
                    self._packs[id(w)] = (w, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows))

    def __len__(self) -> int:
        return len(self._packs)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor | None:
        """``F.linear(x, weight, bias)`` through the pack, or None where there is none for this call."""
        hit = self._packs.get(id(weight))
        if hit is None or hit[0] is not weight or x.dtype != torch.float32 or x.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
            return None  # the packed op has no backward
        lead = x.shape[:-1]
        total = lead.numel()
        if total == 0 or total % self.rows:
            return None
        flat = x.reshape(total, x.shape[-1])
        mkl = torch.ops.mkl._mkl_linear
        if total == self.rows:
            out = mkl(flat, hit[1], weight, bias, self.rows)
        else:
            out = torch.cat([mkl(chunk, hit[1], weight, bias, self.rows) for chunk in flat.split(self.rows)])
        return out.view(*lead, weight.shape[0])


def _packable(weight: Tensor) -> bool:
    return weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2


@contextlib.contextmanager
def activate(packs: PackedWeights | None) -> Iterator[None]:
    """Route :class:`PackableLinear` calls of this thread through ``packs`` (None: a no-op)."""
    if packs is None:
        yield
        return
    token = _ACTIVE.set(packs)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``, through the active pack where one fits."""
    if torch.compiler.is_compiling():  # a compiled graph (the GPU check's rows) never sees a pack
        return F.linear(x, weight, bias)
    packs = _ACTIVE.get()
    if packs is not None:
        out = packs.linear(x, weight, bias)
        if out is not None:
            return out
    return F.linear(x, weight, bias)


class PackableLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) that uses the active pack inside :func:`activate`."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Linear's name
        return linear(input, self.weight, self.bias)


def pack_model(weights: Sequence[Tensor], rows: int) -> PackedWeights | None:
    """Pack ``weights`` for ``rows``-row products.

    None where packing is unavailable, any weight is not float32 on a CPU, or together they exceed
    :data:`PACK_MAX_BYTES`.
    """
    if not packing_available() or not weights or not all(map(_packable, weights)):
        return None
    size = sum(w.numel() * w.element_size() for w in weights)
    if size > PACK_MAX_BYTES:
        log.info("not packing %.0f MB of weights (over %.0f MB)", size / 2**20, PACK_MAX_BYTES / 2**20)
        return None
    return PackedWeights(weights, rows)
