"""One engine interface for the CLI, the OSC/MIDI bridge and scripts.

An engine runs generate / extend / infill *jobs* (:mod:`.jobs`: ids, events, cancellation, a bounded
queue, states / event types / error codes as enums). Requests enter as a :class:`JobRequest` (the flat
wire form, :mod:`.wire`) or as a typed request of :mod:`dr2studio.requests`, and are checked there, at
entry, with the same limits and messages as every other door.

- :class:`LocalEngine` (:mod:`.local`) runs :class:`dr2studio.studio.Studio` in this process (the
  default: one machine, no cluster).
- :class:`ServeEngine` (:mod:`.remote`) sends the same jobs to the Ray Serve deployment of
  :mod:`dr2studio.serve`, over HTTP (streamed newline-delimited JSON) or through a deployment handle.

Both share :class:`JobQueue`; they differ only in the *runner* that turns a request into a song.
"""
from __future__ import annotations

from dr2studio.engine.base import Engine, QueueEngine, as_job_request
from dr2studio.engine.jobs import (
    JOB_ID_RE,
    ErrorCode,
    EventCallback,
    EventType,
    Job,
    JobCancelled,
    JobContext,
    JobError,
    JobEvent,
    JobQueue,
    JobState,
    QueueFull,
    error_code_of,
    result_length,
)
from dr2studio.engine.local import LocalEngine, run_studio_job
from dr2studio.engine.remote import ServeEngine
from dr2studio.engine.wire import (
    JOB_KINDS,
    JobRequest,
    StreamType,
    consume_events,
    encode_event,
    error_body,
    parse_payload,
    song_from_bytes,
    song_to_bytes,
)

__all__ = [
    "JobRequest",
    "JobEvent",
    "Job",
    "JobContext",
    "JobQueue",
    "JobError",
    "JobCancelled",
    "QueueFull",
    "JobState",
    "EventType",
    "ErrorCode",
    "StreamType",
    "error_code_of",
    "Engine",
    "QueueEngine",
    "LocalEngine",
    "ServeEngine",
    "as_job_request",
    "song_to_bytes",
    "song_from_bytes",
    "encode_event",
    "consume_events",
    "parse_payload",
    "error_body",
    "run_studio_job",
    "result_length",
    "EventCallback",
    "JOB_ID_RE",
    "JOB_KINDS",
]
