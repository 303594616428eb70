"""Ray Serve deployment: the studio behind HTTP, with streamed progress and audio.

Each replica loads the model once and runs jobs through a :class:`~dr2studio.engine.LocalEngine`
(one at a time per replica, a bounded queue behind it). Routes (FastAPI ingress):

- ``GET  /v1/health`` -> ``{"model", "version", "sample_rate", "queue"}``
- ``POST /v1/jobs``   body ``{"request": JobRequest, "song": base64 song archive | null}`` ->
  ``application/x-ndjson`` stream: ``progress`` / ``audio`` (base64 float32, generate only) /
  ``heartbeat`` events, then one ``result`` (base64 song archive, and ``length``: requested vs delivered
  seconds and why, as in the song's ``settings["length"]``) or ``error`` / ``cancelled`` (``message``,
  ``code``). Closing the connection cancels the job at the next block. A refused job gets no stream but
  ``{"detail": message, "code": code}`` with the HTTP status of its :class:`~dr2studio.engine.ErrorCode`:
  400 ``bad_request`` (the message of :mod:`dr2studio.requests`), 413 ``too_large``, 503 ``busy`` (queue full).

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

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from dr2studio import __version__
from dr2studio.engine import (
    ErrorCode,
    EventType,
    JobError,
    JobEvent,
    JobRequest,
    LocalEngine,
    StreamType,
    encode_event,
    error_body,
    error_code_of,
    parse_payload,
    song_to_bytes,
)

log = logging.getLogger(__name__)

__all__ = ["Dr2Deployment", "build_app", "app", "refusal", "HEARTBEAT_S", "MAX_BODY_BYTES"]

HEARTBEAT_S = 1.0
MAX_BODY_BYTES = 512 * 1024 * 1024

app = FastAPI(title="dr2studio", version=__version__)


def refusal(exc: BaseException) -> JSONResponse:
    """The HTTP reply to a refused job: the status of the error's code (bad request 400, forbidden 403,
    too large 413, queue full 503, ...), with ``{"detail": message, "code": code}``."""
    code = error_code_of(exc)
    return JSONResponse(error_body(str(exc), code), status_code=code.http_status)


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
    async def jobs(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return refusal(JobError(f"request body of {len(body)} bytes exceeds {MAX_BODY_BYTES}", ErrorCode.TOO_LARGE))
        try:
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise JobError(f"body is not JSON: {exc}", ErrorCode.BAD_REQUEST) from exc
            parsed = await asyncio.to_thread(parse_payload, payload)
            stream = self._stream(*parsed)
            first = await stream.__anext__()  # surfaces a full queue (503) before the 200 goes out
        except JobError as exc:
            return refusal(exc)

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
            parsed = await asyncio.to_thread(parse_payload, payload)
            async for event in self._stream(*parsed):
                yield event
        except JobError as exc:
            yield encode_event(JobEvent("", EventType.ERROR, message=str(exc), code=exc.code))

    async def _stream(self, request: JobRequest, song: Any) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()

        def listener(event: JobEvent) -> None:  # engine worker thread -> event loop
            loop.call_soon_threadsafe(queue.put_nowait, event)

        job = self.engine.submit(request, song=song, job_id=f"serve-{uuid.uuid4().hex[:12]}", on_event=listener)
        try:
            yield {"type": StreamType.ACCEPTED.value, "job": job.id}
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    yield {"type": StreamType.HEARTBEAT.value}
                    continue
                if event.type in (EventType.QUEUED, EventType.STARTED):
                    continue
                if event.type == EventType.DONE:
                    blob = await asyncio.to_thread(song_to_bytes, job.result)
                    yield {"type": StreamType.RESULT.value, "song": base64.b64encode(blob).decode("ascii"),
                           "length": event.length}
                    return
                yield encode_event(event)
                if event.type in (EventType.ERROR, EventType.CANCELLED):
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
