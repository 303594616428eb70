"""Engine: job queue semantics (ids, progress, cancellation, bounds, threads) and LocalEngine on a tiny model."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from dr2studio.engine import (
    Job,
    JobCancelled,
    JobContext,
    JobError,
    JobEvent,
    JobQueue,
    JobRequest,
    LocalEngine,
    QueueFull,
    consume_events,
    encode_event,
    song_from_bytes,
    song_to_bytes,
)


def _recorder():
    events: list[JobEvent] = []
    lock = threading.Lock()

    def on_event(e: JobEvent) -> None:
        with lock:
            events.append(e)

    return events, on_event


def test_job_events_come_in_order_and_ids_are_idempotent():
    calls = []

    def runner(job: Job, ctx: JobContext):
        calls.append(job.id)
        for i in range(3):
            ctx.progress((i + 1) / 3, "step")
        return job.request * 2

    q = JobQueue(runner, workers=1, max_pending=4)
    try:
        events, on_event = _recorder()
        job = q.submit(21, job_id="take-1", on_event=on_event)
        assert job.wait(5) == 42
        again = q.submit(99, job_id="take-1")  # same id: same job, not run again
        assert again is job and again.result == 42
        assert calls == ["take-1"]
        assert [e.type for e in events] == ["queued", "started", "progress", "progress", "progress", "done"]
        assert [round(e.fraction, 3) for e in events if e.type == "progress"] == [0.333, 0.667, 1.0]
        auto = q.submit(1)
        assert auto.id != "take-1" and auto.wait(5) == 2
        with pytest.raises(JobError, match="job id"):
            q.submit(1, job_id="../escape")
    finally:
        q.close()


def test_queue_is_bounded_and_cancellation_works_queued_and_running():
    started, release = threading.Event(), threading.Event()

    def runner(job: Job, ctx: JobContext):
        started.set()
        while not release.wait(0.01):
            ctx.check()  # a real runner checks between blocks
        return "ok"

    q = JobQueue(runner, workers=1, max_pending=2)
    try:
        running = q.submit(None, job_id="run")
        assert started.wait(5)
        waiting = [q.submit(None, job_id=f"w{i}") for i in range(2)]
        with pytest.raises(QueueFull):
            q.submit(None, job_id="overflow")
        events, on_event = _recorder()
        waiting[0].add_listener(on_event)
        assert q.cancel("w0") and waiting[0].state == "cancelled"
        assert [e.type for e in events] == ["cancelled"]
        with pytest.raises(JobCancelled):
            waiting[0].wait(1)
        q.submit(None, job_id="fits-again")  # the cancelled job freed its slot
        assert q.cancel("run")
        with pytest.raises(JobCancelled):
            running.wait(5)
        assert not q.cancel("run") and not q.cancel("nope")
        release.set()
        assert waiting[1].wait(5) == "ok"
    finally:
        release.set()
        q.close()


def test_failing_job_reports_and_worker_survives():
    def runner(job: Job, ctx: JobContext):
        if job.request == "boom":
            raise RuntimeError("decoder exploded at block 3")
        return job.request

    q = JobQueue(runner, workers=1, max_pending=4)
    try:
        events, on_event = _recorder()
        bad = q.submit("boom", on_event=on_event)
        with pytest.raises(JobError, match="decoder exploded at block 3"):
            bad.wait(5)
        assert bad.state == "failed" and events[-1].type == "error" and "block 3" in events[-1].message
        assert q.submit("fine").wait(5) == "fine"
    finally:
        q.close()


def test_many_threads_submitting_concurrently():
    q = JobQueue(lambda job, ctx: job.request, workers=2, max_pending=1000)
    jobs: list[Job] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(25):
            job = q.submit((n, i), job_id=f"c{n}-{i}")
            with lock:
                jobs.append(job)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len({j.id for j in jobs}) == 200
        assert sorted(j.wait(10) for j in jobs) == sorted((n, i) for n in range(8) for i in range(25))
    finally:
        q.close()


def test_close_cancels_waiting_jobs():
    gate = threading.Event()
    q = JobQueue(lambda job, ctx: gate.wait(5), workers=1, max_pending=4)
    first = q.submit(None)
    second = q.submit(None)
    gate.set()
    q.close()
    assert first.finished and second.finished
    with pytest.raises(JobError, match="closed"):
        q.submit(None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="generate", lyrics="[verse]\nhi"), "duration"),
        (dict(kind="infill", lyrics="x", start=5.0, end=2.0), "must be before end"),
        (dict(kind="remix", lyrics="x"), "kind"),
        (dict(kind="generate", lyrics="x", duration=5, steps=0), "steps"),
        (dict(kind="generate", lyrics="x", duration=5000), "duration"),
        (dict(kind="generate", lyrics="x" * 70000, duration=5), "lyrics"),
        (dict(kind="generate", lyrics="x", duration=5, style_embedding=[0.0] * 3), "512"),
        (dict(kind="generate", lyrics="x", duration=5, tempo=5), "tempo"),
        (dict(kind="generate", lyrics="x", duration=5, tempo="fast"), "tempo"),
        (dict(kind="generate", lyrics="x", duration=5, tempo=True), "tempo"),
        (dict(kind="generate", lyrics="x", duration=5, full_length="yes"), "full_length"),
        (dict(kind="extend", lyrics="x", seconds=5, match_level=1), "match_level"),
    ],
)
def test_bad_requests_are_rejected_before_queueing(tiny_engine, kwargs, message):
    with pytest.raises(JobError, match=message):
        tiny_engine.submit(JobRequest(**kwargs))


def test_extend_without_song_is_rejected(tiny_engine):
    with pytest.raises(JobError, match="needs a song"):
        tiny_engine.submit(JobRequest(kind="extend", lyrics="[verse]\nmore"))


def test_job_request_round_trips_json():
    req = JobRequest(kind="infill", lyrics="[chorus]\nla", start=1.0, end=2.5, seed=7, style="lofi", tempo=97.5)
    assert JobRequest.from_dict(req.to_dict()) == req


# --------------------------------------------------------------------------------- tiny model runs

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_engine(tiny_model):
    engine = LocalEngine(str(tiny_model), style_embedding=torch.randn(512, generator=torch.Generator().manual_seed(0)))
    yield engine
    engine.close()


def test_local_engine_generates_streams_extends_and_cancels(tiny_engine):
    events, on_event = _recorder()
    req = JobRequest(kind="generate", lyrics="[verse]\nhello world\nsing it loud", duration=6.0, steps=2, seed=3)
    song = tiny_engine.submit(req, on_event=on_event).wait(120)
    assert song.sample_rate == 48000 and song.audio.shape[0] == 1
    assert song.latents.shape[1] * 9600 == song.audio.shape[1]
    progress = [e.fraction for e in events if e.type == "progress"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    chunks = [e for e in events if e.type == "audio"]
    assert len(chunks) >= 2 and chunks[0].offset == 0
    streamed = np.concatenate([c.audio for c in chunks], axis=1)
    np.testing.assert_array_equal(streamed, song.audio.numpy())  # streamed blocks are the song

    events.clear()
    longer = tiny_engine.submit(JobRequest(kind="extend", lyrics="[chorus]\nla la la", seconds=4.0, steps=2, seed=4),
                                song=song, on_event=on_event).wait(120)
    splice = round(longer.settings["edits"][-1]["splice"] * 48000)
    assert longer.audio.shape[1] > song.audio.shape[1]
    torch.testing.assert_close(longer.audio[:, :splice], song.audio[:, :splice], rtol=0, atol=0)
    # the extension streams too: from the splice point on, crossfade included, in order
    chunks = [e for e in events if e.type == "audio"]
    assert chunks and chunks[0].offset == splice
    assert [c.offset for c in chunks[1:]] == list(np.cumsum([c.audio.shape[1] for c in chunks[:-1]]) + splice)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks], axis=1), longer.audio[:, splice:].numpy())

    # an embedding states no tempo: the request's reaches the song (and a tempo-clock model)
    timed = tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nhi", duration=1.0, steps=2, seed=1,
                                          tempo=97.5)).wait(120)
    assert timed.settings["tempo_bpm"] == 97.5 and "tempo_bpm" not in song.settings

    def cancel_on_first_block(e: JobEvent) -> None:
        if e.type == "progress" and e.stage == "sample":
            tiny_engine.cancel(e.job_id)

    job = tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nlong one", duration=60.0, steps=2),
                             on_event=cancel_on_first_block)
    with pytest.raises(JobCancelled):
        job.wait(120)
    assert job.result is None


def test_demo_engine_reports_requested_vs_delivered_seconds(tmp_path):
    """A job's result says when the model ended a song early, and an extend job adds what was asked,
    at the input's own rate (what the bridge and Serve hand back)."""
    from dr2studio.demo import DEMO_DIR
    from dr2studio.song import Song

    engine = LocalEngine(str(DEMO_DIR))
    try:
        events, on_event = _recorder()
        lyrics = "[verse]\nCity lights are calling me tonight\nEvery step I take feels right"
        req = JobRequest(kind="generate", lyrics=lyrics, style="pop, 120 bpm, A minor, piano, drums",
                         duration=30.0, steps=4, seed=1)
        job = engine.submit(req, on_event=on_event)
        song = job.wait(120)
        done = [e for e in events if e.type == "done"][-1]
        assert done.length == job.length == song.settings["length"]
        assert done.length["requested"] == 30.0 and done.length["delivered"] == pytest.approx(song.duration, abs=1e-3)
        if song.duration < 30.0:  # the demo model ends its songs after about 20 s
            assert done.length["ended_early"] and done.message == done.length["reason"] and "ended" in done.message
        # a 44.1 kHz 16-bit stereo take: the extension comes back at 44.1 kHz, stereo, 3 s longer
        take = tmp_path / "take.wav"
        rng = np.random.default_rng(0)
        sf.write(str(take), (rng.standard_normal((44100 * 4, 2)) * 3000).astype(np.int16), 44100, subtype="PCM_16")
        producer = Song.load(take)
        job = engine.submit(JobRequest(kind="extend", lyrics=lyrics, style="pop, 120 bpm", seconds=3.0, steps=2, seed=2),
                            song=producer)
        longer = job.wait(120)
        assert longer.sample_rate == 44100 and longer.channels == 2 and longer.subtype == "PCM_16"
        assert longer.audio.shape[1] == producer.audio.shape[1] + 3 * 44100
        assert job.length["delivered"] == 3.0 and not job.length["ended_early"]
        back = song_from_bytes(song_to_bytes(longer))  # what Serve sends back
        assert back.settings["length"] == job.length and back.subtype == "PCM_16" and back.sample_rate == 44100
    finally:
        engine.close()


