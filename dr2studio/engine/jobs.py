"""Jobs: states, events, error codes and the bounded queue every engine (and the bridge) runs on.

A job has an id chosen by the caller (a repeated id returns the same job, so a DAW that re-sends a
request does not start a second render), progress events, streamed audio blocks, cancellation, and
waits in a bounded queue. States, event types and error codes are :class:`enum.StrEnum` members, so
they compare equal to (and serialise to JSON as) the plain strings clients have always seen.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import re
import threading
from typing import Any, Callable

import numpy as np

from dr2studio.engine.memory import return_free_memory

log = logging.getLogger(__name__)

__all__ = [
    "JobState",
    "EventType",
    "ErrorCode",
    "error_code_of",
    "JobError",
    "JobCancelled",
    "QueueFull",
    "JobEvent",
    "EventCallback",
    "Job",
    "JobContext",
    "JobQueue",
    "Runner",
    "result_length",
    "JOB_ID_RE",
]

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class JobState(enum.StrEnum):
    """Where a job is: waiting, rendering, or ended one of three ways."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventType(enum.StrEnum):
    """What a :class:`JobEvent` reports (the ``type`` of a streamed Serve event too)."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    AUDIO = "audio"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


class ErrorCode(enum.StrEnum):
    """Why a job was refused or failed; each maps to one HTTP status (Serve replies, bridge error events)."""

    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    CANCELLED = "cancelled"
    FAILED = "failed"
    BUSY = "busy"

    @property
    def http_status(self) -> int:
        return _STATUS[self]

    @classmethod
    def from_status(cls, status: int) -> "ErrorCode":
        """The code of an HTTP-like status (the bridge's :class:`BridgeError` codes); unknown ones: FAILED."""
        for code, value in _STATUS.items():
            if value == status:
                return code
        return cls.BAD_REQUEST if 400 <= status < 500 else cls.FAILED

    @classmethod
    def parse(cls, value: Any, default: "ErrorCode | None" = None) -> "ErrorCode":
        """A code from its wire text (or an HTTP status); ``default`` (FAILED) when it names none."""
        if isinstance(value, bool):
            return default or cls.FAILED
        if isinstance(value, int):
            return cls.from_status(value)
        try:
            return cls(value)
        except ValueError:
            return default or cls.FAILED


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.CANCELLED: 499,
    ErrorCode.FAILED: 500,
    ErrorCode.BUSY: 503,
}


#: Finished jobs whose result songs stay in memory (a 4-minute 48 kHz stereo song is ~90 MB as float32).
KEEP_RESULTS = 16

