"""The take browser's web app (Starlette): the page, its JSON API, the takes' audio, actions and ratings.

Routes (all answers JSON unless said; errors are ``{"error": message}`` with a 4xx for the request's fault):

- ``GET /`` the page; ``GET /static/...`` its script and style (plain files, no build step).
- ``GET /api/project``: the project, its takes (summaries), the current ratings and newest scores.
- ``GET /api/takes/{take}``: one take: manifest entry, ruler (bars, blocks, sections with lyrics, edits),
  ratings, scores. ``GET /api/takes/{take}/audio/{stem}``: the stem's WAV (byte ranges served).
  ``GET /api/takes/{take}/waveform/{stem}?points=N`` and ``.../spectrogram/{stem}``: what the canvases draw.
- ``GET /files/{path}``: an audio file inside the project (nothing else, nothing outside: 403).
- ``POST /api/takes/{take}/ratings`` ``{"stars": 1..5, "dimension": "overall"|...}``: a rating (source ``web``).
- ``POST /api/takes/{take}/actions`` ``{"action": "extend"|"regenerate"|"new_seed", ...}``: 202 and the job.
- ``GET /api/jobs``, ``GET /api/jobs/{id}``, ``GET /api/jobs/{id}/events`` (server-sent events),
  ``GET /api/jobs/{id}/audio.wav`` (the audio streamed so far), ``POST /api/jobs/{id}/cancel``.

Requests from other web sites are refused: POST bodies must be ``application/json`` (a cross-site form
cannot send that without the browser asking first), an ``Origin`` must be this server, and the ``Host``
must be the address the server was started on (DNS rebinding), see :func:`create_app`.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dr2studio.ui.actions import UiJobs
from dr2studio.ui.analysis import AnalysisError, spectrogram, waveform
from dr2studio.ui.project import ProjectView, UiError, take_timeline

log = logging.getLogger(__name__)

__all__ = ["create_app", "STATIC_DIR", "MAX_POST_BYTES"]

STATIC_DIR = Path(__file__).with_name("static")
#: The largest POST body (bytes): ratings and actions are small; lyrics are at most a few kilobytes.
MAX_POST_BYTES = 256 * 1024
_SUMMARY_KEYS = ("take", "created", "origin", "kind", "position_seconds", "position_beats", "duration_seconds",
                 "sample_rate", "seed", "style", "preset", "parent_take", "action", "job")


def _error(exc: UiError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


def _ratings_module() -> Any:
    try:
        from dr2studio import ratings
    except ImportError as exc:
        raise UiError(f"ratings are not available in this install ({exc})", 503) from exc
    return ratings


async def _json_body(request: Request) -> Any:
    """The POST's JSON body: ``application/json``, at most :data:`MAX_POST_BYTES`, parsed; else 4xx."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UiError(f"send the body as application/json, not {ctype or 'no content type'}", 415)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_POST_BYTES):
        raise UiError(f"the body must be at most {MAX_POST_BYTES} bytes", 413)
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_POST_BYTES:
            raise UiError(f"the body must be at most {MAX_POST_BYTES} bytes", 413)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UiError(f"the body is not JSON: {exc}", 400) from None


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc != host:
        raise UiError(f"requests from {origin} are not accepted (this page serves {host} only)", 403)


