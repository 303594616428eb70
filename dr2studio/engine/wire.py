"""The engine's wire format, shared by :class:`~dr2studio.engine.ServeEngine` and :mod:`dr2studio.serve`.

- :class:`JobRequest`: one flat JSON object per job (the shape HTTP clients and DAW scripts send),
  validated by the typed requests of :mod:`dr2studio.requests` (:meth:`JobRequest.typed`), so its
  limits and messages are exactly those of every other door.
- A song travels as a zip of its audio and sidecar (:func:`song_to_bytes`), base64 in JSON.
- A job's stream is newline-delimited JSON events (:func:`encode_event`, :func:`consume_events`):
  ``accepted``, ``progress``, ``audio``, ``heartbeat``, then one ``result`` or ``error`` / ``cancelled``
  (``message``, and ``code``: an :class:`~dr2studio.engine.jobs.ErrorCode`).
"""
from __future__ import annotations

import base64
import dataclasses
import enum
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.engine.jobs import ErrorCode, EventType, JobCancelled, JobContext, JobError, JobEvent
from dr2studio.requests import (
    MAX_SONG_BYTES,
    MAX_SONG_MEMBERS,
    DEFAULT_CFG_STRENGTH,
    DEFAULT_CROSSFADE,
    DEFAULT_EXTEND_SECONDS,
    DEFAULT_STEPS,
    DURATION,
    ExtendRequest,
    GenerateRequest,
    InfillRequest,
    RequestError,
    SamplingRequest,
)

__all__ = [
    "JOB_KINDS",
    "JobRequest",
    "TypedRequest",
    "StreamType",
    "song_to_bytes",
    "song_from_bytes",
    "encode_event",
    "consume_events",
    "parse_payload",
    "error_body",
]

JOB_KINDS = ("generate", "extend", "infill")

TypedRequest = GenerateRequest | ExtendRequest | InfillRequest


class StreamType(enum.StrEnum):
    """The ``type`` of a streamed Serve event that is not a :class:`~dr2studio.engine.jobs.EventType`."""

    ACCEPTED = "accepted"
    HEARTBEAT = "heartbeat"
    RESULT = "result"


@dataclasses.dataclass
class JobRequest(JsonConfig):
    """What to render, as one flat JSON object (the Serve wire format; unknown keys are kept, not refused).

    ``kind``: ``generate`` (``duration`` seconds from scratch; ``full_length`` holds the song's end off
    until then; ``stereo`` widens it), ``extend`` (``seconds`` more after the given song; ``None``: the
    default 30) or ``infill`` (regenerate ``[start, end)`` seconds of the given song). ``lyrics`` is the
    text to sing and ``style`` a text prompt, both data only (never read as a file on the machine that
    renders: a job may come from the network); ``style_embedding`` a 512-float vector that wins over it. ``tempo`` (bpm) drives a
    model's tempo clock; by default the tempo the ``style`` text states. ``steps``, ``cfg_strength``,
    ``seed``: the sampling. ``instrumental``: sing no line. Extend and infill: ``crossfade`` seconds,
    ``match_level`` (bring the new audio to the level of the audio it joins), ``inversion_steps``.

    :meth:`validate` builds the typed request (:meth:`typed`) and validates it: a bad value raises
    :class:`~dr2studio.requests.RequestError` with the message every door gives. The result song's
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
    steps: int = DEFAULT_STEPS
    cfg_strength: float = DEFAULT_CFG_STRENGTH
    seed: int | None = None
    tempo: float | None = None
    full_length: bool = False
    match_level: bool = True
    instrumental: bool = False
    stereo: bool = False
    crossfade: float = DEFAULT_CROSSFADE
    inversion_steps: int | None = None

    def validate(self) -> None:
        """Refuse what the typed request refuses (the field a kind cannot do without is checked first)."""
        if self.kind not in JOB_KINDS:
            raise RequestError("kind", f"job kind {self.kind!r} is not one of {', '.join(JOB_KINDS)}")
        if self.kind == "generate":
            DURATION.check(self.duration)
        self.typed().validate()

    def check_song(self, song: Any) -> None:
        """After :meth:`validate`: an infill's range against the song it edits (when there is one)."""
        seconds = getattr(song, "duration", None)
        if self.kind == "infill" and seconds is not None:
            self.typed().validate(song_seconds=float(seconds))  # type: ignore[call-arg]

    def typed(self) -> TypedRequest:
        """The typed request of :mod:`dr2studio.requests` this wire request stands for (not yet validated)."""
        sampling = SamplingRequest(steps=self.steps, cfg_strength=self.cfg_strength, seed=self.seed)
        common: dict[str, Any] = dict(lyrics=self.lyrics, style=self.style, style_embedding=self.style_embedding,
                                      sampling=sampling, tempo=self.tempo, instrumental=self.instrumental)
        if self.kind == "generate":
            return GenerateRequest(**common, duration=self.duration, full_length=self.full_length,  # type: ignore[arg-type]
                                   stereo=self.stereo)
        edit: dict[str, Any] = dict(crossfade=self.crossfade, match_level=self.match_level,
                                    inversion_steps=self.inversion_steps)
        if self.kind == "extend":
            seconds = DEFAULT_EXTEND_SECONDS if self.seconds is None else self.seconds
            return ExtendRequest(**common, **edit, seconds=seconds)
        if self.kind == "infill":
            return InfillRequest(**common, **edit, start=self.start, end=self.end)  # type: ignore[arg-type]
        raise RequestError("kind", f"job kind {self.kind!r} is not one of {', '.join(JOB_KINDS)}")

    @classmethod
    def from_typed(cls, request: TypedRequest) -> "JobRequest":
        """The wire form of a typed request (what :meth:`typed` gives back)."""
        sampling = request.sampling if isinstance(request.sampling, SamplingRequest) else SamplingRequest.from_dict(request.sampling)
        out = cls(kind=request.kind, lyrics=request.lyrics, style=request.style,
                  style_embedding=request.style_embedding, steps=sampling.steps, cfg_strength=sampling.cfg_strength,
                  seed=sampling.seed, tempo=request.tempo, instrumental=request.instrumental)
        if isinstance(request, GenerateRequest):
            out.duration, out.full_length, out.stereo = request.duration, request.full_length, request.stereo
        else:
            out.crossfade, out.match_level, out.inversion_steps = (request.crossfade, request.match_level,
                                                                   request.inversion_steps)
            if isinstance(request, ExtendRequest):
                out.seconds = request.seconds
            else:
                out.start, out.end = request.start, request.end
        return out


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