class JobError(RuntimeError):
    """A job was refused or failed; the message says why and ``code`` (an :class:`ErrorCode`) what kind."""

    code: ErrorCode = ErrorCode.FAILED

    def __init__(self, message: str = "", code: ErrorCode | str | int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = ErrorCode.parse(code, type(self).code)


class JobCancelled(JobError):
    """A job was cancelled before it finished."""

    code = ErrorCode.CANCELLED


class QueueFull(JobError):
    """The engine already holds as many waiting jobs as it accepts."""

    code = ErrorCode.BUSY


def error_code_of(exc: BaseException) -> ErrorCode:
    """The :class:`ErrorCode` an exception carries: its ``code`` (an ErrorCode, its text such as
    :class:`~dr2studio.requests.RequestError`'s ``"bad_request"``, or an HTTP-like int such as the
    bridge's), else FAILED."""
    if isinstance(exc, JobCancelled):
        return ErrorCode.CANCELLED
    code = getattr(exc, "code", None)
    if code is None:
        return ErrorCode.FAILED
    return ErrorCode.parse(code)


@dataclasses.dataclass
class JobEvent:
    """One thing that happened to a job, delivered to ``on_event`` callbacks in order.

    ``type``: ``queued``, ``started``, ``progress`` (``fraction`` 0..1, ``stage``), ``audio``
    (``audio`` [channels, n] float32 starting at sample ``offset`` of the output song: from 0 for
    generate, from the splice point for extend, none for infill), ``done`` (``length``: requested vs
    delivered seconds and why, see :func:`dr2studio.studio.length_report`; ``message`` is the reason
    when the song came out shorter than asked), ``error`` (``message``, ``code``) or ``cancelled``.
    """

    job_id: str
    type: EventType
    fraction: float = 0.0
    stage: str = ""
    message: str = ""
    audio: np.ndarray | None = None
    offset: int = 0
    length: dict[str, Any] | None = None
    code: ErrorCode | None = None

    def __post_init__(self) -> None:
        self.type = EventType(self.type)


EventCallback = Callable[[JobEvent], None]


class Job:
    """A submitted request. Thread-safe; :meth:`wait` blocks until it ends.

    ``error`` (message) and ``error_code`` (:class:`ErrorCode`) say why a failed or cancelled job ended.
    """

    def __init__(self, job_id: str, request: Any, song: Any = None) -> None:
        self.id = job_id
        self.request = request
        self.song = song  # the input song of extend / infill
        self.state = JobState.QUEUED
        self.fraction = 0.0
        self.stage = ""
        self.result: Any = None
        self.error: str | None = None
        self.error_code: ErrorCode | None = None
        self._delivered = False  # a listener saw it end, or wait() returned the song: it may be dropped later
        self._released = False  # the result song was dropped to bound memory (see JobQueue keep_results)
        self._released_length: dict[str, Any] | None = None
        self._listeners: list[EventCallback] = []
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def add_listener(self, callback: EventCallback) -> None:
        with self._lock:
            self._listeners.append(callback)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the job ends (or ``timeout``); ``True`` when it has ended."""
        return self._finished.wait(timeout)

    def wait(self, timeout: float | None = None) -> Any:
        """Return the resulting song; raise :class:`JobCancelled` / :class:`JobError` (with the job's code) otherwise."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        if self.state == JobState.CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled")
        if self.state == JobState.FAILED:
            raise JobError(f"job {self.id} failed: {self.error}", self.error_code)
        if self._released:
            raise JobError(f"job {self.id} is done, but its song is no longer kept (the engine keeps only the "
                           "newest delivered results; the song was delivered when the job ended)", ErrorCode.NOT_FOUND)
        self._delivered = True
        return self.result

    @property
    def length(self) -> dict[str, Any] | None:
        """The result's requested vs delivered seconds and why (``settings["length"]``); None before it is done."""
        return self._released_length if self._released else result_length(self.result)

    def release(self) -> None:
        """Drop what a finished, delivered job holds (its id, state and length stay), so that a long
        session's finished jobs do not hold every song in memory: the result song, the input song, the
        request (a bridge job's request carries its session snapshot, and so a song) and the listeners
        (they close over their caller's state: the bridge's job context, and through it that snapshot).
        A result nobody has received yet (no listener, no :meth:`wait`) is kept."""
        with self._lock:
            if not self._finished.is_set() or self._released or not self._delivered:
                return
            self._released_length = result_length(self.result)
            self._released = self.result is not None
            self.result = None
            self.song = None
            self.request = None
            self._listeners.clear()

    def _emit(self, event: JobEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(event)
            except Exception:  # a listener must never kill the worker
                log.exception("job %s: event listener failed on %s", self.id, event.type)

    def _finish(self, state: JobState, result: Any = None, error: str | None = None,
                code: ErrorCode | None = None) -> None:
        self.state, self.result, self.error = JobState(state), result, error
        if self.state == JobState.CANCELLED:
            code = ErrorCode.CANCELLED
        elif self.state == JobState.FAILED and code is None:
            code = ErrorCode.FAILED
        self.error_code = code
        if self.state == JobState.DONE:
            self.fraction = 1.0
        self._finished.set()
        if self.state == JobState.DONE:
            length = result_length(result)
            reason = (length or {}).get("reason") or ""
            self._emit(JobEvent(self.id, EventType.DONE, 1.0, "done", message=reason, length=length))
            with self._lock:
                self._delivered = self._delivered or bool(self._listeners)  # they had their chance to take it
        else:
            kind = EventType.CANCELLED if self.state == JobState.CANCELLED else EventType.ERROR
            self._emit(JobEvent(self.id, kind, message=error or "", code=code))


def result_length(song: Any) -> dict[str, Any] | None:
    """``song.settings["length"]`` when there is one (a song from generate or extend)."""
    settings = getattr(song, "settings", None)
    length = settings.get("length") if isinstance(settings, dict) else None
    return length if isinstance(length, dict) else None


class JobContext:
    """Handed to a runner: report progress and audio, and notice cancellation."""

    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def cancelled(self) -> bool:
        return self.job.cancel_requested

    def check(self) -> None:
        """Raise :class:`JobCancelled` if someone cancelled the job; runners call it between blocks."""
        if self.job.cancel_requested:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    def progress(self, fraction: float, stage: str = "") -> None:
        self.check()
        fraction = min(1.0, max(0.0, float(fraction)))
        self.job.fraction, self.job.stage = fraction, stage
        self.job._emit(JobEvent(self.job.id, EventType.PROGRESS, fraction, stage))

    def audio(self, chunk: np.ndarray, offset: int) -> None:
        self.check()
        self.job._emit(JobEvent(self.job.id, EventType.AUDIO, self.job.fraction, self.job.stage, audio=chunk,
                                offset=offset))


Runner = Callable[[Job, JobContext], Any]


class JobQueue:
    """Bounded FIFO of jobs served by ``workers`` threads calling ``runner(job, ctx) -> song``.

    ``max_pending`` bounds the jobs waiting to start (running ones do not count); a submit beyond it
    raises :class:`QueueFull` instead of piling up work nobody will wait for. Finished jobs are kept
    (the newest ``history``) so that ids stay idempotent; of the results already delivered (to a
    listener when the job ended, or through :meth:`Job.wait`) only the newest ``keep_results`` keep
    their songs (an older one's :meth:`Job.wait` says its song is no longer kept), so memory stays bounded. A runner's
    exception ends the job ``failed`` with the code it carries (:func:`error_code_of`).
    """

    def __init__(self, runner: Runner, *, workers: int = 1, max_pending: int = 8, history: int = 256,
                 keep_results: int | None = None, name: str = "dr2-job") -> None:
        if workers < 1 or max_pending < 0:
            raise ValueError(f"workers={workers} must be >= 1 and max_pending={max_pending} >= 0")
        self._runner = runner
        self._max_pending = max_pending
        self._history = history
        self._keep_results = max(0, KEEP_RESULTS if keep_results is None else keep_results)
        self._pending: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._counter = 0
        self._reserved = 0  # jobs registered but not yet in _pending
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, request: Any, *, song: Any = None, job_id: str | None = None,
               on_event: EventCallback | None = None) -> Job:
        """Queue a job and return it. A known ``job_id`` returns the existing job unchanged.

        ``request`` is whatever the runner understands (engines pass a :class:`~dr2studio.engine.JobRequest`).
        """
        with self._cond:
            if self._closed:
                raise JobError("the engine is closed", ErrorCode.BUSY)
            if job_id is None:
                self._counter += 1
                job_id = f"job-{self._counter}"
            elif not JOB_ID_RE.match(job_id):
                raise JobError(f"job id {job_id!r} must be 1-64 letters, digits, '_', '-' or '.' and start with a "
                               "letter or digit", ErrorCode.BAD_REQUEST)
            existing = self._jobs.get(job_id)
            if existing is not None:
                if on_event is not None:
                    existing.add_listener(on_event)
                return existing
            if len(self._pending) + self._reserved >= self._max_pending:
                raise QueueFull(f"{len(self._pending)} jobs are already waiting (limit {self._max_pending}); try again later")
            job = Job(job_id, request, song)
            if on_event is not None:
                job.add_listener(on_event)
            self._jobs[job_id] = job
            self._trim()
            self._reserved += 1
        try:
            job._emit(JobEvent(job_id, EventType.QUEUED))  # before any worker can report on it
        finally:
            with self._cond:
                self._reserved -= 1
                closed = self._closed
                if not closed:
                    self._pending.append(job)
                    self._cond.notify()
            if closed:
                job._cancel.set()
                job._finish(JobState.CANCELLED, error="the engine closed")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; ``False`` if unknown or already finished."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return False
            job._cancel.set()
            queued = job in self._pending
            if queued:
                self._pending.remove(job)
        if queued:
            job._finish(JobState.CANCELLED, error=f"job {job_id} was cancelled before it started")
        return True

    def close(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting jobs, cancel the waiting ones (and the running ones) and join the workers."""
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            running = [j for j in self._jobs.values() if j.state == JobState.RUNNING]
            self._cond.notify_all()
        for job in waiting:
            job._cancel.set()
            job._finish(JobState.CANCELLED, error="the engine closed")
        if cancel_running:
            for job in running:
                job._cancel.set()
        for thread in self._threads:
            thread.join(timeout)

    def _trim(self) -> None:
        while len(self._jobs) > self._history:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.finished:
                break
            del self._jobs[oldest_id]
        delivered = [job for job in self._jobs.values() if job.finished and job._delivered and not job._released]
        for job in delivered[: max(0, len(delivered) - self._keep_results)]:
            job.release()  # ids stay idempotent; only the newest results keep their songs in memory

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                job.state = JobState.RUNNING
            job._emit(JobEvent(job.id, EventType.STARTED))
            ctx = JobContext(job)
            try:
                ctx.check()
                result = self._runner(job, ctx)
                ctx.check()
            except JobCancelled as exc:
                job._finish(JobState.CANCELLED, error=str(exc))
            except Exception as exc:  # the job reports; the worker lives on
                # str(exc), not exc: a log record that keeps the exception keeps its frames (and their songs)
                log.warning("job %s failed: %s", job.id, str(exc), exc_info=log.isEnabledFor(logging.DEBUG))
                job._finish(JobState.FAILED, error=f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc),
                            code=error_code_of(exc))
            else:
                job._finish(JobState.DONE, result=result)
            finally:
                result = None  # the worker holds no song while it waits for the next job
            return_free_memory()
