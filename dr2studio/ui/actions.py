"""Act on a take from the page: extend it, regenerate a section, or sample it again with a new seed.

An action becomes an engine :class:`~dr2studio.engine.JobRequest` (checked by the same request layer as
every door) run on the same engine as the OSC/MIDI bridge (:class:`~dr2studio.engine.LocalEngine` or a
Ray Serve deployment), through a small queue of its own, as the bridge does: the action's job submits
the engine job, forwards its progress and streamed audio, then writes the new take into the project
with :func:`dr2studio.audio.stems.render_take` (the writer of the CLI, the API and the bridge) and
keeps the whole song with its sidecar under ``.dr2studio/ui/songs/`` so the next action continues it
exactly. Each job keeps an event log the page follows (server-sent events or polling) and the audio
streamed so far, which the page can play while later blocks are still being sampled.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import random
import threading
import time
import uuid
from typing import Any, Callable

import numpy as np

from dr2studio.confine import ConfineError, ensure_dir_inside, resolve_inside
from dr2studio.engine import Job, JobCancelled, JobContext, JobError, JobEvent, JobQueue, JobRequest
from dr2studio.requests import DEFAULT_CFG_STRENGTH, DEFAULT_STEPS, SEED, RequestError
from dr2studio.ui.project import ProjectView, UiError, take_timeline

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "UiJob", "UiJobs", "SONGS_DIR", "DEFAULT_EXTEND_SECONDS"]

ACTIONS = ("extend", "regenerate", "new_seed")
#: Where the page keeps each new take's whole song and sidecar, inside the project.
SONGS_DIR = ".dr2studio/ui/songs"
DEFAULT_EXTEND_SECONDS = 10.0
#: The longest style text an action may carry (the bridge's limit for /dr2/song/style).
MAX_STYLE_CHARS = 1000
#: Events one job keeps for the page (progress is coalesced by the page anyway).
MAX_EVENTS = 4000
#: Peak pairs per second of streamed audio sent to the page (the live waveform).
LIVE_PEAKS_PER_SECOND = 50
_ALLOWED = {
    "extend": {"action", "seconds", "lyrics", "style", "seed", "steps", "cfg_strength", "instrumental"},
    "regenerate": {"action", "section", "start", "end", "lyrics", "style", "seed", "steps", "cfg_strength", "instrumental"},
    "new_seed": {"action", "style", "seed", "steps", "cfg_strength"},
}


def _bad(message: str) -> UiError:
    return UiError(message, 400)


class UiJob:
    """One action: its state, its event log (``seq``-numbered dicts) and the audio streamed so far."""

    def __init__(self, job_id: str, action: str, take: str, expected_seconds: float | None) -> None:
        self.id, self.action, self.take = job_id, action, take
        self.expected_seconds = expected_seconds
        self.state = "queued"
        self.fraction, self.stage = 0.0, ""
        self.error: str | None = None
        self.new_take: str | None = None
        self.created = time.time()
        self.events: list[dict[str, Any]] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._audio: np.ndarray | None = None  # [C, n] float32 at audio_rate
        self._filled = 0
        self.audio_rate: int | None = None

    def add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self.events.append({"seq": self._seq, **event})
            if len(self.events) > MAX_EVENTS:
                del self.events[: len(self.events) - MAX_EVENTS]

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["seq"] > seq]

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def seed_audio(self, audio: np.ndarray, rate: int) -> None:
        """The song an extend continues: the part before its splice is the input's, there from the start."""
        with self._lock:
            self._audio, self.audio_rate, self._filled = np.array(audio, np.float32), int(rate), 0

    def put_audio(self, chunk: np.ndarray, offset: int, rate: int) -> None:
        with self._lock:
            chunk = np.asarray(chunk, np.float32).reshape(-1, np.asarray(chunk).shape[-1])
            if self._audio is None or self.audio_rate != rate:
                self._audio, self.audio_rate = np.zeros((chunk.shape[0], 0), np.float32), int(rate)
            end = offset + chunk.shape[1]
            if end > self._audio.shape[1]:
                grown = np.zeros((self._audio.shape[0], max(end, int(self._audio.shape[1] * 1.5))), np.float32)
                grown[:, : self._audio.shape[1]] = self._audio
                self._audio = grown
            channels = min(self._audio.shape[0], chunk.shape[0])
            self._audio[:channels, offset:end] = chunk[:channels]
            self._filled = max(self._filled, end)

    def audio_wav(self) -> bytes | None:
        """The audio streamed so far (for an extend: the input up to the splice, then the new part) as WAV."""
        import soundfile as sf

        with self._lock:
            if self._audio is None or self._filled == 0 or not self.audio_rate:
                return None
            audio = self._audio[:, : self._filled].copy()
            rate = self.audio_rate
        buf = io.BytesIO()
        sf.write(buf, audio.T, rate, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "take": self.take, "state": self.state,
                "fraction": round(self.fraction, 4), "stage": self.stage, "error": self.error,
                "new_take": self.new_take, "expected_seconds": self.expected_seconds,
                "streamed_seconds": round(self._filled / self.audio_rate, 3) if self.audio_rate else 0.0}


