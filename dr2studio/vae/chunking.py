"""Old home of the decoder's chunk schedule, kept importable: it lives in :mod:`dr2studio.models.chunking`
(the decoder needs it, and ``models`` must not import ``vae``)."""
from __future__ import annotations

from dr2studio.models.chunking import Segment, check_schedule, chunk_starts, plan_segments, stable_frames

__all__ = ["Segment", "chunk_starts", "plan_segments", "stable_frames", "check_schedule"]
