"""The reference decoder's chunk schedule, and which frames of a growing latent stream are already final.

The released decoder never runs on a whole song: it decodes windows of ``chunk`` latent frames (20)
that start every ``hop = chunk - overlap`` frames (15), plus one final window flush with the end
(start ``T - chunk``) when the regular ones do not end exactly at ``T``. Every window is decoded on
its own (its own edge padding) and pasted in order, later windows overwriting earlier ones, after
cutting ``trim = overlap // 2`` frames from the inner edges. Net effect: window ``i`` *owns* the
frames ``[start_i + trim, start_{i+1} + trim)`` (window 0 from frame 0, the last one up to ``T``).
Latents shorter than one window are decoded in a single pass (the reference crashes there).

Because the last window depends on the total length, a frame is only final once no future length can
hand it to a different window. :func:`stable_frames` gives that count for a stream of unknown length.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Segment", "chunk_starts", "plan_segments", "stable_frames", "check_schedule"]


@dataclass(frozen=True)
class Segment:
    """Frames ``[lo, hi)`` of the output come from the window starting at frame ``start`` of length ``size``."""

    start: int
    size: int
    lo: int
    hi: int


def check_schedule(chunk: int, overlap: int) -> None:
    """Raise ``ValueError`` unless ``0 <= overlap < chunk`` (the schedule needs a positive hop)."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"chunk schedule needs chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")


def chunk_starts(total: int, chunk: int = 20, overlap: int = 5) -> list[int]:
    """Window starts for ``total`` frames (a single window ``[0]`` when ``total <= chunk``)."""
    check_schedule(chunk, overlap)
    if total <= chunk:
        return [0]
    starts = list(range(0, total - chunk + 1, chunk - overlap))
    if starts[-1] + chunk != total:
        starts.append(total - chunk)
    return starts


def plan_segments(total: int, chunk: int = 20, overlap: int = 5, *, final: bool = True) -> list[Segment]:
    """Which window produces which frames.

    ``final=True``: the complete plan for a song of ``total`` frames. ``final=False``: only the regular
    windows that fit in the ``total`` frames seen so far (the plan of a stream that may go on); the
    last segment's ``hi`` is then provisional.
    """
    check_schedule(chunk, overlap)
    if total < 1:
        return []
    if final and total < chunk:
        return [Segment(0, total, 0, total)]
    if final:
        starts = chunk_starts(total, chunk, overlap)
    else:
        if total < chunk:
            return []
        starts = list(range(0, total - chunk + 1, chunk - overlap))
    trim = overlap // 2
    los = [0] + [s + trim for s in starts[1:]]
    his = los[1:] + [total]
    return [Segment(s, chunk, lo, hi) for s, lo, hi in zip(starts, los, his)]


def stable_frames(received: int, chunk: int = 20, overlap: int = 5) -> int:
    """Frames ``[0, n)`` whose decoded audio no longer depends on how many frames follow ``received``.

    A frame owned by a regular window can still be taken over by the final window of a song that ends
    soon after it; that risk is gone once ``received`` frames rule out every such ending. Derivation:
    frame ``f`` in regular window ``s`` is safe iff ``f < received - chunk + trim``, or ``f`` is the first
    frame of the window's region (``f == s + trim``, or ``f <= trim`` for window 0), for ``s <= received - chunk``.
    """
    check_schedule(chunk, overlap)
    if received < chunk:
        return 0  # the song may still end shorter than one window: a single pass decodes it differently
    hop, trim = chunk - overlap, overlap // 2
    extra = 1 if (received - chunk) % hop == 0 else 0
    return min(received, max(received - chunk + trim + extra, trim + 1))
