"""Ray Serve deployment: the studio behind HTTP, with streamed progress and audio.

Each replica loads the model once and runs jobs through a :class:`~dr2studio.engine.LocalEngine`
(one at a time per replica, a bounded queue behind it). Routes (FastAPI ingress):

- ``GET  /v1/health`` -> ``{"model", "version", "sample_rate", "queue"}``
- ``POST /v1/jobs``   body ``{"request": JobRequest, "song": base64 song archive | null}`` ->
  ``application/x-ndjson`` stream: ``progress`` / ``audio`` (base64 float32, generate only) /
  ``heartbeat`` events, then one ``result`` (base64 song archive, and ``length``: requested vs delivered
  seconds and why, as in the song's ``settings["length"]``) or ``error`` / ``cancelled``.
  Closing the connection cancels the job at the next block.

Inside the cluster the same stream is a handle call: ``handle.options(stream=True).events.remote(payload)``.
:class:`~dr2studio.engine.ServeEngine` speaks both.

``serve run dr2studio.serve:build_app model=/path/to/model num_replicas=2 num_gpus=1`` works too
(the builder takes the same keys as :func:`build_app`).

No ``from __future__ import annotations`` here: FastAPI reads the route annotations at runtime.
"""

import asyncio
import base64
import json
import logging
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from ray import serve

from dr2studio import __version__
from dr2studio.config import ConfigError
from dr2studio.engine import (
    JobError,
    JobEvent,
    JobRequest,
    LocalEngine,
    QueueFull,
    encode_event,
    song_from_bytes,
    song_to_bytes,
)

log = logging.getLogger(__name__)

__all__ = ["Dr2Deployment", "build_app", "app", "HEARTBEAT_S", "MAX_BODY_BYTES"]

HEARTBEAT_S = 1.0
MAX_BODY_BYTES = 512 * 1024 * 1024

app = FastAPI(title="dr2studio", version=__version__)


def _parse_payload(payload: Any) -> tuple[JobRequest, Any]:
    """Request + optional input song from a JSON payload; :class:`ValueError` names what is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("request"), dict):
        raise ValueError("body must be a JSON object with a 'request' object")
    try:
        request = JobRequest.from_dict(payload["request"])
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    song = None
    if payload.get("song") is not None:
        try:
            song = song_from_bytes(base64.b64decode(payload["song"], validate=True))
        except (JobError, ValueError, TypeError) as exc:
            raise ValueError(f"'song' is not a base64 song archive: {exc}") from exc
    if request.kind in ("extend", "infill") and song is None:
        raise ValueError(f"{request.kind} needs a 'song'")
    return request, song


@serve.deployment(name="dr2studio", max_ongoing_requests=16)
@serve.ingress(app)
class Dr2Deployment:
    """One replica: a loaded model and its job queue."""

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None, max_pending: int = 8,
                 style_embedding: str | None = None) -> None:
        style = None
        if style_embedding:
            from dr2studio.style.embedding import load_style_embedding

            style = load_style_embedding(style_embedding)
        self.model = model
        self.engine = LocalEngine(model, device=device, dtype=dtype, max_pending=max_pending, style_embedding=style)

    @app.get("/v1/health")
    def health(self) -> dict[str, Any]:
        studio = self.engine.studio
        return {"model": str(self.model), "version": __version__, "sample_rate": studio.sample_rate,
                "fingerprint": studio.fingerprint, "queue": self.engine.pending()}

    @app.post("/v1/jobs")
    async def jobs(self, request: Request) -> StreamingResponse:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        try:
            payload = json.loads(body)
            parsed = _parse_payload(payload)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        stream = self._stream(*parsed)
        try:
            first = await stream.__anext__()  # surfaces a full queue as 503 before the 200 goes out
        except QueueFull as exc:
            raise HTTPException(503, str(exc)) from None

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield (json.dumps(first) + "\n").encode()
                async for event in stream:
                    yield (json.dumps(event) + "\n").encode()
            finally:
                await stream.aclose()  # a disconnect lands here: cancels the job

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def events(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The same event stream for ``DeploymentHandle`` callers (``options(stream=True)``)."""
        try:
            parsed = _parse_payload(payload)
        except ValueError as exc:
            yield {"type": "error", "message": str(exc)}
            return
        try:
            async for event in self._stream(*parsed):
                yield event
        except QueueFull as exc:
            yield {"type": "error", "message": str(exc)}

    async def _stream(self, request: JobRequest, song: Any) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()

        def listener(event: JobEvent) -> None:  # engine worker thread -> event loop
            loop.call_soon_threadsafe(queue.put_nowait, event)

        job = self.engine.submit(request, song=song, job_id=f"serve-{uuid.uuid4().hex[:12]}", on_event=listener)
        try:
            yield {"type": "accepted", "job": job.id}
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    yield {"type": "heartbeat"}
                    continue
                if event.type in ("queued", "started"):
                    continue
                if event.type == "done":
                    blob = await asyncio.to_thread(song_to_bytes, job.result)
                    yield {"type": "result", "song": base64.b64encode(blob).decode("ascii"), "length": event.length}
                    return
                yield encode_event(event)
                if event.type in ("error", "cancelled"):
                    return
        finally:
            if not job.finished:  # the client went away (or the task was cancelled): stop the render
                self.engine.cancel(job.id)
                log.info("job %s cancelled: the client disconnected", job.id)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve run dr2studio.serve:build_app key=value ...`` and the CLI.

    Keys: ``model`` (required), ``num_replicas`` (1), ``num_gpus`` (0 per replica), ``num_cpus``
    (1 per replica), ``device``, ``dtype``, ``max_pending`` (8), ``style_embedding`` (a .npy path).
    """
    if not args.get("model"):
        raise ValueError("build_app needs model=<model directory or hub id>")
    num_gpus = float(args.get("num_gpus", 0) or 0)
    options = {
        "num_replicas": int(args.get("num_replicas", 1)),
        "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": float(args.get("num_cpus", 1))},
        "max_ongoing_requests": int(args.get("max_pending", 8)) + 1,
    }
    device = args.get("device") or ("cuda" if num_gpus > 0 else None)
    return Dr2Deployment.options(**options).bind(
        str(args["model"]), device=device, dtype=args.get("dtype"), max_pending=int(args.get("max_pending", 8)),
        style_embedding=args.get("style_embedding"),
    )