@dataclasses.dataclass
class _Plan:
    """An action made concrete: the engine request, the song it edits, and what the new take records."""

    request: JobRequest
    song: Any
    parent: dict[str, Any]
    stream_rate: int | None
    prefix: Any = None  # the input song's audio an extend keeps before its splice


def _peaks(chunk: np.ndarray, rate: int) -> list[list[float]]:
    mono = np.asarray(chunk, np.float32).reshape(-1, np.asarray(chunk).shape[-1]).mean(axis=0)
    step = max(1, rate // LIVE_PEAKS_PER_SECOND)
    return [[round(float(mono[i:i + step].min()), 3), round(float(mono[i:i + step].max()), 3)]
            for i in range(0, mono.shape[0], step)]


class UiJobs:
    """The page's actions on one engine. ``project`` gives the current project (the bridge's may change).

    ``steps`` / ``cfg_strength`` are used when neither the action nor the take says otherwise.
    """

    def __init__(self, engine: Any, project: Callable[[], ProjectView], *, steps: int = DEFAULT_STEPS,
                 cfg_strength: float = DEFAULT_CFG_STRENGTH, block_seconds: float | None = None,
                 max_pending: int = 4) -> None:
        self.engine = engine
        self.project = project
        self.steps, self.cfg_strength = steps, cfg_strength
        self.block_seconds = block_seconds
        self._jobs: dict[str, UiJob] = {}
        self._lock = threading.Lock()
        self._queue = JobQueue(self._run, workers=1, max_pending=max_pending, name="dr2-ui")

    # -- entry ---------------------------------------------------------------------------------------
    def submit(self, take: str, body: Any) -> UiJob:
        """Check ``body`` (the action's JSON) against take ``take`` and queue it; a bad one raises :class:`UiError`."""
        if self.engine is None:
            raise UiError("this page was started without a model: actions are off (start it with --model)", 503)
        if not isinstance(body, dict):
            raise _bad("an action is a JSON object such as {\"action\": \"regenerate\", \"section\": 0}")
        action = body.get("action")
        if action not in ACTIONS:
            raise _bad(f"action must be one of {', '.join(ACTIONS)}, got {str(action)[:40]!r}")
        unknown = sorted(set(body) - _ALLOWED[action])
        if unknown:
            raise _bad(f"{action} does not take {', '.join(unknown)} (it takes {', '.join(sorted(_ALLOWED[action] - {'action'}))})")
        view = self.project()
        parent = view.take(take)
        plan = self._plan(view, parent, action, body)
        job_id = f"ui-{uuid.uuid4().hex[:10]}"
        expected = plan.request.duration if plan.request.kind == "generate" else (
            float(plan.song.duration) + float(plan.request.seconds or 0.0) if plan.request.kind == "extend"
            else float(plan.song.duration))
        record = UiJob(job_id, action, take, expected)
        if plan.prefix is not None:
            record.seed_audio(plan.prefix, plan.song.sample_rate)
        with self._lock:
            self._jobs[job_id] = record
            while len(self._jobs) > 256:
                oldest = next(iter(self._jobs))
                if not self._jobs[oldest].finished:
                    break
                del self._jobs[oldest]
        def on_queue_event(event: JobEvent) -> None:  # cancelled before it started: the runner never saw it
            if event.type in ("cancelled", "error") and not record.finished:
                record.state = "cancelled" if event.type == "cancelled" else "failed"
                record.error = event.message or record.state
                record.add({"type": "cancelled" if event.type == "cancelled" else "error", "message": record.error})

        try:
            self._queue.submit((plan, record), job_id=job_id, on_event=on_queue_event)
        except JobError as exc:  # the queue is full, or closing
            with self._lock:
                self._jobs.pop(job_id, None)
            raise UiError(str(exc), 503) from exc
        return record

    def get(self, job_id: str) -> UiJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[UiJob]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> bool:
        return self._queue.cancel(job_id)

    def close(self) -> None:
        self._queue.close()

    # -- planning ------------------------------------------------------------------------------------
    def _sampling(self, parent: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        settings = parent.get("settings") if isinstance(parent.get("settings"), dict) else {}
        steps = body.get("steps", settings.get("steps") if isinstance(settings.get("steps"), int) else self.steps)
        cfg = body.get("cfg_strength", settings.get("cfg_strength")
                       if isinstance(settings.get("cfg_strength"), (int, float)) else self.cfg_strength)
        seed = body.get("seed")
        if seed is None:
            seed = random.randrange(0, 2**31)
        try:
            SEED.check(seed)
        except RequestError as exc:
            raise _bad(str(exc)) from None
        tempo = settings.get("tempo_bpm") if isinstance(settings.get("tempo_bpm"), (int, float)) else None
        return {"steps": steps, "cfg_strength": cfg, "seed": seed, "tempo": tempo}

    def _plan(self, view: ProjectView, parent: dict[str, Any], action: str, body: dict[str, Any]) -> _Plan:
        common = self._sampling(parent, body)
        given = body.get("style")
        if given is not None and (not isinstance(given, str) or len(given) > MAX_STYLE_CHARS):
            raise _bad(f"style must be text of at most {MAX_STYLE_CHARS} characters")
        given = given.strip() if given else None
        style_text = given or (parent.get("style") if isinstance(parent.get("style"), str) and parent.get("style") else None)
        if action == "new_seed":
            song = self._song(view, parent, need=False)
            lyrics = parent.get("lyrics") if isinstance(parent.get("lyrics"), str) else ""
            settings = parent.get("settings") if isinstance(parent.get("settings"), dict) else {}
            duration = parent.get("duration_seconds")
            if song is not None:
                duration = song.duration
            embedding = None
            if style_text is None:
                if song is None or song.style is None:
                    raise UiError(f"take {parent['take']!r} records no style (text or the sidecar's embedding) to sample "
                                  "again with", 409)
                embedding = [float(v) for v in song.style.reshape(-1).tolist()]
            request = JobRequest(kind="generate", lyrics=lyrics, duration=duration, style=style_text,
                                 style_embedding=embedding, instrumental=not lyrics.strip(),
                                 full_length=bool(settings.get("full_length", False)),
                                 stereo=bool(settings.get("stereo", False)), **common)
            self._check(request, None)
            rate = getattr(getattr(self.engine, "studio", None), "sample_rate", None)
            return _Plan(request, None, parent, rate)
        song = self._song(view, parent, need=True)
        # a style given with the action wins, then the song's own style vector (sidecar), then the take's text
        style = given or (None if song.style is not None else style_text)
        if style is None and song.style is None:
            raise UiError(f"take {parent['take']!r} has no sidecar and records no style text: give a style with the action", 409)
        timeline = take_timeline(parent, block_seconds=self.block_seconds)
        lyrics = body.get("lyrics")
        if lyrics is not None and not isinstance(lyrics, str):
            raise _bad("lyrics must be text")
        instrumental = body.get("instrumental", False)
        if not isinstance(instrumental, bool):
            raise _bad("instrumental must be true or false")
        if action == "extend":
            seconds = body.get("seconds", DEFAULT_EXTEND_SECONDS)
            if lyrics is None:  # by default the take's last section is sung again
                sections = [s for s in timeline["sections"] if s["lines"]]
                lyrics = sections[-1]["text"] if sections else ""
            request = JobRequest(kind="extend", lyrics=lyrics, seconds=seconds, style=style,
                                 instrumental=instrumental or not lyrics.strip(), **common)
            self._check(request, song)
            return _Plan(request, song, parent, song.sample_rate, prefix=song.audio.float().numpy())
        # regenerate: a section of the ruler, or a region [start, end) of the take
        if "section" in body:
            index = body["section"]
            sections = timeline["sections"]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(sections):
                raise _bad(f"section must be a section number 0..{len(sections) - 1} of take {parent['take']!r}, got {index!r}")
            section = sections[index]
            start, end = body.get("start", section["start"]), body.get("end", section["end"])
            if lyrics is None:
                lyrics = section["text"]
        else:
            if "start" not in body or "end" not in body:
                raise _bad("regenerate needs a section number, or start and end in seconds")
            start, end = body["start"], body["end"]
            if lyrics is None:
                raise _bad("regenerate of a region needs the lyrics to sing there (or \"instrumental\": true)")
        request = JobRequest(kind="infill", lyrics=lyrics, start=start, end=end, style=style,
                             instrumental=instrumental or not lyrics.strip(), **common)
        self._check(request, song)
        return _Plan(request, song, parent, None)

    @staticmethod
    def _check(request: JobRequest, song: Any) -> None:
        try:
            request.validate()
            request.check_song(song)
        except RequestError as exc:
            raise _bad(str(exc)) from None

    def _song(self, view: ProjectView, parent: dict[str, Any], *, need: bool) -> Any:
        """The take's whole song: its source file with the sidecar when that lies inside the project
        (the page's own takes, CLI takes rendered from a song kept there), else its mix stem (audio only:
        the model encodes it). A source outside the project is not read."""
        from dr2studio.song import SidecarError, Song

        source = parent.get("source")
        if isinstance(source, str) and source:
            try:
                path = resolve_inside(view.root, source, "song")
            except ConfineError:
                log.info("take %s: its source %s is outside the project; using its mix", parent["take"], source)
            else:
                if path.is_file():
                    try:
                        return Song.load(path)
                    except (SidecarError, ValueError, OSError) as exc:
                        log.warning("take %s: cannot load its song %s (%s); using its mix", parent["take"], path, exc)
        try:
            mix = view.take_file(parent["take"], "mix")
        except UiError:
            if not need:
                return None
            raise UiError(f"take {parent['take']!r} has no song and no mix stem to work on", 409) from None
        try:
            return Song.load(mix)
        except (SidecarError, ValueError, OSError) as exc:
            if not need:
                return None
            raise UiError(f"take {parent['take']!r}: its mix cannot be read: {exc}", 409) from None

    # -- running -------------------------------------------------------------------------------------
    def _run(self, job: Job, ctx: JobContext) -> Any:
        plan, record = job.request
        record.state = "running"
        record.add({"type": "started"})

        def forward(event: JobEvent) -> None:
            if event.type == "progress":
                record.fraction, record.stage = 0.9 * float(event.fraction), event.stage or "sample"
                record.add({"type": "progress", "fraction": round(record.fraction, 4), "stage": record.stage})
            elif event.type == "audio" and event.audio is not None and plan.stream_rate:
                record.put_audio(event.audio, int(event.offset), plan.stream_rate)
                record.add({"type": "audio", "start": round(event.offset / plan.stream_rate, 4),
                            "seconds": round(event.audio.shape[-1] / plan.stream_rate, 4),
                            "streamed": round(record._filled / plan.stream_rate, 4),
                            "peaks": _peaks(event.audio, plan.stream_rate)})

        try:
            engine_id = f"{job.id}-{uuid.uuid4().hex[:6]}"
            try:
                ejob = self.engine.submit(plan.request, song=plan.song, job_id=engine_id, on_event=forward)
            except JobError as exc:
                raise JobError(f"the engine refused the job: {exc}", exc.code) from exc
            while not ejob.join(0.05):
                if ctx.cancelled:
                    self.engine.cancel(engine_id)
            ctx.check()
            song = ejob.wait(0)
            record.fraction, record.stage = 0.92, "write take"
            record.add({"type": "progress", "fraction": 0.92, "stage": "write take"})
            entry = self._deliver(job.id, record, plan, song)
        except JobCancelled as exc:
            record.state, record.error = "cancelled", str(exc)
            record.add({"type": "cancelled", "message": str(exc)})
            raise
        except Exception as exc:
            record.state, record.error = "failed", str(exc) or type(exc).__name__
            record.add({"type": "error", "message": record.error})
            raise
        record.new_take, record.fraction, record.stage, record.state = entry["take"], 1.0, "done", "done"
        record.add({"type": "done", "take": entry["take"], "fraction": 1.0})
        return entry["take"]

    def _deliver(self, job_id: str, record: UiJob, plan: _Plan, song: Any) -> dict[str, Any]:
        """Keep the whole song (+ sidecar) in the project and render it as a take beside its parent."""
        from dr2studio.audio.daw import ProjectError, check_project_writable, project_layout
        from dr2studio.audio.effects import list_presets, load_preset
        from dr2studio.audio.stems import render_take

        view = self.project()
        manifest = view.manifest()
        layout = project_layout(view.root, str(manifest.get("daw") or "generic"))
        check_project_writable(layout)
        try:
            folder = ensure_dir_inside(view.root, SONGS_DIR)
        except ConfineError as exc:
            raise ProjectError(str(exc)) from exc
        song_path = song.save(folder / f"{job_id}.wav")
        parent = plan.parent
        shipped = set(list_presets())  # a manifest is data: only shipped preset names, never paths
        mix = (parent.get("stems") or {}).get("mix") if isinstance(parent.get("stems"), dict) else None
        candidates = [mix.get("preset") if isinstance(mix, dict) else None, parent.get("preset"), "clean"]
        preset_name = next(p for p in candidates if isinstance(p, str) and p in shipped)
        preset = load_preset(preset_name)
        kind = plan.request.kind
        edit = song.last_edit
        seed = int(edit.seed) if kind != "generate" and edit is not None and edit.seed is not None else song.seed
        info = {
            "origin": "api",
            "door": "ui",
            "action": record.action,
            "parent_take": parent["take"],
            "job": job_id,
            "kind": kind,
            "position_seconds": parent.get("position_seconds") or 0.0,
            "position_beats": parent.get("position_beats"),
            "bpm": parent.get("bpm"),
            "timesig": parent.get("timesig"),
            "source": str(song_path),
            "lyrics": song.lyrics,
            "style": plan.request.style or parent.get("style"),
            "seed": seed,
            "model": song.model,
            "settings": song.settings,
            "preset": preset_name,
            "separated": False,
        }
        try:
            return render_take(layout, job_id, {"mix": song.audio.float()}, song.sample_rate, lambda _stem: preset, info)
        except BaseException:
            for path in (song_path, song_path.with_name(song_path.stem + ".dr2.safetensors")):
                path.unlink(missing_ok=True)
            raise
