"""The bridge's command layer, shared by the OSC and MIDI front ends.

A :class:`Bridge` owns one :class:`~dr2studio.bridge.session.Session` and turns commands (open a
project, set tempo, define sections, set lyrics, generate / continue / regenerate, cancel) into engine
jobs. Bridge jobs run one after another, each against the song committed by the job before it, so a
DAW may queue "continue" right after "generate". Each finished job renders its part of the song into
the project folder and reports one ``stem`` event per file, then ``done``.

A job renders what its session said when it was submitted (a snapshot of sections, lyrics, style,
grid, fx, project and sampler settings) and its take is committed to that session, even when another
client has changed or switched the open session before the job ran.

Events go to *sinks*: callables ``sink(address, args)`` using the OSC address space of
``osc-midi.md`` (``/dr2/job/accepted`` ... ``/dr2/job/done``), whatever the transport.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from dr2studio import __version__
from dr2studio.bridge.deliver import TakeWritten, changed_region, crop_song, deliver_take, song_region, take_written
from dr2studio.bridge.paths import PathError, check_name, read_text_inside
from dr2studio.bridge.persist import check_preset_name, clear_song, restore_session, save_session
from dr2studio.bridge.session import BridgeError, Session, refused
from dr2studio.engine import Engine, Job, JobCancelled, JobContext, JobEvent, JobQueue, JobRequest, QueueFull
from dr2studio.requests import (
    DEFAULT_CFG_STRENGTH,
    DEFAULT_STEPS,
    DURATION,
    EXTEND_SECONDS,
    SEED,
    SamplingRequest,
    TakeRequest,
    check_daw,
)

log = logging.getLogger(__name__)

__all__ = ["Bridge", "BridgeJob", "JobPlan", "Sink", "ERROR_CODES"]

Sink = Callable[[str, list], None]

#: ``/dr2/job/error`` codes (HTTP-like).
ERROR_CODES = {"bad_request": 400, "not_found": 404, "too_large": 413, "cancelled": 499, "failed": 500, "busy": 503}
MAX_LYRICS_FILE = 256 * 1024
#: A continue may start this many seconds past the end of the song (DAW grid rounding).
CONTINUE_TOLERANCE_S = 0.5
#: Finished takes kept for ``/dr2/take/commit`` (autocommit off); older ones are dropped (memory bound).
MAX_UNCOMMITTED_TAKES = 8
#: Finished jobs whose stem events are kept to replay a repeated job id.
MAX_REPLAYS = 256


@dataclasses.dataclass
class BridgeJob:
    """A timeline job: ``song`` (whole song), ``continue`` or ``regenerate``."""

    kind: str
    seconds: float = 0.0
    from_beats: float = 0.0
    length_beats: float = 0.0
    sec_id: str = ""
    seed: int | None = None
    cfg_strength: float | None = None


@dataclasses.dataclass(frozen=True)
class _Queued:
    """What the queue holds for a timeline job: the ``spec``, the session ``snapshot`` taken at submit
    (what to render, into which project) and the ``owner`` session its take is committed to."""

    spec: BridgeJob
    snapshot: Session
    owner: Session
    steps: int
    cfg_strength: float
    take: Any = None  # the TakeRequest (conform, MIDI) in force at submit


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """A timeline job made concrete against the session: the engine ``request``, the ``song`` it works
    on (None for a new song) and ``origin``, the session beat where the result's second 0 sits."""

    request: JobRequest
    song: Any
    origin: float


def _sampling(steps: Any, cfg_strength: Any) -> tuple[int, float]:
    """Steps and guidance checked by the request limits, the refusal a :class:`BridgeError`."""
    sampling = SamplingRequest(steps=steps, cfg_strength=cfg_strength)
    with refused():
        sampling.validate()
    return sampling.steps, sampling.cfg_strength


def _job_seed(kind: str, song: Any) -> int | None:
    """The seed this job actually used (the request may have left it to chance)."""
    edit = getattr(song, "last_edit", None)
    if kind != "generate" and edit is not None and edit.seed is not None:
        return int(edit.seed)
    return getattr(song, "seed", None)