def song_from_bytes(blob: bytes, *, max_bytes: int = MAX_SONG_BYTES, max_members: int = MAX_SONG_MEMBERS) -> Any:
    """Inverse of :func:`song_to_bytes`, bounded: the archive comes from the network.

    Member names with folders are refused (no zip-slip); more than ``max_members`` members, or members
    that declare (or, inflating, turn out to hold) more than ``max_bytes`` together, are refused with
    :attr:`ErrorCode.TOO_LARGE` before or while they are written, never after a zip bomb has inflated.
    An archive or audio that cannot be read is :attr:`ErrorCode.BAD_REQUEST`.
    """
    from dr2studio.song import Song

    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise JobError(f"song payload is not a song archive: {exc}", ErrorCode.BAD_REQUEST) from exc
    with zf, tempfile.TemporaryDirectory(prefix="dr2-song-") as tmp:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise JobError(f"song payload has {len(infos)} members; the limit is {max_members}", ErrorCode.TOO_LARGE)
        names = [info.filename for info in infos]
        if "song.wav" not in names:
            raise JobError("song payload has no song.wav", ErrorCode.BAD_REQUEST)
        if len(set(names)) != len(names):
            raise JobError("song payload names a member twice", ErrorCode.BAD_REQUEST)
        for name in names:
            if "/" in name or "\\" in name or name.startswith(".") or "\0" in name or not name:
                raise JobError(f"song payload member {name!r} is not a plain file name", ErrorCode.BAD_REQUEST)
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise JobError(f"song payload would inflate to {declared} bytes; the limit is {max_bytes}",
                           ErrorCode.TOO_LARGE)
        budget = max_bytes
        try:
            for info in infos:
                budget -= _extract_capped(zf, info, Path(tmp) / info.filename, budget, max_bytes)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
                ValueError, OSError) as exc:  # corrupt data, an unknown method, an encrypted member
            raise JobError(f"song payload is not a readable song archive: {exc}", ErrorCode.BAD_REQUEST) from exc
        try:
            return Song.load(Path(tmp) / "song.wav")
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the audio or sidecar reader says, it is the sender's data
            detail = str(exc).replace(f"{tmp}{os.sep}", "")  # the server's scratch folder is not the sender's business
            raise JobError(f"song payload is not a readable song: {type(exc).__name__}: {detail}",
                           ErrorCode.BAD_REQUEST) from exc


_CHUNK = 1 << 20


def _extract_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, limit: int) -> int:
    """Stream one member to ``dest`` in 1 MiB chunks; :class:`JobError` TOO_LARGE once ``budget`` is spent
    (a member whose header understates its size stops here, not in memory). Returns the bytes written."""
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while True:
            chunk = src.read(min(_CHUNK, budget - written + 1))
            if not chunk:
                return written
            written += len(chunk)
            if written > budget:
                raise JobError(f"song payload inflates past {limit} bytes", ErrorCode.TOO_LARGE)
            out.write(chunk)


# ------------------------------------------------------------------------------------------- payload

