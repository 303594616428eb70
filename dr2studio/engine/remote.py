"""The Serve engine: the same jobs, sent to the Ray Serve deployment of :mod:`dr2studio.serve`."""
from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from typing import Any, Iterator

import numpy as np

from dr2studio.engine.base import QueueEngine
from dr2studio.engine.jobs import ErrorCode, Job, JobContext, JobError, JobQueue
from dr2studio.engine.wire import consume_events, song_to_bytes

__all__ = ["ServeEngine"]


class ServeEngine(QueueEngine):
    """Runs jobs on the Ray Serve deployment of :mod:`dr2studio.serve`.

    ``target`` is the HTTP base URL (``http://127.0.0.1:8000``) or a Serve ``DeploymentHandle``
    (inside the cluster). ``concurrency`` jobs are in flight at once (match it to the replicas);
    cancelling a job closes its stream, which cancels the request on the replica. A refusal or failure
    on the server fails the job with the :class:`~dr2studio.engine.ErrorCode` the server gave.
    """

    def __init__(self, target: Any, *, concurrency: int = 1, max_pending: int = 8, timeout: float = 3600.0,
                 style_embedding: Any = None) -> None:
        self.target = target.rstrip("/") if isinstance(target, str) else target
        if isinstance(self.target, str) and not re.match(r"^https?://", self.target):
            raise ValueError(f"engine URL {target!r} must start with http:// or https://")
        self.timeout = timeout
        self.style_embedding = style_embedding
        self._queue = JobQueue(self._run, workers=concurrency, max_pending=max_pending, name="dr2-serve")

    def describe(self) -> str:
        return f"serve:{self.target if isinstance(self.target, str) else 'handle'}"

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        """Ask the deployment who it is; raise :class:`JobError` when it cannot be reached."""
        if not isinstance(self.target, str):
            return self.target.health.remote().result(timeout_s=timeout)
        try:
            with urllib.request.urlopen(f"{self.target}/v1/health", timeout=timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise JobError(f"cannot reach dr2studio serve at {self.target}: {exc}") from exc

    def _payload(self, job: Job) -> dict[str, Any]:
        request = job.request.to_dict()
        if request.get("style_embedding") is None and not request.get("style") and self.style_embedding is not None:
            request["style_embedding"] = [float(v) for v in np.asarray(self.style_embedding).reshape(-1)]
        song = base64.b64encode(song_to_bytes(job.song)).decode("ascii") if job.song is not None else None
        return {"request": request, "song": song}

    def _run(self, job: Job, ctx: JobContext) -> Any:
        payload = self._payload(job)
        ctx.check()
        if isinstance(self.target, str):
            events = self._http_events(payload)
        else:
            events = self._handle_events(payload)
        try:
            return consume_events(events, ctx)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # drops the connection: the replica sees the disconnect and cancels

    def _http_events(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        body = json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(f"{self.target}/v1/jobs", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/x-ndjson"})
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail, code = exc.read().decode("utf-8", "replace"), ErrorCode.from_status(exc.code)
            try:
                reply = json.loads(detail)
                detail = reply.get("detail", detail)
                code = ErrorCode.parse(reply.get("code"), code)
            except (ValueError, AttributeError):
                pass
            raise JobError(f"dr2studio serve refused the job (HTTP {exc.code}): {detail}", code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise JobError(f"cannot reach dr2studio serve at {self.target}: {exc}") from exc
        with resp:
            for line in resp:
                line = line.strip()
                if line:
                    yield json.loads(line)

    def _handle_events(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        gen = self.target.options(stream=True).events.remote(payload)
        try:
            yield from gen
        finally:
            try:
                gen.cancel()
            except Exception:  # already finished
                pass
