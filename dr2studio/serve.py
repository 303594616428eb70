"""Ray Serve deployment: the studio behind HTTP, with streamed progress and audio.

Each replica loads the model once and runs jobs through a :class:`~dr2studio.engine.LocalEngine`
(one at a time per replica, a bounded queue behind it). Routes (FastAPI ingress):

- ``GET  /v1/health`` -> ``{"model", "version", "sample_rate", "fingerprint", "queue", "capacity"}``, at
  once even while jobs render (values fixed at load; spare request slots beyond the jobs)
- ``POST /v1/jobs``   body ``{"request": JobRequest, "song": base64 song archive | null}`` ->
  ``application/x-ndjson`` stream: ``progress`` / ``audio`` (base64 float32, generate only) /
  ``heartbeat`` events, then one ``result`` (base64 song archive, and ``length``: requested vs delivered
  seconds and why, as in the song's ``settings["length"]``) or ``error`` / ``cancelled`` (``message``,
  ``code``). Closing the connection cancels the job at the next block. A refused job gets no stream but
  ``{"detail": message, "code": code}`` with the HTTP status of its :class:`~dr2studio.engine.ErrorCode`:
  400 ``bad_request`` (the message of :mod:`dr2studio.requests`, the field named), 413 ``too_large``,
  503 ``busy`` (the replica already holds ``max_pending + 1`` jobs: answered before the body is read).

Serve on a network: ``lyrics`` and ``style`` are data only (never a server path, see
:class:`~dr2studio.requests.PlainText`); the body is refused on its Content-Length at the proxy
(:mod:`dr2studio.serve_proxy`) and again while the replica reads it; a song archive inflates within
:data:`~dr2studio.requests.MAX_SONG_BYTES`.

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
    QueueFull,
    StreamType,
    encode_event,
    error_body,
    error_code_of,
    parse_payload,
    song_to_bytes,
)
from dr2studio.requests import MAX_BODY_BYTES, MAX_SONG_BYTES

log = logging.getLogger(__name__)

__all__ = ["Dr2Deployment", "build_app", "app", "refusal", "read_body", "HEARTBEAT_S", "MAX_BODY_BYTES",
           "HEALTH_SLOTS", "ROUTER_QUEUE"]

HEARTBEAT_S = 1.0
#: Ongoing-request slots a replica keeps beyond the jobs it admits, so /v1/health (and quick refusals)
#: never wait in Serve's router behind running jobs.
HEALTH_SLOTS = 8
#: Requests Serve's router may hold per deployment when every replica's slots are taken; beyond it the
#: proxy answers 503 at once instead of queueing without limit.
ROUTER_QUEUE = 16

app = FastAPI(title="dr2studio", version=__version__)


def refusal(exc: BaseException) -> JSONResponse:
    """The HTTP reply to a refused job: the status of the error's code (bad request 400, forbidden 403,
    too large 413, queue full 503, ...), with ``{"detail": message, "code": code}``."""
    code = error_code_of(exc)
    return JSONResponse(error_body(str(exc), code), status_code=code.http_status)


async def read_body(request: Request, limit: int) -> bytearray:
    """The request body, refused (:attr:`ErrorCode.TOO_LARGE`) on its declared Content-Length and again
    while it streams in, so an oversized body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise JobError(f"Content-Length {declared[:40]!r} is not a number", ErrorCode.BAD_REQUEST) from None
        if size > limit:
            raise JobError(f"request body of {size} bytes exceeds the limit of {limit}", ErrorCode.TOO_LARGE)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise JobError(f"request body exceeds the limit of {limit} bytes", ErrorCode.TOO_LARGE)
        body += chunk
    return body


def _loads(body: bytes | bytearray) -> Any:
    """JSON from a body; anything unparseable (deep nesting included) is the client's 400."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise JobError(f"body is not JSON: {str(exc)[:200]}", ErrorCode.BAD_REQUEST) from None


async def _given(payload: Any) -> Any:
    """A handle caller's payload, already parsed by Ray, in the shape :meth:`Dr2Deployment._admit` awaits."""
    return payload


async def _line(event: dict[str, Any]) -> bytes:
    """One NDJSON line; a result (a whole song) is encoded off the event loop so health stays prompt."""
    if event.get("type") == StreamType.RESULT.value:
        return await asyncio.to_thread(lambda: (json.dumps(event) + "\n").encode())
    return (json.dumps(event) + "\n").encode()