def test_song_wire_format_is_lossless_and_safe(tiny_engine):
    song = tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nround trip", duration=2.0, steps=2, seed=5)).wait(120)
    back = song_from_bytes(song_to_bytes(song))
    torch.testing.assert_close(back.audio, song.audio, rtol=0, atol=0)
    torch.testing.assert_close(back.latents, song.latents, rtol=0, atol=0)
    assert back.seed == song.seed and back.lyrics == song.lyrics

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("song.wav", b"RIFF")
        zf.writestr("../../escape.txt", b"x")
    with pytest.raises(JobError, match="plain file name"):
        song_from_bytes(evil.getvalue())
    with pytest.raises(JobError, match="not a song archive"):
        song_from_bytes(b"not a zip")


def test_consume_events_replays_a_stream(tiny_engine):
    song = tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nwire", duration=2.0, steps=2, seed=6)).wait(120)
    job = Job("j", JobRequest(kind="generate", lyrics="x", duration=1.0))
    events, on_event = _recorder()
    job.add_listener(on_event)
    chunk = np.arange(6, dtype=np.float32).reshape(1, 6)
    stream = [
        {"type": "accepted"},
        encode_event(JobEvent("j", "progress", 0.5, "sample")),
        encode_event(JobEvent("j", "audio", audio=chunk, offset=0)),
        {"type": "heartbeat"},
        {"type": "result", "song": base64.b64encode(song_to_bytes(song)).decode()},
    ]
    out = consume_events(stream, JobContext(job))
    torch.testing.assert_close(out.audio, song.audio)
    assert [e.type for e in events] == ["progress", "audio"]
    np.testing.assert_array_equal(events[1].audio, chunk)
    with pytest.raises(JobError, match="out of memory"):
        consume_events([{"type": "error", "message": "out of memory"}], JobContext(job))
    with pytest.raises(JobError, match="before sending a result"):
        consume_events([{"type": "progress", "fraction": 0.1}], JobContext(job))