class Bridge:
    """Session state + job orchestration. Thread-safe: every front end may call it from its own threads.

    ``project_roots``: when given, sessions may only open folders below one of them.
    ``steps`` / ``cfg_strength``: sampler defaults (``/dr2/gen/options`` changes them per session).
    """

    def __init__(self, engine: Engine, *, style_embedding: Any = None, project_roots: list[Path] | None = None,
                 steps: int = DEFAULT_STEPS, cfg_strength: float = DEFAULT_CFG_STRENGTH, max_pending: int = 8, stem_options: dict | None = None) -> None:
        self.engine = engine
        self.style_embedding = style_embedding
        self.project_roots = [Path(p).resolve() for p in project_roots] if project_roots else None
        self.steps, self.cfg_strength = _sampling(steps, cfg_strength)  # a bad default fails at start, not per job
        self.stem_options = dict(stem_options or {})
        self.session: Session | None = None
        self._lock = threading.RLock()
        self._sinks: list[Sink] = []
        self._takes: dict[str, tuple[Session, Any, float]] = {}  # uncommitted: job id -> (owner, song, origin beats)
        self._stems: dict[str, list[list]] = {}  # job id -> stem event args, for replays
        self._live: dict[Path, Session] = {}  # sessions with queued jobs or takes, by project: one object per project
        self._queue = JobQueue(self._run_job, workers=1, max_pending=max_pending, name="dr2-bridge")
        self._take_listeners: list[Callable[[TakeWritten], None]] = []  # DAW placement (docs/ableton.md)
        self.take_options = TakeRequest()  # /dr2/take/conform, /dr2/take/midi (docs/conform_and_midi.md)

    # ------------------------------------------------------------------ events
    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            if sink not in self._sinks:
                self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    def emit(self, address: str, *args: Any) -> None:
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            try:
                sink(address, list(args))
            except Exception:  # one dead subscriber must not stop the others
                log.exception("event sink failed for %s", address)

    def _on_job_event(self, event: JobEvent) -> None:
        if event.type == "queued":
            self.emit("/dr2/job/accepted", event.job_id)
        elif event.type == "progress":
            self.emit("/dr2/job/progress", event.job_id, float(event.fraction), event.stage)
        elif event.type == "done":
            job = self._queue.get(event.job_id)
            self.emit("/dr2/job/done", event.job_id, int(job.result if job else 0))
        elif event.type == "cancelled":
            self.emit("/dr2/job/error", event.job_id, ERROR_CODES["cancelled"], event.message or "cancelled")
        elif event.type == "error":
            job = self._queue.get(event.job_id)
            code = job.error_code if job is not None and job.error_code is not None else event.code
            self.emit("/dr2/job/error", event.job_id, code.http_status if code is not None else ERROR_CODES["failed"],
                      event.message)

    def add_take_listener(self, listener: Callable[[TakeWritten], None]) -> None:
        """Call ``listener(take)`` after each take is written and its stem events sent (from the job's
        thread: a listener that talks to a DAW hands the work to a thread of its own)."""
        with self._lock:
            if listener not in self._take_listeners:
                self._take_listeners.append(listener)

    def remove_take_listener(self, listener: Callable[[TakeWritten], None]) -> None:
        with self._lock:
            if listener in self._take_listeners:
                self._take_listeners.remove(listener)

    # ---------------------------------------------------------------- commands
    def ping(self) -> str:
        return __version__

    def require_session(self) -> Session:
        if self.session is None:
            raise BridgeError("no session is open; send /dr2/session/open first", 409)
        return self.session

    def open_session(self, project_dir: str, daw: str = "generic") -> Session:
        """Open (or switch to) a project folder; it must exist and is the only place the bridge writes."""
        with refused():
            daw = check_daw(daw)
        if not isinstance(project_dir, str) or not project_dir.strip() or "\x00" in project_dir:
            raise BridgeError("project folder must be a non-empty path")
        path = Path(project_dir).expanduser()
        if not path.is_absolute():
            raise BridgeError(f"project folder {project_dir!r} must be an absolute path")
        if not path.is_dir():
            raise BridgeError(f"project folder {project_dir!r} does not exist or is not a folder", 404)
        root = path.resolve()
        if self.project_roots is not None and not any(root == r or r in root.parents for r in self.project_roots):
            raise BridgeError(f"project folder {root} is outside the allowed roots {', '.join(map(str, self.project_roots))} "
                              "(start the bridge with --projects-root to allow another folder)", 403)
        with self._lock:
            self._prune_live()
            session = self._live.get(root)
            if session is not None:  # jobs or takes of this project are still in flight: the same session
                session.daw = daw
                restored = True
            else:
                session = Session(project=root, daw=daw)
                restored = restore_session(session)  # a corrupt saved session is refused before anything changes
            if self.session is not session:
                self._save_quietly()
            self.session = session
            self._live[root] = session
        log.info("session %s: %s (%s)", "restored" if restored else "opened", root, daw)
        return session

    def _prune_live(self) -> None:
        """Forget sessions that are neither open nor waiting for a job or a take."""
        busy = {id(j.request.owner) for j in self._queue.jobs()
                if not j.finished and isinstance(j.request, _Queued)}
        busy.update(id(owner) for owner, _, _ in self._takes.values())
        for root, session in list(self._live.items()):
            if session is not self.session and id(session) not in busy:
                del self._live[root]

    def close_session(self) -> None:
        with self._lock:
            self._save_quietly()
            self.session = None

    def clear_song(self) -> None:
        """Start the song over: later jobs no longer continue the committed song."""
        with self._lock:
            clear_song(self.require_session())

    def _persist(self, session: Session) -> None:
        """Save the committed song; a failure is reported but does not undo the take."""
        try:
            save_session(session)
        except (BridgeError, OSError, ValueError) as exc:
            log.warning("could not save the session in %s: %s", session.project, exc)
            self.emit("/dr2/error", "/dr2/session/save", f"the take is written but the session could not be saved: {exc}")

    def _save_quietly(self) -> None:
        if self.session is None:
            return
        try:
            save_session(self.session, song=False)
        except (BridgeError, OSError) as exc:
            log.warning("could not save the session state in %s: %s", self.session.project, exc)

    def set_tempo(self, bpm: float) -> None:
        with self._lock:
            self.require_session().set_tempo(bpm)

    def set_timesig(self, num: int, den: int) -> None:
        with self._lock:
            self.require_session().set_timesig(num, den)

    def follow_daw(self, *, bpm: float | None = None, timesig: tuple[int, int] | None = None,
                   sections: list[tuple[str, str, float, float]] | None = None) -> list[str]:
        """Make the open session follow what the DAW reports (its tempo, meter, locators); returns the
        names of the fields that changed (none when the DAW says what the session already has).

        All or nothing: every value is checked on a scratch session first, so a bad tempo or one bad
        section leaves the session as it was. ``sections`` ``(sec_id, kind, start_beats, length_beats)``
        replace the session's sections (lyrics stay with their section ids).
        """
        with self._lock:
            session = self.require_session()
            scratch = Session(project=session.project, daw=session.daw)
            if bpm is not None:
                scratch.set_tempo(bpm)
            if timesig is not None:
                scratch.set_timesig(*timesig)
            if sections is not None:
                for sec_id, kind, start, length in sections:
                    scratch.define_section(sec_id, kind, start, length)
            changed = []
            if bpm is not None and (scratch.bpm != session.bpm or session.tempo_map is not None):
                session.set_tempo(scratch.bpm)
                changed.append("bpm")
            if timesig is not None and scratch.timesig != session.timesig:
                session.set_timesig(*scratch.timesig)
                changed.append("timesig")
            if sections is not None and scratch.sections != session.sections:
                session.sections = scratch.sections
                changed.append("sections")
            return changed

    def update_session(self, change: Callable[[Session], Any]) -> Any:
        """Run ``change(session)`` under the bridge lock, so a multi-field update (a MIDI file's plan)
        never interleaves with a job reading the session."""
        with self._lock:
            return change(self.require_session())

    def set_style(self, text: str) -> None:
        if not isinstance(text, str) or len(text) > 1000:
            raise BridgeError("style must be text of at most 1000 characters")
        with self._lock:
            self.require_session().style = text.strip() or None

    def set_options(self, steps: int, cfg_strength: float) -> None:
        """The session's sampler settings, checked against the request limits (``/dr2/gen/options``)."""
        steps, cfg_strength = _sampling(steps, cfg_strength)
        with self._lock:
            self.require_session()
            self.steps, self.cfg_strength = steps, cfg_strength

    def set_conform(self, on: int, bpm: float | None = None, source_bpm: float | None = None) -> None:
        """Tempo conform of later takes (``/dr2/take/conform i:on [f:bpm [f:source_bpm]]``): 1 on, 0 off, -1 the
        default by model; ``bpm`` a fixed target instead of the session's tempo (0: the session's);
        ``source_bpm`` the takes' own tempo where their beat reads in half or double time. Checked by the
        request layer."""
        if on not in (-1, 0, 1):
            raise BridgeError(f"/dr2/take/conform: on must be 1 (on), 0 (off) or -1 (default by model), got {on}")
        if bpm is not None and bpm == 0 and source_bpm is not None:
            bpm = None  # a placeholder before source_bpm: the session's tempo
        self.update_take_options(conform=None if on == -1 else bool(on), conform_bpm=bpm, source_bpm=source_bpm)

    def set_midi(self, on: int) -> None:
        """Write a ``.mid`` per pitched stem with later takes (``/dr2/take/midi i:on``)."""
        self.update_take_options(midi=bool(on))

    def update_take_options(self, **changes: Any) -> None:
        """Change some fields of the take options of later takes (the MIDI door's CCs and SysEx), checked by
        the request layer; a refused change leaves the options as they were."""
        with self._lock:
            self.require_session()
            options = dataclasses.replace(self.take_options, **changes)
            with refused():
                options.validate()
            self.take_options = options

    def define_section(self, sec_id: str, kind: str, start_beats: float, length_beats: float) -> None:
        with self._lock:
            self.require_session().define_section(sec_id, kind, start_beats, length_beats)

    def set_lyrics(self, sec_id: str, text: str) -> int:
        with self._lock:
            return self.require_session().set_lyrics(sec_id, text)

    def lyrics_chunk(self, sec_id: str, seq: int, total: int, text: str) -> int | None:
        with self._lock:
            return self.require_session().add_chunk(sec_id, seq, total, text)

    def lyrics_file(self, sec_id: str, path: str) -> int:
        """Read a .lrc/.txt file from inside the project folder as the lyrics of ``sec_id``."""
        with self._lock:
            session = self.require_session()
            try:
                _, text = read_text_inside(session.project, path, max_bytes=MAX_LYRICS_FILE, what="lyrics file",
                                           suffixes=(".lrc", ".txt"))
            except PathError as exc:
                raise BridgeError(str(exc), 403 if "outside" in str(exc) else 400) from exc
            return session.set_lyrics(sec_id, text)

    def set_fx(self, stem: str, preset: str) -> None:
        """A stem's effect preset, by shipped name only (never a path: see :func:`check_preset_name`)."""
        from dr2studio.audio.effects import load_preset

        stem, preset = check_preset_name(stem, preset)
        load_preset(preset)
        with self._lock:
            self.require_session().fx[stem] = preset

    def set_autocommit(self, on: bool) -> None:
        with self._lock:
            self.require_session().autocommit = bool(on)

    def commit(self, job_id: str | None = None) -> str:
        """Make a finished take of the open session (default: its newest) the song later jobs build on."""
        with self._lock:
            session = self.require_session()
            job_id = job_id or session.last_take
            if job_id is None or job_id not in self._takes:
                raise BridgeError(f"no uncommitted take {job_id!r} to commit", 404)
            owner, song, origin = self._takes[job_id]
            if owner is not session:
                raise BridgeError(f"take {job_id!r} belongs to the project {owner.project}, not to the open one "
                                  f"{session.project}; open that project to commit it", 409)
            del self._takes[job_id]
            session.song, session.origin_beats = song, origin
            self._persist(session)
            return job_id

    # -------------------------------------------------------------------- jobs
    def submit(self, job_id: str, spec: BridgeJob) -> Job:
        """Queue a timeline job. A repeated ``job_id`` is idempotent: the bridge re-announces it and,
        if it already ended, replays its stems and result instead of rendering again."""
        try:
            check_name(job_id, "job id")
        except PathError as exc:
            raise BridgeError(str(exc)) from exc
        with self._lock:
            owner = self.require_session()
            # what to render is fixed now: another client may change or switch the session before it runs
            queued = _Queued(spec, owner.snapshot(), owner, self.steps, self.cfg_strength, self.take_options)
            self._prepare(queued, dry_run=True)  # fail fast on what can be checked now
            existing = self._queue.get(job_id)
            if existing is None:
                try:
                    job = self._queue.submit(queued, job_id=job_id, on_event=self._on_job_event)
                except QueueFull as exc:
                    raise BridgeError(str(exc), ERROR_CODES["busy"]) from exc
        if existing is None:
            return job
        self.emit("/dr2/job/accepted", job_id)
        if existing.finished:
            for args in self._stems.get(job_id, []):
                self.emit("/dr2/job/stem", *args)
            self._on_job_event(JobEvent(job_id, {"done": "done", "cancelled": "cancelled"}.get(existing.state, "error"),
                                        message=existing.error or ""))
        return existing

    def cancel(self, job_id: str) -> bool:
        if not self._queue.cancel(job_id):
            raise BridgeError(f"job {job_id!r} is not queued or running", 404)
        return True

    def running_jobs(self) -> list[Job]:
        return [j for j in self._queue.jobs() if not j.finished]

    def get_job(self, job_id: str) -> Job | None:
        return self._queue.get(job_id)

    def close(self) -> None:
        self._queue.close()
        with self._lock:
            self._save_quietly()

    # ------------------------------------------------------------- internals
    def _prepare(self, queued: _Queued, dry_run: bool = False) -> JobPlan:
        """Turn a timeline job into an engine request against its session snapshot (whose song is the
        owner's committed one, set by :meth:`_run_job`)."""
        spec, session = queued.spec, queued.snapshot
        for name in ("seconds", "from_beats", "length_beats"):
            value = getattr(spec, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BridgeError(f"{spec.kind} job: {name} must be a finite number, got {value!r}")
        if spec.seed is not None:
            with refused():
                SEED.check(spec.seed)
        cfg = queued.cfg_strength if spec.cfg_strength is None else _sampling(queued.steps, spec.cfg_strength)[1]
        # the tempo travels as a number (the style text's, else the DAW's); the text keeps it for the style vector
        common = dict(steps=queued.steps, cfg_strength=cfg, seed=spec.seed, style=session.style_prompt(),
                      tempo=session.song_tempo())
        if self.style_embedding is not None and session.style is None:
            common["style_embedding"] = [float(v) for v in self.style_embedding.reshape(-1).tolist()]
        if spec.kind == "song":
            sections = session.ordered_sections()
            if not sections:
                raise BridgeError("define sections before generating a song")
            end = session.seconds(session.timeline_end_beats())
            if spec.seconds < 0:
                raise BridgeError(f"song length {spec.seconds:g} s must be > 0, or 0 for the end of the last section")
            seconds = spec.seconds if spec.seconds > 0 else end
            with refused():
                DURATION.check(seconds)
            lyrics = session.section_lyrics(sections)
            return JobPlan(JobRequest(kind="generate", lyrics=lyrics, duration=seconds, **common), song=None, origin=0.0)
        section = session.section(spec.sec_id)
        lyrics = session.section_lyrics([section])
        if spec.kind == "continue":
            if not (spec.from_beats >= 0 and spec.length_beats >= 0):
                raise BridgeError(f"continue needs from_beats >= 0 and length_beats > 0, got {spec.from_beats}, {spec.length_beats}")
            length = session.seconds_between(spec.from_beats, spec.from_beats + spec.length_beats)
            with refused():  # a new song's duration, else the seconds an extend adds
                (DURATION if session.song is None else EXTEND_SECONDS).check(length)
            if session.song is None:
                return JobPlan(JobRequest(kind="generate", lyrics=lyrics, duration=length, **common), song=None,
                               origin=spec.from_beats)
            at = session.seconds_between(session.origin_beats, spec.from_beats)
            total = session.song_seconds()
            if at < 0 or at > total + CONTINUE_TOLERANCE_S:
                raise BridgeError(f"continue from beat {spec.from_beats:g} is outside the song (beats "
                                  f"{session.origin_beats:g}..{session.beat_after(session.origin_beats, total):g})")
            base = session.song
            if not dry_run and at < total - CONTINUE_TOLERANCE_S:
                base = crop_song(base, at)
            return JobPlan(JobRequest(kind="extend", lyrics=lyrics, seconds=length, **common), song=base,
                           origin=session.origin_beats)
        if spec.kind == "regenerate":
            if session.song is None:
                raise BridgeError("nothing to regenerate yet: generate or continue first", 409)
            total = session.song_seconds()
            start = max(0.0, session.seconds_between(session.origin_beats, section.start_beats))
            end = min(total, session.seconds_between(session.origin_beats, section.end_beats))
            if end - start <= 0:
                raise BridgeError(f"section {section.sec_id} (beats {section.start_beats:g}..{section.end_beats:g}) "
                                  "does not overlap the song", 409)
            return JobPlan(JobRequest(kind="infill", lyrics=lyrics, start=start, end=end, **common),
                           song=session.song, origin=session.origin_beats)
        raise BridgeError(f"unknown job kind {spec.kind!r}")

    def _run_job(self, job: Job, ctx: JobContext) -> int:
        """Render and deliver one timeline job. A failure ends the job with the code its error carries
        (a :class:`BridgeError`'s status, the engine job's :class:`~dr2studio.engine.ErrorCode`)."""
        queued: _Queued = job.request
        with self._lock:  # the song is the owner's, as committed by the jobs before this one
            queued.snapshot.song, queued.snapshot.origin_beats = queued.owner.song, queued.owner.origin_beats
            plan = self._prepare(queued)
        result = self._run_engine(job, ctx, plan)
        ctx.progress(0.9, "render")
        return self._deliver(job.id, ctx, queued, plan, result)

    def _run_engine(self, job: Job, ctx: JobContext, plan: JobPlan) -> Any:
        def forward(event: JobEvent) -> None:
            if event.type == "progress":
                try:
                    ctx.progress(0.9 * event.fraction, event.stage or "generate")
                except JobCancelled:
                    pass  # noticed by the wait loop below

        engine_id = f"{job.id}-{uuid.uuid4().hex[:8]}"
        ejob = self.engine.submit(plan.request, song=plan.song, job_id=engine_id, on_event=forward)
        while not ejob.join(0.05):
            if ctx.cancelled:
                self.engine.cancel(engine_id)
        ctx.check()
        return ejob.wait(0)

    def _deliver(self, job_id: str, ctx: JobContext, queued: _Queued, plan: JobPlan, song: Any) -> int:
        """Write the take into the snapshot's project and commit it to the session it came from."""
        session, owner = queued.snapshot, queued.owner
        request = plan.request
        region, start_s = song_region(song, *changed_region(request.kind, song))
        position_beats = session.beat_after(plan.origin, start_s)
        written = deliver_take(session, job_id, region, position_beats=position_beats,
                               position_seconds=session.seconds(position_beats), request=request,
                               check=ctx.check, seed=_job_seed(request.kind, song), song=song,
                               take_options=queued.take, **self.stem_options)
        events = [[job_id, f.stem, str(f.path), float(position_beats), float(session.seconds(position_beats)),
                   int(f.sample_rate)] for f in written]
        with self._lock:
            self._stems[job_id] = events
            while len(self._stems) > MAX_REPLAYS:
                del self._stems[next(iter(self._stems))]
            if owner.autocommit:
                owner.song, owner.origin_beats = song, plan.origin
                self._persist(owner)
            else:
                self._takes[job_id] = (owner, song, plan.origin)
                while len(self._takes) > MAX_UNCOMMITTED_TAKES:
                    dropped = next(iter(self._takes))
                    del self._takes[dropped]
                    log.info("dropped uncommitted take %s (more than %d kept)", dropped, MAX_UNCOMMITTED_TAKES)
            owner.last_take = job_id
        for args in events:
            self.emit("/dr2/job/stem", *args)
        with self._lock:
            listeners = list(self._take_listeners)
        if listeners:
            take = take_written(session, job_id, written, position_beats, session.seconds(position_beats))
            for listener in listeners:
                try:
                    listener(take)
                except Exception:  # placing in a DAW is extra: the take is written either way
                    log.exception("take listener failed for %s", job_id)
        return len(written)