@serve.deployment(name="dr2studio", max_ongoing_requests=16)
@serve.ingress(app)
class Dr2Deployment:
    """One replica: a loaded model and its job queue.

    Admission: a replica holds at most ``max_pending + 1`` jobs (the one it renders and its queue,
    bodies being read included); one more is answered 503 ``busy`` at once, before its body is read.
    Health answers from values fixed at load and a lock-free count, never behind a job.
    """

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None, max_pending: int = 8,
                 style_embedding: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 max_song_bytes: int = MAX_SONG_BYTES) -> None:
        style = None
        if style_embedding:  # the operator's file, named at deploy time (trusted), never a request's
            from dr2studio.style.embedding import load_style_embedding

            style = load_style_embedding(style_embedding)
        self.model = model
        self.max_jobs = int(max_pending) + 1
        self.max_body_bytes = int(max_body_bytes)
        self.max_song_bytes = int(max_song_bytes)
        self._entering = 0  # admitted requests whose body is still read or parsed (event loop only)
        self.engine = LocalEngine(model, device=device, dtype=dtype, max_pending=max_pending, style_embedding=style)
        studio = self.engine.studio
        self._info = {"model": str(self.model), "version": __version__, "sample_rate": int(studio.sample_rate),
                      "fingerprint": studio.fingerprint}

    def _admitted(self) -> int:
        return self._entering + self.engine.pending()

    @app.get("/v1/health")
    async def health(self) -> dict[str, Any]:
        """Who this replica is and how busy: no lock a job holds, no model call, nothing that waits."""
        return {**self._info, "queue": self.engine.pending(), "capacity": self.max_jobs}

    @app.post("/v1/jobs")
    async def jobs(self, request: Request) -> Response:
        try:
            stream = await self._admit(lambda: self._read_payload(request))
            first = await stream.__anext__()  # surfaces a full queue (503) before the 200 goes out
        except JobError as exc:
            return refusal(exc)

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield await _line(first)
                async for event in stream:
                    yield await _line(event)
            finally:
                await stream.aclose()  # a disconnect lands here: cancels the job

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def events(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The same event stream for ``DeploymentHandle`` callers (``options(stream=True)``)."""
        try:
            stream = await self._admit(lambda: _given(payload))
            async for event in stream:
                yield event
        except JobError as exc:
            yield encode_event(JobEvent("", EventType.ERROR, message=str(exc), code=exc.code))

    async def _read_payload(self, request: Request) -> Any:
        body = await read_body(request, self.max_body_bytes)
        return await asyncio.to_thread(_loads, body)

    async def _admit(self, payload: Any) -> AsyncIterator[dict[str, Any]]:
        """Admission control, then the parsed job's stream: a full replica refuses at once with 503 busy."""
        if self._admitted() >= self.max_jobs:
            raise QueueFull(f"this replica already holds {self.max_jobs} jobs (one rendering, "
                            f"{self.max_jobs - 1} waiting); try again later")
        self._entering += 1
        try:
            parsed = await asyncio.to_thread(parse_payload, await payload(), max_song_bytes=self.max_song_bytes)
            return self._stream(*parsed)
        finally:
            self._entering -= 1

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
    (1 per replica), ``device``, ``dtype``, ``max_pending`` (8), ``style_embedding`` (a .npy path),
    ``max_body_bytes`` (:data:`~dr2studio.requests.MAX_BODY_BYTES`), ``max_song_bytes``
    (:data:`~dr2studio.requests.MAX_SONG_BYTES`). A replica takes ``max_pending + 1`` jobs plus
    :data:`HEALTH_SLOTS` quick requests; Serve's router holds at most :data:`ROUTER_QUEUE` more, then 503.
    """
    if not args.get("model"):
        raise ValueError("build_app needs model=<model directory or hub id>")
    num_gpus = float(args.get("num_gpus", 0) or 0)
    max_pending = int(args.get("max_pending", 8))
    options = {
        "num_replicas": int(args.get("num_replicas", 1)),
        "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": float(args.get("num_cpus", 1))},
        "max_ongoing_requests": max_pending + 1 + HEALTH_SLOTS,
        "max_queued_requests": ROUTER_QUEUE,
    }
    device = args.get("device") or ("cuda" if num_gpus > 0 else None)
    return Dr2Deployment.options(**options).bind(
        str(args["model"]), device=device, dtype=args.get("dtype"), max_pending=max_pending,
        style_embedding=args.get("style_embedding"),
        max_body_bytes=int(args.get("max_body_bytes", MAX_BODY_BYTES)),
        max_song_bytes=int(args.get("max_song_bytes", MAX_SONG_BYTES)),
    )