def test_explicit_style_text_wins_over_the_default_embedding(tiny_engine):
    import importlib.util

    if importlib.util.find_spec("muq") is not None:
        pytest.skip("MuQ-MuLan is installed; this checks the error path without it")
    job = tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nhi", duration=2.0, steps=2, style="dreamy lofi"))
    with pytest.raises(JobError, match="MuQ-MuLan"):
        job.wait(60)


# --------------------------------------------------------------------------- typed states and codes

def test_states_events_and_codes_are_enums_equal_to_the_old_strings():
    """Clients compare ``job.state`` / ``event.type`` with plain strings and read them from JSON."""
    from dr2studio.engine import ErrorCode, EventType, JobState

    def runner(job: Job, ctx: JobContext):
        if job.request == "bad":
            raise RuntimeError("decoder exploded")
        ctx.progress(0.5, "sample")
        return "song"

    q = JobQueue(runner, workers=1, max_pending=4)
    try:
        events, on_event = _recorder()
        good = q.submit("ok", on_event=on_event)
        assert good.wait(5) == "song"
        assert good.state == "done" and good.state is JobState.DONE and good.error_code is None
        assert [e.type for e in events] == ["queued", "started", "progress", "done"]
        assert all(isinstance(e.type, EventType) for e in events)
        wire = [json.loads(json.dumps(encode_event(e))) for e in events]
        assert [w["type"] for w in wire] == ["queued", "started", "progress", "done"]
        assert wire[2] == {"type": "progress", "fraction": 0.5, "stage": "sample"}

        events.clear()
        bad = q.submit("bad", on_event=on_event)
        with pytest.raises(JobError) as info:
            bad.wait(5)
        assert bad.state == "failed" and bad.error_code == "failed" and info.value.code is ErrorCode.FAILED
        error = json.loads(json.dumps(encode_event(events[-1])))
        assert error == {"type": "error", "message": "decoder exploded", "code": "failed"}
        assert f"{bad.state}" == "failed" and json.dumps({"state": bad.state}) == '{"state": "failed"}'
    finally:
        q.close()