def create_app(project: ProjectView | Callable[[], ProjectView], *, jobs: UiJobs | None = None,
               block_seconds: float | None = None, allowed_hosts: list[str] | None = None,
               engine_name: str | None = None) -> Starlette:
    """The app over ``project`` (a view, or a callable giving the current one: the bridge's open project).

    ``jobs`` runs actions (None: the page is read-only and actions answer 503). ``block_seconds`` is the
    model's block length, drawn on the ruler. ``allowed_hosts``: ``Host`` headers accepted (default: the
    loopback names; ``["*"]`` when the server listens on every address).
    """
    current: Callable[[], ProjectView] = project if callable(project) else (lambda: project)  # type: ignore[assignment]

    def handler(fn: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except UiError as exc:
                return _error(exc)
            except AnalysisError as exc:
                return _error(UiError(str(exc), 422))
        return endpoint

    def ratings_of(view: ProjectView) -> dict[str, Any]:
        try:
            module = _ratings_module()
        except UiError:
            return {}
        try:
            return module.RatingStore(view.root).all_current()
        except (ValueError, OSError) as exc:
            log.warning("cannot read the ratings of %s: %s", view.root, exc)
            return {}

    def dimensions() -> list[str]:
        try:
            module = _ratings_module()
        except UiError:
            return []
        return [module.OVERALL, *module.DIMENSIONS]

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    async def project_info(request: Request) -> Response:
        def build() -> dict[str, Any]:
            view = current()
            manifest = view.manifest()
            takes = []
            for entry in manifest.get("takes", []):
                if not isinstance(entry, dict) or not isinstance(entry.get("take"), str):
                    continue
                summary = {k: entry.get(k) for k in _SUMMARY_KEYS}
                summary["stems"] = sorted((entry.get("files") or {}).keys()) if isinstance(entry.get("files"), dict) else []
                lyrics = entry.get("lyrics") if isinstance(entry.get("lyrics"), str) else ""
                summary["first_line"] = next((ln for ln in lyrics.splitlines() if ln.strip() and not ln.startswith("[")), "")
                takes.append(summary)
            return {"name": view.root.name, "root": str(view.root), "daw": manifest.get("daw"),
                    "sample_rate": manifest.get("sample_rate"), "takes": takes, "ratings": ratings_of(view),
                    "scores": view.scores(), "dimensions": dimensions(), "actions": jobs is not None and jobs.engine is not None,
                    "engine": engine_name, "block_seconds": block_seconds}
        return JSONResponse(await run_in_threadpool(build))

    async def take_info(request: Request) -> Response:
        def build() -> dict[str, Any]:
            view = current()
            name = request.path_params["take"]
            entry = view.take(name)
            current_ratings = ratings_of(view).get(name)
            return {"take": entry, "timeline": take_timeline(entry, block_seconds=block_seconds),
                    "ratings": current_ratings, "scores": view.scores().get(name)}
        return JSONResponse(await run_in_threadpool(build))

    async def take_audio(request: Request) -> Response:
        path = current().take_file(request.path_params["take"], request.path_params["stem"])
        return FileResponse(path, media_type="audio/wav" if path.suffix.lower() == ".wav" else None)

    async def take_waveform(request: Request) -> Response:
        points = _int_param(request, "points", 1000)
        path = current().take_file(request.path_params["take"], request.path_params["stem"])
        return JSONResponse(await run_in_threadpool(waveform, path, points))

    async def take_spectrogram(request: Request) -> Response:
        frames = _int_param(request, "frames", 400)
        bins = _int_param(request, "bins", 96)
        path = current().take_file(request.path_params["take"], request.path_params["stem"])
        return JSONResponse(await run_in_threadpool(spectrogram, path, frames, bins))

    async def project_file(request: Request) -> Response:
        path = current().audio_file(request.path_params["path"])
        return FileResponse(path)

    async def rate(request: Request) -> Response:
        _same_origin(request)
        body = await _json_body(request)
        view = current()
        name = request.path_params["take"]
        view.take(name)  # 404 for a take the project does not have
        if not isinstance(body, dict) or "stars" not in body:
            raise UiError('a rating is {"stars": 1..5, "dimension": "overall"}', 400)
        unknown = sorted(set(body) - {"stars", "dimension"})
        if unknown:
            raise UiError(f"a rating does not take {', '.join(unknown)}", 400)
        module = _ratings_module()
        stars, dimension = body["stars"], body.get("dimension", module.OVERALL)
        if isinstance(stars, bool) or not isinstance(stars, int) or not isinstance(dimension, str):
            raise UiError(f"stars must be a whole number and dimension a name, got {stars!r}, {dimension!r}", 400)

        def store() -> Any:
            ratings = module.RatingStore(view.root)
            rating = ratings.rate(name, stars, dimension=dimension, source="web")
            return rating, ratings.current(name)
        try:
            rating, now = await run_in_threadpool(store)
        except module.RatingError as exc:
            raise UiError(str(exc), 400) from None
        return JSONResponse({"rating": json.loads(rating.to_json()), "current": now}, status_code=201)

    async def act(request: Request) -> Response:
        _same_origin(request)
        body = await _json_body(request)
        if jobs is None:
            raise UiError("this page was started without a model: actions are off", 503)
        record = await run_in_threadpool(jobs.submit, request.path_params["take"], body)
        return JSONResponse({"job": record.to_json()}, status_code=202)

    def job_of(request: Request) -> Any:
        record = jobs.get(request.path_params["job"]) if jobs is not None else None
        if record is None:
            raise UiError(f"no job {request.path_params['job'][:80]!r}", 404)
        return record

    async def job_list(request: Request) -> Response:
        return JSONResponse({"jobs": [j.to_json() for j in (jobs.jobs() if jobs is not None else [])]})

    async def job_info(request: Request) -> Response:
        return JSONResponse({"job": job_of(request).to_json()})

    async def job_cancel(request: Request) -> Response:
        _same_origin(request)
        record = job_of(request)
        if not jobs.cancel(record.id):  # type: ignore[union-attr]
            raise UiError(f"job {record.id} is not queued or running", 409)
        return JSONResponse({"job": record.to_json()})

    async def job_audio(request: Request) -> Response:
        data = await run_in_threadpool(job_of(request).audio_wav)
        if data is None:
            raise UiError("no audio has been streamed for this job (yet)", 404)
        return Response(data, media_type="audio/wav", headers={"Cache-Control": "no-store"})

    async def job_events(request: Request) -> Response:
        record = job_of(request)
        try:
            last = int(request.headers.get("last-event-id") or request.query_params.get("after") or 0)
        except ValueError:
            raise UiError("Last-Event-ID must be a number", 400) from None

        async def stream() -> Any:
            nonlocal last
            yield f"event: job\ndata: {json.dumps(record.to_json())}\n\n"
            idle = 0.0
            while True:
                events = record.since(last)
                for event in events:
                    last = event["seq"]
                    yield f"id: {last}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
                if not events and record.finished:
                    break
                if await request.is_disconnected():
                    break
                idle = 0.0 if events else idle + 0.1
                if idle >= 10.0:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", handler(index)),
        Route("/api/project", handler(project_info)),
        Route("/api/takes/{take}", handler(take_info)),
        Route("/api/takes/{take}/audio/{stem}", handler(take_audio)),
        Route("/api/takes/{take}/waveform/{stem}", handler(take_waveform)),
        Route("/api/takes/{take}/spectrogram/{stem}", handler(take_spectrogram)),
        Route("/api/takes/{take}/ratings", handler(rate), methods=["POST"]),
        Route("/api/takes/{take}/actions", handler(act), methods=["POST"]),
        Route("/api/jobs", handler(job_list)),
        Route("/api/jobs/{job}", handler(job_info)),
        Route("/api/jobs/{job}/events", handler(job_events)),
        Route("/api/jobs/{job}/audio.wav", handler(job_audio)),
        Route("/api/jobs/{job}/cancel", handler(job_cancel), methods=["POST"]),
        Route("/files/{path:path}", handler(project_file)),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "::1"]
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                    exception_handlers={404: _not_found, 405: _not_allowed})
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no such page {request.url.path[:200]!r}"}, status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path[:200]!r}"}, status_code=405)


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 6:
        raise UiError(f"{name} must be a whole number, got {value[:20]!r}", 400)
    return int(value)
