"""One engine interface for the CLI, the OSC/MIDI bridge and scripts.

An engine runs generate / extend / infill *jobs*: each has an id chosen by the caller (a repeated id
returns the same job, so a DAW that re-sends a request does not start a second render), progress
events, streamed audio blocks, cancellation, and waits in a bounded queue.

- :class:`LocalEngine` runs :class:`dr2studio.studio.Studio` in this process (the default: one
  machine, no cluster).
- :class:`ServeEngine` sends the same jobs to the Ray Serve deployment of :mod:`dr2studio.serve`,
  over HTTP (streamed newline-delimited JSON) or through a deployment handle inside the cluster.

Both share :class:`JobQueue`; they differ only in the *runner* that turns a request into a song.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import io
import json
import logging
import re
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from dr2studio.config import ConfigError, JsonConfig

log = logging.getLogger(__name__)

__all__ = [
    "JobRequest",
    "JobEvent",
    "Job",
    "JobContext",
    "JobQueue",
    "JobError",
    "JobCancelled",
    "QueueFull",
    "Engine",
    "LocalEngine",
    "ServeEngine",
    "song_to_bytes",
    "song_from_bytes",
    "run_studio_job",
    "result_length",
    "JOB_ID_RE",
]

JOB_KINDS = ("generate", "extend", "infill")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_LYRICS_CHARS = 64 * 1024
MAX_SECONDS = 600.0


class JobError(RuntimeError):
    """A job failed; the message says why."""


class JobCancelled(JobError):
    """A job was cancelled before it finished."""


class QueueFull(JobError):
    """The engine already holds as many waiting jobs as it accepts."""


@dataclasses.dataclass
class JobRequest(JsonConfig):
    """What to render. JSON-serialisable so that it travels unchanged to a Ray Serve replica.

    ``kind``: ``generate`` (``duration`` seconds from scratch), ``extend`` (``seconds`` more after the
    given song; ``None`` lets the lyrics decide) or ``infill`` (regenerate ``[start, end)`` seconds of
    the given song). ``style`` is a text prompt; ``style_embedding`` a 512-float vector that wins over it.
    ``tempo`` (bpm) drives a model's tempo clock; by default the tempo the ``style`` text states.
    ``full_length`` (generate) holds the song's end off until ``duration``; ``match_level`` (extend,
    infill) brings the new audio to the level of the audio it joins. The result song's
    ``settings["length"]`` says requested vs delivered seconds and why (see :attr:`Job.length`).
    """

    kind: str = "generate"
    lyrics: str = ""
    style: str | None = None
    style_embedding: list[float] | None = None
    duration: float | None = None
    seconds: float | None = None
    start: float | None = None
    end: float | None = None
    steps: int = 32
    cfg_strength: float = 2.0
    seed: int | None = None
    tempo: float | None = None
    full_length: bool = False
    match_level: bool = True

    def validate(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ConfigError(f"job kind {self.kind!r} is not one of {', '.join(JOB_KINDS)}")
        if not isinstance(self.lyrics, str) or len(self.lyrics) > MAX_LYRICS_CHARS:
            raise ConfigError(f"lyrics must be text of at most {MAX_LYRICS_CHARS} characters")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ConfigError(f"steps={self.steps!r} must be an integer in [1, 1000]")
        if not 0.0 <= float(self.cfg_strength) <= 50.0:
            raise ConfigError(f"cfg_strength={self.cfg_strength} must be in [0, 50]")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")
        for name in ("duration", "seconds", "start", "end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= MAX_SECONDS:
                raise ConfigError(f"{name}={value} seconds must be in [0, {MAX_SECONDS:g}]")
        if self.kind == "generate" and not (self.duration and self.duration > 0):
            raise ConfigError("generate needs duration > 0 seconds")
        if self.kind == "infill":
            if self.start is None or self.end is None or not self.start < self.end:
                raise ConfigError(f"infill needs start < end seconds, got start={self.start} end={self.end}")
        if self.tempo is not None and (isinstance(self.tempo, bool) or not isinstance(self.tempo, (int, float))
                                       or not 20.0 <= float(self.tempo) <= 999.0):
            raise ConfigError(f"tempo={self.tempo!r} must be a number of bpm in [20, 999]")
        for name in ("full_length", "match_level"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.style_embedding is not None and len(self.style_embedding) != 512:
            raise ConfigError(f"style_embedding has {len(self.style_embedding)} values, expected 512")


@dataclasses.dataclass
class JobEvent:
    """One thing that happened to a job, delivered to ``on_event`` callbacks in order.

    ``type``: ``queued``, ``started``, ``progress`` (``fraction`` 0..1, ``stage``), ``audio``
    (``audio`` [channels, n] float32 starting at sample ``offset`` of the output song: from 0 for
    generate, from the splice point for extend, none for infill), ``done`` (``length``: requested vs
    delivered seconds and why, see :func:`dr2studio.studio.length_report`; ``message`` is the reason
    when the song came out shorter than asked), ``error`` or ``cancelled`` (``message``).
    """

    job_id: str
    type: str
    fraction: float = 0.0
    stage: str = ""
    message: str = ""
    audio: np.ndarray | None = None
    offset: int = 0
    length: dict[str, Any] | None = None


EventCallback = Callable[[JobEvent], None]


class Job:
    """A submitted request. Thread-safe; :meth:`wait` blocks until it ends."""

    def __init__(self, job_id: str, request: Any, song: Any = None) -> None:
        self.id = job_id
        self.request = request
        self.song = song  # the input song of extend / infill
        self.state = "queued"  # queued | running | done | failed | cancelled
        self.fraction = 0.0
        self.stage = ""
        self.result: Any = None
        self.error: str | None = None
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
        """Return the resulting song; raise :class:`JobCancelled` / :class:`JobError` otherwise."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        if self.state == "cancelled":
            raise JobCancelled(f"job {self.id} was cancelled")
        if self.state == "failed":
            raise JobError(f"job {self.id} failed: {self.error}")
        return self.result

    @property
    def length(self) -> dict[str, Any] | None:
        """The result's requested vs delivered seconds and why (``settings["length"]``); None before it is done."""
        return result_length(self.result)

    def _emit(self, event: JobEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(event)
            except Exception:  # a listener must never kill the worker
                log.exception("job %s: event listener failed on %s", self.id, event.type)

    def _finish(self, state: str, result: Any = None, error: str | None = None) -> None:
        self.state, self.result, self.error = state, result, error
        if state == "done":
            self.fraction = 1.0
        self._finished.set()
        if state == "done":
            length = result_length(result)
            reason = (length or {}).get("reason") or ""
            self._emit(JobEvent(self.id, "done", 1.0, "done", message=reason, length=length))
        else:
            self._emit(JobEvent(self.id, "cancelled" if state == "cancelled" else "error", message=error or ""))


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
        self.job._emit(JobEvent(self.job.id, "progress", fraction, stage))

    def audio(self, chunk: np.ndarray, offset: int) -> None:
        self.check()
        self.job._emit(JobEvent(self.job.id, "audio", self.job.fraction, self.job.stage, audio=chunk, offset=offset))


Runner = Callable[[Job, JobContext], Any]


class JobQueue:
    """Bounded FIFO of jobs served by ``workers`` threads calling ``runner(job, ctx) -> song``.

    ``max_pending`` bounds the jobs waiting to start (running ones do not count); a submit beyond it
    raises :class:`QueueFull` instead of piling up work nobody will wait for. Finished jobs are kept
    (the newest ``history``) so that ids stay idempotent and results can be fetched.
    """

    def __init__(self, runner: Runner, *, workers: int = 1, max_pending: int = 8, history: int = 256,
                 name: str = "dr2-job") -> None:
        if workers < 1 or max_pending < 0:
            raise ValueError(f"workers={workers} must be >= 1 and max_pending={max_pending} >= 0")
        self._runner = runner
        self._max_pending = max_pending
        self._history = history
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

        ``request`` is whatever the runner understands (engines pass a :class:`JobRequest`).
        """
        with self._cond:
            if self._closed:
                raise JobError("the engine is closed")
            if job_id is None:
                self._counter += 1
                job_id = f"job-{self._counter}"
            elif not JOB_ID_RE.match(job_id):
                raise JobError(f"job id {job_id!r} must be 1-64 letters, digits, '_', '-' or '.' and start with a letter or digit")
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
            job._emit(JobEvent(job_id, "queued"))  # before any worker can report on it
        finally:
            with self._cond:
                self._reserved -= 1
                closed = self._closed
                if not closed:
                    self._pending.append(job)
                    self._cond.notify()
            if closed:
                job._cancel.set()
                job._finish("cancelled", error="the engine closed")
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
            job._finish("cancelled", error=f"job {job_id} was cancelled before it started")
        return True

    def close(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting jobs, cancel the waiting ones (and the running ones) and join the workers."""
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            running = [j for j in self._jobs.values() if j.state == "running"]
            self._cond.notify_all()
        for job in waiting:
            job._cancel.set()
            job._finish("cancelled", error="the engine closed")
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

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                job.state = "running"
            job._emit(JobEvent(job.id, "started"))
            ctx = JobContext(job)
            try:
                ctx.check()
                result = self._runner(job, ctx)
                ctx.check()
            except JobCancelled as exc:
                job._finish("cancelled", error=str(exc))
            except Exception as exc:  # the job reports; the worker lives on
                log.warning("job %s failed: %s", job.id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                job._finish("failed", error=f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
            else:
                job._finish("done", result=result)


class Engine(Protocol):
    """What the CLI and the bridge need from an engine."""

    def submit(self, request: JobRequest, *, song: Any = None, job_id: str | None = None,
               on_event: EventCallback | None = None) -> Job: ...

    def get(self, job_id: str) -> Job | None: ...

    def cancel(self, job_id: str) -> bool: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class _QueueEngine:
    """Shared plumbing: an engine is a :class:`JobQueue` around one runner."""

    _queue: JobQueue

    def submit(self, request: JobRequest, *, song: Any = None, job_id: str | None = None,
               on_event: EventCallback | None = None) -> Job:
        """Validate and queue ``request``; ``song`` is the input of extend / infill."""
        try:
            request.validate()
        except ConfigError as exc:
            raise JobError(str(exc)) from exc
        if request.kind in ("extend", "infill") and song is None:
            raise JobError(f"{request.kind} needs a song to work on")
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

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- songs

def song_to_bytes(song: Any) -> bytes:
    """Pack a song (audio + its ``.dr2.safetensors`` sidecar) into one zip blob for the wire."""
    with tempfile.TemporaryDirectory(prefix="dr2-song-") as tmp:
        song.save(Path(tmp) / "song.wav", subtype="FLOAT")  # lossless on the wire
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for path in sorted(Path(tmp).iterdir()):
                if path.is_file():
                    zf.write(path, arcname=path.name)
        return buf.getvalue()


def song_from_bytes(blob: bytes) -> Any:
    """Inverse of :func:`song_to_bytes`. Member names with folders are refused (no zip-slip)."""
    from dr2studio.studio import Song

    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile as exc:
        raise JobError(f"song payload is not a song archive: {exc}") from exc
    with zf, tempfile.TemporaryDirectory(prefix="dr2-song-") as tmp:
        names = zf.namelist()
        if "song.wav" not in names:
            raise JobError("song payload has no song.wav")
        for name in names:
            if "/" in name or "\\" in name or name.startswith("."):
                raise JobError(f"song payload member {name!r} is not a plain file name")
            (Path(tmp) / name).write_bytes(zf.read(name))
        return Song.load(Path(tmp) / "song.wav")


# -------------------------------------------------------------------------------------------- local

def _request_style(request: JobRequest, default: Any) -> Any:
    """The request's embedding, else its text prompt, else the engine's default embedding."""
    if request.style_embedding is not None:
        import torch

        return torch.tensor(request.style_embedding, dtype=torch.float32)
    if request.style:
        return request.style
    return default


def run_studio_job(studio: Any, job: Job, ctx: JobContext, default_style: Any = None) -> Any:
    """Run one request on a :class:`~dr2studio.studio.Studio`, reporting progress and audio blocks.

    Cancellation works by raising :class:`JobCancelled` from inside Studio's per-block callbacks,
    so a cancelled job stops at the next block boundary and returns nothing.
    """
    req = job.request
    style = _request_style(req, default_style)
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

    tempo = req.tempo if req.tempo is not None else studio.stated_tempo(req.style)  # style may be an embedding below
    common = dict(steps=req.steps, cfg_strength=req.cfg_strength, seed=req.seed, progress=on_progress, tempo=tempo)
    ctx.progress(0.0, "start")
    if req.kind == "generate":
        return studio.generate(req.lyrics, style, req.duration, on_audio=on_audio, full_length=req.full_length, **common)
    if req.kind == "extend":

        def on_splice(sample: int) -> None:  # extend streams the output from its splice point on
            nonlocal offset
            offset = sample

        return studio.extend(job.song, req.lyrics, seconds=req.seconds, style=style, on_audio=on_audio,
                             match_level=req.match_level,
                             on_splice=on_splice, **common)
    return studio.infill(job.song, req.start, req.end, req.lyrics, style=style, match_level=req.match_level, **common)


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


class LocalEngine(_QueueEngine):
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


# -------------------------------------------------------------------------------------------- serve

def encode_event(event: JobEvent) -> dict[str, Any]:
    """A job event as the JSON object the serve deployment streams (one per line)."""
    out: dict[str, Any] = {"type": event.type}
    if event.type == "progress":
        out.update(fraction=event.fraction, stage=event.stage)
    elif event.type == "audio" and event.audio is not None:
        arr = np.ascontiguousarray(event.audio, dtype="<f4")
        out.update(offset=event.offset, channels=arr.shape[0], data=base64.b64encode(arr.tobytes()).decode("ascii"))
    elif event.type in ("error", "cancelled"):
        out.update(message=event.message)
    return out


def _decode_audio(event: dict[str, Any]) -> tuple[np.ndarray, int]:
    raw = np.frombuffer(base64.b64decode(event["data"]), dtype="<f4")
    channels = int(event["channels"])
    return raw.reshape(channels, -1).astype(np.float32), int(event["offset"])


def consume_events(events: Iterable[dict[str, Any]], ctx: JobContext) -> Any:
    """Replay a stream of serve events into ``ctx`` and return the song of the final ``result``."""
    for event in events:
        kind = event.get("type")
        if kind == "progress":
            ctx.progress(float(event.get("fraction", 0.0)), str(event.get("stage", "")))
        elif kind == "audio":
            chunk, offset = _decode_audio(event)
            ctx.audio(chunk, offset)
        elif kind == "result":
            return song_from_bytes(base64.b64decode(event["song"]))
        elif kind == "cancelled":
            raise JobCancelled(event.get("message") or "cancelled by the server")
        elif kind == "error":
            raise JobError(event.get("message") or "the server reported an error")
        else:
            ctx.check()
    raise JobError("the server closed the stream before sending a result")


class ServeEngine(_QueueEngine):
    """Runs jobs on the Ray Serve deployment of :mod:`dr2studio.serve`.

    ``target`` is the HTTP base URL (``http://127.0.0.1:8000``) or a Serve ``DeploymentHandle``
    (inside the cluster). ``concurrency`` jobs are in flight at once (match it to the replicas);
    cancelling a job closes its stream, which cancels the request on the replica.
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
            detail = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("detail", detail)
            except ValueError:
                pass
            raise JobError(f"dr2studio serve refused the job (HTTP {exc.code}): {detail}") from exc
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