def test_errors_carry_their_code():
    from dr2studio.engine import ErrorCode, error_code_of
    from dr2studio.requests import RequestError

    assert error_code_of(RequestError("steps", "steps must be ...")) is ErrorCode.BAD_REQUEST
    assert error_code_of(QueueFull("full")) is ErrorCode.BUSY and QueueFull("x").code.http_status == 503
    assert error_code_of(JobCancelled("gone")) is ErrorCode.CANCELLED
    assert error_code_of(RuntimeError("boom")) is ErrorCode.FAILED
    assert error_code_of(JobError("no", "forbidden")).http_status == 403
    assert ErrorCode.from_status(409) is ErrorCode.CONFLICT and ErrorCode.parse("nonsense") is ErrorCode.FAILED

    # the bridge's HTTP-like ints become codes too
    class Refused(ValueError):
        code = 404

    assert error_code_of(Refused("no such section")) is ErrorCode.NOT_FOUND

    q = JobQueue(lambda job, ctx: (_ for _ in ()).throw(Refused("no such section")), workers=1, max_pending=2)
    try:
        events, on_event = _recorder()
        job = q.submit(None, on_event=on_event)
        with pytest.raises(JobError) as info:
            job.wait(5)
        assert job.error_code is ErrorCode.NOT_FOUND and info.value.code is ErrorCode.NOT_FOUND
        assert events[-1].code is ErrorCode.NOT_FOUND
    finally:
        q.close()

    job = Job("j", JobRequest(kind="generate", lyrics="x", duration=1.0))
    with pytest.raises(JobError) as info:
        consume_events([{"type": "error", "message": "no", "code": "bad_request"}], JobContext(job))
    assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(JobCancelled):
        consume_events([{"type": "cancelled", "message": "bye", "code": "cancelled"}], JobContext(job))


def test_engine_refuses_with_the_request_layer_message(tiny_engine, tiny_model):
    """The engine's limits are requests.py's: the same value gets the same message, code bad_request."""
    from dr2studio.engine import ErrorCode
    from dr2studio.requests import GenerateRequest, RequestError, SamplingRequest

    typed = GenerateRequest(lyrics="[verse]\nhi", duration=5.0, sampling=SamplingRequest(steps=1))
    with pytest.raises(RequestError) as direct:
        typed.validate()
    with pytest.raises(JobError) as via_engine:
        tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nhi", duration=5.0, steps=1))
    assert str(via_engine.value) == str(direct.value) and via_engine.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(JobError, match="cfg_strength must be"):
        tiny_engine.submit(JobRequest(kind="generate", lyrics="x", duration=5.0, cfg_strength=51.0))
    with pytest.raises(JobError, match="seconds must be"):
        tiny_engine.submit(JobRequest(kind="extend", lyrics="x", seconds=0.0), song=object())

    # a typed request goes in as it is, and comes out as the same song as its wire form
    typed = GenerateRequest(lyrics="[verse]\ntyped", duration=2.0, sampling=SamplingRequest(steps=2, seed=9))
    song = tiny_engine.submit(typed).wait(120)
    again = tiny_engine.submit(JobRequest.from_typed(typed)).wait(120)
    torch.testing.assert_close(song.audio, again.audio, rtol=0, atol=0)
    assert JobRequest.from_typed(typed).typed() == typed

    # an infill range past the song's end is refused at entry, with the studio's words
    with pytest.raises(JobError, match="past the end of the song") as info:
        tiny_engine.submit(JobRequest(kind="infill", lyrics="[verse]\nx", start=1.0, end=9.0, steps=2), song=song)
    assert info.value.code is ErrorCode.BAD_REQUEST


