"""What every engine is: a :class:`~dr2studio.engine.jobs.JobQueue` around one runner, fed checked requests."""
from __future__ import annotations

from typing import Any, Protocol

from dr2studio.config import ConfigError
from dr2studio.engine.jobs import ErrorCode, EventCallback, Job, JobError, JobQueue
from dr2studio.engine.wire import JobRequest
from dr2studio.requests import ExtendRequest, GenerateRequest, InfillRequest, RequestError

__all__ = ["Engine", "QueueEngine", "as_job_request"]


def as_job_request(request: Any) -> JobRequest:
    """A :class:`JobRequest`, from itself or from a typed request of :mod:`dr2studio.requests`."""
    if isinstance(request, JobRequest):
        return request
    if isinstance(request, (GenerateRequest, ExtendRequest, InfillRequest)):
        return JobRequest.from_typed(request)
    raise JobError(f"an engine runs JobRequest or typed requests, got {type(request).__name__}", ErrorCode.BAD_REQUEST)


class Engine(Protocol):
    """What the CLI and the bridge need from an engine."""

    def submit(self, request: JobRequest, *, song: Any = None, job_id: str | None = None,
               on_event: EventCallback | None = None) -> Job: ...

    def get(self, job_id: str) -> Job | None: ...

    def cancel(self, job_id: str) -> bool: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class QueueEngine:
    """Shared plumbing: validate at entry, then hand the job to the queue's runner."""

    _queue: JobQueue

    def submit(self, request: Any, *, song: Any = None, job_id: str | None = None,
               on_event: EventCallback | None = None) -> Job:
        """Validate and queue ``request`` (a :class:`JobRequest` or a typed request); ``song`` is the
        input of extend / infill. A bad value raises :class:`JobError` with code ``bad_request``."""
        request = as_job_request(request)
        try:
            request.validate()
            if request.kind in ("extend", "infill") and song is None:
                raise JobError(f"{request.kind} needs a song to work on", ErrorCode.BAD_REQUEST)
            request.check_song(song)
        except (RequestError, ConfigError) as exc:
            raise JobError(str(exc), ErrorCode.BAD_REQUEST) from exc
        return self._queue.submit(request, song=song, job_id=job_id, on_event=on_event)

    def get(self, job_id: str) -> Job | None:
        return self._queue.get(job_id)

    def cancel(self, job_id: str) -> bool:
        return self._queue.cancel(job_id)

    def close(self) -> None:
        self._queue.close()

    def pending(self) -> int:
        """Jobs queued or running right now."""
        return sum(1 for j in self._queue.jobs() if not j.finished)

    def __enter__(self) -> "QueueEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