def parse_payload(payload: Any, *, max_song_bytes: int = MAX_SONG_BYTES) -> tuple[JobRequest, Any]:
    """Request + optional input song from a ``{"request": {...}, "song": base64 | null}`` body.

    Anything wrong raises :class:`JobError` naming the field: :attr:`ErrorCode.BAD_REQUEST` for a wrong
    type or value (never a 500: a client's mistake is not the server's failure), :attr:`ErrorCode.TOO_LARGE`
    for a song archive over its limits. Lyrics and style are data only (see :class:`~dr2studio.requests.PlainText`).
    """
    if not isinstance(payload, dict):
        raise JobError(f"body must be a JSON object with a 'request' object, got {_json_type(payload)}",
                       ErrorCode.BAD_REQUEST)
    if not isinstance(payload.get("request"), dict):
        raise JobError(f"'request' must be a JSON object, got {_json_type(payload.get('request'))}",
                       ErrorCode.BAD_REQUEST)
    try:
        request = JobRequest.from_dict(payload["request"])
    except (RequestError, ConfigError) as exc:
        raise JobError(str(exc), ErrorCode.BAD_REQUEST) from exc
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:  # a type the checks did not foresee
        raise JobError(f"request has a value of the wrong type: {exc}", ErrorCode.BAD_REQUEST) from exc
    song = None
    raw = payload.get("song")
    if raw is not None:
        if not isinstance(raw, str):
            raise JobError(f"'song' must be base64 text, got {_json_type(raw)}", ErrorCode.BAD_REQUEST)
        if len(raw) > (max_song_bytes + 2) // 3 * 4 + 4:  # base64 of the largest archive; refuse before decoding
            raise JobError(f"'song' holds {len(raw)} base64 characters; the limit is {max_song_bytes} bytes",
                           ErrorCode.TOO_LARGE)
        try:
            blob = base64.b64decode(raw, validate=True)
        except (ValueError, TypeError) as exc:
            raise JobError(f"'song' is not base64: {exc}", ErrorCode.BAD_REQUEST) from exc
        song = song_from_bytes(blob, max_bytes=max_song_bytes)
    if request.kind in ("extend", "infill") and song is None:
        raise JobError(f"{request.kind} needs a 'song'", ErrorCode.BAD_REQUEST)
    try:
        request.check_song(song)
    except RequestError as exc:
        raise JobError(str(exc), ErrorCode.BAD_REQUEST) from exc
    return request, song


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def error_body(message: str, code: ErrorCode) -> dict[str, Any]:
    """The JSON body of a refused request (HTTP status ``code.http_status``)."""
    return {"detail": message, "code": str(code)}


# -------------------------------------------------------------------------------------------- events

def encode_event(event: JobEvent) -> dict[str, Any]:
    """A job event as the JSON object the serve deployment streams (one per line)."""
    out: dict[str, Any] = {"type": str(event.type)}
    if event.type == EventType.PROGRESS:
        out.update(fraction=event.fraction, stage=event.stage)
    elif event.type == EventType.AUDIO and event.audio is not None:
        arr = np.ascontiguousarray(event.audio, dtype="<f4")
        out.update(offset=event.offset, channels=arr.shape[0], data=base64.b64encode(arr.tobytes()).decode("ascii"))
    elif event.type in (EventType.ERROR, EventType.CANCELLED):
        default = ErrorCode.CANCELLED if event.type == EventType.CANCELLED else ErrorCode.FAILED
        out.update(message=event.message, code=str(event.code or default))
    return out


def _decode_audio(event: dict[str, Any]) -> tuple[np.ndarray, int]:
    raw = np.frombuffer(base64.b64decode(event["data"]), dtype="<f4")
    channels = int(event["channels"])
    return raw.reshape(channels, -1).astype(np.float32), int(event["offset"])


def consume_events(events: Iterable[dict[str, Any]], ctx: JobContext) -> Any:
    """Replay a stream of serve events into ``ctx`` and return the song of the final ``result``.

    An ``error`` event raises :class:`JobError` with the code the server sent (``failed`` if none).
    """
    for event in events:
        kind = event.get("type")
        if kind == EventType.PROGRESS:
            ctx.progress(float(event.get("fraction", 0.0)), str(event.get("stage", "")))
        elif kind == EventType.AUDIO:
            chunk, offset = _decode_audio(event)
            ctx.audio(chunk, offset)
        elif kind == StreamType.RESULT:
            return song_from_bytes(base64.b64decode(event["song"]))
        elif kind == EventType.CANCELLED:
            raise JobCancelled(event.get("message") or "cancelled by the server")
        elif kind == EventType.ERROR:
            raise JobError(event.get("message") or "the server reported an error", ErrorCode.parse(event.get("code")))
        else:
            ctx.check()
    raise JobError("the server closed the stream before sending a result")