# ------------------------------------------------------------------ issue 18: data only, bounded archives

def test_job_lyrics_and_style_are_data_never_server_files(tiny_engine, tmp_path):
    """A job's lyrics naming a server .lrc are sung as text, not read; a style naming a .npy is a text
    prompt, not loaded; and an existing and a missing file give the same answer (no existence oracle)."""
    import importlib.util

    from dr2studio.engine import JobError
    from dr2studio.requests import PlainText
    from dr2studio.style.embedding import save_style_embedding

    secret = tmp_path / "secret.lrc"
    secret.write_text("[verse]\nmarmalade zeppelin\n", encoding="utf-8")
    songs = {}
    for name in ("secret.lrc", "missing.lrc"):
        req = JobRequest(kind="generate", lyrics=str(tmp_path / name), duration=1.0, steps=2, seed=7)
        songs[name] = tiny_engine.submit(req).wait(120)
    assert "marmalade" not in (songs["secret.lrc"].lyrics or "")
    assert str(tmp_path) in songs["secret.lrc"].lyrics  # the text itself was the lyric
    assert songs["secret.lrc"].lyrics.replace("secret", "missing") == songs["missing.lrc"].lyrics

    # Studio's own data-only entry: PlainText is never a path, whatever it ends with
    studio = tiny_engine.studio
    _, text, _ = studio.lyrics_condition(PlainText(str(secret)))
    assert "marmalade" not in text
    npy = save_style_embedding(torch.ones(512), tmp_path / "style.npy")
    if importlib.util.find_spec("muq") is None:  # the text prompt goes to the (absent) text encoder, never to the file
        answers = []
        for path in (npy, tmp_path / "nothing.npy", tmp_path / "ref.wav"):
            job = tiny_engine.submit(JobRequest(kind="generate", lyrics="[verse]\nhi", duration=1.0, steps=2,
                                                style=str(path)))
            with pytest.raises(JobError) as info:
                job.wait(120)
            answers.append(str(info.value).replace(str(path), "<style>").replace(job.id, "<job>"))
        assert "not found" not in answers[0] and len(set(answers)) == 1, answers


def _bomb(path, inflated: int, *, name: str = "song.wav") -> bytes:
    """A deflated zip member of ``inflated`` zero bytes, written in chunks (the test never holds it inflated)."""
    import zipfile

    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(info, "w", force_zip64=inflated >= 1 << 31) as out:
            chunk = bytes(1 << 20)
            for _ in range(inflated >> 20):
                out.write(chunk)
    return path.read_bytes()


