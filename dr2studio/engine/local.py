"""The in-process engine: jobs run on a :class:`~dr2studio.studio.Studio` in this process (no cluster)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dr2studio.engine.base import QueueEngine
from dr2studio.engine.jobs import Job, JobContext, JobQueue
from dr2studio.requests import GenerateRequest, InfillRequest, PlainText

__all__ = ["LocalEngine", "run_studio_job"]


def _request_style(style: str | None, embedding: list[float] | None, default: Any) -> Any:
    """The request's embedding, else its text prompt (as :class:`~dr2studio.requests.PlainText`: a job's
    style is data, never a server file such as ``style.npy``), else the engine's default embedding."""
    if embedding is not None:
        import torch

        return torch.tensor(embedding, dtype=torch.float32)
    if style:
        return PlainText(style)
    return default


def run_studio_job(studio: Any, job: Job, ctx: JobContext, default_style: Any = None) -> Any:
    """Run one request (a checked :class:`~dr2studio.engine.JobRequest`) on a Studio, reporting progress
    and audio blocks.

    Cancellation works by raising :class:`~dr2studio.engine.JobCancelled` from inside Studio's per-block
    callbacks, so a cancelled job stops at the next block boundary and returns nothing.
    """
    req = job.request.typed()
    req.validate()  # checked at submit; this gives the normalised values (an int of steps sent as 32.0)
    style = _request_style(req.style, req.style_embedding, default_style)
    offset = 0

    def on_progress(*args: Any, **kwargs: Any) -> None:
        fraction, stage = _progress_args(args, kwargs)
        ctx.progress(fraction, stage)

    def on_audio(chunk: Any) -> None:
        nonlocal offset
        arr = np.asarray(chunk.detach().cpu().numpy() if hasattr(chunk, "detach") else chunk, dtype=np.float32)
        arr = arr.reshape(-1, arr.shape[-1])
        ctx.audio(arr, offset)
        offset += arr.shape[-1]

    def on_splice(sample: int) -> None:  # extend streams the output from its splice point on
        nonlocal offset
        offset = sample

    ctx.progress(0.0, "start")
    # Studio.run resolves the conditions (tokens, style, tempo, seed) in its one place, as for every door.
    # A job's lyrics are data (they may come from the network): PlainText is never opened as a .lrc/.txt file.
    return studio.run(req, None if isinstance(req, GenerateRequest) else job.song, progress=on_progress,
                      on_audio=None if isinstance(req, InfillRequest) else on_audio, on_splice=on_splice,
                      lyrics=PlainText(req.lyrics), style=style)


def _progress_args(args: tuple, kwargs: dict) -> tuple[float, str]:
    """Studio reports ``progress(fraction, stage)``; accept ``(done, total, stage)`` too."""
    stage = str(kwargs.get("stage", ""))
    nums = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    strs = [a for a in args if isinstance(a, str)]
    if strs:
        stage = strs[0]
    if len(nums) >= 2 and nums[1]:
        return float(nums[0]) / float(nums[1]), stage
    if nums:
        return float(nums[0]), stage
    return float(kwargs.get("fraction", 0.0)), stage


class LocalEngine(QueueEngine):
    """Runs jobs on a :class:`~dr2studio.studio.Studio` in this process, one at a time.

    ``model`` is a model directory or hub id, or an already loaded Studio. ``style_embedding``
    ([512] tensor) is the default style for requests that bring none.
    """

    def __init__(self, model: Any, *, device: str | None = None, dtype: Any = None, max_pending: int = 8,
                 style_embedding: Any = None) -> None:
        if isinstance(model, (str, Path)):
            from dr2studio.studio import Studio

            self.studio = Studio.load(model, device=device, dtype=dtype)
            self._name = str(model)
        else:
            self.studio = model
            self._name = type(model).__name__
        self.style_embedding = style_embedding
        self._queue = JobQueue(self._run, workers=1, max_pending=max_pending, name="dr2-local")

    def _run(self, job: Job, ctx: JobContext) -> Any:
        return run_studio_job(self.studio, job, ctx, self.style_embedding)

    def describe(self) -> str:
        return f"local:{self._name}"