def test_song_archive_inflation_is_bounded(tmp_path):
    """A 500 MiB zip bomb is refused on its declared size; a member that lies about its size, too many
    members and unreadable audio are refused with their code, fast and without inflating."""
    import io
    import resource
    import struct
    import zipfile

    from dr2studio.engine import ErrorCode, JobError, song_from_bytes

    blob = _bomb(tmp_path / "bomb.zip", 500 << 20)
    assert len(blob) < 600 * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(JobError, match="inflate") as info:
        song_from_bytes(blob)
    assert info.value.code is ErrorCode.TOO_LARGE and time.monotonic() - start < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024  # KiB: nothing inflated

    # a member whose headers declare 1000 bytes but that inflates to 64 MiB stops at its declared size
    small = _bomb(tmp_path / "liar.zip", 64 << 20)
    lied = bytearray(small)
    cd = small.rfind(b"PK\x01\x02")
    assert struct.unpack_from("<I", small, cd + 24)[0] == 64 << 20
    struct.pack_into("<I", lied, cd + 24, 1000)  # the central directory's uncompressed size
    with pytest.raises(JobError) as info:
        song_from_bytes(bytes(lied), max_bytes=8 << 20)
    assert info.value.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)

    # the cap holds while streaming even when the declared size is within it
    with pytest.raises(JobError, match="inflate") as info:
        song_from_bytes(small, max_bytes=32 << 20)
    assert info.value.code is ErrorCode.TOO_LARGE

    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(20):
            zf.writestr(f"m{i}", b"x")
        zf.writestr("song.wav", b"x")
    with pytest.raises(JobError, match="members") as info:
        song_from_bytes(many.getvalue())
    assert info.value.code is ErrorCode.TOO_LARGE

    garbage = io.BytesIO()
    with zipfile.ZipFile(garbage, "w") as zf:
        zf.writestr("song.wav", b"RIFF not really a wave file")
    with pytest.raises(JobError, match="not a readable song") as info:
        song_from_bytes(garbage.getvalue())
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("payload, field", [
    ({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": "5"}}, "duration"),
    ({"request": {"kind": "generate", "lyrics": 5, "duration": 5}}, "lyrics"),
    ({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 5, "steps": "many"}}, "steps"),
    ({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 5, "style": {"a": 1}}}, "style"),
    ({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 5, "style_embedding": "x"}},
     "style_embedding"),
    ({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 5, "seed": 1.5}}, "seed"),
    ({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 5, "instrumental": "yes"}}, "instrumental"),
    ({"request": {"kind": ["generate"], "lyrics": "x", "duration": 5}}, "kind"),
    ({"request": {"kind": "extend", "lyrics": "x"}, "song": 5}, "song"),
    ({"request": []}, "request"),
    ({"request": {"kind": "generate", "lyrics": "x" * (10 << 20), "duration": 5}}, "lyrics"),
])
def test_wrong_types_are_bad_requests_naming_the_field(payload, field):
    from dr2studio.engine import ErrorCode, JobError, parse_payload

    with pytest.raises(JobError) as info:
        parse_payload(payload)
    assert info.value.code is ErrorCode.BAD_REQUEST and field in str(info.value)


def test_finished_jobs_keep_only_the_newest_results_in_memory() -> None:
    """A long session's finished jobs must not hold every song: ids stay idempotent, old songs are dropped."""
    from dr2studio.engine import ErrorCode, JobError, JobQueue

    q = JobQueue(lambda job, ctx: np.zeros(1000, dtype=np.float32), workers=1, max_pending=64, keep_results=3)
    jobs = [q.submit({"n": i}, job_id=f"j{i}", on_event=lambda event: None) for i in range(10)]  # a listener each
    kept = q.submit({"n": -1}, job_id="nobody-listens")
    for job in [*jobs, kept]:
        job.join(5)
    q.submit({"n": 10}, job_id="j10").join(5)  # a submit trims: of the 10 finished, the newest 3 keep their songs
    released = [job for job in jobs if job.result is None]
    assert released == jobs[:7]
    with pytest.raises(JobError) as err:
        jobs[0].wait(1)
    assert err.value.code == ErrorCode.NOT_FOUND and "no longer kept" in str(err.value)
    assert q.submit({"n": 0}, job_id="j0") is jobs[0]  # the id still answers with the same job
    assert jobs[9].wait(1).shape == (1000,)
    assert kept.wait(1).shape == (1000,)  # a song nobody has received is never dropped
    q.close()


def test_released_jobs_hold_no_request_listeners_or_songs() -> None:
    """A bridge job's request carries its session snapshot (a song) and its listeners close over the caller's
    state: a released job must drop both, or a long session keeps every snapshot (the soak's +63 MiB/min)."""
    import gc
    import weakref

    from dr2studio.engine import JobQueue

    class Snapshot:  # stands for the bridge's session snapshot
        pass

    q = JobQueue(lambda job, ctx: np.zeros(10, dtype=np.float32), workers=1, max_pending=64, keep_results=1)
    refs = []
    for i in range(4):
        snap = Snapshot()
        refs.append(weakref.ref(snap))
        q.submit(snap, job_id=f"j{i}", on_event=lambda event, snap=snap: None).join(5)
        del snap
    q.submit(Snapshot(), job_id="j4").join(5)  # trims: the newest delivered result stays
    gc.collect()
    assert [ref() is None for ref in refs] == [True, True, True, False]
    assert q.get("j0").request is None and q.get("j0").state == "done"
    q.close()
